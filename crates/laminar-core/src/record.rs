//! Typed rows: conversion between Rust structs and Arrow `RecordBatch`es.
//!
//! This sits at both ends of the data path. On the way in, a source handle takes
//! user structs that implement [`Record`] and turns them into one `RecordBatch`
//! per push ([`Record::to_record_batch`]). On the way out, a subscription turns
//! each delivered batch back into user structs that implement [`FromRow`]
//! ([`FromRow::from_batch`]), looking columns up by **name**.
//!
//! Both traits are normally derived with `#[derive(Record)]` and
//! `#[derive(FromRow)]` (crate `laminar-derive`, re-exported by `laminar_db`).
//! The derived code is short: it calls the glue in [`__private`], which is
//! built on two small public traits:
//!
//! - [`RecordValue`]: a scalar Rust type and the Arrow type it maps to, which
//!   column types it can be read from, how to build and read arrays.
//! - [`RecordField`]: a struct field type, i.e. a [`RecordValue`] `T`
//!   (non-nullable) or `Option<T>` (nullable).
//!
//! # Type mapping
//!
//! | Rust field | Arrow type written | Column types accepted when reading |
//! |------------|--------------------|------------------------------------|
//! | `i8`       | `Int8`             | `Int8` |
//! | `i16`      | `Int16`            | `Int8`, `Int16`, `UInt8` |
//! | `i32`      | `Int32`            | `Int8`..`Int32`, `UInt8`, `UInt16` |
//! | `i64`      | `Int64`            | `Int8`..`Int64`, `UInt8`..`UInt32`, `Timestamp(any unit)` |
//! | `u8`       | `UInt8`            | `UInt8` |
//! | `u16`      | `UInt16`           | `UInt8`, `UInt16` |
//! | `u32`      | `UInt32`           | `UInt8`..`UInt32` |
//! | `u64`      | `UInt64`           | `UInt8`..`UInt64` |
//! | `f32`      | `Float32`          | `Float16`, `Float32` |
//! | `f64`      | `Float64`          | `Float16`, `Float32`, `Float64` |
//! | `bool`     | `Boolean`          | `Boolean` |
//! | `String`   | `Utf8`             | `Utf8`, `LargeUtf8`, `Utf8View` |
//! | `Vec<u8>`  | `Binary`           | `Binary`, `LargeBinary`, `BinaryView`, `FixedSizeBinary` |
//!
//! Reading only ever widens losslessly. In addition every type accepts a
//! dictionary-encoded column whose value type it accepts, and a column of type
//! `Null` (all values NULL).
//!
//! An `i64` field reading a `Timestamp` column gets the **raw stored value in
//! the column's unit** (e.g. nanoseconds for `Timestamp(Nanosecond, _)`), not a
//! value converted to epoch milliseconds. Cast in SQL if you need another unit.
//!
//! `Option<T>` fields are nullable; a NULL read into a non-`Option` field is
//! [`RecordError::UnexpectedNull`] with the row index.
//!
//! # Example
//!
//! ```ignore
//! use laminar_db::record::{FromRow, Record};
//! use laminar_db::{FromRow, Record};
//!
//! #[derive(Record, FromRow)]
//! struct Reading {
//!     sensor: String,
//!     temp: f64,
//!     #[event_time]
//!     ts: i64,
//!     #[nullable]
//!     note: Option<String>,
//!     #[column("sensor_zone")]
//!     zone: u32,
//! }
//!
//! let rows = vec![Reading { sensor: "a".into(), temp: 21.5, ts: 1_000, note: None, zone: 7 }];
//! let batch = Reading::to_record_batch(&rows)?;            // columns sensor, temp, ts, note, sensor_zone
//! assert_eq!(Reading::event_time_column(), Some("ts"));
//! Reading::check_schema(batch.schema().as_ref())?;          // by name; errors name field and types
//! let back: Vec<Reading> = Reading::from_batch(&batch)?;
//! ```

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryArray, BinaryViewArray, BooleanArray, FixedSizeBinaryArray,
    LargeBinaryArray, LargeStringArray, PrimitiveArray, StringArray, StringViewArray,
};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::{
    ArrowPrimitiveType, DataType, Field, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type,
    Int64Type, Schema, SchemaRef, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use arrow::error::ArrowError;
use arrow::record_batch::{RecordBatch, RecordBatchOptions};

/// A Rust type that can be pushed into a source as rows.
///
/// Usually derived with `#[derive(Record)]`. Contract: [`Record::schema`] always
/// returns the same schema, and [`Record::to_record_batch`] returns a batch with
/// exactly that schema and one row per input element, in order.
pub trait Record: Sized + Send + 'static {
    /// Arrow schema: one field per struct field, same names, in declaration order.
    fn schema() -> SchemaRef;

    /// Column-wise conversion of a slice of rows into one `RecordBatch` with `schema()`.
    fn to_record_batch(rows: &[Self]) -> Result<RecordBatch, ArrowError>;

    /// Name of the field marked `#[event_time]`, if any.
    fn event_time_column() -> Option<&'static str> {
        None
    }
}

