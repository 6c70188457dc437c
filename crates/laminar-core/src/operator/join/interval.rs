//! Interval (stream-stream) join: both sides are kept, hashed by key and ordered by event
//! time; each arriving row probes the other side, and rows expire once the other side's
//! watermark rules out any further match (emitting unmatched rows of an outer side then).

use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::hash_utils::RandomState;
use datafusion::physical_expr::PhysicalExpr;

use super::store::{KeyEncoder, RowRef, RowStore};
use super::{
    JoinKind, JoinStepSpec, JoinType, StepState, StepTime, TimeColumn, apply_mask, condition_mask,
    eval_keys, joined, pad_left, pad_right, take_rows, threshold, times_ms,
};
use crate::error::{CoreError, Result};
use crate::operator::StateSize;
use crate::snapshot::{SnapshotReader, SnapshotWriter};

type HashMap<K, V> = std::collections::HashMap<K, V, RandomState>;

/// Slack in ms of the time checks when an event time is finer than milliseconds (the exact
/// bound is part of the join condition; watermarks and stored times are whole ms).
fn slack_ms(times: [TimeColumn; 2]) -> i64 {
    use crate::time::EventTimeKind;
    use arrow::datatypes::TimeUnit;
    let coarse = |t: TimeColumn| {
        matches!(
            t.kind,
            EventTimeKind::EpochMillis
                | EventTimeKind::Timestamp(TimeUnit::Millisecond | TimeUnit::Second)
        )
    };
    if times.iter().all(|t| coarse(*t)) {
        0
    } else {
        1
    }
}

struct Side {
    schema: SchemaRef,
    keys: Vec<Arc<dyn PhysicalExpr>>,
    key_types: Vec<DataType>,
    time: TimeColumn,
    store: RowStore,
    index: HashMap<u64, Vec<RowRef>>,
    expiry: BTreeMap<i64, Vec<RowRef>>,
    /// Index entries whose row has died.
    dead_entries: usize,
    /// Unmatched rows of this side are emitted at expiry.
    keeps: bool,
}

impl Side {
    fn prune_index(&mut self) {
        if self.dead_entries <= self.store.size().rows as usize + 4096 {
            return;
        }
        let store = &self.store;
        self.index.retain(|_, refs| {
            refs.retain(|r| store.is_live(*r));
            !refs.is_empty()
        });
        self.dead_entries = 0;
    }
}

pub(super) struct IntervalStep {
    join_type: JoinType,
    condition: Option<Arc<dyn PhysicalExpr>>,
    joined_schema: SchemaRef,
    lower: i64,
    upper: i64,
    slack: i64,
    encoder: KeyEncoder,
    hasher: RandomState,
    sides: [Side; 2],
}

impl IntervalStep {
    pub(super) fn new(spec: &JoinStepSpec) -> Result<IntervalStep> {
        let JoinKind::Interval {
            left_time,
            right_time,
            lower,
            upper,
        } = spec.kind
        else {
            return Err(CoreError::Internal("not an interval join".into()));
        };
        let key_types = |keys: &[Arc<dyn PhysicalExpr>], schema: &SchemaRef| {
            keys.iter()
                .map(|k| {
                    k.data_type(schema)
                        .map_err(|e| CoreError::Internal(format!("join key type: {e}")))
                })
                .collect::<Result<Vec<_>>>()
        };
        let left_types = key_types(&spec.left_keys, &spec.left_schema)?;
        // Right keys are cast to the left key types (the planner coerces them alike).
        key_types(&spec.right_keys, &spec.right_schema)?;
        let side = |schema: &SchemaRef,
                    keys: &[Arc<dyn PhysicalExpr>],
                    time: TimeColumn,
                    keeps: bool| Side {
            schema: schema.clone(),
            keys: keys.to_vec(),
            key_types: left_types.clone(),
            time,
            store: RowStore::new(schema.clone()),
            index: HashMap::default(),
            expiry: BTreeMap::new(),
            dead_entries: 0,
            keeps,
        };
        Ok(IntervalStep {
            join_type: spec.join_type,
            condition: spec.condition.clone(),
            joined_schema: spec.joined_schema.clone(),
            lower,
            upper,
            slack: slack_ms([left_time, right_time]),
            encoder: KeyEncoder::new(left_types.clone())?,
            hasher: RandomState::default(),
            sides: [
                side(
                    &spec.left_schema,
                    &spec.left_keys,
                    left_time,
                    spec.join_type.keeps_left(),
                ),
                side(
                    &spec.right_schema,
                    &spec.right_keys,
                    right_time,
                    spec.join_type.keeps_right(),
                ),
            ],
        })
    }

