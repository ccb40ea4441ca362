//! The attributed report on real processes: the ledger equals the kernel's
//! layout range by range after a seeded random workload on several
//! threads; known functions get their known RSS; launch mode attributes
//! (nearly) all anonymous RSS.

mod common;

use common::{
    MapsLine, Ranges, Run, Waiting, bytes_of, normalize, read_jsonl, read_maps, report_of,
    run_attached, run_launch, show_ranges, subtract, temp_path,
};
use serde_json::Value;

const STRESS: &str = env!("CARGO_BIN_EXE_stress");
const GROUND_TRUTH: &str = env!("CARGO_BIN_EXE_ground_truth");
const SHARED_ANON: &str = env!("CARGO_BIN_EXE_shared_anon");
const BRK_GROWER: &str = env!("CARGO_BIN_EXE_brk_grower");

const PAGE: u64 = 4096;

fn anon_ranges(maps: &[MapsLine]) -> Ranges {
    normalize(
        maps.iter()
            .filter(|m| m.is_anon())
            .map(|m| (m.start, m.end))
            .collect(),
    )
}

fn all_ranges(maps: &[MapsLine]) -> Ranges {
    normalize(maps.iter().map(|m| (m.start, m.end)).collect())
}

/// An address as memtrace writes it: a `"0x…"` string.
fn hex(v: &Value) -> Option<u64> {
    v.as_str()
        .and_then(|s| s.strip_prefix("0x"))
        .and_then(|h| u64::from_str_radix(h, 16).ok())
}

/// `traced_ranges` of the report, checked to be in the documented form:
/// address order, disjoint, adjacent ones coalesced, page aligned.
fn traced_ranges(report: &Value) -> Ranges {
    let list = report["traced_ranges"].as_array().unwrap_or_else(|| {
        panic!(
            "report has no traced_ranges array (was --ranges passed?): {}",
            short(report)
        )
    });
    let ranges: Ranges = list
        .iter()
        .map(|r| {
            let pair = (hex(&r[0]), hex(&r[1]));
            let (Some(s), Some(e)) = pair else {
                panic!("traced range {r} is not [start, end]");
            };
            (s, e)
        })
        .collect();
    for w in ranges.windows(2) {
        assert!(
            w[0].1 < w[1].0,
            "traced_ranges must be in address order, disjoint and coalesced: {:x?} then {:x?}",
            w[0],
            w[1]
        );
    }
    for &(s, e) in &ranges {
        assert!(
            s < e && s % PAGE == 0 && e % PAGE == 0,
            "traced range {s:x}-{e:x} is empty or not page aligned"
        );
    }
    ranges
}

/// The report without its long arrays, for messages.
fn short(report: &Value) -> String {
    let mut r = report.clone();
    if let Some(o) = r.as_object_mut() {
        o.remove("traced_ranges");
        if let Some(sites) = o.get_mut("call_sites").and_then(Value::as_array_mut) {
            sites.truncate(5);
        }
    }
    r.to_string()
}

fn the_function(site: &Value) -> &str {
    site["call_site"]["function"].as_str().unwrap_or("")
}

