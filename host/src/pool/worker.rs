//! A worker: runs the tasks the dispatcher assigns, one at a time, on warm
//! instances where it has them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;
use tracing::field::Empty;

use super::lifecycle::{self, Lifecycle};
use super::settings::LiveSettings;
use super::shared_pace::SharedPace;
use super::stats::WorkerMetrics;
use super::warm::{WarmBudget, WarmCache, WarmLimits};
use crate::executor::{Executor, Health};
use crate::plugin::LoadedPlugin;
use crate::registry::Registry;
use crate::task::{FailureClass, Outcome, Task};
use crate::telemetry::attempt::{AttemptSpan, in_attempt};

/// Tasks for one plugin version, given to one worker.
pub(super) struct Assignment {
    pub plugin: Arc<LoadedPlugin>,
    pub tasks: Vec<Arc<Task>>,
}

/// What workers tell the dispatcher.
pub(super) enum Event {
    /// The worker finished its assignment and is idle, holding these plugin
    /// versions (keys) warm. `mean_task` is how long the assignment's tasks
    /// took on average.
    Idle {
        worker: u64,
        warm: Vec<String>,
        plugin: String,
        mean_task: Duration,
    },
    /// The platform answered "slow down": pause the destination `key`.
    RateLimited { key: String, retry_after: Duration },
    /// The budget shared with other hosts had no room for `task`: it was
    /// not run; hold it in `key`'s backlog for `wait`.
    HandedBack {
        task: Arc<Task>,
        key: String,
        wait: Duration,
    },
    /// The worker's inbox closed and it has stopped.
    Exited { worker: u64 },
}

/// What every worker shares.
pub(super) struct WorkerContext {
    pub executor: Arc<Executor>,
    pub registry: Arc<Registry>,
    pub lifecycle: Arc<Lifecycle>,
    pub settings: Arc<LiveSettings>,
    pub budget: Arc<WarmBudget>,
    pub limits: WarmLimits,
    pub warm_hits: AtomicU64,
    pub warm_misses: AtomicU64,
    pub shared_pace: Option<Arc<dyn SharedPace>>,
}

pub(super) async fn run(
    id: u64,
    mut inbox: mpsc::Receiver<Assignment>,
    events: mpsc::UnboundedSender<Event>,
    context: Arc<WorkerContext>,
    metrics: Arc<WorkerMetrics>,
) {
    let mut warm = WarmCache::new(context.limits, context.budget.clone());
    while let Some(assignment) = inbox.recv().await {
        warm.evict_stale(&context.registry, Instant::now());
        let started = Instant::now();
        for task in &assignment.tasks {
            deliver(
                &assignment.plugin,
                task,
                id,
                &mut warm,
                &context,
                &metrics,
                &events,
            )
            .await;
        }
        *metrics.warm_plugins.lock().expect("never poisoned") = warm.names();
        metrics
            .memory_bytes
            .store(warm.memory_bytes(), Ordering::Relaxed);
        let idle = Event::Idle {
            worker: id,
            warm: warm.keys(),
            plugin: assignment.plugin.key.clone(),
            mean_task: started.elapsed() / assignment.tasks.len().max(1) as u32,
        };
        if events.send(idle).is_err() {
            break;
        }
    }
    drop(warm);
    let _ = events.send(Event::Exited { worker: id });
}

/// Takes one send from the budget shared with other hosts, if `task`'s
/// destination is rate limited and there is one: `None` if taken (or not
/// needed), else how long the task must wait.
async fn take_shared(
    plugin: &LoadedPlugin,
    task: &Task,
    context: &WorkerContext,
) -> Option<Duration> {
    let shared = context.shared_pace.as_ref()?;
    let rules = context.settings.get().rate_rules(task, &plugin.info);
    if rules.is_empty() {
        return None;
    }
    match shared.take(&super::pacer::pace_key(task), &rules).await {
        Ok(wait) => wait,
        Err(e) => {
            tracing::warn!(task = %task.id, "cannot take from the shared rate budget: {e}; waiting 1 s");
            Some(Duration::from_secs(1))
        }
    }
}

