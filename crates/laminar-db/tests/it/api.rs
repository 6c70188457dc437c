//! The embedded API and the acceptance checks of SPEC 1, 2.5, 3 and 7.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use laminar_db::{
    BackpressureStrategy, ChangeEvent, DbError, ExecuteResult, FromRow, LaminarDB, PipelineState,
    Record, SubscriptionBackpressure, SubscriptionConfig,
};

use crate::util::rows;

const WAIT: Duration = Duration::from_secs(10);

fn db() -> LaminarDB {
    LaminarDB::builder().workers(2).build_sync().unwrap()
}

fn readings(sensors: &[&str], temps: &[f64], ts: &[i64]) -> RecordBatch {
    let schema = Schema::new(vec![
        Field::new("sensor", DataType::Utf8, false),
        Field::new("temp", DataType::Float64, true),
        Field::new("ts", DataType::Int64, false),
    ]);
    RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(StringArray::from(sensors.to_vec())) as ArrayRef,
            Arc::new(Float64Array::from(temps.to_vec())),
            Arc::new(Int64Array::from(ts.to_vec())),
        ],
    )
    .unwrap()
}

const READINGS: &str = "CREATE SOURCE readings (sensor VARCHAR NOT NULL, temp DOUBLE, ts BIGINT NOT NULL, \
                        WATERMARK FOR ts AS ts - INTERVAL '2' SECOND)";

#[derive(Record, Clone, Debug)]
struct Reading {
    sensor: String,
    temp: Option<f64>,
    #[event_time]
    ts: i64,
}

#[derive(FromRow, Debug, PartialEq)]
struct Hot {
    temp: Option<f64>,
    sensor: String,
}

#[tokio::test]
async fn quickstart_open_execute_push_subscribe_shutdown() {
    let db = db();
    db.execute(&format!(
        "{READINGS}; CREATE STREAM hot AS SELECT sensor, temp FROM readings WHERE temp > 80"
    ))
    .await
    .unwrap();
    let mut hot = db.subscribe::<Hot>("hot").unwrap();
    let src = db.source::<Reading>("readings").unwrap();
    src.push(Reading {
        sensor: "a".into(),
        temp: Some(95.0),
        ts: 1000,
    })
    .unwrap();
    src.push_batch(&[
        Reading {
            sensor: "b".into(),
            temp: Some(20.0),
            ts: 2000,
        },
        Reading {
            sensor: "c".into(),
            temp: None,
            ts: 3000,
        },
        Reading {
            sensor: "d".into(),
            temp: Some(81.0),
            ts: 4000,
        },
    ])
    .unwrap();
    assert!(db.wait_idle(WAIT));
    let mut got = Vec::new();
    while let Some(rows) = hot.poll().unwrap() {
        got.extend(rows);
    }
    assert_eq!(
        got,
        vec![
            Hot {
                temp: Some(95.0),
                sensor: "a".into()
            },
            Hot {
                temp: Some(81.0),
                sensor: "d".into()
            }
        ]
    );
    assert_eq!(src.current_watermark(), Some(2000));
    db.shutdown().await.unwrap();
}

#[tokio::test]
async fn from_row_mismatch_fails_at_subscribe() {
    #[derive(FromRow, Debug)]
    struct Wrong {
        #[allow(dead_code)]
        nope: i64,
    }
    let db = db();
    db.execute(&format!(
        "{READINGS}; CREATE STREAM t AS SELECT sensor FROM readings"
    ))
    .await
    .unwrap();
    let err = db.subscribe::<Wrong>("t").err().unwrap();
    assert_eq!(err.code(), "SCHEMA_MISMATCH");
    assert!(err.to_string().contains("nope"), "{err}");
}

#[tokio::test]
async fn typed_handle_checks_the_declared_schema() {
    #[derive(Record, Clone)]
    struct Other {
        sensor: String,
        ts: i64,
    }
    let db = db();
    db.execute(READINGS).await.unwrap();
    let err = db.source::<Other>("readings").err().unwrap();
    assert_eq!(err.code(), "SCHEMA_MISMATCH");
    assert!(err.to_string().contains("temp"), "{err}");
}

#[tokio::test]
async fn push_arrow_rejects_mismatched_batches_whole() {
    let db = db();
    db.execute(&format!(
        "{READINGS}; CREATE STREAM t AS SELECT * FROM readings"
    ))
    .await
    .unwrap();
    let mut sub = db.subscribe_arrow("t").unwrap();
    let src = db.source_untyped("readings").unwrap();
    // Wrong type: names the column and both types.
    let bad = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("sensor", DataType::Utf8, false),
            Field::new("temp", DataType::Utf8, true),
            Field::new("ts", DataType::Int64, false),
        ])),
        vec![
            Arc::new(StringArray::from(vec!["a"])) as ArrayRef,
            Arc::new(StringArray::from(vec!["hot"])),
            Arc::new(Int64Array::from(vec![1])),
        ],
    )
    .unwrap();
    let err = src.push_arrow(bad).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("temp") && text.contains("Float64") && text.contains("Utf8"),
        "{text}"
    );
    // Missing column.
    let missing = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new(
            "sensor",
            DataType::Utf8,
            false,
        )])),
        vec![Arc::new(StringArray::from(vec!["a"])) as ArrayRef],
    )
    .unwrap();
    assert!(
        src.push_arrow(missing)
            .unwrap_err()
            .to_string()
            .contains("'temp'")
    );
    // Columns in another order are matched by name.
    let reordered = readings(&["x"], &[1.0], &[5]);
    let reordered = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            reordered.schema().field(2).clone(),
            reordered.schema().field(0).clone(),
            reordered.schema().field(1).clone(),
        ])),
        vec![
            reordered.column(2).clone(),
            reordered.column(0).clone(),
            reordered.column(1).clone(),
        ],
    )
    .unwrap();
    src.push_arrow(reordered).unwrap();
    assert!(db.wait_idle(WAIT));
    let got = rows(&[sub.poll().unwrap()]);
    assert_eq!(got, vec![vec!["x", "1.0", "5"]]);
    assert!(
        sub.poll().is_none(),
        "nothing of the rejected batches was enqueued"
    );
}

