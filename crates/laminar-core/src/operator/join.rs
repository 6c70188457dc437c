//! Joins over time: one operator runs a left-deep chain of join steps.
//!
//! Input 0's relation is the left side of step 0; each step's right side is either another
//! input relation (interval, ASOF and temporal joins) or a reference table (lookup joins).
//! Rows a step emits are the left input of the next step, and the rows of the last step go
//! through a filter/projection chain (`WHERE` and `SELECT` above the joins).
//!
//! Time: the operator tracks the watermark of every input relation separately (a step's
//! expiry and emission depend on the *other* side's watermark, SPEC 2.13), and a step's
//! output watermark is the left input of the next one. The operator's output watermark is
//! the last step's, expressed on the event time of the base relation (the right relation's
//! for a `RIGHT` join).

mod asof;
mod interval;
mod lookup;
mod store;
mod updating;

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch, UInt32Array};
use arrow::compute::{filter_record_batch, take};
use arrow::datatypes::{DataType, Int64Type, SchemaRef, TimeUnit};
use datafusion::physical_expr::PhysicalExpr;

use crate::error::{CoreError, Result};
use crate::message::{END_OF_TIME, Message, NO_WATERMARK};
use crate::metrics::NodeMetrics;
use crate::operator::stateless::run_steps;
use crate::operator::{Operator, StateSize, Step};
use crate::snapshot::{SnapshotReader, SnapshotWriter};
use crate::table::TableRef;
use crate::time::{EventTimeKind, WatermarkMerger};

pub use asof::AsofDirection;

/// Which unmatched rows an outer join keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinType {
    /// Matches only.
    Inner,
    /// Unmatched left rows, NULL-padded.
    Left,
    /// Unmatched right rows, NULL-padded.
    Right,
    /// Both.
    Full,
    /// Left rows with at least one match (`EXISTS`, `IN`); updating joins only.
    Semi,
    /// Left rows without a match (`NOT EXISTS`, `NOT IN`); updating joins only.
    Anti,
}

impl JoinType {
    /// True when unmatched left rows are emitted.
    pub fn keeps_left(self) -> bool {
        matches!(self, JoinType::Left | JoinType::Full)
    }

    /// True when unmatched right rows are emitted.
    pub fn keeps_right(self) -> bool {
        matches!(self, JoinType::Right | JoinType::Full)
    }

    /// SQL spelling.
    pub fn sql(self) -> &'static str {
        match self {
            JoinType::Inner => "INNER",
            JoinType::Left => "LEFT",
            JoinType::Right => "RIGHT",
            JoinType::Full => "FULL",
            JoinType::Semi => "SEMI",
            JoinType::Anti => "ANTI",
        }
    }
}

/// An event-time column of a join input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeColumn {
    /// Column index in the input's schema.
    pub index: usize,
    /// Storage kind.
    pub kind: EventTimeKind,
}

/// What a join step does.
#[derive(Debug, Clone)]
pub enum JoinKind {
    /// Stream-stream join with a time bound: `lower <= right.ts - left.ts <= upper` (ms).
    Interval {
        /// Left event time.
        left_time: TimeColumn,
        /// Right event time.
        right_time: TimeColumn,
        /// Lower bound of `right.ts - left.ts`.
        lower: i64,
        /// Upper bound of `right.ts - left.ts`.
        upper: i64,
    },
    /// ASOF join (a temporal join `FOR SYSTEM_TIME AS OF left.ts` is a backward ASOF join).
    Asof {
        /// Left event time.
        left_time: TimeColumn,
        /// Right event time.
        right_time: TimeColumn,
        /// Which right rows qualify.
        direction: AsofDirection,
        /// Maximum distance in ms, if any.
        tolerance: Option<i64>,
    },
    /// Lookup of the current row of a table by its primary key.
    Lookup {
        /// The table.
        table: TableRef,
    },
    /// Regular join of two changelogs, itself a changelog (see `updating.rs`).
    Updating {
        /// A `NOT IN` ANTI join: SQL NULL semantics over its single key.
        null_aware: bool,
        /// Left columns then right columns: the schema the condition reads (the joined
        /// schema of a SEMI/ANTI join holds only the left columns).
        pair_schema: SchemaRef,
        /// State TTL in ms of the sides that have an event-time column below.
        ttl: Option<i64>,
        /// Event time of the left side, when its rows expire after the TTL.
        left_time: Option<TimeColumn>,
        /// Event time of the right side, when its rows expire after the TTL.
        right_time: Option<TimeColumn>,
    },
}

