//! Parse `/proc/PID/smaps` into [`Vma`]s.
//!
//! The parser is a hand-written byte scanner: a process can have tens of
//! thousands of mappings (60,000 VMAs is about 45 MB of smaps text), and
//! `memtrace snapshot` must cost little more than the kernel's own time to
//! generate that text. It therefore allocates nothing per line except the
//! mapping's name, and [`read_smaps`] parses on a second thread while the
//! kernel produces the next chunk.
//!
//! Region headers are recognised by their shape
//! (`START-END PERMS OFFSET MAJOR:MINOR INODE [NAME]`), whatever the
//! permissions, so guard pages (`---p`) and execute-only mappings (`--xp`)
//! are never lost. Every other non-empty line must be a `Key: value` field.
//! Fields unknown to this parser (newer kernels) are skipped; fields missing
//! on older kernels stay 0. All sizes are converted to bytes.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use super::ProcError;

/// Access permissions of a mapping, from the `rwxp`/`rwxs` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Perms {
    /// `r`: readable.
    pub read: bool,
    /// `w`: writable.
    pub write: bool,
    /// `x`: executable.
    pub exec: bool,
    /// `s`: shared (`MAP_SHARED`); `p` means private (copy-on-write).
    pub shared: bool,
}

impl Perms {
    /// The four-character form smaps prints, e.g. `rw-p`.
    pub fn as_str(&self) -> &'static str {
        // Index by the four bits so formatting 60,000 regions allocates nothing.
        const TABLE: [&str; 16] = [
            "---p", "r--p", "-w-p", "rw-p", "--xp", "r-xp", "-wxp", "rwxp", "---s", "r--s", "-w-s",
            "rw-s", "--xs", "r-xs", "-wxs", "rwxs",
        ];
        let i = usize::from(self.read)
            | usize::from(self.write) << 1
            | usize::from(self.exec) << 2
            | usize::from(self.shared) << 3;
        TABLE[i]
    }
}

impl fmt::Display for Perms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// The two-letter `VmFlags` mnemonics this parser knows, in bit order of
/// [`VmFlags`]. Unknown mnemonics are kept verbatim in [`VmFlags::other`].
pub const KNOWN_VM_FLAGS: [&str; 41] = [
    "rd", "wr", "ex", "sh", "mr", "mw", "me", "ms", "gd", "pf", "dw", "lo", "io", "sr", "rr", "dc",
    "de", "ac", "nr", "ht", "sf", "nl", "ar", "wf", "dd", "sd", "mm", "hg", "nh", "mg", "um", "uw",
    "ss", "sl", "lf", "bt", "mt", "ui", "dp", "gu", "mp",
];

/// The `VmFlags` line in a compact form: one bit per known mnemonic (see
/// [`KNOWN_VM_FLAGS`]) plus any unknown mnemonics as text. A `Vec<String>`
/// would cost several allocations per mapping, which matters at 60,000 VMAs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmFlags {
    /// Bit `i` set means `KNOWN_VM_FLAGS[i]` is present.
    pub bits: u64,
    /// Unknown mnemonics, space-separated, in the order the kernel printed them.
    pub other: String,
}

impl VmFlags {
    /// Whether the two-letter mnemonic `flag` (e.g. `"gd"`) is present.
    pub fn contains(&self, flag: &str) -> bool {
        match KNOWN_VM_FLAGS.iter().position(|f| *f == flag) {
            Some(i) => self.bits & (1 << i) != 0,
            None => self.other.split(' ').any(|f| f == flag),
        }
    }

    /// All mnemonics present: known ones in [`KNOWN_VM_FLAGS`] order, then unknown ones.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        KNOWN_VM_FLAGS
            .iter()
            .enumerate()
            .filter(|(i, _)| self.bits & (1 << i) != 0)
            .map(|(_, f)| *f)
            .chain(self.other.split(' ').filter(|f| !f.is_empty()))
    }

    fn parse(value: &[u8]) -> VmFlags {
        let mut flags = VmFlags::default();
        // The kernel prints ` xx` per flag and a space after the last:
        // take known two-letter words three bytes at a time while the
        // text has that shape, then the rest word by word.
        let mut at = 0;
        while let [b' ', a, b, b' ', ..] = *value.get(at..).unwrap_or_default() {
            let Some(i) = flag_index(&[a, b]) else {
                break;
            };
            flags.bits |= 1 << i;
            at += 3;
        }
        for word in value[at..].split(|b| *b == b' ').filter(|w| !w.is_empty()) {
            match flag_index(word) {
                Some(i) => flags.bits |= 1 << i,
                None => {
                    if !flags.other.is_empty() {
                        flags.other.push(' ');
                    }
                    flags.other.push_str(&String::from_utf8_lossy(word));
                }
            }
        }
        flags
    }
}

/// Bit index (plus one; 0 for none) of each two-lowercase-letter word,
/// at `(first - b'a') * 26 + (second - b'a')`, built from
/// [`KNOWN_VM_FLAGS`]. A table lookup per word: a linear search of
/// [`KNOWN_VM_FLAGS`] per word was measurable.
const FLAG_TABLE: [u8; 26 * 26] = {
    assert!(KNOWN_VM_FLAGS.len() <= 64, "VmFlags::bits has 64 bits");
    let mut table = [0u8; 26 * 26];
    let mut i = 0;
    while i < KNOWN_VM_FLAGS.len() {
        let f = KNOWN_VM_FLAGS[i].as_bytes();
        assert!(
            f.len() == 2 && f[0].is_ascii_lowercase() && f[1].is_ascii_lowercase(),
            "a known VmFlags mnemonic is two lowercase letters"
        );
        let at = (f[0] - b'a') as usize * 26 + (f[1] - b'a') as usize;
        assert!(table[at] == 0, "KNOWN_VM_FLAGS lists a mnemonic twice");
        table[at] = i as u8 + 1;
        i += 1;
    }
    table
};

/// Bit index of a known two-letter mnemonic.
fn flag_index(word: &[u8]) -> Option<u32> {
    let [a, b] = *word else {
        return None;
    };
    if !a.is_ascii_lowercase() || !b.is_ascii_lowercase() {
        return None;
    }
    let entry = FLAG_TABLE[usize::from(a - b'a') * 26 + usize::from(b - b'a')];
    entry.checked_sub(1).map(u32::from)
}

