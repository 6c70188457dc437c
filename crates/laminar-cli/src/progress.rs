//! The live progress line of `laminardb run` on stderr (only when stderr is a terminal):
//! events in and their rate, rows emitted and written, and the pipeline watermark, redrawn
//! about twice a second.

use std::io::{self, Write};
use std::time::{Duration, Instant};

use laminar_db::LaminarDB;

use crate::units;

/// How often the line is redrawn.
const INTERVAL: Duration = Duration::from_millis(500);

/// The progress line.
#[derive(Debug)]
pub(crate) struct Progress {
    started: Instant,
    last_draw: Instant,
    last_events: u64,
    shown: bool,
}

impl Progress {
    /// A progress line starting now.
    pub(crate) fn new() -> Self {
        let now = Instant::now();
        Progress {
            started: now,
            last_draw: now,
            last_events: 0,
            shown: false,
        }
    }

    /// Redraws the line if it is due.
    pub(crate) fn tick(&mut self, db: &LaminarDB) {
        let elapsed = self.last_draw.elapsed();
        if elapsed < INTERVAL {
            return;
        }
        let m = db.metrics();
        let rate = (m.total_events_ingested.saturating_sub(self.last_events)) as f64
            / elapsed.as_secs_f64();
        self.last_events = m.total_events_ingested;
        self.last_draw = Instant::now();
        let mut line = format!(
            "{} | in {} ({}/s)",
            units::duration(self.started.elapsed()),
            units::count(m.total_events_ingested),
            units::count(rate.round() as u64),
        );
        if m.stream_count > 0 {
            line.push_str(&format!(
                " | emitted {}",
                units::count(m.total_events_emitted)
            ));
        }
        if m.sink_count > 0 {
            let written: u64 = db
                .sinks()
                .iter()
                .filter_map(|s| db.sink_metrics(s).ok())
                .map(|s| s.records_written)
                .sum();
            line.push_str(&format!(" | written {}", units::count(written)));
        }
        line.push_str(&format!(
            " | watermark {}",
            units::watermark(m.pipeline_watermark)
        ));
        let mut err = io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K{line}");
        let _ = err.flush();
        self.shown = true;
    }

    /// Erases the line.
    pub(crate) fn clear(&mut self) {
        if self.shown {
            let mut err = io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
            self.shown = false;
        }
    }
}
