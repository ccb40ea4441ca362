//! The tracing loop behind `memtrace --pid N` and `memtrace -- CMD`: poll
//! events, write them to an [`Output`], hold the target at its exit for the
//! final report, and end on a signal, a duration, or the target's exit.
//!
//! It runs over any [`EventSource`], so it is tested without root or eBPF.

use std::{
    io::{self, Write},
    time::{Duration, Instant},
};

pub use super::output::Notes;
pub use super::peak::ReportWhen;
pub use super::relay::StopFlags;
use super::{
    Session, monotonic_ns,
    output::{Output, PeakLine},
    peak::PeakWatch,
    relay::Relay,
};
use crate::{
    attribution::report::{AttributedReport, ReportAt, ReportOptions},
    history::{Watch, WatchOptions},
    proc::pid::process_exists,
    schema::SCHEMA_VERSION,
    trace::{
        launch::{ChildEvent, Launched},
        source::EventSource,
    },
};

/// How long one poll waits for events: also how late the target's exit
/// stop may be noticed, which the target spends waiting.
const POLL: Duration = Duration::from_millis(20);

/// Time per poll spent symbolizing new stacks ahead of the report.
const WARM_BUDGET: Duration = Duration::from_millis(5);

/// Longest time spent applying the events still queued when tracing ends
/// ([`Session::finish_round`]); the rest are counted as lost.
const END_DRAIN: Duration = Duration::from_secs(2);

/// What ends or shapes a trace.
#[derive(Clone, Debug, Default)]
pub struct DriveOptions {
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Also write the report this often.
    pub report_every: Option<Duration>,
    /// No per-event lines.
    pub quiet: bool,
    /// No report at the end.
    pub no_report: bool,
    /// Reports include the traced ranges.
    pub ranges: bool,
    /// The target was launched by memtrace: its exit status is passed on,
    /// and a first SIGINT, SIGTERM or SIGHUP is passed on to it
    /// ([`super::relay`]) rather than ending the trace.
    pub launched: bool,
    /// Longest time the target is held at its exit stop for the final
    /// report; `None` (or zero) lets it go at once, without a report.
    pub exit_hold: Option<Duration>,
    /// Which reports the end prints: the final one, the one at the peak
    /// of anonymous RSS ([`super::peak`]), or both.
    pub report_at: ReportWhen,
    /// Sample the report into a history every so often, list what grew
    /// and evaluate `--alert` rules ([`crate::history`]).
    pub watch: Option<WatchOptions>,
    /// Stop tracing (with the final report) once an alert trips.
    pub exit_on_alert: bool,
}

/// Default of [`DriveOptions::exit_hold`].
pub const DEFAULT_EXIT_HOLD: Duration = Duration::from_secs(2);

/// How a trace ended.
#[derive(Debug)]
pub struct Outcome {
    /// The launched target's exit status (0 in `--pid` mode).
    pub exit_code: i32,
    /// The final report, if one was taken.
    pub report: Option<AttributedReport>,
    /// The output was closed (`memtrace … | head`): tracing ended there,
    /// without a report or summary.
    pub output_closed: bool,
    /// Some `--alert` rule tripped.
    pub alerted: bool,
    /// A signal stopped memtrace while it waited for a stalled reader:
    /// the output is incomplete.
    pub interrupted: bool,
}

