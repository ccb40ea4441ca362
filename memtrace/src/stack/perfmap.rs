//! Names of JIT code from the perf map convention, as perf, bcc and the
//! profilers read them: a JIT (`node --perf-basic-prof`, the JVM's
//! `jcmd PID Compiler.perfmap` or `-XX:+DumpPerfMapAtExit`, .NET, LuaJIT…)
//! writes `/tmp/perf-PID.map`, one `START SIZE name` line per piece of
//! code (hex, without `0x`), appending as it compiles.
//!
//! blazesym reads these files too, but it maps the file (a target that
//! truncates it would crash memtrace with SIGBUS), rejects the whole file
//! for one bad line, has no size bound and reads through a live process
//! only; here the file is read with `read`, bounded, line by line.
//!
//! The file is written by the target, so it is untrusted:
//! - it is opened in the target's own root (`/proc/PID/root`, with the pid
//!   as the target's pid namespace names it), resolving symlinks inside
//!   that root only, never the last component, never `/proc` magic links;
//! - it must be a regular file owned by the target's user or by root;
//! - malformed lines are skipped and counted, and reading stops at
//!   [`MAX_BYTES`] and [`MAX_ENTRIES`].
//!
//! The descriptor is kept, so names resolve after the target is gone; the
//! file is read again where it grew when an address misses.

use std::{
    collections::{BTreeMap, HashMap, hash_map::Entry},
    fs::File,
    io::{Read as _, Seek as _, SeekFrom},
    os::unix::fs::MetadataExt as _,
    sync::Arc,
    time::{Duration, Instant},
};

use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};

use crate::proc::pid;

/// Module name of frames named from a perf map.
pub const MODULE: &str = "[perf-map]";

/// Most bytes read from one perf map (a long-running JVM's map is a few
/// MiB; a target could grow its file without end).
pub const MAX_BYTES: u64 = 64 << 20;

/// Most pieces of code kept from one map (a large JVM names ~100k): with
/// [`MAX_BYTES`] this bounds what a hostile map costs memtrace to about
/// 100 MiB.
pub const MAX_ENTRIES: usize = 512 << 10;

/// Bytes read at a time.
const CHUNK: u64 = 1 << 20;

/// Longest line kept: longer ones are skipped (names are at most a few
/// KiB, even for Java's generic signatures).
const MAX_LINE: usize = 64 << 10;

/// A piece of JIT code: where it ends and its name.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Code {
    end: u64,
    name: Arc<str>,
}

/// The entries of one perf map, read so far.
#[derive(Debug, Default)]
pub struct Entries {
    /// By start address; a later line for the same start replaces the
    /// earlier one (code freed and the space reused).
    code: BTreeMap<u64, Code>,
    /// Bytes of a last line not yet ended by a newline.
    partial: Vec<u8>,
    /// Bytes consumed, partial line included.
    consumed: u64,
    /// Lines skipped as malformed.
    pub skipped: usize,
}

impl Entries {
    /// Take more bytes of the file, in order. Only lines ended by a
    /// newline are parsed; the rest waits for the next call.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.consumed += bytes.len() as u64;
        let mut rest = bytes;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            let (line, after) = rest.split_at(nl);
            rest = &after[1..];
            if self.partial.is_empty() {
                self.line(line);
            } else {
                let mut whole = std::mem::take(&mut self.partial);
                whole.extend_from_slice(line);
                self.line(&whole);
            }
        }
        if self.partial.len() + rest.len() > MAX_LINE {
            // Too long to be a line of ours: drop it, and its rest up to
            // the next newline is dropped as a malformed line.
            self.partial.clear();
            self.partial.extend_from_slice(b"!");
        } else {
            self.partial.extend_from_slice(rest);
        }
    }

    fn line(&mut self, line: &[u8]) {
        match parse_line(line) {
            Some((start, size, name))
                if line.len() <= MAX_LINE
                    && (self.code.len() < MAX_ENTRIES || self.code.contains_key(&start)) =>
            {
                let end = start.saturating_add(size);
                self.code.insert(
                    start,
                    Code {
                        end,
                        name: Arc::from(name),
                    },
                );
            }
            _ if line.iter().all(u8::is_ascii_whitespace) => {}
            _ => self.skipped += 1,
        }
    }

    /// The code holding `addr`: its name and `addr`'s offset in it.
    pub fn find(&self, addr: u64) -> Option<(Arc<str>, u64)> {
        // Entries may overlap (a stub inside a larger blob): the nearest
        // start at or below `addr` that holds it, looking a few back.
        self.code
            .range(..=addr)
            .rev()
            .take(16)
            .find(|(_, c)| addr < c.end)
            .map(|(start, c)| (c.name.clone(), addr - start))
    }

    pub fn len(&self) -> usize {
        self.code.len()
    }

    pub fn is_empty(&self) -> bool {
        self.code.is_empty()
    }
}

