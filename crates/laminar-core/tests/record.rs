//! Typed rows: `#[derive(Record)]` and `#[derive(FromRow)]` against laminar-core's
//! `record` module. The alias makes the derives' `::laminar_db::...` paths resolve here.

extern crate laminar_core as laminar_db;

use std::sync::Arc;

use laminar_db::arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Int32Array, Int64Array, LargeStringArray, StringArray,
    TimestampMillisecondArray, UInt32Array,
};
use laminar_db::arrow::datatypes::{DataType, Field, Int64Type, Schema, TimeUnit};
use laminar_db::arrow::record_batch::RecordBatch;
use laminar_db::record::{FromRow, Record, RecordError};
use laminar_derive::{FromRow, Record};

#[derive(Debug, Clone, PartialEq, Record, FromRow)]
struct Reading {
    sensor: String,
    temp: f64,
    #[event_time]
    ts: i64,
    #[nullable]
    note: Option<String>,
    #[column("zone_id")]
    zone: u32,
}

#[derive(Debug, Clone, PartialEq, Record, FromRow)]
struct AllTypes {
    a: i8,
    b: i16,
    c: i32,
    d: i64,
    e: u8,
    f: u16,
    g: u32,
    h: u64,
    i: f32,
    j: f64,
    k: bool,
    l: String,
    m: Vec<u8>,
    oa: Option<i8>,
    ob: Option<i16>,
    oc: Option<i32>,
    od: Option<i64>,
    oe: Option<u8>,
    of: Option<u16>,
    og: Option<u32>,
    oh: Option<u64>,
    oi: Option<f32>,
    oj: Option<f64>,
    ok: Option<bool>,
    ol: Option<std::string::String>,
    om: Option<Vec<u8>>,
    r#type: i32,
}

/// A field named like the generated code's locals must not collide with them.
#[derive(Debug, PartialEq, Record, FromRow)]
struct Shadowing {
    rows: i64,
    batch: i64,
    schema: String,
}

#[derive(Debug, PartialEq, FromRow)]
struct Total {
    region: String,
    total: i64,
}

fn readings() -> Vec<Reading> {
    vec![
        Reading {
            sensor: "a".into(),
            temp: 21.5,
            ts: 1_000,
            note: None,
            zone: 7,
        },
        Reading {
            sensor: "b".into(),
            temp: -3.25,
            ts: 2_000,
            note: Some("door open".into()),
            zone: 9,
        },
    ]
}

fn all_types(n: u8) -> AllTypes {
    AllTypes {
        a: -(n as i8),
        b: -300,
        c: 70_000,
        d: i64::MIN + n as i64,
        e: n,
        f: 60_000,
        g: 4_000_000_000,
        h: u64::MAX,
        i: 1.5,
        j: std::f64::consts::PI,
        k: n.is_multiple_of(2),
        l: format!("row {n}"),
        m: vec![n, 0, 255],
        oa: Some(1),
        ob: None,
        oc: Some(-1),
        od: None,
        oe: Some(2),
        of: None,
        og: Some(3),
        oh: None,
        oi: Some(0.5),
        oj: None,
        ok: Some(false),
        ol: None,
        om: Some(vec![]),
        r#type: 42,
    }
}

fn column_names(schema: &Schema) -> Vec<&str> {
    schema.fields().iter().map(|f| f.name().as_str()).collect()
}

#[test]
fn derived_schema_has_names_types_nullability_in_declaration_order() {
    let schema = Reading::schema();
    let expected = Schema::new(vec![
        Field::new("sensor", DataType::Utf8, false),
        Field::new("temp", DataType::Float64, false),
        Field::new("ts", DataType::Int64, false),
        Field::new("note", DataType::Utf8, true),
        Field::new("zone_id", DataType::UInt32, false),
    ]);
    assert_eq!(schema.as_ref(), &expected);
    assert_eq!(Reading::event_time_column(), Some("ts"));
    assert!(Total::check_schema(&expected).is_err());
    // The schema is built once and shared.
    assert!(Arc::ptr_eq(&Reading::schema(), &Reading::schema()));
}