#[test]
fn stress_ledger_matches_maps_exactly() {
    let out = temp_path("stress");
    let w = Waiting::start(
        STRESS,
        &[
            "--out",
            out.to_str().expect("utf8"),
            "--seed",
            "7",
            "--threads",
            "4",
            "--ops",
            "400",
        ],
    );
    // The fixture is blocked before its first traced change: everything
    // here was made before tracing began.
    let before = read_maps(w.pid);
    let mut after: Vec<MapsLine> = Vec::new();
    // No --quiet: run_attached waits for memtrace's "tracing pid" line.
    let run: Run = run_attached(&["--json", "--top", "0", "--ranges"], w, |w| {
        w.go();
        w.expect_line("done");
        // The fixture now waits for stdin with its final layout; it leaves
        // through _exit, so memtrace's exit stop sees this same layout.
        after = read_maps(w.pid);
    });
    assert_eq!(run.status, 0, "memtrace status; stderr:\n{}", run.stderr);
    assert_eq!(
        run.summary["lost_events"], 0,
        "events were lost, the ledger cannot match: {}",
        run.summary
    );
    let steps = read_jsonl(&out);
    assert!(
        steps.len() >= 4 * 400 / 2,
        "the fixture logged {} steps",
        steps.len()
    );
    let failed: Vec<&Value> = steps
        .iter()
        .filter(|s| s["result"].as_i64().is_some_and(|r| r < 0))
        .collect();
    assert!(
        failed.is_empty(),
        "the fixture's own calls failed: {failed:?}"
    );

    let report = report_of(&run);
    let ledger = traced_ranges(report);
    let before_all = all_ranges(&before);
    let after_anon = anon_ranges(&after);
    // Anonymous memory created after tracing began.
    let created = subtract(&after_anon, &before_all);
    let ledger_new = subtract(&ledger, &before_all);
    assert!(
        created.len() >= 20 && bytes_of(&created) >= 64 * PAGE,
        "the workload should leave many new anonymous ranges, found:\n{}",
        show_ranges(&created, 20)
    );

    eprintln!(
        "comparing {} new anonymous ranges ({} pages) with {} ledger ranges",
        created.len(),
        bytes_of(&created) / PAGE,
        ledger.len()
    );
    let missing = subtract(&created, &ledger_new);
    let extra = subtract(&ledger_new, &created);
    let not_anon = subtract(&ledger, &after_anon);
    let mut problems = String::new();
    if !missing.is_empty() {
        problems.push_str(&format!(
            "{} ranges ({} pages) are anonymous in /proc/PID/maps, created after tracing began, but not in the ledger:\n{}",
            missing.len(),
            bytes_of(&missing) / PAGE,
            show_ranges(&missing, 10)
        ));
    }
    if !extra.is_empty() {
        problems.push_str(&format!(
            "{} ranges ({} pages) are in the ledger but not anonymous in /proc/PID/maps:\n{}",
            extra.len(),
            bytes_of(&extra) / PAGE,
            show_ranges(&extra, 10)
        ));
    }
    if !not_anon.is_empty() {
        problems.push_str(&format!(
            "{} ledger ranges ({} pages) lie outside the anonymous mappings of the final layout:\n{}",
            not_anon.len(),
            bytes_of(&not_anon) / PAGE,
            show_ranges(&not_anon, 10)
        ));
    }
    // Page sets equal, so the coalesced range lists are equal too; say so
    // range by range as well.
    if problems.is_empty() && ledger_new != created {
        let first = ledger_new
            .iter()
            .zip(&created)
            .find(|(a, b)| a != b)
            .map(|(a, b)| format!("ledger {:x?} vs maps {:x?}", a, b));
        problems.push_str(&format!(
            "range lists differ ({} vs {} ranges): {first:?}\n",
            ledger_new.len(),
            created.len()
        ));
    }
    assert!(
        problems.is_empty(),
        "ledger vs /proc/PID/maps (seed 7, 4 threads × 400 ops; fixture log {}):\n{problems}",
        out.display()
    );
}

#[test]
fn ground_truth_functions_get_their_rss() {
    let out = temp_path("ground-truth");
    let run = run_launch(
        &["--json", "--quiet", "--top", "0"],
        GROUND_TRUTH,
        &["--out", out.to_str().expect("utf8")],
    );
    assert_eq!(run.status, 0, "memtrace status; stderr:\n{}", run.stderr);
    let steps = read_jsonl(&out);
    let report = report_of(&run);
    let sites = report["call_sites"]
        .as_array()
        .unwrap_or_else(|| panic!("report without call_sites: {}", short(report)));

    let adjacent = steps
        .iter()
        .find(|s| s["step"] == "adjacent_vma")
        .expect("the fixture's adjacent_vma step");
    assert_eq!(
        adjacent["merged"], true,
        "adjacent_one and adjacent_two were meant to share one VMA: {adjacent}"
    );

    let expected: Vec<&Value> = steps
        .iter()
        .filter(|s| s.get("expected_rss").is_some())
        .collect();
    assert_eq!(
        expected.len(),
        4,
        "four functions with known RSS: {steps:?}"
    );
    let mut problems = String::new();
    for step in expected {
        let func = step["func"].as_str().expect("func");
        let want_rss = step["expected_rss"].as_u64().expect("expected_rss");
        let want_virtual = step["expected_virtual"].as_u64().expect("expected_virtual");
        let suffix = format!("ground_truth::{func}");
        let mine: Vec<&Value> = sites
            .iter()
            .filter(|s| the_function(s).ends_with(&suffix))
            .collect();
        let rss: u64 = mine.iter().filter_map(|s| s["rss_bytes"].as_u64()).sum();
        let virt: u64 = mine
            .iter()
            .filter_map(|s| s["virtual_bytes"].as_u64())
            .sum();
        let tolerance = (want_rss / 100).max(PAGE);
        if rss.abs_diff(want_rss) > tolerance {
            problems.push_str(&format!(
                "{func}: {rss} bytes attributed, expected {want_rss} (±{tolerance}); its sites: {mine:?}\n"
            ));
        }
        if virt != want_virtual {
            problems.push_str(&format!(
                "{func}: {virt} virtual bytes, expected {want_virtual}; its sites: {mine:?}\n"
            ));
        }
    }
    if !problems.is_empty() {
        let functions: Vec<(&str, &Value)> = sites
            .iter()
            .map(|s| (the_function(s), &s["rss_bytes"]))
            .collect();
        panic!("{problems}all call sites (function, rss): {functions:?}");
    }
}

