//! TraceQL metrics over the ingester's memory and the blocks of a tenant.
//!
//! Every source gets its own evaluator (memory on one blocking task, each row group of a
//! block on another), and the evaluators are merged: counts add up, quantiles keep their
//! values, so the answer is the same however the data is split between memory and blocks
//! and in whatever order the sources finish. Blocks are read through the columnar path
//! with only the columns the query needs (its filter, `by()`, the function's attribute).
//!
//! Each span is counted once: the memory snapshot names the block its flushing traces are
//! being written to, and that block is skipped if the block list already shows it.

use std::sync::Arc;

use futures::stream::{FuturesUnordered, StreamExt};
use tracing::warn;

use super::search::SearchMetrics;
use super::{Querier, QueryError, TimeRange};
use crate::backend::BackendError;
use crate::block::{self, BlockMeta, ColumnarBlock, ColumnarTrace};
use crate::model::TenantId;
use crate::traceql::metrics::{MetricsError, MetricsEvaluator, MetricsOutput};
use crate::traceql::otlp::OtlpTrace;

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
        let (mut total, flushing_block) =
            self.metrics_memory(tenant, &template, &mut stats).await?;

        // Listed after the memory snapshot: a block committed since then holds traces the
        // snapshot had in `flushing`, and is skipped.
        let blocks: Vec<Arc<BlockMeta>> = self
            .blocks_in_range(tenant, Some(range))
            .into_iter()
            .filter(|m| Some(m.block_id) != flushing_block)
            .collect();
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
        let partial = failed.first().map(|first| {
            format!(
                "partial results: {} of {n_blocks} blocks could not be read ({first})",
                failed.len()
            )
        });
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

    /// The ingester's traces, and the block its flushing traces are going to.
    async fn metrics_memory(
        &self,
        tenant: &TenantId,
        template: &Arc<MetricsEvaluator>,
        stats: &mut SearchMetrics,
    ) -> Result<(MetricsEvaluator, Option<uuid::Uuid>), QueryError> {
        let mut ev = template.empty_like();
        let Some(ing) = &self.ingester else {
            return Ok((ev, None));
        };
        let (snapshot, flushing_block) = ing.snapshot_with_block(tenant);
        let (ev, s) = Self::blocking(move || {
            let mut s = SearchMetrics::default();
            for (_, data) in snapshot {
                // Encoded by this process: a failure is a bug; skip rather than fail.
                let Ok(batches) = data.decode() else { continue };
                s.inspected_bytes += data.len() as u64;
                let trace = OtlpTrace::new(&batches);
                s.inspected_traces += 1;
                s.inspected_spans += trace.spans() as u64;
                // Only a query the engine cannot run fails here; every trace would fail alike.
                if ev.observe(&trace).is_err() {
                    break;
                }
            }
            (ev, s)
        })
        .await?;
        stats.inspected_bytes += s.inspected_bytes;
        stats.inspected_traces += s.inspected_traces;
        stats.inspected_spans += s.inspected_spans;
        Ok((ev, flushing_block))
    }

    /// One block, a row group at a time. None when the block vanished (compaction).
    async fn metrics_block(
        &self,
        tenant: &TenantId,
        meta: Arc<BlockMeta>,
        template: Arc<MetricsEvaluator>,
        columns: Arc<block::SearchColumns>,
        range: TimeRange,
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
