//! What happens after an attempt: the one place that decides a task's fate.
//!
//! Every path that ends an attempt — a worker that ran the plugin, the
//! dispatcher finding no plugin for a platform, a stuck worker replaced —
//! comes here, so the rules hold the same way for all of them:
//!
//! 1. the outcome is classified by the [`RetryConfig`] into a [`Verdict`]:
//!    succeeded, retry after a backoff, or dead. Attempts are counted since
//!    the task was last revived by `retry`, so a revived task gets a full
//!    set of attempts while its history keeps every earlier one;
//! 2. a wait that came from outside (a platform's `Retry-After`, a plugin's
//!    `retry_after_ms`) was clamped to [`MAX_RETRY_AFTER`] where it entered
//!    the host (the executor); [`pause`] clamps again, so no path can pause a
//!    destination or schedule a retry beyond it;
//! 3. the outcome is recorded in the store (which answers anyone waiting);
//! 4. a retry is handed to the scheduler.
//!
//! A rate-limited outcome also pauses its destination; the worker reports
//! that pause to the dispatcher *before* calling [`Lifecycle::finish`], so
//! nobody can see the outcome and beat the pause.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::retry::Verdict;
use super::scheduler::Scheduler;
use super::settings::LiveSettings;
use crate::metrics::Metrics;
use crate::plugin::PluginRef;
use crate::store::{AttemptCount, TaskStore};
use crate::task::{FailureClass, Outcome, Task};
use crate::task::{MAX_RETRY_AFTER, clamp_retry_after};
use crate::telemetry::attempt::in_attempt;

/// How long a destination pauses after "slow down" without a retry-after.
pub const DEFAULT_PAUSE: Duration = Duration::from_secs(1);

/// The metrics' platform label of every task no loaded plugin serves.
pub const UNSERVED_LABEL: &str = "unserved";

/// Ends attempts.
pub struct Lifecycle {
    store: Arc<TaskStore>,
    settings: Arc<LiveSettings>,
    scheduler: Arc<Scheduler>,
    metrics: Option<Arc<Metrics>>,
}

impl Lifecycle {
    pub fn new(
        store: Arc<TaskStore>,
        settings: Arc<LiveSettings>,
        scheduler: Arc<Scheduler>,
        metrics: Option<Arc<Metrics>>,
    ) -> Self {
        Lifecycle {
            store,
            settings,
            scheduler,
            metrics,
        }
    }

    pub fn store(&self) -> &Arc<TaskStore> {
        &self.store
    }

    pub fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.metrics.as_ref()
    }

    /// Records the outcome of `attempt` of `task` (which spent `took` in the
    /// plugin, when it got that far), decides on a retry and schedules it.
    pub fn finish(
        &self,
        task: &Task,
        attempt: AttemptCount,
        outcome: Outcome,
        plugin: Option<PluginRef>,
        took: Option<Duration>,
    ) -> Verdict {
        // A platform no plugin serves is named by whoever submitted it
        // (during start-up anything is accepted): one label for them all,
        // so made-up names cannot take the label slots of real platforms.
        let label = match outcome {
            Outcome::Failed {
                class: FailureClass::NoPlugin,
                ..
            } => UNSERVED_LABEL,
            _ => task.platform.as_str(),
        };
        if let Some(m) = &self.metrics {
            m.attempt(label, &outcome, took);
        }
        let retry = &self.settings.get().retry;
        let verdict = match retry.decide(&task.platform, &outcome, attempt.in_round) {
            Verdict::Retry { after } => Verdict::Retry {
                after: after.min(retry.policy(&task.platform).cap.max(MAX_RETRY_AFTER)),
            },
            other => other,
        };
        // Counted before the outcome is recorded: whoever sees the task
        // finished also sees it in the metrics.
        if let Some(m) = &self.metrics {
            match (verdict, self.store.submitted_at(task.id)) {
                (Verdict::Retry { .. }, _) => m.retry(label),
                (final_state, Some(at)) => {
                    let took = SystemTime::now().duration_since(at).unwrap_or_default();
                    m.finished(label, final_state == Verdict::Dead, took);
                }
                _ => {}
            }
        }
        let retry_here = self.store.finish(task.id, outcome, plugin, verdict);
        match verdict {
            Verdict::Retry { after } => {
                in_attempt(
                    || tracing::info!(task = %task.id, attempt = attempt.number, retry_in = ?after, "will retry"),
                );
                if retry_here {
                    self.scheduler.schedule(task.id, SystemTime::now() + after);
                }
            }
            Verdict::Dead if attempt.in_round > 1 => in_attempt(
                || tracing::warn!(task = %task.id, attempt = attempt.number, "task is dead after its last attempt"),
            ),
            _ => {}
        }
        verdict
    }

    /// Fails an attempt that never reached the plugin (no plugin for the
    /// platform, a worker replaced while stuck).
    pub fn fail_unrun(&self, task: &Task, class: FailureClass, message: String) -> Verdict {
        let attempt = self.store.next_attempt(task.id);
        self.finish(task, attempt, Outcome::failed(class, message), None, None)
    }
}

/// How long a rate-limited outcome pauses its destination, at most
/// [`MAX_RETRY_AFTER`]; `None` for other outcomes.
pub fn pause(outcome: &Outcome) -> Option<Duration> {
    match outcome {
        Outcome::Failed {
            class: FailureClass::RateLimited,
            retry_after_ms,
            ..
        } => Some(retry_after_ms.map_or(DEFAULT_PAUSE, clamp_retry_after)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::MAX_PLATFORM_LABELS;
    use crate::pool::settings::Settings;

    /// Made-up platforms failing as unserved (accepted during start-up)
    /// share one label: a real platform still gets its own afterwards.
    #[test]
    fn unserved_platforms_take_one_metrics_label() {
        let store = Arc::new(TaskStore::default());
        let metrics = Arc::new(Metrics::new());
        let lifecycle = Lifecycle::new(
            store.clone(),
            Arc::new(LiveSettings::new(Settings::default())),
            Arc::new(Scheduler::default()),
            Some(metrics.clone()),
        );
        for i in 0..MAX_PLATFORM_LABELS + 10 {
            let task = Task::text(&format!("made-up-{i}"), "t", "b");
            lifecycle.fail_unrun(&task, FailureClass::NoPlugin, "no plugin".into());
        }
        let real = Task::text("webhook", "t", "b");
        lifecycle.finish(
            &real,
            AttemptCount {
                number: 1,
                in_round: 1,
            },
            Outcome::Delivered {
                provider_id: None,
                status: "HTTP 200".into(),
            },
            None,
            None,
        );
        let text = metrics.render();
        assert!(!text.contains("made-up-"), "{text}");
        assert!(text.contains("platform=\"unserved\""), "{text}");
        assert!(text.contains("platform=\"webhook\""), "{text}");
    }

    #[test]
    fn pauses_are_bounded() {
        let limited = |ms| Outcome::Failed {
            class: FailureClass::RateLimited,
            message: "slow down".into(),
            retry_after_ms: ms,
        };
        assert_eq!(pause(&limited(Some(u64::MAX))), Some(MAX_RETRY_AFTER));
        assert_eq!(pause(&limited(None)), Some(DEFAULT_PAUSE));
        assert_eq!(pause(&Outcome::failed(FailureClass::Retryable, "x")), None);
    }
}
