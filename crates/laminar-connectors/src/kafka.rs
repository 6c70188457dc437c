//! The `KAFKA` source and sink (cargo feature `kafka`, librdkafka through `rdkafka`).
//!
//! ## Source
//! Reads the partitions of one or more topics (named, or every existing topic matching
//! `topic.pattern` when the source is created) with a consumer that is *assigned* every
//! partition (no group rebalancing): the positions it reports for checkpoints are the next
//! offset of every partition (`<topic>\t<partition>\t<offset>` lines), and a restore seeks
//! each partition there, so the checkpoint, not the group, owns the offsets. Without a
//! checkpointed position a partition starts per `startup.mode`: `group-offsets` (the
//! group's committed offset, else `auto.offset.reset`, default earliest), `earliest` or
//! `latest`. Messages are decoded into the declared columns per `format`: `json` (one
//! object, fields by name), `csv` (one record without header, fields by position), `raw`
//! (the payload is the one VARCHAR or BYTES value column) or `debezium` (change envelopes
//! read as a changelog: the source declares `_op`); the metadata columns `_topic`,
//! `_partition`, `_offset`, `_timestamp` (ms), `_key` and `_headers` (JSON text), when
//! declared, are filled from the message instead. A message that fails to decode is handled by
//! `error.policy`: `fail` (default; the error names topic, partition and offset), `skip`
//! (counted in `bad_records`) or `dlq` (written to `dlq.topic` with `laminar.error` /
//! `.topic` / `.partition` / `.offset` headers, flushed before a checkpoint records the
//! position, and counted).
//!
//! ## Sink
//! Writes every row as one message (`json`, `csv` or `raw`, as the source reads them; an
//! updating input as Debezium envelopes, or with `upsert` as values and tombstones) to
//! `topic`, keyed by the `key` column's value when given, partitioned by murmur2 of the key
//! as the Java client does (`partitioner = 'key-hash'`, librdkafka's `murmur2_random`;
//! `sticky` keeps keyless messages on one partition for a few milliseconds, `round-robin`
//! places every message on the next partition; `kafka.partitioner` overrides them).
//! At-least-once: `pre_commit` flushes the producer and fails when any message
//! was not acknowledged, so a checkpoint completes only when its output is in the topic.
//! Exactly-once (`delivery.guarantee = 'exactly-once'`): a transactional producer writes one
//! transaction per checkpoint epoch, committed by `commit_epoch` together with a marker offset
//! (see [`Transactions`]); the transaction's rows are kept in the checkpoint
//! (`pre_commit_state`) so that recovery can write them again when the marker shows the
//! transaction was lost (librdkafka cannot resume a transaction of another producer).
//!
//! Options `kafka.<name>` are passed to librdkafka as `<name>` (security settings, timeouts);
//! their values are never shown in errors.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arrow::array::{
    Array, ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::connector::{
    SinkCapabilities, SinkConnector, SinkConnectorMetrics, SourceConnector, SourceConnectorMetrics,
    SourceEnvironment, SourcePoll,
};
use crate::error::ConnectorError;
use crate::format::avro::{self, SchemaRegistry};
use crate::options::ConnectorOptions;
use crate::registry::ConfigKey;

mod fetcher;

use crossbeam_channel::Receiver;
use fetcher::{Chunk, FetchContext, FetchSettings, Fetched, Membership};

const NAME: &str = "KAFKA";

/// The operation column of a changelog (as in `laminar_core::message::OP_COLUMN`).
const OP_COLUMN: &str = "_op";

const BOOTSTRAP_SERVERS: ConfigKey = ConfigKey {
    key: "bootstrap.servers",
    required: true,
    default: None,
    description: "comma-separated broker addresses (host:port)",
};

const FORMAT: ConfigKey = ConfigKey {
    key: "format",
    required: false,
    default: Some("json"),
    description: "message format: json (an object per message), csv (a record per message), raw (the payload is the one value column), debezium (the Debezium JSON change envelope) or avro (Confluent wire format with a Schema Registry)",
};

const REGISTRY_URL: ConfigKey = ConfigKey {
    key: "schema.registry.url",
    required: false,
    default: None,
    description: "format avro: the Schema Registry (http:// or https://)",
};

const REGISTRY_AUTH: ConfigKey = ConfigKey {
    key: "schema.registry.basic.auth.user.info",
    required: false,
    default: None,
    description: "format avro: 'user:password' for the registry's basic authentication (a secret)",
};

const REGISTRY_SUBJECT: ConfigKey = ConfigKey {
    key: "schema.subject",
    required: false,
    default: None,
    description: "format avro: the registry subject (default <topic>-value)",
};

/// Options of the `KAFKA` source (besides `kafka.<name>` pass-through keys).
pub(crate) const SOURCE_KEYS: &[ConfigKey] = &[
    BOOTSTRAP_SERVERS,
    REGISTRY_URL,
    REGISTRY_AUTH,
    REGISTRY_SUBJECT,
    ConfigKey {
        key: "topic",
        required: false,
        default: None,
        description: "topic to read; several separated by commas (or topic.pattern)",
    },
    ConfigKey {
        key: "topic.pattern",
        required: false,
        default: None,
        description: "a regular expression: every existing topic whose whole name matches is read (resolved when the source is created)",
    },
    ConfigKey {
        key: "group.id",
        required: false,
        default: Some("laminardb"),
        description: "consumer group whose committed offsets `group-offsets` starts from",
    },
    ConfigKey {
        key: "startup.mode",
        required: false,
        default: Some("group-offsets"),
        description: "where partitions without a checkpointed offset start: group-offsets, earliest, latest, timestamp or specific-offsets",
    },
    ConfigKey {
        key: "startup.timestamp.ms",
        required: false,
        default: None,
        description: "startup.mode = 'timestamp': the first message at or after this time (ms since the epoch)",
    },
    ConfigKey {
        key: "startup.specific-offsets",
        required: false,
        default: None,
        description: "startup.mode = 'specific-offsets': 'partition:0,offset:42;partition:1,offset:7' (others start at group offsets)",
    },
    FORMAT,
    ConfigKey {
        key: "error.policy",
        required: false,
        default: Some("fail"),
        description: "a message that cannot be decoded: fail, skip (counted) or dlq (written to dlq.topic with error headers, counted)",
    },
    ConfigKey {
        key: "dlq.topic",
        required: false,
        default: None,
        description: "dead-letter topic of error.policy = 'dlq'",
    },
    ConfigKey {
        key: "partition.assignment.strategy",
        required: false,
        default: Some("all"),
        description: "all (this source reads every partition, no group membership) or cooperative-sticky, range, roundrobin (the consumer group splits the partitions between every pipeline reading with the same group.id; a revoked partition is handed over once a checkpoint covers what was read from it)",
    },
    ConfigKey {
        key: "isolation.level",
        required: false,
        default: Some("read_committed"),
        description: "read_committed (messages of open or aborted transactions are not read) or read_uncommitted",
    },
    ConfigKey {
        key: "auto.offset.reset",
        required: false,
        default: Some("earliest"),
        description: "where a partition starts under startup.mode = 'group-offsets' when the group has no offset for it: earliest, latest or none (an error)",
    },
    ConfigKey {
        key: "max.poll.records",
        required: false,
        default: Some("1000"),
        description: "most messages in one batch the source returns (and handed from the consumer to the decoder at a time)",
    },
    ConfigKey {
        key: "poll.timeout.ms",
        required: false,
        default: Some("100"),
        description: "how long the consumer waits for a message when none is ready (ms)",
    },
    ConfigKey {
        key: "backpressure.high.watermark",
        required: false,
        default: Some("0.8"),
        description: "fill of the source's queue (0 to 1) at which its partitions are paused",
    },
    ConfigKey {
        key: "backpressure.low.watermark",
        required: false,
        default: Some("0.5"),
        description: "fill of the source's queue (0 to 1) at which paused partitions are resumed",
    },
];

/// Options of the `KAFKA` sink (besides `kafka.<name>` pass-through keys).
pub(crate) const SINK_KEYS: &[ConfigKey] = &[
    BOOTSTRAP_SERVERS,
    REGISTRY_URL,
    REGISTRY_AUTH,
    REGISTRY_SUBJECT,
    ConfigKey {
        key: "schema.compatibility",
        required: false,
        default: None,
        description: "format avro: the compatibility level set on the subject before registering (BACKWARD, FORWARD, FULL, NONE, ...); an incompatible schema fails the sink's creation",
    },
    ConfigKey {
        key: "topic",
        required: true,
        default: None,
        description: "topic to write",
    },
    ConfigKey {
        key: "key",
        required: false,
        default: None,
        description: "column whose value is the message key (partitioning by key)",
    },
    ConfigKey {
        key: "partitioner",
        required: false,
        default: Some("key-hash"),
        description: "key-hash (murmur2 of the key, like the Java client; keyless messages at random), sticky (keyed as key-hash; keyless messages fill one partition at a time) or round-robin (every message to the next partition, keys ignored)",
    },
    ConfigKey {
        key: "compression.type",
        required: false,
        default: Some("none"),
        description: "none, gzip, snappy, lz4 or zstd",
    },
    ConfigKey {
        key: "upsert",
        required: false,
        default: Some("false"),
        description: "true: changes are written as upserts (the row as the key's value) and deletes as tombstones (key with no value); needs key",
    },
    FORMAT,
    ConfigKey {
        key: "delivery.guarantee",
        required: false,
        default: Some("at-least-once"),
        description: "at-least-once (a checkpoint completes once its messages are acknowledged) or exactly-once (one transaction per checkpoint, committed with it)",
    },
    ConfigKey {
        key: "transactional.id",
        required: false,
        default: None,
        description: "exactly-once: the producer's transactional id (default laminardb-<sink name>); a new producer with the same id fences the previous one",
    },
];

/// The existing topics whose names match `pattern` (internal `__` topics excepted), sorted.
fn topics_matching(
    options: &ConnectorOptions,
    pattern: &regex::Regex,
) -> Result<Vec<String>, ConnectorError> {
    let probe: BaseConsumer = client_config(options)?
        .create()
        .map_err(|e| kafka_error("cannot create the consumer", e))?;
    let metadata = probe
        .fetch_metadata(None, Duration::from_secs(10))
        .map_err(|e| kafka_error("listing topics for topic.pattern", e))?;
    let mut topics: Vec<String> = metadata
        .topics()
        .iter()
        .map(|t| t.name().to_string())
        .filter(|name| !name.starts_with("__") && pattern.is_match(name))
        .collect();
    topics.sort();
    if topics.is_empty() {
        return Err(invalid(
            "topic.pattern",
            pattern.as_str(),
            "no existing topic matches it",
        ));
    }
    Ok(topics)
}

