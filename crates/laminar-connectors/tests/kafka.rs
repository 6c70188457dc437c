//! The `KAFKA` source and sink against a real Kafka-protocol broker (Tansu, started by
//! `scripts/services.sh`, which sets `LAMINAR_TEST_KAFKA_BROKERS`).
#![cfg(feature = "kafka")]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Int32Type, Int64Type, Schema, SchemaRef};
use laminar_connectors::{
    ConnectorOptions, SourceConnector, SourcePoll, create_sink, create_source,
};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

#[path = "support/kafka_test.rs"]
mod kafka_test;
use kafka_test::brokers;

/// A fresh topic with `partitions` partitions.
fn topic(brokers: &str, name: &str, partitions: i32) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let topic = format!("{name}-{}-{nanos}", std::process::id());
    create_topic(brokers, &topic, partitions);
    topic
}

/// Creates the topic `topic`.
fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let created = futures::executor::block_on(admin.create_topics(
        &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
        &AdminOptions::new(),
    ))
    .unwrap();
    for result in created {
        result.unwrap();
    }
}

fn orders_schema(with_meta: bool) -> SchemaRef {
    let mut fields = vec![
        Field::new("id", DataType::Int64, false),
        Field::new("customer", DataType::Utf8, true),
        Field::new("amount", DataType::Int64, true),
    ];
    if with_meta {
        fields.push(Field::new("_partition", DataType::Int32, true));
        fields.push(Field::new("_offset", DataType::Int64, true));
        fields.push(Field::new("_key", DataType::Utf8, true));
    }
    Arc::new(Schema::new(fields))
}

fn orders(ids: std::ops::Range<i64>) -> RecordBatch {
    let customers: Vec<String> = ids.clone().map(|i| format!("c{}", i % 3)).collect();
    RecordBatch::try_new(
        orders_schema(false),
        vec![
            Arc::new(Int64Array::from_iter_values(ids.clone())) as ArrayRef,
            Arc::new(StringArray::from(customers)),
            Arc::new(Int64Array::from_iter_values(ids.map(|i| i * 10))),
        ],
    )
    .unwrap()
}

fn options(pairs: &[(&str, &str)]) -> ConnectorOptions {
    ConnectorOptions::from_pairs(pairs.iter().copied())
}

/// Polls until `rows` rows arrived (or 20 s passed).
fn read_rows(source: &mut dyn SourceConnector, rows: usize) -> Vec<RecordBatch> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut batches = Vec::new();
    let mut got = 0;
    while got < rows && Instant::now() < deadline {
        match source.poll_batch(1000).unwrap() {
            SourcePoll::Batch(b) => {
                got += b.num_rows();
                batches.push(b);
            }
            SourcePoll::Pending => std::thread::sleep(Duration::from_millis(10)),
            SourcePoll::End => break,
        }
    }
    batches
}

fn ids(batches: &[RecordBatch]) -> Vec<i64> {
    let mut ids: Vec<i64> = batches
        .iter()
        .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
        .collect();
    ids.sort_unstable();
    ids
}

#[test]
fn json_rows_round_trip_through_the_broker_with_keys_and_metadata() {
    let Some(brokers) = brokers() else { return };
    let topic = topic(&brokers, "orders", 3);
    let mut sink = create_sink(
        "kafka",
        &options(&[
            ("bootstrap.servers", &brokers),
            ("topic", &topic),
            ("key", "customer"),
        ]),
        None,
        orders_schema(false),
    )
    .unwrap();
    sink.write_batch(&orders(0..40)).unwrap();
    sink.pre_commit(1).unwrap();
    sink.write_batch(&orders(40..60)).unwrap();
    sink.close().unwrap();
    assert_eq!(sink.metrics().records_written, 60);

    let mut source = create_source(
        "KAFKA",
        &options(&[
            ("bootstrap.servers", &brokers),
            ("topic", &topic),
            ("startup.mode", "earliest"),
        ]),
        None,
        orders_schema(true),
    )
    .unwrap();
    let batches = read_rows(source.as_mut(), 60);
    assert_eq!(ids(&batches), (0..60).collect::<Vec<_>>());
    // Every message of one key went to one partition, and offsets are per partition.
    let mut partitions_of_key: std::collections::BTreeMap<String, BTreeSet<i32>> =
        Default::default();
    let mut offsets = BTreeSet::new();
    for b in &batches {
        let customer = b.column(1).as_string::<i32>();
        let partition = b.column(3).as_primitive::<Int32Type>();
        let offset = b.column(4).as_primitive::<Int64Type>();
        let key = b.column(5).as_string::<i32>();
        for row in 0..b.num_rows() {
            assert_eq!(
                key.value(row),
                customer.value(row),
                "the key column is the key"
            );
            partitions_of_key
                .entry(key.value(row).to_string())
                .or_default()
                .insert(partition.value(row));
            assert!(offsets.insert((partition.value(row), offset.value(row))));
        }
    }
    assert_eq!(partitions_of_key.len(), 3);
    assert!(
        partitions_of_key.values().all(|p| p.len() == 1),
        "{partitions_of_key:?}"
    );
    assert_eq!(source.metrics().records_read, 60);
}

#[test]
fn a_checkpointed_position_resumes_after_the_last_row_read() {
    let Some(brokers) = brokers() else { return };
    let topic = topic(&brokers, "resume", 2);
    let sink_options = options(&[("bootstrap.servers", &brokers), ("topic", &topic)]);
    let mut sink = create_sink("KAFKA", &sink_options, None, orders_schema(false)).unwrap();
    sink.write_batch(&orders(0..30)).unwrap();
    sink.flush().unwrap();
    let source_options = options(&[
        ("bootstrap.servers", &brokers),
        ("topic", &topic),
        ("startup.mode", "earliest"),
    ]);
    let mut first = create_source("KAFKA", &source_options, None, orders_schema(false)).unwrap();
    let seen = ids(&read_rows(first.as_mut(), 30));
    assert_eq!(seen, (0..30).collect::<Vec<_>>());
    let position = first.position().expect("Kafka sources report positions");
    first.close().unwrap();
    drop(first);

    sink.write_batch(&orders(30..45)).unwrap();
    sink.close().unwrap();
    let mut resumed = create_source("KAFKA", &source_options, None, orders_schema(false)).unwrap();
    resumed.seek(&position).unwrap();
    // A checkpoint taken before the first poll records the restored position, not an
    // empty one (which would make the next restart read everything again).
    assert_eq!(resumed.position().as_deref(), Some(position.as_str()));
    let rest = ids(&read_rows(resumed.as_mut(), 15));
    assert_eq!(
        rest,
        (30..45).collect::<Vec<_>>(),
        "nothing read twice, nothing lost"
    );
    assert!(resumed.seek("not a position").is_err());

    // With per-partition watermarks the source learns its partitions at creation; a seek
    // after that must not let messages fetched from the startup offsets through.
    let mut with_partitions =
        create_source("KAFKA", &source_options, None, orders_schema(true)).unwrap();
    let (column, partitions) = with_partitions.watermark_partitions().unwrap().unwrap();
    assert_eq!((column.as_str(), partitions.len()), ("_partition", 2));
    std::thread::sleep(Duration::from_millis(300));
    with_partitions.seek(&position).unwrap();
    let rest = ids(&read_rows(with_partitions.as_mut(), 15));
    assert_eq!(rest, (30..45).collect::<Vec<_>>());
}

