//! What a plugin's language costs: run with `cargo xtask bench` (or
//! `cargo bench -p notifyhub --bench languages`).
//!
//! For one plugin per language — Rust (`webhook`), Python (`ntfy`),
//! JavaScript (`gotify`) and C (`mattermost`) — it measures:
//!
//! - compile time, cold (no cache) and from wasmtime's on-disk cache;
//! - instantiate time (median of fresh instances);
//! - a warm call: `send` on a reused instance with a target the plugin
//!   rejects before any I/O, so it is the cost of entering the guest, the
//!   plugin's own code and the answer (median);
//! - guest memory held by one warm instance after a delivery;
//! - deliveries per second to a local HTTP receiver, 8 warm instances
//!   delivering concurrently for 2 seconds;
//! - what affinity to warm instances saves: a fresh instance per task
//!   (instantiate, then its first call) over a call on a warm instance, for
//!   the same call without I/O (`fresh/warm`).
//!
//! Rust is the baseline; the other rows print their ratio to it. The
//! machine is noisy: compare within one run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use notifyhub::executor::Executor;
use notifyhub::loader::PluginFile;
use notifyhub::plugin::LoadedPlugin;
use notifyhub::sandbox::{Limits, Sandbox, SandboxSettings, Tier};
use notifyhub::task::{Format, Priority, Task, TaskId};
use notifyhub_testkit::receiver::{Receiver, Reply};

const CONCURRENCY: usize = 8;
const THROUGHPUT_WINDOW: Duration = Duration::from_secs(2);

struct Subject {
    language: &'static str,
    plugin: &'static str,
    /// The path on the receiver the plugin posts to.
    target_path: &'static str,
}

const SUBJECTS: &[Subject] = &[
    Subject {
        language: "Rust",
        plugin: "webhook",
        target_path: "/webhook",
    },
    Subject {
        language: "Python",
        plugin: "ntfy",
        target_path: "/bench",
    },
    Subject {
        language: "JavaScript",
        plugin: "gotify",
        target_path: "/gotify",
    },
    Subject {
        language: "C",
        plugin: "mattermost",
        target_path: "/hooks/bench",
    },
];

#[derive(Debug, Clone, Copy)]
struct Row {
    size_mb: f64,
    cold_ms: f64,
    cached_ms: f64,
    instantiate_us: f64,
    call_us: f64,
    /// Instantiate and a first call on the new instance.
    fresh_us: f64,
    memory_mib: f64,
    per_second: f64,
}

fn main() -> anyhow::Result<()> {
    // As the daemon runs: without transparent huge pages (see `--bench pool`).
    notifyhub::without_huge_pages();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(notifyhub_testkit::deadline::bench(run()))
}

/// Answers each platform's success shape.
fn platform(req: &notifyhub_testkit::receiver::Recorded) -> Reply {
    match req.path.as_str() {
        "/" => Reply::json(200, serde_json::json!({"id": "abc", "event": "message"})),
        "/gotify/message" => Reply::json(200, serde_json::json!({"id": 1})),
        "/hooks/bench" => Reply::new(200, "ok"),
        _ => Reply::new(200, ""),
    }
}

async fn run() -> anyhow::Result<()> {
    let receiver = Receiver::start(platform).await;
    println!("plugin cost by language (one plugin each; Rust is the baseline)\n");
    println!(
        "{:<11} {:<11} {:>8} {:>10} {:>10} {:>12} {:>10} {:>10} {:>12} {:>11}",
        "language",
        "plugin",
        "size MB",
        "cold ms",
        "cached ms",
        "instance µs",
        "call µs",
        "mem MiB",
        "deliveries/s",
        "fresh/warm"
    );
    let mut baseline: Option<Row> = None;
    for subject in SUBJECTS {
        let row = measure(subject, &receiver).await?;
        println!(
            "{:<11} {:<11} {:>8.1} {:>10.0} {:>10.1} {:>12.0} {:>10.1} {:>10.2} {:>12.0} {:>10.0}x",
            subject.language,
            subject.plugin,
            row.size_mb,
            row.cold_ms,
            row.cached_ms,
            row.instantiate_us,
            row.call_us,
            row.memory_mib,
            row.per_second,
            row.fresh_us / row.call_us
        );
        match baseline {
            None => baseline = Some(row),
            Some(base) => println!(
                "{:<23} {:>8} {:>9.1}x {:>9.1}x {:>11.1}x {:>9.1}x {:>9.1}x {:>11.2}x",
                "  ratio to Rust",
                "",
                row.cold_ms / base.cold_ms,
                row.cached_ms / base.cached_ms,
                row.instantiate_us / base.instantiate_us,
                row.call_us / base.call_us,
                row.memory_mib / base.memory_mib,
                row.per_second / base.per_second
            ),
        }
    }
    Ok(())
}

