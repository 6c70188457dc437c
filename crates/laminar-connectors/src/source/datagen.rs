//! The `DATAGEN` source: a deterministic Nexmark-style event generator.
//!
//! One source generates one table (`table = 'bids' | 'persons' | 'auctions'`).
//! The data model follows Nexmark (persons open auctions, bids reference
//! recent auctions and persons, half of the bids go to a few "hot" auctions and
//! bidders) but the values are not bit-identical to the Nexmark generator.
//!
//! Determinism: every value of event `i` is a hash of `(seed, i, column)`, so the
//! output depends only on the seed and the event index, never on how the
//! caller batches its polls; event `i` can be regenerated on its own (a restart
//! resumes at an index).
//!
//! Event time: event `i` has `ts = start.ms + i * gap`, where `gap` is 1 ms, or
//! `1000 / rate` ms when `rate` is set (so event time advances with the wall
//! clock); with `out_of_order.ms = d`, each `ts` is moved back by a pseudo-random
//! amount in `[0, d]`, so a watermark delay of `d` covers all disorder.
//! `start.ms` defaults to 1_700_000_000_000 (2023-11-14T22:13:20Z) so timestamps
//! look real.
//!
//! Speed: columns are generated whole, straight into Arrow buffers; strings
//! are copied from small precomputed sets, never formatted per row. Columns not
//! declared are not generated at all.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow::buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use arrow::compute::{can_cast_types, cast};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::connector::{SourceConnector, SourceConnectorMetrics, SourcePoll};
use crate::error::ConnectorError;
use crate::options::ConnectorOptions;
use crate::registry::ConfigKey;
use crate::source::files::parse_error_policy;

const NAME: &str = "DATAGEN";

/// Default event-time base: 2023-11-14T22:13:20Z.
pub const DEFAULT_START_MS: i64 = 1_700_000_000_000;

/// Options of the DATAGEN source.
pub(crate) const CONFIG_KEYS: &[ConfigKey] = &[
    ConfigKey {
        key: "table",
        required: false,
        default: Some("bids"),
        description: "bids | persons | auctions",
    },
    ConfigKey {
        key: "seed",
        required: false,
        default: Some("42"),
        description: "the same seed always generates the same events",
    },
    ConfigKey {
        key: "rate",
        required: false,
        default: Some("0"),
        description: "events per second (0 = as fast as polled)",
    },
    ConfigKey {
        key: "events",
        required: false,
        default: None,
        description: "total events, then the source ends (absent = unbounded)",
    },
    ConfigKey {
        key: "batch.size",
        required: false,
        default: Some("4096"),
        description: "maximum rows per batch",
    },
    ConfigKey {
        key: "start.ms",
        required: false,
        default: Some("1700000000000"),
        description: "event time of the first event, epoch milliseconds",
    },
    ConfigKey {
        key: "out_of_order.ms",
        required: false,
        default: Some("0"),
        description: "maximum event-time disorder in milliseconds",
    },
    ConfigKey {
        key: "error.policy",
        required: false,
        default: Some("fail"),
        description: "accepted for uniformity; generated rows are never bad",
    },
];

/// A generated table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Table {
    Bids,
    Persons,
    Auctions,
}

impl Table {
    const NAMES: &'static [&'static str] = &["bids", "persons", "auctions"];

    fn name(self) -> &'static str {
        match self {
            Self::Bids => "bids",
            Self::Persons => "persons",
            Self::Auctions => "auctions",
        }
    }

    fn columns(self) -> &'static [(&'static str, Col)] {
        match self {
            Self::Bids => &[
                ("auction", Col::BidAuction),
                ("bidder", Col::BidBidder),
                ("price", Col::BidPrice),
                ("channel", Col::Channel),
                ("url", Col::Url),
                ("ts", Col::Ts),
                ("extra", Col::Extra),
            ],
            Self::Persons => &[
                ("id", Col::Id),
                ("name", Col::Name),
                ("email_address", Col::Email),
                ("credit_card", Col::CreditCard),
                ("city", Col::City),
                ("state", Col::State),
                ("ts", Col::Ts),
                ("extra", Col::Extra),
            ],
            Self::Auctions => &[
                ("id", Col::Id),
                ("item_name", Col::ItemName),
                ("description", Col::Description),
                ("initial_bid", Col::InitialBid),
                ("reserve", Col::Reserve),
                ("ts", Col::Ts),
                ("expires", Col::Expires),
                ("seller", Col::Seller),
                ("category", Col::Category),
                ("extra", Col::Extra),
            ],
        }
    }

    /// The table's own schema (all columns NOT NULL).
    fn schema(self) -> Schema {
        Schema::new(
            self.columns()
                .iter()
                .map(|(name, col)| Field::new(*name, col.data_type(), false))
                .collect::<Vec<_>>(),
        )
    }
}

