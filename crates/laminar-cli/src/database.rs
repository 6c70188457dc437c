//! Opening the database from command-line options (`--workers`).

use laminar_db::{LaminarDB, LaminarDbBuilder};

use crate::exit::CliError;

/// A builder with the common options applied; `--workers` (or `LAMINAR_WORKERS`, which
/// clap reads) wins over the library default (the number of cores).
pub(crate) fn builder(workers: Option<u32>) -> LaminarDbBuilder {
    let builder = LaminarDB::builder();
    match workers {
        Some(n) => builder.workers(usize::try_from(n).unwrap_or(usize::MAX)),
        None => builder,
    }
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
