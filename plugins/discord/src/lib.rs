//! Discord webhooks.
//!
//! Text messages go in `content` (≤ 2000 characters); a title turns the
//! message into an embed (title ≤ 256, description ≤ 4096). Longer text is
//! truncated with a visible marker. `wait=true` is a query parameter, so a
//! success is HTTP 200 with the created message, whose id becomes the
//! receipt's provider id. Mentions are disabled (`allowed_mentions`).

use notifyhub_plugin_sdk::format::{plain_body, truncate};
use notifyhub_plugin_sdk::{
    Message, Plugin, PluginInfo, Priority, RateLimitRule, Receipt, SendError, http,
};
use serde_json::{Value, json};

const CONTENT_MAX: usize = 2000;
const TITLE_MAX: usize = 256;
const DESCRIPTION_MAX: usize = 4096;

struct Discord;

impl Plugin for Discord {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "discord".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            platforms: vec!["discord".into()],
            config_keys: vec![],
            rate_limits: vec![RateLimitRule {
                requests: 5,
                window_ms: 5_000,
            }],
            description: "Discord webhooks (embeds for titled messages)".into(),
        }
    }

    fn send(message: Message) -> Result<Receipt, SendError> {
        if !message.target.starts_with("https://") && !message.target.starts_with("http://") {
            return Err(SendError::invalid(
                "the target must be a Discord webhook URL",
            ));
        }
        let separator = if message.target.contains('?') {
            '&'
        } else {
            '?'
        };
        let url = format!("{}{separator}wait=true", message.target);
        let response = http::Request::post(&url)
            .json_body(payload(&message).to_string())
            .send()?;

        let answer: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
        if response.status == 429 {
            let retry_after = response
                .retry_after_ms()
                .or_else(|| answer["retry_after"].as_f64().and_then(http::seconds_ms))
                .unwrap_or(http::DEFAULT_RETRY_AFTER_MS);
            return Err(SendError::rate_limited(
                answer["message"]
                    .as_str()
                    .unwrap_or("rate limited")
                    .to_string(),
                retry_after,
            ));
        }
        if !response.is_success() {
            if let (Some(code), Some(text)) = (answer["code"].as_i64(), answer["message"].as_str())
            {
                let detail = format!("HTTP {} (Discord code {code}): {text}", response.status);
                return Err(match response.status {
                    401 | 403 | 404 => SendError::permanent(detail),
                    400 => SendError::invalid(detail),
                    _ => SendError::retryable(detail, response.retry_after_ms()),
                });
            }
            response.classify()?;
        }
        Ok(Receipt {
            provider_id: answer["id"].as_str().map(str::to_string),
            status: format!("HTTP {}", response.status),
        })
    }
}

fn payload(message: &Message) -> Value {
    let no_mentions = json!({ "parse": [] });
    // Discord renders its own markdown, refuses an empty message and
    // would show HTML as tags.
    let body = plain_body(message);
    match message.title.as_deref().filter(|t| !t.trim().is_empty()) {
        None => json!({
            "content": truncate(&body, CONTENT_MAX),
            "allowed_mentions": no_mentions,
        }),
        Some(title) => json!({
            "embeds": [{
                "title": truncate(title, TITLE_MAX),
                "description": truncate(&body, DESCRIPTION_MAX),
                "color": colour(message.priority),
            }],
            "allowed_mentions": no_mentions,
        }),
    }
}

fn colour(priority: Priority) -> u32 {
    match priority {
        Priority::High => 0xE74C3C,
        Priority::Normal => 0x3498DB,
        Priority::Low => 0x95A5A6,
    }
}

notifyhub_plugin_sdk::export_plugin!(Discord);
