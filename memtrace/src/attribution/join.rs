//! Attribution: which call site is this resident memory from?
//!
//! [`attribute`] joins the VMAs of `/proc/PID/smaps` with the [`Ledger`]'s
//! traced ranges. Two pools of resident memory are attributed, each with
//! totals of its own:
//!
//! - *private anonymous* memory: each VMA's `Anonymous:`
//!   ([`Vma::anonymous`]), whose sum over all VMAs is the `Anonymous` of
//!   `smaps_rollup`;
//! - *shared anonymous* memory (`MAP_SHARED | MAP_ANONYMOUS`,
//!   [`Vma::is_shared_anonymous`]): the kernel backs it with shmem, so its
//!   `Anonymous` is 0 and its resident pages are its `Rss`. It may also be
//!   mapped by other processes (after fork), which see the same pages.
//!
//! The kernel merges adjacent anonymous mappings with equal flags into one
//! VMA and splits VMAs on mprotect, madvise and partial munmap, so VMAs and
//! traced ranges do not line up: a VMA may hold pieces of several ranges
//! from different call sites, and one range may span several VMAs. Each
//! VMA is therefore cut into *parts*: the ledger ranges clipped to it,
//! grouped by origin, plus the gaps no range covers (*untraced*: mapped
//! before tracing began, or derived from such a mapping).
//!
//! - A VMA with a single part (one origin covers it entirely, or it is
//!   entirely untraced) gives all its pool to that part. Most VMAs are like
//!   this and cost no system call.
//! - A VMA with several parts is split by counting each part's resident
//!   pages in `/proc/PID/pagemap` (see [`PageCounter`]): anonymous pages
//!   for private memory (not the zero page, not shmem), every present page
//!   for shared anonymous memory (all shmem). In a stopped process the
//!   counts add up to the VMA's pool; in a running one they drift between
//!   reading smaps and pagemap. When pagemap counts more, the pool is
//!   divided in proportion to the counts with largest-remainder rounding at
//!   page granularity; when it counts less, each part gets what pagemap saw
//!   in it and the rest (pages gone in between) is untraced, never given to
//!   another part. Either way the total stays exact.
//! - Nothing is guessed: if no page of a multi-part VMA counts as resident
//!   (smaps and pagemap disagree) or pagemap cannot be read, the VMA's pool
//!   goes to untraced.
//!
//! Hence, always, `attributed_rss_bytes + untraced_rss_bytes ==
//! anon_rss_bytes`, and the same for the `shared_` totals.
//!
//! # Cost
//!
//! VMAs (smaps order) and ledger ranges (address order) are walked together
//! once: O(n + m) for n VMAs and m ranges (plus O(k log k) to group the k
//! pieces of a multi-part VMA by origin). Only multi-part VMAs touch
//! pagemap: one read covers 32 MiB of address space (8 bytes per 4 KiB
//! page), so neighbouring small VMAs share it and a large VMA takes a read
//! per 32 MiB, whatever the number of pieces. Per-VMA work reuses a few
//! buffers; nothing is allocated per VMA.
//!
//! The join goes one VMA at a time ([`Join`]), so it can run on VMAs as
//! they are parsed: [`attribute_stream`] joins each batch of
//! [`crate::proc::smaps::stream_smaps`] while the kernel generates the next,
//! and the report costs about the smaps read alone.

use std::io;

use serde::{Serialize, Serializer};

use super::ledger::{Ledger, NameId, OriginId, Range};
use crate::proc::pagemap::{PageCounter, Pagemap};
use crate::proc::smaps::{SmapsStream, Vma, settled, stream_smaps};
use crate::proc::{PAGE_SIZE, ProcError};

/// A process's resident anonymous memory and how much of it is attributed
/// to traced call sites: the totals the attribution, the report and its
/// JSON line all carry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AnonTotals {
    /// Anonymous resident bytes in the process (sum of [`Vma::anonymous`]).
    pub anon_rss_bytes: u64,
    /// The part of `anon_rss_bytes` attributed to traced call sites.
    pub attributed_rss_bytes: u64,
    /// The part of `anon_rss_bytes` in untraced memory (mapped before
    /// tracing began), or not attributable (pagemap unreadable).
    /// `attributed_rss_bytes + untraced_rss_bytes == anon_rss_bytes`, always.
    pub untraced_rss_bytes: u64,
    /// Resident shared anonymous bytes in the process (the `Rss` of its
    /// shared anonymous VMAs); not part of `anon_rss_bytes`.
    pub shared_anon_rss_bytes: u64,
    /// The part of `shared_anon_rss_bytes` attributed to traced call sites.
    pub shared_attributed_rss_bytes: u64,
    /// The part of `shared_anon_rss_bytes` untraced or not attributable.
    /// `shared_attributed_rss_bytes + shared_untraced_rss_bytes ==
    /// shared_anon_rss_bytes`, always.
    pub shared_untraced_rss_bytes: u64,
}

/// The whole process's resident and swapped memory, summed over the same
/// smaps read as the attribution (no second read for the history's
/// samples).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessTotals {
    /// Resident bytes of every VMA, file-backed too (`Rss`).
    pub rss_bytes: u64,
    /// Swapped-out bytes (`Swap`).
    pub swap_bytes: u64,
}

/// Resident anonymous memory of one process, by call site.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Attribution {
    /// The process. [`attribute`] leaves it 0 for the caller to set;
    /// [`attribute_process`] sets it.
    pub pid: u32,
    /// Resident memory and how much of it is attributed.
    #[serde(flatten)]
    pub totals: AnonTotals,
    /// Resident and swapped memory of the whole process.
    #[serde(skip)]
    pub process: ProcessTotals,
    /// One entry per origin with at least one live range, by resident
    /// bytes ([`SiteUsage::resident_bytes`]) descending, then
    /// `virtual_bytes` descending, then origin id.
    pub sites: Vec<SiteUsage>,
    /// How many VMAs held several parts and needed pagemap.
    pub pagemap_vmas: usize,
    /// How many of those could not be read (their memory is counted as
    /// untraced).
    pub pagemap_failures: usize,
    /// The first pagemap error, for diagnostics.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pagemap_error: Option<String>,
}

