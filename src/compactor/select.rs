//! Which live blocks of a tenant to merge (Tempo's time-window block selector).
//!
//! Blocks are grouped by the compaction window their newest span falls in. Inside the most
//! recent 24 hours the compaction level is part of the group, so fresh level-0 blocks are
//! merged with each other before they meet bigger, older outputs; outside it the level is
//! ignored so old windows end up as one block. Within a group the smallest blocks go first,
//! 2..=max_input_blocks per job, capped by traces and bytes.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::block::BlockMeta;
use crate::config::CompactionConfig;

/// The window in which the compaction level separates groups.
const ACTIVE_WINDOW_NANOS: u64 = 24 * 3600 * 1_000_000_000;

/// Disjoint sets of blocks to merge, each sorted by block ID.
pub(crate) fn select(
    blocks: &[Arc<BlockMeta>],
    cfg: &CompactionConfig,
    now_nanos: u64,
) -> Vec<Vec<Arc<BlockMeta>>> {
    let window = u64::try_from(cfg.compaction_window.as_nanos())
        .unwrap_or(u64::MAX)
        .max(1);
    let min_inputs = cfg.min_input_blocks.max(2);
    let max_inputs = cfg.max_input_blocks.max(min_inputs);
    // (window, level or None outside the active window) -> blocks
    let mut groups: BTreeMap<(u64, Option<u32>), Vec<Arc<BlockMeta>>> = BTreeMap::new();
    for b in blocks {
        let active = b.end_time.saturating_add(ACTIVE_WINDOW_NANOS) >= now_nanos;
        let level = active.then_some(b.compaction_level);
        groups
            .entry((b.end_time / window, level))
            .or_default()
            .push(b.clone());
    }
    let mut jobs = Vec::new();
    for (_, mut group) in groups {
        group.sort_by(|a, b| a.size.cmp(&b.size).then(a.block_id.cmp(&b.block_id)));
        let mut rest = group.into_iter().peekable();
        while rest.peek().is_some() {
            let mut job: Vec<Arc<BlockMeta>> = Vec::new();
            let (mut objects, mut bytes) = (0u64, 0u64);
            while let Some(next) = rest.peek() {
                let fits = job.len() < max_inputs
                    && objects.saturating_add(next.total_objects) <= cfg.max_compaction_objects
                    && bytes.saturating_add(next.size) <= cfg.max_block_bytes;
                if !fits {
                    break;
                }
                objects += next.total_objects;
                bytes += next.size;
                job.extend(rest.next());
            }
            if job.len() < min_inputs {
                // Smallest first: if these do not make a job, larger ones will not either.
                break;
            }
            job.sort_by_key(|b| b.block_id);
            jobs.push(job);
        }
    }
    jobs
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const H: u64 = 3600 * 1_000_000_000;

    fn block(end_h: u64, level: u32, size: u64) -> Arc<BlockMeta> {
        Arc::new(BlockMeta {
            block_id: uuid::Uuid::new_v4(),
            end_time: end_h * H,
            start_time: end_h * H - 1,
            compaction_level: level,
            size,
            total_objects: 10,
            ..Default::default()
        })
    }

    fn cfg() -> CompactionConfig {
        CompactionConfig {
            compaction_window: Duration::from_secs(3600),
            max_input_blocks: 3,
            ..CompactionConfig::default()
        }
    }

    #[test]
    fn groups_by_window_and_recent_level_smallest_first() {
        let now = 1000 * H;
        let recent = [
            block(999, 0, 5),
            block(999, 0, 1),
            block(999, 0, 3),
            block(999, 0, 9),
            block(999, 1, 2),
        ];
        let old = [block(10, 0, 1), block(10, 3, 1)];
        let other_window = [block(998, 0, 1)];
        let all: Vec<_> = recent
            .iter()
            .chain(&old)
            .chain(&other_window)
            .cloned()
            .collect();
        let jobs = select(&all, &cfg(), now);
        assert_eq!(jobs.len(), 2, "{jobs:?}");
        let ids = |j: &[Arc<BlockMeta>]| {
            let mut v: Vec<_> = j.iter().map(|b| b.block_id).collect();
            v.sort();
            v
        };
        // Old window: levels mixed.
        assert!(jobs.iter().any(|j| ids(j) == ids(&old)));
        // Recent window, level 0: the three smallest (max_input_blocks); the 9 is left alone.
        let want = ids(&[recent[0].clone(), recent[1].clone(), recent[2].clone()]);
        assert!(jobs.iter().any(|j| ids(j) == want));
    }

    #[test]
    fn caps_by_objects_and_bytes() {
        let now = 1000 * H;
        let blocks = [block(999, 0, 10), block(999, 0, 10), block(999, 0, 10)];
        let mut c = cfg();
        c.max_block_bytes = 25;
        let jobs = select(&blocks, &c, now);
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].len(), 2);
        c.max_block_bytes = u64::MAX;
        c.max_compaction_objects = 15;
        assert!(select(&blocks, &c, now).is_empty(), "no two blocks fit");
    }
}