/// A generated column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Col {
    BidAuction,
    BidBidder,
    BidPrice,
    Channel,
    Url,
    Ts,
    Extra,
    Id,
    Name,
    Email,
    CreditCard,
    City,
    State,
    ItemName,
    Description,
    InitialBid,
    Reserve,
    Expires,
    Seller,
    Category,
}

impl Col {
    fn data_type(self) -> DataType {
        match self {
            Self::Ts | Self::Expires => DataType::Timestamp(TimeUnit::Millisecond, None),
            Self::Channel
            | Self::Url
            | Self::Extra
            | Self::Name
            | Self::Email
            | Self::CreditCard
            | Self::City
            | Self::State
            | Self::ItemName
            | Self::Description => DataType::Utf8,
            _ => DataType::Int64,
        }
    }

    /// Per-column hash salt, so columns are independent.
    fn salt(self) -> u64 {
        (self as u64 + 1).wrapping_mul(0xD6E8_FEB8_6659_FD93)
    }
}

/// Validated DATAGEN options.
#[derive(Debug, Clone)]
pub(crate) struct DatagenConfig {
    table: Table,
    seed: u64,
    rate: u64,
    events: Option<u64>,
    batch_size: usize,
    start_ms: i64,
    out_of_order_ms: u64,
}

impl DatagenConfig {
    pub(crate) fn from_options(options: &ConnectorOptions) -> Result<Self, ConnectorError> {
        let table = match options.get_choice(NAME, "table", Table::NAMES)? {
            Some("persons") => Table::Persons,
            Some("auctions") => Table::Auctions,
            _ => Table::Bids,
        };
        let batch_size = options.get_u64(NAME, "batch.size")?.unwrap_or(4096);
        if batch_size == 0 {
            return Err(ConnectorError::InvalidOption {
                connector: NAME.to_string(),
                key: "batch.size".to_string(),
                value: "0".to_string(),
                reason: "must be at least 1".to_string(),
            });
        }
        let start_ms = match options.get_str("start.ms") {
            None => DEFAULT_START_MS,
            Some(v) => v
                .trim()
                .parse::<i64>()
                .map_err(|_| ConnectorError::InvalidOption {
                    connector: NAME.to_string(),
                    key: "start.ms".to_string(),
                    value: v.to_string(),
                    reason: "expected epoch milliseconds".to_string(),
                })?,
        };
        let out_of_order_ms = match options.get_duration(NAME, "out_of_order.ms")? {
            Some(d) => u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
            None => 0,
        };
        parse_error_policy(NAME, options)?;
        Ok(Self {
            table,
            seed: options.get_u64(NAME, "seed")?.unwrap_or(42),
            rate: options.get_u64(NAME, "rate")?.unwrap_or(0),
            events: options.get_u64(NAME, "events")?,
            batch_size: usize::try_from(batch_size).unwrap_or(usize::MAX),
            start_ms,
            out_of_order_ms,
        })
    }
}

/// Precomputed strings the string columns pick from.
#[derive(Debug)]
struct Dictionaries {
    channels: Vec<String>,
    urls: Vec<String>,
    names: Vec<String>,
    emails: Vec<String>,
    credit_cards: Vec<String>,
    cities: Vec<String>,
    states: Vec<String>,
    item_names: Vec<String>,
    descriptions: Vec<String>,
}

