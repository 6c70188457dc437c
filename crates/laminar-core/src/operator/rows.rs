//! Helpers shared by the operators that keep whole rows in Arrow's row format (updating
//! joins, top-N, analytic functions): expression evaluation, converters, and the `_op`
//! columns of changelog rows.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::row::{RowConverter, SortField};
use datafusion::physical_expr::PhysicalExpr;

use crate::error::{CoreError, Result};
use crate::message::{ChangeOp, OP_COLUMN};

/// Evaluates expressions over a batch, one array each; errors name `operator`.
pub(crate) fn evaluate_all<'a>(
    operator: &str,
    exprs: impl IntoIterator<Item = &'a Arc<dyn PhysicalExpr>>,
    batch: &RecordBatch,
) -> Result<Vec<ArrayRef>> {
    exprs
        .into_iter()
        .map(|e| {
            e.evaluate(batch)
                .and_then(|v| v.into_array(batch.num_rows()))
                .map_err(|source| CoreError::Evaluation {
                    operator: operator.to_string(),
                    source,
                })
        })
        .collect()
}

/// A converter of whole rows of `schema`.
pub(crate) fn row_converter(schema: &SchemaRef) -> std::result::Result<RowConverter, ArrowError> {
    RowConverter::new(
        schema
            .fields()
            .iter()
            .map(|f| SortField::new(f.data_type().clone()))
            .collect(),
    )
}

/// Positions of the `_op` columns of a schema.
pub(crate) fn op_columns(schema: &SchemaRef) -> Vec<usize> {
    schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| f.name() == OP_COLUMN)
        .map(|(i, _)| i)
        .collect()
}

/// The batch's columns with every `_op` column (at `op_columns`) set to `I`: a stored row
/// does not depend on the operation that brought it.
pub(crate) fn ops_as_inserts(batch: &RecordBatch, op_columns: &[usize]) -> Vec<ArrayRef> {
    let mut columns = batch.columns().to_vec();
    if !op_columns.is_empty() {
        let constant: ArrayRef = Arc::new(StringArray::from(vec![
            ChangeOp::Insert.as_str();
            batch.num_rows()
        ]));
        for &i in op_columns {
            columns[i] = constant.clone();
        }
    }
    columns
}
