//! Watermark alignment groups (SPEC 3, `alignment.group`): sources of one group stay within
//! `alignment.max_drift` of the slowest member's watermark.
//!
//! Each member publishes its watermark into the shared [`AlignmentGroup`]; a member's floor
//! is the lowest watermark of the *other* members that have one and are not idle (a source
//! that has produced nothing yet, or went idle, does not hold the others back; the slowest
//! member is never held back by itself). A member whose watermark is more than `max_drift`
//! ahead of its floor:
//!
//! - `pause` (default): stops taking input until the floor catches up — its queue fills and
//!   backpressure reaches its producer (connector reader or `push`), nothing is buffered
//!   without bound;
//! - `warn`: keeps going and logs a warning (at most every few seconds);
//! - `drop`: drops, and counts, rows whose event time is beyond `floor + max_drift`.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use crate::message::NO_WATERMARK;

/// What a source ahead of its group does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AlignmentMode {
    /// Stop reading until the slowest member is within the drift.
    #[default]
    Pause,
    /// Log a warning and keep reading.
    Warn,
    /// Drop (and count) rows beyond the drift.
    Drop,
}

impl AlignmentMode {
    /// Parses the `alignment.mode` option value.
    pub fn parse(value: &str) -> Option<AlignmentMode> {
        match value.to_ascii_lowercase().as_str() {
            "pause" => Some(AlignmentMode::Pause),
            "warn" => Some(AlignmentMode::Warn),
            "drop" => Some(AlignmentMode::Drop),
            _ => None,
        }
    }

    /// The option spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AlignmentMode::Pause => "pause",
            AlignmentMode::Warn => "warn",
            AlignmentMode::Drop => "drop",
        }
    }
}

/// One source's published state within its group.
#[derive(Debug)]
pub struct AlignmentMember {
    source: String,
    watermark: AtomicI64,
    idle: AtomicBool,
}

impl AlignmentMember {
    /// The member's source name.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Publishes the member's watermark.
    pub fn set_watermark(&self, watermark: i64) {
        self.watermark.fetch_max(watermark, Ordering::Relaxed);
    }

    /// Publishes whether the member is idle.
    pub fn set_idle(&self, idle: bool) {
        self.idle.store(idle, Ordering::Relaxed);
    }
}

/// A named group of sources (see the module docs).
#[derive(Debug)]
pub struct AlignmentGroup {
    name: String,
    members: Mutex<Vec<Weak<AlignmentMember>>>,
}

impl AlignmentGroup {
    /// An empty group.
    pub fn new(name: &str) -> Arc<AlignmentGroup> {
        Arc::new(AlignmentGroup {
            name: name.to_string(),
            members: Mutex::new(Vec::new()),
        })
    }

    /// The group name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Adds a member; it leaves the group when the returned handle is dropped.
    pub fn join(&self, source: &str) -> Arc<AlignmentMember> {
        let member = Arc::new(AlignmentMember {
            source: source.to_string(),
            watermark: AtomicI64::new(NO_WATERMARK),
            idle: AtomicBool::new(false),
        });
        let mut members = self.members.lock();
        members.retain(|m| m.strong_count() > 0);
        members.push(Arc::downgrade(&member));
        member
    }

    /// Number of live members.
    pub fn len(&self) -> usize {
        self.members
            .lock()
            .iter()
            .filter(|m| m.strong_count() > 0)
            .count()
    }

    /// True when the group has no live member.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The lowest watermark of the live, non-idle members that have one, other than
    /// `except` (a member asking about the rest of its group).
    pub fn floor(&self, except: Option<&Arc<AlignmentMember>>) -> Option<i64> {
        self.members
            .lock()
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|m| except.is_none_or(|e| !Arc::ptr_eq(e, m)))
            .filter(|m| !m.idle.load(Ordering::Relaxed))
            .map(|m| m.watermark.load(Ordering::Relaxed))
            .filter(|&w| w != NO_WATERMARK)
            .min()
    }
}

/// A source's membership: its group, drift bound and mode.
#[derive(Debug, Clone)]
pub struct Alignment {
    /// The group.
    pub group: Arc<AlignmentGroup>,
    /// This source's handle in the group.
    pub member: Arc<AlignmentMember>,
    /// Allowed lead over the slowest member, in milliseconds.
    pub max_drift_ms: i64,
    /// What happens beyond the drift.
    pub mode: AlignmentMode,
}

impl Alignment {
    /// The highest event time this source may reach now: the slowest other member plus the
    /// drift (`None`: unconstrained).
    pub fn limit(&self) -> Option<i64> {
        self.group
            .floor(Some(&self.member))
            .map(|floor| floor.saturating_add(self.max_drift_ms))
    }

    /// True when the source's own watermark is beyond the group's limit.
    pub fn is_ahead(&self) -> bool {
        let own = self.member.watermark.load(Ordering::Relaxed);
        own != NO_WATERMARK && self.limit().is_some_and(|limit| own > limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    #[test]
    fn spec_ac_fast_source_is_ahead_until_the_slow_one_catches_up() {
        // SPEC 3 AC: drift 5 min, A 10:30, B 10:00 -> A paused until B >= 10:25.
        let group = AlignmentGroup::new("g");
        let a = group.join("a");
        let b = group.join("b");
        let alignment = Alignment {
            group: group.clone(),
            member: a.clone(),
            max_drift_ms: 5 * MIN,
            mode: AlignmentMode::Pause,
        };
        a.set_watermark(630 * MIN);
        assert!(!alignment.is_ahead(), "B has no watermark yet");
        b.set_watermark(600 * MIN);
        assert!(alignment.is_ahead());
        b.set_watermark(624 * MIN);
        assert!(alignment.is_ahead());
        b.set_watermark(625 * MIN);
        assert!(!alignment.is_ahead());
        // The slowest member is never held back by itself.
        let b_alignment = Alignment {
            group: group.clone(),
            member: b.clone(),
            max_drift_ms: 5 * MIN,
            mode: AlignmentMode::Drop,
        };
        assert_eq!(b_alignment.limit(), Some(635 * MIN));
    }

    #[test]
    fn idle_and_departed_members_do_not_hold_the_group_back() {
        let group = AlignmentGroup::new("g");
        let a = group.join("a");
        let b = group.join("b");
        a.set_watermark(100 * MIN);
        b.set_watermark(10 * MIN);
        assert_eq!(group.floor(None), Some(10 * MIN));
        assert_eq!(
            group.floor(Some(&b)),
            Some(100 * MIN),
            "b is not its own floor"
        );
        b.set_idle(true);
        assert_eq!(group.floor(None), Some(100 * MIN));
        b.set_idle(false);
        drop(b);
        assert_eq!(group.floor(None), Some(100 * MIN));
        assert_eq!(group.floor(Some(&a)), None, "alone, a is unconstrained");
        assert_eq!(group.len(), 1);
    }
}
