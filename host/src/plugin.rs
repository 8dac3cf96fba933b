//! A loaded plugin's identity, and what its `describe()` said.
//!
//! These types sit below everything that handles plugins — the registry
//! that routes to them, the loader that builds them, the executor that calls
//! them, the store that records which version ran a task — and import none
//! of those, so none of them has to import another for a plugin's name.
//!
//! `describe()` is foreign input like any other: [`PluginInfo::decode`]
//! checks it once, when a plugin loads, against the bounds below, so every
//! later use (routing, `plugins`, `status`, pacing) can trust it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::bindings::{PluginPre, wit};
use crate::destination::{MAX_RULE_REQUESTS, MAX_RULE_WINDOW};
use crate::manifest::Manifest;
use crate::sandbox::{HostState, PluginPolicy, Tier};
use crate::task::PlatformName;

/// Most platforms one plugin may serve.
pub const MAX_PLATFORMS: usize = 16;
/// Longest plugin name or version string, in bytes.
pub const MAX_NAME_BYTES: usize = 64;
/// Longest description (of the plugin or of a config key), in bytes.
pub const MAX_DESCRIPTION_BYTES: usize = 1024;
/// Most config keys one plugin may declare.
pub const MAX_CONFIG_KEYS: usize = 64;
/// Most rate-limit rules one plugin may declare.
pub const MAX_RATE_RULES: usize = 8;

/// A plugin's name as operators give it (`reload slack`): the stem of its
/// file in the plugin directory. It cannot hold a path separator, `..`, a
/// NUL or anything else that would make `DIR/NAME.wasm` leave the directory.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct PluginName(String);

impl PluginName {
    pub const MAX_LEN: usize = 128;

    /// `DIR/NAME.wasm`.
    pub fn file_in(&self, dir: &std::path::Path) -> PathBuf {
        dir.join(format!("{}.wasm", self.0))
    }
}

impl std::str::FromStr for PluginName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let valid = (1..=Self::MAX_LEN).contains(&s.len())
            && !s.starts_with('.')
            && !s.contains("..")
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if valid {
            Ok(PluginName(s.to_string()))
        } else {
            let shown: String = s.chars().take(40).collect();
            Err(format!(
                "`{}` is not a plugin name: give the file's stem (`slack` for slack.wasm), \
                 1 to {} of A-Z, a-z, 0-9, `-`, `_` and `.`, not starting with `.` nor holding `..`",
                shown.escape_debug(),
                Self::MAX_LEN
            ))
        }
    }
}

impl<'de> Deserialize<'de> for PluginName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for PluginName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A compiled component, linked against what the host grants.
#[derive(Clone)]
pub struct Compiled {
    pub path: PathBuf,
    pub digest: String,
    pub pre: PluginPre<HostState>,
    /// The compiler that made the code: baseline code is swapped for
    /// optimized code once that is ready.
    pub tier: Tier,
}

/// A compiled, validated plugin version.
pub struct LoadedPlugin {
    /// Identifies this loaded version: file stem and digest. Two files with
    /// the same bytes but different manifests are different plugins.
    pub key: String,
    pub name: String,
    /// The version `describe()` reported.
    pub version: String,
    /// SHA-256 of the file's bytes, hex.
    pub digest: String,
    pub path: PathBuf,
    /// Platforms routed to this plugin.
    pub platforms: Vec<PlatformName>,
    pub info: PluginInfo,
    pub policy: Arc<PluginPolicy>,
    /// The manifest this version was configured with.
    pub manifest: Manifest,
    /// The compiled component, reused when only the manifest changes.
    pub compiled: Compiled,
    pub loaded_at: SystemTime,
}

impl LoadedPlugin {
    pub fn pre(&self) -> &PluginPre<HostState> {
        &self.compiled.pre
    }

    /// `name@version (digest prefix)`, recorded with each task outcome.
    pub fn version_ref(&self) -> PluginRef {
        PluginRef {
            name: self.name.clone(),
            version: self.version.clone(),
            digest: self.digest[..12].to_string(),
        }
    }
}

