//! DingTalk custom robots (钉钉自定义机器人).
//!
//! The target is the robot's webhook URL
//! (`https://oapi.dingtalk.com/robot/send?access_token=…`). With `secret`
//! configured (the robot's `SEC…` signing secret), every request carries
//! `&timestamp=<ms>&sign=<urlencoded base64 HMAC-SHA256>`.
//!
//! Plain text goes as `msgtype: text`; a title or markdown goes as `msgtype:
//! markdown` with the title as the conversation-list preview and as a
//! heading (DingTalk does not render the title field itself). DingTalk's
//! markdown is a CommonMark subset, so markdown passes through. `msgUuid`
//! is the task id, so a retried task is not shown twice. HTML becomes plain
//! text. The whole request is budgeted: the body is cut with a visible
//! marker until the JSON is at most 18,000 bytes (DingTalk refuses ~20 KB),
//! and mentions and the heading are never cut. The preview title is one
//! line of at most 64 characters, never empty.
//!
//! DingTalk answers HTTP 200 for most failures, with `errcode` ≠ 0: the
//! rate-limit codes (130101, 410100) pause the robot for 10 minutes, which
//! is how long DingTalk blocks it; every other code is permanent (bad
//! token, signature, keyword or IP whitelist — retrying cannot help).
//! Metadata `at_mobiles` (comma-separated) and `at_all = "true"` mention
//! people.

use notifyhub_plugin_sdk::format::{plain_body, truncate, truncate_bytes};
use notifyhub_plugin_sdk::{
    Format, Message, Plugin, PluginInfo, RateLimitRule, Receipt, SendError, config, config_key,
    fit, http, sign, time,
};
use serde_json::json;

const MAX_BYTES: usize = 18_000;
const TITLE_MAX: usize = 64;
/// DingTalk blocks a robot for ten minutes once it is over its limit.
const BLOCKED_MS: u64 = 10 * 60 * 1000;
const RATE_LIMIT_CODES: [i64; 2] = [130_101, 410_100];

struct DingTalk;

impl Plugin for DingTalk {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "dingtalk".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            platforms: vec!["dingtalk".into()],
            config_keys: vec![config_key(
                "secret",
                false,
                true,
                "the robot's signing secret (SEC…); requests are signed when set",
            )],
            rate_limits: vec![RateLimitRule {
                requests: 20,
                window_ms: 60_000,
            }],
            description: "DingTalk custom robots (signed, markdown, msgUuid de-duplication)".into(),
        }
    }

    fn send(message: Message) -> Result<Receipt, SendError> {
        if !message.target.starts_with("https://") && !message.target.starts_with("http://") {
            return Err(SendError::invalid(
                "the target must be a DingTalk robot webhook URL",
            ));
        }
        let mut url = message.target.clone();
        if let Some(secret) = config("secret") {
            let timestamp = time::unix_millis();
            let separator = if url.contains('?') { '&' } else { '?' };
            url = format!(
                "{url}{separator}timestamp={timestamp}&sign={}",
                sign::dingtalk(&secret, timestamp)
            );
        }
        let response = http::Request::post(&url)
            .json_body(payload(&message))
            .header("content-type", "application/json;charset=utf-8")
            .send()?;
        let (code, detail) = response.business_code("DingTalk", &["errcode"], &["errmsg"])?;
        match code {
            0 => Ok(Receipt::status("ok")),
            c if RATE_LIMIT_CODES.contains(&c) => Err(SendError::rate_limited(detail, BLOCKED_MS)),
            _ => Err(SendError::permanent(detail)),
        }
    }
}

/// The request body.
fn payload(message: &Message) -> String {
    let mentions: Vec<&str> = message
        .meta("at_mobiles")
        .map(|m| {
            m.split(',')
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let at = json!({
        "atMobiles": mentions,
        "isAtAll": message.meta("at_all") == Some("true"),
    });
    // A mention only notifies when the text names the number.
    let tail: String = mentions.iter().map(|m| format!(" @{m}")).collect();
    let body = plain_body(message);
    let plain = message.title.is_none() && message.format == Format::Text;
    let title = [message.title.as_deref().unwrap_or_default()]
        .into_iter()
        .chain(body.lines())
        .map(|l| {
            l.chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect::<String>()
        })
        .map(|l| l.trim().to_string())
        .find(|l| !l.is_empty())
        .map_or_else(|| "Notification".to_string(), |l| truncate(&l, TITLE_MAX));
    let request = fit::largest(MAX_BYTES, body.len(), |budget| {
        let body = truncate_bytes(&body, budget);
        let mut document = if plain {
            json!({ "msgtype": "text", "text": { "content": format!("{body}{tail}") } })
        } else {
            let text = format!("#### {title}\n\n{body}{tail}");
            json!({ "msgtype": "markdown", "markdown": { "title": title, "text": text } })
        };
        document["at"] = at.clone();
        document["msgUuid"] = json!(message.task_id);
        document.to_string()
    });
    request
}

notifyhub_plugin_sdk::export_plugin!(DingTalk);
