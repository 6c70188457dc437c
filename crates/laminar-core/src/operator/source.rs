//! The source operator: the first node of every source. It reads event time from each batch,
//! generates the source watermark (bounded out-of-orderness, manual `watermark()` calls,
//! monotonic) and detects idleness. A keyed source (`watermark.key`) emits the minimum of its
//! active keys' watermarks instead (see [`crate::time::KeyClocks`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arrow::array::AsArray;
use arrow::datatypes::{DataType, Int64Type, SchemaRef};
use arrow::record_batch::RecordBatch;

use crate::error::{CoreError, Result};
use crate::message::{END_OF_TIME, Message};
use crate::metrics::NodeMetrics;
use crate::operator::Operator;
use crate::time::{
    Alignment, AlignmentMode, EventTimeColumn, KeyClocks, KeyedWatermark, WatermarkGenerator,
};

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
    /// Keyed watermark (`watermark.key`), if declared.
    pub keyed: Option<KeyedWatermark>,
    /// Alignment group membership (`alignment.group`), if declared.
    pub alignment: Option<Alignment>,
}

/// Per-key clocks of a keyed source.
struct KeyedState {
    clocks: KeyClocks,
    column: usize,
    last_expiry: Instant,
}

/// See the module docs.
pub struct SourceOperator {
    settings: SourceSettings,
    generator: WatermarkGenerator,
    last_activity: Instant,
    idle: bool,
    keyed: Option<KeyedState>,
    last_drift_warning: Option<Instant>,
    metrics: Arc<NodeMetrics>,
}

impl SourceOperator {
    /// A source operator reporting its watermark into `metrics`.
    ///
    /// Errors when a keyed watermark names a column the schema does not have or whose type
    /// cannot key a table.
    pub fn new(settings: SourceSettings, metrics: Arc<NodeMetrics>) -> Result<Self> {
        let keyed = match &settings.keyed {
            None => None,
            Some(k) => {
                let invalid = |reason: String| {
                    CoreError::Internal(format!("source '{}': {reason}", settings.name))
                };
                let (column, field) =
                    settings.schema.column_with_name(&k.column).ok_or_else(|| {
                        invalid(format!(
                            "watermark.key column '{}' does not exist",
                            k.column
                        ))
                    })?;
                Some(KeyedState {
                    clocks: KeyClocks::new(k.clone(), field.data_type()).map_err(invalid)?,
                    column,
                    last_expiry: Instant::now(),
                })
            }
        };
        Ok(SourceOperator {
            generator: WatermarkGenerator::new(settings.delay_ms),
            settings,
            last_activity: Instant::now(),
            idle: false,
            keyed,
            last_drift_warning: None,
            metrics,
        })
    }

    /// Seeds a keyed source with the keys it will see (every partition of its input), so its
    /// watermark waits for all of them (see [`KeyClocks::expect`]).
    pub fn expect_keys(&mut self, keys: &arrow::array::ArrayRef) -> Result<()> {
        let Some(keyed) = self.keyed.as_mut() else {
            return Ok(());
        };
        let rows = keyed
            .clocks
            .encode(keys)
            .map_err(|e| CoreError::Internal(format!("source '{}': {e}", self.settings.name)))?;
        keyed.clocks.expect(&rows, Instant::now());
        Ok(())
    }

    /// Event time of every row in epoch milliseconds.
    fn event_millis(&self, batch: &RecordBatch, event_time: &EventTimeColumn) -> Result<Vec<i64>> {
        let error = |reason: String| CoreError::EventTime {
            node: self.settings.name.clone(),
            reason,
        };
        let index = batch
            .schema()
            .index_of(&event_time.name)
            .map_err(|e| error(e.to_string()))?;
        let raw = arrow::compute::cast(batch.column(index), &DataType::Int64)
            .map_err(|e| error(e.to_string()))?;
        Ok(raw
            .as_primitive::<Int64Type>()
            .values()
            .iter()
            .map(|&v| event_time.kind.to_millis(v))
            .collect())
    }

    /// `alignment.mode = 'drop'`: removes rows beyond the group's drift, counting them.
    fn drop_beyond_drift(&self, batch: RecordBatch) -> Result<RecordBatch> {
        let (Some(alignment), Some(event_time)) =
            (&self.settings.alignment, &self.settings.event_time)
        else {
            return Ok(batch);
        };
        if alignment.mode != AlignmentMode::Drop {
            return Ok(batch);
        }
        let Some(limit) = alignment.limit() else {
            return Ok(batch);
        };
        let times = self.event_millis(&batch, event_time)?;
        if times.iter().all(|&t| t <= limit) {
            return Ok(batch);
        }
        let keep = arrow::array::BooleanArray::from_iter(times.iter().map(|&t| Some(t <= limit)));
        let dropped = (batch.num_rows() - keep.true_count()) as u64;
        self.metrics
            .alignment_dropped
            .fetch_add(dropped, Ordering::Relaxed);
        arrow::compute::filter_record_batch(&batch, &keep).map_err(|e| CoreError::EventTime {
            node: self.settings.name.clone(),
            reason: e.to_string(),
        })
    }

