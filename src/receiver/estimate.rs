//! Estimates of what decoding an OTLP trace export allocates, taken from its encoding
//! without allocating: the protobuf wire format is walked message by message, summing the
//! size of each struct prost would create; JSON is bounded by its object count.

use std::mem::size_of;

use super::admission::AdmissionError;

/// What decoding a request would allocate, estimated from its encoding.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Estimate {
    /// Spans, when known before decoding (protobuf); JSON counts them after.
    pub(crate) spans: usize,
    /// Decoded structs (twice: vectors grow by doubling), strings, and the encoded bytes,
    /// which stay in memory until the WAL has them.
    pub(crate) bytes: usize,
}

/// The OTLP trace messages, as far as decoding allocates them.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Msg {
    Request,
    ResourceSpans,
    Resource,
    ScopeSpans,
    Scope,
    Span,
    Event,
    Link,
    Status,
    KeyValue,
    AnyValue,
    ArrayValue,
    KvList,
}

impl Msg {
    /// The message type of field `field`, when it is a message.
    fn child(self, field: u64) -> Option<Msg> {
        use Msg::*;
        Some(match (self, field) {
            (Request, 1) => ResourceSpans,
            (ResourceSpans, 1) => Resource,
            (ResourceSpans, 2) => ScopeSpans,
            (Resource, 1) => KeyValue,
            (ScopeSpans, 1) => Scope,
            (ScopeSpans, 2) => Span,
            (Scope, 3) => KeyValue,
            (Span, 9) => KeyValue,
            (Span, 11) => Event,
            (Span, 13) => Link,
            (Span, 15) => Status,
            (Event, 3) => KeyValue,
            (Link, 4) => KeyValue,
            (KeyValue, 2) => AnyValue,
            (AnyValue, 5) => ArrayValue,
            (AnyValue, 6) => KvList,
            (ArrayValue, 1) => AnyValue,
            (KvList, 1) => KeyValue,
            _ => return None,
        })
    }

    /// The size of the struct decoding creates for this message (its heap data is
    /// counted separately, as strings or children).
    fn size(self) -> usize {
        use crate::model as m;
        match self {
            Msg::Request => 0,
            Msg::ResourceSpans => size_of::<m::ResourceSpans>(),
            Msg::Resource => size_of::<m::Resource>(),
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
        let key = varint(&mut data)?;
        let field = key >> 3;
        match key & 7 {
            0 => {
                varint(&mut data)?;
            }
            1 => data = skip(data, 8)?,
            5 => data = skip(data, 4)?,
            2 => {
                let len = usize::try_from(varint(&mut data)?)
                    .map_err(|_| AdmissionError::Malformed("length overflows"))?;
                if len > data.len() {
                    return Err(AdmissionError::Malformed(
                        "length past the end of the buffer",
                    ));
                }
                let (body, rest) = data.split_at(len);
                data = rest;
                match msg.child(field) {
                    Some(child) => {
                        *structs = structs.saturating_add(child.size());
                        if child == Msg::Span {
                            *spans += 1;
                        }
                        walk(body, child, depth + 1, spans, structs, strings)?;
                    }
                    None => *strings = strings.saturating_add(len),
                }
            }
            // A group: only ever an unknown field here, skipped as prost skips it.
            3 => data = skip_group(data, field, depth + 1)?,
            _ => return Err(AdmissionError::Malformed("unsupported wire type")),
        }
    }
    Ok(())
}

/// Skips the fields of a group up to its end tag; returns what follows.
fn skip_group(mut data: &[u8], field: u64, depth: usize) -> Result<&[u8], AdmissionError> {
    if depth > MAX_DEPTH {
        return Err(AdmissionError::Malformed("messages nest too deeply"));
    }
    loop {
        let key = varint(&mut data)?;
        match key & 7 {
            0 => {
                varint(&mut data)?;
            }
            1 => data = skip(data, 8)?,
            5 => data = skip(data, 4)?,
            2 => {
                let len = usize::try_from(varint(&mut data)?)
                    .map_err(|_| AdmissionError::Malformed("length overflows"))?;
                data = skip(data, len)?;
            }
            3 => data = skip_group(data, key >> 3, depth + 1)?,
            4 if key >> 3 == field => return Ok(data),
            _ => return Err(AdmissionError::Malformed("unmatched group end")),
        }
    }
}

fn varint(data: &mut &[u8]) -> Result<u64, AdmissionError> {
    let mut v = 0u64;
    for i in 0..10 {
        let (&b, rest) = data
            .split_first()
            .ok_or(AdmissionError::Malformed("truncated varint"))?;
        *data = rest;
        v |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            return Ok(v);
        }
    }
    Err(AdmissionError::Malformed("varint longer than 10 bytes"))
}

fn skip(data: &[u8], n: usize) -> Result<&[u8], AdmissionError> {
    data.get(n..)
        .ok_or(AdmissionError::Malformed("truncated field"))
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
    .map(|m| m.size())
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
