//! A node of the operator graph: one operator, its input queues, its outgoing edges.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use arrow::datatypes::SchemaRef;
use crossbeam_channel::{Receiver, TryRecvError};
use parking_lot::Mutex;

use super::RuntimeShared;
use super::edge::{EdgeReceiver, OutEdge};
use crate::error::Result;
use crate::message::Message;
use crate::metrics::NodeMetrics;
use crate::operator::Operator;
use crate::time::WatermarkMerger;

/// Identifier of a node, unique within a runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodeId(pub u64);

struct Input {
    rx: Receiver<Message>,
    ended: bool,
    /// Delivered the barrier of the checkpoint being aligned: not read until every other
    /// live input delivered it too.
    aligned: bool,
}

struct NodeState {
    operator: Box<dyn Operator>,
    inputs: Vec<Input>,
    merger: WatermarkMerger,
    /// The checkpoint epoch (or read mark) being aligned (some inputs delivered its
    /// barrier), and since when.
    aligning: Option<u64>,
    aligning_since: Instant,
    /// The newest read mark this node gave up aligning: a copy of it (or of an older one)
    /// arriving later is dropped, not aligned again (read mark ids only grow).
    abandoned_mark: u64,
    ended: bool,
    out: Vec<Message>,
}

/// Result of one scheduler visit.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Visit {
    pub(crate) progress: bool,
    pub(crate) blocked: bool,
}

/// See the module docs. Held in an `Arc` by its worker and by the catalog.
pub struct Node {
    /// Identifier.
    pub id: NodeId,
    /// Name (the source, stream or sink it implements).
    pub name: String,
    pub(crate) worker: usize,
    schema: SchemaRef,
    state: Mutex<NodeState>,
    outputs: Mutex<Vec<OutEdge>>,
    /// Counters.
    pub metrics: Arc<NodeMetrics>,
    failed: AtomicBool,
    finished: AtomicBool,
    retired: AtomicBool,
    observer: Mutex<Option<Arc<dyn CheckpointObserver>>>,
    seeder: Mutex<Option<Seeder>>,
    budget: Mutex<Option<MemoryBudget>>,
}

/// `memory.budget` of a node: the most bytes of state its operator may hold.
struct MemoryBudget {
    bytes: u64,
    /// When the state size was last compared with the budget.
    checked: Instant,
}

/// How often a node with a memory budget compares its state size with it (the size of some
/// operators' state takes a walk over it to compute).
const BUDGET_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);

/// How long a node holds inputs for a read mark that other inputs do not deliver: longer than
/// a query waits for its mark ([`crate::message::READ_MARK_WAIT`]).
const READ_MARK_ALIGNMENT_LIMIT: std::time::Duration =
    crate::message::READ_MARK_WAIT.saturating_add(std::time::Duration::from_secs(5));

/// What a new reader of a node receives before the node's live output, taken while no
/// output is being produced: a materialized view's current contents and watermark. The first
/// message is always a batch (possibly empty).
pub type Seeder = Arc<dyn Fn() -> Result<Vec<Message>> + Send + Sync>;

/// An operator's state taken at a checkpoint barrier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateSnapshot {
    /// The bytes ([`Operator::snapshot`] or [`Operator::snapshot_delta`]).
    pub bytes: Vec<u8>,
    /// True for the changes since the node's previous snapshot, false for a full one.
    pub delta: bool,
}

/// Receives each node's snapshot when a checkpoint barrier has passed it.
pub trait CheckpointObserver: Send + Sync {
    /// Whether `node` may answer checkpoint `epoch` with the changes since its previous
    /// snapshot (true only when that snapshot is part of a durable checkpoint).
    fn wants_delta(&self, _node: &str, _epoch: u64) -> bool {
        false
    }

    /// `snapshot` is the operator's state (`None`: it keeps none) or why it failed.
    fn on_snapshot(
        &self,
        node: &str,
        epoch: u64,
        snapshot: std::result::Result<Option<StateSnapshot>, String>,
    );
}

impl Node {
    pub(crate) fn new(
        id: NodeId,
        name: &str,
        worker: usize,
        operator: Box<dyn Operator>,
        metrics: Arc<NodeMetrics>,
    ) -> Node {
        Node {
            id,
            name: name.to_string(),
            worker,
            schema: operator.output_schema(),
            state: Mutex::new(NodeState {
                operator,
                inputs: Vec::new(),
                merger: WatermarkMerger::new(0),
                aligning: None,
                aligning_since: Instant::now(),
                abandoned_mark: 0,
                ended: false,
                out: Vec::new(),
            }),
            outputs: Mutex::new(Vec::new()),
            metrics,
            failed: AtomicBool::new(false),
            finished: AtomicBool::new(false),
            retired: AtomicBool::new(false),
            observer: Mutex::new(None),
            seeder: Mutex::new(None),
            budget: Mutex::new(None),
        }
    }

