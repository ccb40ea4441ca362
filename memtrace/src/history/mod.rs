//! History: the attributed report sampled over time, in a bounded ring.
//!
//! While tracing, the session takes a [`Sample`] of the attributed report
//! every `--sample-every` ([`HistoryConfig::sample_every`]): process
//! totals (RSS, anonymous RSS, swap), attributed bytes and coverage, event
//! counts, lost events, resident bytes per category and per call site.
//! [`History`] keeps the last [`HistoryConfig::capacity`] of them (the
//! `--history` window), oldest first.
//!
//! - A call site is identified by [`SiteReport::key`]: the same code keeps
//!   the same key in every sample, whatever ranges it holds now.
//! - Memory is bounded: at most [`HistoryConfig::max_sites`] call sites
//!   have a series of their own; the rest are summed into one series,
//!   [`OTHER_KEY`]. When the table is full, a site larger now than the
//!   smallest tracked one takes its place (the evicted series is folded
//!   into "other", so every sample's sites still add up). A series whose
//!   site held nothing over the whole window is dropped.
//!   [`HistoryConfig::memory_bound_bytes`] says how much that is at most.
//! - [`growth`]: growth over the window (bytes, least-squares slope,
//!   monotone or not) and the "Growing" list. [`alert`]: `--alert` rules.
//! - [`HistoryDoc`] is the JSON served at `/debug/memory/history.json`.
//!
//! Plain data in ([`Sample`], built from an [`AttributedReport`]), plain
//! data out; nothing here reads the kernel.

pub mod alert;
pub mod growth;

use std::{
    collections::{HashMap, VecDeque},
    fmt::Write as _,
    time::Duration,
};

use serde::Serialize;

use crate::attribution::report::{AttributedReport, SiteCategory, SiteReport};
use crate::{schema, units};

/// Key of the series that sums the call sites without one of their own.
pub const OTHER_KEY: &str = "other";

/// Default `--sample-every`.
pub const DEFAULT_SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// Default `--history`.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(3600);
/// Default `--grow-threshold`.
pub const DEFAULT_GROW_THRESHOLD: u64 = 16 << 20;
/// Call sites with a series of their own.
pub const MAX_SITES: usize = 500;
/// Most samples a window may hold (`--history` / `--sample-every`).
pub const MAX_SAMPLES: usize = 10_000;

/// How often to sample and how much to keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryConfig {
    pub sample_every: Duration,
    /// The window: samples older than this are dropped.
    pub window: Duration,
    /// Call sites with a series of their own; the rest are "other".
    pub max_sites: usize,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            sample_every: DEFAULT_SAMPLE_EVERY,
            window: DEFAULT_WINDOW,
            max_sites: MAX_SITES,
        }
    }
}

impl HistoryConfig {
    /// A configuration, or why it makes no sense.
    pub fn new(sample_every: Duration, window: Duration) -> Result<HistoryConfig, String> {
        if sample_every < Duration::from_millis(10) {
            return Err(format!(
                "--sample-every {sample_every:?} is too short (at least 10ms)"
            ));
        }
        if window < sample_every {
            return Err(format!(
                "--history {window:?} is shorter than --sample-every {sample_every:?}"
            ));
        }
        let config = HistoryConfig {
            sample_every,
            window,
            max_sites: MAX_SITES,
        };
        let samples = window.as_secs_f64() / sample_every.as_secs_f64();
        if samples > MAX_SAMPLES as f64 {
            return Err(format!(
                "--history {window:?} / --sample-every {sample_every:?} is {samples:.0} samples; \
                 at most {MAX_SAMPLES}: sample less often or keep a shorter history"
            ));
        }
        Ok(config)
    }

    /// Samples kept: the window over the interval, rounded up, plus the
    /// sample at the window's start (at least 2, for a slope).
    pub fn capacity(&self) -> usize {
        let n = (self.window.as_secs_f64() / self.sample_every.as_secs_f64()).ceil() as usize;
        n.clamp(1, MAX_SAMPLES) + 1
    }

