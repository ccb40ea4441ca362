//! The eBPF tracer: load memtrace's programs into the kernel, attach them to
//! the syscall and scheduler tracepoints, and drain decoded [`Event`]s.
//!
//! Dropping a [`Tracer`] detaches every link and unloads every program and
//! map; nothing stays in the kernel afterwards.

pub mod event;
pub mod launch;
pub mod tracefs;

use std::{
    fmt,
    os::fd::AsRawFd,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf, StackTraceMap},
    programs::TracePoint,
};
use memtrace_common::{RawEvent, counter};

use event::Event;

/// The compiled eBPF object, built by `build.rs` (cargo feature `ebpf`).
#[cfg(feature = "ebpf")]
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/memtrace"));
/// Built without the `ebpf` feature: no programs ([`check_prerequisites`] says so).
#[cfg(not(feature = "ebpf"))]
static EBPF_OBJECT: &[u8] = &[];

/// Syscalls traced, with their argument names as tracefs spells them (the
/// order is the order of the arguments in the record).
pub(crate) const SYSCALLS: [(&str, &[&str]); 7] = [
    ("mmap", &["addr", "len", "prot", "flags", "fd", "off"]),
    ("munmap", &["addr", "len"]),
    (
        "mremap",
        &["addr", "old_len", "new_len", "flags", "new_addr"],
    ),
    ("brk", &["brk"]),
    ("mprotect", &["start", "len", "prot"]),
    ("madvise", &["start", "len_in", "behavior"]),
    ("prctl", &["option", "arg2", "arg3", "arg4", "arg5"]),
];

/// Why tracing cannot start. Each says what is missing and what to do.
#[derive(Debug)]
pub enum TraceError {
    /// Not root and without the capabilities tracing needs.
    Permission(String),
    /// No BTF for the running kernel.
    NoBtf,
    Tracefs(String),
    MissingTracepoint(String),
    Layout(String),
    /// The kernel refused to load or attach a program or map.
    Kernel(String),
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SNAPSHOT_HINT: &str = "(`memtrace snapshot` still works without eBPF)";
        match self {
            TraceError::Permission(m) => write!(f, "{m} {SNAPSHOT_HINT}"),
            TraceError::NoBtf => write!(
                f,
                "the kernel has no BTF (/sys/kernel/btf/vmlinux is missing; needs \
                 CONFIG_DEBUG_INFO_BTF=y) {SNAPSHOT_HINT}"
            ),
            TraceError::Tracefs(m) => write!(f, "{m} {SNAPSHOT_HINT}"),
            TraceError::MissingTracepoint(m) => write!(
                f,
                "tracepoint {m} is missing (needs CONFIG_FTRACE_SYSCALLS) {SNAPSHOT_HINT}"
            ),
            TraceError::Layout(m) => write!(f, "{m} {SNAPSHOT_HINT}"),
            TraceError::Kernel(m) => write!(f, "{m} {SNAPSHOT_HINT}"),
        }
    }
}

impl std::error::Error for TraceError {}

/// How to load the tracer.
#[derive(Clone, Debug, Default)]
pub struct TracerOptions {
    /// Add children of traced processes to the traced set in the kernel,
    /// before they run.
    pub follow_forks: bool,
    /// Ring buffer size in bytes (rounded up to a power-of-two number of
    /// pages); `None` for the default of 4 MiB.
    pub ring_bytes: Option<u32>,
    /// Take the kernel's frame-pointer stack for every event, not only
    /// when the user stack window could not be read (costs the traced
    /// threads a few microseconds per call).
    pub kernel_stacks: bool,
}

/// Events the kernel side could not deliver.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Lost {
    /// Ring buffer full.
    pub ring_buffer: u64,
    /// Pending-call table full (too many threads inside a syscall at once).
    pub pending: u64,
    /// Children (with `--follow-forks`) left untraced: traced set full.
    pub untraced_children: u64,
}

impl Lost {
    pub fn total(&self) -> u64 {
        self.ring_buffer + self.pending
    }
}

/// A loaded and attached tracer.
pub struct Tracer {
    // Field order matters for drop: the reader thread and map handles go
    // before the object that owns the programs and links.
    reader: Reader,
    stacks: StackTraceMap<MapData>,
    counters: PerCpuArray<MapData, u64>,
    traced: BpfHashMap<MapData, u32, u8>,
    _ebpf: Ebpf,
}

