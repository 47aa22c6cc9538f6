//! [`WireTrace`]: the engine's view of a live trace read straight from its encoded OTLP
//! chunks, answering as [`super::OtlpTrace`] does over the decoded structs.
//!
//! Decoding a live trace into owned structs (a `String` per attribute key and value) was
//! ~70% of a search over the ingester's memory. Here only the span-level fields are parsed
//! up front (IDs, name, kind, times, status: what ordering, nesting and most queries use);
//! attributes, events and links are found by walking the span's bytes when the query asks,
//! and strings are borrowed. The bytes passed the ingest checks (`model/wire.rs`),
//! so walking them does not fail; what a prost decode would merge (a singular field given
//! twice) makes [`WireTrace::new`] answer `None`, and the caller decodes instead.

use crate::model::walk::{utf8, Field, Fields};
use crate::model::NestedSet;

use super::ast::{Intrinsic, Scope};
use super::engine::TraceView;
use super::eval::{SpanView, Value, ValueRef};
use super::otlp::{gather, hex_id, kind_of, nanos, status_of, structure, TraceInfo};

/// `service.name` of a `Resource` body when it is a string.
fn service_name(resource: &[u8]) -> Option<&str> {
    match any(find(resource, 1, "service.name")??)? {
        Any::Str(s) => Some(s),
        _ => None,
    }
}

/// One span's parsed fields and the bytes around it.
#[derive(Clone, Copy, Default)]
struct Core<'a> {
    /// The span's whole body: attributes, events and links are found in it on demand.
    body: &'a [u8],
    resource: &'a [u8],
    scope: &'a [u8],
    trace_id: &'a [u8],
    span_id: &'a [u8],
    parent_id: &'a [u8],
    name: &'a str,
    kind: i32,
    start: u64,
    end: u64,
    status: i32,
    status_message: &'a str,
}

struct WireSpan<'a> {
    core: Core<'a>,
    parent: Option<Core<'a>>,
    nested: NestedSet,
    children: usize,
    trace: TraceInfo<'a>,
}

/// A live trace as the engine sees it, over its encoded chunks (see the module docs).
pub struct WireTrace<'a> {
    spans: Vec<WireSpan<'a>>,
    info: TraceInfo<'a>,
    /// Per `ResourceSpans`, in order: its resource's bytes, spans and spans with status
    /// error: a search hit's service stats, named only for hits.
    resources: Vec<(&'a [u8], u32, u32)>,
}

impl<'a> WireTrace<'a> {
    /// The trace held in `chunks` (each a `TracesData` body); `None` when a decode would
    /// read something this view does not (see the module docs).
    pub fn new<C: AsRef<[u8]>>(chunks: &'a [C]) -> Option<Self> {
        let mut cores = Vec::new();
        let mut resources = Vec::new();
        for chunk in chunks {
            for f in Fields(chunk.as_ref()) {
                match f? {
                    (1, Field::Len(rs)) => resource_spans(rs, &mut cores, &mut resources)?,
                    (1, _) => return None,
                    _ => {}
                }
            }
        }
        let ids: Vec<(&[u8], &[u8])> = cores.iter().map(|c| (c.span_id, c.parent_id)).collect();
        let (parents, nested, children) = structure(&ids);
        let start = cores.iter().map(|c| c.start).min().unwrap_or(0);
        let end = cores.iter().map(|c| c.end).max().unwrap_or(0);
        let root = cores.iter().find(|c| c.parent_id.is_empty());
        let info = TraceInfo {
            trace_id: cores.first().map(|c| c.trace_id).unwrap_or(&[]),
            start,
            duration: end.saturating_sub(start),
            root_name: root.map(|c| c.name),
            root_service: root.and_then(|c| service_name(c.resource)),
        };
        let spans = cores
            .iter()
            .enumerate()
            .map(|(i, core)| WireSpan {
                core: *core,
                parent: parents[i].map(|p| cores[p]),
                nested: nested[i],
                children: children[i],
                trace: info,
            })
            .collect();
        Some(WireTrace {
            spans,
            info,
            resources,
        })
    }

    pub fn spans(&self) -> usize {
        self.spans.len()
    }

    pub fn start_unix_nano(&self) -> u64 {
        self.info.start
    }

    pub fn duration_nanos(&self) -> u64 {
        self.info.duration
    }

