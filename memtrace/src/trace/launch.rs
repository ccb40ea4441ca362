//! Launch a command under memtrace so that nothing it maps escapes, or
//! seize a running process; either way, hold the process at its exit for
//! the final report.
//!
//! A launched child is seized before exec (see [`spawn`]), so it stops at
//! the exec, before its first instruction (the dynamic loader has not
//! mapped anything yet). The caller adds its pid to the traced set, then
//! lets it run. A running process is seized thread by thread, without
//! stopping it.
//!
//! Every thread is traced (new ones from their first instruction), so the
//! process stops once at its *last* moment (`PTRACE_O_TRACEEXIT` on the
//! last thread to exit, or on the one that ends them all) while its
//! address space is intact: a final report then describes its memory
//! before exit, even when the main thread exited first. Signals are passed
//! on unchanged, and group-stops (`kill -STOP`) are honoured: the process
//! stays stopped until `SIGCONT`, as strace does.
//!
//! ptrace requests must come from the thread that is the tracer, so one
//! thread starts (or seizes) the process and drives it; it talks to the
//! caller over channels. It waits with `waitpid(-1, __WALL)`, so it also
//! reaps any other child of this process: memtrace starts no other.

mod spawn;
mod threads;

use std::{
    ffi::OsString,
    io,
    sync::{
        Arc,
        mpsc::{Receiver, Sender, TryRecvError, channel},
    },
    thread,
    time::{Duration, Instant},
};

use nix::{
    errno::Errno,
    sys::{ptrace, signal::Signal},
    unistd::Pid,
};

use crate::proc::pid::{Identity, TargetError};
use threads::{Controls, Deliveries, Process, Stop};

/// Why a process could not be launched or attached to. A message names
/// its cause itself (warnings print it with `{}`), so no cause is also a
/// `source()`: anyhow's `{:#}` would print it twice.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("no command given")]
    NoCommand,
    #[error("cannot run {program}: {error}")]
    Spawn { program: String, error: io::Error },
    #[error("{program} exited before it started (status {status})")]
    ExitedEarly { program: String, status: i32 },
    #[error("waiting for {program} failed: {error}")]
    Wait { program: String, error: Errno },
    #[error("cannot attach to pid {pid} with ptrace: {error}")]
    Attach { pid: u32, error: Errno },
    /// The pinned process is not the one the pid names any more.
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("starting the ptrace thread failed: {0}")]
    Thread(io::Error),
    #[error("the ptrace thread ended unexpectedly")]
    ThreadGone,
}

/// What the traced process did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildEvent {
    /// Its last thread stopped at exit with the address space intact;
    /// call [`Launched::resume_exit`] to let it finish.
    AtExit {
        /// When it stopped: the exit hold counts from here.
        since: Instant,
    },
    /// Gone, with the exit code memtrace should pass on (128+N for signal N).
    Exited(i32),
    /// ptrace lost track of it (e.g. waitpid failed); it may still run.
    Lost,
}

/// A process memtrace drives with ptrace: launched (stopped before its
/// first instruction until [`Launched::start`]) or seized while running
/// ([`seize`]).
pub struct Launched {
    pub pid: u32,
    go: Sender<()>,
    /// The exit hold and the release, shared with the ptrace thread.
    controls: Arc<Controls>,
    events: Receiver<ChildEvent>,
    deliveries: Deliveries,
    thread: Option<thread::JoinHandle<()>>,
}

/// Lets a [`Launched`] process go from any thread ([`Launched::releaser`]).
#[derive(Clone, Debug)]
pub struct Releaser {
    controls: Arc<Controls>,
    go: Sender<()>,
}

impl Releaser {
    /// See [`Launched::release`]. An exit stop that the caller claimed
    /// ([`Launched::claim_exit`]) is left to it: it is being read, and the
    /// caller resumes it within the exit hold.
    pub fn release(&self) {
        if self.controls.release() {
            let _ = self.go.send(());
        }
    }
}

/// Start `argv` stopped before its first instruction. The child keeps
/// memtrace's stdin, stdout, stderr and environment.
pub fn launch(argv: &[OsString]) -> Result<Launched, LaunchError> {
    let (program, args) = argv.split_first().ok_or(LaunchError::NoCommand)?;
    let program = program.clone();
    let args = args.to_vec();
    spawn_driver(
        "memtrace-launch",
        move |pid_tx, go_rx, ev_tx, deliveries, controls| {
            tracer_thread(program, args, pid_tx, go_rx, ev_tx, deliveries, controls)
        },
    )
}

/// Attach to the running process `target` with `PTRACE_SEIZE` (which does
/// not stop it), every thread of it, so that it stops at its exit with its
/// address space intact. Fails with [`TargetError::Reused`] when the pid
/// names another process by then.
pub fn seize(target: Identity) -> Result<Launched, LaunchError> {
    spawn_driver(
        "memtrace-seize",
        move |pid_tx, go_rx, ev_tx, deliveries, controls| {
            let mut process = match Process::seize(&target) {
                Ok(p) => p,
                Err(e) => {
                    let _ = pid_tx.send(Err(e));
                    return;
                }
            };
            let _ = pid_tx.send(Ok(target.pid));
            process.drive(&go_rx, &ev_tx, &deliveries, &controls);
        },
    )
}

