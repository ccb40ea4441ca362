//! Attribution on a live process (this one): two adjacent anonymous mmaps
//! from different call sites, merged by the kernel into one VMA, are split
//! exactly by pagemap.
//!
//! Needs root (CI runs as root): reading page frame numbers, which tell the
//! shared zero page apart from real anonymous pages, needs `CAP_SYS_ADMIN`.

use memtrace::attribution::join;
use memtrace::attribution::ledger::{Ledger, PAGE_SIZE};
use memtrace::proc::pagemap::PageCounter;
use memtrace::proc::pagemap::Pagemap;
use memtrace::proc::smaps;
use memtrace::trace::event::{Call, Event};

const P: u64 = PAGE_SIZE;
/// Pages per traced mapping.
const N: u64 = 16;

fn mmap_event(addr: u64, pages: u64, site: u32) -> Event {
    let pid = std::process::id();
    Event {
        time_ns: 1,
        pid,
        tid: pid,
        call: Call::Mmap {
            addr,
            len: pages * P,
            prot: (libc::PROT_READ | libc::PROT_WRITE) as u32,
            flags: (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED) as u32,
            fd: -1,
            offset: 0,
        },
        result: addr as i64,
        stack_id: None,
        ip: 0x1000,
        ret_addr: None,
        user: None,
        call_stack: Some(site),
    }
}

/// `mmap(addr, pages, rw, private|anonymous|flags)`, panicking on failure.
fn map(addr: u64, pages: u64, prot: i32, flags: i32) -> u64 {
    // SAFETY: either a fresh mapping, or MAP_FIXED inside a reservation
    // this test made and nothing else uses.
    let p = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            (pages * P) as usize,
            prot,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | flags,
            -1,
            0,
        )
    };
    assert_ne!(
        p,
        libc::MAP_FAILED,
        "mmap failed: {}",
        std::io::Error::last_os_error()
    );
    p as u64
}

#[test]
fn merged_vma_is_split_by_pagemap() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "attribute_live needs root (CAP_SYS_ADMIN to see page frame numbers, which \
         distinguish the zero page); run it as root, e.g. `sudo -E cargo test -p memtrace \
         --test attribute_live`"
    );

    // Reserve guard pages around the area so the kernel cannot merge our
    // VMA with a neighbour (different protection), then map the two halves
    // with identical protection and flags: the kernel merges them.
    let reserve = map(0, 2 * N + 2, libc::PROT_NONE, 0);
    let first = reserve + P;
    let second = first + N * P;
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    assert_eq!(map(first, N, rw, libc::MAP_FIXED), first);
    assert_eq!(map(second, N, rw, libc::MAP_FIXED), second);

    let mut ledger = Ledger::new();
    ledger.apply(&mmap_event(first, N, 1));
    ledger.apply(&mmap_event(second, N, 2));

    let touch = |base: u64, pages: &[u64]| {
        for &i in pages {
            // SAFETY: inside a read-write mapping of ours.
            unsafe { std::ptr::write_volatile((base + i * P) as *mut u8, 1) };
        }
    };
    touch(first, &[0, 4, 9]);
    touch(second, &[0, 1, 2, 3, 10, 11, 15]);
    // Read faults map the shared zero page: present in pagemap, but not
    // resident anonymous memory in smaps. They must not count.
    for i in [12, 13, 14] {
        // SAFETY: inside a read-write mapping of ours.
        unsafe { std::ptr::read_volatile((first + i * P) as *const u8) };
    }

    let pid = std::process::id();
    let vmas = smaps::read_smaps(pid).expect("read own smaps");
    let ours: Vec<_> = vmas
        .iter()
        .filter(|v| v.start < second + N * P && first < v.end)
        .collect();
    assert_eq!(
        ours.len(),
        1,
        "the kernel should have merged the two mmaps into one VMA: {ours:#?}"
    );
    assert_eq!((ours[0].start, ours[0].end), (first, second + N * P));
    assert_eq!(ours[0].anonymous, 10 * P, "smaps Anonymous of our VMA");

    let mut pagemap = Pagemap::open(pid).expect("open own pagemap");
    assert!(
        pagemap.detects_zero_page(),
        "as root, page frame numbers (and so the zero page) must be visible"
    );
    assert_eq!(
        pagemap
            .anon_resident_pages(first, second + N * P)
            .expect("read pagemap"),
        10
    );

    let at = join::attribute(&vmas, &ledger, &mut pagemap);
    assert_eq!(
        at.totals.attributed_rss_bytes + at.totals.untraced_rss_bytes,
        at.totals.anon_rss_bytes,
        "attributed + untraced must equal the anonymous total: {at:?}"
    );
    assert_eq!(
        at.totals.anon_rss_bytes,
        vmas.iter().map(|v| v.anonymous).sum::<u64>()
    );
    assert_eq!(at.pagemap_failures, 0, "{:?}", at.pagemap_error);
    assert!(at.pagemap_vmas >= 1);
    let site = |s: u32| {
        at.sites
            .iter()
            .find(|u| ledger.origin(u.origin).call_stack == Some(s))
            .unwrap_or_else(|| panic!("site {s} missing from {:?}", at.sites))
    };
    assert_eq!(site(1).rss_bytes, 3 * P, "first mmap: 3 pages");
    assert_eq!(site(2).rss_bytes, 7 * P, "second mmap: 7 pages");
    assert_eq!(site(1).virtual_bytes, N * P);
    assert_eq!(site(2).mappings, 1);
    assert_eq!(at.totals.attributed_rss_bytes, 10 * P);

    // The same join run while smaps is read, batch by batch.
    let live = join::attribute_live(pid, &ledger).expect("stream own smaps");
    assert_eq!(live.pid, pid);
    assert_eq!(live.pagemap_failures, 0, "{:?}", live.pagemap_error);
    let rss = |at: &join::Attribution, s: u32| {
        at.sites
            .iter()
            .find(|u| ledger.origin(u.origin).call_stack == Some(s))
            .map(|u| u.rss_bytes)
    };
    assert_eq!(
        (rss(&live, 1), rss(&live, 2)),
        (Some(3 * P), Some(7 * P)),
        "streamed join: {live:?}"
    );
    assert_eq!(
        live.totals.attributed_rss_bytes + live.totals.untraced_rss_bytes,
        live.totals.anon_rss_bytes
    );

    // SAFETY: unmapping the reservation made above, which nothing else uses.
    unsafe { libc::munmap(reserve as *mut libc::c_void, ((2 * N + 2) * P) as usize) };
}
