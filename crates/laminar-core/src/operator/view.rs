//! Materialized views: the current result of a continuous query, kept up to date.
//!
//! A [`ViewStore`] holds the result as a Z-set: every distinct row (in Arrow row format)
//! with its weight, the number of times it is in the result. The [`ViewOperator`] sits behind
//! the view's query and applies every change it emits (`I` / `U+` / `r` add one, `D` / `U-`
//! remove one; append-only batches only add), then forwards the change unchanged, so readers
//! of the view see its changelog. Snapshot queries read [`ViewStore::snapshot`], which is
//! always the result after whole batches: a batch is applied under one write lock.
//!
//! A change that would take a row's weight below zero means the query retracted a row it
//! never emitted; the batch is refused whole and the operator fails, so the view never holds
//! a wrong result.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, SortField};
use parking_lot::RwLock;

use crate::error::{CoreError, Result};
use crate::message::{Message, OP_COLUMN, change_ops};
use crate::operator::{Operator, StateSize};
use crate::snapshot::{SnapshotReader, SnapshotWriter};

type HashMap<K, V> = std::collections::HashMap<K, V, datafusion::common::hash_utils::RandomState>;

/// Bytes counted per distinct row on top of its encoded length (map entry and weight).
const ROW_OVERHEAD: u64 = 48;

/// The contents of a materialized view; shared between its operator and its readers.
pub struct ViewStore {
    name: String,
    /// Schema of the view's rows (the query's output without `_op`).
    schema: SchemaRef,
    /// Position of `_op` in the query's output, for a changelog query.
    op_index: Option<usize>,
    /// `memory.budget`: the most bytes the view may hold.
    budget: Option<u64>,
    converter: RowConverter,
    contents: RwLock<Contents>,
}

#[derive(Default)]
struct Contents {
    /// Encoded row → weight (always > 0).
    rows: HashMap<Box<[u8]>, i64>,
    /// Sum of the weights.
    count: u64,
    bytes: u64,
    /// The last snapshot, until the next change.
    cached: Option<RecordBatch>,
    /// Incremented by every batch that changes the contents.
    version: u64,
    /// The last watermark the view passed on.
    watermark: Option<i64>,
}

