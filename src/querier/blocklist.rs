//! The blocks a querier knows about, per tenant: filled by polling the bucket and by the
//! ingester announcing the blocks it commits.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::RwLock;
use uuid::Uuid;

use crate::block::BlockMeta;
use crate::model::TenantId;

struct Entry {
    meta: Arc<BlockMeta>,
    added: Instant,
}

#[derive(Default)]
pub struct BlockList {
    tenants: RwLock<HashMap<TenantId, BTreeMap<Uuid, Entry>>>,
}

impl BlockList {
    pub fn add(&self, tenant: TenantId, meta: BlockMeta) {
        self.tenants.write().entry(tenant).or_default().insert(
            meta.block_id,
            Entry {
                meta: Arc::new(meta),
                added: Instant::now(),
            },
        );
    }

    /// Applies a poll that started at `poll_started` and found `found`: blocks it did not
    /// see are dropped unless they were added after the poll began (a listing can miss
    /// a block committed while it ran).
    pub fn apply_poll(&self, tenant: &TenantId, found: Vec<BlockMeta>, poll_started: Instant) {
        let mut t = self.tenants.write();
        let map = t.entry(tenant.clone()).or_default();
        let found_ids: std::collections::HashSet<Uuid> = found.iter().map(|m| m.block_id).collect();
        map.retain(|id, e| found_ids.contains(id) || e.added >= poll_started);
        for meta in found {
            map.entry(meta.block_id).or_insert_with(|| Entry {
                meta: Arc::new(meta),
                added: Instant::now(),
            });
        }
    }

    /// Forgets blocks at once (compacted or deleted in this process), instead of at the
    /// next poll.
    pub fn remove(&self, tenant: &TenantId, ids: &[Uuid]) {
        if let Some(map) = self.tenants.write().get_mut(tenant) {
            for id in ids {
                map.remove(id);
            }
        }
    }

    pub fn contains(&self, tenant: &TenantId, id: &Uuid) -> bool {
        self.tenants
            .read()
            .get(tenant)
            .is_some_and(|m| m.contains_key(id))
    }

    pub fn blocks(&self, tenant: &TenantId) -> Vec<Arc<BlockMeta>> {
        self.tenants
            .read()
            .get(tenant)
            .map(|m| m.values().map(|e| e.meta.clone()).collect())
            .unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.tenants.read().values().map(|m| m.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
}
