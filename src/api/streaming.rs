//! `tempopb.StreamingQuerier` over gRPC on the HTTP port (h2c), which Grafana's Tempo
//! datasource uses when streaming is on: Search, the four tag methods and the two TraceQL
//! metrics methods. Each search message carries new traces and cumulative metrics; messages
//! stay under 1 MiB.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use tonic::codegen::BoxFuture;
use tonic::server::{Grpc, ServerStreamingService};
use tonic::{Request, Response, Status};

use super::auth::grpc_status as auth_status;
use super::metrics::{self, MetricsParams};
use super::search::{apply_read_limits, build_request, value_any, SearchParams};
use super::tags::{self, TagParams};
use super::tempopb::{
    MetadataMetrics, SearchMetrics, SearchRequest, SearchResponse, SearchTagValuesRequest,
    SearchTagValuesResponse, SearchTagValuesV2Response, SearchTagsRequest, SearchTagsResponse,
    SearchTagsV2Response, SearchTagsV2Scope, ServiceStats, Span, SpanSet, TagValue,
    TraceSearchMetadata,
};
use super::tempopb::{
    QueryInstantRequest, QueryInstantResponse, QueryRangeRequest, QueryRangeResponse,
};
use super::{ApiError, ApiState};
use crate::model::{KeyValue, TenantId};
use crate::querier::search::{HitSpanset, SearchResults, TraceHit};

const SERVICE: &str = "/tempopb.StreamingQuerier/";
/// Tempo's `max_grpc_streaming_packet_size` default.
const MAX_PACKET_BYTES: usize = 1 << 20;

#[derive(Clone)]
pub(super) struct StreamingQuerier {
    pub(super) state: ApiState,
}

impl tower::Service<http::Request<axum::body::Body>> for StreamingQuerier {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<axum::body::Body>) -> Self::Future {
        let state = self.state.clone();
        Box::pin(async move {
            let method = req.uri().path().strip_prefix(SERVICE).unwrap_or_default();
            Ok(match method {
                "Search" => serve(state, search, req).await,
                "SearchTags" => serve(state, search_tags, req).await,
                "SearchTagsV2" => serve(state, search_tags_v2, req).await,
                "SearchTagValues" => serve(state, search_tag_values, req).await,
                "SearchTagValuesV2" => serve(state, search_tag_values_v2, req).await,
                "MetricsQueryRange" => serve(state, metrics_query_range, req).await,
                "MetricsQueryInstant" => serve(state, metrics_query_instant, req).await,
                other => Status::unimplemented(format!(
                    "tempopb.StreamingQuerier/{other} is not served by vivace"
                ))
                .into_http(),
            })
        })
    }
}

/// One streaming method: computes every message of the answer from the request.
type Method<Req, Resp> = fn(ApiState, TenantId, Req) -> BoxFuture<Vec<Resp>, ApiError>;

async fn serve<Req, Resp>(
    state: ApiState,
    method: Method<Req, Resp>,
    req: http::Request<axum::body::Body>,
) -> http::Response<tonic::body::Body>
where
    Req: prost::Message + Default + Send + 'static,
    Resp: prost::Message + Send + 'static,
{
    let mut grpc = Grpc::new(tonic_prost::ProstCodec::<Resp, Req>::default());
    grpc.server_streaming(Streamed { state, method }, req).await
}

struct Streamed<Req, Resp> {
    state: ApiState,
    method: Method<Req, Resp>,
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl<Req: Send + 'static, Resp: Send + 'static> ServerStreamingService<Req>
    for Streamed<Req, Resp>
{
    type Response = Resp;
    type ResponseStream = ResponseStream<Resp>;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: Request<Req>) -> Self::Future {
        let state = self.state.clone();
        let method = self.method;
        Box::pin(async move {
            // Datasource headers (X-Scope-OrgID, Authorization) arrive as gRPC metadata.
            let headers = request.metadata().clone().into_headers();
            let tenant = state
                .tenants
                .resolve_one(&headers)
                .map_err(|e| auth_status(&e))?;
            let messages = method(state, tenant, request.into_inner())
                .await
                .map_err(status)?;
            let stream: ResponseStream<Resp> =
                Box::pin(futures::stream::iter(messages.into_iter().map(Ok)));
            Ok(Response::new(stream))
        })
    }
}

