//! Materialized views through the Rust API: subscriptions with `send_snapshot`, `SUBSCRIBE`,
//! budgets, recovery from checkpoints, snapshot consistency, and the differential property
//! test against DataFusion batch queries over the final input.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use laminar_db::{ChangeEvent, ExecuteResult, LaminarDB, SubscriptionConfig};
use proptest::prelude::*;

use crate::util::{
    batch_query_tables, block_on, durable_db, execute_each, proptest_cases, rows, select,
    select_now, sorted,
};

const WAIT: Duration = Duration::from_secs(20);

fn db(workers: usize) -> LaminarDB {
    LaminarDB::builder().workers(workers).build_sync().unwrap()
}

/// The first `n` columns of an event's rows.
fn cells(batch: &RecordBatch, n: usize) -> Vec<Vec<String>> {
    rows(std::slice::from_ref(batch))
        .into_iter()
        .map(|r| r.into_iter().take(n).collect())
        .collect()
}

/// Adds an event's rows to a consolidated multiset (`n` data columns).
fn consolidate(into: &mut BTreeMap<Vec<String>, i64>, event: &ChangeEvent, n: usize) {
    let mut add = |b: &RecordBatch, w: i64| {
        for row in cells(b, n) {
            *into.entry(row).or_default() += w;
        }
    };
    match event {
        ChangeEvent::Snapshot(d) | ChangeEvent::Insert(d) => add(&d.batch, 1),
        ChangeEvent::Delete(d) => add(&d.batch, -1),
        ChangeEvent::Update { old, new } => {
            add(&old.batch, -1);
            add(&new.batch, 1);
        }
        ChangeEvent::Watermark(_) => {}
        ChangeEvent::Lagged(n) => panic!("subscription lagged by {n}"),
    }
    into.retain(|_, w| *w != 0);
}

fn expand(multiset: &BTreeMap<Vec<String>, i64>) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for (row, w) in multiset {
        assert!(*w > 0, "negative weight {w} for {row:?}");
        for _ in 0..*w {
            out.push(row.clone());
        }
    }
    out
}

const REVENUE: &str = "CREATE SOURCE orders (region VARCHAR, amount BIGINT); \
     CREATE MATERIALIZED VIEW revenue AS SELECT region, SUM(amount) AS total, COUNT(*) AS n FROM orders GROUP BY region";

/// SPEC 1.5 AC: a view holding `(eu, 15)` sends it as a `Snapshot`, then the push of
/// `(eu, 5)` as `Update { old: (eu, 15), new: (eu, 20) }`; a filter applies to both.
#[test]
fn spec_1_5_send_snapshot_then_changes() {
    let db = db(2);
    block_on(db.execute(REVENUE)).unwrap();
    block_on(db.execute("INSERT INTO orders VALUES ('eu', 10), ('eu', 5), ('us', 1)")).unwrap();
    assert!(db.wait_idle(WAIT));
    // `query()` runs bounded queries, views included.
    let counted = block_on(db.query("SELECT SUM(n) AS n FROM revenue")).unwrap();
    assert_eq!(rows(&counted), vec![vec!["3"]]);
    let mut sub = db
        .subscribe_push(
            "revenue",
            SubscriptionConfig {
                send_snapshot: true,
                filter: Some("region = 'eu'".into()),
                ..Default::default()
            },
        )
        .unwrap();
    let Some(ChangeEvent::Snapshot(snapshot)) = sub.recv_blocking(WAIT).unwrap() else {
        panic!("expected the snapshot first")
    };
    assert_eq!(
        rows(&[(*snapshot.batch).clone()]),
        vec![vec!["eu", "15", "2"]]
    );
    block_on(db.execute("INSERT INTO orders VALUES ('us', 7), ('eu', 5)")).unwrap();
    let event = loop {
        match sub.recv_blocking(WAIT).unwrap() {
            Some(ChangeEvent::Watermark(_)) => continue,
            other => break other,
        }
    };
    let Some(ChangeEvent::Update { old, new }) = event else {
        panic!("expected an update, got {event:?}")
    };
    assert_eq!(cells(&old.batch, 3), vec![vec!["eu", "15", "2"]]);
    assert_eq!(cells(&new.batch, 3), vec![vec!["eu", "20", "3"]]);

    // An empty view sends an empty snapshot.
    block_on(db.execute(
        "CREATE MATERIALIZED VIEW big AS SELECT region, total FROM revenue WHERE total > 100",
    ))
    .unwrap();
    let mut sub = db
        .subscribe_push(
            "big",
            SubscriptionConfig {
                send_snapshot: true,
                ..Default::default()
            },
        )
        .unwrap();
    let Some(ChangeEvent::Snapshot(snapshot)) = sub.recv_blocking(WAIT).unwrap() else {
        panic!("expected the snapshot first")
    };
    assert_eq!(snapshot.batch.num_rows(), 0);
    assert_eq!(
        snapshot.batch.num_columns(),
        2,
        "snapshot rows carry no _op"
    );

    // Streams keep no contents.
    block_on(db.execute("CREATE STREAM s AS SELECT region FROM orders")).unwrap();
    let e = db
        .subscribe_push(
            "s",
            SubscriptionConfig {
                send_snapshot: true,
                ..Default::default()
            },
        )
        .err()
        .expect("send_snapshot on a stream");
    assert_eq!(e.code(), "INVALID_OPERATION", "{e}");
    assert!(e.to_string().contains("'s' is a stream"), "{e}");
    let e = db
        .subscribe_push(
            "revenue",
            SubscriptionConfig {
                send_snapshot: true,
                filter: Some("nope > 1".into()),
                ..Default::default()
            },
        )
        .err()
        .expect("a filter over an unknown column");
    assert_eq!(e.code(), "SQL_UNKNOWN_COLUMN", "{e}");
    db.shutdown_sync();
}

/// One line per event: `I`/`D` with the rows, or `U` with old and new rows (`n` columns).
fn describe(event: &ChangeEvent, n: usize) -> String {
    let rows = |b: &RecordBatch| {
        cells(b, n)
            .iter()
            .map(|r| r.join(" "))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match event {
        ChangeEvent::Insert(d) => format!("I {}", rows(&d.batch)),
        ChangeEvent::Delete(d) => format!("D {}", rows(&d.batch)),
        ChangeEvent::Update { old, new } => {
            format!("U {} -> {}", rows(&old.batch), rows(&new.batch))
        }
        other => format!("{other:?}"),
    }
}

/// The next `count` data events of `sub` (watermarks skipped), described.
fn next_events(sub: &mut laminar_db::PushSubscription, count: usize) -> Vec<String> {
    let mut out = Vec::new();
    while out.len() < count {
        match sub.recv_blocking(WAIT).unwrap() {
            Some(ChangeEvent::Watermark(_)) => {}
            Some(event) => out.push(describe(&event, 2)),
            None => panic!("no event after {out:?}"),
        }
    }
    out
}

/// A subscription filter keeps an update whole only when both rows pass: when the new row
/// fails, the subscriber gets the delete of the old one; when the old row failed, the insert
/// of the new one. Several updates in one batch stay paired with their own rows.
#[test]
fn a_subscription_filter_turns_half_passing_updates_into_deletes_and_inserts() {
    let db = db(1);
    block_on(db.execute(REVENUE)).unwrap();
    let mut sub = db
        .subscribe_push(
            "revenue",
            SubscriptionConfig {
                filter: Some("total < 20".into()),
                max_batch_size: 1,
                ..Default::default()
            },
        )
        .unwrap();
    let insert = |sql: &str| {
        block_on(db.execute(sql)).unwrap();
        assert!(db.wait_idle(WAIT));
    };
    insert("INSERT INTO orders VALUES ('eu', 15)");
    assert_eq!(next_events(&mut sub, 1), ["I eu 15"]);
    insert("INSERT INTO orders VALUES ('eu', 10)");
    assert_eq!(next_events(&mut sub, 1), ["D eu 15"]);
    insert("INSERT INTO orders VALUES ('eu', -10)");
    assert_eq!(next_events(&mut sub, 1), ["I eu 15"]);
    insert("INSERT INTO orders VALUES ('us', 1), ('ap', 2)");
    assert_eq!(next_events(&mut sub, 1), ["I us 1, ap 2"]);
    // One batch updating three groups: kept, deleted, kept.
    insert("INSERT INTO orders VALUES ('us', 1), ('ap', 30), ('eu', 1)");
    let mut events = next_events(&mut sub, 3);
    events.sort();
    assert_eq!(events, ["D ap 2", "U eu 15 -> eu 16", "U us 1 -> us 2"]);
}

/// A filter that fails on a batch at run time (here a division by zero) ends the
/// subscription with an error naming it, rather than skipping the batch; filters that are
/// not predicates are refused at subscribe time, constant ones accepted.
#[test]
fn subscription_filters_are_checked_at_subscribe_and_fail_loudly_at_run_time() {
    let db = db(1);
    block_on(db.execute(REVENUE)).unwrap();
    let subscribe = |filter: &str| {
        db.subscribe_push(
            "revenue",
            SubscriptionConfig {
                filter: Some(filter.into()),
                ..Default::default()
            },
        )
    };
    let err = subscribe("nope > 1").err().unwrap().to_string();
    assert!(err.contains("unknown column 'nope'"), "{err}");
    for (bad, why) in [
        ("total", "non-boolean"),
        ("region + 1 > 0", "Utf8 + Int64"),
        ("total >", "column 8"),
    ] {
        let err = subscribe(bad)
            .err()
            .unwrap_or_else(|| panic!("{bad} accepted"))
            .to_string();
        assert!(
            err.contains(&format!("subscription filter '{bad}': ")) && err.contains(why),
            "{bad}: {err}"
        );
    }
    let mut everything = subscribe("true").unwrap();
    let mut nothing = subscribe("1 = 2").unwrap();
    let mut failing = subscribe("100 / (total - 15) > 1").unwrap();
    block_on(db.execute("INSERT INTO orders VALUES ('eu', 15)")).unwrap();
    assert!(db.wait_idle(WAIT));
    assert_eq!(next_events(&mut everything, 1), ["I eu 15"]);
    let err = loop {
        match failing.recv_blocking(WAIT) {
            Ok(Some(ChangeEvent::Watermark(_))) => {}
            Ok(other) => panic!("{other:?}"),
            Err(e) => break e.to_string(),
        }
    };
    assert!(
        err.contains("subscription to 'revenue': its filter failed") && err.contains("zero"),
        "{err}"
    );
    block_on(db.execute("INSERT INTO orders VALUES ('us', 1)")).unwrap();
    assert!(db.wait_idle(WAIT));
    assert_eq!(next_events(&mut everything, 1), ["I us 1"]);
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        !matches!(
            nothing.try_recv(),
            Some(Ok(ChangeEvent::Insert(_) | ChangeEvent::Update { .. }))
        ),
        "a false filter delivered rows"
    );
}

