//! Mastodon: a status (post) through `POST /api/v1/statuses`.
//!
//! The target is the instance's base URL (`https://mastodon.social`); the
//! account's `access_token` (scope `write:statuses`) is a secret.
//! `visibility` is `public`, `unlisted` (the default: no one's public
//! timeline fills with alerts), `private` or `direct`; `max_characters` is
//! the instance's limit (default 500, the stock one).
//!
//! The status is the title on its own line, then the body as plain text
//! (Mastodon renders no markdown), cut with a marker to the limit. A `@` is
//! followed by a word joiner, so `@user@server` in a message mentions (and
//! notifies) no one. `Idempotency-Key` is the task id: a retry within the
//! hour Mastodon remembers keys returns the first status, not a second.
//!
//! Answers: 200 with the status (its id is the provider id); 422 (over the
//! limit, bad visibility) invalid; 401/403 (bad token, missing scope)
//! permanent; 429 rate-limited until `X-RateLimit-Reset` (an ISO 8601 time:
//! 300 statuses per account in 3 hours); 5xx retryable.

use notifyhub_plugin_sdk::format::{plain_body, truncate};
use notifyhub_plugin_sdk::{
    Message, Plugin, PluginInfo, RateLimitRule, Receipt, SendError, config, config_key, form, http,
    required_config, time,
};
use serde_json::Value;

const DEFAULT_MAX_CHARACTERS: usize = 500;
/// U+2060 WORD JOINER: invisible, and not part of a mention's grammar.
const WORD_JOINER: char = '\u{2060}';

struct Mastodon;

impl Plugin for Mastodon {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "mastodon".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            platforms: vec!["mastodon".into()],
            config_keys: vec![
                config_key(
                    "access_token",
                    true,
                    true,
                    "the account's token (write:statuses)",
                ),
                config_key(
                    "visibility",
                    false,
                    false,
                    "public, unlisted (default), private or direct",
                ),
                config_key(
                    "max_characters",
                    false,
                    false,
                    "the instance's limit (default 500)",
                ),
            ],
            rate_limits: vec![RateLimitRule {
                requests: 300,
                window_ms: 3 * 3_600_000,
            }],
            description: "Mastodon statuses".into(),
        }
    }

    fn send(message: Message) -> Result<Receipt, SendError> {
        let token = required_config("access_token")?;
        let instance = message.target.trim().trim_end_matches('/');
        if !instance.starts_with("https://") && !instance.starts_with("http://") {
            return Err(SendError::invalid(
                "the target must be the instance's URL, e.g. https://mastodon.social",
            ));
        }
        let visibility = config("visibility").unwrap_or_else(|| "unlisted".into());
        if !["public", "unlisted", "private", "direct"].contains(&visibility.as_str()) {
            return Err(SendError::invalid(format!(
                "config `visibility` {visibility:?}: use public, unlisted, private or direct"
            )));
        }
        let max = match config("max_characters") {
            None => DEFAULT_MAX_CHARACTERS,
            Some(n) => n
                .parse()
                .ok()
                .filter(|n| (10..=100_000).contains(n))
                .ok_or_else(|| {
                    SendError::invalid(format!("config `max_characters` {n:?} is not 10–100000"))
                })?,
        };
        let response = http::Request::post(&format!("{instance}/api/v1/statuses"))
            .header("authorization", format!("Bearer {token}"))
            .header("idempotency-key", message.task_id.clone())
            .body(
                "application/x-www-form-urlencoded",
                form::encode([
                    ("status", status(&message, max).as_str()),
                    ("visibility", visibility.as_str()),
                ]),
            )
            .send()?;
        let answer: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
        if response.is_success() {
            return Ok(Receipt {
                provider_id: answer["id"].as_str().map(str::to_string),
                status: format!("HTTP {}", response.status),
            });
        }
        let detail = format!(
            "HTTP {}: {}",
            response.status,
            answer["error"].as_str().unwrap_or_default()
        );
        match response.status {
            422 => Err(SendError::invalid(detail)),
            429 => {
                let reset = response
                    .header("x-ratelimit-reset")
                    .and_then(time::parse_rfc3339_utc)
                    .map(http::until_unix_ms);
                Err(SendError::rate_limited(
                    detail,
                    reset
                        .or_else(|| response.retry_after_ms())
                        .unwrap_or(http::DEFAULT_RETRY_AFTER_MS),
                ))
            }
            _ => Err(response.failure(detail)),
        }
    }
}

/// The title and body as one status of at most `max` characters, with no
/// mention in it.
fn status(message: &Message, max: usize) -> String {
    let body = plain_body(message);
    let text = match message
        .title
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        Some(title) => format!("{title}\n\n{body}"),
        None => body,
    };
    let defused: String = text
        .chars()
        .flat_map(|c| {
            let joiner = (c == '@').then_some(WORD_JOINER);
            std::iter::once(c).chain(joiner)
        })
        .collect();
    truncate(defused.trim(), max)
}

notifyhub_plugin_sdk::export_plugin!(Mastodon);
