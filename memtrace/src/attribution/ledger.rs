//! The ledger: the live set of address ranges a traced process mapped since
//! tracing began, each with its origin (call site, time, thread, syscall).
//!
//! [`Ledger::apply`] replays decoded [`Event`]s with the kernel's semantics
//! (x86_64 Linux, 4 KiB pages). It is pure code: no kernel, no `/proc`.
//! One ledger describes one process; filtering events by pid is the caller's
//! job.
//!
//! The ledger only knows ranges it saw created. Mappings that existed before
//! tracing began are *untraced*: they are never entered, and nothing derived
//! from them (a move, a grown tail, a duplicate) is entered either, so an
//! origin is never guessed.
//!
//! # Semantics
//!
//! Ranges are half-open `[start, end)`, page-aligned, non-overlapping and
//! never empty. Lengths are rounded up to the page as the kernel does; a
//! "successful" event whose address the kernel would have refused
//! (misaligned, or wrapping the address space) is ignored.
//!
//! - **Failed calls change nothing**, with two exceptions where the kernel
//!   itself changes state before failing: `prctl(PR_SET_VMA_ANON_NAME)` and
//!   `madvise` walk every VMA in the range and report `ENOMEM` for holes
//!   after applying to the mapped parts, so `ENOMEM` is applied too. A name
//!   refused with `EINVAL` (this kernel lacks `CONFIG_ANON_VMA_NAME`) is
//!   still recorded, flagged [`Range::name_refused`].
//! - **mmap**: `[result, result + len)` replaces whatever it overlaps (the
//!   kernel only returns an overlapping address for `MAP_FIXED`). With
//!   `MAP_HUGETLB` the length is rounded up to the huge page size encoded
//!   in the flags (2 MiB by default).
//! - **munmap**: removes the range, splitting ranges at head, tail or both.
//! - **mremap** (`result` = new address):
//!   - `old_len == 0` duplicates a shared mapping: the source stays and the
//!     destination gets the attributes of the range holding `old_addr`.
//!   - in place (`result == old_addr`): shrinking removes the tail; growing
//!     extends the range holding the last old page (the tail inherits its
//!     origin: it continues that mapping in the same VMA).
//!   - move: every part of `[old_addr, old_addr + min(old_len, new_len))`
//!     moves with its own origin, keeping its position; a grown tail
//!     inherits the last part's origin if the last old page was traced;
//!     whatever was at the destination is replaced (`MREMAP_FIXED`); the
//!     source is removed, except with `MREMAP_DONTUNMAP` where it stays
//!     mapped (now empty, same origin).
//! - **brk**: `result` is the new break (the old one on failure). Growing
//!   maps `[PAGE_ALIGN(old), PAGE_ALIGN(new))` with this call's origin;
//!   shrinking unmaps `[PAGE_ALIGN(new), PAGE_ALIGN(old))`. The first brk
//!   event (glibc's `brk(0)` query) only learns the break. A growth that
//!   the ledger did not see succeed (unknown previous break, or a failed
//!   call reporting a break it never saw grow) is untraced.
//! - **mprotect** / names / `MADV_DONTFORK` set an attribute on the covered
//!   parts of traced ranges, splitting them at the boundaries only where the
//!   attribute actually changes. Names apply to anonymous ranges only (the
//!   kernel answers `EBADF` for file mappings).
//! - **exec** (success) and **exit of the whole process** (the tracer
//!   reports [`Call::Exit`] when the last thread leaves) clear all ranges and the break. Origins are kept so that ids handed
//!   out earlier stay valid.
//! - **fork**: nothing here; the caller makes the child's ledger with
//!   [`Ledger::fork_child`].
//!
//! Adjacent ranges are not merged, even with the same origin: each mmap call
//! stays its own range. The exceptions are continuations of one mapping
//! (an in-place mremap growth, consecutive brk growths from one call site),
//! which extend the range they continue. [`Ledger::coalesced`] merges
//! everything adjacent for comparison with `/proc/PID/maps`.
//!
//! # Memory
//!
//! A [`Range`] is 48 bytes; with its `u64` key that is 56 bytes per entry
//! in a `BTreeMap` leaf. Leaves hold 6 to 11 entries (plus ~16 bytes of
//! header), so the worst case (half-full leaves) is about 56 × 11 / 5 ≈ 125
//! bytes per range and the typical case about 75; internal nodes add under
//! 10%. That is within the budget of ~200 bytes per live range. Origins and
//! names are interned once per distinct call site / string.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;

