//! `cargo xtask test`: the whole suite, from a fresh clone, in minutes.
//!
//! The run has fixed stages, each timed into the table printed at the end
//! (so any CI log shows where the time went):
//!
//! 1. **Toolchains**, installed under `plugins/target/toolchains` without
//!    root (see `notifyhub_testkit::toolchains`): the `wasm32-wasip2` target,
//!    componentize-py, componentize-js, Zig (C), nats-server, and the SMTP
//!    relay's aiosmtpd and trustme.
//! 2. **Plugins**, built once for the whole run. Test binaries are told so
//!    (`notifyhub_testkit::plugins::PREBUILT_ENV`) and never start a build of
//!    their own.
//! 3. **Test binaries**, compiled by one `cargo test --no-run`.
//! 4. **The compile cache**: every plugin compiled by the debug daemon once,
//!    one at a time, into the suite's shared cache, so no two daemons compile
//!    a 19 MB Python component at once.
//! 5. **Each test binary** in its own process group under a deadline; when it
//!    ends, or overruns, the group is killed with every daemon and server it
//!    started. Two binaries run at a time, longest (last run) first.
//! 6. The Rust plugin SDK's own tests, natively.
//!
//! Tiers: the default covers every feature; `--quick` builds only the Rust
//! plugins and runs the host's unit tests and a smoke test per area;
//! `--full` also runs the tests marked `#[ignore]` as heavy (large sizes,
//! long waits) and the model tests with many cases. `--only NAME` (repeat it)
//! runs the named test binaries; arguments after `--` go to each binary
//! (a test name filter, `--nocapture`, …).

mod runner;
mod timings;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use notifyhub_testkit::daemon::shared_cache_dir;
use notifyhub_testkit::plugins::{self, Language};
use notifyhub_testkit::{repo_root, toolchains};

use self::runner::{TestEnv, run_binaries};
use self::timings::Timings;
use crate::{cargo, host_triple, run, rust_target};

/// Which tests a run covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tier {
    Quick,
    Default,
    Full,
}

/// How long one test binary may run before it and everything it started
/// are killed. A guard against hangs, far above any binary's real time.
fn deadline(tier: Tier) -> Duration {
    match tier {
        Tier::Full => Duration::from_secs(30 * 60),
        _ => Duration::from_secs(8 * 60),
    }
}

/// The smoke tests of `--quick`: per test binary, the name filters to run
/// (none: the whole binary; unit tests run whole). Only Rust plugins are
/// built in that tier, so nothing here may need another language's.
const QUICK: &[(&str, &[&str])] = &[
    ("backlog", &["a_task_beyond_the_horizon"]),
    ("broker", &["two_hosts_share"]),
    ("cli", &["send_wait_task_status_and_plugins"]),
    ("core", &["retrying_a_dead_task_keeps_its_history"]),
    ("delivery", &["webhook_delivers_a_signed"]),
    ("durability", &["scheduled_tasks_wait_for_their_time"]),
    ("hostile", &["requests_out_of_bounds"]),
    ("layout", &[]),
    ("metrics", &["counters_match"]),
    ("pacing", &["a_rate_limited_answer_pauses"]),
    ("pool", &["scale_changes_bounds"]),
    ("protocol", &[]),
    ("reload", &["a_new_version_swaps_in"]),
    ("sandbox", &["each_misbehaviour"]),
    ("security", &["secrets_never_appear"]),
    ("smtp", &["send_reaches_a_relay"]),
    ("top", &[]),
    ("watch", &["a_watcher_sees_every_outcome"]),
];

struct Options {
    tier: Tier,
    only: Vec<String>,
    passthrough: Vec<String>,
}

fn parse(args: &[String]) -> anyhow::Result<Options> {
    let mut options = Options {
        tier: Tier::Default,
        only: Vec::new(),
        passthrough: Vec::new(),
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => options.tier = Tier::Quick,
            "--full" => options.tier = Tier::Full,
            "--only" => options.only.push(
                args.next()
                    .context("--only needs a test binary's name")?
                    .clone(),
            ),
            "--" => {
                options.passthrough = args.cloned().collect();
                break;
            }
            "-h" | "--help" => {
                println!("{HELP}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{HELP}"),
        }
    }
    Ok(options)
}

