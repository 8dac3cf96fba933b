//! Taking a task in through the broker, all or nothing: `submit` and
//! `retry`.
//!
//! Each is three steps on two JetStream objects — the record in the
//! records bucket, the message in the work stream — and any step may fail,
//! or fail *ambiguously*: a publish whose acknowledgement was lost may have
//! landed. The answer the client gets must still be exact: `ok` means the
//! task will run, `unavailable` means it will not, so a client that
//! submits again after `unavailable` delivers once. The steps:
//!
//! 1. The record is written **pending** ([`Shared::pending`]). No host runs
//!    a task whose record is pending: a host that pulls its message holds
//!    it until the record changes (see `work`).
//! 2. The task is published (with `Nats-Msg-Id`, so a repeated publish is
//!    de-duplicated by the server), and the publish acknowledged.
//! 3. The record is **confirmed** ([`Records::confirm`]) and the client
//!    answered `ok`. The task is taken once its publish is acknowledged: a
//!    confirm that fails is settled in the background and the answer is
//!    still `ok`.
//!
//! If step 1 or 2 fails, the submit is **undone** — the record removed, the
//! idempotency key given back — and the client answered `unavailable`. A
//! message that landed anyway then finds no record (or, for `retry`, the
//! task dead again) and is not run: the host holding it drops it as soon
//! as the record goes, and one that finds no record at all waits out
//! [`super::records::SETTLE`] for a lagging replica before dropping it.
//! Without step 1's mark another host could pull that message between the
//! publish and the undo and deliver a task its client was told was
//! refused.
//!
//! What stays open: a host that stops between step 2 and step 3 leaves a
//! pending record nobody confirms. Its client had no answer, so the task
//! may have been taken; hosts run it once the record is older than
//! `SETTLE` ([`Shared::abandoned`]).

use std::time::Duration;

use super::records::{Revived, Settled, Shared};
use super::{Broker, BrokerError};
use crate::redact;
use crate::store::{Accepted, Submission};
use crate::task::{TaskId, TaskState};

/// How long a submit waits for the pending task that holds its
/// idempotency key to be confirmed or taken back: a refused submit is
/// taken back within a second of its host reaching the broker again.
const KEY_HOLD: Duration = Duration::from_secs(10);

/// How long [`settle`] keeps trying.
const SETTLE_FOR: Duration = Duration::from_secs(3600);

/// Why `retry` did not revive a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryRefused {
    NotFound,
    NotDead(TaskState),
}

impl Broker {
    /// Accepts `submissions` (see the module docs): each is recorded and
    /// published, and the answer comes after every publish
    /// acknowledgement. A task whose idempotency key another task holds is
    /// answered with that task. While the connection is down, submits are
    /// refused at once, before anything is written.
    ///
    /// Dropped halfway, a submit would leave a key claimed or a record
    /// pending with nothing to confirm or take it back: the API runs it to
    /// its end whether or not its client stays (`backend::to_the_end`).
    pub async fn submit(&self, submissions: Vec<Submission>) -> Result<Vec<Accepted>, BrokerError> {
        self.connected()?;
        let outcomes =
            futures_util::future::join_all(submissions.into_iter().map(|s| self.submit_one(s)))
                .await;
        outcomes.into_iter().collect()
    }

    async fn submit_one(&self, s: Submission) -> Result<Accepted, BrokerError> {
        if let Some(key) = &s.idempotency_key
            && let Some(holder) = self.claim(key, s.task.id).await?
        {
            return Ok(Accepted::Duplicate(holder));
        }
        let mut record = Shared::new(s.task.clone(), s.not_before);
        record.pending = true;
        let sent = match self.records.put(&mut record).await {
            Ok(revision) => self.send(&record).await.map(|()| revision),
            Err(e) => Err(e),
        };
        match sent {
            Ok(revision) => {
                self.confirm(record, revision).await;
                Ok(Accepted::New(s.task.id))
            }
            Err(e) => {
                self.undo(&s).await;
                Err(e)
            }
        }
    }

