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
//!
//! A view with a natural key (the GROUP BY columns of an aggregation, found by the planner)
//! keeps its rows bucketed by the key's encoding, so [`ViewStore::lookup`] answers a point
//! query by key without reading the other rows.
//!
//! A whole-view read ([`ViewStore::snapshot`]) comes from an Arrow copy of the contents
//! that is kept across changes (`Image`): every distinct row has an id, held by its bucket
//! entry, and the copy holds rows at positions with their weights. A change to an imaged row
//! only writes its weight (0 when it leaves); a new row is queued with its encoding. The next
//! snapshot drops the positions of rows that left (a vectorized filter of the chunks that
//! held them: the copy is a list of batches of at most `CHUNK_ROWS` rows, so untouched chunks
//! are shared, not copied), decodes only the queued rows and appends them as new chunks, so
//! its cost is a pass over the changed chunks plus the changes, not a walk of every bucket.
//! It runs under the write lock. The first snapshot, and the first after the queued rows
//! outgrew the copy (the copy is then dropped until a read needs it), decode every row.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Int64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, SortField};
use parking_lot::{Condvar, Mutex, RwLock};

use crate::error::{CoreError, Result};
use crate::message::{Message, OP_COLUMN, change_ops, is_read_mark};
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
    /// The key the rows are bucketed by, when the view has one.
    key: Option<ViewKey>,
    contents: RwLock<Contents>,
    /// Reads answered by key ([`ViewStore::lookup`]).
    key_reads: AtomicU64,
    /// Reads of the whole contents ([`ViewStore::snapshot`]).
    full_reads: AtomicU64,
    /// The contents saved at read marks that snapshot queries wait for.
    marks: Mutex<MarkedReads>,
    marked: Condvar,
}

/// Read marks a view saves its contents at (see [`crate::message::READ_MARK`]).
#[derive(Default)]
struct MarkedReads {
    /// Marks a query waits for; a mark nobody waits for saves nothing.
    wanted: HashSet<u64>,
    /// The contents at each wanted mark that reached the view (or why they could not be read).
    saved: HashMap<u64, std::result::Result<Vec<RecordBatch>, String>>,
}

/// Columns of a view's natural key and their encoder.
struct ViewKey {
    columns: Vec<usize>,
    converter: RowConverter,
}

/// The rows that share one bucket key, each with its weight (always > 0) and its id in the
/// [`Image`].
enum Bucket {
    /// A view without a key: the bucket key is the row itself.
    Row(i64, u32),
    /// A keyed view: the row(s) with this key (one for an aggregation).
    One(Box<[u8]>, i64, u32),
    Many(Vec<(Box<[u8]>, i64, u32)>),
}

impl Bucket {
    fn weight(&self, key: &[u8], row: &[u8]) -> i64 {
        self.rows(key)
            .find(|(r, _)| *r == row)
            .map_or(0, |(_, w)| w)
    }

    /// Every row of the bucket with its weight.
    fn rows<'a>(&'a self, key: &'a [u8]) -> impl Iterator<Item = (&'a [u8], i64)> + 'a {
        self.entries(key).map(|(row, weight, _)| (row, weight))
    }

    /// Every row of the bucket with its weight and id.
    fn entries<'a>(&'a self, key: &'a [u8]) -> impl Iterator<Item = (&'a [u8], i64, u32)> + 'a {
        let (single, many) = match self {
            Bucket::Row(w, id) => (Some((key, *w, *id)), None),
            Bucket::One(row, w, id) => (Some((&row[..], *w, *id)), None),
            Bucket::Many(rows) => (None, Some(rows.iter().map(|(r, w, id)| (&r[..], *w, *id)))),
        };
        single.into_iter().chain(many.into_iter().flatten())
    }

    /// Adds `delta` to `row`'s weight (the caller has checked it stays >= 0), keeping the
    /// image's weights and ids; true when the bucket is left empty.
    fn add(&mut self, row: &[u8], delta: i64, image: &mut Image) -> bool {
        // A row's new weight: written to the image, or the row leaves it.
        let mut reweigh = |w: &mut i64, id: u32| {
            *w += delta;
            if *w == 0 {
                image.remove(id);
            } else {
                image.set_weight(id, *w);
            }
            *w == 0
        };
        match self {
            Bucket::Row(w, id) => reweigh(w, *id),
            Bucket::One(r, w, id) if &r[..] == row => reweigh(w, *id),
            Bucket::One(r, w, id) => {
                let first = (std::mem::take(r), *w, *id);
                let new = image.new_row(row, delta);
                *self = Bucket::Many(vec![first, (row.into(), delta, new)]);
                false
            }
            Bucket::Many(rows) => {
                match rows.iter().position(|(r, _, _)| &r[..] == row) {
                    Some(i) => {
                        let (_, w, id) = &mut rows[i];
                        if reweigh(w, *id) {
                            rows.swap_remove(i);
                        }
                    }
                    None => rows.push((row.into(), delta, image.new_row(row, delta))),
                }
                if rows.len() == 1 {
                    let (row, w, id) = rows.pop().expect("one row");
                    *self = Bucket::One(row, w, id);
                    return false;
                }
                rows.is_empty()
            }
        }
    }
}

