//! Integration tests of the `laminar_db` facade: one binary (link once).
//!
//! - `slt`: golden SQL files under `tests/slt/<area>/*.slt` with streaming directives.
//! - `api`: the embedded API and the acceptance checks of the spec.
//! - `differential`: streaming output equals DataFusion batch execution.
//! - `robustness`: hostile SQL and batches never panic.
//! - `tables`: reference tables through the Rust API and loaded from files.
//! - `table_changelogs`: tables read as changelogs, against DataFusion; their recovery.
//! - `durability`: checkpoints, recovery from each of them, changed definitions, corruption.
//! - `views`: materialized views: snapshots, subscriptions, recovery, the differential test.

mod api;
mod differential;
mod differential_analytic;
mod differential_changes;
mod differential_joins;
mod differential_sessions;
mod differential_windows;
mod durability;
#[cfg(feature = "kafka")]
mod kafka;
mod robustness;
mod slt;
mod table_changelogs;
mod tables;
mod util;
mod views;
