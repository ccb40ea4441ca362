//! Types shared by memtrace's eBPF programs and its userspace.
//!
//! Every type here is `#[repr(C)]` with explicit padding fields, so both
//! sides agree on the layout byte for byte and the verifier never sees
//! uninitialised padding.
#![no_std]

pub mod tracepoints;

/// Which address-space change (or process lifecycle step) an event records.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    Mmap = 1,
    Munmap = 2,
    Mremap = 3,
    Brk = 4,
    Mprotect = 5,
    Madvise = 6,
    /// `prctl(PR_SET_VMA, PR_SET_VMA_ANON_NAME, addr, len, name)`.
    SetVmaName = 7,
    /// A traced process forked (`args[0]` = child pid).
    Fork = 8,
    /// A traced process called exec successfully.
    Exec = 9,
    /// A traced thread exited (`args[0]` = exit code; tid == tgid for the
    /// main thread).
    Exit = 10,
}

impl EventKind {
    pub const ALL: [EventKind; 10] = [
        EventKind::Mmap,
        EventKind::Munmap,
        EventKind::Mremap,
        EventKind::Brk,
        EventKind::Mprotect,
        EventKind::Madvise,
        EventKind::SetVmaName,
        EventKind::Fork,
        EventKind::Exec,
        EventKind::Exit,
    ];

    /// Whether the event is a traced syscall (not a lifecycle event).
    pub fn is_syscall(self) -> bool {
        !matches!(self, EventKind::Fork | EventKind::Exec | EventKind::Exit)
    }

    pub fn from_u32(v: u32) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| *k as u32 == v)
    }

    /// Lower-case name used in text and JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Mmap => "mmap",
            EventKind::Munmap => "munmap",
            EventKind::Mremap => "mremap",
            EventKind::Brk => "brk",
            EventKind::Mprotect => "mprotect",
            EventKind::Madvise => "madvise",
            EventKind::SetVmaName => "set_vma_name",
            EventKind::Fork => "fork",
            EventKind::Exec => "exec",
            EventKind::Exit => "exit",
        }
    }
}

/// Bytes of a region name (`prctl` anon name, exec file name) carried in an
/// event, including the terminating NUL. The kernel limits anon names to 80.
pub const NAME_LEN: usize = 80;

/// Bytes of user stack copied from the stack pointer at syscall entry, for
/// unwinding in userspace with the modules' `.eh_frame` (libc and most
/// distro binaries have no frame pointers).
pub const STACK_WINDOW: usize = 1024;
/// Fallback window when the full one crosses the end of the stack mapping.
pub const STACK_WINDOW_SMALL: usize = 256;

/// Flag bits of [`RawEvent::flags`].
pub mod event_flags {
    /// `name` holds a NUL-terminated string.
    pub const HAS_NAME: u32 = 1 << 0;
    /// `ret_addr` was read from the user stack pointer at syscall entry.
    pub const HAS_RET_ADDR: u32 = 1 << 1;
    /// `sp`, `bp` and `stack_len` bytes of `stack` hold the user registers
    /// and the top of the user stack.
    pub const HAS_STACK: u32 = 1 << 2;
}

/// One event as the eBPF side writes it into the ring buffer.
///
/// For syscalls, `args` are the syscall's arguments as the kernel received
/// them and `ret` is its return value (negative errno on failure), so each
/// event is a completed call.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RawEvent {
    /// `bpf_ktime_get_ns()` at syscall exit (CLOCK_MONOTONIC).
    pub ktime_ns: u64,
    /// Duration of the syscall, entry to exit.
    pub duration_ns: u64,
    /// [`EventKind`] as u32.
    pub kind: u32,
    pub tgid: u32,
    pub tid: u32,
    /// User stack id in the `STACKS` map, or negative when none was taken.
    pub stack_id: i32,
    pub args: [u64; 6],
    pub ret: i64,
    /// User instruction pointer at syscall entry (inside the libc wrapper).
    pub ip: u64,
    /// The word at the user stack pointer at syscall entry: the return
    /// address into the wrapper's caller when the wrapper made no frame.
    pub ret_addr: u64,
    /// User stack and frame pointers at syscall entry.
    pub sp: u64,
    pub bp: u64,
    /// Bits from [`event_flags`].
    pub flags: u32,
    /// Valid bytes in `stack`.
    pub stack_len: u32,
    pub name: [u8; NAME_LEN],
    /// The user stack from `sp` upwards.
    pub stack: [u8; STACK_WINDOW],
}

/// Syscall arguments saved at entry, keyed by thread id until the exit.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PendingCall {
    pub start_ns: u64,
    pub args: [u64; 6],
    pub kind: u32,
    pub _pad: u32,
}

/// Index into the per-CPU `COUNTERS` array.
pub mod counter {
    /// Events dropped because the ring buffer was full.
    pub const LOST_RINGBUF: u32 = 0;
    /// Syscall entries dropped because the pending-call map refused them.
    /// The map is an LRU map that makes room by evicting its least recently
    /// used entry, so this stays zero unless the kernel cannot allocate.
    pub const LOST_PENDING: u32 = 1;
    /// Forked children that could not join the traced set (map full).
    pub const LOST_CHILDREN: u32 = 2;
    pub const COUNT: u32 = 3;
}

/// Maximum number of threads with a syscall in flight at once; beyond
/// that the pending-call map evicts the least recently used entries.
pub const MAX_PENDING: u32 = 16384;
/// Maximum number of traced processes.
pub const MAX_TRACED: u32 = 4096;
/// Frames of the kernel's frame-pointer walk kept per stack.
pub const KERNEL_STACK_DEPTH: u32 = 8;
/// Distinct user stacks kept in the stack map.
pub const MAX_STACKS: u32 = 16384;
/// Default ring buffer size in bytes (a power of two multiple of the page size).
pub const DEFAULT_RING_BYTES: u32 = 4 << 20;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `repr(C)` integers and arrays, padding made explicit.
    unsafe impl aya::Pod for super::RawEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PendingCall {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(
            size_of::<RawEvent>(),
            8 * 2 + 4 * 4 + 8 * 6 + 8 * 5 + 4 * 2 + NAME_LEN + STACK_WINDOW
        );
        assert_eq!(size_of::<PendingCall>(), 8 + 8 * 6 + 4 * 2);
    }

    #[test]
    fn kinds_round_trip() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::from_u32(k as u32), Some(k));
        }
        assert_eq!(EventKind::from_u32(0), None);
    }
}
