//! Vectorized changelog state for the most common updating aggregation: an unwindowed
//! `GROUP BY` over append-only input, emitting every change (`EMIT CHANGES`, the default, or
//! `ON UPDATE`), whose aggregates are all `COUNT`, `SUM`, `MIN`, `MAX` or `AVG` of a BIGINT
//! or DOUBLE (`COUNT(*)` included).
//!
//! Groups are numbered by DataFusion's `GroupValues` (the batch engine's vectorized hash
//! table). Each aggregate is a plain vector per group that, unlike a DataFusion
//! `GroupsAccumulator`, can be read for any set of groups without being consumed. A batch
//! then costs a few passes over its columns: intern the keys, read the touched groups'
//! values (their `U-` rows), fold the batch in, read them again (their `U+` rows), run HAVING
//! and the SELECT list over both, and pair the results; a group whose row did not change
//! emits nothing, a group that starts or stops satisfying HAVING emits `I` or `D`. The
//! row-accumulator layout ([`super::general`]) does the same one `Accumulator` call and one
//! `ScalarValue` row at a time.
//!
//! Results equal DataFusion's own accumulators: integer sums wrap, as DataFusion's `SUM`
//! does; sums and averages of doubles add in arrival order, as its grouped aggregation does;
//! an aggregate over no non-NULL value is NULL (`COUNT` is 0).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, UInt32Array};
use arrow::compute::{interleave, take};
use arrow::datatypes::{DataType, Float64Type, Int64Type, Schema};
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, SortField};
use datafusion::physical_plan::aggregates::group_values::{GroupValues, new_group_values};
use datafusion::physical_plan::aggregates::order::GroupOrdering;

use super::{AggregateOperator, AggregateSpec, EmitMode, Prepared, with_ops};
use crate::error::{CoreError, Result};
use crate::operator::StateSize;

/// What one aggregate computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Count,
    SumInt,
    SumFloat,
    MinInt,
    MaxInt,
    Avg,
}

impl Kind {
    /// The kind of `function(argument type)` when this layout computes it, with the result
    /// type DataFusion gives it.
    fn of(function: &str, argument: &DataType) -> Option<(Kind, DataType)> {
        use DataType::{Float64, Int64};
        Some(match (function, argument) {
            ("count", t) if t != &DataType::Null => (Kind::Count, Int64),
            ("sum", Int64) => (Kind::SumInt, Int64),
            ("sum", Float64) => (Kind::SumFloat, Float64),
            ("min", Int64) => (Kind::MinInt, Int64),
            ("max", Int64) => (Kind::MaxInt, Int64),
            ("avg", Float64) => (Kind::Avg, Float64),
            _ => return None,
        })
    }

    fn is_int(self) -> bool {
        matches!(self, Kind::SumInt | Kind::MinInt | Kind::MaxInt)
    }

    fn is_float(self) -> bool {
        matches!(self, Kind::SumFloat | Kind::Avg)
    }
}

/// One aggregate's value per group.
struct Values {
    kind: Kind,
    /// Non-NULL inputs folded in, per group.
    counts: Vec<i64>,
    /// Sum, minimum or maximum of an integer aggregate.
    ints: Vec<i64>,
    /// Sum of a floating-point aggregate.
    floats: Vec<f64>,
}

impl Values {
    fn new(kind: Kind) -> Values {
        Values {
            kind,
            counts: Vec::new(),
            ints: Vec::new(),
            floats: Vec::new(),
        }
    }

    fn resize(&mut self, groups: usize) {
        self.counts.resize(groups, 0);
        if self.kind.is_int() {
            self.ints.resize(groups, 0);
        }
        if self.kind.is_float() {
            self.floats.resize(groups, 0.0);
        }
    }

