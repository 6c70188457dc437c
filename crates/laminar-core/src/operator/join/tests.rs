use std::sync::Arc;

use arrow::array::{Array, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Column;

use super::*;
use crate::metrics::NodeMetrics;
use crate::table::TableStore;
use crate::time::EventTimeKind;

fn schema(fields: &[(&str, DataType)], nullable: bool) -> SchemaRef {
    Arc::new(Schema::new(
        fields
            .iter()
            .map(|(n, t)| Field::new(*n, t.clone(), nullable))
            .collect::<Vec<_>>(),
    ))
}

fn col(name: &str, i: usize) -> Arc<dyn PhysicalExpr> {
    Arc::new(Column::new(name, i))
}

fn time(index: usize) -> TimeColumn {
    TimeColumn {
        index,
        kind: EventTimeKind::EpochMillis,
    }
}

fn joined_schema(left: &SchemaRef, right: &SchemaRef, join_type: JoinType) -> SchemaRef {
    let mut fields: Vec<Field> = left
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect();
    fields.extend(
        right
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true)),
    );
    let _ = join_type;
    Arc::new(Schema::new(fields))
}

fn operator(
    left: SchemaRef,
    right: SchemaRef,
    join_type: JoinType,
    kind: JoinKind,
) -> JoinOperator {
    let joined = joined_schema(&left, &right, join_type);
    JoinOperator::new(JoinSpec {
        name: "j".into(),
        inputs: vec![
            JoinInput {
                relation: 0,
                chain: Vec::new(),
            },
            JoinInput {
                relation: 1,
                chain: Vec::new(),
            },
        ],
        steps: vec![JoinStepSpec {
            join_type,
            left_keys: vec![col("k", 0)],
            right_keys: vec![col("k", 0)],
            condition: None,
            left_schema: left,
            right_schema: right,
            joined_schema: joined.clone(),
            kind,
            right_relation: Some(1),
        }],
        post: Vec::new(),
        output_schema: joined,
        metrics: Arc::new(NodeMetrics::default()),
    })
    .unwrap()
}

