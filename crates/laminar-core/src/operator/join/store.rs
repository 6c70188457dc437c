//! Row storage for join state: rows kept in the Arrow batches they arrived in, addressed by
//! (chunk, row), with per-row event time, liveness and "matched" flags. A chunk is freed when
//! its last row dies.

use std::collections::VecDeque;

use arrow::array::{Array, ArrayRef, RecordBatch, UInt32Array};
use arrow::compute::{interleave, take};
use arrow::datatypes::SchemaRef;

use crate::error::{CoreError, Result};
use crate::operator::StateSize;

/// Address of a stored row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct RowRef {
    pub(super) chunk: u64,
    pub(super) row: u32,
}

struct Chunk {
    batch: RecordBatch,
    times: Vec<i64>,
    dead: Vec<bool>,
    matched: Vec<bool>,
    live: u32,
    bytes: usize,
}

/// See the module docs.
pub(super) struct RowStore {
    schema: SchemaRef,
    chunks: VecDeque<Option<Chunk>>,
    first: u64,
    rows: usize,
    bytes: usize,
}

impl RowStore {
    pub(super) fn new(schema: SchemaRef) -> RowStore {
        RowStore {
            schema,
            chunks: VecDeque::new(),
            first: 0,
            rows: 0,
            bytes: 0,
        }
    }

    /// Stores a batch with its rows' event times; returns its chunk id.
    pub(super) fn push(&mut self, batch: RecordBatch, times: Vec<i64>) -> u64 {
        let n = batch.num_rows();
        let bytes = batch.get_array_memory_size();
        self.rows += n;
        self.bytes += bytes;
        self.chunks.push_back(Some(Chunk {
            batch,
            times,
            dead: vec![false; n],
            matched: vec![false; n],
            live: n as u32,
            bytes,
        }));
        self.first + self.chunks.len() as u64 - 1
    }

    fn chunk(&self, id: u64) -> Option<&Chunk> {
        let pos = id.checked_sub(self.first)?;
        self.chunks.get(pos as usize)?.as_ref()
    }

    fn chunk_mut(&mut self, id: u64) -> Option<&mut Chunk> {
        let pos = id.checked_sub(self.first)?;
        self.chunks.get_mut(pos as usize)?.as_mut()
    }

    /// True when the row is stored and alive.
    pub(super) fn is_live(&self, r: RowRef) -> bool {
        self.chunk(r.chunk).is_some_and(|c| !c.dead[r.row as usize])
    }

    /// Event time of a stored row.
    pub(super) fn time(&self, r: RowRef) -> Option<i64> {
        self.chunk(r.chunk).map(|c| c.times[r.row as usize])
    }

    pub(super) fn set_matched(&mut self, r: RowRef) {
        if let Some(c) = self.chunk_mut(r.chunk) {
            c.matched[r.row as usize] = true;
        }
    }

    pub(super) fn is_matched(&self, r: RowRef) -> bool {
        self.chunk(r.chunk)
            .is_some_and(|c| c.matched[r.row as usize])
    }

    /// Marks a row dead; frees chunks at the front that have no live row left.
    pub(super) fn kill(&mut self, r: RowRef) {
        let mut freed = None;
        let mut killed = false;
        if let Some(c) = self.chunk_mut(r.chunk) {
            let i = r.row as usize;
            if !c.dead[i] {
                c.dead[i] = true;
                c.live -= 1;
                killed = true;
                if c.live == 0 {
                    freed = Some(c.bytes);
                }
            }
        }
        if killed {
            self.rows -= 1;
        }
        if let Some(bytes) = freed {
            self.bytes -= bytes;
            let pos = (r.chunk - self.first) as usize;
            self.chunks[pos] = None;
            while matches!(self.chunks.front(), Some(None)) {
                self.chunks.pop_front();
                self.first += 1;
            }
        }
    }

    /// The rows at `refs`, in order (each must be stored).
    pub(super) fn gather(&self, refs: &[RowRef]) -> Result<RecordBatch> {
        if refs.is_empty() {
            return Ok(RecordBatch::new_empty(self.schema.clone()));
        }
        // Chunks referenced, in first-use order.
        let mut used: Vec<u64> = Vec::new();
        let mut indices = Vec::with_capacity(refs.len());
        for r in refs {
            let slot = match used.iter().position(|&c| c == r.chunk) {
                Some(p) => p,
                None => {
                    used.push(r.chunk);
                    used.len() - 1
                }
            };
            indices.push((slot, r.row as usize));
        }
        let batches = used
            .iter()
            .map(|&id| {
                self.chunk(id)
                    .map(|c| &c.batch)
                    .ok_or_else(|| CoreError::Internal(format!("join state has no chunk {id}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let columns = if let [only] = batches.as_slice() {
            let idx = UInt32Array::from(indices.iter().map(|&(_, r)| r as u32).collect::<Vec<_>>());
            only.columns()
                .iter()
                .map(|c| take(c.as_ref(), &idx, None))
                .collect::<std::result::Result<Vec<ArrayRef>, _>>()
        } else {
            (0..self.schema.fields().len())
                .map(|col| {
                    let arrays: Vec<&dyn Array> =
                        batches.iter().map(|b| b.column(col).as_ref()).collect();
                    interleave(&arrays, &indices)
                })
                .collect::<std::result::Result<Vec<ArrayRef>, _>>()
        }
        .map_err(|e| CoreError::Internal(e.to_string()))?;
        RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(refs.len())),
        )
        .map_err(|e| CoreError::Internal(e.to_string()))
    }

    pub(super) fn size(&self) -> StateSize {
        StateSize {
            rows: self.rows as u64,
            bytes: self.bytes as u64,
        }
    }
}

/// Row-encodes join keys; a row with a NULL key column has no key (SQL `=` never matches it).
pub(super) struct KeyEncoder {
    converter: Option<arrow::row::RowConverter>,
}

/// Encoded keys of a batch.
pub(super) struct EncodedKeys {
    rows: Option<arrow::row::Rows>,
    nulls: Vec<bool>,
}

impl EncodedKeys {
    /// The key of row `i`, `None` when a key column is NULL.
    pub(super) fn key(&self, i: usize) -> Option<&[u8]> {
        if self.nulls[i] {
            return None;
        }
        Some(match &self.rows {
            Some(rows) => rows.row(i).data(),
            None => &[],
        })
    }
}

impl KeyEncoder {
    pub(super) fn new(types: Vec<arrow::datatypes::DataType>) -> Result<KeyEncoder> {
        if types.is_empty() {
            return Ok(KeyEncoder { converter: None });
        }
        let converter = arrow::row::RowConverter::new(
            types.into_iter().map(arrow::row::SortField::new).collect(),
        )
        .map_err(|e| CoreError::Internal(format!("join key: {e}")))?;
        Ok(KeyEncoder {
            converter: Some(converter),
        })
    }

    pub(super) fn encode(&self, columns: &[ArrayRef], rows: usize) -> Result<EncodedKeys> {
        let mut nulls = vec![false; rows];
        for c in columns {
            if c.null_count() > 0 {
                for (i, null) in nulls.iter_mut().enumerate() {
                    *null |= c.is_null(i);
                }
            }
        }
        let rows = match &self.converter {
            Some(converter) => Some(
                converter
                    .convert_columns(columns)
                    .map_err(|e| CoreError::Internal(format!("join key: {e}")))?,
            ),
            None => None,
        };
        Ok(EncodedKeys { rows, nulls })
    }
}
