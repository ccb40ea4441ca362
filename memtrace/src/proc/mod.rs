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
//! Contact points: [`ProcError`] is what every reader here returns when
//! the kernel says no; callers above (snapshot, attribution, serve) decide
//! what to do with each variant.

pub mod maps;
pub mod pagemap;
pub mod pid;
pub mod smaps;

use std::io;

/// Bytes per page. memtrace follows x86_64 Linux's 4 KiB base pages.
pub const PAGE_SIZE: u64 = 4096;

/// Why something could not be read from `/proc`. `Display` gives one line
/// that says what to do next.
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
    #[error("reading {path}: {source}")]
    Io {
        /// The file being read.
        path: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The kernel's text did not parse (should not happen; please report).
    #[error("pid {pid}: {source}")]
    Parse {
        /// The process.
        pid: u32,
        /// Where parsing failed.
        #[source]
        source: smaps::ParseError,
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
                source: error,
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
