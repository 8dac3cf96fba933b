//! Per-destination pacing: at most N deliveries in any window, a pause when
//! the platform says "slow down", and a backlog for what has to wait.
//!
//! Platforms punish bursts hard (a DingTalk robot takes 20 messages a minute
//! and then blocks for 10 minutes), so the dispatcher asks the pacer before
//! it gives a task to a worker. A task over its destination's limit goes to
//! that destination's backlog: it stays queued (durably, in the store) but
//! holds no worker, and other destinations are not held up behind it. When
//! the window moves on, the dispatcher takes backlogged tasks first, oldest
//! first.
//!
//! The limiter is a sliding log, not a token bucket refilled at a steady
//! rate: a bucket of 5 refilled at 5/s lets a sixth request through 200 ms
//! after a burst of five, which is six in one second — exactly what the
//! platform's own sliding window refuses. The log remembers the last N
//! dispatch times per rule and admits a task when the N-th most recent is
//! older than the window. Windows are stretched by [`SLACK`] because a
//! request reaches the platform a little after we dispatch it, and jitter
//! between two requests must not squeeze N+1 of them into the platform's
//! window.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::destination::RateRule;
use crate::redact;
use crate::task::Task;

/// How much longer than the platform's window we wait, as a fraction.
const SLACK: f64 = 0.05;

/// The key a task is paced under: its destination's name, or for a raw
/// target the platform, the redacted target and a hash that tells apart
/// targets whose redacted forms are the same.
pub fn pace_key(task: &Task) -> String {
    if let Some(name) = &task.destination {
        return name.clone();
    }
    let mut hasher = DefaultHasher::new();
    task.target.hash(&mut hasher);
    format!(
        "{}:{}#{:08x}",
        task.platform,
        redact::target(&task.target),
        hasher.finish() as u32
    )
}

/// One destination's state.
#[derive(Debug)]
struct Bucket {
    rules: Vec<RateRule>,
    /// Dispatch times, oldest first; as many as the largest rule needs.
    sent: VecDeque<Instant>,
    paused_until: Option<Instant>,
    backlog: VecDeque<Arc<Task>>,
    last_used: Instant,
}

impl Bucket {
    fn new(now: Instant) -> Self {
        Bucket {
            rules: Vec::new(),
            sent: VecDeque::new(),
            paused_until: None,
            backlog: VecDeque::new(),
            last_used: now,
        }
    }

    /// The earliest instant another task may go.
    fn ready_at(&self, now: Instant) -> Instant {
        let mut at = self.paused_until.unwrap_or(now).max(now);
        for rule in &self.rules {
            let n = rule.requests as usize;
            if self.sent.len() >= n {
                let nth_latest = self.sent[self.sent.len() - n];
                at = at.max(nth_latest + stretched(rule.window));
            }
        }
        at
    }

    fn record(&mut self, now: Instant) {
        self.sent.push_back(now);
        let keep = self
            .rules
            .iter()
            .map(|r| r.requests as usize)
            .max()
            .unwrap_or(0);
        while self.sent.len() > keep {
            self.sent.pop_front();
        }
        self.last_used = now;
    }

    /// Deliveries left in the tightest rule's current window.
    fn budget(&self, now: Instant) -> Option<u32> {
        self.rules
            .iter()
            .map(|rule| {
                let start = now.checked_sub(stretched(rule.window));
                let used = self
                    .sent
                    .iter()
                    .filter(|t| start.is_none_or(|s| **t > s))
                    .count() as u32;
                rule.requests.saturating_sub(used)
            })
            .min()
    }

    fn is_quiet(&self, now: Instant) -> bool {
        let longest = self.rules.iter().map(|r| stretched(r.window)).max();
        self.backlog.is_empty()
            && self.paused_until.is_none_or(|p| p <= now)
            && longest.is_none_or(|w| now.duration_since(self.last_used) > w)
    }
}

