//! OTLP traces as Tempo renders them in JSON (gogo jsonpb): lowerCamel names, 64-bit
//! integers as strings, bytes as base64, enums by name, zero values left out.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Map, Value};

use crate::model::{
    any_value, span, status, AnyValue, InstrumentationScope, KeyValue, Resource, ResourceSpans,
    ScopeSpans, Span, Status,
};

pub(crate) fn resource_spans(rs: &[ResourceSpans]) -> Value {
    Value::Array(rs.iter().map(one_resource_spans).collect())
}

fn one_resource_spans(rs: &ResourceSpans) -> Value {
    let mut m = Map::new();
    if let Some(r) = &rs.resource {
        m.insert("resource".into(), resource(r));
    }
    if !rs.scope_spans.is_empty() {
        m.insert(
            "scopeSpans".into(),
            Value::Array(rs.scope_spans.iter().map(scope_spans).collect()),
        );
    }
    put_str(&mut m, "schemaUrl", &rs.schema_url);
    Value::Object(m)
}

fn resource(r: &Resource) -> Value {
    let mut m = Map::new();
    put_attrs(&mut m, &r.attributes);
    put_u32(&mut m, "droppedAttributesCount", r.dropped_attributes_count);
    Value::Object(m)
}

fn scope_spans(ss: &ScopeSpans) -> Value {
    let mut m = Map::new();
    if let Some(s) = &ss.scope {
        m.insert("scope".into(), scope(s));
    }
    if !ss.spans.is_empty() {
        m.insert(
            "spans".into(),
            Value::Array(ss.spans.iter().map(one_span).collect()),
        );
    }
    put_str(&mut m, "schemaUrl", &ss.schema_url);
    Value::Object(m)
}

fn scope(s: &InstrumentationScope) -> Value {
    let mut m = Map::new();
    put_str(&mut m, "name", &s.name);
    put_str(&mut m, "version", &s.version);
    put_attrs(&mut m, &s.attributes);
    put_u32(&mut m, "droppedAttributesCount", s.dropped_attributes_count);
    Value::Object(m)
}

fn one_span(s: &Span) -> Value {
    let mut m = Map::new();
    put_bytes(&mut m, "traceId", &s.trace_id);
    put_bytes(&mut m, "spanId", &s.span_id);
    put_str(&mut m, "traceState", &s.trace_state);
    put_bytes(&mut m, "parentSpanId", &s.parent_span_id);
    put_u32(&mut m, "flags", s.flags);
    put_str(&mut m, "name", &s.name);
    if s.kind != 0 {
        let name = span::SpanKind::try_from(s.kind)
            .map(|k| k.as_str_name().to_owned())
            .unwrap_or_else(|_| s.kind.to_string());
        m.insert("kind".into(), Value::String(name));
    }
    put_u64(&mut m, "startTimeUnixNano", s.start_time_unix_nano);
    put_u64(&mut m, "endTimeUnixNano", s.end_time_unix_nano);
    put_attrs(&mut m, &s.attributes);
    put_u32(&mut m, "droppedAttributesCount", s.dropped_attributes_count);
    if !s.events.is_empty() {
        let events = s
            .events
            .iter()
            .map(|e| {
                let mut em = Map::new();
                put_u64(&mut em, "timeUnixNano", e.time_unix_nano);
                put_str(&mut em, "name", &e.name);
                put_attrs(&mut em, &e.attributes);
                put_u32(
                    &mut em,
                    "droppedAttributesCount",
                    e.dropped_attributes_count,
                );
                Value::Object(em)
            })
            .collect();
        m.insert("events".into(), Value::Array(events));
    }
    put_u32(&mut m, "droppedEventsCount", s.dropped_events_count);
    if !s.links.is_empty() {
        let links = s
            .links
            .iter()
            .map(|l| {
                let mut lm = Map::new();
                put_bytes(&mut lm, "traceId", &l.trace_id);
                put_bytes(&mut lm, "spanId", &l.span_id);
                put_str(&mut lm, "traceState", &l.trace_state);
                put_attrs(&mut lm, &l.attributes);
                put_u32(
                    &mut lm,
                    "droppedAttributesCount",
                    l.dropped_attributes_count,
                );
                put_u32(&mut lm, "flags", l.flags);
                Value::Object(lm)
            })
            .collect();
        m.insert("links".into(), Value::Array(links));
    }
    put_u32(&mut m, "droppedLinksCount", s.dropped_links_count);
    m.insert(
        "status".into(),
        s.status.as_ref().map_or_else(|| json!({}), span_status),
    );
    Value::Object(m)
}

