//! The snapshot: a process's mappings captured from smaps, each put in one
//! category, totalled, and rendered.
//!
//! - this module: [`capture`] and [`Snapshot`] with its [`Totals`].
//! - [`classify`]: the category of each VMA.
//! - [`report`]: the snapshot as text or JSON.
//!
//! Contact points: reads through [`crate::proc`]; [`crate::serve`] and the
//! CLI render what [`capture`] returns.
//!
//! ```no_run
//! // Serve the report about yourself, in-process:
//! let snapshot = memtrace::snapshot::capture_self()?;
//! let text = memtrace::snapshot::report::render_text(&snapshot, &memtrace::snapshot::report::Options::default());
//! # Ok::<(), memtrace::proc::ProcError>(())
//! ```
//!
//! The totals are sums over every VMA, and every VMA is in exactly one
//! category, so the categories add up to the totals exactly. The totals
//! equal the kernel's `/proc/PID/smaps_rollup` for every field the kernel
//! sums in whole pages (RSS, shared/private, anonymous, swap, huge pages,
//! …). The proportional fields (`Pss`, `Pss_Dirty`, `SwapPss`) can differ
//! slightly: the rollup sums sub-kilobyte fractions of shared pages before
//! rounding, while smaps rounds each VMA down to a whole kB, so the rollup
//! value may be larger by less than 1 KiB per VMA.

use std::collections::HashMap;
use std::path::PathBuf;

use serde::Serialize;

use crate::proc::smaps::{self, ParseError, Vma};
use crate::proc::{self, ProcError};

pub mod classify;
pub mod report;

use classify::{Category, Classifier, anon_name};

/// Sums of the memory fields over a set of VMAs (a category, a named
/// region, or the whole process). All sizes in bytes.
///
/// Serialized as-is in the JSON report (`totals`, and flattened into each
/// `categories` / `named_regions` entry).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Number of VMAs summed (0 for a rollup).
    pub vma_count: u64,
    /// Virtual size (`Size`). 0 for a rollup, which does not report it.
    pub virtual_bytes: u64,
    /// Resident set size (`Rss`).
    pub rss_bytes: u64,
    /// Proportional set size (`Pss`).
    pub pss_bytes: u64,
    /// Dirty part of PSS (`Pss_Dirty`, kernel 6.0+).
    pub pss_dirty_bytes: u64,
    /// Unique set size: `Private_Clean + Private_Dirty`.
    pub private_bytes: u64,
    /// `Private_Clean`.
    pub private_clean_bytes: u64,
    /// `Private_Dirty`.
    pub private_dirty_bytes: u64,
    /// Resident pages also mapped by other processes: `Shared_Clean + Shared_Dirty`.
    pub shared_bytes: u64,
    /// `Shared_Clean`.
    pub shared_clean_bytes: u64,
    /// `Shared_Dirty`.
    pub shared_dirty_bytes: u64,
    /// `Referenced`: pages recently accessed.
    pub referenced_bytes: u64,
    /// Resident anonymous pages (`Anonymous`).
    pub anonymous_bytes: u64,
    /// Resident pages that are not anonymous: page cache and shmem
    /// (`Rss - Anonymous`).
    pub file_backed_bytes: u64,
    /// `KSM`.
    pub ksm_bytes: u64,
    /// `LazyFree`.
    pub lazy_free_bytes: u64,
    /// All huge pages: `AnonHugePages + ShmemPmdMapped + FilePmdMapped +
    /// Shared_Hugetlb + Private_Hugetlb`.
    pub huge_pages_bytes: u64,
    /// `AnonHugePages`: anonymous transparent huge pages (included in RSS).
    pub anon_huge_pages_bytes: u64,
    /// `ShmemPmdMapped`.
    pub shmem_pmd_mapped_bytes: u64,
    /// `FilePmdMapped`.
    pub file_pmd_mapped_bytes: u64,
    /// `Shared_Hugetlb` (hugetlbfs; not included in RSS).
    pub shared_hugetlb_bytes: u64,
    /// `Private_Hugetlb` (hugetlbfs; not included in RSS).
    pub private_hugetlb_bytes: u64,
    /// Swapped-out memory (`Swap`).
    pub swap_bytes: u64,
    /// Proportional swap (`SwapPss`).
    pub swap_pss_bytes: u64,
    /// `mlock`ed memory (`Locked`).
    pub locked_bytes: u64,
}

