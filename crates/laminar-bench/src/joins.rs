//! Join workloads: generated inputs for lookup, interval, ASOF, temporal and window joins,
//! and the SQL each one runs. Inputs are pre-generated batches per source, pushed in event
//! time order (interleaved across sources) so that watermarks of all inputs advance together.

use std::sync::Arc;

use anyhow::{Result, bail};
use arrow::array::{ArrayRef, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;

/// A join workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinWorkload {
    /// Bids joined with a reference table of `table_rows` auctions by primary key.
    Lookup,
    /// Nexmark q3 shape: auctions joined with a persons table by seller, filtered by category
    /// and state.
    Q3,
    /// Bids joined with auctions opened within the 10 s before the bid.
    Interval,
    /// Trades joined with the latest earlier quote of their symbol (1,000 symbols).
    Asof,
    /// Orders joined with the rate of their currency as of the order's time (versioned
    /// stream of 100 currencies).
    Temporal,
    /// Nexmark q8 shape: persons and auctions per 10 s window, joined on seller and window.
    Window,
    /// Nexmark q4 shape: bids joined with their auction while it is open (an updating join
    /// with a state TTL, as its bound `a.expires` is per row), the highest bid per auction in
    /// a view, and the average of those per category in a view over that view.
    Q4,
    /// Nexmark q6 shape: the same highest bids, the last 10 auctions of each seller kept by a
    /// top-N (`ROW_NUMBER() .. WHERE rn <= 10`) and their average per seller.
    Q6,
}

