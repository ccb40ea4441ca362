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
    memtrace::proc::smaps::read_smaps(pid)
        .map(|vmas| {
            vmas.iter()
                .filter(|v| !v.name.starts_with("anon_inode:bpf"))
                .map(|v| v.rss >> 10)
                .sum()
        })
        .expect("read memtrace's smaps")
}

/// `memtrace --pid PID ARGS` with stdout piped and left unread; returns
/// once memtrace says it traces.
fn attach_unread(pid: u32, args: &[&str]) -> (Child, thread::JoinHandle<String>) {
    let mut mt = Command::new(memtrace_bin())
        .args(["--pid", &pid.to_string()])
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
        assert!(n > 0, "memtrace ended before attaching: {seen}");
    }
    let rest = thread::spawn(move || {
        let mut s = seen;
        let _ = err.read_to_string(&mut s);
        s
    });
    (mt, rest)
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
