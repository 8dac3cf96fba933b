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

use tokio_util::sync::CancellationToken;

use crate::api::Api;
use crate::config::Config;
use crate::executor::Executor;
use crate::pool::{Pool, ShutdownReport};
use crate::registry::{Registry, RegistryError};
use crate::reload::{Reloader, WatchError};
use crate::sandbox::{Sandbox, SandboxError, SandboxSettings};
use crate::server::{BindError, Server};
use crate::store::TaskStore;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create the data directory {dir}: {error}")]
    DataDir { dir: PathBuf, error: std::io::Error },
    #[error("the plugin directory {0} does not exist")]
    NoPluginDir(PathBuf),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error(transparent)]
    Watch(#[from] WatchError),
}

/// A started daemon, listening but not yet serving.
pub struct Daemon {
    server: Server,
    api: Arc<Api>,
    pool: Arc<Pool>,
    store: Arc<TaskStore>,
}

impl Daemon {
    pub async fn start(config: &Config) -> Result<Daemon, StartError> {
        let mkdir = |dir: &PathBuf| {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|error| StartError::DataDir { dir: dir.clone(), error })
        };
        mkdir(&config.data_dir)?;
        if config.plugins_is_default {
            mkdir(&config.plugins)?;
        } else if !config.plugins.is_dir() {
            return Err(StartError::NoPluginDir(config.plugins.clone()));
        }

        let settings = SandboxSettings { cache_dir: Some(config.cache_dir()), ..Default::default() };
        let sandbox = Arc::new(Sandbox::new(&settings)?);
        let executor = Arc::new(Executor::new(sandbox));
        let registry = Arc::new(Registry::load_dir(&config.plugins, &executor, config.limits).await?);
        let catalog = registry.catalog();
        tracing::info!(
            dir = %config.plugins.display(),
            loaded = catalog.plugins().count(),
            failed = catalog.failures().count(),
            platforms = ?catalog.platforms(),
            "plugins loaded"
        );

        let store = Arc::new(TaskStore::default());
        let pool =
            Arc::new(Pool::start(config.pool.clone(), executor.clone(), registry.clone(), store.clone()));
        let server = Server::bind(&config.socket, config.server.clone()).await?;
        tracing::info!(socket = %config.socket.display(), "listening");
        let reloader = Reloader::start(registry.clone(), executor)?;
        let api = Arc::new(Api::new(registry, store.clone(), pool.clone(), reloader));
        Ok(Daemon { server, api, pool, store })
    }

    /// Serves until `shutdown` is cancelled, then stops accepting, drains
    /// the pool and reports what finished and what was cut off.
    pub async fn run(self, shutdown: CancellationToken) -> ShutdownReport {
        let server = tokio::spawn(self.server.serve(self.api.clone(), shutdown.clone()));
        shutdown.cancelled().await;
        tracing::info!("shutting down");
        let report = self.pool.shutdown().await;
        self.store.abandon_waiters();
        let _ = server.await;
        report
    }
}
