//! Conforming decoded file data to the declared schema.
//!
//! Readers decode a chunk of a file into an "input" batch (all-`Utf8` columns for
//! CSV and JSON, the file's own types for Parquet). A [`Conformer`], built once
//! per file, maps each declared column to an input column by name (or a Hive
//! partition value from the file's path, or all NULLs when the column is
//! missing and nullable), casts whole columns with Arrow's safe cast, and finds
//! the bad rows: a value that was present but did not survive the cast, or a
//! NULL in a NOT NULL column. [`BadRecords`] then applies the source's
//! `error.policy`: `fail` returns the first bad row as
//! [`ConnectorError::BadRecord`], `skip` drops the rows and counts them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, RecordBatch, Scalar, StringArray, UInt32Array, new_null_array,
};
use arrow::compute::kernels::cmp::eq;
use arrow::compute::kernels::zip::zip;
use arrow::compute::{
    CastOptions, can_cast_types, cast_with_options, filter, is_not_null, nullif, take,
};
use arrow::datatypes::{DataType, Fields, SchemaRef};
use arrow::error::ArrowError;
use arrow::util::display::{ArrayFormatter, FormatOptions};

use crate::error::ConnectorError;

/// What a source does with a record that does not fit the declared schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorPolicy {
    /// Stop with an error naming file, line and column (default).
    Fail,
    /// Drop the record, count it in `bad_records`, log it (rate-limited).
    Skip,
}

impl ErrorPolicy {
    /// Accepted values of `error.policy` (`dlq` is in the spec but not built yet).
    pub(crate) const NAMES: &'static [&'static str] = &["fail", "skip"];
}

/// Applies an [`ErrorPolicy`] and counts skipped records.
#[derive(Debug)]
pub(crate) struct BadRecords {
    policy: ErrorPolicy,
    skipped: u64,
}

/// Log the first this many skipped records individually...
const LOG_FIRST: u64 = 10;
/// ...then every this many.
const LOG_EVERY: u64 = 1000;

impl BadRecords {
    pub(crate) fn new(policy: ErrorPolicy) -> Self {
        Self { policy, skipped: 0 }
    }

    /// Records skipped so far.
    pub(crate) fn skipped(&self) -> u64 {
        self.skipped
    }

    /// `fail`: returns `err`. `skip`: counts and (rate-limited) logs it.
    pub(crate) fn handle(&mut self, err: ConnectorError) -> Result<(), ConnectorError> {
        match self.policy {
            ErrorPolicy::Fail => Err(err),
            ErrorPolicy::Skip => {
                self.skipped += 1;
                if self.skipped <= LOG_FIRST || self.skipped.is_multiple_of(LOG_EVERY) {
                    tracing::warn!(skipped_total = self.skipped, "skipping {err}");
                }
                Ok(())
            }
        }
    }
}

/// Where the rows of an input batch came from, for error messages.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Locator<'a> {
    /// Row `i` is on line `first + i`.
    Contiguous(u64),
    /// Row `i` is on line `lines[i]`.
    Lines(&'a [u64]),
    /// Parquet: row `i` is row `first_row + i` of the file; `row_group_ends`
    /// holds the cumulative row count at the end of each row group.
    Parquet {
        first_row: u64,
        row_group_ends: &'a [u64],
    },
}

impl Locator<'_> {
    fn line(&self, row: usize) -> Option<u64> {
        match self {
            Self::Contiguous(first) => Some(first + row as u64),
            Self::Lines(lines) => lines.get(row).copied(),
            Self::Parquet { .. } => None,
        }
    }

    /// A prefix for the reason naming the position when there is no line.
    fn prefix(&self, row: usize) -> String {
        match self {
            Self::Parquet {
                first_row,
                row_group_ends,
            } => {
                let r = first_row + row as u64;
                let group = row_group_ends.partition_point(|end| *end <= r);
                let group_start = if group == 0 {
                    0
                } else {
                    row_group_ends[group - 1]
                };
                format!("row group {group}, row {}: ", r - group_start)
            }
            _ => String::new(),
        }
    }
}

/// How the input columns hold their values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InputKind {
    /// All scalar columns are `Utf8` text (CSV, JSON).
    Text,
    /// Columns have real types (Parquet).
    Typed,
}

#[derive(Debug)]
enum ColumnSource {
    /// Input column index.
    Input(usize),
    /// One-element array in the declared type, repeated for every row.
    Constant(ArrayRef),
    /// Missing nullable column.
    Null,
}

