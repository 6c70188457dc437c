//! `laminar-bench`: end-to-end LaminarDB workloads through the public API.
//!
//! ```text
//! laminar-bench projection --source memory --events 20000000 --workers 1
//! laminar-bench filter --source parquet --parquet /var/tmp/laminar-bids-10m.parquet
//! laminar-bench gen-parquet --events 10000000 --out /var/tmp/laminar-bids-10m.parquet
//! laminar-bench latency --rate 100000 --batch 100 --seconds 10
//! laminar-bench rss --events 100000000 [--workload tumble]
//! laminar-bench view --groups 1000000 --events 10000000 --rate 200000
//! ```
//!
//! Every run prints one `name: value` line per metric; `--json` adds one JSON line.

use std::fmt::Write as _;
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use arrow::array::{ArrayRef, AsArray, Int64Array};
use arrow::datatypes::Int64Type;
use arrow::record_batch::RecordBatch;
use clap::{Parser, Subcommand, ValueEnum};
use laminar_bench::{
    Consumer, SOURCE_COLUMNS, SOURCE_COLUMNS_NO_CHANNEL, Workload, block_on, declared_bids_schema,
    generate_bids, open_pipeline, open_pipeline_with, peak_rss_kb, quantile, rss_kb,
};
use laminar_db::LaminarDB;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

#[derive(Parser, Debug)]
#[command(
    name = "laminar-bench",
    about = "End-to-end LaminarDB benchmark workloads"
)]
struct Cli {
    /// Also print the results as one JSON line.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// `SELECT auction, bidder, price * 0.908 AS euro, ts FROM bids` into a BLACKHOLE sink.
    Projection(ThroughputArgs),
    /// `SELECT auction, price FROM bids WHERE auction % 123 = 0` into a BLACKHOLE sink.
    Filter(ThroughputArgs),
    /// 10 s tumbling window per auction (10,000 keys): COUNT, MAX, SUM, ON WINDOW CLOSE.
    Tumble(ThroughputArgs),
    /// 10 s / 2 s hopping window per auction: COUNT (Nexmark q5 shape).
    Hop(ThroughputArgs),
    /// 500 ms session window per bidder: COUNT, MAX.
    Session(ThroughputArgs),
    /// Window-close latency: watermark past a window's end -> its rows at a subscriber.
    WindowLatency(WindowLatencyArgs),
    /// Writes Nexmark-like bids to a Parquet file.
    GenParquet(GenParquetArgs),
    /// Push-to-subscriber latency of the projection at a fixed offered rate.
    Latency(LatencyArgs),
    /// Resident memory over a long run (re-pushing the same batches, event time advancing).
    Rss(RssArgs),
    /// Join throughput: lookup, q3, interval, asof, temporal or window (q8) join.
    Join(JoinArgs),
    /// Write-ahead log append throughput: Arrow IPC batches, synced by group commit.
    Wal(WalArgs),
    /// Checkpoints: duration and size for an aggregation with many groups, restore time,
    /// and the tumble workload's throughput with periodic checkpoints vs none.
    Checkpoint(CheckpointArgs),
    /// Materialized view: an updating aggregation with many groups (throughput, change-to-
    /// subscriber latency, ad-hoc SELECT latency while it changes).
    View(view_bench::ViewArgs),
    /// Kafka JSON source -> tumble aggregation -> Kafka JSON sink, against a running broker
    /// (build with `--features kafka`).
    #[cfg(feature = "kafka")]
    Kafka(kafka_bench::KafkaArgs),
    /// Produce-to-output latency through Kafka at a fixed rate, with the exactly-once (or
    /// at-least-once) Kafka sink and periodic checkpoints (build with `--features kafka`).
    #[cfg(feature = "kafka")]
    KafkaLatency(kafka_bench::KafkaLatencyArgs),
}