/// A database with source `s (k BIGINT)` and stream `t` passing it on, and a push
/// subscription to `t`.
fn pass_through_subscription(
    config: SubscriptionConfig,
) -> (LaminarDB, laminar_db::PushSubscription) {
    let db = db(1);
    block_on(db.execute("CREATE SOURCE s (k BIGINT); CREATE STREAM t AS SELECT k FROM s")).unwrap();
    let sub = db.subscribe_push("t", config).unwrap();
    (db, sub)
}

/// Demand mode: after `request(n)` only the events asked for are delivered; the rest wait in
/// the buffer until the next request.
#[test]
fn a_push_subscription_in_demand_mode_delivers_only_what_was_requested() {
    let (db, mut sub) = pass_through_subscription(SubscriptionConfig {
        max_batch_size: 1,
        ..Default::default()
    });
    sub.request(2);
    for k in 0..4 {
        block_on(db.execute(&format!("INSERT INTO s VALUES ({k})"))).unwrap();
        assert!(db.wait_idle(WAIT));
    }
    std::thread::sleep(Duration::from_millis(100));
    let keys = |sub: &mut laminar_db::PushSubscription, count| {
        (0..count)
            .map(|_| match sub.recv_blocking(WAIT).unwrap() {
                Some(ChangeEvent::Insert(d)) => cells(&d.batch, 1)[0][0].clone(),
                other => panic!("{other:?}"),
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(keys(&mut sub, 2), ["0", "1"]);
    assert!(
        sub.recv_blocking(Duration::from_millis(100))
            .unwrap()
            .is_none()
    );
    sub.request(1);
    assert_eq!(keys(&mut sub, 1), ["2"]);
    assert!(
        sub.recv_blocking(Duration::from_millis(100))
            .unwrap()
            .is_none()
    );
    sub.request(10);
    assert_eq!(keys(&mut sub, 1), ["3"]);
}

/// Inserts arriving within `max_batch_delay` of each other are merged into one event of at
/// most `max_batch_size` batches.
#[test]
fn a_push_subscription_merges_inserts_within_its_batch_delay() {
    let (db, mut sub) = pass_through_subscription(SubscriptionConfig {
        max_batch_size: 3,
        max_batch_delay: Duration::from_secs(1),
        ..Default::default()
    });
    for k in 0..5 {
        block_on(db.execute(&format!("INSERT INTO s VALUES ({k})"))).unwrap();
    }
    assert_eq!(next_events(&mut sub, 2), ["I 0, 1, 2", "I 3, 4"]);
    let sequences = {
        block_on(db.execute("INSERT INTO s VALUES (5)")).unwrap();
        match sub.recv_blocking(WAIT).unwrap() {
            Some(ChangeEvent::Insert(d)) => d.sequence,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(sequences, 3, "one sequence number per delivered event");
}

/// Pushes one row into `s` per key, each its own batch, waiting after each until the query
/// handled it (push subscriptions are not counted: their dispatchers may still be behind).
fn insert_keys(db: &LaminarDB, keys: std::ops::Range<i64>) {
    for k in keys {
        block_on(db.execute(&format!("INSERT INTO s VALUES ({k})"))).unwrap();
        assert!(db.wait_idle(WAIT));
    }
}

/// The next `count` events of `sub`, each a one-row insert, as `key #sequence` (a `Lagged`
/// report or any other event fails the test).
fn next_keys(sub: &mut laminar_db::PushSubscription, count: usize) -> Vec<String> {
    (0..count)
        .map(|_| match sub.recv_blocking(WAIT).unwrap() {
            Some(ChangeEvent::Insert(d)) => {
                let rows = cells(&d.batch, 1);
                assert_eq!(rows.len(), 1, "one row per event: {rows:?}");
                format!("{} #{}", rows[0][0], d.sequence)
            }
            other => panic!("{other:?}"),
        })
        .collect()
}

/// Asserts that `sub` has nothing more to deliver (no event, lag report or end).
fn assert_nothing_more(sub: &mut laminar_db::PushSubscription) {
    let next = sub.recv_blocking(Duration::from_millis(200)).unwrap();
    assert!(next.is_none(), "{next:?}");
}

/// A subscription with `backpressure` and `buffer_size` whose events are not merged (one
/// per insert).
fn one_event_per_insert(
    backpressure: laminar_db::SubscriptionBackpressure,
    buffer_size: usize,
) -> SubscriptionConfig {
    SubscriptionConfig {
        buffer_size,
        backpressure,
        max_batch_size: 1,
        ..Default::default()
    }
}

/// `DropNewest`: once the buffer is full, incoming events are discarded silently, so the
/// receiver gets the oldest ones, no `Lagged` report, and nothing of the discarded ones; the
/// subscription keeps delivering once it has room again.
#[test]
fn a_push_subscription_dropping_the_newest_keeps_the_oldest_events() {
    let (db, mut sub) = pass_through_subscription(one_event_per_insert(
        laminar_db::SubscriptionBackpressure::DropNewest,
        2,
    ));
    insert_keys(&db, 0..5);
    // `wait_idle` does not wait for the dispatcher: give it time to take all five.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(next_keys(&mut sub, 2), ["0 #1", "1 #2"]);
    assert_nothing_more(&mut sub);
    insert_keys(&db, 5..6);
    let after = next_keys(&mut sub, 1);
    assert_eq!(after, ["5 #3"], "dropped events take no sequence number");
    assert_nothing_more(&mut sub);
}

/// `Sample(2)`: the dispatcher delivers the 1st, 3rd, 5th.. event it sees (the others are
/// dropped without a `Lagged` report), numbered consecutively. The source has no event time,
/// so there are no watermark events (which would count as seen).
#[test]
fn a_sampling_push_subscription_delivers_every_nth_event() {
    let (db, mut sub) = pass_through_subscription(one_event_per_insert(
        laminar_db::SubscriptionBackpressure::Sample(2),
        1024,
    ));
    insert_keys(&db, 0..6);
    assert_eq!(next_keys(&mut sub, 3), ["0 #1", "2 #2", "4 #3"]);
    assert_nothing_more(&mut sub);
}

/// `Block`: a subscriber that does not read holds its dispatcher rather than losing events;
/// the query keeps running meanwhile (`wait_idle` succeeds: the queue between the stream and
/// the dispatcher is far from full), and once the subscriber reads, every event arrives in
/// order with no `Lagged` report.
#[test]
fn a_blocking_push_subscription_loses_nothing() {
    let (db, mut sub) = pass_through_subscription(one_event_per_insert(
        laminar_db::SubscriptionBackpressure::Block,
        1,
    ));
    insert_keys(&db, 0..5);
    // Let the dispatcher fill the buffer and wait for room.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        next_keys(&mut sub, 5),
        ["0 #1", "1 #2", "2 #3", "3 #4", "4 #5"]
    );
    assert_nothing_more(&mut sub);
}

/// Sequence numbers count the delivered event data of a subscription from 1: one per
/// insert, two for an update (its old rows, then its new rows).
#[test]
fn push_subscription_events_are_numbered_in_order() {
    {
        let (db, mut sub) = pass_through_subscription(SubscriptionConfig {
            max_batch_size: 1,
            ..Default::default()
        });
        insert_keys(&db, 0..3);
        assert_eq!(next_keys(&mut sub, 3), ["0 #1", "1 #2", "2 #3"]);
    }
    let db = db(1);
    block_on(db.execute(REVENUE)).unwrap();
    let mut sub = db
        .subscribe_push(
            "revenue",
            SubscriptionConfig {
                max_batch_size: 1,
                ..Default::default()
            },
        )
        .unwrap();
    for sql in [
        "INSERT INTO orders VALUES ('eu', 15)",
        "INSERT INTO orders VALUES ('eu', 5)",
        "INSERT INTO orders VALUES ('us', 1)",
    ] {
        block_on(db.execute(sql)).unwrap();
        assert!(db.wait_idle(WAIT));
    }
    let mut numbered = Vec::new();
    while numbered.len() < 3 {
        let Some(event) = sub.recv_blocking(WAIT).unwrap() else {
            panic!("no event after {numbered:?}");
        };
        let sequences = match &event {
            ChangeEvent::Watermark(_) => continue,
            ChangeEvent::Insert(d) => format!("#{}", d.sequence),
            ChangeEvent::Update { old, new } => format!("#{} #{}", old.sequence, new.sequence),
            other => panic!("{other:?}"),
        };
        numbered.push(format!("{} {sequences}", describe(&event, 2)));
    }
    assert_eq!(
        numbered,
        ["I eu 15 #1", "U eu 15 -> eu 20 #2 #3", "I us 1 #4"]
    );
}

/// A paused callback subscription calls its callback for nothing (events wait in its
/// buffer); after `resume` it is called for each of them, in order.
#[test]
fn a_paused_callback_subscription_delivers_after_resume() {
    let (db, unused) = pass_through_subscription(SubscriptionConfig::default());
    drop(unused);
    let seen = Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
    let handle = {
        let seen = seen.clone();
        db.subscribe_callback(
            "t",
            SubscriptionConfig {
                max_batch_size: 1,
                ..Default::default()
            },
            move |event| seen.lock().push(describe(&event, 1)),
        )
        .unwrap()
    };
    handle.pause();
    // The callback task notices the pause once its current wait (50 ms) ends.
    std::thread::sleep(Duration::from_millis(100));
    insert_keys(&db, 0..3);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(handle.delivered(), 0);
    let early = seen.lock().clone();
    assert!(early.is_empty(), "{early:?}");
    handle.resume();
    // `delivered` counts an event before its callback runs: wait for the callbacks.
    let deadline = std::time::Instant::now() + WAIT;
    while seen.lock().len() < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(seen.lock().clone(), ["I 0", "I 1", "I 2"]);
    assert_eq!(handle.delivered(), 3);
}

/// `subscribe_stream` yields the subscription's events as an async `futures::Stream`.
#[test]
fn subscribe_stream_yields_events_as_an_async_stream() {
    use futures::StreamExt;

    let (db, unused) = pass_through_subscription(SubscriptionConfig::default());
    drop(unused);
    let stream = db
        .subscribe_stream(
            "t",
            SubscriptionConfig {
                max_batch_size: 1,
                ..Default::default()
            },
        )
        .unwrap();
    insert_keys(&db, 0..2);
    let events: Vec<String> = block_on(stream.take(2).map(|event| describe(&event, 1)).collect());
    assert_eq!(events, ["I 0", "I 1"]);
}

/// Dropping a push subscription cancels it: a `Block` subscriber with a one-event buffer
/// that stopped reading would stall the query once the queue to its dispatcher (two messages
/// here) is full, but dropped it never does; the stream's other subscribers get every row.
#[test]
fn a_dropped_push_subscription_never_stalls_the_query() {
    let db = LaminarDB::builder()
        .workers(1)
        .subscription_buffer(2)
        .build_sync()
        .unwrap();
    block_on(db.execute("CREATE SOURCE s (k BIGINT); CREATE STREAM t AS SELECT k FROM s")).unwrap();
    let mut blocking = db
        .subscribe_push(
            "t",
            SubscriptionConfig {
                buffer_size: 1,
                backpressure: laminar_db::SubscriptionBackpressure::Block,
                max_batch_size: 1,
                ..Default::default()
            },
        )
        .unwrap();
    let mut reader = db
        .subscribe_push("t", SubscriptionConfig::default())
        .unwrap();
    insert_keys(&db, 0..1);
    assert_eq!(next_keys(&mut blocking, 1), ["0 #1"]);
    drop(blocking);
    // `insert_keys` asserts `wait_idle` after each row.
    insert_keys(&db, 1..51);
    let mut keys = Vec::new();
    while keys.len() < 51 {
        match reader.recv_blocking(WAIT).unwrap() {
            Some(ChangeEvent::Insert(d)) => keys.extend(cells(&d.batch, 1).into_iter().flatten()),
            other => panic!("after {} rows: {other:?}", keys.len()),
        }
    }
    let expected: Vec<String> = (0..51).map(|k| k.to_string()).collect();
    assert_eq!(keys, expected);
}

/// Subscribing while the view changes: the snapshot and the changes after it add up to
/// the view's final contents, with no change missed or counted twice.
#[test]
fn a_snapshot_taken_under_load_has_no_gap_or_overlap() {
    for workers in [1, 2] {
        let db = db(workers);
        block_on(db.execute(REVENUE)).unwrap();
        let source = db.source_untyped("orders").unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new("region", DataType::Utf8, true),
            Field::new("amount", DataType::Int64, true),
        ]));
        let push = |i: i64| {
            let regions: Vec<String> = (0..20).map(|j| format!("r{}", (i * 7 + j) % 13)).collect();
            let amounts: Vec<i64> = (0..20).map(|j| i + j).collect();
            source
                .push_arrow(
                    RecordBatch::try_new(
                        schema.clone(),
                        vec![
                            Arc::new(StringArray::from(regions)) as ArrayRef,
                            Arc::new(Int64Array::from(amounts)),
                        ],
                    )
                    .unwrap(),
                )
                .unwrap();
        };
        for i in 0..50 {
            push(i);
        }
        let mut sub = db
            .subscribe_push(
                "revenue",
                SubscriptionConfig {
                    send_snapshot: true,
                    buffer_size: 1 << 20,
                    ..Default::default()
                },
            )
            .unwrap();
        for i in 50..100 {
            push(i);
        }
        let want = sorted(select(&db, "SELECT * FROM revenue"));
        let mut seen = BTreeMap::new();
        let mut first = true;
        // The dispatcher thread may still be handing events over.
        let deadline = std::time::Instant::now() + WAIT;
        while sorted(expand(&seen)) != want && std::time::Instant::now() < deadline {
            if let Some(event) = sub.recv_blocking(Duration::from_millis(50)).unwrap() {
                if first {
                    assert!(matches!(event, ChangeEvent::Snapshot(_)), "{event:?}");
                    first = false;
                }
                consolidate(&mut seen, &event, 3);
            }
        }
        // Nothing more than the final contents arrives.
        while let Some(Ok(event)) = sub.try_recv() {
            consolidate(&mut seen, &event, 3);
        }
        assert_eq!(sorted(expand(&seen)), want, "{workers} workers");
        db.shutdown_sync();
    }
}

/// `SUBSCRIBE view` starts with the view's contents (as inserts), then its changes.
#[test]
fn subscribe_statement_on_a_view_starts_from_its_contents() {
    let db = db(2);
    block_on(db.execute(REVENUE)).unwrap();
    block_on(db.execute("INSERT INTO orders VALUES ('eu', 10), ('us', 4)")).unwrap();
    assert!(db.wait_idle(WAIT));
    let ExecuteResult::Query(handle) =
        block_on(db.execute("SUBSCRIBE revenue WHERE region = 'eu'")).unwrap()
    else {
        panic!("expected a query handle")
    };
    let mut sub = handle.subscribe_arrow().unwrap();
    block_on(db.execute("INSERT INTO orders VALUES ('eu', 1)")).unwrap();
    let mut got = Vec::new();
    while got.len() < 3 {
        got.extend(rows(&[sub.recv_timeout(WAIT).unwrap().expect("rows")]));
    }
    assert_eq!(
        got,
        vec![
            vec!["eu", "10", "1", "I"],
            vec!["eu", "10", "1", "U-"],
            vec!["eu", "11", "2", "U+"],
        ]
    );
    handle.cancel().unwrap();
    db.shutdown_sync();
}

/// A view over its `memory.budget` stops with an error naming it and its size; the
/// budget is counted on what the view holds.
#[test]
fn a_view_over_its_memory_budget_fails_clearly() {
    let db = db(2);
    block_on(db.execute(
        "CREATE SOURCE s (k VARCHAR, x BIGINT); \
         CREATE MATERIALIZED VIEW small WITH ('memory.budget' = '1KiB') AS SELECT k, x FROM s",
    ))
    .unwrap();
    block_on(db.execute("INSERT INTO s VALUES ('a', 1), ('b', 2)")).unwrap();
    assert!(db.wait_idle(WAIT));
    assert!(db.failures().is_empty(), "{:?}", db.failures());
    let values: Vec<String> = (0..100).map(|i| format!("('k{i}', {i})")).collect();
    block_on(db.execute(&format!("INSERT INTO s VALUES {}", values.join(", ")))).unwrap();
    db.wait_idle(WAIT);
    let failures = db.failures();
    assert!(
        failures.iter().any(|f| {
            let f = f.to_string();
            f.contains("materialized view 'small' would hold")
                && f.contains("memory budget of 1024 bytes")
        }),
        "{failures:?}"
    );
    let state = select(&db, "SHOW MATERIALIZED VIEWS")
        .into_iter()
        .find(|r| r[0] == "small")
        .map(|r| r[2].clone())
        .unwrap();
    assert!(state.starts_with("failed"), "{state}");
    db.shutdown_sync();
}

/// `memory.budget` on a stream bounds each of its operators' state: an aggregation that
/// outgrows it stops with an error naming the operator, its size and the budget. Bad values
/// are refused at CREATE.
#[test]
fn an_operator_over_its_memory_budget_fails_clearly() {
    for workers in [1, 2] {
        let db = db(workers);
        block_on(db.execute(
            "CREATE SOURCE s (k VARCHAR, x BIGINT); \
             CREATE STREAM counts WITH ('memory.budget' = '16KiB') AS SELECT k, COUNT(*) AS n FROM s GROUP BY k",
        ))
        .unwrap();
        let values: Vec<String> = (0..2000).map(|i| format!("('key-{i}', {i})")).collect();
        block_on(db.execute(&format!("INSERT INTO s VALUES {}", values.join(", ")))).unwrap();
        let deadline = std::time::Instant::now() + WAIT;
        while db.failures().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let failures = db.failures();
        assert!(
            failures.iter().any(|f| {
                f.contains("operator 'counts")
                    && f.contains("bytes of state, over its memory budget of 16384 bytes")
            }),
            "{workers} workers: {failures:?}"
        );
        db.shutdown_sync();
    }
    let db = db(1);
    block_on(db.execute("CREATE SOURCE s (k VARCHAR)")).unwrap();
    for (sql, code, text) in [
        (
            "CREATE STREAM c WITH ('memory.budget' = '0') AS SELECT k FROM s",
            "SQL_INVALID",
            "stream 'c': memory.budget must be positive",
        ),
        (
            "CREATE STREAM c WITH ('state.size' = '1h') AS SELECT k FROM s",
            "SQL_INVALID",
            "stream 'c': unknown option 'state.size' (known: memory.budget, state.ttl, max_partitions)",
        ),
        (
            "CREATE STREAM c WITH ('state.ttl' = '1h') AS SELECT k FROM s",
            "SQL_INVALID",
            "state.ttl applies to updating joins",
        ),
    ] {
        let e = block_on(db.execute(sql)).unwrap_err();
        assert_eq!(e.code(), code, "{e}");
        assert!(e.to_string().contains(text), "{e}");
    }
    db.shutdown_sync();
}

/// Snapshot queries read the view between batches: two groups that every batch changes
/// together are always read equal (one worker: the aggregation emits each batch's
/// changes as one batch).
#[test]
fn concurrent_selects_never_see_a_half_applied_batch() {
    let db = db(1);
    block_on(db.execute(
        "CREATE SOURCE s (k VARCHAR, x BIGINT); \
         CREATE MATERIALIZED VIEW totals AS SELECT k, SUM(x) AS total, COUNT(*) AS n FROM s GROUP BY k",
    ))
    .unwrap();
    let source = db.source_untyped("s").unwrap();
    let schema: SchemaRef = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, true),
        Field::new("x", DataType::Int64, true),
    ]));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pusher = {
        let done = done.clone();
        std::thread::spawn(move || {
            for i in 0..400i64 {
                source
                    .push_arrow(
                        RecordBatch::try_new(
                            schema.clone(),
                            vec![
                                Arc::new(StringArray::from(vec!["a", "b"])) as ArrayRef,
                                Arc::new(Int64Array::from(vec![i, i])),
                            ],
                        )
                        .unwrap(),
                    )
                    .unwrap();
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        })
    };
    let mut reads = 0;
    while !done.load(std::sync::atomic::Ordering::SeqCst) || reads < 10 {
        let r = &select_now(
            &db,
            "SELECT (SELECT total FROM totals WHERE k = 'a') AS a, (SELECT total FROM totals WHERE k = 'b') AS b, SUM(n) AS n FROM totals",
        )[0];
        assert_eq!(r[0], r[1], "a half-applied batch: {r:?}");
        reads += 1;
    }
    pusher.join().unwrap();
    assert_eq!(
        select(&db, "SELECT total, n FROM totals ORDER BY k"),
        vec![vec!["79800", "400"], vec!["79800", "400"]]
    );
    db.shutdown_sync();
}

