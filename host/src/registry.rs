//! The registry: which plugin serves which platform, right now.
//!
//! The registry holds an immutable [`Catalog`] behind a lock that is only
//! taken to clone an `Arc`, so lookups on the task path never wait for a
//! load. Replacing the catalog is how plugins are added, swapped and
//! removed: a task that already holds an `Arc<LoadedPlugin>` finishes on that
//! version while new tasks see the new catalog.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::bindings::{PluginPre, wit};
use crate::executor::Executor;
use crate::loader;
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
    pub pre: PluginPre<HostState>,
    pub loaded_at: SystemTime,
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
                .map(|r| RateLimitRule { requests: r.requests, window_ms: r.window_ms })
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
#[derive(Default)]
pub struct Catalog {
    pub plugins: Vec<Arc<LoadedPlugin>>,
    pub failures: Vec<LoadFailure>,
    by_platform: HashMap<String, Arc<LoadedPlugin>>,
}

impl Catalog {
    pub fn lookup(&self, platform: &str) -> Option<&Arc<LoadedPlugin>> {
        self.by_platform.get(platform)
    }

    /// Served platforms, sorted.
    pub fn platforms(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.by_platform.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}

/// The live set of plugins.
pub struct Registry {
    catalog: RwLock<Arc<Catalog>>,
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
        let mut paths = Vec::new();
        let entries =
            std::fs::read_dir(dir).map_err(|error| RegistryError { dir: dir.into(), error })?;
        for entry in entries {
            let path = entry.map_err(|error| RegistryError { dir: dir.into(), error })?.path();
            if path.extension().is_some_and(|e| e == "wasm") && path.is_file() {
                paths.push(path);
            }
        }
        paths.sort();

        let mut catalog = Catalog::default();
        for path in paths {
            match loader::load(&path, executor, default_limits).await {
                Ok(plugin) => catalog.add(plugin),
                Err(error) => catalog.fail(path, error.to_string()),
            }
        }
        Ok(Registry { catalog: RwLock::new(Arc::new(catalog)) })
    }

    /// The plugin serving `platform`, if any.
    pub fn lookup(&self, platform: &str) -> Option<Arc<LoadedPlugin>> {
        self.catalog().lookup(platform).cloned()
    }

    /// The current catalog.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.read().expect("registry lock is never poisoned").clone()
    }
}

impl Catalog {
    fn add(&mut self, plugin: LoadedPlugin) {
        if let Some(taken) = plugin.platforms.iter().find(|p| self.by_platform.contains_key(*p)) {
            let owner = &self.by_platform[taken].path;
            let error = format!("platform `{taken}` is already served by {}", owner.display());
            return self.fail(plugin.path.clone(), error);
        }
        tracing::info!(
            plugin = %plugin.name,
            version = %plugin.version,
            digest = &plugin.digest[..12],
            platforms = ?plugin.platforms,
            "plugin loaded"
        );
        let plugin = Arc::new(plugin);
        for platform in &plugin.platforms {
            self.by_platform.insert(platform.clone(), plugin.clone());
        }
        self.plugins.push(plugin);
    }

    fn fail(&mut self, path: PathBuf, error: String) {
        tracing::error!(path = %path.display(), "plugin not loaded: {error}");
        self.failures.push(LoadFailure { path, error, at: SystemTime::now() });
    }
}
