//! memtrace's eBPF programs.
//!
//! Syscall tracepoints on the calls that change an address space. The exit
//! program reads the arguments from the user registers, pairs them with the
//! kernel's result, captures the user call site (not for munmap unless
//! asked: `Syscall::stack`) and writes one [`SyscallEvent`] (or
//! [`SetVmaNameEvent`]) to the ring buffer. Calls ordered by their entry
//! (munmap, mprotect, madvise, prctl) also have an entry program, which
//! notes the time per thread; mmap, brk and mremap, ordered by their exit,
//! pay for no entry program (see
//! `memtrace_common::tracepoints::Syscall::enter`). The sched raw
//! tracepoints write the small lifecycle records. Every program first
//! checks the caller's process against `TRACED`, so untraced processes pay
//! one array load.
//!
//! Per-event cost is what the traced process pays. Here (a VM whose kernel
//! routes every return through a mitigation thunk) each helper call is
//! dear: a user read ~150 ns whatever its size, a clock read ~50 ns, a hash
//! lookup ~40 ns. So the hot path makes at most one user read and one clock
//! read per event, looks processes up in an array, pairs entry and exit in
//! a per-thread array slot, and keeps off cache lines shared with the
//! reader (wakeups are counted per CPU).
//!
//! Process ids are the ones memtrace sees: in a PID namespace, the
//! namespace's (`PIDNS`), else the kernel's.
//!
//! Record offsets, register offsets and tracepoint arguments come from
//! `memtrace_common::tracepoints`, the contract with userspace; kernel
//! struct offsets from userspace, which reads them from BTF (`LAYOUT`).
#![no_std]
#![no_main]
#![warn(clippy::undocumented_unsafe_blocks)]

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_F_MMAPABLE, BPF_F_USER_STACK, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, bpf_pidns_info,
    },
    btf_maps::StackTrace,
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
        bpf_probe_read_kernel_str_bytes, bpf_probe_read_user, bpf_probe_read_user_buf,
        bpf_probe_read_user_str_bytes,
        generated::{bpf_get_current_task_btf, bpf_get_ns_current_pid_tgid, bpf_task_pt_regs},
    },
    macros::{btf_map, map, raw_tracepoint, tracepoint},
    maps::{Array, LruHashMap, PerCpuArray, RingBuf, ring_buf::RingBufEntry},
    programs::{RawTracePointContext, TracePointContext, tracing::StackIdContext as _},
};
use memtrace_common::{
    CachedStack, DEFAULT_RING_BYTES, EventHeader, EventKind, ExecEvent, ExitEvent, ForkEvent,
    KERNEL_STACK_DEPTH, MAX_STACKS, NAME_LEN, PENDING_SLOTS, PendingCall, STACK_CACHE_ENTRIES,
    STACK_CHECK_WORDS, STACK_WINDOW, STACK_WINDOW_SMALLER, SetVmaNameEvent, StackKey, SyscallEvent,
    TRACED_PER_ELEMENT, UserRegs, WindowedSyscallEvent, counter, event_flags, pending_slot, traced,
    tracepoints::{
        self, KernelLayout, PidNamespace, SCHED_PROCESS_EXEC, SCHED_PROCESS_EXIT,
        SCHED_PROCESS_FORK, SYSCALL_MAX_ARGS, SYSCALL_RET, pt_regs, same_name,
    },
};

/// Processes (tgids, as memtrace sees them) being traced: a
/// `memtrace_common::traced` byte per pid, non-zero when traced. Userspace
/// sizes it for `pid_max`, adds the target through its memory mapping;
/// with `FOLLOW_FORKS` the fork program adds children. Single-byte stores
/// on both sides: neither rewrites another pid's byte.
#[map]
static TRACED: Array<[u8; TRACED_PER_ELEMENT as usize]> =
    Array::with_max_entries(1, BPF_F_MMAPABLE);

/// The `memtrace_common::traced` byte of process `tgid`; 0 when untraced
/// (or beyond the map).
#[inline(always)]
fn traced_flags(tgid: u32) -> u8 {
    match TRACED.get(tgid / TRACED_PER_ELEMENT) {
        Some(bytes) => bytes[(tgid % TRACED_PER_ELEMENT) as usize],
        None => 0,
    }
}

/// Set the `memtrace_common::traced` byte of process `tgid`; `false` when
/// it is beyond the map.
#[inline(always)]
fn set_traced_flags(tgid: u32, flags: u8) -> bool {
    let Some(bytes) = TRACED.get_ptr_mut(tgid / TRACED_PER_ELEMENT) else {
        return false;
    };
    // SAFETY: a byte inside the map's element; a single-byte store, as
    // userspace's.
    unsafe {
        core::ptr::write_volatile(
            bytes.cast::<u8>().add((tgid % TRACED_PER_ELEMENT) as usize),
            flags,
        )
    };
    true
}

