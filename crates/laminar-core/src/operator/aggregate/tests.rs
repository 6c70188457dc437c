//! Unit tests of the aggregation operator over hand-built plans (the SQL-level behaviour is
//! covered by the golden tests of `laminar-db`).

use std::sync::Arc;

use arrow::array::{Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::functions_aggregate::count::count_udaf;
use datafusion::physical_expr::aggregate::AggregateExprBuilder;
use datafusion::physical_expr::expressions::{Column, Literal};
use datafusion::scalar::ScalarValue;

use super::*;

fn input_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, false),
        Field::new("ts", DataType::Int64, false),
    ]))
}

fn count_star(schema: &SchemaRef) -> AggregateCall {
    let one: Arc<dyn PhysicalExpr> = Arc::new(Literal::new(ScalarValue::Int64(Some(1))));
    let function = AggregateExprBuilder::new(count_udaf(), vec![one])
        .schema(schema.clone())
        .alias("count(*)")
        .build()
        .unwrap();
    AggregateCall {
        function: Arc::new(function),
        filter: None,
    }
}

/// `SELECT k, tumble(ts, 5 s), count(*) ... GROUP BY k, tumble(ts, 5 s)`.
fn operator(emit: EmitMode, lateness: i64, window: WindowSpec) -> AggregateOperator {
    AggregateOperator::new(spec(emit, lateness, window)).unwrap()
}

/// [`operator`] over an input keyed by `k` (`watermark.key = 'k'`, 1 s delay).
fn keyed_operator(emit: EmitMode, window: WindowSpec) -> AggregateOperator {
    let mut spec = spec(emit, 0, window);
    spec.keyed_watermark = Some((
        0,
        crate::time::KeyedWatermark {
            column: "k".into(),
            delay_ms: 1000,
            max_keys: 3,
            eviction: crate::time::KeyEviction::LeastRecentlyActive,
            idle_timeout: std::time::Duration::from_secs(3600),
        },
    ));
    AggregateOperator::new(spec).unwrap()
}

fn spec(emit: EmitMode, lateness: i64, window: WindowSpec) -> AggregateSpec {
    let input = input_schema();
    let aggregate_schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, true),
        Field::new("w", DataType::Int64, true),
        Field::new("n", DataType::Int64, true),
        Field::new("__window_end", DataType::Int64, true),
    ]));
    let post_schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, true),
        Field::new("w", DataType::Int64, true),
        Field::new("n", DataType::Int64, true),
    ]));
    let post = vec![Step::Project {
        exprs: (0..3)
            .map(|i| Arc::new(Column::new(post_schema.field(i).name(), i)) as _)
            .collect(),
        schema: post_schema.clone(),
    }];
    AggregateSpec {
        name: "t".into(),
        chains: vec![Vec::new()],
        input_schema: input.clone(),
        event_time: Some((1, EventTimeKind::EpochMillis)),
        window: Some(window),
        keys: vec![Arc::new(Column::new("k", 0))],
        aggregates: vec![count_star(&input)],
        aggregate_schema,
        window_position: 1,
        post,
        post_schema,
        emit,
        lateness,
        late_rows: None,
        output_time: OutputTime::WindowStart,
        metrics: Arc::new(NodeMetrics::default()),
        keyed_watermark: None,
    }
}

