//! The sandbox: how plugin code is compiled, linked and confined.
//!
//! One [`Sandbox`] per daemon owns the wasmtime `Engine` and `Linker`:
//!
//! - **Engines.** Cranelift with the pooling instance allocator
//!   (instantiation costs microseconds, not a fresh `mmap` per task) serves
//!   optimized code; Winch serves baseline code while Cranelift's is made
//!   ([`tier`]). The baseline engine and the optimizer reuse what Cranelift
//!   compiled before for equal functions ([`functions`]): one interpreter
//!   embedded in two plugins is not compiled twice. Both engines use epoch
//!   interruption (a background thread ticks
//!   every [`EPOCH_TICK`]; each call gets a deadline in ticks). Compiled code
//!   is kept on disk per tier ([`cache`]), so a restart does not recompile.
//!   Each component's copy-on-write memory image is made when it loads
//!   ([`image`]), where a passing refusal from the kernel can be retried.
//! - **Linker.** All of WASI 0.2 is linked, because language runtimes import
//!   more of it than they use, but the [`HostState`] behind it grants nothing:
//!   no preopened directories, no environment, no sockets. On top come
//!   `wasi:http` (through [`http::OutboundHttp`], which enforces the plugin's
//!   allowlist), the same requests made in one call (`notifyhub:http/client`,
//!   [`exchange`], through the same policy), notifyhub's own `host`
//!   interface, and SMTP
//!   (`notifyhub:smtp/client`, through [`smtp::OutboundSmtp`], held to the
//!   same allowlist).
//! - **Limits.** Memory growth past a plugin's cap fails
//!   ([`limits::MemoryLimiter`]); the epoch deadline stops runaway guest code;
//!   the executor adds an outer timeout for guests blocked in host calls.
//!
//! Only the executor creates stores; everything else sees compiled
//! [`PluginPre`]s.

pub mod allowlist;
mod cache;
mod exchange;
mod functions;
pub mod http;
mod image;
pub(crate) mod kind;
pub mod limits;
mod output;
pub mod policy;
pub mod recorder;
mod reuse;
pub mod smtp;
mod state;
mod tier;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, UpdateDeadline,
};

use self::cache::CodeCache;
use self::functions::FunctionCache;
use crate::allocator::release_free_memory;

pub use self::allowlist::AllowList;
pub use self::http::{HttpClient, Transport};
pub use self::kind::Kind;
pub use self::limits::{Limits, MemoryBudget};
pub use self::policy::{PluginConfig, PluginPolicy, Secret};
pub use self::reuse::{Hold, Reuse};
pub use self::smtp::SmtpPolicy;
use self::smtp::SmtpPools;
pub use self::state::HostState;
use self::tier::Optimizer;
pub use self::tier::Tier;
use crate::bindings::{PluginPre, notifyhub};

/// The most a guest may hand the host in one call (a returned receipt or
/// error, a log line, one stream write), in bytes. Wasmtime copies a lifted
/// string or list into host memory before the host sees it; this bound
/// (wasmtime's "hostcall fuel", 128 MiB by default) keeps that copy small
/// whatever a plugin returns. The host then keeps far less (a receipt's
/// status: 1 KiB). Legitimate transfers are far below it: the plugin SDKs
/// write bodies 4 KiB at a time.
pub const MAX_GUEST_TRANSFER_BYTES: usize = 1 << 20;

/// How often the epoch advances; the granularity of call deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);
/// How much of a freed instance slot's memory, and of its tables, stays
/// resident to be reset in place (see [`config`]): enough for a Rust
/// plugin's instance (a worker of the `webhook` plugin adds ~120 KiB to the
/// daemon's resident memory, connection included: `--bench pool`, 512 more
/// workers, 107 → 168 MiB). What a larger one wrote past it is handed back.
const KEEP_RESIDENT: usize = 256 << 10;

/// Engine-wide settings.
#[derive(Clone)]
pub struct SandboxSettings {
    /// Where compiled artifacts are cached; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
    /// Instances that may exist at once (pool slots).
    pub max_instances: u32,
    /// Largest linear memory any plugin may be granted, in MiB.
    pub max_memory_mib: u64,
    /// Guest linear memory all instances together may hold, in MiB.
    pub max_total_memory_mib: u64,
    /// Where plugins' requests go; `None` is the network.
    pub transport: Option<Transport>,
    /// Baseline code the cache does not hold serves from memory while its
    /// copy is written on idle CPU, not after it is written: for a daemon,
    /// whose cold start is bound by the CPU its compiles take. A process
    /// that compiles once and exits (`notifyhub try`) writes first, so that
    /// the next run finds the code.
    pub baseline_written_behind: bool,
}

