//! ASOF join (and the temporal join `FOR SYSTEM_TIME AS OF`, a backward ASOF join): each
//! left row is matched with the single right row of its key closest in time in the allowed
//! direction. A left row waits until the right watermark rules out a better match (SPEC
//! 2.13), so the result does not depend on how the two inputs interleave.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use arrow::array::{RecordBatch, UInt32Array};
use arrow::compute::take;
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::hash_utils::RandomState;
use datafusion::physical_expr::PhysicalExpr;

use super::store::{KeyEncoder, RowRef, RowStore};
use super::{
    JoinKind, JoinStepSpec, JoinType, StepState, StepTime, TimeColumn, eval_keys, joined,
    take_rows, times_ms,
};
use crate::error::{CoreError, Result};
use crate::message::{END_OF_TIME, change_ops};
use crate::operator::StateSize;
use crate::snapshot::{SnapshotReader, SnapshotWriter};

type HashMap<K, V> = std::collections::HashMap<K, V, RandomState>;

/// Which right rows an ASOF join considers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsofDirection {
    /// The latest right row at or before the left row (`strict`: before).
    Backward {
        /// Exclude equal times.
        strict: bool,
    },
    /// The earliest right row at or after the left row (`strict`: after).
    Forward {
        /// Exclude equal times.
        strict: bool,
    },
    /// The closest right row either way; a tie goes to the earlier one.
    Nearest,
}

impl AsofDirection {
    /// Name for EXPLAIN.
    pub fn describe(self) -> &'static str {
        match self {
            AsofDirection::Backward { strict: false } => "backward (right.ts <= left.ts)",
            AsofDirection::Backward { strict: true } => "backward (right.ts < left.ts)",
            AsofDirection::Forward { strict: false } => "forward (right.ts >= left.ts)",
            AsofDirection::Forward { strict: true } => "forward (right.ts > left.ts)",
            AsofDirection::Nearest => "nearest",
        }
    }
}

struct Pending {
    row: RowRef,
    key: Option<Box<[u8]>>,
}

pub(super) struct AsofStep {
    join_type: JoinType,
    joined_schema: SchemaRef,
    left_keys: Vec<Arc<dyn PhysicalExpr>>,
    right_keys: Vec<Arc<dyn PhysicalExpr>>,
    key_types: Vec<DataType>,
    left_time: TimeColumn,
    right_time: TimeColumn,
    direction: AsofDirection,
    tolerance: Option<i64>,
    encoder: KeyEncoder,
    left_schema: SchemaRef,
    right_schema: SchemaRef,
    left: RowStore,
    pending: BTreeMap<(i64, u64), Pending>,
    sequence: u64,
    right: RowStore,
    /// Right rows per key by event time; `None` is a deletion (a changelog's `D` or `U-`):
    /// the key has no version from that time on.
    by_key: HashMap<Box<[u8]>, BTreeMap<i64, Option<RowRef>>>,
    right_rows_after_prune: usize,
}

