//! Call stacks of events: the kernel's frame-pointer stack joined with the
//! return address read at the user stack pointer, then symbolized.

use std::{collections::HashMap, sync::Arc};

use serde::Serialize;

use super::{
    symbolize::{Frame, Symbolizer},
    unwind::{StackCheck, Unwinder},
};
use crate::{
    proc::maps::{Loc, Mapping},
    trace::event::Event,
};

/// Interned raw call stacks: each distinct stack is stored once and named
/// by a small id, which events and ledger origins carry.
///
/// Each stack also belongs to a *call site*: the same sequence of code
/// locations, (module, file offset) where the address is in a mapped file
/// and the bare address otherwise. Stacks of the same code in processes
/// with different layouts (ASLR after exec) are different stacks but one
/// call site; the reports group by call site, decided here once.
#[derive(Default)]
pub struct StackTable {
    stacks: Vec<Arc<[Loc]>>,
    index: HashMap<Arc<[Loc]>, u32>,
    /// Call site of each stack, by stack id.
    sites: Vec<u32>,
    /// Stacks that stand for memory no call made (what exec mapped),
    /// named instead: by stack id.
    labels: HashMap<u32, Arc<str>>,
    site_index: HashMap<Vec<SiteFrame>, u32>,
}

/// A code location independent of where its module was mapped.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum SiteFrame {
    InModule(Arc<str>, u64),
    /// JIT code named by the perf map: the same function wherever the JIT
    /// placed it.
    Jit(Arc<str>),
    Address(u64),
    Label(Arc<str>),
}

impl StackTable {
    pub fn intern(&mut self, stack: Vec<Loc>) -> u32 {
        if let Some(id) = self.index.get(stack.as_slice()) {
            return *id;
        }
        let id = self.stacks.len() as u32;
        let key: Vec<SiteFrame> = stack
            .iter()
            .map(|l| match &l.module {
                Some((path, off)) => SiteFrame::InModule(path.clone(), *off),
                None => match &l.jit {
                    Some(name) => SiteFrame::Jit(name.clone()),
                    None => SiteFrame::Address(l.addr),
                },
            })
            .collect();
        let next_site = self.site_index.len() as u32;
        let site = *self.site_index.entry(key).or_insert(next_site);
        self.sites.push(site);
        let stack: Arc<[Loc]> = stack.into();
        self.stacks.push(stack.clone());
        self.index.insert(stack, id);
        id
    }

    /// A stack that is only a name, for memory that no traced call made
    /// (e.g. "exec image .bss of /bin/x"); one per distinct label.
    pub fn intern_label(&mut self, label: &str) -> u32 {
        let key = vec![SiteFrame::Label(Arc::from(label))];
        if let Some(site) = self.site_index.get(&key)
            && let Some((id, _)) = self
                .labels
                .iter()
                .find(|(id, _)| self.sites.get(**id as usize) == Some(site))
        {
            return *id;
        }
        let id = self.stacks.len() as u32;
        let next_site = self.site_index.len() as u32;
        let site = *self.site_index.entry(key).or_insert(next_site);
        self.sites.push(site);
        self.stacks.push(Arc::from(Vec::new()));
        self.labels.insert(id, Arc::from(label));
        id
    }

    /// The name of a labelled stack ([`StackTable::intern_label`]).
    pub fn label(&self, id: u32) -> Option<&str> {
        self.labels.get(&id).map(|l| &**l)
    }

    /// The symbolized stack `id`: a labelled stack is one frame bearing
    /// its label.
    pub fn call_stack(&self, id: u32, sym: &mut Symbolizer) -> CallStack {
        match self.label(id) {
            Some(label) => CallStack {
                frames: vec![Frame {
                    address: 0,
                    function: Some(label.to_owned()),
                    file: None,
                    line: None,
                    module: None,
                    module_offset: None,
                    inlined: false,
                }],
            },
            None => CallStack::symbolize(sym, self.get(id)),
        }
    }

    /// The call site of stack `id`.
    pub fn site(&self, id: u32) -> Option<u32> {
        self.sites.get(id as usize).copied()
    }

