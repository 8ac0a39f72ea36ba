//! `service logs` on the CLI side: reading `--since`, and how the daemon's
//! log events are printed (lines to stdout, warnings to stderr).

use anyhow::{bail, Result};
use flotilla_api::model::LogEntry;

/// How lines are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    /// Start each line with its time (RFC 3339, milliseconds, UTC).
    pub timestamps: bool,
    /// No `service.slot.task@node | ` prefix.
    pub raw: bool,
    /// The prefix names the task's ID.
    pub task_ids: bool,
}

/// One output line (without its newline).
pub fn render(entry: &LogEntry, style: Style) -> String {
    let mut out = String::new();
    if style.timestamps {
        out.push_str(&format_rfc3339(entry.ts_ms));
        out.push(' ');
    }
    if !style.raw {
        out.push_str(&entry.task.name(style.task_ids));
        out.push('@');
        out.push_str(&entry.task.node);
        out.push_str(" | ");
    }
    out.push_str(&entry.text);
    out
}

/// `--since`: a duration back from `now_ms` (`10m`, `1h30m`), a Unix
/// timestamp in seconds (`1700000000`, `1700000000.5`) or an RFC 3339 time
/// (`2024-05-01T10:00:00Z`, `2024-05-01T12:00:00.250+02:00`). Answers Unix
/// milliseconds.
pub fn parse_since(input: &str, now_ms: u64) -> Result<u64> {
    let s = input.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let secs: f64 = s
            .parse()
            .map_err(|_| anyhow::anyhow!("invalid --since {input:?}"))?;
        return Ok((secs * 1000.0).round() as u64);
    }
    if let Ok(ms) = flotilla_types::parse_duration_ms(s) {
        return Ok(now_ms.saturating_sub(ms));
    }
    match parse_rfc3339(s) {
        Some(ms) => Ok(ms),
        None => bail!(
            "invalid --since {input:?}: expected a duration (10m, 1h30m), a Unix timestamp or an RFC 3339 time (2024-05-01T10:00:00Z)"
        ),
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

/// `2024-05-01T10:00:00.250Z` from Unix milliseconds.
pub fn format_rfc3339(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        ms % 1000
    )
}

/// Unix milliseconds of an RFC 3339 time (`T` or a space between date and
/// time; `Z` or a `±HH:MM` offset).
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let num = |t: &str| -> Option<u32> {
        t.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (date, time) = s.split_once(['T', 't', ' '])?;
    let mut parts = date.splitn(3, '-');
    let y = num(parts.next()?)?;
    let mo = num(parts.next()?)?;
    let d = num(parts.next()?)?;
    let (clock, offset_s): (&str, i64) = if let Some(c) = time.strip_suffix(['Z', 'z']) {
        (c, 0)
    } else {
        let i = time.rfind(['+', '-'])?;
        let (c, off) = time.split_at(i);
        let (oh, om) = off[1..].split_once(':')?;
        let secs = i64::from(num(oh)?) * 3600 + i64::from(num(om)?) * 60;
        (c, if off.starts_with('-') { -secs } else { secs })
    };
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, ""));
    let mut hms = hms.splitn(3, ':');
    let h = num(hms.next()?)?;
    let mi = num(hms.next()?)?;
    let sec = num(hms.next()?)?;
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac_ms: i64 = format!("{frac:0<3}")[..3].parse().ok()?;
    let secs = days_from_civil(i64::from(y), mo, d) * 86_400
        + i64::from(h) * 3600
        + i64::from(mi) * 60
        + i64::from(sec)
        - offset_s;
    u64::try_from(secs * 1000 + frac_ms).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use flotilla_api::model::TaskLabel;

    fn entry() -> LogEntry {
        LogEntry {
            ts_ms: 1_714_557_600_250,
            task: TaskLabel {
                service: "web".into(),
                slot: "2".into(),
                task_id: "abcdefghijklmnopq".into(),
                node: "w1".into(),
            },
            text: "hello".into(),
        }
    }

    #[test]
    fn prefixes_follow_the_flags() {
        let style = Style {
            timestamps: false,
            raw: false,
            task_ids: true,
        };
        assert_eq!(render(&entry(), style), "web.2.abcdefghijkl@w1 | hello");
        let no_ids = Style {
            task_ids: false,
            ..style
        };
        assert_eq!(render(&entry(), no_ids), "web.2@w1 | hello");
        let raw = Style { raw: true, ..style };
        assert_eq!(render(&entry(), raw), "hello");
        let stamped = Style {
            timestamps: true,
            raw: true,
            ..style
        };
        assert_eq!(render(&entry(), stamped), "2024-05-01T10:00:00.250Z hello");
    }

    #[test]
    fn since_takes_durations_timestamps_and_rfc3339() {
        let now = 1_714_557_600_000;
        assert_eq!(parse_since("10m", now).unwrap(), now - 600_000);
        assert_eq!(parse_since("1h30m", now).unwrap(), now - 5_400_000);
        assert_eq!(parse_since("1714557600", now).unwrap(), now);
        assert_eq!(parse_since("1714557600.5", now).unwrap(), now + 500);
        assert_eq!(parse_since("2024-05-01T10:00:00Z", now).unwrap(), now);
        assert_eq!(
            parse_since("2024-05-01T12:00:00.25+02:00", now).unwrap(),
            now + 250
        );
        assert_eq!(parse_since("2024-05-01 09:00:00-01:00", now).unwrap(), now);
        for bad in [
            "",
            "yesterday",
            "10x",
            "2024-13-01T00:00:00Z",
            "2024-05-01T10:00:00",
        ] {
            assert!(parse_since(bad, now).is_err(), "{bad}");
        }
    }

    #[test]
    fn rfc3339_round_trips() {
        for ms in [0, 951_782_400_000, 1_714_557_600_250, 4_102_444_799_999] {
            assert_eq!(parse_rfc3339(&format_rfc3339(ms)), Some(ms));
        }
        assert_eq!(format_rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
