//! Signals sent to memtrace, passed on to a launched target the way strace
//! and timeout do, so `kill memtrace` ends the traced command and memtrace
//! still writes its report at the command's exit.
//!
//! - SIGTERM goes on at once.
//! - SIGINT and SIGHUP usually reach the command already (a terminal sends
//!   them to the whole foreground process group): after [`GRACE`], they go
//!   on only if the command has not received one since. A second one
//!   could force a program that is shutting down cleanly to quit.
//! - Each is followed by SIGCONT, so a stopped command can act on it.
//! - A second signal, or any signal in `--pid` mode, stops tracing at once.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use super::output::Notes;
use crate::trace::launch::{Launched, Releaser};

/// Requests to stop, set from signal handlers.
#[derive(Clone, Debug)]
pub struct StopFlags {
    /// Ctrl-C (SIGINT) count.
    pub interrupts: Arc<AtomicU32>,
    /// SIGTERM received.
    pub terminated: Arc<AtomicBool>,
    /// SIGHUP received.
    pub hung_up: Arc<AtomicBool>,
    /// SIGINT, SIGTERM and SIGHUP received, all together.
    pub received: Arc<AtomicU32>,
    /// Signals after which memtrace stops waiting for its reader
    /// ([`StopFlags::give_up`]); no limit until one is set
    /// ([`StopFlags::give_up_after`]).
    patience: Arc<AtomicU32>,
    /// Processes to let go as soon as this many signals arrived
    /// ([`StopFlags::release_on`]).
    releasers: Arc<Mutex<Vec<(u32, Releaser)>>>,
}

impl Default for StopFlags {
    fn default() -> Self {
        StopFlags {
            interrupts: Arc::default(),
            terminated: Arc::default(),
            hung_up: Arc::default(),
            received: Arc::default(),
            patience: Arc::new(AtomicU32::new(u32::MAX)),
            releasers: Arc::default(),
        }
    }
}

impl StopFlags {
    /// Note that signal `sig` (SIGINT, SIGTERM or SIGHUP) arrived.
    pub fn record(&self, sig: i32) {
        match sig {
            libc::SIGINT => drop(self.interrupts.fetch_add(1, Ordering::SeqCst)),
            libc::SIGTERM => self.terminated.store(true, Ordering::SeqCst),
            libc::SIGHUP => self.hung_up.store(true, Ordering::SeqCst),
            _ => return,
        }
        let received = self.received.fetch_add(1, Ordering::SeqCst) + 1;
        // Let the target go here, in the signal's thread: the tracing loop
        // may be busy (a report being symbolized) for a while.
        let releasers = self.releasers.lock().unwrap_or_else(|e| e.into_inner());
        for (after, r) in releasers.iter() {
            if received >= *after {
                r.release();
            }
        }
    }

    /// Let the process of `releaser` go once `after` signals arrived (the
    /// signal that ends tracing), from the thread that records them.
    pub fn release_on(&self, releaser: Releaser, after: u32) {
        self.releasers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((after, releaser));
    }

    /// How many stop signals arrived (also when the flags were set
    /// directly rather than through [`StopFlags::record`]).
    pub fn received_count(&self) -> u32 {
        let flagged = self.interrupts.load(Ordering::SeqCst)
            + u32::from(self.terminated.load(Ordering::SeqCst))
            + u32::from(self.hung_up.load(Ordering::SeqCst));
        self.received.load(Ordering::SeqCst).max(flagged)
    }

    /// From now on, a further signal means: stop waiting for the reader
    /// (tracing is over and the target let go; only output is left).
    pub fn wait_for_reader_until_signalled(&self) {
        self.give_up_after(self.received_count());
    }

    /// Give up waiting for the reader once more than `signals` arrived,
    /// whenever that is: the signal that ends tracing is the last one
    /// memtrace waits after, even before its loop has seen it.
    pub fn give_up_after(&self, signals: u32) {
        self.patience.fetch_min(signals, Ordering::SeqCst);
    }

    /// Whether output that waits for a slow reader must give up.
    pub fn give_up(&self) -> bool {
        self.received_count() > self.patience.load(Ordering::SeqCst)
    }
}

/// How long SIGINT and SIGHUP wait before being passed on.
pub const GRACE: Duration = Duration::from_secs(1);

/// What was received and passed on so far.
#[derive(Debug, Default)]
pub struct Relay {
    /// When memtrace first saw each signal (SIGINT, SIGTERM, SIGHUP).
    seen: Vec<(i32, Instant)>,
    /// Signals passed on (or found delivered already).
    done: Vec<i32>,
}

impl Relay {
    /// Pass on what needs passing; `true` when tracing must stop now.
    /// `child`: the launched command, while memtrace still drives it.
    pub fn stop_now(
        &mut self,
        stop: &StopFlags,
        child: Option<&Launched>,
        notes: &mut dyn Notes,
    ) -> bool {
        let received = stop.received_count();
        if received == 0 {
            return false;
        }
        let Some(child) = child else {
            return true;
        };
        if received >= 2 {
            return true;
        }
        let flags = [
            (libc::SIGTERM, stop.terminated.load(Ordering::SeqCst)),
            (libc::SIGINT, stop.interrupts.load(Ordering::SeqCst) > 0),
            (libc::SIGHUP, stop.hung_up.load(Ordering::SeqCst)),
        ];
        for (sig, got) in flags {
            if got {
                self.pass_on(sig, child, notes);
            }
        }
        false
    }

    fn pass_on(&mut self, sig: i32, child: &Launched, notes: &mut dyn Notes) {
        if self.done.contains(&sig) {
            return;
        }
        let seen = match self.seen.iter().find(|(s, _)| *s == sig) {
            Some(&(_, at)) => at,
            None => {
                let now = Instant::now();
                self.seen.push((sig, now));
                now
            }
        };
        if sig == libc::SIGTERM {
            self.done.push(sig);
            send(child.pid, sig);
        } else if seen.elapsed() >= GRACE {
            self.done.push(sig);
            // The terminal's copy may have been delivered just before
            // memtrace's own: look back one grace period too.
            if child.delivered_since(sig, seen.checked_sub(GRACE).unwrap_or(seen)) {
                return;
            }
            send(child.pid, sig);
        } else {
            return;
        }
        notes.note(&format!(
            "passed {} on to pid {}; the report follows when it exits (signal memtrace again to stop at once)",
            name(sig),
            child.pid
        ));
    }
}

fn send(pid: u32, sig: i32) {
    let Ok(pid) = i32::try_from(pid) else { return };
    // SAFETY: plain kill(2) calls on the launched child.
    unsafe {
        libc::kill(pid, sig);
        libc::kill(pid, libc::SIGCONT);
    }
}

fn name(sig: i32) -> &'static str {
    match sig {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        _ => "the signal",
    }
}
