//! Shared pieces of the LaminarDB benchmarks: the Nexmark-like bid generator, the workload
//! SQL, pipeline setup through the public API, and process memory readings.
//!
//! Everything here goes through `laminar_db`'s public API only, so the numbers measure what
//! an embedding application gets.

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use arrow::array::{
    ArrayRef, Int64Array, StringBuilder, TimestampMicrosecondArray, TimestampMillisecondArray,
    TimestampNanosecondArray, TimestampSecondArray,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use laminar_db::LaminarDB;

pub mod joins;

/// The bids source as the benchmarks declare it (push API).
pub const SOURCE_COLUMNS: &str = "(auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, ts TIMESTAMP, \
     WATERMARK FOR ts AS ts)";

/// The bids source without `channel`, which neither workload reads (`--without-channel`:
/// shows what decoding and validating an unused string column costs).
pub const SOURCE_COLUMNS_NO_CHANNEL: &str =
    "(auction BIGINT, bidder BIGINT, price BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts)";

/// The stateless projection workload (Nexmark q1 shape).
pub const PROJECTION_SQL: &str = "SELECT auction, bidder, price * 0.908 AS euro, ts FROM bids";

/// The filter workload (Nexmark q2).
pub const FILTER_SQL: &str = "SELECT auction, price FROM bids WHERE auction % 123 = 0";

/// Tumbling window per auction (10,000 auction keys): COUNT, MAX, SUM per 10 s.
pub const TUMBLE_SQL: &str = "SELECT auction % 10000 AS a, tumble(ts, INTERVAL '10' SECOND) AS w, \
     COUNT(*) AS n, MAX(price) AS hi, SUM(price) AS total FROM bids \
     GROUP BY auction % 10000, tumble(ts, INTERVAL '10' SECOND) EMIT ON WINDOW CLOSE";

/// Hopping window per auction (Nexmark q5 shape): COUNT per 10 s window every 2 s.
pub const HOP_SQL: &str = "SELECT auction % 10000 AS a, hop(ts, INTERVAL '2' SECOND, INTERVAL '10' SECOND) AS w, \
     COUNT(*) AS n FROM bids \
     GROUP BY auction % 10000, hop(ts, INTERVAL '2' SECOND, INTERVAL '10' SECOND) EMIT ON WINDOW CLOSE";

/// Session window per bidder: COUNT and MAX per 500 ms-gap session.
pub const SESSION_SQL: &str = "SELECT bidder, session(ts, INTERVAL '500' MILLISECOND) AS s, \
     COUNT(*) AS n, MAX(price) AS hi FROM bids \
     GROUP BY bidder, session(ts, INTERVAL '500' MILLISECOND) EMIT ON WINDOW CLOSE";

/// First event time of generated bids: 2023-11-14T22:13:20Z in nanoseconds.
pub const START_TS_NS: i64 = 1_700_000_000_000_000_000;

/// Event-time distance between consecutive generated bids (1 µs).
pub const TS_STEP_NS: i64 = 1_000;

/// A named workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// [`PROJECTION_SQL`].
    Projection,
    /// [`FILTER_SQL`].
    Filter,
    /// [`TUMBLE_SQL`].
    Tumble,
    /// [`HOP_SQL`].
    Hop,
    /// [`SESSION_SQL`].
    Session,
}

impl Workload {
    /// The workload's SELECT.
    pub fn sql(self) -> &'static str {
        match self {
            Workload::Projection => PROJECTION_SQL,
            Workload::Filter => FILTER_SQL,
            Workload::Tumble => TUMBLE_SQL,
            Workload::Hop => HOP_SQL,
            Workload::Session => SESSION_SQL,
        }
    }

    /// Name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Projection => "projection",
            Workload::Filter => "filter",
            Workload::Tumble => "tumble",
            Workload::Hop => "hop",
            Workload::Session => "session",
        }
    }
}

/// Where the pipeline's output goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consumer {
    /// `CREATE SINK out FROM q INTO BLACKHOLE` (throughput runs; counted by `wait_idle`).
    Blackhole,
    /// Nothing: the caller subscribes to `q` itself.
    None,
}

/// Runs an async `LaminarDB` call from synchronous code on a small current-thread runtime.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread tokio runtime")
        .block_on(future)
}

/// `CREATE SOURCE bids ...` for the push API, or for a Parquet file when `parquet` is given.
pub fn source_ddl(parquet: Option<&str>) -> String {
    source_ddl_with(SOURCE_COLUMNS, parquet)
}

/// [`source_ddl`] with another column list.
pub fn source_ddl_with(columns: &str, parquet: Option<&str>) -> String {
    match parquet {
        None => format!("CREATE SOURCE bids {columns}"),
        Some(path) => format!(
            "CREATE SOURCE bids {columns} FROM FILES (path = '{}', format = 'parquet')",
            path.replace('\'', "''")
        ),
    }
}

/// Opens a database with `workers` worker threads and creates the source `bids`, the stream
/// `q` (the workload) and, for [`Consumer::Blackhole`], the sink `out`.
pub fn open_pipeline(
    workers: usize,
    workload: Workload,
    parquet: Option<&str>,
    consumer: Consumer,
) -> Result<LaminarDB> {
    open_pipeline_with(SOURCE_COLUMNS, workers, workload, parquet, consumer)
}

