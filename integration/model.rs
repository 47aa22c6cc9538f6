//! A normalised, order-insensitive view of spans, built from what was sent
//! (SDK `SpanData` or OTLP protobuf) and from what the server returns
//! (protobuf or Tempo-style jsonpb), so both sides can be compared field by field.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use opentelemetry_proto::tonic::common::v1 as pc;
use opentelemetry_proto::tonic::trace::v1 as pt;
use serde_json::Value as J;

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum V {
    Str(String),
    Int(i64),
    Double(f64),
    Bool(bool),
    Bytes(Vec<u8>),
    Array(Vec<V>),
    KvList(Vec<(String, V)>),
    Empty,
}

pub(crate) type Attrs = Vec<(String, V)>;

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct NEvent {
    pub(crate) time: u64,
    pub(crate) name: String,
    pub(crate) attrs: Attrs,
    pub(crate) dropped_attrs: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct NLink {
    pub(crate) trace_id: String,
    pub(crate) span_id: String,
    pub(crate) trace_state: String,
    pub(crate) attrs: Attrs,
    pub(crate) dropped_attrs: u32,
    pub(crate) flags: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct NSpan {
    pub(crate) resource_attrs: Attrs,
    pub(crate) scope_name: String,
    pub(crate) scope_version: String,
    pub(crate) scope_attrs: Attrs,
    pub(crate) trace_id: String,
    pub(crate) span_id: String,
    pub(crate) parent_span_id: String,
    pub(crate) trace_state: String,
    pub(crate) flags: u32,
    pub(crate) name: String,
    pub(crate) kind: i32,
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) attrs: Attrs,
    pub(crate) dropped_attrs: u32,
    pub(crate) events: Vec<NEvent>,
    pub(crate) dropped_events: u32,
    pub(crate) links: Vec<NLink>,
    pub(crate) dropped_links: u32,
    pub(crate) status_code: i32,
    pub(crate) status_message: String,
}

pub(crate) type SpanMap = BTreeMap<String, NSpan>;

fn sort_attrs(mut a: Attrs) -> Attrs {
    a.sort_by(|x, y| x.0.cmp(&y.0));
    a
}

// ---------------------------------------------------------------- protobuf

pub(crate) fn v_from_proto(v: Option<&pc::AnyValue>) -> V {
    use pc::any_value::Value as P;
    match v.and_then(|v| v.value.as_ref()) {
        None => V::Empty,
        Some(P::StringValue(s)) => V::Str(s.clone()),
        Some(P::IntValue(i)) => V::Int(*i),
        Some(P::DoubleValue(d)) => V::Double(*d),
        Some(P::BoolValue(b)) => V::Bool(*b),
        Some(P::BytesValue(b)) => V::Bytes(b.clone()),
        Some(P::ArrayValue(a)) => {
            V::Array(a.values.iter().map(|x| v_from_proto(Some(x))).collect())
        }
        Some(P::KvlistValue(kv)) => V::KvList(attrs_from_proto(&kv.values)),
        Some(other) => panic!("unexpected AnyValue variant {other:?}"),
    }
}

pub(crate) fn attrs_from_proto(kvs: &[pc::KeyValue]) -> Attrs {
    sort_attrs(
        kvs.iter()
            .map(|kv| (kv.key.clone(), v_from_proto(kv.value.as_ref())))
            .collect(),
    )
}

pub(crate) fn spans_from_proto(rs: &[pt::ResourceSpans]) -> SpanMap {
    let mut out = SpanMap::new();
    for r in rs {
        let resource_attrs = r
            .resource
            .as_ref()
            .map(|r| attrs_from_proto(&r.attributes))
            .unwrap_or_default();
        for ss in &r.scope_spans {
            let (scope_name, scope_version, scope_attrs) = match &ss.scope {
                Some(s) => (
                    s.name.clone(),
                    s.version.clone(),
                    attrs_from_proto(&s.attributes),
                ),
                None => Default::default(),
            };
            for s in &ss.spans {
                let n = NSpan {
                    resource_attrs: resource_attrs.clone(),
                    scope_name: scope_name.clone(),
                    scope_version: scope_version.clone(),
                    scope_attrs: scope_attrs.clone(),
                    trace_id: hex::encode(&s.trace_id),
                    span_id: hex::encode(&s.span_id),
                    parent_span_id: hex::encode(&s.parent_span_id),
                    trace_state: s.trace_state.clone(),
                    flags: s.flags,
                    name: s.name.clone(),
                    kind: s.kind,
                    start: s.start_time_unix_nano,
                    end: s.end_time_unix_nano,
                    attrs: attrs_from_proto(&s.attributes),
                    dropped_attrs: s.dropped_attributes_count,
                    events: s
                        .events
                        .iter()
                        .map(|e| NEvent {
                            time: e.time_unix_nano,
                            name: e.name.clone(),
                            attrs: attrs_from_proto(&e.attributes),
                            dropped_attrs: e.dropped_attributes_count,
                        })
                        .collect(),
                    dropped_events: s.dropped_events_count,
                    links: s
                        .links
                        .iter()
                        .map(|l| NLink {
                            trace_id: hex::encode(&l.trace_id),
                            span_id: hex::encode(&l.span_id),
                            trace_state: l.trace_state.clone(),
                            attrs: attrs_from_proto(&l.attributes),
                            dropped_attrs: l.dropped_attributes_count,
                            flags: l.flags,
                        })
                        .collect(),
                    dropped_links: s.dropped_links_count,
                    status_code: s.status.as_ref().map(|s| s.code).unwrap_or(0),
                    status_message: s
                        .status
                        .as_ref()
                        .map(|s| s.message.clone())
                        .unwrap_or_default(),
                };
                insert_unique(&mut out, n);
            }
        }
    }
    out
}

fn insert_unique(out: &mut SpanMap, n: NSpan) {
    let id = n.span_id.clone();
    if let Some(prev) = out.insert(id.clone(), n) {
        panic!("span {id} returned more than once (first copy: {prev:?})");
    }
}

// ---------------------------------------------------------------- SDK SpanData

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

pub(crate) fn v_from_otel(v: &opentelemetry::Value) -> V {
    use opentelemetry::{Array, Value};
    match v {
        Value::Bool(b) => V::Bool(*b),
        Value::I64(i) => V::Int(*i),
        Value::F64(f) => V::Double(*f),
        Value::String(s) => V::Str(s.as_str().to_string()),
        Value::Array(Array::Bool(a)) => V::Array(a.iter().map(|x| V::Bool(*x)).collect()),
        Value::Array(Array::I64(a)) => V::Array(a.iter().map(|x| V::Int(*x)).collect()),
        Value::Array(Array::F64(a)) => V::Array(a.iter().map(|x| V::Double(*x)).collect()),
        Value::Array(Array::String(a)) => {
            V::Array(a.iter().map(|x| V::Str(x.as_str().to_string())).collect())
        }
        other => panic!("unsupported otel value {other:?}"),
    }
}

pub(crate) fn attrs_from_otel<'a>(
    kvs: impl IntoIterator<Item = &'a opentelemetry::KeyValue>,
) -> Attrs {
    sort_attrs(
        kvs.into_iter()
            .map(|kv| (kv.key.as_str().to_string(), v_from_otel(&kv.value)))
            .collect(),
    )
}