impl Attribution {
    /// Fraction of anonymous resident memory attributed to a call site;
    /// 1.0 when there is none.
    pub fn coverage(&self) -> f64 {
        if self.totals.anon_rss_bytes == 0 {
            1.0
        } else {
            self.totals.attributed_rss_bytes as f64 / self.totals.anon_rss_bytes as f64
        }
    }
}

/// What one call site (origin) holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SiteUsage {
    /// The origin in the ledger ([`Ledger::origin`]).
    #[serde(serialize_with = "origin_as_u32")]
    pub origin: OriginId,
    /// Resident private anonymous bytes attributed to it.
    pub rss_bytes: u64,
    /// Resident shared anonymous bytes attributed to it.
    pub shared_rss_bytes: u64,
    /// Bytes of its live ranges, resident or not.
    pub virtual_bytes: u64,
    /// Number of its live ranges.
    pub mappings: usize,
    /// Distinct names set on its ranges (`PR_SET_VMA_ANON_NAME`), sorted.
    pub names: Vec<String>,
}

impl SiteUsage {
    /// Everything resident it holds: private and shared anonymous.
    pub fn resident_bytes(&self) -> u64 {
        self.rss_bytes.saturating_add(self.shared_rss_bytes)
    }
}

fn origin_as_u32<S: Serializer>(id: &OriginId, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u32(id.as_u32())
}

/// Attribute `pid`'s resident anonymous memory, reading `/proc/PID/pagemap`
/// where needed.
///
/// If pagemap cannot be opened, every VMA that would need it counts as
/// untraced and [`Attribution::pagemap_error`] says why; single-part VMAs
/// are attributed as usual.
pub fn attribute_process(pid: u32, vmas: &[Vma], ledger: &Ledger) -> Attribution {
    let mut attribution = match Pagemap::open(pid) {
        Ok(mut pagemap) => attribute(vmas, ledger, &mut pagemap),
        Err(e) => attribute(vmas, ledger, &mut Unavailable(Some(io::Error::other(e)))),
    };
    attribution.pid = pid;
    attribution
}

/// [`attribute_process`] on VMAs as they are read: joins each batch of
/// `smaps` (from [`stream_smaps`] of the same process) while the kernel
/// generates the next, so the join and its pagemap reads overlap the smaps
/// read instead of following it. Same result as reading all of smaps first.
///
/// A read torn by the process's own changes is joined again from a new
/// stream, with pagemap opened afresh ([`settled`]). Fails if smaps cannot
/// be read or parsed to the end, or with [`ProcError::Unsettled`] when
/// every read was torn.
pub fn attribute_stream(
    pid: u32,
    smaps: SmapsStream,
    ledger: &Ledger,
) -> Result<Attribution, ProcError> {
    let mut first = Some(smaps);
    let mut attribution = settled(|| {
        let mut smaps = match first.take() {
            Some(smaps) => smaps,
            None => stream_smaps(pid)?,
        };
        let mut pagemap: Box<dyn PageCounter> = match Pagemap::open(pid) {
            Ok(pagemap) => Box::new(pagemap),
            Err(e) => Box::new(Unavailable(Some(io::Error::other(e)))),
        };
        let mut join = Join::new(ledger);
        while let Some(batch) = smaps.next_batch() {
            for vma in &batch {
                join.add(vma, pagemap.as_mut());
            }
            smaps.recycle(batch);
        }
        smaps.finish()?;
        Ok(join.finish())
    })?;
    attribution.pid = pid;
    Ok(attribution)
}

/// Read `pid`'s smaps and attribute it against `ledger`, the join running
/// while smaps is read ([`attribute_stream`]). For a report of a process
/// held still (at its exit stop) this is the whole capture.
pub fn attribute_live(pid: u32, ledger: &Ledger) -> Result<Attribution, ProcError> {
    attribute_stream(pid, stream_smaps(pid)?, ledger)
}

/// A [`PageCounter`] that always fails with the error pagemap failed to
/// open with.
struct Unavailable(Option<io::Error>);

impl Unavailable {
    fn fail(&mut self) -> io::Result<u64> {
        // The first call hands out the real error; later ones (already
        // counted as failures) only need to fail.
        Err(self
            .0
            .take()
            .unwrap_or_else(|| io::Error::other("pagemap unavailable")))
    }
}

impl PageCounter for Unavailable {
    fn anon_resident_pages(&mut self, _: u64, _: u64) -> io::Result<u64> {
        self.fail()
    }

    fn resident_pages(&mut self, _: u64, _: u64) -> io::Result<u64> {
        self.fail()
    }
}

/// Which resident memory of a VMA is being attributed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pool {
    /// Private anonymous memory (`Anonymous`).
    Private,
    /// Shared anonymous memory (`Rss` of a shared anonymous VMA).
    Shared,
}

/// Who a part of a VMA belongs to: a traced origin, or `None` (untraced).
type Owner = Option<OriginId>;

/// A run of one VMA's address space with one owner.
#[derive(Clone, Copy, Debug)]
struct Piece {
    owner: Owner,
    start: u64,
    end: u64,
}

/// Per-origin totals while walking.
#[derive(Clone, Debug)]
struct Acc {
    origin: OriginId,
    rss: u64,
    shared: u64,
    virt: u64,
    mappings: usize,
}

