//! Facts about one process id, from `/proc/PID/stat` and `status`, and
//! the process a user-given pid stands for ([`resolve_target`],
//! [`Identity`]).

use std::{fs, path::Path};

use super::ProcError;

/// `PF_KTHREAD` from include/linux/sched.h.
const PF_KTHREAD: u64 = 0x0020_0000;

/// The fields of `/proc/PID/stat` after the parenthesised command name
/// (which may itself hold spaces or `)`): state, ppid, pgrp, …
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rfind(')').map(|i| &stat[i + 1..])?;
    Some(after.split_whitespace().map(str::to_owned).collect())
}

/// Whether a `/proc/…/stat` state letter is that of a live task.
fn is_live_state(state: &str) -> bool {
    !state.starts_with('Z') && !state.starts_with('X')
}

/// Whether `pid` names a live process: its main thread lives, or it has
/// exited (`pthread_exit`) and the process lives on in other threads,
/// while `/proc/PID` shows it as a zombie.
pub fn process_exists(pid: u32) -> bool {
    let Some(state) = stat_fields(pid).and_then(|f| f.first().cloned()) else {
        return false;
    };
    if is_live_state(&state) {
        return true;
    }
    state.starts_with('Z') && live_threads(pid) > 0
}

/// A task whose `/proc` files show process `pid`'s address space: the
/// process itself, or, once its main thread has exited while others live
/// on (its `/proc/PID/smaps` is then empty), one of those.
pub fn mm_reader(pid: u32) -> u32 {
    let leader_lives = stat_fields(pid)
        .and_then(|f| f.first().map(|s| is_live_state(s)))
        .unwrap_or(true);
    if leader_lives {
        return pid;
    }
    task_ids(pid)
        .into_iter()
        .find(|&tid| is_live_task(pid, tid))
        .unwrap_or(pid)
}

/// Threads of process `pid` that have not exited, as `/proc` lists them.
fn live_threads(pid: u32) -> usize {
    task_ids(pid)
        .into_iter()
        .filter(|&tid| is_live_task(pid, tid))
        .count()
}

/// Whether thread `tid` of process `pid` has not exited.
pub fn is_live_task(pid: u32, tid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat"))
        .ok()
        .and_then(|s| {
            let after = &s[s.rfind(')')? + 1..];
            after.split_whitespace().next().map(is_live_state)
        })
        .unwrap_or(false)
}

/// The thread ids of process `pid` (`/proc/PID/task`); empty when it is
/// gone.
pub fn task_ids(pid: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// When `pid` started, in clock ticks after boot (`/proc/PID/stat` field
/// 22).
pub fn start_time(pid: u32) -> Option<u64> {
    // Field 22 is the 20th after the name (which is field 2).
    stat_fields(pid)?.get(19)?.parse().ok()
}

/// `pid`'s program break as far as it is mapped: the end of its `[heap]`
/// (the break rounded up to a page, which is all a brk growth maps from),
/// or, before its heap was first grown, where the heap starts
/// (`/proc/PID/stat` field 47, `start_brk`).
pub fn program_break(pid: u32) -> Option<u64> {
    let maps = super::smaps::read_maps(pid).ok()?;
    if let Some(heap) = maps.iter().find(|v| v.name == "[heap]") {
        return Some(heap.end);
    }
    // Field 47 is the 45th after the name.
    stat_fields(pid)?.get(44)?.parse().ok().filter(|&b| b != 0)
}

/// Why memtrace will not trace a pid, or can no longer.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// Nothing (alive) has that pid.
    #[error("no process with pid {pid}")]
    NoSuchProcess {
        /// The pid given.
        pid: u32,
    },
    /// pid 1.
    #[error(
        "pid 1 is the init process: memtrace does not trace it \
         (ptrace stops of init can stall the whole system)"
    )]
    Init,
    /// A kernel thread: nothing of it is mapped by user code.
    #[error("pid {pid} is a kernel thread: it has no user address space to trace")]
    KernelThread {
        /// The pid given.
        pid: u32,
    },
    /// memtrace's own process (or one of its threads).
    #[error("pid {pid} is memtrace itself: give the pid of another process")]
    Myself {
        /// The pid given.
        pid: u32,
    },
    /// The process exited since it was pinned.
    #[error("process {pid} has exited")]
    Exited {
        /// Its pid.
        pid: u32,
    },
    /// The process exited since it was pinned and a new one got its pid.
    #[error(
        "pid {pid} now names another process: the one given exited and its pid was reused; \
         nothing was traced"
    )]
    Reused {
        /// The pid.
        pid: u32,
    },
}

/// One process, pinned by its start time: a pid alone may be reused by a
/// new process as soon as the old one is reaped; (pid, start time) is not
/// reused within a boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The process id (thread group id).
    pub pid: u32,
    /// `/proc/PID/stat` field 22.
    pub start_time: u64,
}

