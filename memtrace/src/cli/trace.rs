//! `memtrace --pid N` / `memtrace -- CMD ARGS…`: stream mapping events.

use std::{
    ffi::OsString,
    fs::File,
    io::{self, Write as _},
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context as _, bail};
use memtrace::units::parse_duration;
use memtrace::{
    attribution::report::{self as site_report, AttributedReport},
    proc::pid::{self, Target, process_exists},
    session::{
        Session,
        driver::{self, DriveOptions, ReportWhen, StopFlags},
        output::{Format, Output},
    },
    trace::{
        TracerOptions,
        launch::{self, LaunchError},
    },
};
use signal_hook::{
    consts::{SIGHUP, SIGINT, SIGTERM},
    iterator::Signals,
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Trace the running process PID (all its threads; a thread id stands
    /// for its process).
    #[arg(short, long, value_name = "PID", conflicts_with = "command")]
    pub pid: Option<u32>,

    /// Also trace processes forked by the traced ones, until the last of
    /// them exits; those still alive when tracing ends get a report too.
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
    /// number of pages, at least 64 KiB). Raise it if events are reported
    /// lost.
    #[arg(long, value_name = "BYTES", default_value_t = memtrace_common::DEFAULT_RING_BYTES,
          value_parser = clap::value_parser!(u32)
              .range(i64::from(memtrace_common::MIN_RING_BYTES)..=(1 << 30)))]
    pub ring_buffer_size: u32,

    /// Also record the kernel's frame-pointer stack for every event (by
    /// default only when the user stack could not be copied for unwinding).
    #[arg(long)]
    pub kernel_stacks: bool,

    /// Capture the call stacks of munmap calls too. By default munmap
    /// events carry none: a release is attributed to nothing, and its stack
    /// adds about two thirds to what tracing an munmap costs the traced
    /// process. Every call that maps or changes memory carries its stack.
    #[arg(long)]
    pub unmap_stacks: bool,

    /// Benchmarking: attach the programs but let them return right after
    /// the process filter, recording nothing (the floor of tracing's cost
    /// that `cargo xtask bench overhead` compares memtrace with).
    #[arg(long, hide = true)]
    pub probes_only: bool,

    /// Call sites listed in the text report (0: all); `--json` always
    /// lists every call site.
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

    /// Write the final report as a gzipped pprof profile (`go tool pprof
    /// FILE`): resident bytes by call stack, with virtual bytes and
    /// mapping counts as other sample types.
    #[arg(long, value_name = "FILE.pb.gz")]
    pub pprof: Option<std::path::PathBuf>,

    /// Include the traced address ranges in the JSON report.
    #[arg(long, requires = "json")]
    pub ranges: bool,

    /// No attributed report at the end (events and summary only).
    #[arg(long)]
    pub no_report: bool,

    /// Which attributed reports to print at the end: `exit` (the target's
    /// memory at its exit, or when tracing ends), `peak` (at the highest
    /// anonymous RSS seen while tracing), or `both` (the peak report only
    /// when memory was higher then than at the end). Default: both when
    /// launching CMD, exit with --pid (each new peak costs a smaps read of
    /// the running process).
    #[arg(long, value_enum, value_name = "WHEN", conflicts_with = "no_report")]
    pub report_at: Option<ReportAtArg>,

    /// Longest time the target is held at its exit for the final report
    /// and for its last events to be applied while its memory is still
    /// there (it waits in a ptrace stop meanwhile); events not applied by
    /// then are left out and the report says so. 0: never hold it (no
    /// report at exit).
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_hold)]
    pub exit_hold: Duration,

    /// Memory for event lines waiting to be written, in bytes: when the
    /// reader is slower (a pager, a slow file), lines beyond it are dropped
    /// and counted in the summary; the report still sees every event.
    #[arg(long, value_name = "BYTES", default_value = "64MiB", value_parser = parse_bytes)]
    pub output_buffer: usize,

    /// Memory for events taken from the kernel and not yet processed, in
    /// bytes: past it the kernel's ring buffer overflows and the lost
    /// events are counted (the report then says its attribution may be
    /// off).
    #[arg(long, value_name = "BYTES", default_value = "64MiB", value_parser = parse_bytes)]
    pub event_buffer: usize,

    #[command(flatten)]
    pub history: super::history::HistoryArgs,

    /// Once an --alert rule trips: stop tracing, write the report and exit
    /// with status 3, e.g. to fail a CI load test. A
    /// launched command is left running.
    #[arg(long, requires = "alerts")]
    pub exit_on_alert: bool,

    /// Command to launch and trace from its first instruction (after `--`).
    ///
    /// memtrace exits with its status. Signals sent to memtrace are passed
    /// on to it, as strace and timeout do: SIGTERM at once, SIGINT and
    /// SIGHUP after 1 s unless it got them already (a terminal sends them
    /// to both); memtrace reports when it exits. A second signal stops
    /// memtrace at once and leaves the command running.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// `--report-at` values.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum ReportAtArg {
    Exit,
    Peak,
    Both,
}

