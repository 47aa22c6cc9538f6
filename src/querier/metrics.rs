//! TraceQL metrics over the ingester's memory and the blocks of a tenant.
//!
//! Every source gets its own evaluator (memory on one blocking task, each row group of a
//! block on another), and the evaluators are merged: counts add up, quantiles keep their
//! values, so the answer is the same however the data is split between memory and blocks
//! and in whatever order the sources finish. Blocks are read through the columnar path
//! with only the columns the query needs (its filter, `by()`, the function's attribute).
//!
//! Each span is counted once: the memory snapshot names the block its flushing traces are
//! being written to, and that block is skipped if the block list already shows it. When a
//! query needs whole traces, a memory trace that a block's bloom filter says may have more
//! spans there is looked up by ID, evaluated whole, and skipped in the blocks.

use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use futures::stream::{FuturesUnordered, StreamExt};
use tracing::warn;

use super::search::SearchMetrics;
use super::{Querier, QueryError, TimeRange};
use crate::backend::BackendError;
use crate::block::{self, BlockMeta, ColumnarBlock, ColumnarTrace};
use crate::model::{combine, Fragments, TenantId, TraceId};
use crate::traceql::metrics::{MetricsError, MetricsEvaluator, MetricsOutput};
use crate::traceql::otlp::OtlpTrace;
use crate::traceql::WireTrace;

/// Split traces one query looks up whole at most: each costs a lookup by ID.
const MAX_SPLIT_TRACES: usize = 1_000;

/// What a metrics query produced, with Tempo's job accounting.
#[derive(Debug, Default)]
pub struct MetricsResults {
    pub output: MetricsOutput,
    pub metrics: SearchMetrics,
    /// Set when some blocks could not be read: why the results are incomplete.
    pub partial: Option<String>,
}

/// One tenant's evaluation, not yet finished: tenants of a cross-tenant read merge first.
pub struct MetricsPartial {
    pub evaluator: MetricsEvaluator,
    pub metrics: SearchMetrics,
    pub partial: Option<String>,
}

impl Querier {
    /// Evaluates `template`'s query over every span of `tenant` that starts inside its
    /// buckets, in memory and in blocks.
    pub async fn metrics(
        &self,
        tenant: &TenantId,
        template: &MetricsEvaluator,
        columns: Arc<block::SearchColumns>,
    ) -> Result<MetricsPartial, QueryError> {
        let buckets = template.buckets();
        let (start_ns, end_ns) = (buckets.start_ns, buckets.end_ns());
        let range = TimeRange {
            start_s: start_ns / 1_000_000_000,
            end_s: end_ns.div_ceil(1_000_000_000),
        };
        let template = Arc::new(template.empty_like());
        let mut stats = SearchMetrics::default();
        // Before the snapshot: it waits for this node's partitions to apply what was
        // acknowledged before the query began.
        let remote = self.remote_live(tenant, None).await;
        let (mut snapshot, flushing_block) = match &self.ingester {
            Some(ing) => ing.snapshot_with_block(tenant),
            None => (Vec::new(), None),
        };
        let remote_partial = remote.partial();
        let skip: HashSet<uuid::Uuid> = flushing_block
            .into_iter()
            .chain(remote.part.skip_blocks.iter().copied())
            .collect();
        snapshot.extend(remote.part.traces);
        // Listed after the memory snapshot: a block committed since then holds traces the
        // snapshot had in `flushing`, and is skipped.
        let blocks: Vec<Arc<BlockMeta>> = self
            .blocks_in_range(tenant, Some(range))
            .into_iter()
            .filter(|m| !skip.contains(&m.block_id))
            .collect();
        // Traces in memory that blocks may also hold: evaluated whole when the query needs
        // whole traces, and skipped in the blocks.
        let (split, too_many) = if template.needs_whole_traces() && !blocks.is_empty() {
            self.split_traces(tenant, &snapshot, &blocks).await?
        } else {
            (HashSet::new(), false)
        };
        let split = Arc::new(split);
        let mut total = self
            .metrics_memory(snapshot, &split, &template, columns.clone(), &mut stats)
            .await?;
        for id in split.iter() {
            let found = self.find_trace(tenant, id, Some(range)).await?;
            stats.inspected_bytes += found.inspected_bytes;
            let mut ev = template.empty_like();
            let ev = Self::blocking(move || {
                let batches = combine(found.batches);
                // Only a query the engine cannot run fails; the memory pass saw it already.
                let _ = ev.observe(&OtlpTrace::new(&batches));
                ev
            })
            .await?;
            total.merge(ev);
        }

        let n_blocks = blocks.len() as u64;
        let mut pending = blocks.into_iter();
        let mut running = FuturesUnordered::new();
        let mut completed = 0u64;
        let mut failed: Vec<QueryError> = Vec::new();
        loop {
            while running.len() < self.concurrent_blocks {
                let Some(meta) = pending.next() else { break };
                running.push(self.metrics_block(
                    tenant,
                    meta,
                    template.clone(),
                    columns.clone(),
                    range,
                    split.clone(),
                ));
            }
            let Some(r) = running.next().await else { break };
            match r {
                Ok(found) => {
                    completed += 1;
                    if let Some((ev, s)) = found {
                        total.merge(ev);
                        stats.inspected_bytes += s.inspected_bytes;
                        stats.inspected_traces += s.inspected_traces;
                        stats.inspected_spans += s.inspected_spans;
                    }
                }
                Err(e) => {
                    warn!(tenant = %tenant, error = %e, "metrics query skipped a block it could not read");
                    failed.push(e);
                }
            }
        }
        if !failed.is_empty() && completed == 0 {
            return Err(failed.swap_remove(0));
        }
        stats.total_blocks = n_blocks;
        stats.total_jobs = n_blocks + 1;
        stats.completed_jobs = completed + 1;
        let mut partial = failed.first().map(|first| {
            format!(
                "partial results: {} of {n_blocks} blocks could not be read ({first})",
                failed.len()
            )
        });
        if partial.is_none() {
            partial = remote_partial;
        }
        if too_many && partial.is_none() {
            partial = Some(format!(
                "partial results: more than {MAX_SPLIT_TRACES} traces are split between memory and blocks; the rest were evaluated a piece at a time"
            ));
        }
        Ok(MetricsPartial {
            evaluator: total,
            metrics: stats,
            partial,
        })
    }

