//! The worker pool: grows and shrinks with the load and routes each task to
//! a worker that holds its plugin warm.
//!
//! One dispatcher task ([`dispatcher`]) owns all pool state; nothing else
//! touches it, so there are no locks around scheduling. It
//!
//! - keeps waiting tasks in a [`queue::WaitQueue`] (priority lanes, platforms
//!   taking turns);
//! - hands each task to an idle worker chosen by the [`router::Router`]
//!   (affinity by default), with a batch of further tasks of the same plugin
//!   only when more are waiting than there are idle workers (so batching
//!   never delays a task on a quiet system) and only for plugins whose tasks
//!   take less than [`BATCH_MAX_TASK_TIME`] (so a batch holds a worker for at
//!   most `batch_size` × that, and a slow platform cannot hide other
//!   platforms' tasks behind batches);
//! - samples load every [`TICK`] and lets the [`scaler::Scaler`] decide;
//!   reaps workers idle for `max_idle`; replaces workers stuck past their
//!   tasks' deadlines every `health_check_interval`;
//! - paces deliveries per destination through the [`pacer::Pacer`]: a task
//!   over its destination's rate limit waits in that destination's backlog
//!   without holding a worker;
//! - answers `status` and `scale`, and runs the shutdown.
//!
//! Workers ([`worker`]) are tokio tasks that run one task at a time: a
//! delivery mostly waits on the network, so hundreds of workers are cheap.
//! Each keeps warm instances ([`warm`]) so the next task for the same plugin
//! skips instantiation.

pub mod bounds;
pub mod cpu;
mod dispatcher;
pub mod lifecycle;
pub mod limit;
pub mod pacer;
pub mod queue;
pub mod retry;
pub mod router;
pub mod scaler;
pub mod scheduler;
pub mod settings;
pub mod shared_pace;
pub mod stats;
pub mod warm;
mod worker;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

pub use self::bounds::{MAX_WORKERS, WorkerCount};
use self::dispatcher::{Command, Dispatcher};
use self::lifecycle::Lifecycle;
pub use self::router::Strategy;
use self::scaler::ScalerConfig;
use self::scheduler::Scheduler;
use self::settings::LiveSettings;
pub use self::stats::{PoolStats, ScaleEvent, WorkerState, WorkerView};
use self::warm::{WarmBudget, WarmLimits};
use self::worker::WorkerContext;
use crate::executor::Executor;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::store::TaskStore;
use crate::task::{Task, TaskId};

/// How often the dispatcher samples load for the scaler.
pub const TICK: Duration = Duration::from_millis(50);

/// Instance slots kept for what runs beside the pool: `describe()` while
/// plugins load and reload, `check` and trial runs.
pub const RESERVED_SLOTS: usize = 32;

/// The engine instance slots a pool with `config` needs: one in use per
/// worker, as many warm, and [`RESERVED_SLOTS`].
pub fn instance_slots(config: &PoolConfig) -> u32 {
    let slots = config.max_workers.saturating_mul(2) + RESERVED_SLOTS;
    u32::try_from(slots).unwrap_or(u32::MAX)
}

/// The slots of `slots` left for warm instances with `max_workers` busy.
fn warm_slots(slots: u32, max_workers: usize) -> usize {
    (slots as usize).saturating_sub(max_workers + RESERVED_SLOTS)
}

/// Tasks of plugins slower than this on average are never batched.
pub const BATCH_MAX_TASK_TIME: Duration = Duration::from_millis(2);

