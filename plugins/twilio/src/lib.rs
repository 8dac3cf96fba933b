//! Twilio SMS: `POST /2010-04-01/Accounts/{sid}/Messages.json`, a form, HTTP
//! basic auth with the account SID and auth token.
//!
//! The target is the recipient's number in E.164 (`+15551234567`). Config:
//! `account_sid`, `auth_token` (a secret), and the sender: `from` (a Twilio
//! number) or `messaging_service_sid`; `max_segments` (default 10) bounds
//! what one notification costs; `api_url` overrides
//! `https://api.twilio.com`.
//!
//! The text is the title on its own line, then the body as plain text. SMS
//! is billed per segment: 160 GSM-7 characters, or 153 each when split
//! (the characters `^{}[]~|€\` take two); any other character makes the
//! whole message UCS-2, 70 UTF-16 units, or 67 each when split. The text is
//! cut to `max_segments` (and Twilio's 1,600 characters) with a marker in
//! the text's own alphabet, so a cut never turns a GSM-7 message into a
//! UCS-2 one.
//!
//! Answers: 201 with the message's `sid` (the provider id). Errors carry a
//! Twilio `code`: 20003 (authentication) and 21610 (the recipient replied
//! STOP) permanent, 20429 and 429 rate-limited, other 4xx invalid (21211:
//! not a valid number), 5xx retryable.

use base64::Engine;
use notifyhub_plugin_sdk::format::plain_body;
use notifyhub_plugin_sdk::{
    Message, Plugin, PluginInfo, Receipt, SendError, config, config_key, form, http,
    required_config,
};
use serde_json::Value;

const DEFAULT_API: &str = "https://api.twilio.com";
const MAX_CHARACTERS: usize = 1600;
const DEFAULT_SEGMENTS: usize = 10;
const GSM_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
const GSM_EXTENDED: &str = "^{}\\[~]|€\u{c}";

struct Twilio;

impl Plugin for Twilio {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "twilio".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            platforms: vec!["twilio".into(), "sms".into()],
            config_keys: vec![
                config_key("account_sid", true, false, "the account SID (AC…)"),
                config_key("auth_token", true, true, "the account's auth token"),
                config_key("from", false, false, "the sending number, E.164"),
                config_key(
                    "messaging_service_sid",
                    false,
                    false,
                    "or a Messaging Service (MG…)",
                ),
                config_key(
                    "max_segments",
                    false,
                    false,
                    "segments per message at most (default 10)",
                ),
                config_key("api_url", false, false, "API base URL (default Twilio's)"),
            ],
            rate_limits: vec![],
            description: "SMS through Twilio".into(),
        }
    }

    fn send(message: Message) -> Result<Receipt, SendError> {
        let (sid, token) = (
            required_config("account_sid")?,
            required_config("auth_token")?,
        );
        let to = message.target.trim();
        let digits = to.strip_prefix('+').unwrap_or_default();
        if digits.is_empty() || digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SendError::invalid(
                "the target must be a number in E.164, e.g. +15551234567",
            ));
        }
        let sender = match (config("from"), config("messaging_service_sid")) {
            (Some(from), _) => ("From", from),
            (None, Some(service)) => ("MessagingServiceSid", service),
            (None, None) => {
                return Err(SendError::invalid("set `from` or `messaging_service_sid`"));
            }
        };
        let max_segments = match config("max_segments") {
            None => DEFAULT_SEGMENTS,
            Some(n) => n
                .parse()
                .ok()
                .filter(|n| (1..=10).contains(n))
                .ok_or_else(|| {
                    SendError::invalid(format!("config `max_segments` {n:?} is not 1–10"))
                })?,
        };
        let text = match message
            .title
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            Some(title) => format!("{title}\n{}", plain_body(&message)),
            None => plain_body(&message),
        };
        let body = fit(&text, max_segments);
        let base = config("api_url").unwrap_or_else(|| DEFAULT_API.into());
        let url = format!(
            "{}/2010-04-01/Accounts/{}/Messages.json",
            base.trim_end_matches('/'),
            form::encode_component(&sid)
        );
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{sid}:{token}"));
        let response = http::Request::post(&url)
            .header("authorization", format!("Basic {auth}"))
            .body(
                "application/x-www-form-urlencoded",
                form::encode([
                    ("To", to),
                    (sender.0, sender.1.as_str()),
                    ("Body", body.as_str()),
                ]),
            )
            .send()?;
        let answer: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
        if response.is_success() {
            return Ok(Receipt {
                provider_id: answer["sid"].as_str().map(str::to_string),
                status: format!(
                    "HTTP {} {}",
                    response.status,
                    answer["status"].as_str().unwrap_or("")
                ),
            });
        }
        let code = answer["code"].as_i64();
        let detail = format!(
            "HTTP {} (Twilio {}): {}",
            response.status,
            code.map_or("?".into(), |c| c.to_string()),
            answer["message"].as_str().unwrap_or_default()
        );
        match (response.status, code) {
            (429, _) | (_, Some(20429)) => Err(SendError::rate_limited(
                detail,
                response
                    .retry_after_ms()
                    .unwrap_or(http::DEFAULT_RETRY_AFTER_MS),
            )),
            (_, Some(20003 | 21610)) | (401 | 403, _) => Err(SendError::permanent(detail)),
            (400..=499, _) => Err(SendError::invalid(detail)),
            _ => {
                response.classify()?;
                Err(SendError::retryable(detail, None))
            }
        }
    }
}

/// What one character costs in its message's encoding: GSM-7 septets, or
/// UTF-16 units; `None` when it is not in GSM-7.
fn gsm_septets(c: char) -> Option<usize> {
    if GSM_BASIC.contains(c) {
        Some(1)
    } else if GSM_EXTENDED.contains(c) {
        Some(2)
    } else {
        None
    }
}

/// `text` cut to `segments` SMS segments and Twilio's 1,600 characters.
fn fit(text: &str, segments: usize) -> String {
    let gsm = text.chars().all(|c| gsm_septets(c).is_some());
    let (single, part) = if gsm { (160, 153) } else { (70, 67) };
    let budget = if segments == 1 {
        single
    } else {
        part * segments
    };
    let cost = |c: char| {
        if gsm {
            gsm_septets(c).unwrap_or(1)
        } else {
            c.len_utf16()
        }
    };
    let total: usize = text.chars().map(cost).sum();
    if total <= budget && text.chars().count() <= MAX_CHARACTERS {
        return text.to_string();
    }
    let marker = if gsm {
        "... [truncated]"
    } else {
        "… [truncated]"
    };
    let room = budget - marker.chars().map(cost).sum::<usize>();
    let room_chars = MAX_CHARACTERS - marker.chars().count();
    let mut out = String::new();
    let mut used = 0;
    for (i, c) in text.chars().enumerate() {
        if used + cost(c) > room || i >= room_chars {
            break;
        }
        used += cost(c);
        out.push(c);
    }
    out.push_str(marker);
    out
}

notifyhub_plugin_sdk::export_plugin!(Twilio);
