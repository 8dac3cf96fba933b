//! Plugin manifests: the optional `NAME.toml` beside `NAME.wasm`.
//!
//! ```toml
//! platforms = ["slack"]                 # optional: serve only these
//! allowed_hosts = ["hooks.slack.com"]   # outbound HTTP allowlist (deny by default)
//!
//! [config]                              # plain settings, readable by the plugin
//! username = "notifyhub"
//!
//! [secrets]                             # never written here in plain text
//! signing_secret = { env = "WEBHOOK_SECRET" }
//! api_key = { file = "/run/secrets/api_key" }
//!
//! [limits]                              # see `sandbox::Limits` for defaults
//! timeout = "5s"
//! memory_mib = 64
//! ```
//!
//! Secrets are resolved when the plugin is loaded and held as [`Secret`]s,
//! whose `Debug` and `Display` print `[redacted]`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::sandbox::Limits;

/// A manifest as written.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    #[serde(default)]
    pub platforms: Option<Vec<String>>,
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    #[serde(default)]
    pub secrets: BTreeMap<String, SecretSource>,
    #[serde(default)]
    pub limits: Option<Limits>,
}

/// Where a secret's value comes from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum SecretSource {
    Env { env: String },
    File { file: PathBuf },
}

/// A secret value. It can be read, but never printed by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A plugin's configuration after secrets were resolved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PluginConfig {
    plain: BTreeMap<String, String>,
    secrets: BTreeMap<String, Secret>,
}

impl PluginConfig {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.secrets
            .get(key)
            .map(Secret::expose)
            .or_else(|| self.plain.get(key).map(String::as_str))
    }

    pub fn contains(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Every secret value, for redaction checks.
    pub fn secret_values(&self) -> impl Iterator<Item = &str> {
        self.secrets.values().map(Secret::expose)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read manifest {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("invalid manifest {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("secret `{key}`: environment variable {env} is not set")]
    MissingEnv { key: String, env: String },
    #[error("secret `{key}`: cannot read {file}: {error}")]
    SecretFile {
        key: String,
        file: PathBuf,
        error: std::io::Error,
    },
}

impl Manifest {
    /// Reads `path` if it exists; a missing manifest is an empty one.
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Manifest::default()),
            Err(error) => {
                return Err(ManifestError::Read {
                    path: path.into(),
                    error,
                });
            }
        };
        Self::parse(&text).map_err(|message| ManifestError::Parse {
            path: path.into(),
            message,
        })
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.message().to_string())
    }

    /// Resolves secrets from the environment and files.
    pub fn resolve_config(&self) -> Result<PluginConfig, ManifestError> {
        let mut secrets = BTreeMap::new();
        for (key, source) in &self.secrets {
            let value = match source {
                SecretSource::Env { env } => {
                    std::env::var(env).map_err(|_| ManifestError::MissingEnv {
                        key: key.clone(),
                        env: env.clone(),
                    })?
                }
                SecretSource::File { file } => std::fs::read_to_string(file)
                    .map_err(|error| ManifestError::SecretFile {
                        key: key.clone(),
                        file: file.clone(),
                        error,
                    })?
                    .trim_end_matches(['\n', '\r'])
                    .to_string(),
            };
            secrets.insert(key.clone(), Secret(value));
        }
        Ok(PluginConfig {
            plain: self.config.clone(),
            secrets,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_manifest() {
        let m = Manifest::parse(
            r#"
            allowed_hosts = ["hooks.slack.com"]
            [config]
            username = "bot"
            [secrets]
            token = { env = "NOTIFYHUB_TEST_TOKEN_UNSET" }
            key = { file = "/nonexistent" }
            [limits]
            timeout = "5s"
            memory_mib = 64
            "#,
        )
        .unwrap();
        assert_eq!(m.allowed_hosts, ["hooks.slack.com"]);
        let limits = m.limits.unwrap();
        assert_eq!(limits.timeout, std::time::Duration::from_secs(5));
        assert_eq!(limits.memory_mib, 64);
        assert_eq!(limits.max_requests, Limits::default().max_requests);
        // Secrets resolve in key order: `key` (a file) fails before `token`.
        assert!(matches!(
            m.resolve_config(),
            Err(ManifestError::SecretFile { .. })
        ));
        let env_only =
            Manifest::parse("[secrets]\ntoken = { env = \"NOTIFYHUB_TEST_TOKEN_UNSET\" }").unwrap();
        assert!(matches!(
            env_only.resolve_config(),
            Err(ManifestError::MissingEnv { .. })
        ));
    }

    #[test]
    fn rejects_unknown_keys_and_plain_secrets() {
        assert!(Manifest::parse("allowed_host = []").is_err());
        assert!(Manifest::parse("[secrets]\ntoken = \"plain\"").is_err());
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret("hunter2".into());
        assert_eq!(format!("{s} {s:?}"), "[redacted] [redacted]");
    }
}