    fn fold_int(&mut self, group: usize, v: i64) {
        let x = &mut self.ints[group];
        *x = if self.counts[group] == 0 {
            v
        } else {
            match self.kind {
                Kind::SumInt => x.wrapping_add(v),
                Kind::MinInt => (*x).min(v),
                _ => (*x).max(v),
            }
        };
        self.counts[group] += 1;
    }

    /// Folds the rows of `argument` into their groups (`groups[row]`), skipping NULLs and
    /// rows `filter` does not pass.
    fn update(&mut self, argument: &ArrayRef, filter: Option<&BooleanArray>, groups: &[usize]) {
        // Logical NULLs: a dictionary or run-end encoded argument has its NULLs in its values.
        let nulls = argument.logical_nulls();
        let passes = |row: usize| {
            nulls.as_ref().is_none_or(|n| n.is_valid(row))
                && filter.is_none_or(|f| f.is_valid(row) && f.value(row))
        };
        let all = nulls.as_ref().is_none_or(|n| n.null_count() == 0) && filter.is_none();
        match self.kind {
            Kind::Count => {
                for (row, &g) in groups.iter().enumerate() {
                    if all || passes(row) {
                        self.counts[g] += 1;
                    }
                }
            }
            Kind::SumInt | Kind::MinInt | Kind::MaxInt => {
                let values = argument.as_primitive::<Int64Type>().values();
                for (row, &g) in groups.iter().enumerate() {
                    if all || passes(row) {
                        self.fold_int(g, values[row]);
                    }
                }
            }
            Kind::SumFloat | Kind::Avg => {
                let values = argument.as_primitive::<Float64Type>().values();
                for (row, &g) in groups.iter().enumerate() {
                    if all || passes(row) {
                        self.floats[g] += values[row];
                        self.counts[g] += 1;
                    }
                }
            }
        }
    }

    /// The aggregate's value for each of `groups`.
    fn evaluate(&self, groups: &[usize]) -> ArrayRef {
        let has = |g: usize| self.counts[g] > 0;
        match self.kind {
            Kind::Count => Arc::new(Int64Array::from_iter_values(
                groups.iter().map(|&g| self.counts[g]),
            )),
            Kind::SumInt | Kind::MinInt | Kind::MaxInt => Arc::new(
                groups
                    .iter()
                    .map(|&g| has(g).then(|| self.ints[g]))
                    .collect::<Int64Array>(),
            ),
            Kind::SumFloat => Arc::new(
                groups
                    .iter()
                    .map(|&g| has(g).then(|| self.floats[g]))
                    .collect::<Float64Array>(),
            ),
            Kind::Avg => Arc::new(
                groups
                    .iter()
                    .map(|&g| has(g).then(|| self.floats[g] / self.counts[g] as f64))
                    .collect::<Float64Array>(),
            ),
        }
    }

    /// The state of `groups` as snapshot columns: counts, then the values.
    fn state(&self, groups: &[usize]) -> Vec<ArrayRef> {
        let mut columns: Vec<ArrayRef> = vec![Arc::new(Int64Array::from_iter_values(
            groups.iter().map(|&g| self.counts[g]),
        ))];
        if self.kind.is_int() {
            columns.push(Arc::new(Int64Array::from_iter_values(
                groups.iter().map(|&g| self.ints[g]),
            )));
        }
        if self.kind.is_float() {
            columns.push(Arc::new(Float64Array::from_iter_values(
                groups.iter().map(|&g| self.floats[g]),
            )));
        }
        columns
    }

    fn width(&self) -> usize {
        1 + usize::from(self.kind.is_int() || self.kind.is_float())
    }

