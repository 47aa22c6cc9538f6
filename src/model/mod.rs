//! Types every component shares: trace and tenant identifiers and the OTLP trace shape.
//!
//! Spans travel through vivace as OTLP `ResourceSpans` from the first decode to the block
//! writer, so nothing is converted twice; this module adds the identifiers and the one
//! place that merges fragments of a trace.

mod combine;
mod fragment;
mod ids;
mod nested_set;

pub use combine::{combine, span_count, Combiner};
pub use fragment::Fragments;
pub use ids::{IdError, TenantId, TenantIdError, TraceId, SINGLE_TENANT};
pub use nested_set::{nested_sets, parent_indices, NestedSet};

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
