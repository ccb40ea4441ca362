//! Fixture: names that try to take over the terminal. Maps a file whose
//! path holds an escape sequence, and names an anonymous region with
//! escape sequences and a fake memtrace line.
//!
//! Usage: hostile [--wait]   (with --wait: `ready PID`, then waits for a line)

use std::{ffi::CString, io::BufRead as _};

use memtrace_tests::{PAGE, fail};

/// What the region name and the file name carry.
pub const EVIL: &str = "\x1b[2J\x1b[31mred\n=== Summary ===\nevents: 0";

fn main() {
    let path =
        std::env::temp_dir().join(format!("memtrace-hostile-\x1b[7m-{}", std::process::id()));
    std::fs::write(&path, vec![0u8; PAGE]).unwrap_or_else(|e| fail(&format!("{e}")));
    let file = std::fs::File::open(&path).unwrap_or_else(|e| fail(&format!("{e}")));
    let name = CString::new(EVIL).unwrap_or_else(|_| fail("name has a NUL"));
    // SAFETY: a private read-only file mapping and a private anonymous one,
    // both kept until exit; prctl reads the NUL-terminated name.
    unsafe {
        use std::os::fd::AsRawFd as _;
        let f = libc::mmap(
            std::ptr::null_mut(),
            PAGE,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            file.as_raw_fd(),
            0,
        );
        if f == libc::MAP_FAILED {
            fail("file mmap failed");
        }
        let a = libc::mmap(
            std::ptr::null_mut(),
            PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if a == libc::MAP_FAILED {
            fail("mmap failed");
        }
        // Fails with EINVAL without CONFIG_ANON_VMA_NAME; memtrace records
        // the name either way.
        libc::prctl(
            libc::PR_SET_VMA,
            libc::PR_SET_VMA_ANON_NAME,
            a as libc::c_ulong,
            PAGE as libc::c_ulong,
            name.as_ptr() as libc::c_ulong,
        );
    }
    let _ = std::fs::remove_file(&path);
    if std::env::args().any(|a| a == "--wait") {
        println!("ready {}", std::process::id());
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
    }
}
