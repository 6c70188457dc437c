//! Vectorized window state: per open window, DataFusion's `GroupValues` maps key columns to
//! group indices and `GroupsAccumulator`s fold whole columns into per-group state. Windows
//! live in an ordered map by `(end, start)`, so a watermark closes exactly the windows it
//! passes, emits each once and frees it. The hash table of a closed window (emptied by its
//! emission) is kept for the next window to open: closing a window then frees no large
//! allocation before its rows are sent, and a new window does not grow its table again.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, UInt32Array};
use arrow::compute::take;
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::GroupsAccumulatorAdapter;
use datafusion::physical_plan::aggregates::group_values::{GroupValues, new_group_values};
use datafusion::physical_plan::aggregates::order::GroupOrdering;

use super::{AggregateOperator, AggregateSpec, OutputTime, Prepared};
use crate::error::{CoreError, Result};
use crate::operator::StateSize;

struct Window {
    /// `None` when the query has no group keys (one group per window).
    groups: Option<Box<dyn GroupValues>>,
    accumulators: Vec<Box<dyn GroupsAccumulator>>,
    num_groups: usize,
    /// What changed since the operator's previous snapshot (tracked only once one was
    /// taken, so a pipeline without checkpoints pays nothing).
    changes: Option<WindowChanges>,
}

/// The groups of a window fed since the previous snapshot. Group indices are stable (a
/// `GroupValues` numbers new keys in order of arrival), so an incremental snapshot names
/// changed groups by index and carries the keys of the new ones only.
#[derive(Default)]
struct WindowChanges {
    /// Groups the previous snapshot held; indices from here on are new groups.
    base_groups: usize,
    /// Per group index: fed since the previous snapshot.
    touched: Vec<bool>,
    /// Key columns of the new groups, in group-index order.
    new_keys: Vec<Vec<ArrayRef>>,
}

impl WindowChanges {
    fn since(num_groups: usize) -> WindowChanges {
        WindowChanges {
            base_groups: num_groups,
            ..WindowChanges::default()
        }
    }

    /// Records one `intern` of `keys`: the groups it touched and the keys of the groups it
    /// created (`before..now`).
    fn record(
        &mut self,
        indices: &[usize],
        before: usize,
        now: usize,
        keys: &[ArrayRef],
    ) -> std::result::Result<(), arrow::error::ArrowError> {
        if self.touched.len() < now {
            self.touched.resize(now, false);
        }
        for &i in indices {
            self.touched[i] = true;
        }
        if now > before && !keys.is_empty() {
            // New groups get consecutive indices in the order their first row arrives.
            let mut first_rows = Vec::with_capacity(now - before);
            let mut next = before;
            for (row, &i) in indices.iter().enumerate() {
                if i == next {
                    first_rows.push(row as u32);
                    next += 1;
                }
            }
            let rows = UInt32Array::from(first_rows);
            self.new_keys.push(
                keys.iter()
                    .map(|k| take(k.as_ref(), &rows, None))
                    .collect::<std::result::Result<Vec<_>, _>>()?,
            );
        }
        Ok(())
    }
}

pub(crate) struct FastState {
    key_schema: Arc<Schema>,
    windows: BTreeMap<(i64, i64), Window>,
    group_indices: Vec<usize>,
    /// Emptied group tables of closed windows, reused by new windows.
    spare_groups: Vec<Box<dyn GroupValues>>,
    /// Windows record their changes (a snapshot was taken since the state was built).
    tracking: bool,
}

/// Most emptied group tables kept for reuse.
const SPARE_GROUP_TABLES: usize = 4;

impl FastState {
    pub(crate) fn new(spec: &AggregateSpec, key_types: &[DataType]) -> Result<FastState> {
        let key_schema = Arc::new(Schema::new(
            key_types
                .iter()
                .enumerate()
                .map(|(i, t)| Field::new(format!("k{i}"), t.clone(), true))
                .collect::<Vec<_>>(),
        ));
        let mut state = FastState {
            key_schema,
            windows: BTreeMap::new(),
            group_indices: Vec::new(),
            spare_groups: Vec::new(),
            tracking: false,
        };
        // Fail at CREATE time, not on the first row, when an accumulator cannot be built.
        let probe = state.new_window(spec)?;
        state.spare_groups.extend(probe.groups);
        Ok(state)
    }

