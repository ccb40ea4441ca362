//! Types shared by memtrace's eBPF programs and its userspace: the one
//! contract between the two sides.
//!
//! - [`tracepoints`]: the raw tracepoints attached, the traced syscalls
//!   with their numbers, and every kernel layout fact the programs rely on.
//! - The ring-buffer records: an [`EventHeader`] and a payload chosen by
//!   [`EventKind`] ([`SyscallEvent`], [`WindowedSyscallEvent`],
//!   [`SetVmaNameEvent`], [`ForkEvent`], [`ExecEvent`], [`ExitEvent`]).
//! - Map values, keys and sizes ([`PendingCall`], the stack cache's
//!   [`StackKey`] and [`CachedStack`], [`traced`], [`counter`], `MAX_*`).
//!
//! Every record type here is `#[repr(C)]` with explicit padding fields, so both
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
    /// A traced process forked (or made a thread): a [`ForkEvent`].
    Fork = 8,
    /// A traced process called exec successfully: an [`ExecEvent`].
    Exec = 9,
    /// A traced process exited (its last thread left): an [`ExitEvent`].
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
/// distro binaries have no frame pointers). 8 KiB: jemalloc's allocation
/// paths keep redis's `zmalloc*` 1.3 KiB above the syscall, and redis's
/// `debugCommand` alone has a 5 KiB frame. Only calls whose stack the
/// kernel side has not seen carry it (see [`CachedStack`]); the others
/// read just the words their check needs.
pub const STACK_WINDOW: usize = 8192;
/// Smaller windows tried in turn when the full one crosses the end of the
/// stack mapping (a shallow stack near its top).
pub const STACK_WINDOW_SMALLER: [usize; 4] = [4096, 2048, 1024, 256];

/// Flag bits of [`EventHeader::flags`]: which optional parts of a record
/// hold data.
pub mod event_flags {
    /// The record's name (`SetVmaNameEvent::name`, `ExecEvent::filename`)
    /// holds a NUL-terminated string.
    pub const HAS_NAME: u32 = 1 << 0;
    /// `regs.ret_addr` was read from the user stack pointer at syscall
    /// entry.
    pub const HAS_RET_ADDR: u32 = 1 << 1;
    /// `regs.sp`, `regs.bp` and `stack_len` bytes of `stack` hold the user
    /// registers and the top of the user stack.
    pub const HAS_STACK: u32 = 1 << 2;
    /// A `prctl` name pointer was not null but the kernel side could not
    /// read it (its page was not resident: reads in eBPF cannot fault pages
    /// in). Userspace reads it from the process instead.
    pub const NAME_UNREAD: u32 = 1 << 3;
    /// The stack is one userspace unwound before (`cached_stack`); the
    /// record carries no window.
    pub const STACK_CACHED: u32 = 1 << 4;
    /// A fork record's child is a new process (it leads its own thread
    /// group), as the kernel side saw it. Thread creation sends no record;
    /// without this flag the kernel side could not tell, and userspace
    /// asks `/proc`.
    pub const NEW_PROCESS: u32 = 1 << 5;
}

/// The start of every ring-buffer record; `kind` says which record it
/// starts, and so how long the record is:
///
/// | `kind` | record |
/// | --- | --- |
/// | mmap, munmap, mremap, brk, mprotect, madvise | [`WindowedSyscallEvent`] with `HAS_STACK`, else [`SyscallEvent`] |
/// | set_vma_name | [`SetVmaNameEvent`] |
/// | fork | [`ForkEvent`] |
/// | exec | [`ExecEvent`] |
/// | exit | [`ExitEvent`] |
///
/// Only syscall records carry the user stack window; lifecycle records are
/// a few dozen bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the event took effect,
    /// which orders events: a syscall's entry for calls ordered by their
    /// entry (`tracepoints::Syscall::enter`), its exit for the others, the
    /// moment itself for lifecycle events. One clock read per event: each
    /// costs the traced thread ~50 ns here.
    pub ktime_ns: u64,
    /// [`EventKind`] as u32.
    pub kind: u32,
    pub tgid: u32,
    pub tid: u32,
    /// Bits from [`event_flags`].
    pub flags: u32,
}

