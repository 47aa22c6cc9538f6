//! OTLP/HTTP: `POST /v1/traces` with protobuf or JSON bodies, optionally gzip-compressed.
//! Errors carry a `google.rpc.Status` in the request's own format, as the OTLP spec asks.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytes::BytesMut;
use prost::Message;
use serde_json::json;
use tracing::debug;

use super::admission::{gunzip, Admission, AdmissionError, DecodeError, GunzipError, Reservation};
use super::estimate::estimate_protobuf;
use super::{refusal, response_for, Refusal};
use crate::api::auth::{AuthError, TenantResolver, CHALLENGES};
use crate::distributor::{Distributor, PushError, Received};
use crate::metrics::Stage;

#[derive(Clone)]
pub(crate) struct HttpReceiverState {
    pub(crate) distributor: Arc<Distributor>,
    pub(crate) tenants: TenantResolver,
    pub(crate) max_body_bytes: usize,
    pub(crate) admission: Admission,
}

pub(crate) fn router(state: HttpReceiverState) -> Router {
    Router::new()
        .route("/v1/traces", post(export))
        .with_state(state)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Protobuf,
    Json,
}

/// google.rpc.Status, the body of every OTLP/HTTP error.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

fn error(format: Format, http: StatusCode, grpc_code: i32, message: String) -> Response {
    debug!(status = http.as_u16(), message = %message, "otlp/http request refused");
    let mut resp = match format {
        Format::Json => (
            http,
            [(header::CONTENT_TYPE, "application/json")],
            json!({ "code": grpc_code, "message": message }).to_string(),
        )
            .into_response(),
        Format::Protobuf => (
            http,
            [(header::CONTENT_TYPE, "application/x-protobuf")],
            RpcStatus {
                code: grpc_code,
                message,
            }
            .encode_to_vec(),
        )
            .into_response(),
    };
    if http == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    resp
}

const INVALID_ARGUMENT: i32 = 3;
const RESOURCE_EXHAUSTED: i32 = 8;
const PERMISSION_DENIED: i32 = 7;
const UNAUTHENTICATED: i32 = 16;
const UNAVAILABLE: i32 = 14;

