//! Row-accumulator state: one DataFusion `Accumulator` set per group, evaluated without
//! being consumed. This layout serves what the vectorized one cannot: updating EMIT modes
//! (each group remembers the last row it emitted, so a change becomes `U-`/`U+`, a vanished
//! or no-longer-qualifying group `D`), changelog input (`retract_batch`), and session windows
//! (sessions of a key merge through `state()` / `merge_batch()`).

use std::collections::BTreeMap;

/// Hash maps keyed by row-encoded group keys: foldhash (DataFusion's fixed-seed hasher)
/// instead of SipHash, which showed up at 7 % of a session run's time.
type HashMap<K, V> = std::collections::HashMap<K, V, datafusion::common::hash_utils::RandomState>;

/// A set of row-encoded group keys.
type KeySet = std::collections::HashSet<Box<[u8]>, datafusion::common::hash_utils::RandomState>;

mod session_rows;

use arrow::array::{Array, ArrayRef, BooleanArray, UInt32Array};
use arrow::compute::take;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, Rows};
use datafusion::logical_expr::Accumulator;
use datafusion::scalar::ScalarValue;

use super::{AggregateOperator, AggregateSpec, EmitMode, OutputTime, Prepared, with_ops};
use crate::error::{CoreError, Result};
use crate::message::{END_OF_TIME, NO_WATERMARK};
use crate::operator::StateSize;
use crate::time::KeyClocks;

/// A window's key in the window map: `(end, start)`.
type WindowKey = (i64, i64);

/// The window key of unwindowed aggregation.
const GLOBAL: WindowKey = (END_OF_TIME, NO_WATERMARK);

struct Group {
    accumulators: Vec<Box<dyn Accumulator>>,
    /// Net number of rows (Z-set weight) in the group.
    weight: i64,
    /// The output row last emitted for this group (after HAVING and the SELECT list).
    last: Option<Vec<ScalarValue>>,
    dirty: bool,
    /// The watermark passed the group's window end (its first ON WATERMARK / EVERY
    /// emission happened; later changes are corrections).
    emitted: bool,
    /// The group's watermark key (keyed watermarks only).
    watermark_key: Option<Box<[u8]>>,
    /// Changed since the operator's previous snapshot (fed, merged or emitted).
    changed: bool,
}

#[derive(Default)]
struct Window {
    groups: HashMap<Box<[u8]>, Group>,
}

struct Session {
    start: i64,
    end: i64,
    group: Group,
    /// A row was deleted (changelog input): the session may have to shrink, vanish or split.
    check: bool,
}

/// The watermark each input row is judged by: one for all rows, or per row (keyed
/// watermarks).
pub(crate) enum RowWatermarks<'a> {
    /// Every row.
    All(i64),
    /// Per row, with the encoded watermark key of each row.
    PerRow(&'a [i64], &'a Rows),
}

impl RowWatermarks<'_> {
    fn of(&self, row: usize) -> i64 {
        match self {
            RowWatermarks::All(w) => *w,
            RowWatermarks::PerRow(w, _) => w[row],
        }
    }

    fn key(&self, row: usize) -> Option<Box<[u8]>> {
        match self {
            RowWatermarks::All(_) => None,
            RowWatermarks::PerRow(_, keys) => Some(keys.row(row).data().into()),
        }
    }
}

/// The watermark each group is closed by: the input's, or its key's (keyed watermarks).
pub(crate) struct GroupWatermarks<'a> {
    /// The input watermark.
    pub input: i64,
    /// Per-key clocks, when keyed.
    pub clocks: Option<&'a KeyClocks>,
}

impl GroupWatermarks<'_> {
    fn of(&self, group: &Group) -> i64 {
        match (self.clocks, &group.watermark_key) {
            (Some(clocks), Some(key)) => clocks.effective(key, self.input),
            _ => self.input,
        }
    }

    /// No group's watermark exceeds this.
    fn bound(&self) -> i64 {
        match self.clocks {
            Some(c) if self.input != END_OF_TIME => c.max_watermark().max(self.input),
            _ => self.input,
        }
    }
}

pub(crate) struct GeneralState {
    changelog: bool,
    windows: BTreeMap<(i64, i64), Window>,
    sessions: HashMap<Box<[u8]>, Vec<Session>>,
    /// A lower bound of every session end (skips scans on watermarks that close nothing).
    session_min_end: i64,
    session_min_start: Option<i64>,
    /// A changelog deletion shrank or split a session to end at or below the watermark:
    /// the operator runs its watermark step after the batch.
    recut_due: bool,
    /// Output rows of merged-away sessions, retracted at the next emission.
    retractions: Vec<Vec<ScalarValue>>,
    /// The live rows of open sessions (session windows over a changelog input).
    session_rows: Option<session_rows::SessionRows>,
    /// Removals since the previous snapshot (`Some` once a snapshot was taken; changed
    /// groups carry their own flag).
    changes: Option<Changes>,
    /// Every window group whose `dirty` flag is set (and possibly some no longer dirty or
    /// gone): `emit_dirty` visits these instead of every group.
    dirty: Vec<(WindowKey, Box<[u8]>)>,
}

/// What an incremental snapshot must carry besides the changed groups.
#[derive(Default)]
struct Changes {
    /// Windows freed whole.
    removed_windows: Vec<WindowKey>,
    /// Groups freed from windows that stay.
    removed_groups: Vec<(WindowKey, Box<[u8]>)>,
    /// Keys whose list of sessions changed (a session opened, merged away or freed).
    session_keys: KeySet,
}

/// One group to emit: its key, window bounds and state.
struct Entry<'a> {
    key: &'a [u8],
    start: i64,
    end: i64,
    group: &'a mut Group,
}

impl GeneralState {
    pub(crate) fn new(spec: &AggregateSpec, changelog: bool) -> Result<GeneralState> {
        // Fail at CREATE time, not on the first row, when an accumulator cannot be built.
        new_accumulators(spec, changelog)?;
        Ok(GeneralState {
            changelog,
            windows: BTreeMap::new(),
            sessions: HashMap::default(),
            session_min_end: END_OF_TIME,
            session_min_start: None,
            recut_due: false,
            retractions: Vec::new(),
            session_rows: if changelog && spec.window.is_some_and(|w| w.is_session()) {
                Some(session_rows::SessionRows::new(spec)?)
            } else {
                None
            },
            changes: None,
            dirty: Vec::new(),
        })
    }