/// One join step.
#[derive(Debug, Clone)]
pub struct JoinStepSpec {
    /// Outer-join behaviour.
    pub join_type: JoinType,
    /// Equality keys over the left input (same length and types as `right_keys`; for a
    /// lookup, in the table's primary-key order).
    pub left_keys: Vec<Arc<dyn PhysicalExpr>>,
    /// Equality keys over the right input (empty for a lookup).
    pub right_keys: Vec<Arc<dyn PhysicalExpr>>,
    /// Predicate over the joined row (left columns then right columns) that a pair must
    /// satisfy besides the key equality; `None` = none.
    pub condition: Option<Arc<dyn PhysicalExpr>>,
    /// Schema of the left input.
    pub left_schema: SchemaRef,
    /// Schema of the right input.
    pub right_schema: SchemaRef,
    /// Schema of the joined rows: left fields then right fields.
    pub joined_schema: SchemaRef,
    /// The join algorithm.
    pub kind: JoinKind,
    /// The input relation feeding the right side (`None` for a lookup).
    pub right_relation: Option<usize>,
}

/// One input edge of the join operator.
#[derive(Debug, Clone)]
pub struct JoinInput {
    /// Relation it belongs to: 0 = the base (left of step 0), otherwise the
    /// `right_relation` of a step.
    pub relation: usize,
    /// Filter/projection chain from the upstream's rows to the relation's schema.
    pub chain: Vec<Step>,
}

/// Everything the join operator needs.
#[derive(Debug, Clone)]
pub struct JoinSpec {
    /// Stream name.
    pub name: String,
    /// Input edges in connection order.
    pub inputs: Vec<JoinInput>,
    /// Join steps, left-deep in written order.
    pub steps: Vec<JoinStepSpec>,
    /// Chain over the last step's joined rows (`WHERE`, `SELECT`).
    pub post: Vec<Step>,
    /// Output schema.
    pub output_schema: SchemaRef,
    /// Metrics (late rows are counted here).
    pub metrics: Arc<NodeMetrics>,
}

/// Tag of join snapshots.
const SNAPSHOT_TAG: &str = "laminar.join";

/// The per-step state machines.
trait StepState: Send {
    /// Left rows arrive; returns joined rows ready now.
    fn on_left(&mut self, batch: RecordBatch, time: &StepTime) -> Result<Vec<RecordBatch>>;
    /// Right rows arrive.
    fn on_right(&mut self, batch: RecordBatch, time: &StepTime) -> Result<Vec<RecordBatch>>;
    /// The watermarks moved: expire, resolve and emit.
    fn advance(&mut self, time: &StepTime) -> Result<Vec<RecordBatch>>;
    /// Output watermark given the inputs' watermarks.
    fn output_watermark(&self, time: &StepTime) -> i64;
    /// State held.
    fn state_size(&self) -> StateSize;
    /// Writes the state.
    fn snapshot(&self, w: &mut SnapshotWriter) -> Result<()>;
    /// Replaces the state with a snapshot's.
    fn restore(&mut self, r: &mut SnapshotReader<'_>) -> Result<()>;
}

/// Watermarks seen by one step, and where late rows are counted.
struct StepTime {
    left: i64,
    right: i64,
    metrics: Arc<NodeMetrics>,
}

impl StepTime {
    fn count_late(&self, rows: usize) {
        if rows > 0 {
            use std::sync::atomic::Ordering;
            self.metrics
                .late_total
                .fetch_add(rows as u64, Ordering::Relaxed);
            self.metrics
                .late_dropped
                .fetch_add(rows as u64, Ordering::Relaxed);
        }
    }
}

/// See the module docs.
pub struct JoinOperator {
    name: String,
    inputs: Vec<JoinInput>,
    /// Per input edge: its index among its relation's edges.
    local: Vec<usize>,
    /// Per relation: watermark of its edges.
    relations: Vec<WatermarkMerger>,
    steps: Vec<Box<dyn StepState>>,
    right_relations: Vec<Option<usize>>,
    /// Each step's algorithm, as recorded in snapshots.
    kinds: Vec<&'static str>,
    times: Vec<StepTime>,
    post: Vec<Step>,
    output_schema: SchemaRef,
    merged: i64,
    emitted_watermark: i64,
}

impl JoinOperator {
    /// Builds the operator; fails when the spec is inconsistent.
    pub fn new(spec: JoinSpec) -> Result<JoinOperator> {
        let relation_count = spec
            .inputs
            .iter()
            .map(|i| i.relation + 1)
            .chain(
                spec.steps
                    .iter()
                    .filter_map(|s| s.right_relation.map(|r| r + 1)),
            )
            .max()
            .unwrap_or(1);
        let mut relations: Vec<WatermarkMerger> = (0..relation_count)
            .map(|_| WatermarkMerger::new(0))
            .collect();
        let local = spec
            .inputs
            .iter()
            .map(|i| relations[i.relation].add_input())
            .collect();
        let mut steps: Vec<Box<dyn StepState>> = Vec::new();
        for step in &spec.steps {
            steps.push(match &step.kind {
                JoinKind::Interval { .. } => Box::new(interval::IntervalStep::new(step)?),
                JoinKind::Asof { .. } => Box::new(asof::AsofStep::new(step)?),
                JoinKind::Lookup { table } => Box::new(lookup::LookupStep::new(step, table)?),
                JoinKind::Updating { .. } => Box::new(updating::UpdatingStep::new(step)?),
            });
        }
        let times = spec
            .steps
            .iter()
            .map(|_| StepTime {
                left: NO_WATERMARK,
                right: NO_WATERMARK,
                metrics: spec.metrics.clone(),
            })
            .collect();
        Ok(JoinOperator {
            name: spec.name,
            inputs: spec.inputs,
            local,
            relations,
            right_relations: spec.steps.iter().map(|s| s.right_relation).collect(),
            kinds: spec
                .steps
                .iter()
                .map(|s| match s.kind {
                    JoinKind::Interval { .. } => "interval",
                    JoinKind::Asof { .. } => "asof",
                    JoinKind::Lookup { .. } => "lookup",
                    JoinKind::Updating { .. } => "updating",
                })
                .collect(),
            steps,
            times,
            post: spec.post,
            output_schema: spec.output_schema,
            merged: NO_WATERMARK,
            emitted_watermark: NO_WATERMARK,
        })
    }

