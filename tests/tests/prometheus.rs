//! `GET /metrics` scraped by a real Prometheus server: the series it
//! stores hold the values memtrace's own JSON report and the kernel give,
//! label values with quotes, backslashes, `<>` and `::` come back as they
//! were, control characters (a newline, ESC) escaped as the text report
//! shows them, and promtool's linter finds nothing to say.
//!
//! Needs the `prometheus` binary (Debian package `prometheus`, which
//! `cargo xtask test` installs); fails naming the package when it is
//! missing.

mod common;
mod serving;

use std::{
    collections::HashMap,
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{Waiting, read_jsonl, require_root, require_tool, temp_path};
use memtrace::export::metrics::{self, AttributionInput, MetricsInput, SiteRss};
use serde_json::Value;
use serving::{Served, get_text};

/// A call-site name with everything the text format must escape, and a
/// terminal escape.
const HOSTILE_SITE: &str = "<ns::Cache<T> as Grow>::grow \"fast\" C:\\dir\nλ\x1b[31m next";

/// Serve `body` as the response to every request on a loopback port, from
/// a thread of its own; the address.
fn serve_text(body: String) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address").to_string();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().map_while(Result::ok) {
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = write!(
                conn,
                "HTTP/1.0 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\n\r\n{body}",
                metrics::CONTENT_TYPE,
                body.len()
            );
        }
    });
    addr
}

/// `promtool check metrics` (parse and lint) on `text`: no complaint.
fn assert_lint_clean(what: &str, text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics on {what}: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

const GROUND_TRUTH: &str = env!("CARGO_BIN_EXE_ground_truth");

/// Call sites with a series of their own in the traced job: the fixture's
/// three largest (`cache_alpha`, `cache_beta`, `adjacent_two`), so
/// `adjacent_one` and the small rest are `site="other"`.
const METRICS_SITES: &str = "3";

/// A child killed when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A free loopback port (released for Prometheus to take).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A Prometheus server on loopback scraping `targets` (job → address)
/// every second, its data in a temporary directory.
fn start_prometheus(dir: &Path, targets: &[(&str, &str)]) -> (Child, String) {
    let mut config =
        String::from("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n");
    for (job, addr) in targets {
        config.push_str(&format!(
            "  - job_name: {job}\n    static_configs:\n      - targets: ['{addr}']\n"
        ));
    }
    let config_path = dir.join("prometheus.yml");
    std::fs::write(&config_path, config).expect("write prometheus.yml");
    let addr = format!("127.0.0.1:{}", free_port());
    let log = std::fs::File::create(dir.join("prometheus.log")).expect("prometheus log");
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config_path.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn prometheus");
    (child, addr)
}

/// The result vector of an instant query: (labels, value) per series.
fn query(prom: &str, promql: &str) -> Vec<(HashMap<String, String>, f64)> {
    let (code, body) = get_text(prom, &format!("/api/v1/query?query={}", url_encode(promql)));
    assert_eq!(code, 200, "query {promql}: {body}");
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(v["status"], "success", "{body}");
    v["data"]["result"]
        .as_array()
        .unwrap_or_else(|| panic!("no result vector: {body}"))
        .iter()
        .map(|s| {
            let labels = s["metric"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                        .collect()
                })
                .unwrap_or_default();
            let value = s["value"][1]
                .as_str()
                .and_then(|x| x.parse().ok())
                .unwrap_or_else(|| panic!("bad sample {s}"));
            (labels, value)
        })
        .collect()
}

/// The single value of an instant query.
fn scalar(prom: &str, promql: &str) -> f64 {
    match query(prom, promql).as_slice() {
        [(_, v)] => *v,
        other => panic!("{promql}: expected one series, got {other:?}"),
    }
}

