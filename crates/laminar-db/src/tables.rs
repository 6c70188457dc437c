//! Reference tables (`CREATE TABLE`): creation, upserting `INSERT`, `DELETE` by primary
//! key, `SHOW TABLES` and snapshot queries. The rows live in a
//! [`laminar_core::table::TableStore`] that lookup joins read directly.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arrow::array::{Array, ArrayRef, RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use laminar_core::message::{END_OF_TIME, Message, OP_COLUMN};
use laminar_core::metrics::NodeMetrics;
use laminar_core::operator::{Operator, ViewOperator, ViewStore};
use laminar_core::table::{TableRef, TableStore};
use laminar_sql::error::SqlError;
use laminar_sql::parser::CreateTable;
use sqlparser::ast::{BinaryOperator, Expr, Query};

use crate::LaminarDB;
use crate::error::DbError;
use crate::execute::batch;

/// A declared table.
pub(crate) struct TableEntry {
    pub(crate) name: String,
    pub(crate) sql: String,
    pub(crate) primary_key: Vec<String>,
    pub(crate) store: TableRef,
    /// The connector it is read from (`FROM FILES (...)`), if any.
    pub(crate) connector: Option<String>,
    /// Stops a watching connector's reader when the table is dropped.
    pub(crate) stop: Arc<AtomicBool>,
    /// Its changelog, from the first continuous query that reads the table other than by a
    /// lookup join.
    pub(crate) feed: Option<TableFeed>,
    /// The rows restored from a checkpoint, kept until `start()`: queries re-created from
    /// the same checkpoint hold state computed from them, so a changelog started before
    /// `start()` starts from them and first delivers what writes since have changed.
    pub(crate) checkpointed: Option<RecordBatch>,
}

/// A table's changelog in the running pipeline: every write's changes enter the queue of
/// the source node `<table>[changes]`; the node `<table>[rows]` keeps a copy of the rows
/// they add up to, so that a new reader starts from the rows and then reads every later
/// change, as the reader of a materialized view does. Checkpoints save the table's rows
/// and put their barrier into the queue at the same point between writes
/// ([`TableStore::snapshot_bytes_then`]); after a restart the copy is rebuilt from the
/// restored rows.
pub(crate) struct TableFeed {
    pub(crate) source: Arc<laminar_core::runtime::Node>,
    pub(crate) input: laminar_core::runtime::SourceInput,
    pub(crate) rows: crate::catalog::ViewEntry,
    /// False while a recovering database has not started: changes wait in the queue until
    /// every query re-created from the checkpoint is connected.
    pub(crate) open: Arc<AtomicBool>,
}

/// The operator of `<table>[changes]`: passes the table's changes on, holding them while
/// its gate is closed.
struct TableChanges {
    schema: arrow::datatypes::SchemaRef,
    open: Arc<AtomicBool>,
}

impl Operator for TableChanges {
    fn output_schema(&self) -> arrow::datatypes::SchemaRef {
        self.schema.clone()
    }

    fn on_batch(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        out: &mut Vec<Message>,
    ) -> laminar_core::error::Result<()> {
        out.push(Message::Batch(batch));
        Ok(())
    }

    fn on_watermark(
        &mut self,
        watermark: i64,
        out: &mut Vec<Message>,
    ) -> laminar_core::error::Result<()> {
        out.push(Message::Watermark(watermark));
        Ok(())
    }

    fn on_barrier(
        &mut self,
        epoch: u64,
        out: &mut Vec<Message>,
    ) -> laminar_core::error::Result<()> {
        out.push(Message::Barrier(epoch));
        Ok(())
    }

    fn on_end(&mut self, _out: &mut Vec<Message>) -> laminar_core::error::Result<()> {
        Ok(())
    }

    fn paused(&self) -> bool {
        !self.open.load(Ordering::Acquire)
    }
}

impl Drop for TableEntry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Rows per poll of a table's connector.
const POLL_ROWS: usize = 8192;

/// Reads a connector into a table until it ends or has nothing more for now; returns
/// whether it ended.
fn load(
    name: &str,
    connector: &mut Box<dyn laminar_connectors::SourceConnector>,
    store: &TableStore,
) -> Result<bool, String> {
    loop {
        match connector.poll_batch(POLL_ROWS).map_err(|e| e.to_string())? {
            laminar_connectors::SourcePoll::Batch(batch) => {
                let rows = crate::ingest::validate_batch(name, store.schema(), None, &batch)
                    .map_err(|e| e.to_string())?;
                upsert_checked(name, store, &rows).map_err(|e| e.to_string())?;
            }
            laminar_connectors::SourcePoll::Pending => return Ok(false),
            laminar_connectors::SourcePoll::End => return Ok(true),
        }
    }
}

