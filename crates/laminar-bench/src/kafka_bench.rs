//! `laminar-bench kafka`: JSON bids in a Kafka topic → `FROM KAFKA` source (per-partition
//! watermarks) → 10 s tumbling COUNT/MAX/SUM per auction → `INTO KAFKA` JSON sink, against
//! a running broker (`--brokers`, default `$LAMINAR_TEST_KAFKA_BROKERS` or
//! `127.0.0.1:9092`). The input is produced first (its rate is reported too); the timed part
//! is the pipeline consuming every message and writing the window results.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use laminar_bench::block_on;
use laminar_db::LaminarDB;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};

use super::Report;

#[derive(clap::Args, Debug)]
pub(crate) struct KafkaArgs {
    /// Bids produced and consumed.
    #[arg(long, default_value_t = 2_000_000)]
    events: u64,
    /// Partitions of the input topic.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Broker address.
    #[arg(long)]
    brokers: Option<String>,
    /// Extra source options, e.g. `kafka.fetch.wait.max.ms = '10'`.
    #[arg(long, default_value = "")]
    source_options: String,
}

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
    let brokers = args
        .brokers
        .clone()
        .or_else(|| std::env::var("LAMINAR_TEST_KAFKA_BROKERS").ok())
        .unwrap_or_else(|| "127.0.0.1:9092".to_string());
    let mut r = Report::default();
    r.text("workload", "kafka json -> tumble -> kafka json");
    r.text("build", super::build_profile());
    r.int("events", args.events, "");
    r.int("partitions", args.partitions as u64, "");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    let input = format!("bench-bids-{nanos}");
    let output = format!("bench-counts-{nanos}");
    create_topic(&brokers, &input, args.partitions)?;
    create_topic(&brokers, &output, 1)?;

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
        let mut record = BaseRecord::<(), str>::to(&input)
            .payload(payload.as_str())
            .partition((i % args.partitions as u64) as i32);
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
             FROM KAFKA (bootstrap.servers = '{brokers}', topic = '{input}', startup.mode = 'earliest'{}{})",
            if args.source_options.is_empty() { "" } else { ", " },
            args.source_options
        ))
        .await?;
        db.execute(
            "CREATE STREAM q AS SELECT auction, tumble(ts, INTERVAL '10' SECOND) AS w, COUNT(*) AS n, \
             MAX(price) AS hi, SUM(price) AS total FROM bids \
             GROUP BY auction, tumble(ts, INTERVAL '10' SECOND) EMIT ON WINDOW CLOSE",
        )
        .await?;
        db.execute(&format!(
            "CREATE SINK out FROM q INTO KAFKA (bootstrap.servers = '{brokers}', topic = '{output}')"
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