/// A Rust type that subscription rows convert into, mapped by column NAME (not position).
///
/// Usually derived with `#[derive(FromRow)]`. Columns of the batch that no field
/// maps to are ignored; the column order does not matter.
pub trait FromRow: Sized + Send + 'static {
    /// Checks that every field of `Self` exists in `schema` by name with a
    /// convertible type; the error names the field, the expected and the actual
    /// type (and lists available columns when a name is missing).
    fn check_schema(schema: &Schema) -> Result<(), RecordError>;

    /// Converts every row of the batch (columns looked up by name).
    ///
    /// Performs the same checks as [`FromRow::check_schema`], plus
    /// [`RecordError::UnexpectedNull`] when a NULL meets a non-`Option` field.
    fn from_batch(batch: &RecordBatch) -> Result<Vec<Self>, RecordError>;
}

/// Why a batch or schema does not fit a [`FromRow`] type.
///
/// `field` is the column name the struct field maps to: the Rust field name,
/// or the name given with `#[column("...")]`.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// No column has the field's name.
    #[error("no column named `{field}`; available columns: [{}]", available.join(", "))]
    MissingColumn {
        /// Column name the field maps to.
        field: String,
        /// Names of all columns of the schema, in order.
        available: Vec<String>,
    },
    /// The column exists but its type cannot be read into the field's type.
    #[error("column `{field}` has type {actual}, but the field expects {expected}")]
    TypeMismatch {
        /// Column name the field maps to.
        field: String,
        /// Arrow type(s) the field accepts.
        expected: String,
        /// Arrow type of the column.
        actual: String,
    },
    /// A NULL value met a field that is not an `Option`.
    #[error("column `{field}` is NULL at row {row}, but the field is not an Option")]
    UnexpectedNull {
        /// Column name the field maps to.
        field: String,
        /// Row index within the batch.
        row: usize,
    },
    /// Arrow failed while converting a column.
    #[error("arrow conversion failed")]
    Arrow(#[from] ArrowError),
}

/// A scalar Rust type with a fixed Arrow representation.
///
/// Implemented for `i8`, `i16`, `i32`, `i64`, `u8`, `u16`, `u32`, `u64`, `f32`,
/// `f64`, `bool`, `String` and `Vec<u8>`; see the [module docs](self) for the
/// mapping.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a supported LaminarDB record value type",
    note = "supported: i8, i16, i32, i64, u8, u16, u32, u64, f32, f64, bool, String, Vec<u8>"
)]
pub trait RecordValue: Sized + Send + 'static {
    /// Arrow type written by [`RecordValue::build_array`].
    fn data_type() -> DataType;

    /// Whether a column of type `data_type` can be read into `Self` without loss.
    /// Dictionary and `Null` columns are handled by the caller, not here.
    fn accepts(data_type: &DataType) -> bool;

    /// Human-readable description of the accepted column types, for errors.
    fn expected() -> String;

    /// Builds an array of [`RecordValue::data_type`]; `None` becomes NULL.
    fn build_array<'a>(values: impl Iterator<Item = Option<&'a Self>>) -> ArrayRef;

    /// Reads every value of `array`, whose type must satisfy
    /// [`RecordValue::accepts`] (or be a dictionary of such, or `Null`).
    fn read_array(array: &dyn Array) -> Result<Vec<Option<Self>>, ArrowError>;
}

