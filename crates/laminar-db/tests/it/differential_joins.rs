//! Differential test of joins over time: two sources `a` and `b` (`k`, `ts`, `v`, watermark
//! `ts - 2000`) receive random rows with bounded disorder, split into random batches and
//! interleaved randomly between the sources (with random manual watermarks and random pauses
//! that let the pipeline catch up); at the end both watermarks jump far ahead, so every row
//! must be emitted. The rows a stream emitted must equal a batch computation over all rows:
//!
//! - interval joins, INNER / LEFT / RIGHT / FULL: DataFusion runs the same SELECT;
//! - ASOF LEFT JOIN backward (`f.ts >= q.ts`), forward within a tolerance and nearest within a
//!   tolerance: DataFusion runs the equivalent batch query (the left join on the allowed
//!   range, keeping per left row the best match by `ROW_NUMBER()`), NULL-padded when there is
//!   none;
//! - temporal join (`FOR SYSTEM_TIME AS OF o.ts`, inner): the same batch query as an inner
//!   join: per left row, the latest version of its key at or before `o.ts`;
//! - lookup joins (INNER and LEFT) against a TABLE filled by INSERTs (upserts: the last row of
//!   a key wins) before any stream row is pushed: DataFusion runs the same SELECT over the
//!   final table.
//!
//! The input never has late rows (each row's ts is above its own source's watermark when it
//! is pushed), so nothing may be dropped; every stream's `late_dropped` is checked to be 0,
//! and the interval joins must hold no state once both watermarks passed every bound. Right
//! rows of the ASOF and temporal joins have unique `(k, ts)` pairs, so "the latest" is
//! unambiguous. Keys are drawn from small domains (`a` 1..=5, `b` 2..=6, so some keys exist on
//! one side only) with a few NULL keys, which never match. Each case also picks 1 or 2 workers.
//! Proptest prints the failing (shrunk) input; `PROPTEST_CASES` scales the number of cases
//! (default 64 per property).

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use laminar_db::LaminarDB;
use proptest::prelude::*;

use crate::util::{proptest_cases, rows};

/// Out-of-orderness bound of the generated input, also the watermark delay of both sources.
const DELAY: i64 = 2000;

/// Final watermark of every source: past every bound of every generated row.
const END: i64 = 1_000_000_000;

const WAIT: Duration = Duration::from_secs(20);

const SOURCES: [&str; 2] = [
    "CREATE SOURCE a (k BIGINT, ts BIGINT, v BIGINT, WATERMARK FOR ts AS ts - 2000)",
    "CREATE SOURCE b (k BIGINT, ts BIGINT, v BIGINT, WATERMARK FOR ts AS ts - 2000)",
];

const INTERVAL_JOIN_TYPES: [&str; 4] = ["INNER", "LEFT", "RIGHT", "FULL"];

const ASOF: &str = "SELECT f.k, f.ts AS fts, f.v AS fv, q.ts AS qts, q.v AS qv FROM a f ASOF LEFT JOIN b q MATCH_CONDITION(f.ts >= q.ts) ON f.k = q.k";

/// ASOF backward as a batch query: the left join on `q.ts <= f.ts`, keeping per left row the
/// match with the greatest `q.ts`.
const ASOF_BATCH: &str = "SELECT k, fts, fv, qts, qv FROM (SELECT f.k AS k, f.ts AS fts, f.v AS fv, q.ts AS qts, q.v AS qv, ROW_NUMBER() OVER (PARTITION BY f.v ORDER BY q.ts DESC NULLS LAST) AS rn FROM a f LEFT JOIN b q ON f.k = q.k AND q.ts <= f.ts) WHERE rn = 1";