/// OTLP span flags as the SDK's exporter computes them.
fn otlp_flags(trace_flags: u8, is_remote: bool) -> u32 {
    let mut f = trace_flags as u32 | 0x100;
    if is_remote {
        f |= 0x200;
    }
    f
}

/// What the OTLP exporter sends for `spans` under `resource`.
pub(crate) fn spans_from_sdk(
    resource: &opentelemetry_sdk::Resource,
    spans: &[opentelemetry_sdk::trace::SpanData],
) -> SpanMap {
    use opentelemetry::trace::{SpanKind, Status};
    let resource_attrs = sort_attrs(
        resource
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v_from_otel(v)))
            .collect(),
    );
    let mut out = SpanMap::new();
    for s in spans {
        let sc = &s.span_context;
        let kind = match s.span_kind {
            SpanKind::Internal => 1,
            SpanKind::Server => 2,
            SpanKind::Client => 3,
            SpanKind::Producer => 4,
            SpanKind::Consumer => 5,
        };
        let (status_code, status_message) = match &s.status {
            Status::Unset => (0, String::new()),
            Status::Ok => (1, String::new()),
            Status::Error { description } => (2, description.to_string()),
        };
        let parent = if s.parent_span_id == opentelemetry::trace::SpanId::INVALID {
            String::new()
        } else {
            hex::encode(s.parent_span_id.to_bytes())
        };
        let n = NSpan {
            resource_attrs: resource_attrs.clone(),
            scope_name: s.instrumentation_scope.name().to_string(),
            scope_version: s.instrumentation_scope.version().unwrap_or("").to_string(),
            scope_attrs: attrs_from_otel(s.instrumentation_scope.attributes()),
            trace_id: hex::encode(sc.trace_id().to_bytes()),
            span_id: hex::encode(sc.span_id().to_bytes()),
            parent_span_id: parent,
            trace_state: sc.trace_state().header(),
            flags: otlp_flags(sc.trace_flags().to_u8(), s.parent_span_is_remote),
            name: s.name.to_string(),
            kind,
            start: nanos(s.start_time),
            end: nanos(s.end_time),
            attrs: attrs_from_otel(&s.attributes),
            dropped_attrs: s.dropped_attributes_count,
            events: s
                .events
                .iter()
                .map(|e| NEvent {
                    time: nanos(e.timestamp),
                    name: e.name.to_string(),
                    attrs: attrs_from_otel(&e.attributes),
                    dropped_attrs: e.dropped_attributes_count,
                })
                .collect(),
            dropped_events: s.events.dropped_count,
            links: s
                .links
                .iter()
                .map(|l| NLink {
                    trace_id: hex::encode(l.span_context.trace_id().to_bytes()),
                    span_id: hex::encode(l.span_context.span_id().to_bytes()),
                    trace_state: l.span_context.trace_state().header(),
                    attrs: attrs_from_otel(&l.attributes),
                    dropped_attrs: l.dropped_attributes_count,
                    flags: otlp_flags(
                        l.span_context.trace_flags().to_u8(),
                        l.span_context.is_remote(),
                    ),
                })
                .collect(),
            dropped_links: s.links.dropped_count,
            status_code,
            status_message,
        };
        insert_unique(&mut out, n);
    }
    out
}