impl ViewStore {
    /// A store for the output of a query with schema `output` (with `_op` for a changelog).
    pub fn new(name: &str, output: &SchemaRef, budget: Option<u64>) -> Result<Arc<ViewStore>> {
        let op_index = output
            .column_with_name(OP_COLUMN)
            .filter(|(_, f)| f.data_type() == &DataType::Utf8)
            .map(|(i, _)| i);
        let fields: Vec<Arc<Field>> = output
            .fields()
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != op_index)
            .map(|(_, f)| f.clone())
            .collect();
        let schema = Arc::new(Schema::new(fields));
        let sort_fields: Vec<SortField> = schema
            .fields()
            .iter()
            .map(|f| SortField::new(f.data_type().clone()))
            .collect();
        let converter = RowConverter::new(sort_fields).map_err(|e| {
            CoreError::InvalidData(format!(
                "materialized view '{name}' cannot hold its rows: {e}"
            ))
        })?;
        Ok(Arc::new(ViewStore {
            name: name.to_string(),
            schema,
            op_index,
            budget,
            converter,
            contents: RwLock::new(Contents::default()),
        }))
    }

    /// Schema of the view's rows.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// True when the view's query emits a changelog.
    pub fn is_changelog(&self) -> bool {
        self.op_index.is_some()
    }

    /// Rows in the view (with duplicates) and approximate bytes held.
    pub fn size(&self) -> StateSize {
        let c = self.contents.read();
        StateSize {
            rows: c.count,
            bytes: c.bytes,
        }
    }

    /// The last watermark the view passed on.
    pub fn watermark(&self) -> Option<i64> {
        self.contents.read().watermark
    }

    /// The view's current rows (a row of weight n appears n times).
    ///
    /// Under the read lock the rows are only copied out (one buffer); they are decoded into
    /// Arrow columns after it is released, so a large view does not hold up its changes for
    /// the decoding.
    pub fn snapshot(&self) -> Result<RecordBatch> {
        let (buffer, ends, version) = {
            let c = self.contents.read();
            if let Some(b) = c.cached.clone() {
                return Ok(b);
            }
            let mut buffer = Vec::with_capacity(c.bytes as usize);
            let mut ends = Vec::with_capacity(c.count as usize);
            for (row, weight) in &c.rows {
                for _ in 0..*weight {
                    buffer.extend_from_slice(row);
                    ends.push(buffer.len());
                }
            }
            (buffer, ends, c.version)
        };
        let parser = self.converter.parser();
        let mut start = 0;
        let rows = ends.iter().map(|&end| {
            let row = parser.parse(&buffer[start..end]);
            start = end;
            row
        });
        let batch = self.decode(rows, ends.len())?;
        let mut c = self.contents.write();
        if c.version == version {
            c.cached = Some(batch.clone());
        }
        Ok(batch)
    }

    /// The current rows in the shape of the view's output: with `_op` = `I` for a
    /// changelog view. What a new reader of the view starts from.
    pub fn snapshot_as_inserts(&self) -> Result<RecordBatch> {
        let rows = self.snapshot()?;
        let Some(op_index) = self.op_index else {
            return Ok(rows);
        };
        let mut columns: Vec<ArrayRef> = rows.columns().to_vec();
        let mut fields: Vec<Arc<Field>> = rows.schema().fields().iter().cloned().collect();
        columns.insert(
            op_index,
            Arc::new(arrow::array::StringArray::from(vec!["I"; rows.num_rows()])),
        );
        fields.insert(
            op_index,
            Arc::new(Field::new(OP_COLUMN, DataType::Utf8, false)),
        );
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| self.arrow(e))
    }

    fn arrow(&self, source: arrow::error::ArrowError) -> CoreError {
        CoreError::Arrow {
            operator: self.name.clone(),
            source,
        }
    }

    /// Each distinct row once, with its weight (for checkpoints).
    fn distinct_rows(&self, c: &Contents) -> Result<(RecordBatch, Vec<i64>)> {
        let parser = self.converter.parser();
        let mut rows = Vec::with_capacity(c.rows.len());
        let mut weights = Vec::with_capacity(c.rows.len());
        for (bytes, weight) in &c.rows {
            rows.push(parser.parse(bytes));
            weights.push(*weight);
        }
        Ok((self.decode(rows, c.rows.len())?, weights))
    }

    /// `count` encoded rows as a batch of the view's rows.
    fn decode<'a>(
        &self,
        rows: impl IntoIterator<Item = arrow::row::Row<'a>>,
        count: usize,
    ) -> Result<RecordBatch> {
        let columns = self
            .converter
            .convert_rows(rows)
            .map_err(|e| self.arrow(e))?;
        let options = arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(count));
        RecordBatch::try_new_with_options(self.schema.clone(), columns, &options)
            .map_err(|e| self.arrow(e))
    }

    /// Applies one batch of the query's output; all of it or, on an error, none of it.
    fn apply(&self, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let ops = match change_ops(batch) {
            Some(Ok(ops)) => Some(ops),
            Some(Err(e)) => {
                return Err(CoreError::InvalidData(format!(
                    "materialized view '{}': {e}",
                    self.name
                )));
            }
            None => None,
        };
        let columns: Vec<ArrayRef> = batch
            .columns()
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != self.op_index)
            .map(|(_, c)| c.clone())
            .collect();
        let rows = self
            .converter
            .convert_columns(&columns)
            .map_err(|e| self.arrow(e))?;
        // Net change per distinct row, so a batch that deletes and re-inserts a row is
        // checked as a whole.
        let mut deltas: HashMap<&[u8], i64> = HashMap::default();
        for (i, row) in rows.iter().enumerate() {
            let w = ops.as_ref().map_or(1, |ops| ops[i].weight());
            *deltas.entry(row.data()).or_default() += w;
        }
        let mut c = self.contents.write();
        let mut new_bytes = c.bytes as i64;
        let mut new_rows = c.rows.len() as i64;
        for (row, delta) in &deltas {
            let now = c.rows.get(*row).copied().unwrap_or(0);
            let size = row.len() as i64 + ROW_OVERHEAD as i64;
            if now == 0 && now + delta > 0 {
                new_bytes += size;
                new_rows += 1;
            } else if now > 0 && now + delta == 0 {
                new_bytes -= size;
                new_rows -= 1;
            }
            if now + delta < 0 {
                let shown = self
                    .converter
                    .convert_rows([self.converter.parser().parse(row)])
                    .ok()
                    .and_then(|cols| {
                        RecordBatch::try_new(self.schema.clone(), cols)
                            .ok()
                            .and_then(|b| {
                                arrow::util::pretty::pretty_format_batches(&[b])
                                    .ok()
                                    .map(|t| t.to_string())
                            })
                    })
                    .unwrap_or_default();
                return Err(CoreError::InvalidData(format!(
                    "materialized view '{}': a change removes a row the view does not hold ({} of it held, {} removed); the batch was not applied\n{shown}",
                    self.name, now, -delta
                )));
            }
        }
        if let Some(budget) = self.budget
            && new_bytes > budget as i64
        {
            return Err(CoreError::InvalidData(format!(
                "materialized view '{}' would hold {new_rows} rows in about {new_bytes} bytes, over its memory budget of {budget} bytes (memory.budget); the batch was not applied; raise the budget or narrow the view",
                self.name
            )));
        }
        let mut added_bytes: i64 = 0;
        let mut added_count: i64 = 0;
        let mut changed = false;
        for (row, delta) in deltas {
            if delta == 0 {
                continue;
            }
            changed = true;
            added_count += delta;
            match c.rows.get_mut(row) {
                Some(w) => {
                    *w += delta;
                    if *w == 0 {
                        c.rows.remove(row);
                        added_bytes -= row.len() as i64 + ROW_OVERHEAD as i64;
                    }
                }
                None => {
                    c.rows.insert(row.into(), delta);
                    added_bytes += row.len() as i64 + ROW_OVERHEAD as i64;
                }
            }
        }
        c.count = (c.count as i64 + added_count) as u64;
        c.bytes = (c.bytes as i64 + added_bytes) as u64;
        if changed {
            c.cached = None;
            c.version += 1;
        }
        Ok(())
    }

    fn snapshot_bytes(&self) -> Result<Vec<u8>> {
        let c = self.contents.read();
        let (rows, weights) = self.distinct_rows(&c)?;
        let mut columns = rows.columns().to_vec();
        columns.push(Arc::new(Int64Array::from(weights)));
        let mut fields: Vec<Arc<Field>> = rows.schema().fields().iter().cloned().collect();
        fields.push(Arc::new(Field::new("__weight", DataType::Int64, false)));
        let options =
            arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(rows.num_rows()));
        let batch =
            RecordBatch::try_new_with_options(Arc::new(Schema::new(fields)), columns, &options)
                .map_err(|e| self.arrow(e))?;
        let mut w = SnapshotWriter::new("view", 1);
        w.bool(c.watermark.is_some());
        w.i64(c.watermark.unwrap_or(0));
        w.batch(&batch)?;
        Ok(w.finish())
    }

    fn restore_bytes(&self, bytes: &[u8]) -> Result<()> {
        let mut r = SnapshotReader::new(bytes, "view", 1)?;
        let has_watermark = r.bool()?;
        let watermark = r.i64()?;
        let batch = r.batch()?;
        let n = batch.num_columns();
        if n != self.schema.fields().len() + 1 {
            return Err(CoreError::InvalidData(format!(
                "materialized view '{}': the checkpointed rows have {} columns, the view has {}",
                self.name,
                n.saturating_sub(1),
                self.schema.fields().len()
            )));
        }
        let weights = batch
            .column(n - 1)
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| {
                CoreError::InvalidData(format!(
                    "materialized view '{}': checkpointed weights are not BIGINT",
                    self.name
                ))
            })?
            .clone();
        let rows = self
            .converter
            .convert_columns(&batch.columns()[..n - 1])
            .map_err(|e| self.arrow(e))?;
        let mut contents = Contents {
            watermark: has_watermark.then_some(watermark),
            ..Contents::default()
        };
        for (i, row) in rows.iter().enumerate() {
            let w = weights.value(i);
            if w <= 0 {
                return Err(CoreError::InvalidData(format!(
                    "materialized view '{}': checkpointed weight {w} is not positive",
                    self.name
                )));
            }
            contents.count += w as u64;
            contents.bytes += row.as_ref().len() as u64 + ROW_OVERHEAD;
            contents.rows.insert(row.as_ref().into(), w);
        }
        *self.contents.write() = contents;
        Ok(())
    }
}

