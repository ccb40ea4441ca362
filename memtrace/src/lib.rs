//! memtrace: where did this Linux process's memory go?
//!
//! The library behind the `memtrace` command. Each module is one stage of
//! the pipeline and exchanges plain data types with its neighbours:
//!
//! - [`smaps`]: parse `/proc/PID/smaps` into [`smaps::Vma`]s.
//! - [`classify`]: put each VMA in exactly one category.
//! - [`snapshot`]: capture a process and total it (equal to `smaps_rollup`).
//! - [`report`], [`units`]: render a snapshot as text or JSON.
//! - [`serve`]: the same over HTTP.
//! - [`event`]: decoded mapping events from the eBPF tracer ([`trace`]).
//! - [`ledger`]: live traced address ranges with their origins.

pub mod attribute;
pub mod callsite;
pub mod classify;
pub mod event;
pub mod launch;
pub mod ledger;
pub mod pagemap;
pub mod procmaps;
pub mod report;
pub mod serve;
pub mod session;
pub mod site_report;
pub mod smaps;
pub mod snapshot;
pub mod stream;
pub mod symbolize;
pub mod trace;
pub mod units;
pub mod unwind;