/// "No position" / "not queued" in the [`Image`]'s per-id tables.
const NONE: u32 = u32::MAX;

/// Queued rows beyond this many (and beyond the image's own row count) drop the image: a view
/// that changes much between whole-view reads does not keep a second copy of its changes.
/// (Small in unit tests, so that they drop and rebuild the image often.)
const MIN_QUEUE_LIMIT: usize = if cfg!(test) { 8 } else { 65_536 };

/// Rows per chunk of the [`Image`]: adjacent chunks that fit in this many rows together are
/// merged after a refresh. (Small in unit tests, so that they split and merge often.)
const CHUNK_ROWS: usize = if cfg!(test) { 4 } else { 32_768 };

/// The Arrow copy of a view's contents kept across changes (see the module documentation).
#[derive(Default)]
struct Image {
    /// True while the copy is kept: after the first whole-view read, until the queued rows
    /// outgrow it.
    enabled: bool,
    /// The imaged rows by position: the chunks in order, none before the first read.
    chunks: Vec<RecordBatch>,
    /// Weight of the row at each position (0: the row left since the last read).
    weights: Vec<i64>,
    /// Id of the row at each position.
    ids: Vec<u32>,
    /// Positions of rows that left.
    dead: usize,
    /// Per id: its position, or `NONE`.
    position: Vec<u32>,
    /// Per id: its entry in `queued`, or `NONE`.
    queued_at: Vec<u32>,
    /// Ids free for reuse.
    free: Vec<u32>,
    /// Rows added since the last read: id (`NONE` once the row left again), weight and the
    /// end of its encoding in `queued_bytes`.
    queued: Vec<(u32, i64, usize)>,
    queued_bytes: Vec<u8>,
}

impl Image {
    /// An id for a new distinct row; queues the row while the copy is kept.
    fn new_row(&mut self, row: &[u8], weight: i64) -> u32 {
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                self.position.push(NONE);
                self.queued_at.push(NONE);
                (self.position.len() - 1) as u32
            }
        };
        self.position[id as usize] = NONE;
        self.queued_at[id as usize] = NONE;
        if self.enabled {
            if self.queued.len() >= MIN_QUEUE_LIMIT.max(self.weights.len()) {
                self.disable();
            } else {
                self.queued_at[id as usize] = self.queued.len() as u32;
                self.queued_bytes.extend_from_slice(row);
                self.queued.push((id, weight, self.queued_bytes.len()));
            }
        }
        id
    }

    /// Records the new weight (> 0) of row `id`.
    fn set_weight(&mut self, id: u32, weight: i64) {
        let id = id as usize;
        if self.position[id] != NONE {
            self.weights[self.position[id] as usize] = weight;
        } else if self.queued_at[id] != NONE {
            self.queued[self.queued_at[id] as usize].1 = weight;
        }
    }

    /// Row `id` left the view; its id is free for reuse.
    fn remove(&mut self, id: u32) {
        let i = id as usize;
        if self.position[i] != NONE {
            self.weights[self.position[i] as usize] = 0;
            self.dead += 1;
            self.position[i] = NONE;
        }
        if self.queued_at[i] != NONE {
            self.queued[self.queued_at[i] as usize].0 = NONE;
            self.queued_at[i] = NONE;
        }
        self.free.push(id);
    }

    /// Drops the copy and the queue (ids stay).
    fn disable(&mut self) {
        self.enabled = false;
        self.chunks = Vec::new();
        self.weights = Vec::new();
        self.ids = Vec::new();
        self.dead = 0;
        self.position.fill(NONE);
        self.queued_at.fill(NONE);
        self.queued = Vec::new();
        self.queued_bytes = Vec::new();
    }
}

#[derive(Default)]
struct Contents {
    /// Bucket key → rows: the encoded key for a keyed view, the encoded row otherwise.
    rows: HashMap<Box<[u8]>, Bucket>,
    /// Number of distinct rows.
    distinct: u64,
    /// Sum of the weights.
    count: u64,
    bytes: u64,
    /// The last snapshot, until the next change.
    cached: Option<Vec<RecordBatch>>,
    /// The Arrow copy that snapshots are refreshed from.
    image: Image,
    /// The last watermark the view passed on.
    watermark: Option<i64>,
}

