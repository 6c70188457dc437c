//! Durability through the embedded API (SPEC 4): restoring from any checkpoint and replaying
//! the input after it gives exactly the output of the uninterrupted run, for a spread of
//! stateful queries (vectorized and row-accumulator windows, hop, session, updating
//! aggregation, aggregation of a changelog, keyed watermarks, interval join), with incremental checkpoints
//! restored as chains; changed definitions are refused; corrupt checkpoints fall back to the
//! previous one.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use laminar_db::{ArrowSubscription, LaminarDB};
use rand::{Rng, SeedableRng};

use crate::util::rows;

const SETUP: &[&str] = &[
    "CREATE SOURCE bids (auction BIGINT, bidder BIGINT, price BIGINT, ts BIGINT, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)",
    "CREATE SOURCE persons (id BIGINT, name VARCHAR, ts BIGINT, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)",
    "CREATE STREAM tumbled AS SELECT auction, tumble(ts, INTERVAL '2' SECOND) AS w, COUNT(*) AS n, MAX(price) AS hi, SUM(price) AS total, AVG(price) AS mean FROM bids GROUP BY auction, tumble(ts, INTERVAL '2' SECOND) EMIT ON WINDOW CLOSE",
    "CREATE STREAM rich AS SELECT auction, tumble(ts, INTERVAL '2' SECOND) AS w, COUNT(DISTINCT bidder) AS bidders, STRING_AGG(CAST(price AS VARCHAR), ',' ORDER BY price) AS prices, first_value(price) AS first_p, last_value(price) AS last_p, median(price) AS med, MIN(price) FILTER (WHERE price > 50) AS lo_big FROM bids GROUP BY auction, tumble(ts, INTERVAL '2' SECOND) HAVING COUNT(*) > 1 EMIT ON WINDOW CLOSE",
    "CREATE STREAM hopped AS SELECT auction, hop(ts, INTERVAL '1' SECOND, INTERVAL '3' SECOND) AS w, COUNT(*) AS n FROM bids GROUP BY auction, hop(ts, INTERVAL '1' SECOND, INTERVAL '3' SECOND) EMIT ON WINDOW CLOSE",
    "CREATE STREAM sessions AS SELECT bidder, session(ts, INTERVAL '400' MILLISECOND) AS s, COUNT(*) AS n, MAX(price) AS hi FROM bids GROUP BY bidder, session(ts, INTERVAL '400' MILLISECOND) EMIT ON WINDOW CLOSE",
    "CREATE STREAM totals AS SELECT bidder, COUNT(*) AS n, SUM(price) AS total, MIN(price) AS lo, MAX(price) AS hi FROM bids GROUP BY bidder EMIT CHANGES",
    "CREATE STREAM histogram AS SELECT n, COUNT(*) AS bidders FROM totals GROUP BY n EMIT CHANGES",
    "CREATE STREAM live AS SELECT auction, tumble(ts, INTERVAL '2' SECOND) AS w, COUNT(*) AS n FROM bids GROUP BY auction, tumble(ts, INTERVAL '2' SECOND) EMIT ON UPDATE",
    "CREATE STREAM joined AS SELECT b.auction, b.price, p.name FROM bids b JOIN persons p ON b.bidder = p.id AND b.ts BETWEEN p.ts - INTERVAL '1' SECOND AND p.ts + INTERVAL '1' SECOND",
    "CREATE SOURCE keyed_bids (auction BIGINT, bidder BIGINT, price BIGINT, ts BIGINT, WATERMARK FOR ts AS ts - INTERVAL '300' MILLISECOND) WITH (watermark.key = 'auction')",
    "CREATE STREAM per_auction AS SELECT auction, tumble(ts, INTERVAL '1' SECOND) AS w, COUNT(*) AS n, SUM(price) AS total FROM keyed_bids GROUP BY auction, tumble(ts, INTERVAL '1' SECOND) EMIT ON WINDOW CLOSE",
];

const OUTPUTS: &[&str] = &[
    "tumbled",
    "rich",
    "hopped",
    "sessions",
    "totals",
    "histogram",
    "live",
    "joined",
    "per_auction",
];

fn bids_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("auction", DataType::Int64, true),
        Field::new("bidder", DataType::Int64, true),
        Field::new("price", DataType::Int64, true),
        Field::new("ts", DataType::Int64, true),
    ]))
}

fn persons_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("name", DataType::Utf8, true),
        Field::new("ts", DataType::Int64, true),
    ]))
}

/// Pushes of one step: bids into `bids` and `keyed_bids`, persons.
const PUSHES_PER_STEP: u64 = 3;

/// One step of input: a batch of bids and a batch of persons, with bounded disorder.
struct Step {
    bids: RecordBatch,
    persons: RecordBatch,
}