const CHANNELS: [&str; 4] = ["Google", "Facebook", "Baidu", "Apple"];
const URLS_PER_CHANNEL: usize = 8;
const FIRST_NAMES: [&str; 16] = [
    "Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter",
    "Ana", "Mei", "Ravi", "Olga", "Tomas",
];
const LAST_NAMES: [&str; 16] = [
    "Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris", "Chen",
    "Kumar", "Ivanova", "Novak", "Garcia", "Okafor", "Berg",
];
const DOMAINS: [&str; 4] = ["gmail.com", "yahoo.com", "hotmail.com", "example.org"];
const US_CITIES: [&str; 16] = [
    "Phoenix",
    "Los Angeles",
    "San Francisco",
    "Boise",
    "Portland",
    "Bend",
    "Redmond",
    "Seattle",
    "Kent",
    "Cheyenne",
    "Austin",
    "Denver",
    "Chicago",
    "Boston",
    "Miami",
    "Atlanta",
];
const US_STATES: [&str; 8] = ["AZ", "CA", "ID", "OR", "WA", "WY", "TX", "CO"];
const ADJECTIVES: [&str; 8] = [
    "vintage", "rare", "used", "new", "antique", "signed", "boxed", "limited",
];
const NOUNS: [&str; 8] = [
    "camera", "guitar", "watch", "bicycle", "lamp", "painting", "vase", "record",
];

impl Dictionaries {
    fn new() -> Self {
        let channels = CHANNELS.iter().map(|s| s.to_string()).collect();
        let urls = CHANNELS
            .iter()
            .flat_map(|c| {
                (0..URLS_PER_CHANNEL).map(move |k| {
                    format!(
                        "https://www.nexmark.com/{}/item.htm?query={k}&channel_id={}",
                        c.to_ascii_lowercase(),
                        splitmix64(k as u64) % 10_000
                    )
                })
            })
            .collect();
        let mut names = Vec::new();
        let mut emails = Vec::new();
        for first in FIRST_NAMES {
            for last in LAST_NAMES {
                names.push(format!("{first} {last}"));
                for domain in DOMAINS {
                    emails.push(format!(
                        "{}.{}@{domain}",
                        first.to_ascii_lowercase(),
                        last.to_ascii_lowercase()
                    ));
                }
            }
        }
        let credit_cards = (0..64u64)
            .map(|k| {
                let h = splitmix64(k ^ 0xC4ED_17CA_4D00_0000);
                format!(
                    "{:04} {:04} {:04} {:04}",
                    h % 10_000,
                    (h >> 16) % 10_000,
                    (h >> 32) % 10_000,
                    (h >> 48) % 10_000
                )
            })
            .collect();
        let mut item_names = Vec::new();
        for a in ADJECTIVES {
            for n in NOUNS {
                item_names.push(format!("{a} {n}"));
            }
        }
        let descriptions = item_names
            .iter()
            .map(|i| format!("A {i} in good condition, ships worldwide"))
            .collect();
        Self {
            channels,
            urls,
            names,
            emails,
            credit_cards,
            cities: US_CITIES.iter().map(|s| s.to_string()).collect(),
            states: US_STATES.iter().map(|s| s.to_string()).collect(),
            item_names,
            descriptions,
        }
    }
}

/// Token bucket for `rate`: refills `rate` tokens per second, holds at most
/// one second's worth (a stalled consumer catches up by at most one second).
#[derive(Debug)]
struct Pacer {
    rate: f64,
    tokens: f64,
    last: Option<Instant>,
}

/// Longest sleep inside `poll_batch` when tokens are about to arrive.
const MAX_SLEEP: Duration = Duration::from_millis(5);

impl Pacer {
    fn refill(&mut self) {
        let now = Instant::now();
        if let Some(last) = self.last {
            let dt = now.duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + dt * self.rate).min(self.rate.max(1.0));
        }
        self.last = Some(now);
    }

    /// Whole tokens available, sleeping briefly if the next one is close.
    fn available(&mut self) -> u64 {
        self.refill();
        if self.tokens < 1.0 {
            let wait = Duration::from_secs_f64((1.0 - self.tokens) / self.rate);
            if wait <= MAX_SLEEP {
                std::thread::sleep(wait);
                self.refill();
            }
        }
        self.tokens as u64
    }

    fn take(&mut self, n: u64) {
        self.tokens -= n as f64;
    }
}