#[tokio::test]
async fn spec_1_2_multi_statement_failure_semantics() {
    let db = db();
    let err = db
        .execute("CREATE SOURCE a (x INT); GARBAGE; CREATE SOURCE c (x INT)")
        .await
        .unwrap_err();
    match err {
        DbError::SqlParse { line, column, .. } => assert_eq!((line, column), (1, 26)),
        other => panic!("expected a parse error, got {other}"),
    }
    assert_eq!(db.sources(), vec!["a".to_string()]);
}

#[tokio::test]
async fn spec_1_1_config_vars() {
    let db = LaminarDB::builder()
        .config_var("T", "orders")
        .build()
        .await
        .unwrap();
    db.execute("CREATE SOURCE ${T} (id BIGINT)").await.unwrap();
    assert_eq!(db.sources(), vec!["orders".to_string()]);
    let err = db
        .execute("CREATE SOURCE ${NOPE} (id BIGINT)")
        .await
        .unwrap_err();
    assert!(
        matches!(err, DbError::UnresolvedConfigVar(ref n) if n == "NOPE"),
        "{err}"
    );
}

#[tokio::test]
async fn spec_1_3_lifecycle() {
    let db = db();
    assert_eq!(db.pipeline_state(), PipelineState::Created);
    db.start().await.unwrap();
    db.start().await.unwrap();
    assert_eq!(db.pipeline_state(), PipelineState::Running);
    db.shutdown().await.unwrap();
    db.shutdown().await.unwrap();
    assert_eq!(db.pipeline_state(), PipelineState::Stopped);
    assert!(matches!(
        db.start().await,
        Err(DbError::InvalidOperation(_))
    ));
    assert!(matches!(
        db.execute("SHOW SOURCES").await,
        Err(DbError::Shutdown)
    ));
    assert_eq!(db.checkpoint().unwrap(), None);
}

#[tokio::test]
async fn spec_1_4_reject_and_drop_oldest() {
    // No draining: a stream whose subscriber never reads and tiny queues everywhere.
    let db = LaminarDB::builder()
        .workers(1)
        .subscription_buffer(1)
        .build_sync()
        .unwrap();
    db.execute(
        "CREATE SOURCE r (x BIGINT) WITH (buffer_size = 4, backpressure = 'reject'); \
         CREATE SOURCE d (x BIGINT) WITH (buffer_size = 4, backpressure = 'drop_oldest'); \
         CREATE STREAM rs AS SELECT x FROM r; CREATE STREAM ds AS SELECT x FROM d",
    )
    .await
    .unwrap();
    let rs = db.subscribe_arrow("rs").unwrap();
    let mut ds = db.subscribe_arrow("ds").unwrap();
    let one = |v: i64| {
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, true)])),
            vec![Arc::new(Int64Array::from(vec![v])) as ArrayRef],
        )
        .unwrap()
    };
    let r = db.source_untyped("r").unwrap();
    let mut full = None;
    // Enough pushes to fill the source queue and the 1024-message edge behind it even when
    // the worker drains as fast as the pushes arrive.
    for v in 0..5000 {
        if let Err(e) = r.push_arrow(one(v)) {
            full = Some(e);
            break;
        }
    }
    let full = full.expect("a bounded pipeline with no reader must eventually reject");
    assert_eq!(full.code(), "CHANNEL_FULL");
    // The worker may still take a message or two off the queue before it blocks on its full
    // downstream queue; once it has, pushes fill the queue again and stay rejected.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        while r.push_arrow(one(-1)).is_ok() {}
        std::thread::sleep(Duration::from_millis(2));
        if r.is_backpressured() || std::time::Instant::now() >= deadline {
            break;
        }
    }
    assert!(
        r.is_backpressured(),
        "pending {} of {}",
        r.pending(),
        r.capacity()
    );
    // drop_oldest never fails; evicted rows are counted and never seen downstream.
    let d = db.source_untyped("d").unwrap();
    const PUSHED: i64 = 5000;
    for v in 0..PUSHED {
        d.push_arrow(one(v)).unwrap();
    }
    let dropped = db.source_metrics("d").unwrap().dropped;
    assert!(dropped > 0, "with no reader some rows must be evicted");
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + WAIT;
    while seen.len() + (dropped as usize) < PUSHED as usize && std::time::Instant::now() < deadline
    {
        if let Some(b) = ds.recv_timeout(Duration::from_millis(50)).unwrap() {
            seen.extend(
                b.column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .values()
                    .iter()
                    .copied(),
            );
        }
    }
    assert_eq!(
        seen.len() as u64 + db.source_metrics("d").unwrap().dropped,
        PUSHED as u64
    );
    // Eviction takes the oldest queued rows: the newest row always arrives. (Which rows were
    // still queued depends on how far the worker had drained, so the first row is not fixed.)
    assert_eq!(
        seen.last(),
        Some(&(PUSHED - 1)),
        "the newest row is never evicted"
    );
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "order kept");
    drop(rs);
}

