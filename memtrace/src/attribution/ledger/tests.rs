//! The ledger against hand-written event sequences, one kernel case each.

use super::*;

const P: u64 = PAGE_SIZE;
const BASE: u64 = 0x7f00_0000_0000;
const PID: u32 = 100;
const ANON: u32 = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u32;
const EINVAL_RET: i64 = -(libc::EINVAL as i64);
const ENOMEM_RET: i64 = -(libc::ENOMEM as i64);

/// Address of page `n` of the test area.
fn a(n: u64) -> u64 {
    BASE + n * P
}

/// An event from call site `stack` (stack id and return address differ
/// per site).
fn ev(call: Call, result: i64, stack: u32) -> Event {
    Event {
        time_ns: 1_000 + u64::from(stack),
        pid: PID,
        tid: PID + 1,
        call,
        result,
        stack_id: Some(stack),
        ip: 0x7000_1234,
        ret_addr: Some(0x5500_0000 + u64::from(stack)),
        user: None,
        call_stack: None,
    }
}

fn mmap_call(pages: u64, flags: u32) -> Call {
    Call::Mmap {
        addr: 0,
        len: pages * P,
        prot: PROT_RW,
        flags,
        fd: -1,
        offset: 0,
    }
}

fn mmap(l: &mut Ledger, page: u64, pages: u64, stack: u32) {
    l.apply(&ev(mmap_call(pages, ANON), a(page) as i64, stack));
}

fn munmap(l: &mut Ledger, page: u64, pages: u64) {
    let call = Call::Munmap {
        addr: a(page),
        len: pages * P,
    };
    l.apply(&ev(call, 0, 0));
}

fn mremap(l: &mut Ledger, old: u64, old_pages: u64, new_pages: u64, flags: u32, to: u64) {
    let call = Call::Mremap {
        old_addr: a(old),
        old_len: old_pages * P,
        new_len: new_pages * P,
        flags,
        new_addr: if flags & libc::MREMAP_FIXED as u32 != 0 {
            a(to)
        } else {
            0
        },
    };
    l.apply(&ev(call, a(to) as i64, 0));
}

fn brk(l: &mut Ledger, addr: u64, result: u64, stack: u32) {
    l.apply(&ev(Call::Brk { addr }, result as i64, stack));
}

/// `(first page, end page, stack id of the origin)` per range.
fn view(l: &Ledger) -> Vec<(u64, u64, u32)> {
    l.ranges()
        .map(|r| {
            assert!(r.start < r.end, "empty range {r:?}");
            assert_eq!(r.start % P, 0, "misaligned {r:?}");
            assert_eq!(r.end % P, 0, "misaligned {r:?}");
            let stack = l.origin(r.origin).stack_id.unwrap_or(u32::MAX);
            ((r.start - BASE) / P, (r.end - BASE) / P, stack)
        })
        .collect()
}

/// Page offsets within the original mapping, per range.
fn offsets(l: &Ledger) -> Vec<u64> {
    l.ranges().map(|r| r.offset / P).collect()
}

#[test]
fn range_is_small() {
    // The per-range memory estimate in the module docs relies on this.
    assert!(
        size_of::<Range>() <= 48,
        "Range grew to {} bytes",
        size_of::<Range>()
    );
    assert_eq!(size_of::<Option<NameId>>(), 4);
}

#[test]
fn mmap_records_attributes() {
    let mut l = Ledger::new();
    let call = Call::Mmap {
        addr: 0,
        len: 3 * P - 100,
        prot: libc::PROT_READ as u32,
        flags: libc::MAP_SHARED as u32,
        fd: 3,
        offset: 8 * P,
    };
    l.apply(&ev(call, a(0) as i64, 7));
    let r = l.find(a(2)).expect("range at page 2");
    assert_eq!((r.start, r.end), (a(0), a(3)), "length is page-rounded");
    assert_eq!(r.offset, 8 * P);
    assert!(r.fd_backed() && r.shared());
    assert_eq!(r.prot, libc::PROT_READ as u32);
    let o = l.origin(r.origin);
    assert_eq!(o.kind, EventKind::Mmap);
    assert_eq!(
        (o.stack_id, o.ret_addr, o.tid),
        (Some(7), Some(0x5500_0007), PID + 1)
    );
    assert_eq!(l.total_bytes(), 3 * P);
}

