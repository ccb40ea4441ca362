//! Decoded mapping events: the plain data type between the tracer and
//! everything downstream (live stream, ledger, attribution).

use memtrace_common::{
    EventHeader, EventKind, ExecEvent, ExitEvent, ForkEvent, SetVmaNameEvent, SyscallEvent,
    WindowedSyscallEvent, event_flags,
};
use serde::Serialize;

/// What a syscall event asked for, decoded from its arguments.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "call", rename_all = "snake_case")]
pub enum Call {
    Mmap {
        addr: u64,
        len: u64,
        prot: u32,
        flags: u32,
        fd: i32,
        offset: u64,
    },
    Munmap {
        addr: u64,
        len: u64,
    },
    Mremap {
        old_addr: u64,
        old_len: u64,
        new_len: u64,
        flags: u32,
        new_addr: u64,
    },
    Brk {
        addr: u64,
    },
    Mprotect {
        addr: u64,
        len: u64,
        prot: u32,
    },
    Madvise {
        addr: u64,
        len: u64,
        advice: i32,
    },
    /// `prctl(PR_SET_VMA, PR_SET_VMA_ANON_NAME, addr, len, name)`.
    SetVmaName {
        addr: u64,
        len: u64,
        name: VmaName,
    },
    Fork {
        child_pid: u32,
        /// The kernel side saw the child lead its own thread group: a new
        /// process for sure. False: it could not tell (userspace asks
        /// `/proc`).
        new_process: bool,
    },
    Exec {
        filename: String,
    },
    /// The whole process is exiting (its last thread left).
    Exit {},
}

/// The name a `prctl(PR_SET_VMA_ANON_NAME)` call gave its range.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VmaName {
    /// The name set.
    Set(String),
    /// No name (a null pointer): the call clears the name.
    Cleared,
    /// The pointer was not null, but the string could be read neither in
    /// the kernel (its page was not resident) nor from the process
    /// afterwards (gone, or the pointer was bad). Not a clear.
    Unreadable,
}

impl VmaName {
    /// The name, when it was read.
    pub fn as_set(&self) -> Option<&str> {
        match self {
            VmaName::Set(n) => Some(n),
            VmaName::Cleared | VmaName::Unreadable => None,
        }
    }
}

/// One completed address-space change (or process lifecycle step).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Event {
    /// CLOCK_MONOTONIC nanoseconds when the call took effect: its entry
    /// for calls ordered by their entry, else its exit (see
    /// `memtrace_common::tracepoints::Syscall::enter`).
    pub time_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub call: Call,
    /// The raw return value: an address or 0 on success, `-errno` on failure.
    pub result: i64,
    /// Id of the user stack in the kernel's stack map, if one was captured.
    pub stack_id: Option<u32>,
    /// User instruction pointer at syscall entry.
    pub ip: u64,
    /// Return address read at the user stack pointer at syscall entry.
    pub ret_addr: Option<u64>,
    /// User registers and the top of the user stack at syscall entry, for
    /// unwinding in userspace. Dropped once the stack is unwound.
    #[serde(skip)]
    pub user: Option<Box<UserStack>>,
    /// The event's unwound call stack, as an id in the session's stack
    /// table (`stack::callsite::StackTable`): set by userspace
    /// once unwound, or by the kernel side for a stack userspace unwound
    /// before (its stack cache, see `memtrace_common::CachedStack`).
    pub call_stack: Option<u32>,
}

/// User registers and stack bytes captured at syscall entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserStack {
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    /// Bytes from `sp` upwards.
    pub bytes: Vec<u8>,
}

impl Event {
    /// Bytes this event costs in memory, for bounding queues of events:
    /// its own, counted twice for what holding it costs besides (its slot
    /// in the queue, the allocator's headers and the free memory it keeps
    /// between a reader thread that allocates and a session that frees:
    /// measured here at 1.3–1.7 times the events' own bytes).
    pub fn footprint(&self) -> usize {
        let user = self
            .user
            .as_ref()
            .map_or(0, |u| size_of::<UserStack>() + u.bytes.capacity());
        let name = match &self.call {
            Call::SetVmaName {
                name: VmaName::Set(n),
                ..
            } => n.capacity(),
            Call::Exec { filename } => filename.capacity(),
            _ => 0,
        };
        2 * (size_of::<Event>() + user + name)
    }
}

