use std::sync::Arc;

use super::*;
use crate::backend::{FaultyMemory, LocalFs};

fn payload(i: u64) -> Vec<u8> {
    format!("record {i} {}", "x".repeat((i % 7) as usize)).into_bytes()
}

fn small() -> WalOptions {
    WalOptions {
        segment_bytes: 200,
        salvage: false,
    }
}

#[test]
fn records_survive_reopen_across_segments_on_local_files() {
    let dir = tempfile::tempdir().unwrap();
    let storage: Arc<dyn Storage> = Arc::new(LocalFs::new(dir.path()).unwrap());
    let (mut wal, recovery) = Wal::open(storage.clone(), "wal", small()).unwrap();
    assert!(recovery.records.is_empty());
    for i in 1..=100 {
        assert_eq!(wal.append(i / 10, &payload(i)).unwrap(), i);
        if i % 9 == 0 {
            wal.sync().unwrap();
        }
    }
    wal.sync().unwrap();
    assert!(wal.segment_count() > 5);
    drop(wal);
    let (mut wal, recovery) = Wal::open(storage.clone(), "wal", small()).unwrap();
    assert_eq!(recovery.torn_tail, None);
    assert_eq!(recovery.records.len(), 100);
    for (i, r) in recovery.records.iter().enumerate() {
        let i = i as u64 + 1;
        assert_eq!((r.seq, r.epoch, r.payload.clone()), (i, i / 10, payload(i)));
    }
    assert_eq!(wal.append(11, b"more").unwrap(), 101);
    wal.sync().unwrap();
    // Segments whose records are all below epoch 5 go.
    let before = wal.segment_count();
    let deleted = wal.delete_before_epoch(5).unwrap();
    assert!(deleted > 0 && wal.segment_count() == before - deleted);
    let (_, recovery) = Wal::open(storage, "wal", small()).unwrap();
    assert!(recovery.records.first().unwrap().epoch >= 4);
    assert_eq!(recovery.records.last().unwrap().seq, 101);
}

/// Appends `n` records, syncing after every `every`; returns the count acknowledged durable
/// before the storage crashed (or all).
fn write_until_crash(wal: &mut Wal, n: u64, every: u64) -> u64 {
    let mut durable = 0;
    for i in 1..=n {
        if wal.append(i, &payload(i)).is_err() {
            return durable;
        }
        if i % every == 0 {
            if wal.sync().is_err() {
                return durable;
            }
            durable = i;
        }
    }
    if wal.sync().is_ok() {
        durable = n;
    }
    durable
}

/// Crash at every sync point, with and without a torn last write: recovery returns exactly a
/// prefix of what was appended, containing everything acknowledged durable — never an error,
/// never a wrong record.
#[test]
fn crash_at_every_sync_recovers_a_durable_prefix() {
    let mut sync_points = 0;
    loop {
        sync_points += 1;
        for torn in [None, Some(1), Some(5), Some(30), Some(1000)] {
            let mem = Arc::new(FaultyMemory::new());
            let storage: Arc<dyn Storage> = mem.clone();
            let (mut wal, _) = Wal::open(storage.clone(), "wal", small()).unwrap();
            mem.crash_at_sync(sync_points);
            let acknowledged = write_until_crash(&mut wal, 40, 3);
            let crashed = acknowledged < 40;
            mem.crash();
            mem.restart(torn);
            let (mut wal, recovery) = Wal::open(storage.clone(), "wal", small())
                .unwrap_or_else(|e| panic!("sync {sync_points}, torn {torn:?}: {e}"));
            let got = recovery.records.len() as u64;
            assert!(
                got >= acknowledged,
                "sync {sync_points}: lost durable records"
            );
            for (i, r) in recovery.records.iter().enumerate() {
                assert_eq!(r.payload, payload(i as u64 + 1));
            }
            // The log continues after the recovered prefix.
            assert_eq!(wal.append(99, b"after").unwrap(), got + 1);
            wal.sync().unwrap();
            if !crashed {
                return;
            }
        }
    }
}

fn three_records(mem: &Arc<FaultyMemory>) -> (String, Vec<usize>) {
    let storage: Arc<dyn Storage> = mem.clone();
    let (mut wal, _) = Wal::open(storage, "wal", WalOptions::default()).unwrap();
    let mut ends = Vec::new();
    let mut end = 0;
    for i in 1..=3 {
        wal.append(7, &payload(i)).unwrap();
        end += HEADER + payload(i).len();
        ends.push(end);
    }
    wal.sync().unwrap();
    (segment_name("wal", 1), ends)
}

