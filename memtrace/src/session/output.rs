//! Where a tracing session writes: each line as text for a terminal or as
//! one JSON object ([`TraceLine`]), to any [`io::Write`].
//!
//! A writer thread does the writing, behind a queue bounded in bytes: a
//! slow or stalled reader (`memtrace … | less`, left unread) must neither
//! grow memtrace without bound nor stall event intake, and above all never
//! keep the target held at its exit stop. Event lines that do not fit are
//! dropped and counted ([`Output::dropped`]); reports and the summary wait
//! for room (they come once the target has been let go).

use std::{
    collections::VecDeque,
    io::{self, Write},
    sync::{Arc, Condvar, Mutex, MutexGuard},
    thread,
    time::Duration,
};

use serde::Serialize;

use super::stream::{self, EventLine, Summary};
use crate::{
    attribution::report::{AttributedReport, ReportLine},
    history::{GrowingLine, Watch, alert::AlertState},
    schema::SCHEMA_VERSION,
    stack::callsite::CallStack,
    trace::event::Event,
};

/// One JSON line of `memtrace --json`: `{"type":"event"|"report"|"growing"|"summary"|"alert",
/// "schema_version":…,…}` (schema: `docs/json-schema.md`).
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[expect(
    clippy::large_enum_variant,
    reason = "a borrowed view built per line and serialized at once, never stored"
)]
pub enum TraceLine<'a> {
    Event(EventLine<'a>),
    Report(ReportLine<'a>),
    Summary(SummaryLine<'a>),
    Peak(PeakLine),
    Alert(AlertLine<'a>),
    Growing(GrowingLine),
}

/// A new peak of the target's anonymous RSS, whose report was captured
/// (`--report-at peak|both`); the report itself comes at the end.
#[derive(Debug, Serialize)]
pub struct PeakLine {
    pub schema_version: u32,
    pub pid: u32,
    /// CLOCK_MONOTONIC ns, like the events' `time_ns`.
    pub time_ns: u64,
    /// Anonymous RSS at the capture (smaps).
    pub anon_rss_bytes: u64,
}

/// An `--alert` rule that tripped, as a JSON line.
#[derive(Debug, Serialize)]
pub struct AlertLine<'a> {
    pub schema_version: u32,
    pub pid: u32,
    #[serde(flatten)]
    pub alert: &'a AlertState,
}

/// The session summary as a JSON line.
#[derive(Debug, Serialize)]
pub struct SummaryLine<'a> {
    pub schema_version: u32,
    #[serde(flatten)]
    pub summary: &'a Summary,
}

impl TraceLine<'_> {
    /// The line as compact JSON.
    pub fn to_json(&self) -> String {
        // Plain structs of strings and numbers: serializing cannot fail;
        // should it ever, say so in-band rather than print nothing.
        serde_json::to_string(self).unwrap_or_else(|e| {
            format!(
                "{{\"type\":\"error\",\"schema_version\":{SCHEMA_VERSION},\"error\":{:?}}}",
                e.to_string()
            )
        })
    }
}

/// Warnings for the user (stderr in the CLI).
pub trait Notes {
    fn note(&mut self, message: &str);
}

impl<F: FnMut(&str)> Notes for F {
    fn note(&mut self, message: &str) {
        self(message)
    }
}

/// Text for a terminal, or JSON lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// Default bound of the output queue.
pub const DEFAULT_BUFFER_BYTES: usize = 64 << 20;

/// The sink a session writes to.
pub struct Output<W: Write + Send + 'static> {
    pub format: Format,
    /// Text: every frame of every stack.
    pub verbose: bool,
    /// Call sites listed in text reports (0: all); JSON lists all.
    pub top: usize,
    queue: Arc<Queue>,
    writer: Option<thread::JoinHandle<W>>,
    dropped: u64,
    /// Says when to stop waiting for a stalled reader
    /// ([`Output::give_up_when`]).
    give_up: Option<Box<dyn Fn() -> bool + Send>>,
}

/// How a line is queued when the queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Full {
    /// Dropped and counted (event lines: many).
    Drop,
    /// Waits for room (reports, the summary: once tracing is over).
    Wait,
    /// Queued anyway (alerts: few, and never lost, while tracing goes on).
    Queue,
}

/// How often a wait for the reader looks at the signals.
const SIGNAL_CHECK: Duration = Duration::from_millis(50);

/// Lines waiting for the writer thread.
struct Queue {
    state: Mutex<State>,
    /// Signalled when lines arrive, room frees up, or the writer stops.
    changed: Condvar,
    cap: usize,
}

