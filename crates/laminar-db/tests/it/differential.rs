//! Differential test: for random inputs and random batch splits, a stateless stream's output
//! equals DataFusion batch execution of the same SELECT over the concatenated input.
//! `PROPTEST_CASES` scales the number of cases (default 32 per query).

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use proptest::prelude::*;

use crate::util::{batch_query, cut_points, proptest_cases, received_rows, stream_under_test};

/// (query, whether output order is defined by input order)
const QUERIES: &[(&str, bool)] = &[
    ("SELECT a, b * 2 + 1 AS c, ts FROM t WHERE a % 3 = 0", true),
    (
        "SELECT upper(s) AS u, CASE WHEN b IS NULL THEN -1 WHEN b > 0 THEN 1 ELSE 0 END AS sign, ts FROM t",
        true,
    ),
    ("SELECT a FROM t WHERE s = 'x' OR b > 10", true),
    (
        "SELECT concat(s, '-', CAST(a AS VARCHAR)) AS k, coalesce(b, 0.0) AS b0, abs(a) % 7 AS m FROM t WHERE ts >= 100",
        true,
    ),
    (
        "SELECT a / NULLIF(a % 5, 0) AS q, length(s) AS l FROM t WHERE NOT (a BETWEEN -10 AND 10)",
        true,
    ),
    (
        "SELECT a, s FROM t UNION ALL SELECT a + 1, lower(s) FROM t WHERE a > 0",
        false,
    ),
    (
        "SELECT * FROM (SELECT a * 2 AS d, s FROM t) AS x WHERE d > 100 AND s IS NOT NULL",
        true,
    ),
];

type Row = (i64, Option<f64>, Option<String>, i64);

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("a", DataType::Int64, false),
        Field::new("b", DataType::Float64, true),
        Field::new("s", DataType::Utf8, true),
        Field::new("ts", DataType::Int64, false),
    ]))
}

fn to_batch(rows: &[Row]) -> RecordBatch {
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int64Array::from(
                rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            )) as ArrayRef,
            Arc::new(Float64Array::from(
                rows.iter().map(|r| r.1).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.2.clone()).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from(
                rows.iter().map(|r| r.3).collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap()
}

fn row_strategy() -> impl Strategy<Value = Row> {
    (
        -1000i64..1000,
        proptest::option::of(-100.0f64..100.0),
        proptest::option::of(prop_oneof![
            Just("x".to_string()),
            Just("Yy".to_string()),
            "[a-z]{0,4}"
        ]),
        0i64..1000,
    )
}

fn streaming(query: &str, input: &[Row], splits: &[usize]) -> Vec<Vec<String>> {
    let (db, mut sub, src) = stream_under_test(
        2,
        "CREATE SOURCE t (a BIGINT NOT NULL, b DOUBLE, s VARCHAR, ts BIGINT NOT NULL, WATERMARK FOR ts AS ts)",
        "t",
        query,
    );
    for w in cut_points(splits, input.len()).windows(2) {
        src.push_arrow(to_batch(&input[w[0]..w[1]])).unwrap();
    }
    let out = received_rows(&db, &mut sub);
    db.shutdown_sync();
    out
}

fn batch(query: &str, input: &[Row]) -> Vec<Vec<String>> {
    batch_query("t", to_batch(input), query)
}

fn cases() -> u32 {
    proptest_cases(32)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn stateless_stream_equals_batch(
        input in proptest::collection::vec(row_strategy(), 0..120),
        splits in proptest::collection::vec(0usize..1000, 0..6),
        query_index in 0..QUERIES.len(),
    ) {
        let (query, ordered) = QUERIES[query_index];
        let mut got = streaming(query, &input, &splits);
        let mut want = batch(query, &input);
        if !ordered {
            got.sort();
            want.sort();
        }
        prop_assert_eq!(got, want, "query: {}", query);
    }
}
