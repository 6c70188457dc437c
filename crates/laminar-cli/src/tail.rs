//! Live rows: a subscription's batches printed on stdout as they arrive, in the
//! foreground ([`tail`]: the demo, the shell's `SELECT`) or on a thread of its own
//! ([`TailThread`]: continuous queries of a script, which must not block the statements
//! after them).
//!
//! Table output collects rows for a moment ([`TABLE_COALESCE`]) so the live table's column
//! widths come from more than one row; CSV and JSON lines are written and flushed batch by
//! batch.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use laminar_db::ArrowSubscription;

use crate::output::{Format, RowPrinter};

/// How long table output collects rows before printing them.
const TABLE_COALESCE: Duration = Duration::from_millis(300);
/// Table output prints at once when this many rows are waiting.
const TABLE_MAX_ROWS: usize = 500;
/// How often the stop condition is checked.
const POLL: Duration = Duration::from_millis(50);

/// Why a tail returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TailEnd {
    /// The subscription ended (its inputs ended) and every row was printed.
    Ended,
    /// The stop condition became true; the rows already delivered were printed.
    Stopped,
    /// Stdout was closed (a pipe reader went away).
    Closed,
}

/// Prints `sub` until it ends, `stop()` returns true (checked every 50 ms; rows already
/// queued are printed first), or stdout closes.
pub(crate) fn tail(
    sub: &mut ArrowSubscription,
    printer: &mut RowPrinter,
    mut stop: impl FnMut() -> bool,
) -> io::Result<TailEnd> {
    let mut pending: Vec<RecordBatch> = Vec::new();
    let mut pending_rows = 0;
    let mut first_pending = Instant::now();
    loop {
        if stop() {
            while let Some(b) = sub.poll() {
                pending.push(b);
            }
            return close(printer, &mut pending, TailEnd::Stopped);
        }
        match sub.recv_timeout(POLL) {
            Ok(Some(b)) if b.num_rows() > 0 => {
                if pending.is_empty() {
                    first_pending = Instant::now();
                }
                pending_rows += b.num_rows();
                pending.push(b);
            }
            Ok(_) => {}
            Err(_) => {
                return close(printer, &mut pending, TailEnd::Ended);
            }
        }
        let due = printer.format() != Format::Table
            || first_pending.elapsed() >= TABLE_COALESCE
            || pending_rows >= TABLE_MAX_ROWS;
        if !pending.is_empty() && due {
            pending_rows = 0;
            if !flush(printer, &mut pending)? {
                return Ok(TailEnd::Closed);
            }
        }
    }
}

/// Prints `pending` and ends the output (a table's bottom border).
fn close(
    printer: &mut RowPrinter,
    pending: &mut Vec<RecordBatch>,
    end: TailEnd,
) -> io::Result<TailEnd> {
    if !flush(printer, pending)? {
        return Ok(TailEnd::Closed);
    }
    match printer.finish(&mut io::stdout().lock()) {
        Ok(()) => Ok(end),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(TailEnd::Closed),
        Err(e) => Err(e),
    }
}

/// Prints and clears `pending`; false when stdout is closed.
fn flush(printer: &mut RowPrinter, pending: &mut Vec<RecordBatch>) -> io::Result<bool> {
    let result = printer.print(&mut io::stdout().lock(), pending);
    pending.clear();
    match result {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e),
    }
}

/// A tail on its own thread.
pub(crate) struct TailThread {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<u64>,
}

impl TailThread {
    /// Starts printing `sub`.
    pub(crate) fn spawn(mut sub: ArrowSubscription, format: Format) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let handle = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut printer = RowPrinter::new(format);
                if let Err(e) = tail(&mut sub, &mut printer, || stop.load(Ordering::SeqCst)) {
                    eprintln!("laminardb: cannot print rows: {e}");
                }
                printer.rows()
            })
        };
        TailThread { stop, handle }
    }

    /// Prints what is queued, stops, and returns the number of rows printed.
    pub(crate) fn finish(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().unwrap_or(0)
    }
}