/// Trace `target` until it exits, a stop is requested, or the duration
/// ends; `tracee` (launched or seized with ptrace) holds it at its exit for
/// the final report. Errors are I/O errors of `out` other than a closed
/// pipe, which ends the trace quietly ([`Outcome::output_closed`]).
pub fn drive<S: EventSource, W: Write + Send + 'static>(
    session: &mut Session<S>,
    target: u32,
    mut tracee: Option<Launched>,
    opts: &DriveOptions,
    out: &mut Output<W>,
    stop: &StopFlags,
    notes: &mut dyn Notes,
) -> io::Result<Outcome> {
    let flags = stop.clone();
    out.give_up_when(move || flags.give_up());
    if let Some(t) = &tracee {
        t.hold_exit_for(opts.exit_hold.unwrap_or_default());
        // The signal that ends tracing lets the target go at once: the
        // first in `--pid` mode, the second in launch mode.
        stop.release_on(t.releaser(), if opts.launched { 2 } else { 1 });
    }
    // One signal ends tracing (in launch mode it goes on to the command
    // first); one more stops memtrace, report written or not.
    stop.give_up_after(1);
    // `--duration` ends tracing on time even when the loop is busy: the
    // target is let go then, and from then one signal stops memtrace.
    // The timer ends with this call (`_ended` is dropped).
    let (_ended, ended) = std::sync::mpsc::channel::<()>();
    if let (Some(t), Some(d)) = (&tracee, opts.duration) {
        let (releaser, stop) = (t.releaser(), stop.clone());
        let _ = std::thread::Builder::new()
            .name("memtrace-duration".into())
            .spawn(move || {
                if ended.recv_timeout(d) == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
                    releaser.release();
                    stop.wait_for_reader_until_signalled();
                }
            });
    }
    let mut run = Run {
        session,
        target,
        opts,
        stop,
        notes,
        exit_code: 0,
        report: None,
        printed: false,
        peak: (opts.report_at.wants_peak() && !opts.no_report).then(|| PeakWatch::new(target)),
        watch: opts.watch.as_ref().map(Watch::new),
        alerted: false,
    };
    let (output_closed, interrupted) = match run.trace(&mut tracee, out) {
        Ok(()) => (false, false),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => (true, false),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => (false, true),
        Err(e) => return Err(e),
    };
    Ok(Outcome {
        exit_code: run.exit_code,
        report: run.report,
        output_closed,
        alerted: run.alerted,
        interrupted,
    })
}

struct Run<'a, S: EventSource> {
    session: &'a mut Session<S>,
    target: u32,
    opts: &'a DriveOptions,
    stop: &'a StopFlags,
    notes: &'a mut dyn Notes,
    exit_code: i32,
    report: Option<AttributedReport>,
    /// The final reports were printed (at the exit stop, or at the end).
    printed: bool,
    peak: Option<PeakWatch>,
    watch: Option<Watch>,
    alerted: bool,
}

