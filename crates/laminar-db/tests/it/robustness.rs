//! Hostile input never panics across the public API: arbitrary SQL to `execute`, arbitrary
//! batches to `push_arrow`.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, BooleanArray, Float64Array, Int32Array, Int64Array, StringArray};
use arrow::datatypes::{Field, Schema};
use arrow::record_batch::RecordBatch;
use laminar_db::LaminarDB;
use proptest::prelude::*;

const FRAGMENTS: &[&str] = &[
    "CREATE",
    "SOURCE",
    "STREAM",
    "SINK",
    "s",
    "t",
    "(",
    ")",
    "x",
    "INT",
    "BIGINT",
    "VARCHAR",
    ",",
    "AS",
    "SELECT",
    "*",
    "FROM",
    "WHERE",
    ">",
    "1",
    "'a'",
    ";",
    "WATERMARK",
    "FOR",
    "ts",
    "-",
    "INTERVAL",
    "'1'",
    "SECOND",
    "INTO",
    "FILES",
    "DROP",
    "SHOW",
    "SOURCES",
    "DESCRIBE",
    "EXPLAIN",
    "INSERT",
    "VALUES",
    "UNION",
    "ALL",
    "GROUP",
    "BY",
    "EMIT",
    "CHANGES",
    "${X}",
    "NULL",
    "NOT",
    "CASE",
    "WHEN",
    "THEN",
    "END",
    "CAST",
    "--",
    "/*",
    "*/",
    "\"q\"",
    "JOIN",
    "LEFT",
    "FULL",
    "ON",
    "=",
    "AND",
    "BETWEEN",
    "base",
    "base.x",
    "b",
    "b.x",
    "b.ts",
    "dim",
    "dim.x",
    "TABLE",
    "PRIMARY",
    "KEY",
    "ASOF",
    "MATCH_CONDITION",
    ">=",
    "NEAREST",
    "SYSTEM_TIME",
    "OF",
    "PROCTIME()",
    "DELETE",
];

fn sql_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,80}",
        proptest::collection::vec(proptest::sample::select(FRAGMENTS), 0..25)
            .prop_map(|v| v.join(" ")),
    ]
}

