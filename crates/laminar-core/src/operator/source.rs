//! The source operator: the first node of every source. It reads event time from each batch,
//! generates the source watermark (bounded out-of-orderness, manual `watermark()` calls,
//! monotonic) and detects idleness.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;

use crate::error::{CoreError, Result};
use crate::message::{END_OF_TIME, Message};
use crate::metrics::NodeMetrics;
use crate::operator::Operator;
use crate::time::{EventTimeColumn, WatermarkGenerator};

/// How a source produces watermarks.
#[derive(Debug, Clone)]
pub struct SourceSettings {
    /// Source name.
    pub name: String,
    /// Declared schema.
    pub schema: SchemaRef,
    /// Event-time column from `WATERMARK FOR`, if declared.
    pub event_time: Option<EventTimeColumn>,
    /// Out-of-orderness bound in ms.
    pub delay_ms: i64,
    /// No data for this long marks the source idle.
    pub idle_timeout: Duration,
}

/// See the module docs.
pub struct SourceOperator {
    settings: SourceSettings,
    generator: WatermarkGenerator,
    last_activity: Instant,
    idle: bool,
    metrics: Arc<NodeMetrics>,
}

impl SourceOperator {
    /// A source operator reporting its watermark into `metrics`.
    pub fn new(settings: SourceSettings, metrics: Arc<NodeMetrics>) -> Self {
        SourceOperator {
            generator: WatermarkGenerator::new(settings.delay_ms),
            settings,
            last_activity: Instant::now(),
            idle: false,
            metrics,
        }
    }

    fn emit_watermark(&mut self, watermark: Option<i64>, out: &mut Vec<Message>) {
        if let Some(w) = watermark {
            self.metrics.watermark.store(w, Ordering::Relaxed);
            out.push(Message::Watermark(w));
        }
    }

    fn activity(&mut self) {
        self.last_activity = Instant::now();
        self.idle = false;
    }
}

impl Operator for SourceOperator {
    fn output_schema(&self) -> SchemaRef {
        self.settings.schema.clone()
    }

    fn on_batch(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        out: &mut Vec<Message>,
    ) -> Result<()> {
        self.activity();
        let max = match &self.settings.event_time {
            Some(column) => column
                .max_millis(&batch)
                .map_err(|reason| CoreError::EventTime {
                    node: self.settings.name.clone(),
                    reason,
                })?,
            None => None,
        };
        if batch.num_rows() > 0 {
            out.push(Message::Batch(batch));
        }
        if let Some(max) = max {
            let advanced = self.generator.observe_event_time(max);
            self.emit_watermark(advanced, out);
        }
        Ok(())
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut Vec<Message>) -> Result<()> {
        self.activity();
        let advanced = self.generator.observe_manual(watermark);
        self.emit_watermark(advanced, out);
        Ok(())
    }

    fn on_barrier(&mut self, epoch: u64, out: &mut Vec<Message>) -> Result<()> {
        out.push(Message::Barrier(epoch));
        Ok(())
    }

    fn on_end(&mut self, out: &mut Vec<Message>) -> Result<()> {
        // A finite source that ended stops holding the pipeline back.
        let advanced = self.generator.observe_manual(END_OF_TIME);
        self.emit_watermark(advanced, out);
        Ok(())
    }

    fn on_tick(&mut self, now: Instant, out: &mut Vec<Message>) -> Result<()> {
        if !self.idle && now.duration_since(self.last_activity) >= self.settings.idle_timeout {
            self.idle = true;
            out.push(Message::Idle);
        }
        Ok(())
    }
}