/// The type of a struct field in a [`Record`] or [`FromRow`] type: a
/// [`RecordValue`] `T` (non-nullable column) or `Option<T>` (nullable column).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a supported LaminarDB record field type",
    note = "supported: i8, i16, i32, i64, u8, u16, u32, u64, f32, f64, bool, String, Vec<u8>, \
            and Option<T> of each"
)]
pub trait RecordField: Sized + Send + 'static {
    /// The scalar type stored in the column.
    type Value: RecordValue;

    /// Whether the column is nullable (the field is an `Option`).
    const NULLABLE: bool;

    /// The value to write, `None` for NULL.
    fn value(&self) -> Option<&Self::Value>;

    /// The field for a read value; `None` when a NULL cannot be represented.
    fn from_value(value: Option<Self::Value>) -> Option<Self>;
}

/// Widening cast to the canonical type. `safe: false` so a cast failure is an
/// error, never a silent NULL (only lossless casts are attempted anyway).
fn cast_to(array: &dyn Array, target: &DataType) -> Result<ArrayRef, ArrowError> {
    let options = CastOptions {
        safe: false,
        ..CastOptions::default()
    };
    cast_with_options(array, target, &options)
}

/// Downcasts after the data type has been checked (or produced by a cast).
fn downcast<A: Array + 'static>(array: &dyn Array) -> Result<&A, ArrowError> {
    array.as_any().downcast_ref::<A>().ok_or_else(|| {
        ArrowError::InvalidArgumentError(format!(
            "internal error: array of type {} is not a {}; this is a bug in laminar-core, \
             please report it",
            array.data_type(),
            std::any::type_name::<A>()
        ))
    })
}

fn read_primitive<P: ArrowPrimitiveType>(
    array: &dyn Array,
) -> Result<Vec<Option<P::Native>>, ArrowError> {
    if array.data_type() == &P::DATA_TYPE {
        return Ok(downcast::<PrimitiveArray<P>>(array)?.iter().collect());
    }
    let cast = cast_to(array, &P::DATA_TYPE)?;
    Ok(downcast::<PrimitiveArray<P>>(cast.as_ref())?
        .iter()
        .collect())
}

macro_rules! primitive_value {
    ($rust:ty, $arrow:ty, $expected:literal, $accepts:pat) => {
        impl RecordValue for $rust {
            fn data_type() -> DataType {
                <$arrow as ArrowPrimitiveType>::DATA_TYPE
            }

            fn accepts(data_type: &DataType) -> bool {
                matches!(data_type, $accepts)
            }

            fn expected() -> String {
                $expected.to_owned()
            }

            fn build_array<'a>(values: impl Iterator<Item = Option<&'a Self>>) -> ArrayRef {
                Arc::new(
                    values
                        .map(|v| v.copied())
                        .collect::<PrimitiveArray<$arrow>>(),
                )
            }

            fn read_array(array: &dyn Array) -> Result<Vec<Option<Self>>, ArrowError> {
                read_primitive::<$arrow>(array)
            }
        }
    };
}

primitive_value!(i8, Int8Type, "Int8", DataType::Int8);
primitive_value!(
    i16,
    Int16Type,
    "Int16 (or Int8, UInt8)",
    DataType::Int8 | DataType::Int16 | DataType::UInt8
);
primitive_value!(
    i32,
    Int32Type,
    "Int32 (or Int8, Int16, UInt8, UInt16)",
    DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::UInt8 | DataType::UInt16
);
primitive_value!(
    i64,
    Int64Type,
    "Int64 (or Int8, Int16, Int32, UInt8, UInt16, UInt32, Timestamp as raw value)",
    DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::Timestamp(_, _)
);
primitive_value!(u8, UInt8Type, "UInt8", DataType::UInt8);
primitive_value!(
    u16,
    UInt16Type,
    "UInt16 (or UInt8)",
    DataType::UInt8 | DataType::UInt16
);
primitive_value!(
    u32,
    UInt32Type,
    "UInt32 (or UInt8, UInt16)",
    DataType::UInt8 | DataType::UInt16 | DataType::UInt32
);
primitive_value!(
    u64,
    UInt64Type,
    "UInt64 (or UInt8, UInt16, UInt32)",
    DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64
);
primitive_value!(
    f32,
    Float32Type,
    "Float32 (or Float16)",
    DataType::Float16 | DataType::Float32
);
primitive_value!(
    f64,
    Float64Type,
    "Float64 (or Float16, Float32)",
    DataType::Float16 | DataType::Float32 | DataType::Float64
);