    /// A relation's watermark; a relation whose every edge is idle follows the operator's
    /// merged watermark, so an idle side does not hold the other side's rows forever.
    fn relation_watermark(&self, relation: usize) -> i64 {
        let merger = &self.relations[relation];
        if merger.all_idle() {
            merger.current().max(self.merged)
        } else {
            merger.current()
        }
    }

    /// Feeds rows into step `from` as its left input and on through the later steps.
    fn push_left(
        &mut self,
        from: usize,
        batches: Vec<RecordBatch>,
        out: &mut Vec<Message>,
    ) -> Result<()> {
        let mut pending = batches;
        for j in from..self.steps.len() {
            let mut next = Vec::new();
            for b in pending {
                if b.num_rows() > 0 {
                    next.extend(self.steps[j].on_left(b, &self.times[j])?);
                }
            }
            pending = next;
        }
        for b in pending {
            if b.num_rows() == 0 {
                continue;
            }
            let result = run_steps(&self.name, &self.post, b, None)?;
            if result.num_rows() > 0 {
                out.push(Message::Batch(result));
            }
        }
        Ok(())
    }

    /// Recomputes every step's watermarks, lets steps expire and resolve rows, and emits the
    /// output watermark when it advanced.
    fn advance(&mut self, out: &mut Vec<Message>) -> Result<()> {
        let mut left = self.relation_watermark(0);
        for j in 0..self.steps.len() {
            let right = match self.right_relations[j] {
                Some(r) => self.relation_watermark(r),
                None => END_OF_TIME,
            };
            self.times[j].left = left;
            self.times[j].right = right;
            let produced = self.steps[j].advance(&self.times[j])?;
            if !produced.is_empty() {
                self.push_left(j + 1, produced, out)?;
            }
            // Never beyond the minimum of the step's inputs (SPEC 2.13), and held back
            // further by rows the step may still emit.
            left = self.steps[j]
                .output_watermark(&self.times[j])
                .min(self.times[j].left)
                .min(self.times[j].right);
        }
        if left > self.emitted_watermark {
            self.emitted_watermark = left;
            out.push(Message::Watermark(left));
        }
        Ok(())
    }
}

impl Operator for JoinOperator {
    fn output_schema(&self) -> SchemaRef {
        self.output_schema.clone()
    }

    fn on_batch(&mut self, input: usize, batch: RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        let Some(edge) = self.inputs.get(input) else {
            return Err(CoreError::Internal(format!(
                "join '{}' received input {input} but has {} inputs",
                self.name,
                self.inputs.len()
            )));
        };
        let relation = edge.relation;
        let batch = run_steps(&self.name, &edge.chain, batch, None)?;
        self.relations[relation].mark_active(self.local[input]);
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if relation == 0 {
            self.push_left(0, vec![batch], out)?;
        } else if let Some(step) = self
            .right_relations
            .iter()
            .position(|r| *r == Some(relation))
        {
            let produced = self.steps[step].on_right(batch, &self.times[step])?;
            self.push_left(step + 1, produced, out)?;
        }
        self.advance(out)
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut Vec<Message>) -> Result<()> {
        self.merged = watermark;
        self.advance(out)
    }