/// The DATAGEN source. Build it with [`crate::create_source`].
pub struct DatagenSource {
    config: DatagenConfig,
    schema: SchemaRef,
    /// Per declared column: the generated column and the cast target, if any.
    plan: Vec<(Col, Option<DataType>)>,
    dicts: Dictionaries,
    /// Index of the next event.
    next: u64,
    /// Event-time gap between consecutive events, in microseconds.
    gap_us: u64,
    pacer: Option<Pacer>,
    metrics: SourceConnectorMetrics,
}

impl DatagenSource {
    /// Builds the generator for `declared` (a subset of the table's columns, by
    /// name, in any order, with any castable types); an empty `declared` means
    /// the whole table.
    pub(crate) fn new(config: DatagenConfig, declared: SchemaRef) -> Result<Self, ConnectorError> {
        let table = config.table;
        let schema = if declared.fields().is_empty() {
            Arc::new(table.schema())
        } else {
            declared
        };
        let mut plan = Vec::with_capacity(schema.fields().len());
        for field in schema.fields() {
            let Some((_, col)) = table
                .columns()
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(field.name()))
            else {
                return Err(ConnectorError::UnknownColumn {
                    connector: format!("{NAME} (table = '{}')", table.name()),
                    column: field.name().clone(),
                    available: table.columns().iter().map(|(n, _)| n.to_string()).collect(),
                });
            };
            let native = col.data_type();
            let target = field.data_type();
            if &native != target && !can_cast_types(&native, target) {
                return Err(ConnectorError::IncompatibleColumn {
                    connector: format!("{NAME} (table = '{}')", table.name()),
                    column: field.name().clone(),
                    declared: target.clone(),
                    actual: native,
                });
            }
            plan.push((*col, (&native != target).then(|| target.clone())));
        }
        let gap_us = 1_000_000u64
            .checked_div(config.rate)
            .map_or(1_000, |gap| gap.max(1));
        let pacer = (config.rate > 0).then_some(Pacer {
            rate: config.rate as f64,
            tokens: 0.0,
            last: None,
        });
        Ok(Self {
            config,
            schema,
            plan,
            dicts: Dictionaries::new(),
            next: 0,
            gap_us,
            pacer,
            metrics: SourceConnectorMetrics::default(),
        })
    }

    /// Index of the next event to generate.
    pub fn next_event(&self) -> u64 {
        self.next
    }

    /// Generates events `[first, first + n)`.
    fn generate(&self, first: u64, n: usize) -> Result<RecordBatch, ConnectorError> {
        let mut columns = Vec::with_capacity(self.plan.len());
        for (col, target) in &self.plan {
            let array = self.column(*col, first, n);
            columns.push(match target {
                Some(t) => cast(&array, t)?,
                None => array,
            });
        }
        Ok(RecordBatch::try_new(Arc::clone(&self.schema), columns)?)
    }

    fn column(&self, col: Col, first: u64, n: usize) -> ArrayRef {
        let key = self.config.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ col.salt();
        let h = move |i: u64| splitmix64(key ^ i.wrapping_mul(0xBF58_476D_1CE4_E5B9));
        let range = first..first + n as u64;
        let d = &self.dicts;
        match col {
            Col::BidAuction => ints(range, |i| {
                let r = h(i);
                let latest = i * 3 / 46; // 3 auctions per 46 bids
                if r & 1 == 0 {
                    1000 + (latest / HOT_GROUP) * HOT_GROUP // hot auction
                } else {
                    1000 + latest.saturating_sub((r >> 8) % 1000)
                }
            }),
            Col::BidBidder => ints(range, |i| {
                let r = h(i);
                let latest = i / 46; // 1 person per 46 bids
                if r & 1 == 0 {
                    1000 + (latest / HOT_GROUP) * HOT_GROUP // hot bidder
                } else {
                    1000 + latest.saturating_sub((r >> 8) % 1000)
                }
            }),
            Col::BidPrice => ints(range, |i| {
                let r = h(i);
                100 + (r % 10_000) * (1 + ((r >> 32) & 0x3f))
            }),
            Col::Channel => strings(range, &d.channels, |i| {
                (h_channel(self.config.seed, i) % 4) as usize
            }),
            Col::Url => strings(range, &d.urls, |i| {
                let r = h_channel(self.config.seed, i);
                (r % 4) as usize * URLS_PER_CHANNEL + ((r >> 8) % URLS_PER_CHANNEL as u64) as usize
            }),
            Col::Ts => ts_array(self.ts_values(range)),
            Col::Expires => {
                let ts = self.ts_values(range.clone());
                let values = ts
                    .iter()
                    .zip(range)
                    .map(|(t, i)| t + 1_000 * (1 + h(i) % 20) as i64) // open 1..=20 s
                    .collect();
                ts_array(values)
            }
            Col::Extra => Arc::new(StringArray::new(
                OffsetBuffer::new_zeroed(n),
                Buffer::from_vec(Vec::<u8>::new()),
                None,
            )),
            Col::Id => ints(range, |i| 1000 + i),
            Col::Name => strings(range, &d.names, |i| {
                (h_person(self.config.seed, i) % 256) as usize
            }),
            Col::Email => strings(range, &d.emails, |i| {
                let r = h_person(self.config.seed, i);
                ((r % 256) * 4 + (r >> 16) % 4) as usize
            }),
            Col::CreditCard => strings(range, &d.credit_cards, |i| (h(i) % 64) as usize),
            Col::City => strings(range, &d.cities, |i| (h(i) % 16) as usize),
            Col::State => strings(range, &d.states, |i| (h(i) % 8) as usize),
            Col::ItemName => strings(range, &d.item_names, |i| {
                (h_item(self.config.seed, i) % 64) as usize
            }),
            Col::Description => strings(range, &d.descriptions, |i| {
                (h_item(self.config.seed, i) % 64) as usize
            }),
            Col::InitialBid => ints(range, |i| 1 + h_bid(self.config.seed, i) % 10_000),
            Col::Reserve => ints(range, |i| {
                let r = h_bid(self.config.seed, i);
                1 + r % 10_000 + (r >> 20) % 10_000
            }),
            Col::Seller => ints(range, |i| {
                let latest = i / 3; // 1 person per 3 auctions
                1000 + latest.saturating_sub(h(i) % 100)
            }),
            Col::Category => ints(range, |i| 10 + h(i) % 5),
        }
    }

    /// Event times of events in `range` (see the module docs).
    fn ts_values(&self, range: std::ops::Range<u64>) -> Vec<i64> {
        let start = self.config.start_ms;
        let gap_us = self.gap_us;
        let ooo = self.config.out_of_order_ms;
        let key = self.config.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ Col::Ts.salt();
        range
            .map(|i| {
                let nominal = start + (i.wrapping_mul(gap_us) / 1000) as i64;
                if ooo == 0 {
                    nominal
                } else {
                    let r = splitmix64(key ^ i.wrapping_mul(0xBF58_476D_1CE4_E5B9));
                    nominal - (r % (ooo + 1)) as i64
                }
            })
            .collect()
    }
}