impl Identity {
    /// Whatever process `pid` names now.
    pub fn of(pid: u32) -> Result<Identity, TargetError> {
        let start_time = start_time(pid).ok_or(TargetError::NoSuchProcess { pid })?;
        Ok(Identity { pid, start_time })
    }

    /// `Ok` while the pid still names this process (alive or a zombie not
    /// yet reaped).
    pub fn check(&self) -> Result<(), TargetError> {
        match start_time(self.pid) {
            Some(t) if t == self.start_time => Ok(()),
            Some(_) => Err(TargetError::Reused { pid: self.pid }),
            None => Err(TargetError::Exited { pid: self.pid }),
        }
    }
}

/// The process to trace for a pid a user gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    /// The process, pinned.
    pub identity: Identity,
    /// The pid given, when it was a thread id of that process rather than
    /// its process id.
    pub thread: Option<u32>,
}

/// Resolve a user-given pid to the process to trace: a thread id stands
/// for its process; init, kernel threads and memtrace itself are refused.
pub fn resolve_target(pid: u32) -> Result<Target, TargetError> {
    if stat_fields(pid).is_none() {
        return Err(TargetError::NoSuchProcess { pid });
    }
    if is_kernel_thread(pid) {
        return Err(TargetError::KernelThread { pid });
    }
    let tgid = status_field(pid, "Tgid")
        .and_then(|t| u32::try_from(t).ok())
        .ok_or(TargetError::NoSuchProcess { pid })?;
    if tgid == 1 {
        return Err(TargetError::Init);
    }
    if tgid == std::process::id() {
        return Err(TargetError::Myself { pid });
    }
    if !process_exists(tgid) {
        return Err(TargetError::NoSuchProcess { pid });
    }
    Ok(Target {
        identity: Identity::of(tgid)?,
        thread: (tgid != pid).then_some(pid),
    })
}

/// Whether `pid` is a kernel thread (no user address space).
pub fn is_kernel_thread(pid: u32) -> bool {
    // Field 7 after the name is `flags`.
    stat_fields(pid)
        .and_then(|f| f.get(6).and_then(|v| v.parse::<u64>().ok()))
        .is_some_and(|flags| flags & PF_KTHREAD != 0)
}

/// Why a process's smaps was empty: a kernel thread, or a process that
/// exited (a zombie, or an exiting process whose mm is gone, also has an
/// empty smaps).
pub fn explain_empty(pid: u32) -> ProcError {
    if is_kernel_thread(pid) {
        ProcError::KernelThread { pid }
    } else {
        ProcError::NoSuchProcess { pid }
    }
}

/// A numeric field of `/proc/PID/status` (e.g. `Tgid`).
pub fn status_field(pid: u32, field: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        (name == field).then(|| value.trim().parse().ok())?
    })
}

/// The id process `pid` has in its own pid namespace (the last `NStgid`
/// of `/proc/PID/status`; `pid` itself on kernels without the field).
pub fn ns_tgid(pid: u32) -> std::io::Result<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let Some(ids) = status.lines().find_map(|l| l.strip_prefix("NStgid:")) else {
        return Ok(pid);
    };
    ids.split_whitespace()
        .next_back()
        .and_then(|id| id.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("/proc/{pid}/status: malformed NStgid line {ids:?}"),
            )
        })
}

/// Whether `tid` is a thread (other than the main one) of process `pid`,
/// as far as `/proc` still shows it.
pub fn is_thread_of(pid: u32, tid: u32) -> bool {
    Path::new(&format!("/proc/{pid}/task/{tid}")).exists()
}

/// Effective capability set of this process (0 when unknown).
pub fn effective_caps() -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        assert!(process_exists(me));
        assert!(!is_kernel_thread(me));
        assert_eq!(status_field(me, "Tgid"), Some(u64::from(me)));
        assert!(!process_exists(u32::MAX));
        assert!(task_ids(me).contains(&me));
    }

    #[test]
    fn own_identity_is_stable_and_refused() {
        let me = std::process::id();
        let id = Identity::of(me).expect("own identity");
        assert!(id.start_time > 0);
        assert!(id.check().is_ok());
        assert!(matches!(
            resolve_target(me),
            Err(TargetError::Myself { pid }) if pid == me
        ));
        assert!(matches!(
            resolve_target(u32::MAX),
            Err(TargetError::NoSuchProcess { .. })
        ));
        let gone = Identity {
            pid: u32::MAX,
            start_time: 1,
        };
        assert!(matches!(gone.check(), Err(TargetError::Exited { .. })));
        let other = Identity {
            pid: me,
            start_time: id.start_time + 1,
        };
        assert!(matches!(other.check(), Err(TargetError::Reused { .. })));
    }
}
