//! Storage errors. Corruption is always reported with where it is; nothing is repaired
//! silently except a torn tail of the write-ahead log, which is reported in
//! [`crate::wal::Recovery`].

use std::path::Path;

/// Result alias of this crate.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// A storage failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// An I/O operation failed (including a failed `fsync`, which is never retried).
    #[error("cannot {operation} '{path}': {reason}")]
    Io {
        /// What was attempted.
        operation: &'static str,
        /// The file or directory.
        path: String,
        /// The system's reason.
        reason: String,
    },
    /// The file does not exist.
    #[error("'{0}' does not exist")]
    NotFound(String),
    /// Stored bytes fail their checksum or do not parse.
    #[error("corrupt {what} in '{path}' at byte {offset}: {reason}")]
    Corrupt {
        /// What is corrupt (for example "WAL record").
        what: &'static str,
        /// The file.
        path: String,
        /// Offset of the bad bytes.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The (simulated) process crashed: nothing more can be done until it restarts.
    #[error("storage crashed")]
    Crashed,
}

impl StorageError {
    pub(crate) fn io(operation: &'static str, path: &Path, e: std::io::Error) -> StorageError {
        StorageError::Io {
            operation,
            path: path.display().to_string(),
            reason: e.to_string(),
        }
    }
}