/// Bids of a hot auction/bidder share ids in groups of this size.
const HOT_GROUP: u64 = 100;

// Shared hashes for correlated columns (channel+url, name+email, item+description,
// initial_bid+reserve), so the pairs stay consistent.
fn h_channel(seed: u64, i: u64) -> u64 {
    splitmix64(seed ^ 0x00C4_A22E ^ i.wrapping_mul(0xBF58_476D_1CE4_E5B9))
}
fn h_person(seed: u64, i: u64) -> u64 {
    splitmix64(seed ^ 0x009E_250A ^ i.wrapping_mul(0xBF58_476D_1CE4_E5B9))
}
fn h_item(seed: u64, i: u64) -> u64 {
    splitmix64(seed ^ 0x17E3 ^ i.wrapping_mul(0xBF58_476D_1CE4_E5B9))
}
fn h_bid(seed: u64, i: u64) -> u64 {
    splitmix64(seed ^ 0xB1D ^ i.wrapping_mul(0xBF58_476D_1CE4_E5B9))
}

/// SplitMix64 finalizer: a fast, well-mixed 64-bit hash.
#[inline]
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn ts_array(values: Vec<i64>) -> ArrayRef {
    Arc::new(TimestampMillisecondArray::new(
        ScalarBuffer::from(values),
        None,
    ))
}

