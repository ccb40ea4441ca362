//! `GET /debug/pprof/memtrace` (with tracing): the attributed report now as
//! a gzipped pprof profile ([`crate::export::pprof`]), next to where Go
//! services serve theirs: `go tool pprof http://HOST:6060/debug/pprof/memtrace`.

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{ServeError, ServeState};
use crate::export::pprof;

/// The profile, built on a blocking thread like the other reports.
pub async fn memtrace_profile(
    State(state): State<ServeState>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, ServeError> {
    for (key, _) in &params {
        // pprof clients add `seconds` when asked for a timed profile; this
        // one is the memory now, so the duration means nothing here.
        if key != "seconds" {
            return Err(ServeError::UnknownParameter {
                key: key.clone(),
                expected: "no parameters (seconds is ignored)",
            });
        }
    }
    let tracing = state.tracing.clone().ok_or(ServeError::TracingOff)?;
    let body = tokio::task::spawn_blocking(move || {
        tracing
            .report()
            .map(|report| pprof::encode(&report).map_err(ServeError::Encode))
    })
    .await
    .map_err(|error| ServeError::Task {
        what: "profile",
        error,
    })???;
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"memtrace.pb.gz\"",
            ),
        ],
        body,
    )
        .into_response())
}
