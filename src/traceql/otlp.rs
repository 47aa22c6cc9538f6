//! [`OtlpTrace`]: the engine's view of a trace held as OTLP `ResourceSpans` (live traces in
//! the ingester, traces read back whole from a block).
//!
//! Spans are numbered in storage order (batch, scope, span). Every span carries what the
//! evaluator may ask about it: its resource and instrumentation scope, its parent (for
//! `parent.` attributes), nested-set numbers, child count and the trace-level intrinsics.

use crate::model::{
    any_value, nested_sets, parent_indices, AnyValue, InstrumentationScope, KeyValue, NestedSet,
    Resource, ResourceSpans, Span,
};

use super::ast::{Intrinsic, Scope, SpanKind, Status};
use super::engine::TraceView;
use super::eval::{SpanView, Value};

/// A trace flattened for evaluation: every span with its resource and scope, nested-set
/// numbers, trace-level intrinsics (root service/name, trace duration, start).
pub struct OtlpTrace<'a> {
    spans: Vec<FlatSpan<'a>>,
    info: TraceInfo<'a>,
}

/// Trace-level facts, copied into every span so a span answers `trace:` intrinsics alone.
/// Shared with [`super::wire::WireTrace`].
#[derive(Clone, Copy, Default)]
pub(super) struct TraceInfo<'a> {
    pub(super) trace_id: &'a [u8],
    pub(super) start: u64,
    pub(super) duration: u64,
    pub(super) root_name: Option<&'a str>,
    pub(super) root_service: Option<&'a str>,
}

impl TraceInfo<'_> {
    /// A structural or trace-level intrinsic of a span at `nested` with `children` children:
    /// `Some(answer)`, or `None` for a span-level intrinsic (the span answers it).
    pub(super) fn intrinsic(
        &self,
        intrinsic: Intrinsic,
        nested: NestedSet,
        children: usize,
    ) -> Option<Option<Value>> {
        Some(match intrinsic {
            Intrinsic::ChildCount => Some(Value::Int(children as i64)),
            Intrinsic::NestedSetLeft => Some(Value::Int(i64::from(nested.left))),
            Intrinsic::NestedSetRight => Some(Value::Int(i64::from(nested.right))),
            Intrinsic::NestedSetParent => Some(Value::Int(i64::from(nested.parent))),
            Intrinsic::TraceDuration => Some(Value::Duration(nanos(self.duration))),
            Intrinsic::TraceRootName => self.root_name.map(|n| Value::String(n.to_owned())),
            Intrinsic::TraceRootService => self.root_service.map(|s| Value::String(s.to_owned())),
            Intrinsic::TraceId => hex_id(self.trace_id),
            _ => return None,
        })
    }
}

/// Each span's parent (by span ID), nested-set numbers and child count, from its
/// `(span ID, parent span ID)`.
pub(super) fn structure(
    ids: &[(&[u8], &[u8])],
) -> (Vec<Option<usize>>, Vec<NestedSet>, Vec<usize>) {
    let parents = parent_indices(ids);
    let nested = nested_sets(&parents);
    let mut children = vec![0usize; ids.len()];
    for p in parents.iter().flatten() {
        children[*p] += 1;
    }
    (parents, nested, children)
}

/// TraceQL's status for an OTLP status code.
pub(super) fn status_of(code: i32) -> Status {
    match code {
        1 => Status::Ok,
        2 => Status::Error,
        _ => Status::Unset,
    }
}

/// TraceQL's kind for an OTLP span kind.
pub(super) fn kind_of(kind: i32) -> SpanKind {
    match kind {
        1 => SpanKind::Internal,
        2 => SpanKind::Server,
        3 => SpanKind::Client,
        4 => SpanKind::Producer,
        5 => SpanKind::Consumer,
        _ => SpanKind::Unspecified,
    }
}

/// One span and what surrounds it in OTLP.
#[derive(Clone, Copy)]
struct SpanCore<'a> {
    span: &'a Span,
    resource: Option<&'a Resource>,
    scope: Option<&'a InstrumentationScope>,
}

struct FlatSpan<'a> {
    core: SpanCore<'a>,
    parent: Option<SpanCore<'a>>,
    nested: NestedSet,
    children: usize,
    trace: TraceInfo<'a>,
}

