//! Fixture: a burst of mmaps, to overflow a deliberately small ring buffer.
//!
//! Usage: flood --out FILE --count N --wait
//! After the go line on stdin it maps COUNT regions of three pages (a size
//! nothing else here uses), prints `done`, and exits at the next line.

use std::io::{BufRead as _, Write as _};

use memtrace_tests::{Log, PAGE, fail, wait_if_asked};

/// Length of every flood mapping; tests count events of exactly this size.
pub const FLOOD_LEN: usize = 3 * PAGE;

#[inline(never)]
fn burst(count: usize) -> usize {
    let mut ok = 0;
    for _ in 0..count {
        // SAFETY: anonymous mapping, never touched, leaked until exit.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                FLOOD_LEN,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p != libc::MAP_FAILED {
            ok += 1;
        }
    }
    ok
}

fn main() {
    let log = Log::from_args();
    let args: Vec<String> = std::env::args().collect();
    let count: usize = args
        .iter()
        .position(|a| a == "--count")
        .and_then(|i| args.get(i + 1))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| fail("usage: flood --out FILE --count N [--wait]"));
    wait_if_asked("ready");
    let ok = burst(count);
    log.step("burst", "burst", "mmap", 0, FLOOD_LEN as u64, ok as i64, "");
    println!("done");
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
}
