//! Per-plugin resource limits and the store limiter that enforces memory caps.

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
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_secs(10),
            memory_mib: 128,
            max_response_kib: 1024,
            max_requests: 8,
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

/// A `ResourceLimiter` that refuses memory growth past the plugin's cap,
/// remembers that it did (so a resulting trap can be explained), and keeps
/// count of the linear memory the instance holds (wasmtime asks it about
/// every memory, including its initial size).
#[derive(Debug)]
pub struct MemoryLimiter {
    max_bytes: usize,
    bytes: usize,
    exceeded: bool,
}

impl MemoryLimiter {
    pub fn new(max_bytes: usize) -> Self {
        MemoryLimiter {
            max_bytes,
            bytes: 0,
            exceeded: false,
        }
    }

    pub fn exceeded(&self) -> bool {
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
        let allowed = desired <= self.max_bytes;
        self.exceeded |= !allowed;
        if allowed {
            self.bytes += desired.saturating_sub(current);
        }
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}
