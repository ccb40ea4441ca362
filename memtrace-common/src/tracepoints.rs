//! The tracepoints memtrace attaches to, and every kernel fact its eBPF
//! programs rely on.
//!
//! This is the one place these facts live: the eBPF programs take record
//! offsets, tracepoint argument positions and register offsets from here;
//! userspace checks them against the running kernel before attaching (and
//! tests check them on the test machine), and finds here the kernel struct
//! members whose offsets it hands the programs ([`KernelLayout`]).
//!
//! Two kinds of tracepoints:
//!
//! - The traced syscalls ([`SYSCALLS`]): a `syscalls:sys_exit_NAME`
//!   program each, which takes the arguments from the user registers
//!   ([`pt_regs::ARGS`]) and the result from the record ([`fields`]); and
//!   a `sys_enter_NAME` program only for the calls whose entry time orders
//!   them ([`Syscall::enter`]). The kernel filters them by syscall
//!   number before any program runs, so other syscalls on the machine pay
//!   nothing. (A raw tracepoint on `sys_enter`/`sys_exit` would run a
//!   program on every syscall of every process: about 0.2 µs each on the
//!   test machine, twice the cost of a `getppid`.)
//! - The process lifecycle: raw tracepoints ([`RAW_TRACEPOINTS`]) with
//!   the kernel's own arguments (task pointers), read at offsets from BTF.
//!   They fire a few times per process, and pass the child task itself,
//!   whose id memtrace needs in its own PID namespace.
//!
//! Program names are tracepoint names: the program attached to
//! `syscalls:sys_enter_mmap` is called `sys_enter_mmap`.

use crate::EventKind;

/// Category of the syscall tracepoints.
pub const SYSCALLS_CATEGORY: &str = "syscalls";

/// One field of a tracepoint record, as tracefs describes it
/// (`field:TYPE NAME; offset:N; size:M;`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    /// The field's name in the `format` file.
    pub name: &'static str,
    /// Byte offset in the record.
    pub offset: usize,
    /// Size in bytes.
    pub size: usize,
}

/// Arguments of a syscall at most (one register each, [`pt_regs::ARGS`]);
/// syscalls with fewer leave the rest to whatever the registers hold, which
/// userspace ignores.
pub const SYSCALL_MAX_ARGS: usize = 6;
/// Offset of the first argument in a `sys_enter_*` record (after the common
/// header and `int __syscall_nr`, padded to 8): where tracefs lists the
/// kernel's argument order.
pub const SYSCALL_ARGS_OFFSET: usize = 16;
/// `long ret` of every `sys_exit_*` record.
pub const SYSCALL_RET: Field = Field {
    name: "ret",
    offset: 16,
    size: 8,
};

/// A traced syscall: the event kind it produces and its tracepoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Syscall {
    pub kind: EventKind,
    /// The syscall's name (`mmap`).
    pub name: &'static str,
    /// Its entry tracepoint and program (`sys_enter_munmap`), for calls
    /// ordered by when they began; `None` for calls ordered by when they
    /// returned, which pay for no entry program.
    ///
    /// Events reach the ring buffer at syscall exit, after the kernel
    /// released the mm lock, so a thread preempted in between can deliver
    /// its munmap after another thread's mmap that reused the hole.
    /// Causality fixes the order: a call that names an existing range
    /// (munmap, mprotect, madvise, naming) can only have learnt that range
    /// after the call that created it returned, so it is ordered by its
    /// entry time; calls that create ranges (mmap, brk, and mremap, which
    /// may move into a hole another thread just made) by their exit time.
    /// A thread's own calls keep their order (each entry follows the
    /// previous exit).
    pub enter: Option<&'static str>,
    /// Its exit tracepoint and program (`sys_exit_mmap`).
    pub exit: &'static str,
    /// Whether its events carry the call's user stack. Calls that only
    /// release memory (munmap) carry none: reading even the caller's
    /// address from the user stack costs the traced thread more than the
    /// rest of the event, and nothing is attributed to a release
    /// (`TracerOptions::unmap_stacks` asks for their stacks anyway).
    pub stack: bool,
    /// Its arguments as tracefs names them, in order: the registers of
    /// [`pt_regs::ARGS`] hold them in this order.
    pub args: &'static [&'static str],
}

/// When a call takes effect, for ordering events (see [`Syscall::enter`]).
macro_rules! entry_tracepoint {
    (entry, $name:literal) => {
        Some(concat!("sys_enter_", $name))
    };
    (exit, $name:literal) => {
        None
    };
}

/// Whether a call's events carry its stack (see [`Syscall::stack`]).
macro_rules! call_stack {
    (stack) => {
        true
    };
    (nostack) => {
        false
    };
}

macro_rules! syscalls {
    ($($kind:ident $name:literal $at:ident $stack:ident [$($arg:literal),*];)*) => {
        /// Every traced syscall, in attach order.
        pub const SYSCALLS: [Syscall; [$($name),*].len()] = [$(Syscall {
            kind: EventKind::$kind,
            name: $name,
            enter: entry_tracepoint!($at, $name),
            exit: concat!("sys_exit_", $name),
            stack: call_stack!($stack),
            args: &[$($arg),*],
        }),*];
    };
}