#[derive(clap::Args, Debug)]
struct CheckpointArgs {
    /// Groups of the checkpointed aggregation.
    #[arg(long, default_value_t = 1_000_000)]
    groups: u64,
    /// `window`: a tumbling window holding every group (vectorized state); `updating`: an
    /// unwindowed `EMIT CHANGES` aggregation (column-by-column changelog state).
    #[arg(long, value_enum, default_value = "window")]
    layout: CheckpointLayout,
    /// Events of the throughput comparison (tumble workload); 0 skips it.
    #[arg(long, default_value_t = 20_000_000)]
    events: u64,
    /// Checkpoint interval of the throughput comparison, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Storage directory (emptied first).
    #[arg(long, default_value = "/var/tmp/laminar-bench-checkpoint")]
    dir: PathBuf,
    /// Workers of the checkpointed aggregation (its parallel instances checkpoint and
    /// restore in parallel).
    #[arg(long, default_value_t = 1)]
    workers: usize,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum CheckpointLayout {
    Window,
    Updating,
}

#[derive(clap::Args, Debug)]
struct WalArgs {
    /// Events to append.
    #[arg(long, default_value_t = 10_000_000)]
    events: u64,
    /// Rows per record (one pushed batch per record).
    #[arg(long, default_value_t = 100)]
    batch_rows: usize,
    /// Group commit: sync when this many microseconds passed since the last sync (0 = sync
    /// after every record).
    #[arg(long, default_value_t = 1000)]
    commit_interval_us: u64,
    /// Directory of the log (emptied first).
    #[arg(long, default_value = "/var/tmp/laminar-wal-bench")]
    dir: PathBuf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum JoinKindArg {
    Lookup,
    Q3,
    Interval,
    Asof,
    Temporal,
    Window,
    Q4,
    Q6,
}

#[derive(clap::Args, Debug)]
struct JoinArgs {
    /// Which join.
    #[arg(long, value_enum)]
    kind: JoinKindArg,
    /// Stream events to push (all inputs together).
    #[arg(long, default_value_t = 10_000_000)]
    events: u64,
    /// Distinct events generated up front; more events re-push them with event time (and
    /// stream ids) shifted.
    #[arg(long, default_value_t = 4_000_000)]
    pool_events: u64,
    /// Rows per generated batch (before splitting between inputs).
    #[arg(long, default_value_t = 8192)]
    batch_size: usize,
    /// Worker threads of the engine.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Rows of the reference table (lookup, q3).
    #[arg(long, default_value_t = 1_000_000)]
    table_rows: u64,
    /// Generator seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Source queue bound in messages (`WITH (buffer_size = N)`; engine default when
    /// absent). A small bound keeps queued input out of the RSS readings.
    #[arg(long)]
    buffer_size: Option<usize>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SourceKind {
    /// Pre-generated Arrow batches pushed with `push_arrow`.
    Memory,
    /// A `FROM FILES (format = 'parquet')` source.
    Parquet,
}

#[derive(clap::Args, Debug)]
struct ThroughputArgs {
    /// Input: pushed from memory or read from a Parquet file.
    #[arg(long, value_enum, default_value = "memory")]
    source: SourceKind,
    /// Events to push (memory source; the Parquet source reads the whole file).
    #[arg(long, default_value_t = 10_000_000)]
    events: u64,
    /// Rows per pushed batch (memory source).
    #[arg(long, default_value_t = 8192)]
    batch_size: usize,
    /// Worker threads of the engine.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Parquet file (for `--source parquet`).
    #[arg(long, default_value = "/var/tmp/laminar-bids-10m.parquet")]
    parquet: PathBuf,
    /// Distinct events generated up front (memory source); more events re-push them.
    #[arg(long, default_value_t = 10_000_000)]
    pool_events: u64,
    /// Generator seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Declare the source without the `channel` column (which neither workload reads).
    #[arg(long)]
    without_channel: bool,
}

#[derive(clap::Args, Debug)]
struct WindowLatencyArgs {
    /// Open groups per window (distinct keys pushed into each window).
    #[arg(long, default_value_t = 100_000)]
    groups: i64,
    /// Windows measured (after 2 warm-up windows).
    #[arg(long, default_value_t = 50)]
    windows: usize,
    /// Worker threads of the engine.
    #[arg(long, default_value_t = 1)]
    workers: usize,
}

#[derive(clap::Args, Debug)]
struct GenParquetArgs {
    /// Number of bids.
    #[arg(long, default_value_t = 10_000_000)]
    events: u64,
    /// Output file.
    #[arg(long, default_value = "/var/tmp/laminar-bids-10m.parquet")]
    out: PathBuf,
    /// Rows per row group.
    #[arg(long, default_value_t = 1 << 20)]
    row_group_rows: usize,
    /// snappy | zstd | none.
    #[arg(long, default_value = "snappy")]
    compression: String,
    /// Generator seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

#[derive(clap::Args, Debug)]
struct LatencyArgs {
    /// Offered events per second.
    #[arg(long, default_value_t = 100_000)]
    rate: u64,
    /// Rows per pushed batch.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Seconds offered before measuring starts (not recorded).
    #[arg(long, default_value_t = 1)]
    warmup_seconds: u64,
    /// Worker threads of the engine.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Generator seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

#[derive(clap::Args, Debug)]
struct RssArgs {
    /// The query: projection (stateless) or a windowed aggregation.
    #[arg(long, value_enum, default_value = "projection")]
    workload: RssWorkload,
    /// Events to push in total.
    #[arg(long, default_value_t = 100_000_000)]
    events: u64,
    /// Rows per pushed batch.
    #[arg(long, default_value_t = 8192)]
    batch_size: usize,
    /// Distinct events generated up front and re-pushed in a loop.
    #[arg(long, default_value_t = 1 << 20)]
    pool_events: u64,
    /// Worker threads of the engine.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Sampling period in milliseconds.
    #[arg(long, default_value_t = 1000)]
    sample_ms: u64,
    /// Source queue bound in messages (engine default when absent). A small bound keeps the
    /// pusher from queueing input far ahead of the query, so RSS shows the query's state.
    #[arg(long)]
    buffer_size: Option<usize>,
    /// Generator seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum RssWorkload {
    Projection,
    Tumble,
    Hop,
    Session,
}

impl RssWorkload {
    fn workload(self) -> Workload {
        match self {
            RssWorkload::Projection => Workload::Projection,
            RssWorkload::Tumble => Workload::Tumble,
            RssWorkload::Hop => Workload::Hop,
            RssWorkload::Session => Workload::Session,
        }
    }
}

/// Metrics of one run, printed as `name: value unit` lines and optionally one JSON line.
#[derive(Default)]
struct Report {
    fields: Vec<(String, Value, &'static str)>,
}

enum Value {
    Int(u64),
    Float(f64),
    Text(String),
    List(Vec<u64>),
}

impl Report {
    fn int(&mut self, name: &str, v: u64, unit: &'static str) {
        self.fields.push((name.into(), Value::Int(v), unit));
    }
    fn float(&mut self, name: &str, v: f64, unit: &'static str) {
        self.fields.push((name.into(), Value::Float(v), unit));
    }
    fn text(&mut self, name: &str, v: impl Into<String>) {
        self.fields.push((name.into(), Value::Text(v.into()), ""));
    }
    fn list(&mut self, name: &str, v: Vec<u64>, unit: &'static str) {
        self.fields.push((name.into(), Value::List(v), unit));
    }

