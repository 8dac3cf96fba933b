//! Telegram bots: `sendMessage` in HTML parse mode.
//!
//! The target is a chat id (`-1001234567890`, `123456`) or a channel
//! username (`@channel`), optionally with a forum topic: `-100123:42`. The
//! bot token is the config key `bot_token` (a secret: it sits in the URL
//! path, `…/bot<TOKEN>/sendMessage`, so it never goes in the target);
//! `api_base` overrides `https://api.telegram.org` for a local Bot API
//! server.
//!
//! Text is escaped for HTML; markdown is converted to Telegram's HTML
//! subset; HTML is reduced to that subset (`<script>`, `<div>` and other
//! tags Telegram refuses are dropped, unclosed tags closed). A title becomes
//! a bold first line, cut to a quarter of the limit. Telegram takes 1–4096
//! characters (UTF-16 code units) after entity parsing; the marked-up text
//! is cut to 4096 of them as written — so the parsed text is shorter still
//! — never inside a tag or an entity, with open tags closed. An empty
//! message is sent as "(empty message)". Link previews are off.
//!
//! Answers: `{"ok":true,"result":{"message_id":…}}`; a 429 carries
//! `parameters.retry_after` (seconds); 401 (bad token) and 403 (bot
//! blocked or kicked) are permanent; 400 (bad chat id, bad markup) is
//! invalid.

use notifyhub_plugin_sdk::fit::Units;
use notifyhub_plugin_sdk::format::{EMPTY_BODY, markdown_to_html, truncate};
use notifyhub_plugin_sdk::{
    Format, Message, Plugin, PluginInfo, Priority, RateLimitRule, Receipt, SendError, config,
    config_key, html, http, required_config,
};
use serde_json::{Value, json};

const MAX_CHARS: usize = 4096;
const DEFAULT_API: &str = "https://api.telegram.org";

struct Telegram;

impl Plugin for Telegram {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "telegram".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            platforms: vec!["telegram".into()],
            config_keys: vec![
                config_key("bot_token", true, true, "the bot's token from @BotFather"),
                config_key(
                    "api_base",
                    false,
                    false,
                    "Bot API base URL (default https://api.telegram.org)",
                ),
            ],
            rate_limits: vec![RateLimitRule {
                requests: 1,
                window_ms: 1_000,
            }],
            description: "Telegram bots: sendMessage with HTML formatting".into(),
        }
    }

    fn send(message: Message) -> Result<Receipt, SendError> {
        let token = required_config("bot_token")?;
        let base = config("api_base").unwrap_or_else(|| DEFAULT_API.into());
        let url = format!("{}/bot{token}/sendMessage", base.trim_end_matches('/'));
        let response = http::Request::post(&url)
            .json_body(payload(&message)?.to_string())
            .send()?;
        let answer: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
        if answer["ok"] == true {
            return Ok(Receipt {
                provider_id: answer["result"]["message_id"]
                    .as_i64()
                    .map(|id| id.to_string()),
                status: "ok".into(),
            });
        }
        let detail = format!(
            "HTTP {}: {}",
            response.status,
            answer["description"].as_str().unwrap_or("(no description)")
        );
        match response.status {
            429 => Err(SendError::rate_limited(
                detail,
                answer["parameters"]["retry_after"]
                    .as_f64()
                    .and_then(http::seconds_ms)
                    .or_else(|| response.retry_after_ms())
                    .unwrap_or(http::DEFAULT_RETRY_AFTER_MS),
            )),
            401 | 403 | 404 => Err(SendError::permanent(detail)),
            400 => Err(SendError::invalid(detail)),
            _ => {
                response.classify()?;
                Err(SendError::retryable(detail, None))
            }
        }
    }
}

fn payload(message: &Message) -> Result<Value, SendError> {
    let (chat, topic) = match message.target.rsplit_once(':') {
        Some((chat, topic)) if topic.parse::<i64>().is_ok() => (chat, Some(topic)),
        _ => (message.target.as_str(), None),
    };
    if chat.is_empty() {
        return Err(SendError::invalid(
            "the target must be a chat id or @channel",
        ));
    }
    let body = match message.format {
        Format::Text => html::escape(&message.body),
        Format::Markdown => html::sanitize(&markdown_to_html(&message.body), &html::TELEGRAM),
        Format::Html => html::sanitize(&message.body, &html::TELEGRAM),
    };
    let body = if html::to_text(&body).trim().is_empty() {
        EMPTY_BODY.to_string()
    } else {
        body
    };
    let text = match message.title.as_deref().filter(|t| !t.trim().is_empty()) {
        Some(title) => format!(
            "<b>{}</b>\n{body}",
            html::escape(&truncate(title, MAX_CHARS / 4))
        ),
        None => body,
    };
    let text = html::cut(&text, MAX_CHARS, Units::Utf16);
    let chat_id = chat
        .parse::<i64>()
        .map_or_else(|_| json!(chat), |id| json!(id));
    let mut document = json!({
        "chat_id": chat_id,
        "text": text,
        "parse_mode": "HTML",
        "disable_web_page_preview": true,
        "disable_notification": message.priority == Priority::Low,
    });
    if let Some(topic) = topic {
        document["message_thread_id"] = json!(topic.parse::<i64>().expect("checked above"));
    }
    Ok(document)
}

notifyhub_plugin_sdk::export_plugin!(Telegram);