fn steps(seed: u64, count: usize) -> Vec<Step> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut clock = 0i64;
    (0..count)
        .map(|_| {
            let n = rng.random_range(1..30);
            let mut cols: [Vec<i64>; 4] = Default::default();
            for _ in 0..n {
                clock += rng.random_range(0..120);
                cols[0].push(rng.random_range(0..4));
                cols[1].push(rng.random_range(0..6));
                cols[2].push(rng.random_range(1..100));
                cols[3].push(clock - rng.random_range(0..800));
            }
            let bids = RecordBatch::try_new(
                bids_schema(),
                cols.into_iter()
                    .map(|c| Arc::new(Int64Array::from(c)) as ArrayRef)
                    .collect(),
            )
            .unwrap();
            let m = rng.random_range(1..4);
            let ids: Vec<i64> = (0..m).map(|_| rng.random_range(0..6)).collect();
            let names: Vec<String> = ids.iter().map(|i| format!("p{i}")).collect();
            let ts: Vec<i64> = (0..m).map(|_| clock - rng.random_range(0..800)).collect();
            let persons = RecordBatch::try_new(
                persons_schema(),
                vec![
                    Arc::new(Int64Array::from(ids)),
                    Arc::new(StringArray::from(names)),
                    Arc::new(Int64Array::from(ts)),
                ],
            )
            .unwrap();
            Step { bids, persons }
        })
        .collect()
}

struct Pipeline {
    db: LaminarDB,
    subs: Vec<(String, ArrowSubscription)>,
}

fn open(dir: &Path, reset: Option<&str>) -> Result<Pipeline, laminar_db::DbError> {
    open_with(dir, reset, None)
}

/// [`open`] with checkpoint files in the object store at `checkpoints` (a URL).
fn open_with(
    dir: &Path,
    reset: Option<&str>,
    checkpoints: Option<&str>,
) -> Result<Pipeline, laminar_db::DbError> {
    let mut builder = LaminarDB::builder()
        .workers(2)
        .storage_dir(dir)
        .checkpoint_interval(None)?
        .max_retained_checkpoints(1000)?;
    if let Some(name) = reset {
        builder = builder.reset_state(name)?;
    }
    if let Some(url) = checkpoints {
        builder = builder.checkpoint_store(url)?;
    }
    let db = builder.build_sync()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for sql in SETUP {
        rt.block_on(db.execute(sql))?;
    }
    let subs = OUTPUTS
        .iter()
        .map(|name| Ok((name.to_string(), db.subscribe_arrow(name)?)))
        .collect::<Result<Vec<_>, laminar_db::DbError>>()?;
    Ok(Pipeline { db, subs })
}

impl Pipeline {
    fn push(&self, step: &Step) {
        for source in ["bids", "keyed_bids"] {
            self.db
                .source_untyped(source)
                .unwrap()
                .push_arrow(step.bids.clone())
                .unwrap();
        }
        self.db
            .source_untyped("persons")
            .unwrap()
            .push_arrow(step.persons.clone())
            .unwrap();
        assert!(self.db.wait_idle(Duration::from_secs(30)));
    }

    fn finish(&self) {
        for source in ["bids", "persons", "keyed_bids"] {
            self.db
                .source_untyped(source)
                .unwrap()
                .watermark(i64::MAX)
                .unwrap();
        }
        assert!(self.db.wait_idle(Duration::from_secs(30)));
    }

    /// Everything emitted since the last call, per output, as sorted text rows.
    fn drain(&mut self) -> BTreeMap<String, Vec<Vec<String>>> {
        let mut out = BTreeMap::new();
        for (name, sub) in &mut self.subs {
            let mut batches = Vec::new();
            while let Some(b) = sub.poll() {
                batches.push(b);
            }
            let mut r = rows(&batches);
            r.sort();
            out.insert(name.clone(), r);
        }
        out
    }
}

/// Output `name` in a form two correct runs agree on: a changelog fed by parallel
/// instances (`histogram` aggregates the merged output of `totals`' two instances) sees
/// their changes interleaved by timing, so only its net effect (rows by total weight) is
/// deterministic.
fn comparable(name: &str, rows: Option<&Vec<Vec<String>>>) -> Option<Vec<Vec<String>>> {
    let rows = rows?;
    if name != "histogram" {
        return Some(rows.clone());
    }
    let mut net: BTreeMap<Vec<String>, i64> = BTreeMap::new();
    for row in rows {
        let (op, values) = row.split_last().expect("an _op column");
        let weight = match op.as_str() {
            "I" | "U+" => 1,
            "D" | "U-" => -1,
            other => panic!("unexpected op {other}"),
        };
        *net.entry(values.to_vec()).or_default() += weight;
    }
    Some(
        net.into_iter()
            .filter(|(_, w)| *w != 0)
            .map(|(mut row, w)| {
                row.push(w.to_string());
                row
            })
            .collect(),
    )
}

fn merge(into: &mut BTreeMap<String, Vec<Vec<String>>>, more: BTreeMap<String, Vec<Vec<String>>>) {
    for (k, mut v) in more {
        let e = into.entry(k).or_default();
        e.append(&mut v);
        e.sort();
    }
}

