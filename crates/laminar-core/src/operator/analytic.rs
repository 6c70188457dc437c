//! Analytic window functions over event time: `LAG`, `LEAD`, `FIRST_VALUE`, `LAST_VALUE`,
//! `NTH_VALUE` and aggregates `OVER (PARTITION BY .. ORDER BY <event time> [frame])`, one
//! output row per input row (SPEC 2.12).
//!
//! Rows wait until the watermark passes them, so they are ranked in event-time order
//! whatever order they arrived in; then each partition appends them to its ordered rows and
//! the functions are evaluated (DataFusion's window expressions over the partition's retained
//! rows). A row is emitted once the rows after it that its functions read (`LEAD`, `n
//! FOLLOWING`) are there too, or at the end of input. Each partition keeps, besides the rows
//! waiting for followers, only the rows before them that the functions can still read: `n`
//! rows for `LAG(x, n)` and `n PRECEDING`, the rows within the interval of a `RANGE` frame, all
//! of them for `UNBOUNDED PRECEDING`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use arrow::array::{ArrayRef, RecordBatch, UInt32Array};
use arrow::datatypes::SchemaRef;
use arrow::row::{RowConverter, SortField};
use datafusion::common::hash_utils::RandomState;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::window::WindowExpr;

use crate::error::{CoreError, Result};
use crate::message::{END_OF_TIME, Message, NO_WATERMARK};
use crate::metrics::NodeMetrics;
use crate::operator::join::TimeColumn;
use crate::operator::stateless::run_steps;
use crate::operator::{Operator, StateSize, Step};
use crate::snapshot::{SnapshotReader, SnapshotWriter};

type HashMap<K, V> = std::collections::HashMap<K, V, RandomState>;

/// Tag of analytic snapshots.
const SNAPSHOT_TAG: &str = "laminar.analytic";

/// Bytes counted per kept row besides its encoding.
const ROW_OVERHEAD: usize = 48;

/// How many earlier rows the functions read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookback {
    /// The `n` rows before.
    Rows(u64),
    /// The rows whose event time is at most this many ms before.
    Millis(i64),
    /// Every earlier row of the partition.
    Unbounded,
}

/// Everything the analytic operator needs.
#[derive(Clone)]
pub struct AnalyticSpec {
    /// Stream name.
    pub name: String,
    /// Filter/projection chain of each input, ending in `input_schema`.
    pub chains: Vec<Vec<Step>>,
    /// Rows read (append-only).
    pub input_schema: SchemaRef,
    /// The event-time column of `input_schema` (the `ORDER BY`).
    pub event_time: TimeColumn,
    /// `PARTITION BY` over `input_schema`.
    pub partition_by: Vec<Arc<dyn PhysicalExpr>>,
    /// The window functions, evaluated over one partition's rows in event-time order.
    pub functions: Vec<Arc<dyn WindowExpr>>,
    /// Earlier rows the functions read.
    pub lookback: Lookback,
    /// Later rows the functions read.
    pub lookahead: u64,
    /// `input_schema` plus one column per function.
    pub window_schema: SchemaRef,
    /// Chain over the rows with their function values (`WHERE`, `SELECT`).
    pub post: Vec<Step>,
    /// Output schema.
    pub output_schema: SchemaRef,
    /// Late rows are counted here.
    pub metrics: Arc<NodeMetrics>,
}

impl std::fmt::Debug for AnalyticSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnalyticSpec")
            .field("name", &self.name)
            .field("functions", &self.functions.len())
            .field("lookback", &self.lookback)
            .field("lookahead", &self.lookahead)
            .finish()
    }
}

/// An encoded (partition key, row).
type PartitionedRow = (Box<[u8]>, Box<[u8]>);

/// One partition's rows in event-time order: `[0, first_waiting)` were emitted and are
/// kept for the functions of later rows; the rest wait for their followers.
#[derive(Default)]
struct Partition {
    rows: VecDeque<(i64, Box<[u8]>)>,
    first_waiting: usize,
}