#[test]
fn several_views_in_one_query_are_read_at_one_point() {
    // Three views fed by one source at different depths of the pipeline, and a view over a
    // table: one query reading several of them sees them all after the same input.
    let db = db(2);
    block_on(db.execute(
        "CREATE SOURCE s (k VARCHAR, x BIGINT); \
         CREATE TABLE t (id BIGINT PRIMARY KEY, w BIGINT); \
         CREATE MATERIALIZED VIEW counts AS SELECT k, COUNT(*) AS n FROM s GROUP BY k; \
         CREATE MATERIALIZED VIEW grand AS SELECT SUM(n) AS total FROM counts; \
         CREATE MATERIALIZED VIEW raw_total AS SELECT COUNT(*) AS m FROM s; \
         CREATE MATERIALIZED VIEW weights AS SELECT SUM(w) AS sw FROM t",
    ))
    .unwrap();
    let source = db.source_untyped("s").unwrap();
    let schema: SchemaRef = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, true),
        Field::new("x", DataType::Int64, true),
    ]));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pusher = {
        let done = done.clone();
        let db = db.clone();
        std::thread::spawn(move || {
            // Batches of 2,000 rows over 1,000 keys: each takes the aggregation a while.
            let keys: Vec<String> = (0..2000).map(|i| format!("k{}", i % 1000)).collect();
            for i in 0..200i64 {
                source
                    .push_arrow(
                        RecordBatch::try_new(
                            schema.clone(),
                            vec![
                                Arc::new(StringArray::from(keys.clone())) as ArrayRef,
                                Arc::new(Int64Array::from(vec![i; 2000])),
                            ],
                        )
                        .unwrap(),
                    )
                    .unwrap();
                if i % 4 == 0 {
                    block_on(db.execute(&format!("INSERT INTO t VALUES ({i}, 1)"))).unwrap();
                }
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        })
    };
    let mut reads = 0;
    while !done.load(std::sync::atomic::Ordering::SeqCst) || reads < 10 {
        let r = &select_now(
            &db,
            "SELECT (SELECT SUM(n) FROM counts) AS a, (SELECT total FROM grand) AS b, \
                 (SELECT m FROM raw_total) AS c, (SELECT sw FROM weights) AS d, \
                 (SELECT SUM(w) FROM t) AS e",
        )[0];
        assert!(
            r[0] == r[1] && r[1] == r[2],
            "the views were read at different points: {r:?}"
        );
        assert_eq!(
            r[3], r[4],
            "the table and its view were read at different points"
        );
        // `counts` runs as two parallel aggregation instances: read alone, it still shows
        // whole input batches.
        let alone = select_now(&db, "SELECT SUM(n) FROM counts");
        let n: i64 = alone[0][0].parse().unwrap_or(0);
        assert_eq!(n % 2000, 0, "a view read alone showed part of a batch: {n}");
        reads += 1;
    }
    pusher.join().unwrap();
    assert_eq!(
        select(
            &db,
            "SELECT (SELECT total FROM grand), (SELECT m FROM raw_total), (SELECT sw FROM weights)"
        ),
        vec![vec!["400000", "400000", "50"]]
    );
    db.shutdown_sync();
}

