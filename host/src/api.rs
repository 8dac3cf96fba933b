//! The daemon's operations: what each protocol request does.
//!
//! [`Api::handle`] takes a decoded [`Request`] (every value in it already
//! checked by `protocol`) and returns the `result` value or an
//! [`ErrorBody`]; the server turns either into a response line. Result
//! shapes are the views in `protocol::views`, which the CLI decodes too.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use serde::Serialize;
use serde_json::{Value, json};

use crate::backend::{BackendError, TaskBackend};
use crate::metrics::Metrics;
use crate::pool::Pool;
use crate::pool::settings::LiveSettings;
use crate::protocol::{
    ErrorBody, ErrorCode, EventView, ListLimit, LoadErrorView, NewTask, PluginView, PluginsView,
    Reply, Request, StatusView, TaskView, WatchFilter, WatchLine, format_time, reply,
};
use crate::registry::Registry;
use crate::reload::Reloader;
use crate::store::{Accepted, Submission, TaskEvent};
use crate::task::{PlatformName, Task, TaskId};

/// Tasks per `submit`.
pub const MAX_BATCH: usize = 10_000;

/// What `reload-config` (and SIGHUP) does; `reconfigure` implements it.
/// A trait here so the operations do not depend on the config file's types.
#[async_trait::async_trait]
pub trait Reconfigure: Send + Sync {
    /// Re-reads the config and applies what can change while running; the
    /// answer, or the reason nothing was applied.
    async fn reload(&self) -> Result<Value, String>;
}

/// Watchers at once, across connections; one more is answered `busy`.
pub const MAX_WATCHERS: usize = 64;

/// A `watch` in progress: filtered task events as protocol lines.
pub struct Watch {
    events: tokio::sync::broadcast::Receiver<TaskEvent>,
    filter: WatchFilter,
    dropped: Arc<AtomicU64>,
}

