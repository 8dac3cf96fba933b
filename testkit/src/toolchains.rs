//! Toolchains for plugins in languages other than Rust, installed on first
//! use under `plugins/target/toolchains` (ignored by git, reused by later
//! builds) from the registries this machine reaches:
//!
//! - componentize-py 0.25.1 from PyPI, in a virtualenv;
//! - componentize-js 0.23.0 from npm (run directly: `jco componentize`
//!   fails here);
//! - for C: Debian's clang-14, lld-14 and wasi-libc (installed by
//!   `.ci/run`, or by hand: see `docs/plugin-guide.md`); wit-bindgen's C
//!   generator, wit-component and WASI's preview-1 adapter (which turns
//!   wasi-libc's preview-1 imports into preview-2 ones) are crates linked
//!   into this one.
//!
//! Versions are pinned: a plugin toolchain upgrade is a deliberate change.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::repo_root;

pub const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";
pub const COMPONENTIZE_JS: &str = "@bytecodealliance/componentize-js@0.23.0";
/// wasi-libc's headers and libraries, from Debian's `wasi-libc` package.
const WASI_SYSROOT: &str = "/usr";

fn dir() -> PathBuf {
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

/// The `componentize-py` executable, installed into a virtualenv if needed.
pub fn componentize_py() -> anyhow::Result<PathBuf> {
    let venv = dir().join("python");
    let bin = venv.join("bin/componentize-py");
    if !bin.is_file() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))
            .context("creating a Python virtualenv (is python3-venv installed?)")?;
        run(Command::new(venv.join("bin/pip")).args(["install", "--quiet", COMPONENTIZE_PY]))?;
    }
    Ok(bin)
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

/// Builds a C plugin: bindings with wit-bindgen, a core module with clang
/// against wasi-libc, a component with wit-component and the adapter. The
/// wit-bindgen and wasm-tools work is done by their library crates, linked
/// into this build, because installing their command-line tools takes
/// minutes.
pub fn build_c(source: &Path, wit: &Path, out: &Path) -> anyhow::Result<()> {
    for tool in ["clang-14", "wasm-ld-14"] {
        if Command::new(tool).arg("--version").output().is_err() {
            bail!(
                "{tool} is missing: `apt-get install clang-14 lld-14 wasi-libc \
                 libclang-rt-14-dev-wasm32`"
            );
        }
    }
    let stem = source.file_stem().context("the C source has a file name")?;
    let work = dir().join("c-build").join(stem);
    std::fs::create_dir_all(&work)?;
    c_bindings(wit, &work)?;
    let core = work.join("core.wasm");
    run(Command::new("clang-14")
        .args([
            "--target=wasm32-wasi",
            "-mexec-model=reactor",
            "-O2",
            "-Wall",
            "-Werror",
        ])
        .arg(format!("--sysroot={WASI_SYSROOT}"))
        .arg("-fuse-ld=/usr/bin/wasm-ld-14")
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
        .arg(work.join("plugin.c"))
        .arg(work.join("plugin_component_type.o"))
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

/// `wit-bindgen c WIT --world notifyhub:plugin/plugin --out-dir WORK`.
fn c_bindings(wit: &Path, work: &Path) -> anyhow::Result<()> {
    let mut resolve = wit_parser::Resolve::default();
    let (package, _) = resolve.push_path(wit)?;
    let world = resolve.select_world(&[package], Some("notifyhub:plugin/plugin"))?;
    let mut files = wit_bindgen_core::Files::default();
    wit_bindgen_c::Opts::default()
        .build()
        .generate(&mut resolve, world, &mut files)?;
    for (name, contents) in files.iter() {
        std::fs::write(work.join(name), contents)?;
    }
    Ok(())
}
