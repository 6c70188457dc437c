//! The two connector traits: [`SourceConnector`] (produces Arrow batches into a
//! pipeline) and [`SinkConnector`] (consumes the batches a pipeline emits).
//!
//! Both are synchronous and poll-driven: the runtime calls them from its own
//! threads, and a source that has nothing right now says so
//! ([`SourcePoll::Pending`]) instead of blocking. Sinks take part in epochs
//! (checkpoints) through `begin_epoch` / `pre_commit` / `commit_epoch` /
//! `rollback_epoch`; what they guarantee is stated by [`SinkCapabilities`].

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;

use crate::error::ConnectorError;

/// The result of one [`SourceConnector::poll_batch`].
#[derive(Debug, Clone)]
pub enum SourcePoll {
    /// A non-empty batch in the source's schema.
    Batch(RecordBatch),
    /// Nothing available right now (watch mode waiting for files, rate limit);
    /// poll again later.
    Pending,
    /// A finite source is exhausted; every later poll returns `End` again.
    End,
}

/// Counters a source keeps about itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourceConnectorMetrics {
    /// Rows delivered in batches.
    pub records_read: u64,
    /// Rows dropped by `error.policy = 'skip'`.
    pub bad_records: u64,
    /// Input bytes consumed (file bytes for FILES; in-memory batch size for DATAGEN).
    pub bytes_read: u64,
    /// Files read to the end.
    pub files_read: u64,
    /// Times the source stopped its service from sending (Kafka: paused its partitions)
    /// because the queue its batches go into was filling up.
    pub pauses: u64,
}

/// What the runtime tells a source before its first poll ([`SourceConnector::attach`]).
#[derive(Clone)]
pub struct SourceEnvironment {
    /// How full (0.0 to 1.0) the queue the source's batches go into is; callable from any
    /// thread at any time.
    pub queue_fill: Arc<dyn Fn() -> f64 + Send + Sync>,
    /// Asks for a checkpoint soon (without periodic checkpoints it does nothing).
    pub request_checkpoint: Arc<dyn Fn() + Send + Sync>,
    /// Checkpoints record the source's position and run periodically (so that
    /// `request_checkpoint` is answered): [`SourceConnector::checkpoint_completed`] will be
    /// called.
    pub checkpointed: bool,
}

impl SourceEnvironment {
    /// An environment for a source read outside a pipeline: an always-empty queue, no
    /// checkpoints.
    pub fn detached() -> Self {
        SourceEnvironment {
            queue_fill: Arc::new(|| 0.0),
            request_checkpoint: Arc::new(|| {}),
            checkpointed: false,
        }
    }
}

impl std::fmt::Debug for SourceEnvironment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceEnvironment")
            .field("checkpointed", &self.checkpointed)
            .finish_non_exhaustive()
    }
}

/// A producer of Arrow batches.
///
/// Contract: every batch returned has exactly [`SourceConnector::schema`] as
/// its schema and at least one row; `poll_batch` never blocks for more than a
/// few milliseconds.
pub trait SourceConnector: Send {
    /// Schema of produced batches; always equals the declared schema passed at
    /// creation (same field names, types, nullability), or the schema inferred
    /// from the input when none was declared.
    fn schema(&self) -> SchemaRef;

    /// Returns up to `max_rows` rows (`max_rows` 0 is treated as 1).
    fn poll_batch(&mut self, max_rows: usize) -> Result<SourcePoll, ConnectorError>;

    /// Current counters.
    fn metrics(&self) -> SourceConnectorMetrics;

    /// Called once before the first poll (after any [`SourceConnector::seek`]) with what
    /// the runtime offers the source: the fill of its queue (a source whose service pushes
    /// data, Kafka, stops fetching above a high-water mark instead of buffering) and
    /// whether and how checkpoints happen. A source never attached behaves as attached to
    /// [`SourceEnvironment::detached`].
    fn attach(&mut self, _environment: SourceEnvironment) {}

    /// Where the source is now, as text a later [`SourceConnector::seek`] accepts: a
    /// checkpoint records it so that a restart resumes right after the last row returned.
    /// `None` when the source cannot resume (a restart reads from its beginning).
    fn position(&self) -> Option<String> {
        None
    }

    /// Resumes at a position from [`SourceConnector::position`], before the first poll.
    fn seek(&mut self, position: &str) -> Result<(), ConnectorError> {
        Err(ConnectorError::Unsupported(format!(
            "this source cannot resume at a checkpointed position ({position})"
        )))
    }

    /// A checkpoint that recorded `position` (from [`SourceConnector::position`]) is durable:
    /// the source may tell its service (Kafka commits the offsets to its consumer group, for
    /// monitoring tools; recovery always uses the checkpoint's positions). Best effort:
    /// failures are the connector's to log.
    fn checkpoint_completed(&mut self, _position: &str) {}

