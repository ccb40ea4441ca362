//! The `memtrace` command: a thin layer over the `memtrace` library.

mod cli;

use std::process::ExitCode;

use cli::say;

use clap::Parser as _;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match cli::run(args) {
        Ok(code) => code,
        Err(err) => {
            say!("memtrace: {err:#}");
            ExitCode::FAILURE
        }
    }
}