/// Entry times of the calls ordered by entry, in the thread's slot
/// (`memtrace_common::pending_slot`). A slot whose exit never comes is
/// freed when its thread exits (`sched_process_exit`).
#[map]
static PENDING: Array<PendingCall> = Array::with_max_entries(PENDING_SLOTS, 0);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

/// Frame-pointer stacks, kept shallow: without frame pointers (Debian's
/// libc) the kernel's walk follows whatever `rbp` holds, and each step costs
/// a user-memory read; the full stack comes from the stack window instead.
#[btf_map]
static STACKS: StackTrace<{ MAX_STACKS as usize }, 0, { KERNEL_STACK_DEPTH as usize }> =
    StackTrace::new();

/// Stacks userspace unwound, by where the call was made from: a call whose
/// stack words match an entry's sends its id instead of a window (see
/// `memtrace_common::CachedStack`). Userspace fills it.
#[map]
static STACK_CACHE: LruHashMap<StackKey, CachedStack> =
    LruHashMap::with_max_entries(STACK_CACHE_ENTRIES, 0);

/// Per-CPU room to check a cached stack's words.
#[map]
static SCRATCH: PerCpuArray<[u8; STACK_WINDOW]> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU counters, indexed by `memtrace_common::counter`.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Set by userspace before load: non-zero to trace children of traced
/// processes.
#[unsafe(no_mangle)]
static FOLLOW_FORKS: u8 = 0;

/// Set by userspace before load: non-zero to take the kernel's
/// frame-pointer stack for every event, not only when the stack window
/// could not be read (`--kernel-stacks`).
#[unsafe(no_mangle)]
static KERNEL_STACKS: u8 = 0;

/// Set by userspace before load: non-zero to capture the full stack of
/// calls that only release memory too (`Syscall::stack`).
#[unsafe(no_mangle)]
static UNMAP_STACKS: u8 = 0;

/// Set by userspace before load: non-zero to have the syscall programs
/// return right after the process filter, recording nothing: the floor of
/// what tracing costs, for the overhead benchmark (`--probes-only`).
#[unsafe(no_mangle)]
static PROBES_ONLY: u8 = 0;

/// Set by userspace before load: bytes of records written on one CPU
/// between wakeups of the reader (a fraction of the ring).
#[unsafe(no_mangle)]
static WAKEUP_BYTES: u64 = 256 << 10;

/// Set by userspace before load: memtrace's PID namespace, zero in the
/// initial one.
#[unsafe(no_mangle)]
static PIDNS: PidNamespace = PidNamespace { dev: 0, ino: 0 };

/// Set by userspace before load: kernel struct offsets from BTF.
#[unsafe(no_mangle)]
static LAYOUT: KernelLayout = KernelLayout {
    task_thread_pid: 0,
    pid_level: 0,
    pid_numbers: 0,
    upid_size: 0,
    upid_nr: 0,
    bprm_filename: 0,
    task_group_leader: 0,
};

#[inline(always)]
fn kernel_stacks_forced() -> bool {
    // SAFETY: a plain read of a global set before load.
    unsafe { core::ptr::read_volatile(&KERNEL_STACKS) != 0 }
}

#[inline(always)]
fn probes_only() -> bool {
    // SAFETY: a plain read of a global set before load.
    unsafe { core::ptr::read_volatile(&PROBES_ONLY) != 0 }
}

#[inline(always)]
fn unmap_stacks() -> bool {
    // SAFETY: a plain read of a global set before load.
    unsafe { core::ptr::read_volatile(&UNMAP_STACKS) != 0 }
}

#[inline(always)]
fn pidns() -> PidNamespace {
    // SAFETY: a plain read of a global set before load.
    unsafe { core::ptr::read_volatile(&PIDNS) }
}

#[inline(always)]
fn layout() -> KernelLayout {
    // SAFETY: a plain read of a global set before load.
    unsafe { core::ptr::read_volatile(&LAYOUT) }
}

/// `prctl` options that name an anonymous range.
const PR_SET_VMA: u64 = 0x53564d41;
const PR_SET_VMA_ANON_NAME: u64 = 0;

/// Whether `prctl`'s arguments name an anonymous range.
#[inline(always)]
fn names_a_range(args: &[u64; SYSCALL_MAX_ARGS]) -> bool {
    args[0] == PR_SET_VMA && args[1] == PR_SET_VMA_ANON_NAME
}

/// Argument `$name` of raw tracepoint `$tp`, its position found at build
/// time.
macro_rules! arg {
    ($ctx:expr, $tp:expr, $name:literal) => {
        $ctx.arg::<u64>(const { $tp.arg($name) })
    };
}