// ---------------------------------------------------------------- Tempo jsonpb

fn b64_to_hex(v: Option<&J>, what: &str) -> String {
    match v {
        None => String::new(),
        Some(J::String(s)) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(s)
                .unwrap_or_else(|e| panic!("{what}: {s:?} is not standard base64: {e}"));
            hex::encode(bytes)
        }
        Some(other) => panic!("{what}: expected a base64 string, got {other}"),
    }
}

/// int64/uint64 are strings in jsonpb.
fn u64_str(v: Option<&J>, what: &str) -> u64 {
    match v {
        None => 0,
        Some(J::String(s)) => s
            .parse()
            .unwrap_or_else(|e| panic!("{what}: {s:?} is not a uint64: {e}")),
        Some(other) => panic!("{what}: expected a uint64 encoded as a JSON string, got {other}"),
    }
}

/// uint32 / fixed32 are JSON numbers.
fn u32_num(v: Option<&J>, what: &str) -> u32 {
    match v {
        None => 0,
        Some(J::Number(n)) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or_else(|| panic!("{what}: {n} is not a uint32")),
        Some(other) => panic!("{what}: expected a JSON number, got {other}"),
    }
}

fn str_field(v: Option<&J>, what: &str) -> String {
    match v {
        None => String::new(),
        Some(J::String(s)) => s.clone(),
        Some(other) => panic!("{what}: expected a string, got {other}"),
    }
}

fn arr<'a>(v: Option<&'a J>, what: &str) -> &'a [J] {
    match v {
        None => &[],
        Some(J::Array(a)) => a,
        Some(other) => panic!("{what}: expected an array, got {other}"),
    }
}

pub(crate) fn v_from_json(v: Option<&J>, what: &str) -> V {
    let obj = match v {
        None => return V::Empty,
        Some(J::Object(o)) => o,
        Some(other) => panic!("{what}: expected an AnyValue object, got {other}"),
    };
    if obj.is_empty() {
        return V::Empty;
    }
    assert_eq!(obj.len(), 1, "{what}: AnyValue with several fields: {v:?}");
    let (k, x) = obj.iter().next().unwrap();
    match k.as_str() {
        "stringValue" => V::Str(str_field(Some(x), what)),
        "intValue" => match x {
            J::String(s) => V::Int(
                s.parse()
                    .unwrap_or_else(|e| panic!("{what}: intValue {s:?}: {e}")),
            ),
            other => panic!("{what}: intValue must be a JSON string (int64 jsonpb), got {other}"),
        },
        "doubleValue" => match x {
            J::Number(n) => V::Double(n.as_f64().unwrap()),
            other => panic!("{what}: doubleValue must be a JSON number, got {other}"),
        },
        "boolValue" => match x {
            J::Bool(b) => V::Bool(*b),
            other => panic!("{what}: boolValue must be a JSON bool, got {other}"),
        },
        "bytesValue" => match x {
            J::String(s) => V::Bytes(
                base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .unwrap_or_else(|e| panic!("{what}: bytesValue {s:?} not base64: {e}")),
            ),
            other => panic!("{what}: bytesValue must be a base64 string, got {other}"),
        },
        "arrayValue" => V::Array(
            arr(x.get("values"), what)
                .iter()
                .map(|e| v_from_json(Some(e), what))
                .collect(),
        ),
        "kvlistValue" => V::KvList(attrs_from_json(x.get("values"), what)),
        other => panic!("{what}: unknown AnyValue field {other:?} in {v:?}"),
    }
}

