//! Differential test of session windows over a changelog input: random insertions,
//! deletions and updates (`U-` / `U+` pairs) with bounded disorder, random batch splits and
//! watermarks go through session aggregations; the consolidated changelog (`EMIT CHANGES`) or
//! the rows emitted at close (`EMIT ON WINDOW CLOSE`) must equal DataFusion batch SQL that cuts
//! the rows left at the end into sessions. Deletions only touch rows whose sessions are still
//! open, so no change is too late. Also: recovery from checkpoints taken between changes.
//! `PROPTEST_CASES` scales the number of cases (default 32).

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use proptest::prelude::*;

use crate::util::{
    batch_query, block_on, consolidate_changelog as consolidate, cut_points, durable_db,
    execute_each, proptest_cases, received_rows, select, stream_under_test,
};

/// Out-of-orderness of the input and the source's watermark delay.
const DISORDER: i64 = 700;

/// Sessions of auction: rows at most 300 ms apart.
const SESSIONS: &str = "(SELECT auction, ts, price, SUM(brk) OVER (PARTITION BY auction ORDER BY ts ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS sid FROM (SELECT auction, ts, price, CASE WHEN ts - LAG(ts) OVER (PARTITION BY auction ORDER BY ts) <= 300 THEN 0 ELSE 1 END AS brk FROM c) AS a) AS b";

/// Sessions over all rows.
const GLOBAL_SESSIONS: &str = "(SELECT ts, price, SUM(brk) OVER (ORDER BY ts ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS sid FROM (SELECT ts, price, CASE WHEN ts - LAG(ts) OVER (ORDER BY ts) <= 300 THEN 0 ELSE 1 END AS brk FROM c) AS a) AS b";

/// (streaming query, equivalent batch query over the rows left, output is a changelog)
fn queries() -> Vec<(String, String, bool)> {
    let session = "session(ts, INTERVAL '300' MILLISECOND)";
    vec![
        (
            format!(
                "SELECT auction, {session} AS s, session_end(ts, INTERVAL '300' MILLISECOND) AS e, COUNT(*) AS n, SUM(price) AS total, MIN(price) AS lo, MAX(price) AS hi FROM c GROUP BY auction, {session} EMIT CHANGES"
            ),
            format!(
                "SELECT auction, MIN(ts) AS s, MAX(ts) + 300 AS e, COUNT(*) AS n, SUM(price) AS total, MIN(price) AS lo, MAX(price) AS hi FROM {SESSIONS} GROUP BY auction, sid"
            ),
            true,
        ),
        (
            format!(
                "SELECT auction, {session} AS s, COUNT(*) AS n, MAX(price) AS hi FROM c GROUP BY auction, {session} EMIT ON WINDOW CLOSE"
            ),
            format!(
                "SELECT auction, MIN(ts) AS s, COUNT(*) AS n, MAX(price) AS hi FROM {SESSIONS} GROUP BY auction, sid"
            ),
            false,
        ),
        // The default EMIT of a window (ON WATERMARK, no lateness): append-only output.
        (
            format!(
                "SELECT auction, session_end(ts, INTERVAL '300' MILLISECOND) AS e, COUNT(*) AS n, SUM(price) AS total FROM c GROUP BY auction, {session}"
            ),
            format!(
                "SELECT auction, MAX(ts) + 300 AS e, COUNT(*) AS n, SUM(price) AS total FROM {SESSIONS} GROUP BY auction, sid"
            ),
            false,
        ),
        (
            format!(
                "SELECT {session} AS s, COUNT(*) FILTER (WHERE price > 30) AS big, AVG(price) AS a FROM c GROUP BY {session} HAVING COUNT(*) > 1 EMIT CHANGES"
            ),
            format!(
                "SELECT MIN(ts) AS s, COUNT(*) FILTER (WHERE price > 30) AS big, AVG(price) AS a FROM {GLOBAL_SESSIONS} GROUP BY sid HAVING COUNT(*) > 1"
            ),
            true,
        ),
    ]
}

