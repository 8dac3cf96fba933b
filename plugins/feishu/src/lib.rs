//! Feishu and Lark custom bots (飞书自定义机器人).
//!
//! The target is the bot's webhook URL (`https://open.feishu.cn/open-apis/
//! bot/v2/hook/…`, or `open.larksuite.com` for Lark). With `secret`
//! configured, the body carries `timestamp` (seconds) and `sign`
//! (base64 HMAC-SHA256 keyed with `"{timestamp}\n{secret}"` over an empty
//! message — the reverse of DingTalk).
//!
//! Forms: plain text → `msg_type: text`; text with a title → `post` (rich
//! text with a title); markdown → an `interactive` card with the title as
//! its header and the body in a `markdown` element, because Feishu renders
//! markdown only inside cards. Text is cut to 18,000 bytes with a marker
//! (Feishu refuses bodies over 20 KB).
//!
//! Feishu answers HTTP 200 with `code` ≠ 0 for failures (older deployments
//! use `StatusCode`): 11232 is its rate limit; 9499 a bad request; every
//! other code (19021 signature or clock, 19022 IP, 19024 keyword, 19001
//! token) is permanent.

use notifyhub_plugin_sdk::format::truncate_bytes;
use notifyhub_plugin_sdk::{
    Format, Message, Plugin, PluginInfo, Priority, RateLimitRule, Receipt, SendError, config,
    config_key, http, sign, time,
};
use serde_json::{Value, json};

const MAX_BYTES: usize = 18_000;
const RATE_LIMITED: i64 = 11_232;
const BAD_REQUEST: i64 = 9_499;

struct Feishu;

impl Plugin for Feishu {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "feishu".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            platforms: vec!["feishu".into(), "lark".into()],
            config_keys: vec![
                config_key(
                    "secret",
                    false,
                    true,
                    "the bot's signing secret; requests are signed when set",
                ),
                config_key(
                    "locale",
                    false,
                    false,
                    "language of rich-text posts: zh_cn (default) or en_us",
                ),
            ],
            rate_limits: vec![
                RateLimitRule {
                    requests: 5,
                    window_ms: 1_000,
                },
                RateLimitRule {
                    requests: 100,
                    window_ms: 60_000,
                },
            ],
            description: "Feishu and Lark custom bots (signed; text, post and markdown cards)"
                .into(),
        }
    }

    fn send(message: Message) -> Result<Receipt, SendError> {
        if !message.target.starts_with("https://") && !message.target.starts_with("http://") {
            return Err(SendError::invalid(
                "the target must be a Feishu or Lark bot webhook URL",
            ));
        }
        let mut document = payload(&message);
        if let Some(secret) = config("secret") {
            let timestamp = time::unix_seconds();
            document["timestamp"] = json!(timestamp.to_string());
            document["sign"] = json!(sign::feishu(&secret, timestamp));
        }
        let response = http::Request::post(&message.target)
            .json_body(document.to_string())
            .send()?;
        // Older deployments answer with `StatusCode` / `StatusMessage`.
        let (code, detail) =
            response.business_code("Feishu", &["code", "StatusCode"], &["msg", "StatusMessage"])?;
        match code {
            0 => Ok(Receipt::status("ok")),
            RATE_LIMITED => Err(SendError::rate_limited(
                detail,
                response.retry_after_ms().unwrap_or(1_000),
            )),
            BAD_REQUEST => Err(SendError::invalid(detail)),
            _ => Err(SendError::permanent(detail)),
        }
    }
}

fn payload(message: &Message) -> Value {
    let body = truncate_bytes(&message.body, MAX_BYTES);
    match (&message.title, message.format) {
        (_, Format::Markdown) => json!({
            "msg_type": "interactive",
            "card": {
                "header": {
                    "title": {
                        "tag": "plain_text",
                        "content": message.title.clone().unwrap_or_else(|| "Notification".into()),
                    },
                    "template": template(message.priority),
                },
                "elements": [{ "tag": "markdown", "content": body }],
            },
        }),
        (None, _) => json!({ "msg_type": "text", "content": { "text": body } }),
        (Some(title), _) => {
            let locale = config("locale").unwrap_or_else(|| "zh_cn".into());
            let lines: Vec<Value> = body
                .lines()
                .map(|line| json!([{ "tag": "text", "text": line }]))
                .collect();
            json!({
                "msg_type": "post",
                "content": { "post": { locale: { "title": title, "content": lines } } },
            })
        }
    }
}

fn template(priority: Priority) -> &'static str {
    match priority {
        Priority::High => "red",
        Priority::Normal => "blue",
        Priority::Low => "grey",
    }
}

notifyhub_plugin_sdk::export_plugin!(Feishu);
