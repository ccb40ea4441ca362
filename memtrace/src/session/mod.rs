//! A tracing session: the event source, the processes it follows, and the
//! per-event bookkeeping shared by the live stream and the reports.
//!
//! - this module: [`Session`]: events in (from any
//!   [`EventSource`], the eBPF tracer by default), stacks unwound and
//!   interned, ledgers kept per process, attributed reports out.
//! - [`driver`]: the tracing loop of `memtrace --pid`/`-- CMD`.
//! - [`output`]: where the loop writes (text or typed JSON lines).
//! - [`peak`]: the highest anonymous RSS while tracing, and its report.
//! - [`relay`]: signals sent to memtrace, passed on to a launched target.
//! - [`stream`]: one event as a line; the summary.
//!
//! Contact points: below it [`crate::trace`], [`crate::stack`],
//! [`crate::attribution`], [`crate::proc`]; above it [`crate::serve`] and the
//! CLI.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    time::{Duration, Instant},
};

pub mod driver;
pub mod output;
pub mod peak;
pub mod relay;
pub mod stream;

use crate::{
    attribution::{
        self,
        ledger::{Ledger, Origin},
        report::{AttributedReport, ReportOptions, SiteStacks},
    },
    proc::{
        maps::{self, Mapping},
        pid,
    },
    stack::{
        callsite::{self, CallStack, StackTable},
        perfmap::PerfMaps,
        symbolize::Symbolizer,
        unwind::Unwinder,
    },
    trace::{
        Lost, TraceError, Tracer, TracerOptions,
        event::{Call, Event},
        source::EventSource,
    },
};
use stream::Summary;

/// Most time one [`Session::poll`] spends applying events.
pub const APPLY_BUDGET: Duration = Duration::from_millis(50);

/// Most time one [`Session::drain`] spends applying events.
pub const DRAIN_BUDGET: Duration = Duration::from_millis(100);

/// CLOCK_MONOTONIC now, in the eBPF side's time base (`bpf_ktime_get_ns`).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A tracing session over an event source: the eBPF [`Tracer`] by default.
pub struct Session<S: EventSource = Tracer> {
    pub tracer: S,
    pub symbolizer: Symbolizer,
    pub unwinder: Unwinder,
    /// The traced processes' perf maps, naming JIT code in stacks.
    perf_maps: PerfMaps,
    /// Raw call stacks of all events, by `Event::call_stack`.
    pub stacks: StackTable,
    pub summary: Summary,
    /// Session start, in event time.
    pub start_ns: u64,
    follow_forks: bool,
    /// Processes being traced and not yet exited.
    pids: HashSet<u32>,
    /// Live traced ranges per process.
    ledgers: HashMap<u32, Ledger>,
    /// File mappings per process, refreshed when modules are mapped, so
    /// stacks resolve even after the process is gone.
    maps: HashMap<u32, Vec<Mapping>>,
    /// Executable files of the traced processes, held open.
    files: maps::OpenFiles,
    /// Events delivered and put in apply order, not yet applied (a bounded
    /// drain at an exit stop leaves the rest here).
    backlog: VecDeque<Event>,
    /// Processes with events in the backlog: a forked child with events
    /// of its own is a process, not a thread.
    active: HashSet<u32>,
    /// Processes whose modules may have changed (dlopen, the loader at
    /// startup, exec): their maps are read again right before their next
    /// event, so events before an exec still resolve in the old image.
    dirty: HashSet<u32>,
    /// Stacks up to this id were symbolized ahead ([`Session::warm_symbols`]).
    warmed: usize,
    /// Events delivered and never applied ([`Session::finish_round`]).
    unapplied: u64,
}

impl Session<Tracer> {
    /// Load the eBPF tracer; nothing is traced until [`Session::add_pid`].
    pub fn new(opts: &TracerOptions) -> Result<Session, TraceError> {
        let tracer = Tracer::load(opts)?;
        Ok(Session::with_source(tracer, opts.follow_forks))
    }
}