    /// Feeds a batch; returns the mask of too-late rows, if any.
    pub(crate) fn ingest(
        &mut self,
        spec: &AggregateSpec,
        converter: Option<&RowConverter>,
        prepared: &Prepared,
        watermarks: &RowWatermarks<'_>,
    ) -> Result<Option<BooleanArray>> {
        let rows = prepared.batch.num_rows();
        let keys: Option<Rows> = match converter {
            Some(c) => {
                Some(
                    c.convert_columns(&prepared.keys)
                        .map_err(|source| CoreError::Arrow {
                            operator: spec.name.clone(),
                            source,
                        })?,
                )
            }
            None => None,
        };
        let key_of = |row: usize| -> &[u8] {
            match &keys {
                Some(k) => k.row(row).data(),
                None => &[],
            }
        };
        if let Some(window) = spec.window
            && window.is_session()
        {
            return self.ingest_sessions(spec, prepared, &key_of, watermarks);
        }
        // (window, key) -> (rows adding, rows retracting)
        type Slot = (Vec<u32>, Vec<u32>);
        let mut slots: HashMap<((i64, i64), &[u8]), Slot> = HashMap::default();
        let mut late = vec![false; rows];
        let mut any_late = false;
        for (row, is_late) in late.iter_mut().enumerate() {
            let weight = prepared.weights.as_ref().map_or(1, |w| w[row]);
            let key = key_of(row);
            let watermark = watermarks.of(row);
            let open = |end: i64| end.saturating_add(spec.lateness) > watermark;
            let mut add = |target: (i64, i64)| {
                let slot = slots.entry((target, key)).or_default();
                if weight > 0 {
                    slot.0.push(row as u32);
                } else {
                    slot.1.push(row as u32);
                }
            };
            match spec.window {
                None => add(GLOBAL),
                Some(window) => {
                    let anchor = window.anchor(prepared.times.as_ref().expect("event time")[row]);
                    if !open(window.last_end(anchor)) {
                        *is_late = true;
                        any_late = true;
                        continue;
                    }
                    window.for_each_window(anchor, |start, end| {
                        if open(end) {
                            add((end, start));
                        }
                    });
                }
            }
        }
        for ((target, key), (adds, retracts)) in slots {
            let window = self.windows.entry(target).or_default();
            if !window.groups.contains_key(key) {
                let first = adds.first().or(retracts.first()).copied().unwrap_or(0) as usize;
                let mut group = new_group(spec, self.changelog)?;
                // A group created after the watermark passed its window's end only ever
                // emits corrections.
                group.emitted = target != GLOBAL && target.0 <= watermarks.of(first);
                group.watermark_key = watermarks.key(first);
                window.groups.insert(key.into(), group);
            }
            let group = window.groups.get_mut(key).expect("inserted");
            let was_dirty = group.dirty;
            update_group(spec, group, prepared, &adds, false)?;
            update_group(spec, group, prepared, &retracts, true)?;
            if !was_dirty && emits_dirty(spec) {
                self.dirty.push((target, key.into()));
            }
        }
        Ok(any_late.then(|| BooleanArray::from(late)))
    }

