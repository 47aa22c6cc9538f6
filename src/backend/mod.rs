//! Object storage: the only module that touches `object_store`.
//!
//! The bucket is the source of truth: blocks are written here and a block exists for the
//! rest of vivace only once its `meta.json` does.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};

pub mod cas;
mod cloud;
/// The storage conformance suite; public so the integration tests run it on real S3.
#[doc(hidden)]
pub mod conformance;
/// Fault injection for tests (`storage.trace.fault_injection`, off by default).
pub mod faulty;
pub mod lease;
mod local;
pub(crate) mod scratch;

pub use local::SyncLog;

/// Objects larger than this are uploaded in parts (by every backend, so tests exercise it).
const MULTIPART_THRESHOLD: usize = 16 * 1024 * 1024;
/// Parts of one multipart upload in flight at once.
const MULTIPART_CONCURRENCY: usize = 4;
/// Ranges of one `get_ranges` call fetched at once from a remote bucket.
const RANGE_CONCURRENCY: usize = 8;
/// On a remote bucket, asked ranges closer than this are fetched as one GET. A trace lookup
/// asks for ~130 page ranges of one file; merged at 64 KiB they are ~11 GETs reading
/// ~1.9 MB instead of 129 GETs reading 150 KB (measured on SeaweedFS), and a GET's latency
/// costs far more than 64 KiB of transfer. `object_store`'s own merging (1 MiB) would pull
/// whole row groups.
const REMOTE_RANGE_GAP: u64 = 64 * 1024;

use crate::config::{BackendKind, TraceStorageConfig};
use crate::metrics::BackendRequests;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("object {0} not found")]
    NotFound(String),
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error("cannot set up backend: {0}")]
    Setup(String),
}

/// A bucket with the few operations vivace needs.
#[derive(Clone, Debug)]
pub struct Backend {
    store: Arc<dyn ObjectStore>,
    description: String,
    /// Size of one part of a multipart upload.
    part_size: usize,
    /// Remote buckets fetch each asked range on its own (concurrently) instead of letting
    /// `object_store` merge ranges up to 1 MiB apart, which would pull whole row groups.
    split_ranges: bool,
    /// Requests sent to the store, by operation; shared by every clone.
    requests: Arc<BackendRequests>,
    /// Set for the local-filesystem bucket, whose puts are fsynced before they return.
    local: Option<local::LocalRoot>,
}

impl Backend {
    pub fn from_config(cfg: &TraceStorageConfig) -> Result<Self, BackendError> {
        // Test-only: wrap the configured store in the fault injector (see faulty.rs).
        if let Some(f) = &cfg.fault_injection {
            let plain = TraceStorageConfig {
                fault_injection: None,
                ..cfg.clone()
            };
            return faulty::from_config(Self::from_config(&plain)?, f);
        }
        match cfg.backend {
            BackendKind::Local => {
                std::fs::create_dir_all(&cfg.local.path).map_err(|e| {
                    BackendError::Setup(format!("{}: {e}", cfg.local.path.display()))
                })?;
                let fs = object_store::local::LocalFileSystem::new_with_prefix(&cfg.local.path)?;
                Ok(Self {
                    store: Arc::new(fs),
                    description: format!("local:{}", cfg.local.path.display()),
                    part_size: cloud::DEFAULT_PART_SIZE,
                    requests: Arc::default(),
                    split_ranges: false,
                    local: Some(local::LocalRoot {
                        root: cfg.local.path.clone(),
                        log: None,
                        link_files: true,
                    }),
                })
            }
            BackendKind::Memory => Ok(Self::memory()),
            BackendKind::S3 => Ok(Self::remote(cloud::s3(&cfg.s3)?)),
            BackendKind::Gcs => Ok(Self::remote(cloud::gcs(&cfg.gcs)?)),
            BackendKind::Azure => Ok(Self::remote(cloud::azure(&cfg.azure)?)),
        }
    }

    fn remote(b: cloud::Built) -> Self {
        Self {
            store: b.store,
            description: b.description,
            part_size: b.part_size,
            requests: Arc::default(),
            split_ranges: true,
            local: None,
        }
    }