    fn new_window(&mut self, spec: &AggregateSpec) -> Result<Window> {
        let df = |source| CoreError::Evaluation {
            operator: spec.name.clone(),
            source,
        };
        let groups = if self.key_schema.fields().is_empty() {
            None
        } else if let Some(spare) = self.spare_groups.pop() {
            Some(spare)
        } else {
            Some(new_group_values(self.key_schema.clone(), &GroupOrdering::None).map_err(df)?)
        };
        let accumulators = spec
            .aggregates
            .iter()
            .map(|call| {
                if call.function.groups_accumulator_supported() {
                    call.function.create_groups_accumulator()
                } else {
                    let function = call.function.clone();
                    Ok(Box::new(GroupsAccumulatorAdapter::new(move || {
                        function.create_accumulator()
                    })) as Box<dyn GroupsAccumulator>)
                }
            })
            .collect::<datafusion::error::Result<Vec<_>>>()
            .map_err(df)?;
        Ok(Window {
            groups,
            accumulators,
            num_groups: 0,
            changes: self.tracking.then(WindowChanges::default),
        })
    }

    /// Feeds a batch; returns the mask of too-late rows, if any.
    pub(crate) fn ingest(
        &mut self,
        spec: &AggregateSpec,
        prepared: &Prepared,
        watermark: i64,
    ) -> Result<Option<BooleanArray>> {
        let window = spec.window.expect("fast state is windowed");
        let times = prepared
            .times
            .as_ref()
            .expect("windowed input has event time");
        let anchors: Vec<i64> = times.iter().map(|&t| window.anchor(t)).collect();
        let open = |end: i64| end.saturating_add(spec.lateness) > watermark;
        // Late rows: every window of the row is closed.
        let late_rows: Vec<bool> = anchors.iter().map(|&a| !open(window.last_end(a))).collect();
        let late = late_rows
            .contains(&true)
            .then(|| BooleanArray::from(late_rows.clone()));
        let first = anchors[0];
        if late.is_none() && anchors.iter().all(|&a| a == first) {
            self.feed_anchor(
                spec,
                first,
                &prepared.keys,
                &prepared.args,
                &prepared.filters,
                watermark,
            )?;
            return Ok(None);
        }
        // Group row indices by anchor (usually a few distinct anchors per batch).
        let mut by_anchor: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
        for (row, (&a, &is_late)) in anchors.iter().zip(&late_rows).enumerate() {
            if !is_late {
                by_anchor.entry(a).or_default().push(row as u32);
            }
        }
        let arrow_error = |source| CoreError::Arrow {
            operator: spec.name.clone(),
            source,
        };
        for (anchor, rows) in by_anchor {
            let indices = UInt32Array::from(rows);
            let pick = |columns: &[ArrayRef]| -> Result<Vec<ArrayRef>> {
                columns
                    .iter()
                    .map(|c| take(c.as_ref(), &indices, None).map_err(arrow_error))
                    .collect()
            };
            let keys = pick(&prepared.keys)?;
            let args = prepared
                .args
                .iter()
                .map(|a| pick(a))
                .collect::<Result<Vec<_>>>()?;
            let filters = prepared
                .filters
                .iter()
                .map(|f| match f {
                    None => Ok(None),
                    Some(f) => take(f, &indices, None)
                        .map(|a| Some(arrow::array::AsArray::as_boolean(&a).clone()))
                        .map_err(arrow_error),
                })
                .collect::<Result<Vec<_>>>()?;
            self.feed_anchor(spec, anchor, &keys, &args, &filters, watermark)?;
        }
        Ok(late)
    }

    fn feed_anchor(
        &mut self,
        spec: &AggregateSpec,
        anchor: i64,
        keys: &[ArrayRef],
        args: &[Vec<ArrayRef>],
        filters: &[Option<BooleanArray>],
        watermark: i64,
    ) -> Result<()> {
        let window_spec = spec.window.expect("windowed");
        let rows = args
            .first()
            .and_then(|a| a.first())
            .map(|a| a.len())
            .or_else(|| keys.first().map(|k| k.len()))
            .unwrap_or(0);
        let mut targets = Vec::new();
        window_spec.for_each_window(anchor, |start, end| {
            if end.saturating_add(spec.lateness) > watermark {
                targets.push((end, start));
            }
        });
        let df = |source| CoreError::Evaluation {
            operator: spec.name.clone(),
            source,
        };
        for target in targets {
            if !self.windows.contains_key(&target) {
                let window = self.new_window(spec)?;
                self.windows.insert(target, window);
            }
            let window = self.windows.get_mut(&target).expect("inserted");
            let before = window.num_groups;
            match &mut window.groups {
                Some(groups) => {
                    self.group_indices.clear();
                    groups.intern(keys, &mut self.group_indices).map_err(df)?;
                    window.num_groups = groups.len();
                }
                None => {
                    self.group_indices.clear();
                    self.group_indices.resize(rows, 0);
                    window.num_groups = 1;
                }
            }
            if let Some(changes) = &mut window.changes {
                changes
                    .record(&self.group_indices, before, window.num_groups, keys)
                    .map_err(|source| CoreError::Arrow {
                        operator: spec.name.clone(),
                        source,
                    })?;
            }
            for ((accumulator, values), filter) in
                window.accumulators.iter_mut().zip(args).zip(filters)
            {
                accumulator
                    .update_batch(
                        values,
                        &self.group_indices,
                        filter.as_ref(),
                        window.num_groups,
                    )
                    .map_err(df)?;
            }
        }
        Ok(())
    }

