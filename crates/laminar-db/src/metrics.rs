//! Observability: pipeline, source, stream and sink metrics, and the pipeline topology
//! (SPEC 7). Everything is read from lock-free counters.

use std::sync::atomic::Ordering;
use std::time::Duration;

use arrow::datatypes::SchemaRef;

use crate::db::{LaminarDB, PipelineState};
use crate::error::DbError;

/// Whole-pipeline counters.
#[derive(Debug, Clone)]
pub struct PipelineMetrics {
    /// Rows pushed into sources.
    pub total_events_ingested: u64,
    /// Rows emitted by streams.
    pub total_events_emitted: u64,
    /// Rows dropped by overflow policies.
    pub total_events_dropped: u64,
    /// Batches handled by sources.
    pub total_batches: u64,
    /// Scheduler cycles that did work.
    pub total_cycles: u64,
    /// Duration of the most recent cycle of any node.
    pub last_cycle_duration_ns: u64,
    /// Time since open.
    pub uptime: Duration,
    /// Lifecycle state.
    pub state: PipelineState,
    /// Number of sources.
    pub source_count: usize,
    /// Number of named streams.
    pub stream_count: usize,
    /// Number of sinks.
    pub sink_count: usize,
    /// Minimum watermark over sources with event time (None until all have one).
    pub pipeline_watermark: Option<i64>,
    /// Checkpoints completed (0: durability is not available yet).
    pub checkpoints_completed: u64,
    /// Checkpoints failed.
    pub checkpoints_failed: u64,
    /// Duration of the last checkpoint.
    pub last_checkpoint_duration_ms: u64,
    /// Current checkpoint epoch.
    pub checkpoint_epoch: u64,
}

/// Counters of one source.
#[derive(Debug, Clone)]
pub struct SourceMetrics {
    /// Source name.
    pub name: String,
    /// Rows received.
    pub total_events: u64,
    /// Messages waiting in the queue.
    pub pending: usize,
    /// Queue capacity.
    pub capacity: usize,
    /// pending / capacity.
    pub utilization: f64,
    /// utilization > 0.8.
    pub is_backpressured: bool,
    /// Current watermark.
    pub watermark: Option<i64>,
    /// Rows evicted by `drop_oldest`.
    pub dropped: u64,
    /// Records the connector skipped as bad (`error.policy = 'skip'`).
    pub bad_records: u64,
    /// Times the connector stopped its input because the queue was filling up (a Kafka
    /// source pausing its partitions above `backpressure.high.watermark`).
    pub connector_pauses: u64,
    /// True when a connector feeds the source (false: push API / INSERT only).
    pub has_connector: bool,
    /// True once the source's connector reached the end of its input (or failed).
    pub ended: bool,
    /// True while the source is paused by its alignment group (`alignment.mode = 'pause'`).
    pub alignment_paused: bool,
    /// Rows dropped for leading the alignment group by more than the drift
    /// (`alignment.mode = 'drop'`).
    pub alignment_dropped: u64,
}

/// Counters of one stream.
#[derive(Debug, Clone)]
pub struct StreamMetrics {
    /// Stream name.
    pub name: String,
    /// Rows emitted.
    pub total_events: u64,
    /// Rows received.
    pub rows_in: u64,
    /// Output watermark.
    pub watermark: Option<i64>,
    /// The defining SQL.
    pub sql: String,
    /// Rows that arrived after every window they belong to had closed (SPEC 2.10).
    pub late_total: u64,
    /// Late rows dropped.
    pub late_dropped: u64,
    /// Late rows delivered to the `LATE DATA TO` stream.
    pub late_side_output: u64,
    /// Rows not aggregated because their event time was NULL.
    pub invalid_rows: u64,
    /// Rows (groups, windows, sessions) held in operator state.
    pub state_rows: u64,
    /// Approximate bytes held in operator state.
    pub state_bytes: u64,
}

/// Counters of one sink.
#[derive(Debug, Clone)]
pub struct SinkMetrics {
    /// Sink name.
    pub name: String,
    /// Rows received.
    pub rows_in: u64,
    /// Rows written by the connector.
    pub records_written: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Errors.
    pub errors: u64,
    /// Files committed (FILES).
    pub files_committed: u64,
    /// Last committed epoch.
    pub last_committed_epoch: Option<u64>,
}

