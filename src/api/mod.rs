//! The HTTP API: the only module that knows HTTP routes and JSON shapes. Paths, parameters
//! and response shapes are Tempo's, so Grafana's Tempo datasource works unchanged.

pub(crate) mod auth;
pub(crate) mod client;
mod json;
mod metrics;
pub(crate) mod peer;
mod search;
mod streaming;
mod tags;
pub mod tempopb;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prost::Message;
use serde::Deserialize;
use serde_json::json;
use tracing::warn;

use crate::frontend::Frontend;
use crate::metrics::Metrics;
use crate::model::{IdError, TenantId, TraceId};
use crate::overrides::Overrides;
use crate::querier::{QueryError, TimeRange};

/// The Tempo API level vivace serves; Grafana turns features on by comparing it with semver
/// (streaming search needs 2.2.0, metrics streaming 2.7.0).
pub(crate) const TEMPO_API_VERSION: &str = "2.9.0";
pub(crate) const TENANT_HEADER: &str = "X-Scope-OrgID";

#[derive(Clone)]
pub(crate) struct ApiState {
    pub(crate) frontend: Option<Arc<Frontend>>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) ready: Arc<AtomicBool>,
    /// Decides each request's tenant(s): header, or credential when built-in auth is on.
    pub(crate) tenants: auth::TenantResolver,
    /// Per-tenant read limits; `None` where this process runs no distributor's overrides.
    pub(crate) overrides: Option<Arc<Overrides>>,
    /// `query_frontend.metrics`: TraceQL metrics limits.
    pub(crate) query_limits: QueryLimits,
    /// Set: `/internal/live` answers only nodes presenting it (see `peer.rs`).
    pub(crate) peer: Option<Arc<peer::PeerToken>>,
}

/// The frontend's TraceQL metrics limits (`query_frontend.metrics`).
#[derive(Clone, Debug)]
pub(crate) struct QueryLimits {
    pub(crate) max_duration: std::time::Duration,
    pub(crate) max_exemplars: usize,
    pub(crate) max_series: usize,
}

impl From<&crate::config::MetricsQueryConfig> for QueryLimits {
    fn from(c: &crate::config::MetricsQueryConfig) -> Self {
        Self {
            max_duration: c.max_duration,
            max_exemplars: c.max_exemplars,
            max_series: c.max_response_series,
        }
    }
}

pub(crate) fn router(state: ApiState) -> Router {
    let streaming = streaming::StreamingQuerier {
        state: state.clone(),
    };
    Router::new()
        // gRPC over h2c on the HTTP port, as Grafana's streaming search expects.
        .route_service("/tempopb.StreamingQuerier/{*method}", streaming)
        .route("/ready", get(ready))
        .route("/api/echo", get(echo))
        .route("/api/status/buildinfo", get(buildinfo))
        .route("/metrics", get(metrics))
        .route("/api/traces/{id}", get(trace_v1))
        .route("/api/v2/traces/{id}", get(trace_v2))
        .route("/api/search", get(search::search))
        .route("/internal/live", get(internal_live))
        .route("/api/metrics/query_range", get(metrics::query_range))
        .route("/api/metrics/query", get(metrics::query_instant))
        .route("/api/search/tags", get(tags::tags_v1))
        .route("/api/v2/search/tags", get(tags::tags_v2))
        .route("/api/search/tag/{tag}/values", get(tags::tag_values_v1))
        .route("/api/v2/search/tag/{tag}/values", get(tags::tag_values_v2))
        .with_state(state)
}

/// Every way a request can fail, mapped to a status code in one place.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl From<IdError> for ApiError {
    fn from(e: IdError) -> Self {
        ApiError::BadRequest(e.to_string())
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = match &self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Auth(e) => return auth_response(e),
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if code.is_server_error() {
            warn!(error = %self, "request failed");
        }
        (code, self.to_string()).into_response()
    }
}

async fn ready(State(s): State<ApiState>) -> Response {
    if s.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: starting up").into_response()
    }
}

async fn echo() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "echo\n",
    )
        .into_response()
}

async fn buildinfo() -> Response {
    axum::Json(json!({
        "version": TEMPO_API_VERSION,
        "revision": option_env!("VIVACE_GIT_REVISION").unwrap_or("unknown"),
        "branch": "main",
        "buildUser": "vivace",
        "buildDate": "",
        "goVersion": "",
        "vivaceVersion": env!("CARGO_PKG_VERSION"),
    }))
    .into_response()
}

