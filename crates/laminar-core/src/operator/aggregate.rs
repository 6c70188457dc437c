//! Streaming aggregation: windowed (tumble, hop, cumulate, session) and unwindowed
//! `GROUP BY` with every EMIT mode, lateness, late-row side outputs and HAVING.
//!
//! The operator receives rows after the query's input chain (filters and projections below
//! the aggregation), assigns them to windows by event time, groups them by key and feeds
//! DataFusion accumulators, so every aggregate function DataFusion registers works here.
//! Three state layouts serve different EMIT modes:
//!
//! - [`fast`]: one DataFusion `GroupValues` hash table and `GroupsAccumulator`s per open
//!   window — the batch engine's vectorized inner loop — for modes that emit each window
//!   exactly once when it closes (`ON WINDOW CLOSE`, `FINAL`, `ON WATERMARK` without
//!   lateness) over append-only input.
//! - [`general`]: one row `Accumulator` set per group, which can be evaluated without being
//!   consumed, retracted (changelog input) and merged (sessions). It serves the updating
//!   modes (`CHANGES`, `ON UPDATE`, `EVERY`, `ON WATERMARK` with lateness), sessions and
//!   changelog input, and remembers each group's last emitted row to produce `U-`/`U+`
//!   pairs and `D` retractions (also when a group stops satisfying HAVING).
//! - [`incremental`]: unwindowed changelog aggregation of append-only input whose aggregates
//!   are COUNT / SUM / MIN / MAX / AVG of BIGINT or DOUBLE, computed column by column as in
//!   [`fast`] but readable without being consumed, so `U-` / `U+` come from vectorized reads.
//!
//! Rows are "too late" when every window they belong to has `end + lateness <= W`; they go
//! to the `LATE DATA TO` side output when there is one (never for `EMIT FINAL`) and are
//! dropped otherwise, always counted in the node metrics.

mod checkpoint;
mod fast;
mod general;
mod incremental;
mod retract;
mod window;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int64Array, StringArray};
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::{DataType, Int64Type, SchemaRef};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use arrow::row::{RowConverter, SortField};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;

use crate::error::{CoreError, Result};
use crate::message::{END_OF_TIME, Message, NO_WATERMARK, OP_COLUMN, change_ops};
use crate::metrics::NodeMetrics;
use crate::operator::stateless::{run_chain, run_steps};
use crate::operator::{Operator, StateSize, Step};
use crate::time::{EventTimeKind, KeyClocks, KeyedWatermark};

pub use retract::retractable;
pub use window::WindowSpec;

/// When an aggregation emits (SPEC 2.9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmitMode {
    /// Once per window when the watermark passes its end; corrections within lateness.
    OnWatermark,
    /// Exactly once when the watermark passes `end + lateness`.
    OnWindowClose,
    /// As `OnWindowClose`, and rows after close are always dropped.
    Final,
    /// After every input batch, for each changed group.
    OnUpdate,
    /// Every given number of milliseconds (processing time) for changed groups, and the
    /// final value when the watermark passes a window's end.
    Every(u64),
    /// A changelog of every change (the unwindowed default).
    Changes,
}

impl EmitMode {
    /// True when the output can contain retractions (`U-`/`U+`/`D`), given the lateness.
    pub fn is_updating(self, lateness: i64) -> bool {
        match self {
            EmitMode::OnWatermark => lateness > 0,
            EmitMode::OnWindowClose | EmitMode::Final => false,
            EmitMode::OnUpdate | EmitMode::Every(_) | EmitMode::Changes => true,
        }
    }
}

/// One aggregate function call of the query.
#[derive(Debug, Clone)]
pub struct AggregateCall {
    /// The DataFusion aggregate (arguments, DISTINCT, ORDER BY, return type).
    pub function: Arc<AggregateFunctionExpr>,
    /// `FILTER (WHERE ..)`, evaluated on the aggregation's input rows.
    pub filter: Option<Arc<dyn PhysicalExpr>>,
}