fn ints(range: std::ops::Range<u64>, f: impl Fn(u64) -> u64) -> ArrayRef {
    let values: Vec<i64> = range.map(|i| f(i) as i64).collect();
    Arc::new(Int64Array::new(ScalarBuffer::from(values), None))
}

/// A string column whose row `i` is `dict[pick(i)]`.
fn strings(range: std::ops::Range<u64>, dict: &[String], pick: impl Fn(u64) -> usize) -> ArrayRef {
    let n = (range.end - range.start) as usize;
    let avg = dict.iter().map(String::len).sum::<usize>() / dict.len().max(1);
    let mut offsets = Vec::with_capacity(n + 1);
    let mut values = Vec::with_capacity(n * (avg + 1));
    offsets.push(0i32);
    for i in range {
        values.extend_from_slice(dict[pick(i)].as_bytes());
        offsets.push(values.len() as i32);
    }
    Arc::new(StringArray::new(
        OffsetBuffer::new(ScalarBuffer::from(offsets)),
        Buffer::from_vec(values),
        None,
    ))
}

impl SourceConnector for DatagenSource {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn poll_batch(&mut self, max_rows: usize) -> Result<SourcePoll, ConnectorError> {
        let mut n = max_rows.max(1).min(self.config.batch_size) as u64;
        if let Some(total) = self.config.events {
            if self.next >= total {
                return Ok(SourcePoll::End);
            }
            n = n.min(total - self.next);
        }
        if let Some(pacer) = &mut self.pacer {
            let available = pacer.available();
            if available == 0 {
                return Ok(SourcePoll::Pending);
            }
            n = n.min(available);
            pacer.take(n);
        }
        let batch = self.generate(self.next, n as usize)?;
        self.next += n;
        self.metrics.records_read += n;
        self.metrics.bytes_read += batch.get_array_memory_size() as u64;
        Ok(SourcePoll::Batch(batch))
    }

    fn metrics(&self) -> SourceConnectorMetrics {
        self.metrics
    }

    /// `event=<index of the next event>`: events depend only on the seed and their index.
    fn position(&self) -> Option<String> {
        Some(format!("event={}", self.next))
    }

    fn seek(&mut self, position: &str) -> Result<(), ConnectorError> {
        let next = position
            .strip_prefix("event=")
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| {
                ConnectorError::Unsupported(format!(
                    "DATAGEN cannot resume at '{position}': expected event=<index>"
                ))
            })?;
        self.next = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Array;

    fn source(pairs: &[(&str, &str)], declared: Schema) -> Result<DatagenSource, ConnectorError> {
        let options = ConnectorOptions::from_pairs(pairs.iter().copied());
        DatagenSource::new(DatagenConfig::from_options(&options)?, Arc::new(declared))
    }

    fn collect(s: &mut DatagenSource, max_rows: usize) -> Vec<RecordBatch> {
        let mut out = Vec::new();
        while let SourcePoll::Batch(b) = s.poll_batch(max_rows).unwrap() {
            out.push(b);
        }
        out
    }