async fn metrics(State(s): State<ApiState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

/// An auth failure as HTTP: 401 (with `WWW-Authenticate` when built-in auth refused the
/// credential), 403 for a tenant the credential does not grant, 400 for a malformed header.
pub(crate) fn auth_response(e: &auth::AuthError) -> Response {
    use auth::AuthError;
    let code = match e {
        AuthError::NoOrgId | AuthError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
        AuthError::Forbidden(_) => StatusCode::FORBIDDEN,
        AuthError::BadTenant(_) => StatusCode::BAD_REQUEST,
    };
    let mut resp = (code, e.to_string()).into_response();
    if e.challenge() {
        for c in auth::CHALLENGES {
            resp.headers_mut()
                .append(header::WWW_AUTHENTICATE, HeaderValue::from_static(c));
        }
    }
    resp
}

#[derive(Deserialize)]
struct LiveParams {
    trace: Option<String>,
    /// `p:offset,...`: answer for those partitions once applied up to their offsets.
    wait: Option<String>,
}

/// This node's live traces for a query on another node sharing the ingest log (the
/// encoding is `querier::remote`'s): the traces of one ID, or all of the tenant's.
async fn internal_live(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Query(q): Query<LiveParams>,
) -> Result<Response, ApiError> {
    let tenant = match &s.peer {
        Some(p) => p.tenant(&headers)?,
        None => tenant(&s, &headers)?,
    };
    let trace = q.trace.as_deref().map(TraceId::parse_hex).transpose()?;
    let frontend = s
        .frontend
        .as_ref()
        .ok_or_else(|| ApiError::Unavailable("this process runs no query frontend".into()))?;
    let wanted = match q.wait.as_deref() {
        None => Default::default(),
        Some(w) => crate::querier::remote::decode_wanted(w).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "wait must be partition:offset pairs separated by commas, got {w:?}"
            ))
        })?,
    };
    let part = frontend.live_part(&tenant, trace.as_ref(), &wanted).await;
    let body = tokio::task::spawn_blocking(move || crate::querier::remote::encode_part(&part))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response())
}

fn tenant(s: &ApiState, headers: &HeaderMap) -> Result<TenantId, ApiError> {
    Ok(s.tenants.resolve_one(headers)?)
}

/// The tenants a read covers: Tempo's cross-tenant form `a|b` reads several at once.
fn read_tenants(s: &ApiState, headers: &HeaderMap) -> Result<Vec<TenantId>, ApiError> {
    Ok(s.tenants.resolve_many(headers)?)
}

#[derive(Deserialize)]
struct RangeParams {
    start: Option<String>,
    end: Option<String>,
}

fn time_range(p: &RangeParams) -> Result<Option<TimeRange>, ApiError> {
    let parse = |name: &str, v: &str| {
        v.parse::<u64>().map_err(|_| {
            ApiError::BadRequest(format!("invalid {name} {v:?}: expected unix seconds"))
        })
    };
    match (p.start.as_deref(), p.end.as_deref()) {
        (None | Some(""), None | Some("")) => Ok(None),
        (Some(s), Some(e)) if !s.is_empty() && !e.is_empty() => {
            let (start_s, end_s) = (parse("start", s)?, parse("end", e)?);
            if start_s == 0 && end_s == 0 {
                return Ok(None);
            }
            if end_s < start_s {
                return Err(ApiError::BadRequest(format!(
                    "invalid time range: end {end_s} is before start {start_s}"
                )));
            }
            Ok(Some(TimeRange { start_s, end_s }))
        }
        _ => Err(ApiError::BadRequest(
            "start and end must be given together".into(),
        )),
    }
}

fn wants_protobuf(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/protobuf") || v.contains("application/x-protobuf"))
}

async fn lookup(
    s: &ApiState,
    headers: &HeaderMap,
    id: &str,
    params: &RangeParams,
) -> Result<(Option<crate::frontend::TraceByIdResult>, bool), ApiError> {
    let tenants = read_tenants(s, headers)?;
    let id = TraceId::parse_hex(id)?;
    let range = time_range(params)?;
    let frontend = s
        .frontend
        .as_ref()
        .ok_or_else(|| ApiError::Unavailable("this process runs no query frontend".into()))?;
    let found = match tenants.as_slice() {
        [one] => frontend.trace_by_id(one, &id, range).await?,
        _ => frontend.trace_by_id_in(&tenants, &id, range).await?,
    };
    Ok((found, wants_protobuf(headers)))
}

