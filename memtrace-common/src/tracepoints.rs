//! The raw tracepoints memtrace attaches to, and every kernel fact its eBPF
//! programs rely on.
//!
//! This is the one place these facts live: the eBPF programs take syscall
//! numbers, `pt_regs` offsets and tracepoint argument positions from here;
//! userspace checks them against the running kernel's BTF before attaching
//! (and a test checks them on the test machine), and finds there the
//! kernel struct members whose offsets it hands the programs
//! ([`KernelLayout`]).
//!
//! Why raw tracepoints: the per-syscall tracepoints (`syscalls:sys_enter_*`)
//! are perf events, and the kernel waits for an RCU grace period under a
//! global mutex when each one is closed — about 75 ms apiece, over a
//! second for a session. Raw tracepoint links detach without waiting. Two
//! programs on `sys_enter`/`sys_exit` cover every traced syscall; they
//! leave other syscalls after one compare.
//!
//! Program names are tracepoint names: the program attached to the raw
//! tracepoint `sys_enter` is called `sys_enter`.

use crate::EventKind;

/// A raw tracepoint: its name and its `TP_PROTO` arguments, which the
/// program reads as `args[i]` (the kernel's BTF has the prototype as the
/// function type `btf_trace_NAME`, with a leading `void *` for the probe's
/// data).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawTracepoint {
    /// Tracepoint and program name.
    pub name: &'static str,
    /// Argument names, in `TP_PROTO` order.
    pub args: &'static [&'static str],
}

impl RawTracepoint {
    /// Position of argument `name` in the program's context.
    pub const fn arg(&self, name: &str) -> usize {
        let mut i = 0;
        while i < self.args.len() {
            if same_name(self.args[i], name) {
                return i;
            }
            i += 1;
        }
        panic!("no such tracepoint argument")
    }
}

/// `sys_enter(struct pt_regs *regs, long id)`: every syscall entry.
pub const SYS_ENTER: RawTracepoint = RawTracepoint {
    name: "sys_enter",
    args: &["regs", "id"],
};
/// `sys_exit(struct pt_regs *regs, long ret)`: every syscall exit.
pub const SYS_EXIT: RawTracepoint = RawTracepoint {
    name: "sys_exit",
    args: &["regs", "ret"],
};
/// `sched_process_fork(struct task_struct *parent, struct task_struct
/// *child)`; attached with `--follow-forks` only.
pub const SCHED_PROCESS_FORK: RawTracepoint = RawTracepoint {
    name: "sched_process_fork",
    args: &["parent", "child"],
};
/// `sched_process_exec(struct task_struct *p, pid_t old_pid, struct
/// linux_binprm *bprm)`, in the task that called exec.
pub const SCHED_PROCESS_EXEC: RawTracepoint = RawTracepoint {
    name: "sched_process_exec",
    args: &["p", "old_pid", "bprm"],
};
/// `sched_process_exit(struct task_struct *p, bool group_dead)`, in the
/// exiting task.
pub const SCHED_PROCESS_EXIT: RawTracepoint = RawTracepoint {
    name: "sched_process_exit",
    args: &["p", "group_dead"],
};
/// Every raw tracepoint memtrace has a program for, in attach order.
pub const RAW_TRACEPOINTS: [RawTracepoint; 5] = [
    SYS_ENTER,
    SYS_EXIT,
    SCHED_PROCESS_EXEC,
    SCHED_PROCESS_EXIT,
    SCHED_PROCESS_FORK,
];

/// Number of syscall arguments the eBPF side saves.
pub const SYSCALL_MAX_ARGS: usize = 6;

/// x86_64 `struct pt_regs` offsets the programs read (checked against BTF).
pub mod pt_regs {
    /// A `pt_regs` member: name and byte offset.
    pub type Member = (&'static str, usize);
    /// Syscall arguments, in order (the syscall ABI passes the fourth in
    /// `r10`).
    pub const ARGS: [Member; super::SYSCALL_MAX_ARGS] = [
        ("di", 112),
        ("si", 104),
        ("dx", 96),
        ("r10", 56),
        ("r8", 72),
        ("r9", 64),
    ];
    /// The syscall number (at exit too).
    pub const ORIG_AX: Member = ("orig_ax", 120);
    /// User instruction pointer.
    pub const IP: Member = ("ip", 128);
    /// User code segment: `USER_CS` for 64-bit code.
    pub const CS: Member = ("cs", 136);
    /// User stack pointer.
    pub const SP: Member = ("sp", 152);
    /// User frame pointer.
    pub const BP: Member = ("bp", 32);
    /// Every member read, for the BTF check.
    pub const ALL: [Member; 11] = [
        ARGS[0], ARGS[1], ARGS[2], ARGS[3], ARGS[4], ARGS[5], ORIG_AX, IP, CS, SP, BP,
    ];
    /// The programs read every member above in one copy of this many
    /// words from [`WINDOW_START`]: one helper call instead of eleven.
    pub const WINDOW_WORDS: usize = 16;
    /// Offset of the first word of the window (`bp`, the lowest member).
    pub const WINDOW_START: usize = BP.1;
    /// Index of `member` in the window.
    pub const fn word(member: Member) -> usize {
        (member.1 - WINDOW_START) / 8
    }
    /// `__USER_CS`: the code segment of 64-bit user code. 32-bit processes
    /// number their syscalls differently; their calls are skipped.
    pub const USER_CS: u64 = 0x33;
}

/// A traced syscall: the event kind it produces, its x86_64 number, and
/// its arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Syscall {
    pub kind: EventKind,
    /// The syscall's name (`mmap`).
    pub name: &'static str,
    /// Its number in the x86_64 syscall table.
    pub nr: u64,
    /// Its arguments as the kernel names them.
    pub args: &'static [&'static str],
}