    #[test]
    fn same_seed_same_events_regardless_of_batching() {
        let mut a = source(&[("events", "1000")], Schema::empty()).unwrap();
        let mut b = source(&[("events", "1000"), ("batch.size", "7")], Schema::empty()).unwrap();
        let a = arrow::compute::concat_batches(&a.schema(), &collect(&mut a, 300)).unwrap();
        let b = arrow::compute::concat_batches(&b.schema(), &collect(&mut b, 1000)).unwrap();
        assert_eq!(a.num_rows(), 1000);
        assert_eq!(a, b);
        let mut c = source(&[("events", "1000"), ("seed", "7")], Schema::empty()).unwrap();
        let c = arrow::compute::concat_batches(&c.schema(), &collect(&mut c, 1000)).unwrap();
        assert_ne!(a.column(0), c.column(0));
        assert_eq!(
            a.schema().field(5).data_type(),
            &DataType::Timestamp(TimeUnit::Millisecond, None)
        );
    }

    #[test]
    fn declared_subset_in_any_order_with_casts() {
        let declared = Schema::new(vec![
            Field::new("ts", DataType::Int64, false),
            Field::new("PRICE", DataType::Int64, true),
            Field::new("channel", DataType::Utf8, true),
        ]);
        let mut s = source(&[("events", "3"), ("start.ms", "1000")], declared.clone()).unwrap();
        let batches = collect(&mut s, 10);
        let b = &batches[0];
        assert_eq!(b.schema().as_ref(), &declared);
        let ts = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(ts.values(), &[1000, 1001, 1002]);
        assert!(matches!(s.poll_batch(10).unwrap(), SourcePoll::End));

        let ns = Schema::new(vec![Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Nanosecond, None),
            false,
        )]);
        let mut s = source(&[("events", "1"), ("start.ms", "5")], ns).unwrap();
        let b = &collect(&mut s, 10)[0];
        let v = b
            .column(0)
            .as_any()
            .downcast_ref::<arrow::array::TimestampNanosecondArray>()
            .unwrap();
        assert_eq!(v.value(0), 5_000_000);
    }

    #[test]
    fn unknown_declared_column_lists_available() {
        let declared = Schema::new(vec![Field::new("bidderr", DataType::Int64, true)]);
        let err = source(&[], declared).err().unwrap().to_string();
        assert!(
            err.contains("'bidderr'") && err.contains("auction, bidder, price"),
            "{err}"
        );
    }

    #[test]
    fn persons_and_auctions_tables() {
        for table in ["persons", "auctions"] {
            let mut s = source(&[("table", table), ("events", "50")], Schema::empty()).unwrap();
            let batches = collect(&mut s, 100);
            assert_eq!(batches[0].num_rows(), 50);
            assert_eq!(batches[0].column(0).null_count(), 0);
        }
        let mut s = source(&[("table", "auctions"), ("events", "10")], Schema::empty()).unwrap();
        let b = &collect(&mut s, 100)[0];
        let ts = b
            .column(5)
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .unwrap();
        let exp = b
            .column(6)
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .unwrap();
        assert!((0..10).all(|i| exp.value(i) > ts.value(i)));
    }

    #[test]
    fn out_of_order_stays_within_bound() {
        let declared = Schema::new(vec![Field::new("ts", DataType::Int64, false)]);
        let mut s = source(
            &[
                ("events", "2000"),
                ("start.ms", "0"),
                ("out_of_order.ms", "50"),
            ],
            declared,
        )
        .unwrap();
        let batches = collect(&mut s, 4096);
        let ts = batches[0]
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        let mut disordered = 0;
        for (i, v) in ts.values().iter().enumerate() {
            let nominal = i as i64;
            assert!(*v <= nominal && *v >= nominal - 50);
            disordered += usize::from(*v != nominal);
        }
        assert!(disordered > 0);
    }

    #[test]
    fn rate_limit_paces_output() {
        let mut s = source(&[("rate", "1000")], Schema::empty()).unwrap();
        let start = Instant::now();
        let mut rows = 0;
        while start.elapsed() < Duration::from_millis(100) {
            match s.poll_batch(4096).unwrap() {
                SourcePoll::Batch(b) => rows += b.num_rows(),
                SourcePoll::Pending => std::thread::sleep(Duration::from_millis(1)),
                SourcePoll::End => unreachable!("unbounded"),
            }
        }
        assert!(
            (50..=150).contains(&rows),
            "{rows} rows in 100 ms at 1000/s"
        );
    }
}
