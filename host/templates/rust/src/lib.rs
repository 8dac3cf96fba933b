//! {{name}}: POSTs `{"title", "text", "task_id"}` to the task's target URL.
//!
//! Replace the body of `send` with your platform's API. The SDK classifies
//! transport failures and HTTP statuses; check what your platform puts in
//! a successful-looking answer (some report errors inside HTTP 200).

use notifyhub_plugin_sdk::{Message, Plugin, PluginInfo, Receipt, SendError, http, log};
use serde_json::json;

struct Handler;

impl Plugin for Handler {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "{{name}}".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            platforms: vec!["{{name}}".into()],
            config_keys: vec![],
            rate_limits: vec![],
            description: "{{name}} notifications".into(),
        }
    }

    fn send(message: Message) -> Result<Receipt, SendError> {
        let body = json!({
            "title": message.title,
            "text": message.body,
            "task_id": message.task_id,
        });
        log::info("posting the message");
        let response = http::Request::post(&message.target)
            .json_body(body.to_string())
            .send()?;
        response.classify()?;
        Ok(Receipt::status(format!("HTTP {}", response.status)))
    }
}

notifyhub_plugin_sdk::export_plugin!(Handler);
