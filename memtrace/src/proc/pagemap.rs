//! Count resident anonymous pages in an address range from
//! `/proc/PID/pagemap`, or resident pages of any kind.
//!
//! pagemap holds one little-endian `u64` per virtual page (see the kernel's
//! `Documentation/admin-guide/mm/pagemap.rst`):
//!
//! - bit 63: page present in RAM
//! - bit 62: page swapped
//! - bit 61: page is a file page or shared anonymous (shmem)
//! - bits 0–54: page frame number (zero unless the reader has `CAP_SYS_ADMIN`)
//!
//! A page counts as *resident anonymous* (what smaps calls `Anonymous:`)
//! when it is present and not a file/shmem page, **except** the shared zero
//! page: a read fault on untouched private anonymous memory maps the zero
//! page, which pagemap reports as present and not a file page but smaps
//! does not count at all (it is not a "normal" page). Counting it would
//! credit memory that was only read to whichever call site mapped it, so
//! [`Pagemap::open`] learns the zero page's frame number once (by faulting
//! it into a page of our own) and excludes it. Without `CAP_SYS_ADMIN`
//! frame numbers read as 0, the zero page cannot be told apart, and it is
//! counted; [`Pagemap::detects_zero_page`] says which case applies.
//!
//! Shared anonymous memory (`MAP_SHARED | MAP_ANONYMOUS`) is shmem: its
//! pages carry bit 61 and smaps counts them in `Rss`, not `Anonymous`.
//! [`PageCounter::resident_pages`] counts those (every present page).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::{PAGE_SIZE, ProcError};

/// Bytes per pagemap entry.
const ENTRY: usize = 8;
/// Entries per read: 64 KiB of entries covers 32 MiB of address space,
/// large enough that big ranges take few syscalls, small enough to stay in
/// the CPU cache.
const ENTRIES_PER_READ: usize = 8192;

const PM_PRESENT: u64 = 1 << 63;
const PM_FILE: u64 = 1 << 61;
const PM_PFN_MASK: u64 = (1 << 55) - 1;

/// An open `/proc/PID/pagemap`, with a reusable read buffer.
///
/// After [`PageCounter::prefetch`], queries inside the prefetched span are
/// answered from that one read (until a query outside it, or the next
/// prefetch), so they describe the same moment.
pub struct Pagemap {
    file: File,
    buf: Vec<u8>,
    pid: u32,
    /// Frame number of the shared zero page, if frame numbers are visible.
    zero_pfn: Option<u64>,
    /// `buf` holds the entries of pages `[first, first + len)` read by
    /// [`PageCounter::prefetch`], if `Some((first, len))`.
    window: Option<(u64, u64)>,
}

/// Counts resident pages in an address range.
///
/// [`Pagemap`] is the real implementation; tests use fakes.
pub trait PageCounter {
    /// How many pages of `[start, end)` are resident anonymous memory, in
    /// the sense of smaps' `Anonymous:` (present, not file-backed or shmem,
    /// not the shared zero page).
    fn anon_resident_pages(&mut self, start: u64, end: u64) -> io::Result<u64>;

    /// How many pages of `[start, end)` are present in RAM, of any kind:
    /// in a shared anonymous mapping, its resident shmem pages (smaps'
    /// `Rss`). The zero page is not excluded: shmem never maps it.
    fn resident_pages(&mut self, start: u64, end: u64) -> io::Result<u64>;

    /// A hint: the next queries all lie within `[start, end)` (one VMA).
    /// [`Pagemap`] reads the whole span with one system call and answers
    /// the queries from memory. The default does nothing.
    fn prefetch(&mut self, start: u64, end: u64) {
        let _ = (start, end);
    }
}

impl Pagemap {
    /// Open `/proc/PID/pagemap`.
    pub fn open(pid: u32) -> Result<Pagemap, ProcError> {
        let path = format!("/proc/{pid}/pagemap");
        let file = File::open(&path).map_err(|error| ProcError::from_io(pid, &path, error))?;
        Ok(Pagemap {
            file,
            buf: vec![0; ENTRIES_PER_READ * ENTRY],
            pid,
            zero_pfn: zero_page_pfn(),
            window: None,
        })
    }

    /// The process this pagemap belongs to.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether zero-page mappings are excluded from counts (frame numbers
    /// are visible, i.e. we have `CAP_SYS_ADMIN`).
    pub fn detects_zero_page(&self) -> bool {
        self.zero_pfn.is_some()
    }
}

