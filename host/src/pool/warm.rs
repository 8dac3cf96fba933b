//! Warm instances: kept per worker, bounded per plugin.
//!
//! A worker keeps the instances it used in a small cache so the next task
//! for the same plugin skips instantiation. Three bounds keep this from
//! growing without limit: at most `max_per_worker` instances in one worker
//! (least recently used goes first), at most `max_per_plugin` warm instances
//! of one plugin version across the pool (a [`WarmBudget`]), and per-instance
//! retirement after a trap or timeout, after `max_uses` calls, past
//! `max_memory_mib` of linear memory, after `max_idle` unused, or when its
//! plugin version is no longer the one the registry serves.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::executor::{Health, Instance};
use crate::registry::Registry;

/// Retirement rules for warm instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WarmLimits {
    pub max_per_worker: usize,
    pub max_per_plugin: usize,
    pub max_uses: u64,
    pub max_memory_bytes: usize,
    pub max_idle: Duration,
}

/// Counts warm instances per plugin version (by key) across the pool.
#[derive(Debug)]
pub struct WarmBudget {
    max_per_plugin: usize,
    held: Mutex<HashMap<String, usize>>,
}

impl WarmBudget {
    pub fn new(max_per_plugin: usize) -> Self {
        WarmBudget {
            max_per_plugin,
            held: Mutex::default(),
        }
    }

    /// Whether plugin version `key` has all the warm instances it may have.
    pub fn is_full(&self, key: &str) -> bool {
        let held = self.held.lock().expect("never poisoned");
        held.get(key).copied().unwrap_or(0) >= self.max_per_plugin
    }

    /// Whether the pool holds at least one warm instance of plugin version
    /// `key` (in a cache or in use).
    pub fn is_warm(&self, key: &str) -> bool {
        let held = self.held.lock().expect("never poisoned");
        held.get(key).is_some_and(|n| *n > 0)
    }

    fn acquire(&self, key: &str) -> bool {
        let mut held = self.held.lock().expect("never poisoned");
        let count = held.entry(key.to_string()).or_insert(0);
        if *count < self.max_per_plugin {
            *count += 1;
            true
        } else {
            false
        }
    }

    fn release(&self, key: &str) {
        let mut held = self.held.lock().expect("never poisoned");
        if let Some(count) = held.get_mut(key) {
            *count -= 1;
            if *count == 0 {
                held.remove(key);
            }
        }
    }
}

struct Warm {
    instance: Instance,
    last_used: Instant,
}

/// One worker's warm instances. Every cached instance holds one unit of
/// the budget, returned when it is retired or the cache is dropped.
pub struct WarmCache {
    instances: Vec<Warm>,
    limits: WarmLimits,
    budget: Arc<WarmBudget>,
}

impl WarmCache {
    pub fn new(limits: WarmLimits, budget: Arc<WarmBudget>) -> Self {
        WarmCache {
            instances: Vec::new(),
            limits,
            budget,
        }
    }

    /// Takes the warm instance of plugin version `key`, if there is one.
    /// Its budget unit stays with it until [`WarmCache::put_back`].
    pub fn take(&mut self, key: &str) -> Option<Instance> {
        let index = self
            .instances
            .iter()
            .position(|w| w.instance.plugin().key == key)?;
        Some(self.instances.swap_remove(index).instance)
    }

    /// Returns an instance after a call. `was_warm` says whether it came
    /// from [`WarmCache::take`] (and so holds a budget unit). It is kept if
    /// it is healthy and within its limits, else dropped.
    pub fn put_back(&mut self, instance: Instance, was_warm: bool, health: Health) {
        let key = instance.plugin().key.clone();
        let retire = health == Health::Retired
            || instance.calls() >= self.limits.max_uses
            || instance.memory_bytes() > self.limits.max_memory_bytes;
        if retire {
            if was_warm {
                self.budget.release(&key);
            }
            return;
        }
        if !was_warm && !self.budget.acquire(&key) {
            return; // the plugin has enough warm instances: this one was one-shot
        }
        if self.instances.len() >= self.limits.max_per_worker
            && let Some(lru) = self
                .instances
                .iter()
                .enumerate()
                .min_by_key(|(_, w)| w.last_used)
        {
            let evicted = self.instances.swap_remove(lru.0);
            self.budget.release(&evicted.instance.plugin().key);
        }
        self.instances.push(Warm {
            instance,
            last_used: Instant::now(),
        });
    }

    /// Retires instances idle too long or of a plugin version the registry
    /// no longer serves.
    pub fn evict_stale(&mut self, registry: &Registry, now: Instant) {
        let catalog = registry.catalog();
        let budget = self.budget.clone();
        let max_idle = self.limits.max_idle;
        self.instances.retain(|w| {
            let plugin = w.instance.plugin();
            let current = plugin
                .platforms
                .first()
                .and_then(|p| catalog.lookup(p))
                .is_some_and(|c| Arc::ptr_eq(c, plugin));
            let keep = current && now.duration_since(w.last_used) < max_idle;
            if !keep {
                budget.release(&plugin.key);
            }
            keep
        });
    }

    /// Keys of the plugin versions held warm.
    pub fn keys(&self) -> Vec<String> {
        self.instances
            .iter()
            .map(|w| w.instance.plugin().key.clone())
            .collect()
    }

    /// Names of the plugins held warm.
    pub fn names(&self) -> Vec<String> {
        self.instances
            .iter()
            .map(|w| w.instance.plugin().name.clone())
            .collect()
    }

    /// Linear memory held by the warm instances.
    pub fn memory_bytes(&self) -> usize {
        self.instances
            .iter()
            .map(|w| w.instance.memory_bytes())
            .sum()
    }
}

impl Drop for WarmCache {
    fn drop(&mut self) {
        for w in &self.instances {
            self.budget.release(&w.instance.plugin().key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_bounds_each_plugin() {
        let budget = WarmBudget::new(2);
        assert!(budget.acquire("a"));
        assert!(budget.acquire("a"));
        assert!(!budget.acquire("a"), "a third warm instance of one plugin");
        assert!(budget.acquire("b"), "other plugins have their own bound");
        budget.release("a");
        assert!(budget.acquire("a"));
    }
}
