//! `cargo xtask bench attribution`: the attributed report of a process with
//! 100,000 live traced mappings in 60,000 VMAs (40,000 of them hold two
//! traced mappings and need pagemap), against a raw read of its smaps.
//! Target: 1.5× or less, for both ways of getting the report:
//!
//! - **serve**: `memtrace serve --pid P --trace`; each of the interleaved
//!   rounds times one `GET /debug/memory/attributed.json?top=10` (smaps +
//!   ledger join + pagemap + symbolization of the sites + JSON + HTTP) and
//!   one `cat /proc/P/smaps > /dev/null`.
//! - **CLI**: `memtrace --json --quiet -- attrib_target`; each round
//!   launches a fresh target, times `cat /proc/P/smaps > /dev/null` on it
//!   (median of three) once it is ready, then tells it to exit and times
//!   from that moment to the report line on memtrace's stdout (the exit
//!   stop, the last drain, smaps + join + pagemap, symbolization, JSON).
//!
//! Each prints the medians, their ratio against the target and PASS/FAIL,
//! and memtrace's peak RSS (serve).

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    bench::{
        KillOnDrop, cat_smaps, expect_line, http_get, median, ms, start_target, status_kib,
        verdict, wait_for_server,
    },
    build_release,
};

const ROUNDS: usize = 11;
/// CLI rounds: each builds a fresh target with 100,000 traced mappings.
const CLI_ROUNDS: usize = 7;
const TARGET_RATIO: f64 = 1.5;
const LISTEN: &str = "127.0.0.1:16061";
/// What each serve round times.
const REPORT: &str = "/debug/memory/attributed.json?top=10";

pub fn run() -> anyhow::Result<()> {
    build_release()?;
    let bin = crate::release_dir();
    let serve = serve_bench(&bin)?;
    let cli = cli_bench(&bin)?;
    println!("\nsummary (target <= {TARGET_RATIO}x):");
    println!("  serve: {serve:.2}x {}", verdict(serve <= TARGET_RATIO));
    println!("  CLI:   {cli:.2}x {}", verdict(cli <= TARGET_RATIO));
    if serve > TARGET_RATIO || cli > TARGET_RATIO {
        bail!("the attributed report is above {TARGET_RATIO}x a raw smaps read");
    }
    Ok(())
}

/// The serve measure; returns the ratio of the medians.
fn serve_bench(bin: &Path) -> anyhow::Result<f64> {
    let (mut target, mut lines) = start_target(bin, "attrib_target")?;
    let pid = target.0.id();

    let memtrace = KillOnDrop(
        Command::new(bin.join("memtrace"))
            .args([
                "serve",
                "--trace",
                "--pid",
                &pid.to_string(),
                "--listen",
                LISTEN,
            ])
            .stderr(Stdio::null())
            .spawn()
            .context("starting memtrace serve --trace")?,
    );
    wait_for_server(LISTEN)?;
    let mut stdin = target.0.stdin.take().context("target stdin")?;
    writeln!(stdin, "go")?;
    println!("serve: building 100,000 traced mappings in pid {pid}…");
    expect_line(&mut lines, "ready")?;
    // Let the tracer finish applying the last events.
    thread::sleep(Duration::from_millis(500));

    let first = http_get(LISTEN, REPORT)?;
    let vmas = std::fs::read_to_string(format!("/proc/{pid}/maps"))?
        .lines()
        .count();
    println!("target: {vmas} VMAs; first report {} bytes", first.len());
    print_report_keys(&first);

    let mut cat = Vec::new();
    let mut report = Vec::new();
    println!("\nround   cat smaps ms   attributed report ms");
    for round in 0..ROUNDS {
        let c = time_cat_smaps(pid)?;
        let t = Instant::now();
        http_get(LISTEN, REPORT)?;
        let r = t.elapsed();
        println!("{round:>5}   {:>12.1}   {:>20.1}", ms(c), ms(r));
        cat.push(c);
        report.push(r);
    }
    let (c, r) = (median(&mut cat), median(&mut report));
    let ratio = r.as_secs_f64() / c.as_secs_f64();
    let hwm = status_kib(memtrace.0.id(), "VmHWM").unwrap_or(0);
    println!(
        "\nserve median: cat smaps {:.1} ms, attributed report {:.1} ms, ratio {ratio:.2}x \
         (target <= {TARGET_RATIO}x: {})",
        ms(c),
        ms(r),
        verdict(ratio <= TARGET_RATIO)
    );
    println!("memtrace peak RSS (VmHWM): {:.1} MiB", hwm as f64 / 1024.0);
    drop(stdin);
    Ok(ratio)
}

