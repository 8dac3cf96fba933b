//! A task's life in the store after it is accepted: an attempt starts,
//! ends with a verdict (succeeded, retrying, dead), and a dead task may be
//! revived by `retry`. Each change is made under the store's lock, published
//! to watchers and written to the journal, in that order, so whoever sees
//! the change can also read it back.

use std::sync::Arc;
use std::time::SystemTime;

use super::journal::{EncodedOutcome, EndedAttempt, Write};
use super::{AttemptCount, Entry, StoreError, TaskRecord, TaskStore, event, read, time};
use crate::plugin::PluginRef;
use crate::task::{Outcome, Task, TaskId, TaskState, Verdict};

impl TaskStore {
    /// Marks an attempt as started; returns its number.
    pub fn start(&self, id: TaskId) -> AttemptCount {
        let mut inner = self.lock();
        let now = SystemTime::now();
        let Some(entry) = inner.entries.get_mut(&id) else {
            return AttemptCount {
                number: 1,
                in_round: 1,
            };
        };
        let r = &mut entry.record;
        r.state = TaskState::Running;
        r.started_at = Some(now);
        let number = r.begin_attempt(now);
        self.events.publish(|| event(r, now));
        AttemptCount {
            number,
            in_round: number.saturating_sub(r.revived_at),
        }
    }

    /// The count the next attempt of `id` would have (for outcomes decided
    /// without running the plugin).
    pub fn next_attempt(&self, id: TaskId) -> AttemptCount {
        let inner = self.lock();
        let (attempts, revived_at) = inner
            .entries
            .get(&id)
            .map_or((0, 0), |e| (e.record.attempts, e.record.revived_at));
        AttemptCount {
            number: attempts + 1,
            in_round: attempts + 1 - revived_at.min(attempts),
        }
    }

    /// The count of the attempt `id` is running, if it is running.
    pub fn running_attempt(&self, id: TaskId) -> Option<AttemptCount> {
        let inner = self.lock();
        let r = &inner.entries.get(&id)?.record;
        (r.state == TaskState::Running).then(|| AttemptCount {
            number: r.attempts,
            in_round: r.attempts.saturating_sub(r.revived_at).max(1),
        })
    }

    /// Records an attempt's outcome and the verdict on it. Answers whether
    /// a retry is this store's to run: not for an unknown task, nor for one
    /// taken over from the broker, whose retry the broker schedules (and
    /// may hand back here: running it from both would run it twice).
    #[must_use = "schedule the retry only when the store keeps the task"]
    pub fn finish(
        &self,
        id: TaskId,
        outcome: Outcome,
        plugin: Option<PluginRef>,
        verdict: Verdict,
    ) -> bool {
        // Before the lock: see `EncodedOutcome`.
        let encoded = self
            .journal
            .is_some()
            .then(|| EncodedOutcome::new(&outcome, plugin.as_ref()));
        let mut inner = self.lock();
        let now = SystemTime::now();
        let Some(entry) = inner.entries.get_mut(&id) else {
            return false;
        };
        let r = &mut entry.record;
        let (state, not_before) = match verdict {
            Verdict::Succeeded => (TaskState::Succeeded, None),
            Verdict::Dead => (TaskState::Dead, None),
            Verdict::Retry { after } => (TaskState::Retrying, Some(time::stored(now + after))),
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
        if let Some(outcome) = encoded {
            self.write(Write::Finish {
                id,
                state,
                attempt: EndedAttempt {
                    number: attempt.number,
                    started_at: attempt.started_at,
                    ended_at: now,
                    outcome,
                },
                not_before,
            });
        }
        self.events.publish(|| event(&entry.record, now));
        if entry.one_attempt && !state.is_finished() {
            // The broker runs the retry, on whichever host.
            let entry = inner.entries.remove(&id).expect("looked up above");
            for waiter in entry.waiters {
                let _ = waiter.send(entry.record.clone());
            }
            return false;
        }
        if !state.is_finished() {
            return true;
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
        false
    }

    /// Puts a task that was cut off (shutdown) or interrupted (crash) back
    /// to `queued`.
    pub fn requeue(&self, id: TaskId) {
        let mut inner = self.lock();
        if let Some(entry) = inner.entries.get_mut(&id) {
            entry.record.state = TaskState::Queued;
            entry.record.started_at = None;
            self.write(Write::Requeue {
                id,
                not_before: None,
            });
            self.events
                .publish(|| event(&entry.record, SystemTime::now()));
        }
    }

    /// Brings a dead task back to `queued`, durably before it returns. Its
    /// attempts stay in its history; the retry policy counts afresh from
    /// here.
    pub async fn retry(&self, id: TaskId) -> Result<Arc<Task>, StoreError> {
        let in_memory = self.lock().entries.contains_key(&id);
        let on_disk = match (&self.journal, in_memory) {
            (Some(journal), false) => read(journal, move |j| j.get(id)).await?,
            _ => None,
        };
        if let Some(journal) = &self.journal {
            journal.health()?;
        }
        let (task, dead) = self.revive(id, on_disk)?;
        // Answered once durable, like a submit: an acknowledged retry is
        // not undone by a crash. One that did not become durable is not
        // acknowledged, and is dead again here as it is on disk.
        if let Some(journal) = &self.journal
            && let Err(e) = journal.sync().await
        {
            let mut inner = self.lock();
            if let Some(entry) = inner.entries.get_mut(&id) {
                entry.record = dead;
                inner.finished.push_back(id);
            }
            return Err(e.into());
        }
        Ok(task)
    }

    /// The in-memory half of [`TaskStore::retry`]: marks the task queued
    /// and sends the write; returns the task and its record as it was.
    fn revive(
        &self,
        id: TaskId,
        on_disk: Option<TaskRecord>,
    ) -> Result<(Arc<Task>, TaskRecord), StoreError> {
        let mut inner = self.lock();
        // Only a dead task comes into memory here: one that is not (a
        // parked task, say) is refused and must stay where it was.
        if let Some(record) = on_disk {
            if record.state != TaskState::Dead {
                return Err(StoreError::NotDead {
                    id,
                    state: record.state.as_str(),
                });
            }
            inner
                .entries
                .entry(id)
                .or_insert_with(|| Entry::new(record));
        }
        let entry = inner.entries.get_mut(&id).ok_or(StoreError::NotFound(id))?;
        let r = &mut entry.record;
        if r.state != TaskState::Dead {
            return Err(StoreError::NotDead {
                id,
                state: r.state.as_str(),
            });
        }
        let dead = r.clone();
        r.state = TaskState::Queued;
        r.revived_at = r.attempts;
        r.not_before = None;
        r.finished_at = None;
        let (task, revived_at) = (r.task.clone(), r.revived_at);
        self.events.publish(|| event(r, SystemTime::now()));
        inner.finished.retain(|f| *f != id);
        self.write(Write::Revive { id, revived_at });
        Ok((task, dead))
    }
}
