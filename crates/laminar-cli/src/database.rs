//! Opening the database from command-line options (`--workers`).

use laminar_db::{LaminarDB, LaminarDbBuilder};

use crate::args::Cli;
use crate::exit::CliError;

/// A builder with the common options applied: `--workers` (or `LAMINAR_WORKERS`, which
/// clap reads) wins over the library default (the number of cores); `--var NAME=VALUE` sets
/// `${NAME}`.
pub(crate) fn builder(cli: &Cli) -> LaminarDbBuilder {
    let mut builder = LaminarDB::builder();
    if let Some(n) = cli.workers {
        builder = builder.workers(usize::try_from(n).unwrap_or(usize::MAX));
    }
    for (name, value) in &cli.vars {
        builder = builder.config_var(name.clone(), value.clone());
    }
    builder
}

/// Opens an in-memory database.
pub(crate) fn open(
    runtime: &tokio::runtime::Runtime,
    builder: LaminarDbBuilder,
) -> Result<LaminarDB, CliError> {
    runtime
        .block_on(builder.build())
        .map_err(|e| CliError::db(&e, Some("cannot open the database")))
}
