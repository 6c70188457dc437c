//! The `STDOUT` sink: prints batches as they arrive.
//!
//! `format = 'table'` (default) prints one aligned table per batch (Arrow's
//! pretty printer); `'json'` prints JSON lines; `'csv'` prints CSV with a header
//! before the first batch. Output is flushed after every batch so it appears
//! as produced, also when stdout is a pipe.

use std::io::Write;

use arrow::array::RecordBatch;
use arrow::util::pretty::pretty_format_batches;

use crate::connector::{SinkCapabilities, SinkConnector, SinkConnectorMetrics};
use crate::error::ConnectorError;
use crate::format::{TIMESTAMP_FORMAT, TIMESTAMP_TZ_FORMAT};
use crate::registry::ConfigKey;

const NAME: &str = "STDOUT";

/// Options of the STDOUT sink.
pub(crate) const CONFIG_KEYS: &[ConfigKey] = &[ConfigKey {
    key: "format",
    required: false,
    default: Some("table"),
    description: "table (aligned columns) | json (JSON lines) | csv",
}];

/// How STDOUT renders batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StdoutFormat {
    /// One aligned table per batch.
    Table,
    /// One JSON object per row.
    Json,
    /// CSV, header before the first batch.
    Csv,
}

impl StdoutFormat {
    /// Accepted names.
    pub const NAMES: &'static [&'static str] = &["table", "json", "csv"];

    /// Parses a format name; `None` means the default, `table`.
    pub(crate) fn parse(name: Option<&str>) -> Result<Self, ConnectorError> {
        let Some(name) = name else {
            return Ok(Self::Table);
        };
        match name.trim().to_ascii_lowercase().as_str() {
            "table" => Ok(Self::Table),
            "json" | "jsonl" | "ndjson" => Ok(Self::Json),
            "csv" => Ok(Self::Csv),
            _ => Err(ConnectorError::InvalidOption {
                connector: NAME.to_string(),
                key: "format".to_string(),
                value: name.to_string(),
                reason: format!("expected one of: {}", Self::NAMES.join(", ")),
            }),
        }
    }
}

/// The STDOUT sink.
pub struct StdoutSink {
    out: Box<dyn Write + Send>,
    format: StdoutFormat,
    header_written: bool,
    metrics: SinkConnectorMetrics,
}

impl StdoutSink {
    /// Prints to the process's standard output.
    pub fn new(format: StdoutFormat) -> Self {
        Self::with_writer(format, Box::new(std::io::stdout()))
    }

    /// Prints to any writer (tests, embedding).
    pub fn with_writer(format: StdoutFormat, out: Box<dyn Write + Send>) -> Self {
        Self {
            out,
            format,
            header_written: false,
            metrics: SinkConnectorMetrics::default(),
        }
    }

    fn render(&mut self, batch: &RecordBatch) -> Result<Vec<u8>, ConnectorError> {
        let mut buf = Vec::new();
        match self.format {
            StdoutFormat::Table => {
                let table = pretty_format_batches(std::slice::from_ref(batch))?;
                buf.extend_from_slice(table.to_string().as_bytes());
                buf.push(b'\n');
            }
            StdoutFormat::Json => {
                let mut w = arrow::json::WriterBuilder::new()
                    .with_explicit_nulls(true)
                    .with_timestamp_format(TIMESTAMP_FORMAT.to_string())
                    .with_timestamp_tz_format(TIMESTAMP_TZ_FORMAT.to_string())
                    .build::<_, arrow::json::writer::LineDelimited>(&mut buf);
                w.write(batch)?;
                w.finish()?;
            }
            StdoutFormat::Csv => {
                let mut w = arrow::csv::WriterBuilder::new()
                    .with_header(!self.header_written)
                    .with_timestamp_format(TIMESTAMP_FORMAT.to_string())
                    .with_timestamp_tz_format(TIMESTAMP_TZ_FORMAT.to_string())
                    .build(&mut buf);
                w.write(batch)?;
                self.header_written = true;
            }
        }
        Ok(buf)
    }
}

impl SinkConnector for StdoutSink {
    fn capabilities(&self) -> SinkCapabilities {
        SinkCapabilities::default()
    }

    fn write_batch(&mut self, batch: &RecordBatch) -> Result<(), ConnectorError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let bytes = self
            .render(batch)
            .inspect_err(|_| self.metrics.errors += 1)?;
        self.out
            .write_all(&bytes)
            .and_then(|()| self.out.flush())
            .map_err(|e| {
                self.metrics.errors += 1;
                ConnectorError::io("<stdout>", e)
            })?;
        self.metrics.records_written += batch.num_rows() as u64;
        self.metrics.bytes_written += bytes.len() as u64;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), ConnectorError> {
        self.out
            .flush()
            .map_err(|e| ConnectorError::io("<stdout>", e))
    }

    fn close(&mut self) -> Result<(), ConnectorError> {
        self.flush()
    }

    fn metrics(&self) -> SinkConnectorMetrics {
        self.metrics
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Int64Array, StringArray};
    use std::sync::{Arc, Mutex};

    /// A writer tests can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn batch() -> RecordBatch {
        let a: ArrayRef = Arc::new(Int64Array::from(vec![1, 22]));
        let b: ArrayRef = Arc::new(StringArray::from(vec![Some("x"), None]));
        RecordBatch::try_from_iter([("a", a), ("b", b)]).unwrap()
    }

    fn output(format: StdoutFormat, batches: usize) -> String {
        let shared = Shared::default();
        let mut s = StdoutSink::with_writer(format, Box::new(shared.clone()));
        for _ in 0..batches {
            s.write_batch(&batch()).unwrap();
        }
        s.close().unwrap();
        assert_eq!(s.metrics().records_written, 2 * batches as u64);
        String::from_utf8(shared.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn table_json_and_csv() {
        assert_eq!(
            output(StdoutFormat::Table, 1),
            "+----+---+\n| a  | b |\n+----+---+\n| 1  | x |\n| 22 |   |\n+----+---+\n"
        );
        assert_eq!(
            output(StdoutFormat::Json, 1),
            "{\"a\":1,\"b\":\"x\"}\n{\"a\":22,\"b\":null}\n"
        );
        assert_eq!(output(StdoutFormat::Csv, 2), "a,b\n1,x\n22,\n1,x\n22,\n");
    }

    #[test]
    fn unknown_format_lists_valid_ones() {
        let e = StdoutFormat::parse(Some("xml")).err().unwrap().to_string();
        assert!(e.contains("table, json, csv"), "{e}");
    }
}
