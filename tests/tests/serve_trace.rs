//! `memtrace serve --trace`: resident memory by call site over HTTP, on a
//! real traced process.

mod common;

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    process::{Command, Stdio},
    time::Duration,
};

use common::{Waiting, memtrace_bin, read_jsonl, require_root, temp_path, wait_with_timeout};
use serde_json::Value;

const GROUND_TRUTH: &str = env!("CARGO_BIN_EXE_ground_truth");

/// GET `path`; (status code, body).
fn get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to memtrace serve");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read response");
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad response {head:?}"));
    (code, body.to_string())
}

#[test]
fn serve_trace_reports_call_sites_and_rejects_bad_input() {
    require_root();
    let out = temp_path("serve-gt");
    let mut w = Waiting::start(GROUND_TRUTH, &["--out", out.to_str().expect("utf8")]);
    let mut serve = Command::new(memtrace_bin())
        .args([
            "serve",
            "--trace",
            "--pid",
            &w.pid.to_string(),
            "--listen",
            "127.0.0.1:0",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn memtrace serve");
    let mut err = BufReader::new(serve.stderr.take().expect("stderr"));
    let mut line = String::new();
    err.read_line(&mut line)
        .expect("serve says where it listens");
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();

    w.go();
    w.expect_line("done");
    std::thread::sleep(Duration::from_millis(300));
    let (code, body) = get(&addr, "/debug/memory/attributed.json?top=0");
    assert_eq!(code, 200, "{body}");
    let report: Value = serde_json::from_str(&body).expect("JSON report");
    let alpha: u64 = report["call_sites"]
        .as_array()
        .expect("call_sites")
        .iter()
        .filter(|s| {
            s["call_site"]["function"]
                .as_str()
                .is_some_and(|f| f.ends_with("ground_truth::cache_alpha"))
        })
        .map(|s| s["rss_bytes"].as_u64().unwrap_or(0))
        .sum();
    let expected = read_jsonl(&out)
        .iter()
        .find(|s| s["func"] == "cache_alpha")
        .and_then(|s| s["expected_rss"].as_u64())
        .expect("cache_alpha logged");
    assert_eq!(alpha, expected, "cache_alpha's resident bytes over HTTP");

    let (code, text) = get(&addr, "/debug/memory/attributed?top=3");
    assert_eq!(code, 200);
    assert!(
        text.contains("by call site") && text.contains("cache_alpha"),
        "{text}"
    );
    for bad in ["top=abc", "top=-1", "top=99999999999", "color=blue"] {
        let (code, body) = get(&addr, &format!("/debug/memory/attributed.json?{bad}"));
        assert_eq!(code, 400, "{bad}: {body}");
        assert_eq!(body.trim().lines().count(), 1, "one-line reason: {body}");
    }

    // The target goes away: 410, and the server keeps running.
    assert_eq!(w.finish(), 0);
    let (code, body) = get(&addr, "/debug/memory/attributed.json");
    assert_eq!(code, 410, "{body}");
    let (code, _) = get(&addr, "/debug/memory.json");
    assert_eq!(code, 410);

    // SAFETY: signalling our own child.
    unsafe { libc::kill(serve.id() as i32, libc::SIGINT) };
    assert_eq!(wait_with_timeout(&mut serve, Duration::from_secs(20)), 0);
}
