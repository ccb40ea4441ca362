//! The reports as Prometheus metrics, in the Prometheus text exposition
//! format (version 0.0.4), written by `prometheus-client` (which escapes
//! label values: call-site names hold quotes, backslashes, `<>`, `::`).
//! Label values come from the target (`exe`, `site`): their control
//! characters are escaped first, as in the text report
//! ([`crate::text::printable`]), since the format keeps all but newline.
//!
//! [`render`] takes plain data ([`MetricsInput`]), built from a snapshot
//! ([`MetricsInput::from_snapshot`]) or from smaps_rollup totals plus an
//! attributed report and the session summary ([`AttributionInput::new`]).
//! Metrics (all bytes are resident bytes unless the name says otherwise):
//!
//! | metric | labels | from |
//! | --- | --- | --- |
//! | `memtrace_target_info` (1) | `pid`, `exe` | the process |
//! | `memtrace_target_{rss,pss,private,shared,anonymous,file_backed,swap}_bytes` | | smaps totals |
//! | `memtrace_region_rss_bytes` | `category` (`heap`, `anon-rw`, …) | snapshot (without `--trace`) |
//! | `memtrace_category_rss_bytes`, `memtrace_category_shared_rss_bytes` | `category` | attribution |
//! | `memtrace_subcategory_rss_bytes` (and `_shared_`) | `category`, `subcategory` | attribution |
//! | `memtrace_site_rss_bytes` (and `_shared_`) | `site`, `category`, `subcategory`; the rest as `site="other"` | attribution, top [`MetricsInput::top_sites`] |
//! | `memtrace_call_sites` | | attribution |
//! | `memtrace_{anon,attributed,untraced}_rss_bytes`, `memtrace_coverage_ratio` | | attribution |
//! | `memtrace_events_total` | `kind` | session summary |
//! | `memtrace_lost_events_total` | `reason` (`ring_buffer`, `pending`) | session summary |
//! | `memtrace_failed_calls_total`, `memtrace_{mapped,unmapped}_bytes_total` | | session summary |
//! | `memtrace_alert_firing` (0 or 1) | `rule` | alert rules |
//! | `memtrace_self_resident_bytes`, `memtrace_self_cpu_seconds_total` | | memtrace itself |
//!
//! `_rss_bytes` of the attribution are private anonymous bytes (the
//! kernel's `Anonymous`): sites plus untraced add up to
//! `memtrace_anon_rss_bytes`; shared anonymous memory is counted apart
//! (`_shared_rss_bytes`, listed only where there is some).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::attribution::report::AttributedReport;
use crate::session::stream::Summary;
use crate::snapshot::{Snapshot, Totals};

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Call sites listed by default; the rest are summed into `site="other"`.
pub const DEFAULT_TOP_SITES: usize = 20;

