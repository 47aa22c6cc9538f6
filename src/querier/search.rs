//! TraceQL search over the ingester's memory and the blocks of a tenant.
//!
//! Every source yields whole traces, the engine evaluates the query on each, and hits are
//! merged by trace ID (a trace can be split across memory and several blocks), then ordered
//! newest first with the trace ID as tie-break, so the same data always gives the same
//! answer.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::{Querier, QueryError, TimeRange};
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

#[derive(Debug, Clone, PartialEq)]
pub struct HitSpan {
    pub span_id: Vec<u8>,
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
}

/// What evaluating one source (memory or one block) produced.
#[derive(Default)]
struct Partial {
    hits: Vec<TraceHit>,
    metrics: SearchMetrics,
}

impl Querier {
    pub async fn search(
        &self,
        tenant: &TenantId,
        req: &SearchRequest,
    ) -> Result<SearchResults, QueryError> {
        let params = SearchParams::from(req);
        let scan = self
            .scan(tenant, req.range, move |id, batches, p: &mut Partial| {
                params.evaluate(id, batches, p)
            })
            .await?;
        let mut partials = Vec::with_capacity(scan.sources.len());
        for s in scan.sources {
            let mut p = s.value;
            p.metrics.inspected_bytes += s.inspected_bytes;
            partials.push(p);
        }
        let mut out = merge(partials, req.limit);
        out.metrics.total_blocks = scan.blocks;
        out.metrics.total_jobs = scan.blocks + 1;
        out.metrics.completed_jobs = scan.blocks + 1;
        Ok(out)
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
        let matches = match engine::evaluate(&self.query, &trace) {
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

fn spanset(trace: &OtlpTrace<'_>, m: SpansetMatch, spss: usize) -> HitSpanset {
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
        .map(|&i| {
            let s = trace.span(i);
            HitSpan {
                span_id: s.span_id.clone(),
                name: s.name.clone(),
                start_unix_nano: s.start_time_unix_nano,
                duration_nanos: s.end_time_unix_nano.saturating_sub(s.start_time_unix_nano),
                attributes: span_attrs.next().unwrap_or_default(),
            }
        })
        .collect();
    HitSpanset {
        spans,
        matched,
        attributes: m.attributes,
    }
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

/// Merges per-source hits by trace ID and keeps the `limit` newest.
fn merge(partials: Vec<Partial>, limit: usize) -> SearchResults {
    let mut metrics = SearchMetrics::default();
    let mut by_id: HashMap<TraceId, TraceHit> = HashMap::new();
    for p in partials {
        metrics.inspected_traces += p.metrics.inspected_traces;
        metrics.inspected_bytes += p.metrics.inspected_bytes;
        metrics.inspected_spans += p.metrics.inspected_spans;
        for hit in p.hits {
            match by_id.get_mut(&hit.id) {
                None => {
                    by_id.insert(hit.id, hit);
                }
                Some(h) => {
                    h.start_unix_nano = h.start_unix_nano.min(hit.start_unix_nano);
                    h.end_unix_nano = h.end_unix_nano.max(hit.end_unix_nano);
                    if h.root_service_name.is_none() {
                        h.root_service_name = hit.root_service_name;
                        h.root_span_name = hit.root_span_name;
                    }
                    h.spansets.extend(hit.spansets);
                    for (svc, st) in hit.service_stats {
                        let e = h.service_stats.entry(svc).or_default();
                        e.span_count += st.span_count;
                        e.error_count += st.error_count;
                    }
                }
            }
        }
    }
    let mut traces: Vec<TraceHit> = by_id.into_values().collect();
    traces.sort_by(|a, b| {
        b.start_unix_nano
            .cmp(&a.start_unix_nano)
            .then_with(|| a.id.cmp(&b.id))
    });
    traces.truncate(limit);
    SearchResults { traces, metrics }
}
