//! memtrace pointed at a busy service whose reader stalls: memtrace's
//! memory stays bounded, lines are dropped and counted (never the ledger's
//! events), and the target is never held at its exit longer than the exit
//! hold, nor made unkillable.

mod common;

use std::{
    io::{BufRead as _, BufReader, Read as _},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::{Waiting, memtrace_bin, require_root};
use serde_json::Value;

const CHURN: &str = env!("CARGO_BIN_EXE_churn");

/// Resident KiB of `pid` other than the BPF maps it maps from the kernel
/// (memtrace's event ring, mapped twice, and its traced set): those are
/// fixed in size, and resident as the reader first touches their pages,
/// however long the backlog.
fn own_rss_kib(pid: u32) -> u64 {
    try_own_rss_kib(pid).expect("read memtrace's smaps")
}

/// [`own_rss_kib`], or `None` once memtrace has gone.
fn try_own_rss_kib(pid: u32) -> Option<u64> {
    memtrace::proc::smaps::read_smaps(pid).ok().map(|vmas| {
        vmas.iter()
            .filter(|v| !v.name.starts_with("anon_inode:bpf"))
            .map(|v| v.rss >> 10)
            .sum()
    })
}

/// `memtrace --pid PID ARGS` with stdout piped and left unread; returns
/// once memtrace says it traces.
fn attach_unread(pid: u32, args: &[&str]) -> (Child, thread::JoinHandle<String>) {
    let (mt, _, stderr) = start_unread(&[&["--pid", &pid.to_string()], args].concat());
    (mt, stderr)
}

/// `memtrace ARGS` with stdout piped and left unread; returns once
/// memtrace says it traces, with the pid it traces and a thread that
/// collects its stderr.
fn start_unread(args: &[&str]) -> (Child, u32, thread::JoinHandle<String>) {
    let mut mt = Command::new(memtrace_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn memtrace");
    let mut err = BufReader::new(mt.stderr.take().expect("stderr"));
    let mut seen = String::new();
    while !seen.contains("tracing pid") {
        let n = err.read_line(&mut seen).expect("memtrace stderr");
        assert!(n > 0, "memtrace ended before tracing: {seen}");
    }
    let target = seen
        .split("tracing pid ")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no traced pid in {seen:?}"));
    let rest = thread::spawn(move || {
        let mut s = seen;
        let _ = err.read_to_string(&mut s);
        s
    });
    (mt, target, rest)
}

/// Wait for the fixture to be gone; how long it took.
fn exit_latency(w: &mut Waiting, limit: Duration) -> Duration {
    let t = Instant::now();
    while t.elapsed() < limit {
        if let Ok(Some(_)) = w.child.try_wait() {
            return t.elapsed();
        }
        thread::sleep(Duration::from_millis(10));
    }
    panic!("the target did not exit within {limit:?} after it was asked to");
}

#[test]
fn a_stalled_reader_neither_grows_memtrace_nor_holds_the_target() {
    require_root();
    let mut w = Waiting::start(CHURN, &[]);
    let (mut mt, stderr) = attach_unread(
        w.pid,
        &[
            "--json",
            "--output-buffer",
            "1MiB",
            "--event-buffer",
            "16MiB",
            "--exit-hold",
            "2s",
        ],
    );
    w.go();
    // Nobody reads memtrace's stdout: the pipe fills within milliseconds.
    let start_rss = own_rss_kib(mt.id());
    // The largest in the first and in the last 4 s.
    let (mut early_rss, mut late_rss) = (start_rss, 0);
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(8) {
        let rss = own_rss_kib(mt.id());
        if t.elapsed() < Duration::from_secs(4) {
            early_rss = early_rss.max(rss);
        } else {
            late_rss = late_rss.max(rss);
        }
        thread::sleep(Duration::from_millis(200));
    }
    let max_rss = early_rss.max(late_rss);
    // The target asks to exit; it must be gone within the exit hold.
    w.go();
    let waited = exit_latency(&mut w, Duration::from_secs(10));
    // Now read what memtrace wrote, to the end.
    let mut out = String::new();
    mt.stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read memtrace stdout");
    let status = common::wait_with_timeout(&mut mt, Duration::from_secs(60));
    let stderr = stderr.join().unwrap_or_default();
    println!(
        "memtrace RSS (BPF maps aside) {start_rss} KiB at start, at most {early_rss} KiB in the \
         first 4 s and {late_rss} KiB in the next 4 with stdout unread; target gone {waited:?} \
         after asking to exit"
    );
    assert_eq!(status, 0, "{stderr}");
    assert!(
        waited < Duration::from_millis(3500),
        "the target waited {waited:?} at its exit (hold 2 s): {stderr}"
    );
    // Were the backlog kept, memory would grow with it, at the fixture's
    // hundreds of thousands of events a second: by hundreds of MiB over
    // the second 4 s. The queues (1 + 16 MiB) may still be filling then
    // on a loaded machine.
    assert!(
        late_rss <= early_rss + 17 * 1024,
        "memtrace grew from {early_rss} KiB in the first 4 s to {late_rss} KiB in the next 4 \
         with its reader stalled"
    );
    // And a bound on the whole: the queues, and the working set (symbols,
    // unwind tables, the ledger; reading the target's debug information
    // costs up to ~40 MiB at the start, which the allocator may keep).
    assert!(
        max_rss < start_rss + (17 + 80) * 1024,
        "memtrace grew from {start_rss} KiB to {max_rss} KiB with its reader stalled"
    );
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let summary = lines.last().expect("a summary line");
    assert_eq!(summary["type"], "summary", "{summary}");
    assert!(
        summary["display_dropped"].as_u64().is_some_and(|n| n > 0),
        "dropped lines are counted: {summary}"
    );
    let report = lines
        .iter()
        .find(|v| v["type"] == "report")
        .unwrap_or_else(|| panic!("no report; stderr: {stderr}"));
    let held = report["call_sites"]
        .as_array()
        .expect("call sites")
        .iter()
        .find(|s| {
            s["stack"].as_array().is_some_and(|f| {
                f.iter().any(|f| {
                    f["function"]
                        .as_str()
                        .is_some_and(|n| n.contains("hold_region"))
                })
            })
        })
        .unwrap_or_else(|| panic!("the held region's call site is in the report: {report}"));
    assert!(
        held["rss_bytes"].as_u64().is_some_and(|b| b >= 16 << 20),
        "{held}"
    );
    // Losses before the report are in the report, not only the summary.
    if summary["lost_events"].as_u64().is_some_and(|n| n > 0) {
        assert!(
            report["lost_events"].as_u64().is_some_and(|n| n > 0),
            "{report}"
        );
    }
    println!(
        "lost events {}, lines dropped {}, report complete {}",
        summary["lost_events"], summary["display_dropped"], report["complete"]
    );
}

#[test]
fn the_target_stays_killable_while_memtrace_is_stalled() {
    require_root();
    let mut w = Waiting::start(CHURN, &[]);
    let (mut mt, stderr) = attach_unread(w.pid, &["--output-buffer", "1MiB"]);
    w.go();
    thread::sleep(Duration::from_secs(2));
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(w.pid as i32, libc::SIGKILL) };
    let waited = exit_latency(&mut w, Duration::from_secs(10));
    let mut out = String::new();
    let _ = mt.stdout.take().expect("stdout").read_to_string(&mut out);
    let status = common::wait_with_timeout(&mut mt, Duration::from_secs(60));
    let stderr = stderr.join().unwrap_or_default();
    println!("target killed by SIGKILL was gone after {waited:?}");
    assert!(
        waited < Duration::from_secs(3),
        "kill -9 took {waited:?}: {stderr}"
    );
    assert_eq!(status, 0, "{stderr}");
}

/// Signal `pid` (a child of this test, or memtrace's launched target).
fn signal(pid: u32, sig: i32) {
    // SAFETY: a signal to a process this test started.
    unsafe { libc::kill(pid as i32, sig) };
}

/// Wait for `mt` to exit within `limit`; its status, or a panic saying it
/// kept running.
fn exits_within(mt: &mut Child, limit: Duration, what: &str) -> i32 {
    let t = Instant::now();
    while t.elapsed() < limit {
        if let Ok(Some(status)) = mt.try_wait() {
            return status.code().unwrap_or(-1);
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = mt.kill();
    panic!("memtrace still ran {limit:?} after {what}");
}

/// With stdout unread, tracing that ends (by a signal or `--duration`)
/// lets the target go at once: its own signals reach it and it exits
/// without being held, while memtrace waits for its reader with the
/// report; one more signal then stops memtrace.
#[test]
fn an_ended_trace_never_holds_the_target_for_a_stalled_reader() {
    require_root();
    for ending in ["signal", "duration"] {
        let mut w = Waiting::start(CHURN, &[]);
        let args: &[&str] = match ending {
            "signal" => &["--json"],
            _ => &["--json", "--duration", "2s"],
        };
        let (mut mt, stderr) = attach_unread(w.pid, args);
        w.go();
        // Nobody reads memtrace's stdout: the pipe fills within
        // milliseconds, then the output buffer.
        thread::sleep(Duration::from_secs(3));
        if ending == "signal" {
            signal(mt.id(), libc::SIGINT);
            thread::sleep(Duration::from_millis(500));
        }
        signal(w.pid, libc::SIGTERM);
        let waited = exit_latency(&mut w, Duration::from_secs(15));
        println!("trace ended by {ending}: the target's SIGTERM took {waited:?}");
        assert!(
            waited < Duration::from_millis(1500),
            "trace ended by {ending}: the target took {waited:?} to die of SIGTERM"
        );
        assert!(
            matches!(mt.try_wait(), Ok(None)),
            "memtrace waits for its reader with the report"
        );
        signal(mt.id(), libc::SIGINT);
        let status = exits_within(&mut mt, Duration::from_secs(3), "a signal while it waited");
        let stderr = stderr.join().unwrap_or_default();
        assert_eq!(status, 130, "{stderr}");
        assert!(stderr.contains("output is incomplete"), "{stderr}");
    }
}

/// In launch mode the first signal goes on to the command; when it has
/// ended and memtrace waits for a stalled reader, the next one stops it.
#[test]
fn a_second_signal_stops_a_launched_trace_whose_reader_stalls() {
    require_root();
    let (mut mt, target, stderr) =
        start_unread(&["--json", "--", CHURN, "--threads", "2", "--seconds", "60"]);
    thread::sleep(Duration::from_secs(3));
    signal(mt.id(), libc::SIGINT);
    // Passed on after the 1 s grace; churn dies of it.
    assert!(
        common::wait_for(Duration::from_secs(10), || {
            !std::path::Path::new(&format!("/proc/{target}")).exists()
        }),
        "the launched command did not end on the SIGINT passed on"
    );
    thread::sleep(Duration::from_millis(300));
    assert!(
        matches!(mt.try_wait(), Ok(None)),
        "memtrace waits for its reader with the report"
    );
    signal(mt.id(), libc::SIGINT);
    let status = exits_within(&mut mt, Duration::from_secs(3), "a second SIGINT");
    let stderr = stderr.join().unwrap_or_default();
    assert_eq!(status, 130, "{stderr}");
}

/// Utime + stime ticks of memtrace's ring reader thread.
fn ring_thread_ticks(pid: u32) -> Option<u64> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    for task in dir.filter_map(Result::ok) {
        let path = task.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if comm.trim() != "memtrace-ring" {
            continue;
        }
        let stat = std::fs::read_to_string(path.join("stat")).ok()?;
        let after = &stat[stat.rfind(')')? + 1..];
        let f: Vec<&str> = after.split_whitespace().collect();
        // utime and stime: fields 14 and 15, the 12th and 13th after the name.
        return Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?);
    }
    None
}

/// The churn fixture's own count of its mmap and munmap calls.
fn churn_calls(stderr: &str) -> u64 {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("churn: "))
        .unwrap_or_else(|| panic!("no count from churn: {stderr}"));
    let n: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    n.iter().sum()
}

