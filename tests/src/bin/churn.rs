//! Fixture: maps, touches and unmaps one page as fast as it can, and holds
//! a touched 16 MiB region, until a line arrives on stdin; then exits.
//!
//! Usage: churn [--wait] [--rate N] [--threads N] [--seconds S]
//! (`ready PID` on stdout, then the go line; `--rate`: at most N map/unmap
//! pairs a second, paced in batches of 100, instead of as fast as it can;
//! `--threads`: that many threads churn, each at `--rate`; `--seconds`:
//! stop after S seconds rather than at a line on stdin). At the end it
//! says on stderr how many mmap and munmap calls it made:
//! `churn: mmap N munmap M`.

use std::{
    io::BufRead as _,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use memtrace_tests::{PAGE, wait_if_asked};

static STOP: AtomicBool = AtomicBool::new(false);
/// Calls made, over all threads.
static MMAPS: AtomicU64 = AtomicU64::new(0);
static MUNMAPS: AtomicU64 = AtomicU64::new(0);

/// Bytes of the region held for the whole run.
const HELD: usize = 16 << 20;

#[inline(never)]
fn hold_region() -> *mut u8 {
    // SAFETY: a fresh private anonymous mapping, written within bounds and
    // kept until exit.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            HELD,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if p == libc::MAP_FAILED {
            memtrace_tests::fail("mmap of the held region failed");
        }
        std::ptr::write_bytes(p.cast::<u8>(), 7, HELD);
        p.cast()
    }
}

#[inline(never)]
fn churn_once() -> (u64, u64) {
    // SAFETY: map, write one byte inside the page, unmap the same page.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if p == libc::MAP_FAILED {
            return (1, 0);
        }
        p.cast::<u8>().write_volatile(1);
        libc::munmap(p, PAGE);
        (1, 1)
    }
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    args.iter().position(|a| a == name).map(|i| {
        match args.get(i + 1).and_then(|r| r.parse().ok()) {
            Some(v) => v,
            None => memtrace_tests::fail(&format!("{name} needs a positive number")),
        }
    })
}

/// Churn until told to stop, at most `rate` pairs a second if given.
fn churn(rate: Option<u32>) {
    let start = Instant::now();
    let (mut mmaps, mut munmaps) = (0u64, 0u64);
    let mut done: u64 = 0;
    while !STOP.load(Ordering::Relaxed) {
        let (a, b) = churn_once();
        mmaps += a;
        munmaps += b;
        done += 1;
        if let Some(rate) = rate
            && done.is_multiple_of(100)
        {
            let due = start + Duration::from_secs_f64(done as f64 / f64::from(rate));
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
    }
    MMAPS.fetch_add(mmaps, Ordering::SeqCst);
    MUNMAPS.fetch_add(munmaps, Ordering::SeqCst);
}

fn main() {
    wait_if_asked("ready");
    let _held = hold_region();
    let args: Vec<String> = std::env::args().collect();
    let rate: Option<u32> = arg(&args, "--rate").filter(|&r| r > 0);
    let threads: usize = arg(&args, "--threads").unwrap_or(1).max(1);
    match arg::<u64>(&args, "--seconds") {
        Some(s) => {
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_secs(s));
                STOP.store(true, Ordering::SeqCst);
            });
        }
        None => {
            std::thread::spawn(|| {
                let mut line = String::new();
                let _ = std::io::stdin().lock().read_line(&mut line);
                STOP.store(true, Ordering::SeqCst);
            });
        }
    }
    let workers: Vec<_> = (1..threads)
        .map(|_| std::thread::spawn(move || churn(rate)))
        .collect();
    churn(rate);
    for w in workers {
        let _ = w.join();
    }
    eprintln!(
        "churn: mmap {} munmap {}",
        MMAPS.load(Ordering::SeqCst),
        MUNMAPS.load(Ordering::SeqCst)
    );
}