async fn measure(subject: &Subject, receiver: &Receiver) -> anyhow::Result<Row> {
    let dir = tempfile::tempdir()?;
    let wasm = dir.path().join(format!("{}.wasm", subject.plugin));
    std::fs::copy(notifyhub_testkit::plugins::path(subject.plugin)?, &wasm)?;
    std::fs::write(
        dir.path().join(format!("{}.toml", subject.plugin)),
        format!(
            "allowed_hosts = [\"{}\"]\n[config]\napp_token = \"bench\"\n",
            receiver.authority()
        ),
    )?;
    let file = PluginFile::read(&wasm)?;
    let (digest, bytes) = (&file.digest, &file.bytes);

    // Cold: a sandbox without a cache. Cached: the second sandbox that
    // shares a cache directory with a first one that compiled the file.
    let cold = Sandbox::new(&SandboxSettings::default())?;
    let started = Instant::now();
    cold.compile(digest, bytes, Tier::Optimized)?;
    let cold_ms = ms(started.elapsed());
    let cache = dir.path().join("cache");
    let settings = SandboxSettings {
        cache_dir: Some(cache),
        ..SandboxSettings::default()
    };
    Sandbox::new(&settings)?.compile(digest, bytes, Tier::Optimized)?;
    let sandbox = Arc::new(Sandbox::new(&settings)?);
    let started = Instant::now();
    sandbox.compile(digest, bytes, Tier::Optimized)?;
    let cached_ms = ms(started.elapsed());

    let executor = Arc::new(Executor::new(sandbox));
    let plugin = Arc::new(
        notifyhub::loader::load(&wasm, &executor, Limits::default(), Tier::Optimized).await?,
    );
    let instantiate_us = median(20, || async {
        let started = Instant::now();
        let instance = executor
            .instantiate(plugin.clone())
            .await
            .expect("instantiates");
        let elapsed = started.elapsed();
        drop(instance);
        elapsed
    })
    .await;

    let mut instance = executor.instantiate(plugin.clone()).await?;
    let rejected = task(subject.plugin, "not-a-url");
    let mut samples = Vec::new();
    for _ in 0..2_000 {
        let started = Instant::now();
        let (outcome, _) = executor.call(&mut instance, &rejected, None).await;
        samples.push(started.elapsed());
        assert!(
            !outcome.is_success(),
            "{} accepted a bad target",
            subject.plugin
        );
    }
    let call_us = micros(middle(&mut samples));
    // A fresh instance per task: instantiate, then that instance's first
    // call (which also pays for the guest's first-use work).
    let fresh_us = median(20, || async {
        let started = Instant::now();
        let mut instance = executor
            .instantiate(plugin.clone())
            .await
            .expect("instantiates");
        let _ = executor.call(&mut instance, &rejected, None).await;
        started.elapsed()
    })
    .await;

    let target = receiver.url(subject.target_path);
    let delivery = task(subject.plugin, &target);
    let (outcome, _) = executor.call(&mut instance, &delivery, None).await;
    assert!(outcome.is_success(), "{}: {outcome:?}", subject.plugin);
    let memory_mib = instance.memory_bytes() as f64 / (1 << 20) as f64;

    let per_second = throughput(&executor, &plugin, &delivery).await;
    Ok(Row {
        size_mb: bytes.len() as f64 / 1e6,
        cold_ms,
        cached_ms,
        instantiate_us,
        call_us,
        fresh_us,
        memory_mib,
        per_second,
    })
}

async fn throughput(executor: &Arc<Executor>, plugin: &Arc<LoadedPlugin>, task: &Task) -> f64 {
    let deadline = Instant::now() + THROUGHPUT_WINDOW;
    let mut workers = Vec::new();
    for _ in 0..CONCURRENCY {
        let (executor, plugin, task) = (executor.clone(), plugin.clone(), task.clone());
        workers.push(tokio::spawn(async move {
            let mut instance = executor.instantiate(plugin).await.expect("instantiates");
            let mut delivered = 0u64;
            while Instant::now() < deadline {
                let (outcome, _) = executor.call(&mut instance, &task, None).await;
                assert!(outcome.is_success(), "{outcome:?}");
                delivered += 1;
            }
            delivered
        }));
    }
    let mut total = 0;
    for worker in workers {
        total += worker.await.expect("the worker does not panic");
    }
    total as f64 / THROUGHPUT_WINDOW.as_secs_f64()
}

fn task(platform: &str, target: &str) -> Task {
    Task {
        id: TaskId::new(),
        platform: platform.into(),
        target: target.into(),
        destination: None,
        title: Some("benchmark".into()),
        body: "a message from the benchmark".into(),
        format: Format::Markdown,
        priority: Priority::Normal,
        metadata: Default::default(),
    }
}

async fn median<F, Fut>(n: usize, mut f: F) -> f64
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Duration>,
{
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        samples.push(f().await);
    }
    micros(middle(&mut samples))
}

fn middle(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
