//! notifyhub against what users would pick instead: `cargo xtask bench
//! --peers`, which installs Apprise into a private virtualenv under
//! `target/peers/` and passes its Python in `NOTIFYHUB_APPRISE_PYTHON`, and
//! builds the Extism peer (`benches/peers/extism/`, its own workspace) and
//! passes its runner and plugin in `NOTIFYHUB_EXTISM_RUNNER` and
//! `NOTIFYHUB_EXTISM_PLUGIN`.
//!
//! In one run:
//! 1. Against one local HTTP receiver that answers at once: Apprise sending
//!    JSON webhooks (`json://`) from 1 and from 8 threads, the real daemon
//!    with its default config delivering webhooks through the `webhook`
//!    plugin (submitted in batches of 1,000 over 4 connections, timed until
//!    the receiver has them all), and the ceiling: a plain keep-alive HTTP
//!    client (hyper, 64 connections) posting the body the plugin sent, as
//!    fast as the receiver takes it.
//! 2. The `noop` plugin's logic hosted by Extism (a plain
//!    `wasm32-unknown-unknown` module taking JSON) and by notifyhub's
//!    executor (the component), each with a fresh instance per call and
//!    with a warm instance reused.
//!
//! Prints each figure and the ratios, and writes them as Markdown tables
//! and an SVG bar chart to `target/peers/`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use notifyhub_testkit::daemon::{Conn, Daemon};
use notifyhub_testkit::receiver::{Receiver, Reply};
use serde_json::{Value, json};

#[path = "support/noop_calls.rs"]
mod noop_calls;

#[path = "support/scale_events.rs"]
mod scale_events;

const BIN: &str = env!("CARGO_BIN_EXE_notifyhub");
const APPRISE_COUNT: usize = 2_000;
const NOTIFYHUB_COUNT: usize = 20_000;
const BATCH: usize = 1_000;
const CONNECTIONS: usize = 4;
const CEILING_COUNT: usize = 50_000;
const CEILING_CONNECTIONS: usize = 64;

fn main() -> anyhow::Result<()> {
    // As the daemon runs: without transparent huge pages (see `--bench pool`).
    notifyhub::without_huge_pages();
    let python = from_env("NOTIFYHUB_APPRISE_PYTHON")?;
    let extism_runner = from_env("NOTIFYHUB_EXTISM_RUNNER")?;
    let extism_plugin = from_env("NOTIFYHUB_EXTISM_PLUGIN")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(notifyhub_testkit::deadline::bench(async {
        let receiver = Receiver::start(|_| Reply::new(200, "ok")).await;
        let one = apprise(&python, &receiver, 1).await?;
        let eight = apprise(&python, &receiver, 8).await?;
        let ours = notifyhub(&receiver).await?;
        let sent = receiver
            .requests()
            .last()
            .map(|r| r.body.clone())
            .context("notifyhub delivered nothing")?;
        let limit = ceiling(&receiver, sent).await?;
        let best = one.max(eight);
        let rows = [
            ("Apprise, 1 thread", one),
            ("Apprise, 8 threads", eight),
            ("notifyhub, default config", ours),
            ("plain keep-alive client", limit),
        ];
        println!("JSON webhooks to one local receiver (deliveries/s, this run)\n");
        for (name, rate) in rows {
            println!(
                "{name:<28} {rate:>10.0}/s {:>8.1}× Apprise's best",
                rate / best
            );
        }
        println!(
            "\nnotifyhub / Apprise's best: {:.1} (goal ≥ 30)",
            ours / best
        );
        println!(
            "notifyhub / a plain keep-alive client to the same receiver: {:.2} (goal ≥ 0.5)",
            ours / limit
        );

        let theirs = extism(&extism_runner, &extism_plugin).await?;
        let ours_calls = executor().await?;
        let calls = [("Extism", theirs), ("notifyhub executor", ours_calls)];
        println!("\nthe noop plugin's logic, one call (µs, this run)\n");
        println!(
            "{:<28} {:>10} {:>10} {:>12}",
            "", "fresh", "warm", "fresh/warm"
        );
        for (name, c) in calls {
            println!(
                "{name:<28} {:>10.2} {:>10.2} {:>11.1}×",
                c.fresh_us,
                c.warm_us,
                c.fresh_us / c.warm_us
            );
        }
        println!(
            "\nExtism / notifyhub: fresh {:.2}×, warm {:.2}× (above 1: notifyhub is faster)",
            theirs.fresh_us / ours_calls.fresh_us,
            theirs.warm_us / ours_calls.warm_us
        );

        let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/peers");
        std::fs::create_dir_all(&out)?;
        let markdown = format!("{}\n{}", table(&rows, best), calls_table(&calls));
        std::fs::write(out.join("peers.md"), markdown)?;
        std::fs::write(out.join("peers.svg"), chart(&rows))?;
        println!("written: {}/peers.md and peers.svg", out.display());
        Ok(())
    }))
}

