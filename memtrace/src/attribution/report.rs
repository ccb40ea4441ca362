//! The attributed report: resident anonymous memory by call site and by
//! category, as text, one JSON object, folded stacks or a flame graph.
//! Shared anonymous memory (`MAP_SHARED | MAP_ANONYMOUS`) has totals and
//! per-site figures of its own (`shared_…`) beside the private ones, whose
//! totals stay the kernel's `Anonymous`.
//!
//! The report holds every call site; renderings list the top N of them
//! ([`AttributedReport::text`], [`ReportLine`]). A call site is a distinct
//! stack as [`crate::stack::callsite::StackTable::site`] decides it: origins
//! (threads, processes, times) that mapped from the same code are one part.
//! Each part is classified and labelled by [`super::classify`]; parts that
//! read the same (sub-category, call site, `via`) are one row.
//! The JSON form is a [`ReportLine`] (schema: `docs/json-schema.md`).

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    io,
};

use serde::Serialize;

use super::classify::{self, MemoryClass, Runtime, Shape};
use super::join::{AnonTotals, Attribution, ProcessTotals};
use super::ledger::{Ledger, Origin, OriginId};
use crate::{
    schema,
    stack::{callsite::CallStack, symbolize::Frame},
    units,
};
use memtrace_common::EventKind;

pub use super::classify::SiteCategory;

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

/// Class of a call site, from its stack and the ranges it made (the rules:
/// [`super::classify::RULES`]).
pub fn classify_site(
    origin: &Origin,
    shape: SiteShape,
    stack: &CallStack,
    reservation: Option<&CallStack>,
    named: bool,
) -> &'static MemoryClass {
    classify::classify_reserved(
        stack,
        reservation,
        Shape {
            kind: Some(origin.kind),
            named,
            exec: shape.exec,
            map_stack: shape.map_stack,
        },
    )
}

/// One row of the report: a call site, or several whose rows read the
/// same (same class, call site and `via`: stacks that differ only inside
/// the machinery, or beyond where unwinding stopped).
#[derive(Clone, Debug, Serialize)]
pub struct SiteReport {
    /// An origin (ledger id) of this row: the first of its largest stack.
    pub origin: u32,
    /// Resident private anonymous bytes.
    pub rss_bytes: u64,
    /// Resident shared anonymous bytes.
    pub shared_rss_bytes: u64,
    pub virtual_bytes: u64,
    pub mappings: usize,
    pub names: Vec<String>,
    pub category: SiteCategory,
    /// The sub-category ([`MemoryClass::name`]).
    pub subcategory: &'static str,
    /// The runtime or allocator the memory belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<Runtime>,
    /// The first frame outside libc, the loader and the allocation
    /// machinery ([`classify::Caller`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call_site: Option<Frame>,
    /// The machinery frame the call site called (`runtime.mallocgc`,
    /// `PyObject_Malloc`…).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<Frame>,
    /// The row's largest stack.
    pub stack: CallStack,
    /// How many distinct stacks the row holds.
    pub stack_count: usize,
    #[serde(skip)]
    pub class: &'static MemoryClass,
    /// The row's other stacks with their shares of it, for folded output
    /// and profiles; `stack` holds the rest.
    #[serde(skip)]
    pub other_stacks: Vec<(CallStack, StackShare)>,
}

/// The part of a row's memory one of its stacks mapped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackShare {
    /// Resident bytes, private + shared.
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub mappings: usize,
}

impl SiteReport {
    /// Everything resident it holds: private and shared anonymous.
    pub fn resident_bytes(&self) -> u64 {
        self.rss_bytes.saturating_add(self.shared_rss_bytes)
    }

    /// Each stack of the row with its resident bytes, largest first.
    pub fn stacks(&self) -> impl Iterator<Item = (&CallStack, u64)> {
        self.stack_shares()
            .map(|(s, share)| (s, share.resident_bytes))
    }

