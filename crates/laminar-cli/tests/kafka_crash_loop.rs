//! Exactly-once through Kafka under crashes: `laminardb run --storage-dir` reads a Kafka
//! topic, and writes a projection and a tumbling-window aggregation to two Kafka topics
//! with `delivery.guarantee = 'exactly-once'`. The process is killed with SIGKILL at random
//! moments (seeded) and rerun; a last run goes on until the output is complete. The
//! committed records of the output topics, read the way a read_committed consumer sees
//! them, must hold every input row exactly once and every window result exactly once,
//! equal to the results computed from the whole input.
//!
//! Needs the broker that `scripts/services.sh` starts (`LAMINAR_TEST_KAFKA_BROKERS`).
//! `LAMINAR_KAFKA_CRASH_ITERATIONS` (default 50) sets the number of kills,
//! `LAMINAR_CRASH_SEED` the seed (printed, so a failure can be replayed).
#![cfg(all(unix, feature = "kafka"))]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

#[path = "../../laminar-connectors/tests/support/kafka_test.rs"]
mod kafka_test;
use kafka_test::brokers;

const INPUT_PARTITIONS: i32 = 4;
const OUTPUT_PARTITIONS: i32 = 2;
const KEYS: i64 = 7;
/// Input rows per kill.
const ROWS_PER_KILL: i64 = 40_000;

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

/// Rows `0..rows` (id = event time in ms; partition `id % 4`, so that event time grows in
/// every partition), then one row per partition far ahead that closes every window.
fn produce_input(brokers: &str, topic: &str, rows: i64) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let closing = rows + 10_000;
    let all = (0..rows)
        .map(|id| (id, id))
        .chain((0..i64::from(INPUT_PARTITIONS)).map(|p| (rows + p, closing)));
    for (id, ts) in all {
        let payload = format!("{{\"id\":{id},\"k\":{},\"ts\":{ts}}}", id % KEYS);
        let partition = (id % i64::from(INPUT_PARTITIONS)) as i32;
        let mut record = BaseRecord::<(), str>::to(topic)
            .payload(&payload)
            .partition(partition);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    producer.poll(Duration::from_millis(5));
                    record = back;
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(60)).unwrap();
}

fn pipeline(brokers: &str, input: &str, copied: &str, counts: &str, run: &str) -> String {
    format!(
        "CREATE SOURCE events (id BIGINT, k BIGINT, ts BIGINT, _partition INT, WATERMARK FOR ts AS ts)\n\
         \x20 FROM KAFKA (bootstrap.servers = '{brokers}', topic = '{input}', startup.mode = 'earliest', group.id = '{run}',\n\
         \x20 kafka.max.partition.fetch.bytes = '16384');\n\
         CREATE STREAM copied AS SELECT id, k FROM events;\n\
         CREATE SINK copied_out FROM copied INTO KAFKA (bootstrap.servers = '{brokers}', topic = '{copied}',\n\
         \x20 delivery.guarantee = 'exactly-once', transactional.id = '{run}-copied');\n\
         CREATE STREAM counts AS SELECT k, tumble(ts, INTERVAL '1' SECOND) AS w, COUNT(*) AS n, SUM(id) AS total\n\
         \x20 FROM events GROUP BY k, tumble(ts, INTERVAL '1' SECOND) EMIT ON WINDOW CLOSE;\n\
         CREATE SINK counts_out FROM counts INTO KAFKA (bootstrap.servers = '{brokers}', topic = '{counts}',\n\
         \x20 delivery.guarantee = 'exactly-once', transactional.id = '{run}-counts');\n"
    )
}

/// The integer fields of a flat JSON object, in order.
fn fields(value: &[u8]) -> Vec<i64> {
    let text = std::str::from_utf8(value).unwrap();
    text.trim_matches(['{', '}'])
        .split(',')
        .map(|f| {
            f.split(':')
                .nth(1)
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("not an integer field: {f} in {text}"))
        })
        .collect()
}