impl JoinWorkload {
    /// Name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            JoinWorkload::Lookup => "lookup",
            JoinWorkload::Q3 => "q3",
            JoinWorkload::Interval => "interval",
            JoinWorkload::Asof => "asof",
            JoinWorkload::Temporal => "temporal",
            JoinWorkload::Window => "window",
            JoinWorkload::Q4 => "q4",
            JoinWorkload::Q6 => "q6",
        }
    }

    /// DDL of the sources, tables and helper streams (everything but the stream `q`).
    pub fn setup_sql(self) -> &'static str {
        match self {
            JoinWorkload::Lookup => {
                "CREATE TABLE auctions (id BIGINT PRIMARY KEY, seller BIGINT, category BIGINT);
                 CREATE SOURCE bids (auction BIGINT, price BIGINT, ts BIGINT, WATERMARK FOR ts AS ts)"
            }
            JoinWorkload::Q3 => {
                "CREATE TABLE persons (id BIGINT PRIMARY KEY, name VARCHAR, city VARCHAR, state VARCHAR);
                 CREATE SOURCE auctions (id BIGINT, seller BIGINT, category BIGINT, ts BIGINT, WATERMARK FOR ts AS ts)"
            }
            JoinWorkload::Interval => {
                "CREATE SOURCE auctions (id BIGINT, seller BIGINT, ts BIGINT, WATERMARK FOR ts AS ts);
                 CREATE SOURCE bids (auction BIGINT, price BIGINT, ts BIGINT, WATERMARK FOR ts AS ts)"
            }
            JoinWorkload::Asof => {
                "CREATE SOURCE quotes (sym BIGINT, bid BIGINT, ts BIGINT, WATERMARK FOR ts AS ts);
                 CREATE SOURCE trades (sym BIGINT, px BIGINT, ts BIGINT, WATERMARK FOR ts AS ts)"
            }
            JoinWorkload::Temporal => {
                "CREATE SOURCE rates (ccy BIGINT, rate BIGINT, ts BIGINT, WATERMARK FOR ts AS ts);
                 CREATE SOURCE orders (ccy BIGINT, amount BIGINT, ts BIGINT, WATERMARK FOR ts AS ts)"
            }
            JoinWorkload::Window => {
                "CREATE SOURCE persons (id BIGINT, name VARCHAR, ts BIGINT, WATERMARK FOR ts AS ts);
                 CREATE SOURCE auctions (id BIGINT, seller BIGINT, ts BIGINT, WATERMARK FOR ts AS ts);
                 CREATE STREAM p AS SELECT id, name, tumble(ts, INTERVAL '10' SECOND) AS starttime
                   FROM persons GROUP BY id, name, tumble(ts, INTERVAL '10' SECOND) EMIT ON WINDOW CLOSE;
                 CREATE STREAM a AS SELECT seller, tumble(ts, INTERVAL '10' SECOND) AS starttime
                   FROM auctions GROUP BY seller, tumble(ts, INTERVAL '10' SECOND) EMIT ON WINDOW CLOSE"
            }
            JoinWorkload::Q4 => {
                "CREATE SOURCE auctions (id BIGINT, seller BIGINT, category BIGINT, expires BIGINT, ts BIGINT, WATERMARK FOR ts AS ts);
                 CREATE SOURCE bids (auction BIGINT, price BIGINT, ts BIGINT, WATERMARK FOR ts AS ts);
                 CREATE STREAM open_bids WITH ('state.ttl' = '20 seconds') AS
                   SELECT a.id, a.category, b.price FROM auctions a JOIN bids b
                   ON a.id = b.auction AND b.ts BETWEEN a.ts AND a.expires;
                 CREATE MATERIALIZED VIEW winning AS
                   SELECT id, category, MAX(price) AS final FROM open_bids GROUP BY id, category"
            }
            JoinWorkload::Q6 => {
                "CREATE SOURCE auctions (id BIGINT, seller BIGINT, category BIGINT, expires BIGINT, ts BIGINT, WATERMARK FOR ts AS ts);
                 CREATE SOURCE bids (auction BIGINT, price BIGINT, ts BIGINT, WATERMARK FOR ts AS ts);
                 CREATE STREAM open_bids WITH ('state.ttl' = '20 seconds') AS
                   SELECT a.id, a.seller, b.price FROM auctions a JOIN bids b
                   ON a.id = b.auction AND b.ts BETWEEN a.ts AND a.expires;
                 CREATE MATERIALIZED VIEW winning AS
                   SELECT id, seller, MAX(price) AS final FROM open_bids GROUP BY id, seller;
                 CREATE MATERIALIZED VIEW last_ten AS
                   SELECT seller, final FROM (SELECT seller, final,
                     ROW_NUMBER() OVER (PARTITION BY seller ORDER BY id DESC) AS rn FROM winning)
                   WHERE rn <= 10"
            }
        }
    }

    /// The joining query (the stream `q`).
    pub fn sql(self) -> &'static str {
        match self {
            JoinWorkload::Lookup => {
                "SELECT b.auction, b.price, a.seller, b.ts FROM bids b JOIN auctions a ON b.auction = a.id"
            }
            JoinWorkload::Q3 => {
                "SELECT p.name, p.city, p.state, a.id FROM auctions a JOIN persons p ON a.seller = p.id \
                 WHERE a.category = 10 AND p.state IN ('OR', 'ID', 'CA')"
            }
            JoinWorkload::Interval => {
                "SELECT b.auction, b.price, a.seller, b.ts FROM bids b JOIN auctions a ON b.auction = a.id \
                 AND b.ts BETWEEN a.ts AND a.ts + INTERVAL '10' SECOND"
            }
            JoinWorkload::Asof => {
                "SELECT t.sym, t.px, q.bid, t.ts FROM trades t ASOF JOIN quotes q \
                 MATCH_CONDITION(t.ts >= q.ts) ON t.sym = q.sym"
            }
            JoinWorkload::Temporal => {
                "SELECT o.ccy, o.amount * r.rate AS converted, o.ts FROM orders o \
                 JOIN rates FOR SYSTEM_TIME AS OF o.ts AS r ON o.ccy = r.ccy"
            }
            JoinWorkload::Window => {
                "SELECT p.id, p.name, p.starttime FROM p JOIN a ON p.id = a.seller AND p.starttime = a.starttime"
            }
            JoinWorkload::Q4 => {
                "SELECT category, AVG(final) AS average_final FROM winning GROUP BY category"
            }
            JoinWorkload::Q6 => {
                "SELECT seller, AVG(final) AS average_final FROM last_ten GROUP BY seller"
            }
        }
    }
}

