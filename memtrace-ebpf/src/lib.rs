//! The eBPF programs live in the `memtrace` binary target of this crate;
//! this empty library lets `memtrace` name the crate as a build dependency.
#![no_std]