#[test]
fn undecodable_messages_fail_with_their_offset_are_skipped_or_go_to_a_dead_letter_topic() {
    let Some(brokers) = brokers() else { return };
    let topic = topic(&brokers, "poison", 1);
    let producer = plain_producer(&brokers);
    for payload in [
        r#"{"id": 1, "customer": "a", "amount": 5}"#,
        "this is not json",
        r#"{"id": 3, "customer": "c", "amount": 7}"#,
    ] {
        producer
            .send(BaseRecord::<(), str>::to(&topic).payload(payload))
            .unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();

    let base = [
        ("bootstrap.servers", brokers.as_str()),
        ("topic", topic.as_str()),
        ("startup.mode", "earliest"),
    ];
    let mut failing = create_source("KAFKA", &options(&base), None, orders_schema(false)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let error = loop {
        match failing.poll_batch(100) {
            Err(e) => break e.to_string(),
            Ok(SourcePoll::Pending) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Ok(other) => panic!("expected a decoding error, got {other:?}"),
        }
    };
    assert!(
        error.contains(&format!("topic '{topic}' partition 0 offset 1")),
        "{error}"
    );

    let mut skip = base.to_vec();
    skip.push(("error.policy", "skip"));
    let mut skipping = create_source("KAFKA", &options(&skip), None, orders_schema(false)).unwrap();
    let batches = read_rows(skipping.as_mut(), 2);
    assert_eq!(ids(&batches), vec![1, 3]);
    assert_eq!(skipping.metrics().bad_records, 1);

    // Dead-letter topic: the bad message, with where it came from and why, in headers.
    let dlq_topic = self::topic(&brokers, "dead", 1);
    let mut dlq = base.to_vec();
    dlq.push(("error.policy", "dlq"));
    dlq.push(("dlq.topic", dlq_topic.as_str()));
    let mut dead = create_source("KAFKA", &options(&dlq), None, orders_schema(false)).unwrap();
    assert_eq!(ids(&read_rows(dead.as_mut(), 2)), vec![1, 3]);
    assert_eq!(dead.metrics().bad_records, 1);
    dead.position().expect("flushes the dead letters");
    let consumer: rdkafka::consumer::BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "dlq-check")
        .create()
        .unwrap();
    let mut list = rdkafka::TopicPartitionList::new();
    list.add_partition_offset(&dlq_topic, 0, rdkafka::Offset::Beginning)
        .unwrap();
    rdkafka::consumer::Consumer::assign(&consumer, &list).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let message = loop {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            break m.unwrap().detach();
        }
        assert!(Instant::now() < deadline, "no dead letter arrived");
    };
    use rdkafka::message::{Headers, Message};
    assert_eq!(message.payload(), Some(&b"this is not json"[..]));
    let headers = message.headers().expect("error headers");
    let header = |name: &str| {
        headers
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    assert_eq!(header("laminar.topic").as_deref(), Some(topic.as_str()));
    assert_eq!(header("laminar.partition").as_deref(), Some("0"));
    assert_eq!(header("laminar.offset").as_deref(), Some("1"));
    assert!(header("laminar.error").is_some_and(|e| !e.is_empty()));
    // dlq needs its topic.
    let mut no_topic = base.to_vec();
    no_topic.push(("error.policy", "dlq"));
    let e = create_source("KAFKA", &options(&no_topic), None, orders_schema(false))
        .err()
        .unwrap();
    assert!(e.to_string().contains("dlq.topic"), "{e}");
}

#[test]
fn csv_and_raw_messages_round_trip() {
    let Some(brokers) = brokers() else { return };
    // CSV: one record per message, fields by position; a quoted comma and newline survive.
    let csv_topic = topic(&brokers, "csv", 1);
    let csv = [
        ("bootstrap.servers", brokers.as_str()),
        ("topic", csv_topic.as_str()),
        ("format", "csv"),
        ("startup.mode", "earliest"),
    ];
    let mut sink = create_sink("KAFKA", &options(&csv[..3]), None, orders_schema(false)).unwrap();
    let mut batch = orders(0..5);
    let names: ArrayRef = Arc::new(StringArray::from(vec!["a", "b,c", "d\ne", "f\"g", "h"]));
    batch = RecordBatch::try_new(
        batch.schema(),
        vec![batch.column(0).clone(), names, batch.column(2).clone()],
    )
    .unwrap();
    sink.write_batch(&batch).unwrap();
    sink.close().unwrap();
    let mut source = create_source("KAFKA", &options(&csv), None, orders_schema(false)).unwrap();
    let back = read_rows(source.as_mut(), 5);
    assert_eq!(ids(&back), (0..5).collect::<Vec<_>>());
    let customers: Vec<String> = back
        .iter()
        .flat_map(|b| {
            let c = b.column(1).as_string::<i32>();
            (0..b.num_rows())
                .map(|r| c.value(r).to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(customers, vec!["a", "b,c", "d\ne", "f\"g", "h"]);

    // Raw: the payload is the value column.
    let raw_topic = topic(&brokers, "raw", 1);
    let line_schema = Arc::new(Schema::new(vec![Field::new("line", DataType::Utf8, true)]));
    let raw = [
        ("bootstrap.servers", brokers.as_str()),
        ("topic", raw_topic.as_str()),
        ("format", "raw"),
        ("startup.mode", "earliest"),
    ];
    let mut sink = create_sink("KAFKA", &options(&raw[..3]), None, line_schema.clone()).unwrap();
    let lines = RecordBatch::try_new(
        line_schema.clone(),
        vec![Arc::new(StringArray::from(vec!["plain text", "{not json}"])) as ArrayRef],
    )
    .unwrap();
    sink.write_batch(&lines).unwrap();
    sink.close().unwrap();
    let with_offset = Arc::new(Schema::new(vec![
        Field::new("line", DataType::Utf8, true),
        Field::new("_offset", DataType::Int64, true),
    ]));
    let mut source = create_source("KAFKA", &options(&raw), None, with_offset).unwrap();
    let back = read_rows(source.as_mut(), 2);
    let got: Vec<(String, i64)> = back
        .iter()
        .flat_map(|b| {
            let l = b.column(0).as_string::<i32>();
            let o = b.column(1).as_primitive::<Int64Type>();
            (0..b.num_rows())
                .map(|r| (l.value(r).to_string(), o.value(r)))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        got,
        vec![("plain text".to_string(), 0), ("{not json}".to_string(), 1)]
    );
    // Raw needs exactly one text or binary value column.
    let e = create_sink("KAFKA", &options(&raw[..3]), None, orders_schema(false))
        .err()
        .unwrap();
    assert!(e.to_string().contains("one VARCHAR or BYTES column"), "{e}");
}

/// The Java client's `Utils.murmur2` (seed 0x9747b28c), written from its definition.
fn java_murmur2(data: &[u8]) -> i32 {
    let m: u32 = 0x5bd1_e995;
    let r = 24;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let chunks = data.chunks_exact(4);
    let tail = chunks.remainder();
    for chunk in chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(m);
        k ^= k >> r;
        k = k.wrapping_mul(m);
        h = h.wrapping_mul(m);
        h ^= k;
    }
    if tail.len() >= 3 {
        h ^= (tail[2] as u32) << 16;
    }
    if tail.len() >= 2 {
        h ^= (tail[1] as u32) << 8;
    }
    if !tail.is_empty() {
        h ^= tail[0] as u32;
        h = h.wrapping_mul(m);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(m);
    h ^= h >> 15;
    h as i32
}

/// The Java client's partition of a keyed record: `toPositive(murmur2(key)) % partitions`.
fn java_partition(key: &[u8], partitions: i32) -> i32 {
    (java_murmur2(key) & 0x7fff_ffff) % partitions
}

#[test]
fn java_murmur2_port_matches_the_java_clients_values() {
    // Values of `org.apache.kafka.common.utils.Utils.murmur2` from the Java client's tests.
    for (key, expected) in [
        ("21", -973932308),
        ("foobar", -790332482),
        ("a-little-bit-long-string", -985981536),
        ("a-little-bit-longer-string", -1486304829),
        (
            "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
            -58897971,
        ),
        ("abc", 479470107),
    ] {
        assert_eq!(java_murmur2(key.as_bytes()), expected, "murmur2({key})");
    }
}

/// Keyed rows land in the partition the Java client would choose for the same key.
#[test]
fn keys_are_partitioned_like_the_java_client() {
    let Some(brokers) = brokers() else { return };
    let partitions = 7;
    let topic = topic(&brokers, "murmur", partitions);
    let mut sink = create_sink(
        "KAFKA",
        &options(&[
            ("bootstrap.servers", &brokers),
            ("topic", &topic),
            ("key", "customer"),
        ]),
        None,
        orders_schema(false),
    )
    .unwrap();
    let ids = 0..60i64;
    let customers: Vec<String> = ids.clone().map(|i| format!("customer-{i}")).collect();
    let batch = RecordBatch::try_new(
        orders_schema(false),
        vec![
            Arc::new(Int64Array::from_iter_values(ids.clone())) as ArrayRef,
            Arc::new(StringArray::from(customers)),
            Arc::new(Int64Array::from_iter_values(ids)),
        ],
    )
    .unwrap();
    sink.write_batch(&batch).unwrap();
    sink.close().unwrap();
    let mut source = create_source(
        "KAFKA",
        &options(&[
            ("bootstrap.servers", &brokers),
            ("topic", &topic),
            ("startup.mode", "earliest"),
        ]),
        None,
        orders_schema(true),
    )
    .unwrap();
    let back = read_rows(source.as_mut(), 60);
    let mut checked = 0;
    let mut used = BTreeSet::new();
    for b in &back {
        let key = b.column(5).as_string::<i32>();
        let partition = b.column(3).as_primitive::<Int32Type>();
        for row in 0..b.num_rows() {
            assert_eq!(
                partition.value(row),
                java_partition(key.value(row).as_bytes(), partitions),
                "key {}",
                key.value(row)
            );
            used.insert(partition.value(row));
            checked += 1;
        }
    }
    assert_eq!(checked, 60);
    assert!(
        used.len() > 3,
        "60 keys spread over the partitions: {used:?}"
    );
}

#[test]
fn startup_modes_choose_where_partitions_begin() {
    let Some(brokers) = brokers() else { return };
    let topic = topic(&brokers, "startup", 1);
    let producer = plain_producer(&brokers);
    let produce = |ids: std::ops::Range<i64>| {
        for id in ids {
            let payload = format!(r#"{{"id": {id}, "customer": "c", "amount": 1}}"#);
            producer
                .send(
                    BaseRecord::<(), str>::to(&topic)
                        .payload(&payload)
                        .timestamp(1_700_000_000_000 + id * 1000),
                )
                .unwrap();
        }
        producer.flush(Duration::from_secs(10)).unwrap();
    };
    produce(0..10);
    let read = |extra: &[(&str, &str)], rows: usize| {
        let mut pairs = vec![
            ("bootstrap.servers", brokers.as_str()),
            ("topic", topic.as_str()),
        ];
        pairs.extend_from_slice(extra);
        let mut source =
            create_source("KAFKA", &options(&pairs), None, orders_schema(false)).unwrap();
        ids(&read_rows(source.as_mut(), rows))
    };
    assert_eq!(
        read(
            &[
                ("startup.mode", "specific-offsets"),
                ("startup.specific-offsets", "partition:0,offset:7")
            ],
            3
        ),
        vec![7, 8, 9]
    );
    assert_eq!(
        read(
            &[
                ("startup.mode", "timestamp"),
                ("startup.timestamp.ms", "1700000005000")
            ],
            5
        ),
        vec![5, 6, 7, 8, 9]
    );
    assert_eq!(
        read(&[("startup.mode", "earliest")], 10),
        (0..10).collect::<Vec<_>>()
    );
    // Bad combinations are refused.
    for bad in [
        vec![("startup.mode", "specific-offsets")],
        vec![
            ("startup.mode", "specific-offsets"),
            ("startup.specific-offsets", "partition:x"),
        ],
        vec![
            ("startup.mode", "timestamp"),
            ("startup.timestamp.ms", "noon"),
        ],
        vec![("startup.timestamp.ms", "5")],
    ] {
        let mut pairs = vec![
            ("bootstrap.servers", brokers.as_str()),
            ("topic", topic.as_str()),
        ];
        pairs.extend(bad.iter().copied());
        let e = create_source("KAFKA", &options(&pairs), None, orders_schema(false))
            .err()
            .unwrap_or_else(|| panic!("{bad:?} must be refused"));
        assert!(e.to_string().contains("startup."), "{e}");
    }
}

#[test]
fn bad_options_are_refused_before_connecting() {
    let schema = orders_schema(false);
    let e = create_source("KAFKA", &options(&[("topic", "t")]), None, schema.clone())
        .err()
        .unwrap();
    assert!(e.to_string().contains("bootstrap.servers"), "{e}");
    let e = create_source(
        "KAFKA",
        &options(&[
            ("bootstrap.servers", "127.0.0.1:1"),
            ("topic", "t"),
            ("startup.mode", "yesterday"),
        ]),
        None,
        schema.clone(),
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("startup.mode"), "{e}");
    for (key, value, reason) in [
        (
            "partition.assignment.strategy",
            "sticky-ish",
            "cooperative-sticky",
        ),
        ("backpressure.high.watermark", "1.5", "between 0 and 1"),
        (
            "backpressure.low.watermark",
            "0.9",
            "below backpressure.high.watermark",
        ),
        ("max.poll.records", "0", "at least 1"),
        ("poll.timeout.ms", "soon", "integer"),
        ("isolation.level", "dirty", "read_committed"),
        ("auto.offset.reset", "smallest", "earliest"),
    ] {
        let e = create_source(
            "KAFKA",
            &options(&[
                ("bootstrap.servers", "127.0.0.1:1"),
                ("topic", "t"),
                (key, value),
            ]),
            None,
            schema.clone(),
        )
        .err()
        .unwrap();
        let text = e.to_string();
        assert!(text.contains(key) && text.contains(reason), "{key}: {text}");
    }
    let e = create_sink(
        "KAFKA",
        &options(&[
            ("bootstrap.servers", "127.0.0.1:1"),
            ("topic", "t"),
            ("key", "nope"),
        ]),
        None,
        schema.clone(),
    )
    .err()
    .unwrap();
    assert!(
        e.to_string().contains("nope") && e.to_string().contains("customer"),
        "{e}"
    );
    // Pass-through options reach librdkafka (unknown ones are its error, not ours).
    let e = create_sink(
        "KAFKA",
        &options(&[
            ("bootstrap.servers", "127.0.0.1:1"),
            ("topic", "t"),
            ("kafka.no.such.setting", "1"),
        ]),
        None,
        schema,
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("no.such.setting"), "{e}");
}

/// Every message of `topic` (all partitions), read from the beginning until nothing new
/// arrives for a second: the ids they carry (JSON `id` field), sorted. The broker under
/// test does not hide the records of aborted transactions from read_committed consumers,
/// so this counts what was written, committed or not.
fn written_ids(brokers: &str, topic: &str) -> Vec<i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "written-ids")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut list = rdkafka::TopicPartitionList::new();
    for p in metadata.topics()[0].partitions() {
        list.add_partition_offset(topic, p.id(), rdkafka::Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&list).unwrap();
    let mut ids = Vec::new();
    let mut quiet_since = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(30);
    while quiet_since.elapsed() < Duration::from_secs(1) && Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            let text = std::str::from_utf8(m.payload().unwrap()).unwrap();
            let id = text
                .split("\"id\":")
                .nth(1)
                .and_then(|r| r.split([',', '}']).next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no id in {text}"));
            ids.push(id);
            quiet_since = Instant::now();
        }
    }
    ids.sort_unstable();
    ids
}

/// The JSON `id` fields of raw log records, sorted.
fn payload_ids(records: &[kafka_test::LogRecord]) -> Vec<i64> {
    let mut ids: Vec<i64> = records
        .iter()
        .map(|r| {
            let text = std::str::from_utf8(r.value.as_deref().unwrap()).unwrap();
            text.split("\"id\":")
                .nth(1)
                .and_then(|r| r.split([',', '}']).next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no id in {text}"))
        })
        .collect();
    ids.sort_unstable();
    ids
}

/// The epoch the exactly-once sink with transactional id `id` last committed, as the
/// marker offset of the group named like the id.
/// A consumer of group `group` (to read or commit its offsets).
fn group_member(brokers: &str, group: &str) -> rdkafka::consumer::BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .unwrap()
}

/// A producer with transactional id `id`, its transactions initialized.
fn transactional_producer(brokers: &str, id: &str) -> BaseProducer {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("transactional.id", id)
        .create()
        .unwrap();
    producer.init_transactions(Duration::from_secs(30)).unwrap();
    producer
}

fn committed_marker(brokers: &str, id: &str, topic: &str) -> Option<i64> {
    use rdkafka::consumer::Consumer;
    let consumer = group_member(brokers, id);
    let mut list = rdkafka::TopicPartitionList::new();
    list.add_partition(topic, 0);
    let committed = consumer
        .committed_offsets(list, Duration::from_secs(10))
        .unwrap();
    match committed.elements()[0].offset() {
        rdkafka::Offset::Offset(n) => Some(n),
        _ => None,
    }
}

fn exactly_once_options(brokers: &str, topic: &str, id: &str) -> ConnectorOptions {
    options(&[
        ("bootstrap.servers", brokers),
        ("topic", topic),
        ("delivery.guarantee", "exactly-once"),
        ("transactional.id", id),
    ])
}

fn unique(name: &str) -> String {
    format!(
        "{name}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

#[test]
fn the_exactly_once_sink_commits_each_checkpoint_in_one_transaction_with_its_marker() {
    let Some(brokers) = brokers() else { return };
    let topic = topic(&brokers, "eos", 2);
    let id = unique("eos-txn");
    let mut sink = create_sink(
        "KAFKA",
        &exactly_once_options(&brokers, &topic, &id),
        None,
        orders_schema(false),
    )
    .unwrap();
    let caps = sink.capabilities();
    assert!(caps.exactly_once && caps.two_phase_commit);
    sink.begin_epoch(1).unwrap();
    sink.write_batch(&orders(0..10)).unwrap();
    sink.pre_commit(1).unwrap();
    let state = sink
        .pre_commit_state()
        .unwrap()
        .expect("the open transaction");
    assert!(!state.is_empty());
    // Rows after the barrier wait for the commit of epoch 1; nothing is visible to a
    // read_committed consumer before it.
    sink.write_batch(&orders(10..15)).unwrap();
    assert_eq!(written_ids(&brokers, &topic), Vec::<i64>::new());
    assert_eq!(committed_marker(&brokers, &id, &topic), None);
    sink.commit_epoch(1).unwrap();
    assert_eq!(committed_marker(&brokers, &id, &topic), Some(1));
    sink.pre_commit(2).unwrap();
    sink.commit_epoch(2).unwrap();
    assert_eq!(committed_marker(&brokers, &id, &topic), Some(2));
    assert_eq!(written_ids(&brokers, &topic), (0..15).collect::<Vec<_>>());
    // A checkpoint that fails (no commit of 3): its rows join the next transaction.
    sink.write_batch(&orders(15..20)).unwrap();
    sink.pre_commit(3).unwrap();
    sink.write_batch(&orders(20..25)).unwrap();
    sink.pre_commit(4).unwrap();
    sink.commit_epoch(4).unwrap();
    assert_eq!(committed_marker(&brokers, &id, &topic), Some(4));
    assert_eq!(written_ids(&brokers, &topic), (0..25).collect::<Vec<_>>());
    assert_eq!(sink.metrics().last_committed_epoch, Some(4));
}

#[test]
fn a_lost_transaction_of_a_completed_checkpoint_is_written_again_once_at_recovery() {
    let Some(brokers) = brokers() else { return };
    let topic = topic(&brokers, "eos-recover", 1);
    let id = unique("eos-recover-txn");
    let opts = exactly_once_options(&brokers, &topic, &id);
    let mut crashed = create_sink("KAFKA", &opts, None, orders_schema(false)).unwrap();
    crashed.begin_epoch(7).unwrap();
    crashed.write_batch(&orders(0..10)).unwrap();
    crashed.write_batch(&orders(10..12)).unwrap();
    crashed.pre_commit(7).unwrap();
    // The checkpoint of epoch 7 completed with this state, then the process stopped
    // before the transaction was committed.
    let state = crashed.pre_commit_state().unwrap().unwrap();
    std::mem::forget(crashed);

    // The restarted sink fences the old producer (aborting its transaction), finds the
    // marker behind epoch 7 and sends the checkpointed rows again.
    let mut restarted = create_sink("KAFKA", &opts, None, orders_schema(false)).unwrap();
    restarted.restore_pre_commit_state(&state).unwrap();
    restarted.recover(Some(7)).unwrap();
    assert_eq!(committed_marker(&brokers, &id, &topic), Some(7));
    let after_first = written_ids(&brokers, &topic);
    // The aborted copy (this broker does not hide it) and the committed one.
    assert_eq!(after_first.len(), 24, "{after_first:?}");
    drop(restarted);

    // Read by transaction outcome: the rows once committed, the lost copy aborted.
    let log = kafka_test::read_partition(&brokers, &topic, 0);
    assert_eq!(payload_ids(&log.committed), (0..12).collect::<Vec<_>>());
    assert_eq!(payload_ids(&log.aborted), (0..12).collect::<Vec<_>>());
    assert!(log.open.is_empty());

    // Recovering the same checkpoint again: the marker says it is committed.
    let mut again = create_sink("KAFKA", &opts, None, orders_schema(false)).unwrap();
    again.restore_pre_commit_state(&state).unwrap();
    again.recover(Some(7)).unwrap();
    assert_eq!(written_ids(&brokers, &topic).len(), 24);
    let log = kafka_test::read_partition(&brokers, &topic, 0);
    assert_eq!(payload_ids(&log.committed), (0..12).collect::<Vec<_>>());

    // A state that does not belong to the recovered checkpoint is not sent.
    let mut other = create_sink("KAFKA", &opts, None, orders_schema(false)).unwrap();
    other.restore_pre_commit_state(&state).unwrap();
    other.recover(Some(8)).unwrap();
    assert_eq!(written_ids(&brokers, &topic).len(), 24);

    // A damaged state is an error, not a silent skip.
    let mut damaged = create_sink("KAFKA", &opts, None, orders_schema(false)).unwrap();
    let e = damaged
        .restore_pre_commit_state(&state[..state.len() / 2])
        .unwrap_err()
        .to_string();
    assert!(e.contains("checkpointed transaction"), "{e}");
}

#[test]
fn a_new_producer_with_the_same_transactional_id_fences_the_old_one() {
    let Some(brokers) = brokers() else { return };
    let topic = topic(&brokers, "eos-fence", 1);
    let id = unique("eos-fence-txn");
    let opts = exactly_once_options(&brokers, &topic, &id);
    let mut zombie = create_sink("KAFKA", &opts, None, orders_schema(false)).unwrap();
    zombie.begin_epoch(1).unwrap();
    zombie.write_batch(&orders(0..5)).unwrap();
    zombie.pre_commit(1).unwrap();
    let _successor = create_sink("KAFKA", &opts, None, orders_schema(false)).unwrap();
    let e = zombie.commit_epoch(1).unwrap_err().to_string();
    assert!(e.contains(&id), "{e}");
    assert_eq!(committed_marker(&brokers, &id, &topic), None);
}

#[test]
fn exactly_once_options_are_checked() {
    let schema = orders_schema(false);
    let e = laminar_connectors::validate_sink(
        "KAFKA",
        &options(&[
            ("bootstrap.servers", "localhost:1"),
            ("topic", "t"),
            ("delivery.guarantee", "exactly-twice"),
        ]),
        None,
        &schema,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("delivery.guarantee") && e.contains("exactly-once"),
        "{e}"
    );
    let e = laminar_connectors::validate_sink(
        "KAFKA",
        &options(&[
            ("bootstrap.servers", "localhost:1"),
            ("topic", "t"),
            ("transactional.id", "x"),
        ]),
        None,
        &schema,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("transactional.id"), "{e}");
}

/// Recovery trusts the marker: an offset committed inside a transaction that was aborted
/// (the producer stopped after sending the marker, before its commit) must not show.
#[test]
fn the_commit_marker_of_an_aborted_transaction_does_not_count() {
    use rdkafka::consumer::Consumer;
    let Some(brokers) = brokers() else { return };
    let topic = topic(&brokers, "eos-marker", 1);
    let id = unique("eos-marker-txn");
    let producer = transactional_producer(&brokers, &id);
    let group = group_member(&brokers, &id);
    let marker = |epoch: i64| {
        let mut list = rdkafka::TopicPartitionList::new();
        list.add_partition_offset(&topic, 0, rdkafka::Offset::Offset(epoch))
            .unwrap();
        list
    };
    producer.begin_transaction().unwrap();
    producer
        .send_offsets_to_transaction(
            &marker(3),
            &group.group_metadata().unwrap(),
            Duration::from_secs(30),
        )
        .unwrap();
    producer
        .commit_transaction(Duration::from_secs(30))
        .unwrap();
    assert_eq!(committed_marker(&brokers, &id, &topic), Some(3));
    producer.begin_transaction().unwrap();
    producer
        .send_offsets_to_transaction(
            &marker(4),
            &group.group_metadata().unwrap(),
            Duration::from_secs(30),
        )
        .unwrap();
    // Not yet committed: not visible.
    assert_eq!(committed_marker(&brokers, &id, &topic), Some(3));
    producer.abort_transaction(Duration::from_secs(30)).unwrap();
    assert_eq!(committed_marker(&brokers, &id, &topic), Some(3));
}

/// As above, when the producer stops without aborting and a new producer with the same
/// transactional id fences it.
#[test]
fn the_commit_marker_of_a_fenced_transaction_does_not_count() {
    use rdkafka::consumer::Consumer;
    let Some(brokers) = brokers() else { return };
    let topic = topic(&brokers, "eos-fenced-marker", 1);
    let id = unique("eos-fenced-marker-txn");
    let producer = || transactional_producer(&brokers, &id);
    let group = group_member(&brokers, &id);
    let mut marker = rdkafka::TopicPartitionList::new();
    marker
        .add_partition_offset(&topic, 0, rdkafka::Offset::Offset(9))
        .unwrap();
    let zombie = producer();
    zombie.begin_transaction().unwrap();
    zombie
        .send(BaseRecord::<(), str>::to(&topic).payload("{\"id\":1}"))
        .unwrap();
    zombie.flush(Duration::from_secs(10)).unwrap();
    zombie
        .send_offsets_to_transaction(
            &marker,
            &group.group_metadata().unwrap(),
            Duration::from_secs(30),
        )
        .unwrap();
    std::mem::forget(zombie);
    let successor = producer();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(committed_marker(&brokers, &id, &topic), None);
    drop(successor);
    let log = kafka_test::read_partition(&brokers, &topic, 0);
    assert_eq!(log.committed.len(), 0, "{log:?}");
}

fn plain_producer(brokers: &str) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap()
}

fn produce_payloads(brokers: &str, topic: &str, messages: &[(Option<&str>, Option<&str>)]) {
    let producer = plain_producer(brokers);
    for (key, payload) in messages {
        let mut record = BaseRecord::<str, str>::to(topic).partition(0);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(payload) = payload {
            record = record.payload(payload);
        }
        producer.send(record).map_err(|(e, _)| e).unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();
}

fn changes_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("name", DataType::Utf8, true),
        Field::new("_op", DataType::Utf8, false),
    ]))
}

/// Rows as text, one `Vec` per row, columns in order.
fn text_rows(batches: &[RecordBatch]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for b in batches {
        let columns: Vec<ArrayRef> = b
            .columns()
            .iter()
            .map(|c| arrow::compute::cast(c, &DataType::Utf8).unwrap())
            .collect();
        for r in 0..b.num_rows() {
            out.push(
                columns
                    .iter()
                    .map(|c| {
                        let c = c.as_string::<i32>();
                        if c.is_null(r) {
                            "NULL".to_string()
                        } else {
                            c.value(r).to_string()
                        }
                    })
                    .collect(),
            );
        }
    }
    out
}

#[test]
fn debezium_messages_are_read_as_a_changelog() {
    let Some(brokers) = brokers() else { return };
    let topic = topic(&brokers, "dbz-in", 1);
    produce_payloads(
        &brokers,
        &topic,
        &[
            (
                Some("1"),
                Some(r#"{"before":null,"after":{"id":1,"name":"ann"},"op":"c","ts_ms":1000}"#),
            ),
            (
                Some("2"),
                Some(r#"{"before":null,"after":{"id":2,"name":"bob"},"op":"r","ts_ms":1001}"#),
            ),
            (
                Some("1"),
                Some(
                    r#"{"before":{"id":1,"name":"ann"},"after":{"id":1,"name":"anne"},"op":"u","ts_ms":1002}"#,
                ),
            ),
            (
                Some("2"),
                Some(r#"{"before":{"id":2,"name":"bob"},"after":null,"op":"d","ts_ms":1003}"#),
            ),
            // Kafka's tombstone after a delete: no change.
            (Some("2"), None),
            // The JSON converter with schemas: the envelope under "payload".
            (
                Some("3"),
                Some(
                    r#"{"schema":{"type":"struct"},"payload":{"before":null,"after":{"id":3,"name":"cy"},"op":"c","ts_ms":1004}}"#,
                ),
            ),
        ],
    );
    let mut schema_fields = changes_schema().fields().to_vec();
    schema_fields.push(Arc::new(Field::new("_ts_ms", DataType::Int64, true)));
    let schema = Arc::new(Schema::new(schema_fields));
    let mut source = create_source(
        "KAFKA",
        &options(&[
            ("bootstrap.servers", &brokers),
            ("topic", &topic),
            ("startup.mode", "earliest"),
            ("format", "debezium"),
        ]),
        None,
        schema.clone(),
    )
    .unwrap();
    let rows = text_rows(&read_rows(source.as_mut(), 6));
    assert_eq!(
        rows,
        vec![
            vec!["1", "ann", "I", "1000"],
            vec!["2", "bob", "r", "1001"],
            vec!["1", "ann", "U-", "1002"],
            vec!["1", "anne", "U+", "1002"],
            vec!["2", "bob", "D", "1003"],
            vec!["3", "cy", "I", "1004"],
        ]
    );

    // A Debezium source must declare `_op`.
    let e = create_source(
        "KAFKA",
        &options(&[
            ("bootstrap.servers", &brokers),
            ("topic", &topic),
            ("format", "debezium"),
        ]),
        None,
        orders_schema(false),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("_op VARCHAR"), "{e}");

    // A change without a known op fails with its position, or is skipped when asked.
    let bad_topic = self::topic(&brokers, "dbz-bad", 1);
    produce_payloads(
        &brokers,
        &bad_topic,
        &[
            (
                None,
                Some(r#"{"before":null,"after":{"id":5,"name":"x"},"op":"t","ts_ms":1}"#),
            ),
            (
                None,
                Some(r#"{"before":null,"after":null,"op":"c","ts_ms":2}"#),
            ),
            (
                None,
                Some(r#"{"before":null,"after":{"id":6,"name":"y"},"op":"c","ts_ms":3}"#),
            ),
        ],
    );
    let mut failing = create_source(
        "KAFKA",
        &options(&[
            ("bootstrap.servers", &brokers),
            ("topic", &bad_topic),
            ("startup.mode", "earliest"),
            ("format", "debezium"),
        ]),
        None,
        schema.clone(),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let e = loop {
        match failing.poll_batch(100) {
            Err(e) => break e.to_string(),
            Ok(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(_) => panic!("no error"),
        }
    };
    assert!(
        e.contains("unknown op 't'") && e.contains("offset 0"),
        "{e}"
    );
    let mut skipping = create_source(
        "KAFKA",
        &options(&[
            ("bootstrap.servers", &brokers),
            ("topic", &bad_topic),
            ("startup.mode", "earliest"),
            ("format", "debezium"),
            ("error.policy", "skip"),
        ]),
        None,
        schema,
    )
    .unwrap();
    let rows = text_rows(&read_rows(skipping.as_mut(), 1));
    assert_eq!(rows, vec![vec!["6", "y", "I", "3"]]);
    assert_eq!(skipping.metrics().bad_records, 2);
}

fn changes_batch() -> RecordBatch {
    RecordBatch::try_new(
        changes_schema(),
        vec![
            Arc::new(Int64Array::from(vec![1, 2, 1, 1, 2, 3, 4])) as ArrayRef,
            Arc::new(StringArray::from(vec![
                "ann", "bob", "ann", "anne", "bob", "cy", "dee",
            ])),
            Arc::new(StringArray::from(vec![
                "I", "I", "U-", "U+", "D", "I", "U-",
            ])),
        ],
    )
    .unwrap()
}

/// A message read back: its key and payload as text.
type KeyAndPayload = (Option<String>, Option<String>);

/// Every message of the single-partition `topic`: (key, payload), in order.
fn messages_of(brokers: &str, topic: &str, expected: usize) -> Vec<KeyAndPayload> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "messages-of")
        .create()
        .unwrap();
    let mut list = rdkafka::TopicPartitionList::new();
    list.add_partition_offset(topic, 0, rdkafka::Offset::Beginning)
        .unwrap();
    consumer.assign(&list).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while out.len() < expected && Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            out.push((
                m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                m.payload().map(|p| String::from_utf8_lossy(p).into_owned()),
            ));
        }
    }
    out
}

/// Writes [`changes_batch`] keyed by `id` with the extra option `mode` to a new topic, and
/// reads the messages back.
fn write_changes(
    brokers: &str,
    mode: (&str, &str),
) -> (laminar_connectors::SinkCapabilities, Vec<KeyAndPayload>) {
    let topic = topic(brokers, "changes-out", 1);
    let mut sink = create_sink(
        "KAFKA",
        &options(&[
            ("bootstrap.servers", brokers),
            ("topic", &topic),
            ("key", "id"),
            mode,
        ]),
        None,
        changes_schema(),
    )
    .unwrap();
    sink.write_batch(&changes_batch()).unwrap();
    sink.close().unwrap();
    (sink.capabilities(), messages_of(brokers, &topic, 6))
}

#[test]
fn updating_inputs_are_written_as_debezium_envelopes_or_upserts() {
    let Some(brokers) = brokers() else { return };
    // Debezium: one message per change, an update (U- then U+) as one `u`.
    let (caps, got) = write_changes(&brokers, ("format", "debezium"));
    assert!(caps.changelog);
    let envelopes: Vec<(String, String)> = got
        .iter()
        .map(|(k, p)| {
            let p = p.clone().unwrap();
            // ts_ms is the time of writing: cut it off.
            let p = p.split(",\"ts_ms\"").next().unwrap().to_string();
            (k.clone().unwrap(), p)
        })
        .collect();
    assert_eq!(
        envelopes,
        vec![
            (
                "1".into(),
                r#"{"before":null,"after":{"id":1,"name":"ann"},"op":"c""#.into()
            ),
            (
                "2".into(),
                r#"{"before":null,"after":{"id":2,"name":"bob"},"op":"c""#.into()
            ),
            (
                "1".into(),
                r#"{"before":{"id":1,"name":"ann"},"after":{"id":1,"name":"anne"},"op":"u""#.into()
            ),
            (
                "2".into(),
                r#"{"before":{"id":2,"name":"bob"},"after":null,"op":"d""#.into()
            ),
            (
                "3".into(),
                r#"{"before":null,"after":{"id":3,"name":"cy"},"op":"c""#.into()
            ),
            (
                "4".into(),
                r#"{"before":{"id":4,"name":"dee"},"after":null,"op":"d""#.into()
            ),
        ]
    );

    // Upsert: the row as the key's value, deletes as tombstones, an update in place.
    let (caps, got) = write_changes(&brokers, ("upsert", "true"));
    assert!(caps.upsert);
    let expect = |k: &str, v: Option<&str>| (Some(k.to_string()), v.map(str::to_string));
    assert_eq!(
        got,
        vec![
            expect("1", Some(r#"{"id":1,"name":"ann"}"#)),
            expect("2", Some(r#"{"id":2,"name":"bob"}"#)),
            expect("1", Some(r#"{"id":1,"name":"anne"}"#)),
            expect("2", None),
            expect("3", Some(r#"{"id":3,"name":"cy"}"#)),
            expect("4", None),
        ]
    );

    // An append-only format refuses an updating input; upsert needs a key and excludes
    // the Debezium format.
    for (pairs, needle) in [
        (vec![], "format = 'debezium'"),
        (vec![("upsert", "true")], "key = '<column>'"),
        (
            vec![("upsert", "true"), ("key", "id"), ("format", "debezium")],
            "use one of the two",
        ),
    ] {
        let mut all = vec![("bootstrap.servers", "127.0.0.1:1"), ("topic", "t")];
        all.extend(pairs);
        let e = laminar_connectors::validate_sink("KAFKA", &options(&all), None, &changes_schema())
            .unwrap_err()
            .to_string();
        assert!(e.contains(needle), "{e}");
    }
}

#[test]
fn message_headers_are_read_into_the_headers_column() {
    use rdkafka::message::{Header, OwnedHeaders};
    let Some(brokers) = brokers() else { return };
    let topic = topic(&brokers, "headers", 1);
    let producer = plain_producer(&brokers);
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "trace",
            value: Some("abc"),
        })
        .insert(Header::<&str> {
            key: "empty",
            value: None,
        });
    producer
        .send(
            BaseRecord::<(), str>::to(&topic)
                .payload(r#"{"id":1}"#)
                .headers(headers),
        )
        .map_err(|(e, _)| e)
        .unwrap();
    producer
        .send(BaseRecord::<(), str>::to(&topic).payload(r#"{"id":2}"#))
        .map_err(|(e, _)| e)
        .unwrap();
    producer.flush(Duration::from_secs(10)).unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("_headers", DataType::Utf8, true),
    ]));
    let mut source = create_source(
        "KAFKA",
        &options(&[
            ("bootstrap.servers", &brokers),
            ("topic", &topic),
            ("startup.mode", "earliest"),
        ]),
        None,
        schema,
    )
    .unwrap();
    let rows = text_rows(&read_rows(source.as_mut(), 2));
    assert_eq!(
        rows,
        vec![
            vec!["1", r#"{"empty":null,"trace":"abc"}"#],
            vec!["2", "{}"],
        ]
    );
}

#[path = "support/registry.rs"]
mod registry;

/// Rows with nested columns: a struct, a list and a map, and a time.
fn nested_batch() -> RecordBatch {
    use arrow::array::{
        Int32Builder, ListBuilder, MapBuilder, StringBuilder, StructArray,
        TimestampMillisecondArray,
    };
    let address = StructArray::from(vec![
        (
            Arc::new(Field::new("city", DataType::Utf8, false)),
            Arc::new(StringArray::from(vec!["Oslo", "Lima", "Pune"])) as ArrayRef,
        ),
        (
            Arc::new(Field::new("zip", DataType::Int32, true)),
            Arc::new({
                let mut b = Int32Builder::new();
                b.append_value(150);
                b.append_null();
                b.append_value(411);
                b.finish()
            }) as ArrayRef,
        ),
    ]);
    let mut tags = ListBuilder::new(StringBuilder::new());
    tags.append_value([Some("a"), Some("b")]);
    tags.append_value([] as [Option<&str>; 0]);
    tags.append_value([Some("c"), None]);
    let mut attrs = MapBuilder::new(
        None,
        StringBuilder::new(),
        arrow::array::Int64Builder::new(),
    );
    attrs.keys().append_value("x");
    attrs.values().append_value(1);
    attrs.append(true).unwrap();
    attrs.append(true).unwrap();
    attrs.keys().append_value("y");
    attrs.values().append_null();
    attrs.keys().append_value("z");
    attrs.values().append_value(3);
    attrs.append(true).unwrap();
    let attrs = attrs.finish();
    let tags = tags.finish();
    let schema = Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
        Field::new("address", address.data_type().clone(), false),
        Field::new("tags", tags.data_type().clone(), false),
        Field::new("attrs", attrs.data_type().clone(), false),
        Field::new(
            "ts",
            DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, None),
            false,
        ),
    ]);
    RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(Int64Array::from(vec![1, 2, 3])),
            Arc::new(StringArray::from(vec![Some("ann"), None, Some("cy")])),
            Arc::new(address),
            Arc::new(tags),
            Arc::new(attrs),
            Arc::new(TimestampMillisecondArray::from(vec![1_000, 2_000, 3_000])),
        ],
    )
    .unwrap()
}

#[test]
fn avro_rows_with_nested_columns_round_trip_through_the_registry() {
    let Some(brokers) = brokers() else { return };
    let registry = registry::TestRegistry::start(None);
    let topic = topic(&brokers, "avro", 1);
    let batch = nested_batch();
    let mut sink = create_sink(
        "KAFKA",
        &options(&[
            ("bootstrap.servers", &brokers),
            ("topic", &topic),
            ("format", "avro"),
            ("schema.registry.url", &registry.url),
            ("schema.compatibility", "BACKWARD"),
        ]),
        None,
        batch.schema(),
    )
    .unwrap();
    sink.write_batch(&batch).unwrap();
    sink.close().unwrap();

    // No declared columns: the subject's schema supplies them.
    let mut source = create_source(
        "KAFKA",
        &options(&[
            ("bootstrap.servers", &brokers),
            ("topic", &topic),
            ("startup.mode", "earliest"),
            ("format", "avro"),
            ("schema.registry.url", &registry.url),
        ]),
        None,
        Arc::new(Schema::empty()),
    )
    .unwrap();
    assert_eq!(source.schema(), batch.schema());
    let read = read_rows(source.as_mut(), 3);
    // Avro maps are unordered: compare every map's entries sorted, the rest as text.
    let attrs = batch.schema().index_of("attrs").unwrap();
    let text = |b: &[RecordBatch]| {
        let others: Vec<usize> = (0..batch.num_columns()).filter(|&i| i != attrs).collect();
        let without_maps: Vec<RecordBatch> =
            b.iter().map(|b| b.project(&others).unwrap()).collect();
        arrow::util::pretty::pretty_format_batches(&without_maps)
            .unwrap()
            .to_string()
    };
    let map_entries = |b: &[RecordBatch]| -> Vec<Vec<String>> {
        let mut rows = Vec::new();
        for b in b {
            let maps = b.column(attrs).as_map();
            for r in 0..b.num_rows() {
                let entries = maps.value(r);
                let keys = entries.column(0).as_string::<i32>();
                let values = arrow::compute::cast(entries.column(1), &DataType::Utf8).unwrap();
                let values = values.as_string::<i32>();
                let mut row: Vec<String> = (0..entries.len())
                    .map(|i| {
                        format!(
                            "{}={}",
                            keys.value(i),
                            if values.is_null(i) {
                                "NULL"
                            } else {
                                values.value(i)
                            }
                        )
                    })
                    .collect();
                row.sort();
                rows.push(row);
            }
        }
        rows
    };
    assert_eq!(text(&read), text(std::slice::from_ref(&batch)));
    assert_eq!(
        map_entries(&read),
        map_entries(std::slice::from_ref(&batch))
    );
    assert_eq!(map_entries(&read)[2], vec!["y=NULL", "z=3"]);

    // Declared columns (a subset, and metadata) are filled by name.
    let declared = Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, true),
        Field::new("id", DataType::Int64, false),
        Field::new("_offset", DataType::Int64, false),
    ]));
    let mut subset = avro_source(&brokers, &topic, &registry.url, declared);
    assert_eq!(
        text_rows(&read_rows(subset.as_mut(), 3)),
        vec![
            vec!["ann", "1", "0"],
            vec!["NULL", "2", "1"],
            vec!["cy", "3", "2"]
        ]
    );
}

/// A JSON source reading `topic` from the beginning.
fn earliest_source(brokers: &str, topic: &str, declared: SchemaRef) -> Box<dyn SourceConnector> {
    create_source(
        "KAFKA",
        &options(&[
            ("bootstrap.servers", brokers),
            ("topic", topic),
            ("startup.mode", "earliest"),
        ]),
        None,
        declared,
    )
    .unwrap()
}

/// Options of an Avro source or sink of `topic`, and `extra`.
fn avro_options(
    brokers: &str,
    topic: &str,
    registry: &str,
    extra: &[(&str, &str)],
) -> ConnectorOptions {
    let mut all = vec![
        ("bootstrap.servers", brokers),
        ("topic", topic),
        ("format", "avro"),
        ("schema.registry.url", registry),
    ];
    all.extend_from_slice(extra);
    options(&all)
}

/// An Avro source reading `topic` from the beginning.
fn avro_source(
    brokers: &str,
    topic: &str,
    registry: &str,
    declared: SchemaRef,
) -> Box<dyn SourceConnector> {
    create_source(
        "KAFKA",
        &avro_options(brokers, topic, registry, &[("startup.mode", "earliest")]),
        None,
        declared,
    )
    .unwrap()
}

/// Writes `messages` (payloads without keys) to partition 0 of `topic`.
fn send_to_partition_0(brokers: &str, topic: &str, messages: &[Vec<u8>]) {
    let producer = plain_producer(brokers);
    for m in messages {
        producer
            .send(BaseRecord::<str, [u8]>::to(topic).partition(0).payload(m))
            .map_err(|(e, _)| e)
            .unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();
}

/// `value` in the Confluent wire format with schema `id`.
fn avro_message(
    schema: &apache_avro::Schema,
    id: u32,
    value: apache_avro::types::Value,
) -> Vec<u8> {
    let mut message = vec![0u8];
    message.extend_from_slice(&id.to_be_bytes());
    apache_avro::writer::datum::GenericDatumWriter::builder(schema)
        .build()
        .unwrap()
        .write_value(&mut message, value)
        .unwrap();
    message
}

#[test]
fn avro_failures_are_named() {
    let Some(brokers) = brokers() else { return };
    let registry = registry::TestRegistry::start(None);
    let topic = topic(&brokers, "avro-bad", 1);
    let avro_options =
        |extra: &[(&str, &str)]| avro_options(&brokers, &topic, &registry.url, extra);
    // An incompatible schema for the subject fails the sink's creation.
    registry.register(
        &format!("{topic}-value"),
        r#"{"type":"record","name":"r","fields":[{"name":"id","type":"string"}]}"#,
    );
    let e = create_sink(
        "KAFKA",
        &avro_options(&[]),
        None,
        Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)])),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("not compatible"), "{e}");
    // Avro needs a registry.
    let e = laminar_connectors::validate_sink(
        "KAFKA",
        &options(&[
            ("bootstrap.servers", "x:1"),
            ("topic", "t"),
            ("format", "avro"),
        ]),
        None,
        &orders_schema(false),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("schema.registry.url"), "{e}");

    // Messages with an unknown schema id, or not in the wire format.
    produce_payloads(
        &brokers,
        &topic,
        &[
            (None, Some("\u{0}\u{0}\u{0}\u{0}\u{9}x")),
            (None, Some("plain")),
        ],
    );
    let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, true)]));
    let mut source = create_source(
        "KAFKA",
        &avro_options(&[("startup.mode", "earliest"), ("error.policy", "skip")]),
        None,
        schema.clone(),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while source.metrics().bad_records < 2 && Instant::now() < deadline {
        assert!(matches!(
            source.poll_batch(10).unwrap(),
            SourcePoll::Pending
        ));
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(source.metrics().bad_records, 2);
    let mut failing = create_source(
        "KAFKA",
        &avro_options(&[("startup.mode", "earliest")]),
        None,
        schema,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let e = loop {
        match failing.poll_batch(10) {
            Err(e) => break e.to_string(),
            Ok(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(_) => panic!("no error"),
        }
    };
    assert!(e.contains("schema id 9") && e.contains("offset 0"), "{e}");
}

#[test]
fn registry_credentials_never_show_in_errors() {
    let Some(brokers) = brokers() else { return };
    let registry = registry::TestRegistry::start(Some("laminar:s3cret-pass"));
    let topic = topic(&brokers, "avro-auth", 1);
    let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
    let sink_options = |auth: &str| {
        options(&[
            ("bootstrap.servers", &brokers),
            ("topic", &topic),
            ("format", "avro"),
            ("schema.registry.url", &registry.url),
            ("schema.registry.basic.auth.user.info", auth),
        ])
    };
    let e = create_sink(
        "KAFKA",
        &sink_options("laminar:wrong-pass"),
        None,
        schema.clone(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("401"), "{e}");
    assert!(!e.contains("wrong-pass"), "{e}");
    let mut sink = create_sink(
        "KAFKA",
        &sink_options("laminar:s3cret-pass"),
        None,
        schema.clone(),
    )
    .unwrap();
    sink.write_batch(
        &RecordBatch::try_new(
            schema,
            vec![Arc::new(Int64Array::from(vec![7])) as ArrayRef],
        )
        .unwrap(),
    )
    .unwrap();
    sink.close().unwrap();
}

#[test]
fn round_robin_spreads_messages_evenly() {
    let Some(brokers) = brokers() else { return };
    let topic = topic(&brokers, "round-robin", 3);
    let mut sink = create_sink(
        "KAFKA",
        &options(&[
            ("bootstrap.servers", &brokers),
            ("topic", &topic),
            ("key", "customer"),
            ("partitioner", "round-robin"),
        ]),
        None,
        orders_schema(false),
    )
    .unwrap();
    sink.write_batch(&orders(0..9)).unwrap();
    sink.close().unwrap();
    // Read with _partition: three messages in each partition, in turn.
    let mut source = create_source(
        "KAFKA",
        &options(&[
            ("bootstrap.servers", &brokers),
            ("topic", &topic),
            ("startup.mode", "earliest"),
        ]),
        None,
        orders_schema(true),
    )
    .unwrap();
    let rows = text_rows(&read_rows(source.as_mut(), 9));
    let mut by_partition: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for row in rows {
        by_partition
            .entry(row[3].clone())
            .or_default()
            .push(row[0].clone());
    }
    let expected: std::collections::BTreeMap<String, Vec<String>> = (0..3)
        .map(|p| {
            (
                p.to_string(),
                (0..3).map(|k| (p + 3 * k).to_string()).collect(),
            )
        })
        .collect();
    assert_eq!(by_partition, expected);
    let e = laminar_connectors::validate_sink(
        "KAFKA",
        &options(&[
            ("bootstrap.servers", "x:1"),
            ("topic", "t"),
            ("partitioner", "random-ish"),
        ]),
        None,
        &orders_schema(false),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("round-robin"), "{e}");
}

#[test]
fn a_topic_pattern_reads_every_matching_topic() {
    let Some(brokers) = brokers() else { return };
    let prefix = format!("pat{}", std::process::id());
    let stamp = unique("");
    let a = format!("{prefix}-orders-a{stamp}");
    let b = format!("{prefix}-orders-b{stamp}");
    let other = format!("{prefix}-other{stamp}");
    for t in [&a, &b, &other] {
        create_topic(&brokers, t, 1);
    }
    for (t, ids) in [(&a, 0..3), (&b, 3..5), (&other, 100..101)] {
        let mut sink = create_sink(
            "KAFKA",
            &options(&[("bootstrap.servers", &brokers), ("topic", t)]),
            None,
            orders_schema(false),
        )
        .unwrap();
        sink.write_batch(&orders(ids)).unwrap();
        sink.close().unwrap();
    }
    let mut schema_fields = orders_schema(false).fields().to_vec();
    schema_fields.push(Arc::new(Field::new("_topic", DataType::Utf8, true)));
    let mut source = create_source(
        "KAFKA",
        &options(&[
            ("bootstrap.servers", &brokers),
            ("topic.pattern", &format!("{prefix}-orders-.*{stamp}")),
            ("startup.mode", "earliest"),
        ]),
        None,
        Arc::new(Schema::new(schema_fields.clone())),
    )
    .unwrap();
    let batches = read_rows(source.as_mut(), 5);
    assert_eq!(ids(&batches), vec![0, 1, 2, 3, 4]);
    let topics: BTreeSet<String> = text_rows(&batches)
        .into_iter()
        .map(|r| r[3].clone())
        .collect();
    assert_eq!(topics, BTreeSet::from([a.clone(), b.clone()]));

    // No match, both options, and a bad expression are errors.
    for (pairs, needle) in [
        (
            vec![("topic.pattern", "nothing-matches-this-.*")],
            "no existing topic matches",
        ),
        (vec![("topic.pattern", "x"), ("topic", "y")], "not both"),
        (vec![("topic.pattern", "(")], "topic.pattern"),
        (vec![], "'topic'"),
    ] {
        let mut all = vec![("bootstrap.servers", brokers.as_str())];
        all.extend(pairs);
        let e = create_source(
            "KAFKA",
            &options(&all),
            None,
            Arc::new(Schema::new(schema_fields.clone())),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains(needle), "{e}");
    }
}

#[test]
fn messages_compressed_with_every_codec_read_back() {
    let Some(brokers) = brokers() else { return };
    for codec in ["gzip", "snappy", "lz4", "zstd"] {
        let topic = topic(&brokers, &format!("codec-{codec}"), 1);
        let mut sink = create_sink(
            "KAFKA",
            &options(&[
                ("bootstrap.servers", &brokers),
                ("topic", &topic),
                ("compression.type", codec),
            ]),
            None,
            orders_schema(false),
        )
        .unwrap();
        sink.write_batch(&orders(0..20)).unwrap();
        sink.close().unwrap();
        let mut source = earliest_source(&brokers, &topic, orders_schema(false));
        let ids: Vec<String> = text_rows(&read_rows(source.as_mut(), 20))
            .into_iter()
            .map(|row| row[0].clone())
            .collect();
        let expected: Vec<String> = (0..20).map(|i| i.to_string()).collect();
        assert_eq!(ids, expected, "{codec}");
    }
}

/// Messages written by another producer with two versions of a schema (the second adds a
/// field with a default) decode straight into the declared columns: `int` into BIGINT,
/// `bytes` and `fixed` into BYTES, a `decimal` into DECIMAL, an `enum` and a `[null, string]`
/// union into VARCHAR, a field missing from the first version as NULL, and an undeclared
/// field ignored.
#[test]
fn avro_bytes_decimals_enums_and_two_writer_versions_decode_into_declared_columns() {
    use apache_avro::types::Value;
    let Some(brokers) = brokers() else { return };
    let registry = registry::TestRegistry::start(None);
    let topic = topic(&brokers, "avro-types", 1);
    let subject = format!("{topic}-value");
    let fields_v1 = r#"{"name":"id","type":"int"},
        {"name":"payload","type":"bytes"},
        {"name":"tag","type":{"type":"fixed","name":"tag4","size":4}},
        {"name":"amount","type":{"type":"bytes","logicalType":"decimal","precision":10,"scale":2}},
        {"name":"kind","type":{"type":"enum","name":"kind","symbols":["card","cash"]}},
        {"name":"note","type":["null","string"],"default":null},
        {"name":"ignored","type":"double"}"#;
    let v1 = format!(
        r#"{{"type":"record","name":"payment","namespace":"shop","fields":[{fields_v1}]}}"#
    );
    let v2 = format!(
        r#"{{"type":"record","name":"payment","namespace":"shop","fields":[{fields_v1},
        {{"name":"channel","type":"string","default":"web"}}]}}"#
    );
    let id1 = registry.register(&subject, &v1) as u32;
    let id2 = registry.register(&subject, &v2) as u32;
    let encode = |schema: &str, id: u32, i: i32, channel: Option<&str>| -> Vec<u8> {
        let schema = apache_avro::Schema::parse_str(schema).unwrap();
        let mut fields = vec![
            ("id".to_string(), Value::Int(i)),
            (
                "payload".to_string(),
                Value::Bytes(format!("p{i}").into_bytes()),
            ),
            (
                "tag".to_string(),
                Value::Fixed(4, format!("t{i:03}").into_bytes()),
            ),
            (
                "amount".to_string(),
                Value::Decimal(apache_avro::Decimal::from(
                    (12345 + i).to_be_bytes().to_vec(),
                )),
            ),
            (
                "kind".to_string(),
                Value::Enum(
                    (i % 2) as u32,
                    ["card", "cash"][(i % 2) as usize].to_string(),
                ),
            ),
            (
                "note".to_string(),
                if i % 2 == 0 {
                    Value::Union(1, Box::new(Value::String(format!("n{i}"))))
                } else {
                    Value::Union(0, Box::new(Value::Null))
                },
            ),
            ("ignored".to_string(), Value::Double(f64::from(i) / 2.0)),
        ];
        if let Some(c) = channel {
            fields.push(("channel".to_string(), Value::String(c.to_string())));
        }
        avro_message(&schema, id, Value::Record(fields))
    };
    send_to_partition_0(
        &brokers,
        &topic,
        &[
            encode(&v1, id1, 0, None),
            encode(&v1, id1, 1, None),
            encode(&v2, id2, 2, Some("app")),
            encode(&v1, id1, 3, None),
        ],
    );

    let declared = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("payload", DataType::Binary, true),
        Field::new("tag", DataType::Binary, true),
        Field::new("amount", DataType::Decimal128(10, 2), true),
        Field::new("kind", DataType::Utf8, true),
        Field::new("note", DataType::Utf8, true),
        Field::new("channel", DataType::Utf8, true),
    ]));
    let mut source = avro_source(&brokers, &topic, &registry.url, declared);
    assert_eq!(
        text_rows(&read_rows(source.as_mut(), 4)),
        vec![
            vec!["0", "p0", "t000", "123.45", "card", "n0", "NULL"],
            vec!["1", "p1", "t001", "123.46", "cash", "NULL", "NULL"],
            vec!["2", "p2", "t002", "123.47", "card", "n2", "app"],
            vec!["3", "p3", "t003", "123.48", "cash", "NULL", "NULL"],
        ]
    );
    assert_eq!(source.metrics().bad_records, 0);

    // Without declared columns the registry's latest version supplies them, bytes and
    // decimals included.
    let discovered = create_source(
        "KAFKA",
        &avro_options(&brokers, &topic, &registry.url, &[]),
        None,
        Arc::new(Schema::empty()),
    )
    .unwrap();
    let schema = discovered.schema();
    assert_eq!(
        schema.field_with_name("amount").unwrap().data_type(),
        &DataType::Decimal128(10, 2)
    );
    assert_eq!(
        schema.field_with_name("payload").unwrap().data_type(),
        &DataType::Binary
    );
}