/// Defines [`Vma`] and, from the same list of size fields, everything the
/// parser needs to know about them ([`SizeField`]): each size field is
/// written once, as `field: "Key"` with its doc, in the order the kernel
/// prints them (the parser predicts each line's key from the previous one).
macro_rules! vma_and_size_fields {
    (
        $(#[$meta:meta])*
        pub struct Vma {
            $( $(#[$head_meta:meta])* pub $head:ident: $head_ty:ty, )*
            size_fields {
                $( $(#[$size_meta:meta])* $size:ident: $key:literal, )*
            }
            $( $(#[$tail_meta:meta])* pub $tail:ident: $tail_ty:ty, )*
        }
    ) => {
        $(#[$meta])*
        pub struct Vma {
            $( $(#[$head_meta])* pub $head: $head_ty, )*
            $( $(#[$size_meta])* pub $size: u64, )*
            $( $(#[$tail_meta])* pub $tail: $tail_ty, )*
        }

        /// A size field of [`Vma`] (a `Key:   N kB` line).
        #[expect(non_camel_case_types, reason = "named after the Vma field")]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        enum SizeField {
            $( $size, )*
        }

        impl SizeField {
            /// Number of size fields.
            const COUNT: usize = [$($key),*].len();
            /// Every size field, in kernel order.
            const ALL: [SizeField; SizeField::COUNT] = [$(SizeField::$size),*];
            /// The keys as smaps prints them, in kernel order.
            const KEYS: [&'static str; SizeField::COUNT] = [$($key),*];

            /// The field in `vma`.
            #[inline]
            fn slot(self, vma: &mut Vma) -> &mut u64 {
                match self {
                    $( SizeField::$size => &mut vma.$size, )*
                }
            }

            /// The size field of a key packed with [`pack`].
            #[inline]
            fn from_packed(key: u128) -> Option<SizeField> {
                match key {
                    $( k if k == const { pack($key.as_bytes()) } => Some(SizeField::$size), )*
                    _ => None,
                }
            }
        }
    };
}

vma_and_size_fields! {
    /// One mapping (VMA) from `/proc/PID/smaps`. All sizes are in bytes.
    ///
    /// Size fields that a kernel does not print (older kernels lack e.g.
    /// `Pss_Dirty` or `SwapPss`) are 0. `Pss_Anon`, `Pss_File` and `Pss_Shmem`
    /// only appear in `smaps_rollup`.
    #[derive(Debug, Clone, Default, PartialEq, Eq)]
    pub struct Vma {
        /// First address of the mapping.
        pub start: u64,
        /// One past the last address of the mapping.
        pub end: u64,
        /// Access permissions.
        pub perms: Perms,
        /// Offset into the mapped file (or the page offset for anonymous memory).
        pub offset: u64,
        /// Major number of the device holding the mapped file (0 if none).
        pub dev_major: u32,
        /// Minor number of the device holding the mapped file.
        pub dev_minor: u32,
        /// Inode of the mapped file (0 for anonymous memory).
        pub inode: u64,
        /// The raw pathname field, including a trailing `" (deleted)"`;
        /// `""` for unnamed anonymous memory. May contain spaces.
        pub name: String,
        /// Whether the name ends in `" (deleted)"` (file unlinked, memfd, SysV shm).
        pub deleted: bool,
        size_fields {
            /// `Size`: virtual size.
            size: "Size",
            /// `KernelPageSize`.
            kernel_page_size: "KernelPageSize",
            /// `MMUPageSize`.
            mmu_page_size: "MMUPageSize",
            /// `Rss`: resident set size.
            rss: "Rss",
            /// `Pss`: proportional set size (shared pages divided among sharers).
            pss: "Pss",
            /// `Pss_Dirty`.
            pss_dirty: "Pss_Dirty",
            /// `Pss_Anon` (rollup only).
            pss_anon: "Pss_Anon",
            /// `Pss_File` (rollup only).
            pss_file: "Pss_File",
            /// `Pss_Shmem` (rollup only).
            pss_shmem: "Pss_Shmem",
            /// `Shared_Clean`.
            shared_clean: "Shared_Clean",
            /// `Shared_Dirty`.
            shared_dirty: "Shared_Dirty",
            /// `Private_Clean`.
            private_clean: "Private_Clean",
            /// `Private_Dirty`.
            private_dirty: "Private_Dirty",
            /// `Referenced`.
            referenced: "Referenced",
            /// `Anonymous`: resident anonymous pages (including copy-on-write copies of file pages).
            anonymous: "Anonymous",
            /// `KSM`: pages merged by kernel same-page merging.
            ksm: "KSM",
            /// `LazyFree`: pages freed with `MADV_FREE` but not yet reclaimed.
            lazy_free: "LazyFree",
            /// `AnonHugePages`: anonymous transparent huge pages.
            anon_huge_pages: "AnonHugePages",
            /// `ShmemPmdMapped`: shmem huge pages.
            shmem_pmd_mapped: "ShmemPmdMapped",
            /// `FilePmdMapped`: file huge pages.
            file_pmd_mapped: "FilePmdMapped",
            /// `Shared_Hugetlb`: hugetlbfs pages shared with other processes (not in `Rss`).
            shared_hugetlb: "Shared_Hugetlb",
            /// `Private_Hugetlb`: private hugetlbfs pages (not in `Rss`).
            private_hugetlb: "Private_Hugetlb",
            /// `Swap`: swapped-out anonymous memory.
            swap: "Swap",
            /// `SwapPss`: proportional share of `Swap`.
            swap_pss: "SwapPss",
            /// `Locked`: `mlock`ed memory.
            locked: "Locked",
        }
        /// `THPeligible`: whether transparent huge pages may back this mapping.
        pub thp_eligible: bool,
        /// `ProtectionKey` (x86 memory protection keys).
        pub protection_key: u32,
        /// `VmFlags`.
        pub vm_flags: VmFlags,
    }
}

/// The suffix the kernel appends to the name of an unlinked file.
pub const DELETED_SUFFIX: &str = " (deleted)";

impl Vma {
    /// The name without a trailing `" (deleted)"`.
    pub fn path(&self) -> &str {
        if self.deleted {
            self.name.strip_suffix(DELETED_SUFFIX).unwrap_or(&self.name)
        } else {
            &self.name
        }
    }

    /// `Private_Clean + Private_Dirty`: memory only this process maps (USS).
    pub fn private(&self) -> u64 {
        self.private_clean.saturating_add(self.private_dirty)
    }

    /// `Shared_Clean + Shared_Dirty`: resident memory also mapped elsewhere.
    pub fn shared(&self) -> u64 {
        self.shared_clean.saturating_add(self.shared_dirty)
    }

    /// Whether this is shared anonymous memory (`MAP_SHARED |
    /// MAP_ANONYMOUS`, or a shared mapping of `/dev/zero`). The kernel backs
    /// it with an unlinked shmem file it calls `/dev/zero`, so smaps shows
    /// `/dev/zero (deleted)` with `s` in the permissions; its resident pages
    /// count in `Rss` (as shmem) and never in `Anonymous`.
    pub fn is_shared_anonymous(&self) -> bool {
        self.perms.shared && self.path() == "/dev/zero"
    }
}

/// Why smaps text could not be parsed: the 1-based line number and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed smaps at line {line}: {reason}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What was wrong with the line.
    pub reason: &'static str,
}

/// Parse smaps text (or `smaps_rollup` text, which is one region) into VMAs.
///
/// Never panics, whatever the input. Complete and unterminated last lines
/// are treated alike; an unterminated line that does not parse is an error.
pub fn parse(input: &[u8]) -> Result<Vec<Vma>, ParseError> {
    let mut parser = Parser::default();
    parser.feed(input)?;
    parser.finish()
}

/// Parse smaps text from a reader, in chunks.
pub fn parse_reader<R: Read>(mut reader: R) -> Result<Vec<Vma>, ReadError> {
    let mut parser = Parser::default();
    let mut buf = vec![0u8; CHUNK];
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            // A single line longer than the buffer: grow rather than split it.
            buf.resize(buf.len() * 2, 0);
        }
        let n = match reader.read(&mut buf[filled..]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ReadError::Io(e)),
        };
        if n == 0 {
            parser.feed(&buf[..filled]).map_err(ReadError::Parse)?;
            return parser.finish().map_err(ReadError::Parse);
        }
        filled += n;
        if let Some(last_nl) = buf[..filled].iter().rposition(|b| *b == b'\n') {
            parser.feed(&buf[..=last_nl]).map_err(ReadError::Parse)?;
            buf.copy_within(last_nl + 1..filled, 0);
            filled -= last_nl + 1;
        }
    }
}

/// An error from reading smaps: reading failed, the text was malformed, or
/// (a live read) the process's own changes tore it.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The read itself failed.
    #[error(transparent)]
    Io(io::Error),
    /// The text was malformed.
    #[error(transparent)]
    Parse(ParseError),
    /// The process changed its mappings during the read in a way that
    /// left some memory counted twice or not at all (see `Parser::restate`):
    /// read it again.
    #[error("the process changed its mappings during the read")]
    Torn,
}

/// Regions restated over regions already read, by every read in this
/// process so far: see [`restatements`].
static RESTATEMENTS: AtomicU64 = AtomicU64::new(0);

/// How many times the smaps text parsed by this process so far went back
/// over regions already read (the process being read changed its mappings
/// between two `read(2)`s), whether the restatement replaced them exactly
/// or tore the read. Tells how restless a target is, and lets tests know
/// that the case they check happened.
pub fn restatements() -> u64 {
    RESTATEMENTS.load(Ordering::Relaxed)
}

/// How many times in a row a live read torn by the process's own changes
/// is tried before [`ProcError::Unsettled`] is the answer.
pub const READ_ATTEMPTS: u32 = 4;

/// Run `read` (one whole read of a process's smaps) again while it fails
/// with [`ProcError::Unsettled`], [`READ_ATTEMPTS`] times at most. A tear
/// needs a change at the place and moment one `read(2)` ends, so on all
/// but the most restless processes the next read is whole. (One that
/// resizes hundreds of regions without pause tears about half its reads:
/// it gets the error, not a figure that counts memory twice.)
pub fn settled<T>(mut read: impl FnMut() -> Result<T, ProcError>) -> Result<T, ProcError> {
    let mut attempts = 1;
    loop {
        match read() {
            Err(ProcError::Unsettled { .. }) if attempts < READ_ATTEMPTS => attempts += 1,
            result => return result,
        }
    }
}

/// Read and parse `/proc/PID/smaps`.
///
/// The kernel generates smaps text while we read it, and that dominates the
/// cost. To hide the parsing, one thread reads chunks and hands them to a
/// second that parses them, so the parse of chunk N overlaps the kernel's
/// generation of chunk N+1.
///
/// An empty result is valid here (see [`crate::snapshot::capture`] for
/// telling kernel threads and exited processes apart).
///
/// A read torn by the process's own changes is read again ([`settled`]).
pub fn read_smaps(pid: u32) -> Result<Vec<Vma>, ProcError> {
    settled(|| {
        let path = format!("/proc/{pid}/smaps");
        let file = File::open(&path).map_err(|e| ProcError::from_io(pid, &path, e))?;
        pipeline(file, seq_read_size(), &mut |_| true)
            .and_then(Parser::finish_read)
            .map_err(|e| read_error(pid, &path, e))
    })
}

/// Read and parse `/proc/PID/maps` (the header lines of smaps without
/// their fields). A read torn by the process's own changes is read again,
/// up to [`READ_ATTEMPTS`] times; maps count no memory, so the last is
/// kept even if torn: each address described once, by the newest
/// description read.
pub fn read_maps(pid: u32) -> Result<Vec<Vma>, ProcError> {
    let path = format!("/proc/{pid}/maps");
    let mut attempts = 1;
    loop {
        let bytes = std::fs::read(&path).map_err(|e| ProcError::from_io(pid, &path, e))?;
        let mut parser = Parser::default();
        parser
            .feed(&bytes)
            .map_err(|error| ProcError::Parse { pid, error })?;
        if parser.torn_at.is_none() || attempts == READ_ATTEMPTS {
            return Ok(parser.vmas);
        }
        attempts += 1;
    }
}

/// [`read_smaps`], also handing each VMA to `each` as soon as it is
/// complete, in order, on the parser thread: work per VMA (classifying,
/// totalling) then overlaps the kernel's generation of the rest instead of
/// following the read. The last VMA is handed over on the calling thread
/// once the read is over. On an error, `each` may have seen some VMAs;
/// on [`ProcError::Unsettled`] start again ([`settled`]).
pub fn read_smaps_with(
    pid: u32,
    each: &mut (dyn FnMut(&Vma) + Send),
) -> Result<Vec<Vma>, ProcError> {
    let path = format!("/proc/{pid}/smaps");
    let file = File::open(&path).map_err(|e| ProcError::from_io(pid, &path, e))?;
    let mut parser = pipeline(file, seq_read_size(), &mut |parser| {
        for vma in parser.hand_out(1) {
            each(vma);
        }
        true
    })
    .map_err(|e| read_error(pid, &path, e))?;
    for vma in parser.hand_out(0) {
        each(vma);
    }
    parser.finish_read().map_err(|e| read_error(pid, &path, e))
}

/// The [`ProcError`] for a failed read of `pid`'s smaps at `path`.
fn read_error(pid: u32, path: &str, e: ReadError) -> ProcError {
    match e {
        ReadError::Io(e) => ProcError::from_io(pid, path, e),
        ReadError::Parse(error) => ProcError::Parse { pid, error },
        ReadError::Torn => ProcError::Unsettled { pid },
    }
}

/// Read and parse an smaps file at `path` the way [`read_smaps`] does
/// (two threads, chunked). Useful for saved smaps files.
pub fn read_file(path: &std::path::Path) -> Result<Vec<Vma>, ReadError> {
    pipeline(
        File::open(path).map_err(ReadError::Io)?,
        usize::MAX,
        &mut |_| true,
    )?
    .finish()
    .map_err(ReadError::Parse)
}

/// Bytes handed from the reader thread to the parser thread at a time.
/// Small enough that the three buffers in circulation stay in the CPU's
/// caches (the kernel writes a chunk, the parser reads it right after),
/// large enough that thread hand-offs are rare (about one per 700 VMAs).
const CHUNK: usize = 512 << 10;

/// Read `file` on this thread, at most `max_read` bytes per `read(2)`,
/// and parse it on a second one, calling `after_chunk` on the parser
/// thread after each chunk is parsed (it may take the complete VMAs out;
/// `false` stops reading). Returns the parser, holding what `after_chunk`
/// left.
fn pipeline(
    mut file: File,
    max_read: usize,
    after_chunk: &mut (dyn FnMut(&mut Parser) -> bool + Send),
) -> Result<Parser, ReadError> {
    // Buffers go round between the two threads: reused buffers stay hot in
    // the cache, where fresh ones would be page faults and zeroing. A chunk
    // is sent with its length; the buffers themselves are never shrunk.
    let (full_tx, full_rx) = mpsc::sync_channel::<(Vec<u8>, usize)>(2);
    let (empty_tx, empty_rx) = mpsc::channel::<Vec<u8>>();
    std::thread::scope(|scope| {
        let parse_thread = scope.spawn(move || -> Result<Parser, ParseError> {
            let mut parser = Parser::default();
            let mut result = Ok(());
            for (chunk, len) in full_rx {
                if result.is_ok() {
                    result = parser.feed(&chunk[..len]);
                    if result.is_ok() && !after_chunk(&mut parser) {
                        // Nobody wants the rest: stop the reader.
                        break;
                    }
                }
                // Keep draining after an error so the reader never blocks.
                let _ = empty_tx.send(chunk);
            }
            result.map(|()| parser)
        });

        let read_result = read_chunks(&mut file, max_read, &full_tx, &empty_rx);
        drop(full_tx);
        let parsed = parse_thread.join().unwrap_or(Err(ParseError {
            line: 0,
            reason: "parser thread panicked",
        }));
        // A parse error explains more than the read error it may have caused.
        let parser = parsed.map_err(ReadError::Parse)?;
        read_result.map_err(ReadError::Io)?;
        Ok(parser)
    })
}

/// The reader's side of [`pipeline`]: fill buffers with whole lines and
/// send them to the parser, until the end of the file or the parser stops.
fn read_chunks(
    file: &mut File,
    max_read: usize,
    full_tx: &mpsc::SyncSender<(Vec<u8>, usize)>,
    empty_rx: &mpsc::Receiver<Vec<u8>>,
) -> io::Result<()> {
    // Bytes after the last newline of the previous chunk.
    let mut carry: Vec<u8> = Vec::new();
    let mut buffers_made = 0;
    loop {
        // Three buffers: one being filled, two queued or being parsed.
        let mut buf = if buffers_made < 3 {
            buffers_made += 1;
            vec![0u8; CHUNK]
        } else {
            match empty_rx.recv() {
                Ok(b) => b,
                // The parser stopped (it failed, or nobody wants more).
                Err(_) => return Ok(()),
            }
        };
        if buf.len() < carry.len() + CHUNK / 2 {
            // A line longer than the buffer: grow rather than split it.
            buf.resize(carry.len() + CHUNK, 0);
        }
        buf[..carry.len()].copy_from_slice(&carry);
        let mut filled = carry.len();
        carry.clear();
        let n = fill(file, &mut buf, &mut filled, max_read)?;
        if n == 0 {
            if filled > 0 {
                let _ = full_tx.send((buf, filled));
            }
            return Ok(());
        }
        match buf[..filled].iter().rposition(|b| *b == b'\n') {
            Some(i) => {
                carry.extend_from_slice(&buf[i + 1..filled]);
                if full_tx.send((buf, i + 1)).is_err() {
                    return Ok(());
                }
            }
            None => {
                carry.extend_from_slice(&buf[..filled]);
                // Nothing to parse yet; the buffer stays in circulation.
                if full_tx.send((buf, 0)).is_err() {
                    return Ok(());
                }
            }
        }
    }
}

/// Start reading and parsing `/proc/PID/smaps` in the background, and get
/// its VMAs in batches, in smaps order, while the kernel is still
/// generating the rest: the consumer (e.g. [`crate::attribution::join`])
/// works on the first VMAs while the kernel produces the last, and
/// whatever the caller does meanwhile overlaps the read.
///
/// Reading happens on a thread of its own and parsing on another, as in
/// [`read_smaps`]. Give batches back with [`SmapsStream::recycle`] so the
/// parser refills them instead of allocating. Call
/// [`SmapsStream::finish`] after the last batch to learn whether the whole
/// file was read and parsed; dropping the stream early stops the reading.
pub fn stream_smaps(pid: u32) -> Result<SmapsStream, ProcError> {
    let path = format!("/proc/{pid}/smaps");
    let file = File::open(&path).map_err(|e| ProcError::from_io(pid, &path, e))?;
    let (batch_tx, batches) = mpsc::channel::<Vec<Vma>>();
    let (recycle, recycled) = mpsc::channel::<Vec<Vma>>();
    let thread = std::thread::Builder::new()
        .name("memtrace-smaps".into())
        .spawn(move || -> Result<(), ReadError> {
            let mut sink = BatchSink {
                batches: batch_tx,
                recycled,
            };
            // The last VMA may have more lines in the next chunk: keep it.
            let mut parser = pipeline(file, seq_read_size(), &mut |parser| sink.send(parser, 1))?;
            sink.send(&mut parser, 0);
            parser.finish_read().map(drop)
        })
        .map_err(|e| ProcError::from_io(pid, &path, e))?;
    Ok(SmapsStream {
        batches,
        recycle,
        thread: Some(thread),
        pid,
        path,
    })
}

/// The parser thread's end of a [`SmapsStream`].
struct BatchSink {
    batches: mpsc::Sender<Vec<Vma>>,
    recycled: mpsc::Receiver<Vec<Vma>>,
}

impl BatchSink {
    /// Send the parser's VMAs but the last `keep`; `false` when the
    /// stream is gone.
    fn send(&mut self, parser: &mut Parser, keep: usize) -> bool {
        if parser.hand_out(keep).is_empty() {
            return true;
        }
        let mut batch = self.recycled.try_recv().unwrap_or_default();
        batch.clear();
        batch.extend(parser.drain_handed());
        self.batches.send(batch).is_ok()
    }
}

/// VMAs of one process's smaps, arriving while it is read: see
/// [`stream_smaps`].
pub struct SmapsStream {
    batches: mpsc::Receiver<Vec<Vma>>,
    recycle: mpsc::Sender<Vec<Vma>>,
    thread: Option<std::thread::JoinHandle<Result<(), ReadError>>>,
    pid: u32,
    path: String,
}

impl SmapsStream {
    /// The next VMAs, in smaps order (waiting for them), or `None` after
    /// the last (or when reading failed: [`SmapsStream::finish`] says).
    pub fn next_batch(&mut self) -> Option<Vec<Vma>> {
        self.batches.recv().ok()
    }

    /// Give a batch back for the parser to refill.
    pub fn recycle(&self, batch: Vec<Vma>) {
        let _ = self.recycle.send(batch);
    }

    /// Wait for the reading to end: `Ok` if the whole file was read and
    /// parsed (every batch was then handed out, unless the caller stopped
    /// taking them early). [`ProcError::Unsettled`] when the process
    /// changed its mappings in a way that tore the read: the batches
    /// count some memory twice or not at all, so start a new stream
    /// ([`settled`]).
    pub fn finish(mut self) -> Result<(), ProcError> {
        let (pid, path) = (self.pid, std::mem::take(&mut self.path));
        let result = match self.thread.take().map(std::thread::JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) | None => Err(ReadError::Parse(ParseError {
                line: 0,
                reason: "smaps reader thread panicked",
            })),
        };
        result.map_err(|e| read_error(pid, &path, e))
    }
}

impl Drop for SmapsStream {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            // Stop the parser (its sends fail), which stops the reader.
            let (_, unused) = mpsc::channel();
            drop(std::mem::replace(&mut self.batches, unused));
            let _ = thread.join();
        }
    }
}

/// Read into `buf[*filled..]` until it is full or the file ends, at most
/// `max_read` bytes per `read(2)`, retrying on EINTR. Returns the number of
/// bytes read (0 only at end of file).
///
/// seq_file hands out at most about one page per `read(2)` whatever the
/// buffer size, so a chunk takes many reads; handing each page to the
/// parser thread separately would cost a thread wake-up per page.
fn fill(file: &mut File, buf: &mut [u8], filled: &mut usize, max_read: usize) -> io::Result<usize> {
    let start = *filled;
    while *filled < buf.len() {
        let end = buf.len().min(filled.saturating_add(max_read));
        match file.read(&mut buf[*filled..end]) {
            Ok(0) => break,
            Ok(n) => *filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(*filled - start)
}

/// How much to ask of `/proc/PID/smaps` per `read(2)`: three quarters of
/// its seq_file buffer (one page).
///
/// seq_file formats whole records (one VMA, about 700 bytes, more with a
/// long path) into a one-page buffer until it holds as much as was asked
/// for; a record that does not fit is formatted, thrown away and formatted
/// again by the next `read`. Asked for a large buffer (`cat` asks for 128
/// KiB), every `read` therefore formats one record for nothing: a sixth
/// of the kernel's work at 60,000 VMAs. Asked for less than a page minus
/// a record, it stops before the buffer overflows and keeps the rest for
/// the next `read`: a few more system calls, about 10% less kernel time.
fn seq_read_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(page).map_or(3072, |p| p.max(4096) / 4 * 3)
}

/// Incremental line parser: feed it whole lines (any number per call).
#[derive(Default)]
struct Parser {
    vmas: Vec<Vma>,
    line: usize,
    /// Index into `LABELS` of the field expected next.
    next_label: usize,
    /// How many of `vmas`, from the front, a consumer has been given
    /// ([`Parser::hand_out`]): a restated range cannot take those back.
    handed: usize,
    /// End of the last VMA a consumer took away ([`Parser::drain_handed`]).
    drained_end: u64,
    /// Line and kind of the first region that could not be placed
    /// exactly: a restatement over part of a region or over regions handed
    /// out (see [`Parser::restate`]), or one going backwards.
    torn_at: Option<(usize, &'static str)>,
}

impl Parser {
    /// Parse `input`; a last line without `'\n'` is parsed as a line too.
    fn feed(&mut self, input: &[u8]) -> Result<(), ParseError> {
        let mut i = 0;
        while i < input.len() {
            self.line += 1;
            // Nearly every line is a `Key:   N kB` field: parse those in one
            // pass over their bytes. Anything unusual takes the general path.
            if let Some(next) = self.fixed_field(input, i) {
                i = next;
                continue;
            }
            if let Some(next) = self.flags_line(input, i) {
                i = next;
                continue;
            }
            if let Some(next) = self.fast_field(input, i) {
                i = next;
                continue;
            }
            let end = find_newline(&input[i..]).map_or(input.len(), |p| i + p);
            self.line_(&input[i..end]).map_err(|reason| ParseError {
                line: self.line,
                reason,
            })?;
            i = end + 1;
        }
        Ok(())
    }

    /// The common case of all: a 28-byte line `Key:` padded to 16 bytes, the
    /// value right-aligned in 8, then ` kB\n`, with the key the one that
    /// usually follows the previous one. Returns the next line's start, or
    /// `None` (having changed nothing).
    #[inline]
    fn fixed_field(&mut self, s: &[u8], start: usize) -> Option<usize> {
        let line: &[u8; 28] = s.get(start..start + 28)?.try_into().ok()?;
        if line[24..] != *b" kB\n" {
            return None;
        }
        let mut label_bytes = [0u8; 16];
        label_bytes.copy_from_slice(&line[..16]);
        let label = u128::from_le_bytes(label_bytes);
        let index = match LABELS.get(self.next_label) {
            Some(l) if *l == label => self.next_label,
            _ => LABELS.iter().position(|l| *l == label)?,
        };
        let mut n: u64 = 0;
        let mut seen_digit = false;
        for &b in &line[16..24] {
            match b {
                b' ' if !seen_digit => {}
                b'0'..=b'9' => {
                    n = n * 10 + u64::from(b - b'0');
                    seen_digit = true;
                }
                _ => return None,
            }
        }
        if !seen_digit {
            return None;
        }
        let vma = self.vmas.last_mut()?;
        *SizeField::ALL.get(index)?.slot(vma) = n * 1024;
        self.next_label = index + 1;
        Some(start + 28)
    }

    /// The two lines every region has after its sizes, `THPeligible:    N`
    /// and `VmFlags: rd wr …`, complete and well-formed, without the
    /// general path's search for the key. Returns the next line's start,
    /// or `None` (having changed nothing).
    #[inline]
    fn flags_line(&mut self, s: &[u8], start: usize) -> Option<usize> {
        let rest = s.get(start..)?;
        if let Some(value) = rest.strip_prefix(b"THPeligible:") {
            let digits = value.iter().take_while(|b| **b == b' ').count();
            let [digit @ b'0'..=b'9', b'\n', ..] = *value.get(digits..)? else {
                return None;
            };
            self.vmas.last_mut()?.thp_eligible = digit != b'0';
            return Some(start + b"THPeligible:".len() + digits + 2);
        }
        if let Some(value) = rest.strip_prefix(b"VmFlags:") {
            let end = find_newline(value)?;
            self.vmas.last_mut()?.vm_flags = VmFlags::parse(&value[..end]);
            return Some(start + b"VmFlags:".len() + end + 1);
        }
        None
    }

    /// Parse a complete `Key:   N kB\n` line of a known size field at
    /// `start` and return the start of the next line, or `None` (having
    /// changed nothing) for the general path to handle.
    #[inline]
    fn fast_field(&mut self, s: &[u8], start: usize) -> Option<usize> {
        if !s.get(start)?.is_ascii_uppercase() {
            return None;
        }
        let vma = self.vmas.last_mut()?;
        let mut i = start;
        let mut key: u128 = 0;
        loop {
            let b = *s.get(i)?;
            if b == b':' {
                break;
            }
            if b == b'\n' || i - start >= 16 {
                return None;
            }
            key |= u128::from(b) << (8 * (i - start));
            i += 1;
        }
        let slot = SizeField::from_packed(key)?.slot(vma);
        i += 1;
        // The kernel pads values to a column with spaces: skip 8 at a time.
        while let Some(chunk) = s.get(i..i + 8) {
            if chunk != b"        " {
                break;
            }
            i += 8;
        }
        while s.get(i) == Some(&b' ') {
            i += 1;
        }
        let digits = i;
        let mut n: u64 = 0;
        while let Some(&b) = s.get(i) {
            if !b.is_ascii_digit() {
                break;
            }
            n = n.wrapping_mul(10).wrapping_add(u64::from(b - b'0'));
            i += 1;
        }
        // More than 19 digits could have wrapped: let the general path saturate.
        if i == digits || i - digits > 19 || s.get(i..i + 4) != Some(b" kB\n") {
            return None;
        }
        *slot = n.saturating_mul(1024);
        Some(i + 4)
    }

    /// The VMAs of saved text: one torn by a change during the read that
    /// produced it counts some memory twice, so it is an error.
    fn finish(self) -> Result<Vec<Vma>, ParseError> {
        match self.torn_at {
            Some((line, reason)) => Err(ParseError { line, reason }),
            None => Ok(self.vmas),
        }
    }

    /// The VMAs of a live read, or [`ReadError::Torn`]: read it again. (A
    /// region going backwards counts as torn here: kernels before 5.2
    /// resume a read by position, which a change can move back.)
    fn finish_read(self) -> Result<Vec<Vma>, ReadError> {
        if self.torn_at.is_some() {
            return Err(ReadError::Torn);
        }
        Ok(self.vmas)
    }

    /// Give a consumer the VMAs it has not had yet, but the last `keep`
    /// (the last may have more lines in the next chunk).
    fn hand_out(&mut self, keep: usize) -> &[Vma] {
        let from = self.handed;
        self.handed = self.vmas.len().saturating_sub(keep).max(from);
        &self.vmas[from..self.handed]
    }

    /// Take away the VMAs handed out (a stream's batches own them now).
    fn drain_handed(&mut self) -> std::vec::Drain<'_, Vma> {
        if let Some(last) = self.vmas[..self.handed].last() {
            self.drained_end = last.end;
        }
        let n = std::mem::take(&mut self.handed);
        self.vmas.drain(..n)
    }

    /// End of the last VMA a consumer has been given.
    fn handed_end(&self) -> u64 {
        self.vmas[..self.handed]
            .last()
            .map_or(self.drained_end, |v| v.end)
    }

    fn push_region(&mut self, vma: Vma) {
        let last_end = self.vmas.last().map_or(self.drained_end, |v| v.end);
        if vma.end < last_end {
            self.torn_at
                .get_or_insert((self.line, "regions out of address order"));
        } else if vma.start < last_end {
            self.restate(&vma);
        }
        self.vmas.push(vma);
        self.next_label = 0;
    }

    /// `vma` starts below the end of regions already read: the process
    /// changed its mappings between two of our `read`s. Each `read`
    /// resumes at the region holding the next address, and a change in
    /// between (a heap grown by `mprotect`, merging two regions) can have
    /// moved that region's start back over regions already read. `vma`
    /// is the newer description of its range and replaces theirs. That is
    /// exact only when they lie wholly inside it and no consumer has seen
    /// them; otherwise some memory is counted twice or not at all, and
    /// the read is torn.
    fn restate(&mut self, vma: &Vma) {
        RESTATEMENTS.fetch_add(1, Ordering::Relaxed);
        if vma.start < self.handed_end() {
            self.tear();
        }
        while self.vmas.len() > self.handed && self.vmas.last().is_some_and(|v| v.end > vma.start) {
            if self.vmas.pop().is_some_and(|stale| stale.start < vma.start) {
                self.tear();
            }
        }
    }

    fn tear(&mut self) {
        self.torn_at.get_or_insert((
            self.line,
            "a region restated over regions it does not cover (the process changed its \
             mappings while this text was read)",
        ));
    }

    fn line_(&mut self, line: &[u8]) -> Result<(), &'static str> {
        // Most field lines never get here (see `fixed_field`/`fast_field`).
        if looks_like_header(line) {
            self.push_region(header(line)?);
            return Ok(());
        }
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            return Ok(());
        }
        if let Some(colon) = line.iter().position(|b| *b == b':') {
            let key = &line[..colon];
            if !key.is_empty() && key.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_') {
                let Some(vma) = self.vmas.last_mut() else {
                    return Err("field before the first region header");
                };
                return field(vma, key, &line[colon + 1..]);
            }
        }
        Err("neither a region header nor a `Key: value` field")
    }
}

/// Position of the first `'\n'`, eight bytes at a time (headers are padded
/// with runs of spaces, and a byte loop here was a third of parse time).
fn find_newline(s: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    const NL: u64 = 0x0a0a_0a0a_0a0a_0a0a;
    let mut chunks = s.chunks_exact(8);
    let mut offset = 0;
    for chunk in chunks.by_ref() {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word) ^ NL;
        // A zero byte in `x` is a newline; the lowest flagged byte is the first.
        let found = x.wrapping_sub(ONES) & !x & HIGHS;
        if found != 0 {
            return Some(offset + (found.trailing_zeros() / 8) as usize);
        }
        offset += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|b| *b == b'\n')
        .map(|p| offset + p)
}

/// `hex-hex ` at the start of the line: the shape of a region header.
fn looks_like_header(line: &[u8]) -> bool {
    let a = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if a == 0 || line.get(a) != Some(&b'-') {
        return false;
    }
    let rest = &line[a + 1..];
    let b = rest.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    b > 0 && rest.get(b) == Some(&b' ')
}

/// Parse `START-END PERMS OFFSET MAJOR:MINOR INODE [NAME]`.
fn header(line: &[u8]) -> Result<Vma, &'static str> {
    let mut cur = Cursor { s: line };
    let start = cur.hex_until(b'-').ok_or("bad start address")?;
    let end = cur.hex_until(b' ').ok_or("bad end address")?;
    if end < start {
        return Err("region end below its start");
    }
    cur.skip_spaces();
    let perms = cur.word();
    let perms = match perms {
        [r, w, x, s]
            if matches!(r, b'r' | b'-')
                && matches!(w, b'w' | b'-')
                && matches!(x, b'x' | b'-')
                && matches!(s, b'p' | b's') =>
        {
            Perms {
                read: *r == b'r',
                write: *w == b'w',
                exec: *x == b'x',
                shared: *s == b's',
            }
        }
        _ => return Err("bad permissions (expected e.g. rw-p)"),
    };
    cur.skip_spaces();
    let offset = cur.hex_until(b' ').ok_or("bad offset")?;
    cur.skip_spaces();
    let dev_major = cur.hex_until(b':').ok_or("bad device")?;
    let dev_minor = cur.hex_until(b' ').ok_or("bad device")?;
    let (Ok(dev_major), Ok(dev_minor)) = (u32::try_from(dev_major), u32::try_from(dev_minor))
    else {
        return Err("bad device");
    };
    cur.skip_spaces();
    let inode = dec(cur.word()).ok_or("bad inode")?;
    cur.skip_spaces();
    let name_bytes = cur.s;
    // Strip a trailing '\r' only; names may legitimately end in spaces.
    let name_bytes = name_bytes.strip_suffix(b"\r").unwrap_or(name_bytes);
    let name = match std::str::from_utf8(name_bytes) {
        Ok(s) => s.to_owned(),
        Err(_) => String::from_utf8_lossy(name_bytes).into_owned(),
    };
    let deleted = name.ends_with(DELETED_SUFFIX);
    Ok(Vma {
        start,
        end,
        perms,
        offset,
        dev_major,
        dev_minor,
        inode,
        name,
        deleted,
        ..Vma::default()
    })
}

/// A field key (at most 16 bytes) packed little-endian into an integer, so
/// that finding its slot is integer comparisons rather than string compares.
const fn pack(key: &[u8]) -> u128 {
    let mut k: u128 = 0;
    let mut i = 0;
    while i < key.len() {
        k |= (key[i] as u128) << (8 * i);
        i += 1;
    }
    k
}

/// `Key:` padded with spaces to 16 bytes, as the kernel prints size fields
/// (`SEQ_PUT_DEC("Rss:            ", …)`), packed into integers, in
/// [`SizeField::ALL`] (kernel) order, so the next line's label can be
/// predicted.
const LABELS: [u128; SizeField::COUNT] = {
    let mut labels = [0; SizeField::COUNT];
    let mut i = 0;
    while i < SizeField::COUNT {
        labels[i] = label(SizeField::KEYS[i].as_bytes());
        i += 1;
    }
    labels
};

/// `key` and a colon, padded with spaces to 16 bytes, packed.
const fn label(key: &[u8]) -> u128 {
    assert!(key.len() < 16, "a size field's key fits its 16-byte label");
    let mut padded = [b' '; 16];
    let mut i = 0;
    while i < key.len() {
        padded[i] = key[i];
        i += 1;
    }
    padded[key.len()] = b':';
    u128::from_le_bytes(padded)
}

/// Apply one `Key: value` field line to `vma`.
fn field(vma: &mut Vma, key: &[u8], value: &[u8]) -> Result<(), &'static str> {
    match key {
        b"THPeligible" => {
            vma.thp_eligible = number(value).ok_or("bad THPeligible value")?.0 != 0;
        }
        b"ProtectionKey" => {
            let n = number(value).ok_or("bad ProtectionKey value")?.0;
            vma.protection_key = u32::try_from(n).map_err(|_| "bad ProtectionKey value")?;
        }
        b"VmFlags" => vma.vm_flags = VmFlags::parse(value),
        // Longer keys would not pack into a u128; no size field is that long.
        _ if key.len() <= 16 => {
            // A field from a newer kernel: skip it rather than fail.
            let Some(f) = SizeField::from_packed(pack(key)) else {
                return Ok(());
            };
            let (n, rest) = number(value).ok_or("bad size value")?;
            *f.slot(vma) = match trim_ascii(rest) {
                b"kB" => n.saturating_mul(1024),
                b"" | b"B" => n,
                _ => return Err("unknown size unit"),
            };
        }
        _ => {}
    }
    Ok(())
}

/// Leading spaces, then a decimal number; returns it and the text after it.
fn number(value: &[u8]) -> Option<(u64, &[u8])> {
    let mut i = 0;
    while i < value.len() && (value[i] == b' ' || value[i] == b'\t') {
        i += 1;
    }
    let digits_start = i;
    let mut n: u64 = 0;
    while i < value.len() && value[i].is_ascii_digit() {
        n = n
            .saturating_mul(10)
            .saturating_add(u64::from(value[i] - b'0'));
        i += 1;
    }
    (i > digits_start).then(|| (n, &value[i..]))
}

fn dec(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(n)
}

fn trim_ascii(s: &[u8]) -> &[u8] {
    s.trim_ascii()
}

/// The value of each byte as a hex digit, or 0xff.
const HEX_DIGIT: [u8; 256] = {
    let mut table = [0xff; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = match b as u8 {
            c @ b'0'..=b'9' => c - b'0',
            c @ b'a'..=b'f' => c - b'a' + 10,
            c @ b'A'..=b'F' => c - b'A' + 10,
            _ => 0xff,
        };
        b += 1;
    }
    table
};

struct Cursor<'a> {
    s: &'a [u8],
}

