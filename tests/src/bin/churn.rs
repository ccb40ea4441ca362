//! Fixture: maps, touches and unmaps one page as fast as it can, and holds
//! a touched 16 MiB region, until a line arrives on stdin; then exits.
//!
//! Usage: churn [--wait] [--rate N]   (`ready PID` on stdout, then the go
//! line; `--rate`: at most N map/unmap pairs a second, paced in batches of
//! 100, instead of as fast as it can)

use std::{
    io::BufRead as _,
    sync::atomic::{AtomicBool, Ordering},
};

use memtrace_tests::{PAGE, wait_if_asked};

static STOP: AtomicBool = AtomicBool::new(false);

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
fn churn_once() {
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
        if p != libc::MAP_FAILED {
            p.cast::<u8>().write_volatile(1);
            libc::munmap(p, PAGE);
        }
    }
}

fn main() {
    wait_if_asked("ready");
    let _held = hold_region();
    std::thread::spawn(|| {
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
        STOP.store(true, Ordering::SeqCst);
    });
    let args: Vec<String> = std::env::args().collect();
    let rate: Option<u32> = args.iter().position(|a| a == "--rate").map(|i| {
        match args.get(i + 1).and_then(|r| r.parse().ok()) {
            Some(r) if r > 0 => r,
            _ => memtrace_tests::fail("--rate needs a positive number"),
        }
    });
    let start = std::time::Instant::now();
    let mut done: u64 = 0;
    while !STOP.load(Ordering::Relaxed) {
        churn_once();
        done += 1;
        if let Some(rate) = rate
            && done.is_multiple_of(100)
        {
            let due = start + std::time::Duration::from_secs_f64(done as f64 / f64::from(rate));
            std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
        }
    }
}
