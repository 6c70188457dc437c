//! Materialized-view workloads: an updating aggregation view with many groups, fed as fast
//! as it takes changes, then at a fixed rate while change-to-subscriber latency is measured,
//! and ad-hoc `SELECT`s on the view (a point lookup and a full-scan aggregate) while it keeps
//! changing.
//!
//! The view is `SELECT k, COUNT(*) AS n, MAX(t) AS last FROM changes GROUP BY k`: every input
//! row updates its group, so the view receives a `U-`/`U+` pair (or an `I`) per row. `t` is
//! the row's push time in microseconds, so a subscriber reads each change's latency off its
//! `last` column.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Result, bail};
use arrow::array::{ArrayRef, AsArray, Int64Array};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use laminar_bench::{block_on, quantile};
use laminar_db::{ExecuteResult, LaminarDB};

use super::Report;

#[derive(clap::Args, Debug)]
pub(crate) struct ViewArgs {
    /// Distinct groups (keys) of the view.
    #[arg(long, default_value_t = 1_000_000)]
    groups: i64,
    /// Changes pushed in the throughput phase (the first `groups` create the groups).
    #[arg(long, default_value_t = 10_000_000)]
    events: u64,
    /// Rows per pushed batch.
    #[arg(long, default_value_t = 8192)]
    batch_size: usize,
    /// Offered rate of the latency phase, in changes per second.
    #[arg(long, default_value_t = 200_000)]
    rate: u64,
    /// Rows per batch in the latency phase.
    #[arg(long, default_value_t = 1000)]
    latency_batch: usize,
    /// Duration of the latency phase, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Ad-hoc queries of each kind run while the view keeps changing.
    #[arg(long, default_value_t = 200)]
    queries: usize,
    /// Worker threads of the engine.
    #[arg(long, default_value_t = 1)]
    workers: usize,
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("t", DataType::Int64, false),
    ]))
}

/// Keys `from..from + rows` (modulo `groups`), all stamped with `t`.
fn batch(schema: &SchemaRef, from: u64, rows: usize, groups: i64, t: i64) -> Result<RecordBatch> {
    // A multiplicative stride spreads consecutive rows over the groups.
    let keys: Vec<i64> = (0..rows as u64)
        .map(|i| ((from + i).wrapping_mul(2_654_435_761) % groups as u64) as i64)
        .collect();
    Ok(RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from(keys)) as ArrayRef,
            Arc::new(Int64Array::from(vec![t; rows])),
        ],
    )?)
}

fn select(db: &LaminarDB, sql: &str) -> Result<RecordBatch> {
    match block_on(db.execute(sql))? {
        ExecuteResult::Metadata(b) => Ok(b),
        _ => bail!("{sql}: expected rows"),
    }
}

/// Runs `sql` `n` times; latencies in microseconds, sorted.
fn time_queries(db: &LaminarDB, sql: &str, n: usize) -> Result<Vec<u64>> {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let rows = select(db, sql)?;
        times.push(started.elapsed().as_micros() as u64);
        if rows.num_rows() == 0 {
            bail!("{sql}: no rows");
        }
    }
    times.sort_unstable();
    Ok(times)
}

fn report_times(r: &mut Report, name: &str, times: &[u64]) {
    for (q, label) in [(0.5, "p50"), (0.99, "p99")] {
        if let Some(v) = quantile(times, q) {
            r.int(&format!("{name}_{label}_us"), v, "us");
        }
    }
}

