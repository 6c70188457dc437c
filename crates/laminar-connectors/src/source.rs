//! Source connectors: where batches enter a pipeline.
//!
//! - [`datagen`]: `DATAGEN`, a deterministic Nexmark-style event generator
//!   (bids, persons, auctions) for demos, tests and benchmarks.
//! - [`files`]: `FILES`, reading CSV, JSON-lines or Parquet files from a file,
//!   a directory or a glob, once or watching for new files.
//!
//! Both implement [`crate::SourceConnector`]; the registry
//! ([`crate::create_source`]) builds them from `FROM <C> (..)` options.

pub(crate) mod datagen;
pub(crate) mod files;

use crate::registry::ConfigKey;

/// Options every source accepts and leaves to the runtime (watermarks and
/// event-time alignment, spec section 5.1), so they may appear in the
/// connector clause.
pub(crate) const RUNTIME_KEYS: &[ConfigKey] = &[
    ConfigKey {
        key: "watermark.idle_timeout",
        required: false,
        default: Some("30s"),
        description: "runtime: mark the source idle for watermarks after this long without data",
    },
    ConfigKey {
        key: "watermark.max_skew",
        required: false,
        default: None,
        description: "runtime: rows this far ahead of the source's maximum are bad records",
    },
    ConfigKey {
        key: "watermark.key",
        required: false,
        default: None,
        description: "runtime: keep one watermark per value of this column",
    },
    ConfigKey {
        key: "watermark.max_keys",
        required: false,
        default: Some("1000000"),
        description: "runtime: most keys a keyed watermark tracks",
    },
    ConfigKey {
        key: "watermark.eviction",
        required: false,
        default: Some("least_recently_active"),
        description: "runtime: key evicted when the table is full: least_recently_active, lowest_watermark or reject_new",
    },
    ConfigKey {
        key: "alignment.group",
        required: false,
        default: None,
        description: "runtime: event-time alignment group",
    },
    ConfigKey {
        key: "alignment.max_drift",
        required: false,
        default: None,
        description: "runtime: how far a source may lead the slowest source of its group",
    },
    ConfigKey {
        key: "alignment.mode",
        required: false,
        default: Some("pause"),
        description: "runtime: pause, warn or drop when a source leads by more than the drift",
    },
];
