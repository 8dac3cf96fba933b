//! The reload watcher: picks up plugin files as operators change them.
//!
//! A `notify` watcher on the plugin directory reports every create, write,
//! rename and delete of `*.wasm` files and their `*.toml` manifests. Events
//! are debounced per plugin: a file is looked at only once it has been quiet
//! for [`DEBOUNCE`] (editors and build tools write in several steps), or
//! after [`MAX_DELAY`] if it never goes quiet. Then:
//!
//! - a `.wasm` whose bytes are new is compiled off the async threads (from
//!   the on-disk cache when it has been seen before), validated (a component
//!   of our world, it instantiates, `describe()` answers) and swapped into
//!   the [`Registry`] atomically;
//! - a manifest change alone reuses the compiled component: the new
//!   allowlist, config and limits apply from the next task, no recompiling;
//! - a deleted `.wasm` is unloaded: tasks running on it finish, new submits
//!   for its platforms get `unknown_platform`, and tasks still queued for it
//!   fail with `no_plugin`;
//! - a file that fails keeps the old version serving; the error is logged
//!   and shown by `plugins`. A file that keeps failing backs off (0.5 s,
//!   doubling to 30 s between attempts), and the same failing bytes are never
//!   compiled twice in a row.
//!
//! All changes to the registry go through this one task, so loads never
//! race each other; `reload` requests from the socket are queued here too.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::executor::Executor;
use crate::loader::{self, PluginFile};
use crate::manifest::Manifest;
use crate::registry::Registry;

/// How long a file must be quiet before it is loaded.
pub const DEBOUNCE: Duration = Duration::from_millis(30);
/// The longest a changing file waits before it is loaded anyway.
pub const MAX_DELAY: Duration = Duration::from_secs(1);
const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(10);

/// What a reload did to one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadResult {
    pub path: String,
    #[serde(flatten)]
    pub change: Change,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    /// A new version (or a first one) is serving.
    Loaded {
        name: String,
        version: String,
        digest: String,
    },
    /// Only the manifest changed; it applies from the next task.
    Reconfigured { name: String },
    /// Nothing changed.
    Unchanged,
    /// The file is gone and its plugin unloaded.
    Unloaded,
    /// The file could not be loaded; any older version keeps serving.
    Failed { error: String },
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot watch the plugin directory {dir}: {error}")]
    Watch { dir: PathBuf, error: notify::Error },
}

enum Request {
    /// Reload one plugin (by file stem) or, with `None`, the whole directory.
    Reload {
        name: Option<String>,
        reply: oneshot::Sender<Result<Vec<ReloadResult>, String>>,
    },
}

/// A handle to the running watcher.
pub struct Reloader {
    requests: mpsc::UnboundedSender<Request>,
    _watcher: notify::RecommendedWatcher,
}

impl Reloader {
    /// Starts watching the registry's directory.
    pub fn start(registry: Arc<Registry>, executor: Arc<Executor>) -> Result<Reloader, WatchError> {
        let dir = registry.dir().to_path_buf();
        let (events_tx, events) = mpsc::unbounded_channel::<PathBuf>();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
                Ok(event) => event.paths.into_iter().for_each(|p| {
                    let _ = events_tx.send(p);
                }),
                Err(e) => tracing::warn!("plugin directory watch error: {e}"),
            })
            .map_err(|error| WatchError::Watch {
                dir: dir.clone(),
                error,
            })?;
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(|error| WatchError::Watch {
                dir: dir.clone(),
                error,
            })?;
        let (requests, request_rx) = mpsc::unbounded_channel();
        let mut worker = Watch {
            registry,
            executor,
            pending: HashMap::new(),
            backoff: HashMap::new(),
        };
        // Files changed between the initial load and the watch starting are
        // looked at once more (unchanged files cost a read and a hash).
        let catalog = worker.registry.catalog();
        let known = worker.registry.plugin_files().unwrap_or_default();
        known
            .into_iter()
            .chain(catalog.plugins().map(|p| p.path.clone()))
            .for_each(|p| worker.note(p));
        tokio::spawn(worker.run(events, request_rx));
        tracing::info!(dir = %dir.display(), "watching the plugin directory for changes");
        Ok(Reloader {
            requests,
            _watcher: watcher,
        })
    }

    /// Reloads one plugin (`name` is its file stem) or the whole directory.
    pub async fn reload(&self, name: Option<String>) -> Result<Vec<ReloadResult>, String> {
        let (reply, rx) = oneshot::channel();
        self.requests
            .send(Request::Reload { name, reply })
            .map_err(|_| "the reload watcher has stopped".to_string())?;
        rx.await
            .map_err(|_| "the reload watcher has stopped".to_string())?
    }
}