/// Committed records of every partition of `topic`, and the number of records of aborted
/// or still open transactions.
fn read_topic(brokers: &str, topic: &str, partitions: i32) -> (Vec<Vec<i64>>, usize) {
    let mut committed = Vec::new();
    let mut aborted = 0;
    for p in 0..partitions {
        let log = kafka_test::read_partition(brokers, topic, p);
        aborted += log.open.len();
        aborted += log.aborted.len();
        committed.extend(
            log.committed
                .iter()
                .map(|r| fields(r.value.as_deref().expect("a payload"))),
        );
    }
    (committed, aborted)
}

/// The ids among `0..all_rows` that the copied rows hold other than once, with their count.
fn not_once(copies: &[Vec<i64>], all_rows: i64) -> Vec<(usize, u32)> {
    let mut seen = vec![0u32; all_rows as usize];
    for row in copies {
        seen[row[0] as usize] += 1;
    }
    seen.iter()
        .enumerate()
        .filter(|(_, n)| **n != 1)
        .map(|(i, n)| (i, *n))
        .collect()
}

/// Where the records of ids committed other than once are in the log of `topic`.
fn explain(brokers: &str, topic: &str, wrong: &[(usize, u32)]) -> String {
    let wanted: std::collections::HashSet<i64> = wrong.iter().map(|(id, _)| *id as i64).collect();
    let mut text = String::new();
    for p in 0..OUTPUT_PARTITIONS {
        let log = kafka_test::read_partition(brokers, topic, p);
        for (kind, records) in [
            ("committed", &log.committed),
            ("aborted", &log.aborted),
            ("open", &log.open),
        ] {
            let hits: Vec<(i64, Option<(i64, i16)>)> = records
                .iter()
                .filter(|r| wanted.contains(&fields(r.value.as_deref().unwrap())[0]))
                .map(|r| (r.offset, r.producer))
                .collect();
            if let (Some(first), Some(last)) = (hits.first(), hits.last()) {
                text.push_str(&format!(
                    "partition {p}: {} {kind} records, offsets {:?}..{:?}\n",
                    hits.len(),
                    first,
                    last
                ));
            }
        }
    }
    text
}