/// `Rss:` of `/proc/PID/smaps_rollup`, in bytes.
fn rollup_rss(pid: u32) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).expect("rollup");
    text.lines()
        .find_map(|l| l.strip_prefix("Rss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb * 1024.0)
        .expect("Rss in smaps_rollup")
}

#[test]
fn prometheus_scrapes_call_sites_and_categories() {
    require_root();
    require_tool("prometheus", "prometheus");
    require_tool("promtool", "prometheus");
    let out = temp_path("prometheus-gt");
    let dir = out.with_extension("d");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");

    let mut w = Waiting::start(GROUND_TRUTH, &["--out", out.to_str().expect("utf8")]);
    let pid = w.pid.to_string();
    let traced = Served::serve(&[
        "--trace",
        "--pid",
        &pid,
        "--metrics-sites",
        METRICS_SITES,
        "--sample-every",
        "100ms",
        "--history",
        "1m",
        "--alert",
        "rss>1KiB",
        "--alert",
        "rss>1TiB",
    ]);
    let snap = Served::serve(&["--pid", &pid]);
    w.go();
    w.expect_line("done");
    // From here on the fixture's memory stays as it is until it exits.

    // memtrace's rendering of a hostile call-site name, served as is.
    let hostile = metrics::render(&MetricsInput {
        pid: 1,
        attribution: Some(AttributionInput {
            sites: vec![SiteRss {
                site: HOSTILE_SITE.to_owned(),
                category: "other_call_sites".into(),
                subcategory: "call_site".into(),
                rss_bytes: 4096,
                shared_rss_bytes: 0,
            }],
            ..AttributionInput::default()
        }),
        top_sites: 20,
        ..MetricsInput::default()
    })
    .expect("render");
    assert_lint_clean("the hostile site", &hostile);
    let hostile_addr = serve_text(hostile);

    let (prometheus, prom) = start_prometheus(
        &dir,
        &[
            ("memtrace", &traced.addr),
            ("snapshot", &snap.addr),
            ("hostile", &hostile_addr),
        ],
    );
    let prometheus = Killed(prometheus);
    // Two successful scrapes of each job.
    let start = Instant::now();
    loop {
        let done = TcpStream::connect(&prom).is_ok()
            && query(&prom, "count_over_time(memtrace_target_info[1m]) >= 2").len() == 3;
        if done {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "Prometheus did not scrape every job twice within 20 s; up: {:?}; log: {}",
            TcpStream::connect(&prom)
                .is_ok()
                .then(|| query(&prom, "up")),
            std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // The label value Prometheus stored is the name memtrace was given,
    // its control characters escaped (`\n`, `\x1b`).
    let stored = query(&prom, "memtrace_site_rss_bytes{job=\"hostile\"}");
    assert_eq!(
        stored
            .iter()
            .map(|(l, v)| (l["site"].as_str(), *v))
            .collect::<Vec<_>>(),
        [(
            "<ns::Cache<T> as Grow>::grow \"fast\" C:\\dir\\nλ\\x1b[31m next",
            4096.0
        )]
    );
    for served in [&traced, &snap] {
        let (code, text) = served.get_text("/metrics");
        assert_eq!(code, 200, "{text}");
        assert_lint_clean(&served.addr, &text);
    }

    let (code, body) = traced.get_text("/debug/memory/attributed.json?top=0");
    assert_eq!(code, 200, "{body}");
    let report: Value = serde_json::from_str(&body).expect("JSON report");
    let json_sites = report["call_sites"].as_array().expect("call_sites");
    let log = read_jsonl(&out);

    // The fixture's call sites: the value Prometheus stored is the JSON
    // report's and the fixture's own count of the pages it touched.
    let sites = query(&prom, "memtrace_site_rss_bytes{job=\"memtrace\"}");
    for func in ["cache_alpha", "cache_beta", "adjacent_two"] {
        let qualified = format!("ground_truth::{func}");
        let series: Vec<_> = sites
            .iter()
            .filter(|(l, _)| l["site"].starts_with(&format!("{qualified} (ground_truth.rs:")))
            .collect();
        let [(labels, value)] = series.as_slice() else {
            panic!("one series for {func}, got {series:?} (all: {sites:?})");
        };
        let json: u64 = json_sites
            .iter()
            .filter(|s| {
                s["call_site"]["function"]
                    .as_str()
                    .is_some_and(|f| f.ends_with(&qualified))
            })
            .map(|s| s["rss_bytes"].as_u64().unwrap_or(0))
            .sum();
        let expected = log
            .iter()
            .find(|s| s["func"] == func)
            .and_then(|s| s["expected_rss"].as_u64())
            .unwrap_or_else(|| panic!("{func} logged"));
        assert_eq!(*value, json as f64, "{func}: Prometheus vs attributed.json");
        assert_eq!(json, expected, "{func}: attributed.json vs the fixture");
        let json_site = json_sites
            .iter()
            .find(|s| {
                s["call_site"]["function"]
                    .as_str()
                    .is_some_and(|f| f.ends_with(&qualified))
            })
            .expect("site in JSON");
        assert_eq!(
            labels["category"],
            json_site["category"].as_str().unwrap_or("?")
        );
        assert_eq!(
            labels["subcategory"],
            json_site["subcategory"].as_str().unwrap_or("?")
        );
    }
    // Cardinality is bounded: three sites and `other`, which holds the
    // rest (adjacent_one among them); together they are the attributed
    // memory.
    let count = report["call_site_count"].as_u64().expect("call_site_count");
    assert_eq!(sites.len(), 4, "3 sites + other of {count}: {sites:?}");
    let other = scalar(
        &prom,
        "memtrace_site_rss_bytes{job=\"memtrace\",site=\"other\"}",
    );
    let rest: u64 = json_sites
        .iter()
        .skip(3)
        .map(|s| s["rss_bytes"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(other, rest as f64, "other = the sites past the top 3");
    assert!(
        other >= 256.0 * 1024.0,
        "adjacent_one's 256 KiB is in other"
    );
    assert_eq!(
        scalar(&prom, "sum(memtrace_site_rss_bytes{job=\"memtrace\"})"),
        report["attributed_rss_bytes"].as_f64().expect("attributed"),
        "the site series add up to the attributed memory"
    );

    // Categories and sub-categories, as the JSON report has them.
    let cats = query(&prom, "memtrace_category_rss_bytes{job=\"memtrace\"}");
    let subs = query(&prom, "memtrace_subcategory_rss_bytes{job=\"memtrace\"}");
    let json_cats = report["categories"].as_array().expect("categories");
    assert_eq!(cats.len(), json_cats.len(), "{cats:?}");
    for c in json_cats {
        let name = c["name"].as_str().expect("name");
        let value = cats
            .iter()
            .find(|(l, _)| l["category"] == name)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no series for category {name}: {cats:?}"));
        assert_eq!(value, c["rss_bytes"].as_f64().expect("rss"), "{name}");
        for s in c["subcategories"].as_array().expect("subcategories") {
            let sub = s["name"].as_str().expect("name");
            let value = subs
                .iter()
                .find(|(l, _)| l["category"] == name && l["subcategory"] == sub)
                .map(|(_, v)| *v)
                .unwrap_or_else(|| panic!("no series for {name}/{sub}: {subs:?}"));
            assert_eq!(value, s["rss_bytes"].as_f64().expect("rss"), "{name}/{sub}");
        }
    }
    for (metric, field) in [
        ("memtrace_anon_rss_bytes", "anon_rss_bytes"),
        ("memtrace_untraced_rss_bytes", "untraced_rss_bytes"),
        ("memtrace_coverage_ratio", "coverage"),
    ] {
        let v = scalar(&prom, &format!("{metric}{{job=\"memtrace\"}}"));
        let j = report[field].as_f64().expect(field);
        assert!(
            (v - j).abs() <= 1e-9 * j.max(1.0),
            "{metric} {v} vs {field} {j}"
        );
    }
    // Session counters: every mmap the fixture logged, at least, and no
    // lost events (the JSON report says none either).
    let mmaps = log.iter().filter(|s| s["kind"] == "mmap").count() as f64;
    let traced_mmaps = scalar(
        &prom,
        "memtrace_events_total{job=\"memtrace\",kind=\"mmap\"}",
    );
    assert!(
        traced_mmaps >= mmaps,
        "{traced_mmaps} mmap events, fixture logged {mmaps}"
    );
    assert_eq!(report["lost_events"], 0);
    assert_eq!(
        scalar(&prom, "sum(memtrace_lost_events_total{job=\"memtrace\"})"),
        0.0
    );
    assert!(scalar(&prom, "memtrace_self_resident_bytes{job=\"memtrace\"}") > 0.0);
    assert!(scalar(&prom, "memtrace_self_cpu_seconds_total{job=\"memtrace\"}") > 0.0);

    // Both jobs' totals are the kernel's; without tracing, RSS by kind of
    // mapping adds up to the total.
    let rss = rollup_rss(w.pid);
    for job in ["memtrace", "snapshot"] {
        assert_eq!(
            scalar(
                &prom,
                &format!("memtrace_target_rss_bytes{{job=\"{job}\"}}")
            ),
            rss,
            "{job}: memtrace_target_rss_bytes vs smaps_rollup"
        );
    }
    assert_eq!(
        scalar(&prom, "sum(memtrace_region_rss_bytes{job=\"snapshot\"})"),
        rss
    );
    assert!(
        !query(
            &prom,
            "memtrace_region_rss_bytes{job=\"snapshot\",category=\"anon-rw\"}"
        )
        .is_empty()
    );
    assert!(query(&prom, "memtrace_site_rss_bytes{job=\"snapshot\"}").is_empty());
    assert_eq!(
        query(&prom, "memtrace_target_info{job=\"snapshot\"}")[0].0["pid"],
        pid
    );

    // The --alert rules of the history: one firing, one not.
    let alerts: HashMap<String, f64> = query(&prom, "memtrace_alert_firing{job=\"memtrace\"}")
        .into_iter()
        .map(|(labels, v)| (labels["rule"].clone(), v))
        .collect();
    assert_eq!(alerts.get("rss>1KiB"), Some(&1.0), "{alerts:?}");
    assert_eq!(alerts.get("rss>1TiB"), Some(&0.0), "{alerts:?}");

    assert_eq!(w.finish(), 0);
    drop((prometheus, traced, snap));
    let _ = std::fs::remove_dir_all(&dir);
}