/// See the module docs.
pub struct AnalyticOperator {
    spec: AnalyticSpec,
    partition_rows: RowConverter,
    rows: RowConverter,
    /// Rows the watermark has not passed: (event time, arrival) → (partition, row).
    pending: BTreeMap<(i64, u64), PartitionedRow>,
    partitions: HashMap<Box<[u8]>, Partition>,
    sequence: u64,
    watermark: i64,
    emitted_watermark: i64,
    kept_rows: u64,
    kept_bytes: u64,
}

fn row_error(e: impl std::fmt::Display) -> CoreError {
    CoreError::Internal(format!("analytic rows: {e}"))
}

impl AnalyticOperator {
    /// Builds the operator; fails when the spec is inconsistent.
    pub fn new(spec: AnalyticSpec) -> Result<AnalyticOperator> {
        let partition_types = spec
            .partition_by
            .iter()
            .map(|e| {
                e.data_type(&spec.input_schema)
                    .map_err(|e| CoreError::Internal(format!("partition key type: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let partition_rows =
            RowConverter::new(partition_types.into_iter().map(SortField::new).collect())
                .map_err(row_error)?;
        let rows = crate::operator::rows::row_converter(&spec.input_schema).map_err(row_error)?;
        Ok(AnalyticOperator {
            spec,
            partition_rows,
            rows,
            pending: BTreeMap::new(),
            partitions: HashMap::default(),
            sequence: 0,
            watermark: NO_WATERMARK,
            emitted_watermark: NO_WATERMARK,
            kept_rows: 0,
            kept_bytes: 0,
        })
    }

    fn count_late(&self, rows: usize) {
        if rows > 0 {
            let m = &self.spec.metrics;
            m.late_total.fetch_add(rows as u64, Ordering::Relaxed);
            m.late_dropped.fetch_add(rows as u64, Ordering::Relaxed);
        }
    }

    /// Holds the rows of a batch until the watermark passes them.
    fn hold(&mut self, batch: &RecordBatch) -> Result<()> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        let times = crate::operator::join::times_ms(batch, self.spec.event_time)?;
        let partitions = if self.spec.partition_by.is_empty() {
            None
        } else {
            let columns = crate::operator::rows::evaluate_all(
                &self.spec.name,
                &self.spec.partition_by,
                batch,
            )?;
            Some(
                self.partition_rows
                    .convert_columns(&columns)
                    .map_err(row_error)?,
            )
        };
        let rows = self
            .rows
            .convert_columns(batch.columns())
            .map_err(row_error)?;
        let mut late = 0;
        for (i, t) in times.iter().enumerate() {
            match t {
                Some(t) if *t >= self.watermark => {
                    let partition: Box<[u8]> = partitions
                        .as_ref()
                        .map_or_else(|| Box::from(&[][..]), |p| p.row(i).data().into());
                    let row: Box<[u8]> = rows.row(i).data().into();
                    self.kept_rows += 1;
                    self.kept_bytes += (partition.len() + row.len() + ROW_OVERHEAD) as u64;
                    self.pending.insert((*t, self.sequence), (partition, row));
                    self.sequence += 1;
                }
                _ => late += 1,
            }
        }
        self.count_late(late);
        Ok(())
    }

    /// Moves the rows the watermark passed into their partitions and emits what is complete.
    fn release(&mut self, out: &mut Vec<Message>) -> Result<()> {
        let end = self.watermark == END_OF_TIME;
        let mut touched: Vec<Box<[u8]>> = Vec::new();
        while let Some(entry) = self.pending.first_entry() {
            let (t, _) = *entry.key();
            if t >= self.watermark && !end {
                break;
            }
            let (partition, row) = entry.remove();
            let p = self.partitions.entry(partition.clone()).or_default();
            p.rows.push_back((t, row));
            touched.push(partition);
        }
        if end {
            // Rows still waiting for followers get none.
            touched.extend(
                self.partitions
                    .iter()
                    .filter(|(_, p)| p.first_waiting < p.rows.len())
                    .map(|(k, _)| k.clone()),
            );
        }
        touched.sort();
        touched.dedup();
        for key in touched {
            if let Some(batch) = self.evaluate(&key, end)? {
                let result = run_steps(&self.spec.name, &self.spec.post, batch, None)?;
                if result.num_rows() > 0 {
                    out.push(Message::Batch(result));
                }
            }
        }
        // Nothing older than a row still waiting for its followers is emitted later.
        let held = self
            .partitions
            .values()
            .filter_map(|p| p.rows.get(p.first_waiting).map(|(t, _)| *t))
            .min();
        let output = held.map_or(self.watermark, |t| t.min(self.watermark));
        if output > self.emitted_watermark {
            self.emitted_watermark = output;
            out.push(Message::Watermark(output));
        }
        Ok(())
    }

    /// Evaluates the functions over a partition's rows; returns the rows now complete with
    /// their values, and drops the rows no later row reads.
    fn evaluate(&mut self, key: &[u8], end: bool) -> Result<Option<RecordBatch>> {
        let Some(p) = self.partitions.get(key) else {
            return Ok(None);
        };
        let len = p.rows.len();
        let complete = if end {
            len
        } else {
            len.saturating_sub(self.spec.lookahead as usize)
        };
        let from = p.first_waiting;
        if complete <= from {
            return Ok(None);
        }
        let parser = self.rows.parser();
        let columns = self
            .rows
            .convert_rows(p.rows.iter().map(|(_, r)| parser.parse(r)))
            .map_err(row_error)?;
        let all = RecordBatch::try_new(self.spec.input_schema.clone(), columns)
            .map_err(|e| CoreError::Internal(format!("analytic rows: {e}")))?;
        let mut values = Vec::with_capacity(self.spec.functions.len());
        for f in &self.spec.functions {
            values.push(f.evaluate(&all).map_err(|source| CoreError::Evaluation {
                operator: self.spec.name.clone(),
                source,
            })?);
        }
        let indices = UInt32Array::from_iter_values(from as u32..complete as u32);
        let mut out: Vec<ArrayRef> = Vec::with_capacity(all.num_columns() + values.len());
        for c in all.columns().iter().chain(values.iter()) {
            out.push(
                arrow::compute::take(c.as_ref(), &indices, None)
                    .map_err(|e| CoreError::Internal(format!("analytic output: {e}")))?,
            );
        }
        let batch = RecordBatch::try_new(self.spec.window_schema.clone(), out)
            .map_err(|e| CoreError::Internal(format!("analytic output: {e}")))?;
        // Keep what later rows read.
        let p = self.partitions.get_mut(key).expect("partition exists");
        p.first_waiting = complete;
        let drop = match self.spec.lookback {
            Lookback::Unbounded => 0,
            Lookback::Rows(n) => complete.saturating_sub(n as usize),
            Lookback::Millis(ms) => {
                let next = p
                    .rows
                    .get(complete)
                    .or(p.rows.back())
                    .map_or(i64::MIN, |(t, _)| *t);
                let horizon = next.saturating_sub(ms);
                p.rows
                    .iter()
                    .take(complete)
                    .take_while(|(t, _)| *t < horizon)
                    .count()
            }
        };
        for _ in 0..drop {
            if let Some((_, row)) = p.rows.pop_front() {
                self.kept_rows -= 1;
                self.kept_bytes -= (key.len() + row.len() + ROW_OVERHEAD) as u64;
            }
        }
        p.first_waiting -= drop;
        if p.rows.is_empty() {
            self.partitions.remove(key);
        }
        Ok(Some(batch))
    }
}

impl Operator for AnalyticOperator {
    fn output_schema(&self) -> SchemaRef {
        self.spec.output_schema.clone()
    }

    fn on_batch(
        &mut self,
        input: usize,
        batch: RecordBatch,
        _out: &mut Vec<Message>,
    ) -> Result<()> {
        let Some(chain) = self.spec.chains.get(input) else {
            return Err(CoreError::Internal(format!(
                "analytic '{}' received input {input} but has {} inputs",
                self.spec.name,
                self.spec.chains.len()
            )));
        };
        let batch = run_steps(&self.spec.name, chain, batch, None)?;
        self.hold(&batch)
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut Vec<Message>) -> Result<()> {
        if watermark <= self.watermark {
            return Ok(());
        }
        self.watermark = watermark;
        self.release(out)
    }

    fn on_barrier(&mut self, epoch: u64, out: &mut Vec<Message>) -> Result<()> {
        out.push(Message::Barrier(epoch));
        Ok(())
    }

    fn on_end(&mut self, out: &mut Vec<Message>) -> Result<()> {
        self.watermark = END_OF_TIME;
        self.release(out)
    }

    fn snapshot(&mut self) -> Result<Option<Vec<u8>>> {
        let mut w = SnapshotWriter::new(SNAPSHOT_TAG, 1);
        w.i64(self.watermark);
        w.i64(self.emitted_watermark);
        w.u64(self.sequence);
        w.u64(self.pending.len() as u64);
        for ((t, seq), (partition, row)) in &self.pending {
            w.i64(*t);
            w.u64(*seq);
            w.bytes(partition);
            w.bytes(row);
        }
        w.u64(self.partitions.len() as u64);
        for (key, p) in &self.partitions {
            w.bytes(key);
            w.u64(p.first_waiting as u64);
            w.u64(p.rows.len() as u64);
            for (t, row) in &p.rows {
                w.i64(*t);
                w.bytes(row);
            }
        }
        Ok(Some(w.finish()))
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<()> {
        let mut r = SnapshotReader::new(snapshot, SNAPSHOT_TAG, 1)?;
        let watermark = r.i64()?;
        let emitted = r.i64()?;
        let sequence = r.u64()?;
        let (mut rows, mut bytes) = (0u64, 0u64);
        let mut pending = BTreeMap::new();
        for _ in 0..r.count()? {
            let t = r.i64()?;
            let seq = r.u64()?;
            let partition: Box<[u8]> = r.bytes()?.into();
            let row: Box<[u8]> = r.bytes()?.into();
            rows += 1;
            bytes += (partition.len() + row.len() + ROW_OVERHEAD) as u64;
            pending.insert((t, seq), (partition, row));
        }
        let mut partitions: HashMap<Box<[u8]>, Partition> = HashMap::default();
        for _ in 0..r.count()? {
            let key: Box<[u8]> = r.bytes()?.into();
            let first_waiting = r.count()?;
            let mut p = Partition {
                rows: VecDeque::new(),
                first_waiting,
            };
            for _ in 0..r.count()? {
                let t = r.i64()?;
                let row: Box<[u8]> = r.bytes()?.into();
                rows += 1;
                bytes += (key.len() + row.len() + ROW_OVERHEAD) as u64;
                p.rows.push_back((t, row));
            }
            if p.first_waiting > p.rows.len() {
                return Err(CoreError::InvalidData(format!(
                    "snapshot of analytic '{}' is inconsistent",
                    self.spec.name
                )));
            }
            partitions.insert(key, p);
        }
        if !r.is_done() {
            return Err(CoreError::InvalidData(format!(
                "snapshot of analytic '{}' has bytes left over: the query changed",
                self.spec.name
            )));
        }
        self.watermark = watermark;
        self.emitted_watermark = emitted;
        self.sequence = sequence;
        self.pending = pending;
        self.partitions = partitions;
        self.kept_rows = rows;
        self.kept_bytes = bytes;
        Ok(())
    }

    fn state_size(&self) -> StateSize {
        StateSize {
            rows: self.kept_rows,
            bytes: self.kept_bytes,
        }
    }
}
