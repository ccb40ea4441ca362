//! The file mappings of a traced process (`/proc/PID/maps`), kept so call
//! stacks can be unwound and symbolized even after the process is gone.

use std::sync::Arc;

/// One file-backed mapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// File offset mapped at `start`.
    pub offset: u64,
    pub path: Arc<str>,
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
    pub module: Option<(Arc<str>, u64)>,
}

/// Locate each address in `maps`.
pub fn locate(maps: &[Mapping], addrs: &[u64]) -> Vec<Loc> {
    addrs
        .iter()
        .map(|a| Loc {
            addr: *a,
            module: find(maps, *a).map(|m| (m.path.clone(), m.file_offset(*a))),
        })
        .collect()
}

/// File-backed mappings of `pid` in address order; `None` when the process
/// is gone or unreadable.
pub fn read(pid: u32) -> Option<Vec<Mapping>> {
    let bytes = std::fs::read(format!("/proc/{pid}/maps")).ok()?;
    let vmas = super::smaps::parse(&bytes).ok()?;
    Some(
        vmas.into_iter()
            .filter(|v| v.name.starts_with('/'))
            .map(|v| Mapping {
                start: v.start,
                end: v.end,
                offset: v.offset,
                // A file replaced on disk shows as "PATH (deleted)"; the
                // symbols are in PATH if anything still is.
                path: Arc::from(v.name.strip_suffix(" (deleted)").unwrap_or(&v.name)),
                exec: v.perms.exec,
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
