//! The peak of a traced process's anonymous memory, and the report at it
//! (`--report-at peak|both`): a process that builds 300 MiB, frees it and
//! exits shows the 300 MiB by call site, not only what is left at exit.
//!
//! Noticing a peak must cost next to nothing: the driver samples
//! `/proc/PID/statm` (one small read of the kernel's RSS counters) at most
//! once per poll, whether or not events came (touching memory already
//! mapped makes no event). Capturing the report input (smaps and the join
//! with the ledger, as for the final report) costs a smaps read, so it is
//! taken only at a high worth it:
//!
//! - while memory grows, at 5% over the last capture (a process growing
//!   from 1 MiB to 1 GiB is captured about 140 times, not at every poll);
//! - once growth stops, at any high over the last capture by more than
//!   the kernel counters' own error (or 0.1%), so the report is the one of
//!   the top of a plateau, not of the last 5% step (a 1% rule left a
//!   plateau 0.7% above a capture taken near its top uncaptured);
//! - and at most 10% of the time: after a capture that took `t`, the next
//!   waits `9 t` (a capture of a process with 60k VMAs takes ~170 ms).
//!
//! Only the newest capture is kept; it is symbolized once, at the end
//! ([`super::Session::build_report_from`]). The target is not stopped for a
//! capture: the totals are smaps's at the moment it was read, exactly,
//! and the events applied just before it bring the ledger up to that
//! moment (a range mapped while smaps is being read may show as untraced).

use std::time::{Duration, Instant};

use super::ReportInput;
use crate::proc::pid;

/// Which reports the end of a trace prints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReportWhen {
    /// The final report only (at the target's exit, or when tracing ends).
    #[default]
    Exit,
    /// The report at the highest anonymous RSS seen (the final one when
    /// memory was highest then).
    Peak,
    /// The peak report, when memory was higher then than at the end, and
    /// the final report.
    Both,
}

impl ReportWhen {
    pub fn wants_peak(self) -> bool {
        self != ReportWhen::Exit
    }
}

/// Growth over the last capture that is captured again while growing
/// (1/20 = 5%).
const STEP_DIVISOR: u64 = 20;
/// Growth over the last capture that is captured once growth stops
/// (0.1%), unless the counters' error is larger.
const SETTLE_DIVISOR: u64 = 1000;
/// After a capture that took `t`, the next waits `t * SPACING`: captures
/// take at most a tenth of the time.
const SPACING: u32 = 9;

/// A capture at a peak.
pub struct Peak {
    pub input: ReportInput,
    /// Events lost before it was taken.
    pub lost_events: u64,
}

impl Peak {
    /// The anonymous RSS of the capture (smaps's figure).
    pub fn anon_rss_bytes(&self) -> u64 {
        self.input.attribution.totals.anon_rss_bytes
    }
}

/// Watches one process's anonymous RSS for new peaks.
pub struct PeakWatch {
    pub pid: u32,
    page: u64,
    /// How far the statm counters may lag the truth, in bytes: each CPU
    /// holds back up to a batch of pages (the kernel's
    /// `percpu_counter_batch`, max(32, 2 × CPUs)).
    noise: u64,
    /// The previous sample, in bytes.
    prev: u64,
    /// The sample that led to the kept capture.
    captured_sample: Option<u64>,
    next_sample: Instant,
    next_capture: Instant,
    peak: Option<Peak>,
}

