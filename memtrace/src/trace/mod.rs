//! The eBPF tracer: load memtrace's programs into the kernel, attach them to
//! the syscall tracepoints and the scheduler raw tracepoints, and drain
//! decoded [`Event`]s.
//!
//! Dropping a [`Tracer`] detaches every link and unloads every program and
//! map; nothing stays in the kernel afterwards. The syscall tracepoint
//! links are released through [`release`], so that ending a session takes
//! milliseconds, not the kernel's grace period per tracepoint.

pub mod btf;
pub mod event;
pub mod kernel;
pub mod launch;
pub mod release;
pub mod source;
pub mod traced;
pub mod tracefs;

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        mpsc,
    },
    thread,
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, MapData, MapError, PerCpuArray, RingBuf, StackTraceMap},
    programs::{
        ProgramError, RawTracePoint, TracePoint, links::FdLink, trace_point::TracePointLinkId,
    },
};
use memtrace_common::{
    CachedStack, DEFAULT_RING_BYTES, STACK_CHECK_WORDS, StackKey, WAKEUP_RING_FRACTION, counter,
    tracepoints::{PidNamespace, RAW_TRACEPOINTS, SCHED_PROCESS_FORK, SYSCALLS, SYSCALLS_CATEGORY},
};

use event::Event;

use source::StackCheck;

/// The compiled eBPF object, built by `build.rs` (cargo feature `ebpf`).
#[cfg(feature = "ebpf")]
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/memtrace"));
/// Built without the `ebpf` feature: no programs ([`check_prerequisites`] says so).
#[cfg(not(feature = "ebpf"))]
static EBPF_OBJECT: &[u8] = &[];

/// Appended to every [`TraceError`] message: the rest of memtrace works
/// without eBPF.
const SNAPSHOT_HINT: &str = "(`memtrace snapshot` still works without eBPF)";