/// The registry client of `format = 'avro'`.
fn registry(options: &ConnectorOptions) -> Option<SchemaRegistry> {
    options.get_str("schema.registry.url").map(|url| {
        SchemaRegistry::new(url, options.get_str("schema.registry.basic.auth.user.info"))
    })
}

/// The registry subject of a topic's values.
fn subject(options: &ConnectorOptions, topic: &str) -> String {
    options
        .get_str("schema.subject")
        .map_or_else(|| format!("{topic}-value"), str::to_string)
}

/// Prefix of options passed through to librdkafka.
pub(crate) const PASSTHROUGH: &str = "kafka.";

fn kafka_error(context: impl Into<String>, reason: impl std::fmt::Display) -> ConnectorError {
    ConnectorError::Kafka {
        context: context.into(),
        reason: reason.to_string(),
    }
}

fn invalid(key: &str, value: &str, reason: impl Into<String>) -> ConnectorError {
    ConnectorError::InvalidOption {
        connector: NAME.to_string(),
        key: key.to_string(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// The client settings shared by source and sink: servers and pass-through keys.
fn client_config(options: &ConnectorOptions) -> Result<ClientConfig, ConnectorError> {
    let mut config = ClientConfig::new();
    config.set(
        "bootstrap.servers",
        options.require_str(NAME, "bootstrap.servers")?,
    );
    for (key, value) in options.iter() {
        if let Some(name) = key.strip_prefix(PASSTHROUGH) {
            config.set(name, value);
        }
    }
    Ok(config)
}

/// How a message's payload holds a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MessageFormat {
    /// One JSON object; fields by column name.
    Json,
    /// One CSV record without header; fields by column position.
    Csv,
    /// The payload itself is the single (non-metadata) column's value.
    Raw,
    /// The Debezium JSON envelope (`before`, `after`, `op`, `ts_ms`): a changelog.
    Debezium,
    /// Avro records in the Confluent wire format, schemas from a Schema Registry.
    Avro,
}

fn message_format(options: &ConnectorOptions) -> Result<MessageFormat, ConnectorError> {
    match options
        .get_str("format")
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("json") => Ok(MessageFormat::Json),
        Some("csv") => Ok(MessageFormat::Csv),
        Some("raw") => Ok(MessageFormat::Raw),
        Some("debezium" | "debezium-json" | "debezium_json") => Ok(MessageFormat::Debezium),
        Some("avro" | "confluent-avro" | "confluent_avro") => {
            if options.get_str("schema.registry.url").is_none() {
                return Err(ConnectorError::MissingOption {
                    connector: NAME.to_string(),
                    key: "schema.registry.url".to_string(),
                });
            }
            Ok(MessageFormat::Avro)
        }
        Some(_) => Err(invalid(
            "format",
            options.get_str("format").unwrap_or_default(),
            "expected json, csv, raw, debezium or avro",
        )),
    }
}

/// Checks that a raw-format row has exactly one value column of a text or binary type.
fn check_raw(fields: &[&arrow::datatypes::Field]) -> Result<(), ConnectorError> {
    match fields {
        [f] if matches!(f.data_type(), DataType::Utf8 | DataType::Binary) => Ok(()),
        _ => Err(invalid(
            "format",
            "raw",
            format!(
                "raw messages carry one VARCHAR or BYTES column (besides metadata columns); found {}",
                fields
                    .iter()
                    .map(|f| format!("{} {}", f.name(), f.data_type()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// Where a partition without a checkpointed offset starts.
#[derive(Debug, Clone, PartialEq, Eq)]
enum StartupMode {
    GroupOffsets,
    Earliest,
    Latest,
    /// The first message at or after this time (ms) in every partition.
    Timestamp(i64),
    /// These offsets by (topic or any, partition); other partitions use group offsets.
    SpecificOffsets(Vec<(Option<String>, i32, i64)>),
}

/// Parses `startup.specific-offsets`: `partition:0,offset:42;partition:1,offset:7`, each
/// entry optionally with `topic:<name>,` first.
fn parse_specific_offsets(value: &str) -> Result<Vec<(Option<String>, i32, i64)>, ConnectorError> {
    let bad = || {
        invalid(
            "startup.specific-offsets",
            value,
            "expected entries like 'partition:0,offset:42' separated by ';' (optionally 'topic:<name>,' first)",
        )
    };
    let mut out = Vec::new();
    for entry in value.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let (mut topic, mut partition, mut offset) = (None, None, None);
        for part in entry.split(',') {
            let (k, v) = part.split_once(':').ok_or_else(bad)?;
            match k.trim() {
                "topic" => topic = Some(v.trim().to_string()),
                "partition" => partition = Some(v.trim().parse::<i32>().map_err(|_| bad())?),
                "offset" => offset = Some(v.trim().parse::<i64>().map_err(|_| bad())?),
                _ => return Err(bad()),
            }
        }
        match (partition, offset) {
            (Some(p), Some(o)) if p >= 0 && o >= 0 => out.push((topic, p, o)),
            _ => return Err(bad()),
        }
    }
    if out.is_empty() {
        return Err(bad());
    }
    Ok(out)
}

/// A validated source configuration.
#[derive(Debug, Clone)]
pub(crate) struct KafkaSourceConfig {
    options: ConnectorOptions,
    topics: Vec<String>,
    /// `topic.pattern`, anchored; resolved into `topics` when the source opens.
    pattern: Option<regex::Regex>,
    startup: StartupMode,
    bad: BadMessages,
    format: MessageFormat,
    /// `partition.assignment.strategy` of group membership; `None` reads every partition.
    group_strategy: Option<String>,
    isolation: String,
    offset_reset: String,
    high_watermark: f64,
    low_watermark: f64,
    chunk_rows: usize,
    poll_timeout: Duration,
}

/// What happens to a message that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
enum BadMessages {
    Fail,
    Skip,
    /// Written to this topic with the reason and origin in headers.
    DeadLetter(String),
}

impl KafkaSourceConfig {
    pub(crate) fn from_options(options: &ConnectorOptions) -> Result<Self, ConnectorError> {
        let format = message_format(options)?;
        let pattern = match (options.get_str("topic"), options.get_str("topic.pattern")) {
            (Some(_), Some(p)) => {
                return Err(invalid(
                    "topic.pattern",
                    p,
                    "give either topic or topic.pattern, not both",
                ));
            }
            (None, None) => {
                return Err(ConnectorError::MissingOption {
                    connector: NAME.to_string(),
                    key: "topic".to_string(),
                });
            }
            (None, Some(p)) => Some(
                regex::Regex::new(&format!("^(?:{p})$"))
                    .map_err(|e| invalid("topic.pattern", p, e.to_string()))?,
            ),
            (Some(_), None) => None,
        };
        let topics: Vec<String> = options
            .get_str("topic")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect();
        if topics.is_empty() && pattern.is_none() {
            return Err(invalid(
                "topic",
                options.get_str("topic").unwrap_or_default(),
                "name at least one topic",
            ));
        }
        let startup = match options.get_str("startup.mode") {
            None => StartupMode::GroupOffsets,
            Some(m) => match m.to_ascii_lowercase().replace('_', "-").as_str() {
                "group-offsets" => StartupMode::GroupOffsets,
                "earliest" => StartupMode::Earliest,
                "latest" => StartupMode::Latest,
                "specific-offsets" => StartupMode::SpecificOffsets(parse_specific_offsets(
                    options.get_str("startup.specific-offsets").ok_or_else(|| {
                        ConnectorError::MissingOption {
                            connector: NAME.to_string(),
                            key: "startup.specific-offsets".to_string(),
                        }
                    })?,
                )?),
                "timestamp" => {
                    let ts = options.require_str(NAME, "startup.timestamp.ms")?;
                    StartupMode::Timestamp(ts.trim().parse::<i64>().map_err(|_| {
                        invalid(
                            "startup.timestamp.ms",
                            ts,
                            "expected milliseconds since the epoch",
                        )
                    })?)
                }
                _ => {
                    return Err(invalid(
                        "startup.mode",
                        m,
                        "expected group-offsets, earliest, latest, timestamp or specific-offsets",
                    ));
                }
            },
        };
        for (key, mode) in [
            ("startup.specific-offsets", "specific-offsets"),
            ("startup.timestamp.ms", "timestamp"),
        ] {
            if options.contains(key)
                && !options
                    .get_str("startup.mode")
                    .is_some_and(|m| m.eq_ignore_ascii_case(mode))
            {
                return Err(invalid(
                    key,
                    options.get_str(key).unwrap_or_default(),
                    format!("only used with startup.mode = '{mode}'"),
                ));
            }
        }
        let bad = match options
            .get_str("error.policy")
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("fail") => BadMessages::Fail,
            Some("skip") => BadMessages::Skip,
            Some("dlq") => match options.get_str("dlq.topic") {
                Some(t) if !t.trim().is_empty() => BadMessages::DeadLetter(t.trim().to_string()),
                _ => {
                    return Err(ConnectorError::MissingOption {
                        connector: NAME.to_string(),
                        key: "dlq.topic".to_string(),
                    });
                }
            },
            Some(_) => {
                return Err(invalid(
                    "error.policy",
                    options.get_str("error.policy").unwrap_or_default(),
                    "expected fail, skip or dlq",
                ));
            }
        };
        if options.contains("dlq.topic") && !matches!(bad, BadMessages::DeadLetter(_)) {
            return Err(invalid(
                "dlq.topic",
                options.get_str("dlq.topic").unwrap_or_default(),
                "only used with error.policy = 'dlq'",
            ));
        }
        let group_strategy = match options
            .get_choice(
                NAME,
                "partition.assignment.strategy",
                &["all", "cooperative-sticky", "range", "roundrobin"],
            )?
            .unwrap_or("all")
        {
            "all" => None,
            strategy => Some(strategy.to_string()),
        };
        let isolation = options
            .get_choice(
                NAME,
                "isolation.level",
                &["read_committed", "read_uncommitted"],
            )?
            .unwrap_or("read_committed");
        let offset_reset = options
            .get_choice(NAME, "auto.offset.reset", &["earliest", "latest", "none"])?
            .unwrap_or("earliest");
        let fraction = |key: &str, default: f64| -> Result<f64, ConnectorError> {
            match options.get_str(key) {
                None => Ok(default),
                Some(v) => match v.trim().parse::<f64>() {
                    Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
                    _ => Err(invalid(key, v, "expected a fraction between 0 and 1")),
                },
            }
        };
        let high_watermark = fraction("backpressure.high.watermark", 0.8)?;
        let low_watermark = fraction("backpressure.low.watermark", 0.5)?;
        if low_watermark >= high_watermark {
            return Err(invalid(
                "backpressure.low.watermark",
                options
                    .get_str("backpressure.low.watermark")
                    .unwrap_or("0.5"),
                format!("must be below backpressure.high.watermark ({high_watermark})"),
            ));
        }
        let chunk_rows = match options.get_u64(NAME, "max.poll.records")? {
            None => 1000,
            Some(0) => return Err(invalid("max.poll.records", "0", "must be at least 1")),
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
        };
        let poll_timeout = match options.get_u64(NAME, "poll.timeout.ms")? {
            None => Duration::from_millis(100),
            Some(0) => return Err(invalid("poll.timeout.ms", "0", "must be at least 1")),
            Some(ms) => Duration::from_millis(ms),
        };
        client_config(options)?;
        Ok(KafkaSourceConfig {
            options: options.clone(),
            topics,
            pattern,
            startup,
            bad,
            format,
            group_strategy,
            isolation: isolation.to_string(),
            offset_reset: offset_reset.to_string(),
            high_watermark,
            low_watermark,
            chunk_rows,
            poll_timeout,
        })
    }
}

/// Metadata columns a source fills from the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Meta {
    Topic,
    Partition,
    Offset,
    Timestamp,
    Key,
    Headers,
}

impl Meta {
    fn of(name: &str) -> Option<Meta> {
        Some(match name {
            "_topic" => Meta::Topic,
            "_partition" => Meta::Partition,
            "_offset" => Meta::Offset,
            "_timestamp" => Meta::Timestamp,
            "_key" => Meta::Key,
            "_headers" => Meta::Headers,
            _ => return None,
        })
    }
}

/// One decoded message's metadata.
#[derive(Clone)]
struct MessageMeta {
    topic: String,
    partition: i32,
    offset: i64,
    timestamp: Option<i64>,
    key: Option<Vec<u8>>,
    /// The headers as a JSON object text (values as UTF-8, lossy; NULL values as null),
    /// only when `_headers` is declared.
    headers: Option<String>,
}

/// See the module docs.
pub(crate) struct KafkaSource {
    config: KafkaSourceConfig,
    schema: SchemaRef,
    /// The declared columns decoded from the JSON payload.
    payload_schema: SchemaRef,
    /// Per declared column: a metadata column, or the index in `payload_schema`.
    columns: Vec<Result<Meta, usize>>,
    /// `format = 'avro'`: the registry that resolves writer schemas (with its cache).
    registry: Option<std::sync::Mutex<SchemaRegistry>>,
    /// `format = 'avro'`: decodes message bodies straight into Arrow.
    native_avro: std::sync::Mutex<avro::NativeDecoder>,
    consumer: Arc<BaseConsumer<FetchContext>>,
    /// Next offset to read per (topic, partition): what a checkpoint records.
    next: BTreeMap<(String, i32), i64>,
    /// Checkpointed offsets to start from (set by `seek` before the first poll).
    resume: BTreeMap<(String, i32), i64>,
    /// The fetch thread, once started (at the first poll).
    fetch: Option<(Receiver<Fetched>, std::thread::JoinHandle<()>)>,
    /// A chunk of messages partly returned, and how far.
    inbox: Option<(Arc<Chunk>, usize)>,
    /// What the runtime offered in `attach`.
    environment: SourceEnvironment,
    /// Partitions started by `startup.mode = 'timestamp'` that have not yet delivered a
    /// message at or after that time: earlier messages are passed over (the broker's offset
    /// lookup may start a partition too early; some brokers answer the first offset).
    skip_before: BTreeMap<(String, i32), i64>,
    /// Producer of the dead-letter topic (`error.policy = 'dlq'`), made on first use.
    dead_letters: Option<(ThreadedProducer<SinkContext>, Arc<Deliveries>)>,
    metrics: SourceConnectorMetrics,
}

impl KafkaSource {
    pub(crate) fn open(
        mut config: KafkaSourceConfig,
        declared: SchemaRef,
    ) -> Result<KafkaSource, ConnectorError> {
        if let Some(pattern) = config.pattern.clone() {
            config.topics = topics_matching(&config.options, &pattern)?;
        }
        let mut registry = match config.format {
            MessageFormat::Avro => registry(&config.options),
            _ => None,
        };
        let declared = match &mut registry {
            // Without declared columns, the subject's latest schema supplies them.
            Some(r) if declared.fields().is_empty() => {
                let topic = config.topics.first().cloned().unwrap_or_default();
                let (_, schema) = r.latest(&subject(&config.options, &topic))?;
                avro::arrow_schema_of(&schema)?
            }
            _ => declared,
        };
        if declared.fields().is_empty() {
            return Err(invalid(
                "topic",
                &config.topics.join(","),
                "declare the columns of a Kafka source (its messages carry no schema)",
            ));
        }
        if config.format == MessageFormat::Raw {
            let values: Vec<&arrow::datatypes::Field> = declared
                .fields()
                .iter()
                .filter(|f| Meta::of(f.name()).is_none())
                .map(|f| f.as_ref())
                .collect();
            check_raw(&values)?;
        }
        if config.format == MessageFormat::Debezium {
            match declared.field_with_name(OP_COLUMN) {
                Ok(f) if f.data_type() == &DataType::Utf8 => {}
                _ => {
                    return Err(invalid(
                        "format",
                        "debezium",
                        "Debezium messages are changes: declare the column `_op VARCHAR` (it gets I, U-, U+, D or r; `_ts_ms BIGINT` may be declared too)",
                    ));
                }
            }
        }
        let mut columns = Vec::new();
        let mut payload_fields = Vec::new();
        for field in declared.fields() {
            match Meta::of(field.name()) {
                Some(meta) => columns.push(Ok(meta)),
                None => {
                    columns.push(Err(payload_fields.len()));
                    payload_fields.push(field.as_ref().clone().with_nullable(true));
                }
            }
        }
        let mut client = client_config(&config.options)?;
        client
            .set(
                "group.id",
                config.options.get_str("group.id").unwrap_or("laminardb"),
            )
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false");
        for (named, value) in [
            ("auto.offset.reset", &config.offset_reset),
            ("isolation.level", &config.isolation),
        ] {
            if config.options.contains(named) || client.get(named).is_none() {
                client.set(named, value.as_str());
            }
        }
        if let Some(strategy) = &config.group_strategy {
            client.set("partition.assignment.strategy", strategy.as_str());
        }
        if client.get("fetch.queue.backoff.ms").is_none() {
            // librdkafka's default (1 s) pauses fetching for a second whenever its local
            // queue reached its threshold, even once the source drained it: with it the
            // source read 0.19 M messages/s in `laminar-bench kafka`, with 10 ms 1.5 M.
            client.set("fetch.queue.backoff.ms", "10");
        }
        let wants_headers = columns.contains(&Ok(Meta::Headers));
        let max_poll_interval_ms = client
            .get("max.poll.interval.ms")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(300_000);
        let context = FetchContext::new(FetchSettings {
            wants_headers,
            chunk_rows: config.chunk_rows,
            poll_timeout: config.poll_timeout,
            keepalive: Duration::from_millis((max_poll_interval_ms / 3).max(1)),
            high_watermark: config.high_watermark,
            low_watermark: config.low_watermark,
            startup: config.startup.clone(),
        });
        let consumer: BaseConsumer<FetchContext> = client
            .create_with_context(context)
            .map_err(|e| kafka_error("cannot create the consumer", e))?;
        Ok(KafkaSource {
            config,
            registry: registry.map(std::sync::Mutex::new),
            native_avro: std::sync::Mutex::new(avro::NativeDecoder::default()),
            schema: declared,
            payload_schema: Arc::new(Schema::new(payload_fields)),
            columns,
            consumer: Arc::new(consumer),
            next: BTreeMap::new(),
            resume: BTreeMap::new(),
            fetch: None,
            inbox: None,
            environment: SourceEnvironment::detached(),
            skip_before: BTreeMap::new(),
            dead_letters: None,
            metrics: SourceConnectorMetrics::default(),
        })
    }

    /// Assigns every partition of the topics, each at its checkpointed offset or per the
    /// startup mode.
    /// The partitions of every topic read, from the broker's metadata.
    fn partitions(&self) -> Result<Vec<(String, i32)>, ConnectorError> {
        let mut partitions = Vec::new();
        for topic in &self.config.topics {
            let metadata = self
                .consumer
                .fetch_metadata(Some(topic), Duration::from_secs(10))
                .map_err(|e| kafka_error(format!("topic '{topic}': cannot read metadata"), e))?;
            let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
                return Err(kafka_error(format!("topic '{topic}'"), "not found"));
            };
            if let Some(e) = found.error() {
                return Err(kafka_error(
                    format!("topic '{topic}'"),
                    rdkafka::error::RDKafkaErrorCode::from(e),
                ));
            }
            if found.partitions().is_empty() {
                return Err(kafka_error(format!("topic '{topic}'"), "has no partitions"));
            }
            partitions.extend(found.partitions().iter().map(|p| (topic.clone(), p.id())));
        }
        Ok(partitions)
    }

    fn assign(&mut self) -> Result<(), ConnectorError> {
        let mut list = TopicPartitionList::new();
        for (topic, partition) in self.partitions()? {
            let offset = match self.resume.get(&(topic.clone(), partition)) {
                Some(&o) => Offset::Offset(o),
                None => match &self.config.startup {
                    StartupMode::GroupOffsets => Offset::Stored,
                    StartupMode::Earliest => Offset::Beginning,
                    StartupMode::Latest => Offset::End,
                    // A time to be looked up below, per partition.
                    StartupMode::Timestamp(ts) => Offset::Offset(*ts),
                    StartupMode::SpecificOffsets(offsets) => offsets
                        .iter()
                        .find(|(t, part, _)| {
                            *part == partition && t.as_ref().is_none_or(|t| *t == topic)
                        })
                        .map_or(Offset::Stored, |(_, _, o)| Offset::Offset(*o)),
                },
            };
            list.add_partition_offset(&topic, partition, offset)
                .map_err(|e| kafka_error(format!("topic '{topic}'"), e))?;
            if let Offset::Offset(o) = offset {
                self.next.insert((topic, partition), o);
            }
        }
        if let StartupMode::Timestamp(ts) = self.config.startup {
            list = self.offsets_at(&list, ts)?;
        }
        self.consumer
            .assign(&list)
            .map_err(|e| kafka_error("cannot assign partitions", e))?;
        Ok(())
    }

    /// Starts reading: assigns every partition (or joins the group) and starts the fetch
    /// thread.
    fn start(&mut self) -> Result<(), ConnectorError> {
        let context = self.consumer.context();
        context.set_environment(self.environment.clone());
        let membership = match &self.config.group_strategy {
            None => {
                self.assign()?;
                Membership::All
            }
            Some(_) => {
                context.set_resume(self.resume.clone());
                Membership::Group(self.config.topics.clone())
            }
        };
        // Two chunks in flight: the decoder works on one while the next is fetched.
        let (tx, rx) = crossbeam_channel::bounded(2);
        let handle = fetcher::spawn(self.consumer.clone(), membership, tx)
            .map_err(|e| kafka_error("starting the consumer", e))?;
        self.fetch = Some((rx, handle));
        Ok(())
    }

    /// The next chunk of messages from the fetch thread (waiting a little when `wait`),
    /// applying the partition changes that come before it.
    fn receive(&mut self, wait: bool) -> Result<Option<Chunk>, ConnectorError> {
        loop {
            let Some((rx, _)) = &self.fetch else {
                return Ok(None);
            };
            let fetched = if wait {
                rx.recv_timeout(Duration::from_millis(5)).ok()
            } else {
                rx.try_recv().ok()
            };
            match fetched {
                None => return Ok(None),
                Some(Fetched::Messages(chunk)) => return Ok(Some(chunk)),
                Some(Fetched::Assigned(partitions)) => {
                    for (key, start, skip_before) in partitions {
                        match start {
                            Some(offset) => self.next.insert(key.clone(), offset),
                            // Known at the partition's first message.
                            None => self.next.remove(&key),
                        };
                        match skip_before {
                            Some(ts) => self.skip_before.insert(key, ts),
                            None => self.skip_before.remove(&key),
                        };
                    }
                }
                Some(Fetched::Revoked(partitions)) => {
                    for key in partitions {
                        self.next.remove(&key);
                        self.skip_before.remove(&key);
                    }
                }
                Some(Fetched::Failed(reason)) => {
                    return Err(kafka_error("reading messages", reason));
                }
            }
        }
    }

    /// Whether a fetched message is returned (advancing its partition's position): not
    /// when it was read already (fetched again after a seek) or precedes the startup time.
    fn accept(&mut self, meta: &MessageMeta) -> bool {
        let at = (meta.topic.clone(), meta.partition);
        let before_start = self
            .skip_before
            .get(&at)
            .is_some_and(|&from| meta.timestamp.is_some_and(|t| t < from));
        if !before_start && !self.skip_before.is_empty() {
            self.skip_before.remove(&at);
        }
        let next = self.next.entry(at).or_insert(meta.offset);
        if meta.offset < *next {
            return false;
        }
        *next = meta.offset + 1;
        !before_start
    }

    /// Writes an undecodable message to the dead-letter topic: its payload and key, with
    /// `laminar.error`, `laminar.topic`, `laminar.partition` and `laminar.offset` headers.
    fn dead_letter(
        &mut self,
        topic: &str,
        payload: &[u8],
        meta: &MessageMeta,
        error: &ConnectorError,
    ) -> Result<(), ConnectorError> {
        if self.dead_letters.is_none() {
            let deliveries = Arc::new(Deliveries::default());
            let producer = client_config(&self.config.options)?
                .create_with_context(SinkContext {
                    deliveries: deliveries.clone(),
                })
                .map_err(|e| kafka_error("cannot create the dead-letter producer", e))?;
            self.dead_letters = Some((producer, deliveries));
        }
        let (producer, _) = self.dead_letters.as_ref().expect("made above");
        let reason = error.to_string();
        let partition = meta.partition.to_string();
        let offset = meta.offset.to_string();
        let headers = rdkafka::message::OwnedHeaders::new()
            .insert(rdkafka::message::Header {
                key: "laminar.error",
                value: Some(reason.as_str()),
            })
            .insert(rdkafka::message::Header {
                key: "laminar.topic",
                value: Some(meta.topic.as_str()),
            })
            .insert(rdkafka::message::Header {
                key: "laminar.partition",
                value: Some(partition.as_str()),
            })
            .insert(rdkafka::message::Header {
                key: "laminar.offset",
                value: Some(offset.as_str()),
            });
        let mut record = BaseRecord::<[u8], [u8]>::to(topic)
            .payload(payload)
            .headers(headers);
        if let Some(key) = &meta.key {
            record = record.key(key.as_slice());
        }
        tracing::warn!(error = %Self::error_at(meta, &reason), dlq = topic, "message written to the dead-letter topic");
        send_with_backpressure(producer, record)
            .map_err(|e| kafka_error(format!("dead-letter topic '{topic}'"), e))
    }

    /// Fails when a dead-letter message was not delivered.
    fn check_dead_letters(&self) -> Result<(), ConnectorError> {
        match &self.dead_letters {
            Some((_, deliveries)) => match deliveries.take_failures("dead-letter topic") {
                Some((_, e)) => Err(e),
                None => Ok(()),
            },
            None => Ok(()),
        }
    }

    /// For `startup.mode = 'timestamp'`: the partitions of `list` that are not resumed from a
    /// checkpoint start at their first message at or after `ts` (or at the end).
    fn offsets_at(
        &mut self,
        list: &TopicPartitionList,
        ts: i64,
    ) -> Result<TopicPartitionList, ConnectorError> {
        let mut lookup = TopicPartitionList::new();
        for e in list.elements() {
            if !self
                .resume
                .contains_key(&(e.topic().to_string(), e.partition()))
            {
                lookup
                    .add_partition_offset(e.topic(), e.partition(), Offset::Offset(ts))
                    .map_err(|e| kafka_error("startup timestamp", e))?;
            }
        }
        let found = if lookup.count() == 0 {
            lookup
        } else {
            self.consumer
                .offsets_for_times(lookup, Duration::from_secs(10))
                .map_err(|e| kafka_error(format!("looking up offsets at {ts} ms"), e))?
        };
        let mut out = TopicPartitionList::new();
        for e in list.elements() {
            let offset = match found.find_partition(e.topic(), e.partition()) {
                Some(f) => match f.offset() {
                    Offset::Offset(o) => Offset::Offset(o),
                    _ => Offset::End,
                },
                None => e.offset(),
            };
            let key = (e.topic().to_string(), e.partition());
            if let Offset::Offset(o) = offset {
                self.next.insert(key.clone(), o);
            } else {
                self.next.remove(&key);
            }
            if !self.resume.contains_key(&key) {
                self.skip_before.insert(key, ts);
            }
            out.add_partition_offset(e.topic(), e.partition(), offset)
                .map_err(|e| kafka_error("startup timestamp", e))?;
        }
        Ok(out)
    }

    fn error_at(meta: &MessageMeta, reason: impl std::fmt::Display) -> ConnectorError {
        kafka_error(
            format!(
                "topic '{}' partition {} offset {}",
                meta.topic, meta.partition, meta.offset
            ),
            reason,
        )
    }

    /// The payloads as a batch of the payload columns (one row per payload).
    fn decode_payloads(&self, payloads: &[&[u8]]) -> Result<RecordBatch, ConnectorError> {
        let rows = payloads.len().max(1);
        let schema = self.payload_schema.clone();
        let batch = match self.config.format {
            MessageFormat::Json | MessageFormat::Debezium | MessageFormat::Avro => {
                let mut decoder = arrow::json::ReaderBuilder::new(schema)
                    .with_batch_size(rows)
                    // An Avro union of a string and a number read into VARCHAR: the number
                    // as text.
                    .with_coerce_primitive(self.config.format == MessageFormat::Avro)
                    .build_decoder()?;
                for p in payloads {
                    decoder.decode(p)?;
                }
                decoder.flush()?
            }
            MessageFormat::Csv => {
                let mut decoder = arrow::csv::ReaderBuilder::new(schema)
                    .with_header(false)
                    .with_batch_size(rows)
                    .build_decoder();
                for p in payloads {
                    let mut record = p.to_vec();
                    record.push(b'\n');
                    let mut at = 0;
                    while at < record.len() {
                        let used = decoder.decode(&record[at..])?;
                        if used == 0 {
                            break;
                        }
                        at += used;
                    }
                }
                decoder.flush()?
            }
            MessageFormat::Raw => {
                let field = schema.field(0);
                let column: ArrayRef = match field.data_type() {
                    DataType::Binary => {
                        Arc::new(arrow::array::BinaryArray::from_iter_values(payloads.iter()))
                    }
                    _ => Arc::new(
                        payloads
                            .iter()
                            .map(|p| std::str::from_utf8(p).map(Some))
                            .collect::<Result<StringArray, _>>()
                            .map_err(|e| kafka_error("raw message", format!("not UTF-8: {e}")))?,
                    ),
                };
                Some(RecordBatch::try_new(schema, vec![column])?)
            }
        };
        batch.ok_or_else(|| kafka_error("decoding messages", "no row decoded"))
    }

    /// Decodes the payloads of `messages` (all valid) into one batch.
    fn decode(
        &self,
        payloads: &[&[u8]],
        metas: &[MessageMeta],
    ) -> Result<RecordBatch, ConnectorError> {
        if self.config.format == MessageFormat::Debezium {
            let (rows, row_metas) = debezium_rows(payloads, metas)?;
            let slices: Vec<&[u8]> = rows.iter().map(Vec::as_slice).collect();
            return self.decode_rows(&slices, &row_metas);
        }
        if let Some(registry) = &self.registry {
            let mut registry = registry
                .lock()
                .map_err(|_| kafka_error("schema registry", "its client panicked"))?;
            let native = if self.payload_schema.fields().is_empty() || metas.is_empty() {
                None
            } else {
                let mut native = self
                    .native_avro
                    .lock()
                    .map_err(|_| kafka_error("Avro decoder", "it panicked"))?;
                match native.decode(&mut registry, payloads, &self.payload_schema) {
                    Ok(payload) => return self.assemble(Some(payload), metas),
                    Err(avro::NativeError::Final(e)) => return Err(e),
                    Err(avro::NativeError::Unmapped(e)) => {
                        tracing::debug!(error = %e, "Avro messages decoded through JSON values");
                        Some(e)
                    }
                }
            };
            // Through Avro values and JSON (types the direct decoding maps differently).
            let rows = payloads
                .iter()
                .map(|p| avro::decode_to_json(&mut registry, p))
                .collect::<Result<Vec<_>, _>>();
            drop(registry);
            let decoded = rows.and_then(|rows| {
                let slices: Vec<&[u8]> = rows.iter().map(Vec::as_slice).collect();
                self.decode_rows(&slices, metas)
            });
            return match (decoded, native) {
                (Ok(batch), _) => Ok(batch),
                // The direct decoder's reason names the failing field or frame.
                (Err(_), Some(native)) => Err(native),
                (Err(e), None) => Err(e),
            };
        }
        self.decode_rows(payloads, metas)
    }

    /// Decodes one row per payload.
    fn decode_rows(
        &self,
        payloads: &[&[u8]],
        metas: &[MessageMeta],
    ) -> Result<RecordBatch, ConnectorError> {
        let rows = metas.len();
        if rows == 0 {
            return Ok(RecordBatch::new_empty(self.schema.clone()));
        }
        let payload = if self.payload_schema.fields().is_empty() {
            None
        } else {
            Some(self.decode_payloads(payloads)?)
        };
        self.assemble(payload, metas)
    }

    /// The declared columns: payload columns from `payload`, metadata columns from `metas`.
    fn assemble(
        &self,
        payload: Option<RecordBatch>,
        metas: &[MessageMeta],
    ) -> Result<RecordBatch, ConnectorError> {
        let rows = metas.len();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.columns.len());
        for (field, column) in self.schema.fields().iter().zip(&self.columns) {
            let array: ArrayRef = match column {
                Err(index) => match &payload {
                    Some(b) if b.num_rows() == rows => b.column(*index).clone(),
                    _ => {
                        return Err(kafka_error(
                            "decoding messages",
                            "a message did not hold exactly one JSON object",
                        ));
                    }
                },
                Ok(meta) => meta_column(*meta, metas, field.data_type())?,
            };
            if !field.is_nullable() && array.null_count() > 0 {
                return Err(kafka_error(
                    "decoding messages",
                    format!(
                        "column '{}' is NOT NULL but a message lacks it",
                        field.name()
                    ),
                ));
            }
            columns.push(array);
        }
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }
}

/// A metadata column in the declared type (`_timestamp` as TIMESTAMP or BIGINT ms).
/// A message's headers as a JSON object text.
fn headers_json(message: &BorrowedMessage<'_>) -> String {
    use rdkafka::message::Headers;
    let mut object = serde_json::Map::new();
    if let Some(headers) = message.headers() {
        for header in headers.iter() {
            let value = header.value.map_or(serde_json::Value::Null, |v| {
                serde_json::Value::String(String::from_utf8_lossy(v).into_owned())
            });
            object.insert(header.key.to_string(), value);
        }
    }
    serde_json::Value::Object(object).to_string()
}

/// The operation of a Debezium `op` code.
fn debezium_op(op: &str) -> Option<&'static str> {
    Some(match op {
        "c" => "I",
        "r" => "r",
        "d" => "D",
        "u" => "U+",
        _ => return None,
    })
}

/// Turns Debezium envelopes into flat JSON objects (the row image plus `_op` and `_ts_ms`),
/// one per change row (`u` gives two: `U-` before, `U+` after), each with the metadata of
/// its message. A tombstone (no payload: Kafka compaction's delete marker that follows a
/// delete) carries no change and gives no row.
fn debezium_rows(
    payloads: &[&[u8]],
    metas: &[MessageMeta],
) -> Result<(Vec<Vec<u8>>, Vec<MessageMeta>), ConnectorError> {
    let bad = |reason: String| kafka_error("Debezium message", reason);
    let mut rows = Vec::with_capacity(payloads.len());
    let mut row_metas = Vec::with_capacity(payloads.len());
    for (payload, meta) in payloads.iter().zip(metas) {
        if payload.is_empty() {
            continue;
        }
        let mut value: serde_json::Value =
            serde_json::from_slice(payload).map_err(|e| bad(format!("not JSON: {e}")))?;
        // With the JSON converter's schemas enabled, the envelope is under "payload".
        if value.get("schema").is_some()
            && let Some(inner) = value.get_mut("payload")
        {
            value = inner.take();
        }
        let op = value
            .get("op")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| bad("no \"op\" field".into()))?;
        let op = debezium_op(op)
            .ok_or_else(|| bad(format!("unknown op '{op}' (expected c, r, u or d)")))?;
        let ts_ms = value
            .get("ts_ms")
            .cloned()
            .unwrap_or(serde_json::Value::Null);
        let image =
            |name: &str| -> Result<serde_json::Map<String, serde_json::Value>, ConnectorError> {
                match value.get(name) {
                    Some(serde_json::Value::Object(row)) => Ok(row.clone()),
                    _ => Err(bad(format!("op '{op}' without a \"{name}\" object"))),
                }
            };
        let mut images = Vec::with_capacity(2);
        match op {
            "I" | "r" => images.push((op, image("after")?)),
            "D" => images.push((op, image("before")?)),
            _ => {
                images.push(("U-", image("before")?));
                images.push(("U+", image("after")?));
            }
        }
        for (op, mut row) in images {
            row.insert("_op".into(), serde_json::Value::String(op.into()));
            row.insert("_ts_ms".into(), ts_ms.clone());
            rows.push(serde_json::Value::Object(row).to_string().into_bytes());
            row_metas.push(meta.clone());
        }
    }
    Ok((rows, row_metas))
}

fn meta_column(
    meta: Meta,
    metas: &[MessageMeta],
    data_type: &DataType,
) -> Result<ArrayRef, ConnectorError> {
    let array: ArrayRef = match meta {
        Meta::Topic => Arc::new(StringArray::from_iter_values(
            metas.iter().map(|m| m.topic.as_str()),
        )),
        Meta::Partition => Arc::new(Int32Array::from_iter_values(
            metas.iter().map(|m| m.partition),
        )),
        Meta::Offset => Arc::new(Int64Array::from_iter_values(metas.iter().map(|m| m.offset))),
        Meta::Timestamp => Arc::new(TimestampMillisecondArray::from_iter(
            metas.iter().map(|m| m.timestamp),
        )),
        Meta::Key => Arc::new(StringArray::from_iter(
            metas
                .iter()
                .map(|m| m.key.as_deref().map(String::from_utf8_lossy)),
        )),
        Meta::Headers => Arc::new(StringArray::from_iter(
            metas.iter().map(|m| m.headers.as_deref()),
        )),
    };
    if array.data_type() == data_type {
        return Ok(array);
    }
    let source = match (meta, data_type) {
        (Meta::Timestamp, DataType::Int64) => {
            Arc::new(Int64Array::from_iter(metas.iter().map(|m| m.timestamp))) as ArrayRef
        }
        _ => array,
    };
    if source.data_type() == data_type {
        return Ok(source);
    }
    arrow::compute::cast(&source, data_type).map_err(|e| {
        kafka_error(
            "metadata column",
            format!("cannot provide it as {data_type}: {e}"),
        )
    })
}

impl SourceConnector for KafkaSource {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn poll_batch(&mut self, max_rows: usize) -> Result<SourcePoll, ConnectorError> {
        if self.fetch.is_none() {
            self.start()?;
        }
        self.check_dead_letters()?;
        let max_rows = max_rows.clamp(1, self.config.chunk_rows);
        // The messages returned: (chunk, index in it).
        let mut chunks: Vec<Arc<Chunk>> = Vec::new();
        let mut taken: Vec<(usize, usize)> = Vec::new();
        while taken.len() < max_rows {
            let (chunk, from) = match self.inbox.take() {
                Some(partly) => partly,
                None => match self.receive(chunks.is_empty())? {
                    Some(chunk) => (Arc::new(chunk), 0),
                    None => break,
                },
            };
            let index = chunks.len();
            let mut at = from;
            while at < chunk.len() && taken.len() < max_rows {
                let meta = &chunk.metas[at];
                self.metrics.bytes_read += chunk.payload(at).len() as u64;
                if self.accept(meta) {
                    taken.push((index, at));
                }
                at += 1;
            }
            if at < chunk.len() {
                self.inbox = Some((chunk.clone(), at));
            }
            chunks.push(chunk);
        }
        if !taken.is_empty()
            && self.config.group_strategy.is_some()
            && !self.environment.checkpointed
        {
            // What a revoked partition is handed over at without checkpoints.
            self.consumer.context().delivered(&self.next);
        }
        let metas: Vec<MessageMeta> = taken
            .iter()
            .map(|&(c, i)| chunks[c].metas[i].clone())
            .collect();
        let payloads: Vec<&[u8]> = taken.iter().map(|&(c, i)| chunks[c].payload(i)).collect();
        if metas.is_empty() {
            return Ok(SourcePoll::Pending);
        }
        let batch = match self.decode(&payloads, &metas) {
            Ok(batch) => batch,
            Err(_) => {
                // Find the bad messages one by one: fail on the first, or skip them all.
                let mut good_payloads = Vec::new();
                let mut good_metas = Vec::new();
                for (payload, meta) in payloads.iter().zip(&metas) {
                    match self.decode(&[payload], std::slice::from_ref(meta)) {
                        Ok(_) => {
                            good_payloads.push(*payload);
                            good_metas.push(meta.clone());
                        }
                        Err(e) => match &self.config.bad {
                            BadMessages::Fail => return Err(Self::error_at(meta, e)),
                            BadMessages::Skip => {
                                tracing::warn!(error = %Self::error_at(meta, &e), "message skipped (error.policy = skip)");
                                self.metrics.bad_records += 1;
                            }
                            BadMessages::DeadLetter(topic) => {
                                let topic = topic.clone();
                                self.dead_letter(&topic, payload, meta, &e)?;
                                self.metrics.bad_records += 1;
                            }
                        },
                    }
                }
                if good_metas.is_empty() {
                    return Ok(SourcePoll::Pending);
                }
                self.decode(&good_payloads, &good_metas)?
            }
        };
        if batch.num_rows() == 0 {
            // Only Debezium tombstones.
            return Ok(SourcePoll::Pending);
        }
        self.metrics.records_read += batch.num_rows() as u64;
        Ok(SourcePoll::Batch(batch))
    }

    fn metrics(&self) -> SourceConnectorMetrics {
        SourceConnectorMetrics {
            pauses: self.consumer.context().pauses(),
            ..self.metrics
        }
    }

    fn attach(&mut self, environment: SourceEnvironment) {
        self.environment = environment;
    }

    fn position(&self) -> Option<String> {
        // Dead letters of the messages this position covers go out before a checkpoint
        // records it (a failed delivery fails the next poll).
        if let Some((producer, _)) = &self.dead_letters
            && let Err(e) = producer.flush(Duration::from_secs(30))
        {
            tracing::error!(error = %e, "flushing the dead-letter topic failed");
        }
        let mut text = String::from("kafka");
        for ((topic, partition), offset) in &self.next {
            text.push_str(&format!("\n{topic}\t{partition}\t{offset}"));
        }
        Some(text)
    }

    fn seek(&mut self, position: &str) -> Result<(), ConnectorError> {
        let bad = |reason: &str| kafka_error("checkpointed position", reason.to_string());
        let mut lines = position.lines();
        if lines.next() != Some("kafka") {
            return Err(bad("not a Kafka position"));
        }
        for line in lines {
            let parts: Vec<&str> = line.split('\t').collect();
            let [topic, partition, offset] = parts.as_slice() else {
                return Err(bad("unreadable line"));
            };
            let partition: i32 = partition.parse().map_err(|_| bad("bad partition"))?;
            let offset: i64 = offset.parse().map_err(|_| bad("bad offset"))?;
            self.resume.insert((topic.to_string(), partition), offset);
            if self.config.group_strategy.is_none() {
                // Reported as the position until the partition is read: a checkpoint taken
                // before the first poll keeps it. (In a group, a partition is part of the
                // position once the group assigns it.)
                self.next.insert((topic.to_string(), partition), offset);
            }
        }
        if self.fetch.is_some() {
            return Err(bad("the source is reading already"));
        }
        Ok(())
    }

    /// Commits the checkpointed offsets to the consumer group (asynchronously), so lag
    /// monitors see the pipeline's progress.
    fn checkpoint_completed(&mut self, position: &str) {
        let mut offsets = BTreeMap::new();
        for line in position.lines().skip(1) {
            let parts: Vec<&str> = line.split('\t').collect();
            if let [topic, partition, offset] = parts.as_slice()
                && let (Ok(p), Ok(o)) = (partition.parse::<i32>(), offset.parse::<i64>())
            {
                offsets.insert((topic.to_string(), p), o);
            }
        }
        let context = self.consumer.context();
        context.checkpoint_completed(&offsets);
        let mut list = TopicPartitionList::new();
        for ((topic, partition), offset) in &offsets {
            // In a group, only the partitions still read here: another member owns the rest
            // and commits them.
            if self.config.group_strategy.is_some() && !context.owns(&(topic.clone(), *partition)) {
                continue;
            }
            if list
                .add_partition_offset(topic, *partition, Offset::Offset(*offset))
                .is_err()
            {
                return;
            }
        }
        if list.count() == 0 {
            return;
        }
        if let Err(e) = self
            .consumer
            .commit(&list, rdkafka::consumer::CommitMode::Async)
        {
            tracing::warn!(error = %e, "committing checkpointed offsets to the consumer group failed");
        }
    }

    /// With a declared `_partition` column: every assigned partition's number (partitions
    /// of several topics that share a number share a watermark).
    fn watermark_partitions(&mut self) -> Result<Option<(String, ArrayRef)>, ConnectorError> {
        if !self.columns.contains(&Ok(Meta::Partition)) {
            return Ok(None);
        }
        // From the metadata, without assigning: a restore seeks before the first poll.
        let mut partitions: Vec<i32> = self.partitions()?.into_iter().map(|(_, p)| p).collect();
        partitions.sort_unstable();
        partitions.dedup();
        let values: ArrayRef = Arc::new(Int32Array::from(partitions));
        let field = self
            .schema
            .field_with_name("_partition")
            .map_err(ConnectorError::Arrow)?;
        let values = arrow::compute::cast(&values, field.data_type())?;
        Ok(Some(("_partition".to_string(), values)))
    }

    fn close(&mut self) -> Result<(), ConnectorError> {
        self.stop_fetching();
        self.consumer.unassign().ok();
        Ok(())
    }
}

impl KafkaSource {
    /// Stops the fetch thread and waits for it (a group member leaves its group).
    fn stop_fetching(&mut self) {
        self.consumer.context().stop();
        if let Some((rx, handle)) = self.fetch.take() {
            // Unblock a thread waiting for room in the channel.
            while !handle.is_finished() {
                while rx.try_recv().is_ok() {}
                std::thread::sleep(Duration::from_millis(1));
            }
            let _ = handle.join();
        }
    }
}

impl Drop for KafkaSource {
    fn drop(&mut self) {
        self.stop_fetching();
    }
}

/// A validated sink configuration.
#[derive(Debug, Clone)]
pub(crate) struct KafkaSinkConfig {
    options: ConnectorOptions,
    topic: String,
    key: Option<usize>,
    format: MessageFormat,
    /// `Some(transactional id)` for `delivery.guarantee = 'exactly-once'`.
    transactional_id: Option<String>,
    /// `upsert = 'true'`: a change is a keyed value or a tombstone.
    upsert: bool,
    /// The input's `_op` column (an updating input).
    op: Option<usize>,
    /// The input's columns without `_op`: a row's image.
    image: Vec<usize>,
    partitioner: Partitioner,
}

/// How the sink chooses partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Partitioner {
    KeyHash,
    Sticky,
    RoundRobin,
}

