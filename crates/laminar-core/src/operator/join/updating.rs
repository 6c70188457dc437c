//! Updating (regular) joins: both inputs are changelogs (Z-sets of rows with weights), and
//! the output is the changelog of the join of their current contents.
//!
//! Each side keeps its current rows, grouped by join key, as distinct rows (Arrow row
//! format) with a weight (copies) and a match count (the summed weight of the other side's
//! rows it joins with). A change to one side probes the other side's rows of its key and
//! emits, with the change's sign:
//!
//! - INNER / LEFT / RIGHT / FULL: a joined row per match, times the match's copies; a side
//!   kept by an outer join also emits its NULL-padded row while its match count is 0, so a
//!   row's first match retracts the padded row and its last match re-inserts it;
//! - SEMI: the left row while its match count is above 0; ANTI: while it is 0. A
//!   null-aware ANTI join (`NOT IN`) follows SQL: no left row qualifies once the right side
//!   holds a NULL key, a left row with a NULL key qualifies only while the right side is
//!   empty.
//!
//! A row with a NULL key never matches (SQL `=`); it is not stored unless a null-aware ANTI
//! join needs it. Inputs without `_op` are insert-only. Output rows carry `I` / `D` in every
//! `_op` column of the output schema.
//!
//! Append-only inputs would keep their rows forever; such a side carries a state TTL in
//! event time: a row leaves the state once the side's watermark passes `ts + ttl`, without
//! retracting what it joined (as in other streaming databases, results joined with an
//! expired row stay).

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::row::{OwnedRow, Row, RowConverter};
use datafusion::common::hash_utils::RandomState;
use datafusion::physical_expr::PhysicalExpr;

use super::store::KeyEncoder;
use super::{
    JoinKind, JoinStepSpec, JoinType, StepState, StepTime, TimeColumn, cast_columns,
    condition_mask, eval_keys, joined, threshold, times_ms,
};
use crate::error::{CoreError, Result};
use crate::message::{ChangeOp, change_ops};
use crate::operator::StateSize;
use crate::operator::rows::{op_columns, ops_as_inserts, row_converter};
use crate::snapshot::{SnapshotReader, SnapshotWriter};

type HashMap<K, V> = std::collections::HashMap<K, V, RandomState>;

/// Bytes counted per stored row besides its encoding.
const ENTRY_OVERHEAD: usize = 48;

/// Bytes counted per entry of the TTL index besides the encodings.
const EXPIRY_OVERHEAD: usize = 40;

/// A stored row with its key, both encoded.
type KeyedRow = (Box<[u8]>, Box<[u8]>);

/// A distinct stored row.
#[derive(Debug, Clone)]
struct Entry {
    row: Box<[u8]>,
    weight: i64,
    matches: i64,
}

/// The rows of one key.
#[derive(Default)]
struct Group {
    entries: Vec<Entry>,
    /// Position of each row in `entries`, kept once a group is large.
    index: Option<HashMap<Box<[u8]>, usize>>,
}

/// Groups larger than this are indexed by row.
const INDEX_FROM: usize = 16;

impl Group {
    fn find(&self, row: &[u8]) -> Option<usize> {
        match &self.index {
            Some(index) => index.get(row).copied(),
            None => self.entries.iter().position(|e| &*e.row == row),
        }
    }

    fn push(&mut self, entry: Entry) -> usize {
        let at = self.entries.len();
        if let Some(index) = &mut self.index {
            index.insert(entry.row.clone(), at);
        }
        self.entries.push(entry);
        if self.index.is_none() && self.entries.len() > INDEX_FROM {
            self.index = Some(
                self.entries
                    .iter()
                    .enumerate()
                    .map(|(i, e)| (e.row.clone(), i))
                    .collect(),
            );
        }
        at
    }

    fn remove(&mut self, at: usize) -> Entry {
        let entry = self.entries.swap_remove(at);
        if let Some(index) = &mut self.index {
            index.remove(&entry.row);
            if let Some(moved) = self.entries.get(at) {
                index.insert(moved.row.clone(), at);
            }
        }
        entry
    }
}

