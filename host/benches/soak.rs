//! A steady, bursty load: does the pool stay near the size the load needs,
//! and memory flat? `cargo bench -p notifyhub --bench soak` (release
//! build; `NOTIFYHUB_SOAK_SECS`, default 45 per config, sets the length:
//! the soak in the speed issue ran 480, which needs
//! `NOTIFYHUB_BENCH_LIMIT_SECS=1400` too).
//!
//! Every second, in ten ticks: 400 webhooks to a receiver that answers
//! after 20 ms (1 in 10 answered 503, so retried), 200 no-op tasks due in
//! 1–5 s, and 5 keyed submits whose client waits, then gives up. The same
//! load runs against the default `[pool]` and against `max_workers = 32`
//! (a pool that keeps the queue empty under it: the bench prints whether
//! it did). Sampled each second: workers, queued tasks, the daemon's open
//! file descriptors and resident memory. At the end, `task` on a task that
//! finished at the start (no longer in memory: read from the journal) is
//! timed. Printed: each config's figures, and the default's workers and
//! fds ÷ the fixed pool's (goal ≤ 2), resident memory (goal ≤ 128 MiB) and
//! the `task` look-up (goal ≤ 1 ms).

use std::time::{Duration, Instant};

use notifyhub_testkit::daemon::{Conn, Daemon};
use notifyhub_testkit::receiver::{Receiver, Reply};
use serde_json::{Value, json};

#[path = "support/scale_events.rs"]
mod scale_events;

const BIN: &str = env!("CARGO_BIN_EXE_notifyhub");
const TICK: Duration = Duration::from_millis(100);
const TUNED: usize = 32;

fn main() -> anyhow::Result<()> {
    let secs: u64 = std::env::var("NOTIFYHUB_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(45);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(notifyhub_testkit::deadline::bench(async move {
        println!(
            "soak: {secs} s per config of 400 webhooks/s (20 ms receiver, 1 in 10 answered 503), 200 no-ops/s due in 1-5 s, 5 abandoned keyed waits/s (daemon: release build)"
        );
        let default = soak(None, secs).await?;
        let tuned = soak(Some(TUNED), secs).await?;
        let ratio = |a: u64, b: u64| a as f64 / b.max(1) as f64;
        println!(
            "default ÷ max_workers {TUNED}: workers (peak) {:.2}, open fds (peak) {:.2}   (goal ≤ 2; the fixed pool's queue peaked at {})",
            ratio(default.peak_workers, tuned.peak_workers),
            ratio(default.peak_fds, tuned.peak_fds),
            tuned.peak_queued,
        );
        println!(
            "default: resident {} MiB after {secs} s (goal ≤ 128), `task` on a finished task {:.0} µs median (goal ≤ 1,000)",
            default.rss_mib, default.lookup_us
        );
        Ok(())
    }))
}

/// What one config did under the load.
struct Figures {
    peak_workers: u64,
    peak_fds: u64,
    peak_queued: u64,
    rss_mib: u64,
    lookup_us: f64,
    /// The pool's recent scaling decisions when its size peaked: what
    /// grew it there.
    peak_events: Value,
}

/// Scaling decisions printed for the default pool's peak.
const SCALE_EVENTS_SHOWN: usize = 6;