    /// Each stack of the row with its share of the row's memory, largest
    /// first; the shares add up to the row's figures.
    pub fn stack_shares(&self) -> impl Iterator<Item = (&CallStack, StackShare)> {
        let others = self
            .other_stacks
            .iter()
            .fold(StackShare::default(), |acc, (_, o)| StackShare {
                resident_bytes: acc.resident_bytes.saturating_add(o.resident_bytes),
                virtual_bytes: acc.virtual_bytes.saturating_add(o.virtual_bytes),
                mappings: acc.mappings.saturating_add(o.mappings),
            });
        let first = StackShare {
            resident_bytes: self.resident_bytes().saturating_sub(others.resident_bytes),
            virtual_bytes: self.virtual_bytes.saturating_sub(others.virtual_bytes),
            mappings: self.mappings.saturating_sub(others.mappings),
        };
        std::iter::once((&self.stack, first))
            .chain(self.other_stacks.iter().map(|(s, share)| (s, *share)))
    }

    /// `call site via machinery` for a terminal, with C++ parameter lists
    /// left out.
    pub fn label(&self) -> String {
        let at = self
            .call_site
            .as_ref()
            .map(short_display)
            .unwrap_or_else(|| "?".into());
        match &self.via {
            Some(via) => {
                let name = match &via.function {
                    Some(f) => crate::text::printable(classify::short_name(f)).into_owned(),
                    None => via.display(),
                };
                format!("{at} via {name}")
            }
            None => at,
        }
    }

    /// The row's identity across reports, for the history
    /// ([`crate::history`]): a hash of what makes it a row (class, call
    /// site and `via`, in full), so the same code keeps the same key in
    /// every report of a session — whichever origins, threads or ranges
    /// it holds now, and after its ranges were unmapped and mapped again.
    pub fn key(&self) -> String {
        use std::hash::{Hash as _, Hasher as _};
        // SipHash with fixed keys: the same in every report of a run.
        let mut h = std::hash::DefaultHasher::new();
        self.row_key().hash(&mut h);
        format!("{:016x}", h.finish())
    }

    /// What makes two parts one row: they read the same, in full.
    fn row_key(&self) -> (&'static str, String, String) {
        let full = |f: &Option<Frame>| f.as_ref().map(Frame::display).unwrap_or_default();
        (self.class.name, full(&self.call_site), full(&self.via))
    }
}

/// A frame as [`Frame::display`] shows it, without a C++ parameter list.
fn short_display(f: &Frame) -> String {
    let Some(func) = &f.function else {
        return f.display();
    };
    if f.module.is_none() {
        // A name, not a symbol: what exec mapped ("exec image .bss of …").
        return crate::text::printable(func).into_owned();
    }
    let name = classify::short_name(func);
    let text = match (&f.file, f.line) {
        (Some(file), Some(line)) => {
            format!(
                "{name} ({}:{line})",
                file.rsplit('/').next().unwrap_or(file)
            )
        }
        _ => name.to_string(),
    };
    crate::text::printable(&text).into_owned()
}

#[derive(Clone, Debug, Serialize)]
pub struct CategoryUsage {
    pub name: SiteCategory,
    pub label: &'static str,
    /// Resident private anonymous bytes.
    pub rss_bytes: u64,
    /// Resident shared anonymous bytes.
    pub shared_rss_bytes: u64,
    /// Its sub-categories holding memory, in rule-table order; their bytes
    /// add up to the category's.
    pub subcategories: Vec<SubcategoryUsage>,
}

/// Resident memory of one sub-category ([`MemoryClass`]).
#[derive(Clone, Debug, Serialize)]
pub struct SubcategoryUsage {
    pub name: &'static str,
    pub label: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<Runtime>,
    pub rss_bytes: u64,
    pub shared_rss_bytes: u64,
}

