//! Ingestion: the push handles of a source and the validation every pushed batch passes
//! before anything is enqueued (schema by name, types, NOT NULL, NULL event time).

use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use arrow::array::{Array, ArrayRef};
use arrow::compute::cast;
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use crossbeam_channel::TrySendError;
use laminar_core::message::Message;
use laminar_core::metrics::NodeMetrics;
use laminar_core::record::Record;
use laminar_core::runtime::SourceInput;
use laminar_core::time::EventTimeColumn;

use crate::config::BackpressureStrategy;
use crate::error::DbError;

/// Everything a push needs, shared by the handles of one source.
#[derive(Clone)]
pub(crate) struct IngestTarget {
    pub(crate) name: String,
    pub(crate) schema: SchemaRef,
    pub(crate) event_time: Option<EventTimeColumn>,
    pub(crate) input: SourceInput,
    pub(crate) backpressure: BackpressureStrategy,
    pub(crate) metrics: Arc<NodeMetrics>,
    /// The write-ahead log of a durable database: every push is logged before it is
    /// acknowledged.
    pub(crate) log: Option<Arc<crate::durability::Durability>>,
}

impl IngestTarget {
    /// Validates and enqueues one batch according to the backpressure policy.
    pub(crate) fn push(&self, batch: RecordBatch) -> Result<(), DbError> {
        let batch = validate_batch(&self.name, &self.schema, self.event_time.as_ref(), &batch)?;
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.enqueue(Message::Batch(batch))
    }

    pub(crate) fn enqueue(&self, msg: Message) -> Result<(), DbError> {
        match &self.log {
            Some(log) => log.log_push(&self.name, &msg, || self.enqueue_unlogged(msg.clone())),
            None => self.enqueue_unlogged(msg),
        }
    }

    /// Enqueues without waiting; a full queue hands the message back (nothing is logged).
    pub(crate) fn try_enqueue(&self, msg: Message) -> Result<(), Message> {
        let send = |msg: Message| match self.input.try_send(msg) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(m) | TrySendError::Disconnected(m)) => Err(m),
        };
        match &self.log {
            Some(log) => {
                let mut back = None;
                let logged = log.log_push(&self.name, &msg, || {
                    send(msg.clone()).map_err(|m| {
                        back = Some(m);
                        DbError::ChannelFull(self.name.clone())
                    })
                });
                match (logged, back) {
                    (Ok(()), _) => Ok(()),
                    (Err(_), Some(m)) => Err(m),
                    (Err(_), None) => Err(msg),
                }
            }
            None => send(msg),
        }
    }

    fn enqueue_unlogged(&self, msg: Message) -> Result<(), DbError> {
        match self.backpressure {
            BackpressureStrategy::Block => {
                self.input.send_blocking(msg).map_err(|_| DbError::Shutdown)
            }
            BackpressureStrategy::Reject => match self.input.try_send(msg) {
                Ok(()) => Ok(()),
                Err(TrySendError::Full(_)) => Err(DbError::ChannelFull(self.name.clone())),
                Err(TrySendError::Disconnected(_)) => Err(DbError::Shutdown),
            },
            BackpressureStrategy::DropOldest => {
                let dropped = self
                    .input
                    .send_evicting(msg)
                    .map_err(|_| DbError::Shutdown)?;
                if dropped > 0 {
                    self.metrics
                        .rows_dropped
                        .fetch_add(dropped, Ordering::Relaxed);
                }
                Ok(())
            }
        }
    }

    pub(crate) fn watermark(&self, ts: i64) -> Result<(), DbError> {
        // Watermarks always wait for room: a `reject` policy applies to data, not to time.
        let send = || {
            self.input
                .send_blocking(Message::Watermark(ts))
                .map_err(|_| DbError::Shutdown)
        };
        match &self.log {
            Some(log) => log.log_push(&self.name, &Message::Watermark(ts), send),
            None => send(),
        }
    }
}

