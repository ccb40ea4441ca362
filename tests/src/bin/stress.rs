//! Fixture: several threads change their address space at random, from a
//! seed, so that a test can compare memtrace's ledger with the kernel's
//! final layout range by range.
//!
//! Each thread owns a private pool of anonymous mappings and only ever
//! touches addresses of its own pool: mmap (1..64 pages, read-only or
//! read-write), munmap of a head / tail / middle hole, mremap (grow with
//! MAYMOVE, shrink, move with MREMAP_FIXED onto another of its own
//! mappings), mmap MAP_FIXED over part of one of its own mappings, mprotect
//! of a sub-range, and page touches. Every call is logged to `--out`.
//! The thread's bookkeeping only keeps it inside its own pool; the kernel
//! is the truth the test reads.
//!
//! When all threads are done the main thread copies `/proc/self/maps` to
//! `FILE.maps`, prints `done` and, with `--wait`, waits for one more stdin
//! line before it exits (through `_exit`, so nothing is unmapped after the
//! test looked at the final layout).
//!
//! Usage: stress --out FILE [--wait] --seed N --threads T --ops K

use std::{
    collections::BTreeMap,
    io::{BufRead as _, Write as _},
    ptr::null_mut,
};

use libc::{
    MAP_ANONYMOUS, MAP_FIXED, MAP_PRIVATE, MREMAP_FIXED, MREMAP_MAYMOVE, PROT_READ, PROT_WRITE,
    c_void,
};
use memtrace_tests::{Log, PAGE, fail, raw_result, wait_if_asked};

/// Largest mapping a thread lets its pool grow to, in pages.
const MAX_PAGES: u64 = 256;
/// Most segments a thread keeps before it starts unmapping whole ones.
const MAX_SEGMENTS: usize = 48;

/// xorshift64*: small, seeded, good enough to pick operations.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // Never zero, and different seeds differ from the first draw.
        let mut r = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        r.next();
        r
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        debug_assert!(lo <= hi);
        lo + self.next() % (hi - lo + 1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// One page-aligned piece of a thread's pool: created by one call, with one
/// protection, so always inside a single VMA.
#[derive(Clone, Copy, Debug)]
struct Seg {
    end: u64,
    writable: bool,
}

/// A thread's own mappings, keyed by start address; never overlapping.
#[derive(Default)]
struct Pool {
    segs: BTreeMap<u64, Seg>,
}

impl Pool {
    /// Forget `[start, end)`, splitting the segments it cuts.
    fn remove(&mut self, start: u64, end: u64) {
        let hit: Vec<(u64, Seg)> = self
            .segs
            .range(..end)
            .filter(|(s, seg)| **s < end && seg.end > start)
            .map(|(s, seg)| (*s, *seg))
            .collect();
        for (s, seg) in hit {
            self.segs.remove(&s);
            if s < start {
                self.segs.insert(
                    s,
                    Seg {
                        end: start,
                        writable: seg.writable,
                    },
                );
            }
            if seg.end > end {
                self.segs.insert(
                    end,
                    Seg {
                        end: seg.end,
                        writable: seg.writable,
                    },
                );
            }
        }
    }

    fn insert(&mut self, start: u64, end: u64, writable: bool) {
        self.remove(start, end);
        self.segs.insert(start, Seg { end, writable });
    }

    /// A random segment: (start, end, writable).
    fn pick(&self, rng: &mut Rng) -> Option<(u64, u64, bool)> {
        if self.segs.is_empty() {
            return None;
        }
        let i = rng.range(0, self.segs.len() as u64 - 1) as usize;
        self.segs
            .iter()
            .nth(i)
            .map(|(s, seg)| (*s, seg.end, seg.writable))
    }

    /// A random segment other than the one starting at `not`.
    fn pick_other(&self, rng: &mut Rng, not: u64) -> Option<(u64, u64, bool)> {
        if self.segs.len() < 2 {
            return None;
        }
        let i = rng.range(0, self.segs.len() as u64 - 2) as usize;
        self.segs
            .iter()
            .filter(|(s, _)| **s != not)
            .nth(i)
            .map(|(s, seg)| (*s, seg.end, seg.writable))
    }
}

fn pages(n: u64) -> u64 {
    n * PAGE as u64
}

fn errno_result(rc: libc::c_int) -> i64 {
    if rc == 0 {
        0
    } else {
        -(std::io::Error::last_os_error().raw_os_error().unwrap_or(0) as i64)
    }
}

/// Touch some pages of a writable range (`[start, end)`).
fn touch_some(rng: &mut Rng, start: u64, end: u64) {
    let n = (end - start) / PAGE as u64;
    for i in 0..n {
        if rng.chance(40) {
            // SAFETY: the caller owns the range and it is writable.
            unsafe { ((start + pages(i)) as *mut u8).write_volatile(0xA5) };
        }
    }
}

struct Worker<'a> {
    log: &'a Log,
    rng: Rng,
    pool: Pool,
    index: usize,
}