/// An event buffer far smaller than the ring: every event is received or
/// counted lost, and the reader waiting for room costs nothing (it must
/// not spin on the ring, which stays readable while it waits).
#[test]
fn a_tiny_event_buffer_loses_nothing_uncounted_and_does_not_spin() {
    require_root();
    let mut mt = Command::new(memtrace_bin())
        .args(["-q", "--json", "--event-buffer", "4096", "--"])
        .args([CHURN, "--threads", "4", "--seconds", "4"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn memtrace");
    let mut out = mt.stdout.take().expect("stdout");
    let reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let mut err = mt.stderr.take().expect("stderr");
    let errs = thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    // The ring thread's CPU over 2 s in the middle of the run.
    thread::sleep(Duration::from_millis(1000));
    let t0 = (Instant::now(), ring_thread_ticks(mt.id()));
    thread::sleep(Duration::from_millis(2000));
    let t1 = (Instant::now(), ring_thread_ticks(mt.id()));
    let status = common::wait_with_timeout(&mut mt, Duration::from_secs(60));
    let out = reader.join().unwrap_or_default();
    let stderr = errs.join().unwrap_or_default();
    assert_eq!(status, 0, "{stderr}");
    let (Some(a), Some(b)) = (t0.1, t1.1) else {
        panic!("memtrace has no memtrace-ring thread to measure");
    };
    // SAFETY: sysconf has no memory arguments.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let share = (b - a) as f64 / hz / (t1.0 - t0.0).as_secs_f64();
    let summary: Value = out
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["type"] == "summary")
        .unwrap_or_else(|| panic!("no summary: {out}\n{stderr}"));
    let got = |k: &str| summary["events"][k].as_u64().unwrap_or(0);
    let received = got("mmap") + got("munmap");
    let lost = summary["lost_events"].as_u64().unwrap_or(0);
    let made = churn_calls(&stderr);
    println!(
        "churn made {made} mmap/munmap calls; memtrace received {received}, counted {lost} \
         lost; its ring thread used {:.0}% of a core",
        share * 100.0
    );
    assert!(
        received + lost >= made,
        "{} events neither received nor counted lost: {summary}",
        made - received - lost
    );
    // Spinning takes most of a core; waiting, a few percent.
    assert!(
        share < 0.3,
        "the ring thread used {:.0}% of a core while the event buffer was full",
        share * 100.0
    );
}

/// Peak resident KiB of memtrace (BPF maps aside) tracing 4 churning
/// threads for 5 s with its output to a file, and the file's size.
fn peak_rss_kib(args: &[&str]) -> (u64, u64) {
    let path = common::temp_path("production-rss");
    let file = std::fs::File::create(&path).expect("output file");
    let mut mt = Command::new(memtrace_bin())
        .args(args)
        .args(["--", CHURN, "--threads", "4", "--seconds", "5"])
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn memtrace");
    let mut peak = 0;
    while let Ok(None) = mt.try_wait() {
        if let Some(rss) = try_own_rss_kib(mt.id()) {
            peak = peak.max(rss);
        }
        thread::sleep(Duration::from_millis(100));
    }
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let _ = std::fs::remove_file(&path);
    (peak, size)
}

/// `--event-buffer` and `--output-buffer` bound memtrace's memory: with
/// large buffers it grows by at most their sum over a run with tiny ones,
/// in every output format.
#[test]
fn the_event_and_output_buffers_bound_memory() {
    require_root();
    for format in [&["-v"][..], &["--json"], &[]] {
        let small = [
            format,
            &["--event-buffer", "1MiB", "--output-buffer", "1MiB"],
        ]
        .concat();
        let large = [
            format,
            &["--event-buffer", "48MiB", "--output-buffer", "16MiB"],
        ]
        .concat();
        let (base, _) = peak_rss_kib(&small);
        let (peak, written) = peak_rss_kib(&large);
        println!(
            "{format:?}: peak {base} KiB with 1+1 MiB buffers, {peak} KiB with 48+16 MiB \
             ({written} bytes written)"
        );
        // The buffers' sum, and room for the allocator's slack and the
        // working set's variation between two runs.
        assert!(
            peak <= base + (48 + 16 + 24) * 1024,
            "{format:?}: memtrace peaked at {peak} KiB with 48+16 MiB of buffers, {base} KiB \
             with 1+1 MiB"
        );
    }
}
