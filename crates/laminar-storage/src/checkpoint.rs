//! Checkpoint files: each checkpoint is a set of snapshot files plus a manifest that lists
//! them with their lengths and CRC32C checksums, written atomically, and a `LATEST` pointer.
//!
//! ## Layout (under the store's directory)
//! - `<epoch, 20 digits>/<name>`: the snapshot files a checkpoint wrote;
//! - `MANIFEST-<epoch, 20 digits>`: the manifest (text, below), ending with its own checksum;
//! - `LATEST`: the epoch of the newest complete checkpoint.
//!
//! A manifest entry names a file by its path, so an incremental checkpoint lists the files
//! of its parents it reuses next to the ones it wrote.
//!
//! ```text
//! laminardb-checkpoint 1
//! epoch 42
//! meta source.orders.offset 1234
//! file orders/state <path> <length> <crc32c>
//! crc <crc32c of every line above>
//! ```
//!
//! ## Atomicity
//! [`CheckpointStore::write`] writes and syncs every new file, then the manifest (temp name,
//! sync, rename, directory sync), then `LATEST` the same way. A crash at any point leaves
//! either the previous checkpoint or the new one as the newest complete one.
//!
//! ## Loading
//! [`CheckpointStore::load_latest`] starts from the newest manifest and checks it fully: its
//! own checksum, that it names the epoch of its file name (a manifest copied or swapped
//! into another place fails), and every file's length and checksum. A checkpoint that fails is
//! skipped with the reason (reported in [`Loaded::skipped`] and logged) and the next older one
//! is tried.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::backend::Storage;
use crate::error::{Result, StorageError};

const HEADER: &str = "laminardb-checkpoint 1";

/// One file of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestEntry {
    /// Logical name (for example `stream.q.state`).
    pub name: String,
    /// Path under the store's directory.
    pub path: String,
    /// Length in bytes.
    pub len: u64,
    /// CRC32C of the content.
    pub crc: u32,
}

/// A checkpoint's manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Epoch.
    pub epoch: u64,
    /// Key/value facts recorded with the checkpoint (source positions, sink decisions).
    pub meta: Vec<(String, String)>,
    /// Files, by logical name.
    pub files: Vec<ManifestEntry>,
}

/// A loaded checkpoint.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Its manifest.
    pub manifest: Manifest,
    /// File contents by logical name.
    pub files: BTreeMap<String, Vec<u8>>,
    /// Newer checkpoints that failed their checks, with the reason.
    pub skipped: Vec<(u64, StorageError)>,
}

/// See the module docs.
pub struct CheckpointStore {
    storage: Arc<dyn Storage>,
    dir: String,
    retain: usize,
}

fn valid_token(s: &str) -> bool {
    !s.is_empty() && !s.contains(char::is_whitespace)
}

impl CheckpointStore {
    /// A store in `dir` keeping the newest `retain` checkpoints (at least 1).
    pub fn new(storage: Arc<dyn Storage>, dir: &str, retain: usize) -> CheckpointStore {
        CheckpointStore {
            storage,
            dir: dir.to_string(),
            retain: retain.max(1),
        }
    }

    fn path(&self, name: &str) -> String {
        if self.dir.is_empty() {
            name.to_string()
        } else {
            format!("{}/{name}", self.dir)
        }
    }

    fn manifest_name(epoch: u64) -> String {
        format!("MANIFEST-{epoch:020}")
    }

