//! Database configuration and its builder.

use std::collections::HashMap;
use std::time::Duration;

use crate::error::DbError;

/// What a full source queue does to a push (SPEC 1.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackpressureStrategy {
    /// The push waits until there is room; nothing is lost (the default).
    #[default]
    Block,
    /// The oldest queued push is evicted (counted in `rows_dropped`).
    DropOldest,
    /// The push fails with [`DbError::ChannelFull`].
    Reject,
}

impl BackpressureStrategy {
    /// Parses `block`, `drop_oldest` or `reject`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().replace('-', "_").as_str() {
            "block" => Some(BackpressureStrategy::Block),
            "drop_oldest" => Some(BackpressureStrategy::DropOldest),
            "reject" => Some(BackpressureStrategy::Reject),
            _ => None,
        }
    }
}

/// Settings of a database instance.
#[derive(Debug, Clone)]
pub struct DbConfig {
    /// Default source queue size in messages (one push = one message).
    pub buffer_size: usize,
    /// Default source backpressure policy.
    pub backpressure: BackpressureStrategy,
    /// Worker threads of the operator runtime.
    pub workers: usize,
    /// Default source idle timeout.
    pub idle_timeout: Duration,
    /// `${NAME}` values.
    pub config_vars: HashMap<String, String>,
    /// Capacity of subscription queues (messages).
    pub subscription_buffer: usize,
    /// Durable storage; `None` runs purely in memory.
    pub storage: Option<StorageConfig>,
}

/// Durability settings (`LaminarDbBuilder::storage_dir` and friends).
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// Directory holding the checkpoints.
    pub dir: std::path::PathBuf,
    /// Time between automatic checkpoints once the pipeline runs; `None`: only
    /// `checkpoint()` takes them.
    pub checkpoint_interval: Option<Duration>,
    /// Checkpoints kept (the newest ones).
    pub max_retained: usize,
    /// How long a checkpoint may take from its barriers to the last snapshot before it is
    /// abandoned (processing continues).
    pub alignment_timeout: Duration,
    /// Objects whose checkpointed state is discarded instead of restored (`"*"`: all).
    pub reset_state: Vec<String>,
    /// A push returns only once its write-ahead log record is on disk (group commit);
    /// `false` acknowledges at once and syncs with each checkpoint.
    pub sync_pushes: bool,
    /// On write-ahead log corruption, replay the records before it and drop the rest
    /// instead of refusing to open.
    pub wal_salvage: bool,
    /// Checkpoints write only the state that changed since the previous one, where the
    /// operator can tell (aggregations); a full snapshot is taken again once an operator's
    /// increments add up to its last full one, or after 16 increments.
    pub incremental: bool,
    /// Where checkpoint files go instead of `<dir>/checkpoints`: an object store URL
    /// (`file:///path`, or `s3://bucket/prefix` with the `s3` feature; S3 settings come
    /// from `AWS_*` environment variables). The write-ahead log stays in `dir`.
    pub checkpoint_url: Option<String>,
}

impl StorageConfig {
    /// Defaults of SPEC 4.3: a checkpoint every 10 s, 3 kept, 30 s alignment timeout.
    pub fn new(dir: impl Into<std::path::PathBuf>) -> StorageConfig {
        StorageConfig {
            dir: dir.into(),
            checkpoint_interval: Some(Duration::from_secs(10)),
            max_retained: 3,
            alignment_timeout: Duration::from_secs(30),
            reset_state: Vec::new(),
            sync_pushes: true,
            wal_salvage: false,
            incremental: true,
            checkpoint_url: None,
        }
    }
}

impl Default for DbConfig {
    fn default() -> Self {
        DbConfig {
            buffer_size: 65536,
            backpressure: BackpressureStrategy::Block,
            workers: default_workers(),
            idle_timeout: Duration::from_secs(30),
            config_vars: HashMap::new(),
            subscription_buffer: 1024,
            storage: None,
        }
    }
}

