//! Serve the snapshot report over HTTP.
//!
//! - `GET /debug/memory?top=N&all=1&bytes=1`: the text report (`text/plain`).
//! - `GET /debug/memory.json?top=N&all=1`: the JSON report (see [`crate::snapshot::report::JsonReport`]).
//! - with tracing (`memtrace serve --trace`): `GET /debug/memory/attributed?top=N`
//!   and `/debug/memory/attributed.json`: resident memory by call site;
//!   `GET /debug/memory/history.json`: the sampled history, what grew and
//!   the alerts ([`history`]);
//!   `GET /debug/pprof/memtrace`: the same as a gzipped pprof profile;
//!   `GET /debug/memory/ui`: a live page of it ([`ui`]).
//! - `GET /metrics`: Prometheus metrics ([`metrics`]).
//!
//! Each request captures a fresh snapshot on a blocking thread. A process
//! that has gone away gives `410 Gone` and the server keeps running.
//!
//! To serve the report about the current process from inside a tokio
//! service, merge [`router`]`(std::process::id())` into your own router.
//! To add routes that need the same state, start from [`routes`].
//!
//! Errors: a request that fails is a [`ServeError`], whose variant picks
//! the HTTP status ([`ServeError::status`]) and whose `Display` is the
//! one-line response body. Setting up (listen address, tracing) fails with
//! a [`StartError`].

pub mod history;
mod pprof;
pub mod ui;

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::{io, sync::mpsc, time::Duration, time::Instant};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::attribution::report::{AttributedReport, ReportLine, ReportOptions};
use crate::history::{HistoryDoc, Watch, WatchOptions, alert::AlertState};
use crate::proc::ProcError;
use crate::session::stream::Summary;
use crate::session::{Session, output::TraceLine};
use crate::snapshot::report::{self, Options};
use crate::snapshot::{self, Snapshot};
use crate::trace::{TraceError, TracerOptions};

pub mod metrics;

/// Largest `top` served; larger values (up to [`MAX_TOP_ACCEPTED`]) are capped to this.
pub const MAX_TOP: usize = 10_000;
/// `top` values above this are rejected with 400 as nonsense.
pub const MAX_TOP_ACCEPTED: u64 = 1_000_000;

/// Why a request failed. The variant picks the HTTP status
/// ([`ServeError::status`]); `Display` is the one-line response body, its
/// cause included (so no cause is also a `source()`, which anyhow's `{:#}`
/// would print again).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A query parameter has a value the endpoint cannot use (400).
    #[error("invalid {key}={value:?}: expected {expected}")]
    BadQuery {
        /// The parameter.
        key: &'static str,
        /// Its value, as given.
        value: String,
        /// What would have been accepted.
        expected: &'static str,
    },
    /// `top` on the snapshot endpoints is not a whole number from 0 to
    /// [`MAX_TOP_ACCEPTED`] (400).
    #[error(
        "invalid top={value:?}: expected a whole number from 0 to {max} (values above {cap} \
         are capped)",
        max = MAX_TOP_ACCEPTED,
        cap = MAX_TOP
    )]
    BadTop {
        /// Its value, as given.
        value: String,
    },
    /// A numeric query parameter is above its limit (400).
    #[error("{key}={value} is too large (at most {max})")]
    TooLarge {
        /// The parameter.
        key: &'static str,
        /// Its value.
        value: u64,
        /// The largest value accepted.
        max: u64,
    },
    /// A query parameter the endpoint does not take (400).
    #[error("unknown parameter {key:?}: expected {expected}")]
    UnknownParameter {
        /// The parameter.
        key: String,
        /// The parameters the endpoint takes.
        expected: &'static str,
    },
    /// No such endpoint (404).
    #[error("not found: try /debug/memory, /debug/memory.json or /debug/memory/attributed")]
    NotFound,
    /// An attributed report was asked for, but the server is not tracing (404).
    #[error("attribution needs tracing: start with `memtrace serve --pid N --trace` (as root)")]
    TracingOff,
    /// The process could not be read: 410 if it is gone, 403 if not
    /// allowed, 422 for a kernel thread, 501 without procfs, else 500.
    #[error(transparent)]
    Proc(#[from] ProcError),
    /// The tracing session is gone (500).
    #[error("the tracing session has ended")]
    TracingEnded,
    /// The tracing session did not answer in time (500).
    #[error("the tracing session did not answer")]
    TracingTimeout,
    /// The answer could not be encoded (500).
    #[error("encoding the answer: {0}")]
    Encode(io::Error),
    /// The blocking task building the answer failed (500).
    #[error("{what} failed: {error}")]
    Task {
        /// What the task was doing (`capture`, `report`).
        what: &'static str,
        /// Why it failed (it panicked or was cancelled).
        error: tokio::task::JoinError,
    },
}