fn from_env(name: &str) -> anyhow::Result<PathBuf> {
    std::env::var_os(name)
        .map(PathBuf::from)
        .with_context(|| format!("{name} is not set: run `cargo xtask bench --peers`"))
}

/// Mean microseconds per call with a fresh instance and with a warm one.
#[derive(Debug, Clone, Copy, serde::Deserialize)]
struct Calls {
    fresh_us: f64,
    warm_us: f64,
}

/// The Extism runner's figures (it checks every receipt itself).
async fn extism(runner: &Path, plugin: &Path) -> anyhow::Result<Calls> {
    let output = tokio::process::Command::new(runner)
        .arg(plugin)
        .args([
            noop_calls::FRESH_CALLS.to_string(),
            noop_calls::WARM_CALLS.to_string(),
        ])
        .output()
        .await
        .with_context(|| format!("running {}", runner.display()))?;
    anyhow::ensure!(
        output.status.success(),
        "the Extism runner failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).context("reading the Extism runner's figures")
}

/// The same calls through notifyhub's executor and the `noop` component.
async fn executor() -> anyhow::Result<Calls> {
    let calls = noop_calls::measure().await?;
    Ok(Calls {
        fresh_us: calls.fresh.as_secs_f64() * 1e6,
        warm_us: calls.warm.as_secs_f64() * 1e6,
    })
}

/// Apprise's deliveries per second with `threads` threads.
async fn apprise(python: &Path, receiver: &Receiver, threads: usize) -> anyhow::Result<f64> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/peers/apprise_send.py");
    let url = format!("json://{}/apprise", receiver.authority());
    let before = receiver.count();
    let count = APPRISE_COUNT * threads.min(2);
    let output = tokio::process::Command::new(python)
        .arg(&script)
        .args([url, count.to_string(), threads.to_string()])
        .output()
        .await
        .with_context(|| format!("running {}", python.display()))?;
    anyhow::ensure!(
        output.status.success(),
        "Apprise failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let delivered = receiver.count() - before;
    anyhow::ensure!(
        delivered == count,
        "Apprise delivered {delivered} of {count}"
    );
    let rate = String::from_utf8_lossy(&output.stdout).trim().parse()?;
    Ok(rate)
}

/// The daemon's deliveries per second with its default config.
async fn notifyhub(receiver: &Receiver) -> anyhow::Result<f64> {
    let daemon = Daemon::builder(BIN)
        .plugin(
            "webhook",
            Some(&format!("allowed_hosts = [\"{}\"]\n", receiver.authority())),
        )
        .start()
        .await?;
    let before = receiver.count();
    let url = receiver.url("/notifyhub");
    let started = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        let socket = daemon.socket().to_path_buf();
        let url = url.clone();
        clients.push(tokio::spawn(async move {
            let mut conn = Conn::connect(&socket).await?;
            let tasks: Vec<Value> = (0..BATCH)
                .map(|i| json!({"platform": "webhook", "target": url, "body": format!("message {i}")}))
                .collect();
            for _ in 0..NOTIFYHUB_COUNT / BATCH / CONNECTIONS {
                conn.send(&json!({"op": "submit", "tasks": tasks})).await?;
                let r = conn.recv().await?;
                anyhow::ensure!(r["ok"] == true, "{r}");
            }
            anyhow::Ok(())
        }));
    }
    for c in clients {
        c.await??;
    }
    receiver
        .wait_for_count(before + NOTIFYHUB_COUNT, Duration::from_secs(120))
        .await?;
    let rate = NOTIFYHUB_COUNT as f64 / started.elapsed().as_secs_f64();
    // How the default pool got there: its growth is most of a short run.
    let pool = daemon.request(json!({"op": "status"})).await?["result"]["pool"].clone();
    scale_events::print(&pool, "  notifyhub's pool: ");
    Ok(rate)
}

