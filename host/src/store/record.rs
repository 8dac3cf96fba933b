//! A task's record: the task, its state, and every attempt with its
//! outcome — what `task` shows and what the journal stores. Attempt numbers
//! only go up over a task's life, across restarts and revivals.

use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::plugin::PluginRef;
use crate::task::{Outcome, Task, TaskState};

/// One delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub number: u32,
    pub started_at: SystemTime,
    pub ended_at: Option<SystemTime>,
    pub outcome: Option<Outcome>,
    pub plugin: Option<PluginRef>,
}

/// A task and its history.
#[derive(Debug, Clone)]
pub struct TaskRecord {
    pub task: Arc<Task>,
    pub state: TaskState,
    pub submitted_at: SystemTime,
    /// Not to be run before this (scheduled, or waiting for a retry).
    pub not_before: Option<SystemTime>,
    pub started_at: Option<SystemTime>,
    pub finished_at: Option<SystemTime>,
    /// The last attempt's outcome.
    pub outcome: Option<Outcome>,
    /// The plugin version that handled the last attempt.
    pub plugin: Option<PluginRef>,
    /// Attempts started, over the task's whole life: numbers only go up.
    pub attempts: u32,
    /// `attempts` when `retry` last brought the task back from the dead: the
    /// retry policy counts the attempts since then.
    pub revived_at: u32,
    /// Attempts in order (may be empty for records read in bulk).
    pub history: Vec<Attempt>,
    /// Whether `history` holds every attempt. A task loaded back at start
    /// carries only the attempts of this run; `get` adds the earlier ones
    /// from the journal.
    pub(super) history_complete: bool,
}

impl TaskRecord {
    pub fn new(task: Arc<Task>, submitted_at: SystemTime, not_before: Option<SystemTime>) -> Self {
        TaskRecord {
            task,
            state: TaskState::Queued,
            submitted_at,
            not_before,
            started_at: None,
            finished_at: None,
            outcome: None,
            plugin: None,
            attempts: 0,
            revived_at: 0,
            history: Vec::new(),
            history_complete: true,
        }
    }
}

impl TaskRecord {
    /// Counts and records a new attempt starting `at`; returns its number.
    pub(super) fn begin_attempt(&mut self, at: SystemTime) -> u32 {
        self.attempts += 1;
        self.history.push(Attempt {
            number: self.attempts,
            started_at: at,
            ended_at: None,
            outcome: None,
            plugin: None,
        });
        self.attempts
    }
}

/// Where a task's attempts stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptCount {
    /// The number of the attempt (over the task's life, from 1).
    pub number: u32,
    /// Its number since the task was last revived by `retry` (from 1): what
    /// the retry policy counts.
    pub in_round: u32,
}
