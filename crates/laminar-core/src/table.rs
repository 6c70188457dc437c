//! In-memory reference tables keyed by a primary key (`CREATE TABLE`): upserts, deletes by
//! key, point lookups for lookup joins and consistent snapshots for ad-hoc queries.
//!
//! Rows live in immutable Arrow chunks (one per upserted batch); an index maps each
//! row-encoded primary key to the chunk and row of its current version. A replaced or deleted
//! version stays in its chunk until the table is compacted, which happens once dead rows
//! outnumber live ones.
//!
//! A table read as a changelog by continuous queries has a change feed
//! ([`TableStore::set_change_feed`]): every write hands the feed its changes (`I` for a new
//! key, `U-` / `U+` for a replaced row, `D` for a deleted one) in write order.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, StringArray, new_null_array};
use arrow::compute::{SortOptions, cast, interleave};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::row::{RowConverter, Rows, SortField};
use parking_lot::{Mutex, RwLock};

use crate::error::{CoreError, Result};

type HashMap<K, V> = std::collections::HashMap<K, V, datafusion::common::hash_utils::RandomState>;

/// Where a row version lives: chunk and row within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    chunk: u32,
    row: u32,
}

struct TableData {
    chunks: Vec<RecordBatch>,
    index: HashMap<Box<[u8]>, Slot>,
    dead: usize,
    converter: RowConverter,
}

/// Receives a table's changes: a batch of the table's columns and `_op`, in write order.
/// An error fails the write that produced the changes (its rows are already written).
pub type ChangeFeed = Box<dyn Fn(RecordBatch) -> Result<()> + Send + Sync>;

/// A keyed in-memory table, shared between the catalog (writes, snapshots) and the lookup
/// joins that read it.
pub struct TableStore {
    name: String,
    schema: SchemaRef,
    key_columns: Vec<usize>,
    max_rows: Option<usize>,
    data: RwLock<TableData>,
    /// Serializes writes and holds the change feed. A write computes its changes under the
    /// data lock and hands them to the feed after releasing it, still holding this lock: the
    /// feed sees the writes in order, and lookups never wait for the feed.
    writer: Mutex<Option<ChangeFeed>>,
}

impl std::fmt::Debug for TableStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableStore")
            .field("name", &self.name)
            .field("rows", &self.len())
            .finish()
    }
}

/// Result of probing a table with a batch of keys.
#[derive(Debug)]
pub struct LookupResult {
    /// Probe row of each match, ascending.
    pub probe_rows: Vec<u32>,
    /// The matching table rows, one per entry of `probe_rows`.
    pub rows: RecordBatch,
}

impl TableStore {
    /// An empty table; `key_columns` are indices into `schema`.
    pub fn new(
        name: impl Into<String>,
        schema: SchemaRef,
        key_columns: Vec<usize>,
        max_rows: Option<usize>,
    ) -> Result<TableStore> {
        let name = name.into();
        if key_columns.is_empty() {
            return Err(CoreError::Internal(format!(
                "table '{name}' has no primary key"
            )));
        }
        let fields = key_columns
            .iter()
            .map(|&i| SortField::new(schema.field(i).data_type().clone()))
            .collect();
        let converter = RowConverter::new(fields).map_err(|e| {
            CoreError::Internal(format!("table '{name}': unsupported key type: {e}"))
        })?;
        Ok(TableStore {
            name,
            schema,
            key_columns,
            max_rows,
            data: RwLock::new(TableData {
                chunks: Vec::new(),
                index: HashMap::default(),
                dead: 0,
                converter,
            }),
            writer: Mutex::new(None),
        })
    }

