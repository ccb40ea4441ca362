//! The kernel/eBPF contract (`memtrace_common::tracepoints`) against the
//! running kernel's BTF: every raw tracepoint prototype, `pt_regs` offset
//! and struct member the eBPF programs rely on is where this kernel has it.
//!
//! Reads `/sys/kernel/btf/vmlinux` (world-readable on kernels with BTF, which
//! tracing needs anyway).

use memtrace::trace::{btf::Btf, kernel};
use memtrace_common::tracepoints::{RAW_TRACEPOINTS, pt_regs};

fn kernel_btf() -> Btf {
    Btf::from_kernel().unwrap_or_else(|e| {
        panic!("this test needs the kernel's BTF (CONFIG_DEBUG_INFO_BTF=y): {e}")
    })
}

#[test]
fn the_pre_load_check_accepts_this_kernel() {
    let layout = kernel::check_and_layout(&kernel_btf())
        .unwrap_or_else(|e| panic!("the contract disagrees with this kernel: {e}"));
    // Every offset is inside its struct, and none of these members opens
    // its struct.
    assert!(layout.task_thread_pid > 0 && layout.pid_numbers > layout.pid_level);
    assert!(layout.upid_size >= 8 && layout.upid_nr < layout.upid_size);
    assert!(layout.bprm_filename > 0);
}

#[test]
fn every_raw_tracepoint_and_register_is_this_kernels() {
    let btf = kernel_btf();
    for tp in RAW_TRACEPOINTS {
        assert_eq!(
            btf.raw_tracepoint_args(tp.name),
            Some(tp.args.len()),
            "arguments of raw tracepoint {}",
            tp.name
        );
    }
    for (name, offset) in pt_regs::ALL {
        assert_eq!(
            btf.member("pt_regs", name).map(|m| m.offset as usize),
            Some(offset),
            "pt_regs.{name}"
        );
    }
}
