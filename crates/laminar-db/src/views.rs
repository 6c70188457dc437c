//! Materialized views (`CREATE MATERIALIZED VIEW`): the settings and checks of a view
//! definition and the node that keeps its contents.
//!
//! A view is a stream whose output goes through one more node, `<view>[view]`, running a
//! [`ViewOperator`]: it applies every change to the view's [`ViewStore`] and passes it on.
//! Everything that reads the view (streams, views, sinks, subscriptions) is connected to that
//! node; a new reader first receives the view's contents (the node's seeder, taken while no
//! change is being applied), then every later change. Snapshot queries (`SELECT .. FROM
//! view`) read the store.

use std::sync::Arc;

use laminar_core::message::Message;
use laminar_core::metrics::NodeMetrics;
use laminar_core::operator::{Operator, ViewOperator, ViewStore};
use laminar_core::runtime::{Node, Runtime};
use laminar_sql::plan::{Planner, StreamPlan};
use sqlparser::ast::Query;

use crate::catalog::{StreamEntry, ViewEntry};
use crate::durability::StateChain;
use crate::error::DbError;

/// The `WITH (..)` options of a stream or view.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ViewSettings {
    /// `memory.budget`: the most bytes of state each of its operators may hold (a view's
    /// contents count as one more operator).
    pub(crate) budget: Option<u64>,
    /// `state.ttl`: how long (ms of event time) an updating join keeps a row of an
    /// append-only input.
    pub(crate) state_ttl_ms: Option<i64>,
    /// `max_partitions`: the most partitions a top-N keeps.
    pub(crate) max_partitions: Option<u64>,
}

/// Reads the options of a stream or view; unknown keys and bad values are errors naming
/// them (`MATERIALIZED_VIEW` for a view, `SQL_INVALID` for a stream).
pub(crate) fn view_settings(
    materialized: bool,
    name: &str,
    options: &[(String, String)],
) -> Result<ViewSettings, DbError> {
    let error = |message: String| {
        if materialized {
            DbError::MaterializedView(format!("materialized view '{name}': {message}"))
        } else {
            laminar_sql::SqlError::Invalid(format!("stream '{name}': {message}")).into()
        }
    };
    let mut settings = ViewSettings::default();
    for (key, value) in options {
        match crate::execute::normalized_option(key).as_str() {
            "memory.budget" => {
                let bytes = laminar_connectors::parse_size(value)
                    .map_err(|e| error(format!("invalid memory.budget '{value}': {e}")))?;
                if bytes == 0 {
                    return Err(error("memory.budget must be positive".into()));
                }
                settings.budget = Some(bytes);
            }
            "state.ttl" => {
                let ttl = laminar_connectors::parse_duration(value)
                    .map_err(|e| error(format!("invalid state.ttl '{value}': {e}")))?;
                let ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
                if ms == 0 {
                    return Err(error("state.ttl must be positive".into()));
                }
                settings.state_ttl_ms = Some(ms);
            }
            "max_partitions" => {
                let n: u64 = value.trim().parse().map_err(|_| {
                    error(format!(
                        "invalid max_partitions '{value}': expected a positive integer"
                    ))
                })?;
                if n == 0 {
                    return Err(error("max_partitions must be positive".into()));
                }
                settings.max_partitions = Some(n);
            }
            _ => {
                return Err(error(format!(
                    "unknown option '{key}' (known: memory.budget, state.ttl, max_partitions)"
                )));
            }
        }
    }
    Ok(settings)
}

/// Refuses view bodies that cannot be maintained incrementally: non-deterministic
/// functions (their value would differ between the maintained result and a re-computation)
/// and `ORDER BY` without `LIMIT` (a view's rows have no order).
pub(crate) fn check_view_query(
    planner: &Planner,
    name: &str,
    query: &Query,
) -> Result<(), DbError> {
    let functions = planner.non_deterministic_functions(query);
    if !functions.is_empty() {
        return Err(DbError::MaterializedView(format!(
            "materialized view '{name}' calls {}, whose result is not determined by its arguments; a view's contents must be a function of its input (compute such values in the source or in the query that reads the view)",
            functions
                .iter()
                .map(|f| format!("{f}()"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    if query.order_by.is_some() && query.limit_clause.is_none() {
        return Err(DbError::MaterializedView(format!(
            "materialized view '{name}': ORDER BY without LIMIT has no meaning for a view, whose rows have no order; order the rows in the SELECT that reads the view"
        )));
    }
    Ok(())
}

/// Refuses a planned view query whose rows the view cannot hold.
pub(crate) fn check_view_plan(name: &str, plan: &StreamPlan) -> Result<(), DbError> {
    ViewStore::new(name, &plan.output_schema, None, None)
        .map(|_| ())
        .map_err(|e| DbError::MaterializedView(e.to_string()))
}

/// Adds the node that keeps a view's contents behind its query's node, restoring them from
/// `state` when the view is re-created from a checkpoint, or starting them with `initial`
/// (the query's rows before any input) when it is new.
pub(crate) fn install_view_node(
    runtime: &Runtime,
    name: &str,
    query_node: &Arc<Node>,
    settings: &ViewSettings,
    key: Option<Vec<String>>,
    initial: Option<arrow::record_batch::RecordBatch>,
    state: Option<StateChain>,
) -> Result<ViewEntry, DbError> {
    let output = query_node.schema();
    let store = ViewStore::new(name, &output, settings.budget, key.as_deref())
        .map_err(|e| DbError::MaterializedView(e.to_string()))?;
    let mut operator = ViewOperator::new(store.clone(), output);
    if let (Some(initial), None) = (&initial, &state) {
        store
            .apply(initial)
            .map_err(|e| DbError::MaterializedView(e.to_string()))?;
    }
    if let Some(state) = state {
        operator
            .restore_chain(&state.base, &state.deltas)
            .map_err(|e| {
                DbError::Checkpoint(format!(
                    "materialized view '{name}': cannot restore its checkpointed contents: {e}"
                ))
            })?;
    }
    let metrics = Arc::new(NodeMetrics::default());
    let node = runtime.add_node(
        &format!("{name}[view]"),
        Box::new(operator),
        metrics.clone(),
        std::slice::from_ref(query_node),
    );
    seed_readers_from(&node, store.clone());
    Ok(ViewEntry {
        node,
        metrics,
        store,
    })
}

/// A new reader of `node` first receives the contents of `store` (which the node keeps) as
/// inserts, then its watermark.
pub(crate) fn seed_readers_from(node: &Node, store: Arc<ViewStore>) {
    node.set_seeder(Some(Arc::new(move || {
        let mut seed = vec![Message::Batch(store.snapshot_as_inserts()?)];
        seed.extend(store.watermark().map(Message::Watermark));
        Ok(seed)
    })));
}

/// The `state` column of `SHOW MATERIALIZED VIEWS`.
pub(crate) fn view_state(stream: &StreamEntry) -> String {
    let Some(view) = &stream.view else {
        return String::new();
    };
    let size = view.store.size();
    let state = if view.node.has_failed() || stream.has_failed() {
        "failed"
    } else if view.node.is_finished() {
        "ended"
    } else {
        "running"
    };
    format!("{state}, {} rows, {} bytes", size.rows, size.bytes)
}