    /// Sets group `groups[r]` to row `r` of [`Values::state`] columns (the groups exist).
    fn set(&mut self, columns: &[ArrayRef], groups: &[usize]) -> Option<()> {
        fn place<T: Copy>(into: &mut [T], values: &[T], groups: &[usize]) -> Option<()> {
            if values.len() != groups.len() {
                return None;
            }
            for (&v, &g) in values.iter().zip(groups) {
                *into.get_mut(g)? = v;
            }
            Some(())
        }
        let counts = columns.first()?.as_primitive_opt::<Int64Type>()?.values();
        place(&mut self.counts, counts, groups)?;
        if self.kind.is_int() {
            let ints = columns.get(1)?.as_primitive_opt::<Int64Type>()?.values();
            place(&mut self.ints, ints, groups)?;
        }
        if self.kind.is_float() {
            let floats = columns.get(1)?.as_primitive_opt::<Float64Type>()?.values();
            place(&mut self.floats, floats, groups)?;
        }
        Some(())
    }

    fn bytes(&self) -> usize {
        (self.counts.capacity() + self.ints.capacity() + self.floats.capacity()) * 8
    }
}

/// The state of an unwindowed changelog aggregation computed column by column (see the
/// module documentation).
pub(crate) struct IncrementalState {
    /// Group numbering by key; `None` without GROUP BY keys (one group).
    groups: Option<Box<dyn GroupValues>>,
    /// The key columns' schema (for a new group table on restore).
    key_schema: arrow::datatypes::SchemaRef,
    /// Row-encoded key of every group, by group number (for output rows).
    key_bytes: Vec<u8>,
    key_ends: Vec<usize>,
    values: Vec<Values>,
    num_groups: usize,
    /// Scratch: the group of each input row.
    indices: Vec<usize>,
    /// Per group, the number of the last batch that touched it.
    touched_by: Vec<u64>,
    batches: u64,
    /// Encodes output rows, to drop `U-`/`U+` pairs of an unchanged row.
    output_rows: RowConverter,
    /// The groups touched since the previous snapshot, once one was taken (an incremental
    /// snapshot writes them).
    changed: Option<Changed>,
}

#[derive(Default)]
struct Changed {
    groups: Vec<usize>,
    flags: Vec<bool>,
}

/// True when `spec` over input of this kind can use [`IncrementalState`].
pub(crate) fn supports(spec: &AggregateSpec, changelog: bool) -> bool {
    spec.window.is_none()
        && !changelog
        && matches!(spec.emit, EmitMode::Changes | EmitMode::OnUpdate)
        && kinds(spec).is_some()
        && output_converter(spec).is_ok()
        && post_is_immutable(spec)
}

/// True when HAVING and the SELECT list call only functions whose result depends on their
/// arguments alone: this layout recomputes a group's previous row for its `U-`, where the
/// row-accumulator layout remembers it (so `random()` or `now()` there need that one).
fn post_is_immutable(spec: &AggregateSpec) -> bool {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    use datafusion::logical_expr::Volatility;
    use datafusion::physical_expr::ScalarFunctionExpr;
    let immutable = |expr: &Arc<dyn datafusion::physical_expr::PhysicalExpr>| {
        let mut immutable = true;
        let _ = expr.apply(|node| {
            if let Some(f) = node.downcast_ref::<ScalarFunctionExpr>()
                && f.fun().signature().volatility != Volatility::Immutable
            {
                immutable = false;
                return Ok(TreeNodeRecursion::Stop);
            }
            Ok(TreeNodeRecursion::Continue)
        });
        immutable
    };
    spec.post.iter().all(|step| match step {
        crate::operator::Step::Filter(predicate) => immutable(predicate),
        crate::operator::Step::Project { exprs, .. } => exprs.iter().all(immutable),
    })
}

/// The kind of every aggregate, when this layout computes them all.
fn kinds(spec: &AggregateSpec) -> Option<Vec<Kind>> {
    spec.aggregates
        .iter()
        .map(|call| {
            let f = &call.function;
            let inputs = call.inputs();
            if f.is_distinct() || !f.order_bys().is_empty() || inputs.len() != 1 {
                return None;
            }
            let argument = inputs[0].data_type(&spec.input_schema).ok()?;
            let (kind, result) = Kind::of(f.fun().name(), &argument)?;
            (f.field().data_type() == &result).then_some(kind)
        })
        .collect()
}