impl PeakWatch {
    pub fn new(pid: u32) -> PeakWatch {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let page = u64::try_from(page).unwrap_or(4096);
        // SAFETY: sysconf has no preconditions.
        let cpus = u64::try_from(unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) })
            .unwrap_or(1)
            .max(1);
        let now = Instant::now();
        PeakWatch {
            pid,
            page,
            noise: cpus * (2 * cpus).max(32) * page,
            prev: 0,
            captured_sample: None,
            next_sample: now,
            next_capture: now,
            peak: None,
        }
    }

    /// Sample the anonymous RSS unless the last sample is younger than
    /// `every`; whether a capture is due now.
    pub fn sample(&mut self, every: Duration) -> bool {
        let now = Instant::now();
        if now < self.next_sample {
            return false;
        }
        self.next_sample = now + every;
        let Some(anon) = anon_rss(self.pid, self.page) else {
            return false;
        };
        let prev = std::mem::replace(&mut self.prev, anon);
        now >= self.next_capture && due(self.captured_sample, prev, anon, self.noise)
    }

    /// Keep `input`, captured in `took` with `lost_events` lost so far, as
    /// the peak; whether it is the new peak.
    pub fn keep(&mut self, input: ReportInput, lost_events: u64, took: Duration) -> bool {
        self.captured_sample = Some(self.prev);
        self.next_capture = Instant::now() + took * SPACING;
        // A capture below the kept one (the statm counters are per-CPU
        // approximations) does not replace it.
        let higher = self
            .peak
            .as_ref()
            .is_none_or(|p| input.attribution.totals.anon_rss_bytes >= p.anon_rss_bytes());
        if higher {
            self.peak = Some(Peak { input, lost_events });
        }
        higher
    }

    /// A capture failed (the process is exiting): try again later.
    pub fn failed(&mut self, took: Duration) {
        self.next_capture = Instant::now() + took * SPACING;
    }

    /// The kept capture.
    pub fn take(&mut self) -> Option<Peak> {
        self.peak.take()
    }
}

/// Whether `now` (bytes, after `prev`) calls for a capture, the last one
/// having been taken at `captured`; differences under `noise` are the
/// counters' error, not growth.
fn due(captured: Option<u64>, prev: u64, now: u64, noise: u64) -> bool {
    match captured {
        None => now > 0,
        Some(c) => {
            now >= c + c / STEP_DIVISOR
                || (now > c + (c / SETTLE_DIVISOR).max(noise) && now <= prev)
        }
    }
}

/// Anonymous resident bytes of `pid` from `/proc/PID/statm`: resident
/// minus shared (file and shmem) pages is the kernel's `MM_ANONPAGES`.
fn anon_rss(pid: u32, page: u64) -> Option<u64> {
    let read = |task: u32| -> Option<u64> {
        let text = std::fs::read_to_string(format!("/proc/{task}/statm")).ok()?;
        let mut fields = text.split_ascii_whitespace().skip(1);
        let resident: u64 = fields.next()?.parse().ok()?;
        let shared: u64 = fields.next()?.parse().ok()?;
        Some(resident.saturating_sub(shared) * page)
    };
    match read(pid) {
        // A main thread that exited shows no memory; a live thread does.
        Some(0) => read(pid::mm_reader(pid)),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn captures_at_steps_while_growing_and_at_the_top_of_a_plateau() {
        const NOISE: u64 = 256 << 10;
        let due = |c, prev, now| due(c, prev, now, NOISE);
        assert!(due(None, 0, 4096), "the first sample is a peak");
        assert!(!due(None, 0, 0));
        // Growing: only 5% steps.
        assert!(!due(Some(100 * MIB), 100 * MIB, 104 * MIB));
        assert!(due(Some(100 * MIB), 104 * MIB, 105 * MIB));
        // Growth stopped 2% higher: the plateau is captured.
        assert!(due(Some(100 * MIB), 102 * MIB, 102 * MIB));
        assert!(due(Some(100 * MIB), 103 * MIB, 102 * MIB));
        // A plateau 0.7% over a capture taken near its top is captured
        // (the 300 MiB peak test once missed it under a 1% rule).
        assert!(due(Some(313 * MIB), 315 * MIB, 315 * MIB));
        // ...but not for less than the counters' error, nor below the
        // capture.
        assert!(!due(Some(100 * MIB), 100 * MIB + NOISE, 100 * MIB + NOISE));
        assert!(!due(Some(100 * MIB), 90 * MIB, 80 * MIB));
        // Large processes: 0.1% rather than the counters' error.
        assert!(!due(Some(10 << 30), 10 << 30, (10 << 30) + 8 * MIB));
        assert!(due(
            Some(10 << 30),
            (10 << 30) + 12 * MIB,
            (10 << 30) + 12 * MIB
        ));
    }

    #[test]
    fn samples_this_process() {
        let mut w = PeakWatch::new(std::process::id());
        assert!(w.sample(Duration::from_secs(60)), "first sample is due");
        assert!(w.prev > 0, "a running process has anonymous memory");
        assert!(!w.sample(Duration::from_secs(60)), "rate limited");
        assert_eq!(anon_rss(u32::MAX, 4096), None, "no such process");
    }
}