syscalls! {
    Mmap "mmap" exit stack ["addr", "len", "prot", "flags", "fd", "off"];
    Munmap "munmap" entry nostack ["addr", "len"];
    Mremap "mremap" exit stack ["addr", "old_len", "new_len", "flags", "new_addr"];
    Brk "brk" exit stack ["brk"];
    Mprotect "mprotect" entry stack ["start", "len", "prot"];
    Madvise "madvise" entry stack ["start", "len_in", "behavior"];
    SetVmaName "prctl" entry stack ["option", "arg2", "arg3", "arg4", "arg5"];
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
pub const RAW_TRACEPOINTS: [RawTracepoint; 3] =
    [SCHED_PROCESS_EXEC, SCHED_PROCESS_EXIT, SCHED_PROCESS_FORK];

/// x86_64 `struct pt_regs` offsets the programs read for the call site
/// (checked against BTF).
pub mod pt_regs {
    /// A `pt_regs` member: name and byte offset.
    pub type Member = (&'static str, usize);
    /// User instruction pointer.
    pub const IP: Member = ("ip", 128);
    /// User stack pointer.
    pub const SP: Member = ("sp", 152);
    /// User frame pointer.
    pub const BP: Member = ("bp", 32);
    /// The syscall's arguments, in order (the x86_64 syscall ABI): the
    /// kernel leaves them in place, so the exit reads them here.
    pub const ARGS: [Member; super::SYSCALL_MAX_ARGS] = [
        ("di", 112),
        ("si", 104),
        ("dx", 96),
        ("r10", 56),
        ("r8", 72),
        ("r9", 64),
    ];
    /// Every member read, for the BTF check.
    pub const ALL: [Member; 9] = [
        IP, SP, BP, ARGS[0], ARGS[1], ARGS[2], ARGS[3], ARGS[4], ARGS[5],
    ];
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
/// `struct task_struct` → `struct task_struct *group_leader`: the task
/// itself for a new process, its process's first thread for a thread.
pub const TASK_GROUP_LEADER: KernelMember = KernelMember {
    ty: "task_struct",
    member: "group_leader",
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
    /// [`TASK_GROUP_LEADER`].
    pub task_group_leader: u32,
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

/// One field the eBPF programs read, with where it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TracepointField {
    pub category: &'static str,
    pub tracepoint: &'static str,
    pub field: Field,
}

/// Every syscall record field memtrace's eBPF programs read (the result;
/// the arguments come from registers): the part of the contract to check
/// against a kernel's tracefs.
pub fn fields() -> impl Iterator<Item = TracepointField> {
    SYSCALLS.iter().map(|sc| TracepointField {
        category: SYSCALLS_CATEGORY,
        tracepoint: sc.exit,
        field: SYSCALL_RET,
    })
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
    fn tracepoint_names_follow_the_syscall_name() {
        for sc in SYSCALLS {
            if let Some(enter) = sc.enter {
                assert_eq!(enter.strip_prefix("sys_enter_"), Some(sc.name));
            }
            assert_eq!(sc.exit.strip_prefix("sys_exit_"), Some(sc.name));
            assert!(!sc.args.is_empty() && sc.args.len() <= SYSCALL_MAX_ARGS);
        }
    }

    #[test]
    fn calls_that_create_ranges_have_no_entry_program() {
        let at_entry = |kind| syscall(kind).map(|sc| sc.enter.is_some());
        for kind in [EventKind::Mmap, EventKind::Brk, EventKind::Mremap] {
            assert_eq!(at_entry(kind), Some(false), "{kind:?}");
        }
        for kind in [
            EventKind::Munmap,
            EventKind::Mprotect,
            EventKind::Madvise,
            EventKind::SetVmaName,
        ] {
            assert_eq!(at_entry(kind), Some(true), "{kind:?}");
        }
        assert!(
            SYSCALLS
                .iter()
                .all(|sc| sc.args.len() <= pt_regs::ARGS.len())
        );
    }

    #[test]
    fn argument_positions() {
        assert_eq!(SCHED_PROCESS_FORK.arg("child"), 1);
        assert_eq!(SCHED_PROCESS_EXEC.arg("bprm"), 2);
        assert_eq!(SCHED_PROCESS_EXIT.arg("group_dead"), 1);
    }

    #[test]
    fn pt_regs_members_are_distinct_words() {
        for (i, a) in pt_regs::ALL.iter().enumerate() {
            assert_eq!(a.1 % 8, 0, "{a:?}");
            for b in &pt_regs::ALL[i + 1..] {
                assert!(a.0 != b.0 && a.1 != b.1, "{a:?} {b:?}");
            }
        }
    }

    #[test]
    fn contract_lists_each_field_once() {
        // 7 return values (the arguments are in registers).
        assert_eq!(fields().count(), 7);
        for (i, a) in fields().enumerate() {
            for b in fields().skip(i + 1) {
                assert!(
                    (a.tracepoint, a.field.name) != (b.tracepoint, b.field.name),
                    "{a:?} twice"
                );
            }
        }
    }
}
