//! The settings that change without a restart: destinations, rate limits
//! and the retry policy, swapped as one snapshot.
//!
//! Whoever needs them (a submit routing a task, a worker looking up a
//! destination for an attempt, the dispatcher pacing, the lifecycle
//! deciding on a retry) takes the current snapshot, an `Arc`, and uses it
//! for that one step, so a reload never shows a half-applied mix: a task's
//! attempt sees the old settings or the new, never parts of both. Tasks in
//! flight keep the snapshot they took; the next attempt sees the new one.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use super::retry::RetryConfig;
use crate::destination::{Destinations, RateRule};
use crate::plugin::PluginInfo;
use crate::task::Task;

/// One consistent set of run-time settings.
#[derive(Default)]
pub struct Settings {
    pub destinations: Destinations,
    pub retry: RetryConfig,
    /// `[rate_limits]`: per-platform rules that replace what plugins declare.
    pub rate_limits: BTreeMap<String, Vec<RateRule>>,
}

impl Settings {
    /// The rate limits `task` is paced under: its destination's, else the
    /// config's for its platform, else what its plugin (`info`) declares.
    pub fn rate_rules(&self, task: &Task, info: &PluginInfo) -> Vec<RateRule> {
        let route = task
            .destination
            .as_deref()
            .and_then(|name| self.destinations.route(name));
        if let Some(rules) = route.and_then(|r| r.rate_limits.clone()) {
            return rules;
        }
        if let Some(rules) = self.rate_limits.get(&task.platform) {
            return rules.clone();
        }
        info.rate_limits
            .iter()
            .filter(|r| r.requests > 0 && r.window_ms > 0)
            .map(|r| RateRule {
                requests: r.requests,
                window: std::time::Duration::from_millis(r.window_ms),
            })
            .collect()
    }
}

/// The current [`Settings`], replaceable at run time.
#[derive(Default)]
pub struct LiveSettings(RwLock<Arc<Settings>>);

impl LiveSettings {
    pub fn new(settings: Settings) -> Self {
        LiveSettings(RwLock::new(Arc::new(settings)))
    }

    /// The current snapshot.
    pub fn get(&self) -> Arc<Settings> {
        self.0.read().expect("never poisoned").clone()
    }

    /// Swaps in new settings; returns the old ones.
    pub fn replace(&self, settings: Settings) -> Arc<Settings> {
        std::mem::replace(
            &mut *self.0.write().expect("never poisoned"),
            Arc::new(settings),
        )
    }
}
