//! The traced process's life, as production programs live it: threads that
//! outlive the main one, job-control stops, signals sent to memtrace, pids
//! that are threads, init, kernel threads or reused, and daemons that
//! outlive the command that started them.

mod common;

use std::{thread, time::Duration};

use common::{
    Background, Run, Waiting, proc_state, report_of, run_attached, run_launch, temp_path, wait_for,
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
