//! The query frontend: the entry point for queries. It asks the querier for every fragment
//! of a trace and combines them into one, so late spans and copies in several blocks read
//! back as one trace with each span once.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use crate::metrics::Metrics;
use crate::model::{combine, ResourceSpans, TenantId, TraceId};
use crate::querier::search::{SearchRequest, SearchResults};
use crate::querier::tags::{TagNames, TagTarget, TagValue, TagsRequest};
use crate::querier::{Querier, QueryError, TimeRange};

pub struct TraceByIdResult {
    pub batches: Vec<ResourceSpans>,
    pub inspected_bytes: u64,
}

pub struct Frontend {
    querier: Arc<Querier>,
    metrics: Arc<Metrics>,
}

impl Frontend {
    pub fn new(querier: Arc<Querier>, metrics: Arc<Metrics>) -> Self {
        Self { querier, metrics }
    }

    /// `None` when no span of the trace is known.
    pub async fn trace_by_id(
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

    pub async fn search(
        &self,
        tenant: &TenantId,
        req: &SearchRequest,
    ) -> Result<SearchResults, QueryError> {
        self.timed("search", self.querier.search(tenant, req)).await
    }

    pub async fn tag_names(
        &self,
        tenant: &TenantId,
        req: &TagsRequest,
    ) -> Result<TagNames, QueryError> {
        self.timed("search_tags", self.querier.tag_names(tenant, req))
            .await
    }

    pub async fn tag_values(
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

    /// Trace by ID across several tenants (Tempo's `a|b`): fragments from all of them,
    /// combined into one trace.
    pub async fn trace_by_id_in(
        &self,
        tenants: &[TenantId],
        id: &TraceId,
        range: Option<TimeRange>,
    ) -> Result<Option<TraceByIdResult>, QueryError> {
        let mut batches = Vec::new();
        let mut inspected_bytes = 0;
        for t in tenants {
            if let Some(found) = self.trace_by_id(t, id, range).await? {
                batches.extend(found.batches);
                inspected_bytes += found.inspected_bytes;
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

    /// Search across several tenants: every tenant's hits, newest first, cut to the limit.
    pub async fn search_in(
        &self,
        tenants: &[TenantId],
        req: &SearchRequest,
    ) -> Result<SearchResults, QueryError> {
        let mut out = SearchResults::default();
        for t in tenants {
            let r = self.search(t, req).await?;
            out.traces.extend(r.traces);
            let (m, n) = (&mut out.metrics, &r.metrics);
            m.inspected_traces += n.inspected_traces;
            m.inspected_bytes += n.inspected_bytes;
            m.inspected_spans += n.inspected_spans;
            m.total_blocks += n.total_blocks;
            m.completed_jobs += n.completed_jobs;
            m.total_jobs += n.total_jobs;
        }
        out.traces.sort_by(|a, b| {
            b.start_unix_nano
                .cmp(&a.start_unix_nano)
                .then_with(|| a.id.cmp(&b.id))
        });
        out.traces.truncate(req.limit);
        Ok(out)
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