impl KafkaSinkConfig {
    pub(crate) fn from_options(
        options: &ConnectorOptions,
        input: &SchemaRef,
    ) -> Result<Self, ConnectorError> {
        let format = message_format(options)?;
        let op = input.index_of(OP_COLUMN).ok();
        let image: Vec<usize> = (0..input.fields().len())
            .filter(|i| Some(*i) != op)
            .collect();
        if format == MessageFormat::Raw {
            let fields: Vec<&arrow::datatypes::Field> =
                image.iter().map(|i| input.field(*i)).collect();
            check_raw(&fields)?;
        }
        let upsert = options.get_bool(NAME, "upsert")?.unwrap_or(false);
        let partitioner = match options.get_choice(
            NAME,
            "partitioner",
            &["key-hash", "sticky", "round-robin"],
        )? {
            Some("sticky") => Partitioner::Sticky,
            Some("round-robin") => Partitioner::RoundRobin,
            _ => Partitioner::KeyHash,
        };
        options.get_choice(
            NAME,
            "compression.type",
            &["none", "gzip", "snappy", "lz4", "zstd"],
        )?;
        if upsert && format == MessageFormat::Debezium {
            return Err(invalid(
                "upsert",
                "true",
                "the Debezium format carries the operation itself; use one of the two",
            ));
        }
        if upsert && options.get_str("key").is_none() {
            return Err(invalid(
                "upsert",
                "true",
                "an upsert sink needs the key column: key = '<column>'",
            ));
        }
        if op.is_some() && !upsert && format != MessageFormat::Debezium {
            return Err(invalid(
                "format",
                options.get_str("format").unwrap_or("json"),
                "the input is an updating stream (it has an _op column) and this format is append-only: write its changes with format = 'debezium', or as upserts and tombstones with upsert = 'true' and key = '<column>'",
            ));
        }
        let exactly_once = options
            .get_choice(
                NAME,
                "delivery.guarantee",
                &["at-least-once", "exactly-once"],
            )?
            .is_some_and(|g| g == "exactly-once");
        let topic = options.require_str(NAME, "topic")?.to_string();
        let transactional_id = exactly_once.then(|| match options.get_str("transactional.id") {
            Some(id) => id.to_string(),
            None => format!("laminardb-{}", options.object().unwrap_or(&topic)),
        });
        if !exactly_once && let Some(id) = options.get_str("transactional.id") {
            return Err(invalid(
                "transactional.id",
                id,
                "only used with delivery.guarantee = 'exactly-once'",
            ));
        }
        let key = match options.get_str("key") {
            None => None,
            Some(name) => Some(input.index_of(name).map_err(|_| {
                invalid(
                    "key",
                    name,
                    format!(
                        "no such column; columns: {}",
                        input
                            .fields()
                            .iter()
                            .map(|f| f.name().as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })?),
        };
        client_config(options)?;
        Ok(KafkaSinkConfig {
            options: options.clone(),
            topic,
            key,
            format,
            transactional_id,
            upsert,
            op,
            image,
            partitioner,
        })
    }
}

/// A message to send: the row whose key it carries, and its payload (`None`: a tombstone
/// or a NULL raw value).
type Outgoing = (usize, Option<Vec<u8>>);

/// The key of `row`, when the sink has a key column and the row's key is not NULL.
fn key_at(keys: Option<&StringArray>, row: usize) -> Option<&str> {
    keys.and_then(|k| (!k.is_null(row)).then(|| k.value(row)))
}

/// The messages a batch becomes. An append-only input without `upsert` gives one message
/// per row in the format; otherwise each change becomes a Debezium envelope (`U-` then `U+`
/// of one update make one `op: u` message) or, with `upsert`, a value (`I`, `U+`, `r`) or a
/// tombstone (`D`, and a `U-` whose `U+` has another key). `keys` is the key column as text.
fn messages(
    config: &KafkaSinkConfig,
    avro: Option<&AvroWriter>,
    keys: Option<&StringArray>,
    batch: &RecordBatch,
) -> Result<Vec<Outgoing>, ConnectorError> {
    let rows = batch.num_rows();
    let changes = config.op.is_some() || config.upsert || config.format == MessageFormat::Debezium;
    if !changes {
        return Ok(encode_rows(config.format, avro, batch)?
            .into_iter()
            .enumerate()
            .collect());
    }
    let image_format = match config.format {
        MessageFormat::Debezium => MessageFormat::Json,
        other => other,
    };
    let mut images = encode_rows(image_format, avro, &batch.project(&config.image)?)?;
    let ops: Option<&StringArray> = match config.op {
        Some(index) => Some(
            batch
                .column(index)
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| kafka_error("changelog", "_op is not a VARCHAR column"))?,
        ),
        None => None,
    };
    let op_at = |row: usize| match ops {
        Some(ops) if ops.is_null(row) => "",
        Some(ops) => ops.value(row),
        None => "I",
    };
    let ts_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut out = Vec::with_capacity(rows);
    let mut row = 0;
    while row < rows {
        let op = op_at(row);
        // An update: its before-image, immediately followed by its after-image.
        let paired = op == "U-" && row + 1 < rows && op_at(row + 1) == "U+";
        if config.upsert {
            match op {
                "I" | "U+" | "r" => out.push((row, images[row].take())),
                "D" => out.push((row, None)),
                "U-" if paired && key_at(keys, row) == key_at(keys, row + 1) => {}
                "U-" => out.push((row, None)),
                other => return Err(kafka_error("changelog", format!("unknown _op '{other}'"))),
            }
            row += 1;
            continue;
        }
        let (before, after, code) = match op {
            "I" => (None, images[row].take(), "c"),
            "r" => (None, images[row].take(), "r"),
            "D" => (images[row].take(), None, "d"),
            "U-" if paired => {
                row += 1;
                (images[row - 1].take(), images[row].take(), "u")
            }
            "U-" => (images[row].take(), None, "d"),
            "U+" => (None, images[row].take(), "u"),
            other => return Err(kafka_error("changelog", format!("unknown _op '{other}'"))),
        };
        let mut envelope = b"{\"before\":".to_vec();
        envelope.extend(before.as_deref().unwrap_or(b"null"));
        envelope.extend_from_slice(b",\"after\":");
        envelope.extend(after.as_deref().unwrap_or(b"null"));
        envelope.extend_from_slice(format!(",\"op\":\"{code}\",\"ts_ms\":{ts_ms}}}").as_bytes());
        // The key of an update is its after-image's.
        out.push((row, Some(envelope)));
        row += 1;
    }
    Ok(out)
}

impl KafkaSinkConfig {
    /// Updating inputs are written as Debezium envelopes or as upserts.
    pub(crate) fn accepts_changelog(&self) -> bool {
        self.upsert || self.format == MessageFormat::Debezium
    }
}

/// One message payload per row (`None`: a NULL raw value, sent without payload).
fn encode_rows(
    format: MessageFormat,
    avro: Option<&AvroWriter>,
    batch: &RecordBatch,
) -> Result<Vec<Option<Vec<u8>>>, ConnectorError> {
    Ok(match format {
        MessageFormat::Avro => {
            let writer = avro.ok_or_else(|| kafka_error("Avro message", "no registered schema"))?;
            let mut native = writer
                .native
                .lock()
                .map_err(|_| kafka_error("Avro encoder", "it panicked"))?;
            let encoded = match native.as_mut().map(|n| n.encode(batch)) {
                Some(Ok(messages)) => Some(messages),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "Avro rows are encoded through JSON values from now on");
                    *native = None;
                    None
                }
                None => None,
            };
            drop(native);
            match encoded {
                Some(messages) => messages,
                None => avro::encode_rows(batch, &writer.schema, writer.id)?,
            }
        }
        MessageFormat::Json | MessageFormat::Debezium => {
            // JSON lines hold no raw newline: one line per row.
            let mut writer = arrow::json::LineDelimitedWriter::new(Vec::new());
            writer.write(batch)?;
            writer.finish()?;
            writer
                .into_inner()
                .split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .map(|l| Some(l.to_vec()))
                .collect()
        }
        MessageFormat::Csv => (0..batch.num_rows())
            .map(|row| {
                // Row by row: a quoted field may hold a newline.
                let mut writer = arrow::csv::WriterBuilder::new()
                    .with_header(false)
                    .build(Vec::new());
                writer.write(&batch.slice(row, 1))?;
                let mut bytes = writer.into_inner();
                while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    bytes.pop();
                }
                Ok(Some(bytes))
            })
            .collect::<Result<_, ConnectorError>>()?,
        MessageFormat::Raw => {
            let column = batch.column(0);
            match column.data_type() {
                DataType::Binary => {
                    let values = column
                        .as_any()
                        .downcast_ref::<arrow::array::BinaryArray>()
                        .ok_or_else(|| kafka_error("raw message", "not a BYTES column"))?;
                    values.iter().map(|v| v.map(<[u8]>::to_vec)).collect()
                }
                _ => {
                    let values = column
                        .as_any()
                        .downcast_ref::<StringArray>()
                        .ok_or_else(|| kafka_error("raw message", "not a VARCHAR column"))?;
                    values
                        .iter()
                        .map(|v| v.map(|s| s.as_bytes().to_vec()))
                        .collect()
                }
            }
        }
    })
}

