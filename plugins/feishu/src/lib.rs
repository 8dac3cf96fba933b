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
//! markdown only inside cards. HTML becomes plain text. The size is
//! budgeted on the encoded request, signature included: the body text is cut
//! with a marker until the JSON is at most [`MAX_REQUEST_BYTES`] (Feishu
//! refuses bodies over 20 KB; a `post` adds structure per line, so a cut on
//! the text alone is not enough). `<at …>` in user text is defused (a
//! zero-width space after the `<`), so a message cannot mention everyone.
//!
//! Feishu answers HTTP 200 with `code` ≠ 0 for failures (older deployments
//! use `StatusCode`): 11232 is its rate limit; 9499 a bad request; every
//! other code (19021 signature or clock, 19022 IP, 19024 keyword, 19001
//! token) is permanent.

use notifyhub_plugin_sdk::format::{plain_body, truncate, truncate_bytes};
use notifyhub_plugin_sdk::{
    Format, Message, Plugin, PluginInfo, Priority, RateLimitRule, Receipt, SendError, config,
    config_key, fit, http, sign, time,
};
use serde_json::{Value, json};

/// Feishu's 20 KB request limit, with a margin.
const MAX_REQUEST_BYTES: usize = 19_500;
const TITLE_MAX_CHARS: usize = 200;
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
        let signature = config("secret").map(|secret| {
            let timestamp = time::unix_seconds();
            (timestamp.to_string(), sign::feishu(&secret, timestamp))
        });
        let text = defuse(&plain_body(&message));
        let request = fit::largest(MAX_REQUEST_BYTES, text.len(), |budget| {
            let mut document = payload(&message, &truncate_bytes(&text, budget));
            if let Some((timestamp, sign)) = &signature {
                document["timestamp"] = json!(timestamp);
                document["sign"] = json!(sign);
            }
            document.to_string()
        });
        let response = http::Request::post(&message.target)
            .json_body(request)
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

fn payload(message: &Message, body: &str) -> Value {
    let title = message
        .title
        .as_deref()
        .filter(|t| !t.trim().is_empty())
        .map(|t| defuse(&truncate(t, TITLE_MAX_CHARS)));
    match (title, message.format) {
        (title, Format::Markdown) => json!({
            "msg_type": "interactive",
            "card": {
                "header": {
                    "title": {
                        "tag": "plain_text",
                        "content": title.unwrap_or_else(|| "Notification".into()),
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

/// Breaks `<at …>` mentions in user text with a zero-width space, so that
/// `<at user_id="all">` shows as text instead of notifying everyone.
fn defuse(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('<') {
        out.push_str(&rest[..=at]);
        rest = &rest[at + 1..];
        if rest.len() >= 2 && rest[..2].eq_ignore_ascii_case("at") {
            out.push('\u{200B}');
        }
    }
    out.push_str(rest);
    out
}

fn template(priority: Priority) -> &'static str {
    match priority {
        Priority::High => "red",
        Priority::Normal => "blue",
        Priority::Low => "grey",
    }
}

notifyhub_plugin_sdk::export_plugin!(Feishu);
