//! Put each VMA in exactly one [`Category`].
//!
//! The rules, first match wins (see [`Classifier::classify`]):
//!
//! 1. `[heap]` → heap; `[stack]` (and `[stack:TID]` from kernels before
//!    4.5) → stack.
//! 2. `[anon:NAME]`, `[anon_shmem:NAME]` (including Go's `[anon: Go: …]`
//!    form) → named anonymous regions.
//! 3. Any other `[…]` name is a special mapping the kernel installs
//!    (`[vdso]`, `[vvar]`, `[vvar_vclock]`, `[vsyscall]`, `[uprobes]`,
//!    `[vectors]`, `[sigpage]`) → kernel-provided.
//! 4. No name → anonymous memory, split by permission (rw, r, rx, rwx, none).
//! 5. The main executable: the file `/proc/PID/exe` points to, matched by
//!    device and inode or by path (so a PIE executable is not mistaken for a
//!    library, and `" (deleted)"` binaries still match).
//! 6. Shared memory: `/dev/shm/…`, `/memfd:…`, SysV segments
//!    (`/SYSV%08x`) and shared anonymous memory (`/dev/zero (deleted)`).
//! 7. Shared libraries: the file name has the shape `*.so` or `*.so.N…`, or
//!    the file is an ELF shared object (`e_type == ET_DYN`). The ELF header
//!    is read once per distinct path, through `/proc/PID/root` so that
//!    processes in other mount namespaces are handled.
//! 8. Any other file (and non-path names such as `anon_inode:…`) → other files.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::proc::smaps::{self, Vma};

/// Where a VMA's memory belongs. Every VMA gets exactly one category, so
/// the categories add up to the process totals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Category {
    /// `[heap]`: the `brk` heap.
    Heap,
    /// `[stack]`: the main thread's stack.
    Stack,
    /// `[anon:NAME]` / `[anon_shmem:NAME]`: anonymous memory named with `PR_SET_VMA_ANON_NAME`.
    NamedAnon,
    /// The main executable (`/proc/PID/exe`).
    Executable,
    /// ELF shared objects.
    SharedLibrary,
    /// Other file mappings.
    OtherFile,
    /// `/dev/shm`, memfd, SysV shared memory, shared anonymous memory.
    SharedMemory,
    /// Unnamed anonymous memory, writable (`rw-`, also `-w-`).
    AnonRw,
    /// Unnamed anonymous memory, read-only.
    AnonR,
    /// Unnamed anonymous memory, executable and not writable (`r-x`, `--x`).
    AnonRx,
    /// Unnamed anonymous memory, writable and executable (JIT code).
    AnonRwx,
    /// Unnamed anonymous memory with no access: guard pages and reservations.
    AnonNone,
    /// `[vdso]`, `[vvar]`, `[vsyscall]` and other kernel-installed mappings.
    Kernel,
}

/// The group a category is shown under in the text report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Group {
    /// Heap and main stack.
    Process,
    /// Named anonymous regions.
    Named,
    /// File mappings: executable, libraries, other files.
    Files,
    /// Shared memory.
    SharedMemory,
    /// Unnamed anonymous memory by permission.
    Anonymous,
    /// Kernel-provided mappings.
    Kernel,
}

impl Category {
    /// All categories, in report order.
    pub const ALL: [Category; 13] = [
        Category::Heap,
        Category::Stack,
        Category::NamedAnon,
        Category::Executable,
        Category::SharedLibrary,
        Category::OtherFile,
        Category::SharedMemory,
        Category::AnonRw,
        Category::AnonR,
        Category::AnonRx,
        Category::AnonRwx,
        Category::AnonNone,
        Category::Kernel,
    ];

    /// Position in [`Category::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Stable machine name, as used in JSON (`"anon-rw"`, …).
    pub fn name(self) -> &'static str {
        match self {
            Category::Heap => "heap",
            Category::Stack => "stack",
            Category::NamedAnon => "named-anon",
            Category::Executable => "executable",
            Category::SharedLibrary => "shared-library",
            Category::OtherFile => "other-file",
            Category::SharedMemory => "shared-memory",
            Category::AnonRw => "anon-rw",
            Category::AnonR => "anon-r",
            Category::AnonRx => "anon-rx",
            Category::AnonRwx => "anon-rwx",
            Category::AnonNone => "anon-none",
            Category::Kernel => "kernel",
        }
    }

    /// Human label for the text report.
    pub fn label(self) -> &'static str {
        match self {
            Category::Heap => "Heap [heap]",
            Category::Stack => "Main stack [stack]",
            Category::NamedAnon => "Named regions",
            Category::Executable => "Main executable",
            Category::SharedLibrary => "Shared libraries",
            Category::OtherFile => "Other files",
            Category::SharedMemory => "Shared memory (shm, memfd, SysV)",
            Category::AnonRw => "Read-write",
            Category::AnonR => "Read-only",
            Category::AnonRx => "Executable",
            Category::AnonRwx => "Read-write-execute",
            Category::AnonNone => "No access (guard, reserved)",
            Category::Kernel => "vdso, vvar, vsyscall",
        }
    }

    /// The report section this category belongs to.
    pub fn group(self) -> Group {
        match self {
            Category::Heap | Category::Stack => Group::Process,
            Category::NamedAnon => Group::Named,
            Category::Executable | Category::SharedLibrary | Category::OtherFile => Group::Files,
            Category::SharedMemory => Group::SharedMemory,
            Category::AnonRw
            | Category::AnonR
            | Category::AnonRx
            | Category::AnonRwx
            | Category::AnonNone => Group::Anonymous,
            Category::Kernel => Group::Kernel,
        }
    }
}