impl ServeError {
    /// The HTTP status of the response for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ServeError::BadQuery { .. }
            | ServeError::BadTop { .. }
            | ServeError::TooLarge { .. }
            | ServeError::UnknownParameter { .. } => StatusCode::BAD_REQUEST,
            ServeError::NotFound | ServeError::TracingOff => StatusCode::NOT_FOUND,
            ServeError::Proc(e) => status_for(e),
            ServeError::TracingEnded
            | ServeError::TracingTimeout
            | ServeError::Encode(_)
            | ServeError::Task { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ServeError {
    fn into_response(self) -> Response {
        plain(self.status(), self.to_string())
    }
}

/// HTTP status for a failure to read the process.
pub fn status_for(e: &ProcError) -> StatusCode {
    match e {
        ProcError::NoSuchProcess { .. } => StatusCode::GONE,
        ProcError::PermissionDenied { .. } => StatusCode::FORBIDDEN,
        ProcError::KernelThread { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        ProcError::NoProcfs => StatusCode::NOT_IMPLEMENTED,
        // Transient: the next request will most likely read it whole.
        ProcError::Unsettled { .. } => StatusCode::SERVICE_UNAVAILABLE,
        ProcError::Io { .. } | ProcError::Parse { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Why the server could not be set up. As with [`ServeError`], a message
/// that names its cause has no `source()`.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listen address resolved to no socket address.
    #[error("the listen address resolved to nothing")]
    NoListenAddress,
    /// A non-loopback listen address without `allow_remote`.
    #[error(
        "refusing to listen on non-loopback address {addr}: the report reveals the process's \
         address-space layout; pass --allow-remote if you really want that"
    )]
    RemoteRefused {
        /// The first non-loopback address.
        addr: SocketAddr,
    },
    /// Tracing could not start.
    #[error(transparent)]
    Trace(#[from] TraceError),
    /// The thread that owns the tracing session could not be started.
    #[error("starting the tracing thread: {0}")]
    Thread(io::Error),
    /// The thread that owns the tracing session ended before it was ready.
    #[error("the tracing thread ended before it started")]
    ThreadEnded,
}

/// Shared state of the HTTP handlers. Extend it (and [`routes`]) for new endpoints.
#[derive(Debug, Clone)]
pub struct ServeState {
    /// The process to report on.
    pub pid: u32,
    /// The tracing session behind `/debug/memory/attributed`, when serving
    /// with `--trace`.
    pub tracing: Option<TracingHandle>,
    /// Call sites with a series of their own at `/metrics` (the rest are
    /// `site="other"`).
    pub metrics_sites: usize,
}

/// Where the tracing thread sends one attributed report, with the
/// session's counters at that moment.
type ReportReply = mpsc::Sender<Result<(AttributedReport, Summary), ProcError>>;

/// Asks the thread that owns a tracing [`Session`] for attributed reports,
/// and reads the history that thread samples.
#[derive(Debug, Clone)]
pub struct TracingHandle {
    requests: mpsc::Sender<ReportReply>,
    pid: u32,
    /// The history and alerts, sampled by the session thread every
    /// `sample_every`; handlers read it (briefly: the thread waits).
    watch: Arc<Mutex<Watch>>,
}

impl TracingHandle {
    /// Load the tracer, trace `pid` and keep its ledger current on a
    /// thread of its own until the handle (and every clone) is dropped,
    /// sampling the report into a history as `watch` says
    /// (`--sample-every`, `--history`, `--alert`…); an alert that trips is
    /// one line on stderr.
    pub fn start_with(pid: u32, watch: &WatchOptions) -> Result<TracingHandle, StartError> {
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), TraceError>>();
        let (req_tx, req_rx) = mpsc::channel::<ReportReply>();
        let shared = Arc::new(Mutex::new(Watch::new(watch)));
        let every = watch.config.sample_every;
        let history = shared.clone();
        std::thread::Builder::new()
            .name("memtrace-session".into())
            .spawn(move || {
                let mut session = match Session::new(&TracerOptions::default()) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                if let Err(e) = session.add_pid(pid) {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
                let _ = ready_tx.send(Ok(()));
                // Wait on requests, not on events: a request is answered
                // at once. Events queue in the tracer meanwhile (bounded,
                // see `--event-buffer`) and are applied between requests:
                // without pause while they keep coming; when they stop,
                // after waits that grow from 1 ms to IDLE_POLL, so a new
                // burst is taken up before much of it queues; and all of
                // them before a report.
                let mut idle = Duration::ZERO;
                let mut next_sample = Instant::now();
                loop {
                    if Instant::now() >= next_sample {
                        next_sample += every;
                        // Late (a long report): the next one a full
                        // interval from now, not a burst to catch up.
                        next_sample = next_sample.max(Instant::now() + every / 2);
                        sample(&mut session, pid, &history);
                    }
                    // Never sleep past the next sample.
                    idle = idle.min(next_sample.saturating_duration_since(Instant::now()));
                    let request = if idle.is_zero() {
                        req_rx.try_recv().map_err(|e| match e {
                            mpsc::TryRecvError::Empty => mpsc::RecvTimeoutError::Timeout,
                            mpsc::TryRecvError::Disconnected => {
                                mpsc::RecvTimeoutError::Disconnected
                            }
                        })
                    } else {
                        req_rx.recv_timeout(idle)
                    };
                    match request {
                        Ok(reply) => {
                            let report = attributed_report(&mut session, pid)
                                .map(|r| (r, session.summary.clone()));
                            let _ = reply.send(report);
                        }
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        // Every handle is gone: stop tracing.
                        Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                    idle = if session.poll(Duration::ZERO).is_empty() {
                        (idle * 2).clamp(Duration::from_millis(1), IDLE_POLL)
                    } else {
                        Duration::ZERO
                    };
                }
            })
            .map_err(StartError::Thread)?;
        ready_rx.recv().map_err(|_| StartError::ThreadEnded)??;
        Ok(TracingHandle {
            requests: req_tx,
            pid,
            watch: shared,
        })
    }

    /// The history, its growing call sites and alerts, as served at
    /// `/debug/memory/history.json`.
    pub fn history_doc(&self) -> HistoryDoc {
        self.watch().doc(self.pid)
    }

    /// Every `--alert` rule's state after the last sample (for `/metrics`).
    pub fn alerts(&self) -> Vec<AlertState> {
        self.watch().alerts.states().to_vec()
    }

    fn watch(&self) -> MutexGuard<'_, Watch> {
        // Plain data: a panic elsewhere leaves it usable.
        self.watch.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The attributed report now (blocking).
    pub fn report(&self) -> Result<AttributedReport, ServeError> {
        self.report_and_summary().map(|(report, _)| report)
    }

    /// The attributed report now and the session's counters (events by
    /// kind, lost events) at the same moment (blocking).
    pub fn report_and_summary(&self) -> Result<(AttributedReport, Summary), ServeError> {
        let (tx, rx) = mpsc::channel();
        self.requests
            .send(tx)
            .map_err(|_| ServeError::TracingEnded)?;
        Ok(rx
            .recv_timeout(Duration::from_secs(60))
            .map_err(|_| ServeError::TracingTimeout)??)
    }
}

/// Take one sample of `pid`'s report into the history; an alert that
/// trips is one line on stderr (the server's log). A process that cannot
/// be read is skipped: the history shows the gap.
fn sample(session: &mut Session, pid: u32, watch: &Mutex<Watch>) {
    let Ok(report) = session.sample_report(pid, SERVED, &mut Vec::new()) else {
        return;
    };
    let events = session.summary.events.values().sum();
    let tripped = watch
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .record(&report, events);
    for alert in tripped {
        // Not eprintln!: a closed stderr (a log pipe gone) must not end
        // the tracing thread; the alert stays in /metrics and history.json.
        let _ = writeln!(
            io::stderr(),
            "memtrace: alert {}: {}",
            crate::text::printable(&alert.rule),
            alert.message
        );
    }
}

/// Longest the tracing thread waits for a request before it applies the
/// events queued meanwhile, once events have stopped coming.
const IDLE_POLL: Duration = Duration::from_millis(50);

/// The attributed report of `pid` now ([`Session::report_now`]); the
/// events drained meanwhile are not shown anywhere.
fn attributed_report(session: &mut Session, pid: u32) -> Result<AttributedReport, ProcError> {
    session.report_now(pid, SERVED, &mut Vec::new())
}

/// What the served reports hold: no ranges.
const SERVED: ReportOptions = ReportOptions { ranges: false };

/// The routes with their state still to be supplied, so callers can add
/// routes of their own before calling `.with_state(ServeState { .. })`.
pub fn routes() -> Router<ServeState> {
    Router::new()
        .route("/debug/memory", get(memory_text))
        .route("/debug/memory.json", get(memory_json))
        .route("/debug/memory/attributed", get(attributed_text))
        .route("/debug/memory/attributed.json", get(attributed_json))
        .route("/debug/pprof/memtrace", get(pprof::memtrace_profile))
        .route("/debug/memory/ui", get(ui::ui_page))
        .route("/debug/memory/flamegraph.svg", get(ui::flamegraph_svg))
        .route("/metrics", get(metrics::metrics))
        .route("/debug/memory/history.json", get(history::history_json))
        .fallback(not_found)
}

/// The ready-to-serve router for process `pid`.
pub fn router(pid: u32) -> Router {
    routes().with_state(ServeState {
        pid,
        tracing: None,
        metrics_sites: crate::export::metrics::DEFAULT_TOP_SITES,
    })
}

/// Serve [`router`]`(pid)` on `listener` with the default [`Limits`] until
/// the future is dropped.
pub async fn serve(listener: tokio::net::TcpListener, pid: u32) -> std::io::Result<()> {
    serve_with(
        listener,
        router(pid),
        Limits::default(),
        std::future::pending(),
    )
    .await
}

/// What one client may hold of the server: a few hundred idle or
/// half-open connections (a slowloris) must not starve it.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// A request's headers must arrive within this (idle and half-open
    /// connections are closed after it).
    pub header_timeout: Duration,
    /// No connection lives longer than this, keep-alive or not.
    pub max_connection_time: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 256,
            header_timeout: Duration::from_secs(10),
            max_connection_time: Duration::from_secs(120),
        }
    }
}

/// Serve `app` on `listener` within `limits` until `shutdown` completes.
/// Accept errors (e.g. out of file descriptors) pause accepting briefly
/// instead of ending the server.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    use hyper::server::conn::http1;
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                // The semaphore is never closed.
                Err(_) => return Ok(()),
            },
            () = &mut shutdown => return Ok(()),
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => return Ok(()),
        };
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(limits.max_connection_time, conn).await;
            drop(permit);
        });
    }
}

