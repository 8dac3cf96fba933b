//! Pushover: `POST /1/messages.json`, form-encoded.
//!
//! The target is the user or group key; the application token is the
//! config key `app_token` (a secret); `api_url` overrides
//! `https://api.pushover.net/1/messages.json`. Markdown and HTML go with
//! `html=1` (markdown converted to Pushover's HTML subset); text is sent as
//! it is. Priority maps low → -1, normal → 0, high → 1. Limits: message
//! 1024 characters, title 250, both cut with a marker.
//!
//! Success is `{"status":1,"request":…}` (the request id is the receipt's
//! provider id). `status` ≠ 1 with HTTP 4xx lists `errors`: a bad token or
//! user key is permanent, anything else invalid. A 429 means the monthly
//! quota is spent: it is rate-limited until `X-Limit-App-Reset` (a Unix
//! time), not retried sooner.

use notifyhub_plugin_sdk::fit::Units;
use notifyhub_plugin_sdk::format::{markdown_to_html, or_placeholder, truncate};
use notifyhub_plugin_sdk::{
    Format, Message, Plugin, PluginInfo, Priority, Receipt, SendError, config, config_key, form,
    html, http, required_config,
};
use serde_json::Value;

const MESSAGE_MAX: usize = 1024;
const TITLE_MAX: usize = 250;
const DEFAULT_API: &str = "https://api.pushover.net/1/messages.json";
/// When a 429 has no reset time: an hour, not a hot loop.
const QUOTA_WAIT_MS: u64 = 3_600_000;

struct Pushover;

impl Plugin for Pushover {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "pushover".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            platforms: vec!["pushover".into()],
            config_keys: vec![
                config_key("app_token", true, true, "the application's API token"),
                config_key(
                    "api_url",
                    false,
                    false,
                    "messages endpoint (default Pushover's)",
                ),
            ],
            rate_limits: vec![],
            description: "Pushover push notifications".into(),
        }
    }

    fn send(message: Message) -> Result<Receipt, SendError> {
        let token = required_config("app_token")?;
        if message.target.trim().is_empty() {
            return Err(SendError::invalid(
                "the target must be a Pushover user or group key",
            ));
        }
        let url = config("api_url").unwrap_or_else(|| DEFAULT_API.into());
        let (text, html) = match message.format {
            Format::Text => (truncate(&message.body, MESSAGE_MAX), None),
            Format::Markdown => (fit_html(&markdown_to_html(&message.body)), Some("1")),
            Format::Html => (fit_html(&message.body), Some("1")),
        };
        // Pushover refuses an empty message.
        let text = or_placeholder(text);
        let title = message
            .title
            .as_deref()
            .filter(|t| !t.trim().is_empty())
            .map(|t| truncate(t, TITLE_MAX));
        let priority = match message.priority {
            Priority::Low => "-1",
            Priority::Normal => "0",
            Priority::High => "1",
        };
        let mut fields = vec![
            ("token", token.as_str()),
            ("user", message.target.as_str()),
            ("message", text.as_str()),
            ("priority", priority),
        ];
        if let Some(title) = &title {
            fields.push(("title", title));
        }
        if let Some(html) = html {
            fields.push(("html", html));
        }
        let response = http::Request::post(&url)
            .body("application/x-www-form-urlencoded", form::encode(fields))
            .send()?;
        let answer: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
        if response.is_success() && answer["status"] == 1 {
            return Ok(Receipt {
                provider_id: answer["request"].as_str().map(str::to_string),
                status: "ok".into(),
            });
        }
        let errors: Vec<&str> = answer["errors"]
            .as_array()
            .map(|e| e.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let detail = format!("HTTP {}: {}", response.status, errors.join("; "));
        match response.status {
            429 => {
                let reset = response
                    .header("x-limit-app-reset")
                    .and_then(|r| r.trim().parse::<u64>().ok())
                    .map(http::until_unix_ms);
                Err(SendError::rate_limited(
                    format!("{detail} (monthly quota spent)"),
                    reset.unwrap_or(QUOTA_WAIT_MS),
                ))
            }
            400..=499
                if errors
                    .iter()
                    .any(|e| e.contains("token") || e.contains("user")) =>
            {
                Err(SendError::permanent(detail))
            }
            400 => Err(SendError::invalid(detail)),
            _ => {
                response.classify()?;
                Err(SendError::retryable(detail, None))
            }
        }
    }
}

/// HTML reduced to Pushover's subset and cut to [`MESSAGE_MAX`]
/// characters without breaking a tag or an entity.
fn fit_html(input: &str) -> String {
    html::cut(
        &html::sanitize(input, &html::PUSHOVER),
        MESSAGE_MAX,
        Units::Chars,
    )
}

notifyhub_plugin_sdk::export_plugin!(Pushover);
