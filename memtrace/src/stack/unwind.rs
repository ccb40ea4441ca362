//! Full user-stack unwinding without frame pointers.
//!
//! The eBPF side copies the registers and the top of the user stack at each
//! syscall; here framehop unwinds that window with the `.eh_frame` unwind
//! tables of the modules mapped in the process (loaded once per file and
//! shared between processes).
//!
//! An unwinding of a full window also says what it read ([`StackCheck`]),
//! so the eBPF side can recognise the same stack later and send its id
//! instead of another window.

use std::{collections::HashMap, ops::Range, sync::Arc};

use framehop::{
    ExplicitModuleSectionInfo, FrameAddress, Module, Unwinder as _,
    x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64},
};
use object::{Object as _, ObjectSection as _, ObjectSegment as _};

use memtrace_common::{STACK_CHECK_WORDS, STACK_WINDOW};

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
        self.unwind_loaded(pid, stack, stack.bp, &mut Vec::new())
    }

    /// [`Unwinder::unwind`], and for a full window the inputs the result
    /// depends on: the stack words read and, if it read it, the frame
    /// pointer. The same inputs unwind to the same stack (the modules
    /// loaded staying the same).
    pub fn unwind_checked(
        &mut self,
        pid: u32,
        maps: &[Mapping],
        stack: &UserStack,
    ) -> (Vec<u64>, Option<StackCheck>) {
        self.add_modules(pid, maps);
        let mut reads = Vec::new();
        let frames = self.unwind_loaded(pid, stack, stack.bp, &mut reads);
        let window_end = stack.sp.saturating_add(stack.bytes.len() as u64);
        let full_window_end = stack.sp.saturating_add(STACK_WINDOW as u64);
        if reads
            .iter()
            .any(|(addr, word)| word.is_none() && (window_end..full_window_end).contains(addr))
        {
            // A shorter window (the stack ends near its pointer) ended the
            // walk where a full one might not.
            return (frames, None);
        }
        // Whether the frame pointer mattered: unwind again with another.
        let mut other_reads = Vec::new();
        let other = self.unwind_loaded(pid, stack, !stack.bp, &mut other_reads);
        let bp_used = other != frames || other_reads != reads;
        let check = StackCheck::new(stack, &reads, bp_used);
        (frames, check)
    }

    fn unwind_loaded(
        &mut self,
        pid: u32,
        stack: &UserStack,
        bp: u64,
        reads: &mut Vec<(u64, Option<u64>)>,
    ) -> Vec<u64> {
        let Some(proc) = self.procs.get_mut(&pid) else {
            return vec![stack.ip];
        };
        let regs = UnwindRegsX86_64::new(stack.ip, stack.sp, bp);
        let mut read = |addr: u64| {
            let word = stack.read_u64(addr);
            reads.push((addr, word));
            word.ok_or(())
        };
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
            let Some(base) = module_base(&info.segments, m.start, m.offset) else {
                continue;
            };
            let module = Module::new(m.path.to_string(), m.start..m.end, base, info.sections);
            proc.unwinder.add_module(module);
        }
    }
}

/// Where a module's addresses start, from one of its mappings (`start`,
/// file `offset`): the PT_LOAD holding that offset places it, base =
/// start - (p_vaddr + (offset - p_offset)). The kernel maps from the page
/// below `p_offset`, so a mapping's offset can lie just before its
/// segment's, inside the previous segment's range too (linkers pack
/// segments into the same page): the segment starting last wins.
fn module_base(segments: &[(Range<u64>, u64)], start: u64, offset: u64) -> Option<u64> {
    const PAGE: u64 = 4096;
    let (range, vaddr) = segments
        .iter()
        .filter(|(range, _)| range.start & !(PAGE - 1) <= offset && offset < range.end)
        .max_by_key(|(range, _)| range.start)?;
    Some(start.wrapping_sub(vaddr.wrapping_add(offset.wrapping_sub(range.start))))
}

