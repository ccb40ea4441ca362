//! The live event stream: one text line or one JSON object per event, and
//! the summary printed when tracing ends.
//!
//! The JSON form of each line ([`EventLine`], [`Summary`]) is one variant
//! of [`super::output::TraceLine`]; the schema is `docs/json-schema.md`.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    schema,
    stack::{callsite::CallStack, symbolize::Frame},
    text::printable,
    trace::{
        Lost,
        event::{Call, Event, VmaName},
    },
    units,
};

/// `rwx` string of mmap/mprotect protection bits.
pub fn prot_string(prot: u32) -> String {
    let b = |bit: u32, c: char| if prot & bit != 0 { c } else { '-' };
    [
        b(libc::PROT_READ as u32, 'r'),
        b(libc::PROT_WRITE as u32, 'w'),
        b(libc::PROT_EXEC as u32, 'x'),
    ]
    .iter()
    .collect()
}

/// `PRIVATE|ANONYMOUS|FIXED…` for mmap flags.
pub fn mmap_flags_string(flags: u32) -> String {
    const NAMES: &[(i32, &str)] = &[
        (libc::MAP_SHARED, "SHARED"),
        (libc::MAP_PRIVATE, "PRIVATE"),
        (libc::MAP_FIXED, "FIXED"),
        (libc::MAP_ANONYMOUS, "ANONYMOUS"),
        (libc::MAP_GROWSDOWN, "GROWSDOWN"),
        (libc::MAP_DENYWRITE, "DENYWRITE"),
        (libc::MAP_EXECUTABLE, "EXECUTABLE"),
        (libc::MAP_LOCKED, "LOCKED"),
        (libc::MAP_NORESERVE, "NORESERVE"),
        (libc::MAP_POPULATE, "POPULATE"),
        (libc::MAP_NONBLOCK, "NONBLOCK"),
        (libc::MAP_STACK, "STACK"),
        (libc::MAP_HUGETLB, "HUGETLB"),
        (libc::MAP_FIXED_NOREPLACE, "FIXED_NOREPLACE"),
    ];
    let mut parts: Vec<&str> = NAMES
        .iter()
        .filter(|(bit, _)| flags & (*bit as u32) == *bit as u32 && *bit != 0)
        .map(|(_, n)| *n)
        .collect();
    // MAP_SHARED_VALIDATE is SHARED|PRIVATE.
    if flags & 3 == 3 {
        parts.retain(|p| *p != "SHARED" && *p != "PRIVATE");
        parts.insert(0, "SHARED_VALIDATE");
    }
    parts.join("|")
}

fn mremap_flags_string(flags: u32) -> String {
    let mut parts = Vec::new();
    if flags & 1 != 0 {
        parts.push("MAYMOVE");
    }
    if flags & 2 != 0 {
        parts.push("FIXED");
    }
    if flags & 4 != 0 {
        parts.push("DONTUNMAP");
    }
    parts.join("|")
}

fn advice_string(advice: i32) -> String {
    match advice {
        libc::MADV_NORMAL => "NORMAL".into(),
        libc::MADV_RANDOM => "RANDOM".into(),
        libc::MADV_SEQUENTIAL => "SEQUENTIAL".into(),
        libc::MADV_WILLNEED => "WILLNEED".into(),
        libc::MADV_DONTNEED => "DONTNEED".into(),
        libc::MADV_FREE => "FREE".into(),
        libc::MADV_REMOVE => "REMOVE".into(),
        libc::MADV_DONTFORK => "DONTFORK".into(),
        libc::MADV_DOFORK => "DOFORK".into(),
        libc::MADV_MERGEABLE => "MERGEABLE".into(),
        libc::MADV_UNMERGEABLE => "UNMERGEABLE".into(),
        libc::MADV_HUGEPAGE => "HUGEPAGE".into(),
        libc::MADV_NOHUGEPAGE => "NOHUGEPAGE".into(),
        libc::MADV_DONTDUMP => "DONTDUMP".into(),
        libc::MADV_DODUMP => "DODUMP".into(),
        libc::MADV_HWPOISON => "HWPOISON".into(),
        20 => "COLD".into(),
        21 => "PAGEOUT".into(),
        22 => "POPULATE_READ".into(),
        23 => "POPULATE_WRITE".into(),
        24 => "DONTNEED_LOCKED".into(),
        25 => "COLLAPSE".into(),
        other => other.to_string(),
    }
}

