//! Region names the kernel side could not read: `prctl(PR_SET_VMA_ANON_NAME)`
//! with a string in a page the process never touched (Go's runtime names
//! its heaps so). eBPF reads cannot fault the page in; memtrace reads the
//! name from the process instead, and says when nobody could read it,
//! never reporting such a call as a clear.

mod common;

use common::{run_launch, temp_path};

const UNREAD_NAME: &str = env!("CARGO_BIN_EXE_unread_name");

#[test]
fn names_in_pages_never_touched_are_read_from_the_process() {
    let file = temp_path("unread-name").with_extension("txt");
    let run = run_launch(&["--json"], UNREAD_NAME, &[file.to_str().expect("utf8")]);
    assert_eq!(run.status, 0, "{}", run.stderr);
    let namings: Vec<_> = run
        .events
        .iter()
        .filter(|e| e["kind"] == "set_vma_name")
        .collect();
    assert_eq!(namings.len(), 2, "both prctl calls traced: {namings:#?}");
    let named = namings[0];
    assert_eq!(
        named["name"], "go-heap-arena",
        "the name in the untouched page: {named}"
    );
    assert!(named.get("name_unreadable").is_none(), "{named}");
    // A pointer to nothing: unreadable, and said so (not a clear).
    let bad = namings[1];
    assert!(bad["name"].is_null(), "{bad}");
    assert_eq!(bad["name_unreadable"], true, "{bad}");
    assert_eq!(
        bad["call_site"]["function"]
            .as_str()
            .map(|f| f.ends_with("unread_name::name_region")),
        Some(true),
        "{bad}"
    );
}

#[test]
fn text_output_says_which_name_could_not_be_read() {
    let file = temp_path("unread-name-text").with_extension("txt");
    let run = run_launch(
        &["--no-report"],
        UNREAD_NAME,
        &[file.to_str().expect("utf8")],
    );
    assert_eq!(run.status, 0, "{}", run.stderr);
    let namings: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| l.split_whitespace().nth(2) == Some("set_vma_name"))
        .collect();
    assert_eq!(namings.len(), 2, "{}", run.stdout);
    assert!(
        namings[0].contains("name \"go-heap-arena\""),
        "{}",
        namings[0]
    );
    assert!(namings[1].contains("name <unreadable>"), "{}", namings[1]);
}
