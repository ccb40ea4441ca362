//! Names from the target reach no output raw: the fixture JIT names its
//! code in its perf map with control characters and the folded format's
//! separators, and runs from a file whose name holds ESC and BEL. The
//! folded stacks keep one line per stack, the SVG flame graphs (the
//! `--flamegraph` file and serve's) are well-formed XML without control
//! characters, and `/metrics` labels carry the escaped forms.

mod common;
mod serving;

use std::{path::PathBuf, time::Duration};

use common::{Waiting, report_of, run_launch, temp_path};
use serving::Served;

const JIT: &str = env!("CARGO_BIN_EXE_jit");

/// Appended to the JIT's names: a terminal escape, a bell, a carriage
/// return, the folded format's separators (a frame and a count), a bidi
/// override and a code point XML cannot hold.
const SUFFIX: &str = "\x1b[31m;evil\x07 4096\rX\u{202e}\u{ffff}";

/// `JIT:firstBuffer` + [`SUFFIX`] as a folded frame shows it.
const FOLDED_FIRST: &str = "JIT:firstBuffer\\x1b[31m_evil\\x07_4096\\rX\\u{202e}\\u{ffff}";

const MIB: u64 = 1 << 20;

/// The JIT fixture copied to a file named `jit<ESC>[31m<BEL>` in a
/// directory of its own, removed when dropped.
struct HostileCopy {
    dir: PathBuf,
    exe: String,
}

impl HostileCopy {
    fn new(tag: &str) -> HostileCopy {
        let dir = temp_path(tag).with_extension("d");
        std::fs::create_dir_all(&dir).expect("create the copy's directory");
        let exe = dir.join("jit\x1b[31m\x07");
        std::fs::copy(JIT, &exe).expect("copy the jit fixture");
        let exe = exe.to_str().expect("UTF-8 path").to_owned();
        HostileCopy { dir, exe }
    }
}

impl Drop for HostileCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Characters no XML document may hold (and no terminal should get).
fn unfit_for_xml(text: &str) -> Vec<char> {
    text.chars()
        .filter(|&c| {
            (c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
                || matches!(c, '\u{fffe}' | '\u{ffff}')
        })
        .collect()
}

/// `svg` is a well-formed XML document without control characters that
/// names the first JIT function, escaped.
fn assert_clean_svg(what: &str, svg: &str) {
    use quick_xml::{Reader, events::Event};
    let bad = unfit_for_xml(svg);
    assert!(
        bad.is_empty(),
        "{what}: characters XML cannot hold: {bad:?}"
    );
    let mut reader = Reader::from_str(svg);
    let mut open = Vec::new();
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) => {
                for a in e.attributes() {
                    a.unwrap_or_else(|err| panic!("{what}: attribute: {err}"));
                }
                open.push(e.name().as_ref().to_vec());
            }
            Ok(Event::Empty(e)) => {
                for a in e.attributes() {
                    a.unwrap_or_else(|err| panic!("{what}: attribute: {err}"));
                }
            }
            Ok(Event::End(e)) => {
                assert_eq!(open.pop().as_deref(), Some(e.name().as_ref()), "{what}");
            }
            Ok(Event::Eof) => break,
            Ok(_) => {}
            Err(e) => panic!(
                "{what}: not well-formed XML at byte {}: {e}",
                reader.buffer_position()
            ),
        }
    }
    assert!(open.is_empty(), "{what}: unclosed elements");
    assert!(
        svg.contains(FOLDED_FIRST),
        "{what} names the JIT function, escaped"
    );
}

#[test]
fn hostile_jit_names_stay_inside_their_frame_in_folded_and_flame_graph_files() {
    let copy = HostileCopy::new("escape-cli");
    let folded = temp_path("escape").with_extension("folded");
    let svg = temp_path("escape").with_extension("svg");
    let run = run_launch(
        &[
            "--json",
            "--quiet",
            "--folded",
            folded.to_str().expect("utf8"),
            "--flamegraph",
            svg.to_str().expect("utf8"),
        ],
        &copy.exe,
        &["--name-suffix", SUFFIX],
    );
    let report = report_of(&run);
    let _ = std::fs::remove_file(format!("/tmp/perf-{}.map", report["pid"]));
    assert_eq!(run.status, 0, "{}", run.stderr);
    // JSON keeps the name as the JIT wrote it (serde escapes it).
    let first = format!("JIT:firstBuffer{SUFFIX}");
    assert!(
        report["call_sites"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["call_site"]["function"] == first.as_str()),
        "{report}"
    );

    let text = std::fs::read_to_string(&folded).expect("folded file written");
    let _ = std::fs::remove_file(&folded);
    let mut total = 0;
    let mut jit_lines = Vec::new();
    for line in text.lines() {
        assert!(
            !line.chars().any(char::is_control),
            "a control character in folded line {line:?}"
        );
        let (stack, weight) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad folded line {line:?}"));
        assert!(!stack.contains(' '), "one count per line: {line:?}");
        let w: u64 = weight
            .parse()
            .unwrap_or_else(|_| panic!("bad weight in {line:?}"));
        total += w;
        if stack.contains("JIT:") {
            jit_lines.push((stack.split(';').collect::<Vec<_>>(), w));
        }
    }
    assert_eq!(
        total,
        report["anon_rss_bytes"].as_u64().expect("anon")
            + report["shared_anon_rss_bytes"].as_u64().expect("shared"),
        "folded weights add up to the anonymous RSS: no line was split\n{text}"
    );
    assert_eq!(jit_lines.len(), 2, "one line per JIT function:\n{text}");
    assert!(
        jit_lines
            .iter()
            .any(|(frames, w)| frames.contains(&FOLDED_FIRST) && *w == 32 * MIB),
        "the first JIT function is one frame, escaped, with its 32 MiB:\n{text}"
    );

    let svg_text = std::fs::read_to_string(&svg).expect("svg written");
    let _ = std::fs::remove_file(&svg);
    assert_clean_svg("--flamegraph", &svg_text);
}

#[test]
fn hostile_names_reach_metrics_and_the_served_flame_graph_escaped() {
    let copy = HostileCopy::new("escape-serve");
    let mut w = Waiting::start(&copy.exe, &["--name-suffix", SUFFIX]);
    let served = Served::start(w.pid);
    w.go();
    w.expect_line("done");
    let mut metrics = String::new();
    let seen = common::wait_for(Duration::from_secs(30), || {
        let (code, body) = served.get_text("/metrics");
        metrics = body;
        code == 200 && metrics.contains("JIT:secondBuffer")
    });
    let _ = std::fs::remove_file(format!("/tmp/perf-{}.map", w.pid));
    assert!(
        seen,
        "the JIT's call sites never reached /metrics:\n{metrics}"
    );

    // `exe` as the text report escapes it, its backslashes then escaped by
    // the text format.
    let exe = format!("{}/jit\\\\x1b[31m\\\\x07", copy.dir.display());
    assert!(
        metrics.contains(&format!(
            "memtrace_target_info{{pid=\"{}\",exe=\"{exe}\"}} 1",
            w.pid
        )),
        "{metrics}"
    );
    let bad: Vec<char> = metrics
        .chars()
        .filter(|&c| c.is_control() && c != '\n')
        .collect();
    assert!(bad.is_empty(), "control characters in /metrics: {bad:?}");

    let (code, svg) = served.get_text("/debug/memory/flamegraph.svg");
    assert_eq!(code, 200, "{svg}");
    assert_clean_svg("flamegraph.svg", &svg);

    assert_eq!(w.finish(), 0);
    served.stop();
}
