//! Property test: the ledger against a page-by-page reference model.
//!
//! Random sequences of page-granular mmap, munmap, mremap, brk, mprotect,
//! madvise, name and exec events (some failing) are applied to a
//! [`Ledger`] and to a model that keeps one entry per page. After every
//! step the ledger's page view (origin, protection, offset, name, ...)
//! must equal the model's, its ranges must be well-formed, and a forked
//! child must see the same pages minus those marked `MADV_DONTFORK`.

use std::collections::{BTreeMap, HashSet};

use memtrace::attribution::ledger::{Ledger, PAGE_SIZE};
use memtrace::trace::event::{Call, Event, VmaName};
use memtrace_common::EventKind;
use proptest::prelude::*;

const P: u64 = PAGE_SIZE;
/// First page of the area mmap events use.
const BASE: u64 = 0x7f00_0000_0000 / P;
/// First page of the heap; the initial break is a little above it.
const HEAP: u64 = 0x5555_0000_0000 / P;
const WINDOW: u64 = 48;
const ANON: u32 = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u32;
const FILE: u32 = libc::MAP_PRIVATE as u32;
const NAMES: [&str; 3] = ["cache", "arena", "jit"];

/// What one page looks like, in both the ledger and the model.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Page {
    kind: EventKind,
    site: u32,
    prot: u32,
    fd_backed: bool,
    /// In pages.
    offset: u64,
    name: Option<String>,
    name_refused: bool,
    dont_fork: bool,
}

#[derive(Clone, Debug)]
enum Op {
    Mmap {
        page: u64,
        pages: u64,
        site: u32,
        prot: u32,
        file: Option<u64>,
        fail: bool,
    },
    Munmap {
        page: u64,
        pages: u64,
        fail: bool,
    },
    Mprotect {
        page: u64,
        pages: u64,
        prot: u32,
        fail: bool,
    },
    Name {
        page: u64,
        pages: u64,
        name: Option<usize>,
        errno: i32,
    },
    Madvise {
        page: u64,
        pages: u64,
        dont_fork: bool,
        errno: i32,
    },
    Mremap {
        old: u64,
        old_pages: u64,
        new_pages: u64,
        /// `None`: in place.
        to: Option<u64>,
        dont_unmap: bool,
        fail: bool,
    },
    Brk {
        delta_pages: i64,
        sub_page: u64,
        site: u32,
        fail: bool,
    },
    Exec,
}

fn op() -> impl Strategy<Value = Op> {
    let page = 0..WINDOW;
    prop_oneof![
        4 => (page.clone(), 1..8u64, 0..4u32, 0..8u32, prop::option::of(0..4u64), prop::bool::weighted(0.1))
            .prop_map(|(page, pages, site, prot, file, fail)| Op::Mmap { page, pages, site, prot, file, fail }),
        3 => (page.clone(), 1..12u64, prop::bool::weighted(0.1))
            .prop_map(|(page, pages, fail)| Op::Munmap { page, pages, fail }),
        2 => (page.clone(), 1..8u64, 0..8u32, prop::bool::weighted(0.1))
            .prop_map(|(page, pages, prot, fail)| Op::Mprotect { page, pages, prot, fail }),
        2 => (page.clone(), 1..8u64, prop::option::of(0..NAMES.len()), prop::sample::select(vec![0, libc::EINVAL, libc::ENOMEM, libc::EFAULT]))
            .prop_map(|(page, pages, name, errno)| Op::Name { page, pages, name, errno }),
        1 => (page.clone(), 1..8u64, any::<bool>(), prop::sample::select(vec![0, libc::ENOMEM, libc::EINVAL]))
            .prop_map(|(page, pages, dont_fork, errno)| Op::Madvise { page, pages, dont_fork, errno }),
        3 => (page, 0..8u64, 1..10u64, prop::option::of(0..WINDOW + 8), prop::bool::weighted(0.2), prop::bool::weighted(0.1))
            .prop_map(|(old, old_pages, new_pages, to, dont_unmap, fail)| Op::Mremap { old, old_pages, new_pages, to, dont_unmap, fail }),
        2 => (-6..10i64, 0..P, 0..3u32, prop::bool::weighted(0.1))
            .prop_map(|(delta_pages, sub_page, site, fail)| Op::Brk { delta_pages, sub_page, site, fail }),
        1 => Just(Op::Exec),
    ]
}