impl AggregateCall {
    /// Argument expressions as accumulators receive them: the arguments, then the
    /// aggregate's ORDER BY expressions (as DataFusion's own aggregation does).
    fn inputs(&self) -> Vec<Arc<dyn PhysicalExpr>> {
        let mut exprs = self.function.expressions();
        exprs.extend(self.function.order_bys().iter().map(|s| s.expr.clone()));
        exprs
    }
}

/// Which output column, if any, carries the output's event time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputTime {
    /// No event-time column: the input watermark is forwarded unchanged.
    None,
    /// The window start: the output watermark is held back to the earliest start any future
    /// output row can have.
    WindowStart,
    /// The window end.
    WindowEnd,
}

/// Receives too-late rows (`LATE DATA TO`).
pub trait LateRows: Send {
    /// Delivers rows; an error means they could not be delivered (counted as dropped).
    fn deliver(&mut self, batch: RecordBatch) -> std::result::Result<(), String>;
}

/// Everything an aggregation operator is built from (planned once at CREATE time).
pub struct AggregateSpec {
    /// Operator name (the stream).
    pub name: String,
    /// Per-input chains producing `input_schema` (filters/projections below the aggregation).
    pub chains: Vec<Vec<Step>>,
    /// Schema of the rows that reach the aggregation.
    pub input_schema: SchemaRef,
    /// Index and storage of the event-time column in `input_schema`.
    pub event_time: Option<(usize, EventTimeKind)>,
    /// The window, if any.
    pub window: Option<WindowSpec>,
    /// Group key expressions other than the window.
    pub keys: Vec<Arc<dyn PhysicalExpr>>,
    /// The aggregate calls.
    pub aggregates: Vec<AggregateCall>,
    /// Layout of aggregated rows: the group columns (the window start at
    /// `window_position`), the aggregate values, then the window end when windowed.
    pub aggregate_schema: SchemaRef,
    /// Position of the window start among the group columns.
    pub window_position: usize,
    /// Steps over aggregated rows: HAVING, then the SELECT list.
    pub post: Vec<Step>,
    /// Schema after `post` (without `_op`).
    pub post_schema: SchemaRef,
    /// EMIT mode.
    pub emit: EmitMode,
    /// Allowed lateness in milliseconds.
    pub lateness: i64,
    /// Destination of too-late rows.
    pub late_rows: Option<Box<dyn LateRows>>,
    /// Event-time column of the output.
    pub output_time: OutputTime,
    /// Metrics of the node (late counters are written here).
    pub metrics: Arc<NodeMetrics>,
    /// Keyed watermark of the input (`watermark.key`) when the key column is among `keys`:
    /// its position in `keys` and the settings. Each key's windows then close by that key's
    /// watermark (SPEC 3).
    pub keyed_watermark: Option<(usize, KeyedWatermark)>,
}

/// Per-key clocks of a keyed aggregation.
struct KeyedState {
    clocks: KeyClocks,
    key_index: usize,
    /// Table size after the last forgetting of keys at or below the input watermark.
    retained: usize,
}

/// The aggregation operator (see the module documentation).
pub struct AggregateOperator {
    spec: AggregateSpec,
    output_schema: SchemaRef,
    updating: bool,
    converter: Option<RowConverter>,
    state: State,
    watermark: i64,
    output_watermark: i64,
    last_periodic: Instant,
    invalid_rows: u64,
    keyed: Option<KeyedState>,
}

enum State {
    Fast(fast::FastState),
    General(general::GeneralState),
    Incremental(incremental::IncrementalState),
}

