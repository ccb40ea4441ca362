//! `cargo xtask bench snapshot`: how much does `memtrace snapshot` cost
//! over just reading `/proc/PID/smaps`?
//!
//! Target processes hold 60,000 VMAs each, one page per VMA, in the
//! layouts real processes have:
//!
//! - *resident*: every page touched, protections alternating `PROT_READ`
//!   and `PROT_READ|PROT_WRITE` so the kernel cannot merge neighbours;
//! - *guard*: a touched read-write page, then a `PROT_NONE` page, and so on
//!   (thread stacks with their guard pages, Go and JVM reservations): half
//!   the VMAs have nothing resident, so the kernel's own work per VMA is
//!   small and any fixed cost of memtrace shows;
//! - *restless*: the resident layout, with the target flipping the
//!   protection of every other page without pause (each flip merges three
//!   VMAs into one and splits them again), so the kernel restates ranges
//!   between reads and memtrace's reads meet torn text and may read again
//!   (`memtrace::proc::smaps::settled`) where `cat` reads once, wrong.
//!
//! For each layout it times, interleaved, `cat /proc/PID/smaps > /dev/null`
//! and `memtrace snapshot --pid PID > /dev/null`, and prints the medians
//! of wall, user and system time and the ratio of the wall medians, which
//! must be 1.10 or less (PASS/FAIL). memtrace's system time should not
//! exceed cat's: its reads must not cost the kernel more. `pmap -X` is
//! timed too, as a reference, when it is installed.

use std::fs::File;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail, ensure};

use crate::bench::{KillOnDrop, Usage, median, ms, run_measured, verdict};

/// Number of mappings in the target process (vm.max_map_count is 65530 by default).
const VMAS: usize = 60_000;
/// Timed rounds per command.
const ROUNDS: usize = 15;
/// The ratio `memtrace snapshot` must stay under.
const TARGET_RATIO: f64 = 1.10;

/// The target: `many_vmas N resident|guard|restless`.
const TARGET_C: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 60000;
    int guard = argc > 2 && strcmp(argv[2], "guard") == 0;
    int restless = argc > 2 && strcmp(argv[2], "restless") == 0;
    long page = sysconf(_SC_PAGESIZE);
    char *base = mmap(NULL, (size_t)n * page, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) { perror("mmap"); return 1; }
    for (long i = 0; i < n; i++) {
        char *p = base + (size_t)i * page;
        if (guard && i % 2) {
            /* A guard page: never touched, no access. */
            if (mprotect(p, page, PROT_NONE) != 0) { perror("mprotect"); return 1; }
            continue;
        }
        p[0] = 1; /* resident, so smaps has work to do */
        /* Alternate protections so neighbours never merge into one VMA. */
        if (!guard && i % 2 && mprotect(p, page, PROT_READ) != 0) {
            perror("mprotect"); return 1;
        }
    }
    printf("ready\n");
    fflush(stdout);
    /* Restless: RW merges page i with its RW neighbours, R splits it off. */
    for (long i = 1; restless; i = i + 2 < n ? i + 2 : 1) {
        char *p = base + (size_t)i * page;
        mprotect(p, page, PROT_READ | PROT_WRITE);
        mprotect(p, page, PROT_READ);
    }
    for (;;) pause();
}
"#;

/// The layouts measured, by the name the target takes.
const LAYOUTS: [(&str, &str); 3] = [
    ("resident", "every page resident, RW/R alternating"),
    (
        "guard",
        "resident RW page, PROT_NONE guard page, alternating",
    ),
    (
        "restless",
        "resident RW/R alternating, the R pages flipped to RW and back without pause",
    ),
];

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

    let mut failed = Vec::new();
    for (layout, about) in LAYOUTS {
        let ratio = bench_layout(&memtrace, &target_bin, layout, about)?;
        if ratio > TARGET_RATIO {
            failed.push(format!("{layout}: {ratio:.2}x"));
        }
    }
    if !failed.is_empty() {
        bail!(
            "memtrace snapshot is above {TARGET_RATIO:.2}x the cost of reading smaps on: {}",
            failed.join(", ")
        );
    }
    Ok(())
}

