//! Cost of `push_arrow` on the caller thread: validation against the declared schema (by
//! name, types, NOT NULL, event time) and the enqueue into the source queue. The source has
//! no downstream streams, so the worker drains the queue without further work.

// criterion_group! generates an undocumented pub fn.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::ArrayRef;
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use laminar_bench::{block_on, declared_bids_schema, generate_bids, source_ddl};
use laminar_db::LaminarDB;

/// The same rows with `ts` as Timestamp(Millisecond) and `channel` as Utf8, so validation
/// has to cast (unless the declared types already are those).
fn needs_cast(batch: &RecordBatch) -> RecordBatch {
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        let to = match field.name().as_str() {
            "ts" => DataType::Timestamp(TimeUnit::Millisecond, None),
            "channel" => DataType::Utf8,
            _ => field.data_type().clone(),
        };
        columns.push(cast(column, &to).expect("cast"));
        fields.push(Field::new(field.name(), to, field.is_nullable()));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).expect("batch")
}

fn ingest(c: &mut Criterion) {
    let schema = declared_bids_schema().expect("schema");
    let db = LaminarDB::builder().workers(1).build_sync().expect("db");
    block_on(db.execute(&source_ddl(None))).expect("CREATE SOURCE");
    let source = db.source_untyped("bids").expect("source");

    let mut group = c.benchmark_group("push_arrow");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(3));
    group.warm_up_time(Duration::from_secs(1));
    for rows in [100usize, 8192] {
        let batch = generate_bids(&schema, rows as u64, rows, 42)
            .expect("bids")
            .remove(0);
        let casted = needs_cast(&batch);
        group.throughput(Throughput::Elements(rows as u64));
        group.bench_with_input(
            BenchmarkId::new("declared_types", rows),
            &batch,
            |b, batch| b.iter(|| source.push_arrow(black_box(batch.clone())).expect("push")),
        );
        group.bench_with_input(
            BenchmarkId::new("ts_ms_utf8_cast", rows),
            &casted,
            |b, batch| b.iter(|| source.push_arrow(black_box(batch.clone())).expect("push")),
        );
    }
    group.finish();
    db.wait_idle(Duration::from_secs(60));
    db.shutdown_sync();
}

criterion_group!(benches, ingest);
criterion_main!(benches);
