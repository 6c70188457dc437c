//! [`LaminarDB`]: open, execute SQL, push data, subscribe, observe, shut down.

use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use laminar_core::message::Message;
use laminar_core::record::{FromRow, Record};
use laminar_core::runtime::{Node, Runtime, RuntimeConfig};
use laminar_sql::{Planner, did_you_mean};
use parking_lot::{Mutex, RwLock};

use crate::catalog::Catalog;
use crate::config::{DbConfig, LaminarDbBuilder};
use crate::durability::{Durability, Participants};
use crate::error::DbError;
use crate::ingest::{SourceHandle, TypedSourceHandle, check_record_schema};
use crate::runners::Failures;
use crate::subscription::{
    ArrowSubscription, CallbackHandle, ChangeEvent, PushSubscription, Subscription,
    SubscriptionConfig, start_callback, start_push,
};

/// Lifecycle state (SPEC 1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipelineState {
    /// Open; DDL and pushes work; connectors not started.
    Created,
    /// `start()` in progress.
    Starting,
    /// Connectors running.
    Running,
    /// `shutdown()` in progress.
    ShuttingDown,
    /// Shut down.
    Stopped,
}

pub(crate) struct DbInner {
    pub(crate) config: DbConfig,
    pub(crate) runtime: Runtime,
    pub(crate) io: Mutex<Option<tokio::runtime::Runtime>>,
    pub(crate) io_handle: tokio::runtime::Handle,
    pub(crate) catalog: RwLock<Catalog>,
    /// Serializes DDL so validation and application see the same catalog.
    pub(crate) ddl_lock: tokio::sync::Mutex<()>,
    pub(crate) planner: Planner,
    pub(crate) state: Mutex<PipelineState>,
    pub(crate) started_at: Instant,
    pub(crate) next_query_id: AtomicU64,
    pub(crate) failures: Failures,
    /// Checkpoints and recovery, when a storage directory is configured.
    pub(crate) durability: Option<Arc<Durability>>,
    /// Watermark alignment groups by name (members hold them alive).
    pub(crate) alignment_groups: Mutex<
        std::collections::HashMap<String, std::sync::Weak<laminar_core::time::AlignmentGroup>>,
    >,
    /// Held while checkpoint barriers or a read mark enter the sources, so every source
    /// gets them in one order (a node aligning one never meets the other first).
    pub(crate) barrier_order: Mutex<()>,
    /// The next read mark (without the `READ_MARK` bit).
    pub(crate) next_read_mark: AtomicU64,
}

/// An embedded streaming SQL database. Cheap to clone (shared handle).
#[derive(Clone)]
pub struct LaminarDB {
    pub(crate) inner: Arc<DbInner>,
}

impl LaminarDB {
    /// Opens an in-memory database with default settings.
    pub fn open() -> Result<LaminarDB, DbError> {
        LaminarDB::with_config(DbConfig::default())
    }

    /// A builder for non-default settings.
    pub fn builder() -> LaminarDbBuilder {
        LaminarDbBuilder::default()
    }

    pub(crate) fn with_config(config: DbConfig) -> Result<LaminarDB, DbError> {
        // Storage first: when it cannot be opened, no runtime was started (dropping a
        // tokio runtime from async code, where `build()` runs, would panic).
        let durability = match &config.storage {
            Some(storage) => Some(Arc::new(Durability::open(storage.clone())?)),
            None => None,
        };
        let runtime = Runtime::start(RuntimeConfig {
            workers: config.workers.max(1),
            ..RuntimeConfig::default()
        })
        .map_err(|e| DbError::Engine(e.to_string()))?;
        let io = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(256)
            .thread_name("laminar-io")
            .enable_all()
            .build()
            .map_err(|e| DbError::Engine(format!("cannot start the connector runtime: {e}")))?;
        let io_handle = io.handle().clone();
        let db = LaminarDB {
            inner: Arc::new(DbInner {
                config,
                runtime,
                io: Mutex::new(Some(io)),
                io_handle,
                catalog: RwLock::new(Catalog::default()),
                ddl_lock: tokio::sync::Mutex::new(()),
                planner: Planner::new(),
                state: Mutex::new(PipelineState::Created),
                started_at: Instant::now(),
                next_query_id: AtomicU64::new(1),
                failures: Arc::new(Mutex::new(Vec::new())),
                durability,
                alignment_groups: Mutex::new(std::collections::HashMap::new()),
                barrier_order: Mutex::new(()),
                next_read_mark: AtomicU64::new(1),
            }),
        };
        if let Some(interval) = db
            .inner
            .config
            .storage
            .as_ref()
            .and_then(|s| s.checkpoint_interval)
        {
            spawn_periodic_checkpoints(Arc::downgrade(&db.inner), interval)?;
        }
        Ok(db)
    }

