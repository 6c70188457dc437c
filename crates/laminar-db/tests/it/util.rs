//! Shared helpers: batches as text rows, DataFusion batch queries, proptest case counts.

use arrow::array::Array;
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};

/// Rows of the batches as text, NULL as `NULL`.
pub fn rows(batches: &[RecordBatch]) -> Vec<Vec<String>> {
    let options = FormatOptions::default().with_null("NULL");
    let mut out = Vec::new();
    for batch in batches {
        let formatters: Vec<_> = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).unwrap())
            .collect();
        for row in 0..batch.num_rows() {
            out.push(
                formatters
                    .iter()
                    .zip(batch.columns())
                    .map(|(f, c)| {
                        if c.is_null(row) {
                            "NULL".to_string()
                        } else {
                            f.value(row).to_string()
                        }
                    })
                    .collect(),
            );
        }
    }
    out
}

/// `PROPTEST_CASES` from the environment, else `default`.
/// Runs each statement and waits until the database is idle after it.
pub fn execute_each(db: &laminar_db::LaminarDB, statements: &[&str]) {
    for sql in statements {
        block_on(db.execute(sql)).unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert!(db.wait_idle(std::time::Duration::from_secs(20)));
    }
}

/// A database storing its state under `dir` with `workers` workers and checkpoints taken only
/// by `checkpoint()`, after running `setup` (the statements that define its objects).
pub fn durable_db(dir: &std::path::Path, workers: usize, setup: &str) -> laminar_db::LaminarDB {
    let db = open_durable(dir, workers);
    block_on(db.execute(setup)).unwrap();
    db
}

/// A database keeping checkpoints (taken only when asked) in `dir`, with no objects yet.
pub fn open_durable(dir: &std::path::Path, workers: usize) -> laminar_db::LaminarDB {
    laminar_db::LaminarDB::builder()
        .workers(workers)
        .storage_dir(dir)
        .checkpoint_interval(None)
        .unwrap()
        .build_sync()
        .unwrap()
}

pub fn proptest_cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `query` with DataFusion batch execution over `batch` registered as `table`.
pub fn batch_query(table: &str, batch: RecordBatch, query: &str) -> Vec<Vec<String>> {
    batch_query_tables(vec![(table, batch)], query)
}

/// Runs `query` in DataFusion over the given tables.
pub fn batch_query_tables(tables: Vec<(&str, RecordBatch)>, query: &str) -> Vec<Vec<String>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let ctx = datafusion::prelude::SessionContext::new();
        for (table, batch) in tables {
            let mem = datafusion::datasource::MemTable::try_new(batch.schema(), vec![vec![batch]])
                .unwrap();
            ctx.register_table(table, std::sync::Arc::new(mem)).unwrap();
        }
        let out = ctx.sql(query).await.unwrap().collect().await.unwrap();
        rows(&out)
    })
}

/// Consolidates a changelog (rows whose last column is `_op`) by weight into the rows it
/// leaves; a weight below zero fails the test.
pub fn consolidate_changelog(changelog: impl IntoIterator<Item = Vec<String>>) -> Vec<Vec<String>> {
    let mut weights: std::collections::BTreeMap<Vec<String>, i64> = Default::default();
    for mut row in changelog {
        let op = row.pop().expect("_op column");
        let weight = match op.as_str() {
            "I" | "U+" | "r" => 1,
            "D" | "U-" => -1,
            other => panic!("invalid _op {other}"),
        };
        *weights.entry(row).or_insert(0) += weight;
    }
    let mut out = Vec::new();
    for (row, weight) in weights {
        assert!(weight >= 0, "negative weight {weight} for {row:?}");
        out.extend(std::iter::repeat_n(row, weight as usize));
    }
    out
}

/// Runs a future to completion on a current-thread runtime.
pub fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

/// Runs a snapshot query once everything pushed so far is processed (20 s at most).
pub fn select(db: &laminar_db::LaminarDB, sql: &str) -> Vec<Vec<String>> {
    assert!(db.wait_idle(std::time::Duration::from_secs(20)));
    match block_on(db.execute(sql)).unwrap() {
        laminar_db::ExecuteResult::Metadata(b) => rows(&[b]),
        _ => panic!("expected rows from {sql}"),
    }
}

/// Runs a snapshot query at once (while changes may still be on their way).
pub fn select_now(db: &laminar_db::LaminarDB, sql: &str) -> Vec<Vec<String>> {
    match block_on(db.execute(sql)).unwrap() {
        laminar_db::ExecuteResult::Metadata(b) => rows(&[b]),
        _ => panic!("expected rows from {sql}"),
    }
}

/// The rows, sorted.
pub fn sorted(mut v: Vec<Vec<String>>) -> Vec<Vec<String>> {
    v.sort();
    v
}

/// Batch boundaries for `len` input rows from random split points: the points modulo
/// `len + 1`, with 0 and `len`, sorted and without repeats.
pub fn cut_points(splits: &[usize], len: usize) -> Vec<usize> {
    let mut cuts: Vec<usize> = splits.iter().map(|s| s % (len + 1)).collect();
    cuts.extend([0, len]);
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}

/// A database with `workers` workers, a source created by `source_sql` and named `source`,
/// and `CREATE STREAM q AS <query>`; with a subscription to `q` and the source's handle.
pub fn stream_under_test(
    workers: usize,
    source_sql: &str,
    source: &str,
    query: &str,
) -> (
    laminar_db::LaminarDB,
    laminar_db::ArrowSubscription,
    laminar_db::SourceHandle,
) {
    let db = laminar_db::LaminarDB::builder()
        .workers(workers)
        .build_sync()
        .unwrap();
    block_on(db.execute(source_sql)).unwrap();
    block_on(db.execute(&format!("CREATE STREAM q AS {query}"))).unwrap();
    let sub = db.subscribe_arrow("q").unwrap();
    let src = db.source_untyped(source).unwrap();
    (db, sub, src)
}

/// Waits until `db` is idle and returns every row `sub` received; fails the test on any
/// query failure.
pub fn received_rows(
    db: &laminar_db::LaminarDB,
    sub: &mut laminar_db::ArrowSubscription,
) -> Vec<Vec<String>> {
    assert!(db.wait_idle(std::time::Duration::from_secs(20)));
    let mut batches = Vec::new();
    while let Some(b) = sub.poll() {
        batches.push(b);
    }
    assert!(db.failures().is_empty(), "{:?}", db.failures());
    rows(&batches)
}
