//! `cargo xtask demo`: the whole path once, on this machine.
//!
//! Starts a local receiver that checks Standard Webhooks signatures, starts
//! the real daemon (release build) with the `webhook` plugin allowed to reach
//! it, sends a notification with the `notifyhub` CLI and shows what arrived.

use std::time::Duration;

use notifyhub_testkit::daemon::Daemon;
use notifyhub_testkit::receiver::{Receiver, Reply};
use notifyhub_testkit::{repo_root, verify};

use crate::{cargo, run as run_command, rust_target};

/// A demo-only signing secret (Standard Webhooks' own test vector).
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Builds only what the demo uses (the Rust `webhook` plugin and the
/// daemon), so it runs on a machine with nothing but rustup.
pub fn run() -> anyhow::Result<()> {
    rust_target()?;
    let webhook = notifyhub_testkit::plugins::build_rust_plugin("webhook")?;
    run_command(cargo().args(["build", "--release", "-p", "notifyhub"]))?;
    let bin = repo_root().join("target/release/notifyhub");
    tokio::runtime::Runtime::new()?.block_on(demo(bin, std::fs::read(webhook)?))
}

async fn demo(bin: std::path::PathBuf, webhook: Vec<u8>) -> anyhow::Result<()> {
    let receiver = Receiver::start(|req| {
        let header = |name| req.header(name).unwrap_or_default();
        match verify::standard_webhooks(
            SECRET,
            header("webhook-id"),
            header("webhook-timestamp"),
            header("webhook-signature"),
            &req.body,
        ) {
            Ok(()) => Reply::new(200, "ok"),
            Err(e) => Reply::new(401, e),
        }
    })
    .await;
    println!("receiver  listening on {}", receiver.url("/"));

    let manifest = format!(
        "allowed_hosts = [\"{}\"]\n[secrets]\nsigning_secret = {{ env = \"DEMO_WEBHOOK_SECRET\" }}\n",
        receiver.authority()
    );
    let daemon = Daemon::builder(&bin)
        .file("webhook.wasm", webhook)
        .file("webhook.toml", manifest)
        .env("DEMO_WEBHOOK_SECRET", SECRET)
        .start()
        .await?;
    println!("daemon    running, socket {}", daemon.socket().display());

    let target = receiver.url("/hooks/demo");
    let args: Vec<String> = [
        "send",
        "--platform",
        "webhook",
        "--target",
        &target,
        "--title",
        "Hello from notifyhub",
        "--body",
        "A WebAssembly plugin delivered this.",
        "--wait",
    ]
    .map(String::from)
    .into();
    let shown: Vec<String> = args
        .iter()
        .map(|a| {
            if a.contains(' ') {
                format!("'{a}'")
            } else {
                a.clone()
            }
        })
        .collect();
    println!("\n$ notifyhub {}\n", shown.join(" "));
    let out = tokio::task::spawn_blocking({
        let socket = daemon.socket().to_path_buf();
        move || {
            std::process::Command::new(&bin)
                .arg("--socket")
                .arg(socket)
                .args(args)
                .output()
        }
    })
    .await??;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));

    let requests = receiver.wait_for(1, Duration::from_secs(5)).await?;
    let Some(request) = requests.first() else {
        anyhow::bail!("the receiver got nothing; daemon log:\n{}", daemon.logs());
    };
    println!(
        "\nthe receiver got {} {} with a valid webhook-signature:",
        request.method, request.path
    );
    println!("{}", serde_json::to_string_pretty(&request.json())?);
    anyhow::ensure!(out.status.success(), "the delivery failed");
    println!("\ndemo finished: the daemon is stopped and its temporary directory removed");
    Ok(())
}
