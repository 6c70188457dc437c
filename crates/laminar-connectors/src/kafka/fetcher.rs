//! The Kafka source's fetch thread.
//!
//! A thread of its own polls the consumer and hands the messages, copied into chunks, to the
//! source through a small bounded channel; the source decodes them on the pipeline's read
//! loop. Polling off the read loop lets the thread do what must happen even while the read
//! loop waits for room in the pipeline's queue:
//!
//! - **Backpressure.** Before every poll the thread reads the queue's fill: at or above
//!   `backpressure.high.watermark` it pauses every assigned partition (librdkafka stops
//!   fetching them, so nothing piles up in the client), at or below
//!   `backpressure.low.watermark` it resumes them. While the channel to the source is full
//!   the thread waits (librdkafka's own bounded queue absorbs a decoder slower than the
//!   fetching); after a third of `max.poll.interval.ms` it pauses the partitions and polls
//!   again, so the group keeps it as a member however long the pipeline stalls.
//! - **Consumer-group rebalances** (`partition.assignment.strategy` other than `all`). An
//!   assigned partition starts at the later of the offset the restored checkpoint holds for
//!   it and the group's committed offset (else per `startup.mode`). A revoked partition is
//!   handed over only once what was read from it is safe: the thread passes every message
//!   it fetched to the source, asks for a checkpoint, and waits inside the rebalance until
//!   a completed checkpoint covers those messages, then commits their offsets to the group
//!   (synchronously) and lets the rebalance finish. The next owner therefore starts exactly
//!   after the last message whose effects a checkpoint holds; with an exactly-once sink no
//!   message is processed twice across the rebalance. Without checkpoints the offsets
//!   handed to the pipeline are committed at once (at-least-once at best).
//!
//! Ordering: the channel carries messages and partition changes ([`Fetched`]) in the
//! order they happened, so the source's positions always match what it delivered.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::{SendTimeoutError, Sender, TrySendError};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaResult;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::{MessageMeta, StartupMode, headers_json};
use crate::connector::SourceEnvironment;

/// A partition of a topic.
pub(super) type PartitionKey = (String, i32);

/// How long a revoked partition waits for a checkpoint that covers what was read from it
/// before it is handed over anyway (its last messages may then be processed twice).
const REVOKE_CHECKPOINT_TIMEOUT: Duration = Duration::from_secs(120);

/// A chunk is handed over when it holds this many messages or is this old.
const CHUNK_MAX_AGE: Duration = Duration::from_millis(2);

/// Messages copied out of the consumer: payloads back to back in one buffer.
#[derive(Default)]
pub(super) struct Chunk {
    bytes: Vec<u8>,
    ends: Vec<usize>,
    pub(super) metas: Vec<MessageMeta>,
}

impl Chunk {
    pub(super) fn len(&self) -> usize {
        self.metas.len()
    }

    pub(super) fn payload(&self, index: usize) -> &[u8] {
        let start = if index == 0 { 0 } else { self.ends[index - 1] };
        &self.bytes[start..self.ends[index]]
    }

    fn push(&mut self, message: &BorrowedMessage<'_>, wants_headers: bool) {
        self.bytes
            .extend_from_slice(message.payload().unwrap_or_default());
        self.ends.push(self.bytes.len());
        self.metas.push(MessageMeta {
            topic: message.topic().to_string(),
            partition: message.partition(),
            offset: message.offset(),
            timestamp: message.timestamp().to_millis(),
            key: message.key().map(<[u8]>::to_vec),
            headers: wants_headers.then(|| headers_json(message)),
        });
    }
}

/// What the fetch thread hands to the source, in order.
pub(super) enum Fetched {
    Messages(Chunk),
    /// Partitions this source now reads (a group assignment), each with the offset it
    /// starts at when known, and for `startup.mode = 'timestamp'` the time before which
    /// its messages are passed over.
    Assigned(Vec<(PartitionKey, Option<i64>, Option<i64>)>),
    /// Partitions handed over to another member of the group.
    Revoked(Vec<PartitionKey>),
    /// The consumer failed.
    Failed(String),
}

/// How the source's partitions are chosen.
pub(super) enum Membership {
    /// Every partition, assigned by the source before the thread starts.
    All,
    /// The consumer group's assignment of these topics.
    Group(Vec<String>),
}

