//! The `FILES` source: CSV, JSON-lines or Parquet files from a file, a
//! directory or a glob.
//!
//! Files are read one after another in path order; each is decoded in chunks of
//! `batch.size` rows by the format's reader (see [`crate::format`]), which
//! matches columns by name, casts them to the declared types and applies
//! `error.policy`. With `watch = false` the source ends after the files that
//! matched when it was created; with `watch = true` it keeps listing the path
//! (at most every 100 ms while idle) and reads new files in name order. Files
//! are assumed complete when they appear (write elsewhere, then rename in).
//!
//! Directories are read recursively, skipping names that start with `.` or `_`
//! (in-progress sink files, `_SUCCESS` markers). `col=value` directory names
//! (Hive-style partitions, as the FILES sink writes them) supply declared
//! columns the files themselves do not contain.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

use crate::connector::{SourceConnector, SourceConnectorMetrics, SourcePoll};
use crate::error::ConnectorError;
use crate::format::FileFormat;
use crate::format::conform::{BadRecords, ErrorPolicy};
use crate::format::csv::{CsvFileReader, CsvReadOptions};
use crate::format::json::JsonFileReader;
use crate::format::parquet::ParquetFileReader;
use crate::format::partition;
use crate::options::ConnectorOptions;
use crate::registry::ConfigKey;

const NAME: &str = "FILES";

/// How often an idle watching source lists its path again.
const WATCH_RESCAN_INTERVAL: Duration = Duration::from_millis(100);

/// Options of the FILES source.
pub(crate) const CONFIG_KEYS: &[ConfigKey] = &[
    ConfigKey {
        key: "path",
        required: true,
        default: None,
        description: "a file, a directory (read recursively) or a glob such as data/*.csv",
    },
    ConfigKey {
        key: "format",
        required: false,
        default: None,
        description: "csv | json | parquet; inferred from the file extension when absent",
    },
    ConfigKey {
        key: "watch",
        required: false,
        default: Some("false"),
        description: "false: read the matching files once, then end; true: keep picking up new files",
    },
    ConfigKey {
        key: "header",
        required: false,
        default: Some("true"),
        description: "csv: the first line holds column names (without it columns match by position)",
    },
    ConfigKey {
        key: "delimiter",
        required: false,
        default: Some(","),
        description: "csv: field delimiter (one character, or \\t)",
    },
    ConfigKey {
        key: "quote",
        required: false,
        default: Some("\""),
        description: "csv: quote character",
    },
    ConfigKey {
        key: "null_string",
        required: false,
        default: Some(""),
        description: "csv: text that means NULL (an empty field is always NULL)",
    },
    ConfigKey {
        key: "error.policy",
        required: false,
        default: Some("fail"),
        description: "fail: stop at a bad record naming file, line and column; skip: drop and count it",
    },
    ConfigKey {
        key: "batch.size",
        required: false,
        default: Some("8192"),
        description: "rows decoded per chunk",
    },
];

/// Where a FILES source is in its input (for durability: a restart resumes
/// here). Positions refer to the end of the last chunk decoded; rows of that
/// chunk not yet returned by `poll_batch` are `buffered_rows`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilePosition {
    /// The file being read, if any.
    pub file: Option<PathBuf>,
    /// How many files have been read to the end.
    pub files_done: u64,
    /// CSV/JSON: byte offset of the next unread record in `file`.
    pub byte_offset: u64,
    /// Parquet: row group of the next unread row.
    pub row_group: usize,
    /// Parquet: row within `row_group` of the next unread row.
    pub row_in_group: u64,
    /// Records (CSV), lines (JSON) or rows (Parquet) of `file` consumed so far.
    pub records: u64,
    /// Decoded rows not yet returned.
    pub buffered_rows: u64,
}

/// Validated FILES source options.
#[derive(Debug, Clone)]
pub(crate) struct FilesSourceConfig {
    path: String,
    format: Option<FileFormat>,
    watch: bool,
    csv: CsvReadOptions,
    error_policy: ErrorPolicy,
    batch_size: usize,
}

