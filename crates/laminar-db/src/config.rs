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

    /// Durable storage is not available in this version: asking for it is an error rather
    /// than a silent in-memory database.
    pub fn storage_dir(self, _dir: impl AsRef<std::path::Path>) -> Result<Self, DbError> {
        Err(DbError::InvalidOperation(
            "storage_dir (durability, checkpoints and recovery) is not supported yet; this build runs in memory only".into(),
        ))
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
