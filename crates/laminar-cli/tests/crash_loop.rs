//! Crash loop: `laminardb run --storage-dir` is killed with SIGKILL at random moments and
//! rerun, again and again, over a numbered input feeding a plain projection and a windowed
//! aggregation into exactly-once FILES sinks. At the end, every input row must appear
//! exactly once in the committed projection output and the committed window results must
//! be exactly the windows of the whole input.
//!
//! `LAMINAR_CRASH_ITERATIONS` (default 200) sets the number of kills, `LAMINAR_CRASH_SEED`
//! the seed (printed, so a failure can be replayed).
#![cfg(unix)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

const FILES: u64 = 16;
const KEYS: u64 = 7;
/// Input rows per kill, so that the kills are spread over the whole input (a debug build
/// gets through roughly this much between two kills, restarts included).
const ROWS_PER_KILL: u64 = 15_000;

fn write_input(dir: &Path, rows_per_file: u64) {
    std::fs::create_dir_all(dir).unwrap();
    for f in 0..FILES {
        let mut text = String::from("id,k,ts\n");
        for i in 0..rows_per_file {
            let id = f * rows_per_file + i;
            // One row per millisecond: windows of one second hold 1000 rows.
            text.push_str(&format!("{id},{},{id}\n", id % KEYS));
        }
        let mut file = std::fs::File::create(dir.join(format!("part-{f:03}.csv"))).unwrap();
        file.write_all(text.as_bytes()).unwrap();
    }
}

fn pipeline(dir: &Path) -> String {
    format!(
        "CREATE SOURCE events (id BIGINT, k BIGINT, ts BIGINT, WATERMARK FOR ts AS ts)\n\
         \x20 FROM FILES (path = '{input}', format = 'csv', batch.size = '1000');\n\
         CREATE STREAM copied AS SELECT id, k FROM events;\n\
         CREATE SINK copied_out FROM copied INTO FILES (path = '{copied}', format = 'csv');\n\
         CREATE STREAM counts AS SELECT k, tumble(ts, INTERVAL '1' SECOND) AS w, COUNT(*) AS n, SUM(id) AS total\n\
         \x20 FROM events GROUP BY k, tumble(ts, INTERVAL '1' SECOND) EMIT ON WINDOW CLOSE;\n\
         CREATE SINK counts_out FROM counts INTO FILES (path = '{counts}', format = 'csv');\n",
        input = dir.join("input").display(),
        copied = dir.join("copied").display(),
        counts = dir.join("counts").display(),
    )
}

/// Data lines of the committed `part-*` files of a sink directory.
fn committed_rows(dir: &Path) -> Vec<Vec<i64>> {
    let mut rows = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return rows;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.starts_with("part-") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for line in text.lines().skip(1) {
            rows.push(
                line.split(',')
                    .map(|v| {
                        v.parse::<i64>()
                            .unwrap_or_else(|_| panic!("{name}: {line}"))
                    })
                    .collect(),
            );
        }
    }
    rows
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[test]
fn killed_and_rerun_pipelines_commit_every_row_exactly_once() {
    let iterations: usize = std::env::var("LAMINAR_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let seed: u64 = std::env::var("LAMINAR_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("crash loop: {iterations} kills, LAMINAR_CRASH_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let dir = tempfile::tempdir().unwrap();
    let rows_per_file = (iterations.max(20) as u64 * ROWS_PER_KILL).div_ceil(FILES);
    let total = FILES * rows_per_file;
    write_input(&dir.path().join("input"), rows_per_file);
    let sql = dir.path().join("pipeline.sql");
    std::fs::write(&sql, pipeline(dir.path())).unwrap();
    let state = dir.path().join("state");
    let command = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_laminardb"));
        c.args([
            "run",
            "--storage-dir",
            state.to_str().unwrap(),
            "--checkpoint-interval",
            "30ms",
            sql.to_str().unwrap(),
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        c
    };

    let mut recoveries = Vec::new();
    let mut finished_early = 0;
    let started = Instant::now();
    for _ in 0..iterations {
        let mut child = command().spawn().unwrap();
        let wait = Duration::from_millis(rng.random_range(20..400));
        let deadline = Instant::now() + wait;
        let mut exited = None;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                exited = Some(status);
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if exited.is_none() {
            child.kill().unwrap();
        }
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if let Some(status) = exited {
            assert!(status.success(), "run failed: {stderr}");
            finished_early += 1;
        }
        for line in stderr.lines() {
            if let Some(ms) = line
                .split("state restored in ")
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
            {
                recoveries.push(ms);
            }
            assert!(
                !line.contains("panicked"),
                "the pipeline panicked: {stderr}"
            );
        }
    }
    let before_final = committed_rows(&dir.path().join("copied")).len();
    // A last, uninterrupted run finishes the input.
    let out = command().output().unwrap();
    assert!(
        out.status.success(),
        "final run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    recoveries.sort_by(f64::total_cmp);
    eprintln!(
        "crash loop: {iterations} kills in {:.1} s ({finished_early} runs finished before their kill); \
         restore time p50 {:.2} ms, p99 {:.2} ms over {} recoveries; \
         {before_final} of {} rows committed before the final run",
        started.elapsed().as_secs_f64(),
        percentile(&recoveries, 0.5),
        percentile(&recoveries, 0.99),
        recoveries.len(),
        total
    );

    // Every input row exactly once in the projection.
    let mut seen = vec![0u32; total as usize];
    for row in committed_rows(&dir.path().join("copied")) {
        assert_eq!(row[1], row[0] % KEYS as i64, "row {row:?}");
        seen[row[0] as usize] += 1;
    }
    let wrong: Vec<(usize, u32)> = seen
        .iter()
        .enumerate()
        .filter(|(_, n)| **n != 1)
        .map(|(i, n)| (i, *n))
        .take(10)
        .collect();
    assert!(
        wrong.is_empty(),
        "ids not seen exactly once (id, times): {wrong:?}"
    );

    // The window results of the whole input, each exactly once.
    let mut expected: BTreeMap<(i64, i64), (i64, i64)> = BTreeMap::new();
    for id in 0..total as i64 {
        let e = expected
            .entry((id % KEYS as i64, id - id % 1000))
            .or_insert((0, 0));
        e.0 += 1;
        e.1 += id;
    }
    let mut got: BTreeMap<(i64, i64), (i64, i64)> = BTreeMap::new();
    for row in committed_rows(&dir.path().join("counts")) {
        let previous = got.insert((row[0], row[1]), (row[2], row[3]));
        assert!(previous.is_none(), "window {row:?} committed twice");
    }
    assert_eq!(got.len(), expected.len(), "number of windows");
    assert!(
        got == expected,
        "window results differ from the whole input's"
    );
}