/// `LAMINAR_WORKERS` from the environment, else the number of cores.
pub fn default_workers() -> usize {
    std::env::var("LAMINAR_WORKERS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
}

/// Builds a [`crate::LaminarDB`].
#[derive(Debug, Clone, Default)]
pub struct LaminarDbBuilder {
    config: DbConfig,
}

impl LaminarDbBuilder {
    /// Default source queue size (messages).
    pub fn buffer_size(mut self, slots: usize) -> Self {
        self.config.buffer_size = slots.max(1);
        self
    }

    /// Default source backpressure policy.
    pub fn backpressure(mut self, strategy: BackpressureStrategy) -> Self {
        self.config.backpressure = strategy;
        self
    }

    /// Number of worker threads (`--workers` > `LAMINAR_WORKERS` > cores).
    pub fn workers(mut self, n: usize) -> Self {
        self.config.workers = n.max(1);
        self
    }

    /// Default idle timeout of sources.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.config.idle_timeout = timeout;
        self
    }

    /// A `${NAME}` value substituted into SQL before parsing.
    pub fn config_var(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.config_vars.insert(name.into(), value.into());
        self
    }

    /// Capacity of subscription queues (messages).
    pub fn subscription_buffer(mut self, messages: usize) -> Self {
        self.config.subscription_buffer = messages.max(1);
        self
    }

    /// Turns durability on: checkpoints go to `dir`, and opening a database on a `dir` that
    /// holds checkpoints restores the state of every object the application creates again
    /// with the same definition (see `docs/DURABILITY.md`).
    pub fn storage_dir(mut self, dir: impl AsRef<std::path::Path>) -> Self {
        self.config.storage = Some(StorageConfig::new(dir.as_ref()));
        self
    }

    fn storage(&mut self) -> Result<&mut StorageConfig, DbError> {
        self.config.storage.as_mut().ok_or_else(|| {
            DbError::InvalidOperation(
                "checkpoint settings need durable storage: call storage_dir first".into(),
            )
        })
    }

    /// Time between automatic checkpoints (`None`: manual `checkpoint()` only). Needs
    /// `storage_dir`.
    pub fn checkpoint_interval(mut self, interval: Option<Duration>) -> Result<Self, DbError> {
        if interval.is_some_and(|d| d.is_zero()) {
            return Err(DbError::InvalidOperation(
                "the checkpoint interval must be positive".into(),
            ));
        }
        self.storage()?.checkpoint_interval = interval;
        Ok(self)
    }

    /// Number of checkpoints kept (at least 1). Needs `storage_dir`.
    pub fn max_retained_checkpoints(mut self, n: usize) -> Result<Self, DbError> {
        self.storage()?.max_retained = n.max(1);
        Ok(self)
    }

    /// How long a checkpoint may wait for its barriers and snapshots. Needs `storage_dir`.
    pub fn alignment_timeout(mut self, timeout: Duration) -> Result<Self, DbError> {
        self.storage()?.alignment_timeout = timeout;
        Ok(self)
    }

    /// Whether a push waits until its write-ahead log record is durable (default `true`).
    /// Needs `storage_dir`.
    pub fn sync_pushes(mut self, sync: bool) -> Result<Self, DbError> {
        self.storage()?.sync_pushes = sync;
        Ok(self)
    }

    /// Opens despite a corrupt write-ahead log, replaying only the records before the
    /// damage (reported in `checkpoint_stats().wal_report`). Needs `storage_dir`.
    pub fn wal_salvage(mut self, salvage: bool) -> Result<Self, DbError> {
        self.storage()?.wal_salvage = salvage;
        Ok(self)
    }

    /// Whether checkpoints write only what changed since the previous one where operators
    /// can tell (default `true`; see [`StorageConfig::incremental`]). Needs `storage_dir`.
    pub fn incremental_checkpoints(mut self, incremental: bool) -> Result<Self, DbError> {
        self.storage()?.incremental = incremental;
        Ok(self)
    }

    /// Writes checkpoint files to an object store instead of `<storage_dir>/checkpoints`
    /// (see [`StorageConfig::checkpoint_url`]). Needs `storage_dir`.
    pub fn checkpoint_store(mut self, url: impl Into<String>) -> Result<Self, DbError> {
        self.storage()?.checkpoint_url = Some(url.into());
        Ok(self)
    }

    /// Discards the checkpointed state of object `name` (`"*"`: of every object) instead
    /// of restoring it, e.g. after changing its definition. Needs `storage_dir`.
    pub fn reset_state(mut self, name: impl Into<String>) -> Result<Self, DbError> {
        self.storage()?.reset_state.push(name.into());
        Ok(self)
    }

    /// Opens the database.
    pub async fn build(self) -> Result<crate::LaminarDB, DbError> {
        crate::LaminarDB::with_config(self.config)
    }

    /// Opens the database from synchronous code.
    pub fn build_sync(self) -> Result<crate::LaminarDB, DbError> {
        crate::LaminarDB::with_config(self.config)
    }
}