#[tokio::test]
async fn spec_1_5_push_subscription_lagged() {
    let db = db();
    // No event time: every event is a data event (watermark events would also count).
    db.execute(
        "CREATE SOURCE readings (sensor VARCHAR NOT NULL, temp DOUBLE, ts BIGINT NOT NULL); \
                CREATE STREAM t AS SELECT sensor FROM readings",
    )
    .await
    .unwrap();
    let mut sub = db
        .subscribe_push(
            "t",
            SubscriptionConfig {
                buffer_size: 2,
                backpressure: SubscriptionBackpressure::DropOldest,
                // One event per pushed batch (merging would make fewer events of them).
                max_batch_size: 1,
                ..Default::default()
            },
        )
        .unwrap();
    let src = db.source_untyped("readings").unwrap();
    for i in 0..5 {
        src.push_arrow(readings(&[&format!("s{i}")], &[1.0], &[0]))
            .unwrap();
    }
    assert!(db.wait_idle(WAIT));
    std::thread::sleep(Duration::from_millis(200));
    let first = sub.recv().await.unwrap();
    assert!(matches!(first, ChangeEvent::Lagged(3)), "{first:?}");
    for expected in ["s3", "s4"] {
        match sub.recv().await.unwrap() {
            ChangeEvent::Insert(data) => assert_eq!(
                rows(&[(*data.batch).clone()]),
                vec![vec![expected.to_string()]]
            ),
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn push_subscription_filter_callback_and_watermarks() {
    let db = db();
    db.execute(&format!(
        "{READINGS}; CREATE STREAM t AS SELECT sensor, temp, ts FROM readings"
    ))
    .await
    .unwrap();
    let err = db
        .subscribe_push(
            "t",
            SubscriptionConfig {
                filter: Some("nope > 1".into()),
                ..Default::default()
            },
        )
        .err()
        .unwrap();
    assert!(err.to_string().contains("nope"), "{err}");
    let mut sub = db
        .subscribe_push(
            "t",
            SubscriptionConfig {
                filter: Some("temp > 50".into()),
                ..Default::default()
            },
        )
        .unwrap();
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let handle = {
        let seen = seen.clone();
        db.subscribe_callback("t", SubscriptionConfig::default(), move |ev| {
            seen.lock().push(ev)
        })
        .unwrap()
    };
    db.source_untyped("readings")
        .unwrap()
        .push_arrow(readings(&["a", "b"], &[10.0, 60.0], &[5000, 6000]))
        .unwrap();
    let mut inserted = Vec::new();
    let mut watermark = None;
    while inserted.is_empty() || watermark.is_none() {
        match tokio::time::timeout(WAIT, sub.recv())
            .await
            .unwrap()
            .unwrap()
        {
            ChangeEvent::Insert(d) => inserted.extend(rows(&[(*d.batch).clone()])),
            ChangeEvent::Watermark(w) => watermark = Some(w),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        inserted,
        vec![vec!["b".to_string(), "60.0".into(), "6000".into()]]
    );
    assert_eq!(watermark, Some(4000));
    let deadline = std::time::Instant::now() + WAIT;
    while handle.delivered() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        seen.lock()
            .iter()
            .any(|e| matches!(e, ChangeEvent::Insert(d) if d.batch.num_rows() == 2))
    );
    handle.cancel();
}

#[tokio::test]
async fn spec_1_6_continuous_select_and_cancel() {
    let db = db();
    db.execute(READINGS).await.unwrap();
    let ExecuteResult::Query(handle) = db.execute("SELECT sensor FROM readings").await.unwrap()
    else {
        panic!("expected a query handle")
    };
    assert!(handle.is_active());
    let mut sub = handle.subscribe_arrow().unwrap();
    db.source_untyped("readings")
        .unwrap()
        .push_arrow(readings(&["a"], &[1.0], &[1]))
        .unwrap();
    let batch = sub.recv_timeout(WAIT).unwrap().unwrap();
    assert_eq!(rows(&[batch]), vec![vec!["a".to_string()]]);
    let ExecuteResult::Metadata(q) = db.execute("SHOW QUERIES").await.unwrap() else {
        panic!()
    };
    assert_eq!(rows(&[q])[0][2], "true");
    handle.cancel().unwrap();
    assert!(!handle.is_active());
    let ExecuteResult::Metadata(q) = db.execute("SHOW QUERIES").await.unwrap() else {
        panic!()
    };
    assert_eq!(
        rows(&[q]),
        vec![vec![
            handle.id.to_string(),
            "SELECT sensor FROM readings".into(),
            "false".into()
        ]]
    );
    // Dropping a handle cancels its query.
    let ExecuteResult::Query(dropped) = db.execute("SELECT ts FROM readings").await.unwrap() else {
        panic!("expected a query handle")
    };
    let id = dropped.id;
    drop(dropped);
    let ExecuteResult::Metadata(q) = db.execute("SHOW QUERIES").await.unwrap() else {
        panic!()
    };
    assert!(rows(&[q]).contains(&vec![
        id.to_string(),
        "SELECT ts FROM readings".into(),
        "false".into()
    ]));
    // Bounded queries run through query().
    let out = db.query("SELECT 1 + 1 AS two").await.unwrap();
    assert_eq!(rows(&out), vec![vec!["2".to_string()]]);
    assert_eq!(
        db.query("SELECT * FROM readings").await.unwrap_err().code(),
        "INVALID_OPERATION"
    );
}

#[tokio::test]
async fn spec_2_3_stream_definition_and_2_5_sink_filter() {
    let dir = tempfile::tempdir().unwrap();
    let db = db();
    db.execute(&format!(
        "{READINGS}; CREATE STREAM hot_sensors AS SELECT sensor, temp AS avg_temp FROM readings; \
         CREATE SINK hot_alerts FROM hot_sensors WHERE avg_temp > 95 INTO FILES (path = '{}', format = 'csv')",
        dir.path().display()
    ))
    .await
    .unwrap();
    db.source_untyped("readings")
        .unwrap()
        .push_arrow(readings(&["a", "b"], &[96.0, 90.0], &[1, 2]))
        .unwrap();
    assert!(db.wait_idle(WAIT));
    db.shutdown().await.unwrap();
    let mut files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.retain(|p| {
        p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("part-")
    });
    assert_eq!(files.len(), 1, "{files:?}");
    let text = std::fs::read_to_string(&files[0]).unwrap();
    assert_eq!(text.trim(), "sensor,avg_temp\na,96.0");
}

#[tokio::test]
async fn spec_3_pipeline_watermark_is_min_over_sources() {
    let db = db();
    db.execute(
        "CREATE SOURCE a (ts BIGINT, WATERMARK FOR ts AS ts); CREATE SOURCE b (ts BIGINT, WATERMARK FOR ts AS ts)",
    )
    .await
    .unwrap();
    db.source_untyped("a").unwrap().watermark(5000).unwrap();
    assert!(db.wait_idle(WAIT));
    assert_eq!(db.pipeline_watermark(), None, "b has no watermark yet");
    db.source_untyped("b").unwrap().watermark(9000).unwrap();
    assert!(db.wait_idle(WAIT));
    assert_eq!(db.pipeline_watermark(), Some(5000));
}

#[tokio::test]
async fn idle_source_does_not_hold_back_a_union() {
    let db = LaminarDB::builder()
        .workers(1)
        .idle_timeout(Duration::from_millis(100))
        .build_sync()
        .unwrap();
    db.execute(
        "CREATE SOURCE a (ts BIGINT, WATERMARK FOR ts AS ts); CREATE SOURCE b (ts BIGINT, WATERMARK FOR ts AS ts); \
         CREATE STREAM u AS SELECT ts FROM a UNION ALL SELECT ts FROM b",
    )
    .await
    .unwrap();
    db.source_untyped("b").unwrap().watermark(1000).unwrap();
    let a = db.source_untyped("a").unwrap();
    // b goes idle after 100 ms; a keeps advancing and the union follows it.
    let deadline = std::time::Instant::now() + WAIT;
    let mut w = None;
    let mut t = 2000;
    while std::time::Instant::now() < deadline {
        a.watermark(t).unwrap();
        t += 1000;
        std::thread::sleep(Duration::from_millis(30));
        w = db.stream_metrics("u").unwrap().watermark;
        if w.is_some_and(|w| w > 1000) {
            break;
        }
    }
    assert!(
        w.is_some_and(|w| w > 1000),
        "union watermark stuck at {w:?}"
    );
}

#[tokio::test]
async fn spec_7_metrics_and_topology() {
    let db = db();
    db.execute("CREATE SOURCE s (x BIGINT); CREATE STREAM t AS SELECT x FROM s WHERE x % 2 = 0")
        .await
        .unwrap();
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, true)])),
        vec![Arc::new(Int64Array::from((0..100).collect::<Vec<i64>>())) as ArrayRef],
    )
    .unwrap();
    db.source_untyped("s").unwrap().push_arrow(batch).unwrap();
    assert!(db.wait_idle(WAIT));
    let m = db.metrics();
    assert_eq!(m.total_events_ingested, 100);
    assert_eq!(m.total_events_emitted, 50);
    assert_eq!((m.source_count, m.stream_count, m.sink_count), (1, 1, 0));
    assert_eq!(db.stream_metrics("t").unwrap().total_events, 50);
    let topo = db.pipeline_topology();
    assert!(topo.edges.iter().any(|e| e.from == "s" && e.to == "t"));
    assert_eq!(topo.nodes.len(), 2);
}