/// A row of an output change: from the batch being applied, from the state, or NULLs.
#[derive(Debug, Clone)]
enum Source {
    Batch(u32),
    Stored(Box<[u8]>),
    Null,
}

/// A source row as bytes that identify it within one batch's changes of side `s` (`rows`
/// are the batch's encoded rows); NULL padding is one fixed value.
fn source_key(s: usize, rows: &arrow::row::Rows, side: usize, source: &Source) -> Vec<u8> {
    let row: &[u8] = match source {
        Source::Batch(i) if side == s => rows.row(*i as usize).data(),
        Source::Batch(_) | Source::Null => return vec![0],
        Source::Stored(b) => b,
    };
    let mut key = Vec::with_capacity(row.len() + 1);
    key.push(1);
    key.extend_from_slice(row);
    key
}

/// The consolidated changes of a batch of side `s`, one entry per copy, with their `_op`:
/// a retraction and an insertion that join the same row of the other side (the side that
/// did not change; NULL padding is no row) form an update, `U-` immediately followed by
/// `U+` (an input row's update with each of its matches; an outer row's NULL padding
/// replaced by its first match, or coming back). Unpaired retractions (`D`) come first, then
/// the updates, then unpaired insertions (`I`).
fn pair_updates<'c>(
    s: usize,
    rows: &arrow::row::Rows,
    changes: &'c [Change],
) -> Vec<(&'c Change, ChangeOp)> {
    let copies = |sign: bool| {
        changes
            .iter()
            .filter(move |c| (c.weight > 0) == sign)
            .flat_map(|c| std::iter::repeat_n(c, c.weight.unsigned_abs() as usize))
    };
    let retractions: Vec<&Change> = copies(false).collect();
    let insertions: Vec<&Change> = copies(true).collect();
    if retractions.is_empty() || insertions.is_empty() {
        let op = if insertions.is_empty() {
            ChangeOp::Delete
        } else {
            ChangeOp::Insert
        };
        return retractions
            .into_iter()
            .chain(insertions)
            .map(|c| (c, op))
            .collect();
    }
    let other = 1 - s;
    // The row of the other side a change joins, if it joins one.
    let partner = |c: &Change| {
        let source = if other == 0 { &c.left } else { &c.right };
        (!matches!(source, Source::Null)).then(|| source_key(s, rows, other, source))
    };
    // Unpaired retractions by partner, in order.
    let mut waiting: HashMap<Vec<u8>, std::collections::VecDeque<usize>> = HashMap::default();
    for (i, c) in retractions.iter().enumerate() {
        if let Some(p) = partner(c) {
            waiting.entry(p).or_default().push_back(i);
        }
    }
    let mut paired = vec![false; retractions.len()];
    let mut updates = Vec::new();
    let mut inserts = Vec::new();
    for c in &insertions {
        let waiting = partner(c).and_then(|p| waiting.get_mut(&p));
        match waiting.and_then(|q| q.pop_front()) {
            Some(i) => {
                paired[i] = true;
                updates.push((retractions[i], ChangeOp::UpdateBefore));
                updates.push((*c, ChangeOp::UpdateAfter));
            }
            None => inserts.push((*c, ChangeOp::Insert)),
        }
    }
    let mut out: Vec<(&Change, ChangeOp)> = retractions
        .iter()
        .zip(&paired)
        .filter(|(_, p)| !**p)
        .map(|(c, _)| (*c, ChangeOp::Delete))
        .collect();
    out.extend(updates);
    out.extend(inserts);
    out
}

/// One output change.
struct Change {
    left: Source,
    right: Source,
    weight: i64,
}

