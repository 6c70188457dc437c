//! Stateful operators stacked in one node: a query's top operator and the *stages* that feed
//! some of its inputs — for example an aggregation over a join (`SELECT category, AVG(price)
//! FROM auctions JOIN bids ON .. GROUP BY category`), a join of two aggregations, or a
//! `UNION ALL` of aggregations. Each input of the top operator is either read directly from an
//! upstream or is the output of a stage (an operator with its own upstream inputs).
//!
//! The runtime sees one operator whose inputs are, in order, the upstream inputs of each of
//! the top operator's inputs (a direct input is one, a stage contributes all of its own).
//! [`StagedOperator`] keeps one watermark merger per stage and one for the top operator, so
//! every operator sees its own inputs' watermarks, idleness and merged watermark exactly as the
//! runtime would deliver them over edges; everything a stage emits is handed to its input of
//! the top operator in order. A checkpoint barrier, aligned by the runtime over every upstream
//! input, goes through every stage first, then through the top operator.

use std::time::Instant;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;

use crate::error::{CoreError, Result};
use crate::message::{END_OF_TIME, Message};
use crate::operator::{Operator, StateSize};
use crate::snapshot::{SnapshotReader, SnapshotWriter};
use crate::time::WatermarkMerger;

const SNAPSHOT_TAG: &str = "staged";
const SNAPSHOT_VERSION: u32 = 1;

/// An input of the top operator that a stage produces.
struct Stage {
    operator: Box<dyn Operator>,
    /// The stage's own inputs' watermarks.
    merger: WatermarkMerger,
}

/// A top operator and the stages feeding some of its inputs.
pub struct StagedOperator {
    top: Box<dyn Operator>,
    /// One per input of the top operator: `None` for an input read directly.
    stages: Vec<Option<Stage>>,
    /// For each input of this operator (as the runtime numbers them): the top operator's
    /// input it belongs to, and its position among that stage's inputs (0 for a direct one).
    routes: Vec<(usize, usize)>,
    /// The watermarks of the top operator's inputs.
    merger: WatermarkMerger,
    /// What a stage emitted, handed to the top operator next.
    between: Vec<Message>,
    /// The top operator's output for the stages' rows before any input (see
    /// [`Operator::initial_output`]), emitted with the next output.
    pending: Vec<Message>,
}

impl StagedOperator {
    /// `top` reads, on its input `i`, the output of `stages[i]` (with that stage's number of
    /// inputs), or an upstream directly where `stages[i]` is `None`.
    pub fn new(
        top: Box<dyn Operator>,
        stages: Vec<Option<(Box<dyn Operator>, usize)>>,
    ) -> StagedOperator {
        let mut routes = Vec::new();
        let stages: Vec<Option<Stage>> = stages
            .into_iter()
            .enumerate()
            .map(|(input, stage)| match stage {
                None => {
                    routes.push((input, 0));
                    None
                }
                Some((operator, inputs)) => {
                    routes.extend((0..inputs).map(|local| (input, local)));
                    Some(Stage {
                        operator,
                        merger: WatermarkMerger::new(inputs),
                    })
                }
            })
            .collect();
        StagedOperator {
            top,
            merger: WatermarkMerger::new(stages.len()),
            stages,
            routes,
            between: Vec::new(),
            pending: Vec::new(),
        }
    }

    fn route(&self, input: usize) -> Result<(usize, usize)> {
        self.routes.get(input).copied().ok_or_else(|| {
            CoreError::Internal(format!(
                "input {input} of a staged operator with {} inputs",
                self.routes.len()
            ))
        })
    }

    /// A new watermark on the top operator's input `input`.
    fn top_watermark(
        &mut self,
        input: usize,
        watermark: i64,
        out: &mut Vec<Message>,
    ) -> Result<()> {
        self.top.on_input_watermark(input, watermark, out)?;
        match self.merger.update(input, watermark) {
            Some(advanced) => self.top.on_watermark(advanced, out),
            None => Ok(()),
        }
    }