use memtrace_common::EventKind;

pub use crate::proc::PAGE_SIZE;
use crate::trace::event::{Call, Event, VmaName};

// Linux ABI values used below, as the u32/i32 the decoded events carry.
const MAP_SHARED: u32 = libc::MAP_SHARED as u32;
const MAP_PRIVATE: u32 = libc::MAP_PRIVATE as u32;
const MAP_ANONYMOUS: u32 = libc::MAP_ANONYMOUS as u32;
const MAP_FIXED: u32 = libc::MAP_FIXED as u32;
const MAP_HUGETLB: u32 = libc::MAP_HUGETLB as u32;
const MAP_HUGE_SHIFT: u32 = libc::MAP_HUGE_SHIFT as u32;
const MAP_HUGE_MASK: u32 = libc::MAP_HUGE_MASK as u32;
const MREMAP_DONTUNMAP: u32 = libc::MREMAP_DONTUNMAP as u32;
const PROT_RW: u32 = (libc::PROT_READ | libc::PROT_WRITE) as u32;
/// mprotect-only modifiers; they are not protection bits of the result.
const PROT_GROWS: u32 = (libc::PROT_GROWSDOWN | libc::PROT_GROWSUP) as u32;
/// Default huge page size when `MAP_HUGETLB` carries no size.
const HUGE_PAGE_DEFAULT: u64 = 2 << 20;
const EINVAL: i32 = libc::EINVAL;
const ENOMEM: i32 = libc::ENOMEM;

/// Index of an [`Origin`] in its ledger's origin table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OriginId(u32);

impl OriginId {
    /// The raw index, for output formats that need a number.
    pub fn as_u32(self) -> u32 {
        self.0
    }
}

/// Index of an interned region name (see [`Ledger::name`]).
///
/// Non-zero so that `Option<NameId>` stays 4 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NameId(NonZeroU32);

impl NameId {
    /// The raw (1-based) id, for output formats that need a number.
    pub fn as_u32(self) -> u32 {
        self.0.get()
    }
}

/// Where a range came from: one call site, interned.
///
/// Events with the same kind, kernel stack id, unwound call stack, return
/// address and instruction pointer share one origin; `tid` and `time_ns` are those of the first
/// such event and `events` counts them all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The syscall that created the range ([`EventKind::Mmap`] or
    /// [`EventKind::Brk`]; moved ranges keep their creator's origin).
    pub kind: EventKind,
    /// User stack id in the tracer's stack map, if one was captured.
    pub stack_id: Option<u32>,
    /// The unwound call stack's id in the session's stack table
    /// ([`Event::call_stack`]), if userspace unwound it.
    pub call_stack: Option<u32>,
    /// Return address at the user stack pointer at syscall entry.
    pub ret_addr: Option<u64>,
    /// User instruction pointer at syscall entry.
    pub ip: u64,
    /// Thread of the first event from this call site.
    pub tid: u32,
    /// CLOCK_MONOTONIC nanoseconds of the first event from this call site.
    pub time_ns: u64,
    /// How many range-creating events came from this call site.
    pub events: u64,
    /// For memory committed into an inaccessible reservation (`MAP_FIXED`
    /// over a traced `PROT_NONE` range, as the JVM, Go and others commit):
    /// the reservation's call stack. It tells what the memory is for where
    /// the commit path is shared (G1 commits its heap and its mark bitmaps
    /// through the same code).
    pub reserved_by: Option<u32>,
}

/// What makes two events the same call site.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct OriginKey {
    kind: EventKind,
    stack_id: Option<u32>,
    call_stack: Option<u32>,
    ret_addr: Option<u64>,
    ip: u64,
    reserved_by: Option<u32>,
}

