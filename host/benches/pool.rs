//! Worker-pool benchmarks: run with `cargo xtask bench`.
//!
//! 1. A plugin that is expensive to start (`heavy`: ~1 ms of start-up work
//!    per instance, like a Python runtime) under `affinity`, `round-robin`
//!    (both with warm instances bounded per plugin) and a fresh instance per
//!    task, in one run, with the ratios.
//! 2. 2,000 tasks to a receiver that answers after 100 ms in one submit,
//!    through the real daemon: with its default pool (wall time, goal
//!    ≤ 0.3 s, and the scaling decisions that got there), then with
//!    `max_workers` 512 (the default before 1,024) and 2,048 for
//!    comparison, with peak memory and the daemon's CPU time.
//! 3. The pool's own overhead: p50 latency of one task at a time through the
//!    pool on a warm instance, minus the p50 of a direct warm call, and the
//!    same amortized under load (target ≤ 10 µs). The store is the in-memory
//!    one here: durability is measured by the `store` benchmark.
//!
//! `NOTIFYHUB_POOL_PARTS=burst` runs the second part alone (also `heavy`,
//! `overhead`; comma-separated): to profile one part.

use std::sync::Arc;
use std::time::{Duration, Instant};

use notifyhub::executor::Executor;
use notifyhub::pool::{Pool, PoolConfig, PoolDeps, Strategy};
use notifyhub::registry::Registry;
use notifyhub::sandbox::{Limits, Sandbox, SandboxSettings};
use notifyhub::store::{Submission, TaskRecord, TaskStore};
use notifyhub::task::Task;
use notifyhub_testkit::daemon::Daemon;
use notifyhub_testkit::deadline::within;
use notifyhub_testkit::receiver::{Receiver, Reply};
use serde_json::{Value, json};

#[path = "support/cpu.rs"]
#[allow(dead_code)] // its per-thread figures serve the store's benchmarks
mod cpu;
#[path = "support/scale_events.rs"]
mod scale_events;

const BIN: &str = env!("CARGO_BIN_EXE_notifyhub");

fn main() -> anyhow::Result<()> {
    // As the daemon runs: without transparent huge pages. This process
    // links notifyhub's allocator, which asks for them, and hosts the
    // receiver that stands in for a platform on another machine: zeroing
    // 2 MiB pages for its connections took 0.19 s of CPU over the three
    // bursts of one run (`perf record -a`), CPU the daemon then lacked.
    notifyhub::without_huge_pages();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // `NOTIFYHUB_POOL_PARTS=burst` (or `heavy`, `overhead`, comma-separated)
    // runs only those parts: to profile one of them.
    let parts = std::env::var("NOTIFYHUB_POOL_PARTS").unwrap_or_default();
    let runs = |part: &str| parts.is_empty() || parts.split(',').any(|p| p.trim() == part);
    runtime.block_on(notifyhub_testkit::deadline::bench(async {
        if runs("heavy") {
            heavy_plugin().await?;
        }
        if runs("burst") {
            slow_receiver().await?;
        }
        if runs("overhead") {
            overhead().await?;
        }
        Ok(())
    }))
}

fn task(platform: &str) -> Arc<Task> {
    Arc::new(Task::text(platform, "-", "bench"))
}

fn submission(task: &Arc<Task>) -> Submission {
    Submission {
        task: task.clone(),
        not_before: None,
        idempotency_key: None,
    }
}

struct Harness {
    pool: Pool,
    store: Arc<TaskStore>,
    /// The plugin directory, removed when the harness goes.
    _plugins: tempfile::TempDir,
}

async fn harness(
    plugin: &str,
    config: PoolConfig,
) -> anyhow::Result<(Harness, Arc<Executor>, Arc<Registry>)> {
    let plugins = tempfile::Builder::new()
        .prefix(&format!("nh-bench-{plugin}-"))
        .tempdir()?;
    let dir = plugins.path();
    std::fs::copy(
        notifyhub_testkit::plugins::path(plugin)?,
        dir.join(format!("{plugin}.wasm")),
    )?;
    let executor = Arc::new(Executor::new(Arc::new(Sandbox::new(
        &SandboxSettings::default(),
    )?)));
    let registry = Arc::new(Registry::new(dir, None));
    notifyhub::reload::load_all(registry.clone(), executor.clone(), Limits::default()).await;
    let store = Arc::new(TaskStore::default());
    let deps = PoolDeps {
        executor: executor.clone(),
        registry: registry.clone(),
        store: store.clone(),
        settings: Default::default(),
        metrics: None,
        shared_pace: None,
    };
    let pool = Pool::start(config, deps);
    // Let the staged start bring up min_workers.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok((
        Harness {
            pool,
            store,
            _plugins: plugins,
        },
        executor,
        registry,
    ))
}

