//! Source watermark generation with bounded out-of-orderness.

use crate::message::NO_WATERMARK;

/// Generates a source's watermark: `W = max(max event time seen - delay, last manual
/// watermark)`, never decreasing.
#[derive(Debug, Clone)]
pub struct WatermarkGenerator {
    delay_ms: i64,
    current: i64,
}

impl WatermarkGenerator {
    /// A generator with the given out-of-orderness bound (0 = `WATERMARK FOR ts AS ts`).
    pub fn new(delay_ms: i64) -> Self {
        WatermarkGenerator {
            delay_ms,
            current: NO_WATERMARK,
        }
    }

    /// The current watermark ([`NO_WATERMARK`] before the first).
    pub fn current(&self) -> i64 {
        self.current
    }

    /// Observes the maximum event time of a batch; returns the new watermark if it advanced.
    pub fn observe_event_time(&mut self, max_event_ms: i64) -> Option<i64> {
        self.advance_to(max_event_ms.saturating_sub(self.delay_ms))
    }

    /// Applies a manual `watermark(ts)` call; returns the new watermark if it advanced.
    pub fn observe_manual(&mut self, ts: i64) -> Option<i64> {
        self.advance_to(ts)
    }

    /// Sets the watermark restored from a checkpoint.
    pub fn restore(&mut self, watermark: i64) {
        self.current = watermark;
    }

    fn advance_to(&mut self, candidate: i64) -> Option<i64> {
        if candidate > self.current {
            self.current = candidate;
            Some(candidate)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_ac_delay_two_seconds() {
        // SPEC 3 AC: delay 2 s, ts 10000 then 9000 -> W 8000.
        let mut g = WatermarkGenerator::new(2000);
        assert_eq!(g.observe_event_time(10_000), Some(8000));
        assert_eq!(g.observe_event_time(9_000), None);
        assert_eq!(g.current(), 8000);
    }

    #[test]
    fn manual_watermarks_are_monotonic_with_event_time() {
        let mut g = WatermarkGenerator::new(0);
        assert_eq!(g.observe_manual(100), Some(100));
        assert_eq!(g.observe_event_time(50), None);
        assert_eq!(g.observe_manual(90), None);
        assert_eq!(g.observe_event_time(150), Some(150));
    }
}