struct Side {
    keys: Vec<Arc<dyn PhysicalExpr>>,
    key_types: Vec<DataType>,
    /// Positions of `_op` columns (their values are normalized to `I` in stored rows).
    op_columns: Vec<usize>,
    converter: RowConverter,
    /// A row of NULLs, for padding.
    null_row: OwnedRow,
    groups: HashMap<Box<[u8]>, Group>,
    /// Rows with a NULL key (kept only by a null-aware ANTI join's left side).
    null_keyed: Group,
    /// Event time and TTL (ms) of an append-only side.
    ttl: Option<(TimeColumn, i64)>,
    /// Stored rows by event time, for TTL expiry.
    expiry: BTreeMap<i64, Vec<KeyedRow>>,
    rows: u64,
    bytes: u64,
}

impl Side {
    fn new(
        schema: &SchemaRef,
        keys: &[Arc<dyn PhysicalExpr>],
        key_types: Vec<DataType>,
        ttl: Option<(TimeColumn, i64)>,
    ) -> Result<Side> {
        let converter =
            row_converter(schema).map_err(|e| CoreError::Internal(format!("join rows: {e}")))?;
        let nulls = crate::table::null_batch(schema, 1);
        let null_row = converter
            .convert_columns(&nulls)
            .map_err(|e| CoreError::Internal(format!("join rows: {e}")))?
            .row(0)
            .owned();
        Ok(Side {
            keys: keys.to_vec(),
            key_types,
            op_columns: op_columns(schema),
            converter,
            null_row,
            groups: HashMap::default(),
            null_keyed: Group::default(),
            ttl,
            expiry: BTreeMap::new(),
            rows: 0,
            bytes: 0,
        })
    }

    /// Adds `weight` copies of `row` under `key` (a new row starts with `matches`); returns
    /// an error when a row would go below zero copies, unless the side has a TTL (the row
    /// expired: the retraction has nothing left to retract).
    fn apply(
        &mut self,
        key: Option<&[u8]>,
        row: &[u8],
        weight: i64,
        matches: i64,
        time: Option<i64>,
    ) -> std::result::Result<(), ()> {
        let group = match key {
            Some(key) => match self.groups.get_mut(key) {
                Some(g) => g,
                None if weight > 0 => self.groups.entry(key.into()).or_default(),
                None if self.ttl.is_some() => return Ok(()),
                None => return Err(()),
            },
            None => &mut self.null_keyed,
        };
        match group.find(row) {
            Some(at) => {
                let entry = &mut group.entries[at];
                entry.weight += weight;
                if entry.weight < 0 {
                    entry.weight -= weight;
                    return if self.ttl.is_some() { Ok(()) } else { Err(()) };
                }
                if entry.weight == 0 {
                    let removed = group.remove(at);
                    self.rows -= 1;
                    self.bytes -=
                        (removed.row.len() + key.map_or(0, <[u8]>::len) + ENTRY_OVERHEAD) as u64;
                    if group.entries.is_empty()
                        && let Some(key) = key
                    {
                        self.groups.remove(key);
                    }
                }
            }
            None if weight > 0 => {
                group.push(Entry {
                    row: row.into(),
                    weight,
                    matches,
                });
                self.rows += 1;
                self.bytes += (row.len() + key.map_or(0, <[u8]>::len) + ENTRY_OVERHEAD) as u64;
            }
            None if weight < 0 && self.ttl.is_none() => return Err(()),
            None => {}
        }
        if let (Some(t), Some(key), true) = (time, key, weight > 0) {
            self.bytes += (key.len() + row.len() + EXPIRY_OVERHEAD) as u64;
            self.expiry
                .entry(t)
                .or_default()
                .push((key.into(), row.into()));
        }
        Ok(())
    }

    /// The stored entry of `row`, if any.
    fn entry(&self, key: Option<&[u8]>, row: &[u8]) -> Option<&Entry> {
        let group = match key {
            Some(key) => self.groups.get(key)?,
            None => &self.null_keyed,
        };
        group.find(row).map(|at| &group.entries[at])
    }

    fn decode<'a>(
        &self,
        sources: impl Iterator<Item = &'a Source>,
        batch: &RowsOf<'_>,
    ) -> Result<Vec<ArrayRef>> {
        let parser = self.converter.parser();
        let rows: Vec<Row<'_>> = sources
            .map(|s| match s {
                Source::Batch(i) => batch.row(*i),
                Source::Stored(bytes) => parser.parse(bytes),
                Source::Null => self.null_row.row(),
            })
            .collect();
        self.converter
            .convert_rows(rows)
            .map_err(|e| CoreError::Internal(format!("join rows: {e}")))
    }
}

