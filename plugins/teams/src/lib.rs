//! Microsoft Teams through a Workflows (Power Automate) webhook.
//!
//! The target is the workflow's URL ("When a Teams webhook request is
//! received"); its `sig` query parameter is the credential. The body is an
//! Adaptive Card (1.4) in a `message` envelope — the old MessageCard format
//! is not accepted by Workflows. A title becomes a bold, large heading
//! TextBlock; the body a wrapping TextBlock (Adaptive Cards render a small
//! markdown subset, so markdown passes through; HTML becomes plain text).
//! The size is budgeted on the encoded request: title and body are cut with
//! a marker until the whole JSON body is at most [`MAX_REQUEST_BYTES`]
//! (Teams refuses about 28 KB with 413; some tenants less).
//!
//! Success is 200 or 202 (the flow runs asynchronously, so a card that
//! fails later is not reported back). 429 is the rate limit (4 requests per
//! second); 413 and 400 are invalid; 401/403/404 permanent.

use notifyhub_plugin_sdk::format::{plain_body, truncate};
use notifyhub_plugin_sdk::{
    Message, Plugin, PluginInfo, Priority, RateLimitRule, Receipt, SendError, fit, http,
};
use serde_json::{Value, json};

/// The most a request body may be: below Teams' ~28 KB, with room for the
/// envelope's growth in transit.
const MAX_REQUEST_BYTES: usize = 24 * 1024;
/// A title longer than this is cut first: it is a heading.
const TITLE_MAX_CHARS: usize = 400;

struct Teams;

impl Plugin for Teams {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "teams".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            platforms: vec!["teams".into()],
            config_keys: vec![],
            rate_limits: vec![RateLimitRule {
                requests: 4,
                window_ms: 1_000,
            }],
            description: "Microsoft Teams Workflows webhooks (Adaptive Cards)".into(),
        }
    }

    fn send(message: Message) -> Result<Receipt, SendError> {
        if !message.target.starts_with("https://") && !message.target.starts_with("http://") {
            return Err(SendError::invalid(
                "the target must be a Teams Workflows webhook URL",
            ));
        }
        let response = http::Request::post(&message.target)
            .json_body(request(&message))
            .send()?;
        match response.status {
            200 | 202 => Ok(Receipt::status(format!("HTTP {}", response.status))),
            413 => Err(SendError::invalid(
                "HTTP 413: the card is too large for Teams",
            )),
            _ => {
                response.classify()?;
                Err(SendError::retryable(
                    format!("unexpected answer from Teams: HTTP {}", response.status),
                    None,
                ))
            }
        }
    }
}

/// The request body, with the body text cut until the whole fits.
fn request(message: &Message) -> String {
    let text = plain_body(message);
    let title = message
        .title
        .as_deref()
        .filter(|t| !t.trim().is_empty())
        .map(|t| truncate(t, TITLE_MAX_CHARS));
    let chars = text.chars().count();
    fit::largest(MAX_REQUEST_BYTES, chars, |budget| {
        card(message, title.as_deref(), &truncate(&text, budget)).to_string()
    })
}

fn card(message: &Message, title: Option<&str>, text: &str) -> Value {
    let mut body = Vec::new();
    if let Some(title) = title {
        body.push(json!({
            "type": "TextBlock",
            "text": title,
            "weight": "Bolder",
            "size": "Large",
            "style": "heading",
            "wrap": true,
            "color": match message.priority {
                Priority::High => "Attention",
                Priority::Normal | Priority::Low => "Default",
            },
        }));
    }
    body.push(json!({
        "type": "TextBlock",
        "text": text,
        "wrap": true,
    }));
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": body,
                "msteams": { "width": "full" },
            },
        }],
    })
}

notifyhub_plugin_sdk::export_plugin!(Teams);