    fn print(&self, json: bool) {
        for (name, value, unit) in &self.fields {
            let v = match value {
                Value::Int(v) => v.to_string(),
                Value::Float(v) => format!("{v:.3}"),
                Value::Text(s) => s.clone(),
                Value::List(v) => v.iter().map(u64::to_string).collect::<Vec<_>>().join(" "),
            };
            if unit.is_empty() {
                println!("{name}: {v}");
            } else {
                println!("{name}: {v} {unit}");
            }
        }
        if json {
            let mut out = String::from("{");
            for (i, (name, value, _)) in self.fields.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "\"{}\":", escape(name));
                match value {
                    Value::Int(v) => {
                        let _ = write!(out, "{v}");
                    }
                    Value::Float(v) if v.is_finite() => {
                        let _ = write!(out, "{v}");
                    }
                    Value::Float(_) => out.push_str("null"),
                    Value::Text(s) => {
                        let _ = write!(out, "\"{}\"", escape(s));
                    }
                    Value::List(v) => {
                        let _ = write!(
                            out,
                            "[{}]",
                            v.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
                        );
                    }
                }
            }
            out.push('}');
            println!("{out}");
        }
    }
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// The same allocator as the `laminardb` binary (see its `main.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<()> {
    let cli = Cli::parse();
    let report = match cli.command {
        Command::Projection(args) => throughput(Workload::Projection, &args)?,
        Command::Filter(args) => throughput(Workload::Filter, &args)?,
        Command::Tumble(args) => throughput(Workload::Tumble, &args)?,
        Command::Hop(args) => throughput(Workload::Hop, &args)?,
        Command::Session(args) => throughput(Workload::Session, &args)?,
        Command::GenParquet(args) => gen_parquet(&args)?,
        Command::WindowLatency(args) => window_latency(&args)?,
        Command::Latency(args) => latency(&args)?,
        Command::Rss(args) => rss(&args)?,
        Command::Join(args) => join(&args)?,
        Command::Wal(args) => wal(&args)?,
        Command::Checkpoint(args) => checkpoint(&args)?,
        Command::View(args) => view_bench::run(&args)?,
        #[cfg(feature = "kafka")]
        Command::Kafka(args) => kafka_bench::run(&args)?,
        #[cfg(feature = "kafka")]
        Command::KafkaLatency(args) => kafka_bench::latency(&args)?,
    };
    report.print(cli.json);
    Ok(())
}

fn build_profile() -> &'static str {
    if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    }
}

fn fail_on_failures(db: &LaminarDB) -> Result<()> {
    let failures = db.failures();
    if !failures.is_empty() {
        bail!("the pipeline failed: {}", failures.join("; "));
    }
    Ok(())
}

/// Pushes `events` rows, cycling through `pool` (slicing the last batch); returns rows pushed.
/// Pushes `events` rows from `pool` (re-pushing it as needed). Each pass after the first shifts
/// the `ts` column by the pool's time span, so event time keeps advancing: windows keep
/// closing and no re-pushed row is late.
fn push_cycling(
    source: &laminar_db::SourceHandle,
    pool: &[RecordBatch],
    events: u64,
    mut on_push: impl FnMut(u64),
) -> Result<u64> {
    let pool_rows: u64 = pool.iter().map(|b| b.num_rows() as u64).sum();
    let span_ns = pool_rows as i64 * laminar_bench::TS_STEP_NS;
    let mut pushed = 0u64;
    let mut pass = 0i64;
    'outer: loop {
        for batch in pool {
            if pushed >= events {
                break 'outer;
            }
            let rows = (events - pushed).min(batch.num_rows() as u64) as usize;
            let batch = if rows == batch.num_rows() {
                batch.clone()
            } else {
                batch.slice(0, rows)
            };
            let batch = if pass == 0 {
                batch
            } else {
                shift_ts(&batch, pass * span_ns)?
            };
            source.push_arrow(batch)?;
            pushed += rows as u64;
            on_push(pushed);
        }
        if pool.is_empty() {
            break;
        }
        pass += 1;
    }
    Ok(pushed)
}

/// `batch` with its `ts` column moved `shift_ns` nanoseconds later (in the column's unit).
fn shift_ts(batch: &RecordBatch, shift_ns: i64) -> Result<RecordBatch> {
    use arrow::datatypes::{DataType, TimeUnit};
    let Ok(index) = batch.schema().index_of("ts") else {
        return Ok(batch.clone());
    };
    let column = batch.column(index);
    let data_type = column.data_type().clone();
    let shift = match &data_type {
        DataType::Timestamp(TimeUnit::Second, _) => shift_ns / 1_000_000_000,
        DataType::Timestamp(TimeUnit::Millisecond, _) | DataType::Int64 => shift_ns / 1_000_000,
        DataType::Timestamp(TimeUnit::Microsecond, _) => shift_ns / 1_000,
        DataType::Timestamp(TimeUnit::Nanosecond, _) => shift_ns,
        other => bail!("cannot shift a ts column of type {other}"),
    };
    let raw = arrow::compute::cast(column, &DataType::Int64)?;
    let shifted: Int64Array = raw.as_primitive::<Int64Type>().unary(|v: i64| v + shift);
    let shifted = arrow::compute::cast(&(Arc::new(shifted) as ArrayRef), &data_type)?;
    let mut columns = batch.columns().to_vec();
    columns[index] = shifted;
    Ok(RecordBatch::try_new(batch.schema(), columns)?)
}

fn throughput(workload: Workload, args: &ThroughputArgs) -> Result<Report> {
    let mut r = Report::default();
    r.text("workload", workload.name());
    r.text("sql", workload.sql());
    r.text("build", build_profile());
    r.int("workers", args.workers as u64, "");
    let columns = if args.without_channel {
        SOURCE_COLUMNS_NO_CHANNEL
    } else {
        SOURCE_COLUMNS
    };
    r.text("source_columns", columns);
    let (input_rows, elapsed, push_elapsed) = match args.source {
        SourceKind::Memory => {
            r.text("source", "memory");
            let db =
                open_pipeline_with(columns, args.workers, workload, None, Consumer::Blackhole)?;
            let source = db.source_untyped("bids")?;
            let pool_events = args.pool_events.min(args.events).max(1);
            let gen_started = Instant::now();
            let pool = generate_bids(&source.schema(), pool_events, args.batch_size, args.seed)?;
            r.float(
                "generate_seconds",
                gen_started.elapsed().as_secs_f64(),
                "s (not timed)",
            );
            r.int("pool_events", pool_events, "");
            r.int("batch_size", args.batch_size as u64, "rows");
            r.int("rss_before_run_kb", rss_kb().unwrap_or(0), "kB");
            let started = Instant::now();
            let pushed = push_cycling(&source, &pool, args.events, |_| {})?;
            // Close every window so the timed run includes emitting them.
            source.watermark(i64::MAX / 2)?;
            let push_elapsed = started.elapsed();
            if !db.wait_idle(Duration::from_secs(3600)) {
                bail!("the pipeline did not drain within an hour");
            }
            let elapsed = started.elapsed();
            fail_on_failures(&db)?;
            output_rows(&db, &mut r)?;
            db.shutdown_sync();
            (pushed, elapsed, Some(push_elapsed))
        }
        SourceKind::Parquet => {
            r.text("source", "parquet");
            let path = args
                .parquet
                .to_str()
                .context("the Parquet path is not UTF-8")?;
            if !args.parquet.exists() {
                bail!(
                    "{path} does not exist; create it with `laminar-bench gen-parquet --events 10000000 --out {path}`"
                );
            }
            r.text("parquet", path);
            let db = open_pipeline_with(
                columns,
                args.workers,
                workload,
                Some(path),
                Consumer::Blackhole,
            )?;
            r.int("rss_before_run_kb", rss_kb().unwrap_or(0), "kB");
            let started = Instant::now();
            block_on(db.start())?;
            while !db.is_finished() {
                if !db.failures().is_empty() {
                    break;
                }
                if started.elapsed() > Duration::from_secs(3600) {
                    bail!("the pipeline did not finish within an hour");
                }
                std::thread::sleep(Duration::from_micros(500));
            }
            let elapsed = started.elapsed();
            fail_on_failures(&db)?;
            let input = db.source_metrics("bids")?.total_events;
            output_rows(&db, &mut r)?;
            db.shutdown_sync();
            (input, elapsed, None)
        }
    };
    r.int("input_rows", input_rows, "rows");
    r.float("elapsed_seconds", elapsed.as_secs_f64(), "s");
    if let Some(p) = push_elapsed {
        r.float(
            "push_seconds",
            p.as_secs_f64(),
            "s (caller thread: validate + enqueue)",
        );
    }
    r.float(
        "events_per_second",
        input_rows as f64 / elapsed.as_secs_f64(),
        "events/s",
    );
    r.int("peak_rss_kb", peak_rss_kb().unwrap_or(0), "kB");
    Ok(r)
}

fn join(args: &JoinArgs) -> Result<Report> {
    use laminar_bench::joins::{JoinWorkload, generate};
    let workload = match args.kind {
        JoinKindArg::Lookup => JoinWorkload::Lookup,
        JoinKindArg::Q3 => JoinWorkload::Q3,
        JoinKindArg::Interval => JoinWorkload::Interval,
        JoinKindArg::Asof => JoinWorkload::Asof,
        JoinKindArg::Temporal => JoinWorkload::Temporal,
        JoinKindArg::Window => JoinWorkload::Window,
        JoinKindArg::Q4 => JoinWorkload::Q4,
        JoinKindArg::Q6 => JoinWorkload::Q6,
    };
    let mut r = Report::default();
    r.text("workload", format!("join-{}", workload.name()));
    r.text("sql", workload.sql());
    r.text("build", build_profile());
    r.int("workers", args.workers as u64, "");
    let db = LaminarDB::builder().workers(args.workers).build_sync()?;
    let setup = match args.buffer_size {
        Some(n) => workload.setup_sql().replace(
            "WATERMARK FOR ts AS ts)",
            &format!("WATERMARK FOR ts AS ts) WITH (buffer_size = {n})"),
        ),
        None => workload.setup_sql().to_string(),
    };
    if let Some(n) = args.buffer_size {
        r.int("source_buffer_size", n as u64, "messages");
    }
    block_on(db.execute(&setup))?;
    block_on(db.execute(&format!(
        "CREATE STREAM q AS {}; CREATE SINK out FROM q INTO BLACKHOLE",
        workload.sql()
    )))?;
    let gen_started = Instant::now();
    let pool_events = args.pool_events.min(args.events).max(1);
    let input = generate(
        workload,
        pool_events,
        args.batch_size,
        args.table_rows,
        args.seed,
    )?;
    r.float(
        "generate_seconds",
        gen_started.elapsed().as_secs_f64(),
        "s (not timed)",
    );
    if let Some((table, rows)) = &input.table {
        let load = Instant::now();
        db.table(table)?.upsert_arrow(rows.clone())?;
        r.int("table_rows", rows.num_rows() as u64, "rows");
        r.float(
            "table_load_seconds",
            load.elapsed().as_secs_f64(),
            "s (not timed)",
        );
    }
    // Stream-side ids that must not repeat across passes (keys into a table or symbols do).
    let shifted: &[&str] = match workload {
        JoinWorkload::Interval | JoinWorkload::Q4 | JoinWorkload::Q6 => &["id", "auction"],
        JoinWorkload::Window => &["id", "seller"],
        _ => &[],
    };
    let mut handles = std::collections::HashMap::new();
    for (name, _) in &input.batches {
        if !handles.contains_key(name) {
            handles.insert(*name, db.source_untyped(name)?);
        }
    }
    let rss_before = rss_kb().unwrap_or(0);
    r.int("rss_before_run_kb", rss_before, "kB");
    let mut rss_samples = Vec::new();
    let started = Instant::now();
    let mut pushed = 0u64;
    let mut pass = 0i64;
    'outer: loop {
        for (name, batch) in &input.batches {
            if pushed >= args.events {
                break 'outer;
            }
            let batch = if pass == 0 {
                batch.clone()
            } else {
                shift_columns(batch, pass * input.span_ms, pass * 1_000_000_000, shifted)?
            };
            pushed += batch.num_rows() as u64;
            handles[name].push_arrow(batch)?;
        }
        pass += 1;
        rss_samples.push(rss_kb().unwrap_or(0));
    }
    for handle in handles.values() {
        handle.watermark(i64::MAX / 2)?;
    }
    if !db.wait_idle(Duration::from_secs(3600)) {
        bail!("the pipeline did not drain within an hour");
    }
    let elapsed = started.elapsed();
    fail_on_failures(&db)?;
    let stream = db.stream_metrics("q")?;
    r.int("input_rows", pushed, "rows");
    r.int("output_rows", stream.total_events, "rows");
    r.int("state_rows_at_end", stream.state_rows, "rows");
    r.float("elapsed_seconds", elapsed.as_secs_f64(), "s");
    r.float(
        "events_per_second",
        pushed as f64 / elapsed.as_secs_f64(),
        "events/s",
    );
    r.list("rss_per_pass_kb", rss_samples, "kB");
    r.int("peak_rss_kb", peak_rss_kb().unwrap_or(0), "kB");
    db.shutdown_sync();
    Ok(r)
}

