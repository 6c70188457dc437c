//! `laminar-bench kafka`: bids in a Kafka topic (JSON, or Avro with `--format avro`) →
//! `FROM KAFKA` source (per-partition watermarks) → 10 s tumbling COUNT/MAX/SUM per auction
//! → `INTO KAFKA` sink in the same format, against a running broker (`--brokers`, default
//! `$LAMINAR_TEST_KAFKA_BROKERS` or `127.0.0.1:9092`). The input is produced first (its
//! rate is reported too); the timed part is the pipeline consuming every message and
//! writing the window results. Avro runs against an in-process Schema Registry (the one the
//! tests use).
//!
//! `laminar-bench kafka-latency`: messages carrying their send time are produced at a fixed
//! rate; the pipeline copies them to an output topic through the Kafka sink (exactly-once by
//! default, with periodic checkpoints); a read_committed consumer measures send-to-visible
//! latency.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use laminar_bench::block_on;
use laminar_db::LaminarDB;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};

use super::Report;

/// The broker, the input topic's partitions and the source's extra options of both Kafka
/// benchmarks.
#[derive(clap::Args, Debug)]
pub(crate) struct KafkaInput {
    /// Partitions of the input topic.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Broker address (default `$LAMINAR_TEST_KAFKA_BROKERS`, else 127.0.0.1:9092).
    #[arg(long)]
    brokers: Option<String>,
    /// Extra source options, e.g. `max.poll.records = '8192'`.
    #[arg(long, default_value = "")]
    source_options: String,
}

impl KafkaInput {
    fn brokers(&self) -> String {
        self.brokers
            .clone()
            .or_else(|| std::env::var("LAMINAR_TEST_KAFKA_BROKERS").ok())
            .unwrap_or_else(|| "127.0.0.1:9092".to_string())
    }

    /// The extra source options, to append to an option list.
    fn extra_options(&self) -> String {
        if self.source_options.is_empty() {
            String::new()
        } else {
            format!(", {}", self.source_options)
        }
    }
}

#[derive(clap::Args, Debug)]
pub(crate) struct KafkaArgs {
    /// Bids produced and consumed.
    #[arg(long, default_value_t = 2_000_000)]
    events: u64,
    #[command(flatten)]
    input: KafkaInput,
    /// Message format of input and output: `json` or `avro`.
    #[arg(long, default_value = "json")]
    format: String,
}

#[path = "../../laminar-connectors/tests/support/registry.rs"]
#[allow(dead_code)]
mod registry;

const BID_SCHEMA: &str = r#"{"type":"record","name":"bid","fields":[
    {"name":"auction","type":"long"},{"name":"bidder","type":"long"},
    {"name":"price","type":"long"},{"name":"ts","type":"long"}]}"#;

fn create_topic(brokers: &str, topic: &str, partitions: i32) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let results = block_on(admin.create_topics(
        &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
        &AdminOptions::new(),
    ))?;
    for r in results {
        r.map_err(|(t, e)| anyhow::anyhow!("creating topic {t}: {e}"))?;
    }
    Ok(())
}