/// Parse a byte count: `65536`, `64KiB`, `64MiB`, `1GiB` (K/M/G also mean
/// binary units), between 4 KiB and 16 GiB.
fn parse_bytes(s: &str) -> Result<usize, String> {
    let bytes = memtrace::units::parse_size(s)?;
    if !(4096..=(16 << 30)).contains(&bytes) {
        return Err(format!("`{s}` is out of range (4KiB to 16GiB)"));
    }
    usize::try_from(bytes).map_err(|_| format!("`{s}` is too large here"))
}

/// A duration that may be 0 (`--exit-hold 0`).
fn parse_hold(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if !t.is_empty()
        && t.trim_end_matches(['s', 'm'])
            .chars()
            .all(|c| c == '0' || c == '.')
    {
        return Ok(Duration::ZERO);
    }
    parse_duration(s)
}

/// Note SIGINT, SIGTERM and SIGHUP from now on (a thread of signal-hook's
/// collects them), so a signal ends the session cleanly, or is passed on
/// to a launched command, instead of killing memtrace mid-setup with
/// programs loaded.
fn watch_signals() -> anyhow::Result<StopFlags> {
    let stop = StopFlags::default();
    let mut signals =
        Signals::new([SIGINT, SIGTERM, SIGHUP]).context("installing signal handlers")?;
    let flags = stop.clone();
    std::thread::Builder::new()
        .name("memtrace-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                flags.record(sig);
                if flags.give_up() {
                    // Tracing is over and the target let go; memtrace only
                    // waits for its reader, or for work (the report) that
                    // a signal must not wait for either.
                    eprintln!("memtrace: {INTERRUPTED}");
                    // SAFETY: ends the process at once, running nothing
                    // that could wait on a lock another thread holds.
                    unsafe { libc::_exit(i32::from(INTERRUPTED_EXIT_STATUS)) };
                }
            }
        })
        .context("starting the signal thread")?;
    Ok(stop)
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.pid.is_none() && args.command.is_empty() {
        bail!(
            "nothing to trace: give --pid PID or a command after `--` (see `memtrace --help`); \
             `memtrace snapshot --pid PID` needs no eBPF"
        );
    }
    // Flags that do not fit together fail before anything starts.
    let watch = args.history.watch_options()?;
    // Pinned from the first moment: the pid may name another process by
    // the time the tracer is loaded.
    let pinned = args.pid.map(pid::resolve_target).transpose()?;
    if let Some(Target {
        identity,
        thread: Some(tid),
    }) = &pinned
    {
        say!(
            "memtrace: {tid} is a thread of process {}; tracing the process",
            identity.pid
        );
    }
    let opts = TracerOptions {
        follow_forks: args.follow_forks,
        ring_bytes: Some(args.ring_buffer_size),
        kernel_stacks: args.kernel_stacks,
        unmap_stacks: args.unmap_stacks,
        probes_only: args.probes_only,
        queue_bytes: Some(args.event_buffer),
    };
    let mut files = ReportFiles::create(&args)?;
    let stop = watch_signals()?;
    let mut session = Session::new(&opts)?;
    if let Some(t) = &pinned {
        t.identity.check()?;
    }

    let child = if args.command.is_empty() {
        None
    } else {
        Some(launch::launch(&args.command)?)
    };
    let target = match (&child, &pinned) {
        (Some(c), _) => c.pid,
        (None, Some(t)) => t.identity.pid,
        (None, None) => bail!("nothing to trace"),
    };
    session
        .add_pid(target)
        .with_context(|| format!("tracing pid {target}"))?;
    if child.is_some() {
        // Stopped before its first instruction: what exec mapped is known.
        session.seed_exec_image(target);
    }
    // Hold the target at its exit, so the final report sees its memory.
    let tracee = match (child, &pinned) {
        (Some(c), _) => {
            c.start();
            Some(c)
        }
        (None, Some(t)) if args.no_report => {
            t.identity.check()?;
            None
        }
        (None, Some(t)) => match launch::seize(t.identity) {
            Ok(t) => Some(t),
            Err(LaunchError::Target(e)) => return Err(e.into()),
            Err(e) => {
                if !process_exists(target) {
                    bail!("process {target} exited before tracing started");
                }
                say!("memtrace: warning: {e}; a report at the target's exit will not be possible");
                None
            }
        },
        (None, None) => None,
    };
    let launched = !args.command.is_empty();
    // Always said (on stderr): scripts wait for it before driving the target.
    say!(
        "memtrace: tracing pid {target}{}; Ctrl-C to stop",
        if launched { " (launched)" } else { "" }
    );

    let drive_opts = DriveOptions {
        duration: args.duration,
        report_every: args.report_every,
        quiet: args.quiet,
        no_report: args.no_report,
        ranges: args.ranges,
        launched,
        exit_hold: Some(args.exit_hold),
        report_at: match args.report_at {
            Some(ReportAtArg::Exit) => ReportWhen::Exit,
            Some(ReportAtArg::Peak) => ReportWhen::Peak,
            Some(ReportAtArg::Both) => ReportWhen::Both,
            None if launched => ReportWhen::Both,
            None => ReportWhen::Exit,
        },
        watch: Some(watch),
        exit_on_alert: args.exit_on_alert,
    };
    let format = if args.json {
        Format::Json
    } else {
        Format::Text
    };
    let mut out = Output::new(
        io::BufWriter::with_capacity(1 << 16, io::stdout()),
        format,
        args.verbose,
        args.top,
        args.output_buffer,
    );
    let outcome = driver::drive(
        &mut session,
        target,
        tracee,
        &drive_opts,
        &mut out,
        &stop,
        &mut |m: &str| say!("memtrace: {m}"),
    )
    .context("writing the output")?;
    drop(session);
    let interrupted = match out.finish() {
        Ok(_) => outcome.interrupted,
        // `memtrace … | head`: not an error.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => false,
        Err(e) if e.kind() == io::ErrorKind::Interrupted => true,
        Err(e) => {
            say!("memtrace: writing the output: {e}");
            false
        }
    };
    if interrupted {
        // The reader never took the output; the target was let go long
        // before this.
        say!("memtrace: {INTERRUPTED}");
        return Ok(ExitCode::from(INTERRUPTED_EXIT_STATUS));
    }
    if let Some(report) = &outcome.report {
        // A file that cannot be written costs that file, not the report
        // already printed nor the child's exit status.
        if let Err(e) = files.write(report) {
            say!("memtrace: {e:#}");
        }
    }
    if args.exit_on_alert && outcome.alerted {
        return Ok(ExitCode::from(ALERT_EXIT_STATUS));
    }
    Ok(ExitCode::from(outcome.exit_code.clamp(0, 255) as u8))
}