/// The encoded rows of the batch being applied (absent when it is the other side's).
struct RowsOf<'a>(Option<&'a arrow::row::Rows>);

impl<'a> RowsOf<'a> {
    fn row(&self, i: u32) -> Row<'a> {
        match self.0 {
            Some(rows) => rows.row(i as usize),
            // Only the side being applied has batch rows.
            None => unreachable!("a batch row of the side not being applied"),
        }
    }
}

pub(super) struct UpdatingStep {
    join_type: JoinType,
    null_aware: bool,
    condition: Option<Arc<dyn PhysicalExpr>>,
    /// Left columns then right columns: what the condition reads.
    pair_schema: SchemaRef,
    /// Output: `pair_schema` for INNER/outer joins, the left schema for SEMI/ANTI.
    output_schema: SchemaRef,
    output_ops: Vec<usize>,
    encoder: KeyEncoder,
    sides: [Side; 2],
    /// Summed weight of the right side's rows, and of those with a NULL key (null-aware ANTI).
    right_total: i64,
    right_nulls: i64,
}

impl UpdatingStep {
    pub(super) fn new(spec: &JoinStepSpec) -> Result<UpdatingStep> {
        let JoinKind::Updating {
            null_aware,
            ref pair_schema,
            ttl,
            left_time,
            right_time,
        } = spec.kind
        else {
            return Err(CoreError::Internal("not an updating join".into()));
        };
        let key_types = spec
            .left_keys
            .iter()
            .map(|k| {
                k.data_type(&spec.left_schema)
                    .map_err(|e| CoreError::Internal(format!("join key type: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let side_ttl =
            |time: Option<TimeColumn>| -> Option<(TimeColumn, i64)> { Some((time?, ttl?)) };
        let output_schema = spec.joined_schema.clone();
        Ok(UpdatingStep {
            join_type: spec.join_type,
            null_aware,
            condition: spec.condition.clone(),
            pair_schema: pair_schema.clone(),
            output_ops: op_columns(&output_schema),
            output_schema,
            encoder: KeyEncoder::new(key_types.clone())?,
            sides: [
                Side::new(
                    &spec.left_schema,
                    &spec.left_keys,
                    key_types.clone(),
                    side_ttl(left_time),
                )?,
                Side::new(
                    &spec.right_schema,
                    &spec.right_keys,
                    key_types,
                    side_ttl(right_time),
                )?,
            ],
            right_total: 0,
            right_nulls: 0,
        })
    }

    fn is_filter(&self) -> bool {
        matches!(self.join_type, JoinType::Semi | JoinType::Anti)
    }

    /// True when a left row with this match count (and key nullness) is in a SEMI/ANTI
    /// join's output, given the right side's totals.
    fn left_qualifies(&self, matches: i64, null_key: bool, totals: (i64, i64)) -> bool {
        match self.join_type {
            JoinType::Semi => matches > 0,
            JoinType::Anti if self.null_aware => {
                let (total, nulls) = totals;
                total == 0 || (nulls == 0 && !null_key && matches == 0)
            }
            JoinType::Anti => matches == 0,
            _ => false,
        }
    }

    /// Applies a change batch to side `s`.
    fn on_side(&mut self, s: usize, batch: RecordBatch) -> Result<Vec<RecordBatch>> {
        let n = batch.num_rows();
        let weights: Vec<i64> = match change_ops(&batch) {
            None => vec![1; n],
            Some(Ok(ops)) => ops.iter().map(|op| op.weight()).collect(),
            Some(Err(e)) => return Err(CoreError::InvalidData(format!("join input: {e}"))),
        };
        let side = &self.sides[s];
        let columns = ops_as_inserts(&batch, &side.op_columns);
        let rows = side
            .converter
            .convert_columns(&columns)
            .map_err(|e| CoreError::Internal(format!("join rows: {e}")))?;
        let key_columns = cast_columns(eval_keys(&side.keys, &batch)?, &side.key_types)?;
        let keys = self.encoder.encode(&key_columns, n)?;
        let times = match side.ttl {
            Some((time, _)) => Some(times_ms(&batch, time)?),
            None => None,
        };
        // Candidate pairs: the other side does not change while this batch is applied.
        let o = 1 - s;
        let mut probe: Vec<u32> = Vec::new();
        let mut candidates: Vec<usize> = Vec::new();
        for i in 0..n {
            if let Some(group) = keys.key(i).and_then(|k| self.sides[o].groups.get(k)) {
                for at in 0..group.entries.len() {
                    probe.push(i as u32);
                    candidates.push(at);
                }
            }
        }
        let passes = self.pair_mask(s, &rows, &keys, &probe, &candidates)?;
        let mut changes: Vec<Change> = Vec::new();
        let mut next = 0;
        let filter = self.is_filter();
        for i in 0..n {
            let w = weights[i];
            let key = keys.key(i);
            let row = rows.row(i).data();
            let first = next;
            while next < probe.len() && probe[next] as usize == i {
                next += 1;
            }
            let matched: Vec<usize> = (first..next)
                .filter(|&c| passes[c])
                .map(|c| candidates[c])
                .collect();
            // The other side's matched rows.
            let totals_before = (self.right_total, self.right_nulls);
            let mut fresh_matches = 0;
            let mut flipped: Vec<(Box<[u8]>, i64, i64)> = Vec::new();
            if let Some(key) = key
                && !matched.is_empty()
                && let Some(group) = self.sides[o].groups.get_mut(key)
            {
                for &at in &matched {
                    let entry = &mut group.entries[at];
                    fresh_matches += entry.weight;
                    let before = entry.matches;
                    entry.matches += w;
                    if !filter {
                        let (l, r) = if s == 0 {
                            (Source::Batch(i as u32), Source::Stored(entry.row.clone()))
                        } else {
                            (Source::Stored(entry.row.clone()), Source::Batch(i as u32))
                        };
                        changes.push(Change {
                            left: l,
                            right: r,
                            weight: w * entry.weight,
                        });
                    }
                    flipped.push((entry.row.clone(), entry.weight, before));
                }
            }
            // The own row's match count: the stored one when the row is held (what was
            // emitted for it), else what it matches now.
            let stored = self.sides[s].entry(key, row).map(|e| e.matches);
            let own_matches = stored.unwrap_or(fresh_matches);
            if s == 1 && self.null_aware {
                if key.is_none() && self.right_nulls + w < 0 {
                    return Err(CoreError::InvalidData(format!(
                        "updating join: row {i} of the right input retracts a row the join does not hold (a changelog must insert a row before it deletes it)"
                    )));
                }
                self.right_total += w;
                if key.is_none() {
                    self.right_nulls += w;
                }
            }
            let totals_after = (self.right_total, self.right_nulls);
            // Padded rows and SEMI/ANTI rows of the other side whose match count crossed 0.
            let other_keeps = if o == 0 {
                self.join_type.keeps_left()
            } else {
                self.join_type.keeps_right()
            };
            if filter && o == 0 {
                let flags = |t: (i64, i64)| (t.0 > 0, t.1 > 0);
                if self.null_aware && flags(totals_before) != flags(totals_after) {
                    // The right side became (non-)empty or gained / lost its NULL keys:
                    // re-check every left row.
                    self.requalify_all(&flipped, totals_before, totals_after, &mut changes);
                } else {
                    for (row, weight, before) in &flipped {
                        let was = self.left_qualifies(*before, false, totals_before);
                        let is = self.left_qualifies(before + w, false, totals_after);
                        if was != is {
                            changes.push(Change {
                                left: Source::Stored(row.clone()),
                                right: Source::Null,
                                weight: if is { *weight } else { -*weight },
                            });
                        }
                    }
                }
            } else if other_keeps {
                for (row, weight, before) in &flipped {
                    let after = before + w;
                    let sign = match (*before == 0, after == 0) {
                        (true, false) => -1,
                        (false, true) => 1,
                        _ => continue,
                    };
                    let (l, r) = if o == 0 {
                        (Source::Stored(row.clone()), Source::Null)
                    } else {
                        (Source::Null, Source::Stored(row.clone()))
                    };
                    changes.push(Change {
                        left: l,
                        right: r,
                        weight: sign * weight,
                    });
                }
            }
            // The own row's padded or SEMI/ANTI output.
            let own_keeps = if s == 0 {
                self.join_type.keeps_left()
            } else {
                self.join_type.keeps_right()
            };
            if filter && s == 0 {
                if self.left_qualifies(own_matches, key.is_none(), totals_after) {
                    changes.push(Change {
                        left: Source::Batch(i as u32),
                        right: Source::Null,
                        weight: w,
                    });
                }
            } else if own_keeps && own_matches == 0 {
                let (l, r) = if s == 0 {
                    (Source::Batch(i as u32), Source::Null)
                } else {
                    (Source::Null, Source::Batch(i as u32))
                };
                changes.push(Change {
                    left: l,
                    right: r,
                    weight: w,
                });
            }
            // Store the row.
            let keep_null_keyed = s == 0 && self.null_aware;
            let time = times.as_ref().and_then(|t| t[i]);
            // A row of a TTL'd side without event time would never expire: it joins what is
            // there now and is not kept.
            let expires = times.is_none() || time.is_some();
            if (key.is_some() || keep_null_keyed)
                && expires
                && self.sides[s].apply(key, row, w, own_matches, time).is_err()
            {
                return Err(CoreError::InvalidData(format!(
                    "updating join: row {i} of the {} input retracts a row the join does not hold (a changelog must insert a row before it deletes it)",
                    if s == 0 { "left" } else { "right" }
                )));
            }
        }
        self.build(s, &rows, changes)
    }

    /// Evaluates the join condition over every candidate pair (true when there is none).
    fn pair_mask(
        &self,
        s: usize,
        rows: &arrow::row::Rows,
        keys: &super::store::EncodedKeys,
        probe: &[u32],
        candidates: &[usize],
    ) -> Result<Vec<bool>> {
        let Some(condition) = &self.condition else {
            return Ok(vec![true; probe.len()]);
        };
        if probe.is_empty() {
            return Ok(Vec::new());
        }
        let o = 1 - s;
        let own: Vec<Source> = probe.iter().map(|&i| Source::Batch(i)).collect();
        let other: Vec<Source> = probe
            .iter()
            .zip(candidates)
            .map(|(&i, &at)| {
                let key = keys.key(i as usize).unwrap_or_default();
                let row = &self.sides[o].groups[key].entries[at].row;
                Source::Stored(row.clone())
            })
            .collect();
        let own_columns = self.sides[s].decode(own.iter(), &RowsOf(Some(rows)))?;
        let other_columns = self.sides[o].decode(other.iter(), &RowsOf(None))?;
        let (left, right) = if s == 0 {
            (own_columns, other_columns)
        } else {
            (other_columns, own_columns)
        };
        let pairs = joined(&self.pair_schema, left, right)?;
        let mask = condition_mask(&Some(condition.clone()), &pairs)?
            .ok_or_else(|| CoreError::Internal("join condition".into()))?;
        Ok((0..mask.len()).map(|i| mask.value(i)).collect())
    }

    /// Re-checks every left row of a SEMI/ANTI join after the right side's totals changed;
    /// `flipped` are the rows the change matched, with their match counts before it.
    fn requalify_all(
        &self,
        flipped: &[(Box<[u8]>, i64, i64)],
        before: (i64, i64),
        after: (i64, i64),
        changes: &mut Vec<Change>,
    ) {
        let left = &self.sides[0];
        let groups = left
            .groups
            .values()
            .map(|g| (g, false))
            .chain(std::iter::once((&left.null_keyed, true)));
        for (group, null_key) in groups {
            for entry in &group.entries {
                let old_matches = match flipped.iter().find(|(row, _, _)| *row == entry.row) {
                    Some((_, _, m)) => *m,
                    None => entry.matches,
                };
                let was = self.left_qualifies(old_matches, null_key, before);
                let is = self.left_qualifies(entry.matches, null_key, after);
                if was != is {
                    changes.push(Change {
                        left: Source::Stored(entry.row.clone()),
                        right: Source::Null,
                        weight: if is { entry.weight } else { -entry.weight },
                    });
                }
            }
        }
    }

    /// Output rows of the changes, one per copy, with `_op` `I` or `D`.
    fn build(
        &self,
        s: usize,
        rows: &arrow::row::Rows,
        changes: Vec<Change>,
    ) -> Result<Vec<RecordBatch>> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        let changes = self.consolidate(s, rows, changes);
        let mut lefts = Vec::new();
        let mut rights = Vec::new();
        let mut ops = Vec::new();
        for (change, op) in pair_updates(s, rows, &changes) {
            lefts.push(&change.left);
            rights.push(&change.right);
            ops.push(op.as_str());
        }
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let batch_rows = |side: usize| RowsOf(if side == s { Some(rows) } else { None });
        let mut columns = self.sides[0].decode(lefts.into_iter(), &batch_rows(0))?;
        if !self.is_filter() {
            columns.extend(self.sides[1].decode(rights.into_iter(), &batch_rows(1))?);
        }
        let op_array: ArrayRef = Arc::new(StringArray::from(ops));
        for &i in &self.output_ops {
            columns[i] = op_array.clone();
        }
        let rows = op_array.len();
        let columns = columns
            .into_iter()
            .zip(self.output_schema.fields())
            .map(|(c, f)| {
                if c.data_type() == f.data_type() {
                    Ok(c)
                } else {
                    arrow::compute::cast(&c, f.data_type())
                        .map_err(|e| CoreError::Internal(format!("join output: {e}")))
                }
            })
            .collect::<Result<Vec<_>>>()?;
        RecordBatch::try_new_with_options(
            self.output_schema.clone(),
            columns,
            &arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(rows)),
        )
        .map(|b| vec![b])
        .map_err(|e| CoreError::Internal(format!("join output: {e}")))
    }

    /// Sums the weights of equal output rows (an update that leaves a joined row as it was
    /// emits nothing; a padded row that loses and regains its match within the batch
    /// neither), and puts retractions before insertions.
    fn consolidate(&self, s: usize, rows: &arrow::row::Rows, changes: Vec<Change>) -> Vec<Change> {
        // Changes of one sign cannot cancel (weights only add up): nothing to merge.
        if changes.iter().all(|c| c.weight > 0) || changes.iter().all(|c| c.weight < 0) {
            return changes;
        }
        let bytes = |side: usize, source: &Source| source_key(s, rows, side, source);
        let mut position: HashMap<(Vec<u8>, Vec<u8>), usize> = HashMap::default();
        let mut merged: Vec<Change> = Vec::with_capacity(changes.len());
        for change in changes {
            let key = (bytes(0, &change.left), bytes(1, &change.right));
            match position.get(&key) {
                Some(&at) => merged[at].weight += change.weight,
                None => {
                    position.insert(key, merged.len());
                    merged.push(change);
                }
            }
        }
        let (mut out, inserts): (Vec<Change>, Vec<Change>) = merged
            .into_iter()
            .filter(|c| c.weight != 0)
            .partition(|c| c.weight < 0);
        out.extend(inserts);
        out
    }

    /// Drops rows of TTL'd sides whose event time is older than the side's watermark minus
    /// the TTL.
    fn expire(&mut self, s: usize, watermark: i64) {
        let side = &mut self.sides[s];
        let Some((_, ttl)) = side.ttl else {
            return;
        };
        let limit = threshold(watermark, -ttl);
        while let Some(entry) = side.expiry.first_entry() {
            if *entry.key() >= limit {
                break;
            }
            for (key, row) in entry.remove() {
                side.bytes -= (key.len() + row.len() + EXPIRY_OVERHEAD) as u64;
                let Some(group) = side.groups.get_mut(&key) else {
                    continue;
                };
                let Some(at) = group.find(&row) else {
                    continue;
                };
                group.entries[at].weight -= 1;
                if group.entries[at].weight <= 0 {
                    let removed = group.remove(at);
                    side.rows -= 1;
                    side.bytes -= (removed.row.len() + key.len() + ENTRY_OVERHEAD) as u64;
                    if group.entries.is_empty() {
                        side.groups.remove(&key);
                    }
                }
            }
        }
    }
}

impl StepState for UpdatingStep {
    fn on_left(&mut self, batch: RecordBatch, _time: &StepTime) -> Result<Vec<RecordBatch>> {
        self.on_side(0, batch)
    }

    fn on_right(&mut self, batch: RecordBatch, _time: &StepTime) -> Result<Vec<RecordBatch>> {
        self.on_side(1, batch)
    }

    fn advance(&mut self, time: &StepTime) -> Result<Vec<RecordBatch>> {
        self.expire(0, time.left);
        self.expire(1, time.right);
        Ok(Vec::new())
    }

    fn output_watermark(&self, _time: &StepTime) -> i64 {
        // Nothing is held back: the operator takes the minimum of the inputs.
        crate::message::END_OF_TIME
    }

    fn state_size(&self) -> StateSize {
        StateSize {
            rows: self.sides.iter().map(|s| s.rows).sum(),
            bytes: self.sides.iter().map(|s| s.bytes).sum(),
        }
    }

    fn snapshot(&self, w: &mut SnapshotWriter) -> Result<()> {
        for side in &self.sides {
            let write_group = |w: &mut SnapshotWriter, group: &Group| {
                w.u64(group.entries.len() as u64);
                for e in &group.entries {
                    w.bytes(&e.row);
                    w.i64(e.weight);
                    w.i64(e.matches);
                }
            };
            w.u64(side.groups.len() as u64);
            for (key, group) in &side.groups {
                w.bytes(key);
                write_group(w, group);
            }
            write_group(w, &side.null_keyed);
            w.u64(side.expiry.values().map(Vec::len).sum::<usize>() as u64);
            for (t, rows) in &side.expiry {
                for (key, row) in rows {
                    w.i64(*t);
                    w.bytes(key);
                    w.bytes(row);
                }
            }
        }
        w.i64(self.right_total);
        w.i64(self.right_nulls);
        Ok(())
    }

    fn restore(&mut self, r: &mut SnapshotReader<'_>) -> Result<()> {
        fn read_group(
            r: &mut SnapshotReader<'_>,
            side: &mut Side,
            key_len: usize,
        ) -> Result<Group> {
            let mut group = Group::default();
            for _ in 0..r.count()? {
                let row: Box<[u8]> = r.bytes()?.into();
                side.rows += 1;
                side.bytes += (row.len() + key_len + ENTRY_OVERHEAD) as u64;
                group.push(Entry {
                    row,
                    weight: r.i64()?,
                    matches: r.i64()?,
                });
            }
            Ok(group)
        }
        for side in &mut self.sides {
            side.groups.clear();
            side.expiry.clear();
            side.rows = 0;
            side.bytes = 0;
            for _ in 0..r.count()? {
                let key: Box<[u8]> = r.bytes()?.into();
                let group = read_group(r, side, key.len())?;
                side.groups.insert(key, group);
            }
            side.null_keyed = read_group(r, side, 0)?;
            for _ in 0..r.count()? {
                let t = r.i64()?;
                let key: Box<[u8]> = r.bytes()?.into();
                let row: Box<[u8]> = r.bytes()?.into();
                side.bytes += (key.len() + row.len() + EXPIRY_OVERHEAD) as u64;
                side.expiry.entry(t).or_default().push((key, row));
            }
        }
        self.right_total = r.i64()?;
        self.right_nulls = r.i64()?;
        Ok(())
    }
}