/// A trace as Tempo's v1 JSON (`{"batches": [...]}`), for the command line.
pub(crate) fn trace_v1_json(batches: &[crate::model::ResourceSpans]) -> String {
    serde_json::to_string_pretty(&json!({ "batches": json::resource_spans(batches) }))
        .unwrap_or_default()
}

/// A search request from a TraceQL query and a limit, checked as /api/search checks it.
pub(crate) fn search_request(
    q: &str,
    limit: u32,
) -> Result<crate::querier::search::SearchRequest, ApiError> {
    search::build_request(&search::SearchParams::from_query(q, limit))
}

/// Search results as /api/search's JSON, indented for a terminal (keys sorted).
pub(crate) fn search_response_json(r: &crate::querier::search::SearchResults) -> String {
    let mut out = Vec::new();
    search::write_response(&mut out, r, &[]);
    serde_json::from_slice::<serde_json::Value>(&out)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_default()
}

fn protobuf(msg: impl Message) -> Response {
    (
        [(header::CONTENT_TYPE, "application/protobuf")],
        msg.encode_to_vec(),
    )
        .into_response()
}

async fn trace_v1(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    Query(params): Query<RangeParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (found, proto) = lookup(&s, &headers, &id, &params).await?;
    // v1 answers an unknown trace with an empty 404, as Tempo does.
    let Some(found) = found else {
        return Ok(StatusCode::NOT_FOUND.into_response());
    };
    if proto {
        return Ok(protobuf(tempopb::Trace {
            batches: found.batches,
        }));
    }
    Ok(axum::Json(json!({ "batches": json::resource_spans(&found.batches) })).into_response())
}

async fn trace_v2(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    Query(params): Query<RangeParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (found, proto) = lookup(&s, &headers, &id, &params).await?;
    // v2 answers an unknown trace with 200 and an empty trace: Grafana reads a v2 404 as
    // "this is an old Tempo" and falls back to v1.
    let (batches, inspected) = match found {
        Some(f) => (f.batches, f.inspected_bytes),
        None => (Vec::new(), 0),
    };
    if proto {
        return Ok(protobuf(tempopb::TraceByIdResponse {
            trace: Some(tempopb::Trace { batches }),
            metrics: Some(tempopb::TraceByIdMetrics {
                inspected_bytes: inspected,
            }),
            status: tempopb::PartialStatus::Complete as i32,
            message: String::new(),
        }));
    }
    let mut trace = serde_json::Map::new();
    if !batches.is_empty() {
        trace.insert("resourceSpans".into(), json::resource_spans(&batches));
    }
    let mut metrics = serde_json::Map::new();
    if inspected > 0 {
        metrics.insert("inspectedBytes".into(), inspected.to_string().into());
    }
    Ok(axum::Json(json!({ "trace": trace, "metrics": metrics })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_ranges() {
        let p = |s: Option<&str>, e: Option<&str>| RangeParams {
            start: s.map(String::from),
            end: e.map(String::from),
        };
        assert_eq!(time_range(&p(None, None)).unwrap(), None);
        assert_eq!(
            time_range(&p(Some("10"), Some("20"))).unwrap(),
            Some(TimeRange {
                start_s: 10,
                end_s: 20
            })
        );
        assert!(time_range(&p(Some("10"), None)).is_err());
        assert!(time_range(&p(Some("20"), Some("10"))).is_err());
        assert!(time_range(&p(Some("x"), Some("10"))).is_err());
    }

    #[test]
    fn auth_errors_map_to_status_codes() {
        use auth::AuthError;
        let r = auth_response(&AuthError::Unauthenticated("invalid credentials"));
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            r.headers().get_all(header::WWW_AUTHENTICATE).iter().count(),
            2
        );
        let r = auth_response(&AuthError::NoOrgId);
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert!(r.headers().get(header::WWW_AUTHENTICATE).is_none());
        assert_eq!(
            auth_response(&AuthError::Forbidden("x".into())).status(),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            auth_response(&AuthError::BadTenant("x".into())).status(),
            StatusCode::BAD_REQUEST
        );
    }
}
