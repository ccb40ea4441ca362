//! `memtrace --pid N` / `memtrace -- CMD ARGS…`: stream mapping events.

use std::{
    ffi::OsString,
    io::{self, Write as _},
    process::ExitCode,
    sync::atomic::{AtomicBool, AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use memtrace::{
    attribution::report::{self as site_report, AttributedReport, ReportOptions},
    proc::pid::process_exists,
    session::{Session, stream},
    trace::{
        TracerOptions,
        launch::{self, ChildEvent},
    },
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Trace the running process PID (all its threads).
    #[arg(short, long, value_name = "PID", conflicts_with = "command")]
    pub pid: Option<u32>,

    /// Also trace processes forked by the traced ones.
    #[arg(long)]
    pub follow_forks: bool,

    /// Stop after this long (e.g. 30s, 500ms, 2m); default: until Ctrl-C
    /// or the target exits.
    #[arg(short, long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// One JSON object per line instead of text (schema: see the README).
    #[arg(long)]
    pub json: bool,

    /// No per-event output: only the report and the summary.
    #[arg(short, long)]
    pub quiet: bool,

    /// Show every frame of each event's call stack.
    #[arg(short, long)]
    pub verbose: bool,

    /// Size of the kernel-to-memtrace ring buffer in bytes (a power of two
    /// number of pages). Raise it if events are reported lost.
    #[arg(long, value_name = "BYTES", default_value_t = memtrace_common::DEFAULT_RING_BYTES,
          value_parser = clap::value_parser!(u32).range(4096..=(1 << 30)))]
    pub ring_buffer_size: u32,

    /// Also record the kernel's frame-pointer stack for every event (by
    /// default only when the user stack could not be copied for unwinding).
    #[arg(long)]
    pub kernel_stacks: bool,

    /// Call sites listed in the report (0: all).
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub top: usize,

    /// Also print the attributed report every DURATION while tracing.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub report_every: Option<Duration>,

    /// Write the final report as folded stacks weighted by RSS bytes.
    #[arg(long, value_name = "FILE")]
    pub folded: Option<std::path::PathBuf>,

    /// Write the final report as an SVG flame graph.
    #[arg(long, value_name = "FILE.svg")]
    pub flamegraph: Option<std::path::PathBuf>,

    /// Include the traced address ranges in the JSON report.
    #[arg(long, requires = "json")]
    pub ranges: bool,

    /// No attributed report at the end (events and summary only).
    #[arg(long)]
    pub no_report: bool,

    /// Command to launch and trace from its first instruction (after `--`).
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// Parse `500ms`, `30s`, `2m`, `1h` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (try 30s, 500ms, 2m)"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => {
            return Err(format!(
                "unknown unit `{unit}` in `{s}` (use ms, s, m or h)"
            ));
        }
    };
    if !secs.is_finite() || secs <= 0.0 || secs > 1e9 {
        return Err(format!("`{s}` is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Ctrl-C / SIGTERM count, set from the signal handler.
static INTERRUPTS: AtomicU32 = AtomicU32::new(0);

/// Set by SIGTERM.
static TERMINATED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(sig: libc::c_int) {
    if sig == libc::SIGTERM {
        TERMINATED.store(true, Ordering::SeqCst);
    } else {
        INTERRUPTS.fetch_add(1, Ordering::SeqCst);
    }
}

fn install_signal_handlers() {
    // SAFETY: the handler only touches an atomic. No SA_RESTART, so poll
    // returns early on a signal.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut());
        libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut());
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.pid.is_none() && args.command.is_empty() {
        bail!(
            "nothing to trace: give --pid PID or a command after `--` (see `memtrace --help`); \
             `memtrace snapshot --pid PID` needs no eBPF"
        );
    }
    if let Some(pid) = args.pid
        && !process_exists(pid)
    {
        bail!("no process with pid {pid}");
    }
    let opts = TracerOptions {
        follow_forks: args.follow_forks,
        ring_bytes: Some(args.ring_buffer_size),
        kernel_stacks: args.kernel_stacks,
    };
    // Before loading anything: a Ctrl-C from now on ends the session
    // cleanly instead of killing memtrace mid-setup.
    install_signal_handlers();
    let mut session = Session::new(&opts)?;

    let child = if args.command.is_empty() {
        None
    } else {
        Some(launch::launch(&args.command)?)
    };
    let target = match (&child, args.pid) {
        (Some(c), _) => c.pid,
        (None, Some(pid)) => pid,
        (None, None) => bail!("nothing to trace"),
    };
    session
        .add_pid(target)
        .with_context(|| format!("tracing pid {target}"))?;
    // Hold the target at its exit, so the final report sees its memory.
    let mut tracee = match child {
        Some(c) => {
            c.start();
            Some(c)
        }
        None if args.no_report => None,
        None => match launch::seize(target) {
            Ok(t) => Some(t),
            Err(e) => {
                if !process_exists(target) {
                    bail!("process {target} exited before tracing started");
                }
                eprintln!(
                    "memtrace: warning: {e:#}; a report at the target's exit will not be possible"
                );
                None
            }
        },
    };
    let launched = !args.command.is_empty();
    // Always said (on stderr): scripts wait for it before driving the target.
    eprintln!(
        "memtrace: tracing pid {target}{}; Ctrl-C to stop",
        if launched { " (launched)" } else { "" }
    );

    let started = Instant::now();
    let mut last_report = Instant::now();
    let mut out = io::BufWriter::new(io::stdout().lock());
    let mut exit_code = 0;
    let mut reported_lost = 0;
    let mut final_report = None;
    loop {
        let events = session.poll(Duration::from_millis(50));
        emit(&mut session, &events, &args, &mut out)?;
        if !args.json && !args.quiet && session.summary.lost_events > reported_lost {
            reported_lost = session.summary.lost_events;
            writeln!(
                out,
                "!! {reported_lost} events lost so far (raise --ring-buffer-size)"
            )?;
        }
        if let Some(every) = args.report_every
            && last_report.elapsed() >= every
        {
            last_report = Instant::now();
            if let Some(report) = take_report(&mut session, target, &args) {
                print_report(&report.limited(args.top), &args, &mut out)?;
            }
        }
        out.flush()?;

        let interrupts = INTERRUPTS.load(Ordering::SeqCst);
        // In launch mode the child gets the same Ctrl-C from the terminal
        // and usually exits; wait for that, unless Ctrl-C comes twice.
        // SIGTERM is meant for memtrace alone: stop at once.
        if interrupts >= 2 || (interrupts == 1 && !launched) || TERMINATED.load(Ordering::SeqCst) {
            break;
        }
        if args.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        match tracee.as_ref().and_then(|t| t.poll()) {
            Some(ChildEvent::AtExit) => {
                // Stopped at exit with its address space intact: take
                // everything it did, then the report, then let it go.
                let events = session.drain();
                emit(&mut session, &events, &args, &mut out)?;
                if !args.no_report {
                    final_report = take_report(&mut session, target, &args);
                }
                if let Some(t) = &tracee {
                    t.resume_exit();
                }
            }
            Some(ChildEvent::Exited(code)) => {
                if launched {
                    exit_code = code;
                }
                break;
            }
            Some(ChildEvent::Lost) => {
                eprintln!(
                    "memtrace: warning: lost ptrace control of pid {target}; watching /proc instead"
                );
                tracee = None;
            }
            None => {
                if tracee.is_none() && !session.reap_dead() {
                    break;
                }
            }
        }
    }
    let events = session.drain();
    emit(&mut session, &events, &args, &mut out)?;
    if final_report.is_none() && !args.no_report && process_exists(target) {
        final_report = take_report(&mut session, target, &args);
    }
    if let Some(report) = &final_report {
        write_files(report, &args)?;
        print_report(&report.limited(args.top), &args, &mut out)?;
    } else if !args.no_report {
        eprintln!("memtrace: no report: the target exited before memtrace could stop it at exit");
    }
    if args.json {
        writeln!(out, "{}", session.summary.json())?;
    } else {
        write!(out, "{}", session.summary.text())?;
    }
    out.flush()?;
    drop(session);
    Ok(ExitCode::from(exit_code.clamp(0, 255) as u8))
}

/// The full report (all call sites), or `None` with a warning.
fn take_report(session: &mut Session, pid: u32, args: &Args) -> Option<AttributedReport> {
    let opts = ReportOptions {
        top: 0,
        ranges: args.ranges,
    };
    match session.attributed_report(pid, opts) {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("memtrace: no report for pid {pid}: {e:#}");
            None
        }
    }
}

fn print_report(
    report: &AttributedReport,
    args: &Args,
    out: &mut impl io::Write,
) -> io::Result<()> {
    if args.json {
        writeln!(out, "{}", report.json())
    } else {
        write!(out, "{}", report.text(args.verbose))
    }
}

fn write_files(report: &AttributedReport, args: &Args) -> anyhow::Result<()> {
    if let Some(path) = &args.folded {
        let mut text = site_report::folded(report).join("\n");
        text.push('\n');
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.flamegraph {
        let file =
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        site_report::flamegraph(report, io::BufWriter::new(file))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn emit(
    session: &mut Session,
    events: &[memtrace::trace::event::Event],
    args: &Args,
    out: &mut impl io::Write,
) -> io::Result<()> {
    if args.quiet {
        return Ok(());
    }
    for ev in events {
        let stack = session.stack_of(ev);
        if args.json {
            writeln!(out, "{}", stream::event_json(ev, &stack))?;
        } else {
            writeln!(
                out,
                "{}",
                stream::event_line(ev, &stack, session.start_ns, args.verbose)
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("abc").is_err());
        assert!(parse_duration("5y").is_err());
        assert!(parse_duration("0s").is_err());
    }
}
