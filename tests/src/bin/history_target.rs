//! Benchmark target for `cargo xtask bench history`: 1,000 distinct call
//! sites (functions `history_target::sites::dA::dB::dC::site`, generated
//! below) make 100,000 one-page mappings, touched, that the kernel keeps
//! as 50,000 VMAs: each holds two adjacent mappings of two different call
//! sites (so attribution reads pagemap), and neighbouring pairs differ in
//! MAP_NORESERVE so they never merge further.
//!
//! Prints `attached? PID` and waits for a line (so memtrace can attach),
//! maps, prints `ready`, and waits for another line to exit.
//!
//! Usage: history_target [RANGES]   (default 100000, even)

use std::io::{BufRead as _, Write as _};

use libc::{MAP_ANONYMOUS, MAP_FIXED_NOREPLACE, MAP_NORESERVE, MAP_PRIVATE, c_void};
use memtrace_tests::{PAGE, fail, free_room};

/// One call site: maps one page at `at` and touches it.
macro_rules! leaf {
    () => {
        #[inline(never)]
        pub fn site(at: usize, flags: i32) {
            // SAFETY: the range was reserved and released by main; nothing
            // else maps there (FIXED_NOREPLACE would fail otherwise).
            let p = unsafe {
                libc::mmap(
                    at as *mut c_void,
                    PAGE,
                    libc::PROT_READ | libc::PROT_WRITE,
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
            // The module path keeps the 1,000 bodies distinct, so no two
            // can be folded into one function (one call site).
            let tag = std::hint::black_box(module_path!()).len() as u8;
            // SAFETY: the page was just mapped writable.
            unsafe { (p as *mut u8).write_volatile(tag) };
        }

        pub fn all(out: &mut Vec<fn(usize, i32)>) {
            out.push(site);
        }
    };
}

/// Ten modules `d0`…`d9`, each holding what `$inner!()` makes.
macro_rules! ten {
    ($inner:ident) => {
        pub mod d0 {
            use super::*;
            $inner!();
        }
        pub mod d1 {
            use super::*;
            $inner!();
        }
        pub mod d2 {
            use super::*;
            $inner!();
        }
        pub mod d3 {
            use super::*;
            $inner!();
        }
        pub mod d4 {
            use super::*;
            $inner!();
        }
        pub mod d5 {
            use super::*;
            $inner!();
        }
        pub mod d6 {
            use super::*;
            $inner!();
        }
        pub mod d7 {
            use super::*;
            $inner!();
        }
        pub mod d8 {
            use super::*;
            $inner!();
        }
        pub mod d9 {
            use super::*;
            $inner!();
        }

        pub fn all(out: &mut Vec<fn(usize, i32)>) {
            d0::all(out);
            d1::all(out);
            d2::all(out);
            d3::all(out);
            d4::all(out);
            d5::all(out);
            d6::all(out);
            d7::all(out);
            d8::all(out);
            d9::all(out);
        }
    };
}

macro_rules! tens {
    () => {
        ten!(leaf);
    };
}

macro_rules! hundreds {
    () => {
        ten!(tens);
    };
}

mod sites {
    use super::*;
    ten!(hundreds);
}

fn wait_line() {
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
}

fn main() {
    let ranges: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().unwrap_or_else(|_| fail("RANGES: a number")))
        .unwrap_or(100_000);
    let mut sites = Vec::new();
    sites::all(&mut sites);
    assert_eq!(sites.len(), 1000, "1,000 call sites");
    let base = free_room(ranges * PAGE);
    println!("attached? {}", std::process::id());
    let _ = std::io::stdout().flush();
    wait_line();
    for i in 0..ranges {
        // Pairs of pages share a VMA; neighbouring pairs differ in flags.
        let flags = if (i / 2) % 2 == 0 { 0 } else { MAP_NORESERVE };
        sites[i % sites.len()](base + i * PAGE, flags);
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