    /// Finishes merged evaluations into series, off the executor (quantiles sort).
    pub async fn finish_metrics(
        evaluator: MetricsEvaluator,
        metrics: SearchMetrics,
        partial: Option<String>,
    ) -> Result<MetricsResults, QueryError> {
        let output = Self::blocking(move || evaluator.finish()).await?;
        Ok(MetricsResults {
            output,
            metrics,
            partial,
        })
    }

    /// The memory traces some block's bloom filter says it may also hold (at most
    /// [`MAX_SPLIT_TRACES`]; the flag says more were left out).
    async fn split_traces(
        &self,
        tenant: &TenantId,
        snapshot: &[(TraceId, Fragments)],
        blocks: &[Arc<BlockMeta>],
    ) -> Result<(HashSet<TraceId>, bool), QueryError> {
        let requests = AtomicU64::new(0);
        let mut split = HashSet::new();
        for (id, _) in snapshot {
            for meta in blocks {
                if self.bloom_may_contain(tenant, meta, id, &requests).await? {
                    if split.len() >= MAX_SPLIT_TRACES {
                        return Ok((split, true));
                    }
                    split.insert(*id);
                    break;
                }
            }
        }
        Ok((split, false))
    }

    /// The ingester's traces (but those evaluated whole elsewhere).
    async fn metrics_memory(
        &self,
        snapshot: Vec<(TraceId, Fragments)>,
        split: &Arc<HashSet<TraceId>>,
        template: &Arc<MetricsEvaluator>,
        columns: Arc<block::SearchColumns>,
        stats: &mut SearchMetrics,
    ) -> Result<MetricsEvaluator, QueryError> {
        let mut ev = template.empty_like();
        let split = split.clone();
        let (ev, s) = Self::blocking(move || {
            let mut s = SearchMetrics::default();
            for (id, data) in snapshot {
                // Lacking a string the query's selection requires: no span of it counts.
                if split.contains(&id) || !columns.literals_possible(data.chunks()) {
                    continue;
                }
                s.inspected_bytes += data.len() as u64;
                // Read in place (as search does); decoded only where a decode would merge
                // repeated fields. Encoded by this process: a failure is a bug; skip.
                let observed = match WireTrace::new(data.chunks()) {
                    Some(trace) => {
                        s.inspected_spans += trace.spans() as u64;
                        ev.observe(&trace)
                    }
                    None => {
                        let Ok(batches) = data.decode() else { continue };
                        let trace = OtlpTrace::new(&batches);
                        s.inspected_spans += trace.spans() as u64;
                        ev.observe(&trace)
                    }
                };
                s.inspected_traces += 1;
                // Only a query the engine cannot run fails here; every trace would fail alike.
                if observed.is_err() {
                    break;
                }
            }
            (ev, s)
        })
        .await?;
        stats.inspected_bytes += s.inspected_bytes;
        stats.inspected_traces += s.inspected_traces;
        stats.inspected_spans += s.inspected_spans;
        Ok(ev)
    }