type PidReply = Sender<Result<u32, LaunchError>>;

/// Run `body` on the thread that will be the tracer (ptrace requests must
/// come from it) and wait for the pid it reports.
fn spawn_driver(
    name: &str,
    body: impl FnOnce(PidReply, Receiver<()>, Sender<ChildEvent>, Deliveries, Arc<Controls>)
    + Send
    + 'static,
) -> Result<Launched, LaunchError> {
    let (pid_tx, pid_rx) = channel();
    let (go_tx, go_rx) = channel::<()>();
    let (ev_tx, ev_rx) = channel::<ChildEvent>();
    let deliveries = Deliveries::default();
    let shared = deliveries.clone();
    let controls = Arc::new(Controls::default());
    let theirs = controls.clone();
    let thread = thread::Builder::new()
        .name(name.into())
        .spawn(move || body(pid_tx, go_rx, ev_tx, shared, theirs))
        .map_err(LaunchError::Thread)?;
    let pid = pid_rx.recv().map_err(|_| LaunchError::ThreadGone)??;
    Ok(Launched {
        pid,
        go: go_tx,
        controls,
        events: ev_rx,
        deliveries,
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

    /// Never hold the process at its exit longer than `hold`, whatever
    /// the caller is doing then (by default it waits for
    /// [`Launched::resume_exit`]).
    pub fn hold_exit_for(&self, hold: Duration) {
        self.controls.set_exit_hold(hold);
    }

    /// After [`ChildEvent::AtExit`]: take the exit stop to read the
    /// process, unless the exit hold ran out first and it was let go
    /// (`false`: its memory may be half torn down, read nothing). Once
    /// taken, it stays until [`Launched::resume_exit`].
    pub fn claim_exit(&self) -> bool {
        self.controls.claim_exit()
    }

    /// After [`ChildEvent::AtExit`]: let the child finish exiting.
    pub fn resume_exit(&self) {
        let _ = self.go.send(());
    }

    /// Tracing ended: let the process go. Held at its exit it goes on at
    /// once; each thread is detached at its next stop (a signal, a new
    /// thread, its exit), and the process is never held again, whatever
    /// memtrace does next (e.g. wait for a stalled reader of its report).
    pub fn release(&self) {
        self.releaser().release();
    }

    /// A handle that releases the process from another thread (a signal
    /// handler's), as [`Launched::release`] does.
    pub fn releaser(&self) -> Releaser {
        Releaser {
            controls: self.controls.clone(),
            go: self.go.clone(),
        }
    }

    /// Whether signal `sig` was delivered to the process (to any thread)
    /// at or after `since`.
    pub fn delivered_since(&self, sig: i32, since: Instant) -> bool {
        self.deliveries
            .lock()
            .is_ok_and(|d| d.get(&sig).is_some_and(|&at| at >= since))
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
    deliveries: Deliveries,
    controls: Arc<Controls>,
) {
    let pid = match start_child(&program, &args) {
        Ok(pid) => pid,
        Err(e) => {
            let _ = pid_tx.send(Err(e));
            return;
        }
    };
    let _ = pid_tx.send(Ok(pid as u32));
    if go.recv().is_err() {
        let _ = threads::detach(pid);
        return;
    }
    let _ = threads::resume(pid, 0);
    Process::launched(pid).drive(&go, &events, &deliveries, &controls);
}

/// Fork the child, seize it, let it exec, and wait for the exec stop.
fn start_child(program: &OsString, args: &[OsString]) -> Result<i32, LaunchError> {
    let name = || program.to_string_lossy().into_owned();
    let mut child = spawn::fork_waiting(program, args).map_err(|error| LaunchError::Spawn {
        program: name(),
        error,
    })?;
    let pid = Pid::from_raw(child.pid);
    if let Err(error) = ptrace::seize(pid, threads::options()) {
        let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
        let _ = threads::wait(child.pid);
        return Err(LaunchError::Attach {
            pid: child.pid as u32,
            error,
        });
    }
    child.release();
    loop {
        let stop = threads::wait(child.pid).map_err(|error| LaunchError::Wait {
            program: name(),
            error,
        })?;
        let _ = match stop {
            Stop::Event { event, .. } if event == libc::PTRACE_EVENT_EXEC => return Ok(child.pid),
            Stop::Exited { code, .. } => {
                return Err(match child.exec_error() {
                    Some(error) => LaunchError::Spawn {
                        program: name(),
                        error,
                    },
                    None => LaunchError::ExitedEarly {
                        program: name(),
                        status: code,
                    },
                });
            }
            Stop::Event { tid, event, sig }
                if event == libc::PTRACE_EVENT_STOP && threads::is_group_stop(sig) =>
            {
                threads::listen(tid)
            }
            Stop::Event { tid, .. } => threads::resume(tid, 0),
            Stop::Signal { tid, sig } => threads::resume(tid, sig),
        };
    }
}
