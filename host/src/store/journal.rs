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
//! (up to [`MAX_GROUP`]) and commits them in one transaction, so concurrent
//! and batched submits share one fsync and durability does not cap
//! throughput. A submit's rows travel in one [`Op::Submit`] with its
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
//! by `retry` too).

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use super::time::DueTime;
use super::{Attempt, TaskRecord};
use crate::plugin::PluginRef;
use crate::task::{Outcome, Task, TaskId, TaskState};

/// Most writes committed in one transaction.
const MAX_GROUP: usize = 50_000;
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

/// A change to the journal.
pub(super) enum Write {
    Finish {
        id: TaskId,
        state: TaskState,
        attempt: Attempt,
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
        inserts: Vec<Insert>,
        ack: oneshot::Sender<Result<(), String>>,
    },
    /// Answered once everything sent before it is committed.
    Sync(oneshot::Sender<Result<(), String>>),
    /// An [`OutcomeRoom`]'s permit, given back once everything sent before
    /// it (its outcome) is committed.
    Release(OwnedSemaphorePermit),
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

const SCHEMA: &str = "
    PRAGMA journal_mode = WAL;
    CREATE TABLE IF NOT EXISTS tasks (
        id TEXT PRIMARY KEY,
        platform TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        submitted_at INTEGER NOT NULL,
        not_before INTEGER,
        finished_at INTEGER,
        idempotency_key TEXT,
        task TEXT NOT NULL,
        outcome TEXT,
        plugin TEXT,
        revived_at INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX IF NOT EXISTS tasks_by_state ON tasks (state, platform, submitted_at);
    CREATE INDEX IF NOT EXISTS tasks_by_state_time ON tasks (state, submitted_at);
    CREATE INDEX IF NOT EXISTS tasks_by_time ON tasks (submitted_at);
    CREATE INDEX IF NOT EXISTS tasks_by_platform_time ON tasks (platform, submitted_at);
    -- Only tasks with a time enter the due index: most tasks have none and
    -- finish within milliseconds, and keeping them out of it halves the cost
    -- of a task's writes. (`tasks_by_due` indexed them all; stores made
    -- before this drop it.)
    --
    -- Unfinished is `state NOT IN ('succeeded', 'dead')`: SQLite checks an
    -- IN list of three or more through a temporary table, built for every
    -- row a statement writes (four per outcome, two per submit); two values
    -- are compared one by one. (`tasks_by_due_time` and `tasks_untimed`
    -- said `IN ('queued', 'running', 'retrying')`; stores made before this
    -- drop them and build these once.)
    DROP INDEX IF EXISTS tasks_by_due;
    DROP INDEX IF EXISTS tasks_by_due_time;
    DROP INDEX IF EXISTS tasks_untimed;
    CREATE INDEX IF NOT EXISTS tasks_due ON tasks (not_before)
        WHERE not_before IS NOT NULL AND state NOT IN ('succeeded', 'dead');
    CREATE INDEX IF NOT EXISTS tasks_by_key ON tasks (idempotency_key) WHERE idempotency_key IS NOT NULL;
    -- What a start resumes besides what comes due: unfinished tasks without
    -- a time. Through the state index, that read walked every task parked
    -- for later too (all `queued`): a restart on ten million scheduled
    -- tasks took seconds before the socket answered.
    CREATE INDEX IF NOT EXISTS tasks_unfinished_untimed ON tasks (submitted_at)
        WHERE not_before IS NULL AND state NOT IN ('succeeded', 'dead');
    CREATE TABLE IF NOT EXISTS attempts (
        task_id TEXT NOT NULL,
        n INTEGER NOT NULL,
        started_at INTEGER NOT NULL,
        ended_at INTEGER,
        outcome TEXT,
        plugin TEXT,
        PRIMARY KEY (task_id, n)
    );
    CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
";

/// Unfinished tasks due in `(?1, ?2]`, in time order: a range read of
/// `tasks_due`, named because the planner would otherwise pick
/// `tasks_by_state_time` and sort the lot.
const DUE_BETWEEN: &str =
    "SELECT task, state, attempts, submitted_at, not_before, idempotency_key, revived_at
    FROM tasks INDEXED BY tasks_due
    WHERE not_before IS NOT NULL AND state NOT IN ('succeeded', 'dead')
      AND not_before > ?1 AND not_before <= ?2 ORDER BY not_before";

/// Unfinished tasks without a time, through their own partial index (an
/// OR with [`DUE_BETWEEN`] would scan the table, and the state index walks
/// the tasks parked for later too).
const UNTIMED: &str =
    "SELECT task, state, attempts, submitted_at, not_before, idempotency_key, revived_at
    FROM tasks INDEXED BY tasks_unfinished_untimed
    WHERE not_before IS NULL AND state NOT IN ('succeeded', 'dead')";

/// Idempotency keys used since `?1`, read at start: through the keys'
/// partial index, which holds only keyed tasks. Left to itself the planner
/// takes the time index for the range and walks every task of the window
/// (a restart on millions of tasks without keys spent its time there).
const KEYS_SINCE: &str =
    "SELECT idempotency_key, id, submitted_at FROM tasks INDEXED BY tasks_by_key
    WHERE idempotency_key IS NOT NULL AND submitted_at >= ?1";

/// The statement [`Journal::list`] runs for a filter: one per filter, so
/// each is answered from an index in `LIMIT` steps.
fn list_statement(state: bool, platform: bool) -> String {
    let filter = match (state, platform) {
        (true, true) => "WHERE state = ?1 AND platform = ?2",
        (true, false) => "WHERE state = ?1 AND ?2 IS NULL",
        (false, true) => "WHERE ?1 IS NULL AND platform = ?2",
        (false, false) => "WHERE ?1 IS NULL AND ?2 IS NULL",
    };
    format!(
        "SELECT task, state, attempts, submitted_at, not_before, finished_at, outcome, plugin, revived_at
         FROM tasks {filter} ORDER BY submitted_at DESC LIMIT ?3"
    )
}

fn open(path: &Path) -> Result<Connection, JournalError> {
    let err = |error| JournalError::Open {
        path: path.into(),
        error,
    };
    let conn = Connection::open(path).map_err(err)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(err)?;
    conn.execute_batch(SCHEMA).map_err(err)?;
    // Stores made before `retry` kept history had no `revived_at`.
    let has_revived: bool = conn
        .prepare("SELECT 1 FROM pragma_table_info('tasks') WHERE name = 'revived_at'")
        .and_then(|mut s| s.exists([]))
        .map_err(err)?;
    if !has_revived {
        conn.execute_batch("ALTER TABLE tasks ADD COLUMN revived_at INTEGER NOT NULL DEFAULT 0")
            .map_err(err)?;
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
        let writer_health = health.clone();
        std::thread::Builder::new()
            .name("notifyhub-store".into())
            .spawn(move || write_loop(writer, rx, &writer_health, observer))
            .map_err(|e| JournalError::Write(e.to_string()))?;
        Ok(Journal {
            writes: tx,
            reader: Mutex::new(reader),
            health,
            unsynced: Arc::new(Semaphore::new(
                unsynced_outcomes.clamp(1, Semaphore::MAX_PERMITS),
            )),
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
        let (ack, rx) = oneshot::channel();
        self.writes
            .send(Op::Submit { inserts, ack })
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
        let record = conn
            .query_row(
                "SELECT task, state, attempts, submitted_at, not_before, finished_at, outcome, plugin, revived_at
                 FROM tasks WHERE id = ?1",
                [id.to_string()],
                record_from_row,
            )
            .optional()?;
        let Some(mut record) = record.flatten() else {
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
        Ok(Some(record))
    }

    /// Tasks by state and platform, newest first (see [`list_statement`]).
    pub(super) fn list(
        &self,
        state: Option<TaskState>,
        platform: Option<&str>,
        limit: usize,
    ) -> Result<Vec<TaskRecord>, JournalError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&list_statement(state.is_some(), platform.is_some()))?;
        let rows = stmt.query_map(
            params![state.map(TaskState::as_str), platform, limit as i64],
            record_from_row,
        )?;
        Ok(rows.filter_map(|r| r.ok().flatten()).collect())
    }

    /// Ids of dead tasks.
    pub(super) fn dead(&self) -> Result<Vec<TaskId>, JournalError> {
        let conn = self.reader();
        let mut stmt = conn.prepare("SELECT id FROM tasks WHERE state = 'dead'")?;
        let ids = stmt.query_map([], |row| row.get::<_, String>(0))?;
        Ok(ids.filter_map(|id| id.ok()?.parse().ok()).collect())
    }
}

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

fn write_loop(
    mut conn: Connection,
    ops: mpsc::Receiver<Op>,
    health: &Health,
    observer: Option<CommitObserver>,
) {
    loop {
        let unavailable = health.failure.lock().expect("never poisoned").is_some();
        let first = if unavailable {
            match ops.recv_timeout(PROBE_EVERY) {
                Ok(op) => op,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    health.set(&probe(&mut conn).map_err(|e| e.to_string()));
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        } else {
            match ops.recv() {
                Ok(op) => op,
                Err(_) => return,
            }
        };
        let mut batch = vec![first];
        while batch.len() < MAX_GROUP {
            match ops.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        let result = commit(&mut conn, &batch).map_err(|e| e.to_string());
        if let Some(observe) = &observer {
            observe(started.elapsed(), batch.len());
        }
        if let Err(e) = &result {
            let submits = batch
                .iter()
                .filter(|op| matches!(op, Op::Submit { .. }))
                .count();
            tracing::error!(
                failed_submits = submits,
                "task store write failed: {e}; refusing new tasks until a write succeeds"
            );
        }
        health.set(&result);
        for op in batch {
            match op {
                Op::Submit { ack, .. } | Op::Sync(ack) => {
                    let _ = ack.send(result.clone());
                }
                // Committed or failed: either way no longer uncommitted.
                Op::Release(permit) => drop(permit),
                Op::Write(_) => {}
            }
        }
    }
}

/// A one-row write: does the store take writes again?
fn probe(conn: &mut Connection) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO meta (k, v) VALUES ('probe', 1) ON CONFLICT(k) DO UPDATE SET v = v + 1",
        [],
    )
    .map(|_| ())
}

const INSERT_TASK: &str = "INSERT INTO tasks
    (id, platform, state, attempts, submitted_at, not_before, idempotency_key, task)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";

const FINISH_TASK: &str = "UPDATE tasks SET state = ?2, not_before = ?3, finished_at = ?4,
    outcome = ?5, plugin = ?6, attempts = MAX(attempts, ?7) WHERE id = ?1";

const FINISH_ATTEMPT: &str = "INSERT OR IGNORE INTO attempts
    (task_id, n, started_at, ended_at, outcome, plugin) VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

const REQUEUE: &str =
    "UPDATE tasks SET state = 'queued', not_before = ?2, finished_at = NULL WHERE id = ?1";

const REVIVE: &str = "UPDATE tasks SET state = 'queued', not_before = NULL, finished_at = NULL,
    revived_at = ?2 WHERE id = ?1";

fn commit(conn: &mut Connection, batch: &[Op]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut insert = tx.prepare_cached(INSERT_TASK)?;
        let mut finish_task = tx.prepare_cached(FINISH_TASK)?;
        // History is only ever added to.
        let mut finish_attempt = tx.prepare_cached(FINISH_ATTEMPT)?;
        let mut requeue = tx.prepare_cached(REQUEUE)?;
        let mut revive = tx.prepare_cached(REVIVE)?;
        for op in batch {
            let write = match op {
                Op::Write(write) => write.as_ref(),
                Op::Submit { inserts, .. } => {
                    for Insert { record, key } in inserts {
                        insert.execute(params![
                            record.task.id.to_string(),
                            record.task.platform,
                            record.state.as_str(),
                            record.attempts,
                            millis(record.submitted_at),
                            record.not_before.map(millis),
                            key,
                            json(&*record.task),
                        ])?;
                    }
                    continue;
                }
                Op::Sync(_) | Op::Release(_) => continue,
            };
            match write {
                Write::Finish {
                    id,
                    state,
                    attempt,
                    not_before,
                } => {
                    let finished = state
                        .is_finished()
                        .then(|| attempt.ended_at.map(millis))
                        .flatten();
                    // The task's row keeps its last attempt's outcome and
                    // plugin too: encoded once for both rows.
                    let id = id.to_string();
                    let outcome = attempt.outcome.as_ref().map(json);
                    let plugin = attempt.plugin.as_ref().map(json);
                    finish_task.execute(params![
                        id,
                        state.as_str(),
                        not_before.map(millis),
                        finished,
                        outcome,
                        plugin,
                        attempt.number,
                    ])?;
                    finish_attempt.execute(params![
                        id,
                        attempt.number,
                        millis(attempt.started_at),
                        attempt.ended_at.map(millis),
                        outcome,
                        plugin,
                    ])?;
                }
                Write::Requeue { id, not_before } => {
                    requeue.execute(params![id.to_string(), not_before.map(millis)])?;
                }
                Write::Revive { id, revived_at } => {
                    revive.execute(params![id.to_string(), revived_at])?;
                }
                Write::Prune { before } => {
                    let before = millis(*before);
                    tx.execute(
                        "DELETE FROM attempts WHERE task_id IN (SELECT id FROM tasks
                         WHERE state IN ('succeeded', 'dead') AND finished_at < ?1)",
                        [before],
                    )?;
                    tx.execute("DELETE FROM tasks WHERE state IN ('succeeded', 'dead') AND finished_at < ?1", [before])?;
                }
            }
        }
    }
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An outcome's room comes back with the commit that holds the outcome,
    /// not when the worker lets go of it: while the writer cannot commit,
    /// no more outcomes are taken than the bound.
    #[tokio::test]
    async fn outcome_room_comes_back_only_after_its_commit() {
        use futures_util::FutureExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tasks.db");
        let journal = Journal::open(&path, None, 1).unwrap();
        let room = journal.room_for_outcome().await;
        assert!(journal.room_for_outcome().now_or_never().is_none());

        // Another connection holds the write lock: the writer waits on it
        // (up to its busy timeout, then fails the commit).
        let blocker = Connection::open(&path).unwrap();
        blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
        journal.write(Write::Prune { before: UNIX_EPOCH });
        drop(room);
        let early = journal.room_for_outcome().now_or_never();
        // Given back before the commit, it would be free at once; a failed
        // commit (the busy timeout ran out) gives it back too, and says so.
        assert!(
            early.is_none() || journal.health().is_err(),
            "the room came back before its commit"
        );
        drop(early);
        blocker.execute_batch("COMMIT").unwrap();
        let _back = tokio::time::timeout(Duration::from_secs(30), journal.room_for_outcome())
            .await
            .expect("the room comes back once the commit is done");
    }

