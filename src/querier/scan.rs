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
use crate::block::{self, BlockError, BlockMeta, TraceInput};
use crate::model::{Fragments, ResourceSpans, TenantId, TraceId};
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

/// Traces decoded at once while scanning a row group, at most...
const SCAN_BATCH_ROWS: usize = 256;
/// ...and about this many bytes of uncompressed column data, so a row group of large
/// traces is decoded a few traces at a time.
const SCAN_BATCH_BYTES: u64 = 8 << 20;

/// Rows per decoded batch for row group `rg`: its average trace size decides.
fn batch_rows(md: &parquet::file::metadata::ParquetMetaData, rg: usize) -> usize {
    let Some(g) = md.row_groups().get(rg) else {
        return 1;
    };
    let rows = u64::try_from(g.num_rows()).unwrap_or(0).max(1);
    let bytes = u64::try_from(g.total_byte_size()).unwrap_or(0).max(1);
    let fit = (SCAN_BATCH_BYTES.saturating_mul(rows) / bytes).max(1);
    usize::try_from(fit).map_or(SCAN_BATCH_ROWS, |n| n.min(SCAN_BATCH_ROWS))
}

/// Which leaf columns (by dotted Parquet path) a scan needs.
pub(crate) type Columns = Arc<dyn Fn(&str) -> bool + Send + Sync>;

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

    /// Visits the ingester's memory and the given blocks. With `columns`, blocks are read
    /// with only the leaf columns it accepts (the rest of each trace comes back empty).
    pub(crate) async fn scan_sources<T, F>(
        &self,
        tenant: &TenantId,
        blocks: Vec<Arc<BlockMeta>>,
        columns: Option<Columns>,
        visit: F,
    ) -> Result<Scan<T>, QueryError>
    where
        T: Default + Send + 'static,
        F: Fn(TraceId, &[ResourceSpans], &mut T) + Send + Sync + 'static,
    {
        let visit = Arc::new(visit);
        let budget = Arc::new(ScanBudget::new(self.tag_scan_bytes));
        let mut sources = Vec::new();
        let remote = self.remote_live(tenant, None).await;
        let unreachable = remote.partial();
        if let Some(r) = self
            .scan_memory(tenant, remote.part.traces, visit.clone())
            .await?
        {
            sources.push(r);
        }
        let mut results = stream::iter(blocks)
            .map(|meta| {
                self.scan_block(tenant, meta, visit.clone(), budget.clone(), columns.clone())
            })
            .buffer_unordered(self.concurrent_blocks);
        while let Some(r) = results.next().await {
            if let Some(r) = r? {
                sources.push(r);
            }
        }
        let partial = budget.exhausted() || unreachable.is_some();
        if let Some(why) = &unreachable {
            warn!(tenant = %tenant, reason = %why, "tag query is partial");
        }
        if budget.exhausted() {
            warn!(
                tenant = %tenant,
                budget_bytes = self.tag_scan_bytes,
                "tag query reached querier.max_tag_scan_bytes: the answer is partial"
            );
        }
        Ok(Scan { sources, partial })
    }

    /// Visits every trace in the ingester's memory and `remote` (other nodes' live traces);
    /// None when there is neither.
    pub(crate) async fn scan_memory<T, F>(
        &self,
        tenant: &TenantId,
        remote: Vec<(TraceId, Fragments)>,
        visit: Arc<F>,
    ) -> Result<Option<SourceResult<T>>, QueryError>
    where
        T: Default + Send + 'static,
        F: Fn(TraceId, &[ResourceSpans], &mut T) + Send + Sync + 'static,
    {
        let mut snapshot = match &self.ingester {
            Some(ing) => ing.snapshot(tenant),
            None if remote.is_empty() => return Ok(None),
            None => Vec::new(),
        };
        // A trace both here and remote (a partition just moved) is visited once, merged.
        if !remote.is_empty() {
            let mut by_id: std::collections::HashMap<TraceId, Fragments> =
                snapshot.drain(..).collect();
            for (id, f) in remote {
                by_id.entry(id).or_default().extend(&f);
            }
            snapshot = by_id.into_iter().collect();
        }
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
        columns: Option<Columns>,
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
            let rows = batch_rows(&md, rg);
            let columns = columns.clone();
            let value = std::mem::take(&mut out.value);
            out.value = tokio::task::spawn_blocking(move || {
                let mut value = value;
                let traces: Box<dyn Iterator<Item = Result<TraceInput, BlockError>>> =
                    match &columns {
                        Some(keep) => Box::new(block::row_group_traces_projected(
                            md,
                            rg,
                            bytes,
                            range.start,
                            size,
                            rows,
                            keep.as_ref(),
                        )?),
                        None => Box::new(block::row_group_traces(
                            md,
                            rg,
                            bytes,
                            range.start,
                            size,
                            rows,
                        )?),
                    };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{synth, BlockConfig};
    use crate::model::{any_value, AnyValue, KeyValue};

    #[test]
    fn large_traces_are_decoded_a_few_at_a_time() {
        let tenant = TenantId::new("t").unwrap();
        let mut traces = synth::realistic_traces(6, 1);
        for t in &mut traces {
            // ~3 MiB per trace, incompressible enough to count in the column sizes.
            let blob: String = (0..3 << 20)
                .map(|i: u32| char::from(b'a' + (i.wrapping_mul(2_654_435_761) >> 27) as u8 % 26))
                .collect();
            t.batches[0].scope_spans[0].spans[0]
                .attributes
                .push(KeyValue {
                    key: "blob".into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::StringValue(blob)),
                    }),
                    ..Default::default()
                });
        }
        let cfg = BlockConfig {
            row_group_size_bytes: 64 << 20,
            ..BlockConfig::default()
        };
        let b = block::encode_block(&tenant, uuid::Uuid::nil(), 0, traces, &cfg).unwrap();
        let md = block::decode_footer(b.data.clone(), b.data.len() as u64).unwrap();
        assert_eq!(md.row_group(0).num_rows(), 6);
        // 8 MiB of ~3 MiB traces: two at a time.
        assert_eq!(batch_rows(&md, 0), 2);
        let small = block::encode_block(
            &tenant,
            uuid::Uuid::nil(),
            0,
            synth::realistic_traces(300, 2),
            &cfg,
        )
        .unwrap();
        let md = block::decode_footer(small.data.clone(), small.data.len() as u64).unwrap();
        assert_eq!(batch_rows(&md, 0), SCAN_BATCH_ROWS);
    }
}
