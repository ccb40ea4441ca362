//! The traced process's life, as production programs live it: threads that
//! outlive the main one, job-control stops, signals sent to memtrace, pids
//! that are threads, init, kernel threads or reused, and daemons that
//! outlive the command that started them.

mod common;

use std::{
    os::unix::process::CommandExt as _,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::{
    Background, Run, Waiting, memtrace_bin, proc_state, report_of, require_root, run_attached,
    run_launch, temp_path, wait_for, wait_with_timeout,
};
use serde_json::Value;

const THREAD_EXIT: &str = env!("CARGO_BIN_EXE_thread_exit");
const MIB: u64 = 1 << 20;

fn attributed(report: &Value) -> u64 {
    report["attributed_rss_bytes"].as_u64().unwrap_or(0)
}

fn assert_worker_memory_reported(run: &Run, pid: u32) {
    let report = report_of(run);
    assert_eq!(report["pid"], pid, "the report is the process's");
    assert!(
        attributed(report) >= 64 * MIB,
        "the worker's 64 MiB, mapped after the main thread exited, must be in the report at the \
         process's exit: attributed {} of {} anonymous bytes; stderr:\n{}",
        attributed(report),
        report["anon_rss_bytes"],
        run.stderr
    );
}

#[test]
fn launch_reports_a_worker_that_outlives_the_main_thread() {
    let run = run_launch(&["--json", "--quiet"], THREAD_EXIT, &[]);
    assert_eq!(run.status, 0, "{}", run.stderr);
    let pid = report_of(&run)["pid"].as_u64().unwrap_or(0) as u32;
    assert_worker_memory_reported(&run, pid);
}

#[test]
fn thread_creation_is_not_a_fork() {
    // The fixture starts threads and never forks: the kernel side drops
    // thread creation, so no fork is reported (and no thread id is ever
    // taken for a process). Only with --follow-forks is the fork program
    // attached at all.
    let run = run_launch(&["--json", "--follow-forks"], THREAD_EXIT, &[]);
    assert_eq!(run.status, 0, "{}", run.stderr);
    let forks: Vec<_> = run.events.iter().filter(|e| e["kind"] == "fork").collect();
    assert!(forks.is_empty(), "threads reported as forks: {forks:#?}");
    assert_eq!(run.summary["events"]["fork"].as_u64().unwrap_or(0), 0);
    let pid = report_of(&run)["pid"].as_u64().unwrap_or(0) as u32;
    assert_worker_memory_reported(&run, pid);
}

#[test]
fn pid_mode_reports_a_worker_that_outlives_the_main_thread() {
    // The worker thread exists before memtrace attaches: it must be seized
    // too, not only the main thread.
    let w = Waiting::start(THREAD_EXIT, &[]);
    let pid = w.pid;
    let run = run_attached(&["--json", "--quiet"], w, |w| w.go());
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert_worker_memory_reported(&run, pid);
}

#[test]
fn pid_of_a_thread_traces_its_process() {
    let mut w = Waiting::start(THREAD_EXIT, &[]);
    let pid = w.pid;
    let tid = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("task dir")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|&t| t != pid)
        .expect("the fixture's worker thread");
    // memtrace is given the worker's thread id.
    w.pid = tid;
    let run = run_attached(&["--json", "--quiet"], w, |w| w.go());
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert!(
        run.stderr
            .contains(&format!("{tid} is a thread of process {pid}")),
        "memtrace says what it traces: {}",
        run.stderr
    );
    assert_worker_memory_reported(&run, pid);
}

