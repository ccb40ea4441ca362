//! The threads of one traced process and the ptrace loop that drives them:
//! signals passed on, group-stops honoured, new threads followed, and one
//! stop at the exit of the process's last thread, while its address space
//! is intact.

use std::{
    collections::{HashMap, HashSet},
    ffi::c_void,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering},
        mpsc::{Receiver, Sender},
    },
    time::{Duration, Instant},
};

use nix::{
    errno::Errno,
    sys::ptrace::{self, Options},
    unistd::Pid,
};

use super::{ChildEvent, LaunchError};
use crate::proc::pid::{self, Identity};

/// ptrace options of every tracee: stop at exit (address space intact),
/// report exec as an event (not a SIGTRAP), and trace new threads from
/// their first instruction.
pub(super) fn options() -> Options {
    Options::PTRACE_O_TRACEEXIT | Options::PTRACE_O_TRACEEXEC | Options::PTRACE_O_TRACECLONE
}

/// A state change of one tracee (a thread), as `waitpid` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stop {
    /// Gone, with the status to pass on (128+N for signal N).
    Exited { tid: i32, code: i32 },
    /// A ptrace event stop (`PTRACE_EVENT_*`) and its stop signal.
    Event { tid: i32, event: i32, sig: i32 },
    /// Signal `sig` is about to be delivered.
    Signal { tid: i32, sig: i32 },
}

/// The next state change of tracee `pid`, or of any (`-1`). Raw `waitpid`:
/// nix cannot represent real-time signals, which threaded programs use.
pub(super) fn wait(pid: i32) -> Result<Stop, Errno> {
    loop {
        let mut status = 0;
        // SAFETY: writes the status into a local.
        let tid = unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
        if tid < 0 {
            match Errno::last() {
                Errno::EINTR => continue,
                e => return Err(e),
            }
        }
        if let Some(stop) = decode(tid, status) {
            return Ok(stop);
        }
    }
}

fn decode(tid: i32, status: i32) -> Option<Stop> {
    if libc::WIFEXITED(status) {
        return Some(Stop::Exited {
            tid,
            code: libc::WEXITSTATUS(status),
        });
    }
    if libc::WIFSIGNALED(status) {
        return Some(Stop::Exited {
            tid,
            code: 128 + libc::WTERMSIG(status),
        });
    }
    if !libc::WIFSTOPPED(status) {
        return None;
    }
    let sig = libc::WSTOPSIG(status);
    Some(match status >> 16 {
        0 => Stop::Signal { tid, sig },
        event => Stop::Event { tid, event, sig },
    })
}

/// A ptrace request without memory arguments on tracee `tid`, which is in
/// a ptrace stop.
fn request(req: libc::c_uint, tid: i32, data: i32) -> Result<(), Errno> {
    // SAFETY: no memory is passed; `data` is a signal number or 0.
    let rc = unsafe {
        libc::ptrace(
            req,
            tid,
            std::ptr::null_mut::<c_void>(),
            data as usize as *mut c_void,
        )
    };
    Errno::result(rc).map(drop)
}

/// Let `tid` run, delivering `sig` (0: none).
pub(super) fn resume(tid: i32, sig: i32) -> Result<(), Errno> {
    request(libc::PTRACE_CONT, tid, sig)
}

/// Leave a group-stop as it should be for the rest of the system: the
/// tracee stays stopped (`kill -STOP` works), and we still hear of it.
pub(super) fn listen(tid: i32) -> Result<(), Errno> {
    request(libc::PTRACE_LISTEN, tid, 0)
}

pub(super) fn detach(tid: i32) -> Result<(), Errno> {
    detach_with(tid, 0)
}

/// Detach `tid`, delivering `sig` (0: none).
fn detach_with(tid: i32, sig: i32) -> Result<(), Errno> {
    request(libc::PTRACE_DETACH, tid, sig)
}

/// Whether a `PTRACE_EVENT_STOP` with this signal is a group-stop (else it
/// is the first stop of a new thread, or a notification after `SIGCONT`).
pub(super) fn is_group_stop(sig: i32) -> bool {
    matches!(
        sig,
        libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU
    )
}