fn stretched(window: Duration) -> Duration {
    window.mul_f64(1.0 + SLACK)
}

/// What `status` shows for one paced destination.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct PaceView {
    pub destination: String,
    pub rules: Vec<String>,
    /// Deliveries still allowed in the current window.
    pub budget: Option<u32>,
    /// Tasks waiting for the window to move on.
    pub backlog: usize,
    /// Set while the platform's "slow down" is in force.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub paused_for_ms: Option<u64>,
}

/// Every destination's pacing state. Owned by the dispatcher.
#[derive(Debug, Default)]
pub struct Pacer {
    buckets: HashMap<String, Bucket>,
}

impl Pacer {
    /// Whether a task for `key` may be dispatched now under `rules`; if so
    /// the dispatch is recorded. A destination with a backlog admits
    /// nothing new, so tasks keep their order.
    pub fn admit(&mut self, key: &str, rules: &[RateRule], now: Instant) -> bool {
        let Some(bucket) = self.buckets.get_mut(key) else {
            if rules.is_empty() {
                return true;
            }
            let mut bucket = Bucket::new(now);
            bucket.rules = rules.to_vec();
            bucket.record(now);
            self.buckets.insert(key.to_string(), bucket);
            return true;
        };
        if bucket.rules != rules {
            bucket.rules = rules.to_vec();
        }
        if !bucket.backlog.is_empty() || bucket.ready_at(now) > now {
            return false;
        }
        bucket.record(now);
        true
    }

    /// Parks a task that [`Pacer::admit`] refused.
    pub fn hold(&mut self, key: String, task: Arc<Task>, now: Instant) {
        self.buckets
            .entry(key)
            .or_insert_with(|| Bucket::new(now))
            .backlog
            .push_back(task);
    }

    /// A task admitted earlier that could not go after all (the budget
    /// shared with other hosts was spent): first in `key`'s backlog again,
    /// and nothing goes to `key` until `until`.
    pub fn hand_back(&mut self, key: String, task: Arc<Task>, until: Instant, now: Instant) {
        self.pause(key.clone(), until, now);
        self.buckets
            .get_mut(&key)
            .expect("pause made the bucket")
            .backlog
            .push_front(task);
    }

    /// The platform asked us to wait: nothing goes to `key` until `until`.
    pub fn pause(&mut self, key: String, until: Instant, now: Instant) {
        let bucket = self.buckets.entry(key).or_insert_with(|| Bucket::new(now));
        bucket.paused_until = Some(bucket.paused_until.map_or(until, |p| p.max(until)));
    }

    /// A backlogged task whose turn has come, recorded as dispatched now.
    pub fn pop_ready(&mut self, now: Instant) -> Option<Arc<Task>> {
        let bucket = self
            .buckets
            .values_mut()
            .filter(|b| !b.backlog.is_empty() && b.ready_at(now) <= now)
            .min_by_key(|b| b.backlog.front().map(|t| t.id))?;
        bucket.record(now);
        bucket.backlog.pop_front()
    }

    /// When the next backlogged task may go.
    pub fn next_wake(&self, now: Instant) -> Option<Instant> {
        self.buckets
            .values()
            .filter(|b| !b.backlog.is_empty())
            .map(|b| b.ready_at(now))
            .min()
    }

