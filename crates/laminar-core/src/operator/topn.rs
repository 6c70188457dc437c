//! Top-N: the first N rows of each partition in a sort order, with their rank
//! (`ROW_NUMBER` / `RANK` / `DENSE_RANK() OVER (PARTITION BY .. ORDER BY ..)` filtered by
//! `rank <= N`), maintained as a changelog.
//!
//! Each partition keeps its rows ordered by (encoded sort key, encoded row) with a weight
//! (copies). A batch of changes is applied partition by partition: the partition's ranked
//! top rows before and after the changes are compared, and the rows that left (or changed
//! rank) are retracted (`D`), the new ones inserted (`I`). Over an append-only input a row
//! that falls out of the top can never come back, so each partition keeps only its ranked
//! rows; over a changelog every row is kept (a retraction of a top row lets the next one
//! in).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::{ArrayRef, RecordBatch, StringArray, UInt64Array};
use arrow::compute::SortOptions;
use arrow::datatypes::SchemaRef;
use arrow::row::{RowConverter, SortField};
use datafusion::common::hash_utils::RandomState;
use datafusion::physical_expr::PhysicalExpr;

use crate::error::{CoreError, Result};
use crate::message::{ChangeOp, Message, OP_COLUMN, change_ops};
use crate::operator::rows::{evaluate_all, op_columns, ops_as_inserts, row_converter};
use crate::operator::stateless::run_steps;
use crate::operator::{Operator, StateSize, Step};
use crate::snapshot::{SnapshotReader, SnapshotWriter};

type HashMap<K, V> = std::collections::HashMap<K, V, RandomState>;

/// Tag of top-N snapshots.
const SNAPSHOT_TAG: &str = "laminar.topn";

/// Bytes counted per stored row besides its encoding.
const ENTRY_OVERHEAD: usize = 64;

/// The ranking function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RankFunction {
    /// 1, 2, 3, .. (ties in an arbitrary but fixed order: by the whole row).
    RowNumber,
    /// Ties share a rank; the next rank skips (1, 1, 3).
    Rank,
    /// Ties share a rank; the next rank does not skip (1, 1, 2).
    DenseRank,
}

impl RankFunction {
    /// SQL name.
    pub fn sql(self) -> &'static str {
        match self {
            RankFunction::RowNumber => "ROW_NUMBER",
            RankFunction::Rank => "RANK",
            RankFunction::DenseRank => "DENSE_RANK",
        }
    }
}

/// Everything the top-N operator needs.
#[derive(Debug, Clone)]
pub struct TopNSpec {
    /// Stream name.
    pub name: String,
    /// Filter/projection chain of each input, ending in `input_schema`.
    pub chains: Vec<Vec<Step>>,
    /// Rows ranked (with `_op` when the input is a changelog).
    pub input_schema: SchemaRef,
    /// `PARTITION BY` expressions over `input_schema`.
    pub partition_by: Vec<Arc<dyn PhysicalExpr>>,
    /// `ORDER BY` expressions over `input_schema` with their direction and NULL order.
    pub order_by: Vec<(Arc<dyn PhysicalExpr>, SortOptions)>,
    /// The ranking function.
    pub function: RankFunction,
    /// Rows with a rank up to this are kept.
    pub limit: u64,
    /// `input_schema` plus the rank column (UInt64), last; every `_op` column of it holds
    /// the output operation.
    pub ranked_schema: SchemaRef,
    /// Chain over the ranked rows (`WHERE`, `SELECT`).
    pub post: Vec<Step>,
    /// Output schema (must hold `_op`).
    pub output_schema: SchemaRef,
    /// The input never retracts (its `_op`, if any, is always `I`): rows past the top are
    /// dropped from the state.
    pub append_only: bool,
    /// The most partitions held; more fail the operator.
    pub max_partitions: Option<u64>,
    /// The partitions held by all the parallel instances of one top-N (each holds the
    /// partitions its keys hash to), which `max_partitions` bounds; `None` for a single
    /// instance.
    pub shared_partitions: Option<Arc<AtomicU64>>,
}

/// An encoded row with its rank.
type RankedRow = (Box<[u8]>, u64);

/// An encoded (sort key, row).
type SortedRow = (Box<[u8]>, Box<[u8]>);

/// A partition's rows: (sort key, row) → copies.
type Ranked = BTreeMap<SortedRow, i64>;