fn wal(args: &WalArgs) -> Result<Report> {
    use laminar_storage::{LocalFs, Storage, Wal, WalOptions};
    let mut r = Report::default();
    r.text("workload", "wal-append");
    r.text("build", build_profile());
    r.text("dir", args.dir.display().to_string());
    let _ = std::fs::remove_dir_all(&args.dir);
    let storage: Arc<dyn Storage> = Arc::new(LocalFs::new(&args.dir)?);
    let (mut log, _) = Wal::open(storage, "wal", WalOptions::default())?;
    // The payload of a record: one pushed batch in the Arrow IPC stream format.
    let schema = laminar_bench::declared_bids_schema()?;
    let batch = laminar_bench::BidGenerator::new(42).next_batch(&schema, args.batch_rows)?;
    let mut payload = Vec::new();
    {
        let mut writer = arrow::ipc::writer::StreamWriter::try_new(&mut payload, &schema)?;
        writer.write(&batch)?;
        writer.finish()?;
    }
    r.int("batch_rows", args.batch_rows as u64, "rows");
    r.int("record_bytes", payload.len() as u64, "B (payload)");
    r.int("commit_interval_us", args.commit_interval_us, "µs");
    let interval = Duration::from_micros(args.commit_interval_us);
    let records = args.events.div_ceil(args.batch_rows as u64);
    let started = Instant::now();
    let mut last_sync = Instant::now();
    let mut syncs = 0u64;
    for _ in 0..records {
        log.append(1, &payload)?;
        if last_sync.elapsed() >= interval {
            log.sync()?;
            syncs += 1;
            last_sync = Instant::now();
        }
    }
    log.sync()?;
    syncs += 1;
    let elapsed = started.elapsed();
    let events = records * args.batch_rows as u64;
    r.int("events", events, "");
    r.int("records", records, "");
    r.int("syncs", syncs, "");
    r.float("elapsed_seconds", elapsed.as_secs_f64(), "s");
    r.float(
        "events_per_second",
        events as f64 / elapsed.as_secs_f64(),
        "events/s",
    );
    r.float(
        "mib_per_second",
        (records * payload.len() as u64) as f64 / elapsed.as_secs_f64() / (1 << 20) as f64,
        "MiB/s",
    );
    let _ = std::fs::remove_dir_all(&args.dir);
    Ok(r)
}

