//! Durations as the contract writes them: an integer with a unit, `500ms`, `10s`, `2m`, `1h`;
//! and the one reading of Unix time in milliseconds that the reports and metrics use.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `t` as milliseconds since the Unix epoch (0 for a time before it: a clock set wrong).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The wall clock now, as [`unix_ms`].
pub fn unix_ms_now() -> u64 {
    unix_ms(SystemTime::now())
}

/// Parses `N` followed by `ms`, `s`, `m` or `h` (no spaces, no fractions, no bare numbers).
pub fn parse(text: &str) -> Result<Duration, String> {
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(|| {
        format!("duration {text:?} has no unit (use ms, s, m or h, e.g. \"10s\")")
    })?;
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return Err(format!(
            "duration {text:?} must start with a number, e.g. \"10s\""
        ));
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("duration {text:?} is too large"))?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => {
            return Err(format!(
                "duration {text:?} has an unknown unit {unit:?} (use ms, s, m or h)"
            ))
        }
    };
    ms.map(Duration::from_millis)
        .ok_or_else(|| format!("duration {text:?} is too large"))
}

/// Formats a duration in the largest unit that represents it exactly.
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(3_600_000) && ms > 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1_000) {
        format!("{}s", ms / 1_000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_unit() {
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse("0s").unwrap(), Duration::ZERO);
    }

    #[test]
    fn refuses_what_is_not_a_duration() {
        for bad in [
            "",
            "10",
            "s",
            "10 s",
            "1.5s",
            "-1s",
            "10sec",
            "10S",
            "99999999999999999999s",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(parse("10").unwrap_err().contains("no unit"));
    }

    #[test]
    fn formats_round_trip() {
        for s in ["500ms", "10s", "2m", "1h", "0s", "1500ms"] {
            assert_eq!(format(parse(s).unwrap()), s);
        }
    }
}
