//! Subscriptions to a stream's output.
//!
//! - **Poll** ([`Subscription`], [`ArrowSubscription`]): read directly from a bounded queue
//!   attached to the stream. The queue shares the stream's backpressure: a reader that stops
//!   reading stalls the query (never silent loss).
//! - **Push** ([`PushSubscription`], callback, async `Stream`): a dispatcher task moves the
//!   stream's output into a per-subscription buffer with its own overflow policy
//!   ([`SubscriptionBackpressure`]), so a slow push subscriber never stalls the query unless
//!   it asked for `Block` (which blocks the dispatcher, and the stream only once the
//!   dispatcher's bounded input queue is full too).

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use crossbeam_channel::{RecvTimeoutError, TryRecvError};
use laminar_core::message::{ChangeOp, Message, change_ops};
use laminar_core::operator::Step;
use laminar_core::record::FromRow;
use laminar_core::runtime::EdgeReceiver;
use parking_lot::{Condvar, Mutex};

use crate::error::DbError;

/// Why a poll subscription returned no rows.
fn ended(name: &str) -> DbError {
    DbError::InvalidOperation(format!("'{name}' has ended: no more rows will arrive"))
}

/// A poll subscription delivering Arrow batches.
pub struct ArrowSubscription {
    pub(crate) name: String,
    pub(crate) rx: EdgeReceiver,
    pub(crate) schema: SchemaRef,
    pub(crate) done: bool,
}

impl ArrowSubscription {
    /// Output schema.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// The next batch if one is ready (non-blocking).
    pub fn poll(&mut self) -> Option<RecordBatch> {
        loop {
            match self.rx.try_recv() {
                Ok(Message::Batch(b)) => return Some(b),
                Ok(Message::End) => {
                    self.done = true;
                    return None;
                }
                Ok(_) => continue,
                Err(TryRecvError::Empty) => return None,
                Err(TryRecvError::Disconnected) => {
                    self.done = true;
                    return None;
                }
            }
        }
    }

    /// The next batch, waiting up to `timeout`; `Ok(None)` on timeout, an error once the
    /// stream ended.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<RecordBatch>, DbError> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if self.done {
                return Err(ended(&self.name));
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(Message::Batch(b)) => return Ok(Some(b)),
                Ok(Message::End) | Err(RecvTimeoutError::Disconnected) => self.done = true,
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => return Ok(None),
            }
        }
    }

    /// The next batch, waiting until one arrives; an error once the stream ended.
    pub fn recv(&mut self) -> Result<RecordBatch, DbError> {
        loop {
            if self.done {
                return Err(ended(&self.name));
            }
            match self.rx.recv() {
                Some(Message::Batch(b)) => return Ok(b),
                Some(Message::End) | None => self.done = true,
                Some(_) => continue,
            }
        }
    }

    /// True once the stream ended and every batch was read.
    pub fn is_finished(&self) -> bool {
        self.done
    }
}

impl Iterator for ArrowSubscription {
    type Item = RecordBatch;

    /// Blocks for the next batch; `None` once the stream ended.
    fn next(&mut self) -> Option<RecordBatch> {
        self.recv().ok()
    }
}

/// A poll subscription delivering rows converted with [`FromRow`] (by column name).
///
/// A batch whose rows cannot be converted (for example a NULL into a field that is not an
/// `Option`) is an error naming the column and row, returned by `poll`, `recv`,
/// `recv_timeout` and `poll_each`; the iterator stops at it and keeps it for
/// [`Subscription::take_error`].
pub struct Subscription<T: FromRow> {
    pub(crate) inner: ArrowSubscription,
    pub(crate) buffered: VecDeque<T>,
    pub(crate) error: Option<DbError>,
    pub(crate) _marker: PhantomData<fn() -> T>,
}

impl<T: FromRow> Subscription<T> {
    fn convert(&self, batch: &RecordBatch) -> Result<Vec<T>, DbError> {
        T::from_batch(batch).map_err(|e| DbError::SchemaMismatch {
            object: self.inner.name.clone(),
            detail: e.to_string(),
        })
    }