#[test]
fn identical_call_sites_share_an_origin() {
    let mut l = Ledger::new();
    mmap(&mut l, 0, 1, 1);
    mmap(&mut l, 4, 1, 1);
    mmap(&mut l, 8, 1, 2);
    let ids: Vec<_> = l.ranges().map(|r| r.origin).collect();
    assert_eq!(ids[0], ids[1]);
    assert_ne!(ids[0], ids[2]);
    assert_eq!(l.origin(ids[0]).events, 2);
    assert_eq!(l.origin(ids[0]).time_ns, 1_001, "time of the first event");
    assert_eq!(l.origins().count(), 2);
    assert_eq!(l.by_origin(), vec![(ids[0], 2 * P, 2), (ids[2], P, 1)]);
}

#[test]
fn adjacent_mmaps_stay_separate_but_coalesce() {
    let mut l = Ledger::new();
    mmap(&mut l, 0, 2, 1);
    mmap(&mut l, 2, 2, 1);
    mmap(&mut l, 5, 1, 1);
    assert_eq!(view(&l), vec![(0, 2, 1), (2, 4, 1), (5, 6, 1)]);
    assert_eq!(l.coalesced(), vec![(a(0), a(4)), (a(5), a(6))]);
}

#[test]
fn hugetlb_length_rounds_to_huge_pages() {
    let mut l = Ledger::new();
    let flags = ANON | libc::MAP_HUGETLB as u32;
    l.apply(&ev(mmap_call(1, flags), 0x4000_0000, 1));
    assert_eq!(l.total_bytes(), 2 << 20);
    let flags_1g = flags | (30 << libc::MAP_HUGE_SHIFT);
    l.apply(&ev(mmap_call(1, flags_1g), 0x8000_0000, 1));
    assert_eq!(l.total_bytes(), (2 << 20) + (1 << 30));
}

#[test]
fn munmap_head() {
    let mut l = Ledger::new();
    mmap(&mut l, 0, 10, 1);
    munmap(&mut l, 0, 3);
    assert_eq!(view(&l), vec![(3, 10, 1)]);
    assert_eq!(offsets(&l), vec![3]);
}

#[test]
fn munmap_tail_with_unrounded_length() {
    let mut l = Ledger::new();
    mmap(&mut l, 0, 10, 1);
    let call = Call::Munmap {
        addr: a(7),
        len: 2 * P + 1,
    };
    l.apply(&ev(call, 0, 0));
    assert_eq!(view(&l), vec![(0, 7, 1)]);
}

#[test]
fn munmap_middle_hole() {
    let mut l = Ledger::new();
    mmap(&mut l, 0, 10, 1);
    munmap(&mut l, 4, 2);
    assert_eq!(view(&l), vec![(0, 4, 1), (6, 10, 1)]);
    assert_eq!(offsets(&l), vec![0, 6]);
    assert_eq!(l.coalesced(), vec![(a(0), a(4)), (a(6), a(10))]);
}

#[test]
fn munmap_spanning_ranges_and_gaps() {
    let mut l = Ledger::new();
    mmap(&mut l, 0, 4, 1);
    mmap(&mut l, 6, 2, 2);
    mmap(&mut l, 9, 4, 3);
    mmap(&mut l, 20, 1, 4);
    munmap(&mut l, 2, 9);
    assert_eq!(view(&l), vec![(0, 2, 1), (11, 13, 3), (20, 21, 4)]);
}

#[test]
fn munmap_of_untraced_area_is_harmless() {
    let mut l = Ledger::new();
    mmap(&mut l, 10, 2, 1);
    munmap(&mut l, 0, 5);
    assert_eq!(view(&l), vec![(10, 12, 1)]);
}

#[test]
fn map_fixed_over_part_of_one_range() {
    let mut l = Ledger::new();
    mmap(&mut l, 0, 10, 1);
    mmap(&mut l, 3, 2, 2);
    assert_eq!(view(&l), vec![(0, 3, 1), (3, 5, 2), (5, 10, 1)]);
    assert_eq!(offsets(&l), vec![0, 0, 5]);
}