#[tokio::test]
async fn spec_7_backpressure_flag_with_a_stalled_consumer() {
    let db = LaminarDB::builder()
        .workers(1)
        .buffer_size(10)
        .backpressure(BackpressureStrategy::Reject)
        .subscription_buffer(1)
        .build_sync()
        .unwrap();
    db.execute("CREATE SOURCE s (x BIGINT); CREATE STREAM t AS SELECT x FROM s")
        .await
        .unwrap();
    let _stalled = db.subscribe_arrow("t").unwrap();
    let src = db.source_untyped("s").unwrap();
    let one = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, true)])),
        vec![Arc::new(Int64Array::from(vec![1])) as ArrayRef],
    )
    .unwrap();
    // Fill until rejected; repeat while the worker still drains a message before it blocks.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        while src.push_arrow(one.clone()).is_ok() {}
        std::thread::sleep(Duration::from_millis(5));
        if src.is_backpressured() || std::time::Instant::now() >= deadline {
            break;
        }
    }
    let m = db.source_metrics("s").unwrap();
    assert!(m.is_backpressured && m.utilization > 0.8, "{m:?}");
}

#[tokio::test]
async fn null_event_time_and_not_null_are_rejected_before_enqueue() {
    let db = db();
    db.execute("CREATE SOURCE s (x BIGINT, ts BIGINT, WATERMARK FOR ts AS ts); CREATE STREAM t AS SELECT x FROM s")
        .await
        .unwrap();
    let mut sub = db.subscribe_arrow("t").unwrap();
    let err = db
        .execute("INSERT INTO s VALUES (1, 10), (2, NULL)")
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("NULL event time in column 'ts' at row 1"),
        "{err}"
    );
    assert!(db.wait_idle(WAIT));
    assert!(sub.poll().is_none());
}

#[tokio::test]
async fn failing_expression_is_reported_and_does_not_hang() {
    let db = db();
    db.execute("CREATE SOURCE s (x BIGINT); CREATE STREAM t AS SELECT 10 / x AS y FROM s")
        .await
        .unwrap();
    let mut sub = db.subscribe_arrow("t").unwrap();
    db.execute("INSERT INTO s VALUES (0)").await.unwrap();
    assert!(db.wait_idle(WAIT));
    let failures = db.failures();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(failures[0].contains("Divide by zero"), "{failures:?}");
    // The stream ended; later pushes are drained, never blocking the producer.
    for _ in 0..100 {
        db.execute("INSERT INTO s VALUES (1)").await.unwrap();
    }
    assert!(db.wait_idle(WAIT));
    assert!(
        sub.recv().is_err(),
        "the failed stream ends its subscriptions"
    );
}

#[tokio::test]
async fn describe_extended_masks_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let db = db();
    db.execute(&format!(
        "CREATE SOURCE s (x BIGINT); CREATE SINK k FROM s INTO FILES (path = '{}', format = 'csv')",
        dir.path().display()
    ))
    .await
    .unwrap();
    let ExecuteResult::Metadata(b) = db.execute("DESCRIBE EXTENDED k").await.unwrap() else {
        panic!()
    };
    assert_eq!(b.schema().field(5).name(), "connector");
    let r = rows(&[b]);
    assert!(r[0][5].starts_with("FILES (path = "), "{r:?}");
}

#[tokio::test]
async fn files_source_pipeline_runs_to_completion() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.csv");
    std::fs::write(
        &input,
        "id,amount,ts\n1,10.5,1000\n2,200.0,2000\n3,7.25,3000\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let db = db();
    db.execute(&format!(
        "CREATE SOURCE orders (id BIGINT NOT NULL, amount DOUBLE, ts BIGINT NOT NULL, WATERMARK FOR ts AS ts) \
           FROM FILES (path = '{}', format = 'csv'); \
         CREATE STREAM small AS SELECT id, amount FROM orders WHERE amount < 100; \
         CREATE SINK small_out FROM small INTO FILES (path = '{}', format = 'json')",
        input.display(),
        out.display()
    ))
    .await
    .unwrap();
    db.start().await.unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while !db.is_finished() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(db.is_finished(), "finite sources end and sinks commit");
    assert_eq!(
        db.stream_metrics("small").unwrap().watermark,
        Some(i64::MAX),
        "end of input closes time"
    );
    let m = db.source_metrics("orders").unwrap();
    assert!(m.has_connector && m.ended, "{m:?}");
    let written = db.sink_metrics("small_out").unwrap().records_written;
    assert_eq!(written, 2);
    db.shutdown().await.unwrap();
    let mut text = String::new();
    for e in std::fs::read_dir(&out).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("part-") {
            text.push_str(&std::fs::read_to_string(e.path()).unwrap());
        }
    }
    assert_eq!(
        text,
        "{\"id\":1,\"amount\":10.5}\n{\"id\":3,\"amount\":7.25}\n"
    );
}