    /// Feeds rows into the sessions of their keys. Over a changelog input a deletion
    /// retracts its row from the session holding it; the sessions that lost rows are then
    /// re-cut from the live rows (`session_rows`).
    fn ingest_sessions<'k>(
        &mut self,
        spec: &AggregateSpec,
        prepared: &Prepared,
        key_of: &dyn Fn(usize) -> &'k [u8],
        watermarks: &RowWatermarks<'_>,
    ) -> Result<Option<BooleanArray>> {
        let gap = spec.window.expect("session").span();
        let times = prepared.times.as_ref().expect("event time");
        let rows = prepared.batch.num_rows();
        let encoded = match &self.session_rows {
            Some(store) => Some(store.encode(spec, prepared)?),
            None => None,
        };
        let mut by_key: HashMap<&'k [u8], Vec<u32>> = HashMap::default();
        for row in 0..rows {
            by_key.entry(key_of(row)).or_default().push(row as u32);
        }
        let mut late = vec![false; rows];
        let mut any_late = false;
        for (key, mut key_rows) in by_key {
            key_rows.sort_by_key(|&r| times[r as usize]);
            if !self.sessions.contains_key(key) {
                self.sessions.insert(key.into(), Vec::new());
            }
            if let Some(changes) = &mut self.changes
                && !changes.session_keys.contains(key)
            {
                changes.session_keys.insert(key.into());
            }
            let sessions = self.sessions.get_mut(key).expect("inserted");
            let mut touching: Vec<usize> = Vec::new();
            // Rows headed for the same session are fed in one accumulator call: a key's rows
            // are sorted by time, so consecutive rows mostly extend the same session.
            let mut run: Vec<u32> = Vec::new();
            let mut run_target = usize::MAX;
            let mut watermark = NO_WATERMARK;
            for row in key_rows {
                let t = times[row as usize];
                watermark = watermarks.of(row as usize);
                let (lo, hi) = (t, t.saturating_add(gap));
                let too_late = hi.saturating_add(spec.lateness) <= watermark;
                let weight = prepared.weights.as_ref().map_or(1, |w| w[row as usize]);
                if let (Some(store), Some(encoded)) = (self.session_rows.as_mut(), &encoded) {
                    let encoded = encoded.row(row as usize);
                    if weight < 0 {
                        if store.remove(t, key, encoded.data()) {
                            let Some(holder) = session_rows::holding(sessions, t) else {
                                return Err(CoreError::Internal(format!(
                                    "{}: a live row outside every session of its key",
                                    spec.name
                                )));
                            };
                            feed_run(spec, sessions, run_target, prepared, &mut run)?;
                            update_group(
                                spec,
                                &mut sessions[holder].group,
                                prepared,
                                &[row],
                                true,
                            )?;
                            sessions[holder].check = true;
                        } else if too_late && !sessions.iter().any(|s| s.start <= hi && s.end >= lo)
                        {
                            // Late by the insertion's rule: its insertion would join no
                            // open session either.
                            late[row as usize] = true;
                            any_late = true;
                        } else {
                            store.add_pending(t, key, encoded.data(), 1);
                        }
                        continue;
                    }
                    if store.cancel_pending(t, key, encoded.data()) {
                        continue;
                    }
                }
                // Sessions the row's interval [t, t+gap) overlaps or touches.
                touching.clear();
                touching.extend(
                    sessions
                        .iter()
                        .enumerate()
                        .filter(|(_, s)| s.start <= hi && s.end >= lo)
                        .map(|(i, _)| i),
                );
                if touching.is_empty() && too_late {
                    late[row as usize] = true;
                    any_late = true;
                    continue;
                }
                if let (Some(store), Some(encoded)) = (self.session_rows.as_mut(), &encoded) {
                    store.add(t, key, encoded.row(row as usize).data(), 1);
                }
                if touching.is_empty() {
                    // The insertion shifts session indices: feed the pending run first.
                    feed_run(spec, sessions, run_target, prepared, &mut run)?;
                    let position = sessions.partition_point(|s| s.start < lo);
                    let mut group = new_group(spec, self.changelog)?;
                    group.emitted = hi <= watermark;
                    group.watermark_key = watermarks.key(row as usize);
                    sessions.insert(
                        position,
                        Session {
                            start: lo,
                            end: hi,
                            group,
                            check: false,
                        },
                    );
                    self.session_min_end = self.session_min_end.min(hi);
                    run_target = position;
                    run.push(row);
                    continue;
                }
                let target = touching[0];
                if touching.len() > 1 || target != run_target {
                    feed_run(spec, sessions, run_target, prepared, &mut run)?;
                }
                // Merge the other touched sessions into the first one (highest index first so
                // removal keeps the remaining indices valid).
                for &other in touching[1..].iter().rev() {
                    let merged = sessions.remove(other);
                    if let Some(last) = merged.group.last.clone() {
                        self.retractions.push(last);
                    }
                    let session = &mut sessions[target];
                    let emitted = merged.group.emitted;
                    session.check |= merged.check;
                    merge_groups(spec, &mut session.group, merged.group)?;
                    session.end = session.end.max(merged.end);
                    session.group.emitted |= emitted;
                }
                let session = &mut sessions[target];
                session.start = session.start.min(lo);
                session.end = session.end.max(hi);
                run_target = target;
                run.push(row);
            }
            feed_run(spec, sessions, run_target, prepared, &mut run)?;
            if let Some(store) = &self.session_rows {
                let ends = recut_sessions(spec, store, key, sessions, &mut self.retractions)?;
                self.session_min_end = self.session_min_end.min(ends);
                // A session that shrank to end at or below the watermark is due now.
                self.recut_due |= ends <= watermark;
                if sessions.is_empty() {
                    self.sessions.remove(key);
                }
            }
        }
        Ok(any_late.then(|| BooleanArray::from(late)))
    }

    /// Emits dirty groups as a changelog (`only_emitted`: only in windows whose first
    /// emission already happened, i.e. ON WATERMARK corrections).
    /// Creates the one group of a global aggregation before any input and emits its row
    /// (the aggregates of no rows), remembering it as emitted.
    pub(crate) fn start_global(
        &mut self,
        spec: &AggregateSpec,
        output: &SchemaRef,
    ) -> Result<Option<RecordBatch>> {
        let mut group = new_group(spec, self.changelog)?;
        group.dirty = true;
        self.windows
            .entry(GLOBAL)
            .or_default()
            .groups
            .insert(Box::from(&[][..]), group);
        self.dirty.push((GLOBAL, Box::from(&[][..])));
        self.emit_dirty(spec, None, output, false)
    }

    pub(crate) fn emit_dirty(
        &mut self,
        spec: &AggregateSpec,
        converter: Option<&RowConverter>,
        output: &SchemaRef,
        only_emitted: bool,
    ) -> Result<Option<RecordBatch>> {
        // The dirty window groups leave their maps while they are emitted (the entries
        // borrow them together), then go back.
        let mut taken: Vec<(WindowKey, Box<[u8]>, Group)> = Vec::new();
        let mut still_dirty = Vec::new();
        for (window_key, key) in std::mem::take(&mut self.dirty) {
            let Some(window) = self.windows.get_mut(&window_key) else {
                continue;
            };
            match window.groups.get(&key) {
                Some(group) if group.dirty && (group.emitted || !only_emitted) => {
                    if let Some(group) = window.groups.remove(&key) {
                        taken.push((window_key, key, group));
                    }
                }
                Some(group) if group.dirty => still_dirty.push((window_key, key)),
                _ => {}
            }
        }
        self.dirty = still_dirty;
        let mut entries = Vec::new();
        for ((end, start), key, group) in taken.iter_mut() {
            entries.push(Entry {
                key,
                start: *start,
                end: *end,
                group,
            });
        }
        for (key, sessions) in self.sessions.iter_mut() {
            for session in sessions.iter_mut() {
                if (session.group.emitted || !only_emitted) && session.group.dirty {
                    entries.push(Entry {
                        key,
                        start: session.start,
                        end: session.end,
                        group: &mut session.group,
                    });
                }
            }
        }
        let retractions = std::mem::take(&mut self.retractions);
        let emitted = emit_updates(spec, converter, output, entries, retractions);
        // Back into their windows, except groups whose rows were all retracted (their `D`
        // has been emitted) over a changelog input.
        let mut changes = self.changes.as_mut();
        for (window_key, key, group) in taken {
            let vanished =
                self.changelog && !(group.weight > 0 || group.dirty || group.last.is_some());
            if vanished {
                if let Some(changes) = changes.as_mut() {
                    changes.removed_groups.push((window_key, key));
                }
                continue;
            }
            if group.dirty {
                self.dirty.push((window_key, key.clone()));
            }
            self.windows
                .entry(window_key)
                .or_default()
                .groups
                .insert(key, group);
        }
        if self.changelog {
            self.windows.retain(|&k, w| {
                let keep = k == GLOBAL || !w.groups.is_empty();
                if !keep && let Some(changes) = changes.as_mut() {
                    changes.removed_windows.push(k);
                }
                keep
            });
        }
        emitted
    }

    /// Handles a watermark advance: first emissions (ON WATERMARK, EVERY), final emissions
    /// (ON WINDOW CLOSE, FINAL) and freeing of groups past `end + lateness` — each group by
    /// its own watermark (the input's, or its key's when keyed).
    pub(crate) fn advance(
        &mut self,
        spec: &AggregateSpec,
        converter: Option<&RowConverter>,
        output: &SchemaRef,
        watermarks: &GroupWatermarks<'_>,
    ) -> Result<Vec<RecordBatch>> {
        let updating = spec.emit.is_updating(spec.lateness);
        let keyed = watermarks.clocks.is_some();
        let bound = watermarks.bound();
        let decide = |group: &mut Group, end: i64| -> (bool, bool) {
            let watermark = watermarks.of(group);
            if end > watermark {
                return (false, false);
            }
            let closing = end.saturating_add(spec.lateness) <= watermark;
            let first = !group.emitted;
            group.emitted = true;
            group.changed |= first;
            let emit = match spec.emit {
                EmitMode::OnWatermark => first || group.dirty,
                EmitMode::Every(_) => group.dirty,
                EmitMode::OnWindowClose | EmitMode::Final => closing,
                EmitMode::OnUpdate | EmitMode::Changes => false,
            };
            (emit, closing)
        };
        let mut out = Vec::new();
        let mut emit_now: Vec<Entry<'_>> = Vec::new();
        let mut closed: Vec<(i64, i64)> = Vec::new();
        let mut closed_groups: Vec<(WindowKey, Box<[u8]>)> = Vec::new();
        for (&(end, start), window) in self.windows.iter_mut() {
            if (end, start) == GLOBAL || end > bound {
                break;
            }
            let mut all_closed = true;
            for (key, group) in window.groups.iter_mut() {
                let (emit, closing) = decide(group, end);
                all_closed &= closing;
                if closing && keyed {
                    closed_groups.push(((end, start), key.clone()));
                }
                if emit {
                    emit_now.push(Entry {
                        key,
                        start,
                        end,
                        group,
                    });
                }
            }
            if all_closed {
                closed.push((end, start));
            }
        }
        let mut closed_sessions: Vec<(Box<[u8]>, i64)> = Vec::new();
        if bound >= self.session_min_end {
            let mut min_end = END_OF_TIME;
            for (key, sessions) in self.sessions.iter_mut() {
                for session in sessions.iter_mut() {
                    min_end = min_end.min(session.end);
                    if session.end > bound {
                        continue;
                    }
                    let (emit, closing) = decide(&mut session.group, session.end);
                    if closing {
                        closed_sessions.push((key.clone(), session.start));
                    }
                    if emit {
                        emit_now.push(Entry {
                            key,
                            start: session.start,
                            end: session.end,
                            group: &mut session.group,
                        });
                    }
                }
            }
            self.session_min_end = min_end;
        }
        let batch = if updating {
            let retractions = std::mem::take(&mut self.retractions);
            emit_updates(spec, converter, output, emit_now, retractions)?
        } else {
            emit_append(spec, converter, emit_now)?
        };
        out.extend(batch);
        if let Some(changes) = &mut self.changes {
            changes.removed_windows.extend(closed.iter().copied());
            changes.removed_groups.extend(closed_groups.iter().cloned());
            changes
                .session_keys
                .extend(closed_sessions.iter().map(|(key, _)| key.clone()));
        }
        for key in closed {
            self.windows.remove(&key);
        }
        for (window, key) in closed_groups {
            if let Some(w) = self.windows.get_mut(&window) {
                w.groups.remove(&key);
                if w.groups.is_empty() {
                    self.windows.remove(&window);
                }
            }
        }
        for (key, start) in closed_sessions {
            if let Some(sessions) = self.sessions.get_mut(&key) {
                if let Some(store) = &mut self.session_rows
                    && let Some(session) = sessions.iter().find(|s| s.start == start)
                {
                    store.free(&key, session.start, session.end);
                }
                sessions.retain(|s| s.start != start);
                if sessions.is_empty() {
                    self.sessions.remove(&key);
                }
            }
        }
        if let Some(store) = &mut self.session_rows {
            let gap = spec.window.map_or(0, |w| w.span());
            let sessions = &self.sessions;
            // A pending deletion goes once its insertion would be late: too late for its own
            // session and joining no open one.
            store.prune_pending(
                watermarks
                    .input
                    .saturating_sub(gap.saturating_add(spec.lateness)),
                |key, t| {
                    sessions.get(key).is_some_and(|open| {
                        open.iter()
                            .any(|s| s.start <= t.saturating_add(gap) && s.end >= t)
                    })
                },
            );
        }
        self.session_min_start = self
            .sessions
            .values()
            .flat_map(|s| s.iter().map(|s| s.start))
            .min();
        Ok(out)
    }

    /// True once after a batch in which a deletion made a session end at or below the
    /// watermark (it is emitted or closed now, not at the next watermark).
    pub(crate) fn take_recut_due(&mut self) -> bool {
        std::mem::take(&mut self.recut_due)
    }

    pub(crate) fn min_retained(&self, spec: &AggregateSpec) -> Option<i64> {
        let time = spec.output_time;
        let windows = match time {
            OutputTime::None => return None,
            OutputTime::WindowStart => self
                .windows
                .keys()
                .filter(|&&k| k != GLOBAL)
                .map(|&(_, start)| start)
                .min(),
            OutputTime::WindowEnd => self.windows.keys().next().map(|&(end, _)| end),
        };
        let sessions = match time {
            OutputTime::WindowStart => self.session_min_start,
            // Over a changelog input a deletion can shrink a session down to its first row
            // plus the gap, so that bounds the ends still to come.
            _ if self.session_rows.is_some() => self
                .session_min_start
                .map(|start| start.saturating_add(spec.window.map_or(0, |w| w.span())))
                .map(|end| end.min(self.session_min_end)),
            _ => (self.session_min_end != END_OF_TIME).then_some(self.session_min_end),
        };
        match (windows, sessions) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub(crate) fn size(&self) -> StateSize {
        let mut size = StateSize::default();
        let mut add = |key: &[u8], group: &Group| {
            size.rows += 1;
            size.bytes += key.len() as u64
                + group
                    .accumulators
                    .iter()
                    .map(|a| a.size() as u64)
                    .sum::<u64>();
        };
        for window in self.windows.values() {
            for (key, group) in &window.groups {
                add(key, group);
            }
        }
        for (key, sessions) in &self.sessions {
            for session in sessions {
                add(key, &session.group);
            }
        }
        if let Some(store) = &self.session_rows {
            let (rows, bytes) = store.size();
            size.rows += rows;
            size.bytes += bytes;
        }
        size
    }
}