#[test]
fn map_fixed_over_two_ranges() {
    let mut l = Ledger::new();
    mmap(&mut l, 0, 4, 1);
    mmap(&mut l, 4, 4, 2);
    mmap(&mut l, 2, 4, 3);
    assert_eq!(view(&l), vec![(0, 2, 1), (2, 6, 3), (6, 8, 2)]);
    assert_eq!(l.len(), 3);
}

#[test]
fn mremap_grow_in_place() {
    let mut l = Ledger::new();
    mmap(&mut l, 0, 4, 1);
    mremap(&mut l, 0, 4, 6, libc::MREMAP_MAYMOVE as u32, 0);
    assert_eq!(view(&l), vec![(0, 6, 1)], "the tail continues the range");
}

#[test]
fn mremap_grow_in_place_of_a_merged_vma_inherits_the_last_part() {
    let mut l = Ledger::new();
    mmap(&mut l, 0, 2, 1);
    mmap(&mut l, 2, 2, 2);
    mremap(&mut l, 0, 4, 5, 0, 0);
    assert_eq!(view(&l), vec![(0, 2, 1), (2, 5, 2)]);
}

#[test]
fn mremap_shrink_in_place() {
    let mut l = Ledger::new();
    mmap(&mut l, 0, 6, 1);
    mremap(&mut l, 0, 6, 2, libc::MREMAP_MAYMOVE as u32, 0);
    assert_eq!(view(&l), vec![(0, 2, 1)]);
}

#[test]
fn mremap_move() {
    let mut l = Ledger::new();
    mmap(&mut l, 0, 4, 1);
    munmap(&mut l, 0, 1); // the moved part starts at offset 1
    mremap(&mut l, 1, 3, 5, libc::MREMAP_MAYMOVE as u32, 20);
    assert_eq!(view(&l), vec![(20, 25, 1)]);
    assert_eq!(offsets(&l), vec![1]);
}

#[test]
fn mremap_fixed_replaces_the_destination() {
    let mut l = Ledger::new();
    mmap(&mut l, 0, 2, 1);
    mmap(&mut l, 10, 6, 2);
    let flags = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u32;
    mremap(&mut l, 0, 2, 2, flags, 12);
    assert_eq!(view(&l), vec![(10, 12, 2), (12, 14, 1), (14, 16, 2)]);
}

#[test]
fn mremap_fixed_shrinking_move_drops_the_old_tail() {
    let mut l = Ledger::new();
    mmap(&mut l, 0, 4, 1);
    let flags = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u32;
    mremap(&mut l, 0, 4, 1, flags, 10);
    assert_eq!(view(&l), vec![(10, 11, 1)]);
}

#[test]
fn mremap_dontunmap_keeps_the_source() {
    let mut l = Ledger::new();
    mmap(&mut l, 0, 3, 1);
    let flags = (libc::MREMAP_MAYMOVE | libc::MREMAP_DONTUNMAP) as u32;
    mremap(&mut l, 0, 3, 3, flags, 10);
    assert_eq!(view(&l), vec![(0, 3, 1), (10, 13, 1)]);
}

#[test]
fn mremap_move_of_two_origins_keeps_both() {
    let mut l = Ledger::new();
    mmap(&mut l, 0, 2, 1);
    mmap(&mut l, 2, 2, 2);
    mremap(&mut l, 0, 4, 6, libc::MREMAP_MAYMOVE as u32, 10);
    assert_eq!(view(&l), vec![(10, 12, 1), (12, 16, 2)]);
    assert_eq!(offsets(&l), vec![0, 0]);
}

#[test]
fn mremap_duplicate_of_shared_mapping() {
    let mut l = Ledger::new();
    let shared = (libc::MAP_SHARED | libc::MAP_ANONYMOUS) as u32;
    l.apply(&ev(mmap_call(4, shared), a(0) as i64, 1));
    mremap(&mut l, 1, 0, 2, libc::MREMAP_MAYMOVE as u32, 10);
    assert_eq!(view(&l), vec![(0, 4, 1), (10, 12, 1)]);
    assert_eq!(offsets(&l), vec![0, 1]);
}