    /// An in-memory bucket, for unit tests.
    pub fn memory() -> Self {
        Self {
            store: Arc::new(object_store::memory::InMemory::new()),
            description: "memory".into(),
            part_size: cloud::DEFAULT_PART_SIZE,
            requests: Arc::default(),
            split_ranges: false,
            local: None,
        }
    }

    pub fn description(&self) -> &str {
        &self.description
    }

    /// Counts this backend's requests (and its clones') into `counters`, e.g. the
    /// process's `Metrics::backend_requests`.
    pub fn counting_into(mut self, counters: Arc<BackendRequests>) -> Self {
        self.requests = counters;
        self
    }

    /// Test hook: records every fsync the local bucket issues into `log` (no effect on
    /// other buckets), so a test can check syncs happen before a commit point.
    pub fn recording_syncs(mut self, log: SyncLog) -> Self {
        if let Some(l) = &mut self.local {
            l.log = Some(log);
        }
        self
    }

    /// On the local bucket, fsyncs a just-written object and its directories.
    async fn make_durable(&self, key: &str) -> Result<(), BackendError> {
        match &self.local {
            Some(l) => l.sync_object(key).await,
            None => Ok(()),
        }
    }

    /// Requests sent so far, by operation.
    pub fn requests(&self) -> &BackendRequests {
        &self.requests
    }

    /// How many requests `get_ranges(_, ranges)` sends: one per group of nearby non-empty
    /// ranges on a remote bucket, one in all on local and memory stores.
    pub fn requests_for_ranges(&self, ranges: &[Range<u64>]) -> u64 {
        if self.split_ranges {
            let wanted: Vec<Range<u64>> =
                ranges.iter().filter(|r| !r.is_empty()).cloned().collect();
            merge_ranges(&wanted, REMOTE_RANGE_GAP).0.len() as u64
        } else {
            u64::from(ranges.iter().any(|r| !r.is_empty()))
        }
    }