/// `START SIZE name`: two hex numbers (an `0x` prefix is tolerated, as
/// perf's `strtoull` does) and the rest of the line as the name.
fn parse_line(line: &[u8]) -> Option<(u64, u64, String)> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let text = String::from_utf8_lossy(line);
    let mut fields = text.splitn(3, ' ');
    let hex = |s: &str| {
        let s = s.strip_prefix("0x").unwrap_or(s);
        if s.is_empty() {
            return None;
        }
        u64::from_str_radix(s, 16).ok()
    };
    let start = hex(fields.next()?)?;
    let size = hex(fields.next()?)?;
    let name = fields.next()?.trim();
    if size == 0 || name.is_empty() || start.checked_add(size).is_none() {
        return None;
    }
    Some((start, size, name.to_owned()))
}

/// One process's perf map file, held open.
#[derive(Debug)]
pub struct PerfMap {
    file: File,
    entries: Entries,
}

/// Why a perf map was not read. Messages name their cause (so it is no
/// `source()` too: anyhow's `{:#}` would print it twice).
#[derive(Debug, thiserror::Error)]
pub enum PerfMapError {
    #[error("reading /proc/{pid}: {error}")]
    Proc { pid: u32, error: std::io::Error },
    #[error("opening perf-{ns_pid}.map in the root of pid {pid}: {error}")]
    Open {
        pid: u32,
        ns_pid: u32,
        error: nix::Error,
    },
    #[error("perf-{ns_pid}.map of pid {pid} is not a regular file")]
    NotRegular { pid: u32, ns_pid: u32 },
    #[error(
        "perf-{ns_pid}.map of pid {pid} is owned by uid {owner}, neither the process's ({uid}) nor root"
    )]
    Owner {
        pid: u32,
        ns_pid: u32,
        owner: u32,
        uid: u32,
    },
}

/// Where a process's perf map is and who may own it, found once per
/// process: the open root directory it lives under, its pid there and its
/// user.
#[derive(Debug)]
pub struct Target {
    pid: u32,
    ns_pid: u32,
    uid: u32,
    root: File,
}

impl Target {
    /// Process `pid`'s root, namespace pid and user (the owner of its
    /// `/proc` directory).
    pub fn of(pid: u32) -> Result<Target, PerfMapError> {
        let proc_err = |error| PerfMapError::Proc { pid, error };
        let uid = std::fs::metadata(format!("/proc/{pid}"))
            .map_err(proc_err)?
            .uid();
        let ns_pid = pid::ns_tgid(pid).map_err(proc_err)?;
        // Once the main thread has exited (the java launcher's does), its
        // root is gone from /proc; a live thread's is the process's.
        let reader = pid::mm_reader(pid);
        let root = File::open(format!("/proc/{reader}/root")).map_err(proc_err)?;
        Ok(Target {
            pid,
            ns_pid,
            uid,
            root,
        })
    }
}

impl PerfMap {
    /// Open process `pid`'s perf map (see the module doc for the checks)
    /// and read what it holds so far.
    pub fn open(pid: u32) -> Result<PerfMap, PerfMapError> {
        PerfMap::open_in(&Target::of(pid)?)
    }

