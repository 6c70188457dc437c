//! `laminardb`: the LaminarDB command-line tool.
//!
//! - `laminardb demo [--events N] [--rate R]`: a built-in pipeline printed live
//!   ([`demo`]).
//! - `laminardb run [--workers N] FILE.sql`: run a pipeline file until its sources end
//!   ([`run`]).
//! - `laminardb` / `laminardb shell`: the interactive shell ([`shell`]), or the statements
//!   on stdin when it is not a terminal ([`script`]).
//!
//! Everything goes through the embedded `laminar_db` API: statements through
//! `LaminarDB::execute`, live rows through subscriptions ([`tail`]), progress and summaries
//! from the metrics ([`progress`], [`summary`]). Exit codes ([`exit`]): 0 success, 1 SQL or
//! configuration error, 2 runtime failure, 130 when a second Ctrl-C forces the exit.
//! Read [`args`] first.

mod args;
mod completion;
mod database;
mod demo;
mod exit;
mod line_reader;
mod output;
mod progress;
mod run;
mod script;
mod shell;
mod signals;
mod statements;
mod summary;
mod tail;
mod units;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Command};
use crate::exit::CliError;

/// mimalloc keeps freed memory for reuse: with the system allocator, every closing window's
/// output columns (often hundreds of KiB each) are fresh mappings whose page faults dominate
/// the window-close latency (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            // Usage errors are configuration errors: exit 1 (clap would use 2, which
            // means a runtime failure here).
            let _ = e.print();
            return ExitCode::from(exit::EXIT_USER);
        }
        Err(e) => e.exit(), // --help, --version
    };
    init_logging(cli.verbose);
    let result = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("laminardb-cli")
        .enable_all()
        .build()
        .map_err(|e| CliError::runtime(format!("cannot start the runtime: {e}")))
        .and_then(|runtime| match &cli.command {
            Some(Command::Demo(args)) => demo::demo(&runtime, &cli, args),
            Some(Command::Run(args)) => run::run(&runtime, &cli, args),
            Some(Command::Shell) | None => shell::shell(&runtime, &cli),
        });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}

/// `-v`: log to stderr, filtered by `RUST_LOG` or by the number of `-v`s.
fn init_logging(verbose: u8) {
    if verbose == 0 {
        return;
    }
    let default = match verbose {
        1 => "warn",
        2 => "info",
        3 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