/// Inputs of a join workload: rows to put in the table before the run, and the stream
/// batches to push in order (source name, batch).
pub struct JoinInput {
    /// `(table, rows)` upserted before timing starts.
    pub table: Option<(&'static str, RecordBatch)>,
    /// Batches in push order.
    pub batches: Vec<(&'static str, RecordBatch)>,
    /// Event-time span of `batches` in ms (each re-push shifts `ts` by it).
    pub span_ms: i64,
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn ints(schema: &[(&str, DataType)], columns: Vec<ArrayRef>) -> Result<RecordBatch> {
    let schema: SchemaRef = Arc::new(Schema::new(
        schema
            .iter()
            .map(|(n, t)| Field::new(*n, t.clone(), true))
            .collect::<Vec<_>>(),
    ));
    Ok(RecordBatch::try_new(schema, columns)?)
}

fn col(v: Vec<i64>) -> ArrayRef {
    Arc::new(Int64Array::from(v))
}

/// Generates about `events` stream events (plus the table) in batches of `batch` rows.
/// Event time advances 1 ms per 1,000 events (1 M events per second of event time).
pub fn generate(
    workload: JoinWorkload,
    events: u64,
    batch: usize,
    table_rows: u64,
    seed: u64,
) -> Result<JoinInput> {
    if batch == 0 || events == 0 {
        bail!("events and batch size must be positive");
    }
    let ts_of = |i: u64| (i / 1000) as i64;
    let h = |i: u64, salt: u64| splitmix64(seed ^ salt ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut out = Vec::new();
    let mut table = None;
    let i64t = DataType::Int64;
    match workload {
        JoinWorkload::Lookup => {
            let ids: Vec<i64> = (0..table_rows as i64).collect();
            table = Some((
                "auctions",
                ints(
                    &[
                        ("id", i64t.clone()),
                        ("seller", i64t.clone()),
                        ("category", i64t.clone()),
                    ],
                    vec![
                        col(ids.clone()),
                        col(ids.iter().map(|i| i % 10_007).collect()),
                        col(ids.iter().map(|i| i % 20).collect()),
                    ],
                )?,
            ));
            let mut i = 0;
            while i < events {
                let n = batch.min((events - i) as usize) as u64;
                let idx: Vec<u64> = (i..i + n).collect();
                out.push((
                    "bids",
                    ints(
                        &[
                            ("auction", i64t.clone()),
                            ("price", i64t.clone()),
                            ("ts", i64t.clone()),
                        ],
                        vec![
                            col(idx.iter().map(|&k| (h(k, 1) % table_rows) as i64).collect()),
                            col(idx.iter().map(|&k| (h(k, 2) % 10_000) as i64).collect()),
                            col(idx.iter().map(|&k| ts_of(k)).collect()),
                        ],
                    )?,
                ));
                i += n;
            }
        }
        JoinWorkload::Q3 => {
            const STATES: [&str; 6] = ["OR", "ID", "CA", "WA", "NV", "AZ"];
            let ids: Vec<i64> = (0..table_rows as i64).collect();
            let schema = Arc::new(Schema::new(vec![
                Field::new("id", DataType::Int64, false),
                Field::new("name", DataType::Utf8, true),
                Field::new("city", DataType::Utf8, true),
                Field::new("state", DataType::Utf8, true),
            ]));
            table = Some((
                "persons",
                RecordBatch::try_new(
                    schema,
                    vec![
                        col(ids.clone()),
                        Arc::new(StringArray::from(
                            ids.iter()
                                .map(|i| format!("person-{i}"))
                                .collect::<Vec<_>>(),
                        )),
                        Arc::new(StringArray::from(
                            ids.iter()
                                .map(|i| format!("city-{}", i % 100))
                                .collect::<Vec<_>>(),
                        )),
                        Arc::new(StringArray::from(
                            ids.iter()
                                .map(|&i| STATES[(h(i as u64, 7) % 6) as usize])
                                .collect::<Vec<_>>(),
                        )),
                    ],
                )?,
            ));
            let mut i = 0;
            while i < events {
                let n = batch.min((events - i) as usize) as u64;
                let idx: Vec<u64> = (i..i + n).collect();
                out.push((
                    "auctions",
                    ints(
                        &[
                            ("id", i64t.clone()),
                            ("seller", i64t.clone()),
                            ("category", i64t.clone()),
                            ("ts", i64t.clone()),
                        ],
                        vec![
                            col(idx.iter().map(|&k| k as i64).collect()),
                            col(idx.iter().map(|&k| (h(k, 1) % table_rows) as i64).collect()),
                            col(idx.iter().map(|&k| (h(k, 2) % 20) as i64).collect()),
                            col(idx.iter().map(|&k| ts_of(k)).collect()),
                        ],
                    )?,
                ));
                i += n;
            }
        }
        JoinWorkload::Interval
        | JoinWorkload::Q4
        | JoinWorkload::Q6
        | JoinWorkload::Asof
        | JoinWorkload::Temporal
        | JoinWorkload::Window => {
            // Two interleaved inputs: the "slow" side gets one event in `ratio`.
            let (left, right, ratio, keys): (&'static str, &'static str, u64, u64) = match workload
            {
                JoinWorkload::Interval | JoinWorkload::Q4 | JoinWorkload::Q6 => {
                    ("auctions", "bids", 10, 0)
                }
                JoinWorkload::Asof => ("quotes", "trades", 2, 1_000),
                JoinWorkload::Temporal => ("rates", "orders", 100, 100),
                _ => ("persons", "auctions", 10, 0),
            };
            let mut i = 0;
            while i < events {
                let n = batch.min((events - i) as usize) as u64;
                let idx: Vec<u64> = (i..i + n).collect();
                let slow: Vec<u64> = idx.iter().copied().filter(|k| k % ratio == 0).collect();
                let fast: Vec<u64> = idx.iter().copied().filter(|k| k % ratio != 0).collect();
                let ts = |v: &[u64]| col(v.iter().map(|&k| ts_of(k)).collect());
                // A bid on one of the 1,000 most recent auctions.
                let bids = |v: &[u64]| {
                    ints(
                        &[
                            ("auction", i64t.clone()),
                            ("price", i64t.clone()),
                            ("ts", i64t.clone()),
                        ],
                        vec![
                            col(v
                                .iter()
                                .map(|&k| ((k / ratio).saturating_sub(h(k, 1) % 1000)) as i64)
                                .collect()),
                            col(v.iter().map(|&k| (h(k, 2) % 10_000) as i64).collect()),
                            ts(v),
                        ],
                    )
                };
                let (slow_batch, fast_batch) = match workload {
                    JoinWorkload::Q4 | JoinWorkload::Q6 => (
                        // Auction k / ratio by one of 1,000 sellers in one of 20 categories,
                        // open for 1 to 10 s.
                        ints(
                            &[
                                ("id", i64t.clone()),
                                ("seller", i64t.clone()),
                                ("category", i64t.clone()),
                                ("expires", i64t.clone()),
                                ("ts", i64t.clone()),
                            ],
                            vec![
                                col(slow.iter().map(|&k| (k / ratio) as i64).collect()),
                                col(slow.iter().map(|&k| (h(k, 5) % 1_000) as i64).collect()),
                                col(slow.iter().map(|&k| (h(k, 3) % 20) as i64).collect()),
                                col(slow
                                    .iter()
                                    .map(|&k| ts_of(k) + 1_000 + (h(k, 4) % 9_000) as i64)
                                    .collect()),
                                ts(&slow),
                            ],
                        )?,
                        bids(&fast)?,
                    ),
                    JoinWorkload::Interval => (
                        // Auction k / ratio, opened at its event time.
                        ints(
                            &[
                                ("id", i64t.clone()),
                                ("seller", i64t.clone()),
                                ("ts", i64t.clone()),
                            ],
                            vec![
                                col(slow.iter().map(|&k| (k / ratio) as i64).collect()),
                                col(slow.iter().map(|&k| (h(k, 3) % 10_000) as i64).collect()),
                                ts(&slow),
                            ],
                        )?,
                        bids(&fast)?,
                    ),
                    JoinWorkload::Asof | JoinWorkload::Temporal => {
                        let (a, b, c) = if workload == JoinWorkload::Asof {
                            ("sym", "bid", "px")
                        } else {
                            ("ccy", "rate", "amount")
                        };
                        (
                            ints(
                                &[(a, i64t.clone()), (b, i64t.clone()), ("ts", i64t.clone())],
                                vec![
                                    col(slow.iter().map(|&k| (h(k, 1) % keys) as i64).collect()),
                                    col(slow.iter().map(|&k| (h(k, 2) % 1000) as i64).collect()),
                                    ts(&slow),
                                ],
                            )?,
                            ints(
                                &[(a, i64t.clone()), (c, i64t.clone()), ("ts", i64t.clone())],
                                vec![
                                    col(fast.iter().map(|&k| (h(k, 1) % keys) as i64).collect()),
                                    col(fast.iter().map(|&k| (h(k, 2) % 1000) as i64).collect()),
                                    ts(&fast),
                                ],
                            )?,
                        )
                    }
                    _ => {
                        // Persons (id = k / ratio) and auctions by recent sellers.
                        let schema = Arc::new(Schema::new(vec![
                            Field::new("id", DataType::Int64, true),
                            Field::new("name", DataType::Utf8, true),
                            Field::new("ts", DataType::Int64, true),
                        ]));
                        (
                            RecordBatch::try_new(
                                schema,
                                vec![
                                    col(slow.iter().map(|&k| (k / ratio) as i64).collect()),
                                    Arc::new(StringArray::from(
                                        slow.iter()
                                            .map(|&k| format!("person-{}", k / ratio))
                                            .collect::<Vec<_>>(),
                                    )),
                                    ts(&slow),
                                ],
                            )?,
                            ints(
                                &[
                                    ("id", i64t.clone()),
                                    ("seller", i64t.clone()),
                                    ("ts", i64t.clone()),
                                ],
                                vec![
                                    col(fast.iter().map(|&k| k as i64).collect()),
                                    col(fast
                                        .iter()
                                        .map(|&k| {
                                            ((k / ratio).saturating_sub(h(k, 1) % 100)) as i64
                                        })
                                        .collect()),
                                    ts(&fast),
                                ],
                            )?,
                        )
                    }
                };
                out.push((left, slow_batch));
                out.push((right, fast_batch));
                i += n;
            }
        }
    }
    Ok(JoinInput {
        table,
        batches: out,
        span_ms: ts_of(events) + 1,
    })
}
