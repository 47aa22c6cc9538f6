//! The query frontend: the entry point for queries. It asks the querier for every fragment
//! of a trace and combines them into one, so late spans and copies in several blocks read
//! back as one trace with each span once.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use crate::block::SearchColumns;
use crate::metrics::Metrics;
use crate::model::{combine, ResourceSpans, TenantId, TraceId};
use crate::querier::metrics::MetricsResults;
use crate::querier::search::{SearchMetrics, SearchRequest, SearchResults};
use crate::querier::tags::{TagNames, TagTarget, TagValue, TagsRequest};
use crate::querier::{Querier, QueryError, TimeRange};
use crate::traceql::metrics::MetricsEvaluator;

pub(crate) struct TraceByIdResult {
    pub(crate) batches: Vec<ResourceSpans>,
    pub(crate) inspected_bytes: u64,
}

/// The resource attribute a cross-tenant trace by ID adds to every batch: the tenant it was
/// found in (vivace's addition; namespaced so it cannot be mistaken for the sender's own).
pub(crate) const TENANT_ATTRIBUTE: &str = "vivace.tenant";

pub(crate) struct Frontend {
    querier: Arc<Querier>,
    metrics: Arc<Metrics>,
}

impl Frontend {
    pub(crate) fn new(querier: Arc<Querier>, metrics: Arc<Metrics>) -> Self {
        Self { querier, metrics }
    }

    /// `None` when no span of the trace is known.
    pub(crate) async fn trace_by_id(
        &self,
        tenant: &TenantId,
        id: &TraceId,
        range: Option<TimeRange>,
    ) -> Result<Option<TraceByIdResult>, QueryError> {
        let found = self
            .timed("trace_by_id", self.querier.find_trace(tenant, id, range))
            .await?;
        let inspected_bytes = found.inspected_bytes;
        let batches = combine(found.batches);
        if batches.is_empty() {
            return Ok(None);
        }
        Ok(Some(TraceByIdResult {
            batches,
            inspected_bytes,
        }))
    }

    /// This node's live traces (and recent blocks) for another node's query, once its
    /// partitions in `wanted` are applied up to their offsets (bounded wait).
    pub(crate) async fn live_part(
        &self,
        tenant: &TenantId,
        trace: Option<&TraceId>,
        wanted: &std::collections::BTreeMap<i32, i64>,
    ) -> crate::querier::remote::LivePart {
        self.querier.local_live(tenant, trace, wanted).await
    }

    pub(crate) async fn search(
        &self,
        tenant: &TenantId,
        req: &SearchRequest,
    ) -> Result<SearchResults, QueryError> {
        self.timed("search", self.querier.search(tenant, req)).await
    }

    pub(crate) async fn tag_names(
        &self,
        tenant: &TenantId,
        req: &TagsRequest,
    ) -> Result<TagNames, QueryError> {
        self.timed("search_tags", self.querier.tag_names(tenant, req))
            .await
    }

    pub(crate) async fn tag_values(
        &self,
        tenant: &TenantId,
        target: TagTarget,
        req: &TagsRequest,
    ) -> Result<BTreeSet<TagValue>, QueryError> {
        self.timed(
            "search_tag_values",
            self.querier.tag_values(tenant, target, req),
        )
        .await
    }

    /// A TraceQL metrics query over one or several tenants (Tempo's `a|b`): each tenant's
    /// spans go into the same series, and job counts add up.
    pub(crate) async fn metrics(
        &self,
        tenants: &[TenantId],
        template: MetricsEvaluator,
        columns: Arc<SearchColumns>,
    ) -> Result<MetricsResults, QueryError> {
        self.timed(
            "metrics_query_range",
            self.metrics_in(tenants, template, columns),
        )
        .await
    }

    async fn metrics_in(
        &self,
        tenants: &[TenantId],
        template: MetricsEvaluator,
        columns: Arc<SearchColumns>,
    ) -> Result<MetricsResults, QueryError> {
        let mut total = template.empty_like();
        let mut stats = SearchMetrics::default();
        let mut partial: Option<String> = None;
        for t in tenants {
            let p = self.querier.metrics(t, &template, columns.clone()).await?;
            total.merge(p.evaluator);
            let (m, n) = (&mut stats, &p.metrics);
            m.inspected_traces += n.inspected_traces;
            m.inspected_bytes += n.inspected_bytes;
            m.inspected_spans += n.inspected_spans;
            m.total_blocks += n.total_blocks;
            m.completed_jobs += n.completed_jobs;
            m.total_jobs += n.total_jobs;
            partial = partial.or(p.partial);
        }
        Querier::finish_metrics(total, stats, partial).await
    }

    /// Trace by ID across several tenants (Tempo's `a|b`): the fragments of every tenant,
    /// each resource marked with its tenant ([`TENANT_ATTRIBUTE`]), combined into one trace.
    pub(crate) async fn trace_by_id_in(
        &self,
        tenants: &[TenantId],
        id: &TraceId,
        range: Option<TimeRange>,
    ) -> Result<Option<TraceByIdResult>, QueryError> {
        use crate::model::{any_value, AnyValue, KeyValue};
        let mut batches = Vec::new();
        let mut inspected_bytes = 0;
        for t in tenants {
            let Some(found) = self.trace_by_id(t, id, range).await? else {
                continue;
            };
            inspected_bytes += found.inspected_bytes;
            for mut b in found.batches {
                b.resource
                    .get_or_insert_with(Default::default)
                    .attributes
                    .push(KeyValue {
                        key: TENANT_ATTRIBUTE.to_owned(),
                        value: Some(AnyValue {
                            value: Some(any_value::Value::StringValue(t.to_string())),
                        }),
                        ..Default::default()
                    });
                batches.push(b);
            }
        }
        if batches.is_empty() {
            return Ok(None);
        }
        Ok(Some(TraceByIdResult {
            batches: combine(batches),
            inspected_bytes,
        }))
    }

