//! Where a session's events come from: the eBPF [`Tracer`], or anything else
//! that yields decoded events (a recording, a test's script).

use std::time::Duration;

use super::{Lost, TraceError, Tracer, event::Event};

/// What an unwinding read from a full stack window: the words (by offset
/// from the stack pointer) and the frame pointer, when it was read. The
/// kernel side's stack cache compares these (`memtrace_common::CachedStack`);
/// userspace's unwinder makes them (`crate::stack::unwind`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StackCheck {
    /// (offset from the stack pointer, word there), each offset once.
    pub words: Vec<(u16, u64)>,
    /// The frame pointer, when the unwinding depended on it.
    pub bp: Option<u64>,
}

/// A source of decoded events and of what the kernel side knows about them.
pub trait EventSource {
    /// Wait up to `timeout` for events, then move every waiting one into
    /// `out`; returns how many arrived.
    fn wait_events(&mut self, timeout: Duration, out: &mut Vec<Event>) -> usize;
    /// Move every event delivered so far into `out`, without waiting.
    /// Move what has arrived into `out`; `true` when nothing is left to
    /// deliver ([`Tracer::drain`]).
    fn drain(&mut self, out: &mut Vec<Event>) -> bool;
    /// The session applied delivered events of `bytes` in all
    /// ([`Event::footprint`]): a bounded source may take more.
    fn applied(&mut self, _bytes: usize) {}
    /// Events the source could not deliver so far.
    fn lost(&self) -> Lost;
    /// The kernel's frame-pointer stack recorded under `stack_id`.
    fn stack(&self, stack_id: u32) -> Vec<u64>;
    /// Start following process `pid`.
    fn add_pid(&mut self, pid: u32) -> Result<(), TraceError>;
    /// Stop following `pid`.
    fn remove_pid(&mut self, pid: u32);
    /// Calls of `pid` made at user `ip` and `sp` whose stack passes `check`
    /// unwind to stack `id`: a source that can recognise them delivers
    /// them with `Event::call_stack` set to `id` and no window.
    fn remember_stack(&mut self, _pid: u32, _ip_sp: (u64, u64), _check: &StackCheck, _id: u32) {}
    /// Forget what [`EventSource::remember_stack`] told about `pid` (it
    /// exited, or exec replaced its code).
    fn forget_stacks(&mut self, _pid: u32) {}
    /// Whether `pid`'s code keeps frame pointers (Go), so a frame-pointer
    /// walk can take its stacks further than the window.
    fn set_frame_pointers(&mut self, _pid: u32, _on: bool) {}
}

impl EventSource for Tracer {
    fn wait_events(&mut self, timeout: Duration, out: &mut Vec<Event>) -> usize {
        Tracer::wait_events(self, timeout, out)
    }
    fn drain(&mut self, out: &mut Vec<Event>) -> bool {
        Tracer::drain(self, out)
    }
    fn applied(&mut self, bytes: usize) {
        Tracer::applied(self, bytes)
    }
    fn lost(&self) -> Lost {
        Tracer::lost(self)
    }
    fn stack(&self, stack_id: u32) -> Vec<u64> {
        Tracer::stack(self, stack_id)
    }
    fn add_pid(&mut self, pid: u32) -> Result<(), TraceError> {
        Tracer::add_pid(self, pid)
    }
    fn remove_pid(&mut self, pid: u32) {
        Tracer::remove_pid(self, pid)
    }
    fn remember_stack(&mut self, pid: u32, ip_sp: (u64, u64), check: &StackCheck, id: u32) {
        Tracer::remember_stack(self, pid, ip_sp, check, id)
    }
    fn forget_stacks(&mut self, pid: u32) {
        Tracer::forget_stacks(self, pid)
    }
    fn set_frame_pointers(&mut self, pid: u32, on: bool) {
        Tracer::set_frame_pointers(self, pid, on)
    }
}
