//! The eBPF tracer on real processes: every event of the fixture, with its
//! kind, address, size, result and calling function, in both modes; lost
//! events counted exactly; exit status passed on.

mod common;

use std::time::Duration;

use common::{
    UnmapStacks, Waiting, assert_steps_traced, read_jsonl, run_attached, run_launch, temp_path,
};
use serde_json::Value;

const MAPPINGS: &str = env!("CARGO_BIN_EXE_mappings");
const FLOOD: &str = env!("CARGO_BIN_EXE_flood");

/// A number, or an address as memtrace writes it (a `"0x…"` string).
fn u(v: &Value) -> u64 {
    common::num(v)
}

#[test]
fn launch_mode_traces_every_step_with_its_call_site() {
    let out = temp_path("launch-steps");
    // munmap's stacks asked for too; pid mode checks the default, none.
    let run = run_launch(
        &["--json", "--unmap-stacks"],
        MAPPINGS,
        &["--out", out.to_str().expect("utf8")],
    );
    assert_eq!(
        run.status, 0,
        "memtrace exit status (the fixture's): {}",
        run.stderr
    );
    let steps = read_jsonl(&out);
    assert_steps_traced(&steps, &run.events, UnmapStacks::On);
    assert_eq!(
        run.summary["lost_events"], 0,
        "no events lost: {}",
        run.summary
    );
    // Launch mode sees the loader's first mapping and the exit.
    assert!(run.events.iter().any(|e| e["kind"] == "exit"), "exit event");
    let first_mmap = run
        .events
        .iter()
        .find(|e| e["kind"] == "mmap")
        .expect("an mmap");
    let site = first_mmap["call_site"]["module"].as_str().unwrap_or("");
    assert!(
        site.contains("ld-linux"),
        "the first mmap comes from the dynamic loader, got {first_mmap}"
    );
}

#[test]
fn pid_mode_traces_every_step_with_its_call_site() {
    let out = temp_path("pid-steps");
    let w = Waiting::start(MAPPINGS, &["--out", out.to_str().expect("utf8")]);
    let pid = w.pid;
    let run = run_attached(&["--json"], w, |w| w.go());
    assert_eq!(run.status, 0, "memtrace status: {}", run.stderr);
    let steps = read_jsonl(&out);
    assert_steps_traced(&steps, &run.events, UnmapStacks::Off);
    assert!(
        run.events.iter().all(|e| e["pid"] == pid),
        "only the target's events"
    );
    assert_eq!(run.summary["lost_events"], 0);
}

#[test]
fn lost_events_are_counted_exactly() {
    const COUNT: u64 = 20_000;
    let out = temp_path("flood");
    let w = Waiting::start(
        FLOOD,
        &[
            "--out",
            out.to_str().expect("utf8"),
            "--count",
            &COUNT.to_string(),
        ],
    );
    // The smallest ring buffer holds a few events with a stack window: the
    // burst's first calls, made before memtrace has unwound one and filled
    // the kernel side's stack cache, carry one.
    let run = run_attached(&["--json", "--ring-buffer-size", "65536"], w, |w| {
        w.go();
        w.expect_line("done");
        // Let memtrace drain everything before the exit event comes.
        std::thread::sleep(Duration::from_millis(500));
    });
    assert_eq!(run.status, 0, "{}", run.stderr);
    let steps = read_jsonl(&out);
    assert_eq!(
        steps[0]["result"].as_u64(),
        Some(COUNT),
        "all flood mmaps succeeded"
    );
    let seen = run
        .events
        .iter()
        .filter(|e| e["kind"] == "mmap" && e["len"] == 3 * 4096)
        .count() as u64;
    let lost = run.summary["lost_events"]
        .as_u64()
        .expect("lost_events in summary");
    assert!(
        lost > 0,
        "a one-page ring buffer must overflow under {COUNT} mmaps (saw {seen})"
    );
    assert!(
        run.events.iter().any(|e| e["kind"] == "exit"),
        "the exit after the burst arrives; summary {}, stderr {}, last events {:?}",
        run.summary,
        run.stderr,
        run.events
            .iter()
            .rev()
            .take(2)
            .map(|e| (&e["kind"], &e["len"]))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        seen + lost,
        COUNT,
        "events seen ({seen}) + lost ({lost}) = mmaps made"
    );
}

