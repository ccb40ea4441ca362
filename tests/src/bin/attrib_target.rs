//! Benchmark target for `cargo xtask bench attribution`: after the go line
//! it makes 100,000 one-page mappings that the kernel keeps as 60,000
//! VMAs: 40,000 VMAs hold two adjacent mappings from two different call
//! sites (merged by the kernel, so attribution must read pagemap), 20,000
//! hold one. Neighbouring groups differ in MAP_NORESERVE so they never
//! merge. Every page is touched. Prints `ready` and waits for another line.
//!
//! Usage: attrib_target [PAIRS SINGLES]

use std::io::{BufRead as _, Write as _};

use libc::{
    MAP_ANONYMOUS, MAP_FIXED_NOREPLACE, MAP_NORESERVE, MAP_PRIVATE, PROT_READ, PROT_WRITE, c_void,
};
use memtrace_tests::{PAGE, fail, free_room};

#[inline(never)]
fn map_first(at: usize, flags: i32) {
    map_at(at, flags, 1);
}

#[inline(never)]
fn map_second(at: usize, flags: i32) {
    map_at(at, flags, 2);
}

#[inline(never)]
fn map_single(at: usize, flags: i32) {
    map_at(at, flags, 3);
}

/// `tag` is written to the page: it keeps the three callers distinct, so
/// the compiler cannot fold them into one function (one call site).
#[inline(always)]
fn map_at(at: usize, flags: i32, tag: u8) {
    // SAFETY: the address range was reserved and released by main; nothing
    // else maps there (FIXED_NOREPLACE would fail otherwise).
    let p = unsafe {
        libc::mmap(
            at as *mut c_void,
            PAGE,
            PROT_READ | PROT_WRITE,
            MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE | flags,
            -1,
            0,
        )
    };
    if p as usize != at {
        fail(&format!(
            "mmap at {at:#x} failed: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: the page was just mapped writable.
    unsafe { (p as *mut u8).write_volatile(tag) };
}

fn wait_line() {
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (pairs, singles) = match args[..] {
        [p, s] => (p, s),
        _ => (40_000, 20_000),
    };
    let pages = pairs * 2 + singles;
    let base = free_room(pages * PAGE);
    println!("attached? {}", std::process::id());
    let _ = std::io::stdout().flush();
    wait_line();
    let mut at = base;
    for i in 0..pairs + singles {
        let flags = if i % 2 == 0 { 0 } else { MAP_NORESERVE };
        if i < pairs {
            map_first(at, flags);
            map_second(at + PAGE, flags);
            at += 2 * PAGE;
        } else {
            map_single(at, flags);
            at += PAGE;
        }
        // Leave the tracer time to keep up: events it cannot take are
        // counted as lost, and lost mappings would count as untraced.
        if i % 1000 == 999 {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
    println!("ready");
    let _ = std::io::stdout().flush();
    wait_line();
}