impl<'a> Cursor<'a> {
    /// A non-empty hex number (at most 16 digits) ended by `delim`, which is consumed.
    fn hex_until(&mut self, delim: u8) -> Option<u64> {
        let mut n: u64 = 0;
        for (i, &b) in self.s.iter().enumerate() {
            if b == delim {
                if i == 0 || i > 16 {
                    return None;
                }
                self.s = &self.s[i + 1..];
                return Some(n);
            }
            let d = HEX_DIGIT[usize::from(b)];
            if d > 15 {
                return None;
            }
            // Past 16 digits this drops high bits; the length check
            // above refuses such a number anyway.
            n = n << 4 | u64::from(d);
        }
        None
    }

    fn skip_spaces(&mut self) {
        // Names are padded to a column: often two dozen spaces.
        let mut n = 0;
        while let Some(chunk) = self.s.get(n..n + 8) {
            if chunk != b"        " {
                break;
            }
            n += 8;
        }
        n += self.s[n..].iter().take_while(|b| **b == b' ').count();
        self.s = &self.s[n..];
    }

    /// Up to the next space (or the end).
    fn word(&mut self) -> &'a [u8] {
        let n = self
            .s
            .iter()
            .position(|b| *b == b' ')
            .unwrap_or(self.s.len());
        let (w, rest) = self.s.split_at(n);
        self.s = rest;
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_shapes() {
        let v = parse(b"00400000-00401000 --xp 00000000 00:00 0 \n").expect("parses");
        assert_eq!(v.len(), 1);
        assert!(v[0].perms.exec && !v[0].perms.read);
        assert_eq!(v[0].name, "");
        let v = parse(b"7f00-7f10 rw-s 0000 fe:01 12   /tmp/a b  (deleted)\n").expect("parses");
        assert_eq!(v[0].name, "/tmp/a b  (deleted)");
        assert!(v[0].deleted);
        assert_eq!(v[0].path(), "/tmp/a b ");
        assert_eq!(v[0].dev_major, 0xfe);
        assert!(v[0].perms.shared);
    }