#[test]
fn all_supported_types_map_to_arrow_types() {
    let schema = AllTypes::schema();
    let types: Vec<(&str, &DataType, bool)> = schema
        .fields()
        .iter()
        .map(|f| (f.name().as_str(), f.data_type(), f.is_nullable()))
        .collect();
    use DataType::*;
    let scalars = [
        Int8, Int16, Int32, Int64, UInt8, UInt16, UInt32, UInt64, Float32, Float64, Boolean, Utf8,
        Binary,
    ];
    for (i, dt) in scalars.iter().enumerate() {
        assert_eq!(types[i].1, dt);
        assert!(!types[i].2, "{} must not be nullable", types[i].0);
        assert_eq!(types[i + 13].1, dt);
        assert!(types[i + 13].2, "{} must be nullable", types[i + 13].0);
    }
    assert_eq!(types[26], ("type", &Int32, false));
    assert_eq!(AllTypes::event_time_column(), None);
}

#[test]
fn to_record_batch_round_trips_through_from_batch() {
    let rows = readings();
    let batch = Reading::to_record_batch(&rows).unwrap();
    assert_eq!(batch.num_rows(), 2);
    assert_eq!(batch.schema(), Reading::schema());
    let ts = batch.column(2).as_primitive::<Int64Type>();
    assert_eq!(ts.values().as_ref(), &[1_000, 2_000]);
    Reading::check_schema(batch.schema_ref()).unwrap();
    assert_eq!(Reading::from_batch(&batch).unwrap(), rows);

    let rows: Vec<AllTypes> = (0..5).map(all_types).collect();
    let batch = AllTypes::to_record_batch(&rows).unwrap();
    assert_eq!(AllTypes::from_batch(&batch).unwrap(), rows);

    let rows = vec![Shadowing {
        rows: 1,
        batch: 2,
        schema: "s".into(),
    }];
    let batch = Shadowing::to_record_batch(&rows).unwrap();
    assert_eq!(Shadowing::from_batch(&batch).unwrap(), rows);
}

#[test]
fn empty_slice_gives_empty_batch_with_schema() {
    let batch = Reading::to_record_batch(&[]).unwrap();
    assert_eq!(batch.num_rows(), 0);
    assert_eq!(batch.schema(), Reading::schema());
    assert_eq!(Reading::from_batch(&batch).unwrap(), vec![]);
}

#[test]
fn option_fields_carry_nulls() {
    let batch = Reading::to_record_batch(&readings()).unwrap();
    let note = batch.column_by_name("note").unwrap();
    assert_eq!(note.null_count(), 1);
    assert!(note.is_null(0));
    assert_eq!(note.as_string::<i32>().value(1), "door open");
    assert_eq!(batch.column_by_name("sensor").unwrap().null_count(), 0);

    let back = Reading::from_batch(&batch).unwrap();
    assert_eq!(back[0].note, None);
    assert_eq!(back[1].note.as_deref(), Some("door open"));
}

#[test]
fn column_rename_is_used_for_write_and_read() {
    let batch = Reading::to_record_batch(&readings()).unwrap();
    assert_eq!(
        column_names(batch.schema_ref()),
        ["sensor", "temp", "ts", "note", "zone_id"]
    );
    assert!(batch.column_by_name("zone").is_none());
    let zone = batch.column_by_name("zone_id").unwrap();
    assert_eq!(
        zone.as_primitive::<laminar_db::arrow::datatypes::UInt32Type>()
            .value(1),
        9
    );

    // A batch with `zone` instead of `zone_id` does not fit.
    let mut columns: Vec<(&str, ArrayRef)> = batch
        .schema_ref()
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(f, c)| (f.name().as_str(), Arc::clone(c)))
        .collect();
    columns[4].0 = "zone";
    let renamed = RecordBatch::try_from_iter(columns).unwrap();
    let err = Reading::from_batch(&renamed).unwrap_err();
    assert!(
        matches!(&err, RecordError::MissingColumn { field, .. } if field == "zone_id"),
        "{err:?}"
    );
}

