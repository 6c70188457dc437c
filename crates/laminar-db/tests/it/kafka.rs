//! Kafka end to end through SQL, against the real broker `scripts/services.sh` starts
//! (`LAMINAR_TEST_KAFKA_BROKERS`): a pipeline writes rows `INTO KAFKA`, another reads them
//! `FROM KAFKA` into a windowed aggregation, and a durable reader resumes from its
//! checkpointed offsets after a crash, reading nothing twice.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use laminar_db::LaminarDB;

use crate::util::rows;

#[path = "../../../laminar-connectors/tests/support/kafka_test.rs"]
mod kafka_test;
use kafka_test::brokers;

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{name}-{}-{nanos}", std::process::id())
}

/// Creates `topic` with `partitions` partitions.
fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        rdkafka::config::ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create()
            .unwrap();
    let created = block_on(admin.create_topics(
        &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
        &AdminOptions::new(),
    ))
    .unwrap();
    for result in created {
        result.unwrap();
    }
}

/// Writes the bids `ids` (auction = id % 4, ts = id * 100 ms) whose auction is in
/// `auctions` as JSON messages, auction `a` into partition `a`.
fn produce_to_partitions(brokers: &str, topic: &str, ids: std::ops::Range<i64>, auctions: &[i64]) {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let producer: BaseProducer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    for id in ids {
        let auction = id % 4;
        if !auctions.contains(&auction) {
            continue;
        }
        let payload = format!(
            r#"{{"id": {id}, "auction": {auction}, "ts": {}}}"#,
            id * 100
        );
        let mut record = BaseRecord::<(), str>::to(topic)
            .payload(&payload)
            .partition(auction as i32);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    back,
                )) => {
                    producer.poll(Duration::from_millis(10));
                    record = back;
                }
                Err((e, _)) => panic!("{e}"),
            }
        }
    }
    producer.flush(Duration::from_secs(10)).unwrap();
}

/// Writes bids `ids` (ts = id * 100 ms) into `topic` through an `INTO KAFKA` sink.
fn produce(brokers: &str, topic: &str, ids: std::ops::Range<i64>) {
    let db = LaminarDB::open().unwrap();
    block_on(async {
        db.execute("CREATE SOURCE bids (id BIGINT, auction BIGINT, ts BIGINT)")
            .await
            .unwrap();
        db.execute(&format!(
            "CREATE SINK out FROM bids INTO KAFKA (bootstrap.servers = '{brokers}', topic = '{topic}', key = 'auction')"
        ))
        .await
        .unwrap();
        db.start().await.unwrap();
    });
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("auction", DataType::Int64, true),
        Field::new("ts", DataType::Int64, true),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from_iter_values(ids.clone())) as ArrayRef,
            Arc::new(Int64Array::from_iter_values(ids.clone().map(|i| i % 4))),
            Arc::new(Int64Array::from_iter_values(ids.map(|i| i * 100))),
        ],
    )
    .unwrap();
    db.source_untyped("bids")
        .unwrap()
        .push_arrow(batch)
        .unwrap();
    assert!(db.wait_idle(Duration::from_secs(30)));
    db.shutdown_sync();
    assert!(db.failures().is_empty(), "{:?}", db.failures());
}

const READER: &str = "CREATE SOURCE k (id BIGINT, auction BIGINT, ts BIGINT, _partition INT, WATERMARK FOR ts AS ts) FROM KAFKA (bootstrap.servers = '${B}', topic = '${T}', startup.mode = 'earliest', watermark.idle_timeout = '1s')";

fn reader(brokers: &str, topic: &str, dir: Option<&Path>) -> LaminarDB {
    let mut builder = LaminarDB::builder().workers(1);
    if let Some(dir) = dir {
        builder = builder.storage_dir(dir).checkpoint_interval(None).unwrap();
    }
    let db = builder.build_sync().unwrap();
    block_on(async {
        db.execute(&READER.replace("${B}", brokers).replace("${T}", topic))
            .await
            .unwrap();
        db.execute("CREATE STREAM ids AS SELECT id, auction FROM k")
            .await
            .unwrap();
    });
    db
}

