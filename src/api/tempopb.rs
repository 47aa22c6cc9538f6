//! Tempo's protobuf response messages (schema/proto/tempo.proto), written out by hand so no
//! protoc is needed. `tempopb.Trace` is wire-identical to OTLP `TracesData`.

use crate::model::ResourceSpans;

#[derive(Clone, PartialEq, prost::Message)]
pub struct Trace {
    #[prost(message, repeated, tag = "1")]
    pub batches: Vec<ResourceSpans>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TraceByIdMetrics {
    #[prost(uint64, tag = "1")]
    pub inspected_bytes: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum PartialStatus {
    Complete = 0,
    Partial = 1,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TraceByIdResponse {
    #[prost(message, optional, tag = "1")]
    pub trace: Option<Trace>,
    #[prost(message, optional, tag = "2")]
    pub metrics: Option<TraceByIdMetrics>,
    #[prost(enumeration = "PartialStatus", tag = "3")]
    pub status: i32,
    #[prost(string, tag = "4")]
    pub message: String,
}