impl std::fmt::Debug for ViewStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ViewStore")
            .field("name", &self.name)
            .field("size", &self.size())
            .finish()
    }
}

/// Applies a query's output to its [`ViewStore`] and passes it on.
pub struct ViewOperator {
    store: Arc<ViewStore>,
    output: SchemaRef,
}

impl ViewOperator {
    /// The operator of `store`, whose query emits batches of schema `output`.
    pub fn new(store: Arc<ViewStore>, output: SchemaRef) -> ViewOperator {
        ViewOperator { store, output }
    }
}

impl Operator for ViewOperator {
    fn output_schema(&self) -> SchemaRef {
        self.output.clone()
    }

    fn on_batch(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        out: &mut Vec<Message>,
    ) -> Result<()> {
        self.store.apply(&batch)?;
        if batch.num_rows() > 0 {
            out.push(Message::Batch(batch));
        }
        Ok(())
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut Vec<Message>) -> Result<()> {
        self.store.contents.write().watermark = Some(watermark);
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

    fn state_size(&self) -> StateSize {
        let c = self.store.contents.read();
        StateSize {
            rows: c.rows.len() as u64,
            bytes: c.bytes,
        }
    }

    fn snapshot(&mut self) -> Result<Option<Vec<u8>>> {
        self.store.snapshot_bytes().map(Some)
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<()> {
        self.store.restore_bytes(snapshot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{AsArray, StringArray};

    fn changes(rows: &[(&str, i64, &str)]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
            Field::new(OP_COLUMN, DataType::Utf8, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.2))),
            ],
        )
        .unwrap()
    }