macro_rules! syscalls {
    ($($kind:ident $name:literal $nr:literal [$($arg:literal),*];)*) => {
        /// Every traced syscall.
        pub const SYSCALLS: [Syscall; [$($name),*].len()] = [$(Syscall {
            kind: EventKind::$kind,
            name: $name,
            nr: $nr,
            args: &[$($arg),*],
        }),*];

        /// The event kind of syscall number `nr`, if it is traced: one
        /// compare per traced syscall, the whole cost for other calls.
        #[inline(always)]
        pub fn kind_of(nr: u64) -> Option<EventKind> {
            match nr {
                $($nr => Some(EventKind::$kind),)*
                _ => None,
            }
        }
    };
}

syscalls! {
    Mmap "mmap" 9 ["addr", "len", "prot", "flags", "fd", "off"];
    Munmap "munmap" 11 ["addr", "len"];
    Mremap "mremap" 25 ["addr", "old_len", "new_len", "flags", "new_addr"];
    Brk "brk" 12 ["brk"];
    Mprotect "mprotect" 10 ["start", "len", "prot"];
    Madvise "madvise" 28 ["start", "len_in", "behavior"];
    SetVmaName "prctl" 157 ["option", "arg2", "arg3", "arg4", "arg5"];
}

/// The traced syscall that produces `kind`, if `kind` is a syscall event.
pub const fn syscall(kind: EventKind) -> Option<&'static Syscall> {
    let mut i = 0;
    while i < SYSCALLS.len() {
        if SYSCALLS[i].kind as u32 == kind as u32 {
            return Some(&SYSCALLS[i]);
        }
        i += 1;
    }
    None
}

/// A kernel struct member whose offset the programs need; userspace looks
/// it up in the running kernel's BTF.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelMember {
    /// `struct` name.
    pub ty: &'static str,
    pub member: &'static str,
}

/// `struct task_struct` → `struct pid *thread_pid`.
pub const TASK_THREAD_PID: KernelMember = KernelMember {
    ty: "task_struct",
    member: "thread_pid",
};
/// `struct pid` → `unsigned int level`: depth of the task's PID namespace.
pub const PID_LEVEL: KernelMember = KernelMember {
    ty: "pid",
    member: "level",
};
/// `struct pid` → `struct upid numbers[]`: the id in each namespace from
/// the initial one (level 0) down.
pub const PID_NUMBERS: KernelMember = KernelMember {
    ty: "pid",
    member: "numbers",
};
/// `struct upid` → `int nr`.
pub const UPID_NR: KernelMember = KernelMember {
    ty: "upid",
    member: "nr",
};
/// `struct linux_binprm` → `const char *filename`.
pub const BPRM_FILENAME: KernelMember = KernelMember {
    ty: "linux_binprm",
    member: "filename",
};

/// Offsets of kernel struct members, from the running kernel's BTF, set by
/// userspace as a global before load.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelLayout {
    /// [`TASK_THREAD_PID`].
    pub task_thread_pid: u32,
    /// [`PID_LEVEL`].
    pub pid_level: u32,
    /// [`PID_NUMBERS`].
    pub pid_numbers: u32,
    /// Size of `struct upid` (the stride of `numbers`).
    pub upid_size: u32,
    /// [`UPID_NR`].
    pub upid_nr: u32,
    /// [`BPRM_FILENAME`].
    pub bprm_filename: u32,
}

/// The PID namespace memtrace runs in, as `bpf_get_ns_current_pid_tgid`
/// names it (the device and inode of `/proc/self/ns/pid`); all zero in the
/// initial namespace, where the kernel's own ids are the ones memtrace sees.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PidNamespace {
    pub dev: u64,
    pub ino: u64,
}

/// Const string equality (`==` on `str` is not const).
pub const fn same_name(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_syscall_kind_has_one_syscall() {
        for kind in EventKind::ALL {
            let found = SYSCALLS.iter().filter(|sc| sc.kind == kind).count();
            assert_eq!(found, usize::from(kind.is_syscall()), "{kind:?}");
            assert_eq!(
                syscall(kind).map(|sc| sc.kind),
                kind.is_syscall().then_some(kind)
            );
        }
    }

    #[test]
    fn numbers_map_back_to_their_kind() {
        for sc in SYSCALLS {
            assert_eq!(kind_of(sc.nr), Some(sc.kind), "{}", sc.name);
            assert!(!sc.args.is_empty() && sc.args.len() <= SYSCALL_MAX_ARGS);
        }
        assert_eq!(kind_of(0), None, "read is not traced");
        assert_eq!(kind_of(u64::MAX), None);
    }

    #[test]
    fn argument_positions() {
        assert_eq!(SYS_ENTER.arg("id"), 1);
        assert_eq!(SYS_EXIT.arg("ret"), 1);
        assert_eq!(SCHED_PROCESS_FORK.arg("child"), 1);
        assert_eq!(SCHED_PROCESS_EXEC.arg("bprm"), 2);
        assert_eq!(SCHED_PROCESS_EXIT.arg("group_dead"), 1);
    }

    #[test]
    fn pt_regs_members_are_distinct_words() {
        for (i, a) in pt_regs::ALL.iter().enumerate() {
            assert_eq!(a.1 % 8, 0, "{a:?}");
            assert!(
                a.1 >= pt_regs::WINDOW_START && pt_regs::word(*a) < pt_regs::WINDOW_WORDS,
                "{a:?} is outside the window"
            );
            for b in &pt_regs::ALL[i + 1..] {
                assert!(a.0 != b.0 && a.1 != b.1, "{a:?} {b:?}");
            }
        }
    }
}
