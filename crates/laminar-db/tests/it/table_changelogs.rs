//! Tables read as changelogs: continuous queries over a reference table (filters,
//! aggregations, DISTINCT) and updating joins of a changelog with it. The differential
//! property test writes random upserts (with repeated keys in one write) and deletes to a
//! table, interleaved with a changelog of orders; views created before and between the
//! writes must equal DataFusion over the final table and orders, and so must their
//! consolidated changelogs. A recovery test checks that a table's changelog resumes from a
//! checkpoint consistently with the joins that read it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use laminar_db::{ExecuteResult, LaminarDB, SubscriptionConfig};
use proptest::prelude::*;

use crate::util::{
    batch_query_tables, block_on, consolidate_changelog, durable_db, proptest_cases, rows, select,
    sorted,
};

const WAIT: Duration = Duration::from_secs(20);

/// Orders are pushed into `orders_in`; views read the view `orders`, so that a view created
/// later starts from the orders so far.
const SETUP: &str = "CREATE TABLE c (id BIGINT PRIMARY KEY, tier VARCHAR, score BIGINT); \
     CREATE SOURCE orders_in (oid BIGINT, cid BIGINT, amount BIGINT, _op VARCHAR NOT NULL); \
     CREATE MATERIALIZED VIEW orders AS SELECT * FROM orders_in";

/// View bodies over the table `c` and the changelog `orders`.
const VIEWS: &[&str] = &[
    "SELECT tier, COUNT(*) AS n, SUM(score) AS s FROM c GROUP BY tier",
    "SELECT id, tier FROM c WHERE score >= 2",
    "SELECT DISTINCT tier FROM c",
    "SELECT o.oid, o.amount, c.tier FROM orders o JOIN c ON o.cid = c.id",
    "SELECT o.oid, c.tier, c.score FROM orders o LEFT JOIN c ON o.cid = c.id",
    "SELECT c.id, o.oid FROM c LEFT JOIN orders o ON o.cid = c.id",
    "SELECT o.oid, c.id FROM orders o FULL JOIN c ON o.cid = c.id AND c.score > 1",
    "SELECT oid FROM orders WHERE cid IN (SELECT id FROM c WHERE tier = 'a')",
    "SELECT oid FROM orders o WHERE NOT EXISTS (SELECT 1 FROM c WHERE c.id = o.cid)",
    "SELECT c.id, d.id AS other FROM c JOIN c AS d ON c.tier = d.tier AND c.id < d.id",
];

#[derive(Debug, Clone)]
enum Op {
    /// Rows `(id, tier, score)` written in one upsert (an id may repeat: the last wins).
    Upsert(Vec<(i64, Option<&'static str>, i64)>),
    /// Keys deleted in one call (missing ones are ignored).
    Delete(Vec<i64>),
    /// A new order `(cid, amount)`.
    Order(i64, i64),
    /// Retracts the live order at this position (modulo their number), if any.
    Cancel(usize),
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let tier = prop_oneof![
        Just(Some("a")),
        Just(Some("b")),
        Just(Some("c")),
        Just(None)
    ];
    prop_oneof![
        3 => proptest::collection::vec((0i64..6, tier, 0i64..4), 1..4).prop_map(Op::Upsert),
        1 => proptest::collection::vec(0i64..7, 1..3).prop_map(Op::Delete),
        3 => (0i64..7, 1i64..20).prop_map(|(c, a)| Op::Order(c, a)),
        1 => (0usize..100).prop_map(Op::Cancel),
    ]
}

/// The table's and the orders' contents as the operations leave them.
#[derive(Default)]
struct Model {
    table: BTreeMap<i64, (Option<&'static str>, i64)>,
    orders: Vec<(i64, i64, i64)>,
    next_oid: i64,
}

/// Rows `(id, tier, score)` of the table `c`.
fn customers(rows: &[(i64, Option<&'static str>, i64)]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("tier", DataType::Utf8, true),
        Field::new("score", DataType::Int64, true),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))) as ArrayRef,
            Arc::new(StringArray::from_iter(rows.iter().map(|r| r.1))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2))),
        ],
    )
    .unwrap()
}

