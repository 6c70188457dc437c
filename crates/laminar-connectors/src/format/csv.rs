//! CSV: reading a file into the declared schema, and writing sink files.
//!
//! Reading stays vectorized: `arrow_csv`'s decoder parses a chunk of records
//! into all-`Utf8` columns (only the columns the declared schema needs), then the
//! [`Conformer`] casts whole columns and finds bad rows. Line numbers in errors
//! are `header lines + record index + 1`, so a quoted field spanning several
//! lines (or a blank line) shifts the numbers of later records.
//!
//! When the decoder rejects a chunk (wrong number of fields, invalid UTF-8), the
//! chunk is re-read record by record to find the offending records, which then
//! go through the error policy like any other bad record.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::RecordBatch;
use arrow::csv::reader::{Decoder, Format};
use arrow::csv::{ReaderBuilder, Writer, WriterBuilder};
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use arrow::error::ArrowError;

use super::conform::{BadRecords, Conformer, InputKind, Locator, Matching, needed_columns};
use super::{CountingWriter, TIMESTAMP_FORMAT, TIMESTAMP_TZ_FORMAT};
use crate::error::ConnectorError;

/// CSV reading options (`header`, `delimiter`, `quote`, `null_string`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CsvReadOptions {
    pub(crate) header: bool,
    pub(crate) delimiter: u8,
    pub(crate) quote: u8,
    /// Text meaning NULL besides the empty field.
    pub(crate) null_string: Option<String>,
    pub(crate) batch_size: usize,
}

impl CsvReadOptions {
    fn format(&self) -> Format {
        Format::default()
            .with_header(self.header)
            .with_delimiter(self.delimiter)
            .with_quote(self.quote)
    }
}

/// Column names of a CSV file (`column_1..` without a header); empty for an empty file.
fn file_columns(path: &Path, opts: &CsvReadOptions) -> Result<Fields, ConnectorError> {
    let file = File::open(path).map_err(|e| ConnectorError::io(path, e))?;
    let (schema, _) = opts.format().infer_schema(file, Some(0))?;
    Ok(schema
        .fields()
        .iter()
        .map(|f| Field::new(f.name(), DataType::Utf8, true))
        .collect())
}

/// Infers a schema from the first records of a CSV file (for sources declared
/// without columns).
pub(crate) fn infer_schema(path: &Path, opts: &CsvReadOptions) -> Result<Schema, ConnectorError> {
    let file = File::open(path).map_err(|e| ConnectorError::io(path, e))?;
    Ok(opts.format().infer_schema(file, Some(1000))?.0)
}

/// Reads one CSV file in chunks of `batch_size` records.
pub(crate) struct CsvFileReader {
    path: PathBuf,
    reader: BufReader<File>,
    decoder: Decoder,
    /// All-Utf8 schema of the file's columns (before projection).
    text_schema: SchemaRef,
    projection: Vec<usize>,
    conformer: Conformer,
    opts: CsvReadOptions,
    header_lines: u64,
    /// Byte offset of the first record not yet returned.
    offset: u64,
    /// 0-based index of the next data record.
    next_record: u64,
    done: bool,
}

impl CsvFileReader {
    /// Opens `path` and maps its header onto `declared`.
    pub(crate) fn open(
        path: &Path,
        declared: SchemaRef,
        opts: &CsvReadOptions,
        partition_values: &[(String, Option<String>)],
    ) -> Result<Self, ConnectorError> {
        let fields = file_columns(path, opts)?;
        let matching = if opts.header {
            Matching::ByName
        } else {
            Matching::ByPosition
        };
        let projection = needed_columns(&declared, &fields, matching);
        let projected: Fields = projection.iter().map(|i| Arc::clone(&fields[*i])).collect();
        let conformer = Conformer::new(
            declared,
            path,
            &projected,
            InputKind::Text,
            matching,
            opts.null_string.clone(),
            partition_values,
        )?;
        let file = File::open(path).map_err(|e| ConnectorError::io(path, e))?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut offset = 0;
        if opts.header && !fields.is_empty() {
            // Skip the header ourselves so every chunk starts at a record boundary.
            offset = read_record(&mut reader, opts.quote)
                .map_err(|e| ConnectorError::io(path, e))?
                .map_or(0, |r| r.len() as u64);
        }
        let text_schema = Arc::new(Schema::new(fields));
        let decoder = build_decoder(&text_schema, &projection, opts, opts.batch_size);
        Ok(Self {
            path: path.to_path_buf(),
            reader,
            decoder,
            text_schema,
            projection,
            conformer,
            opts: opts.clone(),
            header_lines: u64::from(opts.header),
            offset,
            next_record: 0,
            done: false,
        })
    }

    /// Byte offset of the next unread record.
    pub(crate) fn byte_offset(&self) -> u64 {
        self.offset
    }

    /// Data records consumed so far (including skipped ones).
    pub(crate) fn records(&self) -> u64 {
        self.next_record
    }

