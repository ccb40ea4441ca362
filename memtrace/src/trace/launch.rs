//! Launch a command under memtrace so that nothing it maps escapes, or
//! hold a running process at its exit for the final report.
//!
//! The child asks to be ptraced before exec, so it stops right after exec,
//! before its first instruction (the dynamic loader has not mapped anything
//! yet). The caller adds its pid to the traced set, then lets it run. The
//! child stops once more at exit (`PTRACE_O_TRACEEXIT`) while its address
//! space is intact, so a final report describes its memory before exit.
//! Signals sent to the child are passed on unchanged.
//!
//! ptrace requests must come from the thread that is the tracer, so one
//! thread spawns the child and drives it; it talks to the caller over
//! channels.

use std::{
    ffi::OsString,
    io,
    os::unix::process::CommandExt as _,
    process::Command,
    sync::mpsc::{Receiver, Sender, TryRecvError, channel},
    thread,
};

use anyhow::{Context as _, anyhow};

/// What the launched child did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildEvent {
    /// Stopped at exit with its address space intact; call
    /// [`Launched::resume_exit`] to let it finish.
    AtExit,
    /// Gone, with the exit code memtrace should pass on (128+N for signal N).
    Exited(i32),
    /// ptrace lost track of it (e.g. waitpid failed); it may still run.
    Lost,
}

/// A process memtrace drives with ptrace: launched (stopped after exec
/// until [`Launched::start`]) or seized while running ([`seize`]).
pub struct Launched {
    pub pid: u32,
    go: Sender<()>,
    events: Receiver<ChildEvent>,
    thread: Option<thread::JoinHandle<()>>,
}

/// Spawn `argv` stopped right after exec. The child keeps memtrace's stdin,
/// stdout and stderr.
pub fn launch(argv: &[OsString]) -> anyhow::Result<Launched> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| anyhow!("no command given"))?;
    let program = program.clone();
    let args = args.to_vec();
    let (pid_tx, pid_rx) = channel::<anyhow::Result<u32>>();
    let (go_tx, go_rx) = channel::<()>();
    let (ev_tx, ev_rx) = channel::<ChildEvent>();
    let thread = thread::Builder::new()
        .name("memtrace-launch".into())
        .spawn(move || tracer_thread(program, args, pid_tx, go_rx, ev_tx))
        .context("spawning the launcher thread")?;
    let pid = pid_rx
        .recv()
        .map_err(|_| anyhow!("launcher thread ended unexpectedly"))??;
    Ok(Launched {
        pid,
        go: go_tx,
        events: ev_rx,
        thread: Some(thread),
    })
}

/// Attach to running process `pid` with `PTRACE_SEIZE` (which does not stop
/// it) so that it stops at exit with its address space intact. Only the
/// main thread is attached; the process exits when its last thread does,
/// and the main thread's exit stop holds the memory until then.
pub fn seize(pid: u32) -> anyhow::Result<Launched> {
    let (pid_tx, pid_rx) = channel::<anyhow::Result<u32>>();
    let (go_tx, go_rx) = channel::<()>();
    let (ev_tx, ev_rx) = channel::<ChildEvent>();
    let thread = thread::Builder::new()
        .name("memtrace-seize".into())
        .spawn(move || {
            let opts = libc::PTRACE_O_TRACEEXIT | libc::PTRACE_O_TRACEEXEC;
            // SAFETY: plain ptrace request on a pid.
            let rc =
                unsafe { libc::ptrace(libc::PTRACE_SEIZE, pid as i32, 0, opts as libc::c_long) };
            if rc == -1 {
                let e = io::Error::last_os_error();
                let _ = pid_tx.send(Err(anyhow!("cannot attach to pid {pid} with ptrace: {e}")));
                return;
            }
            let _ = pid_tx.send(Ok(pid));
            drive(pid as i32, &go_rx, &ev_tx, true);
        })
        .context("spawning the ptrace thread")?;
    let pid = pid_rx
        .recv()
        .map_err(|_| anyhow!("ptrace thread ended unexpectedly"))??;
    Ok(Launched {
        pid,
        go: go_tx,
        events: ev_rx,
        thread: Some(thread),
    })
}

impl Launched {
    /// Let the child run from its first instruction.
    pub fn start(&self) {
        let _ = self.go.send(());
    }

    /// The next thing the child did, if any, without blocking.
    pub fn poll(&self) -> Option<ChildEvent> {
        match self.events.try_recv() {
            Ok(ev) => Some(ev),
            Err(TryRecvError::Empty) => None,
            // The ptrace thread gave up (waitpid failed): memtrace can no
            // longer hold the tracee, so stop relying on it.
            Err(TryRecvError::Disconnected) => Some(ChildEvent::Lost),
        }
    }