impl UserStack {
    /// The 8-byte word at user address `addr`, if inside the window.
    pub fn read_u64(&self, addr: u64) -> Option<u64> {
        let off = usize::try_from(addr.checked_sub(self.sp)?).ok()?;
        let bytes = self.bytes.get(off..off.checked_add(8)?)?;
        Some(u64::from_le_bytes(bytes.try_into().ok()?))
    }
}

impl Event {
    pub fn kind(&self) -> EventKind {
        match self.call {
            Call::Mmap { .. } => EventKind::Mmap,
            Call::Munmap { .. } => EventKind::Munmap,
            Call::Mremap { .. } => EventKind::Mremap,
            Call::Brk { .. } => EventKind::Brk,
            Call::Mprotect { .. } => EventKind::Mprotect,
            Call::Madvise { .. } => EventKind::Madvise,
            Call::SetVmaName { .. } => EventKind::SetVmaName,
            Call::Fork { .. } => EventKind::Fork,
            Call::Exec { .. } => EventKind::Exec,
            Call::Exit { .. } => EventKind::Exit,
        }
    }

    /// Whether the call failed (the kernel returned an error).
    ///
    /// Syscalls return `-errno` in `-4095..=-1`; anything else is success
    /// (mmap may return addresses with the top bit set on some arches).
    /// `brk` never returns an error: it returns the old break on failure,
    /// which the ledger detects by comparing with the request.
    pub fn failed(&self) -> bool {
        (-4095..0).contains(&self.result) && !matches!(self.call, Call::Brk { .. })
    }

    /// The errno of a failed call.
    pub fn errno(&self) -> Option<i32> {
        self.failed().then(|| (-self.result) as i32)
    }

    /// Decode one ring-buffer record: its [`EventHeader`] first, then the
    /// rest by kind. `None` for an unknown kind or a record shorter than its
    /// kind's layout. A region name the kernel side could not read is
    /// [`VmaName::Unreadable`]; see [`Event::from_raw_reading`].
    pub fn from_raw(record: &[u8]) -> Option<Event> {
        Event::from_raw_reading(record, |_, _| None)
    }

    /// Like [`Event::from_raw`], but a region name the kernel side could
    /// not read (its page was not resident) is read with `read(pid,
    /// address)`, from the process while it lives.
    pub fn from_raw_reading(
        record: &[u8],
        read: impl FnOnce(u32, u64) -> Option<String>,
    ) -> Option<Event> {
        let header: EventHeader = read_record(record)?;
        let kind = EventKind::from_u32(header.kind)?;
        let has_name = header.flags & event_flags::HAS_NAME != 0;
        let event = match kind {
            EventKind::SetVmaName => {
                let ev: SetVmaNameEvent = read_record(record)?;
                let a = ev.syscall.args;
                // prctl(PR_SET_VMA, PR_SET_VMA_ANON_NAME, addr, len, name)
                let name = if has_name {
                    VmaName::Set(c_string(&ev.name))
                } else if header.flags & event_flags::NAME_UNREAD != 0 {
                    read(header.tgid, a[4]).map_or(VmaName::Unreadable, VmaName::Set)
                } else {
                    VmaName::Cleared
                };
                let call = Call::SetVmaName {
                    addr: a[2],
                    len: a[3],
                    name,
                };
                Event::syscall(&ev.syscall, &ev.stack, call)
            }
            EventKind::Fork => {
                let ev: ForkEvent = read_record(record)?;
                Event::lifecycle(
                    &ev.header,
                    Call::Fork {
                        child_pid: ev.child_pid,
                        new_process: ev.header.flags & event_flags::NEW_PROCESS != 0,
                    },
                )
            }
            EventKind::Exec => {
                let ev: ExecEvent = read_record(record)?;
                let filename = if has_name {
                    c_string(&ev.filename)
                } else {
                    String::new()
                };
                Event::lifecycle(&ev.header, Call::Exec { filename })
            }
            EventKind::Exit => {
                let ev: ExitEvent = read_record(record)?;
                Event::lifecycle(&ev.header, Call::Exit {})
            }
            EventKind::Mmap
            | EventKind::Munmap
            | EventKind::Mremap
            | EventKind::Brk
            | EventKind::Mprotect
            | EventKind::Madvise => {
                if header.flags & event_flags::HAS_STACK != 0 {
                    let ev: WindowedSyscallEvent = read_record(record)?;
                    let call = syscall_call(kind, ev.syscall.args)?;
                    Event::syscall(&ev.syscall, &ev.stack, call)
                } else {
                    let ev: SyscallEvent = read_record(record)?;
                    Event::syscall(&ev, &[], syscall_call(kind, ev.args)?)
                }
            }
        };
        Some(event)
    }