pub use crate::trace::source::StackCheck;

impl StackCheck {
    /// `None` when the reads do not fit the cache's limits.
    /// Reads that failed (outside the window) are left out: they fail
    /// the same way for any window as long as this one.
    fn new(stack: &UserStack, reads: &[(u64, Option<u64>)], bp_used: bool) -> Option<StackCheck> {
        let mut words: Vec<(u16, u64)> = Vec::with_capacity(reads.len());
        for (addr, word) in reads {
            let Some(word) = word else { continue };
            let off = addr.checked_sub(stack.sp)?;
            if off % 8 != 0 || off + 8 > STACK_WINDOW as u64 {
                return None;
            }
            let off = u16::try_from(off).ok()?;
            if !words.iter().any(|(o, _)| *o == off) {
                words.push((off, *word));
            }
        }
        if words.is_empty() || words.len() > STACK_CHECK_WORDS {
            return None;
        }
        Some(StackCheck {
            words,
            bp: bp_used.then_some(stack.bp),
        })
    }

    /// Bytes from the stack pointer that hold every word.
    pub fn extent(&self) -> u32 {
        self.words
            .iter()
            .map(|(off, _)| u32::from(*off) + 8)
            .max()
            .unwrap_or(0)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn window(sp: u64) -> UserStack {
        UserStack {
            ip: 0x1000,
            sp,
            bp: 7,
            bytes: vec![0; STACK_WINDOW],
        }
    }

    /// Segments as `lld`/`rustc` lay them out: the text segment's file
    /// offset (0x14050) is not page-aligned, its mapping starts at 0x14000,
    /// which the read-only segment before it covers too.
    #[test]
    fn modules_are_placed_by_the_segment_their_mapping_starts() {
        let segments = [(0..0x1404c, 0), (0x14050..0x52c10, 0x15050)];
        let start = 0x5555_0001_5000;
        assert_eq!(
            module_base(&segments, start, 0x14000),
            Some(0x5555_0000_0000)
        );
        assert_eq!(
            module_base(&segments, 0x5555_0000_0000, 0),
            Some(0x5555_0000_0000)
        );
        // A mapping inside the text segment (split by mprotect).
        assert_eq!(
            module_base(&segments, 0x5555_0002_0000, 0x1f000),
            Some(0x5555_0000_0000)
        );
        assert_eq!(module_base(&segments, start, 0x60000), None);
    }

    #[test]
    fn stack_checks_hold_each_word_read_once_within_the_window() {
        let sp = 0x7ffd_0000;
        let stack = window(sp);
        let check = StackCheck::new(
            &stack,
            &[
                (sp, Some(1)),
                (sp + 24, Some(2)),
                (sp, Some(1)),
                (sp + 4096, None),
            ],
            false,
        )
        .expect("fits the cache");
        assert_eq!(check.words, vec![(0, 1), (24, 2)]);
        assert_eq!(check.extent(), 32);
        assert_eq!(check.bp, None);
        let with_bp = StackCheck::new(&stack, &[(sp + 8, Some(3))], true).expect("fits");
        assert_eq!(with_bp.bp, Some(7));
        // The kernel side checks aligned words inside the window only.
        assert_eq!(StackCheck::new(&stack, &[(sp + 4, Some(1))], false), None);
        assert_eq!(StackCheck::new(&stack, &[(sp - 8, Some(1))], false), None);
        let last = sp + STACK_WINDOW as u64 - 8;
        assert!(StackCheck::new(&stack, &[(last, Some(1))], false).is_some());
        assert_eq!(StackCheck::new(&stack, &[(last + 8, Some(1))], false), None);
        assert_eq!(StackCheck::new(&stack, &[], false), None);
        let many: Vec<(u64, Option<u64>)> = (0..=STACK_CHECK_WORDS as u64)
            .map(|i| (sp + 8 * i, Some(i)))
            .collect();
        assert_eq!(StackCheck::new(&stack, &many, false), None);
    }
}