/// The temporal join as a batch query: the latest version at or before each order.
/// ASOF forward within 1500 ms and nearest within 500 ms (ties to the earlier row), each with
/// its batch query.
const ASOF_MORE: [(&str, &str); 2] = [
    (
        "SELECT f.k, f.ts AS fts, f.v AS fv, q.ts AS qts, q.v AS qv FROM a f ASOF LEFT JOIN b q MATCH_CONDITION(f.ts <= q.ts AND q.ts - f.ts <= 1500) ON f.k = q.k",
        "SELECT k, fts, fv, qts, qv FROM (SELECT f.k AS k, f.ts AS fts, f.v AS fv, q.ts AS qts, q.v AS qv, ROW_NUMBER() OVER (PARTITION BY f.v ORDER BY q.ts ASC NULLS LAST) AS rn FROM a f LEFT JOIN b q ON f.k = q.k AND q.ts >= f.ts AND q.ts - f.ts <= 1500) WHERE rn = 1",
    ),
    (
        "SELECT f.k, f.ts AS fts, f.v AS fv, q.ts AS qts, q.v AS qv FROM a f ASOF LEFT JOIN b q MATCH_CONDITION(NEAREST(f.ts, q.ts, 500)) ON f.k = q.k",
        "SELECT k, fts, fv, qts, qv FROM (SELECT f.k AS k, f.ts AS fts, f.v AS fv, q.ts AS qts, q.v AS qv, ROW_NUMBER() OVER (PARTITION BY f.v ORDER BY abs(q.ts - f.ts) ASC NULLS LAST, q.ts ASC) AS rn FROM a f LEFT JOIN b q ON f.k = q.k AND abs(q.ts - f.ts) <= 500) WHERE rn = 1",
    ),
];

const TEMPORAL_BATCH: &str = "SELECT k, ots, ov, rv FROM (SELECT o.k AS k, o.ts AS ots, o.v AS ov, r.v AS rv, ROW_NUMBER() OVER (PARTITION BY o.v ORDER BY r.ts DESC) AS rn FROM a o JOIN b r ON o.k = r.k AND r.ts <= o.ts) WHERE rn = 1";

const TEMPORAL: &str = "SELECT o.k, o.ts AS ots, o.v AS ov, r.v AS rv FROM a o JOIN b FOR SYSTEM_TIME AS OF o.ts AS r ON o.k = r.k";

const LOOKUPS: [&str; 2] = [
    "SELECT s.k, s.v, t.name FROM a s LEFT JOIN t ON s.k = t.k",
    "SELECT s.k, s.v, t.name FROM a s JOIN t ON s.k = t.k",
];

fn interval_sql(join_type: &str) -> String {
    format!(
        "SELECT o.k, o.ts AS ots, o.v AS ov, p.ts AS pts, p.v AS pv FROM a o {join_type} JOIN b p ON o.k = p.k AND p.ts BETWEEN o.ts - 1000 AND o.ts + 3000"
    )
}

/// One source row `(k, ts, v)`; `v` numbers the rows, so every row is distinguishable.
type Row = (Option<i64>, i64, i64);

/// One table row `(k, name)`.
type TableRow = (i64, Option<String>);

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, true),
        Field::new("ts", DataType::Int64, false),
        Field::new("v", DataType::Int64, false),
    ]))
}

