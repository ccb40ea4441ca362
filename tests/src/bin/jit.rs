//! Fixture: a tiny JIT. It writes machine code into anonymous memory (no
//! file, no unwind tables: only a frame pointer, as JIT code has), names it
//! in `/tmp/perf-PID.map` as JITs do, and runs it: the generated code calls
//! `mmap` itself for 32 MiB, which `main` then touches.
//!
//! The perf map also holds a malformed line and a second name appended
//! after the first call, as a JIT's map grows while it runs. With
//! `--wait`, it prints `ready PID` and waits for a line on stdin first,
//! and `done PID` at the end, then waits for stdin again (its memory still
//! mapped). `--name-suffix S` appends S to both names: a hostile JIT's
//! control characters and separators.

use std::io::Write as _;

/// x86-64: `fn(mmap: fn ptr, len) -> *mut u8`, calling
/// `mmap(NULL, len, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0)`
/// inside a frame-pointer frame.
const CODE: &[u8] = &[
    0x55, // push rbp
    0x48, 0x89, 0xe5, // mov rbp, rsp
    0x48, 0x89, 0xf8, // mov rax, rdi (mmap)
    0x31, 0xff, // xor edi, edi (addr NULL; len already in rsi)
    0xba, 0x03, 0x00, 0x00, 0x00, // mov edx, 3
    0xb9, 0x22, 0x00, 0x00, 0x00, // mov ecx, 0x22
    0x49, 0xc7, 0xc0, 0xff, 0xff, 0xff, 0xff, // mov r8, -1
    0x45, 0x31, 0xc9, // xor r9d, r9d
    0xff, 0xd0, // call rax
    0x5d, // pop rbp
    0xc3, // ret
];

/// Where the second copy of the code goes in the page.
const SECOND: usize = 256;

const LEN: usize = 32 << 20;

type Jitted = unsafe extern "C" fn(usize, usize) -> *mut u8;

fn fail(msg: &str) -> ! {
    eprintln!("jit: {msg}");
    std::process::exit(2)
}

fn main() {
    if !cfg!(target_arch = "x86_64") {
        fail("the generated code is x86-64");
    }
    memtrace_tests::wait_if_asked("ready");
    // SAFETY: a fresh private anonymous mapping.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if page == libc::MAP_FAILED {
        fail("mmap of the code page failed");
    }
    let base = page as usize;
    // SAFETY: both copies fit in the page, which is ours and writable.
    unsafe {
        std::ptr::copy_nonoverlapping(CODE.as_ptr(), page.cast::<u8>(), CODE.len());
        std::ptr::copy_nonoverlapping(CODE.as_ptr(), page.cast::<u8>().add(SECOND), CODE.len());
    }
    // SAFETY: our page; W^X as JITs do.
    if unsafe { libc::mprotect(page, 4096, libc::PROT_READ | libc::PROT_EXEC) } != 0 {
        fail("mprotect of the code page failed");
    }
    let args: Vec<String> = std::env::args().collect();
    let suffix = args
        .iter()
        .position(|a| a == "--name-suffix")
        .and_then(|i| args.get(i + 1))
        .map_or("", String::as_str);
    let path = format!("/tmp/perf-{}.map", std::process::id());
    let mut map =
        std::fs::File::create(&path).unwrap_or_else(|e| fail(&format!("create {path}: {e}")));
    writeln!(map, "{base:x} {:x} JIT:firstBuffer{suffix}", CODE.len())
        .and_then(|()| writeln!(map, "not a perf map line"))
        .unwrap_or_else(|e| fail(&format!("write {path}: {e}")));

    let mmap = libc::mmap as *const () as usize;
    let run = |at: usize| {
        // SAFETY: `at` holds CODE, executable, with the signature of
        // `Jitted`.
        let f: Jitted = unsafe { std::mem::transmute::<usize, Jitted>(at) };
        // SAFETY: calls mmap with valid arguments.
        let p = unsafe { f(mmap, LEN) };
        if p.is_null() || p as usize == usize::MAX {
            fail("the generated code's mmap failed");
        }
        for off in (0..LEN).step_by(memtrace_tests::PAGE) {
            // SAFETY: inside the LEN bytes just mapped read-write.
            unsafe { p.add(off).write_volatile(1) };
        }
    };
    run(base);
    // The JIT compiles more, and its map grows.
    writeln!(
        map,
        "{:x} {:x} JIT:secondBuffer{suffix}",
        base + SECOND,
        CODE.len()
    )
    .unwrap_or_else(|e| fail(&format!("write {path}: {e}")));
    drop(map);
    run(base + SECOND);
    println!("jitted {}", 2 * LEN);
    memtrace_tests::wait_if_asked("done");
}