    /// The rows of the next ready batch (non-blocking): `Ok(None)` when no batch is ready, an
    /// error when its rows cannot be converted.
    pub fn poll(&mut self) -> Result<Option<Vec<T>>, DbError> {
        if !self.buffered.is_empty() {
            return Ok(Some(self.buffered.drain(..).collect()));
        }
        match self.inner.poll() {
            Some(batch) => self.convert(&batch).map(Some),
            None => Ok(None),
        }
    }

    /// The rows of the next batch, waiting until one arrives.
    pub fn recv(&mut self) -> Result<Vec<T>, DbError> {
        if !self.buffered.is_empty() {
            return Ok(self.buffered.drain(..).collect());
        }
        let batch = self.inner.recv()?;
        self.convert(&batch)
    }

    /// The rows of the next batch, waiting up to `timeout` (`Ok(None)` on timeout).
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Vec<T>>, DbError> {
        if !self.buffered.is_empty() {
            return Ok(Some(self.buffered.drain(..).collect()));
        }
        match self.inner.recv_timeout(timeout)? {
            Some(batch) => self.convert(&batch).map(Some),
            None => Ok(None),
        }
    }

    /// Calls `f` on up to `max` ready rows without collecting them; `f` returns false to stop.
    /// Returns the number of rows handed to `f`, or the conversion error of the next batch
    /// (rows handed to `f` before it stay handed).
    pub fn poll_each(
        &mut self,
        max: usize,
        mut f: impl FnMut(T) -> bool,
    ) -> Result<usize, DbError> {
        let mut n = 0;
        while n < max {
            if self.buffered.is_empty() {
                match self.inner.poll() {
                    Some(batch) => {
                        let rows = self.convert(&batch)?;
                        self.buffered.extend(rows);
                    }
                    None => break,
                }
            }
            let Some(row) = self.buffered.pop_front() else {
                break;
            };
            n += 1;
            if !f(row) {
                break;
            }
        }
        Ok(n)
    }

    /// The conversion error that stopped the iterator, if any.
    pub fn take_error(&mut self) -> Option<DbError> {
        self.error.take()
    }

    /// Output schema.
    pub fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }
}

impl<T: FromRow> Iterator for Subscription<T> {
    type Item = T;

    /// Blocks for the next row; `None` once the stream ended, or at a batch whose rows cannot
    /// be converted (see [`Subscription::take_error`]).
    fn next(&mut self) -> Option<T> {
        loop {
            if let Some(row) = self.buffered.pop_front() {
                return Some(row);
            }
            let batch = self.inner.recv().ok()?;
            match self.convert(&batch) {
                Ok(rows) => self.buffered.extend(rows),
                Err(e) => {
                    self.error = Some(e);
                    return None;
                }
            }
        }
    }
}

/// Overflow policy of a push subscription's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SubscriptionBackpressure {
    /// Evict the oldest event; the receiver gets `Lagged(n)` before the next event.
    #[default]
    DropOldest,
    /// Discard the incoming event.
    DropNewest,
    /// The dispatcher waits for room. The query keeps running until the bounded queue
    /// between the stream and the dispatcher (`subscription_buffer` messages) is also full;
    /// then the stream is backpressured like any other consumer.
    Block,
    /// Deliver every n-th event (watermarks always); a full buffer then evicts the oldest
    /// as `DropOldest` does.
    Sample(u32),
}

/// Push subscription settings.
#[derive(Debug, Clone)]
pub struct SubscriptionConfig {
    /// Buffer capacity in events (default 1024).
    pub buffer_size: usize,
    /// Overflow policy (default DropOldest).
    pub backpressure: SubscriptionBackpressure,
    /// SQL predicate over the output columns, compiled at subscribe time.
    pub filter: Option<String>,
    /// Send the current contents first (materialized views only).
    pub send_snapshot: bool,
    /// The most batches of inserts (or of deletes) in a row merged into one event
    /// (default 64; 1 merges nothing).
    pub max_batch_size: usize,
    /// How long the dispatcher waits for more inserts (or deletes) to merge into an event
    /// (default 100 µs; zero merges only what is already queued).
    pub max_batch_delay: Duration,
}

