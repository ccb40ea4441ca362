//! `memtrace serve`: the snapshot report over HTTP.

use std::net::{SocketAddr, ToSocketAddrs as _};
use std::process::ExitCode;

use anyhow::Context as _;
use memtrace::proc::pid::Identity;
use memtrace::{serve, snapshot};

/// Serve the snapshot report over HTTP.
///
/// GET /debug/memory?top=N (text), /debug/memory.json (JSON) and /metrics
/// (Prometheus). Listens
/// on loopback only unless --allow-remote: the report reveals the
/// process's address-space layout.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Process to report on.
    #[arg(long, short)]
    pub pid: u32,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:6060")]
    pub listen: String,
    /// Allow a non-loopback listen address.
    #[arg(long)]
    pub allow_remote: bool,
    /// Also trace the process with eBPF (root) and serve resident memory by
    /// call site at /debug/memory/attributed (and .json), and its history
    /// (sampled as the options below say) at /debug/memory/history.json.
    #[arg(long)]
    pub trace: bool,
    /// Call sites with a series of their own at /metrics (with --trace);
    /// the rest are summed into site="other", so the number of series
    /// stays bounded.
    #[arg(long, default_value_t = memtrace::export::metrics::DEFAULT_TOP_SITES as u64, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub metrics_sites: u64,
    // With --trace: the report is sampled into a history served at
    // /debug/memory/history.json; alerts are logged on stderr.
    #[command(flatten)]
    pub history: super::history::HistoryArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let addrs: Vec<SocketAddr> = args
        .listen
        .to_socket_addrs()
        .with_context(|| {
            format!(
                "invalid listen address {:?} (expected HOST:PORT)",
                args.listen
            )
        })?
        .collect();
    serve::check_listen_addrs(&addrs, args.allow_remote)?;
    let watch = args.history.watch_options()?;
    // Pinned by its start time: once it exits, a process that gets its pid
    // is not served.
    let process = Identity::of(args.pid)?;
    // Fail now, not on the first request, if the process cannot be read.
    snapshot::capture(args.pid)?;
    let tracing = if args.trace {
        Some(serve::TracingHandle::start_with(process, &watch)?)
    } else {
        None
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addrs[..])
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let local = listener.local_addr().context("listener address")?;
        say!(
            "memtrace: serving pid {} on http://{local}/debug/memory (and /debug/memory.json)",
            args.pid
        );
        let state = serve::ServeState {
            process,
            tracing,
            metrics_sites: usize::try_from(args.metrics_sites).unwrap_or(usize::MAX),
        };
        let app = serve::app(serve::routes(), state);
        serve::serve_with(listener, app, serve::Limits::default(), async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("HTTP server failed")?;
        Ok(ExitCode::SUCCESS)
    })
}
