//! Serve the snapshot report over HTTP.
//!
//! - `GET /debug/memory?top=N&all=1&bytes=1`: the text report (`text/plain`).
//! - `GET /debug/memory.json?top=N&all=1`: the JSON report (see [`crate::snapshot::report::JsonReport`]).
//! - with tracing (`memtrace serve --trace`): `GET /debug/memory/attributed?top=N`
//!   and `/debug/memory/attributed.json`: resident memory by call site.
//!
//! Each request captures a fresh snapshot on a blocking thread. A process
//! that has gone away gives `410 Gone` and the server keeps running.
//!
//! To serve the report about the current process from inside a tokio
//! service, merge [`router`]`(std::process::id())` into your own router.
//! To add routes that need the same state, start from [`routes`].

use std::net::SocketAddr;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use std::{sync::mpsc, time::Duration};

use crate::attribution::report::{AttributedReport, ReportLine, ReportOptions};
use crate::proc::ProcError;
use crate::session::{Session, output::TraceLine};
use crate::snapshot::report::{self, Options};
use crate::snapshot::{self, Snapshot};
use crate::trace::TracerOptions;

/// Largest `top` served; larger values (up to [`MAX_TOP_ACCEPTED`]) are capped to this.
pub const MAX_TOP: usize = 10_000;
/// `top` values above this are rejected with 400 as nonsense.
pub const MAX_TOP_ACCEPTED: u64 = 1_000_000;

/// Shared state of the HTTP handlers. Extend it (and [`routes`]) for new endpoints.
#[derive(Debug, Clone)]
pub struct ServeState {
    /// The process to report on.
    pub pid: u32,
    /// The tracing session behind `/debug/memory/attributed`, when serving
    /// with `--trace`.
    pub tracing: Option<TracingHandle>,
}

/// Asks the thread that owns a tracing [`Session`] for attributed reports.
#[derive(Debug, Clone)]
pub struct TracingHandle {
    requests: mpsc::Sender<mpsc::Sender<Result<AttributedReport, String>>>,
}

impl TracingHandle {
    /// Load the tracer, trace `pid` and keep its ledger current on a
    /// thread of its own until the handle (and every clone) is dropped.
    pub fn start(pid: u32) -> anyhow::Result<TracingHandle> {
        let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<()>>();
        let (req_tx, req_rx) = mpsc::channel::<mpsc::Sender<Result<AttributedReport, String>>>();
        std::thread::Builder::new()
            .name("memtrace-session".into())
            .spawn(move || {
                let mut session = match Session::new(&TracerOptions::default()) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.into()));
                        return;
                    }
                };
                if let Err(e) = session.add_pid(pid) {
                    let _ = ready_tx.send(Err(e.into()));
                    return;
                }
                let _ = ready_tx.send(Ok(()));
                loop {
                    session.poll(Duration::from_millis(50));
                    loop {
                        match req_rx.try_recv() {
                            Ok(reply) => {
                                session.drain();
                                let opts = ReportOptions { ranges: false };
                                let report = session
                                    .attributed_report(pid, opts)
                                    .map_err(|e| format!("{e:#}"));
                                let _ = reply.send(report);
                            }
                            Err(mpsc::TryRecvError::Empty) => break,
                            // Every handle is gone: stop tracing.
                            Err(mpsc::TryRecvError::Disconnected) => return,
                        }
                    }
                }
            })?;
        ready_rx
            .recv()
            .map_err(|_| anyhow::anyhow!("the tracing thread ended before it started"))??;
        Ok(TracingHandle { requests: req_tx })
    }

    /// The attributed report now (blocking).
    pub fn report(&self) -> Result<AttributedReport, String> {
        let (tx, rx) = mpsc::channel();
        self.requests
            .send(tx)
            .map_err(|_| "the tracing session has ended".to_owned())?;
        rx.recv_timeout(Duration::from_secs(60))
            .map_err(|_| "the tracing session did not answer".to_owned())?
    }
}

/// The routes with their state still to be supplied, so callers can add
/// routes of their own before calling `.with_state(ServeState { .. })`.
pub fn routes() -> Router<ServeState> {
    Router::new()
        .route("/debug/memory", get(memory_text))
        .route("/debug/memory.json", get(memory_json))
        .route("/debug/memory/attributed", get(attributed_text))
        .route("/debug/memory/attributed.json", get(attributed_json))
        .fallback(not_found)
}

/// The ready-to-serve router for process `pid`.
pub fn router(pid: u32) -> Router {
    routes().with_state(ServeState { pid, tracing: None })
}

/// Serve [`router`]`(pid)` on `listener` until the future is dropped or
/// the listener fails.
pub async fn serve(listener: tokio::net::TcpListener, pid: u32) -> std::io::Result<()> {
    axum::serve(listener, router(pid)).await
}

/// Refuse to listen on anything but loopback unless `allow_remote`: the
/// report reveals the address-space layout (which defeats ASLR).
pub fn check_listen_addrs(addrs: &[SocketAddr], allow_remote: bool) -> Result<(), String> {
    if addrs.is_empty() {
        return Err("the listen address resolved to nothing".to_owned());
    }
    if allow_remote {
        return Ok(());
    }
    match addrs.iter().find(|a| !a.ip().is_loopback()) {
        Some(a) => Err(format!(
            "refusing to listen on non-loopback address {a}: the report reveals the process's \
             address-space layout; pass --allow-remote if you really want that"
        )),
        None => Ok(()),
    }
}

