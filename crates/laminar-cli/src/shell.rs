//! `laminardb` / `laminardb shell`: the interactive SQL shell.
//!
//! Lines accumulate until a statement ends with `;` (outside quotes and comments); the
//! prompt is `laminardb> `, then `       -> ` for continuation lines. Each statement's result
//! is printed; a `SELECT` or `SUBSCRIBE` over a source or stream prints its live rows until
//! Ctrl-C, then the query is cancelled and the prompt returns (`SUBSCRIBE` of a materialized
//! view prints its rows first; a `SELECT` over views and tables prints their current rows). History lives in `~/.laminardb_history`
//! ([`crate::line_reader`]).
//! Sources with connectors start reading as soon as they are created. When stdin is not a
//! terminal, [`crate::script`] runs the input instead.

use std::io::{self, IsTerminal, Write};
use std::process::ExitCode;

use laminar_db::{LaminarDB, QueryHandle};
use rustyline::error::ReadlineError;

use crate::args::Cli;
use crate::database;
use crate::exit::CliError;
use crate::line_reader::LineReader;
use crate::output::{self, Format, RowPrinter};
use crate::signals::{SignalPolicy, Signals};
use crate::statements;
use crate::tail::{TailEnd, tail};
use crate::units;

const PROMPT: &str = "laminardb> ";
const CONTINUATION: &str = "       -> ";

const HELP: &str = "\
Statements end with ';' and may span lines. For example:
  CREATE SOURCE bids (auction BIGINT, price BIGINT, ts TIMESTAMP,
      WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
    FROM DATAGEN (table = 'bids', rate = '10');
  SELECT auction, price FROM bids WHERE price > 100000;   -- live rows until Ctrl-C
  SUBSCRIBE bids WHERE price > 100000;   -- every column, and _op of a changelog
  CREATE MATERIALIZED VIEW best AS SELECT auction, MAX(price) AS top FROM bids GROUP BY auction;
  SELECT * FROM best ORDER BY top DESC LIMIT 3;   -- the view's current rows, once
  SUBSCRIBE best;   -- the view's rows, then its changes
  SHOW SOURCES;  DESCRIBE bids;  EXPLAIN SELECT * FROM bids;
Commands:
  \\h, help        this help
  \\q, exit, quit  leave the shell (Ctrl-D too)";

/// Runs the shell: interactive on a terminal, the script on stdin otherwise.
pub(crate) fn shell(runtime: &tokio::runtime::Runtime, cli: &Cli) -> Result<ExitCode, CliError> {
    let db = database::open(runtime, database::builder(cli))?;
    let result = if io::stdin().is_terminal() {
        interactive(runtime, cli, &db)
    } else {
        crate::script::script(runtime, cli, &db)
    };
    db.shutdown_sync();
    result
}

/// A shell command typed instead of SQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Command {
    Quit,
    Help,
}

fn command(line: &str) -> Option<Command> {
    match line
        .trim()
        .trim_end_matches(';')
        .trim()
        .to_ascii_lowercase()
        .as_str()
    {
        "\\q" | "exit" | "quit" => Some(Command::Quit),
        "\\h" | "\\?" | "help" => Some(Command::Help),
        _ => None,
    }
}

fn interactive(
    runtime: &tokio::runtime::Runtime,
    cli: &Cli,
    db: &LaminarDB,
) -> Result<ExitCode, CliError> {
    let on_terminate = {
        let db = db.clone();
        Box::new(move || db.shutdown_sync())
    };
    let signals = Signals::install(runtime, SignalPolicy::Interactive { on_terminate })
        .map_err(|e| CliError::runtime(format!("cannot handle signals: {e}")))?;
    runtime.block_on(db.start())?;
    let mut reader = LineReader::new();
    let format = Format::for_stdout(cli.format);
    println!(
        "LaminarDB {} shell. End statements with ';'. \\h for help, \\q to quit.",
        env!("CARGO_PKG_VERSION")
    );
    let mut buffer = String::new();
    loop {
        let prompt = if buffer.is_empty() {
            PROMPT
        } else {
            CONTINUATION
        };
        let line = match reader.read(prompt) {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => {
                buffer.clear();
                continue;
            }
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(CliError::runtime(format!("cannot read the terminal: {e}"))),
        };
        if buffer.is_empty() {
            match command(&line) {
                Some(Command::Quit) => break,
                Some(Command::Help) => {
                    reader.remember(line.trim());
                    println!("{HELP}");
                    continue;
                }
                None if line.trim().is_empty() => continue,
                None => {}
            }
        } else {
            buffer.push('\n');
        }
        buffer.push_str(&line);
        if !statements::is_complete(&buffer) {
            continue;
        }
        reader.remember(&buffer);
        run_input(runtime, db, &signals, format, &buffer);
        buffer.clear();
    }
    reader.save();
    Ok(ExitCode::SUCCESS)
}

/// Runs the statements of one input; the first error is printed and skips the rest.
fn run_input(
    runtime: &tokio::runtime::Runtime,
    db: &LaminarDB,
    signals: &Signals,
    format: Format,
    input: &str,
) {
    for statement in statements::split(input) {
        let result = match runtime.block_on(db.execute(statement.text)) {
            Ok(result) => result,
            Err(e) => {
                let e = statement.locate(e);
                eprintln!("error: {e} [{}]", e.code());
                return;
            }
        };
        match output::print_execute_result(&mut io::stdout().lock(), format, result) {
            Ok(Some(query)) => follow(&query, signals, format),
            Ok(None) => {}
            Err(e) => eprintln!("error: cannot print: {e}"),
        }
    }
}

/// Prints a continuous query's rows until Ctrl-C (or until its inputs end), then cancels it.
fn follow(query: &QueryHandle, signals: &Signals, format: Format) {
    let mut sub = match query.subscribe_arrow() {
        Ok(sub) => sub,
        Err(e) => {
            eprintln!("error: {e} [{}]", e.code());
            return;
        }
    };
    eprintln!("-- query {}: live rows, press Ctrl-C to stop", query.id);
    let before = signals.count();
    let mut printer = RowPrinter::new(format);
    let end = tail(&mut sub, &mut printer, || signals.count() != before);
    if let Err(e) = query.cancel() {
        eprintln!("error: {e} [{}]", e.code());
    }
    let how = match end {
        Ok(TailEnd::Ended) => "ended",
        Ok(TailEnd::Stopped | TailEnd::Closed) => "cancelled",
        Err(e) => {
            eprintln!("error: cannot print rows: {e}");
            "cancelled"
        }
    };
    let _ = io::stdout().flush();
    eprintln!(
        "-- query {} {how} after {}",
        query.id,
        units::plural(printer.rows(), "row")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_commands() {
        assert_eq!(command("\\q"), Some(Command::Quit));
        assert_eq!(command("  exit; "), Some(Command::Quit));
        assert_eq!(command("QUIT"), Some(Command::Quit));
        assert_eq!(command("\\h"), Some(Command::Help));
        assert_eq!(command("SHOW SOURCES;"), None);
    }
}