/// Read a field of the tracepoint record as a `$ty`; fails to build unless
/// `$ty` has the field's size. A plain load from the context, which the
/// verifier allows for tracepoint programs past the common header at
/// size-aligned offsets (a `bpf_probe_read_kernel` cost ~40 ns here).
macro_rules! read_field {
    ($ctx:expr, $field:expr, $ty:ty) => {{
        const {
            assert!(
                size_of::<$ty>() == $field.size,
                concat!(stringify!($field), " is not a ", stringify!($ty))
            );
            assert!(
                $field.offset >= 8 && $field.offset % $field.size == 0,
                concat!(
                    stringify!($field),
                    " is not a field the verifier lets a program load"
                )
            );
        };
        // SAFETY: `$field` is inside the record on kernels that userspace's
        // tracefs check accepts, and the verifier checks the access.
        unsafe { core::ptr::read_volatile(($ctx.as_ptr() as usize + $field.offset) as *const $ty) }
    }};
}

/// The current thread's saved user registers: the `struct pt_regs` that
/// `bpf_task_pt_regs` points to. The verifier types that pointer from the
/// kernel's BTF, so a register is a plain load it checks against the
/// struct (a `bpf_probe_read_kernel` cost ~100 ns a call here, a load a
/// few).
#[derive(Clone, Copy)]
struct Regs(u64);

impl Regs {
    /// The current thread's, `None` when the kernel has none.
    #[inline(always)]
    fn current() -> Option<Regs> {
        // SAFETY: helpers without pointer arguments.
        let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64;
        (regs != 0).then_some(Regs(regs))
    }

    /// The register `member` (offsets checked against BTF by userspace).
    #[inline(always)]
    fn get(self, member: pt_regs::Member) -> u64 {
        // SAFETY: inside `struct pt_regs` (userspace and the verifier
        // check the offset), which the task keeps while it runs this
        // program.
        unsafe { core::ptr::read_volatile((self.0 as usize + member.1) as *const u64) }
    }

    /// The syscall's arguments: the kernel leaves them in the registers.
    #[inline(always)]
    fn syscall_args(self) -> [u64; SYSCALL_MAX_ARGS] {
        let a = pt_regs::ARGS;
        [
            self.get(a[0]),
            self.get(a[1]),
            self.get(a[2]),
            self.get(a[3]),
            self.get(a[4]),
            self.get(a[5]),
        ]
    }
}

/// The current thread's (tgid, tid) as memtrace sees them: in its PID
/// namespace when it runs in one (`None` for threads outside it), else the
/// kernel's. The namespace branch reads a constant the verifier knows, so
/// the initial namespace pays nothing for it.
#[inline(always)]
fn current_ids() -> Option<(u32, u32)> {
    let ns = pidns();
    if ns.ino == 0 {
        let id = bpf_get_current_pid_tgid();
        return Some(((id >> 32) as u32, id as u32));
    }
    let mut info = bpf_pidns_info { pid: 0, tgid: 0 };
    // SAFETY: `info` is a valid out parameter of the size passed.
    let rc = unsafe {
        bpf_get_ns_current_pid_tgid(
            ns.dev,
            ns.ino,
            &mut info,
            size_of::<bpf_pidns_info>() as u32,
        )
    };
    (rc == 0 && info.tgid != 0).then_some((info.tgid, info.pid))
}

/// The current thread's ids when its process is traced.
#[inline(always)]
fn traced_ids() -> Option<(u32, u32)> {
    traced_ids_flags().map(|(tgid, tid, _)| (tgid, tid))
}

/// The current thread's ids and its process's `memtrace_common::traced`
/// bits, when its process is traced.
#[inline(always)]
fn traced_ids_flags() -> Option<(u32, u32, u8)> {
    let (tgid, tid) = current_ids()?;
    let flags = traced_flags(tgid);
    (flags != 0).then_some((tgid, tid, flags))
}

#[inline(always)]
fn count(index: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *c += 1 };
    }
}

/// Submit flags for a record of `bytes`: waking the reader on every event
/// costs the traced thread an interrupt per syscall, so wake it once
/// `WAKEUP_BYTES` of small records have been written on this CPU since the
/// last wakeup (a
/// per-CPU count: no cache line shared with the reader); the reader also
/// polls on a short timer.
#[inline(always)]
fn wakeup_flags(bytes: usize) -> u64 {
    let Some(n) = COUNTERS.get_ptr_mut(counter::UNWOKEN) else {
        return BPF_RB_FORCE_WAKEUP as u64;
    };
    // SAFETY: per-CPU slot, no concurrent writer on this CPU; the global is
    // set before load.
    unsafe {
        // A record with a stack window wakes the reader at once: such
        // records are few once the stack cache is filled, and the sooner
        // userspace unwinds them the sooner it fills (and the ring does
        // not fill with them meanwhile).
        if bytes >= STACK_WINDOW {
            *n = 0;
            return BPF_RB_FORCE_WAKEUP as u64;
        }
        *n += bytes as u64;
        if *n < core::ptr::read_volatile(&WAKEUP_BYTES) {
            return BPF_RB_NO_WAKEUP as u64;
        }
        *n = 0;
    }
    BPF_RB_FORCE_WAKEUP as u64
}