    /// `alignment.mode = 'warn'`: logs (at most every 10 s) while the source is ahead.
    fn warn_if_ahead(&mut self) {
        let Some(alignment) = &self.settings.alignment else {
            return;
        };
        if alignment.mode != AlignmentMode::Warn || !alignment.is_ahead() {
            return;
        }
        let now = Instant::now();
        if self
            .last_drift_warning
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(10))
        {
            return;
        }
        self.last_drift_warning = Some(now);
        tracing::warn!(
            source = %self.settings.name,
            group = %alignment.group.name(),
            watermark = self.generator.current(),
            limit = alignment.limit(),
            "source is ahead of its alignment group by more than alignment.max_drift"
        );
    }

    /// Feeds a batch to the key clocks; returns the keyed source watermark candidate.
    fn observe_keys(&mut self, batch: &RecordBatch) -> Result<Option<i64>> {
        let (Some(_), Some(event_time)) = (&self.keyed, &self.settings.event_time) else {
            return Ok(None);
        };
        let times = self.event_millis(batch, event_time)?;
        let keyed = self.keyed.as_mut().expect("checked above");
        let keys = keyed
            .clocks
            .encode(batch.column(keyed.column))
            .map_err(|reason| CoreError::EventTime {
                node: self.settings.name.clone(),
                reason,
            })?;
        keyed.clocks.observe(&keys, &times, Instant::now());
        Ok(Self::keyed_candidate(&mut keyed.clocks))
    }

    /// Source watermark of a keyed source: the minimum over active keys, or the highest
    /// watermark when every key is inactive.
    fn keyed_candidate(clocks: &mut KeyClocks) -> Option<i64> {
        clocks.min_active().or_else(|| clocks.max_any())
    }

    fn emit_watermark(&mut self, watermark: Option<i64>, out: &mut Vec<Message>) {
        if let Some(w) = watermark {
            self.metrics.watermark.store(w, Ordering::Relaxed);
            if let Some(alignment) = &self.settings.alignment {
                alignment.member.set_watermark(w);
            }
            out.push(Message::Watermark(w));
            self.warn_if_ahead();
        }
    }

    fn activity(&mut self) {
        self.last_activity = Instant::now();
        if self.idle
            && let Some(alignment) = &self.settings.alignment
        {
            alignment.member.set_idle(false);
        }
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
        let batch = self.drop_beyond_drift(batch)?;
        if self.keyed.is_some() {
            let candidate = self.observe_keys(&batch)?;
            if batch.num_rows() > 0 {
                out.push(Message::Batch(batch));
            }
            if let Some(w) = candidate {
                let advanced = self.generator.observe_manual(w);
                self.emit_watermark(advanced, out);
            }
            return Ok(());
        }
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

    /// The source watermark, and the per-key clocks of a keyed source.
    fn snapshot(&mut self) -> Result<Option<Vec<u8>>> {
        let mut w = crate::snapshot::SnapshotWriter::new("source", 2);
        w.i64(self.generator.current());
        w.bool(self.keyed.is_some());
        if let Some(keyed) = &self.keyed {
            keyed.clocks.snapshot(&mut w);
        }
        Ok(Some(w.finish()))
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<()> {
        let mut r = crate::snapshot::SnapshotReader::new(snapshot, "source", 2)?;
        let watermark = r.i64()?;
        let keyed = r.bool()?;
        match &mut self.keyed {
            Some(state) if keyed => state.clocks.restore(&mut r, Instant::now())?,
            None if !keyed => {}
            _ => {
                return Err(crate::error::CoreError::InvalidData(
                    "the source's keyed watermark differs from the checkpointed one".into(),
                ));
            }
        }
        if !r.is_done() {
            return Err(crate::error::CoreError::InvalidData(
                "source snapshot: trailing bytes".into(),
            ));
        }
        self.generator.restore(watermark);
        if watermark != crate::message::NO_WATERMARK {
            self.metrics.watermark.store(watermark, Ordering::Relaxed);
            if let Some(alignment) = &self.settings.alignment {
                alignment.member.set_watermark(watermark);
            }
        }
        Ok(())
    }

    fn paused(&self) -> bool {
        let Some(alignment) = &self.settings.alignment else {
            return false;
        };
        let paused = alignment.mode == AlignmentMode::Pause && alignment.is_ahead();
        self.metrics
            .alignment_paused
            .store(paused, Ordering::Relaxed);
        paused
    }

    fn on_tick(&mut self, now: Instant, out: &mut Vec<Message>) -> Result<()> {
        if let Some(keyed) = self.keyed.as_mut() {
            let every = (keyed.clocks.settings().idle_timeout / 10).max(Duration::from_millis(50));
            if now.duration_since(keyed.last_expiry) >= every {
                keyed.last_expiry = now;
                if keyed.clocks.expire_idle(now)
                    && let Some(w) = Self::keyed_candidate(&mut keyed.clocks)
                {
                    let advanced = self.generator.observe_manual(w);
                    self.emit_watermark(advanced, out);
                }
            }
        }
        if !self.idle && now.duration_since(self.last_activity) >= self.settings.idle_timeout {
            self.idle = true;
            if let Some(alignment) = &self.settings.alignment {
                alignment.member.set_idle(true);
            }
            out.push(Message::Idle);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use arrow::array::{Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

    use super::*;
    use crate::time::KeyEviction;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("ts", DataType::Int64, false),
        ]))
    }

    fn source(keyed: bool) -> SourceOperator {
        let settings = SourceSettings {
            name: "s".into(),
            schema: schema(),
            event_time: Some(EventTimeColumn::resolve(&schema(), "ts").unwrap()),
            delay_ms: 500,
            idle_timeout: Duration::from_secs(3600),
            keyed: keyed.then(|| KeyedWatermark {
                column: "k".into(),
                delay_ms: 500,
                max_keys: 3,
                eviction: KeyEviction::LowestWatermark,
                idle_timeout: Duration::from_secs(3600),
            }),
            alignment: None,
        };
        SourceOperator::new(settings, Arc::new(NodeMetrics::default())).unwrap()
    }

    #[derive(Debug, Clone)]
    enum Event {
        Rows(Vec<(u8, i64)>),
        Watermark(i64),
    }

    fn event_strategy() -> impl proptest::strategy::Strategy<Value = Event> {
        use proptest::prelude::*;
        prop_oneof![
            4 => proptest::collection::vec((0u8..5, 0i64..20_000), 1..6).prop_map(Event::Rows),
            1 => (0i64..20_000).prop_map(Event::Watermark),
        ]
    }

    /// The watermarks a source emits for `events`.
    fn feed(op: &mut SourceOperator, events: &[Event]) -> Vec<i64> {
        let mut out = Vec::new();
        for e in events {
            match e {
                Event::Rows(rows) => {
                    let keys: Vec<String> = rows.iter().map(|(k, _)| format!("k{k}")).collect();
                    let ts: Vec<i64> = rows.iter().map(|(_, t)| *t).collect();
                    let batch = RecordBatch::try_new(
                        schema(),
                        vec![
                            Arc::new(StringArray::from(keys)),
                            Arc::new(Int64Array::from(ts)),
                        ],
                    )
                    .unwrap();
                    op.on_batch(0, batch, &mut out).unwrap();
                }
                Event::Watermark(w) => op.on_watermark(*w, &mut out).unwrap(),
            }
        }
        out.iter()
            .filter_map(|m| match m {
                Message::Watermark(w) => Some(*w),
                _ => None,
            })
            .collect()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 128, failure_persistence: None, ..Default::default() })]

        /// Snapshot at any point, restore into a fresh source: from then on both emit the
        /// same watermarks (plain and keyed sources, evictions included).
        #[test]
        fn snapshot_restore_round_trip(
            events in proptest::collection::vec(event_strategy(), 0..30),
            split in 0usize..30,
            keyed in proptest::bool::ANY,
        ) {
            let split = split.min(events.len());
            let mut a = source(keyed);
            feed(&mut a, &events[..split]);
            let snapshot = a.snapshot().unwrap().expect("sources keep their watermark");
            let mut b = source(keyed);
            b.restore(&snapshot).unwrap();
            proptest::prop_assert_eq!(feed(&mut a, &events[split..]), feed(&mut b, &events[split..]));
        }
    }

    #[test]
    fn a_snapshot_of_a_differently_keyed_source_is_refused() {
        let mut keyed = source(true);
        let snapshot = keyed.snapshot().unwrap().unwrap();
        assert!(source(false).restore(&snapshot).is_err());
        assert!(
            source(true)
                .restore(&snapshot[..snapshot.len() - 1])
                .is_err()
        );
    }
}