pub(crate) fn run(args: &ViewArgs) -> Result<Report> {
    if args.groups <= 0 {
        bail!("--groups must be positive");
    }
    let mut r = Report::default();
    r.text("workload", "view");
    r.text("profile", super::build_profile());
    r.int("groups", args.groups as u64, "");
    r.int("workers", args.workers as u64, "");
    let db = LaminarDB::builder().workers(args.workers).build_sync()?;
    block_on(db.execute(
        "CREATE SOURCE changes (k BIGINT NOT NULL, t BIGINT NOT NULL); \
         CREATE MATERIALIZED VIEW agg AS SELECT k, COUNT(*) AS n, MAX(t) AS last FROM changes GROUP BY k",
    ))?;
    let source = db.source_untyped("changes")?;
    let schema = schema();

    // Throughput: as fast as the view takes changes.
    let batches: Vec<RecordBatch> = (0..args.events.div_ceil(args.batch_size as u64))
        .map(|i| {
            let from = i * args.batch_size as u64;
            let rows = (args.events - from).min(args.batch_size as u64) as usize;
            batch(&schema, from, rows, args.groups, 0)
        })
        .collect::<Result<_>>()?;
    let started = Instant::now();
    for b in batches {
        source.push_arrow(b)?;
    }
    if !db.wait_idle(Duration::from_secs(600)) {
        bail!("the view did not catch up within 600 s");
    }
    let elapsed = started.elapsed();
    super::fail_on_failures(&db)?;
    r.float(
        "changes_per_second",
        args.events as f64 / elapsed.as_secs_f64(),
        "changes/s",
    );
    let count = select(&db, "SELECT COUNT(*) AS c, SUM(n) AS s FROM agg")?;
    let view_rows = count.column(0).as_primitive::<Int64Type>().value(0);
    let summed = count.column(1).as_primitive::<Int64Type>().value(0);
    if summed as u64 != args.events {
        bail!(
            "the view counts {summed} changes, {} were pushed",
            args.events
        );
    }
    r.int("view_rows", view_rows as u64, "");

    // Ad-hoc queries on an idle view.
    let lookup = "SELECT n, last FROM agg WHERE k = 4242";
    let scan = "SELECT COUNT(*) AS c, SUM(n) AS s, MAX(last) AS m FROM agg";
    report_times(
        &mut r,
        "idle_point_lookup",
        &time_queries(&db, lookup, args.queries)?,
    );
    report_times(
        &mut r,
        "idle_scan_aggregate",
        &time_queries(&db, scan, args.queries)?,
    );

    // Latency at a fixed rate, with a subscriber.
    let mut sub = db.subscribe_arrow("agg")?;
    let pusher = spawn_pusher(args, &source, &schema, 0);
    let mut latencies = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(args.seconds + 5);
    while Instant::now() < deadline && !pusher.is_finished() {
        if let Some(b) = sub.recv_timeout(Duration::from_millis(100))? {
            let now = now_us();
            let last = b
                .column_by_name("last")
                .map(|c| c.as_primitive::<Int64Type>().clone());
            let ops = b
                .column_by_name("_op")
                .map(|c| c.as_string::<i32>().clone());
            if let (Some(last), Some(ops)) = (last, ops) {
                for i in 0..b.num_rows() {
                    if ops.value(i) != "U-" && last.value(i) > 0 {
                        latencies.push((now - last.value(i)).max(0) as u64);
                    }
                }
            }
        }
    }
    let pushed = pusher
        .join()
        .map_err(|_| anyhow::anyhow!("the pusher panicked"))??;
    drop(sub);
    super::fail_on_failures(&db)?;
    latencies.sort_unstable();
    r.int("latency_phase_changes", pushed, "");
    r.int("offered_rate", args.rate, "changes/s");
    report_times(&mut r, "change_to_subscriber", &latencies);

    // Ad-hoc queries while the view keeps changing at the same rate.
    let pusher = spawn_pusher(args, &source, &schema, pushed);
    let lookups = time_queries(&db, lookup, args.queries)?;
    let scans = time_queries(&db, scan, args.queries)?;
    pusher
        .join()
        .map_err(|_| anyhow::anyhow!("the pusher panicked"))??;
    super::fail_on_failures(&db)?;
    report_times(&mut r, "busy_point_lookup", &lookups);
    report_times(&mut r, "busy_scan_aggregate", &scans);
    db.shutdown_sync();
    Ok(r)
}

/// Pushes `args.latency_batch`-row batches at `args.rate` changes/s for `args.seconds`,
/// each stamped with its push time; returns how many changes it pushed.
fn spawn_pusher(
    args: &ViewArgs,
    source: &laminar_db::SourceHandle,
    schema: &SchemaRef,
    first: u64,
) -> std::thread::JoinHandle<Result<u64>> {
    let schema = schema.clone();
    let (groups, rate, rows, seconds) = (args.groups, args.rate, args.latency_batch, args.seconds);
    let source = source.clone();
    std::thread::spawn(move || -> Result<u64> {
        let per_batch = Duration::from_secs_f64(rows as f64 / rate as f64);
        let started = Instant::now();
        let mut pushed = 0u64;
        let mut next = started;
        while started.elapsed() < Duration::from_secs(seconds) {
            source.push_arrow(batch(&schema, first + pushed, rows, groups, now_us())?)?;
            pushed += rows as u64;
            next += per_batch;
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        Ok(pushed)
    })
}
