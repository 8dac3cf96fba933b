//! Matrix: a room message through the client-server API.
//!
//! `PUT {homeserver}/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}`
//! with the bot's access token. The target is a room id (`!abc:example.org`;
//! the bot must have joined it); `homeserver` is the base URL and
//! `access_token` a secret. The transaction id is the task id, so a retry of
//! a task the homeserver already took returns the same event instead of
//! posting it twice.
//!
//! The event is an `m.notice` (what the spec asks of automated senders):
//! `body` in plain text, and for markdown and HTML an
//! `org.matrix.custom.html` `formatted_body` reduced to a safe subset, the
//! title in bold on top. An empty `m.mentions` says the message mentions
//! nobody, so "@room" or a user id in the text notifies no one. Both bodies
//! are cut so the event stays well under the 65,536-byte limit.
//!
//! Answers: 200 `{"event_id"}` (the receipt's provider id); `M_LIMIT_EXCEEDED`
//! (429) is rate-limited for `retry_after_ms`; 401 (bad token) and 403 (not
//! in the room) are permanent; 400 and 413 are invalid; 5xx retryable.

use notifyhub_plugin_sdk::fit::Units;
use notifyhub_plugin_sdk::format::{markdown_to_html, plain_body, truncate_bytes};
use notifyhub_plugin_sdk::{
    Format, Message, Plugin, PluginInfo, Receipt, SendError, config_key, form, html, http,
    required_config,
};
use serde_json::{Value, json};

/// Each body's share of the 65,536-byte event, in bytes.
const PLAIN_MAX_BYTES: usize = 24 * 1024;
const HTML_MAX_BYTES: usize = 32 * 1024;

struct Matrix;

impl Plugin for Matrix {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "matrix".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            platforms: vec!["matrix".into()],
            config_keys: vec![
                config_key("homeserver", true, false, "the homeserver's base URL"),
                config_key("access_token", true, true, "the bot user's access token"),
            ],
            rate_limits: vec![],
            description: "Matrix rooms (client-server API, m.notice)".into(),
        }
    }

    fn send(message: Message) -> Result<Receipt, SendError> {
        let homeserver = required_config("homeserver")?;
        let token = required_config("access_token")?;
        let room = message.target.trim();
        if !room.starts_with('!') || !room.contains(':') {
            return Err(SendError::invalid(
                "the target must be a room id such as !abc:example.org",
            ));
        }
        let url = format!(
            "{}/_matrix/client/v3/rooms/{}/send/m.room.message/{}",
            homeserver.trim_end_matches('/'),
            form::encode_component(room),
            form::encode_component(&message.task_id),
        );
        let response = http::Request::put(&url)
            .header("authorization", format!("Bearer {token}"))
            .json_body(event(&message).to_string())
            .send()?;
        let answer: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
        if response.is_success() {
            return match answer["event_id"].as_str() {
                Some(id) => Ok(Receipt {
                    provider_id: Some(id.to_string()),
                    status: format!("HTTP {}", response.status),
                }),
                None => Err(SendError::retryable(
                    format!("HTTP {} without an event_id", response.status),
                    None,
                )),
            };
        }
        let detail = format!(
            "HTTP {} {}: {}",
            response.status,
            answer["errcode"].as_str().unwrap_or("?"),
            answer["error"].as_str().unwrap_or_default()
        );
        match (response.status, answer["errcode"].as_str()) {
            (429, _) | (_, Some("M_LIMIT_EXCEEDED")) => Err(SendError::rate_limited(
                detail,
                answer["retry_after_ms"]
                    .as_u64()
                    .or_else(|| response.retry_after_ms())
                    .unwrap_or(http::DEFAULT_RETRY_AFTER_MS),
            )),
            (413, _) | (_, Some("M_TOO_LARGE")) => Err(SendError::invalid(detail)),
            _ => Err(response.failure(detail)),
        }
    }
}

fn event(message: &Message) -> Value {
    let title = message
        .title
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let plain = plain_body(message);
    let plain = match title {
        Some(t) => format!("{t}\n\n{plain}"),
        None => plain,
    };
    let mut event = json!({
        "msgtype": "m.notice",
        "body": truncate_bytes(&plain, PLAIN_MAX_BYTES),
        "m.mentions": {},
    });
    let formatted = match message.format {
        Format::Text => None,
        Format::Markdown => Some(markdown_to_html(&message.body)),
        Format::Html => Some(html::sanitize(&message.body, &html::EMAIL)),
    };
    if let Some(body) = formatted {
        let head = title
            .map(|t| format!("<b>{}</b><br>", html::escape(t)))
            .unwrap_or_default();
        event["format"] = json!("org.matrix.custom.html");
        event["formatted_body"] = json!(html::cut(
            &format!("{head}{body}"),
            HTML_MAX_BYTES,
            Units::Bytes
        ));
    }
    event
}

notifyhub_plugin_sdk::export_plugin!(Matrix);
