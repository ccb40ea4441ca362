//! Renderings of reports for other tools.
//!
//! - [`metrics`]: Prometheus metrics (`GET /metrics`).

pub mod metrics;