/// Copies a storage directory so that checkpoint `epoch` is its newest (a crash right
/// after it).
fn copy_at(from: &Path, to: &Path, epoch: u64) {
    let checkpoints = to.join("checkpoints");
    std::fs::create_dir_all(&checkpoints).unwrap();
    for entry in std::fs::read_dir(from.join("checkpoints")).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        let keep = match name.strip_prefix("MANIFEST-") {
            Some(e) => e.parse::<u64>().unwrap() <= epoch,
            None => name != "LATEST" && !name.starts_with('.'),
        };
        if !keep {
            continue;
        }
        if entry.path().is_dir() {
            let target = checkpoints.join(&name);
            std::fs::create_dir_all(&target).unwrap();
            for f in std::fs::read_dir(entry.path()).unwrap() {
                let f = f.unwrap();
                std::fs::copy(f.path(), target.join(f.file_name())).unwrap();
            }
        } else {
            std::fs::copy(entry.path(), checkpoints.join(&name)).unwrap();
        }
    }
    std::fs::write(checkpoints.join("LATEST"), epoch.to_string()).unwrap();
}

#[test]
fn restoring_from_every_checkpoint_replays_to_the_same_output() {
    let seed: u64 = std::env::var("LAMINAR_DURABILITY_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(11);
    let input = steps(seed, 16);
    let base = tempfile::tempdir().unwrap();
    let original_dir = base.path().join("original");

    // The uninterrupted run, with a checkpoint after every step; output after each
    // checkpoint is kept.
    let mut run = open(&original_dir, None).unwrap();
    let mut after: Vec<BTreeMap<String, Vec<Vec<String>>>> = Vec::new();
    let mut epochs = Vec::new();
    for step in &input {
        run.push(step);
        let emitted = run.drain();
        for a in after.iter_mut() {
            merge(a, emitted.clone());
        }
        epochs.push(run.db.checkpoint().unwrap().expect("durable"));
        after.push(BTreeMap::new());
    }
    run.finish();
    let emitted = run.drain();
    for a in after.iter_mut() {
        merge(a, emitted.clone());
    }
    let stats = run.db.checkpoint_stats().unwrap();
    assert_eq!(stats.completed, input.len() as u64);
    assert_eq!(stats.failed, 0);
    // Aggregations write increments between full snapshots: restoring a checkpoint
    // applies a chain of them.
    assert!(stats.incremental_snapshots > 20, "{stats:?}");
    assert!(stats.full_snapshots > 0, "{stats:?}");
    run.db.shutdown_sync();
    assert!(
        after[0].values().map(Vec::len).sum::<usize>() > 50,
        "the workload must produce output: {after:?}"
    );

    // Restore from each checkpoint, push the steps after it, compare.
    for (i, epoch) in epochs.iter().enumerate() {
        let dir = base.path().join(format!("at-{epoch}"));
        copy_at(&original_dir, &dir, *epoch);
        let mut restored = open(&dir, None).unwrap();
        assert_eq!(
            restored.db.checkpoint_stats().unwrap().recovered_epoch,
            Some(*epoch)
        );
        for step in &input[i + 1..] {
            restored.push(step);
        }
        restored.finish();
        let got = restored.drain();
        for name in OUTPUTS {
            assert_eq!(
                comparable(name, got.get(*name)),
                comparable(name, after[i].get(*name)),
                "stream {name} restored from checkpoint {epoch} (after step {i}), seed {seed}"
            );
        }
        restored.db.shutdown_sync();
    }
}

#[test]
fn changed_definitions_are_refused_until_reset_and_corrupt_checkpoints_fall_back() {
    let dir = tempfile::tempdir().unwrap();
    let run = open(dir.path(), None).unwrap();
    for step in steps(3, 4) {
        run.push(&step);
        run.db.checkpoint().unwrap();
    }
    run.db.shutdown_sync();
    drop(run);

    // A changed stream: refused, naming it.
    let db = crate::util::open_durable(dir.path(), 2);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for sql in &SETUP[..2] {
        rt.block_on(db.execute(sql)).unwrap();
    }
    let changed = SETUP[2].replace("MAX(price)", "MIN(price)");
    let err = rt.block_on(db.execute(&changed)).unwrap_err();
    assert_eq!(err.code(), "STATE_MISMATCH", "{err}");
    assert!(err.to_string().contains("tumbled"), "{err}");
    db.shutdown_sync();
    drop(db);

    // With its state reset, the changed stream starts empty.
    let db = LaminarDB::builder()
        .storage_dir(dir.path())
        .checkpoint_interval(None)
        .unwrap()
        .reset_state("tumbled")
        .unwrap()
        .build_sync()
        .unwrap();
    for sql in &SETUP[..2] {
        rt.block_on(db.execute(sql)).unwrap();
    }
    rt.block_on(db.execute(&changed)).unwrap();
    db.shutdown_sync();
    drop(db);

    // Flip a byte in a snapshot of the newest checkpoint: the previous one is used, and
    // the reason is reported.
    let checkpoints = dir.path().join("checkpoints");
    let latest: u64 = std::fs::read_to_string(checkpoints.join("LATEST"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let newest = checkpoints.join(format!("{latest:020}"));
    let victim = std::fs::read_dir(&newest)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("state-")
        })
        .unwrap();
    let mut bytes = std::fs::read(&victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&victim, bytes).unwrap();
    let db = LaminarDB::builder()
        .storage_dir(dir.path())
        .build_sync()
        .unwrap();
    let stats = db.checkpoint_stats().unwrap();
    assert_eq!(stats.recovered_epoch, Some(latest - 1));
    assert!(
        stats.skipped.iter().any(|s| s.contains("CRC32C")),
        "{:?}",
        stats.skipped
    );
    db.shutdown_sync();
    drop(db);

    // Every checkpoint corrupt: opening refuses with the reasons.
    for entry in std::fs::read_dir(&checkpoints).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("MANIFEST-")
        {
            std::fs::write(&path, "garbage").unwrap();
        }
    }
    let err = LaminarDB::builder()
        .storage_dir(dir.path())
        .build_sync()
        .err()
        .expect("no usable checkpoint");
    assert_eq!(err.code(), "CHECKPOINT", "{err}");
}

