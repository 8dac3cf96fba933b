//! The on-disk cache of compiled plugin code, one file per plugin and tier.
//!
//! A plugin's code is kept as `DIR/<tier>-<engine>/<digest>.cwasm`: `tier`
//! names the compiler (`baseline` for Winch, `optimized` for Cranelift),
//! `engine` a hash of every engine setting the code depends on, `digest` the
//! SHA-256 of the plugin file. Knowing *which* tier is cached, without
//! compiling, is what lets the loader serve optimized code at once when it
//! has it and start from the baseline compiler only when it does not.
//!
//! Files are loaded with [`Component::deserialize_file`], which maps them
//! rather than copying them: the instances' memory images come straight
//! from the page cache (no memfd to write and seal per plugin), and every
//! daemon on the machine shares one copy.
//!
//! In a daemon, baseline code is the exception on the way in: it serves from
//! memory as soon as Winch has made it, and its copy is written on a thread
//! that runs only on CPU the compiles leave idle
//! ([`CodeCache::store_in_background`]). A cold start is bound by the CPU
//! its compiles take, and that code serves only until the optimizer's
//! replaces it.
//!
//! It must never change a file in place (a mapped file that changes under
//! a running instance changes its code): a file is written beside its place
//! and renamed over it. A file that does not load (a different wasmtime, a
//! truncated write from a crash) is a miss, and the next store replaces it.
//! Files nobody has loaded for the longest are removed once the directory
//! holds more than [`MAX_BYTES`], and so are temporary files a crash left
//! behind (older than [`STALE_WRITE`]: another daemon sharing the directory
//! may be writing one now).

use std::fs::{self, File};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, SystemTime};

use wasmtime::Engine;
use wasmtime::component::Component;

use crate::allocator::release_free_memory;

/// Past this, the least recently used files of a tier's directory go.
pub const MAX_BYTES: u64 = 1 << 30;
/// A temporary file this old was left by a writer that stopped.
pub const STALE_WRITE: Duration = Duration::from_secs(3600);

/// Compiled code on disk for one engine.
pub struct CodeCache {
    dir: PathBuf,
    hits: AtomicUsize,
    misses: AtomicUsize,
}

/// Distinguishes the temporary files of concurrent stores.
static WRITES: AtomicU64 = AtomicU64::new(0);

impl CodeCache {
    /// The cache for `engine`'s code, under `root`, named after its `tier`.
    pub fn new(root: &Path, tier: &str, engine: &Engine) -> CodeCache {
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        CodeCache {
            dir: root.join(format!("{tier}-{:016x}", hasher.finish())),
            hits: AtomicUsize::new(0),
            misses: AtomicUsize::new(0),
        }
    }