    /// Continues at a record boundary taken from `byte_offset()` / `records()` earlier.
    pub(crate) fn resume_at(&mut self, offset: u64, records: u64) -> Result<(), ConnectorError> {
        self.reader
            .seek(SeekFrom::Start(offset))
            .map_err(|e| ConnectorError::io(&self.path, e))?;
        self.offset = offset;
        self.next_record = records;
        Ok(())
    }

    /// The next chunk conformed to the declared schema (possibly empty when
    /// every record in it was skipped); `None` at the end of the file.
    pub(crate) fn next_batch(
        &mut self,
        bad: &mut BadRecords,
    ) -> Result<Option<RecordBatch>, ConnectorError> {
        if self.done || self.text_schema.fields().is_empty() {
            return Ok(None);
        }
        match self.decode_fast() {
            Ok(Some((batch, consumed))) => {
                let first_line = self.header_lines + self.next_record + 1;
                self.offset += consumed;
                self.next_record += batch.num_rows() as u64;
                let out = self
                    .conformer
                    .conform(&batch, Locator::Contiguous(first_line), bad)?;
                Ok(Some(out))
            }
            Ok(None) => {
                self.done = true;
                Ok(None)
            }
            Err(FastError::Io(e)) => Err(ConnectorError::io(&self.path, e)),
            Err(FastError::Decode) => self.decode_slow(bad).map(Some),
        }
    }

    /// Decodes up to `batch_size` records; returns the batch and bytes consumed.
    fn decode_fast(&mut self) -> Result<Option<(RecordBatch, u64)>, FastError> {
        let mut consumed = 0u64;
        loop {
            let buf = self.reader.fill_buf().map_err(FastError::Io)?;
            let n = self.decoder.decode(buf).map_err(|_| FastError::Decode)?;
            self.reader.consume(n);
            consumed += n as u64;
            if n == 0 || self.decoder.capacity() == 0 {
                break;
            }
        }
        match self.decoder.flush() {
            Ok(Some(batch)) => Ok(Some((batch, consumed))),
            Ok(None) => Ok(None),
            Err(_) => Err(FastError::Decode),
        }
    }

    /// Re-reads the chunk starting at `self.offset` one record at a time,
    /// sending records the decoder rejects through the error policy.
    fn decode_slow(&mut self, bad: &mut BadRecords) -> Result<RecordBatch, ConnectorError> {
        let io = |e| ConnectorError::io(&self.path, e);
        self.reader.seek(SeekFrom::Start(self.offset)).map_err(io)?;
        let mut good = Vec::new();
        let mut lines = Vec::new();
        let mut validator = build_decoder(&self.text_schema, &self.projection, &self.opts, 1);
        let mut records = 0usize;
        while records < self.opts.batch_size {
            let Some(mut record) = read_record(&mut self.reader, self.opts.quote)
                .map_err(|e| ConnectorError::io(&self.path, e))?
            else {
                break;
            };
            self.offset += record.len() as u64;
            if !record.ends_with(b"\n") {
                record.push(b'\n');
            }
            if record.iter().all(|b| b.is_ascii_whitespace()) {
                continue; // blank line: not a record
            }
            let line = self.header_lines + self.next_record + 1;
            self.next_record += 1;
            records += 1;
            match validate_record(&mut validator, &record) {
                Ok(()) => {
                    good.extend_from_slice(&record);
                    lines.push(line);
                }
                Err(e) => {
                    validator = build_decoder(&self.text_schema, &self.projection, &self.opts, 1);
                    bad.handle(ConnectorError::BadRecord {
                        file: self.path.clone(),
                        line: Some(line),
                        column: None,
                        reason: e.to_string(),
                    })?;
                }
            }
        }
        if records == 0 {
            self.done = true;
        }
        // Continue in fast mode from the new offset with a fresh decoder.
        self.decoder = build_decoder(
            &self.text_schema,
            &self.projection,
            &self.opts,
            self.opts.batch_size,
        );
        let mut decoder = build_decoder(
            &self.text_schema,
            &self.projection,
            &self.opts,
            lines.len().max(1),
        );
        decoder.decode(&good)?;
        decoder.decode(&[])?;
        let batch = match decoder.flush()? {
            Some(b) => b,
            None => RecordBatch::new_empty(Arc::new(Schema::new(
                self.projection
                    .iter()
                    .map(|i| Arc::clone(&self.text_schema.fields()[*i]))
                    .collect::<Fields>(),
            ))),
        };
        self.conformer.conform(&batch, Locator::Lines(&lines), bad)
    }
}

enum FastError {
    Io(std::io::Error),
    Decode,
}

fn build_decoder(
    text_schema: &SchemaRef,
    projection: &[usize],
    opts: &CsvReadOptions,
    batch_size: usize,
) -> Decoder {
    ReaderBuilder::new(Arc::clone(text_schema))
        .with_header(false)
        .with_delimiter(opts.delimiter)
        .with_quote(opts.quote)
        .with_projection(projection.to_vec())
        .with_batch_size(batch_size.max(1))
        .build_decoder()
}

fn validate_record(decoder: &mut Decoder, record: &[u8]) -> Result<(), ArrowError> {
    decoder.decode(record)?;
    decoder.flush()?;
    Ok(())
}