fn checkpoint(args: &CheckpointArgs) -> Result<Report> {
    let mut r = Report::default();
    r.text("workload", "checkpoint");
    r.text("build", build_profile());
    let _ = std::fs::remove_dir_all(&args.dir);
    let state_dir = args.dir.join("state");
    let (stream, layout) = match args.layout {
        CheckpointLayout::Window => (
            "CREATE STREAM agg AS SELECT k, tumble(ts, INTERVAL '1' HOUR) AS w, COUNT(*) AS n, SUM(v) AS total, MAX(v) AS hi FROM s GROUP BY k, tumble(ts, INTERVAL '1' HOUR) EMIT ON WINDOW CLOSE",
            "window",
        ),
        CheckpointLayout::Updating => (
            "CREATE STREAM agg AS SELECT k, COUNT(*) AS n, SUM(v) AS total, MAX(v) AS hi FROM s GROUP BY k EMIT CHANGES",
            "updating",
        ),
    };
    r.text("layout", layout);
    r.text("sql", stream);
    r.int("workers", args.workers as u64, "");
    let source = "CREATE SOURCE s (k BIGINT, v BIGINT, ts BIGINT, WATERMARK FOR ts AS ts)";
    let open = || -> Result<LaminarDB> {
        let db = LaminarDB::builder()
            .workers(args.workers)
            .storage_dir(&state_dir)
            .checkpoint_interval(None)?
            .build_sync()?;
        block_on(async {
            db.execute(source).await?;
            db.execute(stream).await?;
            anyhow::Ok(())
        })?;
        Ok(db)
    };
    let schema = Arc::new(arrow::datatypes::Schema::new(vec![
        arrow::datatypes::Field::new("k", arrow::datatypes::DataType::Int64, false),
        arrow::datatypes::Field::new("v", arrow::datatypes::DataType::Int64, false),
        arrow::datatypes::Field::new("ts", arrow::datatypes::DataType::Int64, false),
    ]));
    let batch_of = |keys: std::ops::Range<u64>| -> Result<RecordBatch> {
        let k: Vec<i64> = keys.clone().map(|k| k as i64).collect();
        let v: Vec<i64> = keys.map(|k| (k % 1000) as i64).collect();
        let ts = vec![1_000i64; k.len()];
        Ok(RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(arrow::array::Int64Array::from(k)),
                Arc::new(arrow::array::Int64Array::from(v)),
                Arc::new(arrow::array::Int64Array::from(ts)),
            ],
        )?)
    };
    let db = open()?;
    let handle = db.source_untyped("s")?;
    for start in (0..args.groups).step_by(65_536) {
        handle.push_arrow(batch_of(start..(start + 65_536).min(args.groups))?)?;
    }
    if !db.wait_idle(Duration::from_secs(3600)) {
        bail!("the pipeline did not drain");
    }
    r.int("groups", args.groups, "");
    r.int("state_rows", db.stream_metrics("agg")?.state_rows, "rows");
    let started = Instant::now();
    db.checkpoint()?;
    let full = started.elapsed();
    let stats = db.checkpoint_stats().context("durable")?;
    r.float("full_checkpoint_seconds", full.as_secs_f64(), "s");
    r.int("full_checkpoint_bytes", stats.last_bytes, "B");
    // 1% of the groups change before each of three checkpoints: each writes an increment
    // (the changed groups' states), and the restore below applies the chain.
    let changed = (args.groups / 100).max(1);
    for round in 0..3u64 {
        let from = (round * changed) % args.groups;
        handle.push_arrow(batch_of(from..(from + changed).min(args.groups))?)?;
        if !db.wait_idle(Duration::from_secs(3600)) {
            bail!("the pipeline did not drain");
        }
        let started = Instant::now();
        db.checkpoint()?;
        let after_change = started.elapsed();
        let stats = db.checkpoint_stats().context("durable")?;
        r.float(
            &format!("checkpoint_after_1pct_change_{}_seconds", round + 1),
            after_change.as_secs_f64(),
            "s",
        );
        r.int(
            &format!("checkpoint_after_1pct_change_{}_bytes", round + 1),
            stats.last_bytes,
            "B",
        );
    }
    let stats = db.checkpoint_stats().context("durable")?;
    r.int("incremental_snapshots", stats.incremental_snapshots, "");
    r.int("full_snapshots", stats.full_snapshots, "");
    // Crash: no shutdown checkpoint.
    std::mem::forget(db);
    let started = Instant::now();
    let restored = open()?;
    let restore = started.elapsed();
    r.float(
        "restore_seconds",
        restore.as_secs_f64(),
        "s (open + re-create with the state loaded)",
    );
    r.int(
        "restored_state_rows",
        restored.stream_metrics("agg")?.state_rows,
        "rows",
    );
    std::mem::forget(restored);

    if args.events > 0 {
        // Pushes are logged when durable: synced per push (the default) or with each
        // checkpoint only.
        for (label, durable, sync_pushes) in [
            ("no_checkpoints", false, false),
            ("checkpoints_wal_async", true, false),
            ("checkpoints_wal_sync", true, true),
        ] {
            let dir = args.dir.join(label);
            let mut builder = LaminarDB::builder().workers(1);
            if durable {
                builder = builder
                    .storage_dir(&dir)
                    .checkpoint_interval(Some(Duration::from_millis(args.interval_ms)))?
                    .sync_pushes(sync_pushes)?;
            }
            let db = builder.build_sync()?;
            block_on(async {
                db.execute(&laminar_bench::source_ddl_with(SOURCE_COLUMNS, None))
                    .await?;
                db.execute(&format!("CREATE STREAM q AS {}", Workload::Tumble.sql()))
                    .await?;
                db.execute("CREATE SINK out FROM q INTO BLACKHOLE").await?;
                db.start().await?;
                anyhow::Ok(())
            })?;
            let source = db.source_untyped("bids")?;
            let pool = generate_bids(&source.schema(), args.events.min(10_000_000), 8192, 42)?;
            let started = Instant::now();
            let pushed = push_cycling(&source, &pool, args.events, |_| {})?;
            source.watermark(i64::MAX / 2)?;
            if !db.wait_idle(Duration::from_secs(3600)) {
                bail!("the pipeline did not drain");
            }
            report_throughput_run(&mut r, label, &db, pushed, started.elapsed())?;
        }
        // A connector source (DATAGEN) is not logged: this isolates what the checkpoints
        // themselves cost.
        for (label, durable) in [
            ("datagen_no_checkpoints", false),
            ("datagen_checkpoints", true),
        ] {
            let dir = args.dir.join(label);
            let mut builder = LaminarDB::builder().workers(1);
            if durable {
                builder = builder
                    .storage_dir(&dir)
                    .checkpoint_interval(Some(Duration::from_millis(args.interval_ms)))?;
            }
            let db = builder.build_sync()?;
            block_on(async {
                db.execute(&format!(
                    "CREATE SOURCE bids {SOURCE_COLUMNS} FROM DATAGEN (table = 'bids', events = '{}')",
                    args.events
                ))
                .await?;
                db.execute(&format!("CREATE STREAM q AS {}", Workload::Tumble.sql()))
                    .await?;
                db.execute("CREATE SINK out FROM q INTO BLACKHOLE").await?;
                anyhow::Ok(())
            })?;
            let started = Instant::now();
            block_on(db.start())?;
            while !db.is_finished() && db.failures().is_empty() {
                if started.elapsed() > Duration::from_secs(3600) {
                    bail!("the pipeline did not finish within an hour");
                }
                std::thread::sleep(Duration::from_micros(500));
            }
            let input = db.source_metrics("bids")?.total_events;
            report_throughput_run(&mut r, label, &db, input, started.elapsed())?;
        }
    }
    let _ = std::fs::remove_dir_all(&args.dir);
    Ok(r)
}