/// A batch after the input chain, with everything the aggregation needs evaluated.
pub(crate) struct Prepared {
    pub batch: RecordBatch,
    /// Event time per row in epoch milliseconds.
    pub times: Option<Vec<i64>>,
    /// Z-set weight per row (changelog input), `None` for append-only input.
    pub weights: Option<Vec<i64>>,
    /// Group key columns (without the window).
    pub keys: Vec<ArrayRef>,
    /// Accumulator inputs per aggregate.
    pub args: Vec<Vec<ArrayRef>>,
    /// FILTER masks per aggregate.
    pub filters: Vec<Option<BooleanArray>>,
}

impl AggregateOperator {
    /// Builds the operator; errors when the spec is inconsistent.
    pub fn new(spec: AggregateSpec) -> Result<AggregateOperator> {
        if let Some(window) = &spec.window {
            window
                .validate()
                .map_err(|reason| CoreError::Internal(format!("{}: {reason}", spec.name)))?;
            if spec.event_time.is_none() {
                return Err(CoreError::Internal(format!(
                    "{}: a window needs an event-time column",
                    spec.name
                )));
            }
        }
        let updating = spec.emit.is_updating(spec.lateness);
        let mut fields: Vec<_> = spec.post_schema.fields().iter().cloned().collect();
        if updating {
            fields.push(Arc::new(arrow::datatypes::Field::new(
                OP_COLUMN,
                DataType::Utf8,
                false,
            )));
        }
        let output_schema = Arc::new(arrow::datatypes::Schema::new(fields));
        let changelog = crate::message::is_changelog(&spec.input_schema);
        let key_types: Vec<DataType> = spec
            .keys
            .iter()
            .map(|k| k.data_type(&spec.input_schema))
            .collect::<std::result::Result<_, _>>()
            .map_err(|source| CoreError::Evaluation {
                operator: spec.name.clone(),
                source,
            })?;
        let converter = if key_types.is_empty() {
            None
        } else {
            Some(
                RowConverter::new(key_types.iter().cloned().map(SortField::new).collect())
                    .map_err(|source| CoreError::Arrow {
                        operator: spec.name.clone(),
                        source,
                    })?,
            )
        };
        let keyed = match &spec.keyed_watermark {
            Some((key_index, settings)) if spec.window.is_some() => {
                let key_type = key_types.get(*key_index).ok_or_else(|| {
                    CoreError::Internal(format!(
                        "{}: watermark key position {key_index} is not a group key",
                        spec.name
                    ))
                })?;
                Some(KeyedState {
                    clocks: KeyClocks::new(settings.clone(), key_type).map_err(|reason| {
                        CoreError::Internal(format!("{}: {reason}", spec.name))
                    })?,
                    key_index: *key_index,
                    retained: 0,
                })
            }
            _ => None,
        };
        let fast_ok = matches!(
            spec.emit,
            EmitMode::OnWindowClose | EmitMode::Final | EmitMode::OnWatermark
        ) && !updating
            && keyed.is_none()
            && !changelog
            && spec.window.is_some_and(|w| !w.is_session());
        let state = if incremental::supports(&spec, changelog) {
            State::Incremental(incremental::IncrementalState::new(&spec, &key_types)?)
        } else if fast_ok {
            State::Fast(fast::FastState::new(&spec, &key_types)?)
        } else {
            State::General(general::GeneralState::new(&spec, changelog)?)
        };
        Ok(AggregateOperator {
            output_schema,
            updating,
            converter,
            state,
            watermark: NO_WATERMARK,
            output_watermark: NO_WATERMARK,
            last_periodic: Instant::now(),
            invalid_rows: 0,
            keyed,
            spec,
        })
    }

    /// True when the output is a changelog (it has an `_op` column).
    pub fn is_updating(&self) -> bool {
        self.updating
    }

    /// Rows dropped because their event time was NULL.
    pub fn invalid_rows(&self) -> u64 {
        self.invalid_rows
    }

    fn eval_error(&self, source: datafusion::error::DataFusionError) -> CoreError {
        CoreError::Evaluation {
            operator: self.spec.name.clone(),
            source,
        }
    }