impl LaminarDB {
    pub(crate) async fn create_table(&self, c: CreateTable, sql: &str) -> Result<String, DbError> {
        if !self.not_exists_or(&c.name, "table", c.if_not_exists, c.or_replace)? {
            return Ok(c.name);
        }
        let schema = self.inner.planner.build_schema(&c.columns)?;
        let mut max_rows = None;
        for (key, value) in &c.options {
            match key.to_lowercase().as_str() {
                "max_rows" => {
                    let n: usize = value.trim().parse().ok().filter(|n| *n > 0).ok_or_else(
                        || {
                            SqlError::Invalid(format!(
                                "table '{}': max_rows must be a positive integer, got '{value}'",
                                c.name
                            ))
                        },
                    )?;
                    max_rows = Some(n);
                }
                other => {
                    return Err(SqlError::Invalid(format!(
                        "unknown table option '{other}' (tables take max_rows)"
                    ))
                    .into());
                }
            }
        }
        let mut key_columns = Vec::new();
        for k in &c.primary_key {
            let index = schema.index_of(k).map_err(|_| SqlError::UnknownColumn {
                column: k.clone(),
                suggestion: laminar_sql::error::did_you_mean(
                    k,
                    schema.fields().iter().map(|f| f.name().as_str()),
                ),
                valid: schema.fields().iter().map(|f| f.name().clone()).collect(),
            })?;
            if key_columns.contains(&index) {
                return Err(SqlError::Invalid(format!(
                    "table '{}': column '{k}' appears twice in the primary key",
                    c.name
                ))
                .into());
            }
            key_columns.push(index);
        }
        // Primary-key columns are NOT NULL.
        let fields: Vec<Field> = schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let field = f.as_ref().clone();
                if key_columns.contains(&i) {
                    field.with_nullable(false)
                } else {
                    field
                }
            })
            .collect();
        let schema = Arc::new(Schema::new(fields));
        let store = Arc::new(
            TableStore::new(&c.name, schema.clone(), key_columns, max_rows)
                .map_err(|e| SqlError::Invalid(e.to_string()))?,
        );
        let mut checkpointed = None;
        if let Some(rows) = self.restore_object("table", &c.name, sql, &[])?.table {
            store.restore_bytes(&rows).map_err(|e| {
                DbError::Checkpoint(format!(
                    "table '{}': cannot restore its checkpointed rows: {e}",
                    c.name
                ))
            })?;
            // Until start(), queries re-created from the checkpoint read the table's
            // changelog from these rows (see `ensure_table_feed`).
            checkpointed = Some(
                store
                    .snapshot()
                    .map_err(|e| DbError::Engine(e.to_string()))?,
            );
        }
        let stop = Arc::new(AtomicBool::new(false));
        if c.format.is_some() && c.connector.is_none() {
            return Err(
                SqlError::Invalid("FORMAT needs a connector (FROM FILES (...))".into()).into(),
            );
        }
        if let Some(spec) = c
            .connector
            .as_ref()
            .filter(|s| s.name != "FILES" && s.name != "FILE")
        {
            return Err(SqlError::not_supported(
                format!("tables read from the {} connector", spec.name),
                Some("a table is filled by INSERT, the Rust API (LaminarDB::table) or FROM FILES (...)"),
            )
            .into());
        }
        if let Some(spec) = &c.connector {
            // The rows present now are loaded before CREATE TABLE returns, so no lookup
            // sees a half-loaded table; a watching connector keeps upserting afterwards.
            let options = crate::execute::connector_options(&c.name, spec, c.format.as_ref())?;
            let format = c.format.as_ref().map(|f| f.name.as_str());
            let mut connector =
                laminar_connectors::create_source(&spec.name, &options, format, schema.clone())
                    .map_err(|source| DbError::Connector {
                        object: c.name.clone(),
                        source: Box::new(source),
                    })?;
            let (name, target) = (c.name.clone(), store.clone());
            let (connector, ended) = self
                .inner
                .io_handle
                .spawn_blocking(move || {
                    let ended = load(&name, &mut connector, &target);
                    (connector, ended)
                })
                .await
                .map_err(|e| DbError::Engine(e.to_string()))?;
            let ended = ended.map_err(|detail| DbError::InsertError {
                object: c.name.clone(),
                detail: format!(
                    "loading from {}: {detail}; the table was not created",
                    spec.name
                ),
            })?;
            if !ended {
                let (name, target, stop, failures) = (
                    c.name.clone(),
                    store.clone(),
                    stop.clone(),
                    self.inner.failures.clone(),
                );
                let mut connector = connector;
                self.inner.io_handle.spawn_blocking(move || {
                    while !stop.load(Ordering::SeqCst) {
                        match load(&name, &mut connector, &target) {
                            Ok(true) => break,
                            Ok(false) => std::thread::sleep(Duration::from_millis(50)),
                            Err(message) => {
                                tracing::error!(table = %name, %message, "table reader failed");
                                failures.lock().push(format!("table '{name}': {message}"));
                                break;
                            }
                        }
                    }
                    let _ = connector.close();
                });
            }
        }
        if c.or_replace {
            let replaced = self.inner.catalog.write().tables.remove(&c.name);
            if let Some(replaced) = replaced {
                self.retire_table(replaced);
            }
        }
        self.inner.catalog.write().tables.insert(
            c.name.clone(),
            TableEntry {
                name: c.name.clone(),
                sql: sql.to_string(),
                primary_key: c.primary_key.clone(),
                store,
                connector: c.connector.as_ref().map(|s| s.name.clone()),
                stop,
                feed: None,
                checkpointed,
            },
        );
        Ok(c.name)
    }

    /// Starts the changelog of table `name` (nothing for another relation, or a table whose
    /// changelog runs already).
    pub(crate) fn ensure_table_feed(
        &self,
        catalog: &mut crate::catalog::Catalog,
        name: &str,
    ) -> Result<(), DbError> {
        let Some(table) = catalog.tables.get_mut(name) else {
            return Ok(());
        };
        if table.feed.is_some() {
            return Ok(());
        }
        let runtime = &self.inner.runtime;
        let store = table.store.clone();
        if store.schema().column_with_name(OP_COLUMN).is_some() {
            return Err(SqlError::Invalid(format!(
                "table '{name}' has a column named {OP_COLUMN}, which its changelog adds: rename the column to read the table as a changelog"
            ))
            .into());
        }
        let schema = store.changes_schema();
        let source_name = format!("{name}[changes]");
        let source_metrics = Arc::new(NodeMetrics::default());
        // Before start(), a restored table's changelog waits for the re-created queries.
        let open = Arc::new(AtomicBool::new(table.checkpointed.is_none()));
        let operator = TableChanges {
            schema: schema.clone(),
            open: open.clone(),
        };
        let (source, input) = runtime.add_source(
            &source_name,
            Box::new(operator),
            source_metrics,
            // Room for the first watermark and a restored table's catch-up before start().
            self.inner.config.buffer_size.max(64),
        );
        // A table's changes hold back no event time.
        let started = input
            .send_blocking(Message::Watermark(END_OF_TIME))
            .map_err(|e| DbError::Engine(format!("table '{name}': {e}")));
        let key = table.primary_key.clone();
        let rows = ViewStore::new(&format!("{name}[rows]"), &schema, None, Some(&key))
            .map_err(|e| DbError::Engine(e.to_string()));
        let rows = match started.and(rows) {
            Ok(rows) => rows,
            Err(e) => {
                runtime.remove_node(&source);
                return Err(e);
            }
        };
        let rows_metrics = Arc::new(NodeMetrics::default());
        let rows_node = runtime.add_node(
            &format!("{name}[rows]"),
            Box::new(ViewOperator::mirror(rows.clone(), schema.clone())),
            rows_metrics.clone(),
            std::slice::from_ref(&source),
        );
        crate::views::seed_readers_from(&rows_node, rows.clone());
        let feed_input = input.clone();
        let table_name = name.to_string();
        let send = move |changes: RecordBatch| {
            feed_input
                .send_blocking(Message::Batch(changes))
                .map_err(|_| {
                    laminar_core::CoreError::Internal(format!(
                        "table '{table_name}' changed, but the queries reading it have stopped"
                    ))
                })
        };
        let checkpointed = table.checkpointed.clone();
        let catch_up = send.clone();
        let started = store.set_change_feed(Some(Box::new(send)), |current| match &checkpointed {
            None => rows.apply(&with_insert_ops(&schema, current)?),
            Some(restored) => {
                // Start from the checkpoint; the writes since come first in the queue.
                rows.apply(&with_insert_ops(&schema, restored)?)?;
                let changes = changes_between(&store, restored, current)?;
                if changes.num_rows() > 0 {
                    catch_up(changes)?;
                }
                Ok(())
            }
        });
        if let Err(e) = started {
            runtime.remove_node(&rows_node);
            runtime.remove_node(&source);
            return Err(DbError::Engine(format!("table '{name}': {e}")));
        }
        table.feed = Some(TableFeed {
            source,
            input,
            rows: crate::catalog::ViewEntry {
                node: rows_node,
                metrics: rows_metrics,
                store: rows,
            },
            open,
        });
        Ok(())
    }

    /// At `start()`: the changelogs of restored tables flow, and their checkpointed rows
    /// are dropped.
    pub(crate) fn open_table_feeds(&self) {
        let mut catalog = self.inner.catalog.write();
        for table in catalog.tables.values_mut() {
            table.checkpointed = None;
            if let Some(feed) = &table.feed
                && !feed.open.swap(true, Ordering::AcqRel)
            {
                self.inner.runtime.wake(&feed.source);
            }
        }
    }

    /// Stops what runs for a dropped or replaced table: its changelog. Call it without the
    /// catalog lock (a write may be waiting for room in the changelog's queue).
    pub(crate) fn retire_table(&self, table: TableEntry) {
        if let Some(feed) = &table.feed {
            table.store.clear_change_feed();
            self.inner.runtime.remove_node(&feed.rows.node);
            self.inner.runtime.remove_node(&feed.source);
        }
    }

    /// `INSERT INTO table ...`: upserts the rows (all or nothing).
    pub(crate) async fn insert_into_table(
        &self,
        table: &str,
        columns: &[String],
        source: &Query,
    ) -> Result<u64, DbError> {
        let (store, plan) = {
            let catalog = self.inner.catalog.read();
            let store = catalog
                .tables
                .get(table)
                .map(|t| t.store.clone())
                .ok_or_else(|| DbError::Engine(format!("table '{table}' vanished")))?;
            (store, self.inner.planner.plan_insert(source, &*catalog)?)
        };
        let rows = self
            .inner
            .planner
            .evaluate_insert(table, store.schema(), columns, plan)
            .await?;
        upsert_checked(table, &store, &rows)?;
        Ok(rows.num_rows() as u64)
    }

    /// `DELETE FROM table WHERE pk = value [AND ...]`.
    pub(crate) async fn delete_from_table(
        &self,
        table: &str,
        selection: Option<&Expr>,
    ) -> Result<u64, DbError> {
        let (store, primary_key) = {
            let catalog = self.inner.catalog.read();
            match catalog.tables.get(table) {
                Some(t) => (t.store.clone(), t.primary_key.clone()),
                None => {
                    let kind = catalog.kind_of(table);
                    return Err(match kind {
                        Some(kind) => DbError::InvalidOperation(format!(
                            "DELETE works on tables; '{table}' is a {kind}"
                        )),
                        None => DbError::NotFound {
                            kind: "table",
                            name: table.to_string(),
                            suggestion: laminar_sql::error::did_you_mean(
                                table,
                                catalog.tables.keys().map(String::as_str),
                            ),
                        },
                    });
                }
            }
        };
        let usage = || {
            SqlError::Invalid(format!(
                "DELETE FROM {table} needs WHERE {} (equality on every column of the primary key)",
                primary_key
                    .iter()
                    .map(|k| format!("{k} = <value>"))
                    .collect::<Vec<_>>()
                    .join(" AND ")
            ))
        };
        let selection = selection.ok_or_else(usage)?;
        let mut equalities = Vec::new();
        split_and(selection, &mut equalities);
        let mut values: Vec<Option<Expr>> = vec![None; primary_key.len()];
        for (column, value) in equalities {
            let position = primary_key
                .iter()
                .position(|k| *k == column)
                .ok_or_else(usage)?;
            if values[position].replace(value).is_some() {
                return Err(usage().into());
            }
        }
        if values.iter().any(Option::is_none) {
            return Err(usage().into());
        }
        let row = values
            .into_iter()
            .flatten()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let query = match laminar_sql::parser::parse_statement(&format!("SELECT {row}"))? {
            laminar_sql::parser::StreamingStatement::Query { query, .. } => query,
            _ => return Err(usage().into()),
        };
        let key_schema = Arc::new(Schema::new(
            store
                .key_columns()
                .iter()
                .map(|&i| store.schema().field(i).clone())
                .collect::<Vec<_>>(),
        ));
        let plan = {
            let catalog = self.inner.catalog.read();
            self.inner.planner.plan_insert(&query, &*catalog)?
        };
        let keys = self
            .inner
            .planner
            .evaluate_insert(table, &key_schema, &[], plan)
            .await?;
        let removed = store
            .delete(keys.columns())
            .map_err(|e| DbError::Engine(e.to_string()))?;
        Ok(removed as u64)
    }

    pub(crate) fn show_tables(&self) -> Result<RecordBatch, DbError> {
        let catalog = self.inner.catalog.read();
        let tables: Vec<&TableEntry> = catalog.tables.values().collect();
        batch(
            &[
                ("name", DataType::Utf8),
                ("primary_key", DataType::Utf8),
                ("row_count", DataType::UInt64),
                ("connector", DataType::Utf8),
            ],
            vec![
                Arc::new(StringArray::from(
                    tables.iter().map(|t| t.name.clone()).collect::<Vec<_>>(),
                )) as ArrayRef,
                Arc::new(StringArray::from(
                    tables
                        .iter()
                        .map(|t| t.primary_key.join(", "))
                        .collect::<Vec<_>>(),
                )),
                Arc::new(UInt64Array::from(
                    tables
                        .iter()
                        .map(|t| t.store.len() as u64)
                        .collect::<Vec<_>>(),
                )),
                Arc::new(StringArray::from(
                    tables
                        .iter()
                        .map(|t| t.connector.clone())
                        .collect::<Vec<_>>(),
                )),
            ],
        )
    }

    /// Plans `query` as a snapshot query: `None` when it reads a source or stream.
    pub(crate) fn snapshot_plan(
        &self,
        query: &Query,
    ) -> Result<Option<laminar_sql::plan::SnapshotQuery>, DbError> {
        let catalog = self.inner.catalog.read();
        Ok(self.inner.planner.snapshot_plan(query, &*catalog)?)
    }

    /// Runs a query from [`LaminarDB::snapshot_plan`] (tables, views and constants). A query
    /// that reads a materialized view and any other relation reads them all at one point
    /// of the input ([`LaminarDB::read_at_one_point`]).
    /// `ddl_held`: the caller holds the DDL lock (`execute()`); otherwise a read at one
    /// point takes it, so no stream is being connected while the mark enters the sources.
    pub(crate) async fn run_snapshot(
        &self,
        query: laminar_sql::plan::SnapshotQuery,
        ddl_held: bool,
    ) -> Result<Vec<RecordBatch>, DbError> {
        let run = self.inner.planner.optimize_snapshot(query)?;
        let at_one_point = {
            let catalog = self.inner.catalog.read();
            let views: Vec<&String> = run
                .relations()
                .iter()
                .filter(|r| catalog.streams.get(*r).is_some_and(|s| s.view.is_some()))
                .collect();
            // Several relations, or one view whose changes come from parallel aggregation
            // instances (each applied on its own, so one input batch arrives in parts).
            !views.is_empty()
                && (run.relations().len() > 1 || views.iter().any(|v| fed_in_parallel(&catalog, v)))
        };
        if at_one_point {
            let _ddl = match ddl_held {
                true => None,
                false => Some(self.inner.ddl_lock.lock().await),
            };
            let db = self.clone();
            let relations = run.relations().to_vec();
            let rows = self
                .inner
                .io_handle
                .spawn_blocking(move || db.read_at_one_point(&relations))
                .await
                .map_err(|e| DbError::Engine(format!("reading the views failed: {e}")))??;
            run.read_from(rows);
        }
        // The plan is optimized already: physical planning only.
        let physical = run
            .state
            .query_planner()
            .create_physical_plan(&run.plan, &run.state)
            .await
            .map_err(|e| DbError::from(SqlError::Plan(e)))?;
        datafusion::physical_plan::collect(physical, run.state.task_ctx())
            .await
            .map_err(|e| DbError::Engine(e.to_string()))
    }

    /// Reads the named materialized views and tables at one point of the input: a read mark
    /// enters every source (in the order of checkpoint barriers); each view saves its
    /// contents when the mark reaches it, after every row that entered before the mark and
    /// none after; each table is read as the mark enters its changelog. A view whose
    /// pipeline has ended is read as it is (nothing changes it any more).
    fn read_at_one_point(
        &self,
        relations: &[String],
    ) -> Result<std::collections::HashMap<String, Vec<RecordBatch>>, DbError> {
        use laminar_core::message::{READ_MARK, READ_MARK_WAIT};
        let mark = READ_MARK | self.inner.next_read_mark.fetch_add(1, Ordering::Relaxed);
        let mut rows = std::collections::HashMap::new();
        let mut failed = Vec::new();
        let (views, tables) = {
            let catalog = self.inner.catalog.read();
            let views: Vec<(String, Arc<ViewStore>, Arc<laminar_core::runtime::Node>)> = relations
                .iter()
                .filter_map(|r| catalog.streams.get(r))
                .filter_map(|s| {
                    let v = s.view.as_ref()?;
                    if s.has_failed() {
                        failed.push(s.name.clone());
                    }
                    Some((s.name.clone(), v.store.clone(), v.node.clone()))
                })
                .collect();
            let tables: Vec<_> = catalog
                .tables
                .values()
                .map(|t| {
                    let feed = t.feed.as_ref().map(|f| (f.input.clone(), f.open.clone()));
                    (t.name.clone(), t.store.clone(), feed)
                })
                .collect();
            (views, tables)
        };
        if let Some(name) = failed.first() {
            return Err(DbError::Engine(format!(
                "materialized view '{name}' cannot be read at one point with the other relations: its query failed (see LaminarDB::failures)"
            )));
        }
        let engine = |e: laminar_core::CoreError| DbError::Engine(e.to_string());
        // A recovering database holds table changes until it starts: nothing moves, so the
        // relations are read as they are.
        let held = tables.iter().any(|(_, _, feed)| {
            feed.as_ref()
                .is_some_and(|(_, open)| !open.load(Ordering::SeqCst))
        });
        if held {
            for (name, store, _) in &views {
                rows.insert(name.clone(), store.snapshot_chunks().map_err(engine)?);
            }
            for (name, store, _) in tables.iter().filter(|(n, _, _)| relations.contains(n)) {
                rows.insert(name.clone(), vec![store.snapshot().map_err(engine)?]);
            }
            return Ok(rows);
        }
        for (_, store, _) in &views {
            store.want_mark(mark);
        }
        let _forget = ForgetMark {
            mark,
            views: views.iter().map(|(_, store, _)| store.clone()).collect(),
        };
        // The mark enters the sources in the background: a full queue makes a send wait,
        // and every source must get the mark (a node that got it on one input holds that
        // input until its other inputs deliver it), so a send is never abandoned. The order
        // lock is held until the last source has it.
        let (tables_read, read) = std::sync::mpsc::channel();
        let db = self.clone();
        let wanted: Vec<String> = relations.to_vec();
        self.inner.io_handle.spawn_blocking(move || {
            let _order = db.inner.barrier_order.lock();
            let mut table_rows = std::collections::HashMap::new();
            let mut failure = None;
            for (name, store, feed) in &tables {
                let send = || match feed {
                    Some((input, _)) => input
                        .send_blocking(Message::Barrier(mark))
                        .map_err(|e| laminar_core::CoreError::Internal(e.to_string())),
                    None => Ok(()),
                };
                if wanted.contains(name) {
                    match store.snapshot_then(send) {
                        Ok(batch) => {
                            table_rows.insert(name.clone(), vec![batch]);
                        }
                        Err(e) => failure = Some(format!("table '{name}': {e}")),
                    }
                } else {
                    // Its changelog may feed a view that is read.
                    let _ = send();
                }
            }
            let _ = tables_read.send(match failure {
                None => Ok(table_rows),
                Some(e) => Err(e),
            });
            let catalog = db.inner.catalog.read();
            for source in catalog.sources.values() {
                match &source.runner {
                    Some(runner) => runner.request_barrier(mark, &source.ingest_target()),
                    None => {
                        let _ = source.input.send_blocking(Message::Barrier(mark));
                    }
                }
            }
            for stream in catalog.streams.values() {
                if let Some(input) = &stream.late_input {
                    let _ = input.send_blocking(Message::Barrier(mark));
                }
            }
        });
        let deadline = std::time::Instant::now() + READ_MARK_WAIT;
        let stalled = |what: &str| {
            DbError::Engine(format!(
                "{what} could not be read at the same point as the other relations of the \
                 query: the read mark did not reach it within {} s (its pipeline is stalled or \
                 far behind its input)",
                READ_MARK_WAIT.as_secs()
            ))
        };
        let table_rows = read
            .recv_timeout(READ_MARK_WAIT)
            .map_err(|_| stalled("a table"))?
            .map_err(DbError::Engine)?;
        rows.extend(table_rows);
        for (name, store, node) in &views {
            let contents = loop {
                if let Some(saved) = store.wait_for_mark(mark, Duration::from_millis(20)) {
                    break saved.map_err(engine)?;
                }
                if node.has_failed() {
                    return Err(DbError::Engine(format!(
                        "materialized view '{name}' cannot be read: its query failed"
                    )));
                }
                if node.is_finished() {
                    break store.snapshot_chunks().map_err(engine)?;
                }
                if std::time::Instant::now() >= deadline {
                    return Err(stalled(&format!("materialized view '{name}'")));
                }
            };
            rows.insert(name.clone(), contents);
        }
        Ok(rows)
    }
}

