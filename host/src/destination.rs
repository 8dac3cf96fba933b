//! Named destinations: where a task goes, without the caller knowing how.
//!
//! ```toml
//! [destinations.ops-alerts]
//! platform = "dingtalk"
//! url_env = "OPS_DINGTALK_URL"          # or url = "https://…" (a credential: prefer _env)
//! secret_env = "OPS_DINGTALK_SECRET"    # the plugin reads it as config key `secret`
//! rate_limits = ["20/1m"]               # overrides what the plugin declares
//!
//! [destinations.team-telegram]
//! platform = "telegram"
//! target = "-1001234567890"             # a chat id: not a secret
//! secrets = { bot_token = { env = "TG_BOT_TOKEN" } }
//!
//! [destinations.everyone]
//! fan_out = ["ops-alerts", "team-telegram"]
//! ```
//!
//! A caller submits `{"target": "ops-alerts", …}` (no platform needed). The
//! task is stored with the destination's *name*, never its URL or secrets;
//! the route is looked up again for every attempt, so nothing secret reaches
//! the store, and the secrets in force are the ones of the running config.
//! A fan-out destination turns one submitted task into one task per leaf.
//!
//! Each destination is also the key its rate limit is kept under (see
//! `pool::pacer`): two destinations on the same bot share nothing, which is
//! why operators should give one bot one destination.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::manifest::{Manifest, SecretSource};
use crate::sandbox::{PluginConfig, Secret};

/// At most this many leaves behind one fan-out (after expansion).
const MAX_FAN_OUT: usize = 32;

/// `[destinations.NAME]` as written.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationSpec {
    pub platform: Option<String>,
    /// The plugin's target, written in the file (chat ids, addresses).
    pub target: Option<String>,
    /// Same as `target`; reads better for webhook URLs.
    pub url: Option<String>,
    /// The target, read from this environment variable.
    pub url_env: Option<String>,
    /// Shorthand for `secrets.secret = { env = … }`.
    pub secret_env: Option<String>,
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    #[serde(default)]
    pub secrets: BTreeMap<String, SecretSource>,
    /// `"N/duration"` rules such as `"20/1m"`; `[]` turns pacing off.
    pub rate_limits: Option<Vec<String>>,
    /// Other destinations to deliver to instead.
    pub fan_out: Option<Vec<String>>,
}

/// Most requests one rate-limit rule may count.
pub const MAX_RULE_REQUESTS: u32 = 1_000_000;
/// Longest window of a rate-limit rule: what the pacer and the broker's
/// shared budgets remember is sized by it.
pub const MAX_RULE_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// At most `requests` in any window of `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateRule {
    pub requests: u32,
    pub window: Duration,
}

impl RateRule {
    /// Parses `"5/1s"`, `"100/1m"`, `"20/60s"`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (n, window) = text
            .split_once('/')
            .ok_or_else(|| format!("rate limit {text:?} is not like \"20/1m\""))?;
        let requests: u32 = n
            .trim()
            .parse()
            .ok()
            .filter(|n| (1..=MAX_RULE_REQUESTS).contains(n))
            .ok_or_else(|| {
                format!("rate limit {text:?}: {n:?} is not a count from 1 to {MAX_RULE_REQUESTS}")
            })?;
        let window = humantime::parse_duration(window.trim())
            .map_err(|e| format!("rate limit {text:?}: bad window: {e}"))?;
        if window.is_zero() {
            return Err(format!("rate limit {text:?}: the window is zero"));
        }
        if window > MAX_RULE_WINDOW {
            return Err(format!(
                "rate limit {text:?}: windows longer than {} are not remembered",
                humantime::format_duration(MAX_RULE_WINDOW)
            ));
        }
        Ok(RateRule { requests, window })
    }
}

impl fmt::Display for RateRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            self.requests,
            humantime::format_duration(self.window)
        )
    }
}

/// One place to deliver to, ready to use.
pub struct Route {
    pub name: String,
    pub platform: String,
    target: Secret,
    /// Settings and secrets laid over the plugin's own for this destination.
    pub config: Arc<PluginConfig>,
    /// `None`: use what the plugin declares.
    pub rate_limits: Option<Vec<RateRule>>,
}

impl Route {
    /// The target the plugin receives. It may carry a credential.
    pub fn target(&self) -> &str {
        self.target.expose()
    }
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Route")
            .field("name", &self.name)
            .field("platform", &self.platform)
            .finish_non_exhaustive()
    }
}

