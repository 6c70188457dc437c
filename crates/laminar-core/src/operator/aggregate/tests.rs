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
    AggregateOperator::new(AggregateSpec {
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
    })
    .unwrap()
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
