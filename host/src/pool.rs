//! The worker pool: a fixed number of workers taking tasks from one queue.
//!
//! Workers are tokio tasks, not threads: a delivery mostly waits on the
//! network, so one worker per in-flight delivery is cheap and the default
//! keeps [`PoolConfig::workers`] deliveries in flight. The queue is bounded;
//! when it is full, submits are refused with `busy` rather than buffered
//! without limit. Each worker looks the plugin up when it starts a task, so a
//! task runs on whatever version is loaded at that moment.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::executor::Executor;
use crate::registry::Registry;
use crate::store::TaskStore;
use crate::task::{FailureClass, Outcome, Task, TaskId};

/// Pool settings (`[pool]` in the config file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// Workers, i.e. deliveries in flight at once.
    pub workers: usize,
    /// Tasks waiting for a worker before submits are refused.
    pub queue_capacity: usize,
    /// How long a graceful shutdown waits for in-flight tasks.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig { workers: 64, queue_capacity: 100_000, shutdown_timeout: Duration::from_secs(10) }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EnqueueError {
    #[error("the queue is full ({0} tasks waiting); try again later")]
    Full(usize),
    #[error("the pool is shutting down")]
    Closed,
}

/// A worker's counters, shared with `status`.
struct WorkerSlot {
    id: usize,
    started: Instant,
    processed: AtomicU64,
    errors: AtomicU64,
    current: Mutex<Option<(TaskId, String)>>,
    last_activity: Mutex<Option<SystemTime>>,
}

/// One worker as `status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerStats {
    pub id: usize,
    pub state: WorkerState,
    pub processed: u64,
    pub errors: u64,
    pub uptime_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_task: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_platform: Option<String>,
    /// When the worker last finished a task (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_activity: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    Idle,
    Processing,
}

/// The pool as `status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolStats {
    pub workers: usize,
    pub queued: usize,
    pub in_flight: usize,
    pub processed: u64,
    pub errors: u64,
    pub per_worker: Vec<WorkerStats>,
}

/// What a shutdown achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShutdownReport {
    /// In-flight tasks that finished during the shutdown.
    pub finished: usize,
    /// In-flight tasks cut off at the timeout.
    pub cancelled: usize,
    /// Tasks still waiting in the queue.
    pub left_queued: usize,
}

struct Shared {
    executor: Arc<Executor>,
    registry: Arc<Registry>,
    store: Arc<TaskStore>,
    in_flight: AtomicUsize,
}

/// A running pool.
pub struct Pool {
    queue: async_channel::Sender<Arc<Task>>,
    receiver: async_channel::Receiver<Arc<Task>>,
    slots: Vec<Arc<WorkerSlot>>,
    workers: tokio::sync::Mutex<JoinSet<()>>,
    shared: Arc<Shared>,
    config: PoolConfig,
}

impl Pool {
    pub fn start(
        config: PoolConfig,
        executor: Arc<Executor>,
        registry: Arc<Registry>,
        store: Arc<TaskStore>,
    ) -> Self {
        let (queue, receiver) = async_channel::bounded(config.queue_capacity.max(1));
        let shared = Arc::new(Shared { executor, registry, store, in_flight: AtomicUsize::new(0) });
        let mut workers = JoinSet::new();
        let slots: Vec<Arc<WorkerSlot>> = (0..config.workers.max(1))
            .map(|id| {
                Arc::new(WorkerSlot {
                    id,
                    started: Instant::now(),
                    processed: AtomicU64::new(0),
                    errors: AtomicU64::new(0),
                    current: Mutex::new(None),
                    last_activity: Mutex::new(None),
                })
            })
            .collect();
        for slot in &slots {
            workers.spawn(work(slot.clone(), receiver.clone(), shared.clone()));
        }
        tracing::info!(workers = slots.len(), queue = config.queue_capacity, "worker pool started");
        Pool { queue, receiver, slots, workers: tokio::sync::Mutex::new(workers), shared, config }
    }

    /// Queues tasks for delivery. All or nothing: if the queue cannot take
    /// every task, none is queued.
    pub fn enqueue(&self, tasks: &[Arc<Task>]) -> Result<(), EnqueueError> {
        if self.queue.is_closed() {
            return Err(EnqueueError::Closed);
        }
        let free = self.config.queue_capacity.saturating_sub(self.queue.len());
        if tasks.len() > free {
            return Err(EnqueueError::Full(self.queue.len()));
        }
        for task in tasks {
            self.queue.try_send(task.clone()).map_err(|e| match e {
                async_channel::TrySendError::Full(_) => EnqueueError::Full(self.queue.len()),
                async_channel::TrySendError::Closed(_) => EnqueueError::Closed,
            })?;
        }
        Ok(())
    }

