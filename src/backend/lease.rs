//! Writer leases and change fingerprints, so the compactor's orphan cleanup never deletes
//! a block that a live writer is still uploading.
//!
//! A writer puts a lease object in the block folder before anything else and re-puts it
//! (new content, so a new ETag) while it uploads. The cleaner compares fingerprints of a
//! folder's objects across its own observations, timed by its own clock: a folder whose
//! fingerprint has not changed for the orphan age is abandoned. No writer timestamp is
//! trusted, so clock skew between machines cannot make a live upload look old.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use parking_lot::Mutex;
use tracing::warn;

use super::{Backend, BackendError};

/// One listed object: its key, last-modified time and a fingerprint that changes whenever
/// the object is rewritten (ETag or version where the store has them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub key: String,
    pub modified: SystemTime,
    pub fingerprint: String,
}

/// A lease the writer holds on a key while it uploads; refreshed in the background.
pub struct Lease {
    key: String,
    backend: Backend,
    lost: Arc<AtomicBool>,
    refresher: tokio::task::JoinHandle<()>,
}

impl Backend {
    /// Every object below `prefix` with a fingerprint of its current version.
    pub async fn list_fingerprints(&self, prefix: &str) -> Result<Vec<Listed>, BackendError> {
        self.requests.list.inc();
        let p = ObjectPath::from(prefix);
        let metas: Vec<_> = self.store.list(Some(&p)).try_collect().await?;
        Ok(metas
            .into_iter()
            .map(|m| {
                let modified: SystemTime = m.last_modified.into();
                let fingerprint = match (&m.e_tag, &m.version) {
                    (Some(e), v) => format!("{e}/{}/{}", v.as_deref().unwrap_or(""), m.size),
                    (None, Some(v)) => format!("{v}/{}", m.size),
                    (None, None) => format!("{modified:?}/{}", m.size),
                };
                Listed {
                    key: m.location.to_string(),
                    modified,
                    fingerprint,
                }
            })
            .collect())
    }

    /// Puts the lease object at `key` and re-puts it every `every` until released or
    /// dropped. Each put carries a new counter, so the object's ETag changes even on stores
    /// whose ETag is a content hash.
    pub async fn hold_lease(&self, key: &str, every: Duration) -> Result<Lease, BackendError> {
        let path = ObjectPath::from(key);
        let counter = Arc::new(AtomicU64::new(0));
        let body = |n: u64| PutPayload::from(format!("{{\"refresh\":{n}}}").into_bytes());
        self.requests.put.inc();
        let first = self
            .store
            .put_opts(&path, body(0), PutOptions::default())
            .await?;
        let version = Arc::new(Mutex::new(UpdateVersion {
            e_tag: first.e_tag,
            version: first.version,
        }));
        let lost = Arc::new(AtomicBool::new(false));
        let (backend, l) = (self.clone(), lost.clone());
        let refresher = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
            tick.tick().await;
            loop {
                tick.tick().await;
                let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
                match backend.refresh(&path, body(n), &version).await {
                    Ok(()) => {}
                    Err(Refresh::Lost) => {
                        warn!(key = %path, "lease lost: the folder was cleaned while uploading");
                        l.store(true, Ordering::SeqCst);
                        return;
                    }
                    // A failed refresh is retried at the next tick; the cleaner only acts
                    // after a whole orphan age without any change.
                    Err(Refresh::Failed(e)) => {
                        warn!(key = %path, error = %e, "lease refresh failed")
                    }
                }
            }
        });
        Ok(Lease {
            key: key.to_owned(),
            backend: self.clone(),
            lost,
            refresher,
        })
    }

    /// Re-puts the lease only if it is still the version this writer put last (If-Match),
    /// so a lease deleted by a cleaner is noticed rather than silently recreated.
    async fn refresh(
        &self,
        path: &ObjectPath,
        body: PutPayload,
        version: &Mutex<UpdateVersion>,
    ) -> Result<(), Refresh> {
        self.requests.put.inc();
        let current = version.lock().clone();
        let conditional = current.e_tag.is_some() || current.version.is_some();
        let opts = PutOptions {
            mode: if conditional {
                PutMode::Update(current)
            } else {
                PutMode::Overwrite
            },
            ..Default::default()
        };
        let r = match self.store.put_opts(path, body.clone(), opts).await {
            Err(object_store::Error::NotImplemented { .. }) => {
                // Stores without conditional updates: presence is checked instead.
                match self.store.head(path).await {
                    Err(object_store::Error::NotFound { .. }) => return Err(Refresh::Lost),
                    Err(e) => return Err(Refresh::Failed(e.into())),
                    Ok(_) => self.store.put_opts(path, body, PutOptions::default()).await,
                }
            }
            other => other,
        };
        match r {
            Ok(done) => {
                *version.lock() = UpdateVersion {
                    e_tag: done.e_tag,
                    version: done.version,
                };
                Ok(())
            }
            Err(object_store::Error::Precondition { .. })
            | Err(object_store::Error::NotFound { .. }) => Err(Refresh::Lost),
            Err(e) => Err(Refresh::Failed(e.into())),
        }
    }
}

enum Refresh {
    Lost,
    Failed(BackendError),
}

#[derive(Debug, thiserror::Error)]
#[error("lease {0} was lost: the upload must start again")]
pub struct LeaseLost(pub String);

impl Lease {
    /// Whether the lease still stands; checked before the commit point. A lost lease means
    /// a cleaner may have deleted objects already written: the caller uploads again.
    pub async fn check(&self) -> Result<(), LeaseLost> {
        let lost = self.lost.load(Ordering::SeqCst)
            || matches!(
                self.backend
                    .store
                    .head(&ObjectPath::from(self.key.as_str()))
                    .await,
                Err(object_store::Error::NotFound { .. })
            );
        if lost {
            return Err(LeaseLost(self.key.clone()));
        }
        Ok(())
    }

    /// Stops refreshing and deletes the lease object (after the commit).
    pub async fn release(self) {
        self.refresher.abort();
        if let Err(e) = self.backend.delete(&self.key).await {
            warn!(key = %self.key, error = %e, "cannot delete lease object");
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.refresher.abort();
    }
}
