//! `cargo xtask bench history [--secs N]`: the cost of keeping a history.
//!
//! `memtrace serve --trace --sample-every 100ms` watches `history_target`
//! (1,000 call sites, 100,000 traced one-page mappings in 50,000 VMAs that
//! each hold two call sites, so every sample reads pagemap too) for 60 s
//! (or `--secs`). Interleaved with it, once a second, one
//! `cat /proc/PID/smaps > /dev/null` of the same target is timed (its
//! user + system CPU, from `wait4`).
//!
//! Targets:
//! - memtrace's CPU per sample (its user + system time over the run,
//!   from `/proc/PID/stat`, over the samples the history holds for the
//!   run) at most 1.5× the median CPU of one raw smaps read;
//! - memtrace's RSS growth over the run at most 10 MiB.

use std::{
    io::Write as _,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    bench::{
        KillOnDrop, cat_smaps, expect_line, http_get, median, ms, run_measured, start_target,
        status_kib, verdict, wait_for_server,
    },
    build_release,
};

const TARGET_RATIO: f64 = 1.5;
const TARGET_GROWTH_MIB: f64 = 10.0;
const LISTEN: &str = "127.0.0.1:16062";

pub fn run(secs: u64) -> anyhow::Result<()> {
    if secs == 0 {
        bail!("--secs must be at least 1");
    }
    build_release()?;
    let bin = crate::release_dir();
    let (mut target, mut lines) = start_target(&bin, "history_target")?;
    let pid = target.0.id();
    let memtrace = KillOnDrop(
        Command::new(bin.join("memtrace"))
            .args(["serve", "--trace", "--pid", &pid.to_string()])
            .args(["--listen", LISTEN, "--sample-every", "100ms"])
            // Room for every sample of the run: they are counted at the end.
            .args(["--history", &format!("{}s", secs + 30)])
            .stderr(Stdio::null())
            .spawn()
            .context("starting memtrace serve --trace")?,
    );
    let mt = memtrace.0.id();
    wait_for_server(LISTEN)?;
    let mut stdin = target.0.stdin.take().context("target stdin")?;
    writeln!(stdin, "go")?;
    println!("history: mapping 100,000 pages from 1,000 call sites in pid {pid}…");
    expect_line(&mut lines, "ready")?;
    // Let the tracer apply the last events and the history take a few
    // samples of the full target: the run measures steady sampling.
    thread::sleep(Duration::from_secs(2));
    let vmas = std::fs::read_to_string(format!("/proc/{pid}/maps"))?
        .lines()
        .count();

    let start_ms = unix_ms();
    let cpu0 = cpu_ticks(mt)?;
    let rss0 = rss_kib(mt)?;
    let started = Instant::now();
    let mut cat = Vec::new();
    println!("target: {vmas} VMAs; sampling every 100 ms for {secs} s");
    println!("\n  second   cat smaps CPU ms   memtrace RSS MiB");
    while started.elapsed() < Duration::from_secs(secs) {
        let second = started.elapsed().as_secs();
        let u = run_measured(&mut cat_smaps(pid))?;
        let c = u.user + u.system;
        cat.push(c);
        println!(
            "  {second:>6}   {:>15.1}   {:>16.1}",
            ms(c),
            rss_kib(mt)? as f64 / 1024.0
        );
        let next = Duration::from_secs(second + 1);
        thread::sleep(next.saturating_sub(started.elapsed()));
    }
    let cpu1 = cpu_ticks(mt)?;
    let rss1 = rss_kib(mt)?;
    let end_ms = unix_ms();

    let doc = http_get(LISTEN, "/debug/memory/history.json")?;
    let history: serde_json::Value =
        serde_json::from_str(&doc).context("history.json is not JSON")?;
    let samples: Vec<&serde_json::Value> = history["samples"]
        .as_array()
        .context("history.json without samples")?
        .iter()
        .filter(|s| {
            s["unix_ms"]
                .as_u64()
                .is_some_and(|t| (start_ms..=end_ms).contains(&t))
        })
        .collect();
    let sites = history["sites"].as_array().map_or(0, Vec::len);
    let last = samples.last().context("no sample during the run")?;
    println!(
        "\nhistory: {} samples in the run, {sites} series (500 sites + other), coverage {}, \
         lost events {}, history.json {} KiB",
        samples.len(),
        last["coverage"],
        last["lost_events"],
        doc.len() / 1024
    );
    if samples.len() < 2 {
        bail!("too few samples to measure");
    }
    // SAFETY: no arguments.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let per_sample = Duration::from_secs_f64((cpu1 - cpu0) as f64 / hz / samples.len() as f64);
    let raw = median(&mut cat);
    let ratio = per_sample.as_secs_f64() / raw.as_secs_f64();
    let growth = (rss1 as f64 - rss0 as f64) / 1024.0;
    println!(
        "memtrace CPU per sample {:.1} ms; one raw smaps read (median CPU) {:.1} ms: {ratio:.2}x \
         (target <= {TARGET_RATIO}x: {})",
        ms(per_sample),
        ms(raw),
        verdict(ratio <= TARGET_RATIO)
    );
    println!(
        "memtrace RSS {:.1} MiB -> {:.1} MiB: {growth:+.1} MiB (target <= {TARGET_GROWTH_MIB} MiB: {})",
        rss0 as f64 / 1024.0,
        rss1 as f64 / 1024.0,
        verdict(growth <= TARGET_GROWTH_MIB)
    );
    drop(stdin);
    if ratio > TARGET_RATIO || growth > TARGET_GROWTH_MIB {
        bail!("the history bench missed its targets");
    }
    Ok(())
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// User + system CPU of `pid` so far, in clock ticks (`/proc/PID/stat`).
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("memtrace (pid {pid}) is gone"))?;
    // Fields after the command name, which may hold spaces: state is the
    // 3rd field, utime the 14th, stime the 15th.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("bad /proc/PID/stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> anyhow::Result<u64> {
        f.get(i - 3)
            .and_then(|v| v.parse().ok())
            .context("bad /proc/PID/stat")
    };
    Ok(field(14)? + field(15)?)
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    status_kib(pid, "VmRSS")
        .with_context(|| format!("no VmRSS of memtrace (pid {pid}): is it gone?"))
}