/// True when stream `name` or a stream it reads (at any depth) runs its aggregation as
/// several parallel instances.
fn fed_in_parallel(catalog: &crate::catalog::Catalog, name: &str) -> bool {
    let mut seen = std::collections::HashSet::new();
    let mut pending = vec![name.to_string()];
    while let Some(next) = pending.pop() {
        if !seen.insert(next.clone()) {
            continue;
        }
        if let Some(stream) = catalog.streams.get(&next) {
            if stream.instances.len() > 1 {
                return true;
            }
            pending.extend(stream.plan.relations().iter().cloned());
        }
    }
    false
}

/// Withdraws a read mark from the views that wanted it, however the read ends.
struct ForgetMark {
    mark: u64,
    views: Vec<Arc<ViewStore>>,
}

impl Drop for ForgetMark {
    fn drop(&mut self) {
        for view in &self.views {
            view.forget_mark(self.mark);
        }
    }
}

/// `col = value` conjuncts of a DELETE's WHERE (anything else yields nothing, so the caller
/// reports the expected form).
fn split_and(expr: &Expr, out: &mut Vec<(String, Expr)>) {
    match expr {
        Expr::Nested(inner) => split_and(inner, out),
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            split_and(left, out);
            split_and(right, out);
        }
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        } => {
            let column = |e: &Expr| match e {
                Expr::Identifier(i) => Some(laminar_sql::parser::normalize_ident(i)),
                Expr::CompoundIdentifier(parts) => {
                    parts.last().map(laminar_sql::parser::normalize_ident)
                }
                _ => None,
            };
            match (column(left), column(right)) {
                (Some(c), None) => out.push((c, right.as_ref().clone())),
                (None, Some(c)) => out.push((c, left.as_ref().clone())),
                _ => out.push((String::new(), expr.clone())),
            }
        }
        other => out.push((String::new(), other.clone())),
    }
}

