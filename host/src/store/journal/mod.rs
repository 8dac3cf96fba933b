//! The durable journal: tasks and attempts in SQLite, written with group
//! commit.
//!
//! Why SQLite (through `rusqlite`, compiled in): it is the most tested
//! embedded database there is, its WAL mode with `synchronous = FULL` makes
//! a commit durable once `COMMIT` returns (the WAL is fsynced), and SQL makes
//! the inspection commands (`tasks --state dead --platform slack`) one
//! query each.
//!
//! All writes go to one writer thread. It takes every write that is waiting
//! (up to [`MAX_GROUP_ROWS`]) and commits them in one transaction, so concurrent
//! and batched submits share one fsync and durability does not cap
//! throughput; a few outcomes alone wait a moment for more (see the
//! writer). A submit's rows travel in one [`Op::Submit`] with its
//! acknowledgement, so they are always in the same transaction as the
//! answer: the acknowledgement says whether *that* transaction committed,
//! and a failed commit fails every submit in it. An attempt's outcome does
//! not wait: losing one in a crash (or a failed commit) means the task is
//! delivered again (at least once). How many can be lost is bounded, not
//! left to the disk's speed: a worker takes an [`OutcomeRoom`] before it
//! records an outcome, and the room is given back only once the commit
//! holding that outcome is done, so at most `[store] max_unsynced_outcomes`
//! outcomes are ever uncommitted. A slow fsync slows the
//! workers down instead of growing what a crash delivers twice: at most the
//! running tasks plus that many. An attempt is written when it ends, with
//! its start time; a running task is `queued` on disk, so an attempt cut off
//! by a crash is simply run again and leaves no record.
//!
//! After a failed commit the journal is *unavailable*: [`Journal::health`]
//! says why, and the store refuses new submits with that reason instead of
//! queueing them behind writes that are failing. While unavailable, the
//! writer probes with a one-row write every [`PROBE_EVERY`]; the first write
//! that commits (a probe, or an outcome) makes it available again.
//!
//! Attempts are history: rows are only ever added (`INSERT OR IGNORE`, keyed
//! by task and number, and numbers only go up, across restarts and revivals
//! by `retry` too). One attempt has no row of its own: a first attempt that
//! finishes its task, which is most tasks' only one. Its task's row keeps
//! its outcome, plugin and end anyway, so only its start is added there
//! (`first_started_at`), and [`Journal::get`] reads it back as attempt 1.
//! A row and a key of its own cost ~0.9 µs of the writer's 7.4 µs a
//! durable no-op (`cargo bench -p notifyhub --bench store`). Should the
//! task come back (`retry` on a dead task), that attempt is copied into
//! `attempts` in the same transaction, before the task's row forgets it.

#[cfg(test)]
mod list_model;
mod schema;
#[cfg(test)]
mod tests;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use self::schema::{
    DUE_BETWEEN, KEYS_SINCE, NEWEST_IN, PLATFORMS_IN_STATE, RECORD, RECORD_BY_ID, SCHEMA, UNTIMED,
};
use self::writer::write_loop;
use super::time::DueTime;
use super::{Attempt, TaskRecord};
use crate::plugin::PluginRef;
use crate::task::{Outcome, Task, TaskId, TaskState};

/// A transaction takes no more writes once it holds this many rows (a
/// submit's rows are never split). An outcome's room comes back only after
/// the commit holding it, and a commit of everything waiting — several
/// batched submits behind the outcomes — made the workers wait for rooms:
/// with 2,048, durable no-ops went from 90.9–94.3k/s to 94.9–98.7k/s
/// (alternating runs of `cargo bench -p notifyhub --bench store`; 1,024
/// made commits too small, 86–88k/s; 4,096 gave 88–96k/s).
const MAX_GROUP_ROWS: usize = 2_048;
/// The page size of a new store (SQLite's default is 4 KiB). Larger pages
/// make a large commit cheaper per row (fewer pages to find, split and
/// frame) and a small one dearer (a commit writes every page it changed
/// whole, and a task's rows change the last page of every index). 8 KiB,
/// with the larger WAL below and room for 2,048 unsynced outcomes: 1.29×
/// the durable no-ops of before (`cargo bench -p notifyhub --bench store`),
/// webhooks as fast and as cheap (`--bench e2e`); 16 KiB made small
/// commits dearer.
const PAGE_SIZE: i64 = 8 * 1024;
/// How much the WAL holds before a commit copies it back into the store
/// (SQLite's default is 1,000 pages). A page changed by many commits is
/// copied back once per checkpoint, so a larger WAL copies less; the file
/// is cut back to twice this after a checkpoint.
const WAL_BYTES: i64 = 32 * 1024 * 1024;
/// How often an unavailable journal tries a write of its own.
pub const PROBE_EVERY: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot open the task store {path}: {error}")]
    Open {
        path: PathBuf,
        error: rusqlite::Error,
    },
    #[error("the task store could not be written: {0}")]
    Write(String),
    #[error("the task store could not be read: {0}")]
    Read(#[from] rusqlite::Error),
    #[error("the task store's writer has stopped")]
    Stopped,
    #[error(
        "the task store cannot be written ({0}); no new tasks are accepted until a write succeeds"
    )]
    Unavailable(String),
}

