//! `laminardb demo`: a pipeline that needs no setup. A DATAGEN source generates Nexmark
//! bids at a steady rate; a stream keeps the expensive ones and converts their price to
//! euros; the rows are printed live (tables on a terminal, CSV or JSON lines in a pipe).
//! Runs until Ctrl-C, or with `--events N` until N bids were generated and every result
//! was printed.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use laminar_db::LaminarDB;

use crate::args::{Cli, DemoArgs};
use crate::database;
use crate::exit::CliError;
use crate::output::{Format, RowPrinter};
use crate::signals::{SignalPolicy, Signals};
use crate::tail::tail;
use crate::units;

/// The source of generated bids.
const SOURCE: &str = "bids";
/// The stream whose rows are printed.
const STREAM: &str = "expensive_bids";
/// How long the end of a finite run may take to reach the printer.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The demo pipeline's SQL.
fn pipeline_sql(args: &DemoArgs) -> String {
    let events = args
        .events
        .map(|n| format!(", events = '{n}'"))
        .unwrap_or_default();
    format!(
        "CREATE SOURCE {SOURCE} (auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, ts TIMESTAMP,\n\
         \x20   WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)\n\
         \x20 FROM DATAGEN (table = 'bids', rate = '{rate}'{events});\n\
         CREATE STREAM {STREAM} AS\n\
         \x20 SELECT auction, bidder, price, CAST(price * 0.908 AS DECIMAL(12, 2)) AS price_eur, channel, ts\n\
         \x20 FROM {SOURCE} WHERE price > 600000;",
        rate = args.rate,
    )
}

/// Runs the demo.
pub(crate) fn demo(
    runtime: &tokio::runtime::Runtime,
    cli: &Cli,
    args: &DemoArgs,
) -> Result<ExitCode, CliError> {
    let format = Format::for_stdout(cli.format);
    let db = database::open(runtime, database::builder(cli))?;
    let signals = Signals::install(runtime, SignalPolicy::Stop)
        .map_err(|e| CliError::runtime(format!("cannot handle signals: {e}")))?;
    let sql = pipeline_sql(args);
    eprintln!("{sql}\n");
    runtime
        .block_on(db.execute(&sql))
        .map_err(|e| CliError::db(&e, Some("demo pipeline")))?;
    let mut sub = db.subscribe_arrow(STREAM)?;
    runtime.block_on(db.start())?;
    if args.events.is_none() {
        eprintln!("-- live rows of {STREAM}; press Ctrl-C to stop\n");
    }

    let started = Instant::now();
    let mut printer = RowPrinter::new(format);
    let finite = args.events.is_some();
    tail(&mut sub, &mut printer, || {
        signals.received() || !db.failures().is_empty() || (finite && drained(&db))
    })
    .map_err(|e| CliError::runtime(format!("cannot print rows: {e}")))?;
    let elapsed = started.elapsed();
    db.shutdown_sync();

    let generated = db.source_metrics(SOURCE).map_or(0, |m| m.total_events);
    eprintln!(
        "\nlaminardb demo: {} generated, {} of them over 600,000 printed, in {}",
        units::plural(generated, "bid"),
        units::count(printer.rows()),
        units::duration(elapsed),
    );
    let failures = db.failures();
    if !failures.is_empty() {
        return Err(CliError::pipeline_failed(&failures));
    }
    Ok(ExitCode::SUCCESS)
}

/// A finite run whose source ended and whose rows reached the subscription (normally the
/// subscription itself reports the end first).
fn drained(db: &LaminarDB) -> bool {
    db.is_finished() && db.wait_idle(DRAIN_TIMEOUT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finite_demo_passes_events_to_datagen() {
        let sql = pipeline_sql(&DemoArgs {
            events: Some(2000),
            rate: 500,
        });
        assert!(sql.contains("rate = '500', events = '2000'"), "{sql}");
        let unbounded = pipeline_sql(&DemoArgs {
            events: None,
            rate: 2000,
        });
        assert!(!unbounded.contains("events ="), "{unbounded}");
    }
}
