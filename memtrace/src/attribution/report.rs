//! The attributed report: resident anonymous memory by call site and by
//! category, as text, one JSON object, folded stacks or a flame graph.
//! Shared anonymous memory (`MAP_SHARED | MAP_ANONYMOUS`) has totals and
//! per-site figures of its own (`shared_…`) beside the private ones, whose
//! totals stay the kernel's `Anonymous`.
//!
//! The report holds every call site; renderings list the top N of them
//! ([`AttributedReport::text`], [`ReportLine`]). A call site is a distinct
//! stack as [`crate::stack::callsite::StackTable::site`] decides it: origins
//! (threads, processes, times) that mapped from the same code are one row.
//! The JSON form is a [`ReportLine`] (schema: `docs/json-schema.md`).

use std::{collections::HashMap, fmt::Write as _, io};

use serde::Serialize;

use super::join::Attribution;
use super::ledger::{Ledger, Origin, OriginId};
use crate::{
    schema,
    stack::{callsite::CallStack, symbolize::Frame},
    units,
};
use memtrace_common::EventKind;

/// What kind of memory a call site makes. One per site; the order of the
/// checks in [`classify_site`] decides overlaps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SiteCategory {
    /// Ranges named with `prctl(PR_SET_VMA_ANON_NAME)`.
    NamedRegions,
    ThreadStacks,
    /// Executable anonymous memory: JIT compilers, trampolines.
    JitCode,
    /// Language runtimes' own heaps (Go, JVM, V8).
    RuntimeHeaps,
    /// malloc implementations: glibc arenas and brk heap, jemalloc, tcmalloc, mimalloc.
    AllocatorArenas,
    /// Everything else mapped by a known call site.
    OtherCallSites,
    /// Memory mapped before tracing began.
    Untraced,
}

impl SiteCategory {
    pub const ALL: [SiteCategory; 7] = [
        SiteCategory::NamedRegions,
        SiteCategory::AllocatorArenas,
        SiteCategory::ThreadStacks,
        SiteCategory::RuntimeHeaps,
        SiteCategory::JitCode,
        SiteCategory::OtherCallSites,
        SiteCategory::Untraced,
    ];

    pub fn label(self) -> &'static str {
        match self {
            SiteCategory::NamedRegions => "named regions",
            SiteCategory::ThreadStacks => "thread stacks",
            SiteCategory::JitCode => "JIT / executable anonymous",
            SiteCategory::RuntimeHeaps => "runtime heaps (Go, JVM, V8)",
            SiteCategory::AllocatorArenas => "allocator arenas (malloc)",
            SiteCategory::OtherCallSites => "other call sites",
            SiteCategory::Untraced => "untraced (mapped before tracing)",
        }
    }
}

/// Functions that show a mapping belongs to a malloc implementation.
const ALLOCATOR_FUNCS: &[&str] = &[
    "sysmalloc",
    "_int_malloc",
    "__libc_malloc",
    "malloc",
    "calloc",
    "realloc",
    "__libc_calloc",
    "__libc_realloc",
    "_int_realloc",
    "alloc_new_heap",
    "new_heap",
    "grow_heap",
    "_int_memalign",
    "__libc_memalign",
    "posix_memalign",
    "aligned_alloc",
    "arena_get2",
    "tcache_init",
];
const ALLOCATOR_PREFIXES: &[&str] = &[
    "je_",
    "jemalloc",
    "tcmalloc::",
    "mi_",
    "_mi_",
    "__GI___libc_malloc",
];
const RUNTIME_MARKERS: &[&str] = &[
    "runtime.sysAlloc",
    "runtime.sysReserve",
    "runtime.sysMap",
    "runtime.(*mheap)",
    "runtime.persistentalloc",
    "os::reserve_memory",
    "os::commit_memory",
    "v8::internal::",
    "v8::base::",
];
const THREAD_STACK_MARKERS: &[&str] = &["allocate_stack", "pthread_create", "__pthread_create"];

/// What the ranges of one call site look like, gathered in one pass over
/// the ledger.
#[derive(Clone, Copy, Debug, Default)]
pub struct SiteShape {
    /// Some range is executable anonymous memory.
    pub exec: bool,
    /// Some range was mapped with `MAP_STACK`.
    pub map_stack: bool,
}