impl<'a> OtlpTrace<'a> {
    pub fn new(batches: &'a [ResourceSpans]) -> Self {
        let mut cores = Vec::new();
        for batch in batches {
            for scope_spans in &batch.scope_spans {
                for span in &scope_spans.spans {
                    cores.push(SpanCore {
                        span,
                        resource: batch.resource.as_ref(),
                        scope: scope_spans.scope.as_ref(),
                    });
                }
            }
        }
        let ids: Vec<(&[u8], &[u8])> = cores
            .iter()
            .map(|c| (c.span.span_id.as_slice(), c.span.parent_span_id.as_slice()))
            .collect();
        let (parents, nested, children) = structure(&ids);

        let start = cores
            .iter()
            .map(|c| c.span.start_time_unix_nano)
            .min()
            .unwrap_or(0);
        let end = cores
            .iter()
            .map(|c| c.span.end_time_unix_nano)
            .max()
            .unwrap_or(0);
        let root = cores.iter().find(|c| c.span.parent_span_id.is_empty());
        let info = TraceInfo {
            trace_id: cores
                .first()
                .map(|c| c.span.trace_id.as_slice())
                .unwrap_or(&[]),
            start,
            duration: end.saturating_sub(start),
            root_name: root.map(|c| c.span.name.as_str()),
            root_service: root.and_then(|c| service_name(c.resource)),
        };
        let spans = cores
            .iter()
            .enumerate()
            .map(|(i, core)| FlatSpan {
                core: *core,
                parent: parents[i].map(|p| cores[p]),
                nested: nested[i],
                children: children[i],
                trace: info,
            })
            .collect();
        OtlpTrace { spans, info }
    }

    pub fn spans(&self) -> usize {
        self.spans.len()
    }

    pub fn span(&self, i: usize) -> &'a Span {
        self.spans[i].core.span
    }

    pub fn resource(&self, i: usize) -> Option<&'a Resource> {
        self.spans[i].core.resource
    }

    pub fn scope(&self, i: usize) -> Option<&'a InstrumentationScope> {
        self.spans[i].core.scope
    }

    /// `service.name` of span `i`'s resource.
    pub fn service_name(&self, i: usize) -> Option<&'a str> {
        service_name(self.spans[i].core.resource)
    }

    /// The earliest span start; 0 for a trace without spans.
    pub fn start_unix_nano(&self) -> u64 {
        self.info.start
    }

    /// From the earliest start to the latest end.
    pub fn duration_nanos(&self) -> u64 {
        self.info.duration
    }

    /// The trace ID of the first span.
    pub fn trace_id(&self) -> &'a [u8] {
        self.info.trace_id
    }

    /// `service.name` of the root span (the first span without a parent ID).
    pub fn root_service_name(&self) -> Option<&'a str> {
        self.info.root_service
    }

    pub fn root_span_name(&self) -> Option<&'a str> {
        self.info.root_name
    }
}

impl TraceView for OtlpTrace<'_> {
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
        self.spans[i].core.span.start_time_unix_nano
    }
}

fn service_name(resource: Option<&Resource>) -> Option<&str> {
    let value = find(&resource?.attributes, "service.name")?;
    match value.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.as_str()),
        _ => None,
    }
}

fn find<'k>(attributes: &'k [KeyValue], name: &str) -> Option<&'k AnyValue> {
    attributes
        .iter()
        .find(|kv| kv.key == name)
        .and_then(|kv| kv.value.as_ref())
}

/// A typed value from an OTLP `AnyValue`; bytes and maps have no TraceQL type.
fn to_value(value: &AnyValue) -> Option<Value> {
    Some(match value.value.as_ref()? {
        any_value::Value::StringValue(s) => Value::String(s.clone()),
        any_value::Value::IntValue(v) => Value::Int(*v),
        any_value::Value::DoubleValue(v) => Value::Float(*v),
        any_value::Value::BoolValue(v) => Value::Bool(*v),
        any_value::Value::ArrayValue(array) => {
            Value::Array(array.values.iter().filter_map(to_value).collect())
        }
        any_value::Value::KvlistValue(_)
        | any_value::Value::BytesValue(_)
        | any_value::Value::StringValueStrindex(_) => return None,
    })
}

