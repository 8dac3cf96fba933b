//! The default backend: this host's embedded store and its pool.
//!
//! A submit is committed to the store (SQLite, fsynced, unless the store is
//! in memory) and then handed to the pool: due tasks are queued at once,
//! scheduled ones given to the pool's scheduler. Every read is the store's.

use std::sync::Arc;
use std::time::SystemTime;

use futures_util::FutureExt;
use tokio::sync::broadcast;

use super::{BackendError, Submitted, TaskBackend, to_the_end};
use crate::pool::Pool;
use crate::protocol::{BrokerView, TaskView};
use crate::store::{Accepted, StoreError, Submission, TaskEvent, TaskStore};
use crate::task::{TaskId, TaskState};

/// The embedded store and the pool that runs its tasks.
pub struct LocalTasks {
    store: Arc<TaskStore>,
    pool: Arc<Pool>,
}

impl LocalTasks {
    pub fn new(store: Arc<TaskStore>, pool: Arc<Pool>) -> Self {
        LocalTasks { store, pool }
    }
}

impl From<StoreError> for BackendError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) => BackendError::Unavailable(format!("the task store: {e}")),
            StoreError::NotFound(id) => BackendError::NotFound(id),
            StoreError::NotDead { id, state } => BackendError::NotDead { id, state },
            StoreError::Journal(_) => BackendError::Internal(format!("the task store: {e}")),
        }
    }
}

#[async_trait::async_trait]
impl TaskBackend for LocalTasks {
    async fn submit(
        &self,
        submissions: Vec<Submission>,
        wait: bool,
    ) -> Result<Submitted, BackendError> {
        if !self.pool.has_room(submissions.len()) {
            return Err(BackendError::Busy);
        }
        let (store, pool) = (self.store.clone(), self.pool.clone());
        to_the_end(async move { take_in(&store, &pool, submissions, wait).await }).await
    }

    async fn get(&self, id: TaskId) -> Result<Option<TaskView>, BackendError> {
        Ok(self.store.get(id).await?.map(TaskView::from))
    }

    async fn list(
        &self,
        state: Option<TaskState>,
        platform: Option<&str>,
        limit: usize,
    ) -> Result<Vec<TaskView>, BackendError> {
        let records = self
            .store
            .list(state, platform.map(String::from), limit)
            .await?;
        Ok(records.into_iter().map(TaskView::from).collect())
    }

    async fn dead(&self) -> Result<Vec<TaskId>, BackendError> {
        Ok(self.store.dead().await?)
    }

    async fn retry(&self, id: TaskId) -> Result<(), BackendError> {
        let (store, pool) = (self.store.clone(), self.pool.clone());
        to_the_end(async move {
            store.retry(id).await?;
            pool.schedule(id, SystemTime::now());
            Ok(())
        })
        .await
    }

    fn subscribe(&self) -> broadcast::Receiver<TaskEvent> {
        self.store.subscribe()
    }

    fn watchers(&self) -> usize {
        self.store.watchers()
    }

    async fn broker(&self) -> Option<BrokerView> {
        None
    }
}

/// Records `submissions` in the store, then hands them to the pool: due
/// tasks are queued at once, scheduled ones given to the scheduler. Both
/// or neither: see [`to_the_end`].
async fn take_in(
    store: &TaskStore,
    pool: &Pool,
    submissions: Vec<Submission>,
    wait: bool,
) -> Result<Submitted, BackendError> {
    let tasks: Vec<_> = submissions
        .iter()
        .map(|s| (s.task.clone(), s.not_before))
        .collect();
    // Tasks waited on stay in memory; others due later may be parked in
    // the journal, and the scheduler loads them back when due.
    let accepted = if wait {
        store.submit_and_keep(submissions).await?
    } else {
        store.submit(submissions).await?
    };
    // Subscribe before queueing so a fast delivery cannot be missed. A
    // duplicate may name a task no longer in memory: finished and pushed
    // out, or parked until it comes due; it is waited for all the same.
    let mut finished = Vec::new();
    if wait {
        for a in &accepted {
            let Some(waiter) = store.wait_anywhere(a.id()).await? else {
                continue;
            };
            finished.push(
                waiter
                    .map(|r| {
                        r.map(TaskView::from)
                            .map_err(|_| BackendError::ShuttingDown)
                    })
                    .boxed(),
            );
        }
    }
    let mut ready = Vec::new();
    for (a, (task, not_before)) in accepted.iter().zip(tasks) {
        // Parked tasks are the scheduler's once `unpark` reads them back;
        // duplicates were scheduled when first accepted.
        let Accepted::New(id) = a else { continue };
        match not_before {
            Some(at) => pool.schedule(*id, at),
            None => ready.push(task),
        }
    }
    pool.enqueue(&ready);
    Ok(Submitted { accepted, finished })
}
