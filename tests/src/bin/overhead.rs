//! Benchmark workload: N times mmap 64 KiB, touch every page, munmap.
//! Prints the CPU time (user + system, this process) per iteration, which
//! includes the time the kernel spends in memtrace's eBPF programs.
//!
//! Usage: overhead ITERATIONS

use memtrace_tests::{PAGE, fail, touch};

const LEN: usize = 64 * 1024;

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
fn one_round() {
    // SAFETY: anonymous mapping of our own, unmapped below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            LEN,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        fail("mmap failed");
    }
    touch(p, LEN);
    // SAFETY: the mapping made above.
    unsafe { libc::munmap(p, LEN) };
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| fail("usage: overhead ITERATIONS"));
    // Warm up the allocator, page tables and caches.
    for _ in 0..1000 {
        one_round();
    }
    let start = cpu_ns();
    for _ in 0..n {
        one_round();
    }
    let per_op = (cpu_ns() - start) as f64 / n as f64;
    println!("ns_per_op {per_op:.1} pages {}", LEN / PAGE);
}
