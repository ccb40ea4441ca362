//! `GET /debug/memory/history.json` (with `--trace`): the report sampled
//! over the history window, the call sites that grew, and the `--alert`
//! rules' states ([`crate::history::HistoryDoc`]; schema:
//! `docs/json-schema.md`). It takes no parameters.

use axum::extract::{Query, State};
use axum::response::Response;

use super::{ServeError, ServeState, json, no_parameters};

pub(super) async fn history_json(
    State(state): State<ServeState>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, ServeError> {
    no_parameters(&params)?;
    let tracing = state.tracing.ok_or(ServeError::TracingOff)?;
    let doc = tracing.history_doc();
    // Plain numbers and strings: serializing cannot fail; should it ever,
    // say so rather than send half a document.
    let body =
        serde_json::to_string(&doc).map_err(|e| ServeError::Encode(std::io::Error::other(e)))?;
    Ok(json(body))
}