/// `SELECT k, count(*) ... GROUP BY k` (unwindowed, EMIT CHANGES): the column-by-column
/// layout, or the row-accumulator one when `row_accumulators`.
fn unwindowed_operator(row_accumulators: bool) -> AggregateOperator {
    let input = input_schema();
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, true),
        Field::new("n", DataType::Int64, true),
    ]));
    let spec = AggregateSpec {
        name: "t".into(),
        chains: vec![Vec::new()],
        input_schema: input.clone(),
        event_time: Some((1, EventTimeKind::EpochMillis)),
        window: None,
        keys: vec![Arc::new(Column::new("k", 0))],
        aggregates: vec![count_star(&input)],
        aggregate_schema: schema.clone(),
        window_position: 0,
        post: vec![Step::Project {
            exprs: (0..2)
                .map(|i| Arc::new(Column::new(schema.field(i).name(), i)) as _)
                .collect(),
            schema: schema.clone(),
        }],
        post_schema: schema,
        emit: EmitMode::Changes,
        lateness: 0,
        late_rows: None,
        output_time: OutputTime::None,
        metrics: Arc::new(NodeMetrics::default()),
        keyed_watermark: None,
    };
    let general = row_accumulators.then(|| general::GeneralState::new(&spec, false).unwrap());
    let mut op = AggregateOperator::new(spec).unwrap();
    assert!(matches!(op.state, State::Incremental(_)));
    if let Some(general) = general {
        op.state = State::General(general);
    }
    op
}

#[test]
fn unwindowed_changes_pair_updates_and_restore_from_either_layout() {
    let mut out = Vec::new();
    let mut op = unwindowed_operator(false);
    op.on_batch(0, rows(&["a", "b", "a"], &[1, 2, 3]), &mut out)
        .unwrap();
    op.on_batch(0, rows(&["b", "c"], &[4, 5]), &mut out)
        .unwrap();
    assert_eq!(
        emitted(&out),
        ["a,2,I", "b,1,I", "b,1,U-", "b,2,U+", "c,1,I"]
    );
    // A checkpoint of the row-accumulator layout (written before this layout existed)
    // restores into an operator that would run column by column.
    for row_accumulators in [false, true] {
        let mut old = unwindowed_operator(row_accumulators);
        old.on_batch(0, rows(&["a", "b", "a"], &[1, 2, 3]), &mut Vec::new())
            .unwrap();
        let snapshot = old.snapshot().unwrap().unwrap();
        let mut restored = unwindowed_operator(false);
        restored.restore(&snapshot).unwrap();
        let mut out = Vec::new();
        restored
            .on_batch(0, rows(&["a", "d"], &[6, 7]), &mut out)
            .unwrap();
        assert_eq!(
            emitted(&out),
            ["a,2,U-", "a,3,U+", "d,1,I"],
            "{row_accumulators}"
        );
        assert_eq!(restored.state_size().rows, 3);
    }
}

fn rows(keys: &[&str], ts: &[i64]) -> RecordBatch {
    RecordBatch::try_new(
        input_schema(),
        vec![
            Arc::new(StringArray::from(keys.to_vec())),
            Arc::new(Int64Array::from(ts.to_vec())),
        ],
    )
    .unwrap()
}

/// Emitted rows as `k,w,n[,op]` strings, in order.
fn emitted(out: &[Message]) -> Vec<String> {
    let mut lines = Vec::new();
    for message in out {
        if let Message::Batch(batch) = message {
            for row in 0..batch.num_rows() {
                let cells: Vec<String> = batch
                    .columns()
                    .iter()
                    .map(|c| arrow::util::display::array_value_to_string(c, row).unwrap())
                    .collect();
                lines.push(cells.join(","));
            }
        }
    }
    lines
}

const TUMBLE_5S: WindowSpec = WindowSpec::Tumble {
    size: 5000,
    offset: 0,
};

#[test]
fn tumble_on_window_close_emits_once_when_the_watermark_passes_the_end() {
    for emit in [
        EmitMode::OnWindowClose,
        EmitMode::OnWatermark,
        EmitMode::Final,
    ] {
        let mut op = operator(emit, 0, TUMBLE_5S);
        let mut out = Vec::new();
        op.on_batch(0, rows(&["a", "a", "a"], &[1000, 4000, 6000]), &mut out)
            .unwrap();
        assert!(emitted(&out).is_empty());
        op.on_watermark(4999, &mut out).unwrap();
        assert!(emitted(&out).is_empty(), "{emit:?}");
        op.on_watermark(5000, &mut out).unwrap();
        assert_eq!(emitted(&out), vec!["a,0,2"], "{emit:?}");
        op.on_watermark(10000, &mut out).unwrap();
        assert_eq!(emitted(&out), vec!["a,0,2", "a,5000,1"], "{emit:?}");
        assert_eq!(op.state_size().rows, 0);
    }
}