fn to_batch(input: &[Row]) -> RecordBatch {
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int64Array::from(
                input.iter().map(|r| r.0).collect::<Vec<_>>(),
            )) as ArrayRef,
            Arc::new(Int64Array::from(
                input.iter().map(|r| r.1).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from(
                input.iter().map(|r| r.2).collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap()
}

/// The final contents of table `t` as a batch.
fn table_batch(table: &BTreeMap<i64, Option<String>>) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(table.keys().copied().collect::<Vec<_>>())) as ArrayRef,
            Arc::new(StringArray::from(
                table.values().cloned().collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap()
}

/// Rows in push order: event times advance by random steps (`clock`) and each is displaced
/// back by less than `DELAY`. Every earlier row has ts <= its clock <= this row's clock, so
/// this row's ts > (max ts pushed so far) - DELAY: it is never behind its source's watermark.
fn on_time_rows(raw: Vec<(Option<i64>, i64, i64)>, first_v: i64) -> Vec<Row> {
    let mut clock = 0;
    raw.into_iter()
        .enumerate()
        .map(|(i, (k, step, back))| {
            clock += step;
            (k, (clock - back).max(0), first_v + i as i64)
        })
        .collect()
}

/// 30..200 rows over roughly 0..20 s, keys from `keys` (5% NULL).
fn rows_strategy(keys: RangeInclusive<i64>, first_v: i64) -> impl Strategy<Value = Vec<Row>> {
    proptest::collection::vec(
        (
            proptest::option::weighted(0.95, keys),
            0i64..200,
            // Half the rows arrive nearly as late as allowed: they meet the other side's
            // state right at its expiry bound.
            prop_oneof![0i64..DELAY, (DELAY - 500)..DELAY],
        ),
        30..200,
    )
    .prop_map(move |raw| on_time_rows(raw, first_v))
}

/// Keeps the first row of each `(k, ts)` pair. Dropping rows never makes a later row late
/// (the maximum before it can only decrease).
fn unique_key_times(input: &[Row]) -> Vec<Row> {
    let mut seen = HashSet::new();
    input
        .iter()
        .filter(|r| seen.insert((r.0, r.1)))
        .copied()
        .collect()
}

/// How the inputs reach the database.
#[derive(Debug, Clone)]
struct Schedule {
    /// Cut points (modulo the row count) splitting each source's rows into batches.
    cuts: [Vec<usize>; 2],
    /// Per push (cyclic): false = the next batch of `a`, true = of `b` (the other source when
    /// that one has no batches left).
    order: Vec<bool>,
    /// Per push: follow it with a manual watermark `max ts pushed - DELAY` on that source.
    marks: Vec<bool>,
    /// Per push: wait until the pipeline is idle afterwards.
    pauses: Vec<bool>,
    /// Worker threads.
    workers: usize,
}

fn schedule_strategy() -> impl Strategy<Value = Schedule> {
    (
        // Up to 40 cuts: batches as small as a few rows, so watermarks move often and one
        // source can run ahead of the other.
        proptest::collection::vec(0usize..1000, 0..40),
        proptest::collection::vec(0usize..1000, 0..40),
        proptest::collection::vec(any::<bool>(), 0..48),
        proptest::collection::vec(any::<bool>(), 0..48),
        proptest::collection::vec(proptest::bool::weighted(0.15), 0..48),
        1usize..=2,
    )
        .prop_map(|(cuts_a, cuts_b, order, marks, pauses, workers)| Schedule {
            cuts: [cuts_a, cuts_b],
            order,
            marks,
            pauses,
            workers,
        })
}

/// Non-empty consecutive batches of `input`, cut at `cuts` (as in `differential_windows`).
fn split<'r>(input: &'r [Row], cuts: &[usize]) -> VecDeque<&'r [Row]> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    at.push(0);
    at.push(input.len());
    at.sort_unstable();
    at.dedup();
    at.windows(2).map(|w| &input[w[0]..w[1]]).collect()
}

fn flag(flags: &[bool], step: usize) -> bool {
    flags.get(step).copied().unwrap_or(false)
}

/// The source whose batch is pushed at `step`, or `None` when every batch was pushed.
fn next_source(pending: &[VecDeque<&[Row]>], order: &[bool], step: usize) -> Option<usize> {
    let wanted = if order.is_empty() {
        0
    } else {
        usize::from(order[step % order.len()]) % pending.len()
    };
    if !pending[wanted].is_empty() {
        return Some(wanted);
    }
    (0..pending.len()).find(|&s| !pending[s].is_empty())
}

/// What the streams of one run did.
struct Run {
    /// Rows each stream emitted, in the order of the stream names given.
    emitted: Vec<Vec<Vec<String>>>,
    /// Late rows each stream dropped.
    late_dropped: Vec<u64>,
    /// Rows each stream holds in state at the end.
    state_rows: Vec<u64>,
}

fn execute_all(db: &LaminarDB, statements: &[String]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for sql in statements {
            if let Err(e) = db.execute(sql).await {
                panic!("{sql}: {e}");
            }
        }
    });
}

fn create_stream(name: &str, query: &str) -> String {
    format!("CREATE STREAM {name} AS {query}")
}