    /// Open the perf map of `target`.
    pub fn open_in(target: &Target) -> Result<PerfMap, PerfMapError> {
        let Target {
            pid,
            ns_pid,
            uid,
            ref root,
        } = *target;
        let how = OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        let path = format!("tmp/perf-{ns_pid}.map");
        let fd = openat2(root, path.as_str(), how).map_err(|error| PerfMapError::Open {
            pid,
            ns_pid,
            error,
        })?;
        let file = File::from(fd);
        let meta = file
            .metadata()
            .map_err(|error| PerfMapError::Proc { pid, error })?;
        if !meta.is_file() {
            return Err(PerfMapError::NotRegular { pid, ns_pid });
        }
        if meta.uid() != uid && meta.uid() != 0 {
            return Err(PerfMapError::Owner {
                pid,
                ns_pid,
                owner: meta.uid(),
                uid,
            });
        }
        let mut map = PerfMap {
            file,
            entries: Entries::default(),
        };
        map.read_more();
        Ok(map)
    }

    /// Read what the file gained since the last read (from the start
    /// again when it shrank: rewritten). Returns whether anything was read.
    fn read_more(&mut self) -> bool {
        let Ok(len) = self.file.metadata().map(|m| m.len()) else {
            return false;
        };
        if len < self.entries.consumed {
            self.entries = Entries::default();
        }
        let until = len.min(MAX_BYTES);
        if until <= self.entries.consumed
            || self
                .file
                .seek(SeekFrom::Start(self.entries.consumed))
                .is_err()
        {
            return false;
        }
        let mut any = false;
        let mut buf = Vec::new();
        while self.entries.consumed < until {
            buf.clear();
            let want = (until - self.entries.consumed).min(CHUNK);
            match (&self.file).take(want).read_to_end(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    self.entries.feed(&buf);
                    any = true;
                }
            }
        }
        any
    }

    /// The code holding `addr`, reading the file again if it grew.
    pub fn find(&mut self, addr: u64) -> Option<(Arc<str>, u64)> {
        if let Some(hit) = self.entries.find(addr) {
            return Some(hit);
        }
        if self.read_more() {
            return self.entries.find(addr);
        }
        None
    }

    pub fn entries(&self) -> &Entries {
        &self.entries
    }
}

/// The perf maps of the traced processes, opened on the first address in
/// anonymous memory that needs a name.
#[derive(Debug, Default)]
pub struct PerfMaps {
    maps: HashMap<u32, Slot>,
    /// When each process was last looked at for a map it does not have: a
    /// process whose JIT writes no map (most JVMs) sends stacks in
    /// anonymous memory with every event, and each look costs system
    /// calls; at most one per [`LOOK_AGAIN`].
    looked: HashMap<u32, Instant>,
    /// When an address a process's map did not hold was last read for:
    /// a JIT writes the line before it runs the code, so an address not
    /// seen before is read for at once, and one still missing (code the
    /// JIT does not name) at most once per [`LOOK_AGAIN`].
    missed: HashMap<(u32, u64), Instant>,
}

/// How often a process's perf map is looked for, or read again for an
/// address it does not hold.
const LOOK_AGAIN: Duration = Duration::from_millis(10);

/// Missing addresses remembered at most; beyond, they are forgotten (each
/// then costs one more read).
const MAX_MISSED: usize = 1 << 16;

#[derive(Debug)]
enum Slot {
    Open(PerfMap),
    /// No map yet (a JIT writes it from its first compilation on, or when
    /// asked, as `jcmd PID Compiler.perfmap`): looked for again, one
    /// `openat2`, at most once per [`LOOK_AGAIN`].
    Missing(Target),
}