    /// Emits and frees every window closed by `watermark` (SPEC 2.9: ON WATERMARK without
    /// lateness, ON WINDOW CLOSE and FINAL all emit once at `W >= end + lateness`).
    pub(crate) fn advance(
        &mut self,
        spec: &AggregateSpec,
        watermark: i64,
    ) -> Result<Vec<RecordBatch>> {
        let mut out = Vec::new();
        while let Some(entry) = self.windows.first_entry() {
            let (end, start) = *entry.key();
            if end.saturating_add(spec.lateness) > watermark {
                break;
            }
            let window = entry.remove();
            let (batch, groups) = emit_window(spec, window, start, end)?;
            out.push(batch);
            if let Some(groups) = groups
                && self.spare_groups.len() < SPARE_GROUP_TABLES
            {
                // Emitting everything left the table empty (its capacity stays).
                self.spare_groups.push(groups);
            }
        }
        Ok(out)
    }

    pub(crate) fn min_retained(&self, time: OutputTime) -> Option<i64> {
        match time {
            OutputTime::None => None,
            OutputTime::WindowStart => self.windows.keys().map(|&(_, start)| start).min(),
            OutputTime::WindowEnd => self.windows.keys().next().map(|&(end, _)| end),
        }
    }

    pub(crate) fn size(&self) -> StateSize {
        let mut size = StateSize::default();
        for window in self.windows.values() {
            size.rows += window.num_groups as u64;
            size.bytes += window.groups.as_ref().map_or(0, |g| g.size()) as u64;
            size.bytes += window
                .accumulators
                .iter()
                .map(|a| a.size() as u64)
                .sum::<u64>();
        }
        // Emptied tables kept for reuse hold memory, not rows.
        size.bytes += self
            .spare_groups
            .iter()
            .map(|g| g.size() as u64)
            .sum::<u64>();
        size
    }
}

/// The window's rows, and its group table, emptied, for reuse.
fn emit_window(
    spec: &AggregateSpec,
    mut window: Window,
    start: i64,
    end: i64,
) -> Result<(RecordBatch, Option<Box<dyn GroupValues>>)> {
    let df = |source| CoreError::Evaluation {
        operator: spec.name.clone(),
        source,
    };
    let keys = match &mut window.groups {
        Some(groups) => groups.emit(EmitTo::All).map_err(df)?,
        None => Vec::new(),
    };
    let values = window
        .accumulators
        .iter_mut()
        .map(|a| a.evaluate(EmitTo::All))
        .collect::<datafusion::error::Result<Vec<_>>>()
        .map_err(df)?;
    let rows = window.num_groups;
    let starts = vec![start; rows];
    let ends = vec![end; rows];
    let batch =
        AggregateOperator::aggregate_batch(spec, keys, Some((&starts, &ends)), values, rows)?;
    let (out, _) = AggregateOperator::post(spec, batch)?;
    Ok((out, window.groups.take()))
}

impl FastState {
    /// Writes every open window: bounds, group count, then keys and accumulator states.
    pub(crate) fn snapshot(
        &mut self,
        spec: &AggregateSpec,
        w: &mut crate::snapshot::SnapshotWriter,
    ) -> Result<()> {
        w.u64(self.windows.len() as u64);
        for (&(end, start), window) in self.windows.iter_mut() {
            w.i64(end);
            w.i64(start);
            w.u64(window.num_groups as u64);
            let (keys, states) = super::checkpoint::emit_and_reinsert(
                spec,
                window.groups.as_mut(),
                &mut window.accumulators,
                window.num_groups,
            )?;
            let mut columns = keys;
            columns.extend(states.into_iter().flatten());
            let batch = super::checkpoint::columns_batch(columns, window.num_groups)?;
            super::checkpoint::write_optional_batch(w, &batch)?;
            window.changes = Some(WindowChanges::since(window.num_groups));
        }
        self.tracking = true;
        Ok(())
    }