pub(crate) fn attrs_from_json(v: Option<&J>, what: &str) -> Attrs {
    sort_attrs(
        arr(v, what)
            .iter()
            .map(|kv| {
                let key = str_field(kv.get("key"), what);
                let w = format!("{what}.{key}");
                (key, v_from_json(kv.get("value"), &w))
            })
            .collect(),
    )
}

fn kind_from_json(v: Option<&J>, what: &str) -> i32 {
    match v {
        None => 0,
        Some(J::String(s)) => match s.as_str() {
            "SPAN_KIND_UNSPECIFIED" => 0,
            "SPAN_KIND_INTERNAL" => 1,
            "SPAN_KIND_SERVER" => 2,
            "SPAN_KIND_CLIENT" => 3,
            "SPAN_KIND_PRODUCER" => 4,
            "SPAN_KIND_CONSUMER" => 5,
            other => panic!("{what}: unknown kind {other:?}"),
        },
        Some(other) => panic!("{what}: kind must be an enum name string, got {other}"),
    }
}

fn status_code_from_json(v: Option<&J>, what: &str) -> i32 {
    match v {
        None => 0,
        Some(J::String(s)) => match s.as_str() {
            "STATUS_CODE_UNSET" => 0,
            "STATUS_CODE_OK" => 1,
            "STATUS_CODE_ERROR" => 2,
            other => panic!("{what}: unknown status code {other:?}"),
        },
        Some(other) => panic!("{what}: status.code must be an enum name string, got {other}"),
    }
}

/// Parse a jsonpb array of ResourceSpans (v1 `batches` or v2 `trace.resourceSpans`).
pub(crate) fn spans_from_json(batches: &J) -> SpanMap {
    let mut out = SpanMap::new();
    let batches = match batches {
        J::Array(a) => a.as_slice(),
        J::Null => &[],
        other => panic!("expected an array of ResourceSpans, got {other}"),
    };
    for r in batches {
        let resource_attrs = attrs_from_json(
            r.get("resource").and_then(|r| r.get("attributes")),
            "resource.attributes",
        );
        assert!(
            r.get("instrumentationLibrarySpans").is_none(),
            "legacy instrumentationLibrarySpans returned; expected scopeSpans"
        );
        for ss in arr(r.get("scopeSpans"), "scopeSpans") {
            let scope = ss.get("scope");
            let scope_name = str_field(scope.and_then(|s| s.get("name")), "scope.name");
            let scope_version = str_field(scope.and_then(|s| s.get("version")), "scope.version");
            let scope_attrs =
                attrs_from_json(scope.and_then(|s| s.get("attributes")), "scope.attributes");
            for s in arr(ss.get("spans"), "spans") {
                let span_id = b64_to_hex(s.get("spanId"), "spanId");
                let w = format!("span {span_id}");
                let status = s.get("status");
                let n = NSpan {
                    resource_attrs: resource_attrs.clone(),
                    scope_name: scope_name.clone(),
                    scope_version: scope_version.clone(),
                    scope_attrs: scope_attrs.clone(),
                    trace_id: b64_to_hex(s.get("traceId"), &format!("{w}.traceId")),
                    span_id: span_id.clone(),
                    parent_span_id: b64_to_hex(s.get("parentSpanId"), &format!("{w}.parentSpanId")),
                    trace_state: str_field(s.get("traceState"), &format!("{w}.traceState")),
                    flags: u32_num(s.get("flags"), &format!("{w}.flags")),
                    name: str_field(s.get("name"), &format!("{w}.name")),
                    kind: kind_from_json(s.get("kind"), &format!("{w}.kind")),
                    start: u64_str(
                        s.get("startTimeUnixNano"),
                        &format!("{w}.startTimeUnixNano"),
                    ),
                    end: u64_str(s.get("endTimeUnixNano"), &format!("{w}.endTimeUnixNano")),
                    attrs: attrs_from_json(s.get("attributes"), &format!("{w}.attributes")),
                    dropped_attrs: u32_num(
                        s.get("droppedAttributesCount"),
                        &format!("{w}.droppedAttributesCount"),
                    ),
                    events: arr(s.get("events"), &format!("{w}.events"))
                        .iter()
                        .map(|e| NEvent {
                            time: u64_str(
                                e.get("timeUnixNano"),
                                &format!("{w}.event.timeUnixNano"),
                            ),
                            name: str_field(e.get("name"), &format!("{w}.event.name")),
                            attrs: attrs_from_json(
                                e.get("attributes"),
                                &format!("{w}.event.attributes"),
                            ),
                            dropped_attrs: u32_num(
                                e.get("droppedAttributesCount"),
                                &format!("{w}.event.droppedAttributesCount"),
                            ),
                        })
                        .collect(),
                    dropped_events: u32_num(
                        s.get("droppedEventsCount"),
                        &format!("{w}.droppedEventsCount"),
                    ),
                    links: arr(s.get("links"), &format!("{w}.links"))
                        .iter()
                        .map(|l| NLink {
                            trace_id: b64_to_hex(l.get("traceId"), &format!("{w}.link.traceId")),
                            span_id: b64_to_hex(l.get("spanId"), &format!("{w}.link.spanId")),
                            trace_state: str_field(
                                l.get("traceState"),
                                &format!("{w}.link.traceState"),
                            ),
                            attrs: attrs_from_json(
                                l.get("attributes"),
                                &format!("{w}.link.attributes"),
                            ),
                            dropped_attrs: u32_num(
                                l.get("droppedAttributesCount"),
                                &format!("{w}.link.droppedAttributesCount"),
                            ),
                            flags: u32_num(l.get("flags"), &format!("{w}.link.flags")),
                        })
                        .collect(),
                    dropped_links: u32_num(
                        s.get("droppedLinksCount"),
                        &format!("{w}.droppedLinksCount"),
                    ),
                    status_code: status_code_from_json(
                        status.and_then(|s| s.get("code")),
                        &format!("{w}.status.code"),
                    ),
                    status_message: str_field(
                        status.and_then(|s| s.get("message")),
                        &format!("{w}.status.message"),
                    ),
                };
                insert_unique(&mut out, n);
            }
        }
    }
    out
}

