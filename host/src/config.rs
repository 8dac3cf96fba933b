//! Configuration: built-in defaults, overridden by a TOML file, overridden
//! by environment variables and command-line flags.
//!
//! ```toml
//! data_dir = "/var/lib/notifyhub"
//! plugins = "/etc/notifyhub/plugins"
//! socket = "/run/notifyhub/notifyhub.sock"
//!
//! [pool]
//! max_workers = 1024
//!
//! [server]
//! max_line_bytes = 1048576
//!
//! [limits]          # defaults for plugins whose manifest sets none
//! timeout = "10s"
//! ```
//!
//! Flags and their environment variables (`--socket`/`NOTIFYHUB_SOCKET`,
//! `--plugins`/`NOTIFYHUB_PLUGINS`, `--data-dir`/`NOTIFYHUB_DATA_DIR`,
//! `--config`/`NOTIFYHUB_CONFIG`) are read by the CLI and passed in as
//! [`Overrides`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::broker::BrokerConfig;
use crate::destination::{DestinationSpec, RateRule};
use crate::metrics::MetricsConfig;
use crate::pool::PoolConfig;
use crate::pool::retry::RetryConfig;
use crate::sandbox::Limits;
use crate::server::ServerConfig;
use crate::store::StoreConfig;
use crate::telemetry::TracesConfig;

/// The config file as written.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub plugins: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    #[serde(default)]
    pub pool: PoolConfig,
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub retry: RetryConfig,
    #[serde(default)]
    pub sandbox: SandboxConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub traces: TracesConfig,
    #[serde(default)]
    pub broker: BrokerConfig,
    /// `[destinations.NAME]`: named places to deliver to (see `destination`).
    #[serde(default)]
    pub destinations: BTreeMap<String, DestinationSpec>,
    /// `[rate_limits]`: `platform = ["20/1m"]` replaces what its plugin declares.
    #[serde(default)]
    pub rate_limits: BTreeMap<String, Vec<String>>,
}

/// `[sandbox]`: host-wide limits on plugins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    /// Guest linear memory all plugin instances together may hold, in MiB.
    pub max_guest_memory_mib: u64,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            max_guest_memory_mib: 4096,
        }
    }
}

/// Values given on the command line or in the environment.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub plugins: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    pub cache_dir: Option<PathBuf>,
}

/// The resolved configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub data_dir: PathBuf,
    pub plugins: PathBuf,
    pub socket: PathBuf,
    /// Where compiled plugins are cached.
    pub cache_dir: PathBuf,
    /// Whether `plugins` is the default under `data_dir` (created if missing).
    pub plugins_is_default: bool,
    pub pool: PoolConfig,
    pub server: ServerConfig,
    pub limits: Limits,
    pub store: StoreConfig,
    pub retry: RetryConfig,
    pub sandbox: SandboxConfig,
    pub metrics: MetricsConfig,
    pub traces: TracesConfig,
    pub broker: BrokerConfig,
    pub destinations: BTreeMap<String, DestinationSpec>,
    pub rate_limits: BTreeMap<String, Vec<RateRule>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("cannot resolve the path {path} against the working directory: {error}")]
    Path {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("[rate_limits] {platform}: {message}")]
    RateLimit { platform: String, message: String },
}

