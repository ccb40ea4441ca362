//! The report at the peak (`--report-at`): a fixture builds 300 MiB in
//! `build_peak`, says so with its own anonymous RSS from smaps_rollup,
//! and waits; once memtrace has printed a peak line at that height, the
//! fixture frees the 300 MiB and exits. The peak report must show the
//! 300 MiB on `build_peak`, at the height the kernel gave the fixture; the
//! exit report must not. No sleeps: each step waits for the line before.

mod common;

use std::{
    io::{BufRead as _, BufReader, Read as _, Write},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use common::{
    Waiting, call_site_rss, check_schema, memtrace_bin, require_root, schema_validator,
    wait_with_timeout,
};
use serde_json::Value;

const PEAK: &str = env!("CARGO_BIN_EXE_peak");
const MIB: u64 = 1 << 20;
const BUILT: u64 = 300 * MIB;
/// How far below the fixture's own figure a peak capture may be: the
/// kernel's RSS counters that memtrace samples to notice a peak are
/// per-CPU approximations (at most 64 pages a CPU here).
const SAMPLE_SLACK: u64 = MIB;

/// memtrace's stdout, line by line, as it comes.
struct Lines {
    rx: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Lines {
    fn new(out: impl std::io::Read + Send + 'static) -> Lines {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines {
            rx,
            seen: Vec::new(),
        }
    }

    /// The first line after those seen that `pred` accepts.
    fn until(&mut self, what: &str, mut pred: impl FnMut(&str) -> bool) -> String {
        loop {
            match self.rx.recv_timeout(Duration::from_secs(60)) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(e) => panic!(
                    "memtrace never printed {what} ({e}); it printed:\n{}",
                    self.tail()
                ),
            }
        }
    }

    /// Every remaining line, until memtrace closes stdout.
    fn rest(&mut self) {
        while let Ok(line) = self.rx.recv_timeout(Duration::from_secs(60)) {
            self.seen.push(line);
        }
    }

    fn tail(&self) -> String {
        let from = self.seen.len().saturating_sub(20);
        self.seen[from..].join("\n")
    }

    /// The JSON objects of type `kind`.
    fn objects(&self, kind: &str) -> Vec<Value> {
        self.seen
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["type"] == kind)
            .collect()
    }
}

/// The fixture's `built PID ANON` line: its own anonymous RSS.
fn built_anon(line: &str) -> u64 {
    line.split_whitespace()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("not a `built PID ANON` line: {line:?}"))
}

/// Wait for a peak line at least as high as the fixture said it is.
fn wait_for_peak(lines: &mut Lines, anon: u64) -> Value {
    let line = lines.until("a peak line at the fixture's height", |l| {
        serde_json::from_str::<Value>(l).is_ok_and(|v| {
            v["type"] == "peak" && v["anon_rss_bytes"].as_u64().unwrap_or(0) + SAMPLE_SLACK >= anon
        })
    });
    serde_json::from_str(&line).expect("peak line is JSON")
}

/// Resident bytes of the call sites whose function is `build_peak`.
fn build_peak_rss(report: &Value) -> u64 {
    call_site_rss(report, |f| f.contains("build_peak"))
}

/// The checks on a trace of the fixture: `anon` is the fixture's own
/// anonymous RSS at its peak.
fn check_reports(lines: &Lines, anon: u64, pid: u64) {
    let reports = lines.objects("report");
    let at = |which: &str| -> &Value {
        reports
            .iter()
            .find(|r| r["at"] == which && r["pid"] == pid)
            .unwrap_or_else(|| {
                panic!(
                    "no report at {which}; reports at {:?}; output:\n{}",
                    reports.iter().map(|r| r["at"].clone()).collect::<Vec<_>>(),
                    lines.tail()
                )
            })
    };
    let (peak, exit) = (at("peak"), at("exit"));
    assert_eq!(reports.len(), 2, "one peak and one exit report");
    let peak_anon = peak["anon_rss_bytes"].as_u64().expect("anon_rss_bytes");
    let site = build_peak_rss(peak);
    println!(
        "fixture's smaps_rollup at its peak: {anon} B; peak report: {peak_anon} B anonymous, \
         build_peak {site} B; exit report: {} B anonymous, build_peak {} B",
        exit["anon_rss_bytes"],
        build_peak_rss(exit)
    );
    // The totals are smaps's at the capture: the fixture's own figure
    // (it waits, still, at its peak), and attributed + untraced add up.
    assert!(
        peak_anon + SAMPLE_SLACK >= anon && peak_anon <= anon + 64 * 1024,
        "peak report's anonymous RSS {peak_anon} B, the kernel's at the peak {anon} B"
    );
    assert_eq!(
        peak["attributed_rss_bytes"].as_u64().unwrap_or(0)
            + peak["untraced_rss_bytes"].as_u64().unwrap_or(0),
        peak_anon,
        "attributed + untraced = anonymous RSS"
    );
    assert!(
        site + SAMPLE_SLACK >= BUILT && site <= BUILT,
        "the peak report holds ~300 MiB on build_peak, has {site} B:\n{peak}"
    );
    assert_eq!(
        build_peak_rss(exit),
        0,
        "build_peak's memory was freed before exit"
    );
    assert!(exit["anon_rss_bytes"].as_u64().unwrap_or(u64::MAX) < 64 * MIB);
}

