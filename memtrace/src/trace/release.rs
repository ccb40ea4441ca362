//! Detach perf-event tracepoint links without waiting for the kernel.
//!
//! Closing the last file of a tracepoint perf event makes the closing task
//! wait for an RCU grace period (`tracepoint_synchronize_unregister`) under
//! a global mutex: about 75 ms per tracepoint here, over a second for
//! memtrace's fourteen, serial however many threads close them. When the
//! last reference goes from a kernel worker instead, the task does not
//! wait: the kernel detaches the program and destroys the event in the
//! background, a few milliseconds later.
//!
//! A link pinned in a bpf filesystem holds such a reference, and the pin's
//! is released from a kernel worker when its filesystem goes away. So a
//! short-lived thread makes itself a private mount namespace, mounts a bpf
//! filesystem there, pins every link, and closes memtrace's descriptors;
//! when it exits, its namespace and filesystem go, and with them the last
//! references. Nothing is visible outside the thread, and nothing can stay
//! behind: the namespace dies with the thread, however memtrace ends.
//!
//! Without the privilege to do that (no `CAP_SYS_ADMIN`), the links are
//! closed the slow way.

use std::{ffi::CString, path::Path, thread};

use aya::programs::links::FdLink;

/// Detach `links`, returning once their programs no longer hold memtrace's
/// descriptors; the kernel finishes in the background.
pub fn detach(links: Vec<FdLink>) {
    if links.is_empty() {
        return;
    }
    let worker = thread::Builder::new()
        .name("memtrace-detach".into())
        .spawn(move || {
            // Whatever happens here, dropping the links closes them: at
            // worst the slow way.
            let _ = pin_in_private_bpffs(links);
        });
    if let Ok(worker) = worker {
        let _ = worker.join();
    }
}

/// In a mount namespace of this thread's own, pin `links` in a fresh bpf
/// filesystem and drop them. Returns the links (to be dropped the slow way)
/// when that cannot be done.
fn pin_in_private_bpffs(links: Vec<FdLink>) -> Result<(), Vec<FdLink>> {
    // SAFETY: unshare affects this thread only (it has its own filesystem
    // context after CLONE_FS, and its own mount namespace after
    // CLONE_NEWNS); no pointers are passed.
    if unsafe { libc::unshare(libc::CLONE_FS | libc::CLONE_NEWNS) } != 0 {
        return Err(links);
    }
    // Keep the mount below from propagating to the namespace it was copied
    // from.
    let root = c"/";
    // SAFETY: NUL-terminated strings; null source, type and data are
    // allowed for a propagation change.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(links);
    }
    let dir = std::env::temp_dir();
    let Ok(target) = CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return Err(links);
    };
    // SAFETY: NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(links);
    }
    for (i, link) in links.into_iter().enumerate() {
        // Pinned: the pin keeps the link; dropping `PinnedLink` closes
        // memtrace's descriptor only. Unpinnable: closed the slow way.
        let _ = link.pin(Path::new(&dir).join(format!("link{i}")));
    }
    Ok(())
}
