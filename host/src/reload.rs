//! The reload watcher: picks up plugin files as operators change them.
//!
//! At start the watcher loads every plugin file present, several at once
//! (bounded by the cores), while the socket already answers; the registry
//! shows them as loading until each is in or has failed, and is marked
//! ready when all have been tried.
//!
//! A `notify` watcher on the plugin directory reports every create, write,
//! rename and delete of `*.wasm` files and their `*.toml` manifests (reads
//! are not changes: the watcher's own reads must not wake it again). Events
//! are debounced per plugin: a file is looked at only once it has been quiet
//! for [`DEBOUNCE`] (editors and build tools write in several steps), or
//! after [`MAX_DELAY`] if it never goes quiet. Then:
//!
//! - a `.wasm` whose bytes are new is compiled off the async threads (from
//!   the on-disk cache when it has been seen before), validated (a component
//!   of our world, it instantiates, `describe()` answers) and swapped into
//!   the [`Registry`] atomically;
//! - a plugin with no optimized code in the cache serves from the baseline
//!   compiler's code at once, and its optimized code is made in the
//!   background (see `sandbox::tier`); when it is ready it comes back here
//!   as a change of the file, and is swapped in like a new version. At
//!   start, optimizing waits until every plugin serves, so the first loads
//!   have the whole machine;
//! - a manifest change alone reuses the compiled component: the new
//!   allowlist, config and limits apply from the next task, no recompiling;
//! - a deleted `.wasm` is unloaded: tasks running on it finish, new submits
//!   for its platforms get `unknown_platform`, and tasks still queued for it
//!   fail with `no_plugin`;
//! - a file that fails keeps the old version serving; the error is logged
//!   and shown by `plugins`. A file that could not be read backs off (0.5 s,
//!   doubling to 30 s between attempts). A file that was read and refused
//!   (it does not compile, describe() is out of bounds, it claims a platform
//!   another file serves) is not tried again until its bytes or manifest
//!   change or an operator asks with `reload`; one refused for a conflict
//!   also when another plugin is loaded, unloaded or replaced (the conflict
//!   may be gone).
//!
//! All changes to the registry go through this one task, so loads never
//! race each other; `reload` requests from the socket are queued here too.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, oneshot};

use crate::executor::Executor;
use crate::loader::{self, LoadError, PluginFile};
use crate::manifest::Manifest;
use crate::plugin::{LoadedPlugin, PluginName};
use crate::protocol::{Change, ReloadResult};
use crate::registry::Registry;
use crate::sandbox::{Limits, Tier};

mod order;

/// How long a file must be quiet before it is loaded.
pub const DEBOUNCE: Duration = Duration::from_millis(30);
/// The longest a changing file waits before it is loaded anyway.
pub const MAX_DELAY: Duration = Duration::from_secs(1);
const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(10);

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot watch the plugin directory {dir}: {error}")]
    Watch { dir: PathBuf, error: notify::Error },
}

enum Request {
    /// Reload one plugin (by file stem) or, with `None`, the whole directory.
    Reload {
        name: Option<PluginName>,
        reply: oneshot::Sender<Result<Vec<ReloadResult>, String>>,
    },
}

/// Loads every plugin file in the registry's directory, as `serve` does at
/// start, and returns when all have been tried; without a watcher (for
/// embedding and benchmarks).
///
/// Plugins without cached code are compiled by Cranelift (as `check` does):
/// with no watcher to swap optimized code in later, baseline code would
/// serve for good.
pub async fn load_all(registry: Arc<Registry>, executor: Arc<Executor>, default_limits: Limits) {
    let paths = list_loading(&registry).await;
    Watch::new(registry, executor, default_limits, None)
        .initial_load(paths)
        .await
}

/// The plugin files present now, shown as loading in the registry before
/// anyone can ask: `status` never says "not ready" with nothing loading.
async fn list_loading(registry: &Registry) -> Vec<PathBuf> {
    let dir = registry.dir().to_path_buf();
    let listed = tokio::task::spawn_blocking(move || loader::plugin_files(&dir));
    let paths = match listed.await {
        Ok(Ok(paths)) => paths,
        Ok(Err(e)) => {
            tracing::error!(dir = %registry.dir().display(), "cannot list the plugin directory: {e}");
            Vec::new()
        }
        Err(e) => {
            tracing::error!("listing the plugin directory failed: {e}");
            Vec::new()
        }
    };
    registry.begin_loading(&paths);
    paths
}