#[tokio::test]
async fn malformed_file_rows_are_skipped_and_counted_or_fail_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.csv");
    std::fs::write(&input, "id,amount\n1,10.5\n2,oops\n3,7.25\n").unwrap();
    for (policy, expect_failure) in [("skip", false), ("fail", true)] {
        let db = db();
        db.execute(&format!(
            "CREATE SOURCE orders (id BIGINT NOT NULL, amount DOUBLE) \
               FROM FILES (path = '{}', format = 'csv', 'error.policy' = '{policy}'); \
             CREATE STREAM all_orders AS SELECT id FROM orders",
            input.display()
        ))
        .await
        .unwrap();
        let mut sub = db.subscribe_arrow("all_orders").unwrap();
        db.start().await.unwrap();
        let deadline = std::time::Instant::now() + WAIT;
        while !db.source_metrics("orders").unwrap().ended && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(db.wait_idle(WAIT));
        let mut ids = Vec::new();
        while let Some(b) = sub.poll() {
            ids.extend(rows(&[b]).into_iter().map(|r| r[0].clone()));
        }
        let failures = db.failures();
        if expect_failure {
            assert_eq!(failures.len(), 1, "{failures:?}");
            assert!(
                failures[0].contains("in.csv") && failures[0].contains("line 3"),
                "{failures:?}"
            );
        } else {
            assert!(failures.is_empty(), "{failures:?}");
            assert_eq!(ids, vec!["1", "3"]);
            assert_eq!(db.source_metrics("orders").unwrap().bad_records, 1);
        }
    }
}

/// SPEC 2.9 AC: tumble 1 h with `EMIT EVERY INTERVAL` emits partial values periodically
/// (processing time) with non-decreasing counts. Scaled down: 250 ms cadence over ~1.25 s of
/// input instead of 1 s over 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_2_9_emit_every_interval_emits_periodic_partials() {
    let db = db();
    db.execute("CREATE SOURCE ev (k VARCHAR, ts BIGINT, WATERMARK FOR ts AS ts)")
        .await
        .unwrap();
    db.execute(
        "CREATE STREAM hourly AS SELECT tumble(ts, INTERVAL '1' HOUR) AS h, COUNT(*) AS n FROM ev \
         GROUP BY tumble(ts, INTERVAL '1' HOUR) EMIT EVERY INTERVAL '250' MILLISECOND",
    )
    .await
    .unwrap();
    let mut sub = db.subscribe_arrow("hourly").unwrap();
    let src = db.source_untyped("ev").unwrap();
    let schema = src.schema();
    let started = std::time::Instant::now();
    let mut i = 0;
    while started.elapsed() < Duration::from_millis(1250) {
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec!["a"])) as ArrayRef,
                Arc::new(Int64Array::from(vec![i * 10])),
            ],
        )
        .unwrap();
        src.push_arrow(batch).unwrap();
        i += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    let mut batches = Vec::new();
    while let Some(b) = sub.poll() {
        batches.push(b);
    }
    let out = rows(&batches);
    // Partial rows: the first is an insert, later ones updates (U-/U+ pairs).
    let after: Vec<i64> = out
        .iter()
        .filter(|r| r[2] == "I" || r[2] == "U+")
        .map(|r| r[1].parse().unwrap())
        .collect();
    assert!(
        (3..=7).contains(&after.len()),
        "expected about 5 periodic emissions, got {}: {out:?}",
        after.len()
    );
    assert!(after.windows(2).all(|w| w[0] <= w[1]), "{after:?}");
    assert_eq!(out[0][2], "I");
    db.shutdown_sync();
}

/// State of closed windows is freed and reported in the stream metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_state_is_freed_when_windows_close() {
    let db = db();
    db.execute("CREATE SOURCE st (k VARCHAR, ts BIGINT, WATERMARK FOR ts AS ts)")
        .await
        .unwrap();
    db.execute(
        "CREATE STREAM w AS SELECT k, COUNT(*) AS n FROM st GROUP BY k, tumble(ts, INTERVAL '10' SECOND) EMIT ON WINDOW CLOSE",
    )
    .await
    .unwrap();
    let src = db.source_untyped("st").unwrap();
    let keys: Vec<String> = (0..100).map(|i| format!("k{i}")).collect();
    let batch = RecordBatch::try_new(
        src.schema(),
        vec![
            Arc::new(StringArray::from(keys.clone())) as ArrayRef,
            Arc::new(Int64Array::from(vec![1000; 100])),
        ],
    )
    .unwrap();
    src.push_arrow(batch).unwrap();
    assert!(db.wait_idle(Duration::from_secs(10)));
    let m = db.stream_metrics("w").unwrap();
    assert_eq!(m.state_rows, 100);
    assert!(m.state_bytes > 0);
    src.watermark(10_000).unwrap();
    assert!(db.wait_idle(Duration::from_secs(10)));
    let m = db.stream_metrics("w").unwrap();
    assert_eq!(m.state_rows, 0);
    assert_eq!(m.total_events, 100);
    db.shutdown_sync();
}

/// Polls `check` until it holds or the deadline passes.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + WAIT;
    while std::time::Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("timed out waiting until {what}");
}

fn ts_batch(src: &laminar_db::SourceHandle, ts: &[i64]) -> RecordBatch {
    RecordBatch::try_new(
        src.schema(),
        vec![Arc::new(Int64Array::from(ts.to_vec())) as ArrayRef],
    )
    .unwrap()
}