/// Why tracing cannot start. `Display` gives one line that says what is
/// missing and what to do; where the kernel (through aya) gave a reason,
/// that is the error's [`source`](std::error::Error::source), which
/// `{:#}` of `anyhow` prints after the line.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// This build has no eBPF object (cargo feature `ebpf` off).
    #[error(
        "this memtrace was built without its eBPF programs (cargo feature `ebpf` is off): \
         rebuild it with default features to trace {SNAPSHOT_HINT}"
    )]
    NoEbpfObject,
    /// Not Linux: there is no eBPF to load.
    #[error("eBPF tracing needs Linux {SNAPSHOT_HINT}")]
    NotLinux,
    /// Not root and without the capabilities tracing needs.
    #[error(
        "tracing needs root (or CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE): run it with sudo \
         {SNAPSHOT_HINT}"
    )]
    Permission,
    /// No BTF for the running kernel.
    #[error(
        "the kernel has no BTF (/sys/kernel/btf/vmlinux is missing; needs \
         CONFIG_DEBUG_INFO_BTF=y) {SNAPSHOT_HINT}"
    )]
    NoBtf,
    /// tracefs is not mounted and mounting it failed.
    #[error(
        "tracefs is not mounted and mounting it failed; run \
         `mount -t tracefs nodev {mount_point}` as root {SNAPSHOT_HINT}",
        mount_point = tracefs::TRACEFS
    )]
    Tracefs {
        /// Why `mount(2)` failed.
        #[source]
        source: io::Error,
    },
    /// A tracepoint's `format` file could not be read.
    #[error(
        "tracepoint {category}:{name} ({path}) is missing (needs CONFIG_FTRACE_SYSCALLS) \
         {SNAPSHOT_HINT}",
        path = .path.display()
    )]
    MissingTracepoint {
        /// Tracepoint category (`syscalls`, `sched`).
        category: String,
        /// Tracepoint name.
        name: String,
        /// Its `format` file.
        path: PathBuf,
        /// Why the file could not be read.
        #[source]
        source: io::Error,
    },
    /// A tracepoint record does not have the layout memtrace's eBPF
    /// programs read.
    #[error(
        "{category}:{tracepoint} field `{field}` is {found}, memtrace's eBPF programs read \
         it at {expected} {SNAPSHOT_HINT}",
        found = .found.map_or_else(|| "missing".to_owned(), |f| format!("at {f}"))
    )]
    Layout {
        category: &'static str,
        tracepoint: &'static str,
        field: &'static str,
        /// Where the kernel has it, if it has it.
        found: Option<tracefs::FieldLayout>,
        /// Where the eBPF programs read it.
        expected: tracefs::FieldLayout,
    },
    /// The kernel's BTF could not be read.
    #[error("reading the kernel's BTF failed {SNAPSHOT_HINT}")]
    Btf(#[source] btf::BtfError),
    /// A kernel type the eBPF programs read is not in the kernel's BTF.
    #[error("the kernel's BTF has no {what}, which memtrace's eBPF programs read {SNAPSHOT_HINT}")]
    MissingKernelType {
        /// `struct NAME.MEMBER`.
        what: String,
    },
    /// The kernel differs from what the eBPF programs were built for.
    #[error(
        "{what} is {found} in this kernel, memtrace's eBPF programs expect {expected} {SNAPSHOT_HINT}"
    )]
    Contract {
        what: String,
        found: String,
        expected: String,
    },
    /// memtrace's own PID namespace could not be told.
    #[error("cannot read /proc/self/ns/pid {SNAPSHOT_HINT}")]
    PidNamespace(#[source] io::Error),
    /// memtrace runs in a PID namespace whose /proc is another namespace's.
    #[error(
        "memtrace runs in a PID namespace but /proc belongs to another one, so pids would name \
         the wrong processes: mount a /proc for this namespace (e.g. `unshare --pid --fork \
         --mount-proc`)"
    )]
    ForeignProc,
    /// The target is in a PID namespace below memtrace's.
    #[error(
        "pid {pid} is in a PID namespace nested in memtrace's, whose ids the kernel does not \
         report: run memtrace in the target's namespace, or on the host"
    )]
    NestedNamespace { pid: u32 },
    /// The kernel (or aya) refused memtrace's eBPF object.
    #[error("loading memtrace's eBPF programs failed {SNAPSHOT_HINT}")]
    Load(#[source] Box<aya::EbpfError>),
    /// A program or map is missing from the eBPF object (a build problem).
    #[error("{what} {name} missing from the object {SNAPSHOT_HINT}")]
    MissingFromObject {
        /// `program` or `map`.
        what: &'static str,
        /// Its name.
        name: String,
    },
    /// A program in the object is not of the type memtrace attaches it as.
    #[error("program {program} is not a (raw) tracepoint program {SNAPSHOT_HINT}")]
    ProgramType {
        /// The program.
        program: String,
        /// What aya found.
        #[source]
        source: Box<ProgramError>,
    },
    /// The verifier rejected a program.
    #[error("the kernel rejected program {program} {SNAPSHOT_HINT}")]
    ProgramRejected {
        /// The program.
        program: String,
        /// The kernel's reason (with the verifier log).
        #[source]
        source: Box<ProgramError>,
    },
    /// A program did not attach to its tracepoint.
    #[error("attaching tracepoint {program} failed {SNAPSHOT_HINT}")]
    Attach {
        /// The program (named after its tracepoint).
        program: String,
        /// The kernel's reason.
        #[source]
        source: Box<ProgramError>,
    },
    /// A map could not be opened.
    #[error("map {map} cannot be used {SNAPSHOT_HINT}")]
    Map {
        /// The map.
        map: &'static str,
        /// The kernel's (or aya's) reason.
        #[source]
        source: Box<MapError>,
    },
    /// The traced set could not be mapped into memtrace.
    #[error("mapping the traced-process set failed {SNAPSHOT_HINT}")]
    TracedSet(#[source] io::Error),
    /// A pid could not be added to the traced set.
    #[error("cannot trace this process {SNAPSHOT_HINT}")]
    AddPid(#[source] traced::PidOutOfRange),
    /// The thread that drains the ring buffer could not start.
    #[error("starting the ring buffer reader thread failed {SNAPSHOT_HINT}")]
    Reader(#[source] io::Error),
}

/// How to load the tracer.
#[derive(Clone, Debug, Default)]
pub struct TracerOptions {
    /// Add children of traced processes to the traced set in the kernel,
    /// before they run.
    pub follow_forks: bool,
    /// Ring buffer size in bytes (rounded up to a power-of-two number of
    /// pages, at least `MIN_RING_BYTES`); `None` for the default of 4 MiB.
    pub ring_bytes: Option<u32>,
    /// Take the kernel's frame-pointer stack for every event, not only
    /// when the user stack window could not be read (costs the traced
    /// threads a few microseconds per call).
    pub kernel_stacks: bool,
    /// Capture the stacks of munmap calls too (see
    /// `memtrace_common::tracepoints::Syscall::stack`).
    pub unmap_stacks: bool,
    /// Let the syscall programs return right after the process filter,
    /// recording nothing: what the probes alone cost (the overhead
    /// benchmark's floor).
    pub probes_only: bool,
    /// Most bytes of decoded events waiting in memory for the session;
    /// `None` for [`DEFAULT_QUEUE_BYTES`]. Past it the reader stops taking
    /// events from the ring buffer, which then overflows and counts its
    /// losses: memory stays bounded whatever the backlog.
    pub queue_bytes: Option<usize>,
}

/// Most events one [`Tracer::wait_events`] or [`Tracer::drain`] takes:
/// the session holds a batch at a time, the rest stay in the bounded
/// queue (whose bound is then what memory they take).
pub const TAKE_MAX: usize = 4096;

/// Default of [`TracerOptions::queue_bytes`].
pub const DEFAULT_QUEUE_BYTES: usize = 64 << 20;

/// Events the kernel side could not deliver.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Lost {
    /// Ring buffer full.
    pub ring_buffer: u64,
    /// Syscalls dropped before their record: another thread's call held
    /// the thread's pending-call slot (normally zero; see
    /// `memtrace_common::pending_slot`), or the registers were unreadable.
    pub pending: u64,
    /// Children (with `--follow-forks`) left untraced: their id unreadable,
    /// or above the `pid_max` the traced set was sized for.
    pub untraced_children: u64,
    /// Records that did not decode (never expected: counted, not hidden).
    pub undecodable: u64,
    /// Events delivered but never applied: still queued when tracing
    /// ended and the final drain ran out of time
    /// (`crate::session::Session::finish_round`).
    pub unapplied: u64,
}

impl Lost {
    pub fn total(&self) -> u64 {
        self.ring_buffer + self.pending + self.undecodable + self.unapplied
    }
}

/// A loaded and attached tracer.
pub struct Tracer {
    // Field order matters for drop: the reader thread and map handles go
    // before the object that owns the programs and links.
    reader: Reader,
    stacks: StackTraceMap<MapData>,
    counters: PerCpuArray<MapData, u64>,
    traced: traced::TracedSet,
    /// The kernel side's stack cache, and the keys added per process.
    stack_cache: BpfHashMap<MapData, StackKey, CachedStack>,
    cached_keys: std::collections::HashMap<u32, std::collections::HashSet<StackKey>>,
    /// memtrace's PID namespace (zero in the initial one).
    pidns: PidNamespace,
    /// The syscall tracepoint links, by program, released without waiting
    /// on drop.
    syscall_links: Vec<(&'static str, TracePointLinkId)>,
    ebpf: Ebpf,
}

impl Drop for Tracer {
    fn drop(&mut self) {
        let mut links = Vec::new();
        for (prog, id) in self.syscall_links.drain(..) {
            let program: Option<&mut TracePoint> =
                self.ebpf.program_mut(prog).and_then(|p| p.try_into().ok());
            if let Some(link) = program.and_then(|p| p.take_link(id).ok()) {
                // On a kernel without BPF links the conversion fails and
                // drops the link: detached here, the slow way.
                if let Ok(link) = FdLink::try_from(link) {
                    links.push(link);
                }
            }
        }
        release::detach(links);
        // The rest (raw tracepoint links, programs, maps) goes with the
        // fields, without waiting.
    }
}

/// Check what tracing needs before touching the kernel, so failures read as
/// one clear line.
pub fn check_prerequisites() -> Result<(), TraceError> {
    if EBPF_OBJECT.is_empty() {
        return Err(TraceError::NoEbpfObject);
    }
    if !cfg!(target_os = "linux") {
        return Err(TraceError::NotLinux);
    }
    let caps = crate::proc::pid::effective_caps();
    let has = |bit: u32| caps & (1u64 << bit) != 0;
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    if !(has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))) {
        return Err(TraceError::Permission);
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
        tracefs::check_layouts(tracefs)?;
        let btf = btf::Btf::from_kernel().map_err(TraceError::Btf)?;
        let layout = kernel::check_and_layout(&btf)?;
        let pidns = kernel::own_pid_namespace()?;
        bump_memlock_rlimit();
        bump_nofile_rlimit();

        let follow: u8 = opts.follow_forks.into();
        let mut loader = EbpfLoader::new();
        let kernel_stacks: u8 = opts.kernel_stacks.into();
        loader.override_global("FOLLOW_FORKS", &follow, true);
        loader.override_global("KERNEL_STACKS", &kernel_stacks, true);
        let unmap_stacks: u8 = opts.unmap_stacks.into();
        loader.override_global("UNMAP_STACKS", &unmap_stacks, true);
        let probes_only: u8 = opts.probes_only.into();
        loader.override_global("PROBES_ONLY", &probes_only, true);
        loader.override_global("PIDNS", &pidns, true);
        loader.override_global("LAYOUT", &layout, true);
        let ring = ring_size(opts.ring_bytes.unwrap_or(DEFAULT_RING_BYTES));
        loader.map_max_entries("EVENTS", ring);
        loader.map_max_entries("TRACED", traced::elements(traced::pid_max()));
        let wakeup_bytes = u64::from(ring / WAKEUP_RING_FRACTION);
        loader.override_global("WAKEUP_BYTES", &wakeup_bytes, true);
        let mut ebpf = loader
            .load(EBPF_OBJECT)
            .map_err(|e| TraceError::Load(Box::new(e)))?;

        // Per-syscall tracepoints: the kernel runs them for the traced
        // syscalls only (see `memtrace_common::tracepoints`).
        let mut syscall_links = Vec::new();
        for syscall in SYSCALLS {
            for prog in syscall.enter.into_iter().chain([syscall.exit]) {
                let program: &mut TracePoint = loaded(&mut ebpf, prog)?;
                let id = program
                    .attach(SYSCALLS_CATEGORY, prog)
                    .map_err(|e| attach_error(prog, e))?;
                syscall_links.push((prog, id));
            }
        }
        for tp in RAW_TRACEPOINTS {
            if tp.name == SCHED_PROCESS_FORK.name && !opts.follow_forks {
                continue;
            }
            let program: &mut RawTracePoint = loaded(&mut ebpf, tp.name)?;
            program
                .attach(tp.name)
                .map_err(|e| attach_error(tp.name, e))?;
        }

        let map_err = |map, e| TraceError::Map {
            map,
            source: Box::new(e),
        };
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| TraceError::MissingFromObject {
                    what: "map",
                    name: name.to_owned(),
                })
        };
        let events = RingBuf::try_from(take("EVENTS")?).map_err(|e| map_err("EVENTS", e))?;
        let reader = Reader::spawn(events, opts.queue_bytes.unwrap_or(DEFAULT_QUEUE_BYTES))
            .map_err(TraceError::Reader)?;
        let stacks = StackTraceMap::try_from(take("STACKS")?).map_err(|e| map_err("STACKS", e))?;
        let counters =
            PerCpuArray::try_from(take("COUNTERS")?).map_err(|e| map_err("COUNTERS", e))?;
        let traced = traced::TracedSet::new(take("TRACED")?).map_err(TraceError::TracedSet)?;
        let stack_cache =
            BpfHashMap::try_from(take("STACK_CACHE")?).map_err(|e| map_err("STACK_CACHE", e))?;
        Ok(Tracer {
            reader,
            stacks,
            counters,
            traced,
            stack_cache,
            cached_keys: Default::default(),
            pidns,
            syscall_links,
            ebpf,
        })
    }

    /// Start tracing process `pid` (all its threads), a pid as memtrace
    /// sees it. In a PID namespace, only processes of that namespace can
    /// be traced: the kernel reports no ids of namespaces below it.
    pub fn add_pid(&mut self, pid: u32) -> Result<(), TraceError> {
        kernel::check_traceable(self.pidns, pid)?;
        self.traced.add(pid).map_err(TraceError::AddPid)
    }

    /// Stop tracing `pid` (e.g. a thread id the fork program added).
    pub fn remove_pid(&mut self, pid: u32) {
        self.traced.remove(pid);
    }

    /// Whether `pid`'s code keeps frame pointers (Go): its calls then carry
    /// the kernel's frame-pointer stack as well as the window, which goes
    /// on past stack switches (Go's `runtime.systemstack`). A process no
    /// longer traced stays so.
    pub fn set_frame_pointers(&mut self, pid: u32, on: bool) {
        use memtrace_common::traced::{FRAME_POINTERS, TRACED};
        let bits = TRACED | if on { FRAME_POINTERS } else { 0 };
        self.traced.update_if_traced(pid, bits);
    }

    /// Let the eBPF side send stack `id` instead of a window for calls of
    /// `pid` at user (`ip`, `sp`) whose stack words pass `check`. A full
    /// cache evicts its least recently used stack; those calls then send a
    /// window again.
    pub fn remember_stack(&mut self, pid: u32, (ip, sp): (u64, u64), check: &StackCheck, id: u32) {
        if check.words.len() > STACK_CHECK_WORDS {
            return;
        }
        let key = StackKey {
            tgid: pid,
            _pad: 0,
            ip,
            sp,
        };
        let mut value = CachedStack {
            id,
            count: check.words.len() as u32,
            extent: check.extent(),
            bp_used: check.bp.is_some().into(),
            bp: check.bp.unwrap_or(0),
            offsets: [0; STACK_CHECK_WORDS],
            values: [0; STACK_CHECK_WORDS],
        };
        for (i, (off, word)) in check.words.iter().enumerate() {
            value.offsets[i] = *off;
            value.values[i] = *word;
        }
        if self.stack_cache.insert(key, value, 0).is_ok() {
            self.cached_keys.entry(pid).or_default().insert(key);
        }
    }

    /// Forget the stacks remembered for `pid` (it exited, or exec replaced
    /// its code).
    pub fn forget_stacks(&mut self, pid: u32) {
        for key in self.cached_keys.remove(&pid).unwrap_or_default() {
            let _ = self.stack_cache.remove(&key);
        }
    }

    /// Wait up to `timeout` for events, then move the waiting events (at
    /// most [`TAKE_MAX`]) into `out`; returns how many.
    pub fn wait_events(&mut self, timeout: Duration, out: &mut Vec<Event>) -> usize {
        let before = out.len();
        match self.reader.rx.recv_timeout(timeout) {
            Ok(ev) => out.push(ev),
            Err(_) => return 0,
        }
        out.extend(self.reader.rx.try_iter().take(TAKE_MAX - 1));
        out.len() - before
    }

    /// Move every event that has arrived into `out`, without waiting.
    ///
    /// The reader thread empties the ring buffer continuously, but an event
    /// the kernel committed an instant ago may still be in the ring; this
    /// asks the thread to do one more pass and waits for it. The pass
    /// stops early when the event buffer is full; `true` when it got to
    /// the end of the ring and every event was moved (else apply events
    /// and drain again for the rest).
    pub fn drain(&mut self, out: &mut Vec<Event>) -> bool {
        let before = out.len();
        let (done_tx, done_rx) = mpsc::channel();
        let mut ring_empty = false;
        if self.reader.flush.send(done_tx).is_ok() {
            self.reader.wake();
            ring_empty = done_rx
                .recv_timeout(Duration::from_secs(1))
                .unwrap_or(false);
        }
        out.extend(self.reader.rx.try_iter().take(TAKE_MAX));
        // Taking fewer than the most means the queue was emptied.
        ring_empty && out.len() - before < TAKE_MAX
    }

    /// The session applied (or dropped) events of `bytes` in all
    /// ([`Event::footprint`] as delivered): room for the reader again.
    pub fn applied(&mut self, bytes: usize) {
        self.reader.credit(bytes);
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
            undecodable: self.reader.undecodable.load(Ordering::Relaxed),
            unapplied: 0,
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
/// the kernel drop events. Events queue in memory instead, up to the
/// event buffer: an event counts from its decoding until the session has
/// applied it ([`Tracer::applied`]), so the queue and the session's
/// backlog together stay within the bound.
struct Reader {
    rx: mpsc::Receiver<Event>,
    /// Bytes of events sent and not yet applied by the session.
    queued: Arc<AtomicUsize>,
    /// The thread stopped reading at the bound and waits for room.
    blocked: Arc<AtomicBool>,
    /// Records that did not decode.
    undecodable: Arc<AtomicU64>,
    cap: usize,
    /// An eventfd that wakes the thread for a flush request, or room.
    wake: Arc<OwnedFd>,
    /// Requests for one more pass; the reply says whether the ring was
    /// read to its end.
    flush: mpsc::Sender<mpsc::Sender<bool>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Reader {
    fn spawn(mut ring: RingBuf<MapData>, cap: usize) -> std::io::Result<Reader> {
        let (tx, rx) = mpsc::channel();
        let (flush_tx, flush_rx) = mpsc::channel::<mpsc::Sender<bool>>();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let queued = Arc::new(AtomicUsize::new(0));
        let blocked = Arc::new(AtomicBool::new(false));
        let undecodable = Arc::new(AtomicU64::new(0));
        let sink = Sink {
            tx,
            queued: queued.clone(),
            blocked: blocked.clone(),
            undecodable: undecodable.clone(),
            cap,
        };
        // A flush request wakes the thread at once rather than at its next
        // poll timeout (each drain at an exit stop would wait up to 20 ms).
        // SAFETY: eventfd takes no pointers; the result is checked.
        let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `raw` is a new descriptor owned by nothing else.
        let wake = Arc::new(unsafe { OwnedFd::from_raw_fd(raw) });
        let wake2 = wake.clone();
        let thread = thread::Builder::new()
            .name("memtrace-ring".into())
            .spawn(move || {
                let fd = ring.as_raw_fd();
                while !stop2.load(Ordering::Relaxed) {
                    // While the buffer is full the ring is not polled: it
                    // stays readable, and polling it would spin. Room
                    // (`Reader::credit`) or a flush request wakes us.
                    let full = sink.full();
                    let mut pfds = [
                        libc::pollfd {
                            fd: if full { -1 } else { fd },
                            events: libc::POLLIN,
                            revents: 0,
                        },
                        libc::pollfd {
                            fd: wake2.as_raw_fd(),
                            events: libc::POLLIN,
                            revents: 0,
                        },
                    ];
                    // SAFETY: two valid pollfds (a negative fd is skipped).
                    // The eBPF side wakes us only when the ring is a
                    // quarter full, so poll on a short timer too.
                    unsafe { libc::poll(pfds.as_mut_ptr(), 2, 20) };
                    if pfds[1].revents != 0 {
                        let mut count = [0u8; 8];
                        // SAFETY: reads 8 bytes into a buffer of 8 from our
                        // eventfd (non-blocking), resetting it.
                        let _ =
                            unsafe { libc::read(wake2.as_raw_fd(), count.as_mut_ptr().cast(), 8) };
                    }
                    let Ok(mut at_end) = read_ring(&mut ring, &sink) else {
                        return;
                    };
                    while let Ok(done) = flush_rx.try_recv() {
                        if !at_end {
                            match read_ring(&mut ring, &sink) {
                                Ok(end) => at_end = end,
                                Err(()) => return,
                            }
                        }
                        let _ = done.send(at_end);
                    }
                }
            })?;
        Ok(Reader {
            rx,
            queued,
            blocked,
            undecodable,
            cap,
            wake,
            flush: flush_tx,
            stop,
            thread: Some(thread),
        })
    }
}

impl Reader {
    /// Wake the thread for a flush request.
    fn wake(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a buffer of 8 to our eventfd.
        let _ = unsafe { libc::write(self.wake.as_raw_fd(), one.as_ptr().cast(), 8) };
    }

    /// The session applied events of `bytes`: they no longer count, and
    /// a reader waiting for room is woken once there is some.
    fn credit(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        // SeqCst with `Sink::full`: one of the two sees the other's write.
        let left = self.queued.fetch_sub(bytes, Ordering::SeqCst) - bytes;
        if left < self.cap && self.blocked.swap(false, Ordering::SeqCst) {
            self.wake();
        }
    }
}

/// The reader thread's end of the queue.
struct Sink {
    tx: mpsc::Sender<Event>,
    queued: Arc<AtomicUsize>,
    blocked: Arc<AtomicBool>,
    /// Records that did not decode.
    undecodable: Arc<AtomicU64>,
    cap: usize,
}

impl Sink {
    /// The event buffer is full; the session is told to wake the reader
    /// when it frees room.
    fn full(&self) -> bool {
        if self.queued.load(Ordering::SeqCst) < self.cap {
            return false;
        }
        self.blocked.store(true, Ordering::SeqCst);
        // Room may have been made just before the flag was set.
        self.queued.load(Ordering::SeqCst) >= self.cap
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

/// Decode records from the ring and send them on, while the queue has
/// room: a full queue leaves them in the ring, whose overflow the eBPF
/// side counts, so memory stays bounded and every loss is counted.
/// `Ok(true)` when the ring was read to its end, `Err` when the receiving
/// side is gone.
fn read_ring(ring: &mut RingBuf<MapData>, sink: &Sink) -> Result<bool, ()> {
    while !sink.full() {
        let Some(item) = ring.next() else {
            return Ok(true);
        };
        match Event::from_raw_reading(&item, crate::proc::read_c_string) {
            Some(ev) => {
                sink.queued.fetch_add(ev.footprint(), Ordering::SeqCst);
                sink.tx.send(ev).map_err(|_| ())?;
            }
            // Never expected (the record types are shared); counted
            // rather than dropped unseen.
            None => drop(sink.undecodable.fetch_add(1, Ordering::Relaxed)),
        }
    }
    Ok(false)
}

/// The program `name` of the object, as a `P`, loaded into the kernel.
fn loaded<'a, P: LoadProgram + 'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut P, TraceError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let program: &mut P = ebpf
        .program_mut(name)
        .ok_or_else(|| TraceError::MissingFromObject {
            what: "program",
            name: name.to_owned(),
        })?
        .try_into()
        .map_err(|e| TraceError::ProgramType {
            program: name.to_owned(),
            source: Box::new(e),
        })?;
    program.load().map_err(|e| TraceError::ProgramRejected {
        program: name.to_owned(),
        source: Box::new(e),
    })?;
    Ok(program)
}

/// The two program types memtrace loads.
trait LoadProgram {
    fn load(&mut self) -> Result<(), ProgramError>;
}

impl LoadProgram for TracePoint {
    fn load(&mut self) -> Result<(), ProgramError> {
        TracePoint::load(self)
    }
}

impl LoadProgram for RawTracePoint {
    fn load(&mut self) -> Result<(), ProgramError> {
        RawTracePoint::load(self)
    }
}

fn attach_error(program: &str, e: ProgramError) -> TraceError {
    TraceError::Attach {
        program: program.to_owned(),
        source: Box::new(e),
    }
}

/// Ring buffer sizes must be a power-of-two number of pages, and hold a
/// few records with a stack window.
fn ring_size(bytes: u32) -> u32 {
    bytes
        .max(memtrace_common::MIN_RING_BYTES)
        .next_power_of_two()
}

/// The session holds the executable files of traced processes open
/// (`proc::maps::OpenFiles`): allow as many descriptors as the hard limit.
fn bump_nofile_rlimit() {
    let mut rlim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rlim) == 0 {
            rlim.rlim_cur = rlim.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &rlim);
        }
    }
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
    fn errors_are_one_line_with_the_hint_and_keep_their_cause() {
        use std::error::Error as _;

        assert_eq!(
            TraceError::Permission.to_string(),
            "tracing needs root (or CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE): run it with \
             sudo (`memtrace snapshot` still works without eBPF)"
        );
        let btf = TraceError::Btf(btf::BtfError::Read {
            path: "/sys/kernel/btf/vmlinux".into(),
            source: io::Error::from_raw_os_error(libc::ENOENT),
        });
        let pidns = TraceError::PidNamespace(io::Error::from_raw_os_error(libc::EACCES));
        for e in [&btf, &pidns] {
            let line = e.to_string();
            assert!(line.ends_with(SNAPSHOT_HINT), "{line}");
            assert!(!line.contains('\n'), "{line}");
            assert!(e.source().is_some(), "{line} lost its cause");
        }
        let contract = TraceError::Contract {
            what: "pt_regs.cs".into(),
            found: "at 8".into(),
            expected: "at 136".into(),
        };
        assert_eq!(
            contract.to_string(),
            "pt_regs.cs is at 8 in this kernel, memtrace's eBPF programs expect at 136 \
             (`memtrace snapshot` still works without eBPF)"
        );
        for e in [
            TraceError::ForeignProc,
            TraceError::NestedNamespace { pid: 7 },
        ] {
            assert!(!e.to_string().contains('\n'), "{e}");
        }
    }

    #[test]
    fn ring_sizes_are_power_of_two_pages() {
        assert_eq!(ring_size(1), 64 << 10);
        assert_eq!(ring_size(4096), 64 << 10);
        assert_eq!(ring_size((64 << 10) + 1), 128 << 10);
        assert_eq!(ring_size(4 << 20), 4 << 20);
    }
}
