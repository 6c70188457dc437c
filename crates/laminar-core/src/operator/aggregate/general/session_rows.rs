//! Session windows over a changelog input. Deleting a row can shrink a session, remove it, or
//! split it into several sessions; the aggregates of the pieces are rebuilt from their rows.
//! So each group key keeps the live rows of its open sessions (event time and the aggregates'
//! arguments and FILTER masks in the Arrow row format, with their multiplicity) until the
//! session closes.
//!
//! A deletion of a row that is not present (its insertion has not arrived yet) is held as a
//! pending deletion that cancels the insertion when it comes; it is dropped once such an
//! insertion would be too late (by the same rule as for insertions: too late for its own
//! window and joining no open session of its key).

use std::collections::BTreeMap;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, UInt32Array};
use arrow::datatypes::DataType;
use arrow::row::{RowConverter, Rows, SortField};

use super::{Group, HashMap, KeySet, Session, update_group_with};
use crate::error::{CoreError, Result};
use crate::operator::aggregate::{AggregateSpec, Prepared};
use crate::snapshot::{SnapshotReader, SnapshotWriter};

/// One key's live rows: (event time, encoded row) -> multiplicity (always > 0).
type KeyRows = BTreeMap<(i64, Box<[u8]>), i64>;

/// Pending deletions -> count (always < 0).
type PendingDeletions = BTreeMap<PendingEntry, i64>;

/// (event time, group key, encoded row) of a pending deletion.
type PendingEntry = (i64, Box<[u8]>, Box<[u8]>);

/// The live rows of the open sessions of a changelog session aggregation.
pub(super) struct SessionRows {
    /// Encodes the event time, then per aggregate its inputs and FILTER mask.
    converter: RowConverter,
    /// The type of each encoded column (decoding yields a dictionary's value type, cast
    /// back to this).
    types: Vec<DataType>,
    /// Per aggregate: the number of input columns and whether a FILTER mask follows.
    layout: Vec<(usize, bool)>,
    /// Per group key, its live rows.
    live: HashMap<Box<[u8]>, KeyRows>,
    /// Deletions of rows that are not present.
    pending: PendingDeletions,
    /// Bytes held by `live` and `pending` (keys and encoded rows).
    bytes: u64,
}

impl SessionRows {
    pub(super) fn new(spec: &AggregateSpec) -> Result<SessionRows> {
        let df = |source| CoreError::Evaluation {
            operator: spec.name.clone(),
            source,
        };
        let mut types = vec![DataType::Int64];
        let mut layout = Vec::with_capacity(spec.aggregates.len());
        for call in &spec.aggregates {
            let inputs = call.inputs();
            for input in &inputs {
                types.push(input.data_type(&spec.input_schema).map_err(df)?);
            }
            if call.filter.is_some() {
                types.push(DataType::Boolean);
            }
            layout.push((inputs.len(), call.filter.is_some()));
        }
        let fields = types.iter().map(|t| SortField::new(t.clone())).collect();
        let converter = RowConverter::new(fields).map_err(|source| CoreError::Arrow {
            operator: spec.name.clone(),
            source,
        })?;
        Ok(SessionRows {
            converter,
            types,
            layout,
            live: HashMap::default(),
            pending: BTreeMap::new(),
            bytes: 0,
        })
    }

    /// Encodes every row of a prepared batch.
    pub(super) fn encode(&self, spec: &AggregateSpec, prepared: &Prepared) -> Result<Rows> {
        let times = prepared.times.as_ref().ok_or_else(|| {
            CoreError::Internal(format!(
                "{}: a session window without event time",
                spec.name
            ))
        })?;
        let mut columns: Vec<ArrayRef> = vec![std::sync::Arc::new(Int64Array::from(times.clone()))];
        for (args, filter) in prepared.args.iter().zip(&prepared.filters) {
            columns.extend(args.iter().cloned());
            if let Some(mask) = filter {
                columns.push(std::sync::Arc::new(mask.clone()));
            }
        }
        self.converter
            .convert_columns(&columns)
            .map_err(|source| CoreError::Arrow {
                operator: spec.name.clone(),
                source,
            })
    }

    /// Cancels a pending deletion of this row; false when there is none.
    pub(super) fn cancel_pending(&mut self, t: i64, key: &[u8], row: &[u8]) -> bool {
        if self.pending.is_empty() {
            return false;
        }
        let entry = (t, Box::from(key), Box::from(row));
        let Some(count) = self.pending.get_mut(&entry) else {
            return false;
        };
        *count += 1;
        if *count == 0 {
            self.pending.remove(&entry);
            self.bytes -= (key.len() + row.len()) as u64;
        }
        true
    }

