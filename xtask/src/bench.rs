//! Pieces the benchmarks share.

use std::{process::Child, time::Duration};

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

/// Run `cmd` to completion and measure it: wall time from spawn to exit,
/// and the child's own CPU times from `wait4` (children it waited for
/// included, as the kernel counts them). Fails if it exits unsuccessfully.
pub fn run_measured(cmd: &mut std::process::Command) -> anyhow::Result<Usage> {
    use anyhow::Context as _;
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