/// Which present pages a count includes.
#[derive(Clone, Copy)]
enum Kind {
    /// Private anonymous: not file/shmem, not the zero page.
    Anonymous,
    /// Every present page.
    Any,
}

impl PageCounter for Pagemap {
    fn anon_resident_pages(&mut self, start: u64, end: u64) -> io::Result<u64> {
        self.pages(start, end, Kind::Anonymous)
    }

    fn resident_pages(&mut self, start: u64, end: u64) -> io::Result<u64> {
        self.pages(start, end, Kind::Any)
    }

    fn prefetch(&mut self, start: u64, end: u64) {
        let first = start / PAGE_SIZE;
        let last = end.div_ceil(PAGE_SIZE);
        // Queries come in address order and small VMAs sit close together:
        // one read covers many of them, so keep the window while it does.
        if let Some((w_first, w_len)) = self.window
            && first >= w_first
            && last <= w_first + w_len
        {
            return;
        }
        self.window = None;
        let len = last.saturating_sub(first);
        if len == 0 || len > ENTRIES_PER_READ as u64 {
            // Larger spans are read piece by piece, chunk by chunk.
            return;
        }
        // Read ahead a full buffer: entries of unmapped pages cost the
        // kernel next to nothing. A failure here resurfaces (with its
        // error) when the queries read.
        if let Ok(got) = self.read(first, ENTRIES_PER_READ)
            && got as u64 >= len
        {
            self.window = Some((first, got as u64));
        }
    }
}

impl Pagemap {
    /// Pages of `kind` in `[start, end)`, from the prefetched window when
    /// it covers the range.
    fn pages(&mut self, start: u64, end: u64, kind: Kind) -> io::Result<u64> {
        let mut page = start / PAGE_SIZE;
        let last = end.div_ceil(PAGE_SIZE);
        if let Some((first, len)) = self.window
            && first <= page
            && last <= first + len
        {
            let from = (page - first) as usize * ENTRY;
            let to = (last - first) as usize * ENTRY;
            return Ok(self.count(from, to, kind));
        }
        // The reads below reuse the buffer.
        self.window = None;
        let mut count = 0;
        while page < last {
            let want = usize::try_from(last - page)
                .unwrap_or(usize::MAX)
                .min(ENTRIES_PER_READ);
            let got = self.read(page, want)?;
            count += self.count(0, got * ENTRY, kind);
            page += got as u64;
        }
        Ok(count)
    }

    /// Read the entries of pages `[page, page + want)` (`want <=
    /// ENTRIES_PER_READ`) into the start of `buf`; returns how many were
    /// read, at least one.
    fn read(&mut self, page: u64, want: usize) -> io::Result<usize> {
        let offset = page
            .checked_mul(ENTRY as u64)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "address beyond pagemap"))?;
        let n = read_at_retrying(&self.file, &mut self.buf[..want * ENTRY], offset)?;
        // Short reads happen at the end of the address space; a partial
        // entry is impossible (the kernel copies whole entries).
        let got = n / ENTRY;
        if got == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "/proc/{}/pagemap ended at address {:#x}",
                    self.pid,
                    page.saturating_mul(PAGE_SIZE)
                ),
            ));
        }
        Ok(got)
    }

    /// Pages of `kind` among the entries in `buf[from..to]`.
    fn count(&self, from: usize, to: usize, kind: Kind) -> u64 {
        // With no zero page known the mask makes the zero-page test
        // always false.
        let (zero_mask, zero_pfn) = match self.zero_pfn {
            Some(pfn) => (PM_PFN_MASK, pfn),
            None => (0, u64::MAX),
        };
        self.buf[from..to]
            .chunks_exact(ENTRY)
            .filter(|e| {
                let mut word = [0; ENTRY];
                word.copy_from_slice(e);
                let e = u64::from_le_bytes(word);
                match kind {
                    Kind::Anonymous => {
                        e & (PM_PRESENT | PM_FILE) == PM_PRESENT && e & zero_mask != zero_pfn
                    }
                    Kind::Any => e & PM_PRESENT != 0,
                }
            })
            .count() as u64
    }
}