fn output_converter(spec: &AggregateSpec) -> std::result::Result<RowConverter, CoreError> {
    RowConverter::new(
        spec.post_schema
            .fields()
            .iter()
            .map(|f| SortField::new(f.data_type().clone()))
            .collect(),
    )
    .map_err(|source| CoreError::Arrow {
        operator: spec.name.clone(),
        source,
    })
}

impl IncrementalState {
    /// Empty state for `spec` (which [`supports`] accepted) with group keys of `key_types`.
    pub(crate) fn new(spec: &AggregateSpec, key_types: &[DataType]) -> Result<IncrementalState> {
        let kinds = kinds(spec).ok_or_else(|| {
            CoreError::Internal(format!(
                "{}: aggregates not computable column by column",
                spec.name
            ))
        })?;
        let key_schema = Arc::new(Schema::new(
            key_types
                .iter()
                .enumerate()
                .map(|(i, t)| arrow::datatypes::Field::new(format!("k{i}"), t.clone(), true))
                .collect::<Vec<_>>(),
        ));
        let groups = if key_types.is_empty() {
            None
        } else {
            Some(
                new_group_values(key_schema.clone(), &GroupOrdering::None)
                    .map_err(super::checkpoint::df(spec))?,
            )
        };
        Ok(IncrementalState {
            groups,
            key_schema,
            key_bytes: Vec::new(),
            key_ends: Vec::new(),
            values: kinds.into_iter().map(Values::new).collect(),
            num_groups: 0,
            indices: Vec::new(),
            touched_by: Vec::new(),
            batches: 0,
            output_rows: output_converter(spec)?,
            changed: None,
        })
    }

    /// Folds a batch in and returns its changes (`I`, `U-`/`U+`, `D`) in the output schema.
    pub(crate) fn ingest(
        &mut self,
        spec: &AggregateSpec,
        converter: Option<&RowConverter>,
        output: &arrow::datatypes::SchemaRef,
        prepared: &Prepared,
    ) -> Result<Option<RecordBatch>> {
        let rows = prepared.batch.num_rows();
        if rows == 0 {
            return Ok(None);
        }
        let before = self.num_groups;
        match &mut self.groups {
            Some(groups) => {
                groups
                    .intern(&prepared.keys, &mut self.indices)
                    .map_err(super::checkpoint::df(spec))?;
                self.num_groups = groups.len();
            }
            None => {
                self.indices.clear();
                self.indices.resize(rows, 0);
                self.num_groups = 1;
            }
        }
        if self.num_groups > before {
            self.add_keys(spec, converter, &prepared.keys, before)?;
        }
        // The touched groups, each once, in order of first touch.
        self.batches += 1;
        let mut touched = Vec::new();
        for &g in &self.indices {
            if self.touched_by[g] != self.batches {
                self.touched_by[g] = self.batches;
                touched.push(g);
            }
        }
        if let Some(changed) = &mut self.changed {
            changed.flags.resize(self.num_groups, false);
            for &g in &touched {
                if !changed.flags[g] {
                    changed.flags[g] = true;
                    changed.groups.push(g);
                }
            }
        }
        let existed: Vec<usize> = touched.iter().copied().filter(|&g| g < before).collect();
        let old = self.evaluate(spec, converter, &existed)?;
        for ((values, args), filter) in self
            .values
            .iter_mut()
            .zip(&prepared.args)
            .zip(&prepared.filters)
        {
            values.update(&args[0], filter.as_ref(), &self.indices);
        }
        let new = self.evaluate(spec, converter, &touched)?;
        self.changes(spec, output, &touched, before, old, new)
    }