#[test]
fn mremap_of_untraced_stays_untraced() {
    let mut l = Ledger::new();
    mmap(&mut l, 30, 2, 1);
    // Untraced [0, 4) moves over part of a traced range and grows.
    let flags = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u32;
    mremap(&mut l, 0, 4, 6, flags, 28);
    assert_eq!(view(&l), vec![], "the destination is untraced now");
    // Untraced grows in place next to a traced range: still untraced.
    mmap(&mut l, 12, 1, 1);
    mremap(&mut l, 8, 2, 4, 0, 8);
    assert_eq!(view(&l), vec![(12, 13, 1)]);
}

#[test]
fn brk_first_query_then_up_and_down() {
    let mut l = Ledger::new();
    let heap = 0x5555_0000_0000;
    brk(&mut l, 0, heap + 0x10, 1); // unaligned initial break
    assert!(l.is_empty());
    assert_eq!(l.brk_end(), Some(heap + 0x10));
    brk(&mut l, heap + 0x21010, heap + 0x21010, 2);
    let r: Vec<_> = l
        .ranges()
        .map(|r| (r.start, r.end, r.prot, r.flags))
        .collect();
    assert_eq!(r, vec![(heap + P, heap + 0x22000, PROT_RW, ANON)]);
    assert_eq!(
        l.origin(l.ranges().next().expect("heap").origin).kind,
        EventKind::Brk
    );
    // Down within the same last page: nothing changes.
    brk(&mut l, heap + 0x21008, heap + 0x21008, 2);
    assert_eq!(l.total_bytes(), 0x21000);
    // Down by pages.
    brk(&mut l, heap + 0x5000, heap + 0x5000, 3);
    assert_eq!(l.coalesced(), vec![(heap + P, heap + 0x5000)]);
    assert_eq!(l.brk_end(), Some(heap + 0x5000));
}

#[test]
fn brk_growths_from_one_site_extend_one_range() {
    let mut l = Ledger::new();
    let heap = 0x5555_0000_0000;
    brk(&mut l, 0, heap, 1);
    brk(&mut l, heap + 2 * P, heap + 2 * P, 2);
    brk(&mut l, heap + 4 * P, heap + 4 * P, 2);
    brk(&mut l, heap + 5 * P, heap + 5 * P, 3);
    let r: Vec<_> = l
        .ranges()
        .map(|r| (r.start - heap, r.end - heap, r.offset))
        .collect();
    assert_eq!(r, vec![(0, 4 * P, 0), (4 * P, 5 * P, 4 * P)]);
}

#[test]
fn brk_failed_returns_old_break_and_changes_nothing() {
    let mut l = Ledger::new();
    let heap = 0x5555_0000_0000;
    brk(&mut l, 0, heap, 1);
    brk(&mut l, heap + 100 * P, heap, 2);
    assert!(l.is_empty());
    assert_eq!(l.brk_end(), Some(heap));
}

#[test]
fn brk_growth_from_unknown_break_is_untraced() {
    let mut l = Ledger::new();
    let heap = 0x5555_0000_0000;
    brk(&mut l, heap + 8 * P, heap + 8 * P, 1);
    assert!(l.is_empty(), "the previous break was unknown");
    brk(&mut l, heap + 9 * P, heap + 9 * P, 1);
    assert_eq!(l.coalesced(), vec![(heap + 8 * P, heap + 9 * P)]);
    // A failed call reporting a break that grew behind our back.
    brk(&mut l, heap + 50 * P, heap + 12 * P, 1);
    assert_eq!(l.total_bytes(), P, "lost growth is not guessed");
    assert_eq!(l.brk_end(), Some(heap + 12 * P));
}