/// User registers at syscall entry, for finding the call site.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UserRegs {
    /// User instruction pointer (inside the libc wrapper).
    pub ip: u64,
    /// The word at the user stack pointer: the return address into the
    /// wrapper's caller when the wrapper made no frame.
    pub ret_addr: u64,
    /// User stack and frame pointers.
    pub sp: u64,
    pub bp: u64,
}

/// A completed syscall: `args` as the kernel received them, `ret` its
/// return value (negative errno on failure), and the user call site.
///
/// Alone it is the record of a call whose stack the kernel side found in
/// its stack cache (`STACK_CACHED`: `cached_stack` names it); a call with a
/// stack window is a [`WindowedSyscallEvent`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SyscallEvent {
    pub header: EventHeader,
    pub args: [u64; tracepoints::SYSCALL_MAX_ARGS],
    pub ret: i64,
    pub regs: UserRegs,
    /// User stack id in the `STACKS` map, or negative when none was taken.
    pub stack_id: i32,
    /// Valid bytes of the stack window that follows (in the record types
    /// that carry one).
    pub stack_len: u32,
    /// With `STACK_CACHED`: the id userspace gave this stack
    /// ([`CachedStack::id`]).
    pub cached_stack: u32,
    pub _pad: u32,
}

/// A completed syscall with the top of its user stack.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct WindowedSyscallEvent {
    pub syscall: SyscallEvent,
    /// The user stack from `regs.sp` upwards.
    pub stack: [u8; STACK_WINDOW],
}

/// `prctl(PR_SET_VMA, PR_SET_VMA_ANON_NAME, addr, len, name)`: the syscall
/// and the name it set.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SetVmaNameEvent {
    pub syscall: SyscallEvent,
    /// NUL-terminated when `HAS_NAME` is set; without it, a null pointer
    /// clears the name, and `NAME_UNREAD` says the pointer (`args[4]`) was
    /// not null but unreadable here.
    pub name: [u8; NAME_LEN],
    /// The user stack from `regs.sp` upwards, with `HAS_STACK`.
    pub stack: [u8; STACK_WINDOW],
}

/// Most stack words a [`CachedStack`] checks.
pub const STACK_CHECK_WORDS: usize = 128;
/// Stacks the kernel side's stack cache holds (an LRU map).
pub const STACK_CACHE_ENTRIES: u32 = 8192;

/// Key of the kernel side's stack cache: where a syscall was made from.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct StackKey {
    pub tgid: u32,
    pub _pad: u32,
    /// User instruction pointer and stack pointer at the syscall.
    pub ip: u64,
    pub sp: u64,
}

/// A stack userspace unwound from a full window, and every input that
/// unwinding read: the user stack words at `offsets` from the stack
/// pointer had `values` (and the frame pointer was `bp`, when the unwinding
/// used it). A later call at the same [`StackKey`] whose words (and frame
/// pointer) are the same unwinds to the same stack, so the kernel side
/// checks them and sends `id` instead of a window.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CachedStack {
    /// The session's id of the unwound stack.
    pub id: u32,
    /// Words to check (at most [`STACK_CHECK_WORDS`]).
    pub count: u32,
    /// Bytes from the stack pointer that hold every word checked.
    pub extent: u32,
    /// Non-zero when the unwinding read the frame pointer.
    pub bp_used: u32,
    pub bp: u64,
    /// Byte offsets from the stack pointer, multiples of 8 below
    /// `STACK_WINDOW`.
    pub offsets: [u16; STACK_CHECK_WORDS],
    pub values: [u64; STACK_CHECK_WORDS],
}

/// A traced process forked (see [`event_flags::NEW_PROCESS`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForkEvent {
    pub header: EventHeader,
    pub child_pid: u32,
    pub _pad: u32,
}

