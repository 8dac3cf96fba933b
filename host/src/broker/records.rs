//! Task records every host reads: a key-value bucket keyed by task id, and
//! a second bucket of idempotency keys.
//!
//! A record holds the task itself (so any host can revive a dead task) and
//! its view as clients see it (so any host answers `task` the same). The
//! host that finishes a task writes its final record before acknowledging
//! the message; `retry` uses compare-and-set on the record's revision, so
//! two hosts reviving the same task at once publish it once. A record
//! written by a submit or `retry` is pending until its publish is
//! acknowledged, and no host runs it meanwhile (see [`super::submit`]).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::kv;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::{BrokerConfig, BrokerError, bucket, bucket_key, millis, records_error, time};
use crate::protocol::TaskView;
use crate::store::{StoreConfig, TaskRecord};
use crate::task::{Task, TaskId, TaskState};

/// One task as stored in the records bucket.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Shared {
    pub task: Task,
    /// Not to run before (ms since the epoch).
    pub not_before_ms: Option<u64>,
    /// How many times `retry` revived it; part of each publish's message id.
    pub revivals: u32,
    /// `view.attempts` when `retry` last revived it: the retry policy
    /// counts the attempts since then, on whichever host they ran.
    pub revived_at: u32,
    /// When it was submitted (ms since the epoch).
    pub submitted_ms: u64,
    /// When this record was last written (ms since the epoch).
    pub changed_ms: u64,
    /// Written by a submit or `retry` whose publish is not acknowledged
    /// yet: the task may still be refused, so no host runs it (see
    /// [`Records::confirm`]). Absent from every other record.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending: bool,
    pub view: TaskView,
}

/// What travels in the work stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Work {
    pub task: Task,
    pub not_before_ms: Option<u64>,
}

impl Shared {
    pub fn new(task: Arc<Task>, not_before: Option<SystemTime>) -> Shared {
        let now = SystemTime::now();
        let view = TaskView::from(TaskRecord::new(task.clone(), now, not_before));
        Shared {
            task: (*task).clone(),
            not_before_ms: not_before.map(millis),
            revivals: 0,
            revived_at: 0,
            submitted_ms: millis(now),
            changed_ms: millis(now),
            pending: false,
            view,
        }
    }

    /// Whether this record is pending and old enough that whoever wrote it
    /// must have stopped between its publish and the confirm: the client
    /// had no answer, so the task may have been accepted, and is run. A
    /// refused submit takes its pending record back long before this.
    pub fn abandoned(&self, now: SystemTime) -> bool {
        self.pending && now >= time(self.changed_ms) + SETTLE
    }

    /// The record this host's store runs the next attempt from: the
    /// attempts counted so far, on every host, carry on.
    pub fn to_local(&self) -> TaskRecord {
        let submitted = time(self.submitted_ms);
        let mut record = TaskRecord::new(Arc::new(self.task.clone()), submitted, None);
        record.attempts = self.view.attempts;
        record.revived_at = self.revived_at;
        record
    }

    /// Takes in the end of an attempt run from [`Shared::to_local`]: its
    /// state and outcome, and its attempt after the earlier ones.
    pub fn merge(&mut self, local: TaskRecord) {
        self.not_before_ms = local.not_before.map(millis);
        let mut view = TaskView::from(local);
        let mut history = std::mem::take(&mut self.view.history);
        history.append(&mut view.history);
        view.history = history;
        self.view = view;
    }

    pub fn work(&self) -> Work {
        Work {
            task: self.task.clone(),
            not_before_ms: self.not_before_ms,
        }
    }

    /// The message id of this record's current publish.
    pub fn msg_id(&self) -> String {
        match self.revivals {
            0 => self.task.id.to_string(),
            n => format!("{}.r{n}", self.task.id),
        }
    }
}