/// The changes that turn the rows `from` of the table `store` into `to`, the rows `store`
/// holds now (called with no write in between), as the table's changelog would have them.
fn changes_between(
    store: &TableStore,
    from: &RecordBatch,
    to: &RecordBatch,
) -> laminar_core::error::Result<RecordBatch> {
    let replay = TableStore::new(
        store.name(),
        store.schema().clone(),
        store.key_columns().to_vec(),
        None,
    )?;
    replay.upsert(from)?;
    let captured: Arc<parking_lot::Mutex<Vec<RecordBatch>>> = Arc::default();
    let sink = captured.clone();
    replay.set_change_feed(
        Some(Box::new(move |changes| {
            sink.lock().push(changes);
            Ok(())
        })),
        |_| Ok(()),
    )?;
    // Keys of `from` that `to` lacks are deleted; the rows of `to` are upserted.
    let keys: Vec<ArrayRef> = store
        .key_columns()
        .iter()
        .map(|&i| from.column(i).clone())
        .collect();
    let found = store.lookup(&keys)?.probe_rows;
    let mut gone = vec![true; from.num_rows()];
    for row in found {
        gone[row as usize] = false;
    }
    let gone = arrow::array::BooleanArray::from(gone);
    let gone_keys = keys
        .iter()
        .map(|k| arrow::compute::filter(k, &gone))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| laminar_core::CoreError::Internal(e.to_string()))?;
    replay.delete(&gone_keys)?;
    replay.upsert(to)?;
    let batches = std::mem::take(&mut *captured.lock());
    let schema = store.changes_schema();
    arrow::compute::concat_batches(&schema, &batches)
        .map_err(|e| laminar_core::CoreError::Internal(e.to_string()))
}