fn any_batch() -> impl Strategy<Value = RecordBatch> {
    let column = prop_oneof![
        (
            proptest::sample::select(&["x", "ts", "s", "y"][..]),
            proptest::collection::vec(any::<Option<i64>>(), 0..5)
        )
            .prop_map(|(n, v)| (n.to_string(), Arc::new(Int64Array::from(v)) as ArrayRef)),
        (
            proptest::sample::select(&["x", "ts", "s"][..]),
            proptest::collection::vec(any::<Option<i32>>(), 0..5)
        )
            .prop_map(|(n, v)| (n.to_string(), Arc::new(Int32Array::from(v)) as ArrayRef)),
        (
            proptest::sample::select(&["x", "s"][..]),
            proptest::collection::vec(proptest::option::of(".{0,3}"), 0..5)
        )
            .prop_map(|(n, v)| (n.to_string(), Arc::new(StringArray::from(v)) as ArrayRef)),
        (
            proptest::sample::select(&["x", "f"][..]),
            proptest::collection::vec(any::<Option<f64>>(), 0..5)
        )
            .prop_map(|(n, v)| (n.to_string(), Arc::new(Float64Array::from(v)) as ArrayRef)),
        (
            Just("b"),
            proptest::collection::vec(any::<Option<bool>>(), 0..5)
        )
            .prop_map(|(n, v)| (n.to_string(), Arc::new(BooleanArray::from(v)) as ArrayRef)),
    ];
    proptest::collection::vec(column, 0..4).prop_filter_map("same lengths, unique names", |cols| {
        let len = cols.first().map_or(0, |c| c.1.len());
        let mut names: Vec<_> = cols.iter().map(|c| c.0.clone()).collect();
        names.sort();
        names.dedup();
        if names.len() != cols.len() || cols.iter().any(|c| c.1.len() != len) {
            return None;
        }
        let schema = Schema::new(
            cols.iter()
                .map(|(n, a)| Field::new(n, a.data_type().clone(), true))
                .collect::<Vec<_>>(),
        );
        RecordBatch::try_new_with_options(
            Arc::new(schema),
            cols.into_iter().map(|c| c.1).collect(),
            &arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(len)),
        )
        .ok()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_sql_never_panics(statements in proptest::collection::vec(sql_strategy(), 1..4)) {
        let db = LaminarDB::builder().workers(1).build_sync().unwrap();
        futures::executor::block_on(async {
            db.execute("CREATE SOURCE base (x BIGINT NOT NULL, s VARCHAR, ts BIGINT, WATERMARK FOR ts AS ts); \
                        CREATE TABLE dim (x BIGINT PRIMARY KEY, s VARCHAR)").await.unwrap();
            for sql in &statements {
                let _ = db.execute(sql).await;
            }
        });
        db.shutdown_sync();
    }

    #[test]
    fn arbitrary_batches_never_panic_and_valid_ones_flow(batches in proptest::collection::vec(any_batch(), 1..6)) {
        let db = LaminarDB::builder().workers(1).build_sync().unwrap();
        futures::executor::block_on(async {
            db.execute("CREATE SOURCE s (x BIGINT NOT NULL, s VARCHAR, ts BIGINT, WATERMARK FOR ts AS ts); \
                        CREATE STREAM t AS SELECT x, s FROM s WHERE x > 0").await.unwrap();
        });
        let src = db.source_untyped("s").unwrap();
        let mut accepted = 0u64;
        for b in batches {
            let rows = b.num_rows() as u64;
            if src.push_arrow(b).is_ok() {
                accepted += rows;
            }
        }
        prop_assert!(db.wait_idle(Duration::from_secs(10)));
        prop_assert_eq!(db.source_metrics("s").unwrap().total_events, accepted);
        db.shutdown_sync();
    }

    /// Extreme event times and keys through every kind of join: no panic, no failure.
    #[test]
    fn extreme_values_through_joins_never_panic(
        left in proptest::collection::vec((proptest::option::of(-2i64..3), prop_oneof![Just(i64::MIN), Just(i64::MAX), Just(0i64), -5i64..5, Just(i64::MAX - 1)]), 0..8),
        right in proptest::collection::vec((proptest::option::of(-2i64..3), prop_oneof![Just(i64::MIN), Just(i64::MAX), Just(0i64), -5i64..5, Just(i64::MAX - 1)]), 0..8),
    ) {
        let db = LaminarDB::builder().workers(1).build_sync().unwrap();
        futures::executor::block_on(async {
            db.execute("CREATE SOURCE l (k BIGINT, ts BIGINT NOT NULL, WATERMARK FOR ts AS ts); \
                        CREATE SOURCE r (k BIGINT, ts BIGINT NOT NULL, WATERMARK FOR ts AS ts); \
                        CREATE TABLE d (k BIGINT PRIMARY KEY, v VARCHAR); \
                        INSERT INTO d VALUES (1, 'one'), (2, 'two'); \
                        CREATE STREAM j1 AS SELECT a.k, a.ts AS lts, b.ts AS rts FROM l a FULL JOIN r b ON a.k = b.k AND b.ts BETWEEN a.ts - 3 AND a.ts + 3; \
                        CREATE STREAM j2 AS SELECT a.k, b.ts AS rts FROM l a ASOF LEFT JOIN r b MATCH_CONDITION(NEAREST(a.ts, b.ts, 2)) ON a.k = b.k; \
                        CREATE STREAM j3 AS SELECT a.k, b.ts AS rts FROM l a JOIN r FOR SYSTEM_TIME AS OF a.ts AS b ON a.k = b.k; \
                        CREATE STREAM j4 AS SELECT a.k, d.v FROM l a LEFT JOIN d ON a.k = d.k").await.unwrap();
        });
        let batch = |rows: &[(Option<i64>, i64)]| {
            RecordBatch::try_new(
                Arc::new(Schema::new(vec![
                    Field::new("k", arrow::datatypes::DataType::Int64, true),
                    Field::new("ts", arrow::datatypes::DataType::Int64, false),
                ])),
                vec![
                    Arc::new(Int64Array::from(rows.iter().map(|r| r.0).collect::<Vec<_>>())) as ArrayRef,
                    Arc::new(Int64Array::from(rows.iter().map(|r| r.1).collect::<Vec<_>>())),
                ],
            )
            .unwrap()
        };
        let (ls, rs) = (db.source_untyped("l").unwrap(), db.source_untyped("r").unwrap());
        for (a, b) in left.chunks(3).zip(right.chunks(3)) {
            ls.push_arrow(batch(a)).unwrap();
            rs.push_arrow(batch(b)).unwrap();
        }
        ls.watermark(i64::MAX).unwrap();
        rs.watermark(i64::MAX).unwrap();
        prop_assert!(db.wait_idle(Duration::from_secs(10)));
        prop_assert!(db.failures().is_empty(), "{:?}", db.failures());
        db.shutdown_sync();
    }
}