fn spawn_memtrace(args: &[&str]) -> Child {
    require_root();
    Command::new(memtrace_bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn memtrace")
}

fn stderr_of(mt: &mut Child) -> thread::JoinHandle<String> {
    let mut err = mt.stderr.take().expect("stderr piped");
    thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    })
}

#[test]
fn launch_mode_reports_the_peak_and_the_exit() {
    // Both reports are the default when launching.
    let mut mt = spawn_memtrace(&["--json", "--", PEAK]);
    let err = stderr_of(&mut mt);
    let stdin = mt.stdin.take().expect("stdin piped");
    // The fixture shares memtrace's stdin and stdout.
    let mut lines = Lines::new(mt.stdout.take().expect("stdout piped"));
    let built = lines.until("the fixture's built line", |l| l.starts_with("built "));
    let anon = built_anon(&built);
    let pid: u64 = built
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("pid");
    let peak_line = wait_for_peak(&mut lines, anon);
    assert_eq!(peak_line["pid"], pid);
    free_and_finish(stdin, &mut lines, &mut mt, err);
    assert!(lines.seen.iter().any(|l| l == "freed"), "{}", lines.tail());
    check_reports(&lines, anon, pid);
    validate(&lines);
}

/// Tell the fixture (on memtrace's stdin) to free and exit, read memtrace's
/// stdout to its end, and check memtrace exits 0.
fn free_and_finish(
    mut stdin: ChildStdin,
    lines: &mut Lines,
    mt: &mut Child,
    err: thread::JoinHandle<String>,
) {
    stdin
        .write_all(b"free\n")
        .expect("tell the fixture to free");
    drop(stdin);
    lines.rest();
    let status = wait_with_timeout(mt, Duration::from_secs(60));
    assert_eq!(
        status,
        0,
        "memtrace failed: {}",
        err.join().unwrap_or_default()
    );
}

/// memtrace's JSON lines of a run (the peak lines and both reports among
/// them) against the documented schema.
fn validate(lines: &Lines) {
    let validator = schema_validator();
    for v in lines
        .seen
        .iter()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str::<Value>(l).expect("memtrace's lines are JSON"))
    {
        check_schema(&validator, &v);
    }
}

#[test]
fn pid_mode_reports_the_peak_when_asked() {
    let mut fixture = Waiting::start(PEAK, &[]);
    let pid = fixture.pid.to_string();
    let mut mt = spawn_memtrace(&["--json", "--report-at", "both", "--pid", &pid]);
    let mut err = BufReader::new(mt.stderr.take().expect("stderr piped"));
    let mut head = String::new();
    while !head.contains("tracing pid") {
        if err.read_line(&mut head).unwrap_or(0) == 0 {
            panic!("memtrace ended before tracing: {head}");
        }
    }
    let err = thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let mut lines = Lines::new(mt.stdout.take().expect("stdout piped"));
    fixture.go();
    let anon = built_anon(&fixture.expect_line("built "));
    wait_for_peak(&mut lines, anon);
    fixture.go();
    fixture.expect_line("freed");
    assert_eq!(fixture.finish(), 0);
    lines.rest();
    let status = wait_with_timeout(&mut mt, Duration::from_secs(60));
    let stderr = err.join().unwrap_or_default();
    assert_eq!(status, 0, "memtrace failed: {head}{stderr}");
    check_reports(&lines, anon, u64::from(fixture.pid));
}

#[test]
fn report_at_exit_prints_no_peak() {
    let mut mt = spawn_memtrace(&["--json", "--quiet", "--report-at", "exit", "--", PEAK]);
    let err = stderr_of(&mut mt);
    let stdin = mt.stdin.take().expect("stdin piped");
    let mut lines = Lines::new(mt.stdout.take().expect("stdout piped"));
    lines.until("the fixture's built line", |l| l.starts_with("built "));
    free_and_finish(stdin, &mut lines, &mut mt, err);
    let ats: Vec<Value> = lines
        .objects("report")
        .iter()
        .map(|r| r["at"].clone())
        .collect();
    assert_eq!(ats, vec![Value::from("exit")], "{}", lines.tail());
    assert!(lines.objects("peak").is_empty(), "no peak tracking asked");
}
