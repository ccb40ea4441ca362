//! The live page: `GET /debug/memory/ui` (with tracing) and the flame
//! graph it shows, `GET /debug/memory/flamegraph.svg`.
//!
//! One self-contained HTML page: its CSS and JavaScript are embedded in the
//! binary (`ui/`), charts are inline SVG drawn by that script, and the
//! page fetches only from its own server (a Content-Security-Policy says
//! so to the browser). It polls `history.json` (the sampled history, what
//! grew, alerts) and `attributed.json` (the report now) beside it; without
//! a history endpoint it keeps its own history of the reports it polled.

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{ServeError, ServeState, attributed_for, no_parameters};
use crate::attribution::report as site_report;

const PAGE: &str = include_str!("ui/index.html");
const STYLE: &str = include_str!("ui/style.css");
const SCRIPT: &str = include_str!("ui/app.js");

/// Only same-origin requests, inline script and style (the page's own),
/// same-origin frames (the flame graph).
const PAGE_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; frame-src 'self'; img-src 'self' data:; \
     base-uri 'none'; form-action 'none'";

/// The page with its style and script in place.
pub fn page() -> String {
    PAGE.replacen("/*STYLE*/", STYLE, 1)
        .replacen("/*SCRIPT*/", SCRIPT, 1)
}

pub async fn ui_page(State(state): State<ServeState>) -> Result<Response, ServeError> {
    // The page shows the attributed report: without tracing there is none.
    state.tracing.as_ref().ok_or(ServeError::TracingOff)?;
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, PAGE_POLICY),
            (header::CACHE_CONTROL, "no-store"),
        ],
        page(),
    )
        .into_response())
}

/// The flame graph of resident memory by call stack (inferno), an SVG
/// with its own script for zoom and search.
pub async fn flamegraph_svg(
    State(state): State<ServeState>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, ServeError> {
    no_parameters(&params)?;
    let (report, _, _) = attributed_for(&state, &[]).await?;
    let mut svg = Vec::new();
    site_report::flamegraph(&report, &mut svg).map_err(ServeError::Encode)?;
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            // Its script and style are inline; nothing else is loaded.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'",
            ),
            (header::CACHE_CONTROL, "no-store"),
        ],
        svg,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_self_contained() {
        let page = page();
        assert!(!page.contains("/*STYLE*/") && !page.contains("/*SCRIPT*/"));
        assert!(page.contains("<svg") || page.contains("createElementNS"));
        // Nothing from elsewhere: no absolute URL but the SVG namespace.
        let outside = page
            .match_indices("http")
            .map(|(i, _)| &page[i..(i + 30).min(page.len())])
            .filter(|s| !s.starts_with("http://www.w3.org/2000/svg"))
            .collect::<Vec<_>>();
        assert!(outside.is_empty(), "absolute URLs in the page: {outside:?}");
        // No data from the server is put in as markup.
        assert!(!SCRIPT.contains("innerHTML") && !SCRIPT.contains("outerHTML"));
        assert!(!SCRIPT.contains("insertAdjacentHTML") && !SCRIPT.contains("document.write"));
    }
}
