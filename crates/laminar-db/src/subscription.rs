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
    /// Discard the incoming event (counted).
    DropNewest,
    /// The dispatcher waits for room. The query keeps running until the bounded queue
    /// between the stream and the dispatcher (`subscription_buffer` messages) is also full;
    /// then the stream is backpressured like any other consumer.
    Block,
    /// Deliver every n-th event.
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
}

impl Default for SubscriptionConfig {
    fn default() -> Self {
        SubscriptionConfig {
            buffer_size: 1024,
            backpressure: SubscriptionBackpressure::DropOldest,
            filter: None,
            send_snapshot: false,
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

struct PushQueue {
    events: VecDeque<ChangeEvent>,
    capacity: usize,
    lagged: u64,
    closed: bool,
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
        if let Some(ev) = q.events.pop_front() {
            self.buffer.writable.notify_one();
            return Some(Ok(ev));
        }
        if q.closed {
            return Some(Err(ended(&self.name)));
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
            if q.events.is_empty()
                && q.lagged == 0
                && !q.closed
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

    /// Stops delivery.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        self.buffer.writable.notify_all();
    }

    /// Converts into a `futures::Stream` of events (ends when the stream ends).
    pub fn into_stream(self) -> impl futures::Stream<Item = ChangeEvent> {
        futures::stream::unfold(self, |mut sub| async move {
            match sub.recv().await {
                Ok(ev) => Some((ev, sub)),
                Err(_) => None,
            }
        })
    }
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

/// Splits a batch into change events (append-only batches are one `Insert`).
fn events_of(batch: RecordBatch, sequence: &mut u64) -> Vec<ChangeEvent> {
    let mut data = |b: RecordBatch| {
        *sequence += 1;
        EventData {
            batch: Arc::new(b),
            timestamp: now_ms(),
            sequence: *sequence,
        }
    };
    let Some(Ok(ops)) = change_ops(&batch) else {
        return vec![ChangeEvent::Insert(data(batch))];
    };
    // Runs of equal operations; U-/U+ pairs become Update events.
    let mut out = Vec::new();
    let mut i = 0;
    while i < ops.len() {
        let op = ops[i];
        let mut j = i + 1;
        while j < ops.len() && ops[j] == op {
            j += 1;
        }
        let run = batch.slice(i, j - i);
        match op {
            ChangeOp::Insert => out.push(ChangeEvent::Insert(data(run))),
            ChangeOp::Delete => out.push(ChangeEvent::Delete(data(run))),
            ChangeOp::Snapshot => out.push(ChangeEvent::Snapshot(data(run))),
            ChangeOp::UpdateBefore => {
                let k = j;
                let mut l = k;
                while l < ops.len() && ops[l] == ChangeOp::UpdateAfter && l - k < j - i {
                    l += 1;
                }
                let new = batch.slice(k, l - k);
                out.push(ChangeEvent::Update {
                    old: data(run),
                    new: data(new),
                });
                j = l;
            }
            ChangeOp::UpdateAfter => out.push(ChangeEvent::Insert(data(run))),
        }
        i = j;
    }
    out
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
        }),
        readable: Condvar::new(),
        writable: Condvar::new(),
        notify: tokio::sync::Notify::new(),
    });
    let cancelled = Arc::new(AtomicBool::new(false));
    let policy = config.backpressure;
    let snapshot = config.send_snapshot;
    {
        let buffer = buffer.clone();
        let cancelled = cancelled.clone();
        let name = name.to_string();
        io.spawn_blocking(move || {
            dispatch(&name, rx, &buffer, &cancelled, policy, filter, snapshot)
        });
    }
    PushSubscription {
        buffer,
        cancelled,
        name: name.to_string(),
    }
}

fn dispatch(
    name: &str,
    rx: EdgeReceiver,
    buffer: &PushBuffer,
    cancelled: &AtomicBool,
    policy: SubscriptionBackpressure,
    filter: Option<Step>,
    snapshot: bool,
) {
    let mut sequence = 0u64;
    let mut seen = 0u64;
    // With `send_snapshot` the first batch on the edge is the view's contents.
    let mut snapshot_pending = snapshot;
    while !cancelled.load(Ordering::SeqCst) {
        let msg = match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(m) => m,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let events = match msg {
            Message::Batch(batch) => {
                let is_snapshot = std::mem::take(&mut snapshot_pending);
                let batch = match &filter {
                    Some(Step::Filter(predicate)) => {
                        match predicate
                            .evaluate(&batch)
                            .and_then(|v| v.into_array(batch.num_rows()))
                            .map_err(|e| e.to_string())
                            .and_then(|mask| {
                                let mask = arrow::array::AsArray::as_boolean(&*mask).clone();
                                arrow::compute::filter_record_batch(&batch, &mask)
                                    .map_err(|e| e.to_string())
                            }) {
                            Ok(b) => b,
                            Err(e) => {
                                tracing::warn!(subscription = name, error = %e, "subscription filter failed");
                                continue;
                            }
                        }
                    }
                    _ => batch,
                };
                if is_snapshot {
                    sequence += 1;
                    vec![ChangeEvent::Snapshot(EventData {
                        batch: Arc::new(without_op(batch)),
                        timestamp: now_ms(),
                        sequence,
                    })]
                } else if batch.num_rows() == 0 {
                    continue;
                } else {
                    events_of(batch, &mut sequence)
                }
            }
            Message::Watermark(w) => vec![ChangeEvent::Watermark(w)],
            Message::End => break,
            Message::Barrier(_) | Message::Idle | Message::Partitioned(_) => continue,
        };
        for ev in events {
            seen += 1;
            if let SubscriptionBackpressure::Sample(n) = policy
                && n > 1
                && !(seen - 1).is_multiple_of(u64::from(n))
                && !matches!(ev, ChangeEvent::Watermark(_))
            {
                continue;
            }
            let mut q = buffer.queue.lock();
            if q.events.len() >= q.capacity {
                match policy {
                    SubscriptionBackpressure::DropOldest | SubscriptionBackpressure::Sample(_) => {
                        q.events.pop_front();
                        q.lagged += 1;
                    }
                    SubscriptionBackpressure::DropNewest => continue,
                    SubscriptionBackpressure::Block => {
                        while q.events.len() >= q.capacity && !cancelled.load(Ordering::SeqCst) {
                            buffer.writable.wait_for(&mut q, Duration::from_millis(50));
                        }
                    }
                }
            }
            q.events.push_back(ev);
            drop(q);
            buffer.readable.notify_all();
            buffer.notify.notify_waiters();
            buffer.notify.notify_one();
        }
    }
    buffer.queue.lock().closed = true;
    buffer.readable.notify_all();
    buffer.notify.notify_waiters();
    buffer.notify.notify_one();
}

/// Starts a callback subscription on top of a push subscription.
pub(crate) fn start_callback(
    io: &tokio::runtime::Handle,
    mut sub: PushSubscription,
    mut f: impl FnMut(ChangeEvent) + Send + 'static,
) -> CallbackHandle {
    let cancelled = sub.cancelled.clone();
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
        delivered,
    }
}
