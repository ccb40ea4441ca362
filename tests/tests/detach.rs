//! memtrace leaves nothing in the kernel: after every way a tracing session
//! can end, none of its programs is still loaded. (One test in its own
//! binary, so no other memtrace runs while it looks.)

mod common;

use std::{
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use common::{memtrace_bin, require_root, run_launch, wait_with_timeout};

/// Names of loaded BPF programs that look like memtrace's.
fn memtrace_programs() -> Vec<String> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter_map(|p| p.name_as_str().map(str::to_string))
        .filter(|n| {
            n.starts_with("sys_enter_")
                || n.starts_with("sys_exit_")
                || n.starts_with("sched_process_")
        })
        .collect()
}

fn assert_none_loaded(after: &str) {
    let left = memtrace_programs();
    assert!(
        left.is_empty(),
        "programs still loaded after {after}: {left:?}"
    );
}

#[test]
fn no_program_stays_loaded_on_any_exit_path() {
    require_root();
    assert_none_loaded("nothing (before the test)");

    // The target exits.
    let run = run_launch(&["--quiet"], "/bin/true", &[]);
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert_none_loaded("the launched target exited");

    // --duration expires while the target lives on.
    let mut sleeper = Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("spawn sleep");
    let status = Command::new(memtrace_bin())
        .args([
            "--quiet",
            "--duration",
            "300ms",
            "--pid",
            &sleeper.id().to_string(),
        ])
        .stderr(Stdio::null())
        .status()
        .expect("run memtrace");
    assert!(status.success());
    assert_none_loaded("--duration");

    // Ctrl-C (SIGINT) while attached, and a loaded tracer seen meanwhile.
    let mut mt = Command::new(memtrace_bin())
        .args(["--quiet", "--pid", &sleeper.id().to_string()])
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn memtrace");
    let mut seen = Vec::new();
    for _ in 0..100 {
        seen = memtrace_programs();
        if seen.len() >= 14 {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    assert!(
        seen.len() >= 14,
        "memtrace's programs should be loaded while it runs: {seen:?}"
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(mt.id() as i32, libc::SIGINT) };
    assert_eq!(wait_with_timeout(&mut mt, Duration::from_secs(20)), 0);
    assert_none_loaded("SIGINT");
    let _ = sleeper.kill();
    let _ = sleeper.wait();

    // An error after loading: the command cannot be run.
    let run = run_launch(&["--quiet"], "/nonexistent/program", &[]);
    assert_ne!(run.status, 0);
    assert!(run.stderr.contains("cannot run"), "{}", run.stderr);
    assert_none_loaded("a launch error");
}