impl<S: EventSource> Session<S> {
    /// A session over any event source (e.g. a recording in tests).
    pub fn with_source(source: S, follow_forks: bool) -> Session<S> {
        Session {
            tracer: source,
            symbolizer: Symbolizer::new(),
            unwinder: Unwinder::new(),
            perf_maps: PerfMaps::default(),
            stacks: StackTable::default(),
            summary: Summary::default(),
            start_ns: monotonic_ns(),
            follow_forks,
            pids: HashSet::new(),
            ledgers: HashMap::new(),
            maps: HashMap::new(),
            files: maps::OpenFiles::default(),
            backlog: VecDeque::new(),
            active: HashSet::new(),
            dirty: HashSet::new(),
            warmed: 0,
            unapplied: 0,
        }
    }

    pub fn add_pid(&mut self, pid: u32) -> Result<(), TraceError> {
        self.tracer.add_pid(pid)?;
        self.tracer
            .set_frame_pointers(pid, keeps_frame_pointers(pid));
        self.pids.insert(pid);
        self.refresh_maps(pid);
        // Read once tracing is on: a brk between the two is seen as an
        // event and applied after this (only its growth is then untraced),
        // never attributed to a later call.
        if let Some(end) = pid::program_break(pid) {
            self.ledgers.entry(pid).or_default().learn_brk(end);
        }
        Ok(())
    }

    /// Enter what exec mapped into `pid`'s ledger, read from
    /// `/proc/PID/maps` while it is stopped before its first instruction
    /// (launch mode): the executable's image with its `.data`/`.bss`, the
    /// loader, and the main stack, each under a label of its own instead
    /// of "untraced". Returns how many ranges were entered.
    pub fn seed_exec_image(&mut self, pid: u32) -> usize {
        let Ok(vmas) = crate::proc::smaps::read_maps(pid) else {
            return 0;
        };
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut seeded = 0;
        let mut prev_file: Option<String> = None;
        for v in &vmas {
            let anon = v.name.is_empty();
            let (label, extra) = if v.name == "[stack]" {
                (
                    "main stack".to_owned(),
                    libc::MAP_STACK | libc::MAP_GROWSDOWN,
                )
            } else if anon {
                // The zero-filled tail of a binary's data segment.
                match &prev_file {
                    Some(path) => (format!("exec image .bss of {path}"), 0),
                    None => continue,
                }
            } else if v.name.starts_with('/') {
                let what = if v.name == exe {
                    "exec image"
                } else {
                    "loader image"
                };
                (format!("{what} {}", v.name), 0)
            } else {
                // [vdso], [vvar]: the kernel's, not the program's.
                continue;
            };
            prev_file = v.name.starts_with('/').then(|| v.name.clone());
            let flags = libc::MAP_PRIVATE
                | libc::MAP_FIXED
                | extra
                | if anon || v.name == "[stack]" {
                    libc::MAP_ANONYMOUS
                } else {
                    0
                };
            let prot = [
                (v.perms.read, libc::PROT_READ),
                (v.perms.write, libc::PROT_WRITE),
                (v.perms.exec, libc::PROT_EXEC),
            ]
            .iter()
            .filter(|(on, _)| *on)
            .fold(0, |p, (_, bit)| p | bit);
            let ev = Event {
                time_ns: self.start_ns,
                pid,
                tid: pid,
                call: Call::Mmap {
                    addr: v.start,
                    len: v.end - v.start,
                    prot: prot as u32,
                    flags: flags as u32,
                    fd: if flags & libc::MAP_ANONYMOUS == 0 {
                        0
                    } else {
                        -1
                    },
                    offset: v.offset,
                },
                result: v.start as i64,
                stack_id: None,
                ip: 0,
                ret_addr: None,
                user: None,
                call_stack: Some(self.stacks.intern_label(&label)),
            };
            self.ledgers.entry(pid).or_default().apply(&ev);
            seeded += 1;
        }
        seeded
    }