    /// The input's partitions, when the source reads several that advance independently
    /// (Kafka): the declared column that names a row's partition and every partition's
    /// value in it. The source then keeps one watermark per partition and reports their
    /// minimum, holding it back until every partition has delivered rows or gone idle.
    /// Called once at creation (it may contact the source's service).
    fn watermark_partitions(
        &mut self,
    ) -> Result<Option<(String, arrow::array::ArrayRef)>, ConnectorError> {
        Ok(None)
    }

    /// Releases resources; polling after `close` is not supported.
    fn close(&mut self) -> Result<(), ConnectorError> {
        Ok(())
    }
}

/// What a sink guarantees and accepts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkCapabilities {
    /// Output of an epoch becomes visible exactly once (after `commit_epoch`).
    pub exactly_once: bool,
    /// Writing the same epoch twice has the effect of writing it once.
    pub idempotent: bool,
    /// Accepts updating input as upserts by key.
    pub upsert: bool,
    /// Accepts updating (changelog) input and writes the operation with each row.
    pub changelog: bool,
    /// Uses `pre_commit` / `commit_epoch` as a two-phase commit.
    pub two_phase_commit: bool,
    /// Can split its output by the values of some columns.
    pub partitioned: bool,
}

/// Counters a sink keeps about itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkConnectorMetrics {
    /// Rows accepted by `write_batch`.
    pub records_written: u64,
    /// Bytes written (encoded bytes for files and STDOUT, Arrow memory size for BLACKHOLE).
    pub bytes_written: u64,
    /// Write or commit failures.
    pub errors: u64,
    /// Data files made visible.
    pub files_committed: u64,
    /// The last epoch passed to a successful `commit_epoch`.
    pub last_committed_epoch: Option<u64>,
}

/// A consumer of Arrow batches.
///
/// Epoch protocol (section 4.5 of the spec): `begin_epoch(e)`, writes,
/// `pre_commit(e)` (make epoch e's data durable but invisible), then either
/// `commit_epoch(e)` (make it visible; may be retried) or `rollback_epoch(e)`
/// (discard everything not yet committed). Sinks that never see an epoch call
/// treat `close` as the only commit point.
pub trait SinkConnector: Send {
    /// What this sink guarantees.
    fn capabilities(&self) -> SinkCapabilities;

    /// Accepts one batch in the input schema given at creation.
    fn write_batch(&mut self, batch: &RecordBatch) -> Result<(), ConnectorError>;

    /// Settles what a previous run left behind, before anything is written: output
    /// pre-committed for an epoch up to `committed` (the last epoch whose checkpoint
    /// completed) is committed, everything else uncommitted is discarded. `None`: no
    /// checkpoint completed, discard everything uncommitted.
    fn recover(&mut self, _committed: Option<u64>) -> Result<(), ConnectorError> {
        Ok(())
    }

    /// Epoch `epoch` starts.
    fn begin_epoch(&mut self, _epoch: u64) -> Result<(), ConnectorError> {
        Ok(())
    }

    /// Makes everything written for `epoch` durable, ready to commit.
    fn pre_commit(&mut self, _epoch: u64) -> Result<(), ConnectorError> {
        Ok(())
    }

    /// Called right after a successful `pre_commit(epoch)`: bytes the checkpoint of `epoch`
    /// keeps for this sink, handed back through [`SinkConnector::restore_pre_commit_state`]
    /// when that checkpoint is recovered. A sink whose pre-committed output may not survive
    /// a crash by itself (a Kafka transaction, which the next producer with the same
    /// transactional id aborts) keeps here what it needs to write that output again.
    fn pre_commit_state(&mut self) -> Result<Option<Vec<u8>>, ConnectorError> {
        Ok(None)
    }

    /// Before [`SinkConnector::recover`]: what [`SinkConnector::pre_commit_state`]
    /// returned for the checkpoint being recovered.
    fn restore_pre_commit_state(&mut self, _state: &[u8]) -> Result<(), ConnectorError> {
        Ok(())
    }

    /// Makes `epoch` (and any earlier pre-committed epoch) visible.
    fn commit_epoch(&mut self, _epoch: u64) -> Result<(), ConnectorError> {
        Ok(())
    }

    /// Discards everything not yet committed (epoch `epoch` and later).
    fn rollback_epoch(&mut self, _epoch: u64) -> Result<(), ConnectorError> {
        Ok(())
    }

    /// Called periodically (about every 100 ms) with no data so time-based
    /// rollover can happen.
    fn tick(&mut self) -> Result<(), ConnectorError> {
        Ok(())
    }

    /// Pushes buffered bytes to the operating system.
    fn flush(&mut self) -> Result<(), ConnectorError>;

    /// Clean end: flush and make everything written visible/committed.
    fn close(&mut self) -> Result<(), ConnectorError>;

    /// Current counters.
    fn metrics(&self) -> SinkConnectorMetrics;
}
