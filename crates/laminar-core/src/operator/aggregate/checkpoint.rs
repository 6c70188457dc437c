//! Snapshot and restore of an aggregation's state: the operator's watermarks, then every
//! open window (vectorized layout) or every group and session (row-accumulator layout) with
//! its accumulators' intermediate state, as Arrow IPC batches (see [`crate::snapshot`]).
//!
//! Accumulator state is DataFusion's own partial-aggregation state (`state()` /
//! `merge_batch()`, the contract multi-phase aggregation relies on), so every aggregate
//! DataFusion can run in two phases checkpoints without code of its own. The retracting
//! MIN/MAX/FIRST_VALUE/LAST_VALUE multisets report their whole multiset as state.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryArray, BooleanArray, Int64Array, RecordBatch, RecordBatchOptions,
};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::logical_expr::EmitTo;
use datafusion::scalar::ScalarValue;

use super::{AggregateOperator, AggregateSpec, State};
use crate::error::{CoreError, Result};
use crate::snapshot::{SnapshotReader, SnapshotWriter};

const TAG: &str = "aggregate";
const DELTA_TAG: &str = "aggregate-delta";
const VERSION: u32 = 2;

/// A batch of `columns` (named `c0..`) with `rows` rows, also when there are no columns.
pub(super) fn columns_batch(columns: Vec<ArrayRef>, rows: usize) -> Result<RecordBatch> {
    let fields: Vec<Field> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| Field::new(format!("c{i}"), c.data_type().clone(), true))
        .collect();
    RecordBatch::try_new_with_options(
        Arc::new(Schema::new(fields)),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(rows)),
    )
    .map_err(|e| CoreError::Internal(format!("snapshot batch: {e}")))
}

/// One column of scalars (typed NULLs included) as an array.
pub(super) fn scalars_to_array(values: Vec<ScalarValue>, data_type: &DataType) -> Result<ArrayRef> {
    if values.is_empty() {
        return Ok(arrow::array::new_empty_array(data_type));
    }
    ScalarValue::iter_to_array(values)
        .map_err(|e| CoreError::Internal(format!("snapshot column: {e}")))
}

fn invalid(spec: &AggregateSpec, what: impl std::fmt::Display) -> CoreError {
    CoreError::InvalidData(format!("snapshot of aggregation '{}': {what}", spec.name))
}

pub(super) fn df(spec: &AggregateSpec) -> impl Fn(datafusion::error::DataFusionError) -> CoreError {
    let name = spec.name.clone();
    move |source| CoreError::Evaluation {
        operator: name.clone(),
        source,
    }
}

/// A column of a snapshot batch with its expected type.
pub(super) fn column<'a, T: 'static>(
    spec: &AggregateSpec,
    batch: &'a RecordBatch,
    index: usize,
) -> Result<&'a T> {
    batch
        .columns()
        .get(index)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| {
            invalid(
                spec,
                format!("column {index} is missing or of the wrong type"),
            )
        })
}

impl AggregateOperator {
    /// Watermarks, counters, the layout, and the per-key clocks of keyed watermarks.
    fn write_header(&self, w: &mut SnapshotWriter) {
        w.i64(self.watermark);
        w.i64(self.output_watermark);
        w.u64(self.invalid_rows);
        w.u64(match self.state {
            State::Fast(_) => 0,
            State::General(_) => 1,
            State::Incremental(_) => 2,
        });
        w.bool(self.keyed.is_some());
        if let Some(keyed) = &self.keyed {
            keyed.clocks.snapshot(w);
            w.u64(keyed.retained as u64);
        }
    }

    /// Reads a header written by [`AggregateOperator::write_header`], restoring the key
    /// clocks; returns the watermarks and counter.
    fn read_header(&mut self, r: &mut SnapshotReader<'_>) -> Result<(i64, i64, u64)> {
        let layout = match self.state {
            State::Fast(_) => 0,
            State::General(_) => 1,
            State::Incremental(_) => 2,
        };
        let header = (r.i64()?, r.i64()?, r.u64()?);
        let written = r.u64()?;
        if written == 1 && layout == 2 {
            // Checkpointed before unwindowed changelog aggregations ran column by column:
            // continue in the row-accumulator layout it was written in.
            self.state = State::General(super::general::GeneralState::new(&self.spec, false)?);
        } else if written != layout {
            return Err(invalid(
                &self.spec,
                "the state layout differs from the query's (was the query changed?)",
            ));
        }
        let keyed = r.bool()?;
        match &mut self.keyed {
            Some(state) if keyed => {
                state.clocks.restore(r, std::time::Instant::now())?;
                state.retained = usize::try_from(r.u64()?)
                    .map_err(|_| invalid(&self.spec, "key count overflows"))?;
            }
            None if !keyed => {}
            _ => {
                return Err(invalid(
                    &self.spec,
                    "keyed watermarks were used differently when it was checkpointed",
                ));
            }
        }
        Ok(header)
    }

