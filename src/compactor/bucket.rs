//! What the compactor reads and writes in the bucket around the blocks themselves: one
//! listing of a tenant's folders, meta.json (fetched once), the compacted markers, the
//! orphan watch and block deletion.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};
use uuid::Uuid;

use super::{now_nanos, CompactError, CompactedReason, Compactor, SOURCES_FILE};
use crate::backend::BackendError;
use crate::block::{self, BlockMeta, CompactedBlockMeta};
use crate::model::TenantId;

/// `sources.json` of a compaction output: the inputs it replaces.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct Sources {
    pub(super) inputs: Vec<Uuid>,
}

/// What one listing of a tenant's folder found for one block.
#[derive(Debug, Default)]
pub(super) struct Listed {
    pub(super) keys: Vec<String>,
    pub(super) meta: bool,
    pub(super) compacted: bool,
    pub(super) sources: bool,
    /// Every object's key and version fingerprint, sorted: any write changes it.
    pub(super) fingerprint: Vec<(String, String)>,
}

impl Compactor {
    /// How long a folder without meta has looked exactly like `fingerprint` to this
    /// process (zero on first sight or after any change).
    pub(super) fn unchanged_for(&self, id: Uuid, fingerprint: &[(String, String)]) -> Duration {
        use std::hash::{Hash, Hasher};
        let mut sorted = fingerprint.to_vec();
        sorted.sort();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        sorted.hash(&mut h);
        let fp = h.finish();
        let mut seen = self.orphans_seen.lock();
        let entry = seen.entry(id).or_insert((fp, Instant::now()));
        if entry.0 != fp {
            *entry = (fp, Instant::now());
        }
        entry.1.elapsed()
    }

    /// Every block folder of a tenant and what it holds, from one listing.
    pub(super) async fn list_tenant(
        &self,
        tenant: &TenantId,
    ) -> Result<BTreeMap<Uuid, Listed>, CompactError> {
        let mut out: BTreeMap<Uuid, Listed> = BTreeMap::new();
        let prefix = format!("{}/", tenant.as_str());
        let listed = self.backend.list_fingerprints(tenant.as_str()).await?;
        for crate::backend::lease::Listed {
            key, fingerprint, ..
        } in listed
        {
            let Some((dir, file)) = key.strip_prefix(&prefix).and_then(|r| r.split_once('/'))
            else {
                continue; // the tenant index and other tenant-level objects
            };
            let Ok(id) = Uuid::parse_str(dir) else {
                continue;
            };
            let l = out.entry(id).or_default();
            match file {
                block::META_FILE => l.meta = true,
                block::COMPACTED_META_FILE => l.compacted = true,
                SOURCES_FILE => l.sources = true,
                _ => {}
            }
            l.fingerprint.push((key.clone(), fingerprint));
            l.keys.push(key);
        }
        Ok(out)
    }

    pub(super) async fn load_meta(
        &self,
        tenant: &TenantId,
        id: Uuid,
    ) -> Result<Option<Arc<BlockMeta>>, CompactError> {
        if let Some(m) = self.metas.lock().get(&id) {
            return Ok(Some(m.clone()));
        }
        let bytes = match self.backend.get(&block::meta_key(tenant, id)).await {
            Ok(b) => b,
            // Compacted or deleted since the listing.
            Err(BackendError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        match BlockMeta::from_bytes(&bytes) {
            Ok(m) => {
                let m = Arc::new(m);
                self.metas.lock().insert(id, m.clone());
                Ok(Some(m))
            }
            Err(e) => {
                // Left alone: deleting data on a parse error would be worse than keeping it.
                warn!(tenant = %tenant, block = %id, error = %e, "unreadable meta.json, block skipped");
                Ok(None)
            }
        }
    }

    pub(super) async fn compacted_time(
        &self,
        tenant: &TenantId,
        id: Uuid,
    ) -> Result<Option<(u64, Option<CompactedReason>)>, CompactError> {
        if let Some(t) = self.compacted.lock().get(&id) {
            return Ok(Some(*t));
        }
        let key = block::compacted_meta_key(tenant, id);
        let bytes = match self.backend.get(&key).await {
            Ok(b) => b,
            Err(BackendError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        // The same type the tenant index reads, so both agree on every marker.
        let marker = match CompactedBlockMeta::from_bytes(&bytes) {
            Ok(m) if m.compacted_time > 0 => m,
            Ok(_) => {
                warn!(tenant = %tenant, block = %id, "meta.compacted.json has no compactedTime, block kept");
                return Ok(None);
            }
            Err(e) => {
                warn!(tenant = %tenant, block = %id, error = %e, "unreadable meta.compacted.json, block kept");
                return Ok(None);
            }
        };
        let reason = marker
            .compacted_reason
            .as_deref()
            .and_then(CompactedReason::parse);
        let v = (marker.compacted_time, reason);
        self.compacted.lock().insert(id, v);
        Ok(Some(v))
    }

    /// Writes meta.compacted.json (the meta plus `compactedTime`), then deletes meta.json.
    pub(super) async fn mark_compacted(
        &self,
        tenant: &TenantId,
        meta: &BlockMeta,
        reason: CompactedReason,
    ) -> Result<(), CompactError> {
        self.write_marker(tenant, meta, reason).await?;
        self.backend
            .delete(&block::meta_key(tenant, meta.block_id))
            .await?;
        Ok(())
    }

    pub(super) async fn write_marker(
        &self,
        tenant: &TenantId,
        meta: &BlockMeta,
        reason: CompactedReason,
    ) -> Result<(), CompactError> {
        let marker = CompactedBlockMeta {
            meta: meta.clone(),
            compacted_time: now_nanos(),
            compacted_reason: Some(reason.as_str().to_owned()),
        };
        self.backend
            .put(
                &block::compacted_meta_key(tenant, meta.block_id),
                marker.to_bytes().into(),
            )
            .await?;
        self.compacted
            .lock()
            .insert(meta.block_id, (marker.compacted_time, Some(reason)));
        self.metas.lock().remove(&meta.block_id);
        Ok(())
    }

    /// Deletes every object of a block, meta.compacted.json last so a crash midway leaves a
    /// folder the next cycle still recognises and finishes.
    pub(super) async fn delete_block(
        &self,
        tenant: &TenantId,
        id: Uuid,
        keys: Vec<String>,
    ) -> Result<(), CompactError> {
        let marker = block::compacted_meta_key(tenant, id);
        futures::future::try_join_all(
            keys.iter()
                .filter(|k| **k != marker)
                .map(|k| self.backend.delete(k)),
        )
        .await?;
        self.backend.delete(&marker).await?;
        self.compacted.lock().remove(&id);
        info!(tenant = %tenant, block = %id, "compacted block deleted");
        Ok(())
    }
}