impl Totals {
    /// Add one VMA. Saturating, so absurd input cannot overflow.
    pub fn add(&mut self, v: &Vma) {
        fn acc(a: &mut u64, b: u64) {
            *a = a.saturating_add(b);
        }
        acc(&mut self.vma_count, 1);
        acc(&mut self.virtual_bytes, v.size);
        acc(&mut self.rss_bytes, v.rss);
        acc(&mut self.pss_bytes, v.pss);
        acc(&mut self.pss_dirty_bytes, v.pss_dirty);
        acc(&mut self.private_bytes, v.private());
        acc(&mut self.private_clean_bytes, v.private_clean);
        acc(&mut self.private_dirty_bytes, v.private_dirty);
        acc(&mut self.shared_bytes, v.shared());
        acc(&mut self.shared_clean_bytes, v.shared_clean);
        acc(&mut self.shared_dirty_bytes, v.shared_dirty);
        acc(&mut self.referenced_bytes, v.referenced);
        acc(&mut self.anonymous_bytes, v.anonymous);
        acc(
            &mut self.file_backed_bytes,
            v.rss.saturating_sub(v.anonymous),
        );
        acc(&mut self.ksm_bytes, v.ksm);
        acc(&mut self.lazy_free_bytes, v.lazy_free);
        let huge = v
            .anon_huge_pages
            .saturating_add(v.shmem_pmd_mapped)
            .saturating_add(v.file_pmd_mapped)
            .saturating_add(v.shared_hugetlb)
            .saturating_add(v.private_hugetlb);
        acc(&mut self.huge_pages_bytes, huge);
        acc(&mut self.anon_huge_pages_bytes, v.anon_huge_pages);
        acc(&mut self.shmem_pmd_mapped_bytes, v.shmem_pmd_mapped);
        acc(&mut self.file_pmd_mapped_bytes, v.file_pmd_mapped);
        acc(&mut self.shared_hugetlb_bytes, v.shared_hugetlb);
        acc(&mut self.private_hugetlb_bytes, v.private_hugetlb);
        acc(&mut self.swap_bytes, v.swap);
        acc(&mut self.swap_pss_bytes, v.swap_pss);
        acc(&mut self.locked_bytes, v.locked);
    }

    /// Add another total (for summing categories).
    pub fn merge(&mut self, o: &Totals) {
        let mut pairs = [
            (&mut self.vma_count, o.vma_count),
            (&mut self.virtual_bytes, o.virtual_bytes),
            (&mut self.rss_bytes, o.rss_bytes),
            (&mut self.pss_bytes, o.pss_bytes),
            (&mut self.pss_dirty_bytes, o.pss_dirty_bytes),
            (&mut self.private_bytes, o.private_bytes),
            (&mut self.private_clean_bytes, o.private_clean_bytes),
            (&mut self.private_dirty_bytes, o.private_dirty_bytes),
            (&mut self.shared_bytes, o.shared_bytes),
            (&mut self.shared_clean_bytes, o.shared_clean_bytes),
            (&mut self.shared_dirty_bytes, o.shared_dirty_bytes),
            (&mut self.referenced_bytes, o.referenced_bytes),
            (&mut self.anonymous_bytes, o.anonymous_bytes),
            (&mut self.file_backed_bytes, o.file_backed_bytes),
            (&mut self.ksm_bytes, o.ksm_bytes),
            (&mut self.lazy_free_bytes, o.lazy_free_bytes),
            (&mut self.huge_pages_bytes, o.huge_pages_bytes),
            (&mut self.anon_huge_pages_bytes, o.anon_huge_pages_bytes),
            (&mut self.shmem_pmd_mapped_bytes, o.shmem_pmd_mapped_bytes),
            (&mut self.file_pmd_mapped_bytes, o.file_pmd_mapped_bytes),
            (&mut self.shared_hugetlb_bytes, o.shared_hugetlb_bytes),
            (&mut self.private_hugetlb_bytes, o.private_hugetlb_bytes),
            (&mut self.swap_bytes, o.swap_bytes),
            (&mut self.swap_pss_bytes, o.swap_pss_bytes),
            (&mut self.locked_bytes, o.locked_bytes),
        ];
        for (a, b) in pairs.iter_mut() {
            **a = a.saturating_add(*b);
        }
    }

    /// Sum of `vmas`.
    pub fn of<'a>(vmas: impl IntoIterator<Item = &'a Vma>) -> Totals {
        let mut t = Totals::default();
        for v in vmas {
            t.add(v);
        }
        t
    }
}

/// One category's share of the process. Serialized in JSON `categories`
/// with the [`Totals`] fields flattened in.
#[derive(Debug, Clone, Serialize)]
pub struct CategoryUsage {
    /// Which category.
    #[serde(rename = "name")]
    pub category: Category,
    /// The text report section (`process`, `named`, `files`, `shared-memory`, `anonymous`, `kernel`).
    pub group: classify::Group,
    /// Human label.
    pub label: &'static str,
    /// Sums over the category's VMAs.
    #[serde(flatten)]
    pub totals: Totals,
}