/// A field the direct decoding cannot cast to its declared type (a union of two non-null
/// types, declared VARCHAR) is read through Avro values instead: the branch's value.
#[test]
fn avro_fields_without_a_direct_mapping_are_read_through_avro_values() {
    use apache_avro::types::Value;
    let Some(brokers) = brokers() else { return };
    let registry = registry::TestRegistry::start(None);
    let topic = topic(&brokers, "avro-union", 1);
    let text = r#"{"type":"record","name":"r","fields":[{"name":"v","type":["string","long"]}]}"#;
    let id = registry.register(&format!("{topic}-value"), text) as u32;
    let schema = apache_avro::Schema::parse_str(text).unwrap();
    let messages: Vec<Vec<u8>> = [
        Value::Union(0, Box::new(Value::String("alpha".to_string()))),
        Value::Union(1, Box::new(Value::Long(42))),
    ]
    .into_iter()
    .map(|v| avro_message(&schema, id, Value::Record(vec![("v".to_string(), v)])))
    .collect();
    send_to_partition_0(&brokers, &topic, &messages);
    let mut source = avro_source(
        &brokers,
        &topic,
        &registry.url,
        Arc::new(Schema::new(vec![Field::new("v", DataType::Utf8, true)])),
    );
    assert_eq!(
        text_rows(&read_rows(source.as_mut(), 2)),
        vec![vec!["alpha"], vec!["42"]]
    );
}

