//! A backlog of scheduled tasks: submit rate, resident memory, how fast
//! `task` and `tasks` answer with the backlog on disk, and how long a
//! restart on it takes until the daemon answers (against its first start,
//! on an empty store). Run with `cargo xtask
//! bench` (1,000,000 tasks) or, for ten million,
//! `NOTIFYHUB_BACKLOG_TASKS=10000000 cargo bench -p notifyhub --bench backlog`.
//!
//! The real daemon with the durable store and the default config; tasks due
//! in an hour, submitted in batches of 10,000 over 4 connections. The
//! baseline in the same run: 200,000 such tasks with the memory horizon
//! raised to a day, so every task stays in memory as before parking.

use std::time::{Duration, Instant};

use notifyhub_testkit::daemon::{Conn, Daemon};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_notifyhub");
const BATCH: usize = 10_000;
const CONNECTIONS: usize = 4;
const BASELINE_TASKS: usize = 200_000;

fn main() -> anyhow::Result<()> {
    let tasks: usize = std::env::var("NOTIFYHUB_BACKLOG_TASKS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(notifyhub_testkit::deadline::bench(async {
        let baseline = run(BASELINE_TASKS, Some("1day")).await?;
        let parked = run(tasks, None).await?;
        println!(
            "in memory (horizon 1 day): {BASELINE_TASKS} tasks, {:.0} submitted/s, RSS {} → {} MiB, {:.0} B/task",
            baseline.rate,
            baseline.rss_start_kib / 1024,
            baseline.rss_end_kib / 1024,
            baseline.bytes_per_task()
        );
        println!(
            "parked (default config):   {tasks} tasks, {:.0} submitted/s, RSS {} → {} MiB (peak {} MiB), {:.0} B/task",
            parked.rate,
            parked.rss_start_kib / 1024,
            parked.rss_end_kib / 1024,
            parked.rss_peak_kib / 1024,
            parked.bytes_per_task()
        );
        println!(
            "  task p50 {:.2} ms, tasks --state queued (limit 10) p50 {:.2} ms, tasks (limit 10) p50 {:.2} ms",
            ms(parked.task_p50),
            ms(parked.list_state_p50),
            ms(parked.list_p50)
        );
        println!(
            "  restart on the backlog until it answers and serves: {:.0} ms (on an empty store: {:.0} ms; goal ≤ 100 ms)",
            ms(parked.restart),
            ms(parked.empty_start)
        );
        println!(
            "memory per task, parked / in memory: {:.3}; resident at the end / at start: {:.2} (goal: < 200 MiB at 10 M)",
            parked.bytes_per_task() / baseline.bytes_per_task(),
            parked.rss_end_kib as f64 / parked.rss_start_kib as f64
        );
        Ok(())
    }))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

struct Run {
    /// From spawning the daemon on an empty store until it answers and its
    /// plugins serve; `restart`: the same on the backlog.
    empty_start: Duration,
    restart: Duration,
    tasks: usize,
    rate: f64,
    rss_start_kib: u64,
    rss_end_kib: u64,
    rss_peak_kib: u64,
    task_p50: Duration,
    list_state_p50: Duration,
    list_p50: Duration,
}

impl Run {
    fn bytes_per_task(&self) -> f64 {
        (self.rss_end_kib.saturating_sub(self.rss_start_kib) * 1024) as f64 / self.tasks as f64
    }
}

async fn run(tasks: usize, horizon: Option<&str>) -> anyhow::Result<Run> {
    let mut builder = Daemon::builder(BIN).plugin("noop", None);
    if let Some(horizon) = horizon {
        builder = builder.config(&format!("[store]\nmemory_horizon = \"{horizon}\"\n"));
    }
    let mut daemon = builder.start().await?;
    // From the spawn: as the restart below, which copies no plugin first.
    let empty_start = daemon.spawned().elapsed();
    let rss_start_kib = daemon.memory_kib("VmRSS")?;
    let started = Instant::now();
    let mut clients = Vec::new();
    let batches = tasks.div_ceil(BATCH);
    let mut first_id = None;
    for c in 0..CONNECTIONS {
        let socket = daemon.socket().to_path_buf();
        let mine = (c..batches).step_by(CONNECTIONS).count();
        clients.push(tokio::spawn(async move {
            let mut conn = Conn::connect(&socket).await?;
            let batch: Vec<Value> = (0..BATCH)
                .map(|_| json!({"platform": "noop", "target": "-", "body": "reminder", "delay": "1h"}))
                .collect();
            let mut id = None;
            for _ in 0..mine {
                conn.send(&json!({"op": "submit", "tasks": batch})).await?;
                let r = conn.recv().await?;
                anyhow::ensure!(r["ok"] == true, "{r}");
                id = r["result"]["task_ids"][0].as_str().map(String::from);
            }
            anyhow::Ok(id)
        }));
    }
    for c in clients {
        if let Some(id) = c.await?? {
            first_id = Some(id);
        }
    }
    let submitted = batches * BATCH;
    let rate = submitted as f64 / started.elapsed().as_secs_f64();
    let rss_end_kib = daemon.memory_kib("VmRSS")?;
    let rss_peak_kib = daemon.memory_kib("VmHWM")?;
    let id = first_id.unwrap_or_default();
    let task_p50 = p50(&daemon, json!({"op": "task", "task_id": id})).await?;
    let list_state_p50 = p50(
        &daemon,
        json!({"op": "tasks", "state": "queued", "limit": 10}),
    )
    .await?;
    let list_p50 = p50(&daemon, json!({"op": "tasks", "limit": 10})).await?;
    daemon.terminate()?;
    let restarting = Instant::now();
    daemon.restart().await?;
    let restart = restarting.elapsed();
    Ok(Run {
        empty_start,
        restart,
        tasks: submitted,
        rate,
        rss_start_kib,
        rss_end_kib,
        rss_peak_kib,
        task_p50,
        list_state_p50,
        list_p50,
    })
}

/// The median time of 51 requests.
async fn p50(daemon: &Daemon, request: Value) -> anyhow::Result<Duration> {
    let mut conn = daemon.connect().await?;
    let mut times = Vec::new();
    for _ in 0..51 {
        let at = Instant::now();
        conn.send(&request).await?;
        let r = conn.recv().await?;
        times.push(at.elapsed());
        anyhow::ensure!(r["ok"] == true, "{r}");
    }
    times.sort();
    Ok(times[times.len() / 2])
}