    #[test]
    fn perms_round_trip() {
        for s in ["---p", "r--p", "rw-p", "r-xp", "rwxs", "--xp", "-w-s"] {
            let line = format!("1000-2000 {s} 0 00:00 0\n");
            let v = parse(line.as_bytes()).expect("parses");
            assert_eq!(v[0].perms.as_str(), s);
        }
    }

    /// Every size field reaches its `Vma` field on each of the three
    /// paths: the fixed 28-byte layout, the fast scanner, and the general
    /// `Key: value` parser.
    #[test]
    fn every_size_field_on_every_path() {
        let mut fixed = String::from("1000-2000 rw-p 0 00:00 0\n");
        let mut fast = fixed.clone();
        let mut general = fixed.clone();
        for (i, key) in SizeField::KEYS.iter().enumerate() {
            let n = i + 1;
            fixed.push_str(&format!("{:<16}{n:>8} kB\n", format!("{key}:")));
            fast.push_str(&format!("{key}: {n} kB\n"));
            general.push_str(&format!("{key}:\t{n} B\n"));
        }
        for (text, unit) in [(fixed, 1024), (fast, 1024), (general, 1)] {
            let mut v = parse(text.as_bytes()).expect("parses");
            for (i, f) in SizeField::ALL.into_iter().enumerate() {
                let key = SizeField::KEYS[i];
                assert_eq!(*f.slot(&mut v[0]), (i as u64 + 1) * unit, "{key} in {text}");
                assert_eq!(SizeField::from_packed(pack(key.as_bytes())), Some(f));
            }
        }
        assert_eq!(SizeField::from_packed(pack(b"THPeligible")), None);
    }

