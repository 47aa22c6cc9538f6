//! OTLP receivers: gRPC `TraceService/Export` and OTLP/HTTP `POST /v1/traces`. They decode
//! and map outcomes to the status codes exporters act on; the distributor does the rest.

pub(crate) mod admission;
pub(crate) mod estimate;
pub(crate) mod grpc;
pub(crate) mod http;

use std::time::Duration;

use crate::distributor::{PushError, PushOutcome};
use crate::ingester::IngestError;
use crate::model::{ExportTracePartialSuccess, ExportTraceServiceResponse};

fn response_for(outcome: &PushOutcome) -> ExportTraceServiceResponse {
    ExportTraceServiceResponse {
        partial_success: (outcome.rejected > 0).then(|| ExportTracePartialSuccess {
            rejected_spans: outcome.rejected as i64,
            error_message: outcome.message.clone(),
        }),
    }
}

/// How a refused export is reported, in the terms exporters act on.
enum Refusal {
    /// Temporary trouble on our side: gRPC UNAVAILABLE / HTTP 503, always retried.
    Unavailable,
    /// Over the tenant's rate: gRPC RESOURCE_EXHAUSTED with RetryInfo / HTTP 429 with
    /// Retry-After, retried after the delay.
    RateLimited(Duration),
    /// Can never fit (a batch larger than the burst): not retried.
    TooLarge,
}

fn refusal(e: &PushError) -> Refusal {
    match e {
        PushError::Ingest(IngestError::LiveBytesExceeded { .. })
        | PushError::Ingest(IngestError::Wal(_))
        | PushError::Log(_) => Refusal::Unavailable,
        PushError::RateLimited { retry_after, .. } => Refusal::RateLimited(*retry_after),
        PushError::LargerThanBurst { .. } => Refusal::TooLarge,
    }
}