/// Every id the subscription delivers within `wait`, until `expected` arrived.
fn collect_ids(sub: &mut laminar_db::ArrowSubscription, expected: usize) -> Vec<i64> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got = Vec::new();
    while got.len() < expected && Instant::now() < deadline {
        match sub.recv_timeout(Duration::from_millis(100)) {
            Ok(Some(batch)) => {
                for row in rows(&[batch]) {
                    got.push(row[0].parse::<i64>().unwrap());
                }
            }
            _ => continue,
        }
    }
    // Anything beyond the expected rows would be a duplicate: give it a moment to show.
    std::thread::sleep(Duration::from_millis(300));
    while let Some(batch) = sub.poll() {
        for row in rows(&[batch]) {
            got.push(row[0].parse::<i64>().unwrap());
        }
    }
    got.sort_unstable();
    got
}

#[test]
fn kafka_into_a_windowed_aggregation_and_back() {
    let Some(brokers) = brokers() else { return };
    let input = unique("bids");
    let output = unique("counts");
    // Four partitions, auction a's bids in partition a. Partition 0 is produced and read
    // first, the others afterwards with the same event times: with one watermark for the
    // whole source, their rows would be late. With `_partition` declared the source keeps
    // one watermark per partition and waits for every partition to deliver (or go idle,
    // after 10 s here), so nothing is late.
    create_topic(&brokers, &input, 4);
    produce_to_partitions(&brokers, &input, 0..200, &[0]);

    let db = LaminarDB::builder().workers(1).build_sync().unwrap();
    block_on(async {
        db.execute(
            &READER
                .replace("${B}", &brokers)
                .replace("${T}", &input)
                .replace("'1s'", "'10s'"),
        )
        .await
        .unwrap();
        db.execute("CREATE STREAM counts AS SELECT auction, tumble(ts, INTERVAL '5' SECOND) AS w, COUNT(*) AS n FROM k GROUP BY auction, tumble(ts, INTERVAL '5' SECOND) EMIT ON WINDOW CLOSE")
            .await
            .unwrap();
        db.execute(&format!(
            "CREATE SINK back FROM counts INTO KAFKA (bootstrap.servers = '{brokers}', topic = '{output}')"
        ))
        .await
        .unwrap();
        db.start().await.unwrap();
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while db.source_metrics("k").unwrap().total_events < 50 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(db.source_metrics("k").unwrap().total_events, 50);
    produce_to_partitions(&brokers, &input, 0..200, &[1, 2, 3]);
    let mut sub = db.subscribe_arrow("counts").unwrap();
    // 200 bids over 20 s of event time: windows [0,5) .. [15,20) close once the watermark
    // passes them (the last window stays open: the input is unbounded).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut counted = 0i64;
    let mut windows = 0;
    while windows < 12 && Instant::now() < deadline {
        if let Ok(Some(batch)) = sub.recv_timeout(Duration::from_millis(100)) {
            for row in rows(&[batch]) {
                counted += row[2].parse::<i64>().unwrap();
                windows += 1;
            }
        }
    }
    assert_eq!(windows, 12, "3 closed windows x 4 auctions");
    assert_eq!(counted, 150, "bids 0..150 fall in the three closed windows");
    assert_eq!(db.source_metrics("k").unwrap().total_events, 200);
    assert_eq!(
        db.stream_metrics("counts").unwrap().late_total,
        0,
        "per-partition watermarks: no row is late"
    );
    db.shutdown_sync();
    assert!(db.failures().is_empty(), "{:?}", db.failures());

    // The window results reached the output topic, one JSON message per row.
    let check = LaminarDB::open().unwrap();
    block_on(async {
        check
            .execute(&format!(
                "CREATE SOURCE results (auction BIGINT, w TIMESTAMP, n BIGINT) FROM KAFKA (bootstrap.servers = '{brokers}', topic = '{output}', startup.mode = 'earliest')"
            ))
            .await
            .unwrap();
        check.start().await.unwrap();
    });
    let mut results = check.subscribe_arrow("results").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut read = Vec::new();
    while read.len() < 12 && Instant::now() < deadline {
        if let Ok(Some(batch)) = results.recv_timeout(Duration::from_millis(100)) {
            read.extend(rows(&[batch]));
        }
    }
    assert_eq!(read.len(), 12, "{read:?}");
    let total: i64 = read.iter().map(|r| r[2].parse::<i64>().unwrap()).sum();
    assert_eq!(total, 150);
    check.shutdown_sync();
}

#[test]
fn a_durable_kafka_reader_resumes_from_its_checkpointed_offsets() {
    let Some(brokers) = brokers() else { return };
    let topic = unique("resume");
    create_topic(&brokers, &topic, 3);
    produce(&brokers, &topic, 0..50);
    let dir = tempfile::tempdir().unwrap();

    let db = reader(&brokers, &topic, Some(dir.path()));
    let mut sub = db.subscribe_arrow("ids").unwrap();
    block_on(db.start()).unwrap();
    assert_eq!(collect_ids(&mut sub, 50), (0..50).collect::<Vec<_>>());
    assert!(db.checkpoint().unwrap().is_some());
    // The checkpointed offsets were committed to the consumer group (for lag monitors).
    let committed = || -> i64 {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let consumer: BaseConsumer = rdkafka::config::ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", "laminardb")
            .create()
            .unwrap();
        let mut list = rdkafka::TopicPartitionList::new();
        for p in 0..3 {
            list.add_partition(&topic, p);
        }
        consumer
            .committed_offsets(list, Duration::from_secs(10))
            .unwrap()
            .elements()
            .iter()
            .map(|e| match e.offset() {
                rdkafka::Offset::Offset(o) => o,
                _ => 0,
            })
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while committed() != 50 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(committed(), 50, "offsets of all 50 messages committed");
    // Crash: no shutdown, no final checkpoint.
    std::mem::forget(sub);
    std::mem::forget(db);

    produce(&brokers, &topic, 50..80);
    let db = reader(&brokers, &topic, Some(dir.path()));
    assert!(db.checkpoint_stats().unwrap().recovered_epoch.is_some());
    let mut sub = db.subscribe_arrow("ids").unwrap();
    block_on(db.start()).unwrap();
    assert_eq!(
        collect_ids(&mut sub, 30),
        (50..80).collect::<Vec<_>>(),
        "only the messages after the checkpoint are read again"
    );
    db.shutdown_sync();
    assert!(db.failures().is_empty(), "{:?}", db.failures());
}

#[test]
fn kafka_options_are_checked_at_create() {
    let db = LaminarDB::open().unwrap();
    let e =
        block_on(db.execute(
            "CREATE SOURCE k (id BIGINT) FROM KAFKA (bootstrap.servers = 'x:1', topc = 't')",
        ))
        .unwrap_err();
    assert!(e.to_string().contains("did you mean 'topic'"), "{e}");
    let e = block_on(db.execute(
        "CREATE SOURCE k (id BIGINT) FROM KAFKA (bootstrap.servers = 'x:1', topic = 't', format = 'protobuf')",
    ))
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("expected json, csv, raw, debezium or avro"),
        "{e}"
    );
    let e = block_on(db.execute(
        "CREATE SOURCE k (id BIGINT) FROM KAFKA (bootstrap.servers = 'x:1', topic = 't') FORMAT AVRO",
    ))
    .unwrap_err();
    assert!(e.to_string().contains("schema.registry.url"), "{e}");
}

/// SASL credentials passed through to librdkafka never show: not in errors, not in
/// DESCRIBE, not in EXPLAIN.
#[test]
fn kafka_secrets_never_show() {
    let db = LaminarDB::open().unwrap();
    let secret = "hunter2-very-secret";
    let e = block_on(db.execute(&format!(
        "CREATE SOURCE k (id BIGINT) FROM KAFKA (bootstrap.servers = '127.0.0.1:1', topic = 't', \
         kafka.security.protocol = 'SASL_PLAINTEXT', kafka.sasl.mechanism = 'NOPE', \
         kafka.sasl.username = 'u', kafka.sasl.password = '{secret}')"
    )))
    .unwrap_err()
    .to_string();
    assert!(e.contains("sasl.mechanism") || e.contains("NOPE"), "{e}");
    assert!(!e.contains(secret), "{e}");

    block_on(db.execute(&format!(
        "CREATE SOURCE k (id BIGINT) FROM KAFKA (bootstrap.servers = '127.0.0.1:1', topic = 't', \
         kafka.security.protocol = 'SASL_PLAINTEXT', kafka.sasl.mechanism = 'PLAIN', \
         kafka.sasl.username = 'u', kafka.sasl.password = '{secret}')"
    )))
    .unwrap();
    for statement in ["DESCRIBE EXTENDED k", "EXPLAIN SELECT id FROM k"] {
        let shown = match block_on(db.execute(statement)).unwrap() {
            laminar_db::ExecuteResult::Metadata(b) => {
                arrow::util::pretty::pretty_format_batches(&[b])
                    .unwrap()
                    .to_string()
            }
            other => format!("{other:?}"),
        };
        assert!(!shown.contains(secret), "{statement}: {shown}");
        assert!(
            shown.contains('k') || shown.contains("id"),
            "{statement}: {shown}"
        );
    }
}

/// The exactly-once sink keeps the rows of its open transaction in the checkpoint, and a
/// restart whose commit marker is behind the restored checkpoint (the process stopped
/// between the checkpoint and the commit of its transaction) writes them again. The marker
/// is moved back by hand here to stand for that crash.
#[test]
fn an_exactly_once_kafka_sink_writes_a_lost_transaction_again_after_a_restart() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let Some(brokers) = brokers() else { return };
    let topic = unique("eos-db");
    create_topic(&brokers, &topic, 1);
    let id = unique("eos-db-txn");
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        let db = LaminarDB::builder()
            .workers(1)
            .storage_dir(dir.path())
            .checkpoint_interval(None)
            .unwrap()
            .build_sync()
            .unwrap();
        block_on(db.execute(&format!(
            "CREATE SOURCE s (id BIGINT); \
             CREATE SINK out FROM s INTO KAFKA (bootstrap.servers = '{brokers}', topic = '{topic}', \
             delivery.guarantee = 'exactly-once', transactional.id = '{id}')"
        )))
        .unwrap();
        block_on(db.start()).unwrap();
        db
    };
    let marker = || -> Option<i64> {
        let consumer: BaseConsumer = rdkafka::config::ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", &id)
            .create()
            .unwrap();
        let mut list = rdkafka::TopicPartitionList::new();
        list.add_partition(&topic, 0);
        match consumer
            .committed_offsets(list, Duration::from_secs(10))
            .unwrap()
            .elements()[0]
            .offset()
        {
            rdkafka::Offset::Offset(o) => Some(o),
            _ => None,
        }
    };
    let committed_ids = || committed_output_ids(&brokers, &topic);

    let db = open();
    block_on(db.execute("INSERT INTO s VALUES (0), (1), (2), (3), (4)")).unwrap();
    assert!(db.wait_idle(Duration::from_secs(10)));
    let epoch = db.checkpoint().unwrap().expect("a checkpoint") as i64;
    let deadline = Instant::now() + Duration::from_secs(10);
    while marker() != Some(epoch) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(marker(), Some(epoch));
    assert_eq!(committed_ids(), vec![0, 1, 2, 3, 4]);
    // Crash, and a marker as if the transaction of the checkpoint had not been committed.
    std::mem::forget(db);
    let rewind: BaseConsumer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", &id)
        .create()
        .unwrap();
    let mut back = rdkafka::TopicPartitionList::new();
    back.add_partition_offset(&topic, 0, rdkafka::Offset::Offset(epoch - 1))
        .unwrap();
    rewind
        .commit(&back, rdkafka::consumer::CommitMode::Sync)
        .unwrap();

    let db = open();
    let deadline = Instant::now() + Duration::from_secs(10);
    while marker() != Some(epoch) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        marker(),
        Some(epoch),
        "the recovered transaction is committed"
    );
    assert_eq!(
        committed_ids(),
        vec![0, 0, 1, 1, 2, 2, 3, 3, 4, 4],
        "the checkpoint's rows written again (the marker said they were lost)"
    );
    db.shutdown_sync();
    assert!(db.failures().is_empty(), "{:?}", db.failures());

    // A restart whose marker is current writes nothing again.
    let db = open();
    assert!(db.wait_idle(Duration::from_secs(10)));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(committed_ids().len(), 10);
    db.shutdown_sync();
}

