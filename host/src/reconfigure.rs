//! Config reload without a restart: what `reload-config` and SIGHUP do.
//!
//! The config is read again from where it came from (the file, the
//! environment and the `serve` flags, through a [`ConfigSource`]) and
//! applied all or nothing: destinations, `[rate_limits]` and `[retry]` as
//! one new [`Settings`] snapshot, then the pool's bounds. Anything that does
//! not parse, resolve or validate changes nothing, and the reason is the
//! answer. Settings only a restart can change are compared with the config
//! the daemon started with and named in the answer, not silently ignored.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::api::Reconfigure;
use crate::config::Config;
use crate::destination::Destinations;
use crate::pool::Pool;
use crate::pool::WorkerCount;
use crate::pool::settings::{LiveSettings, Settings};

/// Reads the config again (file, environment and flags).
pub type ConfigSource = Arc<dyn Fn() -> Result<Config, String> + Send + Sync>;

/// Applies a re-read config to the running daemon.
pub struct Reloader {
    source: ConfigSource,
    started_with: Config,
    settings: Arc<LiveSettings>,
    pool: Arc<Pool>,
    /// One reload at a time.
    running: tokio::sync::Mutex<()>,
}

impl Reloader {
    pub fn new(
        source: ConfigSource,
        started_with: Config,
        settings: Arc<LiveSettings>,
        pool: Arc<Pool>,
    ) -> Self {
        Reloader {
            source,
            started_with,
            settings,
            pool,
            running: tokio::sync::Mutex::new(()),
        }
    }

    /// The settings of `new` that differ from the start's and need a restart.
    fn needs_restart(&self, new: &Config) -> Vec<&'static str> {
        let old = &self.started_with;
        [
            ("socket", new.socket != old.socket),
            ("data_dir", new.data_dir != old.data_dir),
            ("plugins", new.plugins != old.plugins),
            ("cache_dir", new.cache_dir != old.cache_dir),
            ("[store]", new.store != old.store),
            ("[server]", new.server != old.server),
            ("[limits]", new.limits != old.limits),
            ("[sandbox]", new.sandbox != old.sandbox),
            ("[metrics]", new.metrics != old.metrics),
            ("[traces]", new.traces != old.traces),
            ("[broker]", new.broker != old.broker),
        ]
        .into_iter()
        .filter_map(|(name, changed)| changed.then_some(name))
        .collect()
    }
}

#[async_trait::async_trait]
impl Reconfigure for Reloader {
    async fn reload(&self) -> Result<Value, String> {
        let _one_at_a_time = self.running.lock().await;
        let new = (self.source)()?;
        new.pool.validate().map_err(|e| format!("[pool]: {e}"))?;
        let destinations = Destinations::resolve(&new.destinations).map_err(|e| e.to_string())?;
        let min = WorkerCount::try_from(new.pool.min_workers as u64)?;
        let max = WorkerCount::try_from(new.pool.max_workers as u64)?;
        // Everything is checked before anything is swapped in: a refused
        // bound must not leave new destinations live under an error.
        self.pool
            .check_scale(min, max)
            .map_err(|e| format!("[pool]: {e}"))?;
        let needs_restart = self.needs_restart(&new);
        let names = destinations.names();
        self.settings.replace(Settings {
            destinations,
            retry: new.retry,
            rate_limits: new.rate_limits,
        });
        let (min, max) = self.pool.scale(Some(min), Some(max)).await?;
        tracing::info!(
            destinations = names.len(),
            min,
            max,
            ?needs_restart,
            "config reloaded"
        );
        Ok(json!({
            "applied": ["destinations", "rate_limits", "retry", "pool bounds"],
            "destinations": names,
            "min_workers": min,
            "max_workers": max,
            "needs_restart": needs_restart,
        }))
    }
}
