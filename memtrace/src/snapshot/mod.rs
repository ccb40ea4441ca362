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

/// Defines [`Totals`] with [`Totals::add`] and [`Totals::merge`] from one
/// list: each field once, with its doc and what one VMA adds to it.
macro_rules! totals {
    (
        $(#[$meta:meta])*
        pub struct Totals {
            $( $(#[$field_meta:meta])* pub $field:ident: u64 = |$v:pat_param| $per_vma:expr, )*
        }
    ) => {
        $(#[$meta])*
        pub struct Totals {
            $( $(#[$field_meta])* pub $field: u64, )*
        }

        impl Totals {
            /// Add one VMA. Saturating, so absurd input cannot overflow.
            pub fn add(&mut self, vma: &Vma) {
                $(
                    let $v: &Vma = vma;
                    self.$field = self.$field.saturating_add($per_vma);
                )*
            }

            /// Add another total (for summing categories).
            pub fn merge(&mut self, o: &Totals) {
                $( self.$field = self.$field.saturating_add(o.$field); )*
            }
        }
    };
}

totals! {
    /// Sums of the memory fields over a set of VMAs (a category, a named
    /// region, or the whole process). All sizes in bytes.
    ///
    /// Serialized as-is in the JSON report (`totals`, and flattened into each
    /// `categories` / `named_regions` entry).
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
    pub struct Totals {
        /// Number of VMAs summed (0 for a rollup).
        pub vma_count: u64 = |_| 1,
        /// Virtual size (`Size`). 0 for a rollup, which does not report it.
        pub virtual_bytes: u64 = |v| v.size,
        /// Resident set size (`Rss`).
        pub rss_bytes: u64 = |v| v.rss,
        /// Proportional set size (`Pss`).
        pub pss_bytes: u64 = |v| v.pss,
        /// Dirty part of PSS (`Pss_Dirty`, kernel 6.0+).
        pub pss_dirty_bytes: u64 = |v| v.pss_dirty,
        /// Unique set size: `Private_Clean + Private_Dirty`.
        pub private_bytes: u64 = |v| v.private(),
        /// `Private_Clean`.
        pub private_clean_bytes: u64 = |v| v.private_clean,
        /// `Private_Dirty`.
        pub private_dirty_bytes: u64 = |v| v.private_dirty,
        /// Resident pages also mapped by other processes: `Shared_Clean + Shared_Dirty`.
        pub shared_bytes: u64 = |v| v.shared(),
        /// `Shared_Clean`.
        pub shared_clean_bytes: u64 = |v| v.shared_clean,
        /// `Shared_Dirty`.
        pub shared_dirty_bytes: u64 = |v| v.shared_dirty,
        /// `Referenced`: pages recently accessed.
        pub referenced_bytes: u64 = |v| v.referenced,
        /// Resident anonymous pages (`Anonymous`).
        pub anonymous_bytes: u64 = |v| v.anonymous,
        /// Resident pages that are not anonymous: page cache and shmem
        /// (`Rss - Anonymous`).
        pub file_backed_bytes: u64 = |v| v.rss.saturating_sub(v.anonymous),
        /// `KSM`.
        pub ksm_bytes: u64 = |v| v.ksm,
        /// `LazyFree`.
        pub lazy_free_bytes: u64 = |v| v.lazy_free,
        /// All huge pages: `AnonHugePages + ShmemPmdMapped + FilePmdMapped +
        /// Shared_Hugetlb + Private_Hugetlb`.
        pub huge_pages_bytes: u64 = |v| v
            .anon_huge_pages
            .saturating_add(v.shmem_pmd_mapped)
            .saturating_add(v.file_pmd_mapped)
            .saturating_add(v.shared_hugetlb)
            .saturating_add(v.private_hugetlb),
        /// `AnonHugePages`: anonymous transparent huge pages (included in RSS).
        pub anon_huge_pages_bytes: u64 = |v| v.anon_huge_pages,
        /// `ShmemPmdMapped`.
        pub shmem_pmd_mapped_bytes: u64 = |v| v.shmem_pmd_mapped,
        /// `FilePmdMapped`.
        pub file_pmd_mapped_bytes: u64 = |v| v.file_pmd_mapped,
        /// `Shared_Hugetlb` (hugetlbfs; not included in RSS).
        pub shared_hugetlb_bytes: u64 = |v| v.shared_hugetlb,
        /// `Private_Hugetlb` (hugetlbfs; not included in RSS).
        pub private_hugetlb_bytes: u64 = |v| v.private_hugetlb,
        /// Swapped-out memory (`Swap`).
        pub swap_bytes: u64 = |v| v.swap,
        /// Proportional swap (`SwapPss`).
        pub swap_pss_bytes: u64 = |v| v.swap_pss,
        /// `mlock`ed memory (`Locked`).
        pub locked_bytes: u64 = |v| v.locked,
    }
}

impl Totals {
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

/// Categories and totals of a snapshot, built one VMA at a time.
struct Tally {
    categories: Vec<CategoryUsage>,
    /// Named regions: `(name, shmem)` → totals.
    named: HashMap<(String, bool), Totals>,
    classes: Vec<Category>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            categories: Category::ALL
                .iter()
                .map(|&c| CategoryUsage {
                    category: c,
                    group: c.group(),
                    label: c.label(),
                    totals: Totals::default(),
                })
                .collect(),
            named: HashMap::new(),
            classes: Vec::new(),
        }
    }

    /// Classify and count the next VMA.
    fn add(&mut self, v: &Vma, classifier: &mut Classifier) {
        let c = classifier.classify(v);
        self.classes.push(c);
        self.categories[c.index()].totals.add(v);
        if c == Category::NamedAnon
            && let Some(n) = anon_name(&v.name)
        {
            let shmem = v.name.starts_with("[anon_shmem:");
            match self.named.get_mut(&(n.to_owned(), shmem)) {
                Some(t) => t.add(v),
                None => {
                    let mut t = Totals::default();
                    t.add(v);
                    self.named.insert((n.to_owned(), shmem), t);
                }
            }
        }
    }

    /// The snapshot of `vmas`, every one of which was added in order.
    fn finish(self, pid: u32, vmas: Vec<Vma>, classifier: &Classifier) -> Snapshot {
        let Tally {
            categories,
            named,
            classes,
        } = self;
        // Every VMA is in exactly one category: their sum is the total.
        let mut totals = Totals::default();
        for c in &categories {
            totals.merge(&c.totals);
        }
        let mut named: Vec<NamedUsage> = named
            .into_iter()
            .map(|((name, shmem), totals)| NamedUsage {
                name,
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
}

impl Snapshot {
    /// Classify and total already-parsed VMAs (e.g. from a fixture).
    pub fn from_vmas(pid: u32, vmas: Vec<Vma>, classifier: &mut Classifier) -> Snapshot {
        let mut tally = Tally::new();
        tally.classes.reserve_exact(vmas.len());
        for v in &vmas {
            tally.add(v, classifier);
        }
        tally.finish(pid, vmas, classifier)
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
/// is a shared object. A read torn by the process's own changes is read
/// again ([`smaps::settled`]).
pub fn capture(pid: u32) -> Result<Snapshot, ProcError> {
    proc::check_procfs()?;
    let mut classifier = Classifier::for_process(pid);
    smaps::settled(|| {
        let mut tally = Tally::new();
        // Classified and counted on the parser thread while the kernel
        // generates the rest of smaps: little is left to do once it ends.
        let vmas = smaps::read_smaps_with(pid, &mut |v| tally.add(v, &mut classifier))?;
        if vmas.is_empty() {
            return Err(proc::pid::explain_empty(pid));
        }
        Ok(tally.finish(pid, vmas, &classifier))
    })
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
    parse_rollup(&bytes).map_err(|error| ProcError::Parse { pid, error })
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