    /// Writes checkpoint `epoch`: `new_files` (logical name, content) are written under
    /// `<epoch>/`, `reused` entries (from a parent manifest) are listed as they are.
    pub fn write(
        &self,
        epoch: u64,
        new_files: &[(&str, &[u8])],
        reused: &[ManifestEntry],
        meta: &[(String, String)],
    ) -> Result<Manifest> {
        let bad = |what: &str| StorageError::Corrupt {
            what: "checkpoint request",
            path: self.dir.clone(),
            offset: 0,
            reason: format!("{what} must be non-empty and free of whitespace"),
        };
        let mut files = Vec::new();
        let data_dir = format!("{epoch:020}");
        for (name, content) in new_files {
            if !valid_token(name) {
                return Err(bad("file names"));
            }
            let rel = format!("{data_dir}/{name}");
            let path = self.path(&rel);
            self.storage.write(&path, content)?;
            self.storage.sync(&path)?;
            files.push(ManifestEntry {
                name: name.to_string(),
                path: rel,
                len: content.len() as u64,
                crc: crc32c::crc32c(content),
            });
        }
        if !new_files.is_empty() {
            self.storage.sync_dir(&self.path(&data_dir))?;
        }
        files.extend(reused.iter().cloned());
        for (k, v) in meta {
            if !valid_token(k) || !valid_token(v) {
                return Err(bad("meta keys and values"));
            }
        }
        let manifest = Manifest {
            epoch,
            meta: meta.to_vec(),
            files,
        };
        let text = encode(&manifest);
        let name = Self::manifest_name(epoch);
        self.atomic_write(&name, text.as_bytes())?;
        self.atomic_write("LATEST", format!("{epoch}\n").as_bytes())?;
        Ok(manifest)
    }

    fn atomic_write(&self, name: &str, content: &[u8]) -> Result<()> {
        let tmp = self.path(&format!("{name}.tmp"));
        self.storage.write(&tmp, content)?;
        self.storage.sync(&tmp)?;
        self.storage.rename(&tmp, &self.path(name))?;
        self.storage.sync_dir(&self.dir)
    }

    /// Epochs of the manifests present, newest first.
    fn epochs(&self) -> Result<Vec<u64>> {
        let mut epochs: Vec<u64> = self
            .storage
            .list(&self.dir)?
            .iter()
            .filter_map(|n| n.strip_prefix("MANIFEST-")?.parse().ok())
            .collect();
        epochs.sort_unstable_by(|a, b| b.cmp(a));
        Ok(epochs)
    }

    /// Loads and checks one checkpoint.
    pub fn load(&self, epoch: u64) -> Result<Loaded> {
        let path = self.path(&Self::manifest_name(epoch));
        let text = self.storage.read(&path)?;
        let manifest = decode(&path, &text)?;
        if manifest.epoch != epoch {
            return Err(StorageError::Corrupt {
                what: "checkpoint manifest",
                path,
                offset: 0,
                reason: format!("it describes epoch {}, not {epoch}", manifest.epoch),
            });
        }
        let mut files = BTreeMap::new();
        for entry in &manifest.files {
            let file = self.path(&entry.path);
            let content = self.storage.read(&file)?;
            if content.len() as u64 != entry.len || crc32c::crc32c(&content) != entry.crc {
                return Err(StorageError::Corrupt {
                    what: "checkpoint file",
                    path: file,
                    offset: 0,
                    reason: format!(
                        "expected {} bytes with CRC32C {:08x}, found {} bytes with {:08x}",
                        entry.len,
                        entry.crc,
                        content.len(),
                        crc32c::crc32c(&content)
                    ),
                });
            }
            files.insert(entry.name.clone(), content);
        }
        Ok(Loaded {
            manifest,
            files,
            skipped: Vec::new(),
        })
    }