    /// Holds `n` deletions of a row that is not present.
    pub(super) fn add_pending(&mut self, t: i64, key: &[u8], row: &[u8], n: i64) {
        let count = self
            .pending
            .entry((t, Box::from(key), Box::from(row)))
            .or_insert(0);
        if *count == 0 {
            self.bytes += (key.len() + row.len()) as u64;
        }
        *count -= n;
    }

    /// Adds `n` occurrences of a row.
    pub(super) fn add(&mut self, t: i64, key: &[u8], row: &[u8], n: i64) {
        let rows = match self.live.get_mut(key) {
            Some(rows) => rows,
            None => {
                self.bytes += key.len() as u64;
                self.live.entry(Box::from(key)).or_default()
            }
        };
        let count = rows.entry((t, Box::from(row))).or_insert(0);
        if *count == 0 {
            self.bytes += row.len() as u64 + 16;
        }
        *count += n;
    }

    /// Removes one occurrence of a row; false when it is not present.
    pub(super) fn remove(&mut self, t: i64, key: &[u8], row: &[u8]) -> bool {
        let Some(rows) = self.live.get_mut(key) else {
            return false;
        };
        let entry = (t, Box::from(row));
        let Some(count) = rows.get_mut(&entry) else {
            return false;
        };
        *count -= 1;
        if *count == 0 {
            rows.remove(&entry);
            self.bytes -= row.len() as u64 + 16;
            if rows.is_empty() {
                self.live.remove(key);
                self.bytes -= key.len() as u64;
            }
        }
        true
    }

    /// The sessions the live rows of `key` within `[start, end)` form: (first event time,
    /// last event time) of each, in order. Two rows are in one session when the later one is
    /// at most `gap` after the earlier one.
    pub(super) fn segments(&self, key: &[u8], start: i64, end: i64, gap: i64) -> Vec<(i64, i64)> {
        let mut pieces: Vec<(i64, i64)> = Vec::new();
        let Some(rows) = self.live.get(key) else {
            return pieces;
        };
        for &(t, _) in rows
            .range((start, Box::from(&[][..]))..(end, Box::from(&[][..])))
            .map(|(k, _)| k)
        {
            match pieces.last_mut() {
                Some(last) if t <= last.1.saturating_add(gap) => last.1 = t,
                _ => pieces.push((t, t)),
            }
        }
        pieces
    }

    /// Feeds the live rows of `key` with event time in `[first, last]` into `group`.
    pub(super) fn rebuild(
        &self,
        spec: &AggregateSpec,
        key: &[u8],
        first: i64,
        last: i64,
        group: &mut Group,
    ) -> Result<()> {
        let Some(rows) = self.live.get(key) else {
            return Ok(());
        };
        let arrow_error = |source| CoreError::Arrow {
            operator: spec.name.clone(),
            source,
        };
        let parser = self.converter.parser();
        let mut encoded = Vec::new();
        let mut indices: Vec<u32> = Vec::new();
        let bound = last.checked_add(1).map(|b| (b, Box::from(&[][..])));
        let range = match &bound {
            Some(b) => rows.range((first, Box::from(&[][..]))..b.clone()),
            None => rows.range((first, Box::from(&[][..]))..),
        };
        for ((_, row), &count) in range {
            let index = encoded.len() as u32;
            encoded.push(parser.parse(row));
            for _ in 0..count {
                indices.push(index);
            }
        }
        if indices.is_empty() {
            return Ok(());
        }
        let columns = self.converter.convert_rows(encoded).map_err(arrow_error)?;
        // Repeated rows: take each encoded row as often as it occurs; a dictionary column
        // decodes as its values and is cast back.
        let take = UInt32Array::from(indices);
        let columns = columns
            .iter()
            .zip(&self.types)
            .map(|(c, data_type)| {
                let taken = arrow::compute::take(c.as_ref(), &take, None)?;
                if taken.data_type() == data_type {
                    Ok(taken)
                } else {
                    arrow::compute::cast(&taken, data_type)
                }
            })
            .collect::<std::result::Result<Vec<ArrayRef>, _>>()
            .map_err(arrow_error)?;
        let mut args = Vec::with_capacity(self.layout.len());
        let mut filters = Vec::with_capacity(self.layout.len());
        let mut next = 1;
        for &(inputs, filtered) in &self.layout {
            args.push(columns[next..next + inputs].to_vec());
            next += inputs;
            filters.push(if filtered {
                next += 1;
                Some(columns[next - 1].as_boolean().clone())
            } else {
                None
            });
        }
        let all: Vec<u32> = (0..take_len(&columns) as u32).collect();
        update_group_with(spec, group, &args, &filters, &all, false)
    }

