//! Kafka test support, shared by the tests of several crates (`#[path]`): the broker that
//! `scripts/services.sh` starts, and a reader of a partition's log.
//!
//! [`read_partition`] reads a Kafka partition's log as it is stored, control records included, and tells
//! committed records from aborted ones the way the Java consumer does with the broker's
//! aborted-transaction index: a record of a transactional batch counts only when the
//! control record that ends its producer's transaction is a COMMIT.
//!
//! The test broker (Tansu) does not return the aborted-transaction list that lets a
//! `read_committed` client skip aborted records, and librdkafka's mock cluster returns none
//! either; both write the transaction markers into the log, which is what this reader uses.
//! It speaks just enough of the protocol: Fetch v4 (isolation read_uncommitted) and record
//! batches of magic 2 without compression.

#![allow(dead_code)] // each including test uses part of it

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// The broker (`LAMINAR_TEST_KAFKA_BROKERS`), or `None` (the test is skipped) when none was
/// started; under `scripts/test.sh` (`LAMINAR_REQUIRE_SERVICES`) a missing broker fails.
pub fn brokers() -> Option<String> {
    match std::env::var("LAMINAR_TEST_KAFKA_BROKERS") {
        Ok(b) => Some(b),
        Err(_) => {
            assert!(
                std::env::var_os("LAMINAR_REQUIRE_SERVICES").is_none(),
                "LAMINAR_TEST_KAFKA_BROKERS is not set: run the tests with scripts/test.sh"
            );
            eprintln!("skipped: no Kafka broker (run scripts/test.sh)");
            None
        }
    }
}

/// One record of the log.
#[derive(Debug, Clone)]
pub struct LogRecord {
    pub offset: i64,
    /// Producer id and epoch of a transactional record.
    pub producer: Option<(i64, i16)>,
    pub value: Option<Vec<u8>>,
}

/// What a read_committed consumer must see of a partition, and what it must not.
#[derive(Debug, Default)]
pub struct PartitionLog {
    /// Non-transactional records and records of committed transactions, in offset order.
    pub committed: Vec<LogRecord>,
    /// Records of aborted transactions.
    pub aborted: Vec<LogRecord>,
    /// Records of transactions that are still open.
    pub open: Vec<LogRecord>,
    /// The transaction markers: offset, producer id, producer epoch, commit.
    pub markers: Vec<(i64, i64, i16, bool)>,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as i16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        let s = &self.bytes[self.at..self.at + n];
        self.at += n;
        s
    }
    fn i8(&mut self) -> i8 {
        self.take(1)[0] as i8
    }
    fn i16(&mut self) -> i16 {
        i16::from_be_bytes(self.take(2).try_into().unwrap())
    }
    fn i32(&mut self) -> i32 {
        i32::from_be_bytes(self.take(4).try_into().unwrap())
    }
    fn i64(&mut self) -> i64 {
        i64::from_be_bytes(self.take(8).try_into().unwrap())
    }
    fn varlong(&mut self) -> i64 {
        let mut raw: u64 = 0;
        let mut shift = 0;
        loop {
            let b = self.take(1)[0];
            raw |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
        }
        ((raw >> 1) as i64) ^ -((raw & 1) as i64)
    }
    fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }
}

/// Sends one Fetch v4 request for `topic`/`partition` from `offset`; returns the raw
/// record-batch bytes and the partition's high watermark.
fn fetch(stream: &mut TcpStream, topic: &str, partition: i32, offset: i64) -> (Vec<u8>, i64) {
    let mut body = Vec::new();
    body.extend_from_slice(&1i16.to_be_bytes()); // api key: Fetch
    body.extend_from_slice(&4i16.to_be_bytes()); // version
    body.extend_from_slice(&7i32.to_be_bytes()); // correlation id
    put_str(&mut body, "laminar-log-reader");
    body.extend_from_slice(&(-1i32).to_be_bytes()); // replica id
    body.extend_from_slice(&100i32.to_be_bytes()); // max wait ms
    body.extend_from_slice(&0i32.to_be_bytes()); // min bytes
    body.extend_from_slice(&(64i32 << 20).to_be_bytes()); // max bytes
    body.push(0); // isolation: read_uncommitted (markers decide below)
    body.extend_from_slice(&1i32.to_be_bytes()); // topics
    put_str(&mut body, topic);
    body.extend_from_slice(&1i32.to_be_bytes()); // partitions
    body.extend_from_slice(&partition.to_be_bytes());
    body.extend_from_slice(&offset.to_be_bytes());
    body.extend_from_slice(&(32i32 << 20).to_be_bytes()); // partition max bytes
    let mut request = (body.len() as i32).to_be_bytes().to_vec();
    request.extend_from_slice(&body);
    stream.write_all(&request).unwrap();
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).unwrap();
    let mut response = vec![0u8; i32::from_be_bytes(len) as usize];
    stream.read_exact(&mut response).unwrap();
    let mut c = Cursor {
        bytes: &response,
        at: 0,
    };
    assert_eq!(c.i32(), 7, "correlation id");
    c.i32(); // throttle
    assert_eq!(c.i32(), 1, "topics in the response");
    let name_len = c.i16() as usize;
    c.take(name_len);
    assert_eq!(c.i32(), 1, "partitions in the response");
    c.i32(); // partition
    let error = c.i16();
    assert_eq!(error, 0, "fetch error code for {topic}/{partition}");
    let high_watermark = c.i64();
    c.i64(); // last stable offset
    let aborted = c.i32();
    for _ in 0..aborted.max(0) {
        c.i64();
        c.i64();
    }
    let size = c.i32();
    if size <= 0 {
        return (Vec::new(), high_watermark);
    }
    (c.take(size as usize).to_vec(), high_watermark)
}

