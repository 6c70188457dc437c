//! JSON lines: reading a file into the declared schema, and writing sink files.
//!
//! A chunk of up to `batch_size` non-blank lines is decoded at once by
//! `arrow_json` into a "read schema": the declared columns, with scalar types
//! read as text (numbers and booleans are kept as their JSON text) and nested
//! types (struct, list, map) decoded directly. The [`Conformer`] then casts the
//! text columns exactly as for CSV, so both formats accept the same values.
//! Keys not in the declared schema are ignored; a missing key is NULL.
//!
//! When a chunk fails to decode (malformed JSON, a line holding anything but
//! one object), it is decoded again line by line to find the bad lines, which
//! go through the error policy with their 1-based line numbers.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::json::reader::{Decoder, infer_json_schema};
use arrow::json::writer::LineDelimited;
use arrow::json::{ReaderBuilder, WriterBuilder};

use super::conform::{BadRecords, Conformer, InputKind, Locator, Matching};
use super::{CountingWriter, TIMESTAMP_FORMAT, TIMESTAMP_TZ_FORMAT};
use crate::error::ConnectorError;

/// Infers a schema from the first lines of a JSON-lines file.
pub(crate) fn infer_schema(path: &Path) -> Result<Schema, ConnectorError> {
    let file = File::open(path).map_err(|e| ConnectorError::io(path, e))?;
    Ok(infer_json_schema(BufReader::new(file), Some(1000))?.0)
}

fn is_nested(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Struct(_)
            | DataType::List(_)
            | DataType::LargeList(_)
            | DataType::FixedSizeList(_, _)
            | DataType::ListView(_)
            | DataType::LargeListView(_)
            | DataType::Map(_, _)
    )
}

/// Reads one JSON-lines file in chunks.
pub(crate) struct JsonFileReader {
    path: PathBuf,
    reader: BufReader<File>,
    read_schema: SchemaRef,
    decoder: Decoder,
    conformer: Conformer,
    batch_size: usize,
    /// Bytes consumed (always at a line boundary between chunks).
    offset: u64,
    /// Lines consumed.
    line: u64,
    done: bool,
    chunk: Vec<u8>,
}

impl JsonFileReader {
    /// Opens `path`; `partition_values` fill declared columns from the path
    /// (such columns are not read from the JSON).
    pub(crate) fn open(
        path: &Path,
        declared: SchemaRef,
        batch_size: usize,
        partition_values: &[(String, Option<String>)],
    ) -> Result<Self, ConnectorError> {
        let read_fields: Fields = declared
            .fields()
            .iter()
            .filter(|f| {
                !partition_values
                    .iter()
                    .any(|(k, _)| k.eq_ignore_ascii_case(f.name()))
            })
            .map(|f| {
                let t = if is_nested(f.data_type()) {
                    f.data_type().clone()
                } else {
                    DataType::Utf8
                };
                Arc::new(Field::new(f.name(), t, true))
            })
            .collect();
        let read_schema = Arc::new(Schema::new(read_fields));
        let conformer = Conformer::new(
            declared,
            path,
            read_schema.fields(),
            InputKind::Text,
            Matching::ByName,
            None,
            partition_values,
        )?;
        let file = File::open(path).map_err(|e| ConnectorError::io(path, e))?;
        let decoder = build_decoder(&read_schema, batch_size)?;
        Ok(Self {
            path: path.to_path_buf(),
            reader: BufReader::with_capacity(1 << 20, file),
            read_schema,
            decoder,
            conformer,
            batch_size: batch_size.max(1),
            offset: 0,
            line: 0,
            done: false,
            chunk: Vec::new(),
        })
    }

    /// Byte offset of the next unread line.
    pub(crate) fn byte_offset(&self) -> u64 {
        self.offset
    }

    /// Lines consumed so far.
    pub(crate) fn lines(&self) -> u64 {
        self.line
    }