/// An updating aggregation goes out as Debezium changes and comes back in as a changelog
/// source: an aggregation of that changelog ends at the same totals. FILES with
/// `changelog = 'true'` writes the same changes with their `_op`.
#[test]
fn an_updating_aggregation_round_trips_through_kafka_as_debezium_changes() {
    let Some(brokers) = brokers() else { return };
    let topic = unique("totals");
    create_topic(&brokers, &topic, 1);
    let files = tempfile::tempdir().unwrap();
    let db = LaminarDB::builder().workers(1).build_sync().unwrap();
    block_on(async {
        db.execute(&format!(
            "CREATE SOURCE s (k BIGINT, v BIGINT);
             CREATE STREAM totals AS SELECT k, SUM(v) AS total FROM s GROUP BY k;
             CREATE SINK out FROM totals INTO KAFKA (bootstrap.servers = '{brokers}', topic = '{topic}', key = 'k', format = 'debezium');
             CREATE SINK log FROM totals INTO FILES (path = '{}', format = 'csv', changelog = 'true');
             CREATE SOURCE cdc (k BIGINT, total BIGINT, _op VARCHAR)
               FROM KAFKA (bootstrap.servers = '{brokers}', topic = '{topic}', startup.mode = 'earliest', format = 'debezium');
             CREATE STREAM current AS SELECT k, SUM(total) AS total FROM cdc GROUP BY k",
            files.path().display()
        ))
        .await
        .unwrap();
    });
    let mut sub = db.subscribe_arrow("current").unwrap();
    block_on(db.start()).unwrap();
    let mut expected: std::collections::BTreeMap<String, i64> = Default::default();
    for round in 0..5i64 {
        let values: Vec<String> = (0..20i64)
            .map(|i| {
                let (k, v) = (i % 4, round * 100 + i);
                *expected.entry(k.to_string()).or_default() += v;
                format!("({k}, {v})")
            })
            .collect();
        block_on(db.execute(&format!("INSERT INTO s VALUES {}", values.join(", ")))).unwrap();
    }
    // Consolidate the changelog of `current`: the latest row per key.
    let mut current: std::collections::BTreeMap<String, i64> = Default::default();
    let deadline = Instant::now() + Duration::from_secs(20);
    while current != expected && Instant::now() < deadline {
        if let Ok(Some(batch)) = sub.recv_timeout(Duration::from_millis(100)) {
            for row in rows(&[batch]) {
                match row[2].as_str() {
                    "I" | "U+" | "r" => {
                        current.insert(row[0].clone(), row[1].parse().unwrap());
                    }
                    "U-" | "D" => {
                        current.remove(&row[0]);
                    }
                    other => panic!("unexpected _op {other}"),
                }
            }
        }
    }
    assert_eq!(current, expected);
    db.shutdown_sync();
    assert!(db.failures().is_empty(), "{:?}", db.failures());

    // The FILES changelog: every change with its _op; consolidated, the same totals.
    let mut written = std::collections::BTreeMap::<String, i64>::new();
    let mut ops = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(files.path()).unwrap() {
        let path = entry.unwrap().path();
        if !path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("part-")
        {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("k,total,_op"));
        for line in lines {
            let f: Vec<&str> = line.split(',').collect();
            ops.insert(f[2].to_string());
            let weight = if matches!(f[2], "U-" | "D") { -1 } else { 1 };
            *written.entry(f[0].to_string()).or_default() += weight * f[1].parse::<i64>().unwrap();
        }
    }
    assert_eq!(written, expected);
    assert!(ops.contains("U-") && ops.contains("U+"), "{ops:?}");

    // Without a changelog encoding, an updating stream is refused.
    let db = LaminarDB::open().unwrap();
    let e = block_on(db.execute(&format!(
        "CREATE SOURCE s (k BIGINT, v BIGINT);
         CREATE STREAM totals AS SELECT k, SUM(v) AS total FROM s GROUP BY k;
         CREATE SINK out FROM totals INTO KAFKA (bootstrap.servers = '{brokers}', topic = '{topic}')"
    )))
    .unwrap_err()
    .to_string();
    assert!(e.contains("format = 'debezium'"), "{e}");
}

