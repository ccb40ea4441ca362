//! Decoded mapping events: the plain data type between the tracer and
//! everything downstream (live stream, ledger, attribution).

use memtrace_common::{EventKind, RawEvent, event_flags};
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
    /// `prctl(PR_SET_VMA, PR_SET_VMA_ANON_NAME, addr, len, name)`; `name`
    /// `None` clears the name.
    SetVmaName {
        addr: u64,
        len: u64,
        name: Option<String>,
    },
    Fork {
        child_pid: u32,
    },
    Exec {
        filename: String,
    },
    /// The whole process is exiting (its last thread left).
    Exit {},
}

/// One completed address-space change (or process lifecycle step).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Event {
    /// CLOCK_MONOTONIC nanoseconds at completion.
    pub time_ns: u64,
    pub duration_ns: u64,
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
    /// table ([`crate::stack::callsite::StackTable`]); set by userspace.
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

    /// Decode a raw event; `None` for an unknown kind.
    pub fn from_raw(raw: &RawEvent) -> Option<Event> {
        let kind = EventKind::from_u32(raw.kind)?;
        let a = raw.args;
        let name = (raw.flags & event_flags::HAS_NAME != 0).then(|| c_string(&raw.name));
        let call = match kind {
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
            // prctl(PR_SET_VMA, PR_SET_VMA_ANON_NAME, addr, len, name)
            EventKind::SetVmaName => Call::SetVmaName {
                addr: a[2],
                len: a[3],
                name,
            },
            EventKind::Fork => Call::Fork {
                child_pid: a[0] as u32,
            },
            EventKind::Exec => Call::Exec {
                filename: name.unwrap_or_default(),
            },
            EventKind::Exit => Call::Exit {},
        };
        Some(Event {
            time_ns: raw.ktime_ns,
            duration_ns: raw.duration_ns,
            pid: raw.tgid,
            tid: raw.tid,
            call,
            result: raw.ret,
            stack_id: u32::try_from(raw.stack_id).ok(),
            ip: raw.ip,
            ret_addr: (raw.flags & event_flags::HAS_RET_ADDR != 0).then_some(raw.ret_addr),
            user: (raw.flags & event_flags::HAS_STACK != 0).then(|| {
                let len = (raw.stack_len as usize).min(raw.stack.len());
                Box::new(UserStack {
                    ip: raw.ip,
                    sp: raw.sp,
                    bp: raw.bp,
                    bytes: raw.stack[..len].to_vec(),
                })
            }),
            call_stack: None,
        })
    }
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}
