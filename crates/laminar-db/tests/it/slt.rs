//! Golden SQL tests in sqllogictest format with streaming directives.
//!
//! Every `.slt` file under `tests/slt/` runs against a fresh database. Besides SQL, the
//! harness understands:
//!
//! | directive | effect |
//! |---|---|
//! | `WATERMARK <source> <ms>` | `watermark(ms)` on the source, then wait until processed |
//! | `EMITTED <stream>` | (query) every row the stream emitted since it was created |
//! | `EMITTED <stream> BY <n>` | (query) the same, grouped by column `n` (from 0) with each group's rows in emission order: for partitions that parallel instances emit in any interleaving |
//! | `WATERMARK_OF <stream>` | (query) the stream's output watermark (`NULL` if none) |
//! | `METRIC <kind> <name> <field>` | (query) one metric value, e.g. `METRIC stream t total_events` |
//!
//! Every stream created in a file is subscribed at creation, so `EMITTED` sees all output.
//! `INSERT INTO source VALUES ...` pushes rows and waits until they are processed. Errors are
//! reported as `[CODE] message`, so `statement error SQL_SYNTAX.*line 1` checks code and text.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use arrow::record_batch::RecordBatch;
use laminar_db::{ArrowSubscription, ExecuteResult, LaminarDB};
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType};

use crate::util::rows;

#[derive(Debug)]
struct HarnessError(String);

impl std::fmt::Display for HarnessError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HarnessError {}

struct Harness {
    db: LaminarDB,
    subscriptions: HashMap<String, (ArrowSubscription, Vec<RecordBatch>)>,
}

const WAIT: Duration = Duration::from_secs(10);

impl Harness {
    fn new() -> Harness {
        let db = LaminarDB::builder()
            .workers(2)
            .config_var("TOPIC", "orders")
            .build_sync()
            .expect("open");
        Harness {
            db,
            subscriptions: HashMap::new(),
        }
    }

    fn drain(&mut self, name: &str) -> Result<Vec<RecordBatch>, HarnessError> {
        self.db.wait_idle(WAIT);
        let (sub, collected) = self
            .subscriptions
            .get_mut(name)
            .ok_or_else(|| HarnessError(format!("no stream '{name}' was created in this file")))?;
        while let Some(b) = sub.poll() {
            collected.push(b);
        }
        Ok(collected.clone())
    }

    fn directive(
        &mut self,
        sql: &str,
    ) -> Option<Result<DBOutput<DefaultColumnType>, HarnessError>> {
        let words: Vec<&str> = sql.split_whitespace().collect();
        let text = |v: Vec<Vec<String>>| {
            let width = v.first().map_or(1, |r| r.len());
            DBOutput::Rows {
                types: vec![DefaultColumnType::Any; width],
                rows: v,
            }
        };
        match words.as_slice() {
            ["WATERMARK", source, ts] => Some((|| {
                let ts: i64 = ts
                    .parse()
                    .map_err(|_| HarnessError(format!("bad watermark '{ts}'")))?;
                let handle = self
                    .db
                    .source_untyped(source)
                    .map_err(|e| HarnessError(format!("[{}] {e}", e.code())))?;
                handle
                    .watermark(ts)
                    .map_err(|e| HarnessError(e.to_string()))?;
                self.db.wait_idle(WAIT);
                Ok(DBOutput::StatementComplete(0))
            })()),
            ["EMITTED", stream] => Some(self.drain(stream).map(|b| text(rows(&b)))),
            ["EMITTED", stream, "BY", column] => Some((|| {
                let column: usize = column.parse().map_err(|_| {
                    HarnessError(format!(
                        "EMITTED .. BY takes a column number, not '{column}'"
                    ))
                })?;
                let mut emitted = rows(&self.drain(stream)?);
                // Stable: each partition's rows keep the order they were emitted in.
                emitted.sort_by(|a, b| a.get(column).cmp(&b.get(column)));
                Ok(text(emitted))
            })()),
            ["WATERMARK_OF", stream] => Some((|| {
                self.db.wait_idle(WAIT);
                let m = self
                    .db
                    .stream_metrics(stream)
                    .map_err(|e| HarnessError(e.to_string()))?;
                Ok(text(vec![vec![
                    m.watermark.map_or("NULL".to_string(), |w| w.to_string()),
                ]]))
            })()),
            ["METRIC", kind, name, field] => Some((|| {
                self.db.wait_idle(WAIT);
                let value = match (*kind, *field) {
                    ("stream", "total_events") => self
                        .db
                        .stream_metrics(name)
                        .map(|m| m.total_events.to_string()),
                    ("stream", field) => self.db.stream_metrics(name).and_then(|m| {
                        Ok(match field {
                            "late_total" => m.late_total,
                            "late_dropped" => m.late_dropped,
                            "late_side_output" => m.late_side_output,
                            "invalid_rows" => m.invalid_rows,
                            "state_rows" => m.state_rows,
                            // Byte counts vary by allocator; assert only that some are held.
                            "state_bytes_nonzero" => u64::from(m.state_bytes > 0),
                            _ => {
                                return Err(laminar_db::DbError::InvalidOperation(format!(
                                    "unknown metric stream {field}"
                                )));
                            }
                        }
                        .to_string())
                    }),
                    ("source", "total_events") => self
                        .db
                        .source_metrics(name)
                        .map(|m| m.total_events.to_string()),
                    ("source", "watermark") => self
                        .db
                        .source_metrics(name)
                        .map(|m| m.watermark.map_or("NULL".into(), |w| w.to_string())),
                    ("source", "dropped") => {
                        self.db.source_metrics(name).map(|m| m.dropped.to_string())
                    }
                    ("pipeline", "watermark") => Ok(self
                        .db
                        .pipeline_watermark()
                        .map_or("NULL".into(), |w| w.to_string())),
                    _ => return Err(HarnessError(format!("unknown metric {kind} {field}"))),
                }
                .map_err(|e| HarnessError(e.to_string()))?;
                Ok(text(vec![vec![value]]))
            })()),
            _ => None,
        }
    }
}

