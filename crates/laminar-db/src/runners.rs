//! Connector I/O off the worker threads: a source runner reads batches from a source
//! connector into the source's ingestion queue; a sink runner drains a node's output into a
//! sink connector. Both run as blocking tasks on the database's separate tokio runtime.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::RecvTimeoutError;
use laminar_connectors::{
    SinkConnector, SinkConnectorMetrics, SourceConnector, SourceConnectorMetrics,
    SourceEnvironment, SourcePoll,
};
use laminar_core::message::Message;
use laminar_core::metrics::NodeMetrics;
use laminar_core::runtime::EdgeReceiver;
use parking_lot::Mutex;
use tokio::task::JoinHandle;

use crate::durability::Durability;
use crate::ingest::{IngestTarget, validate_batch};

/// Failures reported by runners, shared with the database.
pub(crate) type Failures = Arc<Mutex<Vec<String>>>;

/// Rows per poll of a source connector.
const POLL_ROWS: usize = 8192;

/// Reads a source connector.
pub(crate) struct SourceRunner {
    connector: Arc<Mutex<Box<dyn SourceConnector>>>,
    stop: Arc<AtomicBool>,
    ended: Arc<AtomicBool>,
    /// Durable mode: stop polling but keep serving barriers (shutdown's last checkpoint).
    paused: Arc<AtomicBool>,
    barrier: Arc<Mutex<BarrierRequest>>,
    durable: Option<Arc<Durability>>,
    handle: Option<JoinHandle<()>>,
}

/// The checkpoint barriers and read marks the read loop is asked to inject, in request
/// order, and whether the loop still runs (when it does not, the requester injects them).
#[derive(Default)]
struct BarrierRequest {
    pending: std::collections::VecDeque<u64>,
    loop_running: bool,
    /// Once the read loop is over: the position barriers report from then on (the
    /// connector is closed, and after a failure its own position may be past rows that were
    /// never delivered).
    final_position: Option<Option<String>>,
}

impl SourceRunner {
    pub(crate) fn new(
        connector: Box<dyn SourceConnector>,
        durable: Option<Arc<Durability>>,
    ) -> Self {
        SourceRunner {
            connector: Arc::new(Mutex::new(connector)),
            stop: Arc::new(AtomicBool::new(false)),
            ended: Arc::new(AtomicBool::new(false)),
            paused: Arc::new(AtomicBool::new(false)),
            barrier: Arc::new(Mutex::new(BarrierRequest::default())),
            durable,
            handle: None,
        }
    }

    pub(crate) fn is_started(&self) -> bool {
        self.handle.is_some()
    }

    /// True once the connector reported the end of its input (or failed).
    pub(crate) fn is_ended(&self) -> bool {
        self.ended.load(Ordering::SeqCst)
    }

    pub(crate) fn metrics(&self) -> SourceConnectorMetrics {
        self.connector.lock().metrics()
    }

    /// Resumes the connector at a checkpointed position (before it starts).
    pub(crate) fn seek(&self, position: &str) -> Result<(), String> {
        self.connector
            .lock()
            .seek(position)
            .map_err(|e| e.to_string())
    }

    /// Injects checkpoint barrier (or read mark) `epoch` after the last batch read (between
    /// two polls), reporting the connector's position at that point to the checkpoint.
    pub(crate) fn request_barrier(&self, epoch: u64, target: &IngestTarget) {
        let mut request = self.barrier.lock();
        if request.loop_running {
            if !laminar_core::message::is_read_mark(epoch) {
                // A newer checkpoint replaces one still waiting (its round was given up);
                // read marks keep their places.
                request
                    .pending
                    .retain(|&e| laminar_core::message::is_read_mark(e));
            }
            request.pending.push_back(epoch);
        } else {
            let position = request.final_position.clone();
            drop(request);
            inject_barrier(
                &self.connector,
                target,
                self.durable.as_deref(),
                epoch,
                position,
            );
        }
    }

    /// A checkpoint that recorded `position` for this source completed.
    pub(crate) fn checkpoint_completed(&self, position: &str) {
        self.connector.lock().checkpoint_completed(position);
    }

