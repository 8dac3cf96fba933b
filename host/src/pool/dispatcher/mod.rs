//! The dispatcher: the one task that owns all pool state.
//!
//! It takes commands from the [`Pool`](super::Pool) handle (submit, stats,
//! scale, shutdown) and events from workers (idle, rate-limited, exited),
//! and after each one gives waiting tasks to idle workers. Owning
//! everything in one task means scheduling needs no locks; the price is
//! that nothing here may block (it reads the store's memory, never its
//! disk). Dispatching lives here (a round's idle workers in [`idle`]); the
//! workers' lifecycle in [`workers`], the `status` snapshot in [`report`].
//!
//! A task for a platform that no plugin serves *while the plugins present
//! at start are still loading* is parked, not failed: once the registry is
//! ready it is queued again and either finds its plugin or fails as having
//! none.

mod idle;
mod report;
mod workers;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use self::idle::IdleRound;
use super::lifecycle::Lifecycle;
use super::pacer::{Pacer, pace_key};
use super::queue::WaitQueue;
use super::router::{Candidate, Router};
use super::scaler::Scaler;
use super::settings::LiveSettings;
use super::stats::{PoolStats, ScaleEvent, WorkerMetrics, WorkerState};
use super::worker::{Assignment, Event, WorkerContext};
use super::{BATCH_MAX_TASK_TIME, PoolConfig, ShutdownReport, Strategy, TICK};
use crate::plugin::LoadedPlugin;
use crate::registry::Registry;
use crate::task::{FailureClass, Task, TaskId};

/// Scale events kept for `status`.
const SCALE_EVENTS_KEPT: usize = 20;

/// What the [`Pool`](super::Pool) handle asks of the dispatcher.
pub(super) enum Command {
    Submit(Vec<Arc<Task>>),
    Stats(oneshot::Sender<PoolStats>),
    Scale {
        min: Option<usize>,
        max: Option<usize>,
        reply: oneshot::Sender<Result<(usize, usize), String>>,
    },
    Shutdown(oneshot::Sender<ShutdownReport>),
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

/// Counts carried over from workers that have left the pool.
#[derive(Debug, Default, Clone, Copy)]
struct Retired {
    processed: u64,
    errors: u64,
}

pub(super) struct Dispatcher {
    config: PoolConfig,
    scaler: Scaler,
    router: Router,
    queue: WaitQueue,
    workers: BTreeMap<u64, WorkerEntry>,
    next_id: u64,
    events: mpsc::UnboundedSender<Event>,
    context: Arc<WorkerContext>,
    registry: Arc<Registry>,
    lifecycle: Arc<Lifecycle>,
    waiting: Arc<AtomicUsize>,
    /// Tasks whose platform may be served by a plugin still loading.
    parked: Vec<Arc<Task>>,
    /// Tasks finished since the pool started (for the adaptive limit).
    completed: u64,
    scale_events: VecDeque<ScaleEvent>,
    scale_event_count: u64,
    /// What workers that have left the pool processed and failed: the
    /// pool's totals in `status` count them too, so they never go down.
    retired: Retired,
    last_health_check: Instant,
    /// Mean task time per plugin key (exponentially weighted), for batching.
    task_time: HashMap<String, Duration>,
    pacer: Pacer,
    settings: Arc<LiveSettings>,
    /// When every worker's task will have run for
    /// [`WAITING_TASK`](super::scaler::WAITING_TASK), with tasks queued: one
    /// sample more then, between ticks. A burst that waits on the network
    /// then grows to demand 20 ms after its first tasks started, instead of
    /// at the first tick past that, up to 50 ms later (a tenth of a burst of
    /// 2,000 deliveries to a platform answering in 100 ms).
    io_check: Option<Instant>,
    /// Tasks assigned to workers and not reported done: the sum of every
    /// worker's `assigned`, kept as it changes. It is lowered with
    /// saturating subtraction: a drift, which `in_flight()`'s debug
    /// assertion reports in tests, must never wrap around in a release
    /// build into a demand that grows the pool to its maximum.
    in_flight: usize,
    /// The most tasks queued and in flight at once since the last sample.
    /// Demand peaks right after a submit, before workers take the tasks:
    /// a burst that workers finish between two samples never shows in
    /// either, and the scaler must not read the quiet between bursts as
    /// the load (see [`Sample::peak_demand`](super::scaler::Sample)).
    demand_peak: usize,
}

impl Dispatcher {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        config: PoolConfig,
        context: Arc<WorkerContext>,
        registry: Arc<Registry>,
        lifecycle: Arc<Lifecycle>,
        waiting: Arc<AtomicUsize>,
        events: mpsc::UnboundedSender<Event>,
        settings: Arc<LiveSettings>,
    ) -> Self {
        Dispatcher {
            scaler: Scaler::new(config.scaler()),
            router: Router::new(config.strategy),
            config,
            queue: WaitQueue::default(),
            workers: BTreeMap::new(),
            next_id: 0,
            events,
            context,
            registry,
            lifecycle,
            waiting,
            parked: Vec::new(),
            completed: 0,
            scale_events: VecDeque::new(),
            scale_event_count: 0,
            retired: Retired::default(),
            last_health_check: Instant::now(),
            task_time: HashMap::new(),
            pacer: Pacer::default(),
            settings,
            io_check: None,
            in_flight: 0,
            demand_peak: 0,
        }
    }