    /// The live traced ranges of `pid`.
    pub fn ledger(&self, pid: u32) -> Option<&Ledger> {
        self.ledgers.get(&pid)
    }

    /// Processes still being traced.
    pub fn live_pids(&self) -> &HashSet<u32> {
        &self.pids
    }

    /// Wait up to `timeout` for events and return them in order, after
    /// updating the summary and the traced set (forks, exits). At most
    /// [`APPLY_BUDGET`] is spent applying them: the rest waits in the
    /// backlog, so the caller gets back to the target (its exit stop, a
    /// signal) in time whatever the backlog.
    pub fn poll(&mut self, timeout: Duration) -> Vec<Event> {
        let mut raw = Vec::new();
        // Work left from a bounded drain comes first, without waiting.
        let wait = if self.backlog.is_empty() {
            timeout
        } else {
            Duration::ZERO
        };
        self.tracer.wait_events(wait, &mut raw);
        self.enqueue(raw);
        self.process_until(Some(Instant::now() + APPLY_BUDGET)).0
    }

    /// Everything the kernel has delivered so far, without waiting for
    /// more; at most [`DRAIN_BUDGET`] of work (the rest waits for the next
    /// poll).
    pub fn drain(&mut self) -> Vec<Event> {
        self.drain_until(Some(Instant::now() + DRAIN_BUDGET)).0
    }

    /// Like [`Session::drain`], but stop applying events at `deadline`;
    /// the rest wait for the next poll. The flag says whether every
    /// delivered event was applied. When the event buffer filled up, the
    /// ring is read again as room is made, to its end.
    pub fn drain_until(&mut self, deadline: Option<Instant>) -> (Vec<Event>, bool) {
        let mut all = Vec::new();
        loop {
            let (events, complete, ring_empty) = self.drain_round(deadline);
            all.extend(events);
            // A target that maps faster than this applies keeps the ring
            // from emptying: the deadline ends the rounds too.
            if !complete || ring_empty || deadline.is_some_and(|d| Instant::now() >= d) {
                return (all, complete);
            }
        }
    }

    /// One round of a drain: what the event buffer holds (up to
    /// [`crate::trace::TAKE_MAX`]), applied until `deadline`; whether all
    /// were applied, and whether the ring was read to its end.
    fn drain_round(&mut self, deadline: Option<Instant>) -> (Vec<Event>, bool, bool) {
        let mut raw = Vec::new();
        let ring_empty = self.tracer.drain(&mut raw);
        self.enqueue(raw);
        let (events, complete) = self.process_until(deadline);
        (events, complete, ring_empty)
    }

    /// Tracing ends: the kernel side records nothing more for the traced
    /// processes (they stay known for their reports), so what it delivered
    /// is finite; [`Session::finish_round`] applies it.
    pub fn stop_recording(&mut self) {
        for &pid in &self.pids {
            self.tracer.remove_pid(pid);
        }
    }

    /// After [`Session::stop_recording`]: apply one round of what is left
    /// and return it, with whether more is left. Past `deadline` what is
    /// left (in the backlog, the event buffer or the ring) is taken and
    /// counted as [`Lost::unapplied`] instead, so every event recorded is
    /// either applied or counted. Rounds keep memory to one batch.
    pub fn finish_round(&mut self, deadline: Instant) -> (Vec<Event>, bool) {
        let (events, complete, ring_empty) = self.drain_round(Some(deadline));
        if complete && ring_empty {
            return (events, false);
        }
        if Instant::now() < deadline {
            return (events, true);
        }
        let mut unapplied = self.backlog.len() as u64;
        let mut bytes: usize = self.backlog.drain(..).map(|ev| ev.footprint()).sum();
        loop {
            self.tracer.applied(std::mem::take(&mut bytes));
            let mut raw = Vec::new();
            let ring_empty = self.tracer.drain(&mut raw);
            unapplied += raw.len() as u64;
            bytes = raw.iter().map(Event::footprint).sum();
            if ring_empty {
                self.tracer.applied(bytes);
                break;
            }
        }
        self.unapplied += unapplied;
        self.active.clear();
        self.update_lost();
        (events, false)
    }

