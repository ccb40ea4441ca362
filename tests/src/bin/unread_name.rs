//! Fixture: names an anonymous region with a string the process never
//! touched, as Go's runtime names its heaps with string literals in pages
//! not yet faulted in. The name lives in a file mapped but never read, so
//! its page is not resident when the kernel side sees the call (a fresh
//! anonymous page would read as zeros instead). Then names a region with a
//! pointer to nothing at all.
//!
//! Prints `named ADDR NAME` and `bad ADDR`, the regions it named.
//!
//! Usage: unread_name FILE

use std::{io::Write as _, os::fd::AsRawFd as _, ptr::null_mut};

use libc::{MAP_ANONYMOUS, MAP_FAILED, MAP_PRIVATE, PROT_READ, PROT_WRITE, c_void};
use memtrace_tests::{PAGE, fail};

/// The name, as Go would pass it: NUL-terminated, at the start of a page.
const NAME: &str = "go-heap-arena";

const PR_SET_VMA: libc::c_int = 0x53564d41;
const PR_SET_VMA_ANON_NAME: libc::c_ulong = 0;

fn anon_region() -> *mut c_void {
    // SAFETY: a fresh anonymous mapping of our own.
    let p = unsafe {
        libc::mmap(
            null_mut(),
            PAGE,
            PROT_READ | PROT_WRITE,
            MAP_PRIVATE | MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == MAP_FAILED {
        fail("mmap of the region failed");
    }
    p
}

#[inline(never)]
fn name_region(region: *mut c_void, name: *const c_void) {
    // The result does not matter: kernels without CONFIG_ANON_VMA_NAME
    // refuse the call (EINVAL) without reading the name at all.
    // SAFETY: prctl reads at most the name; the region is ours.
    unsafe {
        libc::prctl(
            PR_SET_VMA,
            PR_SET_VMA_ANON_NAME,
            region as libc::c_ulong,
            PAGE as libc::c_ulong,
            name as libc::c_ulong,
        )
    };
}

fn main() {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| fail("usage: unread_name FILE"));
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap_or_else(|e| fail(&format!("create {path}: {e}")));
    let mut page = vec![0u8; PAGE];
    page[..NAME.len()].copy_from_slice(NAME.as_bytes());
    file.write_all(&page)
        .unwrap_or_else(|e| fail(&format!("write {path}: {e}")));
    // Mapped, never read: no page table entry until something faults it.
    // SAFETY: a private read-only mapping of our own file.
    let text = unsafe {
        libc::mmap(
            null_mut(),
            PAGE,
            PROT_READ,
            MAP_PRIVATE,
            file.as_raw_fd(),
            0,
        )
    };
    if text == MAP_FAILED {
        fail("mmap of the name file failed");
    }
    let region = anon_region();
    name_region(region, text);
    println!("named {:#x} {NAME}", region as u64);

    // A pointer to an unmapped page: nobody can read a name there. (No
    // mapping in between, which could reuse the page.)
    let region = anon_region();
    let bad = anon_region();
    // SAFETY: unmapping a page of our own, to point at it.
    unsafe { libc::munmap(bad, PAGE) };
    name_region(region, bad);
    println!("bad {:#x}", region as u64);
    let _ = std::io::stdout().flush();
    let _ = std::fs::remove_file(&path);
}
