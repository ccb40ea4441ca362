//! Fixture: one call site that grows steadily while others stay flat, for
//! the history and growth tests.
//!
//! Usage: grower [--wait] [--hold] [--chunk-kib N] [--period-ms N] [--grow-mib N]
//!
//! 1. With `--wait`: prints `ready PID` and waits for a line on stdin (so
//!    memtrace can attach first).
//! 2. Maps and touches two flat regions (`flat_table`, 24 MiB, and
//!    `flat_buffers`, 20 MiB), and a 4 MiB region that `recycle_scratch`
//!    unmaps and maps again every 5 periods (flat, but always new ranges);
//!    prints `flat`.
//! 3. With `--hold`: waits for a line on stdin.
//! 4. `grow_leaky_cache` maps and touches `--chunk-kib` (default 512) every
//!    `--period-ms` (default 25) until `--grow-mib` (default 64) are mapped,
//!    printing `grew BYTES UNIX_MS` after each chunk (bytes so far, and when
//!    they were all resident), then `grown`.
//! 5. Waits for stdin to close (at once when it is not a pipe), then exits.

use std::{
    io::{BufRead as _, Write as _},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use memtrace_tests::{fail, touch};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| fail(&format!("{name} needs a number"))),
        None => default,
    }
}

fn has(flag: &str) -> bool {
    std::env::args().any(|a| a == flag)
}

fn line() {
    let mut l = String::new();
    let _ = std::io::stdin().lock().read_line(&mut l);
}

fn say(s: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{s}");
    let _ = out.flush();
}

/// Map `len` bytes of private anonymous memory and touch every page,
/// expanded in each function below so that the mmap's caller is that
/// function (an inlined helper would be the call site of all of them).
macro_rules! map_touched {
    ($len:expr) => {{
        let len: usize = $len;
        // SAFETY: a fresh private anonymous mapping, touched within bounds.
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
            fail(&format!("mmap: {}", std::io::Error::last_os_error()));
        }
        touch(p, len);
        p
    }};
}

#[inline(never)]
fn flat_table() -> *mut libc::c_void {
    map_touched!(24 << 20)
}

#[inline(never)]
fn flat_buffers() -> *mut libc::c_void {
    map_touched!(20 << 20)
}

const SCRATCH: usize = 4 << 20;

#[inline(never)]
fn recycle_scratch(old: *mut libc::c_void) -> *mut libc::c_void {
    // Map the new one first: never a moment without it.
    let new = map_touched!(SCRATCH);
    if !old.is_null() {
        // SAFETY: `old` is a SCRATCH-byte mapping of ours, no longer used.
        unsafe { libc::munmap(old, SCRATCH) };
    }
    new
}

#[inline(never)]
fn grow_leaky_cache(chunk: usize) -> *mut libc::c_void {
    map_touched!(chunk)
}

fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

fn main() {
    memtrace_tests::wait_if_asked("ready");
    let chunk = (arg("--chunk-kib", 512) << 10) as usize;
    let period = Duration::from_millis(arg("--period-ms", 25));
    let total = (arg("--grow-mib", 64) << 20) as usize;
    let _table = std::hint::black_box(flat_table());
    let _buffers = std::hint::black_box(flat_buffers());
    let mut scratch = recycle_scratch(std::ptr::null_mut());
    say("flat");
    if has("--hold") {
        line();
    }
    let start = Instant::now();
    let mut grown = 0;
    let mut n: u32 = 0;
    while grown < total {
        std::hint::black_box(grow_leaky_cache(chunk));
        grown += chunk;
        say(&format!("grew {grown} {}", unix_ms()));
        n += 1;
        if n.is_multiple_of(5) {
            scratch = recycle_scratch(scratch);
        }
        // On a fixed schedule, so the rate does not drift with the work.
        let next = start + period * n;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    say("grown");
    line();
}
