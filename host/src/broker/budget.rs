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
//! The value is the send times (ms) inside the longest window of the rules,
//! and until when the platform asked every host to pause. A send is taken
//! from the log ([`Budgets::take`]) by the worker about to run the plugin —
//! the moment the request leaves, not the moment the task was pulled: a
//! task may wait in a host's queue for longer than any margin, and a send
//! counted at the wrong time lets the platform see too many in its window.
//! A host may send when no pause holds and, for every rule, fewer than
//! `requests` sends fall inside its window, widened by [`MARGIN`] (the
//! request reaches the platform a moment after the take, and hosts' clocks
//! differ a little). When the platform answers "slow down", the host that
//! saw it records the pause here ([`Budgets::pause`]) before it records the
//! outcome, so every host holds off.
//!
//! A pulled task first *looks* at the budget ([`Budgets::wait`]): when it is
//! spent, the task goes back to wait in the broker, holding nothing, and
//! any host may take it then. Windows are at most [`MAX_RULE_WINDOW`] long
//! (rules are refused at start otherwise), and the bucket keeps an idle
//! destination's log a little longer than that, so no window outlives what
//! it counts.

use std::time::{Duration, SystemTime};

use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};

use super::{BrokerError, bucket, bucket_key, millis};
use crate::destination::{MAX_RULE_WINDOW, RateRule};
use crate::pool::shared_pace::SharedPace;

/// Added to every window: see the module docs.
pub const MARGIN: Duration = Duration::from_millis(250);

/// Compare-and-set attempts before backing off.
const TRIES: usize = 16;

/// How long the bucket keeps the log of a destination nothing was sent to:
/// longer than any window and its margin.
const LOG_KEPT: Duration = MAX_RULE_WINDOW.saturating_add(Duration::from_secs(3600));

pub struct Budgets {
    logs: kv::Store,
}

/// One destination's shared state, as stored.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Log {
    /// Send times (ms since the epoch), oldest first.
    pub sends: Vec<u64>,
    /// No host sends before this (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_until: Option<u64>,
}

/// What earlier versions stored (a bare list of send times) is read too.
#[derive(Deserialize)]
#[serde(untagged)]
enum Stored {
    Log(Log),
    Sends(Vec<u64>),
}

impl Log {
    fn decode(bytes: &[u8]) -> Log {
        match serde_json::from_slice(bytes) {
            Ok(Stored::Log(log)) => log,
            Ok(Stored::Sends(sends)) => Log {
                sends,
                paused_until: None,
            },
            // Unreadable: start afresh rather than stop every send.
            Err(_) => Log::default(),
        }
    }