/// [`open_pipeline`] with another source column list (e.g. [`SOURCE_COLUMNS_NO_CHANNEL`]).
pub fn open_pipeline_with(
    columns: &str,
    workers: usize,
    workload: Workload,
    parquet: Option<&str>,
    consumer: Consumer,
) -> Result<LaminarDB> {
    open_pipeline_buffered(columns, workers, workload, parquet, consumer, None)
}

/// [`open_pipeline_with`] with the source queue bounded to `buffer_size` messages (the
/// engine default when `None`).
pub fn open_pipeline_buffered(
    columns: &str,
    workers: usize,
    workload: Workload,
    parquet: Option<&str>,
    consumer: Consumer,
    buffer_size: Option<usize>,
) -> Result<LaminarDB> {
    let mut builder = LaminarDB::builder().workers(workers);
    if let Some(slots) = buffer_size {
        builder = builder.buffer_size(slots);
    }
    let db = builder.build_sync()?;
    block_on(async {
        db.execute(&source_ddl_with(columns, parquet))
            .await
            .context("CREATE SOURCE")?;
        db.execute(&format!("CREATE STREAM q AS {}", workload.sql()))
            .await
            .context("CREATE STREAM")?;
        if consumer == Consumer::Blackhole {
            db.execute("CREATE SINK out FROM q INTO BLACKHOLE")
                .await
                .context("CREATE SINK")?;
        }
        anyhow::Ok(())
    })?;
    Ok(db)
}

/// The schema the engine declares for `bids` (what SQL `BIGINT`, `VARCHAR` and `TIMESTAMP`
/// map to), read from a throwaway database.
pub fn declared_bids_schema() -> Result<SchemaRef> {
    let db = LaminarDB::builder().workers(1).build_sync()?;
    block_on(db.execute(&source_ddl(None))).context("CREATE SOURCE")?;
    let schema = db.source_untyped("bids")?.schema();
    db.shutdown_sync();
    Ok(schema)
}

const HOT_CHANNELS: [&str; 4] = ["Google", "Facebook", "Baidu", "Apple"];
const CHANNELS: usize = 10_000;
/// Hot auctions/bidders share ids in groups of this size (Nexmark's HOT_*_RATIO).
const HOT_GROUP: i64 = 100;
const FIRST_ID: i64 = 1000;

/// A deterministic Nexmark-like bid generator.
///
/// Event `i`: `auction` is a "hot" auction (a multiple of 100 below the latest auction id,
/// half of the bids) or one of the 100 most recent auctions (3 auctions per 46 events, as in
/// Nexmark); `bidder` is a hot bidder (3/4) or one of the 100 most recent persons (1 person
/// per 46 events); `price` is `round(10^(6u) * 100)` for uniform `u` (Nexmark's price law);
/// `channel` is one of 4 hot channels (half) or `channel-N`, N < 10000; `ts` is
/// [`START_TS_NS`] + `i` µs. Values depend on the seed and the batch index only.
pub struct BidGenerator {
    seed: u64,
    next_event: u64,
    channels: Vec<String>,
}

impl BidGenerator {
    /// A generator starting at event 0.
    pub fn new(seed: u64) -> Self {
        BidGenerator {
            seed,
            next_event: 0,
            channels: (0..CHANNELS).map(|n| format!("channel-{n}")).collect(),
        }
    }

    /// Index of the next event.
    pub fn next_event(&self) -> u64 {
        self.next_event
    }

