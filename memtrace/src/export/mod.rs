//! Renderings of reports for other tools.
//!
//! - [`metrics`]: Prometheus metrics (`GET /metrics`).
//! - [`pprof`]: the attributed report as a gzipped pprof `profile.proto`
//!   (`go tool pprof`, Parca, Pyroscope).

pub mod metrics;
pub mod pprof;