    #[test]
    fn flag_table_matches_the_list() {
        for (i, f) in KNOWN_VM_FLAGS.iter().enumerate() {
            assert_eq!(flag_index(f.as_bytes()), Some(i as u32), "{f}");
        }
        for word in ["zz", "r", "rdx", "R1", "{}", "", "`a"] {
            assert_eq!(flag_index(word.as_bytes()), None, "{word}");
        }
    }

    #[test]
    fn shared_anonymous_is_shared_dev_zero() {
        let one = |line: &str| {
            let v = parse(format!("{line}\n").as_bytes()).expect("parses");
            v[0].is_shared_anonymous()
        };
        assert!(one("7f00-7f10 rw-s 0 00:01 4244   /dev/zero (deleted)"));
        // mprotect keeps the shared bit.
        assert!(one("7f00-7f10 r--s 0 00:01 4244   /dev/zero (deleted)"));
        assert!(!one("7f00-7f10 rw-p 0 00:00 0"));
        assert!(!one("7f00-7f10 rw-p 0 00:05 4   /dev/zero"));
        assert!(!one("7f00-7f10 rw-s 0 00:01 7   /dev/shm/x"));
        assert!(!one("7f00-7f10 rw-s 0 00:01 7   /memfd:x (deleted)"));
    }

