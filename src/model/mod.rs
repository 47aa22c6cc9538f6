//! Types every component shares: trace and tenant identifiers and the OTLP trace shape.
//!
//! Spans travel through vivace as OTLP `ResourceSpans` from the first decode to the block
//! writer, so nothing is converted twice; this module adds the identifiers and the one
//! place that merges fragments of a trace.

pub(crate) mod combine;
mod fragment;
mod group;
mod ids;
mod nested_set;
pub(crate) mod walk;
pub(crate) mod wire;

pub use combine::{combine, span_count, Combiner};
pub use fragment::Fragments;
pub use group::{group_by_trace, grouped_len, Grouped, TraceBatch};
pub(crate) use ids::TraceMap;
pub use ids::{IdError, TenantId, TenantIdError, TraceId, SINGLE_TENANT};
pub use nested_set::{nested_sets, parent_indices, NestedSet};
pub use wire::{group_encoded, group_encoded_within, GroupError, WireError};

pub use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
pub use opentelemetry_proto::tonic::common::v1::{
    any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList,
};
pub use opentelemetry_proto::tonic::resource::v1::Resource;
pub use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status, TracesData,
};

/// A span's status as TraceQL and Tempo name it (`ok`, `error`, `unset`).
pub fn status_name(s: &Span) -> &'static str {
    status_code_name(s.status.as_ref().map_or(0, |st| st.code))
}

/// [`status_name`] of a status code.
pub fn status_code_name(code: i32) -> &'static str {
    match status::StatusCode::try_from(code) {
        Ok(status::StatusCode::Ok) => "ok",
        Ok(status::StatusCode::Error) => "error",
        _ => "unset",
    }
}

/// A span's kind as TraceQL and Tempo name it (`server`, `client`, ...).
pub fn kind_name(s: &Span) -> &'static str {
    kind_code_name(s.kind)
}

/// [`kind_name`] of a kind's number.
pub fn kind_code_name(kind: i32) -> &'static str {
    match span::SpanKind::try_from(kind) {
        Ok(span::SpanKind::Internal) => "internal",
        Ok(span::SpanKind::Server) => "server",
        Ok(span::SpanKind::Client) => "client",
        Ok(span::SpanKind::Producer) => "producer",
        Ok(span::SpanKind::Consumer) => "consumer",
        _ => "unspecified",
    }
}
