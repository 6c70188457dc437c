//! File formats: decoding files into the declared schema (sources) and encoding
//! batches into files (sinks).
//!
//! Each format lives in its own file and has a reader (`CsvFileReader`,
//! `JsonFileReader`, `ParquetFileReader`) that yields batches already conformed
//! to the declared schema, and a writer used by the FILES sink.
//! [`conform`] is the shared step that matches columns by name, casts them to
//! the declared types and applies the `error.policy` to rows that do not fit.

#[cfg(feature = "kafka")]
pub(crate) mod avro;
pub(crate) mod conform;
pub(crate) mod csv;
pub(crate) mod json;
pub(crate) mod parquet;
pub(crate) mod partition;

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A file format understood by the FILES connector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileFormat {
    /// Comma-separated values (delimiter, quote and header are options).
    Csv,
    /// JSON lines: one object per line.
    Json,
    /// Apache Parquet.
    Parquet,
}

impl FileFormat {
    /// The canonical names, as accepted by `format = '..'`.
    pub const NAMES: &'static [&'static str] = &["csv", "json", "parquet"];

    /// Parses a format name (case-insensitive); `jsonl`, `ndjson` and
    /// `json_lines` are accepted for JSON.
    pub fn parse(name: &str) -> Option<Self> {
        match crate::options::normalize_value(name).as_str() {
            "csv" => Some(Self::Csv),
            "json" | "jsonl" | "ndjson" | "json_lines" => Some(Self::Json),
            "parquet" => Some(Self::Parquet),
            _ => None,
        }
    }

    /// The format implied by a file name's extension (`.csv`, `.json`,
    /// `.jsonl`, `.ndjson`, `.parquet`, `.pq`).
    pub fn from_extension(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?;
        match ext.to_ascii_lowercase().as_str() {
            "csv" => Some(Self::Csv),
            "json" | "jsonl" | "ndjson" => Some(Self::Json),
            "parquet" | "pq" => Some(Self::Parquet),
            _ => None,
        }
    }

    /// The extension the FILES sink gives its files.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Csv => "csv",
            Self::Json => "json",
            Self::Parquet => "parquet",
        }
    }
}

impl std::fmt::Display for FileFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.extension())
    }
}

/// The timestamp format text writers use: ISO-8601 with as many fractional
/// digits as the value needs (0, 3, 6 or 9), e.g. `2024-01-01T00:00:00.123456`.
pub(crate) const TIMESTAMP_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.f";
/// As [`TIMESTAMP_FORMAT`], with the UTC offset for time-zoned timestamps.
pub(crate) const TIMESTAMP_TZ_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.f%:z";

/// A writer that counts the bytes passing through it (for rollover by size and
/// the `bytes_written` metric). The count is shared so it can be read while an
/// encoder owns the writer.
#[derive(Debug)]
pub(crate) struct CountingWriter<W> {
    inner: W,
    count: Arc<AtomicU64>,
}

impl<W: Write> CountingWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        Self {
            inner,
            count: Arc::new(AtomicU64::new(0)),
        }
    }

    /// A handle on the byte count.
    pub(crate) fn counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.count)
    }

    pub(crate) fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_extensions() {
        assert_eq!(FileFormat::parse("CSV"), Some(FileFormat::Csv));
        assert_eq!(FileFormat::parse("json-lines"), Some(FileFormat::Json));
        assert_eq!(FileFormat::parse("avro"), None);
        assert_eq!(
            FileFormat::from_extension(Path::new("a/b.PARQUET")),
            Some(FileFormat::Parquet)
        );
        assert_eq!(FileFormat::from_extension(Path::new("a/b")), None);
        assert_eq!(FileFormat::Json.extension(), "json");
    }
}