    /// Durable shutdown: stop reading, keep answering barriers.
    pub(crate) fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
    }

    pub(crate) fn start(
        &mut self,
        io: &tokio::runtime::Handle,
        target: IngestTarget,
        failures: Failures,
    ) {
        if self.handle.is_some() {
            return;
        }
        let connector = self.connector.clone();
        let stop = self.stop.clone();
        let ended = self.ended.clone();
        let paused = self.paused.clone();
        let barrier = self.barrier.clone();
        let durable = self.durable.clone();
        connector
            .lock()
            .attach(source_environment(&target, durable.as_ref()));
        barrier.lock().loop_running = true;
        self.handle = Some(io.spawn_blocking(move || {
            let looped = ReadLoop {
                connector: &connector,
                target: &target,
                stop: &stop,
                paused: &paused,
                ended: &ended,
                barrier: &barrier,
                durable: durable.as_deref(),
            };
            let result = looped.run();
            {
                // From here on, requesters inject barriers themselves, at the position
                // where reading stopped: after a failure, the position before the poll that
                // failed (what it read was not delivered).
                let mut request = barrier.lock();
                request.loop_running = false;
                let position = match &result {
                    Err((_, Some(before))) => before.clone(),
                    _ => connector.lock().position(),
                };
                request.final_position = Some(position.clone());
                for epoch in std::mem::take(&mut request.pending) {
                    inject_barrier(
                        &connector,
                        &target,
                        durable.as_deref(),
                        epoch,
                        Some(position.clone()),
                    );
                }
            }
            if let Err((message, _)) = result {
                tracing::error!(source = %target.name, %message, "source failed");
                failures
                    .lock()
                    .push(format!("source '{}': {message}", target.name));
            }
            // End of input (or failure): the source stops holding the pipeline back. With
            // durability, a source that ended or failed stays open so checkpoints can still
            // pass it: an end was sent as the final watermark; after a failure the rows it
            // read stay in the queries' state and in checkpoints, and a restart resumes it
            // at its checkpointed position (its watermark stays where it was until then).
            if !stop.load(Ordering::SeqCst) && durable.is_none() {
                let _ = target.input.send_blocking(Message::End);
            }
            let _ = connector.lock().close();
            ended.store(true, Ordering::SeqCst);
        }));
    }

    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// What a source connector is told about its queue and checkpoints.
fn source_environment(
    target: &IngestTarget,
    durable: Option<&Arc<Durability>>,
) -> SourceEnvironment {
    let input = target.input.clone();
    let requester = durable.cloned();
    SourceEnvironment {
        queue_fill: Arc::new(move || input.pending() as f64 / input.capacity().max(1) as f64),
        request_checkpoint: Arc::new(move || {
            if let Some(d) = &requester {
                d.request_checkpoint();
            }
        }),
        // Periodic checkpoints answer `request_checkpoint`; with manual ones only, a source
        // must not wait for one.
        checkpointed: durable.is_some_and(|d| d.config.checkpoint_interval.is_some()),
    }
}

/// Sends barrier `epoch` into the source queue and reports the position it stands for (a
/// read mark is only sent).
fn inject_barrier(
    connector: &Mutex<Box<dyn SourceConnector>>,
    target: &IngestTarget,
    durable: Option<&Durability>,
    epoch: u64,
    position: Option<Option<String>>,
) {
    if laminar_core::message::is_read_mark(epoch) {
        let _ = target.input.send_blocking(Message::Barrier(epoch));
        return;
    }
    let position = position.unwrap_or_else(|| connector.lock().position());
    let sent = target
        .input
        .send_blocking(Message::Barrier(epoch))
        .map_err(|e| format!("cannot inject the checkpoint barrier: {e}"));
    if let Some(d) = durable {
        d.on_source_barrier(&target.name, epoch, sent.map(|()| position));
    }
}

struct ReadLoop<'a> {
    connector: &'a Mutex<Box<dyn SourceConnector>>,
    target: &'a IngestTarget,
    stop: &'a AtomicBool,
    paused: &'a AtomicBool,
    ended: &'a AtomicBool,
    barrier: &'a Mutex<BarrierRequest>,
    durable: Option<&'a Durability>,
}

