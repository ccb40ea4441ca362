//! The tracepoints memtrace attaches to, and the layout of every record
//! field its eBPF programs read.
//!
//! This is the one place these facts live: the eBPF programs read the
//! offsets from here, userspace checks them against the running kernel's
//! tracefs `format` files before attaching (and a test checks them on the
//! test machine), and both sides take the list of traced syscalls, with
//! their tracefs argument names, from [`SYSCALLS`].
//!
//! Program names are tracepoint names: the eBPF program attached to
//! `syscalls:sys_enter_mmap` is called `sys_enter_mmap`.

use crate::EventKind;

/// Category of the syscall tracepoints.
pub const SYSCALLS_CATEGORY: &str = "syscalls";
/// Category of the process lifecycle tracepoints.
pub const SCHED_CATEGORY: &str = "sched";

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

/// Number of argument slots of a `sys_enter_*` record that the eBPF side
/// reads (as one [`SyscallEnterArgs`]); syscalls with fewer arguments leave
/// the rest of the block to whatever follows the record, which userspace
/// ignores.
pub const SYSCALL_MAX_ARGS: usize = 6;
/// Offset of the first argument in a `sys_enter_*` record (after the common
/// header and `int __syscall_nr`, padded to 8).
pub const SYSCALL_ARGS_OFFSET: usize = 16;
/// Size of each `sys_enter_*` argument (`unsigned long`).
pub const SYSCALL_ARG_SIZE: usize = 8;
/// `long ret` of every `sys_exit_*` record.
pub const SYSCALL_RET: Field = Field {
    name: "ret",
    offset: 16,
    size: 8,
};

/// The argument block of a `sys_enter_*` record, read in one piece from
/// [`SYSCALL_ARGS_OFFSET`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyscallEnterArgs {
    pub args: [u64; SYSCALL_MAX_ARGS],
}

/// A traced syscall: the event kind it produces and its two tracepoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Syscall {
    pub kind: EventKind,
    /// The syscall's name (`mmap`).
    pub name: &'static str,
    /// Its entry tracepoint and program (`sys_enter_mmap`).
    pub enter: &'static str,
    /// Its exit tracepoint and program (`sys_exit_mmap`).
    pub exit: &'static str,
    /// Its arguments as tracefs names them, in record order.
    pub args: &'static [&'static str],
}

impl Syscall {
    /// The argument fields of the `sys_enter_*` record.
    pub fn arg_fields(&self) -> impl Iterator<Item = Field> + use<> {
        let args: &'static [&'static str] = self.args;
        args.iter().enumerate().map(|(i, name)| Field {
            name,
            offset: SYSCALL_ARGS_OFFSET + i * SYSCALL_ARG_SIZE,
            size: SYSCALL_ARG_SIZE,
        })
    }
}

macro_rules! syscalls {
    ($($kind:ident $name:literal [$($arg:literal),*];)*) => {
        /// Every traced syscall, in attach order.
        pub const SYSCALLS: [Syscall; [$($name),*].len()] = [$(Syscall {
            kind: EventKind::$kind,
            name: $name,
            enter: concat!("sys_enter_", $name),
            exit: concat!("sys_exit_", $name),
            args: &[$($arg),*],
        }),*];
    };
}

syscalls! {
    Mmap "mmap" ["addr", "len", "prot", "flags", "fd", "off"];
    Munmap "munmap" ["addr", "len"];
    Mremap "mremap" ["addr", "old_len", "new_len", "flags", "new_addr"];
    Brk "brk" ["brk"];
    Mprotect "mprotect" ["start", "len", "prot"];
    Madvise "madvise" ["start", "len_in", "behavior"];
    SetVmaName "prctl" ["option", "arg2", "arg3", "arg4", "arg5"];
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

/// A `sched` tracepoint and the fields its program reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchedTracepoint {
    /// Tracepoint and program name.
    pub name: &'static str,
    pub fields: &'static [Field],
}

/// `pid_t child_pid` of `sched_process_fork`.
pub const FORK_CHILD_PID: Field = Field {
    name: "child_pid",
    offset: 20,
    size: 4,
};
/// `__data_loc char[] filename` of `sched_process_exec`: a u32 whose low 16
/// bits are the string's offset in the record.
pub const EXEC_FILENAME: Field = Field {
    name: "filename",
    offset: 8,
    size: 4,
};
/// `bool group_dead` of `sched_process_exit`: the whole process is exiting.
pub const EXIT_GROUP_DEAD: Field = Field {
    name: "group_dead",
    offset: 32,
    size: 1,
};

/// A traced process forked (or made a thread); attached with
/// `--follow-forks` only.
pub const SCHED_PROCESS_FORK: SchedTracepoint = SchedTracepoint {
    name: "sched_process_fork",
    fields: &[FORK_CHILD_PID],
};
pub const SCHED_PROCESS_EXEC: SchedTracepoint = SchedTracepoint {
    name: "sched_process_exec",
    fields: &[EXEC_FILENAME],
};
pub const SCHED_PROCESS_EXIT: SchedTracepoint = SchedTracepoint {
    name: "sched_process_exit",
    fields: &[EXIT_GROUP_DEAD],
};
/// Every `sched` tracepoint memtrace has a program for.
pub const SCHED: [SchedTracepoint; 3] =
    [SCHED_PROCESS_EXEC, SCHED_PROCESS_EXIT, SCHED_PROCESS_FORK];

/// One field the eBPF programs read, with where it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TracepointField {
    pub category: &'static str,
    pub tracepoint: &'static str,
    pub field: Field,
}

/// Every record field memtrace's eBPF programs read: the whole contract to
/// check against a kernel's tracefs.
pub fn fields() -> impl Iterator<Item = TracepointField> {
    let syscalls = SYSCALLS.iter().flat_map(|sc| {
        let enter = sc.arg_fields().map(|field| TracepointField {
            category: SYSCALLS_CATEGORY,
            tracepoint: sc.enter,
            field,
        });
        let exit = TracepointField {
            category: SYSCALLS_CATEGORY,
            tracepoint: sc.exit,
            field: SYSCALL_RET,
        };
        enter.chain(core::iter::once(exit))
    });
    let sched = SCHED.iter().flat_map(|tp| {
        tp.fields.iter().map(|field| TracepointField {
            category: SCHED_CATEGORY,
            tracepoint: tp.name,
            field: *field,
        })
    });
    syscalls.chain(sched)
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

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
            assert_eq!(sc.enter.strip_prefix("sys_enter_"), Some(sc.name));
            assert_eq!(sc.exit.strip_prefix("sys_exit_"), Some(sc.name));
            assert!(!sc.args.is_empty() && sc.args.len() <= SYSCALL_MAX_ARGS);
        }
    }

    #[test]
    fn argument_block_covers_every_argument() {
        assert_eq!(
            size_of::<SyscallEnterArgs>(),
            SYSCALL_MAX_ARGS * SYSCALL_ARG_SIZE
        );
        let last = SYSCALLS[0].arg_fields().last().expect("mmap has arguments");
        assert_eq!(last.name, "off");
        assert_eq!(
            last.offset + last.size,
            SYSCALL_ARGS_OFFSET + size_of::<SyscallEnterArgs>()
        );
    }

    #[test]
    fn contract_lists_each_field_once() {
        // 25 syscall arguments, 7 return values, 3 sched fields.
        assert_eq!(fields().count(), 35);
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
