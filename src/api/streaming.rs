//! `tempopb.StreamingQuerier/Search` over gRPC on the HTTP port (h2c), which Grafana's Tempo
//! datasource uses when streaming is on. Each message carries new traces and cumulative
//! metrics; messages stay under 1 MiB.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use tonic::codegen::BoxFuture;
use tonic::server::{Grpc, ServerStreamingService};
use tonic::{Request, Response, Status};

use super::search::{build_request, value_any, SearchParams};
use super::tempopb::{
    SearchMetrics, SearchRequest, SearchResponse, ServiceStats, Span, SpanSet, TraceSearchMetadata,
};
use super::{tenant_from_header, ApiError, ApiState, TENANT_HEADER};
use crate::model::KeyValue;
use crate::querier::search::{HitSpanset, SearchResults, TraceHit};

pub(super) const SEARCH_PATH: &str = "/tempopb.StreamingQuerier/Search";
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
        let this = self.clone();
        Box::pin(async move {
            if req.uri().path() != SEARCH_PATH {
                return Ok(Status::unimplemented(format!(
                    "{} is not served: vivace streams Search only",
                    req.uri().path()
                ))
                .into_http());
            }
            let mut grpc = Grpc::new(tonic_prost::ProstCodec::default());
            Ok(grpc.server_streaming(SearchSvc(this.state), req).await)
        })
    }
}

struct SearchSvc(ApiState);

type ResponseStream = Pin<Box<dyn Stream<Item = Result<SearchResponse, Status>> + Send>>;

impl ServerStreamingService<SearchRequest> for SearchSvc {
    type Response = SearchResponse;
    type ResponseStream = ResponseStream;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: Request<SearchRequest>) -> Self::Future {
        let state = self.0.clone();
        Box::pin(async move {
            let header = request
                .metadata()
                .get(TENANT_HEADER.to_ascii_lowercase().as_str())
                .and_then(|v| http::HeaderValue::from_bytes(v.as_bytes()).ok());
            let tenant = tenant_from_header(state.multitenancy, header.as_ref()).map_err(status)?;
            let params = SearchParams::from_proto(request.get_ref());
            let req = build_request(&params).map_err(status)?;
            let frontend = state
                .frontend
                .as_ref()
                .ok_or_else(|| Status::unavailable("this process runs no query frontend"))?;
            let results = frontend
                .search(&tenant, &req)
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
            let messages = packets(&results);
            let stream: ResponseStream =
                Box::pin(futures::stream::iter(messages.into_iter().map(Ok)));
            Ok(Response::new(stream))
        })
    }
}

fn status(e: ApiError) -> Status {
    match e {
        ApiError::BadRequest(m) => Status::invalid_argument(m),
        ApiError::Unauthorized(m) => Status::unauthenticated(m),
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
