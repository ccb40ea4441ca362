//! Attribution: which call site holds this resident memory?
//!
//! - [`ledger`]: the live traced address ranges of one process, each with
//!   its origin, replayed from events with the kernel's semantics.
//! - [`join`]: smaps VMAs × ledger ranges (+ pagemap where a VMA holds
//!   several origins) → resident bytes per origin.
//! - [`classify`]: the rule table: which runtime or allocator each frame
//!   belongs to, the caller past the allocation machinery, and the
//!   (sub-)category of each call site.
//! - [`report`]: the attributed report: per call site and per category,
//!   as text, JSON, folded stacks or a flame graph.
//!
//! Contact points: events come from [`crate::trace::event`], VMAs and pages
//! from [`crate::proc`], symbolized stacks from [`crate::stack`]; the
//! session ([`crate::session`]) drives all three.

pub mod classify;
pub mod join;
pub mod ledger;
pub mod report;
