//! The write-ahead log: numbered records with an epoch, in segment files, each record
//! protected by CRC32C checksums.
//!
//! ## Record format (little-endian)
//!
//! | bytes | field |
//! |---|---|
//! | 4 | payload length |
//! | 8 | epoch (the checkpoint epoch the record belongs to) |
//! | 8 | sequence number (consecutive across segments) |
//! | 4 | CRC32C of the payload |
//! | 4 | CRC32C of the 24 bytes above |
//! | n | payload |
//!
//! Segments are files `<dir>/<first sequence number, 20 digits>.wal`; a new one starts when
//! the current one would pass [`WalOptions::segment_bytes`].
//!
//! ## Durability and recovery
//! [`Wal::append`] hands bytes to the storage; they are durable once [`Wal::sync`] returns
//! (one sync covers every record appended before it: group commit). A failed sync poisons the
//! log: every later call fails with the same error, nothing is retried.
//!
//! [`Wal::open`] reads every segment in order and checks each record:
//! - an incomplete record at the end of the last segment, or a last record whose payload
//!   fails its checksum, is a **torn tail** (a write the crash interrupted): it is cut off and
//!   reported in [`Recovery::torn_tail`];
//! - anything else that fails (a header checksum, a payload checksum before the end, a gap in
//!   the sequence numbers, an incomplete record in an earlier segment) is **corruption**:
//!   opening fails with [`StorageError::Corrupt`] naming the file and offset, unless
//!   [`WalOptions::salvage`] is set, in which case the log is cut at the first bad record and
//!   the loss is reported in [`Recovery::salvaged`].

use std::sync::Arc;

use crate::backend::Storage;
use crate::error::{Result, StorageError};

const HEADER: usize = 28;

/// Options of a log.
#[derive(Debug, Clone)]
pub struct WalOptions {
    /// A segment is closed once it would grow past this many bytes.
    pub segment_bytes: u64,
    /// On corruption, keep the records before it and cut the rest instead of failing.
    pub salvage: bool,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes: 64 << 20,
            salvage: false,
        }
    }
}

/// One record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalRecord {
    /// Sequence number (consecutive from 1).
    pub seq: u64,
    /// Epoch.
    pub epoch: u64,
    /// Payload bytes.
    pub payload: Vec<u8>,
}

/// A cut-off torn tail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// The segment.
    pub segment: String,
    /// Where the valid records end.
    pub offset: u64,
    /// Bytes cut off.
    pub bytes: u64,
}

/// What opening a log found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// The valid records, in order.
    pub records: Vec<WalRecord>,
    /// The torn tail that was cut off, if any.
    pub torn_tail: Option<TornTail>,
    /// With salvage: the corruption that was cut off and how many bytes were dropped.
    pub salvaged: Option<(StorageError, u64)>,
}

/// See the module docs.
pub struct Wal {
    storage: Arc<dyn Storage>,
    dir: String,
    options: WalOptions,
    /// Segments in order: (first sequence number, path, highest epoch in it).
    segments: Vec<(u64, String, u64)>,
    segment_len: u64,
    next_seq: u64,
    /// Segments with unsynced appends.
    dirty: Vec<String>,
    dir_dirty: bool,
    poisoned: Option<StorageError>,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.dir)
            .field("segments", &self.segments.len())
            .field("next_seq", &self.next_seq)
            .finish()
    }
}

fn segment_name(dir: &str, first_seq: u64) -> String {
    if dir.is_empty() {
        format!("{first_seq:020}.wal")
    } else {
        format!("{dir}/{first_seq:020}.wal")
    }
}

