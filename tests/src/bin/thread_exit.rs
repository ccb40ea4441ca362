//! Fixture: the main thread calls `pthread_exit` while a worker lives on;
//! the worker then maps and touches 64 MiB and the process exits with it,
//! so only a tracer that holds the *process's* last thread at exit sees
//! that memory.
//!
//! A real-time signal with a handler is raised on both threads on the way,
//! as glibc does for `setuid` and `pthread_cancel` in threaded programs.
//!
//! Prints `touched ADDR` once the memory is resident.
//!
//! Usage: thread_exit [--wait]   (with `--wait`: `ready PID`, then a stdin
//! line before the main thread exits; the worker exists already then)

#![no_main]

use std::{
    ffi::{c_char, c_int, c_void},
    io::Write as _,
    ptr::null_mut,
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use memtrace_tests::{fail, gettid, touch, wait_if_asked};

const LEN: usize = 64 << 20;

static HANDLED: AtomicUsize = AtomicUsize::new(0);

unsafe extern "C-unwind" {
    // glibc's pthread_exit unwinds the caller's stack (forced unwinding):
    // declared "C-unwind" so that is allowed through `main` below.
    fn pthread_exit(value: *mut c_void) -> !;
}

/// libc calls this directly (no Rust runtime frames with destructors
/// between it and libc), so `pthread_exit` may unwind through it.
#[unsafe(no_mangle)]
pub extern "C-unwind" fn main(_argc: c_int, _argv: *const *const c_char) -> c_int {
    start();
    // SAFETY: nothing in this frame has a destructor; the worker keeps the
    // process alive after the main thread is gone.
    unsafe { pthread_exit(null_mut()) }
}

extern "C" fn on_signal(_: c_int) {
    HANDLED.fetch_add(1, Ordering::SeqCst);
}

fn rt_signal() -> c_int {
    libc::SIGRTMIN() + 2
}

/// Raise the real-time signal on the calling thread; its handler has run
/// when this returns.
fn raise_rt() {
    let before = HANDLED.load(Ordering::SeqCst);
    // SAFETY: signals this very thread; the handler is installed.
    unsafe {
        libc::syscall(
            libc::SYS_tgkill,
            libc::getpid(),
            gettid() as c_int,
            rt_signal(),
        )
    };
    if HANDLED.load(Ordering::SeqCst) == before {
        fail("the real-time signal was not handled");
    }
}

fn start() {
    // SAFETY: installs a handler that only touches an atomic.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(rt_signal(), &sa, null_mut()) != 0 {
            fail("sigaction");
        }
    }
    let (tx, rx) = mpsc::channel::<()>();
    let worker = std::thread::Builder::new()
        .name("outlives-main".into())
        .spawn(move || {
            if rx.recv().is_err() {
                fail("main thread gone without a word");
            }
            wait_for_main_exit();
            // SAFETY: a fresh private anonymous mapping.
            let p = unsafe {
                libc::mmap(
                    null_mut(),
                    LEN,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                fail("mmap 64 MiB");
            }
            touch(p, LEN);
            raise_rt();
            println!("touched {p:?}");
            let _ = std::io::stdout().flush();
            // Returning ends the last thread: glibc calls exit(0).
        })
        .unwrap_or_else(|e| fail(&format!("spawn worker: {e}")));
    drop(worker);
    wait_if_asked("ready");
    raise_rt();
    if tx.send(()).is_err() {
        fail("worker gone");
    }
}

/// Wait until the main thread has exited: the process's own state (the
/// leader's) reads `Z` while other threads live.
fn wait_for_main_exit() {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let state = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .unwrap_or("");
        if state == "Z" {
            return;
        }
        if Instant::now() > deadline {
            fail(&format!("the main thread did not exit (state {state:?})"));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}