/// Attribute the anonymous resident memory of `vmas` (one process's smaps,
/// in address order) to the origins of `ledger`'s ranges, counting pages
/// with `pages` in VMAs that hold more than one part. See the module
/// documentation for the rules.
///
/// Never panics and never fails: what cannot be attributed is untraced.
/// VMAs out of address order are handled (at O(log m) extra each).
pub fn attribute(vmas: &[Vma], ledger: &Ledger, pages: &mut dyn PageCounter) -> Attribution {
    let mut join = Join::new(ledger);
    for vma in vmas {
        join.add(vma, pages);
    }
    join.finish()
}

/// [`attribute`] one VMA at a time, so the join can run while smaps is
/// still being read (see [`attribute_stream`]): feed it the VMAs in smaps
/// order with [`Join::add`], then take the result with [`Join::finish`].
/// The result is the same as [`attribute`]'s over the same VMAs.
pub struct Join<'l> {
    ledger: &'l Ledger,
    /// The ledger's ranges in address order (the BTreeMap iterator cannot
    /// seek).
    ranges: Vec<&'l Range>,
    /// Per-origin totals, indexed by origin id.
    accs: Vec<Option<Acc>>,
    /// `(origin slot, name)` of every named range.
    named: Vec<(usize, NameId)>,
    out: Attribution,
    // Reused across VMAs so the walk allocates nothing per VMA.
    pieces: Vec<Piece>,
    parts: Vec<(Owner, u64)>,
    split: Split,
    /// Index of the first range that may overlap the next VMA: every
    /// range before it ends at or before the previous VMA's start.
    cursor: usize,
    prev_end: u64,
}