    /// Most bytes the series of one history hold: 8 bytes per site and
    /// sample (plus "other"), per category and sample, and the totals of
    /// each sample; labels come on top (one string per tracked site).
    pub fn memory_bound_bytes(&self) -> u64 {
        let per_sample = (self.max_sites + 1 + SiteCategory::ALL.len()) * 8
            + std::mem::size_of::<SampleTotals>();
        (per_sample * self.capacity()) as u64
    }
}

/// Process-wide figures of one sample.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct SampleTotals {
    /// Wall-clock time of the sample, ms since the Unix epoch.
    pub unix_ms: u64,
    /// Resident bytes of the whole process (`Rss`).
    pub rss_bytes: u64,
    /// Resident private anonymous bytes (`Anonymous`).
    pub anon_rss_bytes: u64,
    /// Swapped-out bytes.
    pub swap_bytes: u64,
    /// The part of `anon_rss_bytes` attributed to a call site.
    pub attributed_rss_bytes: u64,
    /// `attributed_rss_bytes / anon_rss_bytes` (1 when there is none).
    pub coverage: f64,
    /// Events applied so far in the session.
    pub events: u64,
    /// Events lost so far in the session.
    pub lost_events: u64,
}

/// One call site in a sample.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SitePoint {
    /// [`SiteReport::key`].
    pub key: String,
    /// [`SiteReport::label`].
    pub label: String,
    /// [`SiteCategory`] as in the JSON report (`allocator_arenas`…).
    pub category: SiteCategory,
    /// The sub-category ([`SiteReport::subcategory`]).
    pub subcategory: &'static str,
    /// Resident bytes, private + shared.
    pub rss_bytes: u64,
}

/// One sample of the attributed report: plain data in.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    pub totals: SampleTotals,
    /// Resident bytes (private + shared) per category, in
    /// [`SiteCategory::ALL`] order.
    pub categories: [u64; SiteCategory::ALL.len()],
    /// Call sites holding memory, largest first.
    pub sites: Vec<SitePoint>,
}

impl Sample {
    /// The sample of `report`, taken at `unix_ms` after `events` events.
    pub fn of_report(report: &AttributedReport, unix_ms: u64, events: u64) -> Sample {
        let mut categories = [0; SiteCategory::ALL.len()];
        for c in &report.categories {
            if let Some(i) = SiteCategory::ALL.iter().position(|&a| a == c.name) {
                categories[i] = c.rss_bytes.saturating_add(c.shared_rss_bytes);
            }
        }
        Sample {
            totals: SampleTotals {
                unix_ms,
                rss_bytes: report.process.rss_bytes,
                anon_rss_bytes: report.totals.anon_rss_bytes,
                swap_bytes: report.process.swap_bytes,
                attributed_rss_bytes: report.totals.attributed_rss_bytes,
                coverage: report.coverage,
                events,
                lost_events: report.lost_events,
            },
            categories,
            sites: report
                .call_sites
                .iter()
                .map(|s: &SiteReport| SitePoint {
                    key: s.key(),
                    label: s.label(),
                    category: s.category,
                    subcategory: s.subcategory,
                    rss_bytes: s.resident_bytes(),
                })
                .collect(),
        }
    }
}

/// Marks a sample in which a tracked site held nothing (it was not in the
/// report): cheaper than `Option<u64>` (8 bytes, not 16).
const ABSENT: u64 = u64::MAX;

/// One call site's resident bytes, sample by sample.
#[derive(Clone, Debug)]
struct Series {
    key: String,
    label: String,
    category: SiteCategory,
    subcategory: &'static str,
    /// Aligned with [`History::totals`]; [`ABSENT`] where it held nothing.
    values: VecDeque<u64>,
}

impl Series {
    fn now(&self) -> u64 {
        match self.values.back() {
            Some(&v) if v != ABSENT => v,
            _ => 0,
        }
    }
}

/// The bounded ring of samples.
#[derive(Clone, Debug)]
pub struct History {
    config: HistoryConfig,
    capacity: usize,
    totals: VecDeque<SampleTotals>,
    categories: VecDeque<[u64; SiteCategory::ALL.len()]>,
    sites: Vec<Series>,
    /// Index into `sites` by key.
    index: HashMap<String, usize>,
    /// Sites without a series of their own, summed; aligned with `totals`.
    other: VecDeque<u64>,
}