fn event(call: Call, result: i64, site: u32) -> Event {
    Event {
        time_ns: 0,
        pid: 1,
        tid: 1,
        call,
        result,
        stack_id: Some(site),
        ip: 0x7000,
        ret_addr: Some(0x5000 + u64::from(site)),
        user: None,
        call_stack: None,
    }
}

#[derive(Default)]
struct Model {
    pages: BTreeMap<u64, Page>,
    brk: Option<u64>,
}

impl Model {
    fn remove(&mut self, start: u64, end: u64) {
        for p in start..end {
            self.pages.remove(&p);
        }
    }

    fn update(&mut self, start: u64, end: u64, f: impl Fn(&mut Page)) {
        for p in start..end {
            if let Some(page) = self.pages.get_mut(&p) {
                f(page);
            }
        }
    }

    /// Map `count` pages at `at` continuing `from` (offsets following it).
    fn continue_page(&mut self, from: &Page, at: u64, count: u64) {
        for i in 0..count {
            let page = Page {
                offset: from.offset + 1 + i,
                ..from.clone()
            };
            self.pages.insert(at + i, page);
        }
    }
}

/// Apply `op` to both the ledger and the model.
fn step(ledger: &mut Ledger, model: &mut Model, op: &Op) {
    let einval = -i64::from(libc::EINVAL);
    let addr = |page: u64| (BASE + page) * P;
    match *op {
        Op::Mmap {
            page,
            pages,
            site,
            prot,
            file,
            fail,
        } => {
            let call = Call::Mmap {
                addr: 0,
                len: pages * P - 1,
                prot,
                flags: if file.is_some() { FILE } else { ANON },
                fd: if file.is_some() { 3 } else { -1 },
                offset: file.unwrap_or(0) * P,
            };
            let result = if fail {
                -i64::from(libc::ENOMEM)
            } else {
                addr(page) as i64
            };
            ledger.apply(&event(call, result, site));
            if !fail {
                for i in 0..pages {
                    let p = Page {
                        kind: EventKind::Mmap,
                        site,
                        prot,
                        fd_backed: file.is_some(),
                        offset: file.unwrap_or(0) + i,
                        name: None,
                        name_refused: false,
                        dont_fork: false,
                    };
                    model.pages.insert(BASE + page + i, p);
                }
            }
        }
        Op::Munmap { page, pages, fail } => {
            let call = Call::Munmap {
                addr: addr(page),
                len: pages * P,
            };
            ledger.apply(&event(call, if fail { einval } else { 0 }, 9));
            if !fail {
                model.remove(BASE + page, BASE + page + pages);
            }
        }
        Op::Mprotect {
            page,
            pages,
            prot,
            fail,
        } => {
            let call = Call::Mprotect {
                addr: addr(page),
                len: pages * P,
                prot,
            };
            ledger.apply(&event(call, if fail { einval } else { 0 }, 9));
            if !fail {
                model.update(BASE + page, BASE + page + pages, |p| p.prot = prot);
            }
        }
        Op::Name {
            page,
            pages,
            name,
            errno,
        } => {
            let name = name.map(|i| NAMES[i].to_owned());
            let call = Call::SetVmaName {
                addr: addr(page),
                len: pages * P,
                name: name.clone().map_or(VmaName::Cleared, VmaName::Set),
            };
            ledger.apply(&event(call, -i64::from(errno), 9));
            if matches!(errno, 0 | libc::EINVAL | libc::ENOMEM) {
                let refused = errno == libc::EINVAL && name.is_some();
                model.update(BASE + page, BASE + page + pages, |p| {
                    if !p.fd_backed {
                        p.name = name.clone();
                        p.name_refused = refused;
                    }
                });
            }
        }
        Op::Madvise {
            page,
            pages,
            dont_fork,
            errno,
        } => {
            let call = Call::Madvise {
                addr: addr(page),
                len: pages * P,
                advice: if dont_fork {
                    libc::MADV_DONTFORK
                } else {
                    libc::MADV_DOFORK
                },
            };
            ledger.apply(&event(call, -i64::from(errno), 9));
            if matches!(errno, 0 | libc::ENOMEM) {
                model.update(BASE + page, BASE + page + pages, |p| {
                    p.dont_fork = dont_fork
                });
            }
        }
        Op::Mremap {
            old,
            old_pages,
            mut new_pages,
            to,
            dont_unmap,
            mut fail,
        } => {
            // Keep the request within what the kernel accepts; anything
            // else is sent as a failure.
            if dont_unmap {
                new_pages = old_pages; // DONTUNMAP requires equal lengths
            }
            let moving = to.is_some();
            fail |= !moving && (old_pages == 0 || dont_unmap) || new_pages == 0;
            if let Some(to) = to {
                let src_end = old + old_pages.max(1);
                fail |= old < to + new_pages && to < src_end;
            }
            let mut flags = libc::MREMAP_MAYMOVE as u32;
            if moving {
                flags |= libc::MREMAP_FIXED as u32;
            }
            if dont_unmap {
                flags |= libc::MREMAP_DONTUNMAP as u32;
            }
            let dest = to.unwrap_or(old);
            let call = Call::Mremap {
                old_addr: addr(old),
                old_len: old_pages * P,
                new_len: new_pages * P,
                flags,
                new_addr: addr(dest),
            };
            let result = if fail { einval } else { addr(dest) as i64 };
            ledger.apply(&event(call, result, 9));
            if fail {
                return;
            }
            let (old, dest) = (BASE + old, BASE + dest);
            let (old_end, new_end) = (old + old_pages, dest + new_pages);
            if old_pages == 0 {
                let src = model.pages.get(&old).cloned();
                model.remove(dest, new_end);
                if let Some(src) = src {
                    model.pages.insert(dest, src.clone());
                    model.continue_page(&src, dest + 1, new_pages - 1);
                }
            } else if !moving {
                if new_pages <= old_pages {
                    model.remove(old + new_pages, old_end);
                } else {
                    let last = model.pages.get(&(old_end - 1)).cloned();
                    model.remove(old_end, new_end);
                    if let Some(last) = last {
                        model.continue_page(&last, old_end, new_pages - old_pages);
                    }
                }
            } else {
                let kept = old_pages.min(new_pages);
                let parts: Vec<(u64, Page)> = (0..kept)
                    .filter_map(|i| model.pages.get(&(old + i)).map(|p| (i, p.clone())))
                    .collect();
                let last = model.pages.get(&(old_end - 1)).cloned();
                if dont_unmap {
                    model.remove(old + kept, old_end);
                } else {
                    model.remove(old, old_end);
                }
                model.remove(dest, new_end);
                for (i, p) in parts {
                    model.pages.insert(dest + i, p);
                }
                if new_pages > old_pages
                    && let Some(last) = last
                {
                    model.continue_page(&last, dest + old_pages, new_pages - old_pages);
                }
            }
        }
        Op::Brk {
            delta_pages,
            sub_page,
            site,
            fail,
        } => {
            let Some(before) = model.brk else {
                // glibc's first call: query the break.
                let now = HEAP * P + 0x123;
                ledger.apply(&event(Call::Brk { addr: 0 }, now as i64, site));
                model.brk = Some(now);
                return;
            };
            let want = (before & !(P - 1)) as i64 + delta_pages * P as i64 + sub_page as i64;
            let want = want as u64;
            let ok = !fail && want >= HEAP * P;
            let now = if ok { want } else { before };
            ledger.apply(&event(Call::Brk { addr: want }, now as i64, 10 + site));
            let (top_before, top_now) = (before.div_ceil(P), now.div_ceil(P));
            if top_now < top_before {
                model.remove(top_now, top_before);
            } else if top_now > top_before {
                let offset = model
                    .pages
                    .get(&(top_before - 1))
                    .filter(|p| p.kind == EventKind::Brk)
                    .map_or(0, |p| p.offset + 1);
                for (i, p) in (top_before..top_now).enumerate() {
                    let page = Page {
                        kind: EventKind::Brk,
                        site: 10 + site,
                        prot: (libc::PROT_READ | libc::PROT_WRITE) as u32,
                        fd_backed: false,
                        offset: offset + i as u64,
                        name: None,
                        name_refused: false,
                        dont_fork: false,
                    };
                    model.remove(p, p + 1);
                    model.pages.insert(p, page);
                }
            }
            model.brk = Some(now);
        }
        Op::Exec => {
            let call = Call::Exec {
                filename: "/bin/true".into(),
            };
            ledger.apply(&event(call, 0, 9));
            *model = Model::default();
        }
    }
}

