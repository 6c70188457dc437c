//! # laminar-storage
//!
//! Durable storage for LaminarDB: the [`backend::Storage`] trait with a local file-system
//! backend, an object-store backend for checkpoint files ([`object::ObjectStorage`]: local
//! paths, and S3-compatible stores with the `s3` feature) and a fault-injecting in-memory
//! backend for crash tests, and the write-ahead log
//! ([`wal::Wal`]) whose records carry an epoch and CRC32C checksums, and checkpoint files
//! with atomically written, checksummed manifests ([`checkpoint::CheckpointStore`]).
//!
//! Read first: the durability contract in [`backend`], then the record format and recovery
//! rules in [`wal`].

pub mod backend;
pub mod checkpoint;
pub mod error;
pub mod object;
pub mod wal;

pub use backend::{FaultyMemory, LocalFs, Storage};
pub use checkpoint::{CheckpointStore, Loaded, Manifest, ManifestEntry};
pub use error::{Result, StorageError};
pub use object::ObjectStorage;
pub use wal::{Recovery, Wal, WalOptions, WalRecord};
