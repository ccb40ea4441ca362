//! The file mappings of a traced process (`/proc/PID/maps`), kept so call
//! stacks can be unwound and symbolized even after the process is gone.
//!
//! The path in `maps` is the file's name in the process's mount namespace,
//! which may not be memtrace's (a container). Executable files are opened
//! through the process itself (`/proc/PID/map_files/…`, else
//! `/proc/PID/root/PATH`) while it lives, and kept open ([`OpenFiles`]), so
//! their code is read from the very file the process ran, during and after
//! its life.

use std::{collections::HashMap, fs::File, os::fd::AsRawFd as _, sync::Arc};

/// One file-backed mapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// File offset mapped at `start`.
    pub offset: u64,
    /// The file's path as the process names it.
    pub path: Arc<str>,
    /// Where memtrace opens the file: a descriptor it holds
    /// (`/proc/self/fd/N`) for executable mappings, else `path`.
    pub file: Arc<str>,
    pub exec: bool,
}

impl Mapping {
    /// File offset of `addr`, which must lie inside the mapping.
    pub fn file_offset(&self, addr: u64) -> u64 {
        addr - self.start + self.offset
    }
}

/// An address of a call stack, with the file and file offset it was
/// mapped from when it was captured (`None` for anonymous memory, e.g. JIT
/// code).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Loc {
    pub addr: u64,
    /// The file as the process names it, and the offset in it.
    pub module: Option<(Arc<str>, u64)>,
    /// Where memtrace opens that file ([`Mapping::file`]); `None`: the
    /// module's path.
    pub file: Option<Arc<str>>,
    /// For anonymous memory: the JIT code there, as the process's perf map
    /// named it when the stack was captured ([`crate::stack::perfmap`]).
    pub jit: Option<Arc<str>>,
}

/// Locate each address in `maps`.
pub fn locate(maps: &[Mapping], addrs: &[u64]) -> Vec<Loc> {
    addrs
        .iter()
        .map(|a| {
            let m = find(maps, *a);
            Loc {
                addr: *a,
                module: m.map(|m| (m.path.clone(), m.file_offset(*a))),
                file: m.filter(|m| m.file != m.path).map(|m| m.file.clone()),
                jit: None,
            }
        })
        .collect()
}

/// Executable files of traced processes, opened through the processes
/// while they live and kept open for the session, by file identity (device
/// and inode, as `maps` shows them): one descriptor per file, however many
/// processes map it.
#[derive(Default)]
pub struct OpenFiles {
    paths: HashMap<(u32, u32, u64), Arc<str>>,
    files: Vec<File>,
}

impl OpenFiles {
    /// The path memtrace reads the file behind `vma` of `pid` through.
    fn open(&mut self, pid: u32, vma: &super::smaps::Vma, path: &Arc<str>) -> Arc<str> {
        let key = (vma.dev_major, vma.dev_minor, vma.inode);
        if let Some(p) = self.paths.get(&key) {
            return p.clone();
        }
        // map_files names the mapped file itself (even deleted, or in
        // another mount namespace); it needs CAP_SYS_ADMIN, which tracing
        // has. The process's root is the fallback.
        let through = [
            format!("/proc/{pid}/map_files/{:x}-{:x}", vma.start, vma.end),
            format!("/proc/{pid}/root{path}"),
        ];
        let Some(file) = through.iter().find_map(|p| File::open(p).ok()) else {
            return path.clone();
        };
        let opened: Arc<str> = Arc::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        self.files.push(file);
        self.paths.insert(key, opened.clone());
        opened
    }
}

/// File-backed mappings of `pid` in address order, executable files opened
/// through the process (see [`OpenFiles`]); `None` when the process is gone
/// or unreadable.
pub fn read(pid: u32, files: &mut OpenFiles) -> Option<Vec<Mapping>> {
    let vmas = super::smaps::read_maps(pid).ok()?;
    Some(
        vmas.into_iter()
            .filter(|v| v.name.starts_with('/'))
            .map(|v| {
                // A file replaced on disk shows as "PATH (deleted)"; the
                // symbols are in PATH if anything still is.
                let path: Arc<str> =
                    Arc::from(v.name.strip_suffix(" (deleted)").unwrap_or(&v.name));
                let file = if v.perms.exec {
                    files.open(pid, &v, &path)
                } else {
                    path.clone()
                };
                Mapping {
                    start: v.start,
                    end: v.end,
                    offset: v.offset,
                    path,
                    file,
                    exec: v.perms.exec,
                }
            })
            .collect(),
    )
}

/// The mapping holding `addr`.
pub fn find(maps: &[Mapping], addr: u64) -> Option<&Mapping> {
    let i = maps.partition_point(|m| m.end <= addr);
    maps.get(i).filter(|m| m.start <= addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_by_address() {
        let m = |start, end| Mapping {
            start,
            end,
            offset: 0x1000,
            path: Arc::from("/lib/x.so"),
            file: Arc::from("/lib/x.so"),
            exec: true,
        };
        let maps = vec![m(0x1000, 0x2000), m(0x3000, 0x4000)];
        assert_eq!(find(&maps, 0x1000).map(|m| m.start), Some(0x1000));
        assert_eq!(find(&maps, 0x1fff).map(|m| m.start), Some(0x1000));
        assert_eq!(find(&maps, 0x2000), None);
        assert_eq!(
            find(&maps, 0x3800).map(|m| m.file_offset(0x3800)),
            Some(0x1800)
        );
        assert_eq!(find(&maps, 0x4000), None);
        assert_eq!(find(&maps, 0x10), None);
    }
}
