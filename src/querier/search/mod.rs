//! TraceQL search over the ingester's memory and the blocks of a tenant.
//!
//! Every source yields whole traces, the engine evaluates the query on each, and hits are
//! merged by trace ID (a trace can be split across memory and several blocks), then ordered
//! newest first with the trace ID as tie-break, so the same data always gives the same
//! answer.

mod evaluate;
mod memory;
mod merge;
#[cfg(test)]
mod querier_tests;
mod queue;
#[cfg(test)]
mod speed;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_support;

use evaluate::*;
use merge::*;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::backend::BackendError;
use crate::block::{self, BlockMeta};
use crate::model::{TenantId, TraceId};
use crate::querier::{Querier, QueryError, TimeRange};
use crate::traceql::{Query, Value};

pub struct SearchRequest {
    pub query: Arc<Query>,
    pub limit: usize,
    /// Spans returned per spanset; 0 means all.
    pub spss: usize,
    pub range: Option<TimeRange>,
    pub min_duration_nanos: Option<u64>,
    pub max_duration_nanos: Option<u64>,
}

/// A span ID held inline (8 bytes in valid data): a search returns tens of thousands of
/// spans, and a heap copy per ID was a measurable share of building and freeing them.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) enum SpanIdBytes {
    Inline { len: u8, bytes: [u8; 16] },
    Heap(Box<[u8]>),
}

impl SpanIdBytes {
    pub(crate) fn new(id: &[u8]) -> Self {
        match u8::try_from(id.len()) {
            Ok(len) if id.len() <= 16 => {
                let mut bytes = [0u8; 16];
                bytes[..id.len()].copy_from_slice(id);
                SpanIdBytes::Inline { len, bytes }
            }
            _ => SpanIdBytes::Heap(id.into()),
        }
    }
}

impl std::ops::Deref for SpanIdBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            SpanIdBytes::Inline { len, bytes } => &bytes[..usize::from(*len)],
            SpanIdBytes::Heap(b) => b,
        }
    }
}