    fn arrow_error(&self, source: arrow::error::ArrowError) -> CoreError {
        CoreError::Arrow {
            operator: self.spec.name.clone(),
            source,
        }
    }

    fn prepare(&mut self, input: usize, batch: RecordBatch) -> Result<Option<Prepared>> {
        let mut batch = run_chain(&self.spec.name, &self.spec.chains, input, batch)?;
        if batch.num_rows() == 0 {
            return Ok(None);
        }
        let mut times = None;
        if let Some((index, kind)) = self.spec.event_time {
            let column = batch.column(index);
            if column.null_count() > 0 {
                // NULL event time is never windowed: counted and dropped.
                let valid = arrow::compute::is_not_null(column).map_err(|e| self.arrow_error(e))?;
                self.invalid_rows += column.null_count() as u64;
                self.spec
                    .metrics
                    .errors
                    .fetch_add(column.null_count() as u64, Ordering::Relaxed);
                batch = filter_record_batch(&batch, &valid).map_err(|e| self.arrow_error(e))?;
                if batch.num_rows() == 0 {
                    return Ok(None);
                }
            }
            let raw =
                cast(batch.column(index), &DataType::Int64).map_err(|e| self.arrow_error(e))?;
            let raw = raw.as_primitive::<Int64Type>();
            times = Some(raw.values().iter().map(|&v| kind.to_millis(v)).collect());
        }
        let weights = match change_ops(&batch) {
            None => None,
            Some(Ok(ops)) => Some(ops.into_iter().map(|op| op.weight()).collect()),
            Some(Err(reason)) => {
                return Err(CoreError::EventTime {
                    node: self.spec.name.clone(),
                    reason,
                });
            }
        };
        let rows = batch.num_rows();
        let keys = self
            .spec
            .keys
            .iter()
            .map(|k| k.evaluate(&batch).and_then(|v| v.into_array(rows)))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| self.eval_error(e))?;
        let mut args = Vec::with_capacity(self.spec.aggregates.len());
        let mut filters = Vec::with_capacity(self.spec.aggregates.len());
        for call in &self.spec.aggregates {
            let values = call
                .inputs()
                .iter()
                .map(|e| e.evaluate(&batch).and_then(|v| v.into_array(rows)))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| self.eval_error(e))?;
            args.push(values);
            let filter = match &call.filter {
                None => None,
                Some(f) => {
                    let mask = f
                        .evaluate(&batch)
                        .and_then(|v| v.into_array(rows))
                        .map_err(|e| self.eval_error(e))?;
                    Some(mask.as_boolean().clone())
                }
            };
            filters.push(filter);
        }
        Ok(Some(Prepared {
            batch,
            times,
            weights,
            keys,
            args,
            filters,
        }))
    }

    /// Sends the rows of `late` (a mask over `prepared.batch`) to the side output or drops
    /// them, counting either way.
    fn handle_late(&mut self, prepared: &Prepared, late: &BooleanArray) -> Result<()> {
        let count = late.true_count() as u64;
        if count == 0 {
            return Ok(());
        }
        let metrics = &self.spec.metrics;
        metrics.late_total.fetch_add(count, Ordering::Relaxed);
        let side = if self.spec.emit == EmitMode::Final {
            None
        } else {
            self.spec.late_rows.as_mut()
        };
        match side {
            Some(side) => {
                let rows = filter_record_batch(&prepared.batch, late).map_err(|source| {
                    CoreError::Arrow {
                        operator: self.spec.name.clone(),
                        source,
                    }
                })?;
                match side.deliver(rows) {
                    Ok(()) => metrics.late_side_output.fetch_add(count, Ordering::Relaxed),
                    Err(reason) => {
                        tracing::warn!(stream = %self.spec.name, %reason, rows = count, "late rows could not be delivered to the side output and were dropped");
                        metrics.late_dropped.fetch_add(count, Ordering::Relaxed)
                    }
                };
            }
            None => {
                metrics.late_dropped.fetch_add(count, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// The output watermark for input watermark `w`.
    fn output_watermark_for(&self, w: i64) -> i64 {
        if w == END_OF_TIME || w == NO_WATERMARK {
            return w;
        }
        let Some(window) = self.spec.window else {
            return w;
        };
        let bound = match self.spec.output_time {
            OutputTime::None => return w,
            OutputTime::WindowEnd => w.saturating_sub(self.spec.lateness),
            OutputTime::WindowStart => w
                .saturating_sub(self.spec.lateness)
                .saturating_sub(window.span()),
        };
        let retained = match &self.state {
            State::Fast(s) => s.min_retained(self.spec.output_time),
            State::General(s) => s.min_retained(&self.spec),
            State::Incremental(_) => None,
        };
        retained.map_or(bound, |r| r.min(bound))
    }

    fn emit_watermark(&mut self, out: &mut Vec<Message>) {
        // Every key's windows close at or after the input watermark, so the input watermark
        // bounds the output also when keyed.
        let w = self.output_watermark_for(self.watermark);
        if w > self.output_watermark {
            self.output_watermark = w;
            out.push(Message::Watermark(w));
        }
    }

    /// Builds the aggregated-row batch from group columns, the window bounds and aggregate
    /// values.
    pub(crate) fn aggregate_batch(
        spec: &AggregateSpec,
        keys: Vec<ArrayRef>,
        window: Option<(&[i64], &[i64])>,
        values: Vec<ArrayRef>,
        rows: usize,
    ) -> Result<RecordBatch> {
        let arrow_error = |source| CoreError::Arrow {
            operator: spec.name.clone(),
            source,
        };
        let mut columns = keys;
        let mut end = None;
        if let Some((starts, ends)) = window {
            let field = spec.aggregate_schema.field(spec.window_position);
            let start = time_column(starts, field.data_type()).map_err(arrow_error)?;
            columns.insert(spec.window_position, start);
            let end_field = spec.aggregate_schema.fields().last().expect("window end");
            end = Some(time_column(ends, end_field.data_type()).map_err(arrow_error)?);
        }
        columns.extend(values);
        columns.extend(end);
        // Aggregate values can be NULL where the planner's schema says otherwise (for example
        // a window whose rows were all filtered by FILTER); relax nullability.
        let options = RecordBatchOptions::new().with_row_count(Some(rows));
        let columns = columns
            .into_iter()
            .zip(spec.aggregate_schema.fields())
            .map(|(c, f)| {
                if c.data_type() == f.data_type() {
                    Ok(c)
                } else {
                    cast(&c, f.data_type())
                }
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(arrow_error)?;
        RecordBatch::try_new_with_options(relaxed(&spec.aggregate_schema), columns, &options)
            .map_err(arrow_error)
    }

    /// Applies HAVING and the SELECT list; returns the rows and, per output row, the index
    /// of its aggregated row.
    pub(crate) fn post(
        spec: &AggregateSpec,
        batch: RecordBatch,
    ) -> Result<(RecordBatch, Vec<u32>)> {
        let mut rows: Vec<u32> = (0..batch.num_rows() as u32).collect();
        let out = run_steps(&spec.name, &spec.post, batch, Some(&mut rows))?;
        Ok((out, rows))
    }

    /// Emits every changed group of every window (EMIT EVERY ticks and end of input).
    fn emit_all_dirty(&mut self, out: &mut Vec<Message>) -> Result<()> {
        if let State::General(state) = &mut self.state
            && let Some(batch) = state.emit_dirty(
                &self.spec,
                self.converter.as_ref(),
                &self.output_schema,
                false,
            )?
        {
            self.push_output(batch, out);
        }
        Ok(())
    }

    /// Emits and frees what the current watermarks close, then the output watermark.
    fn close_windows(&mut self, out: &mut Vec<Message>) -> Result<()> {
        let converter = self.converter.as_ref();
        let emitted = match &mut self.state {
            State::Fast(state) => state.advance(&self.spec, self.watermark)?,
            State::Incremental(_) => Vec::new(),
            State::General(state) => state.advance(
                &self.spec,
                converter,
                &self.output_schema,
                &general::GroupWatermarks {
                    input: self.watermark,
                    clocks: self.keyed.as_ref().map(|k| &k.clocks),
                },
            )?,
        };
        for batch in emitted {
            self.push_output(batch, out);
        }
        self.emit_watermark(out);
        Ok(())
    }

    fn push_output(&self, batch: RecordBatch, out: &mut Vec<Message>) {
        if batch.num_rows() > 0 {
            out.push(Message::Batch(batch));
        }
    }
}

/// `schema` with every field nullable.
pub fn relaxed(schema: &SchemaRef) -> SchemaRef {
    if schema.fields().iter().all(|f| f.is_nullable()) {
        return schema.clone();
    }
    Arc::new(arrow::datatypes::Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
    ))
}

/// A column of epoch-millisecond times in the event-time column's type.
fn time_column(
    millis: &[i64],
    data_type: &DataType,
) -> std::result::Result<ArrayRef, arrow::error::ArrowError> {
    let raw: Vec<i64> = match EventTimeKind::for_type(data_type) {
        Some(kind) => millis.iter().map(|&m| kind.from_millis(m)).collect(),
        None => millis.to_vec(),
    };
    let array: ArrayRef = Arc::new(Int64Array::from(raw));
    if data_type == &DataType::Int64 {
        Ok(array)
    } else {
        cast(&array, data_type)
    }
}

/// Adds the `_op` column to updating output.
pub(crate) fn with_ops(
    schema: &SchemaRef,
    batch: &RecordBatch,
    ops: Vec<&'static str>,
) -> Result<RecordBatch> {
    let mut columns = batch.columns().to_vec();
    columns.push(Arc::new(StringArray::from(ops)));
    let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    RecordBatch::try_new_with_options(relaxed(schema), columns, &options).map_err(|source| {
        CoreError::Arrow {
            operator: "aggregation output".into(),
            source,
        }
    })
}

impl Operator for AggregateOperator {
    fn output_schema(&self) -> SchemaRef {
        self.output_schema.clone()
    }

    fn on_batch(&mut self, input: usize, batch: RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        let Some(prepared) = self.prepare(input, batch)? else {
            return Ok(());
        };
        // Keyed watermarks: each row is judged by its key's watermark before this batch.
        let keyed_rows = match &self.keyed {
            None => None,
            Some(keyed) => {
                let rows = keyed
                    .clocks
                    .encode(&prepared.keys[keyed.key_index])
                    .map_err(|reason| {
                        CoreError::Internal(format!("{}: {reason}", self.spec.name))
                    })?;
                let watermarks: Vec<i64> = (0..rows.num_rows())
                    .map(|r| keyed.clocks.effective(rows.row(r).data(), self.watermark))
                    .collect();
                Some((rows, watermarks))
            }
        };
        let row_watermarks = match &keyed_rows {
            Some((rows, watermarks)) => general::RowWatermarks::PerRow(watermarks, rows),
            None => general::RowWatermarks::All(self.watermark),
        };
        let late = match &mut self.state {
            State::Incremental(state) => {
                if let Some(batch) = state.ingest(
                    &self.spec,
                    self.converter.as_ref(),
                    &self.output_schema,
                    &prepared,
                )? {
                    self.push_output(batch, out);
                }
                None
            }
            State::Fast(state) => state.ingest(&self.spec, &prepared, self.watermark)?,
            State::General(state) => state.ingest(
                &self.spec,
                self.converter.as_ref(),
                &prepared,
                &row_watermarks,
            )?,
        };
        if let Some(late) = late {
            self.handle_late(&prepared, &late)?;
        }
        let converter = self.converter.as_ref();
        if let State::General(state) = &mut self.state
            && matches!(
                self.spec.emit,
                EmitMode::OnUpdate | EmitMode::Changes | EmitMode::OnWatermark
            )
        {
            // ON WATERMARK corrects windows that were already emitted; the other two emit
            // every change.
            let only_emitted = self.spec.emit == EmitMode::OnWatermark;
            if let Some(batch) =
                state.emit_dirty(&self.spec, converter, &self.output_schema, only_emitted)?
            {
                self.push_output(batch, out);
            }
        }
        if let State::General(state) = &mut self.state
            && state.take_recut_due()
        {
            self.close_windows(out)?;
        }
        if let (Some(keyed), Some((rows, _))) = (self.keyed.as_mut(), &keyed_rows) {
            let times = prepared.times.as_deref().unwrap_or(&[]);
            // Rows judged late do not advance their key's clock either way; observing them
            // is harmless (their times are below the key's watermark plus lateness).
            if keyed.clocks.observe(rows, times, Instant::now()).advanced {
                self.close_windows(out)?;
            }
        }
        Ok(())
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut Vec<Message>) -> Result<()> {
        if watermark <= self.watermark {
            return Ok(());
        }
        self.watermark = watermark;
        if let Some(keyed) = self.keyed.as_mut()
            && keyed.clocks.len() > keyed.retained * 2 + 1024
        {
            // Keys at or below the input watermark close by it anyway: forget them
            // (amortized, so the table stays proportional to the keys ahead).
            keyed.clocks.forget_at_or_below(watermark);
            keyed.retained = keyed.clocks.len();
        }
        self.close_windows(out)
    }

    fn on_barrier(&mut self, epoch: u64, out: &mut Vec<Message>) -> Result<()> {
        out.push(Message::Barrier(epoch));
        Ok(())
    }

    fn on_end(&mut self, out: &mut Vec<Message>) -> Result<()> {
        // End of input closes every window; unwindowed groups stay as they are.
        if self.spec.window.is_some() {
            self.on_watermark(END_OF_TIME, out)?;
        } else if let EmitMode::Every(_) = self.spec.emit {
            self.emit_all_dirty(out)?;
        }
        Ok(())
    }

    fn on_tick(&mut self, now: Instant, out: &mut Vec<Message>) -> Result<()> {
        let EmitMode::Every(interval) = self.spec.emit else {
            return Ok(());
        };
        if now.duration_since(self.last_periodic) < Duration::from_millis(interval) {
            return Ok(());
        }
        self.last_periodic = now;
        self.emit_all_dirty(out)
    }

    fn initial_output(&mut self) -> Result<Option<RecordBatch>> {
        // A global aggregation (no keys, no window) has one row from the start, as in batch
        // SQL: the aggregates of no rows.
        if self.spec.window.is_some() || !self.spec.keys.is_empty() || !self.updating {
            return Ok(None);
        }
        match &mut self.state {
            State::General(state) => state.start_global(&self.spec, &self.output_schema),
            State::Incremental(state) => state.start_global(&self.spec, &self.output_schema),
            State::Fast(_) => Ok(None),
        }
    }

    fn state_size(&self) -> StateSize {
        match &self.state {
            State::Fast(s) => s.size(),
            State::General(s) => s.size(),
            State::Incremental(s) => s.size(),
        }
    }

    fn snapshot(&mut self) -> Result<Option<Vec<u8>>> {
        self.snapshot_state().map(Some)
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<()> {
        self.restore_state(snapshot, &[])
    }

    fn snapshot_delta(&mut self) -> Result<Option<Vec<u8>>> {
        self.snapshot_delta_state()
    }

    fn restore_chain(&mut self, base: &[u8], deltas: &[Vec<u8>]) -> Result<()> {
        self.restore_state(base, deltas)
    }
}

#[cfg(test)]
mod tests;