impl Worker<'_> {
    fn step(&self, op: usize, kind: &str, addr: u64, len: u64, result: i64, extra: &str) {
        self.log.step(
            &format!("t{}_op{op}", self.index),
            "stress",
            kind,
            addr,
            len,
            result,
            extra,
        );
    }

    #[inline(never)]
    fn op_mmap(&mut self, op: usize) {
        let len = pages(self.rng.range(1, 64));
        let writable = self.rng.chance(70);
        let prot = if writable {
            PROT_READ | PROT_WRITE
        } else {
            PROT_READ
        };
        // SAFETY: a fresh anonymous mapping chosen by the kernel.
        let p = unsafe {
            libc::mmap(
                null_mut(),
                len as usize,
                prot,
                MAP_PRIVATE | MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        let result = raw_result(p);
        self.step(
            op,
            "mmap",
            p as u64,
            len,
            result,
            &format!(",\"prot\":{prot}"),
        );
        if result >= 0 {
            self.pool.insert(p as u64, p as u64 + len, writable);
            if writable {
                touch_some(&mut self.rng, p as u64, p as u64 + len);
            }
        }
    }

    /// Unmap part of a segment, or all of it when `whole`.
    #[inline(never)]
    fn op_munmap(&mut self, op: usize, whole: bool) {
        let Some((start, end, _)) = self.pool.pick(&mut self.rng) else {
            return self.op_mmap(op);
        };
        let n = (end - start) / PAGE as u64;
        // Head, tail, middle hole or (rarely, or when there is no choice)
        // the whole segment.
        let (from, count) = match (n, self.rng.range(0, 9)) {
            _ if whole => (0, n),
            (1, _) | (_, 0) => (0, n),
            (_, 1..=3) => (0, self.rng.range(1, n - 1)),
            (_, 4..=6) => {
                let c = self.rng.range(1, n - 1);
                (n - c, c)
            }
            (2, _) => (1, 1),
            _ => {
                let from = self.rng.range(1, n - 2);
                (from, self.rng.range(1, n - 1 - from))
            }
        };
        let addr = start + pages(from);
        let len = pages(count);
        // SAFETY: inside our own pool.
        let rc = unsafe { libc::munmap(addr as *mut c_void, len as usize) };
        let result = errno_result(rc);
        self.step(op, "munmap", addr, len, result, "");
        if result == 0 {
            self.pool.remove(addr, addr + len);
        }
    }

    #[inline(never)]
    fn op_mremap(&mut self, op: usize) {
        let Some((start, end, writable)) = self.pool.pick(&mut self.rng) else {
            return self.op_mmap(op);
        };
        let old_len = end - start;
        let n = old_len / PAGE as u64;
        let choice = self.rng.range(0, 9);
        if choice < 3
            && let Some((dst_seg, dst_end, _)) = self.pool.pick_other(&mut self.rng, start)
        {
            // Move onto an address inside another of our own mappings: the
            // kernel unmaps what was there first.
            let room = (dst_end - dst_seg) / PAGE as u64;
            let at = self.rng.range(0, room - 1);
            let new_n = self.rng.range(1, room - at);
            let dst = dst_seg + pages(at);
            let new_len = pages(new_n);
            // SAFETY: source and target are both in our own pool and
            // disjoint (segments never overlap).
            let p = unsafe {
                libc::mremap(
                    start as *mut c_void,
                    old_len as usize,
                    new_len as usize,
                    MREMAP_MAYMOVE | MREMAP_FIXED,
                    dst as *mut c_void,
                )
            };
            let result = raw_result(p);
            self.step(
                op,
                "mremap",
                p as u64,
                new_len,
                result,
                &format!(",\"old_addr\":{start},\"old_len\":{old_len},\"fixed\":{dst}"),
            );
            if result >= 0 {
                self.pool.remove(start, end);
                self.pool.insert(dst, dst + new_len, writable);
            }
        } else if choice < 6 && n > 1 {
            // Shrink in place.
            let new_len = pages(self.rng.range(1, n - 1));
            // SAFETY: our own segment, shrinking frees its tail only.
            let p = unsafe {
                libc::mremap(start as *mut c_void, old_len as usize, new_len as usize, 0)
            };
            let result = raw_result(p);
            self.step(
                op,
                "mremap",
                p as u64,
                new_len,
                result,
                &format!(",\"old_addr\":{start},\"old_len\":{old_len}"),
            );
            if result >= 0 {
                self.pool.remove(start + new_len, end);
            }
        } else {
            // Grow, in place when there is room, else moved.
            if n >= MAX_PAGES {
                return self.op_munmap(op, false);
            }
            let new_len = pages(self.rng.range(n + 1, (n + 64).min(MAX_PAGES)));
            // SAFETY: our own segment; the kernel picks where it goes.
            let p = unsafe {
                libc::mremap(
                    start as *mut c_void,
                    old_len as usize,
                    new_len as usize,
                    MREMAP_MAYMOVE,
                )
            };
            let result = raw_result(p);
            self.step(
                op,
                "mremap",
                p as u64,
                new_len,
                result,
                &format!(",\"old_addr\":{start},\"old_len\":{old_len}"),
            );
            if result >= 0 {
                self.pool.remove(start, end);
                self.pool.insert(p as u64, p as u64 + new_len, writable);
                if writable {
                    touch_some(&mut self.rng, p as u64, p as u64 + new_len);
                }
            }
        }
    }

    /// A random page-aligned part of one of this thread's segments.
    fn pick_sub_range(&mut self) -> Option<(u64, u64)> {
        let (start, end, _) = self.pool.pick(&mut self.rng)?;
        let n = (end - start) / PAGE as u64;
        let at = self.rng.range(0, n - 1);
        let count = self.rng.range(1, n - at);
        Some((start + pages(at), pages(count)))
    }

    /// Read-write with `percent` chance, else read-only.
    fn random_prot(&mut self, percent: u64) -> (i32, bool) {
        let writable = self.rng.chance(percent);
        let prot = if writable {
            PROT_READ | PROT_WRITE
        } else {
            PROT_READ
        };
        (prot, writable)
    }

    #[inline(never)]
    fn op_map_fixed(&mut self, op: usize) {
        let Some((addr, len)) = self.pick_sub_range() else {
            return self.op_mmap(op);
        };
        let (prot, writable) = self.random_prot(60);
        // SAFETY: MAP_FIXED over a range of our own pool.
        let p = unsafe {
            libc::mmap(
                addr as *mut c_void,
                len as usize,
                prot,
                MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
                -1,
                0,
            )
        };
        let result = raw_result(p);
        self.step(
            op,
            "mmap",
            p as u64,
            len,
            result,
            &format!(",\"fixed\":{addr},\"prot\":{prot}"),
        );
        if result >= 0 {
            self.pool.insert(addr, addr + len, writable);
            if writable {
                touch_some(&mut self.rng, addr, addr + len);
            }
        }
    }

    #[inline(never)]
    fn op_mprotect(&mut self, op: usize) {
        let Some((addr, len)) = self.pick_sub_range() else {
            return self.op_mmap(op);
        };
        let (prot, writable) = self.random_prot(50);
        // SAFETY: a range of our own pool.
        let rc = unsafe { libc::mprotect(addr as *mut c_void, len as usize, prot) };
        let result = errno_result(rc);
        self.step(
            op,
            "mprotect",
            addr,
            len,
            result,
            &format!(",\"prot\":{prot}"),
        );
        if result == 0 {
            self.pool.insert(addr, addr + len, writable);
        }
    }

    fn touch_random(&mut self) {
        if let Some((start, end, true)) = self.pool.pick(&mut self.rng) {
            touch_some(&mut self.rng, start, end);
        }
    }

    fn run(&mut self, ops: usize) {
        for op in 0..ops {
            if self.pool.segs.len() >= MAX_SEGMENTS && self.rng.chance(50) {
                self.op_munmap(op, true);
                continue;
            }
            match self.rng.range(0, 99) {
                0..=24 => self.op_mmap(op),
                25..=44 => self.op_munmap(op, false),
                45..=64 => self.op_mremap(op),
                65..=79 => self.op_map_fixed(op),
                80..=94 => self.op_mprotect(op),
                _ => self.touch_random(),
            }
        }
    }
}

fn arg(name: &str) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            fail(&format!(
                "usage: stress --out FILE [--wait] --seed N --threads T --ops K (missing {name})"
            ))
        })
}

