//! The `FILES` sink: CSV, JSON-lines or Parquet files in a directory.
//!
//! File life cycle, all within `path` (and its `col=value/` partition
//! subdirectories when `partition.columns` is set):
//!
//! 1. Rows go to a dot-prefixed in-progress file `.inprogress-<id>.<ext>`,
//!    created on the first row (never an empty file).
//! 2. The file is *rolled* when it reaches `rollover.size`, when it is older than
//!    `rollover.interval` (checked on writes and on `tick`), at `pre_commit` and
//!    at `close`. Rolling finishes the encoder and fsyncs the file.
//! 3. A rolled file is *committed* by renaming it to `part-<epoch>-<seq>.<ext>`
//!    (both zero-padded to 6 digits so names sort in commit order) and fsyncing
//!    the directory. Only committed files have names without a leading dot.
//!
//! When a rolled file is committed depends on `delivery.guarantee`:
//! - `exactly-once` (default), once epochs are in use (`begin_epoch` was
//!   called): rolled files wait as `.pending-<id>.<ext>`; `pre_commit(e)` rolls
//!   the open files and assigns everything pending to epoch `e`;
//!   `commit_epoch(e)` commits them; `rollback_epoch(e)` deletes them.
//!   Without epochs (no checkpointing), files commit at rollover and at `close`.
//! - `at-least-once`: files commit at rollover; nothing waits.
//!
//! A pending file assigned to an epoch is renamed `.pending-<epoch>-<id>.<ext>`
//! (and the directory synced) by `pre_commit`, so the assignment survives a
//! crash. Opening the sink deletes stale `.inprogress-*` files and pending files
//! of no epoch, keeps epoch-tagged pending files as in doubt, and continues
//! sequence numbers after the highest existing `part-*` file of each epoch, so
//! committed files are never overwritten. `recover(committed)` then commits the
//! in-doubt files of epochs up to `committed` (whose checkpoint completed: the
//! commit decision) and deletes the rest; committing them again after a crash
//! in the middle of a commit is harmless, as a committed file is no longer
//! pending.
//!
//! Partitioning (`partition.columns`): rows are routed to `col=value/`
//! subdirectories (Hive-style: values percent-encoded, NULL as
//! `__HIVE_DEFAULT_PARTITION__`); the partition columns are not repeated inside
//! the files. The FILES source restores them from the directory names.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{RecordBatch, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::datatypes::SchemaRef;

use crate::connector::{SinkCapabilities, SinkConnector, SinkConnectorMetrics};
use crate::error::ConnectorError;
use crate::format::FileFormat;
use crate::format::csv::CsvFileWriter;
use crate::format::json::JsonFileWriter;
use crate::format::parquet::ParquetFileWriter;
use crate::format::partition;
use crate::options::ConnectorOptions;
use crate::registry::ConfigKey;

const NAME: &str = "FILES";

const INPROGRESS_PREFIX: &str = ".inprogress-";
const PENDING_PREFIX: &str = ".pending-";
const PART_PREFIX: &str = "part-";

/// Options of the FILES sink.
pub(crate) const CONFIG_KEYS: &[ConfigKey] = &[
    ConfigKey {
        key: "path",
        required: true,
        default: None,
        description: "output directory (created if missing)",
    },
    ConfigKey {
        key: "format",
        required: true,
        default: None,
        description: "csv | json | parquet",
    },
    ConfigKey {
        key: "rollover.size",
        required: false,
        default: Some("128MiB"),
        description: "start a new file once the current one has this many bytes",
    },
    ConfigKey {
        key: "rollover.interval",
        required: false,
        default: Some("60s"),
        description: "start a new file once the current one is this old",
    },
    ConfigKey {
        key: "header",
        required: false,
        default: Some("true"),
        description: "csv: write a header row",
    },
    ConfigKey {
        key: "delivery.guarantee",
        required: false,
        default: Some("exactly-once"),
        description: "exactly-once: files become visible when their epoch commits; at-least-once: at rollover",
    },
    ConfigKey {
        key: "partition.columns",
        required: false,
        default: None,
        description: "comma-separated columns; rows go to col=value/ subdirectories",
    },
    ConfigKey {
        key: "changelog",
        required: false,
        default: Some("false"),
        description: "accept updating input (each change is written with its _op column)",
    },
];

/// Validated FILES sink options.
#[derive(Debug, Clone)]
pub(crate) struct FilesSinkConfig {
    dir: PathBuf,
    format: FileFormat,
    rollover_size: u64,
    rollover_interval: Duration,
    header: bool,
    exactly_once: bool,
    partition_columns: Vec<String>,
    pub(crate) changelog: bool,
}