    /// Schema of the node's output.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Output watermark, if any was emitted.
    pub fn output_watermark(&self) -> Option<i64> {
        self.metrics.watermark()
    }

    /// True once the node emitted `End` (all inputs ended, or it failed).
    pub fn is_finished(&self) -> bool {
        self.finished.load(Ordering::SeqCst)
    }

    /// True when the node's operator failed.
    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    /// Sets who receives this node's checkpoint snapshots.
    pub fn set_checkpoint_observer(&self, observer: Option<Arc<dyn CheckpointObserver>>) {
        *self.observer.lock() = observer;
    }

    /// Sets what new readers that ask for it receive first (see [`Seeder`]).
    pub fn set_seeder(&self, seeder: Option<Seeder>) {
        *self.seeder.lock() = seeder;
    }

    /// Bounds the bytes of state the node's operator may hold: checked on processing-time
    /// ticks (at most every 200 ms); a node over its budget fails with an error naming it,
    /// its state size and the budget.
    pub fn set_memory_budget(&self, bytes: Option<u64>) {
        *self.budget.lock() = bytes.map(|bytes| MemoryBudget {
            bytes,
            checked: Instant::now(),
        });
    }

    /// True when the node has a [`Seeder`].
    pub fn has_seeder(&self) -> bool {
        self.seeder.lock().is_some()
    }