    pub fn root_service_name(&self) -> Option<&'a str> {
        self.info.root_service
    }

    pub fn root_span_name(&self) -> Option<&'a str> {
        self.info.root_name
    }

    pub fn span_id(&self, i: usize) -> &'a [u8] {
        self.spans[i].core.span_id
    }

    pub fn span_name(&self, i: usize) -> &'a str {
        self.spans[i].core.name
    }

    pub fn span_start_unix_nano(&self, i: usize) -> u64 {
        self.spans[i].core.start
    }

    pub fn span_duration_nanos(&self, i: usize) -> u64 {
        let c = &self.spans[i].core;
        c.end.saturating_sub(c.start)
    }

    /// Per `ResourceSpans`: service name (empty when none), span count, error count.
    pub fn services(&self) -> Vec<(&'a str, u32, u32)> {
        // Live traces repeat one resource in every chunk: named once per run of equal bytes.
        let mut last: Option<(&[u8], &str)> = None;
        self.resources
            .iter()
            .map(|&(r, spans, errors)| {
                let name = match last {
                    Some((prev, name)) if prev == r => name,
                    _ => service_name(r).unwrap_or(""),
                };
                last = Some((r, name));
                (name, spans, errors)
            })
            .collect()
    }
}

/// Parses one `ResourceSpans` body into `cores`; `None` when a decode would merge fields.
fn resource_spans<'a>(
    body: &'a [u8],
    cores: &mut Vec<Core<'a>>,
    resources: &mut Vec<(&'a [u8], u32, u32)>,
) -> Option<()> {
    // The resource may follow its spans on the wire: found first.
    let mut resource = None;
    for f in Fields(body) {
        match f? {
            (1, Field::Len(_)) if resource.is_some() => return None,
            (1, Field::Len(r)) => resource = Some(r),
            (2 | 3, Field::Len(_)) => {}
            (1..=3, _) => return None,
            _ => {}
        }
    }
    let resource = resource.unwrap_or(&[]);
    let (first, mut errors) = (cores.len(), 0);
    for ss in Fields::each(body, 2) {
        let mut scope = None;
        for f in Fields(ss) {
            match f? {
                (1, Field::Len(_)) if scope.is_some() => return None,
                (1, Field::Len(s)) => scope = Some(s),
                (2 | 3, Field::Len(_)) => {}
                (1..=3, _) => return None,
                _ => {}
            }
        }
        let scope = scope.unwrap_or(&[]);
        for span in Fields::each(ss, 2) {
            let core = parse_span(span, resource, scope)?;
            errors += u32::from(core.status == 2);
            cores.push(core);
        }
    }
    let spans = u32::try_from(cores.len() - first).unwrap_or(u32::MAX);
    resources.push((resource, spans, errors));
    Some(())
}

/// A span's singular fields; `None` when one is given twice or with the wrong wire type.
fn parse_span<'a>(body: &'a [u8], resource: &'a [u8], scope: &'a [u8]) -> Option<Core<'a>> {
    let mut c = Core {
        body,
        resource,
        scope,
        ..Core::default()
    };
    let mut seen = 0u32;
    for f in Fields(body) {
        let (n, f) = f?;
        if matches!(n, 1..=8 | 10 | 12 | 14..=16) {
            if seen & (1 << n) != 0 {
                return None;
            }
            seen |= 1 << n;
        }
        match (n, f) {
            (1, Field::Len(b)) => c.trace_id = b,
            (2, Field::Len(b)) => c.span_id = b,
            (3, Field::Len(_)) => {}
            (4, Field::Len(b)) => c.parent_id = b,
            (5, Field::Len(b)) => c.name = utf8(b)?,
            (6, Field::Varint(v)) => c.kind = v as i32,
            (7, Field::Fixed64(v)) => c.start = v,
            (8, Field::Fixed64(v)) => c.end = v,
            (9 | 11 | 13, Field::Len(_)) => {}
            (10 | 12 | 14, Field::Varint(_)) => {}
            (15, Field::Len(b)) => (c.status, c.status_message) = status(b)?,
            (16, Field::Fixed32(_)) => {}
            (1..=16, _) => return None,
            _ => {}
        }
    }
    Some(c)
}

/// A `Status` body's code and message.
fn status(body: &[u8]) -> Option<(i32, &str)> {
    let (mut code, mut message, mut seen) = (0, "", 0u8);
    for f in Fields(body) {
        match f? {
            (2, Field::Len(b)) if seen & 2 == 0 => {
                message = utf8(b)?;
                seen |= 2;
            }
            (3, Field::Varint(v)) if seen & 4 == 0 => {
                code = v as i32;
                seen |= 4;
            }
            (2 | 3, _) => return None,
            _ => {}
        }
    }
    Some((code, message))
}

