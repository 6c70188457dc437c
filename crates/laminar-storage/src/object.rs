//! A [`Storage`] over an `object_store` store, for checkpoint files: a local path
//! (`file:///dir`), memory (`memory://`, tests), or, with the `s3` feature, any
//! S3-compatible service (`s3://bucket/prefix`).
//!
//! ## Durability contract on an object store
//! A `put` replaces an object whole and is durable when it returns, so [`Storage::sync`]
//! and [`Storage::sync_dir`] have nothing left to do. A rename is a copy then a delete:
//! the checkpoint store only renames a finished temporary manifest or `LATEST` onto its
//! name, so a crash between the two leaves the complete object under both names, never a
//! partial one. Objects cannot be appended to or truncated: the write-ahead log stays in
//! the local storage directory, and those calls fail with a clear error.
//!
//! The store's API is asynchronous; calls run on a small runtime owned by the backend and
//! the caller waits, so they work from any thread, including one inside another runtime.

use std::future::Future;
use std::sync::Arc;

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::backend::Storage;
use crate::error::{Result, StorageError};

/// See the module docs.
pub struct ObjectStorage {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    /// The URL it was opened from (for error messages; credentials are never part of it).
    location: String,
    /// Always `Some` until dropped (taken out to shut it down without blocking).
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for ObjectStorage {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics inside an async context (a database
        // dropped in async code): let it wind down in the background instead.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl std::fmt::Debug for ObjectStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStorage")
            .field("location", &self.location)
            .finish()
    }
}

fn failed(operation: &'static str, path: &str, e: impl std::fmt::Display) -> StorageError {
    StorageError::Io {
        operation,
        path: path.to_string(),
        reason: e.to_string(),
    }
}

impl ObjectStorage {
    /// Opens the store a URL names: `file:///absolute/dir`, `memory://`, or (feature `s3`)
    /// `s3://bucket/prefix`. `options` configure the store (for S3 for example
    /// `aws_endpoint`, `aws_region`, `aws_access_key_id`, `aws_secret_access_key`,
    /// `aws_allow_http`); [`ObjectStorage::options_from_env`] reads them from `AWS_*`
    /// environment variables.
    pub fn open<I, K, V>(url: &str, options: I) -> Result<ObjectStorage>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: Into<String>,
    {
        let parsed = url::Url::parse(url).map_err(|e| {
            failed(
                "parse the checkpoint store URL",
                url,
                format!("{e} (expected e.g. file:///var/lib/laminar or s3://bucket/prefix)"),
            )
        })?;
        if parsed.scheme() == "file" {
            // The local store writes below an existing directory only.
            let dir = parsed
                .to_file_path()
                .map_err(|_| failed("open", url, "not an absolute local path"))?;
            std::fs::create_dir_all(&dir).map_err(|e| StorageError::io("create", &dir, e))?;
        }
        let (store, prefix) = object_store::parse_url_opts(&parsed, options).map_err(|e| {
            let hint = if parsed.scheme() == "s3" && !cfg!(feature = "s3") {
                " (this build has no S3 support: build with the `s3` feature)"
            } else {
                ""
            };
            failed("open the checkpoint store", url, format!("{e}{hint}"))
        })?;
        Self::new(Arc::from(store), prefix, url)
    }

    /// Store options from the environment: the `AWS_*` variables the S3 store knows,
    /// lower-cased (`AWS_ENDPOINT` → `aws_endpoint`); others (such as `AWS_CA_BUNDLE`) are
    /// left alone. Empty without the `s3` feature.
    pub fn options_from_env() -> Vec<(String, String)> {
        #[cfg(feature = "s3")]
        {
            use std::str::FromStr;
            std::env::vars()
                .filter(|(k, _)| k.starts_with("AWS_"))
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .filter(|(k, _)| object_store::aws::AmazonS3ConfigKey::from_str(k).is_ok())
                .collect()
        }
        #[cfg(not(feature = "s3"))]
        Vec::new()
    }

    /// A backend over `store`, with every path below `prefix`.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        prefix: ObjectPath,
        location: &str,
    ) -> Result<ObjectStorage> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("laminar-object-store")
            .enable_all()
            .build()
            .map_err(|e| failed("start the object store runtime for", location, e))?;
        Ok(ObjectStorage {
            store,
            prefix,
            location: strip_credentials(location),
            runtime: Some(runtime),
        })
    }

    fn object(&self, path: &str) -> ObjectPath {
        let mut full = self.prefix.clone();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            full = full.join(part);
        }
        full
    }

    fn describe(&self, path: &str) -> String {
        format!("{}/{path}", self.location.trim_end_matches('/'))
    }

    /// Runs `future` on the backend's runtime and waits for it.
    fn run<T: Send + 'static>(
        &self,
        future: impl Future<Output = T> + Send + 'static,
    ) -> std::result::Result<T, String> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let runtime = self
            .runtime
            .as_ref()
            .ok_or_else(|| "the object store runtime is shut down".to_string())?;
        runtime.spawn(async move {
            let _ = tx.send(future.await);
        });
        rx.recv()
            .map_err(|_| "the object store task stopped".to_string())
    }

    fn unsupported(&self, operation: &'static str, path: &str) -> StorageError {
        failed(
            operation,
            &self.describe(path),
            "object stores hold whole objects only (the write-ahead log stays in the local storage directory)",
        )
    }
}

/// The URL without any `user:password@` part.
fn strip_credentials(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        Err(_) => url.to_string(),
    }
}

impl Storage for ObjectStorage {
    fn append(&self, path: &str, _data: &[u8]) -> Result<()> {
        Err(self.unsupported("append to", path))
    }

