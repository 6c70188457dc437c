//! Statement execution: `execute()` splits a script, runs statements in order and stops at
//! the first failure (earlier statements stay applied). Every statement validates completely
//! before it changes the catalog.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arrow::array::{ArrayRef, BooleanArray, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use laminar_connectors::{ConnectorOptions, create_sink, create_source, sink_accepts_changelog};
use laminar_core::Message;
use laminar_core::metrics::NodeMetrics;
use laminar_core::operator::aggregate::{AggregateOperator, AggregateSpec, LateRows};
use laminar_core::operator::{
    ExchangeOperator, Operator, SourceOperator, SourceSettings, StatelessOperator, Step,
};
use laminar_core::runtime::EdgeReceiver;
use laminar_core::runtime::SourceInput;
use laminar_core::time::{
    Alignment, AlignmentGroup, AlignmentMode, DEFAULT_MAX_KEYS, EventTimeColumn, KeyEviction,
    KeyedWatermark,
};
use laminar_sql::parser::{
    CreateSink, CreateSource, CreateStream, ObjectKind, ShowKind, SinkInput, StreamingClauses,
    StreamingStatement, parse_script_statement,
};
use laminar_sql::plan::SchemaCatalog;
use laminar_sql::{Planner, SqlError, StreamPlan, did_you_mean, split_statements, substitute_vars};
use sqlparser::ast::{Expr, Query};

use crate::catalog::{SinkEntry, SourceEntry, StreamEntry};
use crate::config::BackpressureStrategy;
use crate::db::LaminarDB;
use crate::durability::Restored;
use crate::error::DbError;
use crate::runners::{SinkRunner, SourceRunner};
use crate::subscription::{ArrowSubscription, Subscription};

/// What a DDL statement did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DdlInfo {
    /// `CREATE SOURCE`, `DROP STREAM`, ...
    pub statement_type: String,
    /// The object.
    pub object_name: String,
}

/// Result of [`LaminarDB::execute`] (the last statement's).
pub enum ExecuteResult {
    /// DDL done.
    Ddl(DdlInfo),
    /// A continuous query started.
    Query(QueryHandle),
    /// Rows inserted.
    RowsAffected(u64),
    /// Tabular metadata (SHOW, DESCRIBE, EXPLAIN).
    Metadata(RecordBatch),
}

impl std::fmt::Debug for ExecuteResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExecuteResult::Ddl(d) => write!(f, "Ddl({d:?})"),
            ExecuteResult::Query(q) => write!(f, "Query({})", q.id),
            ExecuteResult::RowsAffected(n) => write!(f, "RowsAffected({n})"),
            ExecuteResult::Metadata(b) => write!(f, "Metadata({} rows)", b.num_rows()),
        }
    }
}

/// A running continuous query started by `execute("SELECT ...")`.
pub struct QueryHandle {
    /// Query id (shown by `SHOW QUERIES`).
    pub id: u64,
    /// Output schema.
    pub schema: SchemaRef,
    /// The SQL text.
    pub sql: String,
    name: String,
    db: LaminarDB,
    first: parking_lot::Mutex<Option<EdgeReceiver>>,
    active: Arc<AtomicBool>,
}

impl QueryHandle {
    /// True until cancelled.
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::SeqCst)
    }

    /// Arrow subscription to the results (the first call receives everything since the query
    /// started).
    pub fn subscribe_arrow(&self) -> Result<ArrowSubscription, DbError> {
        if let Some(rx) = self.first.lock().take() {
            return Ok(ArrowSubscription {
                name: self.name.clone(),
                schema: self.schema.clone(),
                rx,
                done: false,
            });
        }
        self.db.subscribe_arrow(&self.name)
    }

    /// Typed subscription to the results.
    pub fn subscribe<T: laminar_core::record::FromRow>(&self) -> Result<Subscription<T>, DbError> {
        T::check_schema(&self.schema).map_err(|e| DbError::SchemaMismatch {
            object: self.sql.clone(),
            detail: e.to_string(),
        })?;
        Ok(Subscription {
            inner: self.subscribe_arrow()?,
            buffered: Default::default(),
            error: None,
            _marker: std::marker::PhantomData,
        })
    }

    /// Stops the query.
    pub fn cancel(&self) -> Result<(), DbError> {
        self.db.cancel_query(self.id)
    }
}

impl Drop for QueryHandle {
    /// Dropping the handle cancels the query: nobody can read its results any more.
    fn drop(&mut self) {
        if self.is_active() {
            let _ = self.db.cancel_query(self.id);
        }
    }
}

impl LaminarDB {
    /// Runs `;`-separated statements in order; the first failure stops the rest (earlier
    /// statements stay applied) and is returned; otherwise the last result is returned.
    pub async fn execute(&self, sql: &str) -> Result<ExecuteResult, DbError> {
        self.ensure_open()?;
        let sql = substitute_vars(sql, &self.inner.config.config_vars)?;
        let statements = split_statements(&sql);
        if statements.is_empty() {
            return Err(DbError::SqlParse {
                message: "no statement to execute".into(),
                line: 1,
                column: 1,
            });
        }
        let mut last = None;
        for text in &statements {
            let statement = parse_script_statement(text)?;
            last = Some(self.execute_statement(statement, &text.text).await?);
        }
        last.ok_or_else(|| DbError::Engine("no statement executed".into()))
    }

    async fn execute_statement(
        &self,
        statement: StreamingStatement,
        sql: &str,
    ) -> Result<ExecuteResult, DbError> {
        let _ddl = self.inner.ddl_lock.lock().await;
        let statement_type = statement.statement_type().to_string();
        let ddl = |name: String| {
            ExecuteResult::Ddl(DdlInfo {
                statement_type: statement_type.clone(),
                object_name: name,
            })
        };
        match statement {
            StreamingStatement::CreateSource(c) => {
                let name = c.name.clone();
                let created = self.create_source(c, sql);
                self.settle_recovery(&name, created).map(ddl)
            }
            StreamingStatement::CreateStream(c) => {
                let name = c.name.clone();
                let created = self.create_stream(c, sql);
                self.settle_recovery(&name, created).map(ddl)
            }
            StreamingStatement::CreateSink(c) => {
                // Re-created once (see `settle_recovery`): a later sink of the name is new.
                let name = c.name.clone();
                let created = self.create_sink(*c, sql);
                self.settle_recovery(&name, created).map(ddl)
            }
            StreamingStatement::CreateTable(c) => {
                let name = c.name.clone();
                let created = self.create_table(c, sql).await;
                self.settle_recovery(&name, created).map(ddl)
            }
            StreamingStatement::Delete { table, selection } => self
                .delete_from_table(&table, selection.as_ref())
                .await
                .map(ExecuteResult::RowsAffected),
            StreamingStatement::Drop {
                kind,
                name,
                if_exists,
                cascade,
            } => self.drop_object(kind, &name, if_exists, cascade).map(ddl),
            StreamingStatement::Show(kind) => self.show(kind).map(ExecuteResult::Metadata),
            StreamingStatement::Describe { name, extended } => {
                self.describe(&name, extended).map(ExecuteResult::Metadata)
            }
            StreamingStatement::Explain { analyze, statement } => self
                .explain(*statement, analyze)
                .map(ExecuteResult::Metadata),
            StreamingStatement::Insert {
                table,
                columns,
                source,
            } => self
                .insert(&table, &columns, &source)
                .await
                .map(ExecuteResult::RowsAffected),
            StreamingStatement::Subscribe { name, query } => {
                match self.inner.catalog.read().kind_of(&name) {
                    Some("source" | "stream" | "materialized view" | "table") => {}
                    Some(kind) => {
                        return Err(SqlError::Invalid(format!(
                            "SUBSCRIBE reads a source, stream, materialized view or table; '{name}' is a {kind}"
                        ))
                        .into());
                    }
                    None => {}
                }
                self.start_query(&query, &Default::default(), sql)
                    .map(ExecuteResult::Query)
            }
            StreamingStatement::Query { query, clauses } => {
                // A point query reads the key index directly.
                let point = self.point_query(&query, &clauses);
                if let Some(point) = point {
                    return point.run().map(ExecuteResult::Metadata);
                }
                if clauses.is_empty()
                    && let Some(plan) = self.snapshot_candidate(&query)
                {
                    let batches = self.run_snapshot(plan, true).await?;
                    let schema = batches
                        .first()
                        .map(|b| b.schema())
                        .unwrap_or_else(|| Arc::new(arrow::datatypes::Schema::empty()));
                    let all = arrow::compute::concat_batches(&schema, &batches)
                        .map_err(|e| DbError::Engine(e.to_string()))?;
                    return Ok(ExecuteResult::Metadata(all));
                }
                self.start_query(&query, &clauses, sql)
                    .map(ExecuteResult::Query)
            }
        }
    }

    /// The snapshot plan of a query that reads at least one table or materialized view and
    /// no source or stream; `None` for other queries (and for queries that fail to plan,
    /// whose errors the continuous path reports with its own checks). Planning reads no rows.
    fn snapshot_candidate(&self, query: &Query) -> Option<laminar_sql::plan::SnapshotQuery> {
        {
            let catalog = self.inner.catalog.read();
            if catalog.tables.is_empty() && !catalog.streams.values().any(|s| s.view.is_some()) {
                return None;
            }
        }
        match self.snapshot_plan(query) {
            Ok(Some(snapshot)) if snapshot.reads_relations() => Some(snapshot),
            _ => None,
        }
    }

