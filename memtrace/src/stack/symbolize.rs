//! Addresses in a traced process → functions, files and lines (blazesym),
//! cached so a hot call site is symbolized once.
//!
//! Frames blazesym cannot resolve still name their module and the offset in
//! it, never a bare address alone.

use std::{collections::HashMap, sync::Arc};

use blazesym::symbolize::{
    Input, Symbolized, Symbolizer as Blaze,
    source::{Elf, Source},
};
use serde::Serialize;

use crate::proc::maps::Loc;

/// One frame of a call stack.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Frame {
    /// The absolute address in the process (JSON: a hex string).
    #[serde(serialize_with = "crate::schema::hex")]
    pub address: u64,
    /// Demangled function name, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    /// Path of the mapped file holding the address (`[perf-map]` for JIT
    /// code named by the process's perf map).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    /// Offset of the address in `module` (file offset).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module_offset: Option<u64>,
    /// This frame is a function inlined into the next one.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub inlined: bool,
}

impl Frame {
    /// `function (file:line)`, or `module+0xoff`, or the bare address as a
    /// last resort (anonymous memory such as JIT code). Safe for a terminal:
    /// names come from the target's files.
    pub fn display(&self) -> String {
        crate::text::printable(&self.display_raw()).into_owned()
    }

    fn display_raw(&self) -> String {
        match (&self.function, &self.file, self.line) {
            (Some(f), Some(file), Some(line)) => format!("{f} ({}:{line})", short_path(file)),
            (Some(f), _, _) => f.clone(),
            _ => match (&self.module, self.module_offset) {
                (Some(m), Some(off)) => format!("{}+{off:#x}", short_path(m)),
                _ => format!("{:#x}", self.address),
            },
        }
    }

    /// Whether the frame is in the C library or the dynamic loader.
    pub fn in_runtime_library(&self) -> bool {
        let Some(m) = &self.module else { return false };
        let base = m.rsplit('/').next().unwrap_or(m);
        base.starts_with("libc.so") || base.starts_with("libc-") || base.starts_with("ld-linux")
    }

    /// Whether this frame is a syscall wrapper of the C library or the
    /// dynamic loader (`mmap64`, `__GI_munmap`, `__brk`…): the code users
    /// want to see as the call site is its caller.
    pub fn is_syscall_wrapper(&self) -> bool {
        const WRAPPERS: &[&str] = &[
            "mmap", "munmap", "mremap", "brk", "sbrk", "mprotect", "madvise", "prctl", "syscall",
        ];
        let runtime = self.in_runtime_library();
        let Some(func) = &self.function else {
            return false;
        };
        let func = func.trim_start_matches('_');
        let func = func
            .strip_prefix("GI_")
            .unwrap_or(func)
            .trim_start_matches('_');
        let func = func.strip_suffix("64").unwrap_or(func);
        runtime && WRAPPERS.contains(&func)
    }
}

/// The GNU build id note of the ELF file at `file`. Only regular files are
/// opened (the path comes from the target: a FIFO would block the open).
fn read_build_id(file: &str) -> Option<String> {
    use object::Object as _;
    if !std::fs::metadata(file).ok()?.is_file() {
        return None;
    }
    let cache = object::ReadCache::new(std::fs::File::open(file).ok()?);
    let elf = object::File::parse(&cache).ok()?;
    let id = elf.build_id().ok()??;
    Some(id.iter().map(|b| format!("{b:02x}")).collect())
}