/// Maps one file's columns onto the declared schema. See the module docs.
#[derive(Debug)]
pub(crate) struct Conformer {
    declared: SchemaRef,
    file: PathBuf,
    kind: InputKind,
    null_string: Option<String>,
    sources: Vec<ColumnSource>,
}

/// How to find declared columns among a file's columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Matching {
    /// By name: exact, else ASCII case-insensitive.
    ByName,
    /// The i-th declared column is the i-th file column (CSV without header).
    ByPosition,
}

/// Index of `name` among `fields`: exact match first, then case-insensitive.
pub(crate) fn find_column(fields: &Fields, name: &str) -> Option<usize> {
    fields.iter().position(|f| f.name() == name).or_else(|| {
        fields
            .iter()
            .position(|f| f.name().eq_ignore_ascii_case(name))
    })
}

/// File column indices (ascending, deduplicated) the declared columns need;
/// readers use it for projection.
pub(crate) fn needed_columns(
    declared: &SchemaRef,
    file_fields: &Fields,
    m: Matching,
) -> Vec<usize> {
    let mut idx: Vec<usize> = match m {
        Matching::ByName => declared
            .fields()
            .iter()
            .filter_map(|f| find_column(file_fields, f.name()))
            .collect(),
        Matching::ByPosition => (0..declared.fields().len().min(file_fields.len())).collect(),
    };
    idx.sort_unstable();
    idx.dedup();
    idx
}

impl Conformer {
    /// Builds the mapping for one file. `input_fields` are the columns of the
    /// batches the reader will pass to [`Conformer::conform`] (after projection,
    /// in the order given). `partition_values` are `col=value` pairs from the
    /// file's path (`None` = the NULL partition), used for declared columns the
    /// file does not have.
    ///
    /// Fails with [`ConnectorError::SchemaMismatch`] when a NOT NULL column is
    /// missing or a column's type cannot be cast to the declared type.
    pub(crate) fn new(
        declared: SchemaRef,
        file: &Path,
        input_fields: &Fields,
        kind: InputKind,
        matching: Matching,
        null_string: Option<String>,
        partition_values: &[(String, Option<String>)],
    ) -> Result<Self, ConnectorError> {
        let mut sources = Vec::with_capacity(declared.fields().len());
        for (i, field) in declared.fields().iter().enumerate() {
            let found = match matching {
                Matching::ByName => find_column(input_fields, field.name()),
                Matching::ByPosition => (i < input_fields.len()).then_some(i),
            };
            let source = if let Some(idx) = found {
                let actual = input_fields[idx].data_type();
                if kind == InputKind::Typed && !can_cast_types(actual, field.data_type()) {
                    return Err(ConnectorError::SchemaMismatch {
                        file: file.to_path_buf(),
                        column: field.name().clone(),
                        expected: type_text(field.data_type(), field.is_nullable()),
                        actual: format!("type {actual}"),
                    });
                }
                ColumnSource::Input(idx)
            } else if let Some((_, value)) = partition_values
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(field.name()))
            {
                let text: ArrayRef = Arc::new(StringArray::from(vec![value.as_deref()]));
                ColumnSource::Constant(cast_text(&text, field.data_type())?)
            } else if field.is_nullable() {
                ColumnSource::Null
            } else {
                return Err(ConnectorError::SchemaMismatch {
                    file: file.to_path_buf(),
                    column: field.name().clone(),
                    expected: type_text(field.data_type(), false),
                    actual: "no such column".to_string(),
                });
            };
            sources.push(source);
        }
        Ok(Self {
            declared,
            file: file.to_path_buf(),
            kind,
            null_string: null_string.filter(|s| !s.is_empty()),
            sources,
        })
    }

    /// Casts `input` into the declared schema, applying the error policy to bad
    /// rows (which are removed from the result under `skip`).
    pub(crate) fn conform(
        &self,
        input: &RecordBatch,
        loc: Locator<'_>,
        bad: &mut BadRecords,
    ) -> Result<RecordBatch, ConnectorError> {
        let n = input.num_rows();
        let mut columns = Vec::with_capacity(self.sources.len());
        // (row, declared column, reason); only filled when something is wrong.
        let mut bad_rows: Vec<(usize, usize, String)> = Vec::new();
        for (fi, (field, source)) in self.declared.fields().iter().zip(&self.sources).enumerate() {
            let to = field.data_type();
            let out = match source {
                ColumnSource::Input(i) => {
                    let mut src = Arc::clone(input.column(*i));
                    if let (Some(ns), DataType::Utf8) = (&self.null_string, src.data_type()) {
                        let mask = eq(&src, &Scalar::new(StringArray::from(vec![ns.as_str()])))?;
                        src = nullif(&src, &mask)?;
                    }
                    let out = match self.kind {
                        InputKind::Text => cast_text(&src, to)?,
                        InputKind::Typed => cast_with_options(&src, to, &SAFE_CAST)?,
                    };
                    if out.null_count() > src.null_count() {
                        // Per-row loop only over a chunk known to hold a failed
                        // cast: we need each bad row's value for the message.
                        let fmt = ArrayFormatter::try_new(src.as_ref(), &FormatOptions::default())?;
                        for row in 0..n {
                            if src.is_valid(row) && out.is_null(row) {
                                let value = truncate(&fmt.value(row).to_string());
                                let reason = match self.kind {
                                    InputKind::Text => format!("cannot cast '{value}' to {to}"),
                                    InputKind::Typed => format!(
                                        "{}cannot cast {value} ({}) to {to}",
                                        loc.prefix(row),
                                        src.data_type()
                                    ),
                                };
                                bad_rows.push((row, fi, reason));
                            }
                        }
                    }
                    out
                }
                ColumnSource::Constant(value) => {
                    take(value.as_ref(), &UInt32Array::from(vec![0; n]), None)?
                }
                ColumnSource::Null => new_null_array(to, n),
            };
            if !field.is_nullable() && out.null_count() > 0 {
                for row in 0..n {
                    let already = bad_rows.iter().any(|(r, f, _)| *r == row && *f == fi);
                    if out.is_null(row) && !already {
                        let reason = format!(
                            "{}NULL or missing value for NOT NULL column",
                            loc.prefix(row)
                        );
                        bad_rows.push((row, fi, reason));
                    }
                }
            }
            columns.push(out);
        }
        if bad_rows.is_empty() {
            return Ok(RecordBatch::try_new(Arc::clone(&self.declared), columns)?);
        }
        bad_rows.sort_by_key(|(row, fi, _)| (*row, *fi));
        let mut keep = vec![true; n];
        let mut last_row = None;
        for (row, fi, reason) in bad_rows {
            if last_row == Some(row) {
                continue; // one report per bad row
            }
            last_row = Some(row);
            keep[row] = false;
            bad.handle(ConnectorError::BadRecord {
                file: self.file.clone(),
                line: loc.line(row),
                column: Some(self.declared.field(fi).name().clone()),
                reason,
            })?;
        }
        let mask = BooleanArray::from(keep);
        let columns = columns
            .iter()
            .map(|c| filter(c.as_ref(), &mask))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RecordBatch::try_new(Arc::clone(&self.declared), columns)?)
    }
}

