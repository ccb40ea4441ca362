//! Render a [`Snapshot`] as text or JSON.
//!
//! The JSON schema is documented on [`JsonReport`] and in
//! `docs/json-schema.md`; it is versioned by [`SCHEMA_VERSION`].

use std::fmt::Write as _;

use serde::Serialize;

use super::classify::{Category, Group};
use super::{CategoryUsage, NamedUsage, Snapshot, Totals};
use crate::proc::smaps::Vma;
use crate::text::printable;
use crate::units::Human;

pub use crate::schema::SCHEMA_VERSION;

/// Default number of regions in the top-N table.
pub const DEFAULT_TOP: usize = 20;

/// Lines of the text report aim to fit this width.
const WIDTH: usize = 100;

/// What to include and how to print sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Number of regions in the top-N table (largest RSS first).
    pub top: usize,
    /// List every region instead of the top N.
    pub all: bool,
    /// Print exact byte counts instead of human units (text only; JSON is always bytes).
    pub exact_bytes: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            top: DEFAULT_TOP,
            all: false,
            exact_bytes: false,
        }
    }
}

/// Indices into `snapshot.vmas` of the regions to list: the `top` largest
/// by RSS (or all of them), largest first, ties in address order.
///
/// Selects before sorting, so the top 20 of 60,000 regions costs O(n).
pub fn top_regions(snapshot: &Snapshot, opts: &Options) -> Vec<usize> {
    let vmas = &snapshot.vmas;
    let mut idx: Vec<usize> = (0..vmas.len()).collect();
    let order = |a: &usize, b: &usize| vmas[*b].rss.cmp(&vmas[*a].rss).then(a.cmp(b));
    let n = if opts.all {
        idx.len()
    } else {
        opts.top.min(idx.len())
    };
    if n < idx.len() {
        if n == 0 {
            return Vec::new();
        }
        idx.select_nth_unstable_by(n - 1, order);
        idx.truncate(n);
    }
    idx.sort_unstable_by(order);
    idx
}