impl Group {
    /// Section title in the text report.
    pub fn label(self) -> &'static str {
        match self {
            Group::Process => "Process",
            Group::Named => "Named anonymous regions",
            Group::Files => "File-backed",
            Group::SharedMemory => "Shared memory",
            Group::Anonymous => "Anonymous (unnamed)",
            Group::Kernel => "Kernel-provided",
        }
    }
}

/// The name of a named anonymous region: `[anon:NAME]` or
/// `[anon_shmem:NAME]` gives `NAME` (trimmed, so Go's `[anon: Go: heap]`
/// gives `Go: heap`).
pub fn anon_name(name: &str) -> Option<&str> {
    let inner = name.strip_prefix('[')?.strip_suffix(']')?;
    let rest = inner
        .strip_prefix("anon:")
        .or_else(|| inner.strip_prefix("anon_shmem:"))?;
    Some(rest.trim())
}

/// Whether the last path component has the shape of a shared object name:
/// `*.so`, or `*.so.` followed by version digits and dots (`libc.so.6`,
/// `libstdc++.so.6.0.30`). A directory called `lib` or a file called
/// `libso.txt` does not match.
pub fn has_shared_object_name(path: &str) -> bool {
    let base = path.rsplit('/').next().unwrap_or(path);
    let mut search = base;
    while let Some(i) = search.find(".so") {
        // There must be a stem before ".so".
        let prefix_len = base.len() - search.len() + i;
        let after = &search[i + 3..];
        if prefix_len > 0
            && (after.is_empty()
                || (after.starts_with('.')
                    && after.len() > 1
                    && after[1..].bytes().all(|b| b.is_ascii_digit() || b == b'.')))
        {
            return true;
        }
        search = &search[i + 3..];
    }
    false
}

/// Whether `name` (a smaps name) is shared memory: `/dev/shm/…`,
/// `/memfd:…`, a SysV segment `/SYSV` + 8 hex digits, or shared anonymous
/// memory (which the kernel backs with `/dev/zero`).
pub fn is_shared_memory(vma: &Vma) -> bool {
    let path = vma.path();
    if path.starts_with("/dev/shm/") || path.starts_with("/memfd:") {
        return true;
    }
    if let Some(key) = path.strip_prefix("/SYSV") {
        return key.len() == 8 && key.bytes().all(|b| b.is_ascii_hexdigit());
    }
    vma.is_shared_anonymous()
}

/// The identity of the main executable, from `/proc/PID/exe`.
#[derive(Debug, Clone, Default)]
pub struct ExeId {
    /// Path of the executable, without `" (deleted)"`.
    pub path: Option<PathBuf>,
    /// `(major, minor, inode)` of the executable, when `stat` worked.
    pub dev_inode: Option<(u32, u32, u64)>,
}

impl ExeId {
    /// Read `/proc/PID/exe` (both the link text and the file's device and
    /// inode). Kernel threads and inaccessible processes give an empty id.
    pub fn of_process(pid: u32) -> ExeId {
        let link = format!("/proc/{pid}/exe");
        let path = std::fs::read_link(&link).ok().map(|p| {
            let s = p.to_string_lossy();
            match s.strip_suffix(smaps::DELETED_SUFFIX) {
                Some(stripped) => PathBuf::from(stripped),
                None => p,
            }
        });
        let dev_inode = std::fs::metadata(&link).ok().map(|m| {
            use std::os::unix::fs::MetadataExt as _;
            let dev = m.dev();
            (libc::major(dev), libc::minor(dev), m.ino())
        });
        ExeId { path, dev_inode }
    }

    fn matches(&self, vma: &Vma) -> bool {
        if let Some((major, minor, inode)) = self.dev_inode
            && vma.inode == inode
            && vma.dev_major == major
            && vma.dev_minor == minor
        {
            return true;
        }
        self.path
            .as_deref()
            .is_some_and(|p| p.as_os_str() == vma.path())
    }
}