/// Refuse to listen on anything but loopback unless `allow_remote`: the
/// report reveals the address-space layout (which defeats ASLR).
pub fn check_listen_addrs(addrs: &[SocketAddr], allow_remote: bool) -> Result<(), StartError> {
    if addrs.is_empty() {
        return Err(StartError::NoListenAddress);
    }
    if allow_remote {
        return Ok(());
    }
    match addrs.iter().find(|a| !a.ip().is_loopback()) {
        Some(&addr) => Err(StartError::RemoteRefused { addr }),
        None => Ok(()),
    }
}

/// Parse the query parameters (`top`, `all`, `bytes`) into report options.
/// The error is a [`ServeError::BadQuery`] (a 400 response).
pub fn parse_query(params: &[(String, String)]) -> Result<Options, ServeError> {
    let mut opts = Options::default();
    for (key, value) in params {
        match key.as_str() {
            "top" => {
                let n: u64 = value
                    .parse()
                    .ok()
                    .filter(|n| *n <= MAX_TOP_ACCEPTED)
                    .ok_or_else(|| ServeError::BadTop {
                        value: value.clone(),
                    })?;
                opts.top = usize::try_from(n).unwrap_or(MAX_TOP).min(MAX_TOP);
            }
            "all" => opts.all = parse_bool("all", value)?,
            "bytes" => opts.exact_bytes = parse_bool("bytes", value)?,
            // Unknown parameters are ignored, like most HTTP APIs do.
            _ => {}
        }
    }
    Ok(opts)
}