/// Render the text report.
pub fn render_text(snapshot: &Snapshot, opts: &Options) -> String {
    let mut out = String::with_capacity(8 * 1024);
    let sz = |b: u64| -> String {
        if opts.exact_bytes {
            b.to_string()
        } else {
            Human(b).to_string()
        }
    };
    let exe = snapshot.exe.as_ref().map_or_else(
        || "?".to_owned(),
        |p| printable(&p.display().to_string()).into_owned(),
    );
    let _ = writeln!(
        out,
        "=== Memory breakdown: pid {} ({}), {} regions ===",
        snapshot.pid,
        exe,
        snapshot.vmas.len()
    );

    // Category table.
    let w = if opts.exact_bytes { 13 } else { 10 };
    let _ = writeln!(
        out,
        "\n{:<34} {:>w$} {:>w$} {:>w$} {:>w$} {:>7}",
        "CATEGORY", "RSS", "PSS", "PRIVATE", "SWAP", "REGIONS"
    );
    let row = |out: &mut String, label: &str, t: &Totals| {
        let label = truncate_end(label, 34);
        let _ = writeln!(
            out,
            "{:<34} {:>w$} {:>w$} {:>w$} {:>w$} {:>7}",
            label,
            sz(t.rss_bytes),
            sz(t.pss_bytes),
            sz(t.private_bytes),
            sz(t.swap_bytes),
            t.vma_count
        );
    };
    let mut group: Option<Group> = None;
    for c in &snapshot.categories {
        if group != Some(c.group) {
            group = Some(c.group);
            let _ = writeln!(out, "{}:", c.group.label());
        }
        if c.category == Category::NamedAnon {
            for n in &snapshot.named {
                let label = if n.shmem {
                    format!("  [anon_shmem:{}]", printable(&n.name))
                } else {
                    format!("  [anon:{}]", printable(&n.name))
                };
                row(&mut out, &label, &n.totals);
            }
            row(&mut out, "  Subtotal", &c.totals);
        } else {
            row(&mut out, &format!("  {}", c.label), &c.totals);
        }
    }

    // Totals block.
    let t = &snapshot.totals;
    let _ = writeln!(out, "\n=== Totals ===");
    let lines: [(&str, u64); 11] = [
        ("Virtual", t.virtual_bytes),
        ("RSS (resident)", t.rss_bytes),
        ("PSS (proportional)", t.pss_bytes),
        ("Private (USS)", t.private_bytes),
        ("Shared", t.shared_bytes),
        ("Anonymous", t.anonymous_bytes),
        ("File-backed", t.file_backed_bytes),
        ("Huge pages", t.huge_pages_bytes),
        ("Swap", t.swap_bytes),
        ("Swap (PSS)", t.swap_pss_bytes),
        ("Locked", t.locked_bytes),
    ];
    for (label, v) in lines {
        let _ = writeln!(out, "{:<20} {:>w$}", label, sz(v));
    }

    // Regions table.
    let shown = top_regions(snapshot, opts);
    if opts.all {
        let _ = writeln!(out, "\n=== All {} regions by RSS ===", shown.len());
    } else {
        let _ = writeln!(
            out,
            "\n=== Top {} regions by RSS (of {}) ===",
            shown.len(),
            snapshot.vmas.len()
        );
    }
    // Column widths fit the rows shown, so narrow columns (often SWAP,
    // all "0 B") leave more room for names.
    let rows: Vec<(usize, [String; 7])> = shown
        .iter()
        .map(|&i| {
            let v = &snapshot.vmas[i];
            let cells = [
                format!("{:x}-{:x}", v.start, v.end),
                v.perms.as_str().to_owned(),
                sz(v.rss),
                sz(v.pss),
                sz(v.private()),
                sz(v.shared()),
                sz(v.swap),
            ];
            (i, cells)
        })
        .collect();
    let titles = [
        "ADDRESS-RANGE",
        "PERMS",
        "RSS",
        "PSS",
        "PRIVATE",
        "SHARED",
        "SWAP",
    ];
    let mut widths = titles.map(str::len);
    for (_, cells) in &rows {
        for (w, c) in widths.iter_mut().zip(cells) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut line = String::new();
    let push_cells = |line: &mut String, cells: &[&str]| {
        line.clear();
        for (k, (cell, w)) in cells.iter().zip(widths).enumerate() {
            // Address range and perms left-aligned, sizes right-aligned.
            let _ = if k < 2 {
                write!(line, "{cell:<w$} ")
            } else {
                write!(line, "{cell:>w$} ")
            };
        }
    };
    push_cells(&mut line, &titles);
    // The name gets what is left of the line, but never less than 28 columns.
    let name_width = WIDTH.saturating_sub(line.len()).max(28);
    let _ = writeln!(out, "{line}NAME");
    for (i, cells) in &rows {
        let v = &snapshot.vmas[*i];
        let name = if v.name.is_empty() {
            "[anon]".into()
        } else {
            printable(&v.name)
        };
        let refs: [&str; 7] = std::array::from_fn(|k| cells[k].as_str());
        push_cells(&mut line, &refs);
        let _ = writeln!(out, "{line}{}", truncate_name(&name, name_width));
    }
    out
}

/// Shorten `s` to `max` characters, keeping the start: `"Shared mem…"`.
fn truncate_end(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if s.chars().count() <= max {
        return s.into();
    }
    let keep: String = s.chars().take(max.saturating_sub(1)).collect();
    format!("{keep}…").into()
}

/// Shorten a region name to `max` characters. Paths keep their end (the
/// file name is what identifies them): `"…/x86_64-linux-gnu/libc.so.6"`.
fn truncate_name(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    let len = s.chars().count();
    if len <= max {
        return s.into();
    }
    if s.starts_with('/') {
        let tail: String = s.chars().skip(len - max.saturating_sub(1)).collect();
        format!("…{tail}").into()
    } else {
        truncate_end(s, max)
    }
}

/// The JSON report, schema version [`SCHEMA_VERSION`]. All sizes are
/// integers in bytes; addresses are hex strings (`"0x7f…"`) because they
/// can exceed the 2^53 range JSON numbers keep exactly.
///
/// ```json
/// {
///   "type": "snapshot",
///   "schema_version": 2,
///   "pid": 4242,
///   "exe": "/usr/bin/server",
///   "totals": { "vma_count": 523, "virtual_bytes": 1, "rss_bytes": 1, "pss_bytes": 1, "...": 0 },
///   "categories": [ { "name": "heap", "group": "process", "label": "Heap [heap]", "rss_bytes": 1, "...": 0 } ],
///   "named_regions": [ { "name": "TXMetaCache", "shmem": false, "rss_bytes": 1, "...": 0 } ],
///   "region_count": 523,
///   "regions_listed": "top",
///   "regions": [ { "start": "0x7f8a40000000", "end": "0x7f8a80000000", "perms": "rw-p", "...": 0 } ]
/// }
/// ```
#[derive(Debug, Serialize)]
pub struct JsonReport<'a> {
    /// Always `"snapshot"`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The process.
    pub pid: u32,
    /// The executable path, or `null` if unreadable.
    pub exe: Option<String>,
    /// Sums over all regions; see [`Totals`].
    pub totals: &'a Totals,
    /// One entry per category, always all of them, in a fixed order; they
    /// add up to `totals` exactly.
    pub categories: &'a [CategoryUsage],
    /// Named anonymous regions (`[anon:NAME]`), largest RSS first; their
    /// sum is the `named-anon` category.
    pub named_regions: &'a [NamedUsage],
    /// Number of regions in the process (all of them, not just those listed).
    pub region_count: usize,
    /// `"top"` (the largest `top` by RSS) or `"all"`.
    pub regions_listed: &'static str,
    /// The listed regions, largest RSS first (ties in address order).
    pub regions: Vec<JsonRegion<'a>>,
}

