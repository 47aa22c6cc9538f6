//! OTLP/gRPC. A raw-bytes codec hands the request body over undecoded so that the WAL can
//! store the received bytes as they are and decode errors map to INVALID_ARGUMENT.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use prost::Message;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{BoxFuture, EnabledCompressionEncodings};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Code, Request, Response, Status};
use tracing::debug;

use tonic_types::{ErrorDetails, StatusExt};

use super::{refusal, response_for, Refusal};
use crate::api::auth::{grpc_status, TenantResolver};
use crate::distributor::Distributor;
use crate::model::{ExportTraceServiceRequest, ExportTraceServiceResponse};

/// Exporters should not come back sooner than this after a rate-limit refusal.
const MIN_RETRY: std::time::Duration = std::time::Duration::from_millis(100);

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

#[derive(Clone)]
pub struct OtlpGrpcService {
    distributor: Arc<Distributor>,
    tenants: TenantResolver,
    max_message_bytes: usize,
}

impl OtlpGrpcService {
    pub fn new(
        distributor: Arc<Distributor>,
        tenants: TenantResolver,
        max_message_bytes: usize,
    ) -> Self {
        Self {
            distributor,
            tenants,
            max_message_bytes,
        }
    }
}

impl NamedService for OtlpGrpcService {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

impl<B> tower::Service<http::Request<B>> for OtlpGrpcService
where
    B: http_body::Body + Send + 'static,
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
            let mut accept = EnabledCompressionEncodings::default();
            accept.enable(CompressionEncoding::Gzip);
            accept.enable(CompressionEncoding::Zstd);
            let mut send = EnabledCompressionEncodings::default();
            // Sent only when the client's grpc-accept-encoding allows it.
            send.enable(CompressionEncoding::Gzip);
            let max = this.max_message_bytes;
            let mut grpc = Grpc::new(RawCodec)
                .apply_compression_config(accept, send)
                .apply_max_message_size_config(Some(max), None);
            Ok(grpc.unary(Export(this), req).await)
        })
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
            let raw = request.into_inner();
            let req = ExportTraceServiceRequest::decode(raw.clone()).map_err(|e| {
                Status::invalid_argument(format!("cannot decode ExportTraceServiceRequest: {e}"))
            })?;
            match svc.distributor.push(&tenant, Some(raw), req).await {
                Ok(outcome) => Ok(Response::new(response_for(&outcome))),
                Err(e) => {
                    debug!(tenant = %tenant, error = %e, "export refused");
                    Err(match refusal(&e) {
                        // UNAVAILABLE is the code OTLP exporters always retry with backoff.
                        Refusal::Unavailable => Status::new(Code::Unavailable, e.to_string()),
                        // Exporters retry RESOURCE_EXHAUSTED only when it carries RetryInfo.
                        Refusal::RateLimited(after) => Status::with_error_details(
                            Code::ResourceExhausted,
                            e.to_string(),
                            ErrorDetails::with_retry_info(Some(after.max(MIN_RETRY))),
                        ),
                        Refusal::TooLarge => Status::new(Code::ResourceExhausted, e.to_string()),
                    })
                }
            }
        })
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