fn invalid(key: &str, value: &str, reason: impl Into<String>) -> ConnectorError {
    ConnectorError::InvalidOption {
        connector: NAME.to_string(),
        key: key.to_string(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

impl FilesSinkConfig {
    /// Parses and validates options (partition columns against `schema`)
    /// without touching the file system.
    pub(crate) fn from_options(
        options: &ConnectorOptions,
        format: Option<FileFormat>,
        schema: &SchemaRef,
    ) -> Result<Self, ConnectorError> {
        let path = options.require_str(NAME, "path")?;
        if path.trim().is_empty() {
            return Err(invalid("path", path, "must not be empty"));
        }
        let format = format
            .or_else(|| FileFormat::from_extension(Path::new(path)))
            .ok_or_else(|| ConnectorError::MissingOption {
                connector: NAME.to_string(),
                key: "format".to_string(),
            })?;
        let rollover_size = options
            .get_size(NAME, "rollover.size")?
            .unwrap_or(128 << 20);
        if rollover_size == 0 {
            return Err(invalid("rollover.size", "0", "must be at least 1 byte"));
        }
        let rollover_interval = options
            .get_duration(NAME, "rollover.interval")?
            .unwrap_or(Duration::from_secs(60));
        if rollover_interval.is_zero() {
            return Err(invalid("rollover.interval", "0", "must be positive"));
        }
        let exactly_once = options
            .get_choice(
                NAME,
                "delivery.guarantee",
                &["exactly-once", "at-least-once"],
            )?
            .is_none_or(|g| g == "exactly-once");
        let mut partition_columns = Vec::new();
        if let Some(list) = options.get_str("partition.columns") {
            for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let Some(field) = schema
                    .fields()
                    .iter()
                    .find(|f| f.name().eq_ignore_ascii_case(name))
                else {
                    let names: Vec<&str> =
                        schema.fields().iter().map(|f| f.name().as_str()).collect();
                    return Err(invalid(
                        "partition.columns",
                        list,
                        format!("no column '{name}'; columns: {}", names.join(", ")),
                    ));
                };
                if field.data_type().is_nested() {
                    return Err(invalid(
                        "partition.columns",
                        list,
                        format!("column '{name}' has nested type {}", field.data_type()),
                    ));
                }
                partition_columns.push(field.name().clone());
            }
            if partition_columns.len() >= schema.fields().len() {
                return Err(invalid(
                    "partition.columns",
                    list,
                    "at least one column must remain to be written into the files",
                ));
            }
        }
        Ok(Self {
            dir: PathBuf::from(path),
            format,
            rollover_size,
            rollover_interval,
            header: options.get_bool(NAME, "header")?.unwrap_or(true),
            exactly_once,
            partition_columns,
            changelog: options.get_bool(NAME, "changelog")?.unwrap_or(false),
        })
    }
}

enum FileWriter {
    Csv(CsvFileWriter),
    Json(JsonFileWriter),
    Parquet(ParquetFileWriter),
}

impl FileWriter {
    fn write(&mut self, batch: &RecordBatch) -> Result<(), ConnectorError> {
        match self {
            Self::Csv(w) => w.write(batch),
            Self::Json(w) => w.write(batch),
            Self::Parquet(w) => w.write(batch),
        }
    }

    fn bytes(&self) -> u64 {
        match self {
            Self::Csv(w) => w.bytes(),
            Self::Json(w) => w.bytes(),
            Self::Parquet(w) => w.bytes(),
        }
    }

    fn finish(self) -> Result<File, ConnectorError> {
        match self {
            Self::Csv(w) => Ok(w.finish()),
            Self::Json(w) => w.finish(),
            Self::Parquet(w) => w.finish(),
        }
    }
}

/// An in-progress file.
struct OpenFile {
    path: PathBuf,
    writer: FileWriter,
    rows: u64,
    /// Bytes already counted in the metrics.
    counted: u64,
    opened: Instant,
}

/// A rolled, fsynced file waiting for its epoch to commit.
struct PendingFile {
    path: PathBuf,
    /// Partition directory relative to the sink directory.
    rel_dir: String,
    /// Assigned by `pre_commit`; `None` = rolled since the last `pre_commit`.
    epoch: Option<u64>,
}

/// The FILES sink. Build it with [`crate::create_sink`].
pub struct FilesSink {
    config: FilesSinkConfig,
    /// Schema of the batches the sink receives.
    input: SchemaRef,
    /// Schema written into files (input minus partition columns).
    data_schema: SchemaRef,
    partition_idx: Vec<usize>,
    data_idx: Vec<usize>,
    epoch: u64,
    epochs_in_use: bool,
    last_pre_commit: Option<u64>,
    /// Open files by partition directory ("" when unpartitioned).
    open: BTreeMap<String, OpenFile>,
    pending: Vec<PendingFile>,
    /// Epoch-tagged pending files a previous run left (see `recover`).
    in_doubt: Vec<PendingFile>,
    /// Next sequence number per epoch.
    next_seq: HashMap<u64, u64>,
    metrics: SinkConnectorMetrics,
}

impl FilesSink {
    /// Creates the directory, removes stale uncommitted files and finds where
    /// sequence numbers continue.
    pub(crate) fn open(config: FilesSinkConfig, input: SchemaRef) -> Result<Self, ConnectorError> {
        std::fs::create_dir_all(&config.dir).map_err(|e| ConnectorError::io(&config.dir, e))?;
        let partition_idx: Vec<usize> = config
            .partition_columns
            .iter()
            .filter_map(|p| input.index_of(p).ok())
            .collect();
        let data_idx: Vec<usize> = (0..input.fields().len())
            .filter(|i| !partition_idx.contains(i))
            .collect();
        let data_schema = Arc::new(input.project(&data_idx)?);
        let mut next_seq = HashMap::new();
        let mut in_doubt = Vec::new();
        recover_dir(&config.dir, "", &mut next_seq, &mut in_doubt)?;
        Ok(Self {
            config,
            input,
            data_schema,
            partition_idx,
            data_idx,
            epoch: 0,
            epochs_in_use: false,
            last_pre_commit: None,
            open: BTreeMap::new(),
            pending: Vec::new(),
            in_doubt,
            next_seq,
            metrics: SinkConnectorMetrics::default(),
        })
    }

    /// Whether a rolled file is committed at once rather than waiting for an epoch.
    fn commit_at_roll(&self) -> bool {
        !self.config.exactly_once || !self.epochs_in_use
    }

    fn ext(&self) -> &'static str {
        self.config.format.extension()
    }

    fn write_part(&mut self, rel_dir: &str, batch: &RecordBatch) -> Result<(), ConnectorError> {
        let open = match self.open.entry(rel_dir.to_string()) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(v) => v.insert(create_file(&self.config, &self.data_schema, rel_dir)?),
        };
        open.writer.write(batch)?;
        open.rows += batch.num_rows() as u64;
        let bytes = open.writer.bytes();
        if bytes > open.counted {
            self.metrics.bytes_written += bytes - open.counted;
            open.counted = bytes;
        }
        let due = bytes >= self.config.rollover_size
            || open.opened.elapsed() >= self.config.rollover_interval;
        if due {
            self.roll(rel_dir, None)?;
        }
        Ok(())
    }

    /// Finishes the open file of `rel_dir`; deletes it when empty, otherwise
    /// commits it (with `epoch`, or the current epoch) or leaves it pending
    /// with `epoch`, depending on the delivery guarantee.
    fn roll(&mut self, rel_dir: &str, epoch: Option<u64>) -> Result<(), ConnectorError> {
        let Some(open) = self.open.remove(rel_dir) else {
            return Ok(());
        };
        let path = open.path.clone();
        let file = open.writer.finish()?;
        if open.rows == 0 {
            drop(file);
            return remove(&path);
        }
        file.sync_all().map_err(|e| ConnectorError::io(&path, e))?;
        let len = file
            .metadata()
            .map_err(|e| ConnectorError::io(&path, e))?
            .len();
        if len > open.counted {
            self.metrics.bytes_written += len - open.counted;
        }
        drop(file);
        if self.commit_at_roll() {
            let epoch = epoch.unwrap_or(self.epoch);
            self.commit_file(&path, rel_dir, epoch)
        } else {
            let pending = path.with_file_name(pending_name(epoch, self.ext()));
            rename(&path, &pending)?;
            if epoch.is_some() {
                sync_dir(&self.config.dir.join(rel_dir))?;
            }
            self.pending.push(PendingFile {
                path: pending,
                rel_dir: rel_dir.to_string(),
                epoch,
            });
            Ok(())
        }
    }

    fn roll_all(&mut self, epoch: Option<u64>) -> Result<(), ConnectorError> {
        let dirs: Vec<String> = self.open.keys().cloned().collect();
        for d in dirs {
            self.roll(&d, epoch)?;
        }
        Ok(())
    }

    /// Renames a finished file to its `part-` name and syncs the directory.
    fn commit_file(
        &mut self,
        path: &Path,
        rel_dir: &str,
        epoch: u64,
    ) -> Result<(), ConnectorError> {
        let dir = self.config.dir.join(rel_dir);
        let seq = self.next_seq.entry(epoch).or_insert(0);
        let mut target;
        loop {
            target = dir.join(format!(
                "{PART_PREFIX}{epoch:06}-{:06}.{}",
                *seq,
                self.config.format.extension()
            ));
            *seq += 1;
            if !target.exists() {
                break;
            }
        }
        rename(path, &target)?;
        sync_dir(&dir)?;
        self.metrics.files_committed += 1;
        Ok(())
    }

    /// Commits pending files selected by `pick`.
    fn commit_pending(
        &mut self,
        pick: impl Fn(&PendingFile) -> Option<u64>,
    ) -> Result<(), ConnectorError> {
        let pending = std::mem::take(&mut self.pending);
        let mut rest = Vec::new();
        let mut result = Ok(());
        for p in pending {
            match (result.is_ok(), pick(&p)) {
                (true, Some(epoch)) => {
                    if let Err(e) = self.commit_file(&p.path, &p.rel_dir, epoch) {
                        result = Err(e);
                        rest.push(p);
                    }
                }
                _ => rest.push(p),
            }
        }
        self.pending = rest;
        result
    }

    /// Splits a batch by partition directory. Unpartitioned: one part, "".
    fn split(&self, batch: &RecordBatch) -> Result<Vec<(String, RecordBatch)>, ConnectorError> {
        let data = batch.project(&self.data_idx)?;
        let data = RecordBatch::try_new(Arc::clone(&self.data_schema), data.columns().to_vec())?;
        if self.partition_idx.is_empty() {
            return Ok(vec![(String::new(), data)]);
        }
        let names: Vec<&str> = self
            .partition_idx
            .iter()
            .map(|i| self.input.field(*i).name().as_str())
            .collect();
        let columns: Vec<_> = self
            .partition_idx
            .iter()
            .map(|i| batch.column(*i))
            .collect();
        let mut groups = partition::group_rows(&names, &columns)?;
        if groups.len() == 1 {
            let (k, _) = groups.pop_first().unwrap_or_default();
            return Ok(vec![(k, data)]);
        }
        groups
            .into_iter()
            .map(|(k, rows)| Ok((k, take_record_batch(&data, &UInt32Array::from(rows))?)))
            .collect()
    }
}

