//! Visiting every trace of a tenant that may overlap a time range: the ingester's memory and
//! each block, one blocking task per source so decoding and evaluation stay off the async
//! executor. Tag discovery (for blocks without a usable tag summary) is a visitor over this;
//! search reads blocks through the columnar path instead.

use std::sync::Arc;

use futures::stream::{self, StreamExt};

use super::{Querier, QueryError, TimeRange};
use crate::backend::BackendError;
use crate::block::{self, BlockMeta};
use crate::model::{ResourceSpans, TenantId, TraceId};

/// What one source (memory or one block) produced.
pub(crate) struct SourceResult<T> {
    pub(crate) value: T,
    pub(crate) inspected_bytes: u64,
}

pub(crate) struct Scan<T> {
    pub(crate) sources: Vec<SourceResult<T>>,
}

impl Querier {
    /// The blocks of a tenant that may hold spans in `range`.
    pub(crate) fn blocks_in_range(
        &self,
        tenant: &TenantId,
        range: Option<TimeRange>,
    ) -> Vec<Arc<BlockMeta>> {
        self.blocklist
            .blocks(tenant)
            .into_iter()
            .filter(|m| range.is_none_or(|r| r.overlaps_nanos(m.start_time, m.end_time)))
            .collect()
    }

    /// Visits the ingester's memory and the given blocks.
    pub(crate) async fn scan_sources<T, F>(
        &self,
        tenant: &TenantId,
        blocks: Vec<Arc<BlockMeta>>,
        visit: F,
    ) -> Result<Scan<T>, QueryError>
    where
        T: Default + Send + 'static,
        F: Fn(TraceId, &[ResourceSpans], &mut T) + Send + Sync + 'static,
    {
        let visit = Arc::new(visit);
        let mut sources = Vec::new();
        if let Some(r) = self.scan_memory(tenant, visit.clone()).await? {
            sources.push(r);
        }
        let mut results = stream::iter(blocks)
            .map(|meta| self.scan_block(tenant, meta, visit.clone()))
            .buffer_unordered(self.concurrent_blocks);
        while let Some(r) = results.next().await {
            if let Some(r) = r? {
                sources.push(r);
            }
        }
        Ok(Scan { sources })
    }

    /// Visits every trace in the ingester's memory (None without an ingester).
    pub(crate) async fn scan_memory<T, F>(
        &self,
        tenant: &TenantId,
        visit: Arc<F>,
    ) -> Result<Option<SourceResult<T>>, QueryError>
    where
        T: Default + Send + 'static,
        F: Fn(TraceId, &[ResourceSpans], &mut T) + Send + Sync + 'static,
    {
        let Some(ing) = &self.ingester else {
            return Ok(None);
        };
        let snapshot = ing.snapshot(tenant);
        tokio::task::spawn_blocking(move || {
            let mut out = SourceResult {
                value: T::default(),
                inspected_bytes: 0,
            };
            for (id, data) in snapshot {
                // Encoded by this process: a failure is a bug; skip rather than fail.
                if let Ok(batches) = data.decode() {
                    out.inspected_bytes += data.len() as u64;
                    visit(id, &batches, &mut out.value);
                }
            }
            Some(out)
        })
        .await
        .map_err(|e| QueryError::Task(e.to_string()))
    }

    async fn scan_block<T, F>(
        &self,
        tenant: &TenantId,
        meta: Arc<BlockMeta>,
        visit: Arc<F>,
    ) -> Result<Option<SourceResult<T>>, QueryError>
    where
        T: Default + Send + 'static,
        F: Fn(TraceId, &[ResourceSpans], &mut T) + Send + Sync + 'static,
    {
        let bid = meta.block_id;
        let data = match self.backend.get(&block::data_key(tenant, bid)).await {
            Ok(d) => d,
            // Deleted since the block list was read (compaction): nothing to scan.
            Err(BackendError::NotFound(_)) => return Ok(None),
            Err(source) => return Err(QueryError::Backend { block: bid, source }),
        };
        tokio::task::spawn_blocking(move || {
            let mut out = SourceResult {
                value: T::default(),
                inspected_bytes: data.len() as u64,
            };
            let traces = block::read_all_traces(data)
                .map_err(|source| QueryError::Block { block: bid, source })?;
            for t in traces {
                visit(t.id, &t.batches, &mut out.value);
            }
            Ok(Some(out))
        })
        .await
        .map_err(|e| QueryError::Task(e.to_string()))?
    }
}