    /// Writes what changed since the previous snapshot, for every open window: bounds, group
    /// count and the count the previous snapshot held, then (when the window was fed) the
    /// keys of its new groups and the indices and accumulator states of its fed groups.
    /// Windows not listed were closed. Returns false, writing nothing, when no previous
    /// snapshot was taken since the state was built.
    pub(crate) fn snapshot_delta(
        &mut self,
        spec: &AggregateSpec,
        w: &mut crate::snapshot::SnapshotWriter,
    ) -> Result<bool> {
        if !self.tracking {
            return Ok(false);
        }
        let arrow_error = |source| CoreError::Arrow {
            operator: spec.name.clone(),
            source,
        };
        w.u64(self.windows.len() as u64);
        for (&(end, start), window) in self.windows.iter_mut() {
            let changes = window.changes.take().ok_or_else(|| {
                CoreError::Internal(format!("{}: a window lost its change record", spec.name))
            })?;
            w.i64(end);
            w.i64(start);
            w.u64(window.num_groups as u64);
            w.u64(changes.base_groups as u64);
            let touched: Vec<u64> = changes
                .touched
                .iter()
                .enumerate()
                .filter(|(_, t)| **t)
                .map(|(i, _)| i as u64)
                .collect();
            w.bool(!touched.is_empty());
            if !touched.is_empty() {
                let key_columns = self.key_schema.fields().len();
                let new_keys = (0..key_columns)
                    .map(|c| {
                        let parts: Vec<&dyn arrow::array::Array> =
                            changes.new_keys.iter().map(|k| k[c].as_ref()).collect();
                        if parts.is_empty() {
                            Ok(arrow::array::new_empty_array(
                                self.key_schema.field(c).data_type(),
                            ))
                        } else {
                            arrow::compute::concat(&parts).map_err(arrow_error)
                        }
                    })
                    .collect::<Result<Vec<_>>>()?;
                let new_rows = window.num_groups - changes.base_groups;
                super::checkpoint::write_optional_batch(
                    w,
                    &super::checkpoint::columns_batch(new_keys, new_rows)?,
                )?;
                let (_, states) = super::checkpoint::emit_and_reinsert(
                    spec,
                    None,
                    &mut window.accumulators,
                    window.num_groups,
                )?;
                let picked = arrow::array::UInt64Array::from(touched);
                let mut columns: Vec<ArrayRef> = vec![Arc::new(picked.clone())];
                for state in states.into_iter().flatten() {
                    columns.push(take(state.as_ref(), &picked, None).map_err(arrow_error)?);
                }
                w.batch(&super::checkpoint::columns_batch(columns, picked.len())?)?;
            }
            window.changes = Some(WindowChanges::since(window.num_groups));
        }
        Ok(true)
    }