impl SinkConnector for FilesSink {
    fn capabilities(&self) -> SinkCapabilities {
        SinkCapabilities {
            exactly_once: self.config.exactly_once,
            idempotent: false,
            upsert: false,
            changelog: self.config.changelog,
            two_phase_commit: self.config.exactly_once,
            partitioned: true,
        }
    }

    fn write_batch(&mut self, batch: &RecordBatch) -> Result<(), ConnectorError> {
        if batch.num_columns() != self.input.fields().len() {
            self.metrics.errors += 1;
            return Err(ConnectorError::Unsupported(format!(
                "FILES sink on '{}' got a batch with {} columns, expected {} ({}); this is a bug, please report it",
                self.config.dir.display(),
                batch.num_columns(),
                self.input.fields().len(),
                self.input
            )));
        }
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let parts = self
            .split(batch)
            .inspect_err(|_| self.metrics.errors += 1)?;
        for (rel_dir, part) in parts {
            self.write_part(&rel_dir, &part)
                .inspect_err(|_| self.metrics.errors += 1)?;
        }
        self.metrics.records_written += batch.num_rows() as u64;
        Ok(())
    }

    fn recover(&mut self, committed: Option<u64>) -> Result<(), ConnectorError> {
        let in_doubt = std::mem::take(&mut self.in_doubt);
        let mut result = Ok(());
        for p in in_doubt {
            let step = match p.epoch {
                Some(epoch) if committed.is_some_and(|c| epoch <= c) => {
                    tracing::info!(file = %p.path.display(), epoch, "committing a file of a completed checkpoint");
                    self.commit_file(&p.path, &p.rel_dir, epoch)
                }
                _ => {
                    tracing::info!(file = %p.path.display(), "removing a file of an unfinished checkpoint");
                    remove(&p.path)
                }
            };
            if let Err(e) = step {
                self.metrics.errors += 1;
                result = result.and(Err(e));
            }
        }
        result
    }

