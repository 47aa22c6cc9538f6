//! Object storage: the only module that touches `object_store`.
//!
//! The bucket is the source of truth: blocks are written here and a block exists for the
//! rest of vivace only once its `meta.json` does.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::config::{BackendKind, TraceStorageConfig};

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
}

impl Backend {
    pub fn from_config(cfg: &TraceStorageConfig) -> Result<Self, BackendError> {
        match cfg.backend {
            BackendKind::Local => {
                std::fs::create_dir_all(&cfg.local.path).map_err(|e| {
                    BackendError::Setup(format!("{}: {e}", cfg.local.path.display()))
                })?;
                let fs = object_store::local::LocalFileSystem::new_with_prefix(&cfg.local.path)?;
                Ok(Self {
                    store: Arc::new(fs),
                    description: format!("local:{}", cfg.local.path.display()),
                })
            }
            BackendKind::Memory => Ok(Self::memory()),
            other => Err(BackendError::Setup(format!(
                "backend {other:?} is not available in this build yet"
            ))),
        }
    }

    /// An in-memory bucket, for unit tests.
    pub fn memory() -> Self {
        Self {
            store: Arc::new(object_store::memory::InMemory::new()),
            description: "memory".into(),
        }
    }

    pub fn description(&self) -> &str {
        &self.description
    }

    pub async fn put(&self, key: &str, data: Bytes) -> Result<(), BackendError> {
        self.store
            .put(&ObjectPath::from(key), PutPayload::from_bytes(data))
            .await?;
        Ok(())
    }

    pub async fn get(&self, key: &str) -> Result<Bytes, BackendError> {
        let path = ObjectPath::from(key);
        match self.store.get(&path).await {
            Ok(r) => Ok(r.bytes().await?),
            Err(object_store::Error::NotFound { .. }) => Err(BackendError::NotFound(key.into())),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, BackendError> {
        let path = ObjectPath::from(key);
        match self.store.get_range(&path, range).await {
            Ok(b) => Ok(b),
            Err(object_store::Error::NotFound { .. }) => Err(BackendError::NotFound(key.into())),
            Err(e) => Err(e.into()),
        }
    }

    /// Several ranges of one object, in the order asked. The store may merge nearby
    /// ranges into fewer requests.
    pub async fn get_ranges(
        &self,
        key: &str,
        ranges: &[Range<u64>],
    ) -> Result<Vec<Bytes>, BackendError> {
        let path = ObjectPath::from(key);
        match self.store.get_ranges(&path, ranges).await {
            Ok(b) => Ok(b),
            Err(object_store::Error::NotFound { .. }) => Err(BackendError::NotFound(key.into())),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn delete(&self, key: &str) -> Result<(), BackendError> {
        match self.store.delete(&ObjectPath::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The names directly below `prefix` that are "folders" (tenants, block IDs).
    pub async fn list_dirs(&self, prefix: Option<&str>) -> Result<Vec<String>, BackendError> {
        let p = prefix.map(ObjectPath::from);
        let listing = self.store.list_with_delimiter(p.as_ref()).await?;
        Ok(listing
            .common_prefixes
            .into_iter()
            .filter_map(|p| p.filename().map(str::to_owned))
            .collect())
    }

    /// Every object key below `prefix`.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, BackendError> {
        let p = ObjectPath::from(prefix);
        let metas: Vec<_> = self.store.list(Some(&p)).try_collect().await?;
        Ok(metas.into_iter().map(|m| m.location.to_string()).collect())
    }
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