impl Watch {
    /// The next line to stream: a matching event, or a count of events
    /// dropped because this watcher fell behind. `None` once the store is
    /// gone.
    pub async fn next(&mut self) -> Option<WatchLine> {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            match self.events.recv().await {
                Ok(event) if self.matches(&event) => {
                    return Some(WatchLine::Event(EventView {
                        task_id: event.task.id.to_string(),
                        platform: event.task.platform.clone(),
                        destination: event.task.destination.clone(),
                        state: event.state,
                        attempt: event.attempt,
                        at: format_time(event.at),
                        outcome: event.outcome,
                    }));
                }
                Ok(_) => continue,
                Err(RecvError::Lagged(n)) => {
                    self.dropped.fetch_add(n, Ordering::Relaxed);
                    return Some(WatchLine::Dropped(n));
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }

    fn matches(&self, event: &TaskEvent) -> bool {
        let f = &self.filter;
        f.state.is_none_or(|s| s == event.state)
            && f.platform
                .as_ref()
                .is_none_or(|p| *p == event.task.platform)
            && f.destination
                .as_ref()
                .is_none_or(|d| event.task.destination.as_ref() == Some(d))
    }
}

/// Everything an operation may touch.
pub struct Api {
    registry: Arc<Registry>,
    /// Where tasks are kept: this host's store, or the broker.
    tasks: Arc<dyn TaskBackend>,
    pool: Arc<Pool>,
    reloader: Reloader,
    settings: Arc<LiveSettings>,
    started: Instant,
    watch_dropped: Arc<AtomicU64>,
    metrics: Option<Arc<Metrics>>,
    reconfigure: Arc<dyn Reconfigure>,
}

impl Api {
    pub fn new(
        registry: Arc<Registry>,
        tasks: Arc<dyn TaskBackend>,
        pool: Arc<Pool>,
        reloader: Reloader,
        settings: Arc<LiveSettings>,
        metrics: Option<Arc<Metrics>>,
        reconfigure: Arc<dyn Reconfigure>,
    ) -> Self {
        Api {
            registry,
            tasks,
            pool,
            reloader,
            settings,
            started: Instant::now(),
            watch_dropped: Arc::default(),
            metrics,
            reconfigure,
        }
    }

    /// `reload-config`: see [`Reconfigure`].
    pub async fn reload_config(&self) -> Result<Value, ErrorBody> {
        self.reconfigure.reload().await.map_err(|why| {
            ErrorBody::new(
                ErrorCode::InvalidRequest,
                format!("the config was not reloaded (the running one keeps serving): {why}"),
            )
        })
    }

    /// Where metrics are recorded, when they are on.
    pub fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.metrics.as_ref()
    }

    /// Starts a `watch`; `busy` when [`MAX_WATCHERS`] are watching already.
    pub fn watch(&self, filter: WatchFilter) -> Result<Watch, ErrorBody> {
        if self.tasks.watchers() >= MAX_WATCHERS {
            return Err(ErrorBody::new(
                ErrorCode::Busy,
                format!("at most {MAX_WATCHERS} watchers at once"),
            ));
        }
        Ok(Watch {
            events: self.tasks.subscribe(),
            filter,
            dropped: self.watch_dropped.clone(),
        })
    }

    pub async fn handle(&self, request: Request) -> Result<Reply, ErrorBody> {
        match request {
            Request::Ping => Ok(reply(&json!({ "pong": true }))),
            Request::ReloadConfig => self.reload_config().await.map(|r| reply(&r)),
            Request::Watch(_) => Err(ErrorBody::new(
                ErrorCode::InvalidRequest,
                "`watch` streams; it is answered by the connection, not as one request",
            )),
            Request::Submit(submit) => {
                let wait = submit.wait;
                self.submit(submit.into_tasks(), wait).await
            }
            Request::Task { task_id } => self.task(task_id).await,
            Request::Tasks {
                state,
                platform,
                limit,
            } => {
                let limit = limit.unwrap_or(ListLimit::DEFAULT).get();
                let views = self
                    .tasks
                    .list(state, platform.as_deref(), limit)
                    .await
                    .map_err(backend_error)?;
                Ok(reply(&Tasks { tasks: &views }))
            }
            Request::Retry { task_id, dead } => self.retry(task_id, dead).await,
            Request::Status => Ok(reply(&self.status().await?)),
            Request::Plugins => Ok(reply(&self.plugins())),
            Request::Reload { name } => {
                let results = self
                    .reloader
                    .reload(name)
                    .await
                    .map_err(|e| ErrorBody::new(ErrorCode::NotFound, e))?;
                Ok(reply(&json!({ "results": results })))
            }
            Request::Scale { min, max } => {
                let (min, max) = self
                    .pool
                    .scale(min, max)
                    .await
                    .map_err(|e| ErrorBody::new(ErrorCode::InvalidRequest, e))?;
                Ok(reply(&json!({ "min_workers": min, "max_workers": max })))
            }
        }
    }

    async fn submit(&self, new_tasks: Vec<NewTask>, wait: bool) -> Result<Reply, ErrorBody> {
        if new_tasks.is_empty() {
            return Err(ErrorBody::new(
                ErrorCode::InvalidRequest,
                "submit needs `task` (one task) or `tasks` (a non-empty list)",
            ));
        }
        if new_tasks.len() > MAX_BATCH {
            return Err(ErrorBody::new(
                ErrorCode::InvalidRequest,
                format!("at most {MAX_BATCH} tasks per submit"),
            ));
        }
        let catalog = self.registry.catalog();
        // Until the plugins present at start have loaded, a platform nobody
        // serves yet may be served in a moment: such tasks are accepted and
        // wait (the dispatcher parks them).
        let loading = !self.registry.is_ready();
        let batch = new_tasks.len() > 1;
        let now = SystemTime::now();
        let mut submissions = Vec::with_capacity(new_tasks.len());
        for (index, new) in new_tasks.into_iter().enumerate() {
            let at = |message: String| {
                if batch {
                    format!("task {index}: {message}")
                } else {
                    message
                }
            };
            let invalid = |message: String| ErrorBody::new(ErrorCode::InvalidRequest, at(message));
            if new.target.trim().is_empty() {
                return Err(invalid("`target` is empty".into()));
            }
            let routes = self.routes(&new).map_err(&invalid)?;
            for (platform, _) in &routes {
                if catalog.lookup(platform).is_none() && !loading {
                    let known = catalog.platforms().join(", ");
                    return Err(ErrorBody::new(
                        ErrorCode::UnknownPlatform,
                        at(format!(
                            "no loaded plugin serves platform `{platform}` (loaded: {known})"
                        )),
                    ));
                }
            }
            let not_before = match (new.deliver_at, new.delay) {
                (Some(_), Some(_)) => {
                    return Err(invalid("give `deliver_at` or `delay`, not both".into()));
                }
                (Some(at), None) => Some(at.get()),
                (None, Some(delay)) => Some(now + delay.get()),
                (None, None) => None,
            };
            let fan_out = routes.len() > 1;
            for (platform, destination) in routes {
                // One key per leaf, so a repeated fan-out is recognised leaf by leaf.
                let idempotency_key = match (&new.idempotency_key, &destination) {
                    (Some(key), Some(leaf)) if fan_out => Some(format!("{key}#{leaf}")),
                    (key, _) => key.clone(),
                };
                submissions.push(Submission {
                    task: Arc::new(Task {
                        id: TaskId::new(),
                        platform: platform.into(),
                        target: destination.clone().unwrap_or_else(|| new.target.clone()),
                        destination,
                        title: new.title.clone(),
                        body: new.body.clone(),
                        format: new.format,
                        priority: new.priority,
                        metadata: new.metadata.clone(),
                    }),
                    not_before: not_before.filter(|t| *t > now),
                    idempotency_key,
                });
            }
        }
        if submissions.len() > MAX_BATCH {
            return Err(ErrorBody::new(
                ErrorCode::InvalidRequest,
                format!("at most {MAX_BATCH} tasks per submit, counting each fan-out leaf"),
            ));
        }
        let submitted = self.tasks.submit(submissions, wait).await.map_err(|e| {
            if !matches!(e, BackendError::Busy) {
                tracing::error!("submit not accepted: {e}");
            }
            backend_error(e)
        })?;
        if !wait {
            return Ok(reply(&AcceptedAnswer::new(&submitted.accepted)));
        }
        let mut views: Vec<TaskView> = Vec::with_capacity(submitted.finished.len());
        for finished in submitted.finished {
            views.push(finished.await.map_err(backend_error)?);
        }
        Ok(reply(&Tasks { tasks: &views }))
    }

    /// Where a submitted task goes: `(platform, destination)` per delivery.
    /// A target that names a configured destination is expanded (fan-outs
    /// included); anything else is a raw target and needs a platform.
    fn routes(&self, new: &NewTask) -> Result<Vec<(PlatformName, Option<String>)>, String> {
        let settings = self.settings.get();
        let destinations = &settings.destinations;
        if !destinations.contains(&new.target) {
            let platform = new.platform.clone().ok_or_else(|| {
                format!(
                    "`platform` is missing, and `target` is not a configured destination{}",
                    destinations.names_hint()
                )
            })?;
            return Ok(vec![(platform, None)]);
        }
        let routes = destinations.expand(&new.target)?;
        if let Some(platform) = &new.platform
            && routes.iter().any(|r| *platform != r.platform)
        {
            let platforms: Vec<&str> = routes.iter().map(|r| r.platform.as_str()).collect();
            return Err(format!(
                "destination `{}` delivers to {}, not `{platform}`; leave out `platform`",
                new.target,
                platforms.join(", ")
            ));
        }
        routes
            .into_iter()
            .map(|r| Ok((r.platform.parse()?, Some(r.name.clone()))))
            .collect()
    }

    async fn task(&self, id: TaskId) -> Result<Reply, ErrorBody> {
        let view = self
            .tasks
            .get(id)
            .await
            .map_err(backend_error)?
            .ok_or_else(|| backend_error(BackendError::NotFound(id)))?;
        Ok(reply(&view))
    }

    async fn retry(&self, task_id: Option<TaskId>, dead: bool) -> Result<Reply, ErrorBody> {
        let ids = match retry_target(task_id, dead)? {
            RetryTarget::One(id) => vec![id],
            RetryTarget::AllDead => self.tasks.dead().await.map_err(backend_error)?,
        };
        let mut requeued = Vec::new();
        for id in ids {
            self.tasks.retry(id).await.map_err(backend_error)?;
            requeued.push(id);
        }
        Ok(reply(&json!({ "requeued": requeued })))
    }

    async fn status(&self) -> Result<StatusView, ErrorBody> {
        let pool = self.pool.stats().await.ok_or_else(|| {
            ErrorBody::new(ErrorCode::ShuttingDown, "the worker pool has stopped")
        })?;
        Ok(StatusView {
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            platforms: self
                .registry
                .catalog()
                .platforms()
                .iter()
                .map(|p| p.to_string())
                .collect(),
            plugins_ready: self.registry.is_ready(),
            watchers: self.tasks.watchers(),
            watch_dropped: self.watch_dropped.load(Ordering::Relaxed),
            plugins_loading: self
                .registry
                .catalog()
                .loading()
                .map(|p| p.display().to_string())
                .collect(),
            pool,
            broker: self.tasks.broker().await,
        })
    }

    fn plugins(&self) -> PluginsView {
        let catalog = self.registry.catalog();
        PluginsView {
            plugins: catalog
                .plugins()
                .map(|p| PluginView {
                    name: p.name.clone(),
                    version: p.version.clone(),
                    digest: p.digest.clone(),
                    code: p.compiled.tier,
                    path: p.path.display().to_string(),
                    platforms: p.platforms.iter().map(|p| p.to_string()).collect(),
                    allowed_hosts: p.policy.allow.len(),
                    loaded_at: format_time(p.loaded_at),
                    info: p.info.clone(),
                })
                .collect(),
            errors: catalog
                .failures()
                .map(|f| LoadErrorView {
                    path: f.path.display().to_string(),
                    error: f.error.clone(),
                    at: format_time(f.at),
                })
                .collect(),
            loading: catalog.loading().map(|p| p.display().to_string()).collect(),
            compiles: self.registry.compiles(),
        }
    }
}

/// A backend failure as clients see it: `unavailable` and `busy` mean
/// nothing was done and the client may try again later.
fn backend_error(e: BackendError) -> ErrorBody {
    let code = match &e {
        BackendError::Unavailable(_) => ErrorCode::Unavailable,
        BackendError::Busy => ErrorCode::Busy,
        BackendError::Internal(_) => ErrorCode::Internal,
        BackendError::NotFound(_) => ErrorCode::NotFound,
        BackendError::NotDead { .. } => ErrorCode::InvalidRequest,
        BackendError::ShuttingDown => ErrorCode::ShuttingDown,
    };
    ErrorBody::new(code, e.to_string())
}

/// What `retry` was asked to bring back.
enum RetryTarget {
    One(TaskId),
    AllDead,
}

fn retry_target(task_id: Option<TaskId>, dead: bool) -> Result<RetryTarget, ErrorBody> {
    match (task_id, dead) {
        (Some(id), false) => Ok(RetryTarget::One(id)),
        (None, true) => Ok(RetryTarget::AllDead),
        _ => Err(ErrorBody::new(
            ErrorCode::InvalidRequest,
            "retry needs `task_id` or `dead: true` (not both)",
        )),
    }
}

/// What `submit` answers with `wait`, and `tasks`.
#[derive(Serialize)]
struct Tasks<'a> {
    tasks: &'a [TaskView],
}

/// What `submit` answers without `wait`: every task's id, in order, and
/// which of them were duplicates of a task already accepted.
#[derive(Serialize)]
struct AcceptedAnswer {
    task_ids: Vec<TaskId>,
    duplicates: Vec<usize>,
}

impl AcceptedAnswer {
    fn new(accepted: &[Accepted]) -> Self {
        AcceptedAnswer {
            task_ids: accepted.iter().map(|a| a.id()).collect(),
            duplicates: accepted
                .iter()
                .enumerate()
                .filter(|(_, a)| matches!(a, Accepted::Duplicate(_)))
                .map(|(i, _)| i)
                .collect(),
        }
    }
}
