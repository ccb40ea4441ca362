//! memtrace: where did this Linux process's memory go?
//!
//! The library behind the `memtrace` command. Modules follow the data, each
//! a stage that exchanges plain data types with its neighbours, and none
//! imports one above it:
//!
//! - [`proc`]: everything read from `/proc` (smaps, maps, pagemap, pid
//!   facts) and its error type.
//! - [`snapshot`]: capture and classify a process's VMAs, total them (equal
//!   to `smaps_rollup`), render the breakdown.
//! - [`trace`]: load the eBPF programs, decode their events, launch or
//!   attach to the target.
//! - [`stack`]: unwind and symbolize call stacks, choose the call site.
//! - [`attribution`]: the ledger of traced ranges, its join with smaps, the
//!   attributed report.
//! - [`export`]: renderings of the reports for other tools (Prometheus,
//!   pprof).
//! - [`session`]: a tracing session and its live event stream.
//! - [`history`]: the attributed report sampled over time, growth and
//!   `--alert` rules.
//! - [`serve`]: the reports over HTTP.
//! - [`schema`]: the JSON output contract (version, address convention).
//! - [`text`]: names from the target made safe for a terminal.
//! - [`units`]: byte counts for humans.
//!
//! Cargo feature `ebpf` (default): build the eBPF programs (nightly and
//! bpf-linker) and embed them for [`trace`]. Without it everything still
//! builds with stable Rust, [`snapshot`] and [`serve`] work as usual, and
//! loading the tracer fails with an error that says the programs are missing.

pub mod attribution;
pub mod export;
pub mod history;
pub mod proc;
pub mod schema;
pub mod serve;
pub mod session;
pub mod snapshot;
pub mod stack;
pub mod text;
pub mod trace;
pub mod units;