const SAFE_CAST: CastOptions<'static> = CastOptions {
    safe: true,
    format_options: FormatOptions::new(),
};

/// Casts a text column to `to` (values that do not parse become NULL).
/// Timestamps accept `2024-01-01 00:00:00.000`, ISO-8601 (`2024-01-01T00:00:00.123`,
/// with or without an offset) and, as a fallback, an integer count of the
/// column's unit (epoch milliseconds for `TIMESTAMP(3)`).
pub(crate) fn cast_text(arr: &ArrayRef, to: &DataType) -> Result<ArrayRef, ArrowError> {
    if arr.data_type() == to {
        return Ok(Arc::clone(arr));
    }
    let direct = cast_with_options(arr, to, &SAFE_CAST)?;
    if matches!(to, DataType::Timestamp(_, _)) && direct.null_count() > arr.null_count() {
        let ints = cast_with_options(arr, &DataType::Int64, &SAFE_CAST)?;
        let from_ints = cast_with_options(&ints, to, &SAFE_CAST)?;
        let mask = is_not_null(&direct)?;
        return zip(&mask, &direct, &from_ints);
    }
    Ok(direct)
}

/// `Int64 NOT NULL` / `Utf8`.
pub(crate) fn type_text(t: &DataType, nullable: bool) -> String {
    if nullable {
        t.to_string()
    } else {
        format!("{t} NOT NULL")
    }
}