/// The attributed report of one process.
#[derive(Clone, Debug)]
pub struct AttributedReport {
    pub pid: u32,
    /// Resident memory and how much of it is attributed.
    pub totals: AnonTotals,
    /// Resident and swapped memory of the whole process (not in the JSON
    /// line: the history samples it).
    pub process: ProcessTotals,
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
    /// GNU build ids (lowercase hex) of the modules in the call sites'
    /// stacks that have one, by module path (for pprof profiles).
    pub build_ids: BTreeMap<String, String>,
    /// The moment it describes.
    pub at: ReportAt,
}

/// The moment a report describes (JSON `"at"`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportAt {
    /// Asked for (an HTTP request).
    #[default]
    Request,
    /// `--report-every`.
    Periodic,
    /// The highest anonymous RSS seen while tracing (`--report-at`).
    Peak,
    /// The target's exit stop: its memory just before it exited.
    Exit,
    /// Tracing ended (Ctrl-C, `--duration`) with the process alive.
    End,
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
    /// The GNU build id (hex) of a module of those stacks, if it has one.
    fn build_id(&mut self, _module: &str) -> Option<String> {
        None
    }
    /// The call site of the reservation `origin` committed into, if any
    /// ([`Origin::reserved_by`]).
    fn reservation_site(&self, _origin: &Origin) -> Option<u32> {
        None
    }
    /// The symbolized stack of that reservation.
    fn reservation_stack(&mut self, _origin: &Origin) -> Option<CallStack> {
        None
    }
}