impl RecordValue for bool {
    fn data_type() -> DataType {
        DataType::Boolean
    }

    fn accepts(data_type: &DataType) -> bool {
        matches!(data_type, DataType::Boolean)
    }

    fn expected() -> String {
        "Boolean".to_owned()
    }

    fn build_array<'a>(values: impl Iterator<Item = Option<&'a Self>>) -> ArrayRef {
        Arc::new(values.map(|v| v.copied()).collect::<BooleanArray>())
    }

    fn read_array(array: &dyn Array) -> Result<Vec<Option<Self>>, ArrowError> {
        if array.data_type() == &DataType::Boolean {
            return Ok(downcast::<BooleanArray>(array)?.iter().collect());
        }
        let cast = cast_to(array, &DataType::Boolean)?;
        Ok(downcast::<BooleanArray>(cast.as_ref())?.iter().collect())
    }
}

impl RecordValue for String {
    fn data_type() -> DataType {
        DataType::Utf8
    }

    fn accepts(data_type: &DataType) -> bool {
        matches!(
            data_type,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
        )
    }

    fn expected() -> String {
        "Utf8 (or LargeUtf8, Utf8View)".to_owned()
    }

    fn build_array<'a>(values: impl Iterator<Item = Option<&'a Self>>) -> ArrayRef {
        Arc::new(
            values
                .map(|v| v.map(String::as_str))
                .collect::<StringArray>(),
        )
    }

    fn read_array(array: &dyn Array) -> Result<Vec<Option<Self>>, ArrowError> {
        fn owned(v: Option<&str>) -> Option<String> {
            v.map(str::to_owned)
        }
        match array.data_type() {
            DataType::Utf8 => Ok(downcast::<StringArray>(array)?.iter().map(owned).collect()),
            DataType::LargeUtf8 => Ok(downcast::<LargeStringArray>(array)?
                .iter()
                .map(owned)
                .collect()),
            DataType::Utf8View => Ok(downcast::<StringViewArray>(array)?
                .iter()
                .map(owned)
                .collect()),
            _ => {
                let cast = cast_to(array, &DataType::Utf8)?;
                Ok(downcast::<StringArray>(cast.as_ref())?
                    .iter()
                    .map(owned)
                    .collect())
            }
        }
    }
}

impl RecordValue for Vec<u8> {
    fn data_type() -> DataType {
        DataType::Binary
    }

    fn accepts(data_type: &DataType) -> bool {
        matches!(
            data_type,
            DataType::Binary
                | DataType::LargeBinary
                | DataType::BinaryView
                | DataType::FixedSizeBinary(_)
        )
    }

    fn expected() -> String {
        "Binary (or LargeBinary, BinaryView, FixedSizeBinary)".to_owned()
    }

