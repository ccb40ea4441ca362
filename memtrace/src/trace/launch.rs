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

use nix::{
    errno::Errno,
    sys::{
        ptrace::{self, Options},
        signal::Signal,
        wait::{WaitPidFlag, WaitStatus, waitpid},
    },
    unistd::Pid,
};

/// Why a process could not be launched or attached to.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("no command given")]
    NoCommand,
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("{program} exited before it started (status {status})")]
    ExitedEarly { program: String, status: i32 },
    #[error("waiting for {program} failed: {source}")]
    Wait {
        program: String,
        #[source]
        source: Errno,
    },
    #[error("cannot attach to pid {pid} with ptrace: {source}")]
    Attach {
        pid: u32,
        #[source]
        source: Errno,
    },
    #[error("starting the ptrace thread failed: {0}")]
    Thread(#[source] io::Error),
    #[error("the ptrace thread ended unexpectedly")]
    ThreadGone,
}

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

/// ptrace options of every tracee: stop at exit (address space intact)
/// and report exec as an event, not a SIGTRAP.
fn options() -> Options {
    Options::PTRACE_O_TRACEEXIT | Options::PTRACE_O_TRACEEXEC
}

/// Spawn `argv` stopped right after exec. The child keeps memtrace's stdin,
/// stdout and stderr.
pub fn launch(argv: &[OsString]) -> Result<Launched, LaunchError> {
    let (program, args) = argv.split_first().ok_or(LaunchError::NoCommand)?;
    let program = program.clone();
    let args = args.to_vec();
    spawn_driver("memtrace-launch", move |pid_tx, go_rx, ev_tx| {
        tracer_thread(program, args, pid_tx, go_rx, ev_tx)
    })
}

/// Attach to running process `pid` with `PTRACE_SEIZE` (which does not stop
/// it) so that it stops at exit with its address space intact. Only the
/// main thread is attached; the process exits when its last thread does,
/// and the main thread's exit stop holds the memory until then.
pub fn seize(pid: u32) -> Result<Launched, LaunchError> {
    spawn_driver("memtrace-seize", move |pid_tx, go_rx, ev_tx| {
        let target = Pid::from_raw(pid as i32);
        if let Err(source) = ptrace::seize(target, options()) {
            let _ = pid_tx.send(Err(LaunchError::Attach { pid, source }));
            return;
        }
        let _ = pid_tx.send(Ok(pid));
        drive(target, &go_rx, &ev_tx, true);
    })
}

type PidReply = Sender<Result<u32, LaunchError>>;

/// Run `body` on the thread that will be the tracer (ptrace requests must
/// come from it) and wait for the pid it reports.
fn spawn_driver(
    name: &str,
    body: impl FnOnce(PidReply, Receiver<()>, Sender<ChildEvent>) + Send + 'static,
) -> Result<Launched, LaunchError> {
    let (pid_tx, pid_rx) = channel();
    let (go_tx, go_rx) = channel::<()>();
    let (ev_tx, ev_rx) = channel::<ChildEvent>();
    let thread = thread::Builder::new()
        .name(name.into())
        .spawn(move || body(pid_tx, go_rx, ev_tx))
        .map_err(LaunchError::Thread)?;
    let pid = pid_rx.recv().map_err(|_| LaunchError::ThreadGone)??;
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
    pid_tx: PidReply,
    go: Receiver<()>,
    events: Sender<ChildEvent>,
) {
    let name = program.to_string_lossy().into_owned();
    let mut cmd = Command::new(&program);
    cmd.args(&args);
    // SAFETY: the hook runs in the forked child before exec and only makes
    // the ptrace(PTRACE_TRACEME) system call, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| ptrace::traceme().map_err(io::Error::from));
    }
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(source) => {
            let _ = pid_tx.send(Err(LaunchError::Spawn {
                program: name,
                source,
            }));
            return;
        }
    };
    let pid = Pid::from_raw(child.id() as i32);
    // The exec stop (SIGTRAP) comes first.
    match wait(pid) {
        Ok(Wait::Exited(status)) => {
            let _ = pid_tx.send(Err(LaunchError::ExitedEarly {
                program: name,
                status,
            }));
            return;
        }
        Ok(_) => {}
        Err(source) => {
            let _ = pid_tx.send(Err(LaunchError::Wait {
                program: name,
                source,
            }));
            return;
        }
    }
    let _ = ptrace::setoptions(pid, options());
    let _ = pid_tx.send(Ok(pid.as_raw() as u32));
    if go.recv().is_err() {
        let _ = ptrace::detach(pid, None);
        return;
    }
    let _ = ptrace::cont(pid, None);
    drive(pid, &go, &events, false);
}