    /// The configuration in force.
    pub fn config(&self) -> &DbConfig {
        &self.inner.config
    }

    /// Current lifecycle state.
    pub fn pipeline_state(&self) -> PipelineState {
        *self.inner.state.lock()
    }

    pub(crate) fn ensure_open(&self) -> Result<(), DbError> {
        match self.pipeline_state() {
            PipelineState::ShuttingDown | PipelineState::Stopped => Err(DbError::Shutdown),
            _ => Ok(()),
        }
    }

    /// Starts connector sources (idempotent). Pipelines fed only through the push API run
    /// without it.
    pub async fn start(&self) -> Result<(), DbError> {
        {
            let mut state = self.inner.state.lock();
            match *state {
                PipelineState::Running | PipelineState::Starting => return Ok(()),
                PipelineState::ShuttingDown | PipelineState::Stopped => {
                    return Err(DbError::InvalidOperation("start() after shutdown".into()));
                }
                PipelineState::Created => *state = PipelineState::Starting,
            }
        }
        self.replay_log();
        self.open_table_feeds();
        self.start_source_runners();
        *self.inner.state.lock() = PipelineState::Running;
        Ok(())
    }

    pub(crate) fn start_source_runners(&self) {
        let mut catalog = self.inner.catalog.write();
        for source in catalog.sources.values_mut() {
            let target = source.ingest_target();
            if let Some(runner) = source.runner.as_mut()
                && !runner.is_started()
            {
                runner.start(&self.inner.io_handle, target, self.inner.failures.clone());
            }
        }
    }

