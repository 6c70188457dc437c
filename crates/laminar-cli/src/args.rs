//! Command-line arguments: the `laminardb` commands and their flags (clap derive).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// `laminardb`: run streaming SQL pipelines from files, explore them in a shell, or watch
/// the built-in demo.
#[derive(Debug, Parser)]
#[command(name = "laminardb", version)]
pub(crate) struct Cli {
    /// What to do; without a command, the interactive shell.
    #[command(subcommand)]
    pub(crate) command: Option<Command>,

    /// Worker threads of the operator runtime (default: number of cores).
    #[arg(
        long,
        global = true,
        env = "LAMINAR_WORKERS",
        value_name = "N",
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub(crate) workers: Option<u32>,

    /// A `${NAME}` value substituted into the SQL before parsing (repeatable).
    #[arg(long = "var", global = true, value_name = "NAME=VALUE", value_parser = parse_var)]
    pub(crate) vars: Vec<(String, String)>,

    /// Log to stderr (repeat for more detail: -v warn, -vv info, -vvv debug, -vvvv trace;
    /// RUST_LOG overrides).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,

    /// How rows are printed on stdout: `auto` is `table` on a terminal, `csv` otherwise.
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Auto)]
    pub(crate) format: OutputFormat,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// A built-in pipeline (generated Nexmark bids, filtered and converted) printed live;
    /// no setup, no files.
    Demo(DemoArgs),
    /// Run the statements of a SQL file, then the pipeline until every source has ended.
    Run(RunArgs),
    /// Interactive SQL shell (reads statements from stdin when it is not a terminal).
    Shell,
}

/// Flags of `laminardb demo`.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Generate this many events, print the results, then exit (default: run until Ctrl-C).
    #[arg(long, value_name = "N")]
    pub(crate) events: Option<u64>,

    /// Events generated per second (0: as fast as possible).
    #[arg(long, value_name = "EVENTS_PER_SECOND", default_value_t = 2000)]
    pub(crate) rate: u64,
}

/// Flags of `laminardb run`.
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The SQL file: statements separated by `;`, run in order.
    #[arg(value_name = "FILE.sql")]
    pub(crate) file: PathBuf,

    /// Directory for checkpoints: the run resumes from the newest one found there, and
    /// exactly-once sinks commit what each checkpoint covers.
    #[arg(long, value_name = "DIR")]
    pub(crate) storage_dir: Option<PathBuf>,

    /// Time between checkpoints, e.g. `1s` (needs --storage-dir; default 10s).
    #[arg(long, value_name = "DURATION")]
    pub(crate) checkpoint_interval: Option<String>,

    /// Discard the checkpointed state of this source, stream or table instead of restoring
    /// it (after changing its definition); `*` for all. Repeatable; needs --storage-dir.
    #[arg(long, value_name = "NAME")]
    pub(crate) reset_state: Vec<String>,

    /// Open despite a corrupt write-ahead log, replaying only the pushes logged before the
    /// damage (needs --storage-dir).
    #[arg(long)]
    pub(crate) wal_salvage: bool,

    /// Write checkpoint files to an object store instead of DIR/checkpoints:
    /// `file:///path`, or `s3://bucket/prefix` (builds with the `s3` feature; settings from
    /// AWS_* environment variables). The write-ahead log stays in DIR. Needs --storage-dir.
    #[arg(long, value_name = "URL")]
    pub(crate) checkpoint_store: Option<String>,
}

/// The `--format` choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum OutputFormat {
    /// `table` when stdout is a terminal, else `csv`.
    Auto,
    /// Aligned tables.
    Table,
    /// CSV with a header line.
    Csv,
    /// One JSON object per line.
    Json,
}

/// Parses `NAME=VALUE` for `--var`.
fn parse_var(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err(format!("expected NAME=VALUE, got '{text}'")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn arguments_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_go_anywhere() {
        let cli =
            Cli::try_parse_from(["laminardb", "run", "p.sql", "--workers", "2", "-vv"]).unwrap();
        assert_eq!(cli.workers, Some(2));
        assert_eq!(cli.verbose, 2);
        assert!(matches!(cli.command, Some(Command::Run(_))));
        assert!(Cli::try_parse_from(["laminardb", "--workers", "0", "demo"]).is_err());
    }
}