    /// After [`ChildEvent::AtExit`]: let the child finish exiting.
    pub fn resume_exit(&self) {
        let _ = self.go.send(());
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        // Unblock the tracer thread whatever state it is in; when memtrace
        // stops early the child is detached and runs on.
        let _ = self.go.send(());
        if let Some(t) = self.thread.take()
            && t.is_finished()
        {
            let _ = t.join();
        }
    }
}

fn tracer_thread(
    program: OsString,
    args: Vec<OsString>,
    pid_tx: Sender<anyhow::Result<u32>>,
    go: Receiver<()>,
    events: Sender<ChildEvent>,
) {
    let mut cmd = Command::new(&program);
    cmd.args(&args);
    // SAFETY: ptrace(PTRACE_TRACEME) is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let _ = pid_tx.send(Err(anyhow!(
                "cannot run {}: {e}",
                program.to_string_lossy()
            )));
            return;
        }
    };
    let pid = child.id() as i32;
    // The exec stop (SIGTRAP) comes first.
    match wait(pid) {
        Some(Wait::Stopped(_)) => {}
        Some(Wait::Exited(code)) => {
            let _ = pid_tx.send(Err(anyhow!(
                "{} exited before it started (status {code})",
                program.to_string_lossy()
            )));
            return;
        }
        None => {
            let _ = pid_tx.send(Err(anyhow!(
                "waiting for {} failed",
                program.to_string_lossy()
            )));
            return;
        }
    }
    let opts = libc::PTRACE_O_TRACEEXIT | libc::PTRACE_O_TRACEEXEC;
    // SAFETY: `pid` is our stopped tracee.
    unsafe { libc::ptrace(libc::PTRACE_SETOPTIONS, pid, 0, opts as libc::c_long) };
    let _ = pid_tx.send(Ok(pid as u32));
    if go.recv().is_err() {
        detach(pid);
        return;
    }
    cont(pid, 0);
    drive(pid, &go, &events, false);
}

/// Pass signals on, report the exit stop and wait for the caller before
/// letting the tracee finish. `seized` tracees get group-stops, which must
/// be left with PTRACE_LISTEN, not resumed.
fn drive(pid: i32, go: &Receiver<()>, events: &Sender<ChildEvent>, seized: bool) {
    loop {
        match wait(pid) {
            Some(Wait::Exited(code)) => {
                let _ = events.send(ChildEvent::Exited(code));
                return;
            }
            Some(Wait::Stopped(status)) => {
                let sig = (status >> 8) & 0xff;
                let event = status >> 16;
                if sig == libc::SIGTRAP && event == libc::PTRACE_EVENT_EXIT {
                    if events.send(ChildEvent::AtExit).is_err() {
                        detach(pid);
                        return;
                    }
                    // Wait for the caller's report (or its disappearance).
                    let _ = go.recv();
                    cont(pid, 0);
                } else if seized && event == libc::PTRACE_EVENT_STOP {
                    // A group-stop (SIGSTOP and friends) of a seized tracee.
                    // SAFETY: `pid` is our tracee in a ptrace stop.
                    unsafe { libc::ptrace(libc::PTRACE_LISTEN, pid, 0, 0) };
                } else if sig == libc::SIGTRAP && event != 0 {
                    // exec and other ptrace event stops: not signals.
                    cont(pid, 0);
                } else {
                    cont(pid, sig);
                }
            }
            None => return,
        }
    }
}

enum Wait {
    Stopped(i32),
    Exited(i32),
}

fn wait(pid: i32) -> Option<Wait> {
    loop {
        let mut status = 0;
        // SAFETY: valid out pointer.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
        if rc == -1 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return None;
        }
        if libc::WIFSTOPPED(status) {
            return Some(Wait::Stopped(status));
        }
        if libc::WIFEXITED(status) {
            return Some(Wait::Exited(libc::WEXITSTATUS(status)));
        }
        if libc::WIFSIGNALED(status) {
            return Some(Wait::Exited(128 + libc::WTERMSIG(status)));
        }
    }
}

fn cont(pid: i32, sig: i32) {
    // SAFETY: `pid` is our tracee in a ptrace stop.
    unsafe { libc::ptrace(libc::PTRACE_CONT, pid, 0, sig as libc::c_long) };
}

fn detach(pid: i32) {
    // SAFETY: as above.
    unsafe { libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0) };
}