/// The shape of every origin's live ranges.
pub fn site_shapes(ledger: &Ledger) -> HashMap<OriginId, SiteShape> {
    let mut out: HashMap<OriginId, SiteShape> = HashMap::new();
    for r in ledger.ranges() {
        let shape = out.entry(r.origin).or_default();
        shape.exec |= r.prot & libc::PROT_EXEC as u32 != 0 && !r.fd_backed();
        shape.map_stack |= r.flags & libc::MAP_STACK as u32 != 0;
    }
    out
}

/// Category of a call site, from its stack and the ranges it made.
pub fn classify_site(
    origin: &Origin,
    shape: SiteShape,
    stack: &CallStack,
    named: bool,
) -> SiteCategory {
    let funcs = || stack.frames.iter().filter_map(|f| f.function.as_deref());
    if named {
        return SiteCategory::NamedRegions;
    }
    let SiteShape { exec, map_stack } = shape;
    if map_stack || funcs().any(|f| THREAD_STACK_MARKERS.iter().any(|m| f.contains(m))) {
        return SiteCategory::ThreadStacks;
    }
    if exec {
        return SiteCategory::JitCode;
    }
    if funcs().any(|f| RUNTIME_MARKERS.iter().any(|m| f.contains(m))) {
        return SiteCategory::RuntimeHeaps;
    }
    let allocator = |f: &str| {
        let bare = f.trim_start_matches('_');
        ALLOCATOR_FUNCS
            .iter()
            .any(|a| bare == a.trim_start_matches('_'))
            || ALLOCATOR_PREFIXES.iter().any(|p| f.starts_with(p))
    };
    if origin.kind == EventKind::Brk || funcs().any(allocator) {
        return SiteCategory::AllocatorArenas;
    }
    SiteCategory::OtherCallSites
}

/// One call site in the report.
#[derive(Clone, Debug, Serialize)]
pub struct SiteReport {
    /// The first origin (ledger id) of this call site.
    pub origin: u32,
    /// Resident private anonymous bytes.
    pub rss_bytes: u64,
    /// Resident shared anonymous bytes.
    pub shared_rss_bytes: u64,
    pub virtual_bytes: u64,
    pub mappings: usize,
    pub names: Vec<String>,
    pub category: SiteCategory,
    /// The first frame outside libc, the loader and allocator internals.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call_site: Option<Frame>,
    pub stack: CallStack,
}

