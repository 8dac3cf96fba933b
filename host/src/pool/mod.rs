//! The worker pool: grows and shrinks with the load and routes each task to
//! a worker that holds its plugin warm.
//!
//! One dispatcher task owns all pool state; nothing else touches it, so
//! there are no locks around scheduling. It
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

pub mod pacer;
pub mod queue;
pub mod router;
pub mod scaler;
pub mod stats;
pub mod warm;
mod worker;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use self::pacer::{Pacer, pace_key};
use self::queue::WaitQueue;
pub use self::router::Strategy;
use self::router::{Candidate, Router};
use self::scaler::{Decision, Sample, Scaler, ScalerConfig};
use self::stats::WorkerMetrics;
pub use self::stats::{PoolStats, ScaleEvent, WorkerState, WorkerView};
use self::warm::{WarmBudget, WarmLimits};
use self::worker::{Assignment, Event, WorkerContext};
use crate::destination::{Destinations, RateRule};
use crate::executor::Executor;
use crate::registry::{LoadedPlugin, Registry};
use crate::retry::RetryConfig;
use crate::scheduler::Scheduler;
use crate::store::TaskStore;
use crate::task::{FailureClass, Outcome, Task, TaskId};

/// How often the dispatcher samples load for the scaler.
pub const TICK: Duration = Duration::from_millis(50);
/// Tasks of plugins slower than this on average are never batched.
pub const BATCH_MAX_TASK_TIME: Duration = Duration::from_millis(2);
/// Scale events kept for `status`.
const SCALE_EVENTS_KEPT: usize = 20;

/// Pool settings (`[pool]` in the config file). The defaults suit I/O-bound
/// deliveries: up to 512 in flight.
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
            max_workers: 512,
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
            max_warm_per_plugin: 64,
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
        if self.max_workers == 0 || self.min_workers > self.max_workers {
            return Err(format!(
                "need 0 <= min_workers ({}) <= max_workers ({}) and max_workers > 0",
                self.min_workers, self.max_workers
            ));
        }
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

enum Command {
    Submit(Vec<Arc<Task>>),
    Stats(oneshot::Sender<PoolStats>),
    Scale {
        min: Option<usize>,
        max: Option<usize>,
        reply: oneshot::Sender<Result<(usize, usize), String>>,
    },
    Shutdown(oneshot::Sender<ShutdownReport>),
}

/// A handle to the running pool.
pub struct Pool {
    commands: mpsc::UnboundedSender<Command>,
    /// Tasks submitted and not yet given to a worker.
    waiting: Arc<AtomicUsize>,
    capacity: usize,
    closed: AtomicBool,
}

/// What the pool works with.
pub struct PoolDeps {
    pub executor: Arc<Executor>,
    pub registry: Arc<Registry>,
    pub store: Arc<TaskStore>,
    pub scheduler: Arc<Scheduler>,
    pub retry: RetryConfig,
    pub destinations: Arc<Destinations>,
    /// Per-platform rate limits that replace what plugins declare.
    pub platform_limits: BTreeMap<String, Vec<RateRule>>,
}

impl Pool {
    pub fn start(config: PoolConfig, deps: PoolDeps) -> Self {
        let PoolDeps {
            executor,
            registry,
            store,
            scheduler,
            retry,
            destinations,
            platform_limits,
        } = deps;
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (events, event_rx) = mpsc::unbounded_channel();
        let waiting = Arc::new(AtomicUsize::new(0));
        let limits = WarmLimits {
            max_per_worker: config.max_warm_per_worker,
            max_per_plugin: config.max_warm_per_plugin,
            max_uses: config.warm_max_uses,
            max_memory_bytes: config.warm_max_memory_mib.saturating_mul(1 << 20),
            max_idle: config.warm_max_idle,
        };
        let context = Arc::new(WorkerContext {
            executor,
            registry: registry.clone(),
            store: store.clone(),
            scheduler,
            retry,
            destinations: destinations.clone(),
            budget: Arc::new(WarmBudget::new(config.max_warm_per_plugin)),
            limits,
            warm_hits: AtomicU64::new(0),
            warm_misses: AtomicU64::new(0),
        });
        tracing::info!(
            min = config.min_workers,
            max = config.max_workers,
            strategy = ?config.strategy,
            "worker pool starting"
        );
        let dispatcher = Dispatcher {
            scaler: Scaler::new(config.scaler()),
            router: Router::new(config.strategy),
            capacity: config.queue_capacity,
            config,
            queue: WaitQueue::default(),
            workers: BTreeMap::new(),
            next_id: 0,
            events,
            context,
            registry,
            store,
            waiting: waiting.clone(),
            scale_events: VecDeque::new(),
            scale_event_count: 0,
            last_health_check: Instant::now(),
            task_time: HashMap::new(),
            pacer: Pacer::default(),
            destinations,
            platform_limits,
        };
        let capacity = dispatcher.capacity;
        tokio::spawn(dispatcher.run(command_rx, event_rx));
        Pool {
            commands,
            waiting,
            capacity,
            closed: AtomicBool::new(false),
        }
    }

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