/// Classifies VMAs of one process. Keeps a per-path cache so each distinct
/// file is examined at most once.
#[derive(Debug, Default)]
pub struct Classifier {
    exe: ExeId,
    /// `/proc/PID/root` when ELF headers may be read; `None` means decide
    /// shared libraries by file name only (fixtures, tests).
    root: Option<PathBuf>,
    library_cache: HashMap<String, bool>,
    probes_left: usize,
}

/// At most this many distinct files get their ELF header read; beyond that
/// only the file name decides, so a process mapping 100,000 distinct files
/// cannot make a snapshot slow.
const MAX_ELF_PROBES: usize = 2048;

impl Classifier {
    /// A classifier that decides by names and by `exe` only, never touching
    /// the file system. Useful for fixtures.
    pub fn new(exe: ExeId) -> Classifier {
        Classifier {
            exe,
            ..Classifier::default()
        }
    }

    /// A classifier for a live process: reads `/proc/PID/exe`, and may read
    /// ELF headers of mapped files through `/proc/PID/root`.
    pub fn for_process(pid: u32) -> Classifier {
        Classifier {
            exe: ExeId::of_process(pid),
            root: Some(PathBuf::from(format!("/proc/{pid}/root"))),
            library_cache: HashMap::new(),
            probes_left: MAX_ELF_PROBES,
        }
    }

    /// The executable identity this classifier uses.
    pub fn exe(&self) -> &ExeId {
        &self.exe
    }

    /// The category of `vma`.
    pub fn classify(&mut self, vma: &Vma) -> Category {
        let name = vma.name.as_str();
        if name.is_empty() {
            return anon_by_perms(vma);
        }
        if name.starts_with('[') {
            return match name {
                "[heap]" => Category::Heap,
                "[stack]" => Category::Stack,
                _ if name.starts_with("[stack:") => Category::Stack,
                _ if anon_name(name).is_some() => Category::NamedAnon,
                _ => Category::Kernel,
            };
        }
        if self.exe.matches(vma) {
            return Category::Executable;
        }
        if is_shared_memory(vma) {
            return Category::SharedMemory;
        }
        if name.starts_with('/') && self.is_library(vma.path()) {
            return Category::SharedLibrary;
        }
        Category::OtherFile
    }

    fn is_library(&mut self, path: &str) -> bool {
        if has_shared_object_name(path) {
            return true;
        }
        let Some(root) = &self.root else {
            return false;
        };
        if let Some(known) = self.library_cache.get(path) {
            return *known;
        }
        if self.probes_left == 0 {
            return false;
        }
        self.probes_left -= 1;
        let mut full = root.clone().into_os_string();
        full.push(path);
        let verdict = is_elf_shared_object(Path::new(&full));
        self.library_cache.insert(path.to_owned(), verdict);
        verdict
    }
}

/// Whether `path` starts with an ELF header whose `e_type` is `ET_DYN`.
/// Unreadable files are not libraries (we do not guess).
pub fn is_elf_shared_object(path: &Path) -> bool {
    const ET_DYN: u16 = 3;
    let mut header = [0u8; 18];
    let Ok(mut file) = File::open(path) else {
        return false;
    };
    if file.read_exact(&mut header).is_err() || &header[..4] != b"\x7fELF" {
        return false;
    }
    let e_type = match header[5] {
        1 => u16::from_le_bytes([header[16], header[17]]),
        2 => u16::from_be_bytes([header[16], header[17]]),
        _ => return false,
    };
    e_type == ET_DYN
}

fn anon_by_perms(vma: &Vma) -> Category {
    let p = vma.perms;
    match (p.write, p.exec) {
        (true, true) => Category::AnonRwx,
        (true, false) => Category::AnonRw,
        (false, true) => Category::AnonRx,
        (false, false) if p.read => Category::AnonR,
        (false, false) => Category::AnonNone,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn so_names() {
        for yes in [
            "/lib/libc.so.6",
            "/x/libstdc++.so.6.0.30",
            "/a/foo.so",
            "libm.so.6",
            "/a/x.cpython-311.so",
        ] {
            assert!(has_shared_object_name(yes), "{yes}");
        }
        for no in [
            "/usr/lib/locale/locale-archive",
            "/lib/x.so.txt",
            "/a/.so",
            "/a/libso",
            "/a.so/b",
            "/a/x.sox",
        ] {
            assert!(!has_shared_object_name(no), "{no}");
        }
    }

    #[test]
    fn anon_names() {
        assert_eq!(anon_name("[anon:TXMetaCache]"), Some("TXMetaCache"));
        assert_eq!(anon_name("[anon: Go: heap]"), Some("Go: heap"));
        assert_eq!(anon_name("[anon_shmem:ring]"), Some("ring"));
        assert_eq!(anon_name("[heap]"), None);
    }
}
