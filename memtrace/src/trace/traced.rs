//! The traced set: which processes the eBPF programs trace, and how.
//!
//! The kernel side's `TRACED` map is an array of one
//! [`memtrace_common::traced`] byte per process id (0: untraced), so every
//! program run checks its process with an inlined load. memtrace sizes it
//! for the `pid_max` at load and writes it through a shared memory mapping
//! of the map, one byte at a time, as the fork and exit programs do: a
//! write never rewrites another pid's byte, so userspace and the kernel
//! side cannot undo each other's changes.

use std::{
    fs, io,
    os::fd::{AsFd as _, AsRawFd as _},
    sync::atomic::{AtomicU8, Ordering},
};

use aya::maps::{Map, MapData};
use memmap2::{MmapOptions, MmapRaw};
use memtrace_common::{TRACED_PER_ELEMENT, traced};

/// Where the kernel says how high process ids go.
const PID_MAX: &str = "/proc/sys/kernel/pid_max";
/// The kernel's ceiling for `pid_max` on 64-bit machines, when it cannot
/// be read.
const PID_MAX_LIMIT: u32 = 1 << 22;

/// Elements of the `TRACED` array for pids below `pid_max`.
pub fn elements(pid_max: u32) -> u32 {
    pid_max.div_ceil(TRACED_PER_ELEMENT).max(1)
}

/// The `pid_max` to size the set for: the kernel's now. A pid_max raised
/// during a session leaves the new, higher pids untraced: children are
/// counted as untraced, and tracing such a pid is refused.
pub fn pid_max() -> u32 {
    fs::read_to_string(PID_MAX)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(PID_MAX_LIMIT)
}

/// The traced set, mapped into memtrace.
pub struct TracedSet {
    // Dropped before the map it maps.
    bytes: MmapRaw,
    _map: MapData,
}

/// Why the set refused a pid.
#[derive(Debug, thiserror::Error)]
#[error("pid {pid} is above the {limit} pids the traced set was sized for (pid_max raised?)")]
pub struct PidOutOfRange {
    pub pid: u32,
    pub limit: usize,
}

impl TracedSet {
    /// Map the `TRACED` array map.
    pub fn new(map: Map) -> io::Result<TracedSet> {
        let Map::Array(map) = map else {
            return Err(io::Error::other("TRACED is not an array map"));
        };
        let info = map.info().map_err(io::Error::other)?;
        let len = info.max_entries() as usize * TRACED_PER_ELEMENT as usize;
        // An array created with BPF_F_MMAPABLE: the kernel maps its `len`
        // bytes of values from offset 0.
        let bytes = MmapOptions::new()
            .len(len)
            .map_raw(map.fd().as_fd().as_raw_fd())?;
        Ok(TracedSet { bytes, _map: map })
    }

    /// Pids the set can hold.
    pub fn limit(&self) -> usize {
        self.bytes.len()
    }

    fn byte(&self, pid: u32) -> Result<&AtomicU8, PidOutOfRange> {
        let limit = self.limit();
        if pid as usize >= limit {
            return Err(PidOutOfRange { pid, limit });
        }
        // SAFETY: in bounds of the shared mapping, which lives as long as
        // `self`; the kernel side writes these bytes with single-byte
        // stores too, so atomic bytes are the right view of them.
        Ok(unsafe { AtomicU8::from_ptr(self.bytes.as_mut_ptr().add(pid as usize)) })
    }

    /// Trace `pid`.
    pub fn add(&self, pid: u32) -> Result<(), PidOutOfRange> {
        self.byte(pid)?.store(traced::TRACED, Ordering::Release);
        Ok(())
    }

    /// Stop tracing `pid`.
    pub fn remove(&self, pid: u32) {
        if let Ok(byte) = self.byte(pid) {
            byte.store(0, Ordering::Release);
        }
    }

    /// Set `pid`'s bits to `bits` if it is still traced: the exit program
    /// may clear it at any moment, and a pid it cleared must stay clear (a
    /// later process may reuse it).
    pub fn update_if_traced(&self, pid: u32, bits: u8) {
        let Ok(byte) = self.byte(pid) else { return };
        let _ = byte.fetch_update(Ordering::AcqRel, Ordering::Acquire, |old| {
            (old != 0).then_some(bits)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_set_holds_every_pid_below_pid_max() {
        assert_eq!(elements(32768) * TRACED_PER_ELEMENT, 32768);
        assert_eq!(elements(32769) * TRACED_PER_ELEMENT, 32768 + 8);
        assert_eq!(elements(0), 1);
        assert!(pid_max() > 300, "pid_max is at least 301 on Linux");
    }
}
