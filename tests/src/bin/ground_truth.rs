//! Fixture: known functions make known amounts of anonymous memory
//! resident, so a test can check the RSS memtrace attributes to each.
//!
//! - `cache_alpha` maps 8 MiB and touches 6 MiB;
//! - `cache_beta` maps 4 MiB and touches 3 MiB;
//! - `adjacent_one` maps 1 MiB at a free address and touches 256 KiB,
//!   `adjacent_two` maps 1 MiB right after it (MAP_FIXED_NOREPLACE, same
//!   protection and flags) and touches 768 KiB: the kernel merges the two
//!   into one VMA holding two call sites. The fixture checks that in
//!   `/proc/self/maps` and logs it (`"merged"`).
//!
//! Each function logs `{"step","func",…,"expected_rss","expected_virtual"}`
//! to `--out`. Transparent huge pages are switched off for the process so
//! the resident amounts are exact. Then `done` is printed, and the fixture
//! waits for a stdin line (with `--wait`) or 300 ms, and exits.
//!
//! Usage: ground_truth --out FILE [--wait]

use std::{
    io::{BufRead as _, Write as _},
    ptr::null_mut,
};

use libc::{MAP_ANONYMOUS, MAP_FIXED_NOREPLACE, MAP_PRIVATE, PROT_READ, PROT_WRITE, c_void};
use memtrace_tests::{Log, fail, touch, wait_if_asked};

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

/// An anonymous read-write mapping, written out in each caller so that the
/// caller (not a helper) is the call site memtrace sees.
macro_rules! map_anon {
    ($hint:expr, $len:expr, $extra_flags:expr) => {
        // SAFETY: an anonymous mapping; with MAP_FIXED_NOREPLACE the kernel
        // refuses rather than replace anything.
        unsafe {
            libc::mmap(
                $hint,
                $len,
                PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS | $extra_flags,
                -1,
                0,
            )
        }
    };
}

#[inline(never)]
fn cache_alpha(log: &Log) -> *mut c_void {
    let p = map_anon!(null_mut(), 8 * MIB, 0);
    log.site("cache_alpha", p, 8 * MIB, 6 * MIB, "");
    touch(p, 6 * MIB);
    p
}

#[inline(never)]
fn cache_beta(log: &Log) -> *mut c_void {
    let p = map_anon!(null_mut(), 4 * MIB, 0);
    log.site("cache_beta", p, 4 * MIB, 3 * MIB, "");
    touch(p, 3 * MIB);
    p
}

/// A free, 2 MiB-sized hole in the address space: map and unmap it.
#[inline(never)]
fn find_hole() -> *mut c_void {
    let p = map_anon!(null_mut(), 2 * MIB, 0);
    if p == libc::MAP_FAILED {
        fail("find_hole: mmap failed");
    }
    // SAFETY: the mapping just made, used by nobody.
    unsafe { libc::munmap(p, 2 * MIB) };
    p
}

#[inline(never)]
fn adjacent_one(log: &Log, hint: *mut c_void) -> *mut c_void {
    let p = map_anon!(hint, MIB, 0);
    log.site(
        "adjacent_one",
        p,
        MIB,
        256 * KIB,
        &format!(",\"hint\":{}", hint as u64),
    );
    touch(p, 256 * KIB);
    p
}

#[inline(never)]
fn adjacent_two(log: &Log, after: *mut c_void) -> *mut c_void {
    let at = (after as usize + MIB) as *mut c_void;
    let p = map_anon!(at, MIB, MAP_FIXED_NOREPLACE);
    log.site("adjacent_two", p, MIB, 768 * KIB, "");
    touch(p, 768 * KIB);
    p
}

/// The `/proc/self/maps` line holding `addr`: (start, end).
fn vma_of(addr: u64) -> Option<(u64, u64)> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines().find_map(|l| {
        let range = l.split_whitespace().next()?;
        let (s, e) = range.split_once('-')?;
        let (s, e) = (
            u64::from_str_radix(s, 16).ok()?,
            u64::from_str_radix(e, 16).ok()?,
        );
        (s <= addr && addr < e).then_some((s, e))
    })
}

fn main() {
    let log = Log::from_args();
    // Exact resident sizes: no huge pages (madvise-only THP on most
    // machines already, but not all).
    // SAFETY: a process-wide flag, no pointers.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    wait_if_asked("ready");

    let alpha = cache_alpha(&log);
    let beta = cache_beta(&log);
    let hole = find_hole();
    let one = adjacent_one(&log, hole);
    let two = adjacent_two(&log, one);

    let vma_one = vma_of(one as u64);
    let vma_two = vma_of(two as u64);
    let merged = one as usize + MIB == two as usize && vma_one.is_some() && vma_one == vma_two;
    let (vs, ve) = vma_one.unwrap_or((0, 0));
    log.step(
        "adjacent_vma",
        "adjacent",
        "check",
        vs,
        ve - vs,
        0,
        &format!(
            ",\"merged\":{merged},\"one\":{},\"two\":{}",
            one as u64, two as u64
        ),
    );
    std::hint::black_box((alpha, beta));

    println!("done");
    let _ = std::io::stdout().flush();
    if std::env::args().any(|a| a == "--wait") {
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
    } else {
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}
