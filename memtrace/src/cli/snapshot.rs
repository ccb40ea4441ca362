//! `memtrace snapshot`: the smaps breakdown of one process.

use std::io::Write as _;
use std::process::ExitCode;

use memtrace::snapshot;
use memtrace::snapshot::report::{self, Options};

/// Categorized breakdown of a process's memory from /proc/PID/smaps.
///
/// Every mapping is counted in exactly one category; the categories add up
/// to the totals, which match /proc/PID/smaps_rollup. No eBPF or root
/// needed: reading another user's process needs root or CAP_SYS_PTRACE.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Process to inspect.
    #[arg(long, short)]
    pub pid: u32,
    /// Number of regions in the top regions table (largest RSS first).
    #[arg(long, default_value_t = report::DEFAULT_TOP)]
    pub top: usize,
    /// List every region instead of the top N.
    #[arg(long)]
    pub all: bool,
    /// Print the report as JSON (sizes in bytes; schema in docs/json-schema.md).
    #[arg(long)]
    pub json: bool,
    /// Print exact byte counts instead of KiB/MiB/GiB.
    #[arg(long)]
    pub bytes: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let snapshot = snapshot::capture(args.pid)?;
    let opts = Options {
        top: args.top,
        all: args.all,
        exact_bytes: args.bytes,
    };
    let out = if args.json {
        report::render_json(&snapshot, &opts)
    } else {
        report::render_text(&snapshot, &opts)
    };
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(ExitCode::SUCCESS),
        // `memtrace snapshot | head` is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(anyhow::anyhow!("writing the report: {e}")),
    }
}
