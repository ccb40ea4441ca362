//! Byte counts for humans.
//!
//! Binary units with one decimal (`B`, `KiB`, `MiB`, `GiB`, `TiB`). Below
//! 1 KiB the exact byte count is shown, so a small nonzero region never
//! prints as 0, and a value never rounds up to `1024.0` of a unit (it moves
//! to the next unit instead).

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

#[cfg(test)]
mod tests {
    use super::*;

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