/// Runs `statements` (DDL, table inserts), subscribes to `streams`, pushes `inputs` (source
/// name, rows in push order; at most two sources) as `schedule` says, moves every source's
/// watermark to `END`, and collects what each stream emitted.
fn streaming(
    statements: &[String],
    streams: &[&str],
    inputs: &[(&str, &[Row])],
    schedule: &Schedule,
) -> Run {
    assert!(!inputs.is_empty() && inputs.len() <= 2);
    let db = LaminarDB::builder()
        .workers(schedule.workers)
        .build_sync()
        .unwrap();
    execute_all(&db, statements);
    let mut subs: Vec<_> = streams
        .iter()
        .map(|s| db.subscribe_arrow(s).unwrap())
        .collect();
    let handles: Vec<_> = inputs
        .iter()
        .map(|(name, _)| db.source_untyped(name).unwrap())
        .collect();
    let mut pending: Vec<VecDeque<&[Row]>> = inputs
        .iter()
        .zip(&schedule.cuts)
        .map(|((_, input), cuts)| split(input, cuts))
        .collect();
    let mut high = vec![0i64; inputs.len()];
    let mut step = 0;
    while let Some(s) = next_source(&pending, &schedule.order, step) {
        let batch = pending[s].pop_front().expect("non-empty");
        handles[s].push_arrow(to_batch(batch)).unwrap();
        high[s] = batch.iter().map(|r| r.1).fold(high[s], i64::max);
        if flag(&schedule.marks, step) {
            // Never past what the data allows: equal to the generated watermark.
            handles[s].watermark(high[s] - DELAY).unwrap();
        }
        if flag(&schedule.pauses, step) {
            assert!(db.wait_idle(WAIT));
        }
        step += 1;
    }
    for h in &handles {
        h.watermark(END).unwrap();
    }
    assert!(db.wait_idle(WAIT));
    let emitted = subs
        .iter_mut()
        .map(|sub| {
            let mut batches = Vec::new();
            while let Some(b) = sub.poll() {
                batches.push(b);
            }
            rows(&batches)
        })
        .collect();
    assert!(db.failures().is_empty(), "{:?}", db.failures());
    let metrics: Vec<_> = streams
        .iter()
        .map(|s| db.stream_metrics(s).unwrap())
        .collect();
    db.shutdown_sync();
    Run {
        emitted,
        late_dropped: metrics.iter().map(|m| m.late_dropped).collect(),
        state_rows: metrics.iter().map(|m| m.state_rows).collect(),
    }
}

/// Runs `query` with DataFusion batch execution over the given tables.
fn batch_sql(tables: &[(&str, RecordBatch)], query: &str) -> Vec<Vec<String>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let ctx = datafusion::prelude::SessionContext::new();
        for (name, batch) in tables {
            let mem = datafusion::datasource::MemTable::try_new(
                batch.schema(),
                vec![vec![batch.clone()]],
            )
            .unwrap();
            ctx.register_table(*name, Arc::new(mem)).unwrap();
        }
        let out = ctx.sql(query).await.unwrap().collect().await.unwrap();
        rows(&out)
    })
}

/// Compares two multisets of rows, reporting the differences.
fn same_rows(
    what: &str,
    got: Vec<Vec<String>>,
    want: Vec<Vec<String>>,
) -> Result<(), TestCaseError> {
    let mut count: BTreeMap<Vec<String>, i64> = BTreeMap::new();
    for row in want {
        *count.entry(row).or_insert(0) += 1;
    }
    for row in got {
        *count.entry(row).or_insert(0) -= 1;
    }
    let missing: Vec<_> = count.iter().filter(|(_, n)| **n > 0).collect();
    let unexpected: Vec<_> = count.iter().filter(|(_, n)| **n < 0).collect();
    prop_assert!(
        missing.is_empty() && unexpected.is_empty(),
        "{}\nmissing (row, count): {:?}\nunexpected (row, -count): {:?}",
        what,
        missing,
        unexpected
    );
    Ok(())
}

fn no_late_rows(run: &Run, streams: &[&str]) -> Result<(), TestCaseError> {
    for (name, late) in streams.iter().zip(&run.late_dropped) {
        prop_assert_eq!(
            *late,
            0,
            "stream {} dropped late rows: the generated input is not on time",
            name
        );
    }
    Ok(())
}

