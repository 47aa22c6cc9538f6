//! One compactor per tenant at a time, among every node compacting the bucket, so two
//! compactors never merge (or retire, or delete) the same inputs: a lease per tenant,
//! `~compactor/<tenant>.json`, created only if absent (If-None-Match), renewed If-Match by
//! its holder while the tenant's cycle runs, released (holder cleared, If-Match) after it,
//! and taken over If-Match once unchanged for the timeout as this node's own clock sees it.
//! A compaction commits its output only while the lease still holds (see `Fence`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::backend::cas::{CasError, ObjectVersion};
use crate::backend::Backend;
use crate::model::TenantId;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Body {
    holder: String,
    seq: u64,
}

pub(crate) struct TenantLeases {
    backend: Backend,
    holder: String,
    timeout: Duration,
    /// Lease key → (version fingerprint, when this node first saw it).
    seen: Mutex<HashMap<String, (String, Instant)>>,
}

/// Whether a held lease may still be relied on: not lost, and renewed recently enough
/// that no other node can have taken it over.
#[derive(Clone)]
pub(crate) struct Fence {
    lost: Arc<AtomicBool>,
    valid_until: Arc<Mutex<Instant>>,
}

impl Fence {
    pub(crate) fn held(&self) -> bool {
        !self.lost.load(Ordering::SeqCst) && Instant::now() < *self.valid_until.lock()
    }
}

pub(crate) struct TenantLease {
    key: String,
    backend: Backend,
    holder: String,
    version: Arc<Mutex<ObjectVersion>>,
    fence: Fence,
    renewer: tokio::task::JoinHandle<()>,
}

fn body(holder: &str, seq: u64) -> Bytes {
    Bytes::from(
        serde_json::to_vec(&Body {
            holder: holder.to_owned(),
            seq,
        })
        .unwrap_or_default(),
    )
}

fn seq() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl TenantLeases {
    pub(crate) fn new(backend: Backend, holder: String, timeout: Duration) -> Self {
        Self {
            backend,
            holder,
            timeout,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// The tenant's lease, or `None` while another node holds it.
    pub(crate) async fn acquire(&self, tenant: &TenantId) -> Result<Option<TenantLease>, CasError> {
        let key = format!("~compactor/{}.json", tenant.as_str());
        let started = Instant::now();
        let current = self.backend.get_versioned(&key).await?;
        let won = match current {
            None => {
                self.backend
                    .put_if_absent(&key, body(&self.holder, seq()))
                    .await
            }
            Some((bytes, version)) => {
                let b: Body = serde_json::from_slice(&bytes).unwrap_or_default();
                let age = {
                    let mut seen = self.seen.lock();
                    let e = seen
                        .entry(key.clone())
                        .or_insert_with(|| (version.fingerprint(), started));
                    if e.0 != version.fingerprint() {
                        *e = (version.fingerprint(), started);
                    }
                    started.duration_since(e.1)
                };
                // Released, this node's own (a previous run), or stale on our clock.
                if !(b.holder.is_empty() || b.holder == self.holder || age >= self.timeout) {
                    return Ok(None);
                }
                if !b.holder.is_empty() && b.holder != self.holder {
                    info!(tenant = %tenant, from = %b.holder, unchanged_ms = age.as_millis() as u64, "taking over a stale compaction lease");
                }
                self.backend
                    .put_if_match(&key, body(&self.holder, seq()), &version)
                    .await
            }
        };
        let version = match won {
            Ok(v) => v,
            Err(CasError::Conflict(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(Some(self.hold(key, version, started)))
    }

    fn hold(&self, key: String, version: ObjectVersion, started: Instant) -> TenantLease {
        let fence = Fence {
            lost: Arc::new(AtomicBool::new(false)),
            valid_until: Arc::new(Mutex::new(started + self.timeout * 2 / 3)),
        };
        let version = Arc::new(Mutex::new(version));
        let (backend, k, holder, f, v, timeout) = (
            self.backend.clone(),
            key.clone(),
            self.holder.clone(),
            fence.clone(),
            version.clone(),
            self.timeout,
        );
        let renewer = tokio::spawn(async move {
            let mut tick = tokio::time::interval(timeout / 4);
            tick.tick().await;
            loop {
                tick.tick().await;
                let started = Instant::now();
                let expected = v.lock().clone();
                match backend
                    .put_if_match(&k, body(&holder, seq()), &expected)
                    .await
                {
                    Ok(new) => {
                        *v.lock() = new;
                        *f.valid_until.lock() = started + timeout * 2 / 3;
                    }
                    Err(CasError::Conflict(_)) => {
                        warn!(key = %k, "compaction lease lost to another node");
                        f.lost.store(true, Ordering::SeqCst);
                        return;
                    }
                    Err(e) => warn!(key = %k, error = %e, "compaction lease renewal failed"),
                }
            }
        });
        TenantLease {
            key,
            backend: self.backend.clone(),
            holder: self.holder.clone(),
            version,
            fence,
            renewer,
        }
    }
}

impl TenantLease {
    pub(crate) fn fence(&self) -> Fence {
        self.fence.clone()
    }

    /// Clears the holder so the next node takes the tenant without waiting.
    pub(crate) async fn release(self) {
        self.renewer.abort();
        if self.fence.lost.load(Ordering::SeqCst) {
            return;
        }
        let expected = self.version.lock().clone();
        if let Err(e) = self
            .backend
            .put_if_match(&self.key, body("", seq()), &expected)
            .await
        {
            info!(key = %self.key, holder = %self.holder, error = %e, "compaction lease release failed");
        }
    }
}

impl Drop for TenantLease {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_holder_at_a_time_release_hands_over_and_a_stale_lease_is_taken() {
        let backend = Backend::memory();
        let t = TenantId::new("t1").unwrap();
        let timeout = Duration::from_millis(300);
        let a = TenantLeases::new(backend.clone(), "a".into(), timeout);
        let b = TenantLeases::new(backend.clone(), "b".into(), timeout);
        let held = a.acquire(&t).await.unwrap().expect("free lease");
        assert!(held.fence().held());
        assert!(b.acquire(&t).await.unwrap().is_none());
        held.release().await;
        let held = b.acquire(&t).await.unwrap().expect("released lease");
        // b dies holding it (no release, no renewal): a waits out the timeout on its clock.
        let fence = held.fence();
        drop(held);
        assert!(a.acquire(&t).await.unwrap().is_none());
        tokio::time::sleep(timeout + Duration::from_millis(50)).await;
        assert!(
            !fence.held(),
            "a lease not renewed counts as gone for its holder"
        );
        let taken = a.acquire(&t).await.unwrap();
        assert!(taken.is_some(), "stale lease not taken over");
    }
}