impl Default for SubscriptionConfig {
    fn default() -> Self {
        SubscriptionConfig {
            buffer_size: 1024,
            backpressure: SubscriptionBackpressure::DropOldest,
            filter: None,
            send_snapshot: false,
            max_batch_size: 64,
            max_batch_delay: Duration::from_micros(100),
        }
    }
}

/// Metadata of a delivered event.
#[derive(Debug, Clone)]
pub struct EventData {
    /// The rows.
    pub batch: Arc<RecordBatch>,
    /// Processing time of delivery (epoch ms).
    pub timestamp: i64,
    /// Per-subscription sequence number.
    pub sequence: u64,
}

/// One event of a push subscription.
#[derive(Debug, Clone)]
pub enum ChangeEvent {
    /// Rows added.
    Insert(EventData),
    /// Rows removed.
    Delete(EventData),
    /// Rows replaced: `old` (before-images) and `new` (after-images), row i of each paired.
    Update {
        /// Before-images.
        old: EventData,
        /// After-images.
        new: EventData,
    },
    /// Current contents at subscribe time (materialized views).
    Snapshot(EventData),
    /// The stream's watermark advanced.
    Watermark(i64),
    /// `n` events were evicted because the subscriber fell behind.
    Lagged(u64),
}

struct PushBuffer {
    queue: Mutex<PushQueue>,
    readable: Condvar,
    writable: Condvar,
    notify: tokio::sync::Notify,
}

impl PushBuffer {
    /// Wakes readers (blocking and async).
    fn wake_readers(&self) {
        self.readable.notify_all();
        self.notify.notify_waiters();
        self.notify.notify_one();
    }
}

struct PushQueue {
    events: VecDeque<ChangeEvent>,
    capacity: usize,
    lagged: u64,
    closed: bool,
    /// Why delivery ended early (a filter that failed on a batch).
    error: Option<String>,
    /// Events the receiver asked for and did not receive yet; `None` until the first
    /// [`PushSubscription::request`] (every event is delivered as it comes).
    demand: Option<u64>,
}

impl PushQueue {
    /// Whether [`PushSubscription::take`] has something to hand out (an event, a lag
    /// report, or the end).
    fn ready(&self) -> bool {
        self.lagged > 0
            || (!self.events.is_empty() && self.demand != Some(0))
            || (self.closed && self.events.is_empty())
    }
}

/// Receiving side of a push subscription. Dropping it cancels the subscription.
pub struct PushSubscription {
    buffer: Arc<PushBuffer>,
    cancelled: Arc<AtomicBool>,
    name: String,
}

impl PushSubscription {
    fn take(&self) -> Option<Result<ChangeEvent, DbError>> {
        let mut q = self.buffer.queue.lock();
        if q.lagged > 0 {
            let n = std::mem::take(&mut q.lagged);
            return Some(Ok(ChangeEvent::Lagged(n)));
        }
        if q.demand != Some(0)
            && let Some(ev) = q.events.pop_front()
        {
            if let Some(demand) = q.demand.as_mut() {
                *demand -= 1;
            }
            self.buffer.writable.notify_one();
            return Some(Ok(ev));
        }
        if q.closed && q.events.is_empty() {
            return Some(Err(match &q.error {
                Some(e) => DbError::Pipeline(format!("subscription to '{}': {e}", self.name)),
                None => ended(&self.name),
            }));
        }
        None
    }

    /// The next event (async); an error once the stream ended and the buffer is empty.
    pub async fn recv(&mut self) -> Result<ChangeEvent, DbError> {
        loop {
            let notified = self.buffer.notify.notified();
            if let Some(r) = self.take() {
                return r;
            }
            notified.await;
        }
    }