    /// Stops intake, lets queued data drain (up to 10 s), closes sinks (committing their
    /// files) and stops the workers. Idempotent.
    pub async fn shutdown(&self) -> Result<(), DbError> {
        // Draining may take seconds: never block an async worker thread with it.
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                let db = self.clone();
                handle
                    .spawn_blocking(move || db.shutdown_sync())
                    .await
                    .map_err(|e| DbError::Engine(format!("shutdown task failed: {e}")))?;
            }
            Err(_) => self.shutdown_sync(),
        }
        Ok(())
    }

    /// [`LaminarDB::shutdown`] from synchronous code.
    pub fn shutdown_sync(&self) {
        {
            let mut state = self.inner.state.lock();
            if matches!(*state, PipelineState::ShuttingDown | PipelineState::Stopped) {
                return;
            }
            *state = PipelineState::ShuttingDown;
        }
        if self.inner.durability.is_some() {
            // Stop reading, let what was read reach the sinks, and checkpoint it: the
            // sinks commit it, and a restart resumes after it.
            {
                let catalog = self.inner.catalog.read();
                for source in catalog.sources.values() {
                    if let Some(runner) = &source.runner {
                        runner.pause();
                    }
                }
            }
            self.inner.runtime.wait_idle(Duration::from_secs(10));
            if let Err(e) = self.run_checkpoint() {
                tracing::error!(error = %e, "the checkpoint at shutdown failed; a restart resumes from the previous one");
                self.inner
                    .failures
                    .lock()
                    .push(format!("checkpoint at shutdown: {e}"));
            }
        }
        {
            let catalog = self.inner.catalog.read();
            for source in catalog.sources.values() {
                if let Some(runner) = &source.runner {
                    runner.stop();
                }
            }
        }
        self.inner.runtime.wait_idle(Duration::from_secs(10));
        {
            let catalog = self.inner.catalog.read();
            for sink in catalog.sinks.values() {
                sink.runner.stop();
            }
            for sink in catalog.sinks.values() {
                sink.runner.wait(Duration::from_secs(10));
            }
        }
        self.inner.runtime.shutdown();
        if let Some(io) = self.inner.io.lock().take() {
            io.shutdown_background();
        }
        *self.inner.state.lock() = PipelineState::Stopped;
    }

    /// Takes a checkpoint now and returns its epoch once it is durable; `None` without a
    /// storage directory. A checkpoint that cannot complete (alignment timeout, a failed
    /// snapshot or pre-commit) is an error and processing continues. A failed write or
    /// fsync of the storage directory stops the pipeline: connector sources stop reading,
    /// pushes are refused and [`LaminarDB::failures`] names the error.
    pub fn checkpoint(&self) -> Result<Option<u64>, DbError> {
        if self.inner.durability.is_none() {
            return Ok(None);
        }
        self.ensure_open()?;
        self.run_checkpoint()
    }

    /// One checkpoint round (`None` without durability).
    fn run_checkpoint(&self) -> Result<Option<u64>, DbError> {
        let Some(durability) = self.inner.durability.clone() else {
            return Ok(None);
        };
        let result = durability.checkpoint(
            || self.checkpoint_participants(),
            |epoch| self.inject_barriers(epoch),
            |epoch, positions| {
                let catalog = self.inner.catalog.read();
                for sink in catalog.sinks.values() {
                    sink.runner.commit(epoch);
                }
                for (name, position) in positions {
                    if let Some(runner) = catalog.sources.get(name).and_then(|s| s.runner.as_ref())
                    {
                        runner.checkpoint_completed(position);
                    }
                }
            },
        );
        if let Some(reason) = durability.newly_poisoned() {
            // Nothing can be made durable any more: stop reading (no silent retry) and
            // report it; a restart recovers from the last complete checkpoint.
            self.inner
                .failures
                .lock()
                .push(format!("storage directory failed: {reason}"));
            for source in self.inner.catalog.read().sources.values() {
                if let Some(runner) = &source.runner {
                    runner.pause();
                }
            }
        }
        result.map(Some)
    }

    /// Discards what the restored checkpoint still holds for object `name` (its state was
    /// not handed to an object yet: it was refused, its `CREATE` failed, or it is not
    /// created again), as [`crate::LaminarDbBuilder::reset_state`] does at open. A
    /// `CREATE` of `name` then starts it empty, and checkpoints suspended for it resume.
    /// Returns whether there was such state; without a storage directory there never is.
    pub fn discard_checkpointed_state(&self, name: &str) -> bool {
        self.inner
            .durability
            .as_ref()
            .is_some_and(|d| d.discard_recovered(name))
    }

    /// Checkpoint and recovery counters; `None` without a storage directory.
    pub fn checkpoint_stats(&self) -> Option<crate::durability::CheckpointStats> {
        self.inner.durability.as_ref().map(|d| d.stats())
    }

    fn checkpoint_participants(&self) -> Participants {
        let catalog = self.inner.catalog.read();
        let mut nodes: Vec<Arc<Node>> = Vec::new();
        let mut objects = Vec::new();
        // A node that finished (it failed, or an input did: with durability sources never
        // end) takes no snapshot; the checkpoint records that its object has no state.
        let mut stopped = Vec::new();
        let why_stopped = |of: &[&Arc<Node>]| {
            if of.iter().any(|n| n.has_failed()) {
                Some("it failed".to_string())
            } else if of.iter().any(|n| n.is_finished() && !n.is_retired()) {
                Some("a relation it reads failed".to_string())
            } else {
                None
            }
        };
        for source in catalog.sources.values() {
            nodes.push(source.node.clone());
            objects.push((source.name.clone(), source.sql.clone()));
            if let Some(why) = why_stopped(&[&source.node]) {
                stopped.push((source.name.clone(), why));
            }
        }
        for stream in catalog.streams.values() {
            let own: Vec<&Arc<Node>> = std::iter::once(&stream.node)
                .chain(stream.instances.iter().map(|(n, _)| n))
                .chain(stream.exchanges.iter().map(|(n, _)| n))
                .chain(stream.view.iter().map(|v| &v.node))
                .collect();
            nodes.extend(own.iter().map(|n| Arc::clone(n)));
            if stream.side_output_of.is_none() && stream.query_id.is_none() {
                objects.push((stream.name.clone(), stream.sql.clone()));
                if let Some(why) = why_stopped(&own) {
                    stopped.push((stream.name.clone(), why));
                }
            }
        }
        for sink in catalog.sinks.values() {
            nodes.extend(sink.node.clone());
            // Its definition guards the state it keeps in the checkpoint.
            objects.push((sink.name.clone(), sink.sql.clone()));
        }
        nodes.retain(|n| !n.is_finished() && !n.is_retired());
        for table in catalog.tables.values() {
            // Its rows are saved as the barriers are injected (`inject_barriers`).
            objects.push((table.name.clone(), table.sql.clone()));
        }
        Participants {
            nodes,
            objects,
            stopped,
            sources: catalog
                .sources
                .values()
                .filter(|s| s.runner.is_some())
                .map(|s| s.name.clone())
                .collect(),
            sinks: catalog
                .sinks
                .values()
                .filter(|s| s.runner.has_task() && !s.runner.is_done())
                .map(|s| s.name.clone())
                .collect(),
        }
    }

    /// Puts barrier `epoch` into every source; returns the rows of every table, those of a
    /// table read as a changelog saved at the point of its changelog's barrier.
    fn inject_barriers(&self, epoch: u64) -> Vec<(String, Vec<u8>)> {
        let _order = self.inner.barrier_order.lock();
        // Without the catalog lock: saving a table waits for a write in progress, which may
        // wait for room in the table's changelog queue.
        let stores: Vec<_> = self
            .inner
            .catalog
            .read()
            .tables
            .values()
            .map(|t| {
                let input = t.feed.as_ref().map(|f| f.input.clone());
                (t.name.clone(), t.store.clone(), input)
            })
            .collect();
        let mut tables = Vec::new();
        for (name, store, input) in stores {
            let saved = store.snapshot_bytes_then(|| match &input {
                Some(input) => input
                    .send_blocking(Message::Barrier(epoch))
                    .map_err(|e| laminar_core::CoreError::Internal(e.to_string())),
                None => Ok(()),
            });
            match saved {
                Ok(bytes) => tables.push((name, bytes)),
                Err(e) => tracing::error!(table = %name, error = %e, "table snapshot failed"),
            }
        }
        let catalog = self.inner.catalog.read();
        for source in catalog.sources.values() {
            if let Some(runner) = &source.runner {
                runner.request_barrier(epoch, &source.ingest_target());
            }
        }
        // Push sources and side outputs: under the write-ahead log lock, so the checkpoint
        // records which logged pushes precede its barriers.
        let inject = || {
            for source in catalog.sources.values().filter(|s| s.runner.is_none()) {
                let _ = source.input.send_blocking(Message::Barrier(epoch));
            }
            for stream in catalog.streams.values() {
                if let Some(input) = &stream.late_input {
                    let _ = input.send_blocking(Message::Barrier(epoch));
                }
            }
        };
        match &self.inner.durability {
            Some(d) => d.inject_logged(epoch, inject),
            None => inject(),
        }
        tables
    }

    /// Recovery's last step: the pushes logged after the restored checkpoint go into their
    /// sources again, in their original order.
    fn replay_log(&self) {
        let Some(durability) = &self.inner.durability else {
            return;
        };
        let pushes = durability.take_replay();
        if pushes.is_empty() {
            return;
        }
        let (mut replayed, mut unreplayed) = (0, 0);
        let catalog = self.inner.catalog.read();
        for (source, msg) in pushes {
            match catalog.sources.get(&source) {
                Some(entry) if entry.input.send_blocking(msg).is_ok() => replayed += 1,
                _ => {
                    unreplayed += 1;
                    tracing::warn!(source = %source, "a logged push was not replayed: its source was not created again");
                }
            }
        }
        tracing::info!(replayed, unreplayed, "write-ahead log replayed");
        durability.count_replay(replayed, unreplayed);
    }

    /// Waits until every message pushed so far has reached subscriptions and sinks (or the
    /// timeout passes). Useful in tests and before reading results.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        self.inner.runtime.wait_idle(timeout)
    }

    /// True when every source has a connector, all of them reached the end of their input,
    /// and every sink has written and committed everything.
    pub fn is_finished(&self) -> bool {
        let catalog = self.inner.catalog.read();
        let sources_done = !catalog.sources.is_empty()
            && catalog
                .sources
                .values()
                .all(|s| s.runner.as_ref().is_some_and(|r| r.is_ended()));
        if self.inner.durability.is_some() {
            // Durable sources stay open after their input ends (for checkpoints): finished
            // means ended and everything read has been handled.
            return sources_done && self.inner.runtime.wait_idle(Duration::ZERO);
        }
        sources_done
            && catalog
                .sinks
                .values()
                .all(|s| !s.runner.has_task() || s.runner.is_done())
    }

    /// Failures of running sources, operators and sinks so far.
    pub fn failures(&self) -> Vec<String> {
        let mut out = self.inner.failures.lock().clone();
        out.extend(
            self.inner
                .runtime
                .failures()
                .into_iter()
                .map(|f| format!("stream '{}': {}", f.node, f.message)),
        );
        out
    }

    /// The untyped (Arrow) push handle of a source.
    pub fn source_untyped(&self, name: &str) -> Result<SourceHandle, DbError> {
        self.ensure_open()?;
        let catalog = self.inner.catalog.read();
        let source = catalog.sources.get(name).ok_or_else(|| DbError::NotFound {
            kind: "source",
            name: name.to_string(),
            suggestion: did_you_mean(name, catalog.sources.keys().map(String::as_str)),
        })?;
        Ok(SourceHandle {
            target: source.ingest_target(),
        })
    }

    /// A typed push handle; the record type must match the declared columns by name and type.
    pub fn source<T: Record>(&self, name: &str) -> Result<TypedSourceHandle<T>, DbError> {
        let inner = self.source_untyped(name)?;
        check_record_schema::<T>(name, &inner.target.schema)?;
        Ok(TypedSourceHandle {
            inner,
            _marker: PhantomData,
        })
    }

    /// The node whose output a subscription to `name` reads (stream, source, in-memory
    /// sink, or a table's changelog, started if need be).
    pub(crate) fn output_node(&self, name: &str) -> Result<Arc<Node>, DbError> {
        if self.inner.catalog.read().tables.contains_key(name) {
            let mut catalog = self.inner.catalog.write();
            self.ensure_table_feed(&mut catalog, name)?;
        }
        let catalog = self.inner.catalog.read();
        if let Some(node) = catalog.relation_node(name) {
            return Ok(node);
        }
        if let Some(node) = catalog.sinks.get(name).and_then(|s| s.node.clone()) {
            return Ok(node);
        }
        Err(DbError::NotFound {
            kind: "stream",
            name: name.to_string(),
            suggestion: did_you_mean(name, catalog.names().iter().map(String::as_str)),
        })
    }

    /// Polls Arrow batches of a stream (or source, or in-memory sink).
    pub fn subscribe_arrow(&self, name: &str) -> Result<ArrowSubscription, DbError> {
        self.ensure_open()?;
        let node = self.output_node(name)?;
        let rx = self
            .inner
            .runtime
            .attach(&node, self.inner.config.subscription_buffer, false);
        Ok(ArrowSubscription {
            name: name.to_string(),
            schema: node.schema(),
            rx,
            done: false,
        })
    }

    /// Polls rows of a stream converted to `T` by column name; the mapping is checked here.
    pub fn subscribe<T: FromRow>(&self, name: &str) -> Result<Subscription<T>, DbError> {
        let node = self.output_node(name)?;
        T::check_schema(&node.schema()).map_err(|e| DbError::SchemaMismatch {
            object: name.to_string(),
            detail: e.to_string(),
        })?;
        Ok(Subscription {
            inner: self.subscribe_arrow(name)?,
            buffered: Default::default(),
            error: None,
            _marker: PhantomData,
        })
    }

    fn compile_filter(
        &self,
        schema: &SchemaRef,
        filter: Option<&str>,
    ) -> Result<Option<laminar_core::operator::Step>, DbError> {
        match filter {
            None => Ok(None),
            Some(sql) => {
                crate::execute::compile_predicate(&self.inner.planner, schema, sql).map(Some)
            }
        }
    }

    /// A push subscription with its own buffer and overflow policy.
    pub fn subscribe_push(
        &self,
        name: &str,
        config: SubscriptionConfig,
    ) -> Result<PushSubscription, DbError> {
        self.ensure_open()?;
        let node = self.output_node(name)?;
        if config.send_snapshot && !node.has_seeder() {
            let kind = self.inner.catalog.read().kind_of(name).unwrap_or("sink");
            return Err(DbError::InvalidOperation(format!(
                "send_snapshot applies to materialized views and tables; '{name}' is a {kind}, which keeps no contents"
            )));
        }
        let filter = self.compile_filter(&node.schema(), config.filter.as_deref())?;
        let rx = if config.send_snapshot {
            self.inner
                .runtime
                .attach_seeded(&node, self.inner.config.subscription_buffer, false)
                .map_err(|e| DbError::Engine(format!("snapshot of '{name}': {e}")))?
        } else {
            self.inner
                .runtime
                .attach(&node, self.inner.config.subscription_buffer, false)
        };
        Ok(start_push(&self.inner.io_handle, name, rx, &config, filter))
    }

    /// Calls `f` for every event on a background task.
    pub fn subscribe_callback(
        &self,
        name: &str,
        config: SubscriptionConfig,
        f: impl FnMut(ChangeEvent) + Send + 'static,
    ) -> Result<CallbackHandle, DbError> {
        let sub = self.subscribe_push(name, config)?;
        Ok(start_callback(&self.inner.io_handle, sub, f))
    }

    /// Events as a `futures::Stream`.
    pub fn subscribe_stream(
        &self,
        name: &str,
        config: SubscriptionConfig,
    ) -> Result<impl futures::Stream<Item = ChangeEvent> + use<>, DbError> {
        Ok(self.subscribe_push(name, config)?.into_stream())
    }

    /// Runs a bounded query (no sources or streams) and returns its rows.
    pub async fn query(&self, sql: &str) -> Result<Vec<RecordBatch>, DbError> {
        crate::execute::bounded_query(self, sql).await
    }
}