    fn path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}.cwasm"))
    }

    /// Whether code for `digest` is on disk (it may still not load).
    pub fn contains(&self, digest: &str) -> bool {
        self.path(digest).is_file()
    }

    /// The cached code of the plugin whose bytes hash to `digest`, if any:
    /// a lookup, counted. Blocking.
    pub fn load(&self, engine: &Engine, digest: &str) -> Option<Component> {
        let path = self.path(digest);
        let loaded = self.open(engine, digest);
        match loaded {
            Ok(component) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                // The last use, for pruning; a failure only ages the file.
                let _ = File::options()
                    .append(true)
                    .open(&path)
                    .and_then(|f| f.set_modified(SystemTime::now()));
                Some(component)
            }
            Err(error) => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                if path.exists() {
                    tracing::warn!(path = %path.display(), "cached code does not load; compiling again: {error:#}");
                }
                None
            }
        }
    }

    /// Maps the code of `digest`, uncounted (right after storing it).
    pub fn open(&self, engine: &Engine, digest: &str) -> wasmtime::Result<Component> {
        // SAFETY: files in this directory are written only by `store`, from
        // `Engine::precompile_component`, and replaced by rename, never
        // changed in place; wasmtime checks that the file is code for this
        // engine and version before it maps it.
        unsafe { Component::deserialize_file(engine, self.path(digest)) }
    }

    /// Keeps `code` (from `Engine::precompile_component`) as the code of
    /// `digest`, then prunes. Blocking.
    pub fn store(&self, digest: &str, code: &[u8]) -> io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        let path = self.path(digest);
        let temporary = self.dir.join(format!(
            ".{digest}.{}.{}",
            std::process::id(),
            WRITES.fetch_add(1, Ordering::Relaxed)
        ));
        let written = (|| {
            let mut file = File::create(&temporary)?;
            file.write_all(code)?;
            file.sync_all()?;
            fs::rename(&temporary, &path)
        })();
        if written.is_err() {
            let _ = fs::remove_file(&temporary);
        }
        written?;
        // The code is kept; a cache that cannot be trimmed only grows.
        if let Err(error) = self.prune(MAX_BYTES) {
            tracing::warn!(dir = %self.dir.display(), "cannot prune the code cache: {error}");
        }
        Ok(())
    }

    /// Keeps `component`'s code as the code of `digest`, on a thread of its
    /// own: the component serves at once, and its copy reaches the disk
    /// while other plugins compile. A copy that fails to be kept is logged;
    /// one the process exits before finishing is a temporary file a later
    /// prune removes. Either costs only a later compile.
    pub fn store_in_background(self: &Arc<Self>, digest: &str, component: &Component) {
        let (cache, digest, component) = (self.clone(), digest.to_owned(), component.clone());
        let spawned = thread::Builder::new()
            .name("notifyhub-cache".into())
            .spawn(move || {
                // At a cold start every core compiles plugins that do not
                // serve yet; this copy can wait for a core they leave idle.
                idle_priority();
                let kept = component
                    .serialize()
                    .map_err(io::Error::other)
                    .and_then(|code| cache.store(&digest, &code));
                if let Err(error) = kept {
                    tracing::warn!(dir = %cache.dir.display(), "cannot keep compiled code in the cache: {error}");
                }
                // The copy was as large as the code; this thread's freed
                // pages go back before it exits.
                release_free_memory();
            });
        if let Err(error) = spawned {
            tracing::warn!(
                "cannot keep compiled code in the cache: no thread to write it: {error}"
            );
        }
    }

    /// Removes stale temporary files, and the least recently used files
    /// until the directory holds at most `limit` bytes. Other daemons may
    /// share the directory: a file that goes while this looks (renamed into
    /// place, pruned by them) is simply not counted.
    fn prune(&self, limit: u64) -> io::Result<()> {
        let mut files = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let Some(metadata) = unless_gone(entry.metadata())? else {
                continue;
            };
            if !metadata.is_file() {
                continue;
            }
            let modified = metadata.modified()?;
            if entry.file_name().to_string_lossy().starts_with('.') {
                if modified.elapsed().is_ok_and(|age| age > STALE_WRITE) {
                    unless_gone(fs::remove_file(entry.path()))?;
                }
            } else if entry.path().extension().is_some_and(|e| e == "cwasm") {
                files.push((modified, metadata.len(), entry.path()));
            }
        }
        let mut total: u64 = files.iter().map(|(_, len, _)| len).sum();
        files.sort();
        for (_, len, path) in files {
            if total <= limit {
                break;
            }
            unless_gone(fs::remove_file(&path))?;
            total -= len;
        }
        Ok(())
    }

    /// Lookups that found code, and lookups that did not.
    pub fn lookups(&self) -> (usize, usize) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }
}

/// Runs the calling thread only on CPU no other thread wants (Linux's
/// `SCHED_IDLE`, which still gives it a sliver of a busy machine). Failing
/// leaves it at its priority.
fn idle_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param; pid 0 is the calling thread.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
        tracing::debug!(
            "cannot lower the cache writer's priority: {}",
            io::Error::last_os_error()
        );
    }
}

/// `result`, with a file that is no longer there as `None`.
fn unless_gone<T>(result: io::Result<T>) -> io::Result<Option<T>> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pruning_removes_the_least_recently_used_first_and_stale_writes() -> anyhow::Result<()> {
        let root = tempfile::tempdir()?;
        let cache = CodeCache::new(root.path(), "optimized", &Engine::default());
        fs::create_dir_all(&cache.dir)?;
        let epoch = SystemTime::UNIX_EPOCH;
        for (name, age) in [("old", 1), ("new", 3), ("middle", 2)] {
            let file = File::create(cache.path(name))?;
            file.set_len(10)?;
            file.set_modified(epoch + Duration::from_secs(age))?;
        }
        // A crash's leftover goes; a write under way stays.
        File::create(cache.dir.join(".left.1.0"))?.set_modified(epoch)?;
        File::create(cache.dir.join(".writing.2.0"))?;
        cache.prune(20)?;
        let mut left: Vec<_> = fs::read_dir(&cache.dir)?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        left.sort();
        assert_eq!(left, [".writing.2.0", "middle.cwasm", "new.cwasm"]);
        Ok(())
    }

    /// Another daemon sharing the directory may remove or rename a file
    /// between the listing and the look: not an error; anything else is.
    #[test]
    fn a_file_gone_meanwhile_is_not_an_error() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        assert!(unless_gone(fs::remove_file(dir.path().join("gone")))?.is_none());
        assert!(unless_gone(fs::remove_file(dir.path())).is_err());
        Ok(())
    }
}
