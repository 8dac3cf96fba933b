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
use std::time::{Duration, UNIX_EPOCH};

use futures_util::{FutureExt, StreamExt};
use tokio::sync::broadcast;

use super::records::Shared;
use super::work::Host;
use super::{Broker, BrokerError, RetryRefused};
use crate::backend::{BackendError, Submitted, TaskBackend};
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
            let stopped = |why: Option<BrokerError>| {
                if let Some(e) = why {
                    tracing::warn!("following task records for watchers stopped: {e}");
                }
                *flag.lock().expect("never poisoned") = false;
            };
            let mut changes = match broker.records().changes().await {
                Ok(changes) => changes,
                Err(e) => return stopped(Some(e)),
            };
            loop {
                // A quiet bucket still checks for watchers now and then.
                let next = tokio::time::timeout(Duration::from_secs(5), changes.next()).await;
                if events.receiver_count() == 0 {
                    let mut following = flag.lock().expect("never poisoned");
                    if events.receiver_count() == 0 {
                        *following = false;
                        return;
                    }
                }
                let entry = match next {
                    Err(_) => continue,
                    Ok(None) => {
                        return stopped(Some(BrokerError::Records("the watch ended".into())));
                    }
                    Ok(Some(Err(e))) => return stopped(Some(BrokerError::Records(e.to_string()))),
                    Ok(Some(Ok(entry))) => entry,
                };
                if let Ok(record) = serde_json::from_slice::<Shared>(&entry.value) {
                    let _ = events.send(event(record));
                }
            }
        });
    }
}

/// A record as a watch event.
fn event(record: Shared) -> TaskEvent {
    let state = record.view.state;
    TaskEvent {
        task: Arc::new(record.task),
        state,
        attempt: record.view.attempts,
        at: UNIX_EPOCH + Duration::from_millis(record.changed_ms),
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
        let accepted = self.shared().submit(submissions).await?;
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
        match self.shared().retry(id).await? {
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
