//! Values from the wire, decoded once into types that bound them.
//!
//! Each type here checks its value when a request is decoded, so nothing
//! behind the protocol ever sees a delay of 10^19 seconds, a time in the year
//! 20 000 or a pool of 10^12 workers, and every value it stores can be
//! rendered back. The bounds are documented in docs/security.md.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer};

use crate::pool::WorkerCount;

/// How far ahead a task may be scheduled (`delay`, `deliver_at`).
pub const MAX_SCHEDULE_AHEAD: Duration = Duration::from_secs(366 * 24 * 3600);
/// The most tasks one `tasks` answer lists.
pub const MAX_LIST_LIMIT: usize = 10_000;

/// `delay`: not before this long from now, at most [`MAX_SCHEDULE_AHEAD`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delay(Duration);

impl Delay {
    pub fn get(self) -> Duration {
        self.0
    }
}

impl std::str::FromStr for Delay {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let d = humantime::parse_duration(s)
            .map_err(|e| format!("`delay` {s:?} is not a duration like \"90s\" or \"2h\": {e}"))?;
        if d > MAX_SCHEDULE_AHEAD {
            return Err(format!(
                "`delay` {s:?} is more than {} ahead; tasks can be scheduled at most that far",
                humantime::format_duration(MAX_SCHEDULE_AHEAD)
            ));
        }
        Ok(Delay(d))
    }
}

/// `deliver_at`: an RFC 3339 time after 1970 and at most
/// [`MAX_SCHEDULE_AHEAD`] from the moment it is decoded. A time in the past
/// means "now".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliverAt(SystemTime);

impl DeliverAt {
    pub fn get(self) -> SystemTime {
        self.0
    }
}

impl std::str::FromStr for DeliverAt {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let at = humantime::parse_rfc3339_weak(s).map_err(|e| {
            format!("`deliver_at` {s:?} is not an RFC 3339 time like 2026-12-01T09:00:00Z: {e}")
        })?;
        if at < UNIX_EPOCH {
            return Err(format!("`deliver_at` {s:?} is before 1970"));
        }
        if at > SystemTime::now() + MAX_SCHEDULE_AHEAD {
            return Err(format!(
                "`deliver_at` {s:?} is more than {} ahead; tasks can be scheduled at most that far",
                humantime::format_duration(MAX_SCHEDULE_AHEAD)
            ));
        }
        Ok(DeliverAt(at))
    }
}

/// `limit` of `tasks`: 1 to [`MAX_LIST_LIMIT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListLimit(usize);

impl ListLimit {
    pub const DEFAULT: ListLimit = ListLimit(50);

    pub fn get(self) -> usize {
        self.0
    }
}

impl TryFrom<u64> for ListLimit {
    type Error = String;
    fn try_from(n: u64) -> Result<Self, String> {
        if (1..=MAX_LIST_LIMIT as u64).contains(&n) {
            Ok(ListLimit(n as usize))
        } else {
            Err(format!("`limit` {n} is out of range 1..={MAX_LIST_LIMIT}"))
        }
    }
}

/// Deserializes through `FromStr`, so the type's own message is the error.
macro_rules! from_str_de {
    ($($t:ty),*) => {$(
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}
from_str_de!(Delay, DeliverAt);

/// Deserializes a whole number through `TryFrom<u64>`.
macro_rules! from_u64_de {
    ($($t:ty),*) => {$(
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                u64::deserialize(d)?.try_into().map_err(serde::de::Error::custom)
            }
        }
    )*};
}
from_u64_de!(ListLimit, WorkerCount);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::format_time;
    use proptest::prelude::*;

    #[test]
    fn bounds_delays_and_times() {
        assert!("18446744073709551615s".parse::<Delay>().is_err());
        assert!("600000000000s".parse::<Delay>().is_err());
        assert_eq!(
            "90s".parse::<Delay>().unwrap().get(),
            Duration::from_secs(90)
        );
        assert!("+20000-01-01T00:00:00Z".parse::<DeliverAt>().is_err());
        assert!("2200-01-01T00:00:00Z".parse::<DeliverAt>().is_err());
        assert!("2020-01-01T00:00:00Z".parse::<DeliverAt>().is_ok());
        assert!(ListLimit::try_from(0).is_err());
    }

    proptest! {
        #[test]
        fn any_delay_is_refused_or_bounded(s in "\\PC{0,30}", n in any::<u64>(), unit in "(s|ms|m|h|d|y|ns)") {
            for text in [s, format!("{n}{unit}")] {
                if let Ok(d) = text.parse::<Delay>() {
                    prop_assert!(d.get() <= MAX_SCHEDULE_AHEAD);
                }
                if let Ok(at) = text.parse::<DeliverAt>() {
                    prop_assert!(at.get() <= SystemTime::now() + MAX_SCHEDULE_AHEAD);
                    let _ = format_time(at.get());
                }
            }
        }

        #[test]
        fn any_time_renders(secs in any::<u64>(), nanos in 0u32..1_000_000_000) {
            if let Some(t) = UNIX_EPOCH.checked_add(Duration::new(secs, nanos)) {
                prop_assert!(format_time(t).ends_with('Z'));
            }
        }
    }
}