/// Everything one scrape shows, as plain data.
#[derive(Clone, Debug, Default)]
pub struct MetricsInput {
    /// The process reported on.
    pub pid: u32,
    /// Its executable, when readable.
    pub exe: Option<String>,
    /// Its memory totals: a snapshot's, or `smaps_rollup`'s.
    pub totals: Totals,
    /// RSS by snapshot category (`heap`, `anon-rw`, …); empty when the
    /// scrape read only `smaps_rollup`.
    pub regions: Vec<(&'static str, u64)>,
    /// Resident memory by call site, with tracing.
    pub attribution: Option<AttributionInput>,
    /// How many call sites get a series of their own; the rest are one
    /// `site="other"` series, so the number of series stays bounded.
    pub top_sites: usize,
    /// Alert rules (as written) and whether each is firing now.
    pub alerts: Vec<(String, bool)>,
    /// memtrace's own usage, when it could be read.
    pub own: Option<OwnUsage>,
}

impl MetricsInput {
    /// A snapshot's totals and categories (no attribution, no alerts).
    pub fn from_snapshot(snapshot: &Snapshot) -> MetricsInput {
        MetricsInput {
            pid: snapshot.pid,
            exe: snapshot
                .exe
                .as_ref()
                .map(|p| p.to_string_lossy().into_owned()),
            totals: snapshot.totals,
            regions: snapshot
                .categories
                .iter()
                .map(|c| (c.category.name(), c.totals.rss_bytes))
                .collect(),
            attribution: None,
            top_sites: DEFAULT_TOP_SITES,
            alerts: Vec::new(),
            own: OwnUsage::now(),
        }
    }
}

/// Resident anonymous memory by call site and category, and the tracing
/// session's counters.
#[derive(Clone, Debug, Default)]
pub struct AttributionInput {
    pub anon_rss_bytes: u64,
    pub attributed_rss_bytes: u64,
    pub untraced_rss_bytes: u64,
    /// Share of `anon_rss_bytes` attributed (0..=1).
    pub coverage: f64,
    pub categories: Vec<CategoryRss>,
    /// Every call site (rendering keeps the top ones).
    pub sites: Vec<SiteRss>,
    /// Events by kind since tracing began.
    pub events: Vec<(String, u64)>,
    /// Events lost by reason since tracing began.
    pub lost: Vec<(&'static str, u64)>,
    pub failed_calls: u64,
    pub mapped_bytes: u64,
    pub unmapped_bytes: u64,
}

/// One category of the attribution.
#[derive(Clone, Debug, Default)]
pub struct CategoryRss {
    pub category: String,
    pub rss_bytes: u64,
    pub shared_rss_bytes: u64,
    /// Its sub-categories holding memory: (name, rss, shared rss).
    pub subcategories: Vec<(String, u64, u64)>,
}

/// One call site of the attribution.
#[derive(Clone, Debug, Default)]
pub struct SiteRss {
    /// The call site as the text report shows it (`module::f (file.rs:12)
    /// via alloc::…`).
    pub site: String,
    pub category: String,
    pub subcategory: String,
    pub rss_bytes: u64,
    pub shared_rss_bytes: u64,
}

impl AttributionInput {
    /// The report's figures and the summary's counters.
    pub fn new(report: &AttributedReport, summary: &Summary) -> AttributionInput {
        AttributionInput {
            anon_rss_bytes: report.totals.anon_rss_bytes,
            attributed_rss_bytes: report.totals.attributed_rss_bytes,
            untraced_rss_bytes: report.totals.untraced_rss_bytes,
            coverage: report.coverage,
            categories: report
                .categories
                .iter()
                .map(|c| CategoryRss {
                    category: c.name.name().to_owned(),
                    rss_bytes: c.rss_bytes,
                    shared_rss_bytes: c.shared_rss_bytes,
                    subcategories: c
                        .subcategories
                        .iter()
                        .map(|s| (s.name.to_owned(), s.rss_bytes, s.shared_rss_bytes))
                        .collect(),
                })
                .collect(),
            sites: report
                .call_sites
                .iter()
                .map(|s| SiteRss {
                    site: s.label(),
                    category: s.category.name().to_owned(),
                    subcategory: s.subcategory.to_owned(),
                    rss_bytes: s.rss_bytes,
                    shared_rss_bytes: s.shared_rss_bytes,
                })
                .collect(),
            events: summary
                .events
                .iter()
                .map(|(k, n)| ((*k).to_owned(), *n))
                .collect(),
            lost: vec![
                ("ring_buffer", summary.lost.ring_buffer),
                ("pending", summary.lost.pending),
            ],
            failed_calls: summary.failed_calls,
            mapped_bytes: summary.bytes_mapped,
            unmapped_bytes: summary.bytes_unmapped,
        }
    }
}

/// The category's name as the JSON report spells it (`allocator_arenas`),
/// so metrics and JSON agree.
/// memtrace's own resident memory and CPU time.
#[derive(Clone, Copy, Debug, Default)]
pub struct OwnUsage {
    pub rss_bytes: u64,
    /// User plus system CPU time since memtrace started.
    pub cpu_seconds: f64,
}

impl OwnUsage {
    /// Read now: `/proc/self/statm` and `getrusage`. `None` if either fails.
    pub fn now() -> Option<OwnUsage> {
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        // SAFETY: no arguments.
        let page_size = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).ok()?;
        // SAFETY: an all-zero rusage is a valid value for the out pointer.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: valid out pointer.
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
            return None;
        }
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        Some(OwnUsage {
            rss_bytes: pages.saturating_mul(page_size),
            cpu_seconds: secs(usage.ru_utime) + secs(usage.ru_stime),
        })
    }
}