#[test]
fn mprotect_sub_range_splits() {
    let mut l = Ledger::new();
    mmap(&mut l, 0, 10, 1);
    let call = Call::Mprotect {
        addr: a(2),
        len: 3 * P,
        prot: libc::PROT_READ as u32 | libc::PROT_GROWSDOWN as u32,
    };
    l.apply(&ev(call.clone(), 0, 0));
    let r: Vec<_> = l
        .ranges()
        .map(|r| ((r.start - BASE) / P, r.prot, r.offset / P))
        .collect();
    let ro = libc::PROT_READ as u32;
    assert_eq!(r, vec![(0, PROT_RW, 0), (2, ro, 2), (5, PROT_RW, 5)]);
    // Same protection again: no further splits.
    l.apply(&ev(call, 0, 0));
    assert_eq!(l.len(), 3);
    // Back to read-write: one range again.
    let call = Call::Mprotect {
        addr: a(0),
        len: 10 * P,
        prot: PROT_RW,
    };
    l.apply(&ev(call, 0, 0));
    assert_eq!(view(&l), vec![(0, 10, 1)]);
}

#[test]
fn mprotect_across_ranges_and_gaps() {
    let mut l = Ledger::new();
    mmap(&mut l, 0, 4, 1);
    mmap(&mut l, 6, 4, 2);
    let call = Call::Mprotect {
        addr: a(3),
        len: 4 * P,
        prot: 0,
    };
    l.apply(&ev(call, 0, 0));
    let r: Vec<_> = l.ranges().map(|r| ((r.start - BASE) / P, r.prot)).collect();
    assert_eq!(r, vec![(0, PROT_RW), (3, 0), (6, 0), (7, PROT_RW)]);
    assert_eq!(view(&l), vec![(0, 3, 1), (3, 4, 1), (6, 7, 2), (7, 10, 2)]);
    let adjacent_maps_from_one_site = {
        let mut l = Ledger::new();
        mmap(&mut l, 0, 2, 1);
        mmap(&mut l, 2, 2, 1);
        let call = Call::Mprotect {
            addr: a(0),
            len: 4 * P,
            prot: 0,
        };
        l.apply(&ev(call, 0, 0));
        view(&l)
    };
    assert_eq!(adjacent_maps_from_one_site, vec![(0, 2, 1), (2, 4, 1)]);
}

fn set_name(l: &mut Ledger, page: u64, pages: u64, name: Option<&str>, result: i64) {
    let call = Call::SetVmaName {
        addr: a(page),
        len: pages * P,
        name: name.map_or(VmaName::Cleared, |n| VmaName::Set(n.to_owned())),
    };
    l.apply(&ev(call, result, 0));
}

fn names(l: &Ledger) -> Vec<(u64, Option<&str>, bool)> {
    l.ranges()
        .map(|r| {
            (
                (r.start - BASE) / P,
                r.name.map(|n| l.name(n)),
                r.name_refused,
            )
        })
        .collect()
}

#[test]
fn names_on_sub_ranges() {
    let mut l = Ledger::new();
    mmap(&mut l, 0, 10, 1);
    set_name(&mut l, 2, 3, Some("cache"), 0);
    set_name(&mut l, 4, 2, Some("arena"), 0);
    assert_eq!(
        names(&l),
        vec![
            (0, None, false),
            (2, Some("cache"), false),
            (4, Some("arena"), false),
            (6, None, false)
        ]
    );
    set_name(&mut l, 0, 10, None, 0);
    assert_eq!(view(&l), vec![(0, 10, 1)], "equal pieces merge again");
}

#[test]
fn refused_names_are_recorded() {
    let mut l = Ledger::new();
    mmap(&mut l, 0, 4, 1);
    set_name(&mut l, 0, 2, Some("jit"), EINVAL_RET);
    assert_eq!(names(&l), vec![(0, Some("jit"), true), (2, None, false)]);
}

#[test]
fn names_around_holes_apply_to_mapped_parts() {
    let mut l = Ledger::new();
    mmap(&mut l, 0, 2, 1);
    mmap(&mut l, 4, 2, 2);
    set_name(&mut l, 0, 6, Some("x"), ENOMEM_RET);
    assert_eq!(
        names(&l),
        vec![(0, Some("x"), false), (4, Some("x"), false)]
    );
    // Other errors: nothing.
    set_name(&mut l, 0, 6, Some("y"), -(libc::EFAULT as i64));
    assert_eq!(
        names(&l),
        vec![(0, Some("x"), false), (4, Some("x"), false)]
    );
}

