//! Shared code of memtrace's fixture programs (in `src/bin/`) and of the
//! integration tests (in `tests/`) that trace them.
//!
//! A fixture writes one JSON object per address-space change it made to the
//! file named by `--out`, so tests can compare memtrace's view with the
//! truth: `{"step","func","kind","addr","len","result","tid", …}`.

use std::{
    fs::File,
    io::{BufRead as _, Write as _},
    sync::Mutex,
};

pub const PAGE: usize = 4096;

/// The thread id of the caller.
pub fn gettid() -> u32 {
    // SAFETY: no arguments.
    unsafe { libc::syscall(libc::SYS_gettid) as u32 }
}

/// Where a fixture records what it did.
pub struct Log {
    file: Mutex<File>,
}

impl Log {
    /// Open the file given as `--out PATH` (required by every fixture).
    pub fn from_args() -> Log {
        let args: Vec<String> = std::env::args().collect();
        let path = args
            .iter()
            .position(|a| a == "--out")
            .and_then(|i| args.get(i + 1))
            .unwrap_or_else(|| fail("usage: FIXTURE --out PATH [--wait]"));
        let file = File::create(path).unwrap_or_else(|e| fail(&format!("create {path}: {e}")));
        Log {
            file: Mutex::new(file),
        }
    }

    /// Record one step as a JSON line.
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &self,
        step: &str,
        func: &str,
        kind: &str,
        addr: u64,
        len: u64,
        result: i64,
        extra: &str,
    ) {
        let line = format!(
            "{{\"step\":\"{step}\",\"func\":\"{func}\",\"kind\":\"{kind}\",\"addr\":{addr},\"len\":{len},\"result\":{result},\"tid\":{tid}{extra}}}\n",
            tid = gettid()
        );
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        f.write_all(line.as_bytes())
            .unwrap_or_else(|e| fail(&format!("write log: {e}")));
    }

    /// Record an mmap by `func` of `len` bytes at `p` that should hold
    /// `rss` resident bytes (`extra`: more JSON fields, each with a leading
    /// comma); fail the fixture if the mmap failed.
    pub fn site(&self, func: &str, p: *mut libc::c_void, len: usize, rss: usize, extra: &str) {
        self.step(
            func,
            func,
            "mmap",
            p as u64,
            len as u64,
            raw_result(p),
            &format!(",\"expected_rss\":{rss},\"expected_virtual\":{len}{extra}"),
        );
        if p == libc::MAP_FAILED {
            fail(&format!(
                "{func}: mmap failed: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
}

/// With `--wait`: print `ready PID` and block until a line arrives on
/// stdin, so a test can attach memtrace first.
pub fn wait_if_asked(label: &str) {
    if std::env::args().any(|a| a == "--wait") {
        println!("{label} {}", std::process::id());
        let _ = std::io::stdout().flush();
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
    }
}

pub fn fail(msg: &str) -> ! {
    eprintln!("fixture: {msg}");
    std::process::exit(2)
}

/// Raw result of a syscall-returning call: the address, or `-errno`.
pub fn raw_result(ret: *mut libc::c_void) -> i64 {
    if ret == libc::MAP_FAILED {
        -(std::io::Error::last_os_error().raw_os_error().unwrap_or(0) as i64)
    } else {
        ret as i64
    }
}

/// An address with `len` bytes free after it: reserved and given back at
/// once, for the caller to fill piece by piece with `MAP_FIXED_NOREPLACE`
/// (which guards against anything else moving in).
pub fn free_room(len: usize) -> usize {
    // SAFETY: a reservation released right away.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        fail("reserve failed");
    }
    // SAFETY: the reservation just made.
    unsafe { libc::munmap(base, len) };
    base as usize
}

/// Touch every page of `[addr, addr+len)` so it becomes resident.
pub fn touch(addr: *mut libc::c_void, len: usize) {
    for off in (0..len).step_by(PAGE) {
        // SAFETY: the caller mapped the range writable.
        unsafe { (addr as *mut u8).add(off).write_volatile(1) };
    }
}
