//! The catalog: every source, stream, sink and continuous query, with its runtime node and
//! the dependency edges between them. Guarded by one lock in [`crate::LaminarDB`]; DDL
//! validates everything before it changes anything, so a failed statement leaves the catalog
//! unchanged.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use arrow::datatypes::SchemaRef;
use laminar_core::metrics::NodeMetrics;
use laminar_core::runtime::{Node, SourceInput};
use laminar_core::time::EventTimeColumn;
use laminar_sql::parser::{ConnectorSpec, WatermarkSpec};
use laminar_sql::plan::{RelationInfo, SchemaCatalog, StreamPlan};

use crate::config::BackpressureStrategy;
use crate::runners::{SinkRunner, SourceRunner};

/// A declared source.
pub(crate) struct SourceEntry {
    pub(crate) name: String,
    pub(crate) sql: String,
    pub(crate) schema: SchemaRef,
    pub(crate) event_time: Option<EventTimeColumn>,
    pub(crate) watermark: Option<WatermarkSpec>,
    /// Keyed watermark (`watermark.key`), if declared.
    pub(crate) keyed_watermark: Option<laminar_core::time::KeyedWatermark>,
    pub(crate) connector: Option<ConnectorSpec>,
    pub(crate) format: Option<ConnectorSpec>,
    pub(crate) backpressure: BackpressureStrategy,
    pub(crate) node: Arc<Node>,
    pub(crate) input: SourceInput,
    pub(crate) metrics: Arc<NodeMetrics>,
    /// The connector reader, once started (or created and waiting for `start()`).
    pub(crate) runner: Option<SourceRunner>,
    /// The write-ahead log pushes go through (durable databases).
    pub(crate) log: Option<Arc<crate::durability::Durability>>,
}

impl SourceEntry {
    /// What a push into this source needs.
    pub(crate) fn ingest_target(&self) -> crate::ingest::IngestTarget {
        crate::ingest::IngestTarget {
            name: self.name.clone(),
            schema: self.schema.clone(),
            event_time: self.event_time.clone(),
            input: self.input.clone(),
            backpressure: self.backpressure,
            metrics: self.metrics.clone(),
            log: self.log.clone(),
        }
    }
}

/// A continuous query: a named stream or an anonymous `SELECT`.
pub(crate) struct StreamEntry {
    pub(crate) name: String,
    pub(crate) sql: String,
    pub(crate) plan: StreamPlan,
    pub(crate) node: Arc<Node>,
    pub(crate) metrics: Arc<NodeMetrics>,
    /// Anonymous query started by `execute("SELECT ...")`.
    pub(crate) query_id: Option<u64>,
    pub(crate) active: Arc<AtomicBool>,
    /// For a `LATE DATA TO` stream: the aggregation feeding it.
    pub(crate) side_output_of: Option<String>,
    /// Parallel instances of the stream's operator (empty: `node` runs it alone); `node`
    /// then merges their outputs.
    pub(crate) instances: Vec<(Arc<Node>, Arc<NodeMetrics>)>,
    /// The hash exchange(s) in front of the instances (each runs its input chain(s) once; a
    /// join has one per side).
    pub(crate) exchanges: Vec<(Arc<Node>, Arc<NodeMetrics>)>,
    /// The ingestion queue of a `LATE DATA TO` side output (checkpoint barriers enter it).
    pub(crate) late_input: Option<laminar_core::runtime::SourceInput>,
    /// For a materialized view: the node keeping its contents, which readers read.
    pub(crate) view: Option<ViewEntry>,
}

/// The part of a materialized view that keeps its result.
pub(crate) struct ViewEntry {
    /// The node applying the query's changes to `store` (named `<view>[view]`); it passes
    /// them on, so every reader of the view is connected to it.
    pub(crate) node: Arc<Node>,
    pub(crate) metrics: Arc<NodeMetrics>,
    pub(crate) store: Arc<laminar_core::operator::ViewStore>,
}

