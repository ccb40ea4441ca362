//! The attributed report as a pprof profile: `profile.proto`, gzipped, as
//! `go tool pprof` and continuous profilers read it.
//!
//! Sample types `rss/bytes` (the default), `virtual/bytes` and
//! `mappings/count`; one sample per call-site stack, weighted by the
//! stack's share of its row ([`SiteReport::stack_shares`]), labelled with
//! the row's category, sub-category, call site and region names; memory
//! mapped before tracing is one `[untraced]` sample, so the `rss` total is
//! the anonymous RSS (private + shared), as in the folded output.
//!
//! Frames become locations (inlined frames are lines of their caller's
//! location, innermost first, as the format wants), functions and files;
//! each module becomes a mapping with its GNU build id where the ELF has
//! one. Frames memtrace could not symbolize are functions named
//! `module+0xoffset`, so every location has a function and pprof does not
//! try to symbolize again (on a machine that may not have the files).
//!
//! The messages are `prost` derives of the published `profile.proto`
//! (github.com/google/pprof, `proto/profile.proto`), field numbers as
//! there; no protoc at build time.

use std::{
    collections::HashMap,
    io::{self, Write as _},
    time::{SystemTime, UNIX_EPOCH},
};

use flate2::{Compression, write::GzEncoder};
use prost::Message as _;

use crate::attribution::report::{AttributedReport, SiteCategory, SiteReport};
use crate::stack::{callsite::CallStack, symbolize::Frame};