/// Symbolic name of an errno.
pub fn errno_name(errno: i32) -> String {
    match errno {
        libc::EPERM => "EPERM".into(),
        libc::ENOENT => "ENOENT".into(),
        libc::EBADF => "EBADF".into(),
        libc::EAGAIN => "EAGAIN".into(),
        libc::ENOMEM => "ENOMEM".into(),
        libc::EACCES => "EACCES".into(),
        libc::EFAULT => "EFAULT".into(),
        libc::EBUSY => "EBUSY".into(),
        libc::EEXIST => "EEXIST".into(),
        libc::ENODEV => "ENODEV".into(),
        libc::EINVAL => "EINVAL".into(),
        libc::ENFILE => "ENFILE".into(),
        libc::EMFILE => "EMFILE".into(),
        libc::ETXTBSY => "ETXTBSY".into(),
        libc::EFBIG => "EFBIG".into(),
        libc::EOVERFLOW => "EOVERFLOW".into(),
        libc::ENOSYS => "ENOSYS".into(),
        other => format!("errno {other}"),
    }
}

/// The address range an event is about: (addr, len).
pub fn event_range(ev: &Event) -> (u64, u64) {
    match &ev.call {
        Call::Mmap { addr, len, .. } => (if ev.failed() { *addr } else { ev.result as u64 }, *len),
        Call::Munmap { addr, len }
        | Call::Mprotect { addr, len, .. }
        | Call::Madvise { addr, len, .. } => (*addr, *len),
        Call::SetVmaName { addr, len, .. } => (*addr, *len),
        Call::Mremap {
            old_addr, new_len, ..
        } => (
            if ev.failed() {
                *old_addr
            } else {
                ev.result as u64
            },
            *new_len,
        ),
        Call::Brk { addr } => (*addr, 0),
        Call::Fork { .. } | Call::Exec { .. } | Call::Exit { .. } => (0, 0),
    }
}

/// One event as a JSON line (`{"type":"event",…}`, see
/// `docs/json-schema.md`). Fields that do not apply to the kind are left
/// out.
#[derive(Clone, Debug, Serialize)]
pub struct EventLine<'a> {
    pub schema_version: u32,
    pub time_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub kind: &'static str,
    /// Start of the range the call is about (for `brk`, the requested break).
    #[serde(serialize_with = "schema::hex")]
    pub addr: u64,
    pub len: u64,
    /// The raw return value: an address, 0, or `-errno`.
    pub result: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// mmap's address hint.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "schema::hex_opt"
    )]
    pub hint: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prot: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flags: Option<String>,
    /// mmap of a file: its descriptor and file offset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fd: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "schema::hex_opt"
    )]
    pub old_addr: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_len: Option<u64>,
    /// mremap with `MREMAP_FIXED`: the requested destination.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "schema::hex_opt"
    )]
    pub new_addr: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advice: Option<String>,
    /// set_vma_name: the name, `null` when the call clears it or when it
    /// could not be read (`name_unreadable`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<Option<&'a str>>,
    /// set_vma_name: the name pointer was not null but its string could
    /// not be read (neither in the kernel nor from the process): not a
    /// clear.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name_unreadable: Option<bool>,
    /// set_vma_name: the kernel refused the name (recorded anyway).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name_refused: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub child_pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filename: Option<&'a str>,
    /// The first frame that is not a libc or loader syscall wrapper.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call_site: Option<&'a Frame>,
    /// Every frame, innermost first.
    pub stack: &'a CallStack,
}

