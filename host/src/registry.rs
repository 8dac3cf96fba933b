//! The registry: which plugin version serves which platform, right now.
//!
//! The registry holds an immutable [`Catalog`] behind a lock that is only
//! taken to clone or replace an `Arc`, so lookups on the task path never wait
//! for a load. Every change (a plugin loaded, replaced, removed, a load that
//! failed) builds a new catalog and swaps it in atomically: a task that
//! already holds an `Arc<LoadedPlugin>` finishes on that version, and every
//! task dispatched after the swap sees the new one. A failed load never
//! replaces a working version; it is recorded beside it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::bindings::{PluginPre, wit};
use crate::executor::Executor;
use crate::loader::{self, Compiled};
use crate::manifest::Manifest;
use crate::sandbox::{HostState, Limits, PluginPolicy};

/// A compiled, validated plugin version.
pub struct LoadedPlugin {
    /// Identifies this loaded version: file stem and digest. Two files with
    /// the same bytes but different manifests are different plugins.
    pub key: String,
    pub name: String,
    /// The version `describe()` reported.
    pub version: String,
    /// SHA-256 of the file's bytes, hex.
    pub digest: String,
    pub path: PathBuf,
    /// Platforms routed to this plugin.
    pub platforms: Vec<String>,
    pub info: PluginInfo,
    pub policy: Arc<PluginPolicy>,
    /// The manifest this version was configured with.
    pub manifest: Manifest,
    /// The compiled component, reused when only the manifest changes.
    pub compiled: Compiled,
    pub loaded_at: SystemTime,
}

impl LoadedPlugin {
    pub fn pre(&self) -> &PluginPre<HostState> {
        &self.compiled.pre
    }
}

impl LoadedPlugin {
    /// `name@version (digest prefix)`, recorded with each task outcome.
    pub fn version_ref(&self) -> PluginRef {
        PluginRef {
            name: self.name.clone(),
            version: self.version.clone(),
            digest: self.digest[..12].to_string(),
        }
    }
}

/// Which plugin version handled a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginRef {
    pub name: String,
    pub version: String,
    pub digest: String,
}