#[test]
fn partitioned_top_n_analytic_and_join_queries_run_as_parallel_instances() {
    let db = db(2);
    block_on(db.execute(
        "CREATE SOURCE bids (auction BIGINT, price BIGINT, ts BIGINT, WATERMARK FOR ts AS ts); \
         CREATE SOURCE items (id BIGINT, name VARCHAR, ts BIGINT, WATERMARK FOR ts AS ts); \
         CREATE SOURCE stock (id BIGINT, qty BIGINT, ts BIGINT, WATERMARK FOR ts AS ts); \
         CREATE MATERIALIZED VIEW stocked WITH ('state.ttl' = '1 hour') AS SELECT i.id, i.name, s.qty FROM items i JOIN stock s ON i.id = s.id; \
         CREATE TABLE prices (id BIGINT PRIMARY KEY, p BIGINT); \
         CREATE MATERIALIZED VIEW priced AS SELECT i.id, r.p FROM items i JOIN prices r ON i.id = r.id; \
         CREATE MATERIALIZED VIEW best AS SELECT auction, price FROM (SELECT auction, price, \
           ROW_NUMBER() OVER (PARTITION BY auction ORDER BY price DESC) AS rn FROM bids) WHERE rn <= 2; \
         CREATE STREAM moves AS SELECT auction, price - LAG(price) OVER (PARTITION BY auction ORDER BY ts) AS d FROM bids",
    ))
    .unwrap();
    for (name, kind) in [
        ("best", "TopNOperator"),
        ("moves", "AnalyticOperator"),
        ("stocked", "JoinOperator"),
    ] {
        let plan = select(&db, &format!("EXPLAIN ANALYZE {name}"));
        let line = |prefix: &str| {
            plan.iter()
                .find(|r| r[0].starts_with(prefix))
                .map(|r| r[1].clone())
                .unwrap_or_else(|| panic!("no '{prefix}' row in {plan:?}"))
        };
        assert!(
            line("operator").starts_with(&format!("{kind} x2 (merged)")),
            "{plan:?}"
        );
        assert!(
            line(&format!("instance {name}[1]")).starts_with(kind),
            "{plan:?}"
        );
        assert!(line("exchange").starts_with("hash exchange"), "{plan:?}");
    }
    // Every partition in one place, whichever instance holds it.
    let source = db.source_untyped("bids").unwrap();
    let schema: SchemaRef = Arc::new(Schema::new(vec![
        Field::new("auction", DataType::Int64, true),
        Field::new("price", DataType::Int64, true),
        Field::new("ts", DataType::Int64, true),
    ]));
    let auctions: Vec<i64> = (0..300).map(|i| i % 30).collect();
    let prices: Vec<i64> = (0..300).collect();
    source
        .push_arrow(
            RecordBatch::try_new(
                schema,
                vec![
                    Arc::new(Int64Array::from(auctions)) as ArrayRef,
                    Arc::new(Int64Array::from(prices.clone())),
                    Arc::new(Int64Array::from(prices)),
                ],
            )
            .unwrap(),
        )
        .unwrap();
    assert_eq!(
        select(
            &db,
            "SELECT COUNT(*), MIN(price), COUNT(DISTINCT auction) FROM best"
        ),
        vec![vec!["60", "240", "30"]]
    );
    // A join reading a changelog (a table) runs as one instance: an update changing a row's
    // key would otherwise reach two instances and its changes could arrive out of order.
    let priced = select(&db, "EXPLAIN ANALYZE priced");
    assert!(
        priced
            .iter()
            .any(|r| r[0].starts_with("operator") && r[1].starts_with("JoinOperator rows_in")),
        "{priced:?}"
    );
    // Both sides of each key meet in one instance.
    let values = |f: &dyn Fn(i64) -> String| (0..200).map(f).collect::<Vec<_>>().join(", ");
    block_on(db.execute(&format!(
        "INSERT INTO items VALUES {}; INSERT INTO stock VALUES {}; INSERT INTO stock VALUES (8, 1000, 5)",
        values(&|i| format!("({i}, 'item{i}', 1)")),
        values(&|i| format!("({i}, {i}, 2)")),
    )))
    .unwrap();
    assert_eq!(
        select(&db, "SELECT COUNT(*), SUM(qty) FROM stocked"),
        vec![vec!["201".to_string(), (19900 + 1000).to_string()]]
    );
    // max_partitions bounds all instances together; the instance that crosses it fails the
    // view as a whole.
    block_on(db.execute(
        "CREATE MATERIALIZED VIEW few WITH ('max_partitions' = '3') AS SELECT auction, price FROM \
           (SELECT auction, price, ROW_NUMBER() OVER (PARTITION BY auction ORDER BY price DESC) AS rn FROM bids) WHERE rn <= 1",
    ))
    .unwrap();
    let push = |auctions: Vec<i64>| {
        let n = auctions.len() as i64;
        db.source_untyped("bids")
            .unwrap()
            .push_arrow(
                RecordBatch::try_new(
                    Arc::new(Schema::new(vec![
                        Field::new("auction", DataType::Int64, true),
                        Field::new("price", DataType::Int64, true),
                        Field::new("ts", DataType::Int64, true),
                    ])),
                    vec![
                        Arc::new(Int64Array::from(auctions)) as ArrayRef,
                        Arc::new(Int64Array::from(vec![1; n as usize])),
                        Arc::new(Int64Array::from(vec![1000; n as usize])),
                    ],
                )
                .unwrap(),
            )
            .unwrap();
    };
    push(vec![1000, 1001, 1002]);
    let state = |db: &LaminarDB| {
        select(db, "SHOW MATERIALIZED VIEWS")
            .into_iter()
            .find(|r| r[0] == "few")
            .map(|r| r[2].clone())
            .unwrap()
    };
    assert!(state(&db).starts_with("running"), "{}", state(&db));
    push((1003..1010).collect());
    assert!(state(&db).starts_with("failed"), "{}", state(&db));
    assert!(
        db.failures()
            .iter()
            .any(|f| f.contains("over its max_partitions of 3")),
        "{:?}",
        db.failures()
    );
    db.shutdown_sync();
}

