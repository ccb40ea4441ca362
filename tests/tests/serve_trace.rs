//! `memtrace serve --trace`: resident memory by call site over HTTP, on a
//! real traced process.

mod common;
mod serving;

use std::process::Command;
use std::time::Duration;

use common::{Killed, WithPid, call_site_rss, read_jsonl, require_root, wait_for};
use serving::{GroundTruthServed, Served};

#[test]
fn serve_trace_reports_call_sites_and_rejects_bad_input() {
    require_root();
    let GroundTruthServed {
        fixture: mut w,
        served,
        out,
        report,
    } = GroundTruthServed::start("serve-gt");
    let alpha = call_site_rss(&report, |f| f.ends_with("ground_truth::cache_alpha"));
    let expected = read_jsonl(&out)
        .iter()
        .find(|s| s["func"] == "cache_alpha")
        .and_then(|s| s["expected_rss"].as_u64())
        .expect("cache_alpha logged");
    assert_eq!(alpha, expected, "cache_alpha's resident bytes over HTTP");

    let (code, text) = served.get_text("/debug/memory/attributed?top=3");
    assert_eq!(code, 200);
    assert!(
        text.contains("by call site") && text.contains("cache_alpha"),
        "{text}"
    );
    for bad in ["top=abc", "top=-1", "top=99999999999", "color=blue"] {
        let (code, body) = served.get_text(&format!("/debug/memory/attributed.json?{bad}"));
        assert_eq!(code, 400, "{bad}: {body}");
        assert_eq!(body.trim().lines().count(), 1, "one-line reason: {body}");
    }

    // The target goes away: 410, and the server keeps running.
    assert_eq!(w.finish(), 0);
    let (code, body) = served.get_text("/debug/memory/attributed.json");
    assert_eq!(code, 410, "{body}");
    let (code, _) = served.get_text("/debug/memory.json");
    assert_eq!(code, 410);

    served.stop();
}

/// Every endpoint that shows the process, with `--trace`.
const ENDPOINTS: [&str; 9] = [
    "/debug/memory",
    "/debug/memory.json",
    "/debug/memory/attributed",
    "/debug/memory/attributed.json",
    "/debug/memory/history.json",
    "/debug/pprof/memtrace",
    "/debug/memory/ui",
    "/debug/memory/flamegraph.svg",
    "/metrics",
];

/// The served process exits and a new process gets its pid: every
/// endpoint answers 410 rather than show the newcomer, and the server
/// keeps running.
#[test]
fn a_reused_pid_is_not_served() {
    require_root();
    let mut first = Killed(
        Command::new("/bin/sleep")
            .arg("600")
            .spawn()
            .expect("spawn sleep"),
    );
    let pid = first.0.id();
    let served = Served::start(pid);
    for path in ENDPOINTS {
        let (code, body) = served.get_text(path);
        assert_eq!(code, 200, "{path} while the process lives: {body}");
    }

    first.0.kill().expect("kill the served process");
    first.0.wait().expect("reap it");
    let second = WithPid::spawn(pid, "/bin/sleep", &["600"])
        .unwrap_or_else(|e| panic!("starting a process as pid {pid}: {e}"));
    // Past the exec: the pid is `sleep` again, started later.
    assert!(
        wait_for(Duration::from_secs(10), || {
            std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p.ends_with("sleep"))
        }),
        "pid {pid} never ran sleep"
    );
    for path in ENDPOINTS {
        let (code, body) = served.get_text(path);
        assert_eq!(code, 410, "{path} after pid {pid} was reused: {body}");
        assert!(body.contains("names another process"), "{path}: {body}");
    }
    drop(second);
    served.stop();
}