impl Model {
    fn table_batch(&self) -> RecordBatch {
        let rows: Vec<_> = self
            .table
            .iter()
            .map(|(id, (tier, score))| (*id, *tier, *score))
            .collect();
        customers(&rows)
    }

    fn orders_batch(&self) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("oid", DataType::Int64, true),
            Field::new("cid", DataType::Int64, true),
            Field::new("amount", DataType::Int64, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(
                    self.orders.iter().map(|o| o.0),
                )) as ArrayRef,
                Arc::new(Int64Array::from_iter_values(
                    self.orders.iter().map(|o| o.1),
                )),
                Arc::new(Int64Array::from_iter_values(
                    self.orders.iter().map(|o| o.2),
                )),
            ],
        )
        .unwrap()
    }
}

fn order_change(order: (i64, i64, i64), op: &str) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("oid", DataType::Int64, true),
        Field::new("cid", DataType::Int64, true),
        Field::new("amount", DataType::Int64, true),
        Field::new("_op", DataType::Utf8, false),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(vec![order.0])) as ArrayRef,
            Arc::new(Int64Array::from(vec![order.1])),
            Arc::new(Int64Array::from(vec![order.2])),
            Arc::new(StringArray::from(vec![op])),
        ],
    )
    .unwrap()
}

/// Applies one operation to the database and to the model.
fn apply(db: &LaminarDB, model: &mut Model, op: &Op) {
    match op {
        Op::Upsert(rows) => {
            db.table("c")
                .unwrap()
                .upsert_arrow(customers(rows))
                .unwrap();
            for (id, tier, score) in rows {
                model.table.insert(*id, (*tier, *score));
            }
        }
        Op::Delete(ids) => {
            let keys = RecordBatch::try_new(
                Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)])),
                vec![Arc::new(Int64Array::from(ids.clone())) as ArrayRef],
            )
            .unwrap();
            db.table("c").unwrap().delete_arrow(keys).unwrap();
            for id in ids {
                model.table.remove(id);
            }
        }
        Op::Order(cid, amount) => {
            let order = (model.next_oid, *cid, *amount);
            model.next_oid += 1;
            db.source_untyped("orders_in")
                .unwrap()
                .push_arrow(order_change(order, "I"))
                .unwrap();
            model.orders.push(order);
        }
        Op::Cancel(at) => {
            if model.orders.is_empty() {
                return;
            }
            let order = model.orders.remove(at % model.orders.len());
            db.source_untyped("orders_in")
                .unwrap()
                .push_arrow(order_change(order, "D"))
                .unwrap();
        }
    }
}

/// Creates view `v{i}` with a subscription that starts from its contents.
fn create_view(db: &LaminarDB, i: usize) -> laminar_db::PushSubscription {
    block_on(db.execute(&format!("CREATE MATERIALIZED VIEW v{i} AS {}", VIEWS[i])))
        .unwrap_or_else(|e| panic!("{}: {e}", VIEWS[i]));
    db.subscribe_push(
        &format!("v{i}"),
        SubscriptionConfig {
            send_snapshot: true,
            buffer_size: 1 << 20,
            ..Default::default()
        },
    )
    .unwrap()
}

