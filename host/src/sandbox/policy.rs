//! What a plugin may do: its allowlist, limits and configuration.
//!
//! The sandbox owns these types because it enforces them; the manifest
//! (`crate::manifest`) only fills them from a plugin's `NAME.toml`, and named
//! destinations lay a per-task overlay over the configuration.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use super::smtp::SmtpPolicy;
use super::{AllowList, Limits};

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

/// What a plugin is allowed to do; shared by every call into it.
#[derive(Debug)]
pub struct PluginPolicy {
    pub name: Arc<str>,
    pub allow: Arc<AllowList>,
    pub limits: Limits,
    pub config: PluginConfig,
    /// What the manifest's `[smtp]` table allows beyond the defaults.
    pub smtp: SmtpPolicy,
}

impl PluginConfig {
    /// A configuration of plain settings and resolved secrets.
    pub fn new(plain: BTreeMap<String, String>, secrets: BTreeMap<String, Secret>) -> Self {
        PluginConfig { plain, secrets }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("hunter2".into());
        assert_eq!(format!("{s} {s:?}"), "[redacted] [redacted]");
    }
}