/// Sends a record, waiting while the producer's local queue is full (backpressure).
fn send_with_backpressure<K, P>(
    producer: &ThreadedProducer<SinkContext>,
    record: BaseRecord<'_, K, P>,
) -> Result<(), rdkafka::error::KafkaError>
where
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    let mut pending = record;
    loop {
        match producer.send(pending) {
            Ok(()) => return Ok(()),
            Err((e, back))
                if e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) =>
            {
                std::thread::sleep(Duration::from_millis(1));
                pending = back;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// Failed deliveries since the last check, and the last failure's reason.
#[derive(Default)]
struct Deliveries {
    failed: AtomicU64,
    last_error: std::sync::Mutex<Option<String>>,
}

impl Deliveries {
    /// The failures since the last call: their count and an error for `context`.
    fn take_failures(&self, context: &str) -> Option<(u64, ConnectorError)> {
        let failed = self.failed.swap(0, Ordering::SeqCst);
        (failed > 0).then(|| {
            let last = self
                .last_error
                .lock()
                .ok()
                .and_then(|mut l| l.take())
                .unwrap_or_default();
            (
                failed,
                kafka_error(
                    context,
                    format!("{failed} message(s) were not delivered: {last}"),
                ),
            )
        })
    }
}

struct SinkContext {
    deliveries: Arc<Deliveries>,
}

impl ClientContext for SinkContext {}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: Self::DeliveryOpaque) {
        if let Err((e, _)) = result {
            self.deliveries.failed.fetch_add(1, Ordering::SeqCst);
            if let Ok(mut last) = self.deliveries.last_error.lock() {
                *last = Some(e.to_string());
            }
        }
    }
}