    /// The top operator's input `input` went idle.
    fn top_idle(&mut self, input: usize, out: &mut Vec<Message>) -> Result<()> {
        self.top.on_input_idle(input, out)?;
        match self.merger.set_idle(input) {
            Some(advanced) => self.top.on_watermark(advanced, out),
            None => Ok(()),
        }
    }

    /// Hands what the stage of the top operator's input `input` emitted to the top operator.
    /// Its barriers stay here: the top operator takes the barrier once, after every stage.
    fn forward(&mut self, input: usize, out: &mut Vec<Message>) -> Result<()> {
        out.append(&mut self.pending);
        let mut between = std::mem::take(&mut self.between);
        let result = self.deliver(input, &mut between, out);
        between.clear();
        self.between = between;
        result
    }

    fn deliver(
        &mut self,
        input: usize,
        messages: &mut Vec<Message>,
        out: &mut Vec<Message>,
    ) -> Result<()> {
        for message in messages.drain(..) {
            match message {
                Message::Batch(batch) => {
                    if batch.num_rows() > 0 {
                        self.merger.mark_active(input);
                        self.top.on_batch(input, batch, out)?;
                    }
                }
                Message::Watermark(w) => self.top_watermark(input, w, out)?,
                Message::Idle => self.top_idle(input, out)?,
                Message::Barrier(_) | Message::End => {}
                Message::Partitioned(_) => {
                    return Err(CoreError::Internal(
                        "the stage of a query emitted partitioned rows".into(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Runs `f` on the stage of the top operator's input `input` (with its emitted messages
    /// collected) and forwards what it emitted.
    fn with_stage(
        &mut self,
        input: usize,
        out: &mut Vec<Message>,
        f: impl FnOnce(&mut Stage, &mut Vec<Message>) -> Result<()>,
    ) -> Result<()> {
        let Some(stage) = self.stages[input].as_mut() else {
            return Ok(());
        };
        f(stage, &mut self.between)?;
        self.forward(input, out)
    }

    /// The top operator's inputs that stages produce.
    fn stage_inputs(&self) -> Vec<usize> {
        (0..self.stages.len())
            .filter(|&i| self.stages[i].is_some())
            .collect()
    }
}

impl Operator for StagedOperator {
    fn output_schema(&self) -> SchemaRef {
        self.top.output_schema()
    }

    fn on_batch(&mut self, input: usize, batch: RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        let (top_input, local) = self.route(input)?;
        if self.stages[top_input].is_none() {
            out.append(&mut self.pending);
            self.merger.mark_active(top_input);
            return self.top.on_batch(top_input, batch, out);
        }
        self.with_stage(top_input, out, |stage, emitted| {
            stage.merger.mark_active(local);
            stage.operator.on_batch(local, batch, emitted)
        })
    }

    /// Watermarks are merged here per operator, from [`Operator::on_input_watermark`] and
    /// [`Operator::on_input_idle`]; the runtime's merge over every input is not used.
    fn on_watermark(&mut self, _watermark: i64, out: &mut Vec<Message>) -> Result<()> {
        out.append(&mut self.pending);
        Ok(())
    }

    fn on_input_watermark(
        &mut self,
        input: usize,
        watermark: i64,
        out: &mut Vec<Message>,
    ) -> Result<()> {
        let (top_input, local) = self.route(input)?;
        if self.stages[top_input].is_none() {
            out.append(&mut self.pending);
            return self.top_watermark(top_input, watermark, out);
        }
        self.with_stage(top_input, out, |stage, emitted| {
            stage
                .operator
                .on_input_watermark(local, watermark, emitted)?;
            match stage.merger.update(local, watermark) {
                Some(advanced) => stage.operator.on_watermark(advanced, emitted),
                None => Ok(()),
            }
        })
    }

    fn on_input_idle(&mut self, input: usize, out: &mut Vec<Message>) -> Result<()> {
        let (top_input, local) = self.route(input)?;
        if self.stages[top_input].is_none() {
            out.append(&mut self.pending);
            return self.top_idle(top_input, out);
        }
        self.with_stage(top_input, out, |stage, emitted| {
            stage.operator.on_input_idle(local, emitted)?;
            if let Some(advanced) = stage.merger.set_idle(local) {
                stage.operator.on_watermark(advanced, emitted)?;
            }
            if stage.merger.all_idle() {
                emitted.push(Message::Idle);
            }
            Ok(())
        })
    }

    fn on_barrier(&mut self, epoch: u64, out: &mut Vec<Message>) -> Result<()> {
        for input in self.stage_inputs() {
            self.with_stage(input, out, |stage, emitted| {
                stage.operator.on_barrier(epoch, emitted)
            })?;
        }
        out.append(&mut self.pending);
        self.top.on_barrier(epoch, out)
    }

    fn on_end(&mut self, out: &mut Vec<Message>) -> Result<()> {
        for input in self.stage_inputs() {
            self.with_stage(input, out, |stage, emitted| stage.operator.on_end(emitted))?;
            // The stage's output ended: it no longer holds the top operator's time back.
            self.top.on_input_watermark(input, END_OF_TIME, out)?;
        }
        out.append(&mut self.pending);
        self.top.on_end(out)
    }

    fn on_tick(&mut self, now: Instant, out: &mut Vec<Message>) -> Result<()> {
        for input in self.stage_inputs() {
            self.with_stage(input, out, |stage, emitted| {
                stage.operator.on_tick(now, emitted)
            })?;
        }
        out.append(&mut self.pending);
        self.top.on_tick(now, out)
    }

    fn paused(&self) -> bool {
        self.top.paused() || self.stages.iter().flatten().any(|s| s.operator.paused())
    }

    fn state_size(&self) -> StateSize {
        self.stages
            .iter()
            .flatten()
            .map(|s| s.operator.state_size())
            .fold(self.top.state_size(), |sum, size| StateSize {
                rows: sum.rows + size.rows,
                bytes: sum.bytes + size.bytes,
            })
    }

    fn initial_output(&mut self) -> Result<Option<RecordBatch>> {
        let initial = self.top.initial_output()?;
        // A stage's own rows before any input (a global aggregation's one row) reach the
        // top operator as its first input on that side.
        let mut pending = Vec::new();
        for input in self.stage_inputs() {
            let rows = match self.stages[input].as_mut() {
                Some(stage) => stage.operator.initial_output()?,
                None => None,
            };
            if let Some(rows) = rows {
                self.deliver(input, &mut vec![Message::Batch(rows)], &mut pending)?;
            }
        }
        if pending.iter().all(|m| matches!(m, Message::Batch(_))) {
            // The top operator's result before any input: its own rows (a global
            // aggregation's), then what the stages' rows made of them (as changes the view
            // nets out, when the top emits a changelog).
            let batches: Vec<RecordBatch> = initial
                .into_iter()
                .chain(pending.into_iter().filter_map(|m| match m {
                    Message::Batch(b) => Some(b),
                    _ => None,
                }))
                .collect();
            if batches.is_empty() {
                return Ok(None);
            }
            let rows = arrow::compute::concat_batches(&self.top.output_schema(), &batches)
                .map_err(|source| CoreError::Arrow {
                    operator: "staged query".into(),
                    source,
                })?;
            return Ok(Some(rows));
        }
        self.pending = pending;
        Ok(initial)
    }

    fn snapshot(&mut self) -> Result<Option<Vec<u8>>> {
        let mut parts = Vec::with_capacity(self.stages.len() + 1);
        parts.push(self.top.snapshot()?);
        for stage in self.stages.iter_mut().flatten() {
            parts.push(stage.operator.snapshot()?);
        }
        if parts.iter().all(Option::is_none) {
            return Ok(None);
        }
        let mut w = SnapshotWriter::new(SNAPSHOT_TAG, SNAPSHOT_VERSION);
        w.u64(parts.len() as u64);
        for part in &parts {
            w.bool(part.is_some());
            w.bytes(part.as_deref().unwrap_or_default());
        }
        Ok(Some(w.finish()))
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<()> {
        let mut r = SnapshotReader::new(snapshot, SNAPSHOT_TAG, SNAPSHOT_VERSION)?;
        let parts = r.count()?;
        let operators = 1 + self.stages.iter().flatten().count();
        if parts != operators {
            return Err(CoreError::InvalidData(format!(
                "the snapshot holds {parts} operators' state, the query has {operators}"
            )));
        }
        let mut targets: Vec<&mut Box<dyn Operator>> = vec![&mut self.top];
        targets.extend(self.stages.iter_mut().flatten().map(|s| &mut s.operator));
        for target in targets {
            let (present, bytes) = (r.bool()?, r.bytes()?);
            if present {
                target.restore(bytes)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;
    use crate::operator::StatelessOperator;

    /// Records every call it gets, and emits its input batches and watermarks unchanged.
    struct Recorder {
        schema: SchemaRef,
        log: Arc<std::sync::Mutex<Vec<String>>>,
        name: &'static str,
    }

    impl Operator for Recorder {
        fn output_schema(&self) -> SchemaRef {
            self.schema.clone()
        }
        fn on_batch(
            &mut self,
            input: usize,
            batch: RecordBatch,
            out: &mut Vec<Message>,
        ) -> Result<()> {
            self.log.lock().unwrap().push(format!(
                "{} batch {input} {}",
                self.name,
                batch.num_rows()
            ));
            out.push(Message::Batch(batch));
            Ok(())
        }
        fn on_watermark(&mut self, watermark: i64, out: &mut Vec<Message>) -> Result<()> {
            self.log
                .lock()
                .unwrap()
                .push(format!("{} watermark {watermark}", self.name));
            out.push(Message::Watermark(watermark));
            Ok(())
        }
        fn on_barrier(&mut self, epoch: u64, out: &mut Vec<Message>) -> Result<()> {
            self.log
                .lock()
                .unwrap()
                .push(format!("{} barrier {epoch}", self.name));
            out.push(Message::Barrier(epoch));
            Ok(())
        }
        fn on_end(&mut self, _out: &mut Vec<Message>) -> Result<()> {
            self.log.lock().unwrap().push(format!("{} end", self.name));
            Ok(())
        }
    }

    fn batch(schema: &SchemaRef, values: &[i64]) -> RecordBatch {
        RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int64Array::from(values.to_vec()))],
        )
        .unwrap()
    }

    /// A top operator with a direct input (0) and a stage of two inputs (1, 2): each sees its
    /// own inputs' merged watermark, the top one barrier after the stage's rows.
    #[test]
    fn each_operator_sees_its_own_inputs() {
        let schema: SchemaRef =
            Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let recorder = |name| {
            Box::new(Recorder {
                schema: schema.clone(),
                log: log.clone(),
                name,
            }) as Box<dyn Operator>
        };
        let mut op = StagedOperator::new(recorder("top"), vec![None, Some((recorder("stage"), 2))]);
        let mut out = Vec::new();
        op.on_batch(2, batch(&schema, &[1, 2]), &mut out).unwrap();
        op.on_batch(0, batch(&schema, &[3]), &mut out).unwrap();
        op.on_input_watermark(1, 100, &mut out).unwrap();
        op.on_input_watermark(2, 50, &mut out).unwrap();
        op.on_input_watermark(0, 70, &mut out).unwrap();
        op.on_input_watermark(2, 200, &mut out).unwrap();
        op.on_barrier(1, &mut out).unwrap();
        op.on_end(&mut out).unwrap();
        assert_eq!(
            log.lock().unwrap().clone(),
            vec![
                "stage batch 1 2",
                "top batch 1 2",
                "top batch 0 1",
                "stage watermark 50",
                "top watermark 50",
                "stage watermark 100",
                "top watermark 70",
                "stage barrier 1",
                "top barrier 1",
                "stage end",
                "top end",
            ]
        );
        let barriers = out
            .iter()
            .filter(|m| matches!(m, Message::Barrier(_)))
            .count();
        assert_eq!(barriers, 1, "the barrier leaves once");
        // Snapshots hold one part per operator; a stateless part restores from nothing.
        let mut stateless = StagedOperator::new(
            Box::new(StatelessOperator::new(
                "s",
                vec![Vec::new()],
                schema.clone(),
            )),
            vec![Some((
                Box::new(StatelessOperator::new(
                    "s",
                    vec![Vec::new()],
                    schema.clone(),
                )),
                1,
            ))],
        );
        assert!(stateless.snapshot().unwrap().is_none());
    }
}
