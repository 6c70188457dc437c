//! Keyed watermarks (SPEC 3, `watermark.key`): one watermark per key value,
//! `max event time of the key - delay`.
//!
//! A keyed source still emits one watermark for consumers that do not group by the key: the
//! minimum over its *active* keys (keys that had data within the idle timeout), never
//! decreasing. Consumers that group by the key (windowed aggregations) keep their own
//! [`KeyClocks`] over the rows they receive and close each key's windows by the higher of
//! that key's watermark and the input watermark ([`KeyClocks::effective`]): a fast device
//! closes its windows early without making a slow device's rows late, and an idle device's
//! windows still close once the source watermark passes them (as do manual watermarks and
//! the end of input).
//!
//! The key table is bounded (`watermark.max_keys`); when it is full a new key evicts the
//! least recently active key or the key with the lowest watermark, or is not tracked at all
//! (`reject_new`: its rows still flow, judged by the source watermark). An evicted key
//! forgets its watermark: its windows fall back to the input watermark (they close later,
//! never earlier), and its later rows start a new clock — a row for a window that was
//! already emitted under the forgotten clock then yields a second result row for that
//! window. Size `max_keys` above the number of keys active at once to avoid this.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use arrow::array::ArrayRef;
use arrow::datatypes::DataType;
use arrow::row::{RowConverter, Rows, SortField};

use crate::message::NO_WATERMARK;

/// Which key leaves the table when it is full and a new key arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyEviction {
    /// The key whose last row arrived longest ago.
    LeastRecentlyActive,
    /// The key with the lowest watermark.
    LowestWatermark,
    /// No eviction: the new key is not tracked (its rows use the source watermark).
    RejectNew,
}

impl KeyEviction {
    /// Parses the `watermark.eviction` option value.
    pub fn parse(value: &str) -> Option<KeyEviction> {
        match value.to_ascii_lowercase().as_str() {
            "least_recently_active" | "lra" => Some(KeyEviction::LeastRecentlyActive),
            "lowest_watermark" => Some(KeyEviction::LowestWatermark),
            "reject_new" => Some(KeyEviction::RejectNew),
            _ => None,
        }
    }

    /// The option spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyEviction::LeastRecentlyActive => "least_recently_active",
            KeyEviction::LowestWatermark => "lowest_watermark",
            KeyEviction::RejectNew => "reject_new",
        }
    }
}

/// Settings of a keyed watermark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyedWatermark {
    /// The key column (in the source's schema).
    pub column: String,
    /// Out-of-orderness bound in milliseconds.
    pub delay_ms: i64,
    /// Most keys tracked at once.
    pub max_keys: usize,
    /// What happens when the table is full.
    pub eviction: KeyEviction,
    /// A key without rows for this long is inactive (excluded from the source minimum; its
    /// windows close by the source watermark).
    pub idle_timeout: Duration,
}

/// Default `watermark.max_keys`.
pub const DEFAULT_MAX_KEYS: usize = 1_000_000;

#[derive(Debug, Clone)]
struct KeyClock {
    max_event: i64,
    last_active: Instant,
    /// Logical activity sequence (for least-recently-active eviction without clock reads).
    sequence: u64,
    active: bool,
}

/// Per-key watermarks of one keyed source or consumer (see the module docs).
pub struct KeyClocks {
    settings: KeyedWatermark,
    converter: RowConverter,
    clocks: HashMap<Box<[u8]>, KeyClock>,
    sequence: u64,
    /// Cached minimum watermark over active keys (`None`: no active key).
    min_active: Option<i64>,
    min_stale: bool,
    /// Highest event time ever observed (an upper bound of every key's clock).
    max_event: i64,
    evicted: u64,
    rejected: u64,
}

impl std::fmt::Debug for KeyClocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyClocks")
            .field("settings", &self.settings)
            .field("keys", &self.clocks.len())
            .finish()
    }
}

