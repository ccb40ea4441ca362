//! Fixture: resizes the read-write head of hundreds of small heap-like
//! regions with `mprotect`, growing then shrinking each, without pause
//! (what busy malloc arenas do, much faster), so that the kernel's
//! description of its address space changes while it is being read.
//! Every page of the regions is touched once at the start and stays
//! resident: their Rss never changes.
//!
//! Usage: restless [--wait]   (prints `ready PID`, then `regions START END
//! RSS`: the regions fill `[START, END)`, fenced by execute-only pages, and
//! hold RSS resident bytes; runs until stdin closes)

use std::{
    io::{Read as _, Write as _},
    sync::atomic::{AtomicBool, Ordering},
};

use memtrace_tests::{PAGE, fail, touch};

/// Regions, and pages in each.
const REGIONS: usize = 300;
const PAGES: usize = 16;

static STOP: AtomicBool = AtomicBool::new(false);

fn protect(addr: usize, pages: usize, prot: libc::c_int) {
    // SAFETY: changes protection inside the reservation this fixture owns.
    if unsafe { libc::mprotect(addr as *mut libc::c_void, pages * PAGE, prot) } != 0 {
        fail(&format!("mprotect: {}", std::io::Error::last_os_error()));
    }
}

fn main() {
    let len = (REGIONS * PAGES + 2) * PAGE;
    // SAFETY: a fresh private anonymous reservation, owned until exit.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        fail("mmap failed");
    }
    let base = base as usize;
    let start = base + PAGE;
    let end = start + REGIONS * PAGES * PAGE;
    touch(start as *mut libc::c_void, end - start);
    // Execute-only fences: no neighbour merges into the regions.
    protect(base, 1, libc::PROT_EXEC);
    protect(end, 1, libc::PROT_EXEC);
    let region = move |i: usize| start + i * PAGES * PAGE;
    for i in 0..REGIONS {
        protect(region(i) + PAGE, PAGES - 1, libc::PROT_NONE);
    }
    std::thread::spawn(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        STOP.store(true, Ordering::Relaxed);
    });
    println!("ready {}", std::process::id());
    println!("regions {start} {end} {}", REGIONS * PAGES * PAGE);
    let _ = std::io::stdout().flush();
    // Two threads, each resizing half the regions.
    let half = REGIONS / 2;
    let other = std::thread::spawn(move || resize(region, half..REGIONS));
    resize(region, 0..half);
    let _ = other.join();
}

/// Grow then shrink the read-write head of each region in `regions`,
/// until stdin closes.
fn resize(region: impl Fn(usize) -> usize, regions: std::ops::Range<usize>) {
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    while !STOP.load(Ordering::Relaxed) {
        for n in 2..PAGES {
            for i in regions.clone() {
                protect(region(i), n, rw);
            }
        }
        for n in (1..PAGES - 1).rev() {
            for i in regions.clone() {
                protect(region(i) + n * PAGE, PAGES - n, libc::PROT_NONE);
            }
        }
    }
}