/// See the module docs.
pub struct TopNOperator {
    spec: TopNSpec,
    partition_rows: RowConverter,
    sort_rows: RowConverter,
    rows: RowConverter,
    op_columns: Vec<usize>,
    changelog: bool,
    partitions: HashMap<Box<[u8]>, Ranked>,
    /// This instance's partitions as last added to `spec.shared_partitions`.
    counted_partitions: u64,
    stored_rows: u64,
    stored_bytes: u64,
}

fn row_error(e: impl std::fmt::Display) -> CoreError {
    CoreError::Internal(format!("top-N rows: {e}"))
}

impl TopNOperator {
    /// Builds the operator; fails when the spec is inconsistent.
    pub fn new(spec: TopNSpec) -> Result<TopNOperator> {
        let types = |exprs: &mut dyn Iterator<Item = &Arc<dyn PhysicalExpr>>| {
            exprs
                .map(|e| {
                    e.data_type(&spec.input_schema)
                        .map_err(|e| CoreError::Internal(format!("top-N key type: {e}")))
                })
                .collect::<Result<Vec<_>>>()
        };
        let partition_types = types(&mut spec.partition_by.iter())?;
        let sort_types = types(&mut spec.order_by.iter().map(|(e, _)| e))?;
        let partition_rows =
            RowConverter::new(partition_types.into_iter().map(SortField::new).collect())
                .map_err(row_error)?;
        let sort_rows = RowConverter::new(
            sort_types
                .into_iter()
                .zip(&spec.order_by)
                .map(|(t, (_, options))| SortField::new_with_options(t, *options))
                .collect(),
        )
        .map_err(row_error)?;
        let rows = row_converter(&spec.input_schema).map_err(row_error)?;
        let op_columns = op_columns(&spec.input_schema);
        Ok(TopNOperator {
            changelog: !spec.append_only,
            partition_rows,
            sort_rows,
            rows,
            op_columns,
            partitions: HashMap::default(),
            counted_partitions: 0,
            stored_rows: 0,
            stored_bytes: 0,
            spec,
        })
    }

    /// The partitions held by the top-N (by every instance of a parallel one), after this
    /// instance's count is brought up to date.
    fn partitions_held(&mut self) -> u64 {
        let mine = self.partitions.len() as u64;
        let Some(shared) = &self.spec.shared_partitions else {
            return mine;
        };
        let before = self.counted_partitions;
        self.counted_partitions = mine;
        if mine >= before {
            shared.fetch_add(mine - before, Ordering::Relaxed) + (mine - before)
        } else {
            shared.fetch_sub(before - mine, Ordering::Relaxed) - (before - mine)
        }
    }

    /// The ranked rows of a partition, in order: (row, rank), one entry per copy.
    fn top(&self, ranked: &Ranked) -> Vec<(Box<[u8]>, u64)> {
        let limit = self.spec.limit;
        let mut out = Vec::new();
        let mut position = 0u64;
        let mut distinct = 0u64;
        let mut rank = 0u64;
        let mut previous: Option<&[u8]> = None;
        for ((sort, row), &weight) in ranked {
            let tie = previous == Some(&**sort);
            if !tie {
                distinct += 1;
                rank = position + 1;
                previous = Some(sort);
            }
            for _ in 0..weight.max(0) {
                position += 1;
                let r = match self.spec.function {
                    RankFunction::RowNumber => position,
                    RankFunction::Rank => rank,
                    RankFunction::DenseRank => distinct,
                };
                if r > limit {
                    return out;
                }
                out.push((row.clone(), r));
            }
        }
        out
    }

    /// Over an append-only input, drops the rows past the top (they can never re-enter).
    fn trim(&mut self, key: &[u8]) {
        if self.changelog {
            return;
        }
        let Some(ranked) = self.partitions.get(key) else {
            return;
        };
        let keep = self.top(ranked).len();
        let ranked = self.partitions.get_mut(key).expect("partition exists");
        let mut seen = 0usize;
        let mut drop_from: Option<SortedRow> = None;
        for (entry, weight) in ranked.iter_mut() {
            if seen >= keep {
                drop_from = Some(entry.clone());
                break;
            }
            let room = (keep - seen) as i64;
            if *weight > room {
                *weight = room;
            }
            seen += *weight as usize;
        }
        if let Some(from) = drop_from {
            let dropped = ranked.split_off(&from);
            for (sort, row) in dropped.keys() {
                self.stored_rows -= 1;
                self.stored_bytes -= (sort.len() + row.len() + ENTRY_OVERHEAD) as u64;
            }
        }
    }