    fn build_array<'a>(values: impl Iterator<Item = Option<&'a Self>>) -> ArrayRef {
        Arc::new(
            values
                .map(|v| v.map(Vec::as_slice))
                .collect::<BinaryArray>(),
        )
    }

    fn read_array(array: &dyn Array) -> Result<Vec<Option<Self>>, ArrowError> {
        fn owned(v: Option<&[u8]>) -> Option<Vec<u8>> {
            v.map(<[u8]>::to_vec)
        }
        match array.data_type() {
            DataType::Binary => Ok(downcast::<BinaryArray>(array)?.iter().map(owned).collect()),
            DataType::LargeBinary => Ok(downcast::<LargeBinaryArray>(array)?
                .iter()
                .map(owned)
                .collect()),
            DataType::BinaryView => Ok(downcast::<BinaryViewArray>(array)?
                .iter()
                .map(owned)
                .collect()),
            DataType::FixedSizeBinary(_) => Ok(downcast::<FixedSizeBinaryArray>(array)?
                .iter()
                .map(owned)
                .collect()),
            _ => {
                let cast = cast_to(array, &DataType::Binary)?;
                Ok(downcast::<BinaryArray>(cast.as_ref())?
                    .iter()
                    .map(owned)
                    .collect())
            }
        }
    }
}

macro_rules! record_field {
    ($($rust:ty),* $(,)?) => {
        $(
            impl RecordField for $rust {
                type Value = $rust;
                const NULLABLE: bool = false;

                fn value(&self) -> Option<&Self::Value> {
                    Some(self)
                }

                fn from_value(value: Option<Self::Value>) -> Option<Self> {
                    value
                }
            }

            impl RecordField for Option<$rust> {
                type Value = $rust;
                const NULLABLE: bool = true;

                fn value(&self) -> Option<&Self::Value> {
                    self.as_ref()
                }

                fn from_value(value: Option<Self::Value>) -> Option<Self> {
                    Some(value)
                }
            }
        )*
    };
}

record_field!(
    i8,
    i16,
    i32,
    i64,
    u8,
    u16,
    u32,
    u64,
    f32,
    f64,
    bool,
    String,
    Vec<u8>
);

/// Whether a column of `data_type` can be read into a field of type `T`.
///
/// Besides [`RecordValue::accepts`], a dictionary whose value type is accepted
/// and a `Null` column are accepted.
pub fn accepts_column<T: RecordField>(data_type: &DataType) -> bool {
    match data_type {
        DataType::Null => true,
        DataType::Dictionary(_, value) => T::Value::accepts(value),
        other => T::Value::accepts(other),
    }
}

/// Glue called by the code that `#[derive(Record)]` and `#[derive(FromRow)]`
/// generate. Not a stable API.
#[doc(hidden)]
pub mod __private {
    use super::{
        Array, ArrayRef, ArrowError, Field, RecordBatch, RecordBatchOptions, RecordError,
        RecordField, RecordValue, Schema, SchemaRef, accepts_column,
    };
    use std::sync::Arc;

    /// The schema field for a struct field of type `T` stored in column `name`.
    pub fn field<T: RecordField>(name: &str) -> Field {
        Field::new(name, T::Value::data_type(), T::NULLABLE)
    }

    /// A schema from the fields in declaration order.
    pub fn schema(fields: Vec<Field>) -> SchemaRef {
        Arc::new(Schema::new(fields))
    }

    /// Builds one column from one struct field of every row.
    // Per-row loop: the input is a slice of Rust structs, so gathering one
    // field of each is inherently row by row; everything after is columnar.
    pub fn column<R, T: RecordField>(rows: &[R], get: impl Fn(&R) -> &T) -> ArrayRef {
        T::Value::build_array(rows.iter().map(|row| get(row).value()))
    }

    /// Assembles the batch; the row count is explicit so it is right for any
    /// number of columns.
    pub fn record_batch(
        schema: SchemaRef,
        columns: Vec<ArrayRef>,
        rows: usize,
    ) -> Result<RecordBatch, ArrowError> {
        let options = RecordBatchOptions::new().with_row_count(Some(rows));
        RecordBatch::try_new_with_options(schema, columns, &options)
    }