    /// Continues at a line boundary taken from `byte_offset()` / `lines()` earlier.
    pub(crate) fn resume_at(&mut self, offset: u64, lines: u64) -> Result<(), ConnectorError> {
        use std::io::Seek;
        self.reader
            .seek(std::io::SeekFrom::Start(offset))
            .map_err(|e| ConnectorError::io(&self.path, e))?;
        self.offset = offset;
        self.line = lines;
        Ok(())
    }

    /// The next chunk conformed to the declared schema (possibly empty when
    /// every record was skipped); `None` at the end of the file.
    pub(crate) fn next_batch(
        &mut self,
        bad: &mut BadRecords,
    ) -> Result<Option<RecordBatch>, ConnectorError> {
        if self.done {
            return Ok(None);
        }
        self.chunk.clear();
        let mut starts = Vec::new();
        let mut lines = Vec::new();
        while lines.len() < self.batch_size {
            let start = self.chunk.len();
            let n = self
                .reader
                .read_until(b'\n', &mut self.chunk)
                .map_err(|e| ConnectorError::io(&self.path, e))?;
            if n == 0 {
                self.done = true;
                break;
            }
            self.offset += n as u64;
            self.line += 1;
            if self.chunk[start..].iter().all(u8::is_ascii_whitespace) {
                self.chunk.truncate(start); // blank line
                continue;
            }
            starts.push(start);
            lines.push(self.line);
        }
        if lines.is_empty() {
            return Ok(None);
        }
        let batch = match decode_all(&mut self.decoder, &self.chunk, lines.len()) {
            Ok(batch) => batch,
            Err(_) => {
                self.decoder = build_decoder(&self.read_schema, self.batch_size)?;
                return self.decode_line_by_line(&starts, lines, bad).map(Some);
            }
        };
        let out = self
            .conformer
            .conform(&batch, Locator::Lines(&lines), bad)?;
        Ok(Some(out))
    }

    fn decode_line_by_line(
        &mut self,
        starts: &[usize],
        lines: Vec<u64>,
        bad: &mut BadRecords,
    ) -> Result<RecordBatch, ConnectorError> {
        let mut good = Vec::with_capacity(self.chunk.len());
        let mut good_lines = Vec::with_capacity(lines.len());
        let mut validator = build_decoder(&self.read_schema, 1)?;
        for (i, line) in lines.iter().enumerate() {
            let end = starts.get(i + 1).copied().unwrap_or(self.chunk.len());
            let text = &self.chunk[starts[i]..end];
            match decode_all(&mut validator, text, 1) {
                Ok(_) => {
                    good.extend_from_slice(text);
                    if !text.ends_with(b"\n") {
                        good.push(b'\n');
                    }
                    good_lines.push(*line);
                }
                Err(e) => {
                    validator = build_decoder(&self.read_schema, 1)?;
                    bad.handle(ConnectorError::BadRecord {
                        file: self.path.clone(),
                        line: Some(*line),
                        column: None,
                        reason: format!("cannot decode JSON line: {e}"),
                    })?;
                }
            }
        }
        let batch = if good_lines.is_empty() {
            RecordBatch::new_empty(Arc::clone(&self.read_schema))
        } else {
            decode_all(&mut self.decoder, &good, good_lines.len())?
        };
        self.conformer
            .conform(&batch, Locator::Lines(&good_lines), bad)
    }
}

fn build_decoder(schema: &SchemaRef, batch_size: usize) -> Result<Decoder, ArrowError> {
    ReaderBuilder::new(Arc::clone(schema))
        .with_batch_size(batch_size.max(1))
        .with_coerce_primitive(true)
        .build_decoder()
}

/// Decodes all of `buf`, which must hold exactly `rows` JSON objects.
fn decode_all(decoder: &mut Decoder, buf: &[u8], rows: usize) -> Result<RecordBatch, ArrowError> {
    let consumed = decoder.decode(buf)?;
    let rest_blank = buf[consumed..].iter().all(u8::is_ascii_whitespace);
    let batch = decoder.flush()?;
    let found = batch.as_ref().map_or(0, RecordBatch::num_rows);
    if !rest_blank || found != rows {
        return Err(ArrowError::JsonError(
            "expected exactly one JSON object per line".to_string(),
        ));
    }
    batch.ok_or_else(|| ArrowError::JsonError("no JSON object".to_string()))
}