/// Which plugin version handled a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginRef {
    pub name: String,
    pub version: String,
    pub digest: String,
}

/// What `describe()` said, checked against the bounds of this module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub platforms: Vec<PlatformName>,
    pub config_keys: Vec<ConfigKey>,
    pub rate_limits: Vec<RateLimitRule>,
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigKey {
    pub name: String,
    pub required: bool,
    pub secret: bool,
    pub description: String,
}

/// A declared limit: at most `requests` per `window_ms` per destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimitRule {
    pub requests: u32,
    pub window_ms: u64,
}

/// Why a `describe()` answer was refused. Retrying cannot fix any of these:
/// only a new file can.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InfoError {
    #[error("{field} is {len} bytes; at most {max} are allowed")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{field} contains a control or bidirectional-override character")]
    Unprintable { field: &'static str },
    #[error("{field} is empty")]
    Empty { field: &'static str },
    #[error("it names {0} platforms; at most {MAX_PLATFORMS} are allowed")]
    TooManyPlatforms(usize),
    #[error("platform {0}")]
    Platform(String),
    #[error("platform `{0}` is named twice")]
    DuplicatePlatform(String),
    #[error("it declares {0} config keys; at most {MAX_CONFIG_KEYS} are allowed")]
    TooManyConfigKeys(usize),
    #[error("it declares {0} rate-limit rules; at most {MAX_RATE_RULES} are allowed")]
    TooManyRateRules(usize),
    #[error(
        "rate-limit rule {requests}/{window_ms}ms is out of range (1..={MAX_RULE_REQUESTS} \
         requests per 1 ms..=24 h)"
    )]
    RateRule { requests: u32, window_ms: u64 },
}

impl PluginInfo {
    /// Checks what a plugin's `describe()` returned.
    pub fn decode(info: wit::PluginInfo) -> Result<Self, InfoError> {
        let name = text("name", info.name, MAX_NAME_BYTES)?;
        if name.is_empty() {
            return Err(InfoError::Empty { field: "name" });
        }
        let version = text("version", info.version, MAX_NAME_BYTES)?;
        let description = text("description", info.description, MAX_DESCRIPTION_BYTES)?;
        if info.platforms.len() > MAX_PLATFORMS {
            return Err(InfoError::TooManyPlatforms(info.platforms.len()));
        }
        let platforms = platform_list(info.platforms)?;
        if info.config_keys.len() > MAX_CONFIG_KEYS {
            return Err(InfoError::TooManyConfigKeys(info.config_keys.len()));
        }
        let config_keys = info
            .config_keys
            .into_iter()
            .map(|k| {
                Ok(ConfigKey {
                    name: text("a config key's name", k.name, MAX_NAME_BYTES)?,
                    required: k.required,
                    secret: k.secret,
                    description: text(
                        "a config key's description",
                        k.description,
                        MAX_DESCRIPTION_BYTES,
                    )?,
                })
            })
            .collect::<Result<_, InfoError>>()?;
        if info.rate_limits.len() > MAX_RATE_RULES {
            return Err(InfoError::TooManyRateRules(info.rate_limits.len()));
        }
        let rate_limits = info
            .rate_limits
            .into_iter()
            .map(|r| {
                let in_range = (1..=MAX_RULE_REQUESTS).contains(&r.requests)
                    && (1..=MAX_RULE_WINDOW.as_millis() as u64).contains(&r.window_ms);
                in_range
                    .then_some(RateLimitRule {
                        requests: r.requests,
                        window_ms: r.window_ms,
                    })
                    .ok_or(InfoError::RateRule {
                        requests: r.requests,
                        window_ms: r.window_ms,
                    })
            })
            .collect::<Result<_, InfoError>>()?;
        Ok(PluginInfo {
            name,
            version,
            platforms,
            config_keys,
            rate_limits,
            description,
        })
    }
}