/// The ledger's pages, checking that its ranges are well-formed.
fn pages_of(ledger: &Ledger) -> Result<BTreeMap<u64, Page>, TestCaseError> {
    let mut out = BTreeMap::new();
    let mut prev_end = 0;
    for r in ledger.ranges() {
        prop_assert!(r.start < r.end, "empty range {:?}", r);
        prop_assert!(r.start % P == 0 && r.end % P == 0, "misaligned {:?}", r);
        prop_assert!(r.start >= prev_end, "overlap or disorder at {:?}", r);
        prop_assert_eq!(ledger.find(r.start), Some(r));
        prop_assert_eq!(ledger.find(r.end - 1), Some(r));
        prev_end = r.end;
        let origin = ledger.origin(r.origin);
        for (i, p) in (r.start / P..r.end / P).enumerate() {
            let page = Page {
                kind: origin.kind,
                site: origin.stack_id.unwrap_or(u32::MAX),
                prot: r.prot,
                fd_backed: r.fd_backed(),
                offset: r.offset / P + i as u64,
                name: r.name.map(|n| ledger.name(n).to_owned()),
                name_refused: r.name_refused,
                dont_fork: r.dont_fork,
            };
            out.insert(p, page);
        }
    }
    Ok(out)
}

fn check(ledger: &Ledger, model: &Model, op: &Op) -> Result<(), TestCaseError> {
    let pages = pages_of(ledger)?;
    prop_assert_eq!(&pages, &model.pages, "after {:?}", op);
    prop_assert_eq!(ledger.total_bytes(), model.pages.len() as u64 * P);
    prop_assert_eq!(ledger.brk_end(), model.brk);

    // Coalesced runs equal the model's runs of consecutive pages.
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &p in model.pages.keys() {
        match runs.last_mut() {
            Some(last) if last.1 == p * P => last.1 += P,
            _ => runs.push((p * P, (p + 1) * P)),
        }
    }
    prop_assert_eq!(ledger.coalesced(), runs);

    // Each call site is one origin.
    let mut sites = HashSet::new();
    for (_, o) in ledger.origins() {
        prop_assert!(
            sites.insert((o.kind, o.stack_id)),
            "duplicate origin {:?}",
            o
        );
    }

    // A forked child sees everything not marked MADV_DONTFORK.
    let child = pages_of(&ledger.fork_child())?;
    let inherited: BTreeMap<u64, Page> = model
        .pages
        .iter()
        .filter(|(_, p)| !p.dont_fork)
        .map(|(k, p)| (*k, p.clone()))
        .collect();
    prop_assert_eq!(child, inherited);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn ledger_matches_page_model(ops in prop::collection::vec(op(), 1..80)) {
        let mut ledger = Ledger::new();
        let mut model = Model::default();
        for op in &ops {
            step(&mut ledger, &mut model, op);
            check(&ledger, &model, op)?;
        }
    }
}