/// Parse the query parameters (`top`, `all`, `bytes`) into report options.
/// The error is a one-line reason for a 400 response.
pub fn parse_query(params: &[(String, String)]) -> Result<Options, String> {
    let mut opts = Options::default();
    for (key, value) in params {
        match key.as_str() {
            "top" => {
                let n: u64 = value
                    .parse()
                    .ok()
                    .filter(|n| *n <= MAX_TOP_ACCEPTED)
                    .ok_or_else(|| {
                        format!(
                            "invalid top={value:?}: expected a whole number from 0 to \
                             {MAX_TOP_ACCEPTED} (values above {MAX_TOP} are capped)"
                        )
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

fn parse_bool(key: &str, value: &str) -> Result<bool, String> {
    match value {
        "" | "1" | "true" | "yes" => Ok(true),
        "0" | "false" | "no" => Ok(false),
        _ => Err(format!("invalid {key}={value:?}: expected 1 or 0")),
    }
}

async fn capture_for(
    state: &ServeState,
    params: &[(String, String)],
) -> Result<(Snapshot, Options), Response> {
    let opts = parse_query(params).map_err(|reason| plain(StatusCode::BAD_REQUEST, reason))?;
    let pid = state.pid;
    let snapshot = tokio::task::spawn_blocking(move || snapshot::capture(pid))
        .await
        .map_err(|e| {
            plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("capture failed: {e}"),
            )
        })?
        .map_err(|e| plain(status_for(&e), e.to_string()))?;
    Ok((snapshot, opts))
}

async fn memory_text(
    State(state): State<ServeState>,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    match capture_for(&state, &params).await {
        Ok((snapshot, opts)) => plain(StatusCode::OK, report::render_text(&snapshot, &opts)),
        Err(resp) => resp,
    }
}

async fn memory_json(
    State(state): State<ServeState>,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    match capture_for(&state, &params).await {
        Ok((snapshot, opts)) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            report::render_json(&snapshot, &opts),
        )
            .into_response(),
        Err(resp) => resp,
    }
}

/// `?top=N` for the attributed report (default 20; 0 = all).
fn attributed_top(params: &[(String, String)]) -> Result<usize, String> {
    let mut top = 20;
    for (k, v) in params {
        match k.as_str() {
            "top" => {
                let n: u64 = v
                    .parse()
                    .map_err(|_| format!("invalid top={v:?}: expected a whole number"))?;
                if n > MAX_TOP_ACCEPTED {
                    return Err(format!("top={n} is too large (at most {MAX_TOP_ACCEPTED})"));
                }
                top = (n as usize).min(MAX_TOP);
            }
            "verbose" => {}
            other => {
                return Err(format!(
                    "unknown parameter {other:?}: expected top or verbose"
                ));
            }
        }
    }
    Ok(top)
}

async fn attributed_for(
    state: &ServeState,
    params: &[(String, String)],
) -> Result<(AttributedReport, usize, bool), Response> {
    let top = attributed_top(params).map_err(|reason| plain(StatusCode::BAD_REQUEST, reason))?;
    let verbose = params.iter().any(|(k, v)| k == "verbose" && v != "0");
    let Some(tracing) = state.tracing.clone() else {
        return Err(plain(
            StatusCode::NOT_FOUND,
            "attribution needs tracing: start with `memtrace serve --pid N --trace` (as root)"
                .to_owned(),
        ));
    };
    let report = tokio::task::spawn_blocking(move || tracing.report())
        .await
        .map_err(|e| {
            plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("report failed: {e}"),
            )
        })?
        .map_err(|e| {
            let status = if e.contains("no process") || e.contains("exited") {
                StatusCode::GONE
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            };
            plain(status, e)
        })?;
    Ok((report, top, verbose))
}

async fn attributed_text(
    State(state): State<ServeState>,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    match attributed_for(&state, &params).await {
        Ok((report, top, verbose)) => plain(StatusCode::OK, report.text(verbose, top)),
        Err(resp) => resp,
    }
}

async fn attributed_json(
    State(state): State<ServeState>,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    match attributed_for(&state, &params).await {
        Ok((report, top, _)) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            TraceLine::Report(ReportLine::new(&report, top)).to_json(),
        )
            .into_response(),
        Err(resp) => resp,
    }
}

async fn not_found() -> Response {
    plain(
        StatusCode::NOT_FOUND,
        "not found: try /debug/memory, /debug/memory.json or /debug/memory/attributed".to_owned(),
    )
}

/// HTTP status for a capture failure.
pub fn status_for(e: &ProcError) -> StatusCode {
    match e {
        ProcError::NoSuchProcess { .. } => StatusCode::GONE,
        ProcError::PermissionDenied { .. } => StatusCode::FORBIDDEN,
        ProcError::KernelThread { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        ProcError::NoProcfs => StatusCode::NOT_IMPLEMENTED,
        ProcError::Io { .. } | ProcError::Parse { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    }
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