impl Contents {
    /// Every distinct row with its weight.
    fn iter(&self) -> impl Iterator<Item = (&[u8], i64)> {
        self.rows.iter().flat_map(|(key, bucket)| bucket.rows(key))
    }
}

impl ViewStore {
    /// A store for the output of a query with schema `output` (with `_op` for a changelog),
    /// its rows bucketed by the columns named in `key` when given (the view's natural key;
    /// a name that is not a column leaves the view unkeyed).
    pub fn new(
        name: &str,
        output: &SchemaRef,
        budget: Option<u64>,
        key: Option<&[String]>,
    ) -> Result<Arc<ViewStore>> {
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
        // Each name must be exactly one column.
        let column = |n: &String| {
            let mut matches = schema
                .fields()
                .iter()
                .enumerate()
                .filter(|(_, f)| f.name() == n);
            match (matches.next(), matches.next()) {
                (Some((i, _)), None) => Some(i),
                _ => None,
            }
        };
        let key_columns: Option<Vec<usize>> = key
            .filter(|k| !k.is_empty())
            .and_then(|names| names.iter().map(column).collect::<Option<Vec<usize>>>());
        let key = match key_columns {
            Some(columns) => {
                let fields = columns
                    .iter()
                    .map(|&i| SortField::new(schema.field(i).data_type().clone()))
                    .collect();
                RowConverter::new(fields)
                    .ok()
                    .map(|converter| ViewKey { columns, converter })
            }
            None => None,
        };
        Ok(Arc::new(ViewStore {
            name: name.to_string(),
            schema,
            op_index,
            budget,
            converter,
            key,
            contents: RwLock::new(Contents::default()),
            key_reads: AtomicU64::new(0),
            full_reads: AtomicU64::new(0),
            marks: Mutex::new(MarkedReads::default()),
            marked: Condvar::new(),
        }))
    }

    /// Asks for the contents at read mark `id`: when the mark reaches the view, the view
    /// saves its contents for [`ViewStore::wait_for_mark`]. Call before the mark is sent.
    pub fn want_mark(&self, id: u64) {
        self.marks.lock().wanted.insert(id);
    }

    /// Forgets read mark `id` (whether or not it arrived).
    pub fn forget_mark(&self, id: u64) {
        let mut marks = self.marks.lock();
        marks.wanted.remove(&id);
        marks.saved.remove(&id);
    }

    /// Saves the contents at read mark `id`, if a query wants them.
    fn save_mark(&self, id: u64) {
        if !self.marks.lock().wanted.contains(&id) {
            return;
        }
        let contents = self.snapshot_chunks().map_err(|e| e.to_string());
        let mut marks = self.marks.lock();
        if marks.wanted.remove(&id) {
            marks.saved.insert(id, contents);
            self.marked.notify_all();
        }
    }

    /// Waits up to `timeout` for the contents at read mark `id` (and forgets them); `None`
    /// when the mark has not arrived in that time (it is still wanted until
    /// [`ViewStore::forget_mark`]).
    pub fn wait_for_mark(&self, id: u64, timeout: Duration) -> Option<Result<Vec<RecordBatch>>> {
        let deadline = Instant::now() + timeout;
        let mut marks = self.marks.lock();
        let saved = loop {
            if let Some(saved) = marks.saved.remove(&id) {
                break Some(saved);
            }
            if self.marked.wait_until(&mut marks, deadline).timed_out() {
                break marks.saved.remove(&id);
            }
        };
        saved.map(|contents| {
            contents.map_err(|reason| {
                CoreError::Internal(format!(
                    "materialized view '{}' could not be read: {reason}",
                    self.name
                ))
            })
        })
    }

    /// The columns the rows are keyed by, when the view has a natural key: what
    /// [`ViewStore::lookup`] takes.
    pub fn key_columns(&self) -> Option<&[usize]> {
        self.key.as_ref().map(|k| k.columns.as_slice())
    }

    /// How many reads were answered by key and how many read the whole view.
    pub fn reads(&self) -> (u64, u64) {
        (
            self.key_reads.load(Ordering::Relaxed),
            self.full_reads.load(Ordering::Relaxed),
        )
    }