#[cfg(feature = "kafka")]
mod kafka_bench;
mod view_bench;

/// Reports one run of the checkpoint benchmark's throughput part and shuts it down.
fn report_throughput_run(
    r: &mut Report,
    label: &str,
    db: &LaminarDB,
    events: u64,
    elapsed: Duration,
) -> Result<()> {
    fail_on_failures(db)?;
    r.float(
        &format!("tumble_events_per_second_{label}"),
        events as f64 / elapsed.as_secs_f64(),
        "events/s",
    );
    if let Some(stats) = db.checkpoint_stats() {
        r.int(
            &format!("checkpoints_completed_{label}"),
            stats.completed,
            "",
        );
        r.int(&format!("checkpoints_failed_{label}"), stats.failed, "");
        r.int(
            &format!("incremental_snapshots_{label}"),
            stats.incremental_snapshots,
            "",
        );
    }
    db.shutdown_sync();
    Ok(())
}

/// `batch` with `ts` moved `shift_ms` later and the `ids` columns moved by `id_shift`.
fn shift_columns(
    batch: &RecordBatch,
    shift_ms: i64,
    id_shift: i64,
    ids: &[&str],
) -> Result<RecordBatch> {
    let schema = batch.schema();
    let mut columns = batch.columns().to_vec();
    for (i, field) in schema.fields().iter().enumerate() {
        let by = if field.name() == "ts" || field.name() == "expires" {
            shift_ms
        } else if ids.contains(&field.name().as_str()) {
            id_shift
        } else {
            continue;
        };
        let values: Int64Array = columns[i]
            .as_primitive::<Int64Type>()
            .unary(|v: i64| v + by);
        columns[i] = Arc::new(values) as ArrayRef;
    }
    Ok(RecordBatch::try_new(schema, columns)?)
}

fn output_rows(db: &LaminarDB, r: &mut Report) -> Result<()> {
    let stream = db.stream_metrics("q")?;
    let sink = db.sink_metrics("out")?;
    r.int("stream_rows_in", stream.rows_in, "rows");
    r.int("output_rows", stream.total_events, "rows");
    r.int("sink_rows", sink.rows_in, "rows");
    Ok(())
}

fn gen_parquet(args: &GenParquetArgs) -> Result<Report> {
    let schema = declared_bids_schema()?;
    let compression = match args.compression.to_ascii_lowercase().as_str() {
        "snappy" => Compression::SNAPPY,
        "zstd" => Compression::ZSTD(ZstdLevel::default()),
        "none" | "uncompressed" => Compression::UNCOMPRESSED,
        other => bail!("unknown compression '{other}' (snappy, zstd or none)"),
    };
    let props = WriterProperties::builder()
        .set_compression(compression)
        .set_max_row_group_row_count(Some(args.row_group_rows.max(1)))
        .build();
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = args.out.with_extension("parquet.tmp");
    let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(props))?;
    let started = Instant::now();
    let mut generator = laminar_bench::BidGenerator::new(args.seed);
    while generator.next_event() < args.events {
        let rows = (args.events - generator.next_event()).min(65_536) as usize;
        writer.write(&generator.next_batch(&schema, rows)?)?;
    }
    writer.close()?;
    std::fs::rename(&tmp, &args.out)
        .with_context(|| format!("renaming to {}", args.out.display()))?;
    let mut r = Report::default();
    r.text("out", args.out.display().to_string());
    r.text(
        "schema",
        format!(
            "{:?}",
            schema
                .fields()
                .iter()
                .map(|f| format!("{} {}", f.name(), f.data_type()))
                .collect::<Vec<_>>()
        ),
    );
    r.int("events", args.events, "rows");
    r.int("bytes", std::fs::metadata(&args.out)?.len(), "B");
    r.float("seconds", started.elapsed().as_secs_f64(), "s");
    Ok(r)
}