fn spawn(sql: &Path, state: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_laminardb"))
        .args([
            "run",
            "--storage-dir",
            state.to_str().unwrap(),
            "--checkpoint-interval",
            "100ms",
            sql.to_str().unwrap(),
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Kills `child` and checks what it printed; returns that.
fn kill(mut child: Child) -> String {
    if child.try_wait().unwrap().is_some() {
        let out = child.wait_with_output().unwrap();
        panic!(
            "the pipeline exited by itself: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked"),
        "the pipeline panicked: {stderr}"
    );
    stderr.into_owned()
}

#[test]
fn killed_and_rerun_kafka_pipelines_commit_every_result_exactly_once() {
    let Some(brokers) = brokers() else { return };
    let iterations: usize = std::env::var("LAMINAR_KAFKA_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let seed: u64 = std::env::var("LAMINAR_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("kafka crash loop: {iterations} kills, LAMINAR_CRASH_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let run = format!(
        "crash-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    );
    let (input, copied, counts) = (
        format!("{run}-in"),
        format!("{run}-copied"),
        format!("{run}-counts"),
    );
    create_topic(&brokers, &input, INPUT_PARTITIONS);
    create_topic(&brokers, &copied, OUTPUT_PARTITIONS);
    create_topic(&brokers, &counts, OUTPUT_PARTITIONS);
    let rows = iterations.max(10) as i64 * ROWS_PER_KILL;
    produce_input(&brokers, &input, rows);

    let dir = tempfile::tempdir().unwrap();
    let sql = dir.path().join("pipeline.sql");
    std::fs::write(&sql, pipeline(&brokers, &input, &copied, &counts, &run)).unwrap();
    let state = dir.path().join("state");

    let started = Instant::now();
    for _ in 0..iterations {
        let child = spawn(&sql, &state);
        std::thread::sleep(Duration::from_millis(rng.random_range(100..1000)));
        let printed = kill(child);
        eprint!("{printed}");
    }
    let (before_final, _) = read_topic(&brokers, &copied, OUTPUT_PARTITIONS);

    // Every row, the closing ones included, and every window of the main rows.
    let mut expected: BTreeMap<(i64, i64), (i64, i64)> = BTreeMap::new();
    for id in 0..rows {
        let e = expected
            .entry((id % KEYS, id - id % 1000))
            .or_insert((0, 0));
        e.0 += 1;
        e.1 += id;
    }
    let all_rows = rows + i64::from(INPUT_PARTITIONS);

    // A last run goes on until the output is complete. A run whose output stops growing
    // for 30 s is killed and started again (counted and reported: the restarted run must
    // then complete the output, exactly once, like any other recovery); after three such
    // restarts, or three minutes, the test fails.
    let mut child = spawn(&sql, &state);
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut stalled_restarts = Vec::new();
    let mut progress = (0usize, Instant::now());
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let (copies, uncommitted) = read_topic(&brokers, &copied, OUTPUT_PARTITIONS);
        let (windows, _) = read_topic(&brokers, &counts, OUTPUT_PARTITIONS);
        if copies.len() as i64 >= all_rows && windows.len() >= expected.len() {
            break;
        }
        let done = copies.len() + windows.len();
        if done != progress.0 {
            progress = (done, Instant::now());
        }
        let exited = child.try_wait().unwrap().is_some();
        if exited || Instant::now() >= deadline || stalled_restarts.len() >= 3 {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            let wrong = not_once(&copies, all_rows);
            eprintln!("{}", explain(&brokers, &copied, &wrong));
            panic!(
                "the output is incomplete: {} of {all_rows} rows, {} of {} windows \
                 ({uncommitted} copied records in aborted or open transactions; restarts after stalls: {stalled_restarts:?}); \
                 the final run printed:\n{}",
                copies.len(),
                windows.len(),
                expected.len(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if progress.1.elapsed() >= Duration::from_secs(30) {
            stalled_restarts.push(format!(
                "{} of {all_rows} rows, {} windows, {uncommitted} uncommitted copied records",
                copies.len(),
                windows.len()
            ));
            eprint!("{}", kill(child));
            child = spawn(&sql, &state);
            progress = (done, Instant::now());
        }
    }
    eprint!("{}", kill(child));
    if !stalled_restarts.is_empty() {
        eprintln!(
            "kafka crash loop: the final run stalled and was restarted at: {stalled_restarts:?}"
        );
    }

    let (copies, aborted_copies) = read_topic(&brokers, &copied, OUTPUT_PARTITIONS);
    let (windows, aborted_windows) = read_topic(&brokers, &counts, OUTPUT_PARTITIONS);
    eprintln!(
        "kafka crash loop: {iterations} kills in {:.1} s; {} of {all_rows} rows committed before the final run; \
         records of aborted or open transactions (not visible with read_committed): {aborted_copies} rows, {aborted_windows} window results",
        started.elapsed().as_secs_f64(),
        before_final.len(),
    );

    for row in &copies {
        assert_eq!(row[1], row[0] % KEYS, "row {row:?}");
    }
    let wrong = not_once(&copies, all_rows);
    if !wrong.is_empty() {
        eprintln!("{}", explain(&brokers, &copied, &wrong));
    }
    assert!(
        wrong.is_empty(),
        "{} ids not committed exactly once (id, times): {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(10)]
    );

    let mut got: BTreeMap<(i64, i64), (i64, i64)> = BTreeMap::new();
    for row in &windows {
        let previous = got.insert((row[0], row[1]), (row[2], row[3]));
        assert!(previous.is_none(), "window {row:?} committed twice");
    }
    assert_eq!(got.len(), expected.len(), "number of windows");
    assert!(
        got == expected,
        "window results differ from the whole input's"
    );
}