/// Exit status with `--exit-on-alert` when an alert tripped.
pub const ALERT_EXIT_STATUS: u8 = 3;

/// Stopped by a signal with output unwritten (128 + SIGINT, as shells do).
pub const INTERRUPTED_EXIT_STATUS: u8 = 130;

/// What memtrace says then.
const INTERRUPTED: &str =
    "stopped by a signal while the output's reader was not reading: the output is incomplete";

/// `--folded`, `--flamegraph` and `--pprof` files, created before tracing starts so a
/// bad path is reported at once, not after the whole trace.
#[derive(Default)]
struct ReportFiles {
    folded: Option<(std::path::PathBuf, File)>,
    flamegraph: Option<(std::path::PathBuf, File)>,
    pprof: Option<(std::path::PathBuf, File)>,
}

impl ReportFiles {
    fn create(args: &Args) -> anyhow::Result<ReportFiles> {
        let open = |path: &Option<std::path::PathBuf>| -> anyhow::Result<_> {
            path.as_ref()
                .map(|p| {
                    File::create(p)
                        .map(|f| (p.clone(), f))
                        .with_context(|| format!("cannot create {}", p.display()))
                })
                .transpose()
        };
        Ok(ReportFiles {
            folded: open(&args.folded)?,
            flamegraph: open(&args.flamegraph)?,
            pprof: open(&args.pprof)?,
        })
    }

    fn write(&mut self, report: &AttributedReport) -> anyhow::Result<()> {
        if let Some((path, file)) = &mut self.folded {
            let mut text = site_report::folded(report).join("\n");
            text.push('\n');
            file.write_all(text.as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
        }
        if let Some((path, file)) = &mut self.flamegraph {
            site_report::flamegraph(report, io::BufWriter::new(file))
                .with_context(|| format!("writing {}", path.display()))?;
        }
        if let Some((path, file)) = &mut self.pprof {
            memtrace::export::pprof::encode(report)
                .and_then(|bytes| file.write_all(&bytes))
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }
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
        assert_eq!(parse_hold("0"), Ok(Duration::ZERO));
        assert_eq!(parse_hold("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_hold("2s"), Ok(Duration::from_secs(2)));
        assert!(parse_hold("").is_err());
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("65536"), Ok(65536));
        assert_eq!(parse_bytes("1G"), Ok(1 << 30));
        assert!(parse_bytes("1").is_err());
        assert!(parse_bytes("12XB").is_err());
        assert!(parse_bytes("99999999999GiB").is_err());
    }
}
