//! Connector I/O off the worker threads: a source runner reads batches from a source
//! connector into the source's ingestion queue; a sink runner drains a node's output into a
//! sink connector. Both run as blocking tasks on the database's separate tokio runtime.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::RecvTimeoutError;
use laminar_connectors::{
    SinkConnector, SinkConnectorMetrics, SourceConnector, SourceConnectorMetrics, SourcePoll,
};
use laminar_core::message::Message;
use laminar_core::metrics::NodeMetrics;
use laminar_core::runtime::EdgeReceiver;
use parking_lot::Mutex;
use tokio::task::JoinHandle;

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
    handle: Option<JoinHandle<()>>,
}

impl SourceRunner {
    pub(crate) fn new(connector: Box<dyn SourceConnector>) -> Self {
        SourceRunner {
            connector: Arc::new(Mutex::new(connector)),
            stop: Arc::new(AtomicBool::new(false)),
            ended: Arc::new(AtomicBool::new(false)),
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
        self.handle = Some(io.spawn_blocking(move || {
            let result = read_loop(&connector, &target, &stop);
            if let Err(message) = result {
                tracing::error!(source = %target.name, %message, "source failed");
                failures
                    .lock()
                    .push(format!("source '{}': {message}", target.name));
            }
            if !stop.load(Ordering::SeqCst) {
                // End of input (or failure): the source stops holding the pipeline back.
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

fn read_loop(
    connector: &Mutex<Box<dyn SourceConnector>>,
    target: &IngestTarget,
    stop: &AtomicBool,
) -> Result<(), String> {
    while !stop.load(Ordering::SeqCst) {
        let polled = connector.lock().poll_batch(POLL_ROWS);
        match polled.map_err(|e| e.to_string())? {
            SourcePoll::Batch(batch) => {
                let batch = validate_batch(
                    &target.name,
                    &target.schema,
                    target.event_time.as_ref(),
                    &batch,
                )
                .map_err(|e| e.to_string())?;
                if batch.num_rows() > 0
                    && target.input.send_blocking(Message::Batch(batch)).is_err()
                {
                    return Ok(());
                }
            }
            SourcePoll::Pending => std::thread::sleep(Duration::from_millis(5)),
            SourcePoll::End => return Ok(()),
        }
    }
    Ok(())
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
}

impl SinkRunner {
    /// A sink without connector (in-memory endpoint): nothing runs.
    pub(crate) fn none() -> Self {
        SinkRunner {
            stop: Arc::new(AtomicBool::new(false)),
            done: Arc::new(AtomicBool::new(true)),
            handle: None,
            connector_metrics: Arc::new(Mutex::new(SinkConnectorMetrics::default())),
        }
    }

    pub(crate) fn start(
        io: &tokio::runtime::Handle,
        name: String,
        mut sink: Box<dyn SinkConnector>,
        rx: EdgeReceiver,
        metrics: Arc<NodeMetrics>,
        failures: Failures,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        let connector_metrics = Arc::new(Mutex::new(sink.metrics()));
        let handle = {
            let stop = stop.clone();
            let done = done.clone();
            let connector_metrics = connector_metrics.clone();
            io.spawn_blocking(move || {
                let result = write_loop(&mut *sink, &rx, &stop, &metrics, &connector_metrics);
                let closed = sink.close().map_err(|e| e.to_string());
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
        }
    }

    pub(crate) fn is_done(&self) -> bool {
        self.done.load(Ordering::SeqCst)
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

fn write_loop(
    sink: &mut dyn SinkConnector,
    rx: &EdgeReceiver,
    stop: &AtomicBool,
    metrics: &NodeMetrics,
    connector_metrics: &Mutex<SinkConnectorMetrics>,
) -> Result<(), String> {
    let mut last_tick = Instant::now();
    loop {
        let received = rx.recv_timeout(Duration::from_millis(100));
        match received {
            Ok(msg) => {
                let result = match &msg {
                    Message::Batch(batch) => {
                        metrics
                            .rows_in
                            .fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
                        sink.write_batch(batch).map_err(|e| e.to_string())
                    }
                    Message::Watermark(w) => {
                        metrics.watermark.fetch_max(*w, Ordering::Relaxed);
                        Ok(())
                    }
                    Message::Barrier(_)
                    | Message::Idle
                    | Message::End
                    | Message::Partitioned(_) => Ok(()),
                };
                rx.done();
                result?;
                if matches!(msg, Message::End) {
                    return Ok(());
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                if stop.load(Ordering::SeqCst) && rx.is_empty() {
                    return Ok(());
                }
            }
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        }
        if last_tick.elapsed() >= Duration::from_millis(100) {
            last_tick = Instant::now();
            sink.tick().map_err(|e| e.to_string())?;
            *connector_metrics.lock() = sink.metrics();
            let m = connector_metrics.lock();
            metrics.rows_out.store(m.records_written, Ordering::Relaxed);
            metrics.bytes_out.store(m.bytes_written, Ordering::Relaxed);
        }
    }
}
