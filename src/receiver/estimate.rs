//! Estimates of what decoding an OTLP trace export allocates, taken from its encoding
//! without allocating: the protobuf wire format is walked message by message, summing the
//! size of each struct prost would create; JSON is bounded by its object count.

use std::mem::size_of;

use super::admission::AdmissionError;
use crate::model::wire::{self, Kind, Msg, WireError};

impl From<WireError> for AdmissionError {
    fn from(e: WireError) -> Self {
        AdmissionError::Malformed(e.0)
    }
}

/// What decoding a request would allocate, estimated from its encoding.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Estimate {
    /// Spans, when known before decoding (protobuf); JSON counts them after.
    pub(crate) spans: usize,
    /// Decoded structs (twice: vectors grow by doubling), strings, and the encoded bytes,
    /// which stay in memory until the WAL has them.
    pub(crate) bytes: usize,
}

/// The size of the struct decoding creates for a message (its heap data is counted
/// separately, as strings or children).
fn size(msg: Msg) -> usize {
    use crate::model as m;
    match msg {
        Msg::Request => 0,
        Msg::ResourceSpans => size_of::<m::ResourceSpans>(),
        Msg::Resource => size_of::<m::Resource>(),
        Msg::EntityRef => size_of::<opentelemetry_proto::tonic::common::v1::EntityRef>(),
        Msg::ScopeSpans => size_of::<m::ScopeSpans>(),
        Msg::Scope => size_of::<m::InstrumentationScope>(),
        Msg::Span => size_of::<m::Span>(),
        Msg::Event => size_of::<m::span::Event>(),
        Msg::Link => size_of::<m::span::Link>(),
        Msg::Status => size_of::<m::Status>(),
        Msg::KeyValue => size_of::<m::KeyValue>(),
        Msg::AnyValue => size_of::<m::AnyValue>(),
        Msg::ArrayValue => size_of::<m::ArrayValue>(),
        Msg::KvList => size_of::<m::KeyValueList>(),
    }
}

/// Above prost's own recursion limit (100), so the walk never refuses what prost decodes;
/// it only keeps the recursion bounded.
const MAX_DEPTH: usize = 128;

/// Walks an `ExportTraceServiceRequest` in protobuf wire format and estimates what
/// decoding it would allocate, without allocating.
pub(crate) fn estimate_protobuf(data: &[u8]) -> Result<Estimate, AdmissionError> {
    let mut est = Estimate::default();
    let mut structs = 0usize;
    let mut strings = 0usize;
    walk(
        data,
        Msg::Request,
        0,
        &mut est.spans,
        &mut structs,
        &mut strings,
    )?;
    est.bytes = structs
        .saturating_mul(2)
        .saturating_add(strings)
        .saturating_add(data.len());
    Ok(est)
}

fn walk(
    mut data: &[u8],
    msg: Msg,
    depth: usize,
    spans: &mut usize,
    structs: &mut usize,
    strings: &mut usize,
) -> Result<(), AdmissionError> {
    if depth > MAX_DEPTH {
        return Err(AdmissionError::Malformed("messages nest too deeply"));
    }
    while !data.is_empty() {
        let key = wire::varint(&mut data)?;
        let field = key >> 3;
        match key & 7 {
            0 => {
                wire::varint(&mut data)?;
            }
            1 => {
                wire::take(&mut data, 8)?;
            }
            5 => {
                wire::take(&mut data, 4)?;
            }
            2 => {
                let len = usize::try_from(wire::varint(&mut data)?)
                    .map_err(|_| AdmissionError::Malformed("length overflows"))?;
                let body = wire::take(&mut data, len)?;
                match wire::kind(msg, field) {
                    Kind::Message(child) => {
                        *structs = structs.saturating_add(size(child));
                        if child == Msg::Span {
                            *spans += 1;
                        }
                        walk(body, child, depth + 1, spans, structs, strings)?;
                    }
                    _ => *strings = strings.saturating_add(len),
                }
            }
            // A group: only ever an unknown field here, skipped as prost skips it.
            3 => data = wire::skip_group(data, field, depth + 1)?,
            _ => return Err(AdmissionError::Malformed("unsupported wire type")),
        }
    }
    Ok(())
}

/// The largest struct a JSON object in an OTLP request can decode into.
fn largest_struct() -> usize {
    [
        Msg::ResourceSpans,
        Msg::Resource,
        Msg::ScopeSpans,
        Msg::Scope,
        Msg::Span,
        Msg::Event,
        Msg::Link,
        Msg::Status,
        Msg::KeyValue,
        Msg::AnyValue,
        Msg::ArrayValue,
        Msg::KvList,
    ]
    .iter()
    .map(|m| size(*m))
    .max()
    .unwrap_or(0)
}

/// Bounds what decoding an OTLP/JSON request allocates: each decoded struct comes from one
/// JSON object, so objects (counted outside strings) times the largest struct, plus the
/// text itself, is an upper bound. Spans are counted after decoding.
pub(crate) fn estimate_json(data: &[u8]) -> Estimate {
    let (mut objects, mut in_string, mut escaped) = (0usize, false, false);
    for &b in data {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
        } else if b == b'{' {
            objects += 1;
        }
    }
    Estimate {
        spans: 0,
        bytes: objects
            .saturating_mul(largest_struct())
            .saturating_mul(2)
            .saturating_add(data.len().saturating_mul(2)),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::model::{ExportTraceServiceRequest, KeyValue, ResourceSpans, ScopeSpans, Span};
    use prost::Message;

    /// An export of `n` empty spans: two bytes each on the wire.
    pub(in crate::receiver) fn empty_spans(n: usize) -> Vec<u8> {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span::default(); n],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
        .encode_to_vec()
    }

    #[test]
    fn protobuf_estimate_counts_spans_and_amplification() {
        let wire = empty_spans(1000);
        // Two bytes per empty span on the wire.
        assert!(wire.len() < 2100, "{}", wire.len());
        let e = estimate_protobuf(&wire).unwrap();
        assert_eq!(e.spans, 1000);
        assert!(e.bytes >= 1000 * size_of::<Span>(), "{e:?}");
        // A real span counts its strings and attributes too.
        let mut span = Span {
            name: "x".repeat(500),
            ..Default::default()
        };
        span.attributes = vec![KeyValue::default(); 10];
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![span],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let e = estimate_protobuf(&req.encode_to_vec()).unwrap();
        assert_eq!(e.spans, 1);
        assert!(e.bytes >= 500 + 10 * size_of::<KeyValue>() + size_of::<Span>());
        assert!(estimate_protobuf(&[0x0a, 0x05, 0x00]).is_err());
        // An unknown group field (field 9, start and end tags) is skipped, as prost does.
        let with_group = [0x4b, 0x08, 0x01, 0x4c];
        assert!(ExportTraceServiceRequest::decode(&with_group[..]).is_ok());
        assert_eq!(estimate_protobuf(&with_group).unwrap().spans, 0);
    }

    #[test]
    fn json_estimate_bounds_objects_outside_strings() {
        let text = br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{},{},{"name":"{{{{"}]}]}]}"#;
        let e = estimate_json(text);
        // Six objects; the braces in the string do not count.
        assert_eq!(e.bytes, 6 * largest_struct() * 2 + text.len() * 2);
    }
}
