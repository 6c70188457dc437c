//! The runtime: executes the operator graph on a fixed number of worker threads.
//!
//! - Every node (source, stream, sink feeder) runs one [`Operator`](crate::operator::Operator)
//!   and belongs to one worker thread, which owns its state (no locks are contended on the hot
//!   path).
//! - Edges are bounded queues ([`crossbeam_channel`]). A node whose downstream queue is full
//!   keeps the output in a per-edge outbox and stops reading its input until the outbox
//!   drains, so a slow consumer stalls its producers all the way back to the sources'
//!   ingestion queues: backpressure, never silent loss and never unbounded buffering.
//! - Workers park when idle and are unparked by whoever enqueues to one of their nodes, so a
//!   pushed row reaches subscribers in microseconds without a polling tick.
//! - The graph can change while running: nodes, edges and subscriber endpoints are added and
//!   removed by the control plane (DDL) under short, per-node locks.

mod edge;
mod node;
mod worker;

pub use edge::{EdgeReceiver, SourceInput};
pub use node::{CheckpointObserver, Node, NodeId, StateSnapshot};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::error::{CoreError, Result};
use crate::metrics::NodeMetrics;
use crate::operator::Operator;
use worker::WorkerShared;

/// Runtime settings.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Number of worker threads (at least 1).
    pub workers: usize,
    /// Capacity (messages) of queues between operator nodes.
    pub edge_capacity: usize,
    /// Maximum messages a node handles per scheduler visit before yielding to other nodes.
    pub node_budget: usize,
    /// Period of processing-time ticks (idle detection and timers).
    pub tick_interval: Duration,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            workers: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            edge_capacity: 1024,
            node_budget: 64,
            tick_interval: Duration::from_millis(10),
        }
    }
}

/// A failure recorded by a node.
#[derive(Debug, Clone)]
pub struct NodeFailure {
    /// Node name.
    pub node: String,
    /// The error text.
    pub message: String,
}

pub(crate) struct RuntimeShared {
    pub(crate) config: RuntimeConfig,
    pub(crate) workers: Vec<Arc<WorkerShared>>,
    pub(crate) shutdown: AtomicBool,
    /// Messages enqueued to nodes (or node-like consumers) and not yet fully handled.
    pub(crate) in_flight: AtomicI64,
    pub(crate) failures: Mutex<Vec<NodeFailure>>,
    next_worker: AtomicUsize,
    next_node_id: AtomicU64,
}