/// The pending-call slot of thread `tid`.
#[inline(always)]
fn pending(tid: u32) -> Option<*mut PendingCall> {
    PENDING.get_ptr_mut(pending_slot(tid))
}

/// Note when the thread's call began. The arguments are read at exit,
/// but a `prctl` that names no range is let go here: it would take a slot
/// (and could be counted lost) for no event.
#[inline(always)]
fn on_enter(kind: EventKind) -> u32 {
    let Some((_, tid)) = traced_ids() else {
        return 0;
    };
    if probes_only() {
        return 0;
    }
    if kind == EventKind::SetVmaName
        && !Regs::current().is_some_and(|regs| names_a_range(&regs.syscall_args()))
    {
        return 0;
    }
    let Some(slot) = pending(tid) else {
        return 0;
    };
    // SAFETY: `slot` points into the array map. The slot is this thread's
    // unless another thread whose id shares it is inside a traced call:
    // then the call is refused and counted, and that thread's call kept.
    unsafe {
        let holder = (*slot).tid;
        if holder != 0 && holder != tid {
            count(counter::LOST_PENDING);
            return 0;
        }
        *slot = PendingCall {
            start_ns: bpf_ktime_get_ns(),
            kind: kind as u32,
            tid,
        };
    }
    0
}

/// When the thread's call of `kind` began, taking it out of its slot;
/// `None` when it has none (the call began before tracing did, or was
/// refused and counted at entry).
#[inline(always)]
fn take_start(tid: u32, kind: EventKind) -> Option<u64> {
    let slot = pending(tid)?;
    // SAFETY: `slot` points into the array map; a slot holding this
    // thread's id is written by this thread only, and is copied out before
    // it is freed.
    let pending = unsafe {
        if (*slot).tid != tid {
            return None;
        }
        let pending = *slot;
        (*slot).tid = 0;
        pending
    };
    (pending.kind == kind as u32).then_some(pending.start_ns)
}

#[inline(always)]
fn on_exit(ctx: &TracePointContext, kind: EventKind, at_entry: bool, stack: bool) -> u32 {
    let Some((tgid, tid, flags)) = traced_ids_flags() else {
        return 0;
    };
    if probes_only() {
        return 0;
    }
    let frame_pointers = flags & traced::FRAME_POINTERS != 0;
    let start_ns = if at_entry {
        match take_start(tid, kind) {
            Some(start) => Some(start),
            None => return 0,
        }
    } else {
        None
    };
    let Some(regs) = Regs::current() else {
        count(counter::LOST_PENDING);
        return 0;
    };
    let args = regs.syscall_args();
    if kind == EventKind::SetVmaName && !names_a_range(&args) {
        return 0;
    }
    let ret = read_field!(ctx, SYSCALL_RET, i64);
    let call = Call {
        kind,
        tgid,
        tid,
        start_ns,
        args,
        ret,
        site: call_site(tgid, regs, frame_pointers, stack || unmap_stacks()),
    };
    if kind == EventKind::SetVmaName {
        let Some(mut entry) = reserve::<SetVmaNameEvent>() else {
            return 0;
        };
        let ev = entry.as_mut_ptr();
        // SAFETY: `ev` is the slot just reserved, ours alone until submit
        // and 8-byte aligned; the name and window are read through helpers
        // that fault safely.
        unsafe {
            write_syscall(ctx, &raw mut (*ev).syscall, &call);
            if call.site.window {
                read_window(&mut (*ev).syscall, &mut (*ev).stack);
            }
            let name = call.args[4];
            if name != 0 {
                // A name in a page not yet faulted in cannot be read here
                // (eBPF reads never fault); userspace reads it then.
                (*ev).syscall.header.flags |=
                    if bpf_probe_read_user_str_bytes(name as *const u8, &mut (*ev).name).is_ok() {
                        event_flags::HAS_NAME
                    } else {
                        event_flags::NAME_UNREAD
                    };
            }
            kernel_stack_if_needed(ctx, &mut (*ev).syscall, call.site.walk);
        }
        entry.submit(wakeup_flags(size_of::<SetVmaNameEvent>()));
    } else if !call.site.window {
        // A stack seen before, or no stack wanted: a small record.
        let Some(mut entry) = reserve::<SyscallEvent>() else {
            return 0;
        };
        // SAFETY: the slot just reserved, ours alone until submit and
        // 8-byte aligned.
        unsafe {
            write_syscall(ctx, entry.as_mut_ptr(), &call);
            kernel_stack_if_needed(ctx, &mut *entry.as_mut_ptr(), call.site.walk);
        }
        entry.submit(wakeup_flags(size_of::<SyscallEvent>()));
    } else {
        let Some(mut entry) = reserve::<WindowedSyscallEvent>() else {
            return 0;
        };
        let ev = entry.as_mut_ptr();
        // SAFETY: the slot just reserved, ours alone until submit and
        // 8-byte aligned; the window is read through a helper that faults
        // safely.
        unsafe {
            write_syscall(ctx, &raw mut (*ev).syscall, &call);
            read_window(&mut (*ev).syscall, &mut (*ev).stack);
            kernel_stack_if_needed(ctx, &mut (*ev).syscall, call.site.walk);
        }
        entry.submit(wakeup_flags(size_of::<WindowedSyscallEvent>()));
    }
    0
}