/// `rows` of a table as changes that insert them (`_op` = `I`), of schema `changes`.
fn with_insert_ops(
    changes: &arrow::datatypes::SchemaRef,
    rows: &RecordBatch,
) -> laminar_core::error::Result<RecordBatch> {
    let mut columns = rows.columns().to_vec();
    columns.push(Arc::new(StringArray::from(vec!["I"; rows.num_rows()])));
    RecordBatch::try_new(changes.clone(), columns)
        .map_err(|e| laminar_core::CoreError::Internal(e.to_string()))
}

/// Upserts rows already in the table's column order: NULL into a NOT NULL column, or past
/// `max_rows`, rejects them all.
fn upsert_checked(table: &str, store: &TableStore, rows: &RecordBatch) -> Result<usize, DbError> {
    check_not_null(table, store.schema(), rows)?;
    store.upsert(rows).map_err(|e| DbError::InsertError {
        object: table.to_string(),
        detail: e.to_string(),
    })
}

/// NULL into a NOT NULL column names the column and row.
fn check_not_null(table: &str, schema: &Schema, rows: &RecordBatch) -> Result<(), DbError> {
    for (i, field) in schema.fields().iter().enumerate() {
        let column = rows.column(i);
        if !field.is_nullable() && column.null_count() > 0 {
            let row = (0..column.len()).find(|&r| column.is_null(r)).unwrap_or(0);
            return Err(DbError::InsertError {
                object: table.to_string(),
                detail: format!(
                    "column '{}' is NOT NULL (primary-key columns always are) but row {} is NULL",
                    field.name(),
                    row + 1
                ),
            });
        }
    }
    Ok(())
}