/// Writes one JSON-lines sink file: integers as numbers, timestamps as ISO-8601
/// strings, NULLs as explicit `null`.
pub(crate) struct JsonFileWriter {
    writer: arrow::json::Writer<CountingWriter<File>, LineDelimited>,
    bytes: Arc<AtomicU64>,
}

impl JsonFileWriter {
    pub(crate) fn new(file: File) -> Self {
        let out = CountingWriter::new(file);
        let bytes = out.counter();
        let writer = WriterBuilder::new()
            .with_explicit_nulls(true)
            .with_timestamp_format(TIMESTAMP_FORMAT.to_string())
            .with_timestamp_tz_format(TIMESTAMP_TZ_FORMAT.to_string())
            .with_datetime_format(TIMESTAMP_FORMAT.to_string())
            .build::<_, LineDelimited>(out);
        Self { writer, bytes }
    }

    pub(crate) fn write(&mut self, batch: &RecordBatch) -> Result<(), ConnectorError> {
        Ok(self.writer.write(batch)?)
    }

    /// Bytes written to the file so far.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Finishes the stream and returns the file (not yet synced).
    pub(crate) fn finish(mut self) -> Result<File, ConnectorError> {
        self.writer.finish()?;
        Ok(self.writer.into_inner().into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::conform::ErrorPolicy;
    use crate::testing::ids;
    use arrow::array::{Array, ListArray};
    use std::io::Write;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
            Field::new(
                "tags",
                DataType::List(Arc::new(Field::new_list_field(DataType::Int64, true))),
                true,
            ),
        ]))
    }

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("x.json");
        File::create(&p)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        p
    }

    fn read_all(
        path: &Path,
        policy: ErrorPolicy,
    ) -> (Result<Vec<RecordBatch>, ConnectorError>, u64) {
        let mut r = JsonFileReader::open(path, schema(), 2, &[]).unwrap();
        let mut bad = BadRecords::new(policy);
        let mut out = Vec::new();
        loop {
            match r.next_batch(&mut bad) {
                Ok(Some(b)) => out.push(b),
                Ok(None) => return (Ok(out), bad.skipped()),
                Err(e) => return (Err(e), bad.skipped()),
            }
        }
    }

    #[test]
    fn reads_numbers_strings_and_nested() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "{\"id\": 1, \"name\": \"a\", \"tags\": [1,2], \"extra\": {\"x\": 1}}\n\n{\"id\": \"2\"}\n{\"id\":3,\"name\":7}",
        );
        let (batches, _) = read_all(&p, ErrorPolicy::Fail);
        let batches = batches.unwrap();
        assert_eq!(ids(&batches), vec![1, 2, 3]);
        let tags = batches[0]
            .column(2)
            .as_any()
            .downcast_ref::<ListArray>()
            .unwrap();
        assert_eq!(tags.value_length(0), 2);
        assert!(batches[0].column(1).is_null(1));
    }

    #[test]
    fn malformed_line_fails_with_line_number_or_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "{\"id\": 1}\n{\"id\": 2}\n\n{\"id\": 3, oops}\n{\"id\": 4}\n{\"name\": \"no id\"}\n{\"id\": \"x\"}\n{\"id\": 8}\n",
        );
        let (err, _) = read_all(&p, ErrorPolicy::Fail);
        let msg = err.unwrap_err().to_string();
        assert!(msg.contains("x.json line 4"), "{msg}");

        let (batches, skipped) = read_all(&p, ErrorPolicy::Skip);
        assert_eq!(ids(&batches.unwrap()), vec![1, 2, 4, 8]);
        assert_eq!(skipped, 3);
    }

    #[test]
    fn not_null_missing_names_the_column() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "{\"id\": 1}\n{\"name\": \"a\"}\n");
        let (err, _) = read_all(&p, ErrorPolicy::Fail);
        let msg = err.unwrap_err().to_string();
        assert!(msg.contains("line 2, column id"), "{msg}");
    }
}