impl StreamEntry {
    /// True when the stream reads `name` (as an input, or a table its joins look up).
    pub(crate) fn reads(&self, name: &str) -> bool {
        self.plan.relations().iter().any(|i| i == name)
            || self.plan.lookup_tables().iter().any(|t| t == name)
    }

    /// True when a node running the stream's query failed: its own, a parallel instance
    /// or an exchange (an instance that fails ends its input of the merge node, whose other
    /// inputs go on, so the stream would otherwise look alive without that instance's keys).
    pub(crate) fn has_failed(&self) -> bool {
        self.node.has_failed()
            || self
                .instances
                .iter()
                .chain(&self.exchanges)
                .any(|(n, _)| n.has_failed())
    }

    /// State held by the stream (summed over parallel instances).
    pub(crate) fn state_size(&self) -> laminar_core::operator::StateSize {
        let mut size = self.node.state_size();
        for node in self
            .instances
            .iter()
            .map(|(n, _)| n)
            .chain(self.view.as_ref().map(|v| &v.node))
        {
            let s = node.state_size();
            size.rows += s.rows;
            size.bytes += s.bytes;
        }
        size
    }

    /// Rows that entered the stream (at the exchange, when there are parallel instances).
    pub(crate) fn rows_in(&self) -> u64 {
        use std::sync::atomic::Ordering;
        match &self.exchanges[..] {
            [] => self.metrics.rows_in.load(Ordering::Relaxed),
            exchanges => exchanges
                .iter()
                .map(|(_, m)| m.rows_in.load(Ordering::Relaxed))
                .sum(),
        }
    }

    /// A counter summed over the stream's node and its instances.
    pub(crate) fn counter(
        &self,
        field: impl Fn(&NodeMetrics) -> &std::sync::atomic::AtomicU64,
    ) -> u64 {
        use std::sync::atomic::Ordering;
        field(&self.metrics).load(Ordering::Relaxed)
            + self
                .instances
                .iter()
                .chain(&self.exchanges)
                .map(|(_, m)| field(m).load(Ordering::Relaxed))
                .sum::<u64>()
    }
}

/// A sink.
pub(crate) struct SinkEntry {
    pub(crate) name: String,
    pub(crate) sql: String,
    /// The relation it reads.
    pub(crate) input: String,
    /// Every relation and table its `FROM (SELECT ..)` reads (joins, UNION ALL).
    pub(crate) reads: Vec<String>,
    /// The filter/projection node in front of the sink (`WHERE`, `FROM (SELECT ..)`).
    pub(crate) node: Option<Arc<Node>>,
    pub(crate) connector: Option<ConnectorSpec>,
    pub(crate) metrics: Arc<NodeMetrics>,
    pub(crate) runner: SinkRunner,
}

impl SinkEntry {
    /// True when the sink reads `name`.
    pub(crate) fn reads(&self, name: &str) -> bool {
        self.input == name || self.reads.iter().any(|r| r == name)
    }
}

/// See the module docs.
#[derive(Default)]
pub(crate) struct Catalog {
    pub(crate) sources: BTreeMap<String, SourceEntry>,
    pub(crate) streams: BTreeMap<String, StreamEntry>,
    pub(crate) sinks: BTreeMap<String, SinkEntry>,
    pub(crate) tables: BTreeMap<String, crate::tables::TableEntry>,
    /// Cancelled queries kept for `SHOW QUERIES` (id -> sql).
    pub(crate) finished_queries: BTreeMap<u64, String>,
}