    #[test]
    fn stream_hands_out_every_vma_in_order() {
        let pid = std::process::id();
        // Other tests map and unmap in this process meanwhile: a read they
        // tear is read again.
        let starts = settled(|| {
            let mut stream = stream_smaps(pid)?;
            let mut starts = Vec::new();
            while let Some(batch) = stream.next_batch() {
                assert!(!batch.is_empty(), "batches are never empty");
                starts.extend(batch.iter().map(|v| (v.start, v.end)));
                stream.recycle(batch);
            }
            stream.finish()?;
            Ok(starts)
        })
        .expect("stream own smaps");
        assert!(starts.len() > 3, "{starts:x?}");
        assert!(starts.windows(2).all(|w| w[0].1 <= w[1].0), "{starts:x?}");
        // Our own code is mapped, and so appears in the stream.
        let here = stream_hands_out_every_vma_in_order as *const () as u64;
        let vmas = read_smaps(pid).expect("read own smaps");
        let ours = vmas
            .iter()
            .find(|v| v.start <= here && here < v.end)
            .expect("the code of this test is mapped");
        assert!(starts.iter().any(|&(start, _)| start == ours.start));
    }

    /// A header of an anonymous region `[start, end)` with `kb` resident.
    fn region(start: u64, end: u64, kb: u64) -> String {
        format!("{start:x}-{end:x} rw-p 00000000 00:00 0\nRss: {kb} kB\n")
    }