/// What `describe()` said, in host types.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub platforms: Vec<String>,
    pub config_keys: Vec<ConfigKey>,
    pub rate_limits: Vec<RateLimitRule>,
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigKey {
    pub name: String,
    pub required: bool,
    pub secret: bool,
    pub description: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimitRule {
    pub requests: u32,
    pub window_ms: u64,
}

impl From<wit::PluginInfo> for PluginInfo {
    fn from(info: wit::PluginInfo) -> Self {
        PluginInfo {
            name: info.name,
            version: info.version,
            platforms: info.platforms,
            config_keys: info
                .config_keys
                .into_iter()
                .map(|k| ConfigKey {
                    name: k.name,
                    required: k.required,
                    secret: k.secret,
                    description: k.description,
                })
                .collect(),
            rate_limits: info
                .rate_limits
                .into_iter()
                .map(|r| RateLimitRule {
                    requests: r.requests,
                    window_ms: r.window_ms,
                })
                .collect(),
            description: info.description,
        }
    }
}

/// A file that could not be loaded, and why.
#[derive(Debug, Clone)]
pub struct LoadFailure {
    pub path: PathBuf,
    pub error: String,
    pub at: SystemTime,
}

/// An immutable view of the loaded plugins.
#[derive(Default, Clone)]
pub struct Catalog {
    plugins: BTreeMap<PathBuf, Arc<LoadedPlugin>>,
    failures: BTreeMap<PathBuf, LoadFailure>,
    by_platform: HashMap<String, Arc<LoadedPlugin>>,
}

impl Catalog {
    pub fn lookup(&self, platform: &str) -> Option<&Arc<LoadedPlugin>> {
        self.by_platform.get(platform)
    }

    /// The version loaded from `path`.
    pub fn loaded(&self, path: &Path) -> Option<&Arc<LoadedPlugin>> {
        self.plugins.get(path)
    }

    /// Loaded plugins, by file.
    pub fn plugins(&self) -> impl Iterator<Item = &Arc<LoadedPlugin>> {
        self.plugins.values()
    }

    /// Files whose last load failed (an older version may still be loaded).
    pub fn failures(&self) -> impl Iterator<Item = &LoadFailure> {
        self.failures.values()
    }

    /// Served platforms, sorted.
    pub fn platforms(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.by_platform.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Adds or replaces the version loaded from `plugin.path`. Refused if
    /// another file serves one of its platforms.
    fn install(&mut self, plugin: LoadedPlugin) -> Result<(), String> {
        if let Some(taken) = plugin.platforms.iter().find(|p| {
            self.by_platform
                .get(*p)
                .is_some_and(|owner| owner.path != plugin.path)
        }) {
            let owner = &self.by_platform[taken].path;
            return Err(format!(
                "platform `{taken}` is already served by {}",
                owner.display()
            ));
        }
        self.failures.remove(&plugin.path);
        self.plugins.insert(plugin.path.clone(), Arc::new(plugin));
        self.index();
        Ok(())
    }

    fn remove(&mut self, path: &Path) -> Option<Arc<LoadedPlugin>> {
        self.failures.remove(path);
        let removed = self.plugins.remove(path);
        self.index();
        removed
    }

    fn fail(&mut self, path: PathBuf, error: String) {
        self.failures.insert(
            path.clone(),
            LoadFailure {
                path,
                error,
                at: SystemTime::now(),
            },
        );
    }

    fn index(&mut self) {
        self.by_platform = self
            .plugins
            .values()
            .flat_map(|p| {
                p.platforms
                    .iter()
                    .map(move |name| (name.clone(), p.clone()))
            })
            .collect();
    }
}

/// The live set of plugins.
pub struct Registry {
    catalog: RwLock<Arc<Catalog>>,
    dir: PathBuf,
    default_limits: Limits,
    compiles: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot read the plugin directory {dir}: {error}")]
pub struct RegistryError {
    dir: PathBuf,
    error: std::io::Error,
}

impl Registry {
    /// Loads every `*.wasm` in `dir`. Files that fail are reported in the
    /// catalog's failures and logged; they do not stop the others.
    pub async fn load_dir(
        dir: &Path,
        executor: &Executor,
        default_limits: Limits,
    ) -> Result<Registry, RegistryError> {
        let registry = Registry {
            catalog: RwLock::new(Arc::new(Catalog::default())),
            dir: dir.to_path_buf(),
            default_limits,
            compiles: AtomicU64::new(0),
        };
        for path in registry.plugin_files()? {
            match registry.compile_and_configure(&path, executor).await {
                Ok(plugin) => registry.install(plugin),
                Err(error) => registry.record_failure(&path, error.to_string()),
            }
        }
        Ok(registry)
    }

    /// The `*.wasm` files in the plugin directory, sorted.
    pub fn plugin_files(&self) -> Result<Vec<PathBuf>, RegistryError> {
        let err = |error| RegistryError {
            dir: self.dir.clone(),
            error,
        };
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(err)? {
            let path = entry.map_err(err)?.path();
            if path.extension().is_some_and(|e| e == "wasm") && path.is_file() {
                paths.push(path);
            }
        }
        paths.sort();
        Ok(paths)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn default_limits(&self) -> Limits {
        self.default_limits
    }

    /// Compilations so far (loads from the cache included).
    pub fn compiles(&self) -> u64 {
        self.compiles.load(Ordering::Relaxed)
    }

    /// Reads, compiles and configures the plugin at `path`.
    pub async fn compile_and_configure(
        &self,
        path: &Path,
        executor: &Executor,
    ) -> Result<LoadedPlugin, loader::LoadError> {
        self.count_compile(loader::load(path, executor, self.default_limits))
            .await
    }

    /// Runs a compilation, counting it.
    pub async fn count_compile<T>(&self, compile: impl Future<Output = T>) -> T {
        self.compiles.fetch_add(1, Ordering::Relaxed);
        compile.await
    }

    /// The plugin serving `platform`, if any.
    pub fn lookup(&self, platform: &str) -> Option<Arc<LoadedPlugin>> {
        self.catalog().lookup(platform).cloned()
    }

    /// The current catalog.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog
            .read()
            .expect("registry lock is never poisoned")
            .clone()
    }

    fn update<R>(&self, change: impl FnOnce(&mut Catalog) -> R) -> R {
        let mut guard = self
            .catalog
            .write()
            .expect("registry lock is never poisoned");
        let mut next = Catalog::clone(&guard);
        let result = change(&mut next);
        *guard = Arc::new(next);
        result
    }

    /// Swaps in a new version (or a first one). A platform conflict is
    /// recorded as a failure and changes nothing else.
    pub fn install(&self, plugin: LoadedPlugin) {
        let (name, version, digest, platforms, path) = (
            plugin.name.clone(),
            plugin.version.clone(),
            plugin.digest[..12].to_string(),
            plugin.platforms.clone(),
            plugin.path.clone(),
        );
        match self.update(|c| c.install(plugin)) {
            Ok(()) => {
                tracing::info!(plugin = %name, %version, %digest, ?platforms, "plugin loaded")
            }
            Err(error) => self.record_failure(&path, error),
        }
    }

    /// Unloads the plugin from `path`; tasks already running on it finish.
    pub fn remove(&self, path: &Path) -> Option<Arc<LoadedPlugin>> {
        let removed = self.update(|c| c.remove(path));
        if let Some(p) = &removed {
            tracing::info!(plugin = %p.name, path = %path.display(), "plugin unloaded");
        }
        removed
    }

    /// Records that loading `path` failed; a loaded version keeps serving.
    pub fn record_failure(&self, path: &Path, error: String) {
        tracing::error!(path = %path.display(), "plugin not loaded: {error}");
        self.update(|c| c.fail(path.to_path_buf(), error));
    }
}