/// What one batch did to the key table.
#[derive(Debug, Default)]
pub struct Observed {
    /// Some key's watermark advanced (or a key appeared).
    pub advanced: bool,
    /// Keys evicted to make room.
    pub evicted: u64,
    /// New keys not tracked because the table was full (`reject_new`).
    pub rejected: u64,
}

impl KeyClocks {
    /// An empty table for a key column of `key_type`.
    pub fn new(settings: KeyedWatermark, key_type: &DataType) -> Result<KeyClocks, String> {
        let converter = RowConverter::new(vec![SortField::new(key_type.clone())])
            .map_err(|e| format!("key column type {key_type} cannot key a watermark: {e}"))?;
        Ok(KeyClocks {
            settings,
            converter,
            clocks: HashMap::new(),
            sequence: 0,
            min_active: None,
            min_stale: false,
            max_event: NO_WATERMARK,
            evicted: 0,
            rejected: 0,
        })
    }

    /// The settings.
    pub fn settings(&self) -> &KeyedWatermark {
        &self.settings
    }

    /// Writes every key's clock (event-time high mark, activity order, active flag) and the
    /// table's counters. Wall-clock activity times are not kept: a restored key counts as
    /// active from the restore on.
    pub fn snapshot(&self, w: &mut crate::snapshot::SnapshotWriter) {
        w.u64(self.sequence);
        w.i64(self.max_event);
        w.u64(self.evicted);
        w.u64(self.rejected);
        w.u64(self.clocks.len() as u64);
        for (key, clock) in &self.clocks {
            w.bytes(key);
            w.i64(clock.max_event);
            w.u64(clock.sequence);
            w.bool(clock.active);
        }
    }

    /// Replaces the table with one written by [`KeyClocks::snapshot`].
    pub fn restore(
        &mut self,
        r: &mut crate::snapshot::SnapshotReader<'_>,
        now: Instant,
    ) -> crate::error::Result<()> {
        self.sequence = r.u64()?;
        self.max_event = r.i64()?;
        self.evicted = r.u64()?;
        self.rejected = r.u64()?;
        let count = r.count()?;
        let mut clocks = HashMap::with_capacity(count);
        for _ in 0..count {
            let key: Box<[u8]> = r.bytes()?.into();
            let clock = KeyClock {
                max_event: r.i64()?,
                last_active: now,
                sequence: r.u64()?,
                active: r.bool()?,
            };
            clocks.insert(key, clock);
        }
        self.clocks = clocks;
        self.min_stale = true;
        Ok(())
    }

    /// Tracks `keys` from now on as active keys without rows yet: the minimum over active
    /// keys stays unset until each of them has delivered rows or gone idle (for inputs
    /// whose partitions are all known up front). Keys already tracked are left alone.
    pub fn expect(&mut self, keys: &Rows, now: Instant) {
        for key in keys.iter() {
            if self.clocks.contains_key(key.data()) || self.clocks.len() >= self.settings.max_keys {
                continue;
            }
            self.sequence += 1;
            self.clocks.insert(
                key.data().into(),
                KeyClock {
                    max_event: NO_WATERMARK,
                    last_active: now,
                    sequence: self.sequence,
                    active: true,
                },
            );
        }
        self.min_stale = true;
    }

    /// Encodes a key column into comparable row bytes (one row per input row).
    pub fn encode(&self, column: &ArrayRef) -> Result<Rows, String> {
        self.converter
            .convert_columns(std::slice::from_ref(column))
            .map_err(|e| format!("cannot encode watermark key: {e}"))
    }

    /// Number of keys tracked.
    pub fn len(&self) -> usize {
        self.clocks.len()
    }

