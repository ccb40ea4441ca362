//! Benchmark workload: N times mmap PAGES pages (default 16), touch every
//! page, munmap. Prints the CPU time (user + system, this process) per
//! iteration, which includes the time the kernel spends in tracing
//! programs. With 1 page the syscalls dominate (the harsh case for a
//! tracer); with 16 the page faults dilute them.
//!
//! Usage: overhead ITERATIONS [PAGES]

use memtrace_tests::{PAGE, fail, touch};

fn cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[inline(never)]
fn one_round(len: usize) {
    // SAFETY: anonymous mapping of our own, unmapped below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        fail("mmap failed");
    }
    touch(p, len);
    // SAFETY: the mapping made above.
    unsafe { libc::munmap(p, len) };
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| fail("usage: overhead ITERATIONS [PAGES]"));
    let pages: usize = match std::env::args().nth(2) {
        Some(a) => a
            .parse()
            .ok()
            .filter(|p| (1..=4096).contains(p))
            .unwrap_or_else(|| fail("PAGES must be 1 to 4096")),
        None => 16,
    };
    let len = pages * PAGE;
    // Warm up the allocator, page tables and caches.
    for _ in 0..1000 {
        one_round(len);
    }
    let start = cpu_ns();
    for _ in 0..n {
        one_round(len);
    }
    let per_op = (cpu_ns() - start) as f64 / n as f64;
    println!("ns_per_op {per_op:.1} pages {pages}");
}
