//! Fixture: waits to be traced, then grows its heap with `sbrk` twice by
//! 1 MiB (a line on stdin before each), touching what it got; then waits
//! for stdin to close and exits.
//!
//! Usage: brk_grower --wait   (`ready PID`; after each go line
//! `grown N START END`: the break before the first growth and now)

use std::io::{BufRead as _, Write as _};

use memtrace_tests::wait_if_asked;

const STEP: usize = 1 << 20;

#[inline(never)]
fn grow() -> usize {
    // SAFETY: sbrk moves the break; the new bytes are ours to write.
    unsafe {
        let old = libc::sbrk(STEP as libc::intptr_t);
        if old as isize == -1 {
            memtrace_tests::fail("sbrk failed");
        }
        std::ptr::write_bytes(old.cast::<u8>(), 1, STEP);
        old as usize
    }
}

fn main() {
    wait_if_asked("ready");
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let mut first = None;
    for n in 1..=2 {
        // The go line of `--wait` starts the first growth.
        if n > 1 {
            let _ = lines.next();
        }
        let old = grow();
        let start = *first.get_or_insert(old);
        // SAFETY: sbrk(0) only reads the break.
        let now = unsafe { libc::sbrk(0) } as usize;
        println!("grown {n} {start:#x} {now:#x}");
        let _ = std::io::stdout().flush();
    }
    for _ in lines {}
}