#[test]
fn lateness_with_on_watermark_emits_corrections() {
    let mut op = operator(
        EmitMode::OnWatermark,
        5000,
        WindowSpec::Tumble {
            size: 10000,
            offset: 0,
        },
    );
    let mut out = Vec::new();
    op.on_batch(0, rows(&["a"], &[1000]), &mut out).unwrap();
    op.on_watermark(10000, &mut out).unwrap();
    assert_eq!(emitted(&out), vec!["a,0,1,I"]);
    out.clear();
    op.on_batch(0, rows(&["a"], &[3000]), &mut out).unwrap();
    assert_eq!(emitted(&out), vec!["a,0,1,U-", "a,0,2,U+"]);
    out.clear();
    op.on_watermark(15000, &mut out).unwrap();
    op.on_batch(0, rows(&["a"], &[3000]), &mut out).unwrap();
    assert!(emitted(&out).is_empty(), "late rows change nothing");
    assert_eq!(op.spec.metrics.late_total.load(Ordering::Relaxed), 1);
    assert_eq!(op.spec.metrics.late_dropped.load(Ordering::Relaxed), 1);
}

#[test]
fn session_rows_bridge_two_sessions() {
    // SPEC 2.8 AC session: gap 2 s; 1000, 4500, 2800 -> one session 1000-6500 count 3.
    let mut op = operator(
        EmitMode::OnWindowClose,
        0,
        WindowSpec::Session { gap: 2000 },
    );
    let mut out = Vec::new();
    op.on_batch(0, rows(&["a", "a"], &[1000, 4500]), &mut out)
        .unwrap();
    op.on_batch(0, rows(&["a"], &[2800]), &mut out).unwrap();
    op.on_batch(0, rows(&["a"], &[12000]), &mut out).unwrap();
    op.on_watermark(7000, &mut out).unwrap();
    assert_eq!(emitted(&out), vec!["a,1000,3"]);
}

#[test]
fn hop_counts_a_row_in_every_window() {
    let mut op = operator(
        EmitMode::OnWindowClose,
        0,
        WindowSpec::Hop {
            slide: 5000,
            size: 10000,
            offset: 0,
        },
    );
    let mut out = Vec::new();
    op.on_batch(0, rows(&["a"], &[7000]), &mut out).unwrap();
    op.on_watermark(15000, &mut out).unwrap();
    assert_eq!(emitted(&out), vec!["a,0,1", "a,5000,1"]);
}

#[test]
fn session_merge_across_lateness_retracts_the_merged_away_session() {
    // Two sessions were emitted (ON WATERMARK); rows within the allowed lateness bridge them:
    // the merged-away session is retracted and the surviving one updated.
    let mut op = operator(
        EmitMode::OnWatermark,
        10_000,
        WindowSpec::Session { gap: 2000 },
    );
    let mut out = Vec::new();
    op.on_batch(0, rows(&["a", "a"], &[1000, 6000]), &mut out)
        .unwrap();
    op.on_watermark(9000, &mut out).unwrap();
    let mut first = emitted(&out);
    first.sort();
    assert_eq!(first, vec!["a,1000,1,I", "a,6000,1,I"]);
    out.clear();
    op.on_batch(0, rows(&["a", "a"], &[4500, 3000]), &mut out)
        .unwrap();
    assert_eq!(
        emitted(&out),
        vec!["a,6000,1,D", "a,1000,1,U-", "a,1000,4,U+"]
    );
    out.clear();
    // The merged session closes at end + lateness (8000 + 10000).
    op.on_watermark(17_999, &mut out).unwrap();
    assert_eq!(op.state_size().rows, 1);
    op.on_watermark(18_000, &mut out).unwrap();
    assert!(emitted(&out).is_empty(), "nothing changed since the update");
    assert_eq!(op.state_size().rows, 0);
}

