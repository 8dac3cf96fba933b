//! Slack incoming webhooks.
//!
//! Text messages are sent as `{"text": …}`; a title turns the message into
//! Block Kit (a header block plus section blocks). Markdown is converted to
//! mrkdwn, HTML to plain text; every user field that Slack parses (the body,
//! and the title in the top-level fallback `text`) is escaped, so `<!channel>`
//! in a title pings nobody. Limits: header 150 characters, section 3000, 50
//! blocks; longer text is cut at a safe point (never inside an entity or a
//! `<url|label>` link) with a visible marker. Success is HTTP 200 with the
//! body `ok`; Slack's error strings (`no_team`, `invalid_payload`, …) are
//! classified by status.

use notifyhub_plugin_sdk::format::{markdown_to_mrkdwn, or_placeholder, truncate};
use notifyhub_plugin_sdk::{
    Format, Message, Plugin, PluginInfo, RateLimitRule, Receipt, SendError, html, http, mrkdwn,
};
use serde_json::{Value, json};

const HEADER_MAX: usize = 150;
const SECTION_MAX: usize = 3000;
/// One block is the header.
const MAX_SECTIONS: usize = 49;

struct Slack;

impl Plugin for Slack {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "slack".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            platforms: vec!["slack".into()],
            config_keys: vec![],
            rate_limits: vec![RateLimitRule {
                requests: 1,
                window_ms: 1_000,
            }],
            description: "Slack incoming webhooks (Block Kit for titled messages)".into(),
        }
    }

    fn send(message: Message) -> Result<Receipt, SendError> {
        if !message.target.starts_with("https://") && !message.target.starts_with("http://") {
            return Err(SendError::invalid(
                "the target must be a Slack incoming-webhook URL",
            ));
        }
        let response = http::Request::post(&message.target)
            .json_body(payload(&message).to_string())
            .send()?;
        let text = response.text();
        if response.status == 200 && text.trim() == "ok" {
            return Ok(Receipt::status("ok"));
        }
        response.classify()?;
        Err(SendError::retryable(
            format!("unexpected answer from Slack: HTTP 200 {text:?}"),
            None,
        ))
    }
}

fn payload(message: &Message) -> Value {
    let body = match message.format {
        Format::Markdown => markdown_to_mrkdwn(&message.body),
        Format::Text => mrkdwn::escape(&message.body),
        Format::Html => mrkdwn::escape(&html::to_text(&message.body)),
    };
    let body = or_placeholder(body);
    let body = mrkdwn::cut(&body, SECTION_MAX * MAX_SECTIONS);
    let Some(title) = message.title.as_deref().filter(|t| !t.trim().is_empty()) else {
        return json!({ "text": body });
    };
    // A header block is plain_text: Slack shows it as written.
    let mut blocks = vec![json!({
        "type": "header",
        "text": { "type": "plain_text", "text": truncate(title, HEADER_MAX) }
    })];
    blocks.extend(
        mrkdwn::split(&body, SECTION_MAX)
            .into_iter()
            .map(|piece| json!({ "type": "section", "text": { "type": "mrkdwn", "text": piece } })),
    );
    json!({
        "text": mrkdwn::cut(&format!("{}: {body}", mrkdwn::escape(title)), SECTION_MAX),
        "blocks": blocks,
    })
}

notifyhub_plugin_sdk::export_plugin!(Slack);
