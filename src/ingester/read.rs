//! Reading what the ingester holds: one trace by ID, every live trace (a snapshot of shared
//! chunks), or, for a search that stops at a limit, the traces' times first and the data of
//! only those it evaluates.
//!
//! Every reader takes the head lock, then `flushing`: a cut moves traces between the two
//! while holding the head lock, so a reader sees each trace in one of them or both, never
//! in neither. A trace that leaves `flushing` is in a committed block, which a reader lists
//! after reading memory.

use std::collections::HashMap;

use tracing::warn;
use uuid::Uuid;

use super::Ingester;
use crate::model::{Fragments, ResourceSpans, TenantId, TraceId};

/// A live trace's ID and time bounds (unix ns; `start > end` when unknown), without its
/// data: what a search orders and prunes by before it takes any trace's chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LiveKey {
    pub(crate) id: TraceId,
    pub(crate) start: u64,
    pub(crate) end: u64,
}

impl Ingester {
    /// Every fragment of a trace still held by the ingester (head and blocks being flushed).
    pub(crate) fn find_trace(&self, tenant: &TenantId, id: &TraceId) -> Vec<ResourceSpans> {
        let mut data = Fragments::default();
        {
            // Head first, then flushing, under the head lock: a cut moves traces between
            // the two while holding it, so a reader always sees a trace in one of them.
            let head = self.head.lock();
            let flushing = self.flushing.read().clone();
            if let Some(f) = flushing.get(tenant).and_then(|m| m.get(id)) {
                data.extend(&f.data);
            }
            if let Some(live) = head.tenants.get(tenant).and_then(|m| m.get(id)) {
                data.extend(&live.data);
            }
        }
        // Decoded outside the lock. This process encoded the bytes, so a failure is a bug:
        // it is logged rather than failing the query.
        data.decode().unwrap_or_else(|e| {
            warn!(tenant = %tenant, trace = %id, error = %e, "cannot decode live trace");
            Vec::new()
        })
    }

    /// Every trace the ingester holds for a tenant, as shared encoded chunks: cheap to take,
    /// and decoded by the caller outside any lock.
    pub(crate) fn snapshot(&self, tenant: &TenantId) -> Vec<(TraceId, Fragments)> {
        self.snapshot_with_block(tenant).0
    }

    /// [`Ingester::snapshot`], and the ID of the block its flushing traces are being written
    /// to: a reader that lists blocks after taking the snapshot skips that one, so every
    /// trace is seen exactly once (in memory or in a block) across a flush.
    pub(crate) fn snapshot_with_block(
        &self,
        tenant: &TenantId,
    ) -> (Vec<(TraceId, Fragments)>, Option<Uuid>) {
        // Same lock order as find_trace: both views from one critical section.
        let head = self.head.lock();
        let flushing = self.flushing.read().clone();
        let block = flushing
            .contains_key(tenant)
            .then(|| self.flushing_blocks.read().get(tenant).copied())
            .flatten();
        let mut out: HashMap<TraceId, Fragments> = flushing
            .get(tenant)
            .map(|m| m.iter().map(|(id, f)| (*id, f.data.clone())).collect())
            .unwrap_or_default();
        if let Some(traces) = head.tenants.get(tenant) {
            for (id, live) in traces {
                out.entry(*id).or_default().extend(&live.data);
            }
        }
        drop(head);
        (out.into_iter().collect(), block)
    }

    /// The ID and times of every trace of `tenant` that `keep(start, end)` accepts, head
    /// and flushing merged. Copies 32 bytes per trace under the lock where a snapshot
    /// clones every trace's chunk list: with 200k small live traces that was ~100 ms of
    /// each search, with ingest waiting on the lock.
    pub(crate) fn live_keys(
        &self,
        tenant: &TenantId,
        keep: impl Fn(u64, u64) -> bool,
    ) -> Vec<LiveKey> {
        let head = self.head.lock();
        let flushing = self.flushing.read().clone();
        let live = head.tenants.get(tenant);
        let flush = flushing.get(tenant);
        let mut out =
            Vec::with_capacity(live.map_or(0, |m| m.len()) + flush.map_or(0, |m| m.len()));
        let mut push = |id: TraceId, start: u64, end: u64| {
            if keep(start, end) {
                out.push(LiveKey { id, start, end });
            }
        };
        if let Some(flush) = flush {
            for (id, f) in flush {
                let f = &f.data;
                match live.and_then(|m| m.get(id)) {
                    Some(l) => push(
                        *id,
                        f.start().min(l.data.start()),
                        f.end().max(l.data.end()),
                    ),
                    None => push(*id, f.start(), f.end()),
                }
            }
        }
        if let Some(live) = live {
            for (id, l) in live {
                if !flush.is_some_and(|f| f.contains_key(id)) {
                    push(*id, l.data.start(), l.data.end());
                }
            }
        }
        out
    }

    /// The data of `ids` as held now (head and flushing merged), in the order given. A trace
    /// no longer held has been written to a committed block since its key was taken, and is
    /// left out: a search reads it there.
    pub(crate) fn live_fragments(
        &self,
        tenant: &TenantId,
        ids: &[TraceId],
    ) -> Vec<(TraceId, Fragments)> {
        let head = self.head.lock();
        let flushing = self.flushing.read().clone();
        let live = head.tenants.get(tenant);
        let flush = flushing.get(tenant);
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let f = flush.and_then(|m| m.get(id)).map(|f| &f.data);
            let l = live.and_then(|m| m.get(id));
            let data = match (f, l) {
                (None, None) => continue,
                (Some(f), None) => f.clone(),
                (None, Some(l)) => l.data.clone(),
                (Some(f), Some(l)) => {
                    let mut d = f.clone();
                    d.extend(&l.data);
                    d
                }
            };
            out.push((*id, data));
        }
        out
    }
}