impl FilesSourceConfig {
    /// Parses and validates options without touching the file system.
    pub(crate) fn from_options(
        options: &ConnectorOptions,
        format: Option<FileFormat>,
    ) -> Result<Self, ConnectorError> {
        let path = options.require_str(NAME, "path")?.to_string();
        if path.trim().is_empty() {
            return Err(invalid("path", &path, "must not be empty"));
        }
        let batch_size = options.get_u64(NAME, "batch.size")?.unwrap_or(8192);
        if batch_size == 0 {
            return Err(invalid("batch.size", "0", "must be at least 1"));
        }
        let batch_size = usize::try_from(batch_size).unwrap_or(usize::MAX);
        let error_policy = parse_error_policy(NAME, options)?;
        let csv = CsvReadOptions {
            header: options.get_bool(NAME, "header")?.unwrap_or(true),
            delimiter: options.get_char(NAME, "delimiter")?.unwrap_or(b','),
            quote: options.get_char(NAME, "quote")?.unwrap_or(b'"'),
            null_string: options.get_str("null_string").map(str::to_string),
            batch_size,
        };
        if csv.delimiter == csv.quote || csv.delimiter == b'\n' {
            return Err(invalid(
                "delimiter",
                &(csv.delimiter as char).to_string(),
                "must differ from the quote character and the line end",
            ));
        }
        Ok(Self {
            path,
            format,
            watch: options.get_bool(NAME, "watch")?.unwrap_or(false),
            csv,
            error_policy,
            batch_size,
        })
    }
}

/// Parses `error.policy` (`fail` | `skip`; `dlq` is not built yet).
pub(crate) fn parse_error_policy(
    connector: &str,
    options: &ConnectorOptions,
) -> Result<ErrorPolicy, ConnectorError> {
    if options
        .get_str("error.policy")
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("dlq"))
    {
        return Err(ConnectorError::Unsupported(format!(
            "error.policy = 'dlq' for connector {connector} (use 'fail' or 'skip')"
        )));
    }
    Ok(
        match options.get_choice(connector, "error.policy", ErrorPolicy::NAMES)? {
            Some("skip") => ErrorPolicy::Skip,
            _ => ErrorPolicy::Fail,
        },
    )
}