#[test]
fn launch_mode_passes_the_exit_status_on() {
    let run = run_launch(&["--quiet"], "/bin/sh", &["-c", "exit 7"]);
    assert_eq!(run.status, 7, "{}", run.stderr);
    let run = run_launch(&["--quiet"], "/bin/sh", &["-c", "kill -TERM $$"]);
    assert_eq!(run.status, 128 + 15, "{}", run.stderr);
}

#[test]
fn library_tracer_sees_a_child_mmap() {
    use memtrace::{trace::Tracer, trace::event::Call};
    common::require_root();
    let out = temp_path("lib-steps");
    let mut w = Waiting::start(MAPPINGS, &["--out", out.to_str().expect("utf8")]);
    let mut tracer = Tracer::load(&Default::default()).unwrap_or_else(|e| panic!("{e}"));
    tracer.add_pid(w.pid).unwrap_or_else(|e| panic!("{e}"));
    // The traced set holds the pids below pid_max, and says so past it.
    let err = tracer.add_pid(u32::MAX).expect_err("no pid is that high");
    let why = std::error::Error::source(&err).map(ToString::to_string);
    assert!(
        why.as_deref().is_some_and(|w| w.contains("pid_max")),
        "{err}: {why:?}"
    );
    w.go();
    common::wait_with_timeout(&mut w.child, Duration::from_secs(30));
    let mut events = Vec::new();
    tracer.drain(&mut events);
    let steps = read_jsonl(&out);
    let known = steps
        .iter()
        .find(|s| s["step"] == "map_known_size")
        .expect("step");
    let ev = events
        .iter()
        .find(|e| matches!(e.call, Call::Mmap { .. }) && e.result as u64 == u(&known["result"]))
        .unwrap_or_else(|| panic!("no event for {known}; got {} events", events.len()));
    assert_eq!(ev.pid, w.pid);
    assert!(matches!(ev.call, Call::Mmap { len: 262144, .. }), "{ev:?}");
    assert!(ev.user.is_some(), "the user stack window was captured");
    assert!(tracer.lost().total() == 0);
}

#[test]
fn follow_forks_traces_children_from_their_first_call() {
    // The shell forks /bin/true (no exec-in-place: two commands).
    let run = run_launch(
        &["--json", "--no-report", "--follow-forks"],
        "/bin/sh",
        &["-c", "/bin/true; /bin/true"],
    );
    assert_eq!(run.status, 0, "{}", run.stderr);
    let shell = run
        .events
        .iter()
        .find(|e| e["kind"] == "mmap")
        .expect("shell events")["pid"]
        .clone();
    let forks: Vec<&Value> = run.events.iter().filter(|e| e["kind"] == "fork").collect();
    assert!(forks.len() >= 2, "the shell forked twice: {forks:?}");
    for fork in forks {
        let child = &fork["child_pid"];
        assert_eq!(fork["pid"], shell);
        let exec = run
            .events
            .iter()
            .find(|e| e["pid"] == *child && e["kind"] == "exec")
            .unwrap_or_else(|| panic!("child {child} exec traced"));
        assert!(
            exec["filename"]
                .as_str()
                .is_some_and(|f| f.ends_with("true")),
            "{exec}"
        );
        assert!(
            run.events
                .iter()
                .any(|e| e["pid"] == *child && e["kind"] == "mmap"),
            "the child's own mappings are traced"
        );
        assert!(
            run.events
                .iter()
                .any(|e| e["pid"] == *child && e["kind"] == "exit")
        );
    }
    // Without the flag, only the shell.
    let run = run_launch(
        &["--json", "--no-report"],
        "/bin/sh",
        &["-c", "/bin/true; /bin/true"],
    );
    let pids: std::collections::BTreeSet<String> =
        run.events.iter().map(|e| e["pid"].to_string()).collect();
    assert_eq!(pids.len(), 1, "{pids:?}");
}