impl History {
    pub fn new(config: HistoryConfig) -> History {
        History {
            config,
            capacity: config.capacity(),
            totals: VecDeque::with_capacity(config.capacity()),
            categories: VecDeque::with_capacity(config.capacity()),
            sites: Vec::new(),
            index: HashMap::new(),
            other: VecDeque::with_capacity(config.capacity()),
        }
    }

    pub fn config(&self) -> &HistoryConfig {
        &self.config
    }

    /// Samples held now.
    pub fn len(&self) -> usize {
        self.totals.len()
    }

    pub fn is_empty(&self) -> bool {
        self.totals.is_empty()
    }

    /// Totals of each sample, oldest first.
    pub fn totals(&self) -> impl ExactSizeIterator<Item = &SampleTotals> {
        self.totals.iter()
    }

    /// The newest sample's totals.
    pub fn latest(&self) -> Option<&SampleTotals> {
        self.totals.back()
    }

    /// Sample times, ms since the epoch, oldest first.
    pub fn times(&self) -> Vec<u64> {
        self.totals.iter().map(|t| t.unix_ms).collect()
    }

    /// Call sites with a series of their own.
    pub fn site_count(&self) -> usize {
        self.sites.len()
    }

    /// Add a sample, dropping the oldest when the window is full.
    pub fn push(&mut self, sample: Sample) {
        if self.totals.len() >= self.capacity {
            self.totals.pop_front();
            self.categories.pop_front();
            self.other.pop_front();
            for s in &mut self.sites {
                s.values.pop_front();
            }
            self.forget_empty();
        }
        let at = self.totals.len();
        self.totals.push_back(sample.totals);
        self.categories.push_back(sample.categories);
        self.other.push_back(0);
        for s in &mut self.sites {
            s.values.push_back(ABSENT);
        }
        let mut newcomers = Vec::new();
        for point in sample.sites {
            match self.index.get(&point.key) {
                Some(&i) => {
                    let s = &mut self.sites[i];
                    s.values[at] = add(s.values[at], point.rss_bytes);
                    if s.label != point.label {
                        s.label = point.label;
                    }
                }
                None => newcomers.push(point),
            }
        }
        // Largest first: when the table is full they compete for places.
        newcomers.sort_by_key(|p| std::cmp::Reverse(p.rss_bytes));
        let mut smallest = None;
        for point in newcomers {
            if self.sites.len() < self.config.max_sites {
                self.insert(point, at);
                continue;
            }
            let (i, v) = *smallest.get_or_insert_with(|| self.smallest_now());
            if point.rss_bytes > v && i < self.sites.len() {
                self.evict(i);
                self.insert(point, at);
                smallest = None;
            } else {
                // Nothing tracked is smaller than this: no later one is.
                self.other[at] = self.other[at].saturating_add(point.rss_bytes);
            }
        }
    }

    /// The tracked site holding least now: (index, bytes).
    fn smallest_now(&self) -> (usize, u64) {
        self.sites
            .iter()
            .enumerate()
            .map(|(i, s)| (i, s.now()))
            .min_by_key(|&(_, v)| v)
            .unwrap_or((usize::MAX, u64::MAX))
    }

    fn insert(&mut self, point: SitePoint, at: usize) {
        // The whole window at once: a series never reallocates (no
        // garbage left behind as it fills).
        let mut values: VecDeque<u64> = VecDeque::with_capacity(self.capacity);
        values.extend(std::iter::repeat_n(ABSENT, at + 1));
        values[at] = point.rss_bytes;
        self.index.insert(point.key.clone(), self.sites.len());
        self.sites.push(Series {
            key: point.key,
            label: point.label,
            category: point.category,
            subcategory: point.subcategory,
            values,
        });
    }