impl Default for SandboxSettings {
    fn default() -> Self {
        SandboxSettings {
            cache_dir: None,
            max_instances: 1000,
            max_memory_mib: 1024,
            max_total_memory_mib: 4096,
            transport: None,
            baseline_written_behind: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot configure the wasm engine: {0}")]
    Engine(wasmtime::Error),
    /// The engine that serves optimized code could not be made. It
    /// reserves address space for all its instance slots at once (about
    /// 8.5 GB of it a slot, none of it resident): 17.6 TB with the default
    /// 1,024 workers, so a limit on the address space below that fails
    /// here, which the message says without claiming it is the cause.
    #[error(
        "cannot create the wasm engine with {slots} instance slots (twice [pool] max_workers, plus 32): {error}; \
         if the process's address space is limited (ulimit -v, systemd's LimitAS=), \
         lower [pool] max_workers or raise the limit"
    )]
    Slots { slots: u32, error: wasmtime::Error },
    #[error("cannot set up the compile cache in {dir}: {error}")]
    Cache { dir: PathBuf, error: std::io::Error },
    #[error("cannot start the optimizer's thread: {0}")]
    Optimizer(std::io::Error),
    #[error("cannot link host interfaces: {0}")]
    Link(wasmtime::Error),
}

/// The engines and linkers, the code cache, and the shared HTTP client and
/// SMTP pools.
pub struct Sandbox {
    optimized: Compiler,
    baseline: Compiler,
    /// Winch's functions, shared by the baseline compiles of a wave.
    reuse: Arc<Reuse>,
    cache: Option<Caches>,
    http: Transport,
    smtp: Arc<SmtpPools>,
    memory: Arc<MemoryBudget>,
    max_instances: u32,
    /// Held for its `Drop`, which stops the epoch thread.
    _ticker: EpochTicker,
}

/// One compiler's engine and the linker for components it made.
struct Compiler {
    engine: Engine,
    linker: Linker<HostState>,
}

/// The code cache of each tier, and what fills the optimized one.
struct Caches {
    optimized: Arc<CodeCache>,
    baseline: Arc<CodeCache>,
    /// [`SandboxSettings::baseline_written_behind`].
    baseline_written_behind: bool,
    optimizer: Optimizer,
}

impl Caches {
    fn of(&self, tier: Tier) -> &CodeCache {
        match tier {
            Tier::Optimized => &self.optimized,
            Tier::Baseline => &self.baseline,
        }
    }
}

/// A plugin's compiled code and the compiler that made it.
pub struct Code {
    pub component: Component,
    pub tier: Tier,
}

