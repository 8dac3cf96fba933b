//! Cranelift vs Winch for a plugin's first use: run with `cargo bench -p
//! notifyhub --bench compile`.
//!
//! Winch, wasmtime's baseline compiler, compiles in one pass without
//! optimizing. The daemon serves a plugin with no cached code from Winch's
//! code first while Cranelift compiles in the background
//! (`sandbox::tier`); this measures what that buys and costs. For one
//! plugin per language, with each compiler and no compile cache:
//!
//! - compile time;
//! - cold → first delivery: compile, `describe()`, instantiate and one real
//!   delivery to a local receiver;
//! - a warm call without I/O (`send` with a target the plugin rejects), to
//!   show what running on Winch's code would cost until the swap.
//!
//! Then, for Python and JavaScript, the second plugin of the language
//! compiled by Winch right after the first, as at a cold start, when it
//! reuses the interpreter's functions (`sandbox::reuse`), against the same
//! compile alone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use notifyhub::executor::Executor;
use notifyhub::loader::PluginFile;
use notifyhub::sandbox::{Kind, Limits, Sandbox, SandboxSettings, Tier};
use notifyhub::task::Task;
use notifyhub_testkit::receiver::{Receiver, Reply};

/// (language, plugin, path it posts to on the receiver)
const SUBJECTS: &[(&str, &str, &str)] = &[
    ("Rust", "webhook", "/webhook"),
    ("Python", "ntfy", "/bench"),
    ("JavaScript", "gotify", "/gotify"),
    ("C", "mattermost", "/hooks/bench"),
];

/// (language, first plugin, second plugin embedding the same interpreter)
const PAIRS: &[(&str, &str, &str)] = &[
    ("Python", "ntfy", "bark"),
    ("JavaScript", "gotify", "rocketchat"),
];

#[derive(Debug, Clone, Copy)]
struct Figures {
    compile_ms: f64,
    first_delivery_ms: f64,
    call_us: f64,
}

fn main() -> anyhow::Result<()> {
    // As the daemon runs: without transparent huge pages, which otherwise
    // turn a quarter of a compile's CPU into zeroing 2 MiB pages.
    notifyhub::without_huge_pages();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(notifyhub_testkit::deadline::bench(async {
        let receiver = Receiver::start(|req| match req.path.as_str() {
            "/" => Reply::json(200, serde_json::json!({"id": "abc", "event": "message"})),
            "/gotify/message" => Reply::json(200, serde_json::json!({"id": 1})),
            _ => Reply::new(200, "ok"),
        })
        .await;
        println!("first use with Cranelift vs Winch (no compile cache)\n");
        println!(
            "{:<11} {:>24} {:>30} {:>26}",
            "language", "compile ms (C / W / ×)", "cold → delivery ms (C / W / ×)", "warm call µs (C / W / ×)"
        );
        for (language, plugin, path) in SUBJECTS {
            let cranelift = measure(Tier::Optimized, plugin, &receiver.url(path), &receiver).await?;
            let winch = measure(Tier::Baseline, plugin, &receiver.url(path), &receiver).await?;
            println!(
                "{language:<11} {:>8.0} / {:>5.0} / {:>5.1} {:>12.0} / {:>5.0} / {:>5.1} {:>10.1} / {:>5.1} / {:>5.2}",
                cranelift.compile_ms,
                winch.compile_ms,
                cranelift.compile_ms / winch.compile_ms,
                cranelift.first_delivery_ms,
                winch.first_delivery_ms,
                cranelift.first_delivery_ms / winch.first_delivery_ms,
                cranelift.call_us,
                winch.call_us,
                winch.call_us / cranelift.call_us,
            );
        }
        println!("\n× for compile and cold → delivery: Cranelift / Winch (goal ≥ 5 to adopt);");
        println!("× for the warm call: Winch / Cranelift (how much slower Winch's code runs)");
        println!("\nthe second plugin of a language, compiled by Winch after the first\n");
        println!(
            "{:<11} {:>18} {:>16} {:>18} {:>8}",
            "language", "first plugin ms", "second ms", "second alone ms", "×"
        );
        for (language, first, second) in PAIRS {
            let wave = second_of_a_language(first, second)?;
            println!(
                "{language:<11} {:>18.0} {:>16.0} {:>18.0} {:>8.2}",
                wave.first_ms,
                wave.second_ms,
                wave.alone_ms,
                wave.alone_ms / wave.second_ms,
            );
        }
        println!("\n× second alone / second after the first (what reusing the interpreter's functions buys)");
        Ok(())
    }))
}