    fn lookup<'s, T: RecordField>(
        schema: &'s Schema,
        column: &str,
    ) -> Result<(usize, &'s Field), RecordError> {
        let Some((index, field)) = schema.column_with_name(column) else {
            return Err(RecordError::MissingColumn {
                field: column.to_owned(),
                available: schema.fields().iter().map(|f| f.name().clone()).collect(),
            });
        };
        if !accepts_column::<T>(field.data_type()) {
            return Err(RecordError::TypeMismatch {
                field: column.to_owned(),
                expected: T::Value::expected(),
                actual: field.data_type().to_string(),
            });
        }
        Ok((index, field))
    }

    /// Checks that `column` exists in `schema` with a type readable into `T`.
    pub fn check_column<T: RecordField>(schema: &Schema, column: &str) -> Result<(), RecordError> {
        lookup::<T>(schema, column).map(|_| ())
    }

    /// Reads `column` of `batch` (by name) into one `T` per row.
    pub fn read_column<T: RecordField>(
        batch: &RecordBatch,
        column: &str,
    ) -> Result<Vec<T>, RecordError> {
        let (index, _) = lookup::<T>(batch.schema_ref(), column)?;
        let array: &dyn Array = batch.column(index).as_ref();
        T::Value::read_array(array)?
            .into_iter()
            .enumerate()
            .map(|(row, value)| {
                T::from_value(value).ok_or_else(|| RecordError::UnexpectedNull {
                    field: column.to_owned(),
                    row,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::__private::{check_column, read_column};
    use super::*;
    use arrow::array::{
        DictionaryArray, Int32Array, NullArray, StringViewArray, TimestampNanosecondArray,
    };
    use arrow::datatypes::{Int8Type, TimeUnit};

    fn batch(name: &str, array: ArrayRef) -> RecordBatch {
        RecordBatch::try_from_iter([(name, array)]).unwrap()
    }

    #[test]
    fn i64_widens_from_int32_and_reads_raw_timestamps() {
        let b = batch("x", Arc::new(Int32Array::from(vec![Some(1), None])));
        assert_eq!(
            read_column::<Option<i64>>(&b, "x").unwrap(),
            vec![Some(1), None]
        );
        let ts = TimestampNanosecondArray::from(vec![1_500_000_000]).with_timezone("UTC");
        let b = batch("ts", Arc::new(ts));
        assert_eq!(read_column::<i64>(&b, "ts").unwrap(), vec![1_500_000_000]);
    }

    #[test]
    fn narrowing_is_a_type_mismatch() {
        let b = batch("x", Arc::new(Int32Array::from(vec![1])));
        let err = read_column::<i16>(&b, "x").unwrap_err();
        assert!(
            matches!(&err, RecordError::TypeMismatch { field, actual, .. } if field == "x" && actual == "Int32"),
            "{err:?}"
        );
    }

    #[test]
    fn strings_from_views_dictionaries_and_null_columns() {
        let b = batch("s", Arc::new(StringViewArray::from(vec![Some("a"), None])));
        assert_eq!(
            read_column::<Option<String>>(&b, "s").unwrap(),
            vec![Some("a".to_owned()), None]
        );
        let dict: DictionaryArray<Int8Type> = vec!["x", "y", "x"].into_iter().collect();
        let b = batch("s", Arc::new(dict));
        assert_eq!(read_column::<String>(&b, "s").unwrap(), vec!["x", "y", "x"]);
        let b = batch("n", Arc::new(NullArray::new(2)));
        assert_eq!(
            read_column::<Option<f64>>(&b, "n").unwrap(),
            vec![None, None]
        );
        assert!(matches!(
            read_column::<f64>(&b, "n"),
            Err(RecordError::UnexpectedNull { row: 0, .. })
        ));
    }

    #[test]
    fn binary_from_fixed_size_binary() {
        let fixed = FixedSizeBinaryArray::try_from_iter(vec![vec![1u8, 2], vec![3, 4]].into_iter())
            .unwrap();
        let b = batch("b", Arc::new(fixed));
        assert_eq!(
            read_column::<Vec<u8>>(&b, "b").unwrap(),
            vec![vec![1, 2], vec![3, 4]]
        );
    }

    #[test]
    fn timestamp_is_not_accepted_by_other_integers() {
        let schema = Schema::new(vec![Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        )]);
        assert!(check_column::<i64>(&schema, "ts").is_ok());
        assert!(check_column::<i32>(&schema, "ts").is_err());
        assert!(check_column::<u64>(&schema, "ts").is_err());
    }
}