fn out_path() -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| fail("usage: stress --out FILE [--wait] --seed N --threads T --ops K"))
}

fn main() {
    let log = Log::from_args();
    let seed = arg("--seed");
    let threads = arg("--threads") as usize;
    let ops = arg("--ops") as usize;
    let maps_copy = format!("{}.maps", out_path());
    let waiting = std::env::args().any(|a| a == "--wait");
    wait_if_asked("ready");
    std::thread::scope(|s| {
        let mut handles = Vec::with_capacity(threads);
        for index in 0..threads {
            let log = &log;
            handles.push(s.spawn(move || {
                let mut w = Worker {
                    log,
                    rng: Rng::new(seed ^ ((index as u64 + 1) << 32)),
                    pool: Pool::default(),
                    index,
                };
                w.run(ops);
            }));
        }
        // Join each thread itself: the scope's implicit wait ends when the
        // closures return, before the threads have unmapped their signal
        // stacks on the way out, and the layout printed below must be final.
        for h in handles {
            if h.join().is_err() {
                fail("a worker thread panicked");
            }
        }
    });
    std::fs::copy("/proc/self/maps", &maps_copy)
        .unwrap_or_else(|e| fail(&format!("copy /proc/self/maps to {maps_copy}: {e}")));
    println!("done");
    let _ = std::io::stdout().flush();
    if waiting {
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
    }
    // Leave the layout exactly as the test saw it: no destructors, no
    // runtime cleanup unmapping anything on the way out.
    // SAFETY: ends the process; stdout was flushed above.
    unsafe { libc::_exit(0) }
}