    fn begin_epoch(&mut self, epoch: u64) -> Result<(), ConnectorError> {
        self.epochs_in_use = true;
        self.epoch = epoch;
        Ok(())
    }

    fn pre_commit(&mut self, epoch: u64) -> Result<(), ConnectorError> {
        self.epochs_in_use = true;
        self.roll_all(Some(epoch))?;
        let ext = self.ext();
        for p in &mut self.pending {
            if p.epoch.is_none() {
                // The epoch goes into the name, durably: after a crash the file is
                // committed or discarded by that epoch's fate.
                let tagged = p.path.with_file_name(pending_name(Some(epoch), ext));
                rename(&p.path, &tagged)?;
                sync_dir(&self.config.dir.join(&p.rel_dir))?;
                p.path = tagged;
                p.epoch = Some(epoch);
            }
        }
        self.last_pre_commit = Some(epoch);
        Ok(())
    }

    fn commit_epoch(&mut self, epoch: u64) -> Result<(), ConnectorError> {
        if self.last_pre_commit.is_none_or(|e| e < epoch) {
            self.pre_commit(epoch)?;
        }
        self.commit_pending(|p| p.epoch.filter(|e| *e <= epoch))
            .inspect_err(|_| self.metrics.errors += 1)?;
        self.metrics.last_committed_epoch = Some(epoch);
        Ok(())
    }

