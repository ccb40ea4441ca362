//! A running `memtrace serve --trace` on a fixture, and plain HTTP GETs to
//! it, for the tests of its endpoints.

#![allow(dead_code, reason = "each test binary uses part of this module")]

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::common::{memtrace_bin, require_root, wait_with_timeout};

/// `memtrace serve --trace --pid PID` on a free loopback port.
pub struct Served {
    pub child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
}

impl Served {
    pub fn start(pid: u32) -> Served {
        Served::start_with(pid, &[])
    }

    /// [`Served::start`] with more `serve` flags.
    pub fn start_with(pid: u32, extra: &[&str]) -> Served {
        require_root();
        let mut child = Command::new(memtrace_bin())
            .args([
                "serve",
                "--trace",
                "--pid",
                &pid.to_string(),
                "--listen",
                "127.0.0.1:0",
            ])
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn memtrace serve");
        let mut err = BufReader::new(child.stderr.take().expect("stderr"));
        let mut line = String::new();
        err.read_line(&mut line)
            .expect("serve says where it listens");
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_string();
        Served { child, addr }
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// GET `path`: (status code, body bytes).
    pub fn get(&self, path: &str) -> (u16, Vec<u8>) {
        let mut s = TcpStream::connect(&self.addr).expect("connect to memtrace serve");
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .expect("send");
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

    /// GET `path` as text.
    pub fn get_text(&self, path: &str) -> (u16, String) {
        let (code, body) = self.get(path);
        (code, String::from_utf8_lossy(&body).into_owned())
    }

    /// Stop it with SIGINT; it exits 0.
    pub fn stop(mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        assert_eq!(
            wait_with_timeout(&mut self.child, Duration::from_secs(20)),
            0,
            "memtrace serve exit status"
        );
    }
}

impl Drop for Served {
    /// A failed test does not leave the server (and its eBPF programs)
    /// behind.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
