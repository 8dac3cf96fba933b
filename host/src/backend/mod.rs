//! Where accepted tasks are kept: the one interface the operations talk to.
//!
//! [`TaskBackend`] is what `submit`, `task`, `tasks`, `retry`, `watch` and
//! the broker part of `status` need from a task store. It has two
//! implementations, chosen once at start-up by the daemon:
//!
//! - [`local::LocalTasks`]: this host's embedded store (SQLite, or memory)
//!   feeding this host's pool — the default;
//! - `broker::SharedTasks`: NATS JetStream, where every host of a cluster
//!   sees every task and any host may run it.
//!
//! The API holds an `Arc<dyn TaskBackend>` and never asks which one it has;
//! the pool only ever sees this host's store (in broker mode it runs the
//! tasks a host pulled, one attempt at a time). Both answer with the
//! protocol's views, so a client cannot tell them apart either.

pub mod local;

use futures_util::future::BoxFuture;
use tokio::sync::broadcast;

use crate::protocol::{AttemptView, BrokerView, TaskView, format_time};
use crate::redact;
use crate::store::{Accepted, Submission, TaskEvent, TaskRecord};
use crate::task::{TaskId, TaskState};

/// Why a backend did not do what it was asked. Each maps to one protocol
/// error code (see `api`).
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// Nothing was done; the store or broker may take it later.
    #[error("{0}")]
    Unavailable(String),
    /// The queue is full.
    #[error("the queue is full; try again later")]
    Busy,
    #[error("{0}")]
    Internal(String),
    #[error("no task {0}")]
    NotFound(TaskId),
    #[error("task {id} is {state}, not dead; only dead tasks can be retried")]
    NotDead { id: TaskId, state: &'static str },
    #[error("the daemon stopped before the task finished")]
    ShuttingDown,
}

/// Runs `change` — a change to the tasks (a submit, a retry) and what must
/// follow it — on its own task, to its end.
///
/// A request ends when its client goes (the server drops its future), but
/// a change dropped halfway leaves half of it done: a submit recorded and
/// never handed to the pool sits `queued` until a restart; one in the
/// broker leaves a key claimed or a record pending. Run here, the change
/// ends as it would have; only its answer goes unheard.
pub async fn to_the_end<T: Send + 'static>(
    change: impl Future<Output = Result<T, BackendError>> + Send + 'static,
) -> Result<T, BackendError> {
    tokio::spawn(change)
        .await
        .unwrap_or_else(|e| Err(BackendError::Internal(format!("the change failed: {e}"))))
}

/// A task's final view, once it has finished.
pub type Finished = BoxFuture<'static, Result<TaskView, BackendError>>;

/// What a backend did with a `submit`.
pub struct Submitted {
    /// One per submission, in order.
    pub accepted: Vec<Accepted>,
    /// With `wait`: one per submission, in order, resolving when that task
    /// has finished (wherever it ran). Empty without `wait`.
    pub finished: Vec<Finished>,
}

/// A task store the operations can use without knowing which it is.
#[async_trait::async_trait]
pub trait TaskBackend: Send + Sync {
    /// Accepts `submissions`, answering once they are durable (committed
    /// locally, or acknowledged by the broker). With `wait`, the waiters
    /// are registered before any task can run, so none is missed.
    async fn submit(
        &self,
        submissions: Vec<Submission>,
        wait: bool,
    ) -> Result<Submitted, BackendError>;

    /// One task with every attempt.
    async fn get(&self, id: TaskId) -> Result<Option<TaskView>, BackendError>;

    /// Tasks by state and platform, at most `limit`.
    async fn list(
        &self,
        state: Option<TaskState>,
        platform: Option<&str>,
        limit: usize,
    ) -> Result<Vec<TaskView>, BackendError>;

    /// Ids of every dead task.
    async fn dead(&self) -> Result<Vec<TaskId>, BackendError>;

    /// Brings a dead task back to `queued`, with a fresh set of attempts.
    async fn retry(&self, id: TaskId) -> Result<(), BackendError>;

    /// Task events from now on, for `watch`.
    fn subscribe(&self) -> broadcast::Receiver<TaskEvent>;

    /// How many watchers are subscribed.
    fn watchers(&self) -> usize;

    /// What `status` shows of the broker, when there is one.
    async fn broker(&self) -> Option<BrokerView>;
}

impl From<TaskRecord> for TaskView {
    fn from(r: TaskRecord) -> Self {
        TaskView {
            id: r.task.id.to_string(),
            platform: r.task.platform.clone(),
            target: redact::target(&r.task.target),
            title: r.task.title.clone(),
            format: r.task.format,
            priority: r.task.priority,
            state: r.state,
            submitted_at: format_time(r.submitted_at),
            started_at: r.started_at.map(format_time),
            finished_at: r.finished_at.map(format_time),
            outcome: r.outcome,
            plugin: r.plugin,
            attempts: r.attempts,
            not_before: r
                .not_before
                .filter(|_| !r.state.is_finished())
                .map(format_time),
            history: r
                .history
                .into_iter()
                .map(|a| AttemptView {
                    number: a.number,
                    started_at: format_time(a.started_at),
                    ended_at: a.ended_at.map(format_time),
                    outcome: a.outcome,
                    plugin: a.plugin,
                })
                .collect(),
        }
    }
}