#[derive(Default)]
struct State {
    lines: VecDeque<String>,
    bytes: usize,
    /// No more lines will come.
    finished: bool,
    /// The writer failed (a closed pipe: `ErrorKind::BrokenPipe`).
    error: Option<io::Error>,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep
        // going with it rather than lose the output.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<W: Write + Send + 'static> Output<W> {
    /// Write to `w` through a queue of at most `buffer_bytes` (at least one
    /// line always fits).
    pub fn new(w: W, format: Format, verbose: bool, top: usize, buffer_bytes: usize) -> Self {
        let queue = Arc::new(Queue {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            cap: buffer_bytes,
        });
        let q = queue.clone();
        let writer = thread::Builder::new()
            .name("memtrace-output".into())
            .spawn(move || write_lines(&q, w))
            .ok();
        Output {
            format,
            verbose,
            top,
            queue,
            writer,
            dropped: 0,
            give_up: None,
        }
    }

    /// Waits for a stalled reader end with [`io::ErrorKind::Interrupted`]
    /// once `give_up` says so (memtrace: a further signal,
    /// [`super::relay::StopFlags::give_up`]).
    pub fn give_up_when(&mut self, give_up: impl Fn() -> bool + Send + 'static) {
        self.give_up = Some(Box::new(give_up));
    }

    fn gave_up(&self) -> Option<io::Error> {
        self.give_up.as_ref().filter(|f| f()).map(|_| {
            io::Error::new(
                io::ErrorKind::Interrupted,
                "stopped by a signal while waiting for the reader of the output",
            )
        })
    }

    /// Whether an event line would be written now rather than dropped: lets
    /// the caller skip formatting (and symbolizing) what would be dropped.
    pub fn has_room(&mut self) -> bool {
        let st = self.queue.lock();
        let room = st.bytes < self.queue.cap;
        drop(st);
        if !room {
            self.dropped += 1;
        }
        room
    }

    /// Event lines dropped so far because the reader was too slow.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The reader is gone (a closed pipe) or writing failed.
    pub fn error(&self) -> Option<io::ErrorKind> {
        self.queue.lock().error.as_ref().map(io::Error::kind)
    }

    /// One event; `start_ns` is the session start (text shows time since).
    /// Dropped (and counted) when the queue is full.
    pub fn event(&mut self, ev: &Event, stack: &CallStack, start_ns: u64) -> io::Result<()> {
        let line = match self.format {
            Format::Json => TraceLine::Event(EventLine::new(ev, stack)).to_json(),
            Format::Text => stream::event_line(ev, stack, start_ns, self.verbose),
        };
        self.push(line, Full::Drop)
    }

    /// A new peak was captured; dropped (and counted) when the queue is
    /// full, like an event line.
    pub fn peak(&mut self, line: PeakLine, start_ns: u64) -> io::Result<()> {
        let text = match self.format {
            Format::Json => TraceLine::Peak(line).to_json(),
            Format::Text => format!(
                "{t:10.6} {pid:>7} {kind:<12} {range:<31} {size:>9} anonymous resident: \
                 new peak, report captured",
                t = line.time_ns.saturating_sub(start_ns) as f64 / 1e9,
                pid = line.pid,
                kind = "peak",
                range = "",
                size = crate::units::human(line.anon_rss_bytes),
            ),
        };
        self.push(text, Full::Drop)
    }

    /// Text only: a notice that `lost` events are lost so far.
    pub fn lost_so_far(&mut self, lost: u64) -> io::Result<()> {
        match self.format {
            Format::Json => Ok(()),
            Format::Text => self.push(
                format!("!! {lost} events lost so far (raise --ring-buffer-size)"),
                Full::Drop,
            ),
        }
    }

    /// A report; with `wait`, it waits for room instead of being dropped.
    pub fn report(&mut self, report: &AttributedReport, wait: bool) -> io::Result<()> {
        let text = match self.format {
            // Scripts get every call site: `--top` shapes the text only.
            Format::Json => TraceLine::Report(ReportLine::new(report, 0)).to_json(),
            Format::Text => report
                .text(self.verbose, self.top)
                .trim_end_matches('\n')
                .to_owned(),
        };
        self.push(text, if wait { Full::Wait } else { Full::Drop })
    }

    /// An `--alert` rule of `pid` that tripped; queued even when the queue
    /// is full (alerts are few and must not be lost, and tracing must not
    /// wait for the reader).
    pub fn alert(&mut self, pid: u32, alert: &AlertState) -> io::Result<()> {
        let text = match self.format {
            Format::Json => TraceLine::Alert(AlertLine {
                schema_version: SCHEMA_VERSION,
                pid,
                alert,
            })
            .to_json(),
            Format::Text => format!(
                "!! alert {}: {}",
                crate::text::printable(&alert.rule),
                alert.message
            ),
        };
        self.push(text, Full::Queue)
    }

