//! The `memtrace snapshot` binary end to end.

use std::process::{Command, Output};

fn memtrace(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_memtrace"))
        .args(args)
        .output()
        .expect("run memtrace")
}

fn assert_one_line_error(out: &Output, needle: &str) {
    assert!(!out.status.success(), "expected failure");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr:?}");
    assert!(stderr.contains(needle), "{needle:?} not in {stderr:?}");
}

#[test]
fn json_parses_and_matches_schema() {
    let pid = std::process::id().to_string();
    let out = memtrace(&["snapshot", "--pid", &pid, "--json", "--top", "5"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON output");
    assert_eq!(v["pid"].as_u64(), Some(u64::from(std::process::id())));
    assert!(v["totals"]["rss_bytes"].as_u64().is_some_and(|n| n > 0));
    assert_eq!(v["regions"].as_array().map(Vec::len), Some(5));
    let all = memtrace(&["snapshot", "--pid", &pid, "--json", "--all"]);
    let v: serde_json::Value = serde_json::from_slice(&all.stdout).expect("JSON output");
    assert_eq!(
        v["regions"].as_array().map(Vec::len),
        v["region_count"].as_u64().map(|n| n as usize)
    );
}

#[test]
fn text_and_bytes() {
    let pid = std::process::id().to_string();
    let out = memtrace(&["snapshot", "--pid", &pid]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("=== Totals ===") && text.contains("ADDRESS-RANGE"));
    let out = memtrace(&["snapshot", "--pid", &pid, "--bytes"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains(" KiB") && !text.contains(" MiB"),
        "--bytes prints integers"
    );
}

#[test]
fn bad_pids_fail_with_one_line() {
    assert_one_line_error(
        &memtrace(&["snapshot", "--pid", "99999999"]),
        "no process with pid 99999999",
    );
    if std::fs::read_to_string("/proc/2/comm").is_ok_and(|c| c.trim() == "kthreadd") {
        assert_one_line_error(&memtrace(&["snapshot", "--pid", "2"]), "kernel thread");
    }
    let out = memtrace(&["snapshot", "--pid", "abc"]);
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}

#[test]
fn permission_denied_says_what_is_needed() {
    // Only root can drop to another user to provoke EACCES.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    use std::os::unix::process::CommandExt as _;
    let exe = env!("CARGO_BIN_EXE_memtrace");
    let out = Command::new(exe)
        .args(["snapshot", "--pid", "1"])
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run memtrace as nobody");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("Permission denied")
        && stderr.contains("os error 13")
        && !stderr.contains("smaps")
    {
        // The binary itself was not executable by nobody (e.g. a 0700 target dir).
        return;
    }
    assert_one_line_error(&out, "CAP_SYS_PTRACE");
}