#[test]
fn session_rows_of_one_batch_in_any_order_form_the_same_sessions() {
    let mut op = operator(
        EmitMode::OnWindowClose,
        0,
        WindowSpec::Session { gap: 2500 },
    );
    let mut out = Vec::new();
    op.on_batch(
        0,
        rows(
            &["a", "b", "a", "a", "b", "a", "a"],
            &[9000, 100, 1000, 20_000, 2000, 9500, 1500],
        ),
        &mut out,
    )
    .unwrap();
    op.on_watermark(30_000, &mut out).unwrap();
    let mut got = emitted(&out);
    got.sort();
    assert_eq!(got, vec!["a,1000,2", "a,20000,1", "a,9000,2", "b,100,2"]);
}

/// A step of the snapshot round-trip property.
#[derive(Debug, Clone)]
enum Action {
    Rows(Vec<(u8, i64)>),
    Watermark(i64),
    /// A checkpoint: full, or incremental when the operator can tell what changed.
    Snapshot {
        full: bool,
    },
}

fn step_strategy() -> impl proptest::strategy::Strategy<Value = Action> {
    use proptest::prelude::*;
    prop_oneof![
        4 => proptest::collection::vec((0u8..5, 0i64..40_000), 1..8).prop_map(Action::Rows),
        2 => (0i64..40_000).prop_map(Action::Watermark),
        2 => any::<bool>().prop_map(|full| Action::Snapshot { full }),
    ]
}

/// Feeds steps; snapshots extend `chain` (a full snapshot restarts it).
fn run_steps(
    op: &mut AggregateOperator,
    steps: &[Action],
    chain: &mut Vec<Vec<u8>>,
    out: &mut Vec<Message>,
) {
    for step in steps {
        match step {
            Action::Rows(rows_of) => {
                let keys: Vec<String> = rows_of.iter().map(|(k, _)| format!("k{k}")).collect();
                let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
                let ts: Vec<i64> = rows_of.iter().map(|(_, t)| *t).collect();
                op.on_batch(0, rows(&keys, &ts), out).unwrap();
            }
            Action::Watermark(w) => op.on_watermark(*w, out).unwrap(),
            Action::Snapshot { full } => take_snapshot(op, *full, chain),
        }
    }
}