/// (auction, price, ts, op)
type Change = (i64, i64, i64, &'static str);

fn schema(changelog: bool) -> SchemaRef {
    let mut fields = vec![
        Field::new("auction", DataType::Int64, false),
        Field::new("price", DataType::Int64, false),
        Field::new("ts", DataType::Int64, false),
    ];
    if changelog {
        fields.push(Field::new("_op", DataType::Utf8, false));
    }
    Arc::new(Schema::new(fields))
}

fn to_batch(changes: &[Change], changelog: bool) -> RecordBatch {
    let column = |f: fn(&Change) -> i64| {
        Arc::new(Int64Array::from(changes.iter().map(f).collect::<Vec<_>>())) as ArrayRef
    };
    let mut columns = vec![column(|c| c.0), column(|c| c.1), column(|c| c.2)];
    if changelog {
        columns.push(Arc::new(StringArray::from(
            changes.iter().map(|c| c.3).collect::<Vec<_>>(),
        )));
    }
    RecordBatch::try_new(schema(changelog), columns).unwrap()
}

/// Changes whose insertions advance by random steps with less than `DISORDER` of jitter;
/// deletions and updates pick a live row no more than `DISORDER` behind the newest row, so
/// its session is still open.
fn changes_strategy() -> impl Strategy<Value = Vec<Change>> {
    proptest::collection::vec(
        (
            0u8..10,
            0i64..3,
            1i64..60,
            0i64..250,
            0i64..DISORDER,
            any::<usize>(),
        ),
        0..120,
    )
    .prop_map(|raw| {
        let mut clock = 0;
        let mut live: Vec<(i64, i64, i64)> = Vec::new();
        let mut out = Vec::new();
        for (kind, auction, price, step, jitter, pick) in raw {
            let open: Vec<usize> = (0..live.len())
                .filter(|&i| live[i].2 > clock - DISORDER)
                .collect();
            let fresh = |clock: &mut i64| {
                *clock += step;
                (auction, price, (*clock - jitter).max(0))
            };
            match kind {
                0..=2 if !open.is_empty() => {
                    let gone = live.swap_remove(open[pick % open.len()]);
                    if kind == 2 {
                        // An update: the row moves and changes its price.
                        out.push((gone.0, gone.1, gone.2, "U-"));
                        let new = fresh(&mut clock);
                        live.push(new);
                        out.push((new.0, new.1, new.2, "U+"));
                    } else {
                        out.push((gone.0, gone.1, gone.2, "D"));
                    }
                }
                _ => {
                    let new = fresh(&mut clock);
                    live.push(new);
                    out.push((new.0, new.1, new.2, "I"));
                }
            }
        }
        out
    })
}

/// The rows the changes leave.
fn final_rows(changes: &[Change]) -> Vec<Change> {
    let mut live: Vec<Change> = Vec::new();
    for &(auction, price, ts, op) in changes {
        if matches!(op, "D" | "U-") {
            let at = live
                .iter()
                .position(|r| (r.0, r.1, r.2) == (auction, price, ts))
                .expect("deleted row is live");
            live.swap_remove(at);
        } else {
            live.push((auction, price, ts, "I"));
        }
    }
    live
}

fn streaming(
    query: &str,
    changes: &[Change],
    splits: &[usize],
    watermarks: &[bool],
    workers: usize,
) -> Vec<Vec<String>> {
    let (db, mut sub, src) = stream_under_test(
        workers,
        &format!(
            "CREATE SOURCE c (auction BIGINT NOT NULL, price BIGINT NOT NULL, ts BIGINT NOT NULL, _op VARCHAR NOT NULL, WATERMARK FOR ts AS ts - INTERVAL '{DISORDER}' MILLISECOND)"
        ),
        "c",
        query,
    );
    let mut high = 0;
    for (i, w) in cut_points(splits, changes.len()).windows(2).enumerate() {
        let part = &changes[w[0]..w[1]];
        src.push_arrow(to_batch(part, true)).unwrap();
        high = part.iter().map(|c| c.2).max().unwrap_or(0).max(high);
        if watermarks.get(i).copied().unwrap_or(false) {
            src.watermark(high - DISORDER).unwrap();
        }
    }
    src.watermark(1_000_000_000).unwrap();
    let out = received_rows(&db, &mut sub);
    let late = db.stream_metrics("q").unwrap().late_total;
    db.shutdown_sync();
    assert_eq!(late, 0, "no change is too late");
    out
}

fn check(
    query: usize,
    changes: &[Change],
    splits: &[usize],
    watermarks: &[bool],
    workers: usize,
) -> Result<(), TestCaseError> {
    let (stream_sql, batch_sql, changelog) = &queries()[query];
    let mut got = streaming(stream_sql, changes, splits, watermarks, workers);
    if *changelog {
        got = consolidate(got);
    }
    let mut want = batch_query("c", to_batch(&final_rows(changes), false), batch_sql);
    got.sort();
    want.sort();
    prop_assert_eq!(got, want, "query: {}", stream_sql);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: proptest_cases(32), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn changelog_sessions_equal_batch(
        changes in changes_strategy(),
        splits in proptest::collection::vec(0usize..1000, 0..8),
        watermarks in proptest::collection::vec(any::<bool>(), 0..8),
        query in 0..4usize,
        workers in 1usize..=2,
    ) {
        check(query, &changes, &splits, &watermarks, workers)?;
    }
}

/// Every query once over a fixed input that splits, shrinks, empties and bridges sessions
/// (deterministic).
#[test]
fn every_changelog_session_query_on_a_fixed_input() {
    let row = |i: i64| {
        (
            i % 3,
            (i * 37) % 50 + 1,
            (i * 120 - (i * 7919) % 300).max(0),
        )
    };
    let mut changes: Vec<Change> = Vec::new();
    for i in 0..90i64 {
        let new = row(i);
        changes.push((new.0, new.1, new.2, "I"));
        // Every fifth row is deleted again two rows later (splitting or shrinking its
        // session); every seventh other row is moved one row later.
        if i >= 2 && (i - 2) % 5 == 0 {
            let old = row(i - 2);
            changes.push((old.0, old.1, old.2, "D"));
        }
        if i >= 1 && (i - 1) % 7 == 0 && (i - 1) % 5 != 0 {
            let old = row(i - 1);
            changes.push((old.0, old.1, old.2, "U-"));
            changes.push((old.0, old.1 + 1, old.2 + 50, "U+"));
        }
    }
    for query in 0..queries().len() {
        for workers in [1, 2] {
            check(
                query,
                &changes,
                &[10, 40, 41, 77],
                &[true, false, true],
                workers,
            )
            .unwrap();
        }
    }
}

/// Changelog sessions recover from checkpoints (a full one, then an incremental one) with
/// their live rows: deletions after recovery still split the sessions they belong to.
#[test]
fn changelog_sessions_recover_from_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let setup = "CREATE SOURCE c (k VARCHAR, ts BIGINT, v BIGINT, _op VARCHAR, WATERMARK FOR ts AS ts - INTERVAL '100' SECOND); \
         CREATE MATERIALIZED VIEW s AS SELECT k, session(ts, INTERVAL '2' SECOND) AS s, session_end(ts, INTERVAL '2' SECOND) AS e, COUNT(*) AS n, MAX(v) AS hi FROM c GROUP BY k, session(ts, INTERVAL '2' SECOND) EMIT CHANGES";
    let open = || durable_db(dir.path(), 1, setup);
    let query = "SELECT * FROM s ORDER BY k, s";
    let db = open();
    block_on(db.start()).unwrap();
    execute_each(
        &db,
        &[
            "INSERT INTO c VALUES ('a', 1000, 1, 'I'), ('a', 3000, 3, 'I'), ('a', 5000, 5, 'I'), ('b', 1000, 7, 'I')",
            // A deletion before its insertion is held.
            "INSERT INTO c VALUES ('b', 9000, 9, 'D')",
        ],
    );
    db.checkpoint().unwrap().expect("durable");
    execute_each(
        &db,
        &["INSERT INTO c VALUES ('a', 7000, 7, 'I'), ('b', 2500, 2, 'I')"],
    );
    db.checkpoint().unwrap().expect("durable");
    execute_each(&db, &["INSERT INTO c VALUES ('a', 3000, 3, 'D')"]);
    assert!(db.failures().is_empty(), "{:?}", db.failures());
    let before = select(&db, query);
    assert_eq!(
        before,
        vec![
            vec!["a", "1000", "3000", "1", "1"],
            vec!["a", "5000", "9000", "2", "7"],
            vec!["b", "1000", "4500", "2", "7"],
        ]
    );
    std::mem::forget(db); // a crash

    let db = open();
    block_on(db.start()).unwrap();
    assert!(db.wait_idle(Duration::from_secs(20)));
    assert!(db.failures().is_empty(), "{:?}", db.failures());
    assert_eq!(select(&db, query), before);
    // The restored rows: deleting 7000 shrinks a's second session, 1000 splits nothing, the
    // held deletion cancels b's insertion at 9000.
    execute_each(
        &db,
        &[
            "INSERT INTO c VALUES ('a', 7000, 7, 'D'), ('b', 1000, 7, 'D')",
            "INSERT INTO c VALUES ('b', 9000, 9, 'I'), ('a', 3000, 3, 'I')",
        ],
    );
    assert!(db.failures().is_empty(), "{:?}", db.failures());
    assert_eq!(
        select(&db, query),
        vec![
            vec!["a", "1000", "7000", "3", "5"],
            vec!["b", "2500", "4500", "1", "2"],
        ]
    );
    db.shutdown_sync();
}