#[test]
fn without_privileges_says_what_is_missing() {
    use std::os::unix::fs::PermissionsExt as _;
    common::require_root();
    // A copy nobody can reach whatever the permissions of the checkout.
    let dir = std::env::temp_dir().join(format!("memtrace-nobody-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
    let bin = dir.join("memtrace");
    std::fs::copy(common::memtrace_bin(), &bin).expect("copy memtrace");
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod bin");
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(&bin)
        .args(["--", "/bin/true"])
        .output()
        .expect("setpriv (util-linux) runs memtrace as nobody");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("root") && err.contains("memtrace snapshot"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_closed_stdout_ends_memtrace_quietly() {
    // `memtrace --pid N | head -1`: once the reader is gone, memtrace stops
    // with status 0 and no error, as `snapshot` does.
    common::require_root();
    let out = temp_path("closed-stdout");
    let mut w = Waiting::start(MAPPINGS, &["--out", out.to_str().expect("utf8")]);
    let mut mt = std::process::Command::new(common::memtrace_bin())
        .args(["--pid", &w.pid.to_string()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn memtrace");
    let mut err = std::io::BufReader::new(mt.stderr.take().expect("stderr"));
    let mut stderr = String::new();
    while !stderr.contains("tracing pid") {
        let n = std::io::BufRead::read_line(&mut err, &mut stderr).expect("stderr");
        assert!(n > 0, "memtrace ended before attaching: {stderr}");
    }
    // The reader goes away before the first event.
    drop(mt.stdout.take());
    w.go();
    let status = common::wait_with_timeout(&mut mt, std::time::Duration::from_secs(30));
    std::io::Read::read_to_string(&mut err, &mut stderr).expect("stderr");
    w.finish();
    assert_eq!(status, 0, "memtrace's status with stdout closed: {stderr}");
    assert!(
        !stderr.to_lowercase().contains("broken pipe") && !stderr.contains("error"),
        "a closed stdout is not an error: {stderr}"
    );
}

#[test]
fn names_from_the_target_cannot_drive_the_terminal() {
    // A region name and a file name with escape sequences and a fake
    // `=== Summary ===` line: the text output shows them escaped.
    let hostile = env!("CARGO_BIN_EXE_hostile");
    let output = std::process::Command::new(common::memtrace_bin())
        .args(["--", hostile])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run memtrace");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !text.contains('\x1b'),
        "an escape character reached the terminal:\n{text}"
    );
    assert_eq!(
        text.lines()
            .filter(|l| l.trim() == "=== Summary ===")
            .count(),
        1,
        "a name printed a fake summary line:\n{text}"
    );
    assert!(
        text.contains("\\x1b[31mred\\n=== Summary"),
        "the name is shown escaped:\n{text}"
    );
    // The snapshot's region table shows the file name escaped too.
    let mut w = Waiting::start(hostile, &[]);
    let snap = std::process::Command::new(common::memtrace_bin())
        .args(["snapshot", "--all", "--pid", &w.pid.to_string()])
        .output()
        .expect("run memtrace snapshot");
    w.go();
    w.finish();
    let text = String::from_utf8_lossy(&snap.stdout);
    assert!(snap.status.success());
    assert!(
        !text.contains('\x1b'),
        "an escape character reached the terminal:\n{text}"
    );
    assert!(
        text.contains("\\x1b[7m-"),
        "the file name is shown escaped:\n{text}"
    );
}

#[test]
#[expect(
    clippy::zombie_processes,
    reason = "reaped with wait4, which also gives its peak RSS"
)]
fn executable_devices_and_sparse_files_are_not_read_whole() {
    // The target maps /dev/zero and a 1 GiB sparse file executable: memtrace
    // must finish promptly without reading them (it read /dev/zero without
    // end before).
    common::require_root();
    let hostile = env!("CARGO_BIN_EXE_hostile");
    let started = std::time::Instant::now();
    let mut mt = std::process::Command::new(common::memtrace_bin())
        .args(["--quiet", "--", hostile, "--exec-maps"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run memtrace");
    let pid = mt.id() as i32;
    let deadline = started + std::time::Duration::from_secs(30);
    let (mut status, mut usage) = (0, unsafe { std::mem::zeroed::<libc::rusage>() });
    loop {
        // SAFETY: waiting for our own child with valid out pointers.
        let rc = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if rc == pid {
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = mt.kill();
            panic!("memtrace did not finish within 30 s on a target mapping /dev/zero executable");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let max_rss_mib = usage.ru_maxrss / 1024;
    println!(
        "memtrace: {:?}, peak RSS {max_rss_mib} MiB",
        started.elapsed()
    );
    assert_eq!(libc::WEXITSTATUS(status), 0);
    assert!(max_rss_mib < 200, "memtrace peaked at {max_rss_mib} MiB");
}

#[test]
fn a_bad_output_path_is_refused_before_tracing() {
    // Found at the start, not after the whole trace with the report lost.
    common::require_root();
    let output = std::process::Command::new(common::memtrace_bin())
        .args(["--folded", "/nonexistent-dir/x.folded", "--", "/bin/true"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run memtrace");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("/nonexistent-dir/x.folded"), "{stderr}");
    assert!(
        !stderr.contains("tracing pid"),
        "refused before tracing: {stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
}

#[test]
fn a_command_that_cannot_run_is_one_line_naming_the_os_error_once() {
    common::require_root();
    let output = std::process::Command::new(common::memtrace_bin())
        .args(["--", "/nonexistent/cmd"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run memtrace");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    // The error's message names its cause: anyhow's chain must not add it
    // again.
    assert!(
        stderr.lines().any(|l| l
            == "memtrace: cannot run /nonexistent/cmd: No such file or directory (os error 2)"),
        "{stderr}"
    );
    assert_eq!(stderr.matches("(os error 2)").count(), 1, "{stderr}");
}

/// The kernel side sends a stack id instead of a window for a stack it has
/// seen (checking every stack word the unwinding read). Calls made at the
/// same instruction with the same stack pointer, through two callers in
/// turn, keep their own caller on every event: none is taken for the
/// other's cached stack.
#[test]
fn cached_stacks_keep_each_caller_of_a_shared_site() {
    const SAME_SITE: &str = env!("CARGO_BIN_EXE_same_site");
    const ROUNDS: usize = 300;
    const LEN: u64 = 5 * 4096;
    let run = run_launch(
        &["--json", "--no-report"],
        SAME_SITE,
        &[&ROUNDS.to_string()],
    );
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert_eq!(run.summary["lost_events"], 0, "{}", run.summary);
    let callers: Vec<&str> = run
        .events
        .iter()
        .filter(|e| e["kind"] == "mmap" && u(&e["len"]) == LEN)
        .map(|e| {
            let functions: Vec<&str> = e["stack"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|f| f["function"].as_str())
                .collect();
            assert!(
                functions.iter().any(|f| f.ends_with("map_page")),
                "the stack reaches the fixture: {e}"
            );
            assert!(
                functions.iter().any(|f| f.ends_with("main")),
                "the stack reaches main: {e}"
            );
            let caller = functions
                .iter()
                .find(|f| f.ends_with("via_a") || f.ends_with("via_b"));
            caller.map_or("none", |f| if f.ends_with("via_a") { "a" } else { "b" })
        })
        .collect();
    assert_eq!(callers.len(), 2 * ROUNDS, "one mmap per call");
    for (i, caller) in callers.iter().enumerate() {
        let expected = if i % 2 == 0 { "a" } else { "b" };
        assert_eq!(*caller, expected, "event {i} of {callers:?}");
    }
}
