//! Durations as users write them: `10s`, `1m30s`, `250ms`, `2h`, or a bare
//! `0`. Stored as milliseconds.

use thiserror::Error;

/// Why a duration was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DurationError {
    #[error("invalid duration {0:?}: expected a number with a unit, such as 10s, 1m30s or 250ms")]
    Invalid(String),
    #[error("invalid duration {0:?}: too large")]
    TooLarge(String),
}

/// Parses a Go-style duration (units `ms`, `s`, `m`, `h`) into milliseconds.
/// A bare number is only accepted when it is `0`.
pub fn parse_duration_ms(input: &str) -> Result<u64, DurationError> {
    let s = input.trim();
    let bad = || DurationError::Invalid(input.to_string());
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(bad());
    }
    let mut total: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let number: f64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "ms" => 1.0,
            "s" => 1_000.0,
            "m" => 60_000.0,
            "h" => 3_600_000.0,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        let part = number * factor;
        if !part.is_finite() || part > 1e15 {
            return Err(DurationError::TooLarge(input.to_string()));
        }
        total = total
            .checked_add(part.round() as u64)
            .ok_or_else(|| DurationError::TooLarge(input.to_string()))?;
    }
    Ok(total)
}

/// Formats milliseconds the short way a person reads them: `250ms`, `10s`,
/// `1m30s`, `2h`.
pub fn format_duration_ms(ms: u64) -> String {
    if ms == 0 {
        return "0s".to_string();
    }
    if ms < 1_000 {
        return format!("{ms}ms");
    }
    let mut out = String::new();
    let h = ms / 3_600_000;
    let m = (ms / 60_000) % 60;
    let s = (ms / 1_000) % 60;
    let rem = ms % 1_000;
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || rem > 0 {
        if rem > 0 {
            out.push_str(&format!("{s}.{rem:03}s"));
        } else {
            out.push_str(&format!("{s}s"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        assert_eq!(parse_duration_ms("0"), Ok(0));
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        assert_eq!(parse_duration_ms("10s"), Ok(10_000));
        assert_eq!(parse_duration_ms("1m30s"), Ok(90_000));
        assert_eq!(parse_duration_ms("1.5s"), Ok(1_500));
        assert_eq!(parse_duration_ms("2h"), Ok(7_200_000));
    }

    #[test]
    fn refuses_garbage() {
        for s in ["", "10", "s", "10x", "-1s", "1s2", "abc"] {
            assert!(parse_duration_ms(s).is_err(), "{s:?}");
        }
    }

    #[test]
    fn formats_round_trip() {
        for ms in [0, 250, 1_000, 1_500, 90_000, 7_200_000, 3_723_000] {
            let text = format_duration_ms(ms);
            assert_eq!(parse_duration_ms(&text).ok(), Some(ms), "{text}");
        }
    }
}