/// Pool settings (`[pool]` in the config file). The defaults suit I/O-bound
/// deliveries: up to 1,024 in flight, where the adaptive limit finds them
/// waiting on the network (see [`limit`]).
///
/// Why 1,024: 2,000 deliveries to a platform answering in 100 ms took four
/// rounds with 512 workers and two with 1,024 (0.58–0.72 s against
/// 0.48–0.56 s, `--bench pool`), while 2,048 did no better on this 2-core
/// machine, whose cores then spent the first rounds starting workers. The
/// price is virtual: the engine reserves address space for twice as many
/// instance slots (17.6 TB of `VmSize` instead of 8.9); resident memory
/// grows only with the workers a burst starts (peak 165 MiB instead of
/// 105 for that one), and the idle ones are reaped after `max_idle`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    pub min_workers: usize,
    pub max_workers: usize,
    /// Scale up when (queued + in flight) / workers stays above this.
    pub target_load: f64,
    /// Scale down when load stays below this.
    pub scale_down_load: f64,
    #[serde(with = "humantime_serde")]
    pub scale_up_delay: Duration,
    #[serde(with = "humantime_serde")]
    pub scale_down_delay: Duration,
    /// How often workers stuck past their deadline are looked for.
    #[serde(with = "humantime_serde")]
    pub health_check_interval: Duration,
    /// Idle workers above `min_workers` stop after this long.
    #[serde(with = "humantime_serde")]
    pub max_idle: Duration,
    /// Most tasks of one plugin given to a worker at once.
    pub batch_size: usize,
    /// Most workers started at once (staged start).
    pub start_batch: usize,
    /// How long a graceful shutdown waits for in-flight tasks.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    pub strategy: Strategy,
    /// Weights per worker for `weighted` (by start order); empty means
    /// measured throughput.
    pub weights: Vec<f64>,
    /// Tasks waiting for a worker before submits are refused with `busy`.
    pub queue_capacity: usize,
    /// Warm instances of one plugin version across the pool.
    pub max_warm_per_plugin: usize,
    /// Linear memory all warm instances may hold together, in MiB.
    pub max_warm_memory_mib: usize,
    /// Warm instances one worker keeps.
    pub max_warm_per_worker: usize,
    /// Calls after which a warm instance is retired.
    pub warm_max_uses: u64,
    /// Linear memory past which a warm instance is retired, in MiB.
    pub warm_max_memory_mib: usize,
    /// A warm instance unused this long is retired.
    #[serde(with = "humantime_serde")]
    pub warm_max_idle: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            min_workers: 4,
            max_workers: 1024,
            target_load: 0.7,
            scale_down_load: 0.35,
            scale_up_delay: Duration::from_millis(100),
            scale_down_delay: Duration::from_secs(30),
            health_check_interval: Duration::from_secs(10),
            max_idle: Duration::from_secs(60),
            batch_size: 10,
            start_batch: 64,
            shutdown_timeout: Duration::from_secs(10),
            strategy: Strategy::Affinity,
            weights: Vec::new(),
            queue_capacity: 100_000,
            max_warm_per_plugin: 512,
            max_warm_memory_mib: 1024,
            max_warm_per_worker: 8,
            warm_max_uses: 10_000,
            warm_max_memory_mib: 64,
            warm_max_idle: Duration::from_secs(60),
        }
    }
}

impl PoolConfig {
    /// Checks values that would make the pool misbehave.
    pub fn validate(&self) -> Result<(), String> {
        check_bounds(self.min_workers, self.max_workers)?;
        if !(self.scale_down_load < self.target_load && self.scale_down_load >= 0.0) {
            return Err(format!(
                "need 0 <= scale_down_load ({}) < target_load ({})",
                self.scale_down_load, self.target_load
            ));
        }
        if self.batch_size == 0 || self.start_batch == 0 || self.queue_capacity == 0 {
            return Err("batch_size, start_batch and queue_capacity must be at least 1".into());
        }
        Ok(())
    }

    fn scaler(&self) -> ScalerConfig {
        ScalerConfig {
            min_workers: self.min_workers,
            max_workers: self.max_workers,
            target_load: self.target_load,
            scale_down_load: self.scale_down_load,
            scale_up_delay: self.scale_up_delay,
            scale_down_delay: self.scale_down_delay,
            start_batch: self.start_batch,
        }
    }
}

/// The worker bounds every pool keeps: `min <= max`, `1 <= max <=`
/// [`MAX_WORKERS`].
fn check_bounds(min: usize, max: usize) -> Result<(), String> {
    if max == 0 || min > max || max > MAX_WORKERS {
        return Err(format!(
            "need 0 <= min ({min}) <= max ({max}) and 1 <= max <= {MAX_WORKERS}"
        ));
    }
    Ok(())
}