/// Takes a checkpoint every `interval` while the pipeline runs (after `start()`: before it,
/// the application may still be creating objects whose state a checkpoint would miss).
fn spawn_periodic_checkpoints(
    inner: std::sync::Weak<DbInner>,
    interval: Duration,
) -> Result<(), DbError> {
    std::thread::Builder::new()
        .name("laminar-checkpoint".into())
        .spawn(move || {
            let mut last = Instant::now();
            loop {
                std::thread::sleep(Duration::from_millis(20).min(interval));
                let Some(inner) = inner.upgrade() else {
                    return;
                };
                let state = *inner.state.lock();
                // Taken whatever the interval says, so one request gives one checkpoint.
                let requested = state == PipelineState::Running
                    && inner
                        .durability
                        .as_ref()
                        .is_some_and(|d| d.take_checkpoint_request());
                match state {
                    PipelineState::ShuttingDown | PipelineState::Stopped => return,
                    PipelineState::Running if requested || last.elapsed() >= interval => {
                        last = Instant::now();
                        let db = LaminarDB { inner };
                        // Failures are counted in the stats and logged.
                        let _ = db.checkpoint();
                    }
                    _ => {}
                }
            }
        })
        .map(|_| ())
        .map_err(|e| DbError::Engine(format!("cannot start the checkpoint thread: {e}")))
}

impl Drop for DbInner {
    fn drop(&mut self) {
        self.runtime.shutdown();
        if let Some(io) = self.io.lock().take() {
            io.shutdown_background();
        }
    }
}