    /// True when the node was removed from the graph.
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::SeqCst)
    }

    /// State size reported by the operator.
    pub fn state_size(&self) -> crate::operator::StateSize {
        self.state.lock().operator.state_size()
    }

    pub(crate) fn add_input(&self, rx: Receiver<Message>, upstream_watermark: Option<i64>) {
        self.add_inputs(vec![(rx, upstream_watermark)]);
    }

    /// Adds several inputs at once: a running node never computes a watermark from some of
    /// them without the others.
    pub(crate) fn add_inputs(&self, inputs: Vec<(Receiver<Message>, Option<i64>)>) {
        let mut st = self.state.lock();
        for (rx, upstream_watermark) in inputs {
            self.add_input_locked(&mut st, rx, upstream_watermark);
        }
    }

    fn add_input_locked(
        &self,
        st: &mut NodeState,
        rx: Receiver<Message>,
        upstream_watermark: Option<i64>,
    ) {
        let index = st.merger.add_input();
        st.inputs.push(Input {
            rx,
            ended: false,
            aligned: false,
        });
        if let Some(w) = upstream_watermark {
            // Seed with the upstream's current watermark so a node added to a running graph
            // does not wait for the next advance. Whatever the operator emits for it goes
            // out on the next visit.
            st.merger.update(index, w);
            let mut out = std::mem::take(&mut st.out);
            let seeded = st.operator.on_input_watermark(index, w, &mut out);
            st.out = out;
            if let Err(e) = seeded {
                tracing::warn!(node = %self.name, error = %e, "seeding an input watermark failed");
            }
        }
    }

    /// Adds an outgoing edge to another node; returns the receiver for the target.
    pub(crate) fn connect(
        &self,
        shared: &Arc<RuntimeShared>,
        target: Option<&Arc<Node>>,
        capacity: usize,
    ) -> Receiver<Message> {
        let (tx, rx) = crossbeam_channel::bounded(capacity);
        let mut edge = OutEdge::new(tx, target.map(|t| t.worker), true);
        let mut outputs = self.outputs.lock();
        if self.is_finished() {
            edge.offer(shared, Message::End);
        }
        outputs.push(edge);
        rx
    }

    /// Adds an outgoing edge to another node that starts with the node's seed (its
    /// [`Seeder`]'s messages, taken under the output lock, so the edge then carries exactly
    /// the output produced after them); empty batches of the seed are left out. Returns the
    /// receiver and whether a seed was sent (`false`: the node has no seeder).
    pub(crate) fn connect_seeded(
        &self,
        shared: &Arc<RuntimeShared>,
        target: &Arc<Node>,
        capacity: usize,
    ) -> Result<(Receiver<Message>, bool)> {
        let (tx, rx) = crossbeam_channel::bounded(capacity);
        let mut edge = OutEdge::new(tx, Some(target.worker), true);
        let mut outputs = self.outputs.lock();
        let seeder = self.seeder.lock().clone();
        let seeded = match seeder {
            Some(seeder) => {
                for msg in seeder()? {
                    if !matches!(&msg, Message::Batch(b) if b.num_rows() == 0) {
                        edge.offer(shared, msg);
                    }
                }
                true
            }
            None => false,
        };
        if self.is_finished() {
            edge.offer(shared, Message::End);
        }
        outputs.push(edge);
        Ok((rx, seeded))
    }

    /// Adds an outgoing edge to an external consumer; with `seeded`, it starts with the
    /// node's seed (see [`Node::connect_seeded`]; the batch is sent even when empty).
    pub(crate) fn connect_external(
        &self,
        shared: &Arc<RuntimeShared>,
        capacity: usize,
        counted: bool,
        seeded: bool,
    ) -> Result<EdgeReceiver> {
        let (tx, rx) = crossbeam_channel::bounded(capacity);
        let mut edge = OutEdge::new(tx, None, counted);
        let mut outputs = self.outputs.lock();
        let seeder = if seeded {
            self.seeder.lock().clone()
        } else {
            None
        };
        if let Some(seeder) = seeder {
            for msg in seeder()? {
                edge.offer(shared, msg);
            }
        } else if let Some(w) = self.output_watermark() {
            edge.offer(shared, Message::Watermark(w));
        }
        if self.is_finished() {
            edge.offer(shared, Message::End);
        }
        outputs.push(edge);
        Ok(EdgeReceiver::new(rx, shared.clone(), counted))
    }

    /// Stops the node: queued input and outbox messages are discarded (and uncounted).
    pub(crate) fn retire(&self, shared: &RuntimeShared) {
        if self.retired.swap(true, Ordering::SeqCst) {
            return;
        }
        let mut outputs = self.outputs.lock();
        for edge in outputs.iter_mut() {
            edge.discard(shared);
        }
        outputs.clear();
        let st = self.state.lock();
        for input in &st.inputs {
            let mut n = 0i64;
            while input.rx.try_recv().is_ok() {
                n += 1;
            }
            shared.in_flight.fetch_sub(n, Ordering::SeqCst);
        }
    }

    /// One scheduler visit: flush the outbox, then handle up to `budget` input messages.
    pub(crate) fn visit(&self, shared: &RuntimeShared, budget: usize) -> Visit {
        let mut visit = Visit::default();
        if self.retired.load(Ordering::Relaxed) {
            return visit;
        }
        let mut outputs = self.outputs.lock();
        let had_pending = outputs.iter().any(|e| !e.pending.is_empty());
        if had_pending {
            let mut clear = true;
            for edge in outputs.iter_mut() {
                clear &= edge.flush(shared);
            }
            outputs.retain(|e| !e.closed);
            if !clear {
                visit.blocked = true;
                return visit;
            }
            visit.progress = true;
        }
        let started = Instant::now();
        let mut st = self.state.lock();
        let mut handled = 0usize;
        'drain: loop {
            let mut any = false;
            for index in 0..st.inputs.len() {
                if st.inputs[index].ended || st.inputs[index].aligned {
                    continue;
                }
                // A paused operator (a source held by its alignment group) takes nothing
                // more; asked before every message, so it stops right after the batch
                // that carried it past its limit.
                if st.operator.paused() {
                    break 'drain;
                }
                let received = st.inputs[index].rx.try_recv();
                let (msg, counted) = match received {
                    Ok(msg) => (msg, true),
                    Err(TryRecvError::Empty) => continue,
                    // Upstream dropped without End (it was removed): treat as ended.
                    Err(TryRecvError::Disconnected) => (Message::End, false),
                };
                any = true;
                handled += 1;
                self.handle(shared, &mut st, index, msg);
                let out = std::mem::take(&mut st.out);
                self.dispatch(shared, &mut outputs, out);
                if counted {
                    shared.in_flight.fetch_sub(1, Ordering::SeqCst);
                }
                if outputs.iter().any(|e| !e.pending.is_empty()) {
                    visit.blocked = true;
                    break 'drain;
                }
                if handled >= budget {
                    break 'drain;
                }
            }
            if !any {
                break;
            }
        }
        outputs.retain(|e| !e.closed);
        if handled > 0 {
            visit.progress = true;
            self.metrics.cycles.fetch_add(1, Ordering::Relaxed);
            self.metrics
                .last_cycle_ns
                .store(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
        visit
    }

    /// Processing-time tick.
    pub(crate) fn tick(&self, shared: &RuntimeShared, now: Instant) {
        if self.retired.load(Ordering::Relaxed) || self.has_failed() || self.is_finished() {
            return;
        }
        let mut outputs = self.outputs.lock();
        let mut st = self.state.lock();
        if let Some(mark) = st.aligning
            && crate::message::is_read_mark(mark)
            && now.duration_since(st.aligning_since) > READ_MARK_ALIGNMENT_LIMIT
        {
            // A read mark that some input never delivers (it entered the sources while this
            // node was being connected, or its query gave up): stop holding the inputs that
            // did. The mark goes no further; its query has failed by now.
            tracing::warn!(node = %self.name, mark, "abandoning read-mark alignment");
            st.aligning = None;
            st.abandoned_mark = st.abandoned_mark.max(mark);
            for i in st.inputs.iter_mut() {
                i.aligned = false;
            }
        }
        let mut out = std::mem::take(&mut st.out);
        let result = st.operator.on_tick(now, &mut out);
        st.out = out;
        if let Err(e) = result {
            self.fail(shared, &mut st, &e);
        } else if let Some(error) = self.over_budget(&st, now) {
            self.fail(shared, &mut st, &error);
        }
        let out = std::mem::take(&mut st.out);
        self.dispatch(shared, &mut outputs, out);
    }

    /// The error of a node whose state has grown past its memory budget (when it is time to
    /// look).
    fn over_budget(&self, st: &NodeState, now: Instant) -> Option<crate::error::CoreError> {
        let mut budget = self.budget.lock();
        let budget = budget.as_mut()?;
        if now.duration_since(budget.checked) < BUDGET_CHECK_INTERVAL {
            return None;
        }
        budget.checked = now;
        let size = st.operator.state_size();
        (size.bytes > budget.bytes).then(|| {
            crate::error::CoreError::InvalidData(format!(
                "operator '{}' holds {} rows in about {} bytes of state, over its memory budget of {} bytes (memory.budget); raise the budget or narrow the query",
                self.name, size.rows, size.bytes, budget.bytes
            ))
        })
    }

    fn handle(&self, shared: &RuntimeShared, st: &mut NodeState, input: usize, msg: Message) {
        if self.has_failed() || st.ended {
            // A failed node drains and discards its input so producers never hang on it.
            if let Message::Batch(b) = &msg {
                self.metrics
                    .rows_dropped
                    .fetch_add(b.num_rows() as u64, Ordering::Relaxed);
            }
            return;
        }
        let mut out = std::mem::take(&mut st.out);
        let result = self.handle_inner(st, input, msg, &mut out);
        st.out = out;
        if let Err(e) = result {
            self.fail(shared, st, &e);
        }
    }

    fn handle_inner(
        &self,
        st: &mut NodeState,
        input: usize,
        msg: Message,
        out: &mut Vec<Message>,
    ) -> Result<()> {
        match msg {
            Message::Batch(batch) => {
                self.metrics
                    .rows_in
                    .fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
                self.metrics.batches_in.fetch_add(1, Ordering::Relaxed);
                st.merger.mark_active(input);
                st.operator.on_batch(input, batch, out)
            }
            Message::Watermark(w) => {
                st.operator.on_input_watermark(input, w, out)?;
                match st.merger.update(input, w) {
                    Some(advanced) => st.operator.on_watermark(advanced, out),
                    None => Ok(()),
                }
            }
            Message::Idle => {
                st.operator.on_input_idle(input, out)?;
                if let Some(advanced) = st.merger.set_idle(input) {
                    st.operator.on_watermark(advanced, out)?;
                }
                if st.merger.all_idle() {
                    out.push(Message::Idle);
                }
                Ok(())
            }
            Message::Barrier(epoch)
                if crate::message::is_read_mark(epoch)
                    && (epoch <= st.abandoned_mark
                        || st.aligning.is_some_and(|pending| {
                            crate::message::is_read_mark(pending) && epoch < pending
                        })) =>
            {
                // A read mark given up here, or one older than the mark being aligned (an
                // input that reordered it): dropped, so it cannot hold inputs again.
                st.abandoned_mark = st.abandoned_mark.max(epoch);
                Ok(())
            }
            Message::Barrier(epoch) => {
                // Aligned checkpoints: an input that delivered the barrier is not read again
                // until every live input delivered it, so the snapshot holds exactly the
                // rows before the barrier on every input.
                if let Some(pending) = st.aligning
                    && pending != epoch
                {
                    // A newer barrier while an older one is aligning: the older checkpoint
                    // can no longer complete (its coordinator gave up on it); align the new.
                    // (Checkpoint barriers and read marks enter every source in one order,
                    // so a read mark never overtakes an aligning barrier.)
                    tracing::warn!(node = %self.name, pending, epoch, "abandoning checkpoint alignment");
                    if crate::message::is_read_mark(pending) {
                        st.abandoned_mark = st.abandoned_mark.max(pending);
                    }
                    for i in st.inputs.iter_mut() {
                        i.aligned = false;
                    }
                }
                if st.aligning != Some(epoch) {
                    st.aligning_since = Instant::now();
                }
                st.aligning = Some(epoch);
                if let Some(i) = st.inputs.get_mut(input) {
                    i.aligned = true;
                }
                self.complete_alignment(st, out)
            }
            Message::Partitioned(_) => Err(crate::error::CoreError::Internal(format!(
                "node '{}' received a partitioned message, which never travels on an edge",
                self.name
            ))),
            Message::End => {
                if let Some(i) = st.inputs.get_mut(input) {
                    i.ended = true;
                }
                // An ended input no longer holds the watermark back.
                st.operator
                    .on_input_watermark(input, crate::message::END_OF_TIME, out)?;
                if let Some(advanced) = st.merger.update(input, crate::message::END_OF_TIME)
                    && st.inputs.iter().any(|i| !i.ended)
                {
                    st.operator.on_watermark(advanced, out)?;
                }
                // The ended input no longer holds a pending barrier back.
                self.complete_alignment(st, out)?;
                if st.inputs.iter().all(|i| i.ended) {
                    st.operator.on_end(out)?;
                    out.push(Message::End);
                    st.ended = true;
                }
                Ok(())
            }
        }
    }

    /// Completes the pending checkpoint alignment when every live input delivered its
    /// barrier: the operator forwards the barrier, then its snapshot goes to the observer.
    fn complete_alignment(&self, st: &mut NodeState, out: &mut Vec<Message>) -> Result<()> {
        let Some(epoch) = st.aligning else {
            return Ok(());
        };
        if st.inputs.iter().any(|i| !i.ended && !i.aligned) {
            return Ok(());
        }
        st.aligning = None;
        for i in st.inputs.iter_mut() {
            i.aligned = false;
        }
        st.operator.on_barrier(epoch, out)?;
        if crate::message::is_read_mark(epoch) {
            // A read mark is not a checkpoint: nothing to save.
            return Ok(());
        }
        let observer = self.observer.lock().clone();
        let delta = match &observer {
            Some(o) if o.wants_delta(&self.name, epoch) => st.operator.snapshot_delta(),
            _ => Ok(None),
        };
        let snapshot = match delta {
            Ok(Some(bytes)) => Ok(Some(StateSnapshot { bytes, delta: true })),
            Ok(None) => st.operator.snapshot().map(|s| {
                s.map(|bytes| StateSnapshot {
                    bytes,
                    delta: false,
                })
            }),
            Err(e) => Err(e),
        }
        .map_err(|e| e.to_string());
        if let Some(observer) = observer {
            observer.on_snapshot(&self.name, epoch, snapshot);
        }
        Ok(())
    }

    fn fail(&self, shared: &RuntimeShared, st: &mut NodeState, error: &crate::error::CoreError) {
        self.failed.store(true, Ordering::SeqCst);
        self.metrics.errors.fetch_add(1, Ordering::Relaxed);
        shared.record_failure(&self.name, error);
        st.out.clear();
        st.out.push(Message::End);
        st.ended = true;
    }

    fn dispatch(&self, shared: &RuntimeShared, outputs: &mut [OutEdge], out: Vec<Message>) {
        for msg in out {
            if let Message::Partitioned(parts) = msg {
                // A hash exchange: sub-batch `i` goes to edge `i` only (the exchange's edges
                // are its instances, all connected before its inputs).
                for (edge, part) in outputs.iter_mut().zip(parts) {
                    if let Some(batch) = part {
                        self.metrics
                            .rows_out
                            .fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
                        edge.offer(shared, Message::Batch(batch));
                    }
                }
                continue;
            }
            match &msg {
                Message::Batch(b) => {
                    self.metrics
                        .rows_out
                        .fetch_add(b.num_rows() as u64, Ordering::Relaxed);
                }
                Message::Watermark(w) => {
                    self.metrics.watermark.fetch_max(*w, Ordering::Relaxed);
                }
                Message::End => self.finished.store(true, Ordering::SeqCst),
                Message::Barrier(_) | Message::Idle | Message::Partitioned(_) => {}
            }
            if let Some((last, rest)) = outputs.split_last_mut() {
                for edge in rest {
                    edge.offer(shared, msg.clone());
                }
                last.offer(shared, msg);
            }
        }
    }
}
