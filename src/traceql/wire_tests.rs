//! WireTrace against decoded structs on hand-made encodings.

use super::*;
use crate::model::{ResourceSpans, ScopeSpans, Span, TracesData};
use crate::traceql::{evaluate_view, parse, OtlpTrace};
use prost::Message;

fn span(id: u8, name: &str) -> Span {
    Span {
        trace_id: vec![1; 16],
        span_id: vec![id; 8],
        name: name.into(),
        start_time_unix_nano: 10,
        end_time_unix_nano: 20,
        ..Default::default()
    }
}

fn encoded(spans: Vec<Span>) -> Vec<u8> {
    TracesData {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

#[test]
fn a_singular_field_given_twice_is_left_to_a_decode() {
    let mut bytes = encoded(vec![span(1, "a")]);
    assert!(WireTrace::new(&[&bytes]).is_some());
    // The span is the last field of the last level: append a second name to it by
    // growing each enclosing length by the three bytes added.
    let extra = [0x2a, 0x01, b'b'];
    bytes.extend_from_slice(&extra);
    // TracesData[1] -> ResourceSpans[2] -> ScopeSpans[2] -> Span: lengths at 1, 3, 5.
    for at in [1, 3, 5] {
        bytes[at] += extra.len() as u8;
    }
    let decoded = TracesData::decode(bytes.as_slice()).unwrap();
    assert_eq!(decoded.resource_spans[0].scope_spans[0].spans[0].name, "b");
    assert!(WireTrace::new(&[&bytes]).is_none());
}

#[test]
fn a_resource_after_its_spans_and_a_keyless_attribute_read_as_decoded() {
    use crate::model::{any_value, AnyValue, KeyValue, Resource};
    let mut rs = ResourceSpans {
        scope_spans: vec![ScopeSpans {
            spans: vec![Span {
                attributes: vec![KeyValue {
                    value: Some(AnyValue {
                        value: Some(any_value::Value::IntValue(7)),
                    }),
                    ..Default::default()
                }],
                ..span(1, "a")
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    // Spans first, then the resource: hand-encoded in that order.
    let mut body = Vec::new();
    for ss in &rs.scope_spans {
        prost::encoding::message::encode(2, ss, &mut body);
    }
    let resource = Resource {
        attributes: vec![KeyValue {
            key: "service.name".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue("svc".into())),
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    prost::encoding::message::encode(1, &resource, &mut body);
    let mut chunk = Vec::new();
    prost::encoding::encode_key(1, prost::encoding::WireType::LengthDelimited, &mut chunk);
    prost::encoding::encode_varint(body.len() as u64, &mut chunk);
    chunk.extend_from_slice(&body);
    rs.resource = Some(resource);
    let batches = TracesData::decode(chunk.as_slice()).unwrap().resource_spans;
    assert_eq!(batches, vec![rs]);
    let chunks = [&chunk];
    let wire = WireTrace::new(&chunks).unwrap();
    assert_eq!(wire.root_service_name(), Some("svc"));
    assert_eq!(wire.services(), vec![("svc", 1, 0)]);
    let otlp = OtlpTrace::new(&batches);
    for q in [
        r#"{ resource.service.name = "svc" }"#,
        "{ trace:rootService = \"svc\" }",
    ] {
        let query = parse(q).unwrap();
        let want = evaluate_view(&query, &otlp).unwrap();
        assert!(!want.is_empty(), "{q}");
        assert_eq!(evaluate_view(&query, &wire).unwrap(), want, "{q}");
    }
    // The keyless attribute is listed under the empty key, as decoded.
    let list = |t: &dyn TraceView| {
        let mut out = Vec::new();
        t.span_view(0)
            .each_attribute(&mut |s, k, v| out.push((s, k.to_owned(), v)));
        out
    };
    let attrs = list(&wire);
    assert_eq!(attrs, list(&otlp));
    assert!(attrs.contains(&(Scope::Span, String::new(), Value::Int(7))));
}