/// Reads the whole of `topic`/`partition` from the broker at `broker` (host:port) and
/// classifies its records.
pub fn read_partition(broker: &str, topic: &str, partition: i32) -> PartitionLog {
    let mut stream = TcpStream::connect(broker).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // Producer id → records of its open transaction.
    let mut pending: HashMap<i64, Vec<LogRecord>> = HashMap::new();
    let mut log = PartitionLog::default();
    let mut next = 0i64;
    let mut stalls = 0;
    loop {
        let (bytes, high_watermark) = fetch(&mut stream, topic, partition, next);
        let mut c = Cursor {
            bytes: &bytes,
            at: 0,
        };
        let before = next;
        while c.remaining() >= 61 {
            let base_offset = c.i64();
            let length = c.i32() as usize;
            if c.remaining() < length {
                break; // a partial batch at the end of the response
            }
            let mut b = Cursor {
                bytes: c.take(length),
                at: 0,
            };
            b.i32(); // partition leader epoch
            assert_eq!(b.i8(), 2, "record batch magic");
            b.i32(); // crc
            let attributes = b.i16();
            assert_eq!(attributes & 0x7, 0, "compressed batches are not read");
            let transactional = attributes & 0x10 != 0;
            let control = attributes & 0x20 != 0;
            let last_offset_delta = b.i32();
            b.i64();
            b.i64();
            let producer = b.i64();
            let producer_epoch = b.i16();
            b.i32();
            let count = b.i32();
            for _ in 0..count {
                let _len = b.varlong();
                b.i8();
                b.varlong(); // timestamp delta
                let offset = base_offset + b.varlong();
                let key_len = b.varlong();
                let key = (key_len >= 0).then(|| b.take(key_len as usize).to_vec());
                let value_len = b.varlong();
                let value = (value_len >= 0).then(|| b.take(value_len as usize).to_vec());
                for _ in 0..b.varlong() {
                    let k = b.varlong();
                    b.take(k.max(0) as usize);
                    let v = b.varlong();
                    b.take(v.max(0) as usize);
                }
                if control {
                    let key = key.expect("a control record has a key");
                    let kind = i16::from_be_bytes([key[2], key[3]]);
                    let ended = pending.remove(&producer).unwrap_or_default();
                    log.markers
                        .push((offset, producer, producer_epoch, kind == 1));
                    match kind {
                        1 => log.committed.extend(ended),
                        0 => log.aborted.extend(ended),
                        other => panic!("unknown control record type {other}"),
                    }
                    continue;
                }
                let record = LogRecord {
                    offset,
                    producer: transactional.then_some((producer, producer_epoch)),
                    value,
                };
                if transactional {
                    pending.entry(producer).or_default().push(record);
                } else {
                    log.committed.push(record);
                }
            }
            next = base_offset + i64::from(last_offset_delta) + 1;
        }
        if next == before {
            if next >= high_watermark {
                break;
            }
            // The broker may report a high watermark a moment before the record below it
            // (a transaction marker being appended) can be fetched: ask again.
            stalls += 1;
            assert!(
                stalls < 100,
                "{topic}/{partition}: the log stops at offset {next} below the high watermark {high_watermark}"
            );
            std::thread::sleep(Duration::from_millis(20));
        } else {
            stalls = 0;
        }
    }
    log.open = pending.into_values().flatten().collect();
    log.committed.sort_by_key(|r| r.offset);
    log.aborted.sort_by_key(|r| r.offset);
    log.open.sort_by_key(|r| r.offset);
    log
}
