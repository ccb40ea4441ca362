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

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        })
        .unwrap_or(0)
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
    let start_rss = rss_kib(mt.id());
    let mut max_rss = start_rss;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(8) {
        max_rss = max_rss.max(rss_kib(mt.id()));
        thread::sleep(Duration::from_millis(200));
    }
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
        "memtrace RSS {start_rss} KiB at start, at most {max_rss} KiB with stdout unread for 8 s; \
         target gone {waited:?} after asking to exit"
    );
    assert_eq!(status, 0, "{stderr}");
    assert!(
        waited < Duration::from_millis(3500),
        "the target waited {waited:?} at its exit (hold 2 s): {stderr}"
    );
    // Queues of 1 + 16 MiB; the rest is memtrace's working set (symbols,
    // unwind tables, the ledger), which does not grow with the backlog.
    assert!(
        max_rss < start_rss + 64 * 1024,
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