    /// Events delivered but not yet applied.
    pub fn backlog(&self) -> usize {
        self.backlog.len()
    }

    fn enqueue(&mut self, mut raw: Vec<Event>) {
        // Put the batch in the order the kernel applied the calls (see
        // `apply_order`), so the ledgers replay them correctly.
        raw.sort_by_key(apply_order);
        // Children with an event of their own in the batch are processes
        // (a thread's events carry its process's pid).
        self.active.extend(raw.iter().map(|ev| ev.pid));
        self.backlog.extend(raw);
    }

    fn process_until(&mut self, deadline: Option<Instant>) -> (Vec<Event>, bool) {
        let mut out = Vec::new();
        // What the applied events took of the event buffer, as delivered.
        let mut applied = 0;
        while let Some(mut ev) = self.backlog.pop_front() {
            // Checking the clock every event would cost more than the work.
            if out.len() % 64 == 63 && deadline.is_some_and(|d| Instant::now() >= d) {
                self.backlog.push_front(ev);
                break;
            }
            applied += ev.footprint();
            if ev.kind().is_syscall() {
                if self.dirty.remove(&ev.pid) {
                    self.refresh_maps(ev.pid);
                }
                // Unwind now and pin each address to its file and offset, so
                // the stack means the same after the process is gone.
                // A stack the kernel side recognised arrives as its id.
                if ev.call_stack.is_none() {
                    let maps = self.maps.get(&ev.pid).map(Vec::as_slice).unwrap_or(&[]);
                    let tracer = &self.tracer;
                    let (stack, check) =
                        callsite::resolve_raw_stack(&ev, maps, &mut self.unwinder, |id| {
                            tracer.stack(id)
                        });
                    let mut located = maps::locate(maps, &stack);
                    self.perf_maps.name_jit(ev.pid, &mut located);
                    let id = self.stacks.intern(located);
                    ev.call_stack = Some(id);
                    if let (Some(check), Some(user)) = (check, &ev.user) {
                        self.tracer
                            .remember_stack(ev.pid, (user.ip, user.sp), &check, id);
                    }
                } else if let Some(id) = ev.call_stack {
                    ev.call_stack = Some(self.name_late_jit(ev.pid, id));
                }
                ev.user = None;
            }
            if maps_may_change(&ev) {
                self.dirty.insert(ev.pid);
            }
            if let Call::Fork {
                child_pid,
                new_process,
            } = ev.call
            {
                // The kernel side drops thread creation when it can tell.
                if !new_process && !is_new_process(ev.pid, child_pid, &self.active) {
                    self.tracer.remove_pid(child_pid);
                    continue;
                }
                if self.follow_forks {
                    // The child starts with a copy of the parent's mappings;
                    // what is known of it already (an exec) stays.
                    self.pids.insert(child_pid);
                    let child = self
                        .ledgers
                        .get(&ev.pid)
                        .map(Ledger::fork_child)
                        .unwrap_or_default();
                    self.ledgers.entry(child_pid).or_insert(child);
                    let maps = self.maps.get(&ev.pid).cloned().unwrap_or_default();
                    self.maps.entry(child_pid).or_insert(maps);
                }
            }
            let ledger = self.ledgers.entry(ev.pid).or_default();
            self.summary.add(&ev, ledger.brk_end());
            ledger.apply(&ev);
            match ev.call {
                Call::Exec { .. } => {
                    self.unwinder.forget(ev.pid);
                    self.perf_maps.forget(ev.pid);
                    self.tracer.forget_stacks(ev.pid);
                    self.tracer
                        .set_frame_pointers(ev.pid, keeps_frame_pointers(ev.pid));
                    self.maps.remove(&ev.pid);
                }
                Call::Exit { .. } => {
                    // Nothing of a process outlives it here: its report was
                    // taken at its exit stop, before this event.
                    self.unwinder.forget(ev.pid);
                    self.perf_maps.forget(ev.pid);
                    self.tracer.forget_stacks(ev.pid);
                    self.pids.remove(&ev.pid);
                    self.ledgers.remove(&ev.pid);
                    self.maps.remove(&ev.pid);
                    self.tracer.remove_pid(ev.pid);
                }
                _ => {}
            }
            out.push(ev);
        }
        if self.backlog.is_empty() {
            self.active.clear();
        }
        self.tracer.applied(applied);
        self.update_lost();
        (out, self.backlog.is_empty())
    }

