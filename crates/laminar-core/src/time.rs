//! Event time and watermarks (SPEC 3).
//!
//! - [`EventTimeColumn`] reads the event time of a batch (BIGINT epoch ms or TIMESTAMP of any
//!   unit), vectorized, as epoch milliseconds.
//! - [`WatermarkGenerator`] turns observed event times and manual `watermark(ts)` calls into a
//!   monotonic source watermark with bounded out-of-orderness.
//! - [`WatermarkMerger`] combines the watermarks of several inputs: the minimum over inputs that
//!   are not idle.
//! - [`KeyClocks`] keeps one watermark per key value (`watermark.key`).
//! - [`AlignmentGroup`] keeps sources of one `alignment.group` within a drift of each other.

mod alignment;
mod event_time;
mod keyed;
mod merger;
mod watermark;

pub use alignment::{Alignment, AlignmentGroup, AlignmentMember, AlignmentMode};
pub use event_time::{EventTimeColumn, EventTimeKind};
pub use keyed::{DEFAULT_MAX_KEYS, KeyClocks, KeyEviction, KeyedWatermark, Observed};
pub use merger::WatermarkMerger;
pub use watermark::WatermarkGenerator;
