//! Zulip: a message through `POST /api/v1/messages`, as a bot.
//!
//! Config: `site` (the organization's URL), `email` (the bot's address) and
//! `api_key` (a secret), sent as HTTP basic auth. The target is a channel,
//! `ops` or `ops:deploys` (channel and topic), or direct messages,
//! `dm:alice@example.com,bob@example.com`. A channel message's topic is the
//! one in the target, else the title, else "notifyhub" (≤ 60 characters).
//!
//! Zulip renders its own markdown, so markdown passes through and HTML is
//! reduced to text. Every `@` is followed by a word joiner (U+2060), so
//! `@**all**`, `@**channel**` or `@**alice**` in a message notifies no one.
//! Content is cut with a marker to 10,000 bytes.
//!
//! Answers: 200 `{"result": "success", "id"}` (the message id is the
//! provider id); `RATE_LIMIT_HIT` (429) is rate-limited for `Retry-After`;
//! 401 and a channel or user that does not exist are permanent; other 400s
//! invalid; 5xx retryable.

use base64::Engine;
use notifyhub_plugin_sdk::format::{plain_body, truncate, truncate_bytes};
use notifyhub_plugin_sdk::{
    Message, Plugin, PluginInfo, Receipt, SendError, config_key, form, http, required_config,
};
use serde_json::{Value, json};

const CONTENT_MAX_BYTES: usize = 10_000;
const TOPIC_MAX: usize = 60;
const MAX_RECIPIENTS: usize = 50;
const WORD_JOINER: char = '\u{2060}';

struct Zulip;

impl Plugin for Zulip {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "zulip".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            platforms: vec!["zulip".into()],
            config_keys: vec![
                config_key("site", true, false, "the organization's URL"),
                config_key("email", true, false, "the bot's e-mail address"),
                config_key("api_key", true, true, "the bot's API key"),
            ],
            rate_limits: vec![],
            description: "Zulip channels and direct messages (bot API)".into(),
        }
    }

    fn send(message: Message) -> Result<Receipt, SendError> {
        let (site, email, key) = (
            required_config("site")?,
            required_config("email")?,
            required_config("api_key")?,
        );
        let target = message.target.trim();
        let title = message
            .title
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty());
        // A channel message's title is its topic; a direct message has none,
        // so the title leads the content.
        let lead = match (target.starts_with("dm:"), title) {
            (true, Some(t)) => format!("**{}**\n", t.replace(['\n', '\r'], " ")),
            _ => String::new(),
        };
        let content = truncate_bytes(
            &defuse(&format!("{lead}{}", plain_body(&message))),
            CONTENT_MAX_BYTES,
        );
        let fields: Vec<(&str, String)> = match target.strip_prefix("dm:") {
            Some(list) => {
                let people: Vec<&str> = list
                    .split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .collect();
                if people.is_empty() || people.len() > MAX_RECIPIENTS {
                    return Err(SendError::invalid(format!(
                        "dm: needs 1 to {MAX_RECIPIENTS} addresses"
                    )));
                }
                vec![("type", "direct".into()), ("to", json!(people).to_string())]
            }
            None => {
                let (channel, topic) = match target.split_once(':') {
                    Some((c, t)) => (c.trim(), Some(t.trim())),
                    None => (target, None),
                };
                if channel.is_empty() {
                    return Err(SendError::invalid(
                        "the target must be a channel (ops, ops:topic) or dm:ADDRESSES",
                    ));
                }
                let topic = topic
                    .filter(|t| !t.is_empty())
                    .or(title)
                    .unwrap_or("notifyhub");
                let topic = truncate(&topic.replace(['\n', '\r'], " "), TOPIC_MAX);
                vec![
                    ("type", "stream".into()),
                    ("to", channel.into()),
                    ("topic", topic),
                ]
            }
        };
        let mut pairs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        pairs.push(("content", &content));
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{email}:{key}"));
        let response =
            http::Request::post(&format!("{}/api/v1/messages", site.trim_end_matches('/')))
                .header("authorization", format!("Basic {auth}"))
                .body("application/x-www-form-urlencoded", form::encode(pairs))
                .send()?;
        let answer: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
        if response.is_success() && answer["result"] == "success" {
            return Ok(Receipt {
                provider_id: answer["id"].as_u64().map(|id| id.to_string()),
                status: format!("HTTP {}", response.status),
            });
        }
        let code = answer["code"].as_str().unwrap_or("?");
        let detail = format!(
            "HTTP {} ({code}): {}",
            response.status,
            answer["msg"].as_str().unwrap_or_default()
        );
        let missing = ["STREAM_NOT_FOUND", "USER_NOT_FOUND", "UNAUTHORIZED"].contains(&code)
            || detail.contains("does not exist");
        match response.status {
            429 => Err(SendError::rate_limited(
                detail,
                response
                    .retry_after_ms()
                    .or_else(|| answer["retry-after"].as_f64().and_then(http::seconds_ms))
                    .unwrap_or(http::DEFAULT_RETRY_AFTER_MS),
            )),
            400 if missing => Err(SendError::permanent(detail)),
            400 => Err(SendError::invalid(detail)),
            _ => Err(response.failure(detail)),
        }
    }
}

/// `text` with a word joiner after every `@`: no mention survives.
fn defuse(text: &str) -> String {
    text.chars()
        .flat_map(|c| std::iter::once(c).chain((c == '@').then_some(WORD_JOINER)))
        .collect()
}

notifyhub_plugin_sdk::export_plugin!(Zulip);
