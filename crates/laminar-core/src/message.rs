//! The messages that travel on every edge of the operator graph, and the single changelog
//! encoding used by every operator, sink and subscriber.
//!
//! Data, time and checkpoints share one ordered channel per edge (time is data): an operator
//! sees every row that precedes a watermark before the watermark itself.
//!
//! ## Changelog encoding
//! An updating (retracting) stream carries one extra Utf8 column named [`OP_COLUMN`] (`_op`),
//! found by name, never by position. Its values and weights are those of [`ChangeOp`]. An
//! append-only stream has no `_op` column; every row of it is an insert.

use arrow::array::{Array, StringArray};
use arrow::datatypes::Schema;
use arrow::record_batch::RecordBatch;

/// Name of the changelog operation column.
pub const OP_COLUMN: &str = "_op";

/// Watermark value meaning "no watermark yet".
pub const NO_WATERMARK: i64 = i64::MIN;

/// Watermark value meaning "end of time": every window closes, every bound expires.
pub const END_OF_TIME: i64 = i64::MAX;

/// The bit that makes a [`Message::Barrier`] id a read mark. A snapshot query over several
/// materialized views puts a read mark into every source; each view it reads saves its
/// contents when the mark reaches it, so the query sees every view at the same point of the
/// input (checkpoint epochs never reach this bit).
pub const READ_MARK: u64 = 1 << 63;

/// How long a snapshot query waits for its read mark to reach the views it reads.
pub const READ_MARK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// True when barrier id `id` is a read mark rather than a checkpoint epoch.
pub fn is_read_mark(id: u64) -> bool {
    id & READ_MARK != 0
}

/// One message on an edge of the operator graph.
#[derive(Debug, Clone)]
pub enum Message {
    /// A batch of rows. Append-only unless the schema has an [`OP_COLUMN`].
    Batch(RecordBatch),
    /// Event-time watermark in epoch milliseconds: no later row on this edge is expected to
    /// have an event time below it. Watermarks on one edge never decrease.
    Watermark(i64),
    /// Checkpoint barrier for the given epoch, or a read mark (an id with [`READ_MARK`]
    /// set). Both are aligned at every node with several inputs; a read mark takes no
    /// snapshot and commits nothing (see [`is_read_mark`]).
    Barrier(u64),
    /// The sender has had no data for its idle timeout: downstream operators exclude this
    /// input from their watermark minimum until the next `Batch` or `Watermark` arrives.
    Idle,
    /// The sender will send nothing more.
    End,
    /// Rows split by a hash exchange: element `i` (if any) goes to the sender's `i`-th
    /// outgoing edge as a `Batch`. Only an operator emits it; it never travels on an edge.
    Partitioned(Vec<Option<RecordBatch>>),
}

impl Message {
    /// Number of rows carried (0 for control messages).
    pub fn num_rows(&self) -> usize {
        match self {
            Message::Batch(b) => b.num_rows(),
            Message::Partitioned(parts) => parts.iter().flatten().map(|b| b.num_rows()).sum(),
            Message::Watermark(_) | Message::Barrier(_) | Message::Idle | Message::End => 0,
        }
    }
}

/// A changelog operation and its weight (SPEC 2.14).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeOp {
    /// `I`, weight +1.
    Insert,
    /// `D`, weight -1.
    Delete,
    /// `U-`, weight -1: the before-image of an update, immediately followed by its `U+`.
    UpdateBefore,
    /// `U+`, weight +1: the after-image of an update.
    UpdateAfter,
    /// `r`, weight +1: a snapshot row (initial load).
    Snapshot,
}

impl ChangeOp {
    /// Every operation, in encoding order.
    pub const ALL: [ChangeOp; 5] = [
        ChangeOp::Insert,
        ChangeOp::Delete,
        ChangeOp::UpdateBefore,
        ChangeOp::UpdateAfter,
        ChangeOp::Snapshot,
    ];

    /// The `_op` column value.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeOp::Insert => "I",
            ChangeOp::Delete => "D",
            ChangeOp::UpdateBefore => "U-",
            ChangeOp::UpdateAfter => "U+",
            ChangeOp::Snapshot => "r",
        }
    }

    /// Parses an `_op` value.
    pub fn parse(s: &str) -> Option<ChangeOp> {
        ChangeOp::ALL.into_iter().find(|op| op.as_str() == s)
    }

    /// Z-set weight: +1 for rows that add, -1 for rows that retract.
    pub fn weight(self) -> i64 {
        match self {
            ChangeOp::Insert | ChangeOp::UpdateAfter | ChangeOp::Snapshot => 1,
            ChangeOp::Delete | ChangeOp::UpdateBefore => -1,
        }
    }
}

