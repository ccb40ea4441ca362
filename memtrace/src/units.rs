//! Byte counts for humans.
//!
//! Binary units with one decimal (`B`, `KiB`, `MiB`, `GiB`, `TiB`). Below
//! 1 KiB the exact byte count is shown, so a small nonzero region never
//! prints as 0, and a value never rounds up to `1024.0` of a unit (it moves
//! to the next unit instead).
//!
//! [`parse_size`] and [`parse_duration`] read what users write in flags and
//! alert rules (`2GiB`, `512KiB`, `10m`, `500ms`).

use std::fmt;

const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];

/// Format `bytes` in human units, e.g. `4.0 KiB`, `12.3 MiB`, `512 B`.
pub fn human(bytes: u64) -> String {
    Human(bytes).to_string()
}

/// Format `bytes` as `human` would, or as an exact integer when `exact`.
pub fn format(bytes: u64, exact: bool) -> String {
    if exact {
        bytes.to_string()
    } else {
        human(bytes)
    }
}

/// A byte count that displays in human units; see [`human`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Human(pub u64);

impl fmt::Display for Human {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.0;
        if bytes < 1024 {
            return f.pad(&format!("{bytes} B"));
        }
        // Tenths of the unit, rounded half up, in integer arithmetic so
        // large values are exact.
        let mut unit = 1;
        let mut divisor: u128 = 1024;
        loop {
            let tenths = (u128::from(bytes) * 10 + divisor / 2) / divisor;
            // 10240 tenths would print as "1024.0": use the next unit.
            if tenths < 10240 || unit == UNITS.len() - 1 {
                return f.pad(&format!("{}.{} {}", tenths / 10, tenths % 10, UNITS[unit]));
            }
            unit += 1;
            divisor *= 1024;
        }
    }
}

/// Parse a byte size: a whole or decimal number with an optional binary
/// unit (`B`, `K`/`KiB`, `M`/`MiB`, `G`/`GiB`, `T`/`TiB`), e.g. `2GiB`,
/// `1.5G`, `65536`. Decimal units (`MB`, `GB`) are refused rather than
/// guessed.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let (n, unit) = number_and_unit(s, "a size (try 2GiB, 100MiB, 512KiB)")?;
    let mult: f64 = match unit {
        "" | "B" => 1.0,
        "K" | "KiB" | "k" => 1024.0,
        "M" | "MiB" => 1024.0 * 1024.0,
        "G" | "GiB" => 1024.0 * 1024.0 * 1024.0,
        "T" | "TiB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(format!(
                "unknown size unit `{other}` in `{s}` (use B, KiB, MiB, GiB or TiB)"
            ));
        }
    };
    let bytes = n * mult;
    // 2^63: far beyond any address space, and exact in f64.
    if !bytes.is_finite() || bytes > 9.223_372_036_854_776e18 {
        return Err(format!("`{s}` is too large"));
    }
    Ok(bytes.round() as u64)
}

/// Parse a duration: a number with a unit `ms`, `s`, `m` (or `min`) or
/// `h` (a bare number is seconds), e.g. `500ms`, `10s`, `5m`, `1h`. Zero
/// and negative durations are refused.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let (n, unit) = number_and_unit(s, "a duration (try 500ms, 10s, 5m, 1h)")?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit `{other}` in `{s}` (use ms, s, m or h)"
            ));
        }
    };
    if !secs.is_finite() || secs <= 0.0 || secs > 1e9 {
        return Err(format!(
            "`{s}` is out of range (more than 0, at most 1e9 s)"
        ));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

/// The leading number of `s` (digits and `.`) and the unit after it,
/// trimmed; when there is no number, an error saying `s` is not `what`.
fn number_and_unit<'a>(s: &'a str, what: &str) -> Result<(f64, &'a str), String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n = num.parse().map_err(|_| format!("`{s}` is not {what}"))?;
    Ok((n, unit.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_parse_or_say_why_not() {
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("100MiB"), Ok(100 << 20));
        assert_eq!(parse_size("1.5K"), Ok(1536));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(
            parse_size("2GB")
                .expect_err("refused")
                .contains("unknown size unit `GB`")
        );
        assert!(
            parse_size("lots")
                .expect_err("refused")
                .contains("not a size")
        );
        assert!(
            parse_size("99999999999TiB")
                .expect_err("refused")
                .contains("too large")
        );
        use std::time::Duration;
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("0s").is_err());
        assert!(
            parse_duration("5y")
                .expect_err("refused")
                .contains("unknown duration unit")
        );
    }

    #[test]
    fn units() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1), "1 B");
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(1024), "1.0 KiB");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(1024 * 1024 - 1), "1.0 MiB");
        assert_eq!(human(4 << 20), "4.0 MiB");
        assert_eq!(human(3 << 30), "3.0 GiB");
        assert_eq!(human(u64::MAX), "16777216.0 TiB");
        assert_eq!(format(4096, true), "4096");
    }
}