/// The value of an `AnyValue`, strings borrowed.
enum Any<'a> {
    Str(&'a str),
    Bool(bool),
    Int(i64),
    Double(f64),
    Array(&'a [u8]),
    /// Bytes, key-value lists and string-table indices: no TraceQL type.
    Other,
}

/// An `AnyValue` body; `None` when it holds no value (the last one given counts).
fn any(body: &[u8]) -> Option<Any<'_>> {
    let mut out = None;
    for f in Fields(body) {
        out = Some(match f? {
            (1, Field::Len(b)) => Any::Str(utf8(b)?),
            (2, Field::Varint(v)) => Any::Bool(v != 0),
            (3, Field::Varint(v)) => Any::Int(v as i64),
            (4, Field::Fixed64(v)) => Any::Double(f64::from_bits(v)),
            (5, Field::Len(b)) => Any::Array(b),
            (6..=8, _) => Any::Other,
            _ => continue,
        });
    }
    out
}

fn to_value(body: &[u8]) -> Option<Value> {
    Some(match any(body)? {
        Any::Str(s) => Value::String(s.to_owned()),
        Any::Bool(v) => Value::Bool(v),
        Any::Int(v) => Value::Int(v),
        Any::Double(v) => Value::Float(v),
        Any::Array(a) => Value::Array(Fields::each(a, 1).filter_map(to_value).collect()),
        Any::Other => return None,
    })
}

fn to_value_ref(body: &[u8]) -> Option<ValueRef<'_>> {
    match any(body)? {
        Any::Str(s) => Some(ValueRef::Str(s)),
        _ => to_value(body).map(ValueRef::Owned),
    }
}

/// The first `KeyValue` (repeated field `number` of `owner`) keyed `name`: `Some(value
/// body)`, `Some(None)` when it has no value, `None` when there is none.
fn find<'a>(owner: &'a [u8], number: u64, name: &str) -> Option<Option<&'a [u8]>> {
    Fields::each(owner, number).find_map(|kv| {
        let (key, value) = key_value(kv);
        (key.unwrap_or(b"") == name.as_bytes()).then_some(value)
    })
}

/// A `KeyValue` body's key and value (the last of each, as a decode keeps).
fn key_value(kv: &[u8]) -> (Option<&[u8]>, Option<&[u8]>) {
    let (mut key, mut value) = (None, None);
    for (n, f) in Fields(kv).map_while(|f| f) {
        match (n, f) {
            (1, Field::Len(b)) => key = Some(b),
            (2, Field::Len(b)) => value = Some(b),
            _ => {}
        }
    }
    (key, value)
}

/// A field of each event (span field 11) or link (13), by its number in that message.
fn nested_field<'a>(
    span: &'a [u8],
    list: u64,
    number: u64,
) -> impl Iterator<Item = Option<Field<'a>>> {
    Fields::each(span, list).map(move |m| {
        let mut last = None;
        for (n, f) in Fields(m).map_while(|f| f) {
            if n == number {
                last = Some(f);
            }
        }
        last
    })
}

impl<'a> Core<'a> {
    fn attribute_body(&self, scope: Scope, name: &str) -> Option<Option<&'a [u8]>> {
        match scope {
            Scope::Span => find(self.body, 9, name),
            Scope::Resource => find(self.resource, 1, name),
            Scope::Instrumentation => find(self.scope, 3, name),
            _ => None,
        }
    }

    /// The scope's name (field 1) or version (2); empty when unset.
    fn scope_string(&self, number: u64) -> &'a str {
        let mut out = "";
        for (n, f) in Fields(self.scope).map_while(|f| f) {
            if let (true, Field::Len(b)) = (n == number, f) {
                out = utf8(b).unwrap_or("");
            }
        }
        out
    }
}

