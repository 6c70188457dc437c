//! Lookup join: each stream row is joined with the current row of a reference table by its
//! primary key, at processing time. No stream-side state; later table changes never change
//! rows already emitted.

use std::sync::Arc;

use arrow::array::{RecordBatch, UInt32Array};
use arrow::compute::take;
use arrow::datatypes::SchemaRef;
use datafusion::physical_expr::PhysicalExpr;

use super::{
    JoinStepSpec, JoinType, StepState, StepTime, condition_mask, eval_keys, joined, take_rows,
};
use crate::error::{CoreError, Result};
use crate::operator::StateSize;
use crate::table::TableRef;

pub(super) struct LookupStep {
    join_type: JoinType,
    keys: Vec<Arc<dyn PhysicalExpr>>,
    condition: Option<Arc<dyn PhysicalExpr>>,
    joined_schema: SchemaRef,
    table: TableRef,
}

impl LookupStep {
    pub(super) fn new(spec: &JoinStepSpec, table: &TableRef) -> Result<LookupStep> {
        if spec.join_type.keeps_right() {
            return Err(CoreError::Internal(
                "a lookup join keeps unmatched stream rows only".into(),
            ));
        }
        if spec.left_keys.len() != table.key_columns().len() {
            return Err(CoreError::Internal(format!(
                "lookup of table '{}' needs {} key expressions, got {}",
                table.name(),
                table.key_columns().len(),
                spec.left_keys.len()
            )));
        }
        Ok(LookupStep {
            join_type: spec.join_type,
            keys: spec.left_keys.clone(),
            condition: spec.condition.clone(),
            joined_schema: spec.joined_schema.clone(),
            table: table.clone(),
        })
    }
}

impl StepState for LookupStep {
    fn on_left(&mut self, batch: RecordBatch, _time: &StepTime) -> Result<Vec<RecordBatch>> {
        let keys = eval_keys(&self.keys, &batch)?;
        let found = self.table.lookup(&keys)?;
        // Position of each probe row's table row in `found.rows`, if it matched.
        let mut position: Vec<Option<u32>> = vec![None; batch.num_rows()];
        if !found.probe_rows.is_empty() {
            let mask = match &self.condition {
                None => None,
                Some(_) => {
                    let left = take_rows(&batch, &found.probe_rows)?;
                    let pairs = joined(
                        &self.joined_schema,
                        left.columns().to_vec(),
                        found.rows.columns().to_vec(),
                    )?;
                    condition_mask(&self.condition, &pairs)?
                }
            };
            for (k, &probe) in found.probe_rows.iter().enumerate() {
                if mask.as_ref().is_none_or(|m| m.value(k)) {
                    position[probe as usize] = Some(k as u32);
                }
            }
        }
        let left_rows: Vec<u32> = match self.join_type {
            JoinType::Left => (0..batch.num_rows() as u32).collect(),
            _ => (0..batch.num_rows() as u32)
                .filter(|&i| position[i as usize].is_some())
                .collect(),
        };
        if left_rows.is_empty() {
            return Ok(Vec::new());
        }
        let left = take_rows(&batch, &left_rows)?;
        let positions: UInt32Array = left_rows.iter().map(|&i| position[i as usize]).collect();
        let right = found
            .rows
            .columns()
            .iter()
            .map(|c| take(c.as_ref(), &positions, None))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| CoreError::Internal(e.to_string()))?;
        Ok(vec![joined(
            &self.joined_schema,
            left.columns().to_vec(),
            right,
        )?])
    }

    fn on_right(&mut self, _batch: RecordBatch, _time: &StepTime) -> Result<Vec<RecordBatch>> {
        Err(CoreError::Internal(
            "a lookup join has no right input".into(),
        ))
    }

    fn advance(&mut self, _time: &StepTime) -> Result<Vec<RecordBatch>> {
        Ok(Vec::new())
    }

    fn output_watermark(&self, time: &StepTime) -> i64 {
        time.left
    }

    fn state_size(&self) -> StateSize {
        StateSize::default()
    }

    fn snapshot(&self, _w: &mut crate::snapshot::SnapshotWriter) -> Result<()> {
        Ok(())
    }

    fn restore(&mut self, _r: &mut crate::snapshot::SnapshotReader<'_>) -> Result<()> {
        Ok(())
    }
}
