//! memtrace and containers: run inside a PID namespace it traces the
//! processes there, by the ids they have there; from the host it
//! symbolizes processes whose binaries exist only in their own mount
//! namespace. Namespaces are made with `unshare` (util-linux).

mod common;

use std::{path::PathBuf, process::Command};

use common::{
    UnmapStacks, Waiting, assert_steps_traced, memtrace_bin, read_jsonl, report_of, require_tool,
    run_attached, run_command, temp_path,
};
use serde_json::Value;

const MAPPINGS: &str = env!("CARGO_BIN_EXE_mappings");

fn unshare() -> Command {
    require_tool("unshare", "util-linux");
    Command::new("unshare")
}

/// Whether some call site of the report is `function` of the fixture.
fn report_names(report: &Value, function: &str) -> bool {
    report["call_sites"].as_array().is_some_and(|sites| {
        sites.iter().any(|s| {
            s["call_site"]["function"]
                .as_str()
                .is_some_and(|f| f.ends_with(function))
        })
    })
}

/// `unshare --pid --fork --mount-proc memtrace -- FIXTURE`: memtrace is
/// pid 1 of a new PID namespace, where the kernel's ids are not the ones
/// memtrace (and the fixture, which logs its thread ids) sees.
#[test]
fn inside_a_pid_namespace_every_step_is_traced_with_its_call_site() {
    let out = temp_path("pidns-steps");
    let mut cmd = unshare();
    cmd.args(["--pid", "--fork", "--mount-proc"])
        .arg(memtrace_bin())
        .args(["--json", "--"])
        .arg(MAPPINGS)
        .args(["--out", out.to_str().expect("utf8")]);
    let run = run_command(cmd);
    assert_eq!(run.status, 0, "memtrace in a PID namespace: {}", run.stderr);
    let steps = read_jsonl(&out);
    assert!(
        !run.events.is_empty(),
        "no events traced in a PID namespace; summary {}; stderr: {}",
        run.summary,
        run.stderr
    );
    assert_steps_traced(&steps, &run.events, UnmapStacks::Off);
    // Ids are the namespace's: the fixture's, memtrace being pid 1.
    let fixture_pid = steps[0]["tid"].as_u64().expect("tid");
    assert!(
        run.events
            .iter()
            .all(|e| e["pid"].as_u64() == Some(fixture_pid)),
        "events carry the fixture's pid in the namespace ({fixture_pid})"
    );
    let report = report_of(&run);
    assert!(
        report["coverage"].as_f64().is_some_and(|c| c > 0.5),
        "the report attributes the fixture's memory: {report}"
    );
    assert!(report_names(report, "mappings::map_known_size"), "{report}");
}

/// In a PID namespace whose /proc is the host's, pids would name the wrong
/// processes: memtrace says so in one line instead of tracing nothing.
#[test]
fn a_pid_namespace_without_its_own_proc_is_refused_in_one_line() {
    let mut cmd = unshare();
    cmd.args(["--pid", "--fork"])
        .arg(memtrace_bin())
        .args(["--quiet", "--", "/bin/true"]);
    let run = run_command(cmd);
    assert_ne!(run.status, 0, "memtrace must fail: {}", run.stderr);
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {:?}", run.stderr);
    assert!(
        lines[0].contains("/proc belongs to another one") && lines[0].contains("--mount-proc"),
        "{}",
        lines[0]
    );
}

/// A process in a mount namespace of its own runs a copy of the fixture
/// that exists only there (a tmpfs over an empty directory of the host):
/// memtrace, on the host, reads the binary through the process and names
/// its functions, in events and in the report taken after it exited.
#[test]
fn binaries_only_in_the_targets_mount_namespace_are_symbolized() {
    let dir: PathBuf = temp_path("mntns-bin").with_extension("d");
    std::fs::create_dir_all(&dir).expect("create the mount point");
    let out = temp_path("mntns-steps");
    let mut cmd = unshare();
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(
            r#"mount -t tmpfs memtrace-test "$1" && cp "$2" "$1/mappings" && exec "$1/mappings" --out "$3" --wait"#,
        )
        .arg("sh")
        .arg(&dir)
        .arg(MAPPINGS)
        .arg(&out);
    let w = Waiting::spawn(cmd);
    // The host sees the directory empty: only the target can open it.
    let copy = dir.join("mappings");
    assert!(
        !copy.exists(),
        "{} must exist only in the target's namespace",
        copy.display()
    );
    let exe = std::fs::read_link(format!("/proc/{}/exe", w.pid)).expect("target exe");
    assert_eq!(exe, copy, "the target runs the copy");
    let run = run_attached(&["--json"], w, |w| w.go());
    let _ = std::fs::remove_dir(&dir);
    assert_eq!(run.status, 0, "memtrace status: {}", run.stderr);
    let steps = read_jsonl(&out);
    assert_steps_traced(&steps, &run.events, UnmapStacks::Off);
    let module = run
        .events
        .iter()
        .find_map(|e| {
            e["call_site"]["module"]
                .as_str()
                .filter(|m| m.ends_with("/mappings"))
        })
        .unwrap_or_else(|| panic!("no call site in the copy; events: {:#?}", run.events));
    assert_eq!(
        module,
        copy.to_str().expect("utf8"),
        "modules keep the target's path"
    );
    let report = report_of(&run);
    assert!(report_names(report, "mappings::map_known_size"), "{report}");
}