    /// Rebuilds the windows written by [`FastState::snapshot`] (replacing any), after
    /// applying the incremental snapshots `deltas` ([`FastState::snapshot_delta`]) in order.
    pub(crate) fn restore(
        &mut self,
        spec: &AggregateSpec,
        r: &mut crate::snapshot::SnapshotReader<'_>,
        deltas: &mut [crate::snapshot::SnapshotReader<'_>],
    ) -> Result<()> {
        let mut windows: WindowRows = BTreeMap::new();
        for _ in 0..r.count()? {
            let end = r.i64()?;
            let start = r.i64()?;
            let num_groups = read_len(r)?;
            let batch = super::checkpoint::read_optional_batch(r)?;
            if let Some(batch) = &batch {
                super::checkpoint::rows_of(spec, batch, num_groups)?;
            }
            windows.insert((end, start), (num_groups, batch));
        }
        for delta in deltas.iter_mut() {
            windows = self.apply_delta(spec, windows, delta)?;
        }
        let df = super::checkpoint::df(spec);
        let mut built = BTreeMap::new();
        for ((end, start), (num_groups, batch)) in windows {
            let mut window = self.new_window(spec)?;
            if let Some(batch) = batch {
                let key_count = self.key_schema.fields().len();
                let keys = batch
                    .columns()
                    .get(..key_count)
                    .unwrap_or_default()
                    .to_vec();
                let states = super::checkpoint::split_state_columns(spec, &batch, key_count, None)?;
                let mut indices = Vec::new();
                match &mut window.groups {
                    Some(groups) => groups.intern(&keys, &mut indices).map_err(&df)?,
                    None => indices.extend(0..num_groups),
                }
                for (acc, state) in window.accumulators.iter_mut().zip(&states) {
                    acc.merge_batch(state, &indices, num_groups).map_err(&df)?;
                }
            }
            window.num_groups = num_groups;
            built.insert((end, start), window);
        }
        self.windows = built;
        self.tracking = false;
        Ok(())
    }

    /// Applies one incremental snapshot to windows read as `(groups, keys and states)`.
    fn apply_delta(
        &self,
        spec: &AggregateSpec,
        mut windows: WindowRows,
        r: &mut crate::snapshot::SnapshotReader<'_>,
    ) -> Result<WindowRows> {
        let invalid = |what: String| {
            CoreError::InvalidData(format!(
                "incremental snapshot of aggregation '{}': {what}",
                spec.name
            ))
        };
        let arrow_error = |source| CoreError::Arrow {
            operator: spec.name.clone(),
            source,
        };
        let key_count = self.key_schema.fields().len();
        let mut out = BTreeMap::new();
        for _ in 0..r.count()? {
            let end = r.i64()?;
            let start = r.i64()?;
            let num_groups = read_len(r)?;
            let base_groups = read_len(r)?;
            let (held, batch) = windows.remove(&(end, start)).unwrap_or((0, None));
            if held != base_groups || base_groups > num_groups {
                return Err(invalid(format!(
                    "window [{start}, {end}) holds {held} groups, the increment expects {base_groups} (it does not follow the snapshot it is applied to)"
                )));
            }
            if !r.bool()? {
                if num_groups != base_groups {
                    return Err(invalid(format!(
                        "window [{start}, {end}) grew without changed groups"
                    )));
                }
                out.insert((end, start), (num_groups, batch));
                continue;
            }
            let new_keys = super::checkpoint::read_optional_batch(r)?;
            let changed = r.batch()?;
            let picked = super::checkpoint::column::<arrow::array::UInt64Array>(spec, &changed, 0)?;
            // Each group's state: the increment's when it changed, else the one held.
            let mut selection = Vec::with_capacity(num_groups);
            let mut next = 0;
            for group in 0..num_groups {
                if next < picked.len() && picked.value(next) == group as u64 {
                    selection.push((1, next));
                    next += 1;
                } else if group < base_groups {
                    selection.push((0, group));
                } else {
                    return Err(invalid(format!(
                        "new group {group} of window [{start}, {end}) has no state"
                    )));
                }
            }
            if next != picked.len() {
                return Err(invalid(
                    "changed group indices out of order or range".into(),
                ));
            }
            let states = &changed.columns()[1..];
            let mut columns: Vec<ArrayRef> = Vec::with_capacity(key_count + states.len());
            if key_count > 0 {
                let new_keys = new_keys.ok_or_else(|| invalid("new keys missing".into()))?;
                super::checkpoint::rows_of(spec, &new_keys, num_groups - base_groups)?;
                for (c, added) in new_keys.columns().iter().enumerate() {
                    columns.push(match &batch {
                        Some(held) if held.num_columns() > c => {
                            arrow::compute::concat(&[held.column(c).as_ref(), added.as_ref()])
                                .map_err(arrow_error)?
                        }
                        _ => added.clone(),
                    });
                }
            }
            for (c, state) in states.iter().enumerate() {
                let column = match &batch {
                    Some(held) if base_groups > 0 => {
                        let held = held.columns().get(key_count + c).ok_or_else(|| {
                            invalid("fewer state columns than the snapshot".into())
                        })?;
                        arrow::compute::interleave(&[held.as_ref(), state.as_ref()], &selection)
                            .map_err(arrow_error)?
                    }
                    _ => state.clone(),
                };
                columns.push(column);
            }
            let batch = if columns.is_empty() {
                None
            } else {
                Some(super::checkpoint::columns_batch(columns, num_groups)?)
            };
            out.insert((end, start), (num_groups, batch));
        }
        Ok(out)
    }
}

/// Windows as a snapshot holds them: `(end, start)` → group count and a batch of the key
/// columns then the accumulator state columns (`None` when there are no columns).
type WindowRows = BTreeMap<(i64, i64), (usize, Option<RecordBatch>)>;

fn read_len(r: &mut crate::snapshot::SnapshotReader<'_>) -> Result<usize> {
    usize::try_from(r.u64()?)
        .map_err(|_| CoreError::InvalidData("snapshot group count overflows".into()))
}
