//! `cargo xtask bench snapshot`: how much does `memtrace snapshot` cost
//! over just reading `/proc/PID/smaps`?
//!
//! Starts a target process holding 60,000 VMAs (one-page mappings that
//! alternate `PROT_READ` and `PROT_READ|PROT_WRITE` so the kernel cannot
//! merge them), then times, interleaved, `cat /proc/PID/smaps > /dev/null`
//! and `memtrace snapshot --pid PID > /dev/null`, and prints the medians and
//! their ratio. The target is 1.10 or less. `pmap -X` is timed too, as a
//! reference, when it is installed.

use std::fs::File;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};

use crate::bench::{KillOnDrop, median, ms};

/// Number of mappings in the target process (vm.max_map_count is 65530 by default).
const VMAS: usize = 60_000;
/// Timed rounds per command.
const ROUNDS: usize = 15;
/// The ratio `memtrace snapshot` must stay under.
const TARGET_RATIO: f64 = 1.10;

const TARGET_C: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 60000;
    long page = sysconf(_SC_PAGESIZE);
    char *base = mmap(NULL, (size_t)n * page, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) { perror("mmap"); return 1; }
    for (long i = 0; i < n; i++) {
        base[(size_t)i * page] = 1; /* resident, so smaps has work to do */
        /* Alternate protections so neighbours never merge into one VMA. */
        if (i % 2 && mprotect(base + (size_t)i * page, page, PROT_READ) != 0) {
            perror("mprotect"); return 1;
        }
    }
    printf("ready\n");
    fflush(stdout);
    for (;;) pause();
}
"#;

pub fn run() -> anyhow::Result<()> {
    let release = crate::release_dir();
    let target_dir = release
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| release.clone());

    crate::build_release()?;
    let memtrace = release.join("memtrace");

    let max_map_count: usize = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(65530);
    ensure!(
        max_map_count > VMAS + 100,
        "vm.max_map_count is {max_map_count}; the bench needs more than {} \
         (sysctl -w vm.max_map_count=65530)",
        VMAS + 100
    );

    let bench_dir = target_dir.join("bench-snapshot");
    std::fs::create_dir_all(&bench_dir)
        .with_context(|| format!("creating {}", bench_dir.display()))?;
    let target_bin = compile_target(&bench_dir)?;
    let target = start_target(&target_bin)?;
    let pid = target.0.id();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .context("reading the target's maps")?
        .lines()
        .count();
    ensure!(
        maps >= VMAS,
        "the target has only {maps} VMAs, expected {VMAS}"
    );
    let smaps_path = format!("/proc/{pid}/smaps");
    let pid_arg = pid.to_string();

    let cat = || timed(Command::new("cat").arg(&smaps_path));
    let snap = || timed(Command::new(&memtrace).args(["snapshot", "--pid", &pid_arg]));

    // Warm up caches (page cache of the binaries, the kernel's slab).
    for _ in 0..2 {
        cat()?;
        snap()?;
    }
    let mut cat_times = Vec::with_capacity(ROUNDS);
    let mut snap_times = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        cat_times.push(cat()?);
        snap_times.push(snap()?);
    }
    let cat_median = median(&mut cat_times);
    let snap_median = median(&mut snap_times);
    let ratio = snap_median.as_secs_f64() / cat_median.as_secs_f64();

    let pmap = if which("pmap") {
        let mut t = Vec::new();
        for _ in 0..3 {
            t.push(timed(Command::new("pmap").args(["-X", &pid_arg]))?);
        }
        Some(median(&mut t))
    } else {
        None
    };

    println!("target: pid {pid} with {maps} VMAs; {ROUNDS} interleaved rounds, medians:");
    println!(
        "  cat /proc/PID/smaps > /dev/null          {:>9.1} ms  1.00x",
        ms(cat_median)
    );
    println!(
        "  memtrace snapshot --pid PID > /dev/null  {:>9.1} ms  {ratio:.2}x  (target <= {TARGET_RATIO:.2}x)",
        ms(snap_median)
    );
    if let Some(p) = pmap {
        println!(
            "  pmap -X PID > /dev/null (reference)      {:>9.1} ms  {:.2}x",
            ms(p),
            p.as_secs_f64() / cat_median.as_secs_f64()
        );
    }
    drop(target);
    if ratio > TARGET_RATIO {
        bail!(
            "memtrace snapshot is {ratio:.2}x the cost of reading smaps (target {TARGET_RATIO:.2}x)"
        );
    }
    Ok(())
}

fn compile_target(dir: &Path) -> anyhow::Result<PathBuf> {
    let src = dir.join("many_vmas.c");
    let bin = dir.join("many_vmas");
    std::fs::write(&src, TARGET_C).with_context(|| format!("writing {}", src.display()))?;
    let status = Command::new("cc")
        .args(["-O2", "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
        .context("running cc (install a C compiler)")?;
    ensure!(status.success(), "cc failed to compile {}", src.display());
    Ok(bin)
}

fn start_target(bin: &Path) -> anyhow::Result<KillOnDrop> {
    let mut child = Command::new(bin)
        .arg(VMAS.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let stdout = child.stdout.take().context("target stdout")?;
    let guard = KillOnDrop(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .context("waiting for the target")?;
    ensure!(
        line.trim() == "ready",
        "the target did not start (printed {line:?})"
    );
    Ok(guard)
}

/// Wall time of one run with stdout to /dev/null; fails if the command fails.
fn timed(cmd: &mut Command) -> anyhow::Result<Duration> {
    let devnull = File::create("/dev/null").context("opening /dev/null")?;
    let start = Instant::now();
    let status = cmd
        .stdout(devnull)
        .status()
        .with_context(|| format!("running {cmd:?}"))?;
    let elapsed = start.elapsed();
    ensure!(status.success(), "{cmd:?} failed: {status}");
    Ok(elapsed)
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}