/// What loading a file at start gave: the digest and manifest read (to
/// remember a refusal by) and the plugin or why not; `Err` when the file
/// or its manifest could not be read.
type FirstLoad = Result<(String, Manifest, Result<LoadedPlugin, LoadError>), String>;

/// Reads, compiles and configures the file at `path`, at start.
async fn first_load(
    path: &Path,
    executor: &Executor,
    registry: &Registry,
    limits: Limits,
    wanted: Tier,
) -> FirstLoad {
    let (file, manifest) = read(path).await?;
    let digest = file.digest.clone();
    let result = build(registry, executor, file, manifest.clone(), limits, wanted).await;
    Ok((digest, manifest, result))
}

/// Compiles `file` (optimized code from the cache when it is there, else
/// `wanted`'s) and configures it with `manifest`; counted as a compile.
async fn build(
    registry: &Registry,
    executor: &Executor,
    file: PluginFile,
    manifest: Manifest,
    limits: Limits,
    wanted: Tier,
) -> Result<LoadedPlugin, LoadError> {
    registry
        .count_compile(async {
            let compiled = loader::compile(file, executor, wanted).await?;
            loader::configure(&compiled, manifest, executor, limits).await
        })
        .await
}

/// The plugin file at `path` and its manifest, or why either could not be
/// read.
async fn read(path: &Path) -> Result<(PluginFile, Manifest), String> {
    let file = PluginFile::read_async(path)
        .await
        .map_err(|e| e.to_string())?;
    let manifest = Manifest::load_async(&loader::manifest_path(path))
        .await
        .map_err(|e| e.to_string())?;
    Ok((file, manifest))
}

/// A handle to the running watcher.
pub struct Reloader {
    requests: mpsc::UnboundedSender<Request>,
    _watcher: notify::RecommendedWatcher,
}

impl Reloader {
    /// Starts watching the registry's directory, lists the plugins in it
    /// (shown as loading from then on), then loads them in the background.
    pub async fn start(
        registry: Arc<Registry>,
        executor: Arc<Executor>,
        default_limits: Limits,
    ) -> Result<Reloader, WatchError> {
        let dir = registry.dir().to_path_buf();
        let (events_tx, events) = mpsc::unbounded_channel::<PathBuf>();
        let optimized = events_tx.clone();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
                Ok(event) if is_change(&event.kind) => event.paths.into_iter().for_each(|p| {
                    let _ = events_tx.send(p);
                }),
                Ok(_) => {}
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
        let paths = list_loading(&registry).await;
        let worker = Watch::new(registry, executor, default_limits, Some(optimized));
        tokio::spawn(async move {
            let mut worker = worker;
            worker.initial_load(paths).await;
            worker.run(events, request_rx).await
        });
        tracing::info!(dir = %dir.display(), "watching the plugin directory for changes");
        Ok(Reloader {
            requests,
            _watcher: watcher,
        })
    }

    /// Reloads one plugin (`name` is its file stem) or the whole directory.
    pub async fn reload(&self, name: Option<PluginName>) -> Result<Vec<ReloadResult>, String> {
        let (reply, rx) = oneshot::channel();
        self.requests
            .send(Request::Reload { name, reply })
            .map_err(|_| "the reload watcher has stopped".to_string())?;
        rx.await
            .map_err(|_| "the reload watcher has stopped".to_string())?
    }
}

/// Whether a watch event changes a file (a read or an open does not).
fn is_change(kind: &notify::EventKind) -> bool {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode};
    match kind {
        EventKind::Create(_) | EventKind::Remove(_) | EventKind::Modify(_) => !matches!(
            kind,
            EventKind::Modify(notify::event::ModifyKind::Metadata(_))
        ),
        // Written and closed: the end of a write.
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        _ => false,
    }
}

/// A file that was read and refused, with what it was read as: the same
/// bytes and manifest are not tried again.
struct Refusal {
    digest: String,
    manifest: Manifest,
    error: String,
    cause: Cause,
}

