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
//! Each request captures a fresh snapshot on a blocking thread. The
//! process is pinned by its start time when the server starts: once it has
//! gone away every request gets `410 Gone` (also when its pid now names
//! another process) and the server keeps running.
//!
//! To serve the report about the current process from inside a tokio
//! service, merge [`router`]`(Identity::of(std::process::id())?)` into your
//! own router. To add routes that need the same state, start from
//! [`routes`] and finish with [`app`].
//!
//! Errors: a request that fails is a [`ServeError`], whose variant picks
//! the HTTP status ([`ServeError::status`]) and whose `Display` is the
//! one-line response body. Setting up (listen address, tracing) fails with
//! a [`StartError`].

pub mod history;
mod pprof;
pub mod ui;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
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
use crate::proc::pid::{Identity, TargetError};
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
    /// The process has exited and its pid now names another one, which
    /// is not served (410).
    #[error("process {pid} has exited and its pid now names another process, which is not served")]
    PidReused {
        /// The pid.
        pid: u32,
    },
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
            ServeError::PidReused { .. } => StatusCode::GONE,
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
    /// The process to report on, pinned: requests get 410 once it has
    /// gone, even if its pid is reused.
    pub process: Identity,
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
    /// Load the tracer, trace `process` and keep its ledger current on a
    /// thread of its own until the handle (and every clone) is dropped,
    /// sampling the report into a history as `watch` says
    /// (`--sample-every`, `--history`, `--alert`…) while the process lives;
    /// an alert that trips is one line on stderr.
    pub fn start_with(
        process: Identity,
        watch: &WatchOptions,
    ) -> Result<TracingHandle, StartError> {
        let pid = process.pid;
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
                        sample(&mut session, process, &history);
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

/// Take one sample of `process`'s report into the history; an alert that
/// trips is one line on stderr (the server's log). A process that cannot
/// be read is skipped: the history shows the gap.
fn sample(session: &mut Session, process: Identity, watch: &Mutex<Watch>) {
    let Ok(report) = session.sample_report(process.pid, SERVED, &mut Vec::new()) else {
        return;
    };
    // Checked after the read: a pid reused meanwhile was read instead.
    if process.check().is_err() {
        return;
    }
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
/// routes of their own before calling [`app`]`(routes, ServeState { .. })`.
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

/// `routes` ready to serve: `state` supplied, and every request checked
/// against the process pinned in it ([`ServeState::process`]) — the one
/// place this is done, so no handler can serve a process that took over
/// the pid.
pub fn app(routes: Router<ServeState>, state: ServeState) -> Router {
    routes
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), pinned))
        .with_state(state)
}

/// Answer 410 when the pinned process has gone, checked before the
/// handler runs and again after: the pid may have been reused meanwhile,
/// and what the handler read would then be about another process.
async fn pinned(
    State(state): State<ServeState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Err(e) = still_there(&state.process) {
        return e.into_response();
    }
    let response = next.run(request).await;
    match still_there(&state.process) {
        Ok(()) => response,
        Err(e) => e.into_response(),
    }
}

/// `Ok` while `process` lives (or is a zombie not yet reaped).
fn still_there(process: &Identity) -> Result<(), ServeError> {
    process.check().map_err(|e| match e {
        TargetError::Reused { pid } => ServeError::PidReused { pid },
        _ => ServeError::Proc(ProcError::NoSuchProcess { pid: process.pid }),
    })
}

/// The ready-to-serve router for `process`.
pub fn router(process: Identity) -> Router {
    app(
        routes(),
        ServeState {
            process,
            tracing: None,
            metrics_sites: crate::export::metrics::DEFAULT_TOP_SITES,
        },
    )
}

/// Serve [`router`]`(process)` on `listener` with the default [`Limits`]
/// until the future is dropped.
pub async fn serve(listener: tokio::net::TcpListener, process: Identity) -> std::io::Result<()> {
    serve_with(
        listener,
        router(process),
        Limits::default(),
        std::future::pending(),
    )
    .await
}

/// What one client may hold of the server: a few hundred idle or
/// half-open connections (a slowloris) must not starve it.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once (fewer when the open-file limit leaves
    /// less room, see [`RESERVED_FDS`]). At the limit, the oldest idle
    /// connection is closed to make room for a new one.
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

/// File descriptors kept out of reach of connections, beside those open
/// when serving starts: what a report opens (smaps, pagemap, executables
/// and libraries to symbolize) must not fail because clients took them.
pub const RESERVED_FDS: usize = 64;

/// Connections served at once even under an open-file limit that leaves
/// less: beyond it, accepting fails and makes room in the same way.
const MIN_CONNECTIONS: usize = 8;

/// How long accepting pauses after an error it cannot make room for.
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);

/// Longest wait for a connection closed to make room to let go of its
/// descriptor (it does at its task's next poll, at once when idle).
const SHED_WAIT: Duration = Duration::from_millis(500);

