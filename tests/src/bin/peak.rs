//! Fixture: a peak. `build_peak` maps 300 MiB and touches every page; the
//! fixture then prints `built PID ANON` (its own anonymous RSS from
//! `/proc/self/smaps_rollup`, in bytes) and waits for a line on stdin,
//! unmaps the 300 MiB, prints `freed` and exits. With `--wait` it first
//! prints `ready PID` and waits for a line (to attach memtrace).

use std::io::{BufRead as _, Write as _};

use memtrace_tests::{fail, touch, wait_if_asked};

const LEN: usize = 300 << 20;

/// The call site the peak report must name.
#[inline(never)]
fn build_peak() -> *mut libc::c_void {
    // SAFETY: a fresh private anonymous mapping.
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
        fail(&format!("mmap: {}", std::io::Error::last_os_error()));
    }
    touch(p, LEN);
    p
}

/// `Anonymous:` of `/proc/self/smaps_rollup`, in bytes.
fn own_anon_bytes() -> u64 {
    let text = std::fs::read_to_string("/proc/self/smaps_rollup")
        .unwrap_or_else(|e| fail(&format!("read smaps_rollup: {e}")));
    text.lines()
        .find_map(|l| l.strip_prefix("Anonymous:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .unwrap_or_else(|| fail("no Anonymous: line in smaps_rollup"))
}

fn main() {
    wait_if_asked("ready");
    // Whatever stdin and stdout allocate is allocated before the peak is
    // measured, so the fixture's memory stays still while it waits.
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut line = String::with_capacity(64);
    let mut out = std::io::stdout().lock();
    let _ = out.flush();
    let p = build_peak();
    let anon = own_anon_bytes();
    let _ = writeln!(out, "built {} {anon}", std::process::id());
    let _ = out.flush();
    let _ = input.read_line(&mut line);
    // SAFETY: the mapping made above, not used any more.
    if unsafe { libc::munmap(p, LEN) } != 0 {
        fail(&format!("munmap: {}", std::io::Error::last_os_error()));
    }
    let _ = writeln!(out, "freed");
    let _ = out.flush();
}
