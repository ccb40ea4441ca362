//! `GET /metrics`: the process's memory in the Prometheus text format
//! ([`crate::export::metrics`]).
//!
//! Without tracing a scrape captures a snapshot (totals and RSS by kind of
//! mapping). With tracing it reads the cheap `smaps_rollup` for the
//! totals and asks the tracing session for the attributed report (which
//! reads smaps once), adding RSS by category and call site and the
//! session's counters.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{ServeError, ServeState};
use crate::export::metrics::{self, AttributionInput, MetricsInput, OwnUsage};
use crate::snapshot;

/// The handler of `GET /metrics`.
pub async fn metrics(State(state): State<ServeState>) -> Result<Response, ServeError> {
    let input = tokio::task::spawn_blocking(move || scrape(&state))
        .await
        .map_err(|error| ServeError::Task {
            what: "metrics",
            error,
        })??;
    match metrics::render(&input) {
        Ok(body) => Ok((
            StatusCode::OK,
            [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
            body,
        )
            .into_response()),
        // Writing to a String does not fail; should the encoder, say so.
        Err(_) => Ok((
            StatusCode::INTERNAL_SERVER_ERROR,
            "encoding the metrics failed\n",
        )
            .into_response()),
    }
}

/// Read what one scrape shows (blocking).
fn scrape(state: &ServeState) -> Result<MetricsInput, ServeError> {
    let Some(tracing) = &state.tracing else {
        let mut input = MetricsInput::from_snapshot(&snapshot::capture(state.process.pid)?);
        input.top_sites = state.metrics_sites;
        return Ok(input);
    };
    let totals = snapshot::read_rollup(state.process.pid)?;
    let (report, summary) = tracing.report_and_summary()?;
    Ok(MetricsInput {
        pid: state.process.pid,
        // As the snapshot names it (without " (deleted)"), so the label
        // is the same traced or not.
        exe: snapshot::classify::ExeId::of_process(state.process.pid)
            .path
            .map(|p| p.to_string_lossy().into_owned()),
        totals,
        regions: Vec::new(),
        attribution: Some(AttributionInput::new(&report, &summary)),
        top_sites: state.metrics_sites,
        alerts: tracing
            .alerts()
            .into_iter()
            .map(|a| (a.rule, a.firing))
            .collect(),
        own: OwnUsage::now(),
    })
}