/// What a name in the config stands for.
#[derive(Debug)]
enum Entry {
    Route(Arc<Route>),
    FanOut(Vec<String>),
}

/// Every configured destination, resolved once at start-up.
#[derive(Debug, Default)]
pub struct Destinations {
    entries: BTreeMap<String, Entry>,
}

#[derive(Debug, thiserror::Error)]
pub enum DestinationError {
    #[error("destination `{name}`: {message}")]
    Invalid { name: String, message: String },
}

impl Destinations {
    /// Resolves every destination: reads URLs and secrets from the
    /// environment and files, parses rate limits, checks fan-outs.
    pub fn resolve(specs: &BTreeMap<String, DestinationSpec>) -> Result<Self, DestinationError> {
        let mut entries = BTreeMap::new();
        for (name, spec) in specs {
            let invalid = |message: String| DestinationError::Invalid {
                name: name.clone(),
                message,
            };
            if name.contains("://") || name.trim().is_empty() {
                return Err(invalid("a destination name cannot look like a URL".into()));
            }
            let entry = match &spec.fan_out {
                Some(leaves) => {
                    if *spec
                        != (DestinationSpec {
                            fan_out: spec.fan_out.clone(),
                            ..Default::default()
                        })
                    {
                        return Err(invalid(
                            "a fan-out destination has only `fan_out`; put settings on its members"
                                .into(),
                        ));
                    }
                    Entry::FanOut(leaves.clone())
                }
                None => Entry::Route(Arc::new(route(name, spec).map_err(invalid)?)),
            };
            entries.insert(name.clone(), entry);
        }
        let destinations = Destinations { entries };
        for name in destinations.entries.keys() {
            destinations
                .expand(name)
                .map_err(|message| DestinationError::Invalid {
                    name: name.clone(),
                    message,
                })?;
        }
        Ok(destinations)
    }

    /// The configured names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// `" (configured: a, b)"`, or nothing when there are none.
    pub fn names_hint(&self) -> String {
        if self.entries.is_empty() {
            return String::new();
        }
        let names: Vec<&str> = self.entries.keys().map(String::as_str).collect();
        format!(" (configured: {})", names.join(", "))
    }

    /// The single route `name` stands for (not a fan-out).
    pub fn route(&self, name: &str) -> Option<&Arc<Route>> {
        match self.entries.get(name)? {
            Entry::Route(route) => Some(route),
            Entry::FanOut(_) => None,
        }
    }

    /// The routes behind `name`, fan-outs expanded, each once, in order.
    pub fn expand(&self, name: &str) -> Result<Vec<Arc<Route>>, String> {
        let mut out = Vec::new();
        self.expand_into(name, &mut Vec::new(), &mut out)?;
        Ok(out)
    }

    fn expand_into(
        &self,
        name: &str,
        path: &mut Vec<String>,
        out: &mut Vec<Arc<Route>>,
    ) -> Result<(), String> {
        if path.iter().any(|p| p == name) {
            return Err(format!("fan-out loop: {} → {name}", path.join(" → ")));
        }
        match self.entries.get(name) {
            None => Err(format!("unknown destination `{name}`")),
            Some(Entry::Route(route)) => {
                if !out.iter().any(|r| r.name == route.name) {
                    out.push(route.clone());
                }
                if out.len() > MAX_FAN_OUT {
                    return Err(format!("fans out to more than {MAX_FAN_OUT} destinations"));
                }
                Ok(())
            }
            Some(Entry::FanOut(leaves)) => {
                path.push(name.to_string());
                for leaf in leaves {
                    self.expand_into(leaf, path, out)?;
                }
                path.pop();
                Ok(())
            }
        }
    }
}