async fn soak(max_workers: Option<usize>, secs: u64) -> anyhow::Result<Figures> {
    let receiver = Receiver::start(|r| {
        // The webhook plugin sends the task id; one task in ten (by its
        // last two hex digits) is refused on every attempt until it is dead.
        let flaky = r
            .header("webhook-id")
            .and_then(|id| u8::from_str_radix(id.get(id.len().saturating_sub(2)..)?, 16).ok())
            .is_some_and(|n| n % 10 == 0);
        if flaky {
            Reply::new(503, "busy").after(Duration::from_millis(20))
        } else {
            Reply::new(204, "").after(Duration::from_millis(20))
        }
    })
    .await;
    let manifest = format!("allowed_hosts = [\"{}\"]\n", receiver.authority());
    let mut builder = Daemon::builder(BIN)
        .plugin("webhook", Some(&manifest))
        .plugin("noop", None)
        .retry("max_attempts = 3\nbase = \"500ms\"\n");
    if let Some(max) = max_workers {
        builder = builder.config(&format!("[pool]\nmin_workers = 4\nmax_workers = {max}\n"));
    }
    let daemon = builder.start().await?;
    let label = max_workers.map_or("default".to_string(), |m| format!("max_workers {m}"));

    let webhooks: Vec<Value> = (0..40)
        .map(|_| json!({"platform": "webhook", "target": receiver.url("/hook"), "body": "b"}))
        .collect();
    let mut first_id = None;
    let mut fig = Figures {
        peak_workers: 0,
        peak_fds: 0,
        peak_queued: 0,
        rss_mib: 0,
        lookup_us: 0.0,
        peak_events: Value::Null,
    };
    let started = Instant::now();
    let mut tick = tokio::time::interval(TICK);
    let mut n: u64 = 0;
    while started.elapsed() < Duration::from_secs(secs) {
        tick.tick().await;
        n += 1;
        let noops: Vec<Value> = (0..20)
            .map(|i| json!({"platform": "noop", "target": "-", "body": "n", "delay": format!("{}s", 1 + (n + i) % 5)}))
            .collect();
        let tasks: Vec<Value> = webhooks.iter().cloned().chain(noops).collect();
        let socket = daemon.socket().to_path_buf();
        let submit = tokio::spawn(async move {
            let mut conn = Conn::connect(&socket).await?;
            conn.send(&json!({"op": "submit", "tasks": tasks})).await?;
            let r = conn.recv().await?;
            anyhow::ensure!(r["ok"] == true, "{r}");
            anyhow::Ok(r["result"]["task_ids"][0].as_str().map(str::to_string))
        });
        if n.is_multiple_of(2) {
            // A client that waits on a keyed task due later, then goes.
            let mut conn = daemon.connect().await?;
            conn.send(&json!({"op": "submit", "wait": true, "task": {
                "platform": "noop", "target": "-", "body": "k", "delay": "1h",
                "idempotency_key": format!("order-{n}")}}))
                .await?;
            drop(conn);
        }
        let id = submit.await??;
        first_id = first_id.or(id);
        if n.is_multiple_of(10) {
            let status = daemon.request(json!({"op": "status"})).await?;
            let pool = &status["result"]["pool"];
            let workers = pool["workers"].as_u64().unwrap_or(0);
            if workers > fig.peak_workers {
                fig.peak_workers = workers;
                fig.peak_events = pool.clone();
            }
            fig.peak_queued = fig.peak_queued.max(pool["queued"].as_u64().unwrap_or(0));
            let fds = std::fs::read_dir(format!("/proc/{}/fd", daemon.pid()))?.count() as u64;
            fig.peak_fds = fig.peak_fds.max(fds);
        }
    }
    fig.rss_mib = daemon.memory_kib("VmRSS")? / 1024;
    let id = first_id.ok_or_else(|| anyhow::anyhow!("no task was accepted"))?;
    let mut took = Vec::new();
    let mut conn = daemon.connect().await?;
    for _ in 0..100 {
        let at = Instant::now();
        conn.send(&json!({"op": "task", "task_id": id})).await?;
        let r = conn.recv().await?;
        took.push(at.elapsed().as_secs_f64() * 1e6);
        anyhow::ensure!(r["ok"] == true, "{r}");
    }
    took.sort_by(f64::total_cmp);
    fig.lookup_us = took[took.len() / 2];
    println!(
        "  {label:<16} workers peak {:>4}   queued peak {:>5}   open fds peak {:>4}   resident {:>4} MiB   delivered {:>7}",
        fig.peak_workers,
        fig.peak_queued,
        fig.peak_fds,
        fig.rss_mib,
        receiver.count(),
    );
    if max_workers.is_none() {
        println!("    the decisions that grew it to its peak (the last {SCALE_EVENTS_SHOWN}):");
        let mut pool = fig.peak_events.clone();
        if let Some(events) = pool["recent_scale_events"].as_array_mut() {
            let skip = events.len().saturating_sub(SCALE_EVENTS_SHOWN);
            events.drain(..skip);
        }
        scale_events::print(&pool, "      ");
    }
    Ok(fig)
}