/// One live traced address range `[start, end)` and its attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Range {
    /// First byte (page-aligned).
    pub start: u64,
    /// One past the last byte (page-aligned, `> start`).
    pub end: u64,
    /// Offset of `start` within what was mapped: the file offset for file
    /// mappings; for anonymous mappings the offset within the original
    /// mmap (0 at creation), for brk ranges the offset within the traced
    /// contiguous heap. Pieces split off or moved keep counting, so a
    /// range's pages can always be placed within their original mapping.
    pub offset: u64,
    /// The call site that created the range.
    pub origin: OriginId,
    /// `PROT_*` bits, as of the last mprotect.
    pub prot: u32,
    /// `MAP_*` flags of the creating mmap (`MAP_PRIVATE | MAP_ANONYMOUS`
    /// for brk).
    pub flags: u32,
    /// Name set with `prctl(PR_SET_VMA_ANON_NAME)`, if any.
    pub name: Option<NameId>,
    /// The kernel refused the name (`EINVAL`, e.g. no
    /// `CONFIG_ANON_VMA_NAME`): `/proc/PID/maps` will not show it.
    pub name_refused: bool,
    /// `madvise(MADV_DONTFORK)` is in effect: a forked child does not get it.
    pub dont_fork: bool,
}

impl Range {
    /// Length in bytes.
    pub fn size(&self) -> u64 {
        self.end - self.start
    }

    /// Whether the range maps a file (no `MAP_ANONYMOUS`). Shared anonymous
    /// memory is not fd-backed here.
    pub fn fd_backed(&self) -> bool {
        self.flags & MAP_ANONYMOUS == 0
    }

    /// Whether the mapping is shared (`MAP_SHARED` or
    /// `MAP_SHARED_VALIDATE`).
    pub fn shared(&self) -> bool {
        self.flags & MAP_SHARED != 0
    }

    /// The same mapping over `[start, end)`, with the offset adjusted.
    /// `start` may lie beyond `self.end`: that continues the mapping.
    fn piece(&self, start: u64, end: u64) -> Range {
        debug_assert!(self.start <= start && start < end);
        Range {
            start,
            end,
            offset: self.offset + (start - self.start),
            ..self.clone()
        }
    }

    /// The same piece of mapping placed at `start` instead.
    fn moved_to(&self, start: u64) -> Range {
        Range {
            start,
            end: start + self.size(),
            ..self.clone()
        }
    }

    /// Whether `next` continues this range exactly: adjacent, offset
    /// contiguous, all attributes equal.
    fn continues_with(&self, next: &Range) -> bool {
        self.end == next.start
            && self.offset + self.size() == next.offset
            && self.origin == next.origin
            && self.prot == next.prot
            && self.flags == next.flags
            && self.name == next.name
            && self.name_refused == next.name_refused
            && self.dont_fork == next.dont_fork
    }
}

/// The live traced ranges of one process, with their origins.
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    ranges: BTreeMap<u64, Range>,
    origins: Vec<Origin>,
    origin_ids: HashMap<OriginKey, OriginId>,
    names: Vec<Box<str>>,
    name_ids: HashMap<Box<str>, NameId>,
    /// The program break as of the last brk event, if one was seen.
    brk: Option<u64>,
}

impl Ledger {
    /// An empty ledger: nothing traced yet.
    pub fn new() -> Ledger {
        Ledger::default()
    }

