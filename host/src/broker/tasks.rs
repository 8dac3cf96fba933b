//! The broker as a [`TaskBackend`]: tasks and their records in JetStream,
//! the same on every host.
//!
//! `submit` records and publishes (see [`Broker::submit`]); `task`, `tasks`
//! and `retry` read and write the records bucket; `submit` with `wait` and
//! `watch` follow that bucket, so they see tasks finish on any host. A
//! watch's events are the records hosts write — queued, retrying,
//! succeeded, dead; `running` is not shared, as it would cost one more
//! write per attempt.
//!
//! Following the bucket for `watch` costs every record written, decoded
//! here, so it runs only while somebody watches: the first watcher starts
//! it, and it stops once the last one has gone.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use tokio::sync::broadcast;

use super::records::Shared;
use super::work::Host;
use super::{Broker, BrokerError, RetryRefused};
use crate::backend::{BackendError, Submitted, TaskBackend, to_the_end};
use crate::protocol::{BrokerView, TaskView};
use crate::store::events::EVENTS_BUFFERED;
use crate::store::{Submission, TaskEvent};
use crate::task::{TaskId, TaskState};

/// Tasks through the broker.
pub struct SharedTasks {
    host: Host,
    events: broadcast::Sender<TaskEvent>,
    /// Whether the bucket is being followed for watchers; changed only
    /// under this lock, with the watcher count read under it too.
    following: Arc<Mutex<bool>>,
}

impl From<BrokerError> for BackendError {
    fn from(e: BrokerError) -> Self {
        BackendError::Unavailable(format!("the broker: {e}"))
    }
}

impl SharedTasks {
    pub fn new(host: Host) -> Self {
        SharedTasks {
            host,
            events: broadcast::Sender::new(EVENTS_BUFFERED),
            following: Arc::default(),
        }
    }

    fn shared(&self) -> &Arc<Broker> {
        &self.host.broker
    }

    /// Starts following the records bucket, unless it is followed already.
    fn follow(&self) {
        let mut following = self.following.lock().expect("never poisoned");
        if *following {
            return;
        }
        *following = true;
        let (broker, events, flag) = (
            self.shared().clone(),
            self.events.clone(),
            self.following.clone(),
        );
        tokio::spawn(async move {
            // Until the last watcher has gone; a watch the broker ended (a
            // restart, a lost connection) is started again.
            while !unwatched(&events, &flag) {
                let followed = match broker.records().changes().await {
                    Ok(changes) => forward(changes, &events, &flag).await,
                    Err(e) => Err(e),
                };
                match followed {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!("following task records for watchers: {e}; again in 1 s");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
    }
}

/// Whether nobody watches any more; if so, marks the bucket unfollowed.
/// The count is read again under the lock [`SharedTasks::follow`] checks,
/// and a watcher subscribes before it calls `follow`: one arriving now
/// either keeps this follower going or starts a new one.
fn unwatched(events: &broadcast::Sender<TaskEvent>, following: &Mutex<bool>) -> bool {
    if events.receiver_count() > 0 {
        return false;
    }
    let mut following = following.lock().expect("never poisoned");
    if events.receiver_count() > 0 {
        return false;
    }
    *following = false;
    true
}

/// Sends every record written to watchers, until none is left (`Ok`) or
/// the watch ends (`Err`).
async fn forward(
    mut changes: async_nats::jetstream::kv::Watch,
    events: &broadcast::Sender<TaskEvent>,
    following: &Mutex<bool>,
) -> Result<(), BrokerError> {
    loop {
        // A quiet bucket still checks for watchers now and then.
        let next = tokio::time::timeout(Duration::from_secs(5), changes.next()).await;
        if unwatched(events, following) {
            return Ok(());
        }
        let entry = match next {
            Err(_) => continue,
            Ok(None) => return Err(BrokerError::Records("the watch ended".into())),
            Ok(Some(Err(e))) => return Err(super::records_error(e)),
            Ok(Some(Ok(entry))) => entry,
        };
        if let Ok(record) = serde_json::from_slice::<Shared>(&entry.value) {
            let _ = events.send(event(record));
        }
    }
}

/// A record as a watch event.
fn event(record: Shared) -> TaskEvent {
    let state = record.view.state;
    TaskEvent {
        task: Arc::new(record.task),
        state,
        attempt: record.view.attempts,
        at: super::time(record.changed_ms),
        outcome: match state {
            TaskState::Queued | TaskState::Running => None,
            _ => record.view.outcome,
        },
    }
}

#[async_trait::async_trait]
impl TaskBackend for SharedTasks {
    async fn submit(
        &self,
        submissions: Vec<Submission>,
        wait: bool,
    ) -> Result<Submitted, BackendError> {
        let broker = self.shared().clone();
        let accepted = to_the_end(async move { Ok(broker.submit(submissions).await?) }).await?;
        // The records are in the bucket already and `wait_finished` reads
        // the latest one first, so a task finished meanwhile is not missed.
        let finished = if wait {
            accepted
                .iter()
                .map(|a| {
                    let (broker, id) = (self.shared().clone(), a.id());
                    async move { Ok(broker.records().wait_finished(id).await?.view) }.boxed()
                })
                .collect()
        } else {
            Vec::new()
        };
        Ok(Submitted { accepted, finished })
    }

    async fn get(&self, id: TaskId) -> Result<Option<TaskView>, BackendError> {
        Ok(self.shared().records().get(id).await?.map(|r| r.view))
    }

    async fn list(
        &self,
        state: Option<TaskState>,
        platform: Option<&str>,
        limit: usize,
    ) -> Result<Vec<TaskView>, BackendError> {
        let records = self.shared().records().list(state, platform, limit).await?;
        Ok(records.into_iter().map(|r| r.view).collect())
    }

    async fn dead(&self) -> Result<Vec<TaskId>, BackendError> {
        let records = self
            .shared()
            .records()
            .list(Some(TaskState::Dead), None, usize::MAX)
            .await?;
        Ok(records.into_iter().map(|r| r.task.id).collect())
    }

    async fn retry(&self, id: TaskId) -> Result<(), BackendError> {
        let broker = self.shared().clone();
        match to_the_end(async move { Ok(broker.retry(id).await?) }).await? {
            Ok(()) => Ok(()),
            Err(RetryRefused::NotFound) => Err(BackendError::NotFound(id)),
            Err(RetryRefused::NotDead(state)) => Err(BackendError::NotDead {
                id,
                state: state.as_str(),
            }),
        }
    }

    fn subscribe(&self) -> broadcast::Receiver<TaskEvent> {
        let receiver = self.events.subscribe();
        self.follow();
        receiver
    }

    fn watchers(&self) -> usize {
        self.events.receiver_count()
    }

    async fn broker(&self) -> Option<BrokerView> {
        Some(self.host.broker.view(&self.host.stats).await)
    }
}
