//! Generic webhook: POSTs a Standard Webhooks JSON document to the target URL.
//!
//! With `signing_secret` configured (a `whsec_…` base64 secret) every request
//! carries `webhook-id` (the task id, stable across retries),
//! `webhook-timestamp` and `webhook-signature`, so the receiver can verify the
//! sender and drop duplicates.

use notifyhub_plugin_sdk::{
    Format, Message, Plugin, PluginInfo, Priority, Receipt, SendError, config, config_key, http,
    sign, time,
};
use serde_json::json;

/// Standard Webhooks suggests keeping payloads under about 20 KB.
const MAX_BODY_CHARS: usize = 16 * 1024;

struct Webhook;

impl Plugin for Webhook {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "webhook".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            platforms: vec!["webhook".into()],
            config_keys: vec![config_key(
                "signing_secret",
                false,
                true,
                "Standard Webhooks secret (whsec_<base64>); when set, requests are signed",
            )],
            rate_limits: vec![],
            description: "POSTs a Standard Webhooks JSON document to any URL".into(),
        }
    }

    fn send(message: Message) -> Result<Receipt, SendError> {
        let now = time::unix_seconds();
        let metadata: serde_json::Map<String, serde_json::Value> = message
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        let document = json!({
            "type": "notification.sent",
            "timestamp": time::rfc3339(now),
            "data": {
                "task_id": message.task_id,
                "platform": message.platform,
                "title": message.title,
                "body": notifyhub_plugin_sdk::format::truncate(&message.body, MAX_BODY_CHARS),
                "format": format_name(message.format),
                "priority": priority_name(message.priority),
                "metadata": metadata,
            }
        });
        let body = serde_json::to_vec(&document).expect("JSON values serialize");

        let mut request = http::Request::post(&message.target)
            .header("webhook-id", message.task_id.clone())
            .header("webhook-timestamp", now.to_string());
        if let Some(secret) = config("signing_secret") {
            let signature = sign::standard_webhooks(&secret, &message.task_id, now, &body)
                .map_err(SendError::invalid)?;
            request = request.header("webhook-signature", signature);
        }
        let response = request.json_body(body).send()?;

        match response.status {
            300..=399 => Err(SendError::permanent(format!(
                "HTTP {}: the endpoint redirects and redirects are not followed",
                response.status
            ))),
            502 | 504 => Err(SendError::rate_limited(
                format!("HTTP {}: the endpoint asks to throttle", response.status),
                response
                    .retry_after_ms()
                    .unwrap_or(http::DEFAULT_RETRY_AFTER_MS),
            )),
            _ => response
                .classify()
                .map(|()| Receipt::status(format!("HTTP {}", response.status))),
        }
    }
}

fn format_name(format: Format) -> &'static str {
    match format {
        Format::Text => "text",
        Format::Markdown => "markdown",
        Format::Html => "html",
    }
}

fn priority_name(priority: Priority) -> &'static str {
    match priority {
        Priority::Low => "low",
        Priority::Normal => "normal",
        Priority::High => "high",
    }
}

notifyhub_plugin_sdk::export_plugin!(Webhook);