    /// Text only: a block of the text report (the "Growing" section);
    /// waits for room.
    pub fn text_block(&mut self, text: &str) -> io::Result<()> {
        match self.format {
            Format::Json => Ok(()),
            Format::Text if text.trim().is_empty() => Ok(()),
            Format::Text => self.push(text.trim_end_matches('\n').to_owned(), Full::Wait),
        }
    }

    /// The "Growing" list after the final report: a text block (none when
    /// nothing grew), or a `growing` JSON line (always, so a script tells
    /// "nothing grew" from "not watched"); waits for room.
    pub fn growing(&mut self, pid: u32, watch: &Watch) -> io::Result<()> {
        match self.format {
            Format::Json => {
                let line = TraceLine::Growing(watch.growing_line(pid)).to_json();
                self.push(line, Full::Wait)
            }
            Format::Text => self.text_block(&watch.growing_text()),
        }
    }

    /// The summary; waits for room.
    pub fn summary(&mut self, summary: &Summary) -> io::Result<()> {
        let text = match self.format {
            Format::Json => TraceLine::Summary(SummaryLine {
                schema_version: SCHEMA_VERSION,
                summary,
            })
            .to_json(),
            Format::Text => summary.text().trim_end_matches('\n').to_owned(),
        };
        self.push(text, Full::Wait)
    }

    /// Queue one line (a newline is added). Fails once the writer failed,
    /// or when a wait for room is given up ([`Output::give_up_when`]).
    fn push(&mut self, line: String, full: Full) -> io::Result<()> {
        let mut st = self.queue.lock();
        loop {
            if let Some(e) = &st.error {
                return Err(io::Error::new(e.kind(), e.to_string()));
            }
            if st.bytes < self.queue.cap || st.lines.is_empty() || full == Full::Queue {
                break;
            }
            if full == Full::Drop {
                self.dropped += 1;
                return Ok(());
            }
            if let Some(e) = self.gave_up() {
                return Err(e);
            }
            st = self
                .queue
                .changed
                .wait_timeout(st, SIGNAL_CHECK)
                .map_or_else(|e| e.into_inner().0, |(st, _)| st);
        }
        st.bytes += line.len() + 1;
        st.lines.push_back(line);
        drop(st);
        self.queue.changed.notify_all();
        Ok(())
    }

    /// Write everything queued and hand back the writer (or the error that
    /// stopped it). Given up ([`Output::give_up_when`]), it returns at once,
    /// leaving the writer thread blocked on the reader.
    pub fn finish(mut self) -> io::Result<W> {
        self.close()
    }

    fn close(&mut self) -> io::Result<W> {
        self.queue.lock().finished = true;
        self.queue.changed.notify_all();
        let writer = self
            .writer
            .take()
            .ok_or_else(|| io::Error::other("the output thread did not start"))?;
        while !writer.is_finished() {
            if let Some(e) = self.gave_up() {
                return Err(e);
            }
            let st = self.queue.lock();
            drop(self.queue.changed.wait_timeout(st, SIGNAL_CHECK));
        }
        let w = writer
            .join()
            .map_err(|_| io::Error::other("the output thread panicked"))?;
        match self.queue.lock().error.take() {
            Some(e) => Err(e),
            None => Ok(w),
        }
    }
}

impl<W: Write + Send + 'static> Drop for Output<W> {
    fn drop(&mut self) {
        if self.writer.is_some() {
            let _ = self.close();
        }
    }
}

/// The writer thread: write lines as they come, flush when the queue runs
/// dry, stop at the first error (remembered for the caller).
fn write_lines<W: Write>(q: &Queue, mut w: W) -> W {
    let mut batch: Vec<String> = Vec::new();
    loop {
        let mut st = q.lock();
        while st.lines.is_empty() && !st.finished {
            st = q.changed.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        if st.lines.is_empty() {
            drop(st);
            if let Err(e) = w.flush() {
                q.lock().error = Some(e);
            }
            q.changed.notify_all();
            return w;
        }
        batch.extend(st.lines.drain(..));
        drop(st);
        let mut written = 0;
        let mut result = Ok(());
        for line in &batch {
            result = w
                .write_all(line.as_bytes())
                .and_then(|()| w.write_all(b"\n"));
            if result.is_err() {
                break;
            }
            written += line.len() + 1;
        }
        // Flush once the queue is empty: a terminal sees each line promptly
        // and a pipe gets large writes.
        if result.is_ok() && q.lock().lines.is_empty() {
            result = w.flush();
        }
        let total: usize = batch.iter().map(|l| l.len() + 1).sum();
        batch.clear();
        let mut st = q.lock();
        st.bytes = st.bytes.saturating_sub(total.max(written));
        if let Err(e) = result {
            st.error = Some(e);
            st.lines.clear();
            st.bytes = 0;
            drop(st);
            q.changed.notify_all();
            return w;
        }
        drop(st);
        q.changed.notify_all();
    }
}
