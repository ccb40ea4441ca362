//! A running `memtrace serve` on a loopback port, and plain HTTP GETs to
//! it (or to any HTTP server), for the tests of its endpoints.

#![allow(dead_code, reason = "each test binary uses part of this module")]

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::Value;

use crate::common::{Waiting, memtrace_bin, require_root, temp_path, wait_with_timeout};

/// The ground-truth fixture, having logged what it mapped to `out`, served
/// by `memtrace serve --trace` from before its first mapping, and the
/// attributed report of it once it has finished mapping.
pub struct GroundTruthServed {
    pub fixture: Waiting,
    pub served: Served,
    /// The fixture's log of its mappings (JSON lines).
    pub out: std::path::PathBuf,
    /// `/debug/memory/attributed.json?top=0`.
    pub report: Value,
}

impl GroundTruthServed {
    pub fn start(name: &str) -> GroundTruthServed {
        let out = temp_path(name);
        let mut fixture = Waiting::start(
            env!("CARGO_BIN_EXE_ground_truth"),
            &["--out", out.to_str().expect("utf8")],
        );
        let served = Served::start(fixture.pid);
        fixture.go();
        fixture.expect_line("done");
        // The fixture now waits for stdin: its memory no longer changes.
        std::thread::sleep(Duration::from_millis(300));
        let (code, body) = served.get_text("/debug/memory/attributed.json?top=0");
        assert_eq!(code, 200, "{body}");
        let report = serde_json::from_str(&body).expect("JSON report");
        GroundTruthServed {
            fixture,
            served,
            out,
            report,
        }
    }
}

/// A `memtrace serve` on a free loopback port, killed when dropped so a
/// failed test leaves no server (and no eBPF programs) behind.
pub struct Served {
    pub child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// What it wrote to stderr after its address line, drained by a
    /// thread of its own: were the pipe left unread (or closed), its
    /// writes would block (or fail).
    stderr: Arc<Mutex<String>>,
}

impl Served {
    /// `memtrace serve --trace --pid PID`.
    pub fn start(pid: u32) -> Served {
        Served::start_with(pid, &[])
    }

    /// [`Served::start`] with more `serve` flags.
    pub fn start_with(pid: u32, extra: &[&str]) -> Served {
        let pid = pid.to_string();
        let mut args = vec!["--trace", "--pid", &pid];
        args.extend_from_slice(extra);
        Served::serve(&args)
    }

    /// `memtrace serve ARGS --listen 127.0.0.1:0`, once it has said where
    /// it listens.
    pub fn serve(args: &[&str]) -> Served {
        Served::serve_with(args, |_| {})
    }

    /// [`Served::serve`] with the command adjusted by `setup` first (its
    /// resource limits, say).
    pub fn serve_with(args: &[&str], setup: impl FnOnce(&mut Command)) -> Served {
        require_root();
        let mut command = Command::new(memtrace_bin());
        command
            .arg("serve")
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        setup(&mut command);
        let mut child = command.spawn().expect("spawn memtrace serve");
        let mut err = BufReader::new(child.stderr.take().expect("stderr"));
        // Alert lines from the first samples may come before it.
        let mut head = String::new();
        let addr = loop {
            let mut line = String::new();
            let n = err
                .read_line(&mut line)
                .expect("serve says where it listens");
            head.push_str(&line);
            if let Some(rest) = line.split("http://").nth(1) {
                break rest.split('/').next().unwrap_or_default().to_string();
            }
            assert!(n > 0, "no address in {head:?}");
        };
        let stderr = Arc::new(Mutex::new(head));
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in err.lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap_or_else(|e| e.into_inner());
                s.push_str(&line);
                s.push('\n');
            }
        });
        Served {
            child,
            addr,
            stderr,
        }
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// GET `path` as text.
    pub fn get_text(&self, path: &str) -> (u16, String) {
        get_text(&self.addr, path)
    }

    /// What it has written to stderr after its address line so far.
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stop it with SIGINT, as a user would; it exits 0.
    pub fn stop(mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = wait_with_timeout(&mut self.child, Duration::from_secs(20));
        assert_eq!(
            status,
            0,
            "memtrace serve exit status; stderr:\n{}",
            self.stderr()
        );
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// GET `path` from `addr` (`HOST:PORT`) over HTTP/1.0, so the body is
/// never chunked and ends with the connection: (status code, body bytes).
pub fn get(addr: &str, path: &str) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").expect("send");
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).expect("read response");
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(&resp)));
    let head = String::from_utf8_lossy(&resp[..split]).into_owned();
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad response {head:?}"));
    (code, resp[split + 4..].to_vec())
}

/// [`get`] with the body as text.
pub fn get_text(addr: &str, path: &str) -> (u16, String) {
    let (code, body) = get(addr, path);
    (code, String::from_utf8_lossy(&body).into_owned())
}
