//! Durability: aligned checkpoints of the running pipeline into the storage directory, and
//! recovery from the newest valid one when a database is opened on that directory again.
//!
//! ## A checkpoint (epoch `e`)
//! 1. Under the catalog lock: every live operator node is asked to report to this module,
//!    every table is snapshotted, and barrier `e` enters every source: connector sources
//!    inject it between two polls and report their position at that point; push sources
//!    and `LATE DATA TO` streams get it through their ingestion queue.
//! 2. The barrier flows with the data. A node with several inputs blocks each input that
//!    delivered it until all did (alignment), then snapshots its operator
//!    (`Operator::snapshot`) and forwards the barrier.
//! 3. A sink runner that receives the barrier pre-commits epoch `e` (`pre_commit`: its
//!    output up to the barrier is durable but invisible) and reports.
//! 4. When every node, source and sink reported within the alignment timeout, the snapshot
//!    files and a manifest (the commit decision) are written atomically by
//!    [`CheckpointStore`], older checkpoints beyond the retention are deleted, and the sinks
//!    are told to commit `e`. Otherwise the checkpoint fails, nothing is written, and
//!    processing goes on; pre-committed output is committed by the next checkpoint.
//!
//! ## Recovery
//! Opening loads the newest checkpoint that passes its checksums (falling back to older
//! ones, with the reason logged). The application then creates its objects again (the
//! CLI reruns the pipeline file): each object whose definition is unchanged gets its
//! operator state, source position and table rows back; an object whose definition
//! changed is refused with an error naming it, unless its state is reset
//! ([`crate::LaminarDbBuilder::reset_state`]). Sinks first settle what the previous run
//! left: pre-committed output of epochs up to the checkpoint is committed, the rest
//! discarded.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use laminar_core::message::Message;
use laminar_core::runtime::{CheckpointObserver, Node, StateSnapshot};
use laminar_core::snapshot::{SnapshotReader, SnapshotWriter};
use laminar_storage::{
    CheckpointStore, LocalFs, ManifestEntry, ObjectStorage, Storage, Wal, WalOptions, WalRecord,
};
use parking_lot::{Condvar, Mutex};

use crate::config::StorageConfig;
use crate::error::DbError;

/// Checkpoint and recovery counters (see [`crate::LaminarDB::checkpoint_stats`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckpointStats {
    /// Checkpoints completed by this process.
    pub completed: u64,
    /// Checkpoints that failed (alignment timeout, a failed snapshot or pre-commit, I/O).
    pub failed: u64,
    /// Epoch of the newest complete checkpoint (also one restored at open).
    pub last_epoch: Option<u64>,
    /// Duration of the last completed checkpoint, from its barriers to its manifest.
    pub last_duration: Option<Duration>,
    /// Bytes written by the last completed checkpoint.
    pub last_bytes: u64,
    /// Why the last failed checkpoint failed.
    pub last_error: Option<String>,
    /// The checkpoint restored at open, if any.
    pub recovered_epoch: Option<u64>,
    /// Time spent loading the checkpoint at open and restoring state into the objects
    /// created since.
    pub recovery_time: Duration,
    /// Checkpoints skipped at open because they failed their checks, with the reasons.
    pub skipped: Vec<String>,
    /// What opening the write-ahead log found: a torn tail cut off, or the damage a
    /// salvaging open stopped at.
    pub wal_report: Vec<String>,
    /// Logged pushes replayed at `start()` (pushed after the restored checkpoint).
    pub replayed_pushes: u64,
    /// Logged pushes not replayed because their source was not created again.
    pub unreplayed_pushes: u64,
    /// Operator states written in full by the completed checkpoints.
    pub full_snapshots: u64,
    /// Operator states written as increments (changes since the node's previous
    /// checkpoint) by the completed checkpoints.
    pub incremental_snapshots: u64,
}

/// State read from the checkpoint at open, handed out as objects are created again.
#[derive(Default)]
struct Recovered {
    epoch: Option<u64>,
    /// Object name → its DDL text when checkpointed.
    objects: BTreeMap<String, String>,
    /// Node name → operator snapshot.
    states: BTreeMap<String, StateChain>,
    /// Source name → connector position.
    positions: BTreeMap<String, String>,
    /// Table name → rows.
    tables: BTreeMap<String, Arc<Vec<u8>>>,
    /// Sink name → its pre-commit state.
    sinks: BTreeMap<String, Vec<u8>>,
    /// Log records before this sequence number are covered by the checkpoint.
    wal_position: u64,
    /// Objects that had stopped when the checkpoint was taken (name → why): it holds none
    /// of their state.
    stopped: BTreeMap<String, String>,
    /// Objects whose restore was refused (name → why): their state is still only in the
    /// restored checkpoint, so no checkpoint is taken until they are restored or reset.
    refused: BTreeMap<String, String>,
}

/// A node's checkpointed state: its last full snapshot and the increments after it
/// (shared: the recovered checkpoint keeps it until its object is created).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct StateChain {
    pub(crate) base: Arc<Vec<u8>>,
    pub(crate) deltas: Arc<Vec<Vec<u8>>>,
}

/// What one object gets back from the checkpoint.
#[derive(Default)]
pub(crate) struct Restored {
    /// Node name → snapshot, for the object's nodes.
    pub(crate) states: BTreeMap<String, StateChain>,
    pub(crate) position: Option<String>,
    pub(crate) table: Option<Arc<Vec<u8>>>,
}