    fn apply(&mut self, batch: RecordBatch) -> Result<Vec<RecordBatch>> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(Vec::new());
        }
        let weights: Vec<i64> = match change_ops(&batch) {
            None => vec![1; n],
            Some(Ok(ops)) => ops.iter().map(|op| op.weight()).collect(),
            Some(Err(e)) => {
                return Err(CoreError::InvalidData(format!(
                    "top-N '{}': {e}",
                    self.spec.name
                )));
            }
        };
        let partition_columns = evaluate_all(&self.spec.name, &self.spec.partition_by, &batch)?;
        let sort_columns = evaluate_all(
            &self.spec.name,
            self.spec.order_by.iter().map(|(e, _)| e),
            &batch,
        )?;
        let partition_keys = if partition_columns.is_empty() {
            None
        } else {
            Some(
                self.partition_rows
                    .convert_columns(&partition_columns)
                    .map_err(row_error)?,
            )
        };
        let sort_keys = if sort_columns.is_empty() {
            None
        } else {
            Some(
                self.sort_rows
                    .convert_columns(&sort_columns)
                    .map_err(row_error)?,
            )
        };
        let columns = ops_as_inserts(&batch, &self.op_columns);
        let rows = self.rows.convert_columns(&columns).map_err(row_error)?;
        // Rows by partition, in arrival order.
        let mut order: Vec<Box<[u8]>> = Vec::new();
        let mut by_partition: HashMap<Box<[u8]>, Vec<usize>> = HashMap::default();
        for i in 0..n {
            let key: Box<[u8]> = partition_keys
                .as_ref()
                .map_or_else(|| Box::from(&[][..]), |k| k.row(i).data().into());
            by_partition
                .entry(key.clone())
                .or_insert_with(|| {
                    order.push(key);
                    Vec::new()
                })
                .push(i);
        }
        // A row that only changed rank is an update (`U-` old rank, `U+` new rank); the rest
        // leave (`D`) or enter (`I`). Paired within each partition.
        let mut deletes: Vec<(Box<[u8]>, u64)> = Vec::new();
        let mut updates: Vec<(RankedRow, RankedRow)> = Vec::new();
        let mut inserts: Vec<(Box<[u8]>, u64)> = Vec::new();
        for key in order {
            let before = self
                .partitions
                .get(&key)
                .map(|p| self.top(p))
                .unwrap_or_default();
            for &i in &by_partition[&key] {
                let sort: Box<[u8]> = sort_keys
                    .as_ref()
                    .map_or_else(|| Box::from(&[][..]), |k| k.row(i).data().into());
                let row: Box<[u8]> = rows.row(i).data().into();
                let size = (sort.len() + row.len() + ENTRY_OVERHEAD) as u64;
                let partition = self.partitions.entry(key.clone()).or_default();
                let entry_key = (sort, row);
                let weight = partition.get(&entry_key).copied().unwrap_or(0) + weights[i];
                if weight < 0 {
                    if self.changelog {
                        return Err(CoreError::InvalidData(format!(
                            "top-N '{}': row {i} retracts a row it does not hold (a changelog must insert a row before it deletes it)",
                            self.spec.name
                        )));
                    }
                    continue;
                }
                let existed = partition.contains_key(&entry_key);
                if weight == 0 {
                    if existed {
                        partition.remove(&entry_key);
                        self.stored_rows -= 1;
                        self.stored_bytes -= size;
                    }
                } else {
                    if !existed {
                        self.stored_rows += 1;
                        self.stored_bytes += size;
                    }
                    partition.insert(entry_key, weight);
                }
            }
            self.trim(&key);
            let after = match self.partitions.get(&key) {
                Some(p) if p.is_empty() => {
                    self.partitions.remove(&key);
                    Vec::new()
                }
                Some(p) => self.top(p),
                None => Vec::new(),
            };
            // Multiset difference of (row, rank).
            let mut count: HashMap<(Box<[u8]>, u64), i64> = HashMap::default();
            for r in &before {
                *count.entry(r.clone()).or_default() -= 1;
            }
            for r in &after {
                *count.entry(r.clone()).or_default() += 1;
            }
            let mut removed = Vec::new();
            let mut entering: Vec<Option<(Box<[u8]>, u64)>> = Vec::new();
            for r in before {
                if let Some(c) = count.get_mut(&r)
                    && *c < 0
                {
                    *c += 1;
                    removed.push(r);
                }
            }
            for r in after {
                if let Some(c) = count.get_mut(&r)
                    && *c > 0
                {
                    *c -= 1;
                    entering.push(Some(r));
                }
            }
            for (row, rank) in removed {
                match entering
                    .iter_mut()
                    .find(|a| a.as_ref().is_some_and(|(r, _)| *r == row))
                    .and_then(Option::take)
                {
                    Some(new) => updates.push(((row, rank), new)),
                    None => deletes.push((row, rank)),
                }
            }
            inserts.extend(entering.into_iter().flatten());
        }
        let held = self.partitions_held();
        if let Some(max) = self.spec.max_partitions
            && held > max
        {
            return Err(CoreError::InvalidData(format!(
                "top-N '{}' holds {held} partitions, over its max_partitions of {max}; raise it with WITH ('max_partitions' = ..) or partition by fewer values",
                self.spec.name,
            )));
        }
        let mut changes: Vec<(Box<[u8]>, u64)> = Vec::new();
        let mut ops: Vec<&str> = Vec::new();
        for old in deletes {
            changes.push(old);
            ops.push(ChangeOp::Delete.as_str());
        }
        for (old, new) in updates {
            changes.push(old);
            ops.push(ChangeOp::UpdateBefore.as_str());
            changes.push(new);
            ops.push(ChangeOp::UpdateAfter.as_str());
        }
        for new in inserts {
            changes.push(new);
            ops.push(ChangeOp::Insert.as_str());
        }
        if ops.is_empty() {
            return Ok(Vec::new());
        }

        let parser = self.rows.parser();
        let mut columns = self
            .rows
            .convert_rows(changes.iter().map(|(row, _)| parser.parse(row)))
            .map_err(row_error)?;
        let op_array: ArrayRef = Arc::new(StringArray::from(ops));
        for &i in &self.op_columns {
            columns[i] = op_array.clone();
        }
        columns.push(Arc::new(UInt64Array::from_iter_values(
            changes.iter().map(|(_, rank)| *rank),
        )));
        let ranked = RecordBatch::try_new(self.spec.ranked_schema.clone(), columns)
            .map_err(|e| CoreError::Internal(format!("top-N output: {e}")))?;
        let out = run_steps(&self.spec.name, &self.spec.post, ranked, None)?;
        self.pair_updates(out)
    }

    /// After the filters and projections: an update whose two images look the same (the
    /// rank was not selected) is dropped; a `U-` or `U+` whose partner was filtered out
    /// becomes `D` or `I`.
    fn pair_updates(&self, out: RecordBatch) -> Result<Vec<RecordBatch>> {
        let Some((op_index, _)) = out.schema().column_with_name(OP_COLUMN) else {
            return Ok(vec![out]);
        };
        let n = out.num_rows();
        if n == 0 {
            return Ok(Vec::new());
        }
        let ops = out
            .column(op_index)
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| CoreError::Internal("top-N output _op is not text".into()))?;
        let data: Vec<ArrayRef> = out
            .columns()
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != op_index)
            .map(|(_, c)| c.clone())
            .collect();
        let converter = RowConverter::new(
            data.iter()
                .map(|c| SortField::new(c.data_type().clone()))
                .collect(),
        )
        .map_err(row_error)?;
        let rows = converter.convert_columns(&data).map_err(row_error)?;
        let mut keep: Vec<u32> = Vec::with_capacity(n);
        let mut labels: Vec<&str> = Vec::with_capacity(n);
        let mut i = 0;
        while i < n {
            let op = ops.value(i);
            let paired = op == ChangeOp::UpdateBefore.as_str()
                && i + 1 < n
                && ops.value(i + 1) == ChangeOp::UpdateAfter.as_str();
            if paired {
                if rows.row(i) != rows.row(i + 1) {
                    keep.extend([i as u32, i as u32 + 1]);
                    labels.extend([op, ops.value(i + 1)]);
                }
                i += 2;
                continue;
            }
            keep.push(i as u32);
            labels.push(if op == ChangeOp::UpdateBefore.as_str() {
                ChangeOp::Delete.as_str()
            } else if op == ChangeOp::UpdateAfter.as_str() {
                ChangeOp::Insert.as_str()
            } else {
                op
            });
            i += 1;
        }
        if keep.is_empty() {
            return Ok(Vec::new());
        }
        let indices = UInt64Array::from_iter_values(keep.iter().map(|&k| u64::from(k)));
        let mut columns = out
            .columns()
            .iter()
            .map(|c| arrow::compute::take(c.as_ref(), &indices, None))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| CoreError::Internal(format!("top-N output: {e}")))?;
        columns[op_index] = Arc::new(StringArray::from(labels));
        RecordBatch::try_new(out.schema(), columns)
            .map(|b| vec![b])
            .map_err(|e| CoreError::Internal(format!("top-N output: {e}")))
    }
}

