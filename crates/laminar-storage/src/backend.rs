//! Storage backends: where durable bytes go.
//!
//! The contract is the one of a POSIX file system, made explicit: appends and writes are
//! *not* durable until [`Storage::sync`] of the file returns, and a created, renamed or
//! deleted name is not durable until [`Storage::sync_dir`] of its directory returns. Paths are
//! `/`-separated and relative to the backend's root.
//!
//! - [`LocalFs`]: a directory on the local file system (`fsync`, directory `fsync`).
//! - [`FaultyMemory`]: an in-memory file system for tests that models exactly what survives a
//!   crash (synced bytes and names only), and injects faults: a crash at the n-th sync, torn
//!   last writes, flipped bits, failing syncs and a full disk.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use crate::error::{Result, StorageError};

/// A place for durable bytes; see the module docs for the durability contract.
pub trait Storage: Send + Sync {
    /// Appends to a file, creating it (and its directory) when missing.
    fn append(&self, path: &str, data: &[u8]) -> Result<()>;
    /// Creates or replaces a whole file.
    fn write(&self, path: &str, data: &[u8]) -> Result<()>;
    /// Reads a whole file.
    fn read(&self, path: &str) -> Result<Vec<u8>>;
    /// Makes a file's content durable.
    fn sync(&self, path: &str) -> Result<()>;
    /// Makes the names in a directory (creations, renames, deletions) durable.
    fn sync_dir(&self, dir: &str) -> Result<()>;
    /// Renames a file (replacing the target).
    fn rename(&self, from: &str, to: &str) -> Result<()>;
    /// Deletes a file; a missing file is not an error. A directory left empty may be
    /// removed with it.
    fn delete(&self, path: &str) -> Result<()>;
    /// Names of the files directly in `dir`, sorted; a missing directory is empty.
    fn list(&self, dir: &str) -> Result<Vec<String>>;
    /// Cuts a file to `len` bytes.
    fn truncate(&self, path: &str, len: u64) -> Result<()>;
}

/// The parent directory of a path (`""` for a top-level file).
pub fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(dir, _)| dir)
}

/// A directory of the local file system.
#[derive(Debug, Clone)]
pub struct LocalFs {
    root: PathBuf,
}

impl LocalFs {
    /// Storage under `root` (created when missing).
    pub fn new(root: impl Into<PathBuf>) -> Result<LocalFs> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(|e| StorageError::io("create", &root, e))?;
        Ok(LocalFs { root })
    }

    fn path(&self, path: &str) -> PathBuf {
        self.root.join(path)
    }

    fn ensure_parent(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| StorageError::io("create", dir, e))?;
        }
        Ok(())
    }
}

impl Storage for LocalFs {
    fn append(&self, path: &str, data: &[u8]) -> Result<()> {
        let p = self.path(path);
        self.ensure_parent(&p)?;
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .map_err(|e| StorageError::io("open", &p, e))?;
        f.write_all(data)
            .map_err(|e| StorageError::io("append to", &p, e))
    }

    fn write(&self, path: &str, data: &[u8]) -> Result<()> {
        let p = self.path(path);
        self.ensure_parent(&p)?;
        std::fs::write(&p, data).map_err(|e| StorageError::io("write", &p, e))
    }

    fn read(&self, path: &str) -> Result<Vec<u8>> {
        let p = self.path(path);
        std::fs::read(&p).map_err(|e| StorageError::io("read", &p, e))
    }

    fn sync(&self, path: &str) -> Result<()> {
        let p = self.path(path);
        let f = OpenOptions::new()
            .append(true)
            .open(&p)
            .map_err(|e| StorageError::io("open", &p, e))?;
        f.sync_all().map_err(|e| StorageError::io("fsync", &p, e))
    }

    fn sync_dir(&self, dir: &str) -> Result<()> {
        let p = self.path(dir);
        let f = std::fs::File::open(&p).map_err(|e| StorageError::io("open", &p, e))?;
        f.sync_all().map_err(|e| StorageError::io("fsync", &p, e))
    }

    fn rename(&self, from: &str, to: &str) -> Result<()> {
        let (a, b) = (self.path(from), self.path(to));
        self.ensure_parent(&b)?;
        std::fs::rename(&a, &b).map_err(|e| StorageError::io("rename", &a, e))
    }