/// The newest write-ahead log segment of a storage directory.
fn newest_wal_segment(dir: &Path) -> std::path::PathBuf {
    let mut segments: Vec<_> = std::fs::read_dir(dir.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    segments.sort();
    segments.pop().expect("a WAL segment")
}

/// Pushes `input` with a checkpoint after step `checkpoint_after`; returns the output
/// emitted after that checkpoint (the end of input included when `finish`).
fn run_with_checkpoint(
    dir: &Path,
    input: &[Step],
    checkpoint_after: usize,
    finish: bool,
) -> (Pipeline, BTreeMap<String, Vec<Vec<String>>>) {
    run_with_checkpoint_in(dir, None, input, checkpoint_after, finish)
}

/// [`run_with_checkpoint`] with checkpoint files in the object store at `checkpoints`.
fn run_with_checkpoint_in(
    dir: &Path,
    checkpoints: Option<&str>,
    input: &[Step],
    checkpoint_after: usize,
    finish: bool,
) -> (Pipeline, BTreeMap<String, Vec<Vec<String>>>) {
    let mut run = open_with(dir, None, checkpoints).unwrap();
    let mut after = BTreeMap::new();
    for (i, step) in input.iter().enumerate() {
        run.push(step);
        let emitted = run.drain();
        if i > checkpoint_after {
            merge(&mut after, emitted);
        }
        if i == checkpoint_after {
            run.db.checkpoint().unwrap();
        }
    }
    if finish {
        run.finish();
        merge(&mut after, run.drain());
    }
    (run, after)
}

#[test]
fn logged_pushes_after_the_checkpoint_are_replayed_at_start() {
    let input = steps(21, 12);
    let base = tempfile::tempdir().unwrap();
    // The uninterrupted run.
    let (run, expected) = run_with_checkpoint(&base.path().join("whole"), &input, 5, true);
    run.db.shutdown_sync();

    // The same pushes, then a crash (no shutdown, nothing after the last push).
    let crashed = base.path().join("crashed");
    let (run, before_crash) = run_with_checkpoint(&crashed, &input, 5, false);
    std::mem::forget(run);

    let mut restored = open(&crashed, None).unwrap();
    // Pushing before start() would overtake the replay.
    let early = restored
        .db
        .source_untyped("bids")
        .unwrap()
        .push_arrow(input[0].bids.clone())
        .unwrap_err();
    assert_eq!(early.code(), "INVALID_OPERATION", "{early}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(restored.db.start()).unwrap();
    assert!(restored.db.wait_idle(Duration::from_secs(30)));
    restored.finish();
    let stats = restored.db.checkpoint_stats().unwrap();
    assert_eq!(
        stats.replayed_pushes,
        PUSHES_PER_STEP * (input.len() as u64 - 6)
    );
    assert_eq!(stats.unreplayed_pushes, 0);
    let got = restored.drain();
    // Output after the checkpoint: what the crashed run emitted was lost with it (it was
    // never committed anywhere); the replay emits it again, then the rest.
    let _ = before_crash;
    for name in OUTPUTS {
        assert_eq!(
            comparable(name, got.get(*name)),
            comparable(name, expected.get(*name)),
            "stream {name}"
        );
    }
    restored.db.shutdown_sync();
}

#[test]
fn torn_and_corrupt_write_ahead_logs() {
    let input = steps(5, 6);
    let base = tempfile::tempdir().unwrap();

    // A torn last record: cut off and reported; the records before it replay.
    let torn = base.path().join("torn");
    let (run, _) = run_with_checkpoint(&torn, &input, 0, false);
    std::mem::forget(run);
    let segment = newest_wal_segment(&torn);
    let len = std::fs::metadata(&segment).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(len - 7)
        .unwrap();
    let restored = open(&torn, None).unwrap();
    let stats = restored.db.checkpoint_stats().unwrap();
    assert!(
        stats.wal_report.iter().any(|r| r.contains("torn")),
        "{:?}",
        stats.wal_report
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(restored.db.start()).unwrap();
    let stats = restored.db.checkpoint_stats().unwrap();
    assert_eq!(
        stats.replayed_pushes,
        PUSHES_PER_STEP * (input.len() as u64 - 1) - 1
    );
    restored.db.shutdown_sync();
    drop(restored);

    // A flipped byte in the middle of the log: opening refuses, naming the log; salvage
    // opens and reports where it stopped.
    let corrupt = base.path().join("corrupt");
    let (run, _) = run_with_checkpoint(&corrupt, &input, 0, false);
    std::mem::forget(run);
    let segment = newest_wal_segment(&corrupt);
    let mut bytes = std::fs::read(&segment).unwrap();
    let early = bytes.len() / 3;
    bytes[early] ^= 0x10;
    std::fs::write(&segment, bytes).unwrap();
    let err = open(&corrupt, None).err().expect("corrupt log");
    assert_eq!(err.code(), "CHECKPOINT", "{err}");
    assert!(err.to_string().contains("write-ahead log"), "{err}");
    let db = LaminarDB::builder()
        .storage_dir(&corrupt)
        .wal_salvage(true)
        .unwrap()
        .build_sync()
        .unwrap();
    let stats = db.checkpoint_stats().unwrap();
    assert!(
        stats.wal_report.iter().any(|r| r.contains("salvaged")),
        "{:?}",
        stats.wal_report
    );
    db.shutdown_sync();
}

#[test]
fn a_failed_checkpoint_write_stops_the_pipeline_and_a_restart_recovers() {
    let input = steps(5, 6);
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("state");
    let run = open(&dir, None).unwrap();
    run.push(&input[0]);
    let first = run.db.checkpoint().unwrap().expect("durable");
    run.push(&input[1]);
    // The next checkpoint's directory cannot be created: a file holds its name.
    let blocker = dir.join("checkpoints").join(format!("{:020}", first + 1));
    std::fs::write(&blocker, b"in the way").unwrap();
    let error = run.db.checkpoint().unwrap_err();
    assert_eq!(error.code(), "CHECKPOINT", "{error}");
    let failures = run.db.failures();
    assert!(
        failures
            .iter()
            .any(|f| f.contains("storage directory failed") && f.contains("writing checkpoint")),
        "{failures:?}"
    );
    // No silent retry: later checkpoints and pushes are refused with the cause.
    std::fs::remove_file(&blocker).unwrap();
    let again = run.db.checkpoint().unwrap_err().to_string();
    assert!(
        again.contains("nothing more can be made durable"),
        "{again}"
    );
    let push = run
        .db
        .source_untyped("bids")
        .unwrap()
        .push_arrow(input[2].bids.clone())
        .unwrap_err();
    assert_eq!(push.code(), "CHECKPOINT", "{push}");
    assert_eq!(run.db.failures().len(), failures.len(), "reported once");
    std::mem::forget(run);

    // A restart recovers the last complete checkpoint and the logged pushes after it.
    let restored = open(&dir, None).unwrap();
    let stats = restored.db.checkpoint_stats().unwrap();
    assert_eq!(stats.recovered_epoch, Some(first));
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(restored.db.start()).unwrap();
    assert_eq!(
        restored.db.checkpoint_stats().unwrap().replayed_pushes,
        PUSHES_PER_STEP,
        "the pushes of step 1"
    );
    assert!(restored.db.checkpoint().unwrap().is_some());
    restored.db.shutdown_sync();
}

/// Crashes a run whose checkpoints go to the object store at `url`, restarts it, and checks
/// that it resumes from that store: the state restored, the logged pushes after the
/// checkpoint replayed, the output equal to an uninterrupted run's.
fn crash_and_recover_with_checkpoints_in(url: &str) {
    let input = steps(31, 8);
    let base = tempfile::tempdir().unwrap();
    let (run, expected) = run_with_checkpoint(&base.path().join("whole"), &input, 3, true);
    run.db.shutdown_sync();

    let crashed = base.path().join("crashed");
    let (run, _) = run_with_checkpoint_in(&crashed, Some(url), &input, 3, false);
    assert_eq!(run.db.checkpoint_stats().unwrap().completed, 1);
    std::mem::forget(run);
    assert!(
        !crashed.join("checkpoints").exists(),
        "checkpoint files went to {url}, not the storage directory"
    );

    let mut restored = open_with(&crashed, None, Some(url)).unwrap();
    let stats = restored.db.checkpoint_stats().unwrap();
    assert!(stats.recovered_epoch.is_some(), "{stats:?}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(restored.db.start()).unwrap();
    assert!(restored.db.wait_idle(Duration::from_secs(30)));
    restored.finish();
    assert_eq!(
        restored.db.checkpoint_stats().unwrap().replayed_pushes,
        PUSHES_PER_STEP * (input.len() as u64 - 4)
    );
    let got = restored.drain();
    for name in OUTPUTS {
        assert_eq!(
            comparable(name, got.get(*name)),
            comparable(name, expected.get(*name)),
            "stream {name}, checkpoints in {url}"
        );
    }
    assert!(restored.db.checkpoint().unwrap().is_some());
    restored.db.shutdown_sync();
}

#[test]
fn checkpoints_in_a_local_object_store_recover_after_a_crash() {
    let store = tempfile::tempdir().unwrap();
    crash_and_recover_with_checkpoints_in(&format!("file://{}/ckpt", store.path().display()));
}

/// Against a real S3-compatible service: `scripts/test.sh` starts one (moto) and sets
/// `LAMINAR_TEST_S3_BUCKET` and the `AWS_*` settings.
#[cfg(feature = "s3")]
#[test]
fn checkpoints_in_s3_recover_after_a_crash() {
    let Ok(bucket) = std::env::var("LAMINAR_TEST_S3_BUCKET") else {
        assert!(
            std::env::var_os("LAMINAR_REQUIRE_SERVICES").is_none(),
            "LAMINAR_TEST_S3_BUCKET is not set: run the tests with scripts/test.sh, which starts an S3-compatible service"
        );
        eprintln!("skipped: no S3-compatible service (run scripts/test.sh)");
        return;
    };
    let prefix = format!(
        "run-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    crash_and_recover_with_checkpoints_in(&format!("s3://{bucket}/{prefix}"));
}

#[test]
fn an_unusable_checkpoint_store_is_a_clear_error_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let error = match open_with(dir.path(), None, Some("ftp://example/x")) {
        Ok(_) => panic!("an ftp:// checkpoint store must be refused"),
        Err(e) => e,
    };
    assert_eq!(error.code(), "CHECKPOINT", "{error}");
    assert!(error.to_string().contains("ftp://example/x"), "{error}");
}

#[test]
fn a_parallel_stream_restores_only_with_the_workers_it_was_checkpointed_with() {
    let dir = tempfile::tempdir().unwrap();
    let setup = "CREATE SOURCE s (k BIGINT, x BIGINT); \
                 CREATE MATERIALIZED VIEW v AS SELECT k, SUM(x) AS t FROM s GROUP BY k";
    let db = crate::util::durable_db(dir.path(), 2, setup);
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, true),
        Field::new("x", DataType::Int64, true),
    ]));
    let keys: Vec<i64> = (0..100).collect();
    db.source_untyped("s")
        .unwrap()
        .push_arrow(
            RecordBatch::try_new(
                schema,
                vec![
                    Arc::new(Int64Array::from(keys.clone())) as ArrayRef,
                    Arc::new(Int64Array::from(keys)),
                ],
            )
            .unwrap(),
        )
        .unwrap();
    assert!(db.wait_idle(Duration::from_secs(20)));
    db.checkpoint().unwrap();
    db.shutdown_sync();
    // Fewer workers (an instance left over) and more (instances without state) are refused.
    // A refused state is kept: checkpoints (the one at shutdown too) are suspended until it
    // is restored or reset.
    for workers in [1, 3] {
        let db = crate::util::open_durable(dir.path(), workers);
        let err = crate::util::block_on(db.execute(setup))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("run with the same --workers"),
            "{workers} workers: {err}"
        );
        let suspended = db.checkpoint().unwrap_err().to_string();
        assert!(
            suspended.contains("checkpoints are suspended")
                && suspended.contains("'v' (checkpointed with another number of workers)"),
            "{suspended}"
        );
        db.shutdown_sync();
    }
    // The same count restores the rows.
    let db = crate::util::durable_db(dir.path(), 2, setup);
    assert_eq!(
        crate::util::select(&db, "SELECT COUNT(*), SUM(t) FROM v"),
        vec![vec!["100", "4950"]]
    );
    db.shutdown_sync();
}