    pub(crate) fn not_exists_or(
        &self,
        name: &str,
        kind: &'static str,
        if_not_exists: bool,
        or_replace: bool,
    ) -> Result<bool, DbError> {
        check_object_name(name)?;
        let catalog = self.inner.catalog.read();
        match catalog.kind_of(name) {
            None => Ok(true),
            Some(existing) if existing == kind && if_not_exists => Ok(false),
            Some(existing) if existing == kind && or_replace => {
                let dependents = catalog.dependents(name);
                if dependents.is_empty() {
                    Ok(true)
                } else {
                    Err(DbError::HasDependents {
                        kind,
                        name: name.to_string(),
                        dependents,
                    })
                }
            }
            Some(existing) => Err(DbError::AlreadyExists {
                kind,
                name: name.to_string(),
                existing_kind: existing,
            }),
        }
    }

    fn create_source(&self, c: CreateSource, sql: &str) -> Result<String, DbError> {
        if !self.not_exists_or(&c.name, "source", c.if_not_exists, c.or_replace)? {
            return Ok(c.name);
        }
        // Source options.
        // A connector reads batches of thousands of rows: a short queue keeps the backlog
        // (and with it the time a checkpoint barrier waits behind it) small, where pushes
        // of single rows need a long one.
        let mut buffer_size = if c.connector.is_some() {
            self.inner.config.buffer_size.min(CONNECTOR_QUEUE_BATCHES)
        } else {
            self.inner.config.buffer_size
        };
        let mut backpressure = self.inner.config.backpressure;
        let mut idle_timeout = self.inner.config.idle_timeout;
        let mut watermark_key: Option<String> = None;
        let mut max_keys = DEFAULT_MAX_KEYS;
        let mut eviction = KeyEviction::LeastRecentlyActive;
        let mut alignment = AlignmentOptions::default();
        const KNOWN: [&str; 10] = [
            "buffer_size",
            "backpressure",
            "wait_strategy",
            "watermark.idle_timeout",
            "watermark.key",
            "watermark.max_keys",
            "watermark.eviction",
            "alignment.group",
            "alignment.max_drift",
            "alignment.mode",
        ];
        // Keyed-watermark and alignment options may also be written among the connector's
        // options (SPEC 5.1); they mean the same there.
        let connector_runtime: Vec<(String, String)> = c
            .connector
            .iter()
            .flat_map(|spec| spec.options.iter())
            .filter(|(k, _)| is_time_option(&normalized_option(k)))
            .cloned()
            .collect();
        for (key, value) in c.options.iter().chain(connector_runtime.iter()) {
            let k = normalized_option(key);
            let invalid = |reason: &str| {
                DbError::from(SqlError::Invalid(format!(
                    "source option {key} = '{value}': {reason}"
                )))
            };
            match k.as_str() {
                "buffer_size" => {
                    buffer_size = value
                        .parse()
                        .ok()
                        .filter(|n: &usize| *n > 0)
                        .ok_or_else(|| invalid("expected a positive integer"))?;
                }
                "backpressure" => {
                    backpressure = BackpressureStrategy::parse(value)
                        .ok_or_else(|| invalid("expected block, drop_oldest or reject"))?;
                }
                "wait_strategy" => {
                    if !matches!(
                        value.to_ascii_lowercase().as_str(),
                        "spin" | "spin_yield" | "park"
                    ) {
                        return Err(invalid("expected spin, spin_yield or park"));
                    }
                }
                "watermark.idle_timeout" => {
                    idle_timeout =
                        laminar_connectors::parse_duration(value).map_err(|e| invalid(&e))?;
                }
                "channel" | "type" => {
                    return Err(invalid(
                        "the channel kind is always derived by LaminarDB (more producers push through cloned handles) and cannot be set",
                    ));
                }
                "watermark.key" => {
                    if value.trim().is_empty() {
                        return Err(invalid("expected a column name"));
                    }
                    watermark_key = Some(value.trim().to_string());
                }
                "watermark.max_keys" => {
                    max_keys = value
                        .parse()
                        .ok()
                        .filter(|n: &usize| *n > 0)
                        .ok_or_else(|| invalid("expected a positive integer"))?;
                }
                "watermark.eviction" => {
                    eviction = KeyEviction::parse(value).ok_or_else(|| {
                        invalid("expected least_recently_active, lowest_watermark or reject_new")
                    })?;
                }
                "alignment.group" | "alignment.max_drift" | "alignment.mode" => {
                    alignment.set(&k, value).map_err(|e| invalid(&e))?;
                }
                "watermark.max_skew" => {
                    return Err(SqlError::not_supported(
                        format!("source option '{key}'"),
                        Some(
                            "bound the disorder with WATERMARK FOR ts AS ts - INTERVAL ... instead",
                        ),
                    )
                    .into());
                }
                _ => {
                    return Err(DbError::from(SqlError::Invalid(format!(
                        "unknown source option '{key}'{}; valid options: {}",
                        did_you_mean(&k, KNOWN)
                            .map(|s| format!(" (did you mean '{s}'?)"))
                            .unwrap_or_default(),
                        KNOWN.join(", ")
                    ))));
                }
            }
        }
        // Schema: declared, or supplied by the connector.
        let declared = Arc::new(self.inner.planner.build_schema(&c.columns)?);
        let mut connector = None;
        let schema: SchemaRef = match &c.connector {
            Some(spec) => {
                for (key, value) in &spec.options {
                    let k = normalized_option(key);
                    if k == "watermark.idle_timeout" || k == "idle.timeout.ms" {
                        idle_timeout = laminar_connectors::parse_duration(value).map_err(|e| {
                            DbError::from(SqlError::Invalid(format!(
                                "option {key} = '{value}': {e}"
                            )))
                        })?;
                    } else if k == "watermark.max_skew" {
                        return Err(SqlError::not_supported(
                            format!("source option '{key}'"),
                            Some("bound the disorder with WATERMARK FOR ts AS ts - INTERVAL ... instead"),
                        )
                        .into());
                    }
                }
                let options = connector_options(&c.name, spec, c.format.as_ref())?;
                let format = c.format.as_ref().map(|f| f.name.as_str());
                let source = create_source(&spec.name, &options, format, declared.clone())
                    .map_err(|source| DbError::Connector {
                        object: c.name.clone(),
                        source: Box::new(source),
                    })?;
                let schema = source.schema();
                connector = Some(source);
                schema
            }
            None => {
                if c.columns.is_empty() {
                    return Err(SqlError::Invalid(format!(
                        "source '{}' declares no columns and has no connector that could supply them",
                        c.name
                    ))
                    .into());
                }
                if c.format.is_some() {
                    return Err(SqlError::Invalid(
                        "FORMAT needs a connector (FROM <connector>)".into(),
                    )
                    .into());
                }
                declared
            }
        };
        let event_time = match &c.watermark {
            Some(w) => Some(
                EventTimeColumn::resolve(&schema, &w.column).map_err(|reason| {
                    SqlError::Invalid(format!(
                        "WATERMARK FOR {} in source '{}': {reason}",
                        w.column, c.name
                    ))
                })?,
            ),
            None => None,
        };
        let mut keyed = match watermark_key {
            None => None,
            Some(column) => {
                let (Some(w), Some(_)) = (&c.watermark, &event_time) else {
                    return Err(SqlError::Invalid(format!(
                        "watermark.key = '{column}' in source '{}' needs a WATERMARK FOR clause (the keyed watermark is max event time per key minus its delay)",
                        c.name
                    ))
                    .into());
                };
                let Ok(field) = schema.field_with_name(&column) else {
                    return Err(SqlError::Invalid(format!(
                        "watermark.key column '{column}' does not exist in source '{}'{}",
                        c.name,
                        did_you_mean(&column, schema.fields().iter().map(|f| f.name().as_str()))
                            .map(|s| format!(" (did you mean '{s}'?)"))
                            .unwrap_or_default()
                    ))
                    .into());
                };
                if !arrow::row::RowConverter::supports_fields(&[arrow::row::SortField::new(
                    field.data_type().clone(),
                )]) {
                    return Err(SqlError::Invalid(format!(
                        "watermark.key column '{column}' in source '{}' has type {}, which cannot key a watermark",
                        c.name,
                        field.data_type()
                    ))
                    .into());
                }
                Some(KeyedWatermark {
                    column,
                    delay_ms: w.delay_ms,
                    max_keys,
                    eviction,
                    idle_timeout,
                })
            }
        };
        // A connector reading several independent partitions (Kafka with `_partition`
        // declared) gets one watermark per partition: the source reports their minimum and
        // waits for every partition to deliver rows or go idle.
        let mut expected_partitions = None;
        if let (None, Some(w), Some(connector)) = (&keyed, &c.watermark, connector.as_mut()) {
            let partitions =
                connector
                    .watermark_partitions()
                    .map_err(|source| DbError::Connector {
                        object: c.name.clone(),
                        source: Box::new(source),
                    })?;
            if let Some((column, values)) = partitions {
                keyed = Some(KeyedWatermark {
                    column,
                    delay_ms: w.delay_ms,
                    max_keys: DEFAULT_MAX_KEYS,
                    eviction: KeyEviction::LeastRecentlyActive,
                    idle_timeout,
                });
                expected_partitions = Some(values);
            }
        }
        if (max_keys != DEFAULT_MAX_KEYS || eviction != KeyEviction::LeastRecentlyActive)
            && expected_partitions.is_none()
            && keyed.is_none()
        {
            return Err(SqlError::Invalid(format!(
                "watermark.max_keys and watermark.eviction in source '{}' apply to a keyed watermark; add watermark.key = '<column>'",
                c.name
            ))
            .into());
        }
        if backpressure == BackpressureStrategy::DropOldest && self.inner.durability.is_some() {
            return Err(SqlError::Invalid(format!(
                "source '{}': backpressure = 'drop_oldest' cannot be used with a storage directory: the rows it evicts were already logged (or read at a position a checkpoint records), so a restart would bring them back and the output would depend on whether the pipeline crashed; use block or reject",
                c.name
            ))
            .into());
        }
        let reads_files = reads_files(&c);
        let declared_alignment = match alignment.finish(&c.name, event_time.is_some())? {
            // FILES sources replay in event-time alignment by default (SPEC 5.9), so reading
            // several files keeps window and join state as bounded as live operation does.
            None if reads_files && event_time.is_some() => Some((
                FILES_ALIGNMENT_GROUP.to_string(),
                FILES_ALIGNMENT_DRIFT_MS,
                AlignmentMode::Pause,
            )),
            declared => declared,
        };
        let alignment = match declared_alignment {
            None => None,
            Some((group, max_drift_ms, mode)) => {
                let mut groups = self.inner.alignment_groups.lock();
                groups.retain(|_, g| g.strong_count() > 0);
                let group = match groups.get(&group).and_then(std::sync::Weak::upgrade) {
                    Some(g) => g,
                    None => {
                        let g = AlignmentGroup::new(&group);
                        groups.insert(group, Arc::downgrade(&g));
                        g
                    }
                };
                Some(Alignment {
                    member: group.join(&c.name),
                    group,
                    max_drift_ms,
                    mode,
                })
            }
        };
        // Everything validated: replace if asked, then create.
        if c.or_replace {
            self.remove_object(&c.name);
        }
        let mut restored =
            self.restore_object("source", &c.name, sql, std::slice::from_ref(&c.name))?;
        let runner = connector.map(|c| SourceRunner::new(c, self.inner.durability.clone()));
        if let (Some(position), Some(runner)) = (&restored.position, &runner) {
            runner.seek(position).map_err(|e| {
                DbError::Checkpoint(format!(
                    "source '{}': cannot resume at the checkpointed position '{position}': {e}",
                    c.name
                ))
            })?;
        }
        let metrics = Arc::new(NodeMetrics::default());
        let mut operator = SourceOperator::new(
            SourceSettings {
                name: c.name.clone(),
                schema: schema.clone(),
                event_time: event_time.clone(),
                delay_ms: c.watermark.as_ref().map_or(0, |w| w.delay_ms),
                idle_timeout,
                keyed: keyed.clone(),
                alignment: alignment.clone(),
            },
            metrics.clone(),
        )
        .map_err(|e| DbError::Engine(e.to_string()))?;
        if let Some(state) = restored.state(&c.name) {
            laminar_core::operator::Operator::restore_chain(
                &mut operator,
                &state.base,
                &state.deltas,
            )
            .map_err(|e| {
                DbError::Checkpoint(format!(
                    "source '{}': cannot restore its checkpointed watermark: {e}",
                    c.name
                ))
            })?;
        }
        if let Some(partitions) = &expected_partitions {
            operator
                .expect_keys(partitions)
                .map_err(|e| DbError::Engine(e.to_string()))?;
        }
        let (node, input) = self.inner.runtime.add_source(
            &c.name,
            Box::new(operator),
            metrics.clone(),
            buffer_size,
        );
        let mut entry = SourceEntry {
            name: c.name.clone(),
            sql: sql.to_string(),
            schema,
            event_time,
            watermark: c.watermark,
            keyed_watermark: keyed,
            connector: c.connector,
            format: c.format,
            backpressure,
            node,
            input,
            metrics,
            runner,
            log: self.inner.durability.clone(),
        };
        let running = matches!(self.pipeline_state(), crate::db::PipelineState::Running);
        let target = entry.ingest_target();
        if running && let Some(runner) = entry.runner.as_mut() {
            runner.start(&self.inner.io_handle, target, self.inner.failures.clone());
        }
        self.inner
            .catalog
            .write()
            .sources
            .insert(c.name.clone(), entry);
        Ok(c.name)
    }

