//! WeCom group robots (企业微信群机器人).
//!
//! The target is the robot's webhook URL
//! (`https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=…`); the key is
//! the credential and WeCom has no signing. Plain text goes as `msgtype:
//! text` (≤ 2048 bytes); a title or markdown goes as `msgtype: markdown`
//! (≤ 4096 bytes) with the title as a heading, since WeCom's markdown has no
//! title field. Over-long text is cut to the byte limit with a marker.
//! Metadata `mentioned_list` and `mentioned_mobile_list` (comma-separated,
//! `@all` allowed) mention people in text messages.
//!
//! WeCom answers HTTP 200 with `errcode` ≠ 0 for failures: 45009 ("api freq
//! out of limit") is the rate limit; every other code (93000 invalid
//! webhook URL, …) is permanent.

use notifyhub_plugin_sdk::format::{plain_body, truncate_bytes};
use notifyhub_plugin_sdk::{
    Format, Message, Plugin, PluginInfo, RateLimitRule, Receipt, SendError, http,
};
use serde_json::{Value, json};

const TEXT_MAX_BYTES: usize = 2048;
const MARKDOWN_MAX_BYTES: usize = 4096;
const RATE_LIMITED: i64 = 45_009;
/// WeCom counts 20 per minute; wait out a whole window.
const RATE_LIMIT_WAIT_MS: u64 = 60_000;

struct WeCom;

impl Plugin for WeCom {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "wecom".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            platforms: vec!["wecom".into()],
            config_keys: vec![],
            rate_limits: vec![RateLimitRule {
                requests: 20,
                window_ms: 60_000,
            }],
            description: "WeCom group robots (text and markdown)".into(),
        }
    }

    fn send(message: Message) -> Result<Receipt, SendError> {
        if !message.target.starts_with("https://") && !message.target.starts_with("http://") {
            return Err(SendError::invalid(
                "the target must be a WeCom robot webhook URL",
            ));
        }
        let response = http::Request::post(&message.target)
            .json_body(payload(&message).to_string())
            .send()?;
        let (code, detail) = response.business_code("WeCom", &["errcode"], &["errmsg"])?;
        match code {
            0 => Ok(Receipt::status("ok")),
            RATE_LIMITED => Err(SendError::rate_limited(detail, RATE_LIMIT_WAIT_MS)),
            _ => Err(SendError::permanent(detail)),
        }
    }
}

fn payload(message: &Message) -> Value {
    // WeCom refuses an empty text; `<@userid>` in markdown would mention.
    let body = plain_body(message).replace("<@", "<\u{200B}@");
    let title = message.title.as_deref().filter(|t| !t.trim().is_empty());
    if title.is_none() && message.format == Format::Text {
        return json!({
            "msgtype": "text",
            "text": {
                "content": truncate_bytes(&body, TEXT_MAX_BYTES),
                "mentioned_list": list(message, "mentioned_list"),
                "mentioned_mobile_list": list(message, "mentioned_mobile_list"),
            },
        });
    }
    // The heading is one line, at most a quarter of the limit; the body
    // takes the rest.
    let heading = title.map_or_else(String::new, |t| {
        let line: String = t
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        format!(
            "# {}\n",
            truncate_bytes(line.trim(), MARKDOWN_MAX_BYTES / 4).replace("<@", "<\u{200B}@")
        )
    });
    let body = truncate_bytes(&body, MARKDOWN_MAX_BYTES - heading.len());
    json!({
        "msgtype": "markdown",
        "markdown": { "content": format!("{heading}{body}") },
    })
}

fn list(message: &Message, key: &str) -> Vec<String> {
    message
        .metadata
        .iter()
        .filter(|(k, _)| k == key)
        .flat_map(|(_, v)| v.split(','))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

notifyhub_plugin_sdk::export_plugin!(WeCom);