    /// The schema of the table's changes: its columns and `_op`.
    pub fn changes_schema(&self) -> SchemaRef {
        let mut fields: Vec<Field> = self
            .schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new(crate::message::OP_COLUMN, DataType::Utf8, false));
        Arc::new(Schema::new(fields))
    }

    /// Starts (or, with `None`, stops) handing every write's changes to `feed`. First, with
    /// no write in between, `start` receives the rows the table holds: the feed's changes
    /// apply to them. Nothing changes when `start` fails.
    pub fn set_change_feed(
        &self,
        feed: Option<ChangeFeed>,
        start: impl FnOnce(&RecordBatch) -> Result<()>,
    ) -> Result<()> {
        let mut writer = self.writer.lock();
        start(&self.snapshot()?)?;
        *writer = feed;
        Ok(())
    }

    /// Stops handing changes to a feed.
    pub fn clear_change_feed(&self) {
        *self.writer.lock() = None;
    }

    /// True when a change feed is attached.
    pub fn has_change_feed(&self) -> bool {
        self.writer.lock().is_some()
    }

    /// [`TableStore::snapshot_bytes`], then `then()`, with no write in between: a checkpoint
    /// puts its barrier into the change feed at exactly the point of the saved rows.
    pub fn snapshot_bytes_then(&self, then: impl FnOnce() -> Result<()>) -> Result<Vec<u8>> {
        let _writer = self.writer.lock();
        let bytes = self.snapshot_bytes()?;
        then()?;
        Ok(bytes)
    }

    /// [`TableStore::snapshot`], then `then()`, with no write in between: a read mark goes
    /// into the change feed at exactly the point of the rows read.
    pub fn snapshot_then(&self, then: impl FnOnce() -> Result<()>) -> Result<RecordBatch> {
        let _writer = self.writer.lock();
        let rows = self.snapshot()?;
        then()?;
        Ok(rows)
    }

    /// Hands `changes` to the feed, if any and if there are changes.
    fn publish(&self, feed: &Option<ChangeFeed>, changes: Option<RecordBatch>) -> Result<()> {
        match (feed, changes) {
            (Some(feed), Some(changes)) if changes.num_rows() > 0 => feed(changes),
            _ => Ok(()),
        }
    }

    /// A changes batch: rows picked from `sources` by `(source, row)`, with their `_op`s.
    fn changes_batch(
        &self,
        sources: &[&RecordBatch],
        picks: &[(usize, usize)],
        ops: Vec<&'static str>,
    ) -> Result<RecordBatch> {
        let mut columns = (0..self.schema.fields().len())
            .map(|c| {
                let arrays: Vec<&dyn Array> =
                    sources.iter().map(|b| b.column(c).as_ref()).collect();
                interleave(&arrays, picks).map_err(|e| CoreError::Internal(e.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        columns.push(Arc::new(StringArray::from(ops)));
        RecordBatch::try_new(self.changes_schema(), columns)
            .map_err(|e| CoreError::Internal(e.to_string()))
    }

    /// Table name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Table schema.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Indices of the primary-key columns.
    pub fn key_columns(&self) -> &[usize] {
        &self.key_columns
    }

    /// Configured maximum number of rows.
    pub fn max_rows(&self) -> Option<usize> {
        self.max_rows
    }

    /// Number of live rows.
    pub fn len(&self) -> usize {
        self.data.read().index.len()
    }

    /// True when the table holds no row.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Approximate bytes held by the table's chunks.
    pub fn bytes(&self) -> usize {
        self.data
            .read()
            .chunks
            .iter()
            .map(|c| c.get_array_memory_size())
            .sum()
    }

    fn keys_of(&self, data: &TableData, batch: &RecordBatch) -> Result<Rows> {
        let columns: Vec<ArrayRef> = self
            .key_columns
            .iter()
            .map(|&i| batch.column(i).clone())
            .collect();
        for (&i, column) in self.key_columns.iter().zip(&columns) {
            if column.null_count() > 0 {
                return Err(CoreError::InvalidData(format!(
                    "table '{}': primary-key column '{}' is NULL",
                    self.name,
                    self.schema.field(i).name()
                )));
            }
        }
        data.converter
            .convert_columns(&columns)
            .map_err(|e| CoreError::Internal(e.to_string()))
    }

    /// Inserts or replaces rows by primary key (the last of several rows with the same key
    /// wins). Fails without changing the table when a key is NULL or the table would exceed
    /// its `max_rows`. Returns the number of rows written.
    pub fn upsert(&self, batch: &RecordBatch) -> Result<usize> {
        if batch.num_rows() == 0 {
            return Ok(0);
        }
        let batch = self.conform(batch)?;
        let writer = self.writer.lock();
        let mut data = self.data.write();
        let keys = self.keys_of(&data, &batch)?;
        if let Some(max) = self.max_rows {
            let mut fresh: std::collections::HashSet<
                &[u8],
                datafusion::common::hash_utils::RandomState,
            > = Default::default();
            for i in 0..keys.num_rows() {
                let key = keys.row(i).data();
                if !data.index.contains_key(key) {
                    fresh.insert(key);
                }
            }
            if data.index.len() + fresh.len() > max {
                return Err(CoreError::InvalidData(format!(
                    "table '{}' would hold {} rows, above its max_rows of {max}; nothing was written",
                    self.name,
                    data.index.len() + fresh.len()
                )));
            }
        }
        let chunk = u32::try_from(data.chunks.len())
            .map_err(|_| CoreError::Internal("too many table chunks".into()))?;
        let changes = match &*writer {
            Some(_) => Some(self.upsert_changes(&data, &keys, &batch)?),
            None => None,
        };
        let mut replaced = 0;
        for (row, key) in keys.iter().enumerate() {
            let slot = Slot {
                chunk,
                row: row as u32,
            };
            if data.index.insert(key.as_ref().into(), slot).is_some() {
                replaced += 1;
            }
        }
        data.dead += replaced;
        data.chunks.push(batch);
        let rows = keys.num_rows();
        drop(keys);
        if data.dead > data.index.len().max(1024) {
            // The write is done: a failed compaction keeps the dead rows for a later one.
            if let Err(e) = self.compact(&mut data) {
                tracing::warn!(table = %self.name, error = %e, "table compaction failed");
            }
        }
        drop(data);
        self.publish(&writer, changes)?;
        Ok(rows)
    }

    /// The changes of upserting `batch` (whose keys are `keys`) into `data`: per key, in
    /// order of first appearance, the last row written wins; a new key gives `I`, a replaced
    /// row `U-` (old) and `U+` (new), and a row replaced by an identical one nothing.
    fn upsert_changes(
        &self,
        data: &TableData,
        keys: &Rows,
        batch: &RecordBatch,
    ) -> Result<RecordBatch> {
        let mut last: HashMap<&[u8], usize> = HashMap::default();
        let mut order: Vec<&[u8]> = Vec::new();
        for (row, key) in keys.iter().enumerate() {
            if last.insert(key.data(), row).is_none() {
                order.push(key.data());
            }
        }
        let mut old_slots = Vec::new();
        let mut rows: Vec<(Option<usize>, usize)> = Vec::with_capacity(order.len());
        for key in order {
            let new = last[key];
            match data.index.get(key) {
                Some(slot) => {
                    rows.push((Some(old_slots.len()), new));
                    old_slots.push(*slot);
                }
                None => rows.push((None, new)),
            }
        }
        let olds = gather(&self.schema, &data.chunks, &old_slots)?;
        let same = RowsEqual::new(&olds, batch);
        let mut picks = Vec::with_capacity(rows.len() * 2);
        let mut ops = Vec::with_capacity(rows.len() * 2);
        for (old, new) in rows {
            match old {
                Some(old) if same.equal(old, new) => {}
                Some(old) => {
                    picks.extend([(0, old), (1, new)]);
                    ops.extend(["U-", "U+"]);
                }
                None => {
                    picks.push((1, new));
                    ops.push("I");
                }
            }
        }
        self.changes_batch(&[&olds, batch], &picks, ops)
    }

    /// Deletes the rows whose primary key appears in `keys` (one column per key column, in
    /// key order). Returns the number of rows removed.
    pub fn delete(&self, keys: &[ArrayRef]) -> Result<usize> {
        let writer = self.writer.lock();
        let mut data = self.data.write();
        let columns = self.cast_keys(keys)?;
        let rows = data
            .converter
            .convert_columns(&columns)
            .map_err(|e| CoreError::Internal(e.to_string()))?;
        // The rows to remove, each once; their changes are made before anything is removed.
        let mut present: HashMap<&[u8], Slot> = HashMap::default();
        let mut removed_slots = Vec::new();
        for row in rows.iter() {
            if let Some(slot) = data.index.get(row.as_ref())
                && present.insert(row.data(), *slot).is_none()
            {
                removed_slots.push(*slot);
            }
        }
        let removed = removed_slots.len();
        let changes = match &*writer {
            Some(_) => {
                let olds = gather(&self.schema, &data.chunks, &removed_slots)?;
                let picks: Vec<(usize, usize)> = (0..removed).map(|i| (0, i)).collect();
                Some(self.changes_batch(&[&olds], &picks, vec!["D"; removed])?)
            }
            None => None,
        };
        for key in present.into_keys() {
            data.index.remove(key);
        }
        data.dead += removed;
        if data.dead > data.index.len().max(1024) {
            // The write is done: a failed compaction keeps the dead rows for a later one.
            if let Err(e) = self.compact(&mut data) {
                tracing::warn!(table = %self.name, error = %e, "table compaction failed");
            }
        }
        drop(data);
        self.publish(&writer, changes)?;
        Ok(removed)
    }

    /// Every live row, in no particular order.
    pub fn snapshot(&self) -> Result<RecordBatch> {
        let data = self.data.read();
        let slots: Vec<Slot> = data.index.values().copied().collect();
        gather(&self.schema, &data.chunks, &slots)
    }

    /// Probes the table with key columns (one per key column, in key order, cast to the key
    /// types as needed): the current row of every key found. NULL keys find nothing.
    pub fn lookup(&self, keys: &[ArrayRef]) -> Result<LookupResult> {
        let columns = self.cast_keys(keys)?;
        let has_nulls = columns.iter().any(|c| c.null_count() > 0);
        let data = self.data.read();
        let rows = data
            .converter
            .convert_columns(&columns)
            .map_err(|e| CoreError::Internal(e.to_string()))?;
        let mut probe_rows = Vec::new();
        let mut slots = Vec::new();
        for (i, row) in rows.iter().enumerate() {
            if has_nulls && columns.iter().any(|c| c.is_null(i)) {
                continue;
            }
            if let Some(slot) = data.index.get(row.as_ref()) {
                probe_rows.push(i as u32);
                slots.push(*slot);
            }
        }
        let rows = gather(&self.schema, &data.chunks, &slots)?;
        Ok(LookupResult { probe_rows, rows })
    }

    /// The table's rows as a snapshot (see [`crate::snapshot`]).
    pub fn snapshot_bytes(&self) -> Result<Vec<u8>> {
        let mut w = crate::snapshot::SnapshotWriter::new("laminar.table", 1);
        w.batch(&self.snapshot()?)?;
        Ok(w.finish())
    }

    /// Replaces every row with those of a [`TableStore::snapshot_bytes`]; on error the table
    /// is unchanged.
    pub fn restore_bytes(&self, bytes: &[u8]) -> Result<()> {
        let mut r = crate::snapshot::SnapshotReader::new(bytes, "laminar.table", 1)?;
        let rows = r.batch()?;
        if !r.is_done() || rows.schema().fields() != self.schema.fields() {
            return Err(CoreError::InvalidData(format!(
                "snapshot does not match the columns of table '{}'",
                self.name
            )));
        }
        let fresh = TableStore::new(
            self.name.clone(),
            self.schema.clone(),
            self.key_columns.clone(),
            self.max_rows,
        )?;
        fresh.upsert(&rows)?;
        let writer = self.writer.lock();
        let changes = match &*writer {
            // Every old row goes, every restored one comes.
            Some(_) => {
                let olds = self.snapshot()?;
                let picks: Vec<(usize, usize)> = (0..olds.num_rows())
                    .map(|i| (0, i))
                    .chain((0..rows.num_rows()).map(|i| (1, i)))
                    .collect();
                let mut ops = vec!["D"; olds.num_rows()];
                ops.extend(vec!["I"; rows.num_rows()]);
                Some(self.changes_batch(&[&olds, &rows], &picks, ops)?)
            }
            None => None,
        };
        *self.data.write() = fresh.data.into_inner();
        self.publish(&writer, changes)
    }

    fn cast_keys(&self, keys: &[ArrayRef]) -> Result<Vec<ArrayRef>> {
        if keys.len() != self.key_columns.len() {
            return Err(CoreError::Internal(format!(
                "table '{}' has {} key columns, got {}",
                self.name,
                self.key_columns.len(),
                keys.len()
            )));
        }
        keys.iter()
            .zip(&self.key_columns)
            .map(|(k, &i)| {
                let want = self.schema.field(i).data_type();
                if k.data_type() == want {
                    Ok(k.clone())
                } else {
                    cast(k, want).map_err(|e| CoreError::Internal(e.to_string()))
                }
            })
            .collect()
    }

    /// Casts a batch to the table schema (same columns by position).
    fn conform(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        if batch.schema().fields() == self.schema.fields() {
            return Ok(batch.clone());
        }
        if batch.num_columns() != self.schema.fields().len() {
            return Err(CoreError::InvalidData(format!(
                "table '{}' has {} columns, got {}",
                self.name,
                self.schema.fields().len(),
                batch.num_columns()
            )));
        }
        let columns = batch
            .columns()
            .iter()
            .zip(self.schema.fields())
            .map(|(c, f)| {
                if c.data_type() == f.data_type() {
                    Ok(c.clone())
                } else {
                    cast(c, f.data_type()).map_err(|e| CoreError::InvalidData(e.to_string()))
                }
            })
            .collect::<Result<Vec<_>>>()?;
        RecordBatch::try_new(self.schema.clone(), columns)
            .map_err(|e| CoreError::InvalidData(format!("table '{}': {e}", self.name)))
    }

    /// Gathers the live rows into one chunk; on error nothing changes.
    fn compact(&self, data: &mut TableData) -> Result<()> {
        let entries: Vec<(Box<[u8]>, Slot)> =
            data.index.iter().map(|(k, s)| (k.clone(), *s)).collect();
        let slots: Vec<Slot> = entries.iter().map(|(_, s)| *s).collect();
        let merged = gather(&self.schema, &data.chunks, &slots)?;
        data.index.clear();
        data.chunks = vec![merged];
        data.dead = 0;
        for (row, (key, _)) in entries.into_iter().enumerate() {
            data.index.insert(
                key,
                Slot {
                    chunk: 0,
                    row: row as u32,
                },
            );
        }
        Ok(())
    }
}

/// Compares rows of two batches of the same schema column by column (NULL equals NULL);
/// a column whose type cannot be compared counts as different.
struct RowsEqual {
    comparators: Option<Vec<arrow::array::DynComparator>>,
}

impl RowsEqual {
    fn new(left: &RecordBatch, right: &RecordBatch) -> RowsEqual {
        let comparators = left
            .columns()
            .iter()
            .zip(right.columns())
            .map(|(l, r)| {
                arrow::array::make_comparator(l.as_ref(), r.as_ref(), SortOptions::default()).ok()
            })
            .collect();
        RowsEqual { comparators }
    }

    fn equal(&self, left: usize, right: usize) -> bool {
        self.comparators
            .as_ref()
            .is_some_and(|cs| cs.iter().all(|c| c(left, right).is_eq()))
    }
}

/// The rows at `slots`, in order, as one batch of `schema`.
fn gather(schema: &SchemaRef, chunks: &[RecordBatch], slots: &[Slot]) -> Result<RecordBatch> {
    if slots.is_empty() {
        return Ok(RecordBatch::new_empty(schema.clone()));
    }
    let indices: Vec<(usize, usize)> = slots
        .iter()
        .map(|s| (s.chunk as usize, s.row as usize))
        .collect();
    let columns = (0..schema.fields().len())
        .map(|c| {
            let arrays: Vec<&dyn Array> = chunks.iter().map(|b| b.column(c).as_ref()).collect();
            interleave(&arrays, &indices).map_err(|e| CoreError::Internal(e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| CoreError::Internal(e.to_string()))
}

/// A batch of `rows` NULLs of `schema` (every field made nullable).
pub fn null_batch(schema: &SchemaRef, rows: usize) -> Vec<ArrayRef> {
    schema
        .fields()
        .iter()
        .map(|f| new_null_array(f.data_type(), rows))
        .collect()
}

/// Shared handle to a table.
pub type TableRef = Arc<TableStore>;

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("tier", DataType::Utf8, true),
        ]))
    }

    fn rows(ids: &[i64], tiers: &[&str]) -> RecordBatch {
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(Int64Array::from(ids.to_vec())),
                Arc::new(StringArray::from(tiers.to_vec())),
            ],
        )
        .unwrap()
    }

    #[test]
    fn upsert_replaces_and_delete_removes() {
        let t = TableStore::new("c", schema(), vec![0], None).unwrap();
        t.upsert(&rows(&[7, 8], &["gold", "silver"])).unwrap();
        t.upsert(&rows(&[7], &["platinum"])).unwrap();
        assert_eq!(t.len(), 2);
        let keys: ArrayRef = Arc::new(Int64Array::from(vec![7, 9, 8]));
        let found = t.lookup(&[keys]).unwrap();
        assert_eq!(found.probe_rows, vec![0, 2]);
        let tiers = found
            .rows
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(tiers.value(0), "platinum");
        assert_eq!(tiers.value(1), "silver");
        let gone: ArrayRef = Arc::new(Int64Array::from(vec![8, 100]));
        assert_eq!(t.delete(&[gone]).unwrap(), 1);
        assert_eq!(t.len(), 1);
        assert_eq!(t.snapshot().unwrap().num_rows(), 1);
    }

    #[test]
    fn max_rows_rejects_without_change() {
        let t = TableStore::new("c", schema(), vec![0], Some(2)).unwrap();
        t.upsert(&rows(&[1, 2], &["a", "b"])).unwrap();
        // Replacing an existing key is fine at the bound.
        t.upsert(&rows(&[2], &["c"])).unwrap();
        let err = t.upsert(&rows(&[3], &["d"])).unwrap_err();
        assert!(err.to_string().contains("max_rows"), "{err}");
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn compaction_keeps_current_versions() {
        let t = TableStore::new("c", schema(), vec![0], None).unwrap();
        for round in 0..50 {
            let ids: Vec<i64> = (0..100).collect();
            let tier = format!("r{round}");
            let tiers: Vec<&str> = ids.iter().map(|_| tier.as_str()).collect();
            t.upsert(&rows(&ids, &tiers)).unwrap();
        }
        assert_eq!(t.len(), 100);
        let keys: ArrayRef = Arc::new(Int64Array::from(vec![5]));
        let found = t.lookup(&[keys]).unwrap();
        let tiers = found
            .rows
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(tiers.value(0), "r49");
        assert!(t.data.read().chunks.len() < 50);
    }

    #[test]
    fn snapshot_bytes_round_trip() {
        let t = TableStore::new("c", schema(), vec![0], None).unwrap();
        t.upsert(&rows(&[7, 8], &["gold", "silver"])).unwrap();
        let bytes = t.snapshot_bytes().unwrap();
        let u = TableStore::new("c", schema(), vec![0], None).unwrap();
        u.upsert(&rows(&[9], &["old"])).unwrap();
        u.restore_bytes(&bytes).unwrap();
        assert_eq!(u.len(), 2);
        let keys: ArrayRef = Arc::new(Int64Array::from(vec![8, 9]));
        assert_eq!(u.lookup(&[keys]).unwrap().probe_rows, vec![0]);
        assert!(u.restore_bytes(&bytes[..bytes.len() - 3]).is_err());
        assert_eq!(u.len(), 2, "a failed restore changes nothing");
    }

    /// Table contents as sorted `id,tier` strings.
    fn contents(t: &TableStore) -> Vec<String> {
        let batch = t.snapshot().unwrap();
        let mut out: Vec<String> = (0..batch.num_rows())
            .map(|row| {
                batch
                    .columns()
                    .iter()
                    .map(|c| arrow::util::display::array_value_to_string(c, row).unwrap())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect();
        out.sort();
        out
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, failure_persistence: None, ..Default::default() })]

        /// Snapshot after any sequence of upserts and deletes (compactions included), restore
        /// into a fresh table: it holds the same rows, and the same later writes keep both
        /// equal.
        #[test]
        fn snapshot_restore_round_trip(
            ops in proptest::collection::vec((proptest::bool::ANY, proptest::collection::vec(0i64..12, 1..6)), 0..30),
            split in 0usize..30,
        ) {
            let apply = |t: &TableStore, ops: &[(bool, Vec<i64>)], round: usize| {
                for (i, (delete, ids)) in ops.iter().enumerate() {
                    if *delete {
                        let keys: ArrayRef = Arc::new(Int64Array::from(ids.clone()));
                        t.delete(&[keys]).unwrap();
                    } else {
                        let tiers: Vec<String> = ids.iter().map(|id| format!("t{id}-{round}-{i}")).collect();
                        let tiers: Vec<&str> = tiers.iter().map(String::as_str).collect();
                        t.upsert(&rows(ids, &tiers)).unwrap();
                    }
                }
            };
            let split = split.min(ops.len());
            let a = TableStore::new("c", schema(), vec![0], None).unwrap();
            apply(&a, &ops[..split], 0);
            let b = TableStore::new("c", schema(), vec![0], None).unwrap();
            b.restore_bytes(&a.snapshot_bytes().unwrap()).unwrap();
            proptest::prop_assert_eq!(contents(&a), contents(&b));
            apply(&a, &ops[split..], 1);
            apply(&b, &ops[split..], 1);
            proptest::prop_assert_eq!(contents(&a), contents(&b));
            proptest::prop_assert_eq!(a.len(), b.len());
        }
    }

    /// The `(id, tier, _op)` rows of change batches.
    fn change_rows(batches: &[RecordBatch]) -> Vec<(i64, String, String)> {
        use arrow::array::AsArray;
        let mut out = Vec::new();
        for b in batches {
            let ids = b.column(0).as_primitive::<arrow::datatypes::Int64Type>();
            let tiers = b.column(1).as_string::<i32>();
            let ops = b.column(2).as_string::<i32>();
            for i in 0..b.num_rows() {
                out.push((ids.value(i), tiers.value(i).into(), ops.value(i).into()));
            }
        }
        out
    }

    #[test]
    fn the_change_feed_receives_every_write_as_changes() {
        let t = TableStore::new("c", schema(), vec![0], Some(3)).unwrap();
        t.upsert(&rows(&[7], &["gold"])).unwrap();
        let fed: Arc<parking_lot::Mutex<Vec<RecordBatch>>> = Arc::default();
        let sink = fed.clone();
        let mut start = Vec::new();
        t.set_change_feed(
            Some(Box::new(move |b| {
                sink.lock().push(b);
                Ok(())
            })),
            |rows| {
                start.push(rows.num_rows());
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(start, vec![1], "the feed starts from the rows held");
        assert!(t.has_change_feed());
        // A replaced row, a new key written twice (the last wins), an unchanged row.
        t.upsert(&rows(&[7, 8, 8], &["platinum", "a", "b"]))
            .unwrap();
        t.upsert(&rows(&[8], &["b"])).unwrap();
        // Past max_rows: nothing is written, nothing is fed.
        assert!(t.upsert(&rows(&[1, 2], &["x", "y"])).is_err());
        // A present and a missing key, one key twice.
        t.delete(&[Arc::new(Int64Array::from(vec![8, 5, 8])) as ArrayRef])
            .unwrap();
        let s = |x: &str| x.to_string();
        assert_eq!(
            change_rows(&fed.lock()),
            vec![
                (7, s("gold"), s("U-")),
                (7, s("platinum"), s("U+")),
                (8, s("b"), s("I")),
                (8, s("b"), s("D")),
            ]
        );
        // A checkpoint's action runs with no write in between; a detached feed gets nothing.
        let bytes = t
            .snapshot_bytes_then(|| {
                fed.lock().clear();
                Ok(())
            })
            .unwrap();
        t.set_change_feed(None, |_| Ok(())).unwrap();
        t.upsert(&rows(&[9], &["new"])).unwrap();
        assert!(fed.lock().is_empty());
        let restored = TableStore::new("c", schema(), vec![0], None).unwrap();
        restored.restore_bytes(&bytes).unwrap();
        assert_eq!(restored.len(), 1);
    }

    #[test]
    fn null_key_is_rejected() {
        let s = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("tier", DataType::Utf8, true),
        ]));
        let t = TableStore::new("c", s.clone(), vec![0], None).unwrap();
        let b = RecordBatch::try_new(
            s,
            vec![
                Arc::new(Int64Array::from(vec![None, Some(1)])),
                Arc::new(StringArray::from(vec!["a", "b"])),
            ],
        )
        .unwrap();
        assert!(t.upsert(&b).is_err());
        assert!(t.is_empty());
    }
}
