//! Google Chat incoming webhooks.
//!
//! The target is the space's webhook URL
//! (`https://chat.googleapis.com/v1/spaces/…/messages?key=…&token=…`; the
//! key and token are credentials). The body is `{"text"}`: the title in
//! bold on its own line, then the body, cut with a marker to 4,096
//! characters. Markdown's `**bold**` becomes Chat's `*bold*`; HTML is
//! reduced to text. A `<` is followed by a word joiner (U+2060), so
//! `<users/all>` or a user id in a message mentions no one and no text
//! turns into a link the sender did not write.
//!
//! Idempotency: `messageId=client-<task id>` names the message, so a retry
//! of a task Chat already took is refused as `ALREADY_EXISTS` (409) and
//! counts as delivered, not posted twice.
//!
//! Threads: metadata `thread` becomes `thread.threadKey`, with
//! `messageReplyOption=REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD`, so
//! notifications with the same key stack in one thread.
//!
//! Answers: 200 with the created message (its `name` is the provider id);
//! errors are `{"error": {"code", "message", "status"}}`: 429
//! `RESOURCE_EXHAUSTED` rate-limited (a space takes one message a second);
//! 401/403/404 permanent; 400 invalid; 5xx retryable.

use notifyhub_plugin_sdk::format::{plain_body, truncate};
use notifyhub_plugin_sdk::{
    Format, Message, Plugin, PluginInfo, RateLimitRule, Receipt, SendError, http,
};
use serde_json::{Value, json};

const TEXT_MAX: usize = 4096;
const THREAD_KEY_MAX: usize = 128;
const WORD_JOINER: char = '\u{2060}';

struct GoogleChat;

impl Plugin for GoogleChat {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "googlechat".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            platforms: vec!["googlechat".into()],
            config_keys: vec![],
            rate_limits: vec![RateLimitRule {
                requests: 1,
                window_ms: 1_000,
            }],
            description: "Google Chat incoming webhooks (threads by key)".into(),
        }
    }

    fn send(message: Message) -> Result<Receipt, SendError> {
        if !message.target.starts_with("https://") && !message.target.starts_with("http://") {
            return Err(SendError::invalid(
                "the target must be a Google Chat webhook URL",
            ));
        }
        let separator = if message.target.contains('?') {
            '&'
        } else {
            '?'
        };
        let mut url = format!(
            "{}{separator}messageId=client-{}",
            message.target,
            message.task_id.to_ascii_lowercase()
        );
        let mut body = json!({ "text": text(&message) });
        let thread = message.meta("thread");
        if let Some(key) = thread {
            body["thread"] = json!({ "threadKey": truncate(key, THREAD_KEY_MAX) });
            url.push_str("&messageReplyOption=REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD");
        }
        let response = http::Request::post(&url)
            .body("application/json; charset=UTF-8", body.to_string())
            .send()?;
        let answer: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
        if response.is_success() {
            return Ok(Receipt {
                provider_id: answer["name"].as_str().map(str::to_string),
                status: format!("HTTP {}", response.status),
            });
        }
        let error = &answer["error"];
        if response.status == 409 && error["status"] == "ALREADY_EXISTS" {
            return Ok(Receipt {
                provider_id: None,
                status: "HTTP 409: already posted (messageId)".into(),
            });
        }
        let detail = format!(
            "HTTP {} {}: {}",
            response.status,
            error["status"].as_str().unwrap_or("?"),
            error["message"].as_str().unwrap_or_default()
        );
        Err(response.failure(detail))
    }
}

/// The message in Chat's text format, mention-free, within the limit.
fn text(message: &Message) -> String {
    let body = plain_body(message);
    let body = match message.format {
        Format::Markdown => body.replace("**", "*"),
        Format::Text | Format::Html => body,
    };
    let title = message
        .title
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let full = match title {
        Some(t) => format!("*{}*\n{body}", t.replace(['\n', '\r'], " ")),
        None => body,
    };
    let defused: String = full
        .chars()
        .flat_map(|c| std::iter::once(c).chain((c == '<').then_some(WORD_JOINER)))
        .collect();
    truncate(&defused, TEXT_MAX)
}

notifyhub_plugin_sdk::export_plugin!(GoogleChat);