impl<'l> Join<'l> {
    /// A join against `ledger` with no VMA yet. One pass over the ledger:
    /// per-origin virtual size, range count and names.
    pub fn new(ledger: &'l Ledger) -> Join<'l> {
        let ranges: Vec<&Range> = ledger.ranges().collect();
        let slots = ranges
            .iter()
            .map(|r| r.origin.as_u32() as usize + 1)
            .max()
            .unwrap_or(0);
        let mut accs: Vec<Option<Acc>> = vec![None; slots];
        let mut named: Vec<(usize, NameId)> = Vec::new();
        for r in &ranges {
            let slot = r.origin.as_u32() as usize;
            let acc = accs[slot].get_or_insert(Acc {
                origin: r.origin,
                rss: 0,
                shared: 0,
                virt: 0,
                mappings: 0,
            });
            acc.virt += r.size();
            acc.mappings += 1;
            if let Some(name) = r.name {
                named.push((slot, name));
            }
        }
        Join {
            ledger,
            ranges,
            accs,
            named,
            out: Attribution {
                pid: 0,
                totals: AnonTotals::default(),
                process: ProcessTotals::default(),
                sites: Vec::new(),
                pagemap_vmas: 0,
                pagemap_failures: 0,
                pagemap_error: None,
            },
            pieces: Vec::new(),
            parts: Vec::new(),
            split: Split::default(),
            cursor: 0,
            prev_end: 0,
        }
    }

    /// Attribute one VMA, the next in smaps order, counting pages with
    /// `pages` if it holds several parts.
    pub fn add(&mut self, vma: &Vma, pages: &mut dyn PageCounter) {
        // `Anonymous` is 0 in a shared VMA (shmem pages are not anonymous);
        // subtracting it anyway means no page could count in both pools.
        let shared = if vma.is_shared_anonymous() {
            vma.rss.saturating_sub(vma.anonymous)
        } else {
            0
        };
        self.out.totals.anon_rss_bytes += vma.anonymous;
        self.out.process.rss_bytes += vma.rss;
        self.out.process.swap_bytes += vma.swap;
        self.out.totals.shared_anon_rss_bytes += shared;
        let ranges = &self.ranges;
        if vma.start < self.prev_end {
            // Out of order (not smaps order): find the place again.
            self.cursor = ranges.partition_point(|r| r.end <= vma.start);
        } else {
            while self.cursor < ranges.len() && ranges[self.cursor].end <= vma.start {
                self.cursor += 1;
            }
        }
        self.prev_end = vma.end;
        if vma.anonymous == 0 && shared == 0 {
            // Nothing resident to split (also hugetlb VMAs, whose pages
            // pagemap reports but neither pool counts).
            return;
        }

        cut(vma, &ranges[self.cursor..], &mut self.pieces);
        let first = self.pieces.first().map(|p| p.owner);
        if self.pieces.iter().all(|p| Some(p.owner) == first) {
            self.credit(Pool::Private, first.flatten(), vma.anonymous);
            self.credit(Pool::Shared, first.flatten(), shared);
            return;
        }

        self.out.pagemap_vmas += 1;
        pages.prefetch(vma.start, vma.end);
        let mut failed = false;
        for (pool, total) in [(Pool::Private, vma.anonymous), (Pool::Shared, shared)] {
            if total == 0 {
                continue;
            }
            if failed {
                self.credit(pool, None, total);
                continue;
            }
            if let Err(e) = count_parts(pool, &self.pieces, pages, &mut self.parts) {
                failed = true;
                self.out.pagemap_failures += 1;
                self.out.pagemap_error.get_or_insert_with(|| {
                    format!("pagemap at {:#x}-{:#x}: {e}", vma.start, vma.end)
                });
                self.credit(pool, None, total);
                continue;
            }
            if self.parts.iter().all(|&(_, n)| n == 0) {
                // smaps saw resident pages that pagemap no longer does: no
                // basis for a split, so do not guess.
                self.credit(pool, None, total);
                continue;
            }
            let counted = self.parts.iter().fold(0u64, |sum, &(_, n)| {
                sum.saturating_add(n.saturating_mul(PAGE_SIZE))
            });
            if counted < total {
                // Pages smaps counted that pagemap, read a moment later, no
                // longer shows (the process runs on: a range unmapped in
                // between). Each part gets what pagemap saw in it; the rest
                // is not anyone's to take, so it counts as untraced rather
                // than inflating the other parts.
                for i in 0..self.parts.len() {
                    let (owner, n) = self.parts[i];
                    self.credit(pool, owner, n * PAGE_SIZE);
                }
                self.credit(pool, None, total - counted);
                continue;
            }
            split_exact(total, self.parts.iter().map(|&(_, n)| n), &mut self.split);
            for i in 0..self.parts.len() {
                let owner = self.parts[i].0;
                let share = self.split.shares[i];
                self.credit(pool, owner, share);
            }
        }
    }

    /// Give `bytes` of `pool` to `owner` (untraced when `None`).
    fn credit(&mut self, pool: Pool, owner: Owner, bytes: u64) {
        let out = &mut self.out;
        let acc = owner.and_then(|o| self.accs.get_mut(o.as_u32() as usize)?.as_mut());
        match (pool, owner) {
            (Pool::Private, Some(_)) => {
                out.totals.attributed_rss_bytes += bytes;
                if let Some(acc) = acc {
                    acc.rss += bytes;
                }
            }
            (Pool::Private, None) => out.totals.untraced_rss_bytes += bytes,
            (Pool::Shared, Some(_)) => {
                out.totals.shared_attributed_rss_bytes += bytes;
                if let Some(acc) = acc {
                    acc.shared += bytes;
                }
            }
            (Pool::Shared, None) => out.totals.shared_untraced_rss_bytes += bytes,
        }
    }

    /// The attribution of every VMA added, sites sorted.
    pub fn finish(self) -> Attribution {
        let Join {
            ledger,
            accs,
            mut named,
            mut out,
            ..
        } = self;
        named.sort_unstable();
        named.dedup();
        let mut names: Vec<Vec<String>> = vec![Vec::new(); accs.len()];
        for (slot, id) in named {
            names[slot].push(ledger.name(id).to_owned());
        }
        out.sites = accs
            .into_iter()
            .zip(names)
            .filter_map(|(acc, mut names)| {
                let acc = acc?;
                names.sort_unstable();
                names.dedup();
                Some(SiteUsage {
                    origin: acc.origin,
                    rss_bytes: acc.rss,
                    shared_rss_bytes: acc.shared,
                    virtual_bytes: acc.virt,
                    mappings: acc.mappings,
                    names,
                })
            })
            .collect();
        out.sites.sort_by(|a, b| {
            b.resident_bytes()
                .cmp(&a.resident_bytes())
                .then(b.virtual_bytes.cmp(&a.virtual_bytes))
                .then(a.origin.cmp(&b.origin))
        });
        out
    }
}

/// Count the resident pages of `pool` in each of `pieces` (one VMA) and
/// sum them per owner into `parts`. Sorting puts untraced first, then
/// origins by id, which is the order rounding ties are broken in: a tie
/// never takes a page from untraced.
fn count_parts(
    pool: Pool,
    pieces: &[Piece],
    pages: &mut dyn PageCounter,
    parts: &mut Vec<(Owner, u64)>,
) -> io::Result<()> {
    parts.clear();
    for p in pieces {
        let n = match pool {
            Pool::Private => pages.anon_resident_pages(p.start, p.end)?,
            Pool::Shared => pages.resident_pages(p.start, p.end)?,
        };
        parts.push((p.owner, n));
    }
    parts.sort_unstable_by_key(|&(owner, _)| owner);
    let mut w = 0;
    for r in 0..parts.len() {
        if w > 0 && parts[w - 1].0 == parts[r].0 {
            parts[w - 1].1 += parts[r].1;
        } else {
            parts[w] = parts[r];
            w += 1;
        }
    }
    parts.truncate(w);
    Ok(())
}

/// Cut `vma` into pieces by owner, in address order: the parts of `ranges`
/// (starting with the first that may overlap it) inside the VMA, and the
/// gaps between them. Adjacent pieces with the same owner are merged, so
/// one pagemap read covers them.
fn cut(vma: &Vma, ranges: &[&Range], pieces: &mut Vec<Piece>) {
    pieces.clear();
    let mut push = |owner: Owner, start: u64, end: u64| {
        if start >= end {
            return;
        }
        match pieces.last_mut() {
            Some(last) if last.owner == owner && last.end == start => last.end = end,
            _ => pieces.push(Piece { owner, start, end }),
        }
    };
    let mut pos = vma.start;
    for r in ranges.iter().take_while(|r| r.start < vma.end) {
        let start = r.start.max(vma.start);
        let end = r.end.min(vma.end);
        push(None, pos, start);
        push(Some(r.origin), start, end);
        pos = pos.max(end);
    }
    push(None, pos, vma.end);
}

/// Scratch space for [`split_exact`], reused across VMAs.
#[derive(Default)]
struct Split {
    /// The result: one share in bytes per part.
    shares: Vec<u64>,
    remainders: Vec<u128>,
    order: Vec<usize>,
}

/// Divide `total` bytes over parts in proportion to `counts` (pages), so
/// that the shares (in `split.shares`) add up to `total` exactly: whole
/// pages by the largest remainder method (ties to the earlier part), and a
/// sub-page remainder (never seen from smaps, which counts whole pages) to
/// the part with the most pages. When `total` is `sum(counts)` pages, each
/// part gets exactly its count. All counts 0 gives everything to the first
/// part; callers avoid that case.
fn split_exact(total: u64, counts: impl Iterator<Item = u64> + Clone, split: &mut Split) {
    let Split {
        shares,
        remainders,
        order,
    } = split;
    let units = u128::from(total / PAGE_SIZE);
    let sum: u128 = counts.clone().map(u128::from).sum();
    shares.clear();
    remainders.clear();
    if sum == 0 {
        shares.extend(counts.map(|_| 0));
        if let Some(s) = shares.first_mut() {
            *s = total;
        }
        return;
    }
    let mut given: u128 = 0;
    for c in counts.clone() {
        let exact = units * u128::from(c);
        let share = exact / sum;
        given += share;
        // share <= units <= u64::MAX / PAGE_SIZE: fits, also once scaled.
        shares.push(share as u64);
        remainders.push(exact % sum);
    }
    // Fewer pages than parts are left over (each remainder is < sum, and
    // they add up to left * sum).
    let left = (units - given) as usize;
    order.clear();
    order.extend(0..shares.len());
    order.sort_unstable_by(|&a, &b| remainders[b].cmp(&remainders[a]).then(a.cmp(&b)));
    for &i in order.iter().take(left) {
        shares[i] += 1;
    }
    for s in shares.iter_mut() {
        *s *= PAGE_SIZE;
    }
    let most = counts
        .enumerate()
        .max_by(|(i, a), (j, b)| a.cmp(b).then(j.cmp(i)))
        .map_or(0, |(i, _)| i);
    if let Some(s) = shares.get_mut(most) {
        *s += total % PAGE_SIZE;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::trace::event::{Call, Event, VmaName};

    const P: u64 = PAGE_SIZE;
    const BASE: u64 = 0x7f00_0000_0000;
    const ANON: u32 = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u32;
    const RW: u32 = (libc::PROT_READ | libc::PROT_WRITE) as u32;

    /// Address of page `n` of the test area.
    fn a(n: u64) -> u64 {
        BASE + n * P
    }

    fn ev(call: Call, result: i64, site: u32) -> Event {
        Event {
            time_ns: 1_000,
            pid: 100,
            tid: 100,
            call,
            result,
            stack_id: None,
            ip: 0x7000_1234,
            ret_addr: None,
            user: None,
            call_stack: Some(site),
        }
    }

    /// mmap `pages` anonymous pages at page `page` from call site `site`.
    fn mmap(l: &mut Ledger, page: u64, pages: u64, site: u32) {
        let call = Call::Mmap {
            addr: 0,
            len: pages * P,
            prot: RW,
            flags: ANON,
            fd: -1,
            offset: 0,
        };
        l.apply(&ev(call, a(page) as i64, site));
    }

    fn name(l: &mut Ledger, page: u64, pages: u64, name: &str) {
        let call = Call::SetVmaName {
            addr: a(page),
            len: pages * P,
            name: VmaName::Set(name.into()),
        };
        l.apply(&ev(call, 0, 0));
    }

    /// The origin id of call site `site` in `l`.
    fn origin(l: &Ledger, site: u32) -> OriginId {
        l.origins()
            .find(|(_, o)| o.call_stack == Some(site))
            .map(|(id, _)| id)
            .expect("site has an origin")
    }

    /// A VMA over pages `[first, last)` with `anon` resident anonymous pages.
    fn vma(first: u64, last: u64, anon: u64) -> Vma {
        Vma {
            start: a(first),
            end: a(last),
            size: (last - first) * P,
            rss: anon * P,
            anonymous: anon * P,
            ..Vma::default()
        }
    }

    /// A shared anonymous VMA (`/dev/zero (deleted)`, `rw-s`) over pages
    /// `[first, last)` with `resident` resident (shmem) pages.
    fn shared_vma(first: u64, last: u64, resident: u64) -> Vma {
        Vma {
            start: a(first),
            end: a(last),
            size: (last - first) * P,
            rss: resident * P,
            shared_dirty: resident * P,
            perms: crate::proc::smaps::Perms {
                read: true,
                write: true,
                exec: false,
                shared: true,
            },
            name: "/dev/zero (deleted)".into(),
            deleted: true,
            ..Vma::default()
        }
    }

    /// Resident pages by address; records every query.
    #[derive(Default)]
    struct FakePages {
        /// Private anonymous pages.
        resident: BTreeSet<u64>,
        /// Present pages that are not anonymous (pagemap bit 61).
        shmem: BTreeSet<u64>,
        queries: Vec<(u64, u64)>,
        fail: bool,
    }

    impl FakePages {
        fn with(pages: impl IntoIterator<Item = u64>) -> FakePages {
            FakePages {
                resident: pages.into_iter().map(a).collect(),
                ..FakePages::default()
            }
        }
    }

    impl PageCounter for FakePages {
        fn anon_resident_pages(&mut self, start: u64, end: u64) -> io::Result<u64> {
            self.queries.push((start, end));
            if self.fail {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(self.resident.range(start..end).count() as u64)
        }

        fn resident_pages(&mut self, start: u64, end: u64) -> io::Result<u64> {
            let anon = self.anon_resident_pages(start, end)?;
            Ok(anon + self.shmem.range(start..end).count() as u64)
        }
    }

    /// Run attribution and check the invariant every result must satisfy.
    fn run(vmas: &[Vma], l: &Ledger, pages: &mut FakePages) -> Attribution {
        let at = attribute(vmas, l, pages);
        assert_eq!(
            at.totals.attributed_rss_bytes + at.totals.untraced_rss_bytes,
            at.totals.anon_rss_bytes,
            "attributed + untraced must equal anonymous: {at:?}"
        );
        assert_eq!(
            at.totals.anon_rss_bytes,
            vmas.iter().map(|v| v.anonymous).sum::<u64>()
        );
        assert_eq!(
            at.sites.iter().map(|s| s.rss_bytes).sum::<u64>(),
            at.totals.attributed_rss_bytes
        );
        assert_eq!(
            at.totals.shared_attributed_rss_bytes + at.totals.shared_untraced_rss_bytes,
            at.totals.shared_anon_rss_bytes,
            "the same for shared anonymous memory: {at:?}"
        );
        assert_eq!(
            at.sites.iter().map(|s| s.shared_rss_bytes).sum::<u64>(),
            at.totals.shared_attributed_rss_bytes
        );
        at
    }

    /// `(site, shared rss pages)` for every site, in report order.
    fn shared(l: &Ledger, at: &Attribution) -> Vec<(u32, u64)> {
        at.sites
            .iter()
            .map(|s| {
                let site = l.origin(s.origin).call_stack.expect("test sites");
                (site, s.shared_rss_bytes / P)
            })
            .collect()
    }

    /// `(site, rss pages)` for every site, in report order.
    fn rss(l: &Ledger, at: &Attribution) -> Vec<(u32, u64)> {
        at.sites
            .iter()
            .map(|s| {
                let site = l.origin(s.origin).call_stack.expect("test sites");
                (site, s.rss_bytes / P)
            })
            .collect()
    }

    #[test]
    fn vma_of_one_origin_needs_no_pagemap() {
        let mut l = Ledger::new();
        mmap(&mut l, 0, 10, 1);
        let mut pages = FakePages::default();
        let at = run(&[vma(0, 10, 6)], &l, &mut pages);
        assert_eq!(rss(&l, &at), vec![(1, 6)]);
        assert_eq!(at.totals.untraced_rss_bytes, 0);
        assert_eq!(at.pagemap_vmas, 0);
        assert!(pages.queries.is_empty());
        assert_eq!(at.sites[0].virtual_bytes, 10 * P);
        assert_eq!(at.sites[0].mappings, 1);
        assert_eq!(at.coverage(), 1.0);
    }

    #[test]
    fn merged_vma_of_two_origins_is_split_by_pagemap() {
        let mut l = Ledger::new();
        mmap(&mut l, 0, 8, 1);
        mmap(&mut l, 8, 8, 2);
        // Site 1: 3 resident pages; site 2: 7.
        let mut pages = FakePages::with([0, 1, 5, 8, 9, 10, 11, 12, 13, 15]);
        let at = run(&[vma(0, 16, 10)], &l, &mut pages);
        assert_eq!(rss(&l, &at), vec![(2, 7), (1, 3)]);
        assert_eq!(at.totals.untraced_rss_bytes, 0);
        assert_eq!(at.pagemap_vmas, 1);
        assert_eq!(pages.queries, vec![(a(0), a(8)), (a(8), a(16))]);
    }

    #[test]
    fn half_traced_vma_splits_into_site_and_untraced() {
        let mut l = Ledger::new();
        mmap(&mut l, 4, 4, 1);
        // Pages 0..4 were mapped before tracing began.
        let mut pages = FakePages::with([0, 1, 4]);
        let at = run(&[vma(0, 8, 3)], &l, &mut pages);
        assert_eq!(rss(&l, &at), vec![(1, 1)]);
        assert_eq!(at.totals.untraced_rss_bytes, 2 * P);
        assert_eq!(at.totals.attributed_rss_bytes, P);
        assert!((at.coverage() - 1.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn range_split_across_vmas_by_the_kernel() {
        // One mmap, then mprotect on its middle: the kernel makes three
        // VMAs of one traced range.
        let mut l = Ledger::new();
        mmap(&mut l, 0, 12, 1);
        let call = Call::Mprotect {
            addr: a(4),
            len: 4 * P,
            prot: libc::PROT_READ as u32,
        };
        l.apply(&ev(call, 0, 0));
        let mut pages = FakePages::default();
        let at = run(&[vma(0, 4, 1), vma(4, 8, 2), vma(8, 12, 4)], &l, &mut pages);
        assert_eq!(rss(&l, &at), vec![(1, 7)]);
        assert!(pages.queries.is_empty());
        assert_eq!(at.sites[0].virtual_bytes, 12 * P);
    }

    #[test]
    fn range_straddling_two_vmas_with_others() {
        // Range of site 1 spans the end of VMA 1 and the start of VMA 2,
        // each of which also holds another site.
        let mut l = Ledger::new();
        mmap(&mut l, 0, 4, 2);
        mmap(&mut l, 4, 8, 1);
        mmap(&mut l, 12, 4, 3);
        let mut pages = FakePages::with([0, 4, 5, 8, 9, 10, 12]);
        let at = run(&[vma(0, 8, 3), vma(8, 16, 4)], &l, &mut pages);
        assert_eq!(rss(&l, &at), vec![(1, 5), (2, 1), (3, 1)]);
        assert_eq!(at.pagemap_vmas, 2);
    }

    #[test]
    fn no_ledger_means_all_untraced() {
        let l = Ledger::new();
        let mut pages = FakePages::default();
        let at = run(&[vma(0, 4, 2), vma(10, 20, 5)], &l, &mut pages);
        assert!(at.sites.is_empty());
        assert_eq!(at.totals.untraced_rss_bytes, 7 * P);
        assert_eq!(at.coverage(), 0.0);
        assert!(pages.queries.is_empty());
    }

    #[test]
    fn empty_process() {
        let at = run(&[], &Ledger::new(), &mut FakePages::default());
        assert_eq!(at.totals.anon_rss_bytes, 0);
        assert_eq!(at.coverage(), 1.0);
    }

    #[test]
    fn pagemap_failure_goes_to_untraced() {
        let mut l = Ledger::new();
        mmap(&mut l, 0, 4, 1);
        mmap(&mut l, 4, 4, 2);
        mmap(&mut l, 10, 2, 3);
        let mut pages = FakePages {
            fail: true,
            ..FakePages::default()
        };
        let at = run(&[vma(0, 8, 5), vma(10, 12, 2)], &l, &mut pages);
        assert_eq!(at.pagemap_vmas, 1);
        assert_eq!(at.pagemap_failures, 1);
        assert_eq!(at.totals.untraced_rss_bytes, 5 * P);
        // The single-origin VMA is still attributed.
        assert_eq!(rss(&l, &at), vec![(3, 2), (1, 0), (2, 0)]);
        let msg = at.pagemap_error.expect("error recorded");
        assert!(msg.contains("No such process"), "{msg}");
    }

    #[test]
    fn no_resident_pages_in_pagemap_is_not_guessed() {
        let mut l = Ledger::new();
        mmap(&mut l, 0, 4, 1);
        mmap(&mut l, 4, 4, 2);
        let at = run(&[vma(0, 8, 3)], &l, &mut FakePages::default());
        assert_eq!(at.totals.untraced_rss_bytes, 3 * P);
        assert_eq!(at.pagemap_failures, 0);
    }

    #[test]
    fn drifting_counts_are_rounded_exactly() {
        let mut l = Ledger::new();
        mmap(&mut l, 0, 8, 1);
        mmap(&mut l, 8, 8, 2);
        let resident = [0, 1, 2, 8, 9, 10, 11, 12, 13, 14];
        // smaps saw more pages than pagemap (3 + 7 = 10): each part keeps
        // what pagemap saw in it, the 2 pages gone since are untraced
        // (not handed to whichever part is larger).
        let at = run(&[vma(0, 16, 12)], &l, &mut FakePages::with(resident));
        assert_eq!(rss(&l, &at), vec![(2, 7), (1, 3)]);
        assert_eq!(at.totals.untraced_rss_bytes, 2 * P);
        // And fewer: 7 pages split 2.1 / 4.9.
        let at = run(&[vma(0, 16, 7)], &l, &mut FakePages::with(resident));
        assert_eq!(rss(&l, &at), vec![(2, 5), (1, 2)]);
    }

    #[test]
    fn interleaved_origins_read_once_per_run() {
        let mut l = Ledger::new();
        mmap(&mut l, 0, 2, 1);
        mmap(&mut l, 2, 2, 1); // same site: one read with the previous
        mmap(&mut l, 4, 2, 2);
        mmap(&mut l, 6, 2, 1);
        let mut pages = FakePages::with([0, 3, 4, 6, 7]);
        let at = run(&[vma(0, 9, 5)], &l, &mut pages);
        assert_eq!(
            pages.queries,
            vec![(a(0), a(4)), (a(4), a(6)), (a(6), a(8)), (a(8), a(9))]
        );
        assert_eq!(rss(&l, &at), vec![(1, 4), (2, 1)]);
        assert_eq!(at.sites[0].mappings, 3);
        assert_eq!(at.sites[0].virtual_bytes, 6 * P);
    }

    #[test]
    fn vma_without_anonymous_memory_is_not_read() {
        let mut l = Ledger::new();
        mmap(&mut l, 0, 4, 1);
        mmap(&mut l, 4, 4, 2);
        let mut pages = FakePages::with([0]);
        let at = run(&[vma(0, 8, 0)], &l, &mut pages);
        assert!(pages.queries.is_empty());
        assert_eq!(at.pagemap_vmas, 0);
        assert_eq!(at.sites.len(), 2, "sites with live ranges are listed");
    }

    #[test]
    fn out_of_order_vmas() {
        let mut l = Ledger::new();
        mmap(&mut l, 0, 4, 1);
        mmap(&mut l, 10, 4, 2);
        let at = run(
            &[vma(10, 14, 3), vma(0, 4, 1)],
            &l,
            &mut FakePages::default(),
        );
        assert_eq!(rss(&l, &at), vec![(2, 3), (1, 1)]);
    }

    #[test]
    fn names_and_order() {
        let mut l = Ledger::new();
        mmap(&mut l, 0, 4, 1);
        mmap(&mut l, 4, 4, 1);
        mmap(&mut l, 8, 10, 2);
        mmap(&mut l, 20, 2, 3); // not in any VMA: virtual only
        name(&mut l, 0, 2, "zeta");
        name(&mut l, 4, 4, "alpha");
        name(&mut l, 2, 1, "zeta");
        let at = run(
            &[vma(0, 8, 2), vma(8, 18, 2)],
            &l,
            &mut FakePages::with([0, 1]),
        );
        // Equal rss: larger virtual first.
        assert_eq!(rss(&l, &at), vec![(2, 2), (1, 2), (3, 0)]);
        assert_eq!(at.sites[1].names, vec!["alpha", "zeta"]);
        assert!(at.sites[0].names.is_empty());
        assert_eq!(at.sites[1].mappings, 3, "names split the ranges");
        let json = serde_json::to_value(&at).expect("serializes");
        assert_eq!(
            json["sites"][0]["origin"].as_u64(),
            Some(u64::from(origin(&l, 2).as_u32()))
        );
        assert!(json.get("pagemap_error").is_none());
    }

    /// mmap `pages` shared anonymous pages at page `page` from `site`.
    fn mmap_shared(l: &mut Ledger, page: u64, pages: u64, site: u32) {
        let call = Call::Mmap {
            addr: 0,
            len: pages * P,
            prot: RW,
            flags: (libc::MAP_SHARED | libc::MAP_ANONYMOUS) as u32,
            fd: -1,
            offset: 0,
        };
        l.apply(&ev(call, a(page) as i64, site));
    }

    #[test]
    fn shared_vma_of_one_origin_gets_its_rss() {
        let mut l = Ledger::new();
        mmap_shared(&mut l, 0, 16, 1);
        mmap(&mut l, 20, 4, 2);
        let mut pages = FakePages::default();
        let at = run(&[shared_vma(0, 16, 16), vma(20, 24, 2)], &l, &mut pages);
        assert!(pages.queries.is_empty(), "one part: no pagemap");
        assert_eq!(at.totals.shared_anon_rss_bytes, 16 * P);
        assert_eq!(at.totals.shared_attributed_rss_bytes, 16 * P);
        assert_eq!(shared(&l, &at), vec![(1, 16), (2, 0)]);
        // The private totals are untouched by it.
        assert_eq!(rss(&l, &at), vec![(1, 0), (2, 2)]);
        assert_eq!(at.totals.anon_rss_bytes, 2 * P);
        assert_eq!(at.coverage(), 1.0);
        let json = serde_json::to_value(&at).expect("serializes");
        assert_eq!(json["sites"][0]["shared_rss_bytes"].as_u64(), Some(16 * P));
    }

    #[test]
    fn shared_vma_of_two_parts_is_split_by_present_pages() {
        // A traced range in the upper half of a shared VMA whose lower half
        // was mapped before tracing (a grown or remapped mapping).
        let mut l = Ledger::new();
        mmap_shared(&mut l, 4, 4, 1);
        // Shared pages carry the file bit: only resident_pages sees them.
        let mut pages = FakePages {
            shmem: [0, 4, 5, 6].into_iter().map(a).collect(),
            ..FakePages::default()
        };
        let at = run(&[shared_vma(0, 8, 4)], &l, &mut pages);
        assert_eq!(at.pagemap_vmas, 1);
        assert_eq!(pages.queries, vec![(a(0), a(4)), (a(4), a(8))]);
        assert_eq!(shared(&l, &at), vec![(1, 3)]);
        assert_eq!(at.totals.shared_untraced_rss_bytes, P);
        assert_eq!(at.totals.anon_rss_bytes, 0);
        assert_eq!(at.totals.untraced_rss_bytes, 0);

        // Two traced origins in one shared VMA, and a page pagemap no
        // longer sees: it is untraced, and the VMA's total stays exact.
        let mut l = Ledger::new();
        mmap_shared(&mut l, 0, 4, 1);
        mmap_shared(&mut l, 4, 4, 2);
        let mut pages = FakePages {
            shmem: [0, 4, 5, 6].into_iter().map(a).collect(),
            ..FakePages::default()
        };
        let at = run(&[shared_vma(0, 8, 5)], &l, &mut pages);
        assert_eq!(shared(&l, &at), vec![(2, 3), (1, 1)]);
        assert_eq!(at.totals.shared_untraced_rss_bytes, P);
    }

    #[test]
    fn shared_vma_pagemap_failure_goes_to_shared_untraced() {
        let mut l = Ledger::new();
        mmap_shared(&mut l, 0, 4, 1);
        mmap_shared(&mut l, 4, 4, 2);
        let mut pages = FakePages {
            fail: true,
            ..FakePages::default()
        };
        let at = run(&[shared_vma(0, 8, 6)], &l, &mut pages);
        assert_eq!(at.pagemap_failures, 1);
        assert_eq!(at.totals.shared_untraced_rss_bytes, 6 * P);
        assert_eq!(at.totals.untraced_rss_bytes, 0);
    }

    #[test]
    fn private_dev_zero_mapping_is_private_anonymous() {
        // A private VMA with shared-looking pages is still private
        // anonymous memory: only `Anonymous` counts.
        let mut l = Ledger::new();
        mmap(&mut l, 0, 4, 1);
        let mut v = shared_vma(0, 4, 4);
        v.perms.shared = false;
        v.anonymous = 2 * P;
        let at = run(&[v], &l, &mut FakePages::default());
        assert_eq!(at.totals.shared_anon_rss_bytes, 0);
        assert_eq!(rss(&l, &at), vec![(1, 2)]);
    }

    #[test]
    fn sites_sort_by_private_and_shared_rss() {
        let mut l = Ledger::new();
        mmap(&mut l, 0, 8, 1);
        mmap_shared(&mut l, 10, 8, 2);
        let at = run(
            &[vma(0, 8, 3), shared_vma(10, 18, 5)],
            &l,
            &mut FakePages::default(),
        );
        assert_eq!(at.sites[0].resident_bytes(), 5 * P);
        assert_eq!(rss(&l, &at), vec![(2, 0), (1, 3)]);
    }

    fn split(total: u64, counts: &[u64]) -> Vec<u64> {
        let mut s = Split::default();
        split_exact(total, counts.iter().copied(), &mut s);
        assert_eq!(s.shares.iter().sum::<u64>(), total, "{counts:?}");
        s.shares
    }

    #[test]
    fn split_is_exact() {
        assert_eq!(split(10 * P, &[3, 7]), vec![3 * P, 7 * P]);
        assert_eq!(split(3 * P, &[1, 1, 1]), vec![P, P, P]);
        assert_eq!(split(2 * P, &[1, 1, 1]), vec![P, P, 0], "ties: earlier");
        assert_eq!(split(P, &[0, 5, 0]), vec![0, P, 0]);
        assert_eq!(split(P + 100, &[1, 3]), vec![0, P + 100]);
        assert_eq!(split(0, &[1, 2]), vec![0, 0]);
        assert_eq!(split(5 * P, &[0, 0]), vec![5 * P, 0]);
        // Large values do not overflow.
        assert_eq!(split(u64::MAX / P * P, &[u64::MAX, 1]).len(), 2);
        for total in 0..40 {
            for c in [[1, 2, 3], [7, 0, 7], [100, 1, 1], [0, 0, 9]] {
                let shares = split(total * P, &c);
                let sum: u64 = c.iter().sum();
                for (s, c) in shares.iter().zip(c) {
                    // Within one page of the exact proportion.
                    let exact = (total * c) as f64 / sum as f64;
                    assert!((*s as f64 / P as f64 - exact).abs() < 1.0, "{total} {c}");
                }
            }
        }
    }
}
