//! What `status` shows of the pool: a snapshot the dispatcher builds from
//! the state it owns.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::Dispatcher;
use crate::pool::stats::{PoolStats, WorkerView};

impl Dispatcher {
    pub(super) fn stats(&self) -> PoolStats {
        let mut by_state = BTreeMap::new();
        for w in self.workers.values() {
            *by_state.entry(w.state).or_insert(0) += 1;
        }
        let per_worker: Vec<WorkerView> = self
            .workers
            .iter()
            .map(|(id, w)| w.metrics.view(*id, w.state))
            .collect();
        let hits = self.context.warm_hits.load(Ordering::Relaxed);
        let misses = self.context.warm_misses.load(Ordering::Relaxed);
        let scaler = self.scaler.config();
        PoolStats {
            strategy: self.router.strategy(),
            min_workers: scaler.min_workers,
            concurrency_limit: self.scaler.adaptive_limit(),
            max_workers: scaler.max_workers,
            workers: self.live_workers(),
            workers_by_state: by_state,
            queued: self.queue.len(),
            queued_by_platform: self.queue.depths(),
            paced: self.pacer.backlog_len(),
            destinations: self.pacer.views(Instant::now()),
            in_flight: self.in_flight(),
            processed: self.retired.processed + per_worker.iter().map(|w| w.processed).sum::<u64>(),
            errors: self.retired.errors + per_worker.iter().map(|w| w.errors).sum::<u64>(),
            warm_hits: hits,
            warm_misses: misses,
            warm_hit_rate: if hits + misses == 0 {
                0.0
            } else {
                hits as f64 / (hits + misses) as f64
            },
            scale_events: self.scale_event_count,
            recent_scale_events: self.scale_events.iter().cloned().collect(),
            per_worker,
        }
    }
}
