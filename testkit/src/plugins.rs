//! The first-party plugins, built for `wasm32-wasip2`.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, bail};

use crate::repo_root;

/// Plugins operators deploy.
pub const DEPLOYABLE: &[&str] = &[
    "webhook", "slack", "discord", "dingtalk", "feishu", "wecom", "telegram", "teams", "pushover",
    "email",
];
/// Plugins that exist for tests and benchmarks.
pub const TEST_ONLY: &[&str] = &["noop", "hostile", "heavy"];

/// Where `cargo xtask plugins` and [`build`] put the components.
pub fn out_dir() -> PathBuf {
    repo_root().join("plugins/target/wasm32-wasip2/release")
}

/// Builds every plugin (a no-op when they are up to date), once per process.
pub fn build() -> anyhow::Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| run_build().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

/// The path of one built plugin.
pub fn path(name: &str) -> anyhow::Result<PathBuf> {
    let path = build()?.join(format!("{name}.wasm"));
    if !path.is_file() {
        bail!("plugin {name} was not built at {}", path.display());
    }
    Ok(path)
}

fn run_build() -> anyhow::Result<PathBuf> {
    let root = repo_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(root.join("plugins"))
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(root.join("plugins/target"))
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .status()
        .context("running cargo to build the plugins")?;
    if !status.success() {
        bail!(
            "building the plugins failed ({status}); is the target installed? \
             `rustup target add wasm32-wasip2`"
        );
    }
    Ok(out_dir())
}