const MINUTE: i64 = 60_000;

#[tokio::test]
async fn spec_3_alignment_pause_holds_the_fast_source_until_the_slow_one_catches_up() {
    // AC: drift 5 min, A 10:30, B 10:00, pause -> A paused until B >= 10:25.
    let db = db();
    db.execute(
        "CREATE SOURCE a (ts BIGINT, WATERMARK FOR ts AS ts) WITH (alignment.group = 'g', alignment.max_drift = '5 minutes'); \
         CREATE SOURCE b (ts BIGINT, WATERMARK FOR ts AS ts) WITH (alignment.group = 'g', alignment.max_drift = '5 minutes'); \
         CREATE STREAM from_a AS SELECT ts FROM a",
    )
    .await
    .unwrap();
    let a = db.source_untyped("a").unwrap();
    let b = db.source_untyped("b").unwrap();
    b.push_arrow(ts_batch(&b, &[600 * MINUTE])).unwrap();
    assert!(db.wait_idle(WAIT));
    a.push_arrow(ts_batch(&a, &[630 * MINUTE])).unwrap();
    eventually("a is paused", || {
        db.source_metrics("a").unwrap().alignment_paused
    });
    // More rows for A wait in its queue, unprocessed.
    a.push_arrow(ts_batch(&a, &[631 * MINUTE])).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let m = db.source_metrics("a").unwrap();
    assert_eq!(m.total_events, 1, "the paused source took no more input");
    assert_eq!(m.pending, 1);
    assert_eq!(m.watermark, Some(630 * MINUTE));
    // B at 10:24 is not enough (limit 10:29 < 10:30).
    b.push_arrow(ts_batch(&b, &[624 * MINUTE])).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(db.source_metrics("a").unwrap().total_events, 1);
    // B at 10:25: A resumes, takes the 10:31 row, and is ahead (and paused) again.
    b.push_arrow(ts_batch(&b, &[625 * MINUTE])).unwrap();
    eventually("a took its queued row", || {
        db.source_metrics("a").unwrap().total_events == 2
    });
    // The row is counted before the watermark it raises is published: wait for both.
    eventually("a's watermark reached 10:31", || {
        db.source_metrics("a").unwrap().watermark == Some(631 * MINUTE)
    });
    eventually("a is paused again", || {
        db.source_metrics("a").unwrap().alignment_paused
    });
    // B ending releases A for good.
    b.push_arrow(ts_batch(&b, &[700 * MINUTE])).unwrap();
    eventually("a is released", || {
        !db.source_metrics("a").unwrap().alignment_paused
    });
    assert!(db.wait_idle(WAIT));
    assert_eq!(db.stream_metrics("from_a").unwrap().total_events, 2);
    db.shutdown_sync();
}

#[tokio::test]
async fn alignment_drop_mode_counts_rows_beyond_the_drift_and_warn_mode_keeps_going() {
    let db = db();
    db.execute(
        "CREATE SOURCE slow (ts BIGINT, WATERMARK FOR ts AS ts) WITH (alignment.group = 'g', alignment.max_drift = '5m'); \
         CREATE SOURCE dropper (ts BIGINT, WATERMARK FOR ts AS ts) WITH (alignment.group = 'g', alignment.max_drift = '5m', alignment.mode = 'drop'); \
         CREATE SOURCE warner (ts BIGINT, WATERMARK FOR ts AS ts) WITH (alignment.group = 'g', alignment.max_drift = '5m', alignment.mode = 'warn'); \
         CREATE STREAM kept AS SELECT ts FROM dropper",
    )
    .await
    .unwrap();
    let slow = db.source_untyped("slow").unwrap();
    slow.push_arrow(ts_batch(&slow, &[600 * MINUTE])).unwrap();
    assert!(db.wait_idle(WAIT));
    let dropper = db.source_untyped("dropper").unwrap();
    dropper
        .push_arrow(ts_batch(
            &dropper,
            &[603 * MINUTE, 606 * MINUTE, 605 * MINUTE],
        ))
        .unwrap();
    let warner = db.source_untyped("warner").unwrap();
    warner
        .push_arrow(ts_batch(&warner, &[640 * MINUTE]))
        .unwrap();
    warner
        .push_arrow(ts_batch(&warner, &[650 * MINUTE]))
        .unwrap();
    assert!(db.wait_idle(WAIT));
    let m = db.source_metrics("dropper").unwrap();
    assert_eq!(m.alignment_dropped, 1, "10:06 is beyond 10:00 + 5 min");
    assert_eq!(m.watermark, Some(605 * MINUTE));
    assert_eq!(db.stream_metrics("kept").unwrap().total_events, 2);
    let w = db.source_metrics("warner").unwrap();
    assert_eq!(w.total_events, 2, "warn mode never holds rows back");
    assert!(!w.alignment_paused);
    assert_eq!(w.alignment_dropped, 0);
    db.shutdown_sync();
}

#[tokio::test]
async fn files_sources_replay_in_event_time_alignment_and_complete() {
    // Two FILES sources join the default alignment group (10 s drift, pause); one starts
    // 1000 s of event time after the other. Alignment holds the later one back while the
    // earlier one catches up; both run to completion and every row is counted once.
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, start: i64| {
        let mut text = String::from("k,ts\n");
        for i in 0..2000 {
            text.push_str(&format!("{},{}\n", i % 7, start + i * 100));
        }
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let early = write("early.csv", 0);
    let late = write("late.csv", 1_000_000);
    let db = db();
    db.execute(&format!(
        "CREATE SOURCE early (k BIGINT, ts BIGINT, WATERMARK FOR ts AS ts) FROM FILES (path = '{}', format = 'csv'); \
         CREATE SOURCE late (k BIGINT, ts BIGINT, WATERMARK FOR ts AS ts) FROM FILES (path = '{}', format = 'csv'); \
         CREATE STREAM both_sides AS SELECT k, ts FROM early UNION ALL SELECT k, ts FROM late; \
         CREATE STREAM per_minute AS SELECT tumble(ts, INTERVAL '1' MINUTE) AS w, COUNT(*) AS n FROM both_sides GROUP BY tumble(ts, INTERVAL '1' MINUTE) EMIT ON WINDOW CLOSE",
        early.display(),
        late.display()
    ))
    .await
    .unwrap();
    let mut sub = db.subscribe_arrow("per_minute").unwrap();
    db.start().await.unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while !db.is_finished() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        db.is_finished(),
        "aligned FILES sources both run to completion"
    );
    assert!(db.wait_idle(WAIT));
    let mut total = 0i64;
    while let Some(batch) = sub.poll() {
        let n = batch.column_by_name("n").unwrap();
        total += arrow::compute::sum(n.as_any().downcast_ref::<Int64Array>().unwrap()).unwrap_or(0);
    }
    assert_eq!(total, 4000);
    assert_eq!(db.stream_metrics("per_minute").unwrap().late_total, 0);
    db.shutdown().await.unwrap();
}

