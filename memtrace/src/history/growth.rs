//! Growth of one series over the history window: how much it rose
//! (start → now), how fast (least-squares slope, bytes per minute), since
//! when, and whether it only ever rose.
//!
//! - *start* is the window's first sample, *now* its last: growth is
//!   `now - start`, which is what `--grow-threshold` compares.
//! - *since* is the last sample at the window's minimum: where the rise
//!   that ends now began.
//! - The slope is fitted from *since* to now (all of the window when the
//!   minimum is its last sample), so a site that was flat and then started
//!   to leak gets the leak's rate, not one diluted by the flat part.
//! - *monotone*: the series never fell over the window by more than
//!   [`MONOTONE_SLACK`] of its peak from one sample to the next (a running
//!   process moves a few pages between call sites that share a VMA between
//!   the smaps and pagemap reads of one sample: noise, not a fall).

use std::time::Duration;

use serde::Serialize;

use crate::attribution::report::SiteCategory;

/// Growth of one series over the window.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Growth {
    pub start_bytes: u64,
    pub now_bytes: u64,
    /// `now_bytes - start_bytes` (negative when it shrank).
    pub growth_bytes: i64,
    /// Least-squares slope from `since_unix_ms` to now.
    pub bytes_per_minute: f64,
    /// Never fell over the window (beyond [`MONOTONE_SLACK`]).
    pub monotone: bool,
    /// The last sample at the window's minimum: when the rise began.
    pub since_unix_ms: u64,
}

/// The fall between two samples, as a share of the series' peak, that
/// still counts as monotone.
pub const MONOTONE_SLACK: f64 = 0.01;

/// A call site whose RSS rose by more than the threshold (the "Growing"
/// list; `growing` in `history.json`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GrowingSite {
    pub key: String,
    pub label: String,
    pub category: SiteCategory,
    pub subcategory: &'static str,
    #[serde(flatten)]
    pub growth: Growth,
}

/// Growth of one category over the window (`category_growth` in
/// `history.json`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CategoryGrowth {
    pub category: SiteCategory,
    #[serde(flatten)]
    pub growth: Growth,
}

/// Growth of `values` sampled at `times_ms` (same length, oldest first);
/// `None` with fewer than two samples or mismatched lengths.
pub fn growth(times_ms: &[u64], values: &[u64]) -> Option<Growth> {
    if values.len() < 2 || times_ms.len() != values.len() {
        return None;
    }
    let (&start, &now) = (values.first()?, values.last()?);
    let min = values.iter().copied().min()?;
    let since = values.iter().rposition(|&v| v == min)?;
    let from = if since + 1 < values.len() { since } else { 0 };
    let slope = slope_per_ms(&times_ms[from..], &values[from..]) * 60_000.0;
    Some(Growth {
        start_bytes: start,
        now_bytes: now,
        growth_bytes: now as i64 - start as i64,
        bytes_per_minute: slope,
        monotone: monotone(values),
        since_unix_ms: times_ms[since],
    })
}

/// Whether `values` never fell by more than [`MONOTONE_SLACK`] of their
/// peak from one sample to the next.
fn monotone(values: &[u64]) -> bool {
    let peak = values.iter().copied().max().unwrap_or(0);
    let slack = (peak as f64 * MONOTONE_SLACK) as u64;
    values
        .windows(2)
        .all(|w| w[1].saturating_add(slack) >= w[0])
}

/// Least-squares slope of `values` over `times_ms`, per millisecond (0
/// when the times do not spread).
pub fn slope_per_ms(times_ms: &[u64], values: &[u64]) -> f64 {
    let n = times_ms.len().min(values.len());
    if n < 2 {
        return 0.0;
    }
    // Centred on the first sample: epoch milliseconds squared would lose
    // precision in f64.
    let t0 = times_ms[0];
    let xs: Vec<f64> = times_ms[..n]
        .iter()
        .map(|&t| t.saturating_sub(t0) as f64)
        .collect();
    let ys: Vec<f64> = values[..n].iter().map(|&v| v as f64).collect();
    let mx = xs.iter().sum::<f64>() / n as f64;
    let my = ys.iter().sum::<f64>() / n as f64;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (x, y) in xs.iter().zip(&ys) {
        sxy += (x - mx) * (y - my);
        sxx += (x - mx) * (x - mx);
    }
    if sxx == 0.0 { 0.0 } else { sxy / sxx }
}