    /// Creates the one group of a global aggregation (no keys) before any input and returns
    /// its row (the aggregates of no rows) as an `I`; later batches update it.
    pub(crate) fn start_global(
        &mut self,
        spec: &AggregateSpec,
        output: &arrow::datatypes::SchemaRef,
    ) -> Result<Option<RecordBatch>> {
        if self.groups.is_some() || self.num_groups > 0 {
            return Ok(None);
        }
        self.num_groups = 1;
        self.add_keys(spec, None, &[], 0)?;
        let row = self.evaluate(spec, None, &[0])?;
        self.changes(spec, output, &[0], 0, None, row)
    }

    /// Records the encoded keys of the groups numbered from `before` on, which this batch
    /// created (in order of their first row).
    fn add_keys(
        &mut self,
        spec: &AggregateSpec,
        converter: Option<&RowConverter>,
        keys: &[ArrayRef],
        before: usize,
    ) -> Result<()> {
        let arrow_error = |source| CoreError::Arrow {
            operator: spec.name.clone(),
            source,
        };
        if let Some(converter) = converter {
            let mut first = vec![u32::MAX; self.num_groups - before];
            for (row, &g) in self.indices.iter().enumerate() {
                if g >= before && first[g - before] == u32::MAX {
                    first[g - before] = row as u32;
                }
            }
            let first = UInt32Array::from(first);
            let columns = keys
                .iter()
                .map(|k| take(k.as_ref(), &first, None))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(arrow_error)?;
            let encoded = converter.convert_columns(&columns).map_err(arrow_error)?;
            for row in encoded.iter() {
                self.key_bytes.extend_from_slice(row.data());
                self.key_ends.push(self.key_bytes.len());
            }
        }
        for values in &mut self.values {
            values.resize(self.num_groups);
        }
        self.touched_by.resize(self.num_groups, 0);
        Ok(())
    }

    /// The key columns of `groups`, decoded from their recorded encodings (none without
    /// GROUP BY keys).
    fn keys_of(
        &self,
        spec: &AggregateSpec,
        converter: Option<&RowConverter>,
        groups: &[usize],
    ) -> Result<Vec<ArrayRef>> {
        let Some(converter) = converter else {
            return Ok(Vec::new());
        };
        let parser = converter.parser();
        converter
            .convert_rows(groups.iter().map(|&g| {
                let start = if g == 0 { 0 } else { self.key_ends[g - 1] };
                parser.parse(&self.key_bytes[start..self.key_ends[g]])
            }))
            .map_err(|source| CoreError::Arrow {
                operator: spec.name.clone(),
                source,
            })
    }

    /// The output rows of `groups` now (after HAVING and the SELECT list), with the
    /// position in `groups` of each row.
    fn evaluate(
        &self,
        spec: &AggregateSpec,
        converter: Option<&RowConverter>,
        groups: &[usize],
    ) -> Result<Option<(RecordBatch, Vec<u32>)>> {
        if groups.is_empty() {
            return Ok(None);
        }
        let keys = self.keys_of(spec, converter, groups)?;
        let values = self.values.iter().map(|v| v.evaluate(groups)).collect();
        let batch = AggregateOperator::aggregate_batch(spec, keys, None, values, groups.len())?;
        AggregateOperator::post(spec, batch).map(Some)
    }

