//! The registry: which plugin version serves which platform, right now.
//!
//! The registry holds an immutable [`Catalog`] behind a lock that is only
//! taken to clone or replace an `Arc`, so lookups on the task path never wait
//! for a load. Every change (a plugin loaded, replaced, removed, a load that
//! failed) builds a new catalog and swaps it in atomically: a task that
//! already holds an `Arc<LoadedPlugin>` finishes on that version, and every
//! task dispatched after the swap sees the new one. A failed load never
//! replaces a working version; it is recorded beside it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::plugin::LoadedPlugin;

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
    /// Files whose first load is under way.
    loading: BTreeSet<PathBuf>,
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

    /// Files whose first load is under way.
    pub fn loading(&self) -> impl Iterator<Item = &PathBuf> {
        self.loading.iter()
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
                .get(p.as_str())
                .is_some_and(|owner| owner.path != plugin.path)
        }) {
            let owner = &self.by_platform[taken.as_str()].path;
            return Err(format!(
                "platform `{taken}` is already served by {}",
                owner.display()
            ));
        }
        self.failures.remove(&plugin.path);
        self.loading.remove(&plugin.path);
        self.plugins.insert(plugin.path.clone(), Arc::new(plugin));
        self.index();
        Ok(())
    }

    fn remove(&mut self, path: &Path) -> Option<Arc<LoadedPlugin>> {
        self.failures.remove(path);
        self.loading.remove(path);
        let removed = self.plugins.remove(path);
        self.index();
        removed
    }

    fn fail(&mut self, path: PathBuf, error: String) {
        self.loading.remove(&path);
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
                    .map(move |name| (name.to_string(), p.clone()))
            })
            .collect();
    }
}

/// The live set of plugins.
pub struct Registry {
    catalog: RwLock<Arc<Catalog>>,
    dir: PathBuf,
    compiles: AtomicU64,
    /// `true` once every file present at start-up has been tried.
    ready: watch::Sender<bool>,
    /// Bumped on every catalog change, for those who follow what is loaded.
    changes: watch::Sender<u64>,
    metrics: Option<Arc<Metrics>>,
}

impl Registry {
    /// An empty registry for the plugins in `dir`; the reload watcher
    /// fills it (see `reload`).
    pub fn new(dir: &Path, metrics: Option<Arc<Metrics>>) -> Registry {
        Registry {
            catalog: RwLock::new(Arc::new(Catalog::default())),
            dir: dir.to_path_buf(),
            compiles: AtomicU64::new(0),
            ready: watch::Sender::new(false),
            changes: watch::Sender::new(0),
            metrics,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the files present at start-up have all been tried. Until
    /// then a task for an unknown platform may be for a plugin still loading.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Waits until [`Registry::is_ready`].
    pub async fn wait_ready(&self) {
        let mut ready = self.ready.subscribe();
        let _ = ready.wait_for(|r| *r).await;
    }

    pub(crate) fn mark_ready(&self) {
        self.ready.send_replace(true);
    }

    /// A receiver that sees a change each time the catalog changes.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Compilations so far (loads from the cache included).
    pub fn compiles(&self) -> u64 {
        self.compiles.load(Ordering::Relaxed)
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
        self.changes.send_modify(|n| *n += 1);
        result
    }

    /// Shows `paths` as loading (their first load is under way).
    pub fn begin_loading(&self, paths: &[PathBuf]) {
        self.update(|c| c.loading.extend(paths.iter().cloned()));
    }

    /// Swaps in a new version (or a first one). A platform conflict is
    /// refused: it is recorded as a failure, changes nothing else, and is
    /// returned so the caller can say so.
    pub fn install(&self, plugin: LoadedPlugin) -> Result<(), String> {
        let (name, version, digest, platforms, path) = (
            plugin.name.clone(),
            plugin.version.clone(),
            plugin.digest[..12].to_string(),
            plugin.platforms.clone(),
            plugin.path.clone(),
        );
        match self.update(|c| c.install(plugin)) {
            Ok(()) => {
                tracing::info!(plugin = %name, %version, %digest, ?platforms, "plugin loaded");
                if let Some(m) = &self.metrics {
                    m.plugin_load(true);
                }
                Ok(())
            }
            Err(error) => {
                self.record_failure(&path, error.clone());
                Err(error)
            }
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
        if let Some(m) = &self.metrics {
            m.plugin_load(false);
        }
        self.update(|c| c.fail(path.to_path_buf(), error));
    }
}
