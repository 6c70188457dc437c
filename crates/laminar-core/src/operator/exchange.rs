//! The hash exchange in front of a parallel aggregation: runs the query's input chain once,
//! hashes each row's partition key and splits the batch into one sub-batch per aggregation
//! instance ([`Message::Partitioned`]); the node hands sub-batch `i` to its `i`-th outgoing
//! edge only. Watermarks, barriers and the end of input go to every instance.

use std::sync::Arc;

use arrow::array::UInt32Array;
use arrow::compute::take_record_batch;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::common::hash_utils::{RandomState, create_hashes};
use datafusion::physical_expr::PhysicalExpr;

use crate::error::{CoreError, Result};
use crate::message::Message;
use crate::operator::stateless::run_chain;
use crate::operator::{Operator, Step};

/// Seed of the partitioning hash (fixed, so the assignment of keys to instances is
/// deterministic and independent of the group tables' own hashing).
const PARTITION_SEED: u64 = 0x1A31_9A7D_B0C5_5EED;

/// See the module docs.
pub struct ExchangeOperator {
    name: String,
    chains: Vec<Vec<Step>>,
    keys: Vec<Arc<dyn PhysicalExpr>>,
    partitions: usize,
    output_schema: SchemaRef,
}

impl ExchangeOperator {
    /// An exchange applying `chains` (one per input), then splitting rows over `partitions`
    /// outputs by the hash of `keys` (evaluated on the chain output, `output_schema`).
    pub fn new(
        name: impl Into<String>,
        chains: Vec<Vec<Step>>,
        keys: Vec<Arc<dyn PhysicalExpr>>,
        partitions: usize,
        output_schema: SchemaRef,
    ) -> Self {
        ExchangeOperator {
            name: name.into(),
            chains,
            keys,
            partitions: partitions.max(1),
            output_schema,
        }
    }

    fn split(&self, batch: RecordBatch) -> Result<Vec<Option<RecordBatch>>> {
        let rows = batch.num_rows();
        let df = |source| CoreError::Evaluation {
            operator: self.name.clone(),
            source,
        };
        let arrays = self
            .keys
            .iter()
            .map(|k| k.evaluate(&batch).and_then(|v| v.into_array(rows)))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(df)?;
        let mut hashes = vec![0u64; rows];
        create_hashes(
            &arrays,
            &RandomState::with_seed(PARTITION_SEED),
            &mut hashes,
        )
        .map_err(df)?;
        let n = self.partitions as u64;
        let mut indices: Vec<Vec<u32>> =
            vec![Vec::with_capacity(rows / self.partitions + 1); self.partitions];
        for (row, hash) in hashes.iter().enumerate() {
            indices[(hash % n) as usize].push(row as u32);
        }
        indices
            .into_iter()
            .map(|rows_of| {
                if rows_of.is_empty() {
                    Ok(None)
                } else if rows_of.len() == rows {
                    Ok(Some(batch.clone()))
                } else {
                    take_record_batch(&batch, &UInt32Array::from(rows_of))
                        .map(Some)
                        .map_err(|source| CoreError::Arrow {
                            operator: self.name.clone(),
                            source,
                        })
                }
            })
            .collect()
    }
}

impl Operator for ExchangeOperator {
    fn output_schema(&self) -> SchemaRef {
        self.output_schema.clone()
    }

    fn on_batch(&mut self, input: usize, batch: RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        let batch = run_chain(&self.name, &self.chains, input, batch)?;
        if batch.num_rows() == 0 {
            return Ok(());
        }
        out.push(Message::Partitioned(self.split(batch)?));
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
