//! Printing results on stdout: aligned tables on a terminal, CSV or JSON lines otherwise
//! (`--format`). [`RowPrinter`] prints the rows of one result as they arrive with a single
//! header: a live table keeps the column widths of its first rows (widening a column when a
//! longer value comes), so a trickle of batches reads as one growing table.

use std::io::{self, IsTerminal, Write};

use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use laminar_db::{ExecuteResult, QueryHandle};

use crate::args::OutputFormat;

/// A resolved output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// Aligned tables (arrow pretty printing).
    Table,
    /// CSV with one header line.
    Csv,
    /// JSON lines.
    Json,
}

impl Format {
    /// Resolves `auto` for stdout.
    pub(crate) fn for_stdout(requested: OutputFormat) -> Format {
        match requested {
            OutputFormat::Auto if io::stdout().is_terminal() => Format::Table,
            OutputFormat::Auto | OutputFormat::Csv => Format::Csv,
            OutputFormat::Table => Format::Table,
            OutputFormat::Json => Format::Json,
        }
    }
}

/// Prints the batches of one result set.
#[derive(Debug)]
pub(crate) struct RowPrinter {
    format: Format,
    header_written: bool,
    rows: u64,
    /// Column widths of the live table.
    widths: Vec<usize>,
}

impl RowPrinter {
    /// A printer for one result.
    pub(crate) fn new(format: Format) -> Self {
        RowPrinter {
            format,
            header_written: false,
            rows: 0,
            widths: Vec::new(),
        }
    }

    /// The format in use.
    pub(crate) fn format(&self) -> Format {
        self.format
    }

    /// Rows printed so far.
    pub(crate) fn rows(&self) -> u64 {
        self.rows
    }

    /// Writes the rows of `batches` (the header only before the first rows) and flushes.
    pub(crate) fn print(
        &mut self,
        out: &mut impl Write,
        batches: &[RecordBatch],
    ) -> io::Result<()> {
        let batches: Vec<&RecordBatch> = batches.iter().filter(|b| b.num_rows() > 0).collect();
        if batches.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        match self.format {
            Format::Table => self.table_rows(&mut buf, &batches)?,
            Format::Csv => {
                let mut writer = arrow::csv::WriterBuilder::new()
                    .with_header(!self.header_written)
                    .build(&mut buf);
                for b in &batches {
                    writer.write(b).map_err(io::Error::other)?;
                }
            }
            Format::Json => {
                let mut writer = arrow::json::LineDelimitedWriter::new(&mut buf);
                for b in &batches {
                    writer.write(b).map_err(io::Error::other)?;
                }
                writer.finish().map_err(io::Error::other)?;
            }
        }
        self.header_written = true;
        self.rows += batches.iter().map(|b| b.num_rows() as u64).sum::<u64>();
        out.write_all(&buf)?;
        out.flush()
    }

    /// Ends the result: the bottom border of a live table.
    pub(crate) fn finish(&mut self, out: &mut impl Write) -> io::Result<()> {
        if self.format == Format::Table && self.header_written {
            writeln!(out, "{}", border(&self.widths))?;
            out.flush()?;
        }
        Ok(())
    }

    /// Rows of a live table; the first call also sizes the columns and prints the header.
    fn table_rows(&mut self, buf: &mut Vec<u8>, batches: &[&RecordBatch]) -> io::Result<()> {
        let mut rows: Vec<Vec<String>> = Vec::new();
        for batch in batches {
            let options = FormatOptions::default();
            let formatters = batch
                .columns()
                .iter()
                .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
                .collect::<Result<Vec<_>, _>>()
                .map_err(io::Error::other)?;
            for row in 0..batch.num_rows() {
                rows.push(
                    formatters
                        .iter()
                        .map(|f| f.value(row).to_string())
                        .collect(),
                );
            }
        }
        if !self.header_written {
            let names: Vec<String> = batches[0]
                .schema_ref()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect();
            self.widths = names.iter().map(|n| n.chars().count()).collect();
            for row in &rows {
                for (w, cell) in self.widths.iter_mut().zip(row) {
                    *w = (*w).max(cell.chars().count());
                }
            }
            writeln!(buf, "{}", border(&self.widths))?;
            writeln!(buf, "{}", line(&self.widths, &names))?;
            writeln!(buf, "{}", border(&self.widths))?;
        }
        for row in &rows {
            for (w, cell) in self.widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
            writeln!(buf, "{}", line(&self.widths, row))?;
        }
        Ok(())
    }
}