    /// How SQLite would answer `sql` on a store with this schema.
    fn plan(conn: &Connection, sql: &str) -> Vec<String> {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        // Parameters stay unbound: the plan does not depend on them.
        let mut rows = stmt.raw_query();
        let mut steps = Vec::new();
        while let Some(row) = rows.next().unwrap() {
            steps.push(row.get::<_, String>(3).unwrap());
        }
        steps
    }

    /// A task's writes (its submit, its outcome and attempt, a requeue and
    /// a revival) build no temporary table: SQLite makes one for every IN
    /// list of three or more values it checks, per row written, and the
    /// partial indexes' conditions are checked on every write.
    #[test]
    fn no_write_builds_a_temporary_table() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        for sql in [INSERT_TASK, FINISH_TASK, FINISH_ATTEMPT, REQUEUE, REVIVE] {
            let mut stmt = conn.prepare(&format!("EXPLAIN {sql}")).unwrap();
            let mut rows = stmt.raw_query();
            while let Some(row) = rows.next().unwrap() {
                let opcode: String = row.get(1).unwrap();
                assert_ne!(opcode, "OpenEphemeral", "{sql}");
            }
        }
    }

    /// The reads a large backlog makes (unparking what comes due, `task`,
    /// `tasks` with each filter) walk an index; none scans the table or
    /// sorts it.
    #[test]
    fn every_read_is_answered_from_an_index() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        let mut statements = vec![
            DUE_BETWEEN.to_owned(),
            UNTIMED.to_owned(),
            KEYS_SINCE.to_owned(),
            "SELECT task FROM tasks WHERE id = ?1".to_owned(),
            "SELECT n FROM attempts WHERE task_id = ?1 ORDER BY n".to_owned(),
        ];
        for state in [false, true] {
            for platform in [false, true] {
                statements.push(list_statement(state, platform));
            }
        }
        // Listing every task walks the time index newest first, and stops
        // at the limit; a start walks the partial indexes that hold only
        // what it reads (unfinished untimed tasks, keyed tasks); every
        // other read seeks.
        let unfiltered = list_statement(false, false);
        for sql in statements {
            let plan = plan(&conn, &sql);
            assert!(!plan.is_empty(), "{sql}");
            for step in &plan {
                let seeks = step.starts_with("SEARCH")
                    || (sql == unfiltered && step == "SCAN tasks USING INDEX tasks_by_time")
                    || (sql == UNTIMED
                        && step == "SCAN tasks USING INDEX tasks_unfinished_untimed")
                    || (sql == KEYS_SINCE && step == "SCAN tasks USING INDEX tasks_by_key");
                assert!(seeks && !step.contains("TEMP B-TREE"), "{sql}\n{plan:?}");
            }
        }
        assert!(
            plan(&conn, DUE_BETWEEN)
                .iter()
                .any(|s| s.contains("tasks_due")),
            "unparking reads the due index"
        );
        assert!(
            plan(&conn, UNTIMED)
                .iter()
                .all(|s| s.contains("tasks_unfinished_untimed")),
            "a start reads the untimed index, not every queued task"
        );
    }
}
