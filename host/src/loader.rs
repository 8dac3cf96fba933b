//! Loading one plugin file: read, hash, compile, link, describe, check.
//!
//! A file becomes a [`LoadedPlugin`] only when every step succeeds; any
//! failure is a [`LoadError`] that says which step failed and why, so the
//! registry can report it and keep serving the plugins that did load.
//!
//! Loading is split in two so that a manifest change does not recompile:
//! [`compile`] turns bytes into a linked [`Compiled`] component, and
//! [`configure`] applies a manifest to it and asks the plugin to describe
//! itself.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use crate::bindings::PluginPre;
use crate::executor::{CallFailure, Executor};
use crate::manifest::{Manifest, ManifestError};
use crate::registry::{LoadedPlugin, PluginInfo};
use crate::sandbox::allowlist::AllowListError;
use crate::sandbox::{AllowList, HostState, Limits, PluginPolicy};

/// Plugin files larger than this are refused before compiling.
pub const MAX_PLUGIN_BYTES: u64 = 128 << 20;

/// Distinguishes loads of the same bytes (a manifest change makes a new
/// plugin version with the same digest).
static GENERATION: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read the file: {0}")]
    Read(std::io::Error),
    #[error("the file is {size} bytes; plugins may be at most {MAX_PLUGIN_BYTES} bytes")]
    TooLarge { size: u64 },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("manifest: {0}")]
    AllowList(#[from] AllowListError),
    #[error("not a valid WebAssembly component: {0}")]
    Compile(String),
    #[error("does not fit the notifyhub:plugin@0.1 contract: {0}")]
    Contract(String),
    #[error("describe() failed: {0}")]
    Describe(CallFailure),
    #[error("describe() names no platforms")]
    NoPlatforms,
    #[error("required config key `{0}` is not set in the manifest")]
    MissingConfig(String),
}

/// The manifest that belongs to a plugin file: `NAME.toml` beside `NAME.wasm`.
pub fn manifest_path(wasm: &Path) -> PathBuf {
    wasm.with_extension("toml")
}

/// A file's bytes, digested.
pub struct PluginFile {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
    /// SHA-256 of the bytes, hex.
    pub digest: String,
}

impl PluginFile {
    pub fn read(path: &Path) -> Result<Self, LoadError> {
        let size = std::fs::metadata(path).map_err(LoadError::Read)?.len();
        if size > MAX_PLUGIN_BYTES {
            return Err(LoadError::TooLarge { size });
        }
        let bytes = std::fs::read(path).map_err(LoadError::Read)?;
        let digest = hex(&Sha256::digest(&bytes));
        Ok(PluginFile {
            path: path.to_path_buf(),
            bytes,
            digest,
        })
    }
}

/// A compiled component, linked against what the host grants.
#[derive(Clone)]
pub struct Compiled {
    pub path: PathBuf,
    pub digest: String,
    pub pre: PluginPre<HostState>,
}

/// Compiles (or takes from the cache) and links a plugin file, off the
/// async threads.
pub async fn compile(file: PluginFile, executor: &Executor) -> Result<Compiled, LoadError> {
    let sandbox = executor.sandbox().clone();
    let bytes = file.bytes;
    let component = tokio::task::spawn_blocking(move || sandbox.compile(&bytes))
        .await
        .expect("the compile task does not panic")
        .map_err(|e| LoadError::Compile(chain(&e)))?;
    let pre = executor.sandbox().prepare(&component).map_err(|e| {
        match crate::check::other_contract_version(&component, executor.sandbox().engine()) {
            Some(version) => LoadError::Contract(format!(
                "it was built against notifyhub:plugin@{version}; rebuild it with this host's \
                 wit/ (notifyhub:plugin@{}.x)",
                crate::check::CONTRACT_MAJOR_MINOR
            )),
            None => LoadError::Contract(chain(&e)),
        }
    })?;
    Ok(Compiled {
        path: file.path,
        digest: file.digest,
        pre,
    })
}

/// Applies `manifest` to a compiled plugin and checks what `describe()` says.
pub async fn configure(
    compiled: &Compiled,
    manifest: Manifest,
    executor: &Executor,
    default_limits: Limits,
) -> Result<LoadedPlugin, LoadError> {
    let config = manifest.resolve_config()?;
    let allow = AllowList::parse(&manifest.allowed_hosts)?;
    let limits = manifest.limits.unwrap_or(default_limits);
    let stem = compiled
        .path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("plugin")
        .to_string();
    let probe = Arc::new(PluginPolicy {
        name: stem.clone().into(),
        allow: Arc::new(AllowList::default()),
        limits,
        config: config.clone(),
    });
    let info = PluginInfo::from(
        executor
            .describe(&compiled.pre, probe)
            .await
            .map_err(LoadError::Describe)?,
    );
    if let Some(missing) = info
        .config_keys
        .iter()
        .find(|k| k.required && !config.contains(&k.name))
    {
        return Err(LoadError::MissingConfig(missing.name.clone()));
    }
    let platforms = manifest
        .platforms
        .clone()
        .unwrap_or_else(|| info.platforms.clone());
    if platforms.is_empty() {
        return Err(LoadError::NoPlatforms);
    }
    let policy = Arc::new(PluginPolicy {
        name: info.name.clone().into(),
        allow: Arc::new(allow),
        limits,
        config,
    });
    let generation = GENERATION.fetch_add(1, Ordering::Relaxed);
    Ok(LoadedPlugin {
        key: format!("{stem}@{}#{generation}", &compiled.digest[..16]),
        name: info.name.clone(),
        version: info.version.clone(),
        digest: compiled.digest.clone(),
        path: compiled.path.clone(),
        platforms,
        info,
        policy,
        manifest,
        compiled: compiled.clone(),
        loaded_at: SystemTime::now(),
    })
}

/// Loads the plugin at `path` with its manifest.
pub async fn load(
    path: &Path,
    executor: &Executor,
    default_limits: Limits,
) -> Result<LoadedPlugin, LoadError> {
    let file = PluginFile::read(path)?;
    let manifest = Manifest::load(&manifest_path(path))?;
    let compiled = compile(file, executor).await?;
    configure(&compiled, manifest, executor, default_limits).await
}

fn chain(error: &wasmtime::Error) -> String {
    error
        .chain()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