/// Measure one layout; returns the ratio of the wall-time medians.
fn bench_layout(
    memtrace: &Path,
    target_bin: &Path,
    layout: &str,
    about: &str,
) -> anyhow::Result<f64> {
    let target = start_target(target_bin, layout)?;
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
    let smaps_bytes = std::fs::read(&smaps_path).map(|b| b.len()).unwrap_or(0);
    let pid_arg = pid.to_string();

    let cat = || timed(Command::new("cat").arg(&smaps_path));
    let snap = || timed(Command::new(memtrace).args(["snapshot", "--pid", &pid_arg]));

    // Warm up caches (page cache of the binaries, the kernel's slab).
    for _ in 0..2 {
        cat()?;
        snap()?;
    }
    let mut cat_runs = Vec::with_capacity(ROUNDS);
    let mut snap_runs = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        cat_runs.push(cat()?);
        snap_runs.push(snap()?);
    }
    let c = medians(&cat_runs);
    let s = medians(&snap_runs);
    let ratio = s.wall.as_secs_f64() / c.wall.as_secs_f64();

    let pmap = if which("pmap") {
        let mut t = Vec::new();
        for _ in 0..3 {
            t.push(timed(Command::new("pmap").args(["-X", &pid_arg]))?);
        }
        Some(medians(&t))
    } else {
        None
    };

    println!(
        "\nlayout {layout} ({about}): pid {pid}, {maps} VMAs, {:.1} MB of smaps; \
         {ROUNDS} interleaved rounds, medians:",
        smaps_bytes as f64 / 1e6
    );
    println!(
        "  {:<42} {:>9} {:>9} {:>9}  ratio",
        "", "wall ms", "user ms", "sys ms"
    );
    let row = |name: &str, u: &Usage, note: &str| {
        println!(
            "  {name:<42} {:>9.1} {:>9.1} {:>9.1}  {:.2}x{note}",
            ms(u.wall),
            ms(u.user),
            ms(u.system),
            u.wall.as_secs_f64() / c.wall.as_secs_f64()
        );
    };
    row("cat /proc/PID/smaps > /dev/null", &c, "");
    row(
        "memtrace snapshot --pid PID > /dev/null",
        &s,
        &format!(
            "  (target <= {TARGET_RATIO:.2}x: {})",
            verdict(ratio <= TARGET_RATIO)
        ),
    );
    if let Some(p) = pmap {
        row("pmap -X PID > /dev/null (reference)", &p, "");
    }
    println!(
        "  system time: memtrace {:.1} ms vs cat {:.1} ms ({:.2}x)",
        ms(s.system),
        ms(c.system),
        s.system.as_secs_f64() / c.system.as_secs_f64().max(1e-9)
    );
    drop(target);
    Ok(ratio)
}

/// Median of each measure separately.
fn medians(runs: &[Usage]) -> Usage {
    let mut wall: Vec<_> = runs.iter().map(|u| u.wall).collect();
    let mut user: Vec<_> = runs.iter().map(|u| u.user).collect();
    let mut system: Vec<_> = runs.iter().map(|u| u.system).collect();
    Usage {
        wall: median(&mut wall),
        user: median(&mut user),
        system: median(&mut system),
    }
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

fn start_target(bin: &Path, layout: &str) -> anyhow::Result<KillOnDrop> {
    let mut child = Command::new(bin)
        .arg(VMAS.to_string())
        .arg(layout)
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

/// One run with stdout to /dev/null; fails if the command fails.
fn timed(cmd: &mut Command) -> anyhow::Result<Usage> {
    let devnull = File::create("/dev/null").context("opening /dev/null")?;
    run_measured(cmd.stdout(devnull))
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}