    fn update_lost(&mut self) {
        let lost = Lost {
            unapplied: self.unapplied,
            ..self.tracer.lost()
        };
        self.summary.lost = lost;
        self.summary.lost_events = lost.total();
    }

    /// A stack the kernel side sent as an id: captured before the
    /// process's perf map named its JIT code (the map grows as code is
    /// compiled), it is named now; the named stack is a stack of its own.
    fn name_late_jit(&mut self, pid: u32, id: u32) -> u32 {
        let known = self.stacks.get(id);
        if !known.iter().any(|l| l.module.is_none() && l.jit.is_none()) {
            return id;
        }
        let mut located = known.to_vec();
        self.perf_maps.name_jit(pid, &mut located);
        if located.iter().zip(known).all(|(a, b)| a.jit == b.jit) {
            return id;
        }
        self.stacks.intern(located)
    }

    /// Forget processes that are gone without an exit event (e.g. they
    /// exited before the tracer attached). Returns whether any is left.
    pub fn reap_dead(&mut self) -> bool {
        self.pids.retain(|pid| pid::process_exists(*pid));
        !self.pids.is_empty()
    }

    /// Symbolize the stacks interned since the last call, for at most
    /// about `budget`: the first lookups in a module (blazesym parsing its
    /// symbols and line tables, ~40 ms for a Rust binary) then happen while
    /// tracing, not in the final report, which the target waits for
    /// (`--quiet` symbolizes nothing else before it).
    pub fn warm_symbols(&mut self, budget: Duration) {
        let deadline = Instant::now() + budget;
        while self.warmed < self.stacks.len() && Instant::now() < deadline {
            let id = self.warmed as u32;
            self.warmed += 1;
            let _ = self.stacks.call_stack(id, &mut self.symbolizer);
        }
    }

    /// The symbolized call stack of an event.
    pub fn stack_of(&mut self, ev: &Event) -> CallStack {
        let Some(id) = ev.call_stack else {
            return CallStack::default();
        };
        self.stacks.call_stack(id, &mut self.symbolizer)
    }

    /// The attributed report of `pid` now: its smaps joined with the
    /// ledger, split by pagemap where a VMA holds several origins.
    pub fn attributed_report(
        &mut self,
        pid: u32,
        opts: ReportOptions,
    ) -> Result<AttributedReport, crate::proc::ProcError> {
        // After the main thread exited, a live thread shows the memory.
        let reader = pid::mm_reader(pid);
        let empty = Ledger::default();
        let Session {
            ledgers,
            stacks,
            symbolizer,
            summary,
            ..
        } = self;
        let ledger = ledgers.get(&pid).unwrap_or(&empty);
        // The join runs while smaps is read.
        let mut attribution = attribution::join::attribute_live(reader, ledger)?;
        attribution.pid = pid;
        let mut sites = Sites { stacks, symbolizer };
        let mut report = attribution::report::build(&attribution, ledger, opts, &mut sites);
        report.lost_events = summary.lost_events;
        Ok(report)
    }

