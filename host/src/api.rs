//! The daemon's operations: what each protocol request does.
//!
//! [`Api::handle`] takes a decoded [`Request`] and returns the `result`
//! value or an [`ErrorBody`]; the server turns either into a response line.
//! Result shapes are the `*View` types below, which the CLI decodes too.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::destination::Destinations;
use crate::pool::{Pool, PoolStats};
use crate::protocol::{ErrorBody, ErrorCode, NewTask, Request};
use crate::redact;
use crate::registry::{PluginInfo, PluginRef, Registry};
use crate::reload::Reloader;
use crate::scheduler::Scheduler;
use crate::store::{Accepted, StoreError, Submission, TaskRecord, TaskStore};
use crate::task::{Format, Outcome, Priority, Task, TaskId, TaskState};

/// Tasks per `submit`.
pub const MAX_BATCH: usize = 10_000;

/// A task as clients see it: the target is redacted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskView {
    pub id: String,
    pub platform: String,
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    pub format: Format,
    pub priority: Priority,
    pub state: TaskState,
    pub submitted_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<PluginRef>,
    pub attempts: u32,
    /// When the next attempt may start (scheduled or retrying tasks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<AttemptView>,
}

/// One attempt as clients see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptView {
    pub number: u32,
    pub started_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<PluginRef>,
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
            submitted_at: rfc3339(r.submitted_at),
            started_at: r.started_at.map(rfc3339),
            finished_at: r.finished_at.map(rfc3339),
            outcome: r.outcome,
            plugin: r.plugin,
            attempts: r.attempts,
            not_before: r.not_before.filter(|_| !r.state.is_finished()).map(rfc3339),
            history: r
                .history
                .into_iter()
                .map(|a| AttemptView {
                    number: a.number,
                    started_at: rfc3339(a.started_at),
                    ended_at: a.ended_at.map(rfc3339),
                    outcome: a.outcome,
                    plugin: a.plugin,
                })
                .collect(),
        }
    }
}

/// A loaded plugin as `plugins` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginView {
    pub name: String,
    pub version: String,
    pub digest: String,
    pub path: String,
    pub platforms: Vec<String>,
    pub allowed_hosts: usize,
    pub loaded_at: String,
    pub info: PluginInfo,
}