    #[test]
    fn a_range_restated_over_whole_regions_replaces_them() {
        // A heap grown by mprotect between two reads: the kernel resumes at
        // the merged region, which starts at the region already read.
        let text = [
            region(0x1000, 0x2000, 4),
            region(0x1000, 0x3000, 8),
            region(0x3000, 0x4000, 4),
            region(0x3000, 0x4000, 4),
            region(0x5000, 0x6000, 4),
            region(0x6000, 0x7000, 4),
            region(0x5000, 0x8000, 12),
        ]
        .concat();
        let v = parse(text.as_bytes()).expect("parses");
        let got: Vec<(u64, u64, u64)> = v.iter().map(|v| (v.start, v.end, v.rss)).collect();
        assert_eq!(
            got,
            [
                (0x1000, 0x3000, 8 << 10),
                (0x3000, 0x4000, 4 << 10),
                (0x5000, 0x8000, 12 << 10)
            ]
        );
    }

    #[test]
    fn a_range_restated_over_part_of_a_region_tears_the_read() {
        // A heap shrunk between two reads: its tail merged with the
        // reserve after it. What `[0x1000, 0x2000)` holds now is unknown.
        let text = [region(0x1000, 0x3000, 8), region(0x2000, 0x4000, 4)].concat();
        let err = parse(text.as_bytes()).expect_err("torn");
        assert_eq!(err.line, 3, "the restating header");
        assert!(err.reason.contains("changed its mappings"), "{err}");
        let mut parser = Parser::default();
        parser.feed(text.as_bytes()).expect("feeds");
        assert!(matches!(parser.finish_read(), Err(ReadError::Torn)));
    }