    /// Tells the checkpoint being recovered how the `CREATE` of `name` went (see
    /// [`crate::durability::Durability::settle_recovery`]).
    fn settle_recovery(
        &self,
        name: &str,
        created: Result<String, DbError>,
    ) -> Result<String, DbError> {
        if let Some(d) = &self.inner.durability {
            d.settle_recovery(name, created.as_ref().err());
        }
        created
    }

    /// The checkpointed state of an object created again (nothing without durability).
    pub(crate) fn restore_object(
        &self,
        kind: &str,
        name: &str,
        sql: &str,
        nodes: &[String],
    ) -> Result<Restored, DbError> {
        match &self.inner.durability {
            Some(d) => d.restore_object(kind, name, sql, nodes),
            None => Ok(Restored::default()),
        }
    }

    pub(crate) fn plan(
        &self,
        query: &Query,
        clauses: &StreamingClauses,
    ) -> Result<StreamPlan, DbError> {
        let catalog = self.inner.catalog.read();
        Ok(self.inner.planner.plan_query(query, clauses, &*catalog)?)
    }

    /// The operator executing `plan`: a join, an aggregation, a ranking or fused
    /// filters/projections, stacked over the operator of its stage when it has one.
    fn make_operator(
        &self,
        name: &str,
        plan: &StreamPlan,
        metrics: &Arc<NodeMetrics>,
        late_rows: Option<Box<dyn LateRows>>,
        behind_exchange: Option<&InstanceShared>,
    ) -> Result<Box<dyn Operator>, DbError> {
        let top = self.make_level_operator(name, plan, metrics, late_rows, behind_exchange)?;
        if plan.stages.is_empty() {
            return Ok(top);
        }
        let stages = plan
            .stages
            .iter()
            .map(|stage| match stage {
                // A stage counts in its own metrics: the node's (its rows, its output
                // watermark, which seeds new readers) are the top operator's.
                Some(stage) => Ok(Some((
                    self.make_operator(name, stage, &Arc::new(NodeMetrics::default()), None, None)?,
                    stage.relations().len(),
                ))),
                None => Ok(None),
            })
            .collect::<Result<Vec<_>, DbError>>()?;
        Ok(Box::new(laminar_core::operator::StagedOperator::new(
            top, stages,
        )))
    }

    /// The operator of one level of `plan` (not its stage).
    fn make_level_operator(
        &self,
        name: &str,
        plan: &StreamPlan,
        metrics: &Arc<NodeMetrics>,
        late_rows: Option<Box<dyn LateRows>>,
        behind_exchange: Option<&InstanceShared>,
    ) -> Result<Box<dyn Operator>, DbError> {
        // Behind hash exchanges the input chains already ran (in the exchanges): one input
        // per exchange, one exchange per join side or one for everything else.
        let chains = match behind_exchange {
            Some(_) if plan.join.is_some() => vec![Vec::new(); plan.chains.len()],
            Some(_) => vec![Vec::new()],
            None => plan.chains.clone(),
        };
        if let Some(j) = &plan.join {
            let spec = laminar_core::operator::join::JoinSpec {
                name: name.to_string(),
                inputs: j
                    .relations
                    .iter()
                    .zip(&chains)
                    .map(
                        |(&relation, chain)| laminar_core::operator::join::JoinInput {
                            relation,
                            chain: chain.clone(),
                        },
                    )
                    .collect(),
                steps: j.steps.clone(),
                post: j.post.clone(),
                output_schema: plan.output_schema.clone(),
                metrics: metrics.clone(),
            };
            let operator = laminar_core::operator::join::JoinOperator::new(spec)
                .map_err(|e| DbError::Engine(e.to_string()))?;
            return Ok(Box::new(operator));
        }
        if let Some(a) = &plan.analytic {
            let operator = laminar_core::operator::AnalyticOperator::new(
                laminar_core::operator::AnalyticSpec {
                    name: name.to_string(),
                    chains,
                    input_schema: a.input_schema.clone(),
                    event_time: a.event_time,
                    partition_by: a.partition_by.clone(),
                    functions: a.functions.clone(),
                    lookback: a.lookback,
                    lookahead: a.lookahead,
                    window_schema: a.window_schema.clone(),
                    post: a.post.clone(),
                    output_schema: plan.output_schema.clone(),
                    metrics: metrics.clone(),
                },
            )
            .map_err(|e| DbError::Engine(e.to_string()))?;
            return Ok(Box::new(operator));
        }
        if let Some(t) = &plan.topn {
            let operator =
                laminar_core::operator::TopNOperator::new(laminar_core::operator::TopNSpec {
                    name: name.to_string(),
                    chains,
                    input_schema: t.input_schema.clone(),
                    partition_by: t.partition_by.clone(),
                    order_by: t.order_by.clone(),
                    function: t.function,
                    limit: t.limit,
                    ranked_schema: t.ranked_schema.clone(),
                    post: t.post.clone(),
                    output_schema: plan.output_schema.clone(),
                    append_only: t.append_only,
                    max_partitions: Some(t.max_partitions),
                    shared_partitions: behind_exchange.map(|s| s.topn_partitions.clone()),
                })
                .map_err(|e| DbError::Engine(e.to_string()))?;
            return Ok(Box::new(operator));
        }
        let Some(a) = &plan.aggregate else {
            return Ok(Box::new(StatelessOperator::new(
                name,
                plan.chains.clone(),
                plan.output_schema.clone(),
            )));
        };
        let spec = AggregateSpec {
            name: name.to_string(),
            chains,
            input_schema: a.input_schema.clone(),
            event_time: a.event_time,
            window: a.window,
            keys: a.keys.clone(),
            aggregates: a.aggregates.clone(),
            aggregate_schema: a.aggregate_schema.clone(),
            window_position: a.window_position,
            post: a.post.clone(),
            post_schema: a.post_schema.clone(),
            emit: a.emit,
            lateness: a.lateness,
            late_rows,
            output_time: a.output_time,
            metrics: metrics.clone(),
            keyed_watermark: a.keyed_watermark.clone(),
        };
        let operator = AggregateOperator::new(spec).map_err(|e| DbError::Engine(e.to_string()))?;
        Ok(Box::new(operator))
    }