fn check_interval(a: &[Row], b: &[Row], schedule: &Schedule) -> Result<(), TestCaseError> {
    let queries: Vec<String> = INTERVAL_JOIN_TYPES
        .iter()
        .map(|t| interval_sql(t))
        .collect();
    let names = ["q_inner", "q_left", "q_right", "q_full"];
    let mut statements: Vec<String> = SOURCES.iter().map(|s| s.to_string()).collect();
    statements.extend(
        names
            .iter()
            .zip(&queries)
            .map(|(name, q)| create_stream(name, q)),
    );
    let run = streaming(&statements, &names, &[("a", a), ("b", b)], schedule);
    no_late_rows(&run, &names)?;
    let tables = [("a", to_batch(a)), ("b", to_batch(b))];
    for (i, query) in queries.iter().enumerate() {
        same_rows(
            &format!("{query} (workers {})", schedule.workers),
            run.emitted[i].clone(),
            batch_sql(&tables, query),
        )?;
        prop_assert_eq!(
            run.state_rows[i],
            0,
            "{} holds state after both watermarks passed every bound",
            query
        );
    }
    Ok(())
}

fn check_asof(a: &[Row], b: &[Row], schedule: &Schedule) -> Result<(), TestCaseError> {
    let b = unique_key_times(b);
    let mut statements: Vec<String> = SOURCES.iter().map(|s| s.to_string()).collect();
    let cases: Vec<(&str, &str)> = std::iter::once((ASOF, ASOF_BATCH))
        .chain(ASOF_MORE)
        .collect();
    let names = ["q0", "q1", "q2"];
    for (name, (query, _)) in names.iter().zip(&cases) {
        statements.push(create_stream(name, query));
    }
    let run = streaming(
        &statements,
        &names,
        &[("a", a), ("b", b.as_slice())],
        schedule,
    );
    no_late_rows(&run, &names)?;
    // The batch answer: per left row (v is unique), the joined right row the ORDER BY of the
    // batch query puts first.
    let tables = [("a", to_batch(a)), ("b", to_batch(&b))];
    for (i, (query, batch)) in cases.iter().enumerate() {
        same_rows(
            &format!("{query} (workers {})", schedule.workers),
            run.emitted[i].clone(),
            batch_sql(&tables, batch),
        )?;
    }
    Ok(())
}

fn check_temporal(a: &[Row], b: &[Row], schedule: &Schedule) -> Result<(), TestCaseError> {
    let b = unique_key_times(b);
    let mut statements: Vec<String> = SOURCES.iter().map(|s| s.to_string()).collect();
    statements.push(create_stream("q", TEMPORAL));
    let run = streaming(
        &statements,
        &["q"],
        &[("a", a), ("b", b.as_slice())],
        schedule,
    );
    no_late_rows(&run, &["q"])?;
    let tables = [("a", to_batch(a)), ("b", to_batch(&b))];
    let want = batch_sql(&tables, TEMPORAL_BATCH);
    same_rows(
        &format!("{TEMPORAL} (workers {})", schedule.workers),
        run.emitted[0].clone(),
        want,
    )
}

/// `INSERT INTO t VALUES ...` statements of up to `chunk` rows each, in order.
fn insert_statements(table: &[TableRow], chunk: usize) -> Vec<String> {
    table
        .chunks(chunk.max(1))
        .map(|rows| {
            let values: Vec<String> = rows
                .iter()
                .map(|(k, name)| match name {
                    Some(n) => format!("({k}, '{n}')"),
                    None => format!("({k}, NULL)"),
                })
                .collect();
            format!("INSERT INTO t VALUES {}", values.join(", "))
        })
        .collect()
}

