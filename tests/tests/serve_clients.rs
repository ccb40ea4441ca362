//! `memtrace serve` held by clients that never finish a request: idle
//! connections, slowloris ones (headers sent a byte at a time), and more
//! connections than the server has file descriptors for. A real request
//! must still be answered at once: the server closes the oldest idle
//! connection to make room, rather than leave the new client waiting in
//! the listen backlog until the header timeout (10 s) frees a place.

mod common;
mod serving;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::Killed;
use serving::Served;

/// How long a real request may wait behind the held connections. Without
/// room made for it, it waits ~9 s (for the 10 s header timeout).
const PROMPT: Duration = Duration::from_secs(1);

/// A process to serve, killed when the test ends.
fn target() -> Killed {
    Killed(
        Command::new("/bin/sleep")
            .arg("600")
            .spawn()
            .expect("spawn sleep"),
    )
}

/// `n` connections to `addr` that have sent `head` (maybe nothing) and
/// send no more.
fn hold(addr: &str, n: usize, head: &[u8]) -> Vec<TcpStream> {
    (0..n)
        .map(|i| {
            let mut s = TcpStream::connect(addr)
                .unwrap_or_else(|e| panic!("connection {i} to {addr}: {e}"));
            s.write_all(head).expect("send the start of a request");
            s
        })
        .collect()
}

/// GET `path` from `addr`: the status and how long the answer took.
fn timed_get(addr: &str, path: &str) -> (u16, Duration) {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    // Bounded, should the server never answer.
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut response = Vec::new();
    s.read_to_end(&mut response)
        .unwrap_or_else(|e| panic!("no answer to GET {path} after {:?}: {e}", start.elapsed()));
    let waited = start.elapsed();
    let head = String::from_utf8_lossy(&response[..response.len().min(64)]).into_owned();
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad response {head:?}"));
    (code, waited)
}

/// Whether the server has closed `s` (end of stream or reset) within
/// `limit`.
fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).expect("read timeout");
    let mut buf = [0u8; 512];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

#[test]
fn idle_and_slowloris_connections_do_not_delay_a_request() {
    let target = target();
    let pid = target.0.id().to_string();
    let served = Served::serve(&["--pid", &pid]);
    let addr = served.addr.clone();

    let mut idle = hold(&addr, 300, b"");
    let slow = hold(&addr, 40, b"GET /debug/memory HTTP/1.1\r\nX-Slow: ");
    // The slowloris clients keep sending, a byte each every 100 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let dripping = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut slow = slow;
            // At most 30 s, should the test fail before it says stop.
            for _ in 0..300 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                for s in &mut slow {
                    // The server may have closed it: that is allowed.
                    let _ = s.write_all(b"a");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };

    let (code, waited) = timed_get(&addr, "/debug/memory?top=1");
    println!("answered in {waited:?} behind 300 idle and 40 slowloris connections");
    stop.store(true, Ordering::Relaxed);
    dripping.join().expect("slowloris thread");
    assert_eq!(code, 200);
    assert!(
        waited < PROMPT,
        "a real request waited {waited:?} behind 300 idle and 40 slowloris connections"
    );
    // Room was made by closing the oldest.
    assert!(
        closed_within(&mut idle[0], Duration::from_secs(2)),
        "the oldest idle connection is still open"
    );
    served.stop();
}

#[test]
fn a_request_is_answered_when_idle_connections_take_every_descriptor() {
    let target = target();
    let pid = target.0.id().to_string();
    let served = Served::serve_with(&["--pid", &pid], |command| {
        use std::os::unix::process::CommandExt as _;
        let limit = libc::rlimit {
            rlim_cur: 128,
            rlim_max: 128,
        };
        // SAFETY: setrlimit is async-signal-safe and its argument lives
        // in the closure.
        unsafe {
            command.pre_exec(move || {
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    });
    let addr = served.addr.clone();

    // More than its 128 descriptors can hold.
    let idle = hold(&addr, 150, b"");
    let (code, waited) = timed_get(&addr, "/debug/memory?top=1");
    println!("answered in {waited:?} behind 150 idle connections with RLIMIT_NOFILE=128");
    assert_eq!(code, 200);
    assert!(
        waited < PROMPT,
        "a real request waited {waited:?} behind 150 idle connections with RLIMIT_NOFILE=128"
    );
    // And the next one too: the server still has descriptors to read with.
    let (code, waited) = timed_get(&addr, "/debug/memory.json?top=1");
    assert_eq!(code, 200);
    assert!(waited < PROMPT, "the second request waited {waited:?}");
    drop(idle);
    served.stop();
}
