//! The `BLACKHOLE` sink: counts rows and bytes, then discards them.
//!
//! Used to measure a pipeline without output cost. Bytes are the Arrow memory
//! size of each batch (`get_array_memory_size`).

use arrow::array::RecordBatch;

use crate::connector::{SinkCapabilities, SinkConnector, SinkConnectorMetrics};
use crate::error::ConnectorError;

/// The BLACKHOLE sink.
#[derive(Debug, Default)]
pub struct BlackholeSink {
    metrics: SinkConnectorMetrics,
}

impl BlackholeSink {
    /// A sink that discards everything.
    pub fn new() -> Self {
        Self::default()
    }
}

impl SinkConnector for BlackholeSink {
    /// Discarding is trivially exactly-once, idempotent and accepts any input.
    fn capabilities(&self) -> SinkCapabilities {
        SinkCapabilities {
            exactly_once: true,
            idempotent: true,
            upsert: true,
            changelog: true,
            two_phase_commit: false,
            partitioned: false,
        }
    }

    fn write_batch(&mut self, batch: &RecordBatch) -> Result<(), ConnectorError> {
        self.metrics.records_written += batch.num_rows() as u64;
        self.metrics.bytes_written += batch.get_array_memory_size() as u64;
        Ok(())
    }

    fn commit_epoch(&mut self, epoch: u64) -> Result<(), ConnectorError> {
        self.metrics.last_committed_epoch = Some(epoch);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), ConnectorError> {
        Ok(())
    }

    fn close(&mut self) -> Result<(), ConnectorError> {
        Ok(())
    }

    fn metrics(&self) -> SinkConnectorMetrics {
        self.metrics
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Int64Array};
    use std::sync::Arc;

    #[test]
    fn counts_rows_and_bytes() {
        let mut s = BlackholeSink::new();
        let col: ArrayRef = Arc::new(Int64Array::from(vec![1, 2, 3]));
        let b = RecordBatch::try_from_iter([("a", col)]).unwrap();
        s.write_batch(&b).unwrap();
        s.write_batch(&b).unwrap();
        s.commit_epoch(4).unwrap();
        let m = s.metrics();
        assert_eq!(m.records_written, 6);
        assert!(m.bytes_written >= 48);
        assert_eq!(m.last_committed_epoch, Some(4));
    }
}
