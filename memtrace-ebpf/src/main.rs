//! memtrace's eBPF programs.
//!
//! Syscall tracepoints on the calls that change an address space. Entry
//! saves the arguments per thread; exit pairs them with the kernel's result,
//! captures the user call site and writes one [`SyscallEvent`] (or
//! [`SetVmaNameEvent`]) to the ring buffer. The sched tracepoints write the
//! small lifecycle records. Every program first checks the caller's tgid
//! against `TRACED`, so untraced processes pay one hash lookup.
//!
//! Record layouts and tracepoint field offsets come from
//! `memtrace_common`, the contract with userspace.
#![no_std]
#![no_main]
#![warn(clippy::undocumented_unsafe_blocks)]

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_F_USER_STACK, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP,
        BPF_RB_RING_SIZE,
    },
    btf_maps::StackTrace,
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
        bpf_probe_read_kernel_str_bytes, bpf_probe_read_user, bpf_probe_read_user_buf,
        bpf_probe_read_user_str_bytes,
        generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
    },
    macros::{btf_map, map, tracepoint},
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf, ring_buf::RingBufEntry},
    programs::{TracePointContext, tracing::StackIdContext as _},
};
use memtrace_common::{
    DEFAULT_RING_BYTES, EventHeader, EventKind, ExecEvent, ExitEvent, ForkEvent,
    KERNEL_STACK_DEPTH, MAX_PENDING, MAX_STACKS, MAX_TRACED, NAME_LEN, PendingCall, STACK_WINDOW,
    STACK_WINDOW_SMALL, SetVmaNameEvent, SyscallEvent, UserRegs, counter, event_flags,
    tracepoints::{
        self, EXEC_FILENAME, EXIT_GROUP_DEAD, FORK_CHILD_PID, SCHED_PROCESS_EXEC,
        SCHED_PROCESS_EXIT, SCHED_PROCESS_FORK, SYSCALL_ARGS_OFFSET, SYSCALL_RET, SyscallEnterArgs,
    },
};

/// Processes (tgids) being traced. Userspace adds the target; with
/// `FOLLOW_FORKS` the fork program adds children.
#[map]
static TRACED: HashMap<u32, u8> = HashMap::with_max_entries(MAX_TRACED, 0);

/// Syscall arguments saved at entry, by thread id. An LRU map: an entry
/// whose exit never comes (the thread died inside the call, or its process
/// left the traced set meanwhile) is evicted once the map fills up, instead
/// of holding a slot for the rest of the session.
#[map]
static PENDING: LruHashMap<u32, PendingCall> = LruHashMap::with_max_entries(MAX_PENDING, 0);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

/// Frame-pointer stacks, kept shallow: without frame pointers (Debian's
/// libc) the kernel's walk follows whatever `rbp` holds, and each step costs
/// a user-memory read; the full stack comes from the stack window instead.
#[btf_map]
static STACKS: StackTrace<{ MAX_STACKS as usize }, 0, { KERNEL_STACK_DEPTH as usize }> =
    StackTrace::new();

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

#[inline(always)]
fn kernel_stacks_forced() -> bool {
    // SAFETY: a plain read of a global set before load.
    unsafe { core::ptr::read_volatile(&KERNEL_STACKS) != 0 }
}

/// `prctl` options that name an anonymous range.
const PR_SET_VMA: u64 = 0x53564d41;
const PR_SET_VMA_ANON_NAME: u64 = 0;

/// x86_64 `struct pt_regs` offsets of the user instruction and stack pointers.
#[cfg(bpf_target_arch = "x86_64")]
const PT_REGS_IP: usize = 128;
#[cfg(bpf_target_arch = "x86_64")]
const PT_REGS_SP: usize = 152;
#[cfg(bpf_target_arch = "x86_64")]
const PT_REGS_BP: usize = 32;

/// Read a field of the tracepoint record as a `$ty`; fails to build unless
/// `$ty` has the field's size.
macro_rules! read_field {
    ($ctx:expr, $field:expr, $ty:ty) => {{
        const {
            assert!(
                size_of::<$ty>() == $field.size,
                concat!(stringify!($field), " is not a ", stringify!($ty))
            )
        };
        // SAFETY: `read_at` copies through `bpf_probe_read_kernel`, which
        // faults safely; `$field` is inside the record on kernels that
        // userspace's tracefs check accepts.
        unsafe { $ctx.read_at::<$ty>($field.offset) }
    }};
}