    /// Apply one event of this ledger's process.
    pub fn apply(&mut self, ev: &Event) {
        match &ev.call {
            Call::Mmap {
                len,
                prot,
                flags,
                offset,
                ..
            } => {
                if !ev.failed() {
                    self.mmap(ev, *len, *prot, *flags, *offset);
                }
            }
            Call::Munmap { addr, len } => {
                if !ev.failed()
                    && let Some((start, end)) = span(*addr, *len)
                {
                    self.remove(start, end);
                }
            }
            Call::Mremap {
                old_addr,
                old_len,
                new_len,
                flags,
                ..
            } => {
                if !ev.failed() {
                    self.mremap(*old_addr, *old_len, *new_len, *flags, ev.result as u64);
                }
            }
            Call::Brk { addr } => self.brk(ev, *addr),
            Call::Mprotect { addr, len, prot } => {
                if !ev.failed()
                    && let Some((start, end)) = span(*addr, *len)
                {
                    let prot = prot & !PROT_GROWS;
                    self.update(start, end, |r| r.prot = prot);
                }
            }
            Call::Madvise { addr, len, advice } => {
                let dont_fork = match *advice {
                    libc::MADV_DONTFORK => true,
                    libc::MADV_DOFORK => false,
                    // Other advice changes pages, not mappings.
                    _ => return,
                };
                if (!ev.failed() || ev.errno() == Some(ENOMEM))
                    && let Some((start, end)) = span(*addr, *len)
                {
                    self.update(start, end, |r| r.dont_fork = dont_fork);
                }
            }
            Call::SetVmaName { addr, len, name } => match name {
                VmaName::Set(n) => self.set_name(ev, *addr, *len, Some(n)),
                VmaName::Cleared => self.set_name(ev, *addr, *len, None),
                // Some name nobody could read: not a clear, so the
                // range keeps what it had.
                VmaName::Unreadable => {}
            },
            Call::Fork { .. } => {}
            Call::Exec { .. } => {
                if !ev.failed() {
                    self.clear();
                }
            }
            // The last thread left: the address space is gone.
            Call::Exit { .. } => self.clear(),
        }
    }

    /// The ledger a forked child starts with: the parent's ranges (except
    /// those marked `MADV_DONTFORK`), origins, names and break.
    pub fn fork_child(&self) -> Ledger {
        let mut child = self.clone();
        child.ranges.retain(|_, r| !r.dont_fork);
        child
    }

    /// All live ranges in address order.
    pub fn ranges(&self) -> impl Iterator<Item = &Range> {
        self.ranges.values()
    }

    /// The ranges that overlap `[start, end)`, in address order.
    pub fn overlapping(&self, start: u64, end: u64) -> impl Iterator<Item = &Range> {
        let end = end.max(start);
        let before = self
            .ranges
            .range(..start)
            .next_back()
            .map(|(_, r)| r)
            .filter(|r| r.end > start && start < end);
        before
            .into_iter()
            .chain(self.ranges.range(start..end).map(|(_, r)| r))
    }

    /// The range containing `addr`, if it is traced.
    pub fn find(&self, addr: u64) -> Option<&Range> {
        self.ranges
            .range(..=addr)
            .next_back()
            .map(|(_, r)| r)
            .filter(|r| addr < r.end)
    }

    /// Number of live ranges.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// Whether no traced range is live.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Total bytes of all live ranges.
    pub fn total_bytes(&self) -> u64 {
        self.ranges.values().map(Range::size).sum()
    }

    /// Live bytes and range count per origin, largest first (ties by id).
    pub fn by_origin(&self) -> Vec<(OriginId, u64, usize)> {
        let mut totals: HashMap<OriginId, (u64, usize)> = HashMap::new();
        for r in self.ranges.values() {
            let t = totals.entry(r.origin).or_default();
            t.0 += r.size();
            t.1 += 1;
        }
        let mut out: Vec<_> = totals
            .into_iter()
            .map(|(id, (bytes, count))| (id, bytes, count))
            .collect();
        out.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        out
    }