/// The key a view is indexed by and how often it was read by key and whole, from
/// `EXPLAIN ANALYZE`.
fn view_reads(db: &LaminarDB, view: &str) -> (String, u64, u64) {
    let line = select(db, &format!("EXPLAIN ANALYZE {view}"))
        .into_iter()
        .find(|r| r[0] == format!("view {view}"))
        .map(|r| r[1].clone())
        .expect("a view line");
    let field = |name: &str| {
        line.split(&format!(" {name}="))
            .nth(1)
            .map(|rest| {
                if rest.starts_with('(') {
                    rest[..=rest.find(')').unwrap()].to_string()
                } else {
                    rest.split(' ').next().unwrap().to_string()
                }
            })
            .unwrap_or_else(|| panic!("no {name} in {line}"))
    };
    (
        field("key"),
        field("key_reads").parse().unwrap(),
        field("full_reads").parse().unwrap(),
    )
}

/// A snapshot query that fixes every column of a view's key with `=` / `IN` literals reads
/// only those keys' rows; any other read takes the whole view, once per query. Both give the
/// same answers.
#[test]
fn point_queries_read_a_view_by_its_key() {
    let db = db(1);
    block_on(db.execute(
        "CREATE SOURCE s (a VARCHAR, b BIGINT, x BIGINT); \
         CREATE MATERIALIZED VIEW one AS SELECT b, COUNT(*) AS n, SUM(x) AS total FROM s GROUP BY b; \
         CREATE MATERIALIZED VIEW two AS SELECT a, b, SUM(x) AS total FROM s GROUP BY a, b; \
         CREATE MATERIALIZED VIEW plain AS SELECT a, x FROM s WHERE x > 0; \
         INSERT INTO s VALUES ('p', 1, 10), ('p', 2, 20), ('q', 1, 5), (NULL, NULL, 7), ('q', 3, -1), ('p', 1, 1)",
    ))
    .unwrap();
    assert_eq!(view_reads(&db, "one").0, "(b)");
    assert_eq!(view_reads(&db, "two").0, "(a, b)");
    assert_eq!(view_reads(&db, "plain").0, "none");

    // (query answered by key, the same question asked so that it reads the whole view)
    let cases = [
        (
            "SELECT n, total FROM one WHERE b = 1",
            "SELECT n, total FROM one WHERE b + 0 = 1",
            vec![vec!["3", "16"]],
        ),
        (
            "SELECT b, n FROM one WHERE b IN (1, 3, 99, NULL) ORDER BY b",
            "SELECT b, n FROM one WHERE b + 0 IN (1, 3, 99) ORDER BY b",
            vec![vec!["1", "3"], vec!["3", "1"]],
        ),
        (
            "SELECT total FROM two WHERE a = 'q' AND b = 1",
            "SELECT total FROM two WHERE a || '' = 'q' AND b = 1",
            vec![vec!["5"]],
        ),
        (
            "SELECT a, b, total FROM two WHERE 2 = b AND a IN ('p', 'q') ORDER BY a, b",
            "SELECT a, b, total FROM two WHERE b + 0 = 2 AND a IN ('p', 'q') ORDER BY a, b",
            vec![vec!["p", "2", "20"]],
        ),
        (
            "SELECT a, b, total FROM two WHERE a IN ('p', 'q') AND b IN (1, 2) AND total > 5 ORDER BY a, b",
            "SELECT a, b, total FROM two WHERE a || '' IN ('p', 'q') AND b IN (1, 2) AND total > 5 ORDER BY a, b",
            vec![vec!["p", "1", "11"], vec!["p", "2", "20"]],
        ),
        (
            "SELECT n FROM one WHERE b = 42",
            "SELECT n FROM one WHERE b + 0 = 42",
            vec![],
        ),
    ];
    for (by_key, whole, expected) in &cases {
        let (_, keyed_before, full_before) =
            view_reads(&db, if by_key.contains("two") { "two" } else { "one" });
        let view = if by_key.contains("two") { "two" } else { "one" };
        assert_eq!(&select(&db, by_key), expected, "{by_key}");
        let (_, keyed, full) = view_reads(&db, view);
        assert_eq!(
            (keyed, full),
            (keyed_before + 1, full_before),
            "{by_key} reads by key"
        );
        assert_eq!(&select(&db, whole), expected, "{whole}");
        let (_, keyed_after, full_after) = view_reads(&db, view);
        assert_eq!(
            (keyed_after, full_after),
            (keyed, full + 1),
            "{whole} reads the view"
        );
    }
    // An OR of key and non-key conditions, a part of the key, NULL keys and a view read twice
    // read the whole view (once).
    for (sql, expected) in [
        (
            "SELECT n FROM one WHERE b = 1 OR total = 7 ORDER BY n",
            vec![vec!["1"], vec!["3"]],
        ),
        (
            "SELECT total FROM two WHERE a = 'p' ORDER BY total",
            vec![vec!["11"], vec!["20"]],
        ),
        ("SELECT n FROM one WHERE b IS NULL", vec![vec!["1"]]),
        (
            "SELECT x.n, y.total FROM one x JOIN one y ON x.b = y.b WHERE x.b = 1",
            vec![vec!["3", "16"]],
        ),
    ] {
        let (_, keyed_before, full_before) = view_reads(&db, "one");
        let (_, keyed_two, full_two) = view_reads(&db, "two");
        assert_eq!(select(&db, sql), expected, "{sql}");
        let view = if sql.contains("two") { "two" } else { "one" };
        let (_, keyed, full) = view_reads(&db, view);
        let (kb, fb) = if view == "two" {
            (keyed_two, full_two)
        } else {
            (keyed_before, full_before)
        };
        assert_eq!(
            (keyed, full),
            (kb, fb + 1),
            "{sql} reads the whole view once"
        );
    }
    // A lookup sees later changes.
    block_on(db.execute("INSERT INTO s VALUES ('p', 1, 100)")).unwrap();
    assert_eq!(
        select(&db, "SELECT n, total FROM one WHERE b = 1"),
        vec![vec!["4", "116"]]
    );
    assert_eq!(
        select(&db, "SELECT COUNT(*) FROM plain WHERE a = 'p'"),
        vec![vec!["4"]]
    );
    db.shutdown_sync();
}

/// A view's contents, and those of views and streams reading it, come back from a
/// checkpoint; readers re-created from the checkpoint do not receive the contents again.
#[test]
fn views_recover_from_a_checkpoint_without_counting_twice() {
    let dir = tempfile::tempdir().unwrap();
    let setup = "CREATE SOURCE s (k VARCHAR, x BIGINT); \
         CREATE MATERIALIZED VIEW per_key AS SELECT k, COUNT(*) AS n, SUM(x) AS total FROM s GROUP BY k; \
         CREATE MATERIALIZED VIEW overall AS SELECT SUM(n) AS n, SUM(total) AS total FROM per_key";
    let open = || durable_db(dir.path(), 2, setup);
    let out = tempfile::tempdir().unwrap();
    let late_sink = format!(
        "CREATE SINK late_out FROM per_key INTO FILES (path = '{}', format = 'csv', changelog = 'true')",
        out.path().display()
    );
    let db = open();
    block_on(db.start()).unwrap();
    block_on(db.execute("INSERT INTO s VALUES ('a', 1), ('b', 2), ('a', 3)")).unwrap();
    assert!(db.wait_idle(WAIT));
    // A view and a sink created after data arrived start from what they read.
    block_on(db.execute("CREATE MATERIALIZED VIEW late AS SELECT k, n FROM per_key WHERE n > 1"))
        .unwrap();
    block_on(db.execute(&late_sink)).unwrap();
    assert!(db.wait_idle(WAIT));
    assert_eq!(db.sink_metrics("late_out").unwrap().rows_in, 2, "the seed");
    assert_eq!(select(&db, "SELECT * FROM late"), vec![vec!["a", "2"]]);
    db.checkpoint().unwrap().expect("durable");
    // Logged after the checkpoint: replayed at the next start.
    block_on(db.execute("INSERT INTO s VALUES ('b', 10)")).unwrap();
    assert!(db.wait_idle(WAIT));
    let before = (
        select(&db, "SELECT * FROM per_key ORDER BY k"),
        select(&db, "SELECT * FROM overall"),
        select(&db, "SELECT * FROM late ORDER BY k"),
    );
    assert_eq!(before.1, vec![vec!["4", "16"]]);
    std::mem::forget(db); // a crash

    let db = open();
    block_on(db.execute("CREATE MATERIALIZED VIEW late AS SELECT k, n FROM per_key WHERE n > 1"))
        .unwrap();
    block_on(db.execute(&late_sink)).unwrap();
    block_on(db.start()).unwrap();
    assert!(db.wait_idle(WAIT));
    // Re-created from the checkpoint: only the replayed change (`U-`, `U+`), no seed.
    assert_eq!(db.sink_metrics("late_out").unwrap().rows_in, 2);
    let after = (
        select(&db, "SELECT * FROM per_key ORDER BY k"),
        select(&db, "SELECT * FROM overall"),
        select(&db, "SELECT * FROM late ORDER BY k"),
    );
    assert_eq!(after, before);
    db.shutdown_sync();
}

