//! Parquet: reading a file into the declared schema, and writing sink files.
//!
//! Reading pushes the projection down (only the declared columns are decoded)
//! and casts by name with the [`Conformer`]; positions are (row group, row
//! within it). Writing uses `ArrowWriter` with Snappy compression; row groups
//! are cut by the writer's default row limit and at the end of the file.

use std::fs::File;
use std::path::Path;

use ::parquet::arrow::ArrowWriter;
use ::parquet::arrow::ProjectionMask;
use ::parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use ::parquet::basic::Compression;
use ::parquet::file::properties::WriterProperties;
use arrow::array::RecordBatch;
use arrow::datatypes::{Fields, SchemaRef};

use super::conform::{BadRecords, Conformer, InputKind, Locator, Matching, needed_columns};
use crate::error::ConnectorError;

/// The Arrow schema stored in (or derived from) a Parquet file.
pub(crate) fn file_schema(path: &Path) -> Result<SchemaRef, ConnectorError> {
    let file = File::open(path).map_err(|e| ConnectorError::io(path, e))?;
    Ok(ParquetRecordBatchReaderBuilder::try_new(file)?
        .schema()
        .clone())
}

/// Reads one Parquet file.
pub(crate) struct ParquetFileReader {
    reader: ParquetRecordBatchReader,
    conformer: Conformer,
    /// Cumulative row count at the end of each row group.
    row_group_ends: Vec<u64>,
    rows_read: u64,
    file_len: u64,
}

impl ParquetFileReader {
    pub(crate) fn open(
        path: &Path,
        declared: SchemaRef,
        batch_size: usize,
        partition_values: &[(String, Option<String>)],
    ) -> Result<Self, ConnectorError> {
        let file = File::open(path).map_err(|e| ConnectorError::io(path, e))?;
        let file_len = file
            .metadata()
            .map_err(|e| ConnectorError::io(path, e))?
            .len();
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)?;
        let schema = builder.schema().clone();
        let needed = needed_columns(&declared, schema.fields(), Matching::ByName);
        let projected: Fields = needed.iter().map(|i| schema.fields()[*i].clone()).collect();
        let conformer = Conformer::new(
            declared,
            path,
            &projected,
            InputKind::Typed,
            Matching::ByName,
            None,
            partition_values,
        )?;
        let mut end = 0u64;
        let row_group_ends = builder
            .metadata()
            .row_groups()
            .iter()
            .map(|rg| {
                end += rg.num_rows().max(0) as u64;
                end
            })
            .collect();
        let mask = ProjectionMask::roots(builder.parquet_schema(), needed);
        let reader = builder
            .with_projection(mask)
            .with_batch_size(batch_size.max(1))
            .build()?;
        Ok(Self {
            reader,
            conformer,
            row_group_ends,
            rows_read: 0,
            file_len,
        })
    }

    /// (row group, row within it) of the next row to read.
    pub(crate) fn position(&self) -> (usize, u64) {
        let group = self
            .row_group_ends
            .partition_point(|e| *e <= self.rows_read);
        let start = if group == 0 {
            0
        } else {
            self.row_group_ends[group - 1]
        };
        (group, self.rows_read - start)
    }

    /// Rows consumed so far (including skipped ones).
    pub(crate) fn rows(&self) -> u64 {
        self.rows_read
    }

    /// The file's size in bytes.
    pub(crate) fn file_len(&self) -> u64 {
        self.file_len
    }

    /// The next batch conformed to the declared schema; `None` at the end.
    pub(crate) fn next_batch(
        &mut self,
        bad: &mut BadRecords,
    ) -> Result<Option<RecordBatch>, ConnectorError> {
        let Some(batch) = self.reader.next().transpose()? else {
            return Ok(None);
        };
        let loc = Locator::Parquet {
            first_row: self.rows_read,
            row_group_ends: &self.row_group_ends,
        };
        self.rows_read += batch.num_rows() as u64;
        self.conformer.conform(&batch, loc, bad).map(Some)
    }
}

/// Writes one Parquet sink file.
pub(crate) struct ParquetFileWriter {
    writer: ArrowWriter<File>,
}

impl ParquetFileWriter {
    pub(crate) fn new(file: File, schema: SchemaRef) -> Result<Self, ConnectorError> {
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build();
        Ok(Self {
            writer: ArrowWriter::try_new(file, schema, Some(props))?,
        })
    }

    pub(crate) fn write(&mut self, batch: &RecordBatch) -> Result<(), ConnectorError> {
        Ok(self.writer.write(batch)?)
    }

    /// Bytes written plus the estimated encoded size of the buffered row group.
    pub(crate) fn bytes(&self) -> u64 {
        (self.writer.bytes_written() + self.writer.in_progress_size()) as u64
    }

    /// Writes the footer and returns the file (not yet synced).
    pub(crate) fn finish(self) -> Result<File, ConnectorError> {
        Ok(self.writer.into_inner()?)
    }
}