impl Catalog {
    /// Kind of an existing object with that name.
    pub(crate) fn kind_of(&self, name: &str) -> Option<&'static str> {
        if self.sources.contains_key(name) {
            Some("source")
        } else if let Some(s) = self.streams.get(name) {
            Some(if s.view.is_some() {
                "materialized view"
            } else {
                "stream"
            })
        } else if self.sinks.contains_key(name) {
            Some("sink")
        } else if self.tables.contains_key(name) {
            Some("table")
        } else {
            None
        }
    }

    /// The node producing a relation (source or stream; for a table, its changelog once a
    /// query reads it: see [`crate::tables::TableFeed`]).
    pub(crate) fn relation_node(&self, name: &str) -> Option<Arc<Node>> {
        self.sources
            .get(name)
            .map(|s| s.node.clone())
            .or_else(|| {
                self.streams.get(name).map(|s| match &s.view {
                    Some(view) => view.node.clone(),
                    None => s.node.clone(),
                })
            })
            .or_else(|| {
                self.tables
                    .get(name)
                    .and_then(|t| t.feed.as_ref())
                    .map(|f| f.rows.node.clone())
            })
    }

    /// Names of the objects reading `name` (queries as `__query_<id>`), then the objects
    /// reading those, and so on: in an order in which they can be dropped.
    pub(crate) fn dependents_deep(&self, name: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        self.collect_dependents(name, &mut out);
        out
    }

    /// `name` and its side outputs (`LATE DATA TO` streams), which go with it.
    fn with_side_outputs(&self, name: &str) -> Vec<String> {
        std::iter::once(name.to_string())
            .chain(
                self.streams
                    .values()
                    .filter(|s| s.side_output_of.as_deref() == Some(name))
                    .map(|s| s.name.clone()),
            )
            .collect()
    }

    fn collect_dependents(&self, name: &str, out: &mut Vec<String>) {
        let names = self.with_side_outputs(name);
        let direct: Vec<String> = self
            .streams
            .values()
            .filter(|s| s.side_output_of.is_none() && names.iter().any(|n| s.reads(n)))
            .map(|s| s.name.clone())
            .chain(
                self.sinks
                    .values()
                    .filter(|s| names.iter().any(|n| s.reads(n)))
                    .map(|s| s.name.clone()),
            )
            .collect();
        for d in direct {
            if !out.contains(&d) {
                self.collect_dependents(&d, out);
                out.push(d);
            }
        }
    }

    /// Names of objects reading `name`.
    pub(crate) fn dependents(&self, name: &str) -> Vec<String> {
        // Readers of its side outputs too: those go with it.
        let names = self.with_side_outputs(name);
        let mut out: Vec<String> = self
            .streams
            .values()
            .filter(|s| {
                s.side_output_of.as_deref() != Some(name) && names.iter().any(|n| s.reads(n))
            })
            .map(|s| match s.query_id {
                Some(id) => format!("query {id}"),
                None => format!("stream {}", s.name),
            })
            .collect();
        out.extend(
            self.sinks
                .values()
                .filter(|s| names.iter().any(|n| s.reads(n)))
                .map(|s| format!("sink {}", s.name)),
        );
        out
    }

    /// Every relation name (for suggestions).
    pub(crate) fn names(&self) -> Vec<String> {
        let mut names = self.relation_names();
        names.extend(self.sinks.keys().cloned());
        names
    }
}

impl SchemaCatalog for Catalog {
    fn relation(&self, name: &str) -> Option<RelationInfo> {
        if let Some(s) = self.sources.get(name) {
            return Some(RelationInfo {
                schema: s.schema.clone(),
                event_time: s.event_time.as_ref().map(|e| e.name.clone()),
                keyed_watermark: s.keyed_watermark.clone(),
                table: None,
                view: None,
            });
        }
        if let Some(t) = self.tables.get(name) {
            return Some(RelationInfo {
                schema: t.store.schema().clone(),
                event_time: None,
                keyed_watermark: None,
                table: Some(t.store.clone()),
                view: None,
            });
        }
        self.streams
            .get(name)
            .filter(|s| s.query_id.is_none())
            .map(|s| RelationInfo {
                schema: s.plan.output_schema.clone(),
                event_time: s.plan.event_time.clone(),
                keyed_watermark: s.plan.keyed_watermark.clone(),
                table: None,
                view: s.view.as_ref().map(|v| v.store.clone()),
            })
    }

    fn relation_names(&self) -> Vec<String> {
        self.sources
            .keys()
            .chain(self.tables.keys())
            .chain(
                self.streams
                    .iter()
                    .filter(|(_, s)| s.query_id.is_none())
                    .map(|(k, _)| k),
            )
            .cloned()
            .collect()
    }
}
