//! Command-line definitions and dispatch.

pub mod history;
/// `eprintln!` that shrugs off a closed stderr: memtrace's messages must
/// not end a trace (or the target's exit hold) because the log pipe went
/// away; `eprintln!` panics then.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}
pub(crate) use say;

pub mod serve;
pub mod snapshot;
pub mod trace;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Where did this Linux process's memory go?
///
/// Without a subcommand memtrace traces a process's address-space changes
/// with eBPF (mmap, munmap, mremap, brk, mprotect, madvise, prctl) and
/// attributes its resident memory to the call sites that mapped it.
///
/// Examples:
///   sudo memtrace --pid 4242            stream mapping events, then a report
///   sudo memtrace -- ./server --flag    launch and trace from the first mapping
///   memtrace snapshot --pid 4242        smaps breakdown, no eBPF needed
///   memtrace serve --pid 4242           the same over HTTP: /debug/memory?top=50
#[derive(Debug, Parser)]
#[command(
    name = "memtrace",
    version,
    verbatim_doc_comment,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub trace: trace::Args,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Categorized breakdown of a process's memory from /proc/PID/smaps (no eBPF).
    Snapshot(snapshot::Args),
    /// Serve the snapshot report over HTTP (/debug/memory, /debug/memory.json).
    Serve(serve::Args),
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Some(Command::Snapshot(args)) => snapshot::run(args),
        Some(Command::Serve(args)) => serve::run(args),
        None => trace::run(cli.trace),
    }
}