#[test]
fn launch_mode_covers_99_percent() {
    let out = temp_path("coverage");
    let run = run_launch(
        &["--json", "--quiet", "--top", "0"],
        GROUND_TRUTH,
        &["--out", out.to_str().expect("utf8")],
    );
    assert_eq!(run.status, 0, "memtrace status; stderr:\n{}", run.stderr);
    let report = report_of(&run);
    let field = |name: &str| {
        report[name]
            .as_u64()
            .unwrap_or_else(|| panic!("report field {name} missing: {}", short(report)))
    };
    let anon = field("anon_rss_bytes");
    let attributed = field("attributed_rss_bytes");
    let untraced = field("untraced_rss_bytes");
    assert!(
        anon >= 10 << 20,
        "the fixture makes over 10 MiB resident, the report says {anon}: {}",
        short(report)
    );
    assert_eq!(
        attributed + untraced,
        anon,
        "attributed ({attributed}) + untraced ({untraced}) must equal anonymous RSS ({anon})"
    );
    let coverage = report["coverage"].as_f64().expect("coverage");
    assert!(
        (coverage - attributed as f64 / anon as f64).abs() < 1e-9,
        "coverage {coverage} is not attributed/anon = {attributed}/{anon}"
    );
    assert!(
        coverage >= 0.99,
        "launch mode must attribute ≥ 99% of anonymous RSS, got {:.3}% ({untraced} bytes untraced): {}",
        coverage * 100.0,
        short(report)
    );
    let sites_rss: u64 = report["call_sites"]
        .as_array()
        .expect("call_sites")
        .iter()
        .filter_map(|s| s["rss_bytes"].as_u64())
        .sum();
    assert_eq!(
        sites_rss, attributed,
        "with --top 0 the call sites' RSS adds up to the attributed RSS"
    );
}

