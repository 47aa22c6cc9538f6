//! The blocks a querier knows about, per tenant: filled by polling the bucket (or its
//! tenant index) and by the ingester announcing the blocks it commits.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use uuid::Uuid;

use crate::block::BlockMeta;
use crate::model::TenantId;

pub(crate) mod index_builder;

pub(crate) use index_builder::write_all_tenant_indexes;

/// How the block list is kept fresh.
#[derive(Debug, Clone, Copy)]
pub struct PollConfig {
    /// `storage.trace.blocklist_poll`.
    pub(crate) every: Duration,
    /// `storage.trace.blocklist_poll_stale_tenant_index`; zero means 3 × `every`.
    pub(crate) stale_tenant_index: Duration,
}

impl Default for PollConfig {
    fn default() -> Self {
        Self {
            every: Duration::from_secs(5 * 60),
            stale_tenant_index: Duration::ZERO,
        }
    }
}

impl PollConfig {
    pub(crate) fn from_config(cfg: &crate::config::TraceStorageConfig) -> Self {
        Self {
            every: cfg.blocklist_poll,
            stale_tenant_index: cfg.blocklist_poll_stale_tenant_index,
        }
    }

    /// The age past which a tenant index is not trusted.
    pub(crate) fn stale_after(&self) -> Duration {
        if self.stale_tenant_index.is_zero() {
            self.every.saturating_mul(3)
        } else {
            self.stale_tenant_index
        }
    }
}

/// A removal is forgotten after this long even if sources still list the block (a
/// failed compaction that left the input live); the bucket is the source of truth.
const TOMBSTONE_TTL: Duration = Duration::from_secs(24 * 60 * 60);

struct Entry {
    meta: Arc<BlockMeta>,
    added: Instant,
}

#[derive(Default)]
struct Tenant {
    live: BTreeMap<Uuid, Entry>,
    /// Blocks removed in this process (compacted, deleted), with when: a poll whose
    /// source predates the removal must not bring them back.
    removed: HashMap<Uuid, Instant>,
}

#[derive(Default)]
pub struct BlockList {
    tenants: RwLock<HashMap<TenantId, Tenant>>,
}

impl BlockList {
    pub fn add(&self, tenant: TenantId, meta: BlockMeta) {
        let mut t = self.tenants.write();
        let t = t.entry(tenant).or_default();
        t.removed.remove(&meta.block_id);
        t.live.insert(
            meta.block_id,
            Entry {
                meta: Arc::new(meta),
                added: Instant::now(),
            },
        );
    }

    /// Applies a poll whose source (a listing, a tenant index) reflects the bucket as of
    /// `as_of` and found `found`: blocks it did not report are dropped unless they were
    /// added after `as_of` (a source can miss a block committed since), and blocks removed
    /// in this process are not re-added.
    pub(crate) fn apply_poll(&self, tenant: &TenantId, found: Vec<BlockMeta>, as_of: Instant) {
        let mut t = self.tenants.write();
        let t = t.entry(tenant.clone()).or_default();
        let found_ids: HashSet<Uuid> = found.iter().map(|m| m.block_id).collect();
        t.live
            .retain(|id, e| found_ids.contains(id) || e.added >= as_of);
        // A tombstone is needed until a source newer than the removal stops listing the
        // block.
        t.removed.retain(|id, at| {
            at.elapsed() < TOMBSTONE_TTL && (found_ids.contains(id) || *at >= as_of)
        });
        for meta in found {
            if t.removed.contains_key(&meta.block_id) {
                continue;
            }
            t.live.entry(meta.block_id).or_insert_with(|| Entry {
                meta: Arc::new(meta),
                added: Instant::now(),
            });
        }
    }

    /// Forgets blocks at once (compacted or deleted in this process), instead of at the
    /// next poll, and keeps polls that started earlier from re-adding them.
    pub(crate) fn remove(&self, tenant: &TenantId, ids: &[Uuid]) {
        let now = Instant::now();
        let mut t = self.tenants.write();
        let t = t.entry(tenant.clone()).or_default();
        for id in ids {
            t.live.remove(id);
            t.removed.insert(*id, now);
        }
    }

    pub(crate) fn contains(&self, tenant: &TenantId, id: &Uuid) -> bool {
        self.tenants
            .read()
            .get(tenant)
            .is_some_and(|t| t.live.contains_key(id))
    }

    pub fn blocks(&self, tenant: &TenantId) -> Vec<Arc<BlockMeta>> {
        self.tenants
            .read()
            .get(tenant)
            .map(|t| t.live.values().map(|e| e.meta.clone()).collect())
            .unwrap_or_default()
    }

    pub(crate) fn len(&self) -> usize {
        self.tenants.read().values().map(|t| t.live.len()).sum()
    }

    #[cfg(test)]
    fn tombstones(&self, tenant: &TenantId) -> usize {
        self.tenants
            .read()
            .get(tenant)
            .map_or(0, |t| t.removed.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> BlockMeta {
        BlockMeta {
            block_id: Uuid::new_v4(),
            ..Default::default()
        }
    }

    #[test]
    fn poll_keeps_blocks_added_while_it_ran() {
        let bl = BlockList::default();
        let t = TenantId::single();
        let old = meta();
        bl.add(t.clone(), old.clone());
        let poll_started = Instant::now();
        let fresh = meta();
        bl.add(t.clone(), fresh.clone());
        let listed = meta();
        bl.apply_poll(&t, vec![listed.clone()], poll_started);
        assert!(!bl.contains(&t, &old.block_id), "gone from the bucket");
        assert!(
            bl.contains(&t, &fresh.block_id),
            "committed during the poll"
        );
        assert!(bl.contains(&t, &listed.block_id));
        assert_eq!(bl.len(), 2);
    }

    #[test]
    fn removed_block_is_not_readded_by_an_older_poll() {
        let bl = BlockList::default();
        let t = TenantId::single();
        let input = meta();
        let other = meta();
        bl.add(t.clone(), input.clone());
        bl.add(t.clone(), other.clone());
        // A poll starts, lists both blocks; meanwhile the compactor removes one.
        let poll_started = Instant::now();
        bl.remove(&t, &[input.block_id]);
        bl.apply_poll(&t, vec![input.clone(), other.clone()], poll_started);
        assert!(
            !bl.contains(&t, &input.block_id),
            "the stale poll re-added it"
        );
        assert!(bl.contains(&t, &other.block_id));
        // A later source that still lists it (a tenant index built before the removal)
        // keeps the tombstone; one that no longer does clears it.
        bl.apply_poll(&t, vec![input.clone(), other.clone()], poll_started);
        assert!(!bl.contains(&t, &input.block_id));
        assert_eq!(bl.tombstones(&t), 1);
        bl.apply_poll(&t, vec![other.clone()], Instant::now());
        assert_eq!(
            bl.tombstones(&t),
            0,
            "tombstone dropped once the bucket agrees"
        );
        // An explicit add (the block committed again) wins over an old removal.
        bl.remove(&t, &[other.block_id]);
        bl.add(t.clone(), other.clone());
        assert!(bl.contains(&t, &other.block_id));
        assert_eq!(bl.tombstones(&t), 0);
    }
}