    /// How long until one more send fits every rule and no pause holds.
    pub fn wait(&self, rules: &[RateRule], now: u64) -> Option<Duration> {
        let paused = self
            .paused_until
            .map_or(0, |until| until.saturating_sub(now));
        let mut wait = paused;
        for rule in rules {
            let window = widened(rule);
            let inside: Vec<u64> = self
                .sends
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

    /// Drops what no rule can count any more, and a pause that is over.
    fn trim(&mut self, rules: &[RateRule], now: u64) {
        let longest = rules.iter().map(widened).max().unwrap_or(0);
        let most = rules.iter().map(|r| r.requests as usize).max().unwrap_or(0);
        self.sends.retain(|t| *t + longest > now);
        self.sends.sort_unstable();
        let excess = self.sends.len().saturating_sub(most);
        self.sends.drain(..excess);
        self.paused_until = self.paused_until.filter(|until| *until > now);
    }
}

fn widened(rule: &RateRule) -> u64 {
    (rule.window + MARGIN).as_millis() as u64
}

impl Budgets {
    pub(super) async fn open(
        js: &async_nats::jetstream::Context,
        stream: &str,
        replicas: usize,
    ) -> Result<Budgets, BrokerError> {
        Ok(Budgets {
            logs: bucket(js, &format!("{stream}_budgets"), LOG_KEPT, replicas).await?,
        })
    }

    /// How long `destination` must wait under `rules`, without taking
    /// anything: `None` if a send fits now.
    pub async fn wait(
        &self,
        destination: &str,
        rules: &[RateRule],
    ) -> Result<Option<Duration>, BrokerError> {
        let entry = self
            .logs
            .entry(bucket_key(destination))
            .await
            .map_err(failed)?;
        let log = match entry {
            Some(e) if e.operation == kv::Operation::Put => Log::decode(&e.value),
            _ => Log::default(),
        };
        Ok(log.wait(rules, millis(SystemTime::now())))
    }

    /// Takes one send from the budget of `destination` under `rules`:
    /// `None` if taken, else how long to wait before asking again.
    pub async fn take(
        &self,
        destination: &str,
        rules: &[RateRule],
    ) -> Result<Option<Duration>, BrokerError> {
        self.change(destination, |log, now| match log.wait(rules, now) {
            Some(wait) => Err(Some(wait)),
            None => {
                log.trim(rules, now);
                log.sends.push(now);
                Ok(None)
            }
        })
        .await
        .map(|wait| wait.unwrap_or(Some(Duration::from_millis(50))))
    }

    /// Pauses `destination` on every host until `retry_after` from now (a
    /// longer pause already recorded stands).
    pub async fn pause(&self, destination: &str, retry_after: Duration) -> Result<(), BrokerError> {
        self.change(destination, |log, now| {
            let until = now.saturating_add(retry_after.as_millis() as u64);
            if log.paused_until.is_some_and(|p| p >= until) {
                return Err(());
            }
            log.paused_until = Some(until);
            Ok(())
        })
        .await
        .map(|_| ())
    }

    /// Applies `step` to `destination`'s log and writes the result with
    /// compare-and-set, reading again when another host wrote meanwhile.
    /// `step` answers `Err` to leave the log as it is. `None` when every
    /// try lost to another host's write.
    async fn change<T>(
        &self,
        destination: &str,
        mut step: impl FnMut(&mut Log, u64) -> Result<T, T>,
    ) -> Result<Option<T>, BrokerError> {
        let key = bucket_key(destination);
        for _ in 0..TRIES {
            let entry = self.logs.entry(&key).await.map_err(failed)?;
            let (mut log, revision) = match &entry {
                Some(e) if e.operation == kv::Operation::Put => {
                    (Log::decode(&e.value), Some(e.revision))
                }
                _ => (Log::default(), None),
            };
            let value = match step(&mut log, millis(SystemTime::now())) {
                Ok(value) => value,
                Err(unchanged) => return Ok(Some(unchanged)),
            };
            let bytes = serde_json::to_vec(&log).map_err(failed)?;
            let lost = match revision {
                Some(revision) => match self.logs.update(&key, bytes.into(), revision).await {
                    Ok(_) => false,
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => true,
                    Err(e) => return Err(failed(e)),
                },
                None => match self.logs.create(&key, bytes.into()).await {
                    Ok(_) => false,
                    Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => true,
                    Err(e) => return Err(failed(e)),
                },
            };
            if !lost {
                return Ok(Some(value));
            }
        }
        Ok(None)
    }
}

/// Workers take from the shared budget and record pauses through this.
#[async_trait::async_trait]
impl SharedPace for super::Broker {
    async fn take(&self, key: &str, rules: &[RateRule]) -> Result<Option<Duration>, String> {
        self.budgets
            .take(key, rules)
            .await
            .map_err(|e| e.to_string())
    }

    async fn pause(&self, key: &str, retry_after: Duration) -> Result<(), String> {
        self.budgets
            .pause(key, retry_after)
            .await
            .map_err(|e| e.to_string())
    }
}

fn failed(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Records(format!("rate budget: {e}"))
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

    fn log(sends: &[u64]) -> Log {
        Log {
            sends: sends.to_vec(),
            paused_until: None,
        }
    }

    #[test]
    fn a_full_window_waits_until_its_oldest_send_leaves() {
        let rules = [rule(2, 1000)];
        let w = widened(&rules[0]);
        assert_eq!(log(&[]).wait(&rules, 10_000), None);
        assert_eq!(log(&[9_000]).wait(&rules, 10_000), None);
        let wait = log(&[9_500, 9_900]).wait(&rules, 10_000).unwrap();
        assert_eq!(wait, Duration::from_millis(9_500 + w - 10_000));
        // Sends long gone do not count.
        assert_eq!(log(&[1_000, 2_000]).wait(&rules, 10_000), None);
    }

    #[test]
    fn the_strictest_rule_decides() {
        let rules = [rule(10, 60_000), rule(1, 1000)];
        assert!(log(&[9_900]).wait(&rules, 10_000).is_some());
        let many: Vec<u64> = (0..10).map(|i| 1_000 + i * 2_000).collect();
        let wait = log(&many).wait(&rules, 20_000).unwrap();
        assert_eq!(wait, Duration::from_millis(1_000 + 60_000 + 250 - 20_000));
    }

    #[test]
    fn a_pause_holds_even_with_budget_left() {
        let rules = [rule(100, 1000)];
        let paused = Log {
            sends: vec![],
            paused_until: Some(12_000),
        };
        assert_eq!(paused.wait(&rules, 10_000), Some(Duration::from_secs(2)));
        assert_eq!(paused.wait(&[], 10_000), Some(Duration::from_secs(2)));
        assert_eq!(paused.wait(&rules, 12_000), None);
    }

    #[test]
    fn trimming_keeps_what_the_rules_count_and_no_more() {
        let rules = [rule(2, 1000)];
        let mut kept = Log {
            sends: vec![9_900, 1_000, 9_800, 9_700],
            paused_until: Some(5_000),
        };
        kept.trim(&rules, 10_000);
        assert_eq!(kept, log(&[9_800, 9_900]));
    }

    #[test]
    fn logs_from_earlier_versions_are_read() {
        assert_eq!(Log::decode(b"[1,2]"), log(&[1, 2]));
        assert_eq!(Log::decode(b"not json"), Log::default());
        let current = serde_json::to_vec(&Log {
            sends: vec![3],
            paused_until: Some(9),
        })
        .unwrap();
        assert_eq!(Log::decode(&current).paused_until, Some(9));
    }
}
