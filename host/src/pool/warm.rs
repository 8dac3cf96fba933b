//! Warm instances: kept per worker, bounded per plugin.
//!
//! A worker keeps the instances it used in a small cache so the next task
//! for the same plugin skips instantiation. Three bounds keep this from
//! growing without limit: at most `max_per_worker` instances in one worker
//! (least recently used goes first); a [`WarmBudget`] across the pool of at
//! most `max_per_plugin` warm instances of one plugin version, at most
//! `max_total` in all (what the engine's instance slots leave once every
//! worker has one in use) and at most `max_bytes` of linear memory in all;
//! and per-instance retirement after a
//! trap or timeout, after `max_uses` calls, past `max_memory_mib` of linear
//! memory, after `max_idle` unused, or when its plugin version is no longer
//! the one the registry serves.
//!
//! The memory bound is what lets the count be generous. An I/O-bound
//! platform keeps hundreds of workers busy, and each one that has no warm
//! instance pays a fresh instance per task (measured: 2,000 deliveries to a
//! receiver answering in 100 ms took 1.2 s with 64 warm instances, 0.74 s
//! with 512). A Rust plugin's instance holds about a megabyte, so hundreds
//! of them are cheap; a Python one holds tens, and the memory bound stops
//! those at a few dozen.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::executor::{Health, Instance};
use crate::registry::Registry;

/// Retirement rules for warm instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WarmLimits {
    pub max_per_worker: usize,
    pub max_uses: u64,
    pub max_memory_bytes: usize,
    pub max_idle: Duration,
}

/// Counts warm instances per plugin version (by key) and the linear memory
/// they hold, across the pool.
#[derive(Debug)]
pub struct WarmBudget {
    max_per_plugin: usize,
    max_bytes: usize,
    held: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    per_plugin: HashMap<String, usize>,
    total: usize,
    /// Changes with `max_workers` (see [`WarmBudget::set_max_total`]).
    max_total: usize,
    bytes: usize,
}

/// The share of the budget one warm instance holds: its unit and the
/// memory it had when it was counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unit {
    bytes: usize,
}

impl WarmBudget {
    pub fn new(max_per_plugin: usize, max_total: usize, max_bytes: usize) -> Self {
        WarmBudget {
            max_per_plugin,
            max_bytes,
            held: Mutex::new(Held {
                max_total,
                ..Held::default()
            }),
        }
    }

    /// Bounds the warm instances in all anew (more workers leave fewer
    /// slots for them). Instances over the new bound stay until they are
    /// next returned.
    pub fn set_max_total(&self, max_total: usize) {
        self.held.lock().expect("never poisoned").max_total = max_total;
    }

    /// Whether plugin version `key` has all the warm instances it may have.
    pub fn is_full(&self, key: &str) -> bool {
        let held = self.held.lock().expect("never poisoned");
        held.bytes >= self.max_bytes
            || held.total >= held.max_total
            || held.per_plugin.get(key).copied().unwrap_or(0) >= self.max_per_plugin
    }

    /// Whether the pool holds at least one warm instance of plugin version
    /// `key` (in a cache or in use).
    pub fn is_warm(&self, key: &str) -> bool {
        let held = self.held.lock().expect("never poisoned");
        held.per_plugin.get(key).is_some_and(|n| *n > 0)
    }

    fn acquire(&self, key: &str, bytes: usize) -> Option<Unit> {
        let mut held = self.held.lock().expect("never poisoned");
        let count = held.per_plugin.get(key).copied().unwrap_or(0);
        if count >= self.max_per_plugin
            || held.total >= held.max_total
            || held.bytes.saturating_add(bytes) > self.max_bytes
        {
            return None;
        }
        held.per_plugin.insert(key.to_string(), count + 1);
        held.total += 1;
        held.bytes += bytes;
        Some(Unit { bytes })
    }

    /// Counts `unit` again at `bytes` (an instance's memory grows as it
    /// serves); `None`, with the unit released, when that no longer fits.
    fn recount(&self, key: &str, unit: Unit, bytes: usize) -> Option<Unit> {
        let mut held = self.held.lock().expect("never poisoned");
        let others = held.bytes - unit.bytes;
        if bytes > unit.bytes && others.saturating_add(bytes) > self.max_bytes {
            held.release(key, unit);
            return None;
        }
        held.bytes = others + bytes;
        Some(Unit { bytes })
    }

    fn release(&self, key: &str, unit: Unit) {
        self.held.lock().expect("never poisoned").release(key, unit);
    }
}

