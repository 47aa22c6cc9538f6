//! Visiting every trace of a tenant that may overlap a time range: the ingester's memory and
//! each block, decoding and evaluation on blocking tasks, off the async executor. Tag
//! discovery (for blocks without a usable tag summary) is a visitor over this; search reads
//! blocks through the columnar path instead.
//!
//! Blocks are streamed one row group at a time, a few hundred traces decoded at once, so a
//! request holds at most one row group per block it reads concurrently, never a whole
//! data.parquet; and a request reads at most its byte budget, answering partially past it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use futures::stream::{self, StreamExt};

use super::{Querier, QueryError, TimeRange};
use crate::backend::BackendError;
use crate::block::{self, BlockMeta};
use crate::model::{ResourceSpans, TenantId, TraceId};
use tracing::warn;

/// What one source (memory or one block) produced.
pub(crate) struct SourceResult<T> {
    pub(crate) value: T,
    pub(crate) inspected_bytes: u64,
}

pub(crate) struct Scan<T> {
    pub(crate) sources: Vec<SourceResult<T>>,
    /// The byte budget ran out: some row groups were not read.
    pub(crate) partial: bool,
}

/// Traces decoded at once while scanning a row group.
const SCAN_BATCH_ROWS: usize = 256;

/// Bytes of blocks one request may still read.
pub(crate) struct ScanBudget {
    left: AtomicU64,
    unlimited: bool,
    exhausted: AtomicBool,
}

impl ScanBudget {
    /// `bytes` zero: no limit.
    pub(crate) fn new(bytes: u64) -> Self {
        Self {
            left: AtomicU64::new(bytes),
            unlimited: bytes == 0,
            exhausted: AtomicBool::new(false),
        }
    }

    /// Takes `n` bytes; false (and the budget marked exhausted) when they are not left.
    fn take(&self, n: u64) -> bool {
        if self.unlimited {
            return true;
        }
        let ok = self
            .left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                left.checked_sub(n)
            })
            .is_ok();
        if !ok {
            self.exhausted.store(true, Ordering::Release);
        }
        ok
    }

    pub(crate) fn exhausted(&self) -> bool {
        self.exhausted.load(Ordering::Acquire)
    }
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
        let budget = Arc::new(ScanBudget::new(self.tag_scan_bytes));
        let mut sources = Vec::new();
        if let Some(r) = self.scan_memory(tenant, visit.clone()).await? {
            sources.push(r);
        }
        let mut results = stream::iter(blocks)
            .map(|meta| self.scan_block(tenant, meta, visit.clone(), budget.clone()))
            .buffer_unordered(self.concurrent_blocks);
        while let Some(r) = results.next().await {
            if let Some(r) = r? {
                sources.push(r);
            }
        }
        let partial = budget.exhausted();
        if partial {
            warn!(
                tenant = %tenant,
                budget_bytes = self.tag_scan_bytes,
                "tag query reached querier.max_tag_scan_bytes: the answer is partial"
            );
        }
        Ok(Scan { sources, partial })
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

    /// Visits a block's traces, one row group fetched and decoded at a time, as long as the
    /// budget lasts. `None` when the block is gone (compacted away since the listing).
    async fn scan_block<T, F>(
        &self,
        tenant: &TenantId,
        meta: Arc<BlockMeta>,
        visit: Arc<F>,
        budget: Arc<ScanBudget>,
    ) -> Result<Option<SourceResult<T>>, QueryError>
    where
        T: Default + Send + 'static,
        F: Fn(TraceId, &[ResourceSpans], &mut T) + Send + Sync + 'static,
    {
        let bid = meta.block_id;
        let ble = |source| QueryError::Block { block: bid, source };
        let data_key = block::data_key(tenant, bid);
        let footer = match self.footers.get(&bid) {
            Some(f) => f,
            None => match self.load_footer(&data_key, &meta).await {
                Ok(f) => {
                    self.footers.insert(bid, f.clone());
                    f
                }
                Err(QueryError::Backend {
                    source: BackendError::NotFound(_),
                    ..
                }) => return Ok(None),
                Err(e) => return Err(e),
            },
        };
        let mut out = SourceResult {
            value: T::default(),
            inspected_bytes: 0,
        };
        for rg in 0..footer.num_row_groups() {
            let range = block::row_group_byte_range(&footer, rg).map_err(ble)?;
            if !budget.take(range.end - range.start) {
                break;
            }
            let bytes = match self.backend.get_range(&data_key, range.clone()).await {
                Ok(b) => b,
                // Deleted mid-scan: what was read still counts.
                Err(BackendError::NotFound(_)) => break,
                Err(source) => return Err(QueryError::Backend { block: bid, source }),
            };
            out.inspected_bytes += bytes.len() as u64;
            let (md, visit, size) = (footer.clone(), visit.clone(), meta.size);
            let value = std::mem::take(&mut out.value);
            out.value = tokio::task::spawn_blocking(move || {
                let mut value = value;
                let traces =
                    block::row_group_traces(md, rg, bytes, range.start, size, SCAN_BATCH_ROWS)?;
                for t in traces {
                    let t = t?;
                    visit(t.id, &t.batches, &mut value);
                }
                Ok(value)
            })
            .await
            .map_err(|e| QueryError::Task(e.to_string()))?
            .map_err(ble)?;
        }
        Ok(Some(out))
    }
}