/// Reads one raw record (through its `\n` terminator, honouring quotes);
/// `None` at end of file. Used only on the slow path.
fn read_record(reader: &mut impl BufRead, quote: u8) -> std::io::Result<Option<Vec<u8>>> {
    let mut record = Vec::new();
    let mut in_quotes = false;
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok((!record.is_empty()).then_some(record));
        }
        // Byte loop: only the error path and the header use it.
        let mut end = None;
        for (i, b) in buf.iter().enumerate() {
            if *b == quote {
                in_quotes = !in_quotes;
            } else if *b == b'\n' && !in_quotes {
                end = Some(i + 1);
                break;
            }
        }
        let take = end.unwrap_or(buf.len());
        record.extend_from_slice(&buf[..take]);
        reader.consume(take);
        if end.is_some() {
            return Ok(Some(record));
        }
    }
}

/// Writes one CSV sink file. `arrow_csv` buffers internally and hands its
/// buffer to the file at the end of every `write`, so no extra buffering is needed.
pub(crate) struct CsvFileWriter {
    writer: Writer<CountingWriter<File>>,
    bytes: Arc<AtomicU64>,
}

impl CsvFileWriter {
    /// Starts a file; the header row (when `header`) is written with the first batch.
    pub(crate) fn new(file: File, header: bool) -> Self {
        let out = CountingWriter::new(file);
        let bytes = out.counter();
        let writer = WriterBuilder::new()
            .with_header(header)
            .with_timestamp_format(TIMESTAMP_FORMAT.to_string())
            .with_timestamp_tz_format(TIMESTAMP_TZ_FORMAT.to_string())
            .with_datetime_format(TIMESTAMP_FORMAT.to_string())
            .build(out);
        Self { writer, bytes }
    }

    pub(crate) fn write(&mut self, batch: &RecordBatch) -> Result<(), ConnectorError> {
        Ok(self.writer.write(batch)?)
    }

    /// Bytes written to the file so far.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Returns the file (everything written has been handed to it; not yet synced).
    pub(crate) fn finish(self) -> File {
        self.writer.into_inner().into_inner()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::conform::ErrorPolicy;
    use arrow::array::{Array, StringArray};
    use std::io::Write;

    fn opts() -> CsvReadOptions {
        CsvReadOptions {
            header: true,
            delimiter: b',',
            quote: b'"',
            null_string: None,
            batch_size: 2,
        }
    }

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ]))
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        File::create(&p)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        p
    }

    fn read_all(
        r: &mut CsvFileReader,
        bad: &mut BadRecords,
    ) -> Result<Vec<RecordBatch>, ConnectorError> {
        let mut out = Vec::new();
        while let Some(b) = r.next_batch(bad)? {
            out.push(b);
        }
        Ok(out)
    }

    #[test]
    fn reads_in_chunks_and_tracks_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let text = "name,id\n\"a,b\",1\nc,2\nd,3";
        let p = write(dir.path(), "x.csv", text);
        let mut r = CsvFileReader::open(&p, schema(), &opts(), &[]).unwrap();
        let mut bad = BadRecords::new(ErrorPolicy::Fail);
        let batches = read_all(&mut r, &mut bad).unwrap();
        assert_eq!(
            batches.iter().map(|b| b.num_rows()).collect::<Vec<_>>(),
            vec![2, 1]
        );
        let names = batches[0]
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(names.value(0), "a,b");
        assert_eq!(r.byte_offset(), text.len() as u64);
        assert_eq!(r.records(), 3);
    }

    #[test]
    fn wrong_field_count_is_a_bad_record_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "x.csv", "id,name\n1,a\n2,b\n3\n4,d,e\n5,e\n");
        let mut r = CsvFileReader::open(&p, schema(), &opts(), &[]).unwrap();
        let mut bad = BadRecords::new(ErrorPolicy::Fail);
        let err = read_all(&mut r, &mut bad).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("x.csv line 4"), "{msg}");

        let mut r = CsvFileReader::open(&p, schema(), &opts(), &[]).unwrap();
        let mut bad = BadRecords::new(ErrorPolicy::Skip);
        let batches = read_all(&mut r, &mut bad).unwrap();
        assert_eq!(crate::testing::ids(&batches), vec![1, 2, 5]);
        assert_eq!(bad.skipped(), 2);
    }

    #[test]
    fn headerless_files_match_by_position() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "x.csv", "1,a\n2,\n");
        let o = CsvReadOptions {
            header: false,
            ..opts()
        };
        let mut r = CsvFileReader::open(&p, schema(), &o, &[]).unwrap();
        let batches = read_all(&mut r, &mut BadRecords::new(ErrorPolicy::Fail)).unwrap();
        let b = &batches[0];
        assert_eq!(b.num_rows(), 2);
        assert!(b.column(1).is_null(1));
    }

    #[test]
    fn empty_file_has_no_batches() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "x.csv", "");
        let o = CsvReadOptions {
            header: true,
            ..opts()
        };
        let declared = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, true)]));
        let mut r = CsvFileReader::open(&p, declared, &o, &[]).unwrap();
        assert!(
            r.next_batch(&mut BadRecords::new(ErrorPolicy::Fail))
                .unwrap()
                .is_none()
        );
    }
}