const HELP: &str = "\
usage: cargo xtask test [--quick | --full] [--only NAME]... [-- ARGS...]

  (no flag)    every feature: every plugin in every language, every test binary
  --quick      Rust plugins only, the host's unit tests and a smoke test per area
  --full       also the heavy tests (#[ignore]d: large sizes, long waits)
  --only NAME  only this test binary (tests/NAME.rs, or `unit` for the host's
               unit tests); repeatable
  -- ARGS      passed to every test binary (a name filter, --nocapture, ...)

Toolchains are installed under plugins/target/toolchains, logs are written
to target/xtask-test/, and a table of where the time went ends every run.";

pub fn main(args: &[String]) -> anyhow::Result<()> {
    let options = parse(args)?;
    let started = Instant::now();
    let mut timings = Timings::default();
    let result = stages(&options, &mut timings);
    timings.print(started.elapsed());
    result
}

fn stages(options: &Options, timings: &mut Timings) -> anyhow::Result<()> {
    let quick = options.tier == Tier::Quick;
    timings.stage("toolchain: wasm32-wasip2", rust_target)?;
    let nats = timings.stage("toolchain: nats-server", toolchains::nats_server)?;
    timings.stage("toolchain: SMTP relay", toolchains::smtp_relay_python)?;
    if !quick {
        timings.stage("toolchain: componentize-py", toolchains::componentize_py)?;
        timings.stage("toolchain: componentize-js", toolchains::componentize_js)?;
        timings.stage("toolchain: zig (C)", toolchains::zig_python)?;
    }
    timings.stage("plugins: Rust", plugins::build_rust_plugins)?;
    if !quick {
        timings.stage("plugins: Python", || {
            plugins::build_language(Language::Python)
        })?;
        timings.stage("plugins: JavaScript", || {
            plugins::build_language(Language::JavaScript)
        })?;
        timings.stage("plugins: C", || plugins::build_language(Language::C))?;
    }
    let binaries = timings.stage("build: test binaries", build_tests)?;
    timings.stage("compile cache: every plugin", || {
        warm_cache(&binaries.daemon)
    })?;

    let selected = select(options, &binaries.tests)?;
    let env = TestEnv::new(nats)?;
    let results = run_binaries(
        &selected,
        &env,
        deadline(options.tier),
        options.tier == Tier::Full,
        timings,
    );
    if options.only.is_empty() && !quick {
        timings.stage("test: plugin SDK (native)", sdk_tests)?;
    }
    results
}

/// What `cargo test --no-run` built.
struct Built {
    /// The debug `notifyhub` binary the integration tests run.
    daemon: PathBuf,
    /// Test binary name → executable.
    tests: BTreeMap<String, PathBuf>,
}

/// Builds every test binary of the workspace, reading their paths from
/// cargo's JSON messages.
fn build_tests() -> anyhow::Result<Built> {
    let out = cargo()
        .args([
            "test",
            "--workspace",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the tests failed ({})", out.status);
    }
    let mut daemon = None;
    let mut tests = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(exe) = message["executable"].as_str() else {
            continue;
        };
        let name = message["target"]["name"].as_str().unwrap_or_default();
        let kind = message["target"]["kind"][0].as_str().unwrap_or_default();
        let is_test = message["profile"]["test"].as_bool() == Some(true);
        match (kind, is_test) {
            ("bin", false) if name == "notifyhub" => daemon = Some(PathBuf::from(exe)),
            ("test", true) => {
                tests.insert(name.to_string(), PathBuf::from(exe));
            }
            // Unit tests: the host library's are `unit`; the others carry
            // their package's name (`unit-testkit`, `unit-xtask`, …).
            ("lib" | "bin", true) => {
                let label = if name == "notifyhub" && kind == "lib" {
                    "unit".to_string()
                } else {
                    format!("unit-{name}-{kind}")
                };
                tests.insert(label, PathBuf::from(exe));
            }
            _ => {}
        }
    }
    Ok(Built {
        daemon: daemon.context("cargo built no notifyhub binary")?,
        tests,
    })
}

/// Compiles every built plugin into the suite's shared cache with the
/// debug daemon's `check`, one after another.
fn warm_cache(daemon: &Path) -> anyhow::Result<()> {
    let mut names: Vec<_> = std::fs::read_dir(plugins::out_dir())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "wasm"))
        .collect();
    names.sort();
    for plugin in names {
        let out = Command::new(daemon)
            .arg("--cache-dir")
            .arg(shared_cache_dir())
            .arg("check")
            .arg(&plugin)
            .output()
            .with_context(|| format!("running {} check", daemon.display()))?;
        if !out.status.success() {
            bail!(
                "`notifyhub check {}` failed:\n{}{}",
                plugin.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    Ok(())
}

/// The binaries this run covers, with the name filters each runs.
fn select(
    options: &Options,
    tests: &BTreeMap<String, PathBuf>,
) -> anyhow::Result<Vec<(String, PathBuf, Vec<String>)>> {
    for name in &options.only {
        if !tests.contains_key(name) {
            bail!(
                "no test binary {name:?}; there are: {}",
                tests.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        }
    }
    let mut selected = Vec::new();
    for (name, exe) in tests {
        let filters: Vec<String> = if !options.only.is_empty() {
            if !options.only.contains(name) {
                continue;
            }
            options.passthrough.clone()
        } else if options.tier == Tier::Quick {
            match QUICK.iter().find(|(n, _)| n == name) {
                Some((_, filters)) => filters.iter().map(|f| f.to_string()).collect(),
                None if name.starts_with("unit") => Vec::new(),
                None => continue,
            }
        } else {
            options.passthrough.clone()
        };
        let mut args = filters;
        if options.tier == Tier::Full {
            args.push("--include-ignored".into());
        }
        selected.push((name.clone(), exe.clone(), args));
    }
    Ok(selected)
}

/// The SDK's pure helpers (formatting, signing, time) run natively.
fn sdk_tests() -> anyhow::Result<()> {
    run(cargo().current_dir(repo_root().join("plugins")).args([
        "test",
        "-p",
        "notifyhub-plugin-sdk",
        "--target",
        &host_triple()?,
    ]))
}
