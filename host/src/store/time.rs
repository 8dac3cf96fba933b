//! The store's one notion of time: whole milliseconds since the Unix epoch.
//!
//! The journal keeps times as whole milliseconds, so memory compares at
//! that precision too. Compared in nanoseconds, a watermark at 10.7 ms and
//! a task due at 10.9 ms put the task *after* the watermark (so it was
//! parked), while on disk both are 10 ms and the window read back later,
//! `(10 ms, …]`, never found it: the task was stranded until a restart.
//! Every time the backlog compares is a [`DueTime`]; it never compares a
//! `SystemTime`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A time as the store keeps it: whole milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DueTime(i64);

impl DueTime {
    /// The first whole millisecond not before `t`: when a task asked to run
    /// no sooner than `t` is due, so rounding never makes it early.
    pub fn at_or_after(t: SystemTime) -> Self {
        let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        let ms = since.as_millis() + u128::from(!since.subsec_nanos().is_multiple_of(1_000_000));
        DueTime(i64::try_from(ms).unwrap_or(i64::MAX))
    }

    /// The whole millisecond `t` falls in: for limits such as the
    /// watermark, which only need to be compared consistently.
    pub fn floor(t: SystemTime) -> Self {
        let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        DueTime(i64::try_from(since.as_millis()).unwrap_or(i64::MAX))
    }

    /// For the journal's column.
    pub fn millis(self) -> i64 {
        self.0
    }

    pub fn to_system(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0 as u64)
    }
}

/// `t` as the store keeps it: the time a task is due, never earlier than
/// asked and exactly what the journal will hold.
pub fn stored(t: SystemTime) -> SystemTime {
    DueTime::at_or_after(t).to_system()
}

/// An instant that has happened (a submit, an idempotency key's claim) as
/// the journal records it: the whole millisecond it falls in. Kept so in
/// memory too, so a key's window ends at the same moment before and
/// after a restart.
pub fn recorded(t: SystemTime) -> SystemTime {
    DueTime::floor(t).to_system()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_times_round_up_and_limits_down() {
        let t = UNIX_EPOCH + Duration::from_nanos(10_900_000);
        assert_eq!(DueTime::at_or_after(t).millis(), 11);
        assert_eq!(DueTime::floor(t).millis(), 10);
        let whole = UNIX_EPOCH + Duration::from_millis(10);
        assert_eq!(DueTime::at_or_after(whole).millis(), 10);
        assert_eq!(stored(t), UNIX_EPOCH + Duration::from_millis(11));
        assert_eq!(
            DueTime::at_or_after(UNIX_EPOCH - Duration::from_secs(1)).millis(),
            0
        );
    }
}