/// `+-----+----+`
fn border(widths: &[usize]) -> String {
    let mut s = String::from("+");
    for w in widths {
        s.push_str(&"-".repeat(w + 2));
        s.push('+');
    }
    s
}

/// `| a   | b  |`
fn line(widths: &[usize], cells: &[String]) -> String {
    let mut s = String::from("|");
    for (w, cell) in widths.iter().zip(cells) {
        s.push_str(&format!(" {cell:<w$} |"));
    }
    s
}

/// Prints a complete result (SHOW, DESCRIBE, EXPLAIN): a table (with a row count), CSV with
/// a header even when empty, or JSON lines.
pub(crate) fn print_result(
    out: &mut impl Write,
    format: Format,
    batch: &RecordBatch,
) -> io::Result<()> {
    match format {
        Format::Table => {
            let table = arrow::util::pretty::pretty_format_batches(std::slice::from_ref(batch))
                .map_err(io::Error::other)?;
            let n = batch.num_rows();
            writeln!(out, "{table}\n({n} row{})", if n == 1 { "" } else { "s" })?;
        }
        Format::Csv if batch.num_rows() == 0 => {
            let names: Vec<&str> = batch
                .schema_ref()
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect();
            writeln!(out, "{}", names.join(","))?;
        }
        Format::Csv | Format::Json => {
            RowPrinter::new(format).print(out, std::slice::from_ref(batch))?;
        }
    }
    out.flush()
}

/// Prints what a statement did: the object a DDL statement created or dropped (`CREATE
/// SOURCE readings`), `n rows` for an INSERT, or the result table. A continuous query is
/// returned for the caller to tail.
pub(crate) fn print_execute_result(
    out: &mut impl Write,
    format: Format,
    result: ExecuteResult,
) -> io::Result<Option<QueryHandle>> {
    match result {
        ExecuteResult::Ddl(info) => {
            writeln!(out, "{} {}", info.statement_type, info.object_name)?;
        }
        ExecuteResult::RowsAffected(n) => {
            writeln!(out, "{n} row{}", if n == 1 { "" } else { "s" })?;
        }
        ExecuteResult::Metadata(batch) => print_result(out, format, &batch)?,
        ExecuteResult::Query(handle) => return Ok(Some(handle)),
    }
    out.flush()?;
    Ok(None)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn batch(ids: &[i64], names: &[&str]) -> RecordBatch {
        let schema = Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(Int64Array::from(ids.to_vec())),
                Arc::new(StringArray::from(names.to_vec())),
            ],
        )
        .unwrap()
    }

    fn printed(format: Format, batches: &[&[RecordBatch]]) -> String {
        let mut p = RowPrinter::new(format);
        let mut out = Vec::new();
        for b in batches {
            p.print(&mut out, b).unwrap();
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn csv_header_once_across_calls() {
        let s = printed(
            Format::Csv,
            &[
                &[batch(&[1], &["a"])],
                &[batch(&[], &[])],
                &[batch(&[2], &["b"])],
            ],
        );
        assert_eq!(s, "id,name\n1,a\n2,b\n");
    }

    #[test]
    fn live_table_has_one_header() {
        let mut p = RowPrinter::new(Format::Table);
        let mut out = Vec::new();
        p.print(&mut out, &[batch(&[1], &["a"])]).unwrap();
        p.print(&mut out, &[batch(&[22], &["bb"]), batch(&[3], &["c"])])
            .unwrap();
        p.finish(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "+----+------+\n\
             | id | name |\n\
             +----+------+\n\
             | 1  | a    |\n\
             | 22 | bb   |\n\
             | 3  | c    |\n\
             +----+------+\n"
        );
        assert_eq!(p.rows(), 3);
    }

    #[test]
    fn json_lines() {
        let s = printed(Format::Json, &[&[batch(&[1, 2], &["a", "b"])]]);
        assert_eq!(s, "{\"id\":1,\"name\":\"a\"}\n{\"id\":2,\"name\":\"b\"}\n");
    }

    #[test]
    fn table_with_row_count() {
        let mut out = Vec::new();
        print_result(&mut out, Format::Table, &batch(&[7], &["readings"])).unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(s.contains("| 7  | readings |"), "{s}");
        assert!(s.ends_with("(1 row)\n"), "{s}");
        let mut out = Vec::new();
        print_result(&mut out, Format::Csv, &batch(&[], &[])).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "id,name\n");
    }
}
