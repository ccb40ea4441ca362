//! Running memtrace on fixture programs, for the integration tests.
//!
//! These tests load eBPF programs and trace processes: they need root (CI
//! and `cargo xtask test` run as root) and fail, not skip, without it.

#![allow(dead_code, reason = "each test binary uses part of this module")]

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

/// Fail clearly when not root: these tests need the kernel.
pub fn require_root() {
    // SAFETY: no arguments.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the eBPF integration tests load programs into the kernel: run them as root (`sudo cargo xtask test`)"
    );
}

/// The memtrace binary of this build: `target/PROFILE/memtrace`, beside
/// the `deps/` directory holding this test executable.
pub fn memtrace_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/PROFILE/deps");
    let bin = dir.join("memtrace");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo xtask test` does)",
        bin.display()
    );
    bin
}

/// A temporary file path unique to this test.
pub fn temp_path(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join("memtrace-tests");
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir.join(format!(
        "{tag}-{}-{:?}",
        std::process::id(),
        thread::current().id()
    ))
    .with_extension("jsonl")
}

/// JSON lines of a file.
pub fn read_jsonl(path: &Path) -> Vec<Value> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

/// A JSON number, or an address as memtrace writes it (`"0x…"`); negative
/// numbers wrap, unreadable values are `u64::MAX`.
pub fn num(v: &Value) -> u64 {
    if let Some(h) = v.as_str().and_then(|s| s.strip_prefix("0x")) {
        return u64::from_str_radix(h, 16).unwrap_or(u64::MAX);
    }
    v.as_u64()
        .unwrap_or_else(|| v.as_i64().map(|i| i as u64).unwrap_or(u64::MAX))
}

/// What one memtrace run printed.
pub struct Run {
    pub events: Vec<Value>,
    pub summary: Value,
    /// Any other JSON objects (reports).
    pub others: Vec<Value>,
    pub stderr: String,
    pub status: i32,
    /// Everything on stdout, JSON or not.
    pub stdout: String,
}

fn split_output(stdout: &str, stderr: String, status: i32) -> Run {
    let mut events = Vec::new();
    let mut summary = Value::Null;
    let mut others = Vec::new();
    for line in stdout.lines().filter(|l| l.starts_with('{')) {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("bad JSON from memtrace {line:?}: {e}"));
        match v["type"].as_str() {
            Some("event") => events.push(v),
            Some("summary") => summary = v,
            _ => others.push(v),
        }
    }
    Run {
        events,
        summary,
        others,
        stderr,
        status,
        stdout: stdout.to_owned(),
    }
}

/// Wait for a child with a deadline; kill it when the deadline passes.
pub fn wait_with_timeout(child: &mut Child, limit: Duration) -> i32 {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status.code().unwrap_or(-1);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process {} did not finish within {limit:?}", child.id());
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Collect a child's stdout and stderr in background threads.
fn collect(child: &mut Child) -> (thread::JoinHandle<String>, thread::JoinHandle<String>) {
    let mut out = child.stdout.take().expect("stdout piped");
    let mut err = child.stderr.take().expect("stderr piped");
    let o = thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let e = thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    (o, e)
}

/// Fail clearly when a tool a test runs is missing, naming the package to
/// install.
pub fn require_tool(tool: &str, package: &str) {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(
        found,
        "`{tool}` is missing: install the {package} package (apt-get install {package})"
    );
}

/// `memtrace ARGS -- FIXTURE FIXTURE_ARGS` (launch mode).
pub fn run_launch(memtrace_args: &[&str], fixture: &str, fixture_args: &[&str]) -> Run {
    let mut cmd = Command::new(memtrace_bin());
    cmd.args(memtrace_args)
        .arg("--")
        .arg(fixture)
        .args(fixture_args);
    run_command(cmd)
}

/// Run `cmd`, which runs memtrace (itself, or under a wrapper such as
/// `unshare`), and collect what memtrace printed.
pub fn run_command(mut cmd: Command) -> Run {
    require_root();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn memtrace");
    let (o, e) = collect(&mut child);
    let status = wait_with_timeout(&mut child, Duration::from_secs(120));
    let (stdout, stderr) = (o.join().unwrap_or_default(), e.join().unwrap_or_default());
    split_output(&stdout, stderr, status)
}

/// Read `stderr` until memtrace says which pid it traces; that pid and
/// the lines read.
fn read_until_tracing(err: &mut BufReader<std::process::ChildStderr>) -> (Option<u32>, String) {
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        match err.read_line(&mut line) {
            Ok(0) | Err(_) => return (None, seen),
            Ok(_) => {}
        }
        seen.push_str(&line);
        if let Some(rest) = line.split("tracing pid ").nth(1) {
            let pid = rest
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|p| p.parse().ok());
            return (pid, seen);
        }
    }
}

/// memtrace running in the background, past its `tracing pid` line.
pub struct Background {
    pub child: Child,
    /// The pid memtrace said it traces.
    pub target: u32,
    stderr_head: String,
    out: thread::JoinHandle<String>,
    err: thread::JoinHandle<String>,
}

impl Background {
    /// `memtrace ARGS -- CMD CMD_ARGS`, once CMD is traced.
    pub fn launch(memtrace_args: &[&str], cmd: &str, cmd_args: &[&str]) -> Background {
        require_root();
        let mut child = Command::new(memtrace_bin())
            .args(memtrace_args)
            .arg("--")
            .arg(cmd)
            .args(cmd_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn memtrace");
        let mut err = BufReader::new(child.stderr.take().expect("stderr piped"));
        let (target, stderr_head) = read_until_tracing(&mut err);
        let Some(target) = target else {
            let _ = child.kill();
            panic!("memtrace ended before tracing: {stderr_head}");
        };
        let err = thread::spawn(move || {
            let mut rest = String::new();
            let _ = err.read_to_string(&mut rest);
            rest
        });
        let mut out = child.stdout.take().expect("stdout piped");
        let out = thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        Background {
            child,
            target,
            stderr_head,
            out,
            err,
        }
    }

    /// Send `sig` to memtrace itself.
    pub fn signal(&self, sig: i32) {
        // SAFETY: signals our own child process.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Wait at most `limit` for memtrace to end (a panic after killing it
    /// otherwise); what it printed.
    pub fn finish(mut self, limit: Duration) -> Run {
        let status = wait_with_timeout(&mut self.child, limit);
        let mut stderr = self.stderr_head;
        stderr.push_str(&self.err.join().unwrap_or_default());
        split_output(&self.out.join().unwrap_or_default(), stderr, status)
    }
}

/// The state letter of `/proc/PID/stat` (`R`, `S`, `T`, `t`, `Z`…), if
/// the process exists.
pub fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// Poll `cond` every few milliseconds for at most `limit`.
pub fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        thread::sleep(Duration::from_millis(5));
    }
    cond()
}

/// A fixture started with `--wait`, blocked until [`Waiting::go`].
pub struct Waiting {
    pub child: Child,
    pub pid: u32,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Waiting {
    pub fn start(fixture: &str, args: &[&str]) -> Waiting {
        let mut cmd = Command::new(fixture);
        cmd.args(args).arg("--wait");
        Waiting::spawn(cmd)
    }

    /// Start `cmd`, which runs a fixture with `--wait` (itself, or under a
    /// wrapper that execs it).
    pub fn spawn(mut cmd: Command) -> Waiting {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn fixture");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut w = Waiting {
            child,
            pid: 0,
            stdin,
            lines: rx,
        };
        let ready = w.expect_line("ready");
        w.pid = ready
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .expect("ready line carries the pid");
        w
    }

    /// Wait for the fixture to print a line starting with `prefix`.
    pub fn expect_line(&mut self, prefix: &str) -> String {
        loop {
            match self.lines.recv_timeout(Duration::from_secs(60)) {
                Ok(l) if l.starts_with(prefix) => return l,
                Ok(_) => {}
                Err(e) => panic!("fixture never printed {prefix:?}: {e}"),
            }
        }
    }

    /// Close the fixture's stdin (its cue to exit) and wait for it.
    pub fn finish(&mut self) -> i32 {
        drop(self.stdin.take());
        wait_with_timeout(&mut self.child, Duration::from_secs(60))
    }

    /// Send one line to the fixture's stdin.
    pub fn go(&mut self) {
        let stdin = self.stdin.as_mut().expect("stdin piped");
        stdin.write_all(b"go\n").expect("write to fixture");
        stdin.flush().expect("flush fixture stdin");
    }
}

/// Attach `memtrace ARGS --pid PID` to a waiting fixture, let the fixture
/// run through `drive`, and collect memtrace's output after the fixture
/// exits (memtrace stops on its own then).
pub fn run_attached(
    memtrace_args: &[&str],
    mut w: Waiting,
    drive: impl FnOnce(&mut Waiting),
) -> Run {
    require_root();
    let mut mt = Command::new(memtrace_bin())
        .args(memtrace_args)
        .args(["--pid", &w.pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn memtrace");
    // memtrace says on stderr when the target is in the traced set.
    let mut err = BufReader::new(mt.stderr.take().expect("stderr piped"));
    let mut stderr = String::new();
    loop {
        let mut line = String::new();
        let n = err.read_line(&mut line).expect("read memtrace stderr");
        stderr.push_str(&line);
        if n == 0 {
            let _ = w.child.kill();
            panic!("memtrace ended before attaching: {stderr}");
        }
        if line.contains("tracing pid") {
            break;
        }
    }
    let err_thread = thread::spawn(move || {
        let mut rest = String::new();
        let _ = err.read_to_string(&mut rest);
        rest
    });
    let mut out = mt.stdout.take().expect("stdout piped");
    let out_thread = thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    drive(&mut w);
    if let Ok(Some(status)) = mt.try_wait() {
        let _ = w.child.kill();
        panic!(
            "memtrace exited ({status}) while its target was still running; stderr: {}",
            err_thread.join().unwrap_or_default()
        );
    }
    drop(w.stdin.take());
    let target_status = wait_with_timeout(&mut w.child, Duration::from_secs(60));
    stderr.push_str(&format!("[target exit status {target_status}]\n"));
    let status = wait_with_timeout(&mut mt, Duration::from_secs(60));
    stderr.push_str(&err_thread.join().unwrap_or_default());
    split_output(&out_thread.join().unwrap_or_default(), stderr, status)
}

/// The `{"type":"report"}` object of a run, or a panic that shows what
/// memtrace printed instead.
pub fn report_of(run: &Run) -> &Value {
    run.others
        .iter()
        .find(|v| v["type"] == "report")
        .unwrap_or_else(|| {
            panic!(
                "memtrace printed no JSON report (status {}); other objects: {:?}; summary: {}; stderr:\n{}",
                run.status, run.others, run.summary, run.stderr
            )
        })
}

/// One line of `/proc/PID/maps`.
#[derive(Clone, Debug)]
pub struct MapsLine {
    pub start: u64,
    pub end: u64,
    pub perms: String,
    pub inode: u64,
    pub name: String,
}

impl MapsLine {
    /// Anonymous memory as memtrace's ledger sees it: no file behind it
    /// (inode 0), not one of the kernel's special mappings. `[heap]`,
    /// unnamed and `[anon:NAME]` ranges count; `[stack]` (made by exec) does
    /// not.
    pub fn is_anon(&self) -> bool {
        self.inode == 0
            && !matches!(
                self.name.as_str(),
                "[vdso]" | "[vvar]" | "[vvar_vclock]" | "[vsyscall]" | "[stack]" | "[uprobes]"
            )
            && !self.name.starts_with('/')
    }
}

/// Parse the text of `/proc/PID/maps`.
pub fn parse_maps(text: &str) -> Vec<MapsLine> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut f = l.splitn(6, ' ');
            let range = f.next().unwrap_or("");
            let perms = f.next().unwrap_or("").to_string();
            let _offset = f.next();
            let _dev = f.next();
            let inode = f.next().and_then(|i| i.parse().ok()).unwrap_or(u64::MAX);
            let name = f.next().unwrap_or("").trim().to_string();
            let (s, e) = range
                .split_once('-')
                .unwrap_or_else(|| panic!("bad maps line {l:?}"));
            let hex = |x: &str| {
                u64::from_str_radix(x, 16).unwrap_or_else(|e| panic!("bad maps line {l:?}: {e}"))
            };
            MapsLine {
                start: hex(s),
                end: hex(e),
                perms,
                inode,
                name,
            }
        })
        .collect()
}

/// Read and parse `/proc/PID/maps`.
pub fn read_maps(pid: u32) -> Vec<MapsLine> {
    let path = format!("/proc/{pid}/maps");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    parse_maps(&text)
}

/// Sorted, disjoint, non-adjacent `[start, end)` ranges: a set of pages.
pub type Ranges = Vec<(u64, u64)>;

/// Sort and merge overlapping and adjacent ranges; drop empty ones.
pub fn normalize(mut v: Ranges) -> Ranges {
    v.retain(|(s, e)| s < e);
    v.sort_unstable();
    let mut out: Ranges = Vec::with_capacity(v.len());
    for (s, e) in v {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// The pages of `a` not in `b` (both normalized), normalized.
pub fn subtract(a: &[(u64, u64)], b: &[(u64, u64)]) -> Ranges {
    let mut out = Vec::new();
    let mut j = 0;
    for &(s, e) in a {
        let mut cur = s;
        while j < b.len() && b[j].1 <= cur {
            j += 1;
        }
        let mut k = j;
        while cur < e && k < b.len() && b[k].0 < e {
            if b[k].0 > cur {
                out.push((cur, b[k].0));
            }
            cur = cur.max(b[k].1);
            k += 1;
        }
        if cur < e {
            out.push((cur, e));
        }
    }
    normalize(out)
}

/// Total bytes of some ranges.
pub fn bytes_of(r: &[(u64, u64)]) -> u64 {
    r.iter().map(|(s, e)| e - s).sum()
}

/// `start-end (N pages)` for messages, at most `max` ranges.
pub fn show_ranges(r: &[(u64, u64)], max: usize) -> String {
    let mut s: String = r
        .iter()
        .take(max)
        .map(|(a, b)| format!("  {a:x}-{b:x} ({} pages)\n", (b - a) / 4096))
        .collect();
    if r.len() > max {
        s.push_str(&format!("  … and {} more\n", r.len() - max));
    }
    s
}

/// Whether memtrace ran with `--unmap-stacks`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum UnmapStacks {
    /// By default munmap events carry no stack.
    Off,
    On,
}

/// Check that every step the fixture logged is in memtrace's stream with
/// the same kind, thread, range and result, attributed to the fixture
/// function that made the call (munmap steps: with `unmap` on; with it off
/// their events must carry no stack).
pub fn assert_steps_traced(steps: &[Value], events: &[Value], unmap: UnmapStacks) {
    assert!(steps.len() >= 17, "fixture logged too few steps: {steps:?}");
    // Steps of one thread happen in order, and so do its events: match each
    // step after the previous match of the same thread.
    let mut cursor: std::collections::HashMap<u64, usize> = Default::default();
    for step in steps {
        let kind = step["kind"].as_str().expect("kind");
        let from = cursor.get(&num(&step["tid"])).copied().unwrap_or(0);
        let found = events.iter().enumerate().skip(from).find(|(_, e)| {
            e["kind"] == step["kind"]
                && e["tid"] == step["tid"]
                && num(&e["addr"]) == num(&step["addr"])
                && (kind == "brk" || num(&e["len"]) == num(&step["len"]))
                && e["result"].as_i64() == step["result"].as_i64()
        });
        let Some((at, ev)) = found else {
            let same_kind: Vec<&Value> = events
                .iter()
                .filter(|e| e["kind"] == step["kind"])
                .collect();
            panic!("step {step} is not in the event stream; events of that kind: {same_kind:#?}");
        };
        cursor.insert(num(&step["tid"]), at + 1);
        if kind == "munmap" && unmap == UnmapStacks::Off {
            assert!(
                ev["stack"].as_array().is_some_and(Vec::is_empty) && ev["call_site"].is_null(),
                "an munmap without --unmap-stacks carries no stack: {ev}"
            );
            continue;
        }
        let func = step["func"].as_str().expect("func");
        let site = ev["call_site"]["function"].as_str().unwrap_or("");
        assert!(
            site.ends_with(&format!("mappings::{func}")),
            "step {} was attributed to {site:?}, expected mappings::{func}; stack: {}",
            step["step"],
            ev["stack"]
        );
        if let Some(file) = ev["call_site"]["file"].as_str() {
            assert!(
                file.ends_with("mappings.rs"),
                "call site file {file} for {}",
                step["step"]
            );
        }
    }
    // Specific semantics.
    let step = |name: &str| {
        steps
            .iter()
            .find(|s| s["step"] == name)
            .unwrap_or_else(|| panic!("no step {name}"))
    };
    let remap = step("remap_grow_move");
    assert_ne!(
        remap["result"], remap["old_addr"],
        "the fixture's mremap was meant to move"
    );
    let ev = events
        .iter()
        .find(|e| e["kind"] == "mremap" && e["result"] == remap["result"])
        .expect("mremap event");
    assert_eq!(num(&ev["old_addr"]), num(&remap["old_addr"]));
    assert_eq!(ev["old_len"].as_u64(), Some(2 * 4096));
    let name = step("name_region");
    let ev = events
        .iter()
        .find(|e| e["kind"] == "set_vma_name")
        .expect("set_vma_name event");
    assert_eq!(ev["name"], "fixture-cache");
    let refused = name["result"].as_i64() != Some(0);
    assert_eq!(ev["name_refused"].as_bool(), Some(refused));
    if refused {
        assert_eq!(ev["error"], "EINVAL");
    }
    let failing = events
        .iter()
        .find(|e| e["kind"] == "munmap" && num(&e["addr"]) == 12345)
        .expect("failing munmap");
    assert_eq!(failing["error"], "EINVAL");
    // Several threads, each event carries its own tid.
    let tids: std::collections::BTreeSet<u64> = steps
        .iter()
        .filter(|s| s["func"] == "thread_worker")
        .map(|s| num(&s["tid"]))
        .collect();
    assert_eq!(tids.len(), 4, "four worker threads");
}

/// The documented schema of memtrace's JSON, `docs/memtrace.schema.json`,
/// compiled.
pub fn schema_validator() -> jsonschema::Validator {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/memtrace.schema.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let schema: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    jsonschema::validator_for(&schema)
        .unwrap_or_else(|e| panic!("{} is not a valid JSON Schema: {e}", path.display()))
}

/// Check one object against the schema; the panic names every violation
/// and the object.
pub fn check_schema(validator: &jsonschema::Validator, v: &Value) {
    let errors: Vec<String> = validator
        .iter_errors(v)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "memtrace printed JSON that the documented schema rejects:\n  {}\nobject: {v}",
        errors.join("\n  ")
    );
}

/// Resident bytes (`rss_bytes`) of a JSON report's call sites whose
/// function name `matches`.
pub fn call_site_rss(report: &Value, matches: impl Fn(&str) -> bool) -> u64 {
    report["call_sites"]
        .as_array()
        .expect("call_sites")
        .iter()
        .filter(|s| s["call_site"]["function"].as_str().is_some_and(&matches))
        .map(|s| s["rss_bytes"].as_u64().unwrap_or(0))
        .sum()
}

/// A child killed when the test ends, however it ends.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        // After a wait, std sends nothing: the pid may name another process.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A process started under a pid of the test's choosing (`clone3` with
/// `set_tid`, root only), so a test can reuse a pid at will rather than
/// wait for the kernel to wrap around; killed and reaped when dropped.
pub struct WithPid {
    pub pid: u32,
}

/// `struct clone_args` of `clone3(2)` (the fields up to `cgroup`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

impl WithPid {
    /// Run `program` (a path) with `args` as process `pid`; fails with
    /// `EEXIST` when that pid is taken.
    pub fn spawn(pid: u32, program: &str, args: &[&str]) -> std::io::Result<WithPid> {
        use std::ffi::CString;
        // Everything the child touches is made before the clone: it is a
        // fork of a threaded process and may only exec or exit.
        let path = CString::new(program).map_err(std::io::Error::other)?;
        let argv: Vec<CString> = std::iter::once(program)
            .chain(args.iter().copied())
            .map(CString::new)
            .collect::<Result<_, _>>()
            .map_err(std::io::Error::other)?;
        let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let tid = [libc::pid_t::try_from(pid).map_err(std::io::Error::other)?];
        let clone_args = CloneArgs {
            exit_signal: libc::SIGCHLD as u64,
            set_tid: tid.as_ptr() as u64,
            set_tid_size: 1,
            ..CloneArgs::default()
        };
        // SAFETY: clone3 without CLONE_VM is a fork; the arguments point to
        // live memory of the right size. The child only calls execv and
        // _exit, which are async-signal-safe, on memory made before.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &clone_args as *const CloneArgs,
                std::mem::size_of::<CloneArgs>(),
            )
        };
        match ret {
            -1 => Err(std::io::Error::last_os_error()),
            // SAFETY: as above; both take pointers made before the clone.
            0 => unsafe {
                libc::execv(path.as_ptr(), argv_ptrs.as_ptr());
                libc::_exit(127)
            },
            child => Ok(WithPid {
                pid: u32::try_from(child).map_err(std::io::Error::other)?,
            }),
        }
    }
}

impl Drop for WithPid {
    fn drop(&mut self) {
        // SAFETY: killing and reaping our own child.
        unsafe {
            libc::kill(self.pid as i32, libc::SIGKILL);
            libc::waitpid(self.pid as i32, std::ptr::null_mut(), 0);
        }
    }
}