#[test]
fn kill_stop_stops_a_launched_command_until_kill_cont() {
    let ticks = temp_path("ticks");
    let script = format!(
        "i=0; while [ $i -lt 1000 ]; do i=$((i+1)); echo $i > '{}'; sleep 0.01; done",
        ticks.display()
    );
    let mt = Background::launch(&["--quiet"], "/bin/sh", &["-c", &script]);
    let pid = mt.target;
    let tick = || {
        std::fs::read_to_string(&ticks)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert!(wait_for(Duration::from_secs(10), || tick() > 0), "ticking");
    // SAFETY: signals the launched shell.
    unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
    // A stopped tracee reads `t` (tracing stop) rather than `T`.
    let stopped = || matches!(proc_state(pid), Some('T' | 't'));
    assert!(
        wait_for(Duration::from_secs(5), stopped),
        "kill -STOP must stop the command: state {:?}",
        proc_state(pid)
    );
    let at_stop = tick();
    for _ in 0..20 {
        thread::sleep(Duration::from_millis(20));
        assert!(stopped(), "it stays stopped: {:?}", proc_state(pid));
    }
    assert_eq!(tick(), at_stop, "a stopped command makes no progress");
    // SAFETY: as above.
    unsafe { libc::kill(pid as i32, libc::SIGCONT) };
    assert!(
        wait_for(Duration::from_secs(5), || tick() > at_stop),
        "kill -CONT resumes it: state {:?}",
        proc_state(pid)
    );
    // SAFETY: as above.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let run = mt.finish(Duration::from_secs(30));
    assert_eq!(run.status, 128 + libc::SIGTERM, "{}", run.stderr);
    let _ = std::fs::remove_file(&ticks);
}

/// memtrace alone gets a signal; the launched command must get it too and
/// memtrace must report at its exit and pass its status on.
fn signal_memtrace_alone(sig: i32, within: Duration) -> Run {
    let mt = Background::launch(&["--json", "--quiet"], "/bin/sleep", &["30"]);
    let pid = mt.target;
    let sent = Instant::now();
    mt.signal(sig);
    let run = mt.finish(Duration::from_secs(20));
    assert!(
        sent.elapsed() < within,
        "memtrace took {:?} to end after its signal",
        sent.elapsed()
    );
    assert_eq!(
        run.status,
        128 + sig,
        "the command died of the signal passed on, and memtrace passes that on; stderr:\n{}",
        run.stderr
    );
    assert_eq!(report_of(&run)["pid"], pid);
    assert!(run.summary.is_object(), "the summary is printed");
    assert_eq!(proc_state(pid), None, "the command is gone");
    run
}

#[test]
fn sigint_to_memtrace_alone_reaches_the_launched_command() {
    let run = signal_memtrace_alone(libc::SIGINT, Duration::from_secs(8));
    assert!(run.stderr.contains("passed SIGINT on"), "{}", run.stderr);
}

#[test]
fn sigterm_to_memtrace_terminates_the_launched_command() {
    let run = signal_memtrace_alone(libc::SIGTERM, Duration::from_secs(8));
    assert!(run.stderr.contains("passed SIGTERM on"), "{}", run.stderr);
}

#[test]
fn sighup_to_memtrace_reaches_the_launched_command() {
    signal_memtrace_alone(libc::SIGHUP, Duration::from_secs(8));
}

#[test]
fn ctrl_c_from_the_terminal_is_not_passed_on_twice() {
    // A terminal's Ctrl-C reaches memtrace and the command alike (one
    // process group); a program that shuts down slowly must not get a
    // second SIGINT from memtrace.
    require_root();
    let log = temp_path("sigints");
    let script = format!(
        "trap 'echo int >> \"{}\"' INT; i=0; while [ $i -lt 25 ]; do i=$((i+1)); sleep 0.1; done",
        log.display()
    );
    let mut mt = Command::new(memtrace_bin())
        .args(["--quiet", "--", "/bin/sh", "-c", &script])
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn memtrace");
    let group = mt.id() as i32;
    let mut err = std::io::BufReader::new(mt.stderr.take().expect("stderr"));
    let mut stderr = String::new();
    while !stderr.contains("tracing pid") {
        let n = std::io::BufRead::read_line(&mut err, &mut stderr).expect("stderr");
        assert!(n > 0, "memtrace ended before tracing: {stderr}");
    }
    thread::sleep(Duration::from_millis(300));
    // SAFETY: signals the process group of our own child.
    unsafe { libc::kill(-group, libc::SIGINT) };
    let status = wait_with_timeout(&mut mt, Duration::from_secs(30));
    std::io::Read::read_to_string(&mut err, &mut stderr).expect("stderr");
    assert_eq!(status, 0, "the script ran to its end: {stderr}");
    let got = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        got.lines().count(),
        1,
        "one SIGINT, from the terminal; memtrace's stderr:\n{stderr}"
    );
    let _ = std::fs::remove_file(&log);
}

/// memtrace refuses `--pid PID` with one line saying why, and no tracing.
fn assert_refused(pid: &str, why: &str) {
    let out = Command::new(memtrace_bin())
        .args(["--quiet", "--duration", "2s", "--pid", pid])
        .stdin(Stdio::null())
        .output()
        .expect("run memtrace");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "--pid {pid}: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains(why), "--pid {pid}: {err}");
    assert!(out.stdout.is_empty(), "nothing traced");
}

#[test]
fn pid_1_is_refused() {
    require_root();
    assert_refused("1", "init");
}

#[test]
fn kernel_threads_are_refused() {
    require_root();
    // kthreadd.
    assert_refused("2", "kernel thread");
}

#[test]
fn memtrace_refuses_its_own_pid() {
    require_root();
    // `exec` keeps the shell's pid: memtrace is given its own.
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!(
            "exec {} --quiet --duration 2s --pid $$",
            memtrace_bin().display()
        ))
        .stdin(Stdio::null())
        .output()
        .expect("run memtrace");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("memtrace itself"), "{err}");
}

/// Whether process `pid` holds a BPF object (memtrace is loading its
/// programs).
fn holds_bpf(pid: u32) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|dir| {
        dir.filter_map(Result::ok).any(|e| {
            std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().contains("bpf"))
        })
    })
}