/// The rows a subscription's events add up to (the view's columns, `_op` dropped).
fn consolidated(events: &[laminar_db::ChangeEvent], width: usize) -> Vec<Vec<String>> {
    use laminar_db::ChangeEvent;
    let mut changelog = Vec::new();
    let mut add = |b: &RecordBatch, op: &str| {
        for mut row in rows(std::slice::from_ref(b)) {
            row.truncate(width);
            row.push(op.to_string());
            changelog.push(row);
        }
    };
    for event in events {
        match event {
            ChangeEvent::Snapshot(d) | ChangeEvent::Insert(d) => add(&d.batch, "I"),
            ChangeEvent::Delete(d) => add(&d.batch, "D"),
            ChangeEvent::Update { old, new } => {
                add(&old.batch, "D");
                add(&new.batch, "I");
            }
            ChangeEvent::Watermark(_) => {}
            ChangeEvent::Lagged(n) => panic!("subscription lagged by {n}"),
        }
    }
    sorted(consolidate_changelog(changelog))
}

fn check(ops: &[Op], late_at: usize, workers: usize) {
    let db = LaminarDB::builder().workers(workers).build_sync().unwrap();
    block_on(db.execute(SETUP)).unwrap();
    let mut model = Model::default();
    let late_at = late_at % (ops.len() + 1);
    // Even views from the start, odd ones once `late_at` operations ran.
    let mut subs: Vec<Option<laminar_db::PushSubscription>> = (0..VIEWS.len())
        .map(|i| (i % 2 == 0).then(|| create_view(&db, i)))
        .collect();
    for (n, op) in ops.iter().enumerate() {
        if n == late_at {
            assert!(db.wait_idle(WAIT));
            for (i, sub) in subs.iter_mut().enumerate() {
                if sub.is_none() {
                    *sub = Some(create_view(&db, i));
                }
            }
        }
        apply(&db, &mut model, op);
    }
    for (i, sub) in subs.iter_mut().enumerate() {
        if sub.is_none() {
            *sub = Some(create_view(&db, i));
        }
    }
    assert!(db.wait_idle(WAIT));
    assert!(db.failures().is_empty(), "{:?}", db.failures());
    for (i, sub) in subs.into_iter().enumerate() {
        let mut sub = sub.unwrap();
        let want = sorted(batch_query_tables(
            vec![("c", model.table_batch()), ("orders", model.orders_batch())],
            VIEWS[i],
        ));
        let got = sorted(select(&db, &format!("SELECT * FROM v{i}")));
        assert_eq!(got, want, "view v{i}: {}", VIEWS[i]);
        let width = match block_on(db.execute(&format!("SELECT * FROM v{i}"))).unwrap() {
            ExecuteResult::Metadata(b) => b.num_columns(),
            _ => unreachable!(),
        };
        let mut events = Vec::new();
        let deadline = std::time::Instant::now() + WAIT;
        while consolidated(&events, width) != want && std::time::Instant::now() < deadline {
            if let Some(event) = sub.recv_blocking(Duration::from_millis(50)).unwrap() {
                events.push(event);
            }
        }
        assert_eq!(
            consolidated(&events, width),
            want,
            "changelog of v{i}: {}",
            VIEWS[i]
        );
    }
    db.shutdown_sync();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: proptest_cases(24), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn views_over_a_table_equal_batch_queries(
        ops in proptest::collection::vec(op_strategy(), 0..60),
        late_at in 0usize..1000,
        workers in 1usize..3,
    ) {
        check(&ops, late_at, workers);
    }
}

/// A fixed sequence: a replaced row, an unchanged rewrite, a key written twice in one
/// upsert, a delete of a present and a missing key, an order before its customer.
#[test]
fn a_fixed_sequence_of_table_writes_equals_batch_queries() {
    let ops = vec![
        Op::Order(1, 5),
        Op::Upsert(vec![(1, Some("a"), 1), (2, Some("b"), 3)]),
        Op::Order(2, 7),
        Op::Upsert(vec![(1, Some("b"), 2), (2, Some("b"), 3)]),
        Op::Upsert(vec![(3, None, 0), (3, Some("a"), 2)]),
        Op::Order(3, 1),
        Op::Delete(vec![2, 5]),
        Op::Cancel(0),
        Op::Upsert(vec![(2, Some("c"), 1)]),
    ];
    for late_at in [0, 4, ops.len()] {
        check(&ops, late_at, 2);
    }
}