impl ReadLoop<'_> {
    /// Reads until the input ends (without durability), the runner stops, or a failure:
    /// its message, and with durability the connector's position before the failed poll.
    fn run(&self) -> Result<(), (String, Option<Option<String>>)> {
        let target = self.target;
        let mut input_ended = false;
        while !self.stop.load(Ordering::SeqCst) {
            let requested = std::mem::take(&mut self.barrier.lock().pending);
            for epoch in requested {
                inject_barrier(self.connector, target, self.durable, epoch, None);
            }
            if input_ended || self.paused.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            }
            let mut connector = self.connector.lock();
            let before = self.durable.map(|_| connector.position());
            let polled = connector.poll_batch(POLL_ROWS);
            drop(connector);
            let failed = |e: String| (e, before.clone());
            match polled.map_err(|e| failed(e.to_string()))? {
                SourcePoll::Batch(batch) => {
                    let batch = validate_batch(
                        &target.name,
                        &target.schema,
                        target.event_time.as_ref(),
                        &batch,
                    )
                    .map_err(|e| failed(e.to_string()))?;
                    if batch.num_rows() > 0
                        && target.input.send_blocking(Message::Batch(batch)).is_err()
                    {
                        return Ok(());
                    }
                }
                SourcePoll::Pending => std::thread::sleep(Duration::from_millis(5)),
                SourcePoll::End => {
                    if self.durable.is_none() {
                        return Ok(());
                    }
                    // The end of a finite input closes every window (as `End` would) but
                    // keeps the source open for checkpoints.
                    let _ = target
                        .input
                        .send_blocking(Message::Watermark(laminar_core::message::END_OF_TIME));
                    input_ended = true;
                    self.ended.store(true, Ordering::SeqCst);
                }
            }
        }
        Ok(())
    }
}

impl Drop for SourceRunner {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Drains a node's output into a sink connector.
pub(crate) struct SinkRunner {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    connector_metrics: Arc<Mutex<SinkConnectorMetrics>>,
    /// Epochs whose checkpoint completed, to commit (durable mode).
    commits: Option<crossbeam_channel::Sender<u64>>,
}

impl SinkRunner {
    /// A sink without connector (in-memory endpoint): nothing runs.
    pub(crate) fn none() -> Self {
        SinkRunner {
            stop: Arc::new(AtomicBool::new(false)),
            done: Arc::new(AtomicBool::new(true)),
            handle: None,
            connector_metrics: Arc::new(Mutex::new(SinkConnectorMetrics::default())),
            commits: None,
        }
    }

    pub(crate) fn start(
        io: &tokio::runtime::Handle,
        name: String,
        mut sink: Box<dyn SinkConnector>,
        rx: EdgeReceiver,
        metrics: Arc<NodeMetrics>,
        failures: Failures,
        durable: Option<Arc<Durability>>,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        let connector_metrics = Arc::new(Mutex::new(sink.metrics()));
        let (commit_tx, commit_rx) = crossbeam_channel::unbounded::<u64>();
        let handle = {
            let stop = stop.clone();
            let done = done.clone();
            let connector_metrics = connector_metrics.clone();
            io.spawn_blocking(move || {
                let epochs = durable.as_ref().map(|d| SinkEpochs {
                    durability: d.clone(),
                    commits: commit_rx,
                });
                let mut writer = SinkWriter {
                    name: &name,
                    sink: &mut *sink,
                    rx: &rx,
                    stop: &stop,
                    metrics: &metrics,
                    connector_metrics: &connector_metrics,
                    epochs: epochs.as_ref(),
                };
                let result = writer.run();
                let closed = writer.finish().map_err(|e| e.to_string());
                *connector_metrics.lock() = sink.metrics();
                if let Err(message) = result.and(closed) {
                    metrics.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(sink = %name, %message, "sink failed");
                    failures.lock().push(format!("sink '{name}': {message}"));
                    // Keep draining so the pipeline never hangs on a failed sink.
                    while let Ok(m) = rx.recv_timeout(Duration::from_millis(50)) {
                        rx.done();
                        if matches!(m, Message::End) || stop.load(Ordering::SeqCst) {
                            break;
                        }
                    }
                }
                done.store(true, Ordering::SeqCst);
            })
        };
        SinkRunner {
            stop,
            done,
            handle: Some(handle),
            connector_metrics,
            commits: Some(commit_tx),
        }
    }

    pub(crate) fn is_done(&self) -> bool {
        self.done.load(Ordering::SeqCst)
    }

    /// Tells the sink that the checkpoint of `epoch` completed (its commit decision).
    pub(crate) fn commit(&self, epoch: u64) {
        if let Some(tx) = &self.commits {
            let _ = tx.send(epoch);
        }
    }

    pub(crate) fn connector_metrics(&self) -> SinkConnectorMetrics {
        *self.connector_metrics.lock()
    }

    /// Asks the runner to write what is queued, close the sink and stop.
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Waits for the runner to finish (up to `timeout`).
    pub(crate) fn wait(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.is_done() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }

