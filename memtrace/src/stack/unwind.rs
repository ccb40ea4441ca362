//! Full user-stack unwinding without frame pointers.
//!
//! The eBPF side copies the registers and the top of the user stack at each
//! syscall; here framehop unwinds that window with the `.eh_frame` unwind
//! tables of the modules mapped in the process (loaded once per file and
//! shared between processes).

use std::{collections::HashMap, ops::Range, sync::Arc};

use framehop::{
    ExplicitModuleSectionInfo, FrameAddress, Module, Unwinder as _,
    x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64},
};
use object::{Object as _, ObjectSection as _, ObjectSegment as _};

use crate::{proc::maps::Mapping, trace::event::UserStack};

/// Lowest address a return address can have (mmap_min_addr is 64 KiB).
const MIN_CODE_ADDRESS: u64 = 0x10000;

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
    /// Mappings already added (or found unusable), by start address, with
    /// the file (where memtrace opens it) and offset they held: a different
    /// file at the same address (dlclose, then dlopen) replaces the module.
    seen: HashMap<u64, (Arc<str>, u64)>,
}

/// Unwinds user stacks of traced processes.
#[derive(Default)]
pub struct Unwinder {
    procs: HashMap<u32, ProcUnwinder>,
    /// Per file (where memtrace opens it); `None` when the file could not be
    /// read or parsed.
    files: HashMap<String, Option<ElfUnwindInfo>>,
}

impl Unwinder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Addresses of the stack, innermost first: the instruction pointer,
    /// then return addresses. Stops where the window or the unwind
    /// information ends. `maps` are the process's file mappings; modules
    /// not seen before are added from them.
    pub fn unwind(&mut self, pid: u32, maps: &[Mapping], stack: &UserStack) -> Vec<u64> {
        self.add_modules(pid, maps);
        self.unwind_loaded(pid, stack)
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
                // No code lives in the first pages: a walk that gets there
                // has run off the end of the real frames.
                Ok(Some(FrameAddress::ReturnAddress(ra))) if ra.get() < MIN_CODE_ADDRESS => break,
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

    /// Add every executable file mapping in `maps` not added yet.
    fn add_modules(&mut self, pid: u32, maps: &[Mapping]) {
        let proc = self.procs.entry(pid).or_insert_with(|| ProcUnwinder {
            unwinder: UnwinderX86_64::new(),
            cache: CacheX86_64::new(),
            seen: HashMap::new(),
        });
        for m in maps {
            if !m.exec {
                continue;
            }
            let held = (m.file.clone(), m.offset);
            match proc.seen.insert(m.start, held.clone()) {
                Some(old) if old == held => continue,
                Some(_) => proc.unwinder.remove_module(m.start),
                None => {}
            }
            let info = self
                .files
                .entry(m.file.to_string())
                .or_insert_with(|| load_elf(&m.file))
                .clone();
            let Some(info) = info else { continue };
            // The PT_LOAD holding this mapping's file offset places the
            // module: base = start - (p_vaddr + (offset - p_offset)).
            let Some(base) = info.segments.iter().find_map(|(range, vaddr)| {
                range.contains(&m.offset).then(|| {
                    m.start
                        .wrapping_sub(vaddr.wrapping_add(m.offset - range.start))
                })
            }) else {
                continue;
            };
            let module = Module::new(m.path.to_string(), m.start..m.end, base, info.sections);
            proc.unwinder.add_module(module);
        }
    }
}

/// Largest file read for unwind tables. The file comes from the target:
/// it may be a device (`/dev/zero` mapped executable) or a huge sparse
/// file, so only regular files are opened and only the sections needed
/// are read, each at most [`MAX_SECTION_BYTES`].
const MAX_FILE_BYTES: u64 = 8 << 30;
/// Largest section copied out of a module (`.text` of the largest real
/// binaries is a few hundred MiB).
const MAX_SECTION_BYTES: u64 = 512 << 20;

/// Read the unwind sections of the ELF file at `path`, reading only the
/// headers and those sections.
fn load_elf(path: &str) -> Option<ElfUnwindInfo> {
    let file = std::fs::File::open(path).ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() || meta.len() > MAX_FILE_BYTES {
        return None;
    }
    let cache = object::ReadCache::new(file);
    let file = object::File::parse(&cache).ok()?;
    let section = |name: &str| {
        let s = file.section_by_name(name)?;
        if s.size() > MAX_SECTION_BYTES {
            return None;
        }
        let range = s.address()..s.address().checked_add(s.size())?;
        let bytes: Data = Arc::from(s.data().ok()?);
        Some((range, bytes))
    };
    let text = section(".text");
    let eh_frame = section(".eh_frame");
    let eh_frame_hdr = section(".eh_frame_hdr");
    let got = file
        .section_by_name(".got")
        .and_then(|s| Some(s.address()..s.address().checked_add(s.size())?));
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
            (off..off.saturating_add(size.max(1)), seg.address())
        })
        .collect();
    Some(ElfUnwindInfo { sections, segments })
}
