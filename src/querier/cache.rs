//! A small bounded cache for immutable block parts (blooms, indexes, footers).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

pub(crate) struct Cache<K, V> {
    entries: Mutex<HashMap<K, (Arc<V>, u64)>>,
    capacity: usize,
    clock: AtomicU64,
}

impl<K: Hash + Eq + Clone, V> Cache<K, V> {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
            clock: AtomicU64::new(0),
        }
    }

    pub(crate) fn get(&self, k: &K) -> Option<Arc<V>> {
        let now = self.clock.fetch_add(1, Ordering::Relaxed);
        let mut m = self.entries.lock();
        let (v, used) = m.get_mut(k)?;
        *used = now;
        Some(v.clone())
    }

    pub(crate) fn insert(&self, k: K, v: Arc<V>) {
        let now = self.clock.fetch_add(1, Ordering::Relaxed);
        let mut m = self.entries.lock();
        if m.len() >= self.capacity && !m.contains_key(&k) {
            // Evict the least recently used quarter in one go, so eviction cost is amortised.
            let mut ages: Vec<(u64, K)> = m.iter().map(|(k, (_, u))| (*u, k.clone())).collect();
            ages.sort_unstable_by_key(|(u, _)| *u);
            for (_, old) in ages.into_iter().take(self.capacity.div_ceil(4)) {
                m.remove(&old);
            }
        }
        m.insert(k, (v, now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_keeps_recent() {
        let c: Cache<u32, u32> = Cache::new(4);
        for i in 0..4 {
            c.insert(i, Arc::new(i));
        }
        assert!(c.get(&0).is_some()); // 0 is now the most recent
        c.insert(10, Arc::new(10));
        assert!(c.get(&0).is_some());
        assert!(c.get(&1).is_none(), "least recently used went first");
        assert!(c.get(&10).is_some());
        assert!(c.entries.lock().len() <= 4);
    }
}
