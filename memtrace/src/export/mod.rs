//! Renderings of reports for other tools.
//!
//! - [`pprof`]: the attributed report as a gzipped pprof `profile.proto`
//!   (`go tool pprof`, Parca, Pyroscope).

pub mod pprof;