    /// Fold series `i` into "other" and drop it.
    fn evict(&mut self, i: usize) {
        let gone = self.sites.swap_remove(i);
        self.index.remove(&gone.key);
        if let Some(moved) = self.sites.get(i) {
            self.index.insert(moved.key.clone(), i);
        }
        for (o, v) in self.other.iter_mut().zip(&gone.values) {
            if *v != ABSENT {
                *o = o.saturating_add(*v);
            }
        }
    }

    /// Drop series that held nothing over the whole window.
    fn forget_empty(&mut self) {
        let before = self.sites.len();
        self.sites.retain(|s| s.values.iter().any(|&v| v != ABSENT));
        if self.sites.len() != before {
            self.index = self
                .sites
                .iter()
                .enumerate()
                .map(|(i, s)| (s.key.clone(), i))
                .collect();
        }
    }

    /// Each tracked site: (key, label, values with 0 where it held
    /// nothing), for growth and alerts.
    pub fn site_values(&self) -> impl Iterator<Item = SiteValues<'_>> {
        self.sites.iter().map(|s| SiteValues {
            key: &s.key,
            label: &s.label,
            category: s.category,
            subcategory: s.subcategory,
            values: s
                .values
                .iter()
                .map(|&v| if v == ABSENT { 0 } else { v })
                .collect(),
        })
    }

    /// Resident bytes of one category, sample by sample.
    pub fn category_values(&self, category: SiteCategory) -> Vec<u64> {
        let Some(i) = SiteCategory::ALL.iter().position(|&c| c == category) else {
            return Vec::new();
        };
        self.categories.iter().map(|c| c[i]).collect()
    }

    /// Call sites whose RSS rose by more than `threshold` bytes over the
    /// window, most growth first.
    pub fn growing(&self, threshold: u64) -> Vec<growth::GrowingSite> {
        let times = self.times();
        let mut out: Vec<growth::GrowingSite> = self
            .site_values()
            .filter_map(|s| {
                let g = growth::growth(&times, &s.values)?;
                (g.growth_bytes > 0 && g.growth_bytes as u64 > threshold).then(|| {
                    growth::GrowingSite {
                        key: s.key.to_owned(),
                        label: s.label.to_owned(),
                        category: s.category,
                        subcategory: s.subcategory,
                        growth: g,
                    }
                })
            })
            .collect();
        out.sort_by_key(|g| std::cmp::Reverse(g.growth.growth_bytes));
        out
    }

    /// Growth of each category over the window (categories that hold or
    /// held memory).
    pub fn category_growth(&self) -> Vec<(SiteCategory, growth::Growth)> {
        let times = self.times();
        SiteCategory::ALL
            .iter()
            .filter_map(|&c| {
                let values = self.category_values(c);
                let g = growth::growth(&times, &values)?;
                (g.start_bytes > 0 || g.now_bytes > 0).then_some((c, g))
            })
            .collect()
    }

    /// The JSON document of `/debug/memory/history.json`.
    pub fn doc(&self, pid: u32, grow_threshold: u64, alerts: &[alert::AlertState]) -> HistoryDoc {
        let samples = self
            .totals
            .iter()
            .zip(&self.categories)
            .map(|(t, c)| SampleDoc {
                totals: *t,
                categories: SiteCategory::ALL
                    .iter()
                    .zip(c)
                    .map(|(k, v)| (*k, *v))
                    .collect(),
            })
            .collect();
        let mut order: Vec<&Series> = self.sites.iter().collect();
        order.sort_by(|a, b| b.now().cmp(&a.now()).then(a.key.cmp(&b.key)));
        let mut sites: Vec<SiteDoc> = order
            .into_iter()
            .map(|s| SiteDoc {
                key: s.key.clone(),
                label: s.label.clone(),
                category: Some(s.category),
                subcategory: Some(s.subcategory),
                rss_bytes: s
                    .values
                    .iter()
                    .map(|&v| (v != ABSENT).then_some(v))
                    .collect(),
            })
            .collect();
        if self.other.iter().any(|&v| v > 0) {
            sites.push(SiteDoc {
                key: OTHER_KEY.into(),
                label: format!(
                    "other call sites (beyond the {} tracked)",
                    self.config.max_sites
                ),
                category: None,
                subcategory: None,
                rss_bytes: self.other.iter().map(|&v| Some(v)).collect(),
            });
        }
        HistoryDoc {
            kind: "history",
            schema_version: schema::SCHEMA_VERSION,
            pid,
            sample_every_ms: self.config.sample_every.as_millis() as u64,
            window_ms: self.config.window.as_millis() as u64,
            samples,
            sites,
            growing: self.growing(grow_threshold),
            category_growth: self
                .category_growth()
                .into_iter()
                .map(|(category, growth)| growth::CategoryGrowth { category, growth })
                .collect(),
            alerts: alerts.to_vec(),
        }
    }

    /// The "Growing" section of the text report: call sites whose RSS rose
    /// more than `threshold` over the window. Empty when none did.
    pub fn growing_text(&self, threshold: u64) -> String {
        let growing = self.growing(threshold);
        if growing.is_empty() {
            return String::new();
        }
        let span = self.span();
        let now_ms = self.latest().map_or(0, |t| t.unix_ms);
        let mut s = String::new();
        let _ = writeln!(
            s,
            "\nGrowing (RSS up more than {} over the last {}, {} samples):",
            units::human(threshold),
            growth::human_duration(span),
            self.len()
        );
        let _ = writeln!(
            s,
            "{:>10} {:>10} {:>12} {:>10}  {:<9} CALL SITE",
            "START", "NOW", "RATE/MIN", "SINCE", "MONOTONE"
        );
        for g in &growing {
            let ago = Duration::from_millis(now_ms.saturating_sub(g.growth.since_unix_ms));
            let _ = writeln!(
                s,
                "{:>10} {:>10} {:>12} {:>10}  {:<9} {}",
                units::human(g.growth.start_bytes),
                units::human(g.growth.now_bytes),
                signed_human(g.growth.bytes_per_minute),
                format!("{} ago", growth::human_duration(ago)),
                if g.growth.monotone { "yes" } else { "no" },
                g.label
            );
        }
        s
    }

    /// The "Growing" section as a JSON line of `memtrace --json`; its list
    /// is empty when nothing grew.
    pub fn growing_line(&self, pid: u32, threshold: u64) -> GrowingLine {
        GrowingLine {
            schema_version: schema::SCHEMA_VERSION,
            pid,
            threshold_bytes: threshold,
            span_ms: self.span().as_millis() as u64,
            sample_count: self.len(),
            growing: self.growing(threshold),
        }
    }

    /// From the oldest sample kept to the newest.
    fn span(&self) -> Duration {
        match (self.totals.front(), self.totals.back()) {
            (Some(a), Some(b)) => Duration::from_millis(b.unix_ms.saturating_sub(a.unix_ms)),
            _ => Duration::ZERO,
        }
    }
}

