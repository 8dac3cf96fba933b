//! The task store: every accepted task, what became of each attempt, and
//! who is waiting for it.
//!
//! Live state is kept in memory (the task path never waits for a disk
//! read); with the durable store (the default) every change is also written
//! to the [`journal::Journal`] in `DATA_DIR/tasks.db`. A submit is
//! acknowledged only after its tasks are committed and fsynced; on start,
//! tasks that were queued, running or retrying are loaded back and run
//! again. The `memory` mode keeps nothing across restarts.
//!
//! Finished tasks stay in memory up to a cap (then only in the journal) and
//! are pruned from the journal after `retention`.

pub mod journal;

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

pub use self::journal::JournalError;
use self::journal::{Journal, Write};
use crate::registry::PluginRef;
use crate::retry::Verdict;
use crate::task::{Outcome, Task, TaskId, TaskState};

/// `[store]` in the config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `durable` (SQLite in the data directory) or `memory` (nothing survives
    /// a restart; no fsync).
    pub mode: StoreMode,
    /// Finished tasks are deleted after this.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// A second submit with the same idempotency key within this window
    /// returns the first task.
    #[serde(with = "humantime_serde")]
    pub idempotency_window: Duration,
    /// Finished tasks kept in memory for fast look-ups.
    pub max_finished_in_memory: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreMode {
    #[default]
    Durable,
    Memory,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            mode: StoreMode::Durable,
            retention: Duration::from_secs(7 * 24 * 3600),
            idempotency_window: Duration::from_secs(24 * 3600),
            max_finished_in_memory: 100_000,
        }
    }
}

/// One delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub number: u32,
    pub started_at: SystemTime,
    pub ended_at: Option<SystemTime>,
    pub outcome: Option<Outcome>,
    pub plugin: Option<PluginRef>,
}

/// A task and its history.
#[derive(Debug, Clone)]
pub struct TaskRecord {
    pub task: Arc<Task>,
    pub state: TaskState,
    pub submitted_at: SystemTime,
    /// Not to be run before this (scheduled, or waiting for a retry).
    pub not_before: Option<SystemTime>,
    pub started_at: Option<SystemTime>,
    pub finished_at: Option<SystemTime>,
    /// The last attempt's outcome.
    pub outcome: Option<Outcome>,
    /// The plugin version that handled the last attempt.
    pub plugin: Option<PluginRef>,
    /// Attempts started.
    pub attempts: u32,
    /// Attempts in order (may be empty for records read in bulk).
    pub history: Vec<Attempt>,
}

impl TaskRecord {
    pub fn new(task: Arc<Task>, submitted_at: SystemTime, not_before: Option<SystemTime>) -> Self {
        TaskRecord {
            task,
            state: TaskState::Queued,
            submitted_at,
            not_before,
            started_at: None,
            finished_at: None,
            outcome: None,
            plugin: None,
            attempts: 0,
            history: Vec::new(),
        }
    }
}

impl TaskRecord {
    /// Counts and records a new attempt starting `at`; returns its number.
    fn begin_attempt(&mut self, at: SystemTime) -> u32 {
        self.attempts += 1;
        self.history.push(Attempt {
            number: self.attempts,
            started_at: at,
            ended_at: None,
            outcome: None,
            plugin: None,
        });
        self.attempts
    }
}

/// A task loaded back at start, with the time it may run.
pub type Recovered = (Arc<Task>, Option<SystemTime>);

/// A task offered to the store.
pub struct Submission {
    pub task: Arc<Task>,
    pub not_before: Option<SystemTime>,
    pub idempotency_key: Option<String>,
}

/// What the store did with a submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    New(TaskId),
    /// The idempotency key was seen within the window: the first task's id.
    Duplicate(TaskId),
}