/// Why a file was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    /// Another file serves a platform it claims: the only refusal another
    /// file's change can lift.
    Conflict,
    /// The file itself: it does not compile, its manifest lacks a key, its
    /// describe() is out of bounds.
    Itself,
}

/// A file's change waiting to settle.
struct Pending {
    first: Instant,
    last: Instant,
}

/// Repeated read failures of one file.
struct Backoff {
    failures: u32,
    until: Instant,
}

struct Watch {
    registry: Arc<Registry>,
    executor: Arc<Executor>,
    default_limits: Limits,
    /// Where a plugin whose optimized code is ready is reported, as a
    /// change of its file; `None`: load optimized code only.
    optimized: Option<mpsc::UnboundedSender<PathBuf>>,
    /// Plugin files (`.wasm` paths) with unsettled changes.
    pending: HashMap<PathBuf, Pending>,
    backoff: HashMap<PathBuf, Backoff>,
    refused: HashMap<PathBuf, Refusal>,
}

impl Watch {
    fn new(
        registry: Arc<Registry>,
        executor: Arc<Executor>,
        default_limits: Limits,
        optimized: Option<mpsc::UnboundedSender<PathBuf>>,
    ) -> Self {
        Watch {
            registry,
            executor,
            default_limits,
            optimized,
            pending: HashMap::new(),
            backoff: HashMap::new(),
            refused: HashMap::new(),
        }
    }

    /// Loads every plugin file present at start, in the order given, as many
    /// at once as there are cores, each installed as soon as it is ready;
    /// then marks the registry ready.
    async fn initial_load(&mut self, paths: Vec<PathBuf>) {
        let started = Instant::now();
        // In the order they load in ([`order`]); reading the files' section
        // headers is blocking, and done after the socket answers.
        let ordered = paths.clone();
        let queue = tokio::task::spawn_blocking(move || order::at_start(ordered))
            .await
            .unwrap_or_else(|e| {
                tracing::error!("ordering the plugin files failed, loading them as listed: {e}");
                order::as_listed(paths)
            });
        let parallel = std::thread::available_parallelism().map_or(2, |n| n.get());
        // Each loader takes the next file the queue hands out, so files load
        // in its order (tasks spawned one per file start in no set order).
        let queue = Arc::new(queue);
        let (done, mut results) = mpsc::unbounded_channel();
        let wanted = self.wanted();
        // The second plugin of a language reuses the first's functions, and
        // each compile the memory the ones before it freed.
        let reuse = self
            .executor
            .sandbox()
            .hold_baseline_functions(queue.shared_kinds());
        for _ in 0..parallel {
            let (executor, limits, registry) = (
                self.executor.clone(),
                self.default_limits,
                self.registry.clone(),
            );
            let (queue, done) = (queue.clone(), done.clone());
            tokio::spawn(async move {
                while let Some((path, loading)) = queue.next().await {
                    let loaded = first_load(&path, &executor, &registry, limits, wanted).await;
                    drop(loading);
                    if done.send((path, loaded)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(done);
        let mut loaded = 0;
        // Optimized code is asked for once every plugin serves: until then
        // the optimizer's compiles would only take CPU from the loads.
        let mut to_optimize = Vec::new();
        while let Some((path, result)) = results.recv().await {
            match result {
                Ok((digest, manifest, Ok(plugin))) => {
                    let tier = plugin.compiled.tier;
                    match self.registry.install(plugin) {
                        Ok(()) => {
                            loaded += 1;
                            to_optimize.push((path, tier, digest));
                        }
                        Err(error) => self.refuse(&path, digest, manifest, error, Cause::Conflict),
                    }
                }
                Ok((digest, manifest, Err(e))) => {
                    self.registry.record_failure(&path, e.to_string());
                    self.refuse(&path, digest, manifest, e.to_string(), Cause::Itself);
                }
                Err(error) => {
                    self.registry.record_failure(&path, error.clone());
                    self.back_off(&path);
                    self.note(path);
                }
            }
        }
        let catalog = self.registry.catalog();
        tracing::info!(
            loaded,
            failed = catalog.failures().count(),
            platforms = ?catalog.platforms(),
            took = ?started.elapsed(),
            "plugins loaded"
        );
        self.registry.mark_ready();
        // Handing back what the loads freed takes a moment: not on this task.
        tokio::task::spawn_blocking(move || drop(reuse));
        for (path, tier, digest) in to_optimize {
            self.optimize_later(&path, tier, digest);
        }
    }

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
                let path = name.file_in(self.registry.dir());
                let known = tokio::fs::symlink_metadata(&path).await.is_ok()
                    || self.registry.catalog().loaded(&path).is_some();
                if !known {
                    let _ = reply.send(Err(format!("no plugin file {}", path.display())));
                    return;
                }
                vec![path]
            }
            None => {
                let dir = self.registry.dir().to_path_buf();
                let listed = tokio::task::spawn_blocking(move || loader::plugin_files(&dir)).await;
                let mut paths = match listed {
                    Ok(Ok(paths)) => paths,
                    Ok(Err(e)) => {
                        let _ = reply.send(Err(format!(
                            "cannot read the plugin directory {}: {e}",
                            self.registry.dir().display()
                        )));
                        return;
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.to_string()));
                        return;
                    }
                };
                // Loaded plugins whose file is gone are unloaded too.
                let catalog = self.registry.catalog();
                for loaded in catalog.plugins() {
                    if tokio::fs::symlink_metadata(&loaded.path).await.is_err() {
                        paths.push(loaded.path.clone());
                    }
                }
                paths
            }
        };
        let mut results = Vec::new();
        for path in paths {
            // A manual reload is a retry: forget the backoff and the refusal.
            self.backoff.remove(&path);
            self.refused.remove(&path);
            self.pending.remove(&path);
            results.push(self.apply(&path).await);
        }
        let _ = reply.send(Ok(results));
    }

