//! The syscall part of the kernel/eBPF contract
//! (`memtrace_common::tracepoints`) against the running kernel: every
//! record field the eBPF programs read must be where this kernel's tracefs
//! `format` files put it, with the same size.
//!
//! Needs root (CI runs as root): tracefs is readable by root only, and is
//! mounted here when missing.

use std::{collections::HashMap, path::Path};

use memtrace::trace::tracefs::{self, FieldLayout};
use memtrace_common::tracepoints::{self, SYSCALL_ARGS_OFFSET, SYSCALLS, SYSCALLS_CATEGORY};

fn tracefs_root() -> &'static Path {
    tracefs::ensure_mounted()
        .unwrap_or_else(|e| panic!("tracefs is needed for this test (run it as root): {e}"))
}

fn format(root: &Path, category: &str, tracepoint: &str) -> HashMap<String, FieldLayout> {
    tracefs::fields(root, category, tracepoint)
        .unwrap_or_else(|e| panic!("reading the format of {category}:{tracepoint}: {e}"))
}

#[test]
fn every_field_the_ebpf_programs_read_is_where_the_kernel_puts_it() {
    let root = tracefs_root();
    let mut checked = 0;
    let mut wrong = Vec::new();
    for tf in tracepoints::fields() {
        let fields = format(root, tf.category, tf.tracepoint);
        let expected = FieldLayout::from(tf.field);
        match fields.get(tf.field.name) {
            Some(found) if *found == expected => {}
            Some(found) => wrong.push(format!(
                "{}:{} `{}`: kernel has {found}, contract says {expected}",
                tf.category, tf.tracepoint, tf.field.name
            )),
            None => wrong.push(format!(
                "{}:{} has no field `{}` (contract says {expected}); fields: {fields:?}",
                tf.category, tf.tracepoint, tf.field.name
            )),
        }
        checked += 1;
    }
    assert!(
        wrong.is_empty(),
        "memtrace_common::tracepoints disagrees with this kernel:\n{}",
        wrong.join("\n")
    );
    assert_eq!(checked, 7, "the contract lost fields");
}

/// The argument names in the contract are all of the kernel's arguments,
/// in order (the exit programs read them from the registers in this
/// order): none missing, none extra. The entry record lists them, whether
/// or not memtrace attaches to it.
#[test]
fn syscall_arguments_are_the_kernels() {
    let root = tracefs_root();
    for syscall in SYSCALLS {
        let enter = format!("sys_enter_{}", syscall.name);
        let fields = format(root, SYSCALLS_CATEGORY, &enter);
        let mut args: Vec<(&String, &FieldLayout)> = fields
            .iter()
            .filter(|(_, f)| f.offset >= SYSCALL_ARGS_OFFSET)
            .collect();
        args.sort_by_key(|(_, f)| f.offset);
        let names: Vec<&str> = args.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names, syscall.args,
            "arguments of {SYSCALLS_CATEGORY}:{enter}"
        );
    }
}

/// What `Tracer::load` runs before attaching accepts this kernel.
#[test]
fn the_pre_attach_check_accepts_this_kernel() {
    tracefs::check_layouts(tracefs_root()).unwrap_or_else(|e| panic!("check_layouts: {e}"));
}