impl Restored {
    /// The snapshot of node `name`, if any.
    pub(crate) fn state(&mut self, name: &str) -> Option<StateChain> {
        self.states.remove(name)
    }
}

/// The files that make up a node's state in the newest checkpoint: its full snapshot
/// first, then its increments.
#[derive(Clone)]
struct WrittenChain {
    files: Vec<ManifestEntry>,
    delta_bytes: u64,
}

/// Increments after a full snapshot before the next full one.
const MAX_INCREMENTS: usize = 16;

/// The checkpoint being taken.
struct Round {
    epoch: u64,
    nodes: BTreeSet<String>,
    sources: BTreeSet<String>,
    sinks: BTreeSet<String>,
    states: BTreeMap<String, StateSnapshot>,
    /// Sink → what it keeps with the checkpoint ([`laminar_connectors::SinkConnector::pre_commit_state`]).
    sink_states: BTreeMap<String, Vec<u8>>,
    positions: BTreeMap<String, String>,
    /// Write-ahead log records before this position precede the barrier.
    wal_position: u64,
    error: Option<String>,
}

impl Round {
    fn complete(&self) -> bool {
        self.nodes.is_empty() && self.sources.is_empty() && self.sinks.is_empty()
    }
}

/// Everything the catalog contributes to a checkpoint (collected under its lock).
pub(crate) struct Participants {
    pub(crate) nodes: Vec<Arc<Node>>,
    /// Objects and their DDL text.
    pub(crate) objects: Vec<(String, String)>,
    /// Objects whose nodes stopped (they failed, or an input did): the checkpoint holds
    /// no state for them (name → why).
    pub(crate) stopped: Vec<(String, String)>,
    /// Connector sources that report a position.
    pub(crate) sources: Vec<String>,
    pub(crate) sinks: Vec<String>,
}

/// See the module docs. Shared by the database, its runners and its nodes.
pub(crate) struct Durability {
    pub(crate) config: StorageConfig,
    store: CheckpointStore,
    recovered: Mutex<Recovered>,
    next_epoch: AtomicU64,
    round: Mutex<Option<Round>>,
    round_changed: Condvar,
    /// One checkpoint at a time.
    serial: Mutex<()>,
    stats: Mutex<CheckpointStats>,
    /// The write-ahead log of pushes. Held while a push is enqueued and logged, and while
    /// barriers enter the push sources, so a checkpoint's log position splits the pushes
    /// exactly where its barriers split the queues.
    log: Mutex<Wal>,
    /// Every log record below this sequence number is durable.
    synced_to: AtomicU64,
    /// Logged pushes after the restored checkpoint, replayed by `start()`.
    replay: Mutex<Vec<WalRecord>>,
    /// Node name → the files of its state in the newest checkpoint this process wrote
    /// (an increment extends them; empty after a failed checkpoint, so the next one is
    /// full).
    chains: Mutex<BTreeMap<String, WrittenChain>>,
    /// Set when writing to the storage directory failed (a failed write or fsync of a
    /// checkpoint or of the log): nothing can be made durable any more, so no further
    /// checkpoint is taken and pushes are refused. The flag says whether the pipeline was
    /// told (see [`Durability::newly_poisoned`]).
    poisoned: Mutex<Option<(String, bool)>>,
    /// A connector asked for a checkpoint before the next periodic one (a Kafka source
    /// handing partitions over to another member of its group).
    checkpoint_requested: std::sync::atomic::AtomicBool,
}

/// Directory under the storage directory that holds the checkpoints.
const CHECKPOINT_DIR: &str = "checkpoints";
/// Directory under the storage directory that holds the write-ahead log of pushes.
const WAL_DIR: &str = "wal";
const PIPELINE_FILE: &str = "pipeline";

/// A file name for an object or node name (names may hold any character).
fn file_name(prefix: &str, name: &str) -> String {
    let hex: String = name.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}-{hex}")
}

/// The node and position in its chain (0: the full snapshot, `k`: the k-th increment) of a
/// state file name.
fn state_file_name(file: &str) -> Option<(String, usize)> {
    match file.split_once('.') {
        None => Some((from_file_name("state", file)?, 0)),
        Some((base, index)) => {
            let index: usize = index.parse().ok().filter(|&i| i > 0)?;
            Some((from_file_name("state", base)?, index))
        }
    }
}

