//! Go's `time.Duration` text, as kube-proxy's flags and config file use it: parsing
//! (`time.ParseDuration`) and printing (`Duration.String`), so `/configz` and
//! `--write-config-to` print what upstream prints.

use std::time::Duration;

/// Parses a Go duration (`1h0m0s`, `30s`, `1.5s`, `500ms`, `0`).
pub fn parse_go(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let invalid = || format!("time: invalid duration {s:?}");
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() || s.starts_with('-') {
        return Err(invalid());
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (number, tail) = rest.split_at(digits);
        let number: f64 = number.parse().map_err(|_| invalid())?;
        let unit_len = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let seconds = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" | "μs" => 1e-6,
            "ns" => 1e-9,
            "" => return Err(format!("time: missing unit in duration {s:?}")),
            _ => return Err(format!("time: unknown unit {unit:?} in duration {s:?}")),
        };
        total += Duration::try_from_secs_f64(number * seconds).map_err(|_| invalid())?;
        rest = tail;
    }
    Ok(total)
}

/// Prints a duration as Go's `Duration.String` does: `0s`, `500ms`, `1.5s`, `1m30s`,
/// `24h0m0s`.
pub fn format_go(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    if nanos < 1_000_000_000 {
        let (unit, scale) = if nanos < 1_000 {
            ("ns", 1)
        } else if nanos < 1_000_000 {
            ("µs", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        return format!("{}{unit}", fraction(nanos, scale));
    }
    let secs = nanos / 1_000_000_000;
    let sub = nanos % 1_000_000_000;
    let s = fraction((secs % 60) * 1_000_000_000 + sub, 1_000_000_000);
    match (secs / 3600, (secs / 60) % 60) {
        (0, 0) => format!("{s}s"),
        (0, m) => format!("{m}m{s}s"),
        (h, m) => format!("{h}h{m}m{s}s"),
    }
}

/// `value / scale` with the fraction's trailing zeros trimmed.
fn fraction(value: u128, scale: u128) -> String {
    let whole = value / scale;
    let rest = value % scale;
    if rest == 0 {
        return whole.to_string();
    }
    let width = scale.ilog10() as usize;
    let digits = format!("{rest:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse_go("1h0m0s").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_go("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_go("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_go("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_go("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_go("1h30m").unwrap(), Duration::from_secs(5400));
        for bad in ["5 minutes", "", "-1s", "10", "1x", "999999999999999999999h"] {
            assert!(parse_go(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn prints_as_go_does() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_millis(500), "500ms"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_secs(30), "30s"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_secs(15 * 60), "15m0s"),
            (Duration::from_secs(3600), "1h0m0s"),
            (Duration::from_secs(24 * 3600), "24h0m0s"),
            (Duration::from_micros(1500), "1.5ms"),
            (Duration::from_nanos(10), "10ns"),
        ];
        for (d, text) in cases {
            assert_eq!(format_go(d), text);
            assert_eq!(parse_go(text).unwrap(), d, "{text}");
        }
    }
}