/// A `CREATE` that fails while the object is re-created from a checkpoint keeps the
/// object's checkpointed state (here a table's rows, restored before its files fail to
/// load): checkpoints wait for it, and a `CREATE` that then succeeds restores it.
#[test]
fn a_failed_re_creation_keeps_the_checkpointed_state_for_the_next_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    std::fs::write(files.path().join("a.csv"), "id,tier\n1,gold\n").unwrap();
    let setup = format!(
        "CREATE TABLE customers (id BIGINT PRIMARY KEY, tier VARCHAR) \
           FROM FILES (path = '{}/*.csv') FORMAT CSV",
        files.path().display()
    );
    let db = crate::util::durable_db(dir.path(), 1, &setup);
    crate::util::block_on(db.execute("INSERT INTO customers VALUES (2, 'silver')")).unwrap();
    db.checkpoint().unwrap();
    db.shutdown_sync();

    // A file that cannot be loaded makes the CREATE fail after the rows were restored.
    std::fs::write(files.path().join("b.csv"), "id,tier\nnot-a-number,x\n").unwrap();
    let db = crate::util::open_durable(dir.path(), 1);
    let err = crate::util::block_on(db.execute(&setup))
        .unwrap_err()
        .to_string();
    assert!(err.contains("not created"), "{err}");
    let suspended = db.checkpoint().unwrap_err().to_string();
    assert!(
        suspended.contains("checkpoints are suspended")
            && suspended.contains("'customers' (its CREATE failed"),
        "{suspended}"
    );
    // Fixed, the next attempt restores the inserted row with the file's.
    std::fs::remove_file(files.path().join("b.csv")).unwrap();
    crate::util::block_on(db.execute(&setup)).unwrap();
    assert_eq!(
        crate::util::select(&db, "SELECT id, tier FROM customers ORDER BY id"),
        vec![vec!["1", "gold"], vec!["2", "silver"]]
    );
    db.checkpoint().unwrap();
    db.shutdown_sync();

    // That checkpoint holds the row too.
    let db = crate::util::durable_db(dir.path(), 1, &setup);
    assert_eq!(
        crate::util::select(&db, "SELECT COUNT(*) FROM customers"),
        vec![vec!["2"]]
    );
    db.shutdown_sync();
}

