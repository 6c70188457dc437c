//! The operator contract and the operators of the streaming core.
//!
//! An operator is a loop over messages: the runtime hands it batches from its inputs, the
//! merged watermark when it advances, aligned barriers and the end of input, and it appends
//! what it emits to an output buffer. Operators never block and never do I/O.

pub mod aggregate;
mod analytic;
mod exchange;
pub mod join;
mod rows;
mod source;
mod staged;
mod stateless;
mod topn;
mod view;

use std::time::Instant;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;

use crate::error::Result;
use crate::message::Message;

pub use analytic::{AnalyticOperator, AnalyticSpec, Lookback};
pub use exchange::ExchangeOperator;
pub use source::{SourceOperator, SourceSettings};
pub use staged::StagedOperator;
pub use stateless::{StatelessOperator, Step};
pub use topn::{RankFunction, TopNOperator, TopNSpec};
pub use view::{ViewOperator, ViewStore};

/// Size of the state an operator holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateSize {
    /// Rows (or entries) held.
    pub rows: u64,
    /// Approximate bytes held.
    pub bytes: u64,
}

/// A streaming operator.
///
/// Contract:
/// - `on_batch` is called for every batch of every input, in arrival order per input.
/// - `on_watermark` is called with the operator's input watermark (the minimum over non-idle
///   inputs, see [`crate::time::WatermarkMerger`]) each time it advances; the operator
///   decides what its output watermark is and emits it.
/// - `on_barrier` is called once per checkpoint epoch after the barrier arrived on every live
///   input; the operator forwards it after anything that belongs to the epoch.
/// - `on_end` is called once, after every input ended; the runtime emits `End` after it.
/// - `on_tick` is called periodically (processing time) for timers such as idle detection.
///
/// Every method appends its output to `out`; an `Err` stops the operator and is reported as
/// the node's failure.
pub trait Operator: Send {
    /// Schema of the batches this operator emits.
    fn output_schema(&self) -> SchemaRef;

    /// Processes a batch from input `input`.
    fn on_batch(&mut self, input: usize, batch: RecordBatch, out: &mut Vec<Message>) -> Result<()>;

    /// Handles an advance of the input watermark.
    fn on_watermark(&mut self, watermark: i64, out: &mut Vec<Message>) -> Result<()>;

    /// Handles a new watermark of one input (`END_OF_TIME` when it ended), before the merged
    /// watermark is computed. Operators that need each input's own time (joins) override it.
    fn on_input_watermark(
        &mut self,
        _input: usize,
        _watermark: i64,
        _out: &mut Vec<Message>,
    ) -> Result<()> {
        Ok(())
    }

    /// Handles one input going idle (see [`on_input_watermark`](Operator::on_input_watermark)).
    fn on_input_idle(&mut self, _input: usize, _out: &mut Vec<Message>) -> Result<()> {
        Ok(())
    }

    /// Handles an aligned checkpoint barrier.
    fn on_barrier(&mut self, epoch: u64, out: &mut Vec<Message>) -> Result<()>;

    /// Handles the end of every input.
    fn on_end(&mut self, out: &mut Vec<Message>) -> Result<()>;

    /// Processing-time tick.
    fn on_tick(&mut self, _now: Instant, _out: &mut Vec<Message>) -> Result<()> {
        Ok(())
    }

    /// True while the operator refuses input (a source paused by its alignment group); the
    /// scheduler leaves its queues untouched and asks again on the next visit.
    fn paused(&self) -> bool {
        false
    }

    /// Size of the state held (stateless operators hold none).
    fn state_size(&self) -> StateSize {
        StateSize::default()
    }

    /// The rows the operator's result holds before any input (the one row of a global
    /// aggregation over no rows), as a batch of its output, recorded as emitted; `None` for
    /// most operators. Called at most once, before any input, on a fresh (not restored)
    /// operator whose result a materialized view keeps.
    fn initial_output(&mut self) -> Result<Option<RecordBatch>> {
        Ok(None)
    }

    /// The operator's state as bytes (see [`crate::snapshot`]), `None` when it holds no
    /// state that a restart would need.
    fn snapshot(&mut self) -> Result<Option<Vec<u8>>> {
        Ok(None)
    }

    /// Restores a [`Operator::snapshot`] of an operator built from the same definition.
    fn restore(&mut self, _snapshot: &[u8]) -> Result<()> {
        Err(crate::error::CoreError::InvalidData(
            "this operator holds no state to restore".into(),
        ))
    }

    /// An incremental snapshot: what changed since this operator's previous snapshot (full
    /// or incremental), for [`Operator::restore_chain`] to apply on top of it. `None` when
    /// the operator cannot tell (it writes only full snapshots, or has not taken one since
    /// it was built or restored); the caller then takes a full one.
    fn snapshot_delta(&mut self) -> Result<Option<Vec<u8>>> {
        Ok(None)
    }

    /// Restores a full snapshot followed by the incremental ones taken after it, in order.
    fn restore_chain(&mut self, base: &[u8], deltas: &[Vec<u8>]) -> Result<()> {
        if deltas.is_empty() {
            self.restore(base)
        } else {
            Err(crate::error::CoreError::InvalidData(
                "this operator does not take incremental snapshots".into(),
            ))
        }
    }
}