impl<'a> EventLine<'a> {
    pub fn new(ev: &'a Event, stack: &'a CallStack) -> EventLine<'a> {
        let (addr, len) = event_range(ev);
        let mut line = EventLine {
            schema_version: schema::SCHEMA_VERSION,
            time_ns: ev.time_ns,
            pid: ev.pid,
            tid: ev.tid,
            kind: ev.kind().as_str(),
            addr,
            len,
            result: ev.result,
            error: ev.errno().map(errno_name),
            hint: None,
            prot: None,
            flags: None,
            fd: None,
            offset: None,
            old_addr: None,
            old_len: None,
            new_addr: None,
            advice: None,
            name: None,
            name_unreadable: None,
            name_refused: None,
            child_pid: None,
            filename: None,
            call_site: stack.call_site(),
            stack,
        };
        match &ev.call {
            Call::Mmap {
                addr: hint,
                prot,
                flags,
                fd,
                offset,
                ..
            } => {
                line.hint = Some(*hint);
                line.prot = Some(prot_string(*prot));
                line.flags = Some(mmap_flags_string(*flags));
                if flags & libc::MAP_ANONYMOUS as u32 == 0 {
                    line.fd = Some(*fd);
                    line.offset = Some(*offset);
                }
            }
            Call::Mprotect { prot, .. } => line.prot = Some(prot_string(*prot)),
            Call::Mremap {
                old_addr,
                old_len,
                flags,
                new_addr,
                ..
            } => {
                line.old_addr = Some(*old_addr);
                line.old_len = Some(*old_len);
                line.flags = Some(mremap_flags_string(*flags));
                if flags & 2 != 0 {
                    line.new_addr = Some(*new_addr);
                }
            }
            Call::Madvise { advice, .. } => line.advice = Some(advice_string(*advice)),
            Call::SetVmaName { name, .. } => {
                line.name = Some(name.as_set());
                if *name == VmaName::Unreadable {
                    line.name_unreadable = Some(true);
                }
                line.name_refused = Some(ev.failed());
            }
            Call::Fork { child_pid, .. } => line.child_pid = Some(*child_pid),
            Call::Exec { filename } => line.filename = Some(filename),
            Call::Munmap { .. } | Call::Brk { .. } | Call::Exit { .. } => {}
        }
        line
    }
}

/// One event as a terminal line; with `verbose`, every frame follows on
/// its own line.
pub fn event_line(ev: &Event, stack: &CallStack, start_ns: u64, verbose: bool) -> String {
    let t = ev.time_ns.saturating_sub(start_ns) as f64 / 1e9;
    let (addr, len) = event_range(ev);
    let range = if len > 0 {
        format!("{addr:#014x}-{:#014x}", addr.saturating_add(len))
    } else if matches!(ev.call, Call::Brk { .. }) {
        format!("{addr:#014x}")
    } else {
        String::new()
    };
    let size = if len > 0 {
        units::human(len)
    } else {
        String::new()
    };
    let detail = match &ev.call {
        Call::Mmap {
            prot,
            flags,
            fd,
            offset,
            ..
        } => {
            let mut s = format!("{} {}", prot_string(*prot), mmap_flags_string(*flags));
            if flags & libc::MAP_ANONYMOUS as u32 == 0 {
                s.push_str(&format!(" fd={fd} off={offset:#x}"));
            }
            s
        }
        Call::Mprotect { prot, .. } => prot_string(*prot),
        Call::Mremap {
            old_addr,
            old_len,
            flags,
            ..
        } => format!(
            "from {old_addr:#x}+{} {}",
            units::human(*old_len),
            mremap_flags_string(*flags)
        ),
        Call::Madvise { advice, .. } => advice_string(*advice),
        Call::SetVmaName { name, .. } => {
            let n = match name {
                VmaName::Set(n) => format!("\"{}\"", printable(n)),
                VmaName::Cleared => "(clear)".into(),
                VmaName::Unreadable => "<unreadable>".into(),
            };
            if ev.failed() {
                format!("name {n} (kernel refused; recorded anyway)")
            } else {
                format!("name {n}")
            }
        }
        Call::Fork { child_pid, .. } => format!("child {child_pid}"),
        Call::Exec { filename } => printable(filename).into_owned(),
        Call::Exit { .. } => "process exit".into(),
        Call::Munmap { .. } | Call::Brk { .. } => String::new(),
    };
    let result = match ev.errno() {
        Some(e) => format!("= {}", errno_name(e)),
        None => match ev.call {
            Call::Mmap { .. } | Call::Mremap { .. } | Call::Brk { .. } => {
                format!("= {:#x}", ev.result)
            }
            Call::Fork { .. } | Call::Exec { .. } | Call::Exit { .. } => String::new(),
            _ => "= 0".into(),
        },
    };
    let site = stack.call_site().map(|f| f.display()).unwrap_or_default();
    let mut line = format!(
        "{t:10.6} {tid:>7} {kind:<12} {range:<31} {size:>9} {detail} {result}",
        tid = ev.tid,
        kind = ev.kind().as_str(),
    );
    if !site.is_empty() {
        line.push_str("  ");
        line.push_str(&site);
    }
    if verbose {
        for f in &stack.frames {
            line.push_str(&format!("\n{:>20} {:#x} {}", "", f.address, f.display()));
        }
    }
    line
}