/// What the caller steers of the ptrace loop while it runs, shared by
/// both sides.
#[derive(Debug)]
pub(super) struct Controls {
    /// Tracing ended: detach at the next stop, never hold.
    released: AtomicBool,
    /// Longest hold at exit, in ms.
    exit_hold_ms: AtomicU64,
    /// Who has the exit stop: [`EXIT_HELD`], [`EXIT_CLAIMED`] or
    /// [`EXIT_LET_GO`] (0 before any).
    exit: AtomicU8,
}

/// The process is held at its exit for the caller.
const EXIT_HELD: u8 = 1;
/// The caller took the exit stop in time and resumes it when done.
const EXIT_CLAIMED: u8 = 2;
/// The exit hold ran out, or tracing ended, before the caller took the
/// stop: let go.
const EXIT_LET_GO: u8 = 3;

impl Default for Controls {
    fn default() -> Self {
        Controls {
            released: AtomicBool::new(false),
            // Until the caller says: hold until it resumes.
            exit_hold_ms: AtomicU64::new(u64::MAX),
            exit: AtomicU8::new(0),
        }
    }
}

impl Controls {
    pub fn set_exit_hold(&self, hold: Duration) {
        let ms = u64::try_from(hold.as_millis()).unwrap_or(u64::MAX);
        self.exit_hold_ms.store(ms, Ordering::SeqCst);
    }

    fn exit_hold(&self) -> Duration {
        Duration::from_millis(self.exit_hold_ms.load(Ordering::SeqCst))
    }

    fn released(&self) -> bool {
        self.released.load(Ordering::SeqCst)
    }

    /// Never hold again; `true` when a held exit stop is to be let go now
    /// (one the caller claimed is left to it).
    pub fn release(&self) -> bool {
        self.released.store(true, Ordering::SeqCst);
        self.exit_from(EXIT_HELD, EXIT_LET_GO)
    }

    /// The process stopped at its exit and is held for the caller.
    fn hold_exit(&self) {
        self.exit.store(EXIT_HELD, Ordering::SeqCst);
    }

    /// The caller takes the held exit stop; `false` when it was let go.
    pub fn claim_exit(&self) -> bool {
        self.exit_from(EXIT_HELD, EXIT_CLAIMED)
    }

    fn exit_from(&self, from: u8, to: u8) -> bool {
        self.exit
            .compare_exchange(from, to, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }
}

/// When each signal was last delivered to the process (seen at its
/// signal-delivery-stop), so memtrace can tell whether a terminal's Ctrl-C
/// reached it before passing one on.
pub(super) type Deliveries = Arc<Mutex<HashMap<i32, Instant>>>;

/// The traced threads of one process.
pub(super) struct Process {
    tgid: i32,
    /// Traced threads not yet reaped.
    threads: HashSet<i32>,
    /// Those of them past their exit stop.
    exiting: HashSet<i32>,
    /// Tasks attached through `PTRACE_O_TRACECLONE` that are another
    /// process (a clone without `CLONE_THREAD`): let go at their first stop.
    foreign: HashSet<i32>,
    /// The leader is traced: it is reaped last, when the process is gone.
    /// (One that had exited already when seized cannot be traced.)
    leader_traced: bool,
    /// This program's exit was reported: it is reported once, however many
    /// threads stop at exit on the way.
    exit_reported: bool,
}

impl Process {
    fn new(tgid: i32) -> Process {
        Process {
            tgid,
            threads: HashSet::new(),
            exiting: HashSet::new(),
            foreign: HashSet::new(),
            leader_traced: false,
            exit_reported: false,
        }
    }

    /// A launched child, seized before exec (no threads yet).
    pub fn launched(pid: i32) -> Process {
        let mut p = Process::new(pid);
        p.threads.insert(pid);
        p.leader_traced = true;
        p
    }