/// A FILES source over `files` and a per-key sum over it.
fn csv_source_and_sum_view(files: &Path) -> String {
    format!(
        "CREATE SOURCE s (k BIGINT, x BIGINT) FROM FILES (path = '{}/*.csv') FORMAT CSV; \
         CREATE MATERIALIZED VIEW v AS SELECT k, SUM(x) AS t FROM s GROUP BY k",
        files.display()
    )
}

/// Waits until view `v` holds `expected` (ordered by `k`).
fn wait_for_sums(db: &LaminarDB, expected: &[[&str; 2]]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let rows = crate::util::select(db, "SELECT k, t FROM v ORDER BY k");
        if rows == expected.iter().map(|r| r.to_vec()).collect::<Vec<_>>() {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{rows:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the database reports a failure.
fn wait_for_a_failure(db: &LaminarDB) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while db.failures().is_empty() {
        assert!(std::time::Instant::now() < deadline, "nothing failed");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A view over a bounded source keeps its contents across restarts after the source ended:
/// with durability an ended source stays open, so nothing downstream finishes.
#[test]
fn a_view_over_an_ended_source_is_restored() {
    let dir = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    std::fs::write(files.path().join("a.csv"), "k,x\n1,10\n2,20\n1,5\n").unwrap();
    let setup = csv_source_and_sum_view(files.path());
    for workers in [1, 2] {
        let dir = dir.path().join(workers.to_string());
        for _ in 0..3 {
            let db = crate::util::durable_db(&dir, workers, &setup);
            crate::util::block_on(db.start()).unwrap();
            wait_for_sums(&db, &[["1", "15"], ["2", "20"]]);
            assert!(db.wait_idle(Duration::from_secs(20)));
            db.checkpoint().unwrap();
            db.shutdown_sync();
        }
    }
}

/// A source that fails with durability stays open: what it read stays in the view and in
/// the checkpoints taken after the failure, and a restart resumes it where it stopped.
#[test]
fn a_failed_source_keeps_what_it_read_in_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    std::fs::write(files.path().join("a.csv"), "k,x\n1,10\n2,20\n1,5\n").unwrap();
    std::fs::write(files.path().join("b.csv"), "k,x\nbad,10\n").unwrap();
    let setup = csv_source_and_sum_view(files.path());
    let db = crate::util::durable_db(dir.path(), 2, &setup);
    crate::util::block_on(db.start()).unwrap();
    wait_for_a_failure(&db);
    assert!(db.failures()[0].contains("b.csv"), "{:?}", db.failures());
    wait_for_sums(&db, &[["1", "15"], ["2", "20"]]);
    db.checkpoint().unwrap();
    db.shutdown_sync();
    // Fixed, the file is read on restart; the rows read before are restored.
    std::fs::write(files.path().join("b.csv"), "k,x\n2,1\n3,7\n").unwrap();
    let db = crate::util::durable_db(dir.path(), 2, &setup);
    crate::util::block_on(db.start()).unwrap();
    wait_for_sums(&db, &[["1", "15"], ["2", "21"], ["3", "7"]]);
    assert!(db.failures().is_empty(), "{:?}", db.failures());
    db.shutdown_sync();
}

/// A view that failed takes no snapshot: the checkpoints after that record it as stopped,
/// and re-creating it from them is refused (its inputs resume past what it saw) until its
/// state is reset, while the other objects restore.
#[test]
fn a_stream_that_failed_is_refused_at_restore_until_reset() {
    let dir = tempfile::tempdir().unwrap();
    let setup = "CREATE SOURCE s (k BIGINT, x BIGINT); \
                 CREATE MATERIALIZED VIEW total AS SELECT COUNT(*) AS n FROM s; \
                 CREATE MATERIALIZED VIEW few WITH ('max_partitions' = '2') AS \
                   SELECT k, x FROM (SELECT k, x, ROW_NUMBER() OVER (PARTITION BY k ORDER BY x DESC) AS rn FROM s) \
                   WHERE rn <= 1; \
                 CREATE MATERIALIZED VIEW over_few AS SELECT COUNT(*) AS n FROM few";
    let db = crate::util::durable_db(dir.path(), 1, setup);
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, true),
        Field::new("x", DataType::Int64, true),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(vec![1, 2, 3])) as ArrayRef,
            Arc::new(Int64Array::from(vec![10, 20, 30])),
        ],
    )
    .unwrap();
    db.source_untyped("s").unwrap().push_arrow(batch).unwrap();
    assert!(db.wait_idle(Duration::from_secs(20)));
    assert!(
        db.failures().iter().any(|f| f.contains("max_partitions")),
        "{:?}",
        db.failures()
    );
    db.checkpoint().unwrap();
    db.shutdown_sync();

    let db = crate::util::open_durable(dir.path(), 1);
    let err = crate::util::block_on(db.execute(setup))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("'few' had stopped (it failed)") && err.contains("--reset-state few"),
        "{err}"
    );
    assert_eq!(
        crate::util::select(&db, "SELECT n FROM total"),
        vec![vec!["3"]]
    );
    assert!(db.checkpoint().is_err());
    db.shutdown_sync();

    // Reset: 'few' starts empty; 'over_few' read it and stopped with it, so it is refused
    // too, and its state is discarded in the running process.
    let db = LaminarDB::builder()
        .workers(1)
        .storage_dir(dir.path())
        .checkpoint_interval(None)
        .unwrap()
        .reset_state("few")
        .unwrap()
        .build_sync()
        .unwrap();
    let err = crate::util::block_on(db.execute(setup))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("'over_few' had stopped (a relation it reads failed)"),
        "{err}"
    );
    let suspended = db.checkpoint().unwrap_err().to_string();
    assert!(
        suspended.contains("'over_few'") && suspended.contains("discard_checkpointed_state"),
        "{suspended}"
    );
    assert!(db.discard_checkpointed_state("over_few"));
    assert!(!db.discard_checkpointed_state("over_few"));
    let over_few = setup.rsplit("; ").next().unwrap();
    crate::util::block_on(db.execute(over_few)).unwrap();
    assert_eq!(
        crate::util::select(&db, "SELECT n FROM total"),
        vec![vec!["3"]]
    );
    assert_eq!(
        crate::util::select(&db, "SELECT COUNT(*) FROM few"),
        vec![vec!["0"]]
    );
    db.checkpoint().unwrap();
    db.shutdown_sync();
}