/// An Avro record name for a topic's rows (letters, digits and `_`, not starting with a
/// digit).
fn record_name(topic: &str) -> String {
    let mut name: String = topic
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if !name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        name.insert(0, '_');
    }
    name
}

/// Timeout of the transactional calls (init, offsets, commit, abort).
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);

/// The transaction state of an exactly-once sink.
///
/// One transaction holds the output of one checkpoint epoch (or of several, when a
/// checkpoint fails and the next one commits both). Rows written after `pre_commit(e)` are
/// held back until `commit_epoch(e)`: the producer has one transaction at a time, and
/// epoch `e + 1`'s rows must not be committed with `e`. Every transaction also commits an
/// offset for the consumer group named like the transactional id (partition 0 of the
/// output topic, offset = the epoch): since it is committed atomically with the data, it
/// tells a recovering sink whether the last checkpoint's transaction was committed.
struct Transactions {
    id: String,
    /// A consumer that never reads: it carries the marker group's metadata and reads the
    /// marker back at recovery.
    marker: BaseConsumer,
    /// A transaction is open on the producer.
    open: bool,
    /// The batches sent in the open transaction: kept so that a checkpoint can store them
    /// ([`SinkConnector::pre_commit_state`]) for a recovery to send again if the
    /// transaction was lost.
    sent: Vec<RecordBatch>,
    /// Batches written after `pre_commit`, sent once the pending transaction commits.
    held: Vec<RecordBatch>,
    /// The epoch pre-committed and not yet committed.
    precommitted: Option<u64>,
    /// The sink takes part in checkpoints (it saw `begin_epoch`); without them it commits
    /// its transaction at every `tick`.
    in_checkpoints: bool,
    /// The batches of the recovered checkpoint's transaction, and its epoch.
    restored: Option<(u64, Vec<RecordBatch>)>,
}

