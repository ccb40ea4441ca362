//! `cargo xtask bench overhead`: what tracing costs the traced process.
//!
//! The workload maps 64 KiB, touches every page and unmaps it, many times,
//! and reports its own CPU time per iteration (user + system, so the time
//! the kernel spends in memtrace's eBPF programs is included). Untraced and
//! traced runs alternate, so machine noise hits both alike; the result is
//! the ratio of the medians. Target: 1.10 or less.

use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

use crate::{bench::median, build_release};

const ITERATIONS: &str = "100000";
const ROUNDS: usize = 15;
const TARGET_RATIO: f64 = 1.10;

pub fn run() -> anyhow::Result<()> {
    build_release()?;
    let bin = crate::release_dir();
    let workload = bin.join("overhead");
    let memtrace = bin.join("memtrace");
    let mut untraced = Vec::new();
    let mut traced = Vec::new();
    println!("round  untraced ns/op  traced ns/op");
    for round in 0..ROUNDS {
        let u = per_op(Command::new(&workload).arg(ITERATIONS))?;
        let t = per_op(
            Command::new(&memtrace)
                .args(["--quiet", "--"])
                .arg(&workload)
                .arg(ITERATIONS),
        )?;
        println!("{round:>5}  {u:>14.1}  {t:>12.1}");
        untraced.push(u);
        traced.push(t);
    }
    let (u, t) = (median(&mut untraced), median(&mut traced));
    let ratio = t / u;
    println!(
        "\nmmap+touch+munmap of 64 KiB, median CPU time per iteration:\n  untraced {u:.1} ns\n  traced   {t:.1} ns\n  ratio    {ratio:.3}x (target <= {TARGET_RATIO:.2}x)"
    );
    if ratio > TARGET_RATIO {
        println!("  ABOVE TARGET");
    }
    Ok(())
}

/// Run the workload and read the `ns_per_op` it prints.
fn per_op(cmd: &mut Command) -> anyhow::Result<f64> {
    let out = cmd
        .stderr(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({}); tracing needs root", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("ns_per_op "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no ns_per_op in the output of {cmd:?}: {text}"))
}