impl Held {
    fn release(&mut self, key: &str, unit: Unit) {
        self.bytes -= unit.bytes;
        self.total -= 1;
        if let Some(count) = self.per_plugin.get_mut(key) {
            *count -= 1;
            if *count == 0 {
                self.per_plugin.remove(key);
            }
        }
    }
}

struct Warm {
    instance: Instance,
    unit: Unit,
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

    /// Takes the warm instance of plugin version `key`, if there is one,
    /// with its budget unit, which stays with it until
    /// [`WarmCache::put_back`].
    pub fn take(&mut self, key: &str) -> Option<(Instance, Unit)> {
        let index = self
            .instances
            .iter()
            .position(|w| w.instance.plugin().key == key)?;
        let warm = self.instances.swap_remove(index);
        Some((warm.instance, warm.unit))
    }

    /// Returns an instance after a call, with the unit it was taken with
    /// (`None` for a new instance). It is kept if it is healthy, within its
    /// limits and the budget, else dropped.
    pub fn put_back(&mut self, instance: Instance, unit: Option<Unit>, health: Health) {
        let key = instance.plugin().key.clone();
        let bytes = instance.memory_bytes();
        let retire = health == Health::Retired
            || instance.calls() >= self.limits.max_uses
            || bytes > self.limits.max_memory_bytes;
        if retire {
            if let Some(unit) = unit {
                self.budget.release(&key, unit);
            }
            return;
        }
        let unit = match unit {
            Some(unit) => self.budget.recount(&key, unit, bytes),
            None => self.budget.acquire(&key, bytes),
        };
        // Without a unit the pool has enough warm instances of this plugin,
        // or of memory held warm: this one was one-shot.
        let Some(unit) = unit else {
            return;
        };
        if self.instances.len() >= self.limits.max_per_worker
            && let Some(lru) = self
                .instances
                .iter()
                .enumerate()
                .min_by_key(|(_, w)| w.last_used)
        {
            let evicted = self.instances.swap_remove(lru.0);
            self.budget
                .release(&evicted.instance.plugin().key, evicted.unit);
        }
        self.instances.push(Warm {
            instance,
            unit,
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
                budget.release(&plugin.key, w.unit);
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
            self.budget.release(&w.instance.plugin().key, w.unit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_bounds_each_plugin() {
        let budget = WarmBudget::new(2, 10, usize::MAX);
        let a = budget.acquire("a", 1).expect("first");
        assert!(budget.acquire("a", 1).is_some());
        assert!(
            budget.acquire("a", 1).is_none(),
            "a third warm instance of one plugin"
        );
        assert!(
            budget.acquire("b", 1).is_some(),
            "other plugins have their own bound"
        );
        assert!(budget.is_full("a") && !budget.is_full("b"));
        budget.release("a", a);
        assert!(budget.acquire("a", 1).is_some());
    }

    #[test]
    fn the_budget_bounds_instances_across_plugins() {
        let budget = WarmBudget::new(2, 3, usize::MAX);
        let a = budget.acquire("a", 1).expect("first");
        assert!(budget.acquire("a", 1).is_some());
        assert!(budget.acquire("b", 1).is_some());
        assert!(budget.acquire("c", 1).is_none(), "a fourth instance in all");
        assert!(budget.is_full("c"));
        budget.release("a", a);
        assert!(budget.acquire("c", 1).is_some());
        budget.set_max_total(4);
        assert!(budget.acquire("d", 1).is_some(), "a higher bound");
    }

    #[test]
    fn the_budget_bounds_memory_across_plugins() {
        const MIB: usize = 1 << 20;
        let budget = WarmBudget::new(100, 100, 10 * MIB);
        let python = budget.acquire("python", 6 * MIB).expect("fits");
        assert!(
            budget.acquire("python", 6 * MIB).is_none(),
            "12 MiB would pass 10"
        );
        let rust = budget.acquire("rust", MIB).expect("fits beside it");
        assert!(!budget.is_full("rust"));
        // Growing past the bound gives the unit back; shrinking always fits.
        assert!(budget.recount("python", python, 10 * MIB).is_none());
        assert!(budget.is_warm("rust") && !budget.is_warm("python"));
        let rust = budget.recount("rust", rust, MIB / 2).expect("smaller");
        assert!(
            budget.acquire("python", 9 * MIB + MIB / 2).is_some(),
            "10 MiB fits"
        );
        assert!(budget.is_full("rust"), "memory is full for every plugin");
        budget.release("rust", rust);
        assert!(!budget.is_warm("rust"));
    }
}