/// Const string equality (`==` on `str` is not const).
const fn same_name(a: &str, b: &str) -> bool {
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

#[inline(always)]
fn current_ids() -> (u32, u32) {
    let id = bpf_get_current_pid_tgid();
    ((id >> 32) as u32, id as u32)
}

#[inline(always)]
fn is_traced(tgid: u32) -> bool {
    // SAFETY: the value is only tested for presence, never read, so a
    // concurrent update of the entry cannot be observed half-written.
    unsafe { TRACED.get(tgid).is_some() }
}

#[inline(always)]
fn count(index: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *c += 1 };
    }
}

/// Submit flags: waking the reader on every event costs the traced thread
/// an interrupt per syscall, so wake it only once a quarter of the ring is
/// full; the reader also polls on a short timer.
#[inline(always)]
fn wakeup_flags() -> u64 {
    let avail = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    let size = EVENTS.query(BPF_RB_RING_SIZE as u64);
    if avail >= size / 4 {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

#[inline(always)]
fn on_enter(ctx: &TracePointContext, kind: EventKind) -> u32 {
    let (tgid, tid) = current_ids();
    if !is_traced(tgid) {
        return 0;
    }
    // SAFETY: `read_at` copies through `bpf_probe_read_kernel`, which
    // faults safely. Syscalls with fewer than six arguments have a shorter
    // record; their unused slots read whatever follows it in the trace
    // buffer, and userspace ignores them.
    let SyscallEnterArgs { args } =
        unsafe { ctx.read_at::<SyscallEnterArgs>(SYSCALL_ARGS_OFFSET) }.unwrap_or_default();
    if kind == EventKind::SetVmaName && (args[0] != PR_SET_VMA || args[1] != PR_SET_VMA_ANON_NAME) {
        return 0;
    }
    let pending = PendingCall {
        // SAFETY: a helper without arguments.
        start_ns: unsafe { bpf_ktime_get_ns() },
        args,
        kind: kind as u32,
        _pad: 0,
    };
    if PENDING.insert(tid, pending, 0).is_err() {
        count(counter::LOST_PENDING);
    }
    0
}

#[inline(always)]
fn on_exit(ctx: &TracePointContext, kind: EventKind) -> u32 {
    let (tgid, tid) = current_ids();
    if !is_traced(tgid) {
        return 0;
    }
    // SAFETY: the entry is keyed by this thread's id, so only this thread
    // writes it, and it is copied out before it is removed.
    let Some(pending) = (unsafe { PENDING.get(tid) }).copied() else {
        return 0;
    };
    let _ = PENDING.remove(tid);
    if pending.kind != kind as u32 {
        return 0;
    }
    let ret = read_field!(ctx, SYSCALL_RET, i64).unwrap_or(0);
    if kind == EventKind::SetVmaName {
        let Some(mut entry) = reserve::<SetVmaNameEvent>() else {
            return 0;
        };
        let ev = entry.as_mut_ptr();
        // SAFETY: `ev` is the slot just reserved, ours alone until submit
        // and 8-byte aligned; the name is read through a helper that faults
        // safely.
        unsafe {
            write_syscall(
                ctx,
                &raw mut (*ev).syscall,
                (kind, tgid, tid),
                &pending,
                ret,
            );
            let name = pending.args[4];
            if name != 0
                && bpf_probe_read_user_str_bytes(name as *const u8, &mut (*ev).name).is_ok()
            {
                (*ev).syscall.header.flags |= event_flags::HAS_NAME;
            }
        }
        entry.submit(wakeup_flags());
    } else {
        let Some(mut entry) = reserve::<SyscallEvent>() else {
            return 0;
        };
        // SAFETY: the slot just reserved, ours alone until submit and
        // 8-byte aligned.
        unsafe { write_syscall(ctx, entry.as_mut_ptr(), (kind, tgid, tid), &pending, ret) };
        entry.submit(wakeup_flags());
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

/// The header of every record: the current thread, and the time now (the
/// end of the syscall that started at `started_ns`, if any).
#[inline(always)]
fn header(kind: EventKind, tgid: u32, tid: u32, started_ns: Option<u64>) -> EventHeader {
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    EventHeader {
        ktime_ns: now,
        duration_ns: started_ns.map_or(0, |start| now.wrapping_sub(start)),
        kind: kind as u32,
        tgid,
        tid,
        flags: 0,
    }
}

/// Write every field of a syscall record: the call, its result and its
/// call site (registers, stack window, and the kernel's frame-pointer stack
/// when needed).
///
/// # Safety
///
/// `ev` must point to a ring buffer slot for a `SyscallEvent` that nothing
/// else writes until it is submitted.
#[inline(always)]
unsafe fn write_syscall(
    ctx: &TracePointContext,
    ev: *mut SyscallEvent,
    (kind, tgid, tid): (EventKind, u32, u32),
    pending: &PendingCall,
    ret: i64,
) {
    // SAFETY: the caller hands over `ev` for writing; the helpers fault
    // safely.
    unsafe {
        (*ev).header = header(kind, tgid, tid, Some(pending.start_ns));
        (*ev).args = pending.args;
        (*ev).ret = ret;
        (*ev).regs = UserRegs::default();
        (*ev).stack_id = -1;
        (*ev).stack_len = 0;
        read_user_regs(&mut *ev);
        // The frame-pointer walk is the fallback for when no stack window
        // could be read: without frame pointers it yields a frame or two
        // and costs the traced thread microseconds per call.
        if (*ev).header.flags & event_flags::HAS_STACK == 0 || kernel_stacks_forced() {
            (*ev).stack_id = match ctx.get_stackid(&STACKS, BPF_F_USER_STACK as u64) {
                Ok(id) => id as i32,
                Err(e) => e,
            };
        }
    }
}

/// Fill `regs` from the task's saved user registers, and the stack window
/// from the user stack pointer: the word there is the return address into
/// the libc wrapper's caller, which frame-pointer walking skips.
///
/// # Safety
///
/// `ev` must be a ring buffer slot (its header already written).
#[inline(always)]
unsafe fn read_user_regs(ev: &mut SyscallEvent) {
    // SAFETY: the helpers return the current task and its user pt_regs;
    // reads through them go via bpf_probe_read_*, which fault safely.
    unsafe {
        let regs = bpf_task_pt_regs(bpf_get_current_task_btf()) as usize;
        if regs == 0 {
            return;
        }
        ev.regs.ip = bpf_probe_read_kernel((regs + PT_REGS_IP) as *const u64).unwrap_or(0);
        let sp: u64 = bpf_probe_read_kernel((regs + PT_REGS_SP) as *const u64).unwrap_or(0);
        ev.regs.sp = sp;
        ev.regs.bp = bpf_probe_read_kernel((regs + PT_REGS_BP) as *const u64).unwrap_or(0);
        if sp == 0 {
            return;
        }
        if let Ok(ret) = bpf_probe_read_user(sp as *const u64) {
            ev.regs.ret_addr = ret;
            ev.header.flags |= event_flags::HAS_RET_ADDR;
        }
        // The window for userspace unwinding; near the top of the stack the
        // full window can cross into unmapped memory, so retry smaller.
        if bpf_probe_read_user_buf(sp as *const u8, &mut ev.stack).is_ok() {
            ev.stack_len = STACK_WINDOW as u32;
            ev.header.flags |= event_flags::HAS_STACK;
        } else if bpf_probe_read_user_buf(sp as *const u8, &mut ev.stack[..STACK_WINDOW_SMALL])
            .is_ok()
        {
            ev.stack_len = STACK_WINDOW_SMALL as u32;
            ev.header.flags |= event_flags::HAS_STACK;
        }
    }
}

/// The entry and exit programs of each traced syscall. Userspace attaches
/// them by the names in `memtrace_common::tracepoints::SYSCALLS`; the
/// build fails unless each pair is named after its kind's tracepoints there
/// and every syscall listed there has its pair.
macro_rules! syscall_probes {
    ($($kind:ident: $enter:ident, $exit:ident;)*) => {
        $(
            #[tracepoint]
            pub fn $enter(ctx: TracePointContext) -> u32 {
                on_enter(&ctx, EventKind::$kind)
            }

            #[tracepoint]
            pub fn $exit(ctx: TracePointContext) -> u32 {
                on_exit(&ctx, EventKind::$kind)
            }

            const _: () = {
                let Some(syscall) = tracepoints::syscall(EventKind::$kind) else {
                    panic!(concat!(stringify!($kind), " is not a traced syscall"));
                };
                assert!(
                    same_name(stringify!($enter), syscall.enter),
                    concat!(stringify!($enter), " is not the entry tracepoint of ", stringify!($kind))
                );
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

syscall_probes! {
    Mmap: sys_enter_mmap, sys_exit_mmap;
    Munmap: sys_enter_munmap, sys_exit_munmap;
    Mremap: sys_enter_mremap, sys_exit_mremap;
    Brk: sys_enter_brk, sys_exit_brk;
    Mprotect: sys_enter_mprotect, sys_exit_mprotect;
    Madvise: sys_enter_madvise, sys_exit_madvise;
    SetVmaName: sys_enter_prctl, sys_exit_prctl;
}

/// `sched:sched_process_fork`. The parent is the current task. With
/// `FOLLOW_FORKS` the child joins the traced set before it runs. Thread
/// creation fires this too; userspace tells them apart and the exit program
/// removes thread ids again.
#[tracepoint]
pub fn sched_process_fork(ctx: TracePointContext) -> u32 {
    let (tgid, tid) = current_ids();
    if !is_traced(tgid) {
        return 0;
    }
    let Ok(child) = read_field!(ctx, FORK_CHILD_PID, i32) else {
        return 0;
    };
    // SAFETY: a plain read of a global set before load.
    let follow = unsafe { core::ptr::read_volatile(&FOLLOW_FORKS) };
    if follow != 0 && TRACED.insert(child as u32, 1, 0).is_err() {
        count(counter::LOST_CHILDREN);
    }
    if let Some(mut entry) = reserve::<ForkEvent>() {
        entry.write(ForkEvent {
            header: header(EventKind::Fork, tgid, tid, None),
            child_pid: child as u32,
            _pad: 0,
        });
        entry.submit(wakeup_flags());
    }
    0
}

/// `sched:sched_process_exec`.
#[tracepoint]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    let (tgid, tid) = current_ids();
    if !is_traced(tgid) {
        return 0;
    }
    let loc = read_field!(ctx, EXEC_FILENAME, u32).unwrap_or(0);
    let filename = (ctx.as_ptr() as usize + (loc & 0xffff) as usize) as *const u8;
    let Some(mut entry) = reserve::<ExecEvent>() else {
        return 0;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` is the slot just reserved, ours alone until submit and
    // 8-byte aligned; the string is read through a helper that faults
    // safely.
    unsafe {
        (*ev).header = header(EventKind::Exec, tgid, tid, None);
        if bpf_probe_read_kernel_str_bytes(filename, &mut (*ev).filename).is_ok() {
            (*ev).header.flags |= event_flags::HAS_NAME;
        }
    }
    entry.submit(wakeup_flags());
    0
}

/// `sched:sched_process_exit`.
#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let (tgid, tid) = current_ids();
    if !is_traced(tgid) {
        return 0;
    }
    if tid != tgid {
        // A thread id that the fork program may have added as if it were a
        // process.
        let _ = TRACED.remove(tid);
    }
    // A call the thread never returned from; normally there is none.
    let _ = PENDING.remove(tid);
    let group_dead = read_field!(ctx, EXIT_GROUP_DEAD, u8).unwrap_or(0);
    if group_dead != 0 {
        if let Some(mut entry) = reserve::<ExitEvent>() {
            entry.write(ExitEvent {
                header: header(EventKind::Exit, tgid, tid, None),
            });
            entry.submit(wakeup_flags());
        }
        // Forget it here, not only when userspace sees the exit (which may
        // be lost): a later process reusing the pid must not be traced.
        let _ = TRACED.remove(tgid);
    }
    0
}

/// The sched programs, named after their tracepoints in
/// `memtrace_common::tracepoints::SCHED` (userspace attaches them by those
/// names); the build fails if a name differs or one has no program.
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
            [$(stringify!($program)),*].len() == tracepoints::SCHED.len(),
            "a tracepoint in memtrace_common::tracepoints::SCHED has no program"
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