    /// No destination is limited, paused or backlogged.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    pub fn backlog_len(&self) -> usize {
        self.buckets.values().map(|b| b.backlog.len()).sum()
    }

    /// Forgets destinations with nothing going on.
    pub fn forget_quiet(&mut self, now: Instant) {
        self.buckets.retain(|_, b| !b.is_quiet(now));
    }

    pub fn views(&self, now: Instant) -> Vec<PaceView> {
        let mut views: Vec<PaceView> = self
            .buckets
            .iter()
            .map(|(key, b)| PaceView {
                destination: key.clone(),
                rules: b.rules.iter().map(RateRule::to_string).collect(),
                budget: b.budget(now),
                backlog: b.backlog.len(),
                paused_for_ms: b
                    .paused_until
                    .filter(|p| *p > now)
                    .map(|p| (p - now).as_millis() as u64),
            })
            .collect();
        views.sort_by(|a, b| a.destination.cmp(&b.destination));
        views
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::TaskId;

    fn rule(requests: u32, ms: u64) -> RateRule {
        RateRule {
            requests,
            window: Duration::from_millis(ms),
        }
    }

    fn task() -> Arc<Task> {
        Arc::new(Task {
            id: TaskId::new(),
            platform: "p".into(),
            target: "t".into(),
            destination: Some("d".into()),
            title: None,
            body: String::new(),
            format: Default::default(),
            priority: Default::default(),
            metadata: Default::default(),
        })
    }

    #[test]
    fn no_window_sees_more_than_n() {
        let rules = [rule(5, 1000)];
        let start = Instant::now();
        let mut pacer = Pacer::default();
        let mut sent = Vec::new();
        // Try every 10 ms for 5 s: admissions must never put 6 in a window.
        for step in 0..500 {
            let now = start + Duration::from_millis(step * 10);
            if pacer.admit("d", &rules, now) {
                sent.push(now);
            }
        }
        assert!(sent.len() >= 20, "{} sent", sent.len());
        for (i, t) in sent.iter().enumerate() {
            let in_window = sent[i..]
                .iter()
                .filter(|u| **u - *t < Duration::from_secs(1))
                .count();
            assert!(in_window <= 5, "{in_window} within 1 s of {:?}", *t - start);
        }
    }

    #[test]
    fn tightest_of_several_rules_wins() {
        let rules = [rule(5, 1000), rule(6, 60_000)];
        let now = Instant::now();
        let mut pacer = Pacer::default();
        let admitted = (0..20)
            .filter(|i| pacer.admit("d", &rules, now + Duration::from_secs(*i * 2)))
            .count();
        assert_eq!(admitted, 6);
    }

    #[test]
    fn backlog_keeps_order_and_pause_holds_it() {
        let rules = [rule(1, 100)];
        let t0 = Instant::now();
        let mut pacer = Pacer::default();
        assert!(pacer.admit("d", &rules, t0));
        assert!(!pacer.admit("d", &rules, t0));
        let (a, b) = (task(), task());
        pacer.hold("d".into(), a.clone(), t0);
        pacer.hold("d".into(), b.clone(), t0);
        assert!(pacer.pop_ready(t0).is_none());
        let wake = pacer.next_wake(t0).unwrap();
        assert!(wake >= t0 + Duration::from_millis(100));
        assert_eq!(pacer.pop_ready(wake).unwrap().id, a.id);
        // A new task must queue behind `b`, even with budget to spare.
        let later = wake + Duration::from_secs(1);
        assert!(!pacer.admit("d", &rules, later));
        pacer.pause("d".into(), later + Duration::from_secs(5), later);
        assert!(pacer.pop_ready(later).is_none());
        assert_eq!(pacer.views(later)[0].paused_for_ms, Some(5000));
        assert_eq!(
            pacer.pop_ready(later + Duration::from_secs(5)).unwrap().id,
            b.id
        );
    }

    #[test]
    fn unlimited_destinations_leave_no_state() {
        let mut pacer = Pacer::default();
        assert!(pacer.admit("free", &[], Instant::now()));
        assert!(pacer.views(Instant::now()).is_empty());
    }

    #[test]
    fn raw_targets_are_keyed_apart_but_print_redacted() {
        let mut a = (*task()).clone();
        a.destination = None;
        a.target = "https://hooks.example.com/secret-one".into();
        let mut b = a.clone();
        b.target = "https://hooks.example.com/secret-two".into();
        assert_ne!(pace_key(&a), pace_key(&b));
        assert!(!pace_key(&a).contains("secret"));
    }
}