fn new_accumulators(spec: &AggregateSpec, changelog: bool) -> Result<Vec<Box<dyn Accumulator>>> {
    (0..spec.aggregates.len())
        .map(|index| new_accumulator(spec, changelog, index))
        .collect()
}

/// True when the emit mode emits dirty groups through `emit_dirty` (the others emit at
/// window close, from the windows themselves), so the list of dirty groups is kept.
fn emits_dirty(spec: &AggregateSpec) -> bool {
    matches!(
        spec.emit,
        EmitMode::OnUpdate | EmitMode::Changes | EmitMode::OnWatermark | EmitMode::Every(_)
    )
}

/// The accumulator of aggregate `index`: a retracting one over changelog input.
fn new_accumulator(
    spec: &AggregateSpec,
    changelog: bool,
    index: usize,
) -> Result<Box<dyn Accumulator>> {
    let call = &spec.aggregates[index];
    if changelog {
        super::retractable(&call.function)
            .map_err(|reason| CoreError::Internal(format!("{}: {reason}", spec.name)))
    } else {
        call.function
            .create_accumulator()
            .map_err(|source| CoreError::Evaluation {
                operator: spec.name.clone(),
                source,
            })
    }
}

fn new_group(spec: &AggregateSpec, changelog: bool) -> Result<Group> {
    Ok(Group {
        accumulators: new_accumulators(spec, changelog)?,
        weight: 0,
        last: None,
        dirty: false,
        emitted: false,
        watermark_key: None,
        changed: false,
    })
}