    /// The newest checkpoint that passes every check (see the module docs); `None` when there
    /// is none.
    pub fn load_latest(&self) -> Result<Option<Loaded>> {
        let mut skipped = Vec::new();
        // LATEST names the newest complete checkpoint; a manifest newer than it was written
        // by a checkpoint that did not finish and is ignored.
        let latest = self
            .storage
            .read(&self.path("LATEST"))
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.trim().parse::<u64>().ok());
        for epoch in self.epochs()? {
            if latest.is_some_and(|l| epoch > l) {
                continue;
            }
            match self.load(epoch) {
                Ok(mut loaded) => {
                    loaded.skipped = skipped;
                    return Ok(Some(loaded));
                }
                Err(StorageError::Crashed) => return Err(StorageError::Crashed),
                Err(e) => {
                    tracing::error!(epoch, error = %e, "checkpoint skipped, trying the previous one");
                    skipped.push((epoch, e));
                }
            }
        }
        if skipped.is_empty() {
            Ok(None)
        } else {
            let (epoch, e) = skipped.remove(0);
            Err(StorageError::Corrupt {
                what: "checkpoints",
                path: self.dir.clone(),
                offset: epoch,
                reason: format!("no checkpoint passes its checks (newest: {e})"),
            })
        }
    }

    /// Deletes the manifests beyond the newest `retain` and the files no kept manifest
    /// names. Returns how many checkpoints were deleted.
    pub fn gc(&self) -> Result<usize> {
        let epochs = self.epochs()?;
        if epochs.len() <= self.retain {
            return Ok(0);
        }
        let (kept, doomed) = epochs.split_at(self.retain);
        let mut live = BTreeSet::new();
        for epoch in kept {
            if let Ok(text) = self.storage.read(&self.path(&Self::manifest_name(*epoch)))
                && let Ok(m) = decode("", &text)
            {
                live.extend(m.files.into_iter().map(|f| f.path));
            }
        }
        for epoch in doomed {
            let name = self.path(&Self::manifest_name(*epoch));
            if let Ok(text) = self.storage.read(&name)
                && let Ok(m) = decode("", &text)
            {
                for f in m.files.iter().filter(|f| !live.contains(&f.path)) {
                    self.storage.delete(&self.path(&f.path))?;
                }
            }
            self.storage.delete(&name)?;
        }
        self.storage.sync_dir(&self.dir)?;
        Ok(doomed.len())
    }
}

fn encode(m: &Manifest) -> String {
    let mut text = format!("{HEADER}\nepoch {}\n", m.epoch);
    for (k, v) in &m.meta {
        text.push_str(&format!("meta {k} {v}\n"));
    }
    for f in &m.files {
        text.push_str(&format!(
            "file {} {} {} {:08x}\n",
            f.name, f.path, f.len, f.crc
        ));
    }
    let crc = crc32c::crc32c(text.as_bytes());
    text.push_str(&format!("crc {crc:08x}\n"));
    text
}

fn decode(path: &str, bytes: &[u8]) -> Result<Manifest> {
    let corrupt = |offset: usize, reason: String| StorageError::Corrupt {
        what: "checkpoint manifest",
        path: path.to_string(),
        offset: offset as u64,
        reason,
    };
    let text =
        std::str::from_utf8(bytes).map_err(|e| corrupt(e.valid_up_to(), "not UTF-8".into()))?;
    let body_end = text
        .rfind("crc ")
        .ok_or_else(|| corrupt(text.len(), "no checksum line".into()))?;
    let (body, crc_line) = text.split_at(body_end);
    let expected = u32::from_str_radix(crc_line.trim_start_matches("crc ").trim(), 16)
        .map_err(|_| corrupt(body_end, "unreadable checksum".into()))?;
    if crc32c::crc32c(body.as_bytes()) != expected {
        return Err(corrupt(0, "manifest checksum mismatch".into()));
    }
    let mut lines = body.lines();
    if lines.next() != Some(HEADER) {
        return Err(corrupt(0, "unknown manifest header".into()));
    }
    let mut epoch = None;
    let mut meta = Vec::new();
    let mut files = Vec::new();
    for line in lines {
        let parts: Vec<&str> = line.split(' ').collect();
        match parts.as_slice() {
            ["epoch", e] => epoch = e.parse().ok(),
            ["meta", k, v] => meta.push((k.to_string(), v.to_string())),
            ["file", name, p, len, crc] => files.push(ManifestEntry {
                name: name.to_string(),
                path: p.to_string(),
                len: len
                    .parse()
                    .map_err(|_| corrupt(0, format!("bad length in '{line}'")))?,
                crc: u32::from_str_radix(crc, 16)
                    .map_err(|_| corrupt(0, format!("bad checksum in '{line}'")))?,
            }),
            _ => return Err(corrupt(0, format!("unreadable line '{line}'"))),
        }
    }
    let epoch = epoch.ok_or_else(|| corrupt(0, "no epoch line".into()))?;
    Ok(Manifest { epoch, meta, files })
}

#[cfg(test)]
mod tests;