/// Check what tracing needs before touching the kernel, so failures read as
/// one clear line.
pub fn check_prerequisites() -> Result<(), TraceError> {
    if EBPF_OBJECT.is_empty() {
        return Err(TraceError::Kernel(
            "this memtrace was built without its eBPF programs (cargo feature `ebpf` is \
             off): rebuild it with default features to trace"
                .into(),
        ));
    }
    if !cfg!(target_os = "linux") {
        return Err(TraceError::Kernel("eBPF tracing needs Linux".into()));
    }
    let caps = crate::proc::pid::effective_caps();
    let has = |bit: u32| caps & (1u64 << bit) != 0;
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    if !(has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))) {
        return Err(TraceError::Permission(
            "tracing needs root (or CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE): run it with sudo"
                .into(),
        ));
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Err(TraceError::NoBtf);
    }
    Ok(())
}

impl Tracer {
    /// Load the programs and attach them. Nothing is traced until
    /// [`Tracer::add_pid`].
    pub fn load(opts: &TracerOptions) -> Result<Tracer, TraceError> {
        check_prerequisites()?;
        let tracefs = tracefs::ensure_mounted()?;
        tracefs::check_layouts(tracefs, opts.follow_forks)?;
        bump_memlock_rlimit();

        let follow: u8 = opts.follow_forks.into();
        let mut loader = EbpfLoader::new();
        let kernel_stacks: u8 = opts.kernel_stacks.into();
        loader.override_global("FOLLOW_FORKS", &follow, true);
        loader.override_global("KERNEL_STACKS", &kernel_stacks, true);
        if let Some(bytes) = opts.ring_bytes {
            loader.map_max_entries("EVENTS", ring_size(bytes));
        }
        let mut ebpf = loader.load(EBPF_OBJECT).map_err(|e| {
            TraceError::Kernel(format!("loading memtrace's eBPF programs failed: {e}"))
        })?;

        let mut attach = |prog: &str, category: &str| -> Result<(), TraceError> {
            let tp: &mut TracePoint = ebpf
                .program_mut(prog)
                .ok_or_else(|| {
                    TraceError::Kernel(format!("program {prog} missing from the object"))
                })?
                .try_into()
                .map_err(|e| TraceError::Kernel(format!("{prog}: {e}")))?;
            tp.load().map_err(|e| {
                TraceError::Kernel(format!("the kernel rejected program {prog}: {e}"))
            })?;
            tp.attach(category, prog).map_err(|e| {
                TraceError::Kernel(format!("attaching {category}:{prog} failed: {e}"))
            })?;
            Ok(())
        };
        for (name, _) in SYSCALLS {
            attach(&format!("sys_enter_{name}"), "syscalls")?;
            attach(&format!("sys_exit_{name}"), "syscalls")?;
        }
        attach("sched_process_exec", "sched")?;
        attach("sched_process_exit", "sched")?;
        if opts.follow_forks {
            attach("sched_process_fork", "sched")?;
        }

        let map_err =
            |name: &str, e: &dyn fmt::Display| TraceError::Kernel(format!("map {name}: {e}"));
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| TraceError::Kernel(format!("map {name} missing from the object")))
        };
        let events = RingBuf::try_from(take("EVENTS")?).map_err(|e| map_err("EVENTS", &e))?;
        let reader = Reader::spawn(events).map_err(|e| map_err("EVENTS reader", &e))?;
        let stacks = StackTraceMap::try_from(take("STACKS")?).map_err(|e| map_err("STACKS", &e))?;
        let counters =
            PerCpuArray::try_from(take("COUNTERS")?).map_err(|e| map_err("COUNTERS", &e))?;
        let traced = BpfHashMap::try_from(take("TRACED")?).map_err(|e| map_err("TRACED", &e))?;
        Ok(Tracer {
            reader,
            stacks,
            counters,
            traced,
            _ebpf: ebpf,
        })
    }

    /// Start tracing process `pid` (all its threads).
    pub fn add_pid(&mut self, pid: u32) -> Result<(), TraceError> {
        self.traced
            .insert(pid, 1, 0)
            .map_err(|e| TraceError::Kernel(format!("adding pid {pid} to the traced set: {e}")))
    }

    /// Stop tracing `pid` (e.g. a thread id the fork program added).
    pub fn remove_pid(&mut self, pid: u32) {
        let _ = self.traced.remove(&pid);
    }

    /// Wait up to `timeout` for events, then move every waiting event
    /// into `out`; returns how many arrived.
    pub fn wait_events(&mut self, timeout: Duration, out: &mut Vec<Event>) -> usize {
        let before = out.len();
        match self.reader.rx.recv_timeout(timeout) {
            Ok(ev) => out.push(ev),
            Err(_) => return 0,
        }
        out.extend(self.reader.rx.try_iter());
        out.len() - before
    }

    /// Move every event that has arrived into `out`, without waiting.
    ///
    /// The reader thread empties the ring buffer continuously, but an event
    /// the kernel committed an instant ago may still be in the ring; this
    /// asks the thread to do one more pass and waits for it.
    pub fn drain(&mut self, out: &mut Vec<Event>) -> usize {
        let before = out.len();
        let (done_tx, done_rx) = mpsc::channel();
        if self.reader.flush.send(done_tx).is_ok() {
            let _ = done_rx.recv_timeout(Duration::from_secs(1));
        }
        out.extend(self.reader.rx.try_iter());
        out.len() - before
    }

    /// Events the kernel side dropped so far, summed over CPUs.
    pub fn lost(&self) -> Lost {
        let sum = |idx: u32| {
            self.counters
                .get(&idx, 0)
                .map(|per_cpu| per_cpu.iter().sum())
                .unwrap_or(0)
        };
        Lost {
            ring_buffer: sum(counter::LOST_RINGBUF),
            pending: sum(counter::LOST_PENDING),
            untraced_children: sum(counter::LOST_CHILDREN),
        }
    }

    /// The user stack (innermost first) recorded under `stack_id`.
    pub fn stack(&self, stack_id: u32) -> Vec<u64> {
        self.stacks
            .get(&stack_id, 0)
            .map(|st| st.frames().iter().map(|f| f.ip).collect())
            .unwrap_or_default()
    }
}

