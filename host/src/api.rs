//! The daemon's operations: what each protocol request does.
//!
//! [`Api::handle`] takes a decoded [`Request`] and returns the `result`
//! value or an [`ErrorBody`]; the server turns either into a response line.
//! Result shapes are the `*View` types below, which the CLI decodes too.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::pool::{EnqueueError, Pool, PoolStats};
use crate::protocol::{ErrorBody, ErrorCode, NewTask, Request};
use crate::redact;
use crate::registry::{PluginInfo, PluginRef, Registry};
use crate::reload::Reloader;
use crate::store::{TaskRecord, TaskStore};
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
    reloader: Reloader,
    started: Instant,
}

impl Api {
    pub fn new(registry: Arc<Registry>, store: Arc<TaskStore>, pool: Arc<Pool>, reloader: Reloader) -> Self {
        Api { registry, store, pool, reloader, started: Instant::now() }
    }

    pub async fn handle(&self, request: Request) -> Result<Value, ErrorBody> {
        match request {
            Request::Ping => Ok(json!({ "pong": true })),
            Request::Submit(submit) => {
                let wait = submit.wait;
                self.submit(submit.into_tasks(), wait).await
            }
            Request::Task { task_id } => self.task(&task_id),
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
        let mut tasks = Vec::with_capacity(new_tasks.len());
        for (index, new) in new_tasks.into_iter().enumerate() {
            let at = |message: String| if batch { format!("task {index}: {message}") } else { message };
            if catalog.lookup(&new.platform).is_none() {
                let known = catalog.platforms().join(", ");
                return Err(ErrorBody::new(
                    ErrorCode::UnknownPlatform,
                    at(format!("no loaded plugin serves platform `{}` (loaded: {known})", new.platform)),
                ));
            }
            if new.target.trim().is_empty() {
                return Err(ErrorBody::new(ErrorCode::InvalidRequest, at("`target` is empty".into())));
            }
            tasks.push(Arc::new(Task {
                id: TaskId::new(),
                platform: new.platform,
                target: new.target,
                title: new.title,
                body: new.body,
                format: new.format,
                priority: new.priority,
                metadata: new.metadata,
            }));
        }

        self.store.insert(&tasks);
        // Subscribe before queueing so a fast delivery cannot be missed.
        let waiters: Vec<_> = if wait {
            tasks.iter().filter_map(|t| self.store.wait(t.id)).collect()
        } else {
            Vec::new()
        };
        self.pool.enqueue(&tasks).map_err(|e| match e {
            EnqueueError::Full(_) => ErrorBody::new(ErrorCode::Busy, e.to_string()),
            EnqueueError::Closed => ErrorBody::new(ErrorCode::ShuttingDown, e.to_string()),
        })?;

        if !wait {
            let ids: Vec<String> = tasks.iter().map(|t| t.id.to_string()).collect();
            return Ok(json!({ "task_ids": ids }));
        }
        let mut views = Vec::with_capacity(waiters.len());
        for waiter in waiters {
            let record = waiter.await.map_err(|_| {
                ErrorBody::new(ErrorCode::ShuttingDown, "the daemon stopped before the task finished")
            })?;
            views.push(TaskView::from(record));
        }
        Ok(json!({ "tasks": views }))
    }

    fn task(&self, id: &str) -> Result<Value, ErrorBody> {
        let id: TaskId = id.parse().map_err(|_| {
            ErrorBody::new(ErrorCode::InvalidRequest, format!("`{id}` is not a task id (a UUID)"))
        })?;
        let record = self
            .store
            .get(id)
            .ok_or_else(|| ErrorBody::new(ErrorCode::NotFound, format!("no task {id}")))?;
        Ok(to_value(TaskView::from(record)))
    }

    async fn status(&self) -> Result<StatusView, ErrorBody> {
        let pool = self.pool.stats().await.ok_or_else(|| {
            ErrorBody::new(ErrorCode::ShuttingDown, "the worker pool has stopped")
        })?;
        Ok(StatusView {
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            platforms: self.registry.catalog().platforms().iter().map(|p| p.to_string()).collect(),
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

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn to_value(value: impl Serialize) -> Value {
    serde_json::to_value(value).expect("views serialize")
}
