//! The backlog on disk: which unfinished tasks memory holds, and which are
//! parked (written to the journal only) until they come within reach.
//!
//! **Invariant.** Every unfinished task due at or before the watermark is
//! in memory. A task due after it may be parked; the watermark only moves
//! forward, one window `(after, until]` at a time, and each window is read
//! back from the journal exactly once (again only if that read failed), so
//! a parked task lies in exactly one window and is loaded exactly once.
//!
//! What this module must never do: compare a time it has not turned into
//! a [`DueTime`] (the journal keeps milliseconds; see `time`), or move the
//! watermark back past a window that was read.
//!
//! The gate that makes the invariant hold across threads lives with the
//! store: a submit decides to park under the watermark it reads and holds
//! a shared gate until its rows are committed; `unpark` advances the
//! watermark first and then waits once for the gate alone, so everything
//! parked under the old watermark is in the journal when the window is read.

use super::time::DueTime;

/// The part of the journal read back in one step: due in `(after, until]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub after: DueTime,
    pub until: DueTime,
}

/// Where memory ends and the parked backlog begins.
#[derive(Debug)]
pub struct Backlog {
    watermark: DueTime,
}

impl Backlog {
    pub fn new(watermark: DueTime) -> Self {
        Backlog { watermark }
    }

    /// Whether a new task due at `due` is parked rather than held.
    pub fn parks(&self, due: Option<DueTime>) -> bool {
        due.is_some_and(|due| due > self.watermark)
    }

    /// Moves the watermark forward to `to`; the window now to be read
    /// back, or `None` when `to` is not past the watermark.
    pub fn advance(&mut self, to: DueTime) -> Option<Window> {
        (to > self.watermark).then(|| {
            let after = std::mem::replace(&mut self.watermark, to);
            Window { after, until: to }
        })
    }

    /// The read of `window` failed: take it again next time (unless a
    /// restart's recovery has covered it meanwhile).
    pub fn retreat(&mut self, window: Window) {
        self.watermark = self.watermark.min(window.after);
    }

    /// Recovery at start read every unfinished task due by `until`.
    pub fn recovered(&mut self, until: DueTime) {
        self.watermark = self.watermark.max(until);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> DueTime {
        DueTime::floor(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
    }

    #[test]
    fn windows_follow_each_other_without_gaps_or_overlaps() {
        let mut backlog = Backlog::new(at(100));
        assert!(!backlog.parks(None));
        assert!(!backlog.parks(Some(at(100))));
        assert!(backlog.parks(Some(at(101))));
        let first = backlog.advance(at(150)).unwrap();
        assert_eq!(
            first,
            Window {
                after: at(100),
                until: at(150)
            }
        );
        assert_eq!(backlog.advance(at(150)), None);
        assert_eq!(backlog.advance(at(120)), None);
        let second = backlog.advance(at(200)).unwrap();
        assert_eq!(second.after, first.until);
        backlog.retreat(second);
        assert_eq!(backlog.advance(at(210)).unwrap().after, at(150));
        backlog.recovered(at(300));
        assert!(!backlog.parks(Some(at(300))));
    }
}