/// A new task's row.
pub(super) struct Insert {
    pub record: TaskRecord,
    pub key: Option<String>,
}

/// An [`Insert`] as the writer binds it, encoded by [`Journal::submit`] on
/// the submitter's thread: every commit goes through the one writer thread,
/// so work that need not happen there is done before (the JSON was 5 % of
/// its time for durable no-ops).
struct Row {
    id: String,
    platform: String,
    state: &'static str,
    attempts: u32,
    submitted_at: i64,
    not_before: Option<i64>,
    key: Option<String>,
    task: String,
}

impl From<Insert> for Row {
    fn from(Insert { record, key }: Insert) -> Row {
        Row {
            id: record.task.id.to_string(),
            platform: record.task.platform.clone(),
            state: record.state.as_str(),
            attempts: record.attempts,
            submitted_at: millis(record.submitted_at),
            not_before: record.not_before.map(millis),
            key,
            task: json(&*record.task),
        }
    }
}

/// An attempt's outcome and plugin, as JSON. Encoded by the worker that
/// records the outcome before it takes the store's lock, for the same
/// reason as [`Row`] (and so the lock is not held for it either).
pub(super) struct EncodedOutcome {
    outcome: String,
    plugin: Option<String>,
}

impl EncodedOutcome {
    pub fn new(outcome: &Outcome, plugin: Option<&PluginRef>) -> Self {
        EncodedOutcome {
            outcome: json(outcome),
            plugin: plugin.map(json),
        }
    }
}

/// An attempt that has ended, as [`Write::Finish`] records it.
pub(super) struct EndedAttempt {
    pub number: u32,
    pub started_at: SystemTime,
    pub ended_at: SystemTime,
    pub outcome: EncodedOutcome,
}

/// A change to the journal.
pub(super) enum Write {
    Finish {
        id: TaskId,
        state: TaskState,
        attempt: EndedAttempt,
        not_before: Option<SystemTime>,
    },
    Requeue {
        id: TaskId,
        not_before: Option<SystemTime>,
    },
    /// A dead task brought back by `retry`: its attempts so far stay.
    Revive {
        id: TaskId,
        revived_at: u32,
    },
    Prune {
        before: SystemTime,
    },
}

enum Op {
    Write(Box<Write>),
    /// New tasks, answered once the transaction holding them has committed
    /// (or has failed).
    Submit {
        rows: Vec<Row>,
        ack: oneshot::Sender<Result<(), String>>,
    },
    /// Answered once everything sent before it is committed.
    Sync(oneshot::Sender<Result<(), String>>),
    /// An [`OutcomeRoom`]'s permit, given back once everything sent before
    /// it (its outcome) is committed.
    Release(OwnedSemaphorePermit),
}

impl Op {
    /// The rows this op writes, as [`MAX_GROUP_ROWS`] counts them: an
    /// attempt's end as two (the task's row and the attempt's, the count
    /// the bound was measured with), though a first attempt that finishes
    /// its task writes the task's row only.
    fn rows(&self) -> usize {
        match self {
            Op::Write(write) => match **write {
                Write::Finish { .. } => 2,
                _ => 1,
            },
            Op::Submit { rows, .. } => rows.len(),
            Op::Sync(_) | Op::Release(_) => 0,
        }
    }
}

/// Room for one outcome not yet committed (see the module's guide): taken
/// before the outcome is written, and given back when dropped, but only
/// once everything written before the drop has committed (or failed).
#[must_use = "the room bounds uncommitted outcomes only while it is held across the write"]
pub struct OutcomeRoom {
    permit: Option<OwnedSemaphorePermit>,
    writes: mpsc::Sender<Op>,
}