/// Serve `app` on `listener` within `limits` until `shutdown` completes.
///
/// No client can hold the server: at the connection limit, or when
/// accepting fails for want of file descriptors, the oldest idle
/// connection (waiting for a request's headers, or between requests) is
/// closed to make room. Other accept errors pause accepting briefly
/// instead of ending the server.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let cap = connection_cap(limits.max_connections);
    let connections = Connections::default();
    tokio::pin!(shutdown);
    loop {
        if connections.len() >= cap && !connections.shed_oldest_idle().await {
            // Every connection is in the middle of a request: wait for one.
            tokio::select! {
                () = tokio::time::sleep(ACCEPT_PAUSE) => continue,
                () = &mut shutdown => return Ok(()),
            }
        }
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    if !(out_of_descriptors(&e) && connections.shed_oldest_idle().await) {
                        tokio::time::sleep(ACCEPT_PAUSE).await;
                    }
                    continue;
                }
            },
            () = &mut shutdown => return Ok(()),
        };
        connections.serve(stream, app.clone(), limits);
    }
}

/// `max`, or fewer when the open-file limit leaves less beside the
/// descriptors open now and [`RESERVED_FDS`].
fn connection_cap(max: usize) -> usize {
    let mut rlim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscall with a valid struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rlim) } != 0 {
        return max.max(1);
    }
    let limit = usize::try_from(rlim.rlim_cur).unwrap_or(usize::MAX);
    let open = std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count);
    limit
        .saturating_sub(open + RESERVED_FDS)
        .max(MIN_CONNECTIONS)
        .min(max)
        .max(1)
}

fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// The connections being served, by id in the order they were accepted,
/// so that the oldest idle one can make room.
#[derive(Clone, Default)]
struct Connections(Arc<Mutex<Registry>>);

#[derive(Default)]
struct Registry {
    next_id: u64,
    live: BTreeMap<u64, Live>,
}

struct Live {
    /// Requests in progress (0 or 1 with HTTP/1): see [`Busy`].
    busy: Arc<AtomicUsize>,
    /// The task serving it; `None` only while it is being spawned.
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Connections {
    fn lock(&self) -> MutexGuard<'_, Registry> {
        // Plain data: a panic elsewhere leaves it usable.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn len(&self) -> usize {
        self.lock().live.len()
    }

    /// Serve `stream` on a task of its own, registered until it ends.
    fn serve(&self, stream: tokio::net::TcpStream, app: Router, limits: Limits) {
        let busy = Arc::new(AtomicUsize::new(0));
        // Registered before the task exists, so that a task which ends at
        // once finds its entry to remove; not under the lock, which a
        // task dropped by `spawn` (runtime shutting down) takes.
        let id = {
            let mut registry = self.lock();
            let id = registry.next_id;
            registry.next_id += 1;
            let busy = busy.clone();
            registry.live.insert(id, Live { busy, task: None });
            id
        };
        let registered = Registered {
            connections: self.clone(),
            id,
        };
        let task = tokio::spawn(connection(stream, app, limits, busy, registered));
        if let Some(live) = self.lock().live.get_mut(&id) {
            live.task = Some(task);
        }
    }

    /// Close the oldest idle connection and wait until its descriptor is
    /// free; false when every connection is in the middle of a request.
    async fn shed_oldest_idle(&self) -> bool {
        let task = {
            let mut registry = self.lock();
            let oldest = registry
                .live
                .iter()
                .find(|(_, c)| c.busy.load(Ordering::Relaxed) == 0)
                .map(|(id, _)| *id);
            match oldest.and_then(|id| registry.live.remove(&id)) {
                Some(c) => c.task,
                None => return false,
            }
        };
        // Without a task (not yet spawned, which the accept loop never
        // leaves behind) there is nothing to wait for.
        if let Some(task) = task {
            task.abort();
            let _ = tokio::time::timeout(SHED_WAIT, task).await;
        }
        true
    }
}

/// A connection's entry in [`Connections`], removed when its task ends
/// or is aborted.
struct Registered {
    connections: Connections,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.connections.lock().live.remove(&self.id);
    }
}

/// Serve one connection with hyper, counting it busy from each request's
/// headers to the end of its response.
async fn connection(
    stream: tokio::net::TcpStream,
    app: Router,
    limits: Limits,
    busy: Arc<AtomicUsize>,
    _registered: Registered,
) {
    use hyper::server::conn::http1;
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    let app = TowerToHyperService::new(app);
    let service = hyper::service::service_fn(move |request| {
        let busy = Busy::start(&busy);
        let response = hyper::service::Service::call(&app, request);
        async move {
            let response = response.await?;
            Ok::<_, std::convert::Infallible>(response.map(|body| Sending { body, _busy: busy }))
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    let _ = tokio::time::timeout(limits.max_connection_time, conn).await;
}

/// Counts its connection busy while it lives.
struct Busy(Arc<AtomicUsize>);

impl Busy {
    fn start(count: &Arc<AtomicUsize>) -> Busy {
        count.fetch_add(1, Ordering::Relaxed);
        Busy(count.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its connection busy until it has been sent
/// (hyper drops it then), so a client reading a response is not taken
/// for idle.
struct Sending {
    body: axum::body::Body,
    _busy: Busy,
}

impl hyper::body::Body for Sending {
    type Data = hyper::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
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
    let pid = state.process.pid;
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
