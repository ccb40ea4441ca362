//! Call stacks: from the registers and stack bytes an event carries to
//! named frames.
//!
//! - [`unwind`]: framehop over the modules' `.eh_frame`, without frame
//!   pointers.
//! - [`symbolize`]: addresses → functions, files, lines (blazesym), cached.
//! - [`perfmap`]: JIT code → names, from the target's `/tmp/perf-PID.map`.
//! - [`callsite`]: interned stacks, and which frame is the call site.
//!
//! Contact points: takes [`crate::trace::event::UserStack`] and
//! [`crate::proc::maps`]; hands [`callsite::CallStack`]s to the reports.

pub mod callsite;
pub mod perfmap;
pub mod symbolize;
pub mod unwind;
