//! PagerDuty Events API v2: `POST /v2/enqueue`, one alert event per task.
//!
//! The target is the integration's routing key (32 characters, from a
//! service's *Events API v2* integration). `api_url` overrides
//! `https://events.pagerduty.com/v2/enqueue` (the EU service region is
//! `https://events.eu.pagerduty.com/v2/enqueue`); `source` names the
//! affected system (default "notifyhub").
//!
//! A trigger carries `payload.summary` (the title, else the body's first
//! line; one line, ≤ 1024 characters), `severity` from the priority
//! (high → critical, normal → warning, low → info; metadata `severity` may
//! name any of critical, error, warning, info), `source`, and the body and
//! metadata in `custom_details`. `dedup_key` is metadata `dedup_key`, else
//! the task id: a retried task updates the same alert instead of opening a
//! second one. Metadata `action` = `acknowledge` or `resolve` sends that
//! action for the `dedup_key` instead of a trigger.
//!
//! Success is 202 `{"status":"success","dedup_key":…}` (the dedup key is
//! the receipt's provider id). 400 is an invalid event (the `errors` are
//! named); 429 means the key's rate (120 events a minute) is spent; 5xx is
//! retryable.

use notifyhub_plugin_sdk::format::{headline, plain_body, truncate_bytes};
use notifyhub_plugin_sdk::{
    Message, Plugin, PluginInfo, Priority, RateLimitRule, Receipt, SendError, config, config_key,
    http,
};
use serde_json::{Map, Value, json};

const DEFAULT_API: &str = "https://events.pagerduty.com/v2/enqueue";
const SUMMARY_MAX: usize = 1024;
const DEDUP_KEY_MAX: usize = 255;
/// The body in `custom_details`, in bytes: the whole event must stay
/// under PagerDuty's 512 KB.
const DETAILS_MAX_BYTES: usize = 64 * 1024;
/// PagerDuty sends no `Retry-After`; its guidance is to back off.
const RATE_LIMIT_WAIT_MS: u64 = 30_000;

struct PagerDuty;

impl Plugin for PagerDuty {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "pagerduty".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            platforms: vec!["pagerduty".into()],
            config_keys: vec![
                config_key(
                    "source",
                    false,
                    false,
                    "the affected system (default notifyhub)",
                ),
                config_key(
                    "api_url",
                    false,
                    false,
                    "Events API endpoint (default PagerDuty's US one)",
                ),
            ],
            rate_limits: vec![RateLimitRule {
                requests: 120,
                window_ms: 60_000,
            }],
            description: "PagerDuty alerts (Events API v2)".into(),
        }
    }

    fn send(message: Message) -> Result<Receipt, SendError> {
        let key = message.target.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(SendError::invalid(
                "the target must be an Events API v2 routing key",
            ));
        }
        let url = config("api_url").unwrap_or_else(|| DEFAULT_API.into());
        let response = http::Request::post(&url)
            .json_body(event(&message, key)?.to_string())
            .send()?;
        let answer: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
        if response.status == 202 && answer["status"] == "success" {
            return Ok(Receipt {
                provider_id: answer["dedup_key"].as_str().map(str::to_string),
                status: format!("HTTP {}", response.status),
            });
        }
        let errors: Vec<&str> = answer["errors"]
            .as_array()
            .map(|e| e.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let detail = format!(
            "HTTP {}: {} {}",
            response.status,
            answer["message"].as_str().unwrap_or_default(),
            errors.join("; ")
        );
        match response.status {
            400 => Err(SendError::invalid(detail)),
            429 => Err(SendError::rate_limited(
                detail,
                response.retry_after_ms().unwrap_or(RATE_LIMIT_WAIT_MS),
            )),
            _ => {
                response.classify()?;
                Err(SendError::retryable(detail, None))
            }
        }
    }
}

fn event(message: &Message, key: &str) -> Result<Value, SendError> {
    let dedup_key = truncate_bytes(
        message.meta("dedup_key").unwrap_or(&message.task_id),
        DEDUP_KEY_MAX,
    );
    let action = message.meta("action").unwrap_or("trigger");
    match action {
        "trigger" => {}
        "acknowledge" | "resolve" => {
            return Ok(json!({
                "routing_key": key,
                "event_action": action,
                "dedup_key": dedup_key,
            }));
        }
        other => {
            return Err(SendError::invalid(format!(
                "metadata `action` {other:?}: use trigger, acknowledge or resolve"
            )));
        }
    }
    let severity = match message.meta("severity") {
        Some(s @ ("critical" | "error" | "warning" | "info")) => s,
        Some(other) => {
            return Err(SendError::invalid(format!(
                "metadata `severity` {other:?}: use critical, error, warning or info"
            )));
        }
        None => match message.priority {
            Priority::High => "critical",
            Priority::Normal => "warning",
            Priority::Low => "info",
        },
    };
    let mut details = Map::new();
    details.insert(
        "body".into(),
        json!(truncate_bytes(&plain_body(message), DETAILS_MAX_BYTES)),
    );
    for (k, v) in &message.metadata {
        if !matches!(k.as_str(), "dedup_key" | "action" | "severity") {
            details.insert(k.clone(), json!(v));
        }
    }
    Ok(json!({
        "routing_key": key,
        "event_action": "trigger",
        "dedup_key": dedup_key,
        "payload": {
            "summary": headline(message, SUMMARY_MAX),
            "source": config("source").unwrap_or_else(|| "notifyhub".into()),
            "severity": severity,
            "custom_details": details,
        },
    }))
}

notifyhub_plugin_sdk::export_plugin!(PagerDuty);