/// The messages of `profile.proto` that memtrace writes.
pub mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Profile {
        #[prost(message, repeated, tag = "1")]
        pub sample_type: Vec<ValueType>,
        #[prost(message, repeated, tag = "2")]
        pub sample: Vec<Sample>,
        #[prost(message, repeated, tag = "3")]
        pub mapping: Vec<Mapping>,
        #[prost(message, repeated, tag = "4")]
        pub location: Vec<Location>,
        #[prost(message, repeated, tag = "5")]
        pub function: Vec<Function>,
        /// Index 0 is always "".
        #[prost(string, repeated, tag = "6")]
        pub string_table: Vec<String>,
        #[prost(int64, tag = "7")]
        pub drop_frames: i64,
        #[prost(int64, tag = "8")]
        pub keep_frames: i64,
        #[prost(int64, tag = "9")]
        pub time_nanos: i64,
        #[prost(int64, tag = "10")]
        pub duration_nanos: i64,
        #[prost(message, optional, tag = "11")]
        pub period_type: Option<ValueType>,
        #[prost(int64, tag = "12")]
        pub period: i64,
        /// String table indices.
        #[prost(int64, repeated, tag = "13")]
        pub comment: Vec<i64>,
        /// String table index of the default sample type's `type`.
        #[prost(int64, tag = "14")]
        pub default_sample_type: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ValueType {
        #[prost(int64, tag = "1")]
        pub r#type: i64,
        #[prost(int64, tag = "2")]
        pub unit: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        /// Leaf first.
        #[prost(uint64, repeated, tag = "1")]
        pub location_id: Vec<u64>,
        #[prost(int64, repeated, tag = "2")]
        pub value: Vec<i64>,
        #[prost(message, repeated, tag = "3")]
        pub label: Vec<Label>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Label {
        #[prost(int64, tag = "1")]
        pub key: i64,
        #[prost(int64, tag = "2")]
        pub str: i64,
        #[prost(int64, tag = "3")]
        pub num: i64,
        #[prost(int64, tag = "4")]
        pub num_unit: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Mapping {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(uint64, tag = "2")]
        pub memory_start: u64,
        #[prost(uint64, tag = "3")]
        pub memory_limit: u64,
        #[prost(uint64, tag = "4")]
        pub file_offset: u64,
        #[prost(int64, tag = "5")]
        pub filename: i64,
        #[prost(int64, tag = "6")]
        pub build_id: i64,
        #[prost(bool, tag = "7")]
        pub has_functions: bool,
        #[prost(bool, tag = "8")]
        pub has_filenames: bool,
        #[prost(bool, tag = "9")]
        pub has_line_numbers: bool,
        #[prost(bool, tag = "10")]
        pub has_inline_frames: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Location {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(uint64, tag = "2")]
        pub mapping_id: u64,
        #[prost(uint64, tag = "3")]
        pub address: u64,
        /// Innermost (inlined) first; the last is the caller they were
        /// inlined into.
        #[prost(message, repeated, tag = "4")]
        pub line: Vec<Line>,
        #[prost(bool, tag = "5")]
        pub is_folded: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Line {
        #[prost(uint64, tag = "1")]
        pub function_id: u64,
        #[prost(int64, tag = "2")]
        pub line: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Function {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(int64, tag = "2")]
        pub name: i64,
        #[prost(int64, tag = "3")]
        pub system_name: i64,
        #[prost(int64, tag = "4")]
        pub filename: i64,
        #[prost(int64, tag = "5")]
        pub start_line: i64,
    }
}

/// The sample types, in the order of each sample's values; the first is
/// the default.
pub const SAMPLE_TYPES: [(&str, &str); 3] = [
    ("rss", "bytes"),
    ("virtual", "bytes"),
    ("mappings", "count"),
];

/// The report as a profile.
pub fn profile(report: &AttributedReport) -> proto::Profile {
    let mut b = Builder::new(report);
    for site in &report.call_sites {
        b.site(site);
    }
    let untraced = report
        .totals
        .untraced_rss_bytes
        .saturating_add(report.totals.shared_untraced_rss_bytes);
    if untraced > 0 {
        let stack = CallStack {
            frames: vec![label_frame("[untraced]")],
        };
        let locations = b.locations(&stack);
        let label = vec![b.label("category", SiteCategory::Untraced.name())];
        b.sample(locations, [untraced, 0, 0], label);
    }
    b.finish(report)
}

/// The report as a gzipped `profile.proto`, the form pprof reads.
pub fn encode(report: &AttributedReport) -> io::Result<Vec<u8>> {
    let raw = profile(report).encode_to_vec();
    let mut gz = GzEncoder::new(Vec::with_capacity(raw.len() / 4), Compression::default());
    gz.write_all(&raw)?;
    gz.finish()
}

/// A category as the JSON report names it (`allocator_arenas`).
/// A frame that is only a name.
fn label_frame(name: &str) -> Frame {
    Frame {
        address: 0,
        function: Some(name.to_owned()),
        file: None,
        line: None,
        module: None,
        module_offset: None,
        inlined: false,
    }
}

/// A location's mapping id, address and lines (function id, line).
type LocationKey = (u64, u64, Vec<(u64, i64)>);

/// Tables of the profile being built, each entry interned once.
struct Builder<'a> {
    report: &'a AttributedReport,
    p: proto::Profile,
    strings: HashMap<String, i64>,
    /// (name, file) → function id.
    functions: HashMap<(i64, i64), u64>,
    /// (mapping, address, lines) → location id.
    locations: HashMap<LocationKey, u64>,
    /// (module, load base = address − file offset) → mapping index.
    mappings: HashMap<(String, u64), usize>,
}

impl<'a> Builder<'a> {
    fn new(report: &'a AttributedReport) -> Builder<'a> {
        let mut b = Builder {
            report,
            p: proto::Profile::default(),
            strings: HashMap::new(),
            functions: HashMap::new(),
            locations: HashMap::new(),
            mappings: HashMap::new(),
        };
        b.string("");
        for (ty, unit) in SAMPLE_TYPES {
            let vt = proto::ValueType {
                r#type: b.string(ty),
                unit: b.string(unit),
            };
            b.p.sample_type.push(vt);
        }
        b.p.default_sample_type = b.string(SAMPLE_TYPES[0].0);
        b
    }

    /// The string's index in the table. Names come from the target and
    /// pprof prints them to terminals: control characters are escaped.
    fn string(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.strings.get(s) {
            return i;
        }
        let i = self.p.string_table.len() as i64;
        self.p
            .string_table
            .push(crate::text::printable(s).into_owned());
        self.strings.insert(s.to_owned(), i);
        i
    }

    fn label(&mut self, key: &str, value: &str) -> proto::Label {
        proto::Label {
            key: self.string(key),
            str: self.string(value),
            ..Default::default()
        }
    }

    /// One sample per stack of the row.
    fn site(&mut self, site: &SiteReport) {
        let mut labels = vec![
            self.label("category", site.category.name()),
            self.label("subcategory", site.subcategory),
            self.label("call_site", &site.label()),
        ];
        for name in &site.names {
            labels.push(self.label("region", name));
        }
        for (stack, share) in site.stack_shares() {
            let locations = self.locations(stack);
            let values = [
                share.resident_bytes,
                share.virtual_bytes,
                share.mappings as u64,
            ];
            self.sample(locations, values, labels.clone());
        }
    }

    fn sample(&mut self, location_id: Vec<u64>, values: [u64; 3], label: Vec<proto::Label>) {
        self.p.sample.push(proto::Sample {
            location_id,
            // Larger than i64::MAX cannot be resident or mapped.
            value: values
                .iter()
                .map(|&v| i64::try_from(v).unwrap_or(i64::MAX))
                .collect(),
            label,
        });
    }

    /// Location ids of a stack, leaf first: each frame not inlined closes
    /// a location holding the inlined frames before it.
    fn locations(&mut self, stack: &CallStack) -> Vec<u64> {
        let mut out = Vec::new();
        let mut group: Vec<&Frame> = Vec::new();
        for f in &stack.frames {
            group.push(f);
            if !f.inlined {
                out.push(self.location(&group));
                group.clear();
            }
        }
        if !group.is_empty() {
            out.push(self.location(&group));
        }
        if out.is_empty() {
            let unknown = label_frame("[unknown]");
            out.push(self.location(&[&unknown]));
        }
        out
    }

    /// The location of one address: `frames` innermost first, all at it.
    fn location(&mut self, frames: &[&Frame]) -> u64 {
        let Some(outer) = frames.last() else {
            return 0;
        };
        let mapping_id = self.mapping(frames);
        let lines: Vec<(u64, i64)> = frames
            .iter()
            .map(|f| (self.function(f), f.line.map_or(0, i64::from)))
            .collect();
        let key = (mapping_id, outer.address, lines);
        if let Some(&id) = self.locations.get(&key) {
            return id;
        }
        let id = self.p.location.len() as u64 + 1;
        self.p.location.push(proto::Location {
            id,
            mapping_id,
            address: outer.address,
            line: key
                .2
                .iter()
                .map(|&(function_id, line)| proto::Line { function_id, line })
                .collect(),
            is_folded: false,
        });
        self.locations.insert(key, id);
        id
    }

    fn function(&mut self, f: &Frame) -> u64 {
        // An unresolved frame is named by where it is: `libx.so+0x1234`.
        let name = f.function.clone().unwrap_or_else(|| f.display());
        let key = (
            self.string(&name),
            f.file.as_deref().map_or(0, |file| self.string(file)),
        );
        if let Some(&id) = self.functions.get(&key) {
            return id;
        }
        let id = self.p.function.len() as u64 + 1;
        self.p.function.push(proto::Function {
            id,
            name: key.0,
            system_name: key.0,
            filename: key.1,
            start_line: 0,
        });
        self.functions.insert(key, id);
        id
    }

    /// The mapping of a location's module (0: none, e.g. JIT code). Its
    /// range is what the profile's addresses show of it: from the load
    /// base (address − file offset, so pprof maps each address back to
    /// its file offset) to past the highest address seen.
    fn mapping(&mut self, frames: &[&Frame]) -> u64 {
        let Some(outer) = frames.last() else { return 0 };
        let (Some(module), Some(offset)) = (&outer.module, outer.module_offset) else {
            return 0;
        };
        if outer.address < offset {
            return 0;
        }
        let base = outer.address - offset;
        let key = (module.clone(), base);
        let i = match self.mappings.get(&key) {
            Some(&i) => i,
            None => {
                let filename = self.string(module);
                let build_id = match self.report.build_ids.get(module) {
                    Some(id) => self.string(id),
                    None => 0,
                };
                let i = self.p.mapping.len();
                self.p.mapping.push(proto::Mapping {
                    id: i as u64 + 1,
                    memory_start: base,
                    memory_limit: base,
                    file_offset: 0,
                    filename,
                    build_id,
                    // Every location has a function, named by memtrace.
                    has_functions: true,
                    ..Default::default()
                });
                self.mappings.insert(key, i);
                i
            }
        };
        let m = &mut self.p.mapping[i];
        m.memory_limit = m.memory_limit.max(outer.address.saturating_add(1));
        m.has_filenames |= frames.iter().any(|f| f.file.is_some());
        m.has_line_numbers |= frames.iter().any(|f| f.line.is_some());
        m.has_inline_frames |= frames.len() > 1;
        m.id
    }

    /// pprof names the profile's program after its first mapping: put the
    /// executables before the shared libraries (ids follow).
    fn main_mapping_first(&mut self) {
        let table = &self.p.string_table;
        let is_library = |m: &proto::Mapping| {
            let name = usize::try_from(m.filename)
                .ok()
                .and_then(|i| table.get(i))
                .map_or("", |n| n.rsplit('/').next().unwrap_or(n));
            name.contains(".so")
        };
        let mut order: Vec<usize> = (0..self.p.mapping.len()).collect();
        order.sort_by_key(|&i| is_library(&self.p.mapping[i]));
        let mut new_id = vec![0u64; self.p.mapping.len() + 1];
        for (pos, &i) in order.iter().enumerate() {
            new_id[i + 1] = pos as u64 + 1;
        }
        let mut old = std::mem::take(&mut self.p.mapping);
        for (pos, &i) in order.iter().enumerate() {
            let mut m = std::mem::take(&mut old[i]);
            m.id = pos as u64 + 1;
            self.p.mapping.push(m);
        }
        for l in &mut self.p.location {
            l.mapping_id = usize::try_from(l.mapping_id)
                .ok()
                .and_then(|i| new_id.get(i))
                .copied()
                .unwrap_or(0);
        }
    }

    fn finish(mut self, report: &AttributedReport) -> proto::Profile {
        let comments = [
            format!(
                "memtrace: resident anonymous memory of pid {} by call stack",
                report.pid
            ),
            format!(
                "coverage {:.1}% of {} anonymous RSS bytes",
                report.coverage * 100.0,
                report.totals.anon_rss_bytes
            ),
        ];
        let warnings = [
            (report.lost_events > 0).then(|| {
                format!(
                    "{} events were lost: attribution may be off",
                    report.lost_events
                )
            }),
            (!report.complete).then(|| "possibly incomplete: newest changes missing".to_owned()),
        ];
        for c in comments.into_iter().chain(warnings.into_iter().flatten()) {
            let i = self.string(&c);
            self.p.comment.push(i);
        }
        self.main_mapping_first();
        self.p.time_nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        self.p
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::io::Read as _;

    use prost::Message as _;

    use super::*;
    use crate::attribution::{
        classify,
        join::AnonTotals,
        report::{SiteReport, StackShare},
    };

    fn frame(addr: u64, func: Option<&str>, module: Option<&str>, inlined: bool) -> Frame {
        Frame {
            address: addr,
            function: func.map(str::to_owned),
            file: func.map(|_| "/src/app.rs".to_owned()),
            line: func.map(|_| 7),
            module: module.map(str::to_owned),
            module_offset: module.map(|_| addr - 0x5555_0000_0000),
            inlined,
        }
    }

    fn site(stack: Vec<Frame>, rss: u64, virt: u64, maps: usize) -> SiteReport {
        let class = classify::all_classes()[0];
        SiteReport {
            origin: 0,
            rss_bytes: rss,
            shared_rss_bytes: 0,
            virtual_bytes: virt,
            mappings: maps,
            names: vec!["a<b>&\"c\"".into(), "\x1b[2Jred".into()],
            category: class.category,
            subcategory: class.name,
            runtime: None,
            call_site: stack.first().cloned(),
            via: None,
            stack: CallStack { frames: stack },
            stack_count: 1,
            class,
            other_stacks: Vec::new(),
        }
    }

    fn report() -> AttributedReport {
        const BIN: &str = "/usr/bin/app";
        const LIB: &str = "/usr/lib/libc.so.6";
        let b = 0x5555_0000_0000;
        // An inlined frame in its caller, then main; the second row has a
        // second stack through an unresolved libc frame.
        let mut first = site(
            vec![
                frame(b + 0x1010, Some("app::inlined_grow"), Some(BIN), true),
                frame(b + 0x1010, Some("app::grow"), Some(BIN), false),
                frame(b + 0x2000, Some("main"), Some(BIN), false),
            ],
            12 << 20,
            16 << 20,
            3,
        );
        first.stack_count = 2;
        first.other_stacks.push((
            CallStack {
                frames: vec![
                    frame(b + 0x9_0000, None, Some(LIB), false),
                    frame(b + 0x2000, Some("main"), Some(BIN), false),
                ],
            },
            StackShare {
                resident_bytes: 4 << 20,
                virtual_bytes: 4 << 20,
                mappings: 1,
            },
        ));
        let second = site(vec![frame(0x7000, None, None, false)], 1 << 20, 2 << 20, 1);
        AttributedReport {
            pid: 42,
            totals: AnonTotals {
                anon_rss_bytes: 15 << 20,
                attributed_rss_bytes: 13 << 20,
                untraced_rss_bytes: 2 << 20,
                ..AnonTotals::default()
            },
            coverage: 13.0 / 15.0,
            categories: Vec::new(),
            call_sites: vec![first, second],
            traced_ranges: None,
            lost_events: 0,
            complete: true,
            build_ids: BTreeMap::from([(BIN.to_owned(), "0123abcd".to_owned())]),
            at: Default::default(),
            process: Default::default(),
        }
    }

    fn decode(gz: &[u8]) -> proto::Profile {
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(gz)
            .read_to_end(&mut raw)
            .expect("gzip");
        proto::Profile::decode(raw.as_slice()).expect("profile.proto")
    }

    #[test]
    fn samples_add_up_to_the_report_per_stack() {
        let r = report();
        let p = decode(&encode(&r).expect("encode"));
        let s = |i: i64| p.string_table[i as usize].as_str();
        assert_eq!(s(0), "");
        let types: Vec<(&str, &str)> = p
            .sample_type
            .iter()
            .map(|t| (s(t.r#type), s(t.unit)))
            .collect();
        assert_eq!(types, SAMPLE_TYPES.to_vec());
        assert_eq!(s(p.default_sample_type), "rss");
        // One sample per stack, plus untraced.
        let values: Vec<Vec<i64>> = p.sample.iter().map(|x| x.value.clone()).collect();
        assert_eq!(
            values,
            vec![
                vec![8 << 20, 12 << 20, 2],
                vec![4 << 20, 4 << 20, 1],
                vec![1 << 20, 2 << 20, 1],
                vec![2 << 20, 0, 0],
            ]
        );
        let rss: i64 = p.sample.iter().map(|x| x.value[0]).sum();
        assert_eq!(rss, 15 << 20, "the rss total is the anonymous RSS");

        let func = |id: u64| s(p.function[id as usize - 1].name);
        let loc = |id: u64| &p.location[id as usize - 1];
        // The inlined frame is a line of its caller's location, innermost
        // first; main's location is shared by both stacks.
        let first = &p.sample[0].location_id;
        assert_eq!(first.len(), 2);
        let names: Vec<&str> = loc(first[0])
            .line
            .iter()
            .map(|l| func(l.function_id))
            .collect();
        assert_eq!(names, ["app::inlined_grow", "app::grow"]);
        assert_eq!(loc(first[0]).line[0].line, 7);
        assert_eq!(p.sample[1].location_id[1], first[1]);
        let unresolved = loc(p.sample[1].location_id[0]);
        assert_eq!(func(unresolved.line[0].function_id), "libc.so.6+0x90000");
        let jit = loc(p.sample[2].location_id[0]);
        assert_eq!((jit.mapping_id, jit.address), (0, 0x7000));
        assert_eq!(
            func(loc(p.sample[3].location_id[0]).line[0].function_id),
            "[untraced]"
        );

        // The executable first, with its build id; addresses map back to
        // their file offsets.
        let files: Vec<&str> = p.mapping.iter().map(|m| s(m.filename)).collect();
        assert_eq!(files, ["/usr/bin/app", "/usr/lib/libc.so.6"]);
        let app = &p.mapping[0];
        assert_eq!(s(app.build_id), "0123abcd");
        assert_eq!(s(p.mapping[1].build_id), "");
        assert_eq!(loc(first[0]).mapping_id, app.id);
        assert_eq!(
            loc(first[0]).address - app.memory_start + app.file_offset,
            0x1010
        );
        assert!(app.memory_limit > 0x5555_0000_2000);
        assert!(app.has_functions && app.has_inline_frames && app.has_line_numbers);
        assert_eq!(unresolved.mapping_id, p.mapping[1].id);

        // Labels carry the row's names as given (pprof escapes them).
        let labels: Vec<(&str, &str)> = p.sample[0]
            .label
            .iter()
            .map(|l| (s(l.key), s(l.str)))
            .collect();
        assert!(labels.contains(&("region", "a<b>&\"c\"")), "{labels:?}");
        assert!(
            labels.contains(&("region", "\\x1b[2Jred")),
            "control characters escaped: {labels:?}"
        );
        assert!(
            p.string_table.iter().all(|s| !s.contains('\x1b')),
            "no escape sequence reaches a terminal through pprof"
        );
        assert!(
            labels
                .iter()
                .any(|(k, v)| *k == "call_site" && v.contains("inlined_grow")),
            "{labels:?}"
        );
    }
}