#[tokio::test]
async fn typed_subscription_reports_rows_it_cannot_convert() {
    // `Hot::sensor` is a String; a NULL sensor cannot become one. The typed poll reports it
    // (column and row) instead of returning "no rows" and losing the batch.
    #[derive(FromRow, Debug)]
    struct Named {
        #[allow(dead_code)]
        name: String,
    }
    let db = db();
    db.execute(
        "CREATE SOURCE people (name VARCHAR); CREATE STREAM named AS SELECT name FROM people",
    )
    .await
    .unwrap();
    let mut typed = db.subscribe::<Named>("named").unwrap();
    let mut iterated = db.subscribe::<Named>("named").unwrap();
    db.execute("INSERT INTO people VALUES ('ok'), (NULL)")
        .await
        .unwrap();
    assert!(db.wait_idle(WAIT));
    let err = typed.poll().expect_err("a conversion error");
    assert!(err.to_string().contains("name"), "{err}");
    assert_eq!(typed.poll().unwrap().map(|r| r.len()), None);
    assert!(iterated.next().is_none());
    let err = iterated.take_error().expect("the iterator keeps its error");
    assert!(err.to_string().contains("name"), "{err}");
    db.shutdown_sync();
}

/// `SUBSCRIBE name [WHERE ..]` is the continuous `SELECT * FROM name [WHERE ..]`: live rows
/// of a stream, with `_op` for a changelog; a table's rows, then its changes; sinks, unknown
/// names and filters that do not plan are refused.
#[tokio::test]
async fn subscribe_streams_live_rows_and_changes() {
    let db = db();
    db.execute(
        "CREATE SOURCE s (k VARCHAR, x BIGINT); \
         CREATE STREAM totals AS SELECT k, SUM(x) AS total FROM s GROUP BY k; \
         CREATE TABLE t (id BIGINT PRIMARY KEY)",
    )
    .await
    .unwrap();
    let ExecuteResult::Query(live) = db.execute("SUBSCRIBE s WHERE x > 1").await.unwrap() else {
        panic!("expected a query handle")
    };
    let ExecuteResult::Query(changes) = db.execute("SUBSCRIBE totals").await.unwrap() else {
        panic!("expected a query handle")
    };
    let mut live_rows = live.subscribe_arrow().unwrap();
    let mut change_rows = changes.subscribe_arrow().unwrap();
    db.execute("INSERT INTO s VALUES ('a', 1), ('b', 5)")
        .await
        .unwrap();
    // The second insert waits until the first one's changes arrived: two inserts may
    // otherwise be aggregated in one batch, whose changes come in key order.
    let mut got = Vec::new();
    while got.len() < 2 {
        got.extend(rows(&[change_rows.recv_timeout(WAIT).unwrap().unwrap()]));
    }
    db.execute("INSERT INTO s VALUES ('a', 2)").await.unwrap();
    while got.len() < 4 {
        got.extend(rows(&[change_rows.recv_timeout(WAIT).unwrap().unwrap()]));
    }
    got[..2].sort();
    assert_eq!(
        got,
        vec![
            vec!["a", "1", "I"],
            vec!["b", "5", "I"],
            vec!["a", "1", "U-"],
            vec!["a", "3", "U+"],
        ]
    );
    let mut got = Vec::new();
    while got.len() < 2 {
        got.extend(rows(&[live_rows.recv_timeout(WAIT).unwrap().unwrap()]));
    }
    assert_eq!(got, vec![vec!["b", "5"], vec!["a", "2"]]);
    live.cancel().unwrap();
    changes.cancel().unwrap();

    // A table: its rows when subscribed, then every change.
    db.execute("CREATE TABLE u (id BIGINT PRIMARY KEY, v VARCHAR); INSERT INTO u VALUES (1, 'a'), (2, 'b')")
        .await
        .unwrap();
    let ExecuteResult::Query(table) = db.execute("SUBSCRIBE u WHERE id < 3").await.unwrap() else {
        panic!("expected a query handle")
    };
    let mut table_rows = table.subscribe_arrow().unwrap();
    db.execute("INSERT INTO u VALUES (1, 'c'), (3, 'd')")
        .await
        .unwrap();
    db.execute("DELETE FROM u WHERE id = 2").await.unwrap();
    let mut got = Vec::new();
    while got.len() < 5 {
        got.extend(rows(&[table_rows.recv_timeout(WAIT).unwrap().unwrap()]));
    }
    got[..2].sort();
    assert_eq!(
        got,
        vec![
            vec!["1", "a", "I"],
            vec!["2", "b", "I"],
            vec!["1", "a", "U-"],
            vec!["1", "c", "U+"],
            vec!["2", "b", "D"],
        ]
    );
    table.cancel().unwrap();
    let e = db.execute("SUBSCRIBE nope").await.unwrap_err();
    assert_eq!(e.code(), "SQL_UNKNOWN_OBJECT", "{e}");
    let e = db.execute("SUBSCRIBE s WHERE y > 1").await.unwrap_err();
    assert_eq!(e.code(), "SQL_UNKNOWN_COLUMN", "{e}");
    let e = db.execute("SUBSCRIBE").await.unwrap_err();
    assert_eq!(e.code(), "SQL_SYNTAX", "{e}");
    let e = db.execute("SUBSCRIBE s s").await.unwrap_err();
    assert_eq!(e.code(), "SQL_SYNTAX", "{e}");
}