async fn deliver(
    plugin: &Arc<LoadedPlugin>,
    task: &Arc<Task>,
    worker: u64,
    warm: &mut WarmCache,
    context: &WorkerContext,
    metrics: &WorkerMetrics,
    events: &mpsc::UnboundedSender<Event>,
) {
    if let Some(wait) = take_shared(plugin, task, context).await {
        let key = super::pacer::pace_key(task);
        let _ = events.send(Event::HandedBack {
            task: task.clone(),
            key,
            wait,
        });
        return;
    }
    let started = Instant::now();
    *metrics.current.lock().expect("never poisoned") = Some((task.id, task.platform.clone()));
    let attempt = context.lifecycle.store().start(task.id);
    let span = {
        let (task, plugin, number) = (task.clone(), plugin.clone(), attempt.number);
        // The plugin's own lines and every line about the delivery carry
        // these fields.
        AttemptSpan::new(move || {
            tracing::info_span!(
                "attempt",
                task = %task.id,
                platform = %task.platform,
                plugin = %plugin.name,
                version = %plugin.version,
                destination = task.destination.as_deref().unwrap_or("-"),
                worker,
                attempt = number,
                outcome = Empty,
                // Read by the OTLP export: a failed attempt is an error span.
                otel.status_code = Empty,
            )
        })
    };
    // The attempt, from the call to the recorded outcome, in its scope: the
    // lines logged anywhere on the way carry its span.
    span.clone()
        .run(async {
            let outcome = call(plugin, task, warm, context, &span).await;
            // The pause goes to the dispatcher before the outcome is
            // recorded (and waiters answered), so no one can see the
            // outcome and beat the pause.
            if let Some(retry_after) = lifecycle::pause(&outcome) {
                if let Some(m) = context.lifecycle.metrics() {
                    m.pause(&task.platform);
                }
                let key = super::pacer::pace_key(task);
                if let Some(shared) = &context.shared_pace
                    && let Err(e) = shared.pause(&key, retry_after).await
                {
                    in_attempt(|| tracing::warn!("cannot tell the other hosts to pause: {e}"));
                }
                let _ = events.send(Event::RateLimited { key, retry_after });
            }
            // Counted before the outcome is recorded: whoever sees the task
            // finished also sees it counted in `status`.
            metrics.record(started.elapsed().as_micros() as u64, outcome.is_success());
            *metrics.current.lock().expect("never poisoned") = None;
            *metrics.last_activity.lock().expect("never poisoned") = Some(SystemTime::now());
            // Held across the write: when commits fall behind, the worker
            // waits here (its task still running) rather than piling up
            // outcomes that a crash would lose and deliver again.
            let _room = context.lifecycle.store().room_for_outcome().await;
            context.lifecycle.finish(
                task,
                attempt,
                outcome,
                Some(plugin.version_ref()),
                Some(started.elapsed()),
            );
        })
        .await;
}

/// Runs `task` on a warm instance of `plugin` (or a new one) and logs what
/// came of it, in the attempt's span.
async fn call(
    plugin: &Arc<LoadedPlugin>,
    task: &Arc<Task>,
    warm: &mut WarmCache,
    context: &WorkerContext,
    span: &AttemptSpan,
) -> Outcome {
    let (instance, unit) = match warm.take(&plugin.key) {
        Some((instance, unit)) => (Ok(instance), Some(unit)),
        None => (context.executor.instantiate(plugin.clone()).await, None),
    };
    let was_warm = unit.is_some();
    let counter = if was_warm {
        &context.warm_hits
    } else {
        &context.warm_misses
    };
    counter.fetch_add(1, Ordering::Relaxed);
    if let Some(m) = context.lifecycle.metrics() {
        m.warm(was_warm);
    }
    let route = match &task.destination {
        None => Ok(None),
        Some(name) => context
            .settings
            .get()
            .destinations
            .route(name)
            .cloned()
            .map(Some)
            .ok_or_else(|| {
                Outcome::failed(
                    FailureClass::Permanent,
                    format!("destination `{name}` is no longer configured"),
                )
            }),
    };
    let outcome = match (instance, route) {
        (Ok(mut instance), Ok(route)) => {
            let (outcome, health) = context
                .executor
                .call(&mut instance, task, route.as_deref())
                .await;
            warm.put_back(instance, unit, health);
            outcome
        }
        (Ok(instance), Err(outcome)) => {
            warm.put_back(instance, unit, Health::Reusable);
            outcome
        }
        (Err(failure), _) => Outcome::failed(failure.class, failure.message),
    };

    span.record(
        "outcome",
        match &outcome {
            Outcome::Delivered { .. } => "delivered",
            Outcome::Failed { class, .. } => class.as_str(),
        },
    );
    match &outcome {
        Outcome::Delivered { status, .. } => {
            // At debug: at info, a busy host writes a line per delivery
            // (the journal and the metrics keep every outcome anyway), and
            // a quiet delivery's span is never made.
            if tracing::enabled!(tracing::Level::DEBUG) {
                in_attempt(|| tracing::debug!(plugin = %plugin.name, status = %status, "delivered"))
            }
        }
        Outcome::Failed { class, message, .. } => {
            span.record("otel.status_code", "error");
            in_attempt(
                || tracing::warn!(plugin = %plugin.name, ?class, "delivery failed: {message}"),
            )
        }
    }
    outcome
}
