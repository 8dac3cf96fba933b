//! E-mail through SendGrid's v3 Mail Send API.
//!
//! The target is one or more recipient addresses, comma-separated (at most
//! 1000). Config: `api_key` (a secret), `from` (the verified sender
//! address), optional `from_name`, and `api_url` to override
//! `https://api.sendgrid.com/v3/mail/send` (e.g. the EU endpoint). The title
//! is the subject, else the body's first non-blank line, else
//! "Notification" (SendGrid refuses an empty subject); line breaks and
//! control characters in it become spaces. Text goes as `text/plain`;
//! markdown and HTML also as `text/html` (markdown converted, HTML reduced to
//! a safe subset: no scripts, styles or event handlers), with the plain text
//! as the alternative. An empty body is sent as "(empty message)".
//!
//! Success is 202 Accepted. 401/403 (bad key, unverified sender) are
//! permanent; 400 and 413 invalid; 429 rate-limited until
//! `X-RateLimit-Reset` (a Unix time); 5xx retryable.

use notifyhub_plugin_sdk::format::plain_body;
use notifyhub_plugin_sdk::{
    Message, Plugin, PluginInfo, Receipt, SendError, config, config_key, http, mail,
    required_config,
};
use serde_json::{Value, json};

const DEFAULT_API: &str = "https://api.sendgrid.com/v3/mail/send";
const MAX_RECIPIENTS: usize = 1000;

struct Email;

impl Plugin for Email {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "email".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            platforms: vec!["email".into()],
            config_keys: vec![
                config_key("api_key", true, true, "SendGrid API key"),
                config_key("from", true, false, "sender address (verified in SendGrid)"),
                config_key("from_name", false, false, "sender display name"),
                config_key(
                    "api_url",
                    false,
                    false,
                    "Mail Send endpoint (default SendGrid's)",
                ),
            ],
            rate_limits: vec![],
            description: "E-mail through the SendGrid v3 API".into(),
        }
    }

    fn send(message: Message) -> Result<Receipt, SendError> {
        let key = required_config("api_key")?;
        let from = required_config("from")?;
        let recipients =
            mail::recipients(&message.target, MAX_RECIPIENTS).map_err(SendError::invalid)?;
        let url = config("api_url").unwrap_or_else(|| DEFAULT_API.into());
        let response = http::Request::post(&url)
            .header("authorization", format!("Bearer {key}"))
            .json_body(document(&message, &recipients, &from).to_string())
            .send()?;
        match response.status {
            202 | 200 => Ok(Receipt {
                provider_id: response.header("x-message-id").map(str::to_string),
                status: format!("HTTP {}", response.status),
            }),
            429 => {
                let reset = response
                    .header("x-ratelimit-reset")
                    .and_then(|r| r.trim().parse::<u64>().ok())
                    .map(http::until_unix_ms);
                Err(SendError::rate_limited(
                    errors(&response),
                    reset
                        .or_else(|| response.retry_after_ms())
                        .unwrap_or(http::DEFAULT_RETRY_AFTER_MS),
                ))
            }
            413 => Err(SendError::invalid(errors(&response))),
            _ => Err(response.failure(errors(&response))),
        }
    }
}

fn document(message: &Message, recipients: &[&str], from: &str) -> Value {
    let mut content = vec![json!({ "type": "text/plain", "value": plain_body(message) })];
    if let Some(html) = mail::html_alternative(message) {
        content.push(json!({ "type": "text/html", "value": html }));
    }
    let mut sender = json!({ "email": from });
    if let Some(name) = config("from_name") {
        sender["name"] = json!(name);
    }
    json!({
        "personalizations": [{
            "to": recipients.iter().map(|a| json!({ "email": a })).collect::<Vec<_>>(),
        }],
        "from": sender,
        "subject": mail::subject(message),
        "content": content,
        "custom_args": { "notifyhub_task_id": message.task_id },
    })
}

/// SendGrid's `{"errors":[{"field","message"}]}` as one line.
fn errors(response: &http::Response) -> String {
    let answer: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
    let messages: Vec<String> = answer["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .map(|e| match e["field"].as_str() {
                    Some(field) => format!("{field}: {}", e["message"].as_str().unwrap_or("?")),
                    None => e["message"].as_str().unwrap_or("?").to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    format!("HTTP {}: {}", response.status, messages.join("; "))
}

notifyhub_plugin_sdk::export_plugin!(Email);