/// The registered Avro schema of a sink's rows and its registry id.
struct AvroWriter {
    schema: apache_avro::Schema,
    id: u32,
    /// Straight from Arrow, when arrow-avro can encode the columns (dropped after a failure:
    /// it may hold part of a row).
    native: std::sync::Mutex<Option<avro::NativeEncoder>>,
}

/// See the module docs.
pub(crate) struct KafkaSink {
    config: KafkaSinkConfig,
    avro: Option<AvroWriter>,
    /// Partitions of the topic (round-robin; 0 until looked up) and messages sent.
    partitions: i32,
    sent: u64,
    producer: ThreadedProducer<SinkContext>,
    deliveries: Arc<Deliveries>,
    metrics: SinkConnectorMetrics,
    transactions: Option<Transactions>,
}

impl KafkaSink {
    pub(crate) fn open(
        config: KafkaSinkConfig,
        input: &SchemaRef,
    ) -> Result<KafkaSink, ConnectorError> {
        let avro = match (config.format, registry(&config.options)) {
            (MessageFormat::Avro, Some(mut registry)) => {
                let image = input.project(&config.image)?;
                let subject = subject(&config.options, &config.topic);
                let schema = avro::avro_schema_of(&image, &record_name(&config.topic))?;
                let id = registry.register(
                    &subject,
                    &schema,
                    config.options.get_str("schema.compatibility"),
                )?;
                let native = std::sync::Mutex::new(avro::NativeEncoder::new(&image, &schema, id));
                Some(AvroWriter { schema, id, native })
            }
            _ => None,
        };
        let deliveries = Arc::new(Deliveries::default());
        let mut client = client_config(&config.options)?;
        if client.get("enable.idempotence").is_none() {
            client.set("enable.idempotence", "true");
        }
        if client.get("partitioner").is_none() {
            // The Java client's default for keyed messages (librdkafka's own default hashes
            // with CRC32): the same key lands in the same partition whichever client wrote it.
            client.set("partitioner", "murmur2_random");
        }
        if let Some(id) = &config.transactional_id {
            client.set("transactional.id", id);
        }
        if let Some(codec) = config.options.get_str("compression.type") {
            client.set("compression.type", codec.to_ascii_lowercase());
        }
        if config.partitioner == Partitioner::KeyHash
            && client.get("sticky.partitioning.linger.ms").is_none()
        {
            // Keyless messages to a random partition each (`sticky` keeps librdkafka's
            // default: one partition for a few milliseconds).
            client.set("sticky.partitioning.linger.ms", "0");
        }
        let producer: ThreadedProducer<SinkContext> = client
            .create_with_context(SinkContext {
                deliveries: deliveries.clone(),
            })
            .map_err(|e| kafka_error("cannot create the producer", e))?;
        let transactions = match &config.transactional_id {
            Some(id) => {
                let context = format!("topic '{}': transactional id '{id}'", config.topic);
                // Fences any earlier producer with this id and aborts its open transaction.
                producer
                    .init_transactions(TRANSACTION_TIMEOUT)
                    .map_err(|e| kafka_error(format!("{context}: init transactions"), e))?;
                let mut marker_config = client_config(&config.options)?;
                marker_config
                    .set("group.id", id)
                    .set("enable.auto.commit", "false")
                    .set("isolation.level", "read_committed");
                let marker: BaseConsumer = marker_config
                    .create()
                    .map_err(|e| kafka_error(format!("{context}: marker consumer"), e))?;
                Some(Transactions {
                    id: id.clone(),
                    marker,
                    open: false,
                    sent: Vec::new(),
                    held: Vec::new(),
                    precommitted: None,
                    in_checkpoints: false,
                    restored: None,
                })
            }
            None => None,
        };
        Ok(KafkaSink {
            config,
            avro,
            partitions: 0,
            sent: 0,
            producer,
            deliveries,
            metrics: SinkConnectorMetrics::default(),
            transactions,
        })
    }