/// Feeds a run of rows into session `target` and empties the run.
fn feed_run(
    spec: &AggregateSpec,
    sessions: &mut [Session],
    target: usize,
    prepared: &Prepared,
    run: &mut Vec<u32>,
) -> Result<()> {
    if run.is_empty() {
        return Ok(());
    }
    let session = sessions.get_mut(target).ok_or_else(|| {
        CoreError::Internal(format!("{}: session run lost its session", spec.name))
    })?;
    update_group(spec, &mut session.group, prepared, run, false)?;
    run.clear();
    Ok(())
}

/// Re-cuts the sessions of one key that lost rows (changelog input) from the key's live
/// rows: a session without rows left goes (its last output row is retracted), one whose rows
/// still form one session shrinks to them, and one whose rows fell apart is replaced by one
/// session per piece, each rebuilt from its rows. A session that was emitted stays so (its
/// new row is a correction); a new piece is first emitted when the watermark passes its end,
/// as any session. Returns the smallest end among the sessions it changed (`END_OF_TIME` when
/// none).
fn recut_sessions(
    spec: &AggregateSpec,
    store: &session_rows::SessionRows,
    key: &[u8],
    sessions: &mut Vec<Session>,
    retractions: &mut Vec<Vec<ScalarValue>>,
) -> Result<i64> {
    let gap = spec.window.expect("session").span();
    let mut min_end = END_OF_TIME;
    let mut i = 0;
    while i < sessions.len() {
        if !sessions[i].check {
            i += 1;
            continue;
        }
        sessions[i].check = false;
        let pieces = store.segments(key, sessions[i].start, sessions[i].end, gap);
        if let [(first, last)] = pieces[..] {
            let session = &mut sessions[i];
            session.start = first;
            session.end = last.saturating_add(gap);
            min_end = min_end.min(session.end);
            i += 1;
            continue;
        }
        let old = sessions.remove(i);
        if let Some(last) = old.group.last {
            retractions.push(last);
        }
        for (n, &(first, last)) in pieces.iter().enumerate() {
            let mut group = new_group(spec, true)?;
            group.watermark_key = old.group.watermark_key.clone();
            store.rebuild(spec, key, first, last, &mut group)?;
            let end = last.saturating_add(gap);
            min_end = min_end.min(end);
            sessions.insert(
                i + n,
                Session {
                    start: first,
                    end,
                    group,
                    check: false,
                },
            );
        }
        i += pieces.len();
    }
    Ok(min_end)
}

/// Feeds (or retracts) the given rows of `prepared` into a group.
fn update_group(
    spec: &AggregateSpec,
    group: &mut Group,
    prepared: &Prepared,
    rows: &[u32],
    retract: bool,
) -> Result<()> {
    update_group_with(
        spec,
        group,
        &prepared.args,
        &prepared.filters,
        rows,
        retract,
    )
}

