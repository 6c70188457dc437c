//! End-to-end cost of one 8192-row batch through a stateless stream: `push_arrow` on the
//! caller thread, the source and stream nodes on one worker, and delivery to an Arrow
//! subscription (the measured iteration ends when the output batch is received).

// criterion_group! generates an undocumented pub fn.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, AsArray, Int64Array};
use arrow::datatypes::Int64Type;
use arrow::record_batch::RecordBatch;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use laminar_bench::{Consumer, Workload, declared_bids_schema, generate_bids, open_pipeline};

const ROWS: usize = 8192;

/// A generated batch in which at least one row passes `auction % 123 = 0`, so the filter
/// always emits a batch and the iteration has something to wait for.
fn input_batch() -> RecordBatch {
    let schema = declared_bids_schema().expect("schema");
    let batch = generate_bids(&schema, ROWS as u64, ROWS, 42)
        .expect("bids")
        .remove(0);
    let index = schema.index_of("auction").expect("auction column");
    let auction = batch.column(index).as_primitive::<Int64Type>();
    if auction.values().iter().any(|a| a % 123 == 0) {
        return batch;
    }
    let mut values = auction.values().to_vec();
    values[0] = 123 * 100;
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    columns[index] = Arc::new(Int64Array::from(values));
    RecordBatch::try_new(schema, columns).expect("batch")
}

fn stateless(c: &mut Criterion) {
    let batch = input_batch();
    let mut group = c.benchmark_group("stateless_e2e_8192");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(3));
    group.warm_up_time(Duration::from_secs(1));
    group.throughput(Throughput::Elements(ROWS as u64));
    for workload in [Workload::Projection, Workload::Filter] {
        let db = open_pipeline(1, workload, None, Consumer::None).expect("pipeline");
        let source = db.source_untyped("bids").expect("source");
        let mut sub = db.subscribe_arrow("q").expect("subscription");
        group.bench_function(workload.name(), |b| {
            b.iter(|| {
                source.push_arrow(batch.clone()).expect("push");
                let out = sub
                    .recv_timeout(Duration::from_secs(5))
                    .expect("subscription open")
                    .expect("an output batch within 5 s");
                black_box(out)
            })
        });
        db.shutdown_sync();
    }
    group.finish();
}

criterion_group!(benches, stateless);
criterion_main!(benches);