    /// One block, a row group at a time. None when the block vanished (compaction).
    async fn metrics_block(
        &self,
        tenant: &TenantId,
        meta: Arc<BlockMeta>,
        template: Arc<MetricsEvaluator>,
        columns: Arc<block::SearchColumns>,
        range: TimeRange,
        split: Arc<HashSet<TraceId>>,
    ) -> Result<Option<(MetricsEvaluator, SearchMetrics)>, QueryError> {
        let bid = meta.block_id;
        let ble = |source| QueryError::Block { block: bid, source };
        let data_key = block::data_key(tenant, bid);
        let Some(footer) = self.footer(&data_key, &meta).await? else {
            return Ok(None);
        };
        let reads = columns
            .plan(&footer, |s, e| range.overlaps_nanos(s, e))
            .map_err(ble)?;
        let mut ev = template.empty_like();
        let mut stats = SearchMetrics::default();
        for read in reads {
            let fetched = match self.backend.get_ranges(&data_key, &read.ranges).await {
                Ok(f) => f,
                Err(BackendError::NotFound(_)) => return Ok(None),
                Err(e) => {
                    return Err(QueryError::Backend {
                        block: bid,
                        source: e,
                    })
                }
            };
            stats.inspected_bytes += read.total_bytes();
            let (md, c, size) = (footer.clone(), columns.clone(), meta.size);
            let (start_ns, end_ns) = (range.start_s * 1_000_000_000, range.end_s * 1_000_000_000);
            let t = template.clone();
            let split = split.clone();
            let (part, s) = Self::blocking(move || {
                let mut part = t.empty_like();
                let mut s = SearchMetrics::default();
                let decoded =
                    block::decode_row_group(md, &c, &read, block::Phase::Filter, fetched, size)?;
                let data = ColumnarBlock::new(&decoded)?;
                let mut trace = ColumnarTrace::new(&data);
                for row in 0..data.len() {
                    let (start, end) = (data.start_unix_nano(row), data.end_unix_nano(row));
                    if start > end_ns || end < start_ns {
                        continue;
                    }
                    s.inspected_traces += 1;
                    s.inspected_spans += data.span_count(row) as u64;
                    if !trace.may_match(&c, row) || !trace.spans_may_match(&c, row) {
                        continue;
                    }
                    if !split.is_empty()
                        && data
                            .trace_id(row)
                            .is_some_and(|id| split.contains(&TraceId(id)))
                    {
                        continue;
                    }
                    trace.load(row)?;
                    if part.observe(&trace).is_err() {
                        break;
                    }
                }
                Ok::<_, block::BlockError>((part, s))
            })
            .await?
            .map_err(ble)?;
            ev.merge(part);
            stats.inspected_traces += s.inspected_traces;
            stats.inspected_spans += s.inspected_spans;
        }
        Ok(Some((ev, stats)))
    }
}

/// The query's evaluator and the block columns it reads, or why the query cannot run.
pub fn plan(
    query: &crate::traceql::Query,
    buckets: crate::traceql::metrics::Buckets,
    max_series: usize,
    max_exemplars: usize,
) -> Result<(MetricsEvaluator, Arc<block::SearchColumns>), MetricsError> {
    let ev = MetricsEvaluator::new(query, buckets, max_series, max_exemplars)?;
    let columns =
        block::SearchColumns::for_query(query).map_err(|e| MetricsError::Plan(e.to_string()))?;
    Ok((ev, Arc::new(columns)))
}
