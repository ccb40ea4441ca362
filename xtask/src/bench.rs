//! Pieces the benchmarks share.

use std::{
    io::{BufRead as _, BufReader, Lines, Read as _, Write as _},
    net::TcpStream,
    path::Path,
    process::{Child, ChildStdout, Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context as _, bail};

/// Kills a benchmark's target process when the benchmark ends, however it
/// ends.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Median of samples (sorts them).
pub fn median<T: Copy + PartialOrd>(v: &mut [T]) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Wall, user and system time of one child process.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    pub wall: Duration,
    pub user: Duration,
    pub system: Duration,
}

/// `cat /proc/PID/smaps` to /dev/null, run directly: through a shell the
/// baseline would include the shell's start-up, and flatter memtrace.
pub fn cat_smaps(pid: u32) -> std::process::Command {
    let mut cmd = std::process::Command::new("cat");
    cmd.arg(format!("/proc/{pid}/smaps"))
        .stdout(std::process::Stdio::null());
    cmd
}

/// Run `cmd` to completion and measure it: wall time from spawn to exit,
/// and the child's own CPU times from `wait4` (children it waited for
/// included, as the kernel counts them). Fails if it exits unsuccessfully.
pub fn run_measured(cmd: &mut std::process::Command) -> anyhow::Result<Usage> {
    let start = std::time::Instant::now();
    let child = cmd.spawn().with_context(|| format!("running {cmd:?}"))?;
    let pid = libc::pid_t::try_from(child.id()).context("pid out of range")?;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = loop {
        // SAFETY: `pid` is our unwaited child; `status` and `usage` are
        // valid for writes.
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if rc == -1 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        break rc;
    };
    let wall = start.elapsed();
    // The child is reaped; `Child`'s drop neither waits nor kills.
    drop(child);
    anyhow::ensure!(
        rc == pid,
        "waiting for {cmd:?}: {}",
        std::io::Error::last_os_error()
    );
    anyhow::ensure!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{cmd:?} failed (wait status {status:#x})"
    );
    let tv = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    Ok(Usage {
        wall,
        user: tv(usage.ru_utime),
        system: tv(usage.ru_stime),
    })
}

/// `PASS` or `FAIL`.
pub fn verdict(pass: bool) -> &'static str {
    if pass { "PASS" } else { "FAIL" }
}

/// Start a benchmark target (`bin/name`, stdin and stdout piped) and wait
/// for its `attached?` line, when memtrace may attach: the target and the
/// rest of its stdout, line by line.
pub fn start_target(
    bin: &Path,
    name: &str,
) -> anyhow::Result<(KillOnDrop, Lines<BufReader<ChildStdout>>)> {
    let mut target = KillOnDrop(
        Command::new(bin.join(name))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {name}"))?,
    );
    let mut lines = BufReader::new(target.0.stdout.take().context("target stdout")?).lines();
    expect_line(&mut lines, "attached?")?;
    Ok((target, lines))
}

/// Read `lines` up to one starting with `prefix`.
pub fn expect_line(
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

/// Wait (10 s at most) until `memtrace serve` accepts connections on
/// `addr`.
pub fn wait_for_server(addr: &str) -> anyhow::Result<()> {
    for _ in 0..200 {
        if TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(50));
    }
    bail!("memtrace serve did not start listening on {addr} (is this root?)")
}

/// One HTTP/1.1 GET of `path` from `memtrace serve` on `addr`; the body
/// of a 200 answer.
pub fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(addr).context("connect to memtrace serve")?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    if !head.starts_with("HTTP/1.1 200") {
        bail!("memtrace answered: {head}\n{body}");
    }
    Ok(body.to_string())
}

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`, …), in KiB.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
