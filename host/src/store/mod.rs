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
//!
//! **A backlog on disk.** Memory holds what is in flight, due soon or
//! waited on — not every task accepted. With the durable store, a task
//! scheduled beyond the memory horizon (`[store] memory_horizon`, 1 minute)
//! is *parked*: written to the journal only, and read back by
//! [`TaskStore::unpark`] (every quarter horizon) through a partial index on
//! the due time. `backlog` keeps the watermark and its invariant; `time`
//! is the one precision every stored time is kept and compared at. Ten
//! million reminders cost their rows on disk, not gigabytes of memory
//! (`cargo bench -p notifyhub --bench backlog`). `task` and `tasks` read a
//! parked task from the journal like any other, through indexes.
//!
//! The parts: [`TaskRecord`] (`record`) is what is kept of a task;
//! `attempts` is a task's life once accepted (start, finish, revive);
//! `config` is the `[store]` section; `events` feeds `watch`; `journal` is
//! the SQLite file and its writer thread.
//!
//! Nothing here blocks an async thread: reads of the journal (a task no
//! longer in memory, a listing) run on the blocking pool, and writes go to
//! the journal's own thread. A submit is answered from the transaction that
//! holds its rows; while the journal cannot be written, submits are refused
//! with [`StoreError::Unavailable`] (see `journal`).

mod attempts;
mod backlog;
mod config;
pub mod events;
pub mod journal;
#[cfg(test)]
mod keys_model;
#[cfg(test)]
mod model;
mod record;
#[cfg(test)]
mod retry_model;
mod time;
mod waits;

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::oneshot;

use self::backlog::Backlog;
pub use self::config::{StoreConfig, StoreMode};
use self::events::Events;
pub use self::events::TaskEvent;
pub use self::journal::{CommitObserver, JournalError};
use self::journal::{Insert, Journal, OutcomeRoom, Write};
pub use self::record::{Attempt, AttemptCount, TaskRecord};
use self::time::DueTime;
use crate::task::{Task, TaskId, TaskState};

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
    /// Recorded and held in memory: the caller schedules or queues it.
    New(TaskId),
    /// Recorded, and parked in the journal until it comes within the
    /// memory horizon: [`TaskStore::unpark`] hands it to the scheduler, and
    /// nobody else may (decided under the store's lock, so a concurrent
    /// `unpark` and the submit never both schedule it).
    Parked(TaskId),
    /// The idempotency key was seen within the window: the first task's id.
    Duplicate(TaskId),
}