#[test]
fn file_mappings_are_not_named() {
    let mut l = Ledger::new();
    let file = libc::MAP_PRIVATE as u32;
    l.apply(&ev(mmap_call(2, file), a(0) as i64, 1));
    set_name(&mut l, 0, 2, Some("x"), 0);
    assert_eq!(names(&l), vec![(0, None, false)]);
}

#[test]
fn failed_calls_change_nothing() {
    let mut l = Ledger::new();
    mmap(&mut l, 0, 4, 1);
    mmap(&mut l, 10, 4, 2);
    let before: Vec<Range> = l.ranges().cloned().collect();
    let fixed = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u32;
    let calls = [
        mmap_call(4, ANON),
        Call::Munmap {
            addr: a(0),
            len: 4 * P,
        },
        Call::Mremap {
            old_addr: a(0),
            old_len: 4 * P,
            new_len: 8 * P,
            flags: fixed,
            new_addr: a(10),
        },
        Call::Mprotect {
            addr: a(0),
            len: P,
            prot: 0,
        },
        Call::Madvise {
            addr: a(0),
            len: P,
            advice: libc::MADV_DONTFORK,
        },
        Call::SetVmaName {
            addr: a(0),
            len: P,
            name: VmaName::Set("x".into()),
        },
        Call::Exec {
            filename: "/bin/true".into(),
        },
    ];
    for call in calls {
        for errno in [libc::EINVAL, libc::ENOMEM, libc::EFAULT, libc::EPERM] {
            let name_like = matches!(call, Call::SetVmaName { .. } | Call::Madvise { .. });
            if name_like && matches!(errno, libc::EINVAL | libc::ENOMEM) {
                continue; // covered by the name and madvise tests
            }
            let e = ev(call.clone(), -i64::from(errno), 9);
            l.apply(&e);
            let after: Vec<Range> = l.ranges().cloned().collect();
            assert_eq!(
                after, before,
                "failed {call:?} (errno {errno}) changed the ledger"
            );
        }
    }
    assert_eq!(l.origins().count(), 2, "failed calls intern no origin");
}

#[test]
fn misaligned_successes_are_ignored() {
    let mut l = Ledger::new();
    mmap(&mut l, 0, 4, 1);
    let call = Call::Munmap {
        addr: a(1) + 8,
        len: P,
    };
    l.apply(&ev(call, 0, 0));
    let call = Call::Munmap {
        addr: a(1),
        len: u64::MAX - P,
    };
    l.apply(&ev(call, 0, 0));
    assert_eq!(view(&l), vec![(0, 4, 1)]);
}

#[test]
fn exec_clears() {
    let mut l = Ledger::new();
    mmap(&mut l, 0, 4, 1);
    brk(&mut l, 0, 0x5555_0000_0000, 1);
    let call = Call::Exec {
        filename: "/bin/sh".into(),
    };
    l.apply(&ev(call, 0, 0));
    assert!(l.is_empty());
    assert_eq!(l.brk_end(), None);
    assert_eq!(l.origins().count(), 1, "origin ids stay valid");
}

#[test]
fn process_exit_clears() {
    let mut l = Ledger::new();
    mmap(&mut l, 0, 4, 1);
    brk(&mut l, 0, 0x5555_0000_0000, 1);
    l.apply(&ev(Call::Exit {}, 0, 0));
    assert!(l.is_empty());
    assert_eq!(l.brk_end(), None);
}

