//! Call stacks of events: the kernel's frame-pointer stack joined with the
//! return address read at the user stack pointer, then symbolized.

use std::{collections::HashMap, sync::Arc};

use serde::Serialize;

use crate::{
    event::Event,
    symbolize::{Frame, Symbolizer},
    unwind::Unwinder,
};

/// Interned raw call stacks: each distinct stack is stored once and named
/// by a small id, which events and ledger origins carry.
#[derive(Default)]
pub struct StackTable {
    stacks: Vec<Arc<[u64]>>,
    index: HashMap<Arc<[u64]>, u32>,
}

impl StackTable {
    pub fn intern(&mut self, raw: Vec<u64>) -> u32 {
        if let Some(id) = self.index.get(raw.as_slice()) {
            return *id;
        }
        let id = self.stacks.len() as u32;
        let raw: Arc<[u64]> = raw.into();
        self.stacks.push(raw.clone());
        self.index.insert(raw, id);
        id
    }

    pub fn get(&self, id: u32) -> &[u64] {
        self.stacks.get(id as usize).map(|s| &s[..]).unwrap_or(&[])
    }

    pub fn len(&self) -> usize {
        self.stacks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.stacks.is_empty()
    }
}

/// The raw call stack of an event: unwound from the captured user stack
/// when that works, else the kernel's frame-pointer stack joined with the
/// return address at the stack pointer.
pub fn resolve_raw_stack(
    ev: &Event,
    unwinder: &mut Unwinder,
    kernel_stack: impl FnOnce(u32) -> Vec<u64>,
) -> Vec<u64> {
    if let Some(user) = &ev.user {
        let unwound = unwinder.unwind(ev.pid, user);
        if unwound.len() >= 2 {
            return unwound;
        }
    }
    event_raw_stack(ev, kernel_stack)
}

/// Raw return addresses of an event's call stack, innermost first.
///
/// `kernel_stack[0]` is the instruction in the syscall wrapper. Wrappers in
/// libc are leaf functions without a frame, so a frame-pointer walk skips
/// their caller; the word at the stack pointer at entry (`ret_addr`) is
/// exactly that caller, so it goes second unless the walk already has it.
pub fn raw_stack(kernel_stack: &[u64], ip: u64, ret_addr: Option<u64>) -> Vec<u64> {
    let mut out = Vec::with_capacity(kernel_stack.len() + 2);
    match kernel_stack.first() {
        Some(first) => out.push(*first),
        None if ip != 0 => out.push(ip),
        None => {}
    }
    if let Some(ret) = ret_addr
        && ret != 0
        && kernel_stack.get(1) != Some(&ret)
    {
        out.push(ret);
    }
    out.extend(kernel_stack.iter().skip(1).copied());
    out
}

/// A symbolized call stack.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct CallStack {
    pub frames: Vec<Frame>,
}

impl CallStack {
    /// Symbolize `raw` (as returned by [`raw_stack`]) in process `pid`.
    ///
    /// Return addresses point after the call instruction; they are looked
    /// up one byte earlier so the line is the call's, not the next one's.
    pub fn symbolize(sym: &mut Symbolizer, pid: u32, raw: &[u64]) -> CallStack {
        let lookup: Vec<u64> = raw
            .iter()
            .enumerate()
            .map(|(i, a)| if i == 0 { *a } else { a.saturating_sub(1) })
            .collect();
        let mut frames = Vec::new();
        for (i, group) in sym.symbolize(pid, &lookup).into_iter().enumerate() {
            let orig = raw[i];
            // A bogus return address (the wrapper did build a frame) lands
            // outside any code; drop it rather than show noise.
            if i == 1
                && group
                    .iter()
                    .all(|f| f.function.is_none() && f.module.is_none())
            {
                continue;
            }
            frames.extend(group.into_iter().map(|mut f| {
                f.address = orig;
                f
            }));
        }
        CallStack { frames }
    }

    /// The first frame that is not a libc or loader syscall wrapper: the
    /// call site users care about.
    pub fn call_site(&self) -> Option<&Frame> {
        self.frames
            .iter()
            .find(|f| !f.is_syscall_wrapper())
            .or_else(|| self.frames.first())
    }
}

/// The raw stack of an event, fetching the kernel stack with `stack_of`.
pub fn event_raw_stack(ev: &Event, stack_of: impl FnOnce(u32) -> Vec<u64>) -> Vec<u64> {
    let kernel = ev.stack_id.map(stack_of).unwrap_or_default();
    raw_stack(&kernel, ev.ip, ev.ret_addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_address_goes_second() {
        assert_eq!(raw_stack(&[10, 30, 40], 10, Some(20)), vec![10, 20, 30, 40]);
    }

    #[test]
    fn return_address_not_duplicated() {
        assert_eq!(raw_stack(&[10, 20, 30], 10, Some(20)), vec![10, 20, 30]);
    }

    #[test]
    fn no_kernel_stack_uses_ip() {
        assert_eq!(raw_stack(&[], 10, Some(20)), vec![10, 20]);
        assert_eq!(raw_stack(&[], 0, None), Vec::<u64>::new());
    }
}
