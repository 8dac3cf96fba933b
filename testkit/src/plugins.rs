//! The first-party plugins, in every language, built into one directory.
//!
//! One command builds them all (`cargo xtask plugins`, which calls
//! [`build`]; tests call it too):
//!
//! - Rust: `plugins/*/` (a cargo workspace), for `wasm32-wasip2`;
//! - Python: `plugins/python/NAME/app.py`, with componentize-py;
//! - JavaScript: `plugins/js/NAME/NAME.js`, with componentize-js;
//! - C: `plugins/c/NAME/NAME.c`, with wit-bindgen, clang and wasm-tools.
//!
//! Toolchains that do not come with Rust are installed on first use under
//! `plugins/target/toolchains` (see [`crate::toolchains`]). A component is
//! rebuilt only when a source it depends on (its directory, the language's
//! helper, `wit/`) is newer than it, because a Python or JavaScript build
//! takes seconds.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::SystemTime;

use anyhow::{Context, bail};

use crate::{repo_root, toolchains};

/// Plugins operators deploy, whatever their language.
pub const DEPLOYABLE: &[&str] = &[
    "webhook",
    "slack",
    "discord",
    "dingtalk",
    "feishu",
    "wecom",
    "telegram",
    "teams",
    "pushover",
    "email",
    "smtp",
    "pagerduty",
    "matrix",
    "mastodon",
    "twilio",
    "line",
    "opsgenie",
    "zulip",
    "googlechat",
    "ntfy",
    "gotify",
    "mattermost",
    "bark",
    "rocketchat",
];
/// Plugins that exist for tests and benchmarks.
pub const TEST_ONLY: &[&str] = &["noop", "hostile", "heavy", "echo"];

/// The language a plugin is written in, and so how it is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    Rust,
    Python,
    JavaScript,
    C,
}

/// Plugins that are not in the Rust workspace.
pub const OTHER_LANGUAGES: &[(&str, Language)] = &[
    ("ntfy", Language::Python),
    ("gotify", Language::JavaScript),
    ("mattermost", Language::C),
    ("bark", Language::Python),
    ("rocketchat", Language::JavaScript),
    // Tests only: the C helper's requests of any size.
    ("echo", Language::C),
];

/// Where `cargo xtask plugins` and [`build`] put the components.
pub fn out_dir() -> PathBuf {
    repo_root().join("plugins/target/wasm32-wasip2/release")
}

/// Set by `cargo xtask test` for the test binaries it runs: it has built
/// the plugins already, one build for the whole run, so a test binary
/// neither starts a cargo build of its own nor races another for its lock.
pub const PREBUILT_ENV: &str = "NOTIFYHUB_PLUGINS_PREBUILT";

/// Builds every plugin (a no-op when they are up to date), once per process;
/// only finds them when [`PREBUILT_ENV`] is set.
pub fn build() -> anyhow::Result<PathBuf> {
    if std::env::var_os(PREBUILT_ENV).is_some() {
        return Ok(out_dir());
    }
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
        bail!(
            "plugin {name} was not built at {} (`cargo xtask test --quick` builds only \
             the Rust plugins)",
            path.display()
        );
    }
    Ok(path)
}

/// Builds every Rust plugin and nothing else (no other toolchain needed).
pub fn build_rust_plugins() -> anyhow::Result<PathBuf> {
    build_rust(&[])?;
    Ok(out_dir())
}

/// Builds the plugins in one other language (installing its toolchain).
pub fn build_language(language: Language) -> anyhow::Result<()> {
    let out = out_dir();
    for (name, _) in OTHER_LANGUAGES.iter().filter(|(_, l)| *l == language) {
        build_one(name, language, &out.join(format!("{name}.wasm")))
            .with_context(|| format!("building the {language:?} plugin {name}"))?;
    }
    Ok(())
}

/// Builds one Rust plugin and nothing else (what the demo needs: no
/// Python, JavaScript or C toolchain); returns its path.
pub fn build_rust_plugin(name: &str) -> anyhow::Result<PathBuf> {
    build_rust(&["-p", name])?;
    let path = out_dir().join(format!("{name}.wasm"));
    if !path.is_file() {
        bail!("plugin {name} was not built at {}", path.display());
    }
    Ok(path)
}

fn run_build() -> anyhow::Result<PathBuf> {
    build_rust(&[])?;
    for language in [Language::Python, Language::JavaScript, Language::C] {
        build_language(language)?;
    }
    Ok(out_dir())
}

fn build_rust(only: &[&str]) -> anyhow::Result<()> {
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
        .args(only)
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
    Ok(())
}

/// Builds one plugin written in another language, when it is out of date.
pub fn build_one(name: &str, language: Language, out: &Path) -> anyhow::Result<()> {
    let root = repo_root();
    let wit = root.join("wit");
    let (dir, helper) = match language {
        Language::Rust => bail!("Rust plugins are built by cargo"),
        Language::Python => (
            root.join("plugins/python").join(name),
            root.join("plugins/python/notifyhub_plugin.py"),
        ),
        Language::JavaScript => (
            root.join("plugins/js").join(name),
            root.join("plugins/js/notifyhub-plugin.js"),
        ),
        Language::C => (
            root.join("plugins/c").join(name),
            root.join("plugins/c/notifyhub_plugin.h"),
        ),
    };
    if is_fresh(out, &[&dir, &helper, &wit]) {
        return Ok(());
    }
    std::fs::create_dir_all(out.parent().expect("out has a parent"))?;
    match language {
        Language::Rust => unreachable!(),
        Language::Python => {
            let helpers = root.join("plugins/python");
            toolchains::run(
                Command::new(toolchains::componentize_py()?)
                    .arg("-d")
                    .arg(&wit)
                    .args([
                        "-w",
                        "notifyhub:plugin/fetcher",
                        "componentize",
                        "app",
                        "-p",
                    ])
                    .arg(&dir)
                    .arg("-p")
                    .arg(&helpers)
                    .arg("-o")
                    .arg(out),
            )
        }
        // componentize-js lets the module see only the files under its
        // working directory, so run it where the plugin and the shared
        // helper both are, whatever directory the build was started from.
        Language::JavaScript => toolchains::run(
            Command::new("node")
                .current_dir(root.join("plugins/js"))
                .arg(toolchains::componentize_js()?)
                .arg(dir.join(format!("{name}.js")))
                .arg("--wit")
                .arg(&wit)
                .args(["-n", "notifyhub:plugin/fetcher", "-o"])
                .arg(out),
        ),
        Language::C => toolchains::build_c(&dir.join(format!("{name}.c")), &wit, out),
    }
}

/// Whether `out` exists and is newer than every file under `sources`.
fn is_fresh(out: &Path, sources: &[&Path]) -> bool {
    let Ok(built) = out.metadata().and_then(|m| m.modified()) else {
        return false;
    };
    sources
        .iter()
        .all(|s| newest(s).is_some_and(|t| t <= built))
}

fn newest(path: &Path) -> Option<SystemTime> {
    let meta = path.metadata().ok()?;
    if !meta.is_dir() {
        return meta.modified().ok();
    }
    let mut latest = meta.modified().ok()?;
    for entry in std::fs::read_dir(path).ok()? {
        let entry = entry.ok()?;
        let file_name = entry.file_name();
        let file_name = file_name.to_string_lossy();
        if file_name.starts_with('.') || file_name == "__pycache__" {
            continue;
        }
        latest = latest.max(newest(&entry.path())?);
    }
    Some(latest)
}