    fn context(&self) -> String {
        format!("topic '{}'", self.config.topic)
    }

    /// The partition of the next message with `partitioner = 'round-robin'`.
    fn next_partition(&mut self) -> Result<Option<i32>, ConnectorError> {
        if self.config.partitioner != Partitioner::RoundRobin {
            return Ok(None);
        }
        if self.partitions == 0 {
            let metadata = self
                .producer
                .client()
                .fetch_metadata(Some(&self.config.topic), Duration::from_secs(10))
                .map_err(|e| kafka_error(format!("{}: metadata", self.context()), e))?;
            self.partitions = metadata
                .topics()
                .iter()
                .find(|t| t.name() == self.config.topic)
                .map_or(0, |t| t.partitions().len() as i32);
            if self.partitions == 0 {
                return Err(kafka_error(self.context(), "has no partitions"));
            }
        }
        let partition = (self.sent % self.partitions as u64) as i32;
        self.sent += 1;
        Ok(Some(partition))
    }

    fn check_deliveries(&mut self) -> Result<(), ConnectorError> {
        match self.deliveries.take_failures(&self.context()) {
            Some((failed, e)) => {
                self.metrics.errors += failed;
                Err(e)
            }
            None => Ok(()),
        }
    }

    /// Sends every row of `batch` as a message.
    fn send_batch(&mut self, batch: &RecordBatch) -> Result<(), ConnectorError> {
        let keys = match self.config.key {
            Some(index) => Some(arrow::compute::cast(batch.column(index), &DataType::Utf8)?),
            None => None,
        };
        let keys = match &keys {
            Some(k) => Some(
                k.as_any()
                    .downcast_ref::<StringArray>()
                    .ok_or_else(|| kafka_error("message key", "not text"))?,
            ),
            None => None,
        };
        for (row, payload) in messages(&self.config, self.avro.as_ref(), keys, batch)? {
            let key = key_at(keys, row);
            let partition = self.next_partition()?;
            let mut record = BaseRecord::<str, [u8]>::to(&self.config.topic);
            if let Some(p) = partition {
                record = record.partition(p);
            }
            if let Some(payload) = &payload {
                record = record.payload(payload.as_slice());
            }
            if let Some(key) = key {
                record = record.key(key);
            }
            if let Err(e) = send_with_backpressure(&self.producer, record) {
                self.metrics.errors += 1;
                return Err(kafka_error(self.context(), e));
            }
            self.metrics.bytes_written += payload.as_ref().map_or(0, |p| p.len()) as u64;
        }
        Ok(())
    }