    /// The rows whose key columns equal one of the given keys (one array per key column,
    /// of the column's type), read under one lock: a consistent subset of the view.
    pub fn lookup(&self, keys: &[ArrayRef]) -> Result<RecordBatch> {
        let Some(key) = &self.key else {
            return Err(CoreError::InvalidData(format!(
                "materialized view '{}' has no key to look rows up by",
                self.name
            )));
        };
        let encoded = key
            .converter
            .convert_columns(keys)
            .map_err(|e| self.arrow(e))?;
        self.key_reads.fetch_add(1, Ordering::Relaxed);
        let mut buffer = Vec::new();
        let mut ends = Vec::new();
        {
            let c = self.contents.read();
            let mut seen = std::collections::HashSet::new();
            for k in encoded.iter() {
                if !seen.insert(k.data()) {
                    continue;
                }
                if let Some(bucket) = c.rows.get(k.data()) {
                    for (row, weight) in bucket.rows(k.data()) {
                        for _ in 0..weight {
                            buffer.extend_from_slice(row);
                            ends.push(buffer.len());
                        }
                    }
                }
            }
        }
        self.decode_buffer(&buffer, &ends)
    }

    /// Encoded rows laid end to end (`ends` marks where each ends) as a batch.
    fn decode_buffer(&self, buffer: &[u8], ends: &[usize]) -> Result<RecordBatch> {
        let parser = self.converter.parser();
        let mut start = 0;
        let rows = ends.iter().map(|&end| {
            let row = parser.parse(&buffer[start..end]);
            start = end;
            row
        });
        self.decode(rows, ends.len())
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

    /// The view's current rows (a row of weight n appears n times), from the image (see the
    /// module documentation), refreshed under the write lock when the view changed since the
    /// last read.
    pub fn snapshot(&self) -> Result<RecordBatch> {
        let chunks = self.snapshot_chunks()?;
        match &chunks[..] {
            [one] => Ok(one.clone()),
            _ => arrow::compute::concat_batches(&self.schema, &chunks).map_err(|e| self.arrow(e)),
        }
    }

    /// The view's current rows as [`ViewStore::snapshot`] has them, in several batches (the
    /// image's chunks, shared rather than copied into one batch).
    pub fn snapshot_chunks(&self) -> Result<Vec<RecordBatch>> {
        self.full_reads.fetch_add(1, Ordering::Relaxed);
        if let Some(b) = self.contents.read().cached.clone() {
            return Ok(b);
        }
        let mut c = self.contents.write();
        if let Some(b) = c.cached.clone() {
            return Ok(b);
        }
        if c.image.enabled {
            self.refresh_image(&mut c)?;
        } else {
            self.build_image(&mut c)?;
        }
        let chunks = self.image_rows(&c.image)?;
        c.cached = Some(chunks.clone());
        Ok(chunks)
    }

    /// Images every row (the first read, or after the image was dropped).
    fn build_image(&self, c: &mut Contents) -> Result<()> {
        let distinct = c.distinct as usize;
        let mut buffer = Vec::with_capacity(c.bytes as usize);
        let mut ends = Vec::with_capacity(distinct);
        let mut weights = Vec::with_capacity(distinct);
        let mut ids = Vec::with_capacity(distinct);
        let Contents { rows, image, .. } = c;
        image.queued_at.fill(NONE);
        for (key, bucket) in rows.iter() {
            for (row, weight, id) in bucket.entries(key) {
                image.position[id as usize] = ids.len() as u32;
                buffer.extend_from_slice(row);
                ends.push(buffer.len());
                weights.push(weight);
                ids.push(id);
            }
        }
        let all = self.decode_buffer(&buffer, &ends)?;
        image.chunks = (0..all.num_rows())
            .step_by(CHUNK_ROWS)
            .map(|at| all.slice(at, CHUNK_ROWS.min(all.num_rows() - at)))
            .collect();
        image.weights = weights;
        image.ids = ids;
        image.dead = 0;
        image.queued.clear();
        image.queued_bytes.clear();
        image.enabled = true;
        Ok(())
    }

    /// Brings the image up to date: drops the positions of rows that left, then appends the
    /// queued rows that are still there.
    fn refresh_image(&self, c: &mut Contents) -> Result<()> {
        let image = &mut c.image;
        let arrow = |e| self.arrow(e);
        if image.dead > 0 {
            // Only the chunks that held rows that left are filtered (copied).
            let mut offset = 0;
            let mut kept = Vec::with_capacity(image.chunks.len());
            for chunk in &image.chunks {
                let weights = &image.weights[offset..offset + chunk.num_rows()];
                offset += chunk.num_rows();
                if weights.iter().all(|&w| w > 0) {
                    kept.push(chunk.clone());
                    continue;
                }
                let keep = arrow::array::BooleanArray::from(
                    weights.iter().map(|&w| w > 0).collect::<Vec<bool>>(),
                );
                let filtered = arrow::compute::filter_record_batch(chunk, &keep).map_err(arrow)?;
                if filtered.num_rows() > 0 {
                    kept.push(filtered);
                }
            }
            image.chunks = kept;
            let mut at = 0;
            let (mut weights, mut ids) = (
                Vec::with_capacity(image.weights.len()),
                Vec::with_capacity(image.ids.len()),
            );
            for (&w, &id) in image.weights.iter().zip(&image.ids) {
                if w > 0 {
                    image.position[id as usize] = at;
                    weights.push(w);
                    ids.push(id);
                    at += 1;
                }
            }
            image.weights = weights;
            image.ids = ids;
            image.dead = 0;
        }
        if !image.queued.is_empty() {
            let parser = self.converter.parser();
            let mut rows = Vec::with_capacity(image.queued.len());
            let mut start = 0;
            for &(id, weight, end) in &image.queued {
                if id != NONE {
                    rows.push(parser.parse(&image.queued_bytes[start..end]));
                    image.queued_at[id as usize] = NONE;
                    image.position[id as usize] = image.ids.len() as u32;
                    image.ids.push(id);
                    image.weights.push(weight);
                }
                start = end;
            }
            let added = rows.len();
            let added = self.decode(rows, added)?;
            if added.num_rows() > 0 {
                image.chunks.push(added);
            }
            image.queued.clear();
            image.queued_bytes.clear();
        }
        image.chunks = self.merge_small_chunks(std::mem::take(&mut image.chunks))?;
        Ok(())
    }

    /// Merges runs of adjacent chunks that together hold at most `CHUNK_ROWS` rows (chunks
    /// shrink as rows leave them, and every refresh appends one), keeping the row order.
    fn merge_small_chunks(&self, chunks: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
        let mut merged: Vec<RecordBatch> = Vec::with_capacity(chunks.len());
        let mut run: Vec<RecordBatch> = Vec::new();
        let mut run_rows = 0;
        let mut flush = |run: &mut Vec<RecordBatch>| -> Result<()> {
            match run.len() {
                0 => {}
                1 => merged.append(run),
                _ => {
                    merged.push(
                        arrow::compute::concat_batches(&self.schema, run.iter())
                            .map_err(|e| self.arrow(e))?,
                    );
                    run.clear();
                }
            }
            Ok(())
        };
        for chunk in chunks {
            if run_rows + chunk.num_rows() > CHUNK_ROWS {
                flush(&mut run)?;
                run_rows = 0;
            }
            run_rows += chunk.num_rows();
            run.push(chunk);
        }
        flush(&mut run)?;
        Ok(merged)
    }

    /// The image's rows, each as often as its weight.
    fn image_rows(&self, image: &Image) -> Result<Vec<RecordBatch>> {
        if image.chunks.is_empty() {
            return Ok(vec![RecordBatch::new_empty(self.schema.clone())]);
        }
        let mut out = Vec::with_capacity(image.chunks.len());
        let mut offset = 0;
        for chunk in &image.chunks {
            let weights = &image.weights[offset..offset + chunk.num_rows()];
            offset += chunk.num_rows();
            if weights.iter().all(|&w| w == 1) {
                out.push(chunk.clone());
                continue;
            }
            let mut indices: Vec<u32> = Vec::with_capacity(weights.len());
            for (position, &w) in weights.iter().enumerate() {
                for _ in 0..w {
                    indices.push(position as u32);
                }
            }
            out.push(
                arrow::compute::take_record_batch(chunk, &arrow::array::UInt32Array::from(indices))
                    .map_err(|e| self.arrow(e))?,
            );
        }
        Ok(out)
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
        let mut rows = Vec::with_capacity(c.distinct as usize);
        let mut weights = Vec::with_capacity(c.distinct as usize);
        for (bytes, weight) in c.iter() {
            rows.push(parser.parse(bytes));
            weights.push(weight);
        }
        let count = rows.len();
        Ok((self.decode(rows, count)?, weights))
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
    /// (The view's operator applies every batch; this is also how a view starts with its
    /// query's [`Operator::initial_output`].)
    pub fn apply(&self, batch: &RecordBatch) -> Result<()> {
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
        let keys = self.encode_keys(&columns)?;
        // Net change per distinct row, so a batch that deletes and re-inserts a row is
        // checked as a whole; with the position of one of its occurrences (for its key).
        let mut deltas: HashMap<&[u8], (usize, i64)> = HashMap::default();
        for (i, row) in rows.iter().enumerate() {
            let w = ops.as_ref().map_or(1, |ops| ops[i].weight());
            deltas.entry(row.data()).or_insert((i, 0)).1 += w;
        }
        let mut c = self.contents.write();
        // Each changed row: its bucket key, its weight now, the change.
        let mut changes: Vec<(&[u8], &[u8], i64, i64)> = Vec::with_capacity(deltas.len());
        let mut new_bytes = c.bytes as i64;
        let mut new_rows = c.distinct as i64;
        for (row, (i, delta)) in deltas {
            if delta == 0 {
                continue;
            }
            let key = keys.as_ref().map_or(row, |k| k.row(i).data());
            let now = c.rows.get(key).map_or(0, |b| b.weight(key, row));
            let size = self.row_size(key, row);
            if now == 0 && now + delta > 0 {
                new_bytes += size;
                new_rows += 1;
            } else if now > 0 && now + delta == 0 {
                new_bytes -= size;
                new_rows -= 1;
            }
            if now + delta < 0 {
                return Err(self.absent_row(row, now, delta));
            }
            changes.push((key, row, now, delta));
        }
        if let Some(budget) = self.budget
            && new_bytes > budget as i64
        {
            return Err(CoreError::InvalidData(format!(
                "materialized view '{}' would hold {new_rows} rows in about {new_bytes} bytes, over its memory budget of {budget} bytes (memory.budget); the batch was not applied; raise the budget or narrow the view",
                self.name
            )));
        }
        // Removals first: an update of a keyed row then replaces it within its bucket.
        changes.sort_unstable_by_key(|c| c.3 > 0);
        let mut added_count: i64 = 0;
        for &(key, row, _, delta) in &changes {
            added_count += delta;
            self.add(&mut c, key, row, delta);
        }
        c.count = (c.count as i64 + added_count) as u64;
        c.bytes = new_bytes as u64;
        c.distinct = new_rows as u64;
        if !changes.is_empty() {
            c.cached = None;
        }
        Ok(())
    }

    /// The encoded key of every row of `columns` (the view's columns), for a keyed view.
    fn encode_keys(&self, columns: &[ArrayRef]) -> Result<Option<arrow::row::Rows>> {
        let Some(key) = &self.key else {
            return Ok(None);
        };
        let key_columns: Vec<ArrayRef> = key.columns.iter().map(|&i| columns[i].clone()).collect();
        key.converter
            .convert_columns(&key_columns)
            .map(Some)
            .map_err(|e| self.arrow(e))
    }

    /// Bytes counted for one distinct row.
    fn row_size(&self, key: &[u8], row: &[u8]) -> i64 {
        let key_len = if self.key.is_some() { key.len() } else { 0 };
        (row.len() + key_len) as i64 + ROW_OVERHEAD as i64
    }

    /// Adds `delta` to the weight of `row` (in bucket `key`); the caller has checked that it
    /// stays >= 0. Does not update the counters.
    fn add(&self, c: &mut Contents, key: &[u8], row: &[u8], delta: i64) {
        match c.rows.get_mut(key) {
            Some(bucket) => {
                if bucket.add(row, delta, &mut c.image) {
                    c.rows.remove(key);
                }
            }
            None => {
                let id = c.image.new_row(row, delta);
                let bucket = if self.key.is_some() {
                    Bucket::One(row.into(), delta, id)
                } else {
                    Bucket::Row(delta, id)
                };
                c.rows.insert(key.into(), bucket);
            }
        }
    }

    /// The error for a change that removes more of `row` than the view holds.
    fn absent_row(&self, row: &[u8], held: i64, delta: i64) -> CoreError {
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
        CoreError::InvalidData(format!(
            "materialized view '{}': a change removes a row the view does not hold ({} of it held, {} removed); the batch was not applied\n{shown}",
            self.name, held, -delta
        ))
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
        let columns = &batch.columns()[..n - 1];
        let rows = self
            .converter
            .convert_columns(columns)
            .map_err(|e| self.arrow(e))?;
        let keys = self.encode_keys(columns)?;
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
            let key = keys.as_ref().map_or(row.data(), |k| k.row(i).data());
            if contents
                .rows
                .get(key)
                .is_some_and(|b| b.weight(key, row.data()) > 0)
            {
                return Err(CoreError::InvalidData(format!(
                    "materialized view '{}': a checkpointed row appears twice",
                    self.name
                )));
            }
            contents.count += w as u64;
            contents.distinct += 1;
            contents.bytes += self.row_size(key, row.data()) as u64;
            self.add(&mut contents, key, row.data(), w);
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
    /// False when the contents are rebuilt from elsewhere after a restart (the rows of a
    /// table): checkpoints then hold nothing for this node.
    checkpointed: bool,
}

impl ViewOperator {
    /// The operator of `store`, whose query emits batches of schema `output`.
    pub fn new(store: Arc<ViewStore>, output: SchemaRef) -> ViewOperator {
        ViewOperator {
            store,
            output,
            checkpointed: true,
        }
    }

    /// The operator of a store whose contents are rebuilt after a restart from what they
    /// mirror, so its snapshot is empty.
    pub fn mirror(store: Arc<ViewStore>, output: SchemaRef) -> ViewOperator {
        ViewOperator {
            store,
            output,
            checkpointed: false,
        }
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
        if is_read_mark(epoch) {
            self.store.save_mark(epoch);
        }
        out.push(Message::Barrier(epoch));
        Ok(())
    }

    fn on_end(&mut self, _out: &mut Vec<Message>) -> Result<()> {
        Ok(())
    }

    fn state_size(&self) -> StateSize {
        let c = self.store.contents.read();
        StateSize {
            rows: c.distinct,
            bytes: c.bytes,
        }
    }

    fn snapshot(&mut self) -> Result<Option<Vec<u8>>> {
        if !self.checkpointed {
            return Ok(None);
        }
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
        pairs(&store.snapshot().unwrap())
    }

    /// The `(k, n)` rows of a batch, sorted.
    fn pairs(b: &RecordBatch) -> Vec<(String, i64)> {
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
        let store = ViewStore::new("v", &schema, None, None).unwrap();
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
        let restored = ViewStore::new("v", &schema, None, None).unwrap();
        ViewOperator::new(restored.clone(), schema)
            .restore(&bytes)
            .unwrap();
        assert_eq!(contents(&restored), contents(&store));
        assert_eq!(restored.size(), store.size());
    }

    #[test]
    fn a_retraction_of_an_absent_row_fails_and_changes_nothing() {
        let schema = changes(&[]).schema();
        let store = ViewStore::new("v", &schema, None, None).unwrap();
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

    fn lookup(store: &ViewStore, keys: &[&str]) -> Vec<(String, i64)> {
        let keys: ArrayRef = Arc::new(StringArray::from(keys.to_vec()));
        pairs(&store.lookup(&[keys]).unwrap())
    }

    #[test]
    fn a_keyed_view_answers_lookups_and_keeps_several_rows_per_key() {
        let schema = changes(&[]).schema();
        let key = ["k".to_string()];
        let store = ViewStore::new("v", &schema, None, Some(&key)).unwrap();
        assert_eq!(store.key_columns(), Some(&[0][..]));
        store
            .apply(&changes(&[("a", 1, "I"), ("b", 5, "I"), ("a", 2, "I")]))
            .unwrap();
        store
            .apply(&changes(&[("a", 2, "I"), ("b", 5, "U-"), ("b", 6, "U+")]))
            .unwrap();
        assert_eq!(
            lookup(&store, &["a"]),
            vec![("a".into(), 1), ("a".into(), 2), ("a".into(), 2)]
        );
        assert_eq!(lookup(&store, &["b", "zz", "b"]), vec![("b".into(), 6)]);
        assert_eq!(store.size().rows, 4);
        let bytes_before = store.size().bytes;
        // Removing rows of a bucket in any order leaves exactly the rest.
        store
            .apply(&changes(&[("a", 1, "D"), ("a", 2, "D")]))
            .unwrap();
        assert_eq!(lookup(&store, &["a"]), vec![("a".into(), 2)]);
        let e = store
            .apply(&changes(&[("a", 2, "D"), ("a", 2, "D")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not hold (1 of it held, 2 removed)"), "{e}");
        assert!(store.size().bytes < bytes_before);
        store.apply(&changes(&[("a", 2, "D")])).unwrap();
        assert_eq!(lookup(&store, &["a"]), vec![]);
        assert_eq!(contents(&store), vec![("b".to_string(), 6)]);
        assert_eq!(store.size().rows, 1);

        // A checkpoint restores the buckets.
        store
            .apply(&changes(&[("c", 1, "I"), ("c", 1, "I"), ("c", 3, "I")]))
            .unwrap();
        let mut op = ViewOperator::new(store.clone(), schema.clone());
        let bytes = op.snapshot().unwrap().unwrap();
        let restored = ViewStore::new("v", &schema, None, Some(&key)).unwrap();
        ViewOperator::new(restored.clone(), schema.clone())
            .restore(&bytes)
            .unwrap();
        assert_eq!(
            lookup(&restored, &["c"]),
            vec![("c".into(), 1), ("c".into(), 1), ("c".into(), 3)]
        );
        assert_eq!(restored.size(), store.size());
        assert_eq!(contents(&restored), contents(&store));

        // Unknown key names leave the view unkeyed.
        let unkeyed = ViewStore::new("v", &schema, None, Some(&["x".to_string()])).unwrap();
        assert_eq!(unkeyed.key_columns(), None);
        assert!(unkeyed.lookup(&[]).is_err());
    }

    #[test]
    fn a_read_mark_saves_the_contents_at_the_mark_for_the_query_that_wants_it() {
        use crate::message::READ_MARK;
        let schema = changes(&[]).schema();
        let store = ViewStore::new("v", &schema, None, None).unwrap();
        let mut op = ViewOperator::new(store.clone(), schema.clone());
        let mut out = Vec::new();
        op.on_batch(0, changes(&[("a", 1, "I")]), &mut out).unwrap();
        // A mark nobody wants saves nothing; a checkpoint barrier is no mark.
        op.on_barrier(READ_MARK | 1, &mut out).unwrap();
        op.on_barrier(2, &mut out).unwrap();
        store.want_mark(READ_MARK | 1);
        store.want_mark(2);
        assert!(store.wait_for_mark(READ_MARK | 1, Duration::ZERO).is_none());
        assert!(store.wait_for_mark(2, Duration::ZERO).is_none());
        store.forget_mark(READ_MARK | 1);
        store.forget_mark(2);
        // A wanted mark: the contents at the mark, not after it; the mark travels on.
        store.want_mark(READ_MARK | 3);
        op.on_batch(0, changes(&[("b", 2, "I")]), &mut out).unwrap();
        out.clear();
        op.on_barrier(READ_MARK | 3, &mut out).unwrap();
        assert!(matches!(out[..], [Message::Barrier(id)] if id == READ_MARK | 3));
        op.on_batch(0, changes(&[("a", 1, "D")]), &mut out).unwrap();
        let saved = store
            .wait_for_mark(READ_MARK | 3, Duration::from_secs(1))
            .expect("the mark arrived")
            .unwrap();
        let saved = arrow::compute::concat_batches(&store.schema, &saved).unwrap();
        assert_eq!(
            pairs(&saved),
            vec![("a".to_string(), 1), ("b".to_string(), 2)]
        );
        assert_eq!(contents(&store), vec![("b".to_string(), 2)]);
        // Taken once; a forgotten mark leaves nothing behind.
        assert!(store.wait_for_mark(READ_MARK | 3, Duration::ZERO).is_none());
        store.forget_mark(READ_MARK | 3);
        assert!(store.marks.lock().wanted.is_empty() && store.marks.lock().saved.is_empty());
    }

    #[test]
    fn a_view_over_its_budget_fails_with_its_size() {
        let schema = changes(&[]).schema();
        let store = ViewStore::new("v", &schema, Some(200), None).unwrap();
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

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, failure_persistence: None, ..Default::default() })]

        /// Whole-view reads interleaved with changes (keyed and unkeyed views, rows with
        /// several copies, rows that leave and come back, images dropped for growing queues)
        /// always equal the multiset the changes leave.
        #[test]
        fn snapshots_between_changes_equal_the_contents(
            batches in proptest::collection::vec(
                (proptest::collection::vec((0u8..6, 0i64..4, proptest::prelude::any::<bool>()), 0..12), proptest::prelude::any::<bool>()),
                0..30,
            ),
            keyed in proptest::prelude::any::<bool>(),
        ) {
            let schema = changes(&[]).schema();
            let key = ["k".to_string()];
            let store = ViewStore::new("v", &schema, None, keyed.then_some(&key[..])).unwrap();
            let mut model: std::collections::BTreeMap<(String, i64), i64> = Default::default();
            let names = ["a", "b", "c", "d", "e", "f"];
            for (rows, read) in batches {
                // A keyed view holds one row per key (an aggregation's): a change replaces
                // the key's row; an unkeyed one adds or removes copies.
                let mut batch: Vec<(&str, i64, &str)> = Vec::new();
                let mut next = model.clone();
                for (k, n, add) in rows {
                    let name = names[k as usize];
                    let held: Vec<(String, i64)> = next.keys().filter(|(kk, _)| kk == name).cloned().collect();
                    if keyed {
                        if let Some(old) = held.first() {
                            batch.push((name, old.1, "U-"));
                            *next.get_mut(old).unwrap() -= 1;
                            next.retain(|_, w| *w > 0);
                        }
                        if add {
                            batch.push((name, n, "U+"));
                            *next.entry((name.to_string(), n)).or_insert(0) += 1;
                        }
                    } else if !add && next.contains_key(&(name.to_string(), n)) {
                        batch.push((name, n, "D"));
                        *next.get_mut(&(name.to_string(), n)).unwrap() -= 1;
                        next.retain(|_, w| *w > 0);
                    } else {
                        batch.push((name, n, "I"));
                        *next.entry((name.to_string(), n)).or_insert(0) += 1;
                    }
                }
                store.apply(&changes(&batch)).unwrap();
                model = next;
                if read {
                    let want: Vec<(String, i64)> = model
                        .iter()
                        .flat_map(|(row, &w)| std::iter::repeat_n(row.clone(), w as usize))
                        .collect();
                    proptest::prop_assert_eq!(contents(&store), want);
                }
            }
        }
    }
}