    pub(crate) fn has_task(&self) -> bool {
        self.handle.is_some()
    }
}

/// Checkpoint participation of a sink (durable mode).
struct SinkEpochs {
    durability: Arc<Durability>,
    commits: crossbeam_channel::Receiver<u64>,
}

struct SinkWriter<'a> {
    name: &'a str,
    sink: &'a mut dyn SinkConnector,
    rx: &'a EdgeReceiver,
    stop: &'a AtomicBool,
    metrics: &'a NodeMetrics,
    connector_metrics: &'a Mutex<SinkConnectorMetrics>,
    epochs: Option<&'a SinkEpochs>,
}

impl SinkWriter<'_> {
    fn run(&mut self) -> Result<(), String> {
        // What a previous run left: commit what its last checkpoint decided, drop the rest.
        let committed = self.epochs.and_then(|e| e.durability.recovered_epoch());
        self.sink.recover(committed).map_err(|e| e.to_string())?;
        if let Some(e) = self.epochs {
            self.sink
                .begin_epoch(e.durability.next_epoch())
                .map_err(|e| e.to_string())?;
        }
        let timeout = if self.epochs.is_some() {
            Duration::from_millis(10)
        } else {
            Duration::from_millis(100)
        };
        let mut last_tick = Instant::now();
        loop {
            self.apply_commits()?;
            let received = self.rx.recv_timeout(timeout);
            match received {
                Ok(msg) => {
                    let result = self.handle(&msg);
                    self.rx.done();
                    result?;
                    if matches!(msg, Message::End) {
                        return Ok(());
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    if self.stop.load(Ordering::SeqCst) && self.rx.is_empty() {
                        return Ok(());
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
            if last_tick.elapsed() >= Duration::from_millis(100) {
                last_tick = Instant::now();
                self.sink.tick().map_err(|e| e.to_string())?;
                *self.connector_metrics.lock() = self.sink.metrics();
                let m = self.connector_metrics.lock();
                self.metrics
                    .rows_out
                    .store(m.records_written, Ordering::Relaxed);
                self.metrics
                    .bytes_out
                    .store(m.bytes_written, Ordering::Relaxed);
            }
        }
    }

    fn handle(&mut self, msg: &Message) -> Result<(), String> {
        match msg {
            Message::Batch(batch) => {
                self.metrics
                    .rows_in
                    .fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
                self.sink.write_batch(batch).map_err(|e| e.to_string())
            }
            Message::Watermark(w) => {
                self.metrics.watermark.fetch_max(*w, Ordering::Relaxed);
                Ok(())
            }
            Message::Barrier(epoch) => {
                let Some(epochs) = self.epochs else {
                    return Ok(());
                };
                if laminar_core::message::is_read_mark(*epoch) {
                    return Ok(());
                }
                // Everything before the barrier becomes durable but stays invisible
                // until the checkpoint completes.
                let result = self
                    .sink
                    .pre_commit(*epoch)
                    .and_then(|()| self.sink.pre_commit_state())
                    .map_err(|e| e.to_string());
                let failed = result.as_ref().err().cloned();
                epochs
                    .durability
                    .on_sink_precommit(self.name, *epoch, result);
                if let Some(e) = failed {
                    return Err(e);
                }
                self.sink.begin_epoch(epoch + 1).map_err(|e| e.to_string())
            }
            Message::Idle | Message::End | Message::Partitioned(_) => Ok(()),
        }
    }

    /// Commits the epochs whose checkpoints completed (retrying a failed commit a few
    /// times: committing is idempotent).
    fn apply_commits(&mut self) -> Result<(), String> {
        let Some(epochs) = self.epochs else {
            return Ok(());
        };
        while let Ok(epoch) = epochs.commits.try_recv() {
            let mut attempt = 0;
            loop {
                match self.sink.commit_epoch(epoch) {
                    Ok(()) => break,
                    Err(e) if attempt < 3 => {
                        attempt += 1;
                        tracing::warn!(sink = %self.name, epoch, error = %e, "commit failed, retrying");
                        std::thread::sleep(Duration::from_millis(100 * attempt));
                    }
                    Err(e) => return Err(format!("cannot commit epoch {epoch}: {e}")),
                }
            }
        }
        Ok(())
    }

    /// Ends the sink: without durability (or for an at-least-once sink) `close` commits
    /// everything; an exactly-once sink of a durable pipeline commits what completed
    /// checkpoints decided and discards the rest, which a restart produces again.
    fn finish(&mut self) -> Result<(), laminar_connectors::ConnectorError> {
        match self.epochs {
            Some(_) if self.sink.capabilities().exactly_once => {
                self.apply_commits()
                    .map_err(laminar_connectors::ConnectorError::Unsupported)?;
                self.sink.rollback_epoch(0)
            }
            _ => self.sink.close(),
        }
    }
}
