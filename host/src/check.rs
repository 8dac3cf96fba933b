//! `notifyhub check FILE.wasm`: is this file a plugin this host can run?
//!
//! Plugin authors meet the host first through this command, so every
//! finding says what is wrong in their terms and what to do about it. The
//! checks run in the order a file can fail them — is it WebAssembly, is it
//! a component, which contract does it export and in which version, what
//! does it import beyond what the host grants, does it link, does
//! `describe()` answer sensibly — and stop at the first step that makes the
//! rest meaningless. A [`Report`] holds the findings; the CLI prints it and
//! exits non-zero when any finding is an [`Severity::Error`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use wasmtime::component::Component;

use crate::bindings::PluginPre;
use crate::executor::Executor;
use crate::loader::{self, CONTRACT, CONTRACT_MAJOR_MINOR, PluginFile};
use crate::manifest::Manifest;
use crate::plugin::PluginInfo;
use crate::sandbox::{
    AllowList, HostState, PluginPolicy, Sandbox, SandboxSettings, SmtpPolicy, Tier,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
    Note,
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub message: String,
}

/// What `check` found out about one file.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    pub file: String,
    pub size_bytes: u64,
    /// `component`, `core module` or `not WebAssembly`.
    pub kind: String,
    /// The contract version the component exports, e.g. `0.1.0`.
    pub contract_version: Option<String>,
    pub imports: Vec<String>,
    pub exports: Vec<String>,
    pub info: Option<PluginInfo>,
    pub compile_ms: Option<f64>,
    pub describe_ms: Option<f64>,
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn ok(&self) -> bool {
        !self.findings.iter().any(|f| f.severity == Severity::Error)
    }

    fn error(&mut self, message: impl Into<String>) {
        self.push(Severity::Error, message);
    }

    fn push(&mut self, severity: Severity, message: impl Into<String>) {
        self.findings.push(Finding {
            severity,
            message: message.into(),
        });
    }
}

/// What the host does with an import, by interface name (without version).
fn grant(interface: &str) -> Result<Option<&'static str>, ()> {
    let package = interface.split('/').next().unwrap_or_default();
    Ok(match package {
        "notifyhub:plugin" | "notifyhub:http" => None,
        "notifyhub:smtp" => Some(
            "e-mail through a relay in allowed_hosts, TLS required unless [smtp] allow_plaintext",
        ),
        "wasi:http" | "wasi:io" | "wasi:clocks" | "wasi:random" => None,
        "wasi:cli" => match interface {
            "wasi:cli/stdout" | "wasi:cli/stderr" => None,
            _ => Some("linked, but empty: no arguments, environment or stdin"),
        },
        "wasi:filesystem" => Some("linked, but no directory is opened: file access fails"),
        "wasi:sockets" => Some("linked, but sockets are refused: use wasi:http for network access"),
        _ => return Err(()),
    })
}

/// Checks the file at `path` (with the manifest beside it, if any).
/// Checks the plugin at `path`. With a `cache_dir`, the compiled code is
/// cached there, where a daemon with the same data directory finds it.
pub async fn check(path: &Path, cache_dir: Option<PathBuf>) -> Report {
    let mut report = Report {
        file: path.display().to_string(),
        ..Report::default()
    };
    let file = match PluginFile::read_async(path).await {
        Ok(file) => file,
        Err(e) => {
            report.error(e.to_string());
            return report;
        }
    };
    report.size_bytes = file.bytes.len() as u64;
    report.kind = kind(&file.bytes).to_string();
    match report.kind.as_str() {
        "component" => {}
        "core module" => {
            report.error(
                "this is a core WebAssembly module, not a component: plugins are components. \
                 Rust: build for wasm32-wasip2; C: run `wasm-tools component new` with the \
                 WASI adapter; Python/JS: use componentize-py / componentize-js",
            );
            return report;
        }
        _ => {
            report.error("this is not a WebAssembly file (no `\\0asm` header)");
            return report;
        }
    }

    let settings = SandboxSettings {
        cache_dir,
        max_instances: 16,
        ..SandboxSettings::default()
    };
    let sandbox = match Sandbox::new(&settings) {
        Ok(sandbox) => Arc::new(sandbox),
        Err(e) => {
            report.error(format!("cannot start the sandbox: {e}"));
            return report;
        }
    };
    let started = Instant::now();
    let (digest, bytes) = (file.digest.clone(), file.bytes.clone());
    let compiler = sandbox.clone();
    // Optimized code, as the daemon settles on, so that a check fills the
    // cache the daemon then loads from.
    let compiled =
        tokio::task::spawn_blocking(move || compiler.compile(&digest, &bytes, Tier::Optimized));
    let code = match compiled.await {
        Ok(Ok(code)) => code,
        Ok(Err(e)) => {
            report.error(format!("the component does not compile: {e:#}"));
            return report;
        }
        Err(e) => {
            report.error(format!("compiling panicked: {e}"));
            return report;
        }
    };
    report.compile_ms = Some(ms(started.elapsed()));
    if !contract(&mut report, &code.component) {
        return report;
    }
    let pre = match sandbox.prepare(&code) {
        Ok(pre) => pre,
        Err(e) => {
            report.error(format!(
                "the component does not link against this host: {e:#}"
            ));
            return report;
        }
    };
    describe(&mut report, &file.path, &pre, sandbox).await;
    report
}

