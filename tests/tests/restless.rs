//! smaps of a process that resizes its regions while it is read (the
//! `restless` fixture). Between two `read(2)`s the kernel resumes at the
//! region holding the next address, which a resize may have moved back
//! over regions already read: a naive reader counts memory twice or not
//! at all. memtrace's reads are whole, or fail with `Unsettled`.

mod common;

use std::fs::File;
use std::io::Read as _;
use std::time::{Duration, Instant};

use common::Waiting;
use memtrace::proc::{ProcError, smaps};
use memtrace::snapshot;

/// The fixture's regions: `[start, end)` holding `rss` resident bytes.
struct Regions {
    start: u64,
    end: u64,
    rss: u64,
}

impl Regions {
    /// Resident bytes of the regions `(start, end, rss)` inside.
    fn resident(&self, vmas: &[(u64, u64, u64)]) -> u64 {
        vmas.iter()
            .filter(|v| v.0 >= self.start && v.1 <= self.end)
            .map(|v| v.2)
            .sum()
    }

    /// Check one of memtrace's reads: in address order, not overlapping,
    /// covering the regions once, and (smaps) each resident page of the
    /// regions counted once.
    fn check(&self, what: &str, vmas: &[(u64, u64, u64)]) {
        for w in vmas.windows(2) {
            assert!(w[0].1 <= w[1].0, "{what}: {:x?} then {:x?}", w[0], w[1]);
        }
        let inside = vmas.iter().filter(|v| v.0 >= self.start && v.1 <= self.end);
        let size: u64 = inside.map(|v| v.1 - v.0).sum();
        assert_eq!(size, self.end - self.start, "{what}: bytes mapped");
        if what != "read_maps" {
            assert_eq!(self.resident(vmas), self.rss, "{what}: resident bytes");
        }
    }
}

/// `/proc/PID/smaps` read the plain way (3 KiB at a time, as memtrace
/// does): `(start, end, rss)` of each header, and how many went back over
/// regions already read.
fn naive_read(pid: u32) -> (Vec<(u64, u64, u64)>, usize) {
    let mut file = File::open(format!("/proc/{pid}/smaps")).expect("open smaps");
    let mut text = Vec::new();
    let mut buf = [0u8; 3072];
    loop {
        let n = file.read(&mut buf).expect("read smaps");
        if n == 0 {
            break;
        }
        text.extend_from_slice(&buf[..n]);
    }
    let mut vmas: Vec<(u64, u64, u64)> = Vec::new();
    let mut restated = 0;
    for line in String::from_utf8_lossy(&text).lines() {
        if let Some(kb) = line.strip_prefix("Rss:") {
            let kb: u64 = kb.trim().trim_end_matches(" kB").parse().expect("Rss kB");
            vmas.last_mut().expect("Rss after a header").2 = kb << 10;
        } else if let Some((range, _)) = line.split_once(' ')
            && let Some((s, e)) = range.split_once('-')
            && let (Ok(s), Ok(e)) = (u64::from_str_radix(s, 16), u64::from_str_radix(e, 16))
        {
            if vmas.last().is_some_and(|v| s < v.1) {
                restated += 1;
            }
            vmas.push((s, e, 0));
        }
    }
    (vmas, restated)
}

fn triples(vmas: &[smaps::Vma]) -> Vec<(u64, u64, u64)> {
    vmas.iter().map(|v| (v.start, v.end, v.rss)).collect()
}

#[test]
fn reads_of_a_restless_process_count_each_page_once() {
    let mut fixture = Waiting::start(env!("CARGO_BIN_EXE_restless"), &[]);
    let pid = fixture.pid;
    let line = fixture.expect_line("regions");
    let n: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|w| w.parse().expect("number"))
        .collect();
    let regions = Regions {
        start: n[0],
        end: n[1],
        rss: n[2],
    };

    // The fixture tears plain reads: otherwise this test proves nothing.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut restated, mut miscounted, mut reads) = (0, 0, 0);
    while miscounted == 0 && Instant::now() < deadline {
        let (vmas, r) = naive_read(pid);
        reads += 1;
        restated += r;
        miscounted += usize::from(regions.resident(&vmas) != regions.rss);
    }
    assert!(
        miscounted > 0,
        "no plain read of the restless fixture was torn in {reads} reads ({restated} \
         restatements): the test cannot tell a torn read from a whole one"
    );
    eprintln!("plain reads: {miscounted} of {reads} miscounted the regions");

    // Each of memtrace's ways of reading smaps: whole, or Unsettled. Until
    // they have met enough restatements to show they handle them, and each
    // has had a whole read to check.
    const MET: u64 = 5;
    let before = smaps::restatements();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut whole = [0; 4];
    let mut unsettled = [0; 4];
    while smaps::restatements() - before < MET || whole.contains(&0) {
        assert!(
            Instant::now() < deadline,
            "in 60 s memtrace's reads met {} restatements (whole {whole:?}, unsettled \
             {unsettled:?}): the fixture is too slow to test them, or too restless for \
             any read to be whole",
            smaps::restatements() - before
        );
        let results = [
            smaps::read_smaps(pid).map(|v| triples(&v)),
            snapshot::capture(pid).map(|s| {
                assert_eq!(
                    s.totals.rss_bytes,
                    s.vmas.iter().map(|v| v.rss).sum::<u64>()
                );
                triples(&s.vmas)
            }),
            smaps::settled(|| {
                let mut stream = smaps::stream_smaps(pid)?;
                let mut vmas = Vec::new();
                while let Some(batch) = stream.next_batch() {
                    vmas.extend(triples(&batch));
                    stream.recycle(batch);
                }
                stream.finish()?;
                Ok(vmas)
            }),
            smaps::read_maps(pid).map(|v| triples(&v)),
        ];
        for (i, (what, result)) in ["read_smaps", "snapshot", "stream", "read_maps"]
            .into_iter()
            .zip(results)
            .enumerate()
        {
            match result {
                Ok(vmas) => {
                    regions.check(what, &vmas);
                    whole[i] += 1;
                }
                Err(ProcError::Unsettled { pid: p }) => {
                    assert_eq!(p, pid);
                    unsettled[i] += 1;
                }
                Err(e) => panic!("{what}: {e}"),
            }
        }
    }
    eprintln!(
        "memtrace: {} restatements met; whole {whole:?}, unsettled {unsettled:?}",
        smaps::restatements() - before
    );
    fixture.finish();
}