    /// Seize every thread of `target` without stopping it. Threads that
    /// seized ones create are attached by `PTRACE_O_TRACECLONE`; those of
    /// threads not seized yet show up in `/proc` again, so list until no
    /// new one appears. Once seized, the pid cannot be reused, so that is
    /// when `target` must still be the process that was pinned.
    pub fn seize(target: &Identity) -> Result<Process, LaunchError> {
        let tgid = target.pid as i32;
        let mut p = Process::new(tgid);
        // SAFETY: no arguments.
        let me = unsafe { libc::gettid() };
        loop {
            let mut added = false;
            for tid in pid::task_ids(target.pid) {
                let tid = tid as i32;
                if p.threads.contains(&tid) {
                    continue;
                }
                match ptrace::seize(Pid::from_raw(tid), options()) {
                    Ok(()) => {}
                    // Exited meanwhile.
                    Err(Errno::ESRCH) => continue,
                    // Attached already as a new thread of a seized one.
                    Err(Errno::EPERM)
                        if pid::status_field(tid as u32, "TracerPid") == Some(me as u64) => {}
                    // A leader that exited before the other threads.
                    Err(Errno::EPERM)
                        if tid == tgid && !pid::is_live_task(target.pid, tid as u32) =>
                    {
                        continue;
                    }
                    Err(error) => {
                        return Err(LaunchError::Attach {
                            pid: tid as u32,
                            error,
                        });
                    }
                }
                p.leader_traced |= tid == tgid;
                p.threads.insert(tid);
                added = true;
            }
            if !added {
                break;
            }
        }
        if p.threads.is_empty() {
            return Err(LaunchError::Attach {
                pid: target.pid,
                error: Errno::ESRCH,
            });
        }
        // On error the tracer thread ends, which detaches every thread.
        target.check()?;
        Ok(p)
    }

    /// Drive the process until it is gone: pass signals on, honour
    /// group-stops, follow new threads, and at the exit of its last thread
    /// send [`ChildEvent::AtExit`] and wait on `go` before letting it go.
    /// Ends with [`ChildEvent::Exited`], or by returning when `waitpid`
    /// fails (the caller then sees the channel closed).
    ///
    /// Once `released` is set (memtrace stopped tracing), each thread is
    /// detached at its next stop instead of resumed, its signal delivered,
    /// and no exit is held any more.
    pub fn drive(
        &mut self,
        go: &Receiver<()>,
        events: &Sender<ChildEvent>,
        deliveries: &Deliveries,
        controls: &Controls,
    ) {
        loop {
            let Ok(stop) = wait(-1) else { return };
            if controls.released() {
                match stop {
                    Stop::Exited { tid, code } => {
                        if self.reaped(tid) {
                            let _ = events.send(ChildEvent::Exited(code));
                            return;
                        }
                    }
                    Stop::Signal { tid, sig } => drop(detach_with(tid, sig)),
                    Stop::Event { tid, event, sig }
                        if event == libc::PTRACE_EVENT_STOP && is_group_stop(sig) =>
                    {
                        // Stays stopped as `kill -STOP` asked; let go at
                        // its next stop.
                        let _ = listen(tid);
                    }
                    Stop::Event { tid, .. } => drop(detach(tid)),
                }
                continue;
            }
            match stop {
                Stop::Exited { tid, code } => {
                    if self.reaped(tid) {
                        let _ = events.send(ChildEvent::Exited(code));
                        return;
                    }
                }
                Stop::Signal { tid, sig } => {
                    if self.owns(tid) {
                        if let Ok(mut d) = deliveries.lock() {
                            d.insert(sig, Instant::now());
                        }
                        let _ = resume(tid, sig);
                    }
                }
                Stop::Event { tid, event, sig } => {
                    if !self.owns(tid) {
                        continue;
                    }
                    match event {
                        libc::PTRACE_EVENT_EXIT if self.hold_at_exit(tid) => {
                            let since = Instant::now();
                            controls.hold_exit();
                            if events.send(ChildEvent::AtExit { since }).is_err() {
                                // Nobody will take the report: let it go
                                // (returning detaches the other threads).
                                let _ = detach(tid);
                                return;
                            }
                            // Wait for the caller's report (or its end),
                            // never past the exit hold unless the caller
                            // claimed the stop in time and is reading it.
                            if go.recv_timeout(controls.exit_hold()).is_err()
                                && !controls.exit_from(EXIT_HELD, EXIT_LET_GO)
                            {
                                let _ = go.recv();
                            }
                        }
                        libc::PTRACE_EVENT_CLONE => {
                            if let Ok(new) = ptrace::getevent(Pid::from_raw(tid)) {
                                self.adopt(new as i32);
                            }
                        }
                        libc::PTRACE_EVENT_EXEC => self.exec(),
                        libc::PTRACE_EVENT_STOP if is_group_stop(sig) => {
                            let _ = listen(tid);
                            continue;
                        }
                        _ => {}
                    }
                    let _ = resume(tid, 0);
                }
            }
        }
    }

