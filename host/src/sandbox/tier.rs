//! Tiered compilation: serve from the baseline compiler's code at once,
//! swap in optimized code when it is ready.
//!
//! Cranelift's code runs fastest but takes seconds to make for the large
//! components of Python and JavaScript plugins (5–6 s each on 2 cores),
//! which left a daemon with an empty compile cache unable to serve those
//! platforms for half a minute. Winch, wasmtime's baseline compiler,
//! compiles in one pass, 3–5 times sooner, into code that runs 1.2–1.6
//! times slower (`cargo bench -p notifyhub --bench compile`). So a plugin
//! with no cached optimized code is compiled by Winch and serves; the
//! [`Optimizer`] compiles Cranelift's code into the cache behind it, and the
//! reload watcher swaps the optimized version in as it swaps any new
//! version: atomically, tasks under way finishing on the code they started
//! on.
//!
//! The optimizer compiles one plugin at a time, on threads of its own (a
//! rayon pool, one per core, which wasmtime's parallel compilation runs
//! on) at a lower CPU priority: it uses the cores the deliveries leave idle
//! and must never take them from the deliveries the baseline code is
//! making. The functions it compiles are kept in its [`FunctionCache`] until
//! its queue runs dry, so that plugins queued together that embed the same
//! interpreter compile it once.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use wasmtime::Engine;

use super::cache::CodeCache;
use super::functions::FunctionCache;
use crate::allocator::release_free_memory;

/// Which compiler made a plugin's code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// Winch: made fast, runs slower; served until optimized code is ready.
    Baseline,
    /// Cranelift: the code a plugin settles on.
    #[default]
    Optimized,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Baseline => "baseline",
            Tier::Optimized => "optimized",
        }
    }

    pub(super) fn strategy(self) -> wasmtime::Strategy {
        match self {
            Tier::Baseline => wasmtime::Strategy::Winch,
            Tier::Optimized => wasmtime::Strategy::Cranelift,
        }
    }
}

/// How much nicer than the daemon the optimizer's thread runs.
const NICENESS: libc::c_int = 10;

/// A request to put a plugin's optimized code in the cache.
struct Job {
    digest: String,
    bytes: Arc<[u8]>,
    done: oneshot::Sender<Result<(), String>>,
}

/// Compiles optimized code into the cache in the background.
pub struct Optimizer {
    jobs: mpsc::Sender<Job>,
}

impl Optimizer {
    /// Starts the optimizer's threads. `engine` must make code the serving
    /// engine loads: the same settings; `functions` is where it keeps the
    /// functions it compiles.
    pub(super) fn start(
        engine: Engine,
        cache: Arc<CodeCache>,
        functions: Arc<FunctionCache>,
    ) -> std::io::Result<Optimizer> {
        let pool = rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("notifyhub-optimize-{i}"))
            .start_handler(|_| lower_priority())
            .build()
            .map_err(std::io::Error::other)?;
        let (jobs, queue) = mpsc::channel::<Job>();
        thread::Builder::new()
            .name("notifyhub-optimize".into())
            .spawn(move || {
                while let Some(job) = next(&queue, &functions, &pool) {
                    // Inside the pool, wasmtime's parallel compilation runs
                    // on the pool's threads. A panic fails this job only:
                    // one plugin that crashes the compiler must not leave
                    // every later one on baseline code.
                    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
                        pool.install(|| optimize(&engine, &cache, &job.digest, &job.bytes))
                    }))
                    .unwrap_or_else(|_| Err("Cranelift panicked compiling it".into()));
                    let _ = job.done.send(result);
                }
            })?;
        Ok(Optimizer { jobs })
    }

    /// Queues `bytes` (whose SHA-256 is `digest`); the answer says when its
    /// optimized code is in the cache, or why it is not.
    pub fn optimize(
        &self,
        digest: String,
        bytes: Arc<[u8]>,
    ) -> impl Future<Output = Result<(), String>> + use<> {
        let (done, answer) = oneshot::channel();
        let queued = self.jobs.send(Job {
            digest,
            bytes,
            done,
        });
        async move {
            queued.map_err(|_| "the optimizer has stopped".to_string())?;
            answer
                .await
                .map_err(|_| "the optimizer has stopped".to_string())?
        }
    }
}

/// The next job, waiting for one if need be; `None` once the optimizer is
/// dropped. Before waiting, `functions` is emptied (the wave of compiles
/// that could share them is over, and they are large) and the compilers'
/// threads return their free memory.
fn next(
    queue: &mpsc::Receiver<Job>,
    functions: &FunctionCache,
    pool: &rayon::ThreadPool,
) -> Option<Job> {
    match queue.try_recv() {
        Ok(job) => return Some(job),
        Err(mpsc::TryRecvError::Disconnected) => return None,
        Err(mpsc::TryRecvError::Empty) => {}
    }
    let held = functions.clear();
    // Nothing kept: nothing was compiled since the last wait.
    if held.entries > 0 {
        // The compilers' threads now idle, holding what they freed: the
        // optimizer's, and rayon's global pool, where the baseline
        // compiles ran.
        pool.broadcast(|_| release_free_memory());
        rayon::broadcast(|_| release_free_memory());
        release_free_memory();
        tracing::debug!(
            reused = held.hits,
            kept = held.entries,
            bytes = held.bytes,
            "optimizer idle: forgot the functions it compiled"
        );
    }
    queue.recv().ok()
}

/// Makes the calling thread [`NICENESS`] nicer.
fn lower_priority() {
    // SAFETY: setpriority with this thread's id changes only this thread's
    // niceness (on Linux it is per thread).
    let tid = unsafe { libc::gettid() } as libc::id_t;
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, NICENESS) } != 0 {
        tracing::debug!(
            "an optimizer thread runs at normal priority: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn optimize(engine: &Engine, cache: &CodeCache, digest: &str, bytes: &[u8]) -> Result<(), String> {
    if cache.contains(digest) {
        return Ok(());
    }
    let code = engine
        .precompile_component(bytes)
        .map_err(|e| format!("Cranelift cannot compile it: {e:#}"))?;
    cache
        .store(digest, &code)
        .map_err(|e| format!("cannot write its code to the cache: {e}"))
}

#[cfg(test)]
mod tests {
    use std::hash::{DefaultHasher, Hash, Hasher};

    use super::super::{SandboxSettings, config};
    use super::*;

    fn compatibility(engine: &Engine) -> u64 {
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        hasher.finish()
    }

    /// The optimizer's engine differs from the serving one in having no
    /// instance pool: its code must be what the serving engine loads, and
    /// filed under the same cache directory.
    #[test]
    fn the_optimizers_code_is_the_serving_engines() -> anyhow::Result<()> {
        let settings = SandboxSettings {
            max_instances: 4,
            ..SandboxSettings::default()
        };
        let serving = Engine::new(&config(&settings, Tier::Optimized, true, None)?)?;
        let functions = Arc::new(FunctionCache::new(1 << 20));
        let background = Engine::new(&config(&settings, Tier::Optimized, false, Some(functions))?)?;
        assert_eq!(compatibility(&serving), compatibility(&background));
        let baseline = Engine::new(&config(&settings, Tier::Baseline, false, None)?)?;
        assert_ne!(compatibility(&serving), compatibility(&baseline));

        let code = background.precompile_component(b"\0asm\x0d\0\x01\0")?;
        // SAFETY: made just above by an engine of the same settings.
        unsafe { wasmtime::component::Component::deserialize(&serving, &code) }?;
        Ok(())
    }
}