fn latency(args: &LatencyArgs) -> Result<Report> {
    if args.rate == 0 || args.batch == 0 {
        bail!("--rate and --batch must be positive");
    }
    let db = open_pipeline(args.workers, Workload::Projection, None, Consumer::None)?;
    let source = db.source_untyped("bids")?;
    let schema = source.schema();
    let stamp_column = schema.index_of("bidder")?;
    // 1000 distinct batches, cycled; `bidder` is replaced by the push time at push.
    let pool = generate_bids(&schema, args.batch as u64 * 1000, args.batch, args.seed)?;
    let mut sub = db.subscribe_arrow("q")?;
    let out_stamp = sub.schema().index_of("bidder")?;

    let interval = Duration::from_secs_f64(args.batch as f64 / args.rate as f64);
    let warm_batches = (args.rate * args.warmup_seconds).div_ceil(args.batch as u64);
    let measured_batches = (args.rate * args.seconds).div_ceil(args.batch as u64);
    let total = warm_batches + measured_batches;

    let base = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let last_pushed = Arc::new(AtomicU64::new(0));
    // Stamps are nanoseconds since `base` + 1 (0 = none yet). Measurement starts at this stamp.
    let measure_from = Arc::new(AtomicU64::new(u64::MAX));
    let subscriber = {
        let stop = stop.clone();
        let last_pushed = last_pushed.clone();
        let measure_from = measure_from.clone();
        std::thread::Builder::new()
            .name("bench-subscriber".into())
            .spawn(move || -> Result<(Vec<u64>, u64, u64)> {
                let mut latencies = Vec::with_capacity(measured_batches as usize + 16);
                let mut last_seen = 0u64;
                let mut batches = 0u64;
                let mut rows = 0u64;
                loop {
                    let batch = sub.recv_timeout(Duration::from_millis(20))?;
                    let now = base.elapsed().as_nanos() as u64 + 1;
                    if let Some(batch) = batch {
                        batches += 1;
                        rows += batch.num_rows() as u64;
                        let stamps = batch.column(out_stamp).as_primitive::<Int64Type>();
                        let from = measure_from.load(Ordering::Relaxed);
                        for &s in stamps.values().iter() {
                            let s = s as u64;
                            if s > last_seen {
                                last_seen = s;
                                if s >= from {
                                    latencies.push(now - s);
                                }
                            }
                        }
                    }
                    if stop.load(Ordering::SeqCst)
                        && last_seen >= last_pushed.load(Ordering::SeqCst)
                    {
                        break;
                    }
                }
                Ok((latencies, batches, rows))
            })?
    };

    let started = Instant::now();
    let mut measure_started = None;
    let mut late_pushes = 0u64;
    for k in 0..total {
        let deadline = started + interval.mul_f64(k as f64);
        let now = Instant::now();
        if now < deadline {
            std::thread::sleep(deadline - now);
        } else if now - deadline > interval {
            late_pushes += 1;
        }
        let template = &pool[(k as usize) % pool.len()];
        let mut columns: Vec<ArrayRef> = template.columns().to_vec();
        let stamp = base.elapsed().as_nanos() as u64 + 1;
        columns[stamp_column] = Arc::new(Int64Array::from_value(stamp as i64, template.num_rows()));
        let batch = RecordBatch::try_new(schema.clone(), columns)?;
        if k == warm_batches {
            measure_from.store(stamp, Ordering::SeqCst);
            measure_started = Some(Instant::now());
        }
        source.push_arrow(batch)?;
        last_pushed.store(stamp, Ordering::SeqCst);
    }
    let offered_elapsed = measure_started.map(|s| s.elapsed()).unwrap_or_default();
    stop.store(true, Ordering::SeqCst);
    // The subscriber stops once it saw the last stamp; give it at most 10 s.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !subscriber.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    if !subscriber.is_finished() {
        bail!("the subscriber did not receive the last pushed batch within 10 s");
    }
    let (mut latencies, batches, rows) = subscriber
        .join()
        .map_err(|_| anyhow::anyhow!("subscriber panicked"))??;
    fail_on_failures(&db)?;
    db.shutdown_sync();
    latencies.sort_unstable();

    let mut r = Report::default();
    r.text("workload", "latency (projection, subscribe_arrow)");
    r.text("sql", Workload::Projection.sql());
    r.text("build", build_profile());
    r.int("workers", args.workers as u64, "");
    r.int("offered_rate", args.rate, "events/s");
    r.int("batch_rows", args.batch as u64, "rows");
    r.int("warmup_seconds", args.warmup_seconds, "s (not recorded)");
    r.int("measured_batches", measured_batches, "batches pushed");
    r.float(
        "achieved_rate",
        (measured_batches * args.batch as u64) as f64 / offered_elapsed.as_secs_f64().max(1e-9),
        "events/s",
    );
    r.int(
        "late_pushes",
        late_pushes,
        "batches pushed more than one interval late",
    );
    r.int("received_batches", batches, "batches (including warm-up)");
    r.int("received_rows", rows, "rows (including warm-up)");
    r.int("samples", latencies.len() as u64, "batches");
    let us = |q: f64| quantile(&latencies, q).unwrap_or(0) as f64 / 1000.0;
    r.float("latency_p50_us", us(0.50), "µs");
    r.float("latency_p90_us", us(0.90), "µs");
    r.float("latency_p99_us", us(0.99), "µs");
    r.float("latency_p999_us", us(0.999), "µs");
    r.float(
        "latency_max_us",
        latencies.last().copied().unwrap_or(0) as f64 / 1000.0,
        "µs",
    );
    r.int("peak_rss_kb", peak_rss_kb().unwrap_or(0), "kB");
    Ok(r)
}