    pub async fn stats(&self) -> Option<PoolStats> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Stats(tx)).ok()?;
        rx.await.ok()
    }

    /// Changes the worker bounds at run time; returns the new (min, max).
    pub async fn scale(
        &self,
        min: Option<usize>,
        max: Option<usize>,
    ) -> Result<(usize, usize), String> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Scale { min, max, reply })
            .map_err(|_| "the pool has stopped".to_string())?;
        rx.await.map_err(|_| "the pool has stopped".to_string())?
    }

    /// Stops taking tasks, lets in-flight ones finish for up to
    /// `shutdown_timeout`, then cancels the rest and puts them back in the
    /// queue. Waiting tasks stay queued.
    pub async fn shutdown(&self) -> ShutdownReport {
        self.closed.store(true, Ordering::Release);
        let (tx, rx) = oneshot::channel();
        let empty = ShutdownReport {
            finished: 0,
            cancelled: 0,
            left_queued: 0,
        };
        if self.commands.send(Command::Shutdown(tx)).is_err() {
            return empty;
        }
        rx.await.unwrap_or(empty)
    }
}

struct WorkerEntry {
    inbox: Option<mpsc::Sender<Assignment>>,
    handle: JoinHandle<()>,
    metrics: Arc<WorkerMetrics>,
    state: WorkerState,
    /// Tasks assigned and not yet reported done.
    assigned: Vec<TaskId>,
    busy_since: Option<Instant>,
    idle_since: Option<Instant>,
    /// How long the current assignment may take before the worker counts as stuck.
    deadline: Duration,
    warm: HashSet<String>,
    weight: Option<f64>,
}

struct Dispatcher {
    config: PoolConfig,
    scaler: Scaler,
    router: Router,
    capacity: usize,
    queue: WaitQueue,
    workers: BTreeMap<u64, WorkerEntry>,
    next_id: u64,
    events: mpsc::UnboundedSender<Event>,
    context: Arc<WorkerContext>,
    registry: Arc<Registry>,
    store: Arc<TaskStore>,
    waiting: Arc<AtomicUsize>,
    scale_events: VecDeque<ScaleEvent>,
    scale_event_count: u64,
    last_health_check: Instant,
    /// Mean task time per plugin key (exponentially weighted), for batching.
    task_time: HashMap<String, Duration>,
    pacer: Pacer,
    destinations: Arc<Destinations>,
    platform_limits: BTreeMap<String, Vec<RateRule>>,
}