    pub(super) fn snapshot_state(&mut self) -> Result<Vec<u8>> {
        let mut w = SnapshotWriter::new(TAG, VERSION);
        self.write_header(&mut w);
        match &mut self.state {
            State::Fast(state) => state.snapshot(&self.spec, &mut w)?,
            State::General(state) => state.snapshot(&self.spec, &mut w)?,
            State::Incremental(state) => {
                state.snapshot(&self.spec, self.converter.as_ref(), &mut w)?
            }
        }
        Ok(w.finish())
    }

    /// The changes since the previous snapshot, or `None` when there was none since the
    /// state was built or restored.
    pub(super) fn snapshot_delta_state(&mut self) -> Result<Option<Vec<u8>>> {
        let mut w = SnapshotWriter::new(DELTA_TAG, VERSION);
        self.write_header(&mut w);
        let written = match &mut self.state {
            State::Fast(state) => state.snapshot_delta(&self.spec, &mut w)?,
            State::General(state) => state.snapshot_delta(&self.spec, &mut w)?,
            State::Incremental(state) => {
                state.snapshot_delta(&self.spec, self.converter.as_ref(), &mut w)?
            }
        };
        Ok(written.then(|| w.finish()))
    }

    /// Restores a full snapshot and the incremental snapshots taken after it.
    pub(super) fn restore_state(&mut self, bytes: &[u8], deltas: &[Vec<u8>]) -> Result<()> {
        let mut r = SnapshotReader::new(bytes, TAG, VERSION)?;
        let mut header = self.read_header(&mut r)?;
        let mut readers = Vec::with_capacity(deltas.len());
        for delta in deltas {
            let mut d = SnapshotReader::new(delta, DELTA_TAG, VERSION)?;
            header = self.read_header(&mut d)?;
            readers.push(d);
        }
        match &mut self.state {
            State::Fast(state) => state.restore(&self.spec, &mut r, &mut readers)?,
            State::General(state) => state.restore(&self.spec, &mut r, &mut readers)?,
            State::Incremental(state) => {
                state.restore(&self.spec, self.converter.as_ref(), &mut r, &mut readers)?
            }
        }
        if !r.is_done() || readers.iter().any(|d| !d.is_done()) {
            return Err(invalid(&self.spec, "trailing bytes"));
        }
        let (watermark, output_watermark, invalid_rows) = header;
        self.watermark = watermark;
        self.output_watermark = output_watermark;
        self.invalid_rows = invalid_rows;
        self.spec
            .metrics
            .watermark
            .fetch_max(output_watermark, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

/// Reads the keys and accumulator states of one window or group batch back as arrays:
/// the first `keys` columns are keys, the rest accumulator states in order.
///
/// `widths` gives each aggregate's number of state columns when it differs from its
/// declared state fields (retracting accumulators keep more, e.g. a count beside a sum).
pub(super) fn split_state_columns(
    spec: &AggregateSpec,
    batch: &RecordBatch,
    first: usize,
    widths: Option<&[usize]>,
) -> Result<Vec<Vec<ArrayRef>>> {
    let mut states = Vec::with_capacity(spec.aggregates.len());
    let mut at = first;
    for (index, call) in spec.aggregates.iter().enumerate() {
        let n = match widths.and_then(|w| w.get(index)) {
            Some(n) => *n,
            None => call.function.state_fields().map_err(df(spec))?.len(),
        };
        let end = at + n;
        if end > batch.num_columns() {
            return Err(invalid(
                spec,
                "fewer accumulator state columns than the query needs",
            ));
        }
        states.push(batch.columns()[at..end].to_vec());
        at = end;
    }
    if at != batch.num_columns() {
        return Err(invalid(
            spec,
            "more accumulator state columns than the query needs",
        ));
    }
    Ok(states)
}

/// Helpers for the row-accumulator layout's group rows.
#[derive(Default)]
pub(super) struct GroupColumns {
    pub session: Vec<bool>,
    pub start: Vec<i64>,
    pub end: Vec<i64>,
    pub key: Vec<Vec<u8>>,
    pub weight: Vec<i64>,
    pub dirty: Vec<bool>,
    pub emitted: Vec<bool>,
    pub watermark_key: Vec<Option<Vec<u8>>>,
    pub last: Vec<Option<Vec<ScalarValue>>>,
    pub states: Vec<Vec<ScalarValue>>,
}

/// Fixed columns before the `last` values in a group batch.
pub(super) const GROUP_FIXED: usize = 8;

impl GroupColumns {
    /// The batch: fixed columns, then `has_last` and one column per output field, then the
    /// accumulator states (flattened in aggregate order).
    pub(super) fn finish(self, spec: &AggregateSpec) -> Result<RecordBatch> {
        let rows = self.session.len();
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(BooleanArray::from(self.session)),
            Arc::new(Int64Array::from(self.start)),
            Arc::new(Int64Array::from(self.end)),
            Arc::new(BinaryArray::from_iter_values(self.key.iter())),
            Arc::new(Int64Array::from(self.weight)),
            Arc::new(BooleanArray::from(self.dirty)),
            Arc::new(BooleanArray::from(self.emitted)),
            Arc::new(BinaryArray::from_iter(
                self.watermark_key.iter().map(|k| k.as_deref()),
            )),
        ];
        columns.push(Arc::new(BooleanArray::from_iter(
            self.last.iter().map(|l| Some(l.is_some())),
        )));
        for (i, field) in spec.post_schema.fields().iter().enumerate() {
            let null = ScalarValue::try_from(field.data_type()).map_err(df(spec))?;
            let values = self
                .last
                .iter()
                .map(|l| {
                    l.as_ref()
                        .and_then(|l| l.get(i).cloned())
                        .unwrap_or(null.clone())
                })
                .collect();
            columns.push(scalars_to_array(values, field.data_type())?);
        }
        let widths = self.states.first().map_or(0, Vec::len);
        for j in 0..widths {
            let values: Vec<ScalarValue> = self.states.iter().map(|s| s[j].clone()).collect();
            let data_type = values[0].data_type();
            columns.push(scalars_to_array(values, &data_type)?);
        }
        columns_batch(columns, rows)
    }
}

/// One group row read back.
pub(super) struct GroupRow {
    pub session: bool,
    pub start: i64,
    pub end: i64,
    pub key: Box<[u8]>,
    pub weight: i64,
    pub dirty: bool,
    pub emitted: bool,
    pub watermark_key: Option<Box<[u8]>>,
    pub last: Option<Vec<ScalarValue>>,
}

/// Reads row `row` of a group batch (without the accumulator states).
pub(super) fn group_row(spec: &AggregateSpec, batch: &RecordBatch, row: usize) -> Result<GroupRow> {
    let b = |i| column::<BooleanArray>(spec, batch, i);
    let n = |i| column::<Int64Array>(spec, batch, i);
    let key = column::<BinaryArray>(spec, batch, 3)?;
    let wkey = column::<BinaryArray>(spec, batch, 7)?;
    let has_last = b(GROUP_FIXED)?.value(row);
    let last = if has_last {
        Some(
            (0..spec.post_schema.fields().len())
                .map(|i| {
                    ScalarValue::try_from_array(batch.column(GROUP_FIXED + 1 + i), row)
                        .map_err(df(spec))
                })
                .collect::<Result<Vec<_>>>()?,
        )
    } else {
        None
    };
    Ok(GroupRow {
        session: b(0)?.value(row),
        start: n(1)?.value(row),
        end: n(2)?.value(row),
        key: key.value(row).into(),
        weight: n(4)?.value(row),
        dirty: b(5)?.value(row),
        emitted: b(6)?.value(row),
        watermark_key: (!wkey.is_null(row)).then(|| wkey.value(row).into()),
        last,
    })
}

/// First column of the accumulator states in a group batch.
pub(super) fn group_state_start(spec: &AggregateSpec) -> usize {
    GROUP_FIXED + 1 + spec.post_schema.fields().len()
}

/// Takes the vectorized state of one window out and puts it back: returns the key columns
/// and the accumulator states, leaving the window as it was.
pub(super) fn emit_and_reinsert(
    spec: &AggregateSpec,
    groups: Option<&mut Box<dyn datafusion::physical_plan::aggregates::group_values::GroupValues>>,
    accumulators: &mut [Box<dyn datafusion::logical_expr::GroupsAccumulator>],
    num_groups: usize,
) -> Result<(Vec<ArrayRef>, Vec<Vec<ArrayRef>>)> {
    let keys = match groups {
        Some(g) => {
            let keys = g.emit(EmitTo::All).map_err(df(spec))?;
            let mut indices = Vec::new();
            g.intern(&keys, &mut indices).map_err(df(spec))?;
            keys
        }
        None => Vec::new(),
    };
    let indices: Vec<usize> = (0..num_groups).collect();
    let mut states = Vec::with_capacity(accumulators.len());
    for acc in accumulators.iter_mut() {
        let state = acc.state(EmitTo::All).map_err(df(spec))?;
        acc.merge_batch(&state, &indices, num_groups)
            .map_err(df(spec))?;
        states.push(state);
    }
    Ok((keys, states))
}

/// Checks that the count read fits the batch.
pub(super) fn rows_of(spec: &AggregateSpec, batch: &RecordBatch, expected: usize) -> Result<()> {
    if batch.num_rows() != expected {
        return Err(invalid(
            spec,
            format!("{} rows where {expected} were recorded", batch.num_rows()),
        ));
    }
    Ok(())
}

/// Reads an optional batch written by [`write_optional_batch`].
pub(super) fn read_optional_batch(r: &mut SnapshotReader<'_>) -> Result<Option<RecordBatch>> {
    if r.bool()? {
        Ok(Some(r.batch()?))
    } else {
        Ok(None)
    }
}

/// Writes a batch unless it has no columns (IPC cannot carry those).
pub(super) fn write_optional_batch(w: &mut SnapshotWriter, batch: &RecordBatch) -> Result<()> {
    let present = batch.num_columns() > 0;
    w.bool(present);
    if present {
        w.batch(batch)?;
    }
    Ok(())
}