/// One value per event or link that has one: a scalar when there is one, else an array
/// (any-match semantics).
pub(super) fn gather(values: impl Iterator<Item = Value>) -> Option<Value> {
    let mut all: Vec<Value> = values.collect();
    match all.len() {
        0 => None,
        1 => all.pop(),
        _ => Some(Value::Array(all)),
    }
}

pub(super) fn hex_id(id: &[u8]) -> Option<Value> {
    (!id.is_empty()).then(|| Value::String(hex::encode(id)))
}

pub(super) fn nanos(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl SpanView for SpanCore<'_> {
    fn each_attribute(&self, f: &mut dyn FnMut(Scope, &str, Value)) {
        let resource = self
            .resource
            .map(|r| r.attributes.as_slice())
            .unwrap_or(&[]);
        for (scope, attrs) in [
            (Scope::Resource, resource),
            (Scope::Span, self.span.attributes.as_slice()),
        ] {
            for kv in attrs {
                if let Some(v) = kv.value.as_ref().and_then(to_value) {
                    f(scope, &kv.key, v);
                }
            }
        }
    }

    fn attribute(&self, scope: Scope, name: &str) -> Option<Value> {
        let span = self.span;
        match scope {
            Scope::Span => find(&span.attributes, name).and_then(to_value),
            Scope::Resource => find(&self.resource?.attributes, name).and_then(to_value),
            Scope::Instrumentation => find(&self.scope?.attributes, name).and_then(to_value),
            Scope::Event => gather(
                span.events
                    .iter()
                    .filter_map(|e| find(&e.attributes, name).and_then(to_value)),
            ),
            Scope::Link => gather(
                span.links
                    .iter()
                    .filter_map(|l| find(&l.attributes, name).and_then(to_value)),
            ),
            Scope::Unscoped => self
                .attribute(Scope::Span, name)
                .or_else(|| self.attribute(Scope::Resource, name)),
        }
    }

    fn intrinsic(&self, intrinsic: Intrinsic) -> Option<Value> {
        let span = self.span;
        Some(match intrinsic {
            Intrinsic::Duration => Value::Duration(nanos(
                span.end_time_unix_nano
                    .saturating_sub(span.start_time_unix_nano),
            )),
            Intrinsic::Name => Value::String(span.name.clone()),
            Intrinsic::Status => {
                Value::Status(status_of(span.status.as_ref().map_or(0, |s| s.code)))
            }
            Intrinsic::StatusMessage => Value::String(
                span.status
                    .as_ref()
                    .map(|s| s.message.clone())
                    .unwrap_or_default(),
            ),
            Intrinsic::Kind => Value::Kind(kind_of(span.kind)),
            Intrinsic::SpanId => return hex_id(&span.span_id),
            Intrinsic::ParentId => return hex_id(&span.parent_span_id),
            Intrinsic::Parent => {
                return (!span.parent_span_id.is_empty()).then_some(Value::Bool(true))
            }
            Intrinsic::EventName => {
                return gather(span.events.iter().map(|e| Value::String(e.name.clone())))
            }
            Intrinsic::EventTimeSinceStart => {
                return gather(span.events.iter().map(|e| {
                    Value::Duration(nanos(
                        e.time_unix_nano.saturating_sub(span.start_time_unix_nano),
                    ))
                }))
            }
            Intrinsic::LinkTraceId => {
                return gather(span.links.iter().filter_map(|l| hex_id(&l.trace_id)))
            }
            Intrinsic::LinkSpanId => {
                return gather(span.links.iter().filter_map(|l| hex_id(&l.span_id)))
            }
            Intrinsic::InstrumentationName => {
                let name = &self.scope?.name;
                return (!name.is_empty()).then(|| Value::String(name.clone()));
            }
            Intrinsic::InstrumentationVersion => {
                let version = &self.scope?.version;
                return (!version.is_empty()).then(|| Value::String(version.clone()));
            }
            // Structural and trace-level intrinsics need the trace: see FlatSpan.
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

impl SpanView for FlatSpan<'_> {
    fn attribute(&self, scope: Scope, name: &str) -> Option<Value> {
        self.core.attribute(scope, name)
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