/// One named anonymous region (`[anon:NAME]`), summed over all VMAs of that name.
#[derive(Debug, Clone, Serialize)]
pub struct NamedUsage {
    /// The name, without the `[anon:` … `]` wrapper.
    pub name: String,
    /// Whether the region is `[anon_shmem:NAME]` (shared) rather than `[anon:NAME]`.
    pub shmem: bool,
    /// Sums over the VMAs with that name.
    #[serde(flatten)]
    pub totals: Totals,
}

/// A classified, totalled snapshot of one process's address space.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The process.
    pub pid: u32,
    /// Its executable (`/proc/PID/exe`, without `" (deleted)"`), if readable.
    pub exe: Option<PathBuf>,
    /// Every VMA, in address order.
    pub vmas: Vec<Vma>,
    /// The category of each VMA: `classes[i]` belongs to `vmas[i]`.
    pub classes: Vec<Category>,
    /// One entry per category, in [`Category::ALL`] order (zero entries included).
    pub categories: Vec<CategoryUsage>,
    /// Named anonymous regions, largest RSS first.
    pub named: Vec<NamedUsage>,
    /// Sums over all VMAs.
    pub totals: Totals,
}

impl Snapshot {
    /// Classify and total already-parsed VMAs (e.g. from a fixture).
    pub fn from_vmas(pid: u32, vmas: Vec<Vma>, classifier: &mut Classifier) -> Snapshot {
        let mut categories: Vec<CategoryUsage> = Category::ALL
            .iter()
            .map(|&c| CategoryUsage {
                category: c,
                group: c.group(),
                label: c.label(),
                totals: Totals::default(),
            })
            .collect();
        let mut named: HashMap<(&str, bool), Totals> = HashMap::new();
        let mut classes = Vec::with_capacity(vmas.len());
        let mut totals = Totals::default();
        for v in &vmas {
            let c = classifier.classify(v);
            classes.push(c);
            categories[c.index()].totals.add(v);
            totals.add(v);
            if c == Category::NamedAnon
                && let Some(n) = anon_name(&v.name)
            {
                named
                    .entry((n, v.name.starts_with("[anon_shmem:")))
                    .or_default()
                    .add(v);
            }
        }
        let mut named: Vec<NamedUsage> = named
            .into_iter()
            .map(|((name, shmem), totals)| NamedUsage {
                name: name.to_owned(),
                shmem,
                totals,
            })
            .collect();
        named.sort_by(|a, b| {
            b.totals
                .rss_bytes
                .cmp(&a.totals.rss_bytes)
                .then_with(|| a.name.cmp(&b.name))
        });
        Snapshot {
            pid,
            exe: classifier.exe().path.clone(),
            vmas,
            classes,
            categories,
            named,
            totals,
        }
    }

    /// The usage of one category.
    pub fn category(&self, c: Category) -> &Totals {
        &self.categories[c.index()].totals
    }
}

/// Capture, classify and total process `pid`.
///
/// Reads `/proc/PID/smaps` (the cost floor), `/proc/PID/exe`, and the ELF
/// header of each distinct mapped file whose name does not already say it
/// is a shared object.
pub fn capture(pid: u32) -> Result<Snapshot, ProcError> {
    proc::check_procfs()?;
    let vmas = smaps::read_smaps(pid)?;
    if vmas.is_empty() {
        return Err(proc::pid::explain_empty(pid));
    }
    let mut classifier = Classifier::for_process(pid);
    Ok(Snapshot::from_vmas(pid, vmas, &mut classifier))
}

/// Capture the calling process (for serving the report in-process).
pub fn capture_self() -> Result<Snapshot, ProcError> {
    capture(std::process::id())
}

/// Read and parse `/proc/PID/smaps_rollup` (Linux 4.14+).
pub fn read_rollup(pid: u32) -> Result<Totals, ProcError> {
    proc::check_procfs()?;
    let path = format!("/proc/{pid}/smaps_rollup");
    let bytes = std::fs::read(&path).map_err(|e| ProcError::from_io(pid, &path, e))?;
    if bytes.is_empty() {
        return Err(proc::pid::explain_empty(pid));
    }
    parse_rollup(&bytes).map_err(|error| ProcError::Parse { pid, source: error })
}

/// Parse `smaps_rollup` text into [`Totals`]. `vma_count` and
/// `virtual_bytes` are 0: the rollup does not report them. Empty text
/// (a kernel thread) gives all zeros.
pub fn parse_rollup(input: &[u8]) -> Result<Totals, ParseError> {
    let vmas = smaps::parse(input)?;
    let mut t = Totals::of(&vmas);
    t.vma_count = 0;
    t.virtual_bytes = 0;
    Ok(t)
}