/// The "Growing" section of the text report for JSON readers: the
/// `growing` line of `memtrace --json`, after the final report (schema:
/// `docs/json-schema.md`).
#[derive(Clone, Debug, Serialize)]
pub struct GrowingLine {
    pub schema_version: u32,
    pub pid: u32,
    /// `--grow-threshold`: sites that grew more over the window are listed.
    pub threshold_bytes: u64,
    /// From the oldest sample of the window to the newest.
    pub span_ms: u64,
    pub sample_count: usize,
    /// Most growth first, as in [`HistoryDoc::growing`].
    pub growing: Vec<growth::GrowingSite>,
}

/// What `--sample-every`, `--history`, `--grow-threshold` and `--alert`
/// ask for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchOptions {
    pub config: HistoryConfig,
    /// The "Growing" list's threshold, bytes over the window.
    pub grow_threshold: u64,
    pub rules: Vec<alert::Rule>,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            config: HistoryConfig::default(),
            grow_threshold: DEFAULT_GROW_THRESHOLD,
            rules: Vec::new(),
        }
    }
}

/// A history with its alert rules: what a tracing loop keeps and feeds
/// one report at a time.
#[derive(Clone, Debug)]
pub struct Watch {
    pub history: History,
    pub alerts: alert::Alerts,
    pub grow_threshold: u64,
}

