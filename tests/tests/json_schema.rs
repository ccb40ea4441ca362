//! Every JSON object memtrace prints validates against the documented
//! schema, `docs/memtrace.schema.json`: the trace stream (every event kind,
//! periodic and final reports with ranges, the growing line, the summary)
//! and the snapshot.

mod common;

use std::{
    io::BufRead as _,
    process::{Command, Stdio},
};

use common::{Waiting, check_schema, memtrace_bin, require_root, schema_validator, temp_path};
use serde_json::Value;

const MAPPINGS: &str = env!("CARGO_BIN_EXE_mappings");

#[test]
fn every_trace_line_validates() {
    require_root();
    let validator = schema_validator();
    let out = temp_path("schema-steps");
    // The shell runs the mappings fixture (every syscall kind, a failed
    // call, a named region) and forks /bin/true (fork, exec, exit).
    let script = format!("'{MAPPINGS}' --out '{}'; /bin/true", out.display());
    let output = Command::new(memtrace_bin())
        .args([
            "--json",
            "--ranges",
            "--follow-forks",
            "--report-every",
            "100ms",
            "--",
            "/bin/sh",
            "-c",
            &script,
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run memtrace");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "memtrace failed: {stderr}");
    let mut kinds = std::collections::BTreeSet::new();
    let mut types = std::collections::BTreeMap::<String, usize>::new();
    for line in output.stdout.lines() {
        let line = line.expect("utf8 stdout");
        if line.trim().is_empty() {
            continue;
        }
        // Nothing else shares stdout here: every line is memtrace's.
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line:?}"));
        check_schema(&validator, &v);
        *types
            .entry(v["type"].as_str().unwrap_or("?").into())
            .or_default() += 1;
        if let Some(k) = v["kind"].as_str() {
            kinds.insert(k.to_owned());
        }
    }
    for kind in [
        "mmap",
        "munmap",
        "mremap",
        "brk",
        "mprotect",
        "madvise",
        "set_vma_name",
        "fork",
        "exec",
        "exit",
    ] {
        assert!(
            kinds.contains(kind),
            "no {kind} event to validate; saw {kinds:?}"
        );
    }
    assert!(types.get("report").is_some_and(|n| *n >= 1), "{types:?}");
    assert_eq!(types.get("growing"), Some(&1), "{types:?}");
    assert_eq!(types.get("summary"), Some(&1), "{types:?}");
}

#[test]
fn snapshot_json_validates() {
    let validator = schema_validator();
    let out = temp_path("schema-snapshot");
    let mut w = Waiting::start(MAPPINGS, &["--out", out.to_str().expect("utf8")]);
    let output = Command::new(memtrace_bin())
        .args(["snapshot", "--json", "--all", "--pid", &w.pid.to_string()])
        .output()
        .expect("run memtrace snapshot");
    w.go();
    w.finish();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let v: Value = serde_json::from_slice(&output.stdout).expect("snapshot JSON");
    check_schema(&validator, &v);
    assert!(v["regions"].as_array().is_some_and(|r| !r.is_empty()));
}

#[test]
fn the_schema_rejects_drift() {
    // The check above is only worth something if the schema is strict:
    // an unknown field, a numeric address or a wrong version must fail.
    let validator = schema_validator();
    let good = serde_json::json!({
        "type": "summary", "schema_version": 2, "events": {"mmap": 1},
        "bytes_mapped": 4096, "bytes_unmapped": 0, "failed_calls": 0,
        "lost_events": 0, "lost": {"ring_buffer": 0, "pending": 0, "untraced_children": 0, "undecodable": 0, "unapplied": 0},
        "display_dropped": 0
    });
    assert!(validator.is_valid(&good));
    let mut extra = good.clone();
    extra["surprise"] = Value::from(1);
    assert!(!validator.is_valid(&extra), "unknown fields are rejected");
    let mut old = good.clone();
    old["schema_version"] = Value::from(1);
    assert!(!validator.is_valid(&old), "other versions are rejected");
    let frame = serde_json::json!({"address": 4096});
    let mut ev = serde_json::json!({
        "type": "event", "schema_version": 2, "time_ns": 1, "pid": 1, "tid": 1,
        "kind": "munmap", "addr": "0x1000", "len": 4096, "result": 0, "stack": []
    });
    assert!(validator.is_valid(&ev));
    ev["stack"] = Value::Array(vec![frame]);
    assert!(!validator.is_valid(&ev), "addresses must be hex strings");
    let mut unread = serde_json::json!({
        "type": "event", "schema_version": 2, "time_ns": 1, "pid": 1, "tid": 1,
        "kind": "set_vma_name", "addr": "0x1000", "len": 4096, "result": 0, "stack": [],
        "name": null, "name_refused": false, "name_unreadable": true
    });
    assert!(
        validator.is_valid(&unread),
        "an unreadable name is a state of its own"
    );
    unread["name_unreadable"] = Value::Bool(false);
    assert!(
        !validator.is_valid(&unread),
        "name_unreadable is present only when true"
    );
}
