//! The stateless operator: filters and projections compiled once into DataFusion
//! `PhysicalExpr`s and fused into one operator per chain, with one chain per input (so a
//! `UNION ALL` of several inputs is one operator).

use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::physical_expr::PhysicalExpr;

use crate::error::{CoreError, Result};
use crate::message::Message;
use crate::operator::Operator;

/// One step of a fused chain.
#[derive(Debug, Clone)]
pub enum Step {
    /// Keep rows where the predicate is true (NULL and false drop the row).
    Filter(Arc<dyn PhysicalExpr>),
    /// Compute one output column per expression, producing `schema`.
    Project {
        /// One expression per output column.
        exprs: Vec<Arc<dyn PhysicalExpr>>,
        /// The schema of the projected batch.
        schema: SchemaRef,
    },
}

/// Applies filter/projection chains; input `i` goes through `chains[i]`.
pub struct StatelessOperator {
    name: String,
    chains: Vec<Vec<Step>>,
    output_schema: SchemaRef,
}

impl StatelessOperator {
    /// A stateless operator named after its stream.
    pub fn new(name: impl Into<String>, chains: Vec<Vec<Step>>, output_schema: SchemaRef) -> Self {
        StatelessOperator {
            name: name.into(),
            chains,
            output_schema,
        }
    }

    fn apply(&self, input: usize, batch: RecordBatch) -> Result<RecordBatch> {
        run_chain(&self.name, &self.chains, input, batch)
    }
}

/// Runs input `input`'s chain of `chains` over `batch` (the per-input chains of a query
/// below its operator).
pub(crate) fn run_chain(
    operator: &str,
    chains: &[Vec<Step>],
    input: usize,
    batch: RecordBatch,
) -> Result<RecordBatch> {
    let chain = chains.get(input).ok_or_else(|| {
        CoreError::Internal(format!(
            "operator '{operator}' received input {input} but has {} chains",
            chains.len()
        ))
    })?;
    run_steps(operator, chain, batch, None)
}

impl Operator for StatelessOperator {
    fn output_schema(&self) -> SchemaRef {
        self.output_schema.clone()
    }

    fn on_batch(&mut self, input: usize, batch: RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        let result = self.apply(input, batch)?;
        if result.num_rows() > 0 {
            out.push(Message::Batch(result));
        }
        Ok(())
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut Vec<Message>) -> Result<()> {
        out.push(Message::Watermark(watermark));
        Ok(())
    }

    fn on_barrier(&mut self, epoch: u64, out: &mut Vec<Message>) -> Result<()> {
        out.push(Message::Barrier(epoch));
        Ok(())
    }

    fn on_end(&mut self, _out: &mut Vec<Message>) -> Result<()> {
        Ok(())
    }
}

/// Runs `steps` over `batch`. When `rows` is given it tracks, for every output row, the
/// index of the input row it came from (filters drop entries; projections keep them).
pub(crate) fn run_steps(
    operator: &str,
    steps: &[Step],
    mut batch: RecordBatch,
    mut rows: Option<&mut Vec<u32>>,
) -> Result<RecordBatch> {
    let eval_error = |source| CoreError::Evaluation {
        operator: operator.to_string(),
        source,
    };
    let arrow_error = |source| CoreError::Arrow {
        operator: operator.to_string(),
        source,
    };
    for step in steps {
        if batch.num_rows() == 0 {
            if let Step::Project { schema, .. } = step {
                batch = RecordBatch::new_empty(schema.clone());
            }
            continue;
        }
        batch = match step {
            Step::Filter(predicate) => {
                let mask = predicate
                    .evaluate(&batch)
                    .and_then(|v| v.into_array(batch.num_rows()))
                    .map_err(eval_error)?;
                if mask.data_type() != &DataType::Boolean {
                    return Err(CoreError::Internal(format!(
                        "filter of '{operator}' evaluated to {} instead of BOOLEAN",
                        mask.data_type()
                    )));
                }
                let mask = mask.as_boolean();
                if mask.null_count() == 0 && mask.true_count() == mask.len() {
                    batch
                } else {
                    if let Some(rows) = rows.as_deref_mut() {
                        let mut i = 0;
                        rows.retain(|_| {
                            let keep = mask.is_valid(i) && mask.value(i);
                            i += 1;
                            keep
                        });
                    }
                    crate::message::filter_changes(&batch, mask).map_err(arrow_error)?
                }
            }
            Step::Project { exprs, schema } => {
                let n = batch.num_rows();
                let columns = exprs
                    .iter()
                    .map(|e| e.evaluate(&batch).and_then(|v| v.into_array(n)))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(eval_error)?;
                let options = RecordBatchOptions::new().with_row_count(Some(n));
                RecordBatch::try_new_with_options(schema.clone(), columns, &options)
                    .map_err(arrow_error)?
            }
        };
    }
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Int64Array};
    use arrow::datatypes::{Field, Schema};
    use datafusion::logical_expr::Operator as BinOp;
    use datafusion::physical_expr::expressions::{BinaryExpr, Column, Literal};
    use datafusion::scalar::ScalarValue;

    fn input() -> RecordBatch {
        let schema = Schema::new(vec![Field::new("x", DataType::Int64, true)]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![Arc::new(Int64Array::from(vec![Some(1), Some(5), None, Some(7)])) as ArrayRef],
        )
        .unwrap()
    }

    #[test]
    fn filter_then_project() {
        let x: Arc<dyn PhysicalExpr> = Arc::new(Column::new("x", 0));
        let gt = Arc::new(BinaryExpr::new(
            x.clone(),
            BinOp::Gt,
            Arc::new(Literal::new(ScalarValue::Int64(Some(2)))),
        ));
        let doubled = Arc::new(BinaryExpr::new(
            x,
            BinOp::Multiply,
            Arc::new(Literal::new(ScalarValue::Int64(Some(2)))),
        ));
        let out_schema = Arc::new(Schema::new(vec![Field::new("y", DataType::Int64, true)]));
        let mut op = StatelessOperator::new(
            "t",
            vec![vec![
                Step::Filter(gt),
                Step::Project {
                    exprs: vec![doubled],
                    schema: out_schema,
                },
            ]],
            Arc::new(Schema::new(vec![Field::new("y", DataType::Int64, true)])),
        );
        let mut out = Vec::new();
        op.on_batch(0, input(), &mut out).unwrap();
        let Message::Batch(b) = &out[0] else {
            panic!("expected a batch")
        };
        let col = b.column(0).as_primitive::<arrow::datatypes::Int64Type>();
        assert_eq!(col.values().to_vec(), vec![10, 14]);
    }

    #[test]
    fn filter_that_removes_everything_emits_nothing() {
        let pred = Arc::new(Literal::new(ScalarValue::Boolean(Some(false))));
        let schema = input().schema();
        let mut op = StatelessOperator::new("t", vec![vec![Step::Filter(pred)]], schema);
        let mut out = Vec::new();
        op.on_batch(0, input(), &mut out).unwrap();
        assert!(out.is_empty());
    }
}
