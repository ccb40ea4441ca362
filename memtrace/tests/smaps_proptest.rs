//! The smaps parser never panics, whatever the bytes.

use proptest::prelude::*;

const FIXTURE: &[u8] = include_bytes!("fixtures/varied.smaps");

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes(input in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let _ = memtrace::proc::smaps::parse(&input);
        let _ = memtrace::snapshot::parse_rollup(&input);
    }

    #[test]
    fn smaps_like_text(input in "([0-9a-f]{1,17}-[0-9a-f]{1,17} [rwxps-]{4} [0-9a-f]{1,9} [0-9a-f]{1,3}:[0-9a-f]{1,3} [0-9]{1,21}( +[ -~]{0,20})?\n|[A-Z][A-Za-z_]{0,15}: {0,20}[0-9]{0,22}( kB| B| MB)?\n|VmFlags:( [a-z]{2}){0,5}\n)*") {
        if let Ok(vmas) = memtrace::proc::smaps::parse(input.as_bytes()) {
            // Whatever parsed must be classifiable and totalled without overflow panics.
            render(vmas);
        }
    }

    /// Regions in address order, as a kernel writes them (random headers
    /// above mostly go backwards, which is malformed), with random fields.
    #[test]
    fn rising_regions_with_any_fields(regions in proptest::collection::vec((
        1u64..0x1000,
        0u64..0x1000,
        "[r-][w-][x-][ps]",
        "( +[ -~]{0,20})?",
        "((Size|Rss|Pss|Private_Dirty|Anonymous|Swap|Locked|[A-Z][A-Za-z_]{0,15}): {0,20}[0-9]{0,22}( kB| B| MB)?\n|VmFlags:( [a-z]{2}){0,5}\n){0,6}",
    ), 0..20)) {
        let mut text = String::new();
        let mut at = 0x1000u64;
        for (pages, gap, perms, name, fields) in &regions {
            let start = at + gap * 0x1000;
            at = start + pages * 0x1000;
            text += &format!("{start:x}-{at:x} {perms} 00000000 00:00 0{name}\n{fields}");
        }
        if let Ok(vmas) = memtrace::proc::smaps::parse(text.as_bytes()) {
            prop_assert_eq!(vmas.len(), regions.len());
            render(vmas);
        }
    }

    #[test]
    fn mutated_fixture(
        edits in proptest::collection::vec((0..FIXTURE.len(), any::<u8>(), 0..3u8), 1..20),
        cut in 0..FIXTURE.len(),
    ) {
        let mut text = FIXTURE.to_vec();
        for (pos, byte, kind) in edits {
            let pos = pos.min(text.len().saturating_sub(1));
            match kind {
                0 if !text.is_empty() => text[pos] = byte,
                1 => text.insert(pos, byte),
                _ if !text.is_empty() => { text.remove(pos); }
                _ => {}
            }
        }
        let _ = memtrace::proc::smaps::parse(&text);
        let _ = memtrace::proc::smaps::parse(&text[..cut.min(text.len())]);
    }
}

/// Classify, total and render parsed VMAs (must not panic).
fn render(vmas: Vec<memtrace::proc::smaps::Vma>) {
    let snap = memtrace::snapshot::Snapshot::from_vmas(
        1,
        vmas,
        &mut memtrace::snapshot::classify::Classifier::new(Default::default()),
    );
    let _ = memtrace::snapshot::report::render_text(&snap, &Default::default());
    let _ = memtrace::snapshot::report::render_json(
        &snap,
        &memtrace::snapshot::report::Options {
            all: true,
            ..Default::default()
        },
    );
}
