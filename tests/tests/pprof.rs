//! pprof profiles read by the real client: `go tool pprof -top` and
//! `-traces` on the `--pprof` file and on `GET /debug/pprof/memtrace` list
//! the ground-truth fixture's functions with exactly the resident bytes
//! memtrace's JSON report gives them, and name the fixture's ELF build id.

mod common;
mod serving;

use std::{path::Path, process::Command};

use common::{report_of, require_tool, run_launch, temp_path};
use serde_json::Value;
use serving::GroundTruthServed;

const GROUND_TRUTH: &str = env!("CARGO_BIN_EXE_ground_truth");
const FUNCS: [&str; 4] = ["cache_alpha", "cache_beta", "adjacent_one", "adjacent_two"];

/// `go tool pprof ARGS SOURCE` (a file or a URL): its stdout.
fn pprof(args: &[&str], source: &str) -> String {
    require_tool("go", "golang-go");
    // pprof saves fetched profiles under $PPROF_TMPDIR (else $HOME/pprof).
    let tmp = temp_path("pprof-tmp").with_extension("d");
    std::fs::create_dir_all(&tmp).expect("pprof tmp dir");
    let out = Command::new("go")
        .args(["tool", "pprof", "-unit=byte"])
        .args(args)
        .arg(source)
        .env("PPROF_TMPDIR", &tmp)
        .output()
        .expect("run go tool pprof (apt-get install golang-go)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "go tool pprof {args:?} {source} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `6291456B` or `0` as pprof prints bytes with `-unit=byte`.
fn bytes(token: &str) -> Option<u64> {
    token.strip_suffix('B').unwrap_or(token).parse().ok()
}

/// `-top` rows: function name → cumulative bytes.
fn top_rows(text: &str) -> Vec<(String, u64)> {
    let mut rows = Vec::new();
    let mut table = false;
    for line in text.lines() {
        if line.trim_start().starts_with("flat  flat%") {
            table = true;
            continue;
        }
        if !table {
            continue;
        }
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert!(cols.len() >= 6, "bad -top row {line:?} in:\n{text}");
        let cum = bytes(cols[3]).unwrap_or_else(|| panic!("bad cum in {line:?}"));
        rows.push((cols[5..].join(" "), cum));
    }
    assert!(!rows.is_empty(), "no -top table in:\n{text}");
    rows
}

/// `-traces` blocks: (bytes, frames leaf first).
fn traces(text: &str) -> Vec<(u64, Vec<String>)> {
    let mut out = Vec::new();
    for block in text.split("-----------+-------------------------------------------------------") {
        let mut value = None;
        let mut frames = Vec::new();
        for line in block.lines() {
            let mut cols = line.split_whitespace();
            let Some(first) = cols.next() else { continue };
            match value {
                None => {
                    if let Some(v) = bytes(first) {
                        value = Some(v);
                        frames.push(cols.collect::<Vec<_>>().join(" "));
                    }
                }
                Some(_) => frames.push(line.trim().to_owned()),
            }
        }
        if let Some(v) = value {
            out.push((v, frames));
        }
    }
    assert!(!out.is_empty(), "no traces in:\n{text}");
    out
}

/// Resident bytes (private + shared) of the report's call sites in
/// `ground_truth::FUNC`.
fn json_rss(report: &Value, func: &str) -> u64 {
    let suffix = format!("ground_truth::{func}");
    report["call_sites"]
        .as_array()
        .expect("call_sites")
        .iter()
        .filter(|s| {
            s["call_site"]["function"]
                .as_str()
                .is_some_and(|f| f.ends_with(&suffix))
        })
        .map(|s| s["rss_bytes"].as_u64().unwrap_or(0) + s["shared_rss_bytes"].as_u64().unwrap_or(0))
        .sum()
}

/// The GNU build id of an ELF file, lowercase hex.
fn build_id(path: &str) -> String {
    use object::Object as _;
    let data = std::fs::read(path).expect("read fixture");
    let elf = object::File::parse(&*data).expect("fixture is ELF");
    let id = elf
        .build_id()
        .expect("notes")
        .expect("the fixture has a GNU build id");
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// What pprof shows of `source` agrees with `report`, function by
/// function, and names the fixture with its build id.
fn check_profile(source: &str, report: &Value) {
    let top = pprof(&["-top", "-nodefraction=0", "-nodecount=100000"], source);
    let rows = top_rows(&top);
    let want_id = build_id(GROUND_TRUTH);
    assert!(
        top.contains("File: ground_truth") && top.contains(&format!("Build ID: {want_id}")),
        "pprof names the program and its build id {want_id}:\n{top}"
    );
    let total: u64 = report["anon_rss_bytes"].as_u64().expect("anon")
        + report["shared_anon_rss_bytes"]
            .as_u64()
            .expect("shared anon");
    assert!(
        top.contains(&format!("of {total}B total")),
        "the profile's total is the anonymous RSS, {total} bytes:\n{top}"
    );
    let traced = traces(&pprof(&["-traces"], source));
    for func in FUNCS {
        let want = json_rss(report, func);
        assert!(want > 0, "{func} has no resident bytes in the JSON report");
        let name = format!("ground_truth::{func}");
        let in_top: Vec<u64> = rows
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, c)| *c)
            .collect();
        assert_eq!(
            in_top,
            vec![want],
            "{func} in -top (cum) vs the JSON report:\n{top}"
        );
        let in_traces: u64 = traced
            .iter()
            .filter(|(_, frames)| frames.contains(&name))
            .map(|(v, _)| v)
            .sum();
        assert_eq!(
            in_traces, want,
            "{func} in -traces vs the JSON report: {traced:?}"
        );
    }
}

#[test]
fn pprof_file_lists_the_fixture_functions_with_their_rss() {
    let out = temp_path("pprof-gt");
    let file = temp_path("profile").with_extension("pb.gz");
    let run = run_launch(
        &[
            "--json",
            "--quiet",
            "--top",
            "0",
            "--pprof",
            file.to_str().expect("utf8"),
        ],
        GROUND_TRUTH,
        &["--out", out.to_str().expect("utf8")],
    );
    assert_eq!(run.status, 0, "memtrace status; stderr:\n{}", run.stderr);
    let gz = std::fs::read(&file).expect("--pprof wrote its file");
    assert_eq!(&gz[..2], &[0x1f, 0x8b], "the profile is gzipped");
    check_profile(file.to_str().expect("utf8"), report_of(&run));
    let _ = std::fs::remove_file(Path::new(&file));
}

#[test]
fn pprof_endpoint_serves_the_attributed_report() {
    let GroundTruthServed {
        fixture: mut w,
        served,
        report,
        ..
    } = GroundTruthServed::start("pprof-serve");
    check_profile(&served.url("/debug/pprof/memtrace"), &report);

    let (code, body) = served.get_text("/debug/pprof/memtrace?color=blue");
    assert_eq!(code, 400, "{body}");
    assert_eq!(body.trim().lines().count(), 1, "one-line reason: {body}");
    assert_eq!(w.finish(), 0);
    served.stop();
}