    fn on_input_watermark(
        &mut self,
        input: usize,
        watermark: i64,
        out: &mut Vec<Message>,
    ) -> Result<()> {
        if let Some(edge) = self.inputs.get(input) {
            self.relations[edge.relation].update(self.local[input], watermark);
        }
        self.advance(out)
    }

    fn on_input_idle(&mut self, input: usize, out: &mut Vec<Message>) -> Result<()> {
        if let Some(edge) = self.inputs.get(input) {
            self.relations[edge.relation].set_idle(self.local[input]);
        }
        self.advance(out)
    }

    fn on_barrier(&mut self, epoch: u64, out: &mut Vec<Message>) -> Result<()> {
        out.push(Message::Barrier(epoch));
        Ok(())
    }

    fn on_end(&mut self, out: &mut Vec<Message>) -> Result<()> {
        // Every input already reported END_OF_TIME through `on_input_watermark`.
        self.merged = END_OF_TIME;
        self.advance(out)
    }

    fn snapshot(&mut self) -> Result<Option<Vec<u8>>> {
        let mut w = SnapshotWriter::new(SNAPSHOT_TAG, 1);
        w.u64(self.relations.len() as u64);
        for merger in &self.relations {
            let (inputs, output) = merger.state();
            w.u64(inputs.len() as u64);
            for (watermark, idle) in inputs {
                w.i64(watermark);
                w.bool(idle);
            }
            w.i64(output);
        }
        w.i64(self.merged);
        w.i64(self.emitted_watermark);
        w.u64(self.steps.len() as u64);
        for ((step, time), spec) in self.steps.iter().zip(&self.times).zip(&self.kinds) {
            w.bytes(spec.as_bytes());
            w.i64(time.left);
            w.i64(time.right);
            step.snapshot(&mut w)?;
        }
        Ok(Some(w.finish()))
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<()> {
        let mut r = SnapshotReader::new(snapshot, SNAPSHOT_TAG, 1)?;
        let mismatch = |what: &str| {
            CoreError::InvalidData(format!(
                "snapshot of join '{}' has a different {what}: the query changed",
                self.name
            ))
        };
        if r.count()? != self.relations.len() {
            return Err(mismatch("number of inputs"));
        }
        for merger in &mut self.relations {
            let n = r.count()?;
            let mut inputs = Vec::with_capacity(n);
            for _ in 0..n {
                inputs.push((r.i64()?, r.bool()?));
            }
            let output = r.i64()?;
            if !merger.restore(&inputs, output) {
                return Err(mismatch("number of input edges"));
            }
        }
        self.merged = r.i64()?;
        self.emitted_watermark = r.i64()?;
        if r.count()? != self.steps.len() {
            return Err(mismatch("number of join steps"));
        }
        for ((step, time), kind) in self.steps.iter_mut().zip(&mut self.times).zip(&self.kinds) {
            if r.bytes()? != kind.as_bytes() {
                return Err(mismatch("kind of join step"));
            }
            time.left = r.i64()?;
            time.right = r.i64()?;
            step.restore(&mut r)?;
        }
        if !r.is_done() {
            return Err(mismatch("layout (bytes left over)"));
        }
        Ok(())
    }

    fn state_size(&self) -> StateSize {
        let mut size = StateSize::default();
        for s in &self.steps {
            let s = s.state_size();
            size.rows += s.rows;
            size.bytes += s.bytes;
        }
        size
    }
}

// ---------------------------------------------------------------------------------------
// Helpers shared by the steps.

/// Evaluates key expressions over a batch.
fn eval_keys(keys: &[Arc<dyn PhysicalExpr>], batch: &RecordBatch) -> Result<Vec<ArrayRef>> {
    crate::operator::rows::evaluate_all("join key", keys, batch)
}

/// Casts key columns to the given types where they differ.
fn cast_columns(columns: Vec<ArrayRef>, types: &[DataType]) -> Result<Vec<ArrayRef>> {
    columns
        .into_iter()
        .zip(types)
        .map(|(c, t)| {
            if c.data_type() == t {
                Ok(c)
            } else {
                arrow::compute::cast(&c, t)
                    .map_err(|e| CoreError::Internal(format!("join key cast: {e}")))
            }
        })
        .collect()
}

/// Event times of a batch in epoch ms (`None` for NULL).
pub(crate) fn times_ms(batch: &RecordBatch, time: TimeColumn) -> Result<Vec<Option<i64>>> {
    let column = batch.column(time.index);
    let raw: Vec<Option<i64>> = match column.data_type() {
        DataType::Int64 => column.as_primitive::<Int64Type>().iter().collect(),
        DataType::Timestamp(unit, _) => match unit {
            TimeUnit::Second => column
                .as_primitive::<arrow::datatypes::TimestampSecondType>()
                .iter()
                .collect(),
            TimeUnit::Millisecond => column
                .as_primitive::<arrow::datatypes::TimestampMillisecondType>()
                .iter()
                .collect(),
            TimeUnit::Microsecond => column
                .as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                .iter()
                .collect(),
            TimeUnit::Nanosecond => column
                .as_primitive::<arrow::datatypes::TimestampNanosecondType>()
                .iter()
                .collect(),
        },
        other => {
            return Err(CoreError::Internal(format!(
                "join time column has type {other}"
            )));
        }
    };
    Ok(raw
        .into_iter()
        .map(|v| v.map(|v| time.kind.to_millis(v)))
        .collect())
}

/// Joined rows from left and right columns.
fn joined(schema: &SchemaRef, left: Vec<ArrayRef>, right: Vec<ArrayRef>) -> Result<RecordBatch> {
    let mut columns = left;
    columns.extend(right);
    let rows = columns.first().map_or(0, |c| c.len());
    RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(rows)),
    )
    .map_err(|e| CoreError::Internal(format!("joined batch: {e}")))
}