/// What the fetch thread and the source share.
pub(super) struct FetchContext {
    settings: FetchSettings,
    stop: AtomicBool,
    /// The consumer is closing: revoked partitions are handed over at once.
    closing: AtomicBool,
    pauses: AtomicU64,
    environment: Mutex<SourceEnvironment>,
    /// The offsets of the last completed checkpoint (group mode).
    completed: Mutex<BTreeMap<PartitionKey, i64>>,
    completed_changed: Condvar,
    /// Without checkpoints: the next offset after the last message the source returned.
    delivered: Mutex<BTreeMap<PartitionKey, i64>>,
    /// Items for the source that the channel had no room for yet, in order.
    backlog: Mutex<VecDeque<Fetched>>,
    state: Mutex<FetchState>,
}

/// Options of the fetch thread.
pub(super) struct FetchSettings {
    pub(super) wants_headers: bool,
    pub(super) chunk_rows: usize,
    pub(super) poll_timeout: Duration,
    /// How long the thread waits for room in the channel before it pauses its partitions
    /// and polls again (a third of `max.poll.interval.ms`, so the group keeps the member).
    pub(super) keepalive: Duration,
    pub(super) high_watermark: f64,
    pub(super) low_watermark: f64,
    pub(super) startup: StartupMode,
}