    /// Pairs the rows of the touched groups before (`old`, for the groups numbered below
    /// `before`) and after (`new`) the batch into the changelog.
    fn changes(
        &self,
        spec: &AggregateSpec,
        output: &arrow::datatypes::SchemaRef,
        touched: &[usize],
        before: usize,
        old: Option<(RecordBatch, Vec<u32>)>,
        new: Option<(RecordBatch, Vec<u32>)>,
    ) -> Result<Option<RecordBatch>> {
        let arrow_error = |source| CoreError::Arrow {
            operator: spec.name.clone(),
            source,
        };
        // Output row of each touched group before and after, if it has one.
        let mut old_row: Vec<Option<usize>> = vec![None; touched.len()];
        let mut new_row: Vec<Option<usize>> = vec![None; touched.len()];
        let old_positions: Vec<usize> = (0..touched.len())
            .filter(|&p| touched[p] < before)
            .collect();
        if let Some((_, origin)) = &old {
            for (row, &i) in origin.iter().enumerate() {
                old_row[old_positions[i as usize]] = Some(row);
            }
        }
        if let Some((_, origin)) = &new {
            for (row, &p) in origin.iter().enumerate() {
                new_row[p as usize] = Some(row);
            }
        }
        let encode = |batch: &Option<(RecordBatch, Vec<u32>)>| -> Result<Option<arrow::row::Rows>> {
            batch
                .as_ref()
                .map(|(b, _)| self.output_rows.convert_columns(b.columns()))
                .transpose()
                .map_err(arrow_error)
        };
        let (old_rows, new_rows) = (encode(&old)?, encode(&new)?);
        let mut picks: Vec<(usize, usize)> = Vec::with_capacity(touched.len() * 2);
        let mut ops: Vec<&'static str> = Vec::with_capacity(touched.len() * 2);
        for p in 0..touched.len() {
            match (old_row[p], new_row[p]) {
                (None, None) => {}
                (None, Some(n)) => {
                    picks.push((1, n));
                    ops.push("I");
                }
                (Some(o), None) => {
                    picks.push((0, o));
                    ops.push("D");
                }
                (Some(o), Some(n)) => {
                    let (Some(a), Some(b)) = (&old_rows, &new_rows) else {
                        continue;
                    };
                    if a.row(o) != b.row(n) {
                        picks.push((0, o));
                        ops.push("U-");
                        picks.push((1, n));
                        ops.push("U+");
                    }
                }
            }
        }
        if picks.is_empty() {
            return Ok(None);
        }
        let empty = RecordBatch::new_empty(super::relaxed(&spec.post_schema));
        let old_batch = old.as_ref().map_or(&empty, |(b, _)| b);
        let new_batch = new.as_ref().map_or(&empty, |(b, _)| b);
        let columns = (0..spec.post_schema.fields().len())
            .map(|c| {
                interleave(
                    &[old_batch.column(c).as_ref(), new_batch.column(c).as_ref()],
                    &picks,
                )
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(arrow_error)?;
        let values = RecordBatch::try_new_with_options(
            super::relaxed(&spec.post_schema),
            columns,
            &arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(picks.len())),
        )
        .map_err(arrow_error)?;
        with_ops(output, &values, ops).map(Some)
    }

    pub(crate) fn size(&self) -> StateSize {
        let mut bytes = self.key_bytes.capacity()
            + self.key_ends.capacity() * 8
            + self.touched_by.capacity() * 8
            + self.groups.as_ref().map_or(0, |g| g.size());
        bytes += self.values.iter().map(Values::bytes).sum::<usize>();
        StateSize {
            rows: self.num_groups as u64,
            bytes: bytes as u64,
        }
    }

    /// Writes every group's key and values as one batch; from now on the groups touched are
    /// tracked for [`IncrementalState::snapshot_delta`].
    pub(crate) fn snapshot(
        &mut self,
        spec: &AggregateSpec,
        converter: Option<&RowConverter>,
        w: &mut crate::snapshot::SnapshotWriter,
    ) -> Result<()> {
        let all: Vec<usize> = (0..self.num_groups).collect();
        w.batch(&self.rows_batch(spec, converter, &all)?)?;
        self.changed = Some(Changed::default());
        Ok(())
    }

    /// Writes the groups touched since the previous snapshot (new ones included), or
    /// returns false, writing nothing, when no snapshot was taken since the state was built.
    pub(crate) fn snapshot_delta(
        &mut self,
        spec: &AggregateSpec,
        converter: Option<&RowConverter>,
        w: &mut crate::snapshot::SnapshotWriter,
    ) -> Result<bool> {
        let Some(changed) = self.changed.take() else {
            return Ok(false);
        };
        let batch = self.rows_batch(spec, converter, &changed.groups);
        self.changed = Some(Changed::default());
        w.batch(&batch?)?;
        Ok(true)
    }

    /// The keys and values of `groups` as a snapshot batch.
    fn rows_batch(
        &self,
        spec: &AggregateSpec,
        converter: Option<&RowConverter>,
        groups: &[usize],
    ) -> Result<RecordBatch> {
        let mut columns = self.keys_of(spec, converter, groups)?;
        for values in &self.values {
            columns.extend(values.state(groups));
        }
        super::checkpoint::columns_batch(columns, groups.len())
    }

    /// Restores a full snapshot and the incremental ones written after it, in order.
    pub(crate) fn restore(
        &mut self,
        spec: &AggregateSpec,
        converter: Option<&RowConverter>,
        r: &mut crate::snapshot::SnapshotReader<'_>,
        deltas: &mut [crate::snapshot::SnapshotReader<'_>],
    ) -> Result<()> {
        if let Some(table) = &mut self.groups {
            *table = new_group_values(self.key_schema.clone(), &GroupOrdering::None)
                .map_err(super::checkpoint::df(spec))?;
        }
        self.num_groups = 0;
        self.key_bytes.clear();
        self.key_ends.clear();
        self.touched_by.clear();
        for values in &mut self.values {
            *values = Values::new(values.kind);
        }
        self.load_rows(spec, converter, &r.batch()?)?;
        for delta in deltas {
            self.load_rows(spec, converter, &delta.batch()?)?;
        }
        self.changed = None;
        Ok(())
    }

    /// Sets the groups of a snapshot batch (keys and values), creating the new ones.
    fn load_rows(
        &mut self,
        spec: &AggregateSpec,
        converter: Option<&RowConverter>,
        batch: &RecordBatch,
    ) -> Result<()> {
        let invalid = |what: &str| {
            CoreError::InvalidData(format!("snapshot of aggregation '{}': {what}", spec.name))
        };
        let key_count = self.groups.as_ref().map_or(0, |_| spec.keys.len());
        let width: usize = self.values.iter().map(Values::width).sum();
        if batch.num_columns() != key_count + width {
            return Err(invalid("the state has a different number of columns"));
        }
        let rows = batch.num_rows();
        let before = self.num_groups;
        match &mut self.groups {
            Some(table) => {
                // Keys decode to their plain types (a dictionary key comes back as its values).
                let keys = batch.columns()[..key_count]
                    .iter()
                    .zip(self.key_schema.fields())
                    .map(|(k, f)| arrow::compute::cast(k, f.data_type()))
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|source| CoreError::Arrow {
                        operator: spec.name.clone(),
                        source,
                    })?;
                if rows > 0 {
                    table
                        .intern(&keys, &mut self.indices)
                        .map_err(super::checkpoint::df(spec))?;
                } else {
                    self.indices.clear();
                }
                self.num_groups = table.len();
                if self.num_groups > before {
                    self.add_keys(spec, converter, &keys, before)?;
                }
            }
            None if rows > 1 => {
                return Err(invalid("more than one group without GROUP BY keys"));
            }
            None => {
                self.indices = vec![0; rows];
                if rows == 1 && before == 0 {
                    self.num_groups = 1;
                    self.add_keys(spec, converter, &[], 0)?;
                }
            }
        }
        let mut seen = std::collections::HashSet::new();
        if !self.indices.iter().all(|g| seen.insert(*g)) {
            return Err(invalid("a group appears twice"));
        }
        let mut at = key_count;
        for values in &mut self.values {
            let w = values.width();
            values
                .set(&batch.columns()[at..at + w], &self.indices)
                .ok_or_else(|| invalid("an aggregate's state has the wrong type or length"))?;
            at += w;
        }
        Ok(())
    }
}
