//! Differential test of analytic window functions: random rows with bounded disorder, random
//! batch splits and watermark cadence go through `LAG` / `LEAD` / `FIRST_VALUE` /
//! `LAST_VALUE` / aggregates `OVER (.. ORDER BY ts [frame])` streams; the rows emitted by the
//! end of input must equal DataFusion batch SQL computing the same functions over the whole
//! input. Event times are unique, so the order within a partition is total and both engines
//! agree on it. `PROPTEST_CASES` scales the number of cases.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use proptest::prelude::*;

use crate::util::{batch_query, cut_points, proptest_cases, received_rows, stream_under_test};

/// Out-of-orderness of the input (ms), also the source's watermark delay: no row is late.
const DISORDER: i64 = 700_000;

/// The same query runs as a stream and as a batch query over the whole input.
const QUERIES: &[&str] = &[
    "SELECT k, v, ts, LAG(v) OVER (PARTITION BY k ORDER BY ts) AS prev FROM t",
    "SELECT k, v, ts, LAG(v, 2, -1) OVER (PARTITION BY k ORDER BY ts) AS prev2, LEAD(v) OVER (PARTITION BY k ORDER BY ts) AS nxt FROM t",
    "SELECT k, v, ts, SUM(v) OVER (PARTITION BY k ORDER BY ts ROWS BETWEEN 2 PRECEDING AND CURRENT ROW) AS s3, MAX(v) OVER (PARTITION BY k ORDER BY ts ROWS BETWEEN 2 PRECEDING AND CURRENT ROW) AS m3 FROM t",
    "SELECT v, ts, AVG(v) OVER (ORDER BY ts ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS running FROM t",
    "SELECT k, ts, COUNT(*) OVER (PARTITION BY k ORDER BY ts RANGE BETWEEN 50000 PRECEDING AND CURRENT ROW) AS n, MIN(v) OVER (PARTITION BY k ORDER BY ts RANGE BETWEEN 50000 PRECEDING AND CURRENT ROW) AS lo FROM t",
    "SELECT k, ts, FIRST_VALUE(v) OVER (PARTITION BY k ORDER BY ts ROWS BETWEEN 1 PRECEDING AND 1 FOLLOWING) AS f, LAST_VALUE(v) OVER (PARTITION BY k ORDER BY ts ROWS BETWEEN 1 PRECEDING AND 1 FOLLOWING) AS l FROM t WHERE v > 5",
];

type Row = (i64, i64, i64);

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("v", DataType::Int64, false),
        Field::new("ts", DataType::Int64, false),
    ]))
}

fn to_batch(input: &[Row]) -> RecordBatch {
    let column = |f: fn(&Row) -> i64| {
        Arc::new(Int64Array::from(input.iter().map(f).collect::<Vec<_>>())) as ArrayRef
    };
    RecordBatch::try_new(
        schema(),
        vec![column(|r| r.0), column(|r| r.1), column(|r| r.2)],
    )
    .unwrap()
}

/// Rows whose event times advance by random steps, displaced by less than `DISORDER`, made
/// unique by their position.
fn rows_strategy() -> impl Strategy<Value = Vec<Row>> {
    proptest::collection::vec((0i64..3, 1i64..60, 0i64..250, 0i64..700), 0..120).prop_map(|raw| {
        let mut clock = 0;
        raw.into_iter()
            .enumerate()
            .map(|(i, (k, v, step, jitter))| {
                clock += step;
                (k, v, (clock - jitter).max(0) * 1000 + i as i64)
            })
            .collect()
    })
}

fn streaming(
    query: &str,
    input: &[Row],
    splits: &[usize],
    watermarks: &[bool],
    workers: usize,
) -> Vec<Vec<String>> {
    let (db, mut sub, src) = stream_under_test(
        workers,
        &format!(
            "CREATE SOURCE t (k BIGINT NOT NULL, v BIGINT NOT NULL, ts BIGINT NOT NULL, WATERMARK FOR ts AS ts - {DISORDER})"
        ),
        "t",
        query,
    );
    let mut high = 0;
    for (i, w) in cut_points(splits, input.len()).windows(2).enumerate() {
        src.push_arrow(to_batch(&input[w[0]..w[1]])).unwrap();
        high = input[w[0]..w[1]]
            .iter()
            .map(|r| r.2)
            .max()
            .unwrap_or(0)
            .max(high);
        if watermarks.get(i).copied().unwrap_or(false) {
            src.watermark(high - DISORDER).unwrap();
        }
    }
    // The end of time: every row is released, rows waiting for followers get none.
    src.watermark(i64::MAX).unwrap();
    let out = received_rows(&db, &mut sub);
    db.shutdown_sync();
    out
}

fn check(
    query: &str,
    input: &[Row],
    splits: &[usize],
    watermarks: &[bool],
    workers: usize,
) -> Result<(), TestCaseError> {
    let mut got = streaming(query, input, splits, watermarks, workers);
    let mut want = batch_query("t", to_batch(input), query);
    got.sort();
    want.sort();
    prop_assert_eq!(got, want, "query: {} on {} workers", query, workers);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: proptest_cases(24), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn analytic_functions_equal_batch(
        input in rows_strategy(),
        splits in proptest::collection::vec(0usize..1000, 0..8),
        watermarks in proptest::collection::vec(any::<bool>(), 0..8),
        query in 0..QUERIES.len(),
        workers in 1usize..3,
    ) {
        check(QUERIES[query], &input, &splits, &watermarks, workers)?;
    }
}

/// Every query once over a fixed input with disorder and several splits, on one worker and
/// on two (a query with `PARTITION BY` then runs as two instances).
#[test]
fn every_analytic_query_on_a_fixed_input() {
    let input: Vec<Row> = (0..300)
        .map(|i: i64| {
            (
                i % 3,
                (i * 37) % 50 + 1,
                (i * 90 - (i * 7919) % 700).max(0) * 1000 + i,
            )
        })
        .collect();
    for query in QUERIES {
        for workers in [1, 2] {
            check(
                query,
                &input,
                &[17, 100, 101, 250],
                &[true, false, true],
                workers,
            )
            .unwrap();
        }
    }
}