    /// Search across several tenants (Tempo's `a|b`): every tenant's hits, newest first, cut
    /// to the limit. The second value names each hit's tenant (parallel to the traces).
    /// Metrics add up, so completedJobs < totalJobs survives the merge, and each tenant's
    /// partial-result reason is kept.
    pub(crate) async fn search_in(
        &self,
        tenants: &[TenantId],
        req: &SearchRequest,
    ) -> Result<(SearchResults, Vec<TenantId>), QueryError> {
        let mut hits = Vec::new();
        let mut out = SearchResults::default();
        for t in tenants {
            let r = self.search(t, req).await?;
            hits.extend(r.traces.into_iter().map(|h| (h, t.clone())));
            let (m, n) = (&mut out.metrics, &r.metrics);
            m.inspected_traces += n.inspected_traces;
            m.inspected_bytes += n.inspected_bytes;
            m.inspected_spans += n.inspected_spans;
            m.total_blocks += n.total_blocks;
            m.completed_jobs += n.completed_jobs;
            m.total_jobs += n.total_jobs;
            if let Some(why) = r.partial {
                out.partial = Some(match out.partial.take() {
                    Some(prev) => format!("{prev}; tenant {t}: {why}"),
                    None => format!("tenant {t}: {why}"),
                });
            }
        }
        hits.sort_by(|(a, ta), (b, tb)| {
            b.start_unix_nano
                .cmp(&a.start_unix_nano)
                .then_with(|| a.id.cmp(&b.id))
                .then_with(|| ta.cmp(tb))
        });
        hits.truncate(req.limit);
        let (traces, owners) = hits.into_iter().unzip();
        out.traces = traces;
        Ok((out, owners))
    }

    /// Runs a query and records its latency under `route`.
    async fn timed<T>(&self, route: &str, query: impl std::future::Future<Output = T>) -> T {
        let started = Instant::now();
        let out = query.await;
        self.metrics
            .query_duration
            .observe(route, started.elapsed().as_secs_f64());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;
    use crate::block::{self, BlockConfig, TraceInput};
    use crate::blocklist::BlockList;
    use crate::traceql::engine_tests::dataset;

    /// A cross-tenant search over a tenant with an unreadable block stays partial: the
    /// reason is kept and completedJobs stays below totalJobs after the merge.
    #[tokio::test]
    async fn cross_tenant_search_keeps_each_tenants_partial_flag() {
        let backend = Backend::memory();
        let list = Arc::new(BlockList::default());
        let (good, bad) = (TenantId::new("a").unwrap(), TenantId::new("b").unwrap());
        for (n, tenant) in [&good, &bad].into_iter().enumerate() {
            let traces: Vec<TraceInput> = dataset()
                .into_iter()
                .map(|(_, batches)| {
                    let first = &batches[0].scope_spans[0].spans[0].trace_id;
                    TraceInput {
                        id: TraceId::from_bytes(first).unwrap(),
                        batches,
                    }
                })
                .collect();
            let id = uuid::Uuid::from_u128(n as u128 + 1);
            let b = block::encode_block(tenant, id, 0, traces, &BlockConfig::default()).unwrap();
            backend
                .put(&block::data_key(tenant, id), b.data.clone())
                .await
                .unwrap();
            list.add(tenant.clone(), b.meta.clone());
            if tenant == &bad {
                // A second block whose data is not Parquet: the search skips it.
                let broken = uuid::Uuid::from_u128(99);
                let mut meta = b.meta.clone();
                meta.block_id = broken;
                backend
                    .put(
                        &block::data_key(tenant, broken),
                        b"not parquet".to_vec().into(),
                    )
                    .await
                    .unwrap();
                list.add(tenant.clone(), meta);
            }
        }
        let metrics = Arc::new(Metrics::default());
        let querier = Arc::new(Querier::new(backend, None, list, metrics.clone(), 1));
        let frontend = Frontend::new(querier, metrics);
        let req = SearchRequest {
            query: Arc::new(crate::traceql::parse("{}").unwrap()),
            limit: 1000,
            spss: 3,
            range: None,
            min_duration_nanos: None,
            max_duration_nanos: None,
        };
        let alone = frontend.search(&bad, &req).await.unwrap();
        assert!(alone.partial.is_some());
        let (both, owners) = frontend.search_in(&[good, bad], &req).await.unwrap();
        assert_eq!(both.traces.len(), owners.len());
        assert_eq!(both.traces.len(), 2 * alone.traces.len());
        let why = both
            .partial
            .expect("the merge dropped tenant b's partial flag");
        assert!(why.contains("tenant b"), "{why}");
        assert!(
            both.metrics.completed_jobs < both.metrics.total_jobs,
            "{:?}",
            both.metrics
        );
    }
}