    pub fn stats(&self) -> PoolStats {
        let per_worker: Vec<WorkerStats> = self
            .slots
            .iter()
            .map(|slot| {
                let current = slot.current.lock().expect("never poisoned").clone();
                WorkerStats {
                    id: slot.id,
                    state: if current.is_some() { WorkerState::Processing } else { WorkerState::Idle },
                    processed: slot.processed.load(Ordering::Relaxed),
                    errors: slot.errors.load(Ordering::Relaxed),
                    uptime_ms: slot.started.elapsed().as_millis() as u64,
                    current_task: current.as_ref().map(|(id, _)| id.to_string()),
                    current_platform: current.map(|(_, p)| p),
                    last_activity: slot
                        .last_activity
                        .lock()
                        .expect("never poisoned")
                        .map(|t| humantime::format_rfc3339_millis(t).to_string()),
                }
            })
            .collect();
        PoolStats {
            workers: self.slots.len(),
            queued: self.queue.len(),
            in_flight: self.shared.in_flight.load(Ordering::Relaxed),
            processed: per_worker.iter().map(|w| w.processed).sum(),
            errors: per_worker.iter().map(|w| w.errors).sum(),
            per_worker,
        }
    }

    /// Stops taking tasks, lets in-flight ones finish for up to
    /// `shutdown_timeout`, then cancels the rest.
    pub async fn shutdown(&self) -> ShutdownReport {
        let mut workers = self.workers.lock().await;
        self.queue.close();
        // Workers must not pick up queued tasks while draining.
        let left_queued = self.receiver.len();
        while self.receiver.try_recv().is_ok() {}
        let in_flight = self.shared.in_flight.load(Ordering::Relaxed);
        let drained = tokio::time::timeout(self.config.shutdown_timeout, async {
            while workers.join_next().await.is_some() {}
        })
        .await;
        let cancelled = if drained.is_ok() {
            0
        } else {
            let still_running = self.shared.in_flight.load(Ordering::Relaxed);
            workers.shutdown().await;
            still_running
        };
        let report = ShutdownReport { finished: in_flight - cancelled, cancelled, left_queued };
        tracing::info!(?report, "worker pool stopped");
        report
    }
}

async fn work(slot: Arc<WorkerSlot>, queue: async_channel::Receiver<Arc<Task>>, shared: Arc<Shared>) {
    while let Ok(task) = queue.recv().await {
        shared.in_flight.fetch_add(1, Ordering::Relaxed);
        *slot.current.lock().expect("never poisoned") = Some((task.id, task.platform.clone()));
        let span = tracing::info_span!("task", task = %task.id, platform = %task.platform);
        let success = deliver(&task, &shared).instrument(span).await;
        slot.processed.fetch_add(1, Ordering::Relaxed);
        if !success {
            slot.errors.fetch_add(1, Ordering::Relaxed);
        }
        *slot.current.lock().expect("never poisoned") = None;
        *slot.last_activity.lock().expect("never poisoned") = Some(SystemTime::now());
        shared.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs one task and records its outcome; returns whether it succeeded.
async fn deliver(task: &Task, shared: &Shared) -> bool {
    shared.store.mark_running(task.id);
    let (outcome, plugin) = match shared.registry.lookup(&task.platform) {
        Some(plugin) => {
            let outcome = shared.executor.send(&plugin, task).await;
            (outcome, Some(plugin.version_ref()))
        }
        None => (
            Outcome::failed(
                FailureClass::NoPlugin,
                format!("no loaded plugin serves platform `{}`", task.platform),
            ),
            None,
        ),
    };
    let plugin_name = plugin.as_ref().map_or("-", |p| p.name.as_str());
    match &outcome {
        Outcome::Delivered { status, .. } => {
            tracing::info!(plugin = plugin_name, status = %status, "delivered")
        }
        Outcome::Failed { class, message, .. } => {
            tracing::warn!(plugin = plugin_name, ?class, "delivery failed: {message}")
        }
    }
    let success = outcome.is_success();
    shared.store.finish(task.id, outcome, plugin);
    success
}
