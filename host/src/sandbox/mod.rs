//! The sandbox: how plugin code is compiled, linked and confined.
//!
//! One [`Sandbox`] per daemon owns the wasmtime `Engine` and `Linker`:
//!
//! - **Engine.** Cranelift with the pooling instance allocator (instantiation
//!   costs microseconds, not a fresh `mmap` per task), epoch interruption (a
//!   background thread ticks every [`EPOCH_TICK`]; each call gets a deadline
//!   in ticks), and wasmtime's on-disk compilation cache keyed by content and
//!   engine settings, so a restart does not recompile. Each component's
//!   copy-on-write memory image is made when it loads ([`image`]), where a
//!   passing refusal from the kernel can be retried.
//! - **Linker.** All of WASI 0.2 is linked, because language runtimes import
//!   more of it than they use, but the [`HostState`] behind it grants nothing:
//!   no preopened directories, no environment, no sockets. On top come
//!   `wasi:http` (through [`http::OutboundHttp`], which enforces the plugin's
//!   allowlist), notifyhub's own `host` interface, and SMTP
//!   (`notifyhub:smtp/client`, through [`smtp::OutboundSmtp`], held to the
//!   same allowlist).
//! - **Limits.** Memory growth past a plugin's cap fails
//!   ([`limits::MemoryLimiter`]); the epoch deadline stops runaway guest code;
//!   the executor adds an outer timeout for guests blocked in host calls.
//!
//! Only the executor creates stores; everything else sees compiled
//! [`PluginPre`]s.

pub mod allowlist;
pub mod http;
mod image;
pub mod limits;
mod output;
pub mod policy;
pub mod recorder;
pub mod smtp;
mod state;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, UpdateDeadline,
};

pub use self::allowlist::AllowList;
pub use self::http::{HttpClient, Transport};
pub use self::limits::{Limits, MemoryBudget};
pub use self::policy::{PluginConfig, PluginPolicy, Secret};
pub use self::smtp::SmtpPolicy;
use self::smtp::SmtpPools;
pub use self::state::HostState;
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
    /// The compiler. Cranelift (what `Auto` picks) everywhere but the
    /// `compile` benchmark, which tries wasmtime's baseline compiler, Winch
    /// (built only with the crate's `winch` feature).
    pub strategy: wasmtime::Strategy,
}

impl Default for SandboxSettings {
    fn default() -> Self {
        SandboxSettings {
            cache_dir: None,
            max_instances: 1000,
            max_memory_mib: 1024,
            max_total_memory_mib: 4096,
            transport: None,
            strategy: wasmtime::Strategy::Auto,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot configure the wasm engine: {0}")]
    Engine(wasmtime::Error),
    #[error("cannot set up the compilation cache in {dir}: {error}")]
    Cache {
        dir: PathBuf,
        error: wasmtime::Error,
    },
    #[error("cannot link host interfaces: {0}")]
    Link(wasmtime::Error),
}

/// The engine, linker and shared HTTP client and SMTP pools.
pub struct Sandbox {
    engine: Engine,
    linker: Linker<HostState>,
    http: Transport,
    smtp: Arc<SmtpPools>,
    memory: Arc<MemoryBudget>,
    cache: Option<wasmtime::Cache>,
    max_instances: u32,
    /// Held for its `Drop`, which stops the epoch thread.
    _ticker: EpochTicker,
}

impl Sandbox {
    pub fn new(settings: &SandboxSettings) -> Result<Self, SandboxError> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.wasm_component_model(true);
        config.strategy(settings.strategy);

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
            .max_memory_size((settings.max_memory_mib as usize).saturating_mul(1 << 20));
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));

        let mut cache = None;
        if let Some(dir) = &settings.cache_dir {
            let cache_err = |error| SandboxError::Cache {
                dir: dir.clone(),
                error,
            };
            let mut cache_config = wasmtime::CacheConfig::new();
            cache_config.with_directory(dir);
            let opened = wasmtime::Cache::new(cache_config).map_err(cache_err)?;
            config.cache(Some(opened.clone()));
            cache = Some(opened);
        }

        let engine = Engine::new(&config).map_err(SandboxError::Engine)?;
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

        let ticker = EpochTicker::start(engine.clone());
        Ok(Sandbox {
            engine,
            linker,
            http: settings
                .transport
                .clone()
                .unwrap_or_else(|| Transport::Network(Box::default())),
            smtp: Arc::default(),
            memory: Arc::new(MemoryBudget::new(
                (settings.max_total_memory_mib as usize).saturating_mul(1 << 20),
            )),
            cache,
            max_instances: slots,
            _ticker: ticker,
        })
    }

    /// Compile-cache hits and misses so far; `None` without a cache.
    pub fn compile_cache(&self) -> Option<(usize, usize)> {
        self.cache
            .as_ref()
            .map(|c| (c.cache_hits(), c.cache_misses()))
    }

    /// Instances that may exist at once.
    pub fn max_instances(&self) -> u32 {
        self.max_instances
    }

    /// The host-wide guest memory budget.
    pub fn memory(&self) -> &MemoryBudget {
        &self.memory
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Compiles a component (or loads it from the cache) and makes the memory
    /// image its instances start from. CPU-heavy: call it from a blocking
    /// thread.
    pub fn compile(&self, bytes: &[u8]) -> wasmtime::Result<Component> {
        let component = Component::new(&self.engine, bytes)?;
        image::make(&component)
            .map_err(|e| e.context("cannot make the memory image its instances start from"))?;
        Ok(component)
    }

    /// Resolves a component's imports against what the host grants and
    /// checks that it exports the handler interface.
    pub fn prepare(&self, component: &Component) -> wasmtime::Result<PluginPre<HostState>> {
        PluginPre::new(self.linker.instantiate_pre(component)?)
    }

    /// A fresh store for an instance of the plugin governed by `policy`.
    /// Arm its deadline ([`arm_deadline`]) before each call.
    pub(crate) fn store(&self, policy: Arc<PluginPolicy>) -> Store<HostState> {
        let mut store = Store::new(
            &self.engine,
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

/// Advances the engine's epoch every [`EPOCH_TICK`] until dropped.
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::Builder::new()
            .name("notifyhub-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
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
