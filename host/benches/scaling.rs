//! Does the default pool find the right concurrency by itself? Run with
//! `cargo bench -p notifyhub --bench scaling` (or `cargo xtask bench`).
//!
//! The same deliveries through the real daemon (release build) with the
//! default `[pool]` and with hand-tuned `max_workers`, in one run:
//!
//! 1. 20,000 webhook deliveries to a local receiver that answers at once
//!    (CPU-bound on this machine: few workers are best);
//! 2. 2,000 webhook deliveries to a receiver that answers after 100 ms
//!    (I/O-bound: hundreds in flight are best).
//!
//! Each config runs three rounds, alternating with the others, after a
//! warm-up daemon. It prints each config's median deliveries/s, the
//! default's ratio to the best hand-tuned one (the goal is ≥ 0.9), the
//! workers the default pool ended with, and the TCP connections the
//! receiver accepted per 1,000 deliveries (connection reuse: about the deliveries in flight, not one per
//! request). Numbers vary on a noisy 2-core machine; compare ratios
//! within one run.

use std::time::{Duration, Instant};

use notifyhub_testkit::daemon::{Conn, Daemon};
use notifyhub_testkit::receiver::{Receiver, Reply};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_notifyhub");

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(notifyhub_testkit::deadline::bench(async {
        println!("default [pool] vs hand-tuned max_workers (daemon: release build, durable store)");
        compare(
            "fast receiver, 20,000 deliveries",
            Duration::ZERO,
            20_000,
            &[16, 64, 512],
        )
        .await?;
        metrics_overhead().await?;
        compare(
            "100 ms receiver, 2,000 deliveries",
            Duration::from_millis(100),
            2_000,
            &[64, 512, 1024, 2048],
        )
        .await
    }))
}

/// Throughput with metrics on vs off, three rounds each, alternating.
async fn metrics_overhead() -> anyhow::Result<()> {
    println!("\nmetrics on vs off (fast receiver, 20,000 deliveries, three rounds each)");
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        off.push(run(Duration::ZERO, 20_000, None, false).await?.0);
        on.push(run(Duration::ZERO, 20_000, None, true).await?.0);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (on, off) = (median(&mut on), median(&mut off));
    println!(
        "  off {off:>9.0} deliveries/s   on {on:>9.0} deliveries/s   on / off {:.3}   (goal ≥ 0.98)",
        on / off
    );
    Ok(())
}

/// Rounds per config in [`compare`]; each figure is the median.
const ROUNDS: usize = 3;

async fn compare(
    label: &str,
    delay: Duration,
    total: usize,
    tuned: &[usize],
) -> anyhow::Result<()> {
    println!("\n{label} (median of {ROUNDS} rounds, configs alternating)");
    // A first daemon fills the compile cache: no config pays for it.
    run(delay, total, None, false).await?;
    let configs: Vec<Option<usize>> = std::iter::once(None)
        .chain(tuned.iter().copied().map(Some))
        .collect();
    let mut rates = vec![Vec::new(); configs.len()];
    let mut last = vec![(0, 0); configs.len()];
    for _ in 0..ROUNDS {
        for (i, max) in configs.iter().enumerate() {
            let (rate, workers, connections) = run(delay, total, *max, false).await?;
            rates[i].push(rate);
            last[i] = (workers, connections);
        }
    }
    let per_k = |c: u64| c as f64 * 1000.0 / total as f64;
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let default = median(&mut rates[0]);
    let (workers, connections) = last[0];
    println!(
        "  default            {default:>9.0} deliveries/s  {:>7.1} connections per 1,000  (pool ended with {workers} workers)",
        per_k(connections)
    );
    let mut best = 0f64;
    for (i, max) in tuned.iter().enumerate() {
        let rate = median(&mut rates[i + 1]);
        println!(
            "  max_workers {max:<6} {rate:>9.0} deliveries/s  {:>7.1} connections per 1,000",
            per_k(last[i + 1].1)
        );
        best = best.max(rate);
    }
    println!(
        "  default / best hand-tuned  {:.2}   (goal ≥ 0.90)",
        default / best
    );
    Ok(())
}

/// Delivers `total` webhooks; returns deliveries/s, the workers at the end
/// and the connections the receiver accepted.
async fn run(
    delay: Duration,
    total: usize,
    max_workers: Option<usize>,
    metrics: bool,
) -> anyhow::Result<(f64, u64, u64)> {
    let receiver = Receiver::start(move |_| Reply::new(204, "").after(delay)).await;
    let manifest = format!("allowed_hosts = [\"{}\"]\n", receiver.authority());
    let mut builder = Daemon::builder(BIN).plugin("webhook", Some(&manifest));
    if let Some(max) = max_workers {
        builder = builder.config(&format!(
            "[pool]\nmin_workers = {}\nmax_workers = {max}\n",
            max.min(4)
        ));
    }
    if metrics {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        builder = builder.config(&format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"));
    }
    let daemon = builder.start().await?;
    const CONNECTIONS: usize = 4;
    let batch = (total / CONNECTIONS / 10).max(1);
    let started = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..CONNECTIONS {
        let socket = daemon.socket().to_path_buf();
        let tasks: Vec<Value> = (0..batch)
            .map(|_| json!({"platform": "webhook", "target": receiver.url("/b"), "body": "b"}))
            .collect();
        let batches = total / batch / CONNECTIONS;
        handles.push(tokio::spawn(async move {
            let mut conn = Conn::connect(&socket).await?;
            // Every batch in flight at once: the pool sees the whole load.
            for _ in 0..batches {
                conn.send(&json!({"op": "submit", "wait": true, "tasks": tasks}))
                    .await?;
            }
            for _ in 0..batches {
                let response = conn.recv().await?;
                anyhow::ensure!(response["ok"] == true, "{response}");
            }
            anyhow::Ok(())
        }));
    }
    for handle in handles {
        handle.await??;
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    let status = daemon.request(json!({"op": "status"})).await?;
    let workers = status["result"]["pool"]["workers"].as_u64().unwrap_or(0);
    Ok((rate, workers, receiver.connections()))
}