fn take_snapshot(op: &mut AggregateOperator, full: bool, chain: &mut Vec<Vec<u8>>) {
    let delta = if full || chain.is_empty() {
        None
    } else {
        op.snapshot_delta().unwrap()
    };
    match delta {
        Some(delta) => chain.push(delta),
        None => *chain = vec![op.snapshot().unwrap().expect("aggregations have state")],
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 192, failure_persistence: None, ..Default::default() })]

    /// Checkpoint at random points, fully or incrementally, restore the chain into a fresh
    /// operator: from then on both emit exactly the same rows and watermarks. Covers the
    /// vectorized layout (tumble, hop) and the row-accumulator one (corrections, sessions,
    /// ON UPDATE, per-key clocks of keyed watermarks with evictions).
    #[test]
    fn snapshot_chain_restore_round_trip(
        steps in proptest::collection::vec(step_strategy(), 0..48),
        split in 0usize..48,
        kind in 0usize..10,
    ) {
        let make = || match kind {
            0 => operator(EmitMode::OnWindowClose, 0, TUMBLE_5S),
            1 => operator(EmitMode::OnWindowClose, 2000, WindowSpec::Hop { slide: 5000, size: 10_000, offset: 0 }),
            2 => operator(EmitMode::OnWatermark, 3000, TUMBLE_5S),
            3 => operator(EmitMode::OnWatermark, 5000, WindowSpec::Session { gap: 2000 }),
            4 => operator(EmitMode::OnWindowClose, 0, WindowSpec::Session { gap: 3000 }),
            5 => operator(EmitMode::OnUpdate, 1000, TUMBLE_5S),
            6 => keyed_operator(EmitMode::OnWindowClose, TUMBLE_5S),
            8 => unwindowed_operator(false),
            9 => unwindowed_operator(true),
            _ => keyed_operator(EmitMode::OnWatermark, WindowSpec::Session { gap: 2000 }),
        };
        let split = split.min(steps.len());
        let mut a = make();
        let mut chain = Vec::new();
        let mut ignored = Vec::new();
        run_steps(&mut a, &steps[..split], &mut chain, &mut ignored);
        take_snapshot(&mut a, false, &mut chain);
        let mut b = make();
        b.restore_chain(&chain[0], &chain[1..]).unwrap();
        proptest::prop_assert_eq!(a.state_size().rows, b.state_size().rows);
        // Both keep checkpointing incrementally afterwards.
        let (mut out_a, mut out_b) = (Vec::new(), Vec::new());
        let (mut chain_a, mut chain_b) = (Vec::new(), Vec::new());
        run_steps(&mut a, &steps[split..], &mut chain_a, &mut out_a);
        run_steps(&mut b, &steps[split..], &mut chain_b, &mut out_b);
        a.on_watermark(crate::message::END_OF_TIME, &mut out_a).unwrap();
        b.on_watermark(crate::message::END_OF_TIME, &mut out_b).unwrap();
        // Rows of one emission come in hash-map order: compare each emission as a set.
        let emissions = |out: &[Message]| -> Vec<Vec<String>> {
            out.iter()
                .map(|m| {
                    let mut rows = emitted(std::slice::from_ref(m));
                    rows.sort();
                    rows
                })
                .collect()
        };
        proptest::prop_assert_eq!(emissions(&out_a), emissions(&out_b));
        let watermarks = |out: &[Message]| -> Vec<i64> {
            out.iter().filter_map(|m| match m { Message::Watermark(w) => Some(*w), _ => None }).collect()
        };
        proptest::prop_assert_eq!(watermarks(&out_a), watermarks(&out_b));
        proptest::prop_assert_eq!(chain_a.len(), chain_b.len());
    }
}

#[test]
fn an_increment_applied_to_the_wrong_base_is_refused() {
    let mut op = operator(EmitMode::OnWindowClose, 0, TUMBLE_5S);
    let mut out = Vec::new();
    op.on_batch(0, rows(&["a", "b"], &[1000, 2000]), &mut out)
        .unwrap();
    let old_base = op.snapshot().unwrap().unwrap();
    op.on_batch(0, rows(&["c"], &[3000]), &mut out).unwrap();
    let base = op.snapshot().unwrap().unwrap();
    op.on_batch(0, rows(&["d", "a"], &[3000, 4000]), &mut out)
        .unwrap();
    let delta = op
        .snapshot_delta()
        .unwrap()
        .expect("tracking since the snapshot");
    let mut fresh = operator(EmitMode::OnWindowClose, 0, TUMBLE_5S);
    fresh
        .restore_chain(&base, std::slice::from_ref(&delta))
        .unwrap();
    assert_eq!(fresh.state_size().rows, 4);
    let mut wrong = operator(EmitMode::OnWindowClose, 0, TUMBLE_5S);
    let error = wrong
        .restore_chain(&old_base, std::slice::from_ref(&delta))
        .unwrap_err()
        .to_string();
    assert!(error.contains("does not follow"), "{error}");
    assert!(
        wrong
            .restore_chain(&base, &[delta[..delta.len() / 2].to_vec()])
            .is_err()
    );
    assert!(
        wrong.restore_chain(&delta, &[]).is_err(),
        "an increment is not a full snapshot"
    );
    // A restored operator has nothing to compare with: its next snapshot must be full.
    assert!(fresh.snapshot_delta().unwrap().is_none());
}