impl Accepted {
    pub fn id(self) -> TaskId {
        match self {
            Accepted::New(id) | Accepted::Parked(id) | Accepted::Duplicate(id) => id,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Nothing was accepted; the store may take tasks again later.
    #[error("{0}")]
    Unavailable(JournalError),
    #[error(transparent)]
    Journal(JournalError),
    #[error("no task {0}")]
    NotFound(TaskId),
    #[error("task {id} is {state}, not dead; only dead tasks can be retried")]
    NotDead { id: TaskId, state: &'static str },
}

struct Entry {
    record: TaskRecord,
    waiters: Vec<oneshot::Sender<TaskRecord>>,
    /// A task taken over from the broker ([`TaskStore::take_over`]): its
    /// waiters are answered after one attempt, whatever the verdict, and
    /// the task is then forgotten here, since the broker holds its retry.
    one_attempt: bool,
}

impl Entry {
    fn new(record: TaskRecord) -> Self {
        Entry {
            record,
            waiters: Vec::new(),
            one_attempt: false,
        }
    }
}

struct Inner {
    entries: HashMap<TaskId, Entry>,
    finished: VecDeque<TaskId>,
    keys: HashMap<String, (TaskId, SystemTime)>,
    /// Which unfinished tasks are in `entries` and which are parked in the
    /// journal (see `backlog` and [`TaskStore::unpark`]).
    backlog: Backlog,
    /// Waiters for parked tasks, handed to each task's entry when `unpark`
    /// brings it into memory (see `waits`).
    parked_waiters: HashMap<TaskId, Vec<oneshot::Sender<TaskRecord>>>,
}

impl Inner {
    /// Every unfinished task due by `watermark` will be in memory.
    fn new(watermark: SystemTime) -> Self {
        Inner {
            entries: HashMap::new(),
            finished: VecDeque::new(),
            keys: HashMap::new(),
            backlog: Backlog::new(DueTime::floor(watermark)),
            parked_waiters: HashMap::new(),
        }
    }
}

/// The task store.
pub struct TaskStore {
    inner: Mutex<Inner>,
    journal: Option<Arc<Journal>>,
    config: StoreConfig,
    events: Events,
    /// Held (shared) by a submit from deciding to park tasks until they are
    /// committed; [`TaskStore::unpark`] takes it alone once to know that
    /// every task parked under the old watermark is in the journal.
    parking: tokio::sync::RwLock<()>,
}

impl From<JournalError> for StoreError {
    fn from(e: JournalError) -> Self {
        match e {
            JournalError::Unavailable(_) | JournalError::Write(_) => StoreError::Unavailable(e),
            other => StoreError::Journal(other),
        }
    }
}

/// Runs a journal read on the blocking pool.
async fn read<T: Send + 'static>(
    journal: &Arc<Journal>,
    f: impl FnOnce(&Journal) -> Result<T, JournalError> + Send + 'static,
) -> Result<T, StoreError> {
    let journal = journal.clone();
    tokio::task::spawn_blocking(move || f(&journal))
        .await
        .map_err(|e| StoreError::Journal(JournalError::Write(format!("a store read failed: {e}"))))?
        .map_err(StoreError::from)
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
            inner: Mutex::new(Inner::new(SystemTime::now())),
            journal: None,
            config,
            events: Events::new(),
            parking: tokio::sync::RwLock::new(()),
        }
    }

