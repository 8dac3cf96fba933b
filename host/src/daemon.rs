//! The daemon: wires the parts together in the order a task flows through
//! them, and takes them apart again in reverse on shutdown.
//!
//! ```text
//! server ─▶ api ─▶ store + pool ─▶ executor ─▶ sandbox ─▶ plugin
//!                        ▲
//!                     registry (plugins by platform) ◀── reload watcher
//! ```

use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::activation::{self, ActivationError};
use crate::api::Api;
use crate::backend::TaskBackend;
use crate::backend::local::LocalTasks;
use crate::broker::tasks::SharedTasks;
use crate::broker::work;
use crate::broker::{Broker, BrokerError};
use crate::config::Config;
use crate::destination::{DestinationError, Destinations};
use crate::executor::Executor;
use crate::metrics::{self, Metrics};
use crate::pool::settings::{LiveSettings, Settings};
use crate::pool::shared_pace::SharedPace;
use crate::pool::{self, Pool, PoolDeps, ShutdownReport};
use crate::reconfigure::{ConfigSource, Reloader as ConfigReloader};
use crate::registry::Registry;
use crate::reload::{Reloader, WatchError};
use crate::sandbox::{Sandbox, SandboxError, SandboxSettings};
use crate::server::{BindError, Server};
use crate::store::{CommitObserver, JournalError, StoreError, StoreMode, TaskStore};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create the data directory {dir}: {error}")]
    DataDir { dir: PathBuf, error: std::io::Error },
    #[error("the plugin directory {0} does not exist")]
    NoPluginDir(PathBuf),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error(transparent)]
    Activation(#[from] ActivationError),
    #[error(transparent)]
    Watch(#[from] WatchError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Destination(#[from] DestinationError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// A started daemon, listening but not yet serving.
pub struct Daemon {
    server: Server,
    api: Arc<Api>,
    pool: Arc<Pool>,
    store: Arc<TaskStore>,
    registry: Arc<Registry>,
    /// Where to serve `/metrics`, when they are on.
    metrics: Option<(std::net::SocketAddr, Arc<Metrics>)>,
    /// Where tasks come from when several hosts share them.
    broker: Option<work::Host>,
}

/// How often finished tasks past their retention are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

impl Daemon {
    /// Opens the store, binds the socket and starts loading plugins in the
    /// background: the socket answers before any plugin has compiled, and a
    /// task for a platform whose plugin is still loading is accepted and
    /// waits for it.
    pub async fn start(config: &Config, source: ConfigSource) -> Result<Daemon, StartError> {
        let mkdir = |dir: &PathBuf| {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|error| StartError::DataDir {
                    dir: dir.clone(),
                    error,
                })
        };
        mkdir(&config.data_dir)?;
        if config.plugins_is_default {
            mkdir(&config.plugins)?;
        } else if !config.plugins.is_dir() {
            return Err(StartError::NoPluginDir(config.plugins.clone()));
        }

        let settings = SandboxSettings {
            cache_dir: Some(config.cache_dir()),
            max_total_memory_mib: config.sandbox.max_guest_memory_mib,
            max_instances: pool::instance_slots(&config.pool)
                .max(SandboxSettings::default().max_instances),
            baseline_written_behind: true,
            ..Default::default()
        };
        let sandbox = Arc::new(Sandbox::new(&settings)?);
        let executor = Arc::new(Executor::new(sandbox));
        let metrics = config.metrics.listen.map(|_| {
            let mut metrics = Metrics::new();
            metrics.observe(executor.sandbox().clone());
            Arc::new(metrics)
        });
        let registry = Arc::new(Registry::new(&config.plugins, metrics.clone()));

        // With a broker, tasks live in JetStream; this host's store holds
        // only the ones it is running.
        let broker = match config.broker.url {
            Some(_) => Some(Arc::new(
                Broker::connect(&config.broker, &config.store).await?,
            )),
            None => None,
        };
        let mut store_config = config.store.clone();
        if broker.is_some() {
            store_config.mode = StoreMode::Memory;
        }
        let path = config.store_path();
        let observer = metrics
            .clone()
            .map(|m| Arc::new(move |took, writes| m.commit(took, writes)) as CommitObserver);
        let store =
            tokio::task::spawn_blocking(move || TaskStore::open(&path, store_config, observer))
                .await
                .map_err(|e| {
                    StoreError::Journal(JournalError::Write(format!(
                        "opening the store failed: {e}"
                    )))
                })??;
        let store = Arc::new(store);
        let settings = Arc::new(LiveSettings::new(Settings {
            destinations: Destinations::resolve(&config.destinations)?,
            retry: config.retry.clone(),
            rate_limits: config.rate_limits.clone(),
        }));
        let deps = PoolDeps {
            executor: executor.clone(),
            registry: registry.clone(),
            store: store.clone(),
            settings: settings.clone(),
            metrics: metrics.clone(),
            shared_pace: broker.clone().map(|b| b as Arc<dyn SharedPace>),
        };
        let pool = Arc::new(Pool::start(config.pool.clone(), deps));
        let recovered = store.recover().await?;
        if !recovered.is_empty() {
            tracing::info!(
                tasks = recovered.len(),
                "resuming tasks left unfinished by the last run"
            );
        }
        let now = std::time::SystemTime::now();
        for (task, not_before) in recovered {
            pool.schedule(task.id, not_before.unwrap_or(now));
        }
        if let Some(broker) = &broker {
            tracing::info!(
                stream = %broker.config().stream,
                "tasks are shared through the broker; the local store holds only running tasks"
            );
        } else if store.is_durable() {
            tracing::info!(path = %config.store_path().display(), "task store open (durable)");
        } else {
            tracing::warn!("task store in memory: tasks do not survive a restart");
        }
        let server = match activation::listener()? {
            Some(listener) => {
                let server = Server::activated(listener, config.server.clone())?;
                tracing::info!(socket = %server.path().display(), "listening on the socket systemd passed");
                server
            }
            None => {
                let server = Server::bind(&config.socket, config.server.clone()).await?;
                tracing::info!(socket = %config.socket.display(), "listening");
                server
            }
        };
        // The watcher starts before the plugins are listed, so no change made
        // during start-up is missed; it then loads them in the background.
        let reloader = Reloader::start(registry.clone(), executor.clone(), config.limits).await?;
        let broker = broker.map(|broker| work::Host {
            broker,
            store: store.clone(),
            pool: pool.clone(),
            registry: registry.clone(),
            settings: settings.clone(),
            stats: Arc::default(),
        });
        let tasks: Arc<dyn TaskBackend> = match &broker {
            Some(host) => Arc::new(SharedTasks::new(host.clone())),
            None => Arc::new(LocalTasks::new(store.clone(), pool.clone())),
        };
        let api = Arc::new(Api::new(
            registry.clone(),
            tasks,
            pool.clone(),
            reloader,
            settings.clone(),
            metrics.clone(),
            Arc::new(ConfigReloader::new(
                source,
                config.clone(),
                settings,
                pool.clone(),
            )),
        ));
        let metrics_listener = match (config.metrics.listen, metrics) {
            (Some(addr), Some(metrics)) => Some((addr, metrics)),
            _ => None,
        };
        Ok(Daemon {
            server,
            api,
            pool,
            store,
            registry,
            metrics: metrics_listener,
            broker,
        })
    }

    /// Serves until `shutdown` is cancelled, then stops accepting, drains
    /// the pool and reports what finished and what was cut off. Tells
    /// systemd (when `NOTIFY_SOCKET` is set) that it is ready once the
    /// plugins present at start have loaded.
    pub async fn run(self, shutdown: CancellationToken) -> ShutdownReport {
        let drained = CancellationToken::new();
        let server = tokio::spawn(self.server.serve(
            self.api.clone(),
            shutdown.clone(),
            drained.clone(),
        ));
        if let Some((addr, metrics)) = self.metrics.clone() {
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                if let Err(e) = metrics::serve(addr, metrics, shutdown).await {
                    tracing::error!(%addr, "cannot serve metrics: {e}");
                }
            });
        }
        if let Some(host) = self.broker.clone() {
            tokio::spawn(work::run(host, shutdown.clone()));
        }
        let watchdog = sd_notify::watchdog_enabled().map(|every| {
            let pool = self.pool.clone();
            tokio::spawn(keep_alive(pool, every))
        });
        let registry = self.registry.clone();
        let ready = tokio::spawn(async move {
            registry.wait_ready().await;
            if std::env::var_os("NOTIFY_SOCKET").is_some()
                && let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready])
            {
                tracing::warn!("could not tell systemd that the daemon is ready: {e}");
            }
            tracing::info!("ready: every plugin present at start has been loaded or refused");
        });
        // SIGHUP re-reads the config file, as the `reload-config` op does.
        let api = self.api.clone();
        let hangups = tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut hangup) = signal(SignalKind::hangup()) else {
                tracing::warn!("cannot listen for SIGHUP; use the reload-config op");
                return;
            };
            while hangup.recv().await.is_some() {
                match api.reload_config().await {
                    Ok(applied) => tracing::info!(%applied, "SIGHUP: config reloaded"),
                    Err(e) => tracing::error!(
                        "SIGHUP: config not reloaded, the old one keeps serving: {}",
                        e.message
                    ),
                }
            }
        });
        let store = self.store.clone();
        let pruner = tokio::spawn(async move {
            let mut every = tokio::time::interval(PRUNE_EVERY);
            loop {
                every.tick().await;
                store.prune();
            }
        });
        shutdown.cancelled().await;
        tracing::info!("shutting down");
        pruner.abort();
        ready.abort();
        hangups.abort();
        if let Some(watchdog) = watchdog {
            watchdog.abort();
        }
        let report = self.pool.shutdown().await;
        self.store.abandon_waiters();
        if let Err(e) = self.store.flush().await {
            tracing::error!("the task store could not be flushed: {e}");
        }
        // Waits still pending (a broker task another host runs, one parked
        // for later) end now, answered `shutting_down`.
        drained.cancel();
        let _ = server.await;
        report
    }
}

/// Tells systemd's watchdog (`WatchdogSec=`) the daemon is alive, at half
/// its interval, but only while the pool's dispatcher answers: a daemon
/// whose core is wedged stops sending, and systemd restarts it.
async fn keep_alive(pool: Arc<Pool>, every: Duration) {
    let mut tick = tokio::time::interval(every / 2);
    loop {
        tick.tick().await;
        let alive = tokio::time::timeout(every / 2, pool.stats()).await;
        if matches!(alive, Ok(Some(_))) {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
        } else {
            tracing::error!(
                "the worker pool did not answer; not telling the watchdog we are alive"
            );
        }
    }
}
