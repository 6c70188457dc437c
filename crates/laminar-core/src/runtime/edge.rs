//! Bounded queues between nodes, the ingestion queue of a source, and external consumers.
//!
//! In-flight accounting: every message handed to a counted queue (or parked in a node's
//! outbox for it) increments the runtime's in-flight counter; the consumer decrements it once
//! the message is fully handled (for a node: after its outputs were handed on), and whoever
//! discards a message (eviction, closed queue, retired node) decrements it too. The counter
//! reaching zero means every pushed row has reached its subscribers and sinks.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crossbeam_channel::{
    Receiver, RecvTimeoutError, SendTimeoutError, Sender, TryRecvError, TrySendError,
};

use super::RuntimeShared;
use super::node::Node;
use crate::error::CoreError;
use crate::message::Message;

/// Producer side of a source's ingestion queue (shared by every producer of the source).
#[derive(Clone)]
pub struct SourceInput {
    tx: Sender<Message>,
    /// A receiver clone used only to evict the oldest message under `drop_oldest`.
    evict: Receiver<Message>,
    shared: Arc<RuntimeShared>,
    worker: usize,
    capacity: usize,
}

pub(crate) fn source_queue(
    shared: &Arc<RuntimeShared>,
    node: &Node,
    capacity: usize,
) -> (SourceInput, Receiver<Message>) {
    let (tx, rx) = crossbeam_channel::bounded(capacity);
    (
        SourceInput {
            tx,
            evict: rx.clone(),
            shared: shared.clone(),
            worker: node.worker,
            capacity,
        },
        rx,
    )
}

impl SourceInput {
    /// Enqueues, waiting while the queue is full (policy `block`). Fails only when the
    /// runtime shuts down or the source was dropped.
    pub fn send_blocking(&self, mut msg: Message) -> Result<(), CoreError> {
        self.shared.in_flight.fetch_add(1, Ordering::SeqCst);
        loop {
            match self.tx.send_timeout(msg, Duration::from_millis(50)) {
                Ok(()) => {
                    self.shared.wake_worker(self.worker);
                    return Ok(());
                }
                Err(SendTimeoutError::Timeout(m)) => {
                    if self.shared.shutdown.load(Ordering::SeqCst) {
                        self.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
                        return Err(CoreError::Shutdown);
                    }
                    self.shared.wake_worker(self.worker);
                    msg = m;
                }
                Err(SendTimeoutError::Disconnected(_)) => {
                    self.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
                    return Err(CoreError::Shutdown);
                }
            }
        }
    }

    /// Enqueues without waiting (policy `reject`); a full queue hands the message back.
    pub fn try_send(&self, msg: Message) -> Result<(), TrySendError<Message>> {
        self.shared.in_flight.fetch_add(1, Ordering::SeqCst);
        match self.tx.try_send(msg) {
            Ok(()) => {
                self.shared.wake_worker(self.worker);
                Ok(())
            }
            Err(e) => {
                self.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
                Err(e)
            }
        }
    }

