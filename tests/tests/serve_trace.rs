//! `memtrace serve --trace`: resident memory by call site over HTTP, on a
//! real traced process.

mod common;
mod serving;

use common::{call_site_rss, read_jsonl, require_root};
use serving::GroundTruthServed;

#[test]
fn serve_trace_reports_call_sites_and_rejects_bad_input() {
    require_root();
    let GroundTruthServed {
        fixture: mut w,
        served,
        out,
        report,
    } = GroundTruthServed::start("serve-gt");
    let alpha = call_site_rss(&report, |f| f.ends_with("ground_truth::cache_alpha"));
    let expected = read_jsonl(&out)
        .iter()
        .find(|s| s["func"] == "cache_alpha")
        .and_then(|s| s["expected_rss"].as_u64())
        .expect("cache_alpha logged");
    assert_eq!(alpha, expected, "cache_alpha's resident bytes over HTTP");

    let (code, text) = served.get_text("/debug/memory/attributed?top=3");
    assert_eq!(code, 200);
    assert!(
        text.contains("by call site") && text.contains("cache_alpha"),
        "{text}"
    );
    for bad in ["top=abc", "top=-1", "top=99999999999", "color=blue"] {
        let (code, body) = served.get_text(&format!("/debug/memory/attributed.json?{bad}"));
        assert_eq!(code, 400, "{bad}: {body}");
        assert_eq!(body.trim().lines().count(), 1, "one-line reason: {body}");
    }

    // The target goes away: 410, and the server keeps running.
    assert_eq!(w.finish(), 0);
    let (code, body) = served.get_text("/debug/memory/attributed.json");
    assert_eq!(code, 410, "{body}");
    let (code, _) = served.get_text("/debug/memory.json");
    assert_eq!(code, 410);

    served.stop();
}