fn invalid(key: &str, value: &str, reason: &str) -> ConnectorError {
    ConnectorError::InvalidOption {
        connector: NAME.to_string(),
        key: key.to_string(),
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

/// The reader of the current file (boxed CSV: its decoder state is large).
enum FileReader {
    Csv(Box<CsvFileReader>),
    Json(JsonFileReader),
    Parquet(ParquetFileReader),
}

/// The FILES source. Build it with [`crate::create_source`].
pub struct FilesSource {
    config: FilesSourceConfig,
    format: FileFormat,
    schema: SchemaRef,
    /// Directory that `col=value` partition names are taken relative to.
    base: PathBuf,
    /// Files to read, in order; `files[..next_file]` are done.
    files: Vec<PathBuf>,
    next_file: usize,
    seen: HashSet<PathBuf>,
    current: Option<(PathBuf, FileReader)>,
    /// Bytes of the current file already counted in metrics.
    current_bytes: u64,
    leftover: Option<RecordBatch>,
    bad: BadRecords,
    metrics: SourceConnectorMetrics,
    last_scan: Option<Instant>,
    ended: bool,
    /// Rows of the current file returned by `poll_batch` so far.
    returned_in_file: u64,
    /// CSV/JSON: where the chunk held in `leftover` starts (byte offset, records before it)
    /// and how many of its rows were returned: the resume point of a checkpoint.
    chunk_start: (u64, u64),
    returned_in_chunk: u64,
    /// The last file read to its end.
    last_done: Option<PathBuf>,
}

impl FilesSource {
    /// Lists the files, resolves the format and (when `declared` has no
    /// columns) infers the schema from the first file.
    pub(crate) fn open(
        config: FilesSourceConfig,
        declared: SchemaRef,
    ) -> Result<Self, ConnectorError> {
        if !has_glob_chars(&config.path) && !Path::new(&config.path).exists() {
            return Err(ConnectorError::io(
                &config.path,
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ));
        }
        let files = list_files(&config.path)?;
        if files.is_empty() && !config.watch {
            return Err(invalid(
                "path",
                &config.path,
                "no files match (with watch = 'true' the source waits for files)",
            ));
        }
        let format = config
            .format
            .or_else(|| FileFormat::from_extension(Path::new(&config.path)))
            .or_else(|| files.first().and_then(|f| FileFormat::from_extension(f)))
            .ok_or_else(|| ConnectorError::MissingOption {
                connector: NAME.to_string(),
                key: "format".to_string(),
            })?;
        let schema = if declared.fields().is_empty() {
            let first = files.first().ok_or_else(|| {
                ConnectorError::Unsupported(format!(
                    "FILES source on '{}' without declared columns: no file to infer the schema from; declare the columns",
                    config.path
                ))
            })?;
            match format {
                FileFormat::Csv => Arc::new(crate::format::csv::infer_schema(first, &config.csv)?),
                FileFormat::Json => Arc::new(crate::format::json::infer_schema(first)?),
                FileFormat::Parquet => crate::format::parquet::file_schema(first)?,
            }
        } else {
            declared
        };
        let base = base_dir(&config.path);
        let seen = files.iter().cloned().collect();
        Ok(Self {
            bad: BadRecords::new(config.error_policy),
            config,
            format,
            schema,
            base,
            files,
            next_file: 0,
            seen,
            current: None,
            current_bytes: 0,
            leftover: None,
            metrics: SourceConnectorMetrics::default(),
            last_scan: Some(Instant::now()),
            ended: false,
            returned_in_file: 0,
            chunk_start: (0, 0),
            returned_in_chunk: 0,
            last_done: None,
        })
    }

    /// The current position (see [`FilePosition`]).
    pub fn position(&self) -> FilePosition {
        let mut pos = FilePosition {
            files_done: self.next_file as u64,
            buffered_rows: self.leftover.as_ref().map_or(0, |b| b.num_rows() as u64),
            ..FilePosition::default()
        };
        if let Some((path, reader)) = &self.current {
            pos.file = Some(path.clone());
            match reader {
                FileReader::Csv(r) => {
                    pos.byte_offset = r.byte_offset();
                    pos.records = r.records();
                }
                FileReader::Json(r) => {
                    pos.byte_offset = r.byte_offset();
                    pos.records = r.lines();
                }
                FileReader::Parquet(r) => {
                    (pos.row_group, pos.row_in_group) = r.position();
                    pos.records = r.rows();
                }
            }
        }
        pos
    }

    fn open_file(&self, path: &Path) -> Result<FileReader, ConnectorError> {
        let partitions = partition::values_from_path(&self.base, path);
        let schema = Arc::clone(&self.schema);
        Ok(match self.format {
            FileFormat::Csv => FileReader::Csv(Box::new(CsvFileReader::open(
                path,
                schema,
                &self.config.csv,
                &partitions,
            )?)),
            FileFormat::Json => FileReader::Json(JsonFileReader::open(
                path,
                schema,
                self.config.batch_size,
                &partitions,
            )?),
            FileFormat::Parquet => FileReader::Parquet(ParquetFileReader::open(
                path,
                schema,
                self.config.batch_size,
                &partitions,
            )?),
        })
    }

    /// Reads the next chunk of the current file; `None` when it is finished.
    fn read_chunk(&mut self) -> Result<Option<RecordBatch>, ConnectorError> {
        let Some((_, reader)) = &mut self.current else {
            return Ok(None);
        };
        let batch = match reader {
            FileReader::Csv(r) => r.next_batch(&mut self.bad)?,
            FileReader::Json(r) => r.next_batch(&mut self.bad)?,
            FileReader::Parquet(r) => r.next_batch(&mut self.bad)?,
        };
        let bytes_now = match reader {
            FileReader::Csv(r) => r.byte_offset(),
            FileReader::Json(r) => r.byte_offset(),
            // Parquet is counted as a whole file when it is finished.
            FileReader::Parquet(r) if batch.is_none() => r.file_len(),
            FileReader::Parquet(_) => self.current_bytes,
        };
        self.metrics.bytes_read += bytes_now.saturating_sub(self.current_bytes);
        self.current_bytes = bytes_now;
        self.metrics.bad_records = self.bad.skipped();
        Ok(batch)
    }

    /// CSV/JSON: the reader's record boundary `(byte offset, records before it)`.
    fn text_resume_point(&self) -> Option<(u64, u64)> {
        match &self.current {
            Some((_, FileReader::Csv(r))) => Some((r.byte_offset(), r.records())),
            Some((_, FileReader::Json(r))) => Some((r.byte_offset(), r.lines())),
            _ => None,
        }
    }

    /// Lists the path again for new files (watch mode, throttled).
    fn rescan(&mut self) -> Result<(), ConnectorError> {
        if self
            .last_scan
            .is_some_and(|t| t.elapsed() < WATCH_RESCAN_INTERVAL)
        {
            return Ok(());
        }
        self.last_scan = Some(Instant::now());
        let mut new: Vec<PathBuf> = list_files(&self.config.path)?
            .into_iter()
            .filter(|f| !self.seen.contains(f))
            .collect();
        new.sort();
        for f in &new {
            self.seen.insert(f.clone());
        }
        self.files.extend(new);
        Ok(())
    }
}

impl SourceConnector for FilesSource {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn poll_batch(&mut self, max_rows: usize) -> Result<SourcePoll, ConnectorError> {
        let max_rows = max_rows.max(1);
        loop {
            if let Some(batch) = self.leftover.take() {
                let out = if batch.num_rows() > max_rows {
                    self.leftover = Some(batch.slice(max_rows, batch.num_rows() - max_rows));
                    batch.slice(0, max_rows)
                } else {
                    batch
                };
                self.metrics.records_read += out.num_rows() as u64;
                self.returned_in_file += out.num_rows() as u64;
                self.returned_in_chunk += out.num_rows() as u64;
                return Ok(SourcePoll::Batch(out));
            }
            if self.ended {
                return Ok(SourcePoll::End);
            }
            if self.current.is_none() {
                if self.next_file < self.files.len() {
                    let path = self.files[self.next_file].clone();
                    let reader = self.open_file(&path)?;
                    self.current = Some((path, reader));
                    self.current_bytes = 0;
                    self.returned_in_file = 0;
                } else if self.config.watch {
                    self.rescan()?;
                    if self.next_file >= self.files.len() {
                        return Ok(SourcePoll::Pending);
                    }
                    continue;
                } else {
                    self.ended = true;
                    return Ok(SourcePoll::End);
                }
            }
            let start = self.text_resume_point();
            match self.read_chunk()? {
                Some(batch) if batch.num_rows() > 0 => {
                    self.leftover = Some(batch);
                    self.chunk_start = start.unwrap_or_default();
                    self.returned_in_chunk = 0;
                }
                Some(_) => {} // every row of the chunk was skipped
                None => {
                    self.last_done = self.current.take().map(|(path, _)| path);
                    self.next_file += 1;
                    self.metrics.files_read += 1;
                    self.last_scan = None; // look for new files right away
                }
            }
        }
    }

    fn metrics(&self) -> SourceConnectorMetrics {
        self.metrics
    }

    /// Files are read in path order, so a position is the file being read with the rows
    /// of it already returned (`file\t<rows>\t<offset>\t<records>\t<skip>\t<path>`:
    /// for CSV and JSON also the record boundary `offset` (`records` before it) where the
    /// last chunk started and the `skip` rows of it returned), or the last file finished
    /// (`after\t<path>`), or `start`.
    fn position(&self) -> Option<String> {
        Some(match (&self.current, &self.last_done) {
            (Some((path, _)), _) => {
                let (offset, records, skip) = match (&self.leftover, self.text_resume_point()) {
                    (Some(_), Some(_)) => (
                        self.chunk_start.0,
                        self.chunk_start.1,
                        self.returned_in_chunk,
                    ),
                    (None, Some((offset, records))) => (offset, records, 0),
                    (_, None) => (0, 0, 0),
                };
                format!(
                    "file\t{}\t{offset}\t{records}\t{skip}\t{}",
                    self.returned_in_file,
                    path.display()
                )
            }
            (None, Some(done)) => format!("after\t{}", done.display()),
            (None, None) => "start".to_string(),
        })
    }

    /// Skips the files before the position; inside the file being read, CSV and JSON
    /// continue at the recorded record boundary, Parquet decodes the rows already returned
    /// again and drops them.
    fn seek(&mut self, position: &str) -> Result<(), ConnectorError> {
        let bad = || {
            ConnectorError::Unsupported(format!(
                "FILES source on '{}' cannot resume at '{position}'",
                self.config.path
            ))
        };
        let fields: Vec<&str> = position.splitn(6, '\t').collect();
        match fields.first().copied() {
            Some("start") => Ok(()),
            Some("after") => {
                let done = PathBuf::from(fields.get(1).ok_or_else(bad)?);
                self.next_file = self.files.iter().take_while(|f| **f <= done).count();
                self.last_done = Some(done);
                Ok(())
            }
            Some("file") if fields.len() == 6 => {
                let number = |i: usize| fields[i].parse::<u64>().map_err(|_| bad());
                let (rows, offset, records, mut skip) =
                    (number(1)?, number(2)?, number(3)?, number(4)?);
                let path = PathBuf::from(fields[5]);
                self.next_file = self.files.iter().take_while(|f| **f < path).count();
                if self.files.get(self.next_file) != Some(&path) {
                    return Err(ConnectorError::Unsupported(format!(
                        "FILES source on '{}': the checkpoint resumes in file {}, which is no longer there",
                        self.config.path,
                        path.display()
                    )));
                }
                let mut reader = self.open_file(&path)?;
                match &mut reader {
                    FileReader::Csv(r) if offset > 0 => r.resume_at(offset, records)?,
                    FileReader::Json(r) if offset > 0 => r.resume_at(offset, records)?,
                    FileReader::Parquet(_) => skip = rows,
                    _ => skip = rows,
                }
                self.current = Some((path, reader));
                self.current_bytes = offset;
                self.chunk_start = (offset, records);
                while skip > 0 {
                    let Some(batch) = self.read_chunk()? else {
                        return Err(ConnectorError::Unsupported(format!(
                            "FILES source on '{}': the checkpoint resumes after row {rows} of {}, which has fewer rows now",
                            self.config.path, fields[5]
                        )));
                    };
                    let n = batch.num_rows() as u64;
                    if n > skip {
                        self.leftover = Some(batch.slice(skip as usize, (n - skip) as usize));
                        self.returned_in_chunk = skip;
                        skip = 0;
                    } else {
                        skip -= n;
                    }
                }
                self.returned_in_file = rows;
                Ok(())
            }
            _ => Err(bad()),
        }
    }

    fn close(&mut self) -> Result<(), ConnectorError> {
        self.current = None;
        self.leftover = None;
        Ok(())
    }
}

fn has_glob_chars(path: &str) -> bool {
    path.contains(['*', '?', '['])
}

/// The directory a path, directory or glob lives under.
fn base_dir(path: &str) -> PathBuf {
    let p = Path::new(path);
    if has_glob_chars(path) {
        let mut base = PathBuf::new();
        for c in p.components() {
            if has_glob_chars(&c.as_os_str().to_string_lossy()) {
                break;
            }
            base.push(c);
        }
        base
    } else if p.is_dir() {
        p.to_path_buf()
    } else {
        p.parent().map(Path::to_path_buf).unwrap_or_default()
    }
}

fn is_hidden(name: &std::ffi::OsStr) -> bool {
    let n = name.to_string_lossy();
    n.starts_with('.') || n.starts_with('_')
}

/// The files `path` (file, directory or glob) names today, sorted.
pub(crate) fn list_files(path: &str) -> Result<Vec<PathBuf>, ConnectorError> {
    let mut out = Vec::new();
    if has_glob_chars(path) {
        let options = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: true,
        };
        let paths = glob::glob_with(path, options).map_err(|e| ConnectorError::InvalidOption {
            connector: NAME.to_string(),
            key: "path".to_string(),
            value: path.to_string(),
            reason: format!("invalid glob: {e}"),
        })?;
        for entry in paths {
            let p = entry.map_err(|e| ConnectorError::io(e.path().to_path_buf(), e.into()))?;
            if p.is_file() {
                out.push(p);
            }
        }
    } else {
        let p = Path::new(path);
        if p.is_dir() {
            walk_dir(p, &mut out)?;
        } else if p.is_file() {
            out.push(p.to_path_buf());
        }
    }
    out.sort();
    Ok(out)
}

fn walk_dir(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), ConnectorError> {
    let entries = std::fs::read_dir(dir).map_err(|e| ConnectorError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| ConnectorError::io(dir, e))?;
        if is_hidden(&entry.file_name()) {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            walk_dir(&path, out)?;
        } else if path.is_file() {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::ids;
    use arrow::array::{Array, Int64Array, StringArray, TimestampMillisecondArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use std::io::Write;

    fn declared() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("price", DataType::Int64, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        ]))
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::File::create(&p)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        p
    }

    fn source(pairs: &[(&str, &str)], declared: SchemaRef) -> Result<FilesSource, ConnectorError> {
        let options = ConnectorOptions::from_pairs(pairs.iter().copied());
        let config = FilesSourceConfig::from_options(&options, None)?;
        FilesSource::open(config, declared)
    }

    fn drain(s: &mut FilesSource) -> Result<Vec<RecordBatch>, ConnectorError> {
        let mut out = Vec::new();
        loop {
            match s.poll_batch(1000)? {
                SourcePoll::Batch(b) => out.push(b),
                SourcePoll::End | SourcePoll::Pending => return Ok(out),
            }
        }
    }

    #[test]
    fn directory_and_glob_read_in_path_order() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "b.csv", "id,price\n3,30\n");
        write(dir.path(), "a.csv", "id,price\n1,10\n2,20\n");
        write(dir.path(), ".inprogress-x.csv", "id,price\n99,1\n");
        write(dir.path(), "sub/c.csv", "id,price\n4,40\n");
        let d = dir.path().to_str().unwrap();
        let mut s = source(&[("path", d), ("format", "csv")], declared()).unwrap();
        assert_eq!(ids(&drain(&mut s).unwrap()), vec![1, 2, 3, 4]);
        assert!(matches!(s.poll_batch(10).unwrap(), SourcePoll::End));
        assert_eq!(s.metrics().files_read, 3);
        assert_eq!(s.metrics().records_read, 4);

        let glob = format!("{d}/*.csv");
        let mut s = source(&[("path", &glob)], declared()).unwrap();
        assert_eq!(ids(&drain(&mut s).unwrap()), vec![1, 2, 3]);
    }

    #[test]
    fn small_max_rows_slices_batches() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "a.csv", "id\n1\n2\n3\n4\n5\n");
        let mut s = source(&[("path", p.to_str().unwrap())], declared()).unwrap();
        let mut sizes = Vec::new();
        while let SourcePoll::Batch(b) = s.poll_batch(2).unwrap() {
            sizes.push(b.num_rows());
        }
        assert_eq!(sizes, vec![2, 2, 1]);
    }

    #[test]
    fn casting_by_name_extra_and_missing_columns() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "a.csv",
            "extra,ts,id\nx,2024-01-01 00:00:00.000,1\ny,2024-01-01T00:00:00.123,2\n",
        );
        let mut s = source(&[("path", p.to_str().unwrap())], declared()).unwrap();
        let batches = drain(&mut s).unwrap();
        let b = &batches[0];
        assert_eq!(b.schema(), declared());
        assert_eq!(b.column(1).null_count(), 2);
        let ts = b
            .column(2)
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .unwrap();
        assert_eq!(ts.values(), &[1_704_067_200_000, 1_704_067_200_123]);
    }

    #[test]
    fn missing_not_null_column_names_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "nok.csv", "price\n1\n");
        let mut s = source(&[("path", p.to_str().unwrap())], declared()).unwrap();
        let err = s.poll_batch(10).unwrap_err();
        assert!(matches!(err, ConnectorError::SchemaMismatch { .. }));
        assert!(
            err.to_string().contains("nok.csv") && err.to_string().contains("'id'"),
            "{err}"
        );
    }

    #[test]
    fn bad_rows_fail_with_location_or_are_skipped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "bad.csv", "id,price\n1,10\n2,abc\n3,30\n,40\n");
        let path = p.to_str().unwrap();
        let mut s = source(&[("path", path)], declared()).unwrap();
        let err = drain(&mut s).unwrap_err().to_string();
        assert!(err.contains("bad.csv line 3, column price"), "{err}");
        assert!(err.contains("cannot cast 'abc' to Int64"), "{err}");

        let mut s = source(&[("path", path), ("error.policy", "skip")], declared()).unwrap();
        assert_eq!(ids(&drain(&mut s).unwrap()), vec![1, 3]);
        assert_eq!(s.metrics().bad_records, 2);
    }

    #[test]
    fn watch_mode_picks_up_new_files_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.csv", "id\n1\n");
        let glob = format!("{}/*.csv", dir.path().display());
        let mut s = source(&[("path", &glob), ("watch", "true")], declared()).unwrap();
        assert_eq!(ids(&drain(&mut s).unwrap()), vec![1]);
        assert!(matches!(s.poll_batch(10).unwrap(), SourcePoll::Pending));
        write(dir.path(), "c.csv", "id\n3\n");
        write(dir.path(), "b.csv", "id\n2\n");
        std::thread::sleep(WATCH_RESCAN_INTERVAL + Duration::from_millis(20));
        assert_eq!(ids(&drain(&mut s).unwrap()), vec![2, 3]);
        assert!(matches!(s.poll_batch(10).unwrap(), SourcePoll::Pending));
    }

    #[test]
    fn json_and_position() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "a.jsonl",
            "{\"id\":1,\"ts\":\"2024-01-01T00:00:00\"}\n{\"id\":2}\n",
        );
        let mut s = source(
            &[("path", p.to_str().unwrap()), ("batch.size", "1")],
            declared(),
        )
        .unwrap();
        let SourcePoll::Batch(b) = s.poll_batch(10).unwrap() else {
            panic!("expected a batch")
        };
        assert_eq!(b.num_rows(), 1);
        let pos = s.position();
        assert_eq!(pos.file.as_deref(), Some(p.as_path()));
        assert_eq!(pos.records, 1);
        assert!(pos.byte_offset > 0);
        assert_eq!(ids(&drain(&mut s).unwrap()), vec![2]);
    }

    #[test]
    fn seek_resumes_after_the_last_returned_row() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.csv", "id,name\n1,a\n2,b\n3,c\n");
        write(dir.path(), "b.csv", "id,name\n4,d\n5,e\n");
        let path = dir.path().to_str().unwrap();
        let ids = |batches: Vec<RecordBatch>| -> Vec<i64> {
            batches
                .iter()
                .flat_map(|b| {
                    b.column(0)
                        .as_any()
                        .downcast_ref::<arrow::array::Int64Array>()
                        .unwrap()
                        .values()
                        .to_vec()
                })
                .collect()
        };
        // Every prefix: positions taken after each poll resume exactly where it stopped.
        for polls in 0..6 {
            let mut s = source(&[("path", path), ("format", "csv")], declared()).unwrap();
            let mut first = Vec::new();
            for _ in 0..polls {
                if let SourcePoll::Batch(b) = s.poll_batch(2).unwrap() {
                    first.push(b);
                }
            }
            let position = SourceConnector::position(&s).unwrap();
            let mut resumed = source(&[("path", path), ("format", "csv")], declared()).unwrap();
            resumed.seek(&position).unwrap();
            let mut all = ids(first);
            all.extend(ids(drain(&mut resumed).unwrap()));
            assert_eq!(all, vec![1, 2, 3, 4, 5], "after {polls} polls ({position})");
        }
        let mut s = source(&[("path", path), ("format", "csv")], declared()).unwrap();
        assert!(s.seek("file\t1\t/no/such/file.csv").is_err());
        assert!(s.seek("garbage").is_err());
    }

    #[test]
    fn schema_is_inferred_when_no_columns_are_declared() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "a.csv", "id,name\n1,x\n");
        let mut s = source(&[("path", p.to_str().unwrap())], Arc::new(Schema::empty())).unwrap();
        assert_eq!(s.schema().field(0).data_type(), &DataType::Int64);
        let b = drain(&mut s).unwrap();
        let names = b[0]
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(names.value(0), "x");
    }

    #[test]
    fn parquet_projects_and_casts_by_name() {
        use arrow::array::{ArrayRef, Int32Array};
        let dir = tempfile::tempdir().unwrap();
        let file_schema = Arc::new(Schema::new(vec![
            Field::new("unused", DataType::Utf8, true),
            Field::new("price", DataType::Int64, true),
            Field::new("id", DataType::Int32, false),
            Field::new("ts", DataType::Timestamp(TimeUnit::Second, None), true),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&file_schema),
            vec![
                Arc::new(StringArray::from(vec!["a", "b", "c"])) as ArrayRef,
                Arc::new(Int64Array::from(vec![Some(1), Some(i64::MAX), None])),
                Arc::new(Int32Array::from(vec![1, 2, 3])),
                Arc::new(arrow::array::TimestampSecondArray::from(vec![1, 2, 3])),
            ],
        )
        .unwrap();
        let path = dir.path().join("a.parquet");
        let mut w = ::parquet::arrow::ArrowWriter::try_new(
            std::fs::File::create(&path).unwrap(),
            file_schema,
            None,
        )
        .unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let declared = Arc::new(Schema::new(vec![
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
            Field::new("id", DataType::Int64, false),
            Field::new("price", DataType::Int32, true),
        ]));
        let p = path.to_str().unwrap();
        let mut s = source(&[("path", p)], Arc::clone(&declared)).unwrap();
        let err = drain(&mut s).unwrap_err().to_string();
        assert!(
            err.contains("column price: row group 0, row 1: cannot cast"),
            "{err}"
        );
        assert!(err.contains("(Int64) to Int32"), "{err}");

        let mut s = source(
            &[("path", p), ("error.policy", "skip")],
            Arc::clone(&declared),
        )
        .unwrap();
        let out = drain(&mut s).unwrap();
        assert_eq!(out[0].schema(), declared);
        let ts = out[0]
            .column(0)
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .unwrap();
        assert_eq!(ts.values(), &[1000, 3000]);
        assert_eq!(s.metrics().bad_records, 1);
        assert!(s.metrics().bytes_read > 0);
    }

    #[test]
    fn json_bad_lines_are_skipped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "a.json",
            "{\"id\":1}\nnot json\n{\"id\":\"x\"}\n{\"id\":4}\n",
        );
        let path = p.to_str().unwrap();
        let err = drain(&mut source(&[("path", path)], declared()).unwrap()).unwrap_err();
        assert!(err.to_string().contains("a.json line 2"), "{err}");
        let mut s = source(&[("path", path), ("error.policy", "skip")], declared()).unwrap();
        assert_eq!(ids(&drain(&mut s).unwrap()), vec![1, 4]);
        assert_eq!(s.metrics().bad_records, 2);
    }

    #[test]
    fn read_once_requires_matching_files() {
        let dir = tempfile::tempdir().unwrap();
        let glob = format!("{}/*.csv", dir.path().display());
        let err = source(&[("path", &glob)], declared()).err().unwrap();
        assert!(err.to_string().contains("no files match"), "{err}");
        let missing = format!("{}/nope.csv", dir.path().display());
        assert!(source(&[("path", &missing)], declared()).is_err());
    }
}