    /// The next `rows` bids as a batch of `schema` (columns are matched by name; the schema
    /// must hold exactly the bid columns; `channel` and `ts` take the declared types).
    pub fn next_batch(&mut self, schema: &SchemaRef, rows: usize) -> Result<RecordBatch> {
        let first = self.next_event as i64;
        self.next_event += rows as u64;

        let mut auction = Vec::with_capacity(rows);
        let mut bidder = Vec::with_capacity(rows);
        let mut price = Vec::with_capacity(rows);
        let mut ts = Vec::with_capacity(rows);
        let mut channel = StringBuilder::with_capacity(rows, rows * 10);
        for k in 0..rows as i64 {
            let i = first + k;
            // Two independent 64-bit hashes of (seed, i) drive every choice of event i.
            let h1 = splitmix64(self.seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let h2 = splitmix64(h1);
            let latest_auction = FIRST_ID + i * 3 / 46;
            let a = if h1 & 1 == 0 {
                (latest_auction / HOT_GROUP) * HOT_GROUP
            } else {
                latest_auction
                    - ((h1 >> 8) % HOT_GROUP.min(latest_auction - FIRST_ID + 1) as u64) as i64
            };
            let latest_person = FIRST_ID + i / 46;
            let b = if (h1 >> 1) & 3 != 0 {
                (latest_person / HOT_GROUP) * HOT_GROUP + 1
            } else {
                latest_person
                    - ((h1 >> 24) % HOT_GROUP.min(latest_person - FIRST_ID + 1) as u64) as i64
            };
            let u = (h2 >> 11) as f64 / (1u64 << 53) as f64;
            let p = (10f64.powf(u * 6.0) * 100.0).round() as i64;
            if (h1 >> 3) & 1 == 0 {
                channel
                    .append_value(HOT_CHANNELS[((h1 >> 40) % HOT_CHANNELS.len() as u64) as usize]);
            } else {
                channel.append_value(&self.channels[((h1 >> 40) % CHANNELS as u64) as usize]);
            }
            auction.push(a);
            bidder.push(b);
            price.push(p);
            ts.push(START_TS_NS + i * TS_STEP_NS);
        }
        let channel: ArrayRef = Arc::new(channel.finish());
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        for field in schema.fields() {
            let column: ArrayRef = match field.name().as_str() {
                "auction" => Arc::new(Int64Array::from(std::mem::take(&mut auction))),
                "bidder" => Arc::new(Int64Array::from(std::mem::take(&mut bidder))),
                "price" => Arc::new(Int64Array::from(std::mem::take(&mut price))),
                "channel" => channel.clone(),
                "ts" => timestamp_array(std::mem::take(&mut ts), field.data_type())?,
                other => bail!("the bid generator has no column '{other}'"),
            };
            let column = if column.data_type() == field.data_type() {
                column
            } else {
                cast(&column, field.data_type()).with_context(|| {
                    format!("column '{}' as {}", field.name(), field.data_type())
                })?
            };
            columns.push(column);
        }
        Ok(RecordBatch::try_new(schema.clone(), columns)?)
    }
}

/// SplitMix64 finalizer: a fast, well-mixed 64-bit hash.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn timestamp_array(ns: Vec<i64>, data_type: &DataType) -> Result<ArrayRef> {
    Ok(match data_type {
        DataType::Timestamp(unit, tz) => {
            let array: ArrayRef = match unit {
                TimeUnit::Nanosecond => {
                    Arc::new(TimestampNanosecondArray::from(ns).with_timezone_opt(tz.clone()))
                }
                TimeUnit::Microsecond => Arc::new(
                    TimestampMicrosecondArray::from(
                        ns.into_iter().map(|v| v / 1_000).collect::<Vec<_>>(),
                    )
                    .with_timezone_opt(tz.clone()),
                ),
                TimeUnit::Millisecond => Arc::new(
                    TimestampMillisecondArray::from(
                        ns.into_iter().map(|v| v / 1_000_000).collect::<Vec<_>>(),
                    )
                    .with_timezone_opt(tz.clone()),
                ),
                TimeUnit::Second => Arc::new(
                    TimestampSecondArray::from(
                        ns.into_iter()
                            .map(|v| v / 1_000_000_000)
                            .collect::<Vec<_>>(),
                    )
                    .with_timezone_opt(tz.clone()),
                ),
            };
            array
        }
        DataType::Int64 => Arc::new(Int64Array::from(
            ns.into_iter().map(|v| v / 1_000_000).collect::<Vec<_>>(),
        )),
        other => bail!("ts cannot be generated as {other}"),
    })
}

/// `events` bids in batches of `batch_size` rows (the last one may be shorter).
pub fn generate_bids(
    schema: &SchemaRef,
    events: u64,
    batch_size: usize,
    seed: u64,
) -> Result<Vec<RecordBatch>> {
    let batch_size = batch_size.max(1);
    let mut generator = BidGenerator::new(seed);
    let mut out = Vec::with_capacity((events as usize).div_ceil(batch_size));
    while generator.next_event() < events {
        let rows = (events - generator.next_event()).min(batch_size as u64) as usize;
        out.push(generator.next_batch(schema, rows)?);
    }
    Ok(out)
}

/// Reads a `Vm*` line (kB) of `/proc/self/status`: `VmRSS` (current) or `VmHWM` (peak).
pub fn proc_status_kb(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        rest.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// Current resident set size in kB.
pub fn rss_kb() -> Option<u64> {
    proc_status_kb("VmRSS")
}

/// Peak resident set size in kB.
pub fn peak_rss_kb() -> Option<u64> {
    proc_status_kb("VmHWM")
}

/// The `q`-th quantile (0..=1) of sorted values (nearest rank).
pub fn quantile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile(&v, 0.5), Some(50));
        assert_eq!(quantile(&v, 0.99), Some(99));
        assert_eq!(quantile(&v, 1.0), Some(100));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn generator_is_deterministic_and_matches_the_declared_schema() {
        let schema = declared_bids_schema().unwrap();
        let a = generate_bids(&schema, 1000, 300, 7).unwrap();
        let b = generate_bids(&schema, 1000, 300, 7).unwrap();
        assert_eq!(a.len(), 4);
        assert_eq!(a.iter().map(|b| b.num_rows()).sum::<usize>(), 1000);
        assert_eq!(a, b);
        assert_eq!(a[0].schema(), schema);
        // Independent of batching.
        let c = generate_bids(&schema, 1000, 1000, 7).unwrap();
        assert_eq!(arrow::compute::concat_batches(&schema, &a).unwrap(), c[0]);
    }
}