/// Checks a pushed batch against the declared schema and returns it in declared column order
/// with the declared field nullability. Columns are matched by name; TIMESTAMP columns accept
/// any unit or time zone and string columns any string encoding (cast). Nothing is enqueued
/// when this fails.
pub(crate) fn validate_batch(
    source: &str,
    declared: &SchemaRef,
    event_time: Option<&EventTimeColumn>,
    batch: &RecordBatch,
) -> Result<RecordBatch, DbError> {
    let mismatch = |detail: String| DbError::SchemaMismatch {
        object: source.to_string(),
        detail,
    };
    let pushed = batch.schema();
    for field in pushed.fields() {
        if declared.field_with_name(field.name()).is_err() {
            return Err(mismatch(format!(
                "column '{}' ({}) is not declared; declared columns: {}",
                field.name(),
                field.data_type(),
                declared
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(declared.fields().len());
    for field in declared.fields() {
        let Some((index, pushed_field)) = pushed.column_with_name(field.name()) else {
            return Err(mismatch(format!(
                "column '{}' ({}) is missing from the pushed batch",
                field.name(),
                field.data_type()
            )));
        };
        let column = batch.column(index);
        let column = if pushed_field.data_type() == field.data_type() {
            column.clone()
        } else if compatible(pushed_field.data_type(), field.data_type()) {
            cast(column, field.data_type()).map_err(|e| {
                mismatch(format!(
                    "column '{}': cannot convert {} to {}: {e}",
                    field.name(),
                    pushed_field.data_type(),
                    field.data_type()
                ))
            })?
        } else {
            return Err(mismatch(format!(
                "column '{}' expects {}, got {}",
                field.name(),
                field.data_type(),
                pushed_field.data_type()
            )));
        };
        if !field.is_nullable() && column.null_count() > 0 {
            let row = (0..column.len()).find(|&i| column.is_null(i)).unwrap_or(0);
            return Err(DbError::InsertError {
                object: source.to_string(),
                detail: format!("NULL in NOT NULL column '{}' at row {row}", field.name()),
            });
        }
        columns.push(column);
    }
    let out = RecordBatch::try_new_with_options(
        declared.clone(),
        columns,
        &arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )
    .map_err(|e| mismatch(e.to_string()))?;
    if let Some(Err(detail)) = laminar_core::message::change_ops(&out) {
        return Err(DbError::InsertError {
            object: source.to_string(),
            detail,
        });
    }
    if let Some(et) = event_time {
        // The worker computes the maximum; here only NULLs are rejected.
        et.check_not_null(&out)
            .map_err(|detail| DbError::InsertError {
                object: source.to_string(),
                detail,
            })?;
    }
    Ok(out)
}

fn compatible(from: &DataType, to: &DataType) -> bool {
    use DataType::*;
    matches!(
        (from, to),
        (Timestamp(_, _), Timestamp(_, _))
            | (Utf8 | LargeUtf8 | Utf8View, Utf8 | LargeUtf8 | Utf8View)
            | (
                Binary | LargeBinary | BinaryView,
                Binary | LargeBinary | BinaryView
            )
            | (Null, _)
    )
}

/// Untyped (Arrow) push handle of a source. Clone it for more producers.
#[derive(Clone)]
pub struct SourceHandle {
    pub(crate) target: IngestTarget,
}

impl SourceHandle {
    /// Source name.
    pub fn name(&self) -> &str {
        &self.target.name
    }

    /// Declared schema.
    pub fn schema(&self) -> SchemaRef {
        self.target.schema.clone()
    }

    /// Validates and pushes a batch (all or nothing).
    pub fn push_arrow(&self, batch: RecordBatch) -> Result<(), DbError> {
        self.target.push(batch)
    }

    /// Advances the source watermark manually (monotonic; lower values are ignored).
    pub fn watermark(&self, ts_ms: i64) -> Result<(), DbError> {
        self.target.watermark(ts_ms)
    }

    /// Messages waiting in the source queue.
    pub fn pending(&self) -> usize {
        self.target.input.pending()
    }

    /// Queue capacity (messages).
    pub fn capacity(&self) -> usize {
        self.target.input.capacity()
    }

    /// True when the queue is more than 80% full.
    pub fn is_backpressured(&self) -> bool {
        self.pending() * 10 > self.capacity() * 8
    }

    /// The source's current watermark, if any.
    pub fn current_watermark(&self) -> Option<i64> {
        self.target.metrics.watermark()
    }
}

/// Typed push handle of a source for a [`Record`] type. Clone it for more producers.
pub struct TypedSourceHandle<T: Record> {
    pub(crate) inner: SourceHandle,
    pub(crate) _marker: PhantomData<fn(T)>,
}

impl<T: Record> Clone for TypedSourceHandle<T> {
    fn clone(&self) -> Self {
        TypedSourceHandle {
            inner: self.inner.clone(),
            _marker: PhantomData,
        }
    }
}

impl<T: Record> TypedSourceHandle<T> {
    /// Pushes one row.
    pub fn push(&self, row: T) -> Result<(), DbError> {
        self.push_batch(std::slice::from_ref(&row)).map(|_| ())
    }

    /// Pushes one row without waiting: a full queue (any policy) hands the row back.
    pub fn try_push(&self, row: T) -> Result<(), T> {
        let batch = match T::to_record_batch(std::slice::from_ref(&row)) {
            Ok(b) => b,
            Err(_) => return Err(row),
        };
        let Ok(batch) = validate_batch(
            &self.inner.target.name,
            &self.inner.target.schema,
            self.inner.target.event_time.as_ref(),
            &batch,
        ) else {
            return Err(row);
        };
        match self.inner.target.try_enqueue(Message::Batch(batch)) {
            Ok(()) => Ok(()),
            Err(_) => Err(row),
        }
    }

    /// Pushes rows as one batch; returns the number accepted.
    pub fn push_batch(&self, rows: &[T]) -> Result<usize, DbError> {
        if rows.is_empty() {
            return Ok(0);
        }
        let batch = T::to_record_batch(rows).map_err(|e| DbError::SchemaMismatch {
            object: self.inner.target.name.clone(),
            detail: e.to_string(),
        })?;
        self.inner.push_arrow(batch)?;
        Ok(rows.len())
    }

    /// Pushes an Arrow batch directly.
    pub fn push_arrow(&self, batch: RecordBatch) -> Result<(), DbError> {
        self.inner.push_arrow(batch)
    }

    /// Advances the watermark manually.
    pub fn watermark(&self, ts_ms: i64) -> Result<(), DbError> {
        self.inner.watermark(ts_ms)
    }

    /// Messages waiting.
    pub fn pending(&self) -> usize {
        self.inner.pending()
    }

    /// Capacity.
    pub fn capacity(&self) -> usize {
        self.inner.capacity()
    }

    /// More than 80% full.
    pub fn is_backpressured(&self) -> bool {
        self.inner.is_backpressured()
    }

    /// Current watermark.
    pub fn current_watermark(&self) -> Option<i64> {
        self.inner.current_watermark()
    }

    /// The untyped handle.
    pub fn untyped(&self) -> SourceHandle {
        self.inner.clone()
    }
}

/// Checks that a [`Record`] type's schema matches a declared schema by name and type.
pub(crate) fn check_record_schema<T: Record>(
    source: &str,
    declared: &SchemaRef,
) -> Result<(), DbError> {
    let record = T::schema();
    for field in record.fields() {
        match declared.field_with_name(field.name()) {
            Err(_) => {
                return Err(DbError::SchemaMismatch {
                    object: source.to_string(),
                    detail: format!("record field '{}' is not a declared column", field.name()),
                });
            }
            Ok(d)
                if d.data_type() != field.data_type()
                    && !compatible(field.data_type(), d.data_type()) =>
            {
                return Err(DbError::SchemaMismatch {
                    object: source.to_string(),
                    detail: format!(
                        "column '{}' expects {}, record field has {}",
                        field.name(),
                        d.data_type(),
                        field.data_type()
                    ),
                });
            }
            Ok(_) => {}
        }
    }
    for field in declared.fields() {
        if record.field_with_name(field.name()).is_err() {
            return Err(DbError::SchemaMismatch {
                object: source.to_string(),
                detail: format!("declared column '{}' has no record field", field.name()),
            });
        }
    }
    Ok(())
}