/// Feeds (or retracts) the given rows of the aggregates' inputs and FILTER masks into a
/// group.
fn update_group_with(
    spec: &AggregateSpec,
    group: &mut Group,
    args: &[Vec<ArrayRef>],
    filters: &[Option<BooleanArray>],
    rows: &[u32],
    retract: bool,
) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let arrow_error = |source| CoreError::Arrow {
        operator: spec.name.clone(),
        source,
    };
    let df = |source| CoreError::Evaluation {
        operator: spec.name.clone(),
        source,
    };
    // A contiguous run of rows (always the case for one row) is a zero-copy slice.
    let contiguous = rows.windows(2).all(|w| w[1] == w[0] + 1);
    let all = UInt32Array::from(rows.to_vec());
    for ((accumulator, args), filter) in group.accumulators.iter_mut().zip(args).zip(filters) {
        if contiguous && filter.is_none() {
            let values: Vec<ArrayRef> = args
                .iter()
                .map(|a| a.slice(rows[0] as usize, rows.len()))
                .collect();
            if retract {
                accumulator.retract_batch(&values).map_err(df)?;
            } else {
                accumulator.update_batch(&values).map_err(df)?;
            }
            continue;
        }
        let indices = match filter {
            None => all.clone(),
            Some(mask) => UInt32Array::from(
                rows.iter()
                    .copied()
                    .filter(|&r| mask.is_valid(r as usize) && mask.value(r as usize))
                    .collect::<Vec<_>>(),
            ),
        };
        if indices.is_empty() {
            continue;
        }
        let values = args
            .iter()
            .map(|a| take(a.as_ref(), &indices, None))
            .collect::<std::result::Result<Vec<ArrayRef>, _>>()
            .map_err(arrow_error)?;
        if retract {
            accumulator.retract_batch(&values).map_err(df)?;
        } else {
            accumulator.update_batch(&values).map_err(df)?;
        }
    }
    let n = rows.len() as i64;
    group.weight += if retract { -n } else { n };
    group.dirty = true;
    group.changed = true;
    Ok(())
}

/// Merges `from` into `into` through the accumulators' intermediate state.
fn merge_groups(spec: &AggregateSpec, into: &mut Group, mut from: Group) -> Result<()> {
    let df = |source| CoreError::Evaluation {
        operator: spec.name.clone(),
        source,
    };
    for (target, source) in into
        .accumulators
        .iter_mut()
        .zip(from.accumulators.iter_mut())
    {
        let state = source.state().map_err(df)?;
        let arrays = state
            .into_iter()
            .map(|s| s.to_array())
            .collect::<datafusion::error::Result<Vec<_>>>()
            .map_err(df)?;
        target.merge_batch(&arrays).map_err(df)?;
    }
    into.weight += from.weight;
    into.dirty = true;
    into.changed = true;
    Ok(())
}

/// Evaluates the entries' groups into aggregated rows, then HAVING and the SELECT list.
/// Returns the output rows and, per output row, the index of its entry.
fn evaluate(
    spec: &AggregateSpec,
    converter: Option<&RowConverter>,
    entries: &mut [Entry<'_>],
) -> Result<(RecordBatch, Vec<u32>)> {
    let df = |source| CoreError::Evaluation {
        operator: spec.name.clone(),
        source,
    };
    let arrow_error = |source| CoreError::Arrow {
        operator: spec.name.clone(),
        source,
    };
    let keys = match converter {
        Some(converter) => {
            let parser = converter.parser();
            converter
                .convert_rows(entries.iter().map(|e| parser.parse(e.key)))
                .map_err(arrow_error)?
        }
        None => Vec::new(),
    };
    let mut values = Vec::with_capacity(spec.aggregates.len());
    for i in 0..spec.aggregates.len() {
        let scalars = entries
            .iter_mut()
            .map(|e| e.group.accumulators[i].evaluate())
            .collect::<datafusion::error::Result<Vec<_>>>()
            .map_err(df)?;
        values.push(ScalarValue::iter_to_array(scalars).map_err(df)?);
    }
    let starts: Vec<i64> = entries.iter().map(|e| e.start).collect();
    let ends: Vec<i64> = entries.iter().map(|e| e.end).collect();
    let window = spec.window.map(|_| (starts.as_slice(), ends.as_slice()));
    let batch = AggregateOperator::aggregate_batch(spec, keys, window, values, entries.len())?;
    AggregateOperator::post(spec, batch)
}

/// Append-only emission of the entries' current values (groups with no rows left are
/// skipped).
fn emit_append(
    spec: &AggregateSpec,
    converter: Option<&RowConverter>,
    entries: Vec<Entry<'_>>,
) -> Result<Option<RecordBatch>> {
    let mut entries: Vec<Entry<'_>> = entries.into_iter().filter(|e| e.group.weight > 0).collect();
    if entries.is_empty() {
        return Ok(None);
    }
    let (batch, _) = evaluate(spec, converter, &mut entries)?;
    for entry in entries {
        entry.group.dirty = false;
        entry.group.changed = true;
    }
    Ok(Some(batch))
}

/// Changelog emission: each entry's new output row against the one it last emitted
/// (`I`, `U-`/`U+`, `D`; nothing when unchanged), plus explicit retractions.
fn emit_updates(
    spec: &AggregateSpec,
    converter: Option<&RowConverter>,
    output: &SchemaRef,
    mut entries: Vec<Entry<'_>>,
    retractions: Vec<Vec<ScalarValue>>,
) -> Result<Option<RecordBatch>> {
    if entries.is_empty() && retractions.is_empty() {
        return Ok(None);
    }
    let df = |source| CoreError::Evaluation {
        operator: spec.name.clone(),
        source,
    };
    let mut rows: Vec<Vec<ScalarValue>> = Vec::new();
    let mut ops: Vec<&'static str> = Vec::new();
    for old in retractions {
        rows.push(old);
        ops.push("D");
    }
    // Without GROUP BY keys or a window the query has one row however many input rows are
    // left, as in batch SQL: when every row is retracted it shows the aggregates of no rows
    // (`COUNT(*)` 0) instead of vanishing.
    let single_row = spec.window.is_none() && spec.keys.is_empty();
    if !entries.is_empty() {
        let (batch, origin) = evaluate(spec, converter, &mut entries)?;
        let mut new_rows: Vec<Option<Vec<ScalarValue>>> = vec![None; entries.len()];
        for (out_row, &entry) in origin.iter().enumerate() {
            let weight = entries[entry as usize].group.weight;
            if weight < 0 || (weight == 0 && !single_row) {
                continue;
            }
            let row = batch
                .columns()
                .iter()
                .map(|c| ScalarValue::try_from_array(c, out_row))
                .collect::<datafusion::error::Result<Vec<_>>>()
                .map_err(df)?;
            new_rows[entry as usize] = Some(row);
        }
        for (entry, new) in entries.iter_mut().zip(new_rows) {
            entry.group.dirty = false;
            entry.group.changed = true;
            match (entry.group.last.take(), new) {
                (None, None) => {}
                (None, Some(new)) => {
                    rows.push(new.clone());
                    ops.push("I");
                    entry.group.last = Some(new);
                }
                (Some(old), None) => {
                    rows.push(old);
                    ops.push("D");
                }
                (Some(old), Some(new)) => {
                    if old != new {
                        rows.push(old);
                        ops.push("U-");
                        rows.push(new.clone());
                        ops.push("U+");
                    }
                    entry.group.last = Some(new);
                }
            }
        }
    }
    if rows.is_empty() {
        return Ok(None);
    }
    let columns = (0..spec.post_schema.fields().len())
        .map(|c| ScalarValue::iter_to_array(rows.iter().map(|r| r[c].clone())))
        .collect::<datafusion::error::Result<Vec<_>>>()
        .map_err(df)?;
    let values = RecordBatch::try_new_with_options(
        super::relaxed(&spec.post_schema),
        columns,
        &arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(rows.len())),
    )
    .map_err(|source| CoreError::Arrow {
        operator: spec.name.clone(),
        source,
    })?;
    with_ops(output, &values, ops).map(Some)
}