impl Dispatcher {
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut events: mpsc::UnboundedReceiver<Event>,
    ) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.on_tick();
        loop {
            // Only a future turn needs a timer: a backlog whose turn has
            // come is waiting for a worker, and a worker going idle wakes
            // the dispatcher anyway.
            let now = Instant::now();
            let wake = self
                .pacer
                .next_wake(now)
                .filter(|at| *at > now)
                .map(tokio::time::Instant::from_std);
            // Events first: a worker reports a platform's "slow down"
            // before the task's outcome is visible to anyone, so by the time
            // a caller can react (a submit, a `status`), the pause is here.
            tokio::select! {
                biased;
                Some(event) = events.recv() => self.on_event(event),
                command = commands.recv() => match command {
                    Some(Command::Submit(tasks)) => tasks.into_iter().for_each(|t| self.queue.push(t)),
                    Some(Command::Stats(reply)) => { let _ = reply.send(self.stats()); }
                    Some(Command::Scale { min, max, reply }) => { let _ = reply.send(self.scale(min, max)); }
                    Some(Command::Shutdown(reply)) => {
                        let report = self.shutdown(&mut events).await;
                        let _ = reply.send(report);
                        return;
                    }
                    None => return,
                },
                _ = tick.tick() => self.on_tick(),
                _ = tokio::time::sleep_until(wake.unwrap_or_else(tokio::time::Instant::now)), if wake.is_some() => {}
            }
            self.dispatch();
        }
    }

    fn live_workers(&self) -> usize {
        self.workers
            .values()
            .filter(|w| w.state != WorkerState::ShuttingDown)
            .count()
    }

    fn in_flight(&self) -> usize {
        self.workers.values().map(|w| w.assigned.len()).sum()
    }

    /// The rate limits `task` is paced under: its destination's, else the
    /// config's for its platform, else what its plugin declares.
    fn rules_for(&self, task: &Task, plugin: &LoadedPlugin) -> Vec<RateRule> {
        let route = task
            .destination
            .as_deref()
            .and_then(|name| self.destinations.route(name));
        if let Some(rules) = route.and_then(|r| r.rate_limits.clone()) {
            return rules;
        }
        if let Some(rules) = self.platform_limits.get(&task.platform) {
            return rules.clone();
        }
        plugin
            .info
            .rate_limits
            .iter()
            .filter(|r| r.requests > 0 && r.window_ms > 0)
            .map(|r| RateRule {
                requests: r.requests,
                window: Duration::from_millis(r.window_ms),
            })
            .collect()
    }

    /// Whether `task` may go now; if not, it joins its destination's backlog.
    fn admit(&mut self, task: &Arc<Task>, plugin: &LoadedPlugin, now: Instant) -> bool {
        let rules = self.rules_for(task, plugin);
        if rules.is_empty() && self.pacer.is_empty() {
            return true;
        }
        let key = pace_key(task);
        if self.pacer.admit(&key, &rules, now) {
            return true;
        }
        self.pacer.hold(key, task.clone(), now);
        false
    }

    /// The plugin for `task`, or the task fails as having none.
    fn plugin_for(&mut self, task: &Task) -> Option<Arc<LoadedPlugin>> {
        let plugin = self.registry.lookup(&task.platform);
        if plugin.is_none() {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            let message = format!("no loaded plugin serves platform `{}`", task.platform);
            let attempt = self.store.attempts(task.id) + 1;
            self.context.finish(
                task,
                attempt,
                Outcome::failed(FailureClass::NoPlugin, message),
                None,
            );
        }
        plugin
    }

    /// Gives waiting tasks to idle workers: first paced tasks whose turn has
    /// come (they have waited longest), then the queue.
    fn dispatch(&mut self) {
        let mut idle: Vec<u64> = self
            .workers
            .iter()
            .filter(|(_, w)| w.state == WorkerState::Idle)
            .map(|(id, _)| *id)
            .collect();
        let now = Instant::now();
        while !idle.is_empty() {
            let Some(task) = self.pacer.pop_ready(now) else {
                break;
            };
            if let Some(plugin) = self.plugin_for(&task) {
                let candidates = self.candidates(&idle, &plugin);
                let chosen = self
                    .router
                    .pick(&candidates)
                    .expect("candidates are not empty");
                idle.retain(|id| *id != chosen);
                self.assign(chosen, plugin, vec![task]);
            }
        }
        // Platforms whose next task waits for a warm worker this round.
        let mut deferred = Vec::new();
        let mut skip = HashSet::new();
        while !idle.is_empty() {
            let Some(task) = self.queue.pop_skipping(&skip) else {
                break;
            };
            let Some(plugin) = self.plugin_for(&task) else {
                continue;
            };
            let candidates = self.candidates(&idle, &plugin);
            // A fast plugin whose warm instances are all busy, and which may
            // not have more, waits for one of them: it will be free in
            // microseconds, while a one-shot instance costs its whole
            // start-up. Slow (I/O-bound) plugins spill to a one-shot instead.
            let fast = self
                .task_time
                .get(&plugin.key)
                .is_some_and(|t| *t < BATCH_MAX_TASK_TIME);
            if self.router.strategy() == Strategy::Affinity
                && fast
                && !candidates.iter().any(|c| c.warm)
                && self.context.budget.is_full(&plugin.key)
                && self
                    .workers
                    .values()
                    .any(|w| w.state == WorkerState::Processing && w.warm.contains(&plugin.key))
            {
                skip.insert(task.platform.clone());
                deferred.push(task);
                continue;
            }
            if !self.admit(&task, &plugin, now) {
                continue;
            }
            let chosen = self
                .router
                .pick(&candidates)
                .expect("candidates are not empty");
            idle.retain(|id| *id != chosen);

            // Batch only fast plugins, and only what the other idle workers
            // could not take anyway.
            let surplus = self.queue.len_of(&task.platform).saturating_sub(idle.len());
            let extra = if fast {
                surplus.min(self.config.batch_size - 1)
            } else {
                0
            };
            let platform = task.platform.clone();
            let mut tasks = vec![task];
            while tasks.len() <= extra {
                let Some(next) = self.queue.pop_platform(&platform) else {
                    break;
                };
                if self.admit(&next, &plugin, now) {
                    tasks.push(next);
                }
            }
            self.assign(chosen, plugin, tasks);
        }
        deferred
            .into_iter()
            .rev()
            .for_each(|t| self.queue.push_front(t));
    }

    fn candidates(&self, idle: &[u64], plugin: &LoadedPlugin) -> Vec<Candidate> {
        idle.iter()
            .map(|id| {
                let w = &self.workers[id];
                Candidate {
                    worker: *id,
                    warm: w.warm.contains(&plugin.key),
                    warm_count: w.warm.len(),
                    processed: w.metrics.processed.load(Ordering::Relaxed),
                    weight: w.weight.unwrap_or_else(|| w.metrics.throughput().max(1.0)),
                }
            })
            .collect()
    }

    /// Hands `tasks` to the idle worker `chosen`.
    fn assign(&mut self, chosen: u64, plugin: Arc<LoadedPlugin>, tasks: Vec<Arc<Task>>) {
        self.waiting.fetch_sub(tasks.len(), Ordering::AcqRel);
        let worker = self
            .workers
            .get_mut(&chosen)
            .expect("chosen from the idle workers");
        worker.state = WorkerState::Processing;
        worker.assigned = tasks.iter().map(|t| t.id).collect();
        worker.busy_since = Some(Instant::now());
        worker.idle_since = None;
        worker.deadline = (plugin.policy.limits.timeout + Duration::from_secs(1))
            * tasks.len() as u32
            + Duration::from_secs(5);
        let inbox = worker.inbox.as_ref().expect("idle workers have an inbox");
        if let Err(e) = inbox.try_send(Assignment { plugin, tasks }) {
            // The worker is gone; its tasks go back to the front.
            let assignment = match e {
                mpsc::error::TrySendError::Full(a) | mpsc::error::TrySendError::Closed(a) => a,
            };
            worker.state = WorkerState::ShuttingDown;
            worker.assigned.clear();
            self.waiting
                .fetch_add(assignment.tasks.len(), Ordering::AcqRel);
            assignment
                .tasks
                .into_iter()
                .rev()
                .for_each(|t| self.queue.push_front(t));
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Idle {
                worker,
                warm,
                plugin,
                mean_task,
            } => {
                let mean = self.task_time.entry(plugin).or_insert(mean_task);
                *mean = (*mean * 7 + mean_task) / 8;
                if let Some(w) = self.workers.get_mut(&worker) {
                    w.assigned.clear();
                    w.busy_since = None;
                    w.warm = warm.into_iter().collect();
                    if w.state == WorkerState::Processing {
                        w.state = WorkerState::Idle;
                        w.idle_since = Some(Instant::now());
                    }
                }
            }
            Event::RateLimited { key, retry_after } => {
                let now = Instant::now();
                tracing::info!(destination = %key, ?retry_after, "platform asked to slow down; pausing the destination");
                self.pacer.pause(key, now + retry_after, now);
            }
            Event::Exited { worker } => {
                self.workers.remove(&worker);
                self.router.forget(worker);
            }
        }
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        // Workers become idle once spawned: mark the ones started last tick.
        for w in self
            .workers
            .values_mut()
            .filter(|w| w.state == WorkerState::Starting)
        {
            w.state = WorkerState::Idle;
            w.idle_since = Some(now);
        }
        let sample = Sample {
            at: now,
            queued: self.queue.len(),
            in_flight: self.in_flight(),
            workers: self.live_workers(),
        };
        match self.scaler.decide(&sample) {
            Decision::Hold => {}
            Decision::Grow { to, reason } => {
                self.record_scale(sample.workers, to, reason);
                for _ in sample.workers..to {
                    self.spawn_worker();
                }
            }
            Decision::Shrink { to, reason } => {
                let victims = self.idle_longest(sample.workers - to);
                if !victims.is_empty() {
                    self.record_scale(sample.workers, sample.workers - victims.len(), reason);
                    victims.into_iter().for_each(|id| self.stop_worker(id));
                }
            }
        }
        self.reap_idle(now);
        self.pacer.forget_quiet(now);
        if now.duration_since(self.last_health_check) >= self.config.health_check_interval {
            self.last_health_check = now;
            self.replace_stuck(now);
        }
    }

    fn reap_idle(&mut self, now: Instant) {
        let live: Vec<(u64, Option<Instant>)> = self
            .workers
            .iter()
            .filter(|(_, w)| w.state != WorkerState::ShuttingDown)
            .map(|(id, w)| {
                (
                    *id,
                    if w.state == WorkerState::Idle {
                        w.idle_since
                    } else {
                        None
                    },
                )
            })
            .collect();
        let since: Vec<Option<Instant>> = live.iter().map(|(_, s)| *s).collect();
        let reaped = scaler::reap(
            &since,
            now,
            self.config.max_idle,
            self.scaler.config().min_workers,
        );
        if reaped.is_empty() {
            return;
        }
        let before = live.len();
        self.record_scale(
            before,
            before - reaped.len(),
            format!(
                "{} worker(s) idle for {:?}",
                reaped.len(),
                self.config.max_idle
            ),
        );
        for index in reaped {
            self.stop_worker(live[index].0);
        }
    }

    /// A worker busy far past its tasks' deadlines is stuck: its tasks fail,
    /// it is aborted and replaced.
    fn replace_stuck(&mut self, now: Instant) {
        let stuck: Vec<u64> = self
            .workers
            .iter()
            .filter(|(_, w)| {
                w.busy_since
                    .is_some_and(|since| now.duration_since(since) > w.deadline)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in stuck {
            let Some(worker) = self.workers.remove(&id) else {
                continue;
            };
            worker.handle.abort();
            self.router.forget(id);
            tracing::error!(
                worker = id,
                tasks = worker.assigned.len(),
                "worker stuck past its deadline; replacing it"
            );
            for id in worker.assigned {
                if let Some(task) = self.store.runnable(id).or_else(|| self.running_task(id)) {
                    let outcome = Outcome::failed(
                        FailureClass::TimedOut,
                        "the worker running this task was stuck past its deadline and was replaced",
                    );
                    let attempt = self.store.attempts(id).max(1);
                    self.context.finish(&task, attempt, outcome, None);
                }
            }
            self.spawn_worker();
        }
    }

    /// The task behind `id` if it is still running.
    fn running_task(&self, id: TaskId) -> Option<Arc<Task>> {
        self.store
            .get(id)
            .ok()
            .flatten()
            .filter(|r| r.state == crate::task::TaskState::Running)
            .map(|r| r.task)
    }

    /// Up to `n` idle workers, longest idle first.
    fn idle_longest(&self, n: usize) -> Vec<u64> {
        let mut idle: Vec<(u64, Instant)> = self
            .workers
            .iter()
            .filter(|(_, w)| w.state == WorkerState::Idle)
            .filter_map(|(id, w)| w.idle_since.map(|s| (*id, s)))
            .collect();
        idle.sort_by_key(|&(_, since)| since);
        idle.into_iter().take(n).map(|(id, _)| id).collect()
    }

    fn spawn_worker(&mut self) {
        let id = self.next_id;
        self.next_id += 1;
        let (inbox, inbox_rx) = mpsc::channel(1);
        let metrics = Arc::new(WorkerMetrics::new());
        let handle = tokio::spawn(worker::run(
            id,
            inbox_rx,
            self.events.clone(),
            self.context.clone(),
            metrics.clone(),
        ));
        let weight = self.config.weights.get(id as usize).copied();
        self.workers.insert(
            id,
            WorkerEntry {
                inbox: Some(inbox),
                handle,
                metrics,
                state: WorkerState::Starting,
                assigned: Vec::new(),
                busy_since: None,
                idle_since: None,
                deadline: Duration::ZERO,
                warm: HashSet::new(),
                weight,
            },
        );
    }

    /// Closes a worker's inbox; it exits when its current task is done.
    fn stop_worker(&mut self, id: u64) {
        if let Some(w) = self.workers.get_mut(&id) {
            w.inbox = None;
            w.state = WorkerState::ShuttingDown;
        }
    }

    fn record_scale(&mut self, from: usize, to: usize, reason: String) {
        tracing::info!(from, to, "scaling: {reason}");
        self.scale_event_count += 1;
        if self.scale_events.len() == SCALE_EVENTS_KEPT {
            self.scale_events.pop_front();
        }
        let at = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        self.scale_events.push_back(ScaleEvent {
            at,
            from,
            to,
            reason,
        });
    }

    fn scale(&mut self, min: Option<usize>, max: Option<usize>) -> Result<(usize, usize), String> {
        let current = self.scaler.config();
        let (min, max) = (
            min.unwrap_or(current.min_workers),
            max.unwrap_or(current.max_workers),
        );
        if max == 0 || min > max {
            return Err(format!("need 0 <= min ({min}) <= max ({max}) and max > 0"));
        }
        tracing::info!(min, max, "manual scaling: new worker bounds");
        self.scaler.set_bounds(min, max);
        self.config.min_workers = min;
        self.config.max_workers = max;
        Ok((min, max))
    }

    async fn shutdown(&mut self, events: &mut mpsc::UnboundedReceiver<Event>) -> ShutdownReport {
        let left_queued = self.queue.len() + self.pacer.backlog_len();
        let in_flight = self.in_flight();
        tracing::info!(in_flight, left_queued, "worker pool draining");
        let ids: Vec<u64> = self.workers.keys().copied().collect();
        ids.into_iter().for_each(|id| self.stop_worker(id));

        let deadline = tokio::time::Instant::now() + self.config.shutdown_timeout;
        while !self.workers.is_empty() {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(event)) => self.on_event(event),
                Ok(None) | Err(_) => break,
            }
        }
        let mut cancelled = 0;
        for (_, worker) in std::mem::take(&mut self.workers) {
            worker.handle.abort();
            for task in worker.assigned {
                if !self.store.is_finished(task) {
                    self.store.requeue(task);
                    cancelled += 1;
                }
            }
        }
        let report = ShutdownReport {
            finished: in_flight - cancelled,
            cancelled,
            left_queued,
        };
        tracing::info!(?report, "worker pool stopped");
        report
    }

    fn stats(&self) -> PoolStats {
        let mut by_state = BTreeMap::new();
        for w in self.workers.values() {
            *by_state.entry(w.state).or_insert(0) += 1;
        }
        let per_worker: Vec<WorkerView> = self
            .workers
            .iter()
            .map(|(id, w)| w.metrics.view(*id, w.state))
            .collect();
        let hits = self.context.warm_hits.load(Ordering::Relaxed);
        let misses = self.context.warm_misses.load(Ordering::Relaxed);
        let scaler = self.scaler.config();
        PoolStats {
            strategy: self.router.strategy(),
            min_workers: scaler.min_workers,
            max_workers: scaler.max_workers,
            workers: self.live_workers(),
            workers_by_state: by_state,
            queued: self.queue.len(),
            queued_by_platform: self.queue.depths(),
            paced: self.pacer.backlog_len(),
            destinations: self.pacer.views(Instant::now()),
            in_flight: self.in_flight(),
            processed: per_worker.iter().map(|w| w.processed).sum(),
            errors: per_worker.iter().map(|w| w.errors).sum(),
            warm_hits: hits,
            warm_misses: misses,
            warm_hit_rate: if hits + misses == 0 {
                0.0
            } else {
                hits as f64 / (hits + misses) as f64
            },
            scale_events: self.scale_event_count,
            recent_scale_events: self.scale_events.iter().cloned().collect(),
            per_worker,
        }
    }
}
