//! Fixture: one of each address-space change, each from its own
//! non-inlined function, then the same from several threads. Every step is
//! written to `--out` so tests can check memtrace's events against it.
//!
//! Usage: mappings --out FILE [--wait]

use std::ptr::null_mut;

use libc::{MAP_ANONYMOUS, MAP_FIXED, MAP_PRIVATE, PROT_READ, PROT_WRITE, c_void};
use memtrace_tests::{Log, PAGE, raw_result, touch, wait_if_asked};

const KNOWN: usize = 64 * PAGE; // 256 KiB
const THREADS: usize = 4;

#[inline(never)]
fn map_known_size(log: &Log) -> *mut c_void {
    // SAFETY: anonymous mapping, no aliasing.
    let p = unsafe {
        libc::mmap(
            null_mut(),
            KNOWN,
            PROT_READ | PROT_WRITE,
            MAP_PRIVATE | MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    log.step(
        "map_known_size",
        "map_known_size",
        "mmap",
        p as u64,
        KNOWN as u64,
        raw_result(p),
        "",
    );
    touch(p, KNOWN);
    p
}

#[inline(never)]
fn unmap_middle(log: &Log, base: *mut c_void) {
    let hole = base as u64 + 16 * PAGE as u64;
    // SAFETY: inside the mapping made above.
    let rc = unsafe { libc::munmap(hole as *mut c_void, 8 * PAGE) };
    log.step(
        "unmap_middle",
        "unmap_middle",
        "munmap",
        hole,
        8 * PAGE as u64,
        rc as i64,
        "",
    );
}

#[inline(never)]
fn map_fixed_over(log: &Log, base: *mut c_void) {
    // Replace the first four pages with a fresh read-only mapping.
    // SAFETY: MAP_FIXED over our own mapping.
    let p = unsafe {
        libc::mmap(
            base,
            4 * PAGE,
            PROT_READ,
            MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
            -1,
            0,
        )
    };
    log.step(
        "map_fixed_over",
        "map_fixed_over",
        "mmap",
        p as u64,
        4 * PAGE as u64,
        raw_result(p),
        "",
    );
}

#[inline(never)]
fn remap_grow_move(log: &Log) {
    // A mapping with a neighbour right behind it cannot grow in place, so
    // the kernel must move it.
    // SAFETY: anonymous mappings of our own.
    let a = unsafe {
        libc::mmap(
            null_mut(),
            2 * PAGE,
            PROT_READ | PROT_WRITE,
            MAP_PRIVATE | MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    log.step(
        "remap_setup",
        "remap_grow_move",
        "mmap",
        a as u64,
        2 * PAGE as u64,
        raw_result(a),
        "",
    );
    let behind = (a as u64 + 2 * PAGE as u64) as *mut c_void;
    let b = unsafe {
        libc::mmap(
            behind,
            PAGE,
            PROT_READ,
            MAP_PRIVATE | MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    // Record the requested address: when something already sits there the
    // call fails (EEXIST), which blocks in-place growth just as well.
    log.step(
        "remap_blocker",
        "remap_grow_move",
        "mmap",
        behind as u64,
        PAGE as u64,
        raw_result(b),
        "",
    );
    touch(a, 2 * PAGE);
    let new_len = 32 * PAGE;
    let moved = unsafe { libc::mremap(a, 2 * PAGE, new_len, libc::MREMAP_MAYMOVE) };
    log.step(
        "remap_grow_move",
        "remap_grow_move",
        "mremap",
        moved as u64,
        new_len as u64,
        raw_result(moved),
        &format!(",\"old_addr\":{}", a as u64),
    );
}

#[inline(never)]
fn name_region(log: &Log, base: *mut c_void) {
    let addr = base as u64 + 32 * PAGE as u64;
    let name = c"fixture-cache";
    // SAFETY: valid range and NUL-terminated name; the kernel may refuse
    // (no CONFIG_ANON_VMA_NAME) with EINVAL.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_VMA,
            libc::PR_SET_VMA_ANON_NAME,
            addr,
            16 * PAGE,
            name.as_ptr(),
        )
    };
    let result = if rc == 0 {
        0
    } else {
        -(std::io::Error::last_os_error().raw_os_error().unwrap_or(0) as i64)
    };
    log.step(
        "name_region",
        "name_region",
        "set_vma_name",
        addr,
        16 * PAGE as u64,
        result,
        ",\"name\":\"fixture-cache\"",
    );
}

#[inline(never)]
fn grow_brk(log: &Log) -> u64 {
    // SAFETY: querying and raising the break; restored by shrink_brk.
    let cur = unsafe { libc::syscall(libc::SYS_brk, 0) } as u64;
    log.step("brk_query", "grow_brk", "brk", 0, 0, cur as i64, "");
    let want = cur + 64 * PAGE as u64;
    let new = unsafe { libc::syscall(libc::SYS_brk, want) } as u64;
    log.step(
        "grow_brk",
        "grow_brk",
        "brk",
        want,
        0,
        new as i64,
        &format!(",\"old_brk\":{cur}"),
    );
    if new == want {
        touch(cur.next_multiple_of(PAGE as u64) as *mut c_void, 16 * PAGE);
    }
    cur
}

#[inline(never)]
fn shrink_brk(log: &Log, to: u64) {
    // SAFETY: back to the break the process had before grow_brk.
    let new = unsafe { libc::syscall(libc::SYS_brk, to) } as u64;
    log.step("shrink_brk", "shrink_brk", "brk", to, 0, new as i64, "");
}

#[inline(never)]
fn advise_dontneed(log: &Log, base: *mut c_void) {
    let addr = base as u64 + 48 * PAGE as u64;
    // SAFETY: inside our mapping.
    let rc = unsafe { libc::madvise(addr as *mut c_void, 8 * PAGE, libc::MADV_DONTNEED) };
    log.step(
        "advise_dontneed",
        "advise_dontneed",
        "madvise",
        addr,
        8 * PAGE as u64,
        rc as i64,
        "",
    );
}

#[inline(never)]
fn failing_munmap(log: &Log) {
    // A misaligned address: the kernel refuses with EINVAL.
    let rc = unsafe { libc::munmap(12345 as *mut c_void, PAGE) };
    let result = if rc == 0 {
        0
    } else {
        -(std::io::Error::last_os_error().raw_os_error().unwrap_or(0) as i64)
    };
    log.step(
        "failing_munmap",
        "failing_munmap",
        "munmap",
        12345,
        PAGE as u64,
        result,
        "",
    );
}

#[inline(never)]
fn thread_worker(log: &Log, i: usize) {
    let len = (8 + i) * PAGE;
    // SAFETY: anonymous mapping of our own.
    let p = unsafe {
        libc::mmap(
            null_mut(),
            len,
            PROT_READ | PROT_WRITE,
            MAP_PRIVATE | MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    log.step(
        &format!("thread_map_{i}"),
        "thread_worker",
        "mmap",
        p as u64,
        len as u64,
        raw_result(p),
        "",
    );
    touch(p, len);
    let rc = unsafe { libc::munmap(p, len) };
    log.step(
        &format!("thread_unmap_{i}"),
        "thread_worker",
        "munmap",
        p as u64,
        len as u64,
        rc as i64,
        "",
    );
}

fn main() {
    let log = Log::from_args();
    // Threads are created (their stacks mapped) before the wait, so the
    // traced part holds only the steps below.
    let barrier = std::sync::Barrier::new(THREADS + 1);
    std::thread::scope(|s| {
        for i in 0..THREADS {
            let (log, barrier) = (&log, &barrier);
            s.spawn(move || {
                barrier.wait();
                thread_worker(log, i);
            });
        }
        wait_if_asked("ready");
        let base = map_known_size(&log);
        unmap_middle(&log, base);
        map_fixed_over(&log, base);
        remap_grow_move(&log);
        name_region(&log, base);
        let old_brk = grow_brk(&log);
        advise_dontneed(&log, base);
        shrink_brk(&log, old_brk);
        failing_munmap(&log);
        barrier.wait();
    });
}
