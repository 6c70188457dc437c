use std::sync::Arc;

use super::*;
use crate::backend::FaultyMemory;

fn store(mem: &Arc<FaultyMemory>, retain: usize) -> CheckpointStore {
    let storage: Arc<dyn Storage> = mem.clone();
    CheckpointStore::new(storage, "ckpt", retain)
}

fn meta(epoch: u64) -> Vec<(String, String)> {
    vec![(
        "source.orders.offset".to_string(),
        (epoch * 100).to_string(),
    )]
}

/// Checkpoint 1 writes a and b; checkpoint 2 rewrites a and reuses b.
fn two_checkpoints(s: &CheckpointStore) -> Manifest {
    let one = s
        .write(
            1,
            &[("a", b"state a v1"), ("b", b"state b v1")],
            &[],
            &meta(1),
        )
        .unwrap();
    let b = one.files.iter().find(|f| f.name == "b").unwrap().clone();
    s.write(2, &[("a", b"state a v2")], &[b], &meta(2)).unwrap()
}

#[test]
fn newest_checkpoint_loads_with_reused_files_and_gc_keeps_them() {
    let mem = Arc::new(FaultyMemory::new());
    let s = store(&mem, 2);
    two_checkpoints(&s);
    let loaded = s.load_latest().unwrap().unwrap();
    assert_eq!(loaded.manifest.epoch, 2);
    assert_eq!(loaded.manifest.meta, meta(2));
    assert_eq!(loaded.files["a"], b"state a v2");
    assert_eq!(loaded.files["b"], b"state b v1");
    assert!(loaded.skipped.is_empty());
    let b = loaded
        .manifest
        .files
        .iter()
        .find(|f| f.name == "b")
        .unwrap()
        .clone();
    s.write(3, &[("a", b"state a v3")], &[b], &meta(3)).unwrap();
    // Retain 2: checkpoint 1 goes, but its file b is still used by 2 and 3.
    assert_eq!(s.gc().unwrap(), 1);
    let loaded = s.load_latest().unwrap().unwrap();
    assert_eq!(loaded.manifest.epoch, 3);
    assert_eq!(loaded.files["b"], b"state b v1");
    assert!(mem.len_of("ckpt/00000000000000000001/a").is_none());
    assert!(s.load(2).is_ok());
}

/// A crash at every sync point of a checkpoint leaves the previous or the new checkpoint as
/// the newest complete one — never an error, never a mix.
#[test]
fn crash_at_every_sync_of_a_checkpoint_keeps_a_complete_one() {
    for torn in [None, Some(3)] {
        let mut point = 0;
        loop {
            point += 1;
            let mem = Arc::new(FaultyMemory::new());
            let s = store(&mem, 3);
            s.write(1, &[("a", b"one"), ("b", b"uno")], &[], &meta(1))
                .unwrap();
            mem.crash_at_sync(point);
            let finished = s
                .write(2, &[("a", b"two"), ("b", b"dos")], &[], &meta(2))
                .is_ok();
            mem.crash();
            mem.restart(torn);
            let loaded = s
                .load_latest()
                .unwrap_or_else(|e| panic!("crash at sync {point}, torn {torn:?}: {e}"))
                .expect("a checkpoint");
            let files = (&loaded.files["a"][..], &loaded.files["b"][..]);
            match loaded.manifest.epoch {
                1 => assert_eq!(files, (&b"one"[..], &b"uno"[..])),
                2 => assert_eq!(files, (&b"two"[..], &b"dos"[..])),
                other => panic!("epoch {other}"),
            }
            if finished {
                assert_eq!(loaded.manifest.epoch, 2);
                assert!(point > 4, "the checkpoint has several sync points");
                break;
            }
        }
    }
}

/// A way to damage a stored checkpoint.
type Damage = Box<dyn Fn(&FaultyMemory, &dyn Storage)>;