/// Updating joins, top-N and analytic functions restore their state from a checkpoint: after
/// a crash and a replay of what was logged after the checkpoint, every view equals what it
/// was before the crash (rows held by the analytic operator for the watermark included).
#[test]
fn joins_top_n_and_analytic_functions_recover_from_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let setup = "CREATE SOURCE customers (id BIGINT, tier VARCHAR, _op VARCHAR); \
         CREATE SOURCE orders (oid BIGINT, cid BIGINT, amount BIGINT, _op VARCHAR); \
         CREATE SOURCE clicks (cid BIGINT, v BIGINT, ts BIGINT, WATERMARK FOR ts AS ts); \
         CREATE MATERIALIZED VIEW enriched AS SELECT o.oid, o.amount, c.tier FROM orders o LEFT JOIN customers c ON o.cid = c.id; \
         CREATE MATERIALIZED VIEW biggest AS SELECT cid, amount, rn FROM (SELECT cid, amount, ROW_NUMBER() OVER (PARTITION BY cid ORDER BY amount DESC) AS rn FROM orders) WHERE rn <= 2; \
         CREATE MATERIALIZED VIEW click_tiers WITH ('state.ttl' = '1 minute') AS SELECT k.cid, k.ts, c.tier FROM clicks k JOIN customers c ON k.cid = c.id; \
         CREATE MATERIALIZED VIEW deltas AS SELECT cid, ts, v - LAG(v) OVER (PARTITION BY cid ORDER BY ts) AS d FROM clicks";
    let open = || durable_db(dir.path(), 2, setup);
    let snapshot = |db: &LaminarDB| {
        [
            "SELECT * FROM enriched ORDER BY oid",
            "SELECT * FROM biggest ORDER BY cid, rn",
            "SELECT * FROM click_tiers ORDER BY ts",
            "SELECT * FROM deltas ORDER BY ts",
        ]
        .map(|q| select(db, q))
    };
    let db = open();
    block_on(db.start()).unwrap();
    execute_each(
        &db,
        &[
            "INSERT INTO customers VALUES (7, 'gold', 'I'), (8, 'silver', 'I')",
            "INSERT INTO orders VALUES (1, 7, 10, 'I'), (2, 7, 30, 'I'), (3, 9, 5, 'I'), (4, 7, 20, 'I')",
            "INSERT INTO clicks VALUES (7, 1, 1000), (7, 4, 2000)",
        ],
    );
    db.checkpoint().unwrap().expect("durable");
    // Logged after the checkpoint: replayed at the next start.
    execute_each(
        &db,
        &[
            "INSERT INTO customers VALUES (7, 'gold', 'U-'), (7, 'platinum', 'U+'), (9, 'new', 'I')",
            "INSERT INTO orders VALUES (2, 7, 30, 'D')",
            "INSERT INTO clicks VALUES (7, 9, 3000)",
        ],
    );
    let before = snapshot(&db);
    assert_eq!(
        before[0],
        vec![
            vec!["1", "10", "platinum"],
            vec!["3", "5", "new"],
            vec!["4", "20", "platinum"]
        ]
    );
    assert_eq!(
        before[1],
        vec![
            vec!["7", "20", "1"],
            vec!["7", "10", "2"],
            vec!["9", "5", "1"]
        ]
    );
    // The click at 3000 waits for the watermark: deltas has the first two.
    assert_eq!(
        before[3],
        vec![vec!["7", "1000", "NULL"], vec!["7", "2000", "3"]]
    );
    std::mem::forget(db); // a crash

    let db = open();
    block_on(db.start()).unwrap();
    assert!(db.wait_idle(WAIT));
    assert!(db.failures().is_empty(), "{:?}", db.failures());
    assert_eq!(snapshot(&db), before);
    // The restored analytic state goes on: the held row and a new one.
    block_on(db.execute("INSERT INTO clicks VALUES (7, 10, 4000)")).unwrap();
    assert!(db.wait_idle(WAIT));
    assert_eq!(
        select(&db, "SELECT * FROM deltas ORDER BY ts"),
        vec![
            vec!["7", "1000", "NULL"],
            vec!["7", "2000", "3"],
            vec!["7", "3000", "5"]
        ]
    );
    db.shutdown_sync();
}

/// Stacked operators (an aggregation over a join, over an aggregation, over a top-N, and a
/// top-N over an aggregation) restore both operators' state from one checkpoint: changes
/// logged after it retract rows that only the restored state holds.
#[test]
fn stacked_operators_recover_from_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let setup = "CREATE SOURCE auctions (id BIGINT, category VARCHAR, _op VARCHAR); \
         CREATE SOURCE bids (auction BIGINT, price BIGINT, _op VARCHAR); \
         CREATE MATERIALIZED VIEW avg_price AS SELECT category, AVG(best) AS average, COUNT(*) AS n FROM (SELECT a.id, a.category, MAX(b.price) AS best FROM auctions a JOIN bids b ON a.id = b.auction GROUP BY a.id, a.category) GROUP BY category; \
         CREATE MATERIALIZED VIEW best_two AS SELECT auction, SUM(price) AS total FROM (SELECT auction, price, ROW_NUMBER() OVER (PARTITION BY auction ORDER BY price DESC) AS rn FROM bids) WHERE rn <= 2 GROUP BY auction; \
         CREATE MATERIALIZED VIEW hot AS SELECT category, n FROM (SELECT category, n, ROW_NUMBER() OVER (ORDER BY n DESC, category) AS rn FROM (SELECT a.category, COUNT(*) AS n FROM auctions a JOIN bids b ON a.id = b.auction GROUP BY a.category)) WHERE rn = 1";
    let open = || durable_db(dir.path(), 2, setup);
    let snapshot = |db: &LaminarDB| {
        [
            "SELECT * FROM avg_price ORDER BY category",
            "SELECT * FROM best_two ORDER BY auction",
            "SELECT * FROM hot",
        ]
        .map(|q| select(db, q))
    };
    let db = open();
    block_on(db.start()).unwrap();
    execute_each(
        &db,
        &[
            "INSERT INTO auctions VALUES (1, 'books', 'I'), (2, 'books', 'I'), (3, 'games', 'I')",
            "INSERT INTO bids VALUES (1, 10, 'I'), (1, 30, 'I'), (1, 20, 'I'), (2, 40, 'I'), (3, 5, 'I'), (3, 6, 'I')",
        ],
    );
    db.checkpoint().unwrap().expect("durable");
    // Logged after the checkpoint: each retracts rows from before it.
    execute_each(
        &db,
        &[
            "INSERT INTO bids VALUES (1, 30, 'D'), (2, 40, 'D'), (3, 7, 'I'), (3, 8, 'I')",
            "INSERT INTO auctions VALUES (1, 'books', 'U-'), (1, 'games', 'U+')",
        ],
    );
    assert!(db.failures().is_empty(), "{:?}", db.failures());
    let before = snapshot(&db);
    // Auction 1 (now games) has 10 and 20, auction 2 none, auction 3 (games) 5, 6, 7, 8.
    assert_eq!(before[0], vec![vec!["games", "14.0", "2"]]);
    assert_eq!(before[1], vec![vec!["1", "30"], vec!["3", "15"]],);
    assert_eq!(before[2], vec![vec!["games", "6"]]);
    std::mem::forget(db); // a crash

    let db = open();
    block_on(db.start()).unwrap();
    assert!(db.wait_idle(WAIT));
    assert!(db.failures().is_empty(), "{:?}", db.failures());
    assert_eq!(snapshot(&db), before);
    // The restored state goes on.
    block_on(db.execute("INSERT INTO bids VALUES (3, 8, 'D'), (1, 50, 'I')")).unwrap();
    assert!(db.wait_idle(WAIT));
    assert!(db.failures().is_empty(), "{:?}", db.failures());
    assert_eq!(
        snapshot(&db),
        [
            vec![vec!["games", "28.5", "2"]],
            vec![vec!["1", "70"], vec!["3", "13"]],
            vec![vec!["games", "6"]],
        ]
    );
    db.shutdown_sync();
}

/// Checks that `sql` is answered as a point query and that its rows equal the general
/// snapshot path's (forced by a condition the point path does not take).
fn check_point_query(db: &LaminarDB, sql: &str) -> Result<(), TestCaseError> {
    let explained = select(db, &format!("EXPLAIN {sql}"));
    prop_assert_eq!(
        explained.first().map(|r| r[0].as_str()),
        Some("snapshot_query"),
        "not a point query: {}",
        sql
    );
    let fast = sorted(select(db, sql));
    let general = sorted(select(db, &format!("{sql} AND 1 = 1")));
    prop_assert_eq!(fast, general, "{}", sql);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: proptest_cases(16), failure_persistence: None, ..ProptestConfig::default() })]

    /// Point queries on tables (a two-column key) and keyed views read the key index and
    /// return what DataFusion's plan over the same snapshot returns, for keys present and
    /// absent, deleted and replaced rows, `*`, renamed and reordered columns.
    #[test]
    fn point_queries_equal_the_general_path(
        rows in proptest::collection::vec((0i64..6, 0usize..3, -50i64..50), 0..60),
        deletes in proptest::collection::vec((0i64..6, 0usize..3), 0..10),
        probes in proptest::collection::vec((-1i64..7, 0usize..4), 1..12),
    ) {
        const B: [&str; 4] = ["x", "y", "z", "w"];
        let db = db(1);
        block_on(db.execute(
            "CREATE TABLE t (a BIGINT, b VARCHAR, v BIGINT, PRIMARY KEY (a, b)); \
             CREATE SOURCE s (a BIGINT, b VARCHAR, v BIGINT); \
             CREATE MATERIALIZED VIEW g AS SELECT a, b, COUNT(*) AS n, SUM(v) AS total FROM s GROUP BY a, b; \
             CREATE MATERIALIZED VIEW h AS SELECT a, MAX(v) AS hi FROM s GROUP BY a",
        ))
        .unwrap();
        for chunk in rows.chunks(7) {
            let values = chunk
                .iter()
                .map(|(a, b, v)| format!("({a}, '{}', {v})", B[*b]))
                .collect::<Vec<_>>()
                .join(", ");
            block_on(db.execute(&format!("INSERT INTO t VALUES {values}"))).unwrap();
            block_on(db.execute(&format!("INSERT INTO s VALUES {values}"))).unwrap();
        }
        for (a, b) in &deletes {
            block_on(db.execute(&format!("DELETE FROM t WHERE a = {a} AND b = '{}'", B[*b]))).unwrap();
        }
        for (a, b) in &probes {
            let b = B[*b];
            check_point_query(&db, &format!("SELECT * FROM t WHERE a = {a} AND b = '{b}'"))?;
            check_point_query(&db, &format!("SELECT v, t.a AS k FROM t WHERE b = '{b}' AND {a} = a"))?;
            check_point_query(&db, &format!("SELECT n, total FROM g WHERE a = {a} AND b = '{b}'"))?;
            check_point_query(&db, &format!("SELECT * FROM h x WHERE x.a = {a}"))?;
        }
        db.shutdown_sync();
    }
}

// ---- Differential property test ------------------------------------------------------