/// Left rows padded with NULL right columns.
fn pad_right(
    schema: &SchemaRef,
    left: &RecordBatch,
    right_schema: &SchemaRef,
) -> Result<RecordBatch> {
    joined(
        schema,
        left.columns().to_vec(),
        crate::table::null_batch(right_schema, left.num_rows()),
    )
}

/// Right rows padded with NULL left columns.
fn pad_left(
    schema: &SchemaRef,
    left_schema: &SchemaRef,
    right: &RecordBatch,
) -> Result<RecordBatch> {
    joined(
        schema,
        crate::table::null_batch(left_schema, right.num_rows()),
        right.columns().to_vec(),
    )
}

/// Evaluates a pair condition: true rows only (NULL counts as false).
fn condition_mask(
    condition: &Option<Arc<dyn PhysicalExpr>>,
    batch: &RecordBatch,
) -> Result<Option<BooleanArray>> {
    let Some(condition) = condition else {
        return Ok(None);
    };
    let value = condition
        .evaluate(batch)
        .and_then(|v| v.into_array(batch.num_rows()))
        .map_err(|source| CoreError::Evaluation {
            operator: "join condition".into(),
            source,
        })?;
    let mask = value
        .as_boolean_opt()
        .ok_or_else(|| CoreError::Internal("join condition is not a boolean".into()))?;
    // NULL -> false.
    let values = mask.values()
        & &mask.nulls().map_or_else(
            || arrow::buffer::BooleanBuffer::new_set(mask.len()),
            |n| n.inner().clone(),
        );
    Ok(Some(BooleanArray::new(values, None)))
}

/// Applies a mask to a batch.
fn apply_mask(batch: &RecordBatch, mask: &BooleanArray) -> Result<RecordBatch> {
    filter_record_batch(batch, mask).map_err(|e| CoreError::Internal(e.to_string()))
}

/// Rows of `batch` at `indices`.
fn take_rows(batch: &RecordBatch, indices: &[u32]) -> Result<RecordBatch> {
    if indices.len() == batch.num_rows() && indices.iter().enumerate().all(|(i, &v)| i as u32 == v)
    {
        return Ok(batch.clone());
    }
    let idx = UInt32Array::from(indices.to_vec());
    let columns = batch
        .columns()
        .iter()
        .map(|c| take(c.as_ref(), &idx, None))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| CoreError::Internal(e.to_string()))?;
    RecordBatch::try_new_with_options(
        batch.schema(),
        columns,
        &arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(indices.len())),
    )
    .map_err(|e| CoreError::Internal(e.to_string()))
}

/// `w + offset` as an expiry threshold: nothing expires before the first watermark, and
/// everything expires at the end of time.
fn threshold(w: i64, offset: i64) -> i64 {
    if w == NO_WATERMARK {
        i64::MIN
    } else if w == END_OF_TIME {
        i64::MAX
    } else {
        w.saturating_add(offset)
    }
}

#[cfg(test)]
mod tests;