impl Watch {
    pub fn new(opts: &WatchOptions) -> Watch {
        Watch {
            history: History::new(opts.config),
            alerts: alert::Alerts::new(opts.rules.clone()),
            grow_threshold: opts.grow_threshold,
        }
    }

    /// The interval between samples.
    pub fn every(&self) -> Duration {
        self.history.config().sample_every
    }

    /// Add the sample of `report` (taken now, after `events` events) and
    /// evaluate the rules: the alerts that tripped now.
    pub fn record(&mut self, report: &AttributedReport, events: u64) -> Vec<alert::AlertState> {
        self.history
            .push(Sample::of_report(report, unix_ms_now(), events));
        self.alerts.evaluate(&self.history)
    }

    /// `/debug/memory/history.json` for process `pid`.
    pub fn doc(&self, pid: u32) -> HistoryDoc {
        self.history
            .doc(pid, self.grow_threshold, self.alerts.states())
    }

    /// The "Growing" section of the text report (empty when nothing grew).
    pub fn growing_text(&self) -> String {
        self.history.growing_text(self.grow_threshold)
    }

    /// The "Growing" section as a JSON line for process `pid`.
    pub fn growing_line(&self, pid: u32) -> GrowingLine {
        self.history.growing_line(pid, self.grow_threshold)
    }
}

/// Wall-clock now, ms since the Unix epoch (0 if the clock is before it).
pub fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `+1.2 MiB` / `-3.0 KiB` for a rate.
fn signed_human(v: f64) -> String {
    let sign = if v < 0.0 { "-" } else { "+" };
    format!("{sign}{}", units::human(v.abs().round() as u64))
}

fn add(old: u64, more: u64) -> u64 {
    if old == ABSENT {
        more
    } else {
        old.saturating_add(more)
    }
}

/// One tracked call site's series, absent samples as 0.
#[derive(Clone, Debug)]
pub struct SiteValues<'a> {
    pub key: &'a str,
    pub label: &'a str,
    pub category: SiteCategory,
    pub subcategory: &'static str,
    pub values: Vec<u64>,
}

/// `GET /debug/memory/history.json` (schema: `docs/json-schema.md`).
#[derive(Clone, Debug, Serialize)]
pub struct HistoryDoc {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub schema_version: u32,
    pub pid: u32,
    pub sample_every_ms: u64,
    pub window_ms: u64,
    /// Oldest first.
    pub samples: Vec<SampleDoc>,
    /// Largest now first; "other" last.
    pub sites: Vec<SiteDoc>,
    pub growing: Vec<growth::GrowingSite>,
    /// Growth of each category that holds or held memory, in
    /// [`SiteCategory::ALL`] order.
    pub category_growth: Vec<growth::CategoryGrowth>,
    pub alerts: Vec<alert::AlertState>,
}

/// One sample in [`HistoryDoc`].
#[derive(Clone, Debug, Serialize)]
pub struct SampleDoc {
    #[serde(flatten)]
    pub totals: SampleTotals,
    /// Resident bytes (private + shared) by category name.
    pub categories: std::collections::BTreeMap<SiteCategory, u64>,
}

/// One call site's series in [`HistoryDoc`].
#[derive(Clone, Debug, Serialize)]
pub struct SiteDoc {
    pub key: String,
    pub label: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category: Option<SiteCategory>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subcategory: Option<&'static str>,
    /// Aligned with `samples`; null where the site held nothing.
    pub rss_bytes: Vec<Option<u64>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(key: &str, rss: u64) -> SitePoint {
        SitePoint {
            key: key.into(),
            label: format!("app::{key}"),
            category: SiteCategory::OtherCallSites,
            subcategory: "other",
            rss_bytes: rss,
        }
    }

    fn sample(t: u64, sites: &[(&str, u64)]) -> Sample {
        Sample {
            totals: SampleTotals {
                unix_ms: t,
                rss_bytes: sites.iter().map(|s| s.1).sum(),
                ..SampleTotals::default()
            },
            categories: [0; 7],
            sites: sites.iter().map(|&(k, v)| point(k, v)).collect(),
        }
    }

    fn config(max_sites: usize, samples: u64) -> HistoryConfig {
        HistoryConfig {
            sample_every: Duration::from_secs(1),
            window: Duration::from_secs(samples - 1),
            max_sites,
        }
    }