/// A file's change waiting to settle.
struct Pending {
    first: Instant,
    last: Instant,
}

/// Repeated failures of one file.
struct Backoff {
    failures: u32,
    until: Instant,
    /// The bytes that failed last and why; the same bytes are not compiled again.
    digest: Option<(String, String)>,
}

struct Watch {
    registry: Arc<Registry>,
    executor: Arc<Executor>,
    /// Plugin files (`.wasm` paths) with unsettled changes.
    pending: HashMap<PathBuf, Pending>,
    backoff: HashMap<PathBuf, Backoff>,
}

impl Watch {
    async fn run(
        mut self,
        mut events: mpsc::UnboundedReceiver<PathBuf>,
        mut requests: mpsc::UnboundedReceiver<Request>,
    ) {
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                Some(path) = events.recv() => self.note(path),
                Some(request) = requests.recv() => self.handle(request).await,
                _ = poll.tick() => self.settle().await,
                else => return,
            }
        }
    }

    /// Records a change to a plugin file or its manifest.
    fn note(&mut self, path: PathBuf) {
        let wasm = match path.extension().and_then(|e| e.to_str()) {
            Some("wasm") => path,
            Some("toml") => path.with_extension("wasm"),
            _ => return,
        };
        let now = Instant::now();
        self.pending
            .entry(wasm)
            .and_modify(|p| p.last = now)
            .or_insert(Pending {
                first: now,
                last: now,
            });
    }

    /// Loads files that have been quiet long enough (and are not backing off).
    async fn settle(&mut self) {
        let now = Instant::now();
        let ready: Vec<PathBuf> = self
            .pending
            .iter()
            .filter(|(path, p)| {
                let settled = now.duration_since(p.last) >= DEBOUNCE
                    || now.duration_since(p.first) >= MAX_DELAY;
                settled && self.backoff.get(*path).is_none_or(|b| now >= b.until)
            })
            .map(|(path, _)| path.clone())
            .collect();
        for path in ready {
            self.pending.remove(&path);
            self.apply(&path).await;
        }
    }

    async fn handle(&mut self, request: Request) {
        let Request::Reload { name, reply } = request;
        let paths = match name {
            Some(name) => {
                let path = self.registry.dir().join(format!("{name}.wasm"));
                let known = path.exists() || self.registry.catalog().loaded(&path).is_some();
                if !known {
                    let _ = reply.send(Err(format!("no plugin file {}", path.display())));
                    return;
                }
                vec![path]
            }
            None => {
                let mut paths = match self.registry.plugin_files() {
                    Ok(paths) => paths,
                    Err(e) => {
                        let _ = reply.send(Err(e.to_string()));
                        return;
                    }
                };
                // Loaded plugins whose file is gone are unloaded too.
                let catalog = self.registry.catalog();
                paths.extend(
                    catalog
                        .plugins()
                        .map(|p| p.path.clone())
                        .filter(|p| !p.exists()),
                );
                paths
            }
        };
        let mut results = Vec::new();
        for path in paths {
            // A manual reload is a retry: forget the backoff.
            self.backoff.remove(&path);
            self.pending.remove(&path);
            results.push(self.apply(&path).await);
        }
        let _ = reply.send(Ok(results));
    }

    /// Brings the registry in line with the file at `path`.
    async fn apply(&mut self, path: &Path) -> ReloadResult {
        let change = self.change(path).await;
        match &change {
            Change::Failed { error } => self.failed(path, error),
            _ => {
                self.backoff.remove(path);
            }
        }
        ReloadResult {
            path: path.display().to_string(),
            change,
        }
    }

    async fn change(&mut self, path: &Path) -> Change {
        let current = self.registry.catalog().loaded(path).cloned();
        if !path.exists() {
            return match self.registry.remove(path) {
                Some(_) => Change::Unloaded,
                None => Change::Unchanged,
            };
        }
        let file = match PluginFile::read(path) {
            Ok(file) => file,
            Err(e) => {
                return Change::Failed {
                    error: e.to_string(),
                };
            }
        };
        let manifest = match Manifest::load(&loader::manifest_path(path)) {
            Ok(m) => m,
            Err(e) => {
                return Change::Failed {
                    error: e.to_string(),
                };
            }
        };
        let limits = self.registry.default_limits();

        if let Some(current) = current.filter(|c| c.digest == file.digest) {
            if current.manifest == manifest {
                return Change::Unchanged;
            }
            return match loader::configure(&current.compiled, manifest, &self.executor, limits)
                .await
            {
                Ok(plugin) => {
                    let name = plugin.name.clone();
                    self.registry.install(plugin);
                    tracing::info!(plugin = %name, "manifest change applied without recompiling");
                    Change::Reconfigured { name }
                }
                Err(e) => Change::Failed {
                    error: e.to_string(),
                },
            };
        }
        if let Some((_, error)) = self
            .backoff
            .get(path)
            .and_then(|b| b.digest.as_ref())
            .filter(|(d, _)| *d == file.digest)
        {
            return Change::Failed {
                error: error.clone(),
            };
        }

        let digest = file.digest.clone();
        let started = Instant::now();
        let compiled = match self
            .registry
            .count_compile(loader::compile(file, &self.executor))
            .await
        {
            Ok(compiled) => compiled,
            Err(e) => return self.failed_bytes(path, digest, e.to_string()),
        };
        match loader::configure(&compiled, manifest, &self.executor, limits).await {
            Ok(plugin) => {
                let change = Change::Loaded {
                    name: plugin.name.clone(),
                    version: plugin.version.clone(),
                    digest: plugin.digest.clone(),
                };
                tracing::info!(path = %path.display(), took = ?started.elapsed(), "new plugin version validated; swapping it in");
                self.registry.install(plugin);
                change
            }
            Err(e) => self.failed_bytes(path, digest, e.to_string()),
        }
    }

    /// The backoff record of `path`, created empty on its first failure.
    fn backoff_of(&mut self, path: &Path) -> &mut Backoff {
        self.backoff.entry(path.to_path_buf()).or_insert(Backoff {
            failures: 0,
            until: Instant::now(),
            digest: None,
        })
    }

    fn failed_bytes(&mut self, path: &Path, digest: String, error: String) -> Change {
        let entry = self.backoff_of(path);
        entry.digest = Some((digest, error.clone()));
        Change::Failed { error }
    }

    /// Records a failure and pushes the next attempt back.
    fn failed(&mut self, path: &Path, error: &str) {
        let entry = self.backoff_of(path);
        entry.failures += 1;
        let delay = BACKOFF_START
            .saturating_mul(1 << (entry.failures - 1).min(6))
            .min(BACKOFF_MAX);
        entry.until = Instant::now() + delay;
        let kept = self.registry.catalog().loaded(path).is_some();
        self.registry.record_failure(path, error.to_string());
        tracing::warn!(
            path = %path.display(),
            retry_in = ?delay,
            "reload failed{}",
            if kept { "; the previous version keeps serving" } else { "" }
        );
    }
}