type Labels = Vec<(&'static str, String)>;
type BytesGauge = Gauge<u64, AtomicU64>;

/// A registry filled for one scrape.
struct Exposition {
    registry: Registry,
}

impl Exposition {
    fn gauge(&mut self, name: &str, help: &str, value: u64) {
        let g = BytesGauge::default();
        g.set(value);
        self.registry.register(name, help, g);
    }

    fn gauge_f64(&mut self, name: &str, help: &str, value: f64) {
        let g = Gauge::<f64, AtomicU64>::default();
        g.set(value);
        self.registry.register(name, help, g);
    }

    /// A labelled gauge; rows with equal labels add up.
    fn gauges(&mut self, name: &str, help: &str, rows: impl IntoIterator<Item = (Labels, u64)>) {
        let family = Family::<Labels, BytesGauge>::default();
        for (labels, v) in rows {
            family.get_or_create(&printable(labels)).inc_by(v);
        }
        self.registry.register(name, help, family);
    }

    /// A counter; `name` without `_total`, which the encoder adds.
    fn counter(&mut self, name: &str, help: &str, value: u64) {
        let c = Counter::<u64>::default();
        c.inc_by(value);
        self.registry.register(name, help, c);
    }

    fn counters(&mut self, name: &str, help: &str, rows: impl IntoIterator<Item = (Labels, u64)>) {
        let family = Family::<Labels, Counter<u64>>::default();
        for (labels, v) in rows {
            family.get_or_create(&printable(labels)).inc_by(v);
        }
        self.registry.register(name, help, family);
    }
}

/// `labels` with control characters in their values escaped: every labelled
/// series goes through here.
fn printable(labels: Labels) -> Labels {
    labels
        .into_iter()
        .map(|(k, v)| match crate::text::printable(&v) {
            std::borrow::Cow::Borrowed(_) => (k, v),
            std::borrow::Cow::Owned(escaped) => (k, escaped),
        })
        .collect()
}

/// The metrics of `input` in the Prometheus text format.
pub fn render(input: &MetricsInput) -> Result<String, fmt::Error> {
    let mut out = Exposition {
        registry: Registry::default(),
    };
    out.gauges(
        "memtrace_target_info",
        "The process memtrace reports on (value 1)",
        [(
            vec![
                ("pid", input.pid.to_string()),
                ("exe", input.exe.clone().unwrap_or_default()),
            ],
            1,
        )],
    );
    let t = &input.totals;
    for (name, help, v) in [
        ("rss", "Resident set size of the process", t.rss_bytes),
        ("pss", "Proportional set size of the process", t.pss_bytes),
        (
            "private",
            "Resident pages of the process mapped by no other process (USS)",
            t.private_bytes,
        ),
        (
            "shared",
            "Resident pages of the process also mapped by other processes",
            t.shared_bytes,
        ),
        (
            "anonymous",
            "Resident anonymous memory of the process",
            t.anonymous_bytes,
        ),
        (
            "file_backed",
            "Resident memory of the process that is not anonymous (page cache, shmem)",
            t.file_backed_bytes,
        ),
        ("swap", "Swapped-out memory of the process", t.swap_bytes),
    ] {
        out.gauge(&format!("memtrace_target_{name}_bytes"), help, v);
    }
    if !input.regions.is_empty() {
        out.gauges(
            "memtrace_region_rss_bytes",
            "Resident memory of the process by kind of mapping (snapshot category)",
            input
                .regions
                .iter()
                .map(|(c, v)| (vec![("category", (*c).to_owned())], *v)),
        );
    }
    if let Some(a) = &input.attribution {
        attribution(&mut out, a, input.top_sites);
    }
    out.gauges(
        "memtrace_alert_firing",
        "Whether an alert rule is firing now (1) or not (0)",
        input
            .alerts
            .iter()
            .map(|(rule, firing)| (vec![("rule", rule.clone())], u64::from(*firing))),
    );
    if let Some(own) = input.own {
        out.gauge(
            "memtrace_self_resident_bytes",
            "Resident memory of memtrace itself",
            own.rss_bytes,
        );
        let cpu = Counter::<f64, AtomicU64>::default();
        cpu.inc_by(own.cpu_seconds);
        out.registry.register(
            "memtrace_self_cpu_seconds",
            "User and system CPU time of memtrace itself",
            cpu,
        );
    }
    let mut text = String::new();
    prometheus_text::encode(&mut text, &out.registry)?;
    Ok(text)
}

fn attribution(out: &mut Exposition, a: &AttributionInput, top_sites: usize) {
    out.gauge(
        "memtrace_anon_rss_bytes",
        "Resident private anonymous memory of the process when the attribution was taken",
        a.anon_rss_bytes,
    );
    out.gauge(
        "memtrace_attributed_rss_bytes",
        "Resident private anonymous memory attributed to a traced call site",
        a.attributed_rss_bytes,
    );
    out.gauge(
        "memtrace_untraced_rss_bytes",
        "Resident private anonymous memory mapped before tracing began",
        a.untraced_rss_bytes,
    );
    out.gauge_f64(
        "memtrace_coverage_ratio",
        "Share of resident private anonymous memory attributed to a call site",
        a.coverage,
    );
    let cat = |c: &CategoryRss| vec![("category", c.category.clone())];
    out.gauges(
        "memtrace_category_rss_bytes",
        "Resident private anonymous memory by category",
        a.categories.iter().map(|c| (cat(c), c.rss_bytes)),
    );
    out.gauges(
        "memtrace_category_shared_rss_bytes",
        "Resident shared anonymous memory by category",
        a.categories.iter().map(|c| (cat(c), c.shared_rss_bytes)),
    );
    let subs = || {
        a.categories.iter().flat_map(|c| {
            c.subcategories.iter().map(move |(name, rss, shared)| {
                (
                    vec![
                        ("category", c.category.clone()),
                        ("subcategory", name.clone()),
                    ],
                    *rss,
                    *shared,
                )
            })
        })
    };
    out.gauges(
        "memtrace_subcategory_rss_bytes",
        "Resident private anonymous memory by sub-category (runtime or allocator)",
        subs().map(|(l, rss, _)| (l, rss)),
    );
    out.gauges(
        "memtrace_subcategory_shared_rss_bytes",
        "Resident shared anonymous memory by sub-category, where there is some",
        subs()
            .filter(|(_, _, shared)| *shared > 0)
            .map(|(l, _, shared)| (l, shared)),
    );
    let sites = top_sites_and_other(&a.sites, top_sites);
    out.gauges(
        "memtrace_site_rss_bytes",
        "Resident private anonymous memory by call site (the largest; the rest as site=\"other\")",
        sites.iter().map(|(l, rss, _)| (l.clone(), *rss)),
    );
    out.gauges(
        "memtrace_site_shared_rss_bytes",
        "Resident shared anonymous memory by call site, where there is some",
        sites
            .iter()
            .filter(|(_, _, shared)| *shared > 0)
            .map(|(l, _, shared)| (l.clone(), *shared)),
    );
    out.gauge(
        "memtrace_call_sites",
        "Call sites holding resident memory",
        a.sites.len() as u64,
    );
    out.counters(
        "memtrace_events",
        "Address-space changes traced, by kind",
        a.events
            .iter()
            .map(|(k, n)| (vec![("kind", k.clone())], *n)),
    );
    out.counters(
        "memtrace_lost_events",
        "Events the kernel side could not deliver, by reason",
        a.lost
            .iter()
            .map(|(r, n)| (vec![("reason", (*r).to_owned())], *n)),
    );
    out.counter(
        "memtrace_failed_calls",
        "Traced calls that failed (no change)",
        a.failed_calls,
    );
    out.counter(
        "memtrace_mapped_bytes",
        "Bytes newly mapped by traced calls",
        a.mapped_bytes,
    );
    out.counter(
        "memtrace_unmapped_bytes",
        "Bytes released by traced calls",
        a.unmapped_bytes,
    );
}

/// The `top` largest call sites (rows with the same labels merged first),
/// and one `site="other"` row with the rest when there is any: (labels,
/// rss, shared rss).
fn top_sites_and_other(sites: &[SiteRss], top: usize) -> Vec<(Labels, u64, u64)> {
    let mut merged: HashMap<Labels, (u64, u64)> = HashMap::new();
    for s in sites {
        let labels = vec![
            ("site", s.site.clone()),
            ("category", s.category.clone()),
            ("subcategory", s.subcategory.clone()),
        ];
        let e = merged.entry(labels).or_default();
        e.0 = e.0.saturating_add(s.rss_bytes);
        e.1 = e.1.saturating_add(s.shared_rss_bytes);
    }
    let mut rows: Vec<(Labels, u64, u64)> = merged
        .into_iter()
        .map(|(l, (rss, shared))| (l, rss, shared))
        .collect();
    rows.sort_by(|a, b| {
        (b.1.saturating_add(b.2))
            .cmp(&a.1.saturating_add(a.2))
            .then_with(|| a.0.cmp(&b.0))
    });
    if rows.len() > top {
        let rest = rows.split_off(top);
        let rss = rest.iter().map(|r| r.1).fold(0u64, u64::saturating_add);
        let shared = rest.iter().map(|r| r.2).fold(0u64, u64::saturating_add);
        rows.push((vec![("site", "other".to_owned())], rss, shared));
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(name: &str, rss: u64) -> SiteRss {
        SiteRss {
            site: name.to_owned(),
            category: "other_call_sites".into(),
            subcategory: "call_site".into(),
            rss_bytes: rss,
            shared_rss_bytes: 0,
        }
    }

    fn input_with_sites(sites: Vec<SiteRss>, top: usize) -> MetricsInput {
        MetricsInput {
            pid: 42,
            attribution: Some(AttributionInput {
                sites,
                ..AttributionInput::default()
            }),
            top_sites: top,
            ..MetricsInput::default()
        }
    }

    /// The sample lines of metric `name` (no comments), sorted: a
    /// family's series come in no particular order.
    fn samples<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
        let mut lines: Vec<&str> = text
            .lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            })
            .collect();
        lines.sort_unstable();
        lines
    }

    #[test]
    fn label_values_are_escaped_per_the_text_format() {
        let nasty = "<ns::Cache<T> as Grow>::grow \"fast\" C:\\path\nnext";
        let text = render(&input_with_sites(vec![site(nasty, 4096)], 20)).expect("render");
        // The newline is escaped as the text report shows it (`\n`), whose
        // backslash the format then escapes.
        assert_eq!(
            samples(&text, "memtrace_site_rss_bytes"),
            [
                "memtrace_site_rss_bytes{site=\"<ns::Cache<T> as Grow>::grow \\\"fast\\\" \
                 C:\\\\path\\\\nnext\",category=\"other_call_sites\",subcategory=\"call_site\"} 4096"
            ],
            "{text}"
        );
        // Nothing from the label leaks onto a line of its own.
        assert!(
            text.lines()
                .all(|l| l.starts_with('#') || l.starts_with("memtrace_") || l.is_empty())
        );
    }

    /// The executable's path and call-site names come from the target: no
    /// control character reaches a label value (the format would keep it).
    #[test]
    fn label_values_carry_no_control_character() {
        let mut input = input_with_sites(vec![site("app::\x1b[2Jgrow\x07", 4096)], 20);
        input.exe = Some("/tmp/x\x1b[31m\x07\u{9b}y".into());
        let text = render(&input).expect("render");
        assert_eq!(
            samples(&text, "memtrace_target_info"),
            ["memtrace_target_info{pid=\"42\",exe=\"/tmp/x\\\\x1b[31m\\\\x07\\\\u{9b}y\"} 1"],
            "{text}"
        );
        assert_eq!(
            samples(&text, "memtrace_site_rss_bytes"),
            [
                "memtrace_site_rss_bytes{site=\"app::\\\\x1b[2Jgrow\\\\x07\",\
                 category=\"other_call_sites\",subcategory=\"call_site\"} 4096"
            ],
            "{text}"
        );
        let bad: Vec<char> = text
            .chars()
            .filter(|&c| c.is_control() && c != '\n')
            .collect();
        assert!(bad.is_empty(), "control characters in the scrape: {bad:?}");
    }

    #[test]
    fn sites_beyond_the_top_are_one_other_series() {
        let sites = vec![
            site("a", 30),
            site("b", 50),
            site("c", 10),
            site("d", 5),
            site("b", 1),
        ];
        let text = render(&input_with_sites(sites, 2)).expect("render");
        let lines = samples(&text, "memtrace_site_rss_bytes");
        assert_eq!(
            lines,
            [
                "memtrace_site_rss_bytes{site=\"a\",category=\"other_call_sites\",subcategory=\"call_site\"} 30",
                "memtrace_site_rss_bytes{site=\"b\",category=\"other_call_sites\",subcategory=\"call_site\"} 51",
                "memtrace_site_rss_bytes{site=\"other\"} 15",
            ],
            "rows with equal labels add up, the rest is `other`: {text}"
        );
        assert_eq!(
            samples(&text, "memtrace_call_sites"),
            ["memtrace_call_sites 5"]
        );
        // No `other` when everything fits.
        let text = render(&input_with_sites(vec![site("a", 1)], 2)).expect("render");
        assert_eq!(samples(&text, "memtrace_site_rss_bytes").len(), 1, "{text}");
    }

    #[test]
    fn names_follow_prometheus_conventions() {
        let mut input = input_with_sites(vec![site("a", 1)], 20);
        input.regions = vec![("heap", 8192)];
        input.alerts = vec![
            ("rss>2GiB".into(), true),
            ("growth>100MiB/10m".into(), false),
        ];
        input.own = OwnUsage::now();
        if let Some(a) = &mut input.attribution {
            a.events = vec![("mmap".into(), 3)];
        }
        let text = render(&input).expect("render");
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let mut parts = line.split_whitespace().skip(2);
            let (name, kind) = (parts.next().expect("name"), parts.next().expect("type"));
            assert!(name.starts_with("memtrace_"), "{line}");
            match kind {
                "counter" => assert!(name.ends_with("_total"), "{line}"),
                "gauge" => assert!(
                    name.ends_with("_bytes")
                        || name.ends_with("_ratio")
                        || name.ends_with("_info")
                        || ["memtrace_call_sites", "memtrace_alert_firing"].contains(&name),
                    "{line}"
                ),
                other => panic!("unexpected type {other}: {line}"),
            }
        }
        assert_eq!(
            samples(&text, "memtrace_alert_firing"),
            [
                "memtrace_alert_firing{rule=\"growth>100MiB/10m\"} 0",
                "memtrace_alert_firing{rule=\"rss>2GiB\"} 1",
            ]
        );
        assert_eq!(
            samples(&text, "memtrace_events_total"),
            ["memtrace_events_total{kind=\"mmap\"} 3"]
        );
        assert_eq!(
            samples(&text, "memtrace_region_rss_bytes"),
            ["memtrace_region_rss_bytes{category=\"heap\"} 8192"]
        );
        assert!(
            text.contains("\nmemtrace_self_cpu_seconds_total "),
            "{text}"
        );
        assert!(
            text.contains("memtrace_target_info{pid=\"42\",exe=\"\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn snapshot_metrics_equal_the_snapshot() {
        let snapshot = crate::snapshot::capture_self().expect("snapshot of self");
        let text = render(&MetricsInput::from_snapshot(&snapshot)).expect("render");
        let value = |line: &str| -> u64 {
            line.rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("bad sample {line}"))
        };
        assert_eq!(
            samples(&text, "memtrace_target_rss_bytes")
                .iter()
                .map(|l| value(l))
                .collect::<Vec<_>>(),
            [snapshot.totals.rss_bytes]
        );
        let regions = samples(&text, "memtrace_region_rss_bytes");
        assert_eq!(
            regions.len(),
            crate::snapshot::classify::Category::ALL.len()
        );
        assert_eq!(
            regions.iter().map(|l| value(l)).sum::<u64>(),
            snapshot.totals.rss_bytes,
            "the categories add up to the total"
        );
        assert!(samples(&text, "memtrace_site_rss_bytes").is_empty());
    }
}
