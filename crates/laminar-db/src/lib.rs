//! # LaminarDB
//!
//! An embedded streaming SQL database: declare sources, continuous queries (streams) and
//! sinks in SQL, push events or read them from connectors, and receive results on
//! subscriptions — in your own process, like SQLite.
//!
//! ```no_run
//! use laminar_db::{LaminarDB, ExecuteResult};
//! # async fn demo() -> Result<(), laminar_db::DbError> {
//! let db = LaminarDB::open()?;
//! db.execute(
//!     "CREATE SOURCE readings (sensor VARCHAR NOT NULL, temp DOUBLE, ts BIGINT NOT NULL,
//!        WATERMARK FOR ts AS ts - INTERVAL '2' SECOND);
//!      CREATE STREAM hot AS SELECT sensor, temp FROM readings WHERE temp > 80",
//! ).await?;
//! let mut hot = db.subscribe_arrow("hot")?;
//! db.execute("INSERT INTO readings VALUES ('a', 95.0, 1000), ('b', 20.0, 1500)").await?;
//! db.wait_idle(std::time::Duration::from_secs(1));
//! let batch = hot.poll().expect("one row");
//! assert_eq!(batch.num_rows(), 1);
//! db.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! Data path: push API / connectors → source node (event time, watermarks) → stream
//! operators on worker threads (`laminar-core`) → subscriptions and sink connectors. SQL is
//! parsed and planned by `laminar-sql` on DataFusion. Read [`LaminarDB`] first.

/// The README's quickstart, compiled and run as a doctest.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

mod catalog;
mod config;
mod db;
mod describe;
mod durability;
mod error;
mod execute;
mod ingest;
mod metrics;
mod point;
mod runners;
mod subscription;
mod tables;
mod views;

pub use config::{
    BackpressureStrategy, DbConfig, LaminarDbBuilder, StorageConfig, default_workers,
};
pub use db::{LaminarDB, PipelineState};
pub use durability::CheckpointStats;
pub use error::DbError;
pub use execute::{DdlInfo, ExecuteResult, QueryHandle};
pub use ingest::{SourceHandle, TypedSourceHandle};
pub use metrics::{
    PipelineMetrics, PipelineTopology, SinkMetrics, SourceMetrics, StreamMetrics, TopologyEdge,
    TopologyNode,
};
pub use subscription::{
    ArrowSubscription, CallbackHandle, ChangeEvent, EventData, PushSubscription, Subscription,
    SubscriptionBackpressure, SubscriptionConfig,
};
pub use tables::TableHandle;

/// Typed rows: the [`record::Record`] and [`record::FromRow`] traits.
pub use laminar_core::record;
pub use laminar_derive::{FromRow, Record};

/// The Arrow version LaminarDB uses.
pub use arrow;

/// Message types and the changelog encoding (`_op`).
pub use laminar_core::message::{ChangeOp, Message, OP_COLUMN};

/// Connector registry (names, options) for tooling.
pub use laminar_connectors::{ConnectorInfo, parse_duration, sink_connectors, source_connectors};