    fn create_stream(&self, c: CreateStream, sql: &str) -> Result<String, DbError> {
        let kind = if c.materialized {
            "materialized view"
        } else {
            "stream"
        };
        // A view replaced by OR REPLACE goes with everything that reads it (SPEC 2.4).
        let replaced_view = c.materialized
            && c.or_replace
            && self.inner.catalog.read().kind_of(&c.name) == Some("materialized view");
        if !replaced_view && !self.not_exists_or(&c.name, kind, c.if_not_exists, c.or_replace)? {
            return Ok(c.name);
        }
        let settings = crate::views::view_settings(c.materialized, &c.name, &c.options)?;
        let view = c.materialized.then_some(settings);
        if c.materialized {
            crate::views::check_view_query(&self.inner.planner, &c.name, &c.query)?;
        }
        let clauses = StreamingClauses {
            state_ttl_ms: settings.state_ttl_ms,
            max_partitions: settings.max_partitions,
            ..c.clauses.clone()
        };
        let plan = self.plan(&c.query, &clauses)?;
        if c.materialized {
            crate::views::check_view_plan(&c.name, &plan)?;
        }
        let replaced_readers = if replaced_view {
            let dependents = self.inner.catalog.read().dependents_deep(&c.name);
            if let Some(cycle) = plan.relations().iter().find(|i| dependents.contains(i)) {
                return Err(DbError::MaterializedView(format!(
                    "materialized view '{}' cannot read '{cycle}': '{cycle}' reads '{}', so the views would form a cycle",
                    c.name, c.name
                )));
            }
            dependents
        } else {
            Vec::new()
        };
        if let Some(late) = plan
            .aggregate
            .as_ref()
            .and_then(|a| a.late_data_to.as_ref())
        {
            check_object_name(late)?;
            let catalog = self.inner.catalog.read();
            let ours = catalog
                .streams
                .get(late)
                .is_some_and(|s| s.side_output_of.as_deref() == Some(c.name.as_str()));
            if late == &c.name || (catalog.kind_of(late).is_some() && !(ours && c.or_replace)) {
                return Err(SqlError::Invalid(format!(
                    "LATE DATA TO {late}: an object named '{late}' already exists; LATE DATA TO creates the stream"
                ))
                .into());
            }
        }
        if plan.relations().iter().any(|i| i == &c.name) {
            return Err(
                SqlError::Invalid(format!("{kind} '{}' cannot read itself", c.name)).into(),
            );
        }
        // Every check passed: a replaced view goes with everything that reads it.
        for dependent in replaced_readers {
            self.remove_dependent(&dependent);
        }
        if c.or_replace {
            self.remove_object(&c.name);
        }
        let (_, _, pending) =
            self.install_stream(&c.name, sql, plan, None, view, settings.budget)?;
        self.connect_pending(pending)?;
        Ok(c.name)
    }