/// A `max` the engine's `slots` can serve at run time (the daemon sizes
/// them from the configured `max_workers` with [`instance_slots`]).
fn check_slots(max: usize, slots: u32) -> Result<(), String> {
    if max > (slots as usize).saturating_sub(RESERVED_SLOTS) {
        return Err(format!(
            "max ({max}) needs more instance slots than the daemon started with ({slots}, \
             {RESERVED_SLOTS} kept for loading plugins): raise [pool] max_workers and restart"
        ));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EnqueueError {
    #[error("the queue is full ({0} tasks waiting); try again later")]
    Full(usize),
    #[error("the pool is shutting down")]
    Closed,
}

/// What a shutdown achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShutdownReport {
    /// In-flight tasks that finished during the shutdown.
    pub finished: usize,
    /// In-flight tasks cut off at the timeout and put back in the queue.
    pub cancelled: usize,
    /// Tasks that were still waiting for a worker.
    pub left_queued: usize,
}

/// The door into the dispatcher's queue, shared by submits and the
/// scheduler. Its bound is the queue's capacity: `waiting` counts every task
/// sent and not yet given to a worker, and a send that would pass
/// `capacity` is refused whole, so the unbounded command channel behind it
/// never holds more than `capacity` tasks.
pub struct Intake {
    commands: mpsc::UnboundedSender<Command>,
    waiting: Arc<AtomicUsize>,
    capacity: usize,
    closed: AtomicBool,
}

impl Intake {
    /// Whether the queue has room for `n` more tasks.
    pub fn has_room(&self, n: usize) -> bool {
        !self.closed.load(Ordering::Acquire)
            && self.waiting.load(Ordering::Acquire) + n <= self.capacity
    }

    /// Queues tasks. All or nothing: if the queue cannot take every task,
    /// none is queued.
    pub fn enqueue(&self, tasks: &[Arc<Task>]) -> Result<(), EnqueueError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(EnqueueError::Closed);
        }
        let n = tasks.len();
        let before = self.waiting.fetch_add(n, Ordering::AcqRel);
        if before + n > self.capacity {
            self.waiting.fetch_sub(n, Ordering::AcqRel);
            return Err(EnqueueError::Full(before));
        }
        self.commands
            .send(Command::Submit(tasks.to_vec()))
            .map_err(|_| {
                self.waiting.fetch_sub(n, Ordering::AcqRel);
                EnqueueError::Closed
            })
    }
}

/// A handle to the running pool.
pub struct Pool {
    intake: Arc<Intake>,
    scheduler: Arc<Scheduler>,
    warm: Arc<WarmBudget>,
    /// Stops the scheduler.
    stop: CancellationToken,
    /// The engine's instance slots, which bound `max` at run time.
    slots: u32,
}

/// What the pool works with.
pub struct PoolDeps {
    pub executor: Arc<Executor>,
    pub registry: Arc<Registry>,
    pub store: Arc<TaskStore>,
    /// Destinations, rate limits and the retry policy, replaceable at run time.
    pub settings: Arc<LiveSettings>,
    /// Where to record metrics, when they are on.
    pub metrics: Option<Arc<Metrics>>,
    /// Rate budgets shared with other hosts (with a broker).
    pub shared_pace: Option<Arc<dyn shared_pace::SharedPace>>,
}