fn check_lookup(
    a: &[Row],
    table: &[TableRow],
    chunk: usize,
    insert_first: bool,
    schedule: &Schedule,
) -> Result<(), TestCaseError> {
    let names = ["q_left", "q_inner"];
    let mut statements = vec![
        "CREATE TABLE t (k BIGINT PRIMARY KEY, name VARCHAR)".to_string(),
        SOURCES[0].to_string(),
    ];
    let streams: Vec<String> = names
        .iter()
        .zip(LOOKUPS)
        .map(|(name, q)| create_stream(name, q))
        .collect();
    // The table is filled before any stream row is pushed, before or after the streams are
    // created.
    if insert_first {
        statements.extend(insert_statements(table, chunk));
        statements.extend(streams);
    } else {
        statements.extend(streams);
        statements.extend(insert_statements(table, chunk));
    }
    let run = streaming(&statements, &names, &[("a", a)], schedule);
    no_late_rows(&run, &names)?;
    // Upserts: the last row of a key wins.
    let mut current: BTreeMap<i64, Option<String>> = BTreeMap::new();
    for (k, name) in table {
        current.insert(*k, name.clone());
    }
    let tables = [("a", to_batch(a)), ("t", table_batch(&current))];
    for (i, query) in LOOKUPS.iter().enumerate() {
        same_rows(
            &format!(
                "{query} (workers {}, inserted before CREATE STREAM: {insert_first})",
                schedule.workers
            ),
            run.emitted[i].clone(),
            batch_sql(&tables, query),
        )?;
    }
    Ok(())
}

fn cases() -> u32 {
    proptest_cases(64)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn interval_joins_equal_batch(
        a in rows_strategy(1..=5, 0),
        b in rows_strategy(2..=6, 100_000),
        schedule in schedule_strategy(),
    ) {
        check_interval(&a, &b, &schedule)?;
    }

    #[test]
    fn asof_joins_equal_batch(
        a in rows_strategy(1..=5, 0),
        b in rows_strategy(2..=6, 100_000),
        schedule in schedule_strategy(),
    ) {
        check_asof(&a, &b, &schedule)?;
    }

    #[test]
    fn temporal_join_equals_latest_version(
        a in rows_strategy(1..=5, 0),
        b in rows_strategy(2..=6, 100_000),
        schedule in schedule_strategy(),
    ) {
        check_temporal(&a, &b, &schedule)?;
    }

    #[test]
    fn lookup_join_equals_batch(
        a in rows_strategy(1..=5, 0),
        table in proptest::collection::vec(
            (1i64..=6, proptest::option::weighted(0.8, "[a-z]{1,3}")),
            0..12,
        ),
        chunk in 1usize..5,
        insert_first in any::<bool>(),
        schedule in schedule_strategy(),
    ) {
        check_lookup(&a, &table, chunk, insert_first, &schedule)?;
    }
}

/// Every join once over a fixed input with disorder, NULL keys and many splits, on 1 and 2
/// workers (deterministic).
#[test]
fn every_join_on_a_fixed_input() {
    let a = on_time_rows(
        (0..150i64)
            .map(|i| {
                let k = if i % 37 == 5 { None } else { Some(i % 5 + 1) };
                (k, 120, (i * 7919) % (DELAY - 1))
            })
            .collect(),
        0,
    );
    let b = on_time_rows(
        (0..140i64)
            .map(|i| {
                let k = if i % 41 == 7 {
                    None
                } else {
                    Some((i * 3) % 5 + 2)
                };
                (k, 130, (i * 104_729) % (DELAY - 1))
            })
            .collect(),
        100_000,
    );
    let table: Vec<TableRow> = vec![
        (1, Some("x".to_string())),
        (3, None),
        (4, Some("y".to_string())),
        (1, Some("z".to_string())),
        (6, Some("w".to_string())),
    ];
    for workers in [1, 2] {
        let schedule = Schedule {
            cuts: [vec![17, 60, 61, 149], vec![5, 90, 120]],
            order: vec![true, false, false, true, true, false],
            marks: vec![true, false, true],
            pauses: vec![false, true, false, false, true],
            workers,
        };
        check_interval(&a, &b, &schedule).unwrap();
        check_asof(&a, &b, &schedule).unwrap();
        check_temporal(&a, &b, &schedule).unwrap();
        check_lookup(&a, &table, 2, workers == 1, &schedule).unwrap();
    }
}
