//! Lock-free counters kept per node of the operator graph. Reading them never touches the hot
//! path; writers use relaxed atomics.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use crate::message::NO_WATERMARK;

/// Counters of one node (source, stream or sink).
#[derive(Debug)]
pub struct NodeMetrics {
    /// Rows received.
    pub rows_in: AtomicU64,
    /// Rows emitted.
    pub rows_out: AtomicU64,
    /// Batches received.
    pub batches_in: AtomicU64,
    /// Rows dropped by an overflow policy (for example `drop_oldest`).
    pub rows_dropped: AtomicU64,
    /// Output watermark ([`NO_WATERMARK`] before the first).
    pub watermark: AtomicI64,
    /// Processing cycles (scheduler visits that did work).
    pub cycles: AtomicU64,
    /// Duration of the last cycle in nanoseconds.
    pub last_cycle_ns: AtomicU64,
    /// Bytes written (sinks).
    pub bytes_out: AtomicU64,
    /// Errors counted (bad records skipped, failed writes, rows with NULL event time).
    pub errors: AtomicU64,
    /// Rows that arrived after every window they belong to had closed.
    pub late_total: AtomicU64,
    /// Late rows dropped (no side output, `EMIT FINAL`, or the side output was full).
    pub late_dropped: AtomicU64,
    /// Late rows delivered to the `LATE DATA TO` stream.
    pub late_side_output: AtomicU64,
    /// Rows a source dropped for being beyond its alignment group's drift (`alignment.mode =
    /// 'drop'`).
    pub alignment_dropped: AtomicU64,
    /// True while a source is paused by its alignment group.
    pub alignment_paused: AtomicBool,
}

impl Default for NodeMetrics {
    fn default() -> Self {
        NodeMetrics {
            rows_in: AtomicU64::new(0),
            rows_out: AtomicU64::new(0),
            batches_in: AtomicU64::new(0),
            rows_dropped: AtomicU64::new(0),
            watermark: AtomicI64::new(NO_WATERMARK),
            cycles: AtomicU64::new(0),
            last_cycle_ns: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            late_total: AtomicU64::new(0),
            late_dropped: AtomicU64::new(0),
            late_side_output: AtomicU64::new(0),
            alignment_dropped: AtomicU64::new(0),
            alignment_paused: AtomicBool::new(false),
        }
    }
}

impl NodeMetrics {
    /// Current output watermark, `None` before the first.
    pub fn watermark(&self) -> Option<i64> {
        match self.watermark.load(Ordering::Relaxed) {
            NO_WATERMARK => None,
            w => Some(w),
        }
    }
}