    /// Enqueues, evicting the oldest queued batches while the queue is full (policy
    /// `drop_oldest`); returns the number of rows evicted. A watermark, idle marker or read
    /// mark met while evicting goes back into the queue after `msg` (so a read mark is never
    /// lost, only moved behind rows that were queued after it). A checkpoint barrier met
    /// while evicting is dropped, as before: moved behind later rows it would put them into
    /// the checkpoint after the write-ahead-log position recorded for it (counted twice on
    /// recovery); dropped, the checkpoint fails on its timeout instead.
    pub fn send_evicting(&self, msg: Message) -> Result<u64, CoreError> {
        let mut evicted_rows = 0u64;
        self.shared.in_flight.fetch_add(1, Ordering::SeqCst);
        let mut to_send = VecDeque::from([msg]);
        // Control messages moved in a row: a queue holding nothing else is waited on.
        let mut moved = 0usize;
        while let Some(next) = to_send.pop_front() {
            if moved > self.capacity {
                // Only control messages queued: wait for room (the one in flight already
                // counts in `in_flight`, which `send_blocking` counts again).
                moved = 0;
                self.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
                if let Err(e) = self.send_blocking(next) {
                    self.shared
                        .in_flight
                        .fetch_sub(to_send.len() as i64, Ordering::SeqCst);
                    return Err(e);
                }
                continue;
            }
            match self.tx.try_send(next) {
                Ok(()) => self.shared.wake_worker(self.worker),
                Err(TrySendError::Full(m)) => {
                    to_send.push_front(m);
                    match self.evict.try_recv() {
                        Ok(Message::Batch(old)) => {
                            evicted_rows += old.num_rows() as u64;
                            self.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
                            moved = 0;
                        }
                        Ok(Message::Barrier(epoch)) if !crate::message::is_read_mark(epoch) => {
                            self.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
                            moved = 0;
                        }
                        Ok(control) => {
                            to_send.push_back(control);
                            moved += 1;
                        }
                        Err(_) => {}
                    }
                }
                Err(TrySendError::Disconnected(m)) => {
                    to_send.push_front(m);
                    self.shared
                        .in_flight
                        .fetch_sub(to_send.len() as i64, Ordering::SeqCst);
                    return Err(CoreError::Shutdown);
                }
            }
        }
        Ok(evicted_rows)
    }

    /// Messages waiting in the queue.
    pub fn pending(&self) -> usize {
        self.tx.len()
    }

    /// Queue capacity in messages.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// An outgoing edge of a node, with its outbox for when the queue is full.
pub(crate) struct OutEdge {
    pub(crate) tx: Sender<Message>,
    pub(crate) target_worker: Option<usize>,
    pub(crate) counted: bool,
    pub(crate) pending: VecDeque<Message>,
    pub(crate) closed: bool,
}

impl OutEdge {
    pub(crate) fn new(tx: Sender<Message>, target_worker: Option<usize>, counted: bool) -> Self {
        OutEdge {
            tx,
            target_worker,
            counted,
            pending: VecDeque::new(),
            closed: false,
        }
    }

    /// Hands a message to this edge: sends it or parks it in the outbox.
    pub(crate) fn offer(&mut self, shared: &RuntimeShared, msg: Message) {
        if self.closed {
            return;
        }
        if self.counted {
            shared.in_flight.fetch_add(1, Ordering::SeqCst);
        }
        if !self.pending.is_empty() {
            self.pending.push_back(msg);
            return;
        }
        match self.tx.try_send(msg) {
            Ok(()) => self.wake(shared),
            Err(TrySendError::Full(m)) => self.pending.push_back(m),
            Err(TrySendError::Disconnected(_)) => self.close(shared, 1),
        }
    }

    /// Retries the outbox; returns true when it is empty.
    pub(crate) fn flush(&mut self, shared: &RuntimeShared) -> bool {
        let mut sent = false;
        while let Some(msg) = self.pending.pop_front() {
            match self.tx.try_send(msg) {
                Ok(()) => sent = true,
                Err(TrySendError::Full(m)) => {
                    self.pending.push_front(m);
                    break;
                }
                Err(TrySendError::Disconnected(_)) => {
                    let n = 1 + self.pending.len();
                    self.pending.clear();
                    self.close(shared, n);
                }
            }
        }
        if sent {
            self.wake(shared);
        }
        self.pending.is_empty()
    }

    /// Drops everything queued in the outbox (node retired).
    pub(crate) fn discard(&mut self, shared: &RuntimeShared) {
        let n = self.pending.len();
        self.pending.clear();
        self.close(shared, n);
    }

    fn close(&mut self, shared: &RuntimeShared, discarded: usize) {
        self.closed = true;
        if self.counted && discarded > 0 {
            shared
                .in_flight
                .fetch_sub(discarded as i64, Ordering::SeqCst);
        }
    }

