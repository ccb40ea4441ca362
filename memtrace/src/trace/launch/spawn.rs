//! Start a command that waits, before exec, until memtrace has seized it.
//!
//! `std::process::Command::spawn` returns only after the exec, too late to
//! seize the child before its first instruction; and `PTRACE_TRACEME`
//! makes a plain ptrace tracee, whose group-stops cannot be honoured. So
//! memtrace forks by hand, like strace: the child blocks on a pipe until
//! the parent has seized it, then execs, and the exec arrives as a
//! `PTRACE_EVENT_EXEC` stop before the new program runs.

use std::{
    ffi::{CString, OsStr, OsString, c_char, c_int},
    io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
        unix::ffi::OsStrExt as _,
    },
    ptr,
};

/// A forked child waiting to exec.
pub(super) struct Spawned {
    pub pid: libc::pid_t,
    /// Closing it lets the child go on to exec.
    go: Option<OwnedFd>,
    /// The child writes its exec errno here; end of file means exec worked.
    errors: OwnedFd,
}

impl Spawned {
    /// Let the child exec.
    pub fn release(&mut self) {
        self.go = None;
    }

    /// After the child exited before exec: why exec failed, if it did.
    pub fn exec_error(&self) -> Option<io::Error> {
        let mut errno = [0u8; 4];
        // SAFETY: reads into a local buffer of the given size from our fd.
        let n = unsafe {
            libc::read(
                self.errors.as_raw_fd(),
                errno.as_mut_ptr().cast(),
                errno.len(),
            )
        };
        (n == 4).then(|| io::Error::from_raw_os_error(i32::from_ne_bytes(errno)))
    }
}

/// The command line as C strings, built before fork: the child of a
/// threaded process may not allocate.
struct Argv {
    _strings: Vec<CString>,
    pointers: Vec<*const c_char>,
}

impl Argv {
    fn new(program: &OsStr, args: &[OsString]) -> io::Result<Argv> {
        let strings = std::iter::once(program)
            .chain(args.iter().map(OsString::as_os_str))
            .map(|a| {
                CString::new(a.as_bytes()).map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidInput, "an argument holds a NUL byte")
                })
            })
            .collect::<io::Result<Vec<_>>>()?;
        let mut pointers: Vec<*const c_char> = strings.iter().map(|s| s.as_ptr()).collect();
        pointers.push(ptr::null());
        Ok(Argv {
            _strings: strings,
            pointers,
        })
    }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as c_int; 2];
    // SAFETY: pipe2 writes two fds into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just opened and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Fork a child that waits for [`Spawned::release`] and then execs
/// `program` (searched in `PATH`) with `args`. It keeps memtrace's stdin,
/// stdout, stderr and environment.
pub(super) fn fork_waiting(program: &OsStr, args: &[OsString]) -> io::Result<Spawned> {
    let argv = Argv::new(program, args)?;
    let (go_read, go_write) = pipe()?;
    let (err_read, err_write) = pipe()?;
    // memtrace's signal handlers must not run in the child before exec
    // (they would report the signal to memtrace): block everything across
    // fork; the child resets the handlers before unblocking.
    // SAFETY: sigset_t is plain data; these calls only read/write the sets.
    let old_mask = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        old
    };
    // SAFETY: the child only makes async-signal-safe calls (see `child`).
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: in the child of fork, with the fds and argv prepared.
        unsafe {
            child(
                &argv,
                go_read.as_raw_fd(),
                go_write.as_raw_fd(),
                err_write.as_raw_fd(),
            )
        }
    }
    let fork_error = io::Error::last_os_error();
    // SAFETY: restores this thread's mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old_mask, ptr::null_mut()) };
    if pid < 0 {
        return Err(fork_error);
    }
    drop(go_read);
    drop(err_write);
    Ok(Spawned {
        pid,
        go: Some(go_write),
        errors: err_read,
    })
}

/// The child: reset signals, wait until released, exec. Never returns.
///
/// # Safety
///
/// Call only in the child of `fork`, with fds from [`fork_waiting`].
unsafe fn child(argv: &Argv, go_read: RawFd, go_write: RawFd, err_write: RawFd) -> ! {
    // SAFETY: only async-signal-safe calls (sigaction, close, read,
    // sigprocmask, execvp, write, _exit) on prepared data.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        for sig in 1..=libc::SIGRTMAX() {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            if libc::sigaction(sig, ptr::null(), &mut action) != 0 {
                continue;
            }
            // Handlers would run memtrace's code; exec resets them anyway.
            // SIGPIPE is ignored by Rust's runtime, not by the command's.
            if (action.sa_sigaction != libc::SIG_IGN && action.sa_sigaction != libc::SIG_DFL)
                || sig == libc::SIGPIPE
            {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        // Our copy of the write end would keep the pipe open forever.
        libc::close(go_write);
        let mut byte = 0u8;
        while libc::read(go_read, (&raw mut byte).cast(), 1) < 0
            && *libc::__errno_location() == libc::EINTR
        {}
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, ptr::null_mut());
        libc::execvp(argv.pointers[0], argv.pointers.as_ptr());
        let errno = (*libc::__errno_location()).to_ne_bytes();
        libc::write(err_write, errno.as_ptr().cast(), errno.len());
        libc::_exit(127)
    }
}