impl Sandbox {
    pub fn new(settings: &SandboxSettings) -> Result<Self, SandboxError> {
        let slots = settings.max_instances;
        // Without a function cache: it compiles only without a code cache,
        // and its functions would be kept for the daemon's life.
        let optimized =
            Compiler::new(config(settings, Tier::Optimized, true, None)).map_err(|e| match e {
                SandboxError::Engine(error) => SandboxError::Slots { slots, error },
                other => other,
            })?;
        // Baseline code serves only until the optimized code is ready: its
        // instances are allocated on demand instead of reserving a second
        // pool as large as the first.
        let functions = Arc::new(FunctionCache::new(functions::BASELINE_BUDGET));
        let baseline = Compiler::new(config(settings, Tier::Baseline, false, Some(functions)))?;
        let cache = match &settings.cache_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|error| SandboxError::Cache {
                    dir: dir.clone(),
                    error,
                })?;
                forget_wasmtime_cache(dir);
                let optimized = Arc::new(CodeCache::new(
                    dir,
                    Tier::Optimized.as_str(),
                    &optimized.engine,
                ));
                // Never instantiates: no instance pool.
                let functions = Arc::new(FunctionCache::new(functions::OPTIMIZER_BUDGET));
                let background = config(settings, Tier::Optimized, false, Some(functions.clone()))
                    .and_then(|config| Engine::new(&config))
                    .map_err(SandboxError::Engine)?;
                Some(Caches {
                    optimizer: Optimizer::start(background, optimized.clone(), functions)
                        .map_err(SandboxError::Optimizer)?,
                    baseline: Arc::new(CodeCache::new(
                        dir,
                        Tier::Baseline.as_str(),
                        &baseline.engine,
                    )),
                    baseline_written_behind: settings.baseline_written_behind,
                    optimized,
                })
            }
            None => None,
        };
        let ticker = EpochTicker::start(vec![optimized.engine.clone(), baseline.engine.clone()]);
        Ok(Sandbox {
            optimized,
            baseline,
            reuse: Reuse::new(),
            cache,
            http: settings
                .transport
                .clone()
                .unwrap_or_else(|| Transport::Network(Arc::default())),
            smtp: Arc::default(),
            memory: Arc::new(MemoryBudget::new(
                (settings.max_total_memory_mib as usize).saturating_mul(1 << 20),
            )),
            max_instances: slots,
            _ticker: ticker,
        })
    }

    /// Compile-cache hits and misses so far, both tiers; `None` without a
    /// cache.
    pub fn compile_cache(&self) -> Option<(usize, usize)> {
        self.cache.as_ref().map(|c| {
            let (hits, misses) = c.optimized.lookups();
            let (more_hits, more_misses) = c.baseline.lookups();
            (hits + more_hits, misses + more_misses)
        })
    }

    /// Instances that may exist at once.
    pub fn max_instances(&self) -> u32 {
        self.max_instances
    }

    /// The host-wide guest memory budget.
    pub fn memory(&self) -> &MemoryBudget {
        &self.memory
    }

    /// The code of the plugin whose bytes are `bytes` (SHA-256 `digest`):
    /// optimized code from the cache when it is there, else code from
    /// `wanted`'s compiler (from the cache, or compiled and cached), with the
    /// memory image its instances start from. CPU-heavy: call it from a
    /// blocking thread.
    pub fn compile(&self, digest: &str, bytes: &[u8], wanted: Tier) -> wasmtime::Result<Code> {
        let code = self.code(digest, bytes, wanted)?;
        image::make(&code.component)
            .map_err(|e| e.context("cannot make the memory image its instances start from"))?;
        Ok(code)
    }

    fn code(&self, digest: &str, bytes: &[u8], wanted: Tier) -> wasmtime::Result<Code> {
        if let Some(caches) = &self.cache {
            let mut tiers = vec![Tier::Optimized];
            if wanted != Tier::Optimized {
                tiers.push(wanted);
            }
            for tier in tiers {
                if let Some(component) = caches.of(tier).load(&self.compiler(tier).engine, digest) {
                    return Ok(Code { component, tier });
                }
            }
        }
        let component = self.compile_anew(digest, bytes, wanted);
        // The compile freed most of what it allocated on this thread, and
        // mimalloc keeps a thread's freed pages until the thread allocates
        // again: a blocking thread may idle until it exits. Anonymous memory
        // 20 s after a cold start with the Python, JavaScript and webhook
        // plugins had settled: 214–265 MB instead of 271–356 (alternating
        // runs, 5 and 4). While more compiles are coming (a wave, as at
        // start), it is left committed for them (`KeepFreedMemory`): handed
        // back, each of them faulted its pages in again, and the cold
        // window with the 24 shipped plugins took a median 2.70 s instead
        // of 2.52 (eight alternating runs).
        release_free_memory();
        Ok(Code {
            component: component?,
            tier: wanted,
        })
    }

    /// Compiles `bytes` with `tier`'s compiler, keeping the code in the cache
    /// when there is one.
    fn compile_anew(&self, digest: &str, bytes: &[u8], tier: Tier) -> wasmtime::Result<Component> {
        let engine = &self.compiler(tier).engine;
        let _reuse = (tier == Tier::Baseline)
            .then(|| self.reuse.scope(bytes))
            .flatten();
        let Some(caches) = &self.cache else {
            return Component::new(engine, bytes);
        };
        if tier == Tier::Baseline && caches.baseline_written_behind {
            // Baseline code serves until the optimizer's replaces it, some
            // seconds later: it serves from memory while its copy is
            // written on idle CPU. Written first (a Python or JavaScript
            // plugin's is ~50 MB, then its fsync), it left a core idle for
            // ~0.4 s a pair of such plugins at a cold start, and a cold
            // start with 24 plugins took 3.53 s instead of 3.24 (medians
            // of eight alternating runs).
            let component = Component::new(engine, bytes)?;
            caches.baseline.store_in_background(digest, &component);
            return Ok(component);
        }
        let cache = caches.of(tier);
        let precompiled = engine.precompile_component(bytes)?;
        // Mapped from the cache; from memory when it cannot be kept there.
        let mapped = cache
            .store(digest, &precompiled)
            .map_err(wasmtime::Error::from)
            .and_then(|()| cache.open(engine, digest));
        match mapped {
            Ok(component) => Ok(component),
            Err(error) => {
                tracing::warn!("cannot keep compiled code in the cache: {error:#}");
                // SAFETY: the code was just made by this engine.
                unsafe { Component::deserialize(engine, &precompiled) }
            }
        }
    }

    /// Keeps the functions Winch compiles until the hold is dropped, for
    /// the compiles of `coming` (a kind for each component to come): the
    /// second plugin of a language then reuses its interpreter's
    /// ([`reuse`]).
    pub fn hold_baseline_functions(&self, coming: impl IntoIterator<Item = Kind>) -> Hold {
        self.reuse.hold(coming)
    }

    /// Puts the optimized code of `bytes` (SHA-256 `digest`) in the cache, in
    /// the background; the answer says when it is there. Without a cache
    /// there is nowhere to put it: refused at once.
    pub fn optimize(
        &self,
        digest: String,
        bytes: Arc<[u8]>,
    ) -> impl Future<Output = Result<(), String>> + use<> {
        let queued = self
            .cache
            .as_ref()
            .map(|c| c.optimizer.optimize(digest, bytes));
        async move {
            match queued {
                Some(optimized) => optimized.await,
                None => Err("there is no compile cache to keep optimized code in".into()),
            }
        }
    }

    /// Whether the cache holds optimized code for `digest`. Blocking (one
    /// `stat`).
    pub fn has_optimized(&self, digest: &str) -> bool {
        self.cache
            .as_ref()
            .is_some_and(|c| c.optimized.contains(digest))
    }

    fn compiler(&self, tier: Tier) -> &Compiler {
        match tier {
            Tier::Optimized => &self.optimized,
            Tier::Baseline => &self.baseline,
        }
    }

    /// Resolves a component's imports against what the host grants and
    /// checks that it exports the handler interface.
    pub fn prepare(&self, code: &Code) -> wasmtime::Result<PluginPre<HostState>> {
        let linker = &self.compiler(code.tier).linker;
        PluginPre::new(linker.instantiate_pre(&code.component)?)
    }

    /// A fresh store, in `engine`, for an instance of the plugin governed by
    /// `policy`. Arm its deadline ([`arm_deadline`]) before each call.
    pub(crate) fn store(&self, engine: &Engine, policy: Arc<PluginPolicy>) -> Store<HostState> {
        let mut store = Store::new(
            engine,
            HostState::new(
                policy,
                self.http.clone(),
                self.smtp.clone(),
                self.memory.clone(),
            ),
        );
        store.limiter(|state| &mut state.limiter);
        store.set_hostcall_fuel(MAX_GUEST_TRANSFER_BYTES);
        store
    }
}

