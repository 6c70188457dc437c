//! The end-of-run summary of `laminardb run` and the shell on stderr: how the run ended,
//! events read per source and records written per sink.

use std::fmt::Write as _;
use std::time::Duration;

use laminar_db::LaminarDB;

use crate::units;

/// The summary text (several lines, no trailing newline).
pub(crate) fn summary(db: &LaminarDB, ended: &str, elapsed: Duration) -> String {
    let mut out = format!(
        "laminardb: pipeline {ended} after {}",
        units::duration(elapsed)
    );
    let mut sources = db.all_source_metrics();
    sources.sort_by(|a, b| a.name.cmp(&b.name));
    for s in sources {
        let _ = write!(
            out,
            "\n  source {}: {} read",
            s.name,
            units::plural(s.total_events, "event")
        );
        if s.dropped > 0 {
            let _ = write!(out, ", {} dropped", units::count(s.dropped));
        }
        if s.bad_records > 0 {
            let _ = write!(
                out,
                ", {} skipped",
                units::plural(s.bad_records, "bad record")
            );
        }
    }
    let mut sinks = db.sinks();
    sinks.sort();
    for name in sinks {
        let Ok(s) = db.sink_metrics(&name) else {
            continue;
        };
        let _ = write!(
            out,
            "\n  sink {name}: {} written",
            units::plural(s.records_written, "record")
        );
        if s.rows_in != s.records_written {
            let _ = write!(out, " of {} received", units::count(s.rows_in));
        }
        if s.files_committed > 0 {
            let _ = write!(out, " ({})", units::plural(s.files_committed, "file"));
        }
        if s.errors > 0 {
            let _ = write!(out, ", {}", units::plural(s.errors, "error"));
        }
    }
    if let Some(stats) = db.checkpoint_stats() {
        let _ = write!(
            out,
            "\n  checkpoints: {} completed",
            units::count(stats.completed)
        );
        if let (Some(epoch), Some(took)) = (stats.last_epoch, stats.last_duration) {
            let _ = write!(
                out,
                " (last: epoch {epoch}, {} in {})",
                units::bytes(stats.last_bytes),
                units::duration(took)
            );
        }
        if stats.failed > 0 {
            let _ = write!(
                out,
                ", {} failed (last: {})",
                units::count(stats.failed),
                stats.last_error.as_deref().unwrap_or("?")
            );
        }
    }
    out
}
