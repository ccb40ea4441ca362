//! Parser, classifier and report tests on fixture text (no live process).

use std::path::PathBuf;

use memtrace::proc::smaps::{self, Vma};
use memtrace::snapshot::classify::{Category, Classifier, ExeId};
use memtrace::snapshot::report::{self, Options};
use memtrace::snapshot::{Snapshot, Totals};

const KIB: u64 = 1024;

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn varied() -> Vec<Vma> {
    smaps::parse(&fixture("varied.smaps")).expect("varied.smaps parses")
}

fn varied_snapshot() -> Snapshot {
    let exe = ExeId {
        path: Some(PathBuf::from("/usr/bin/my server")),
        dev_inode: None,
    };
    Snapshot::from_vmas(42, varied(), &mut Classifier::new(exe))
}

fn find<'a>(vmas: &'a [Vma], name: &str) -> &'a Vma {
    vmas.iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("no VMA named {name:?}"))
}

#[test]
fn parses_every_region_including_guards_and_exec_only() {
    let vmas = varied();
    assert_eq!(
        vmas.len(),
        26,
        "every header is a region, whatever its perms"
    );
    let guard = vmas
        .iter()
        .find(|v| v.perms.as_str() == "---p")
        .expect("guard page kept");
    assert_eq!(guard.size, 4 * KIB);
    assert_eq!(
        vmas.iter().filter(|v| v.perms.as_str() == "--xp").count(),
        2
    );
    let vsyscall = find(&vmas, "[vsyscall]");
    assert_eq!(vsyscall.start, 0xffff_ffff_ff60_0000);
    assert!(vsyscall.vm_flags.contains("ex") && vsyscall.vm_flags.contains("zz"));
}

#[test]
fn names_with_spaces_and_deleted_files() {
    let vmas = varied();
    let db = find(&vmas, "/data/my file with spaces.db");
    assert!(!db.deleted);
    assert_eq!(db.rss, 256 * KIB);
    assert_eq!((db.dev_major, db.dev_minor, db.inode), (0xfe, 1, 900));
    let plugin = find(&vmas, "/opt/app/lib/libplugin.so (deleted)");
    assert!(plugin.deleted);
    assert_eq!(plugin.path(), "/opt/app/lib/libplugin.so");
    let exe = find(&vmas, "/usr/bin/my server");
    assert_eq!(exe.perms.as_str(), "r--p");
}

#[test]
fn sizes_are_bytes_and_thp_vmflags_parse() {
    let vmas = varied();
    let cache = vmas
        .iter()
        .find(|v| v.name == "[anon:TXMetaCache]")
        .expect("named region");
    assert_eq!(cache.size, 1 << 30);
    assert_eq!(cache.rss, 4096 * KIB);
    assert_eq!(cache.anon_huge_pages, 2048 * KIB);
    assert_eq!(cache.swap, 100 * KIB);
    assert!(cache.thp_eligible);
    assert!(cache.vm_flags.contains("hg"));
    let stack = find(&vmas, "[stack]");
    assert!(
        stack.vm_flags.contains("gd"),
        "unknown field before VmFlags must not derail parsing"
    );
    assert_eq!(stack.locked, 0);
}

#[test]
fn fields_missing_on_old_kernels_are_zero() {
    let vmas = smaps::parse(&fixture("old-kernel.smaps")).expect("old kernel format parses");
    assert_eq!(vmas.len(), 3);
    assert_eq!(vmas[1].swap, 12 * KIB);
    assert_eq!(vmas[1].pss_dirty, 0);
    assert_eq!(vmas[1].swap_pss, 0);
    assert!(vmas[1].vm_flags.iter().next().is_none());
    let snap = Snapshot::from_vmas(1, vmas, &mut Classifier::new(ExeId::default()));
    assert_eq!(
        snap.classes,
        [Category::OtherFile, Category::Heap, Category::Stack]
    );
}