/// How long after a task was made (or fell due) a work message may come
/// before its record is visible: the record is written before the message
/// is published, but a replica may lag. Longer than any submit takes.
pub const SETTLE: Duration = Duration::from_secs(30);

/// A dead task's record revived by `retry`: pending until its publish is
/// acknowledged.
pub struct Revived {
    /// The record as it was, put back if the publish fails.
    pub dead: Shared,
    /// The revived record, written pending at `revision`.
    pub record: Shared,
    pub revision: u64,
}

/// What became of a pending record ([`Records::settled`]).
#[derive(Debug)]
pub enum Settled {
    /// Confirmed (or [`Shared::abandoned`]): the record as it is now.
    Stands(Box<Shared>),
    /// Taken back: its submit was refused, its client told so.
    TakenBack,
    /// Still pending when the wait ran out.
    Pending,
}

/// What a work message whose task has no record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Orphan {
    /// Too new to tell: its record may not be visible yet. Look again.
    Settling,
    /// Its submit was refused and taken back (the client was told so):
    /// the publish landed although its acknowledgement did not. Not run.
    Refused,
    /// Older than half the retention: its record expired while it waited
    /// for a host. Run from the message.
    Expired,
}

/// The two buckets.
#[derive(Clone)]
pub struct Records {
    tasks: kv::Store,
    keys: kv::Store,
    retention: Duration,
}

impl Records {
    /// Opens the buckets. A record lives `retention` after it was last
    /// written: a finished task's for the retention, as on one host; a
    /// task still waiting has its record written again before then (see
    /// [`Records::refresh_due`]). An idempotency key lives for its window.
    pub(super) async fn open(
        js: &async_nats::jetstream::Context,
        config: &BrokerConfig,
        store: &StoreConfig,
    ) -> Result<Records, BrokerError> {
        let retention = store.retention;
        Ok(Records {
            retention,
            tasks: bucket(
                js,
                &format!("{}_tasks", config.stream),
                retention,
                config.replicas,
            )
            .await?,
            keys: bucket(
                js,
                &format!("{}_keys", config.stream),
                store.idempotency_window,
                config.replicas,
            )
            .await?,
        })
    }