impl SpanView for Core<'_> {
    fn each_attribute(&self, f: &mut dyn FnMut(Scope, &str, Value)) {
        for (scope, owner, number) in [
            (Scope::Resource, self.resource, 1),
            (Scope::Span, self.body, 9),
        ] {
            for kv in Fields::each(owner, number) {
                let (key, Some(value)) = key_value(kv) else {
                    continue;
                };
                let key = key.unwrap_or(b"");
                if let (Some(key), Some(v)) = (utf8(key), to_value(value)) {
                    f(scope, key, v);
                }
            }
        }
    }

    fn attribute(&self, scope: Scope, name: &str) -> Option<Value> {
        match scope {
            Scope::Span | Scope::Resource | Scope::Instrumentation => {
                self.attribute_body(scope, name)?.and_then(to_value)
            }
            Scope::Event | Scope::Link => {
                let (list, attrs) = if scope == Scope::Event {
                    (11, 3)
                } else {
                    (13, 4)
                };
                gather(
                    Fields::each(self.body, list)
                        .filter_map(|m| find(m, attrs, name)?.and_then(to_value)),
                )
            }
            Scope::Unscoped => self
                .attribute(Scope::Span, name)
                .or_else(|| self.attribute(Scope::Resource, name)),
        }
    }

    fn attribute_ref(&self, scope: Scope, name: &str) -> Option<ValueRef<'_>> {
        match scope {
            Scope::Span | Scope::Resource | Scope::Instrumentation => {
                self.attribute_body(scope, name)?.and_then(to_value_ref)
            }
            _ => self.attribute(scope, name).map(ValueRef::Owned),
        }
    }

    fn intrinsic(&self, intrinsic: Intrinsic) -> Option<Value> {
        Some(match intrinsic {
            Intrinsic::Duration => Value::Duration(nanos(self.end.saturating_sub(self.start))),
            Intrinsic::Name => Value::String(self.name.to_owned()),
            Intrinsic::Status => Value::Status(status_of(self.status)),
            Intrinsic::StatusMessage => Value::String(self.status_message.to_owned()),
            Intrinsic::Kind => Value::Kind(kind_of(self.kind)),
            Intrinsic::SpanId => return hex_id(self.span_id),
            Intrinsic::ParentId => return hex_id(self.parent_id),
            Intrinsic::Parent => return (!self.parent_id.is_empty()).then_some(Value::Bool(true)),
            Intrinsic::EventName => {
                return gather(nested_field(self.body, 11, 2).map(|f| match f {
                    Some(Field::Len(b)) => Value::String(utf8(b).unwrap_or("").to_owned()),
                    _ => Value::String(String::new()),
                }))
            }
            Intrinsic::EventTimeSinceStart => {
                return gather(nested_field(self.body, 11, 1).map(|f| {
                    let t = match f {
                        Some(Field::Fixed64(t)) => t,
                        _ => 0,
                    };
                    Value::Duration(nanos(t.saturating_sub(self.start)))
                }))
            }
            Intrinsic::LinkTraceId | Intrinsic::LinkSpanId => {
                let number = if intrinsic == Intrinsic::LinkTraceId {
                    1
                } else {
                    2
                };
                return gather(nested_field(self.body, 13, number).filter_map(|f| match f {
                    Some(Field::Len(b)) => hex_id(b),
                    _ => None,
                }));
            }
            Intrinsic::InstrumentationName | Intrinsic::InstrumentationVersion => {
                let number = if intrinsic == Intrinsic::InstrumentationName {
                    1
                } else {
                    2
                };
                let s = self.scope_string(number);
                return (!s.is_empty()).then(|| Value::String(s.to_owned()));
            }
            // Structural and trace-level intrinsics need the trace: see WireSpan.
            Intrinsic::ChildCount
            | Intrinsic::TraceDuration
            | Intrinsic::TraceRootName
            | Intrinsic::TraceRootService
            | Intrinsic::TraceId
            | Intrinsic::NestedSetLeft
            | Intrinsic::NestedSetRight
            | Intrinsic::NestedSetParent => return None,
        })
    }
}

impl SpanView for WireSpan<'_> {
    fn attribute(&self, scope: Scope, name: &str) -> Option<Value> {
        self.core.attribute(scope, name)
    }

    fn attribute_ref(&self, scope: Scope, name: &str) -> Option<ValueRef<'_>> {
        self.core.attribute_ref(scope, name)
    }

    fn each_attribute(&self, f: &mut dyn FnMut(Scope, &str, Value)) {
        self.core.each_attribute(f)
    }

    fn intrinsic(&self, intrinsic: Intrinsic) -> Option<Value> {
        self.trace
            .intrinsic(intrinsic, self.nested, self.children)
            .unwrap_or_else(|| self.core.intrinsic(intrinsic))
    }

    fn parent(&self) -> Option<&dyn SpanView> {
        self.parent.as_ref().map(|p| p as &dyn SpanView)
    }
}

impl TraceView for WireTrace<'_> {
    fn span_count(&self) -> usize {
        self.spans.len()
    }

    fn span_view(&self, i: usize) -> &dyn SpanView {
        &self.spans[i]
    }

    fn nested_set(&self, i: usize) -> NestedSet {
        self.spans[i].nested
    }

    fn start_unix_nano(&self, i: usize) -> u64 {
        self.spans[i].core.start
    }
}

#[cfg(test)]
#[path = "wire_tests.rs"]
mod tests;