/// Assert that `got` holds exactly the spans of `want`, field by field.
pub(crate) fn assert_same_spans(what: &str, want: &SpanMap, got: &SpanMap) {
    let want_ids: Vec<&String> = want.keys().collect();
    let got_ids: Vec<&String> = got.keys().collect();
    assert_eq!(
        got_ids, want_ids,
        "{what}: span IDs differ (left = returned, right = sent)"
    );
    for (id, w) in want {
        let g = &got[id];
        // Field by field first, for readable failures.
        macro_rules! field {
            ($f:ident) => {
                assert_eq!(
                    g.$f,
                    w.$f,
                    "{}: span {} ({}) field `{}` differs (left = returned, right = sent)",
                    what,
                    id,
                    w.name,
                    stringify!($f)
                );
            };
        }
        field!(trace_id);
        field!(span_id);
        field!(parent_span_id);
        field!(name);
        field!(kind);
        field!(start);
        field!(end);
        field!(status_code);
        field!(status_message);
        field!(attrs);
        field!(resource_attrs);
        field!(scope_name);
        field!(scope_version);
        field!(scope_attrs);
        field!(events);
        field!(links);
        field!(trace_state);
        field!(flags);
        field!(dropped_attrs);
        field!(dropped_events);
        field!(dropped_links);
        assert_eq!(g, w, "{what}: span {id}");
    }
}

/// Events are compared in time order (the exporter sends them in the order recorded).
pub(crate) fn sort_events(m: &mut SpanMap) {
    for s in m.values_mut() {
        s.events
            .sort_by(|a, b| (a.time, &a.name).cmp(&(b.time, &b.name)));
    }
}

/// Extract the array of ResourceSpans from a v2 JSON response.
pub(crate) fn v2_resource_spans(v: &J) -> J {
    let trace = v
        .get("trace")
        .unwrap_or_else(|| panic!("v2 response has no `trace` key: {v}"));
    trace.get("resourceSpans").cloned().unwrap_or(J::Null)
}

/// Extract the `batches` of a v1 JSON response.
pub(crate) fn v1_batches(v: &J) -> J {
    v.get("batches")
        .cloned()
        .unwrap_or_else(|| panic!("v1 response has no `batches` key: {v}"))
}