/// A slot for a `T` in the ring buffer; counts the event as lost when the
/// ring is full.
#[inline(always)]
fn reserve<T: 'static>() -> Option<RingBufEntry<T>> {
    let entry = EVENTS.reserve::<T>(0);
    if entry.is_none() {
        count(counter::LOST_RINGBUF);
    }
    entry
}

/// The header of every record: the current thread, and when the event took
/// effect: `started_ns` for a call ordered by its entry, else now.
#[inline(always)]
fn header(kind: EventKind, tgid: u32, tid: u32, started_ns: Option<u64>) -> EventHeader {
    EventHeader {
        // SAFETY: a helper without arguments.
        ktime_ns: started_ns.unwrap_or_else(|| unsafe { bpf_ktime_get_ns() }),
        kind: kind as u32,
        tgid,
        tid,
        flags: 0,
    }
}

/// When to take the kernel's frame-pointer stack.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Walk {
    /// The call asked for no stack.
    Never,
    /// When the record ends up with no stack (no window, no cached one).
    IfNoStack,
    /// Always (code with frame pointers).
    Always,
}

/// A completed call, ready to be written.
struct Call {
    kind: EventKind,
    tgid: u32,
    tid: u32,
    /// When the call began, for calls ordered by their entry.
    start_ns: Option<u64>,
    args: [u64; SYSCALL_MAX_ARGS],
    ret: i64,
    site: CallSite,
}

/// Where a call was made from: the user registers, the word at the stack
/// pointer, the cached stack they lead to, if any, and what else the
/// record needs.
struct CallSite {
    regs: UserRegs,
    flags: u32,
    cached: Option<u32>,
    /// The record carries the stack window.
    window: bool,
    walk: Walk,
}

/// Where the call was made from, when its `full` stack is wanted (else
/// nothing: a user read to learn even the caller costs ~150 ns here, more
/// than the rest of an munmap's record): the user registers, and the
/// stack from the cache when the same place with the same stack words was
/// unwound before (else the record carries the window).
#[inline(always)]
fn call_site(tgid: u32, regs: Regs, frame_pointers: bool, full: bool) -> CallSite {
    let mut site = CallSite {
        regs: UserRegs::default(),
        flags: 0,
        cached: None,
        window: false,
        walk: Walk::Never,
    };
    if !full {
        return site;
    }
    site.walk = Walk::IfNoStack;
    site.regs.ip = regs.get(pt_regs::IP);
    site.regs.sp = regs.get(pt_regs::SP);
    site.regs.bp = regs.get(pt_regs::BP);
    if site.regs.sp == 0 {
        return site;
    }
    // The word at the stack pointer (the return address when the syscall
    // was made from a leaf wrapper) comes with the read of the stack that
    // the cache check or the window makes anyway: each user read costs
    // ~150 ns here, whatever its size.
    if frame_pointers {
        site.window = true;
        site.walk = Walk::Always;
        return site;
    }
    site.cached = cached_stack(tgid, &mut site);
    if site.cached.is_some() {
        site.flags |= event_flags::STACK_CACHED;
    } else {
        site.window = true;
    }
    site
}

impl CallSite {
    #[inline(always)]
    fn set_ret_addr(&mut self, ret: u64) {
        self.regs.ret_addr = ret;
        self.flags |= event_flags::HAS_RET_ADDR;
    }
}