/// True when the schema describes a changelog (it has a Utf8 `_op` column).
pub fn is_changelog(schema: &Schema) -> bool {
    schema
        .column_with_name(OP_COLUMN)
        .is_some_and(|(_, f)| f.data_type() == &arrow::datatypes::DataType::Utf8)
}

/// The rows of `batch` where `keep` is true (NULL drops the row), keeping a changelog's
/// updates well formed: an update whose two rows are not both kept becomes the delete of
/// its old row (`U-` → `D`) or the insert of its new one (`U+` → `I`), so every `U-` that
/// remains is still immediately followed by its `U+`.
pub fn filter_changes(
    batch: &RecordBatch,
    keep: &arrow::array::BooleanArray,
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let kept = |row: usize| keep.is_valid(row) && keep.value(row);
    let mut batch = batch.clone();
    if let Some((index, _)) = batch.schema_ref().column_with_name(OP_COLUMN)
        && let Some(ops) = batch.column(index).as_any().downcast_ref::<StringArray>()
    {
        let (before, after) = (
            ChangeOp::UpdateBefore.as_str(),
            ChangeOp::UpdateAfter.as_str(),
        );
        let mut rewritten: Option<Vec<&str>> = None;
        let mut row = 0;
        while row + 1 < ops.len() {
            let paired = ops.is_valid(row)
                && ops.is_valid(row + 1)
                && ops.value(row) == before
                && ops.value(row + 1) == after;
            if !paired {
                row += 1;
                continue;
            }
            let replace = match (kept(row), kept(row + 1)) {
                (true, false) => Some((row, ChangeOp::Delete.as_str())),
                (false, true) => Some((row + 1, ChangeOp::Insert.as_str())),
                _ => None,
            };
            if let Some((at, op)) = replace {
                let values = rewritten.get_or_insert_with(|| {
                    (0..ops.len())
                        .map(|r| if ops.is_valid(r) { ops.value(r) } else { "" })
                        .collect()
                });
                values[at] = op;
            }
            row += 2;
        }
        if let Some(values) = rewritten {
            let mut columns = batch.columns().to_vec();
            columns[index] = std::sync::Arc::new(StringArray::from(values));
            batch = RecordBatch::try_new(batch.schema(), columns)?;
        }
    }
    arrow::compute::filter_record_batch(&batch, keep)
}

/// Reads the operations of a changelog batch; `None` for an append-only batch.
///
/// Returns an error message naming the row when a value is not a valid operation.
pub fn change_ops(batch: &RecordBatch) -> Option<Result<Vec<ChangeOp>, String>> {
    // `column_with_name`, not `index_of`: the latter formats an error for every append-only
    // batch.
    let (idx, _) = batch.schema_ref().column_with_name(OP_COLUMN)?;
    let col = batch.column(idx).as_any().downcast_ref::<StringArray>()?;
    let mut ops = Vec::with_capacity(col.len());
    for row in 0..col.len() {
        if col.is_null(row) {
            return Some(Err(format!("row {row}: {OP_COLUMN} is NULL")));
        }
        match ChangeOp::parse(col.value(row)) {
            Some(op) => ops.push(op),
            None => {
                return Some(Err(format!(
                    "row {row}: invalid {OP_COLUMN} value '{}' (expected one of I, D, U-, U+, r)",
                    col.value(row)
                )));
            }
        }
    }
    Some(Ok(ops))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Int64Array};
    use arrow::datatypes::{DataType, Field};
    use std::sync::Arc;

    #[test]
    fn op_round_trip_and_weights() {
        for op in ChangeOp::ALL {
            assert_eq!(ChangeOp::parse(op.as_str()), Some(op));
        }
        let total: i64 = ChangeOp::ALL.iter().map(|o| o.weight()).sum();
        assert_eq!(total, 1, "I D U- U+ r sum to +1");
        assert_eq!(ChangeOp::parse("X"), None);
    }

    #[test]
    fn changelog_batches_are_found_by_name() {
        let schema = Arc::new(Schema::new(vec![
            Field::new(OP_COLUMN, DataType::Utf8, false),
            Field::new("k", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec!["I", "U-", "U+"])) as ArrayRef,
                Arc::new(Int64Array::from(vec![1, 1, 1])),
            ],
        )
        .unwrap();
        assert!(is_changelog(&schema));
        let ops = change_ops(&batch).unwrap().unwrap();
        assert_eq!(
            ops,
            vec![
                ChangeOp::Insert,
                ChangeOp::UpdateBefore,
                ChangeOp::UpdateAfter
            ]
        );
        let bad = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["Z"])) as ArrayRef,
                Arc::new(Int64Array::from(vec![1])),
            ],
        )
        .unwrap();
        assert!(change_ops(&bad).unwrap().unwrap_err().contains("'Z'"));
    }
}