/// Pass signals on, report the exit stop and wait for the caller before
/// letting the tracee finish. `seized` tracees get group-stops, which must
/// be left with PTRACE_LISTEN, not resumed.
fn drive(pid: Pid, go: &Receiver<()>, events: &Sender<ChildEvent>, seized: bool) {
    loop {
        match wait(pid) {
            Ok(Wait::Exited(code)) => {
                let _ = events.send(ChildEvent::Exited(code));
                return;
            }
            Ok(Wait::AtExit) => {
                if events.send(ChildEvent::AtExit).is_err() {
                    let _ = ptrace::detach(pid, None);
                    return;
                }
                // Wait for the caller's report (or its disappearance).
                let _ = go.recv();
                let _ = ptrace::cont(pid, None);
            }
            Ok(Wait::GroupStop(_)) if seized => {
                let _ = listen(pid);
            }
            Ok(Wait::GroupStop(sig)) | Ok(Wait::Signal(sig)) => {
                let _ = ptrace::cont(pid, sig);
            }
            // exec and other ptrace event stops: not signals.
            Ok(Wait::Event) => {
                let _ = ptrace::cont(pid, None);
            }
            Err(_) => return,
        }
    }
}

/// A state change of the tracee.
enum Wait {
    /// Gone, with the status to pass on.
    Exited(i32),
    /// The exit stop (`PTRACE_EVENT_EXIT`).
    AtExit,
    /// A group-stop of a seized tracee (`PTRACE_EVENT_STOP`).
    GroupStop(Signal),
    /// Another ptrace event stop (exec…).
    Event,
    /// A signal about to be delivered.
    Signal(Signal),
}

fn wait(pid: Pid) -> Result<Wait, Errno> {
    loop {
        let status = match waitpid(pid, Some(WaitPidFlag::__WALL)) {
            Ok(s) => s,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        };
        return Ok(match status {
            WaitStatus::Exited(_, code) => Wait::Exited(code),
            WaitStatus::Signaled(_, sig, _) => Wait::Exited(128 + sig as i32),
            WaitStatus::PtraceEvent(_, _, event) if event == libc::PTRACE_EVENT_EXIT => {
                Wait::AtExit
            }
            WaitStatus::PtraceEvent(_, sig, event) if event == libc::PTRACE_EVENT_STOP => {
                Wait::GroupStop(sig)
            }
            WaitStatus::PtraceEvent(..) | WaitStatus::PtraceSyscall(_) => Wait::Event,
            WaitStatus::Stopped(_, sig) => Wait::Signal(sig),
            WaitStatus::Continued(_) | WaitStatus::StillAlive => continue,
        });
    }
}

/// Leave a group-stop as ptrace wants it for seized tracees: stopped for
/// the rest of the system, while we keep waiting for events. nix has no
/// wrapper for `PTRACE_LISTEN`.
fn listen(pid: Pid) -> Result<(), Errno> {
    // SAFETY: a ptrace request without memory arguments on our tracee,
    // which is in a ptrace stop.
    let rc = unsafe { libc::ptrace(libc::PTRACE_LISTEN, pid.as_raw(), 0, 0) };
    Errno::result(rc).map(drop)
}
