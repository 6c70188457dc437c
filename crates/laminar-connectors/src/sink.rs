//! Sink connectors: where a pipeline's output leaves it.
//!
//! - [`files`]: `FILES`, CSV, JSON-lines or Parquet files in a directory, with
//!   rollover, epoch commits and optional Hive-style partitioning.
//! - [`stdout`]: `STDOUT`, an aligned table or JSON lines on standard output.
//! - [`blackhole`]: `BLACKHOLE`, counts and discards (for benchmarks).
//!
//! All implement [`crate::SinkConnector`]; the registry ([`crate::create_sink`])
//! builds them from `INTO <C> (..)` options.

pub(crate) mod blackhole;
pub(crate) mod files;
pub(crate) mod stdout;