    #[test]
    fn a_range_restated_over_regions_handed_out_tears_the_read() {
        for drained in [false, true] {
            let mut parser = Parser::default();
            parser
                .feed(region(0x1000, 0x2000, 4).as_bytes())
                .expect("feeds");
            assert_eq!(parser.hand_out(0).len(), 1);
            if drained {
                assert_eq!(parser.drain_handed().count(), 1);
            }
            parser
                .feed(region(0x1000, 0x3000, 8).as_bytes())
                .expect("feeds");
            assert!(
                matches!(parser.finish_read(), Err(ReadError::Torn)),
                "drained: {drained}"
            );
        }
        // Handed out up to the region before: a whole restatement of the
        // last one is still exact.
        let mut parser = Parser::default();
        let text = [region(0x1000, 0x2000, 4), region(0x2000, 0x3000, 4)].concat();
        parser.feed(text.as_bytes()).expect("feeds");
        assert_eq!(parser.hand_out(1).len(), 1);
        parser
            .feed(region(0x2000, 0x4000, 8).as_bytes())
            .expect("feeds");
        assert_eq!(parser.hand_out(0).len(), 1);
        assert_eq!(parser.finish_read().expect("whole").len(), 2);
    }

    #[test]
    fn regions_going_backwards_are_malformed() {
        // Not a restatement: the kernel resumes at a region that ends past
        // everything read so far. Two files run together, say.
        for text in [
            [region(0x3000, 0x4000, 4), region(0x1000, 0x2000, 4)].concat(),
            [region(0x3000, 0x5000, 4), region(0x3000, 0x4000, 4)].concat(),
        ] {
            let err = parse(text.as_bytes()).expect_err("out of order");
            assert_eq!(err.reason, "regions out of address order", "{text}");
        }
        let mut parser = Parser::default();
        parser
            .feed(region(0x3000, 0x4000, 4).as_bytes())
            .expect("feeds");
        parser.hand_out(0);
        parser.drain_handed().for_each(drop);
        parser
            .feed(region(0x1000, 0x2000, 4).as_bytes())
            .expect("feeds");
        // Checked against the regions taken away too; in a live read, a
        // torn one (old kernels resume by position).
        assert!(matches!(parser.finish_read(), Err(ReadError::Torn)));
    }

    #[test]
    fn settled_reads_again_while_torn_then_says_so() {
        let mut calls = 0;
        let got = settled(|| {
            calls += 1;
            if calls < 3 {
                Err(ProcError::Unsettled { pid: 7 })
            } else {
                Ok(calls)
            }
        });
        assert_eq!(got.expect("third read whole"), 3);
        calls = 0;
        let err = settled(|| -> Result<(), ProcError> {
            calls += 1;
            Err(ProcError::Unsettled { pid: 7 })
        })
        .expect_err("always torn");
        assert_eq!(calls, READ_ATTEMPTS);
        assert!(err.to_string().contains("try again"), "{err}");
        // Other errors are not read again.
        calls = 0;
        let _ = settled(|| -> Result<(), ProcError> {
            calls += 1;
            Err(ProcError::NoSuchProcess { pid: 7 })
        });
        assert_eq!(calls, 1);
    }

    #[test]
    fn stream_dropped_early_stops() {
        let mut stream = stream_smaps(std::process::id()).expect("stream own smaps");
        let first = stream.next_batch().expect("one batch at least");
        assert!(!first.is_empty());
        // Dropping stops the reader and parser threads (and must not hang).
        drop(stream);
    }

    #[test]
    fn stream_of_a_missing_process_fails_at_once() {
        // pid_max is at most 2^22: this pid never exists.
        let err = stream_smaps(u32::MAX).err().expect("no such process");
        assert!(matches!(err, ProcError::NoSuchProcess { .. }), "{err:?}");
    }

    /// The shortcuts for `THPeligible` and `VmFlags` lines and the general
    /// `Key: value` path give the same region.
    #[test]
    fn flag_lines_on_both_paths() {
        let header = "1000-2000 rw-p 0 00:00 0\n";
        let fast = format!("{header}THPeligible:    1\nVmFlags: rd wr zz mr ab \n");
        let general = format!("{header}THPeligible:\t1 \nVmFlags:  rd  wr zz mr ab\n");
        let (fast, general) = (parse(fast.as_bytes()), parse(general.as_bytes()));
        let (fast, general) = (fast.expect("fast"), general.expect("general"));
        assert!(fast[0].thp_eligible);
        assert_eq!(
            fast[0].vm_flags.iter().collect::<Vec<_>>(),
            ["rd", "wr", "mr", "zz", "ab"]
        );
        assert_eq!(fast[0].vm_flags.bits, general[0].vm_flags.bits);
        assert!(general[0].thp_eligible);
        let zero = parse(format!("{header}THPeligible:    0\n").as_bytes()).expect("parses");
        assert!(!zero[0].thp_eligible);
        // Before any header, the shortcut is no excuse to skip the error.
        assert!(parse(b"VmFlags: rd \n").is_err());
        assert!(parse(b"THPeligible:    1\n").is_err());
    }

    #[test]
    fn vm_flags() {
        let f = VmFlags::parse(b" rd wr mr zz ");
        assert!(f.contains("rd") && f.contains("zz") && !f.contains("ex"));
        assert_eq!(f.iter().collect::<Vec<_>>(), ["rd", "wr", "mr", "zz"]);
    }
}