/// A checkpoint saves a table read as a changelog at the point of its changelog's barrier:
/// after a crash, the restored views and the restored table agree, and later writes to the
/// table correct the restored join state exactly.
#[test]
fn a_table_changelog_recovers_with_the_joins_that_read_it() {
    let dir = tempfile::tempdir().unwrap();
    let views = [
        "CREATE MATERIALIZED VIEW enriched AS SELECT o.oid, o.amount, c.tier FROM orders_in o JOIN c ON o.cid = c.id",
        "CREATE MATERIALIZED VIEW per_tier AS SELECT tier, COUNT(*) AS n, SUM(score) AS s FROM c GROUP BY tier",
    ];
    let open = || {
        durable_db(
            dir.path(),
            2,
            "CREATE TABLE c (id BIGINT PRIMARY KEY, tier VARCHAR, score BIGINT); \
             CREATE SOURCE orders_in (oid BIGINT, cid BIGINT, amount BIGINT, _op VARCHAR NOT NULL)",
        )
    };
    let create_views = |db: &LaminarDB| {
        for view in views {
            block_on(db.execute(view)).unwrap();
        }
    };
    let check = |db: &LaminarDB, model: &Model| {
        let tables = || {
            vec![
                ("c", model.table_batch()),
                ("orders_in", model.orders_batch()),
            ]
        };
        for (view, body) in [
            (
                "enriched",
                "SELECT o.oid, o.amount, c.tier FROM orders_in o JOIN c ON o.cid = c.id",
            ),
            (
                "per_tier",
                "SELECT tier, COUNT(*) AS n, SUM(score) AS s FROM c GROUP BY tier",
            ),
        ] {
            assert_eq!(
                sorted(select(db, &format!("SELECT * FROM {view}"))),
                sorted(batch_query_tables(tables(), body)),
                "{view}"
            );
        }
    };
    let mut model = Model::default();
    let db = open();
    create_views(&db);
    block_on(db.start()).unwrap();
    for op in [
        Op::Upsert(vec![(1, Some("a"), 1), (2, Some("b"), 2)]),
        Op::Order(1, 10),
        Op::Order(2, 20),
        Op::Upsert(vec![(1, Some("b"), 3)]),
    ] {
        apply(&db, &mut model, &op);
    }
    assert!(db.wait_idle(WAIT));
    check(&db, &model);
    db.checkpoint().unwrap().expect("durable");
    // Logged after the checkpoint: replayed at the next start.
    apply(&db, &mut model, &Op::Order(2, 5));
    assert!(db.wait_idle(WAIT));
    check(&db, &model);
    std::mem::forget(db); // a crash

    let db = open();
    // Written while recovering, before the views are re-created from the checkpoint (a
    // pipeline file that seeds its table, say): the views catch up at start().
    apply(
        &db,
        &mut model,
        &Op::Upsert(vec![(2, Some("c"), 9), (4, Some("a"), 1)]),
    );
    create_views(&db);
    // A view new in this run starts from the table's rows.
    block_on(
        db.execute("CREATE MATERIALIZED VIEW by_id AS SELECT id, tier FROM c WHERE score > 0"),
    )
    .unwrap();
    apply(&db, &mut model, &Op::Delete(vec![1]));
    block_on(db.start()).unwrap();
    assert!(db.wait_idle(WAIT));
    assert!(db.failures().is_empty(), "{:?}", db.failures());
    check(&db, &model);
    let by_id = |db: &LaminarDB, model: &Model| {
        assert_eq!(
            sorted(select(db, "SELECT * FROM by_id")),
            sorted(batch_query_tables(
                vec![("c", model.table_batch())],
                "SELECT id, tier FROM c WHERE score > 0"
            ))
        );
    };
    by_id(&db, &model);
    // The restored join and the table's rebuilt changelog agree on every row.
    for op in [
        Op::Upsert(vec![(2, Some("a"), 1), (3, Some("c"), 0)]),
        Op::Delete(vec![4]),
        Op::Order(3, 7),
        Op::Cancel(1),
    ] {
        apply(&db, &mut model, &op);
    }
    assert!(db.wait_idle(WAIT));
    assert!(db.failures().is_empty(), "{:?}", db.failures());
    check(&db, &model);
    by_id(&db, &model);
    db.checkpoint().unwrap().expect("a second checkpoint");
    db.shutdown_sync();
}

