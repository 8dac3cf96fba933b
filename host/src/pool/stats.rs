//! Pool and worker statistics, as `status` shows them.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};

use super::router::Strategy;
use crate::task::TaskId;
use crate::time::format_time;

/// Task durations kept per worker for mean and p99.
const DURATIONS_KEPT: usize = 512;

/// A worker's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    Idle,
    Processing,
    ShuttingDown,
    Stopped,
}

/// Counters a worker updates and `status` reads.
#[derive(Debug)]
pub struct WorkerMetrics {
    pub started: Instant,
    pub processed: AtomicU64,
    pub errors: AtomicU64,
    pub memory_bytes: AtomicUsize,
    pub current: Mutex<Option<(TaskId, String)>>,
    pub last_activity: Mutex<Option<SystemTime>>,
    pub warm_plugins: Mutex<Vec<String>>,
    durations_us: Mutex<VecDeque<u64>>,
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl WorkerMetrics {
    pub fn new() -> Self {
        WorkerMetrics {
            started: Instant::now(),
            processed: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            memory_bytes: AtomicUsize::new(0),
            current: Mutex::new(None),
            last_activity: Mutex::new(None),
            warm_plugins: Mutex::new(Vec::new()),
            durations_us: Mutex::new(VecDeque::with_capacity(DURATIONS_KEPT)),
        }
    }

    pub fn record(&self, micros: u64, success: bool) {
        self.processed.fetch_add(1, Ordering::Relaxed);
        if !success {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let mut durations = self.durations_us.lock().expect("never poisoned");
        if durations.len() == DURATIONS_KEPT {
            durations.pop_front();
        }
        durations.push_back(micros);
    }

    pub fn view(&self, id: u64, state: WorkerState) -> WorkerView {
        let current = self.current.lock().expect("never poisoned").clone();
        let mut durations: Vec<u64> = self
            .durations_us
            .lock()
            .expect("never poisoned")
            .iter()
            .copied()
            .collect();
        durations.sort_unstable();
        let mean_ms = if durations.is_empty() {
            0.0
        } else {
            durations.iter().sum::<u64>() as f64 / durations.len() as f64 / 1000.0
        };
        let p99_ms = durations
            .get((durations.len() * 99 / 100).min(durations.len().saturating_sub(1)))
            .map_or(0.0, |us| *us as f64 / 1000.0);
        let processed = self.processed.load(Ordering::Relaxed);
        let uptime = self.started.elapsed();
        WorkerView {
            id,
            state,
            processed,
            errors: self.errors.load(Ordering::Relaxed),
            uptime_ms: uptime.as_millis() as u64,
            last_activity: self
                .last_activity
                .lock()
                .expect("never poisoned")
                .map(format_time),
            current_task: current.as_ref().map(|(id, _)| id.to_string()),
            current_platform: current.map(|(_, p)| p),
            warm_plugins: self.warm_plugins.lock().expect("never poisoned").clone(),
            mean_ms,
            p99_ms,
            throughput: processed as f64 / uptime.as_secs_f64().max(1e-3),
            wasm_memory_bytes: self.memory_bytes.load(Ordering::Relaxed),
        }
    }

    /// Tasks per second over the worker's life (the `weighted` strategy's
    /// default weight).
    pub fn throughput(&self) -> f64 {
        self.processed.load(Ordering::Relaxed) as f64
            / self.started.elapsed().as_secs_f64().max(1e-3)
    }
}

/// One worker in `status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerView {
    pub id: u64,
    pub state: WorkerState,
    pub processed: u64,
    pub errors: u64,
    pub uptime_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_activity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_task: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_platform: Option<String>,
    pub warm_plugins: Vec<String>,
    pub mean_ms: f64,
    pub p99_ms: f64,
    /// Tasks per second over the worker's life.
    pub throughput: f64,
    pub wasm_memory_bytes: usize,
}

/// A scaling decision, as logged.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScaleEvent {
    pub at: String,
    pub from: usize,
    pub to: usize,
    pub reason: String,
}

/// The pool in `status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolStats {
    pub strategy: Strategy,
    pub min_workers: usize,
    /// The adaptive concurrency limit, when measurements put it below
    /// `max_workers` (see `pool::limit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_limit: Option<usize>,
    pub max_workers: usize,
    pub workers: usize,
    pub workers_by_state: BTreeMap<WorkerState, usize>,
    pub queued: usize,
    pub queued_by_platform: BTreeMap<String, usize>,
    /// Tasks waiting for their destination's rate limit.
    #[serde(default)]
    pub paced: usize,
    /// Destinations with a rate limit or pause in force.
    #[serde(default)]
    pub destinations: Vec<super::pacer::PaceView>,
    pub in_flight: usize,
    pub processed: u64,
    pub errors: u64,
    pub warm_hits: u64,
    pub warm_misses: u64,
    /// Tasks served by an already-warm instance / all tasks.
    pub warm_hit_rate: f64,
    pub scale_events: u64,
    pub recent_scale_events: Vec<ScaleEvent>,
    pub per_worker: Vec<WorkerView>,
}
