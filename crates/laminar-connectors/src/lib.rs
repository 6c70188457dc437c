//! Connectors and formats of LaminarDB: where data enters and leaves a pipeline.
//!
//! ```text
//!   DATAGEN ─┐                                          ┌─> FILES (csv | json | parquet)
//!   FILES ───┼─> SourceConnector::poll_batch ─> pipeline ─> SinkConnector::write_batch ─┼─> STDOUT
//!   KAFKA ───┘    (Arrow batches in the declared schema)     (epochs: pre_commit/commit) ├─> BLACKHOLE
//!                                                                                         └─> KAFKA
//! ```
//!
//! Read first: [`SourceConnector`] and [`SinkConnector`] (the contracts), then
//! [`create_source`] / [`create_sink`] (how `FROM <C> (..)` / `INTO <C> (..)`
//! clauses become connectors, with all options validated up front), then a
//! connector: `source/datagen.rs`, `source/files.rs`, `sink/files.rs`, and with the
//! `kafka` feature `kafka.rs` (source and sink).
//! Formats (`format/`) decode files into the declared schema — columns matched
//! by name and cast, bad rows handled by `error.policy` — and encode sink files.
//!
//! This crate depends only on Arrow, Parquet and small utility crates (and, with the
//! `kafka` feature, rdkafka); the runtime that polls sources and drives sink epochs lives
//! elsewhere.

mod connector;
mod error;
mod format;
#[cfg(feature = "kafka")]
mod kafka;
mod options;
mod registry;
mod sink;
mod source;
#[cfg(test)]
mod testing;

pub use connector::{
    SinkCapabilities, SinkConnector, SinkConnectorMetrics, SourceConnector, SourceConnectorMetrics,
    SourceEnvironment, SourcePoll,
};
pub use error::ConnectorError;
pub use format::FileFormat;
pub use options::{ConnectorOptions, did_you_mean, normalize_key, parse_duration, parse_size};
pub use registry::{
    ConfigKey, ConnectorInfo, ConnectorKind, create_sink, create_source, sink_accepts_changelog,
    sink_connectors, source_connectors, validate_sink, validate_source,
};
pub use sink::blackhole::BlackholeSink;
pub use sink::files::FilesSink;
pub use sink::stdout::{StdoutFormat, StdoutSink};
pub use source::datagen::{DEFAULT_START_MS, DatagenSource};
pub use source::files::{FilePosition, FilesSource};
