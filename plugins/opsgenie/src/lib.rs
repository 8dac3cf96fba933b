//! Opsgenie: an alert through the Alert API, `POST /v2/alerts`.
//!
//! The API key (`api_key`, a secret, from an *API* integration) goes in
//! `Authorization: GenieKey …`; `api_url` overrides
//! `https://api.opsgenie.com/v2/alerts` (EU: `https://api.eu.opsgenie.com`).
//! The target names who is notified: `default` (the integration's own
//! routing) or responders, comma-separated, as `team:Ops`,
//! `user:ops@example.com`, `escalation:Night` or `schedule:Primary`.
//!
//! The alert: `message` is the title or first line (≤ 130 characters),
//! `description` the body as plain text (≤ 15,000), `priority` from the
//! task's (high P2, normal P3, low P5; metadata `priority` may name P1–P5),
//! `alias` metadata `alias` else the task id, so a retry updates the same
//! alert instead of opening another; other metadata become `details`.
//!
//! Answers: 202 `{"result", "requestId"}` (the request id is the provider
//! id; Opsgenie creates the alert asynchronously); 422 and 400 invalid;
//! 401/403 permanent; 429 rate-limited; 5xx retryable.

use notifyhub_plugin_sdk::format::{headline, plain_body, truncate};
use notifyhub_plugin_sdk::{
    Message, Plugin, PluginInfo, Priority, Receipt, SendError, config, config_key, http,
    required_config,
};
use serde_json::{Map, Value, json};

const DEFAULT_API: &str = "https://api.opsgenie.com/v2/alerts";
const MESSAGE_MAX: usize = 130;
const DESCRIPTION_MAX: usize = 15_000;
const ALIAS_MAX: usize = 512;
/// Opsgenie bounds `details` to 8,000 characters in all.
const DETAIL_VALUE_MAX: usize = 500;
const MAX_RESPONDERS: usize = 50;

struct Opsgenie;

impl Plugin for Opsgenie {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "opsgenie".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            platforms: vec!["opsgenie".into()],
            config_keys: vec![
                config_key("api_key", true, true, "an API integration's key"),
                config_key(
                    "api_url",
                    false,
                    false,
                    "alerts endpoint (default Opsgenie's US one)",
                ),
            ],
            rate_limits: vec![],
            description: "Opsgenie alerts (Alert API)".into(),
        }
    }

    fn send(message: Message) -> Result<Receipt, SendError> {
        let key = required_config("api_key")?;
        let url = config("api_url").unwrap_or_else(|| DEFAULT_API.into());
        let response = http::Request::post(&url)
            .header("authorization", format!("GenieKey {key}"))
            .json_body(alert(&message)?.to_string())
            .send()?;
        let answer: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
        if response.is_success() {
            return Ok(Receipt {
                provider_id: answer["requestId"].as_str().map(str::to_string),
                status: format!("HTTP {}", response.status),
            });
        }
        let detail = format!(
            "HTTP {}: {} {}",
            response.status,
            answer["message"].as_str().unwrap_or_default(),
            if answer["errors"].is_object() {
                answer["errors"].to_string()
            } else {
                String::new()
            }
        );
        match response.status {
            400 | 422 => Err(SendError::invalid(detail)),
            _ => Err(response.failure(detail)),
        }
    }
}

fn alert(message: &Message) -> Result<Value, SendError> {
    let priority = match message.meta("priority") {
        Some(p @ ("P1" | "P2" | "P3" | "P4" | "P5")) => p,
        Some(other) => {
            return Err(SendError::invalid(format!(
                "metadata `priority` {other:?}: use P1–P5"
            )));
        }
        None => match message.priority {
            Priority::High => "P2",
            Priority::Normal => "P3",
            Priority::Low => "P5",
        },
    };
    let mut details = Map::new();
    for (k, v) in message
        .metadata
        .iter()
        .filter(|(k, _)| k != "alias" && k != "priority")
    {
        details.insert(truncate(k, 100), json!(truncate(v, DETAIL_VALUE_MAX)));
    }
    let mut alert = json!({
        "message": headline(message, MESSAGE_MAX),
        "description": truncate(&plain_body(message), DESCRIPTION_MAX),
        "alias": truncate(message.meta("alias").unwrap_or(&message.task_id), ALIAS_MAX),
        "priority": priority,
        "source": "notifyhub",
        "details": details,
    });
    let target = message.target.trim();
    if target != "default" {
        alert["responders"] = json!(responders(target)?);
    }
    Ok(alert)
}

/// `team:Ops, user:a@example.com` as Opsgenie responders.
fn responders(target: &str) -> Result<Vec<Value>, SendError> {
    let list: Vec<Value> = target
        .split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(|r| match r.split_once(':') {
            Some(("user", name)) if !name.is_empty() => {
                Ok(json!({"type": "user", "username": name}))
            }
            Some((kind @ ("team" | "escalation" | "schedule"), name)) if !name.is_empty() => {
                Ok(json!({"type": kind, "name": name}))
            }
            _ => Err(SendError::invalid(format!(
                "responder {r:?}: use team:NAME, user:EMAIL, escalation:NAME or schedule:NAME, \
                 or the target `default`"
            ))),
        })
        .collect::<Result<_, _>>()?;
    if list.is_empty() || list.len() > MAX_RESPONDERS {
        return Err(SendError::invalid(format!(
            "the target needs 1 to {MAX_RESPONDERS} responders, or `default`"
        )));
    }
    Ok(list)
}

notifyhub_plugin_sdk::export_plugin!(Opsgenie);