/// Build the report: origins of the same call site and shape are one part,
/// symbolized and classified once; parts that read the same (class, call
/// site, `via`) are one row.
pub fn build(
    attribution: &Attribution,
    ledger: &Ledger,
    opts: ReportOptions,
    stacks: &mut dyn SiteStacks,
) -> AttributedReport {
    let shapes = site_shapes(ledger);
    // Parts keyed on the call site and what else decides the class (the
    // stack's functions are the same for one call site).
    type PartKey = (Option<u32>, Option<u32>, EventKind, bool, bool, bool);
    let mut part_index: HashMap<PartKey, usize> = HashMap::new();
    let mut parts: Vec<SiteReport> = Vec::new();
    for site in &attribution.sites {
        let origin = ledger.origin(site.origin);
        let shape = shapes.get(&site.origin).copied().unwrap_or_default();
        let named = !site.names.is_empty();
        let key = (
            stacks.site_of(origin),
            stacks.reservation_site(origin),
            origin.kind,
            named,
            shape.exec,
            shape.map_stack,
        );
        if let Some(&i) = part_index.get(&key) {
            let part = &mut parts[i];
            part.rss_bytes += site.rss_bytes;
            part.shared_rss_bytes += site.shared_rss_bytes;
            part.virtual_bytes += site.virtual_bytes;
            part.mappings += site.mappings;
            merge_names(&mut part.names, &site.names);
            continue;
        }
        let stack = stacks.stack_of(origin);
        let reservation = stacks.reservation_stack(origin);
        let class = classify_site(origin, shape, &stack, reservation.as_ref(), named);
        let who = classify::caller(&stack);
        let (call_site, via) = (who.call_site.cloned(), who.via.cloned());
        part_index.insert(key, parts.len());
        parts.push(SiteReport {
            origin: site.origin.as_u32(),
            rss_bytes: site.rss_bytes,
            shared_rss_bytes: site.shared_rss_bytes,
            virtual_bytes: site.virtual_bytes,
            mappings: site.mappings,
            names: site.names.clone(),
            category: class.category,
            subcategory: class.name,
            runtime: class.runtime,
            call_site,
            via,
            stack,
            stack_count: 1,
            class,
            other_stacks: Vec::new(),
        });
    }
    let by_size = |a: &SiteReport, b: &SiteReport| {
        b.resident_bytes()
            .cmp(&a.resident_bytes())
            .then(b.virtual_bytes.cmp(&a.virtual_bytes))
    };
    // Largest first, so each row keeps its largest part's stack and origin.
    parts.sort_by(by_size);
    let mut row_index: HashMap<(&'static str, String, String), usize> = HashMap::new();
    let mut sites: Vec<SiteReport> = Vec::new();
    for part in parts {
        match row_index.entry(part.row_key()) {
            std::collections::hash_map::Entry::Occupied(e) => {
                let row = &mut sites[*e.get()];
                row.rss_bytes += part.rss_bytes;
                row.shared_rss_bytes += part.shared_rss_bytes;
                row.virtual_bytes += part.virtual_bytes;
                row.mappings += part.mappings;
                row.stack_count += 1;
                merge_names(&mut row.names, &part.names);
                let share = StackShare {
                    resident_bytes: part.resident_bytes(),
                    virtual_bytes: part.virtual_bytes,
                    mappings: part.mappings,
                };
                row.other_stacks.push((part.stack, share));
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(sites.len());
                sites.push(part);
            }
        }
    }
    sites.sort_by(by_size);
    // (private, shared) bytes per class, then per category.
    let mut by_class: HashMap<&'static str, (u64, u64)> = HashMap::new();
    for site in &sites {
        let c = by_class.entry(site.class.name).or_default();
        c.0 += site.rss_bytes;
        c.1 += site.shared_rss_bytes;
    }
    let untraced = by_class.entry(classify::UNTRACED.name).or_default();
    untraced.0 += attribution.totals.untraced_rss_bytes;
    untraced.1 += attribution.totals.shared_untraced_rss_bytes;
    let classes = classify::all_classes();
    let categories = SiteCategory::ALL
        .iter()
        .map(|&c| {
            let subcategories: Vec<SubcategoryUsage> = classes
                .iter()
                .filter(|k| k.category == c)
                .filter_map(|k| {
                    let (rss_bytes, shared_rss_bytes) = by_class.get(k.name).copied()?;
                    (rss_bytes + shared_rss_bytes > 0).then_some(SubcategoryUsage {
                        name: k.name,
                        label: k.label,
                        runtime: k.runtime,
                        rss_bytes,
                        shared_rss_bytes,
                    })
                })
                .collect();
            CategoryUsage {
                name: c,
                label: c.label(),
                rss_bytes: subcategories.iter().map(|s| s.rss_bytes).sum(),
                shared_rss_bytes: subcategories.iter().map(|s| s.shared_rss_bytes).sum(),
                subcategories,
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
    let mut build_ids = BTreeMap::new();
    let modules = sites
        .iter()
        .flat_map(|s| s.stacks().flat_map(|(stack, _)| &stack.frames))
        .filter_map(|f| f.module.as_deref());
    for module in modules {
        if !build_ids.contains_key(module)
            && let Some(id) = stacks.build_id(module)
        {
            build_ids.insert(module.to_owned(), id);
        }
    }
    AttributedReport {
        pid: attribution.pid,
        totals: attribution.totals,
        process: attribution.process,
        coverage: attribution.coverage(),
        categories,
        call_sites: sites,
        traced_ranges,
        lost_events: 0,
        complete: true,
        build_ids,
        at: ReportAt::default(),
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
            "\n=== Resident anonymous memory by call site: pid {}{} ===",
            self.pid,
            match self.at {
                ReportAt::Peak => ", at its peak",
                ReportAt::Exit => ", at exit",
                _ => "",
            }
        );
        let _ = writeln!(
            s,
            "coverage: {:.1}% of {} anonymous RSS attributed to a call site ({} untraced)\n",
            self.coverage * 100.0,
            units::human(self.totals.anon_rss_bytes),
            units::human(self.totals.untraced_rss_bytes)
        );
        if self.totals.shared_anon_rss_bytes > 0 {
            let _ = writeln!(
                s,
                "shared anonymous: {} ({} attributed, {} untraced), counted apart from the \
                 anonymous RSS above\n",
                units::human(self.totals.shared_anon_rss_bytes),
                units::human(self.totals.shared_attributed_rss_bytes),
                units::human(self.totals.shared_untraced_rss_bytes)
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
                "  {:<50} {:>10}{}",
                c.label,
                units::human(c.rss_bytes),
                shared_note(c.shared_rss_bytes, "  + ", " shared")
            );
            // A category's only sub-category tells nothing more unless it
            // names a runtime.
            let detail = match c.subcategories.as_slice() {
                [] => false,
                [only] => only.runtime.is_some(),
                _ => true,
            };
            for sub in c.subcategories.iter().filter(|_| detail) {
                let _ = writeln!(
                    s,
                    "    {:<48} {:>10}{}",
                    sub.label,
                    units::human(sub.rss_bytes),
                    shared_note(sub.shared_rss_bytes, "  + ", " shared")
                );
            }
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
            let name = if site.names.is_empty() {
                String::new()
            } else {
                format!("  [{}]", crate::text::printable(&site.names.join(", ")))
            };
            let merged = if site.stack_count > 1 {
                format!("  ({} stacks)", site.stack_count)
            } else {
                String::new()
            };
            let _ = writeln!(
                s,
                "{:>10} {:>10} {:>5}  {:<16} {}{}{}{}",
                units::human(site.resident_bytes()),
                units::human(site.virtual_bytes),
                site.mappings,
                site.class.short,
                truncate(&site.label(), 120),
                name,
                merged,
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
    #[serde(flatten)]
    pub totals: &'a AnonTotals,
    /// Share of anonymous RSS attributed to a call site (0..=1).
    pub coverage: f64,
    pub categories: &'a [CategoryUsage],
    /// How many call sites hold memory; `call_sites` may list fewer.
    pub call_site_count: usize,
    /// Each with its labels ([`SiteLine`]).
    #[serde(serialize_with = "site_lines")]
    pub call_sites: &'a [SiteReport],
    /// See [`AttributedReport::lost_events`].
    pub lost_events: u64,
    /// See [`AttributedReport::complete`].
    pub complete: bool,
    /// See [`AttributedReport::at`].
    pub at: ReportAt,
    /// The ledger's anonymous ranges, adjacent ones coalesced (`--ranges`).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "hex_ranges_opt"
    )]
    pub traced_ranges: Option<&'a [[u64; 2]]>,
}

/// A call site in the JSON line: the row, and beside its ids the labels
/// the text report shows (`label`: call site `via` machinery, escaped;
/// `subcategory_label`), so readers such as the web page need no copy of
/// the label tables.
#[derive(Serialize)]
struct SiteLine<'a> {
    #[serde(flatten)]
    site: &'a SiteReport,
    label: String,
    subcategory_label: &'static str,
}

fn site_lines<S: serde::Serializer>(sites: &&[SiteReport], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(sites.iter().map(|site| SiteLine {
        site,
        label: site.label(),
        subcategory_label: site.class.label,
    }))
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
            totals: &r.totals,
            coverage: r.coverage,
            categories: &r.categories,
            call_site_count: r.call_sites.len(),
            call_sites: r.top_sites(top),
            lost_events: r.lost_events,
            complete: r.complete,
            at: r.at,
            traced_ranges: r.traced_ranges.as_deref(),
        }
    }
}

/// Add the names of `more` not already in `names`.
fn merge_names(names: &mut Vec<String>, more: &[String]) {
    for n in more {
        if !names.contains(n) {
            names.push(n.clone());
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
/// input format of flame graph tools, and of [`flamegraph`]. Inlined frames
/// are kept as frames of their own. Names come from the target: each frame
/// goes through [`crate::text::folded_frame`], so no name can split a line,
/// add a frame or a count, or put a control character in the SVG.
pub fn folded(report: &AttributedReport) -> Vec<String> {
    let mut lines = Vec::new();
    for (stack, weight) in report.call_sites.iter().flat_map(SiteReport::stacks) {
        if weight == 0 {
            continue;
        }
        let mut frames: Vec<String> = stack
            .frames
            .iter()
            .rev()
            .map(|f| match &f.function {
                Some(name) => crate::text::folded_frame(name),
                None => crate::text::folded_frame(&f.display()),
            })
            .collect();
        if frames.is_empty() {
            frames.push("[unknown]".into());
        }
        lines.push(format!("{} {weight}", frames.join(";")));
    }
    let untraced = report
        .totals
        .untraced_rss_bytes
        .saturating_add(report.totals.shared_untraced_rss_bytes);
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
            reserved_by: None,
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

    const P: u64 = crate::proc::PAGE_SIZE;
    const BASE: u64 = 0x7f00_0000_0000;

    /// A successful anonymous mmap of `pages` pages at page `page` from BASE,
    /// from call site `site`.
    fn mmap_event(page: u64, pages: u64, flags: i32, site: u32) -> crate::trace::event::Event {
        use crate::trace::event::{Call, Event};
        Event {
            time_ns: 1,
            pid: 1,
            tid: 1,
            call: Call::Mmap {
                addr: 0,
                len: pages * P,
                prot: (libc::PROT_READ | libc::PROT_WRITE) as u32,
                flags: (flags | libc::MAP_ANONYMOUS) as u32,
                fd: -1,
                offset: 0,
            },
            result: (BASE + page * P) as i64,
            stack_id: None,
            ip: 0x1000,
            ret_addr: None,
            user: None,
            call_stack: Some(site),
        }
    }

    /// A resident anonymous VMA of `pages` pages at page `page` from BASE.
    fn vma(page: u64, pages: u64) -> crate::proc::smaps::Vma {
        crate::proc::smaps::Vma {
            start: BASE + page * P,
            end: BASE + (page + pages) * P,
            rss: pages * P,
            anonymous: pages * P,
            ..Default::default()
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
        let mmap = |l: &mut Ledger, page: u64, pages: u64, flags: i32, site: u32| {
            l.apply(&mmap_event(page, pages, flags, site));
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
                r.totals.anon_rss_bytes,
                r.totals.attributed_rss_bytes,
                r.totals.untraced_rss_bytes
            ),
            (3 * P, 3 * P, 0),
            "the private totals do not include shared memory"
        );
        assert_eq!(
            (
                r.totals.shared_anon_rss_bytes,
                r.totals.shared_attributed_rss_bytes,
                r.totals.shared_untraced_rss_bytes
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
    fn a_call_site_keeps_its_key_when_its_ranges_change() {
        let key_of = |r: &AttributedReport, f: &str| {
            r.call_sites
                .iter()
                .find(|s| s.label().contains(f))
                .map(SiteReport::key)
                .unwrap_or_else(|| panic!("no {f} in the report"))
        };
        // Site 1 maps at page 0; later (a fresh ledger: its first range is
        // gone) site 2 maps first and site 1 maps again elsewhere, under
        // another origin.
        let mut before = Ledger::new();
        before.apply(&mmap_event(0, 4, libc::MAP_PRIVATE, 1));
        let at = super::super::join::attribute(&[vma(0, 4)], &before, &mut NoPages);
        let r1 = build(&at, &before, ReportOptions { ranges: false }, &mut Stacks);
        let mut after = Ledger::new();
        after.apply(&mmap_event(0, 4, libc::MAP_PRIVATE, 2));
        after.apply(&mmap_event(50, 8, libc::MAP_PRIVATE, 1));
        let vmas = [vma(0, 4), vma(50, 8)];
        let at = super::super::join::attribute(&vmas, &after, &mut NoPages);
        let r2 = build(&at, &after, ReportOptions { ranges: false }, &mut Stacks);
        assert_ne!(r1.call_sites[0].origin, r2.call_sites[0].origin);
        assert_eq!(key_of(&r1, "app::site1"), key_of(&r2, "app::site1"));
        assert_ne!(key_of(&r2, "app::site1"), key_of(&r2, "app::site2"));
    }

    #[test]
    fn sites_are_classified_by_name_shape_and_stack() {
        let mmap = origin(EventKind::Mmap);
        let plain = SiteShape::default();
        let cat = |o: &Origin, shape, funcs: &[&str], named| {
            classify_site(o, shape, &stack(funcs), None, named).category
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

    /// Go heap growth cut short at two depths: two stacks, one label.
    struct GoStacks;

    impl SiteStacks for GoStacks {
        fn site_of(&self, origin: &Origin) -> Option<u32> {
            origin.call_stack
        }
        fn stack_of(&mut self, origin: &Origin) -> CallStack {
            match origin.call_stack {
                Some(1) => stack(&["runtime.sysMmap", "runtime.systemstack"]),
                Some(2) => stack(&["runtime.sysMmap", "runtime.mallocgc"]),
                _ => stack(&["runtime.sysMmap", "runtime.persistentalloc"]),
            }
        }
    }

    #[test]
    fn rows_that_read_the_same_are_one_row_with_exact_totals() {
        let mut l = Ledger::new();
        for (page, pages, site) in [(0, 8, 1), (20, 4, 2), (40, 2, 3)] {
            l.apply(&mmap_event(page, pages, libc::MAP_PRIVATE, site));
        }
        let vmas = [vma(0, 8), vma(20, 4), vma(40, 2)];
        let at = super::super::join::attribute(&vmas, &l, &mut NoPages);
        let r = build(&at, &l, ReportOptions { ranges: false }, &mut GoStacks);
        let rows: Vec<(&str, u64, usize)> = r
            .call_sites
            .iter()
            .map(|s| (s.subcategory, s.rss_bytes, s.stack_count))
            .collect();
        assert_eq!(
            rows,
            vec![("go_heap", 12 * P, 2), ("go_metadata", 2 * P, 1)],
            "the two heap stacks read the same: one row"
        );
        let heap = &r.call_sites[0];
        assert_eq!(heap.label(), "runtime.sysMmap");
        assert_eq!(
            heap.stack.frames[1].function.as_deref(),
            Some("runtime.systemstack"),
            "the row keeps its largest stack"
        );
        let runtime = r
            .categories
            .iter()
            .find(|c| c.name == SiteCategory::RuntimeHeaps)
            .expect("runtime heaps");
        assert_eq!(runtime.rss_bytes, 14 * P);
        let subs: Vec<(&str, u64)> = runtime
            .subcategories
            .iter()
            .map(|s| (s.name, s.rss_bytes))
            .collect();
        assert_eq!(subs, vec![("go_metadata", 2 * P), ("go_heap", 12 * P)]);
        // Folded output keeps every stack with its own weight.
        let folded = folded(&r);
        assert_eq!(folded.len(), 3, "{folded:?}");
        assert!(
            folded.contains(&format!("runtime.systemstack;runtime.sysMmap {}", 8 * P)),
            "{folded:?}"
        );
        assert!(
            folded.contains(&format!("runtime.mallocgc;runtime.sysMmap {}", 4 * P)),
            "{folded:?}"
        );
        let text = r.text(false, 0);
        assert!(
            text.contains("Go heap") && text.contains("(2 stacks)"),
            "{text}"
        );
        let json = serde_json::to_value(ReportLine::new(&r, 0)).expect("serializes");
        assert_eq!(json["call_sites"][0]["subcategory"], "go_heap");
        // Labels beside the ids, as the text report shows them.
        assert_eq!(json["call_sites"][0]["subcategory_label"], "Go heap");
        assert_eq!(json["call_sites"][0]["label"], "runtime.sysMmap");
        assert_eq!(json["call_sites"][0]["runtime"], "go");
        assert_eq!(json["call_sites"][0]["stack_count"], 2);
        assert_eq!(json["categories"][3]["subcategories"][1]["name"], "go_heap");
    }

    /// Names from the target holding control characters and the folded
    /// format's own separators.
    struct HostileStacks;

    impl SiteStacks for HostileStacks {
        fn site_of(&self, origin: &Origin) -> Option<u32> {
            origin.call_stack
        }
        fn stack_of(&mut self, origin: &Origin) -> CallStack {
            match origin.call_stack {
                Some(1) => stack(&["app::leaf\n[untraced] 999\nnext", "main"]),
                Some(2) => stack(&["app::\x1b[2J\x07bell", "a;b c 12"]),
                _ => stack(&["app::\u{202e}rtl\u{ffff}\r"]),
            }
        }
    }

    /// Parse `xml` to its end: every tag closed in order, every attribute
    /// well formed.
    fn assert_well_formed(xml: &str) {
        use quick_xml::{Reader, events::Event};
        let mut reader = Reader::from_str(xml);
        let mut open = Vec::new();
        loop {
            match reader.read_event() {
                Ok(Event::Start(e)) => {
                    for a in e.attributes() {
                        a.unwrap_or_else(|err| panic!("attribute: {err}"));
                    }
                    open.push(e.name().as_ref().to_vec());
                }
                Ok(Event::Empty(e)) => {
                    for a in e.attributes() {
                        a.unwrap_or_else(|err| panic!("attribute: {err}"));
                    }
                }
                Ok(Event::End(e)) => {
                    assert_eq!(open.pop().as_deref(), Some(e.name().as_ref()));
                }
                Ok(Event::Eof) => break,
                Ok(_) => {}
                Err(e) => panic!(
                    "not well-formed XML at byte {}: {e}",
                    reader.buffer_position()
                ),
            }
        }
        assert!(open.is_empty(), "unclosed elements");
    }

    #[test]
    fn hostile_names_stay_inside_their_frame_in_folded_stacks_and_the_svg() {
        let mut l = Ledger::new();
        for (page, pages, site) in [(0, 8, 1), (20, 4, 2), (40, 2, 3)] {
            l.apply(&mmap_event(page, pages, libc::MAP_PRIVATE, site));
        }
        let vmas = [vma(0, 8), vma(20, 4), vma(40, 2)];
        let at = super::super::join::attribute(&vmas, &l, &mut NoPages);
        let r = build(&at, &l, ReportOptions { ranges: false }, &mut HostileStacks);
        let lines = folded(&r);
        // One line per stack, each its frames and one count.
        assert_eq!(
            lines,
            vec![
                format!("main;app::leaf\\n[untraced]_999\\nnext {}", 8 * P),
                format!("a_b_c_12;app::\\x1b[2J\\x07bell {}", 4 * P),
                format!("app::\\u{{202e}}rtl\\u{{ffff}}\\r {}", 2 * P),
            ]
        );
        let mut svg = Vec::new();
        flamegraph(&r, &mut svg).expect("flame graph");
        let svg = String::from_utf8(svg).expect("UTF-8");
        let bad: Vec<char> = svg
            .chars()
            .filter(|&c| {
                (c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
                    || matches!(c, '\u{fffe}' | '\u{ffff}')
            })
            .collect();
        assert!(bad.is_empty(), "characters XML cannot hold: {bad:?}");
        assert_well_formed(&svg);
        assert!(svg.contains("app::\\x1b[2J\\x07bell"), "{svg}");
    }

    /// Readers of the JSON (the web page) show the text report's labels,
    /// not the ids: each call site carries them.
    #[test]
    fn call_sites_carry_their_labels_beside_their_ids() {
        let mut l = Ledger::new();
        l.apply(&mmap_event(0, 4, libc::MAP_PRIVATE, 2));
        let at = super::super::join::attribute(&[vma(0, 4)], &l, &mut NoPages);
        let r = build(&at, &l, ReportOptions { ranges: false }, &mut HostileStacks);
        let json = serde_json::to_value(ReportLine::new(&r, 0)).expect("serializes");
        let site = &json["call_sites"][0];
        assert_eq!(site["subcategory"], "other_call_sites");
        assert_eq!(site["subcategory_label"], "other call sites");
        // The name as the target has it; the label as the text shows it.
        assert_eq!(site["call_site"]["function"], "app::\x1b[2J\x07bell");
        assert_eq!(site["label"], "app::\\x1b[2J\\x07bell");
    }
}
