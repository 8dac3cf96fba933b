//! `[store]`: how tasks are kept (durable or in memory), for how long, how
//! far ahead memory holds scheduled tasks, and how many outcomes may wait
//! for the disk. Checked once at start; the
//! store never sees a value outside these bounds.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[store]` in the config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `durable` (SQLite in the data directory) or `memory` (nothing survives
    /// a restart; no fsync).
    pub mode: StoreMode,
    /// Finished tasks are deleted after this.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// A second submit with the same idempotency key within this window
    /// returns the first task.
    #[serde(with = "humantime_serde")]
    pub idempotency_window: Duration,
    /// Finished tasks kept in memory for fast look-ups. With the durable
    /// store, older ones are read from the journal (an index read, well
    /// under a millisecond); with the memory store they are gone.
    pub max_finished_in_memory: usize,
    /// A task scheduled further ahead than this is kept only in the
    /// journal (durable store) and read back shortly before it is due, so
    /// memory does not grow with the backlog of scheduled tasks.
    #[serde(with = "humantime_serde")]
    pub memory_horizon: Duration,
    /// Most attempt outcomes written but not yet committed: after a crash,
    /// at most this many finished deliveries (plus the running ones) are
    /// made again. A worker whose outcome would exceed it waits for the
    /// disk, so a slow fsync slows delivery instead of widening that window.
    /// Fast tasks need room for what finishes during one commit.
    pub max_unsynced_outcomes: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreMode {
    #[default]
    Durable,
    Memory,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            mode: StoreMode::Durable,
            retention: Duration::from_secs(7 * 24 * 3600),
            idempotency_window: Duration::from_secs(24 * 3600),
            max_finished_in_memory: 10_000,
            memory_horizon: Duration::from_secs(60),
            // Room for what fast tasks finish during a commit or two: 1,024
            // held 100,000 no-ops to 0.8 of an unbounded run, 2,048 to
            // about all of it (`cargo bench -p notifyhub --bench store`).
            max_unsynced_outcomes: 2048,
        }
    }
}

impl StoreConfig {
    pub fn validate(&self) -> Result<(), String> {
        const DAY: Duration = Duration::from_secs(24 * 3600);
        if self.retention < Duration::from_secs(60) || self.retention > 3650 * DAY {
            return Err("[store] retention: 1m to 3650 days".into());
        }
        if self.idempotency_window < Duration::from_secs(1) || self.idempotency_window > 365 * DAY {
            return Err("[store] idempotency_window: 1s to 365 days".into());
        }
        if self.max_finished_in_memory == 0 {
            return Err("[store] max_finished_in_memory: at least 1".into());
        }
        if self.memory_horizon < Duration::from_secs(1) || self.memory_horizon > DAY {
            return Err("[store] memory_horizon: 1s to 1 day".into());
        }
        if !(1..=1_000_000).contains(&self.max_unsynced_outcomes) {
            return Err("[store] max_unsynced_outcomes: 1 to 1,000,000".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_settings_are_bounded() {
        assert!(StoreConfig::default().validate().is_ok());
        let bad = [
            StoreConfig {
                retention: Duration::ZERO,
                ..Default::default()
            },
            StoreConfig {
                idempotency_window: Duration::from_secs(400 * 24 * 3600),
                ..Default::default()
            },
            StoreConfig {
                max_finished_in_memory: 0,
                ..Default::default()
            },
            StoreConfig {
                max_unsynced_outcomes: 0,
                ..Default::default()
            },
        ];
        for config in bad {
            assert!(config.validate().is_err(), "{config:?}");
        }
    }
}
