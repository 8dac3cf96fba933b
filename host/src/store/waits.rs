//! Waiting for a task to finish: `submit` with `wait`, including a keyed
//! submit that names a task accepted before, wherever that task now is.
//!
//! A task in memory keeps its waiters in its entry, answered when it
//! finishes. A task that is not in memory is on disk, either finished
//! (pushed out of memory by newer ones: answered at once from the journal)
//! or parked beyond the memory horizon. A parked task's waiters wait in
//! `parked_waiters` until `unpark` brings it into memory, under the same
//! lock, and hands them to its entry.
//!
//! What this module must never do: leave a waiter where nothing will
//! answer it. A waiter is registered as parked only while the backlog
//! says the task is still parked, which `unpark` changes under the same
//! lock before it hands the waiters over; a waiter whose receiver is gone
//! is dropped whenever another is added, so clients that give up leave
//! nothing behind.

use std::time::Duration;

use tokio::sync::oneshot;

use super::time::DueTime;
use super::{Inner, StoreError, TaskRecord, TaskStore, read};
use crate::task::TaskId;

/// How long a wait for a task that `unpark` is reading back lets it
/// finish before it looks again.
const UNPARKING: Duration = Duration::from_millis(10);
/// How many times it looks before it gives up on that task (a minute: a
/// window read back from a very large backlog takes seconds).
const UNPARKING_LOOKS: u32 = 6_000;

impl TaskStore {
    /// A receiver that yields the record once the task has finished (at once
    /// if it already has), for a task in memory. `None` otherwise.
    ///
    /// The waiters whose receivers are gone are dropped here: a client
    /// that submits a keyed task with `wait` again and again, giving up
    /// each time, must not pile up a waiter per try on a task due in an
    /// hour.
    pub fn wait(&self, id: TaskId) -> Option<oneshot::Receiver<TaskRecord>> {
        wait_in_memory(&mut self.lock(), id)
    }

    /// [`TaskStore::wait`] for a task wherever it is: in memory, finished
    /// on disk, or parked on disk until it comes due. `None` for a task
    /// the store does not know (or, logged, one that stayed between disk
    /// and memory for [`UNPARKING_LOOKS`] looks).
    pub async fn wait_anywhere(
        &self,
        id: TaskId,
    ) -> Result<Option<oneshot::Receiver<TaskRecord>>, StoreError> {
        for _ in 0..UNPARKING_LOOKS {
            if let Some(waiter) = self.wait(id) {
                return Ok(Some(waiter));
            }
            let Some(journal) = &self.journal else {
                return Ok(None);
            };
            let Some(stored) = read(journal, move |j| j.get(id)).await? else {
                return Ok(None);
            };
            if let Some(waiter) = self.wait_for_stored(id, stored) {
                return Ok(Some(waiter));
            }
            // Unfinished on disk, not parked, not in memory: `unpark` is
            // reading it back, or it finished and left memory since the
            // read. Either way, look again.
            tokio::time::sleep(UNPARKING).await;
        }
        tracing::warn!(task = %id, "not waiting for a task that stayed between disk and memory");
        Ok(None)
    }

    /// A waiter for the task `stored` (as the journal had it a moment ago)
    /// describes, decided under the lock: in memory after all, finished,
    /// or parked. `None` when it is none of these any more.
    fn wait_for_stored(
        &self,
        id: TaskId,
        stored: TaskRecord,
    ) -> Option<oneshot::Receiver<TaskRecord>> {
        let mut inner = self.lock();
        if let Some(waiter) = wait_in_memory(&mut inner, id) {
            return Some(waiter);
        }
        let (tx, rx) = oneshot::channel();
        if stored.state.is_finished() {
            let _ = tx.send(stored);
            return Some(rx);
        }
        let due = stored.not_before.map(DueTime::at_or_after);
        if !inner.backlog.parks(due) {
            return None;
        }
        let waiters = inner.parked_waiters.entry(id).or_default();
        waiters.retain(|waiter| !waiter.is_closed());
        waiters.push(tx);
        Some(rx)
    }
}

fn wait_in_memory(inner: &mut Inner, id: TaskId) -> Option<oneshot::Receiver<TaskRecord>> {
    let entry = inner.entries.get_mut(&id)?;
    let (tx, rx) = oneshot::channel();
    if entry.record.state.is_finished() {
        let _ = tx.send(entry.record.clone());
    } else {
        entry.waiters.retain(|waiter| !waiter.is_closed());
        entry.waiters.push(tx);
    }
    Some(rx)
}