    /// Forgets the rows of a closed session.
    pub(super) fn free(&mut self, key: &[u8], start: i64, end: i64) {
        let Some(rows) = self.live.get_mut(key) else {
            return;
        };
        let doomed: Vec<(i64, Box<[u8]>)> = rows
            .range((start, Box::from(&[][..]))..(end, Box::from(&[][..])))
            .map(|(k, _)| k.clone())
            .collect();
        for entry in doomed {
            self.bytes -= entry.1.len() as u64 + 16;
            rows.remove(&entry);
        }
        if rows.is_empty() {
            self.live.remove(key);
            self.bytes -= key.len() as u64;
        }
    }

    /// Drops pending deletions whose insertion would be too late: event time at or below
    /// `bound` and, by `open`, no open session of their key that the insertion would join.
    pub(super) fn prune_pending(&mut self, bound: i64, open: impl Fn(&[u8], i64) -> bool) {
        let doomed: Vec<PendingEntry> = self
            .pending
            .keys()
            .take_while(|(t, _, _)| *t <= bound)
            .filter(|(t, key, _)| !open(key, *t))
            .cloned()
            .collect();
        for entry in doomed {
            self.bytes -= (entry.1.len() + entry.2.len()) as u64;
            self.pending.remove(&entry);
        }
    }

    /// Held rows (distinct live rows and pending deletions) and their bytes.
    pub(super) fn size(&self) -> (u64, u64) {
        let rows =
            self.live.values().map(|r| r.len() as u64).sum::<u64>() + self.pending.len() as u64;
        (rows, self.bytes)
    }

    /// Forgets every row.
    pub(super) fn clear(&mut self) {
        self.live.clear();
        self.pending.clear();
        self.bytes = 0;
    }

    /// Forgets the rows of one key (its sessions are replaced by a snapshot).
    pub(super) fn remove_key(&mut self, key: &[u8]) {
        if let Some(rows) = self.live.remove(key) {
            self.bytes -=
                key.len() as u64 + rows.keys().map(|(_, r)| r.len() as u64 + 16).sum::<u64>();
        }
    }

    /// Writes the live rows of `keys` (every key when `None`) and every pending deletion.
    pub(super) fn write(&self, w: &mut SnapshotWriter, keys: Option<&KeySet>) {
        let chosen: Vec<(&[u8], &KeyRows)> = match keys {
            None => self.live.iter().map(|(k, r)| (&**k, r)).collect(),
            Some(keys) => keys
                .iter()
                .filter_map(|k| self.live.get(k).map(|r| (&**k, r)))
                .collect(),
        };
        w.u64(chosen.len() as u64);
        for (key, rows) in chosen {
            w.bytes(key);
            w.u64(rows.len() as u64);
            for ((t, row), count) in rows {
                w.i64(*t);
                w.bytes(row);
                w.i64(*count);
            }
        }
        w.u64(self.pending.len() as u64);
        for ((t, key, row), count) in &self.pending {
            w.i64(*t);
            w.bytes(key);
            w.bytes(row);
            w.i64(*count);
        }
    }

    /// Reads what [`SessionRows::write`] wrote: the keys' rows are added, the pending
    /// deletions replace the held ones.
    pub(super) fn read(&mut self, spec: &AggregateSpec, r: &mut SnapshotReader<'_>) -> Result<()> {
        let invalid = |what: &str| {
            CoreError::InvalidData(format!("snapshot of aggregation '{}': {what}", spec.name))
        };
        for _ in 0..r.count()? {
            let key = r.bytes()?.to_vec();
            for _ in 0..r.count()? {
                let t = r.i64()?;
                let row = r.bytes()?.to_vec();
                let count = r.i64()?;
                if count <= 0 {
                    return Err(invalid("a session row with a multiplicity below one"));
                }
                self.add(t, &key, &row, count);
            }
        }
        for (_, key, row) in std::mem::take(&mut self.pending).into_keys() {
            self.bytes -= (key.len() + row.len()) as u64;
        }
        for _ in 0..r.count()? {
            let t = r.i64()?;
            let key = r.bytes()?.to_vec();
            let row = r.bytes()?.to_vec();
            let count = r.i64()?;
            if count >= 0 {
                return Err(invalid(
                    "a pending session deletion with a count above minus one",
                ));
            }
            self.add_pending(t, &key, &row, -count);
        }
        Ok(())
    }
}

fn take_len(columns: &[ArrayRef]) -> usize {
    columns.first().map_or(0, |c| c.len())
}

/// The session of `sessions` that holds event time `t`.
pub(super) fn holding(sessions: &[Session], t: i64) -> Option<usize> {
    sessions.iter().position(|s| s.start <= t && t < s.end)
}
