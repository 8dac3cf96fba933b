//! The idle workers of one dispatch round, as the router sees them.
//!
//! A round gives each waiting task to one idle worker, chosen by the
//! [`Router`](crate::pool::router::Router) from a [`Candidate`] per idle
//! worker. Those views used to be built afresh for every task: a round of n
//! tasks over n idle workers built n² of them, each a hash of the plugin's
//! key and a read of the worker's counters, and a burst that grew the pool
//! to 2,048 workers kept the dispatcher on its first round while the new
//! workers waited for their tasks. A round builds the views once per plugin
//! and crosses out each worker as it is given a task; nothing a view holds
//! changes within a round (a worker's warm set and counts change only when
//! it reports back, which the dispatcher handles between rounds).

use std::collections::HashMap;

use crate::pool::router::Candidate;

/// Idle workers not yet given a task this round, and the views built of
/// them so far, by plugin key.
pub(super) struct IdleRound {
    workers: Vec<u64>,
    views: HashMap<String, Vec<Candidate>>,
}

impl IdleRound {
    pub(super) fn new(workers: Vec<u64>) -> Self {
        IdleRound {
            workers,
            views: HashMap::new(),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    pub(super) fn len(&self) -> usize {
        self.workers.len()
    }

    /// The candidates for a task of `plugin`: `view` builds them from the
    /// idle workers the first time the round meets the plugin.
    pub(super) fn candidates(
        &mut self,
        plugin: &str,
        view: impl FnOnce(&[u64]) -> Vec<Candidate>,
    ) -> &[Candidate] {
        if !self.views.contains_key(plugin) {
            let built = view(&self.workers);
            self.views.insert(plugin.to_string(), built);
        }
        &self.views[plugin]
    }

    /// Crosses out `worker`, given a task.
    pub(super) fn take(&mut self, worker: u64) {
        self.workers.retain(|id| *id != worker);
        for view in self.views.values_mut() {
            view.retain(|c| c.worker != worker);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(ids: &[u64]) -> Vec<Candidate> {
        ids.iter()
            .map(|&worker| Candidate {
                worker,
                warm: false,
                warm_count: 0,
                processed: 0,
                weight: 1.0,
            })
            .collect()
    }

    fn workers(candidates: &[Candidate]) -> Vec<u64> {
        candidates.iter().map(|c| c.worker).collect()
    }

    #[test]
    fn a_worker_taken_is_no_candidate_for_any_plugin() {
        let mut round = IdleRound::new(vec![1, 2, 3]);
        assert_eq!(workers(round.candidates("a", view)), [1, 2, 3]);
        round.take(2);
        assert_eq!(workers(round.candidates("a", |_| unreachable!())), [1, 3]);
        // Built after the take: from the workers left.
        assert_eq!(workers(round.candidates("b", view)), [1, 3]);
        round.take(1);
        round.take(3);
        assert!(round.is_empty());
        assert!(round.candidates("a", |_| unreachable!()).is_empty());
    }
}