    /// Rows of side `s` arrive: drop late ones, probe the other side, store the rest.
    fn on_side(
        &mut self,
        s: usize,
        batch: RecordBatch,
        time: &StepTime,
    ) -> Result<Vec<RecordBatch>> {
        let o = 1 - s;
        let own_watermark = if s == 0 { time.left } else { time.right };
        let n = batch.num_rows();
        let times = times_ms(&batch, self.sides[s].time)?;
        let key_columns = super::cast_columns(
            eval_keys(&self.sides[s].keys, &batch)?,
            &self.sides[s].key_types,
        )?;
        let keys = self.encoder.encode(&key_columns, n)?;
        let mut late = 0;
        let mut kept: Vec<u32> = Vec::with_capacity(n);
        let mut hashes: Vec<u64> = Vec::with_capacity(n);
        let mut null_keys: Vec<u32> = Vec::new();
        for (i, t) in times.iter().enumerate() {
            match t {
                Some(t) if *t >= own_watermark => match keys.key(i) {
                    Some(key) => {
                        kept.push(i as u32);
                        hashes.push(self.hasher.hash_one(key));
                    }
                    None => null_keys.push(i as u32),
                },
                _ => late += 1,
            }
        }
        time.count_late(late);
        let mut outputs = Vec::new();
        // Probe.
        let mut probe: Vec<u32> = Vec::new();
        let mut candidates: Vec<RowRef> = Vec::new();
        {
            let other = &self.sides[o];
            for (&i, hash) in kept.iter().zip(&hashes) {
                let Some(refs) = other.index.get(hash) else {
                    continue;
                };
                let t = times[i as usize].unwrap_or_default();
                for &r in refs {
                    if !other.store.is_live(r) {
                        continue;
                    }
                    let Some(other_t) = other.store.time(r) else {
                        continue;
                    };
                    let diff = if s == 0 {
                        other_t.saturating_sub(t)
                    } else {
                        t.saturating_sub(other_t)
                    };
                    if diff >= self.lower.saturating_sub(self.slack)
                        && diff <= self.upper.saturating_add(self.slack)
                    {
                        probe.push(i);
                        candidates.push(r);
                    }
                }
            }
        }
        let mut matched_new = vec![false; n];
        if !candidates.is_empty() {
            let these = take_rows(&batch, &probe)?;
            let others = self.sides[o].store.gather(&candidates)?;
            let pairs = if s == 0 {
                joined(
                    &self.joined_schema,
                    these.columns().to_vec(),
                    others.columns().to_vec(),
                )?
            } else {
                joined(
                    &self.joined_schema,
                    others.columns().to_vec(),
                    these.columns().to_vec(),
                )?
            };
            match condition_mask(&self.condition, &pairs)? {
                None => {
                    for (&i, &r) in probe.iter().zip(&candidates) {
                        matched_new[i as usize] = true;
                        self.sides[o].store.set_matched(r);
                    }
                    outputs.push(pairs);
                }
                Some(mask) => {
                    for (k, (&i, &r)) in probe.iter().zip(&candidates).enumerate() {
                        if mask.value(k) {
                            matched_new[i as usize] = true;
                            self.sides[o].store.set_matched(r);
                        }
                    }
                    if mask.true_count() > 0 {
                        outputs.push(apply_mask(&pairs, &mask)?);
                    }
                }
            }
        }
        // A NULL key never matches: an outer side emits the row now.
        if self.sides[s].keeps && !null_keys.is_empty() {
            let rows = take_rows(&batch, &null_keys)?;
            outputs.push(self.pad(s, &rows)?);
        }
        if !kept.is_empty() {
            let stored = take_rows(&batch, &kept)?;
            let stored_times: Vec<i64> = kept
                .iter()
                .map(|&i| times[i as usize].unwrap_or_default())
                .collect();
            let side = &mut self.sides[s];
            let chunk = side.store.push(stored, stored_times.clone());
            for (row, ((&i, &hash), &t)) in kept.iter().zip(&hashes).zip(&stored_times).enumerate()
            {
                let r = RowRef {
                    chunk,
                    row: row as u32,
                };
                if matched_new[i as usize] {
                    side.store.set_matched(r);
                }
                side.index.entry(hash).or_default().push(r);
                side.expiry.entry(t).or_default().push(r);
            }
        }
        Ok(outputs)
    }

    /// NULL-pads unmatched rows of side `s`.
    fn pad(&self, s: usize, rows: &RecordBatch) -> Result<RecordBatch> {
        if s == 0 {
            pad_right(&self.joined_schema, rows, &self.sides[1].schema)
        } else {
            pad_left(&self.joined_schema, &self.sides[0].schema, rows)
        }
    }