impl<S: EventSource> Run<'_, S> {
    fn trace<W: Write + Send + 'static>(
        &mut self,
        tracee: &mut Option<Launched>,
        out: &mut Output<W>,
    ) -> io::Result<()> {
        let stop = self.stop;
        let started = Instant::now();
        let mut last_report = Instant::now();
        let mut reported_lost = 0;
        let mut relay = Relay::default();
        // The first sample at once: growth is measured from the start.
        let mut last_sample: Option<Instant> = None;
        loop {
            let events = self.session.poll(POLL);
            self.emit(&events, out)?;
            if !self.opts.quiet && self.session.summary.lost_events > reported_lost {
                reported_lost = self.session.summary.lost_events;
                out.lost_so_far(reported_lost)?;
            }
            self.watch_peak(out)?;
            if let Some(every) = self.opts.report_every
                && last_report.elapsed() >= every
            {
                last_report = Instant::now();
                if let Some(mut report) = self.take_report() {
                    report.at = ReportAt::Periodic;
                    // Dropped rather than waited for when the reader lags.
                    out.report(&report, false)?;
                }
            }
            // Not once the exit report is taken: the process is being torn
            // down, its memory half gone.
            if let Some(every) = self.watch.as_ref().map(Watch::every)
                && self.report.is_none()
                && last_sample.is_none_or(|t| t.elapsed() >= every)
            {
                last_sample = Some(Instant::now());
                if let Some(report) = self.sample_report(out)? {
                    self.sample(&report, out)?;
                }
                if self.alerted && self.opts.exit_on_alert {
                    self.notes
                        .note("an alert tripped (--exit-on-alert): stopping with a report");
                    break;
                }
            }
            // After the samples: the first is taken at once (growth is
            // measured from the start), not after the first symbolization.
            self.session.warm_symbols(WARM_BUDGET);
            if let Some(kind) = out.error() {
                return Err(kind.into());
            }

            // A launched target gets the signal and ends; then the report.
            let child = tracee.as_ref().filter(|_| self.opts.launched);
            if relay.stop_now(stop, child, self.notes) {
                break;
            }
            if self.opts.duration.is_some_and(|d| started.elapsed() >= d) {
                break;
            }
            match tracee.as_ref().and_then(Launched::poll) {
                Some(ChildEvent::AtExit { since }) => {
                    if let Some(t) = tracee.as_ref() {
                        self.at_exit(t, since, out)?;
                    }
                }
                Some(ChildEvent::Exited(code)) => {
                    if self.opts.launched {
                        self.exit_code = code;
                    }
                    if !self.others_live(out)? {
                        break;
                    }
                    *tracee = None;
                }
                Some(ChildEvent::Lost) => {
                    self.notes.note(&format!(
                        "warning: lost ptrace control of pid {}; watching /proc instead",
                        self.target
                    ));
                    *tracee = None;
                }
                None => {
                    if tracee.is_none() && !self.session.reap_dead() {
                        break;
                    }
                }
            }
        }
        // Tracing is over: the target is let go before anything waits for
        // the reader (the reports below), so a stalled reader never holds
        // it, and from now on a signal stops the waiting.
        if let Some(t) = tracee.take() {
            t.release();
        }
        stop.wait_for_reader_until_signalled();
        // What the kernel delivered is applied (and shown) a batch at a
        // time, within END_DRAIN; the rest is counted lost. Nothing is
        // applied when a signal already said to stop at once.
        let forced = stop.give_up();
        let deadline = Instant::now() + if forced { Duration::ZERO } else { END_DRAIN };
        self.session.stop_recording();
        loop {
            let (events, more) = self.session.finish_round(deadline);
            self.emit(&events, out)?;
            if !more {
                break;
            }
        }
        if self.report.is_none() && !self.opts.no_report && process_exists(self.target) {
            self.report = self.take_report();
            if let Some(r) = &mut self.report {
                r.at = ReportAt::End;
            }
        }
        self.print_final(out)?;
        if !self.opts.no_report {
            self.report_live_children(out)?;
        }
        self.session.summary.display_dropped = out.dropped();
        out.summary(&self.session.summary)
    }

    fn hold(&self) -> Option<Duration> {
        self.opts.exit_hold.filter(|d| !d.is_zero())
    }

    /// The target stopped at its exit with its address space intact: apply
    /// what it did and capture its memory, then let it go — within the
    /// exit hold whatever the backlog, and without ever waiting on the
    /// output (lines that do not fit are dropped). The report is built
    /// (symbolized) after the target is gone.
    fn at_exit<W: Write + Send + 'static>(
        &mut self,
        tracee: &Launched,
        since: Instant,
        out: &mut Output<W>,
    ) -> io::Result<()> {
        let Some(hold) = self.hold() else {
            tracee.resume_exit();
            return Ok(());
        };
        // Counted from the stop: the ptrace thread lets the target go at
        // this deadline unless it is claimed first (`Launched::claim_exit`).
        let deadline = since + hold;
        if Instant::now() >= deadline || !tracee.claim_exit() {
            tracee.resume_exit();
            self.notes.note(&format!(
                "warning: pid {} was let go after the exit hold ({hold:?}) before memtrace \
                 could read it: no report at exit (raise --exit-hold)",
                self.target
            ));
            return Ok(());
        }
        // Applied while the target is held even without a report: applying
        // reads from its memory what the kernel side could not (region
        // names in untouched pages), which is gone once it is released.
        let (events, complete) = self.session.drain_until(Some(deadline));
        if self.opts.no_report {
            tracee.resume_exit();
            return self.emit(&events, out);
        }
        let captured = self.session.capture_report(self.target);
        tracee.resume_exit();
        if !complete {
            self.notes.note(&format!(
                "warning: released pid {} after the exit hold ({hold:?}) with {} events not \
                 yet applied: the report may be incomplete (raise --exit-hold)",
                self.target,
                self.session.backlog()
            ));
        }
        let result = self.emit(&events, out);
        match captured {
            Ok(input) => {
                let opts = self.report_options();
                let mut report = self.session.build_report_from(&input, opts);
                report.complete = complete;
                report.at = ReportAt::Exit;
                self.report = Some(report);
            }
            Err(e) => self
                .notes
                .note(&format!("no report for pid {}: {e}", self.target)),
        }
        result?;
        // The target is let go: from here a signal stops a wait for the
        // reader.
        self.stop.wait_for_reader_until_signalled();
        // Printed now, not after the target's teardown (~100 ms for a few
        // hundred MB): it describes the exit stop, before the exit event.
        self.print_final(out)
    }

    /// Sample the target's anonymous RSS; at a new peak, bring the ledger
    /// up to now and capture the report input ([`super::peak`]).
    fn watch_peak<W: Write + Send + 'static>(&mut self, out: &mut Output<W>) -> io::Result<()> {
        if !self.peak.as_mut().is_some_and(|w| w.sample(POLL)) {
            return Ok(());
        }
        let events = self.session.drain();
        self.emit(&events, out)?;
        let t = Instant::now();
        let captured = self.session.capture_report(self.target);
        let took = t.elapsed();
        let lost = self.session.summary.lost_events;
        let Some(watch) = self.peak.as_mut() else {
            return Ok(());
        };
        match captured {
            Ok(input) => {
                let line = PeakLine {
                    schema_version: SCHEMA_VERSION,
                    pid: self.target,
                    time_ns: monotonic_ns(),
                    anon_rss_bytes: input.attribution.totals.anon_rss_bytes,
                };
                if watch.keep(input, lost, took) && !self.opts.quiet {
                    out.peak(line, self.session.start_ns)?;
                }
            }
            // The target is exiting; its exit stop or end comes next.
            Err(_) => watch.failed(took),
        }
        Ok(())
    }

    /// Print the final report, and before it the peak report when memory
    /// was higher then (`--report-at`); once.
    fn print_final<W: Write + Send + 'static>(&mut self, out: &mut Output<W>) -> io::Result<()> {
        if std::mem::replace(&mut self.printed, true) || self.opts.no_report {
            return Ok(());
        }
        if let Some(report) = self.report.take() {
            // The end is a sample too: the "Growing" list as of the end.
            self.sample(&report, out)?;
            self.report = Some(report);
        }
        self.print_reports(out)?;
        if self.report.is_some()
            && let Some(w) = &self.watch
        {
            out.growing(self.target, w)?;
        }
        Ok(())
    }

    /// The report at the peak and the final one, as `--report-at` asks.
    fn print_reports<W: Write + Send + 'static>(&mut self, out: &mut Output<W>) -> io::Result<()> {
        let last = self.report.as_ref().map(|r| r.totals.anon_rss_bytes);
        // Watching ends here: the target is leaving or tracing ends.
        let peak = self
            .peak
            .take()
            .and_then(|mut w| w.take())
            .filter(|p| last.is_none_or(|l| p.anon_rss_bytes() > l));
        let peak_only = self.opts.report_at == ReportWhen::Peak;
        if let Some(p) = peak {
            let opts = self.report_options();
            let mut report = self.session.build_report_from(&p.input, opts);
            report.at = ReportAt::Peak;
            report.lost_events = p.lost_events;
            out.report(&report, true)?;
            if peak_only {
                // The report files get the report printed.
                self.report = Some(report);
                return Ok(());
            }
        }
        match &mut self.report {
            Some(report) => {
                if peak_only {
                    // Memory was highest at the end: that is the peak.
                    report.at = ReportAt::Peak;
                }
                out.report(report, true)?;
            }
            None => self.notes.note(if self.hold().is_none() {
                "no report: holding the target at exit is disabled (--exit-hold 0)"
            } else {
                "no report: the target exited before memtrace could stop it at exit"
            }),
        }
        Ok(())
    }

    /// Add `report` to the history; write an alert line for each rule that
    /// tripped.
    fn sample<W: Write + Send + 'static>(
        &mut self,
        report: &AttributedReport,
        out: &mut Output<W>,
    ) -> io::Result<()> {
        let Some(watch) = &mut self.watch else {
            return Ok(());
        };
        let events = self.session.summary.events.values().sum();
        for alert in watch.record(report, events) {
            self.alerted = true;
            out.alert(report.pid, &alert)?;
        }
        Ok(())
    }

    /// The report for a history sample ([`Session::sample_report`]), or
    /// `None` with a note; the events drained meanwhile are shown.
    fn sample_report<W: Write + Send + 'static>(
        &mut self,
        out: &mut Output<W>,
    ) -> io::Result<Option<AttributedReport>> {
        let mut events = Vec::new();
        let report = self
            .session
            .sample_report(self.target, self.report_options(), &mut events);
        self.emit(&events, out)?;
        Ok(self.noted(self.target, report))
    }

    /// The full report (all call sites), or `None` with a note.
    fn take_report(&mut self) -> Option<AttributedReport> {
        self.report_of(self.target)
    }

    /// The full report of a traced process, or `None` with a note.
    fn report_of(&mut self, pid: u32) -> Option<AttributedReport> {
        let report = self.session.attributed_report(pid, self.report_options());
        self.noted(pid, report)
    }

    /// What the reports hold (`--ranges`).
    fn report_options(&self) -> ReportOptions {
        ReportOptions {
            ranges: self.opts.ranges,
        }
    }

    /// The report, or `None` with a note saying why there is none.
    fn noted(
        &mut self,
        pid: u32,
        report: Result<AttributedReport, crate::proc::ProcError>,
    ) -> Option<AttributedReport> {
        report
            .inspect_err(|e| self.notes.note(&format!("no report for pid {pid}: {e}")))
            .ok()
    }

    /// After the target exited: whether processes it forked (traced with
    /// `--follow-forks`) live on, to be traced until they end too.
    fn others_live<W: Write + Send + 'static>(&mut self, out: &mut Output<W>) -> io::Result<bool> {
        // Forks the target made before exiting are in the buffer by now.
        let events = self.session.drain();
        self.emit(&events, out)?;
        if !self.session.reap_dead() {
            return Ok(false);
        }
        let mut pids: Vec<u32> = self.session.live_pids().iter().copied().collect();
        pids.sort_unstable();
        let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
        self.notes.note(&format!(
            "pid {} exited; still tracing the processes it forked: {}",
            self.target,
            pids.join(", ")
        ));
        Ok(true)
    }

    /// When tracing ends: a report for each forked process still alive.
    fn report_live_children<W: Write + Send + 'static>(
        &mut self,
        out: &mut Output<W>,
    ) -> io::Result<()> {
        let mut pids: Vec<u32> = self.session.live_pids().iter().copied().collect();
        pids.sort_unstable();
        for pid in pids {
            if pid != self.target
                && process_exists(pid)
                && let Some(report) = self.report_of(pid)
            {
                out.report(&report, true)?;
            }
        }
        Ok(())
    }

    fn emit<W: Write + Send + 'static>(
        &mut self,
        events: &[crate::trace::event::Event],
        out: &mut Output<W>,
    ) -> io::Result<()> {
        if self.opts.quiet {
            return Ok(());
        }
        for ev in events {
            // Lines that would be dropped are not symbolized either.
            if out.has_room() {
                let stack = self.session.stack_of(ev);
                out.event(ev, &stack, self.session.start_ns)?;
            }
        }
        Ok(())
    }
}