/// A traced process called exec successfully.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecEvent {
    pub header: EventHeader,
    /// NUL-terminated when `HAS_NAME` is set.
    pub filename: [u8; NAME_LEN],
}

/// A traced process exited; `header.tid` is the thread that left last.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitEvent {
    pub header: EventHeader,
}

/// When a call ordered by its entry began, kept until its exit in the
/// thread's slot of the pending-call array (see [`pending_slot`]); the
/// exit reads the arguments from the registers.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PendingCall {
    pub start_ns: u64,
    pub kind: u32,
    /// The thread the slot holds a call of; 0 when free.
    pub tid: u32,
}

/// The pending-call slot of thread `tid`. An array indexed by thread id
/// costs the programs a bounds check where a hash map costs a locked
/// update, a lookup and a delete (about 0.5 µs per call here). Two threads
/// whose ids share a slot and are inside traced calls at once collide: the
/// second one's call is refused and counted (`counter::LOST_PENDING`).
#[inline(always)]
pub const fn pending_slot(tid: u32) -> u32 {
    tid & (PENDING_SLOTS - 1)
}

/// Index into the per-CPU `COUNTERS` array.
pub mod counter {
    /// Events dropped because the ring buffer was full.
    pub const LOST_RINGBUF: u32 = 0;
    /// Syscalls dropped before their record: their thread's pending-call
    /// slot held another thread's call in flight at entry (see
    /// `pending_slot`), or their registers were unreadable at exit.
    pub const LOST_PENDING: u32 = 1;
    /// Forked children that could not join the traced set (their id
    /// unreadable, or above the `pid_max` memtrace sized the set for).
    pub const LOST_CHILDREN: u32 = 2;
    /// Bytes of records written on this CPU since the reader was last
    /// woken (see `WAKEUP_RING_FRACTION`).
    pub const UNWOKEN: u32 = 3;
    pub const COUNT: u32 = 4;
}

/// Slots of the pending-call array, a power of two (thread ids are spread
/// over them by their low bits).
pub const PENDING_SLOTS: u32 = 1 << 16;
/// The eBPF side wakes the ring buffer's reader once this fraction of the
/// ring has been written on one CPU since the last wakeup; the reader also
/// polls on a short timer. Asking the ring how full it is instead reads the
/// reader's position, a cache line the other CPU writes: that cost about
/// 0.2 µs per event here.
pub const WAKEUP_RING_FRACTION: u32 = 16;
/// The traced-process map is an array of bytes indexed by process id, one
/// [`traced`] byte per pid, stored as elements of this many bytes (array
/// map elements are 8-byte aligned): a lookup is an inlined load, where a
/// hash lookup cost every program run of every process ~40 ns.
pub const TRACED_PER_ELEMENT: u32 = 8;

/// Frames of the kernel's frame-pointer walk kept per stack: deep enough
/// for a Go stack from the syscall on the g0 stack through
/// `runtime.systemstack` to the goroutine's `main.*` frames and beyond.
pub const KERNEL_STACK_DEPTH: u32 = 48;

/// Bytes of the traced-process map (see [`TRACED_PER_ELEMENT`]): bits
/// saying how to trace a process, 0 when it is not traced.
pub mod traced {
    /// The process is traced.
    pub const TRACED: u8 = 1 << 0;
    /// Its code keeps frame pointers (Go): take the kernel's frame-pointer
    /// stack with every call too, which crosses stack switches the window
    /// cannot (Go's `runtime.systemstack`), and skip the stack cache (the
    /// frames past the window are not checked by it).
    pub const FRAME_POINTERS: u8 = 1 << 1;
}

