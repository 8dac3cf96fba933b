//! The retry policy: what happens after a failed attempt.
//!
//! Permanent and invalid errors (and tasks for a platform nobody serves) are
//! never retried. Retryable, rate-limited, crashed and timed-out attempts are
//! retried until `max_attempts`, each after an exponential backoff with full
//! jitter (a uniformly random wait between zero and `base × 2^(n-1)`, capped
//! at `cap`), and never sooner than the `retry-after` the plugin reported.
//! Policies can differ per platform.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::task::Verdict;
use crate::task::{FailureClass, Outcome};

/// Retries for one platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included.
    pub max_attempts: u32,
    /// The backoff ceiling before the first retry.
    #[serde(with = "humantime_serde")]
    pub base: Duration,
    /// The longest backoff.
    #[serde(with = "humantime_serde")]
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base: Duration::from_secs(1),
            cap: Duration::from_secs(600),
        }
    }
}

/// `[retry]` in the config file: a default policy and per-platform ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    pub max_attempts: u32,
    #[serde(with = "humantime_serde")]
    pub base: Duration,
    #[serde(with = "humantime_serde")]
    pub cap: Duration,
    /// `[retry.platforms.NAME]`: a whole policy for one platform (keys it
    /// leaves out take the built-in defaults).
    pub platforms: BTreeMap<String, RetryPolicy>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        let d = RetryPolicy::default();
        RetryConfig {
            max_attempts: d.max_attempts,
            base: d.base,
            cap: d.cap,
            platforms: BTreeMap::new(),
        }
    }
}

impl RetryConfig {
    pub fn policy(&self, platform: &str) -> RetryPolicy {
        self.platforms
            .get(platform)
            .copied()
            .unwrap_or(RetryPolicy {
                max_attempts: self.max_attempts,
                base: self.base,
                cap: self.cap,
            })
    }

    /// The verdict on attempt number `attempt` (1-based, counted since the
    /// task was last revived) of a task.
    pub fn decide(&self, platform: &str, outcome: &Outcome, attempt: u32) -> Verdict {
        let (class, retry_after_ms) = match outcome {
            Outcome::Delivered { .. } => return Verdict::Succeeded,
            Outcome::Failed {
                class,
                retry_after_ms,
                ..
            } => (*class, *retry_after_ms),
        };
        let retryable = matches!(
            class,
            FailureClass::Retryable
                | FailureClass::RateLimited
                | FailureClass::Crashed
                | FailureClass::TimedOut
        );
        let policy = self.policy(platform);
        if !retryable || attempt >= policy.max_attempts {
            return Verdict::Dead;
        }
        let ceiling = policy
            .base
            .saturating_mul(1 << (attempt - 1).min(30))
            .min(policy.cap);
        let jittered = ceiling.mul_f64(fastrand::f64());
        let floor = Duration::from_millis(retry_after_ms.unwrap_or(0));
        Verdict::Retry {
            after: jittered.max(floor),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(class: FailureClass, retry_after_ms: Option<u64>) -> Outcome {
        Outcome::Failed {
            class,
            message: "x".into(),
            retry_after_ms,
        }
    }

    #[test]
    fn permanent_and_invalid_are_never_retried() {
        let c = RetryConfig::default();
        for class in [
            FailureClass::Permanent,
            FailureClass::Invalid,
            FailureClass::NoPlugin,
        ] {
            assert_eq!(c.decide("p", &failed(class, None), 1), Verdict::Dead);
        }
    }

    #[test]
    fn backoff_is_jittered_under_an_exponential_cap_and_honours_retry_after() {
        let c = RetryConfig::default();
        for attempt in 1..5 {
            for _ in 0..100 {
                let Verdict::Retry { after } =
                    c.decide("p", &failed(FailureClass::Retryable, None), attempt)
                else {
                    panic!("attempt {attempt} should be retried")
                };
                assert!(
                    after <= Duration::from_secs(1 << (attempt - 1)),
                    "{after:?}"
                );
            }
        }
        let Verdict::Retry { after } =
            c.decide("p", &failed(FailureClass::RateLimited, Some(7000)), 1)
        else {
            panic!()
        };
        assert!(after >= Duration::from_secs(7));
        assert_eq!(
            c.decide("p", &failed(FailureClass::Retryable, None), 5),
            Verdict::Dead,
            "out of attempts"
        );
    }

    #[test]
    fn platforms_can_have_their_own_policy() {
        let c: RetryConfig = toml::from_str(
            "max_attempts = 2\n[platforms.slack]\nmax_attempts = 9\nbase = \"5s\"\n",
        )
        .unwrap();
        assert_eq!(c.policy("discord").max_attempts, 2);
        assert_eq!(c.policy("slack").max_attempts, 9);
        assert_eq!(c.policy("slack").base, Duration::from_secs(5));
    }
}