/// A task's outcome; an error after a minute (a guard, not a measurement).
async fn outcome(done: tokio::sync::oneshot::Receiver<TaskRecord>) -> anyhow::Result<TaskRecord> {
    within("a task's outcome", Duration::from_secs(60), async {
        Ok(done.await?)
    })
    .await
}

impl Harness {
    /// Runs `n` tasks through the pool, `in_flight` at a time; returns tasks/s.
    async fn throughput(&self, platform: &str, n: usize, in_flight: usize) -> anyhow::Result<f64> {
        let started = Instant::now();
        let mut pending = std::collections::VecDeque::new();
        for i in 0..n {
            let t = task(platform);
            self.store.submit(vec![submission(&t)]).await?;
            let done = self.store.wait(t.id).expect("just inserted");
            self.pool.enqueue(&[t]);
            pending.push_back(done);
            if pending.len() >= in_flight || i + 1 == n {
                while let Some(done) = pending.pop_front() {
                    let record = outcome(done).await?;
                    anyhow::ensure!(
                        record.outcome.is_some_and(|o| o.is_success()),
                        "a task failed"
                    );
                    if pending.len() < in_flight / 2 {
                        break;
                    }
                }
            }
        }
        while let Some(done) = pending.pop_front() {
            outcome(done).await?;
        }
        Ok(n as f64 / started.elapsed().as_secs_f64())
    }
}

async fn heavy_plugin() -> anyhow::Result<()> {
    let bounded = |strategy| PoolConfig {
        min_workers: 16,
        max_workers: 16,
        strategy,
        max_warm_per_plugin: 4,
        max_warm_per_worker: 1,
        ..PoolConfig::default()
    };
    let fresh = PoolConfig {
        max_warm_per_plugin: 0,
        ..bounded(Strategy::Affinity)
    };
    let n = 4000;
    let mut results = Vec::new();
    for (name, config) in [
        ("affinity", bounded(Strategy::Affinity)),
        ("round-robin", bounded(Strategy::RoundRobin)),
        ("fresh instance per task", fresh),
    ] {
        let (h, _, _) = harness("heavy", config).await?;
        h.throughput("heavy", 200, 8).await?; // warm-up
        let rate = h.throughput("heavy", n, 8).await?;
        h.pool.shutdown().await;
        results.push((name, rate));
    }
    println!(
        "heavy plugin (~1 ms start-up), 16 workers, 4 warm instances at most, 8 tasks in flight"
    );
    for (name, rate) in &results {
        println!("  {name:<24} {rate:>10.0} tasks/s");
    }
    println!(
        "  affinity / fresh         {:>10.1}x",
        results[0].1 / results[2].1
    );
    println!(
        "  affinity / round-robin   {:>10.1}x",
        results[0].1 / results[1].1
    );
    Ok(())
}

async fn slow_receiver() -> anyhow::Result<()> {
    println!("\n2,000 tasks to a receiver answering after 100 ms, one submit (daemon)");
    // The default pool, then fixed ceilings for comparison in the same run.
    for max_workers in [None, Some(512), Some(2048)] {
        slow_receiver_with(max_workers).await?;
    }
    Ok(())
}