/// A handle for writing a reference table from Rust: upserts and deletes by primary key,
/// applied immediately (lookup joins see them on their next row).
#[derive(Clone)]
pub struct TableHandle {
    name: String,
    store: TableRef,
}

impl std::fmt::Debug for TableHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableHandle")
            .field("name", &self.name)
            .finish()
    }
}

impl TableHandle {
    /// Table name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The table's schema (primary-key columns are NOT NULL).
    pub fn schema(&self) -> arrow::datatypes::SchemaRef {
        self.store.schema().clone()
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.store.len()
    }

    /// True when the table has no row.
    pub fn is_empty(&self) -> bool {
        self.store.is_empty()
    }

    /// Inserts or replaces rows by primary key; columns are matched by name. All or nothing:
    /// a NULL in a NOT NULL column or exceeding `max_rows` changes nothing.
    pub fn upsert_arrow(&self, batch: RecordBatch) -> Result<usize, DbError> {
        let rows = crate::ingest::validate_batch(&self.name, self.store.schema(), None, &batch)?;
        upsert_checked(&self.name, &self.store, &rows)
    }

    /// Inserts or replaces typed rows (see [`TableHandle::upsert_arrow`]).
    pub fn upsert<T: laminar_core::record::Record>(&self, rows: &[T]) -> Result<usize, DbError> {
        let batch = T::to_record_batch(rows).map_err(|e| DbError::SchemaMismatch {
            object: self.name.clone(),
            detail: e.to_string(),
        })?;
        self.upsert_arrow(batch)
    }