impl SiteReport {
    /// Everything resident it holds: private and shared anonymous.
    pub fn resident_bytes(&self) -> u64 {
        self.rss_bytes.saturating_add(self.shared_rss_bytes)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct CategoryUsage {
    pub name: SiteCategory,
    pub label: &'static str,
    /// Resident private anonymous bytes.
    pub rss_bytes: u64,
    /// Resident shared anonymous bytes.
    pub shared_rss_bytes: u64,
}

/// The attributed report of one process.
#[derive(Clone, Debug)]
pub struct AttributedReport {
    pub pid: u32,
    pub anon_rss_bytes: u64,
    pub attributed_rss_bytes: u64,
    pub untraced_rss_bytes: u64,
    /// Resident shared anonymous bytes, not part of `anon_rss_bytes`.
    pub shared_anon_rss_bytes: u64,
    /// `shared_attributed_rss_bytes + shared_untraced_rss_bytes ==
    /// shared_anon_rss_bytes`.
    pub shared_attributed_rss_bytes: u64,
    pub shared_untraced_rss_bytes: u64,
    /// Share of (private) anonymous RSS attributed to a call site (0..=1).
    pub coverage: f64,
    pub categories: Vec<CategoryUsage>,
    /// Every call site holding memory, largest RSS (private + shared)
    /// first.
    pub call_sites: Vec<SiteReport>,
    /// The ledger's anonymous ranges, adjacent ones coalesced, when asked
    /// for ([`ReportOptions::ranges`]).
    pub traced_ranges: Option<Vec<[u64; 2]>>,
    /// Events lost before the report was taken: ranges they created or
    /// changed may be attributed wrongly or count as untraced. The totals
    /// (`anon_rss_bytes`) come from smaps and stay exact.
    pub lost_events: u64,
    /// Every delivered event was applied when the report was taken. False
    /// when the exit hold ran out first: the newest changes are missing.
    pub complete: bool,
}

/// How to build the report.
#[derive(Clone, Copy, Debug)]
pub struct ReportOptions {
    /// Include the ledger's coalesced anonymous ranges.
    pub ranges: bool,
}

/// How the report reaches the session's stacks: which call site an origin
/// is, and the symbolized stack of a call site.
pub trait SiteStacks {
    /// The call site of `origin` (`None`: no stack was captured).
    fn site_of(&self, origin: &Origin) -> Option<u32>;
    /// The symbolized stack of `origin`, asked once per call site.
    fn stack_of(&mut self, origin: &Origin) -> CallStack;
}

/// Build the report: origins of the same call site and category are one
/// row, symbolized once.
pub fn build(
    attribution: &Attribution,
    ledger: &Ledger,
    opts: ReportOptions,
    stacks: &mut dyn SiteStacks,
) -> AttributedReport {
    let mut by_cat = std::collections::BTreeMap::new();
    let shapes = site_shapes(ledger);
    // Rows keyed on the call site and what else decides the category
    // (the stack's functions are the same for one call site).
    let mut rows: HashMap<(Option<u32>, EventKind, bool, bool, bool), usize> = HashMap::new();
    let mut sites: Vec<SiteReport> = Vec::new();
    for site in &attribution.sites {
        let origin = ledger.origin(site.origin);
        let shape = shapes.get(&site.origin).copied().unwrap_or_default();
        let named = !site.names.is_empty();
        let key = (
            stacks.site_of(origin),
            origin.kind,
            named,
            shape.exec,
            shape.map_stack,
        );
        if let Some(&i) = rows.get(&key) {
            let row = &mut sites[i];
            row.rss_bytes += site.rss_bytes;
            row.shared_rss_bytes += site.shared_rss_bytes;
            row.virtual_bytes += site.virtual_bytes;
            row.mappings += site.mappings;
            for n in &site.names {
                if !row.names.contains(n) {
                    row.names.push(n.clone());
                }
            }
            continue;
        }
        let stack = stacks.stack_of(origin);
        let category = classify_site(origin, shape, &stack, named);
        rows.insert(key, sites.len());
        sites.push(SiteReport {
            origin: site.origin.as_u32(),
            rss_bytes: site.rss_bytes,
            shared_rss_bytes: site.shared_rss_bytes,
            virtual_bytes: site.virtual_bytes,
            mappings: site.mappings,
            names: site.names.clone(),
            category,
            call_site: stack.user_site().cloned(),
            stack,
        });
    }
    // (private, shared) bytes per category.
    for site in &sites {
        let cat: &mut (u64, u64) = by_cat.entry(site.category).or_default();
        cat.0 += site.rss_bytes;
        cat.1 += site.shared_rss_bytes;
    }
    let untraced = by_cat.entry(SiteCategory::Untraced).or_default();
    untraced.0 += attribution.untraced_rss_bytes;
    untraced.1 += attribution.shared_untraced_rss_bytes;
    sites.sort_by(|a, b| {
        b.resident_bytes()
            .cmp(&a.resident_bytes())
            .then(b.virtual_bytes.cmp(&a.virtual_bytes))
    });
    let categories = SiteCategory::ALL
        .iter()
        .map(|c| {
            let (rss_bytes, shared_rss_bytes) = by_cat.get(c).copied().unwrap_or_default();
            CategoryUsage {
                name: *c,
                label: c.label(),
                rss_bytes,
                shared_rss_bytes,
            }
        })
        .collect();
    let traced_ranges = opts.ranges.then(|| {
        let mut out: Vec<[u64; 2]> = Vec::new();
        for r in ledger.ranges().filter(|r| !r.fd_backed()) {
            match out.last_mut() {
                Some(last) if last[1] == r.start => last[1] = r.end,
                _ => out.push([r.start, r.end]),
            }
        }
        out
    });
    AttributedReport {
        pid: attribution.pid,
        anon_rss_bytes: attribution.anon_rss_bytes,
        attributed_rss_bytes: attribution.attributed_rss_bytes,
        untraced_rss_bytes: attribution.untraced_rss_bytes,
        shared_anon_rss_bytes: attribution.shared_anon_rss_bytes,
        shared_attributed_rss_bytes: attribution.shared_attributed_rss_bytes,
        shared_untraced_rss_bytes: attribution.shared_untraced_rss_bytes,
        coverage: attribution.coverage(),
        categories,
        call_sites: sites,
        traced_ranges,
        lost_events: 0,
        complete: true,
    }
}

impl AttributedReport {
    /// The first `top` call sites (all when 0).
    pub fn top_sites(&self, top: usize) -> &[SiteReport] {
        if top == 0 {
            &self.call_sites
        } else {
            &self.call_sites[..top.min(self.call_sites.len())]
        }
    }

    /// The report for a terminal, listing the first `top` call sites (all
    /// when 0); `verbose` lists every frame.
    pub fn text(&self, verbose: bool, top: usize) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "\n=== Resident anonymous memory by call site: pid {} ===",
            self.pid
        );
        let _ = writeln!(
            s,
            "coverage: {:.1}% of {} anonymous RSS attributed to a call site ({} untraced)\n",
            self.coverage * 100.0,
            units::human(self.anon_rss_bytes),
            units::human(self.untraced_rss_bytes)
        );
        if self.shared_anon_rss_bytes > 0 {
            let _ = writeln!(
                s,
                "shared anonymous: {} ({} attributed, {} untraced), counted apart from the \
                 anonymous RSS above\n",
                units::human(self.shared_anon_rss_bytes),
                units::human(self.shared_attributed_rss_bytes),
                units::human(self.shared_untraced_rss_bytes)
            );
        }
        if self.lost_events > 0 {
            let _ = writeln!(
                s,
                "!! {} events were lost: ranges they touched may be attributed wrongly or \
                 count as untraced (the totals are exact)\n",
                self.lost_events
            );
        }
        if !self.complete {
            let _ = writeln!(
                s,
                "!! possibly incomplete: the exit hold ran out before every event was \
                 applied (raise --exit-hold); the newest changes are missing\n"
            );
        }
        let _ = writeln!(s, "By category:");
        for c in &self.categories {
            let _ = writeln!(
                s,
                "  {:<34} {:>10}{}",
                c.label,
                units::human(c.rss_bytes),
                shared_note(c.shared_rss_bytes, "  + ", " shared")
            );
        }
        let _ = writeln!(
            s,
            "\nTop {} of {} call sites by RSS (private + shared):",
            self.top_sites(top).len(),
            self.call_sites.len()
        );
        let _ = writeln!(
            s,
            "{:>10} {:>10} {:>5}  {:<16} CALL SITE",
            "RSS", "VIRTUAL", "MAPS", "CATEGORY"
        );
        for site in self.top_sites(top) {
            let cat = match site.category {
                SiteCategory::NamedRegions => "named",
                SiteCategory::ThreadStacks => "thread stack",
                SiteCategory::JitCode => "jit/exec",
                SiteCategory::RuntimeHeaps => "runtime heap",
                SiteCategory::AllocatorArenas => "allocator",
                SiteCategory::OtherCallSites => "call site",
                SiteCategory::Untraced => "untraced",
            };
            let name = if site.names.is_empty() {
                String::new()
            } else {
                format!("  [{}]", crate::text::printable(&site.names.join(", ")))
            };
            let at = site
                .call_site
                .as_ref()
                .map(Frame::display)
                .unwrap_or_else(|| "?".into());
            let _ = writeln!(
                s,
                "{:>10} {:>10} {:>5}  {:<16} {}{}{}",
                units::human(site.resident_bytes()),
                units::human(site.virtual_bytes),
                site.mappings,
                cat,
                truncate(&at, 90),
                name,
                shared_note(site.shared_rss_bytes, "  (", " shared)")
            );
            if verbose {
                for f in &site.stack.frames {
                    let _ = writeln!(s, "{:>46}{}", "", truncate(&f.display(), 100));
                }
            }
        }
        s
    }
}