/// View definitions over the changelog source `t (k, x, _op)`, each with the batch query
/// over the final table `t (k, x)` that computes the same rows.
const VIEWS: &[(&str, &str)] = &[
    (
        "SELECT k, COUNT(*) AS n, SUM(x) AS total FROM t GROUP BY k",
        "SELECT k, COUNT(*) AS n, SUM(x) AS total FROM t GROUP BY k",
    ),
    (
        "SELECT k, MIN(x) AS lo, MAX(x) AS hi FROM t GROUP BY k",
        "SELECT k, MIN(x) AS lo, MAX(x) AS hi FROM t GROUP BY k",
    ),
    // A global aggregation view always has its one row, also over no rows.
    (
        "SELECT COUNT(*) AS n, SUM(x) AS total FROM t",
        "SELECT COUNT(*) AS n, SUM(x) AS total FROM t",
    ),
    (
        "SELECT k, x FROM t WHERE x > 0",
        "SELECT k, x FROM t WHERE x > 0",
    ),
    (
        "SELECT upper(k) AS u, x * 2 AS y FROM t WHERE x % 3 <> 0",
        "SELECT upper(k) AS u, x * 2 AS y FROM t WHERE x % 3 <> 0",
    ),
    (
        "SELECT k, COUNT(*) AS n FROM t WHERE x % 2 = 0 GROUP BY k HAVING COUNT(*) > 1",
        "SELECT k, COUNT(*) AS n FROM t WHERE x % 2 = 0 GROUP BY k HAVING COUNT(*) > 1",
    ),
    (
        "SELECT x % 3 AS m, COUNT(DISTINCT k) AS keys FROM t GROUP BY x % 3",
        "SELECT x % 3 AS m, COUNT(DISTINCT k) AS keys FROM t GROUP BY x % 3",
    ),
    (
        "SELECT DISTINCT k FROM t WHERE x > 0",
        "SELECT DISTINCT k FROM t WHERE x > 0",
    ),
    (
        "SELECT DISTINCT x % 4 AS m FROM t",
        "SELECT DISTINCT x % 4 AS m FROM t",
    ),
    (
        "SELECT k FROM t WHERE x > 5 UNION SELECT k FROM t WHERE x < -5",
        "SELECT k FROM t WHERE x > 5 UNION SELECT k FROM t WHERE x < -5",
    ),
    (
        "SELECT k, x FROM t WHERE x > 10 UNION ALL SELECT k, x FROM t WHERE x < -10",
        "SELECT k, x FROM t WHERE x > 10 UNION ALL SELECT k, x FROM t WHERE x < -10",
    ),
    // Top-N: ties in the order are whole-row ties here, so ROW_NUMBER's choice among them
    // does not change the rows.
    (
        "SELECT k, x, rn FROM (SELECT k, x, ROW_NUMBER() OVER (PARTITION BY k ORDER BY x DESC) AS rn FROM t) WHERE rn <= 2",
        "SELECT k, x, rn FROM (SELECT k, x, ROW_NUMBER() OVER (PARTITION BY k ORDER BY x DESC) AS rn FROM t) WHERE rn <= 2",
    ),
    (
        "SELECT k, x, r FROM (SELECT k, x, RANK() OVER (PARTITION BY k ORDER BY x) AS r FROM t) WHERE r <= 3",
        "SELECT k, x, r FROM (SELECT k, x, RANK() OVER (PARTITION BY k ORDER BY x) AS r FROM t) WHERE r <= 3",
    ),
    (
        "SELECT x, d FROM (SELECT x, DENSE_RANK() OVER (ORDER BY x DESC) AS d FROM t) WHERE d <= 2",
        "SELECT x, d FROM (SELECT x, DENSE_RANK() OVER (ORDER BY x DESC) AS d FROM t) WHERE d <= 2",
    ),
    (
        "SELECT k, x FROM (SELECT k, x, ROW_NUMBER() OVER (PARTITION BY k ORDER BY x DESC) AS rn FROM t) WHERE rn = 1",
        "SELECT k, x FROM (SELECT k, x, ROW_NUMBER() OVER (PARTITION BY k ORDER BY x DESC) AS rn FROM t) WHERE rn = 1",
    ),
];

/// Views over the first view of [`VIEWS`] (`v0`), each with its batch query over `t`.
const CASCADED: &[(&str, &str)] = &[
    (
        "SELECT k, n FROM (SELECT k, n, ROW_NUMBER() OVER (ORDER BY n DESC, k) AS rn FROM v0) WHERE rn <= 2",
        "SELECT k, n FROM (SELECT k, n, ROW_NUMBER() OVER (ORDER BY n DESC, k) AS rn FROM (SELECT k, COUNT(*) AS n FROM t GROUP BY k)) WHERE rn <= 2",
    ),
    (
        "SELECT n, COUNT(*) AS keys FROM v0 GROUP BY n",
        "SELECT n, COUNT(*) AS keys FROM (SELECT k, COUNT(*) AS n FROM t GROUP BY k) GROUP BY n",
    ),
    (
        "SELECT DISTINCT n FROM v0",
        "SELECT DISTINCT n FROM (SELECT k, COUNT(*) AS n FROM t GROUP BY k)",
    ),
    (
        "SELECT k, total FROM v0 WHERE n >= 2",
        "SELECT k, SUM(x) AS total FROM t GROUP BY k HAVING COUNT(*) >= 2",
    ),
    (
        "SELECT SUM(total) AS total, MAX(n) AS most FROM v0",
        "SELECT SUM(total) AS total, MAX(n) AS most FROM (SELECT k, COUNT(*) AS n, SUM(x) AS total FROM t GROUP BY k)",
    ),
];

/// Updating joins of `t (k, x)` with a second changelog `u (k, y)` (keys may be NULL in
/// both), each with its batch query. `{j0}` names the first of them, `{v0}` the first view
/// of [`VIEWS`].
const JOINS: &[(&str, &str)] = &[
    (
        "SELECT t.k, t.x, u.y FROM t JOIN u ON t.k = u.k",
        "SELECT t.k, t.x, u.y FROM t JOIN u ON t.k = u.k",
    ),
    (
        "SELECT t.k, t.x, u.y FROM t LEFT JOIN u ON t.k = u.k",
        "SELECT t.k, t.x, u.y FROM t LEFT JOIN u ON t.k = u.k",
    ),
    (
        "SELECT t.x, u.k, u.y FROM t RIGHT JOIN u ON t.k = u.k",
        "SELECT t.x, u.k, u.y FROM t RIGHT JOIN u ON t.k = u.k",
    ),
    (
        "SELECT t.k AS tk, t.x, u.k AS uk, u.y FROM t FULL JOIN u ON t.k = u.k",
        "SELECT t.k AS tk, t.x, u.k AS uk, u.y FROM t FULL JOIN u ON t.k = u.k",
    ),
    (
        "SELECT t.k, t.x, u.y FROM t JOIN u ON t.k = u.k AND t.x < u.y",
        "SELECT t.k, t.x, u.y FROM t JOIN u ON t.k = u.k AND t.x < u.y",
    ),
    (
        "SELECT t.k, t.x, u.y FROM t FULL JOIN u ON t.k = u.k AND t.x + u.y > 0",
        "SELECT t.k, t.x, u.y FROM t FULL JOIN u ON t.k = u.k AND t.x + u.y > 0",
    ),
    (
        "SELECT k, x FROM t WHERE k IN (SELECT k FROM u WHERE y > 0)",
        "SELECT k, x FROM t WHERE k IN (SELECT k FROM u WHERE y > 0)",
    ),
    (
        "SELECT k, x FROM t WHERE EXISTS (SELECT 1 FROM u WHERE u.k = t.k AND u.y > t.x)",
        "SELECT k, x FROM t WHERE EXISTS (SELECT 1 FROM u WHERE u.k = t.k AND u.y > t.x)",
    ),
    (
        "SELECT k, x FROM t WHERE NOT EXISTS (SELECT 1 FROM u WHERE u.k = t.k)",
        "SELECT k, x FROM t WHERE NOT EXISTS (SELECT 1 FROM u WHERE u.k = t.k)",
    ),
    (
        "SELECT k, x FROM t WHERE k NOT IN (SELECT k FROM u)",
        "SELECT k, x FROM t WHERE k NOT IN (SELECT k FROM u)",
    ),
    (
        "SELECT t.x, a.y AS ay, b.k AS bk FROM t JOIN u a ON t.k = a.k JOIN u b ON a.y = b.y",
        "SELECT t.x, a.y AS ay, b.k AS bk FROM t JOIN u a ON t.k = a.k JOIN u b ON a.y = b.y",
    ),
    (
        "SELECT k FROM t INTERSECT SELECT k FROM u",
        "SELECT k FROM t INTERSECT SELECT k FROM u",
    ),
    (
        "SELECT k, x FROM t WHERE x > 0 EXCEPT SELECT k, y FROM u",
        "SELECT k, x FROM t WHERE x > 0 EXCEPT SELECT k, y FROM u",
    ),
    (
        "SELECT k, COUNT(*) AS n, SUM(y) AS s FROM {j0} GROUP BY k",
        "SELECT t.k, COUNT(*) AS n, SUM(u.y) AS s FROM t JOIN u ON t.k = u.k GROUP BY t.k",
    ),
    (
        "SELECT v.k, v.n, u.y FROM {v0} v LEFT JOIN u ON v.k = u.k",
        "SELECT v.k, v.n, u.y FROM (SELECT k, COUNT(*) AS n FROM t GROUP BY k) v LEFT JOIN u ON v.k = u.k",
    ),
    // Stacked operators in one query (the inner one runs as the query's stage).
    (
        "SELECT t.k, COUNT(*) AS n, SUM(u.y) AS s, MAX(t.x) AS hi FROM t JOIN u ON t.k = u.k GROUP BY t.k",
        "SELECT t.k, COUNT(*) AS n, SUM(u.y) AS s, MAX(t.x) AS hi FROM t JOIN u ON t.k = u.k GROUP BY t.k",
    ),
    (
        "SELECT u.y, COUNT(*) AS n, COUNT(t.x) AS nx FROM t RIGHT JOIN u ON t.k = u.k GROUP BY u.y",
        "SELECT u.y, COUNT(*) AS n, COUNT(t.x) AS nx FROM t RIGHT JOIN u ON t.k = u.k GROUP BY u.y",
    ),
    (
        "SELECT DISTINCT t.k FROM t FULL JOIN u ON t.k = u.k AND t.x < u.y",
        "SELECT DISTINCT t.k FROM t FULL JOIN u ON t.k = u.k AND t.x < u.y",
    ),
    (
        "SELECT n, COUNT(*) AS keys, SUM(best) AS s FROM (SELECT t.k, COUNT(*) AS n, MAX(u.y) AS best FROM t JOIN u ON t.k = u.k GROUP BY t.k) GROUP BY n",
        "SELECT n, COUNT(*) AS keys, SUM(best) AS s FROM (SELECT t.k, COUNT(*) AS n, MAX(u.y) AS best FROM t JOIN u ON t.k = u.k GROUP BY t.k) GROUP BY n",
    ),
    (
        "SELECT k, n FROM (SELECT k, n, ROW_NUMBER() OVER (ORDER BY n DESC, k) AS rn FROM (SELECT k, COUNT(*) AS n FROM t GROUP BY k)) WHERE rn <= 2",
        "SELECT k, n FROM (SELECT k, n, ROW_NUMBER() OVER (ORDER BY n DESC, k) AS rn FROM (SELECT k, COUNT(*) AS n FROM t GROUP BY k)) WHERE rn <= 2",
    ),
    (
        "SELECT k, SUM(x) AS top2, COUNT(*) AS n FROM (SELECT k, x, ROW_NUMBER() OVER (PARTITION BY k ORDER BY x DESC) AS rn FROM t) WHERE rn <= 2 GROUP BY k",
        "SELECT k, SUM(x) AS top2, COUNT(*) AS n FROM (SELECT k, x, ROW_NUMBER() OVER (PARTITION BY k ORDER BY x DESC) AS rn FROM t) WHERE rn <= 2 GROUP BY k",
    ),
    (
        "SELECT COUNT(*) AS n, SUM(s) AS total FROM (SELECT k, SUM(x) AS s FROM t GROUP BY k)",
        "SELECT COUNT(*) AS n, SUM(s) AS total FROM (SELECT k, SUM(x) AS s FROM t GROUP BY k)",
    ),
    (
        "SELECT c.k, c.n, m.s FROM (SELECT k, COUNT(*) AS n FROM t GROUP BY k) c LEFT JOIN (SELECT k, SUM(y) AS s FROM u GROUP BY k) m ON c.k = m.k",
        "SELECT c.k, c.n, m.s FROM (SELECT k, COUNT(*) AS n FROM t GROUP BY k) c LEFT JOIN (SELECT k, SUM(y) AS s FROM u GROUP BY k) m ON c.k = m.k",
    ),
    (
        "SELECT k, COUNT(*) AS n FROM t GROUP BY k UNION ALL SELECT k, y FROM u WHERE y > 0",
        "SELECT k, COUNT(*) AS n FROM t GROUP BY k UNION ALL SELECT k, y FROM u WHERE y > 0",
    ),
    (
        "SELECT k, SUM(n) AS n FROM (SELECT k, COUNT(*) AS n FROM t GROUP BY k UNION ALL SELECT k, COUNT(*) AS n FROM u GROUP BY k) GROUP BY k",
        "SELECT k, SUM(n) AS n FROM (SELECT k, COUNT(*) AS n FROM t GROUP BY k UNION ALL SELECT k, COUNT(*) AS n FROM u GROUP BY k) GROUP BY k",
    ),
    (
        "SELECT t.k, t.x, v.n FROM t JOIN (SELECT k, COUNT(*) AS n FROM u GROUP BY k) v ON t.k = v.k",
        "SELECT t.k, t.x, v.n FROM t JOIN (SELECT k, COUNT(*) AS n FROM u GROUP BY k) v ON t.k = v.k",
    ),
];

