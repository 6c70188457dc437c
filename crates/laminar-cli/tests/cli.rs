//! End-to-end tests of the `laminardb` binary: pipeline files, errors and exit codes, the
//! demo, and the shell reading stdin.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// No test may hang the suite.
const TIMEOUT: Duration = Duration::from_secs(30);

fn laminardb() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_laminardb"));
    cmd.env_remove("LAMINAR_WORKERS")
        .env("HOME", std::env::temp_dir())
        .arg("--workers")
        .arg("1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Waits for `child`, killing it after [`TIMEOUT`].
fn finish(mut child: Child) -> Output {
    let deadline = Instant::now() + TIMEOUT;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "laminardb did not finish within {TIMEOUT:?}\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

fn run(args: &[&str]) -> Output {
    finish(laminardb().args(args).spawn().expect("spawn laminardb"))
}

fn run_with_stdin(args: &[&str], input: &str) -> Output {
    let mut child = laminardb()
        .args(args)
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn laminardb");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    finish(child)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write test file");
}

const ORDERS_CSV: &str = "\
id,name,amount,ts
1,alice,10,2024-01-01 00:00:00.000
2,bob,75,2024-01-01 00:00:01.000
3,carol,120,2024-01-01 00:00:02.000
4,dave,50,2024-01-01 00:00:03.000
5,erin,51,2024-01-01 00:00:04.000
";

/// A pipeline reading `input` and writing the orders over 50 to `<dir>/out`.
fn orders_pipeline(dir: &Path, input: &Path) -> String {
    format!(
        "-- orders over 50\n\
         CREATE SOURCE orders (id BIGINT, name VARCHAR, amount BIGINT, ts TIMESTAMP,\n\
         \x20   WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)\n\
         \x20 FROM FILES (path = '{}', format = 'csv');\n\
         CREATE STREAM big_orders AS SELECT id, name, amount FROM orders WHERE amount > 50;\n\
         CREATE SINK big_out FROM big_orders INTO FILES (path = '{}', format = 'csv');\n",
        input.display(),
        dir.join("out").display()
    )
}

/// Data rows of the committed `part-*.csv` files under `dir`, sorted.
fn committed_csv_rows(dir: &Path) -> Vec<String> {
    let mut rows = Vec::new();
    let mut files = 0;
    for entry in std::fs::read_dir(dir).expect("output directory") {
        let path = entry.expect("entry").path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("part-") && name.ends_with(".csv") {
            files += 1;
            let text = std::fs::read_to_string(&path).expect("read part file");
            let mut lines = text.lines();
            assert_eq!(lines.next(), Some("id,name,amount"), "header of {name}");
            rows.extend(lines.map(str::to_string));
        }
    }
    assert!(files > 0, "no part-*.csv file in {}", dir.display());
    rows.sort();
    rows
}

#[test]
fn run_filters_a_csv_file_into_files() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("orders.csv");
    write(&input, ORDERS_CSV);
    let sql = dir.path().join("pipeline.sql");
    write(&sql, &orders_pipeline(dir.path(), &input));

    let out = run(&["run", sql.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "exit {:?}\nstderr:\n{}",
        out.status,
        stderr(&out)
    );
    assert_eq!(
        committed_csv_rows(&dir.path().join("out")),
        vec!["2,bob,75", "3,carol,120", "5,erin,51"]
    );
    let err = stderr(&out);
    assert!(err.contains("pipeline finished"), "{err}");
    assert!(err.contains("source orders: 5 events read"), "{err}");
    assert!(err.contains("sink big_out: 3 records written"), "{err}");
}

#[test]
fn run_with_a_syntax_error_exits_1_naming_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let sql = dir.path().join("bad.sql");
    write(&sql, "CREATE SOURCE a (x BIGINT);\n\n  SELEC x FROM a;\n");
    let out = run(&["run", sql.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "stderr:\n{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("line 3, column 3"), "{err}");
    assert!(err.contains("bad.sql"), "{err}");
}

#[test]
fn run_with_a_missing_pipeline_file_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.sql");
    let out = run(&["run", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("cannot read") && err.contains("nope.sql"),
        "{err}"
    );
}

#[test]
fn run_with_a_missing_input_file_exits_1_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.csv");
    let sql = dir.path().join("pipeline.sql");
    write(&sql, &orders_pipeline(dir.path(), &missing));
    let out = run(&["run", sql.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "stderr:\n{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("missing.csv") && err.contains("orders"),
        "{err}"
    );
    assert!(
        !dir.path().join("out").exists(),
        "the sink must not be created"
    );
}

#[test]
fn run_with_bad_input_rows_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("orders.csv");
    write(
        &input,
        "id,name,amount,ts\n1,alice,lots,2024-01-01 00:00:00.000\n",
    );
    let sql = dir.path().join("pipeline.sql");
    write(&sql, &orders_pipeline(dir.path(), &input));
    let out = run(&["run", sql.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "stderr:\n{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("the pipeline failed") && err.contains("lots"),
        "{err}"
    );
}

/// Writes the orders input and pipeline into `dir`: (input, pipeline file, storage dir).
fn orders_setup(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let input = dir.join("orders.csv");
    write(&input, ORDERS_CSV);
    let sql = dir.join("pipeline.sql");
    write(&sql, &orders_pipeline(dir, &input));
    (input, sql, dir.join("state"))
}

#[test]
fn durable_rerun_resumes_without_repeating_output() {
    let dir = tempfile::tempdir().unwrap();
    let (input, sql, state) = orders_setup(dir.path());
    let state_arg = state.to_str().unwrap();

    let out = run(&["run", "--storage-dir", state_arg, sql.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let expected = vec!["2,bob,75", "3,carol,120", "5,erin,51"];
    assert_eq!(committed_csv_rows(&dir.path().join("out")), expected);
    assert!(state.join("checkpoints").join("LATEST").exists());

    // The rerun resumes after the input it already read: nothing is written twice.
    let out = run(&["run", "--storage-dir", state_arg, sql.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(committed_csv_rows(&dir.path().join("out")), expected);

    // A changed stream is refused with its name, until its state is reset.
    let changed = orders_pipeline(dir.path(), &input).replace("amount > 50", "amount > 60");
    write(&sql, &changed);
    let out = run(&["run", "--storage-dir", state_arg, sql.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("big_orders") && err.contains("--reset-state"),
        "{err}"
    );
    let out = run(&[
        "run",
        "--storage-dir",
        state_arg,
        "--reset-state",
        "big_orders",
        sql.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let out = run(&["run", "--checkpoint-interval", "1s", sql.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("--storage-dir"), "{err}");
    let out = run(&[
        "run",
        "--checkpoint-store",
        "file:///tmp/x",
        sql.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--storage-dir"), "{}", stderr(&out));
    let out = run(&[
        "run",
        "--storage-dir",
        state_arg,
        "--checkpoint-interval",
        "soon",
        sql.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("--checkpoint-interval soon"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn checkpoints_can_go_to_an_object_store_url() {
    let dir = tempfile::tempdir().unwrap();
    let (_, sql, state) = orders_setup(dir.path());
    let store = format!("file://{}/object-store/pipeline", dir.path().display());
    let args = [
        "run",
        "--storage-dir",
        state.to_str().unwrap(),
        "--checkpoint-store",
        &store,
        sql.to_str().unwrap(),
    ];
    let out = run(&args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let expected = vec!["2,bob,75", "3,carol,120", "5,erin,51"];
    assert_eq!(committed_csv_rows(&dir.path().join("out")), expected);
    assert!(dir.path().join("object-store/pipeline/LATEST").exists());
    assert!(!state.join("checkpoints").exists());
    // The rerun resumes from the store: nothing is written twice.
    let out = run(&args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("resumed from checkpoint"),
        "{}",
        stderr(&out)
    );
    assert_eq!(committed_csv_rows(&dir.path().join("out")), expected);
    // An unusable store is a user-facing error at open.
    let out = run(&[
        "run",
        "--storage-dir",
        state.to_str().unwrap(),
        "--checkpoint-store",
        "gopher://nowhere",
        sql.to_str().unwrap(),
    ]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("gopher://nowhere"),
        "{}",
        stderr(&out)
    );
}

#[cfg(unix)]
#[test]
fn run_stops_cleanly_on_sigint() {
    let dir = tempfile::tempdir().unwrap();
    let sql = dir.path().join("endless.sql");
    write(
        &sql,
        &format!(
            "CREATE SOURCE bids (auction BIGINT, price BIGINT) FROM DATAGEN (rate = '1000');\n\
             CREATE SINK all_bids FROM bids INTO FILES (path = '{}', format = 'csv');\n",
            dir.path().join("out").display()
        ),
    );
    let child = laminardb()
        .args(["run", sql.to_str().unwrap()])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = finish(child);
    assert!(
        out.status.success(),
        "exit {:?}\nstderr:\n{}",
        out.status,
        stderr(&out)
    );
    let err = stderr(&out);
    assert!(err.contains("pipeline stopped"), "{err}");
    // The sink committed what it received at shutdown.
    let mut rows = 0;
    for entry in std::fs::read_dir(dir.path().join("out")).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("part-")
        {
            rows += std::fs::read_to_string(&path).unwrap().lines().count() - 1;
        }
    }
    assert!(rows > 0, "{err}");
    assert!(
        err.contains(&format!("sink all_bids: {rows} records written")),
        "{rows} rows; {err}"
    );
}

#[test]
fn demo_with_events_prints_rows_and_exits() {
    let out = run(&["demo", "--events", "2000"]);
    assert!(
        out.status.success(),
        "exit {:?}\nstderr:\n{}",
        out.status,
        stderr(&out)
    );
    let text = stdout(&out);
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("auction,bidder,price,price_eur,channel,ts"),
        "{text}"
    );
    let rows: Vec<&str> = lines.collect();
    assert!(!rows.is_empty(), "no rows printed");
    for row in &rows {
        let price: i64 = row.split(',').nth(2).unwrap().parse().unwrap();
        assert!(price > 600_000, "{row}");
    }
    let err = stderr(&out);
    assert!(err.contains("2,000 bids generated"), "{err}");
    assert!(err.contains(&format!("{} of them", rows.len())), "{err}");
}

#[test]
fn demo_prints_json_lines() {
    let out = run(&[
        "demo", "--events", "1000", "--rate", "0", "--format", "json",
    ]);
    assert!(out.status.success(), "stderr:\n{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.lines().count() > 0, "no rows");
    assert!(
        text.lines()
            .all(|l| l.starts_with("{\"auction\":") && l.ends_with('}')),
        "{text}"
    );
}

#[test]
fn shell_reads_statements_from_stdin() {
    let out = run_with_stdin(
        &[],
        "CREATE SOURCE readings (sensor VARCHAR, temp DOUBLE, ts BIGINT);\nSHOW SOURCES;\n",
    );
    assert!(out.status.success(), "stderr:\n{}", stderr(&out));
    assert_eq!(stdout(&out), "CREATE SOURCE readings\nname\nreadings\n");
}

#[test]
fn shell_subcommand_prints_tables_and_live_rows() {
    let out = run_with_stdin(
        &["shell", "--format", "table"],
        "CREATE SOURCE s (x BIGINT);\n\
         SELECT x, x * 10 AS y FROM s WHERE x > 1;\n\
         INSERT INTO s VALUES (1), (2), (3);\n\
         SHOW SOURCES;\n",
    );
    assert!(out.status.success(), "stderr:\n{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("CREATE SOURCE s\n"), "{text}");
    assert!(text.contains("3 rows\n"), "{text}");
    assert!(
        text.contains("| 2 | 20 |") && text.contains("| 3 | 30 |"),
        "{text}"
    );
    assert!(!text.contains("| 1 | 10 |"), "{text}");
    assert!(text.contains("| s    |\n+------+\n(1 row)"), "{text}");
}

#[test]
fn shell_stops_at_the_first_error_with_its_position_in_the_input() {
    let out = run_with_stdin(
        &[],
        "CREATE SOURCE a (x BIGINT);\nSHOW SOURCES; CREATE SORCE b (x BIGINT);\nCREATE SOURCE c (x BIGINT);\n",
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("<stdin>") && err.contains("line 2, column 22"),
        "{err}"
    );
    let text = stdout(&out);
    assert!(
        text.contains("CREATE SOURCE a") && !text.contains("CREATE SOURCE c"),
        "{text}"
    );
}

#[test]
fn bad_arguments_exit_1() {
    let out = run(&["run"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("FILE.sql"), "{}", stderr(&out));

    let out = finish(
        Command::new(env!("CARGO_BIN_EXE_laminardb"))
            .args(["demo", "--events", "10"])
            .env("LAMINAR_WORKERS", "none")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("--workers"), "{}", stderr(&out));
}

#[test]
fn var_flag_substitutes_config_variables() {
    let out = run_with_stdin(
        &["--var", "T=orders"],
        "CREATE SOURCE ${T} (id BIGINT);\nSHOW SOURCES;\n",
    );
    assert!(out.status.success(), "stderr:\n{}", stderr(&out));
    assert!(stdout(&out).contains("orders"), "{}", stdout(&out));
    let out = run_with_stdin(&[], "CREATE SOURCE ${T} (id BIGINT);\n");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("${T}"), "{}", stderr(&out));
}

#[test]
fn shell_subscribe_prints_a_changelog_live() {
    let out = run_with_stdin(
        &["shell", "--format", "table"],
        "CREATE SOURCE s (k VARCHAR, x BIGINT);\n\
         CREATE STREAM totals AS SELECT k, SUM(x) AS total FROM s GROUP BY k;\n\
         SUBSCRIBE totals;\n\
         INSERT INTO s VALUES ('a', 1);\n\
         INSERT INTO s VALUES ('a', 2);\n",
    );
    assert!(out.status.success(), "stderr:\n{}", stderr(&out));
    let text = stdout(&out);
    let row = |value: &str, op: &str| {
        text.lines().any(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            cells.len() >= 5 && cells[1] == "a" && cells[2] == value && cells[3] == op
        })
    };
    assert!(row("1", "I") && row("1", "U-") && row("3", "U+"), "{text}");
}

#[test]
fn shell_queries_and_subscribes_a_materialized_view() {
    let out = run_with_stdin(
        &["shell", "--format", "table"],
        "CREATE SOURCE s (k VARCHAR, x BIGINT);\n\
         CREATE MATERIALIZED VIEW totals AS SELECT k, SUM(x) AS total FROM s GROUP BY k;\n\
         INSERT INTO s VALUES ('a', 1), ('b', 7);\n\
         SELECT COUNT(*) AS view_rows FROM totals;\n\
         SUBSCRIBE totals;\n\
         INSERT INTO s VALUES ('a', 2);\n",
    );
    assert!(out.status.success(), "stderr:\n{}", stderr(&out));
    let text = stdout(&out);
    let row = |cells_wanted: &[&str]| {
        text.lines().any(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            cells.len() > cells_wanted.len() && cells[1..=cells_wanted.len()] == *cells_wanted
        })
    };
    // The snapshot query prints the view's rows once (how many depends on how far the
    // INSERT got); SUBSCRIBE prints them, then the changes.
    assert!(text.contains("view_rows"), "{text}");
    assert!(
        row(&["a", "1", "I"]) && row(&["a", "1", "U-"]) && row(&["a", "3", "U+"]),
        "{text}"
    );
}