    /// Live ranges with adjacent ones merged, as `(start, end)`: the shape
    /// to compare with `/proc/PID/maps`, where the kernel merges VMAs.
    pub fn coalesced(&self) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for r in self.ranges.values() {
            match out.last_mut() {
                Some(last) if last.1 == r.start => last.1 = r.end,
                _ => out.push((r.start, r.end)),
            }
        }
        out
    }

    /// The origin behind `id`.
    ///
    /// # Panics
    ///
    /// If `id` did not come from this ledger (or the ledger it was forked
    /// from).
    pub fn origin(&self, id: OriginId) -> &Origin {
        &self.origins[id.0 as usize]
    }

    /// All origins ever interned, with their ids, in order of first use.
    pub fn origins(&self) -> impl Iterator<Item = (OriginId, &Origin)> {
        (0u32..).map(OriginId).zip(self.origins.iter())
    }

    /// The name behind `id`.
    ///
    /// # Panics
    ///
    /// If `id` did not come from this ledger (or the ledger it was forked
    /// from).
    pub fn name(&self, id: NameId) -> &str {
        &self.names[id.0.get() as usize - 1]
    }

    /// The program break as of the last brk event, if one was seen.
    pub fn brk_end(&self) -> Option<u64> {
        self.brk
    }

    /// Learn the program break of a process traced from now on (read from
    /// `/proc` once tracing is on), so its first brk growth is traced from
    /// there. A break already known from events wins.
    pub fn learn_brk(&mut self, end: u64) {
        self.brk.get_or_insert(end);
    }

    fn clear(&mut self) {
        self.ranges.clear();
        self.brk = None;
    }

    fn mmap(&mut self, ev: &Event, len: u64, prot: u32, flags: u32, offset: u64) {
        let start = ev.result as u64;
        let Some(len) = round_up(len, mmap_granule(flags)) else {
            return;
        };
        let Some((start, end)) = span(start, len) else {
            return;
        };
        if start == end {
            return;
        }
        let reserved_by = if flags & MAP_FIXED != 0 {
            self.reservation_at(start)
        } else {
            None
        };
        let origin = self.intern_origin(ev, reserved_by);
        // The kernel ignores the offset of anonymous mappings.
        let offset = if flags & MAP_ANONYMOUS != 0 {
            0
        } else {
            offset
        };
        self.remove(start, end);
        self.ranges.insert(
            start,
            Range {
                start,
                end,
                offset,
                origin,
                prot: prot & !PROT_GROWS,
                flags,
                name: None,
                name_refused: false,
                dont_fork: false,
            },
        );
    }

    fn mremap(&mut self, old_addr: u64, old_len: u64, new_len: u64, flags: u32, result: u64) {
        let (Some(old_len), Some(new_len)) = (page_round(old_len), page_round(new_len)) else {
            return;
        };
        let (Some((old, old_end)), Some((new, new_end))) =
            (span(old_addr, old_len), span(result, new_len))
        else {
            return;
        };
        if new == new_end {
            return;
        }

        if old == old_end {
            // old_len == 0 duplicates a shared mapping: the source stays and
            // the destination maps the same object from old_addr on.
            let copy = self.find(old).map(|src| Range {
                start: new,
                end: new_end,
                offset: src.offset + (old - src.start),
                ..src.clone()
            });
            self.remove(new, new_end);
            if let Some(copy) = copy {
                self.ranges.insert(new, copy);
            }
            return;
        }

        if new == old && flags & MREMAP_DONTUNMAP == 0 {
            if new_end <= old_end {
                self.remove(new_end, old_end);
            } else {
                // Grown in place: the range holding the last old page
                // continues over the new tail.
                let last = self.find(old_end - PAGE_SIZE).cloned();
                self.remove(old_end, new_end);
                if let Some(last) = last {
                    self.insert_merging_left(last.piece(old_end, new_end));
                }
            }
            return;
        }

        // Moved. Only the first min(old_len, new_len) bytes travel: a
        // shrinking move unmaps the old tail first.
        let kept_end = old + old_len.min(new_len);
        let parts: Vec<Range> = self
            .overlapping(old, kept_end)
            .map(|r| r.piece(r.start.max(old), r.end.min(kept_end)))
            .collect();
        if flags & MREMAP_DONTUNMAP == 0 {
            self.remove(old, old_end);
        } else {
            // The source stays mapped (empty, same origin).
            self.remove(kept_end, old_end);
        }
        self.remove(new, new_end);
        let mut last_moved = None;
        for part in parts {
            let moved = part.moved_to(new + (part.start - old));
            if part.end == old_end {
                last_moved = Some(moved.clone());
            }
            self.ranges.insert(moved.start, moved);
        }
        if new_len > old_len
            && let Some(last) = last_moved
        {
            self.insert_merging_left(last.piece(last.end, new_end));
        }
    }

    fn brk(&mut self, ev: &Event, addr: u64) {
        // brk returns the new break, or the unchanged one on failure; never
        // an errno. Anything that is not an address is corrupt: ignore.
        let Ok(now) = u64::try_from(ev.result) else {
            return;
        };
        if let Some(before) = self.brk {
            let (Some(top_before), Some(top_now)) = (page_round(before), page_round(now)) else {
                return;
            };
            if top_now < top_before {
                self.remove(top_now, top_before);
            } else if top_now > top_before && addr == now {
                self.brk_grow(ev, top_before, top_now);
            }
            // A break that grew without this call succeeding means events
            // were lost: the growth is untraced.
        }
        self.brk = Some(now);
    }

    fn brk_grow(&mut self, ev: &Event, start: u64, end: u64) {
        let origin = self.intern_origin(ev, None);
        self.remove(start, end);
        // Offsets count within the traced contiguous heap.
        let offset = self
            .find(start.wrapping_sub(1))
            .filter(|left| left.end == start && self.origin(left.origin).kind == EventKind::Brk)
            .map_or(0, |left| left.offset + left.size());
        self.insert_merging_left(Range {
            start,
            end,
            offset,
            origin,
            prot: PROT_RW,
            flags: MAP_PRIVATE | MAP_ANONYMOUS,
            name: None,
            name_refused: false,
            dont_fork: false,
        });
    }

    fn set_name(&mut self, ev: &Event, addr: u64, len: u64, name: Option<&str>) {
        // EINVAL: refused (no CONFIG_ANON_VMA_NAME here, or a bad name), but
        // the user asked for it, so keep it. ENOMEM: applied to the mapped
        // parts around holes.
        let refused = match ev.errno() {
            None => false,
            Some(EINVAL) => true,
            Some(ENOMEM) => false,
            Some(_) => return,
        };
        let Some((start, end)) = span(addr, len) else {
            return;
        };
        let name = name.map(|n| self.intern_name(n));
        let refused = refused && name.is_some();
        self.update(start, end, |r| {
            if !r.fd_backed() {
                r.name = name;
                r.name_refused = refused;
            }
        });
    }

    /// The reservation a `MAP_FIXED` mapping at `addr` commits into: the
    /// traced range there, when it is inaccessible (its own call stack) or
    /// was itself committed into a reservation (that one's; an uncommit
    /// and a later commit keep the first reservation).
    fn reservation_at(&self, addr: u64) -> Option<u32> {
        let r = self.find(addr)?;
        let o = self.origin(r.origin);
        o.reserved_by
            .or_else(|| (r.prot == 0 && r.flags & MAP_ANONYMOUS != 0).then_some(o.call_stack)?)
    }

    fn intern_origin(&mut self, ev: &Event, reserved_by: Option<u32>) -> OriginId {
        let key = OriginKey {
            kind: ev.kind(),
            stack_id: ev.stack_id,
            call_stack: ev.call_stack,
            ret_addr: ev.ret_addr,
            ip: ev.ip,
            reserved_by,
        };
        if let Some(&id) = self.origin_ids.get(&key) {
            self.origins[id.0 as usize].events += 1;
            return id;
        }
        // 2^32 distinct call sites would need >200 GiB of origins first.
        let id = OriginId(u32::try_from(self.origins.len()).expect("fewer than 2^32 origins"));
        self.origins.push(Origin {
            kind: key.kind,
            stack_id: key.stack_id,
            call_stack: key.call_stack,
            ret_addr: key.ret_addr,
            ip: key.ip,
            tid: ev.tid,
            time_ns: ev.time_ns,
            events: 1,
            reserved_by,
        });
        self.origin_ids.insert(key, id);
        id
    }

    fn intern_name(&mut self, name: &str) -> NameId {
        if let Some(&id) = self.name_ids.get(name) {
            return id;
        }
        let n = u32::try_from(self.names.len() + 1).expect("fewer than 2^32 names");
        let id = NameId(NonZeroU32::new(n).expect("len + 1 is non-zero"));
        self.names.push(name.into());
        self.name_ids.insert(name.into(), id);
        id
    }

    /// Split the range containing `addr` (strictly inside) in two.
    fn split_at(&mut self, addr: u64) {
        let Some((_, r)) = self.ranges.range_mut(..addr).next_back() else {
            return;
        };
        if r.end <= addr {
            return;
        }
        let tail = r.piece(addr, r.end);
        r.end = addr;
        self.ranges.insert(addr, tail);
    }

    /// Unmap `[start, end)`.
    fn remove(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        self.split_at(start);
        self.split_at(end);
        let keys: Vec<u64> = self.ranges.range(start..end).map(|(k, _)| *k).collect();
        for k in keys {
            self.ranges.remove(&k);
        }
    }

    /// Apply `f` to the parts of traced ranges within `[start, end)`,
    /// splitting only ranges whose attributes actually change.
    fn update(&mut self, start: u64, end: u64, f: impl Fn(&mut Range)) {
        if start >= end {
            return;
        }
        let keys: Vec<u64> = self.overlapping(start, end).map(|r| r.start).collect();
        for key in keys {
            let Some(r) = self.ranges.get(&key) else {
                continue;
            };
            let mut changed = r.clone();
            f(&mut changed);
            if changed == *r {
                continue;
            }
            let (s, e) = (r.start.max(start), r.end.min(end));
            self.split_at(s);
            self.split_at(e);
            if let Some(part) = self.ranges.get_mut(&s) {
                f(part);
            }
        }
        // Undo splits that turned out to separate equal pieces of one
        // mapping, e.g. a guard page protected and unprotected again.
        self.merge_continuations(start, end);
    }

    /// Merge ranges touching `[start, end]` that exactly continue their
    /// left neighbour (same mapping, same attributes). Separate mmap calls
    /// never qualify: each starts at its own offset 0 (or file offset).
    fn merge_continuations(&mut self, start: u64, end: u64) {
        let from = self.find(start.wrapping_sub(1)).map_or(start, |r| r.start);
        let keys: Vec<u64> = self.ranges.range(from..=end).map(|(k, _)| *k).collect();
        let mut left_key: Option<u64> = None;
        for key in keys {
            let Some(r) = self.ranges.get(&key) else {
                continue;
            };
            if let Some(lk) = left_key
                && let Some(left) = self.ranges.get(&lk)
                && left.continues_with(r)
            {
                let end = r.end;
                self.ranges.remove(&key);
                if let Some(left) = self.ranges.get_mut(&lk) {
                    left.end = end;
                }
                continue;
            }
            left_key = Some(key);
        }
    }

    /// Insert `r` (over free space), extending its left neighbour instead
    /// if `r` continues it exactly.
    fn insert_merging_left(&mut self, r: Range) {
        if let Some((_, left)) = self.ranges.range_mut(..r.start).next_back()
            && left.continues_with(&r)
        {
            left.end = r.end;
            return;
        }
        self.ranges.insert(r.start, r);
    }
}