async fn export(State(s): State<HttpReceiverState>, headers: HeaderMap, body: Body) -> Response {
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let format = if ctype.starts_with("application/x-protobuf")
        || ctype.starts_with("application/protobuf")
    {
        Some(Format::Protobuf)
    } else if ctype.starts_with("application/json") {
        Some(Format::Json)
    } else {
        None
    };
    // Who is asking comes first: nothing else is said to an unauthenticated caller.
    let tenant = match s.tenants.resolve_one(&headers) {
        Ok(t) => t,
        Err(e) => return auth_error(format.unwrap_or(Format::Json), &e),
    };
    let Some(format) = format else {
        return error(
            Format::Json,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            INVALID_ARGUMENT,
            format!("unsupported content type {ctype:?}: use application/x-protobuf or application/json"),
        );
    };
    let limit = s.max_body_bytes;
    let too_large = || {
        error(
            format,
            StatusCode::PAYLOAD_TOO_LARGE,
            RESOURCE_EXHAUSTED,
            format!("request body is larger than the {limit} byte limit"),
        )
    };
    // A declared length already over a bound is refused before anything is read.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(n) = declared {
        if n > limit {
            return too_large();
        }
        let budget = s.admission.budget.limit();
        if n > budget {
            return refused(
                format,
                &AdmissionError::DecodedTooLarge {
                    bytes: n,
                    limit: budget,
                },
            );
        }
    }
    // What is received is held until the push is done, counted in the in-flight budget as
    // it arrives; the decoded request is added below.
    let mut reservation = match s.admission.budget.try_reserve(0) {
        Ok(r) => r,
        Err(e) => return refused(format, &e),
    };
    let body = match read_body(body, limit, &mut reservation).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => return too_large(),
        Err(BodyError::Refused(e)) => return refused(format, &e),
        Err(BodyError::Read(e)) => {
            return error(
                format,
                StatusCode::BAD_REQUEST,
                INVALID_ARGUMENT,
                format!("cannot read request body: {e}"),
            )
        }
    };
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    // The WAL keeps a protobuf export's gzip bytes as received (see `Received`).
    let gzip = (encoding == "gzip" && format == Format::Protobuf).then(|| body.clone());
    let (body, held) = match encoding.as_str() {
        "" | "identity" => (body.clone(), body.len()),
        "gzip" => match s
            .distributor
            .stage_cpu()
            .time(Stage::Inflate, || gunzip(&body, limit))
        {
            Ok(b) => {
                let held = body.len() + b.len();
                if let Err(e) = reservation.grow_to(held) {
                    return refused(format, &e);
                }
                (b, held)
            }
            Err(GunzipError::TooLarge { .. }) => return too_large(),
            Err(e) => {
                return error(
                    format,
                    StatusCode::BAD_REQUEST,
                    INVALID_ARGUMENT,
                    e.to_string(),
                )
            }
        },
        other => {
            return error(
                format,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                INVALID_ARGUMENT,
                format!("unsupported content encoding {other:?}: use gzip or none"),
            )
        }
    };
    // The rate is taken before decoding protobuf (JSON is rated on its protobuf size, known
    // only once decoded): an export over the rate costs no decode.
    let group_cpu = s.distributor.stage_cpu().start(Stage::Group);
    if format == Format::Protobuf {
        if let Err(e) = s.distributor.admit(&tenant, body.len() as u64, || {
            estimate_protobuf(&body).map_or(0, |e| e.spans)
        }) {
            return push_refused(format, &e);
        }
    }
    let invalid = |what: &str, e: &dyn std::fmt::Display| {
        error(
            format,
            StatusCode::BAD_REQUEST,
            INVALID_ARGUMENT,
            format!("cannot decode {what} ExportTraceServiceRequest: {e}"),
        )
    };
    let pushed = match format {
        // Grouped from the received bytes: nothing is decoded into structs.
        Format::Protobuf => {
            let decoded = s.distributor.decodes_for(&tenant);
            let grouped = match s
                .admission
                .group_protobuf(&mut reservation, &body, held, decoded)
            {
                Ok(g) => g,
                Err(DecodeError::Refused(e)) => return refused(format, &e),
                Err(DecodeError::Invalid(e)) => return invalid("protobuf", &e),
            };
            drop(group_cpu);
            s.distributor
                .push_grouped(&tenant, Received { raw: body, gzip }, grouped, None)
                .await
        }
        Format::Json => {
            let req = match s.admission.decode_json(&mut reservation, &body, held) {
                Ok(r) => r,
                Err(DecodeError::Refused(e)) => return refused(format, &e),
                Err(DecodeError::Invalid(e)) => return invalid("json", &e),
            };
            drop(group_cpu);
            s.distributor.push(&tenant, None, req).await
        }
    };
    match pushed {
        Ok(outcome) => {
            let resp = response_for(&outcome);
            match format {
                Format::Protobuf => (
                    [(header::CONTENT_TYPE, "application/x-protobuf")],
                    resp.encode_to_vec(),
                )
                    .into_response(),
                Format::Json => {
                    let v = match &resp.partial_success {
                        Some(p) => json!({ "partialSuccess": {
                            "rejectedSpans": p.rejected_spans.to_string(),
                            "errorMessage": p.error_message,
                        }}),
                        None => json!({ "partialSuccess": {} }),
                    };
                    ([(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
                }
            }
        }
        Err(e) => push_refused(format, &e),
    }
}

/// The response an exporter expects for a refused push.
fn push_refused(format: Format, e: &PushError) -> Response {
    match refusal(e) {
        Refusal::Unavailable => error(
            format,
            StatusCode::SERVICE_UNAVAILABLE,
            UNAVAILABLE,
            e.to_string(),
        ),
        Refusal::RateLimited(after) => {
            let mut resp = error(
                format,
                StatusCode::TOO_MANY_REQUESTS,
                RESOURCE_EXHAUSTED,
                e.to_string(),
            );
            // Whole seconds, rounded up: the header has no finer unit.
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(secs.max(1)));
            resp
        }
        Refusal::TooLarge => error(
            format,
            StatusCode::PAYLOAD_TOO_LARGE,
            RESOURCE_EXHAUSTED,
            e.to_string(),
        ),
    }
}

enum BodyError {
    TooLarge,
    Refused(AdmissionError),
    Read(String),
}

/// Reads a body of at most `limit` bytes, growing `reservation` as data arrives, so slow
/// uploads in parallel cannot hold more than the in-flight budget between them.
async fn read_body(
    body: Body,
    limit: usize,
    reservation: &mut Reservation,
) -> Result<Bytes, BodyError> {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Read(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let len = buf.len().saturating_add(data.len());
        if len > limit {
            return Err(BodyError::TooLarge);
        }
        reservation.grow_to(len).map_err(BodyError::Refused)?;
        buf.extend_from_slice(&data);
    }
    Ok(buf.freeze())
}

/// A request refused before decoding: 429 while the in-flight budget is taken (retryable),
/// 413 when the request itself is over a per-request bound.
fn refused(format: Format, e: &AdmissionError) -> Response {
    if e.retryable() {
        let mut resp = error(
            format,
            StatusCode::TOO_MANY_REQUESTS,
            RESOURCE_EXHAUSTED,
            e.to_string(),
        );
        resp.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        return resp;
    }
    error(
        format,
        StatusCode::PAYLOAD_TOO_LARGE,
        RESOURCE_EXHAUSTED,
        e.to_string(),
    )
}

/// An auth failure as OTLP/HTTP: 401 (challenging when built-in auth refused the
/// credential), 403 for a tenant the credential does not grant, 400 for a bad header.
fn auth_error(format: Format, e: &AuthError) -> Response {
    let (http, grpc) = match e {
        AuthError::NoOrgId | AuthError::Unauthenticated(_) => {
            (StatusCode::UNAUTHORIZED, UNAUTHENTICATED)
        }
        AuthError::Forbidden(_) => (StatusCode::FORBIDDEN, PERMISSION_DENIED),
        AuthError::BadTenant(_) => (StatusCode::BAD_REQUEST, INVALID_ARGUMENT),
    };
    let mut resp = error(format, http, grpc, e.to_string());
    if e.challenge() {
        for c in CHALLENGES {
            resp.headers_mut().append(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static(c),
            );
        }
    }
    resp
}