    /// Deletes the rows whose keys are given: one column per primary-key column, by name.
    /// Keys that are not in the table are ignored. Returns the number of rows removed.
    pub fn delete_arrow(&self, keys: RecordBatch) -> Result<usize, DbError> {
        let schema = self.store.schema();
        let columns = self
            .store
            .key_columns()
            .iter()
            .map(|&i| {
                let name = schema.field(i).name();
                keys.column_by_name(name)
                    .cloned()
                    .ok_or_else(|| DbError::SchemaMismatch {
                        object: self.name.clone(),
                        detail: format!("key column '{name}' is missing from the batch"),
                    })
            })
            .collect::<Result<Vec<ArrayRef>, _>>()?;
        self.store
            .delete(&columns)
            .map_err(|e| DbError::InsertError {
                object: self.name.clone(),
                detail: e.to_string(),
            })
    }

    /// The current rows (a consistent snapshot, in no particular order).
    pub fn snapshot(&self) -> Result<RecordBatch, DbError> {
        self.store
            .snapshot()
            .map_err(|e| DbError::Engine(e.to_string()))
    }
}

impl LaminarDB {
    /// A handle to write the reference table `name` from Rust.
    pub fn table(&self, name: &str) -> Result<TableHandle, DbError> {
        let catalog = self.inner.catalog.read();
        match catalog.tables.get(name) {
            Some(t) => Ok(TableHandle {
                name: t.name.clone(),
                store: t.store.clone(),
            }),
            None => Err(DbError::NotFound {
                kind: "table",
                name: name.to_string(),
                suggestion: laminar_sql::error::did_you_mean(
                    name,
                    catalog.tables.keys().map(String::as_str),
                ),
            }),
        }
    }
}