impl Drop for OutcomeRoom {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            // The writer's channel is first in, first out: the permit comes
            // back in the commit of the outcome written before it, or a
            // later one. A stopped writer drops it at once.
            let _ = self.writes.send(Op::Release(permit));
        }
    }
}

/// Whether the last commit succeeded, shared by the writer and the store.
#[derive(Debug, Default)]
struct Health {
    failure: Mutex<Option<String>>,
}

impl Health {
    fn set(&self, result: &Result<(), String>) {
        let mut failure = self.failure.lock().expect("never poisoned");
        match (result, failure.is_some()) {
            (Ok(()), true) => {
                tracing::info!("the task store can be written again; accepting tasks");
                *failure = None;
            }
            (Err(e), _) => *failure = Some(e.clone()),
            (Ok(()), false) => {}
        }
    }
}

/// Told the duration and size (writes) of every commit, for metrics.
pub type CommitObserver = Arc<dyn Fn(Duration, usize) + Send + Sync>;

/// The journal: a writer thread and a reading connection.
pub struct Journal {
    writes: mpsc::Sender<Op>,
    reader: Mutex<Connection>,
    health: Arc<Health>,
    /// Permits for outcomes not yet committed ([`OutcomeRoom`]).
    unsynced: Arc<Semaphore>,
}

fn open(path: &Path) -> Result<Connection, JournalError> {
    let err = |error| JournalError::Open {
        path: path.into(),
        error,
    };
    let conn = Connection::open(path).map_err(err)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(err)?;
    // Only a new store takes the page size (an existing one keeps its own).
    conn.pragma_update(None, "page_size", PAGE_SIZE)
        .map_err(err)?;
    conn.execute_batch(SCHEMA).map_err(err)?;
    let page_size: i64 = conn
        .pragma_query_value(None, "page_size", |row| row.get(0))
        .map_err(err)?;
    conn.pragma_update(None, "wal_autocheckpoint", WAL_BYTES / page_size.max(512))
        .map_err(err)?;
    conn.pragma_update(None, "journal_size_limit", 2 * WAL_BYTES)
        .map_err(err)?;
    // Columns that stores made before lack: `revived_at` (before `retry`
    // kept history), `first_started_at` (before a first attempt that
    // finishes its task stayed in the task's row).
    for (column, definition) in [
        ("revived_at", "INTEGER NOT NULL DEFAULT 0"),
        ("first_started_at", "INTEGER"),
    ] {
        let present: bool = conn
            .prepare("SELECT 1 FROM pragma_table_info('tasks') WHERE name = ?1")
            .and_then(|mut s| s.exists([column]))
            .map_err(err)?;
        if !present {
            conn.execute_batch(&format!(
                "ALTER TABLE tasks ADD COLUMN {column} {definition}"
            ))
            .map_err(err)?;
        }
    }
    // Durable on COMMIT: the WAL is fsynced before COMMIT returns.
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(err)?;
    Ok(conn)
}

pub(super) fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn time(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("store values serialize")
}

impl Journal {
    /// Opens (or creates) the store at `path` and starts its writer; at most
    /// `unsynced_outcomes` outcomes (at least one) are ever uncommitted.
    pub fn open(
        path: &Path,
        observer: Option<CommitObserver>,
        unsynced_outcomes: usize,
    ) -> Result<Journal, JournalError> {
        let writer = open(path)?;
        let reader = open(path)?;
        let (tx, rx) = mpsc::channel();
        let health = Arc::new(Health::default());
        let unsynced = Arc::new(Semaphore::new(
            unsynced_outcomes.clamp(1, Semaphore::MAX_PERMITS),
        ));
        let (writer_health, rooms) = (health.clone(), unsynced.clone());
        std::thread::Builder::new()
            .name("notifyhub-store".into())
            .spawn(move || write_loop(writer, rx, &writer_health, &rooms, observer))
            .map_err(|e| JournalError::Write(e.to_string()))?;
        Ok(Journal {
            writes: tx,
            reader: Mutex::new(reader),
            health,
            unsynced,
        })
    }

    /// Waits for room to write one more outcome (see [`OutcomeRoom`]).
    pub async fn room_for_outcome(&self) -> OutcomeRoom {
        let permit = self
            .unsynced
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        OutcomeRoom {
            permit: Some(permit),
            writes: self.writes.clone(),
        }
    }