fn read_at_retrying(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    loop {
        match file.read_at(buf, offset) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// The frame number of the shared zero page, learnt by read-faulting a
/// fresh private anonymous page of our own (which maps the zero page) and
/// reading its pagemap entry. `None` if frame numbers are hidden from us
/// (no `CAP_SYS_ADMIN`: they read as 0) or anything fails.
///
/// x86_64 has a single zero page, so one frame number covers every process.
fn zero_page_pfn() -> Option<u64> {
    let len = PAGE_SIZE as usize;
    // SAFETY: a fresh private anonymous mapping; it aliases nothing.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return None;
    }
    // SAFETY: `addr` is a readable page we just mapped; the volatile read
    // makes sure the fault (and so the zero-page mapping) happens.
    unsafe { std::ptr::read_volatile(addr.cast::<u8>()) };
    let entry = File::open("/proc/self/pagemap").ok().and_then(|f| {
        let mut word = [0u8; ENTRY];
        let offset = (addr as u64 / PAGE_SIZE) * ENTRY as u64;
        f.read_exact_at(&mut word, offset).ok()?;
        Some(u64::from_le_bytes(word))
    });
    // SAFETY: unmapping exactly the mapping made above, which nothing else uses.
    unsafe { libc::munmap(addr, len) };
    let entry = entry?;
    let pfn = entry & PM_PFN_MASK;
    (entry & (PM_PRESENT | PM_FILE) == PM_PRESENT && pfn != 0).then_some(pfn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_errors_are_clear() {
        // pid_max is at most 2^22: this pid never exists.
        let err = Pagemap::open(u32::MAX)
            .err()
            .expect("pid u32::MAX cannot exist");
        assert!(
            matches!(err, ProcError::NoSuchProcess { pid: u32::MAX }),
            "{err:?}"
        );
        assert!(err.to_string().contains("no process"), "{err}");
    }

    #[test]
    fn counts_own_pages() {
        let mut pm = Pagemap::open(std::process::id()).expect("open own pagemap");
        let pages = 16usize;
        let len = pages * PAGE_SIZE as usize;
        // SAFETY: fresh private anonymous mapping, unmapped below.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED, "mmap failed");
        let base = addr.cast::<u8>();
        // Write pages 0..5, read pages 5..9 (zero page), leave the rest.
        for i in 0..9 {
            // SAFETY: inside the mapping.
            unsafe {
                let p = base.add(i * PAGE_SIZE as usize);
                if i < 5 {
                    std::ptr::write_volatile(p, 1);
                } else {
                    std::ptr::read_volatile(p);
                }
            }
        }
        let start = addr as u64;
        let n = pm
            .anon_resident_pages(start, start + len as u64)
            .expect("read pagemap");
        let expected = if pm.detects_zero_page() { 5 } else { 9 };
        assert_eq!(
            n,
            expected,
            "zero page detected: {}",
            pm.detects_zero_page()
        );
        // The same from one prefetched read, piece by piece.
        pm.prefetch(start, start + len as u64);
        assert!(pm.window.is_some());
        let p = PAGE_SIZE;
        let head = pm.anon_resident_pages(start, start + 3 * p).expect("head");
        let tail = pm
            .anon_resident_pages(start + 3 * p, start + len as u64)
            .expect("tail");
        assert_eq!((head, head + tail), (3, expected));
        // Outside the window: read again.
        pm.anon_resident_pages(start - p, start + p)
            .expect("around");
        assert!(pm.window.is_none());
        // SAFETY: unmapping our own mapping.
        unsafe { libc::munmap(addr, len) };
    }

    #[test]
    fn shared_anonymous_pages_are_resident_not_anonymous() {
        let mut pm = Pagemap::open(std::process::id()).expect("open own pagemap");
        let len = 8 * PAGE_SIZE as usize;
        // SAFETY: fresh shared anonymous mapping, unmapped below; no
        // other process shares it.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED, "mmap failed");
        for i in [0, 2, 7] {
            // SAFETY: inside the mapping.
            unsafe { std::ptr::write_volatile(addr.cast::<u8>().add(i * PAGE_SIZE as usize), 1) };
        }
        let (start, end) = (addr as u64, addr as u64 + len as u64);
        // shmem pages carry the file bit: resident, not anonymous.
        assert_eq!(pm.resident_pages(start, end).expect("read pagemap"), 3);
        assert_eq!(pm.anon_resident_pages(start, end).expect("read"), 0);
        pm.prefetch(start, end);
        let head = pm
            .resident_pages(start, start + 3 * PAGE_SIZE)
            .expect("head");
        assert_eq!(head, 2, "from the prefetched window");
        // SAFETY: unmapping our own mapping.
        unsafe { libc::munmap(addr, len) };
    }
}