fn truncate(s: &str) -> String {
    const MAX: usize = 100;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(MAX).collect();
        t.push_str("...");
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, TimestampMillisecondArray};
    use arrow::datatypes::{Field, Schema, TimeUnit};

    fn text_batch(cols: &[(&str, Vec<Option<&str>>)]) -> RecordBatch {
        let fields: Vec<Field> = cols
            .iter()
            .map(|(n, _)| Field::new(*n, DataType::Utf8, true))
            .collect();
        let arrays: Vec<ArrayRef> = cols
            .iter()
            .map(|(_, v)| Arc::new(StringArray::from(v.clone())) as ArrayRef)
            .collect();
        RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).unwrap()
    }

    fn declared() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
            Field::new("note", DataType::Utf8, true),
        ]))
    }

    #[test]
    fn casts_by_name_and_fills_missing_nullable() {
        let input = text_batch(&[
            ("extra", vec![Some("x"), Some("y")]),
            (
                "TS",
                vec![
                    Some("2024-01-01 00:00:00.000"),
                    Some("2024-01-01T00:00:01.5"),
                ],
            ),
            ("id", vec![Some("1"), Some("2")]),
        ]);
        let c = Conformer::new(
            declared(),
            Path::new("f.csv"),
            input.schema().fields(),
            InputKind::Text,
            Matching::ByName,
            None,
            &[],
        )
        .unwrap();
        let mut bad = BadRecords::new(ErrorPolicy::Fail);
        let out = c.conform(&input, Locator::Contiguous(2), &mut bad).unwrap();
        assert_eq!(out.schema(), declared());
        let ids = out.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(ids.values(), &[1, 2]);
        let ts = out
            .column(1)
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .unwrap();
        assert_eq!(ts.values(), &[1_704_067_200_000, 1_704_067_201_500]);
        assert_eq!(out.column(2).null_count(), 2);
    }

    #[test]
    fn integer_text_is_accepted_for_timestamps() {
        let arr: ArrayRef = Arc::new(StringArray::from(vec![
            Some("1700000000000"),
            None,
            Some("x"),
        ]));
        let out = cast_text(&arr, &DataType::Timestamp(TimeUnit::Millisecond, None)).unwrap();
        let ts = out
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .unwrap();
        assert_eq!(ts.value(0), 1_700_000_000_000);
        assert!(ts.is_null(1) && ts.is_null(2));
    }

    #[test]
    fn bad_value_fails_with_line_and_column_or_is_skipped() {
        let input = text_batch(&[("id", vec![Some("1"), Some("abc"), None, Some("4")])]);
        let c = Conformer::new(
            declared(),
            Path::new("data/x.csv"),
            input.schema().fields(),
            InputKind::Text,
            Matching::ByName,
            None,
            &[],
        )
        .unwrap();
        let mut fail = BadRecords::new(ErrorPolicy::Fail);
        let err = c
            .conform(&input, Locator::Contiguous(2), &mut fail)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "bad record in data/x.csv line 3, column id: cannot cast 'abc' to Int64"
        );
        let mut skip = BadRecords::new(ErrorPolicy::Skip);
        let out = c
            .conform(&input, Locator::Contiguous(2), &mut skip)
            .unwrap();
        assert_eq!(out.num_rows(), 2);
        assert_eq!(skip.skipped(), 2);
    }

    #[test]
    fn missing_not_null_column_is_a_schema_mismatch() {
        let input = text_batch(&[("ts", vec![Some("1")])]);
        let err = Conformer::new(
            declared(),
            Path::new("f.csv"),
            input.schema().fields(),
            InputKind::Text,
            Matching::ByName,
            None,
            &[],
        )
        .unwrap_err();
        assert!(matches!(err, ConnectorError::SchemaMismatch { ref column, .. } if column == "id"));
        assert!(err.to_string().contains("f.csv"), "{err}");
    }

    #[test]
    fn partition_value_fills_missing_column_and_null_string_is_null() {
        let input = text_batch(&[("note", vec![Some("NULL"), Some("hi")])]);
        let c = Conformer::new(
            declared(),
            Path::new("id=7/f.csv"),
            input.schema().fields(),
            InputKind::Text,
            Matching::ByName,
            Some("NULL".into()),
            &[("id".into(), Some("7".into()))],
        )
        .unwrap();
        let out = c
            .conform(
                &input,
                Locator::Contiguous(2),
                &mut BadRecords::new(ErrorPolicy::Fail),
            )
            .unwrap();
        let ids = out.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(ids.values(), &[7, 7]);
        assert!(out.column(2).is_null(0));
        assert!(out.column(2).is_valid(1));
    }
}