/// The engine settings of `tier`'s compiler; `pooled`: instances come from
/// a pool of `max_instances` slots (only the engine serving optimized code
/// has one: the pool's settings do not change the code, so the optimizer's
/// engine can do without); `functions`: where it keeps the functions it
/// compiles, to reuse them.
fn config(
    settings: &SandboxSettings,
    tier: Tier,
    pooled: bool,
    functions: Option<Arc<FunctionCache>>,
) -> wasmtime::Result<Config> {
    let mut config = Config::new();
    config.epoch_interruption(true);
    config.wasm_component_model(true);
    config.strategy(tier.strategy());
    if tier == Tier::Baseline {
        // Winch compiles the functions, but the trampolines that let the
        // host call them (one for every function a table or export holds:
        // thousands in an interpreter) are Cranelift's, optimized by
        // default. Unoptimized, Winch's compile of a Python or JavaScript
        // plugin takes 0.93× the time (`--bench compile`, medians of four
        // alternating runs), and its code runs no slower: the trampolines
        // only move arguments.
        config.cranelift_opt_level(wasmtime::OptLevel::None);
        // The address map gives each instruction's wasm offset, for the
        // backtrace of a trap; the daemon reports a trap by its kind, never
        // with a backtrace, and the optimizer's code replaces Winch's within
        // seconds. Without it, Winch's compile of a Python or JavaScript
        // plugin takes ~6 % less, a reused one (`reuse`) ~12 % less, and
        // the cold window with the 24 shipped plugins a median 2.28 s
        // instead of 2.42 (eight alternating runs, `docs/profiling.md`).
        config.generate_address_map(false);
        // What Cranelift compiles for Winch also includes each module's
        // start-up function (globals, tables, element segments): for
        // CPython's main module, one function Cranelift's default register
        // allocator took 116–145 ms over, alone on one core, at every
        // compile of a Python plugin (the incremental cache misses it: it
        // differs between plugins). The single-pass allocator is linear in
        // the code's size: Winch's compile of the Python plugin 714–736 →
        // 630–637 ms, the cold window with the 24 shipped plugins a median
        // 2.32, 2.38 s → 2.12, 2.20 s (two sets of eight alternating runs),
        // and a baseline instance of it starts no slower.
        config.cranelift_regalloc_algorithm(wasmtime::RegallocAlgorithm::SinglePass);
        // Native unwind information (`.eh_frame`) serves only unwinders
        // outside wasmtime (a debugger, `perf --call-graph dwarf`): wasmtime
        // walks wasm frames by their frame pointers, which Winch's code
        // always keeps, and catches a host call's panic before it reaches
        // them. Making it for every function Winch compiles, then
        // registering it with the system's unwinder, is work the cold start
        // waits for, for code the optimizer replaces within seconds.
        config.native_unwind_info(false);
    }
    if let Some(functions) = functions {
        // A compiler that cannot take the cache fails `Engine::new`: Winch
        // as published does; as patched in `vendor/`, it takes it.
        config.enable_incremental_compilation(functions)?;
    }
    if pooled {
        let mut pool = PoolingAllocationConfig::default();
        let slots = settings.max_instances;
        pool.total_component_instances(slots)
            .total_core_instances(slots.saturating_mul(4))
            .total_memories(slots.saturating_mul(2))
            .total_tables(slots.saturating_mul(4))
            // A store keeps the fiber stack of its last call for the next
            // one, so every live instance, warm ones included, may hold a
            // stack: the default of 1,000 stacks failed calls once the pool
            // held more instances than that.
            .total_stacks(slots)
            .max_memories_per_component(8)
            .max_memory_size((settings.max_memory_mib as usize).saturating_mul(1 << 20))
            // A freed slot's pages are reset where they are, not handed back:
            // the kernel's PAGEMAP_SCAN finds the pages the guest wrote, up
            // to `KEEP_RESIDENT`, and they are copied back to the image.
            // Handing them back (`madvise`) made every CPU flush its TLB,
            // and the slot's next instance fault them in again.
            .pagemap_scan(wasmtime::Enabled::Auto)
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(KEEP_RESIDENT);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    Ok(config)
}

impl Compiler {
    fn new(config: wasmtime::Result<Config>) -> Result<Self, SandboxError> {
        let engine = config
            .and_then(|config| Engine::new(&config))
            .map_err(SandboxError::Engine)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(SandboxError::Link)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(SandboxError::Link)?;
        notifyhub::plugin::host::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(SandboxError::Link)?;
        notifyhub::plugin::types::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(SandboxError::Link)?;
        notifyhub::smtp::client::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(SandboxError::Link)?;
        notifyhub::http::client::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(SandboxError::Link)?;
        Ok(Compiler { engine, linker })
    }
}

/// Removes what wasmtime's own cache kept in `dir` (before the code cache
/// was per tier), which nothing reads any more.
fn forget_wasmtime_cache(dir: &std::path::Path) {
    let old = dir.join("modules");
    if old.is_dir() {
        match std::fs::remove_dir_all(&old) {
            Ok(()) => tracing::info!(dir = %old.display(), "removed the old compile cache"),
            Err(e) => {
                tracing::warn!(dir = %old.display(), "cannot remove the old compile cache: {e}")
            }
        }
    }
}

/// Gives the next call in `store` `timeout` of wall-clock time.
///
/// At every epoch tick the guest yields to the async executor, so a guest
/// spinning in a loop shares its thread with other tasks instead of holding
/// it until its deadline; once the deadline has passed, the next tick traps
/// with `Trap::Interrupt`.
pub(crate) fn arm_deadline(store: &mut Store<HostState>, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    store.epoch_deadline_callback(move |_| {
        Ok(if Instant::now() >= deadline {
            UpdateDeadline::Interrupt
        } else {
            UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now()))
        })
    });
    store.set_epoch_deadline(1);
}

/// Advances the engines' epochs every [`EPOCH_TICK`] until dropped.
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engines: Vec<Engine>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::Builder::new()
            .name("notifyhub-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    thread::sleep(EPOCH_TICK);
                    engines.iter().for_each(Engine::increment_epoch);
                }
            })
            .expect("spawning the epoch thread");
        EpochTicker {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