fn search(
    state: ApiState,
    tenant: TenantId,
    req: SearchRequest,
) -> BoxFuture<Vec<SearchResponse>, ApiError> {
    Box::pin(async move {
        let params = SearchParams::from_proto(&req);
        let mut req = build_request(&params)?;
        apply_read_limits(&state, std::slice::from_ref(&tenant), &mut req)?;
        let frontend = state
            .frontend
            .as_ref()
            .ok_or_else(|| ApiError::Unavailable("this process runs no query frontend".into()))?;
        let results = frontend.search(&tenant, &req).await?;
        Ok(packets(&results))
    })
}

/// A streaming metrics request as the HTTP parameters it stands for (unix ns, step in ns,
/// zero meaning "not given").
fn metrics_params(query: &str, start: u64, end: u64, step: u64, exemplars: u32) -> MetricsParams {
    let nonzero = |v: u64| (v > 0).then(|| v.to_string());
    MetricsParams {
        q: Some(query.to_owned()),
        // Nanoseconds whatever their digit count: a streaming client always sends them.
        start: nonzero(start).map(|v| format!("{v:0>11}")),
        end: nonzero(end).map(|v| format!("{v:0>11}")),
        step: (step > 0).then(|| format!("{}ns", step)),
        exemplars: (exemplars > 0).then(|| exemplars.to_string()),
        ..Default::default()
    }
}

fn metrics_query_range(
    state: ApiState,
    tenant: TenantId,
    r: QueryRangeRequest,
) -> BoxFuture<Vec<QueryRangeResponse>, ApiError> {
    Box::pin(async move {
        let p = metrics_params(&r.query, r.start, r.end, r.step, r.exemplars);
        let req = p.check(false, metrics::now_ns())?;
        let results = metrics::run(&state, std::slice::from_ref(&tenant), &req).await?;
        Ok(vec![metrics::range_proto(&results)])
    })
}

fn metrics_query_instant(
    state: ApiState,
    tenant: TenantId,
    r: QueryInstantRequest,
) -> BoxFuture<Vec<QueryInstantResponse>, ApiError> {
    Box::pin(async move {
        let p = metrics_params(&r.query, r.start, r.end, 0, 0);
        let req = p.check(true, metrics::now_ns())?;
        let results = metrics::run(&state, std::slice::from_ref(&tenant), &req).await?;
        Ok(vec![metrics::instant_proto(&results)])
    })
}

fn tag_params(scope: &str, query: &str, start: u32, end: u32, limit: u32) -> TagParams {
    let nonzero = |v: u32| (v > 0).then(|| v.to_string());
    let text = |v: &str| Some(v.to_owned()).filter(|v| !v.is_empty());
    TagParams {
        scope: text(scope),
        q: text(query),
        start: nonzero(start),
        end: nonzero(end),
        limit: nonzero(limit),
    }
}

fn search_tags(
    state: ApiState,
    tenant: TenantId,
    r: SearchTagsRequest,
) -> BoxFuture<Vec<SearchTagsResponse>, ApiError> {
    Box::pin(async move {
        let p = tag_params(&r.scope, &r.query, r.start, r.end, r.max_tags_per_scope);
        Ok(vec![SearchTagsResponse {
            tag_names: tags::names_v1(&state, &tenant, &p).await?,
            metrics: Some(MetadataMetrics::default()),
        }])
    })
}

fn search_tags_v2(
    state: ApiState,
    tenant: TenantId,
    r: SearchTagsRequest,
) -> BoxFuture<Vec<SearchTagsV2Response>, ApiError> {
    Box::pin(async move {
        let p = tag_params(&r.scope, &r.query, r.start, r.end, r.max_tags_per_scope);
        let scopes = tags::names_v2(&state, &tenant, &p)
            .await?
            .into_iter()
            .map(|(name, tags)| SearchTagsV2Scope { name, tags })
            .collect();
        Ok(vec![SearchTagsV2Response {
            scopes,
            metrics: Some(MetadataMetrics::default()),
        }])
    })
}