    /// What the report of `pid` needs from the kernel and the ledger, taken
    /// now ([`Session::build_report_from`] symbolizes later, e.g. once a process
    /// held at its exit stop has been let go).
    pub fn capture_report(&mut self, pid: u32) -> Result<ReportInput, crate::proc::ProcError> {
        // After the main thread exited, a live thread shows the memory.
        let reader = pid::mm_reader(pid);
        // The join runs while smaps is read: the target is held less long.
        let smaps = crate::proc::smaps::stream_smaps(reader)?;
        self.capture_from(pid, reader, smaps)
    }

    /// [`Session::capture_report`] from `smaps`, a stream of `reader`'s
    /// (the process showing `pid`'s memory) already started.
    fn capture_from(
        &mut self,
        pid: u32,
        reader: u32,
        smaps: crate::proc::smaps::SmapsStream,
    ) -> Result<ReportInput, crate::proc::ProcError> {
        let ledger = self.ledgers.get(&pid).cloned().unwrap_or_default();
        let mut attribution = attribution::join::attribute_stream(reader, smaps, &ledger)?;
        attribution.pid = pid;
        Ok(ReportInput {
            attribution,
            ledger,
        })
    }

    /// The attributed report of `pid` now, every event delivered so far
    /// applied ([`Session::capture_now`]). The events drained meanwhile go
    /// to `events`, for the caller to show.
    pub fn report_now(
        &mut self,
        pid: u32,
        opts: ReportOptions,
        events: &mut Vec<Event>,
    ) -> Result<AttributedReport, crate::proc::ProcError> {
        let (input, _) = self.capture_now(pid, events)?;
        Ok(self.build_report_from(&input, opts))
    }

    /// The report of [`Session::report_now`] for a history sample, read
    /// once more when the target changed its address space while smaps
    /// was being read: a range remapped then can be in neither the smaps
    /// read nor the ledger, and a series of the history would dip to
    /// nothing for one sample (a false growth when it comes back). Once
    /// more only: a target that remaps without pause costs a sample two
    /// captures (each read whole, [`crate::proc::smaps::settled`]), not a
    /// loop. Only the capture kept is symbolized, and the second follows
    /// the first at once.
    pub fn sample_report(
        &mut self,
        pid: u32,
        opts: ReportOptions,
        events: &mut Vec<Event>,
    ) -> Result<AttributedReport, crate::proc::ProcError> {
        let (mut input, changed) = self.capture_now(pid, events)?;
        if changed {
            // A second read that fails leaves the first, not a gap.
            if let Ok((again, _)) = self.capture_now(pid, events) {
                input = again;
            }
        }
        Ok(self.build_report_from(&input, opts))
    }

    /// What the report of `pid` needs, with every event delivered so far
    /// applied, and whether `pid` changed its address space while smaps
    /// was read (events of it drained during the read, or arrived before
    /// it ended). The events drained meanwhile go to `events`.
    ///
    /// smaps is read from the start, in the background, while the session
    /// takes its last events (which can wait for the tracer's reader
    /// thread), and the join with the ledger runs on each batch of VMAs as
    /// it arrives ([`attribution::join::attribute_stream`]), so it costs
    /// little more than the smaps read itself.
    fn capture_now(
        &mut self,
        pid: u32,
        events: &mut Vec<Event>,
    ) -> Result<(ReportInput, bool), crate::proc::ProcError> {
        let reader = pid::mm_reader(pid);
        let smaps = crate::proc::smaps::stream_smaps(reader)?;
        let before = events.len();
        events.extend(self.drain());
        let input = self.capture_from(pid, reader, smaps)?;
        events.extend(self.drain());
        let changed = events[before..].iter().any(|ev| ev.pid == pid);
        Ok((input, changed))
    }