fn kind(bytes: &[u8]) -> &'static str {
    if !bytes.starts_with(b"\0asm") || bytes.len() < 8 {
        return "not WebAssembly";
    }
    // Bytes 4..8: version 1 and layer 0 for core modules; layer 1 for components.
    match bytes[6..8] {
        [0, 0] => "core module",
        [1, 0] => "component",
        _ => "not WebAssembly",
    }
}

/// Records imports and exports and checks them against the contract.
/// `false` when the component cannot be a plugin at all.
fn contract(report: &mut Report, component: &Component) -> bool {
    let engine = component.engine();
    let ty = component.component_type();
    report.imports = ty
        .imports(engine)
        .map(|(name, _)| name.to_string())
        .collect();
    report.exports = ty
        .exports(engine)
        .map(|(name, _)| name.to_string())
        .collect();

    let mut fatal = false;
    let mut notes: Vec<(&'static str, Vec<String>)> = Vec::new();
    for import in report.imports.clone() {
        let interface = import.split('@').next().unwrap_or_default();
        match grant(interface) {
            Ok(None) => {}
            Ok(Some(note)) => {
                let name = interface.to_string();
                match notes.iter_mut().find(|(n, _)| *n == note) {
                    Some((_, names)) => names.push(name),
                    None => notes.push((note, vec![name])),
                }
            }
            Err(()) => {
                fatal = true;
                report.error(format!(
                    "imports {import}, which this host does not provide. A plugin may import \
                     {CONTRACT}/host, notifyhub:http/client, notifyhub:smtp/client, wasi:http, \
                     wasi:clocks, wasi:random \
                     and wasi:io (WASI cli, filesystem and sockets are linked but grant \
                     nothing); remove the \
                     dependency that pulls this import in"
                ));
            }
        }
    }
    for (note, names) in notes {
        report.push(
            Severity::Note,
            format!("imports {}: {note}", names.join(", ")),
        );
    }
    let handler = report
        .exports
        .iter()
        .find_map(|e| e.strip_prefix(&format!("{CONTRACT}/handler@")))
        .map(str::to_string);
    match handler {
        None => {
            let exports = if report.exports.is_empty() {
                "nothing".to_string()
            } else {
                report.exports.join(", ")
            };
            report.error(format!(
                "the component does not export `{CONTRACT}/handler`: it targets another world \
                 (it exports {exports}). Build it for the world `{CONTRACT}/plugin` in wit/plugin.wit"
            ));
            return false;
        }
        Some(version) => {
            report.contract_version = Some(version.clone());
            if !version.starts_with(&format!("{CONTRACT_MAJOR_MINOR}.")) {
                report.error(format!(
                    "the component was built against {CONTRACT}@{version}; this host runs \
                     plugins built against {CONTRACT}@{CONTRACT_MAJOR_MINOR}.x. Rebuild it with \
                     this host's wit/ directory (see wit/README.md on versions)"
                ));
                return false;
            }
        }
    }
    !fatal
}

/// Instantiates the plugin and checks what `describe()` says.
async fn describe(
    report: &mut Report,
    path: &Path,
    pre: &PluginPre<HostState>,
    sandbox: Arc<Sandbox>,
) {
    let executor = Executor::new(sandbox);
    let manifest = match Manifest::load_async(&loader::manifest_path(path)).await {
        Ok(manifest) => manifest,
        Err(e) => {
            report.error(e.to_string());
            return;
        }
    };
    let config = match manifest.resolve_config() {
        Ok(config) => config,
        Err(e) => {
            report.error(format!(
                "{e} (secrets are read from the manifest beside the file)"
            ));
            return;
        }
    };
    let policy = Arc::new(PluginPolicy {
        name: "check".into(),
        allow: Arc::new(AllowList::default()),
        limits: manifest.limits.unwrap_or_default(),
        config: config.clone(),
        smtp: SmtpPolicy::default(),
    });
    let started = Instant::now();
    let info = match executor.describe(pre, policy).await {
        Ok(info) => info,
        Err(failure) => {
            report.error(format!("describe() failed: {failure}"));
            return;
        }
    };
    report.describe_ms = Some(ms(started.elapsed()));
    let info = match PluginInfo::decode(info) {
        Ok(info) => info,
        Err(e) => {
            report.error(format!("describe() is refused: {e}"));
            return;
        }
    };
    if info.platforms.is_empty() && manifest.platforms.is_none() {
        report.error("describe() lists no platforms: tasks could never be routed to it");
    }
    for key in info.config_keys.iter().filter(|k| k.required) {
        if !config.contains(&key.name) {
            report.push(
                Severity::Warning,
                format!(
                    "required config key `{}` is not set in {}: the daemon will refuse to load \
                     the plugin until it is",
                    key.name,
                    loader::manifest_path(path).display()
                ),
            );
        }
    }
    if manifest.allowed_hosts.is_empty() {
        report.push(
            Severity::Note,
            "the manifest allows no hosts: every outbound request will be denied until \
             `allowed_hosts` lists the platform's",
        );
    }
    report.info = Some(info);
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