fn kv(s: &SchemaRef, rows: &[(&str, i64)]) -> RecordBatch {
    RecordBatch::try_new(
        s.clone(),
        vec![
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from(
                rows.iter().map(|r| r.1).collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap()
}

/// Rows of every batch in `out` as strings, "a|b|c", sorted.
fn rows(out: &[Message]) -> Vec<String> {
    let mut v = rows_in_order(out);
    v.sort();
    v
}

/// The output rows as `a|b|..` strings, in emission order.
fn rows_in_order(out: &[Message]) -> Vec<String> {
    let mut v = Vec::new();
    for m in out {
        if let Message::Batch(b) = m {
            for r in 0..b.num_rows() {
                let cells: Vec<String> = b
                    .columns()
                    .iter()
                    .map(|c| {
                        if c.is_null(r) {
                            "NULL".into()
                        } else {
                            arrow::util::display::array_value_to_string(c, r).unwrap()
                        }
                    })
                    .collect();
                v.push(cells.join("|"));
            }
        }
    }
    v
}

fn kt() -> SchemaRef {
    schema(&[("k", DataType::Utf8), ("ts", DataType::Int64)], false)
}

fn interval(lower: i64, upper: i64) -> JoinKind {
    JoinKind::Interval {
        left_time: time(1),
        right_time: time(1),
        lower,
        upper,
    }
}

#[test]
fn interval_inner_matches_within_bound_only() {
    let s = kt();
    let mut op = operator(s.clone(), s.clone(), JoinType::Inner, interval(0, 600_000));
    let mut out = Vec::new();
    op.on_batch(0, kv(&s, &[("1", 0)]), &mut out).unwrap();
    op.on_batch(
        1,
        kv(&s, &[("1", 300_000), ("1", 660_000), ("2", 1)]),
        &mut out,
    )
    .unwrap();
    assert_eq!(rows(&out), vec!["1|0|1|300000"]);
}

#[test]
fn interval_left_emits_unmatched_once_at_expiry() {
    let s = kt();
    let mut op = operator(s.clone(), s.clone(), JoinType::Left, interval(0, 600_000));
    let mut out = Vec::new();
    op.on_batch(0, kv(&s, &[("1", 0), ("2", 0)]), &mut out)
        .unwrap();
    op.on_batch(1, kv(&s, &[("1", 300_000)]), &mut out).unwrap();
    assert_eq!(rows(&out), vec!["1|0|1|300000"]);
    out.clear();
    // Only the left watermark moves: the unmatched order is still waiting.
    op.on_input_watermark(0, 700_000, &mut out).unwrap();
    assert!(rows(&out).is_empty());
    op.on_input_watermark(1, 600_000, &mut out).unwrap();
    assert!(rows(&out).is_empty(), "{:?}", rows(&out));
    op.on_input_watermark(1, 700_000, &mut out).unwrap();
    assert_eq!(rows(&out), vec!["2|0|NULL|NULL"]);
    out.clear();
    op.on_input_watermark(1, 900_000, &mut out).unwrap();
    assert!(rows(&out).is_empty());
    assert_eq!(op.state_size().rows, 0);
}

#[test]
fn interval_full_pads_both_sides_and_drops_late_rows() {
    let s = kt();
    let mut op = operator(s.clone(), s.clone(), JoinType::Full, interval(-10, 10));
    let mut out = Vec::new();
    op.on_batch(0, kv(&s, &[("a", 100)]), &mut out).unwrap();
    op.on_batch(1, kv(&s, &[("b", 100)]), &mut out).unwrap();
    op.on_input_watermark(0, 200, &mut out).unwrap();
    op.on_input_watermark(1, 200, &mut out).unwrap();
    assert_eq!(rows(&out), vec!["NULL|NULL|b|100", "a|100|NULL|NULL"]);
    out.clear();
    // Below its own watermark: late, dropped and counted.
    op.on_batch(0, kv(&s, &[("b", 150)]), &mut out).unwrap();
    assert!(rows(&out).is_empty());
}

#[test]
fn interval_output_watermark_holds_back_for_kept_left_rows() {
    let s = kt();
    let mut op = operator(s.clone(), s.clone(), JoinType::Inner, interval(0, 1000));
    let mut out = Vec::new();
    op.on_batch(0, kv(&s, &[("a", 100)]), &mut out).unwrap();
    op.on_input_watermark(0, 5000, &mut out).unwrap();
    op.on_input_watermark(1, 500, &mut out).unwrap();
    // The left row at 100 can still match right rows up to 1100.
    let last = out.iter().rev().find_map(|m| match m {
        Message::Watermark(w) => Some(*w),
        _ => None,
    });
    assert_eq!(last, Some(100));
}

fn quotes() -> SchemaRef {
    schema(
        &[
            ("k", DataType::Utf8),
            ("ts", DataType::Int64),
            ("bid", DataType::Float64),
        ],
        false,
    )
}

fn quote(s: &SchemaRef, rows: &[(&str, i64, f64)]) -> RecordBatch {
    RecordBatch::try_new(
        s.clone(),
        vec![
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from(
                rows.iter().map(|r| r.1).collect::<Vec<_>>(),
            )),
            Arc::new(Float64Array::from(
                rows.iter().map(|r| r.2).collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap()
}

fn asof(direction: AsofDirection, tolerance: Option<i64>) -> JoinKind {
    JoinKind::Asof {
        left_time: time(1),
        right_time: time(1),
        direction,
        tolerance,
    }
}

/// SPEC 2.13 AC: quotes X @1000 bid 10, @3000 bid 11; fill @2500 -> 10 backward, 11 forward.
#[test]
fn asof_backward_and_forward() {
    for (direction, expected) in [
        (
            AsofDirection::Backward { strict: false },
            "X|2500|X|1000|10.0",
        ),
        (
            AsofDirection::Forward { strict: false },
            "X|2500|X|3000|11.0",
        ),
        (AsofDirection::Nearest, "X|2500|X|3000|11.0"),
    ] {
        let (f, q) = (kt(), quotes());
        let mut op = operator(f.clone(), q.clone(), JoinType::Inner, asof(direction, None));
        let mut out = Vec::new();
        // Fill first: it waits for the quotes' watermark.
        op.on_batch(0, kv(&f, &[("X", 2500)]), &mut out).unwrap();
        op.on_batch(
            1,
            quote(&q, &[("X", 1000, 10.0), ("X", 3000, 11.0)]),
            &mut out,
        )
        .unwrap();
        assert!(rows(&out).is_empty(), "{direction:?} emitted early");
        op.on_input_watermark(1, 3001, &mut out).unwrap();
        assert_eq!(rows(&out), vec![expected.to_string()], "{direction:?}");
    }
}

/// SPEC 2.13 AC: tolerance 1000, fill @4500, quotes' W -> 5000: inner none, LEFT NULL bid.
#[test]
fn asof_tolerance_inner_and_left() {
    for (join_type, expected) in [
        (JoinType::Inner, vec![]),
        (JoinType::Left, vec!["X|4500|NULL|NULL|NULL".to_string()]),
    ] {
        let (f, q) = (kt(), quotes());
        let mut op = operator(
            f.clone(),
            q.clone(),
            join_type,
            asof(AsofDirection::Backward { strict: false }, Some(1000)),
        );
        let mut out = Vec::new();
        op.on_batch(
            1,
            quote(&q, &[("X", 1000, 10.0), ("X", 3000, 11.0)]),
            &mut out,
        )
        .unwrap();
        op.on_batch(0, kv(&f, &[("X", 4500)]), &mut out).unwrap();
        op.on_input_watermark(1, 5000, &mut out).unwrap();
        assert_eq!(rows(&out), expected, "{join_type:?}");
    }
}

#[test]
fn asof_result_is_independent_of_interleaving() {
    let (f, q) = (kt(), quotes());
    let run = |quotes_first: bool| {
        let mut op = operator(
            f.clone(),
            q.clone(),
            JoinType::Inner,
            asof(AsofDirection::Backward { strict: false }, None),
        );
        let mut out = Vec::new();
        let fills = kv(&f, &[("A", 30_000), ("A", 90_000)]);
        let rates = quote(&q, &[("A", 0, 1.10), ("A", 60_000, 1.12)]);
        if quotes_first {
            op.on_batch(1, rates, &mut out).unwrap();
            op.on_batch(0, fills, &mut out).unwrap();
        } else {
            op.on_batch(0, fills, &mut out).unwrap();
            op.on_batch(1, rates, &mut out).unwrap();
        }
        op.on_input_watermark(0, 100_000, &mut out).unwrap();
        op.on_input_watermark(1, 100_000, &mut out).unwrap();
        rows(&out)
    };
    assert_eq!(run(true), run(false));
    assert_eq!(
        run(true),
        vec![
            "A|30000|A|0|1.1".to_string(),
            "A|90000|A|60000|1.12".to_string()
        ]
    );
}

#[test]
fn lookup_uses_current_table_row() {
    let s = kt();
    let table_schema = schema(&[("k", DataType::Utf8), ("tier", DataType::Utf8)], false);
    let table = Arc::new(TableStore::new("t", table_schema.clone(), vec![0], None).unwrap());
    let put = |k: &str, tier: &str| {
        table
            .upsert(
                &RecordBatch::try_new(
                    table_schema.clone(),
                    vec![
                        Arc::new(StringArray::from(vec![k])),
                        Arc::new(StringArray::from(vec![tier])),
                    ],
                )
                .unwrap(),
            )
            .unwrap();
    };
    put("7", "gold");
    for (join_type, expected) in [
        (JoinType::Inner, vec!["7|1|7|gold"]),
        (JoinType::Left, vec!["7|1|7|gold", "8|2|NULL|NULL"]),
    ] {
        let joined = joined_schema(&s, &table_schema, join_type);
        let mut op = JoinOperator::new(JoinSpec {
            name: "j".into(),
            inputs: vec![JoinInput {
                relation: 0,
                chain: Vec::new(),
            }],
            steps: vec![JoinStepSpec {
                join_type,
                left_keys: vec![col("k", 0)],
                right_keys: Vec::new(),
                condition: None,
                left_schema: s.clone(),
                right_schema: table_schema.clone(),
                joined_schema: joined.clone(),
                kind: JoinKind::Lookup {
                    table: table.clone(),
                },
                right_relation: None,
            }],
            post: Vec::new(),
            output_schema: joined,
            metrics: Arc::new(NodeMetrics::default()),
        })
        .unwrap();
        let mut out = Vec::new();
        op.on_batch(0, kv(&s, &[("7", 1), ("8", 2)]), &mut out)
            .unwrap();
        assert_eq!(rows(&out), expected);
    }
    put("7", "silver");
    assert_eq!(table.len(), 1);
}

/// One input event of a join: rows (key, ts[, bid]) on input 0 or 1, or a watermark.
#[derive(Debug, Clone)]
enum Event {
    Rows(usize, Vec<(u8, i64)>),
    Watermark(usize, i64),
}

fn event_strategy() -> impl proptest::strategy::Strategy<Value = Event> {
    use proptest::prelude::*;
    prop_oneof![
        3 => (0usize..2, proptest::collection::vec((0u8..3, 0i64..4000), 1..6))
            .prop_map(|(i, rows)| Event::Rows(i, rows)),
        1 => (0usize..2, 0i64..4000).prop_map(|(i, w)| Event::Watermark(i, w)),
    ]
}

fn feed(op: &mut JoinOperator, events: &[Event], out: &mut Vec<Message>) {
    let (f, q) = (kt(), quotes());
    for e in events {
        match e {
            Event::Rows(0, rows) => {
                let rows: Vec<(String, i64)> =
                    rows.iter().map(|(k, t)| (k.to_string(), *t)).collect();
                let refs: Vec<(&str, i64)> = rows.iter().map(|(k, t)| (k.as_str(), *t)).collect();
                op.on_batch(0, kv(&f, &refs), out).unwrap();
            }
            Event::Rows(_, rows) => {
                let rows: Vec<(String, i64, f64)> = rows
                    .iter()
                    .map(|(k, t)| (k.to_string(), *t, *t as f64 / 10.0))
                    .collect();
                let refs: Vec<(&str, i64, f64)> =
                    rows.iter().map(|(k, t, b)| (k.as_str(), *t, *b)).collect();
                op.on_batch(1, quote(&q, &refs), out).unwrap();
            }
            Event::Watermark(i, w) => op.on_input_watermark(*i, *w, out).unwrap(),
        }
    }
}

fn watermarks(out: &[Message]) -> Vec<i64> {
    out.iter()
        .filter_map(|m| match m {
            Message::Watermark(w) => Some(*w),
            _ => None,
        })
        .collect()
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, failure_persistence: None, ..Default::default() })]

    /// Snapshot at any point, restore into a fresh operator: from then on both emit exactly
    /// the same rows and watermarks (interval joins of every type, ASOF in every direction).
    #[test]
    fn snapshot_restore_round_trip(
        events in proptest::collection::vec(event_strategy(), 0..40),
        split in 0usize..40,
        kind in 0usize..7,
    ) {
        let (f, q) = (kt(), quotes());
        let make = || match kind {
            0 => operator(f.clone(), q.clone(), JoinType::Inner, interval(-500, 1000)),
            1 => operator(f.clone(), q.clone(), JoinType::Left, interval(-500, 1000)),
            2 => operator(f.clone(), q.clone(), JoinType::Right, interval(0, 0)),
            3 => operator(f.clone(), q.clone(), JoinType::Full, interval(-200, 300)),
            4 => operator(f.clone(), q.clone(), JoinType::Left, asof(AsofDirection::Backward { strict: false }, None)),
            5 => operator(f.clone(), q.clone(), JoinType::Inner, asof(AsofDirection::Forward { strict: false }, Some(700))),
            _ => operator(f.clone(), q.clone(), JoinType::Left, asof(AsofDirection::Nearest, Some(400))),
        };
        let split = split.min(events.len());
        let mut a = make();
        let mut ignored = Vec::new();
        feed(&mut a, &events[..split], &mut ignored);
        let snapshot = a.snapshot().unwrap().expect("joins have state");
        let mut b = make();
        b.restore(&snapshot).unwrap();
        proptest::prop_assert_eq!(a.state_size().rows, b.state_size().rows);
        let (mut out_a, mut out_b) = (Vec::new(), Vec::new());
        feed(&mut a, &events[split..], &mut out_a);
        feed(&mut b, &events[split..], &mut out_b);
        for out in [&mut out_a, &mut out_b] {
            out.push(Message::Idle);
        }
        a.on_input_watermark(0, crate::message::END_OF_TIME, &mut out_a).unwrap();
        a.on_input_watermark(1, crate::message::END_OF_TIME, &mut out_a).unwrap();
        b.on_input_watermark(0, crate::message::END_OF_TIME, &mut out_b).unwrap();
        b.on_input_watermark(1, crate::message::END_OF_TIME, &mut out_b).unwrap();
        proptest::prop_assert_eq!(rows(&out_a), rows(&out_b));
        proptest::prop_assert_eq!(watermarks(&out_a), watermarks(&out_b));
    }
}

#[test]
fn a_snapshot_of_another_join_is_refused() {
    let s = kt();
    let mut a = operator(s.clone(), s.clone(), JoinType::Inner, interval(0, 10));
    let snapshot = a.snapshot().unwrap().unwrap();
    let mut wrong = operator(
        s.clone(),
        quotes(),
        JoinType::Inner,
        asof(AsofDirection::Nearest, None),
    );
    assert!(wrong.restore(&snapshot).is_err());
    assert!(wrong.restore(b"garbage").is_err());
    assert!(wrong.restore(&snapshot[..snapshot.len() / 2]).is_err());
}

// ---- Updating joins ---------------------------------------------------------------------

fn changelog_schema() -> SchemaRef {
    schema(
        &[
            ("k", DataType::Utf8),
            ("v", DataType::Int64),
            ("_op", DataType::Utf8),
        ],
        true,
    )
}

fn changes(rows: &[(&str, i64, &str)]) -> RecordBatch {
    RecordBatch::try_new(
        changelog_schema(),
        vec![
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from(
                rows.iter().map(|r| r.1).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.2).collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap()
}

fn updating(join_type: JoinType) -> JoinOperator {
    let s = changelog_schema();
    let pair = joined_schema(&s, &s, JoinType::Inner);
    operator(
        s.clone(),
        s,
        join_type,
        JoinKind::Updating {
            null_aware: false,
            pair_schema: pair,
            ttl: None,
            left_time: None,
            right_time: None,
        },
    )
}

#[test]
fn updating_full_join_retracts_padded_rows_and_survives_a_snapshot() {
    let mut op = updating(JoinType::Full);
    let mut out = Vec::new();
    op.on_batch(0, changes(&[("a", 1, "I")]), &mut out).unwrap();
    assert_eq!(rows(&out), vec!["a|1|I|NULL|NULL|I"]);
    // Restored into a fresh operator, the state goes on as if nothing happened.
    let snapshot = op.snapshot().unwrap().unwrap();
    let mut op = updating(JoinType::Full);
    op.restore(&snapshot).unwrap();
    assert_eq!(op.state_size().rows, 1);
    let mut out = Vec::new();
    op.on_batch(1, changes(&[("a", 5, "I"), ("b", 6, "I")]), &mut out)
        .unwrap();
    // The left row's padding is replaced by its first match: an update of that row, its
    // `U-` immediately followed by its `U+`.
    assert_eq!(
        rows_in_order(&out),
        vec!["a|1|U-|NULL|NULL|U-", "a|1|U+|a|5|U+", "NULL|NULL|I|b|6|I"]
    );
    let mut out = Vec::new();
    op.on_batch(1, changes(&[("a", 5, "U-"), ("a", 7, "U+")]), &mut out)
        .unwrap();
    // The padded row lost and regained within the batch cancels out; the joined row is
    // updated.
    assert_eq!(rows_in_order(&out), vec!["a|1|U-|a|5|U-", "a|1|U+|a|7|U+"]);
    let mut out = Vec::new();
    op.on_batch(0, changes(&[("a", 1, "D")]), &mut out).unwrap();
    // The right row loses its match: its joined row becomes its padded row.
    assert_eq!(
        rows_in_order(&out),
        vec!["a|1|U-|a|7|U-", "NULL|NULL|U+|a|7|U+"]
    );
    // Unrelated changes of one batch stay a D and an I.
    let mut out = Vec::new();
    op.on_batch(
        1,
        changes(&[("a", 7, "D"), ("b", 6, "D"), ("c", 1, "I")]),
        &mut out,
    )
    .unwrap();
    assert_eq!(
        rows(&out),
        vec![
            "NULL|NULL|D|a|7|D",
            "NULL|NULL|D|b|6|D",
            "NULL|NULL|I|c|1|I"
        ]
    );
    assert_eq!(
        rows_in_order(&out)[2],
        "NULL|NULL|I|c|1|I",
        "retractions first"
    );
}

#[test]
fn updating_join_refuses_a_retraction_of_a_row_it_does_not_hold() {
    let mut op = updating(JoinType::Inner);
    let mut out = Vec::new();
    op.on_batch(0, changes(&[("a", 1, "I")]), &mut out).unwrap();
    let err = op
        .on_batch(0, changes(&[("a", 2, "D")]), &mut out)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("retracts a row the join does not hold"),
        "{err}"
    );
    let err = op
        .on_batch(1, changes(&[("a", 2, "X")]), &mut out)
        .unwrap_err()
        .to_string();
    assert!(err.contains("invalid _op value 'X'"), "{err}");
    // A snapshot of another kind of join is refused.
    let snapshot = op.snapshot().unwrap().unwrap();
    let s = changelog_schema();
    let mut other = operator(
        s.clone(),
        s,
        JoinType::Inner,
        JoinKind::Interval {
            left_time: time(1),
            right_time: time(1),
            lower: 0,
            upper: 0,
        },
    );
    assert!(other.restore(&snapshot).is_err());
}
