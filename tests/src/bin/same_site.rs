//! Fixture: the same syscall site reached through two callers, many times
//! over, alternately: `via_a` and `via_b` call `map_page`, which maps and
//! unmaps five pages (a size nothing else here uses). Both callers have the
//! same frame, so the syscall is made at the same instruction with the
//! same stack pointer; only a word further up the stack (the return
//! address into `via_a` or `via_b`) tells them apart, which memtrace's
//! kernel-side stack cache must notice. The run pauses now and then, so
//! that memtrace fills its cache while the calls go on.
//!
//! Usage: same_site ROUNDS

use memtrace_tests::{PAGE, fail};

/// Length of every mapping; tests pick the events of exactly this size.
const LEN: usize = 5 * PAGE;

#[inline(never)]
fn map_page(tag: u64) {
    // SAFETY: anonymous mapping of our own, unmapped below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            LEN,
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        fail("mmap failed");
    }
    std::hint::black_box(tag);
    // SAFETY: the mapping made above.
    unsafe { libc::munmap(p, LEN) };
}

#[inline(never)]
fn via_a() {
    map_page(std::hint::black_box(1));
}

#[inline(never)]
fn via_b() {
    map_page(std::hint::black_box(2));
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| fail("usage: same_site ROUNDS"));
    for round in 0..rounds {
        via_a();
        via_b();
        // Pauses let memtrace unwind the calls so far and fill the kernel
        // side's cache, so later calls find it filled.
        if round % 25 == 0 {
            std::thread::sleep(std::time::Duration::from_millis(30));
        }
    }
}