fn from_file_name(prefix: &str, file: &str) -> Option<String> {
    let hex = file.strip_prefix(prefix)?.strip_prefix('-')?;
    if hex.len() % 2 != 0 {
        return None;
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

/// DDL text compared across runs: whitespace runs folded, trailing `;` dropped.
fn normalized(sql: &str) -> String {
    sql.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .trim_end_matches(';')
        .trim()
        .to_string()
}

fn checkpoint_error(e: impl std::fmt::Display) -> DbError {
    DbError::Checkpoint(e.to_string())
}

impl Durability {
    /// Opens the storage directory and loads its newest valid checkpoint.
    pub(crate) fn open(config: StorageConfig) -> Result<Durability, DbError> {
        let started = Instant::now();
        std::fs::create_dir_all(&config.dir).map_err(|e| {
            DbError::Checkpoint(format!(
                "cannot create the storage directory {}: {e}",
                config.dir.display()
            ))
        })?;
        let storage: Arc<dyn Storage> =
            Arc::new(LocalFs::new(&config.dir).map_err(checkpoint_error)?);
        let store = match &config.checkpoint_url {
            None => CheckpointStore::new(storage.clone(), CHECKPOINT_DIR, config.max_retained),
            Some(url) => {
                let objects = ObjectStorage::open(url, ObjectStorage::options_from_env())
                    .map_err(checkpoint_error)?;
                CheckpointStore::new(Arc::new(objects), "", config.max_retained)
            }
        };
        let loaded = store.load_latest().map_err(|e| {
            DbError::Checkpoint(format!(
                "checkpoints in {}: {e}; no checkpoint can be restored (move them away to start empty)",
                config
                    .checkpoint_url
                    .clone()
                    .unwrap_or_else(|| config.dir.join(CHECKPOINT_DIR).display().to_string())
            ))
        })?;
        let mut recovered = Recovered::default();
        let mut stats = CheckpointStats::default();
        let mut next_epoch = 1;
        if let Some(loaded) = loaded {
            let epoch = loaded.manifest.epoch;
            next_epoch = epoch + 1;
            stats.skipped = loaded
                .skipped
                .iter()
                .map(|(e, reason)| format!("checkpoint {e}: {reason}"))
                .collect();
            let pipeline = loaded.files.get(PIPELINE_FILE).ok_or_else(|| {
                DbError::Checkpoint(format!("checkpoint {epoch} has no '{PIPELINE_FILE}' file"))
            })?;
            decode_pipeline(pipeline, &mut recovered)
                .map_err(|e| DbError::Checkpoint(format!("checkpoint {epoch}: {e}")))?;
            let mut pieces: BTreeMap<String, BTreeMap<usize, Vec<u8>>> = BTreeMap::new();
            for (file, content) in loaded.files {
                if let Some((node, index)) = state_file_name(&file) {
                    pieces.entry(node).or_default().insert(index, content);
                } else if let Some(table) = from_file_name("table", &file) {
                    recovered.tables.insert(table, Arc::new(content));
                } else if let Some(sink) = from_file_name("sink", &file) {
                    recovered.sinks.insert(sink, content);
                }
            }
            for (node, mut parts) in pieces {
                let chain = (0..parts.len())
                    .map(|i| parts.remove(&i))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| {
                        DbError::Checkpoint(format!(
                            "checkpoint {epoch}: the state of '{node}' misses its full snapshot or an increment"
                        ))
                    })?;
                let mut chain = chain.into_iter();
                let base = chain.next().unwrap_or_default();
                recovered.states.insert(
                    node,
                    StateChain {
                        base: Arc::new(base),
                        deltas: Arc::new(chain.collect()),
                    },
                );
            }
            let reset_all = config.reset_state.iter().any(|n| n == "*");
            for name in &config.reset_state {
                if reset_all || recovered.objects.contains_key(name) {
                    tracing::warn!(object = %name, "checkpointed state discarded (reset_state)");
                }
            }
            if reset_all {
                recovered = Recovered::default();
            } else {
                for name in &config.reset_state {
                    recovered.forget(name);
                }
            }
            recovered.epoch = Some(epoch);
            stats.recovered_epoch = Some(epoch);
            stats.last_epoch = Some(epoch);
            tracing::info!(epoch, dir = %config.dir.display(), "restoring from checkpoint");
        }
        let (log, found) = Wal::open(
            storage,
            WAL_DIR,
            WalOptions {
                salvage: config.wal_salvage,
                ..WalOptions::default()
            },
        )
        .map_err(|e| {
            DbError::Checkpoint(format!(
                "write-ahead log in {}: {e}; to open anyway and replay only the records before the damage, set wal_salvage (laminardb run --wal-salvage)",
                config.dir.join(WAL_DIR).display()
            ))
        })?;
        if let Some(torn) = &found.torn_tail {
            let report = format!(
                "write-ahead log {}: a torn record of {} bytes at offset {} was cut off (a write the crash interrupted, never acknowledged)",
                torn.segment, torn.bytes, torn.offset
            );
            tracing::warn!("{report}");
            stats.wal_report.push(report);
        }
        if let Some((damage, dropped)) = &found.salvaged {
            let report = format!(
                "write-ahead log salvaged: {damage}; {dropped} bytes after it were dropped"
            );
            tracing::error!("{report}");
            stats.wal_report.push(report);
        }
        let replay: Vec<WalRecord> = found
            .records
            .into_iter()
            .filter(|r| r.seq >= recovered.wal_position)
            .collect();
        let synced_to = AtomicU64::new(log.next_seq());
        stats.recovery_time = started.elapsed();
        Ok(Durability {
            log: Mutex::new(log),
            synced_to,
            replay: Mutex::new(replay),
            config,
            store,
            recovered: Mutex::new(recovered),
            next_epoch: AtomicU64::new(next_epoch),
            round: Mutex::new(None),
            round_changed: Condvar::new(),
            serial: Mutex::new(()),
            stats: Mutex::new(stats),
            chains: Mutex::new(BTreeMap::new()),
            poisoned: Mutex::new(None),
            checkpoint_requested: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Asks the periodic checkpoint thread for a checkpoint now.
    pub(crate) fn request_checkpoint(&self) {
        self.checkpoint_requested.store(true, Ordering::SeqCst);
    }

    /// Whether a checkpoint was asked for since the last call.
    pub(crate) fn take_checkpoint_request(&self) -> bool {
        self.checkpoint_requested.swap(false, Ordering::SeqCst)
    }

    /// True when the checkpoint being recovered holds an object of that name that has not
    /// been restored yet: it is being re-created, not created.
    pub(crate) fn is_recovering(&self, name: &str) -> bool {
        self.recovered.lock().objects.contains_key(name)
    }

    /// Drops what the recovered checkpoint holds for object `name` and lifts the checkpoint
    /// suspension it caused; false when it held nothing for it.
    pub(crate) fn discard_recovered(&self, name: &str) -> bool {
        let mut recovered = self.recovered.lock();
        let held = recovered.objects.contains_key(name) || recovered.refused.contains_key(name);
        if held {
            tracing::warn!(object = %name, "checkpointed state discarded");
            recovered.forget(name);
        }
        held
    }

    /// The epoch of the checkpoint restored at open, if any.
    pub(crate) fn recovered_epoch(&self) -> Option<u64> {
        self.stats.lock().recovered_epoch
    }

    /// The epoch the next checkpoint will have (sinks begin it).
    pub(crate) fn next_epoch(&self) -> u64 {
        self.next_epoch.load(Ordering::SeqCst)
    }

    pub(crate) fn stats(&self) -> CheckpointStats {
        self.stats.lock().clone()
    }

    /// After a `CREATE` of `name` (a source, table, stream or sink): when the checkpoint being
    /// recovered holds state for `name`, a created object now holds that state, so the
    /// checkpoint forgets it; a
    /// failed creation leaves it in the checkpoint and suspends checkpoints until a
    /// `CREATE` succeeds or the state is reset, as a refused restore does.
    pub(crate) fn settle_recovery(&self, name: &str, error: Option<&DbError>) {
        let mut recovered = self.recovered.lock();
        if !recovered.objects.contains_key(name) {
            return;
        }
        match error {
            None => recovered.forget(name),
            Some(e) => {
                recovered
                    .refused
                    .entry(name.to_string())
                    .or_insert_with(|| format!("its CREATE failed: {e}"));
            }
        }
    }

    /// Checks the definition of object `name` against the checkpoint and hands out its
    /// state: snapshots of the nodes `nodes`, its source position and table rows. Errors
    /// when the checkpoint holds state for `name` under a different definition. The
    /// checkpoint keeps the state until [`Durability::settle_recovery`].
    pub(crate) fn restore_object(
        &self,
        kind: &str,
        name: &str,
        sql: &str,
        nodes: &[String],
    ) -> Result<Restored, DbError> {
        let started = Instant::now();
        let mut recovered = self.recovered.lock();
        let Some(stored) = recovered.objects.get(name).cloned() else {
            return Ok(Restored::default());
        };
        if normalized(&stored) != normalized(sql) {
            recovered
                .refused
                .insert(name.to_string(), "defined differently".into());
            return Err(DbError::StateMismatch(format!(
                "{kind} '{name}' is defined differently from the one in checkpoint {} of {}, so its state cannot be reused.\n  checkpointed: {}\n  now:          {}\nRestore the previous definition, or discard its state: `laminardb run --reset-state {name} ...` (LaminarDbBuilder::reset_state)",
                recovered.epoch.unwrap_or(0),
                self.config.dir.display(),
                normalized(&stored),
                normalized(sql)
            )));
        }
        if let Some(why) = recovered.stopped.get(name).cloned() {
            recovered
                .refused
                .insert(name.to_string(), "stopped when checkpointed".into());
            return Err(DbError::StateMismatch(format!(
                "{kind} '{name}' had stopped ({why}) when checkpoint {} of {} was taken, so the checkpoint holds none of its state while its inputs resume after the rows it saw; start it empty with `laminardb run --reset-state {name} ...` (LaminarDbBuilder::reset_state)",
                recovered.epoch.unwrap_or(0),
                self.config.dir.display(),
            )));
        }
        let prefix = format!("{name}[");
        let unexpected: Vec<&String> = recovered
            .states
            .keys()
            .filter(|n| (*n == name || n.starts_with(&prefix)) && !nodes.contains(n))
            .collect();
        // A parallel stream's instances: all saved or none (a checkpoint taken with fewer
        // workers holds keys in instances that now hash elsewhere).
        let is_instance = |n: &str| {
            n == name
                || n.strip_prefix(&prefix)
                    .and_then(|rest| rest.strip_suffix(']'))
                    .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        };
        let saves_instances = recovered.states.keys().any(|n| is_instance(n));
        let missing = nodes
            .iter()
            .any(|n| is_instance(n) && !recovered.states.contains_key(n));
        if !unexpected.is_empty() || (saves_instances && missing) {
            let message = format!(
                "{kind} '{name}' was checkpointed as {} but now runs as {}; the parallelism follows the number of workers: run with the same --workers (a join, top-N or analytic stream checkpointed by a build that ran it as one instance restores only with one worker), or discard its state with `--reset-state {name}`",
                describe_nodes(
                    recovered
                        .states
                        .keys()
                        .filter(|n| *n == name || n.starts_with(&prefix))
                ),
                describe_nodes(nodes.iter())
            );
            recovered.refused.insert(
                name.to_string(),
                "checkpointed with another number of workers".into(),
            );
            return Err(DbError::StateMismatch(message));
        }
        // The checkpoint keeps the state until the object is created (see
        // [`Durability::settle_recovery`]): a creation that fails leaves it restorable.
        let mut restored = Restored {
            position: recovered.positions.get(name).cloned(),
            table: recovered.tables.get(name).cloned(),
            ..Restored::default()
        };
        for node in nodes {
            if let Some(state) = recovered.states.get(node) {
                restored.states.insert(node.clone(), state.clone());
            }
        }
        drop(recovered);
        self.stats.lock().recovery_time += started.elapsed();
        Ok(restored)
    }

    /// Takes checkpoint `epoch` with the given participants; `inject` sends the barrier
    /// into every source. Returns the epoch once the manifest is durable; `commit` then
    /// tells the sinks, and the sources the positions the checkpoint recorded.
    pub(crate) fn checkpoint(
        self: &Arc<Self>,
        participants: impl FnOnce() -> Participants,
        inject: impl FnOnce(u64) -> Vec<(String, Vec<u8>)>,
        commit: impl FnOnce(u64, &BTreeMap<String, String>),
    ) -> Result<u64, DbError> {
        let _serial = self.serial.lock();
        self.check_poisoned()?;
        {
            let recovered = self.recovered.lock();
            if !recovered.refused.is_empty() {
                let objects: Vec<String> = recovered
                    .refused
                    .iter()
                    .map(|(name, why)| format!("'{name}' ({why})"))
                    .collect();
                return Err(DbError::Checkpoint(format!(
                    "checkpoints are suspended: the checkpointed state of {} was not restored, and a new checkpoint would no longer hold it; create it again as checkpointed, or discard that state (LaminarDB::discard_checkpointed_state, or reopen with reset_state / --reset-state)",
                    objects.join(", ")
                )));
            }
        }
        if !self.replay.lock().is_empty() {
            return Err(DbError::InvalidOperation(
                "recovery is not complete: start() replays the pushes logged after the restored checkpoint; checkpoints begin after it".into(),
            ));
        }
        let epoch = self.next_epoch.fetch_add(1, Ordering::SeqCst);
        let started = Instant::now();
        let result = self.run_round(epoch, participants, inject);
        *self.round.lock() = None;
        let mut stats = self.stats.lock();
        match result {
            Ok((bytes, full, increments, positions)) => {
                stats.completed += 1;
                stats.full_snapshots += full;
                stats.incremental_snapshots += increments;
                stats.last_epoch = Some(epoch);
                stats.last_duration = Some(started.elapsed());
                stats.last_bytes = bytes;
                drop(stats);
                commit(epoch, &positions);
                // Log records of epochs up to this one precede its barriers: covered.
                if let Err(e) = self.log.lock().delete_before_epoch(epoch + 1) {
                    tracing::warn!(error = %e, "deleting covered write-ahead log segments failed");
                }
                tracing::debug!(epoch, bytes, "checkpoint complete");
                Ok(epoch)
            }
            Err(e) => {
                // Increments taken for this checkpoint are lost: the next one is full.
                self.chains.lock().clear();
                stats.failed += 1;
                stats.last_error = Some(e.to_string());
                tracing::warn!(epoch, error = %e, "checkpoint failed; processing continues");
                Err(e)
            }
        }
    }

    fn run_round(
        self: &Arc<Self>,
        epoch: u64,
        participants: impl FnOnce() -> Participants,
        inject: impl FnOnce(u64) -> Vec<(String, Vec<u8>)>,
    ) -> Result<(u64, u64, u64, BTreeMap<String, String>), DbError> {
        let parts = participants();
        {
            let mut round = self.round.lock();
            *round = Some(Round {
                epoch,
                nodes: parts.nodes.iter().map(|n| n.name.clone()).collect(),
                sources: parts.sources.iter().cloned().collect(),
                sinks: parts.sinks.iter().cloned().collect(),
                states: BTreeMap::new(),
                sink_states: BTreeMap::new(),
                positions: BTreeMap::new(),
                wal_position: 0,
                error: None,
            });
        }
        let observer: Arc<dyn CheckpointObserver> = self.clone();
        for node in &parts.nodes {
            node.set_checkpoint_observer(Some(observer.clone()));
        }
        // Tables are saved as the barriers are injected.
        let tables = inject(epoch);
        let deadline = Instant::now() + self.config.alignment_timeout;
        let abandoned = || DbError::Checkpoint(format!("checkpoint {epoch} was abandoned"));
        let Round {
            states,
            sink_states,
            positions,
            wal_position,
            ..
        } = {
            let mut round = self.round.lock();
            loop {
                let r = round.as_ref().ok_or_else(abandoned)?;
                if let Some(e) = &r.error {
                    return Err(DbError::Checkpoint(format!("checkpoint {epoch}: {e}")));
                }
                if r.complete() {
                    break round.take().ok_or_else(abandoned)?;
                }
                if self
                    .round_changed
                    .wait_until(&mut round, deadline)
                    .timed_out()
                {
                    let r = round.as_ref().ok_or_else(abandoned)?;
                    let waiting: Vec<String> = r
                        .nodes
                        .iter()
                        .map(|n| format!("stream node '{n}'"))
                        .chain(r.sources.iter().map(|s| format!("source '{s}'")))
                        .chain(r.sinks.iter().map(|s| format!("sink '{s}'")))
                        .collect();
                    return Err(DbError::Checkpoint(format!(
                        "checkpoint {epoch} timed out after {:?} (alignment timeout) waiting for {}",
                        self.config.alignment_timeout,
                        waiting.join(", ")
                    )));
                }
            }
        };
        // The log records the checkpoint covers must be durable before it is.
        self.sync_to(wal_position)
            .inspect_err(|e| self.poison(e.to_string()))?;
        let pipeline = encode_pipeline(&parts.objects, &parts.stopped, &positions, wal_position);
        let mut files: Vec<(String, Vec<u8>)> = vec![(PIPELINE_FILE.to_string(), pipeline)];
        let mut reused: Vec<ManifestEntry> = Vec::new();
        let previous = self.chains.lock().clone();
        // Node → (its file in this checkpoint, the chain it extends).
        let mut written: Vec<(String, String, Option<WrittenChain>)> = Vec::new();
        let increments = states.values().filter(|s| s.delta).count() as u64;
        let full = states.len() as u64 - increments;
        for (node, state) in states {
            let base = file_name("state", &node);
            if state.delta {
                let chain = previous.get(&node).cloned().ok_or_else(|| {
                    DbError::Checkpoint(format!(
                        "checkpoint {epoch}: '{node}' wrote an increment without a full snapshot to extend"
                    ))
                })?;
                let file = format!("{base}.{}", chain.files.len());
                reused.extend(chain.files.iter().cloned());
                files.push((file.clone(), state.bytes));
                written.push((node, file, Some(chain)));
            } else {
                files.push((base.clone(), state.bytes));
                written.push((node, base, None));
            }
        }
        for (table, rows) in tables {
            files.push((file_name("table", &table), rows));
        }
        for (sink, state) in sink_states {
            files.push((file_name("sink", &sink), state));
        }
        let bytes = files.iter().map(|(_, c)| c.len() as u64).sum();
        let refs: Vec<(&str, &[u8])> = files
            .iter()
            .map(|(n, c)| (n.as_str(), c.as_slice()))
            .collect();
        let manifest = self.store.write(epoch, &refs, &reused, &[]).map_err(|e| {
            let message = format!("writing checkpoint {epoch}: {e}");
            self.poison(message.clone());
            DbError::Checkpoint(message)
        })?;
        let mut chains = BTreeMap::new();
        for (node, file, extends) in written {
            let Some(entry) = manifest.files.iter().find(|f| f.name == file) else {
                continue;
            };
            let chain = match extends {
                Some(mut chain) => {
                    chain.delta_bytes += entry.len;
                    chain.files.push(entry.clone());
                    chain
                }
                None => WrittenChain {
                    files: vec![entry.clone()],
                    delta_bytes: 0,
                },
            };
            chains.insert(node, chain);
        }
        *self.chains.lock() = chains;
        if let Err(e) = self.store.gc() {
            tracing::warn!(error = %e, "deleting old checkpoints failed");
        }
        Ok((bytes, full, increments, positions))
    }

    fn with_round(&self, epoch: u64, f: impl FnOnce(&mut Round)) {
        let mut round = self.round.lock();
        if let Some(r) = round.as_mut()
            && r.epoch == epoch
        {
            f(r);
            self.round_changed.notify_all();
        }
    }

    /// Enqueues a push (`enqueue`) and logs it, under the log lock; returns once the record
    /// is durable when pushes are synced (one sync covers every record appended before
    /// it: concurrent pushes share it).
    pub(crate) fn log_push(
        &self,
        source: &str,
        msg: &Message,
        enqueue: impl FnOnce() -> Result<(), DbError>,
    ) -> Result<(), DbError> {
        if !self.replay.lock().is_empty() {
            return Err(DbError::InvalidOperation(format!(
                "push into '{source}' before start(): the database is recovering, and start() first replays the pushes logged after the restored checkpoint"
            )));
        }
        self.check_poisoned()?;
        let payload = encode_push(source, msg)?;
        let seq = {
            let mut log = self.log.lock();
            enqueue()?;
            log.append(self.next_epoch(), &payload)
                .map_err(|e| DbError::Checkpoint(format!("write-ahead log: {e}")))?
        };
        if self.config.sync_pushes {
            self.sync_to(seq + 1)?;
        }
        Ok(())
    }

    fn poison(&self, reason: String) {
        let mut poisoned = self.poisoned.lock();
        if poisoned.is_none() {
            tracing::error!(%reason, "the storage directory failed; the pipeline stops");
            *poisoned = Some((reason, false));
        }
    }

    fn check_poisoned(&self) -> Result<(), DbError> {
        match &*self.poisoned.lock() {
            Some((reason, _)) => Err(DbError::Checkpoint(format!(
                "the storage directory {} failed ({reason}); nothing more can be made durable, restart to recover from the last checkpoint",
                self.config.dir.display()
            ))),
            None => Ok(()),
        }
    }

    /// The storage failure, the first time it is asked for after it happened.
    pub(crate) fn newly_poisoned(&self) -> Option<String> {
        match &mut *self.poisoned.lock() {
            Some((reason, told)) if !*told => {
                *told = true;
                Some(reason.clone())
            }
            _ => None,
        }
    }

    /// Makes every log record below `seq` durable.
    fn sync_to(&self, seq: u64) -> Result<(), DbError> {
        if self.synced_to.load(Ordering::SeqCst) >= seq {
            return Ok(());
        }
        let mut log = self.log.lock();
        if self.synced_to.load(Ordering::SeqCst) >= seq {
            return Ok(());
        }
        let upto = log.next_seq();
        log.sync().map_err(|e| {
            let message = format!("write-ahead log: {e}");
            self.poison(message.clone());
            DbError::Checkpoint(message)
        })?;
        self.synced_to.fetch_max(upto, Ordering::SeqCst);
        Ok(())
    }

    /// Runs `inject` (the barriers entering the push sources) under the log lock and
    /// records the log position it stands for in checkpoint `epoch`.
    pub(crate) fn inject_logged(&self, epoch: u64, inject: impl FnOnce()) {
        let log = self.log.lock();
        let position = log.next_seq();
        inject();
        drop(log);
        self.with_round(epoch, |r| r.wal_position = position);
    }

    /// The logged pushes to replay (once), decoded as `(source, message)`.
    pub(crate) fn take_replay(&self) -> Vec<(String, Message)> {
        let records = std::mem::take(&mut *self.replay.lock());
        let mut out = Vec::with_capacity(records.len());
        for record in records {
            match decode_push(&record.payload) {
                Ok(push) => out.push(push),
                Err(e) => {
                    tracing::error!(seq = record.seq, error = %e, "undecodable write-ahead log record skipped");
                    self.stats.lock().unreplayed_pushes += 1;
                }
            }
        }
        out
    }

    /// Counts replayed and unreplayable pushes.
    pub(crate) fn count_replay(&self, replayed: u64, unreplayed: u64) {
        let mut stats = self.stats.lock();
        stats.replayed_pushes += replayed;
        stats.unreplayed_pushes += unreplayed;
    }

    /// A connector source injected the barrier of `epoch` at `position`.
    pub(crate) fn on_source_barrier(
        &self,
        source: &str,
        epoch: u64,
        position: Result<Option<String>, String>,
    ) {
        self.with_round(epoch, |r| {
            r.sources.remove(source);
            match position {
                Ok(Some(p)) => {
                    r.positions.insert(source.to_string(), p);
                }
                Ok(None) => {}
                Err(e) => r.error = Some(format!("source '{source}': {e}")),
            }
        });
    }

    /// A sink pre-committed `epoch` (or failed to).
    /// Sink `sink` pre-committed `epoch` (with the state it keeps in the checkpoint).
    pub(crate) fn on_sink_precommit(
        &self,
        sink: &str,
        epoch: u64,
        result: Result<Option<Vec<u8>>, String>,
    ) {
        self.with_round(epoch, |r| {
            r.sinks.remove(sink);
            match result {
                Ok(Some(state)) => {
                    r.sink_states.insert(sink.to_string(), state);
                }
                Ok(None) => {}
                Err(e) => r.error = Some(format!("sink '{sink}' could not pre-commit: {e}")),
            }
        });
    }

    /// The pre-commit state sink `name` kept in the recovered checkpoint, when the sink
    /// is defined as it was then (a sink defined differently starts without it). The
    /// checkpoint keeps it until the sink's `CREATE` succeeds ([`Durability::settle_recovery`]).
    pub(crate) fn take_sink_state(&self, name: &str, sql: &str) -> Option<Vec<u8>> {
        let recovered = self.recovered.lock();
        let state = recovered.sinks.get(name)?.clone();
        match recovered.objects.get(name) {
            Some(stored) if normalized(stored) == normalized(sql) => Some(state),
            _ => {
                tracing::warn!(
                    sink = name,
                    "the sink is defined differently from the checkpointed one: its pre-committed output is not written again"
                );
                None
            }
        }
    }
}

fn describe_nodes<'a>(nodes: impl Iterator<Item = &'a String>) -> String {
    let nodes: Vec<&str> = nodes.map(String::as_str).collect();
    format!("{} node(s) ({})", nodes.len(), nodes.join(", "))
}

impl CheckpointObserver for Durability {
    fn wants_delta(&self, node: &str, epoch: u64) -> bool {
        if !self.config.incremental || self.round.lock().as_ref().map(|r| r.epoch) != Some(epoch) {
            return false;
        }
        self.chains.lock().get(node).is_some_and(|chain| {
            chain.files.len() <= MAX_INCREMENTS
                && chain.delta_bytes < chain.files.first().map_or(0, |f| f.len)
        })
    }

    fn on_snapshot(&self, node: &str, epoch: u64, snapshot: Result<Option<StateSnapshot>, String>) {
        self.with_round(epoch, |r| {
            r.nodes.remove(node);
            match snapshot {
                Ok(Some(state)) => {
                    r.states.insert(node.to_string(), state);
                }
                Ok(None) => {}
                Err(e) => r.error = Some(format!("snapshot of '{node}' failed: {e}")),
            }
        });
    }
}

impl Recovered {
    /// Drops everything stored for object `name` (its nodes are `name` and `name[..]`), and
    /// with it the reason it held checkpoints back.
    fn forget(&mut self, name: &str) {
        self.objects.remove(name);
        self.refused.remove(name);
        self.stopped.remove(name);
        self.positions.remove(name);
        self.tables.remove(name);
        self.sinks.remove(name);
        let prefix = format!("{name}[");
        self.states
            .retain(|node, _| node != name && !node.starts_with(&prefix));
    }
}

const PUSH_TAG: &str = "push";
const PUSH_VERSION: u32 = 1;

/// A logged push: the source, then a batch (Arrow IPC) or a watermark.
fn encode_push(source: &str, msg: &Message) -> Result<Vec<u8>, DbError> {
    let mut w = SnapshotWriter::new(PUSH_TAG, PUSH_VERSION);
    w.bytes(source.as_bytes());
    match msg {
        Message::Batch(batch) => {
            w.u64(0);
            w.batch(batch)
                .map_err(|e| DbError::Engine(format!("encoding a push for the log: {e}")))?;
        }
        Message::Watermark(ts) => {
            w.u64(1);
            w.i64(*ts);
        }
        other => {
            return Err(DbError::Engine(format!(
                "only batches and watermarks are logged, not {other:?}"
            )));
        }
    }
    Ok(w.finish())
}

fn decode_push(bytes: &[u8]) -> Result<(String, Message), String> {
    let e = |e: laminar_core::CoreError| e.to_string();
    let mut r = SnapshotReader::new(bytes, PUSH_TAG, PUSH_VERSION).map_err(e)?;
    let source = String::from_utf8(r.bytes().map_err(e)?.to_vec()).map_err(|e| e.to_string())?;
    let msg = match r.u64().map_err(e)? {
        0 => Message::Batch(r.batch().map_err(e)?),
        1 => Message::Watermark(r.i64().map_err(e)?),
        kind => return Err(format!("unknown push kind {kind}")),
    };
    Ok((source, msg))
}

const PIPELINE_TAG: &str = "pipeline";
/// Version 2 adds the stopped objects: a build that reads only version 1 refuses the file
/// rather than restoring stopped objects empty.
const PIPELINE_VERSION: u32 = 2;

fn encode_pipeline(
    objects: &[(String, String)],
    stopped: &[(String, String)],
    positions: &BTreeMap<String, String>,
    wal_position: u64,
) -> Vec<u8> {
    let mut w = SnapshotWriter::new(PIPELINE_TAG, PIPELINE_VERSION);
    w.u64(wal_position);
    w.u64(objects.len() as u64);
    for (name, sql) in objects {
        w.bytes(name.as_bytes());
        w.bytes(sql.as_bytes());
    }
    w.u64(positions.len() as u64);
    for (source, position) in positions {
        w.bytes(source.as_bytes());
        w.bytes(position.as_bytes());
    }
    // Last: a version 1 file ends before it.
    w.u64(stopped.len() as u64);
    for (name, why) in stopped {
        w.bytes(name.as_bytes());
        w.bytes(why.as_bytes());
    }
    w.finish()
}

fn decode_pipeline(bytes: &[u8], into: &mut Recovered) -> Result<(), String> {
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|e| e.to_string());
    let mut r = SnapshotReader::new(bytes, PIPELINE_TAG, PIPELINE_VERSION)
        .or_else(|_| SnapshotReader::new(bytes, PIPELINE_TAG, 1))
        .map_err(|e| e.to_string())?;
    into.wal_position = r.u64().map_err(|e| e.to_string())?;
    for _ in 0..r.count().map_err(|e| e.to_string())? {
        let name = text(r.bytes().map_err(|e| e.to_string())?)?;
        let sql = text(r.bytes().map_err(|e| e.to_string())?)?;
        into.objects.insert(name, sql);
    }
    for _ in 0..r.count().map_err(|e| e.to_string())? {
        let source = text(r.bytes().map_err(|e| e.to_string())?)?;
        let position = text(r.bytes().map_err(|e| e.to_string())?)?;
        into.positions.insert(source, position);
    }
    if !r.is_at_end() {
        for _ in 0..r.count().map_err(|e| e.to_string())? {
            let name = text(r.bytes().map_err(|e| e.to_string())?)?;
            let why = text(r.bytes().map_err(|e| e.to_string())?)?;
            into.stopped.insert(name, why);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip_any_name() {
        for name in ["s", "s[0]", "with space", "ünï", ""] {
            let f = file_name("state", name);
            assert!(!f.contains(char::is_whitespace));
            assert_eq!(from_file_name("state", &f).as_deref(), Some(name));
        }
        assert_eq!(from_file_name("state", "table-73"), None);
        assert_eq!(from_file_name("state", "state-7"), None);
    }

    #[test]
    fn definitions_compare_without_layout() {
        assert_eq!(
            normalized("CREATE STREAM a AS\n  SELECT 1;"),
            normalized("CREATE STREAM a AS SELECT 1")
        );
        assert_ne!(
            normalized("CREATE STREAM a AS SELECT 1"),
            normalized("CREATE STREAM a AS SELECT 2")
        );
    }

    #[test]
    fn pipeline_file_round_trips() {
        let objects = vec![("a".to_string(), "CREATE SOURCE a (x INT)".to_string())];
        let positions = BTreeMap::from([("a".to_string(), "event=7".to_string())]);
        let stopped = vec![("v".to_string(), "it failed".to_string())];
        let bytes = encode_pipeline(&objects, &stopped, &positions, 9);
        let mut r = Recovered::default();
        decode_pipeline(&bytes, &mut r).unwrap();
        assert_eq!(r.objects["a"], "CREATE SOURCE a (x INT)");
        assert_eq!(r.positions["a"], "event=7");
        assert_eq!(r.stopped["v"], "it failed");
        assert_eq!(r.wal_position, 9);
        assert!(decode_pipeline(&bytes[..bytes.len() - 2], &mut Recovered::default()).is_err());
        // A version 1 file ends after the positions.
        let mut older = encode_pipeline(&objects, &[], &positions, 9);
        older.truncate(older.len() - 8);
        let version_at = 8 + PIPELINE_TAG.len();
        older[version_at..version_at + 8].copy_from_slice(&1u64.to_le_bytes());
        let mut r = Recovered::default();
        decode_pipeline(&older, &mut r).unwrap();
        assert!(r.stopped.is_empty() && r.positions["a"] == "event=7");
    }
}
