//! Tasks and their outcomes: the vocabulary every other module speaks.
//!
//! A [`Task`] is decoded once from the wire (see `protocol`) and is immutable
//! afterwards; what happens to it is recorded as a [`TaskState`] and, when it
//! is finished, an [`Outcome`].

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A task's id: a UUIDv7, so ids sort by submission time and never collide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskId(Uuid);

impl TaskId {
    pub fn new() -> Self {
        TaskId(Uuid::now_v7())
    }

    /// When the id was made (to the millisecond; UUIDv7 holds it), or
    /// `None` for an id that is not a UUIDv7.
    pub fn created_at(&self) -> Option<std::time::SystemTime> {
        let (secs, nanos) = self.0.get_timestamp()?.to_unix();
        Some(std::time::UNIX_EPOCH + std::time::Duration::new(secs, nanos))
    }
}

impl Default for TaskId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for TaskId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(TaskId)
    }
}

/// A platform's name: a short lower-case token (`[a-z0-9][a-z0-9_-]{0,31}`),
/// so it is safe in logs, metric labels, file names and broker subjects.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct PlatformName(String);

impl PlatformName {
    pub const MAX_LEN: usize = 32;

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for PlatformName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let valid = (1..=Self::MAX_LEN).contains(&s.len())
            && s.bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if valid {
            Ok(PlatformName(s.to_string()))
        } else {
            let shown: String = s.chars().take(40).collect();
            Err(format!(
                "`{}` is not a platform name (1 to {} of a-z, 0-9, `-` and `_`, starting with a letter or digit)",
                shown.escape_debug(),
                Self::MAX_LEN
            ))
        }
    }
}

impl<'de> Deserialize<'de> for PlatformName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for PlatformName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::ops::Deref for PlatformName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for PlatformName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for PlatformName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<String> for PlatformName {
    fn eq(&self, other: &String) -> bool {
        &self.0 == other
    }
}

impl From<PlatformName> for String {
    fn from(p: PlatformName) -> String {
        p.0
    }
}

/// How the body is to be read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Text,
    Markdown,
    Html,
}

/// How urgent a task is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Low,
    #[default]
    Normal,
    High,
}

/// One notification to deliver through the plugin for `platform`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub id: TaskId,
    pub platform: String,
    /// Where to deliver. Often a URL with a credential in it: print it only
    /// through [`crate::redact::target`].
    pub target: String,
    /// The configured destination the task was submitted to. `target` is
    /// then the destination's name; the real target and its secrets are
    /// looked up for each attempt (see `destination`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    pub title: Option<String>,
    pub body: String,
    pub format: Format,
    pub priority: Priority,
    pub metadata: BTreeMap<String, String>,
}

impl Task {
    /// A plain-text task with a new id, normal priority and nothing else:
    /// what benchmarks and embedders that build tasks in code start from.
    pub fn text(platform: &str, target: &str, body: &str) -> Self {
        Task {
            id: TaskId::new(),
            platform: platform.into(),
            target: target.into(),
            destination: None,
            title: None,
            body: body.into(),
            format: Format::Text,
            priority: Priority::Normal,
            metadata: BTreeMap::new(),
        }
    }
}

/// Where a task is in its life: queued → running → succeeded, or
/// → retrying → running → … → dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Waiting for a worker (or for its `deliver_at`).
    Queued,
    Running,
    Succeeded,
    /// Failed in a way worth retrying; waiting for its next attempt.
    Retrying,
    /// Failed for good: a permanent or invalid error, or out of attempts.
    Dead,
}

impl TaskState {
    pub const ALL: [TaskState; 5] = [
        TaskState::Queued,
        TaskState::Running,
        TaskState::Succeeded,
        TaskState::Retrying,
        TaskState::Dead,
    ];

    pub fn is_finished(self) -> bool {
        matches!(self, TaskState::Succeeded | TaskState::Dead)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Running => "running",
            TaskState::Succeeded => "succeeded",
            TaskState::Retrying => "retrying",
            TaskState::Dead => "dead",
        }
    }
}

impl FromStr for TaskState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown state `{s}`; expected queued, running, succeeded, retrying or dead"
                )
            })
    }
}

/// Why a delivery attempt failed. The first four come from the plugin; the
/// others are the host's verdict on a plugin that misbehaved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    /// Transient; worth retrying.
    Retryable,
    /// The platform asked us to slow down.
    RateLimited,
    /// The destination will never accept it.
    Permanent,
    /// The message or configuration is wrong.
    Invalid,
    /// The plugin trapped or hit a resource limit; its instance is discarded.
    Crashed,
    /// The plugin ran past its deadline; its instance is discarded.
    TimedOut,
    /// No loaded plugin serves the task's platform.
    NoPlugin,
}

impl FailureClass {
    /// The class as on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::Retryable => "retryable",
            FailureClass::RateLimited => "rate_limited",
            FailureClass::Permanent => "permanent",
            FailureClass::Invalid => "invalid",
            FailureClass::Crashed => "crashed",
            FailureClass::TimedOut => "timed_out",
            FailureClass::NoPlugin => "no_plugin",
        }
    }
}

/// The longest pause a platform (or plugin) can impose on one attempt or
/// destination: a `Retry-After` beyond it is taken as this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Clamps a wait that came from outside (a `Retry-After`, a plugin's
/// `retry_after_ms`) to [`MAX_RETRY_AFTER`].
pub fn clamp_retry_after(ms: u64) -> Duration {
    Duration::from_millis(ms).min(MAX_RETRY_AFTER)
}

/// The result of one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    Delivered {
        provider_id: Option<String>,
        status: String,
    },
    Failed {
        class: FailureClass,
        message: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
}

impl Outcome {
    pub fn failed(class: FailureClass, message: impl Into<String>) -> Self {
        Outcome::Failed {
            class,
            message: message.into(),
            retry_after_ms: None,
        }
    }

    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Delivered { .. })
    }
}

/// What to do with a task after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Succeeded,
    Retry { after: Duration },
    Dead,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_from_outside_are_clamped() {
        assert_eq!(clamp_retry_after(u64::MAX), MAX_RETRY_AFTER);
        assert_eq!(clamp_retry_after(1500), Duration::from_millis(1500));
    }

    #[test]
    fn an_id_knows_when_it_was_made() {
        let before = std::time::SystemTime::now() - Duration::from_millis(1);
        let made = TaskId::new().created_at().unwrap();
        assert!(
            made >= before && made <= std::time::SystemTime::now(),
            "{made:?}"
        );
        assert_eq!(TaskId(Uuid::nil()).created_at(), None);
    }
}