/// A group as a snapshot writes it: session or window group, bounds, key.
type GroupRef<'a> = (bool, i64, i64, &'a [u8], &'a mut Group);

impl GeneralState {
    /// Writes the input kind, session bounds and pending retractions.
    fn write_header(
        &self,
        spec: &AggregateSpec,
        w: &mut crate::snapshot::SnapshotWriter,
    ) -> Result<()> {
        use super::checkpoint::{columns_batch, scalars_to_array};
        w.bool(self.changelog);
        w.i64(self.session_min_end);
        w.bool(self.session_min_start.is_some());
        w.i64(self.session_min_start.unwrap_or(0));
        // Retractions: rows in the output (post) schema.
        w.u64(self.retractions.len() as u64);
        if !self.retractions.is_empty() {
            let columns = spec
                .post_schema
                .fields()
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    let values = self.retractions.iter().map(|r| r[i].clone()).collect();
                    scalars_to_array(values, f.data_type())
                })
                .collect::<Result<Vec<_>>>()?;
            w.batch(&columns_batch(columns, self.retractions.len())?)?;
        }
        Ok(())
    }

    /// Writes groups with their flags, last output row and accumulator states, and marks
    /// them unchanged.
    fn write_groups(
        spec: &AggregateSpec,
        changelog: bool,
        w: &mut crate::snapshot::SnapshotWriter,
        groups: Vec<GroupRef<'_>>,
    ) -> Result<()> {
        use super::checkpoint::{GroupColumns, df};
        let mut rows = GroupColumns::default();
        for (session, start, end, key, group) in groups {
            rows.session.push(session);
            rows.start.push(start);
            rows.end.push(end);
            rows.key.push(key.to_vec());
            rows.weight.push(group.weight);
            rows.dirty.push(group.dirty);
            rows.emitted.push(group.emitted);
            rows.watermark_key
                .push(group.watermark_key.as_ref().map(|k| k.to_vec()));
            rows.last.push(group.last.clone());
            // `state()` consumes an accumulator's state: the values go into the snapshot
            // and into a fresh accumulator that replaces it.
            let mut state = Vec::new();
            for (index, acc) in group.accumulators.iter_mut().enumerate() {
                let values = acc.state().map_err(df(spec))?;
                let arrays = values
                    .iter()
                    .map(|v| v.to_array())
                    .collect::<datafusion::error::Result<Vec<_>>>()
                    .map_err(df(spec))?;
                let mut fresh = new_accumulator(spec, changelog, index)?;
                fresh.merge_batch(&arrays).map_err(df(spec))?;
                *acc = fresh;
                state.extend(values);
            }
            rows.states.push(state);
            group.changed = false;
        }
        let count = rows.session.len();
        w.u64(count as u64);
        if count > 0 {
            w.batch(&rows.finish(spec)?)?;
        }
        Ok(())
    }

    /// Writes session bounds, pending retractions and every group (window groups and
    /// sessions) with its flags, last output row and accumulator states.
    pub(crate) fn snapshot(
        &mut self,
        spec: &AggregateSpec,
        w: &mut crate::snapshot::SnapshotWriter,
    ) -> Result<()> {
        self.write_header(spec, w)?;
        let mut groups: Vec<GroupRef<'_>> = Vec::new();
        for (&(end, start), window) in self.windows.iter_mut() {
            for (key, group) in window.groups.iter_mut() {
                groups.push((false, start, end, key, group));
            }
        }
        for (key, sessions) in self.sessions.iter_mut() {
            for session in sessions {
                groups.push((true, session.start, session.end, key, &mut session.group));
            }
        }
        Self::write_groups(spec, self.changelog, w, groups)?;
        if let Some(store) = &self.session_rows {
            store.write(w, None);
        }
        self.changes = Some(Changes::default());
        Ok(())
    }

    /// Writes what changed since the previous snapshot: the header, freed windows and
    /// groups, the keys whose sessions are replaced, then the changed window groups and
    /// every session of those keys. Returns false, writing nothing, when no snapshot was
    /// taken since the state was built.
    pub(crate) fn snapshot_delta(
        &mut self,
        spec: &AggregateSpec,
        w: &mut crate::snapshot::SnapshotWriter,
    ) -> Result<bool> {
        let Some(mut changes) = self.changes.take() else {
            return Ok(false);
        };
        self.write_header(spec, w)?;
        w.u64(changes.removed_windows.len() as u64);
        for (end, start) in &changes.removed_windows {
            w.i64(*end);
            w.i64(*start);
        }
        w.u64(changes.removed_groups.len() as u64);
        for ((end, start), key) in &changes.removed_groups {
            w.i64(*end);
            w.i64(*start);
            w.bytes(key);
        }
        for (key, sessions) in &self.sessions {
            if sessions.iter().any(|s| s.group.changed) && !changes.session_keys.contains(key) {
                changes.session_keys.insert(key.clone());
            }
        }
        w.u64(changes.session_keys.len() as u64);
        for key in &changes.session_keys {
            w.bytes(key);
        }
        let mut groups: Vec<GroupRef<'_>> = Vec::new();
        for (&(end, start), window) in self.windows.iter_mut() {
            for (key, group) in window.groups.iter_mut() {
                if group.changed {
                    groups.push((false, start, end, key, group));
                }
            }
        }
        for (key, sessions) in self.sessions.iter_mut() {
            if changes.session_keys.contains(key) {
                for session in sessions {
                    groups.push((true, session.start, session.end, key, &mut session.group));
                }
            }
        }
        Self::write_groups(spec, self.changelog, w, groups)?;
        if let Some(store) = &self.session_rows {
            store.write(w, Some(&changes.session_keys));
        }
        self.changes = Some(Changes::default());
        Ok(true)
    }

    /// Reads a header written by [`GeneralState::write_header`] into the state.
    fn read_header(
        &mut self,
        spec: &AggregateSpec,
        r: &mut crate::snapshot::SnapshotReader<'_>,
    ) -> Result<()> {
        use super::checkpoint::{df, rows_of};
        let changelog = r.bool()?;
        if changelog != self.changelog {
            return Err(CoreError::InvalidData(format!(
                "snapshot of aggregation '{}': its input was {} when checkpointed",
                spec.name,
                if changelog {
                    "a changelog"
                } else {
                    "append-only"
                }
            )));
        }
        let session_min_end = r.i64()?;
        let has_min_start = r.bool()?;
        let min_start = r.i64()?;
        let retraction_count = r.count()?;
        let mut retractions = Vec::with_capacity(retraction_count);
        if retraction_count > 0 {
            let batch = r.batch()?;
            rows_of(spec, &batch, retraction_count)?;
            for row in 0..retraction_count {
                retractions.push(
                    batch
                        .columns()
                        .iter()
                        .map(|c| ScalarValue::try_from_array(c, row).map_err(df(spec)))
                        .collect::<Result<Vec<_>>>()?,
                );
            }
        }
        self.session_min_end = session_min_end;
        self.session_min_start = has_min_start.then_some(min_start);
        self.retractions = retractions;
        Ok(())
    }

    /// Reads groups written by [`GeneralState::write_groups`] into the state (replacing
    /// window groups of the same window and key; sessions are appended to their key's).
    fn read_groups(
        &mut self,
        spec: &AggregateSpec,
        r: &mut crate::snapshot::SnapshotReader<'_>,
    ) -> Result<()> {
        use super::checkpoint::{df, group_row, group_state_start, rows_of, split_state_columns};
        let count = r.count()?;
        if count == 0 {
            return Ok(());
        }
        let batch = r.batch()?;
        rows_of(spec, &batch, count)?;
        // What `write_groups` wrote: the states of this state's own accumulators.
        let widths = (0..spec.aggregates.len())
            .map(|index| {
                new_accumulator(spec, self.changelog, index)?
                    .state()
                    .map(|s| s.len())
                    .map_err(df(spec))
            })
            .collect::<Result<Vec<usize>>>()?;
        let states = split_state_columns(spec, &batch, group_state_start(spec), Some(&widths))?;
        for row in 0..count {
            let meta = group_row(spec, &batch, row)?;
            let mut group = new_group(spec, self.changelog)?;
            for (acc, state) in group.accumulators.iter_mut().zip(&states) {
                let slice: Vec<ArrayRef> = state.iter().map(|c| c.slice(row, 1)).collect();
                acc.merge_batch(&slice).map_err(df(spec))?;
            }
            group.weight = meta.weight;
            group.dirty = meta.dirty;
            group.emitted = meta.emitted;
            group.watermark_key = meta.watermark_key;
            group.last = meta.last;
            if meta.session {
                self.sessions.entry(meta.key).or_default().push(Session {
                    start: meta.start,
                    end: meta.end,
                    group,
                    check: false,
                });
            } else {
                if group.dirty && emits_dirty(spec) {
                    self.dirty.push(((meta.end, meta.start), meta.key.clone()));
                }
                self.windows
                    .entry((meta.end, meta.start))
                    .or_default()
                    .groups
                    .insert(meta.key, group);
            }
        }
        Ok(())
    }

    /// Rebuilds the state written by [`GeneralState::snapshot`] (replacing any), then
    /// applies the incremental snapshots `deltas` ([`GeneralState::snapshot_delta`]).
    pub(crate) fn restore(
        &mut self,
        spec: &AggregateSpec,
        r: &mut crate::snapshot::SnapshotReader<'_>,
        deltas: &mut [crate::snapshot::SnapshotReader<'_>],
    ) -> Result<()> {
        self.windows = BTreeMap::new();
        self.sessions = HashMap::default();
        self.changes = None;
        self.dirty.clear();
        self.read_header(spec, r)?;
        self.read_groups(spec, r)?;
        if let Some(store) = &mut self.session_rows {
            store.clear();
            store.read(spec, r)?;
        }
        for d in deltas.iter_mut() {
            self.read_header(spec, d)?;
            for _ in 0..d.count()? {
                let end = d.i64()?;
                let start = d.i64()?;
                self.windows.remove(&(end, start));
            }
            for _ in 0..d.count()? {
                let end = d.i64()?;
                let start = d.i64()?;
                let key = d.bytes()?;
                if let Some(window) = self.windows.get_mut(&(end, start)) {
                    window.groups.remove(key);
                }
            }
            for _ in 0..d.count()? {
                let key = d.bytes()?;
                self.sessions.remove(key);
                if let Some(store) = &mut self.session_rows {
                    store.remove_key(key);
                }
            }
            self.read_groups(spec, d)?;
            if let Some(store) = &mut self.session_rows {
                store.read(spec, d)?;
            }
            self.windows
                .retain(|&k, w| k == GLOBAL || !w.groups.is_empty());
        }
        Ok(())
    }
}
