//! The journal's writer thread: takes the writes that are waiting (up to
//! [`MAX_GROUP_ROWS`] rows) and commits them in one transaction (group
//! commit, see the journal's guide),
//! answers each submit with its transaction's result, gives back outcome
//! rooms once their commit is done, and while the store is unavailable
//! probes until a write commits again. It must never answer a submit before
//! the transaction holding it has committed.
//!
//! A small batch of outcomes alone waits up to [`LINGER`] for more before
//! it commits: at a few thousand deliveries a second, each commit held a
//! handful of outcomes, and its fixed costs (the pages it rewrites whole,
//! the fsync) were most of the journal's CPU a webhook — 31–47 → 17–23 µs
//! with the wait (`--bench e2e`, which prints the writer's CPU a task).
//! Nothing anyone waits on is held: a submit or a sync, or a worker waiting
//! for an outcome's room (every room taken), ends the wait within
//! [`LINGER_STEP`].

use std::sync::mpsc;
use std::time::{Duration, Instant};

use rusqlite::{Connection, params};
use tokio::sync::Semaphore;

use super::schema::{
    FINISH_ATTEMPT, FINISH_TASK, INSERT_TASK, KEEP_FIRST_ATTEMPT, REQUEUE, REVIVE,
};
use super::{
    CommitObserver, EncodedOutcome, Health, MAX_GROUP_ROWS, Op, PROBE_EVERY, Write, millis,
};

/// How long a small batch of outcomes waits for more.
const LINGER: Duration = Duration::from_millis(2);
/// How long a write someone waits on may wait behind a lingering batch.
const LINGER_STEP: Duration = Duration::from_micros(250);
/// A batch this large commits at once (an outcome is two writes: its rows
/// and its room's release).
const LINGER_BELOW: usize = 256;

/// Runs until every sender of `ops` is gone (the journal was dropped).
pub(super) fn write_loop(
    mut conn: Connection,
    ops: mpsc::Receiver<Op>,
    health: &Health,
    rooms: &Semaphore,
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
        let mut rows = first.rows();
        let mut batch = vec![first];
        rows = take_waiting(&ops, &mut batch, rows);
        // While no one waits on them, a small batch of outcomes waits a
        // moment for more, so one commit (and one fsync) holds several
        // workers'. It sleeps in short steps rather than waking for every
        // write sent (a wake-up each cost more than it saved); a write
        // someone waits on (a submit, a sync), or a worker waiting for a
        // room (none left: with a small `max_unsynced_outcomes` the wait
        // would pace the workers), ends the wait at the next step.
        let lingers = |batch: &[Op]| {
            batch.len() < LINGER_BELOW
                && rooms.available_permits() > 0
                && batch
                    .iter()
                    .all(|op| matches!(op, Op::Write(_) | Op::Release(_)))
        };
        let until = Instant::now() + LINGER;
        while lingers(&batch) && Instant::now() < until {
            std::thread::sleep(LINGER_STEP);
            rows = take_waiting(&ops, &mut batch, rows);
        }
        let started = Instant::now();
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

/// Adds the writes waiting in `ops` to `batch`, which holds `rows` rows,
/// until it holds [`MAX_GROUP_ROWS`]; returns the rows it then holds.
fn take_waiting(ops: &mpsc::Receiver<Op>, batch: &mut Vec<Op>, mut rows: usize) -> usize {
    while rows < MAX_GROUP_ROWS
        && let Ok(op) = ops.try_recv()
    {
        rows += op.rows();
        batch.push(op);
    }
    rows
}

/// A one-row write: does the store take writes again?
fn probe(conn: &mut Connection) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO meta (k, v) VALUES ('probe', 1) ON CONFLICT(k) DO UPDATE SET v = v + 1",
        [],
    )
    .map(|_| ())
}

fn commit(conn: &mut Connection, batch: &[Op]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut insert = tx.prepare_cached(INSERT_TASK)?;
        let mut finish_task = tx.prepare_cached(FINISH_TASK)?;
        // History is only ever added to.
        let mut finish_attempt = tx.prepare_cached(FINISH_ATTEMPT)?;
        let mut requeue = tx.prepare_cached(REQUEUE)?;
        let mut keep_first = tx.prepare_cached(KEEP_FIRST_ATTEMPT)?;
        let mut revive = tx.prepare_cached(REVIVE)?;
        for op in batch {
            let write = match op {
                Op::Write(write) => write.as_ref(),
                Op::Submit { rows, .. } => {
                    for row in rows {
                        insert.execute(params![
                            row.id,
                            row.platform,
                            row.state,
                            row.attempts,
                            row.submitted_at,
                            row.not_before,
                            row.key,
                            row.task,
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
                    let finished = state.is_finished().then(|| millis(attempt.ended_at));
                    // The task's row keeps its last attempt's outcome and
                    // plugin too. A first attempt that finishes the task is
                    // all in that row (the journal's guide says why).
                    let id = id.to_string();
                    let EncodedOutcome { outcome, plugin } = &attempt.outcome;
                    let only = attempt.number == 1 && finished.is_some();
                    finish_task.execute(params![
                        id,
                        state.as_str(),
                        not_before.map(millis),
                        finished,
                        outcome,
                        plugin,
                        attempt.number,
                        only.then(|| millis(attempt.started_at)),
                    ])?;
                    if !only {
                        finish_attempt.execute(params![
                            id,
                            attempt.number,
                            millis(attempt.started_at),
                            millis(attempt.ended_at),
                            outcome,
                            plugin,
                        ])?;
                    }
                }
                Write::Requeue { id, not_before } => {
                    requeue.execute(params![id.to_string(), not_before.map(millis)])?;
                }
                Write::Revive { id, revived_at } => {
                    let id = id.to_string();
                    keep_first.execute([&id])?;
                    revive.execute(params![id, revived_at])?;
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