/// `"{before}SIZE{after}"` when `bytes` is not 0, else nothing: shared
/// memory is rare, so it is only mentioned where there is some.
fn shared_note(bytes: u64, before: &str, after: &str) -> String {
    if bytes == 0 {
        String::new()
    } else {
        format!("{before}{}{after}", units::human(bytes))
    }
}

/// The attributed report as a JSON line, listing the first `top` call
/// sites.
#[derive(Debug, Serialize)]
pub struct ReportLine<'a> {
    pub schema_version: u32,
    pub pid: u32,
    pub anon_rss_bytes: u64,
    pub attributed_rss_bytes: u64,
    pub untraced_rss_bytes: u64,
    /// See [`AttributedReport::shared_anon_rss_bytes`].
    pub shared_anon_rss_bytes: u64,
    pub shared_attributed_rss_bytes: u64,
    pub shared_untraced_rss_bytes: u64,
    /// Share of anonymous RSS attributed to a call site (0..=1).
    pub coverage: f64,
    pub categories: &'a [CategoryUsage],
    /// How many call sites hold memory; `call_sites` may list fewer.
    pub call_site_count: usize,
    pub call_sites: &'a [SiteReport],
    /// See [`AttributedReport::lost_events`].
    pub lost_events: u64,
    /// See [`AttributedReport::complete`].
    pub complete: bool,
    /// The ledger's anonymous ranges, adjacent ones coalesced (`--ranges`).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "hex_ranges_opt"
    )]
    pub traced_ranges: Option<&'a [[u64; 2]]>,
}

