//! Wall-clock helpers (the guest reads `wasi:clocks/wall-clock` through std).

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch.
pub fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch.
pub fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Formats Unix seconds as an RFC 3339 UTC timestamp, e.g. `2026-01-01T00:00:00Z`.
pub fn rfc3339(unix_seconds: u64) -> String {
    let days = (unix_seconds / 86_400) as i64;
    let secs = unix_seconds % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Unix seconds of an RFC 3339 / ISO 8601 UTC time such as
/// `2026-12-03T19:30:00.123Z` (fractions dropped; only `Z` or `+00:00`);
/// `None` for anything else, before 1970 included.
pub fn parse_rfc3339_utc(text: &str) -> Option<u64> {
    let text = text.trim();
    let (date, rest) = text.split_once(['T', 't'])?;
    let time = rest
        .strip_suffix(['Z', 'z'])
        .or_else(|| rest.strip_suffix("+00:00"))?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time
        .split('.')
        .next()?
        .splitn(3, ':')
        .map(|p| p.parse::<i64>().ok());
    let (h, min, s) = (t.next()??, t.next()??, t.next()??);
    let valid = (1..=12).contains(&m)
        && (1..=31).contains(&day)
        && (0..24).contains(&h)
        && (0..60).contains(&min)
        && (0..=60).contains(&s);
    if !valid {
        return None;
    }
    let secs = days_from_civil(y, m as u32, day as u32) * 86_400 + h * 3600 + min * 60 + s;
    u64::try_from(secs).ok()
}

/// Howard Hinnant's civil-to-days algorithm, the inverse of
/// [`civil_from_days`].
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian calendar).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_known_instants() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_614_265_330), "2021-02-25T15:02:10Z");
        assert_eq!(super::rfc3339(1_767_225_600), "2026-01-01T00:00:00Z");
    }

    #[test]
    fn parses_what_it_formats() {
        for t in [0, 1_614_265_330, 1_767_225_600, 4_102_444_800 + 86_399] {
            assert_eq!(super::parse_rfc3339_utc(&super::rfc3339(t)), Some(t));
        }
        assert_eq!(
            super::parse_rfc3339_utc("2021-02-25T15:02:10.123456Z"),
            Some(1_614_265_330)
        );
        assert_eq!(
            super::parse_rfc3339_utc("2021-02-25T15:02:10+00:00"),
            Some(1_614_265_330)
        );
        for bad in [
            "",
            "2021-02-25",
            "2021-13-01T00:00:00Z",
            "1969-12-31T23:59:59Z",
            "x",
        ] {
            assert_eq!(super::parse_rfc3339_utc(bad), None, "{bad}");
        }
    }
}