fn parse_bool(key: &'static str, value: &str) -> Result<bool, ServeError> {
    match value {
        "" | "1" | "true" | "yes" => Ok(true),
        "0" | "false" | "no" => Ok(false),
        _ => Err(ServeError::BadQuery {
            key,
            value: value.to_owned(),
            expected: "1 or 0",
        }),
    }
}

async fn capture_for(
    state: &ServeState,
    params: &[(String, String)],
) -> Result<(Snapshot, Options), ServeError> {
    let opts = parse_query(params)?;
    let pid = state.pid;
    let snapshot = tokio::task::spawn_blocking(move || snapshot::capture(pid))
        .await
        .map_err(|error| ServeError::Task {
            what: "capture",
            error,
        })??;
    Ok((snapshot, opts))
}

async fn memory_text(
    State(state): State<ServeState>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, ServeError> {
    let (snapshot, opts) = capture_for(&state, &params).await?;
    Ok(plain(StatusCode::OK, report::render_text(&snapshot, &opts)))
}

async fn memory_json(
    State(state): State<ServeState>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, ServeError> {
    let (snapshot, opts) = capture_for(&state, &params).await?;
    Ok(json(report::render_json(&snapshot, &opts)))
}

/// `?top=N` for the attributed report (default 20; 0 = all).
fn attributed_top(params: &[(String, String)]) -> Result<usize, ServeError> {
    let mut top = 20;
    for (k, v) in params {
        match k.as_str() {
            "top" => {
                let n: u64 = v.parse().map_err(|_| ServeError::BadQuery {
                    key: "top",
                    value: v.clone(),
                    expected: "a whole number",
                })?;
                if n > MAX_TOP_ACCEPTED {
                    return Err(ServeError::TooLarge {
                        key: "top",
                        value: n,
                        max: MAX_TOP_ACCEPTED,
                    });
                }
                top = (n as usize).min(MAX_TOP);
            }
            "verbose" => {}
            other => {
                return Err(ServeError::UnknownParameter {
                    key: other.to_owned(),
                    expected: "top or verbose",
                });
            }
        }
    }
    Ok(top)
}

/// Refuse any query parameter, for the endpoints that take none.
fn no_parameters(params: &[(String, String)]) -> Result<(), ServeError> {
    match params.first() {
        Some((key, _)) => Err(ServeError::UnknownParameter {
            key: key.clone(),
            expected: "no parameters",
        }),
        None => Ok(()),
    }
}

async fn attributed_for(
    state: &ServeState,
    params: &[(String, String)],
) -> Result<(AttributedReport, usize, bool), ServeError> {
    let top = attributed_top(params)?;
    let verbose = params.iter().any(|(k, v)| k == "verbose" && v != "0");
    let tracing = state.tracing.clone().ok_or(ServeError::TracingOff)?;
    let report = tokio::task::spawn_blocking(move || tracing.report())
        .await
        .map_err(|error| ServeError::Task {
            what: "report",
            error,
        })??;
    Ok((report, top, verbose))
}

async fn attributed_text(
    State(state): State<ServeState>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, ServeError> {
    let (report, top, verbose) = attributed_for(&state, &params).await?;
    Ok(plain(StatusCode::OK, report.text(verbose, top)))
}

async fn attributed_json(
    State(state): State<ServeState>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, ServeError> {
    let (report, top, _) = attributed_for(&state, &params).await?;
    Ok(json(
        TraceLine::Report(ReportLine::new(&report, top)).to_json(),
    ))
}

async fn not_found() -> ServeError {
    ServeError::NotFound
}

fn plain(status: StatusCode, mut body: String) -> Response {
    if !body.ends_with('\n') {
        body.push('\n');
    }
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

fn json(body: String) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn bad_queries_are_400_with_a_one_line_reason() {
        let cases: [(Result<(), ServeError>, &str); 6] = [
            (
                parse_query(&params(&[("top", "abc")])).map(drop),
                "invalid top=\"abc\": expected a whole number from 0 to 1000000 (values above \
                 10000 are capped)",
            ),
            (
                parse_query(&params(&[("all", "maybe")])).map(drop),
                "invalid all=\"maybe\": expected 1 or 0",
            ),
            (
                attributed_top(&params(&[("top", "-1")])).map(drop),
                "invalid top=\"-1\": expected a whole number",
            ),
            (
                attributed_top(&params(&[("top", "99999999999")])).map(drop),
                "top=99999999999 is too large (at most 1000000)",
            ),
            (
                attributed_top(&params(&[("color", "blue")])).map(drop),
                "unknown parameter \"color\": expected top or verbose",
            ),
            (
                parse_query(&params(&[("bytes", "2")])).map(drop),
                "invalid bytes=\"2\": expected 1 or 0",
            ),
        ];
        for (result, message) in cases {
            let e = result.expect_err(message);
            assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{e}");
            assert_eq!(e.to_string(), message);
        }
    }

    #[test]
    fn status_comes_from_the_variant() {
        let proc = |e: ProcError| ServeError::from(e).status();
        assert_eq!(proc(ProcError::NoSuchProcess { pid: 1 }), StatusCode::GONE);
        assert_eq!(
            proc(ProcError::PermissionDenied {
                pid: 1,
                path: "/proc/1/smaps".into()
            }),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            proc(ProcError::KernelThread { pid: 2 }),
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(
            proc(ProcError::Unsettled { pid: 2 }),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            proc(ProcError::Io {
                path: "/proc/1/smaps".into(),
                error: io::Error::other("no process exited"),
            }),
            StatusCode::INTERNAL_SERVER_ERROR,
            "the message text does not matter"
        );
        assert_eq!(ServeError::NotFound.status(), StatusCode::NOT_FOUND);
        assert_eq!(ServeError::TracingOff.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            ServeError::TracingEnded.status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(
            ServeError::TracingTimeout.status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[test]
    fn listen_policy_errors_are_typed() {
        let any: SocketAddr = "0.0.0.0:6060".parse().expect("addr");
        assert!(matches!(
            check_listen_addrs(&[any], false),
            Err(StartError::RemoteRefused { addr }) if addr == any
        ));
        assert!(matches!(
            check_listen_addrs(&[], true),
            Err(StartError::NoListenAddress)
        ));
    }
}
