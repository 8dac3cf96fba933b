//! Per-plugin resource limits and the store limiter that enforces memory caps.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Limits applied to every call into one plugin. Defaults suit a plugin that
/// makes one or two HTTP requests per task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Wall-clock deadline for one `send` call, HTTP included.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Cap on the plugin's linear memory, in MiB.
    pub memory_mib: u64,
    /// Cap on one HTTP response body, in KiB.
    pub max_response_kib: u64,
    /// Outbound HTTP requests allowed per task.
    pub max_requests: u32,
    /// Elements one table may grow to (function references).
    pub max_table_elements: u32,
    /// Core instances, tables and memories one plugin instance may create.
    /// A component is several core instances (an interpreter-based Python or
    /// JavaScript plugin about ten); the caps stop a component that tries to
    /// create thousands.
    pub max_core_instances: u32,
    pub max_tables: u32,
    pub max_memories: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_secs(10),
            memory_mib: 128,
            max_response_kib: 1024,
            max_requests: 8,
            max_table_elements: 100_000,
            max_core_instances: 64,
            max_tables: 64,
            max_memories: 16,
        }
    }
}

impl Limits {
    pub fn memory_bytes(&self) -> usize {
        (self.memory_mib as usize).saturating_mul(1 << 20)
    }

    pub fn max_response_bytes(&self) -> u64 {
        self.max_response_kib.saturating_mul(1024)
    }
}

/// The host-wide budget for guest linear memory, shared by every store, so
/// that many warm instances together cannot exhaust the machine.
#[derive(Debug)]
pub struct MemoryBudget {
    max_bytes: usize,
    used: AtomicUsize,
}

impl MemoryBudget {
    pub fn new(max_bytes: usize) -> Self {
        MemoryBudget {
            max_bytes,
            used: AtomicUsize::new(0),
        }
    }

    /// Guest memory held right now, in bytes.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn reserve(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes)
                    .filter(|total| *total <= self.max_bytes)
            })
            .is_ok()
    }

    fn release(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// A `ResourceLimiter` that refuses memory growth past the plugin's cap or
/// the host-wide [`MemoryBudget`], remembers that it did (so a resulting
/// trap can be explained), and keeps count of the linear memory the instance
/// holds (wasmtime asks it about every memory, including its initial size).
/// Dropping it (with its store) gives the memory back to the budget.
#[derive(Debug)]
pub struct MemoryLimiter {
    max_bytes: usize,
    limits: Limits,
    bytes: usize,
    exceeded: Option<MemoryCap>,
    budget: Arc<MemoryBudget>,
}

/// Which cap refused a memory growth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryCap {
    /// The plugin's own `memory_mib`.
    Plugin,
    /// The host-wide guest memory budget.
    Host,
}

impl MemoryLimiter {
    pub fn new(limits: Limits, budget: Arc<MemoryBudget>) -> Self {
        MemoryLimiter {
            max_bytes: limits.memory_bytes(),
            limits,
            bytes: 0,
            exceeded: None,
            budget,
        }
    }

    /// The cap that refused a growth, if one did.
    pub fn exceeded(&self) -> Option<MemoryCap> {
        self.exceeded
    }

    /// Linear memory held by the store's instances, in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let delta = desired.saturating_sub(current);
        let refused = if desired > self.max_bytes {
            Some(MemoryCap::Plugin)
        } else if !self.budget.reserve(delta) {
            Some(MemoryCap::Host)
        } else {
            None
        };
        match refused {
            None => self.bytes += delta,
            Some(cap) => self.exceeded = Some(cap),
        }
        Ok(refused.is_none())
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= self.limits.max_table_elements as usize)
    }

    fn instances(&self) -> usize {
        self.limits.max_core_instances as usize
    }

    fn tables(&self) -> usize {
        self.limits.max_tables as usize
    }

    fn memories(&self) -> usize {
        self.limits.max_memories as usize
    }
}

impl Drop for MemoryLimiter {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::ResourceLimiter;

    #[test]
    fn the_host_budget_is_shared_and_given_back() {
        let budget = Arc::new(MemoryBudget::new(100));
        let limits = Limits {
            memory_mib: 0,
            ..Limits::default()
        };
        let mut a = MemoryLimiter::new(limits, budget.clone());
        let mut b = MemoryLimiter::new(limits, budget.clone());
        a.max_bytes = 80;
        b.max_bytes = 80;
        assert!(a.memory_growing(0, 60, None).unwrap());
        assert!(
            !b.memory_growing(0, 60, None).unwrap(),
            "over the host-wide budget"
        );
        assert_eq!(b.exceeded(), Some(MemoryCap::Host));
        assert!(
            !a.memory_growing(60, 90, None).unwrap(),
            "over the plugin's own cap"
        );
        assert_eq!(a.exceeded(), Some(MemoryCap::Plugin));
        drop(a);
        assert_eq!(budget.used(), 0);
        assert!(b.memory_growing(0, 60, None).unwrap());
    }
}