impl Operator for TopNOperator {
    fn output_schema(&self) -> SchemaRef {
        self.spec.output_schema.clone()
    }

    fn on_batch(&mut self, input: usize, batch: RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        let Some(chain) = self.spec.chains.get(input) else {
            return Err(CoreError::Internal(format!(
                "top-N '{}' received input {input} but has {} inputs",
                self.spec.name,
                self.spec.chains.len()
            )));
        };
        let batch = run_steps(&self.spec.name, chain, batch, None)?;
        for b in self.apply(batch)? {
            out.push(Message::Batch(b));
        }
        Ok(())
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut Vec<Message>) -> Result<()> {
        out.push(Message::Watermark(watermark));
        Ok(())
    }

    fn on_barrier(&mut self, epoch: u64, out: &mut Vec<Message>) -> Result<()> {
        out.push(Message::Barrier(epoch));
        Ok(())
    }

    fn on_end(&mut self, _out: &mut Vec<Message>) -> Result<()> {
        Ok(())
    }

    fn snapshot(&mut self) -> Result<Option<Vec<u8>>> {
        let mut w = SnapshotWriter::new(SNAPSHOT_TAG, 1);
        w.u64(self.partitions.len() as u64);
        for (key, ranked) in &self.partitions {
            w.bytes(key);
            w.u64(ranked.len() as u64);
            for ((sort, row), weight) in ranked {
                w.bytes(sort);
                w.bytes(row);
                w.i64(*weight);
            }
        }
        Ok(Some(w.finish()))
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<()> {
        let mut r = SnapshotReader::new(snapshot, SNAPSHOT_TAG, 1)?;
        let mut partitions: HashMap<Box<[u8]>, Ranked> = HashMap::default();
        let (mut rows, mut bytes) = (0u64, 0u64);
        for _ in 0..r.count()? {
            let key: Box<[u8]> = r.bytes()?.into();
            let mut ranked = Ranked::new();
            for _ in 0..r.count()? {
                let sort: Box<[u8]> = r.bytes()?.into();
                let row: Box<[u8]> = r.bytes()?.into();
                let weight = r.i64()?;
                rows += 1;
                bytes += (sort.len() + row.len() + ENTRY_OVERHEAD) as u64;
                ranked.insert((sort, row), weight);
            }
            partitions.insert(key, ranked);
        }
        if !r.is_done() {
            return Err(CoreError::InvalidData(format!(
                "snapshot of top-N '{}' has bytes left over: the query changed",
                self.spec.name
            )));
        }
        self.partitions = partitions;
        self.stored_rows = rows;
        self.stored_bytes = bytes;
        // The restored partitions count towards the shared bound at once.
        self.partitions_held();
        Ok(())
    }

    fn state_size(&self) -> StateSize {
        StateSize {
            rows: self.stored_rows,
            bytes: self.stored_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::physical_expr::expressions::Column;

    fn schema(changelog: bool) -> SchemaRef {
        let mut fields = vec![
            Field::new("p", DataType::Utf8, true),
            Field::new("v", DataType::Int64, true),
        ];
        if changelog {
            fields.push(Field::new(OP_COLUMN, DataType::Utf8, false));
        }
        Arc::new(Schema::new(fields))
    }

    fn operator(function: RankFunction, limit: u64, changelog: bool) -> TopNOperator {
        let input = schema(changelog);
        let mut ranked: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
        ranked.push(Field::new("rn", DataType::UInt64, false));
        let ranked = Arc::new(Schema::new(ranked));
        TopNOperator::new(TopNSpec {
            name: "top".into(),
            chains: vec![Vec::new()],
            input_schema: input,
            partition_by: vec![Arc::new(Column::new("p", 0))],
            order_by: vec![(
                Arc::new(Column::new("v", 1)),
                SortOptions {
                    descending: true,
                    nulls_first: false,
                },
            )],
            function,
            limit,
            ranked_schema: ranked.clone(),
            post: Vec::new(),
            output_schema: ranked,
            append_only: !changelog,
            max_partitions: Some(3),
            shared_partitions: None,
        })
        .unwrap()
    }

    fn batch(changelog: bool, rows: &[(&str, i64, &str)]) -> RecordBatch {
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from(
                rows.iter().map(|r| r.1).collect::<Vec<_>>(),
            )),
        ];
        if changelog {
            columns.push(Arc::new(StringArray::from(
                rows.iter().map(|r| r.2).collect::<Vec<_>>(),
            )));
        }
        RecordBatch::try_new(schema(changelog), columns).unwrap()
    }

    fn run(op: &mut TopNOperator, b: RecordBatch) -> Vec<String> {
        let mut out = Vec::new();
        op.on_batch(0, b, &mut out).unwrap();
        let mut lines = Vec::new();
        for m in out {
            if let Message::Batch(b) = m {
                for r in 0..b.num_rows() {
                    let cells: Vec<String> = b
                        .columns()
                        .iter()
                        .map(|c| arrow::util::display::array_value_to_string(c, r).unwrap())
                        .collect();
                    lines.push(cells.join("|"));
                }
            }
        }
        lines
    }

    #[test]
    fn a_retracted_top_row_lets_the_next_one_in_and_ranks_move() {
        let mut op = operator(RankFunction::RowNumber, 2, true);
        assert_eq!(
            run(
                &mut op,
                batch(true, &[("a", 5, "I"), ("a", 9, "I"), ("a", 7, "I")])
            ),
            vec!["a|9|I|1", "a|7|I|2"]
        );
        assert_eq!(
            run(&mut op, batch(true, &[("a", 9, "D")])),
            vec!["a|9|D|1", "a|7|U-|2", "a|7|U+|1", "a|5|I|2"]
        );
        // Restored, the state goes on as before.
        let snapshot = op.snapshot().unwrap().unwrap();
        let mut op2 = operator(RankFunction::RowNumber, 2, true);
        op2.restore(&snapshot).unwrap();
        assert_eq!(op2.state_size().rows, 2);
        assert_eq!(
            run(&mut op2, batch(true, &[("a", 6, "I")])),
            vec!["a|5|D|2", "a|6|I|2"]
        );
        let err = op2
            .on_batch(0, batch(true, &[("a", 100, "D")]), &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("retracts a row it does not hold"), "{err}");
        // A fourth partition is one more than the bound of 3.
        let mut op3 = operator(RankFunction::RowNumber, 2, true);
        run(
            &mut op3,
            batch(true, &[("a", 1, "I"), ("b", 1, "I"), ("c", 1, "I")]),
        );
        let err = op3
            .on_batch(0, batch(true, &[("d", 1, "I")]), &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("4 partitions, over its max_partitions of 3"),
            "{err}"
        );
    }

    #[test]
    fn parallel_instances_share_one_partition_bound() {
        let shared = Arc::new(AtomicU64::new(0));
        let instance = || {
            let mut op = operator(RankFunction::RowNumber, 2, true);
            op.spec.shared_partitions = Some(shared.clone());
            op
        };
        let (mut first, mut second) = (instance(), instance());
        run(&mut first, batch(true, &[("a", 1, "I"), ("b", 1, "I")]));
        run(&mut second, batch(true, &[("c", 1, "I")]));
        // A partition that empties is no longer held: room for another.
        run(&mut first, batch(true, &[("a", 1, "D")]));
        run(&mut second, batch(true, &[("d", 1, "I")]));
        assert_eq!(shared.load(Ordering::Relaxed), 3);
        let err = first
            .on_batch(0, batch(true, &[("e", 1, "I")]), &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("4 partitions, over its max_partitions of 3"),
            "{err}"
        );
    }

    #[test]
    fn rank_and_dense_rank_share_ties_and_append_only_state_stays_bounded() {
        let mut rank = operator(RankFunction::Rank, 2, false);
        assert_eq!(
            run(
                &mut rank,
                batch(false, &[("a", 5, ""), ("a", 5, ""), ("a", 3, "")])
            ),
            vec!["a|5|1", "a|5|1"]
        );
        let mut dense = operator(RankFunction::DenseRank, 2, false);
        assert_eq!(
            run(
                &mut dense,
                batch(false, &[("a", 5, ""), ("a", 5, ""), ("a", 3, "")])
            ),
            vec!["a|5|1", "a|5|1", "a|3|2"]
        );
        // Append-only: rows past the top are dropped from the state.
        let mut top = operator(RankFunction::RowNumber, 2, false);
        for v in 0..100 {
            run(&mut top, batch(false, &[("a", v, ""), ("b", -v, "")]));
        }
        assert_eq!(top.state_size().rows, 4);
    }
}