#[test]
fn classification() {
    let snap = varied_snapshot();
    let class_of = |name: &str| {
        let i = snap
            .vmas
            .iter()
            .position(|v| v.name == name)
            .expect("present");
        snap.classes[i]
    };
    assert_eq!(class_of("/usr/bin/my server"), Category::Executable);
    assert_eq!(class_of("[heap]"), Category::Heap);
    assert_eq!(class_of("[stack]"), Category::Stack);
    assert_eq!(class_of("[anon:TXMetaCache]"), Category::NamedAnon);
    assert_eq!(class_of("[anon_shmem:ring buffer]"), Category::NamedAnon);
    assert_eq!(class_of("[anon: Go: heap]"), Category::NamedAnon);
    assert_eq!(
        class_of("/usr/lib/x86_64-linux-gnu/libc.so.6"),
        Category::SharedLibrary
    );
    assert_eq!(
        class_of("/opt/app/lib/libplugin.so (deleted)"),
        Category::SharedLibrary
    );
    assert_eq!(
        class_of("/data/my file with spaces.db"),
        Category::OtherFile
    );
    assert_eq!(
        class_of("/usr/lib/locale/locale-archive"),
        Category::OtherFile,
        "no 'lib' substring guess"
    );
    assert_eq!(class_of("/dev/shm/pool"), Category::SharedMemory);
    assert_eq!(class_of("/memfd:arena (deleted)"), Category::SharedMemory);
    assert_eq!(class_of("/SYSV00000000 (deleted)"), Category::SharedMemory);
    assert_eq!(class_of("/dev/zero (deleted)"), Category::SharedMemory);
    assert_eq!(class_of("[vvar]"), Category::Kernel);
    assert_eq!(class_of("[vdso]"), Category::Kernel);
    assert_eq!(class_of("[vsyscall]"), Category::Kernel);
    let by_perms = |perms: &str| {
        let i = snap
            .vmas
            .iter()
            .position(|v| v.name.is_empty() && v.perms.as_str() == perms)
            .expect("present");
        snap.classes[i]
    };
    assert_eq!(by_perms("---p"), Category::AnonNone);
    assert_eq!(by_perms("rw-p"), Category::AnonRw);
    assert_eq!(by_perms("--xp"), Category::AnonRx);
    assert_eq!(by_perms("rwxp"), Category::AnonRwx);
    assert_eq!(by_perms("r--p"), Category::AnonR);
}

#[test]
fn categories_add_up_to_totals_exactly() {
    let snap = varied_snapshot();
    let mut sum = Totals::default();
    for c in &snap.categories {
        sum.merge(&c.totals);
    }
    assert_eq!(sum, snap.totals);
    assert_eq!(
        snap.totals.vma_count,
        snap.vmas.len() as u64,
        "every VMA in one category"
    );
    assert_eq!(snap.categories.len(), Category::ALL.len());
    assert_eq!(snap.totals, Totals::of(&snap.vmas));
    // Named regions are grouped by name and add up to their category.
    let mut named = Totals::default();
    for n in &snap.named {
        named.merge(&n.totals);
    }
    assert_eq!(named, *snap.category(Category::NamedAnon));
    assert_eq!(snap.named[0].name, "TXMetaCache");
    assert_eq!(snap.named[0].totals.vma_count, 2);
    assert_eq!(snap.totals.swap_bytes, 108 * KIB);
    assert_eq!(snap.totals.anon_huge_pages_bytes, 2048 * KIB);
}

#[test]
fn text_report_fits_and_never_prints_nonzero_as_zero() {
    let snap = varied_snapshot();
    let text = report::render_text(&snap, &Options::default());
    assert!(text.contains("pid 42 (/usr/bin/my server)"));
    assert!(text.contains("[anon:TXMetaCache]"));
    assert!(text.contains("=== Top 20 regions by RSS (of 26) ==="));
    for line in text.lines() {
        assert!(line.chars().count() <= 110, "line too wide: {line:?}");
    }
    let bytes = report::render_text(
        &snap,
        &Options {
            exact_bytes: true,
            ..Options::default()
        },
    );
    assert!(bytes.contains(&(4096 * KIB).to_string()));
    let all = report::render_text(
        &snap,
        &Options {
            all: true,
            ..Options::default()
        },
    );
    assert!(all.contains("[vsyscall]") && all.contains("All 26 regions"));
}

#[test]
fn json_report_schema() {
    let snap = varied_snapshot();
    let json = report::render_json(
        &snap,
        &Options {
            top: 3,
            ..Options::default()
        },
    );
    let v: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    assert_eq!(v["schema_version"], memtrace::schema::SCHEMA_VERSION);
    assert_eq!(v["type"], "snapshot");
    assert_eq!(v["pid"], 42);
    assert_eq!(v["totals"]["rss_bytes"], snap.totals.rss_bytes);
    for key in [
        "virtual_bytes",
        "pss_bytes",
        "private_bytes",
        "shared_bytes",
        "swap_bytes",
        "swap_pss_bytes",
        "anonymous_bytes",
        "file_backed_bytes",
        "huge_pages_bytes",
    ] {
        assert!(v["totals"][key].is_u64(), "totals.{key}");
    }
    let cats = v["categories"].as_array().expect("categories list");
    assert_eq!(cats.len(), Category::ALL.len());
    assert_eq!(cats[0]["name"], "heap");
    assert!(cats[0]["rss_bytes"].is_u64());
    let regions = v["regions"].as_array().expect("regions list");
    assert_eq!(regions.len(), 3);
    assert_eq!(regions[0]["name"], "[anon:TXMetaCache]");
    assert_eq!(regions[0]["start"], "0x7f0000000000");
    assert_eq!(regions[0]["category"], "named-anon");
    assert_eq!(v["region_count"], 26);
    let all = report::render_json(
        &snap,
        &Options {
            all: true,
            ..Options::default()
        },
    );
    let v: serde_json::Value = serde_json::from_str(&all).expect("valid JSON");
    assert_eq!(v["regions"].as_array().map(Vec::len), Some(26));
}

