//! Runs test binaries as `cargo test` would, but each in its own process
//! group under a deadline: when a binary ends, or overruns, the group is
//! killed, and with it every daemon, receiver and nats-server it started,
//! even those it never dropped. Two run at a time, longest first; each
//! writes to its own log (and its daemons' logs beside it), and only a
//! failure's log is printed.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use notifyhub_testkit::daemon::KEEP_LOGS_ENV;
use notifyhub_testkit::plugins::PREBUILT_ENV;
use notifyhub_testkit::{FULL_ENV, repo_root};

use super::timings::Timings;

/// The slowest test binaries, slowest first (`authoring` builds three
/// scaffolded projects): the order of a run without a previous one's times.
const SLOW: &[&str] = &[
    "authoring",
    "broker",
    "durability",
    "conformance",
    "security",
];

/// Binaries that run at once: each already runs its tests on two threads,
/// and most of a test's time is spent waiting on a daemon.
const JOBS: usize = 2;

/// The environment every test binary runs in.
pub struct TestEnv {
    vars: Vec<(&'static str, PathBuf)>,
    logs: PathBuf,
}

impl TestEnv {
    pub fn new(nats: PathBuf) -> anyhow::Result<Self> {
        let work = repo_root().join("target/xtask-test");
        // A home of the run's own: a test that forgets a directory flag
        // writes here, never into the user's ~/.local or ~/.config.
        let home = work.join("home");
        for dir in ["data", "config", "state", "cache"] {
            std::fs::create_dir_all(home.join(dir))?;
        }
        let logs = work.join("logs");
        std::fs::create_dir_all(&logs)?;
        Ok(TestEnv {
            vars: vec![
                (PREBUILT_ENV, "1".into()),
                ("NATS_SERVER_BIN", nats),
                ("XDG_DATA_HOME", home.join("data")),
                ("XDG_CONFIG_HOME", home.join("config")),
                ("XDG_STATE_HOME", home.join("state")),
                ("XDG_CACHE_HOME", home.join("cache")),
            ],
            logs,
        })
    }
}

/// One test binary in flight.
struct Running {
    name: String,
    /// Run with a name filter (which must match some test).
    filtered: bool,
    child: Child,
    started: Instant,
    log: PathBuf,
}

/// Runs `selected` (name, executable, arguments), [`JOBS`] at a time,
/// each under `limit`; records each in `timings`; fails naming every
/// binary that failed, overran or (given a filter) ran no test.
pub fn run_binaries(
    selected: &[(String, PathBuf, Vec<String>)],
    env: &TestEnv,
    limit: Duration,
    full: bool,
    timings: &mut Timings,
) -> anyhow::Result<()> {
    let history = repo_root().join("target/xtask-test/durations.json");
    let mut last: BTreeMap<String, f64> = std::fs::read_to_string(&history)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    // Longest first, so the slowest binary does not start last: by the
    // last run's times, or on a fresh clone by what is known to be slow.
    let mut queue: Vec<_> = selected.iter().collect();
    queue.sort_by(|a, b| {
        let took = |n: &str| {
            last.get(n).copied().unwrap_or_else(|| {
                SLOW.iter()
                    .position(|slow| *slow == n)
                    .map_or(0.0, |i| 1000.0 - i as f64)
            })
        };
        took(&b.0).total_cmp(&took(&a.0))
    });
    let mut queue = queue.into_iter();
    let mut running: Vec<Running> = Vec::new();
    let mut failed = Vec::new();
    loop {
        while running.len() < JOBS
            && let Some((name, exe, args)) = queue.next()
        {
            running.push(spawn(name, exe, args, env, full)?);
        }
        if running.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        let mut i = 0;
        while i < running.len() {
            let took = running[i].started.elapsed();
            let status = running[i].child.try_wait()?;
            let overdue = status.is_none() && took > limit;
            if status.is_none() && !overdue {
                i += 1;
                continue;
            }
            let mut job = running.swap_remove(i);
            kill_group(&mut job.child);
            let summary = summary(&job.log);
            let verdict = match status {
                // A name filter that matches nothing would pass vacuously.
                Some(s) if s.success() && job.filtered && summary.contains("ok. 0 passed") => {
                    "NO TESTS"
                }
                Some(s) if s.success() => "ok",
                Some(_) => "FAILED",
                None => "TIMED OUT",
            };
            println!(
                "xtask test: {:<14} {verdict:<9} {:>7.1} s  {summary}",
                job.name,
                took.as_secs_f64()
            );
            if verdict != "ok" {
                let log = std::fs::read_to_string(&job.log).unwrap_or_default();
                println!(
                    "----- {} ({}; the daemons' logs: {}) -----\n{log}",
                    job.name,
                    job.log.display(),
                    job.log.with_extension("").display()
                );
                if overdue {
                    println!(
                        "killed after {} s with everything it started",
                        limit.as_secs()
                    );
                }
                failed.push(job.name.clone());
            } else {
                last.insert(job.name.clone(), took.as_secs_f64());
            }
            timings
                .0
                .push((format!("test: {}", job.name), took, verdict));
        }
    }
    let _ = std::fs::write(&history, serde_json::to_string_pretty(&last)?);
    if !failed.is_empty() {
        bail!("test binaries failed: {}", failed.join(", "));
    }
    Ok(())
}

fn spawn(
    name: &str,
    exe: &Path,
    args: &[String],
    env: &TestEnv,
    full: bool,
) -> anyhow::Result<Running> {
    let log = env.logs.join(format!("{name}.log"));
    let file = std::fs::File::create(&log)?;
    let daemons = env.logs.join(name);
    let _ = std::fs::remove_dir_all(&daemons);
    let mut command = Command::new(exe);
    command
        .args(args)
        // Integration tests find the repository, fixtures and plugins from
        // their package directory, as under `cargo test`.
        .current_dir(repo_root().join("host"))
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        // Its own group: killing the group reaches every daemon, receiver
        // and nats-server the binary started, even if it never drops them.
        .process_group(0);
    for (key, value) in &env.vars {
        command.env(key, value);
    }
    if full {
        command.env(FULL_ENV, "1");
    }
    command.env(KEEP_LOGS_ENV, &daemons);
    let child = command
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    Ok(Running {
        name: name.to_string(),
        filtered: args.iter().any(|a| !a.starts_with('-')),
        child,
        started: Instant::now(),
        log,
    })
}

/// SIGKILL to the child's process group, then reap the child.
fn kill_group(child: &mut Child) {
    let group = child.id() as i32;
    // SAFETY: kill(2) with a negative pid signals that process group; the
    // group is the child's own (process_group(0)), never ours.
    unsafe {
        libc::kill(-group, libc::SIGKILL);
    }
    let _ = child.wait();
}

/// libtest's last `test result:` line, or the last line of the log.
fn summary(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .rev()
        .find(|l| l.starts_with("test result:"))
        .or_else(|| text.lines().rev().find(|l| !l.trim().is_empty()))
        .unwrap_or_default()
        .trim_start_matches("test result: ")
        .to_string()
}