#[derive(Debug, Clone)]
enum Change {
    Insert(String, i64),
    /// Deletes the i-th (modulo) row currently held.
    Delete(usize),
    /// Replaces the i-th (modulo) row currently held.
    Update(usize, String, i64),
}

/// Changes whose keys include NULL (the empty string stands for it).
fn change_strategy() -> impl Strategy<Value = Change> {
    let key = prop_oneof![
        4 => Just("a"),
        4 => Just("b"),
        4 => Just("c"),
        4 => Just("d"),
        1 => Just(""),
    ]
    .prop_map(String::from);
    prop_oneof![
        3 => (key.clone(), -20i64..20).prop_map(|(k, x)| Change::Insert(k, x)),
        1 => (0usize..1000).prop_map(Change::Delete),
        1 => (0usize..1000, key, -20i64..20).prop_map(|(i, k, x)| Change::Update(i, k, x)),
    ]
}

/// The changelog rows of `changes` (valid: only rows held are removed) and the final table.
/// A changelog row: key, value, operation.
type LogRow = (String, i64, &'static str);

fn changelog(changes: &[Change]) -> (Vec<LogRow>, Vec<(String, i64)>) {
    let mut held: Vec<(String, i64)> = Vec::new();
    let mut log = Vec::new();
    for c in changes {
        match c {
            Change::Insert(k, x) => {
                held.push((k.clone(), *x));
                log.push((k.clone(), *x, "I"));
            }
            Change::Delete(i) if !held.is_empty() => {
                let (k, x) = held.swap_remove(i % held.len());
                log.push((k, x, "D"));
            }
            Change::Update(i, k, x) if !held.is_empty() => {
                let at = i % held.len();
                let (ok, ox) = std::mem::replace(&mut held[at], (k.clone(), *x));
                log.push((ok, ox, "U-"));
                log.push((k.clone(), *x, "U+"));
            }
            _ => {}
        }
    }
    (log, held)
}

/// Keys, with the empty string as NULL.
fn key_array<'a>(keys: impl Iterator<Item = &'a str>) -> ArrayRef {
    Arc::new(StringArray::from_iter(
        keys.map(|k| (!k.is_empty()).then_some(k)),
    ))
}

fn changelog_batch(value: &str, rows: &[(String, i64, &str)]) -> RecordBatch {
    RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new(value, DataType::Int64, true),
            Field::new("_op", DataType::Utf8, false),
        ])),
        vec![
            key_array(rows.iter().map(|r| r.0.as_str())),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.2))),
        ],
    )
    .unwrap()
}

fn table_batch(value: &str, rows: &[(String, i64)]) -> RecordBatch {
    RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new(value, DataType::Int64, true),
        ])),
        vec![
            key_array(rows.iter().map(|r| r.0.as_str())),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
        ],
    )
    .unwrap()
}

/// Runs every view of the corpus over the changelog, cut into batches at `splits`, and
/// checks each view's contents and its consolidated changelog against the batch query.
fn check_views(changes: &[Change], other: &[Change], splits: &[usize], workers: usize) {
    let (log, table) = changelog(changes);
    let (other_log, other_table) = changelog(other);
    let db = db(workers);
    block_on(db.execute("CREATE SOURCE t (k VARCHAR, x BIGINT, _op VARCHAR NOT NULL)")).unwrap();
    block_on(db.execute("CREATE SOURCE u (k VARCHAR, y BIGINT, _op VARCHAR NOT NULL)")).unwrap();
    let mut subs = Vec::new();
    let mut expected = Vec::new();
    let tables = || {
        vec![
            ("t", table_batch("x", &table)),
            ("u", table_batch("y", &other_table)),
        ]
    };
    let definitions = VIEWS.iter().chain(CASCADED).chain(JOINS);
    let first_join = VIEWS.len() + CASCADED.len();
    for (i, (view, batch)) in definitions.enumerate() {
        let name = format!("v{i}");
        let view = view
            .replace("{j0}", &format!("v{first_join}"))
            .replace("{v0}", "v0");
        block_on(db.execute(&format!("CREATE MATERIALIZED VIEW {name} AS {view}")))
            .unwrap_or_else(|e| panic!("{view}: {e}"));
        let sub = db
            .subscribe_push(
                &name,
                SubscriptionConfig {
                    send_snapshot: true,
                    buffer_size: 1 << 20,
                    ..Default::default()
                },
            )
            .unwrap();
        let want = sorted(batch_query_tables(tables(), batch));
        subs.push((name, view, sub));
        expected.push(want);
    }
    // Both changelogs, cut into batches at the same relative positions and interleaved.
    let batches = |log: &[LogRow]| -> Vec<(usize, usize)> {
        let mut cuts: Vec<usize> = splits.iter().map(|s| s % (log.len() + 1)).collect();
        cuts.extend([0, log.len()]);
        cuts.sort_unstable();
        cuts.dedup();
        cuts.windows(2)
            .filter_map(|w| {
                // An update's two rows stay in one batch.
                let (mut from, mut to) = (w[0], w[1]);
                if from > 0 && log[from].2 == "U+" {
                    from += 1;
                }
                if to < log.len() && log[to].2 == "U+" {
                    to += 1;
                }
                (from < to).then_some((from, to))
            })
            .collect()
    };
    let t = db.source_untyped("t").unwrap();
    let u = db.source_untyped("u").unwrap();
    let (t_batches, u_batches) = (batches(&log), batches(&other_log));
    for i in 0..t_batches.len().max(u_batches.len()) {
        if let Some(&(from, to)) = t_batches.get(i) {
            t.push_arrow(changelog_batch("x", &log[from..to])).unwrap();
        }
        if let Some(&(from, to)) = u_batches.get(i) {
            u.push_arrow(changelog_batch("y", &other_log[from..to]))
                .unwrap();
        }
    }
    assert!(db.wait_idle(WAIT));
    assert!(db.failures().is_empty(), "{:?}", db.failures());
    for ((name, view, mut sub), want) in subs.into_iter().zip(expected) {
        let got = sorted(select(&db, &format!("SELECT * FROM {name}")));
        let width = want
            .first()
            .map_or(got.first().map_or(0, Vec::len), Vec::len);
        assert_eq!(got, want, "view {name}: {view}");
        // The dispatcher thread may still be handing events over.
        let mut changes = BTreeMap::new();
        let deadline = std::time::Instant::now() + WAIT;
        while sorted(expand(&changes)) != want && std::time::Instant::now() < deadline {
            if let Some(event) = sub.recv_blocking(Duration::from_millis(50)).unwrap() {
                consolidate(&mut changes, &event, width);
            }
        }
        while let Some(Ok(event)) = sub.try_recv() {
            consolidate(&mut changes, &event, width);
        }
        assert_eq!(
            sorted(expand(&changes)),
            want,
            "changelog of {name}: {view}"
        );
    }
    db.shutdown_sync();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: proptest_cases(24), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn views_over_changelogs_equal_batch_queries(
        changes in proptest::collection::vec(change_strategy(), 0..80),
        other in proptest::collection::vec(change_strategy(), 0..40),
        splits in proptest::collection::vec(0usize..1000, 0..6),
        workers in 1usize..3,
    ) {
        check_views(&changes, &other, &splits, workers);
    }
}