    fn delete(&self, path: &str) -> Result<()> {
        let p = self.path(path);
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StorageError::io("delete", &p, e)),
        }
        // A directory the deletion left empty goes too (a checkpoint's directory once its
        // last file is collected); one that still holds files stays.
        if let Some(dir) = p.parent()
            && dir != self.root
        {
            let _ = std::fs::remove_dir(dir);
        }
        Ok(())
    }

    fn list(&self, dir: &str) -> Result<Vec<String>> {
        let p = self.path(dir);
        let entries = match std::fs::read_dir(&p) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StorageError::io("list", &p, e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| StorageError::io("list", &p, e))?;
            if entry.file_type().is_ok_and(|t| t.is_file()) {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    fn truncate(&self, path: &str, len: u64) -> Result<()> {
        let p = self.path(path);
        let f = OpenOptions::new()
            .write(true)
            .open(&p)
            .map_err(|e| StorageError::io("open", &p, e))?;
        f.set_len(len)
            .map_err(|e| StorageError::io("truncate", &p, e))
    }
}

#[derive(Debug, Clone, Default)]
struct MemFile {
    /// Bytes as the process sees them.
    current: Vec<u8>,
    /// Bytes that survive a crash (as of the last sync).
    durable: Vec<u8>,
}

#[derive(Debug, Default)]
struct MemState {
    /// File contents by inode.
    inodes: BTreeMap<u64, MemFile>,
    next_inode: u64,
    /// Live names → inodes.
    names: BTreeMap<String, u64>,
    /// Names that survive a crash → inodes (as of each directory's last sync).
    durable_names: BTreeMap<String, u64>,
    /// Syncs (file or directory) so far.
    syncs: u64,
    /// Crash when the sync count reaches this.
    crash_at_sync: Option<u64>,
    /// Every sync fails (an I/O error), without a crash.
    fail_syncs: bool,
    /// Total bytes the "disk" holds; writes beyond fail with "no space".
    capacity: Option<usize>,
    crashed: bool,
}

impl MemState {
    fn file(&self, path: &str) -> Option<&MemFile> {
        self.names.get(path).and_then(|i| self.inodes.get(i))
    }

    fn file_mut(&mut self, path: &str) -> Option<&mut MemFile> {
        let inode = *self.names.get(path)?;
        self.inodes.get_mut(&inode)
    }

    fn create(&mut self, path: &str) -> &mut MemFile {
        let inode = match self.names.get(path) {
            Some(i) => *i,
            None => {
                self.next_inode += 1;
                let i = self.next_inode;
                self.names.insert(path.to_string(), i);
                i
            }
        };
        self.inodes.entry(inode).or_default()
    }
}

/// An in-memory file system with fault injection; see the module docs.
///
/// After a crash (injected at a sync, or by [`FaultyMemory::crash`]) every operation fails
/// with [`StorageError::Crashed`] until [`FaultyMemory::restart`], which keeps only what was
/// durable: synced bytes under synced names.
#[derive(Debug, Default)]
pub struct FaultyMemory {
    state: Mutex<MemState>,
}

impl FaultyMemory {
    /// An empty file system.
    pub fn new() -> FaultyMemory {
        FaultyMemory::default()
    }

    /// The `n`-th sync from now (1 = the next) crashes instead of completing.
    pub fn crash_at_sync(&self, n: u64) {
        let mut st = self.state.lock();
        st.crash_at_sync = Some(st.syncs + n);
    }

    /// Syncs performed so far.
    pub fn syncs(&self) -> u64 {
        self.state.lock().syncs
    }

    /// Every later sync fails with an I/O error (the process goes on).
    pub fn fail_syncs(&self, fail: bool) {
        self.state.lock().fail_syncs = fail;
    }

    /// Limits the total bytes stored (a full disk).
    pub fn set_capacity(&self, bytes: Option<usize>) {
        self.state.lock().capacity = bytes;
    }

    /// Crashes now.
    pub fn crash(&self) {
        self.state.lock().crashed = true;
    }

    /// Restarts after a crash: only durable bytes under durable names remain. With
    /// `torn_tail = Some(n)`, each file whose unsynced tail was being written keeps the first
    /// `n` bytes of that tail (a torn last write).
    pub fn restart(&self, torn_tail: Option<usize>) {
        let mut st = self.state.lock();
        let mut inodes = BTreeMap::new();
        for inode in st.durable_names.values() {
            if let Some(f) = st.inodes.get(inode) {
                let mut kept = f.durable.clone();
                if let Some(n) = torn_tail
                    && f.current.len() > f.durable.len()
                    && f.current.starts_with(&f.durable)
                {
                    let tail = &f.current[f.durable.len()..];
                    kept.extend_from_slice(&tail[..n.min(tail.len())]);
                }
                inodes.insert(
                    *inode,
                    MemFile {
                        current: kept.clone(),
                        durable: kept,
                    },
                );
            }
        }
        st.inodes = inodes;
        st.names = st.durable_names.clone();
        st.crashed = false;
        st.crash_at_sync = None;
        st.fail_syncs = false;
    }

    /// Flips the bits of one byte of a file (durable and current content).
    pub fn flip_byte(&self, path: &str, offset: usize) {
        let mut st = self.state.lock();
        if let Some(f) = st.file_mut(path) {
            if let Some(b) = f.current.get_mut(offset) {
                *b ^= 0xFF;
            }
            if let Some(b) = f.durable.get_mut(offset) {
                *b ^= 0xFF;
            }
        }
    }

    /// Length of a file as the process sees it.
    pub fn len_of(&self, path: &str) -> Option<usize> {
        self.state.lock().file(path).map(|f| f.current.len())
    }

    fn live(&self) -> Result<parking_lot::MutexGuard<'_, MemState>> {
        let st = self.state.lock();
        if st.crashed {
            return Err(StorageError::Crashed);
        }
        Ok(st)
    }

    fn count_sync(st: &mut MemState) -> Result<()> {
        st.syncs += 1;
        if st.crash_at_sync == Some(st.syncs) {
            st.crashed = true;
            return Err(StorageError::Crashed);
        }
        if st.fail_syncs {
            return Err(StorageError::Io {
                operation: "fsync",
                path: String::new(),
                reason: "injected I/O error".into(),
            });
        }
        Ok(())
    }

    fn check_space(st: &MemState, extra: usize) -> Result<()> {
        if let Some(cap) = st.capacity {
            let used: usize = st.inodes.values().map(|f| f.current.len()).sum();
            if used + extra > cap {
                return Err(StorageError::Io {
                    operation: "write",
                    path: String::new(),
                    reason: "no space left on device (injected)".into(),
                });
            }
        }
        Ok(())
    }
}