#[test]
fn from_batch_maps_by_name_in_any_order_and_ignores_extra_columns() {
    let batch = RecordBatch::try_from_iter([
        (
            "extra",
            Arc::new(Float64Array::from(vec![0.0, 1.0])) as ArrayRef,
        ),
        ("total", Arc::new(Int64Array::from(vec![15, 20]))),
        ("unused", Arc::new(StringArray::from(vec!["x", "y"]))),
        ("region", Arc::new(StringArray::from(vec!["eu", "us"]))),
    ])
    .unwrap();
    Total::check_schema(batch.schema_ref()).unwrap();
    assert_eq!(
        Total::from_batch(&batch).unwrap(),
        vec![
            Total {
                region: "eu".into(),
                total: 15
            },
            Total {
                region: "us".into(),
                total: 20
            },
        ]
    );

    // Reading's columns permuted, plus compatible wider encodings.
    let batch = RecordBatch::try_from_iter([
        ("zone_id", Arc::new(UInt32Array::from(vec![7])) as ArrayRef),
        ("note", Arc::new(LargeStringArray::from(vec![None::<&str>]))),
        ("ts", Arc::new(TimestampMillisecondArray::from(vec![1_000]))),
        ("temp", Arc::new(Float64Array::from(vec![21.5]))),
        ("sensor", Arc::new(StringArray::from(vec!["a"]))),
    ])
    .unwrap();
    assert_eq!(Reading::from_batch(&batch).unwrap(), readings()[..1]);
}

#[test]
fn check_schema_missing_column_lists_available_columns() {
    let schema = Schema::new(vec![
        Field::new("region", DataType::Utf8, false),
        Field::new("count", DataType::Int64, false),
    ]);
    let err = Total::check_schema(&schema).unwrap_err();
    match &err {
        RecordError::MissingColumn { field, available } => {
            assert_eq!(field, "total");
            assert_eq!(available, &["region", "count"]);
        }
        other => panic!("expected MissingColumn, got {other:?}"),
    }
    let message = err.to_string();
    assert!(message.contains("`total`"), "{message}");
    assert!(message.contains("region, count"), "{message}");
}

#[test]
fn check_schema_type_mismatch_names_both_types() {
    let schema = Schema::new(vec![
        Field::new("region", DataType::Utf8, false),
        Field::new("total", DataType::Float64, false),
    ]);
    let err = Total::check_schema(&schema).unwrap_err();
    match &err {
        RecordError::TypeMismatch {
            field,
            expected,
            actual,
        } => {
            assert_eq!(field, "total");
            assert!(expected.starts_with("Int64"), "{expected}");
            assert_eq!(actual, "Float64");
        }
        other => panic!("expected TypeMismatch, got {other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.contains("total") && message.contains("Int64") && message.contains("Float64"),
        "{message}"
    );

    // Narrowing is refused; widening and raw timestamps are accepted.
    let narrow = Schema::new(vec![
        Field::new("region", DataType::Utf8, false),
        Field::new("total", DataType::UInt64, false),
    ]);
    assert!(matches!(
        Total::check_schema(&narrow),
        Err(RecordError::TypeMismatch { .. })
    ));
    let wide = Schema::new(vec![
        Field::new("region", DataType::Utf8View, true),
        Field::new(
            "total",
            DataType::Timestamp(TimeUnit::Microsecond, None),
            true,
        ),
    ]);
    Total::check_schema(&wide).unwrap();
}

#[test]
fn null_into_non_option_field_is_unexpected_null_with_row() {
    let batch = RecordBatch::try_from_iter([
        (
            "region",
            Arc::new(StringArray::from(vec![Some("eu"), Some("us"), None])) as ArrayRef,
        ),
        (
            "total",
            Arc::new(Int32Array::from(vec![Some(1), Some(2), Some(3)])),
        ),
    ])
    .unwrap();
    // The schema itself fits (nullable columns are allowed) ...
    Total::check_schema(batch.schema_ref()).unwrap();
    // ... but the NULL value in row 2 cannot become a String.
    let err = Total::from_batch(&batch).unwrap_err();
    assert!(
        matches!(&err, RecordError::UnexpectedNull { field, row: 2 } if field == "region"),
        "{err:?}"
    );
    assert!(err.to_string().contains("row 2"), "{err}");
}
