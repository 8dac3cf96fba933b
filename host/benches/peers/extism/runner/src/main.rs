//! Times the Extism `noop` plugin for `cargo bench --bench peers`: a fresh
//! instance per call (from a plugin compiled once, as notifyhub instantiates
//! from a compiled component) and a warm instance reused.
//!
//! Usage: `extism-runner PLUGIN.wasm FRESH_CALLS WARM_CALLS`. Prints one
//! JSON object: `{"fresh_us": …, "warm_us": …}`, mean microseconds per call.

use std::time::Instant;

use anyhow::Context;
use extism::{CompiledPlugin, Manifest, Plugin, PluginBuilder, Wasm};

/// The message the bench sends, as the notifyhub bench's task.
const MESSAGE: &str = r#"{"task_id":"0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b","platform":"noop","target":"-","title":null,"body":"benchmark","format":"text","priority":"normal","metadata":{}}"#;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: extism-runner PLUGIN.wasm FRESH_CALLS WARM_CALLS";
    let path = args.next().context(usage)?;
    let fresh_calls: u32 = args.next().context(usage)?.parse()?;
    let warm_calls: u32 = args.next().context(usage)?.parse()?;

    let wasm = std::fs::read(&path).with_context(|| format!("reading {path}"))?;
    let manifest = Manifest::new([Wasm::data(wasm)]);
    let compiled = CompiledPlugin::new(PluginBuilder::new(manifest).with_wasi(false))
        .with_context(|| format!("compiling {path}"))?;

    let started = Instant::now();
    for _ in 0..fresh_calls {
        let mut plugin = Plugin::new_from_compiled(&compiled)?;
        check(plugin.call::<&str, &str>("send", MESSAGE)?)?;
    }
    let fresh = started.elapsed().as_secs_f64() * 1e6 / f64::from(fresh_calls);

    let mut plugin = Plugin::new_from_compiled(&compiled)?;
    let started = Instant::now();
    for _ in 0..warm_calls {
        check(plugin.call::<&str, &str>("send", MESSAGE)?)?;
    }
    let warm = started.elapsed().as_secs_f64() * 1e6 / f64::from(warm_calls);

    println!(
        "{}",
        serde_json::json!({"fresh_us": fresh, "warm_us": warm})
    );
    Ok(())
}

/// A call counts only if the plugin answered with the task's receipt.
fn check(receipt: &str) -> anyhow::Result<()> {
    let receipt: serde_json::Value = serde_json::from_str(receipt)?;
    anyhow::ensure!(
        receipt["provider_id"] == "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
            && receipt["status"] == "ok",
        "unexpected receipt {receipt}"
    );
    Ok(())
}