/// The Avro sink writes BYTES and DECIMAL columns (as `bytes` and `decimal`), and the source
/// reads them back.
#[test]
fn avro_bytes_and_decimal_columns_round_trip() {
    use arrow::array::{BinaryArray, Decimal128Array};
    let Some(brokers) = brokers() else { return };
    let registry = registry::TestRegistry::start(None);
    let topic = topic(&brokers, "avro-binary", 1);
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("blob", DataType::Binary, true),
        Field::new("price", DataType::Decimal128(12, 3), true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from(vec![1, 2, 3])) as ArrayRef,
            Arc::new(BinaryArray::from(vec![
                Some(&b"\x00\xffraw"[..]),
                None,
                Some(&b""[..]),
            ])),
            Arc::new(
                Decimal128Array::from(vec![Some(1_234_567), Some(-5), None])
                    .with_precision_and_scale(12, 3)
                    .unwrap(),
            ),
        ],
    )
    .unwrap();
    let mut sink = create_sink(
        "KAFKA",
        &avro_options(&brokers, &topic, &registry.url, &[]),
        None,
        schema.clone(),
    )
    .unwrap();
    sink.write_batch(&batch).unwrap();
    sink.close().unwrap();
    let mut source = avro_source(&brokers, &topic, &registry.url, schema);
    let read = read_rows(source.as_mut(), 3);
    let read = arrow::compute::concat_batches(&read[0].schema(), &read).unwrap();
    assert_eq!(read, batch);
}