    fn rollback_epoch(&mut self, epoch: u64) -> Result<(), ConnectorError> {
        let open = std::mem::take(&mut self.open);
        for (_, f) in open {
            let path = f.path.clone();
            drop(f.writer.finish());
            remove(&path)?;
        }
        let pending = std::mem::take(&mut self.pending);
        for p in pending {
            if p.epoch.is_none_or(|e| e >= epoch) {
                remove(&p.path)?;
            } else {
                self.pending.push(p);
            }
        }
        if self.last_pre_commit.is_some_and(|e| e >= epoch) {
            self.last_pre_commit = None;
        }
        Ok(())
    }

    fn tick(&mut self) -> Result<(), ConnectorError> {
        let due: Vec<String> = self
            .open
            .iter()
            .filter(|(_, f)| f.opened.elapsed() >= self.config.rollover_interval)
            .map(|(k, _)| k.clone())
            .collect();
        for d in due {
            self.roll(&d, None)?;
        }
        Ok(())
    }

    /// Encoders hand their bytes to the file on every write (Parquet keeps the
    /// current row group in memory until the file is rolled), so there is
    /// nothing to push.
    fn flush(&mut self) -> Result<(), ConnectorError> {
        Ok(())
    }

    fn close(&mut self) -> Result<(), ConnectorError> {
        self.roll_all(None)?;
        let current = self.epoch;
        self.commit_pending(|p| Some(p.epoch.unwrap_or(current)))
            .inspect_err(|_| self.metrics.errors += 1)
    }

    fn metrics(&self) -> SinkConnectorMetrics {
        self.metrics
    }
}

/// Creates an in-progress file in partition directory `rel_dir`.
fn create_file(
    config: &FilesSinkConfig,
    data_schema: &SchemaRef,
    rel_dir: &str,
) -> Result<OpenFile, ConnectorError> {
    let dir = config.dir.join(rel_dir);
    if !rel_dir.is_empty() {
        std::fs::create_dir_all(&dir).map_err(|e| ConnectorError::io(&dir, e))?;
    }
    let path = dir.join(format!(
        "{INPROGRESS_PREFIX}{}.{}",
        unique_id(),
        config.format.extension()
    ));
    let file = File::create(&path).map_err(|e| ConnectorError::io(&path, e))?;
    let writer = match config.format {
        FileFormat::Csv => FileWriter::Csv(CsvFileWriter::new(file, config.header)),
        FileFormat::Json => FileWriter::Json(JsonFileWriter::new(file)),
        FileFormat::Parquet => {
            FileWriter::Parquet(ParquetFileWriter::new(file, Arc::clone(data_schema))?)
        }
    };
    Ok(OpenFile {
        path,
        writer,
        rows: 0,
        counted: 0,
        opened: Instant::now(),
    })
}