impl AsofStep {
    pub(super) fn new(spec: &JoinStepSpec) -> Result<AsofStep> {
        let JoinKind::Asof {
            left_time,
            right_time,
            direction,
            tolerance,
        } = spec.kind
        else {
            return Err(CoreError::Internal("not an ASOF join".into()));
        };
        if spec.join_type.keeps_right() {
            return Err(CoreError::Internal(
                "ASOF joins keep unmatched left rows only".into(),
            ));
        }
        let key_types = spec
            .left_keys
            .iter()
            .map(|k| {
                k.data_type(&spec.left_schema)
                    .map_err(|e| CoreError::Internal(format!("join key type: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(AsofStep {
            join_type: spec.join_type,
            joined_schema: spec.joined_schema.clone(),
            left_keys: spec.left_keys.clone(),
            right_keys: spec.right_keys.clone(),
            encoder: KeyEncoder::new(key_types.clone())?,
            key_types,
            left_time,
            right_time,
            direction,
            tolerance,
            left_schema: spec.left_schema.clone(),
            right_schema: spec.right_schema.clone(),
            left: RowStore::new(spec.left_schema.clone()),
            pending: BTreeMap::new(),
            sequence: 0,
            right: RowStore::new(spec.right_schema.clone()),
            by_key: HashMap::default(),
            right_rows_after_prune: 0,
        })
    }

    /// Decides a pending left row at `ts` given the right watermark: `None` = keep waiting,
    /// `Some(match)` = emit now with that right row (or none).
    fn resolve(&self, ts: i64, key: Option<&[u8]>, right_watermark: i64) -> Option<Option<RowRef>> {
        let end = right_watermark == END_OF_TIME;
        let rows = key.and_then(|k| self.by_key.get(k));
        let within = |qt: i64| {
            self.tolerance
                .is_none_or(|tol| qt.abs_diff(ts) <= tol.unsigned_abs())
        };
        let tolerance_passed = self
            .tolerance
            .is_some_and(|tol| right_watermark > ts.saturating_add(tol));
        match self.direction {
            AsofDirection::Backward { strict } => {
                // Right rows at or before `ts` that are still to come would be late.
                if right_watermark <= ts && !end {
                    return None;
                }
                let upper = if strict {
                    Bound::Excluded(ts)
                } else {
                    Bound::Included(ts)
                };
                let best = rows
                    .and_then(|m| m.range((Bound::Unbounded, upper)).next_back())
                    .filter(|(qt, _)| within(**qt))
                    .and_then(|(_, r)| *r);
                Some(best)
            }
            AsofDirection::Forward { strict } => {
                let lower = if strict {
                    Bound::Excluded(ts)
                } else {
                    Bound::Included(ts)
                };
                let candidate = rows
                    .and_then(|m| m.range((lower, Bound::Unbounded)).next())
                    .filter(|(qt, _)| within(**qt));
                match candidate {
                    Some((qt, r)) if right_watermark > *qt || end => Some(*r),
                    Some(_) => None,
                    None if tolerance_passed || end => Some(None),
                    None => None,
                }
            }
            AsofDirection::Nearest => {
                let before = rows.and_then(|m| m.range(..=ts).next_back());
                let after = rows.and_then(|m| m.range(ts..).next());
                let best = match (before, after) {
                    (Some(b), Some(a)) => {
                        if ts.abs_diff(*b.0) <= a.0.abs_diff(ts) {
                            Some(b)
                        } else {
                            Some(a)
                        }
                    }
                    (b, a) => b.or(a),
                }
                .filter(|(qt, _)| within(**qt));
                match best {
                    Some((qt, r)) => {
                        let distance = i64::try_from(ts.abs_diff(*qt)).unwrap_or(i64::MAX);
                        if right_watermark > ts.saturating_add(distance) || end {
                            Some(*r)
                        } else {
                            None
                        }
                    }
                    None if tolerance_passed || end => Some(None),
                    None => None,
                }
            }
        }
    }

    /// Oldest left time that can still be emitted or arrive.
    fn horizon(&self, time: &StepTime) -> i64 {
        self.pending
            .first_key_value()
            .map_or(time.left, |((t, _), _)| (*t).min(time.left))
    }

    /// Drops right rows no pending or future left row can match.
    fn prune(&mut self, horizon: i64, keys: Option<Vec<Box<[u8]>>>) {
        let direction = self.direction;
        let tolerance = self.tolerance;
        let mut dead = Vec::new();
        let mut prune_one = |rows: &mut BTreeMap<i64, Option<RowRef>>| {
            let older: Vec<i64> = rows.range(..horizon).map(|(t, _)| *t).collect();
            let keep_newest_older = !matches!(direction, AsofDirection::Forward { .. });
            for (i, t) in older.iter().enumerate() {
                let newest = i + 1 == older.len();
                let out_of_tolerance = tolerance.is_some_and(|tol| t.saturating_add(tol) < horizon);
                if (!keep_newest_older || !newest || out_of_tolerance)
                    && let Some(Some(r)) = rows.remove(t)
                {
                    dead.push(r);
                }
            }
        };
        match keys {
            Some(keys) => {
                for k in keys {
                    if let Some(rows) = self.by_key.get_mut(&k) {
                        prune_one(rows);
                        if rows.is_empty() {
                            self.by_key.remove(&k);
                        }
                    }
                }
            }
            None => {
                self.by_key.retain(|_, rows| {
                    prune_one(rows);
                    !rows.is_empty()
                });
            }
        }
        for r in dead {
            self.right.kill(r);
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Left,
    Right,
}

/// Rows of a batch that enter the state: on time, and (right side) with a key.
struct Admitted {
    keys: super::store::EncodedKeys,
    kept: Vec<u32>,
    times: Vec<i64>,
    batch: RecordBatch,
}

impl AsofStep {
    fn admit(&self, batch: &RecordBatch, side: Side, time: &StepTime) -> Result<Option<Admitted>> {
        let (time_column, key_exprs, watermark) = match side {
            Side::Left => (self.left_time, &self.left_keys, time.left),
            Side::Right => (self.right_time, &self.right_keys, time.right),
        };
        let n = batch.num_rows();
        let times = times_ms(batch, time_column)?;
        let keys = super::cast_columns(eval_keys(key_exprs, batch)?, &self.key_types)?;
        let keys = self.encoder.encode(&keys, n)?;
        let mut kept = Vec::with_capacity(n);
        let mut late = 0;
        for (i, t) in times.iter().enumerate() {
            match t {
                // A right row without a key can never be a match.
                Some(t) if *t >= watermark => {
                    if side == Side::Left || keys.key(i).is_some() {
                        kept.push(i as u32);
                    }
                }
                _ => late += 1,
            }
        }
        time.count_late(late);
        if kept.is_empty() {
            return Ok(None);
        }
        let times = kept
            .iter()
            .map(|&i| times[i as usize].unwrap_or_default())
            .collect();
        Ok(Some(Admitted {
            batch: take_rows(batch, &kept)?,
            keys,
            kept,
            times,
        }))
    }
}

impl StepState for AsofStep {
    fn on_left(&mut self, batch: RecordBatch, time: &StepTime) -> Result<Vec<RecordBatch>> {
        let Some(rows) = self.admit(&batch, Side::Left, time)? else {
            return Ok(Vec::new());
        };
        let chunk = self.left.push(rows.batch, rows.times.clone());
        for (row, (&i, &t)) in rows.kept.iter().zip(&rows.times).enumerate() {
            self.sequence += 1;
            self.pending.insert(
                (t, self.sequence),
                Pending {
                    row: RowRef {
                        chunk,
                        row: row as u32,
                    },
                    key: rows.keys.key(i as usize).map(Box::from),
                },
            );
        }
        Ok(Vec::new())
    }

    fn on_right(&mut self, batch: RecordBatch, time: &StepTime) -> Result<Vec<RecordBatch>> {
        let Some(rows) = self.admit(&batch, Side::Right, time)? else {
            return Ok(Vec::new());
        };
        // A changelog's retracting rows (`D`, `U-`) end their key's current version.
        let deletes: Option<Vec<bool>> = match change_ops(&rows.batch) {
            Some(ops) => Some(
                ops.map_err(CoreError::InvalidData)?
                    .into_iter()
                    .map(|op| op.weight() < 0)
                    .collect(),
            ),
            None => None,
        };
        let (keys, kept, stored_times) = (rows.keys, rows.kept, rows.times);
        let chunk = self.right.push(rows.batch, stored_times.clone());
        let mut touched = Vec::new();
        for (row, (&i, &t)) in kept.iter().zip(&stored_times).enumerate() {
            let Some(key) = keys.key(i as usize) else {
                continue;
            };
            let r = RowRef {
                chunk,
                row: row as u32,
            };
            let version = if deletes.as_ref().is_some_and(|d| d[row]) {
                self.right.kill(r);
                None
            } else {
                Some(r)
            };
            let rows = self.by_key.entry(Box::from(key)).or_default();
            // A later row at the same time replaces the earlier one (last version wins).
            if let Some(Some(old)) = rows.insert(t, version) {
                self.right.kill(old);
            }
            if rows.len() > 2 {
                touched.push(Box::from(key));
            }
        }
        let horizon = self.horizon(time);
        if !touched.is_empty() {
            touched.sort();
            touched.dedup();
            self.prune(horizon, Some(touched));
        }
        Ok(Vec::new())
    }

    fn advance(&mut self, time: &StepTime) -> Result<Vec<RecordBatch>> {
        let right_watermark = time.right;
        let mut resolved: Vec<((i64, u64), Option<RowRef>)> = Vec::new();
        let limit = if right_watermark == END_OF_TIME {
            Bound::Unbounded
        } else {
            Bound::Excluded((right_watermark, 0))
        };
        for (k, p) in self.pending.range((Bound::Unbounded, limit)) {
            if let Some(m) = self.resolve(k.0, p.key.as_deref(), right_watermark) {
                resolved.push((*k, m));
            }
        }
        let mut out = Vec::new();
        if !resolved.is_empty() {
            let emit: Vec<&((i64, u64), Option<RowRef>)> = resolved
                .iter()
                .filter(|(_, m)| m.is_some() || self.join_type.keeps_left())
                .collect();
            if !emit.is_empty() {
                let left_refs: Vec<RowRef> =
                    emit.iter().map(|(k, _)| self.pending[k].row).collect();
                let matched: Vec<RowRef> = emit.iter().filter_map(|(_, m)| *m).collect();
                let left_rows = self.left.gather(&left_refs)?;
                let right_rows = self.right.gather(&matched)?;
                let mut next = 0u32;
                let positions: UInt32Array = emit
                    .iter()
                    .map(|(_, m)| {
                        m.map(|_| {
                            next += 1;
                            next - 1
                        })
                    })
                    .collect();
                let right_columns = right_rows
                    .columns()
                    .iter()
                    .map(|c| take(c.as_ref(), &positions, None))
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|e| CoreError::Internal(e.to_string()))?;
                out.push(joined(
                    &self.joined_schema,
                    left_rows.columns().to_vec(),
                    right_columns,
                )?);
            }
            for (k, _) in &resolved {
                if let Some(p) = self.pending.remove(k) {
                    self.left.kill(p.row);
                }
            }
        }
        if time.left == END_OF_TIME && self.pending.is_empty() {
            // No left row can come: the right side's rows are of no further use.
            for (_, rows) in self.by_key.drain() {
                for r in rows.into_values().flatten() {
                    self.right.kill(r);
                }
            }
        }
        let right_rows = self.right.size().rows as usize;
        if right_rows > 2 * self.right_rows_after_prune + 1024 {
            let horizon = self.horizon(time);
            self.prune(horizon, None);
            self.right_rows_after_prune = self.right.size().rows as usize;
        }
        Ok(out)
    }

    fn output_watermark(&self, time: &StepTime) -> i64 {
        self.horizon(time)
    }

    fn snapshot(&self, w: &mut SnapshotWriter) -> Result<()> {
        w.u64(self.sequence);
        w.u64(self.right_rows_after_prune as u64);
        // Waiting left rows, in (time, arrival) order, with their keys.
        let refs: Vec<RowRef> = self.pending.values().map(|p| p.row).collect();
        w.batch(&self.left.gather(&refs)?)?;
        w.u64(self.pending.len() as u64);
        for ((t, seq), p) in &self.pending {
            w.i64(*t);
            w.u64(*seq);
            w.bool(p.key.is_some());
            w.bytes(p.key.as_deref().unwrap_or_default());
        }
        // Right versions per key; deletions have no row.
        let mut entries: Vec<(&[u8], i64, Option<RowRef>)> = Vec::new();
        for (key, rows) in &self.by_key {
            for (t, r) in rows {
                entries.push((key, *t, *r));
            }
        }
        let rows: Vec<RowRef> = entries.iter().filter_map(|e| e.2).collect();
        w.batch(&self.right.gather(&rows)?)?;
        w.u64(entries.len() as u64);
        for (key, t, r) in &entries {
            w.bytes(key);
            w.i64(*t);
            w.bool(r.is_some());
        }
        Ok(())
    }

    fn restore(&mut self, r: &mut SnapshotReader<'_>) -> Result<()> {
        let invalid =
            || CoreError::InvalidData("ASOF join snapshot does not match the join's inputs".into());
        self.sequence = r.u64()?;
        self.right_rows_after_prune = r.u64()? as usize;
        let left = r.batch()?;
        let n = r.count()?;
        if n != left.num_rows() {
            return Err(invalid());
        }
        let mut pending = Vec::with_capacity(n);
        for _ in 0..n {
            let t = r.i64()?;
            let seq = r.u64()?;
            let has_key = r.bool()?;
            let key = r.bytes()?;
            pending.push((t, seq, has_key.then(|| Box::<[u8]>::from(key))));
        }
        self.left = RowStore::new(self.left_schema.clone());
        self.pending = BTreeMap::new();
        if n > 0 {
            let chunk = self.left.push(left, pending.iter().map(|p| p.0).collect());
            for (row, (t, seq, key)) in pending.into_iter().enumerate() {
                self.pending.insert(
                    (t, seq),
                    Pending {
                        row: RowRef {
                            chunk,
                            row: row as u32,
                        },
                        key,
                    },
                );
            }
        }
        let right = r.batch()?;
        let m = r.count()?;
        let mut entries = Vec::with_capacity(m);
        for _ in 0..m {
            let key = Box::<[u8]>::from(r.bytes()?);
            let t = r.i64()?;
            entries.push((key, t, r.bool()?));
        }
        if entries.iter().filter(|e| e.2).count() != right.num_rows() {
            return Err(invalid());
        }
        self.right = RowStore::new(self.right_schema.clone());
        self.by_key = HashMap::default();
        let times: Vec<i64> = entries.iter().filter(|e| e.2).map(|e| e.1).collect();
        let chunk = (right.num_rows() > 0).then(|| self.right.push(right, times));
        let mut row = 0u32;
        for (key, t, has_row) in entries {
            let version = match (has_row, chunk) {
                (true, Some(chunk)) => {
                    row += 1;
                    Some(RowRef {
                        chunk,
                        row: row - 1,
                    })
                }
                _ => None,
            };
            self.by_key.entry(key).or_default().insert(t, version);
        }
        Ok(())
    }

    fn state_size(&self) -> StateSize {
        let a = self.left.size();
        let b = self.right.size();
        StateSize {
            rows: a.rows + b.rows,
            bytes: a.bytes + b.bytes,
        }
    }
}