/// The ids of the committed messages of `topic`'s partition 0 (`{"id":N}` values).
fn committed_output_ids(brokers: &str, topic: &str) -> Vec<i64> {
    let log = kafka_test::read_partition(brokers, topic, 0);
    let mut ids: Vec<i64> = log
        .committed
        .iter()
        .map(|r| {
            let text = String::from_utf8(r.value.clone().unwrap()).unwrap();
            text.trim_matches(['{', '}'])
                .split(':')
                .nth(1)
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    ids.sort_unstable();
    ids
}

/// Waits until `topic`'s committed output holds at least `count` messages.
fn wait_for_output(brokers: &str, topic: &str, count: usize, within: Duration) -> Vec<i64> {
    let deadline = Instant::now() + within;
    loop {
        let ids = committed_output_ids(brokers, topic);
        if ids.len() >= count || Instant::now() >= deadline {
            return ids;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Two durable pipelines read one topic in one consumer group and write what they read
/// through exactly-once sinks. The group splits the partitions when the second joins and
/// hands them all back when it leaves; a revoked partition moves only once a checkpoint
/// covers what was read from it, so no message is read by both pipelines and the output
/// holds every message exactly once.
#[test]
fn two_pipelines_in_one_consumer_group_split_the_partitions_and_read_every_message_once() {
    let Some(brokers) = brokers() else { return };
    let input = unique("group-in");
    let output = unique("group-out");
    create_topic(&brokers, &input, 4);
    create_topic(&brokers, &output, 1);
    let group = unique("group");
    produce_to_partitions(&brokers, &input, 0..2000, &[0, 1, 2, 3]);
    let open = |member: &str, dir: &Path| -> LaminarDB {
        let db = LaminarDB::builder()
            .workers(1)
            .storage_dir(dir)
            .checkpoint_interval(Some(Duration::from_millis(300)))
            .unwrap()
            .build_sync()
            .unwrap();
        block_on(db.execute(&format!(
            "CREATE SOURCE k (id BIGINT, auction BIGINT, ts BIGINT) FROM KAFKA (\
               bootstrap.servers = '{brokers}', topic = '{input}', group.id = '{group}', \
               partition.assignment.strategy = 'cooperative-sticky', startup.mode = 'earliest', \
               max.poll.records = '100', \
               kafka.session.timeout.ms = '6000', kafka.heartbeat.interval.ms = '500'); \
             CREATE STREAM ids AS SELECT id FROM k; \
             CREATE SINK out FROM ids INTO KAFKA (bootstrap.servers = '{brokers}', topic = '{output}', \
               delivery.guarantee = 'exactly-once', transactional.id = '{group}-{member}')"
        )))
        .unwrap();
        block_on(db.start()).unwrap();
        db
    };
    let read = |db: &LaminarDB| db.source_metrics("k").unwrap().total_events;
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();

    let a = open("a", dir_a.path());
    let first = wait_for_output(&brokers, &output, 2000, Duration::from_secs(60));
    assert_eq!(first, (0..2000).collect::<Vec<_>>(), "pipeline a alone");

    let b = open("b", dir_b.path());
    // Messages keep coming while b joins and the group moves partitions to it.
    for from in (2000..6000).step_by(100) {
        produce_to_partitions(&brokers, &input, from..from + 100, &[0, 1, 2, 3]);
        std::thread::sleep(Duration::from_millis(250));
    }
    let second = wait_for_output(&brokers, &output, 6000, Duration::from_secs(90));
    assert_eq!(second, (0..6000).collect::<Vec<_>>(), "a and b together");
    let (read_a, read_b) = (read(&a), read(&b));
    assert!(
        read_b > 0,
        "b was given partitions (a read {read_a}, b {read_b})"
    );
    assert!(
        read_a > 2000,
        "a kept partitions (a read {read_a}, b {read_b})"
    );
    assert_eq!(
        read_a + read_b,
        6000,
        "no message read by both pipelines (a read {read_a}, b {read_b})"
    );

    // a leaves: b takes every partition over at a's checkpointed offsets.
    a.shutdown_sync();
    assert!(a.failures().is_empty(), "{:?}", a.failures());
    produce_to_partitions(&brokers, &input, 6000..7000, &[0, 1, 2, 3]);
    let third = wait_for_output(&brokers, &output, 7000, Duration::from_secs(90));
    assert_eq!(third, (0..7000).collect::<Vec<_>>(), "b alone after a left");
    let read_b_after = read(&b);
    assert_eq!(
        read_a + read_b_after,
        7000,
        "b read a's partitions from where a's checkpoint left them"
    );
    b.shutdown_sync();
    assert!(b.failures().is_empty(), "{:?}", b.failures());
}

/// A started pipeline reading `topic` from the beginning in batches of 100 messages into a
/// source queue of 8 batches, and a subscription (4 batches) on its ids that nobody reads
/// yet: the pipeline stalls.
fn small_queue_reader(
    brokers: &str,
    topic: &str,
    extra_options: &str,
) -> (LaminarDB, laminar_db::ArrowSubscription) {
    let db = LaminarDB::builder()
        .workers(1)
        .subscription_buffer(4)
        .build_sync()
        .unwrap();
    block_on(db.execute(&format!(
        "CREATE SOURCE k (id BIGINT, auction BIGINT, ts BIGINT) FROM KAFKA (\
           bootstrap.servers = '{brokers}', topic = '{topic}', startup.mode = 'earliest', \
           max.poll.records = '100'{extra_options}) WITH (buffer_size = 8); \
         CREATE STREAM ids AS SELECT id FROM k"
    )))
    .unwrap();
    let sub = db.subscribe_arrow("ids").unwrap();
    block_on(db.start()).unwrap();
    (db, sub)
}

/// A pipeline that cannot keep up (its subscriber stops reading) fills the source's queue:
/// the Kafka source pauses its partitions instead of buffering in the client, and resumes
/// them when the queue drains; every message still arrives exactly once.
#[test]
fn a_kafka_source_pauses_its_partitions_while_the_pipeline_is_backpressured() {
    let Some(brokers) = brokers() else { return };
    let topic = unique("pause");
    create_topic(&brokers, &topic, 4);
    produce_to_partitions(&brokers, &topic, 0..200_000, &[0, 1, 2, 3]);
    let (db, mut sub) = small_queue_reader(&brokers, &topic, "");
    // Nobody reads: the query stalls, the source's queue fills.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut stalled = db.source_metrics("k").unwrap();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(300));
        let now = db.source_metrics("k").unwrap();
        let steady = now.total_events == stalled.total_events;
        stalled = now;
        if steady && stalled.is_backpressured && stalled.connector_pauses > 0 {
            break;
        }
    }
    assert!(stalled.connector_pauses >= 1, "{stalled:?}");
    assert!(stalled.is_backpressured, "{stalled:?}");
    assert!(stalled.total_events < 200_000, "{stalled:?}");
    // Reading again drains the queue; the partitions resume and everything arrives once.
    assert_eq!(
        collect_ids(&mut sub, 200_000),
        (0..200_000).collect::<Vec<_>>()
    );
    db.shutdown_sync();
    assert!(db.failures().is_empty(), "{:?}", db.failures());
}

/// A partition that never delivers does not hold the watermark forever: after
/// `watermark.idle_timeout` it leaves the minimum and the other partitions' windows close.
#[test]
fn an_idle_partition_stops_holding_back_the_watermark() {
    let Some(brokers) = brokers() else { return };
    let topic = unique("idle");
    create_topic(&brokers, &topic, 2);
    // Only partition 0 gets messages: bids 0, 4, .. 396 (ts = id * 100 ms).
    produce_to_partitions(&brokers, &topic, 0..400, &[0]);
    let db = LaminarDB::builder().workers(1).build_sync().unwrap();
    block_on(async {
        db.execute(&READER.replace("${B}", &brokers).replace("${T}", &topic))
            .await
            .unwrap();
        db.execute("CREATE STREAM counts AS SELECT tumble(ts, INTERVAL '5' SECOND) AS w, COUNT(*) AS n FROM k GROUP BY tumble(ts, INTERVAL '5' SECOND) EMIT ON WINDOW CLOSE")
            .await
            .unwrap();
    });
    let mut sub = db.subscribe_arrow("counts").unwrap();
    block_on(db.start()).unwrap();
    // Window [0, 5 s) closes only once partition 1, which never delivers, counts as idle.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut closed = Vec::new();
    while closed.len() < 7 && Instant::now() < deadline {
        if let Ok(Some(batch)) = sub.recv_timeout(Duration::from_millis(100)) {
            for row in rows(&[batch]) {
                closed.push(row[1].parse::<i64>().unwrap());
            }
        }
    }
    // Bids 0, 4, .. 396 at id * 100 ms: 13 per 5 s window (the last, [35, 40) s, stays open).
    assert_eq!(closed, vec![13, 12, 13, 12, 13, 12, 13]);
    db.shutdown_sync();
    assert!(db.failures().is_empty(), "{:?}", db.failures());
}

/// A group member whose pipeline stalls for longer than `max.poll.interval.ms` keeps its
/// membership (the consumer keeps being polled with its partitions paused): nothing is
/// read twice after the stall.
#[test]
fn a_stalled_group_member_keeps_its_partitions() {
    let Some(brokers) = brokers() else { return };
    let topic = unique("stall");
    create_topic(&brokers, &topic, 2);
    produce_to_partitions(&brokers, &topic, 0..400_000, &[0, 1]);
    let group = unique("stall-group");
    let (db, mut sub) = small_queue_reader(
        &brokers,
        &topic,
        &format!(
            ", group.id = '{group}', partition.assignment.strategy = 'range', \
             kafka.session.timeout.ms = '6000', kafka.heartbeat.interval.ms = '500', \
             kafka.max.poll.interval.ms = '6000'"
        ),
    );
    // Stalled well past max.poll.interval.ms.
    std::thread::sleep(Duration::from_secs(10));
    let stalled = db.source_metrics("k").unwrap();
    assert!(stalled.connector_pauses >= 1, "{stalled:?}");
    assert!(stalled.total_events < 200_000, "{stalled:?}");
    let ids = collect_ids(&mut sub, 200_000);
    let expected: Vec<i64> = (0..400_000).filter(|i| i % 4 < 2).collect();
    assert_eq!(ids.len(), expected.len(), "nothing read twice or lost");
    assert_eq!(ids, expected);
    assert!(db.failures().is_empty(), "{:?}", db.failures());
    db.shutdown_sync();
}
