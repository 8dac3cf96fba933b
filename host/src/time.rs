//! Times as the daemon shows them.
//!
//! One rendering for every answer, log line and view (RFC 3339 with
//! milliseconds, in UTC), at the bottom of the module graph so the pool,
//! the store and the protocol all use it without depending on each other.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A time as notifyhub shows it: RFC 3339 with milliseconds, in UTC.
/// Never fails: a time outside what RFC 3339 can show (before 1970 or after
/// 9999) is shown as the nearest one it can.
pub fn format_time(t: SystemTime) -> String {
    // 9999-12-31T23:59:59.999Z
    const LAST: Duration = Duration::from_millis(253_402_300_799_999);
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default().min(LAST);
    humantime::format_rfc3339_millis(UNIX_EPOCH + since).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_time_renders() {
        let far = UNIX_EPOCH + Duration::from_secs(u64::MAX / 4);
        assert_eq!(format_time(far), "9999-12-31T23:59:59.999Z");
        assert_eq!(format_time(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }
}