    #[test]
    fn the_ring_keeps_the_window_and_sites_keep_their_key() {
        let mut h = History::new(config(10, 4));
        assert_eq!(h.config().capacity(), 4);
        h.push(sample(0, &[("a", 10)]));
        h.push(sample(1000, &[("b", 5)]));
        h.push(sample(2000, &[("a", 30), ("b", 5)]));
        let doc = h.doc(7, 0, &[]);
        let a = doc.sites.iter().find(|s| s.key == "a").expect("a");
        assert_eq!(a.rss_bytes, vec![Some(10), None, Some(30)]);
        h.push(sample(3000, &[("a", 40)]));
        h.push(sample(4000, &[("a", 50)]));
        assert_eq!(h.len(), 4, "bounded by the window");
        assert_eq!(h.times(), vec![1000, 2000, 3000, 4000]);
        let doc = h.doc(7, 0, &[]);
        assert_eq!(doc.sites[0].key, "a");
        assert_eq!(
            doc.sites[0].rss_bytes,
            vec![None, Some(30), Some(40), Some(50)]
        );
        // b held nothing for a whole window: its series is dropped.
        for t in [5000, 6000, 7000] {
            h.push(sample(t, &[("a", 50)]));
        }
        assert_eq!(h.site_count(), 1);
    }

    #[test]
    fn sites_beyond_the_table_are_other_and_the_sums_stay_exact() {
        let mut h = History::new(config(2, 10));
        h.push(sample(0, &[("a", 100), ("b", 50), ("c", 10)]));
        // d is larger now than b (the smallest tracked): it takes b's place
        // and b's past goes to "other".
        h.push(sample(1000, &[("a", 100), ("b", 40), ("c", 10), ("d", 70)]));
        assert_eq!(h.site_count(), 2);
        let doc = h.doc(1, 0, &[]);
        let keys: Vec<&str> = doc.sites.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(keys, vec!["a", "d", OTHER_KEY]);
        let other = &doc.sites[2].rss_bytes;
        assert_eq!(other, &vec![Some(60), Some(50)]);
        for (i, total) in [160u64, 220].iter().enumerate() {
            let sum: u64 = doc.sites.iter().filter_map(|s| s.rss_bytes[i]).sum();
            assert_eq!(sum, *total, "sample {i}: sites + other = every site");
        }
    }

    #[test]
    fn the_memory_bound_is_what_the_readme_says() {
        let c = HistoryConfig::default();
        assert_eq!(c.capacity(), 361);
        // 500 sites + other + 7 categories, 8 bytes each, and the totals.
        let bound = c.memory_bound_bytes();
        assert!(bound < 2 << 20, "{bound}");
        assert!(HistoryConfig::new(Duration::from_millis(1), DEFAULT_WINDOW).is_err());
        let e = HistoryConfig::new(Duration::from_millis(100), Duration::from_secs(86400))
            .expect_err("864000 samples");
        assert!(e.contains("at most 10000"), "{e}");
        assert!(HistoryConfig::new(Duration::from_secs(10), Duration::from_secs(5)).is_err());
    }

    #[test]
    fn the_growing_section_names_the_site_that_grew() {
        let mut h = History::new(config(10, 20));
        for i in 0..10u64 {
            h.push(sample(
                i * 1000,
                &[("flat", 64 << 20), ("leak", i * (4 << 20))],
            ));
        }
        let growing = h.growing(16 << 20);
        assert_eq!(growing.len(), 1);
        assert_eq!(growing[0].key, "leak");
        assert_eq!(growing[0].growth.growth_bytes, 36 << 20);
        let text = h.growing_text(16 << 20);
        assert!(
            text.contains("Growing (RSS up more than 16.0 MiB"),
            "{text}"
        );
        assert!(
            text.contains("app::leak") && !text.contains("app::flat"),
            "{text}"
        );
        assert!(text.contains("+240.0 MiB"), "4 MiB a second: {text}");
        assert!(h.growing_text(1 << 30).is_empty());
    }
}