fn rss(args: &RssArgs) -> Result<Report> {
    let workload = args.workload.workload();
    let db = laminar_bench::open_pipeline_buffered(
        SOURCE_COLUMNS,
        args.workers,
        workload,
        None,
        Consumer::Blackhole,
        args.buffer_size,
    )?;
    let source = db.source_untyped("bids")?;
    let pool = generate_bids(
        &source.schema(),
        args.pool_events.max(1),
        args.batch_size,
        args.seed,
    )?;
    let rss_after_generate = rss_kb().unwrap_or(0);
    let pushed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let pushed = pushed.clone();
        let stop = stop.clone();
        let db = db.clone();
        let period = Duration::from_millis(args.sample_ms.max(10));
        std::thread::Builder::new()
            .name("bench-rss-sampler".into())
            .spawn(move || {
                let started = Instant::now();
                let mut samples = Vec::new();
                let mut next = started + period;
                while !stop.load(Ordering::SeqCst) {
                    let now = Instant::now();
                    if now < next {
                        std::thread::sleep((next - now).min(Duration::from_millis(50)));
                        continue;
                    }
                    next += period;
                    let rss = rss_kb().unwrap_or(0);
                    let processed = db.stream_metrics("q").map(|m| m.rows_in).unwrap_or(0);
                    eprintln!(
                        "t={:>6.1}s pushed={:>12} processed={:>12} rss={:>8} kB",
                        started.elapsed().as_secs_f64(),
                        pushed.load(Ordering::Relaxed),
                        processed,
                        rss
                    );
                    samples.push(rss);
                }
                samples
            })?
    };
    let started = Instant::now();
    let total = push_cycling(&source, &pool, args.events, |n| {
        pushed.store(n, Ordering::Relaxed)
    })?;
    if !db.wait_idle(Duration::from_secs(3600)) {
        bail!("the pipeline did not drain within an hour");
    }
    let elapsed = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let mut samples = sampler
        .join()
        .map_err(|_| anyhow::anyhow!("sampler panicked"))?;
    // First sample: before the first push; last: after everything was processed (so even a
    // run shorter than the sampling period has two).
    samples.insert(0, rss_after_generate);
    samples.push(rss_kb().unwrap_or(0));
    fail_on_failures(&db)?;
    let mut r = Report::default();
    r.text(
        "workload",
        format!(
            "rss ({}, memory, re-pushing the same batches with event time shifted each pass)",
            workload.name()
        ),
    );
    r.text("sql", workload.sql());
    r.text(
        "source_buffer",
        args.buffer_size
            .map_or("engine default".to_string(), |n| format!("{n} messages")),
    );
    if let Ok(m) = db.stream_metrics("q") {
        r.int("state_rows_at_end", m.state_rows, "rows");
    }
    r.text("build", build_profile());
    r.int("workers", args.workers as u64, "");
    r.int("events", total, "rows");
    r.int("pool_events", args.pool_events, "rows");
    r.int("batch_size", args.batch_size as u64, "rows");
    output_rows(&db, &mut r)?;
    db.shutdown_sync();
    r.float("elapsed_seconds", elapsed.as_secs_f64(), "s");
    r.float(
        "events_per_second",
        total as f64 / elapsed.as_secs_f64(),
        "events/s",
    );
    r.int("rss_after_generate_kb", rss_after_generate, "kB");
    // Summary over the samples taken after pushing started.
    let run = &samples[1..];
    let half = run.len() / 2;
    let max = |v: &[u64]| v.iter().copied().max().unwrap_or(0);
    r.int(
        "rss_min_during_run_kb",
        run.iter().copied().min().unwrap_or(0),
        "kB",
    );
    r.int("rss_max_first_half_kb", max(&run[..half.max(1)]), "kB");
    r.int("rss_max_second_half_kb", max(&run[half..]), "kB");
    r.int("rss_last_kb", *run.last().unwrap_or(&0), "kB");
    r.int("peak_rss_kb", peak_rss_kb().unwrap_or(0), "kB");
    r.list(
        "rss_samples_kb",
        samples,
        "kB (first: before the first push, last: after the drain)",
    );
    Ok(r)
}

/// For each 1 s tumbling window: push one row for each of `groups` keys, then advance the
/// watermark to the window end and time until the window's last row reaches the subscriber
/// (`COUNT(*) GROUP BY k, tumble(ts, 1 s) EMIT ON WINDOW CLOSE`).
fn window_latency(args: &WindowLatencyArgs) -> Result<Report> {
    let mut r = Report::default();
    r.text("workload", "window-latency");
    r.text("build", build_profile());
    r.int("workers", args.workers as u64, "");
    r.int("groups", args.groups as u64, "open groups per window");
    let db = LaminarDB::builder().workers(args.workers).build_sync()?;
    block_on(db.execute(
        "CREATE SOURCE ev (k BIGINT, ts BIGINT, WATERMARK FOR ts AS ts); \
         CREATE STREAM q AS SELECT k, tumble(ts, INTERVAL '1' SECOND) AS w, COUNT(*) AS n FROM ev \
         GROUP BY k, tumble(ts, INTERVAL '1' SECOND) EMIT ON WINDOW CLOSE",
    ))?;
    let source = db.source_untyped("ev")?;
    let schema = source.schema();
    let mut sub = db.subscribe_arrow("q")?;
    let keys: ArrayRef = Arc::new(Int64Array::from((0..args.groups).collect::<Vec<_>>()));
    let mut latencies = Vec::with_capacity(args.windows);
    for window in 0..(args.windows + 2) as i64 {
        let start = window * 1000;
        let ts: ArrayRef = Arc::new(Int64Array::from(vec![start + 500; args.groups as usize]));
        source.push_arrow(RecordBatch::try_new(
            schema.clone(),
            vec![keys.clone(), ts],
        )?)?;
        if !db.wait_idle(Duration::from_secs(60)) {
            bail!("the pipeline did not drain");
        }
        let started = Instant::now();
        source.watermark(start + 1000)?;
        let mut rows = 0i64;
        while rows < args.groups {
            match sub.recv_timeout(Duration::from_secs(10))? {
                Some(batch) => rows += batch.num_rows() as i64,
                None => bail!("window {window} did not arrive within 10 s"),
            }
        }
        if window >= 2 {
            latencies.push(started.elapsed().as_micros() as u64);
        }
    }
    fail_on_failures(&db)?;
    db.shutdown_sync();
    latencies.sort_unstable();
    r.int(
        "p50_us",
        quantile(&latencies, 0.5).unwrap_or(0),
        "us (watermark -> all rows of the window received)",
    );
    r.int("p99_us", quantile(&latencies, 0.99).unwrap_or(0), "us");
    r.int("max_us", latencies.last().copied().unwrap_or(0), "us");
    Ok(r)
}
