//! End-to-end benchmark: run with `cargo xtask bench`.
//!
//! 1. In-process cost of one call into the `noop` plugin: a fresh instance
//!    per call vs. a warm instance reused, and their ratio.
//! 2. The real daemon (release build) over its Unix socket: batched
//!    throughput and single-task latency (p50/p99), for the `noop` plugin and
//!    for the `webhook` plugin delivering to a local HTTP receiver. The noop
//!    run is the baseline the webhook run is compared with.
//!
//! Numbers vary on a noisy 2-core machine; compare ratios within one run.

use std::time::{Duration, Instant};

use notifyhub_testkit::daemon::{Conn, Daemon};
use notifyhub_testkit::receiver::{Receiver, Reply};
use serde_json::{Value, json};

#[path = "support/noop_calls.rs"]
mod noop_calls;

const BIN: &str = env!("CARGO_BIN_EXE_notifyhub");

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(notifyhub_testkit::deadline::bench(async {
        in_process().await?;
        end_to_end().await
    }))
}

async fn in_process() -> anyhow::Result<()> {
    let calls = noop_calls::measure().await?;
    println!("in-process call of the noop plugin");
    println!(
        "  fresh instance per call  {:>8.2} µs   ({} calls)",
        micros(calls.fresh),
        noop_calls::FRESH_CALLS
    );
    println!(
        "  warm instance reused     {:>8.2} µs   ({} calls)",
        micros(calls.warm),
        noop_calls::WARM_CALLS
    );
    println!(
        "  fresh / warm             {:>8.1}x",
        calls.fresh.as_secs_f64() / calls.warm.as_secs_f64()
    );
    Ok(())
}

async fn end_to_end() -> anyhow::Result<()> {
    let receiver = Receiver::start(|_| Reply::new(204, "")).await;
    let manifest = format!("allowed_hosts = [\"{}\"]\n", receiver.authority());
    let daemon = Daemon::builder(BIN)
        .plugin("noop", None)
        .plugin("webhook", Some(&manifest))
        .config("[pool]\nmin_workers = 16\nmax_workers = 64\n")
        .start()
        .await?;

    println!(
        "\nend to end over the Unix socket (daemon: release build, 16..64 workers, durable store)"
    );
    let noop = run_load(&daemon, "noop", "-", 20_000, 16, 250).await?;
    let webhook = run_load(&daemon, "webhook", &receiver.url("/bench"), 10_000, 16, 125).await?;
    anyhow::ensure!(
        receiver.requests().len() >= 10_000,
        "the receiver missed deliveries"
    );
    println!(
        "  webhook / noop throughput {:>6.2}   (the cost of a real HTTP delivery)",
        webhook / noop
    );
    Ok(())
}

/// Prints batched throughput and single-task latency; returns tasks/s.
async fn run_load(
    daemon: &Daemon,
    platform: &str,
    target: &str,
    total: usize,
    clients: usize,
    per_client: usize,
) -> anyhow::Result<f64> {
    const BATCH: usize = 500;
    const CONNECTIONS: usize = 4;
    let started = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..CONNECTIONS {
        let socket = daemon.socket().to_path_buf();
        let tasks: Vec<Value> = (0..BATCH)
            .map(|_| json!({"platform": platform, "target": target, "body": "b"}))
            .collect();
        let batches = total / BATCH / CONNECTIONS;
        handles.push(tokio::spawn(async move {
            let mut conn = Conn::connect(&socket).await?;
            for _ in 0..batches {
                conn.send(&json!({"op": "submit", "wait": true, "tasks": tasks}))
                    .await?;
                let response = conn.recv().await?;
                anyhow::ensure!(response["ok"] == true, "{response}");
                let failed = response["result"]["tasks"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|t| t["state"] != "succeeded")
                    .count();
                anyhow::ensure!(failed == 0, "{failed} tasks failed");
            }
            anyhow::Ok(())
        }));
    }
    for handle in handles {
        handle.await??;
    }
    let throughput = total as f64 / started.elapsed().as_secs_f64();

    let mut handles = Vec::new();
    for _ in 0..clients {
        let socket = daemon.socket().to_path_buf();
        let request = json!({"op": "submit", "wait": true,
                             "task": {"platform": platform, "target": target, "body": "b"}});
        handles.push(tokio::spawn(async move {
            let mut conn = Conn::connect(&socket).await?;
            let mut latencies = Vec::with_capacity(per_client);
            for _ in 0..per_client {
                let started = Instant::now();
                conn.send(&request).await?;
                let response = conn.recv().await?;
                anyhow::ensure!(
                    response["result"]["tasks"][0]["state"] == "succeeded",
                    "{response}"
                );
                latencies.push(started.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for handle in handles {
        latencies.extend(handle.await??);
    }
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "  {platform:<8} batched {total:>6} tasks: {throughput:>9.0} tasks/s | single task, {clients} clients: p50 {:>7.3} ms  p99 {:>7.3} ms",
        millis(pct(0.50)),
        millis(pct(0.99)),
    );
    Ok(throughput)
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
