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
    /// `drop_oldest`); returns the number of rows evicted. Only batches are dropped: a
    /// watermark, barrier or read mark met while evicting goes back into the queue after
    /// `msg` (so a read mark is never lost, only moved behind rows that were queued after it).
    pub fn send_evicting(&self, msg: Message) -> Result<u64, CoreError> {
        let mut evicted_rows = 0u64;
        self.shared.in_flight.fetch_add(1, Ordering::SeqCst);
        let mut to_send = VecDeque::from([msg]);
        // Control messages moved in a row: a queue holding nothing else is waited on.
        let mut moved = 0usize;
        while let Some(next) = to_send.pop_front() {
            let next = if moved > self.capacity {
                moved = 0;
                match self.tx.send(next) {
                    Ok(()) => {
                        self.shared.wake_worker(self.worker);
                        continue;
                    }
                    Err(e) => e.into_inner(),
                }
            } else {
                next
            };
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