impl Pool {
    pub fn start(config: PoolConfig, deps: PoolDeps) -> Self {
        let PoolDeps {
            executor,
            registry,
            store,
            settings,
            metrics,
            shared_pace,
        } = deps;
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (events, event_rx) = mpsc::unbounded_channel();
        let waiting = Arc::new(AtomicUsize::new(0));
        let slots = executor.sandbox().max_instances();
        let scheduler = Arc::new(Scheduler::default());
        let lifecycle = Arc::new(Lifecycle::new(
            store.clone(),
            settings.clone(),
            scheduler.clone(),
            metrics,
        ));
        // Every worker may hold one instance in use; warm ones get the rest
        // of the engine's slots, less those plugin loads need.
        let warm = Arc::new(WarmBudget::new(
            config.max_warm_per_plugin,
            warm_slots(executor.sandbox().max_instances(), config.max_workers),
            config.max_warm_memory_mib.saturating_mul(1 << 20),
        ));
        let limits = WarmLimits {
            max_per_worker: config.max_warm_per_worker,
            max_uses: config.warm_max_uses,
            max_memory_bytes: config.warm_max_memory_mib.saturating_mul(1 << 20),
            max_idle: config.warm_max_idle,
        };
        let context = Arc::new(WorkerContext {
            executor,
            registry: registry.clone(),
            lifecycle: lifecycle.clone(),
            settings: settings.clone(),
            budget: warm.clone(),
            limits,
            warm_hits: AtomicU64::new(0),
            warm_misses: AtomicU64::new(0),
            shared_pace,
        });
        tracing::info!(
            min = config.min_workers,
            max = config.max_workers,
            strategy = ?config.strategy,
            "worker pool starting"
        );
        let capacity = config.queue_capacity;
        let dispatcher = Dispatcher::new(
            config,
            context,
            registry,
            lifecycle,
            waiting.clone(),
            events,
            settings,
        );
        tokio::spawn(dispatcher.run(command_rx, event_rx));
        let intake = Arc::new(Intake {
            commands,
            waiting,
            capacity,
            closed: AtomicBool::new(false),
        });
        let stop = CancellationToken::new();
        tokio::spawn(scheduler.clone().unpark(store.clone(), stop.clone()));
        tokio::spawn(scheduler.clone().run(store, intake.clone(), stop.clone()));
        Pool {
            intake,
            scheduler,
            warm,
            stop,
            slots,
        }
    }

    /// Whether the queue has room for `n` more tasks.
    pub fn has_room(&self, n: usize) -> bool {
        self.intake.has_room(n)
    }

    /// Queues tasks that may run now; if the queue is full they wait in the
    /// scheduler (they are accepted and durable already).
    pub fn enqueue(&self, tasks: &[Arc<Task>]) {
        if self.intake.enqueue(tasks).is_err() {
            let now = SystemTime::now();
            tasks
                .iter()
                .for_each(|t| self.scheduler.schedule(t.id, now));
        }
    }

    /// Whether some worker holds plugin version `key` warm.
    pub fn is_warm(&self, key: &str) -> bool {
        self.warm.is_warm(key)
    }

    /// Queues the task `id` at `at` (at once if `at` has passed).
    pub fn schedule(&self, id: TaskId, at: SystemTime) {
        self.scheduler.schedule(id, at);
    }

    pub async fn stats(&self) -> Option<PoolStats> {
        let (tx, rx) = oneshot::channel();
        self.intake.commands.send(Command::Stats(tx)).ok()?;
        rx.await.ok()
    }

    /// Whether [`Pool::scale`] would take these bounds, without changing
    /// anything: what a config reload asks before it swaps anything in.
    pub fn check_scale(&self, min: WorkerCount, max: WorkerCount) -> Result<(), String> {
        check_bounds(min.get(), max.get())?;
        check_slots(max.get(), self.slots)
    }

    /// Changes the worker bounds at run time; returns the new (min, max).
    pub async fn scale(
        &self,
        min: Option<WorkerCount>,
        max: Option<WorkerCount>,
    ) -> Result<(usize, usize), String> {
        let (reply, rx) = oneshot::channel();
        self.intake
            .commands
            .send(Command::Scale {
                min: min.map(WorkerCount::get),
                max: max.map(WorkerCount::get),
                reply,
            })
            .map_err(|_| "the pool has stopped".to_string())?;
        rx.await.map_err(|_| "the pool has stopped".to_string())?
    }

    /// Stops taking tasks, lets in-flight ones finish for up to
    /// `shutdown_timeout`, then cancels the rest and puts them back in the
    /// queue. Waiting tasks stay queued.
    pub async fn shutdown(&self) -> ShutdownReport {
        self.stop.cancel();
        self.intake.closed.store(true, Ordering::Release);
        let (tx, rx) = oneshot::channel();
        let empty = ShutdownReport {
            finished: 0,
            cancelled: 0,
            left_queued: 0,
        };
        if self.intake.commands.send(Command::Shutdown(tx)).is_err() {
            return empty;
        }
        rx.await.unwrap_or(empty)
    }
}