/// A push subscription on a table with `send_snapshot`: the rows, then each write's changes.
#[test]
fn a_push_subscription_on_a_table_starts_from_its_rows() {
    use laminar_db::ChangeEvent;
    let db = LaminarDB::builder().workers(1).build_sync().unwrap();
    block_on(db.execute(
        "CREATE TABLE t (id BIGINT PRIMARY KEY, v VARCHAR); INSERT INTO t VALUES (1, 'a'), (2, 'b')",
    ))
    .unwrap();
    let mut sub = db
        .subscribe_push(
            "t",
            SubscriptionConfig {
                send_snapshot: true,
                ..Default::default()
            },
        )
        .unwrap();
    block_on(db.execute("INSERT INTO t VALUES (1, 'c')")).unwrap();
    block_on(db.execute("DELETE FROM t WHERE id = 2")).unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let event = sub
            .recv_blocking(WAIT)
            .unwrap()
            .expect("an event within the wait");
        let text = |d: &laminar_db::EventData| {
            sorted(
                rows(std::slice::from_ref(&d.batch))
                    .into_iter()
                    .map(|r| r[..2].to_vec())
                    .collect(),
            )
        };
        match &event {
            ChangeEvent::Snapshot(d) => seen.push(("snapshot", text(d))),
            ChangeEvent::Update { old, new } => {
                seen.push(("update", [text(old), text(new)].concat()))
            }
            ChangeEvent::Delete(d) => seen.push(("delete", text(d))),
            ChangeEvent::Watermark(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    let r = |id: &str, v: &str| vec![id.to_string(), v.to_string()];
    assert_eq!(
        seen,
        vec![
            ("snapshot", vec![r("1", "a"), r("2", "b")]),
            ("update", vec![r("1", "a"), r("1", "c")]),
            ("delete", vec![r("2", "b")]),
        ]
    );
    db.shutdown_sync();
}

/// A sink over a table (here its in-memory endpoint) receives the table's changelog.
#[test]
fn a_sink_over_a_table_receives_its_changes() {
    let db = LaminarDB::builder().workers(1).build_sync().unwrap();
    block_on(db.execute(
        "CREATE TABLE t (id BIGINT PRIMARY KEY, v VARCHAR); \
         CREATE SINK out FROM t WHERE v <> 'x'",
    ))
    .unwrap();
    // Subscribed before any write: an in-memory endpoint passes on only what arrives
    // after its subscriber.
    let mut sub = db.subscribe_arrow("out").unwrap();
    block_on(db.execute("INSERT INTO t VALUES (1, 'a')")).unwrap();
    block_on(db.execute("INSERT INTO t VALUES (2, 'b'), (1, 'x')")).unwrap();
    let mut got = Vec::new();
    while got.len() < 3 {
        got.extend(rows(&[sub.recv_timeout(WAIT).unwrap().unwrap()]));
    }
    let r = |a: &str, b: &str, c: &str| vec![a.to_string(), b.to_string(), c.to_string()];
    // (1, a) arrives; then (1, a) leaves (its new value fails the filter: the update
    // becomes a delete) and (2, b) arrives, in the order the keys were written.
    assert_eq!(
        got,
        vec![r("1", "a", "I"), r("2", "b", "I"), r("1", "a", "D")]
    );
    db.shutdown_sync();
}