impl PerfMaps {
    /// Name the frames of `stack` (of process `pid`) that lie in anonymous
    /// memory and that its perf map knows.
    pub fn name_jit(&mut self, pid: u32, stack: &mut [crate::proc::maps::Loc]) {
        if stack.iter().all(|l| l.module.is_some()) {
            return;
        }
        let now = Instant::now();
        let PerfMaps {
            maps,
            looked,
            missed,
        } = self;
        // Decided once per stack: looking for the map and opening it are
        // one look.
        let mut due = None;
        let mut may_look = || {
            *due.get_or_insert_with(|| {
                let due = looked
                    .get(&pid)
                    .is_none_or(|&t| now.duration_since(t) >= LOOK_AGAIN);
                if due {
                    looked.insert(pid, now);
                }
                due
            })
        };
        // Not remembered when the process cannot be looked into: that can
        // pass (seen right after exec), and a process that is gone sends
        // no more stacks.
        let slot = match maps.entry(pid) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) if may_look() => match Target::of(pid) {
                Ok(target) => e.insert(Slot::Missing(target)),
                Err(_) => return,
            },
            Entry::Vacant(_) => return,
        };
        if let Slot::Missing(target) = slot
            && may_look()
            && let Ok(map) = PerfMap::open_in(target)
        {
            *slot = Slot::Open(map);
        }
        let Slot::Open(map) = slot else { return };
        for loc in stack.iter_mut().filter(|l| l.module.is_none()) {
            let mut hit = map.entries().find(loc.addr);
            let key = (pid, loc.addr);
            if hit.is_none()
                && missed
                    .get(&key)
                    .is_none_or(|&t| now.duration_since(t) >= LOOK_AGAIN)
            {
                hit = map.find(loc.addr);
                if hit.is_none() {
                    if missed.len() >= MAX_MISSED {
                        missed.clear();
                    }
                    missed.insert(key, now);
                }
            }
            loc.jit = hit.map(|(name, _)| name);
        }
    }

    /// Forget a process's map (it exited, or exec replaced its code).
    pub fn forget(&mut self, pid: u32) {
        self.maps.remove(&pid);
        self.looked.remove(&pid);
        self.missed.retain(|&(p, _), _| p != pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_name_ranges_and_bad_lines_are_skipped() {
        let mut e = Entries::default();
        e.feed(
            b"1000 20 JS:*hot file.js:3\n\
              zz 10 not hex\n\
              2000 0 empty\n\
              3000 10\n\
              ffffffffffffffff 10 overflows\n\
              \n\
              0x4000 0x8 Interpreter\r\n",
        );
        assert_eq!(e.skipped, 4);
        assert_eq!(e.find(0x1000), Some((Arc::from("JS:*hot file.js:3"), 0)));
        assert_eq!(e.find(0x101f), Some((Arc::from("JS:*hot file.js:3"), 0x1f)));
        assert_eq!(e.find(0x1020), None);
        assert_eq!(e.find(0xfff), None);
        assert_eq!(e.find(0x4007), Some((Arc::from("Interpreter"), 7)));
        assert_eq!(e.len(), 2);
    }

    #[test]
    fn a_line_split_across_reads_is_parsed_once_whole() {
        let mut e = Entries::default();
        e.feed(b"10 10 a\n20 1");
        assert_eq!(e.len(), 1);
        assert_eq!(e.find(0x20), None);
        e.feed(b"0 bb\n");
        assert_eq!(e.find(0x2f), Some((Arc::from("bb"), 0xf)));
        assert_eq!(e.skipped, 0);
    }

    #[test]
    fn later_lines_win_and_nested_entries_resolve() {
        let mut e = Entries::default();
        e.feed(b"100 100 blob\n140 10 stub\n100 100 reused\n");
        assert_eq!(e.find(0x145).map(|h| h.0), Some(Arc::from("stub")));
        assert_eq!(e.find(0x160).map(|h| h.0), Some(Arc::from("reused")));
    }

    #[test]
    fn entries_are_bounded() {
        let mut e = Entries::default();
        let mut text = Vec::new();
        for i in 0..MAX_ENTRIES as u64 + 10 {
            text.extend_from_slice(format!("{:x} 1 f\n", i * 16).as_bytes());
        }
        e.feed(&text);
        assert_eq!(e.len(), MAX_ENTRIES);
        // A later line for a known start still replaces it.
        e.feed(b"0 1 g\n");
        assert_eq!(e.find(0).map(|h| h.0), Some(Arc::from("g")));
    }

    #[test]
    fn an_endless_line_is_dropped_not_kept() {
        let mut e = Entries::default();
        let long = vec![b'a'; MAX_LINE + 10];
        e.feed(b"10 10 x\n");
        e.feed(&long);
        e.feed(&long);
        assert!(e.partial.len() <= MAX_LINE);
        e.feed(b"\n20 10 y\n");
        assert_eq!(e.skipped, 1);
        assert_eq!(e.find(0x25).map(|h| h.0), Some(Arc::from("y")));
    }

    /// Our own process, with a perf map written under `/tmp` as a JIT
    /// would: read, grown, rewritten; refused when it is a symlink, a FIFO
    /// or owned by another user.
    #[test]
    fn own_perf_map_is_read_grows_and_symlinks_are_refused() {
        use std::io::Write as _;
        let me = std::process::id();
        let ns = pid::ns_tgid(me).expect("own status");
        let path = format!("/tmp/perf-{ns}.map");
        let _ = std::fs::remove_file(&path);
        let mut f = File::create(&path).expect("create perf map");
        f.write_all(b"1000 10 first\n").expect("write");
        let mut map = PerfMap::open(me).expect("open own perf map");
        assert_eq!(map.find(0x1000).map(|h| h.0), Some(Arc::from("first")));
        assert_eq!(map.find(0x2000), None);
        f.write_all(b"2000 10 second\n").expect("write");
        assert_eq!(map.find(0x2004), Some((Arc::from("second"), 4)));
        // Rewritten shorter: read again from the start.
        f.set_len(0).expect("truncate");
        (&f).seek(SeekFrom::Start(0)).expect("seek");
        f.write_all(b"3000 10 third\n").expect("write");
        assert_eq!(map.find(0x3000).map(|h| h.0), Some(Arc::from("third")));
        assert_eq!(map.find(0x1000), None, "the old entries are gone");
        drop(f);

        // Owned by another user than the process's (ours is root's): refused.
        std::os::unix::fs::chown(&path, Some(4242), None)
            .expect("chown (the test suite runs as root)");
        let err = PerfMap::open(me).expect_err("a map owned by another user must be refused");
        assert!(
            matches!(err, PerfMapError::Owner { owner: 4242, .. }),
            "{err}"
        );
        std::os::unix::fs::chown(&path, Some(0), None).expect("chown back");

        // A symlink planted at the name (to a file of ours) is refused.
        let target = format!("/tmp/perf-{ns}.target");
        std::fs::rename(&path, &target).expect("rename");
        std::os::unix::fs::symlink(&target, &path).expect("symlink");
        let err = PerfMap::open(me).expect_err("a symlink must be refused");
        assert!(matches!(err, PerfMapError::Open { .. }), "{err}");
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(&target);

        // A FIFO does not block the open and is refused.
        nix::unistd::mkfifo(path.as_str(), nix::sys::stat::Mode::S_IRUSR).expect("mkfifo");
        let err = PerfMap::open(me).expect_err("a FIFO must be refused");
        assert!(matches!(err, PerfMapError::NotRegular { .. }), "{err}");
        let _ = std::fs::remove_file(&path);

        // Through PerfMaps: code a JIT names right before it runs it is
        // named at once, however soon after the last look at the map.
        let mut f = File::create(&path).expect("create perf map");
        f.write_all(b"1000 10 first\n").expect("write");
        let mut maps = PerfMaps::default();
        let mut name = |addr: u64| {
            let mut stack = [crate::proc::maps::Loc {
                addr,
                module: None,
                file: None,
                jit: None,
            }];
            maps.name_jit(me, &mut stack);
            stack[0].jit.clone()
        };
        assert_eq!(name(0x1000), Some(Arc::from("first")));
        f.write_all(b"2000 10 second\n").expect("write");
        assert_eq!(name(0x2004), Some(Arc::from("second")));
        // An address still missing is read for again, once per LOOK_AGAIN.
        assert_eq!(name(0x5000), None);
        f.write_all(b"5000 10 late\n").expect("write");
        std::thread::sleep(LOOK_AGAIN);
        assert_eq!(name(0x5000), Some(Arc::from("late")));
        let _ = std::fs::remove_file(&path);
    }
}
