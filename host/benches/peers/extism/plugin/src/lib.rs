//! The `noop` plugin's logic as an Extism plugin: takes a message, delivers
//! nothing, and answers with a receipt carrying the task's id.
//!
//! Extism passes bytes in and out, so the message arrives as JSON and the
//! receipt leaves as JSON: that decoding is what an Extism plugin does where
//! a component gets typed values from the canonical ABI.

use std::collections::BTreeMap;

use extism_pdk::{FnResult, Json, plugin_fn};
use serde::{Deserialize, Serialize};

/// The fields of the WIT contract's `message` record.
#[derive(Deserialize)]
#[allow(dead_code)] // decoded like a real plugin would, not all of it read
struct Message {
    task_id: String,
    platform: String,
    target: String,
    title: Option<String>,
    body: String,
    format: String,
    priority: String,
    metadata: BTreeMap<String, String>,
}

/// The fields of the WIT contract's `receipt` record.
#[derive(Serialize)]
struct Receipt {
    provider_id: Option<String>,
    status: String,
}

#[plugin_fn]
pub fn send(Json(message): Json<Message>) -> FnResult<Json<Receipt>> {
    Ok(Json(Receipt {
        provider_id: Some(message.task_id),
        status: "ok".into(),
    }))
}
