//! Helpers shared by the unit tests of this crate.

use arrow::array::{Array, Int64Array, RecordBatch};

/// The values of the first column (an Int64 id column) of every batch, in order.
pub(crate) fn ids(batches: &[RecordBatch]) -> Vec<i64> {
    batches
        .iter()
        .flat_map(|b| {
            b.column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("test batches start with an Int64 id column")
                .values()
                .to_vec()
        })
        .collect()
}