    pub(super) fn write(&self, write: Write) {
        let _ = self.writes.send(Op::Write(Box::new(write)));
    }

    /// `Err` with the reason while the last commit failed.
    pub fn health(&self) -> Result<(), JournalError> {
        match &*self.health.failure.lock().expect("never poisoned") {
            None => Ok(()),
            Some(e) => Err(JournalError::Unavailable(e.clone())),
        }
    }

    /// Writes new tasks; returns once the transaction that holds them has
    /// committed. Refused at once while the journal is unavailable.
    pub(super) async fn submit(&self, inserts: Vec<Insert>) -> Result<(), JournalError> {
        self.health()?;
        let rows = inserts.into_iter().map(Row::from).collect();
        let (ack, rx) = oneshot::channel();
        self.writes
            .send(Op::Submit { rows, ack })
            .map_err(|_| JournalError::Stopped)?;
        rx.await
            .map_err(|_| JournalError::Stopped)?
            .map_err(JournalError::Unavailable)
    }

    /// Waits until every write sent so far is durable.
    pub async fn sync(&self) -> Result<(), JournalError> {
        let (tx, rx) = oneshot::channel();
        self.writes
            .send(Op::Sync(tx))
            .map_err(|_| JournalError::Stopped)?;
        rx.await
            .map_err(|_| JournalError::Stopped)?
            .map_err(JournalError::Write)
    }

    fn reader(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.reader.lock().expect("never poisoned")
    }

