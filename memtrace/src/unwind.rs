//! Full user-stack unwinding without frame pointers.
//!
//! The eBPF side copies the registers and the top of the user stack at each
//! syscall; here framehop unwinds that window with the `.eh_frame` unwind
//! tables of the modules mapped in the process (loaded once per file and
//! shared between processes).

use std::{
    collections::{HashMap, HashSet},
    ops::Range,
    sync::Arc,
};

use framehop::{
    ExplicitModuleSectionInfo, FrameAddress, Module, Unwinder as _,
    x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64},
};
use object::{Object as _, ObjectSection as _, ObjectSegment as _};

use crate::event::UserStack;

/// Deepest stack kept per event.
pub const MAX_FRAMES: usize = 64;

type Data = Arc<[u8]>;

/// Unwind tables of one ELF file, plus its loadable segments to place it.
#[derive(Clone)]
struct ElfUnwindInfo {
    sections: ExplicitModuleSectionInfo<Data>,
    /// (file offset range, stated virtual address of its start) per PT_LOAD.
    segments: Vec<(Range<u64>, u64)>,
}

struct ProcUnwinder {
    unwinder: UnwinderX86_64<Data>,
    cache: CacheX86_64,
    /// Start addresses of the mappings already added (or found unusable).
    seen: HashSet<u64>,
}

/// Unwinds user stacks of traced processes.
#[derive(Default)]
pub struct Unwinder {
    procs: HashMap<u32, ProcUnwinder>,
    /// Per file path; `None` when the file could not be read or parsed.
    files: HashMap<String, Option<ElfUnwindInfo>>,
}

impl Unwinder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Addresses of the stack, innermost first: the instruction pointer,
    /// then return addresses. Stops where the window or the unwind
    /// information ends. The process must be alive (its maps are read to
    /// find modules).
    pub fn unwind(&mut self, pid: u32, stack: &UserStack) -> Vec<u64> {
        let needs_modules = self
            .procs
            .get(&pid)
            .is_none_or(|p| p.seen.is_empty() || p.unwinder.max_known_code_address() < stack.ip);
        if needs_modules {
            self.load_modules(pid);
        }
        let mut out = self.unwind_loaded(pid, stack);
        // A return address in a module loaded after the last refresh (dlopen)
        // stops the walk early; refresh once and retry.
        if out.len() < 2 && !needs_modules {
            self.load_modules(pid);
            out = self.unwind_loaded(pid, stack);
        }
        out
    }

    fn unwind_loaded(&mut self, pid: u32, stack: &UserStack) -> Vec<u64> {
        let Some(proc) = self.procs.get_mut(&pid) else {
            return vec![stack.ip];
        };
        let regs = UnwindRegsX86_64::new(stack.ip, stack.sp, stack.bp);
        let mut read = |addr: u64| stack.read_u64(addr).ok_or(());
        let mut iter = proc
            .unwinder
            .iter_frames(stack.ip, regs, &mut proc.cache, &mut read);
        let mut out = Vec::new();
        while out.len() < MAX_FRAMES {
            match iter.next() {
                Ok(Some(FrameAddress::InstructionPointer(ip))) => out.push(ip),
                Ok(Some(FrameAddress::ReturnAddress(ra))) => out.push(ra.get()),
                Ok(None) | Err(_) => break,
            }
        }
        if out.is_empty() {
            out.push(stack.ip);
        }
        out
    }

    /// Forget a process (exited, or exec replaced its modules).
    pub fn forget(&mut self, pid: u32) {
        self.procs.remove(&pid);
    }

    /// Add every executable file mapping of `pid` not added yet.
    fn load_modules(&mut self, pid: u32) {
        let Ok(bytes) = std::fs::read(format!("/proc/{pid}/maps")) else {
            return;
        };
        let Ok(vmas) = crate::smaps::parse(&bytes) else {
            return;
        };
        let proc = self.procs.entry(pid).or_insert_with(|| ProcUnwinder {
            unwinder: UnwinderX86_64::new(),
            cache: CacheX86_64::new(),
            seen: HashSet::new(),
        });
        for vma in vmas {
            if !vma.perms.exec || !vma.name.starts_with('/') || !proc.seen.insert(vma.start) {
                continue;
            }
            let info = self
                .files
                .entry(vma.name.clone())
                .or_insert_with(|| load_elf(pid, &vma.name))
                .clone();
            let Some(info) = info else { continue };
            // The PT_LOAD holding this mapping's file offset places the
            // module: base = start - (p_vaddr + (offset - p_offset)).
            let Some(base) = info.segments.iter().find_map(|(range, vaddr)| {
                range
                    .contains(&vma.offset)
                    .then(|| vma.start.wrapping_sub(vaddr + (vma.offset - range.start)))
            }) else {
                continue;
            };
            let module = Module::new(vma.name.clone(), vma.start..vma.end, base, info.sections);
            proc.unwinder.add_module(module);
        }
    }
}

/// Read the unwind sections of the ELF file at `path` as process `pid`
/// sees it (through its root, so containers work).
fn load_elf(pid: u32, path: &str) -> Option<ElfUnwindInfo> {
    let data = std::fs::read(format!("/proc/{pid}/root{path}"))
        .or_else(|_| std::fs::read(path))
        .ok()?;
    let file = object::File::parse(&*data).ok()?;
    let section = |name: &str| {
        let s = file.section_by_name(name)?;
        let range = s.address()..s.address() + s.size();
        let bytes: Data = Arc::from(s.data().ok()?);
        Some((range, bytes))
    };
    let text = section(".text");
    let eh_frame = section(".eh_frame");
    let eh_frame_hdr = section(".eh_frame_hdr");
    let got = file
        .section_by_name(".got")
        .map(|s| s.address()..s.address() + s.size());
    let debug_frame = section(".debug_frame");
    let sections = ExplicitModuleSectionInfo {
        base_svma: 0,
        text_svma: text.as_ref().map(|t| t.0.clone()),
        text: text.map(|t| t.1),
        got_svma: got,
        eh_frame_svma: eh_frame.as_ref().map(|e| e.0.clone()),
        eh_frame: eh_frame.map(|e| e.1),
        eh_frame_hdr_svma: eh_frame_hdr.as_ref().map(|e| e.0.clone()),
        eh_frame_hdr: eh_frame_hdr.map(|e| e.1),
        debug_frame: debug_frame.map(|d| d.1),
        ..Default::default()
    };
    let segments = file
        .segments()
        .map(|seg| {
            let (off, size) = seg.file_range();
            (off..off + size.max(1), seg.address())
        })
        .collect();
    Some(ElfUnwindInfo { sections, segments })
}
