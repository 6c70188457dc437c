//! `laminardb run FILE.sql`: run a pipeline file to its end.
//!
//! The statements run in order (the first failure stops them: exit 1 for SQL and
//! configuration errors), then the pipeline starts and runs until every source has ended
//! (see [`crate::completion`]), a signal arrives (clean stop, exit 0; a second signal exits
//! at once with 130) or something fails while running (exit 2). The database then shuts
//! down, which makes sinks write and commit what they hold, and a summary goes to stderr.
//! If the file's last statement is a `SELECT` over a source or stream, its rows are printed
//! on stdout while the pipeline runs.

use std::io::{self, IsTerminal};
use std::process::ExitCode;
use std::time::Instant;

use laminar_db::ExecuteResult;

use crate::args::{Cli, RunArgs};
use crate::completion::{Completion, Outcome};
use crate::database;
use crate::exit::CliError;
use crate::output::{self, Format};
use crate::progress::Progress;
use crate::signals::{SignalPolicy, Signals};
use crate::summary::summary;
use crate::tail::TailThread;

/// Runs a pipeline file.
pub(crate) fn run(
    runtime: &tokio::runtime::Runtime,
    cli: &Cli,
    args: &RunArgs,
) -> Result<ExitCode, CliError> {
    let mut builder = database::builder(cli);
    if let Some(dir) = &args.storage_dir {
        builder = builder.storage_dir(dir);
        if let Some(interval) = &args.checkpoint_interval {
            let interval = laminar_db::parse_duration(interval)
                .map_err(|e| CliError::user(format!("--checkpoint-interval {interval}: {e}")))?;
            builder = builder
                .checkpoint_interval(Some(interval))
                .map_err(|e| CliError::user(format!("--checkpoint-interval: {e}")))?;
        }
        if args.wal_salvage {
            builder = builder
                .wal_salvage(true)
                .map_err(|e| CliError::user(format!("--wal-salvage: {e}")))?;
        }
        for name in &args.reset_state {
            builder = builder
                .reset_state(name.clone())
                .map_err(|e| CliError::user(format!("--reset-state {name}: {e}")))?;
        }
        if let Some(url) = &args.checkpoint_store {
            builder = builder
                .checkpoint_store(url.clone())
                .map_err(|e| CliError::user(format!("--checkpoint-store: {e}")))?;
        }
    } else if args.checkpoint_interval.is_some()
        || !args.reset_state.is_empty()
        || args.wal_salvage
        || args.checkpoint_store.is_some()
    {
        return Err(CliError::user(
            "--checkpoint-interval, --reset-state, --wal-salvage and --checkpoint-store need durable storage: add --storage-dir DIR"
                .to_string(),
        ));
    }
    let label = args.file.display().to_string();
    let text = std::fs::read_to_string(&args.file)
        .map_err(|e| CliError::user(format!("cannot read {label}: {e}")))?;
    let format = Format::for_stdout(cli.format);

    let db = database::open(runtime, builder)?;
    let signals = Signals::install(runtime, SignalPolicy::Stop)
        .map_err(|e| CliError::runtime(format!("cannot handle signals: {e}")))?;
    let result = match runtime.block_on(db.execute(&text)) {
        Ok(result) => result,
        Err(e) => {
            db.shutdown_sync();
            return Err(CliError::db(&e, Some(&label)));
        }
    };
    if let Some(stats) = db.checkpoint_stats() {
        for skipped in &stats.skipped {
            eprintln!("skipped {skipped}");
        }
        for report in &stats.wal_report {
            eprintln!("{report}");
        }
        if let Some(epoch) = stats.recovered_epoch {
            eprintln!(
                "resumed from checkpoint {epoch} (state restored in {:.1} ms)",
                stats.recovery_time.as_secs_f64() * 1000.0
            );
        }
    }
    let mut tails = Vec::new();
    // Dropping a query handle cancels its query: keep it until the end.
    let mut queries = Vec::new();
    match result {
        ExecuteResult::Query(handle) => {
            tails.push(TailThread::spawn(handle.subscribe_arrow()?, format));
            queries.push(handle);
        }
        ExecuteResult::Metadata(batch) => {
            output::print_result(&mut io::stdout().lock(), format, &batch)
                .map_err(|e| CliError::runtime(format!("cannot print: {e}")))?;
        }
        ExecuteResult::Ddl(_) | ExecuteResult::RowsAffected(_) => {}
    }
    if let Err(e) = runtime.block_on(db.start()) {
        db.shutdown_sync();
        return Err(CliError::db(&e, Some(&label)));
    }

    let started = Instant::now();
    let completion = Completion::new(runtime, &db);
    // Rows on the same terminal would garble the progress line.
    let show_progress =
        io::stderr().is_terminal() && (tails.is_empty() || !io::stdout().is_terminal());
    let mut progress = Progress::new();
    let outcome = completion.wait(&db, &signals, || {
        if show_progress {
            progress.tick(&db);
        }
    });
    progress.clear();
    for t in tails {
        t.finish();
    }
    db.shutdown_sync();

    let ended = match &outcome {
        Outcome::Finished => "finished",
        Outcome::Interrupted => "stopped",
        Outcome::Failed(_) => "failed",
    };
    eprintln!("{}", summary(&db, ended, started.elapsed()));
    let failures = db.failures();
    if !failures.is_empty() {
        return Err(CliError::pipeline_failed(&failures));
    }
    Ok(ExitCode::SUCCESS)
}