    /// Brings the registry in line with the file at `path`.
    async fn apply(&mut self, path: &Path) -> ReloadResult {
        let change = self.change(path).await;
        if matches!(
            change,
            Change::Loaded { .. } | Change::Reconfigured { .. } | Change::Unloaded
        ) {
            // The platforms served changed: a file refused for a conflict
            // may fit now. Each gets one more try. Other refusals stand: a
            // file refused for a missing config key was compiled again, at
            // start, each time another plugin's optimized code came in.
            let (conflicts, others) = std::mem::take(&mut self.refused)
                .into_iter()
                .partition(|(_, refusal)| refusal.cause == Cause::Conflict);
            self.refused = others;
            for (refused, _) in conflicts {
                if refused.as_path() != path {
                    self.note(refused);
                }
            }
        }
        ReloadResult {
            path: path.display().to_string(),
            change,
        }
    }

    async fn change(&mut self, path: &Path) -> Change {
        let current = self.registry.catalog().loaded(path).cloned();
        let was_baseline = current
            .as_ref()
            .is_some_and(|c| c.compiled.tier == Tier::Baseline);
        if tokio::fs::symlink_metadata(path).await.is_err() {
            self.refused.remove(path);
            self.backoff.remove(path);
            return match self.registry.remove(path) {
                Some(_) => Change::Unloaded,
                None => Change::Unchanged,
            };
        }
        let (file, manifest) = match read(path).await {
            Ok(read) => read,
            Err(error) => {
                self.registry.record_failure(path, error.clone());
                self.back_off(path);
                return Change::Failed { error };
            }
        };
        self.backoff.remove(path);
        if let Some(refusal) = self
            .refused
            .get(path)
            .filter(|r| r.digest == file.digest && r.manifest == manifest)
        {
            return Change::Failed {
                error: refusal.error.clone(),
            };
        }
        let limits = self.default_limits;
        let digest = file.digest.clone();
        let started = Instant::now();
        let sandbox = self.executor.sandbox();
        let configured = match current.filter(|c| c.digest == file.digest) {
            Some(current) if current.manifest != manifest => {
                loader::configure(&current.compiled, manifest.clone(), &self.executor, limits)
                    .await
                    .map(|plugin| (plugin, true))
            }
            // Baseline code stays until the optimized code is there to
            // replace it.
            Some(current)
                if current.compiled.tier == Tier::Optimized
                    || !sandbox.has_optimized(&file.digest) =>
            {
                return Change::Unchanged;
            }
            // The same bytes, whose optimized code is ready; or new bytes.
            same => {
                let wanted = match same {
                    Some(_) => Tier::Optimized,
                    None => self.wanted(),
                };
                let (registry, executor) = (&self.registry, &self.executor);
                build(registry, executor, file, manifest.clone(), limits, wanted)
                    .await
                    .map(|plugin| (plugin, false))
            }
        };
        let (plugin, reconfigured) = match configured {
            Ok(configured) => configured,
            Err(e) => {
                let error = e.to_string();
                self.registry.record_failure(path, error.clone());
                self.refuse(path, digest, manifest, error.clone(), Cause::Itself);
                return Change::Failed { error };
            }
        };
        let change = if reconfigured {
            Change::Reconfigured {
                name: plugin.name.clone(),
            }
        } else {
            Change::Loaded {
                name: plugin.name.clone(),
                version: plugin.version.clone(),
                digest: plugin.digest.clone(),
            }
        };
        let tier = plugin.compiled.tier;
        match self.registry.install(plugin) {
            Ok(()) => {
                if reconfigured {
                    tracing::info!(path = %path.display(), "manifest change applied without recompiling");
                } else if was_baseline && tier == Tier::Optimized {
                    tracing::info!(path = %path.display(), "optimized code swapped in");
                } else {
                    tracing::info!(path = %path.display(), took = ?started.elapsed(), code = tier.as_str(), "new plugin version validated and swapped in");
                }
                self.refused.remove(path);
                self.optimize_later(path, tier, digest);
                change
            }
            Err(error) => {
                self.refuse(path, digest, manifest, error.clone(), Cause::Conflict);
                Change::Failed { error }
            }
        }
    }

