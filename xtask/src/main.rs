//! `cargo xtask`: set up, build, run, test and benchmark memtrace.
//!
//! Every command first installs what is missing (the nightly `rust-src`
//! component and bpf-linker, which the eBPF build needs; tracefs), quietly
//! when everything is already there; `setup` and `test` also install the
//! runtimes the real-program tests launch (python3, golang-go, nodejs,
//! redis-server, a JDK) from the distribution when they are missing.

mod bench;
mod bench_attribution;
mod bench_overhead;
mod bench_snapshot;
mod setup;

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Set up, build, run, test and benchmark memtrace"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install prerequisites (nightly rust-src, bpf-linker 0.10.4, tracefs)
    /// and the runtimes the real-program tests launch (python3, Go, node,
    /// redis, a JDK).
    Setup,
    /// Build memtrace (release).
    Build,
    /// Run memtrace. Without arguments: trace the built-in demo workload and
    /// print its report. With `-- ARGS`: run `memtrace ARGS`.
    Run {
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Run every test: unit, fixture and eBPF integration tests (needs root),
    /// after checking that the library builds without the `ebpf` feature.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Benchmarks; each prints its ratio against a baseline measured in the
    /// same run.
    Bench {
        #[command(subcommand)]
        which: Bench,
    },
}

#[derive(Subcommand)]
enum Bench {
    /// `memtrace snapshot` vs `cat /proc/PID/smaps` on 60,000 VMAs.
    Snapshot,
    /// CPU per mmap+touch+munmap (1 and 16 pages): untraced, empty-program
    /// floor and bpftrace ustack (peers), memtrace.
    Overhead,
    /// Attributed report vs `cat /proc/PID/smaps` with 100,000 traced
    /// mappings in 60,000 VMAs; memtrace's peak RSS.
    Attribution,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = setup::ensure().and_then(|()| match cli.command {
        Cmd::Setup => setup::ensure_runtimes()
            .and_then(|()| {
                setup::ensure_programs(setup::MONITORING, "the Prometheus and deploy tests")
            })
            .map(|()| ExitCode::SUCCESS),
        Cmd::Build => build_release().map(|()| ExitCode::SUCCESS),
        Cmd::Run { args } => run(args),
        Cmd::Test { args } => test(args).map(|()| ExitCode::SUCCESS),
        Cmd::Bench { which } => match which {
            Bench::Snapshot => bench_snapshot::run(),
            Bench::Overhead => bench_overhead::run(),
            Bench::Attribution => bench_attribution::run(),
        }
        .map(|()| ExitCode::SUCCESS),
    });
    result.unwrap_or_else(|e| {
        eprintln!("xtask: {e:#}");
        ExitCode::FAILURE
    })
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Where `cargo build --release` puts binaries (honours CARGO_TARGET_DIR).
pub fn release_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("release")
}

/// Run a command in the workspace root, failing unless it succeeds.
pub fn run_checked(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Build the memtrace binary and the fixture programs (release).
pub fn build_release() -> anyhow::Result<()> {
    run_checked(cargo().args([
        "build",
        "--release",
        "--quiet",
        "-p",
        "memtrace",
        "-p",
        "memtrace-tests",
        "--bins",
    ]))
}

fn run(args: Vec<OsString>) -> anyhow::Result<ExitCode> {
    build_release()?;
    let target = crate::release_dir();
    let mut cmd = Command::new(target.join("memtrace"));
    if args.is_empty() {
        eprintln!("xtask: tracing the built-in demo workload (memtrace -- demo)");
        cmd.arg("--").arg(target.join("demo"));
    } else {
        cmd.args(&args);
    }
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    Ok(ExitCode::from(
        status.code().unwrap_or(1).clamp(0, 255) as u8
    ))
}

fn test(args: Vec<OsString>) -> anyhow::Result<()> {
    // The eBPF tests load programs into the kernel: say so up front rather
    // than let every one of them fail.
    // SAFETY: no arguments.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the test suite loads eBPF programs and traces processes: run it as root");
    }
    setup::ensure_runtimes()?;
    setup::ensure_programs(setup::MONITORING, "the Prometheus and deploy tests")?;
    // Without the `ebpf` feature the library (proc, snapshot, serve) must
    // still build, with neither nightly nor bpf-linker.
    run_checked(cargo().args([
        "check",
        "--quiet",
        "-p",
        "memtrace",
        "--no-default-features",
        "--lib",
    ]))?;
    run_checked(
        cargo()
            .args(["test", "--workspace", "--no-fail-fast"])
            .args(&args),
    )
}