async fn slow_receiver_with(max_workers: Option<usize>) -> anyhow::Result<()> {
    let receiver =
        Receiver::start(|_| Reply::new(200, "ok").after(Duration::from_millis(100))).await;
    let manifest = format!("allowed_hosts = [\"{}\"]\n", receiver.authority());
    let mut builder = Daemon::builder(BIN).plugin("webhook", Some(&manifest));
    if let Some(max) = max_workers {
        builder = builder.config(&format!("[pool]\nmax_workers = {max}\n"));
    }
    let daemon = builder.start().await?;
    let tasks: Vec<Value> = (0..2000)
        .map(|_| json!({"platform": "webhook", "target": receiver.url("/"), "body": "b"}))
        .collect();
    let cpu_before = cpu::process(daemon.pid())?;
    let started = Instant::now();
    let response = daemon
        .request(json!({"op": "submit", "wait": true, "tasks": tasks}))
        .await?;
    let elapsed = started.elapsed();
    let daemon_cpu = cpu::process(daemon.pid())?.saturating_sub(cpu_before);
    let ok = response["result"]["tasks"].as_array().map_or(0, |t| {
        t.iter().filter(|t| t["state"] == "succeeded").count()
    });
    let failed = response["result"]["tasks"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["state"] != "succeeded"));
    anyhow::ensure!(
        ok == 2000,
        "{ok} of 2000 succeeded; one that did not: {failed:?}"
    );
    let pool = daemon.request(json!({"op": "status"})).await?["result"]["pool"].clone();
    let label = max_workers.map_or("default".to_string(), |m| format!("max_workers {m}"));
    // When the requests reached the receiver, per 100 ms since the submit:
    // where the wall time went (starting workers, connecting, the rounds).
    let mut arrivals = Vec::<usize>::new();
    for r in receiver.requests() {
        let slot = (r.at.saturating_duration_since(started).as_millis() / 100) as usize;
        if arrivals.len() <= slot {
            arrivals.resize(slot + 1, 0);
        }
        arrivals[slot] += 1;
    }
    println!(
        "  {label:<17} all delivered in {:.3} s (goal <= 0.3 s), daemon CPU {} ms; pool grew to {} of {} workers, peak RSS {} MiB, {} connections; arrivals per 100 ms {arrivals:?}",
        elapsed.as_secs_f64(),
        daemon_cpu.as_millis(),
        pool["workers"],
        pool["max_workers"],
        daemon.memory_kib("VmHWM")? / 1024,
        receiver.connections(),
    );
    if max_workers.is_none() {
        scale_events::print(&pool, "    ");
    }
    Ok(())
}

async fn overhead() -> anyhow::Result<()> {
    let config = PoolConfig {
        min_workers: 1,
        max_workers: 1,
        ..PoolConfig::default()
    };
    let (h, executor, registry) = harness("noop", config).await?;
    let n = 20_000;
    let mut through_pool = Vec::with_capacity(n);
    for _ in 0..n {
        let t = task("noop");
        let started = Instant::now();
        h.store.submit(vec![submission(&t)]).await?;
        let done = h.store.wait(t.id).expect("just inserted");
        h.pool.enqueue(&[t]);
        outcome(done).await?;
        through_pool.push(started.elapsed());
    }
    let plugin = registry.lookup("noop").expect("noop is loaded");
    let mut instance = executor.instantiate(plugin).await?;
    let t = task("noop");
    let mut direct = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        executor.call(&mut instance, &t, None).await;
        direct.push(started.elapsed());
    }
    let p50 = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (pool, call) = (p50(&mut through_pool), p50(&mut direct));

    // Under load the same work is amortized: many tasks in flight, no waiting
    // on wake-ups between them.
    let bulk = 100_000;
    let rate = h.throughput("noop", bulk, 1000).await?;
    let per_task = Duration::from_secs_f64(1.0 / rate);
    println!("\npool overhead, one task at a time on a warm noop instance ({n} tasks)");
    println!(
        "  through the pool p50     {:>8.2} µs",
        pool.as_secs_f64() * 1e6
    );
    println!(
        "  direct warm call p50     {:>8.2} µs",
        call.as_secs_f64() * 1e6
    );
    println!(
        "  pool overhead p50        {:>8.2} µs (one task alone: three cross-thread wake-ups)",
        (pool.saturating_sub(call)).as_secs_f64() * 1e6
    );
    println!(
        "  under load: {rate:.0} tasks/s, {:.2} µs wall per task, {:.2} µs beyond the call (target <= 10 µs)",
        per_task.as_secs_f64() * 1e6,
        per_task.saturating_sub(call).as_secs_f64() * 1e6
    );
    Ok(())
}