#[test]
fn damaged_newest_checkpoint_falls_back_with_the_reason() {
    let cases: Vec<(&str, Damage)> = vec![
        (
            "flipped manifest byte",
            Box::new(|m, _| m.flip_byte("ckpt/MANIFEST-00000000000000000002", 30)),
        ),
        (
            "flipped snapshot byte",
            Box::new(|m, _| m.flip_byte("ckpt/00000000000000000002/a", 2)),
        ),
        (
            "deleted manifest",
            Box::new(|_, s| s.delete("ckpt/MANIFEST-00000000000000000002").unwrap()),
        ),
        (
            "deleted snapshot",
            Box::new(|_, s| s.delete("ckpt/00000000000000000002/a").unwrap()),
        ),
        (
            "swapped manifests",
            Box::new(|_, s| {
                let one = s.read("ckpt/MANIFEST-00000000000000000001").unwrap();
                s.write("ckpt/MANIFEST-00000000000000000002", &one).unwrap();
            }),
        ),
    ];
    for (what, damage) in cases {
        let mem = Arc::new(FaultyMemory::new());
        let s = store(&mem, 3);
        two_checkpoints(&s);
        let storage: Arc<dyn Storage> = mem.clone();
        damage(&mem, storage.as_ref());
        let loaded = s.load_latest().unwrap().unwrap();
        assert_eq!(loaded.manifest.epoch, 1, "{what}");
        assert_eq!(loaded.files["a"], b"state a v1", "{what}");
        if what != "deleted manifest" {
            assert_eq!(loaded.skipped.len(), 1, "{what}");
            assert_eq!(loaded.skipped[0].0, 2, "{what}");
        }
    }
}

#[test]
fn no_valid_checkpoint_is_a_named_error_and_none_is_none() {
    let mem = Arc::new(FaultyMemory::new());
    let s = store(&mem, 3);
    assert!(s.load_latest().unwrap().is_none());
    s.write(1, &[("a", b"x")], &[], &[]).unwrap();
    mem.flip_byte("ckpt/00000000000000000001/a", 0);
    let err = s.load_latest().unwrap_err();
    assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("no checkpoint passes"), "{err}");
}

#[test]
fn a_full_disk_fails_the_checkpoint_and_keeps_the_previous() {
    let mem = Arc::new(FaultyMemory::new());
    let s = store(&mem, 3);
    s.write(1, &[("a", b"small")], &[], &[]).unwrap();
    mem.set_capacity(Some(400));
    let big = vec![7u8; 1000];
    assert!(s.write(2, &[("a", &big)], &[], &[]).is_err());
    mem.set_capacity(None);
    assert_eq!(s.load_latest().unwrap().unwrap().manifest.epoch, 1);
}

#[test]
fn names_with_whitespace_are_refused() {
    let mem = Arc::new(FaultyMemory::new());
    let s = store(&mem, 3);
    assert!(s.write(1, &[("a b", b"x")], &[], &[]).is_err());
    assert!(s.load_latest().unwrap().is_none());
}

/// On the local file system, collecting a checkpoint also removes its emptied directory, so
/// a long run does not leave one directory per checkpoint behind.
#[test]
fn gc_on_local_files_removes_emptied_checkpoint_directories() {
    let dir = tempfile::tempdir().unwrap();
    let fs: Arc<dyn crate::Storage> = Arc::new(crate::LocalFs::new(dir.path()).unwrap());
    let s = CheckpointStore::new(fs, "ckpt", 2);
    let mut reused = None;
    for epoch in 1..=6u64 {
        // File "base" is written once and reused by every later checkpoint.
        let written: Vec<(&str, &[u8])> = if epoch == 1 {
            vec![("base", b"base"), ("delta", b"d")]
        } else {
            vec![("delta", b"d")]
        };
        let reuse: Vec<ManifestEntry> = reused.iter().cloned().collect();
        let m = s.write(epoch, &written, &reuse, &[]).unwrap();
        reused = m.files.iter().find(|f| f.name == "base").cloned();
        s.gc().unwrap();
    }
    let mut dirs: Vec<String> = std::fs::read_dir(dir.path().join("ckpt"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    // Epoch 1 keeps its reused file; 2..4 are gone; 5 and 6 are retained.
    assert_eq!(
        dirs,
        vec![
            "00000000000000000001",
            "00000000000000000005",
            "00000000000000000006"
        ]
    );
    assert_eq!(s.load_latest().unwrap().unwrap().files["base"], b"base");
}