    /// The next event, blocking the calling thread up to `timeout` (`Ok(None)` on timeout).
    pub fn recv_blocking(&mut self, timeout: Duration) -> Result<Option<ChangeEvent>, DbError> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(r) = self.take() {
                return r.map(Some);
            }
            let mut q = self.buffer.queue.lock();
            if !q.ready()
                && self
                    .buffer
                    .readable
                    .wait_until(&mut q, deadline)
                    .timed_out()
            {
                return Ok(None);
            }
        }
    }

    /// A ready event without waiting.
    pub fn try_recv(&mut self) -> Option<Result<ChangeEvent, DbError>> {
        self.take()
    }

    /// Demand mode: from the first call on, only events asked for are delivered (`n` more
    /// per call; `Lagged` reports do not count). The others wait in the buffer under its
    /// overflow policy: `Block` then holds the dispatcher (and, once the queue before it is
    /// full, the stream, its checkpoints included), `DropOldest` evicts and reports the lag.
    pub fn request(&self, n: u64) {
        request(&self.buffer, n);
    }

    /// Stops delivery.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        self.buffer.writable.notify_all();
    }

    /// Converts into a `futures::Stream` of events. It ends when the stream ends or the
    /// subscription fails (a filter error); [`PushSubscription::recv`] tells the two apart.
    pub fn into_stream(self) -> impl futures::Stream<Item = ChangeEvent> {
        futures::stream::unfold(self, |mut sub| async move {
            match sub.recv().await {
                Ok(ev) => Some((ev, sub)),
                Err(_) => None,
            }
        })
    }
}

fn request(buffer: &PushBuffer, n: u64) {
    let mut q = buffer.queue.lock();
    q.demand = Some(q.demand.unwrap_or(0).saturating_add(n));
    drop(q);
    buffer.wake_readers();
}

impl Drop for PushSubscription {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// Handle of a callback subscription: pause, resume, cancel. Dropping it cancels.
pub struct CallbackHandle {
    cancelled: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
    buffer: Arc<PushBuffer>,
    /// Events delivered to the callback.
    pub delivered: Arc<AtomicU64>,
}

impl CallbackHandle {
    /// Stops invoking the callback until [`CallbackHandle::resume`] (events buffer meanwhile,
    /// under the subscription's overflow policy).
    pub fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
    }

    /// Resumes delivery.
    pub fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
    }

    /// Demand mode, as [`PushSubscription::request`]: the callback is called for `n` more
    /// events.
    pub fn request(&self, n: u64) {
        request(&self.buffer, n);
    }

    /// Stops the subscription.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
    }

    /// Events delivered so far.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }
}