#[test]
fn truncated_input_never_panics_and_keeps_whole_regions() {
    let text = fixture("varied.smaps");
    for len in 0..text.len() {
        let _ = smaps::parse(&text[..len]);
    }
    // Cut right after the 3rd region: exactly 3 regions.
    let starts: Vec<usize> = text
        .split_inclusive(|b| *b == b'\n')
        .scan(0, |off, line| {
            let start = *off;
            *off += line.len();
            Some((start, line))
        })
        .filter(|(_, line)| {
            line.first()
                .is_some_and(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
        })
        .map(|(start, _)| start)
        .collect();
    let vmas = smaps::parse(&text[..starts[3]]).expect("prefix at a region boundary parses");
    assert_eq!(vmas.len(), 3);
}

#[test]
fn garbage_is_an_error_not_a_guess() {
    assert!(
        smaps::parse(b"Rss: 4 kB\n").is_err(),
        "field before any header"
    );
    assert!(smaps::parse(b"hello world\n").is_err());
    assert!(smaps::parse(b"1000-2000 rw-p 0 00:00 0\nRss: many kB\n").is_err());
    assert!(
        smaps::parse(b"2000-1000 rw-p 0 00:00 0\n").is_err(),
        "end below start"
    );
    assert!(smaps::parse(b"1000-2000 rwzp 0 00:00 0\n").is_err());
    assert_eq!(smaps::parse(b"").map(|v| v.len()), Ok(0));
    let err = smaps::parse(b"1000-2000 rw-p 0 00:00 0\nbogus line\n").expect_err("bad line");
    assert_eq!(err.line, 2);
}

#[test]
fn chunked_reader_matches_in_memory_parse() {
    // Big enough to span many 128 KiB chunks, with lines cut at chunk edges:
    // the fixture 400 times over, each region moved 4 GiB past the one
    // before, as regions go up in a real smaps.
    let one = String::from_utf8(fixture("varied.smaps")).expect("UTF-8 fixture");
    let mut big = Vec::new();
    let mut next = 0u64;
    for _ in 0..400 {
        for line in one.lines() {
            let header = line
                .split_once(' ')
                .and_then(|(range, rest)| Some((range.split_once('-')?, rest)));
            match header {
                Some(((s, e), rest)) => {
                    let start = u64::from_str_radix(s, 16).expect("hex start");
                    let end = u64::from_str_radix(e, 16).expect("hex end");
                    next += 4 << 30;
                    let len = end - start;
                    big.extend_from_slice(format!("{next:x}-{:x} {rest}\n", next + len).as_bytes());
                }
                None => big.extend_from_slice(format!("{line}\n").as_bytes()),
            }
        }
    }
    // And a single very long name (longer than a chunk).
    next += 4 << 30;
    big.extend_from_slice(format!("{next:x}-{:x} r--p 0 00:00 1 /", next + 0x1000).as_bytes());
    big.extend(std::iter::repeat_n(b'x', 300_000));
    big.extend_from_slice(b"\nRss:   4 kB\n");
    let dir = std::env::temp_dir().join(format!("memtrace-chunk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("big.smaps");
    std::fs::write(&path, &big).expect("write");
    let piped = smaps::read_file(&path).expect("pipelined read");
    let streamed =
        smaps::parse_reader(std::fs::File::open(&path).expect("open")).expect("streamed");
    let direct = smaps::parse(&big).expect("direct");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(direct.len(), 400 * 26 + 1);
    assert_eq!(piped, direct);
    assert_eq!(streamed, direct);
    assert_eq!(direct.last().map(|v| v.rss), Some(4 * KIB));
    // Run together as they are, the copies go back down: malformed.
    let twice = [fixture("varied.smaps"), fixture("varied.smaps")].concat();
    let err = smaps::parse(&twice).expect_err("regions go backwards");
    assert_eq!(err.reason, "regions out of address order");
}

#[test]
fn rollup_parses_to_totals() {
    let rollup =
        b"55d0c0a00000-7ffd19998000 ---p 00000000 00:00 0                          [rollup]
Rss:                1568 kB
Pss:                 469 kB
Pss_Dirty:           112 kB
Pss_Anon:            112 kB
Pss_File:            357 kB
Pss_Shmem:             0 kB
Shared_Clean:       1400 kB
Shared_Dirty:          0 kB
Private_Clean:        56 kB
Private_Dirty:       112 kB
Referenced:         1568 kB
Anonymous:           112 kB
Swap:                  8 kB
SwapPss:               8 kB
Locked:                0 kB
";
    let t = memtrace::snapshot::parse_rollup(rollup).expect("rollup parses");
    assert_eq!(t.rss_bytes, 1568 * KIB);
    assert_eq!(t.private_bytes, 168 * KIB);
    assert_eq!(t.shared_bytes, 1400 * KIB);
    assert_eq!(t.swap_bytes, 8 * KIB);
    assert_eq!(t.vma_count, 0);
    assert_eq!(
        memtrace::snapshot::parse_rollup(b"").map(|t| t.rss_bytes),
        Ok(0)
    );
}
