//! Fixture: shared anonymous memory (`MAP_SHARED | MAP_ANONYMOUS`), which
//! smaps shows as `/dev/zero (deleted)` with `Anonymous: 0` (its pages are
//! shmem), so the attributed report must take its RSS from `Rss`.
//!
//! - `map_shared_anon` maps 64 MiB shared anonymous and touches all of it;
//! - `map_private_anon` maps 2 MiB private anonymous and touches 1 MiB, so
//!   the private totals have something of their own to keep exact.
//!
//! Each function logs `{"step","func",…,"expected_rss","expected_virtual"}`
//! to `--out`. Transparent huge pages are switched off for the process so
//! the resident amounts are exact. Then `done` is printed, and the fixture
//! waits for a stdin line (with `--wait`) or 300 ms, and exits.
//!
//! Usage: shared_anon --out FILE [--wait]

use std::{
    io::{BufRead as _, Write as _},
    ptr::null_mut,
};

use libc::{MAP_ANONYMOUS, MAP_PRIVATE, MAP_SHARED, PROT_READ, PROT_WRITE, c_void};
use memtrace_tests::{Log, touch, wait_if_asked};

const MIB: usize = 1 << 20;

#[inline(never)]
fn map_shared_anon(log: &Log) -> *mut c_void {
    // SAFETY: a fresh anonymous mapping; it aliases nothing of ours.
    let p = unsafe {
        libc::mmap(
            null_mut(),
            64 * MIB,
            PROT_READ | PROT_WRITE,
            MAP_SHARED | MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    log.site("map_shared_anon", p, 64 * MIB, 64 * MIB, "");
    touch(p, 64 * MIB);
    p
}

#[inline(never)]
fn map_private_anon(log: &Log) -> *mut c_void {
    // SAFETY: a fresh anonymous mapping; it aliases nothing of ours.
    let p = unsafe {
        libc::mmap(
            null_mut(),
            2 * MIB,
            PROT_READ | PROT_WRITE,
            MAP_PRIVATE | MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    log.site("map_private_anon", p, 2 * MIB, MIB, "");
    touch(p, MIB);
    p
}

fn main() {
    let log = Log::from_args();
    // Exact resident sizes: no huge pages.
    // SAFETY: a process-wide flag, no pointers.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    wait_if_asked("ready");

    let shared = map_shared_anon(&log);
    let private = map_private_anon(&log);
    std::hint::black_box((shared, private));

    println!("done");
    let _ = std::io::stdout().flush();
    if std::env::args().any(|a| a == "--wait") {
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
    } else {
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}
