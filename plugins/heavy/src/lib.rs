//! A plugin with a deliberately expensive start-up, standing in for
//! heavy-runtime plugins (Python, JavaScript) in the pool's benchmarks and
//! tests: the first call in each instance builds a table (about a
//! millisecond of work); later calls in the same instance reuse it.

use std::sync::OnceLock;

use notifyhub_plugin_sdk::{Message, Plugin, PluginInfo, Receipt, SendError};

/// Rounds of work at start-up.
const WARM_UP_ROUNDS: u64 = 1_000_000;

static TABLE: OnceLock<u64> = OnceLock::new();

fn warm_up() -> u64 {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..WARM_UP_ROUNDS {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    x
}

struct Heavy;

impl Plugin for Heavy {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "heavy".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            platforms: vec!["heavy".into()],
            config_keys: vec![],
            rate_limits: vec![],
            description: "Expensive to start, cheap when warm (benchmarks).".into(),
        }
    }

    fn send(message: Message) -> Result<Receipt, SendError> {
        let table = *TABLE.get_or_init(warm_up);
        Ok(Receipt {
            provider_id: Some(message.task_id),
            status: format!("ok {}", table % 10),
        })
    }
}

notifyhub_plugin_sdk::export_plugin!(Heavy);