impl Storage for FaultyMemory {
    fn append(&self, path: &str, data: &[u8]) -> Result<()> {
        let mut st = self.live()?;
        Self::check_space(&st, data.len())?;
        st.create(path).current.extend_from_slice(data);
        Ok(())
    }

    fn write(&self, path: &str, data: &[u8]) -> Result<()> {
        let mut st = self.live()?;
        Self::check_space(&st, data.len())?;
        st.create(path).current = data.to_vec();
        Ok(())
    }

    fn read(&self, path: &str) -> Result<Vec<u8>> {
        let st = self.live()?;
        st.file(path)
            .map(|f| f.current.clone())
            .ok_or_else(|| StorageError::NotFound(path.to_string()))
    }

    fn sync(&self, path: &str) -> Result<()> {
        let mut st = self.live()?;
        Self::count_sync(&mut st)?;
        match st.file_mut(path) {
            Some(f) => {
                f.durable = f.current.clone();
                Ok(())
            }
            None => Err(StorageError::NotFound(path.to_string())),
        }
    }

    fn sync_dir(&self, dir: &str) -> Result<()> {
        let mut st = self.live()?;
        Self::count_sync(&mut st)?;
        let in_dir = |name: &str| parent(name) == dir;
        st.durable_names.retain(|name, _| !in_dir(name));
        let names: Vec<(String, u64)> = st
            .names
            .iter()
            .filter(|(n, _)| in_dir(n))
            .map(|(n, i)| (n.clone(), *i))
            .collect();
        st.durable_names.extend(names);
        Ok(())
    }

    fn rename(&self, from: &str, to: &str) -> Result<()> {
        let mut st = self.live()?;
        let inode = st
            .names
            .remove(from)
            .ok_or_else(|| StorageError::NotFound(from.to_string()))?;
        st.names.insert(to.to_string(), inode);
        Ok(())
    }

    fn delete(&self, path: &str) -> Result<()> {
        let mut st = self.live()?;
        st.names.remove(path);
        Ok(())
    }

    fn list(&self, dir: &str) -> Result<Vec<String>> {
        let st = self.live()?;
        Ok(st
            .names
            .keys()
            .filter(|n| parent(n) == dir)
            .map(|n| n.rsplit('/').next().unwrap_or(n).to_string())
            .collect())
    }

    fn truncate(&self, path: &str, len: u64) -> Result<()> {
        let mut st = self.live()?;
        match st.file_mut(path) {
            Some(f) => {
                f.current.truncate(len as usize);
                Ok(())
            }
            None => Err(StorageError::NotFound(path.to_string())),
        }
    }
}