/// How much `values` rose over the last `span_ms` of the window: the newest
/// value minus the value of the newest sample at least `span_ms` older
/// (the oldest sample when the window is shorter).
pub fn growth_over(times_ms: &[u64], values: &[u64], span_ms: u64) -> i64 {
    let (Some(&now_t), Some(&now)) = (times_ms.last(), values.last()) else {
        return 0;
    };
    let cutoff = now_t.saturating_sub(span_ms);
    // The newest sample at or before the cutoff.
    let i = times_ms.partition_point(|&t| t <= cutoff).saturating_sub(1);
    let then = values.get(i).copied().unwrap_or(now);
    now as i64 - then as i64
}

/// `1h2m`, `5m`, `12s`, `300ms`: a duration in its two largest units.
pub fn human_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let s = d.as_secs();
    match (s / 3600, (s / 60) % 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, 0, _) => format!("{h}h"),
        (h, m, _) => format!("{h}h{m}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steady_rise_has_its_rate_and_start() {
        let times: Vec<u64> = (0..10).map(|i| 1_000_000 + i * 1000).collect();
        // Flat at 5 MiB, then 2 MiB a second from t=4s.
        let values: Vec<u64> = (0..10u64)
            .map(|i| (5 << 20) + i.saturating_sub(4) * (2 << 20))
            .collect();
        let g = growth(&times, &values).expect("growth");
        assert_eq!(g.start_bytes, 5 << 20);
        assert_eq!(g.growth_bytes, 10 << 20);
        assert!(g.monotone);
        assert_eq!(g.since_unix_ms, 1_004_000, "the rise began at 4 s");
        let per_min = (2u64 << 20) as f64 * 60.0;
        assert!((g.bytes_per_minute - per_min).abs() < 1.0, "{g:?}");
    }

    #[test]
    fn a_dip_is_not_monotone_and_a_shrink_is_negative() {
        let times = [0, 1000, 2000, 3000];
        let g = growth(&times, &[10, 30, 20, 40]).expect("growth");
        assert!(!g.monotone);
        let dip = growth(&times, &[1000, 2000, 1990, 3000]).expect("growth");
        assert!(dip.monotone, "a dip within 1% of the peak is noise");
        assert_eq!((g.growth_bytes, g.since_unix_ms), (30, 0));
        let g = growth(&times, &[40, 30, 20, 10]).expect("growth");
        assert_eq!(g.growth_bytes, -30);
        assert!(g.bytes_per_minute < 0.0);
        assert!(growth(&[0], &[1]).is_none());
        assert!(growth(&[0, 1], &[1]).is_none());
    }

    #[test]
    fn least_squares_fits_noisy_points() {
        // Points around a line of slope 2.83.
        let times = [0, 1, 2, 3, 4, 5];
        let values = [1, 2, 7, 8, 13, 14];
        let s = slope_per_ms(&times, &values);
        assert!((s - 2.8286).abs() < 1e-3, "{s}");
        assert_eq!(slope_per_ms(&[5, 5], &[1, 9]), 0.0);
    }

    #[test]
    fn growth_over_a_span_looks_back_that_far() {
        let times = [0, 1000, 2000, 3000, 4000];
        let values = [0, 10, 20, 30, 40];
        assert_eq!(growth_over(&times, &values, 2000), 20);
        assert_eq!(growth_over(&times, &values, 2500), 30);
        assert_eq!(growth_over(&times, &values, 60_000), 40, "from the oldest");
        assert_eq!(growth_over(&[], &[], 1000), 0);
    }

    #[test]
    fn durations_read_short() {
        assert_eq!(human_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(human_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(human_duration(Duration::from_secs(600)), "10m");
        assert_eq!(human_duration(Duration::from_secs(3720)), "1h2m");
    }
}