/// Distinct user stacks kept in the stack map.
pub const MAX_STACKS: u32 = 16384;
/// Default ring buffer size in bytes (a power of two multiple of the page
/// size): room for about 2,000 records carrying a full stack window (a
/// burst of stacks not seen before, as at a program's start) while the
/// reader thread waits for a CPU.
pub const DEFAULT_RING_BYTES: u32 = 16 << 20;
/// Smallest ring buffer: room for a few records with a stack window (a
/// record larger than the ring could never be delivered).
pub const MIN_RING_BYTES: u32 = 64 << 10;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each is `repr(C)` of integers, arrays of integers and other
    // such structs, with padding made explicit (see the layout tests), so
    // every bit pattern is a valid value.
    unsafe impl aya::Pod for super::EventHeader {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::UserRegs {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SyscallEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::WindowedSyscallEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::StackKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::CachedStack {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SetVmaNameEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ForkEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ExecEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ExitEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PendingCall {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::tracepoints::KernelLayout {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::tracepoints::PidNamespace {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<EventHeader>(), 8 + 4 * 4);
        assert_eq!(size_of::<UserRegs>(), 8 * 4);
        assert_eq!(
            size_of::<SyscallEvent>(),
            size_of::<EventHeader>() + 8 * 6 + 8 + size_of::<UserRegs>() + 4 * 4
        );
        assert_eq!(
            size_of::<WindowedSyscallEvent>(),
            size_of::<SyscallEvent>() + STACK_WINDOW
        );
        assert_eq!(
            size_of::<SetVmaNameEvent>(),
            size_of::<SyscallEvent>() + NAME_LEN + STACK_WINDOW
        );
        assert_eq!(size_of::<StackKey>(), 4 * 2 + 8 * 2);
        assert_eq!(
            size_of::<CachedStack>(),
            4 * 4 + 8 + 2 * STACK_CHECK_WORDS + 8 * STACK_CHECK_WORDS
        );
        assert_eq!(size_of::<ForkEvent>(), size_of::<EventHeader>() + 4 * 2);
        assert_eq!(size_of::<ExecEvent>(), size_of::<EventHeader>() + NAME_LEN);
        assert_eq!(size_of::<ExitEvent>(), size_of::<EventHeader>());
        assert_eq!(size_of::<PendingCall>(), 8 + 4 * 2);
        assert!(PENDING_SLOTS.is_power_of_two());
        assert_eq!(pending_slot(PENDING_SLOTS + 5), 5);
        assert_eq!(size_of::<tracepoints::KernelLayout>(), 4 * 7);
        assert_eq!(size_of::<tracepoints::PidNamespace>(), 8 * 2);
    }

    /// Userspace reads the header of any record first, then the rest by
    /// kind; the ring buffer hands out 8-byte aligned slots.
    #[test]
    fn every_record_starts_with_its_header_and_fits_ring_slots() {
        use core::mem::{align_of, offset_of};
        assert_eq!(offset_of!(SyscallEvent, header), 0);
        assert_eq!(offset_of!(WindowedSyscallEvent, syscall), 0);
        assert_eq!(offset_of!(SetVmaNameEvent, syscall), 0);
        assert_eq!(offset_of!(ForkEvent, header), 0);
        assert_eq!(offset_of!(ExecEvent, header), 0);
        assert_eq!(offset_of!(ExitEvent, header), 0);
        for (size, align) in [
            (size_of::<SyscallEvent>(), align_of::<SyscallEvent>()),
            (
                size_of::<WindowedSyscallEvent>(),
                align_of::<WindowedSyscallEvent>(),
            ),
            (size_of::<SetVmaNameEvent>(), align_of::<SetVmaNameEvent>()),
            (size_of::<ForkEvent>(), align_of::<ForkEvent>()),
            (size_of::<ExecEvent>(), align_of::<ExecEvent>()),
            (size_of::<ExitEvent>(), align_of::<ExitEvent>()),
        ] {
            assert!(align <= 8 && size % 8 == 0, "size {size}, align {align}");
        }
    }

    #[test]
    fn the_smallest_ring_holds_a_few_windows() {
        assert!(MIN_RING_BYTES.is_power_of_two());
        assert!(MIN_RING_BYTES as usize >= 4 * (size_of::<SetVmaNameEvent>() + 8));
    }

    #[test]
    fn kinds_round_trip() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::from_u32(k as u32), Some(k));
        }
        assert_eq!(EventKind::from_u32(0), None);
    }
}