#[async_trait::async_trait]
impl AsyncDB for Harness {
    type Error = HarnessError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, HarnessError> {
        if let Some(out) = self.directive(sql.trim()) {
            return out;
        }
        let result = self
            .db
            .execute(sql)
            .await
            .map_err(|e| HarnessError(format!("[{}] {e}", e.code())))?;
        match result {
            ExecuteResult::Ddl(info) => {
                if info.statement_type == "CREATE STREAM"
                    || info.statement_type == "CREATE MATERIALIZED VIEW"
                {
                    // The stream (or view) and any LATE DATA TO stream it created.
                    let mut streams = match self.db.execute("SHOW STREAMS").await {
                        Ok(ExecuteResult::Metadata(batch)) => rows(std::slice::from_ref(&batch))
                            .into_iter()
                            .filter_map(|r| r.into_iter().next())
                            .collect::<Vec<_>>(),
                        _ => Vec::new(),
                    };
                    streams.push(info.object_name.clone());
                    // A new view first takes in the contents of the views it reads.
                    self.db.wait_idle(WAIT);
                    for name in streams {
                        if self.subscriptions.contains_key(&name) {
                            continue;
                        }
                        let sub = self
                            .db
                            .subscribe_arrow(&name)
                            .map_err(|e| HarnessError(e.to_string()))?;
                        self.subscriptions.insert(name, (sub, Vec::new()));
                    }
                }
                if info.statement_type.starts_with("DROP") {
                    let name = info.object_name.clone();
                    self.subscriptions.remove(&name);
                }
                Ok(DBOutput::StatementComplete(0))
            }
            ExecuteResult::RowsAffected(n) => {
                self.db.wait_idle(WAIT);
                Ok(DBOutput::StatementComplete(n))
            }
            ExecuteResult::Metadata(batch) => {
                let r = rows(std::slice::from_ref(&batch));
                Ok(DBOutput::Rows {
                    types: vec![DefaultColumnType::Any; batch.num_columns()],
                    rows: r,
                })
            }
            ExecuteResult::Query(handle) => {
                let sub = handle
                    .subscribe_arrow()
                    .map_err(|e| HarnessError(e.to_string()))?;
                self.subscriptions
                    .insert("query".to_string(), (sub, Vec::new()));
                std::mem::forget(handle);
                Ok(DBOutput::StatementComplete(0))
            }
        }
    }

    async fn shutdown(&mut self) {
        self.db.shutdown_sync();
    }

    fn engine_name(&self) -> &str {
        "laminardb"
    }
}

fn slt_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            slt_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "slt") {
            out.push(path);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_sql_files() {
    // The runner (cargo test / nextest) sets CARGO_MANIFEST_DIR for the test process; prefer
    // it to the compile-time value, so a binary shared between checkouts through one target
    // directory reads the golden files of the checkout it runs for.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    let root = Path::new(&manifest_dir).join("../../tests/slt");
    let mut files = Vec::new();
    slt_files(&root, &mut files);
    assert!(!files.is_empty(), "no .slt files under {}", root.display());
    let filter = std::env::var("SLT_FILTER").unwrap_or_default();
    let mut failures = Vec::new();
    for file in files
        .iter()
        .filter(|f| f.to_string_lossy().contains(&filter))
    {
        let mut runner = sqllogictest::Runner::new(|| async { Ok(Harness::new()) });
        runner.with_column_validator(|_, _| true);
        if let Err(e) = runner.run_file_async(file).await {
            failures.push(format!("{}:\n{e}", file.display()));
        }
        runner.shutdown_async().await;
    }
    assert!(
        failures.is_empty(),
        "{} golden file(s) failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
