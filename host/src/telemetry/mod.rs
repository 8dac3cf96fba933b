//! Logs and traces: the one `tracing` subscriber the binary installs.
//!
//! Log lines go to stderr, as text for people or as JSON (one object a line,
//! with the fields of the span it was logged in) for log collectors. Every
//! delivery attempt is a span (`attempt`: task, platform, plugin, version,
//! destination, worker, attempt number, outcome), and the plugin's own log
//! lines are events inside it; the span is made only when a line is logged
//! in it or spans are exported ([`attempt`]).
//!
//! With `[traces] otlp_endpoint` set, `serve` also exports those spans over
//! OTLP/HTTP (protobuf) to an OpenTelemetry collector, through
//! `tracing-opentelemetry` and the SDK's batch processor: spans are queued in
//! memory and sent from the processor's own thread, so a slow or absent
//! collector costs the delivery path nothing but a bounded queue (the SDK
//! drops spans beyond it and says so in its own log). Off unless configured;
//! the SDK's `OTEL_BSP_*` variables tune the batching.

pub mod attempt;

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// How log lines on stderr are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// `[traces]` in the config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracesConfig {
    /// The collector's OTLP/HTTP base URL, e.g. `http://127.0.0.1:4318`;
    /// spans are posted to `/v1/traces` under it. Off when unset.
    pub otlp_endpoint: Option<String>,
    /// `service.name` on every exported span.
    pub service_name: String,
}

impl Default for TracesConfig {
    fn default() -> Self {
        TracesConfig {
            otlp_endpoint: None,
            service_name: "notifyhub".into(),
        }
    }
}

impl TracesConfig {
    /// The URL spans are posted to, when export is on.
    pub fn traces_url(&self) -> Result<Option<http::Uri>, TelemetryError> {
        let Some(base) = &self.otlp_endpoint else {
            return Ok(None);
        };
        let invalid = |reason: &str| TelemetryError::Endpoint {
            endpoint: base.clone(),
            reason: reason.into(),
        };
        let url: http::Uri = format!("{}/v1/traces", base.trim_end_matches('/'))
            .parse()
            .map_err(|e: http::uri::InvalidUri| invalid(&e.to_string()))?;
        if !matches!(url.scheme_str(), Some("http" | "https")) || url.host().is_none() {
            return Err(invalid("expected http://HOST[:PORT] or https://…"));
        }
        if self.service_name.is_empty() || self.service_name.len() > 255 {
            return Err(TelemetryError::ServiceName);
        }
        Ok(Some(url))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("[traces] otlp_endpoint = {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("[traces] service_name must be 1 to 255 bytes")]
    ServiceName,
    #[error("cannot set up the OTLP exporter: {0}")]
    Exporter(String),
    #[error("cannot install the log subscriber: {0}")]
    Install(String),
}

/// Whether the installed subscriber exports spans: then every attempt's span
/// is made when the attempt starts ([`attempt::AttemptSpan`]).
static EXPORTS_SPANS: AtomicBool = AtomicBool::new(false);

fn exports_spans() -> bool {
    EXPORTS_SPANS.load(Ordering::Relaxed)
}

/// Holds the trace exporter; dropping it sends the spans still queued.
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("notifyhub: sending the last spans failed: {e}");
        }
    }
}

/// Installs the subscriber: logs at `default_level` unless `RUST_LOG` says
/// otherwise, in `format`, and spans to the collector `traces` names.
pub fn init(
    format: LogFormat,
    default_level: &str,
    traces: Option<&TracesConfig>,
) -> Result<Telemetry, TelemetryError> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    // Colour only for a terminal, and not when `NO_COLOR` asks for none: a
    // log file or journald gets plain text.
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(colour);
    let logs = match format {
        LogFormat::Json => logs.json().with_current_span(true).boxed(),
        LogFormat::Text => logs.boxed(),
    };
    let export = match traces {
        Some(traces) => traces.traces_url()?.map(|url| (url, traces)),
        None => None,
    };
    let (provider, spans) = match export {
        Some((url, traces)) => {
            let provider = exporter(&url, &traces.service_name)?;
            let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "notifyhub");
            (
                Some(provider),
                Some(tracing_opentelemetry::layer().with_tracer(tracer)),
            )
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(spans)
        .try_init()
        .map_err(|e| TelemetryError::Install(e.to_string()))?;
    EXPORTS_SPANS.store(provider.is_some(), Ordering::Relaxed);
    if let Some(url) = traces.and_then(|t| t.otlp_endpoint.as_ref()) {
        tracing::info!(endpoint = %url, "exporting attempt spans over OTLP/HTTP");
    }
    Ok(Telemetry { provider })
}

fn exporter(
    url: &http::Uri,
    service_name: &str,
) -> Result<opentelemetry_sdk::trace::SdkTracerProvider, TelemetryError> {
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url.to_string())
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service_name.to_string())
        .build();
    Ok(opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(endpoint: &str) -> TracesConfig {
        TracesConfig {
            otlp_endpoint: Some(endpoint.into()),
            ..TracesConfig::default()
        }
    }

    #[test]
    fn endpoints_are_checked_before_anything_starts() {
        assert_eq!(TracesConfig::default().traces_url().unwrap(), None);
        let url = with("http://127.0.0.1:4318/")
            .traces_url()
            .unwrap()
            .unwrap();
        assert_eq!(url.to_string(), "http://127.0.0.1:4318/v1/traces");
        for bad in ["127.0.0.1:4318", "ftp://h/", "http://", "not a url"] {
            assert!(with(bad).traces_url().is_err(), "{bad} accepted");
        }
        let nameless = TracesConfig {
            service_name: String::new(),
            ..with("http://h:1")
        };
        assert!(matches!(
            nameless.traces_url(),
            Err(TelemetryError::ServiceName)
        ));
    }
}
