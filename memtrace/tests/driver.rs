//! The tracing loop over a scripted event source: no root, no eBPF. The
//! events describe a mapping this test really makes, so the report joins
//! them with this process's real smaps and pagemap.

use std::{
    collections::VecDeque,
    io::{self, Write},
    time::Duration,
};

use memtrace::{
    session::{
        Session,
        driver::{self, DriveOptions, StopFlags},
        output::{Format, Output},
    },
    trace::{
        Lost, TraceError,
        event::{Call, Event},
        source::EventSource,
    },
};
use serde_json::Value;

/// Hands out scripted batches of events, one batch per wait.
struct Script {
    batches: VecDeque<Vec<Event>>,
}

impl EventSource for Script {
    fn wait_events(&mut self, timeout: Duration, out: &mut Vec<Event>) -> usize {
        match self.batches.pop_front() {
            Some(batch) => {
                let n = batch.len();
                out.extend(batch);
                n
            }
            None => {
                std::thread::sleep(timeout);
                0
            }
        }
    }
    fn drain(&mut self, out: &mut Vec<Event>) -> bool {
        while let Some(b) = self.batches.pop_front() {
            out.extend(b);
        }
        true
    }
    fn lost(&self) -> Lost {
        Lost::default()
    }
    fn stack(&self, _: u32) -> Vec<u64> {
        Vec::new()
    }
    fn add_pid(&mut self, _: u32) -> Result<(), TraceError> {
        Ok(())
    }
    fn remove_pid(&mut self, _: u32) {}
}

const LEN: usize = 4 << 20;

/// Map and touch LEN bytes; the event that tells memtrace so.
fn map_for_real() -> (u64, Event) {
    // SAFETY: a fresh private anonymous mapping, written within bounds and
    // left mapped for the rest of the test process.
    let addr = unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            LEN,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(p, libc::MAP_FAILED, "mmap");
        std::ptr::write_bytes(p.cast::<u8>(), 1, LEN);
        p as u64
    };
    let me = std::process::id();
    let ev = Event {
        time_ns: memtrace::session::monotonic_ns(),
        pid: me,
        tid: me,
        call: Call::Mmap {
            addr: 0,
            len: LEN as u64,
            prot: (libc::PROT_READ | libc::PROT_WRITE) as u32,
            flags: (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u32,
            fd: -1,
            offset: 0,
        },
        result: addr as i64,
        stack_id: None,
        ip: 0,
        ret_addr: None,
        user: None,
        call_stack: None,
    };
    (addr, ev)
}

fn session_with(events: Vec<Event>) -> Session<Script> {
    let mut session = Session::with_source(
        Script {
            batches: VecDeque::from([events]),
        },
        false,
    );
    session.add_pid(std::process::id()).expect("add pid");
    session
}

fn opts() -> DriveOptions {
    DriveOptions {
        duration: Some(Duration::from_millis(200)),
        ..DriveOptions::default()
    }
}

#[test]
fn json_stream_and_report_of_a_scripted_mapping() {
    let (addr, ev) = map_for_real();
    let mut session = session_with(vec![ev]);
    let mut out = Output::new(Vec::new(), Format::Json, false, 10, 1 << 20);
    let mut notes = Vec::new();
    let outcome = driver::drive(
        &mut session,
        std::process::id(),
        None,
        &opts(),
        &mut out,
        &StopFlags::default(),
        &mut |m: &str| notes.push(m.to_owned()),
    )
    .expect("drive");
    assert!(!outcome.output_closed);
    assert_eq!(outcome.exit_code, 0);
    let text = String::from_utf8(out.finish().expect("output")).expect("utf8");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let types: Vec<&str> = lines.iter().filter_map(|v| v["type"].as_str()).collect();
    assert_eq!(
        types,
        ["event", "report", "summary"],
        "{text}\nnotes: {notes:?}"
    );
    assert_eq!(lines[0]["kind"], "mmap");
    assert_eq!(lines[0]["addr"], format!("{addr:#x}"));
    let report = &lines[1];
    assert_eq!(report["call_site_count"], 1, "{report}");
    assert_eq!(
        report["call_sites"][0]["rss_bytes"].as_u64(),
        Some(LEN as u64),
        "the touched mapping is attributed page for page: {report}"
    );
    assert_eq!(lines[2]["events"]["mmap"], 1);
    assert_eq!(lines[2]["bytes_mapped"].as_u64(), Some(LEN as u64));
    assert_eq!(
        outcome.report.map(|r| r.call_sites.len()),
        Some(1),
        "the final report is handed back for --folded/--flamegraph"
    );
}

#[test]
fn text_output_ends_with_the_summary() {
    let (_, ev) = map_for_real();
    let mut session = session_with(vec![ev]);
    let mut out = Output::new(Vec::new(), Format::Text, false, 10, 1 << 20);
    driver::drive(
        &mut session,
        std::process::id(),
        None,
        &opts(),
        &mut out,
        &StopFlags::default(),
        &mut |_: &str| {},
    )
    .expect("drive");
    let text = String::from_utf8(out.finish().expect("output")).expect("utf8");
    assert!(text.contains(" mmap "), "{text}");
    assert!(text.contains("=== Resident anonymous memory by call site"));
    assert!(
        text.trim_end().ends_with("pending table full: 0)"),
        "{text}"
    );
}

/// A reader that went away: every write fails with EPIPE.
struct ClosedPipe;

impl Write for ClosedPipe {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::ErrorKind::BrokenPipe.into())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_closed_output_ends_the_trace_quietly() {
    let (_, ev) = map_for_real();
    let mut session = session_with(vec![ev]);
    let mut out = Output::new(ClosedPipe, Format::Text, false, 10, 1 << 20);
    let outcome = driver::drive(
        &mut session,
        std::process::id(),
        None,
        &DriveOptions::default(),
        &mut out,
        &StopFlags::default(),
        &mut |_: &str| {},
    )
    .expect("a closed pipe is not an error");
    assert!(outcome.output_closed);
}