    fn wake(&self, shared: &RuntimeShared) {
        if let Some(w) = self.target_worker {
            shared.wake_worker(w);
        }
    }
}

/// The consumer side of a node's output for code outside the worker pool (subscriptions and
/// sink runners). Messages arrive in order; dropping the receiver detaches it.
pub struct EdgeReceiver {
    rx: Receiver<Message>,
    shared: Arc<RuntimeShared>,
    counted: bool,
}

impl EdgeReceiver {
    pub(crate) fn new(rx: Receiver<Message>, shared: Arc<RuntimeShared>, counted: bool) -> Self {
        EdgeReceiver {
            rx,
            shared,
            counted,
        }
    }

    /// Next message without waiting.
    pub fn try_recv(&self) -> Result<Message, TryRecvError> {
        self.rx.try_recv()
    }

    /// Next message, waiting up to `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Message, RecvTimeoutError> {
        self.rx.recv_timeout(timeout)
    }

    /// Next message, waiting until one arrives or the producer is gone.
    pub fn recv(&self) -> Option<Message> {
        self.rx.recv().ok()
    }

    /// Messages waiting.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// True when nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// Queue capacity.
    pub fn capacity(&self) -> usize {
        self.rx.capacity().unwrap_or(usize::MAX)
    }

    /// Marks one received message as fully handled (counted receivers only; a no-op
    /// otherwise). Sink runners call it after writing.
    pub fn done(&self) {
        if self.counted {
            self.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// The underlying channel, for `select!`-style waiting.
    pub fn channel(&self) -> &Receiver<Message> {
        &self.rx
    }
}

impl Drop for EdgeReceiver {
    fn drop(&mut self) {
        if self.counted {
            let left = self.rx.len() as i64;
            if left > 0 {
                self.shared.in_flight.fetch_sub(left, Ordering::SeqCst);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::READ_MARK;
    use crate::runtime::{Runtime, RuntimeConfig};
    use arrow::array::{ArrayRef, Int64Array};
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::record_batch::RecordBatch;

    fn batch(value: i64) -> Message {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        Message::Batch(
            RecordBatch::try_new(
                schema,
                vec![Arc::new(Int64Array::from(vec![value])) as ArrayRef],
            )
            .unwrap(),
        )
    }

    fn describe(m: &Message) -> String {
        match m {
            Message::Batch(b) => format!(
                "batch {}",
                b.column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .value(0)
            ),
            Message::Watermark(w) => format!("watermark {w}"),
            Message::Barrier(id) if crate::message::is_read_mark(*id) => {
                format!("mark {}", id & !READ_MARK)
            }
            Message::Barrier(id) => format!("barrier {id}"),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn eviction_drops_batches_and_checkpoint_barriers_but_keeps_marks_and_watermarks() {
        let rt = Runtime::start(RuntimeConfig {
            workers: 1,
            ..Default::default()
        })
        .unwrap();
        // A queue of three nobody reads.
        let (tx, rx) = crossbeam_channel::bounded(3);
        let input = SourceInput {
            tx,
            evict: rx.clone(),
            shared: rt.shared.clone(),
            worker: 0,
            capacity: 3,
        };
        for m in [
            Message::Watermark(5),
            Message::Barrier(READ_MARK | 1),
            batch(1),
        ] {
            assert_eq!(input.send_evicting(m).unwrap(), 0);
        }
        // Full: the watermark and the mark move behind the new batch; batch 1 is dropped.
        assert_eq!(input.send_evicting(batch(2)).unwrap(), 1);
        assert_eq!(input.send_evicting(Message::Barrier(7)).unwrap(), 1);
        // Batch 4 goes in ahead of the watermark and the mark, which move behind it; the
        // checkpoint barrier that reaches the head meanwhile is dropped, not moved.
        assert_eq!(input.send_evicting(batch(4)).unwrap(), 0);
        let left: Vec<String> = rx.try_iter().map(|m| describe(&m)).collect();
        assert_eq!(left, vec!["batch 4", "watermark 5", "mark 1"]);
        rt.shutdown();
    }
}