    /// A completed syscall with its call site: its stack window (`stack`,
    /// when `HAS_STACK`), or the stack cached for it.
    fn syscall(ev: &SyscallEvent, stack: &[u8], call: Call) -> Event {
        let flags = ev.header.flags;
        let regs = ev.regs;
        Event {
            result: ev.ret,
            stack_id: u32::try_from(ev.stack_id).ok(),
            ip: regs.ip,
            ret_addr: (flags & event_flags::HAS_RET_ADDR != 0).then_some(regs.ret_addr),
            user: (flags & event_flags::HAS_STACK != 0).then(|| {
                let len = (ev.stack_len as usize).min(stack.len());
                Box::new(UserStack {
                    ip: regs.ip,
                    sp: regs.sp,
                    bp: regs.bp,
                    bytes: stack[..len].to_vec(),
                })
            }),
            call_stack: (flags & event_flags::STACK_CACHED != 0).then_some(ev.cached_stack),
            ..Event::lifecycle(&ev.header, call)
        }
    }

    /// An event without a call site (fork, exec, exit).
    fn lifecycle(header: &EventHeader, call: Call) -> Event {
        Event {
            time_ns: header.ktime_ns,
            pid: header.tgid,
            tid: header.tid,
            call,
            result: 0,
            stack_id: None,
            ip: 0,
            ret_addr: None,
            user: None,
            call_stack: None,
        }
    }
}

/// What a syscall without a record of its own asked for, from its
/// arguments.
fn syscall_call(kind: EventKind, a: [u64; 6]) -> Option<Call> {
    Some(match kind {
        EventKind::Mmap => Call::Mmap {
            addr: a[0],
            len: a[1],
            prot: a[2] as u32,
            flags: a[3] as u32,
            fd: a[4] as i32,
            offset: a[5],
        },
        EventKind::Munmap => Call::Munmap {
            addr: a[0],
            len: a[1],
        },
        EventKind::Mremap => Call::Mremap {
            old_addr: a[0],
            old_len: a[1],
            new_len: a[2],
            flags: a[3] as u32,
            new_addr: a[4],
        },
        EventKind::Brk => Call::Brk { addr: a[0] },
        EventKind::Mprotect => Call::Mprotect {
            addr: a[0],
            len: a[1],
            prot: a[2] as u32,
        },
        EventKind::Madvise => Call::Madvise {
            addr: a[0],
            len: a[1],
            advice: a[2] as i32,
        },
        EventKind::SetVmaName | EventKind::Fork | EventKind::Exec | EventKind::Exit => {
            return None;
        }
    })
}