    fn contents(store: &ViewStore) -> Vec<(String, i64)> {
        let b = store.snapshot().unwrap();
        let mut out: Vec<(String, i64)> = (0..b.num_rows())
            .map(|i| {
                (
                    b.column(0).as_string::<i32>().value(i).to_string(),
                    b.column(1)
                        .as_primitive::<arrow::datatypes::Int64Type>()
                        .value(i),
                )
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn changes_are_applied_by_weight_and_survive_a_snapshot() {
        let schema = changes(&[]).schema();
        let store = ViewStore::new("v", &schema, None).unwrap();
        let mut op = ViewOperator::new(store.clone(), schema.clone());
        let mut out = Vec::new();
        op.on_batch(0, changes(&[("a", 1, "I"), ("b", 5, "I")]), &mut out)
            .unwrap();
        op.on_batch(0, changes(&[("a", 1, "U-"), ("a", 3, "U+")]), &mut out)
            .unwrap();
        op.on_batch(0, changes(&[("b", 5, "D"), ("c", 1, "I")]), &mut out)
            .unwrap();
        assert_eq!(
            contents(&store),
            vec![("a".to_string(), 3), ("c".to_string(), 1)]
        );
        assert_eq!(out.len(), 3, "every change is passed on");
        assert_eq!(store.snapshot_as_inserts().unwrap().num_columns(), 3);

        let bytes = op.snapshot().unwrap().unwrap();
        let restored = ViewStore::new("v", &schema, None).unwrap();
        ViewOperator::new(restored.clone(), schema)
            .restore(&bytes)
            .unwrap();
        assert_eq!(contents(&restored), contents(&store));
        assert_eq!(restored.size(), store.size());
    }

    #[test]
    fn a_retraction_of_an_absent_row_fails_and_changes_nothing() {
        let schema = changes(&[]).schema();
        let store = ViewStore::new("v", &schema, None).unwrap();
        store.apply(&changes(&[("a", 1, "I")])).unwrap();
        let e = store
            .apply(&changes(&[("b", 2, "I"), ("a", 7, "D")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("removes a row the view does not hold"), "{e}");
        assert_eq!(contents(&store), vec![("a".to_string(), 1)]);
        // A change that keeps the row count and size is seen by the next snapshot.
        store
            .apply(&changes(&[("a", 1, "U-"), ("b", 1, "U+")]))
            .unwrap();
        assert_eq!(contents(&store), vec![("b".to_string(), 1)]);
        store
            .apply(&changes(&[("b", 1, "U-"), ("a", 1, "U+")]))
            .unwrap();
        // A delete and re-insert of the same row in one batch nets out.
        store
            .apply(&changes(&[("a", 1, "D"), ("a", 1, "I")]))
            .unwrap();
        assert_eq!(contents(&store), vec![("a".to_string(), 1)]);
        let e = store
            .apply(&changes(&[("a", 1, "X")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid _op value 'X'"), "{e}");
    }

    #[test]
    fn a_view_over_its_budget_fails_with_its_size() {
        let schema = changes(&[]).schema();
        let store = ViewStore::new("v", &schema, Some(200)).unwrap();
        store.apply(&changes(&[("a", 1, "I")])).unwrap();
        let many: Vec<(String, i64, &str)> = (0..10).map(|i| (format!("k{i}"), i, "I")).collect();
        let many: Vec<(&str, i64, &str)> = many.iter().map(|r| (r.0.as_str(), r.1, r.2)).collect();
        let e = store.apply(&changes(&many)).unwrap_err().to_string();
        assert!(
            e.contains("materialized view 'v' would hold 11 rows") && e.contains("memory.budget"),
            "{e}"
        );
        assert_eq!(
            contents(&store),
            vec![("a".to_string(), 1)],
            "nothing applied"
        );
    }
}