/// An updating stream goes only into sinks that write changes: FILES with
/// `changelog = 'true'` writes every change with its `_op`, in commit order; FILES without it
/// and STDOUT are refused at CREATE SINK.
#[tokio::test]
async fn updating_streams_go_only_into_changelog_sinks() {
    let dir = tempfile::tempdir().unwrap();
    let db = db();
    db.execute(
        "CREATE SOURCE s (k VARCHAR, x BIGINT); \
         CREATE STREAM totals AS SELECT k, SUM(x) AS total FROM s GROUP BY k",
    )
    .await
    .unwrap();
    for refused in [
        format!(
            "CREATE SINK f FROM totals INTO FILES (path = '{}', format = 'csv')",
            dir.path().display()
        ),
        "CREATE SINK o FROM totals INTO STDOUT".to_string(),
    ] {
        let e = db.execute(&refused).await.unwrap_err();
        assert_eq!(e.code(), "SQL_INVALID", "{e}");
        assert!(e.to_string().contains("reads an updating stream"), "{e}");
    }
    db.execute(&format!(
        "CREATE SINK f FROM totals INTO FILES (path = '{}', format = 'csv', changelog = 'true')",
        dir.path().display()
    ))
    .await
    .unwrap();
    db.start().await.unwrap();
    db.execute("INSERT INTO s VALUES ('a', 1)").await.unwrap();
    assert!(db.wait_idle(WAIT));
    db.execute("INSERT INTO s VALUES ('a', 2)").await.unwrap();
    assert!(db.wait_idle(WAIT));
    db.shutdown().await.unwrap();
    let mut lines = Vec::new();
    for path in part_files(dir.path()) {
        lines.extend(
            std::fs::read_to_string(path)
                .unwrap()
                .lines()
                .filter(|l| *l != "k,total,_op")
                .map(str::to_string),
        );
    }
    assert_eq!(lines, vec!["a,1,I", "a,1,U-", "a,3,U+"]);
}

/// The committed files a FILES sink wrote into `dir`, in name (= commit) order.
fn part_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("part-")
        })
        .collect();
    files.sort();
    files
}

/// Deletes reach FILES changelog sinks too, in CSV and JSON lines: an aggregation whose group
/// leaves its `HAVING` emits `D` (the group's last row), and the sinks write every change with
/// its `_op` in commit order. With checkpoints each commit is its own file: the changes before
/// a checkpoint become a `part-` file once it completes, those after it wait (hidden) for the
/// checkpoint taken at shutdown.
#[tokio::test]
async fn changelog_files_sinks_write_deletes_in_commit_order() {
    let state = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let (csv, json) = (out.path().join("csv"), out.path().join("json"));
    let db = crate::util::open_durable(state.path(), 2);
    db.execute(&format!(
        "CREATE SOURCE src (k VARCHAR, x BIGINT); \
         CREATE STREAM small AS SELECT k, SUM(x) AS total FROM src GROUP BY k HAVING SUM(x) < 10; \
         CREATE SINK c FROM small INTO FILES (path = '{}', format = 'csv', changelog = 'true'); \
         CREATE SINK j FROM small INTO FILES (path = '{}', format = 'json', changelog = 'true')",
        csv.display(),
        json.display()
    ))
    .await
    .unwrap();
    // The committed files of a sink, in name (= commit) order: name and lines, CSV header aside.
    let committed = |dir: &std::path::Path| -> Vec<(String, Vec<String>)> {
        part_files(dir)
            .into_iter()
            .map(|path| {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                let lines: Vec<String> = std::fs::read_to_string(&path)
                    .unwrap()
                    .lines()
                    .filter(|l| *l != "k,total,_op")
                    .map(str::to_string)
                    .collect();
                (name, lines)
            })
            .collect()
    };
    db.start().await.unwrap();
    // One statement at a time, so the order of the changes is fixed.
    for values in ["('a', 1)", "('b', 5)", "('a', 2)"] {
        db.execute(&format!("INSERT INTO src VALUES {values}"))
            .await
            .unwrap();
        assert!(db.wait_idle(WAIT));
    }
    let first = db.checkpoint().unwrap().expect("durable");
    eventually("the first checkpoint's files are committed", || {
        committed(&csv).len() == 1 && committed(&json).len() == 1
    });
    // a goes to 23 (leaves HAVING: D), b to 6, a back to 8 (enters again: I).
    for values in ["('a', 20)", "('b', 1)", "('a', -15)"] {
        db.execute(&format!("INSERT INTO src VALUES {values}"))
            .await
            .unwrap();
        assert!(db.wait_idle(WAIT));
    }
    // Written after the checkpoint: not visible before the next one completes.
    assert_eq!(committed(&csv).len(), 1);
    assert_eq!(committed(&json).len(), 1);
    db.shutdown().await.unwrap();
    assert!(db.failures().is_empty(), "{:?}", db.failures());

    let csv_files = committed(&csv);
    assert_eq!(csv_files.len(), 2, "{csv_files:?}");
    assert_eq!(csv_files[0].0, format!("part-{first:06}-000000.csv"));
    assert_eq!(csv_files[0].1, vec!["a,1,I", "b,5,I", "a,1,U-", "a,3,U+"]);
    assert_eq!(csv_files[1].1, vec!["a,3,D", "b,5,U-", "b,6,U+", "a,8,I"]);
    let json_files = committed(&json);
    assert_eq!(json_files.len(), 2, "{json_files:?}");
    assert_eq!(json_files[0].0, format!("part-{first:06}-000000.json"));
    assert_eq!(
        json_files[0].1,
        vec![
            r#"{"k":"a","total":1,"_op":"I"}"#,
            r#"{"k":"b","total":5,"_op":"I"}"#,
            r#"{"k":"a","total":1,"_op":"U-"}"#,
            r#"{"k":"a","total":3,"_op":"U+"}"#,
        ]
    );
    assert_eq!(
        json_files[1].1,
        vec![
            r#"{"k":"a","total":3,"_op":"D"}"#,
            r#"{"k":"b","total":5,"_op":"U-"}"#,
            r#"{"k":"b","total":6,"_op":"U+"}"#,
            r#"{"k":"a","total":8,"_op":"I"}"#,
        ]
    );
}
