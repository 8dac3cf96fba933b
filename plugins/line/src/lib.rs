//! LINE Messaging API: a push message, `POST /v2/bot/message/push`.
//!
//! The target is a user, group or room id (`U…`, `C…`, `R…`, 33
//! characters); `channel_access_token` (a secret) is the channel's
//! long-lived token; `api_url` overrides
//! `https://api.line.me/v2/bot/message/push`.
//!
//! One text message: the title on its own line, then the body as plain
//! text (LINE renders no markup), cut with a marker to 5,000 characters
//! (counted in UTF-16 units, so an emoji counts two and the limit holds
//! however LINE counts it). `X-Line-Retry-Key` is the task id (a UUID): if
//! LINE already accepted a request with it, it answers 409 and the message
//! is not sent twice, which counts as delivered.
//!
//! Answers: 200 with `sentMessages` (the first id is the provider id), 409
//! with `x-line-accepted-request-id` delivered; 400 invalid; 401/403
//! permanent; 429 rate-limited: for an hour when the monthly message quota
//! is spent, else by `Retry-After`; 5xx retryable.

use notifyhub_plugin_sdk::format::{plain_body, truncate_utf16};
use notifyhub_plugin_sdk::{
    Message, Plugin, PluginInfo, Receipt, SendError, config, config_key, http, required_config,
};
use serde_json::{Value, json};

const DEFAULT_API: &str = "https://api.line.me/v2/bot/message/push";
const TEXT_MAX_UTF16: usize = 5000;
const QUOTA_WAIT_MS: u64 = 3_600_000;

struct Line;

impl Plugin for Line {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "line".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            platforms: vec!["line".into()],
            config_keys: vec![
                config_key(
                    "channel_access_token",
                    true,
                    true,
                    "the channel's access token",
                ),
                config_key("api_url", false, false, "push endpoint (default LINE's)"),
            ],
            rate_limits: vec![],
            description: "LINE push messages (Messaging API)".into(),
        }
    }

    fn send(message: Message) -> Result<Receipt, SendError> {
        let token = required_config("channel_access_token")?;
        let to = message.target.trim();
        let id_ok = to.len() == 33
            && matches!(to.as_bytes()[0], b'U' | b'C' | b'R')
            && to[1..].bytes().all(|b| b.is_ascii_hexdigit());
        if !id_ok {
            return Err(SendError::invalid(
                "the target must be a LINE user, group or room id (U…, C… or R…, 33 characters)",
            ));
        }
        let url = config("api_url").unwrap_or_else(|| DEFAULT_API.into());
        let text = match message
            .title
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            Some(title) => format!("{title}\n{}", plain_body(&message)),
            None => plain_body(&message),
        };
        let body = json!({
            "to": to,
            "messages": [{ "type": "text", "text": truncate_utf16(&text, TEXT_MAX_UTF16) }],
        });
        let response = http::Request::post(&url)
            .header("authorization", format!("Bearer {token}"))
            .header("x-line-retry-key", message.task_id.clone())
            .json_body(body.to_string())
            .send()?;
        let answer: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
        let detail = format!(
            "HTTP {}: {}",
            response.status,
            answer["message"].as_str().unwrap_or_default()
        );
        match response.status {
            200 => Ok(Receipt {
                provider_id: answer["sentMessages"][0]["id"].as_str().map(str::to_string),
                status: "HTTP 200".into(),
            }),
            409 if response.header("x-line-accepted-request-id").is_some() => Ok(Receipt {
                provider_id: answer["sentMessages"][0]["id"].as_str().map(str::to_string),
                status: "HTTP 409: already accepted (retry key)".into(),
            }),
            429 if detail.contains("monthly limit") => Err(SendError::rate_limited(
                format!("{detail} (monthly quota spent)"),
                QUOTA_WAIT_MS,
            )),
            400 => Err(SendError::invalid(detail)),
            _ => Err(response.failure(detail)),
        }
    }
}

notifyhub_plugin_sdk::export_plugin!(Line);
