//! Differential test of unwindowed changelog aggregation (`EMIT CHANGES`) over append-only
//! input, which runs column by column: for random rows with NULLs and random batch splits,
//! each batch's changes must equal those of the row-accumulator layout (the same rows
//! pushed into a changelog source as `I` rows), every `U-` must be followed by the `U+` of a
//! different row, and the consolidated changelog must equal DataFusion batch SQL over all
//! rows. `PROPTEST_CASES` scales the number of cases (default 24).

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use laminar_db::LaminarDB;
use proptest::prelude::*;

use crate::util::{
    batch_query, consolidate_changelog as consolidate, cut_points, proptest_cases, rows,
};

/// Queries that run column by column over an append-only source (the SQL is the same in
/// DataFusion).
const QUERIES: &[&str] = &[
    "SELECT k, COUNT(*) AS n, COUNT(x) AS nx, SUM(x) AS sx, MIN(x) AS lo, MAX(x) AS hi, AVG(y) AS ay, SUM(y) AS sy FROM s GROUP BY k",
    "SELECT COUNT(*) AS n, COUNT(y) AS ny, SUM(x) AS sx, MIN(x) AS lo, MAX(x) AS hi FROM s",
    // MAX often does not change: an unchanged row emits nothing.
    "SELECT k, MAX(x) AS hi FROM s GROUP BY k",
    // Groups start and stop satisfying HAVING.
    "SELECT k, j, SUM(x) FILTER (WHERE y > 0) AS p, COUNT(*) AS n FROM s GROUP BY k, j HAVING COUNT(*) % 2 = 1",
    "SELECT j, SUM(x) + COUNT(*) AS e, AVG(y) * 2 AS a FROM s WHERE x IS NOT NULL GROUP BY j HAVING MIN(x) > -5",
];

/// (k, j, x, y)
type Row = (Option<&'static str>, Option<i64>, Option<i64>, Option<f64>);

fn schema(changelog: bool) -> SchemaRef {
    let mut fields = vec![
        Field::new("k", DataType::Utf8, true),
        Field::new("j", DataType::Int64, true),
        Field::new("x", DataType::Int64, true),
        Field::new("y", DataType::Float64, true),
    ];
    if changelog {
        fields.push(Field::new("_op", DataType::Utf8, false));
    }
    Arc::new(Schema::new(fields))
}

fn to_batch(input: &[Row], changelog: bool) -> RecordBatch {
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(
            input.iter().map(|r| r.0).collect::<Vec<_>>(),
        )),
        Arc::new(Int64Array::from(
            input.iter().map(|r| r.1).collect::<Vec<_>>(),
        )),
        Arc::new(Int64Array::from(
            input.iter().map(|r| r.2).collect::<Vec<_>>(),
        )),
        Arc::new(Float64Array::from(
            input.iter().map(|r| r.3).collect::<Vec<_>>(),
        )),
    ];
    if changelog {
        columns.push(Arc::new(StringArray::from(vec!["I"; input.len()])));
    }
    RecordBatch::try_new(schema(changelog), columns).unwrap()
}

fn row_strategy() -> impl Strategy<Value = Row> {
    (
        prop_oneof![
            Just(None),
            Just(Some("a")),
            Just(Some("b")),
            Just(Some("c"))
        ],
        prop_oneof![Just(None), (0i64..3).prop_map(Some)],
        prop_oneof![1 => Just(None), 6 => (-10i64..40).prop_map(Some)],
        // Quarters add up exactly in any order.
        prop_oneof![1 => Just(None), 6 => (-8i64..20).prop_map(|v| Some(v as f64 / 4.0))],
    )
}

/// Rows as strings.
type Rows = Vec<Vec<String>>;