    /// Whether `tid` is one of our threads. A new thread may stop before
    /// its creator's clone event arrives; a foreign task is let go here.
    fn owns(&mut self, tid: i32) -> bool {
        if !self.threads.contains(&tid) && !self.foreign.contains(&tid) {
            self.adopt(tid);
        }
        if self.foreign.remove(&tid) {
            let _ = detach(tid);
            return false;
        }
        true
    }

    /// A new task attached through `PTRACE_O_TRACECLONE`.
    fn adopt(&mut self, tid: i32) {
        match pid::status_field(tid as u32, "Tgid") {
            Some(tgid) if tgid != self.tgid as u64 => self.foreign.insert(tid),
            _ => self.threads.insert(tid),
        };
    }

    /// Thread `tid` was reaped: whether the process is gone with it.
    fn reaped(&mut self, tid: i32) -> bool {
        let known = self.threads.remove(&tid);
        self.exiting.remove(&tid);
        self.foreign.remove(&tid);
        // A traced leader is reported only once every thread is gone.
        tid == self.tgid || (known && !self.leader_traced && self.threads.is_empty())
    }

    /// Thread `tid` is at its exit stop: whether to hold it there for the
    /// report. Only the process's last moment is held: the last thread to
    /// exit, or the thread that ends them all (`exit_group`, a fatal
    /// signal), once. Any other thread ends alone and goes at once.
    fn hold_at_exit(&mut self, tid: i32) -> bool {
        self.threads.insert(tid);
        self.exiting.insert(tid);
        if self.exit_reported {
            return false;
        }
        let killed = ptrace::getevent(Pid::from_raw(tid)).is_ok_and(|status| {
            let sig = status & 0x7f;
            sig != 0 && sig != 0x7f
        });
        let group_exit = killed || current_syscall(tid) == Some(libc::SYS_exit_group);
        let last = self.threads.iter().all(|t| self.exiting.contains(t));
        self.exit_reported = group_exit || last;
        self.exit_reported
    }

    /// An exec ended every other thread; the one left has the leader's id.
    fn exec(&mut self) {
        self.threads.clear();
        self.exiting.clear();
        self.threads.insert(self.tgid);
        self.leader_traced = true;
        self.exit_reported = false;
    }
}

/// The system call thread `tid` is in (`/proc/TID/syscall`), e.g. the
/// `exit_group` it is exiting through.
fn current_syscall(tid: i32) -> Option<i64> {
    std::fs::read_to_string(format!("/proc/{tid}/syscall"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_wait_statuses() {
        assert_eq!(decode(7, 3 << 8), Some(Stop::Exited { tid: 7, code: 3 }));
        assert_eq!(
            decode(7, libc::SIGTERM),
            Some(Stop::Exited {
                tid: 7,
                code: 128 + libc::SIGTERM
            })
        );
        // A real-time signal (nix cannot name these).
        let rt = libc::SIGRTMIN() + 2;
        assert_eq!(
            decode(7, (rt << 8) | 0x7f),
            Some(Stop::Signal { tid: 7, sig: rt })
        );
        assert_eq!(
            decode(
                7,
                (libc::PTRACE_EVENT_STOP << 16) | (libc::SIGSTOP << 8) | 0x7f
            ),
            Some(Stop::Event {
                tid: 7,
                event: libc::PTRACE_EVENT_STOP,
                sig: libc::SIGSTOP
            })
        );
        assert_eq!(decode(7, 0xffff), None, "continued");
    }

    #[test]
    fn holds_only_the_last_moment() {
        // Three threads; two end alone, the last one is held.
        let mut p = Process::launched(-2);
        p.threads.extend([-3, -4]);
        assert!(!p.hold_at_exit(-2), "the leader ends alone");
        assert!(!p.hold_at_exit(-3));
        assert!(p.hold_at_exit(-4), "the last thread");
        assert!(!p.reaped(-3));
        assert!(!p.reaped(-4));
        assert!(p.reaped(-2), "the leader is reaped last");
        // After exec, one thread again.
        let mut p = Process::launched(-2);
        p.threads.extend([-3]);
        assert!(!p.hold_at_exit(-3));
        p.exec();
        assert!(p.hold_at_exit(-2));
    }
}