    /// True when no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.clocks.is_empty()
    }

    /// Keys evicted so far.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// New keys not tracked so far (`reject_new`).
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    /// The watermark of `key`, if it is tracked (it may be [`NO_WATERMARK`]-like low).
    pub fn watermark(&self, key: &[u8]) -> Option<i64> {
        self.clocks
            .get(key)
            .map(|c| c.max_event.saturating_sub(self.settings.delay_ms))
    }

    /// The watermark that closes `key`'s windows: its own watermark, or `input` (the input's
    /// overall watermark: the minimum over active keys, a manual watermark, end of input)
    /// when that is higher — an idle or untracked key never holds its windows open.
    pub fn effective(&self, key: &[u8], input: i64) -> i64 {
        match self.clocks.get(key) {
            Some(c) => c
                .max_event
                .saturating_sub(self.settings.delay_ms)
                .max(input),
            None => input,
        }
    }

    /// An upper bound of every key's watermark (bounds which windows can close).
    pub fn max_watermark(&self) -> i64 {
        if self.max_event == NO_WATERMARK {
            return NO_WATERMARK;
        }
        self.max_event.saturating_sub(self.settings.delay_ms)
    }

    /// The minimum watermark over active keys (`None` when no key is active).
    pub fn min_active(&mut self) -> Option<i64> {
        if self.min_stale {
            let delay = self.settings.delay_ms;
            self.min_active = self
                .clocks
                .values()
                .filter(|c| c.active)
                .map(|c| c.max_event.saturating_sub(delay))
                .min();
            self.min_stale = false;
        }
        self.min_active
    }

    /// The highest watermark over every tracked key (used when all keys are inactive).
    pub fn max_any(&self) -> Option<i64> {
        let delay = self.settings.delay_ms;
        self.clocks
            .values()
            .map(|c| c.max_event.saturating_sub(delay))
            .max()
    }

    /// Observes one batch: the encoded keys and event times (epoch ms) of its rows.
    pub fn observe(&mut self, keys: &Rows, times: &[i64], now: Instant) -> Observed {
        let mut observed = Observed::default();
        let evicted_before = self.evicted;
        let delay = self.settings.delay_ms;
        for (row, &time) in times.iter().enumerate() {
            let key = keys.row(row);
            let key = key.data();
            self.sequence += 1;
            self.max_event = self.max_event.max(time);
            if let Some(clock) = self.clocks.get_mut(key) {
                let old = clock.max_event.saturating_sub(delay);
                if !clock.active {
                    clock.active = true;
                    self.min_stale = true;
                    observed.advanced = true;
                }
                clock.last_active = now;
                clock.sequence = self.sequence;
                if time > clock.max_event {
                    clock.max_event = time;
                    observed.advanced = true;
                    if self.min_active == Some(old) {
                        self.min_stale = true;
                    }
                }
                continue;
            }
            if self.clocks.len() >= self.settings.max_keys && !self.make_room() {
                observed.rejected += 1;
                self.rejected += 1;
                continue;
            }
            let w = time.saturating_sub(delay);
            if !self.min_stale {
                self.min_active = Some(self.min_active.map_or(w, |m| m.min(w)));
            }
            self.clocks.insert(
                key.into(),
                KeyClock {
                    max_event: time,
                    last_active: now,
                    sequence: self.sequence,
                    active: true,
                },
            );
            observed.advanced = true;
        }
        observed.evicted = self.evicted - evicted_before;
        observed
    }

    /// Evicts one key per the policy; false when nothing may be evicted (`reject_new`).
    fn make_room(&mut self) -> bool {
        let delay = self.settings.delay_ms;
        let victim = match self.settings.eviction {
            KeyEviction::RejectNew => return false,
            KeyEviction::LeastRecentlyActive => self
                .clocks
                .iter()
                .min_by_key(|(_, c)| c.sequence)
                .map(|(k, _)| k.clone()),
            KeyEviction::LowestWatermark => self
                .clocks
                .iter()
                .min_by_key(|(_, c)| c.max_event.saturating_sub(delay))
                .map(|(k, _)| k.clone()),
        };
        match victim {
            Some(key) => {
                self.clocks.remove(&key);
                self.evicted += 1;
                self.min_stale = true;
                true
            }
            None => false,
        }
    }

    /// Marks keys without rows for the idle timeout inactive; returns true when any key
    /// changed state.
    pub fn expire_idle(&mut self, now: Instant) -> bool {
        let timeout = self.settings.idle_timeout;
        let mut changed = false;
        for clock in self.clocks.values_mut() {
            if clock.active && now.duration_since(clock.last_active) >= timeout {
                clock.active = false;
                changed = true;
            }
        }
        if changed {
            self.min_stale = true;
        }
        changed
    }

    /// Forgets keys whose watermark is at or below `input`: for [`KeyClocks::effective`]
    /// they are the same as untracked keys. (A consumer's table shrinks this way; a source
    /// keeps its keys, whose minimum is its watermark.)
    pub fn forget_at_or_below(&mut self, input: i64) {
        let delay = self.settings.delay_ms;
        self.clocks
            .retain(|_, c| c.max_event.saturating_sub(delay) > input);
        self.min_stale = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::END_OF_TIME;
    use arrow::array::StringArray;
    use std::sync::Arc;

    fn clocks(max_keys: usize, eviction: KeyEviction) -> KeyClocks {
        KeyClocks::new(
            KeyedWatermark {
                column: "device".into(),
                delay_ms: 60_000,
                max_keys,
                eviction,
                idle_timeout: Duration::from_secs(30),
            },
            &DataType::Utf8,
        )
        .unwrap()
    }

    fn observe(c: &mut KeyClocks, keys: &[&str], times: &[i64], now: Instant) -> Observed {
        let column: ArrayRef = Arc::new(StringArray::from(keys.to_vec()));
        let rows = c.encode(&column).unwrap();
        c.observe(&rows, times, now)
    }

    fn key(c: &KeyClocks, k: &str) -> Vec<u8> {
        let column: ArrayRef = Arc::new(StringArray::from(vec![k]));
        c.encode(&column).unwrap().row(0).data().to_vec()
    }

    const MIN: i64 = 60_000;

    #[test]
    fn spec_ac_each_key_has_its_own_watermark() {
        // SPEC 3 AC: delay 1 min; A at 10:08, B at 10:01 -> B's watermark is 10:00, so a B
        // row at 10:00:30 is on time, while the unkeyed watermark (10:07) would drop it.
        let now = Instant::now();
        let mut c = clocks(10, KeyEviction::LeastRecentlyActive);
        observe(&mut c, &["A", "B"], &[608 * MIN, 601 * MIN], now);
        let a = key(&c, "A");
        let b = key(&c, "B");
        assert_eq!(c.watermark(&a), Some(607 * MIN));
        assert_eq!(c.watermark(&b), Some(600 * MIN));
        // The source watermark is the minimum over active keys; each key closes by its own.
        let source = c.min_active().unwrap();
        assert_eq!(source, 600 * MIN);
        assert_eq!(c.effective(&a, source), 607 * MIN);
        assert_eq!(c.effective(&b, source), 600 * MIN);
        // 10:00:30 belongs to the window [10:00, 10:01), still open for B.
        assert!(600 * MIN + MIN > c.effective(&b, source));
        // A manual watermark or end of input lifts every key.
        assert_eq!(c.effective(&b, 700 * MIN), 700 * MIN);
    }

    #[test]
    fn inactive_keys_leave_the_minimum_and_fall_back_to_the_source_watermark() {
        let start = Instant::now();
        let mut c = clocks(10, KeyEviction::LeastRecentlyActive);
        observe(&mut c, &["A", "B"], &[10 * MIN, 2 * MIN], start);
        assert_eq!(c.min_active(), Some(MIN));
        let later = start + Duration::from_secs(31);
        observe(&mut c, &["A"], &[11 * MIN], later - Duration::from_secs(1));
        assert!(c.expire_idle(later));
        assert_eq!(c.min_active(), Some(10 * MIN));
        let b = key(&c, "B");
        // The source watermark moved past idle B; B's windows close by it.
        assert_eq!(c.effective(&b, 10 * MIN), 10 * MIN);
        // B resumes: it counts in the minimum again.
        observe(&mut c, &["B"], &[3 * MIN], later);
        assert_eq!(c.min_active(), Some(2 * MIN));
        // A consumer forgets keys at or below its input watermark.
        c.forget_at_or_below(5 * MIN);
        assert_eq!(c.len(), 1);
        assert_eq!(c.effective(&b, 5 * MIN), 5 * MIN);
    }

    #[test]
    fn expected_keys_hold_the_minimum_until_they_report_or_go_idle() {
        let start = Instant::now();
        let mut c = clocks(10, KeyEviction::LeastRecentlyActive);
        let column: ArrayRef = Arc::new(StringArray::from(vec!["p0", "p1", "p2"]));
        c.expect(&c.encode(&column).unwrap(), start);
        observe(&mut c, &["p0"], &[10 * MIN], start);
        assert_eq!(
            c.min_active(),
            Some(NO_WATERMARK),
            "p1 and p2 have not reported"
        );
        observe(&mut c, &["p1"], &[4 * MIN], start);
        assert_eq!(c.min_active(), Some(NO_WATERMARK), "p2 has not reported");
        // p2 stays silent past the idle timeout: it leaves the minimum.
        observe(
            &mut c,
            &["p0", "p1"],
            &[11 * MIN, 5 * MIN],
            start + Duration::from_secs(29),
        );
        assert!(c.expire_idle(start + Duration::from_secs(31)));
        // The clocks' delay is one minute: p1 at 5 min holds the minimum at 4 min.
        assert_eq!(c.min_active(), Some(4 * MIN));
        // Expecting keys again adds none that are tracked.
        c.expect(&c.encode(&column).unwrap(), start);
        assert_eq!(c.len(), 3);
        assert_eq!(c.min_active(), Some(4 * MIN));
    }

    #[test]
    fn eviction_policies() {
        let now = Instant::now();
        let mut lra = clocks(2, KeyEviction::LeastRecentlyActive);
        observe(
            &mut lra,
            &["A", "B", "A", "C"],
            &[5 * MIN, 9 * MIN, 6 * MIN, 7 * MIN],
            now,
        );
        assert_eq!(lra.len(), 2);
        assert_eq!(
            lra.watermark(&key(&lra, "B")),
            None,
            "B was least recently active"
        );
        assert_eq!(lra.evicted(), 1);

        let mut lowest = clocks(2, KeyEviction::LowestWatermark);
        observe(
            &mut lowest,
            &["A", "B", "A", "C"],
            &[5 * MIN, 9 * MIN, 6 * MIN, 7 * MIN],
            now,
        );
        assert_eq!(
            lowest.watermark(&key(&lowest, "A")),
            None,
            "A had the lowest watermark"
        );
        assert!(lowest.watermark(&key(&lowest, "B")).is_some());

        let mut reject = clocks(2, KeyEviction::RejectNew);
        let observed = observe(
            &mut reject,
            &["A", "B", "C"],
            &[5 * MIN, 9 * MIN, 7 * MIN],
            now,
        );
        assert_eq!(observed.rejected, 1);
        assert_eq!(reject.watermark(&key(&reject, "C")), None);
        assert_eq!(reject.effective(&key(&reject, "C"), 4 * MIN), 4 * MIN);
    }

    #[test]
    fn end_of_time_closes_every_key() {
        let now = Instant::now();
        let mut c = clocks(10, KeyEviction::LeastRecentlyActive);
        observe(&mut c, &["A"], &[5 * MIN], now);
        assert_eq!(c.effective(&key(&c, "A"), END_OF_TIME), END_OF_TIME);
    }
}