/// The `T` at the start of `record`, if the record is long enough.
fn read_record<T: aya::Pod>(record: &[u8]) -> Option<T> {
    if record.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: `record` holds at least `size_of::<T>()` bytes, and any bytes
    // are a valid `T` (`Pod`); `read_unaligned` copes with the ring
    // buffer's 8-byte alignment.
    Some(unsafe { std::ptr::read_unaligned(record.as_ptr().cast::<T>()) })
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use memtrace_common::{NAME_LEN, STACK_WINDOW, UserRegs, WindowedSyscallEvent};

    use super::*;

    /// The bytes of a record, as the ring buffer hands them over.
    fn bytes_of<T: aya::Pod>(record: &T) -> Vec<u8> {
        // SAFETY: `Pod` records have no padding, so every byte is
        // initialised; the slice lives only as long as `record`.
        unsafe {
            std::slice::from_raw_parts(std::ptr::from_ref(record).cast::<u8>(), size_of::<T>())
        }
        .to_vec()
    }

    fn header(kind: EventKind, flags: u32) -> EventHeader {
        EventHeader {
            ktime_ns: 1_000,
            kind: kind as u32,
            tgid: 7,
            tid: 8,
            flags,
        }
    }

    fn name(s: &str) -> [u8; NAME_LEN] {
        let mut out = [0xaa; NAME_LEN];
        out[..s.len()].copy_from_slice(s.as_bytes());
        out[s.len()] = 0;
        out
    }

    fn window() -> [u8; STACK_WINDOW] {
        let mut stack = [0u8; STACK_WINDOW];
        stack[..8].copy_from_slice(&0x5555_0000_1234u64.to_le_bytes());
        stack
    }

    fn windowed(kind: EventKind, args: [u64; 6], ret: i64) -> WindowedSyscallEvent {
        WindowedSyscallEvent {
            syscall: syscall(kind, args, ret),
            stack: window(),
        }
    }

    fn syscall(kind: EventKind, args: [u64; 6], ret: i64) -> SyscallEvent {
        SyscallEvent {
            header: header(kind, event_flags::HAS_RET_ADDR | event_flags::HAS_STACK),
            args,
            ret,
            regs: UserRegs {
                ip: 0x7f00_0000_1000,
                ret_addr: 0x5555_0000_1234,
                sp: 0x7ffd_0000_0000,
                bp: 0,
            },
            stack_id: -14,
            stack_len: 256,
            cached_stack: 0,
            _pad: 0,
        }
    }

    #[test]
    fn syscall_records_decode_with_their_call_site() {
        let raw = windowed(
            EventKind::Mmap,
            [0, 8192, 3, 0x22, u64::MAX, 0],
            0x7f00_0000_0000,
        );
        let ev = Event::from_raw(&bytes_of(&raw)).expect("decodes");
        assert_eq!(
            ev.call,
            Call::Mmap {
                addr: 0,
                len: 8192,
                prot: 3,
                flags: 0x22,
                fd: -1,
                offset: 0
            }
        );
        assert_eq!((ev.time_ns, ev.pid, ev.tid), (1_000, 7, 8));
        assert_eq!(ev.result, 0x7f00_0000_0000);
        assert_eq!(ev.stack_id, None, "a negative stack id is no stack");
        assert_eq!(ev.ip, 0x7f00_0000_1000);
        assert_eq!(ev.ret_addr, Some(0x5555_0000_1234));
        let user = ev.user.expect("stack window");
        assert_eq!(user.bytes.len(), 256);
        assert_eq!(user.read_u64(0x7ffd_0000_0000), Some(0x5555_0000_1234));

        let mut bare = syscall(EventKind::Munmap, [0x1000, 4096, 0, 0, 0, 0], 0);
        bare.header.flags = 0;
        bare.stack_id = 3;
        let ev = Event::from_raw(&bytes_of(&bare)).expect("decodes");
        assert_eq!(
            ev.call,
            Call::Munmap {
                addr: 0x1000,
                len: 4096
            }
        );
        assert_eq!((ev.stack_id, ev.ret_addr, ev.user), (Some(3), None, None));
        assert_eq!(ev.call_stack, None);

        // A short record with HAS_STACK claims a window it does not have.
        let mut short = bare;
        short.header.flags = event_flags::HAS_STACK;
        assert!(Event::from_raw(&bytes_of(&short)).is_none());
    }

    /// A stack the kernel side found in its cache arrives as the id
    /// userspace gave it, without a window.
    #[test]
    fn cached_stacks_arrive_as_their_id() {
        let mut raw = syscall(EventKind::Munmap, [0x1000, 4096, 0, 0, 0, 0], 0);
        raw.header.flags = event_flags::HAS_RET_ADDR | event_flags::STACK_CACHED;
        raw.cached_stack = 42;
        let ev = Event::from_raw(&bytes_of(&raw)).expect("decodes");
        assert_eq!(ev.call_stack, Some(42));
        assert!(ev.user.is_none());
        assert_eq!(ev.ret_addr, Some(0x5555_0000_1234));
    }

    #[test]
    fn set_vma_name_records_carry_the_name() {
        let args = [0x5356_4d41, 0, 0x1000, 4096, 0xdead, 0];
        let mut raw = SetVmaNameEvent {
            syscall: syscall(EventKind::SetVmaName, args, 0),
            name: name("cache"),
            stack: window(),
        };
        raw.syscall.header.flags |= event_flags::HAS_NAME;
        let ev = Event::from_raw(&bytes_of(&raw)).expect("decodes");
        assert_eq!(
            ev.call,
            Call::SetVmaName {
                addr: 0x1000,
                len: 4096,
                name: VmaName::Set("cache".into())
            }
        );
        assert!(ev.user.is_some());
        raw.syscall.header.flags &= !event_flags::HAS_NAME;
        let ev = Event::from_raw(&bytes_of(&raw)).expect("decodes");
        assert!(matches!(
            ev.call,
            Call::SetVmaName {
                name: VmaName::Cleared,
                ..
            }
        ));
    }

    /// A name pointer the kernel side could not read is read from the
    /// process, and said to be unreadable when that fails too: never taken
    /// for a clear.
    #[test]
    fn unread_names_are_read_from_the_process_or_marked() {
        let args = [0x5356_4d41, 0, 0x1000, 4096, 0xdead, 0];
        let mut raw = SetVmaNameEvent {
            syscall: syscall(EventKind::SetVmaName, args, 0),
            name: [0; NAME_LEN],
            stack: window(),
        };
        raw.syscall.header.flags |= event_flags::NAME_UNREAD;
        let bytes = bytes_of(&raw);
        let name_of = |ev: Event| match ev.call {
            Call::SetVmaName { name, .. } => name,
            other => panic!("not a naming: {other:?}"),
        };
        let read = Event::from_raw_reading(&bytes, |pid, addr| {
            assert_eq!(
                (pid, addr),
                (7, 0xdead),
                "read from the caller, at the pointer"
            );
            Some("heap".into())
        });
        assert_eq!(name_of(read.expect("decodes")), VmaName::Set("heap".into()));
        let failed = Event::from_raw_reading(&bytes, |_, _| None).expect("decodes");
        assert_eq!(name_of(failed), VmaName::Unreadable);
    }

    #[test]
    fn lifecycle_records_are_small_and_have_no_call_site() {
        let fork = ForkEvent {
            header: header(EventKind::Fork, event_flags::NEW_PROCESS),
            child_pid: 99,
            _pad: 0,
        };
        let exec = ExecEvent {
            header: header(EventKind::Exec, event_flags::HAS_NAME),
            filename: name("/bin/true"),
        };
        let exit = ExitEvent {
            header: header(EventKind::Exit, 0),
        };
        let decoded = [bytes_of(&fork), bytes_of(&exec), bytes_of(&exit)]
            .map(|b| Event::from_raw(&b).expect("decodes"));
        assert_eq!(
            decoded[0].call,
            Call::Fork {
                child_pid: 99,
                new_process: true
            }
        );
        assert_eq!(
            decoded[1].call,
            Call::Exec {
                filename: "/bin/true".into()
            }
        );
        assert_eq!(decoded[2].call, Call::Exit {});
        for ev in &decoded {
            assert_eq!((ev.pid, ev.tid, ev.result), (7, 8, 0));
            assert_eq!((ev.stack_id, ev.ip, ev.ret_addr), (None, 0, None));
            assert!(ev.user.is_none());
        }
        let unnamed = ExecEvent {
            header: header(EventKind::Exec, 0),
            ..exec
        };
        let ev = Event::from_raw(&bytes_of(&unnamed)).expect("decodes");
        assert_eq!(
            ev.call,
            Call::Exec {
                filename: "".into()
            }
        );
    }

    #[test]
    fn short_records_and_unknown_kinds_are_skipped() {
        let raw = windowed(EventKind::Mprotect, [0x1000, 4096, 1, 0, 0, 0], 0);
        let bytes = bytes_of(&raw);
        assert!(Event::from_raw(&bytes).is_some());
        assert!(Event::from_raw(&bytes[..bytes.len() - 1]).is_none());
        assert!(Event::from_raw(&bytes[..size_of::<EventHeader>()]).is_none());
        assert!(Event::from_raw(&bytes[..size_of::<EventHeader>() - 1]).is_none());
        assert!(Event::from_raw(&[]).is_none());
        // A set_vma_name header on a plain syscall record is too short.
        let mut mislabelled = raw;
        mislabelled.syscall.header.kind = EventKind::SetVmaName as u32;
        assert!(Event::from_raw(&bytes_of(&mislabelled)).is_none());
        let mut unknown = raw;
        unknown.syscall.header.kind = 0;
        assert!(Event::from_raw(&bytes_of(&unknown)).is_none());
    }
}