/// A cut at every byte of the log (a torn write of any length) recovers the complete records
/// before the cut and reports the torn tail.
#[test]
fn truncation_at_every_byte_recovers_the_complete_records() {
    let mem = Arc::new(FaultyMemory::new());
    let (path, ends) = three_records(&mem);
    let full = *ends.last().unwrap();
    for cut in 0..full {
        let mem2 = Arc::new(FaultyMemory::new());
        let (_, _) = three_records(&mem2);
        let storage: Arc<dyn Storage> = mem2.clone();
        storage.truncate(&path, cut as u64).unwrap();
        let (_, recovery) = Wal::open(storage, "wal", WalOptions::default())
            .unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        let complete = ends.iter().filter(|&&e| e <= cut).count();
        assert_eq!(recovery.records.len(), complete, "cut at {cut}");
        let at_boundary = cut == 0 || ends.contains(&cut);
        assert_eq!(recovery.torn_tail.is_some(), !at_boundary, "cut at {cut}");
    }
}

/// One flipped byte anywhere: a named corruption error, or (in the last record's payload) a
/// torn tail; never a wrong record. With salvage the records before the damage come back.
#[test]
fn a_flipped_byte_is_detected_everywhere() {
    let mem = Arc::new(FaultyMemory::new());
    let (path, ends) = three_records(&mem);
    let full = *ends.last().unwrap();
    for at in 0..full {
        let mem2 = Arc::new(FaultyMemory::new());
        three_records(&mem2);
        mem2.flip_byte(&path, at);
        let storage: Arc<dyn Storage> = mem2.clone();
        let last_payload = at >= ends[1] + HEADER;
        match Wal::open(storage.clone(), "wal", WalOptions::default()) {
            Ok((_, recovery)) => {
                assert!(last_payload, "flip at {at} went unnoticed");
                assert_eq!(recovery.records.len(), 2);
                assert!(recovery.torn_tail.is_some());
            }
            Err(StorageError::Corrupt {
                path: p, offset, ..
            }) => {
                assert_eq!(p, path);
                assert!(offset as usize <= at, "flip at {at} reported at {offset}");
                let salvage = WalOptions {
                    salvage: true,
                    ..WalOptions::default()
                };
                let (mut wal, recovery) = Wal::open(storage, "wal", salvage).unwrap();
                let intact = ends.iter().filter(|&&e| e <= at).count();
                assert!(recovery.records.len() <= intact);
                for (i, r) in recovery.records.iter().enumerate() {
                    assert_eq!(r.payload, payload(i as u64 + 1));
                }
                assert!(recovery.salvaged.is_some());
                wal.append(8, b"x").unwrap();
                wal.sync().unwrap();
            }
            Err(other) => panic!("flip at {at}: unexpected {other}"),
        }
    }
}

#[test]
fn a_failed_sync_poisons_the_log() {
    let mem = Arc::new(FaultyMemory::new());
    let storage: Arc<dyn Storage> = mem.clone();
    let (mut wal, _) = Wal::open(storage, "wal", WalOptions::default()).unwrap();
    wal.append(1, b"a").unwrap();
    mem.fail_syncs(true);
    assert!(matches!(wal.sync(), Err(StorageError::Io { .. })));
    mem.fail_syncs(false);
    // No silent retry: the log stays failed.
    assert!(wal.append(1, b"b").is_err());
    assert!(wal.sync().is_err());
}

#[test]
fn a_full_disk_fails_the_append() {
    let mem = Arc::new(FaultyMemory::new());
    mem.set_capacity(Some(100));
    let storage: Arc<dyn Storage> = mem.clone();
    let (mut wal, _) = Wal::open(storage, "wal", WalOptions::default()).unwrap();
    wal.append(1, &[0; 40]).unwrap();
    let err = wal.append(1, &[0; 40]).unwrap_err();
    assert!(err.to_string().contains("no space"), "{err}");
}

#[test]
fn a_missing_middle_segment_is_corruption() {
    let mem = Arc::new(FaultyMemory::new());
    let storage: Arc<dyn Storage> = mem.clone();
    let (mut wal, _) = Wal::open(storage.clone(), "wal", small()).unwrap();
    for i in 1..=30 {
        wal.append(1, &payload(i)).unwrap();
    }
    wal.sync().unwrap();
    let names = storage.list("wal").unwrap();
    assert!(names.len() >= 3);
    storage.delete(&format!("wal/{}", names[1])).unwrap();
    let err = Wal::open(storage.clone(), "wal", small()).unwrap_err();
    assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
    let (_, recovery) = Wal::open(
        storage,
        "wal",
        WalOptions {
            salvage: true,
            ..small()
        },
    )
    .unwrap();
    assert!(!recovery.records.is_empty() && recovery.salvaged.is_some());
}