fn span_status(st: &Status) -> Value {
    let mut m = Map::new();
    put_str(&mut m, "message", &st.message);
    if st.code != 0 {
        let name = status::StatusCode::try_from(st.code)
            .map(|c| c.as_str_name().to_owned())
            .unwrap_or_else(|_| st.code.to_string());
        m.insert("code".into(), Value::String(name));
    }
    Value::Object(m)
}

fn put_attrs(m: &mut Map<String, Value>, attrs: &[KeyValue]) {
    if !attrs.is_empty() {
        m.insert("attributes".into(), key_values(attrs));
    }
}

fn key_values(attrs: &[KeyValue]) -> Value {
    Value::Array(
        attrs
            .iter()
            .map(|kv| {
                let mut m = Map::new();
                m.insert("key".into(), Value::String(kv.key.clone()));
                m.insert(
                    "value".into(),
                    kv.value.as_ref().map_or_else(|| json!({}), any_value_json),
                );
                Value::Object(m)
            })
            .collect(),
    )
}

pub(crate) fn any_value_json(v: &AnyValue) -> Value {
    use any_value::Value as V;
    match &v.value {
        None => json!({}),
        Some(V::StringValue(s)) => json!({ "stringValue": s }),
        Some(V::BoolValue(b)) => json!({ "boolValue": b }),
        Some(V::IntValue(i)) => json!({ "intValue": i.to_string() }),
        Some(V::DoubleValue(d)) => match serde_json::Number::from_f64(*d) {
            Some(n) => json!({ "doubleValue": n }),
            // jsonpb writes non-finite doubles as strings
            None => json!({ "doubleValue": d.to_string() }),
        },
        Some(V::BytesValue(b)) => json!({ "bytesValue": B64.encode(b) }),
        Some(V::ArrayValue(a)) => {
            json!({ "arrayValue": { "values": a.values.iter().map(any_value_json).collect::<Vec<_>>() } })
        }
        Some(V::KvlistValue(kv)) => json!({ "kvlistValue": { "values": key_values(&kv.values) } }),
        // A string-table reference only means something inside OTLP profiles.
        Some(V::StringValueStrindex(_)) => json!({}),
    }
}

fn put_str(m: &mut Map<String, Value>, k: &str, v: &str) {
    if !v.is_empty() {
        m.insert(k.into(), Value::String(v.to_owned()));
    }
}

fn put_bytes(m: &mut Map<String, Value>, k: &str, v: &[u8]) {
    if !v.is_empty() {
        m.insert(k.into(), Value::String(B64.encode(v)));
    }
}

fn put_u32(m: &mut Map<String, Value>, k: &str, v: u32) {
    if v != 0 {
        m.insert(k.into(), Value::from(v));
    }
}

fn put_u64(m: &mut Map<String, Value>, k: &str, v: u64) {
    if v != 0 {
        m.insert(k.into(), Value::String(v.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::span::SpanKind;
    use crate::model::status::StatusCode;

    #[test]
    fn jsonpb_conventions() {
        let s = Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            name: "GET /".into(),
            kind: SpanKind::Server as i32,
            start_time_unix_nano: 1_700_000_000_000_000_001,
            end_time_unix_nano: 1_700_000_000_000_000_002,
            attributes: vec![KeyValue {
                key: "n".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::IntValue(5)),
                }),
                ..Default::default()
            }],
            status: Some(Status {
                code: StatusCode::Error as i32,
                message: "boom".into(),
            }),
            ..Default::default()
        };
        let v = one_span(&s);
        assert_eq!(v["traceId"], "AQEBAQEBAQEBAQEBAQEBAQ==");
        assert_eq!(v["kind"], "SPAN_KIND_SERVER");
        assert_eq!(v["startTimeUnixNano"], "1700000000000000001");
        assert_eq!(v["attributes"][0]["value"]["intValue"], "5");
        assert_eq!(v["status"]["code"], "STATUS_CODE_ERROR");
        assert!(v.get("parentSpanId").is_none());
    }
}