/// Pushes `input` split at `splits` into both sources; returns each batch's changes of the
/// append-only and of the changelog query.
fn streaming(query: &str, input: &[Row], splits: &[usize]) -> Vec<(Rows, Rows)> {
    let db = LaminarDB::builder().workers(1).build_sync().unwrap();
    futures::executor::block_on(async {
        db.execute(
            "CREATE SOURCE s (k VARCHAR, j BIGINT, x BIGINT, y DOUBLE); \
             CREATE SOURCE c (k VARCHAR, j BIGINT, x BIGINT, y DOUBLE, _op VARCHAR)",
        )
        .await
        .unwrap();
        db.execute(&format!("CREATE STREAM q AS {query}"))
            .await
            .unwrap();
        db.execute(&format!(
            "CREATE STREAM qc AS {}",
            query.replace("FROM s", "FROM c")
        ))
        .await
        .unwrap();
    });
    let mut sub = db.subscribe_arrow("q").unwrap();
    let mut sub_c = db.subscribe_arrow("qc").unwrap();
    let (s, c) = (
        db.source_untyped("s").unwrap(),
        db.source_untyped("c").unwrap(),
    );
    let mut out = Vec::new();
    for w in cut_points(splits, input.len()).windows(2) {
        s.push_arrow(to_batch(&input[w[0]..w[1]], false)).unwrap();
        c.push_arrow(to_batch(&input[w[0]..w[1]], true)).unwrap();
        assert!(db.wait_idle(Duration::from_secs(20)));
        let drain = |sub: &mut laminar_db::ArrowSubscription| {
            let mut batches = Vec::new();
            while let Some(b) = sub.poll() {
                batches.push(b);
            }
            rows(&batches)
        };
        out.push((drain(&mut sub), drain(&mut sub_c)));
    }
    assert!(db.failures().is_empty(), "{:?}", db.failures());
    db.shutdown_sync();
    out
}

fn check(query: &str, input: &[Row], splits: &[usize]) -> Result<(), TestCaseError> {
    let batches = streaming(query, input, splits);
    for (i, (columnar, rowwise)) in batches.iter().enumerate() {
        // Pairs: U- then U+ of a different row.
        for (p, row) in columnar.iter().enumerate() {
            let op = row.last().unwrap();
            prop_assert!(["I", "D", "U-", "U+"].contains(&op.as_str()), "op {}", op);
            if op == "U-" {
                let next = columnar.get(p + 1);
                prop_assert!(
                    next.is_some_and(
                        |n| n.last().unwrap() == "U+" && n[..n.len() - 1] != row[..row.len() - 1]
                    ),
                    "U- not followed by the U+ of a changed row in batch {}: {:?}",
                    i,
                    columnar
                );
            }
        }
        let (mut a, mut b) = (columnar.clone(), rowwise.clone());
        a.sort();
        b.sort();
        prop_assert_eq!(a, b, "batch {} of {}", i, query);
    }
    let mut got = consolidate(batches.into_iter().flat_map(|(a, _)| a));
    let mut want = batch_query("s", to_batch(input, false), query);
    // A global aggregation stream (not a view) emits its first row with its first input row
    // (SQL.md, materialized views): over no input it emits nothing, where batch SQL has the
    // row of the aggregates of no rows.
    if input.is_empty() {
        want.clear();
    }
    got.sort();
    want.sort();
    prop_assert_eq!(got, want, "query: {}", query);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: proptest_cases(24), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn columnar_changelog_aggregation_equals_row_accumulators_and_batch(
        input in proptest::collection::vec(row_strategy(), 0..80),
        splits in proptest::collection::vec(0usize..100, 0..6),
        query_index in 0..QUERIES.len(),
    ) {
        check(QUERIES[query_index], &input, &splits)?;
    }
}

/// A global aggregation stream over no input emits nothing (found by the property test).
#[test]
fn a_global_aggregation_stream_over_no_input_emits_nothing() {
    check(QUERIES[1], &[], &[]).unwrap();
}

/// Every query once over a fixed input (deterministic).
#[test]
fn every_changelog_query_on_a_fixed_input() {
    let keys = [Some("a"), None, Some("b"), Some("a"), Some("c")];
    let input: Vec<Row> = (0..60i64)
        .map(|i| {
            (
                keys[(i % 5) as usize],
                (i % 4 != 3).then_some(i % 3),
                (i % 7 != 0).then_some((i * 13) % 45 - 6),
                (i % 6 != 0).then_some(((i * 5) % 27 - 8) as f64 / 4.0),
            )
        })
        .collect();
    for query in QUERIES {
        check(query, &input, &[1, 2, 9, 30, 31, 59]).unwrap();
    }
}
