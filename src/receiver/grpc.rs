//! OTLP/gRPC. A raw-bytes codec hands the request body over undecoded so that the WAL can
//! store the received bytes as they are and decode errors map to INVALID_ARGUMENT.
//! gzip messages are inflated here rather than by tonic, whose decoder stops after the
//! first gzip member and would drop the rest of a multi-member message unnoticed.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use prost::Message;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{BoxFuture, EnabledCompressionEncodings};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Code, Request, Response, Status};
use tracing::debug;

use tonic_types::{ErrorDetails, StatusExt};

use super::admission::{
    gunzip_into, Admission, AdmissionError, DecodeError, GunzipError, Reservation,
};
use super::estimate::estimate_protobuf;
use super::{refusal, response_for, Refusal};
use crate::api::auth::{grpc_status, TenantResolver};
use crate::distributor::{Distributor, PushError, Received};
use crate::metrics::Stage;
use crate::model::{ExportTraceServiceResponse, TenantId};

/// Exporters should not come back sooner than this after a rate-limit refusal.
const MIN_RETRY: std::time::Duration = std::time::Duration::from_millis(100);

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

#[derive(Clone)]
pub(crate) struct OtlpGrpcService {
    distributor: Arc<Distributor>,
    tenants: TenantResolver,
    max_message_bytes: usize,
    admission: Admission,
}

impl OtlpGrpcService {
    pub(crate) fn new(
        distributor: Arc<Distributor>,
        tenants: TenantResolver,
        max_message_bytes: usize,
        admission: Admission,
    ) -> Self {
        Self {
            distributor,
            tenants,
            max_message_bytes,
            admission,
        }
    }
}

/// Reads a request body of at most `limit` bytes, growing `reservation` as data arrives.
async fn read_body<B>(body: B, limit: usize, reservation: &mut Reservation) -> Result<Bytes, Status>
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    let mut body = std::pin::pin!(body);
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| Status::cancelled(format!("cannot read request: {}", e.into())))?;
        let Ok(mut data) = frame.into_data() else {
            continue;
        };
        let len = buf.len().saturating_add(data.remaining());
        if len > limit {
            return Err(Status::resource_exhausted(format!(
                "message is larger than the {limit} byte limit"
            )));
        }
        reservation.grow_to(len).map_err(|e| refused(&e))?;
        while data.has_remaining() {
            let chunk = data.chunk();
            let n = chunk.len();
            buf.extend_from_slice(chunk);
            data.advance(n);
        }
    }
    Ok(buf.freeze())
}

/// The gRPC message frame: a compressed flag and a big-endian length.
const FRAME_HEADER: usize = 5;

/// The gzip bytes of a request's one message, as received: the WAL keeps them instead of
/// the inflated message, a fraction of the bytes to copy, checksum and fsync.
#[derive(Debug, Clone)]
struct GzipMessage(Bytes);

/// Inflates every gzip-compressed message of a request body (gRPC frames) and returns the
/// body with plain frames, and the gzip message if the body was exactly one. Each message
/// may inflate to `max` bytes.
fn inflate_gzip_frames(
    mut body: Bytes,
    max: usize,
) -> Result<(Bytes, Option<GzipMessage>), Status> {
    let mut out = Vec::new();
    let mut frames = 0;
    let mut gzip = None;
    while !body.is_empty() {
        frames += 1;
        if body.len() < FRAME_HEADER {
            return Err(Status::invalid_argument("truncated grpc message frame"));
        }
        let compressed = body.get_u8();
        let len = body.get_u32() as usize;
        if len > body.len() {
            return Err(Status::invalid_argument("truncated grpc message"));
        }
        let msg = body.split_to(len);
        // The frame header first, its length filled in once the message is inflated
        // straight after it: the inflated bytes are written once, not copied.
        let at = out.len();
        out.extend_from_slice(&[0; FRAME_HEADER]);
        let n = match compressed {
            0 => {
                out.extend_from_slice(&msg);
                msg.len()
            }
            1 => gunzip_into(&msg, max, &mut out).map_err(|e| match e {
                GunzipError::TooLarge { limit } => Status::resource_exhausted(format!(
                    "message inflates past the {limit} byte limit"
                )),
                GunzipError::Corrupt(e) => {
                    Status::invalid_argument(format!("cannot decompress gzip message: {e}"))
                }
            })?,
            f => {
                return Err(Status::internal(format!(
                    "protocol error: invalid compressed flag {f}"
                )))
            }
        };
        let n = u32::try_from(n)
            .map_err(|_| Status::resource_exhausted("message larger than 4 GiB"))?;
        out[at + 1..at + FRAME_HEADER].copy_from_slice(&n.to_be_bytes());
        gzip = (compressed == 1).then_some(GzipMessage(msg));
    }
    Ok((Bytes::from(out), gzip.filter(|_| frames == 1)))
}

