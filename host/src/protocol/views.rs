//! The `result` of each operation, as the daemon sends it and the CLI (or
//! any client) decodes it.
//!
//! Targets are redacted before they get here; times are RFC 3339 strings made
//! by [`format_time`](super::format_time), which cannot fail.

use serde::{Deserialize, Serialize};

use crate::plugin::{PluginInfo, PluginRef};
use crate::pool::PoolStats;
use crate::sandbox::Tier;
use crate::task::{Format, Outcome, Priority, TaskState};

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

/// A loaded plugin as `plugins` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginView {
    pub name: String,
    pub version: String,
    pub digest: String,
    /// The compiler whose code serves: `baseline` until the optimized code
    /// is ready, then `optimized`.
    #[serde(default)]
    pub code: Tier,
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
    /// Files whose first load is still under way (at start-up).
    #[serde(default)]
    pub loading: Vec<String>,
    /// Compilations since start (from the on-disk cache or not).
    pub compiles: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusView {
    pub version: String,
    pub uptime_ms: u64,
    pub platforms: Vec<String>,
    /// `false` while the plugins present at start-up are still loading;
    /// tasks for their platforms are accepted and wait meanwhile.
    #[serde(default = "yes")]
    pub plugins_ready: bool,
    /// Files whose first load is still under way.
    #[serde(default)]
    pub plugins_loading: Vec<String>,
    /// Connections watching task events, and events dropped for watchers
    /// that read too slowly, since start.
    #[serde(default)]
    pub watchers: usize,
    #[serde(default)]
    pub watch_dropped: u64,
    pub pool: PoolStats,
    /// With a broker: the broker, its consumers and this host's share.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker: Option<BrokerView>,
}

/// The broker as `status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BrokerView {
    pub url: String,
    pub server_version: String,
    pub stream: String,
    /// Tasks in the work stream (waiting or held by a host).
    pub messages: Option<u64>,
    pub consumers: Vec<ConsumerView>,
    /// Tasks this host took from the broker since it started; how many of
    /// them the broker had handed out before (to a host that went quiet, or
    /// sent back to wait for their time or a rate budget); how many it
    /// finished.
    pub taken_here: u64,
    pub redelivered_here: u64,
    pub finished_here: u64,
    /// This host's name among the hosts.
    pub host: String,
    /// Every host that announced itself in the last few seconds, this one
    /// included.
    pub hosts: Vec<HostView>,
}

/// One host taking part, as it last announced itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostView {
    pub name: String,
    /// Platforms it pulls.
    pub platforms: Vec<String>,
    /// Platforms it holds warm instances of (it pulls these first).
    pub warm: Vec<String>,
    pub taken: u64,
    pub finished: u64,
    /// Tasks it holds now.
    pub in_flight: u64,
    pub seen_at: String,
}

/// One platform's consumer, shared by every host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsumerView {
    pub name: String,
    /// Not yet handed to any host.
    pub pending: u64,
    /// Held by a host, not yet acknowledged.
    pub in_flight: u64,
    /// Handed out more than once: after a host went quiet, or after
    /// waiting in the broker for their time or a rate budget.
    pub redelivered: u64,
}

fn yes() -> bool {
    true
}

/// What a reload did to one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadResult {
    pub path: String,
    #[serde(flatten)]
    pub change: Change,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    /// A new version (or a first one) is serving.
    Loaded {
        name: String,
        version: String,
        digest: String,
    },
    /// Only the manifest changed; it applies from the next task.
    Reconfigured { name: String },
    /// Nothing changed.
    Unchanged,
    /// The file is gone and its plugin unloaded.
    Unloaded,
    /// The file could not be loaded; any older version keeps serving.
    Failed { error: String },
}

/// One task event, as `watch` streams it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventView {
    pub task_id: String,
    pub platform: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    pub state: TaskState,
    pub attempt: u32,
    pub at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
}

/// A line of a `watch` stream after its first answer: an event, or how
/// many events were dropped because the watcher read too slowly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WatchLine {
    Event(EventView),
    Dropped(u64),
}
