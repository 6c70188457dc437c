//! The shell reading statements from stdin when it is not a terminal
//! (`laminardb < pipeline.sql`, `echo "SHOW SOURCES;" | laminardb`).
//!
//! Statements run one at a time and each result is printed on stdout, like the
//! interactive shell but without prompts; the first failing statement stops the script
//! (exit 1 for SQL errors, the position counted over the whole input). A `SELECT` over a
//! source or stream prints its rows on a thread of its own while later statements run.
//! Then the pipeline starts and, if anything is left to watch (a continuous query or a
//! sink), runs until every source has ended, exactly as `laminardb run` does.

use std::io::{self, Read};
use std::process::ExitCode;
use std::time::Instant;

use laminar_db::LaminarDB;

use crate::args::Cli;
use crate::completion::{Completion, Outcome};
use crate::exit::CliError;
use crate::output::{self, Format};
use crate::signals::{SignalPolicy, Signals};
use crate::statements;
use crate::summary::summary;
use crate::tail::TailThread;

/// What errors in the input are attributed to.
const LABEL: &str = "<stdin>";

/// Runs the statements on stdin.
pub(crate) fn script(
    runtime: &tokio::runtime::Runtime,
    cli: &Cli,
    db: &LaminarDB,
) -> Result<ExitCode, CliError> {
    let mut input = String::new();
    io::stdin()
        .read_to_string(&mut input)
        .map_err(|e| CliError::user(format!("cannot read statements from stdin: {e}")))?;
    let signals = Signals::install(runtime, SignalPolicy::Stop)
        .map_err(|e| CliError::runtime(format!("cannot handle signals: {e}")))?;
    let format = Format::for_stdout(cli.format);
    let mut tails = Vec::new();
    // Dropping a query handle cancels its query: keep them until the end.
    let mut queries = Vec::new();
    let stop = |tails: Vec<TailThread>| {
        for t in tails {
            t.finish();
        }
        db.shutdown_sync();
    };
    for statement in statements::split(&input) {
        let result = match runtime.block_on(db.execute(statement.text)) {
            Ok(result) => result,
            Err(e) => {
                stop(tails);
                return Err(CliError::db(&statement.locate(e), Some(LABEL)));
            }
        };
        let printed = output::print_execute_result(&mut io::stdout().lock(), format, result);
        match printed {
            Ok(Some(query)) => {
                tails.push(TailThread::spawn(query.subscribe_arrow()?, format));
                queries.push(query);
            }
            Ok(None) => {}
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => break,
            Err(e) => {
                stop(tails);
                return Err(CliError::runtime(format!("cannot print: {e}")));
            }
        }
    }
    if let Err(e) = runtime.block_on(db.start()) {
        stop(tails);
        return Err(CliError::db(&e, Some(LABEL)));
    }

    let watched = !tails.is_empty() || !db.sinks().is_empty();
    let started = Instant::now();
    let outcome = if watched {
        Completion::new(runtime, db).wait(db, &signals, || {})
    } else {
        Outcome::Finished
    };
    stop(tails);
    if watched {
        let ended = match outcome {
            Outcome::Finished => "finished",
            Outcome::Interrupted => "stopped",
            Outcome::Failed(_) => "failed",
        };
        eprintln!("{}", summary(db, ended, started.elapsed()));
    }
    let failures = db.failures();
    if !failures.is_empty() {
        return Err(CliError::pipeline_failed(&failures));
    }
    Ok(ExitCode::SUCCESS)
}