/// One region (VMA) in the JSON report.
#[derive(Debug, Serialize)]
pub struct JsonRegion<'a> {
    /// Start address, hex string with `0x`.
    pub start: String,
    /// End address (exclusive), hex string with `0x`.
    pub end: String,
    /// Permissions as in smaps, e.g. `"rw-p"`.
    pub perms: &'static str,
    /// Offset into the file.
    pub offset: u64,
    /// Device, `"major:minor"` in hex as in smaps.
    pub dev: String,
    /// Inode (0 for anonymous memory).
    pub inode: u64,
    /// The full name as the kernel printed it (never truncated), `""` if none.
    pub name: &'a str,
    /// Whether the name ends in `" (deleted)"`.
    pub deleted: bool,
    /// The region's category (`"heap"`, `"anon-rw"`, …).
    pub category: Category,
    /// Virtual size.
    pub size_bytes: u64,
    /// Resident.
    pub rss_bytes: u64,
    /// Proportional.
    pub pss_bytes: u64,
    /// Private (clean + dirty).
    pub private_bytes: u64,
    /// Shared (clean + dirty).
    pub shared_bytes: u64,
    /// Resident anonymous.
    pub anonymous_bytes: u64,
    /// Anonymous transparent huge pages.
    pub anon_huge_pages_bytes: u64,
    /// Swapped out.
    pub swap_bytes: u64,
    /// Proportional swap.
    pub swap_pss_bytes: u64,
    /// `mlock`ed.
    pub locked_bytes: u64,
    /// `VmFlags` mnemonics, e.g. `["rd", "wr", "mr", "mw", "me", "ac"]`.
    pub vm_flags: Vec<&'a str>,
}

impl<'a> JsonRegion<'a> {
    fn new(v: &'a Vma, category: Category) -> Self {
        JsonRegion {
            start: format!("{:#x}", v.start),
            end: format!("{:#x}", v.end),
            perms: v.perms.as_str(),
            offset: v.offset,
            dev: format!("{:02x}:{:02x}", v.dev_major, v.dev_minor),
            inode: v.inode,
            name: &v.name,
            deleted: v.deleted,
            category,
            size_bytes: v.size,
            rss_bytes: v.rss,
            pss_bytes: v.pss,
            private_bytes: v.private(),
            shared_bytes: v.shared(),
            anonymous_bytes: v.anonymous,
            anon_huge_pages_bytes: v.anon_huge_pages,
            swap_bytes: v.swap,
            swap_pss_bytes: v.swap_pss,
            locked_bytes: v.locked,
            vm_flags: v.vm_flags.iter().collect(),
        }
    }
}

/// Build the JSON report (serialize it with `serde_json`).
pub fn json_report<'a>(snapshot: &'a Snapshot, opts: &Options) -> JsonReport<'a> {
    let regions = top_regions(snapshot, opts)
        .into_iter()
        .map(|i| JsonRegion::new(&snapshot.vmas[i], snapshot.classes[i]))
        .collect();
    JsonReport {
        kind: "snapshot",
        schema_version: SCHEMA_VERSION,
        pid: snapshot.pid,
        exe: snapshot
            .exe
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned()),
        totals: &snapshot.totals,
        categories: &snapshot.categories,
        named_regions: &snapshot.named,
        region_count: snapshot.vmas.len(),
        regions_listed: if opts.all { "all" } else { "top" },
        regions,
    }
}

/// The JSON report as a pretty-printed string with a trailing newline.
pub fn render_json(snapshot: &Snapshot, opts: &Options) -> String {
    // Serializing plain structs of strings and integers cannot fail.
    let mut s = serde_json::to_string_pretty(&json_report(snapshot, opts))
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    s.push('\n');
    s
}
