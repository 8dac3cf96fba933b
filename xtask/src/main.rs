//! Project tasks, run as `cargo xtask <task>`:
//!
//! - `plugins`: install the `wasm32-wasip2` target if needed and build every
//!   plugin, in every language (see `notifyhub_testkit::plugins`);
//! - `test [--quick | --full] [--only NAME]`: install the toolchains, build
//!   the plugins, then run every test (host, integration, SDK) under
//!   deadlines, with a timing table at the end (see `test.rs`);
//! - `demo`: build the daemon and the `webhook` plugin (nothing else), start
//!   the daemon with it and deliver a signed notification to a local receiver;
//! - `cluster`: start nats-server and two daemons sharing work through it,
//!   deliver 1,000 tasks through both and show each host's share;
//! - `bench`: build the plugins and run every benchmark; `bench --peers`:
//!   Apprise (from PyPI, in a virtualenv under `target/peers/`) against
//!   notifyhub's defaults, to the same local receiver, and the same trivial
//!   plugin under Extism (built from `host/benches/peers/extism/`) and under
//!   notifyhub's executor.

mod cluster;
mod demo;
mod test;

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::Context;
use notifyhub_testkit::repo_root;
pub(crate) use notifyhub_testkit::toolchains::run;

const USAGE: &str = "usage: cargo xtask <plugins|test [--help]|demo|cluster|bench [--help]>";

const BENCH_USAGE: &str = "usage: cargo xtask bench [--peers]

  (no flag)  build the plugins and run every benchmark (e2e, pool, reload,
             store, languages, scaling, startup, broker, backlog, soak);
             each prints its figures against the speed goals
  --peers    Apprise (from PyPI, into target/peers/venv) and Extism against
             notifyhub, with a plain keep-alive client as the ceiling

One benchmark alone: cargo bench -p notifyhub --bench NAME. Sizes grow with
the environment variables each benchmark's `//!` lists (docs/benchmarks.md).";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let task = args.first().cloned().unwrap_or_default();
    let result = match task.as_str() {
        "plugins" => plugins(),
        "test" => test::main(&args[1..]),
        "demo" => demo::run(),
        "cluster" => cluster::run(),
        "bench" => match args.get(1).map(String::as_str) {
            None => bench(),
            Some("--peers") if args.len() == 2 => peers(),
            Some("-h" | "--help") => {
                println!("{BENCH_USAGE}");
                return ExitCode::SUCCESS;
            }
            Some(_) => {
                eprintln!("{BENCH_USAGE}");
                return ExitCode::from(2);
            }
        },
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask {task}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Installs the wasm target when rustup manages the toolchain.
pub(crate) fn rust_target() -> anyhow::Result<()> {
    if Command::new("rustup").arg("--version").output().is_ok() {
        run(Command::new("rustup").args(["target", "add", "wasm32-wasip2"]))?;
    }
    Ok(())
}

/// Installs the wasm target and builds every plugin.
fn plugins() -> anyhow::Result<()> {
    rust_target()?;
    let dir = notifyhub_testkit::plugins::build()?;
    println!("plugins built in {}", dir.display());
    Ok(())
}

fn bench() -> anyhow::Result<()> {
    plugins()?;
    run(cargo().args([
        "bench",
        "-p",
        "notifyhub",
        "--bench",
        "e2e",
        "--bench",
        "pool",
        "--bench",
        "reload",
        "--bench",
        "store",
        "--bench",
        "languages",
        "--bench",
        "scaling",
        "--bench",
        "startup",
        "--bench",
        "broker",
        "--bench",
        "backlog",
        "--bench",
        "soak",
    ]))
}

/// The Apprise release the peer benchmark installs.
const APPRISE: &str = "apprise==2.3.0";

/// `bench --peers`: installs Apprise from PyPI into a virtualenv under
/// `target/peers/venv` (once), builds the Extism peer into
/// `target/peers/extism`, then runs the peer benchmark with both.
fn peers() -> anyhow::Result<()> {
    plugins()?;
    let (extism_runner, extism_plugin) = extism()?;
    let venv = repo_root().join("target/peers/venv");
    let python = venv.join("bin/python");
    let installed = Command::new(&python)
        .args(["-c", "import apprise"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed {
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
        run(Command::new(&python).args(["-m", "pip", "install", "--quiet", APPRISE]))?;
    }
    run(cargo()
        .args(["bench", "-p", "notifyhub", "--bench", "peers"])
        .env("NOTIFYHUB_APPRISE_PYTHON", &python)
        .env("NOTIFYHUB_EXTISM_RUNNER", &extism_runner)
        .env("NOTIFYHUB_EXTISM_PLUGIN", &extism_plugin))
}

/// Builds the Extism peer (its own workspace, with its own lock file and
/// Extism's wasmtime) and returns its runner and its plugin.
fn extism() -> anyhow::Result<(PathBuf, PathBuf)> {
    if Command::new("rustup").arg("--version").output().is_ok() {
        run(Command::new("rustup").args(["target", "add", "wasm32-unknown-unknown"]))?;
    }
    let workspace = repo_root().join("host/benches/peers/extism");
    let target = repo_root().join("target/peers/extism");
    let build = |args: &[&str]| {
        let mut command = cargo();
        command
            .current_dir(&workspace)
            .env("CARGO_TARGET_DIR", &target)
            .args(["build", "--release", "--locked"])
            .args(args);
        run(&mut command)
    };
    build(&["-p", "extism-noop", "--target", "wasm32-unknown-unknown"])?;
    build(&["-p", "extism-runner"])?;
    Ok((
        target.join("release/extism-runner"),
        target.join("wasm32-unknown-unknown/release/extism_noop.wasm"),
    ))
}

pub(crate) fn cargo() -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.current_dir(repo_root());
    command
}

pub(crate) fn host_triple() -> anyhow::Result<String> {
    let out = Command::new("rustc")
        .arg("-vV")
        .output()
        .context("running rustc -vV")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .context("rustc -vV printed no host triple")
}