/// The id of the stack cached for this call site, when every stack word
/// (and the frame pointer) its unwinding read still holds what it held.
/// Notes the word at the stack pointer in `site` when it read it.
#[inline(always)]
fn cached_stack(tgid: u32, site: &mut CallSite) -> Option<u32> {
    let regs = &site.regs;
    let key = StackKey {
        tgid,
        _pad: 0,
        ip: regs.ip,
        sp: regs.sp,
    };
    // SAFETY: the entry is only read; userspace replaces entries whole
    // (a concurrent replacement can at worst fail the checks).
    let entry = unsafe { STACK_CACHE.get(&key) }?;
    if entry.bp_used != 0 && entry.bp != regs.bp {
        return None;
    }
    // At least the word at the stack pointer.
    let extent = (entry.extent as usize).max(8);
    if extent > STACK_WINDOW {
        return None;
    }
    let buf = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: `buf` is this CPU's scratch window; the user read goes
    // through a helper that faults safely.
    unsafe {
        let buf = &mut *buf;
        bpf_probe_read_user_buf(regs.sp as *const u8, &mut buf[..extent]).ok()?;
        site.set_ret_addr(core::ptr::read(buf.as_ptr().cast::<u64>()));
        let count = entry.count as usize;
        let mut i = 0;
        while i < STACK_CHECK_WORDS && i < count {
            // Indices and offsets masked so the verifier sees them in
            // bounds; offsets are 8-aligned and below the window
            // (userspace checks), so the masks change nothing.
            let j = i & (STACK_CHECK_WORDS - 1);
            let off = (*entry.offsets.get(j)? as usize) & (STACK_WINDOW - 8);
            // The scratch value is 8-aligned, and so is `off`.
            let word = core::ptr::read(buf.as_ptr().add(off).cast::<u64>());
            if word != *entry.values.get(j)? {
                return None;
            }
            i += 1;
        }
    }
    Some(entry.id)
}

/// Write the fixed part of a syscall record.
///
/// # Safety
///
/// `ev` must point to a ring buffer slot that nothing else writes until it
/// is submitted.
#[inline(always)]
unsafe fn write_syscall(_ctx: &TracePointContext, ev: *mut SyscallEvent, call: &Call) {
    // SAFETY: the caller hands over `ev` for writing.
    unsafe {
        (*ev).header = header(call.kind, call.tgid, call.tid, call.start_ns);
        (*ev).header.flags = call.site.flags;
        (*ev).args = call.args;
        (*ev).ret = call.ret;
        (*ev).regs = call.site.regs;
        (*ev).stack_id = -1;
        (*ev).stack_len = 0;
        (*ev).cached_stack = call.site.cached.unwrap_or(0);
        (*ev)._pad = 0;
    }
}

/// The frame-pointer walk is the fallback for when a full stack was wanted
/// and there is none: no window could be read nor a cached stack found
/// (without frame pointers it yields a frame or two and costs the traced
/// thread microseconds per call); or always with frame pointers, or with
/// `--kernel-stacks`.
///
/// # Safety
///
/// `ev` must be a ring buffer slot (its flags already written).
#[inline(always)]
unsafe fn kernel_stack_if_needed(ctx: &TracePointContext, ev: &mut SyscallEvent, walk: Walk) {
    let has_stack = ev.header.flags & (event_flags::HAS_STACK | event_flags::STACK_CACHED) != 0;
    let wanted = match walk {
        Walk::Never => false,
        Walk::IfNoStack => !has_stack,
        Walk::Always => true,
    };
    if wanted || kernel_stacks_forced() {
        ev.stack_id = match ctx.get_stackid(&STACKS, BPF_F_USER_STACK as u64) {
            Ok(id) => id as i32,
            Err(e) => e,
        };
    }
}

/// Copy the stack window from the user stack pointer: near the top of the
/// stack the full window can cross into unmapped memory, so retry smaller.
/// The word at the stack pointer comes from the window when the cache
/// check did not read it.
///
/// # Safety
///
/// `ev` and `stack` must be parts of a ring buffer slot.
#[inline(always)]
unsafe fn read_window(ev: &mut SyscallEvent, stack: &mut [u8; STACK_WINDOW]) {
    let sp = ev.regs.sp;
    if sp == 0 {
        return;
    }
    // SAFETY: user reads through helpers that fault safely; `stack` is
    // 8-aligned in the record and at least 8 bytes were read into it.
    unsafe {
        let mut len = 0;
        if bpf_probe_read_user_buf(sp as *const u8, stack).is_ok() {
            len = STACK_WINDOW;
        } else {
            for smaller in STACK_WINDOW_SMALLER {
                if bpf_probe_read_user_buf(sp as *const u8, &mut stack[..smaller]).is_ok() {
                    len = smaller;
                    break;
                }
            }
        }
        let ret = if len > 0 {
            ev.stack_len = len as u32;
            ev.header.flags |= event_flags::HAS_STACK;
            Some(core::ptr::read(stack.as_ptr().cast::<u64>()))
        } else {
            bpf_probe_read_user(sp as *const u64).ok()
        };
        if let Some(ret) = ret
            && ev.header.flags & event_flags::HAS_RET_ADDR == 0
        {
            ev.regs.ret_addr = ret;
            ev.header.flags |= event_flags::HAS_RET_ADDR;
        }
    }
}

/// `task->thread_pid`: the task's `struct pid`, 0 when unreadable.
#[inline(always)]
fn task_pid(task: u64) -> u64 {
    let at = task as usize + layout().task_thread_pid as usize;
    // SAFETY: a kernel read through a helper that faults safely, at an
    // offset from this kernel's BTF.
    unsafe { bpf_probe_read_kernel(at as *const u64) }.unwrap_or(0)
}