/// The CLI measure; returns the ratio of the medians.
fn cli_bench(bin: &Path) -> anyhow::Result<f64> {
    println!(
        "\nCLI: memtrace --json --quiet -- attrib_target, {CLI_ROUNDS} rounds \
         (a fresh target each)"
    );
    println!("round   cat smaps ms   exit to report ms");
    let mut cat = Vec::new();
    let mut report = Vec::new();
    for round in 0..CLI_ROUNDS {
        let (c, r) = cli_round(bin, round == 0)?;
        println!("{round:>5}   {:>12.1}   {:>17.1}", ms(c), ms(r));
        cat.push(c);
        report.push(r);
    }
    let (c, r) = (median(&mut cat), median(&mut report));
    let ratio = r.as_secs_f64() / c.as_secs_f64();
    println!(
        "\nCLI median: cat smaps {:.1} ms, exit to report {:.1} ms, ratio {ratio:.2}x \
         (target <= {TARGET_RATIO}x: {})",
        ms(c),
        ms(r),
        verdict(ratio <= TARGET_RATIO)
    );
    Ok(ratio)
}

/// One CLI round: (median `cat smaps` of the ready target, time from
/// telling it to exit to the report line).
fn cli_round(bin: &Path, show: bool) -> anyhow::Result<(Duration, Duration)> {
    // The target inherits memtrace's stdin and stdout: its lines and
    // memtrace's JSON lines arrive on the same pipe.
    let mut memtrace = KillOnDrop(
        Command::new(bin.join("memtrace"))
            .args(["--json", "--quiet", "--"])
            .arg(bin.join("attrib_target"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting memtrace -- attrib_target (is this root?)")?,
    );
    let mut stdin = memtrace.0.stdin.take().context("memtrace stdin")?;
    let mut lines = BufReader::new(memtrace.0.stdout.take().context("memtrace stdout")?).lines();
    let pid: u32 = loop {
        let line = lines
            .next()
            .context("memtrace ended before the target started")??;
        if let Some(p) = line.strip_prefix("attached? ") {
            break p.trim().parse().context("target pid")?;
        }
    };
    writeln!(stdin, "go")?;
    expect_line(&mut lines, "ready")?;
    // Let the tracer finish applying the last events: the measure is the
    // report, not the backlog.
    thread::sleep(Duration::from_millis(500));
    let mut cats = Vec::new();
    for _ in 0..3 {
        cats.push(time_cat_smaps(pid)?);
    }
    let t = Instant::now();
    writeln!(stdin, "exit")?;
    stdin.flush()?;
    let report = loop {
        let line = lines.next().context("memtrace ended without a report")??;
        if line.starts_with("{\"type\":\"report\"") {
            break line;
        }
    };
    let r = t.elapsed();
    if show {
        print_report_keys(&report);
    }
    drop(stdin);
    // The summary follows; then memtrace exits with the target's status.
    for line in lines {
        line?;
    }
    let _ = memtrace.0.wait();
    Ok((median(&mut cats), r))
}

/// Time one `cat /proc/PID/smaps > /dev/null`.
fn time_cat_smaps(pid: u32) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let status = cat_smaps(pid).status()?;
    if !status.success() {
        bail!("cat failed");
    }
    Ok(t.elapsed())
}

/// Print a few figures of a JSON report, to show it is the real thing.
fn print_report_keys(report: &str) {
    for key in [
        "\"coverage\":",
        "\"anon_rss_bytes\":",
        "\"call_site_count\":",
    ] {
        if let Some(i) = report.find(key) {
            let rest = &report[i + key.len()..];
            let end = rest.find([',', '}']).unwrap_or(rest.len());
            println!("  {} {}", key.trim_matches(['"', ':']), &rest[..end]);
        }
    }
}
