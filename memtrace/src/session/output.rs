//! Where a tracing session writes: each line as text for a terminal or as
//! one JSON object ([`TraceLine`]), to any [`io::Write`].

use std::io::{self, Write};

use serde::Serialize;

use super::stream::{self, EventLine, Summary};
use crate::{
    attribution::report::{AttributedReport, ReportLine},
    schema::SCHEMA_VERSION,
    stack::callsite::CallStack,
    trace::event::Event,
};

/// One JSON line of `memtrace --json`: `{"type":"event"|"report"|"summary",
/// "schema_version":…,…}` (schema: `docs/json-schema.md`).
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[expect(
    clippy::large_enum_variant,
    reason = "a borrowed view built per line, never stored"
)]
pub enum TraceLine<'a> {
    Event(EventLine<'a>),
    Report(ReportLine<'a>),
    Summary(SummaryLine<'a>),
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

/// Text for a terminal, or JSON lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// The sink a session writes to.
pub struct Output<W: Write> {
    pub format: Format,
    /// Text: every frame of every stack.
    pub verbose: bool,
    /// Call sites listed in reports (0: all).
    pub top: usize,
    w: W,
}

impl<W: Write> Output<W> {
    pub fn new(w: W, format: Format, verbose: bool, top: usize) -> Self {
        Output {
            format,
            verbose,
            top,
            w,
        }
    }

    /// One event; `start_ns` is the session start (text shows time since).
    pub fn event(&mut self, ev: &Event, stack: &CallStack, start_ns: u64) -> io::Result<()> {
        match self.format {
            Format::Json => self.json(&TraceLine::Event(EventLine::new(ev, stack))),
            Format::Text => writeln!(
                self.w,
                "{}",
                stream::event_line(ev, stack, start_ns, self.verbose)
            ),
        }
    }

    /// Text only: a notice that `lost` events are lost so far.
    pub fn lost_so_far(&mut self, lost: u64) -> io::Result<()> {
        match self.format {
            Format::Json => Ok(()),
            Format::Text => writeln!(
                self.w,
                "!! {lost} events lost so far (raise --ring-buffer-size)"
            ),
        }
    }

    pub fn report(&mut self, report: &AttributedReport) -> io::Result<()> {
        match self.format {
            Format::Json => self.json(&TraceLine::Report(ReportLine::new(report, self.top))),
            Format::Text => write!(self.w, "{}", report.text(self.verbose, self.top)),
        }
    }

    pub fn summary(&mut self, summary: &Summary) -> io::Result<()> {
        match self.format {
            Format::Json => self.json(&TraceLine::Summary(SummaryLine {
                schema_version: SCHEMA_VERSION,
                summary,
            })),
            Format::Text => write!(self.w, "{}", summary.text()),
        }
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }

    /// The writer, e.g. to read back what was written in tests.
    pub fn into_inner(self) -> W {
        self.w
    }

    fn json(&mut self, line: &TraceLine<'_>) -> io::Result<()> {
        writeln!(self.w, "{}", line.to_json())
    }
}