/// `[addr, addr + page_round(len))`, or `None` if the kernel would refuse
/// it (misaligned start, or the end wraps).
fn span(addr: u64, len: u64) -> Option<(u64, u64)> {
    if !addr.is_multiple_of(PAGE_SIZE) {
        return None;
    }
    Some((addr, addr.checked_add(page_round(len)?)?))
}

fn page_round(len: u64) -> Option<u64> {
    round_up(len, PAGE_SIZE)
}

/// `len` rounded up to a multiple of `granule` (a power of two).
fn round_up(len: u64, granule: u64) -> Option<u64> {
    Some(len.checked_add(granule - 1)? & !(granule - 1))
}

/// The unit an mmap length is rounded to: the huge page size for
/// `MAP_HUGETLB` (log2 encoded in the flags, else the 2 MiB default).
fn mmap_granule(flags: u32) -> u64 {
    if flags & MAP_HUGETLB == 0 {
        return PAGE_SIZE;
    }
    match (flags >> MAP_HUGE_SHIFT) & MAP_HUGE_MASK {
        0 => HUGE_PAGE_DEFAULT,
        shift => 1u64
            .checked_shl(shift)
            .map_or(HUGE_PAGE_DEFAULT, |g| g.max(PAGE_SIZE)),
    }
}

#[cfg(test)]
mod tests;
