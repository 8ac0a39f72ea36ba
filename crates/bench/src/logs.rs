//! Timestamps from the daemons' logs (tracing's text format: an RFC 3339
//! UTC timestamp, the level, the target, the message), to tell where the
//! time of a failover goes.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flotilla_testkit::strip_ansi;

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// days_from_civil).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|+00:00)`; only UTC.
pub fn parse_utc(ts: &str) -> Option<SystemTime> {
    let (date, time) = ts.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, mo, da) = (d.next()??, d.next()??, d.next()??);
    let time = time
        .strip_suffix('Z')
        .or_else(|| time.strip_suffix("+00:00"))?;
    let (hms, frac) = match time.split_once('.') {
        Some((hms, frac)) => (hms, frac),
        None => (time, ""),
    };
    let mut t = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (h, mi, s) = (t.next()??, t.next()??, t.next()??);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&da) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let secs = days_from_civil(y, mo, da) * 86_400 + h * 3600 + mi * 60 + s;
    let nanos = if frac.is_empty() {
        0
    } else {
        let digits: String = frac.chars().take(9).collect();
        if !digits.chars().all(|c| c.is_ascii_digit()) {
            return None;
        }
        digits.parse::<u32>().ok()? * 10u32.pow(9 - u32::try_from(digits.len()).ok()?)
    };
    let secs = u64::try_from(secs).ok()?;
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

/// The first line of the log at `path` that contains `needle` and is
/// stamped at or after `after`: (its time, the line).
pub fn first_after(path: &Path, needle: &str, after: SystemTime) -> Option<(SystemTime, String)> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|raw| {
        if !raw.contains(needle) {
            return None;
        }
        let line = strip_ansi(raw);
        let at = parse_utc(line.split_whitespace().next()?)?;
        (at >= after).then(|| (at, line.trim().to_string()))
    })
}

/// `at - since`, or None if `at` is earlier.
pub fn since(at: SystemTime, since: SystemTime) -> Option<Duration> {
    at.duration_since(since).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tracing_timestamps() {
        let t = parse_utc("2026-11-23T15:12:40.123456Z").expect("parses");
        let d = t.duration_since(UNIX_EPOCH).expect("after epoch");
        // date -u -d 2026-11-23T15:12:40Z +%s
        assert_eq!(d.as_secs(), 1_795_446_760);
        assert_eq!(d.subsec_micros(), 123_456);
        let z = parse_utc("1970-01-01T00:00:00Z").expect("epoch");
        assert_eq!(z, UNIX_EPOCH);
        assert!(parse_utc("2026-11-23 15:12:40Z").is_none());
        assert!(parse_utc("2026-13-23T15:12:40Z").is_none());
        assert!(parse_utc("2026-11-23T15:12:40+01:00").is_none());
    }

    #[test]
    fn strips_colours() {
        assert_eq!(
            strip_ansi("\u{1b}[2m2026-11-23T15:12:40Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m x"),
            "2026-11-23T15:12:40Z  INFO x"
        );
    }
}