/// A plain keep-alive HTTP client's rate to the same receiver, posting
/// `body` (what the webhook plugin sent): the most any sender gets from
/// this receiver on this machine.
async fn ceiling(receiver: &Receiver, body: bytes::Bytes) -> anyhow::Result<f64> {
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let client = Client::builder(TokioExecutor::new()).build_http::<Full<bytes::Bytes>>();
    let uri: hyper::Uri = receiver.url("/ceiling").parse()?;
    let before = receiver.count();
    let started = Instant::now();
    let mut senders = Vec::new();
    for _ in 0..CEILING_CONNECTIONS {
        let (client, uri, body) = (client.clone(), uri.clone(), body.clone());
        senders.push(tokio::spawn(async move {
            for _ in 0..CEILING_COUNT / CEILING_CONNECTIONS {
                let request = hyper::Request::post(uri.clone())
                    .header("content-type", "application/json")
                    .body(Full::new(body.clone()))?;
                let response = client.request(request).await?;
                anyhow::ensure!(response.status().is_success(), "{}", response.status());
                response.into_body().collect().await?;
            }
            anyhow::Ok(())
        }));
    }
    for sender in senders {
        sender.await??;
    }
    let rate = CEILING_COUNT as f64 / started.elapsed().as_secs_f64();
    let sent = CEILING_COUNT / CEILING_CONNECTIONS * CEILING_CONNECTIONS;
    anyhow::ensure!(
        receiver.count() - before == sent,
        "the receiver took {} of {sent}",
        receiver.count() - before
    );
    Ok(rate)
}

fn table(rows: &[(&str, f64)], best: f64) -> String {
    let mut out = String::from("| sender | deliveries/s | × Apprise's best |\n|---|---:|---:|\n");
    for (name, rate) in rows {
        out.push_str(&format!("| {name} | {rate:.0} | {:.1} |\n", rate / best));
    }
    out
}

fn calls_table(calls: &[(&str, Calls)]) -> String {
    let mut out = String::from(
        "| the noop plugin's logic, hosted by | fresh instance per call | warm instance |\n|---|---:|---:|\n",
    );
    for (name, c) in calls {
        out.push_str(&format!(
            "| {name} | {:.2} µs | {:.2} µs |\n",
            c.fresh_us, c.warm_us
        ));
    }
    out
}

/// A horizontal bar chart, one bar per row, scaled to the fastest.
fn chart(rows: &[(&str, f64)]) -> String {
    let max = rows.iter().map(|r| r.1).fold(1.0, f64::max);
    let (width, bar_height, left) = (640.0, 28.0, 200.0);
    let height = 40.0 + rows.len() as f64 * (bar_height + 12.0);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"13\">\n\
         <text x=\"10\" y=\"22\" font-weight=\"bold\">JSON webhooks to one local receiver, deliveries/s</text>\n"
    );
    for (i, (name, rate)) in rows.iter().enumerate() {
        let y = 36.0 + i as f64 * (bar_height + 12.0);
        let w = (width - left - 90.0) * rate / max;
        svg.push_str(&format!(
            "<text x=\"10\" y=\"{:.0}\">{name}</text>\n\
             <rect x=\"{left}\" y=\"{y:.0}\" width=\"{w:.1}\" height=\"{bar_height}\" fill=\"#3b7dd8\"/>\n\
             <text x=\"{:.1}\" y=\"{:.0}\">{rate:.0}</text>\n",
            y + bar_height * 0.65,
            left + w + 6.0,
            y + bar_height * 0.65
        ));
    }
    svg.push_str("</svg>\n");
    svg
}