/// Deletes stale in-progress files and untagged pending files under `dir`
/// (recursively, skipping dot-directories), collects epoch-tagged pending files as
/// in doubt and records the next sequence number per epoch.
fn recover_dir(
    dir: &Path,
    rel_dir: &str,
    next_seq: &mut HashMap<u64, u64>,
    in_doubt: &mut Vec<PendingFile>,
) -> Result<(), ConnectorError> {
    let entries = std::fs::read_dir(dir).map_err(|e| ConnectorError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| ConnectorError::io(dir, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let path = entry.path();
        if path.is_dir() {
            if !name.starts_with('.') {
                let rel = if rel_dir.is_empty() {
                    name.to_string()
                } else {
                    format!("{rel_dir}/{name}")
                };
                recover_dir(&path, &rel, next_seq, in_doubt)?;
            }
        } else if let Some(epoch) = pending_epoch(&name) {
            in_doubt.push(PendingFile {
                path,
                rel_dir: rel_dir.to_string(),
                epoch: Some(epoch),
            });
        } else if name.starts_with(INPROGRESS_PREFIX) || name.starts_with(PENDING_PREFIX) {
            tracing::info!(file = %path.display(), "removing uncommitted file");
            remove(&path)?;
        } else if let Some((epoch, seq)) = parse_part_name(&name) {
            let next = next_seq.entry(epoch).or_insert(0);
            *next = (*next).max(seq + 1);
        }
    }
    Ok(())
}

/// `.pending-<id>.<ext>`, or `.pending-e<epoch>-<id>.<ext>` once assigned to an epoch.
fn pending_name(epoch: Option<u64>, ext: &str) -> String {
    match epoch {
        Some(e) => format!("{PENDING_PREFIX}e{e:06}-{}.{ext}", unique_id()),
        None => format!("{PENDING_PREFIX}{}.{ext}", unique_id()),
    }
}

/// The epoch of an epoch-tagged pending file name.
fn pending_epoch(name: &str) -> Option<u64> {
    let rest = name.strip_prefix(PENDING_PREFIX)?.strip_prefix('e')?;
    let (epoch, _) = rest.split_once('-')?;
    epoch.parse().ok()
}

/// `part-000003-000012.csv` -> `(3, 12)`.
fn parse_part_name(name: &str) -> Option<(u64, u64)> {
    let rest = name.strip_prefix(PART_PREFIX)?;
    let stem = rest.split('.').next()?;
    let (epoch, seq) = stem.split_once('-')?;
    Some((epoch.parse().ok()?, seq.parse().ok()?))
}

fn unique_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

fn rename(from: &Path, to: &Path) -> Result<(), ConnectorError> {
    std::fs::rename(from, to).map_err(|e| ConnectorError::io(from, e))
}

fn remove(path: &Path) -> Result<(), ConnectorError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ConnectorError::io(path, e)),
        _ => Ok(()),
    }
}