struct FetchState {
    out: Option<Sender<Fetched>>,
    chunk: Chunk,
    chunk_started: Option<Instant>,
    /// Per partition read by this thread: the offset after the last message handed over.
    fetched: BTreeMap<PartitionKey, i64>,
    /// Offsets of the restored checkpoint (group mode: a partition assigned later starts
    /// at the later of this and the group's committed offset).
    resume: BTreeMap<PartitionKey, i64>,
    paused: bool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl FetchContext {
    pub(super) fn new(settings: FetchSettings) -> Self {
        FetchContext {
            settings,
            stop: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            pauses: AtomicU64::new(0),
            environment: Mutex::new(SourceEnvironment::detached()),
            completed: Mutex::new(BTreeMap::new()),
            completed_changed: Condvar::new(),
            delivered: Mutex::new(BTreeMap::new()),
            backlog: Mutex::new(VecDeque::new()),
            state: Mutex::new(FetchState {
                out: None,
                chunk: Chunk::default(),
                chunk_started: None,
                fetched: BTreeMap::new(),
                resume: BTreeMap::new(),
                paused: false,
            }),
        }
    }

    pub(super) fn set_environment(&self, environment: SourceEnvironment) {
        *lock(&self.environment) = environment;
    }

    pub(super) fn set_resume(&self, resume: BTreeMap<PartitionKey, i64>) {
        lock(&self.state).resume = resume;
    }

    pub(super) fn pauses(&self) -> u64 {
        self.pauses.load(Ordering::Relaxed)
    }

    /// A checkpoint that recorded these offsets completed.
    pub(super) fn checkpoint_completed(&self, offsets: &BTreeMap<PartitionKey, i64>) {
        let mut completed = lock(&self.completed);
        for (key, &offset) in offsets {
            let entry = completed.entry(key.clone()).or_insert(offset);
            *entry = (*entry).max(offset);
        }
        self.completed_changed.notify_all();
    }

    /// The source returned messages up to these offsets (used without checkpoints).
    pub(super) fn delivered(&self, offsets: &BTreeMap<PartitionKey, i64>) {
        lock(&self.delivered).clone_from(offsets);
    }

    /// The partitions this thread reads now.
    pub(super) fn owns(&self, key: &PartitionKey) -> bool {
        lock(&self.state).fetched.contains_key(key)
    }

    /// Stops the thread (it hands over what it holds and returns).
    pub(super) fn stop(&self) {
        self.closing.store(true, Ordering::SeqCst);
        self.stop.store(true, Ordering::SeqCst);
        self.completed_changed.notify_all();
    }

    /// Queues `item` for the source behind everything queued before, and hands over what
    /// the channel takes now. Never called with `state` locked.
    fn send(&self, item: Fetched) {
        lock(&self.backlog).push_back(item);
        self.drain(false);
    }

    /// Hands queued items to the source in order: as many as the channel takes now, or
    /// (`wait`) all of them, waiting for room (until stopped). Returns whether none is left.
    /// The fetch thread keeps polling while items wait (with its partitions paused), so the
    /// group keeps it as a member however long the pipeline stalls.
    fn drain(&self, wait: bool) -> bool {
        let Some(out) = lock(&self.state).out.clone() else {
            lock(&self.backlog).clear();
            return true;
        };
        let mut backlog = lock(&self.backlog);
        while let Some(item) = backlog.pop_front() {
            let result = if wait {
                let mut item = item;
                loop {
                    match out.send_timeout(item, Duration::from_millis(5)) {
                        Ok(()) => break Ok(()),
                        Err(SendTimeoutError::Timeout(back))
                            if !self.stop.load(Ordering::SeqCst) =>
                        {
                            item = back;
                        }
                        Err(SendTimeoutError::Timeout(back)) => break Err(Some(back)),
                        Err(SendTimeoutError::Disconnected(_)) => break Err(None),
                    }
                }
            } else {
                out.try_send(item).map_err(|e| match e {
                    TrySendError::Full(back) => Some(back),
                    TrySendError::Disconnected(_) => None,
                })
            };
            match result {
                Ok(()) => {}
                Err(Some(back)) => {
                    backlog.push_front(back);
                    return false;
                }
                Err(None) => {
                    backlog.clear();
                    drop(backlog);
                    lock(&self.state).out = None;
                    return true;
                }
            }
        }
        true
    }

    /// Hands the current chunk over, recording how far it reaches in each partition.
    fn flush(&self) {
        let chunk = {
            let mut state = lock(&self.state);
            if state.chunk.len() == 0 {
                return;
            }
            state.chunk_started = None;
            let chunk = std::mem::take(&mut state.chunk);
            // The furthest offset per partition (a chunk holds messages of a few).
            let mut furthest: Vec<(&str, i32, i64)> = Vec::new();
            for meta in &chunk.metas {
                match furthest
                    .iter_mut()
                    .find(|(t, p, _)| *p == meta.partition && *t == meta.topic)
                {
                    Some(entry) => entry.2 = entry.2.max(meta.offset + 1),
                    None => furthest.push((&meta.topic, meta.partition, meta.offset + 1)),
                }
            }
            for (topic, partition, next) in furthest {
                state.fetched.insert((topic.to_string(), partition), next);
            }
            chunk
        };
        self.send(Fetched::Messages(chunk));
    }

    fn take(&self, message: &BorrowedMessage<'_>) {
        let full = {
            let mut state = lock(&self.state);
            state.chunk.push(message, self.settings.wants_headers);
            let started = *state.chunk_started.get_or_insert_with(Instant::now);
            state.chunk.len() >= self.settings.chunk_rows || started.elapsed() >= CHUNK_MAX_AGE
        };
        if full {
            self.flush();
        }
    }

    /// Hands queued items over, waiting while the channel is full (a decoder slower than
    /// the fetching: librdkafka's own bounded queue absorbs the difference) for up to the
    /// keep-alive interval, pausing the partitions meanwhile if the pipeline's queue fills.
    /// Returns whether nothing is left waiting.
    fn wait_for_room(&self, consumer: &BaseConsumer<FetchContext>) -> bool {
        let deadline = Instant::now() + self.settings.keepalive;
        loop {
            if self.drain(false) {
                return true;
            }
            if self.stop.load(Ordering::SeqCst) || Instant::now() >= deadline {
                return false;
            }
            self.apply_backpressure(consumer, false);
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Pauses or resumes every assigned partition per the queue's fill (and pauses them
    /// while items wait for room in the channel).
    fn apply_backpressure(&self, consumer: &BaseConsumer<FetchContext>, waiting: bool) {
        let fill = (lock(&self.environment).queue_fill)();
        let mut state = lock(&self.state);
        let pause = if !state.paused && (waiting || fill >= self.settings.high_watermark) {
            true
        } else if state.paused && !waiting && fill <= self.settings.low_watermark {
            false
        } else {
            return;
        };
        let Ok(assignment) = consumer.assignment() else {
            return;
        };
        let result = if pause {
            consumer.pause(&assignment)
        } else {
            consumer.resume(&assignment)
        };
        match result {
            Ok(()) => {
                state.paused = pause;
                if pause {
                    self.pauses.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(fill, "queue filling up: Kafka partitions paused");
                } else {
                    tracing::debug!(fill, "queue drained: Kafka partitions resumed");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot pause or resume Kafka partitions"),
        }
    }

    /// The start offset of every newly assigned partition, set in `list`.
    fn on_assign(&self, consumer: &BaseConsumer<FetchContext>, list: &mut TopicPartitionList) {
        let committed: BTreeMap<PartitionKey, i64> = consumer
            .committed_offsets(list.clone(), Duration::from_secs(10))
            .map(|found| {
                found
                    .elements()
                    .iter()
                    .filter_map(|e| match e.offset() {
                        Offset::Offset(o) => Some(((e.topic().to_string(), e.partition()), o)),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot read the group's committed offsets; assigned partitions start per startup.mode");
                BTreeMap::new()
            });
        self.flush();
        let mut state = lock(&self.state);
        let durable = lock(&self.completed).clone();
        let mut assigned = Vec::new();
        let mut by_time = TopicPartitionList::new();
        for element in list.elements() {
            let key = (element.topic().to_string(), element.partition());
            // The latest known durable offset: the restored checkpoint's, the group's, or
            // one this member saw committed before (should the group's lookup fail).
            let known = [
                state.resume.get(&key),
                committed.get(&key),
                durable.get(&key),
            ]
            .into_iter()
            .flatten()
            .copied()
            .max();
            let (offset, skip_before) = match (known, &self.settings.startup) {
                (Some(o), _) => (Offset::Offset(o), None),
                (None, StartupMode::GroupOffsets) => (Offset::Stored, None),
                (None, StartupMode::Earliest) => (Offset::Beginning, None),
                (None, StartupMode::Latest) => (Offset::End, None),
                (None, StartupMode::Timestamp(ts)) => {
                    let _ = by_time.add_partition_offset(&key.0, key.1, Offset::Offset(*ts));
                    (Offset::End, Some(*ts))
                }
                (None, StartupMode::SpecificOffsets(offsets)) => offsets
                    .iter()
                    .find(|(t, p, _)| *p == key.1 && t.as_ref().is_none_or(|t| *t == key.0))
                    .map_or((Offset::Stored, None), |(_, _, o)| {
                        (Offset::Offset(*o), None)
                    }),
            };
            assigned.push((key, offset, skip_before));
        }
        let found_by_time = if by_time.count() > 0 {
            consumer
                .offsets_for_times(by_time, Duration::from_secs(10))
                .map_err(|e| tracing::warn!(error = %e, "cannot look up offsets by startup time; those partitions start at their end"))
                .ok()
        } else {
            None
        };
        let mut announced = Vec::new();
        let mut completed = lock(&self.completed);
        for (key, mut offset, skip_before) in assigned {
            if skip_before.is_some()
                && let Some(found) = found_by_time
                    .as_ref()
                    .and_then(|f| f.find_partition(&key.0, key.1))
                && let Offset::Offset(o) = found.offset()
            {
                offset = Offset::Offset(o);
            }
            let _ = list.set_partition_offset(&key.0, key.1, offset);
            let start = match offset {
                Offset::Offset(o) => Some(o),
                _ => None,
            };
            match start {
                Some(o) => {
                    // Durable already (a checkpoint of this source or of the previous owner):
                    // what a later handover starts from at the least.
                    completed.insert(key.clone(), o);
                    state.fetched.insert(key.clone(), o)
                }
                // Known at the first message; owned meanwhile.
                None => state.fetched.insert(key.clone(), -1),
            };
            announced.push((key, start, skip_before));
        }
        drop(completed);
        drop(state);
        tracing::info!(
            partitions = ?announced.iter().map(|(k, o, _)| (k, o)).collect::<Vec<_>>(),
            "Kafka partitions assigned"
        );
        self.send(Fetched::Assigned(announced));
    }

    /// Hands revoked partitions over once a checkpoint covers what was read from them.
    fn on_revoke(&self, consumer: &BaseConsumer<FetchContext>, list: &TopicPartitionList) {
        let keys: Vec<PartitionKey> = list
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        self.flush();
        // Every message fetched from these partitions reaches the source before the wait.
        self.drain(true);
        let need: BTreeMap<PartitionKey, i64> = {
            let state = lock(&self.state);
            keys.iter()
                .filter_map(|k| {
                    state
                        .fetched
                        .get(k)
                        .filter(|&&o| o >= 0)
                        .map(|&o| (k.clone(), o))
                })
                .collect()
        };
        let environment = lock(&self.environment).clone();
        let commit: BTreeMap<PartitionKey, i64> = if !environment.checkpointed {
            // What the source returned (fetched messages it never returned are read by the
            // next owner).
            let delivered = lock(&self.delivered);
            keys.iter()
                .filter_map(|k| delivered.get(k).map(|&o| (k.clone(), o)))
                .collect()
        } else {
            let deadline = Instant::now() + REVOKE_CHECKPOINT_TIMEOUT;
            (environment.request_checkpoint)();
            let mut completed = lock(&self.completed);
            loop {
                let covered = need
                    .iter()
                    .all(|(k, o)| completed.get(k).is_some_and(|c| c >= o));
                if covered || self.closing.load(Ordering::SeqCst) {
                    break;
                }
                let now = Instant::now();
                if now >= deadline {
                    tracing::error!(
                        partitions = ?keys,
                        "no checkpoint covered the revoked Kafka partitions in time; they are handed over at the last checkpointed offsets (messages read since may be processed again)"
                    );
                    break;
                }
                completed = self
                    .completed_changed
                    .wait_timeout(completed, (deadline - now).min(Duration::from_millis(200)))
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .0;
                // A checkpoint whose barrier passed before the last messages were decoded
                // does not cover them: ask again.
                (environment.request_checkpoint)();
            }
            keys.iter()
                .filter_map(|k| completed.get(k).map(|&o| (k.clone(), o)))
                .collect()
        };
        let mut offsets = TopicPartitionList::new();
        for ((topic, partition), offset) in &commit {
            let _ = offsets.add_partition_offset(topic, *partition, Offset::Offset(*offset));
        }
        if offsets.count() > 0
            && let Err(e) = consumer.commit(&offsets, CommitMode::Sync)
        {
            tracing::warn!(error = %e, "cannot commit the revoked partitions' offsets to the group");
        }
        tracing::info!(partitions = ?commit, "Kafka partitions revoked");
        self.release(keys);
    }

    /// The partitions leave this member: the source stops reporting them.
    fn release(&self, keys: Vec<PartitionKey>) {
        {
            let mut state = lock(&self.state);
            let mut completed = lock(&self.completed);
            let mut delivered = lock(&self.delivered);
            for key in &keys {
                state.fetched.remove(key);
                completed.remove(key);
                delivered.remove(key);
            }
        }
        self.send(Fetched::Revoked(keys));
    }
}

impl ClientContext for FetchContext {}

impl ConsumerContext for FetchContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        list: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.on_assign(consumer, list);
                let assigned = if cooperative {
                    consumer.incremental_assign(list)
                } else {
                    consumer.assign(list)
                };
                if assigned.is_ok() && lock(&self.state).paused {
                    let _ = consumer.pause(list);
                }
                if let Err(e) = &assigned {
                    // The group counts these partitions as read here: fail rather than
                    // leave them unread.
                    self.send(Fetched::Failed(format!(
                        "cannot take the partitions the consumer group assigned: {e}"
                    )));
                }
                assigned
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.on_revoke(consumer, list);
                if cooperative {
                    consumer.incremental_unassign(list)
                } else {
                    consumer.unassign()
                }
            }
            other => {
                tracing::error!(error = ?other, "Kafka consumer group rebalance failed; this member's partitions are given up");
                let keys: Vec<PartitionKey> = lock(&self.state).fetched.keys().cloned().collect();
                self.release(keys);
                consumer.unassign()
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "cannot apply the Kafka group's assignment");
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            tracing::debug!(error = %e, "committing offsets to the consumer group failed");
        }
    }
}

/// Starts the fetch thread: it subscribes (group membership) or uses the assignment made
/// already, and polls until stopped.
pub(super) fn spawn(
    consumer: Arc<BaseConsumer<FetchContext>>,
    membership: Membership,
    out: Sender<Fetched>,
) -> Result<std::thread::JoinHandle<()>, String> {
    lock(&consumer.context().state).out = Some(out);
    if let Membership::Group(topics) = &membership {
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|e| format!("cannot join the consumer group: {e}"))?;
    }
    std::thread::Builder::new()
        .name("laminar-kafka-fetch".into())
        .spawn(move || run(&consumer, &membership))
        .map_err(|e| format!("cannot start the fetch thread: {e}"))
}

fn run(consumer: &BaseConsumer<FetchContext>, membership: &Membership) {
    let context = consumer.context();
    while !context.stop.load(Ordering::SeqCst) {
        let waiting = !context.wait_for_room(consumer);
        context.apply_backpressure(consumer, waiting);
        let holding = lock(&context.state).chunk.len() > 0;
        let wait = if holding {
            Duration::ZERO
        } else if waiting {
            Duration::from_millis(5)
        } else {
            context.settings.poll_timeout
        };
        match consumer.poll(wait) {
            Some(Ok(message)) => context.take(&message),
            Some(Err(e)) => {
                context.flush();
                context.send(Fetched::Failed(e.to_string()));
                context.drain(true);
                return;
            }
            None => context.flush(),
        }
    }
    if let Membership::Group(_) = membership {
        // Leaving the group revokes every partition; `closing` hands them over at the
        // offsets of the last completed checkpoint.
        consumer.unsubscribe();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && consumer.assignment().is_ok_and(|a| a.count() > 0) {
            let _ = consumer.poll(Duration::from_millis(10));
        }
    }
    lock(&context.state).out = None;
}