    pub fn get(&self, id: u32) -> &[Loc] {
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
///
/// A stack unwound from a full window comes with what its unwinding read
/// (see [`StackCheck`]), for the kernel side's stack cache.
pub fn resolve_raw_stack(
    ev: &Event,
    maps: &[Mapping],
    unwinder: &mut Unwinder,
    kernel_stack: impl FnOnce(u32) -> Vec<u64>,
) -> (Vec<u64>, Option<StackCheck>) {
    if let Some(user) = &ev.user {
        let (unwound, check) = unwinder.unwind_checked(ev.pid, maps, user);
        if unwound.len() >= 2 {
            // A frame-pointer stack too (Go): it goes on past a stack
            // switch where the window's unwinding ends.
            if let Some(id) = ev.stack_id {
                return (continue_with(unwound, &kernel_stack(id)), None);
            }
            return (unwound, check);
        }
    }
    (event_raw_stack(ev, kernel_stack), None)
}

/// `unwound` continued with the frames of the frame-pointer stack `walked`
/// past `unwound`'s last frame, when `walked` holds that frame (its first
/// entry, the instruction pointer, aside); else `unwound` alone: a walk
/// that does not meet the unwinding cannot be joined to it.
pub fn continue_with(mut unwound: Vec<u64>, walked: &[u64]) -> Vec<u64> {
    let Some(last) = unwound.last() else {
        return unwound;
    };
    let Some(at) = walked.iter().skip(1).position(|a| a == last) else {
        return unwound;
    };
    unwound.extend_from_slice(&walked[at + 2..]);
    unwound
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
    /// Symbolize a located stack (innermost first: the instruction
    /// pointer, then return addresses).
    pub fn symbolize(sym: &mut Symbolizer, stack: &[Loc]) -> CallStack {
        let frames = sym.symbolize(stack, true).into_iter().flatten().collect();
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

    /// Go: the window's unwinding ends at `runtime.systemstack` (0x30); the
    /// frame-pointer walk goes on to the goroutine's frames.
    #[test]
    fn a_frame_pointer_walk_continues_the_unwinding_where_it_meets_it() {
        let unwound = vec![0x10, 0x20, 0x30];
        let walked = [0x10, 0x25, 0x30, 0x40, 0x50];
        assert_eq!(
            continue_with(unwound.clone(), &walked),
            vec![0x10, 0x20, 0x30, 0x40, 0x50]
        );
        // Meeting only at the instruction pointer (a walk over garbage
        // frame pointers) or not at all: nothing is joined.
        assert_eq!(continue_with(vec![0x10], &[0x10, 0x99]), vec![0x10]);
        assert_eq!(continue_with(unwound.clone(), &[0x10, 0x99]), unwound);
        assert_eq!(continue_with(unwound.clone(), &[]), unwound);
        assert_eq!(continue_with(unwound.clone(), &[0x10, 0x30]), unwound);
    }

    #[test]
    fn one_call_site_across_layouts() {
        let lib: Arc<str> = Arc::from("/usr/lib/libfoo.so");
        let at = |base: u64, off: u64| Loc {
            addr: base + off,
            module: Some((lib.clone(), off)),
            file: None,
            jit: None,
        };
        let mut t = StackTable::default();
        // The same code mapped at two bases (two processes after exec):
        // two stacks, one call site.
        let a = t.intern(vec![at(0x7f00_0000_0000, 0x10), at(0x7f00_0000_0000, 0x20)]);
        let b = t.intern(vec![at(0x7e00_0000_0000, 0x10), at(0x7e00_0000_0000, 0x20)]);
        assert_ne!(a, b);
        assert_eq!(t.site(a), t.site(b));
        // Other code is another site; anonymous code is told by address.
        let c = t.intern(vec![at(0x7f00_0000_0000, 0x30)]);
        assert_ne!(t.site(a), t.site(c));
        let jit = |addr| Loc {
            addr,
            module: None,
            file: None,
            jit: None,
        };
        let d = t.intern(vec![jit(0x1000)]);
        let e = t.intern(vec![jit(0x2000)]);
        assert_ne!(t.site(d), t.site(e));
        assert_eq!(t.intern(vec![jit(0x1000)]), d);
        assert_eq!(t.site(99), None);
    }

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