    /// Build the report of a [`ReportInput`].
    pub fn build_report_from(
        &mut self,
        input: &ReportInput,
        opts: ReportOptions,
    ) -> AttributedReport {
        let mut sites = Sites {
            stacks: &self.stacks,
            symbolizer: &mut self.symbolizer,
        };
        let mut report =
            attribution::report::build(&input.attribution, &input.ledger, opts, &mut sites);
        report.lost_events = self.summary.lost_events;
        report
    }

    /// Re-read the file mappings of `pid`, keeping the old copy when the
    /// process is already gone.
    pub fn refresh_maps(&mut self, pid: u32) {
        // After the main thread exited, a live thread shows the memory.
        if let Some(maps) = maps::read(pid::mm_reader(pid), &mut self.files) {
            self.maps.insert(pid, maps);
        }
    }
}

/// A process's attribution and ledger, captured for a report built later.
pub struct ReportInput {
    pub attribution: attribution::join::Attribution,
    pub ledger: Ledger,
}

/// The session's stacks as the report sees them.
struct Sites<'a> {
    stacks: &'a StackTable,
    symbolizer: &'a mut Symbolizer,
}

impl SiteStacks for Sites<'_> {
    fn site_of(&self, origin: &Origin) -> Option<u32> {
        origin.call_stack.and_then(|id| self.stacks.site(id))
    }

    fn stack_of(&mut self, origin: &Origin) -> CallStack {
        match origin.call_stack {
            Some(id) => self.stacks.call_stack(id, self.symbolizer),
            None => CallStack::default(),
        }
    }

    fn build_id(&mut self, module: &str) -> Option<String> {
        self.symbolizer.build_id(module)
    }

    fn reservation_site(&self, origin: &Origin) -> Option<u32> {
        origin.reserved_by.and_then(|id| self.stacks.site(id))
    }

    fn reservation_stack(&mut self, origin: &Origin) -> Option<CallStack> {
        let id = origin.reserved_by?;
        Some(self.stacks.call_stack(id, self.symbolizer))
    }
}

/// When an event's change to the address space is known to have happened,
/// as a sort key: the entry of the calls the eBPF side times from their
/// entry, the exit of the others
/// (`memtrace_common::tracepoints::Syscall::enter` says which and why).
fn apply_order(ev: &Event) -> u64 {
    ev.time_ns
}

/// Whether `pid` runs code that keeps frame pointers: Go binaries (told by
/// their sections, as the classification tells them).
fn keeps_frame_pointers(pid: u32) -> bool {
    let link = format!("/proc/{pid}/exe");
    // The file's own path when it is visible here, so the per-path memo
    // stays right when the pid execs another binary.
    let path = std::fs::read_link(&link)
        .ok()
        .filter(|p| p.is_file())
        .and_then(|p| p.to_str().map(str::to_owned))
        .unwrap_or(link);
    crate::attribution::classify::is_go_module(&path)
}

/// Whether the fork of `child` by `parent` made a process (not a thread).
/// A thread is listed under its process's task directory, or reports its
/// process as its Tgid; one that already exited is gone from /proc, as is a
/// short-lived child process, which shows itself by events of its own.
fn is_new_process(parent: u32, child: u32, active: &HashSet<u32>) -> bool {
    if active.contains(&child) {
        return true;
    }
    if pid::is_thread_of(parent, child) {
        return false;
    }
    pid::status_field(child, "Tgid") == Some(u64::from(child))
}

/// Whether an event may have changed which files are mapped executable.
fn maps_may_change(ev: &Event) -> bool {
    match ev.call {
        Call::Mmap { prot, flags, .. } => {
            !ev.failed()
                && prot & libc::PROT_EXEC as u32 != 0
                && flags & libc::MAP_ANONYMOUS as u32 == 0
        }
        Call::Mprotect { prot, .. } => !ev.failed() && prot & libc::PROT_EXEC as u32 != 0,
        Call::Exec { .. } => true,
        _ => false,
    }
}