/// `pid->level`: the depth of the PID namespace the pid was made in.
#[inline(always)]
fn pid_level(pid: u64) -> u32 {
    let at = pid as usize + layout().pid_level as usize;
    // SAFETY: as in `task_pid`.
    unsafe { bpf_probe_read_kernel(at as *const u32) }.unwrap_or(0)
}

/// `pid->numbers[level].nr`: the id in the namespace at `level` (0 is the
/// kernel's own id); 0 when unreadable or the pid has no such level.
#[inline(always)]
fn pid_nr_at(pid: u64, level: u32) -> u32 {
    if pid == 0 || pid_level(pid) < level {
        return 0;
    }
    let l = layout();
    // Namespaces nest at most 32 deep; the mask tells the verifier so.
    let at = pid as usize
        + l.pid_numbers as usize
        + (level as usize & 0x3f) * l.upid_size as usize
        + l.upid_nr as usize;
    // SAFETY: as in `task_pid`.
    unsafe { bpf_probe_read_kernel(at as *const u32) }.unwrap_or(0)
}

/// `task->group_leader`: the task itself for a new process; 0 when
/// unreadable.
#[inline(always)]
fn task_group_leader(task: u64) -> u64 {
    let at = task as usize + layout().task_group_leader as usize;
    // SAFETY: as in `task_pid`.
    unsafe { bpf_probe_read_kernel(at as *const u64) }.unwrap_or(0)
}

/// Raw tracepoint `sched_process_fork`. The parent is the current task.
/// With `FOLLOW_FORKS` the child joins the traced set before it runs.
/// Thread creation fires this too: it is dropped here (a thread is traced
/// through its process's id), and the record says the child is a new
/// process. Only if the child's leader is unreadable does a record go out
/// without saying so: userspace asks `/proc` then, and the exit program
/// removes a thread id added as if it were a process.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn sched_process_fork(ctx: RawTracePointContext) -> i32 {
    let Some((tgid, tid)) = traced_ids() else {
        return 0;
    };
    let child_task = arg!(&ctx, SCHED_PROCESS_FORK, "child");
    let leader = task_group_leader(child_task);
    if leader != 0 && leader != child_task {
        return 0;
    }
    // The child's id in memtrace's namespace: the parent passed the
    // namespace check, so it lives at that namespace's level, and its child
    // there or below.
    let level = if pidns().ino == 0 {
        0
    } else {
        pid_level(task_pid(arg!(&ctx, SCHED_PROCESS_FORK, "parent")))
    };
    let child = pid_nr_at(task_pid(child_task), level);
    // SAFETY: a plain read of a global set before load.
    let follow = unsafe { core::ptr::read_volatile(&FOLLOW_FORKS) } != 0;
    if child == 0 {
        if follow {
            count(counter::LOST_CHILDREN);
        }
        return 0;
    }
    if follow && !set_traced_flags(child, traced::TRACED) {
        count(counter::LOST_CHILDREN);
    }
    if let Some(mut entry) = reserve::<ForkEvent>() {
        entry.write(ForkEvent {
            header: EventHeader {
                flags: if leader == child_task {
                    event_flags::NEW_PROCESS
                } else {
                    0
                },
                ..header(EventKind::Fork, tgid, tid, None)
            },
            child_pid: child,
            _pad: 0,
        });
        entry.submit(wakeup_flags(size_of::<ForkEvent>()));
    }
    0
}