    /// Claims `key` for `id`; the id that holds it if another task did first.
    pub async fn claim(&self, key: &str, id: TaskId) -> Result<Option<TaskId>, BrokerError> {
        let bucket_key = bucket_key(key);
        match self.keys.create(&bucket_key, id.to_string().into()).await {
            Ok(_) => Ok(None),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                let holder = self
                    .keys
                    .get(&bucket_key)
                    .await
                    .map_err(records_error)?
                    .and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok());
                Ok(holder.or(Some(id)))
            }
            Err(e) => Err(records_error(e)),
        }
    }

    /// Gives `key` back if `id` still holds it: a submit that claimed it
    /// and then failed must not leave a key that answers `duplicate` with a
    /// task that never runs.
    pub async fn release(&self, key: &str, id: TaskId) -> Result<(), BrokerError> {
        let bucket_key = bucket_key(key);
        let Some(entry) = self.keys.entry(&bucket_key).await.map_err(records_error)? else {
            return Ok(());
        };
        if entry.operation == kv::Operation::Put && entry.value == id.to_string().as_bytes() {
            self.keys
                .purge_expect_revision(&bucket_key, Some(entry.revision))
                .await
                .map_err(records_error)?;
        }
        Ok(())
    }

    /// Removes the record of a task that was never handed to the work
    /// stream (its submit failed), so `task` and `tasks` do not list it.
    pub async fn forget(&self, id: TaskId) -> Result<(), BrokerError> {
        self.tasks
            .purge(id.to_string())
            .await
            .map_err(records_error)
    }

    /// Writes `record`, stamping when; the revision it was written at.
    pub async fn put(&self, record: &mut Shared) -> Result<u64, BrokerError> {
        record.changed_ms = millis(SystemTime::now());
        let bytes = serde_json::to_vec(record).map_err(records_error)?;
        self.tasks
            .put(record.task.id.to_string(), bytes.into())
            .await
            .map_err(records_error)
    }

    /// Marks `record`, written pending at `revision`, as taken: its publish
    /// was acknowledged, so hosts may run it now. Only over that revision:
    /// if anything wrote the record since (a host that ran it as
    /// [`Shared::abandoned`] while this confirm was held up), that record
    /// stands.
    pub async fn confirm(&self, mut record: Shared, revision: u64) -> Result<(), BrokerError> {
        record.pending = false;
        record.changed_ms = millis(SystemTime::now());
        let bytes = serde_json::to_vec(&record).map_err(records_error)?;
        match self
            .tasks
            .update(record.task.id.to_string(), bytes.into(), revision)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(()),
            Err(e) => Err(records_error(e)),
        }
    }

    /// What the message `work` is, when its task has no record at `now`.
    pub fn orphan(&self, work: &Work, now: SystemTime) -> Orphan {
        let Some(made) = work.task.id.created_at() else {
            return Orphan::Expired;
        };
        let due = work.not_before_ms.map_or(made, time).max(made);
        if now < due + SETTLE {
            Orphan::Settling
        } else if now < made + self.retention / 2 {
            Orphan::Refused
        } else {
            Orphan::Expired
        }
    }

    /// Waits while `record` is pending — its submit (or `retry`) is
    /// waiting for the publish acknowledgement, see [`super::submit`] —
    /// until it is confirmed or taken back, for at most `hold`.
    ///
    /// A host with a pull request waiting gets a new task's message before
    /// its submitter gets the acknowledgement, so this is the usual path for
    /// a runner, and a short one: the record is read again after 1 ms, then
    /// at doubling intervals up to 100 ms.
    pub async fn settled(
        &self,
        mut record: Shared,
        hold: Duration,
    ) -> Result<Settled, BrokerError> {
        let until = tokio::time::Instant::now() + hold;
        let mut pause = Duration::from_millis(1);
        loop {
            if record.abandoned(SystemTime::now()) {
                tracing::warn!(task = %record.task.id, "its submit never confirmed it (the host stopped?); taking it as accepted");
                record.pending = false;
            }
            if !record.pending {
                return Ok(Settled::Stands(Box::new(record)));
            }
            if tokio::time::Instant::now() + pause > until {
                return Ok(Settled::Pending);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
            match self.get(record.task.id).await? {
                Some(now) => record = now,
                None => return Ok(Settled::TakenBack),
            }
        }
    }

    /// The longest a task waiting in the broker may be held there before
    /// its record must be written again, so it does not expire.
    pub fn refresh_every(&self) -> Duration {
        self.retention / 4
    }

    /// Whether `record`, of a task still waiting, is old enough to write
    /// again now.
    pub fn refresh_due(&self, record: &Shared, now_ms: u64) -> bool {
        now_ms.saturating_sub(record.changed_ms) >= self.refresh_every().as_millis() as u64
    }

    /// Every record written from now on, for `watch`.
    pub async fn changes(&self) -> Result<kv::Watch, BrokerError> {
        self.tasks.watch_all().await.map_err(records_error)
    }

    pub async fn get(&self, id: TaskId) -> Result<Option<Shared>, BrokerError> {
        Ok(self.entry(id).await?.map(|(record, _)| record))
    }

    async fn entry(&self, id: TaskId) -> Result<Option<(Shared, u64)>, BrokerError> {
        let Some(entry) = self
            .tasks
            .entry(id.to_string())
            .await
            .map_err(records_error)?
        else {
            return Ok(None);
        };
        if entry.operation != kv::Operation::Put {
            return Ok(None);
        }
        let record = serde_json::from_slice(&entry.value).map_err(records_error)?;
        Ok(Some((record, entry.revision)))
    }

    /// Tasks by state and platform, newest first, at most `limit`.
    ///
    /// Task ids are UUIDv7, so the bucket's keys are an index by submission
    /// time: only the keys are read in full (16 bytes a task), then records
    /// newest first until `limit` match, so memory is bounded by the limit
    /// and an unfiltered listing reads `limit` records, not the bucket.
    pub async fn list(
        &self,
        state: Option<TaskState>,
        platform: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Shared>, BrokerError> {
        let keys = self.tasks.keys().await.map_err(records_error)?;
        let mut ids: Vec<TaskId> = keys
            .filter_map(|key| async move { key.ok()?.parse::<TaskId>().ok() })
            .collect()
            .await;
        ids.sort_unstable_by(|a, b| b.cmp(a));
        let mut found = Vec::with_capacity(limit.min(ids.len()));
        let mut records = futures_util::stream::iter(ids)
            .map(|id| self.get(id))
            .buffered(64);
        while found.len() < limit
            && let Some(record) = records.next().await
        {
            let Some(record) = record? else { continue };
            if state.is_some_and(|s| s != record.view.state)
                || platform.is_some_and(|p| p != record.view.platform)
            {
                continue;
            }
            found.push(record);
        }
        Ok(found)
    }

    /// Marks a dead task queued again, pending until its publish is
    /// acknowledged ([`Records::confirm`]), once even if hosts race: the
    /// record that was written and its revision, or `Ok(None)` when the
    /// task is not dead.
    ///
    /// The record as it was comes back too, for [`Records::unrevive`].
    pub async fn revive(
        &self,
        id: TaskId,
    ) -> Result<Option<Result<Revived, TaskState>>, BrokerError> {
        for _ in 0..8 {
            let Some((mut record, revision)) = self.entry(id).await? else {
                return Ok(None);
            };
            if record.view.state != TaskState::Dead {
                return Ok(Some(Err(record.view.state)));
            }
            let dead = record.clone();
            record.revivals += 1;
            record.revived_at = record.view.attempts;
            record.view.state = TaskState::Queued;
            record.view.finished_at = None;
            record.not_before_ms = None;
            record.pending = true;
            record.changed_ms = millis(SystemTime::now());
            let bytes = serde_json::to_vec(&record).map_err(records_error)?;
            match self
                .tasks
                .update(id.to_string(), bytes.into(), revision)
                .await
            {
                Ok(revision) => {
                    return Ok(Some(Ok(Revived {
                        dead,
                        record,
                        revision,
                    })));
                }
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(records_error(e)),
            }
        }
        Err(BrokerError::Records(format!(
            "task {id} kept changing while it was being revived"
        )))
    }

    /// Puts back the record `dead` of a task whose revival could not be
    /// published, so it is dead again (and `retry` can be asked again)
    /// rather than queued with nothing that will ever run it; a host
    /// holding the revival's message finds it dead and drops it.
    pub async fn unrevive(&self, mut dead: Shared) -> Result<(), BrokerError> {
        self.put(&mut dead).await.map(|_| ())
    }

    /// Waits until the record of `id` is finished.
    pub async fn wait_finished(&self, id: TaskId) -> Result<Shared, BrokerError> {
        let mut watch = self
            .tasks
            .watch_with_history(id.to_string())
            .await
            .map_err(records_error)?;
        while let Some(entry) = watch.next().await {
            let entry = entry.map_err(records_error)?;
            if let Ok(record) = serde_json::from_slice::<Shared>(&entry.value)
                && record.view.state.is_finished()
            {
                return Ok(record);
            }
        }
        Err(BrokerError::Records("the broker connection closed".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_idempotency_key_becomes_a_valid_bucket_key() {
        for key in ["order 42", "a.b.c", "ünïcode/../*>", ""] {
            let k = bucket_key(key);
            assert_eq!(k.len(), 64);
            assert!(k.chars().all(|c| c.is_ascii_hexdigit()));
        }
        assert_ne!(bucket_key("a"), bucket_key("b"));
    }
}