/// `drop_oldest` evicts rows that are already in the write-ahead log (a restart would replay
/// them), so a durable database refuses it, whether declared on the source or the default.
#[test]
fn drop_oldest_sources_are_refused_with_a_storage_directory() {
    let dir = tempfile::tempdir().unwrap();
    let db = crate::util::open_durable(dir.path(), 1);
    let err = crate::util::block_on(
        db.execute("CREATE SOURCE s (x BIGINT) WITH (backpressure = 'drop_oldest')"),
    )
    .unwrap_err();
    assert_eq!(err.code(), "SQL_INVALID", "{err}");
    assert!(
        err.to_string()
            .contains("'drop_oldest' cannot be used with a storage directory"),
        "{err}"
    );
    crate::util::block_on(db.execute("CREATE SOURCE s (x BIGINT) WITH (backpressure = 'reject')"))
        .unwrap();
    db.shutdown_sync();
    let db = LaminarDB::builder()
        .storage_dir(dir.path().join("other"))
        .backpressure(laminar_db::BackpressureStrategy::DropOldest)
        .build_sync()
        .unwrap();
    let err = crate::util::block_on(db.execute("CREATE SOURCE s (x BIGINT)")).unwrap_err();
    assert!(err.to_string().contains("drop_oldest"), "{err}");
    db.shutdown_sync();
}

/// A FILES source that fails in the middle of a file (a bad row after rows it already
/// delivered) resumes after a restart exactly where it stopped: the checkpoints taken after
/// the failure record the position before the failed read, not the start of the file.
#[test]
fn a_source_failing_mid_file_resumes_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let good: String = (0..10_000).map(|_| "1,1\n").collect();
    std::fs::write(files.path().join("a.csv"), format!("k,x\n{good}bad,1\n")).unwrap();
    let setup = csv_source_and_sum_view(files.path());
    let db = crate::util::durable_db(dir.path(), 1, &setup);
    crate::util::block_on(db.start()).unwrap();
    wait_for_a_failure(&db);
    assert!(db.wait_idle(Duration::from_secs(20)));
    db.checkpoint().unwrap();
    db.shutdown_sync();
    std::fs::write(files.path().join("a.csv"), format!("k,x\n{good}2,1\n")).unwrap();
    let db = crate::util::durable_db(dir.path(), 1, &setup);
    crate::util::block_on(db.start()).unwrap();
    wait_for_sums(&db, &[["1", "10000"], ["2", "1"]]);
    db.shutdown_sync();
}
