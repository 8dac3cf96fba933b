//! The task store: every accepted task and what became of it.
//!
//! This is the in-memory store of the working slice: tasks survive as long as
//! the process does. Finished tasks are kept up to a cap and then forgotten
//! oldest first, so the store does not grow without bound. It is the only
//! place that knows task states; the pool reports transitions to it and
//! clients read from it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::oneshot;

use crate::registry::PluginRef;
use crate::task::{Outcome, Task, TaskId, TaskState};

/// Finished tasks kept for `task` look-ups by default.
pub const DEFAULT_MAX_FINISHED: usize = 100_000;

/// A task and its history.
#[derive(Debug, Clone)]
pub struct TaskRecord {
    pub task: Arc<Task>,
    pub state: TaskState,
    pub submitted_at: SystemTime,
    pub started_at: Option<SystemTime>,
    pub finished_at: Option<SystemTime>,
    pub outcome: Option<Outcome>,
    /// The plugin version that handled the last attempt.
    pub plugin: Option<PluginRef>,
}

struct Entry {
    record: TaskRecord,
    waiters: Vec<oneshot::Sender<TaskRecord>>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<TaskId, Entry>,
    finished: VecDeque<TaskId>,
}

/// The in-memory task store.
pub struct TaskStore {
    inner: Mutex<Inner>,
    max_finished: usize,
}

impl Default for TaskStore {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FINISHED)
    }
}

impl TaskStore {
    pub fn new(max_finished: usize) -> Self {
        TaskStore { inner: Mutex::default(), max_finished: max_finished.max(1) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("task store lock is never poisoned")
    }

    /// Records newly accepted tasks as queued.
    pub fn insert(&self, tasks: &[Arc<Task>]) {
        let now = SystemTime::now();
        let mut inner = self.lock();
        for task in tasks {
            let record = TaskRecord {
                task: task.clone(),
                state: TaskState::Queued,
                submitted_at: now,
                started_at: None,
                finished_at: None,
                outcome: None,
                plugin: None,
            };
            inner.entries.insert(task.id, Entry { record, waiters: Vec::new() });
        }
    }

    pub fn mark_running(&self, id: TaskId) {
        if let Some(entry) = self.lock().entries.get_mut(&id) {
            entry.record.state = TaskState::Running;
            entry.record.started_at = Some(SystemTime::now());
        }
    }

    /// Records the final outcome and wakes everyone waiting for it.
    pub fn finish(&self, id: TaskId, outcome: Outcome, plugin: Option<PluginRef>) {
        let mut inner = self.lock();
        let Some(entry) = inner.entries.get_mut(&id) else { return };
        entry.record.state =
            if outcome.is_success() { TaskState::Succeeded } else { TaskState::Failed };
        entry.record.finished_at = Some(SystemTime::now());
        entry.record.outcome = Some(outcome);
        entry.record.plugin = plugin;
        for waiter in entry.waiters.drain(..) {
            let _ = waiter.send(entry.record.clone());
        }
        inner.finished.push_back(id);
        while inner.finished.len() > self.max_finished {
            if let Some(old) = inner.finished.pop_front() {
                inner.entries.remove(&old);
            }
        }
    }

    /// Puts a task that was cut off back to `queued`.
    pub fn requeue(&self, id: TaskId) {
        if let Some(entry) = self.lock().entries.get_mut(&id) {
            entry.record.state = TaskState::Queued;
            entry.record.started_at = None;
        }
    }

    pub fn is_finished(&self, id: TaskId) -> bool {
        self.lock().entries.get(&id).is_some_and(|e| e.record.state.is_finished())
    }

    pub fn get(&self, id: TaskId) -> Option<TaskRecord> {
        self.lock().entries.get(&id).map(|e| e.record.clone())
    }

    /// A receiver that yields the record once the task has finished (at once
    /// if it already has). `None` for an unknown task.
    pub fn wait(&self, id: TaskId) -> Option<oneshot::Receiver<TaskRecord>> {
        let mut inner = self.lock();
        let entry = inner.entries.get_mut(&id)?;
        let (tx, rx) = oneshot::channel();
        if entry.record.state.is_finished() {
            let _ = tx.send(entry.record.clone());
        } else {
            entry.waiters.push(tx);
        }
        Some(rx)
    }

    /// Drops every waiter, so clients waiting on tasks that will not finish
    /// in this process get an answer instead of hanging (at shutdown).
    pub fn abandon_waiters(&self) {
        for entry in self.lock().entries.values_mut() {
            entry.waiters.clear();
        }
    }
}