async fn measure(
    tier: Tier,
    plugin: &str,
    target: &str,
    receiver: &Receiver,
) -> anyhow::Result<Figures> {
    let dir = tempfile::tempdir()?;
    let wasm = dir.path().join(format!("{plugin}.wasm"));
    std::fs::copy(notifyhub_testkit::plugins::path(plugin)?, &wasm)?;
    std::fs::write(
        dir.path().join(format!("{plugin}.toml")),
        format!(
            "allowed_hosts = [\"{}\"]\n[config]\napp_token = \"bench\"\n",
            receiver.authority()
        ),
    )?;
    // No cache: each figure is a compile.
    let settings = SandboxSettings::default();
    let file = PluginFile::read(&wasm)?;
    let started = Instant::now();
    Sandbox::new(&settings)?.compile(&file.digest, &file.bytes, tier)?;
    let compile_ms = ms(started.elapsed());

    let executor = Executor::new(Arc::new(Sandbox::new(&settings)?));
    let started = Instant::now();
    let loaded =
        Arc::new(notifyhub::loader::load(&wasm, &executor, Limits::default(), tier).await?);
    let mut instance = executor.instantiate(loaded.clone()).await?;
    let (outcome, _) = executor
        .call(&mut instance, &task(plugin, target), None)
        .await;
    let first_delivery_ms = ms(started.elapsed());
    anyhow::ensure!(outcome.is_success(), "{plugin}: {outcome:?}");

    let rejected = task(plugin, "not-a-url");
    let mut samples = Vec::with_capacity(2_000);
    for _ in 0..2_000 {
        let started = Instant::now();
        let (outcome, _) = executor.call(&mut instance, &rejected, None).await;
        samples.push(started.elapsed());
        anyhow::ensure!(!outcome.is_success(), "{plugin} accepted a bad target");
    }
    samples.sort();
    Ok(Figures {
        compile_ms,
        first_delivery_ms,
        call_us: samples[samples.len() / 2].as_secs_f64() * 1e6,
    })
}

struct Wave {
    first_ms: f64,
    second_ms: f64,
    alone_ms: f64,
}

/// Winch's compiles of `first` then `second` in one wave, as at a cold
/// start, and of `second` alone.
fn second_of_a_language(first: &str, second: &str) -> anyhow::Result<Wave> {
    let settings = SandboxSettings::default();
    let [first, second] = [first, second].map(|name| {
        notifyhub_testkit::plugins::path(name).and_then(|path| Ok(PluginFile::read(&path)?))
    });
    let (first, second) = (first?, second?);
    let compile = |sandbox: &Sandbox, file: &PluginFile| -> anyhow::Result<f64> {
        let started = Instant::now();
        sandbox.compile(&file.digest, &file.bytes, Tier::Baseline)?;
        Ok(ms(started.elapsed()))
    };
    let sandbox = Sandbox::new(&settings)?;
    let kinds = [&first, &second].map(|file| Kind::of_bytes(&file.bytes));
    anyhow::ensure!(
        kinds[0].is_some() && kinds[0] == kinds[1],
        "not one kind: {kinds:?}"
    );
    let wave = sandbox.hold_baseline_functions(kinds.into_iter().flatten());
    let first_ms = compile(&sandbox, &first)?;
    let second_ms = compile(&sandbox, &second)?;
    anyhow::ensure!(wave.reused() > 0, "the second reused nothing");
    drop(wave);
    let alone_ms = compile(&Sandbox::new(&settings)?, &second)?;
    Ok(Wave {
        first_ms,
        second_ms,
        alone_ms,
    })
}

fn task(platform: &str, target: &str) -> Task {
    Task::text(platform, target, "benchmark")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