fn search_tag_values(
    state: ApiState,
    tenant: TenantId,
    r: SearchTagValuesRequest,
) -> BoxFuture<Vec<SearchTagValuesResponse>, ApiError> {
    Box::pin(async move {
        let p = tag_params("", &r.query, r.start, r.end, r.max_tag_values);
        Ok(vec![SearchTagValuesResponse {
            tag_values: tags::values_v1(&state, &tenant, &r.tag_name, &p).await?,
            metrics: Some(MetadataMetrics::default()),
        }])
    })
}

fn search_tag_values_v2(
    state: ApiState,
    tenant: TenantId,
    r: SearchTagValuesRequest,
) -> BoxFuture<Vec<SearchTagValuesV2Response>, ApiError> {
    Box::pin(async move {
        let p = tag_params("", &r.query, r.start, r.end, r.max_tag_values);
        let tag_values = tags::values_v2(&state, &tenant, &r.tag_name, &p)
            .await?
            .into_iter()
            .map(|v| TagValue {
                r#type: v.kind.to_owned(),
                value: v.value,
            })
            .collect();
        Ok(vec![SearchTagValuesV2Response {
            tag_values,
            metrics: Some(MetadataMetrics::default()),
        }])
    })
}

fn status(e: ApiError) -> Status {
    match e {
        ApiError::BadRequest(m) => Status::invalid_argument(m),
        ApiError::Auth(e) => auth_status(&e),
        ApiError::Unavailable(m) => Status::unavailable(m),
        ApiError::Internal(m) => Status::internal(m),
    }
}

/// Splits the results into messages under the packet size; every message carries the
/// cumulative metrics, as Grafana replaces them on each one.
fn packets(r: &SearchResults) -> Vec<SearchResponse> {
    use prost::Message;
    let m = &r.metrics;
    let metrics = SearchMetrics {
        inspected_traces: m.inspected_traces.min(u64::from(u32::MAX)) as u32,
        inspected_bytes: m.inspected_bytes,
        total_blocks: m.total_blocks as u32,
        completed_jobs: m.completed_jobs as u32,
        total_jobs: m.total_jobs as u32,
        total_block_bytes: 0,
        inspected_spans: m.inspected_spans,
    };
    let mut out = Vec::new();
    let mut cur = SearchResponse {
        traces: Vec::new(),
        metrics: Some(metrics.clone()),
    };
    let mut size = 0;
    for t in &r.traces {
        let meta = trace_meta(t);
        let len = meta.encoded_len();
        if size + len > MAX_PACKET_BYTES && !cur.traces.is_empty() {
            out.push(std::mem::replace(
                &mut cur,
                SearchResponse {
                    traces: Vec::new(),
                    metrics: Some(metrics.clone()),
                },
            ));
            size = 0;
        }
        size += len;
        cur.traces.push(meta);
    }
    out.push(cur);
    out
}

fn attrs(a: &[(String, crate::traceql::Value)]) -> Vec<KeyValue> {
    a.iter()
        .map(|(k, v)| KeyValue {
            key: k.clone(),
            value: Some(value_any(v)),
            ..Default::default()
        })
        .collect()
}

fn span_set(s: &HitSpanset) -> SpanSet {
    SpanSet {
        spans: s
            .spans
            .iter()
            .map(|sp| Span {
                span_id: hex::encode(&sp.span_id),
                name: sp.name.clone(),
                start_time_unix_nano: sp.start_unix_nano,
                duration_nanos: sp.duration_nanos,
                attributes: attrs(&sp.attributes),
            })
            .collect(),
        matched: s.matched as u32,
        attributes: attrs(&s.attributes),
    }
}

fn trace_meta(t: &TraceHit) -> TraceSearchMetadata {
    let sets: Vec<SpanSet> = t.spansets.iter().map(span_set).collect();
    TraceSearchMetadata {
        trace_id: t.id.to_hex(),
        root_service_name: t
            .root_service_name
            .clone()
            .unwrap_or_else(|| super::search::ROOT_NOT_RECEIVED.to_owned()),
        root_trace_name: t.root_span_name.clone().unwrap_or_default(),
        start_time_unix_nano: t.start_unix_nano,
        duration_ms: ((t.end_unix_nano.saturating_sub(t.start_unix_nano)) / 1_000_000) as u32,
        span_set: sets.first().cloned(),
        span_sets: sets,
        service_stats: t
            .service_stats
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    ServiceStats {
                        span_count: v.span_count,
                        error_count: v.error_count,
                    },
                )
            })
            .collect(),
    }
}