impl NamedService for OtlpGrpcService {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

impl<B> tower::Service<http::Request<B>> for OtlpGrpcService
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != EXPORT_PATH {
            return Box::pin(async move {
                Ok(
                    Status::unimplemented("unknown method: vivace serves TraceService/Export")
                        .into_http(),
                )
            });
        }
        let this = self.clone();
        Box::pin(async move {
            let gzip = req
                .headers()
                .get("grpc-encoding")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
            if !gzip {
                return Ok(this.serve(req).await);
            }
            let max = this.max_message_bytes;
            // The compressed and the inflated bytes count in the in-flight budget until the
            // export is done (the reservation rides along in the request's extensions).
            let mut reservation = match this.admission.budget.try_reserve(0) {
                Ok(r) => r,
                Err(e) => return Ok(refused(&e).into_http()),
            };
            let (mut parts, body) = req.into_parts();
            // Compressed frames are never larger than the limit on what they inflate to.
            let body =
                match read_body(body, max.saturating_add(FRAME_HEADER), &mut reservation).await {
                    Ok(b) => b,
                    Err(status) => return Ok(status.into_http()),
                };
            let compressed = body.len();
            let inflated = this
                .distributor
                .stage_cpu()
                .time(Stage::Inflate, || inflate_gzip_frames(body, max));
            let (body, gzip) = match inflated {
                Ok(b) => b,
                Err(status) => return Ok(status.into_http()),
            };
            if let Err(e) = reservation.grow_to(compressed.saturating_add(body.len())) {
                return Ok(refused(&e).into_http());
            }
            parts.headers.remove("grpc-encoding");
            parts.extensions.insert(Arc::new(reservation));
            if let Some(gzip) = gzip {
                parts.extensions.insert(gzip);
            }
            Ok(this
                .serve(http::Request::from_parts(parts, Full::new(body)))
                .await)
        })
    }
}

impl OtlpGrpcService {
    async fn serve<B>(self, req: http::Request<B>) -> http::Response<tonic::body::Body>
    where
        B: http_body::Body + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        {
            let mut accept = EnabledCompressionEncodings::default();
            accept.enable(CompressionEncoding::Gzip);
            accept.enable(CompressionEncoding::Zstd);
            // Responses go uncompressed: an export's response is a few bytes, and gzip
            // would set up a deflate state (~300 KiB, zeroed) for each of them.
            let send = EnabledCompressionEncodings::default();
            let max = self.max_message_bytes;
            let mut grpc = Grpc::new(RawCodec)
                .apply_compression_config(accept, send)
                .apply_max_message_size_config(Some(max), None);
            grpc.unary(Export(self), req).await
        }
    }
}

struct Export(OtlpGrpcService);

impl UnaryService<Bytes> for Export {
    type Response = ExportTraceServiceResponse;
    type Future = BoxFuture<Response<Self::Response>, Status>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let svc = self.0.clone();
        Box::pin(async move {
            // Checked before the body is decoded: an unauthenticated caller costs no decode.
            let headers = request.metadata().clone().into_headers();
            let tenant = svc
                .tenants
                .resolve_one(&headers)
                .map_err(|e| grpc_status(&e))?;
            // Held until the push is done: what the receiver inflated (gzip), if anything.
            let _inflated = request.extensions().get::<Arc<Reservation>>().cloned();
            let gzip = request
                .extensions()
                .get::<GzipMessage>()
                .map(|g| g.0.clone());
            let raw = request.into_inner();
            let group_cpu = svc.distributor.stage_cpu().start(Stage::Group);
            // The rate is taken before decoding: an export over it costs no decode.
            if let Err(e) = svc.distributor.admit(&tenant, raw.len() as u64, || {
                estimate_protobuf(&raw).map_or(0, |e| e.spans)
            }) {
                return Err(push_status(&tenant, &e));
            }
            let mut reservation = svc
                .admission
                .budget
                .try_reserve(raw.len())
                .map_err(|e| refused(&e))?;
            let invalid = |e: &dyn std::fmt::Display| {
                Status::invalid_argument(format!("cannot decode ExportTraceServiceRequest: {e}"))
            };
            // Grouped from the received bytes: nothing is decoded into structs (unless the
            // tenant's spans feed the metrics-generator).
            let decoded = svc.distributor.decodes_for(&tenant);
            let grouped = svc
                .admission
                .group_protobuf(&mut reservation, &raw, raw.len(), decoded)
                .map_err(|e| match e {
                    DecodeError::Refused(e) => refused(&e),
                    DecodeError::Invalid(e) => invalid(&e),
                })?;
            drop(group_cpu);
            match svc
                .distributor
                .push_grouped(&tenant, Received { raw, gzip }, grouped, None)
                .await
            {
                Ok(outcome) => Ok(Response::new(response_for(&outcome))),
                Err(e) => Err(push_status(&tenant, &e)),
            }
        })
    }
}

