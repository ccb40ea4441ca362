//! `cargo xtask bench attribution`: the attributed report of a process with
//! 100,000 live traced mappings in 60,000 VMAs, against a raw read of its
//! smaps, in interleaved rounds. Target: 1.5× or less. Also prints
//! memtrace's own peak RSS.
//!
//! memtrace runs as `memtrace serve --pid P --trace`; each round times one
//! `GET /debug/memory/attributed.json?top=10` (smaps + ledger join +
//! pagemap + symbolization of the top sites) and one
//! `cat /proc/P/smaps > /dev/null`.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    bench::{KillOnDrop, median, ms},
    build_release,
};

const ROUNDS: usize = 11;
const TARGET_RATIO: f64 = 1.5;
const LISTEN: &str = "127.0.0.1:16061";

pub fn run() -> anyhow::Result<()> {
    build_release()?;
    let bin = crate::release_dir();
    let mut target = KillOnDrop(
        Command::new(bin.join("attrib_target"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting attrib_target")?,
    );
    let pid = target.0.id();
    let mut lines = BufReader::new(target.0.stdout.take().context("target stdout")?).lines();
    expect_line(&mut lines, "attached?")?;

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
    wait_for_server()?;
    let mut stdin = target.0.stdin.take().context("target stdin")?;
    writeln!(stdin, "go")?;
    println!("building 100,000 traced mappings in pid {pid}…");
    expect_line(&mut lines, "ready")?;
    // Let the tracer finish applying the last events.
    thread::sleep(Duration::from_millis(500));

    let first = get_report()?;
    let vmas = std::fs::read_to_string(format!("/proc/{pid}/maps"))?
        .lines()
        .count();
    println!("target: {vmas} VMAs; first report {} bytes", first.len());
    for key in [
        "\"coverage\":",
        "\"anon_rss_bytes\":",
        "\"call_site_count\":",
    ] {
        if let Some(i) = first.find(key) {
            let rest = &first[i + key.len()..];
            let end = rest.find([',', '}']).unwrap_or(rest.len());
            println!("  {} {}", key.trim_matches(['"', ':']), &rest[..end]);
        }
    }

    let mut cat = Vec::new();
    let mut report = Vec::new();
    println!("\nround   cat smaps ms   attributed report ms");
    for round in 0..ROUNDS {
        let t = Instant::now();
        let status = Command::new("sh")
            .args(["-c", &format!("cat /proc/{pid}/smaps > /dev/null")])
            .status()?;
        if !status.success() {
            bail!("cat failed");
        }
        let c = t.elapsed();
        let t = Instant::now();
        get_report()?;
        let r = t.elapsed();
        println!("{round:>5}   {:>12.1}   {:>20.1}", ms(c), ms(r));
        cat.push(c);
        report.push(r);
    }
    let (c, r) = (median(&mut cat), median(&mut report));
    let ratio = r.as_secs_f64() / c.as_secs_f64();
    let hwm = peak_rss_kib(memtrace.0.id()).unwrap_or(0);
    println!(
        "\nmedian: cat smaps {:.1} ms, attributed report {:.1} ms, ratio {ratio:.2}x (target <= {TARGET_RATIO}x)",
        ms(c),
        ms(r)
    );
    println!("memtrace peak RSS (VmHWM): {:.1} MiB", hwm as f64 / 1024.0);
    if ratio > TARGET_RATIO {
        println!("ABOVE TARGET");
    }
    drop(stdin);
    Ok(())
}

fn expect_line(
    lines: &mut impl Iterator<Item = std::io::Result<String>>,
    prefix: &str,
) -> anyhow::Result<()> {
    for line in lines {
        if line?.starts_with(prefix) {
            return Ok(());
        }
    }
    bail!("the target ended before printing {prefix:?}")
}

fn wait_for_server() -> anyhow::Result<()> {
    for _ in 0..200 {
        if TcpStream::connect(LISTEN).is_ok() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(50));
    }
    bail!("memtrace serve did not start listening on {LISTEN} (is this root?)")
}

/// One HTTP/1.1 GET of the attributed JSON report; the body.
fn get_report() -> anyhow::Result<String> {
    let mut s = TcpStream::connect(LISTEN).context("connect to memtrace serve")?;
    write!(
        s,
        "GET /debug/memory/attributed.json?top=10 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    if !head.starts_with("HTTP/1.1 200") {
        bail!("memtrace answered: {head}\n{body}");
    }
    Ok(body.to_string())
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