    /// Expires rows of side `s` with event time below `before`.
    fn expire(&mut self, s: usize, before: i64) -> Result<Option<RecordBatch>> {
        let side = &mut self.sides[s];
        let mut expired = Vec::new();
        while let Some(entry) = side.expiry.first_entry() {
            if *entry.key() >= before {
                break;
            }
            expired.extend(entry.remove());
        }
        if expired.is_empty() {
            return Ok(None);
        }
        let unmatched: Vec<RowRef> = if side.keeps {
            expired
                .iter()
                .copied()
                .filter(|r| side.store.is_live(*r) && !side.store.is_matched(*r))
                .collect()
        } else {
            Vec::new()
        };
        let rows = if unmatched.is_empty() {
            None
        } else {
            Some(side.store.gather(&unmatched)?)
        };
        for r in &expired {
            side.store.kill(*r);
        }
        side.dead_entries += expired.len();
        side.prune_index();
        rows.map(|r| self.pad(s, &r)).transpose()
    }

    fn min_time(&self, s: usize) -> Option<i64> {
        self.sides[s].expiry.first_key_value().map(|(t, _)| *t)
    }
}

impl StepState for IntervalStep {
    fn on_left(&mut self, batch: RecordBatch, time: &StepTime) -> Result<Vec<RecordBatch>> {
        self.on_side(0, batch, time)
    }

    fn on_right(&mut self, batch: RecordBatch, time: &StepTime) -> Result<Vec<RecordBatch>> {
        self.on_side(1, batch, time)
    }

    fn advance(&mut self, time: &StepTime) -> Result<Vec<RecordBatch>> {
        let mut out = Vec::new();
        // A left row can still match right rows with ts <= left.ts + upper; once the right
        // watermark is past that, it is done. A right row, once the left watermark is past
        // right.ts - lower.
        let left_before = threshold(time.right, -self.upper.saturating_add(self.slack));
        let right_before = threshold(time.left, self.lower.saturating_sub(self.slack));
        if let Some(b) = self.expire(0, left_before)? {
            out.push(b);
        }
        if let Some(b) = self.expire(1, right_before)? {
            out.push(b);
        }
        Ok(out)
    }

    fn output_watermark(&self, time: &StepTime) -> i64 {
        let left = self.min_time(0).map_or(time.left, |t| t.min(time.left));
        let right = self.min_time(1).map_or(time.right, |t| t.min(time.right));
        match self.join_type {
            JoinType::Inner | JoinType::Left | JoinType::Semi | JoinType::Anti => left,
            JoinType::Right => right,
            JoinType::Full => left.min(right),
        }
    }

    fn snapshot(&self, w: &mut SnapshotWriter) -> Result<()> {
        for side in &self.sides {
            // Live rows in event-time order, with their times and matched flags.
            let refs: Vec<RowRef> = side
                .expiry
                .values()
                .flatten()
                .copied()
                .filter(|r| side.store.is_live(*r))
                .collect();
            w.batch(&side.store.gather(&refs)?)?;
            w.u64(refs.len() as u64);
            for r in &refs {
                w.i64(side.store.time(*r).unwrap_or_default());
                w.bool(side.store.is_matched(*r));
            }
        }
        Ok(())
    }

    fn restore(&mut self, r: &mut SnapshotReader<'_>) -> Result<()> {
        for s in 0..2 {
            let batch = r.batch()?;
            let n = r.count()?;
            if n != batch.num_rows() || batch.schema().fields() != self.sides[s].schema.fields() {
                return Err(CoreError::InvalidData(
                    "interval join snapshot does not match the join's inputs".into(),
                ));
            }
            let mut times = Vec::with_capacity(n);
            let mut matched = Vec::with_capacity(n);
            for _ in 0..n {
                times.push(r.i64()?);
                matched.push(r.bool()?);
            }
            let keys = super::cast_columns(
                eval_keys(&self.sides[s].keys, &batch)?,
                &self.sides[s].key_types,
            )?;
            let keys = self.encoder.encode(&keys, n)?;
            let hashes: Vec<u64> = (0..n)
                .map(|i| keys.key(i).map_or(0, |k| self.hasher.hash_one(k)))
                .collect();
            let side = &mut self.sides[s];
            side.store = RowStore::new(side.schema.clone());
            side.index = HashMap::default();
            side.expiry = BTreeMap::new();
            side.dead_entries = 0;
            if n == 0 {
                continue;
            }
            let chunk = side.store.push(batch, times.clone());
            for (row, (&t, &m)) in times.iter().zip(&matched).enumerate() {
                let rr = RowRef {
                    chunk,
                    row: row as u32,
                };
                if m {
                    side.store.set_matched(rr);
                }
                side.index.entry(hashes[row]).or_default().push(rr);
                side.expiry.entry(t).or_default().push(rr);
            }
        }
        Ok(())
    }

    fn state_size(&self) -> StateSize {
        let a = self.sides[0].store.size();
        let b = self.sides[1].store.size();
        StateSize {
            rows: a.rows + b.rows,
            bytes: a.bytes + b.bytes,
        }
    }
}