impl Drop for CallbackHandle {
    fn drop(&mut self) {
        self.cancel();
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Event data for `batch`; its sequence number is given at delivery ([`numbered`]).
fn data(batch: RecordBatch) -> EventData {
    EventData {
        batch: Arc::new(batch),
        timestamp: now_ms(),
        sequence: 0,
    }
}

/// Splits a batch into change events, in order: runs of inserts, deletes, snapshot rows
/// and updates. A `U-` without its `U+` (a filter downstream of the update kept only one
/// row) counts as a delete, a `U+` without its `U-` as an insert. Append-only batches are
/// one `Insert`.
fn events_of(batch: RecordBatch) -> Vec<ChangeEvent> {
    #[derive(Clone, Copy, PartialEq)]
    enum Kind {
        Insert,
        Delete,
        Snapshot,
        Update,
    }
    let Some(Ok(ops)) = change_ops(&batch) else {
        return vec![ChangeEvent::Insert(data(batch))];
    };
    // Rows of each event: for an update, the old rows (the new ones follow each of them).
    let mut runs: Vec<(Kind, Vec<u32>)> = Vec::new();
    let mut i = 0;
    while i < ops.len() {
        let paired =
            ops[i] == ChangeOp::UpdateBefore && ops.get(i + 1) == Some(&ChangeOp::UpdateAfter);
        let kind = match ops[i] {
            _ if paired => Kind::Update,
            ChangeOp::Insert | ChangeOp::UpdateAfter => Kind::Insert,
            ChangeOp::Delete | ChangeOp::UpdateBefore => Kind::Delete,
            ChangeOp::Snapshot => Kind::Snapshot,
        };
        match runs.last_mut() {
            Some((k, rows)) if *k == kind => rows.push(i as u32),
            _ => runs.push((kind, vec![i as u32])),
        }
        i += if paired { 2 } else { 1 };
    }
    let rows_at = |rows: &[u32]| -> RecordBatch {
        match rows {
            [first, ..] if rows.len() as u32 == rows[rows.len() - 1] - first + 1 => {
                batch.slice(*first as usize, rows.len())
            }
            _ => {
                let indices = arrow::array::UInt32Array::from(rows.to_vec());
                // In-bounds indices taking fewer rows than the batch holds cannot fail.
                arrow::compute::take_record_batch(&batch, &indices)
                    .expect("indices of rows of the batch")
            }
        }
    };
    // An unpaired `U+` (`U-`) delivered as an insert (delete) says so in its `_op` too.
    let labelled = |rows: &[u32], op: ChangeOp| -> RecordBatch {
        let batch = rows_at(rows);
        let relabel = rows.iter().any(|&r| ops[r as usize] != op);
        match batch.schema().index_of(laminar_core::OP_COLUMN) {
            Ok(index) if relabel => {
                let mut columns = batch.columns().to_vec();
                columns[index] = Arc::new(arrow::array::StringArray::from(vec![
                    op.as_str();
                    batch.num_rows()
                ]));
                RecordBatch::try_new(batch.schema(), columns).unwrap_or(batch)
            }
            _ => batch,
        }
    };
    runs.into_iter()
        .map(|(kind, rows)| match kind {
            Kind::Insert => ChangeEvent::Insert(data(labelled(&rows, ChangeOp::Insert))),
            Kind::Delete => ChangeEvent::Delete(data(labelled(&rows, ChangeOp::Delete))),
            Kind::Snapshot => ChangeEvent::Snapshot(data(rows_at(&rows))),
            Kind::Update => {
                let new: Vec<u32> = rows.iter().map(|r| r + 1).collect();
                ChangeEvent::Update {
                    old: data(rows_at(&rows)),
                    new: data(rows_at(&new)),
                }
            }
        })
        .collect()
}

/// The rows of `batch` that pass the subscription filter (updates split by it become a
/// delete or an insert: [`laminar_core::message::filter_changes`]).
fn filtered(batch: &RecordBatch, predicate: &Step) -> Result<RecordBatch, String> {
    let Step::Filter(predicate) = predicate else {
        return Ok(batch.clone());
    };
    let mask = predicate
        .evaluate(batch)
        .and_then(|v| v.into_array(batch.num_rows()))
        .map_err(|e| e.to_string())?;
    let Some(mask) = mask.as_any().downcast_ref::<arrow::array::BooleanArray>() else {
        return Err(format!("the filter gave {} values", mask.data_type()));
    };
    laminar_core::message::filter_changes(batch, mask).map_err(|e| e.to_string())
}

/// The batch without its `_op` column (snapshot rows are the view's rows).
fn without_op(batch: RecordBatch) -> RecordBatch {
    match batch.schema().index_of(laminar_core::OP_COLUMN) {
        Ok(index) => {
            let mut batch = batch;
            batch.remove_column(index);
            batch
        }
        Err(_) => batch,
    }
}

/// Starts the dispatcher of a push subscription.
pub(crate) fn start_push(
    io: &tokio::runtime::Handle,
    name: &str,
    rx: EdgeReceiver,
    config: &SubscriptionConfig,
    filter: Option<Step>,
) -> PushSubscription {
    let buffer = Arc::new(PushBuffer {
        queue: Mutex::new(PushQueue {
            events: VecDeque::new(),
            capacity: config.buffer_size.max(1),
            lagged: 0,
            closed: false,
            error: None,
            demand: None,
        }),
        readable: Condvar::new(),
        writable: Condvar::new(),
        notify: tokio::sync::Notify::new(),
    });
    let cancelled = Arc::new(AtomicBool::new(false));
    {
        let dispatcher = Dispatcher {
            name: name.to_string(),
            rx,
            buffer: buffer.clone(),
            cancelled: cancelled.clone(),
            policy: config.backpressure,
            filter,
            snapshot_pending: config.send_snapshot,
            max_batch_size: config.max_batch_size.max(1),
            max_batch_delay: config.max_batch_delay,
            ready: VecDeque::new(),
            ended: false,
            seen: 0,
            sequence: 0,
        };
        io.spawn_blocking(move || dispatcher.run());
    }
    PushSubscription {
        buffer,
        cancelled,
        name: name.to_string(),
    }
}

/// Moves a stream's output into a push subscription's buffer.
struct Dispatcher {
    name: String,
    rx: EdgeReceiver,
    buffer: Arc<PushBuffer>,
    cancelled: Arc<AtomicBool>,
    policy: SubscriptionBackpressure,
    filter: Option<Step>,
    /// With `send_snapshot` the first batch on the edge is the view's contents.
    snapshot_pending: bool,
    max_batch_size: usize,
    max_batch_delay: Duration,
    /// Events converted from the edge, not yet delivered.
    ready: VecDeque<ChangeEvent>,
    /// The edge ended (or delivery must end).
    ended: bool,
    /// Events seen (for `Sample`).
    seen: u64,
    sequence: u64,
}

impl Dispatcher {
    fn run(mut self) {
        while !self.cancelled.load(Ordering::SeqCst) {
            if self.ready.is_empty() {
                if self.ended {
                    break;
                }
                self.receive(Duration::from_millis(50));
                continue;
            }
            let event = self.next_event();
            self.deliver(event);
        }
        // Closed by `Drop`, also when this thread panics: the receiver never waits forever.
    }

    /// Waits up to `timeout` for the next message on the edge and converts it.
    fn receive(&mut self, timeout: Duration) {
        match self.rx.recv_timeout(timeout) {
            Ok(msg) => self.convert(msg),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => self.ended = true,
        }
    }

    /// Turns a message of the edge into events ready for delivery.
    fn convert(&mut self, msg: Message) {
        match msg {
            Message::Batch(batch) => {
                let is_snapshot = std::mem::take(&mut self.snapshot_pending);
                let batch = match self.filter.as_ref().map(|f| filtered(&batch, f)) {
                    None => batch,
                    Some(Ok(b)) => b,
                    Some(Err(e)) => {
                        tracing::error!(subscription = %self.name, error = %e, "subscription filter failed");
                        self.buffer.queue.lock().error = Some(format!(
                            "its filter failed on a batch ({e}); it ended there"
                        ));
                        self.ended = true;
                        return;
                    }
                };
                if is_snapshot {
                    self.ready
                        .push_back(ChangeEvent::Snapshot(data(without_op(batch))));
                } else if batch.num_rows() > 0 {
                    self.ready.extend(events_of(batch));
                }
            }
            Message::Watermark(w) => self.ready.push_back(ChangeEvent::Watermark(w)),
            Message::End => self.ended = true,
            Message::Barrier(_) | Message::Idle | Message::Partitioned(_) => {}
        }
    }

    /// The next event, with the inserts (or deletes) that follow it within
    /// `max_batch_delay` merged in, up to `max_batch_size` batches.
    fn next_event(&mut self) -> ChangeEvent {
        let Some(first) = self.ready.pop_front() else {
            unreachable!("next_event is called with events ready");
        };
        let Some((inserts, batch)) = mergeable(&first) else {
            return first;
        };
        let mut parts = vec![batch];
        let now = std::time::Instant::now();
        // A delay too long to add to a time waits a day at a time.
        let deadline = now
            .checked_add(self.max_batch_delay)
            .unwrap_or(now + Duration::from_secs(86_400));
        while parts.len() < self.max_batch_size {
            if self.ready.is_empty() {
                if self.ended {
                    break;
                }
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                match self.rx.try_recv() {
                    Ok(msg) => self.convert(msg),
                    Err(TryRecvError::Disconnected) => self.ended = true,
                    Err(TryRecvError::Empty) if left.is_zero() => break,
                    Err(TryRecvError::Empty) => self.receive(left),
                }
                // Nothing yet: the next turn waits for what is left of the delay.
                continue;
            }
            match self.ready.front().and_then(mergeable) {
                Some((same, batch)) if same == inserts => {
                    self.ready.pop_front();
                    parts.push(batch);
                }
                _ => break,
            }
        }
        if parts.len() == 1 {
            return first;
        }
        let event = |batch: RecordBatch| {
            if inserts {
                ChangeEvent::Insert(data(batch))
            } else {
                ChangeEvent::Delete(data(batch))
            }
        };
        let schema = parts[0].schema();
        match arrow::compute::concat_batches(&schema, parts.iter().map(|b| b.as_ref())) {
            Ok(merged) => event(merged),
            Err(e) => {
                // Not mergeable (batches that differ in nullability, say): delivered one by one.
                tracing::debug!(subscription = %self.name, error = %e, "events not merged");
                for part in parts[1..].iter().rev() {
                    self.ready.push_front(event(part.as_ref().clone()));
                }
                first
            }
        }
    }

    /// Puts `event` into the buffer under the overflow policy, numbered.
    fn deliver(&mut self, event: ChangeEvent) {
        self.seen += 1;
        if let SubscriptionBackpressure::Sample(n) = self.policy
            && n > 1
            && !(self.seen - 1).is_multiple_of(u64::from(n))
            && !matches!(event, ChangeEvent::Watermark(_))
        {
            return;
        }
        let mut q = self.buffer.queue.lock();
        if q.events.len() >= q.capacity {
            match self.policy {
                SubscriptionBackpressure::DropOldest | SubscriptionBackpressure::Sample(_) => {
                    // The oldest data event goes; watermarks stay (they are small and say
                    // how far the stream is complete).
                    let oldest = q
                        .events
                        .iter()
                        .position(|e| !matches!(e, ChangeEvent::Watermark(_)))
                        .unwrap_or(0);
                    q.events.remove(oldest);
                    q.lagged += 1;
                }
                SubscriptionBackpressure::DropNewest => return,
                SubscriptionBackpressure::Block => {
                    while q.events.len() >= q.capacity && !self.cancelled.load(Ordering::SeqCst) {
                        self.buffer
                            .writable
                            .wait_for(&mut q, Duration::from_millis(50));
                    }
                }
            }
        }
        // Numbered once it is sure to be delivered: the sequence has no gaps.
        q.events.push_back(numbered(event, &mut self.sequence));
        drop(q);
        self.buffer.wake_readers();
    }
}

/// The rows of an event that merges with its neighbours of the same kind: inserts (`true`)
/// or deletes (`false`).
fn mergeable(event: &ChangeEvent) -> Option<(bool, Arc<RecordBatch>)> {
    match event {
        ChangeEvent::Insert(d) => Some((true, d.batch.clone())),
        ChangeEvent::Delete(d) => Some((false, d.batch.clone())),
        _ => None,
    }
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        let mut q = self.buffer.queue.lock();
        if std::thread::panicking() && q.error.is_none() {
            q.error = Some("its dispatcher failed; it ended there".into());
        }
        q.closed = true;
        drop(q);
        self.buffer.wake_readers();
    }
}

/// `event` with the next sequence numbers of the subscription.
fn numbered(mut event: ChangeEvent, sequence: &mut u64) -> ChangeEvent {
    let mut number = |d: &mut EventData| {
        *sequence += 1;
        d.sequence = *sequence;
    };
    match &mut event {
        ChangeEvent::Insert(d) | ChangeEvent::Delete(d) | ChangeEvent::Snapshot(d) => number(d),
        ChangeEvent::Update { old, new } => {
            number(old);
            number(new);
        }
        ChangeEvent::Watermark(_) | ChangeEvent::Lagged(_) => {}
    }
    event
}

/// Starts a callback subscription on top of a push subscription.
pub(crate) fn start_callback(
    io: &tokio::runtime::Handle,
    mut sub: PushSubscription,
    mut f: impl FnMut(ChangeEvent) + Send + 'static,
) -> CallbackHandle {
    let cancelled = sub.cancelled.clone();
    let buffer = sub.buffer.clone();
    let paused = Arc::new(AtomicBool::new(false));
    let delivered = Arc::new(AtomicU64::new(0));
    {
        let cancelled = cancelled.clone();
        let paused = paused.clone();
        let delivered = delivered.clone();
        io.spawn_blocking(move || {
            while !cancelled.load(Ordering::SeqCst) {
                if paused.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                match sub.recv_blocking(Duration::from_millis(50)) {
                    Ok(Some(ev)) => {
                        delivered.fetch_add(1, Ordering::Relaxed);
                        f(ev);
                    }
                    Ok(None) => {}
                    Err(_) => break,
                }
            }
        });
    }
    CallbackHandle {
        cancelled,
        paused,
        buffer,
        delivered,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    fn changes(ops: &[&str]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new(laminar_core::OP_COLUMN, DataType::Utf8, false),
        ]));
        let keys: Vec<i64> = (0..ops.len() as i64).collect();
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(keys)),
                Arc::new(StringArray::from(ops.to_vec())),
            ],
        )
        .unwrap()
    }

    fn keys(d: &EventData) -> Vec<i64> {
        let k = d
            .batch
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        (0..k.len()).map(|i| k.value(i)).collect()
    }

    #[test]
    fn changes_become_events_with_each_update_paired_to_its_own_rows() {
        let batch = changes(&["I", "U-", "U+", "U-", "U+", "U-", "D", "U+", "r"]);
        let described: Vec<String> = events_of(batch)
            .iter()
            .map(|ev| match ev {
                ChangeEvent::Insert(d) => format!("I{:?}", keys(d)),
                ChangeEvent::Delete(d) => format!("D{:?}", keys(d)),
                ChangeEvent::Snapshot(d) => format!("S{:?}", keys(d)),
                ChangeEvent::Update { old, new } => format!("U{:?}->{:?}", keys(old), keys(new)),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            described,
            ["I[0]", "U[1, 3]->[2, 4]", "D[5, 6]", "I[7]", "S[8]"]
        );
        // The unpaired U- (row 5) and U+ (row 7) are labelled as the delete and insert they
        // are delivered as.
        let events = events_of(changes(&["U-", "D", "U+"]));
        let ops_of = |d: &EventData| {
            let column = d
                .batch
                .column(1)
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap();
            (0..column.len())
                .map(|i| column.value(i).to_string())
                .collect::<Vec<_>>()
        };
        assert!(matches!(&events[0], ChangeEvent::Delete(d) if ops_of(d) == ["D", "D"]));
        assert!(matches!(&events[1], ChangeEvent::Insert(d) if ops_of(d) == ["I"]));
    }

    #[test]
    fn numbering_counts_every_event_data() {
        let mut sequence = 0;
        let events = events_of(changes(&["I", "U-", "U+"]));
        let numbered: Vec<ChangeEvent> = events
            .into_iter()
            .map(|ev| numbered(ev, &mut sequence))
            .collect();
        assert!(matches!(&numbered[0], ChangeEvent::Insert(d) if d.sequence == 1));
        assert!(
            matches!(&numbered[1], ChangeEvent::Update { old, new } if old.sequence == 2 && new.sequence == 3)
        );
    }
}