impl Config {
    /// Resolves the configuration. An explicitly named config file must
    /// exist; the default one (`$XDG_CONFIG_HOME/notifyhub/config.toml`) is
    /// read only if it does.
    pub fn resolve(overrides: &Overrides) -> Result<Config, ConfigError> {
        let file = match &overrides.config {
            Some(path) => FileConfig::load(path)?,
            None => match default_config_file().filter(|p| p.exists()) {
                Some(path) => FileConfig::load(&path)?,
                None => FileConfig::default(),
            },
        };
        let data_dir = overrides
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(default_data_dir);
        let plugins = overrides.plugins.clone().or(file.plugins);
        let plugins_is_default = plugins.is_none();
        let rate_limits = file
            .rate_limits
            .iter()
            .map(|(platform, rules)| {
                let rules = rules
                    .iter()
                    .map(|r| RateRule::parse(r))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|message| ConfigError::RateLimit {
                        platform: platform.clone(),
                        message,
                    })?;
                Ok((platform.clone(), rules))
            })
            .collect::<Result<_, ConfigError>>()?;
        // Relative paths are taken against the working directory, once, here
        // (the compile cache, for one, needs an absolute path).
        let data_dir = absolute(data_dir)?;
        let plugins = plugins.map(absolute).transpose()?;
        let socket = overrides
            .socket
            .clone()
            .or(file.socket)
            .map(absolute)
            .transpose()?;
        let cache_dir = overrides.cache_dir.clone().map(absolute).transpose()?;
        Ok(Config {
            cache_dir: cache_dir.unwrap_or_else(|| data_dir.join("cache")),
            plugins: plugins.unwrap_or_else(|| data_dir.join("plugins")),
            socket: socket.unwrap_or_else(|| data_dir.join("notifyhub.sock")),
            data_dir,
            plugins_is_default,
            pool: file.pool,
            server: file.server,
            limits: file.limits,
            store: file.store,
            retry: file.retry,
            sandbox: file.sandbox,
            metrics: file.metrics,
            traces: file.traces,
            broker: file.broker,
            destinations: file.destinations,
            rate_limits,
        })
    }

    /// The durable task store.
    pub fn store_path(&self) -> PathBuf {
        self.data_dir.join("tasks.db")
    }

    /// Where compiled plugins are cached.
    pub fn cache_dir(&self) -> PathBuf {
        self.cache_dir.clone()
    }
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.into(),
            error,
        })?;
        Self::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.into(),
            message,
        })
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }
}

fn absolute(path: PathBuf) -> Result<PathBuf, ConfigError> {
    std::path::absolute(&path).map_err(|error| ConfigError::Path { path, error })
}

/// `$XDG_DATA_HOME/notifyhub`, else `~/.local/share/notifyhub`, else
/// `./notifyhub-data`.
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("notifyhub");
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/share/notifyhub"),
        None => PathBuf::from("notifyhub-data"),
    }
}

fn default_config_file() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("notifyhub/config.toml"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_and_defaults_fill_the_rest() {
        let dir = std::env::temp_dir().join(format!("nh-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(
            &file,
            "data_dir = \"/srv/nh\"\nsocket = \"/srv/s.sock\"\n[pool]\nmax_workers = 8\n",
        )
        .unwrap();
        let overrides = Overrides {
            config: Some(file),
            socket: Some("/tmp/flag.sock".into()),
            ..Overrides::default()
        };
        let config = Config::resolve(&overrides).unwrap();
        assert_eq!(config.socket, PathBuf::from("/tmp/flag.sock"));
        assert_eq!(config.plugins, PathBuf::from("/srv/nh/plugins"));
        assert!(config.plugins_is_default);
        assert_eq!(config.pool.max_workers, 8);
        assert_eq!(
            config.pool.queue_capacity,
            PoolConfig::default().queue_capacity
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn rejects_unknown_keys_with_their_name() {
        let err = FileConfig::parse("[pool]\nworkerz = 3\n").unwrap_err();
        assert!(err.contains("workerz"), "{err}");
    }

    #[test]
    fn the_shipped_examples_parse() {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let config = FileConfig::load(&examples.join("notifyhub.toml")).unwrap();
        assert_eq!(
            config.pool,
            PoolConfig::default(),
            "the example shows the defaults"
        );
        assert_eq!(config.store, StoreConfig::default());
        assert_eq!(config.retry, RetryConfig::default());
        assert_eq!(config.sandbox, SandboxConfig::default());
        config.pool.validate().unwrap();
        for manifest in std::fs::read_dir(examples.join("plugins")).unwrap() {
            let path = manifest.unwrap().path();
            crate::manifest::Manifest::load(&path).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    #[test]
    fn a_named_config_file_must_exist() {
        let overrides = Overrides {
            config: Some("/nonexistent/notifyhub.toml".into()),
            ..Default::default()
        };
        assert!(matches!(
            Config::resolve(&overrides),
            Err(ConfigError::Read { .. })
        ));
    }
}