    fn write(&self, path: &str, data: &[u8]) -> Result<()> {
        let (store, object) = (self.store.clone(), self.object(path));
        let payload = PutPayload::from(data.to_vec());
        self.run(async move { store.put(&object, payload).await })
            .and_then(|r| r.map_err(|e| e.to_string()))
            .map(|_| ())
            .map_err(|e| failed("write", &self.describe(path), e))
    }

    fn read(&self, path: &str) -> Result<Vec<u8>> {
        let (store, object) = (self.store.clone(), self.object(path));
        let result = self
            .run(async move {
                match store.get(&object).await {
                    Ok(got) => got.bytes().await.map(|b| Some(b.to_vec())),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(e),
                }
            })
            .and_then(|r| r.map_err(|e| e.to_string()))
            .map_err(|e| failed("read", &self.describe(path), e))?;
        result.ok_or_else(|| StorageError::NotFound(self.describe(path)))
    }

    fn sync(&self, _path: &str) -> Result<()> {
        Ok(())
    }

    fn sync_dir(&self, _dir: &str) -> Result<()> {
        Ok(())
    }

    fn rename(&self, from: &str, to: &str) -> Result<()> {
        let (store, a, b) = (self.store.clone(), self.object(from), self.object(to));
        self.run(async move { store.rename(&a, &b).await })
            .and_then(|r| r.map_err(|e| e.to_string()))
            .map_err(|e| failed("rename", &self.describe(from), e))
    }

    fn delete(&self, path: &str) -> Result<()> {
        let (store, object) = (self.store.clone(), self.object(path));
        self.run(async move {
            match store.delete(&object).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(e),
            }
        })
        .and_then(|r| r.map_err(|e| e.to_string()))
        .map_err(|e| failed("delete", &self.describe(path), e))
    }

    fn list(&self, dir: &str) -> Result<Vec<String>> {
        let (store, object) = (self.store.clone(), self.object(dir));
        let listed = self
            .run(async move { store.list_with_delimiter(Some(&object)).await })
            .and_then(|r| r.map_err(|e| e.to_string()))
            .map_err(|e| failed("list", &self.describe(dir), e))?;
        let mut names: Vec<String> = listed
            .objects
            .iter()
            .filter_map(|o| o.location.filename().map(str::to_string))
            .collect();
        names.sort();
        Ok(names)
    }

    fn truncate(&self, path: &str, _len: u64) -> Result<()> {
        Err(self.unsupported("truncate", path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::CheckpointStore;

    fn stores() -> Vec<(ObjectStorage, Option<tempfile::TempDir>)> {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}/checkpoints", dir.path().display());
        vec![
            (
                ObjectStorage::open("memory://", Vec::<(String, String)>::new()).unwrap(),
                None,
            ),
            (
                ObjectStorage::open(&url, Vec::<(String, String)>::new()).unwrap(),
                Some(dir),
            ),
        ]
    }

    #[test]
    fn files_round_trip_and_missing_ones_are_not_found() {
        for (s, _dir) in stores() {
            s.write("a/b", b"hello").unwrap();
            s.sync("a/b").unwrap();
            assert_eq!(s.read("a/b").unwrap(), b"hello");
            s.rename("a/b", "a/c").unwrap();
            assert!(matches!(s.read("a/b"), Err(StorageError::NotFound(_))));
            s.write("a/d", b"x").unwrap();
            assert_eq!(s.list("a").unwrap(), vec!["c", "d"]);
            assert!(s.list("missing").unwrap().is_empty());
            s.delete("a/c").unwrap();
            s.delete("a/c").unwrap();
            assert_eq!(s.list("a").unwrap(), vec!["d"]);
            let append = s.append("wal/1", b"x").unwrap_err().to_string();
            assert!(append.contains("write-ahead log stays"), "{append}");
            assert!(s.truncate("a/d", 0).is_err());
        }
    }

    #[test]
    fn checkpoints_are_written_loaded_and_collected_through_an_object_store() {
        for (s, _dir) in stores() {
            let storage: Arc<dyn Storage> = Arc::new(s);
            let store = CheckpointStore::new(storage.clone(), "", 2);
            for epoch in 1..=4u64 {
                let content = format!("state of {epoch}");
                store
                    .write(epoch, &[("state", content.as_bytes())], &[], &[])
                    .unwrap();
            }
            let loaded = store.load_latest().unwrap().expect("a checkpoint");
            assert_eq!(loaded.manifest.epoch, 4);
            assert_eq!(loaded.files["state"], b"state of 4");
            store.gc().unwrap();
            let manifests: Vec<String> = storage
                .list("")
                .unwrap()
                .into_iter()
                .filter(|n| n.starts_with("MANIFEST-"))
                .collect();
            assert_eq!(manifests.len(), 2, "{manifests:?}");
            // A damaged newest checkpoint falls back to the previous one.
            let newest = loaded.manifest.files[0].path.clone();
            storage.write(&newest, b"damaged").unwrap();
            let loaded = store.load_latest().unwrap().expect("the previous one");
            assert_eq!(loaded.manifest.epoch, 3);
            assert_eq!(loaded.skipped.len(), 1);
        }
    }

    #[test]
    fn unknown_or_unbuilt_schemes_are_clear_errors() {
        let e = ObjectStorage::open("nope://x", Vec::<(String, String)>::new()).unwrap_err();
        assert!(e.to_string().contains("nope://x"), "{e}");
        let e = ObjectStorage::open("not a url", Vec::<(String, String)>::new()).unwrap_err();
        assert!(e.to_string().contains("expected e.g."), "{e}");
        assert_eq!(
            strip_credentials("s3://key:secret@bucket/p"),
            "s3://bucket/p"
        );
    }
}
