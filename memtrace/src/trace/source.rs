//! Where a session's events come from: the eBPF [`Tracer`], or anything else
//! that yields decoded events (a recording, a test's script).

use std::time::Duration;

use super::{Lost, TraceError, Tracer, event::Event};

/// A source of decoded events and of what the kernel side knows about them.
pub trait EventSource {
    /// Wait up to `timeout` for events, then move every waiting one into
    /// `out`; returns how many arrived.
    fn wait_events(&mut self, timeout: Duration, out: &mut Vec<Event>) -> usize;
    /// Move every event delivered so far into `out`, without waiting.
    fn drain(&mut self, out: &mut Vec<Event>) -> usize;
    /// Events the source could not deliver so far.
    fn lost(&self) -> Lost;
    /// The kernel's frame-pointer stack recorded under `stack_id`.
    fn stack(&self, stack_id: u32) -> Vec<u64>;
    /// Start following process `pid`.
    fn add_pid(&mut self, pid: u32) -> Result<(), TraceError>;
    /// Stop following `pid`.
    fn remove_pid(&mut self, pid: u32);
}

impl EventSource for Tracer {
    fn wait_events(&mut self, timeout: Duration, out: &mut Vec<Event>) -> usize {
        Tracer::wait_events(self, timeout, out)
    }
    fn drain(&mut self, out: &mut Vec<Event>) -> usize {
        Tracer::drain(self, out)
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
}
