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
//!
//! [smtp]                                # only for plugins that send e-mail
//! allow_plaintext = false               # relays without TLS (default: refused)
//! ca_file = "/etc/ssl/relay-ca.pem"     # extra roots for a relay's private CA
//! ```
//!
//! Secrets are resolved when the plugin is loaded and held as
//! [`Secret`](crate::sandbox::policy::Secret)s,
//! whose `Debug` and `Display` print `[redacted]`.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::sandbox::policy::{PluginConfig, Secret};
use crate::sandbox::{Limits, SmtpPolicy};

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
    #[serde(default)]
    pub smtp: SmtpTable,
}

/// The `[smtp]` table: what the plugin's SMTP relays may be.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpTable {
    /// Relays may be reached without TLS (a relay on this machine).
    #[serde(default)]
    pub allow_plaintext: bool,
    /// Extra trusted roots (PEM), for a relay whose certificate a private
    /// CA signed.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// Where a secret's value comes from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum SecretSource {
    Env { env: String },
    File { file: PathBuf },
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
    #[error("[smtp] ca_file {file}: {error}")]
    CaFile { file: PathBuf, error: String },
}

/// The largest manifest read; a longer file is refused.
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;

impl Manifest {
    /// Reads `path` if it exists; a missing manifest is an empty one. Only a
    /// regular file of at most [`MAX_MANIFEST_BYTES`] is read. Blocking.
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let read_err = |error| ManifestError::Read {
            path: path.into(),
            error,
        };
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Manifest::default()),
            Err(error) => return Err(read_err(error)),
            Ok(m) if !m.is_file() => {
                return Err(read_err(std::io::Error::other(
                    "not a regular file; only a regular file can be a manifest",
                )));
            }
            Ok(_) => {}
        }
        let file = std::fs::File::options()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(read_err)?;
        let mut text = String::new();
        file.take(MAX_MANIFEST_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(read_err)?;
        if text.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(read_err(std::io::Error::other(format!(
                "more than {MAX_MANIFEST_BYTES} bytes"
            ))));
        }
        Self::parse(&text).map_err(|message| ManifestError::Parse {
            path: path.into(),
            message,
        })
    }

    /// [`Manifest::load`] on the blocking pool.
    pub async fn load_async(path: &Path) -> Result<Self, ManifestError> {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || Self::load(&path))
            .await
            .unwrap_or_else(|e| {
                Err(ManifestError::Parse {
                    path: PathBuf::new(),
                    message: e.to_string(),
                })
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
            secrets.insert(key.clone(), Secret::new(value));
        }
        Ok(PluginConfig::new(self.config.clone(), secrets))
    }

    /// The `[smtp]` table as the sandbox enforces it, `ca_file` read and
    /// checked to hold certificates. Blocking.
    pub fn resolve_smtp(&self) -> Result<SmtpPolicy, ManifestError> {
        let extra_roots = match &self.smtp.ca_file {
            None => None,
            Some(file) => {
                let err = |error: String| ManifestError::CaFile {
                    file: file.clone(),
                    error,
                };
                let mut pem = Vec::new();
                std::fs::File::open(file)
                    .and_then(|f| f.take(MAX_MANIFEST_BYTES + 1).read_to_end(&mut pem))
                    .map_err(|e| err(e.to_string()))?;
                if pem.len() as u64 > MAX_MANIFEST_BYTES {
                    return Err(err(format!("more than {MAX_MANIFEST_BYTES} bytes")));
                }
                SmtpPolicy::check_roots(&pem).map_err(err)?;
                Some(pem.into())
            }
        };
        Ok(SmtpPolicy {
            allow_plaintext: self.smtp.allow_plaintext,
            extra_roots,
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
    fn the_smtp_table_is_checked_when_resolved() {
        let dir = tempfile::tempdir().unwrap();
        let none = Manifest::parse("").unwrap().resolve_smtp().unwrap();
        assert!(!none.allow_plaintext && none.extra_roots.is_none());
        let plain = Manifest::parse("[smtp]\nallow_plaintext = true").unwrap();
        assert!(plain.resolve_smtp().unwrap().allow_plaintext);
        assert!(Manifest::parse("[smtp]\nplaintext = true").is_err());

        let at = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            Manifest::parse(&format!(
                "[smtp]\nca_file = {:?}",
                path.display().to_string()
            ))
            .unwrap()
            .resolve_smtp()
        };
        assert!(matches!(
            at("empty.pem", ""),
            Err(ManifestError::CaFile { .. })
        ));
        assert!(matches!(
            at(
                "junk.pem",
                "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n"
            ),
            Err(ManifestError::CaFile { .. })
        ));
        let missing = Manifest::parse("[smtp]\nca_file = \"/nonexistent/ca.pem\"").unwrap();
        assert!(matches!(
            missing.resolve_smtp(),
            Err(ManifestError::CaFile { .. })
        ));
    }

    #[test]
    fn rejects_unknown_keys_and_plain_secrets() {
        assert!(Manifest::parse("allowed_host = []").is_err());
        assert!(Manifest::parse("[secrets]\ntoken = \"plain\"").is_err());
    }
}