/// A `sleep` with pid `pid`, made by asking the kernel for that pid next
/// (`ns_last_pid`); `None` if another process took it first.
fn sleeper_with_pid(pid: u32) -> Option<std::process::Child> {
    for _ in 0..200 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string())
            .expect("write ns_last_pid (needs root)");
        let mut s = Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        if s.id() == pid {
            return Some(s);
        }
        let _ = s.kill();
        let _ = s.wait();
        if proc_state(pid).is_some() {
            return None;
        }
    }
    None
}

#[test]
fn pid_reuse_is_detected_before_tracing() {
    require_root();
    for _attempt in 0..5 {
        let mut old = Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let pid = old.id();
        let mut mt = Command::new(memtrace_bin())
            .args(["--quiet", "--pid", &pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn memtrace");
        // Freeze memtrace while it loads its programs: it has pinned the
        // pid and not attached yet.
        let loading = wait_for(Duration::from_secs(20), || holds_bpf(mt.id()));
        // SAFETY: stops our own child.
        unsafe { libc::kill(mt.id() as i32, libc::SIGSTOP) };
        let attached = memtrace::proc::pid::status_field(pid, "TracerPid") != Some(0);
        let new = if loading && !attached {
            let _ = old.kill();
            let _ = old.wait();
            sleeper_with_pid(pid)
        } else {
            None
        };
        // SAFETY: resumes our own child.
        unsafe { libc::kill(mt.id() as i32, libc::SIGCONT) };
        let Some(mut new) = new else {
            let _ = mt.kill();
            let _ = mt.wait();
            let _ = old.kill();
            let _ = old.wait();
            continue;
        };
        let status = wait_with_timeout(&mut mt, Duration::from_secs(30));
        let mut err = String::new();
        if let Some(mut e) = mt.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        let new_traced = memtrace::proc::pid::status_field(pid, "TracerPid");
        let _ = new.kill();
        let _ = new.wait();
        assert_eq!(status, 1, "memtrace must refuse: {err}");
        assert!(
            err.contains(&format!("pid {pid} now names another process")),
            "{err}"
        );
        assert!(!err.contains("tracing pid"), "nothing traced: {err}");
        assert_eq!(new_traced, Some(0), "the new process was never attached");
        return;
    }
    panic!("could not hand a pid to a new process in 5 attempts");
}

#[test]
fn follow_forks_traces_children_that_outlive_the_command() {
    // The shell starts two background jobs and exits at once: one execs
    // /bin/true after 1.5 s, one lives on (sleep 6) past the trace. (The
    // shell's exit event comes once memtrace has shown the forks, their
    // stacks symbolized: ~0.2 s in a debug build, over 0.4 s on a loaded
    // machine.)
    let run = run_launch(
        &["--json", "--follow-forks", "--duration", "3s"],
        "/bin/sh",
        &[
            "-c",
            "(sleep 1.5; exec /bin/true) & (exec sleep 6 >/dev/null 2>&1) & exit 0",
        ],
    );
    assert_eq!(run.status, 0, "the command's status: {}", run.stderr);
    let shell = run
        .events
        .iter()
        .find(|e| e["kind"] == "fork")
        .expect("the shell forks")["pid"]
        .clone();
    let shell_exit = run
        .events
        .iter()
        .position(|e| e["kind"] == "exit" && e["pid"] == shell)
        .unwrap_or_else(|| panic!("the shell's exit is traced; stderr:\n{}", run.stderr));
    let late = &run.events[shell_exit..];
    let exec_true = late
        .iter()
        .find(|e| {
            e["kind"] == "exec" && e["filename"].as_str().is_some_and(|f| f.ends_with("/true"))
        })
        .unwrap_or_else(|| {
            panic!(
                "the child's exec of /bin/true, after the shell exited, is traced; stderr:\n{}",
                run.stderr
            )
        });
    assert!(
        late.iter()
            .any(|e| e["pid"] == exec_true["pid"] && e["kind"] == "mmap"),
        "and its mappings"
    );
    // The long-lived child gets a report when tracing ends.
    let sleeper = run
        .events
        .iter()
        .find(|e| {
            e["kind"] == "exec"
                && e["filename"]
                    .as_str()
                    .is_some_and(|f| f.ends_with("/sleep"))
                && !run
                    .events
                    .iter()
                    .any(|x| x["kind"] == "exit" && x["pid"] == e["pid"])
        })
        .expect("the sleep 6 child")["pid"]
        .clone();
    assert!(
        run.others
            .iter()
            .any(|o| o["type"] == "report" && o["pid"] == sleeper),
        "a report for the child still alive at the end: {:?}",
        run.others
    );
    let forks = run.summary["events"]["fork"].as_u64().unwrap_or(0);
    assert!(forks >= 3, "the summary counts the children's forks too");
}
