//! A stream of task events, as they happen, for `watch`.
//!
//! The store publishes every state change (queued, running, retrying,
//! succeeded, dead) on one broadcast channel of [`EVENTS_BUFFERED`] events,
//! under the same lock that makes the change, so watchers see changes in
//! the order they happened. Publishing never waits: a watcher that reads
//! slower than tasks change falls behind, and once it is more than the
//! buffer behind, the oldest events it has not read are dropped for it —
//! it is told how many (and `status` counts them) — while delivery goes on
//! at full speed. With no watcher, no event is even built.

use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::broadcast;

use crate::task::{Outcome, Task, TaskState};

/// Events kept for a watcher that falls behind.
pub const EVENTS_BUFFERED: usize = 4096;

/// One change of one task's state.
#[derive(Debug, Clone)]
pub struct TaskEvent {
    pub task: Arc<Task>,
    pub state: TaskState,
    /// The attempt the change belongs to (0 before the first).
    pub attempt: u32,
    pub at: SystemTime,
    /// The attempt's outcome, for retrying, succeeded and dead.
    pub outcome: Option<Outcome>,
}

/// The sending side, owned by the store.
pub(super) struct Events {
    sender: broadcast::Sender<TaskEvent>,
}

impl Events {
    pub(super) fn new() -> Self {
        Events {
            sender: broadcast::Sender::new(EVENTS_BUFFERED),
        }
    }

    /// Publishes the event `make` builds, if anyone is watching.
    pub(super) fn publish(&self, make: impl FnOnce() -> TaskEvent) {
        if self.sender.receiver_count() > 0 {
            let _ = self.sender.send(make());
        }
    }

    pub(super) fn subscribe(&self) -> broadcast::Receiver<TaskEvent> {
        self.sender.subscribe()
    }

    pub(super) fn watchers(&self) -> usize {
        self.sender.receiver_count()
    }
}
