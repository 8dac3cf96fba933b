//! The router: which idle worker gets the next task.
//!
//! A pure choice over [`Candidate`]s (the idle workers, as the dispatcher
//! sees them), so each strategy can be tested without a pool.
//!
//! - `affinity` (default): a worker that holds the task's plugin warm; when
//!   none is idle, the idle worker with the fewest warm instances, which
//!   then warms the plugin (within the per-plugin bound).
//! - `round-robin`: workers in turn, ignoring warmth.
//! - `least-loaded`: the worker that has done the least work so far.
//! - `weighted`: smooth weighted round robin (as nginx does it), with weights
//!   from the config or, by default, each worker's measured throughput.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// How tasks are routed to workers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    #[default]
    Affinity,
    RoundRobin,
    LeastLoaded,
    Weighted,
}

impl std::str::FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "affinity" => Ok(Strategy::Affinity),
            "round-robin" => Ok(Strategy::RoundRobin),
            "least-loaded" => Ok(Strategy::LeastLoaded),
            "weighted" => Ok(Strategy::Weighted),
            _ => Err(format!(
                "unknown strategy `{s}`; expected affinity, round-robin, least-loaded or weighted"
            )),
        }
    }
}

/// An idle worker, as the router sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub worker: u64,
    /// Holds a warm instance of the task's plugin.
    pub warm: bool,
    /// Warm instances it holds in all.
    pub warm_count: usize,
    /// Tasks it has run.
    pub processed: u64,
    /// Its weight for `weighted` (> 0).
    pub weight: f64,
}

/// Chooses workers; keeps the state round-robin strategies need.
#[derive(Debug, Default)]
pub struct Router {
    strategy: Strategy,
    next: u64,
    current: HashMap<u64, f64>,
}

impl Router {
    pub fn new(strategy: Strategy) -> Self {
        Router {
            strategy,
            next: 0,
            current: HashMap::new(),
        }
    }

    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// The chosen worker, or `None` when there are no candidates.
    pub fn pick(&mut self, candidates: &[Candidate]) -> Option<u64> {
        if candidates.is_empty() {
            return None;
        }
        let chosen = match self.strategy {
            Strategy::Affinity => candidates
                .iter()
                .filter(|c| c.warm)
                .max_by_key(|c| c.processed)
                .or_else(|| candidates.iter().min_by_key(|c| (c.warm_count, c.worker)))
                .map(|c| c.worker),
            Strategy::RoundRobin => {
                let after = candidates
                    .iter()
                    .filter(|c| c.worker >= self.next)
                    .min_by_key(|c| c.worker);
                let chosen = after.or_else(|| candidates.iter().min_by_key(|c| c.worker));
                chosen.map(|c| c.worker)
            }
            Strategy::LeastLoaded => candidates
                .iter()
                .min_by_key(|c| (c.processed, c.worker))
                .map(|c| c.worker),
            Strategy::Weighted => {
                let total: f64 = candidates.iter().map(|c| c.weight.max(f64::EPSILON)).sum();
                let mut best: Option<(u64, f64)> = None;
                for c in candidates {
                    let current = self.current.entry(c.worker).or_insert(0.0);
                    *current += c.weight.max(f64::EPSILON);
                    if best.is_none_or(|(_, b)| *current > b) {
                        best = Some((c.worker, *current));
                    }
                }
                let (worker, _) = best?;
                *self.current.get_mut(&worker).expect("just inserted") -= total;
                Some(worker)
            }
        };
        if let Some(worker) = chosen {
            self.next = worker + 1;
        }
        chosen
    }

    /// Forgets a worker that stopped.
    pub fn forget(&mut self, worker: u64) {
        self.current.remove(&worker);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(worker: u64, warm: bool, warm_count: usize, processed: u64, weight: f64) -> Candidate {
        Candidate {
            worker,
            warm,
            warm_count,
            processed,
            weight,
        }
    }

    #[test]
    fn affinity_prefers_warm_then_the_least_warmed() {
        let mut r = Router::new(Strategy::Affinity);
        let idle = [
            c(1, false, 0, 9, 1.0),
            c(2, true, 3, 5, 1.0),
            c(3, false, 2, 0, 1.0),
        ];
        assert_eq!(r.pick(&idle), Some(2));
        let cold = [c(1, false, 4, 9, 1.0), c(3, false, 1, 0, 1.0)];
        assert_eq!(r.pick(&cold), Some(3));
        assert_eq!(r.pick(&[]), None);
    }

    #[test]
    fn round_robin_rotates() {
        let mut r = Router::new(Strategy::RoundRobin);
        let idle: Vec<_> = (0..3).map(|w| c(w, w == 0, 1, 0, 1.0)).collect();
        let picks: Vec<_> = (0..6).map(|_| r.pick(&idle).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn least_loaded_picks_the_least_used() {
        let mut r = Router::new(Strategy::LeastLoaded);
        assert_eq!(
            r.pick(&[c(0, true, 1, 10, 1.0), c(1, false, 0, 3, 1.0)]),
            Some(1)
        );
    }

    #[test]
    fn weighted_follows_the_weights() {
        let mut r = Router::new(Strategy::Weighted);
        let idle = [c(0, false, 0, 0, 3.0), c(1, false, 0, 0, 1.0)];
        let picks: Vec<_> = (0..8).map(|_| r.pick(&idle).unwrap()).collect();
        assert_eq!(picks.iter().filter(|w| **w == 0).count(), 6, "{picks:?}");
        // Smooth: the light worker is not starved within a cycle.
        assert!(picks[..4].contains(&1), "{picks:?}");
    }

    #[test]
    fn strategies_parse_from_config_names() {
        assert_eq!("round-robin".parse::<Strategy>(), Ok(Strategy::RoundRobin));
        assert!("random".parse::<Strategy>().is_err());
    }
}