/// The status an exporter expects for a refused push.
fn push_status(tenant: &TenantId, e: &PushError) -> Status {
    debug!(tenant = %tenant, error = %e, "export refused");
    match refusal(e) {
        // UNAVAILABLE is the code OTLP exporters always retry with backoff.
        Refusal::Unavailable => Status::new(Code::Unavailable, e.to_string()),
        // Exporters retry RESOURCE_EXHAUSTED only when it carries RetryInfo.
        Refusal::RateLimited(after) => Status::with_error_details(
            Code::ResourceExhausted,
            e.to_string(),
            ErrorDetails::with_retry_info(Some(after.max(MIN_RETRY))),
        ),
        Refusal::TooLarge => Status::new(Code::ResourceExhausted, e.to_string()),
    }
}

/// A request refused before decoding: RESOURCE_EXHAUSTED, with RetryInfo only when waiting
/// can help (the in-flight budget), so exporters do not resend an oversized request.
fn refused(e: &AdmissionError) -> Status {
    debug!(error = %e, "export refused before decoding");
    if e.retryable() {
        Status::with_error_details(
            Code::ResourceExhausted,
            e.to_string(),
            ErrorDetails::with_retry_info(Some(std::time::Duration::from_secs(1))),
        )
    } else {
        Status::new(Code::ResourceExhausted, e.to_string())
    }
}

#[derive(Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = ExportTraceServiceResponse;
    type Decode = Bytes;
    type Encoder = ResponseEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        ResponseEncoder
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawDecoder
    }
}

struct ResponseEncoder;

impl Encoder for ResponseEncoder {
    type Item = ExportTraceServiceResponse;
    type Error = Status;
    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("cannot encode response: {e}")))
    }
}

struct RawDecoder;

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receiver::admission::tests::gz;

    fn frame(compressed: u8, msg: &[u8]) -> Vec<u8> {
        let mut f = vec![compressed];
        f.extend((msg.len() as u32).to_be_bytes());
        f.extend(msg);
        f
    }

    #[test]
    fn one_gzip_frame_is_inflated_in_place_and_kept_for_the_wal() {
        let msg: Vec<u8> = (0..10_000u32).map(|i| (i % 7) as u8).collect();
        let packed = gz(&msg);
        let (body, kept) = inflate_gzip_frames(Bytes::from(frame(1, &packed)), 1 << 20).unwrap();
        assert_eq!(&body[..], &frame(0, &msg)[..]);
        assert_eq!(&kept.unwrap().0[..], &packed[..]);
        // Two frames: each inflated, none kept (the WAL record is one request).
        let mut two = frame(1, &packed);
        two.extend(frame(0, b"plain"));
        let (body, kept) = inflate_gzip_frames(Bytes::from(two), 1 << 20).unwrap();
        let mut want = frame(0, &msg);
        want.extend(frame(0, b"plain"));
        assert_eq!(&body[..], &want[..]);
        assert!(kept.is_none());
        // Over the limit: refused, as before.
        let err = inflate_gzip_frames(Bytes::from(frame(1, &packed)), 9_999).unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted);
    }

    #[test]
    fn a_forged_size_trailer_does_not_change_what_is_inflated() {
        let msg = vec![3u8; 50_000];
        let mut packed = gz(&msg);
        let n = packed.len();
        // The trailer claims 4 GiB; the body is what it is.
        packed[n - 4..].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut out = Vec::new();
        // flate2 checks the size trailer, so the forged one is an error, not an allocation.
        assert!(gunzip_into(&packed, 1 << 20, &mut out).is_err());
        assert!(out.capacity() <= packed.len() * 1032);
    }
}