#[test]
fn fork_child_clones_except_dontfork() {
    let mut l = Ledger::new();
    mmap(&mut l, 0, 4, 1);
    mmap(&mut l, 10, 2, 2);
    brk(&mut l, 0, 0x5555_0000_0000, 3);
    let call = Call::Madvise {
        addr: a(2),
        len: 2 * P,
        advice: libc::MADV_DONTFORK,
    };
    l.apply(&ev(call, 0, 0));
    l.apply(&ev(
        Call::Fork {
            child_pid: 200,
            new_process: true,
        },
        200,
        0,
    ));
    assert_eq!(view(&l), vec![(0, 2, 1), (2, 4, 1), (10, 12, 2)]);
    let child = l.fork_child();
    assert_eq!(view(&child), vec![(0, 2, 1), (10, 12, 2)]);
    assert_eq!(child.brk_end(), l.brk_end());
    let id = child.ranges().next().expect("range").origin;
    assert_eq!(child.origin(id), l.origin(id));
    // MADV_DOFORK undoes it.
    let call = Call::Madvise {
        addr: a(0),
        len: 4 * P,
        advice: libc::MADV_DOFORK,
    };
    l.apply(&ev(call, 0, 0));
    assert_eq!(l.fork_child().total_bytes(), 6 * P);
}

#[test]
fn overlapping_and_find() {
    let mut l = Ledger::new();
    mmap(&mut l, 0, 4, 1);
    mmap(&mut l, 6, 2, 2);
    mmap(&mut l, 10, 2, 3);
    let starts = |s: u64, e: u64| -> Vec<u64> {
        l.overlapping(a(s), a(e))
            .map(|r| (r.start - BASE) / P)
            .collect()
    };
    assert_eq!(starts(3, 7), vec![0, 6]);
    assert_eq!(starts(4, 6), Vec::<u64>::new());
    assert_eq!(starts(0, 100), vec![0, 6, 10]);
    assert_eq!(starts(7, 10), vec![6]);
    assert_eq!(starts(7, 7), Vec::<u64>::new());
    assert_eq!(starts(9, 3), Vec::<u64>::new());
    assert_eq!(l.find(a(7) + 5).map(|r| r.start), Some(a(6)));
    assert!(l.find(a(8)).is_none());
}

/// `MAP_FIXED` over a traced `PROT_NONE` reservation commits into it: the
/// origin keeps the reservation's call stack, through uncommit and
/// recommit, and one commit path into two reservations is two origins.
#[test]
fn commits_into_a_reservation_keep_its_call_stack() {
    let fixed = ANON | libc::MAP_FIXED as u32;
    let at = |call_stack: u32, mut e: Event| {
        e.call_stack = Some(call_stack);
        e
    };
    let reserve = |l: &mut Ledger, page: u64, stack: u32| {
        let call = Call::Mmap {
            addr: 0,
            len: 4 * P,
            prot: 0,
            flags: ANON | libc::MAP_NORESERVE as u32,
            fd: -1,
            offset: 0,
        };
        l.apply(&at(stack, ev(call, a(page) as i64, stack)));
    };
    let commit = |l: &mut Ledger, page: u64, prot: u32| {
        let call = Call::Mmap {
            addr: a(page),
            len: P,
            prot,
            flags: fixed,
            fd: -1,
            offset: 0,
        };
        l.apply(&at(9, ev(call, a(page) as i64, 9)));
    };
    let mut l = Ledger::new();
    reserve(&mut l, 0, 1);
    reserve(&mut l, 10, 2);
    commit(&mut l, 0, PROT_RW);
    commit(&mut l, 10, PROT_RW);
    let reserved = |l: &Ledger, page: u64| {
        let r = l.find(a(page)).expect("a range there");
        l.origin(r.origin).reserved_by
    };
    assert_eq!(reserved(&l, 0), Some(1));
    assert_eq!(reserved(&l, 10), Some(2));
    let commit_origin = |l: &Ledger, page: u64| l.find(a(page)).map(|r| r.origin);
    assert_ne!(commit_origin(&l, 0), commit_origin(&l, 10));
    // Uncommit (PROT_NONE, MAP_FIXED) then commit again: still reservation 1.
    commit(&mut l, 0, 0);
    commit(&mut l, 0, PROT_RW);
    assert_eq!(reserved(&l, 0), Some(1));
    // A MAP_FIXED mapping over accessible memory of no reservation, or a
    // mapping not fixed, commits into nothing.
    mmap(&mut l, 20, 1, 3);
    commit(&mut l, 20, PROT_RW);
    assert_eq!(reserved(&l, 20), None);
    // The rest of the reservation is the reservation itself.
    assert_eq!(reserved(&l, 1), None);
}
