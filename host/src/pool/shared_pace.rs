//! Rate limits shared with other hosts: the hook through which a worker,
//! just before it runs a plugin, takes one send from a destination's budget
//! kept outside this host, and tells the other hosts when a platform says
//! "slow down".
//!
//! The [`super::pacer`] decides whether a task may go *from this host*.
//! With a broker several hosts send to the same destination, so the budget
//! they share is taken at the last moment, in the worker: taking it when a
//! task is pulled or queued would count a send at a time it does not
//! happen, and a task can wait in the queue for longer than any margin.
//! A spent budget hands the task back to the dispatcher, which holds it in
//! its destination's backlog, paused for as long as the budget says, so it
//! holds no worker meanwhile.
//!
//! An implementation must answer within a round trip or two, or fail: a
//! worker waits on it. A failure is treated as "wait a moment", never as
//! "send anyway".

use std::time::Duration;

use crate::destination::RateRule;

/// A budget of sends per destination that other hosts draw on too.
#[async_trait::async_trait]
pub trait SharedPace: Send + Sync {
    /// Takes one send from `key`'s budget under `rules`: `None` if taken,
    /// else how long until asking again may find room.
    async fn take(&self, key: &str, rules: &[RateRule]) -> Result<Option<Duration>, String>;

    /// Holds off every host's sends to `key` for `retry_after`.
    async fn pause(&self, key: &str, retry_after: Duration) -> Result<(), String>;
}
