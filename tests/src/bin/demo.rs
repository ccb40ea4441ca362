//! The built-in demo workload for `cargo xtask run`: a small "server" whose
//! memory goes where real servers' memory goes: a hand-mapped cache with a
//! name, malloc arenas of worker threads, a large buffer malloc serves with
//! mmap, heap growth through brk, thread stacks, and JIT-style executable
//! memory. It holds everything briefly, frees a little, and exits.

use std::{hint::black_box, ptr::null_mut, thread, time::Duration};

use libc::{MAP_ANONYMOUS, MAP_PRIVATE, PROT_EXEC, PROT_READ, PROT_WRITE, c_void};
use memtrace_tests::{PAGE, touch};

const MIB: usize = 1 << 20;

struct Cache {
    base: *mut c_void,
    len: usize,
}

impl Cache {
    /// Reserve a region by hand and name it, as caches in real services do.
    #[inline(never)]
    fn grow(len: usize, resident: usize) -> Cache {
        // SAFETY: a fresh anonymous mapping of our own.
        let base = unsafe {
            libc::mmap(
                null_mut(),
                len,
                PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert!(base != libc::MAP_FAILED, "mmap failed");
        // SAFETY: names our own range; kernels without CONFIG_ANON_VMA_NAME
        // refuse, memtrace records the name anyway.
        unsafe {
            libc::prctl(
                libc::PR_SET_VMA,
                libc::PR_SET_VMA_ANON_NAME,
                base as u64,
                len,
                c"demo-cache".as_ptr(),
            )
        };
        touch(base, resident);
        Cache { base, len }
    }
}

/// Worker threads allocate small objects: glibc gives each thread arena a
/// heap of its own, mapped with mmap.
#[inline(never)]
fn worker(id: usize) -> usize {
    // Each thread's arena grows with mprotect as it fills; a few large-ish
    // objects keep the event stream short enough to read.
    let mut kept: Vec<Vec<u8>> = Vec::with_capacity(64);
    for i in 0..64 {
        kept.push(vec![(id + i) as u8; 24 * 1024 + (i % 7) * 512]);
    }
    thread::sleep(Duration::from_millis(200));
    black_box(&kept).len()
}

/// A buffer above malloc's mmap threshold: malloc maps it directly.
#[inline(never)]
fn load_table() -> Vec<u64> {
    let mut v = vec![0u64; 8 * MIB / 8];
    for (i, x) in v.iter_mut().enumerate().step_by(PAGE / 8) {
        *x = i as u64;
    }
    v
}

/// Many small allocations on the main thread: the heap grows with brk.
#[inline(never)]
#[expect(
    clippy::vec_box,
    reason = "one small allocation per entry is the point"
)]
fn build_index() -> Vec<Box<[u8; 256]>> {
    (0..8000).map(|i| Box::new([i as u8; 256])).collect()
}

/// Executable anonymous memory, as a JIT compiler makes it.
#[inline(never)]
fn jit_compile() -> *mut c_void {
    let len = MIB;
    // SAFETY: fresh anonymous mapping; made executable after writing.
    let code = unsafe {
        libc::mmap(
            null_mut(),
            len,
            PROT_READ | PROT_WRITE,
            MAP_PRIVATE | MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert!(code != libc::MAP_FAILED, "mmap failed");
    touch(code, len / 2);
    unsafe { libc::mprotect(code, len, PROT_READ | PROT_EXEC) };
    code
}

fn main() {
    let cache = Cache::grow(64 * MIB, 24 * MIB);
    let table = load_table();
    let index = build_index();
    let code = jit_compile();
    let workers: Vec<_> = (0..4).map(|id| thread::spawn(move || worker(id))).collect();
    let total: usize = workers.into_iter().map(|w| w.join().unwrap_or(0)).sum();
    // Give back part of the cache, as an eviction would.
    // SAFETY: the tail of our own mapping.
    unsafe {
        libc::munmap(
            (cache.base as usize + 48 * MIB) as *mut c_void,
            cache.len - 48 * MIB,
        )
    };
    thread::sleep(Duration::from_millis(300));
    println!(
        "demo: cache {} MiB, table {} MiB, index {} entries, jit at {:p}, {} objects",
        48,
        table.len() * 8 / MIB,
        index.len(),
        code,
        total
    );
    // Exit without running destructors, as a server killed at peak would:
    // the report then shows everything still held.
    std::process::exit(0);
}