/// Platform names, each checked, none twice.
pub fn platform_list(names: Vec<String>) -> Result<Vec<PlatformName>, InfoError> {
    let mut out: Vec<PlatformName> = Vec::with_capacity(names.len());
    for name in names {
        let platform: PlatformName = name.parse().map_err(InfoError::Platform)?;
        if out.contains(&platform) {
            return Err(InfoError::DuplicatePlatform(platform.to_string()));
        }
        out.push(platform);
    }
    Ok(out)
}

/// A string from a plugin: bounded, and free of characters that would
/// garble a log line or a terminal (controls, bidirectional overrides).
fn text(field: &'static str, value: String, max: usize) -> Result<String, InfoError> {
    if value.len() > max {
        return Err(InfoError::TooLong {
            field,
            len: value.len(),
            max,
        });
    }
    if value.chars().any(|c| c.is_control() || is_bidi_control(c)) {
        return Err(InfoError::Unprintable { field });
    }
    Ok(value)
}

fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn info(platforms: Vec<String>) -> wit::PluginInfo {
        wit::PluginInfo {
            name: "p".into(),
            version: "1.0.0".into(),
            platforms,
            config_keys: Vec::new(),
            rate_limits: vec![wit::RateLimitRule {
                requests: 20,
                window_ms: 60_000,
            }],
            description: "d".into(),
        }
    }

    #[test]
    fn plugin_names_stay_in_the_directory() {
        for bad in [
            "",
            "../x/evil",
            "..",
            ".hidden",
            "a/b",
            "a\0b",
            "a\\b",
            "x..y",
        ] {
            assert!(bad.parse::<PluginName>().is_err(), "{bad:?}");
        }
        let ok: PluginName = "slack-v2.beta_1".parse().unwrap();
        assert_eq!(
            ok.file_in(std::path::Path::new("/p")),
            PathBuf::from("/p/slack-v2.beta_1.wasm")
        );
    }

    #[test]
    fn accepts_a_plain_description() {
        let decoded = PluginInfo::decode(info(vec!["slack".into(), "lark".into()])).unwrap();
        assert_eq!(decoded.platforms.len(), 2);
    }

    #[test]
    fn refuses_hostile_descriptions() {
        for platforms in [
            vec![String::new()],
            vec!["x".repeat(64 * 1024)],
            vec!["a\0b".into()],
            vec!["a\nb".into()],
            vec!["Slack".into()],
            vec!["a\u{202E}b".into()],
            vec!["dup".into(), "dup".into()],
            (0..10_000).map(|i| format!("p{i}")).collect(),
        ] {
            assert!(
                PluginInfo::decode(info(platforms.clone())).is_err(),
                "{:.80?}",
                platforms
            );
        }
        let mut long = info(vec!["p".into()]);
        long.description = "x".repeat(100 << 20);
        assert!(matches!(
            PluginInfo::decode(long),
            Err(InfoError::TooLong { .. })
        ));
        let mut rule = info(vec!["p".into()]);
        rule.rate_limits[0].window_ms = 0;
        assert!(matches!(
            PluginInfo::decode(rule),
            Err(InfoError::RateRule { .. })
        ));
    }

    proptest! {
        #[test]
        fn any_description_is_refused_or_bounded(
            name in ".{0,80}",
            platforms in proptest::collection::vec(".{0,40}", 0..20),
            requests in any::<u32>(),
            window_ms in any::<u64>(),
        ) {
            let mut raw = info(platforms);
            raw.name = name;
            raw.rate_limits[0] = wit::RateLimitRule { requests, window_ms };
            if let Ok(ok) = PluginInfo::decode(raw) {
                prop_assert!(ok.name.len() <= MAX_NAME_BYTES);
                prop_assert!(ok.platforms.len() <= MAX_PLATFORMS);
                prop_assert!(ok.rate_limits.iter().all(|r| r.requests >= 1 && r.window_ms >= 1));
            }
        }
    }
}