    /// Opens the store `config` asks for; a durable one lives at `path`
    /// and tells `observer` about each commit.
    pub fn open(
        path: &Path,
        config: StoreConfig,
        observer: Option<CommitObserver>,
    ) -> Result<Self, StoreError> {
        match config.mode {
            StoreMode::Memory => Ok(Self::in_memory(config)),
            StoreMode::Durable => {
                let journal = Journal::open(path, observer, config.max_unsynced_outcomes)?;
                let store = TaskStore {
                    inner: Mutex::new(Inner::new(SystemTime::now() + config.memory_horizon)),
                    journal: Some(Arc::new(journal)),
                    config,
                    events: Events::new(),
                    parking: tokio::sync::RwLock::new(()),
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

    /// Waits until one more outcome may be written without exceeding
    /// `[store] max_unsynced_outcomes`: hold the answer across
    /// [`TaskStore::finish`]. A crash then delivers again at most the
    /// running tasks plus that many (see `journal`). `None` for the memory
    /// store, which loses everything in a crash anyway.
    pub async fn room_for_outcome(&self) -> Option<OutcomeRoom> {
        Some(self.journal.as_ref()?.room_for_outcome().await)
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
    /// again: its answer is the first task's id. Refused as a whole, with
    /// nothing recorded, when the journal cannot be written.
    ///
    /// With the durable store, a task due after the memory horizon is
    /// parked: written to the journal only, and loaded back by
    /// [`TaskStore::unpark`] before it is due ([`Accepted::Parked`]: the
    /// caller must not schedule it).
    pub async fn submit(&self, submissions: Vec<Submission>) -> Result<Vec<Accepted>, StoreError> {
        self.submit_with(submissions, true).await
    }

    /// [`TaskStore::submit`] keeping every task in memory, for a caller
    /// about to [`TaskStore::wait`] on them.
    pub async fn submit_and_keep(
        &self,
        submissions: Vec<Submission>,
    ) -> Result<Vec<Accepted>, StoreError> {
        self.submit_with(submissions, false).await
    }

    async fn submit_with(
        &self,
        submissions: Vec<Submission>,
        may_park: bool,
    ) -> Result<Vec<Accepted>, StoreError> {
        if let Some(journal) = &self.journal {
            journal.health()?;
        }
        let parking = match (&self.journal, may_park) {
            (Some(_), true) => Some(self.parking.read().await),
            _ => None,
        };
        // At the journal's precision: a key's claim is compared with it.
        let now = time::recorded(SystemTime::now());
        let mut accepted = Vec::with_capacity(submissions.len());
        let mut added = Vec::new();
        let mut inserts = Vec::new();
        let mut parked_events = Vec::new();
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
                // Kept, and compared, at the precision the journal keeps.
                let not_before = s.not_before.map(time::stored);
                let record = TaskRecord::new(s.task.clone(), now, not_before);
                let park =
                    parking.is_some() && inner.backlog.parks(not_before.map(DueTime::at_or_after));
                if park {
                    if self.events.watchers() > 0 {
                        parked_events.push(event(&record, now));
                    }
                } else {
                    inner.entries.insert(s.task.id, Entry::new(record.clone()));
                }
                if self.journal.is_some() {
                    inserts.push(Insert {
                        record,
                        key: s.idempotency_key.clone(),
                    });
                }
                added.push((s.task.id, s.idempotency_key));
                accepted.push(if park {
                    Accepted::Parked(s.task.id)
                } else {
                    Accepted::New(s.task.id)
                });
            }
        }
        if let Some(journal) = &self.journal
            && !inserts.is_empty()
            && let Err(e) = journal.submit(inserts).await
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
        // Times are read under the lock, so events are in time order.
        let inner = self.lock();
        let now = SystemTime::now();
        for (id, _) in &added {
            if let Some(entry) = inner.entries.get(id) {
                self.events.publish(|| event(&entry.record, now));
            }
        }
        for parked in parked_events {
            self.events.publish(|| parked);
        }
        Ok(accepted)
    }

    /// How often [`TaskStore::unpark`] should run: a quarter of the memory
    /// horizon, so a parked task is in memory well before it is due.
    pub fn unpark_every(&self) -> Duration {
        self.config.memory_horizon / 4
    }

    /// Moves the watermark to now + the memory horizon and loads the
    /// parked tasks that it passed; returns them with the time each is due,
    /// for the scheduler. Nothing to do for a store in memory.
    pub async fn unpark(&self) -> Result<Vec<(Arc<Task>, SystemTime)>, StoreError> {
        let Some(journal) = &self.journal else {
            return Ok(Vec::new());
        };
        let to = DueTime::floor(SystemTime::now() + self.config.memory_horizon);
        let Some(window) = self.lock().backlog.advance(to) else {
            return Ok(Vec::new());
        };
        // From here on no submit parks a task due by `to`; once the submits
        // that parked under the old watermark have committed, the journal
        // holds every task there is to load.
        drop(self.parking.write().await);
        let loaded = match read(journal, move |j| {
            j.unfinished(Some(window.after), window.until)
        })
        .await
        {
            Ok(loaded) => loaded,
            Err(e) => {
                // Try the same window again next time.
                self.lock().backlog.retreat(window);
                return Err(e);
            }
        };
        let mut inner = self.lock();
        // Waits given up on while their tasks were parked leave nothing.
        inner.parked_waiters.retain(|_, waiters| {
            waiters.retain(|waiter| !waiter.is_closed());
            !waiters.is_empty()
        });
        let mut due = Vec::with_capacity(loaded.len());
        for (mut record, _) in loaded {
            let id = record.task.id;
            if inner.entries.contains_key(&id) {
                continue;
            }
            self.resume(&mut record);
            due.push((
                record.task.clone(),
                record.not_before.unwrap_or(window.until.to_system()),
            ));
            let waiters = inner.parked_waiters.remove(&id).unwrap_or_default();
            inner.entries.insert(
                id,
                Entry {
                    waiters,
                    ..Entry::new(record)
                },
            );
        }
        Ok(due)
    }

    /// Takes over a task whose attempts so far another host (or an earlier
    /// delivery) counted in `record`, for one attempt: the receiver yields
    /// the record once that attempt has ended, finished or to be retried.
    /// Kept in memory only: the broker is where such a task is durable.
    ///
    /// `None` while an attempt of the task is already in flight here (the
    /// broker delivered the same message again): that attempt answers for
    /// it, and the task never runs twice at once on one host.
    pub fn take_over(&self, record: TaskRecord) -> Option<oneshot::Receiver<TaskRecord>> {
        let id = record.task.id;
        let mut inner = self.lock();
        if inner
            .entries
            .get(&id)
            .is_some_and(|entry| !entry.record.state.is_finished())
        {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        self.events.publish(|| event(&record, SystemTime::now()));
        inner.entries.insert(
            id,
            Entry {
                record,
                waiters: vec![tx],
                one_attempt: true,
            },
        );
        Some(rx)
    }

    /// A receiver of every task event from now on (see `events`).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<TaskEvent> {
        self.events.subscribe()
    }

    /// How many watchers are subscribed.
    pub fn watchers(&self) -> usize {
        self.events.watchers()
    }

    /// The record of `id` if it is in memory (tasks not finished always are).
    pub fn cached(&self, id: TaskId) -> Option<TaskRecord> {
        self.lock().entries.get(&id).map(|e| e.record.clone())
    }

    /// When `id` was submitted, if it is in memory.
    pub fn submitted_at(&self, id: TaskId) -> Option<SystemTime> {
        self.lock().entries.get(&id).map(|e| e.record.submitted_at)
    }

    /// Ids of every dead task.
    pub async fn dead(&self) -> Result<Vec<TaskId>, StoreError> {
        match &self.journal {
            Some(journal) => read(journal, |j| j.dead()).await,
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

    /// One task with all its attempts: from memory, else from the journal,
    /// or both for a task loaded back at start.
    pub async fn get(&self, id: TaskId) -> Result<Option<TaskRecord>, StoreError> {
        let cached = self.cached(id);
        let Some(journal) = &self.journal else {
            return Ok(cached);
        };
        if let Some(record) = cached.as_ref().filter(|r| r.history_complete) {
            return Ok(Some(record.clone()));
        }
        let stored = read(journal, move |j| j.get(id)).await?;
        Ok(match (cached, stored) {
            (Some(mut live), Some(stored)) => {
                let known = stored.history.last().map_or(0, |a| a.number);
                let newer = live.history.drain(..).filter(|a| a.number > known);
                live.history = stored.history.into_iter().chain(newer).collect();
                Some(live)
            }
            (live, stored) => live.or(stored),
        })
    }

    /// Tasks by state and platform, newest first.
    ///
    /// With a journal, the list is read from it once every write sent so
    /// far has landed: an outcome already answered to a client (outcomes
    /// are answered before their commit) is listed in its new state.
    pub async fn list(
        &self,
        state: Option<TaskState>,
        platform: Option<String>,
        limit: usize,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        if let Some(journal) = &self.journal {
            // A failed commit is for `health` to report; the list shows what
            // the journal holds.
            let _ = journal.sync().await;
            return read(journal, move |j| j.list(state, platform.as_deref(), limit)).await;
        }
        let inner = self.lock();
        let mut records: Vec<TaskRecord> = inner
            .entries
            .values()
            .map(|e| &e.record)
            .filter(|r| {
                state.is_none_or(|s| r.state == s)
                    && platform.as_deref().is_none_or(|p| r.task.platform == p)
            })
            .cloned()
            .collect();
        records.sort_by_key(|r| std::cmp::Reverse(r.submitted_at));
        records.truncate(limit);
        Ok(records)
    }

    /// Loads the tasks that were not finished when the daemon last stopped
    /// and are due within the memory horizon (interrupted attempts go back
    /// to `queued`) and returns them with the time each may run.
    pub async fn recover(&self) -> Result<Vec<Recovered>, StoreError> {
        let Some(journal) = &self.journal else {
            return Ok(Vec::new());
        };
        // Tasks due beyond the horizon stay parked: `unpark` brings them.
        let until = DueTime::floor(SystemTime::now() + self.config.memory_horizon);
        let unfinished = read(journal, move |j| j.unfinished(None, until)).await?;
        let mut inner = self.lock();
        // The scheduler's `unpark` may have run meanwhile: keep its
        // watermark if it is later, and what it loaded (and scheduled).
        inner.backlog.recovered(until);
        let mut out = Vec::with_capacity(unfinished.len());
        for (mut record, _) in unfinished {
            if inner.entries.contains_key(&record.task.id) {
                continue;
            }
            self.resume(&mut record);
            out.push((record.task.clone(), record.not_before));
            inner.entries.insert(record.task.id, Entry::new(record));
        }
        Ok(out)
    }

    /// Readies a record read back from the journal (at start, or parked):
    /// it carries only this run's attempts from here on, and an attempt a
    /// crash cut off goes back to `queued`.
    fn resume(&self, record: &mut TaskRecord) {
        record.history_complete = record.attempts == 0;
        if record.state == TaskState::Running {
            record.state = TaskState::Queued;
            self.write(Write::Requeue {
                id: record.task.id,
                not_before: None,
            });
        }
    }

    /// Deletes finished tasks older than the retention, and forgets
    /// idempotency keys older than their window.
    pub fn prune(&self) {
        let now = time::recorded(SystemTime::now());
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
        let mut inner = self.lock();
        for entry in inner.entries.values_mut() {
            entry.waiters.clear();
        }
        inner.parked_waiters.clear();
    }

    /// Waits until every change so far is durable (at shutdown).
    pub async fn flush(&self) -> Result<(), StoreError> {
        match &self.journal {
            Some(journal) => Ok(journal.sync().await?),
            None => Ok(()),
        }
    }
}

/// The event for `record`'s current state.
fn event(record: &TaskRecord, at: SystemTime) -> TaskEvent {
    TaskEvent {
        task: record.task.clone(),
        state: record.state,
        attempt: record.attempts,
        at,
        outcome: match record.state {
            TaskState::Queued | TaskState::Running => None,
            _ => record.outcome.clone(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::{Outcome, Verdict};

    /// A broker message delivered twice while its attempt runs here is
    /// taken once: the task never runs twice at once on one host.
    #[test]
    fn a_task_in_flight_is_taken_over_once() {
        let store = TaskStore::in_memory(StoreConfig::default());
        let task = Arc::new(Task::text("webhook", "t", "b"));
        let record = || TaskRecord::new(task.clone(), SystemTime::now(), None);
        let first = store.take_over(record());
        assert!(first.is_some());
        assert!(store.take_over(record()).is_none());
        assert_eq!(store.start(task.id).number, 1);
        let retry_here = store.finish(
            task.id,
            Outcome::failed(crate::task::FailureClass::Retryable, "again"),
            None,
            Verdict::Retry {
                after: Duration::from_secs(1),
            },
        );
        assert!(!retry_here, "the broker schedules its retry");
        // Its attempt ended (to be retried by the broker): the next delivery
        // is taken.
        assert!(store.take_over(record()).is_some());
    }

    /// Waits given up on (their receivers dropped) leave nothing behind on
    /// a task that has not finished; the one still waiting is answered.
    #[tokio::test]
    async fn abandoned_waits_do_not_pile_up() -> anyhow::Result<()> {
        let store = TaskStore::in_memory(StoreConfig::default());
        let task = Arc::new(Task::text("webhook", "t", "b"));
        let id = task.id;
        store
            .submit_and_keep(vec![Submission {
                task,
                not_before: None,
                idempotency_key: Some("k".into()),
            }])
            .await?;
        for _ in 0..1_000 {
            drop(store.wait(id).expect("known task"));
        }
        let kept = store.wait(id).expect("known task");
        let waiters = store.lock().entries[&id].waiters.len();
        assert_eq!(
            waiters, 1,
            "waiters kept for 1,000 abandoned waits and one live"
        );
        store.start(id);
        let delivered = Outcome::Delivered {
            provider_id: None,
            status: "ok".into(),
        };
        let _ = store.finish(id, delivered, None, Verdict::Succeeded);
        assert_eq!(kept.await?.state, TaskState::Succeeded);
        Ok(())
    }
}