    /// Claims `key` for `id`: `None` when it is claimed, or the task that
    /// holds it.
    ///
    /// A holder whose record is pending may yet be refused — its submit is
    /// waiting for the publish acknowledgement, or was refused and is being
    /// taken back, maybe on a host cut off from the broker — so the answer
    /// waits for that record to settle, up to [`KEY_HOLD`]: a task taken
    /// back frees the key for this one; one confirmed is the duplicate. A
    /// client that retries a refused submit on another host is thus never
    /// told `duplicate` of a task that will not run.
    async fn claim(&self, key: &str, id: TaskId) -> Result<Option<TaskId>, BrokerError> {
        // A key freed by a refused holder is claimed again; should a third
        // submit take it first, that one is the holder to wait for.
        for _ in 0..3 {
            let Some(holder) = self.records.claim(key, id).await? else {
                return Ok(None);
            };
            match self.records.get(holder).await? {
                Some(record) if record.pending => {
                    tracing::info!(task = %id, %holder, "its idempotency key is held by a task not settled yet; waiting for it");
                    match self.records.settled(record, KEY_HOLD).await? {
                        Settled::Stands(_) => return Ok(Some(holder)),
                        Settled::TakenBack => continue,
                        Settled::Pending => break,
                    }
                }
                // Confirmed, or gone with the retention: the first answer
                // stands for the idempotency window.
                _ => return Ok(Some(holder)),
            }
        }
        Err(BrokerError::KeyUnsettled)
    }

    /// Brings a dead task back: queued again on every host, published once;
    /// dead again if the publish fails, so nothing is left queued that
    /// nothing will run, and a revival's message that landed anyway finds
    /// the task dead and is dropped. Like a submit, it must run to its end
    /// (`backend::to_the_end`).
    pub async fn retry(&self, id: TaskId) -> Result<Result<(), RetryRefused>, BrokerError> {
        self.connected()?;
        let Revived {
            dead,
            record,
            revision,
        } = match self.records.revive(id).await? {
            None => return Ok(Err(RetryRefused::NotFound)),
            Some(Err(state)) => return Ok(Err(RetryRefused::NotDead(state))),
            Some(Ok(revived)) => revived,
        };
        match self.send(&record).await {
            Ok(()) => {
                self.confirm(record, revision).await;
                Ok(Ok(()))
            }
            Err(e) => {
                self.unrevive(dead).await;
                Err(e)
            }
        }
    }

    /// Refuses at once while the connection is down: a request would wait
    /// for the client library's timeout, then fail anyway, and one that
    /// fails there may leave half its writes behind.
    fn connected(&self) -> Result<(), BrokerError> {
        match self.js.client().connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            _ => Err(BrokerError::Disconnected {
                url: redact::target(&self.url),
            }),
        }
    }

    /// Confirms `record`, written pending at `revision`, whose publish was
    /// acknowledged; in the background if the broker cannot take it now.
    async fn confirm(&self, record: Shared, revision: u64) {
        let records = self.records.clone();
        let id = record.task.id;
        settle(format!("confirming task {id}"), move || {
            let (records, record) = (records.clone(), record.clone());
            async move { records.confirm(record, revision).await }
        })
        .await;
    }

    /// Puts back `dead`, the record of a task whose revival was refused; in
    /// the background if the broker cannot take it now.
    async fn unrevive(&self, dead: Shared) {
        let records = self.records.clone();
        let id = dead.task.id;
        settle(format!("putting back dead task {id}"), move || {
            let (records, dead) = (records.clone(), dead.clone());
            async move { records.unrevive(dead).await }
        })
        .await;
    }

    /// Takes back what a failed submit of `s` wrote: its record (a message
    /// that landed anyway then finds none and is not run) and its key.
    async fn undo(&self, s: &Submission) {
        let records = self.records.clone();
        let (id, key) = (s.task.id, s.idempotency_key.clone());
        settle(
            format!("taking back the refused submit of task {id}"),
            move || {
                let (records, key) = (records.clone(), key.clone());
                // The key first: once the record is gone a client may
                // rightly submit again, and must not be told `duplicate`.
                async move {
                    if let Some(key) = &key {
                        records.release(key, id).await?;
                    }
                    records.forget(id).await
                }
            },
        )
        .await;
    }
}

/// Runs `write` (finishing or taking back an operation) now, and when the
/// broker cannot take it now — it is usually the broker that failed — again
/// every second in the background until it lands: a record left `queued`
/// with nothing to run it, a revival left standing, or a taken task left
/// pending would outlive the outage otherwise.
async fn settle<F, Fut>(what: String, mut write: F)
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), BrokerError>> + Send,
{
    let Err(e) = write().await else { return };
    tracing::warn!("{what} failed ({e}); trying again every second");
    tokio::spawn(async move {
        let until = tokio::time::Instant::now() + SETTLE_FOR;
        while tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_secs(1)).await;
            match write().await {
                Ok(()) => {
                    tracing::info!("{what}: done");
                    return;
                }
                Err(e) => tracing::debug!("{what} failed again: {e}"),
            }
        }
        tracing::error!("{what}: gave up after {SETTLE_FOR:?}");
    });
}
