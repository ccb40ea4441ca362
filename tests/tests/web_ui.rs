//! The live page (`GET /debug/memory/ui`) in a real browser: headless
//! Chromium loads it from `memtrace serve --trace` on a fixture, runs its
//! script, and the rendered DOM holds the charts, the fixture's call
//! sites with the RSS and the labels (not the ids) the JSON report gives
//! them, its hostile region name as text (not markup), and the flame graph. A screenshot is left in
//! `target/test-output/web_ui.png` for people to look at.

mod common;
mod serving;

use std::{
    io::Read,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{Waiting, require_tool, temp_path};
use serde_json::Value;
use serving::Served;

const WEB_TARGET: &str = env!("CARGO_BIN_EXE_web_target");

/// `chromium --headless … URL` with `args`, after the page's scripts ran
/// for a while of virtual time: its stdout. Chromium runs in a process
/// group of its own, killed whole after it (or after a minute: a page that
/// never settles must not hang the test).
fn chromium(args: &[&str], url: &str) -> String {
    require_tool("chromium", "chromium");
    let profile = temp_path("chromium-profile").with_extension("d");
    let mut child = Command::new("chromium")
        .args([
            "--headless",
            // As root Chromium refuses its sandbox.
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--disable-crash-reporter",
            "--virtual-time-budget=12000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run chromium (apt-get install chromium)");
    let group = child.id() as i32;
    let read = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = r.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = read(Box::new(child.stdout.take().expect("stdout")));
    let err = read(Box::new(child.stderr.take().expect("stderr")));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for chromium") {
            break Some(status);
        }
        if start.elapsed() > Duration::from_secs(60) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // SAFETY: signals the process group this test started.
    unsafe { libc::kill(-group, libc::SIGKILL) };
    let _ = child.wait();
    let (stdout, stderr) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    let _ = std::fs::remove_dir_all(&profile);
    match status {
        Some(s) if s.success() => stdout,
        Some(s) => panic!("chromium {args:?} {url} failed ({s}): {stderr}"),
        None => panic!("chromium {args:?} {url} did not finish within a minute: {stderr}"),
    }
}

/// `target/test-output`, beside the build's `target/PROFILE`.
fn output_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let target = exe
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .expect("test executable lives in target/PROFILE/deps");
    let dir = target.join("test-output");
    std::fs::create_dir_all(&dir).expect("create target/test-output");
    dir
}

/// The fixture's call site whose function ends with `suffix`.
fn site<'a>(report: &'a Value, suffix: &str) -> &'a Value {
    report["call_sites"]
        .as_array()
        .expect("call_sites")
        .iter()
        .find(|s| {
            s["call_site"]["function"]
                .as_str()
                .is_some_and(|f| f.ends_with(suffix))
        })
        .unwrap_or_else(|| panic!("no call site {suffix} in the report: {report}"))
}

/// The `<tr>` of the sites table that names `text`.
fn row<'a>(dom: &'a str, text: &str) -> &'a str {
    dom.split("<tr class=\"site-row\">")
        .skip(1)
        .map(|r| r.split("</tr>").next().unwrap_or(r))
        .find(|r| r.contains(text))
        .unwrap_or_else(|| panic!("no table row with {text:?} in the page:\n{dom}"))
}

#[test]
fn web_page_shows_charts_sites_and_flame_graph_in_a_browser() {
    let mut w = Waiting::start(WEB_TARGET, &[]);
    // Sample often, so the page's history.json has the fixture's sites in
    // it within the test's seconds.
    let served = Served::start_with(w.pid, &["--sample-every", "200ms", "--history", "1m"]);
    w.go();
    w.expect_line("done");
    let sampled = common::wait_for(Duration::from_secs(30), || {
        let (code, body) = served.get_text("/debug/memory/history.json");
        code == 200
            && serde_json::from_str::<Value>(&body).is_ok_and(|h| {
                h["samples"].as_array().is_some_and(|s| s.len() >= 2)
                    && body.contains("web_target::named_region")
            })
    });
    assert!(sampled, "history.json never held the fixture's call sites");
    let (code, body) = served.get_text("/debug/memory/attributed.json?top=0");
    assert_eq!(code, 200, "{body}");
    let report: Value = serde_json::from_str(&body).expect("JSON report");

    let url = served.url("/debug/memory/ui");
    let dom = chromium(&["--dump-dom"], &url);
    assert!(
        dom.contains("id=\"category-chart\"") && dom.contains("<path class=\"area\""),
        "the stacked area chart of categories was drawn:\n{dom}"
    );
    assert!(
        dom.contains("id=\"growth-chart\"") && dom.contains("<path class=\"line\""),
        "the call-site line chart was drawn:\n{dom}"
    );
    assert!(
        !dom.contains("class=\"status error\""),
        "the page reports an error:\n{dom}"
    );
    // Names are text: `<`, `>` and `&` arrive escaped, and the region
    // name's markup made no element.
    for (suffix, shown) in [
        (
            "web_target::Cache<T>::grow",
            "web_target::Cache&lt;T&gt;::grow",
        ),
        ("web_target::named_region", "web_target::named_region"),
    ] {
        let r = row(&dom, shown);
        let s = site(&report, suffix);
        let rss =
            s["rss_bytes"].as_u64().expect("rss") + s["shared_rss_bytes"].as_u64().unwrap_or(0);
        let want = format!("<td class=\"num\">{}</td>", memtrace::units::human(rss));
        assert!(
            r.contains(&want),
            "{suffix}: its row shows {want} (the JSON report's RSS): {r}"
        );
        // The sub-category as the text report labels it, not its id.
        let (id, label) = (
            s["subcategory"].as_str().expect("subcategory"),
            s["subcategory_label"].as_str().expect("subcategory_label"),
        );
        assert_ne!(id, label);
        let want = format!("<td title=\"{id}\">{label}</td>");
        assert!(r.contains(&want), "{suffix}: its row shows {want}: {r}");
    }
    assert!(
        row(&dom, "web_target::named_region").contains(">named regions</td>"),
        "the label of the named_regions sub-category"
    );
    let named = row(&dom, "web_target::named_region");
    assert!(
        named.contains("&lt;img src=x onerror=\"alert(1)\"&gt;&amp;'"),
        "the region name is shown as text: {named}"
    );
    assert!(!dom.contains("<img"), "a name became markup:\n{dom}");
    assert!(
        dom.contains("id=\"flamegraph\"") && dom.contains("src=\"flamegraph.svg\""),
        "the flame graph frame:\n{dom}"
    );
    let (code, svg) = served.get_text("/debug/memory/flamegraph.svg");
    assert_eq!(code, 200, "{svg}");
    assert!(
        svg.starts_with("<?xml") && svg.contains("web_target::named_region"),
        "the flame graph names the fixture's call sites"
    );

    let shot = output_dir().join("web_ui.png");
    let _ = std::fs::remove_file(&shot);
    chromium(
        &[
            "--window-size=1280,1800",
            &format!("--screenshot={}", shot.display()),
        ],
        &url,
    );
    let png = std::fs::read(&shot).expect("chromium wrote the screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    eprintln!("screenshot of the page: {}", shot.display());

    assert_eq!(w.finish(), 0);
    served.stop();
}