fn short_path(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

/// Cached symbolizer. Addresses are resolved through the process's file
/// mappings (saved while it was alive) to a file and offset, so results are
/// shared between processes and survive the process's exit.
pub struct Symbolizer {
    blaze: Blaze,
    /// (file where memtrace opens it, file offset) → frames, innermost
    /// (inlined) first.
    cache: HashMap<(Arc<str>, u64), Vec<Frame>>,
    /// Module path (as the process names it) → where memtrace opens it.
    opened: HashMap<Arc<str>, Arc<str>>,
    /// Module path → its GNU build id (lowercase hex), read once.
    build_ids: HashMap<Arc<str>, Option<String>>,
}

impl Default for Symbolizer {
    fn default() -> Self {
        Self::new()
    }
}

impl Symbolizer {
    pub fn new() -> Self {
        let blaze = Blaze::builder()
            .enable_code_info(true)
            .enable_inlined_fns(true)
            .enable_demangling(true)
            .build();
        Symbolizer {
            blaze,
            cache: HashMap::new(),
            opened: HashMap::new(),
            build_ids: HashMap::new(),
        }
    }

    /// The GNU build id (lowercase hex) of a module symbolized before,
    /// read from the very file the process mapped; `None` when the ELF
    /// has none or cannot be read.
    pub fn build_id(&mut self, module: &str) -> Option<String> {
        if let Some(known) = self.build_ids.get(module) {
            return known.clone();
        }
        let file = self.opened.get(module).map_or(module, |f| &**f);
        let id = read_build_id(file);
        self.build_ids.insert(Arc::from(module), id.clone());
        id
    }

    /// Frames for each location (each may expand to several when
    /// functions were inlined), in the order given. With `return_addresses`,
    /// every location but the first is a return address and is looked up one
    /// byte earlier, so the line is the call's, not the next one's.
    pub fn symbolize(&mut self, locs: &[Loc], return_addresses: bool) -> Vec<Vec<Frame>> {
        locs.iter()
            .enumerate()
            .map(|(i, loc)| {
                let back = u64::from(return_addresses && i > 0);
                match &loc.module {
                    Some((path, offset)) => {
                        let file = loc.file.as_ref().unwrap_or(path);
                        if !self.opened.contains_key(path) {
                            self.opened.insert(path.clone(), file.clone());
                        }
                        let key = (file.clone(), offset.saturating_sub(back));
                        if !self.cache.contains_key(&key) {
                            let frames = self.resolve(&key.0, path, key.1);
                            self.cache.insert(key.clone(), frames);
                        }
                        self.cache[&key]
                            .iter()
                            .cloned()
                            .map(|mut f| {
                                f.address = loc.addr;
                                f.module_offset = Some(*offset);
                                f
                            })
                            .collect()
                    }
                    // JIT code named by the process's perf map keeps the
                    // name; other anonymous code is its address.
                    None => vec![Frame {
                        address: loc.addr,
                        function: loc.jit.as_deref().map(str::to_owned),
                        file: None,
                        line: None,
                        module: loc.jit.as_ref().map(|_| super::perfmap::MODULE.to_owned()),
                        module_offset: None,
                        inlined: false,
                    }],
                }
            })
            .collect()
    }

    /// The frames at `offset` of the ELF file opened at `file`, named
    /// `path` (as the process names it).
    fn resolve(&self, file: &str, path: &str, offset: u64) -> Vec<Frame> {
        let module = Some(path.to_string());
        // The path comes from the target: only regular files are handed to
        // blazesym (a device mapped executable would be read without end).
        let regular = std::fs::metadata(file).is_ok_and(|m| m.is_file());
        let sym = regular
            .then(|| {
                let src = Source::Elf(Elf::new(file));
                self.blaze
                    .symbolize_single(&src, Input::FileOffset(offset))
                    .ok()
            })
            .flatten();
        let Some(Symbolized::Sym(sym)) = sym else {
            return vec![Frame {
                address: 0,
                function: None,
                file: None,
                line: None,
                module,
                module_offset: Some(offset),
                inlined: false,
            }];
        };
        let code = |c: Option<&blazesym::symbolize::CodeInfo<'_>>| {
            (
                c.map(|c| c.to_path().display().to_string()),
                c.and_then(|c| c.line),
            )
        };
        let mut frames = Vec::new();
        // blazesym lists inlined callees outermost first; the innermost is
        // the one executing at the address.
        for inl in sym.inlined.iter().rev() {
            let (file, line) = code(inl.code_info.as_ref());
            frames.push(Frame {
                address: 0,
                function: Some(inl.name.to_string()),
                file,
                line,
                module: module.clone(),
                module_offset: Some(offset),
                inlined: true,
            });
        }
        let (file, line) = code(sym.code_info.as_deref());
        frames.push(Frame {
            address: 0,
            function: Some(sym.name.to_string()),
            file,
            line,
            module,
            module_offset: Some(offset),
            inlined: false,
        });
        frames
    }
}