    /// Writes (or replaces) one object. Large objects go up as a multipart upload: a failed
    /// part is retried on its own, and a half-written object never becomes visible.
    pub async fn put(&self, key: &str, data: Bytes) -> Result<(), BackendError> {
        let path = ObjectPath::from(key);
        if data.len() <= MULTIPART_THRESHOLD {
            self.requests.put.inc();
            self.store.put(&path, PutPayload::from_bytes(data)).await?;
            return self.make_durable(key).await;
        }
        // Create, one request per part, complete.
        let parts = data.len().div_ceil(self.part_size.max(1)) as u64;
        self.requests.put.add(parts + 2);
        let upload = self.store.put_multipart(&path).await?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, self.part_size);
        let mut off = 0;
        while off < data.len() {
            if let Err(e) = w.wait_for_capacity(MULTIPART_CONCURRENCY).await {
                let _ = w.abort().await;
                return Err(e.into());
            }
            let end = (off + self.part_size).min(data.len());
            w.put(data.slice(off..end));
            off = end;
        }
        w.finish().await?;
        self.make_durable(key).await
    }

    /// [`Backend::put`] of a local file's contents, read one part at a time, so an object
    /// of any size costs `MULTIPART_CONCURRENCY` parts of memory. Small files go up in one
    /// PUT; a read error aborts the multipart upload (nothing becomes visible). The local
    /// bucket hard-links the file instead when it can (the caller must not change it
    /// afterwards; deleting it is fine).
    pub async fn put_file(&self, key: &str, file: &std::path::Path) -> Result<(), BackendError> {
        use tokio::io::AsyncReadExt;
        let io = |e: std::io::Error| {
            BackendError::Store(object_store::Error::Generic {
                store: "local file",
                source: format!("{}: {e}", file.display()).into(),
            })
        };
        if let Some(local) = &self.local {
            if local.link_file(key, file).await? {
                self.requests.put.inc();
                return self.make_durable(key).await;
            }
        }
        let mut f = tokio::fs::File::open(file).await.map_err(io)?;
        let len = f.metadata().await.map_err(io)?.len();
        if len <= MULTIPART_THRESHOLD as u64 {
            let mut data = Vec::with_capacity(len as usize);
            f.read_to_end(&mut data).await.map_err(io)?;
            return self.put(key, data.into()).await;
        }
        let path = ObjectPath::from(key);
        let part_size = self.part_size.max(1);
        // Create, one request per part, complete.
        self.requests.put.add(len.div_ceil(part_size as u64) + 2);
        let upload = self.store.put_multipart(&path).await?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, part_size);
        let mut left = len;
        while left > 0 {
            if let Err(e) = w.wait_for_capacity(MULTIPART_CONCURRENCY).await {
                let _ = w.abort().await;
                return Err(e.into());
            }
            let n = left.min(part_size as u64) as usize;
            let mut part = vec![0u8; n];
            if let Err(e) = f.read_exact(&mut part).await {
                let _ = w.abort().await;
                return Err(io(e));
            }
            w.put(part.into());
            left -= n as u64;
        }
        w.finish().await?;
        self.make_durable(key).await
    }

    pub async fn get(&self, key: &str) -> Result<Bytes, BackendError> {
        let path = ObjectPath::from(key);
        self.requests.get.inc();
        match self.store.get(&path).await {
            Ok(r) => Ok(r.bytes().await?),
            Err(object_store::Error::NotFound { .. }) => Err(BackendError::NotFound(key.into())),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, BackendError> {
        let path = ObjectPath::from(key);
        self.requests.get_range.inc();
        match self.store.get_range(&path, range).await {
            Ok(b) => Ok(b),
            Err(object_store::Error::NotFound { .. }) => Err(BackendError::NotFound(key.into())),
            Err(e) => Err(e.into()),
        }
    }

    /// Several ranges of one object, in the order asked (an empty range reads as empty
    /// bytes on every store). Local and memory stores may merge nearby ranges; remote
    /// buckets get one ranged GET per group of ranges closer than `REMOTE_RANGE_GAP`,
    /// several at once.
    pub async fn get_ranges(
        &self,
        key: &str,
        ranges: &[Range<u64>],
    ) -> Result<Vec<Bytes>, BackendError> {
        let path = ObjectPath::from(key);
        let wanted: Vec<Range<u64>> = ranges.iter().filter(|r| !r.is_empty()).cloned().collect();
        self.requests
            .get_range
            .add(self.requests_for_ranges(&wanted));
        let got = if self.split_ranges {
            let (merged, parts) = merge_ranges(&wanted, REMOTE_RANGE_GAP);
            futures::stream::iter(merged.clone())
                .map(|r| self.store.get_range(&path, r))
                .buffered(RANGE_CONCURRENCY)
                .try_collect::<Vec<_>>()
                .await
                .map(|fetched| {
                    // Zero-copy slices of the merged reads.
                    parts
                        .iter()
                        .zip(&wanted)
                        .map(|(&i, r)| {
                            let base = merged[i].start;
                            let (s, e) = ((r.start - base) as usize, (r.end - base) as usize);
                            let b = &fetched[i];
                            b.slice(s.min(b.len())..e.min(b.len()))
                        })
                        .collect()
                })
        } else {
            self.store.get_ranges(&path, &wanted).await
        };
        match got {
            Ok(got) => {
                let mut got = got.into_iter();
                Ok(ranges
                    .iter()
                    .map(|r| {
                        if r.is_empty() {
                            Bytes::new()
                        } else {
                            got.next().unwrap_or_default()
                        }
                    })
                    .collect())
            }
            Err(object_store::Error::NotFound { .. }) => Err(BackendError::NotFound(key.into())),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn delete(&self, key: &str) -> Result<(), BackendError> {
        self.requests.delete.inc();
        match self.store.delete(&ObjectPath::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The names directly below `prefix` that are "folders" (tenants, block IDs).
    pub async fn list_dirs(&self, prefix: Option<&str>) -> Result<Vec<String>, BackendError> {
        let p = prefix.map(ObjectPath::from);
        self.requests.list.inc();
        let listing = self.store.list_with_delimiter(p.as_ref()).await?;
        Ok(listing
            .common_prefixes
            .into_iter()
            .filter_map(|p| p.filename().map(str::to_owned))
            .collect())
    }

    /// Every object key below `prefix` with its last-modified time.
    pub async fn list_with_times(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, std::time::SystemTime)>, BackendError> {
        self.requests.list.inc();
        let p = ObjectPath::from(prefix);
        let metas: Vec<_> = self.store.list(Some(&p)).try_collect().await?;
        Ok(metas
            .into_iter()
            .map(|m| (m.location.to_string(), m.last_modified.into()))
            .collect())
    }

    /// Every object key below `prefix`.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, BackendError> {
        let p = ObjectPath::from(prefix);
        self.requests.list.inc();
        let metas: Vec<_> = self.store.list(Some(&p)).try_collect().await?;
        Ok(metas.into_iter().map(|m| m.location.to_string()).collect())
    }
}

/// Groups ranges whose gaps are below `gap` (in any order; overlaps allowed): the merged
/// ranges, and for each input range the index of the merged range holding it.
fn merge_ranges(ranges: &[Range<u64>], gap: u64) -> (Vec<Range<u64>>, Vec<usize>) {
    let mut order: Vec<usize> = (0..ranges.len()).collect();
    order.sort_unstable_by_key(|&i| ranges[i].start);
    let mut merged: Vec<Range<u64>> = Vec::new();
    let mut parts = vec![0; ranges.len()];
    for i in order {
        let r = &ranges[i];
        match merged.last_mut() {
            Some(m) if r.start <= m.end.saturating_add(gap) => m.end = m.end.max(r.end),
            _ => merged.push(r.clone()),
        }
        parts[i] = merged.len() - 1;
    }
    (merged, parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_round_trip_and_listing() {
        let b = Backend::memory();
        b.put("t1/blk1/meta.json", Bytes::from_static(b"{}"))
            .await
            .unwrap();
        b.put("t1/blk2/data.parquet", Bytes::from_static(b"0123456789"))
            .await
            .unwrap();
        b.put("t2/blk3/meta.json", Bytes::from_static(b"{}"))
            .await
            .unwrap();
        let mut tenants = b.list_dirs(None).await.unwrap();
        tenants.sort();
        assert_eq!(tenants, vec!["t1", "t2"]);
        let mut blocks = b.list_dirs(Some("t1")).await.unwrap();
        blocks.sort();
        assert_eq!(blocks, vec!["blk1", "blk2"]);
        assert_eq!(
            b.get_range("t1/blk2/data.parquet", 2..5).await.unwrap(),
            Bytes::from_static(b"234")
        );
        assert_eq!(
            b.get_ranges("t1/blk2/data.parquet", &[7..9, 0..2, 2..3])
                .await
                .unwrap(),
            vec![
                Bytes::from_static(b"78"),
                Bytes::from_static(b"01"),
                Bytes::from_static(b"2")
            ]
        );
        assert!(matches!(
            b.get_ranges("t1/nope", &[0..1, 2..3]).await,
            Err(BackendError::NotFound(_))
        ));
        assert!(matches!(
            b.get("t1/nope").await,
            Err(BackendError::NotFound(_))
        ));
        b.delete("t1/blk1/meta.json").await.unwrap();
        b.delete("t1/blk1/meta.json").await.unwrap();
        assert_eq!(b.list("t1").await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn counts_requests_by_operation() {
        let shared = Arc::new(BackendRequests::default());
        let b = Backend::memory().counting_into(shared.clone());
        let b2 = b.clone();
        b.put("t/k", Bytes::from_static(b"0123456789"))
            .await
            .unwrap();
        b2.get("t/k").await.unwrap();
        b2.get_range("t/k", 0..2).await.unwrap();
        b.get_ranges("t/k", &[0..1, 3..3, 4..6]).await.unwrap();
        b.list("t").await.unwrap();
        b.list_dirs(None).await.unwrap();
        b.delete("t/k").await.unwrap();
        let by_op = shared.by_operation();
        assert_eq!(
            by_op,
            [
                ("get", 1),
                ("get_range", 2),
                ("put", 1),
                ("list", 2),
                ("delete", 1)
            ]
        );
        let split = Backend {
            split_ranges: true,
            ..Backend::memory()
        };
        // Nearby ranges are one GET on a remote bucket, distant ones are not.
        assert_eq!(split.requests_for_ranges(&[0..1, 3..3, 4..6]), 1);
        assert_eq!(
            split.requests_for_ranges(&[0..1, 3..3, REMOTE_RANGE_GAP * 2..REMOTE_RANGE_GAP * 3]),
            2
        );
        assert_eq!(b.requests_for_ranges(&[0..1, 3..3, 4..6]), 1);
    }

    #[test]
    fn merge_ranges_groups_nearby_and_keeps_order() {
        let (m, parts) = merge_ranges(&[100..110, 0..10, 15..20, 5000..5001, 8..30], 10);
        assert_eq!(m, vec![0..30, 100..110, 5000..5001]);
        assert_eq!(parts, vec![1, 0, 0, 2, 0]);
    }

    #[tokio::test]
    async fn put_file_uploads_small_and_multipart_files() {
        let dir = tempfile::tempdir().unwrap();
        let bucket = tempfile::tempdir().unwrap();
        let local = Backend::from_config(&TraceStorageConfig {
            local: crate::config::LocalConfig {
                path: bucket.path().to_owned(),
            },
            ..Default::default()
        })
        .unwrap();
        let small: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        let big: Vec<u8> = (0..MULTIPART_THRESHOLD as u32 + 123_457)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        let (ps, pb) = (dir.path().join("small"), dir.path().join("big"));
        std::fs::write(&ps, &small).unwrap();
        std::fs::write(&pb, &big).unwrap();
        // Through the store (as with faults injected): the local bucket's copying path.
        let copying = local.clone().with_faults(faulty::Faults::new());
        for b in [local, copying, Backend::memory()] {
            // Small parts: a file just over the threshold is several parts, the last short.
            let shared = Arc::new(BackendRequests::default());
            let b = Backend {
                part_size: 5 * 1024 * 1024,
                ..b
            }
            .counting_into(shared.clone());
            let linked = b.local.as_ref().is_some_and(|l| l.link_files);
            b.put_file("t/small", &ps).await.unwrap();
            assert_eq!(shared.put.get(), 1);
            b.put_file("t/big", &pb).await.unwrap();
            if linked {
                // The local bucket links the file: one put, and no second copy on disk.
                use std::os::unix::fs::MetadataExt;
                assert_eq!(shared.put.get(), 2);
                assert_eq!(std::fs::metadata(&pb).unwrap().nlink(), 2);
                // A retried put of the same key replaces the object.
                b.put_file("t/big", &pb).await.unwrap();
                assert_eq!(std::fs::metadata(&pb).unwrap().nlink(), 2);
            } else {
                // 17 MiB in 5 MiB parts: 4 parts, plus create and complete.
                assert_eq!(shared.put.get(), 1 + 4 + 2);
            }
            assert_eq!(b.get("t/small").await.unwrap(), Bytes::from(small.clone()));
            assert_eq!(b.get("t/big").await.unwrap(), Bytes::from(big.clone()));
            // A missing file is an error and writes nothing.
            let missing = b.put_file("t/none", &dir.path().join("none")).await;
            assert!(missing.is_err());
            assert!(matches!(
                b.get("t/none").await,
                Err(BackendError::NotFound(_))
            ));
        }
    }

    #[tokio::test]
    async fn conformance_memory() {
        conformance::run(&Backend::memory()).await;
    }

    /// The per-range read path of remote buckets, without a network.
    #[tokio::test]
    async fn conformance_memory_split_ranges() {
        let b = Backend {
            split_ranges: true,
            ..Backend::memory()
        };
        conformance::run(&b).await;
    }

    #[tokio::test]
    async fn conformance_local() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = TraceStorageConfig {
            local: crate::config::LocalConfig {
                path: dir.path().to_owned(),
            },
            ..Default::default()
        };
        conformance::run(&Backend::from_config(&cfg).unwrap()).await;
    }

    #[tokio::test]
    async fn local_backend_writes_files() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = TraceStorageConfig {
            local: crate::config::LocalConfig {
                path: dir.path().to_owned(),
            },
            ..Default::default()
        };
        let b = Backend::from_config(&cfg).unwrap();
        b.put("single-tenant/x/meta.json", Bytes::from_static(b"{}"))
            .await
            .unwrap();
        assert!(dir.path().join("single-tenant/x/meta.json").exists());
    }
}
