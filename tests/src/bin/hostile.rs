//! Fixture: names that try to take over the terminal. Maps a file whose
//! path holds an escape sequence, and names an anonymous region with
//! escape sequences and a fake memtrace line.
//!
//! With `--exec-maps` it also maps `/dev/zero` and a 1 GiB sparse file
//! executable, then maps a page (so a tracer looks at its modules again):
//! a tracer that read executable mappings whole would never finish.
//!
//! Usage: hostile [--exec-maps] [--wait]   (with --wait: `ready PID`, then
//! waits for a line)

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
    if std::env::args().any(|a| a == "--exec-maps") {
        exec_maps();
    }
    if std::env::args().any(|a| a == "--wait") {
        println!("ready {}", std::process::id());
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
    }
}

/// Map `/dev/zero` and a 1 GiB sparse ELF-looking file executable, then
/// one more page.
fn exec_maps() {
    let sparse = std::env::temp_dir().join(format!("memtrace-sparse-{}", std::process::id()));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&sparse)
        .unwrap_or_else(|e| fail(&format!("{e}")));
    // An ELF magic up front, a gigabyte of holes behind it.
    let _ = std::io::Write::write_all(&mut &f, b"\x7fELF\x02\x01\x01");
    f.set_len(1 << 30).unwrap_or_else(|e| fail(&format!("{e}")));
    let zero = std::fs::File::open("/dev/zero").unwrap_or_else(|e| fail(&format!("{e}")));
    // SAFETY: private read+exec mappings, never executed, kept until exit.
    unsafe {
        use std::os::fd::AsRawFd as _;
        for (fd, len) in [(zero.as_raw_fd(), 1usize << 20), (f.as_raw_fd(), 1 << 30)] {
            let p = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE,
                fd,
                0,
            );
            if p == libc::MAP_FAILED {
                fail("exec mmap failed");
            }
        }
        libc::mmap(
            std::ptr::null_mut(),
            PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
    }
    let _ = std::fs::remove_file(&sparse);
}
