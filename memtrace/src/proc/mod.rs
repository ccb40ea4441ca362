//! Everything memtrace reads from `/proc`, and the one error type for it.
//!
//! - [`smaps`]: `/proc/PID/smaps` (and `maps`, `smaps_rollup`) parsed into
//!   [`smaps::Vma`]s.
//! - [`maps`]: the file mappings of a process, kept for unwinding and
//!   symbolizing its stacks.
//! - [`pagemap`]: resident anonymous pages of an address range.
//! - [`pid`]: facts about one process id (alive, kernel thread, thread of
//!   which process, capabilities), and the process a user-given pid
//!   stands for, pinned by its start time.
//!
//! - [`read_c_string`]: a string in a process's memory.
//!
//! Contact points: [`ProcError`] is what every reader here returns when
//! the kernel says no; callers above (snapshot, attribution, serve) decide
//! what to do with each variant.

pub mod maps;
pub mod pagemap;
pub mod pid;
pub mod smaps;

use std::io;

use nix::{sys::uio, unistd::Pid};

/// Bytes per page. memtrace follows x86_64 Linux's 4 KiB base pages.
pub const PAGE_SIZE: u64 = 4096;

/// The NUL-terminated string at `addr` in process `pid` (at most
/// `memtrace_common::NAME_LEN` bytes with the NUL), read with
/// `process_vm_readv`, which faults pages in as the process itself would.
/// `None` when the process is gone or the address unreadable.
pub fn read_c_string(pid: u32, addr: u64) -> Option<String> {
    const MAX: usize = memtrace_common::NAME_LEN;
    let mut buf = [0u8; MAX];
    // The string may end before a page boundary with nothing mapped
    // after it: read up to the boundary and the rest as separate pieces,
    // so the first still arrives when the second fails.
    let to_boundary = (PAGE_SIZE - addr % PAGE_SIZE).min(MAX as u64) as usize;
    let (head, tail) = buf.split_at_mut(to_boundary);
    let mut local = [io::IoSliceMut::new(head), io::IoSliceMut::new(tail)];
    let remote = [
        uio::RemoteIoVec {
            base: usize::try_from(addr).ok()?,
            len: to_boundary,
        },
        uio::RemoteIoVec {
            base: usize::try_from(addr.checked_add(to_boundary as u64)?).ok()?,
            len: MAX - to_boundary,
        },
    ];
    let pieces = if to_boundary == MAX { 1 } else { 2 };
    let n = uio::process_vm_readv(
        Pid::from_raw(i32::try_from(pid).ok()?),
        &mut local[..pieces],
        &remote[..pieces],
    )
    .ok()?;
    let bytes = &buf[..n];
    let end = bytes.iter().position(|b| *b == 0)?;
    Some(String::from_utf8_lossy(&bytes[..end]).into_owned())
}

/// Why something could not be read from `/proc`. `Display` gives one line
/// that says what to do next, its cause included (notes and HTTP bodies
/// print it with `{}`), so no cause is also a `source()`: anyhow's `{:#}`
/// would print it twice.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// The process does not exist, or exited while being read.
    #[error("no process with pid {pid} (it does not exist or has exited)")]
    NoSuchProcess {
        /// The process.
        pid: u32,
    },
    /// Not allowed to read the process's files.
    #[error(
        "permission denied reading {path}: run as the same user as pid {pid}, \
         or as root (CAP_SYS_PTRACE)"
    )]
    PermissionDenied {
        /// The process.
        pid: u32,
        /// The file that could not be read.
        path: String,
    },
    /// The pid is a kernel thread: it has no user address space.
    #[error("pid {pid} is a kernel thread: it has no user address space (its smaps is empty)")]
    KernelThread {
        /// The process.
        pid: u32,
    },
    /// Not Linux, or `/proc` is not mounted.
    #[error("/proc is not available: memtrace needs Linux with procfs mounted at /proc")]
    NoProcfs,
    /// Another I/O error.
    #[error("reading {path}: {error}")]
    Io {
        /// The file being read.
        path: String,
        /// The error.
        error: io::Error,
    },
    /// The process changed its mappings while they were read in a way that
    /// left some memory counted twice or not at all (a torn read), again
    /// on each read ([`smaps::settled`] reads up to
    /// [`smaps::READ_ATTEMPTS`] times).
    #[error(
        "pid {pid} kept changing its memory mappings while memtrace read them (each read \
         was torn by a change): try again"
    )]
    Unsettled {
        /// The process.
        pid: u32,
    },
    /// The kernel's text did not parse (should not happen; please report).
    #[error("pid {pid}: {error}")]
    Parse {
        /// The process.
        pid: u32,
        /// Where parsing failed.
        error: smaps::ParseError,
    },
}

impl ProcError {
    /// Map an I/O error on a `/proc/PID/…` file to the right variant.
    pub fn from_io(pid: u32, path: &str, error: io::Error) -> ProcError {
        match error.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ESRCH) => {
                // ENOENT could also mean /proc is missing altogether.
                if check_procfs().is_err() {
                    ProcError::NoProcfs
                } else {
                    ProcError::NoSuchProcess { pid }
                }
            }
            Some(libc::EACCES) | Some(libc::EPERM) => ProcError::PermissionDenied {
                pid,
                path: path.to_owned(),
            },
            _ => ProcError::Io {
                path: path.to_owned(),
                error,
            },
        }
    }

    /// The process is gone (or never was): callers answering for a live
    /// process (HTTP 410, "exited" messages) test this.
    pub fn is_gone(&self) -> bool {
        matches!(self, ProcError::NoSuchProcess { .. })
    }
}

/// `Err(NoProcfs)` unless `/proc` is there.
pub fn check_procfs() -> Result<(), ProcError> {
    if cfg!(not(target_os = "linux")) || !std::path::Path::new("/proc/self/stat").exists() {
        return Err(ProcError::NoProcfs);
    }
    Ok(())
}