    fn install_stream(
        &self,
        name: &str,
        sql: &str,
        plan: StreamPlan,
        query_id: Option<u64>,
        view: Option<crate::views::ViewSettings>,
        budget: Option<u64>,
    ) -> Result<
        (
            Arc<laminar_core::runtime::Node>,
            Arc<AtomicBool>,
            PendingInputs,
        ),
        DbError,
    > {
        // A new reader of a materialized view starts from the view's contents; one
        // re-created from a checkpoint already holds them in its state.
        let seeded = query_id.is_some()
            || !self
                .inner
                .durability
                .as_ref()
                .is_some_and(|d| d.is_recovering(name));
        let mut catalog = self.inner.catalog.write();
        for input in &plan.relations() {
            self.ensure_table_feed(&mut catalog, input)?;
        }
        let upstreams = plan
            .relations()
            .iter()
            .map(|i| {
                catalog.relation_node(i).ok_or_else(|| DbError::NotFound {
                    kind: "source or stream",
                    name: i.clone(),
                    suggestion: None,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let metrics = Arc::new(NodeMetrics::default());
        let late_name = plan.aggregate.as_ref().and_then(|a| a.late_data_to.clone());
        let late = match (&late_name, &plan.aggregate) {
            (Some(late_name), Some(a)) => {
                let late_metrics = Arc::new(NodeMetrics::default());
                let operator = SourceOperator::new(
                    SourceSettings {
                        name: late_name.clone(),
                        schema: a.input_schema.clone(),
                        event_time: None,
                        delay_ms: 0,
                        idle_timeout: Duration::from_secs(30),
                        keyed: None,
                        alignment: None,
                    },
                    late_metrics.clone(),
                )
                .map_err(|e| DbError::Engine(e.to_string()))?;
                let (late_node, input) = self.inner.runtime.add_source(
                    late_name,
                    Box::new(operator),
                    late_metrics.clone(),
                    self.inner.config.subscription_buffer.max(1024),
                );
                Some((late_node, input, late_metrics, a.input_schema.clone()))
            }
            _ => None,
        };
        let late_rows = || {
            late.as_ref().map(|(_, input, _, _)| {
                Box::new(LateStream {
                    input: input.clone(),
                }) as Box<dyn LateRows>
            })
        };
        let instances = parallel_instances(&plan, self.inner.runtime.workers());
        // Checkpointed state of a named stream: its single node, or its instances.
        let mut stateful_nodes: Vec<String> = if instances > 1 {
            (0..instances).map(|i| format!("{name}[{i}]")).collect()
        } else {
            vec![name.to_string()]
        };
        let view_node_name = format!("{name}[view]");
        if view.is_some() {
            stateful_nodes.push(view_node_name.clone());
        }
        let mut restored = match query_id {
            None => self.restore_object("stream", name, sql, &stateful_nodes)?,
            Some(_) => Restored::default(),
        };
        let restore_one =
            |node: &str,
             op: &mut Box<dyn laminar_core::operator::Operator>,
             state: Option<crate::durability::StateChain>| match state {
                Some(state) => op.restore_chain(&state.base, &state.deltas).map_err(|e| {
                    DbError::Checkpoint(format!(
                        "stream '{name}': cannot restore the checkpointed state of '{node}': {e}"
                    ))
                }),
                None => Ok(()),
            };
        let mut instance_nodes: Vec<(Arc<laminar_core::runtime::Node>, Arc<NodeMetrics>)> =
            Vec::new();
        // The view's rows before any input (see `Operator::initial_output`).
        let mut initial: Option<RecordBatch> = None;
        // The nodes reading the upstreams, and which: connected last (see `PendingInputs`).
        let mut inputs_of: Vec<(
            Arc<laminar_core::runtime::Node>,
            Vec<Arc<laminar_core::runtime::Node>>,
        )> = Vec::new();
        let mut exchanges: Vec<(Arc<laminar_core::runtime::Node>, Arc<NodeMetrics>)> = Vec::new();
        let parallel = partition_keys(&plan).filter(|_| instances > 1);
        let built = if let Some(partitioning) = parallel {
            // Parallel instances behind hash exchanges: an exchange runs the input chain(s)
            // and routes each row to the instance its key hashes to (a join has one exchange
            // per side, hashing equal keys alike); a pass-through node merges the instances'
            // outputs (watermark = minimum).
            let shared = InstanceShared::default();
            let per_input = partitioning.exchanges.len() > 1;
            for (index, (keys, schema)) in partitioning.exchanges.into_iter().enumerate() {
                let (exchange_name, chains, reads) = if per_input {
                    (
                        format!("{name}[exchange{index}]"),
                        vec![plan.chains[index].clone()],
                        upstreams.get(index).cloned().into_iter().collect(),
                    )
                } else {
                    (
                        format!("{name}[exchange]"),
                        plan.chains.clone(),
                        upstreams.clone(),
                    )
                };
                let exchange_metrics = Arc::new(NodeMetrics::default());
                let exchange_node = self.inner.runtime.add_node(
                    &exchange_name,
                    Box::new(ExchangeOperator::new(name, chains, keys, instances, schema)),
                    exchange_metrics.clone(),
                    // Upstreams are connected once every instance is attached (below), so
                    // no routed row can find its instance missing.
                    &[],
                );
                inputs_of.push((exchange_node.clone(), reads));
                exchanges.push((exchange_node, exchange_metrics));
            }
            let exchange_nodes: Vec<_> = exchanges.iter().map(|(n, _)| n.clone()).collect();
            let mut failed = None;
            // Instances restore their state in parallel (a large state takes seconds).
            let made: Vec<_> = (0..instances)
                .map(|index| {
                    let instance_metrics = Arc::new(NodeMetrics::default());
                    let node = format!("{name}[{index}]");
                    let state = restored.state(&node);
                    let op = self.make_operator(
                        name,
                        &plan,
                        &instance_metrics,
                        late_rows(),
                        Some(&shared),
                    );
                    (node, op, state, instance_metrics)
                })
                .collect();
            let made: Vec<_> = std::thread::scope(|scope| {
                let restores: Vec<_> = made
                    .into_iter()
                    .map(|(node, op, state, instance_metrics)| {
                        let restore_one = &restore_one;
                        scope.spawn(move || {
                            let op = op.and_then(|mut op| {
                                restore_one(&node, &mut op, state)?;
                                Ok(op)
                            });
                            (op, instance_metrics)
                        })
                    })
                    .collect();
                restores
                    .into_iter()
                    .map(|handle| {
                        handle.join().unwrap_or_else(|_| {
                            (
                                Err(DbError::Engine(format!(
                                    "stream '{name}': restoring an instance panicked"
                                ))),
                                Arc::new(NodeMetrics::default()),
                            )
                        })
                    })
                    .collect()
            });
            for (index, (made, instance_metrics)) in made.into_iter().enumerate() {
                match made {
                    Ok(op) => {
                        // Edge `index` of each exchange leads to instance `index` (input `i` of
                        // the instance is exchange `i`).
                        let node = self.inner.runtime.add_node(
                            &format!("{name}[{index}]"),
                            op,
                            instance_metrics.clone(),
                            &exchange_nodes,
                        );
                        instance_nodes.push((node, instance_metrics));
                    }
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            match failed {
                Some(e) => Err(e),
                None => {
                    let schema = instance_nodes[0].0.schema();
                    let merge = StatelessOperator::new(name, vec![Vec::new(); instances], schema);
                    let inputs: Vec<_> = instance_nodes.iter().map(|(n, _)| n.clone()).collect();
                    let merged = self.inner.runtime.add_node(
                        name,
                        Box::new(merge),
                        metrics.clone(),
                        &inputs,
                    );
                    Ok(merged)
                }
            }
        } else {
            self.make_operator(name, &plan, &metrics, late_rows(), None)
                .and_then(|mut op| {
                    let state = restored.state(name);
                    let fresh = state.is_none();
                    restore_one(name, &mut op, state)?;
                    // A new view starts with what its query's result holds before any input
                    // (a global aggregation's row).
                    if fresh && view.is_some() {
                        initial = op
                            .initial_output()
                            .map_err(|e| DbError::Engine(e.to_string()))?;
                    }
                    Ok(op)
                })
                .map(|operator| {
                    let node = self
                        .inner
                        .runtime
                        .add_node(name, operator, metrics.clone(), &[]);
                    inputs_of.push((node.clone(), upstreams.clone()));
                    node
                })
        };
        let built = match (built, view) {
            (Ok(node), Some(settings)) => {
                match crate::views::install_view_node(
                    &self.inner.runtime,
                    name,
                    &node,
                    &settings,
                    plan.natural_key(),
                    initial.take(),
                    restored.state(&view_node_name),
                ) {
                    Ok(view) => Ok((node, Some(view))),
                    Err(e) => {
                        self.inner.runtime.remove_node(&node);
                        Err(e)
                    }
                }
            }
            (built, _) => built.map(|node| (node, None)),
        };
        let (node, view) = match built {
            Ok(built) => {
                // Every stateful node of the stream: its single node or its instances.
                if instance_nodes.is_empty() {
                    built.0.set_memory_budget(budget);
                }
                for (instance, _) in &instance_nodes {
                    instance.set_memory_budget(budget);
                }
                built
            }
            Err(e) => {
                for (node, _) in instance_nodes.iter().chain(&exchanges) {
                    self.inner.runtime.remove_node(node);
                }
                if let Some((late_node, ..)) = &late {
                    self.inner.runtime.remove_node(late_node);
                }
                return Err(e);
            }
        };
        if let (Some(late_name), Some((late_node, late_input, late_metrics, schema))) =
            (late_name, late)
        {
            if let Some(old) = catalog.streams.remove(&late_name) {
                self.remove_stream_nodes(&old);
            }
            catalog.streams.insert(
                late_name.clone(),
                StreamEntry {
                    name: late_name.clone(),
                    sql: format!("-- rows too late for stream {name} (LATE DATA TO)"),
                    plan: StreamPlan::side_output(schema),
                    node: late_node,
                    metrics: late_metrics,
                    query_id: None,
                    active: Arc::new(AtomicBool::new(true)),
                    side_output_of: Some(name.to_string()),
                    instances: Vec::new(),
                    exchanges: Vec::new(),
                    late_input: Some(late_input),
                    view: None,
                },
            );
        }
        let active = Arc::new(AtomicBool::new(true));
        catalog.streams.insert(
            name.to_string(),
            StreamEntry {
                name: name.to_string(),
                sql: sql.to_string(),
                plan,
                node: node.clone(),
                metrics,
                query_id,
                active: active.clone(),
                side_output_of: None,
                instances: instance_nodes,
                exchanges,
                late_input: None,
                view,
            },
        );
        let pending = PendingInputs {
            name: name.to_string(),
            targets: inputs_of,
            seeded,
        };
        Ok((node, active, pending))
    }

    fn start_query(
        &self,
        query: &Query,
        clauses: &StreamingClauses,
        sql: &str,
    ) -> Result<QueryHandle, DbError> {
        if clauses.late_data_to.is_some() {
            return Err(SqlError::Invalid(
                "LATE DATA TO creates a named stream; use it in CREATE STREAM".into(),
            )
            .into());
        }
        let id = self.inner.next_query_id.fetch_add(1, Ordering::Relaxed);
        let name = format!("__query_{id}");
        let plan = self.plan(query, clauses)?;
        let schema = plan.output_schema.clone();
        let (node, active, pending) =
            self.install_stream(&name, sql, plan, Some(id), None, None)?;
        let rx = self
            .inner
            .runtime
            .attach(&node, self.inner.config.subscription_buffer, false);
        self.connect_pending(pending)?;
        Ok(QueryHandle {
            id,
            schema,
            sql: sql.to_string(),
            name,
            db: self.clone(),
            first: parking_lot::Mutex::new(Some(rx)),
            active,
        })
    }

    /// Cancels a continuous query started by `execute("SELECT ...")`.
    pub fn cancel_query(&self, id: u64) -> Result<(), DbError> {
        let name = format!("__query_{id}");
        let mut catalog = self.inner.catalog.write();
        let Some(entry) = catalog.streams.remove(&name) else {
            if catalog.finished_queries.contains_key(&id) {
                return Ok(());
            }
            return Err(DbError::NotFound {
                kind: "query",
                name: id.to_string(),
                suggestion: None,
            });
        };
        entry.active.store(false, Ordering::SeqCst);
        self.remove_stream_nodes(&entry);
        catalog.finished_queries.insert(id, entry.sql);
        Ok(())
    }

    fn create_sink(&self, c: CreateSink, sql: &str) -> Result<String, DbError> {
        if !self.not_exists_or(&c.name, "sink", c.if_not_exists, c.or_replace)? {
            return Ok(c.name);
        }
        // A new sink reading a materialized view starts from its contents; one re-created
        // from a checkpoint does not (asked before its checkpointed state is taken).
        let seeded = !self
            .inner
            .durability
            .as_ref()
            .is_some_and(|d| d.is_recovering(&c.name));
        // The sink reads `input` through an optional filter/projection node.
        let (input, query) = match &c.input {
            SinkInput::Object(name) => {
                let catalog = self.inner.catalog.read();
                if catalog.relation(name).is_none() {
                    let names = catalog.relation_names();
                    return Err(SqlError::UnknownObject {
                        kind: "source or stream",
                        name: name.clone(),
                        suggestion: did_you_mean(name, names.iter().map(String::as_str)),
                    }
                    .into());
                }
                let query = match &c.filter {
                    Some(filter) => Some(select_star_where(name, filter)?),
                    // A table is read as its changelog, planned like a query over it.
                    None if catalog.tables.contains_key(name) => Some(select_star_where(
                        name,
                        &sqlparser::ast::Expr::Value(sqlparser::ast::Value::Boolean(true).into()),
                    )?),
                    None => None,
                };
                (name.clone(), query)
            }
            SinkInput::Query(q) => {
                let query = match &c.filter {
                    Some(filter) => {
                        let mut q = (**q).clone();
                        wrap_where(&mut q, filter)?;
                        q
                    }
                    None => (**q).clone(),
                };
                (String::new(), Some(query))
            }
        };
        let plan = match &query {
            Some(q) => Some(self.plan(q, &StreamingClauses::default())?),
            None => None,
        };
        let input = match &plan {
            Some(p) if input.is_empty() => p.relations().first().cloned().unwrap_or_default(),
            _ => input,
        };
        let reads: Vec<String> = plan
            .iter()
            .flat_map(|p| p.relations().into_iter().chain(p.lookup_tables()))
            .collect();
        let schema = match &plan {
            Some(p) => p.output_schema.clone(),
            None => self
                .inner
                .catalog
                .read()
                .relation(&input)
                .map(|r| r.schema)
                .ok_or_else(|| DbError::Engine(format!("relation '{input}' vanished")))?,
        };
        let connector = match &c.connector {
            Some(spec) => {
                let options = connector_options(&c.name, spec, c.format.as_ref())?;
                let format = c.format.as_ref().map(|f| f.name.as_str());
                if laminar_core::message::is_changelog(&schema)
                    && !sink_accepts_changelog(&spec.name, &options, format, &schema).map_err(
                        |source| DbError::Connector {
                            object: c.name.clone(),
                            source: Box::new(source),
                        },
                    )?
                {
                    return Err(SqlError::Invalid(format!(
                        "sink '{}' reads an updating stream; the {} connector writes it only as a changelog (FILES: changelog = 'true'; KAFKA: format = 'debezium' or upsert = 'true')",
                        c.name, spec.name
                    ))
                    .into());
                }
                let connector_error = |source| DbError::Connector {
                    object: c.name.clone(),
                    source: Box::new(source),
                };
                let mut sink = create_sink(&spec.name, &options, format, schema.clone())
                    .map_err(connector_error)?;
                // Output the checkpoint being recovered pre-committed, for the sink to
                // settle before it writes anything.
                if let Some(state) = self
                    .inner
                    .durability
                    .as_ref()
                    .and_then(|d| d.take_sink_state(&c.name, sql))
                {
                    sink.restore_pre_commit_state(&state)
                        .map_err(connector_error)?;
                }
                Some(sink)
            }
            None => {
                if c.format.is_some() {
                    return Err(SqlError::Invalid(
                        "FORMAT needs a connector (INTO <connector>)".into(),
                    )
                    .into());
                }
                None
            }
        };
        if c.or_replace {
            self.remove_object(&c.name);
        }
        let metrics = Arc::new(NodeMetrics::default());
        let mut catalog = self.inner.catalog.write();
        for input in plan.iter().flat_map(|p| p.relations()) {
            self.ensure_table_feed(&mut catalog, &input)?;
        }
        // The sink node's inputs, connected once the sink's runner reads its output.
        // A node in front of the sink when it filters, or when it has no connector (the
        // node is then the sink's subscribable in-memory endpoint).
        let (node, sink_inputs) = match (plan, connector.is_none()) {
            (Some(plan), _) => {
                let upstreams = plan
                    .relations()
                    .iter()
                    .filter_map(|i| catalog.relation_node(i))
                    .collect::<Vec<_>>();
                (
                    Some(self.make_operator(&c.name, &plan, &metrics, None, None)?),
                    upstreams,
                )
            }
            (None, true) => (
                Some(Box::new(StatelessOperator::new(
                    &c.name,
                    vec![Vec::new()],
                    schema.clone(),
                ))
                    as Box<dyn laminar_core::operator::Operator>),
                catalog.relation_node(&input).into_iter().collect(),
            ),
            (None, false) => (None, Vec::new()),
        };
        let node = node.map(|op| {
            self.inner
                .runtime
                .add_node(&c.name, op, metrics.clone(), &[])
        });
        let runner = match connector {
            Some(sink) => {
                let feeding = node
                    .clone()
                    .or_else(|| catalog.relation_node(&input))
                    .ok_or_else(|| DbError::Engine(format!("relation '{input}' vanished")))?;
                let rx = if seeded && node.is_none() && feeding.has_seeder() {
                    self.inner
                        .runtime
                        .attach_seeded(&feeding, self.inner.config.subscription_buffer, true)
                        .map_err(|e| self.seed_error(&c.name, e))?
                } else {
                    self.inner
                        .runtime
                        .attach(&feeding, self.inner.config.subscription_buffer, true)
                };
                SinkRunner::start(
                    &self.inner.io_handle,
                    c.name.clone(),
                    sink,
                    rx,
                    metrics.clone(),
                    self.inner.failures.clone(),
                    self.inner.durability.clone(),
                )
            }
            None => SinkRunner::none(),
        };
        let pending = PendingInputs {
            name: c.name.clone(),
            targets: node
                .iter()
                .map(|n| (n.clone(), sink_inputs.clone()))
                .collect(),
            seeded,
        };
        catalog.sinks.insert(
            c.name.clone(),
            SinkEntry {
                name: c.name.clone(),
                sql: sql.to_string(),
                input,
                reads,
                node,
                connector: c.connector,
                metrics,
                runner,
            },
        );
        drop(catalog);
        self.connect_pending(pending)?;
        Ok(c.name)
    }

    fn drop_object(
        &self,
        kind: ObjectKind,
        name: &str,
        if_exists: bool,
        cascade: bool,
    ) -> Result<String, DbError> {
        let kind_name = match kind {
            ObjectKind::Source => "source",
            ObjectKind::Stream => "stream",
            ObjectKind::Sink => "sink",
            ObjectKind::Table => "table",
            ObjectKind::MaterializedView => "materialized view",
        };
        let catalog = self.inner.catalog.read();
        let exists = match kind {
            ObjectKind::Source => catalog.sources.contains_key(name),
            ObjectKind::Stream => catalog
                .streams
                .get(name)
                .is_some_and(|s| s.query_id.is_none() && s.view.is_none()),
            ObjectKind::Sink => catalog.sinks.contains_key(name),
            ObjectKind::Table => catalog.tables.contains_key(name),
            ObjectKind::MaterializedView => {
                catalog.streams.get(name).is_some_and(|s| s.view.is_some())
            }
        };
        if !exists && let Some(actual) = catalog.kind_of(name) {
            return Err(SqlError::Invalid(format!(
                "'{name}' is a {actual}, not a {kind_name}: drop it with DROP {}",
                actual.to_uppercase()
            ))
            .into());
        }
        if !exists {
            if if_exists {
                return Ok(name.to_string());
            }
            let candidates: Vec<String> = match kind {
                ObjectKind::Source => catalog.sources.keys().cloned().collect(),
                ObjectKind::Stream => catalog
                    .streams
                    .iter()
                    .filter(|(_, s)| s.query_id.is_none())
                    .map(|(k, _)| k.clone())
                    .collect(),
                ObjectKind::Sink => catalog.sinks.keys().cloned().collect(),
                ObjectKind::Table => catalog.tables.keys().cloned().collect(),
                ObjectKind::MaterializedView => catalog
                    .streams
                    .values()
                    .filter(|s| s.view.is_some())
                    .map(|s| s.name.clone())
                    .collect(),
            };
            return Err(DbError::NotFound {
                kind: kind_name,
                name: name.to_string(),
                suggestion: did_you_mean(name, candidates.iter().map(String::as_str)),
            });
        }
        let dependents = catalog.dependents(name);
        let deep = catalog.dependents_deep(name);
        drop(catalog);
        if cascade && kind != ObjectKind::MaterializedView {
            return Err(SqlError::not_supported(
                format!("DROP {} ... CASCADE", kind.keyword()),
                Some("CASCADE drops materialized views; drop the dependants first"),
            )
            .into());
        }
        if !dependents.is_empty() {
            if cascade {
                for dependent in deep {
                    self.remove_dependent(&dependent);
                }
                self.remove_object(name);
                return Ok(name.to_string());
            }
            return Err(DbError::HasDependents {
                kind: kind_name,
                name: name.to_string(),
                dependents,
            });
        }
        self.remove_object(name);
        Ok(name.to_string())
    }

    /// Stops a stream's nodes: its output node and its parallel instances.
    fn remove_stream_nodes(&self, stream: &StreamEntry) {
        // Upstream first: the exchange stops routing before its instances go.
        for (node, _) in stream.exchanges.iter().chain(&stream.instances) {
            self.inner.runtime.remove_node(node);
        }
        self.inner.runtime.remove_node(&stream.node);
        if let Some(view) = &stream.view {
            self.inner.runtime.remove_node(&view.node);
        }
    }

    /// Removes an object found by [`crate::catalog::Catalog::dependents_deep`]: a query is
    /// cancelled, anything else dropped.
    fn remove_dependent(&self, name: &str) {
        match name
            .strip_prefix("__query_")
            .and_then(|id| id.parse::<u64>().ok())
        {
            Some(id) => {
                let _ = self.cancel_query(id);
            }
            None => self.remove_object(name),
        }
    }

    /// Connects a new stream's inputs, once everything reading its output is in place (a
    /// reader of a view receives the view's contents at once). On failure the stream is
    /// removed again.
    fn connect_pending(&self, pending: PendingInputs) -> Result<(), DbError> {
        let runtime = &self.inner.runtime;
        for (node, upstreams) in &pending.targets {
            if !pending.seeded {
                runtime.connect_inputs(node, upstreams);
                continue;
            }
            if let Err(e) = runtime.connect_inputs_seeded(node, upstreams) {
                self.remove_object(&pending.name);
                return Err(self.seed_error(&pending.name, e));
            }
        }
        Ok(())
    }

    /// The error of a new reader of a view that could not be given the view's contents.
    fn seed_error(&self, name: &str, e: laminar_core::CoreError) -> DbError {
        DbError::Engine(format!(
            "'{name}' cannot start from the contents of the materialized view it reads: {e}"
        ))
    }

    /// Removes an object (no dependency checks) and stops what runs for it.
    fn remove_object(&self, name: &str) {
        let mut catalog = self.inner.catalog.write();
        if let Some(source) = catalog.sources.remove(name) {
            if let Some(runner) = &source.runner {
                runner.stop();
            }
            self.inner.runtime.remove_node(&source.node);
        } else if let Some(stream) = catalog.streams.remove(name) {
            stream.active.store(false, Ordering::SeqCst);
            self.remove_stream_nodes(&stream);
            // Its LATE DATA TO stream goes with it.
            let side: Vec<String> = catalog
                .streams
                .values()
                .filter(|s| s.side_output_of.as_deref() == Some(name))
                .map(|s| s.name.clone())
                .collect();
            for side in side {
                if let Some(s) = catalog.streams.remove(&side) {
                    self.remove_stream_nodes(&s);
                }
            }
        } else if let Some(table) = catalog.tables.remove(name) {
            // Lookups hold their own reference until they stop; its changelog stops now.
            drop(catalog);
            self.retire_table(table);
        } else if let Some(sink) = catalog.sinks.remove(name) {
            sink.runner.stop();
            if let Some(node) = &sink.node {
                self.inner.runtime.remove_node(node);
            }
            drop(catalog);
            sink.runner.wait(Duration::from_secs(5));
        }
    }

    async fn insert(
        &self,
        table: &str,
        columns: &[String],
        source: &Query,
    ) -> Result<u64, DbError> {
        if self.inner.catalog.read().tables.contains_key(table) {
            return self.insert_into_table(table, columns, source).await;
        }
        let handle = self.source_untyped(table).map_err(|e| match e {
            DbError::NotFound {
                name, suggestion, ..
            } => DbError::NotFound {
                kind: "source",
                name,
                suggestion,
            },
            other => other,
        })?;
        let plan = {
            let catalog = self.inner.catalog.read();
            self.inner.planner.plan_insert(source, &*catalog)?
        };
        let schema = handle.schema();
        let batch = self
            .inner
            .planner
            .evaluate_insert(table, &schema, columns, plan)
            .await?;
        let rows = batch.num_rows() as u64;
        handle.push_arrow(batch)?;
        Ok(rows)
    }

    fn show(&self, kind: ShowKind) -> Result<RecordBatch, DbError> {
        let catalog = self.inner.catalog.read();
        let strings = |v: Vec<String>| Arc::new(StringArray::from(v)) as ArrayRef;
        match kind {
            ShowKind::Sources => single_column("name", catalog.sources.keys().cloned().collect()),
            ShowKind::Streams => single_column(
                "name",
                catalog
                    .streams
                    .values()
                    .filter(|s| s.query_id.is_none() && s.view.is_none())
                    .map(|s| s.name.clone())
                    .collect(),
            ),
            ShowKind::Sinks => single_column("name", catalog.sinks.keys().cloned().collect()),
            ShowKind::Tables => {
                drop(catalog);
                self.show_tables()
            }
            ShowKind::MaterializedViews => {
                let views: Vec<&StreamEntry> = catalog
                    .streams
                    .values()
                    .filter(|s| s.view.is_some())
                    .collect();
                batch(
                    &[
                        ("view_name", DataType::Utf8),
                        ("sql", DataType::Utf8),
                        ("state", DataType::Utf8),
                    ],
                    vec![
                        strings(views.iter().map(|s| s.name.clone()).collect()),
                        strings(views.iter().map(|s| s.sql.clone()).collect()),
                        strings(views.iter().map(|s| crate::views::view_state(s)).collect()),
                    ],
                )
            }
            ShowKind::Queries => {
                let mut rows: Vec<(u64, String, bool)> = catalog
                    .streams
                    .values()
                    .filter_map(|s| {
                        s.query_id
                            .map(|id| (id, s.sql.clone(), s.active.load(Ordering::SeqCst)))
                    })
                    .collect();
                rows.extend(
                    catalog
                        .finished_queries
                        .iter()
                        .map(|(id, sql)| (*id, sql.clone(), false)),
                );
                rows.sort_by_key(|r| r.0);
                batch(
                    &[
                        ("query_id", DataType::UInt64),
                        ("sql", DataType::Utf8),
                        ("active", DataType::Boolean),
                    ],
                    vec![
                        Arc::new(UInt64Array::from(
                            rows.iter().map(|r| r.0).collect::<Vec<_>>(),
                        )),
                        strings(rows.iter().map(|r| r.1.clone()).collect()),
                        Arc::new(BooleanArray::from(
                            rows.iter().map(|r| r.2).collect::<Vec<_>>(),
                        )),
                    ],
                )
            }
        }
    }
}

/// The inputs of a stream just installed, connected by `connect_pending` once its readers
/// are attached.
pub(crate) struct PendingInputs {
    name: String,
    /// Each node reading upstreams, with the upstreams it reads in input order.
    targets: Vec<(
        Arc<laminar_core::runtime::Node>,
        Vec<Arc<laminar_core::runtime::Node>>,
    )>,
    /// Readers of materialized views start from their contents.
    seeded: bool,
}

/// Connector options merged with the `FORMAT x WITH (...)` options (a key given in both is an
/// error).
pub(crate) fn connector_options(
    object: &str,
    spec: &laminar_sql::parser::ConnectorSpec,
    format: Option<&laminar_sql::parser::ConnectorSpec>,
) -> Result<ConnectorOptions, DbError> {
    let mut options =
        ConnectorOptions::from_pairs(spec.options.iter().map(|(k, v)| (k.as_str(), v.clone())))
            .for_object(object);
    for (key, value) in format.map(|f| f.options.as_slice()).unwrap_or_default() {
        if options.insert(key, value.clone()).is_some() {
            return Err(SqlError::Invalid(format!(
                "option '{key}' of '{object}' is given both in the connector options and in FORMAT ... WITH"
            ))
            .into());
        }
    }
    Ok(options)
}

/// `SELECT * FROM name WHERE filter` as an AST.
fn select_star_where(name: &str, filter: &Expr) -> Result<Query, DbError> {
    let sql = format!(
        "SELECT * FROM \"{}\" WHERE {filter}",
        name.replace('"', "\"\"")
    );
    match laminar_sql::parse_statement(&sql)? {
        StreamingStatement::Query { query, .. } => Ok(*query),
        _ => Err(DbError::Engine(
            "sink filter did not parse as a query".into(),
        )),
    }
}

/// Adds `filter` to the WHERE clause of a simple SELECT (or wraps the query).
fn wrap_where(query: &mut Query, filter: &Expr) -> Result<(), DbError> {
    let sql = format!("SELECT * FROM ({query}) AS sink_input WHERE {filter}");
    match laminar_sql::parse_statement(&sql)? {
        StreamingStatement::Query { query: q, .. } => {
            *query = *q;
            Ok(())
        }
        _ => Err(DbError::Engine(
            "sink filter did not parse as a query".into(),
        )),
    }
}

pub(crate) fn single_column(name: &str, values: Vec<String>) -> Result<RecordBatch, DbError> {
    batch(
        &[(name, DataType::Utf8)],
        vec![Arc::new(StringArray::from(values))],
    )
}

pub(crate) fn batch(
    fields: &[(&str, DataType)],
    columns: Vec<ArrayRef>,
) -> Result<RecordBatch, DbError> {
    let schema = Schema::new(
        fields
            .iter()
            .map(|(n, t)| Field::new(*n, t.clone(), true))
            .collect::<Vec<_>>(),
    );
    RecordBatch::try_new(Arc::new(schema), columns).map_err(|e| DbError::Engine(e.to_string()))
}

/// Compiles a SQL predicate over `schema` (subscription filters).
pub(crate) fn compile_predicate(
    planner: &Planner,
    schema: &SchemaRef,
    predicate: &str,
) -> Result<Step, DbError> {
    struct One(SchemaRef);
    impl SchemaCatalog for One {
        fn relation(&self, name: &str) -> Option<laminar_sql::plan::RelationInfo> {
            (name == "subscription_input").then(|| laminar_sql::plan::RelationInfo {
                schema: self.0.clone(),
                event_time: None,
                keyed_watermark: None,
                table: None,
                view: None,
            })
        }
        fn relation_names(&self) -> Vec<String> {
            vec!["subscription_input".into()]
        }
    }
    const PREFIX: &str = "SELECT * FROM subscription_input WHERE ";
    let invalid = |detail: String| -> DbError {
        SqlError::Invalid(format!("subscription filter '{predicate}': {detail}")).into()
    };
    let sql = format!("{PREFIX}{predicate}");
    let parsed = laminar_sql::parse_statement(&sql).map_err(|e| {
        // Positions count in the filter, not in the query wrapped around it.
        let message = e.to_string();
        let relative = message
            .split_once("line 1, column ")
            .and_then(|(before, rest)| {
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                let column = digits.parse::<usize>().ok()?.checked_sub(PREFIX.len())?;
                Some(format!("{before}column {column}{}", &rest[digits.len()..]))
            });
        invalid(relative.unwrap_or(message))
    })?;
    let StreamingStatement::Query { query, .. } = parsed else {
        return Err(invalid("not an expression".into()));
    };
    let plan = planner
        .plan_query(&query, &StreamingClauses::default(), &One(schema.clone()))
        .map_err(|e| match e {
            // Names the column and the valid ones, with its own error code.
            SqlError::UnknownColumn { .. } => e.into(),
            other => invalid(other.to_string()),
        })?;
    let chain = plan.chains.into_iter().next().unwrap_or_default();
    chain
        .into_iter()
        .find(|s| matches!(s, Step::Filter(_)))
        .ok_or_else(|| {
            SqlError::Invalid(format!(
                "subscription filter '{predicate}' is not a predicate"
            ))
            .into()
        })
}

/// Runs a bounded query (no streaming relations) with DataFusion.
pub(crate) async fn bounded_query(db: &LaminarDB, sql: &str) -> Result<Vec<RecordBatch>, DbError> {
    db.ensure_open()?;
    let sql = substitute_vars(sql, &db.inner.config.config_vars)?;
    let statements = split_statements(&sql);
    let [text] = statements.as_slice() else {
        return Err(DbError::InvalidOperation(
            "query() takes exactly one SELECT".into(),
        ));
    };
    let StreamingStatement::Query { query, clauses } = parse_script_statement(text)? else {
        return Err(DbError::InvalidOperation(
            "query() takes a SELECT; use execute() for other statements".into(),
        ));
    };
    if let Some(point) = db.point_query(&query, &clauses) {
        return point.run().map(|rows| vec![rows]);
    }
    let Some(snapshot) = db.snapshot_plan(&query)? else {
        return Err(DbError::InvalidOperation(
            "this query reads a source or stream, which is unbounded: run it with execute() to get a continuous QueryHandle".into(),
        ));
    };
    // Tables, materialized views and constants only: a snapshot query.
    db.run_snapshot(snapshot, false).await
}

/// Delivers too-late rows to the `LATE DATA TO` stream's queue without blocking the worker.
struct LateStream {
    input: SourceInput,
}

impl LateRows for LateStream {
    fn deliver(&mut self, batch: RecordBatch) -> Result<(), String> {
        self.input
            .try_send(Message::Batch(batch))
            .map_err(|_| "the side-output stream's queue is full".to_string())
    }
}

/// Default ingestion queue length (batches) of a connector source.
const CONNECTOR_QUEUE_BATCHES: usize = 16;

/// How the rows of a stream are split over its parallel instances.
pub(crate) struct Partitioning {
    /// One hash exchange per entry: the key expressions it hashes, over the schema they
    /// read (the output of the input chain(s) the exchange runs). One entry reads every
    /// input of the stream; a join has one per side, each reading its own input.
    pub(crate) exchanges: Vec<(
        Vec<Arc<dyn datafusion::physical_expr::PhysicalExpr>>,
        SchemaRef,
    )>,
    /// What the key is, for `EXPLAIN`.
    pub(crate) key: &'static str,
}

impl Partitioning {
    fn one(
        keys: Vec<Arc<dyn datafusion::physical_expr::PhysicalExpr>>,
        schema: SchemaRef,
        key: &'static str,
    ) -> Partitioning {
        Partitioning {
            exchanges: vec![(keys, schema)],
            key,
        }
    }
}

/// What the parallel instances of one stream share.
#[derive(Default)]
pub(crate) struct InstanceShared {
    /// The partitions a parallel top-N holds over all its instances (`max_partitions`).
    topn_partitions: Arc<std::sync::atomic::AtomicU64>,
}

/// Parallel instances of a stream's operator: one per worker when it is an aggregation by
/// keys, a top-N or an analytic query with `PARTITION BY`, or an updating equi-join (a hash
/// exchange routes each row to the instance of its key), otherwise one.
pub(crate) fn parallel_instances(plan: &StreamPlan, workers: usize) -> usize {
    match partition_keys(plan) {
        Some(_) => workers.max(1),
        None => 1,
    }
}

/// What the rows of a stream are split over parallel instances by. `None` when the stream
/// runs as one instance: a stateless query, an unpartitioned operator, a join other than a
/// single updating equi-join of two inputs (a `NOT IN` anti join reads every right row for
/// its NULL rule), or a staged query (its stage and top run in one node).
pub(crate) fn partition_keys(plan: &StreamPlan) -> Option<Partitioning> {
    if !plan.stages.is_empty() {
        return None;
    }
    if let Some(j) = &plan.join {
        let [step] = &j.steps[..] else {
            return None;
        };
        let splittable = matches!(
            step.kind,
            laminar_core::operator::join::JoinKind::Updating {
                null_aware: false,
                ..
            }
        );
        // Over a changelog an update that changes a row's key would send its delete to one
        // instance and its insert to another, and the join's retraction of the old match
        // and its new match could then reach readers in either order: one instance.
        if !splittable
            || j.append_only != [true, true]
            || step.left_keys.is_empty()
            || plan.chains.len() != 2
            || j.relations != [0, 1]
        {
            return None;
        }
        return Some(Partitioning {
            exchanges: vec![
                (step.left_keys.clone(), step.left_schema.clone()),
                (step.right_keys.clone(), step.right_schema.clone()),
            ],
            key: "join keys (one exchange per join side)",
        });
    }
    if let Some(t) = &plan.topn {
        // (An update moving a row to another partition over a changelog: as for joins.)
        return (!t.partition_by.is_empty() && t.append_only).then(|| {
            Partitioning::one(
                t.partition_by.clone(),
                t.input_schema.clone(),
                "partition keys",
            )
        });
    }
    if let Some(a) = &plan.analytic {
        return (!a.partition_by.is_empty()).then(|| {
            Partitioning::one(
                a.partition_by.clone(),
                a.input_schema.clone(),
                "partition keys",
            )
        });
    }
    let a = plan.aggregate.as_ref().filter(|a| !a.keys.is_empty())?;
    Some(match &a.keyed_watermark {
        // Keyed watermarks: split by the watermark key, so each key's clock sees every
        // row of that key.
        Some((index, _)) => Partitioning::one(
            vec![a.keys[*index].clone()],
            a.input_schema.clone(),
            "watermark key",
        ),
        None => Partitioning::one(a.keys.clone(), a.input_schema.clone(), "group keys"),
    })
}

/// An option key as matched: lowercase, `-` as `_`.
pub(crate) fn normalized_option(key: &str) -> String {
    key.to_ascii_lowercase().replace('-', "_")
}

/// Keyed-watermark and alignment options (SPEC 3), which a source also accepts among its
/// connector's options.
pub(crate) fn is_time_option(key: &str) -> bool {
    key.starts_with("alignment.")
        || matches!(
            key,
            "watermark.key" | "watermark.max_keys" | "watermark.eviction"
        )
}

/// True when the source reads through the FILES connector.
pub(crate) fn reads_files(c: &CreateSource) -> bool {
    c.connector
        .as_ref()
        .is_some_and(|spec| spec.name.eq_ignore_ascii_case("files"))
}

/// The alignment group FILES sources with a watermark join unless they name their own.
pub(crate) const FILES_ALIGNMENT_GROUP: &str = "files (default)";
/// Drift of the default FILES alignment group: 10 s of event time.
const FILES_ALIGNMENT_DRIFT_MS: i64 = 10_000;

/// `alignment.*` source options as written, validated together by [`AlignmentOptions::finish`].
#[derive(Debug, Default)]
struct AlignmentOptions {
    group: Option<String>,
    max_drift_ms: Option<i64>,
    mode: Option<AlignmentMode>,
}

impl AlignmentOptions {
    fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        match key {
            "alignment.group" => {
                let name = value.trim();
                if name.is_empty() {
                    return Err("expected a group name".into());
                }
                self.group = Some(name.to_ascii_lowercase());
            }
            "alignment.max_drift" => {
                let drift = laminar_connectors::parse_duration(value)?;
                if drift.is_zero() {
                    return Err("the drift must be positive".into());
                }
                self.max_drift_ms = Some(drift.as_millis().min(i64::MAX as u128) as i64);
            }
            _ => {
                self.mode = Some(
                    AlignmentMode::parse(value)
                        .ok_or_else(|| "expected pause, warn or drop".to_string())?,
                );
            }
        }
        Ok(())
    }

    /// The group, drift and mode, or `None` when the source joins no group.
    fn finish(
        self,
        source: &str,
        has_event_time: bool,
    ) -> Result<Option<(String, i64, AlignmentMode)>, DbError> {
        let Some(group) = self.group else {
            if self.max_drift_ms.is_some() || self.mode.is_some() {
                return Err(SqlError::Invalid(format!(
                    "alignment.max_drift and alignment.mode in source '{source}' need alignment.group = '<name>'"
                ))
                .into());
            }
            return Ok(None);
        };
        if !has_event_time {
            return Err(SqlError::Invalid(format!(
                "alignment.group in source '{source}' needs a WATERMARK FOR clause: alignment compares watermarks"
            ))
            .into());
        }
        let Some(max_drift_ms) = self.max_drift_ms else {
            return Err(SqlError::Invalid(format!(
                "alignment.group = '{group}' in source '{source}' needs alignment.max_drift (for example '5 minutes')"
            ))
            .into());
        };
        Ok(Some((group, max_drift_ms, self.mode.unwrap_or_default())))
    }
}

/// Refuses object names with `[` or `]`: the runtime and checkpoints name an object's
/// parts `name[part]` (`v[view]`, `s[0]`, `t[changes]`), so such a name could be taken
/// for a part of another object.
fn check_object_name(name: &str) -> Result<(), DbError> {
    if name.contains(['[', ']']) {
        return Err(SqlError::Invalid(format!(
            "the name '{name}' contains '[' or ']', which object names cannot hold: LaminarDB names the parts of an object `name[part]`"
        ))
        .into());
    }
    Ok(())
}
