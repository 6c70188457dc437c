//! Two operators stacked in one node: a query's *stage* (a join, an aggregation or a ranking)
//! and the operator over it (an aggregation or a ranking), for queries such as
//! `SELECT category, AVG(price) FROM auctions JOIN bids ON .. GROUP BY category`. Everything
//! the stage emits is handed to the top operator as its only input, in order, the way the
//! runtime would deliver it over an edge: batches, watermarks (when they advance), idleness
//! and barriers. The runtime sees one operator with the stage's inputs and the top
//! operator's output.

use std::time::Instant;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;

use crate::error::{CoreError, Result};
use crate::message::{END_OF_TIME, Message, NO_WATERMARK};
use crate::operator::{Operator, StateSize};
use crate::snapshot::{SnapshotReader, SnapshotWriter};

const SNAPSHOT_TAG: &str = "staged";
const SNAPSHOT_VERSION: u32 = 1;

/// A stage and the operator reading its output.
pub struct StagedOperator {
    stage: Box<dyn Operator>,
    top: Box<dyn Operator>,
    /// The stage's output watermark as the top operator last saw it.
    watermark: i64,
    /// What the stage emitted, handed to the top operator next.
    between: Vec<Message>,
    /// The top operator's output for the stage's rows before any input (see
    /// [`Operator::initial_output`]), emitted with the next output.
    pending: Vec<Message>,
}

impl StagedOperator {
    /// `top` reads everything `stage` emits.
    pub fn new(stage: Box<dyn Operator>, top: Box<dyn Operator>) -> StagedOperator {
        StagedOperator {
            stage,
            top,
            watermark: NO_WATERMARK,
            between: Vec::new(),
            pending: Vec::new(),
        }
    }

    /// Hands what the stage emitted to the top operator.
    fn forward(&mut self, out: &mut Vec<Message>) -> Result<()> {
        out.append(&mut self.pending);
        let mut between = std::mem::take(&mut self.between);
        let result = self.deliver(&mut between, out);
        between.clear();
        self.between = between;
        result
    }

    fn deliver(&mut self, messages: &mut Vec<Message>, out: &mut Vec<Message>) -> Result<()> {
        for message in messages.drain(..) {
            match message {
                Message::Batch(batch) => {
                    if batch.num_rows() > 0 {
                        self.top.on_batch(0, batch, out)?;
                    }
                }
                Message::Watermark(w) => {
                    self.top.on_input_watermark(0, w, out)?;
                    if w > self.watermark {
                        self.watermark = w;
                        self.top.on_watermark(w, out)?;
                    }
                }
                Message::Idle => {
                    self.top.on_input_idle(0, out)?;
                    out.push(Message::Idle);
                }
                Message::Barrier(epoch) => self.top.on_barrier(epoch, out)?,
                // The runtime sends `End` after `on_end`; a stage never emits it itself.
                Message::End => {}
                Message::Partitioned(_) => {
                    return Err(CoreError::Internal(
                        "the stage of a query emitted partitioned rows".into(),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Operator for StagedOperator {
    fn output_schema(&self) -> SchemaRef {
        self.top.output_schema()
    }

    fn on_batch(&mut self, input: usize, batch: RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        self.stage.on_batch(input, batch, &mut self.between)?;
        self.forward(out)
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut Vec<Message>) -> Result<()> {
        self.stage.on_watermark(watermark, &mut self.between)?;
        self.forward(out)
    }

    fn on_input_watermark(
        &mut self,
        input: usize,
        watermark: i64,
        out: &mut Vec<Message>,
    ) -> Result<()> {
        self.stage
            .on_input_watermark(input, watermark, &mut self.between)?;
        self.forward(out)
    }

    fn on_input_idle(&mut self, input: usize, out: &mut Vec<Message>) -> Result<()> {
        self.stage.on_input_idle(input, &mut self.between)?;
        self.forward(out)
    }

    fn on_barrier(&mut self, epoch: u64, out: &mut Vec<Message>) -> Result<()> {
        self.stage.on_barrier(epoch, &mut self.between)?;
        self.forward(out)
    }

    fn on_end(&mut self, out: &mut Vec<Message>) -> Result<()> {
        self.stage.on_end(&mut self.between)?;
        self.forward(out)?;
        // The stage's output ends: it no longer holds the top operator's time back.
        self.top.on_input_watermark(0, END_OF_TIME, out)?;
        self.top.on_end(out)
    }

    fn on_tick(&mut self, now: Instant, out: &mut Vec<Message>) -> Result<()> {
        self.stage.on_tick(now, &mut self.between)?;
        self.forward(out)?;
        self.top.on_tick(now, out)
    }

    fn paused(&self) -> bool {
        self.stage.paused()
    }

    fn state_size(&self) -> StateSize {
        let (stage, top) = (self.stage.state_size(), self.top.state_size());
        StateSize {
            rows: stage.rows + top.rows,
            bytes: stage.bytes + top.bytes,
        }
    }

    fn initial_output(&mut self) -> Result<Option<RecordBatch>> {
        let initial = self.top.initial_output()?;
        // The stage's own rows before any input (a global aggregation's one row) reach the
        // top operator as its first input.
        if let Some(rows) = self.stage.initial_output()? {
            let mut pending = Vec::new();
            self.deliver(&mut vec![Message::Batch(rows)], &mut pending)?;
            self.pending = pending;
        }
        Ok(initial)
    }

    fn snapshot(&mut self) -> Result<Option<Vec<u8>>> {
        let stage = self.stage.snapshot()?;
        let top = self.top.snapshot()?;
        if stage.is_none() && top.is_none() {
            return Ok(None);
        }
        let mut w = SnapshotWriter::new(SNAPSHOT_TAG, SNAPSHOT_VERSION);
        w.i64(self.watermark);
        for part in [&stage, &top] {
            w.bool(part.is_some());
            w.bytes(part.as_deref().unwrap_or_default());
        }
        Ok(Some(w.finish()))
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<()> {
        let mut r = SnapshotReader::new(snapshot, SNAPSHOT_TAG, SNAPSHOT_VERSION)?;
        self.watermark = r.i64()?;
        let stage = (r.bool()?, r.bytes()?);
        let top = (r.bool()?, r.bytes()?);
        if stage.0 {
            self.stage.restore(stage.1)?;
        }
        if top.0 {
            self.top.restore(top.1)?;
        }
        Ok(())
    }
}