/// Raw tracepoint `sched_process_exec`, in the task that called exec.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn sched_process_exec(ctx: RawTracePointContext) -> i32 {
    let Some((tgid, tid)) = traced_ids() else {
        return 0;
    };
    let bprm = arg!(&ctx, SCHED_PROCESS_EXEC, "bprm");
    let Some(mut entry) = reserve::<ExecEvent>() else {
        return 0;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` is the slot just reserved, ours alone until submit and
    // 8-byte aligned; the kernel reads go through helpers that fault
    // safely, at an offset from this kernel's BTF.
    unsafe {
        (*ev).header = header(EventKind::Exec, tgid, tid, None);
        let at = bprm as usize + layout().bprm_filename as usize;
        if let Ok(filename) = bpf_probe_read_kernel(at as *const u64)
            && bpf_probe_read_kernel_str_bytes(filename as *const u8, &mut (*ev).filename).is_ok()
        {
            (*ev).header.flags |= event_flags::HAS_NAME;
        }
    }
    entry.submit(wakeup_flags(size_of::<ExecEvent>()));
    0
}

/// Raw tracepoint `sched_process_exit`, in the exiting thread.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sched_process_exit(ctx: RawTracePointContext) -> i32 {
    let Some((tgid, tid)) = traced_ids() else {
        return 0;
    };
    if tid != tgid {
        // A thread id that the fork program may have added as if it were a
        // process.
        set_traced_flags(tid, 0);
    }
    // A call the thread never returned from; normally there is none.
    if let Some(slot) = pending(tid) {
        // SAFETY: `slot` points into the array map; only this thread
        // writes a slot holding its id.
        unsafe {
            if (*slot).tid == tid {
                (*slot).tid = 0;
            }
        }
    }
    // `bool`: only the low byte is the argument.
    let group_dead = arg!(&ctx, SCHED_PROCESS_EXIT, "group_dead") as u8;
    if group_dead != 0 {
        if let Some(mut entry) = reserve::<ExitEvent>() {
            entry.write(ExitEvent {
                header: header(EventKind::Exit, tgid, tid, None),
            });
            entry.submit(wakeup_flags(size_of::<ExitEvent>()));
        }
        // Forget it here, not only when userspace sees the exit (which may
        // be lost): a later process reusing the pid must not be traced.
        set_traced_flags(tgid, 0);
    }
    0
}

/// The programs of each traced syscall: an exit program each, and an entry
/// program for those ordered by their entry. Userspace attaches them by the
/// names in `memtrace_common::tracepoints::SYSCALLS`; the build fails
/// unless each is named after its kind's tracepoint there and every
/// syscall listed there has its programs.
macro_rules! syscall_probes {
    ($($kind:ident: $(enter $enter:ident,)? exit $exit:ident;)*) => {
        $(
            $(
                #[tracepoint]
                pub fn $enter(_ctx: TracePointContext) -> u32 {
                    on_enter(EventKind::$kind)
                }
            )?

            #[tracepoint]
            pub fn $exit(ctx: TracePointContext) -> u32 {
                let syscall = const { syscall_of(EventKind::$kind) };
                on_exit(&ctx, EventKind::$kind, syscall.enter.is_some(), syscall.stack)
            }

            const _: () = {
                let syscall = syscall_of(EventKind::$kind);
                let enter: Option<&str> = entry_name!($($enter)?);
                match (enter, syscall.enter) {
                    (None, None) => {}
                    (Some(ours), Some(theirs)) => assert!(
                        same_name(ours, theirs),
                        concat!("wrong entry program name for ", stringify!($kind))
                    ),
                    _ => panic!(concat!(stringify!($kind), ": entry program present iff ordered by entry")),
                }
                assert!(
                    same_name(stringify!($exit), syscall.exit),
                    concat!(stringify!($exit), " is not the exit tracepoint of ", stringify!($kind))
                );
            };
        )*

        const _: () = assert!(
            [$(stringify!($kind)),*].len() == tracepoints::SYSCALLS.len(),
            "a syscall in memtrace_common::tracepoints::SYSCALLS has no programs"
        );
    };
}

/// The name of an entry program, if there is one.
macro_rules! entry_name {
    () => {
        None
    };
    ($enter:ident) => {
        Some(stringify!($enter))
    };
}

/// The traced syscall of `kind`; fails the build for other kinds.
const fn syscall_of(kind: EventKind) -> &'static tracepoints::Syscall {
    match tracepoints::syscall(kind) {
        Some(syscall) => syscall,
        None => panic!("not a traced syscall"),
    }
}

syscall_probes! {
    Mmap: exit sys_exit_mmap;
    Munmap: enter sys_enter_munmap, exit sys_exit_munmap;
    Mremap: exit sys_exit_mremap;
    Brk: exit sys_exit_brk;
    Mprotect: enter sys_enter_mprotect, exit sys_exit_mprotect;
    Madvise: enter sys_enter_madvise, exit sys_exit_madvise;
    SetVmaName: enter sys_enter_prctl, exit sys_exit_prctl;
}

/// The sched programs, named after their raw tracepoints in
/// `memtrace_common::tracepoints::RAW_TRACEPOINTS` (userspace attaches them
/// by those names); the build fails if a name differs or one has no
/// program.
macro_rules! sched_programs {
    ($($program:ident: $tracepoint:expr;)*) => {
        $(
            const _: () = {
                let _ = $program;
                assert!(
                    same_name(stringify!($program), $tracepoint.name),
                    concat!("program ", stringify!($program), " is not named after its tracepoint")
                );
            };
        )*

        const _: () = assert!(
            [$(stringify!($program)),*].len() == tracepoints::RAW_TRACEPOINTS.len(),
            "a tracepoint in memtrace_common::tracepoints::RAW_TRACEPOINTS has no program"
        );
    };
}

sched_programs! {
    sched_process_fork: SCHED_PROCESS_FORK;
    sched_process_exec: SCHED_PROCESS_EXEC;
    sched_process_exit: SCHED_PROCESS_EXIT;
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

// Keep NAME_LEN and the name buffer in step.
const _: () = assert!(NAME_LEN >= 16);