impl AsRef<[u8]> for SpanIdBytes {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl std::fmt::Debug for SpanIdBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", hex::encode(&**self))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HitSpan {
    pub(crate) span_id: SpanIdBytes,
    pub(crate) name: String,
    pub(crate) start_unix_nano: u64,
    pub(crate) duration_nanos: u64,
    pub(crate) attributes: Vec<(String, Value)>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HitSpanset {
    pub(crate) spans: Vec<HitSpan>,
    pub(crate) matched: usize,
    pub(crate) attributes: Vec<(String, Value)>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ServiceStats {
    pub(crate) span_count: u32,
    pub(crate) error_count: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TraceHit {
    pub(crate) id: TraceId,
    pub(crate) root_service_name: Option<String>,
    pub(crate) root_span_name: Option<String>,
    pub(crate) start_unix_nano: u64,
    pub(crate) end_unix_nano: u64,
    pub(crate) spansets: Vec<HitSpanset>,
    pub(crate) service_stats: BTreeMap<String, ServiceStats>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchMetrics {
    pub inspected_traces: u64,
    pub inspected_bytes: u64,
    pub inspected_spans: u64,
    pub total_blocks: u64,
    pub completed_jobs: u64,
    pub total_jobs: u64,
}

#[derive(Debug, Default)]
pub struct SearchResults {
    pub traces: Vec<TraceHit>,
    pub metrics: SearchMetrics,
    /// Set when some blocks could not be read: why the results are incomplete.
    pub partial: Option<String>,
}

/// What evaluating one source (memory or one block) produced.
#[derive(Default)]
struct Partial {
    hits: Vec<TraceHit>,
    metrics: SearchMetrics,
}

impl Querier {
    /// Memory newest first through the OTLP view (`memory.rs`); blocks through the columnar
    /// path ([`block::SearchColumns`]), only the column chunks the query needs, their row
    /// groups newest first across every block (`blocks.rs`), stopping once `limit` hits are
    /// held and every row group left starts before the oldest of them.
    pub async fn search(
        &self,
        tenant: &TenantId,
        req: &SearchRequest,
    ) -> Result<SearchResults, QueryError> {
        let params = Arc::new(SearchParams::from(req));
        let remote = self.remote_live(tenant, None).await;
        let remote_partial = remote.partial();
        let (asked, unreachable) = (remote.asked as u64, remote.unreachable.len() as u64);
        let columns = Arc::new(
            block::SearchColumns::for_query(&req.query)
                .map_err(|e| QueryError::Task(format!("planning search columns: {e}")))?,
        );
        let live = self.live_cursor(tenant, remote.part.traces, &params, &columns, req.limit);
        let mut blocks = self.blocks_in_range(tenant, req.range);
        blocks.sort_by(|a, b| {
            b.end_time
                .cmp(&a.end_time)
                .then(b.start_time.cmp(&a.start_time))
                .then(a.block_id.cmp(&b.block_id))
        });
        let total = blocks.len() as u64;
        let found = self
            .search_sources(tenant, live, blocks, params, columns, req.limit)
            .await?;
        let (partials, completed, mut failed) = (found.partials, found.completed, found.failed);
        // Nothing in the bucket could be read: an error, not an empty answer.
        if !failed.is_empty() && completed == 0 {
            return Err(failed.swap_remove(0));
        }
        let mut out = merge(partials, req.limit);
        out.metrics.total_blocks = total;
        // Each other node asked for its live traces is a job too.
        out.metrics.total_jobs = total + 1 + asked;
        out.metrics.completed_jobs = completed + 1 + asked - unreachable;
        out.partial = remote_partial;
        if let Some(first) = failed.first() {
            out.partial = out.partial.or(Some(format!(
                "partial results: {} of {total} blocks could not be read ({first})",
                failed.len()
            )));
        }
        Ok(out)
    }

    /// One row group: filter columns first, hit columns only when it has hits. None when
    /// the block vanished (compaction).
    async fn search_row_group(
        &self,
        data_key: &str,
        meta: &BlockMeta,
        footer: Arc<parquet::file::metadata::ParquetMetaData>,
        params: Arc<SearchParams>,
        columns: Arc<block::SearchColumns>,
        read: block::RowGroupRead,
    ) -> Result<Option<Partial>, QueryError> {
        let bid = meta.block_id;
        let be = |source| QueryError::Backend { block: bid, source };
        let ble = |source| QueryError::Block { block: bid, source };
        let read = Arc::new(read);
        let fetched = match self.backend.get_ranges(data_key, &read.ranges).await {
            Ok(f) => f,
            Err(BackendError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(be(e)),
        };
        let mut out = Partial::default();
        out.metrics.inspected_bytes += read.total_bytes();
        let (md, p, c, r, size) = (
            footer.clone(),
            params.clone(),
            columns.clone(),
            read.clone(),
            meta.size,
        );
        let (pending, part) = Self::blocking(move || {
            let mut part = Partial::default();
            let pending = p.filter_row_group(md, &c, &r, fetched, size, &mut part)?;
            Ok::<_, block::BlockError>((pending, part))
        })
        .await?
        .map_err(ble)?;
        out.metrics.inspected_traces += part.metrics.inspected_traces;
        out.metrics.inspected_spans += part.metrics.inspected_spans;
        if pending.matches.is_empty() {
            return Ok(Some(out));
        }
        // Only row groups with hits read the hit columns.
        let late = match self.backend.get_ranges(data_key, &read.late_ranges).await {
            Ok(f) => f,
            Err(BackendError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(be(e)),
        };
        out.metrics.inspected_bytes += read.late_bytes();
        let size = meta.size;
        let hits = Self::blocking(move || {
            params.report_row_group(footer, &columns, &read, pending, late, size)
        })
        .await?
        .map_err(ble)?;
        out.hits.extend(hits);
        Ok(Some(out))
    }
}

/// The start of the `limit`-th newest held trace, once `limit` are held (0: no limit).
fn kth_newest(held: &HashMap<TraceId, u64>, limit: usize) -> Option<u64> {
    if limit == 0 || held.len() < limit {
        return None;
    }
    let mut starts: Vec<u64> = held.values().copied().collect();
    let (_, kth, _) = starts.select_nth_unstable_by(limit - 1, |a, b| b.cmp(a));
    Some(*kth)
}

/// Records the hits of `p` for the early stop: the earliest start per trace.
fn hold(held: &mut HashMap<TraceId, u64>, p: &Partial) {
    for h in &p.hits {
        let e = held.entry(h.id).or_insert(h.start_unix_nano);
        *e = (*e).min(h.start_unix_nano);
    }
}