/// Totals over a tracing session (the JSON `{"type":"summary",…}` line).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    /// Events by kind.
    pub events: BTreeMap<&'static str, u64>,
    /// Bytes newly mapped by successful mmap, mremap growth and brk growth.
    pub bytes_mapped: u64,
    /// Bytes released by successful munmap, mremap shrink and brk shrink.
    pub bytes_unmapped: u64,
    pub failed_calls: u64,
    pub lost_events: u64,
    pub lost: Lost,
    /// Event lines not printed because the reader was too slow (the
    /// ledger and the reports still saw the events).
    pub display_dropped: u64,
}

impl Summary {
    /// Count one event. `prev_brk` is the last known break of the process,
    /// for sizing brk changes.
    pub fn add(&mut self, ev: &Event, prev_brk: Option<u64>) {
        *self.events.entry(ev.kind().as_str()).or_default() += 1;
        if ev.failed() {
            self.failed_calls += 1;
            return;
        }
        let page = |n: u64| n.div_ceil(4096) * 4096;
        match &ev.call {
            Call::Mmap { len, .. } => self.bytes_mapped += page(*len),
            Call::Munmap { len, .. } => self.bytes_unmapped += page(*len),
            Call::Mremap {
                old_len, new_len, ..
            } => {
                let (o, n) = (page(*old_len), page(*new_len));
                if n > o {
                    self.bytes_mapped += n - o;
                } else {
                    self.bytes_unmapped += o - n;
                }
            }
            Call::Brk { .. } => {
                if let Some(prev) = prev_brk {
                    let new = ev.result as u64;
                    if new > prev {
                        self.bytes_mapped += page(new) - page(prev);
                    } else {
                        self.bytes_unmapped += page(prev) - page(new);
                    }
                }
            }
            _ => {}
        }
    }

    pub fn text(&self) -> String {
        let mut s = String::from("\n=== Summary ===\n");
        let total: u64 = self.events.values().sum();
        s.push_str(&format!("events: {total}"));
        for (k, n) in &self.events {
            s.push_str(&format!("  {k}={n}"));
        }
        s.push('\n');
        s.push_str(&format!(
            "mapped: {}  unmapped: {}  failed calls: {}\n",
            units::human(self.bytes_mapped),
            units::human(self.bytes_unmapped),
            self.failed_calls
        ));
        s.push_str(&format!(
            "lost events: {} (ring buffer full: {}, pending table full: {})\n",
            self.lost_events, self.lost.ring_buffer, self.lost.pending
        ));
        if self.lost.unapplied + self.lost.undecodable > 0 {
            s.push_str(&format!(
                "  of which not applied when tracing ended: {}, undecodable: {}\n",
                self.lost.unapplied, self.lost.undecodable
            ));
        }
        if self.display_dropped > 0 {
            s.push_str(&format!(
                "event lines not shown (output too slow; see --output-buffer): {}\n",
                self.display_dropped
            ));
        }
        if self.lost.untraced_children > 0 {
            s.push_str(&format!(
                "children left untraced (id unreadable or above pid_max): {}\n",
                self.lost.untraced_children
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_prot_and_flags() {
        assert_eq!(prot_string(3), "rw-");
        assert_eq!(prot_string(0), "---");
        assert_eq!(mmap_flags_string(0x22), "PRIVATE|ANONYMOUS");
        assert_eq!(mmap_flags_string(0x32), "PRIVATE|FIXED|ANONYMOUS");
        assert_eq!(mremap_flags_string(3), "MAYMOVE|FIXED");
    }
}