/// A frame without a record and a message holding two records are bad messages (skipped
/// and counted), and never shift the good messages' rows against their offsets. A nested
/// record whose fields differ from the declared struct's is matched by field name.
#[test]
fn avro_messages_map_to_one_row_each_and_nested_fields_by_name() {
    use apache_avro::types::Value;
    let Some(brokers) = brokers() else { return };
    let registry = registry::TestRegistry::start(None);
    let topic = topic(&brokers, "avro-frames", 1);
    let text = r#"{"type":"record","name":"r","fields":[
        {"name":"id","type":"long"},
        {"name":"addr","type":{"type":"record","name":"a","fields":[
            {"name":"street","type":"string"},{"name":"city","type":"string"}]}}]}"#;
    let id = registry.register(&format!("{topic}-value"), text) as u32;
    let schema = apache_avro::Schema::parse_str(text).unwrap();
    let record = |i: i64| {
        let addr = Value::Record(vec![
            ("street".to_string(), Value::String(format!("s{i}"))),
            ("city".to_string(), Value::String(format!("c{i}"))),
        ]);
        avro_message(
            &schema,
            id,
            Value::Record(vec![
                ("id".to_string(), Value::Long(i)),
                ("addr".to_string(), addr),
            ]),
        )
    };
    let mut prefix_only = vec![0u8];
    prefix_only.extend_from_slice(&id.to_be_bytes());
    let mut two_records = record(98);
    two_records.extend(record(99));
    send_to_partition_0(
        &brokers,
        &topic,
        &[record(0), prefix_only, record(1), two_records, record(2)],
    );
    let declared = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new(
            "addr",
            DataType::Struct(
                vec![
                    Field::new("city", DataType::Utf8, true),
                    Field::new("zip", DataType::Utf8, true),
                ]
                .into(),
            ),
            true,
        ),
        Field::new("_offset", DataType::Int64, false),
    ]));
    let mut source = create_source(
        "KAFKA",
        &avro_options(
            &brokers,
            &topic,
            &registry.url,
            &[("startup.mode", "earliest"), ("error.policy", "skip")],
        ),
        None,
        declared,
    )
    .unwrap();
    let rows = read_rows(source.as_mut(), 3);
    let text = arrow::util::pretty::pretty_format_batches(&rows)
        .unwrap()
        .to_string();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("| "))
        .skip(1)
        .collect();
    assert_eq!(
        lines,
        vec![
            "| 0  | {city: c0, zip: } | 0       |",
            "| 1  | {city: c1, zip: } | 2       |",
            "| 2  | {city: c2, zip: } | 4       |",
        ],
        "{text}"
    );
    assert_eq!(source.metrics().bad_records, 2);
}
