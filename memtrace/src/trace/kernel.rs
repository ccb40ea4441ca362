//! What the eBPF programs need to know about the running kernel, taken
//! from its BTF and from `/proc` before load: the contract of
//! [`memtrace_common::tracepoints`] checked, struct offsets looked up, and
//! the PID namespace memtrace runs in.

use std::{fs, os::unix::fs::MetadataExt as _};

use memtrace_common::tracepoints::{
    BPRM_FILENAME, KernelLayout, KernelMember, PID_LEVEL, PID_NUMBERS, PidNamespace,
    RAW_TRACEPOINTS, TASK_GROUP_LEADER, TASK_THREAD_PID, UPID_NR, pt_regs,
};

use super::{TraceError, btf::Btf};

/// Inode of the initial PID namespace (`PROC_PID_INIT_INO`), fixed by the
/// kernel.
const INIT_PID_NS_INO: u64 = 0xEFFF_FFFC;

/// Check the raw tracepoint prototypes and `pt_regs` offsets the programs
/// read, and look up the struct offsets they need. (The syscall tracepoint
/// records are checked against tracefs: [`super::tracefs`].)
pub fn check_and_layout(btf: &Btf) -> Result<KernelLayout, TraceError> {
    for tp in RAW_TRACEPOINTS {
        let found = btf.raw_tracepoint_args(tp.name);
        if found != Some(tp.args.len()) {
            return Err(TraceError::Contract {
                what: format!("raw tracepoint {}", tp.name),
                found: found.map_or_else(|| "missing".to_owned(), |n| format!("{n} arguments")),
                expected: format!("{} arguments ({})", tp.args.len(), tp.args.join(", ")),
            });
        }
    }
    for (name, offset) in pt_regs::ALL {
        let found = btf.member("pt_regs", name).map(|m| m.offset as usize);
        if found != Some(offset) {
            return Err(TraceError::Contract {
                what: format!("pt_regs.{name}"),
                found: found.map_or_else(|| "missing".to_owned(), |o| format!("at {o}")),
                expected: format!("at {offset}"),
            });
        }
    }
    let offset = |m: KernelMember| {
        btf.member(m.ty, m.member)
            .map(|m| m.offset)
            .ok_or_else(|| TraceError::MissingKernelType {
                what: format!("struct {}.{}", m.ty, m.member),
            })
    };
    Ok(KernelLayout {
        task_thread_pid: offset(TASK_THREAD_PID)?,
        pid_level: offset(PID_LEVEL)?,
        pid_numbers: offset(PID_NUMBERS)?,
        upid_size: btf
            .struct_size(UPID_NR.ty)
            .ok_or_else(|| TraceError::MissingKernelType {
                what: format!("struct {}", UPID_NR.ty),
            })?,
        upid_nr: offset(UPID_NR)?,
        bprm_filename: offset(BPRM_FILENAME)?,
        task_group_leader: offset(TASK_GROUP_LEADER)?,
    })
}

/// Device and inode of a PID namespace link (`/proc/…/ns/pid`).
fn namespace_of(link: &str) -> std::io::Result<(u64, u64)> {
    let meta = fs::metadata(link)?;
    Ok((meta.dev(), meta.ino()))
}

/// The PID namespace memtrace runs in, as the eBPF side names it: zero in
/// the initial namespace. In another one, `/proc` must be that
/// namespace's, or the pids memtrace reads there name other processes.
pub fn own_pid_namespace() -> Result<PidNamespace, TraceError> {
    let (dev, ino) = namespace_of("/proc/self/ns/pid").map_err(TraceError::PidNamespace)?;
    if ino == INIT_PID_NS_INO {
        return Ok(PidNamespace::default());
    }
    let proc_pid = fs::read_link("/proc/self")
        .ok()
        .and_then(|p| p.to_str()?.parse::<u32>().ok());
    if proc_pid != Some(std::process::id()) {
        return Err(TraceError::ForeignProc);
    }
    Ok(PidNamespace { dev, ino })
}

/// Whether process `pid` (as memtrace sees it) is in namespace `ns`: in the
/// initial namespace memtrace sees every process by its kernel id, in
/// another only those of that very namespace (not of namespaces nested in
/// it).
pub fn check_traceable(ns: PidNamespace, pid: u32) -> Result<(), TraceError> {
    if ns.ino == 0 {
        return Ok(());
    }
    match namespace_of(&format!("/proc/{pid}/ns/pid")) {
        Ok(found) if found == (ns.dev, ns.ino) => Ok(()),
        Ok(_) => Err(TraceError::NestedNamespace { pid }),
        // Gone already: nothing to refuse; the session notices.
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_initial_namespace_needs_no_translation() {
        // Tests run on the host (or CI's machine), not in a container.
        if namespace_of("/proc/self/ns/pid").ok().map(|(_, ino)| ino) == Some(INIT_PID_NS_INO) {
            assert_eq!(own_pid_namespace().ok(), Some(PidNamespace::default()));
        }
        assert!(check_traceable(PidNamespace::default(), 1).is_ok());
    }
}
