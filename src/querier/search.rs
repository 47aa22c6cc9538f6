//! TraceQL search over the ingester's memory and the blocks of a tenant.
//!
//! Every source yields whole traces, the engine evaluates the query on each, and hits are
//! merged by trace ID (a trace can be split across memory and several blocks), then ordered
//! newest first with the trace ID as tie-break, so the same data always gives the same
//! answer.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use futures::stream::{FuturesUnordered, StreamExt};
use parquet::file::metadata::ParquetMetaData;
use tracing::warn;

use super::{Querier, QueryError, TimeRange};
use crate::backend::BackendError;
use crate::block::{self, BlockMeta, ColumnarBlock, ColumnarTrace};
use crate::model::{status, ResourceSpans, TenantId, TraceId};
use crate::traceql::engine::{self, SpansetMatch};
use crate::traceql::otlp::OtlpTrace;
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
pub enum SpanIdBytes {
    Inline { len: u8, bytes: [u8; 16] },
    Heap(Box<[u8]>),
}

impl SpanIdBytes {
    pub fn new(id: &[u8]) -> Self {
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
pub struct HitSpan {
    pub span_id: SpanIdBytes,
    pub name: String,
    pub start_unix_nano: u64,
    pub duration_nanos: u64,
    pub attributes: Vec<(String, Value)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HitSpanset {
    pub spans: Vec<HitSpan>,
    pub matched: usize,
    pub attributes: Vec<(String, Value)>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceStats {
    pub span_count: u32,
    pub error_count: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TraceHit {
    pub id: TraceId,
    pub root_service_name: Option<String>,
    pub root_span_name: Option<String>,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    pub spansets: Vec<HitSpanset>,
    pub service_stats: BTreeMap<String, ServiceStats>,
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
    /// Memory through the OTLP view; blocks through the columnar path
    /// ([`block::SearchColumns`]): newest blocks first, only the column chunks the query
    /// needs, one row group at a time, stopping early once `limit` hits are held and the
    /// remaining blocks all end before the oldest of them starts.
    pub async fn search(
        &self,
        tenant: &TenantId,
        req: &SearchRequest,
    ) -> Result<SearchResults, QueryError> {
        let params = Arc::new(SearchParams::from(req));
        let mut partials = Vec::new();
        let p = params.clone();
        let memory = self
            .scan_memory(
                tenant,
                Arc::new(move |id, batches: &[ResourceSpans], out: &mut Partial| {
                    p.evaluate(id, batches, out)
                }),
            )
            .await?;
        if let Some(s) = memory {
            let mut p = s.value;
            p.metrics.inspected_bytes += s.inspected_bytes;
            partials.push(p);
        }
        let columns = Arc::new(
            block::SearchColumns::for_query(&req.query)
                .map_err(|e| QueryError::Task(format!("planning search columns: {e}")))?,
        );
        let mut blocks = self.blocks_in_range(tenant, req.range);
        blocks.sort_by(|a, b| {
            b.end_time
                .cmp(&a.end_time)
                .then(b.start_time.cmp(&a.start_time))
                .then(a.block_id.cmp(&b.block_id))
        });
        let total = blocks.len() as u64;
        // Newest start per held trace, for the early stop.
        let mut held: HashMap<TraceId, u64> = HashMap::new();
        for p in &partials {
            hold(&mut held, p);
        }
        let mut completed = 0u64;
        let mut failed: Vec<QueryError> = Vec::new();
        let mut pending = blocks.into_iter().peekable();
        let mut running = FuturesUnordered::new();
        loop {
            while running.len() < self.concurrent_blocks {
                let Some(next) = pending.peek() else { break };
                if req.limit > 0 && held.len() >= req.limit {
                    let mut starts: Vec<u64> = held.values().copied().collect();
                    let kth = req.limit - 1;
                    let (_, oldest_held, _) = starts.select_nth_unstable_by(kth, |a, b| b.cmp(a));
                    if next.end_time < *oldest_held {
                        // Blocks are sorted by end time: none of the rest can do better.
                        pending = Vec::new().into_iter().peekable();
                        break;
                    }
                }
                let meta = pending.next().expect("peeked");
                running.push(self.search_block(tenant, meta, params.clone(), columns.clone()));
            }
            let Some(r) = running.next().await else { break };
            match r {
                Ok(found) => {
                    completed += 1;
                    if let Some(p) = found {
                        hold(&mut held, &p);
                        partials.push(p);
                    }
                }
                // An unreadable block makes the search partial, as in Tempo: the other
                // blocks' hits are returned and completedJobs stays below totalJobs.
                Err(e) => {
                    warn!(tenant = %tenant, error = %e, "search skipped a block it could not read");
                    failed.push(e);
                }
            }
        }
        // Nothing in the bucket could be read: an error, not an empty answer.
        if !failed.is_empty() && completed == 0 {
            return Err(failed.swap_remove(0));
        }
        let mut out = merge(partials, req.limit);
        out.metrics.total_blocks = total;
        out.metrics.total_jobs = total + 1;
        out.metrics.completed_jobs = completed + 1;
        if let Some(first) = failed.first() {
            out.partial = Some(format!(
                "partial results: {} of {total} blocks could not be read ({first})",
                failed.len()
            ));
        }
        Ok(out)
    }

    /// One block through the columnar path. None when the block vanished (compaction).
    async fn search_block(
        &self,
        tenant: &TenantId,
        meta: Arc<BlockMeta>,
        params: Arc<SearchParams>,
        columns: Arc<block::SearchColumns>,
    ) -> Result<Option<Partial>, QueryError> {
        let bid = meta.block_id;
        let be = |source| QueryError::Backend { block: bid, source };
        let ble = |source| QueryError::Block { block: bid, source };
        let data_key = block::data_key(tenant, bid);
        let Some(footer) = self.footer(&data_key, &meta).await? else {
            return Ok(None);
        };
        let range = params.range;
        let reads = columns
            .plan(&footer, |s, e| range.is_none_or(|r| r.overlaps_nanos(s, e)))
            .map_err(ble)?;
        let mut out = Partial::default();
        for read in reads {
            let read = Arc::new(read);
            let fetched = match self.backend.get_ranges(&data_key, &read.ranges).await {
                Ok(f) => f,
                Err(BackendError::NotFound(_)) => return Ok(None),
                Err(e) => return Err(be(e)),
            };
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
                continue;
            }
            // Only row groups with hits read the hit columns.
            let late = match self.backend.get_ranges(&data_key, &read.late_ranges).await {
                Ok(f) => f,
                Err(BackendError::NotFound(_)) => return Ok(None),
                Err(e) => return Err(be(e)),
            };
            out.metrics.inspected_bytes += read.late_bytes();
            let (md, p, c, size) = (footer.clone(), params.clone(), columns.clone(), meta.size);
            let hits =
                Self::blocking(move || p.report_row_group(md, &c, &read, pending, late, size))
                    .await?
                    .map_err(ble)?;
            out.hits.extend(hits);
        }
        Ok(Some(out))
    }
}

/// Records the hits of `p` for the early stop: the earliest start per trace.
fn hold(held: &mut HashMap<TraceId, u64>, p: &Partial) {
    for h in &p.hits {
        let e = held.entry(h.id).or_insert(h.start_unix_nano);
        *e = (*e).min(h.start_unix_nano);
    }
}

/// The parts of a request the blocking evaluation needs.
#[derive(Clone)]
struct SearchParams {
    query: Arc<Query>,
    spss: usize,
    range: Option<TimeRange>,
    min_duration_nanos: Option<u64>,
    max_duration_nanos: Option<u64>,
}

impl From<&SearchRequest> for SearchParams {
    fn from(r: &SearchRequest) -> Self {
        Self {
            query: r.query.clone(),
            spss: r.spss,
            range: r.range,
            min_duration_nanos: r.min_duration_nanos,
            max_duration_nanos: r.max_duration_nanos,
        }
    }
}

impl SearchParams {
    fn evaluate(&self, id: TraceId, batches: &[ResourceSpans], p: &mut Partial) {
        let trace = OtlpTrace::new(batches);
        p.metrics.inspected_traces += 1;
        p.metrics.inspected_spans += trace.spans() as u64;
        let start = trace.start_unix_nano();
        let duration = trace.duration_nanos();
        if let Some(r) = self.range {
            if !r.overlaps_nanos(start, start + duration) {
                return;
            }
        }
        if self.min_duration_nanos.is_some_and(|m| duration < m)
            || self.max_duration_nanos.is_some_and(|m| duration > m)
        {
            return;
        }
        let matches = match engine::Prepared::new(&self.query).evaluate(&trace, self.spss) {
            Ok(m) => m,
            Err(_) => return,
        };
        if matches.is_empty() {
            return;
        }
        p.hits.push(TraceHit {
            id,
            root_service_name: trace.root_service_name().map(str::to_owned),
            root_span_name: trace.root_span_name().map(str::to_owned),
            start_unix_nano: start,
            end_unix_nano: start + duration,
            spansets: matches
                .into_iter()
                .map(|m| spanset(&trace, m, self.spss))
                .collect(),
            service_stats: service_stats(batches),
        });
    }
}

/// What filtering one row group leaves for reporting: the decoded filter columns and the
/// matching rows with their spansets.
struct Pending {
    filtered: arrow_array::StructArray,
    matches: Vec<(usize, Vec<SpansetMatch>)>,
}

impl SearchParams {
    /// Evaluates every trace of one row group of a block (see [`block::SearchColumns`]),
    /// given its filter columns ([`block::Phase::Filter`]). Traces outside the time range or
    /// the duration bounds, or failing the query's required resource values, are skipped
    /// before evaluation and not counted as inspected.
    fn filter_row_group(
        &self,
        md: Arc<ParquetMetaData>,
        columns: &block::SearchColumns,
        read: &block::RowGroupRead,
        fetched: Vec<bytes::Bytes>,
        file_len: u64,
        p: &mut Partial,
    ) -> Result<Pending, block::BlockError> {
        let filtered =
            block::decode_row_group(md, columns, read, block::Phase::Filter, fetched, file_len)?;
        let data = ColumnarBlock::new(&filtered)?;
        let mut trace = ColumnarTrace::new(&data);
        let mut matches = Vec::new();
        let query = engine::Prepared::new(&self.query);
        for row in 0..data.len() {
            let start = data.start_unix_nano(row);
            let end = data.end_unix_nano(row);
            if let Some(r) = self.range {
                if !r.overlaps_nanos(start, end) {
                    continue;
                }
            }
            let duration = end - start;
            if self.min_duration_nanos.is_some_and(|m| duration < m)
                || self.max_duration_nanos.is_some_and(|m| duration > m)
            {
                continue;
            }
            if !trace.may_match(columns, row) {
                continue;
            }
            p.metrics.inspected_traces += 1;
            p.metrics.inspected_spans += data.span_count(row) as u64;
            if !trace.spans_may_match(columns, row) {
                continue;
            }
            trace.load(row)?;
            match query.evaluate(&trace, self.spss) {
                Ok(m) if !m.is_empty() => matches.push((row, m)),
                _ => {}
            }
        }
        drop(trace);
        drop(data);
        Ok(Pending { filtered, matches })
    }

    /// Builds the hits of `pending` once the hit columns ([`block::Phase::Report`]) of the
    /// same row group are fetched.
    fn report_row_group(
        &self,
        md: Arc<ParquetMetaData>,
        columns: &block::SearchColumns,
        read: &block::RowGroupRead,
        pending: Pending,
        fetched: Vec<bytes::Bytes>,
        file_len: u64,
    ) -> Result<Vec<TraceHit>, block::BlockError> {
        let late =
            block::decode_row_group(md, columns, read, block::Phase::Report, fetched, file_len)?;
        let all = block::merge_columns(&pending.filtered, &late)?;
        drop(late);
        let data = ColumnarBlock::new(&all)?;
        let mut trace = ColumnarTrace::new(&data);
        let mut hits = Vec::with_capacity(pending.matches.len());
        for (row, matches) in pending.matches {
            // Root and span positions only: the spans were evaluated in the filter phase.
            trace.locate(row)?;
            let id = data
                .trace_id(row)
                .ok_or_else(|| block::BlockError::Corrupt("trace_id not decoded".into()))?;
            let mut service_stats: BTreeMap<String, ServiceStats> = BTreeMap::new();
            for (svc, spans, errors) in data.service_stats(row) {
                let e = service_stats.entry(svc.to_owned()).or_default();
                e.span_count += spans;
                e.error_count += errors;
            }
            let start = data.start_unix_nano(row);
            hits.push(TraceHit {
                id: TraceId(id),
                root_service_name: trace.root_service_name().map(str::to_owned),
                root_span_name: trace.root_span_name().map(str::to_owned),
                start_unix_nano: start,
                end_unix_nano: data.end_unix_nano(row),
                spansets: matches
                    .into_iter()
                    .map(|m| {
                        spanset_with(m, self.spss, |i| HitSpan {
                            span_id: SpanIdBytes::new(trace.span_id(i)),
                            name: trace.span_name(i).to_owned(),
                            start_unix_nano: trace.span_start_unix_nano(i),
                            duration_nanos: trace.span_duration_nanos(i),
                            attributes: Vec::new(),
                        })
                    })
                    .collect(),
                service_stats,
            });
        }
        Ok(hits)
    }

    /// Both phases of one row group with a synchronous fetch.
    #[cfg(test)]
    fn search_row_group(
        &self,
        md: Arc<ParquetMetaData>,
        columns: &block::SearchColumns,
        read: &block::RowGroupRead,
        fetch: impl Fn(&[std::ops::Range<u64>]) -> Vec<bytes::Bytes>,
        file_len: u64,
        p: &mut Partial,
    ) -> Result<(), block::BlockError> {
        let pending =
            self.filter_row_group(md.clone(), columns, read, fetch(&read.ranges), file_len, p)?;
        if pending.matches.is_empty() {
            return Ok(());
        }
        let late = fetch(&read.late_ranges);
        p.hits
            .extend(self.report_row_group(md, columns, read, pending, late, file_len)?);
        Ok(())
    }
}

fn spanset_with(m: SpansetMatch, spss: usize, span: impl Fn(usize) -> HitSpan) -> HitSpanset {
    let matched = m.spans.len();
    let keep = if spss == 0 {
        matched
    } else {
        spss.min(matched)
    };
    let mut span_attrs = m.span_attributes.into_iter();
    let spans = m
        .spans
        .iter()
        .take(keep)
        .map(|&i| HitSpan {
            attributes: span_attrs.next().unwrap_or_default(),
            ..span(i)
        })
        .collect();
    HitSpanset {
        spans,
        matched,
        attributes: m.attributes,
    }
}

fn spanset(trace: &OtlpTrace<'_>, m: SpansetMatch, spss: usize) -> HitSpanset {
    spanset_with(m, spss, |i| {
        let s = trace.span(i);
        HitSpan {
            span_id: SpanIdBytes::new(&s.span_id),
            name: s.name.clone(),
            start_unix_nano: s.start_time_unix_nano,
            duration_nanos: s.end_time_unix_nano.saturating_sub(s.start_time_unix_nano),
            attributes: Vec::new(),
        }
    })
}

fn service_stats(batches: &[ResourceSpans]) -> BTreeMap<String, ServiceStats> {
    let mut out: BTreeMap<String, ServiceStats> = BTreeMap::new();
    for rs in batches {
        let service = rs
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| match &v.value {
                Some(crate::model::any_value::Value::StringValue(s)) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_default();
        let e = out.entry(service).or_default();
        for ss in &rs.scope_spans {
            for s in &ss.spans {
                e.span_count += 1;
                if s.status
                    .as_ref()
                    .is_some_and(|st| st.code == status::StatusCode::Error as i32)
                {
                    e.error_count += 1;
                }
            }
        }
    }
    out
}

/// Adds `incoming` spansets to `existing`: a spanset with the same attributes as an
/// existing one is folded into it, spans by span ID. True if any span was already there.
fn merge_spansets(existing: &mut Vec<HitSpanset>, incoming: Vec<HitSpanset>) -> bool {
    let mut overlaps = false;
    for ss in incoming {
        let Some(e) = existing.iter_mut().find(|e| e.attributes == ss.attributes) else {
            existing.push(ss);
            continue;
        };
        let mut seen: std::collections::HashSet<SpanIdBytes> =
            e.spans.iter().map(|s| s.span_id.clone()).collect();
        let mut dup = 0;
        for span in ss.spans {
            if seen.insert(span.span_id.clone()) {
                e.spans.push(span);
            } else {
                dup += 1;
            }
        }
        overlaps |= dup > 0;
        e.matched = (e.matched + ss.matched).saturating_sub(dup).max(e.matched);
    }
    overlaps
}

/// Merges per-source hits by trace ID and keeps the `limit` newest.
fn merge(partials: Vec<Partial>, limit: usize) -> SearchResults {
    let mut metrics = SearchMetrics::default();
    // Hits stay where they are pushed; the map holds positions, so a large hit is moved
    // once rather than through every rehash.
    let total: usize = partials.iter().map(|p| p.hits.len()).sum();
    let mut traces: Vec<TraceHit> = Vec::with_capacity(total);
    let mut by_id: HashMap<TraceId, usize> = HashMap::with_capacity(total);
    for p in partials {
        metrics.inspected_traces += p.metrics.inspected_traces;
        metrics.inspected_bytes += p.metrics.inspected_bytes;
        metrics.inspected_spans += p.metrics.inspected_spans;
        for hit in p.hits {
            match by_id.get(&hit.id) {
                None => {
                    by_id.insert(hit.id, traces.len());
                    traces.push(hit);
                }
                Some(&at) => {
                    let h = &mut traces[at];
                    h.start_unix_nano = h.start_unix_nano.min(hit.start_unix_nano);
                    h.end_unix_nano = h.end_unix_nano.max(hit.end_unix_nano);
                    if h.root_service_name.is_none() {
                        h.root_service_name = hit.root_service_name;
                        h.root_span_name = hit.root_span_name;
                    }
                    // Blocks overlap while a compaction commits (its output holds what
                    // its inputs hold): spans already listed are not listed again, and
                    // then the stats of the larger copy stand instead of a sum.
                    let overlaps = merge_spansets(&mut h.spansets, hit.spansets);
                    for (svc, st) in hit.service_stats {
                        let e = h.service_stats.entry(svc).or_default();
                        if overlaps {
                            e.span_count = e.span_count.max(st.span_count);
                            e.error_count = e.error_count.max(st.error_count);
                        } else {
                            e.span_count += st.span_count;
                            e.error_count += st.error_count;
                        }
                    }
                }
            }
        }
    }
    // IDs are unique now, so the keys are distinct and an unstable sort is deterministic.
    traces.sort_unstable_by(|a, b| {
        b.start_unix_nano
            .cmp(&a.start_unix_nano)
            .then_with(|| a.id.cmp(&b.id))
    });
    traces.truncate(limit);
    SearchResults {
        traces,
        metrics,
        partial: None,
    }
}

#[cfg(test)]
mod tests_support {
    use bytes::Bytes;

    use super::*;
    use crate::block;

    pub(super) fn otlp_path(params: &SearchParams, data: &Bytes) -> Vec<TraceHit> {
        let mut p = Partial::default();
        for t in block::read_all_traces(data.clone()).unwrap() {
            params.evaluate(t.id, &t.batches, &mut p);
        }
        merge(vec![p], usize::MAX).traces
    }

    fn reads(
        params: &SearchParams,
        data: &Bytes,
    ) -> (
        Arc<ParquetMetaData>,
        block::SearchColumns,
        Vec<block::RowGroupRead>,
    ) {
        let md = block::decode_footer(data.clone(), data.len() as u64).unwrap();
        let columns = block::SearchColumns::for_query(&params.query).unwrap();
        let reads = columns
            .plan(&md, |s, e| {
                params.range.is_none_or(|r| r.overlaps_nanos(s, e))
            })
            .unwrap();
        (md, columns, reads)
    }

    fn fetch(ranges: &[std::ops::Range<u64>], data: &Bytes) -> Vec<Bytes> {
        ranges
            .iter()
            .map(|r| data.slice(r.start as usize..r.end as usize))
            .collect()
    }

    /// Hits through the columnar path and the number of row groups read.
    pub(super) fn columnar_path(params: &SearchParams, data: &Bytes) -> (Vec<TraceHit>, usize) {
        let (md, columns, reads) = reads(params, data);
        let groups = reads.len();
        let mut p = Partial::default();
        for read in reads {
            params
                .search_row_group(
                    md.clone(),
                    &columns,
                    &read,
                    |ranges| fetch(ranges, data),
                    data.len() as u64,
                    &mut p,
                )
                .unwrap();
        }
        (merge(vec![p], usize::MAX).traces, groups)
    }

    /// Decodes the row groups the columnar path would read; returns the bytes fetched.
    pub(super) fn decode_only(params: &SearchParams, data: &Bytes) -> u64 {
        let (md, columns, reads) = reads(params, data);
        let mut bytes = 0;
        for read in reads {
            bytes += read.total_bytes();
            let fetched = fetch(&read.ranges, data);
            block::decode_row_group(
                md.clone(),
                &columns,
                &read,
                block::Phase::Filter,
                fetched,
                data.len() as u64,
            )
            .unwrap();
        }
        bytes
    }

    pub(super) fn params(query: &str, range: Option<TimeRange>) -> Option<SearchParams> {
        let query = crate::traceql::parse(query).ok()?;
        Some(SearchParams {
            query: Arc::new(query),
            spss: 0,
            range,
            min_duration_nanos: None,
            max_duration_nanos: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::tests_support::*;

    use super::*;
    use crate::block::{self, BlockConfig, TraceInput};
    use crate::model::{any_value, AnyValue, KeyValue, Resource, ScopeSpans, Span};
    use crate::traceql::engine_tests::{cases, dataset};

    fn kv(key: &str, v: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(v) }),
            ..Default::default()
        }
    }

    /// Traces where dedicated attribute names hold other types or repeat, so the generic
    /// list must be consulted next to the dedicated column.
    fn dedicated_edge_cases() -> Vec<(String, Vec<ResourceSpans>)> {
        use any_value::Value as V;
        let span = |id: u8, parent: u8, name: &str, attrs: Vec<KeyValue>| Span {
            trace_id: vec![40; 16],
            span_id: vec![40, id, 0, 0, 0, 0, 0, 0],
            parent_span_id: if parent == 0 {
                Vec::new()
            } else {
                vec![40, parent, 0, 0, 0, 0, 0, 0]
            },
            name: name.into(),
            start_time_unix_nano: 1_700_000_000_000_000_000 + u64::from(id) * 1_000_000,
            end_time_unix_nano: 1_700_000_000_000_000_000 + u64::from(id) * 3_000_000,
            attributes: attrs,
            ..Default::default()
        };
        let batches = vec![
            ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![
                        kv("service.name", V::IntValue(7)),
                        kv("k8s.pod.name", V::StringValue("pod-1".into())),
                    ],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: vec![
                        span(
                            1,
                            0,
                            "typed",
                            vec![
                                kv("http.status_code", V::StringValue("200".into())),
                                kv("http.method", V::IntValue(3)),
                                kv("http.method", V::StringValue("GET".into())),
                                kv("http.route", V::StringValue("/first".into())),
                                kv("http.route", V::StringValue("/second".into())),
                            ],
                        ),
                        span(
                            2,
                            1,
                            "child",
                            vec![kv("http.status_code", V::IntValue(503))],
                        ),
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            },
            ResourceSpans {
                resource: None,
                scope_spans: vec![ScopeSpans {
                    spans: vec![span(3, 2, "no-resource", vec![])],
                    ..Default::default()
                }],
                ..Default::default()
            },
        ];
        vec![("t40".into(), batches)]
    }

    const EXTRA_QUERIES: [&str; 12] = [
        "{ span.http.status_code = \"200\" }",
        "{ span.http.status_code = 503 }",
        "{ span.http.method = 3 }",
        "{ span.http.method = \"GET\" }",
        "{ span.http.route = \"/first\" }",
        "{ .http.route = \"/second\" }",
        "{ resource.service.name = 7 }",
        "{ resource.k8s.pod.name = \"pod-1\" }",
        "{ resource.service.name = \"frontend\" } >> { status = error }",
        "{ resource.service.name = \"nope\" }",
        "{ trace:rootService = \"frontend\" && trace:id != nil } | select(span:parentID)",
        "{ } | by(resource.service.name) | count() > 1",
    ];

    fn encode(data: &[(String, Vec<ResourceSpans>)], cfg: &BlockConfig) -> Bytes {
        let traces: Vec<TraceInput> = data
            .iter()
            .map(|(_, batches)| {
                let first = &batches[0].scope_spans[0].spans[0];
                let mut id = [0u8; 16];
                id.copy_from_slice(&first.trace_id);
                TraceInput {
                    id: TraceId(id),
                    batches: batches.clone(),
                }
            })
            .collect();
        let tenant = TenantId::new("t").unwrap();
        block::encode_block(&tenant, uuid::Uuid::nil(), 0, traces, cfg)
            .unwrap()
            .data
    }

    #[test]
    fn columnar_search_matches_the_otlp_path_on_every_engine_case() {
        let mut data = dataset();
        data.extend(dedicated_edge_cases());
        let one_group = BlockConfig::default();
        let many_groups = BlockConfig {
            row_group_size_bytes: 1,
            ..BlockConfig::default()
        };
        let queries: Vec<&str> = cases()
            .into_iter()
            .map(|(q, _)| q)
            .chain(EXTRA_QUERIES)
            .collect();
        for cfg in [one_group, many_groups] {
            let bytes = encode(&data, &cfg);
            let (mut compared, mut hits) = (0, 0);
            for q in &queries {
                let Some(params) = params(q, None) else {
                    continue;
                };
                let expected = otlp_path(&params, &bytes);
                let (actual, _) = columnar_path(&params, &bytes);
                assert_eq!(actual, expected, "query {q}");
                compared += 1;
                hits += expected.len();
            }
            assert!(
                compared >= 80 && hits > 200,
                "{compared} queries, {hits} hits"
            );
        }
    }

    #[test]
    fn row_groups_outside_the_range_or_without_the_service_are_skipped() {
        let data = dataset();
        let cfg = BlockConfig {
            row_group_size_bytes: 1,
            ..BlockConfig::default()
        };
        let bytes = encode(&data, &cfg);
        // Every row group holds one trace: the service filter prunes all but its traces.
        let p = params("{ resource.service.name = \"solo\" }", None).unwrap();
        let (hits, groups) = columnar_path(&p, &bytes);
        assert_eq!(hits.len(), 1);
        assert_eq!(groups, 1);
        assert_eq!(hits, otlp_path(&p, &bytes));
        // A range long before the data set: nothing is read.
        let r = TimeRange {
            start_s: 1_000,
            end_s: 2_000,
        };
        let p = params("{}", Some(r)).unwrap();
        assert_eq!(columnar_path(&p, &bytes), (Vec::new(), 0));
    }

    #[test]
    fn row_groups_are_pruned_by_duration_and_status_statistics() {
        let data = dataset();
        let cfg = BlockConfig {
            row_group_size_bytes: 1,
            ..BlockConfig::default()
        };
        let bytes = encode(&data, &cfg);
        let (all, groups) = columnar_path(&params("{}", None).unwrap(), &bytes);
        assert_eq!(groups, all.len());
        // No span lasts an hour: nothing is read, in either operand order.
        for q in ["{ duration > 1h }", "{ 1h <= duration }"] {
            let p = params(q, None).unwrap();
            assert_eq!(columnar_path(&p, &bytes), (Vec::new(), 0), "{q}");
        }
        // Only traces with an error span are read, and the answer is unchanged.
        let p = params("{ status = error }", None).unwrap();
        let (hits, read) = columnar_path(&p, &bytes);
        assert!(!hits.is_empty() && read < groups, "{read} of {groups}");
        assert_eq!(hits, otlp_path(&p, &bytes));
        // Either side of `||` may match: no pruning on the error side alone.
        let p = params("{ status = error || duration > 1h }", None).unwrap();
        assert_eq!(columnar_path(&p, &bytes).0, otlp_path(&p, &bytes));
    }
}

#[cfg(test)]
mod speed {
    use std::time::Instant;

    use super::tests_support::*;
    use crate::block::{self, BlockConfig};

    /// `cargo test --release --lib columnar_search_speed -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn columnar_search_speed() {
        let traces = block::synth::realistic_traces(10_000, 7);
        let spans: usize = traces
            .iter()
            .map(|t| crate::model::span_count(&t.batches))
            .sum();
        let tenant = crate::model::TenantId::new("t").unwrap();
        let bytes = block::encode_block(
            &tenant,
            uuid::Uuid::nil(),
            0,
            traces,
            &BlockConfig::default(),
        )
        .unwrap()
        .data;
        eprintln!("{spans} spans, {} bytes", bytes.len());
        for q in [
            "{ duration > 500ms }",
            "{ status = error }",
            "{ resource.service.name = \"checkout\" }",
            "{ span.http.route =~ \"/api/.*\" }",
            "{ resource.service.name = \"frontend\" } >> { status = error }",
            "{ } | count() > 40",
        ] {
            let p = params(q, None).unwrap();
            let t = Instant::now();
            let decoded = decode_only(&p, &bytes);
            let dec = t.elapsed();
            let t = Instant::now();
            let (hits, _) = columnar_path(&p, &bytes);
            let col = t.elapsed();
            let t = Instant::now();
            let old = otlp_path(&p, &bytes);
            let otlp = t.elapsed();
            assert_eq!(hits.len(), old.len());
            eprintln!(
                "{q:70} hits {:6} decode {:6.1} ms ({decoded} B) columnar {:7.1} ms otlp {:7.1} ms",
                hits.len(),
                dec.as_secs_f64() * 1e3,
                col.as_secs_f64() * 1e3,
                otlp.as_secs_f64() * 1e3
            );
        }
    }
}

#[cfg(test)]
mod querier_tests {
    use std::sync::Arc;

    use super::tests_support::params;
    use super::*;
    use crate::backend::Backend;
    use crate::block::{self, BlockConfig, TraceInput};
    use crate::metrics::Metrics;
    use crate::querier::BlockList;
    use crate::traceql::engine_tests::dataset;

    const HOUR: u64 = 3_600_000_000_000;

    /// Block `k` holds the engine data set shifted by `k` hours, trace IDs tagged with `k`.
    async fn querier(blocks: u8) -> (Querier, TenantId) {
        let backend = Backend::memory();
        let list = Arc::new(BlockList::default());
        let tenant = TenantId::new("t").unwrap();
        for k in 0..blocks {
            let traces: Vec<TraceInput> = dataset()
                .into_iter()
                .map(|(_, mut batches)| {
                    let mut id = [0u8; 16];
                    for rs in &mut batches {
                        for ss in &mut rs.scope_spans {
                            for s in &mut ss.spans {
                                s.trace_id[15] = k;
                                id.copy_from_slice(&s.trace_id);
                                s.start_time_unix_nano += u64::from(k) * HOUR;
                                s.end_time_unix_nano += u64::from(k) * HOUR;
                            }
                        }
                    }
                    TraceInput {
                        id: TraceId(id),
                        batches,
                    }
                })
                .collect();
            let id = uuid::Uuid::from_u128(u128::from(k) + 1);
            let b = block::encode_block(&tenant, id, 0, traces, &BlockConfig::default()).unwrap();
            backend
                .put(&block::data_key(&tenant, id), b.data.clone())
                .await
                .unwrap();
            list.add(tenant.clone(), b.meta.clone());
        }
        let q = Querier::new(backend, None, list, Arc::new(Metrics::default()), 1);
        (q, tenant)
    }

    fn request(query: &str, limit: usize) -> SearchRequest {
        SearchRequest {
            query: params(query, None).unwrap().query,
            limit,
            spss: 3,
            range: None,
            min_duration_nanos: None,
            max_duration_nanos: None,
        }
    }

    #[tokio::test]
    async fn newest_blocks_first_and_early_stop() {
        let (q, tenant) = querier(3).await;
        let all = q.search(&tenant, &request("{}", 1000)).await.unwrap();
        assert_eq!(all.traces.len(), 3 * 14);
        assert_eq!(all.metrics.completed_jobs, 4);
        assert_eq!(all.metrics.total_jobs, 4);
        // The newest block alone holds 14 hits, all newer than the other blocks' ends.
        let few = q.search(&tenant, &request("{}", 3)).await.unwrap();
        assert_eq!(few.traces, all.traces[..3].to_vec());
        assert_eq!(few.metrics.completed_jobs, 2);
        assert_eq!(few.metrics.total_jobs, 4);
        assert!(few.traces.iter().all(|t| t.id.as_bytes()[15] == 2));
        // Newest first, trace ID as tie-break.
        for w in all.traces.windows(2) {
            assert!(
                (w[0].start_unix_nano, std::cmp::Reverse(w[0].id))
                    >= (w[1].start_unix_nano, std::cmp::Reverse(w[1].id))
            );
        }
        // A block deleted after the listing (compaction) is skipped, not an error.
        let oldest = uuid::Uuid::from_u128(1);
        q.backend
            .delete(&block::data_key(&tenant, oldest))
            .await
            .unwrap();
        let rest = q.search(&tenant, &request("{}", 1000)).await.unwrap();
        assert_eq!(rest.traces.len(), 2 * 14);
        assert_eq!(rest.metrics.completed_jobs, 4);
    }
}
