//! Differential test of streaming aggregation: random bids with bounded disorder, random
//! batch splits and random watermark cadence go through windowed and unwindowed GROUP BY
//! streams (and a window TVF without GROUP BY, which emits each row once per window); the rows
//! emitted for closed windows (or the consolidated changelog, for EMIT CHANGES) must equal
//! DataFusion batch SQL computing the same windows over the whole input.
//! Each case also picks whether the source has a keyed watermark on `auction` (then the
//! windows of queries grouped by auction close per auction, by that auction's watermark) and
//! how many workers run the pipeline (aggregations with group keys then run as that many
//! hash-partitioned instances).
//! `PROPTEST_CASES` scales the number of cases (default 64 cases over all queries).

use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use proptest::prelude::*;

use crate::util::{
    batch_query, consolidate_changelog as consolidate, cut_points, proptest_cases, received_rows,
    stream_under_test,
};

/// Out-of-orderness of the generated input, also the source's watermark delay (no row is
/// late, so every row must be counted).
const DISORDER: i64 = 700;

/// (streaming query, equivalent batch query, output is a changelog)
const QUERIES: &[(&str, &str, bool)] = &[
    (
        "SELECT auction, tumble(ts, INTERVAL '1' SECOND) AS w, COUNT(*) AS n, MAX(price) AS hi, SUM(price) AS total FROM bids GROUP BY auction, tumble(ts, INTERVAL '1' SECOND) EMIT ON WINDOW CLOSE",
        "SELECT auction, (ts / 1000) * 1000 AS w, COUNT(*) AS n, MAX(price) AS hi, SUM(price) AS total FROM bids GROUP BY auction, (ts / 1000) * 1000",
        false,
    ),
    (
        "SELECT auction, window_start, window_end, MIN(price) AS lo, AVG(price) AS a FROM TUMBLE(TABLE bids, DESCRIPTOR(ts), INTERVAL '700' MILLISECOND) GROUP BY auction, window_start, window_end",
        "SELECT auction, (ts / 700) * 700 AS window_start, (ts / 700) * 700 + 700 AS window_end, MIN(price) AS lo, AVG(price) AS a FROM bids GROUP BY auction, (ts / 700) * 700",
        false,
    ),
    (
        "SELECT auction, hop(ts, INTERVAL '500' MILLISECOND, INTERVAL '2' SECOND) AS w, COUNT(*) AS n, MAX(price) AS hi FROM bids GROUP BY auction, hop(ts, INTERVAL '500' MILLISECOND, INTERVAL '2' SECOND) EMIT ON WATERMARK",
        "SELECT auction, w, COUNT(*) AS n, MAX(price) AS hi FROM (SELECT auction, price, ts, (ts / 500) * 500 - k * 500 AS w FROM bids CROSS JOIN (VALUES (0), (1), (2), (3)) AS o(k)) AS x WHERE w + 2000 > ts GROUP BY auction, w",
        false,
    ),
    (
        "SELECT window_start, window_end, COUNT(*) AS n, SUM(price) AS total FROM CUMULATE(TABLE bids, DESCRIPTOR(ts), INTERVAL '500' MILLISECOND, INTERVAL '2' SECOND) GROUP BY window_start, window_end EMIT ON WINDOW CLOSE",
        "SELECT p AS window_start, p + k * 500 AS window_end, COUNT(*) AS n, SUM(price) AS total FROM (SELECT price, ts, (ts / 2000) * 2000 AS p FROM bids) AS x CROSS JOIN (VALUES (1), (2), (3), (4)) AS o(k) WHERE p + k * 500 > ts GROUP BY p, p + k * 500",
        false,
    ),
    (
        "SELECT auction, session(ts, INTERVAL '300' MILLISECOND) AS s, session_end(ts, INTERVAL '300' MILLISECOND) AS e, COUNT(*) AS n, MAX(price) AS hi FROM bids GROUP BY auction, session(ts, INTERVAL '300' MILLISECOND) EMIT ON WINDOW CLOSE",
        "SELECT auction, MIN(ts) AS s, MAX(ts) + 300 AS e, COUNT(*) AS n, MAX(price) AS hi FROM (SELECT auction, ts, price, SUM(brk) OVER (PARTITION BY auction ORDER BY ts ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS sid FROM (SELECT auction, ts, price, CASE WHEN ts - LAG(ts) OVER (PARTITION BY auction ORDER BY ts) <= 300 THEN 0 ELSE 1 END AS brk FROM bids) AS a) AS b GROUP BY auction, sid",
        false,
    ),
    (
        "SELECT auction, price, ts, window_start, window_end FROM HOP(TABLE bids, DESCRIPTOR(ts), INTERVAL '500' MILLISECOND, INTERVAL '2' SECOND)",
        "SELECT auction, price, ts, w AS window_start, w + 2000 AS window_end FROM (SELECT auction, price, ts, (ts / 500) * 500 - k * 500 AS w FROM bids CROSS JOIN (VALUES (0), (1), (2), (3)) AS o(k)) AS x WHERE w + 2000 > ts",
        false,
    ),
    (
        "SELECT auction, COUNT(*) AS n, SUM(price) AS total, MAX(price) AS hi FROM bids GROUP BY auction",
        "SELECT auction, COUNT(*) AS n, SUM(price) AS total, MAX(price) AS hi FROM bids GROUP BY auction",
        true,
    ),
    (
        "SELECT auction % 2 AS parity, tumble(ts, INTERVAL '1' SECOND) AS w, COUNT(DISTINCT price) AS d FROM bids WHERE price > 20 GROUP BY auction % 2, tumble(ts, INTERVAL '1' SECOND) HAVING COUNT(*) > 1 EMIT ON UPDATE",
        "SELECT auction % 2 AS parity, (ts / 1000) * 1000 AS w, COUNT(DISTINCT price) AS d FROM bids WHERE price > 20 GROUP BY auction % 2, (ts / 1000) * 1000 HAVING COUNT(*) > 1",
        true,
    ),
];