/// A thread that empties the ring buffer as soon as events arrive, so a
/// slow consumer (symbolizing a new binary can take a second) never makes
/// the kernel drop events. Events queue in memory instead.
struct Reader {
    rx: mpsc::Receiver<Event>,
    /// Requests for one more pass; the reply says it is done.
    flush: mpsc::Sender<mpsc::Sender<()>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Reader {
    fn spawn(mut ring: RingBuf<MapData>) -> std::io::Result<Reader> {
        let (tx, rx) = mpsc::channel();
        let (flush_tx, flush_rx) = mpsc::channel::<mpsc::Sender<()>>();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = thread::Builder::new()
            .name("memtrace-ring".into())
            .spawn(move || {
                let fd = ring.as_raw_fd();
                while !stop2.load(Ordering::Relaxed) {
                    let mut pfd = libc::pollfd {
                        fd,
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd. The eBPF side wakes us
                    // only when the ring is a quarter full, so poll on a
                    // short timer too.
                    unsafe { libc::poll(&mut pfd, 1, 20) };
                    if read_ring(&mut ring, &tx).is_err() {
                        return;
                    }
                    while let Ok(done) = flush_rx.try_recv() {
                        if read_ring(&mut ring, &tx).is_err() {
                            return;
                        }
                        let _ = done.send(());
                    }
                }
            })?;
        Ok(Reader {
            rx,
            flush: flush_tx,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Decode every record in the ring and send it on; `Err` when the
/// receiving side is gone.
fn read_ring(ring: &mut RingBuf<MapData>, tx: &mpsc::Sender<Event>) -> Result<(), ()> {
    while let Some(item) = ring.next() {
        if item.len() < size_of::<RawEvent>() {
            continue;
        }
        // SAFETY: the slot holds a RawEvent written by the eBPF side;
        // read_unaligned copes with the ring buffer's 8-byte alignment.
        let raw: RawEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
        if let Some(ev) = Event::from_raw(&raw) {
            tx.send(ev).map_err(|_| ())?;
        }
    }
    Ok(())
}

/// Ring buffer sizes must be a power-of-two number of pages.
fn ring_size(bytes: u32) -> u32 {
    let page = 4096u32;
    bytes.max(page).next_power_of_two()
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; raise it so large
/// maps load there too. Harmless elsewhere.
fn bump_memlock_rlimit() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid struct.
    let _ = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_sizes_are_power_of_two_pages() {
        assert_eq!(ring_size(1), 4096);
        assert_eq!(ring_size(4096), 4096);
        assert_eq!(ring_size(5000), 8192);
        assert_eq!(ring_size(4 << 20), 4 << 20);
    }
}
