//! `memtrace::serve` over a real socket, with a minimal HTTP/1.1 client.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;

use memtrace::proc::pid::Identity;

/// Start the server for `pid` on an ephemeral loopback port.
fn start(pid: u32) -> SocketAddr {
    start_with(pid, memtrace::serve::Limits::default())
}

/// The same with connection limits of the test's choosing.
fn start_with(pid: u32, limits: memtrace::serve::Limits) -> SocketAddr {
    start_pinned(Identity::of(pid).expect("pin the process"), limits)
}

/// The same for a process pinned as the test says.
fn start_pinned(process: Identity, limits: memtrace::serve::Limits) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            tx.send(listener.local_addr().expect("addr"))
                .expect("send addr");
            let app = memtrace::serve::router(process);
            memtrace::serve::serve_with(listener, app, limits, std::future::pending())
                .await
                .expect("serve");
        });
    });
    rx.recv().expect("server address")
}

/// GET `path`; returns (status, body).
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read response");
    let status = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn text_json_and_bad_queries() {
    let addr = start(std::process::id());
    let (status, body) = get(addr, "/debug/memory?top=3");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("=== Top 3 regions by RSS"));

    let (status, body) = get(addr, "/debug/memory.json?top=2");
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON body");
    assert_eq!(v["regions"].as_array().map(Vec::len), Some(2));

    let (status, body) = get(addr, "/debug/memory.json?all=1");
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON body");
    assert_eq!(v["regions_listed"], "all");

    for bad in [
        "top=abc",
        "top=-1",
        "top=2000000",
        "top=99999999999999999999999",
        "all=maybe",
    ] {
        let (status, body) = get(addr, &format!("/debug/memory?{bad}"));
        assert_eq!(status, 400, "{bad}");
        assert_eq!(
            body.trim_end().lines().count(),
            1,
            "one-line reason: {body:?}"
        );
    }
    // Large but sane: capped, not rejected.
    let (status, _) = get(addr, "/debug/memory?top=50000");
    assert_eq!(status, 200);

    let (status, _) = get(addr, "/nope");
    assert_eq!(status, 404);
}

/// The endpoints that show the attributed report say, with 404, that
/// they need tracing, when the server is not tracing.
#[test]
fn traced_endpoints_need_tracing() {
    let addr = start(std::process::id());
    for path in [
        "/debug/pprof/memtrace",
        "/debug/memory/ui",
        "/debug/memory/flamegraph.svg",
    ] {
        let (status, body) = get(addr, path);
        assert_eq!(status, 404, "{path}: {body}");
        assert!(body.contains("--trace"), "{path}: says what to do: {body}");
    }
}

#[test]
fn vanished_process_gives_410_and_the_server_keeps_running() {
    let mut child = Command::new("sleep").arg("60").spawn().expect("spawn");
    let pid = child.id();
    let addr = start(pid);
    let (status, _) = get(addr, "/debug/memory");
    assert_eq!(status, 200);
    child.kill().expect("kill");
    child.wait().expect("reap");
    for _ in 0..2 {
        let (status, body) = get(addr, "/debug/memory.json");
        assert_eq!(status, 410, "{body}");
        assert!(body.contains("no process"), "{body}");
    }
}

/// A pid that names another process than the one pinned (as after the
/// process exited and its pid was reused) gets 410 on every endpoint that
/// shows the process, before any handler reads it.
#[test]
fn a_pid_naming_another_process_gives_410() {
    let me = Identity::of(std::process::id()).expect("own identity");
    let before = Identity {
        start_time: me.start_time + 1,
        ..me
    };
    let addr = start_pinned(before, memtrace::serve::Limits::default());
    for path in [
        "/debug/memory",
        "/debug/memory.json?top=1",
        "/debug/memory/attributed",
        "/debug/memory/attributed.json",
        "/debug/memory/history.json",
        "/debug/pprof/memtrace",
        "/debug/memory/ui",
        "/debug/memory/flamegraph.svg",
        "/metrics",
    ] {
        let (status, body) = get(addr, path);
        assert_eq!(status, 410, "{path}: {body}");
        assert!(body.contains("names another process"), "{path}: {body}");
    }
    let (status, _) = get(addr, "/nope");
    assert_eq!(status, 404, "unknown paths are still 404");
}

#[test]
fn listen_address_policy() {
    use memtrace::serve::check_listen_addrs;
    let lo: SocketAddr = "127.0.0.1:6060".parse().expect("addr");
    let lo6: SocketAddr = "[::1]:6060".parse().expect("addr");
    let any: SocketAddr = "0.0.0.0:6060".parse().expect("addr");
    assert!(check_listen_addrs(&[lo, lo6], false).is_ok());
    let err = check_listen_addrs(&[any], false).expect_err("refused");
    assert!(err.to_string().contains("--allow-remote"));
    assert!(check_listen_addrs(&[any], true).is_ok());
}

#[test]
fn idle_and_half_open_connections_cannot_starve_the_server() {
    use std::time::{Duration, Instant};
    let limits = memtrace::serve::Limits {
        max_connections: 64,
        header_timeout: Duration::from_millis(500),
        max_connection_time: Duration::from_secs(5),
    };
    let addr = start_with(std::process::id(), limits);
    // 300 clients that connect and never finish a request: half of them
    // silent, half stuck in the middle of their headers.
    let mut idle = Vec::new();
    for i in 0..300 {
        let mut s = TcpStream::connect(addr).expect("connect");
        if i % 2 == 0 {
            s.write_all(b"GET /debug/memory HTTP/1.1\r\nHost: x\r\n")
                .expect("partial header");
        }
        idle.push(s);
    }
    let t = Instant::now();
    let (status, _) = get(addr, "/debug/memory?top=1");
    let waited = t.elapsed();
    assert_eq!(status, 200);
    assert!(
        waited < Duration::from_secs(4),
        "a real request waited {waited:?} behind 300 stalled connections"
    );
    // The stalled connections are closed by the server: after the header
    // timeout, or at once to make room (reset, when the server closed it
    // before reading what it had sent).
    let s = &mut idle[0];
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = [0u8; 256];
    let n = match s.read(&mut buf) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
        Err(e) => panic!("a stalled connection was still open after 5 s ({e})"),
    };
    let reply = String::from_utf8_lossy(&buf[..n]);
    assert!(
        n == 0 || reply.starts_with("HTTP/1.1 408"),
        "a stalled connection is closed, got {reply:?}"
    );
}
