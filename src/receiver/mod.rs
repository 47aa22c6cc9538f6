//! OTLP receivers: gRPC `TraceService/Export` and OTLP/HTTP `POST /v1/traces`. They decode
//! and map outcomes to the status codes exporters act on; the distributor does the rest.

pub mod grpc;
pub mod http;

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

/// Whether the exporter should retry: refusals under load are temporary, and everything
/// the distributor can return today is such a refusal.
fn is_retryable(e: &PushError) -> bool {
    match e {
        PushError::Ingest(IngestError::LiveBytesExceeded { .. })
        | PushError::Ingest(IngestError::Wal(_)) => true,
    }
}
