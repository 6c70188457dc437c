//! A worker thread: visits its nodes round-robin, runs timers, parks when there is no work.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::RuntimeShared;
use super::node::{Node, NodeId};

/// Parking time while some node waits for a full downstream queue to drain.
const BLOCKED_PARK: Duration = Duration::from_micros(100);

#[derive(Default)]
pub(crate) struct WorkerShared {
    nodes: Mutex<Vec<Arc<Node>>>,
    version: AtomicU64,
    pub(crate) thread: OnceLock<Thread>,
}

impl WorkerShared {
    pub(crate) fn add(&self, node: Arc<Node>) {
        self.nodes.lock().push(node);
        self.version.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn remove(&self, id: NodeId) {
        self.nodes.lock().retain(|n| n.id != id);
        self.version.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn wake(&self) {
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }
}

pub(crate) fn run(shared: Arc<RuntimeShared>, index: usize) {
    let me = shared.workers[index].clone();
    let _ = me.thread.set(std::thread::current());
    let mut nodes: Vec<Arc<Node>> = Vec::new();
    let mut seen_version = u64::MAX;
    let tick = shared.config.tick_interval;
    let budget = shared.config.node_budget.max(1);
    let mut last_tick = Instant::now();
    while !shared.shutdown.load(Ordering::Relaxed) {
        let version = me.version.load(Ordering::SeqCst);
        if version != seen_version {
            nodes = me.nodes.lock().clone();
            seen_version = version;
        }
        let mut progress = false;
        let mut blocked = false;
        for node in &nodes {
            let visit = node.visit(&shared, budget);
            progress |= visit.progress;
            blocked |= visit.blocked;
        }
        let now = Instant::now();
        if now.duration_since(last_tick) >= tick {
            last_tick = now;
            for node in &nodes {
                node.tick(&shared, now);
            }
        }
        if !progress {
            std::thread::park_timeout(if blocked { BLOCKED_PARK } else { tick });
        }
    }
}