/// Shared anonymous memory (smaps: `/dev/zero (deleted)`, `Anonymous: 0`)
/// is attributed from its `Rss` to the function that mapped it, in totals
/// of its own; the private anonymous totals stay exact beside it.
#[test]
fn shared_anonymous_memory_is_attributed() {
    let out = temp_path("shared-anon");
    let run = run_launch(
        &["--json", "--quiet", "--top", "0"],
        SHARED_ANON,
        &["--out", out.to_str().expect("utf8")],
    );
    assert_eq!(run.status, 0, "memtrace status; stderr:\n{}", run.stderr);
    let report = report_of(&run);
    // A field this test needs reads as 0 when missing, so that a report
    // without shared memory support fails on the figures below.
    let field = |name: &str| report[name].as_u64().unwrap_or(0);
    let sites = report["call_sites"]
        .as_array()
        .unwrap_or_else(|| panic!("report without call_sites: {}", short(report)));
    let of = |func: &str, name: &str| -> u64 {
        let suffix = format!("shared_anon::{func}");
        sites
            .iter()
            .filter(|s| the_function(s).ends_with(&suffix))
            .map(|s| s[name].as_u64().unwrap_or(0))
            .sum()
    };

    let want = 64u64 << 20;
    let shared = of("map_shared_anon", "shared_rss_bytes");
    assert!(
        shared.abs_diff(want) <= PAGE,
        "map_shared_anon touched 64 MiB of shared anonymous memory; the report gives it \
         {shared} bytes of shared RSS: {}",
        short(report)
    );
    assert_eq!(
        of("map_shared_anon", "rss_bytes"),
        0,
        "shared memory is not private anonymous RSS"
    );
    let private = of("map_private_anon", "rss_bytes");
    assert!(
        private.abs_diff(1 << 20) <= PAGE,
        "map_private_anon touched 1 MiB, the report says {private}: {}",
        short(report)
    );
    assert_eq!(of("map_private_anon", "shared_rss_bytes"), 0);

    let (total, attributed, untraced) = (
        field("shared_anon_rss_bytes"),
        field("shared_attributed_rss_bytes"),
        field("shared_untraced_rss_bytes"),
    );
    assert!(
        total >= want && attributed >= shared,
        "shared totals {total} / {attributed} below the 64 MiB mapped: {}",
        short(report)
    );
    assert_eq!(
        attributed + untraced,
        total,
        "shared: attributed + untraced == total"
    );
    assert_eq!(
        field("attributed_rss_bytes") + field("untraced_rss_bytes"),
        field("anon_rss_bytes"),
        "private anonymous totals stay exact"
    );
    let sites_shared: u64 = sites
        .iter()
        .map(|s| s["shared_rss_bytes"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(
        sites_shared, attributed,
        "with --top 0 the call sites' shared RSS adds up to the shared attributed RSS"
    );
    let first = the_function(&sites[0]);
    assert!(
        first.ends_with("shared_anon::map_shared_anon"),
        "sites sort by private + shared RSS: the 64 MiB site comes first, not {first:?}"
    );
}

/// The page-set arithmetic the stress test relies on (no root needed).
#[test]
fn range_helpers_work_on_pages() {
    assert_eq!(
        normalize(vec![(30, 40), (0, 10), (10, 20), (35, 50), (60, 60)]),
        vec![(0, 20), (30, 50)]
    );
    let a = normalize(vec![(0, 100), (200, 300)]);
    let b = normalize(vec![(10, 20), (90, 210), (250, 260), (400, 500)]);
    assert_eq!(
        subtract(&a, &b),
        vec![(0, 10), (20, 90), (210, 250), (260, 300)]
    );
    assert_eq!(subtract(&b, &a), vec![(100, 200), (400, 500)]);
    assert_eq!(subtract(&a, &a), vec![]);
    assert_eq!(subtract(&a, &[]), a);
    assert_eq!(bytes_of(&a), 200);
    let maps = common::parse_maps(
        "7f00a000-7f00b000 rw-p 00000000 00:00 0 \n\
         7f00b000-7f00c000 r--p 00000000 08:01 1234 /usr/lib/libc.so.6\n\
         7ffd0000-7ffd1000 rw-p 00000000 00:00 0                          [stack]\n\
         55550000-55551000 rw-p 00000000 00:00 0                          [heap]\n",
    );
    assert_eq!(
        anon_ranges(&maps),
        vec![(0x5555_0000, 0x5555_1000), (0x7f00_a000, 0x7f00_b000)]
    );
}

/// `--folded` and `--flamegraph` write the final report for people to look
/// at: folded lines weighted by RSS that add up to the anonymous total
/// (private and shared), and an SVG.
#[test]
fn folded_and_flamegraph_files_match_the_report() {
    let out = temp_path("gt-folded");
    let folded = temp_path("folded").with_extension("folded");
    let svg = temp_path("flame").with_extension("svg");
    let run = run_launch(
        &[
            "--json",
            "--quiet",
            "--top",
            "0",
            "--folded",
            folded.to_str().expect("utf8"),
            "--flamegraph",
            svg.to_str().expect("utf8"),
        ],
        GROUND_TRUTH,
        &["--out", out.to_str().expect("utf8")],
    );
    assert_eq!(run.status, 0, "{}", run.stderr);
    let report = report_of(&run);
    let text = std::fs::read_to_string(&folded).expect("folded file written");
    let mut total = 0u64;
    let mut alpha = 0u64;
    for line in text.lines() {
        let (stack, weight) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad folded line {line:?}"));
        let w: u64 = weight
            .parse()
            .unwrap_or_else(|_| panic!("bad weight in {line:?}"));
        total += w;
        if stack
            .split(';')
            .any(|f| f.ends_with("ground_truth::cache_alpha"))
        {
            alpha += w;
        }
    }
    assert_eq!(
        total,
        report["anon_rss_bytes"].as_u64().expect("anon")
            + report["shared_anon_rss_bytes"]
                .as_u64()
                .expect("shared anon"),
        "folded weights add up to the anonymous RSS, private and shared"
    );
    assert_eq!(alpha, 6 << 20, "cache_alpha's 6 MiB appear under its frame");
    let svg_text = std::fs::read_to_string(&svg).expect("svg written");
    assert!(
        svg_text.starts_with("<?xml") && svg_text.contains("cache_alpha"),
        "an SVG flame graph naming the sites"
    );
}

/// `--report-every` prints the report while tracing, not only at the end.
#[test]
fn report_every_prints_periodic_reports() {
    let out = temp_path("gt-every");
    let w = Waiting::start(GROUND_TRUTH, &["--out", out.to_str().expect("utf8")]);
    let run = run_attached(&["--json", "--quiet", "--report-every", "200ms"], w, |w| {
        w.go();
        w.expect_line("done");
        // Several 200 ms periods: at least one periodic report even when a
        // loaded machine makes one report take most of a second.
        std::thread::sleep(std::time::Duration::from_millis(1500));
    });
    assert_eq!(run.status, 0, "{}", run.stderr);
    let reports: Vec<&Value> = run
        .others
        .iter()
        .filter(|o| o["type"] == "report")
        .collect();
    let periodic = reports.iter().filter(|r| r["at"] == "periodic").count();
    assert!(
        periodic >= 1 && reports.len() > periodic,
        "periodic reports plus the final one, got {} ({periodic} periodic)",
        reports.len()
    );
    for r in &reports {
        let (a, u, t) = (
            r["attributed_rss_bytes"].as_u64().expect("attributed"),
            r["untraced_rss_bytes"].as_u64().expect("untraced"),
            r["anon_rss_bytes"].as_u64().expect("anon"),
        );
        assert_eq!(a + u, t, "every report is exact");
    }
}

#[test]
fn json_reports_carry_every_call_site() {
    // `--top` shapes the text; scripts reading JSON lose no call site.
    let out = common::temp_path("json-all-sites");
    let run = common::run_launch(
        &["--json", "--quiet", "--top", "1"],
        env!("CARGO_BIN_EXE_mappings"),
        &["--out", out.to_str().expect("utf8")],
    );
    let report = common::report_of(&run);
    let count = report["call_site_count"].as_u64().expect("count");
    assert!(
        count > 1,
        "the fixture maps from several call sites: {report}"
    );
    assert_eq!(
        report["call_sites"].as_array().map(|a| a.len() as u64),
        Some(count),
        "every call site is listed: {report}"
    );
}

#[test]
fn memory_exec_mapped_is_attributed_in_launch_mode() {
    // A 100 MiB .bss was "untraced (mapped before tracing)" before: exec
    // maps it, no call the program makes.
    let run = common::run_launch(
        &["--json", "--quiet"],
        env!("CARGO_BIN_EXE_static_bss"),
        &[],
    );
    assert_eq!(run.status, 0, "{}", run.stderr);
    let report = common::report_of(&run);
    let sites = report["call_sites"].as_array().expect("call sites");
    let bss = sites
        .iter()
        .find(|s| {
            s["call_site"]["function"]
                .as_str()
                .is_some_and(|f| f.starts_with("exec image .bss of") && f.ends_with("static_bss"))
        })
        .unwrap_or_else(|| panic!("no exec image .bss call site: {report}"));
    assert!(
        bss["rss_bytes"].as_u64().is_some_and(|b| b >= 100 << 20),
        "the .bss holds the 100 MiB: {bss}"
    );
    let coverage = report["coverage"].as_f64().expect("coverage");
    assert!(coverage >= 0.99, "coverage {coverage}: {report}");
}

/// Attached to a running process, memtrace knows its break from `/proc`:
/// the first brk growth after attaching is traced like the second (only
/// memory mapped before attaching may be untraced).
#[test]
fn every_brk_growth_after_attaching_is_traced() {
    let w = Waiting::start(BRK_GROWER, &[]);
    let mut grown = String::new();
    let run = run_attached(&["--json", "-q", "--ranges"], w, |w| {
        w.go();
        w.expect_line("grown 1");
        w.go();
        grown = w.expect_line("grown 2");
    });
    assert_eq!(run.status, 0, "{}", run.stderr);
    let mut fields = grown.split_whitespace().skip(2);
    let mut addr = || {
        fields
            .next()
            .and_then(|f| u64::from_str_radix(f.trim_start_matches("0x"), 16).ok())
            .unwrap_or_else(|| panic!("bad fixture line {grown:?}"))
    };
    let (start, end) = (addr(), addr());
    // The heap grew from `start` (rounded up: the page it is in was mapped
    // before) to `end` (rounded up: brk maps whole pages).
    let grown = vec![(start.div_ceil(PAGE) * PAGE, end.div_ceil(PAGE) * PAGE)];
    let report = report_of(&run);
    let untraced = subtract(&grown, &traced_ranges(report));
    assert!(
        untraced.is_empty(),
        "{} KiB of the heap grown after attaching is untraced: {}; report: {}",
        bytes_of(&untraced) >> 10,
        show_ranges(&untraced, 8),
        short(report)
    );
}
