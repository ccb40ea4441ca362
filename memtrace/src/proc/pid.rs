//! Facts about one process id, from `/proc/PID/stat` and `status`.

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

/// Whether `pid` names a live (not zombie) process.
pub fn process_exists(pid: u32) -> bool {
    stat_fields(pid)
        .and_then(|f| f.first().cloned())
        .is_some_and(|state| !state.starts_with('Z') && !state.starts_with('X'))
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
    }
}
