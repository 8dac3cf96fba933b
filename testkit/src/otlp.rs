//! A small OpenTelemetry collector: receives OTLP/HTTP trace exports on
//! 127.0.0.1 and decodes them.
//!
//! It answers like a collector does: `POST /v1/traces` with
//! `content-type: application/x-protobuf` and a body that decodes as an
//! `ExportTraceServiceRequest` gets 200 and an empty response message;
//! anything else gets 400 or 404, and nothing from it is counted. Tests read
//! back flat [`Span`]s with their attributes and events.

use std::collections::HashMap;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;

use crate::receiver::{Receiver, Recorded, Reply};

/// One span as the collector saw it.
#[derive(Debug, Clone)]
pub struct Span {
    pub name: String,
    /// `service.name` of the resource that sent it.
    pub service: String,
    pub trace_id: Vec<u8>,
    pub attributes: HashMap<String, String>,
    /// Event names (the messages logged inside the span) with their attributes.
    pub events: Vec<(String, HashMap<String, String>)>,
    /// The status code: 0 unset, 1 ok, 2 error.
    pub status: i32,
}

impl Span {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// A running collector; stops when dropped.
pub struct Collector {
    receiver: Receiver,
}

fn decode(request: &Recorded) -> Option<ExportTraceServiceRequest> {
    if request.method != "POST" || request.path != "/v1/traces" {
        return None;
    }
    if request.header("content-type") != Some("application/x-protobuf") {
        return None;
    }
    ExportTraceServiceRequest::decode(request.body.as_ref()).ok()
}

fn text(value: &Option<AnyValue>) -> String {
    match value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn map(attributes: &[KeyValue]) -> HashMap<String, String> {
    attributes
        .iter()
        .map(|kv| (kv.key.clone(), text(&kv.value)))
        .collect()
}

impl Collector {
    pub async fn start() -> Self {
        let receiver = Receiver::start(|request| match decode(request) {
            Some(_) => Reply::new(200, "").header("content-type", "application/x-protobuf"),
            None if request.path != "/v1/traces" => Reply::new(404, "not found"),
            None => Reply::new(400, "not an OTLP protobuf trace export"),
        })
        .await;
        Collector { receiver }
    }

    /// The base URL to configure as `otlp_endpoint`.
    pub fn endpoint(&self) -> String {
        self.receiver.url("")
    }

    /// Every span received in a well-formed export.
    pub fn spans(&self) -> Vec<Span> {
        let mut spans = Vec::new();
        for export in self.receiver.requests().iter().filter_map(decode) {
            for resource in export.resource_spans {
                let service = resource
                    .resource
                    .as_ref()
                    .map(|r| map(&r.attributes))
                    .and_then(|a| a.get("service.name").cloned())
                    .unwrap_or_default();
                for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
                    spans.push(Span {
                        name: span.name,
                        service: service.clone(),
                        trace_id: span.trace_id,
                        attributes: map(&span.attributes),
                        events: span
                            .events
                            .iter()
                            .map(|e| (e.name.clone(), map(&e.attributes)))
                            .collect(),
                        status: span.status.map_or(0, |s| s.code),
                    });
                }
            }
        }
        spans
    }

    /// Requests that were not well-formed exports.
    pub fn rejected(&self) -> usize {
        self.receiver
            .requests()
            .iter()
            .filter(|r| decode(r).is_none())
            .count()
    }

    /// Waits until the spans received satisfy `done`; an error (which fails
    /// the test) if they do not within `timeout`.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        done: impl Fn(&[Span]) -> bool,
    ) -> anyhow::Result<Vec<Span>> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            // Counted first: an export arriving after it wakes the wait below.
            let arrived = self.receiver.requests().len();
            let spans = self.spans();
            if done(&spans) {
                return Ok(spans);
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            anyhow::ensure!(
                !left.is_zero(),
                "the collector's spans did not reach the condition within {timeout:?}: {spans:#?}"
            );
            // Until one more export arrives, or the deadline.
            let _ = self.receiver.wait_for(arrived + 1, left).await;
        }
    }
}
