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

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use wasmtime::component::Component;

use crate::executor::{CallFailure, Executor};
use crate::manifest::{Manifest, ManifestError};
use crate::plugin::{Compiled, InfoError, LoadedPlugin, PluginInfo, platform_list};
use crate::sandbox::allowlist::AllowListError;
use crate::sandbox::{AllowList, Limits, PluginPolicy, SmtpPolicy, Tier};
use crate::task::PlatformName;

/// The contract this host speaks.
pub const CONTRACT: &str = "notifyhub:plugin";
pub const CONTRACT_MAJOR_MINOR: &str = "0.1";

/// Plugin files larger than this are refused before compiling.
pub const MAX_PLUGIN_BYTES: u64 = 128 << 20;

/// Distinguishes loads of the same bytes (a manifest change makes a new
/// plugin version with the same digest).
static GENERATION: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read the file: {0}")]
    Read(std::io::Error),
    #[error("not a regular file ({0}): only regular files are plugins")]
    NotRegular(&'static str),
    #[error("the file is more than {MAX_PLUGIN_BYTES} bytes, the most a plugin may be")]
    TooLarge,
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
    #[error("describe() is refused: {0}")]
    Info(#[from] InfoError),
    #[error("describe() names no platforms")]
    NoPlatforms,
    #[error("the manifest's `platforms`: {0}")]
    ManifestPlatforms(InfoError),
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
    /// Reads a plugin file. Blocking: call it off the async threads.
    ///
    /// Only a regular file (or a link to one) is read, opened without
    /// blocking (a FIFO swapped in after the check cannot hang the open),
    /// checked again on the open handle, and read through a cap: a file
    /// that grows past [`MAX_PLUGIN_BYTES`] while it is read is refused, not
    /// read to its end.
    pub fn read(path: &Path) -> Result<Self, LoadError> {
        regular(&std::fs::metadata(path).map_err(LoadError::Read)?)?;
        let file = File::options()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(LoadError::Read)?;
        let metadata = file.metadata().map_err(LoadError::Read)?;
        regular(&metadata)?;
        if metadata.len() > MAX_PLUGIN_BYTES {
            return Err(LoadError::TooLarge);
        }
        let mut bytes = Vec::with_capacity(metadata.len() as usize);
        file.take(MAX_PLUGIN_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(LoadError::Read)?;
        if bytes.len() as u64 > MAX_PLUGIN_BYTES {
            return Err(LoadError::TooLarge);
        }
        let digest = hex(&Sha256::digest(&bytes));
        Ok(PluginFile {
            path: path.to_path_buf(),
            bytes,
            digest,
        })
    }

    /// [`PluginFile::read`] on the blocking pool.
    pub async fn read_async(path: &Path) -> Result<Self, LoadError> {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || Self::read(&path))
            .await
            .unwrap_or_else(|e| Err(LoadError::Read(std::io::Error::other(e))))
    }
}

fn regular(metadata: &std::fs::Metadata) -> Result<(), LoadError> {
    use std::os::unix::fs::FileTypeExt;
    let kind = metadata.file_type();
    if kind.is_file() {
        return Ok(());
    }
    Err(LoadError::NotRegular(if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "not a file"
    }))
}

/// The `*.wasm` regular files in `dir`, sorted. Blocking.
pub fn plugin_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "wasm")
            && std::fs::metadata(&path).is_ok_and(|m| m.is_file())
        {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths)
}

/// Compiles (or takes from the cache) and links a plugin file, off the
/// async threads: optimized code when the cache has it, else `wanted`'s
/// (see [`Sandbox::compile`](crate::sandbox::Sandbox::compile)).
pub async fn compile(
    file: PluginFile,
    executor: &Executor,
    wanted: Tier,
) -> Result<Compiled, LoadError> {
    let sandbox = executor.sandbox().clone();
    let (digest, bytes) = (file.digest.clone(), file.bytes);
    let started = std::time::Instant::now();
    let code = tokio::task::spawn_blocking(move || sandbox.compile(&digest, &bytes, wanted))
        .await
        .map_err(|e| LoadError::Compile(format!("the compiler failed: {e}")))?
        .map_err(|e| LoadError::Compile(chain(&e)))?;
    tracing::debug!(path = %file.path.display(), code = code.tier.as_str(), took = ?started.elapsed(), "compiled");
    let pre = executor.sandbox().prepare(&code).map_err(|e| {
        match other_contract_version(&code.component) {
            Some(version) => LoadError::Contract(format!(
                "it was built against notifyhub:plugin@{version}; rebuild it with this host's \
                 wit/ (notifyhub:plugin@{}.x)",
                CONTRACT_MAJOR_MINOR
            )),
            None => LoadError::Contract(chain(&e)),
        }
    })?;
    Ok(Compiled {
        path: file.path,
        digest: file.digest,
        pre,
        tier: code.tier,
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
    let smtp = manifest.resolve_smtp()?;
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
        smtp: SmtpPolicy::default(),
    });
    let info = PluginInfo::decode(
        executor
            .describe(&compiled.pre, probe)
            .await
            .map_err(LoadError::Describe)?,
    )?;
    if let Some(missing) = info
        .config_keys
        .iter()
        .find(|k| k.required && !config.contains(&k.name))
    {
        return Err(LoadError::MissingConfig(missing.name.clone()));
    }
    let platforms: Vec<PlatformName> = match &manifest.platforms {
        Some(names) => platform_list(names.clone()).map_err(LoadError::ManifestPlatforms)?,
        None => info.platforms.clone(),
    };
    if platforms.is_empty() {
        return Err(LoadError::NoPlatforms);
    }
    let policy = Arc::new(PluginPolicy {
        name: info.name.clone().into(),
        allow: Arc::new(allow),
        limits,
        config,
        smtp,
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

/// The contract version `component` was built against, when it exports a
/// handler of another version than this host's: the explanation for a
/// plugin that does not link.
pub fn other_contract_version(component: &Component) -> Option<String> {
    let ty = component.component_type();
    let version = ty.exports(component.engine()).find_map(|(name, _)| {
        name.strip_prefix(&format!("{CONTRACT}/handler@"))
            .map(str::to_string)
    })?;
    (!version.starts_with(&format!("{CONTRACT_MAJOR_MINOR}."))).then_some(version)
}

/// Loads the plugin at `path` with its manifest, compiled by `wanted`'s
/// compiler unless the cache has optimized code.
pub async fn load(
    path: &Path,
    executor: &Executor,
    default_limits: Limits,
    wanted: Tier,
) -> Result<LoadedPlugin, LoadError> {
    let file = PluginFile::read_async(path).await?;
    let manifest = Manifest::load_async(&manifest_path(path)).await?;
    let compiled = compile(file, executor, wanted).await?;
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