/// Handle to a running runtime; cloning shares it.
#[derive(Clone)]
pub struct Runtime {
    shared: Arc<RuntimeShared>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Runtime {
    /// Starts the worker threads.
    pub fn start(config: RuntimeConfig) -> Result<Runtime> {
        let workers = config.workers.max(1);
        let shared = Arc::new(RuntimeShared {
            workers: (0..workers)
                .map(|_| Arc::new(WorkerShared::default()))
                .collect(),
            config,
            shutdown: AtomicBool::new(false),
            in_flight: AtomicI64::new(0),
            failures: Mutex::new(Vec::new()),
            next_worker: AtomicUsize::new(0),
            next_node_id: AtomicU64::new(1),
        });
        let mut threads = Vec::with_capacity(workers);
        for index in 0..workers {
            let shared = shared.clone();
            let handle = std::thread::Builder::new()
                .name(format!("laminar-worker-{index}"))
                .spawn(move || worker::run(shared, index))
                .map_err(|e| CoreError::Internal(format!("cannot spawn worker thread: {e}")))?;
            threads.push(handle);
        }
        // Wait until every worker registered its thread handle, so wakeups are never lost.
        for w in &shared.workers {
            while w.thread.get().is_none() {
                std::thread::yield_now();
            }
        }
        Ok(Runtime {
            shared,
            threads: Arc::new(Mutex::new(threads)),
        })
    }

    /// Number of worker threads.
    pub fn workers(&self) -> usize {
        self.shared.workers.len()
    }

    /// Adds a source node whose single input is an ingestion queue of `capacity` messages;
    /// returns the node and the producer side of the queue.
    pub fn add_source(
        &self,
        name: &str,
        operator: Box<dyn Operator>,
        metrics: Arc<NodeMetrics>,
        capacity: usize,
    ) -> (Arc<Node>, SourceInput) {
        let node = self.new_node(name, operator, metrics);
        let (input, receiver) = edge::source_queue(&self.shared, &node, capacity.max(1));
        node.add_input(receiver, None);
        self.schedule(&node);
        (node, input)
    }

    /// Adds an operator node reading from `upstreams` (input `i` = `upstreams[i]`).
    pub fn add_node(
        &self,
        name: &str,
        operator: Box<dyn Operator>,
        metrics: Arc<NodeMetrics>,
        upstreams: &[Arc<Node>],
    ) -> Arc<Node> {
        let node = self.new_node(name, operator, metrics);
        for upstream in upstreams {
            let receiver =
                upstream.connect(&self.shared, Some(&node), self.shared.config.edge_capacity);
            node.add_input(receiver, upstream.output_watermark());
        }
        self.schedule(&node);
        node
    }

    /// Connects more upstreams to an existing node (its inputs `n..` in order). Used to wire a
    /// node's inputs only after its downstream nodes exist, so nothing it emits is lost.
    pub fn connect_inputs(&self, node: &Arc<Node>, upstreams: &[Arc<Node>]) {
        let inputs = upstreams
            .iter()
            .map(|upstream| {
                let receiver =
                    upstream.connect(&self.shared, Some(node), self.shared.config.edge_capacity);
                (receiver, upstream.output_watermark())
            })
            .collect();
        node.add_inputs(inputs);
        self.wake_node(node);
    }

    /// Attaches an external consumer (subscription, sink runner) to a node's output.
    ///
    /// `counted` consumers take part in [`Runtime::wait_idle`]: they must call
    /// [`EdgeReceiver::done`] after handling each message.
    pub fn attach(&self, node: &Arc<Node>, capacity: usize, counted: bool) -> EdgeReceiver {
        match node.connect_external(&self.shared, capacity.max(1), counted, false) {
            Ok(receiver) => {
                self.wake_node(node);
                receiver
            }
            Err(_) => unreachable!("an unseeded attach does not fail"),
        }
    }

    /// [`Runtime::attach`] whose consumer first receives the node's seed (see
    /// [`node::Seeder`]), or only its watermark when the node has no seeder.
    pub fn attach_seeded(
        &self,
        node: &Arc<Node>,
        capacity: usize,
        counted: bool,
    ) -> Result<EdgeReceiver> {
        let receiver = node.connect_external(&self.shared, capacity.max(1), counted, true)?;
        self.wake_node(node);
        Ok(receiver)
    }

    /// [`Runtime::add_node`] whose inputs from upstreams with a seeder (materialized views)
    /// start with the upstream's seed: a new reader of a view starts from its contents.
    pub fn add_node_seeded(
        &self,
        name: &str,
        operator: Box<dyn Operator>,
        metrics: Arc<NodeMetrics>,
        upstreams: &[Arc<Node>],
    ) -> Result<Arc<Node>> {
        let node = self.new_node(name, operator, metrics);
        if let Err(e) = self.connect_inputs_seeded(&node, upstreams) {
            self.remove_node(&node);
            return Err(e);
        }
        self.schedule(&node);
        Ok(node)
    }

    /// [`Runtime::connect_inputs`] with the seeds of [`Runtime::add_node_seeded`].
    pub fn connect_inputs_seeded(&self, node: &Arc<Node>, upstreams: &[Arc<Node>]) -> Result<()> {
        let mut inputs = Vec::with_capacity(upstreams.len());
        for upstream in upstreams {
            let (receiver, seeded) =
                upstream.connect_seeded(&self.shared, node, self.shared.config.edge_capacity)?;
            // A seed carries the upstream's watermark after its rows.
            let watermark = if seeded {
                None
            } else {
                upstream.output_watermark()
            };
            inputs.push((receiver, watermark));
        }
        // All at once: the node's watermark never runs ahead on one input's seed.
        node.add_inputs(inputs);
        self.wake_node(node);
        Ok(())
    }

    /// Removes a node from scheduling; its queues are dropped and in-flight accounting fixed.
    pub fn remove_node(&self, node: &Arc<Node>) {
        node.retire(&self.shared);
        if let Some(worker) = self.shared.workers.get(node.worker) {
            worker.remove(node.id);
            worker.wake();
        }
    }

    /// Failures recorded by nodes so far.
    pub fn failures(&self) -> Vec<NodeFailure> {
        self.shared.failures.lock().clone()
    }

    /// Waits until every message enqueued to a node or counted consumer has been handled, or
    /// the timeout passes; returns true when idle.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.shared.in_flight.load(Ordering::SeqCst) <= 0 {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            for w in &self.shared.workers {
                w.wake();
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Stops the workers (idempotent). Queued messages are abandoned.
    pub fn shutdown(&self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        for w in &self.shared.workers {
            w.wake();
        }
        let threads: Vec<_> = self.threads.lock().drain(..).collect();
        for t in threads {
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }

    /// True once [`Runtime::shutdown`] was called.
    pub fn is_shut_down(&self) -> bool {
        self.shared.shutdown.load(Ordering::SeqCst)
    }

    fn new_node(
        &self,
        name: &str,
        operator: Box<dyn Operator>,
        metrics: Arc<NodeMetrics>,
    ) -> Arc<Node> {
        let id = self.shared.next_node_id.fetch_add(1, Ordering::Relaxed);
        let worker =
            self.shared.next_worker.fetch_add(1, Ordering::Relaxed) % self.shared.workers.len();
        Arc::new(Node::new(NodeId(id), name, worker, operator, metrics))
    }

    fn schedule(&self, node: &Arc<Node>) {
        if let Some(worker) = self.shared.workers.get(node.worker) {
            worker.add(node.clone());
            worker.wake();
        }
    }

    /// Wakes the worker of `node`, so it looks at the node again (after an operator stopped
    /// being paused, for instance).
    pub fn wake(&self, node: &Arc<Node>) {
        self.wake_node(node);
    }

    fn wake_node(&self, node: &Arc<Node>) {
        if let Some(worker) = self.shared.workers.get(node.worker) {
            worker.wake();
        }
    }
}

impl RuntimeShared {
    pub(crate) fn wake_worker(&self, index: usize) {
        if let Some(worker) = self.workers.get(index) {
            worker.wake();
        }
    }

    pub(crate) fn record_failure(&self, node: &str, error: &CoreError) {
        tracing::error!(node, %error, "node failed");
        self.failures.lock().push(NodeFailure {
            node: node.to_string(),
            message: error.to_string(),
        });
    }
}

#[cfg(test)]
mod tests;
