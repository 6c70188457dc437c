//! The byte format of operator snapshots: a small length-prefixed binary writer and reader,
//! with Arrow batches embedded in the Arrow IPC stream format. Every snapshot starts with a
//! format tag and version, so a snapshot from another operator or version is refused with a
//! clear error instead of being misread.

use std::io::Cursor;

use arrow::record_batch::RecordBatch;

use crate::error::{CoreError, Result};

/// Writes a snapshot.
#[derive(Debug, Default)]
pub struct SnapshotWriter {
    buf: Vec<u8>,
}

impl SnapshotWriter {
    /// A snapshot of the state called `tag`, format `version`.
    pub fn new(tag: &str, version: u32) -> SnapshotWriter {
        let mut w = SnapshotWriter::default();
        w.bytes(tag.as_bytes());
        w.u64(u64::from(version));
        w
    }

    /// The encoded bytes.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }

    /// An unsigned integer.
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    /// A signed integer.
    pub fn i64(&mut self, v: i64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    /// A flag.
    pub fn bool(&mut self, v: bool) {
        self.buf.push(u8::from(v));
    }

    /// Length-prefixed bytes.
    pub fn bytes(&mut self, v: &[u8]) {
        self.u64(v.len() as u64);
        self.buf.extend_from_slice(v);
    }

    /// A batch in the Arrow IPC stream format.
    pub fn batch(&mut self, batch: &RecordBatch) -> Result<()> {
        let mut out = Vec::new();
        {
            let mut writer =
                arrow::ipc::writer::StreamWriter::try_new(&mut out, batch.schema().as_ref())
                    .map_err(|e| CoreError::Internal(format!("snapshot: {e}")))?;
            writer
                .write(batch)
                .and_then(|_| writer.finish())
                .map_err(|e| CoreError::Internal(format!("snapshot: {e}")))?;
        }
        self.bytes(&out);
        Ok(())
    }
}

/// Reads a snapshot written by [`SnapshotWriter`].
#[derive(Debug)]
pub struct SnapshotReader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> SnapshotReader<'a> {
    /// Checks the tag and version and positions after them.
    pub fn new(buf: &'a [u8], tag: &str, version: u32) -> Result<SnapshotReader<'a>> {
        let mut r = SnapshotReader { buf, pos: 0 };
        let found = r.bytes()?;
        if found != tag.as_bytes() {
            return Err(CoreError::InvalidData(format!(
                "snapshot of '{}' where '{tag}' was expected",
                String::from_utf8_lossy(found)
            )));
        }
        let v = r.u64()?;
        if v != u64::from(version) {
            return Err(CoreError::InvalidData(format!(
                "snapshot format {v} of '{tag}' where {version} was expected"
            )));
        }
        Ok(r)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let Some(end) = end else {
            return Err(CoreError::InvalidData(format!(
                "snapshot ends at byte {} where {n} more were expected",
                self.buf.len()
            )));
        };
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    /// An unsigned integer.
    pub fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    }

    /// A signed integer.
    pub fn i64(&mut self) -> Result<i64> {
        let b = self.take(8)?;
        Ok(i64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    }

    /// A flag.
    pub fn bool(&mut self) -> Result<bool> {
        Ok(self.take(1)?[0] != 0)
    }

    /// Length-prefixed bytes.
    pub fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = usize::try_from(self.u64()?)
            .map_err(|_| CoreError::InvalidData("snapshot length overflows".into()))?;
        self.take(n)
    }

    /// True when every byte was read (an optional trailing part is absent).
    pub fn is_at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }

    /// A count of items that follow, bounded by the bytes left (each item takes at least
    /// one byte), so a corrupt count cannot allocate without bound.
    pub fn count(&mut self) -> Result<usize> {
        let n = self.u64()?;
        let left = (self.buf.len() - self.pos) as u64;
        if n > left {
            return Err(CoreError::InvalidData(format!(
                "snapshot count {n} exceeds the {left} bytes left"
            )));
        }
        Ok(n as usize)
    }

    /// A batch in the Arrow IPC stream format.
    pub fn batch(&mut self) -> Result<RecordBatch> {
        let bytes = self.bytes()?;
        let mut reader = arrow::ipc::reader::StreamReader::try_new(Cursor::new(bytes), None)
            .map_err(|e| CoreError::InvalidData(format!("snapshot batch: {e}")))?;
        match reader.next() {
            Some(Ok(b)) => Ok(b),
            Some(Err(e)) => Err(CoreError::InvalidData(format!("snapshot batch: {e}"))),
            None => Err(CoreError::InvalidData("snapshot batch is empty".into())),
        }
    }

    /// True when every byte was read.
    pub fn is_done(&self) -> bool {
        self.pos == self.buf.len()
    }
}