    /// Tasks not finished and due by `until` (and after `after`, when
    /// given): at start, what the daemon must hold in memory; later, the
    /// tasks parked in the journal that have come within reach. Tasks
    /// without a time are due at once, so they count only without `after`.
    pub(super) fn unfinished(
        &self,
        after: Option<DueTime>,
        until: DueTime,
    ) -> Result<Vec<(TaskRecord, Option<String>)>, JournalError> {
        let conn = self.reader();
        let mut timed = conn.prepare_cached(DUE_BETWEEN)?;
        let mut untimed = conn.prepare_cached(UNTIMED)?;
        let row = |row: &rusqlite::Row<'_>| {
            let task: String = row.get(0)?;
            let state: String = row.get(1)?;
            Ok((
                task,
                state,
                row.get::<_, u32>(2)?,
                row.get::<_, i64>(3)?,
                row.get::<_, Option<i64>>(4)?,
                row.get::<_, Option<String>>(5)?,
                row.get::<_, u32>(6)?,
            ))
        };
        let mut rows = timed
            .query_map(
                params![after.map_or(i64::MIN, DueTime::millis), until.millis()],
                row,
            )?
            .collect::<Result<Vec<_>, _>>()?;
        if after.is_none() {
            rows.extend(untimed.query_map([], row)?.collect::<Result<Vec<_>, _>>()?);
        }
        let mut out = Vec::new();
        for (task, state, attempts, submitted, not_before, key, revived_at) in rows {
            let Ok(task) = serde_json::from_str::<Task>(&task) else {
                continue;
            };
            let mut record = TaskRecord::new(task.into(), time(submitted), not_before.map(time));
            record.attempts = attempts;
            record.revived_at = revived_at;
            record.state = state.parse().unwrap_or(TaskState::Queued);
            out.push((record, key));
        }
        Ok(out)
    }

    /// Idempotency keys used since `since`.
    pub(super) fn keys_since(
        &self,
        since: SystemTime,
    ) -> Result<Vec<(String, TaskId, SystemTime)>, JournalError> {
        let conn = self.reader();
        let mut stmt = conn.prepare(KEYS_SINCE)?;
        let rows = stmt.query_map([millis(since)], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, i64>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (key, id, at) = row?;
            if let Ok(id) = id.parse() {
                out.push((key, id, time(at)));
            }
        }
        Ok(out)
    }

    /// One task with its attempts.
    pub(super) fn get(&self, id: TaskId) -> Result<Option<TaskRecord>, JournalError> {
        let conn = self.reader();
        let found = conn
            .query_row(RECORD_BY_ID, [id.to_string()], |row| {
                Ok((record_from_row(row)?, row.get::<_, Option<i64>>(9)?))
            })
            .optional()?;
        let Some((Some(mut record), first_started_at)) = found else {
            return Ok(None);
        };
        let mut stmt = conn.prepare(
            "SELECT n, started_at, ended_at, outcome, plugin FROM attempts WHERE task_id = ?1 ORDER BY n",
        )?;
        let attempts = stmt.query_map([id.to_string()], |row| {
            Ok(Attempt {
                number: row.get(0)?,
                started_at: time(row.get(1)?),
                ended_at: row.get::<_, Option<i64>>(2)?.map(time),
                outcome: row
                    .get::<_, Option<String>>(3)?
                    .and_then(|s| serde_json::from_str(&s).ok()),
                plugin: row
                    .get::<_, Option<String>>(4)?
                    .and_then(|s| serde_json::from_str(&s).ok()),
            })
        })?;
        record.history = attempts.collect::<Result<_, _>>()?;
        // A first attempt that finished the task is in the task's row only.
        if let Some(started_at) = first_started_at
            && record.history.first().is_none_or(|a| a.number != 1)
        {
            let first = Attempt {
                number: 1,
                started_at: time(started_at),
                ended_at: record.finished_at,
                outcome: record.outcome.clone(),
                plugin: record.plugin.clone(),
            };
            record.history.insert(0, first);
        }
        Ok(Some(record))
    }

    /// The newest `limit` tasks, of `state` and `platform` where given:
    /// the newest `limit` of each state and platform that match, merged
    /// (see [`NEWEST_IN`]), then the rows of those that made the cut.
    pub(super) fn list(
        &self,
        state: Option<TaskState>,
        platform: Option<&str>,
        limit: usize,
    ) -> Result<Vec<TaskRecord>, JournalError> {
        let conn = self.reader();
        let states = match state {
            Some(state) => vec![state],
            None => TaskState::ALL.to_vec(),
        };
        let mut newest = conn.prepare_cached(NEWEST_IN)?;
        let mut platforms_in = conn.prepare_cached(PLATFORMS_IN_STATE)?;
        // (submitted_at, rowid): a batch's tasks share their millisecond,
        // and the later row is the later task.
        let mut found: Vec<(i64, i64)> = Vec::new();
        for state in states {
            let state = state.as_str();
            let platforms = match platform {
                Some(platform) => vec![platform.to_owned()],
                None => platforms_in
                    .query_map([state], |row| row.get::<_, String>(0))?
                    .collect::<Result<_, _>>()?,
            };
            for platform in platforms {
                let rows = newest.query_map(params![state, platform, limit as i64], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })?;
                for row in rows {
                    found.push(row?);
                }
            }
        }
        found.sort_unstable_by_key(|key| std::cmp::Reverse(*key));
        found.truncate(limit);
        let mut record = conn.prepare_cached(RECORD)?;
        let mut records = Vec::with_capacity(found.len());
        for (_, rowid) in found {
            // Gone since the merge (pruned), or unreadable: not listed.
            if let Some(Some(r)) = record.query_row([rowid], record_from_row).optional()? {
                records.push(r);
            }
        }
        Ok(records)
    }

    /// Ids of dead tasks.
    pub(super) fn dead(&self) -> Result<Vec<TaskId>, JournalError> {
        let conn = self.reader();
        let mut stmt = conn.prepare("SELECT id FROM tasks WHERE state = 'dead'")?;
        let ids = stmt.query_map([], |row| row.get::<_, String>(0))?;
        Ok(ids.filter_map(|id| id.ok()?.parse().ok()).collect())
    }
}

/// A task's record from a row of [`RECORD`] or [`RECORD_BY_ID`] (their
/// first columns); `None` for a task that no longer decodes.
fn record_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Option<TaskRecord>> {
    let task: String = row.get(0)?;
    let Ok(task) = serde_json::from_str::<Task>(&task) else {
        return Ok(None);
    };
    let state: String = row.get(1)?;
    let mut record = TaskRecord::new(
        task.into(),
        time(row.get(3)?),
        row.get::<_, Option<i64>>(4)?.map(time),
    );
    record.state = state.parse().unwrap_or(TaskState::Queued);
    record.attempts = row.get(2)?;
    record.finished_at = row.get::<_, Option<i64>>(5)?.map(time);
    record.outcome = row
        .get::<_, Option<String>>(6)?
        .and_then(|s| serde_json::from_str::<Outcome>(&s).ok());
    record.plugin = row
        .get::<_, Option<String>>(7)?
        .and_then(|s| serde_json::from_str::<PluginRef>(&s).ok());
    record.revived_at = row.get(8)?;
    Ok(Some(record))
}