fn sync_dir(dir: &Path) -> Result<(), ConnectorError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ConnectorError::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connector::{SourceConnector, SourcePoll};
    use crate::source::files::{FilesSource, FilesSourceConfig};
    use arrow::array::{Array, ArrayRef, Int64Array, StringArray, TimestampMicrosecondArray};
    use arrow::compute::concat_batches;
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, None), true),
        ]))
    }

    fn batch(ids: &[i64]) -> RecordBatch {
        let names: Vec<Option<String>> = ids
            .iter()
            .map(|i| (i % 3 != 0).then(|| format!("n{i}")))
            .collect();
        let ts: Vec<Option<i64>> = ids
            .iter()
            .map(|i| (i % 4 != 0).then_some(1_704_067_200_123_456 + i))
            .collect();
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(Int64Array::from(ids.to_vec())) as ArrayRef,
                Arc::new(StringArray::from(names)),
                Arc::new(TimestampMicrosecondArray::from(ts)),
            ],
        )
        .unwrap()
    }

    fn sink(dir: &Path, pairs: &[(&str, &str)]) -> FilesSink {
        let mut options = ConnectorOptions::from_pairs(pairs.iter().copied());
        options.insert("path", dir.to_str().unwrap());
        let format = options.get_str("format").and_then(FileFormat::parse);
        let config = FilesSinkConfig::from_options(&options, format, &schema()).unwrap();
        FilesSink::open(config, schema()).unwrap()
    }

    /// Visible (committed) file names under `dir`, recursively, relative.
    fn visible(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk(base, &p, out);
                } else {
                    out.push(p.strip_prefix(base).unwrap().to_string_lossy().into_owned());
                }
            }
        }
        walk(dir, dir, &mut out);
        out.retain(|n| !n.rsplit('/').next().unwrap().starts_with('.'));
        out.sort();
        out
    }

    fn all_files(dir: &Path) -> usize {
        std::fs::read_dir(dir).unwrap().count()
    }

    fn read_back(dir: &Path, format: &str, declared: SchemaRef) -> RecordBatch {
        let options =
            ConnectorOptions::from_pairs([("path", dir.to_str().unwrap()), ("format", format)]);
        let config = FilesSourceConfig::from_options(&options, FileFormat::parse(format)).unwrap();
        let mut s = FilesSource::open(config, Arc::clone(&declared)).unwrap();
        let mut out = Vec::new();
        while let SourcePoll::Batch(b) = s.poll_batch(1 << 20).unwrap() {
            out.push(b);
        }
        concat_batches(&declared, &out).unwrap()
    }

    #[test]
    fn round_trips_csv_json_parquet() {
        for format in ["csv", "json", "parquet"] {
            let dir = tempfile::tempdir().unwrap();
            let mut s = sink(dir.path(), &[("format", format)]);
            s.write_batch(&batch(&[1, 2, 3, 4])).unwrap();
            s.write_batch(&batch(&[5, 6])).unwrap();
            s.close().unwrap();
            assert_eq!(
                visible(dir.path()),
                vec![format!("part-000000-000000.{format}")]
            );
            let back = read_back(dir.path(), format, schema());
            assert_eq!(
                back,
                concat_batches(&schema(), &[batch(&[1, 2, 3, 4]), batch(&[5, 6])]).unwrap(),
                "{format}"
            );
            assert_eq!(s.metrics().records_written, 6);
            assert_eq!(s.metrics().files_committed, 1);
            assert!(s.metrics().bytes_written > 0);
        }
    }

    #[test]
    fn csv_text_has_header_empty_nulls_and_iso_timestamps() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = sink(dir.path(), &[("format", "csv")]);
        s.write_batch(&batch(&[3, 5])).unwrap();
        s.close().unwrap();
        let text = std::fs::read_to_string(dir.path().join("part-000000-000000.csv")).unwrap();
        assert_eq!(
            text,
            "id,name,ts\n3,,2024-01-01T00:00:00.123459\n5,n5,2024-01-01T00:00:00.123461\n"
        );

        let dir = tempfile::tempdir().unwrap();
        let mut s = sink(dir.path(), &[("format", "json")]);
        s.write_batch(&batch(&[4])).unwrap();
        s.close().unwrap();
        let text = std::fs::read_to_string(dir.path().join("part-000000-000000.json")).unwrap();
        assert_eq!(text, "{\"id\":4,\"name\":\"n4\",\"ts\":null}\n");
    }

    #[test]
    fn rollover_by_size_creates_several_files_and_no_empty_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = sink(
            dir.path(),
            &[
                ("format", "csv"),
                ("rollover.size", "10"),
                ("delivery.guarantee", "at-least-once"),
            ],
        );
        for i in 0..3 {
            s.write_batch(&batch(&[i * 2 + 1, i * 2 + 2])).unwrap();
        }
        // every write crossed 10 bytes, so every file was committed at rollover
        assert_eq!(
            visible(dir.path()),
            vec![
                "part-000000-000000.csv",
                "part-000000-000001.csv",
                "part-000000-000002.csv"
            ]
        );
        s.write_batch(&RecordBatch::new_empty(schema())).unwrap();
        s.close().unwrap();
        assert_eq!(
            all_files(dir.path()),
            3,
            "close must not leave an empty file"
        );
        assert_eq!(read_back(dir.path(), "csv", schema()).num_rows(), 6);
    }

    #[test]
    fn exactly_once_files_are_invisible_until_commit() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = sink(dir.path(), &[("format", "json"), ("rollover.size", "10")]);
        s.begin_epoch(1).unwrap();
        s.write_batch(&batch(&[1])).unwrap();
        s.write_batch(&batch(&[2])).unwrap();
        assert!(visible(dir.path()).is_empty());
        assert_eq!(all_files(dir.path()), 2, "two pending files");
        s.pre_commit(1).unwrap();
        s.begin_epoch(2).unwrap();
        s.write_batch(&batch(&[3])).unwrap(); // epoch 2 data, rolled by size
        assert!(visible(dir.path()).is_empty());
        s.commit_epoch(1).unwrap();
        assert_eq!(
            visible(dir.path()),
            vec!["part-000001-000000.json", "part-000001-000001.json"]
        );
        assert_eq!(s.metrics().last_committed_epoch, Some(1));
        s.pre_commit(2).unwrap();
        s.rollback_epoch(2).unwrap();
        s.close().unwrap();
        assert_eq!(all_files(dir.path()), 2, "rolled-back epoch 2 left nothing");
    }

    #[test]
    fn in_progress_file_is_invisible_until_close() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = sink(dir.path(), &[("format", "csv")]);
        s.write_batch(&batch(&[1, 2])).unwrap();
        s.tick().unwrap();
        assert!(visible(dir.path()).is_empty());
        assert_eq!(all_files(dir.path()), 1);
        s.close().unwrap();
        assert_eq!(visible(dir.path()), vec!["part-000000-000000.csv"]);
    }

    #[test]
    fn rollover_interval_on_tick() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = sink(
            dir.path(),
            &[("format", "csv"), ("rollover.interval", "20ms")],
        );
        s.write_batch(&batch(&[1])).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        s.tick().unwrap();
        assert_eq!(visible(dir.path()), vec!["part-000000-000000.csv"]);
        s.tick().unwrap();
        s.close().unwrap();
        assert_eq!(all_files(dir.path()), 1);
    }

    #[test]
    fn reopening_continues_sequence_and_removes_stale_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = sink(dir.path(), &[("format", "csv")]);
        s.write_batch(&batch(&[1])).unwrap();
        s.close().unwrap();
        std::fs::write(dir.path().join(".inprogress-stale.csv"), "id\n9\n").unwrap();
        std::fs::write(dir.path().join(".pending-stale.csv"), "id\n9\n").unwrap();
        let mut s = sink(dir.path(), &[("format", "csv")]);
        assert_eq!(all_files(dir.path()), 1, "stale files removed");
        s.write_batch(&batch(&[2])).unwrap();
        s.close().unwrap();
        assert_eq!(
            visible(dir.path()),
            vec!["part-000000-000000.csv", "part-000000-000001.csv"]
        );
        assert_eq!(read_back(dir.path(), "csv", schema()).num_rows(), 2);
    }

    #[test]
    fn in_doubt_epochs_are_committed_or_discarded_by_the_decision() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = sink(dir.path(), &[("format", "csv")]);
        s.recover(None).unwrap();
        s.begin_epoch(1).unwrap();
        s.write_batch(&batch(&[1, 2])).unwrap();
        s.pre_commit(1).unwrap();
        s.begin_epoch(2).unwrap();
        s.write_batch(&batch(&[3])).unwrap();
        s.pre_commit(2).unwrap();
        s.begin_epoch(3).unwrap();
        s.write_batch(&batch(&[4])).unwrap(); // in progress: never pre-committed
        // Crash: nothing committed, nothing cleaned up.
        std::mem::forget(s);
        assert!(visible(dir.path()).is_empty());
        // The checkpoint of epoch 1 completed (its manifest is the commit decision), the
        // one of epoch 2 did not.
        let mut s = sink(dir.path(), &[("format", "csv")]);
        s.recover(Some(1)).unwrap();
        assert_eq!(visible(dir.path()), vec!["part-000001-000000.csv"]);
        assert_eq!(
            all_files(dir.path()),
            1,
            "epoch 2 and the open file are gone"
        );
        assert_eq!(read_back(dir.path(), "csv", schema()).num_rows(), 2);
        // Recovering again (a crash during recovery) changes nothing.
        let mut s = sink(dir.path(), &[("format", "csv")]);
        s.recover(Some(1)).unwrap();
        assert_eq!(all_files(dir.path()), 1);
    }

    #[test]
    fn partitioned_output_round_trips_through_the_source() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = sink(
            dir.path(),
            &[("format", "parquet"), ("partition.columns", "name")],
        );
        s.write_batch(&batch(&[1, 2, 3])).unwrap();
        s.close().unwrap();
        assert_eq!(
            visible(dir.path()),
            vec![
                "name=__HIVE_DEFAULT_PARTITION__/part-000000-000000.parquet",
                "name=n1/part-000000-000001.parquet",
                "name=n2/part-000000-000002.parquet",
            ]
        );
        let back = read_back(dir.path(), "parquet", schema());
        let mut ids: Vec<i64> = back
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .values()
            .to_vec();
        ids.sort_unstable();
        assert_eq!(ids, vec![1, 2, 3]);
        let names = back
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert!(names.iter().any(|n| n == Some("n2")));
        assert_eq!(names.null_count(), 1);
    }

    #[test]
    fn options_are_validated() {
        let opts = |pairs: &[(&str, &str)]| {
            let o = ConnectorOptions::from_pairs(pairs.iter().copied());
            FilesSinkConfig::from_options(
                &o,
                o.get_str("format").and_then(FileFormat::parse),
                &schema(),
            )
        };
        let e = opts(&[
            ("path", "x"),
            ("format", "csv"),
            ("partition.columns", "nope"),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("no column 'nope'"), "{e}");
        let e = opts(&[("path", "x")]).unwrap_err();
        assert!(matches!(e, ConnectorError::MissingOption { .. }));
        let e = opts(&[("path", "x"), ("format", "csv"), ("rollover.size", "big")]).unwrap_err();
        assert!(e.to_string().contains("rollover.size"));
        assert!(
            opts(&[
                ("path", "x"),
                ("format", "csv"),
                ("delivery.guarantee", "AT_LEAST_ONCE")
            ])
            .is_ok()
        );
    }

    #[test]
    fn part_names_parse() {
        assert_eq!(parse_part_name("part-000003-000012.csv"), Some((3, 12)));
        assert_eq!(parse_part_name("part-x.csv"), None);
    }
}
