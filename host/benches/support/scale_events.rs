//! Prints how a daemon's pool scaled: the `recent_scale_events` of its
//! `status`, one line each, after `prefix`.

use serde_json::Value;

pub fn print(pool: &Value, prefix: &str) {
    for event in pool["recent_scale_events"].as_array().into_iter().flatten() {
        println!(
            "{prefix}{} {} -> {}: {}",
            event["at"].as_str().unwrap_or("?"),
            event["from"],
            event["to"],
            event["reason"].as_str().unwrap_or("?")
        );
    }
}