pub(crate) fn run(args: &KafkaArgs) -> Result<Report> {
    let brokers = args.input.brokers();
    let avro = match args.format.as_str() {
        "json" => false,
        "avro" => true,
        other => bail!("--format {other}: expected json or avro"),
    };
    let mut r = Report::default();
    r.text(
        "workload",
        if avro {
            "kafka avro -> tumble -> kafka avro"
        } else {
            "kafka json -> tumble -> kafka json"
        },
    );
    r.text("build", super::build_profile());
    r.int("events", args.events, "");
    r.int("partitions", args.input.partitions as u64, "");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    let input = format!("bench-bids-{nanos}");
    let output = format!("bench-counts-{nanos}");
    create_topic(&brokers, &input, args.input.partitions)?;
    create_topic(&brokers, &output, 1)?;

    // Avro: the registry, the bid schema registered under the input's subject.
    let registry = avro.then(|| registry::TestRegistry::start(None));
    let avro_writer = match &registry {
        Some(reg) => {
            let id = reg.register(&format!("{input}-value"), BID_SCHEMA) as u32;
            let schema = apache_avro::Schema::parse_str(BID_SCHEMA)?;
            Some((id, schema))
        }
        None => None,
    };
    let format_options = match &registry {
        Some(reg) => format!(", format = 'avro', schema.registry.url = '{}'", reg.url),
        None => String::new(),
    };
    let mut encoded: Vec<u8> = Vec::new();

    // Input: 100 bids per millisecond of event time (2 M bids span 20 s: two 10 s windows
    // close), auction = i % 10,000, partitions round-robin.
    let producer: ThreadedProducer<_> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let started = Instant::now();
    let mut payload = String::new();
    for i in 0..args.events {
        payload.clear();
        use std::fmt::Write as _;
        let _ = write!(
            payload,
            r#"{{"auction":{},"bidder":{},"price":{},"ts":{}}}"#,
            i % 10_000,
            i % 7919,
            (i * 31) % 10_000,
            i / 100
        );
        let bytes: &[u8] = match &avro_writer {
            Some((id, schema)) => {
                use apache_avro::types::Value;
                encoded.clear();
                encoded.push(0);
                encoded.extend_from_slice(&id.to_be_bytes());
                let value = Value::Record(vec![
                    ("auction".into(), Value::Long((i % 10_000) as i64)),
                    ("bidder".into(), Value::Long((i % 7919) as i64)),
                    ("price".into(), Value::Long(((i * 31) % 10_000) as i64)),
                    ("ts".into(), Value::Long((i / 100) as i64)),
                ]);
                apache_avro::writer::datum::GenericDatumWriter::builder(schema)
                    .build()?
                    .write_value(&mut encoded, value)?;
                &encoded
            }
            None => payload.as_bytes(),
        };
        let mut record = BaseRecord::<(), [u8]>::to(&input)
            .payload(bytes)
            .partition((i % args.input.partitions as u64) as i32);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    std::thread::sleep(Duration::from_millis(1));
                    record = back;
                }
            }
        }
    }
    producer.flush(Duration::from_secs(300))?;
    let produce = started.elapsed();
    r.float(
        "produce_events_per_second",
        args.events as f64 / produce.as_secs_f64(),
        "events/s (librdkafka producer alone, for scale)",
    );

    let db = LaminarDB::builder().workers(1).build_sync()?;
    block_on(async {
        db.execute(&format!(
            "CREATE SOURCE bids (auction BIGINT, bidder BIGINT, price BIGINT, ts BIGINT, _partition INT, \
             WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) \
             FROM KAFKA (bootstrap.servers = '{brokers}', topic = '{input}', startup.mode = 'earliest'{format_options}{})",
            args.input.extra_options()
        ))
        .await?;
        db.execute(
            "CREATE STREAM q AS SELECT auction, tumble(ts, INTERVAL '10' SECOND) AS w, COUNT(*) AS n, \
             MAX(price) AS hi, SUM(price) AS total FROM bids \
             GROUP BY auction, tumble(ts, INTERVAL '10' SECOND) EMIT ON WINDOW CLOSE",
        )
        .await?;
        db.execute(&format!(
            "CREATE SINK out FROM q INTO KAFKA (bootstrap.servers = '{brokers}', topic = '{output}'{format_options})"
        ))
        .await?;
        db.start().await?;
        anyhow::Ok(())
    })?;
    let started = Instant::now();
    loop {
        let read = db.source_metrics("bids")?.total_events;
        if read >= args.events {
            break;
        }
        if !db.failures().is_empty() {
            bail!("pipeline failed: {:?}", db.failures());
        }
        if started.elapsed() > Duration::from_secs(1800) {
            bail!("only {read} of {} events consumed in 30 min", args.events);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    if !db.wait_idle(Duration::from_secs(600)) {
        bail!("the pipeline did not drain");
    }
    let elapsed = started.elapsed();
    let stream = db.stream_metrics("q").context("stream metrics")?;
    let sink = db.sink_metrics("out").context("sink metrics")?;
    db.shutdown_sync();
    r.float(
        "pipeline_events_per_second",
        args.events as f64 / elapsed.as_secs_f64(),
        "events/s (consume + decode + aggregate + produce results)",
    );
    r.float("pipeline_seconds", elapsed.as_secs_f64(), "s");
    r.int("late_rows", stream.late_total, "rows");
    r.int("window_rows_written", sink.rows_in, "rows");
    Ok(r)
}

#[derive(clap::Args, Debug)]
pub(crate) struct KafkaLatencyArgs {
    /// Messages per second offered to the input topic.
    #[arg(long, default_value_t = 50_000)]
    rate: u64,
    /// Seconds of measurement (after 5 s of warm-up).
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Checkpoint interval in milliseconds.
    #[arg(long, default_value_t = 1000)]
    checkpoint_ms: u64,
    /// Sink delivery guarantee: `exactly-once` or `at-least-once`.
    #[arg(long, default_value = "exactly-once")]
    guarantee: String,
    #[command(flatten)]
    input: KafkaInput,
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

pub(crate) fn latency(args: &KafkaLatencyArgs) -> Result<Report> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    let brokers = args.input.brokers();
    let mut r = Report::default();
    r.text("workload", "kafka json -> copy -> kafka json, fixed rate");
    r.text("build", super::build_profile());
    r.text("guarantee", &args.guarantee);
    r.int("offered_rate", args.rate, "events/s");
    r.int("checkpoint_interval", args.checkpoint_ms, "ms");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    let input = format!("bench-lat-in-{nanos}");
    let output = format!("bench-lat-out-{nanos}");
    create_topic(&brokers, &input, args.input.partitions)?;
    create_topic(&brokers, &output, 1)?;
    let dir = std::env::temp_dir().join(format!("laminar-kafka-latency-{nanos}"));
    let db = LaminarDB::builder()
        .workers(1)
        .storage_dir(&dir)
        .checkpoint_interval(Some(Duration::from_millis(args.checkpoint_ms)))?
        .build_sync()?;
    block_on(async {
        db.execute(&format!(
            "CREATE SOURCE events (id BIGINT, sent_us BIGINT) \
             FROM KAFKA (bootstrap.servers = '{brokers}', topic = '{input}', startup.mode = 'earliest', \
             kafka.fetch.wait.max.ms = '5'{})",
            args.input.extra_options()
        ))
        .await?;
        db.execute(&format!(
            "CREATE SINK out FROM events INTO KAFKA (bootstrap.servers = '{brokers}', topic = '{output}', \
             delivery.guarantee = '{}', kafka.linger.ms = '1')",
            args.guarantee
        ))
        .await?;
        db.start().await?;
        anyhow::Ok(())
    })?;

    // A read_committed consumer of the output: latency = visible time - send time.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", format!("bench-lat-{nanos}"))
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "5")
        .set("fetch.queue.backoff.ms", "1")
        .create()?;
    let mut list = rdkafka::TopicPartitionList::new();
    list.add_partition_offset(&output, 0, rdkafka::Offset::Beginning)?;
    consumer.assign(&list)?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut seen: Vec<(i64, i64)> = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(10)) {
                    let now = now_us();
                    let text = std::str::from_utf8(m.payload().unwrap_or_default()).unwrap_or("");
                    let field = |name: &str| -> Option<i64> {
                        text.split(&format!("\"{name}\":"))
                            .nth(1)?
                            .split([',', '}'])
                            .next()?
                            .parse()
                            .ok()
                    };
                    if let (Some(id), Some(sent)) = (field("id"), field("sent_us")) {
                        seen.push((id, now - sent));
                    }
                }
            }
            seen
        })
    };

    let producer: ThreadedProducer<_> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "1")
        .create()?;
    let warmup = 5;
    let total = args.rate * (warmup + args.seconds);
    let started = Instant::now();
    let tick = Duration::from_millis(5);
    let per_tick = (args.rate / 200).max(1);
    let mut id = 0u64;
    let mut next = started;
    while id < total {
        for _ in 0..per_tick.min(total - id) {
            let payload = format!(r#"{{"id":{id},"sent_us":{}}}"#, now_us());
            let mut record = BaseRecord::<(), str>::to(&input)
                .payload(payload.as_str())
                .partition((id % args.input.partitions as u64) as i32);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((_, back)) => {
                        std::thread::sleep(Duration::from_micros(200));
                        record = back;
                    }
                }
            }
            id += 1;
        }
        next += tick;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    producer.flush(Duration::from_secs(60))?;
    let offered = total as f64 / started.elapsed().as_secs_f64();
    // Let the last checkpoints commit what was sent (or, without checkpoints in reach,
    // the at-least-once sink deliver it).
    std::thread::sleep(Duration::from_millis(
        (3 * args.checkpoint_ms).min(10_000) + 2000,
    ));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))?;
    if !db.failures().is_empty() {
        bail!("pipeline failed: {:?}", db.failures());
    }
    let stats = db.checkpoint_stats();
    let pauses = db.source_metrics("events")?.connector_pauses;
    db.shutdown_sync();
    let _ = std::fs::remove_dir_all(&dir);

    let mut distinct: Vec<i64> = seen.iter().map(|(id, _)| *id).collect();
    distinct.sort_unstable();
    distinct.dedup();
    let warm_from = (args.rate * warmup) as i64;
    let mut latencies: Vec<i64> = seen
        .iter()
        .filter(|(id, _)| *id >= warm_from)
        .map(|(_, l)| *l)
        .collect();
    latencies.sort_unstable();
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return f64::NAN;
        }
        latencies[((latencies.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0
    };
    r.float("achieved_offered_rate", offered, "events/s");
    r.int("messages_sent", total, "");
    r.int("messages_seen", seen.len() as u64, "");
    r.int("distinct_ids_seen", distinct.len() as u64, "");
    r.float("latency_p50", pct(0.5), "ms");
    r.float("latency_p99", pct(0.99), "ms");
    r.float("latency_max", pct(1.0), "ms");
    r.int("source_partition_pauses", pauses, "");
    if let Some(stats) = stats {
        r.int("checkpoints_completed", stats.completed, "");
        r.int("checkpoints_failed", stats.failed, "");
    }
    Ok(r)
}
