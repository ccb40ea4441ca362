//! Fixture for the web page test: call sites whose names hold what HTML
//! must escape.
//!
//! - `Cache<T>::grow` (a generic method: its name holds `<` and `>`) maps
//!   8 MiB and touches 6 MiB;
//! - `named_region` maps 2 MiB, touches it all and names it
//!   `<img src=x onerror="alert(1)">&'` with `PR_SET_VMA_ANON_NAME`
//!   (refused on kernels without `CONFIG_ANON_VMA_NAME`; memtrace records
//!   the name anyway).
//!
//! Then prints `done` and waits for a stdin line. With `--wait`, first
//! `ready PID` and a stdin line.
//!
//! Usage: web_target [--wait]

use std::{ffi::CString, io::BufRead as _, io::Write as _, marker::PhantomData, ptr::null_mut};

use libc::{MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE, c_void};
use memtrace_tests::{fail, touch, wait_if_asked};

const MIB: usize = 1 << 20;

/// The region name: markup, an entity and quotes.
pub const HOSTILE_NAME: &str = "<img src=x onerror=\"alert(1)\">&'";

struct Cache<T>(PhantomData<T>);

impl<T> Cache<T> {
    #[inline(never)]
    fn grow() -> *mut c_void {
        // SAFETY: a fresh private anonymous mapping.
        let p = unsafe {
            libc::mmap(
                null_mut(),
                8 * MIB,
                PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            fail("Cache::grow: mmap failed");
        }
        touch(p, 6 * MIB);
        p
    }
}

#[inline(never)]
fn named_region() -> *mut c_void {
    // SAFETY: a fresh private anonymous mapping.
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
    if p == libc::MAP_FAILED {
        fail("named_region: mmap failed");
    }
    touch(p, 2 * MIB);
    let name = CString::new(HOSTILE_NAME).unwrap_or_else(|_| fail("name has a NUL"));
    // SAFETY: names the mapping just made; prctl reads the NUL-terminated
    // name.
    unsafe {
        libc::prctl(
            libc::PR_SET_VMA,
            libc::PR_SET_VMA_ANON_NAME,
            p as libc::c_ulong,
            (2 * MIB) as libc::c_ulong,
            name.as_ptr() as libc::c_ulong,
        )
    };
    p
}

fn main() {
    // Exact resident sizes: no huge pages.
    // SAFETY: a process-wide flag, no pointers.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    wait_if_asked("ready");
    let kept = (Cache::<u8>::grow(), named_region());
    std::hint::black_box(kept);
    println!("done");
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
}
