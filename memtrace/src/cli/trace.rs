//! `memtrace --pid N` / `memtrace -- CMD ARGS…`: stream mapping events.

use std::{
    ffi::OsString,
    io::{self, Write as _},
    process::ExitCode,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use memtrace::{
    launch::{self, ChildEvent},
    session::{Session, process_exists},
    stream,
    trace::TracerOptions,
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

    /// No per-event output, only the summary.
    #[arg(short, long)]
    pub quiet: bool,

    /// Show every frame of each event's call stack.
    #[arg(short, long)]
    pub verbose: bool,

    /// Size of the kernel-to-memtrace ring buffer in bytes (a power of two
    /// number of pages). Raise it if events are reported lost.
    #[arg(long, value_name = "BYTES", default_value_t = memtrace_common::DEFAULT_RING_BYTES)]
    pub ring_buffer_size: u32,

    /// Also record the kernel's frame-pointer stack for every event (by
    /// default only when the user stack could not be copied for unwinding).
    #[arg(long)]
    pub kernel_stacks: bool,

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

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTS.fetch_add(1, Ordering::SeqCst);
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
    let mut session = Session::new(&opts)?;
    install_signal_handlers();

    let child = if args.command.is_empty() {
        None
    } else {
        Some(launch::launch(&args.command)?)
    };
    let target = match (&child, args.pid) {
        (Some(c), _) => c.pid,
        (None, Some(pid)) => pid,
        (None, None) => unreachable!("checked above"),
    };
    session
        .add_pid(target)
        .with_context(|| format!("tracing pid {target}"))?;
    if let Some(c) = &child {
        c.start();
    } else if !process_exists(target) {
        bail!("process {target} exited before tracing started");
    }
    if !args.quiet {
        eprintln!(
            "memtrace: tracing pid {target}{}; Ctrl-C to stop",
            if child.is_some() { " (launched)" } else { "" }
        );
    }

    let started = Instant::now();
    let mut out = io::BufWriter::new(io::stdout().lock());
    let mut exit_code = 0;
    let mut reported_lost = 0;
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
        out.flush()?;

        let interrupts = INTERRUPTS.load(Ordering::SeqCst);
        // In launch mode the child gets the same Ctrl-C and usually exits;
        // wait for that, unless Ctrl-C comes twice.
        if interrupts >= 2 || (interrupts == 1 && child.is_none()) {
            break;
        }
        if args.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        if let Some(c) = &child {
            match c.poll() {
                Some(ChildEvent::AtExit) => {
                    // Its address space is intact: take everything it did.
                    let events = session.drain();
                    emit(&mut session, &events, &args, &mut out)?;
                    c.resume_exit();
                }
                Some(ChildEvent::Exited(code)) => {
                    exit_code = code;
                    break;
                }
                None => {}
            }
        } else if !session.reap_dead() {
            break;
        }
    }
    let events = session.drain();
    emit(&mut session, &events, &args, &mut out)?;
    if args.json {
        writeln!(out, "{}", session.summary.json())?;
    } else {
        write!(out, "{}", session.summary.text())?;
    }
    out.flush()?;
    drop(session);
    Ok(ExitCode::from(exit_code.clamp(0, 255) as u8))
}

fn emit(
    session: &mut Session,
    events: &[memtrace::event::Event],
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