type Bid = (i64, i64, i64);

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("auction", DataType::Int64, false),
        Field::new("price", DataType::Int64, false),
        Field::new("ts", DataType::Int64, false),
    ]))
}

fn to_batch(bids: &[Bid]) -> RecordBatch {
    let column = |f: fn(&Bid) -> i64| {
        Arc::new(Int64Array::from(bids.iter().map(f).collect::<Vec<_>>())) as ArrayRef
    };
    RecordBatch::try_new(
        schema(),
        vec![column(|b| b.0), column(|b| b.1), column(|b| b.2)],
    )
    .unwrap()
}

/// Bids whose timestamps advance by random steps and are then displaced by less than
/// `DISORDER`, so no row is behind the watermark `max_ts - DISORDER` when it arrives.
fn bids_strategy() -> impl Strategy<Value = Vec<Bid>> {
    proptest::collection::vec((0i64..4, 1i64..60, 0i64..250, 0i64..DISORDER), 0..150).prop_map(
        |raw| {
            let mut clock = 0;
            raw.into_iter()
                .map(|(auction, price, step, jitter)| {
                    clock += step;
                    (auction, price, (clock - jitter).max(0))
                })
                .collect()
        },
    )
}

fn streaming(
    query: &str,
    input: &[Bid],
    splits: &[usize],
    watermarks: &[bool],
    keyed: bool,
    workers: usize,
) -> Vec<Vec<String>> {
    let with = if keyed {
        " WITH (watermark.key = 'auction')"
    } else {
        ""
    };
    let (db, mut sub, src) = stream_under_test(
        workers,
        &format!(
            "CREATE SOURCE bids (auction BIGINT NOT NULL, price BIGINT NOT NULL, ts BIGINT NOT NULL, WATERMARK FOR ts AS ts - INTERVAL '{DISORDER}' MILLISECOND){with}"
        ),
        "bids",
        query,
    );
    let mut high = 0;
    for (i, w) in cut_points(splits, input.len()).windows(2).enumerate() {
        src.push_arrow(to_batch(&input[w[0]..w[1]])).unwrap();
        high = input[w[0]..w[1]]
            .iter()
            .map(|b| b.2)
            .max()
            .unwrap_or(0)
            .max(high);
        // Random extra manual watermarks, never past what the data allows.
        if watermarks.get(i).copied().unwrap_or(false) {
            src.watermark(high - DISORDER).unwrap();
        }
    }
    // Close every window.
    src.watermark(1_000_000_000).unwrap();
    let out = received_rows(&db, &mut sub);
    db.shutdown_sync();
    out
}

fn batch(query: &str, input: &[Bid]) -> Vec<Vec<String>> {
    batch_query("bids", to_batch(input), query)
}

fn cases() -> u32 {
    proptest_cases(64)
}

fn check(
    query_index: usize,
    input: &[Bid],
    splits: &[usize],
    watermarks: &[bool],
    keyed: bool,
    workers: usize,
) -> Result<(), TestCaseError> {
    let (stream_sql, batch_sql, changelog) = QUERIES[query_index];
    let mut got = streaming(stream_sql, input, splits, watermarks, keyed, workers);
    if changelog {
        got = consolidate(got);
    }
    let mut want = batch(batch_sql, input);
    got.sort();
    want.sort();
    prop_assert_eq!(
        got,
        want,
        "query: {} (keyed watermark: {})",
        stream_sql,
        keyed
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn windowed_aggregation_equals_batch(
        input in bids_strategy(),
        splits in proptest::collection::vec(0usize..1000, 0..8),
        watermarks in proptest::collection::vec(any::<bool>(), 0..8),
        query_index in 0..QUERIES.len(),
        keyed in any::<bool>(),
        workers in 1usize..=3,
    ) {
        check(query_index, &input, &splits, &watermarks, keyed, workers)?;
    }
}

/// Every query once over a fixed input with disorder and many splits (deterministic).
#[test]
fn every_query_on_a_fixed_input() {
    let input: Vec<Bid> = (0..400)
        .map(|i: i64| {
            (
                i % 3,
                (i * 37) % 50 + 1,
                (i * 90 - (i * 7919) % DISORDER).max(0),
            )
        })
        .collect();
    for q in 0..QUERIES.len() {
        for (keyed, workers) in [(false, 1), (true, 1), (false, 2), (true, 3)] {
            check(
                q,
                &input,
                &[17, 100, 101, 250, 399],
                &[true, false, true],
                keyed,
                workers,
            )
            .unwrap();
        }
    }
}