fn encode(seq: u64, epoch: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&epoch.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    let header_crc = crc32c::crc32c(&out);
    out.extend_from_slice(&header_crc.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// Outcome of reading one segment.
enum Scan {
    /// Every byte is a valid record.
    Complete,
    /// Valid records end at the offset; the rest is a torn tail (only the last segment).
    Torn(u64),
    /// Corruption at the offset.
    Corrupt(u64, String),
}

fn scan(data: &[u8], last: bool, expected_seq: &mut u64, out: &mut Vec<WalRecord>) -> Scan {
    let mut offset = 0usize;
    while offset < data.len() {
        let rest = data.len() - offset;
        if rest < HEADER {
            return if last {
                Scan::Torn(offset as u64)
            } else {
                Scan::Corrupt(
                    offset as u64,
                    format!("incomplete record header ({rest} bytes)"),
                )
            };
        }
        let h = &data[offset..offset + HEADER];
        if crc32c::crc32c(&h[..24]) != u32_at(h, 24) {
            return Scan::Corrupt(offset as u64, "record header checksum mismatch".into());
        }
        let len = u32_at(h, 0) as usize;
        let epoch = u64_at(h, 4);
        let seq = u64_at(h, 12);
        if seq != *expected_seq {
            return Scan::Corrupt(
                offset as u64,
                format!("sequence number {seq} where {} was expected", *expected_seq),
            );
        }
        let end = offset + HEADER + len;
        if end > data.len() {
            return if last {
                Scan::Torn(offset as u64)
            } else {
                Scan::Corrupt(offset as u64, "record extends past the segment end".into())
            };
        }
        let payload = &data[offset + HEADER..end];
        if crc32c::crc32c(payload) != u32_at(h, 20) {
            return if last && end == data.len() {
                Scan::Torn(offset as u64)
            } else {
                Scan::Corrupt(offset as u64, "record payload checksum mismatch".into())
            };
        }
        out.push(WalRecord {
            seq,
            epoch,
            payload: payload.to_vec(),
        });
        *expected_seq += 1;
        offset = end;
    }
    Scan::Complete
}

impl Wal {
    /// Opens (or creates) the log in `dir`, recovering its records; see the module docs.
    pub fn open(
        storage: Arc<dyn Storage>,
        dir: &str,
        options: WalOptions,
    ) -> Result<(Wal, Recovery)> {
        let mut names: Vec<(u64, String)> = storage
            .list(dir)?
            .into_iter()
            .filter_map(|n| {
                let first = n.strip_suffix(".wal")?.parse::<u64>().ok()?;
                Some((first, n))
            })
            .collect();
        names.sort();
        let mut recovery = Recovery::default();
        let mut segments = Vec::new();
        let mut expected = names.first().map_or(1, |(first, _)| *first);
        let mut segment_len = 0;
        let count = names.len();
        for (i, (first, name)) in names.iter().enumerate() {
            let path = segment_name(dir, *first);
            let data = storage.read(&path)?;
            let last = i + 1 == count;
            let before = recovery.records.len();
            if *first != expected {
                let e = StorageError::Corrupt {
                    what: "WAL segment",
                    path: path.clone(),
                    offset: 0,
                    reason: format!("starts at record {first} where {expected} was expected"),
                };
                return Self::salvage_or_fail(
                    storage,
                    dir,
                    options,
                    recovery,
                    segments,
                    e,
                    &names[i..],
                );
            }
            let outcome = scan(&data, last, &mut expected, &mut recovery.records);
            let max_epoch = recovery.records[before..]
                .iter()
                .map(|r| r.epoch)
                .max()
                .unwrap_or(0);
            match outcome {
                Scan::Complete => {
                    segment_len = data.len() as u64;
                    segments.push((*first, path, max_epoch));
                }
                Scan::Torn(offset) => {
                    tracing::warn!(
                        segment = %name,
                        offset,
                        bytes = data.len() as u64 - offset,
                        "write-ahead log: cut off a torn tail"
                    );
                    storage.truncate(&path, offset)?;
                    storage.sync(&path)?;
                    recovery.torn_tail = Some(TornTail {
                        segment: path.clone(),
                        offset,
                        bytes: data.len() as u64 - offset,
                    });
                    segment_len = offset;
                    segments.push((*first, path, max_epoch));
                }
                Scan::Corrupt(offset, reason) => {
                    let e = StorageError::Corrupt {
                        what: "WAL record",
                        path: path.clone(),
                        offset,
                        reason,
                    };
                    if !options.salvage {
                        return Err(e);
                    }
                    let dropped = data.len() as u64 - offset
                        + names[i + 1..]
                            .iter()
                            .map(|(f, _)| {
                                storage
                                    .read(&segment_name(dir, *f))
                                    .map_or(0, |d| d.len() as u64)
                            })
                            .sum::<u64>();
                    tracing::error!(%e, dropped, "write-ahead log: salvaged, records after the corruption are lost");
                    storage.truncate(&path, offset)?;
                    storage.sync(&path)?;
                    for (f, _) in &names[i + 1..] {
                        storage.delete(&segment_name(dir, *f))?;
                    }
                    storage.sync_dir(dir)?;
                    recovery.salvaged = Some((e, dropped));
                    segment_len = offset;
                    segments.push((*first, path, max_epoch));
                    break;
                }
            }
        }
        let wal = Wal {
            storage,
            dir: dir.to_string(),
            options,
            segments,
            segment_len,
            next_seq: expected,
            dirty: Vec::new(),
            dir_dirty: false,
            poisoned: None,
        };
        Ok((wal, recovery))
    }

    fn salvage_or_fail(
        storage: Arc<dyn Storage>,
        dir: &str,
        options: WalOptions,
        mut recovery: Recovery,
        segments: Vec<(u64, String, u64)>,
        e: StorageError,
        rest: &[(u64, String)],
    ) -> Result<(Wal, Recovery)> {
        if !options.salvage {
            return Err(e);
        }
        let mut dropped = 0;
        for (f, _) in rest {
            let path = segment_name(dir, *f);
            dropped += storage.read(&path).map_or(0, |d| d.len() as u64);
            storage.delete(&path)?;
        }
        storage.sync_dir(dir)?;
        tracing::error!(%e, dropped, "write-ahead log: salvaged, records after the corruption are lost");
        recovery.salvaged = Some((e, dropped));
        let next_seq = recovery.records.last().map_or(1, |r| r.seq + 1);
        let segment_len = match segments.last() {
            Some((_, path, _)) => storage.read(path)?.len() as u64,
            None => 0,
        };
        Ok((
            Wal {
                storage,
                dir: dir.to_string(),
                options,
                segments,
                segment_len,
                next_seq,
                dirty: Vec::new(),
                dir_dirty: false,
                poisoned: None,
            },
            recovery,
        ))
    }

    fn check(&self) -> Result<()> {
        match &self.poisoned {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn poison<T>(&mut self, r: Result<T>) -> Result<T> {
        if let Err(e) = &r {
            self.poisoned = Some(e.clone());
        }
        r
    }

    /// Sequence number the next record gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Appends a record (durable after the next [`Wal::sync`]); returns its sequence number.
    pub fn append(&mut self, epoch: u64, payload: &[u8]) -> Result<u64> {
        self.check()?;
        let seq = self.next_seq;
        let bytes = encode(seq, epoch, payload);
        let roll = self.segments.is_empty()
            || (self.segment_len > 0
                && self.segment_len + bytes.len() as u64 > self.options.segment_bytes);
        if roll {
            let path = segment_name(&self.dir, seq);
            self.segments.push((seq, path, epoch));
            self.segment_len = 0;
            self.dir_dirty = true;
        }
        let path = self
            .segments
            .last()
            .map(|s| s.1.clone())
            .unwrap_or_default();
        let written = self.storage.append(&path, &bytes);
        self.poison(written)?;
        if let Some(last) = self.segments.last_mut() {
            last.2 = last.2.max(epoch);
        }
        self.segment_len += bytes.len() as u64;
        if !self.dirty.contains(&path) {
            self.dirty.push(path);
        }
        self.next_seq += 1;
        Ok(seq)
    }

    /// Makes every appended record durable. A failure poisons the log.
    pub fn sync(&mut self) -> Result<()> {
        self.check()?;
        for path in std::mem::take(&mut self.dirty) {
            let synced = self.storage.sync(&path);
            self.poison(synced)?;
        }
        if self.dir_dirty {
            let synced = self.storage.sync_dir(&self.dir);
            self.poison(synced)?;
            self.dir_dirty = false;
        }
        Ok(())
    }

    /// Deletes the segments whose records all have an epoch below `epoch` (they are covered
    /// by a checkpoint), except the segment being written. Returns how many were deleted.
    pub fn delete_before_epoch(&mut self, epoch: u64) -> Result<usize> {
        self.check()?;
        let keep_from = self
            .segments
            .iter()
            .position(|(_, _, max_epoch)| *max_epoch >= epoch)
            .unwrap_or(self.segments.len().saturating_sub(1));
        let doomed: Vec<(u64, String, u64)> = self.segments.drain(..keep_from).collect();
        for (_, path, _) in &doomed {
            let deleted = self.storage.delete(path);
            self.poison(deleted)?;
        }
        if !doomed.is_empty() {
            let synced = self.storage.sync_dir(&self.dir);
            self.poison(synced)?;
        }
        Ok(doomed.len())
    }
}

#[cfg(test)]
mod tests;