fn route(name: &str, spec: &DestinationSpec) -> Result<Route, String> {
    let platform = spec
        .platform
        .clone()
        .ok_or("`platform` is missing (or give `fan_out`)")?;
    let target = match (&spec.target, &spec.url, &spec.url_env) {
        (Some(t), None, None) | (None, Some(t), None) => t.clone(),
        (None, None, Some(env)) => std::env::var(env)
            .map_err(|_| format!("environment variable {env} (url_env) is not set"))?,
        (None, None, None) => return Err("give one of `target`, `url` or `url_env`".into()),
        _ => return Err("give only one of `target`, `url` and `url_env`".into()),
    };
    if target.trim().is_empty() {
        return Err("the target is empty".into());
    }
    let mut secrets = spec.secrets.clone();
    if let Some(env) = &spec.secret_env {
        if secrets.contains_key("secret") {
            return Err("give `secret_env` or `secrets.secret`, not both".into());
        }
        secrets.insert("secret".into(), SecretSource::Env { env: env.clone() });
    }
    let config = Manifest {
        config: spec.config.clone(),
        secrets,
        ..Manifest::default()
    }
    .resolve_config()
    .map_err(|e| e.to_string())?;
    let rate_limits = spec
        .rate_limits
        .as_ref()
        .map(|rules| rules.iter().map(|r| RateRule::parse(r)).collect())
        .transpose()?;
    Ok(Route {
        name: name.to_string(),
        platform,
        target: Secret::new(target),
        config: Arc::new(config),
        rate_limits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs(toml_text: &str) -> BTreeMap<String, DestinationSpec> {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn parses_rules() {
        let rule = RateRule::parse("20/1m").unwrap();
        assert_eq!((rule.requests, rule.window), (20, Duration::from_secs(60)));
        assert_eq!(RateRule::parse("5 / 1s").unwrap().requests, 5);
        assert!(RateRule::parse("1/24h").is_ok());
        for bad in [
            "20",
            "0/1s",
            "x/1s",
            "5/soon",
            "5/0s",
            "1/25h",
            "2000000/1s",
        ] {
            assert!(RateRule::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn expands_fan_outs_once_each_and_rejects_loops() {
        let d = Destinations::resolve(&specs(
            r#"
            a = { platform = "slack", url = "https://hooks.slack.com/x" }
            b = { platform = "discord", url = "https://discord.com/y", rate_limits = [] }
            both = { fan_out = ["a", "b", "a"] }
            outer = { fan_out = ["both", "b"] }
            "#,
        ))
        .unwrap();
        let names: Vec<_> = d
            .expand("outer")
            .unwrap()
            .iter()
            .map(|r| r.name.clone())
            .collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(d.route("b").unwrap().rate_limits, Some(vec![]));
        assert!(d.route("both").is_none());

        let err = Destinations::resolve(&specs(
            r#"x = { fan_out = ["y"] }
            y = { fan_out = ["x"] }"#,
        ))
        .unwrap_err();
        assert!(err.to_string().contains("loop"), "{err}");
        let err = Destinations::resolve(&specs(r#"x = { fan_out = ["nope"] }"#)).unwrap_err();
        assert!(
            err.to_string().contains("unknown destination `nope`"),
            "{err}"
        );
    }

    #[test]
    fn explains_bad_destinations() {
        for (text, expected) in [
            (r#"a = { url = "https://x" }"#, "`platform` is missing"),
            (r#"a = { platform = "slack" }"#, "give one of"),
            (
                r#"a = { platform = "slack", url = "u", target = "t" }"#,
                "only one",
            ),
            (
                r#"a = { platform = "slack", url_env = "NOTIFYHUB_UNSET_URL" }"#,
                "NOTIFYHUB_UNSET_URL",
            ),
            (
                r#"a = { platform = "slack", url = "u", rate_limits = ["9"] }"#,
                "rate limit",
            ),
            (
                r#"a = { fan_out = [], platform = "slack" }"#,
                "only `fan_out`",
            ),
        ] {
            let err = Destinations::resolve(&specs(text)).unwrap_err().to_string();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn secrets_are_laid_over_the_plugin_config_and_never_printed() {
        // SAFETY: the variable name is unique to this test.
        unsafe { std::env::set_var("NOTIFYHUB_TEST_DEST_SECRET", "SEC-very-secret") };
        let d = Destinations::resolve(&specs(
            r#"ops = { platform = "dingtalk", url = "https://oapi.dingtalk.com/robot/send?access_token=tok", secret_env = "NOTIFYHUB_TEST_DEST_SECRET", config = { keyword = "alert" } }"#,
        ))
        .unwrap();
        let route = d.route("ops").unwrap();
        assert_eq!(route.config.get("secret"), Some("SEC-very-secret"));
        assert_eq!(route.config.get("keyword"), Some("alert"));
        let printed = format!("{route:?} {d:?}");
        assert!(
            !printed.contains("SEC-very") && !printed.contains("tok"),
            "{printed}"
        );
    }
}