    /// Sends `batch` inside the open transaction (beginning one if needed).
    fn send_in_transaction(&mut self, batch: RecordBatch) -> Result<(), ConnectorError> {
        let context = self.context();
        let Some(t) = self.transactions.as_mut() else {
            return self.send_batch(&batch);
        };
        if !t.open {
            self.producer
                .begin_transaction()
                .map_err(|e| kafka_error(format!("{context}: begin transaction"), e))?;
            t.open = true;
        }
        self.send_batch(&batch)?;
        if let Some(t) = self.transactions.as_mut() {
            t.sent.push(batch);
        }
        Ok(())
    }

    /// Commits the open transaction with the marker offset `epoch` (none without
    /// checkpoints), then sends the held batches in a new one.
    fn commit_open(&mut self, epoch: Option<u64>) -> Result<(), ConnectorError> {
        let context = self.context();
        let Some(t) = self.transactions.as_mut() else {
            return Ok(());
        };
        if t.open {
            let txn_context = format!("{context}: transactional id '{}'", t.id);
            if let Some(epoch) = epoch {
                let metadata = t.marker.group_metadata().ok_or_else(|| {
                    kafka_error(&txn_context, "the marker consumer has no group metadata")
                })?;
                let mut marker = TopicPartitionList::new();
                marker
                    .add_partition_offset(&self.config.topic, 0, Offset::Offset(epoch as i64))
                    .map_err(|e| kafka_error(&txn_context, e))?;
                self.producer
                    .send_offsets_to_transaction(&marker, &metadata, TRANSACTION_TIMEOUT)
                    .map_err(|e| kafka_error(format!("{txn_context}: epoch {epoch} marker"), e))?;
            }
            // A failed commit leaves the transaction open: the caller retries, or the
            // pipeline stops and recovery sends the checkpointed batches again.
            self.producer
                .commit_transaction(TRANSACTION_TIMEOUT)
                .map_err(|e| kafka_error(format!("{txn_context}: commit"), e))?;
            t.open = false;
        }
        t.sent.clear();
        t.precommitted = None;
        let held = std::mem::take(&mut t.held);
        for batch in held {
            self.send_in_transaction(batch)?;
        }
        Ok(())
    }

    /// The epoch of the last transaction committed under this transactional id, from the
    /// marker group's committed offset.
    fn committed_marker(&self) -> Result<Option<u64>, ConnectorError> {
        let Some(t) = &self.transactions else {
            return Ok(None);
        };
        let mut partitions = TopicPartitionList::new();
        partitions.add_partition(&self.config.topic, 0);
        let committed = t
            .marker
            .committed_offsets(partitions, TRANSACTION_TIMEOUT)
            .map_err(|e| {
                kafka_error(
                    format!(
                        "{}: reading the commit marker of transactional id '{}'",
                        self.context(),
                        t.id
                    ),
                    e,
                )
            })?;
        Ok(committed.elements().first().and_then(|e| match e.offset() {
            Offset::Offset(n) if n >= 0 => Some(n as u64),
            _ => None,
        }))
    }
}

const PENDING_VERSION: u8 = 1;

/// The checkpointed form of a pre-committed transaction: version, epoch, then the batches
/// as an Arrow IPC stream.
fn encode_pending(epoch: u64, batches: &[RecordBatch]) -> Result<Vec<u8>, ConnectorError> {
    let mut bytes = vec![PENDING_VERSION];
    bytes.extend_from_slice(&epoch.to_le_bytes());
    let schema = batches[0].schema();
    let mut writer = arrow::ipc::writer::StreamWriter::try_new(&mut bytes, &schema)?;
    for batch in batches {
        writer.write(batch)?;
    }
    writer.finish()?;
    drop(writer);
    Ok(bytes)
}

fn decode_pending(bytes: &[u8]) -> Result<(u64, Vec<RecordBatch>), ConnectorError> {
    let bad = |reason: &str| {
        kafka_error(
            "the checkpointed transaction of the sink",
            format!("cannot be read: {reason}"),
        )
    };
    if bytes.len() < 9 || bytes[0] != PENDING_VERSION {
        return Err(bad("unknown version or truncated"));
    }
    let mut epoch = [0u8; 8];
    epoch.copy_from_slice(&bytes[1..9]);
    let batches = arrow::ipc::reader::StreamReader::try_new(&bytes[9..], None)
        .and_then(|reader| reader.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad(&e.to_string()))?;
    Ok((u64::from_le_bytes(epoch), batches))
}

impl SinkConnector for KafkaSink {
    fn capabilities(&self) -> SinkCapabilities {
        let transactional = self.transactions.is_some();
        SinkCapabilities {
            exactly_once: transactional,
            idempotent: false,
            upsert: self.config.upsert,
            changelog: self.config.format == MessageFormat::Debezium,
            two_phase_commit: transactional,
            partitioned: true,
        }
    }

    fn write_batch(&mut self, batch: &RecordBatch) -> Result<(), ConnectorError> {
        self.check_deliveries()?;
        match self.transactions.as_mut() {
            None => self.send_batch(batch)?,
            Some(t) if t.precommitted.is_some() => t.held.push(batch.clone()),
            Some(_) => self.send_in_transaction(batch.clone())?,
        }
        self.metrics.records_written += batch.num_rows() as u64;
        Ok(())
    }

    fn recover(&mut self, committed: Option<u64>) -> Result<(), ConnectorError> {
        let Some((epoch, batches)) = self.transactions.as_mut().and_then(|t| t.restored.take())
        else {
            return Ok(());
        };
        if committed != Some(epoch) {
            return Ok(());
        }
        let marker = self.committed_marker()?;
        if marker.is_some_and(|m| m >= epoch) {
            tracing::debug!(topic = %self.config.topic, epoch, "the checkpoint's transaction was committed");
            return Ok(());
        }
        // The process stopped between the checkpoint and the commit of its transaction,
        // which the new producer's initialization aborted: write it again.
        tracing::info!(topic = %self.config.topic, epoch, batches = batches.len(), "sending the transaction of a completed checkpoint again");
        for batch in batches {
            self.send_in_transaction(batch)?;
        }
        self.flush()?;
        self.commit_open(Some(epoch))
    }

    fn begin_epoch(&mut self, _epoch: u64) -> Result<(), ConnectorError> {
        if let Some(t) = self.transactions.as_mut() {
            t.in_checkpoints = true;
        }
        Ok(())
    }

    fn pre_commit(&mut self, epoch: u64) -> Result<(), ConnectorError> {
        if let Some(t) = self.transactions.as_mut() {
            t.in_checkpoints = true;
            // Rows held for a checkpoint that failed join this one's transaction.
            let held = std::mem::take(&mut t.held);
            for batch in held {
                self.send_in_transaction(batch)?;
            }
        }
        self.flush()?;
        if let Some(t) = self.transactions.as_mut() {
            t.precommitted = Some(epoch);
        }
        Ok(())
    }

    fn pre_commit_state(&mut self) -> Result<Option<Vec<u8>>, ConnectorError> {
        match &self.transactions {
            Some(t) if !t.sent.is_empty() => {
                Ok(Some(encode_pending(t.precommitted.unwrap_or(0), &t.sent)?))
            }
            _ => Ok(None),
        }
    }

    fn restore_pre_commit_state(&mut self, state: &[u8]) -> Result<(), ConnectorError> {
        let restored = decode_pending(state)?;
        if let Some(t) = self.transactions.as_mut() {
            t.restored = Some(restored);
        }
        Ok(())
    }

    fn commit_epoch(&mut self, epoch: u64) -> Result<(), ConnectorError> {
        if let Some(t) = &self.transactions
            && t.precommitted.is_some_and(|p| p <= epoch)
        {
            self.commit_open(Some(epoch))?;
        }
        self.metrics.last_committed_epoch = Some(epoch);
        Ok(())
    }

    fn rollback_epoch(&mut self, _epoch: u64) -> Result<(), ConnectorError> {
        let context = self.context();
        if let Some(t) = self.transactions.as_mut() {
            t.sent.clear();
            t.held.clear();
            t.precommitted = None;
            if t.open {
                t.open = false;
                self.producer
                    .abort_transaction(TRANSACTION_TIMEOUT)
                    .map_err(|e| kafka_error(format!("{context}: abort"), e))?;
            }
        }
        Ok(())
    }

    fn tick(&mut self) -> Result<(), ConnectorError> {
        // Without checkpoints, a transaction commits what was written since the last tick.
        if self
            .transactions
            .as_ref()
            .is_some_and(|t| !t.in_checkpoints && t.open)
        {
            self.flush()?;
            self.commit_open(None)?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), ConnectorError> {
        self.producer
            .flush(Duration::from_secs(30))
            .map_err(|e| kafka_error(format!("{}: flush", self.context()), e))?;
        self.check_deliveries()
    }

    fn close(&mut self) -> Result<(), ConnectorError> {
        self.flush()?;
        if let Some(t) = &self.transactions {
            // The open transaction, then what was held back after its pre-commit.
            let epoch = t.precommitted;
            self.commit_open(epoch)?;
            self.flush()?;
            self.commit_open(None)?;
        }
        Ok(())
    }

    fn metrics(&self) -> SinkConnectorMetrics {
        self.metrics
    }
}
