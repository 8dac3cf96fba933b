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
//! The daemon's CPU time a task (from `/proc/PID/stat`) is steadier than
//! tasks/s, since the client and receiver share the machine.

use std::time::{Duration, Instant};

use notifyhub_testkit::daemon::{Conn, Daemon};
use notifyhub_testkit::receiver::{Receiver, Reply};
use serde_json::{Value, json};

#[path = "support/cpu.rs"]
mod cpu;
#[path = "support/noop_calls.rs"]
mod noop_calls;

const BIN: &str = env!("CARGO_BIN_EXE_notifyhub");

/// One end-to-end run's batched figures for one plugin.
#[derive(Clone, Copy)]
struct Load {
    per_second: f64,
    cpu_per_task: Duration,
}

fn main() -> anyhow::Result<()> {
    // As the daemon runs: without transparent huge pages (see `--bench pool`).
    notifyhub::without_huge_pages();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(notifyhub_testkit::deadline::bench(async {
        in_process().await?;
        // Another build of the daemon to compare with in the same run
        // (copy `target/release/notifyhub` aside before changing it).
        let Ok(baseline) = std::env::var("NOTIFYHUB_E2E_BASELINE") else {
            end_to_end(BIN, "this build").await?;
            return Ok(());
        };
        let mut runs: Vec<(&str, [Load; 2])> = Vec::new();
        for _ in 0..2 {
            runs.push(("baseline", end_to_end(&baseline, "baseline").await?));
            runs.push(("this build", end_to_end(BIN, "this build").await?));
        }
        // Best of each: the machine's noise only ever makes a run worse.
        let best = |name: &str, i: usize| {
            let loads = runs.iter().filter(|(n, _)| *n == name).map(|(_, l)| l[i]);
            let per_second = loads.clone().map(|l| l.per_second).fold(0.0, f64::max);
            let cpu = loads.map(|l| l.cpu_per_task).min().unwrap_or_default();
            (per_second, cpu)
        };
        println!("\nthis build ÷ baseline (best of 2 runs each, alternating)");
        for (i, plugin) in ["noop", "webhook"].iter().enumerate() {
            let (base, new) = (best("baseline", i), best("this build", i));
            println!(
                "  {plugin:<8} tasks/s {:>8.0} → {:>8.0} ({:.2}×)   daemon CPU a task {:>6.1} → {:>6.1} µs ({:.2}×)",
                base.0,
                new.0,
                new.0 / base.0,
                micros(base.1),
                micros(new.1),
                new.1.as_secs_f64() / base.1.as_secs_f64().max(1e-9)
            );
        }
        Ok(())
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

async fn end_to_end(bin: &str, label: &str) -> anyhow::Result<[Load; 2]> {
    let receiver = Receiver::start(|_| Reply::new(204, "")).await;
    let manifest = format!("allowed_hosts = [\"{}\"]\n", receiver.authority());
    let daemon = Daemon::builder(bin)
        .plugin("noop", None)
        .plugin("webhook", Some(&manifest))
        .config("[pool]\nmin_workers = 16\nmax_workers = 64\n")
        .start()
        .await?;

    println!(
        "\nend to end over the Unix socket ({label}: release build, 16..64 workers, durable store)"
    );
    // Larger runs (for profiling): NOTIFYHUB_E2E_SCALE=10 runs ten times as many.
    let scale: usize = std::env::var("NOTIFYHUB_E2E_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let first = daemon
        .deliver(json!({"platform": "noop", "target": "-", "body": "first"}))
        .await?;
    let first = first["id"].as_str().unwrap_or_default().to_string();
    let noop = run_load(&daemon, "noop", "-", 20_000 * scale, 16, 250).await?;
    let webhook = run_load(
        &daemon,
        "webhook",
        &receiver.url("/bench"),
        10_000 * scale,
        16,
        125,
    )
    .await?;
    anyhow::ensure!(
        receiver.requests().len() >= 10_000 * scale,
        "the receiver missed deliveries"
    );
    println!(
        "  webhook / noop throughput {:>6.2}   (the cost of a real HTTP delivery)",
        webhook.per_second / noop.per_second
    );
    // What the finished tasks cost in memory, and whether one finished
    // long ago is still quick to look up.
    let mut conn = Conn::connect(daemon.socket()).await?;
    let mut lookups = Vec::new();
    for _ in 0..50 {
        let started = Instant::now();
        conn.send(&json!({"op": "task", "task_id": first})).await?;
        let answer = conn.recv().await?;
        anyhow::ensure!(answer["result"]["state"] == "succeeded", "{answer}");
        lookups.push(started.elapsed());
    }
    lookups.sort();
    println!(
        "  after {} tasks: resident {} MiB; `task` on the first one p50 {:.3} ms",
        30_000 * scale + 1 + 16 * (250 + 125),
        daemon.memory_kib("VmRSS")? / 1024,
        lookups[lookups.len() / 2].as_secs_f64() * 1e3
    );
    Ok([noop, webhook])
}

/// Prints batched throughput, the daemon's CPU time a task, and
/// single-task latency; returns the batched figures.
async fn run_load(
    daemon: &Daemon,
    platform: &str,
    target: &str,
    total: usize,
    clients: usize,
    per_client: usize,
) -> anyhow::Result<Load> {
    const BATCH: usize = 500;
    const CONNECTIONS: usize = 4;
    let pid = daemon.pid();
    let cpu_before = cpu::process(pid)?;
    let writer_before = cpu::threads(pid, cpu::JOURNAL_WRITER)?;
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
    let cpu_per_task = (cpu::process(pid)? - cpu_before) / total as u32;
    // Of it, the journal's writer thread (the submits' and outcomes' rows;
    // its last commits may still be under way, so a little low).
    let writer_per_task = (cpu::threads(pid, cpu::JOURNAL_WRITER)? - writer_before) / total as u32;

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
        "  {platform:<8} batched {total:>6} tasks: {throughput:>9.0} tasks/s, daemon CPU {:>5.1} µs a task (journal writer {:>4.1}) | single task, {clients} clients: p50 {:>7.3} ms  p99 {:>7.3} ms",
        micros(cpu_per_task),
        micros(writer_per_task),
        millis(pct(0.50)),
        millis(pct(0.99)),
    );
    Ok(Load {
        per_second: throughput,
        cpu_per_task,
    })
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