    pub(super) async fn run(
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
            let io_check = self.io_check.map(tokio::time::Instant::from_std);
            // Events first: a worker reports a platform's "slow down"
            // before the task's outcome is visible to anyone, so by the time
            // a caller can react (a submit, a `status`), the pause is here.
            tokio::select! {
                biased;
                Some(event) = events.recv() => self.on_event(event),
                command = commands.recv() => match command {
                    Some(Command::Submit(tasks)) => {
                        tasks.into_iter().for_each(|t| self.queue.push(t));
                        self.demand_peak = self.demand_peak.max(self.queue.len() + self.in_flight);
                    }
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
                _ = tokio::time::sleep_until(io_check.unwrap_or_else(tokio::time::Instant::now)), if io_check.is_some() => self.on_io_check(),
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
        debug_assert_eq!(
            self.in_flight,
            self.workers
                .values()
                .map(|w| w.assigned.len())
                .sum::<usize>(),
            "the count of tasks in flight drifted from the workers' assignments"
        );
        self.in_flight
    }

    /// Whether `task` may go now; if not, it joins its destination's backlog.
    fn admit(&mut self, task: &Arc<Task>, plugin: &LoadedPlugin, now: Instant) -> bool {
        let rules = self.settings.get().rate_rules(task, &plugin.info);
        if rules.is_empty() && self.pacer.is_empty() {
            return true;
        }
        let key = pace_key(task);
        if self.pacer.admit(&key, &rules, now) {
            return true;
        }
        self.pacer.hold(key, task.clone(), now);
        if let Some(m) = self.lifecycle.metrics() {
            m.paced(&task.platform);
        }
        false
    }

    /// The plugin for `task`. Without one, the task is parked while the
    /// start-up load is under way, and fails as having none after it.
    fn plugin_for(&mut self, task: &Arc<Task>) -> Option<Arc<LoadedPlugin>> {
        let plugin = self.registry.lookup(&task.platform);
        if plugin.is_none() {
            if !self.registry.is_ready() {
                self.parked.push(task.clone());
                return None;
            }
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            let message = format!("no loaded plugin serves platform `{}`", task.platform);
            self.lifecycle
                .fail_unrun(task, FailureClass::NoPlugin, message);
        }
        plugin
    }

    /// Gives waiting tasks to idle workers: first paced tasks whose turn has
    /// come (they have waited longest), then the queue.
    fn dispatch(&mut self) {
        let mut idle = IdleRound::new(
            self.workers
                .iter()
                .filter(|(_, w)| w.state == WorkerState::Idle)
                .map(|(id, _)| *id)
                .collect(),
        );
        let now = Instant::now();
        while !idle.is_empty() {
            let Some(task) = self.pacer.pop_ready(now) else {
                break;
            };
            if let Some(plugin) = self.plugin_for(&task) {
                let candidates = idle.candidates(&plugin.key, |ids| self.candidates(ids, &plugin));
                let chosen = self
                    .router
                    .pick(candidates)
                    .expect("candidates are not empty");
                idle.take(chosen);
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
            let candidates = idle.candidates(&plugin.key, |ids| self.candidates(ids, &plugin));
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
                .pick(candidates)
                .expect("candidates are not empty");
            idle.take(chosen);

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
                    // Read only where it counts: the default weight is a
                    // clock read, once per idle worker per plugin a round.
                    weight: match self.router.strategy() {
                        Strategy::Weighted => {
                            w.weight.unwrap_or_else(|| w.metrics.throughput().max(1.0))
                        }
                        _ => 1.0,
                    },
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
        let count = tasks.len();
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
        } else {
            self.in_flight += count;
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
                    self.completed += w.assigned.len() as u64;
                    self.in_flight = self.in_flight.saturating_sub(w.assigned.len());
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
            Event::HandedBack { task, key, wait } => {
                let now = Instant::now();
                if let Some(w) = self
                    .workers
                    .values_mut()
                    .find(|w| w.assigned.contains(&task.id))
                {
                    w.assigned.retain(|id| *id != task.id);
                    self.in_flight = self.in_flight.saturating_sub(1);
                }
                self.waiting.fetch_add(1, Ordering::AcqRel);
                if let Some(m) = self.lifecycle.metrics() {
                    m.paced(&task.platform);
                }
                self.pacer.hand_back(key, task, now + wait, now);
            }
            Event::Exited { worker } => {
                self.remove_worker(worker);
            }
        }
    }
}