/// A node of [`PipelineTopology`].
#[derive(Debug, Clone)]
pub struct TopologyNode {
    /// Name.
    pub name: String,
    /// `source`, `stream` or `sink`.
    pub node_type: String,
    /// Output schema.
    pub schema: SchemaRef,
    /// Defining SQL.
    pub sql: String,
}

/// An edge of [`PipelineTopology`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopologyEdge {
    /// Upstream.
    pub from: String,
    /// Downstream.
    pub to: String,
}

/// The dataflow graph from query references.
#[derive(Debug, Clone)]
pub struct PipelineTopology {
    /// Nodes.
    pub nodes: Vec<TopologyNode>,
    /// Edges.
    pub edges: Vec<TopologyEdge>,
}

impl LaminarDB {
    /// Whole-pipeline counters.
    pub fn metrics(&self) -> PipelineMetrics {
        let catalog = self.inner.catalog.read();
        let mut m = PipelineMetrics {
            total_events_ingested: 0,
            total_events_emitted: 0,
            total_events_dropped: 0,
            total_batches: 0,
            total_cycles: 0,
            last_cycle_duration_ns: 0,
            uptime: self.inner.started_at.elapsed(),
            state: self.pipeline_state(),
            source_count: catalog.sources.len(),
            stream_count: catalog
                .streams
                .values()
                .filter(|s| s.query_id.is_none())
                .count(),
            sink_count: catalog.sinks.len(),
            pipeline_watermark: None,
            checkpoints_completed: 0,
            checkpoints_failed: 0,
            last_checkpoint_duration_ms: 0,
            checkpoint_epoch: 0,
        };
        let mut watermark: Option<Option<i64>> = None;
        for s in catalog.sources.values() {
            m.total_events_ingested += s.metrics.rows_in.load(Ordering::Relaxed);
            m.total_events_dropped += s.metrics.rows_dropped.load(Ordering::Relaxed);
            m.total_batches += s.metrics.batches_in.load(Ordering::Relaxed);
            m.total_cycles += s.metrics.cycles.load(Ordering::Relaxed);
            m.last_cycle_duration_ns = m
                .last_cycle_duration_ns
                .max(s.metrics.last_cycle_ns.load(Ordering::Relaxed));
            if s.event_time.is_some() {
                let w = s.metrics.watermark();
                watermark = Some(match watermark {
                    None => w,
                    Some(prev) => match (prev, w) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        _ => None,
                    },
                });
            }
        }
        for s in catalog.streams.values() {
            m.total_events_emitted += s.metrics.rows_out.load(Ordering::Relaxed);
            m.total_cycles += s.metrics.cycles.load(Ordering::Relaxed);
            m.total_events_dropped += s.metrics.rows_dropped.load(Ordering::Relaxed);
        }
        m.pipeline_watermark = watermark.flatten();
        m
    }

    /// SQL `watermark()` / `pipeline_watermark()`: min over sources with event time.
    pub fn pipeline_watermark(&self) -> Option<i64> {
        self.metrics().pipeline_watermark
    }

    /// Counters of one source.
    pub fn source_metrics(&self, name: &str) -> Result<SourceMetrics, DbError> {
        let catalog = self.inner.catalog.read();
        let s = catalog.sources.get(name).ok_or_else(|| DbError::NotFound {
            kind: "source",
            name: name.to_string(),
            suggestion: laminar_sql::did_you_mean(name, catalog.sources.keys().map(String::as_str)),
        })?;
        let pending = s.input.pending();
        let capacity = s.input.capacity();
        let utilization = pending as f64 / capacity.max(1) as f64;
        Ok(SourceMetrics {
            name: s.name.clone(),
            total_events: s.metrics.rows_in.load(Ordering::Relaxed),
            pending,
            capacity,
            utilization,
            is_backpressured: utilization > 0.8,
            watermark: s.metrics.watermark(),
            dropped: s.metrics.rows_dropped.load(Ordering::Relaxed),
            bad_records: s.runner.as_ref().map_or(0, |r| r.metrics().bad_records),
            connector_pauses: s.runner.as_ref().map_or(0, |r| r.metrics().pauses),
            has_connector: s.runner.is_some(),
            ended: s.runner.as_ref().is_some_and(|r| r.is_ended()),
            alignment_paused: s.metrics.alignment_paused.load(Ordering::Relaxed),
            alignment_dropped: s.metrics.alignment_dropped.load(Ordering::Relaxed),
        })
    }

    /// Counters of every source.
    pub fn all_source_metrics(&self) -> Vec<SourceMetrics> {
        let names: Vec<String> = self.inner.catalog.read().sources.keys().cloned().collect();
        names
            .iter()
            .filter_map(|n| self.source_metrics(n).ok())
            .collect()
    }

    /// Counters of one stream.
    pub fn stream_metrics(&self, name: &str) -> Result<StreamMetrics, DbError> {
        let catalog = self.inner.catalog.read();
        let s = catalog.streams.get(name).ok_or_else(|| DbError::NotFound {
            kind: "stream",
            name: name.to_string(),
            suggestion: laminar_sql::did_you_mean(name, catalog.streams.keys().map(String::as_str)),
        })?;
        let size = s.state_size();
        Ok(StreamMetrics {
            name: s.name.clone(),
            total_events: s.metrics.rows_out.load(Ordering::Relaxed),
            rows_in: s.rows_in(),
            watermark: s.node.output_watermark(),
            sql: s.sql.clone(),
            late_total: s.counter(|m| &m.late_total),
            late_dropped: s.counter(|m| &m.late_dropped),
            late_side_output: s.counter(|m| &m.late_side_output),
            invalid_rows: s.counter(|m| &m.errors),
            state_rows: size.rows,
            state_bytes: size.bytes,
        })
    }

    /// Counters of one sink.
    pub fn sink_metrics(&self, name: &str) -> Result<SinkMetrics, DbError> {
        let catalog = self.inner.catalog.read();
        let s = catalog.sinks.get(name).ok_or_else(|| DbError::NotFound {
            kind: "sink",
            name: name.to_string(),
            suggestion: laminar_sql::did_you_mean(name, catalog.sinks.keys().map(String::as_str)),
        })?;
        let c = s.runner.connector_metrics();
        Ok(SinkMetrics {
            name: s.name.clone(),
            rows_in: s.metrics.rows_in.load(Ordering::Relaxed),
            records_written: c.records_written,
            bytes_written: c.bytes_written,
            errors: c.errors + s.metrics.errors.load(Ordering::Relaxed),
            files_committed: c.files_committed,
            last_committed_epoch: c.last_committed_epoch,
        })
    }

    /// Names of sources, streams and sinks.
    pub fn sources(&self) -> Vec<String> {
        self.inner.catalog.read().sources.keys().cloned().collect()
    }

    /// Names of named streams.
    pub fn streams(&self) -> Vec<String> {
        self.inner
            .catalog
            .read()
            .streams
            .values()
            .filter(|s| s.query_id.is_none())
            .map(|s| s.name.clone())
            .collect()
    }

    /// Names of sinks.
    pub fn sinks(&self) -> Vec<String> {
        self.inner.catalog.read().sinks.keys().cloned().collect()
    }

    /// The dataflow graph.
    pub fn pipeline_topology(&self) -> PipelineTopology {
        let catalog = self.inner.catalog.read();
        let mut nodes = Vec::new();
        let mut edges = Vec::new();
        for s in catalog.sources.values() {
            nodes.push(TopologyNode {
                name: s.name.clone(),
                node_type: "source".into(),
                schema: s.schema.clone(),
                sql: s.sql.clone(),
            });
        }
        for s in catalog.streams.values().filter(|s| s.query_id.is_none()) {
            nodes.push(TopologyNode {
                name: s.name.clone(),
                node_type: "stream".into(),
                schema: s.plan.output_schema.clone(),
                sql: s.sql.clone(),
            });
            let mut inputs = s.plan.relations();
            inputs.dedup();
            for i in inputs {
                edges.push(TopologyEdge {
                    from: i,
                    to: s.name.clone(),
                });
            }
        }
        for s in catalog.sinks.values() {
            let schema = s
                .node
                .as_ref()
                .map(|n| n.schema())
                .or_else(|| catalog.relation_node(&s.input).map(|n| n.schema()))
                .unwrap_or_else(|| std::sync::Arc::new(arrow::datatypes::Schema::empty()));
            nodes.push(TopologyNode {
                name: s.name.clone(),
                node_type: "sink".into(),
                schema,
                sql: s.sql.clone(),
            });
            edges.push(TopologyEdge {
                from: s.input.clone(),
                to: s.name.clone(),
            });
        }
        PipelineTopology { nodes, edges }
    }
}