    /// The code to compile when the cache has no optimized code: baseline
    /// when there is a way to swap optimized code in later.
    fn wanted(&self) -> Tier {
        match self.optimized {
            Some(_) => Tier::Baseline,
            None => Tier::Optimized,
        }
    }

    /// For a plugin installed with baseline code: has its optimized code
    /// made in the background, then reports the file as changed, which
    /// swaps that code in. The file is read again: if its bytes are no
    /// longer `digest`'s, its own change event loads the new ones.
    fn optimize_later(&self, path: &Path, tier: Tier, digest: String) {
        let Some(events) = self.optimized.clone().filter(|_| tier == Tier::Baseline) else {
            return;
        };
        let sandbox = self.executor.sandbox().clone();
        let path = path.to_path_buf();
        tokio::spawn(async move {
            let file = match PluginFile::read_async(&path).await {
                Ok(file) if file.digest == digest => file,
                _ => return,
            };
            match sandbox.optimize(digest, file.bytes.into()).await {
                Ok(()) => {
                    let _ = events.send(path);
                }
                Err(error) => tracing::warn!(
                    path = %path.display(),
                    "no optimized code; the plugin keeps serving baseline code: {error}"
                ),
            }
        });
    }

    /// Remembers that these bytes and this manifest were refused.
    fn refuse(
        &mut self,
        path: &Path,
        digest: String,
        manifest: Manifest,
        error: String,
        cause: Cause,
    ) {
        let kept = self.registry.catalog().loaded(path).is_some();
        tracing::warn!(
            path = %path.display(),
            "plugin refused{}; not tried again until the file or its manifest changes",
            if kept { " (the previous version keeps serving)" } else { "" }
        );
        self.refused.insert(
            path.to_path_buf(),
            Refusal {
                digest,
                manifest,
                error,
                cause,
            },
        );
    }

    /// Pushes the next attempt at a file that could not be read back.
    fn back_off(&mut self, path: &Path) {
        let entry = self.backoff.entry(path.to_path_buf()).or_insert(Backoff {
            failures: 0,
            until: Instant::now(),
        });
        entry.failures += 1;
        let delay = BACKOFF_START
            .saturating_mul(1 << (entry.failures - 1).min(6))
            .min(BACKOFF_MAX);
        entry.until = Instant::now() + delay;
        tracing::warn!(path = %path.display(), retry_in = ?delay, "plugin file could not be read");
        self.note(path.to_path_buf());
    }
}
