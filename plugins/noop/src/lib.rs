//! A plugin that delivers nothing and succeeds at once: the baseline for
//! benchmarks of the host itself.

use notifyhub_plugin_sdk::{Message, Plugin, PluginInfo, Receipt, SendError};

struct Noop;

impl Plugin for Noop {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "noop".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            platforms: vec!["noop".into()],
            config_keys: vec![],
            rate_limits: vec![],
            description: "Accepts every message and delivers nothing (for benchmarks).".into(),
        }
    }

    fn send(message: Message) -> Result<Receipt, SendError> {
        Ok(Receipt {
            provider_id: Some(message.task_id),
            status: "ok".into(),
        })
    }
}

notifyhub_plugin_sdk::export_plugin!(Noop);
