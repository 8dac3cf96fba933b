//! The scheduler: holds tasks until they may run (a `deliver_at`, a retry's
//! backoff, a recovered backlog) and then queues them in the pool. Tasks due
//! beyond the store's memory horizon are not here but parked in the store's
//! journal; [`Scheduler::unpark`] brings them in as they come within it.
//!
//! A min-heap of (due time, task) and one tokio task that sleeps until the
//! earliest is due, then hands due tasks to the dispatcher through the
//! pool's [`Intake`] (the same door submits use). When the pool's queue is
//! full, due tasks wait here and are offered again shortly, so accepted
//! tasks are never dropped for lack of queue space.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::Intake;
use crate::store::TaskStore;
use crate::task::TaskId;

/// How long due tasks wait before being offered again to a full queue.
const FULL_QUEUE_PAUSE: Duration = Duration::from_millis(100);

#[derive(Default)]
pub struct Scheduler {
    due: Mutex<BinaryHeap<Reverse<(SystemTime, TaskId)>>>,
    changed: Notify,
}

impl Scheduler {
    /// Queues `id` in the pool at `at` (at once if `at` has passed).
    pub fn schedule(&self, id: TaskId, at: SystemTime) {
        self.due
            .lock()
            .expect("never poisoned")
            .push(Reverse((at, id)));
        self.changed.notify_one();
    }

    /// Moves due tasks into the pool until `shutdown`.
    pub async fn run(
        self: Arc<Self>,
        store: Arc<TaskStore>,
        pool: Arc<Intake>,
        shutdown: CancellationToken,
    ) {
        loop {
            let next = self.release_due(&store, &pool);
            let sleep = match next {
                Some(at) => at.duration_since(SystemTime::now()).unwrap_or_default(),
                None => Duration::from_secs(3600),
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.changed.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    }

    /// Brings tasks parked in the store's journal into memory and into the
    /// schedule as they come within the store's memory horizon, until
    /// `shutdown`.
    pub async fn unpark(self: Arc<Self>, store: Arc<TaskStore>, shutdown: CancellationToken) {
        let mut every = tokio::time::interval(store.unpark_every());
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = every.tick() => {}
            }
            match store.unpark().await {
                Ok(due) => {
                    if !due.is_empty() {
                        tracing::debug!(
                            tasks = due.len(),
                            "scheduled tasks read back from the store"
                        );
                    }
                    for (task, at) in due {
                        self.schedule(task.id, at);
                    }
                }
                Err(e) => tracing::warn!("cannot read scheduled tasks back from the store: {e}"),
            }
        }
    }

    /// Queues every due task; returns when the next one is due.
    fn release_due(&self, store: &TaskStore, pool: &Intake) -> Option<SystemTime> {
        let now = SystemTime::now();
        let mut due = self.due.lock().expect("never poisoned");
        while let Some(Reverse((at, id))) = due.peek().copied() {
            if at > now {
                return Some(at);
            }
            due.pop();
            // A task retried or finished meanwhile is no longer runnable.
            let Some(task) = store.runnable(id) else {
                continue;
            };
            if pool.enqueue(&[task]).is_err() {
                due.push(Reverse((now + FULL_QUEUE_PAUSE, id)));
                return Some(now + FULL_QUEUE_PAUSE);
            }
        }
        None
    }
}