fn hex_ranges_opt<S: serde::Serializer>(v: &Option<&[[u64; 2]]>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(r) => schema::hex_ranges(r, s),
        None => s.serialize_none(),
    }
}

impl<'a> ReportLine<'a> {
    /// `top` = 0 lists every call site.
    pub fn new(r: &'a AttributedReport, top: usize) -> ReportLine<'a> {
        ReportLine {
            schema_version: schema::SCHEMA_VERSION,
            pid: r.pid,
            anon_rss_bytes: r.anon_rss_bytes,
            attributed_rss_bytes: r.attributed_rss_bytes,
            untraced_rss_bytes: r.untraced_rss_bytes,
            shared_anon_rss_bytes: r.shared_anon_rss_bytes,
            shared_attributed_rss_bytes: r.shared_attributed_rss_bytes,
            shared_untraced_rss_bytes: r.shared_untraced_rss_bytes,
            coverage: r.coverage,
            categories: &r.categories,
            call_site_count: r.call_sites.len(),
            call_sites: r.top_sites(top),
            lost_events: r.lost_events,
            complete: r.complete,
            traced_ranges: r.traced_ranges.as_deref(),
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max - 1).collect();
        t.push('…');
        t
    }
}

/// Folded stacks (`root;…;leaf BYTES`), one line per call site weighted by
/// its RSS (private + shared anonymous), plus one for untraced memory: the
/// input format of flame graph tools. Inlined frames are kept as frames of
/// their own.
pub fn folded(report: &AttributedReport) -> Vec<String> {
    let mut lines = Vec::new();
    for site in &report.call_sites {
        let weight = site.resident_bytes();
        if weight == 0 {
            continue;
        }
        let mut frames: Vec<String> = site
            .stack
            .frames
            .iter()
            .rev()
            .map(|f| {
                f.function
                    .clone()
                    .unwrap_or_else(|| f.display())
                    .replace([';', ' '], "_")
            })
            .collect();
        if frames.is_empty() {
            frames.push("[unknown]".into());
        }
        lines.push(format!("{} {weight}", frames.join(";")));
    }
    let untraced = report
        .untraced_rss_bytes
        .saturating_add(report.shared_untraced_rss_bytes);
    if untraced > 0 {
        lines.push(format!("[untraced] {untraced}"));
    }
    lines
}

/// An SVG flame graph of resident memory by call stack.
pub fn flamegraph(report: &AttributedReport, out: impl io::Write) -> io::Result<()> {
    let lines = folded(report);
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = format!(
        "Resident anonymous memory of pid {} by call stack",
        report.pid
    );
    opts.count_name = "bytes".into();
    inferno::flamegraph::from_lines(&mut opts, lines.iter().map(String::as_str), out)
        .map_err(|e| io::Error::other(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(kind: EventKind) -> Origin {
        Origin {
            kind,
            stack_id: None,
            call_stack: None,
            ret_addr: None,
            ip: 0,
            tid: 1,
            time_ns: 0,
            events: 1,
        }
    }

    fn stack(funcs: &[&str]) -> CallStack {
        CallStack {
            frames: funcs
                .iter()
                .map(|f| Frame {
                    address: 1,
                    function: Some((*f).into()),
                    file: None,
                    line: None,
                    module: Some("/bin/x".into()),
                    module_offset: Some(0),
                    inlined: false,
                })
                .collect(),
        }
    }

    /// Stacks keyed on the test events' call-stack ids.
    struct Stacks;

    impl SiteStacks for Stacks {
        fn site_of(&self, origin: &Origin) -> Option<u32> {
            origin.call_stack
        }
        fn stack_of(&mut self, origin: &Origin) -> CallStack {
            stack(&[&format!("app::site{}", origin.call_stack.unwrap_or(0))])
        }
    }

    /// Every page count query fails: the tests below need none.
    struct NoPages;

    impl crate::proc::pagemap::PageCounter for NoPages {
        fn anon_resident_pages(&mut self, _: u64, _: u64) -> io::Result<u64> {
            Err(io::Error::other("not expected"))
        }
        fn resident_pages(&mut self, _: u64, _: u64) -> io::Result<u64> {
            Err(io::Error::other("not expected"))
        }
    }

    #[test]
    fn the_report_says_when_it_may_be_wrong() {
        let l = Ledger::new();
        let attribution = super::super::join::attribute(&[], &l, &mut NoPages);
        let mut r = build(
            &attribution,
            &l,
            ReportOptions { ranges: false },
            &mut Stacks,
        );
        assert!(
            !r.text(false, 10).contains("!!"),
            "a clean report has no warning"
        );
        r.lost_events = 12;
        r.complete = false;
        let text = r.text(false, 10);
        assert!(text.contains("!! 12 events were lost"), "{text}");
        assert!(text.contains("!! possibly incomplete"), "{text}");
        let json = serde_json::to_value(ReportLine::new(&r, 10)).expect("json");
        assert_eq!(json["lost_events"], 12);
        assert_eq!(json["complete"], false);
    }

    #[test]
    fn shared_memory_is_reported_apart() {
        use crate::proc::smaps::{Perms, Vma};
        use crate::trace::event::{Call, Event};
        const P: u64 = crate::proc::PAGE_SIZE;
        const BASE: u64 = 0x7f00_0000_0000;
        let mmap = |l: &mut Ledger, page: u64, pages: u64, flags: i32, site: u32| {
            let call = Call::Mmap {
                addr: 0,
                len: pages * P,
                prot: (libc::PROT_READ | libc::PROT_WRITE) as u32,
                flags: (flags | libc::MAP_ANONYMOUS) as u32,
                fd: -1,
                offset: 0,
            };
            l.apply(&Event {
                time_ns: 1,
                duration_ns: 1,
                pid: 1,
                tid: 1,
                call,
                result: (BASE + page * P) as i64,
                stack_id: None,
                ip: 0x1000,
                ret_addr: None,
                user: None,
                call_stack: Some(site),
            });
        };
        let mut l = Ledger::new();
        mmap(&mut l, 0, 4, libc::MAP_PRIVATE, 1);
        mmap(&mut l, 10, 16, libc::MAP_SHARED, 2);
        let vmas = [
            Vma {
                start: BASE,
                end: BASE + 4 * P,
                rss: 3 * P,
                anonymous: 3 * P,
                ..Vma::default()
            },
            Vma {
                start: BASE + 10 * P,
                end: BASE + 26 * P,
                rss: 16 * P,
                shared_dirty: 16 * P,
                perms: Perms {
                    read: true,
                    write: true,
                    exec: false,
                    shared: true,
                },
                name: "/dev/zero (deleted)".into(),
                deleted: true,
                ..Vma::default()
            },
            // Shared anonymous memory mapped before tracing.
            Vma {
                start: BASE + 30 * P,
                end: BASE + 32 * P,
                rss: 2 * P,
                perms: Perms {
                    read: true,
                    write: false,
                    exec: false,
                    shared: true,
                },
                name: "/dev/zero (deleted)".into(),
                deleted: true,
                ..Vma::default()
            },
        ];
        let at = super::super::join::attribute(&vmas, &l, &mut NoPages);
        let r = build(&at, &l, ReportOptions { ranges: false }, &mut Stacks);
        assert_eq!(
            (
                r.anon_rss_bytes,
                r.attributed_rss_bytes,
                r.untraced_rss_bytes
            ),
            (3 * P, 3 * P, 0),
            "the private totals do not include shared memory"
        );
        assert_eq!(
            (
                r.shared_anon_rss_bytes,
                r.shared_attributed_rss_bytes,
                r.shared_untraced_rss_bytes
            ),
            (18 * P, 16 * P, 2 * P)
        );
        let first = &r.call_sites[0];
        assert_eq!((first.rss_bytes, first.shared_rss_bytes), (0, 16 * P));
        assert_eq!(
            r.call_sites[1].rss_bytes,
            3 * P,
            "sorted by private + shared"
        );
        let cat = |c: SiteCategory| {
            let u = r
                .categories
                .iter()
                .find(|u| u.name == c)
                .expect("every category");
            (u.rss_bytes, u.shared_rss_bytes)
        };
        assert_eq!(cat(SiteCategory::OtherCallSites), (3 * P, 16 * P));
        assert_eq!(cat(SiteCategory::Untraced), (0, 2 * P));

        let text = r.text(false, 0);
        assert!(
            text.contains("shared anonymous: 72.0 KiB (64.0 KiB attributed, 8.0 KiB untraced)"),
            "{text}"
        );
        let site_line = text
            .lines()
            .find(|l| l.contains("app::site2"))
            .unwrap_or_else(|| panic!("no line for the shared site: {text}"));
        assert!(
            site_line.trim_start().starts_with("64.0 KiB")
                && site_line.ends_with("(64.0 KiB shared)"),
            "{site_line}"
        );

        let folded: u64 = folded(&r)
            .iter()
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
            .sum();
        assert_eq!(folded, 21 * P, "folded weights: private + shared");

        let json = serde_json::to_value(ReportLine::new(&r, 0)).expect("serializes");
        assert_eq!(json["shared_anon_rss_bytes"].as_u64(), Some(18 * P));
        assert_eq!(
            json["call_sites"][0]["shared_rss_bytes"].as_u64(),
            Some(16 * P)
        );
        assert_eq!(
            json["categories"][6]["shared_rss_bytes"].as_u64(),
            Some(2 * P)
        );
    }

    #[test]
    fn sites_are_classified_by_name_shape_and_stack() {
        let mmap = origin(EventKind::Mmap);
        let plain = SiteShape::default();
        let cat = |o: &Origin, shape, funcs: &[&str], named| {
            classify_site(o, shape, &stack(funcs), named)
        };
        assert_eq!(
            cat(&mmap, plain, &["app::cache"], true),
            SiteCategory::NamedRegions
        );
        let stack_shape = SiteShape {
            map_stack: true,
            ..plain
        };
        assert_eq!(
            cat(&mmap, stack_shape, &["app::spawn"], false),
            SiteCategory::ThreadStacks
        );
        assert_eq!(
            cat(&mmap, plain, &["allocate_stack", "pthread_create"], false),
            SiteCategory::ThreadStacks
        );
        let exec = SiteShape {
            exec: true,
            ..plain
        };
        assert_eq!(
            cat(&mmap, exec, &["jit::emit"], false),
            SiteCategory::JitCode
        );
        assert_eq!(
            cat(
                &mmap,
                plain,
                &["runtime.sysAlloc", "runtime.(*mheap).grow"],
                false
            ),
            SiteCategory::RuntimeHeaps
        );
        assert_eq!(
            cat(
                &mmap,
                plain,
                &["sysmalloc", "_int_malloc", "app::load"],
                false
            ),
            SiteCategory::AllocatorArenas
        );
        assert_eq!(
            cat(&mmap, plain, &["je_extent_alloc"], false),
            SiteCategory::AllocatorArenas
        );
        assert_eq!(
            cat(&origin(EventKind::Brk), plain, &["app::grow"], false),
            SiteCategory::AllocatorArenas
        );
        assert_eq!(
            cat(&mmap, plain, &["app::map_file"], false),
            SiteCategory::OtherCallSites
        );
    }
}
