//! Addresses in a traced process → functions, files and lines (blazesym),
//! cached so a hot call site is symbolized once.
//!
//! Frames blazesym cannot resolve still name their module and the offset in
//! it, never a bare address alone.

use std::collections::HashMap;

use blazesym::symbolize::{
    Input, Symbolized, Symbolizer as Blaze,
    source::{Process, Source},
};
use serde::Serialize;

/// One frame of a call stack.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Frame {
    /// The absolute address in the process.
    pub address: u64,
    /// Demangled function name, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    /// Path of the mapped file holding the address.
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
    /// last resort (anonymous memory such as JIT code).
    pub fn display(&self) -> String {
        match (&self.function, &self.file, self.line) {
            (Some(f), Some(file), Some(line)) => format!("{f} ({}:{line})", short_path(file)),
            (Some(f), _, _) => f.clone(),
            _ => match (&self.module, self.module_offset) {
                (Some(m), Some(off)) => format!("{}+{off:#x}", short_path(m)),
                _ => format!("{:#x}", self.address),
            },
        }
    }

    /// Whether this frame is a syscall wrapper of the C library or the
    /// dynamic loader (`mmap64`, `__GI_munmap`, `__brk`…): the code users
    /// want to see as the call site is its caller.
    pub fn is_syscall_wrapper(&self) -> bool {
        const WRAPPERS: &[&str] = &[
            "mmap", "munmap", "mremap", "brk", "sbrk", "mprotect", "madvise", "prctl", "syscall",
        ];
        let Some(m) = &self.module else { return false };
        let base = m.rsplit('/').next().unwrap_or(m);
        let runtime = base.starts_with("libc.so")
            || base.starts_with("libc-")
            || base.starts_with("ld-linux");
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

fn short_path(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

/// A mapped file region of a process, for module+offset fallbacks.
#[derive(Clone, Debug)]
struct Mapping {
    start: u64,
    end: u64,
    offset: u64,
    path: String,
}

/// Cached symbolizer for the processes memtrace traces.
pub struct Symbolizer {
    blaze: Blaze,
    /// (pid, address) → frames, innermost (inlined) first.
    cache: HashMap<(u32, u64), Vec<Frame>>,
    maps: HashMap<u32, Vec<Mapping>>,
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
            maps: HashMap::new(),
        }
    }

    /// Frames for each address (each may expand to several when functions
    /// were inlined), in the order given. The process must still be alive
    /// for addresses not already cached.
    pub fn symbolize(&mut self, pid: u32, addrs: &[u64]) -> Vec<Vec<Frame>> {
        let missing: Vec<u64> = {
            let mut m: Vec<u64> = addrs
                .iter()
                .copied()
                .filter(|a| !self.cache.contains_key(&(pid, *a)))
                .collect();
            m.sort_unstable();
            m.dedup();
            m
        };
        if !missing.is_empty() {
            let src = Source::Process(Process::new(pid.into()));
            let resolved = self
                .blaze
                .symbolize(&src, Input::AbsAddr(&missing))
                .unwrap_or_default();
            for (i, addr) in missing.iter().enumerate() {
                let frames = match resolved.get(i) {
                    Some(Symbolized::Sym(sym)) => {
                        let module = sym
                            .module
                            .as_ref()
                            .map(|m| m.to_string_lossy().into_owned());
                        let mut frames = Vec::new();
                        // blazesym lists inlined callees outermost first; the
                        // innermost is the one executing at `addr`.
                        for inl in sym.inlined.iter().rev() {
                            frames.push(Frame {
                                address: *addr,
                                function: Some(inl.name.to_string()),
                                file: inl
                                    .code_info
                                    .as_ref()
                                    .map(|c| c.to_path().display().to_string()),
                                line: inl.code_info.as_ref().and_then(|c| c.line),
                                module: module.clone(),
                                module_offset: None,
                                inlined: true,
                            });
                        }
                        frames.push(Frame {
                            address: *addr,
                            function: Some(sym.name.to_string()),
                            file: sym
                                .code_info
                                .as_ref()
                                .map(|c| c.to_path().display().to_string()),
                            line: sym.code_info.as_ref().and_then(|c| c.line),
                            module,
                            module_offset: None,
                            inlined: false,
                        });
                        frames
                    }
                    _ => vec![Frame {
                        address: *addr,
                        function: None,
                        file: None,
                        line: None,
                        module: None,
                        module_offset: None,
                        inlined: false,
                    }],
                };
                self.cache.insert((pid, *addr), frames);
            }
            // Fill module+offset for every new frame: it identifies frames
            // that have no symbol, and tells libc wrappers apart.
            for addr in &missing {
                let loc = self.module_of(pid, *addr);
                if let Some(frames) = self.cache.get_mut(&(pid, *addr)) {
                    for f in frames {
                        if let Some((path, off)) = &loc {
                            f.module = Some(path.clone());
                            f.module_offset = Some(*off);
                        }
                    }
                }
            }
        }
        addrs
            .iter()
            .map(|a| self.cache.get(&(pid, *a)).cloned().unwrap_or_default())
            .collect()
    }

    /// Drop what is cached for `pid` (after exec, its addresses mean
    /// something else).
    pub fn forget(&mut self, pid: u32) {
        self.cache.retain(|(p, _), _| *p != pid);
        self.maps.remove(&pid);
    }

    /// File and file offset of `addr` in `pid`, re-reading the maps once
    /// when the address is not in the cached copy (new mappings appear).
    fn module_of(&mut self, pid: u32, addr: u64) -> Option<(String, u64)> {
        let find = |maps: &[Mapping]| {
            maps.iter()
                .find(|m| m.start <= addr && addr < m.end)
                .map(|m| (m.path.clone(), addr - m.start + m.offset))
        };
        if let Some(hit) = self.maps.get(&pid).and_then(|m| find(m)) {
            return Some(hit);
        }
        let maps = read_file_mappings(pid);
        let hit = find(&maps);
        self.maps.insert(pid, maps);
        hit
    }
}

/// File-backed mappings of `pid` from `/proc/PID/maps` (empty when the
/// process is gone).
fn read_file_mappings(pid: u32) -> Vec<Mapping> {
    let Ok(bytes) = std::fs::read(format!("/proc/{pid}/maps")) else {
        return Vec::new();
    };
    let Ok(vmas) = crate::smaps::parse(&bytes) else {
        return Vec::new();
    };
    vmas.into_iter()
        .filter(|v| v.name.starts_with('/'))
        .map(|v| Mapping {
            start: v.start,
            end: v.end,
            offset: v.offset,
            path: v.name,
        })
        .collect()
}