impl Accepted {
    pub fn id(self) -> TaskId {
        match self {
            Accepted::New(id) | Accepted::Duplicate(id) => id,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("no task {0}")]
    NotFound(TaskId),
    #[error("task {id} is {state}, not dead; only dead tasks can be retried")]
    NotDead { id: TaskId, state: &'static str },
}

struct Entry {
    record: TaskRecord,
    waiters: Vec<oneshot::Sender<TaskRecord>>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<TaskId, Entry>,
    finished: VecDeque<TaskId>,
    keys: HashMap<String, (TaskId, SystemTime)>,
}

/// The task store.
pub struct TaskStore {
    inner: Mutex<Inner>,
    journal: Option<Journal>,
    config: StoreConfig,
}

impl Default for TaskStore {
    fn default() -> Self {
        Self::in_memory(StoreConfig {
            mode: StoreMode::Memory,
            ..StoreConfig::default()
        })
    }
}

impl TaskStore {
    /// A store that keeps nothing across restarts.
    pub fn in_memory(config: StoreConfig) -> Self {
        TaskStore {
            inner: Mutex::default(),
            journal: None,
            config,
        }
    }

    /// Opens the store `config` asks for; a durable one lives at `path`.
    pub fn open(path: &Path, config: StoreConfig) -> Result<Self, StoreError> {
        match config.mode {
            StoreMode::Memory => Ok(Self::in_memory(config)),
            StoreMode::Durable => {
                let journal = Journal::open(path)?;
                let store = TaskStore {
                    inner: Mutex::default(),
                    journal: Some(journal),
                    config,
                };
                store.load_keys()?;
                Ok(store)
            }
        }
    }

    pub fn is_durable(&self) -> bool {
        self.journal.is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .expect("task store lock is never poisoned")
    }

    fn write(&self, write: Write) {
        if let Some(journal) = &self.journal {
            journal.write(write);
        }
    }

    fn load_keys(&self) -> Result<(), StoreError> {
        let Some(journal) = &self.journal else {
            return Ok(());
        };
        let since = SystemTime::now() - self.config.idempotency_window;
        let mut inner = self.lock();
        for (key, id, at) in journal.keys_since(since)? {
            inner.keys.insert(key, (id, at));
        }
        Ok(())
    }

    /// Records new tasks as queued; returns once they are durable. A task
    /// whose idempotency key was used within the window is not recorded
    /// again: its answer is the first task's id.
    pub async fn submit(&self, submissions: Vec<Submission>) -> Result<Vec<Accepted>, StoreError> {
        let now = SystemTime::now();
        let mut accepted = Vec::with_capacity(submissions.len());
        let mut added = Vec::new();
        {
            let mut inner = self.lock();
            for s in submissions {
                if let Some(key) = &s.idempotency_key {
                    if let Some((id, at)) = inner.keys.get(key)
                        && now.duration_since(*at).unwrap_or_default()
                            < self.config.idempotency_window
                    {
                        accepted.push(Accepted::Duplicate(*id));
                        continue;
                    }
                    inner.keys.insert(key.clone(), (s.task.id, now));
                }
                let record = TaskRecord::new(s.task.clone(), now, s.not_before);
                self.write(Write::Insert {
                    record: record.clone(),
                    key: s.idempotency_key.clone(),
                });
                inner.entries.insert(
                    s.task.id,
                    Entry {
                        record,
                        waiters: Vec::new(),
                    },
                );
                added.push((s.task.id, s.idempotency_key));
                accepted.push(Accepted::New(s.task.id));
            }
        }
        if let Some(journal) = &self.journal
            && let Err(e) = journal.sync().await
        {
            // Not durable, so not accepted: forget them.
            let mut inner = self.lock();
            for (id, key) in added {
                inner.entries.remove(&id);
                if let Some(key) = key {
                    inner.keys.remove(&key);
                }
            }
            return Err(e.into());
        }
        Ok(accepted)
    }

    /// Marks an attempt as started; returns its number.
    pub fn start(&self, id: TaskId) -> u32 {
        let now = SystemTime::now();
        let mut inner = self.lock();
        let Some(entry) = inner.entries.get_mut(&id) else {
            return 1;
        };
        let r = &mut entry.record;
        r.state = TaskState::Running;
        r.started_at = Some(now);
        r.begin_attempt(now)
    }

    /// Attempts started so far.
    pub fn attempts(&self, id: TaskId) -> u32 {
        self.lock()
            .entries
            .get(&id)
            .map_or(0, |e| e.record.attempts)
    }

    /// Records an attempt's outcome and the verdict on it.
    pub fn finish(
        &self,
        id: TaskId,
        outcome: Outcome,
        plugin: Option<PluginRef>,
        verdict: Verdict,
    ) {
        let now = SystemTime::now();
        let mut inner = self.lock();
        let Some(entry) = inner.entries.get_mut(&id) else {
            return;
        };
        let r = &mut entry.record;
        let (state, not_before) = match verdict {
            Verdict::Succeeded => (TaskState::Succeeded, None),
            Verdict::Dead => (TaskState::Dead, None),
            Verdict::Retry { after } => (TaskState::Retrying, Some(now + after)),
        };
        r.state = state;
        r.not_before = not_before;
        r.outcome = Some(outcome.clone());
        r.plugin = plugin.clone();
        if state.is_finished() {
            r.finished_at = Some(now);
        }
        if r.history.last().is_none_or(|a| a.ended_at.is_some()) {
            // Finished without a start (no plugin): record the attempt anyway.
            r.begin_attempt(now);
        }
        let attempt = r.history.last_mut().expect("just ensured");
        attempt.ended_at = Some(now);
        attempt.outcome = Some(outcome);
        attempt.plugin = plugin;
        self.write(Write::Finish {
            id,
            state,
            attempt: attempt.clone(),
            not_before,
        });
        if !state.is_finished() {
            return;
        }
        for waiter in entry.waiters.drain(..) {
            let _ = waiter.send(entry.record.clone());
        }
        inner.finished.push_back(id);
        while inner.finished.len() > self.config.max_finished_in_memory.max(1) {
            if let Some(old) = inner.finished.pop_front() {
                inner.entries.remove(&old);
            }
        }
    }

    /// Puts a task that was cut off (shutdown) or interrupted (crash) back
    /// to `queued`.
    pub fn requeue(&self, id: TaskId) {
        let mut inner = self.lock();
        if let Some(entry) = inner.entries.get_mut(&id) {
            entry.record.state = TaskState::Queued;
            entry.record.started_at = None;
            let attempts = entry.record.attempts;
            self.write(Write::Requeue {
                id,
                not_before: None,
                attempts,
            });
        }
    }

    /// Brings a dead task back to `queued` with a fresh count of attempts.
    pub fn retry(&self, id: TaskId) -> Result<Arc<Task>, StoreError> {
        let mut inner = self.lock();
        if let std::collections::hash_map::Entry::Vacant(e) = inner.entries.entry(id) {
            let record = match &self.journal {
                Some(journal) => journal.get(id)?,
                None => None,
            };
            let record = record.ok_or(StoreError::NotFound(id))?;
            e.insert(Entry {
                record,
                waiters: Vec::new(),
            });
        }
        let entry = inner.entries.get_mut(&id).expect("just ensured");
        let r = &mut entry.record;
        if r.state != TaskState::Dead {
            return Err(StoreError::NotDead {
                id,
                state: r.state.as_str(),
            });
        }
        r.state = TaskState::Queued;
        r.attempts = 0;
        r.not_before = None;
        r.finished_at = None;
        let task = r.task.clone();
        inner.finished.retain(|f| *f != id);
        self.write(Write::Requeue {
            id,
            not_before: None,
            attempts: 0,
        });
        Ok(task)
    }

    /// Ids of every dead task.
    pub fn dead(&self) -> Result<Vec<TaskId>, StoreError> {
        match &self.journal {
            Some(journal) => Ok(journal.dead()?),
            None => Ok(self
                .lock()
                .entries
                .values()
                .filter(|e| e.record.state == TaskState::Dead)
                .map(|e| e.record.task.id)
                .collect()),
        }
    }

    /// A task that is waiting to run (queued or retrying), for the scheduler.
    pub fn runnable(&self, id: TaskId) -> Option<Arc<Task>> {
        let inner = self.lock();
        let entry = inner.entries.get(&id)?;
        matches!(entry.record.state, TaskState::Queued | TaskState::Retrying)
            .then(|| entry.record.task.clone())
    }

    pub fn is_finished(&self, id: TaskId) -> bool {
        self.lock()
            .entries
            .get(&id)
            .is_some_and(|e| e.record.state.is_finished())
    }

    pub fn get(&self, id: TaskId) -> Result<Option<TaskRecord>, StoreError> {
        if let Some(entry) = self.lock().entries.get(&id) {
            return Ok(Some(entry.record.clone()));
        }
        match &self.journal {
            Some(journal) => Ok(journal.get(id)?),
            None => Ok(None),
        }
    }

    /// Tasks by state and platform, newest first.
    pub fn list(
        &self,
        state: Option<TaskState>,
        platform: Option<&str>,
        limit: usize,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        if let Some(journal) = &self.journal {
            return Ok(journal.list(state, platform, limit)?);
        }
        let inner = self.lock();
        let mut records: Vec<TaskRecord> = inner
            .entries
            .values()
            .map(|e| &e.record)
            .filter(|r| {
                state.is_none_or(|s| r.state == s) && platform.is_none_or(|p| r.task.platform == p)
            })
            .cloned()
            .collect();
        records.sort_by_key(|r| std::cmp::Reverse(r.submitted_at));
        records.truncate(limit);
        Ok(records)
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

    /// Loads the tasks that were not finished when the daemon last stopped
    /// (interrupted attempts go back to `queued`) and returns them with the
    /// time each may run.
    pub fn recover(&self) -> Result<Vec<Recovered>, StoreError> {
        let Some(journal) = &self.journal else {
            return Ok(Vec::new());
        };
        let unfinished = journal.unfinished()?;
        let mut inner = self.lock();
        let mut out = Vec::with_capacity(unfinished.len());
        for (mut record, _) in unfinished {
            if record.state == TaskState::Running {
                record.state = TaskState::Queued;
                self.write(Write::Requeue {
                    id: record.task.id,
                    not_before: None,
                    attempts: record.attempts,
                });
            }
            out.push((record.task.clone(), record.not_before));
            inner.entries.insert(
                record.task.id,
                Entry {
                    record,
                    waiters: Vec::new(),
                },
            );
        }
        Ok(out)
    }

    /// Deletes finished tasks older than the retention, and forgets
    /// idempotency keys older than their window.
    pub fn prune(&self) {
        let now = SystemTime::now();
        let window = self.config.idempotency_window;
        self.lock()
            .keys
            .retain(|_, (_, at)| now.duration_since(*at).unwrap_or_default() < window);
        self.write(Write::Prune {
            before: now - self.config.retention,
        });
    }

    /// Drops every waiter, so clients waiting on tasks that will not finish
    /// in this process get an answer instead of hanging (at shutdown).
    pub fn abandon_waiters(&self) {
        for entry in self.lock().entries.values_mut() {
            entry.waiters.clear();
        }
    }

    /// Waits until every change so far is durable (at shutdown).
    pub async fn flush(&self) -> Result<(), StoreError> {
        match &self.journal {
            Some(journal) => Ok(journal.sync().await?),
            None => Ok(()),
        }
    }
}