/// A plugin file that failed to load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadErrorView {
    pub path: String,
    pub error: String,
    pub at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginsView {
    pub plugins: Vec<PluginView>,
    pub errors: Vec<LoadErrorView>,
    /// Compilations since start (from the on-disk cache or not).
    pub compiles: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusView {
    pub version: String,
    pub uptime_ms: u64,
    pub platforms: Vec<String>,
    pub pool: PoolStats,
}

/// Everything an operation may touch.
pub struct Api {
    registry: Arc<Registry>,
    store: Arc<TaskStore>,
    pool: Arc<Pool>,
    scheduler: Arc<Scheduler>,
    reloader: Reloader,
    destinations: Arc<Destinations>,
    started: Instant,
}

impl Api {
    pub fn new(
        registry: Arc<Registry>,
        store: Arc<TaskStore>,
        pool: Arc<Pool>,
        scheduler: Arc<Scheduler>,
        reloader: Reloader,
        destinations: Arc<Destinations>,
    ) -> Self {
        Api {
            registry,
            store,
            pool,
            scheduler,
            reloader,
            destinations,
            started: Instant::now(),
        }
    }

    pub async fn handle(&self, request: Request) -> Result<Value, ErrorBody> {
        match request {
            Request::Ping => Ok(json!({ "pong": true })),
            Request::Submit(submit) => {
                let wait = submit.wait;
                self.submit(submit.into_tasks(), wait).await
            }
            Request::Task { task_id } => self.task(&task_id),
            Request::Tasks {
                state,
                platform,
                limit,
            } => {
                let state = state
                    .map(|s| s.parse::<TaskState>())
                    .transpose()
                    .map_err(|e| ErrorBody::new(ErrorCode::InvalidRequest, e))?;
                let records = self
                    .store
                    .list(state, platform.as_deref(), limit.unwrap_or(50).min(10_000))
                    .map_err(internal)?;
                let views: Vec<TaskView> = records.into_iter().map(TaskView::from).collect();
                Ok(json!({ "tasks": views }))
            }
            Request::Retry { task_id, dead } => self.retry(task_id, dead),
            Request::Status => Ok(to_value(self.status().await?)),
            Request::Plugins => Ok(to_value(self.plugins())),
            Request::Reload { name } => {
                let results = self
                    .reloader
                    .reload(name)
                    .await
                    .map_err(|e| ErrorBody::new(ErrorCode::NotFound, e))?;
                Ok(json!({ "results": results }))
            }
            Request::Scale { min, max } => {
                let (min, max) = self
                    .pool
                    .scale(min, max)
                    .await
                    .map_err(|e| ErrorBody::new(ErrorCode::InvalidRequest, e))?;
                Ok(json!({ "min_workers": min, "max_workers": max }))
            }
        }
    }

    async fn submit(&self, new_tasks: Vec<NewTask>, wait: bool) -> Result<Value, ErrorBody> {
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
                if catalog.lookup(platform).is_none() {
                    let known = catalog.platforms().join(", ");
                    return Err(ErrorBody::new(
                        ErrorCode::UnknownPlatform,
                        at(format!(
                            "no loaded plugin serves platform `{platform}` (loaded: {known})"
                        )),
                    ));
                }
            }
            let not_before = match (&new.deliver_at, &new.delay) {
                (Some(_), Some(_)) => {
                    return Err(invalid("give `deliver_at` or `delay`, not both".into()));
                }
                (Some(at), None) => Some(humantime::parse_rfc3339_weak(at).map_err(|e| {
                    invalid(format!("`deliver_at` {at:?} is not an RFC 3339 time: {e}"))
                })?),
                (None, Some(delay)) => Some(
                    now + humantime::parse_duration(delay).map_err(|e| {
                        invalid(format!(
                            "`delay` {delay:?} is not a duration like \"90s\": {e}"
                        ))
                    })?,
                ),
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
                        platform,
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
        if !self.pool.has_room(submissions.len()) {
            return Err(ErrorBody::new(
                ErrorCode::Busy,
                "the queue is full; try again later",
            ));
        }

        let tasks: HashMap<TaskId, (Arc<Task>, Option<SystemTime>)> = submissions
            .iter()
            .map(|s| (s.task.id, (s.task.clone(), s.not_before)))
            .collect();
        let accepted = self.store.submit(submissions).await.map_err(|e| {
            tracing::error!("submit not accepted: {e}");
            ErrorBody::new(
                ErrorCode::Internal,
                format!("the task could not be stored: {e}"),
            )
        })?;
        // Subscribe before queueing so a fast delivery cannot be missed.
        let waiters: Vec<_> = if wait {
            accepted
                .iter()
                .filter_map(|a| self.store.wait(a.id()))
                .collect()
        } else {
            Vec::new()
        };
        let mut ready = Vec::new();
        for a in &accepted {
            let Accepted::New(id) = a else { continue };
            let (task, not_before) = &tasks[id];
            match not_before {
                Some(at) => self.scheduler.schedule(*id, *at),
                None => ready.push(task.clone()),
            }
        }
        if self.pool.enqueue(&ready).is_err() {
            // Accepted and durable: the scheduler queues them when there is room.
            ready
                .iter()
                .for_each(|t| self.scheduler.schedule(t.id, now));
        }

        if !wait {
            let ids: Vec<String> = accepted.iter().map(|a| a.id().to_string()).collect();
            let duplicates: Vec<usize> = accepted
                .iter()
                .enumerate()
                .filter(|(_, a)| matches!(a, Accepted::Duplicate(_)))
                .map(|(i, _)| i)
                .collect();
            return Ok(json!({ "task_ids": ids, "duplicates": duplicates }));
        }
        let mut views = Vec::with_capacity(waiters.len());
        for waiter in waiters {
            let record = waiter.await.map_err(|_| {
                ErrorBody::new(
                    ErrorCode::ShuttingDown,
                    "the daemon stopped before the task finished",
                )
            })?;
            views.push(TaskView::from(record));
        }
        Ok(json!({ "tasks": views }))
    }

    /// Where a submitted task goes: `(platform, destination)` per delivery.
    /// A target that names a configured destination is expanded (fan-outs
    /// included); anything else is a raw target and needs a platform.
    fn routes(&self, new: &NewTask) -> Result<Vec<(String, Option<String>)>, String> {
        if !self.destinations.contains(&new.target) {
            let platform = new.platform.clone().ok_or_else(|| {
                format!(
                    "`platform` is missing, and `target` is not a configured destination{}",
                    self.destinations.names_hint()
                )
            })?;
            return Ok(vec![(platform, None)]);
        }
        let routes = self.destinations.expand(&new.target)?;
        if let Some(platform) = &new.platform
            && routes.iter().any(|r| r.platform != *platform)
        {
            let platforms: Vec<&str> = routes.iter().map(|r| r.platform.as_str()).collect();
            return Err(format!(
                "destination `{}` delivers to {}, not `{platform}`; leave out `platform`",
                new.target,
                platforms.join(", ")
            ));
        }
        Ok(routes
            .into_iter()
            .map(|r| (r.platform.clone(), Some(r.name.clone())))
            .collect())
    }

    fn task(&self, id: &str) -> Result<Value, ErrorBody> {
        let id: TaskId = id.parse().map_err(|_| {
            ErrorBody::new(
                ErrorCode::InvalidRequest,
                format!("`{id}` is not a task id (a UUID)"),
            )
        })?;
        let record = self
            .store
            .get(id)
            .map_err(internal)?
            .ok_or_else(|| ErrorBody::new(ErrorCode::NotFound, format!("no task {id}")))?;
        Ok(to_value(TaskView::from(record)))
    }

    fn retry(&self, task_id: Option<String>, dead: bool) -> Result<Value, ErrorBody> {
        let ids = match (task_id, dead) {
            (Some(id), false) => vec![id.parse::<TaskId>().map_err(|_| {
                ErrorBody::new(
                    ErrorCode::InvalidRequest,
                    format!("`{id}` is not a task id (a UUID)"),
                )
            })?],
            (None, true) => self.store.dead().map_err(internal)?,
            _ => {
                return Err(ErrorBody::new(
                    ErrorCode::InvalidRequest,
                    "retry needs `task_id` or `dead: true` (not both)",
                ));
            }
        };
        let mut requeued = Vec::new();
        for id in ids {
            match self.store.retry(id) {
                Ok(_) => {
                    self.scheduler.schedule(id, SystemTime::now());
                    requeued.push(id.to_string());
                }
                Err(StoreError::NotFound(_)) => {
                    return Err(ErrorBody::new(ErrorCode::NotFound, format!("no task {id}")));
                }
                Err(e @ StoreError::NotDead { .. }) => {
                    return Err(ErrorBody::new(ErrorCode::InvalidRequest, e.to_string()));
                }
                Err(e) => return Err(internal(e)),
            }
        }
        Ok(json!({ "requeued": requeued }))
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
            pool,
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
                    path: p.path.display().to_string(),
                    platforms: p.platforms.clone(),
                    allowed_hosts: p.policy.allow.len(),
                    loaded_at: rfc3339(p.loaded_at),
                    info: p.info.clone(),
                })
                .collect(),
            errors: catalog
                .failures()
                .map(|f| LoadErrorView {
                    path: f.path.display().to_string(),
                    error: f.error.clone(),
                    at: rfc3339(f.at),
                })
                .collect(),
            compiles: self.registry.compiles(),
        }
    }
}

fn internal(e: StoreError) -> ErrorBody {
    ErrorBody::new(ErrorCode::Internal, e.to_string())
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn to_value(value: impl Serialize) -> Value {
    serde_json::to_value(value).expect("views serialize")
}
