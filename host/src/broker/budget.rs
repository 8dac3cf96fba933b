//! Rate limits that hold across hosts: one send log per destination in a
//! key-value bucket, updated with compare-and-set.
//!
//! Why a shared log rather than a destination owned by one host: ownership
//! needs leases, hand-over and a failure detector, and a destination whose
//! owner dies is stuck until the lease runs out; a log any host may append
//! to needs none of that, costs two broker round trips per rate-limited
//! send (read, conditional write) and is exact. Platform limits are a few
//! to a few dozen a minute, far below what that costs.
//!
//! The value is the send times (ms) inside the longest window of the rules.
//! A host may send when, for every rule, fewer than `requests` sends fall
//! inside its window, widened by [`MARGIN`]: the time is taken when the
//! task is pulled, a moment before the plugin's request leaves, and the
//! margin keeps that moment (and clock differences between hosts) from
//! letting one send too many into a window at the platform. When the budget
//! is spent, [`Budgets::take`] says how long to wait; the task goes back to
//! the broker for that long and any host may take it then.

use std::time::{Duration, SystemTime};

use async_nats::jetstream::kv;

use super::{BrokerError, bucket, bucket_key, millis};
use crate::destination::RateRule;

/// Added to every window: see the module docs.
pub const MARGIN: Duration = Duration::from_millis(250);

/// Compare-and-set attempts before backing off.
const TRIES: usize = 16;

pub struct Budgets {
    logs: kv::Store,
}

fn widened(rule: &RateRule) -> u64 {
    (rule.window + MARGIN).as_millis() as u64
}

/// How long until one more send fits every rule, given `sends` (sorted).
pub fn wait_for(sends: &[u64], rules: &[RateRule], now: u64) -> Option<Duration> {
    let mut wait = 0;
    for rule in rules {
        let window = widened(rule);
        let inside: Vec<u64> = sends
            .iter()
            .copied()
            .filter(|t| *t + window > now)
            .collect();
        let allowed = rule.requests.max(1) as usize;
        if inside.len() >= allowed {
            // The send that must leave the window first.
            let leaving = inside[inside.len() - allowed];
            wait = wait.max(leaving + window - now);
        }
    }
    (wait > 0).then(|| Duration::from_millis(wait))
}

impl Budgets {
    pub(super) async fn open(
        js: &async_nats::jetstream::Context,
        stream: &str,
        replicas: usize,
    ) -> Result<Budgets, BrokerError> {
        Ok(Budgets {
            // Logs of destinations idle for a day are forgotten.
            logs: bucket(
                js,
                &format!("{stream}_budgets"),
                Duration::from_secs(24 * 3600),
                replicas,
            )
            .await?,
        })
    }

    /// Takes one send from the budget of `destination` under `rules`:
    /// `None` if taken, else how long to wait before asking again.
    pub async fn take(
        &self,
        destination: &str,
        rules: &[RateRule],
    ) -> Result<Option<Duration>, BrokerError> {
        let key = bucket_key(destination);
        let longest = rules.iter().map(widened).max().unwrap_or(0);
        let failed = |e: String| BrokerError::Records(format!("rate budget: {e}"));
        for _ in 0..TRIES {
            let entry = self
                .logs
                .entry(&key)
                .await
                .map_err(|e| failed(e.to_string()))?;
            let (mut sends, revision) = match &entry {
                Some(e) if e.operation == kv::Operation::Put => (
                    serde_json::from_slice::<Vec<u64>>(&e.value).unwrap_or_default(),
                    Some(e.revision),
                ),
                _ => (Vec::new(), None),
            };
            let now = millis(SystemTime::now());
            sends.retain(|t| *t + longest > now);
            sends.sort_unstable();
            if let Some(wait) = wait_for(&sends, rules, now) {
                return Ok(Some(wait));
            }
            sends.push(now);
            let value = serde_json::to_vec(&sends).map_err(|e| failed(e.to_string()))?;
            let written = match revision {
                Some(revision) => self
                    .logs
                    .update(&key, value.into(), revision)
                    .await
                    .map(|_| ())
                    .map_err(|e| {
                        (
                            e.kind() == kv::UpdateErrorKind::WrongLastRevision,
                            e.to_string(),
                        )
                    }),
                None => self
                    .logs
                    .create(&key, value.into())
                    .await
                    .map(|_| ())
                    .map_err(|e| {
                        (
                            e.kind() == kv::CreateErrorKind::AlreadyExists,
                            e.to_string(),
                        )
                    }),
            };
            match written {
                Ok(()) => return Ok(None),
                // Another host sent meanwhile: read again.
                Err((true, _)) => continue,
                Err((false, e)) => return Err(failed(e)),
            }
        }
        Ok(Some(Duration::from_millis(50)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(requests: u32, ms: u64) -> RateRule {
        RateRule {
            requests,
            window: Duration::from_millis(ms),
        }
    }

    #[test]
    fn a_full_window_waits_until_its_oldest_send_leaves() {
        let rules = [rule(2, 1000)];
        let w = widened(&rules[0]);
        assert_eq!(wait_for(&[], &rules, 10_000), None);
        assert_eq!(wait_for(&[9_000], &rules, 10_000), None);
        let wait = wait_for(&[9_500, 9_900], &rules, 10_000).unwrap();
        assert_eq!(wait, Duration::from_millis(9_500 + w - 10_000));
        // Sends long gone do not count.
        assert_eq!(wait_for(&[1_000, 2_000], &rules, 10_000), None);
    }

    #[test]
    fn the_strictest_rule_decides() {
        let rules = [rule(10, 60_000), rule(1, 1000)];
        assert!(wait_for(&[9_900], &rules, 10_000).is_some());
        let many: Vec<u64> = (0..10).map(|i| 1_000 + i * 2_000).collect();
        let wait = wait_for(&many, &rules, 20_000).unwrap();
        assert_eq!(wait, Duration::from_millis(1_000 + 60_000 + 250 - 20_000));
    }
}
