//! The engine's view: [`ColumnarTrace`] and its spans implement traceql's `TraceView` and
//! `SpanView` over the decoded arrays, borrowing strings until a value is asked for.

use std::cell::Cell;
use std::rc::Rc;

use arrow_array::Array;

use super::columns::*;
use super::direct::{Direct, SpanFilter};
use super::projection::*;
use crate::block::schema::paths;
use crate::block::{BlockError, DEDICATED_RESOURCE};
use crate::model::NestedSet;
use crate::traceql::{Intrinsic, Scope, SpanKind, SpanView, Status, TraceView, Value, ValueRef};

// ---------------------------------------------------------------------------------------------
// The engine's view

/// A span: its row-group-wide index and its resource and scope.
#[derive(Clone, Copy)]
pub(super) struct Core<'a> {
    pub(super) c: &'a ColumnarBlock<'a>,
    pub(super) g: usize,
    pub(super) r: usize,
    pub(super) s: usize,
}

#[derive(Clone, Copy)]
pub(super) struct TraceInfo<'a> {
    pub(super) row: usize,
    pub(super) first: Option<Core<'a>>,
    pub(super) root: Option<Core<'a>>,
    pub(super) duration: u64,
}

pub(super) struct ColSpan<'a> {
    pub(super) core: Core<'a>,
    pub(super) parent: Option<Core<'a>>,
    pub(super) nested: NestedSet,
    pub(super) children: u32,
    /// Shared by every span of the view and set by each `load`: a copy per span made
    /// loading a trace cost more than filtering it.
    pub(super) trace: Rc<Cell<TraceInfo<'a>>>,
}

/// One trace of a decoded row group as traceql's [`TraceView`]. [`ColumnarTrace::load`]
/// switches to another row and reuses the buffers.
pub struct ColumnarTrace<'a> {
    pub(super) c: &'a ColumnarBlock<'a>,
    pub(super) spans: Vec<ColSpan<'a>>,
    pub(super) by_left: Vec<u32>,
    pub(super) info: TraceInfo<'a>,
    pub(super) shared: Rc<Cell<TraceInfo<'a>>>,
    /// Row-group-wide index of the row's first span: span `i` of the row is `first_g + i`.
    pub(super) first_g: usize,
    /// Spans in the row.
    pub(super) n: usize,
    /// The query's precheck, prepared at its first use.
    precheck: std::cell::OnceCell<Check<'a>>,
    /// The engine's span filters asked about so far, with their answer from the columns
    /// when there is one: prepared once for the row group, not per trace.
    filters: std::cell::RefCell<Vec<(crate::traceql::FieldExpr, Option<SpanFilter<'a>>)>>,
}

/// [`Pre`] prepared for one decoded row group: status and duration conditions read their
/// column by span index ([`Direct`]), the rest go through the engine span by span.
enum Check<'a> {
    True,
    Direct(Direct<'a>),
    Spans(Option<crate::traceql::FieldExpr>),
    All(Vec<Check<'a>>),
    AnyOf(Vec<Check<'a>>),
}

impl<'a> Check<'a> {
    fn new(pre: &Pre, c: &ColumnarBlock<'a>) -> Self {
        match pre {
            Pre::True => Self::True,
            Pre::All(ps) => Self::All(ps.iter().map(|p| Self::new(p, c)).collect()),
            Pre::AnyOf(ps) => Self::AnyOf(ps.iter().map(|p| Self::new(p, c)).collect()),
            Pre::Any(expr) => match expr.as_ref().and_then(|e| Direct::new(e, c)) {
                Some(d) => Self::Direct(d),
                None => Self::Spans(expr.clone()),
            },
        }
    }
}

const NONE: u32 = u32::MAX;

pub(super) fn nanos(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(super) fn hex_id(id: &[u8]) -> Option<Value> {
    (!id.is_empty()).then(|| Value::String(hex::encode(id)))
}

pub(super) fn gather(values: impl Iterator<Item = Value>) -> Option<Value> {
    let mut it = values;
    let first = it.next()?;
    match it.next() {
        None => Some(first),
        Some(second) => {
            let mut all = vec![first, second];
            all.extend(it);
            Some(Value::Array(all))
        }
    }
}

impl<'a> ColumnarTrace<'a> {
    pub fn new(c: &'a ColumnarBlock<'a>) -> Self {
        let info = TraceInfo {
            row: 0,
            first: None,
            root: None,
            duration: 0,
        };
        Self {
            c,
            spans: Vec::new(),
            by_left: Vec::new(),
            info,
            shared: Rc::new(Cell::new(info)),
            first_g: 0,
            n: 0,
            precheck: std::cell::OnceCell::new(),
            filters: std::cell::RefCell::new(Vec::new()),
        }
    }

    /// Makes the hit accessors ([`ColumnarTrace::span_id`] and the like) show trace
    /// `row` without building the engine's view of its spans: reporting needs no more.
    pub fn locate(&mut self, row: usize) -> Result<(), BlockError> {
        self.spans.clear();
        self.info = self.trace_info(row)?;
        Ok(())
    }

    /// Checks the row's offsets and finds its first and root spans.
    pub(super) fn trace_info(&mut self, row: usize) -> Result<TraceInfo<'a>, BlockError> {
        let c = self.c;
        if row >= c.rows {
            return Err(corrupt("row out of range"));
        }
        let spans = c.spans_of(row);
        if spans.end > c.span_start.len() || c.rs_offsets[row + 1] as usize > c.ss_offsets.len() {
            return Err(corrupt("span offsets out of range"));
        }
        self.first_g = spans.start;
        self.n = spans.len();
        let mut first = None;
        let mut root = None;
        'find: for r in range(c.rs_offsets, row) {
            for s in range(c.ss_offsets, r) {
                for g in range(c.span_offsets, s) {
                    let core = Core { c, g, r, s };
                    first = first.or(Some(core));
                    // Without the column no span is a root: the first span is all there is.
                    let Some(parents) = c.parent_span_id else {
                        break 'find;
                    };
                    if parents.is_valid(g) && parents.value(g).is_empty() {
                        root = Some(core);
                        break 'find;
                    }
                }
            }
        }
        let (start, end) = (c.start.value(row), c.end.value(row));
        Ok(TraceInfo {
            row,
            first,
            root,
            duration: end.saturating_sub(start),
        })
    }

    /// Does the row pass the query's required resource conditions (a cheap column check
    /// before evaluation)? See [`SearchColumns::for_query`].
    pub fn may_match(&self, columns: &SearchColumns, row: usize) -> bool {
        columns.required.iter().all(|(path, value)| {
            let col = path.strip_prefix(paths::RESOURCE).unwrap_or(path);
            match DEDICATED_RESOURCE.iter().find(|(_, c, _)| *c == col) {
                Some((key, _, _)) => self.c.has_resource_value(row, key, value),
                None => true,
            }
        })
    }

    /// Does some span of the row meet the query's span-level precondition (see `Pre`)?
    /// Evaluates the first stage's filters span by span, without building the trace.
    /// `columns` must be the same for every row of this view: the check is prepared once.
    pub fn spans_may_match(&self, columns: &SearchColumns, row: usize) -> bool {
        let check = self
            .precheck
            .get_or_init(|| Check::new(&columns.precheck, self.c));
        self.pre(check, row)
    }

    fn pre(&self, check: &Check<'a>, row: usize) -> bool {
        let c = self.c;
        match check {
            Check::True => true,
            Check::All(ps) => ps.iter().all(|p| self.pre(p, row)),
            Check::AnyOf(ps) => ps.iter().any(|p| self.pre(p, row)),
            Check::Direct(d) => c.spans_of(row).any(|g| d.holds(g)),
            Check::Spans(expr) => range(c.rs_offsets, row).any(|r| {
                range(c.ss_offsets, r).any(|s| {
                    range(c.span_offsets, s).any(|g| match expr {
                        None => true,
                        Some(e) => crate::traceql::matches(e, &Core { c, g, r, s }),
                    })
                })
            }),
        }
    }

    /// Makes this view show trace `row`.
    pub fn load(&mut self, row: usize) -> Result<(), BlockError> {
        let c = self.c;
        self.spans.clear();
        // The trace-level fields first, so each span copies them once.
        self.info = self.trace_info(row)?;
        let (first_g, n) = (self.first_g, self.n);
        self.shared.set(self.info);
        // Nested-set left numbers of one trace are distinct and within 1..=2n.
        self.by_left.clear();
        self.by_left.resize(2 * n + 2, NONE);
        for r in range(c.rs_offsets, row) {
            for s in range(c.ss_offsets, r) {
                for g in range(c.span_offsets, s) {
                    let core = Core { c, g, r, s };
                    // Without the columns (no tree question) no span has a parent.
                    let nested = match c.nested {
                        Some((l, r, p)) => NestedSet {
                            left: l.value(g),
                            right: r.value(g),
                            parent: p.value(g),
                        },
                        None => NestedSet {
                            left: 0,
                            right: 0,
                            parent: 0,
                        },
                    };
                    if let Some(slot) = usize::try_from(nested.left)
                        .ok()
                        .and_then(|l| self.by_left.get_mut(l))
                    {
                        // Like a map built in span order: the last span wins.
                        *slot = (g - first_g) as u32;
                    }
                    self.spans.push(ColSpan {
                        core,
                        parent: None,
                        nested,
                        children: 0,
                        trace: self.shared.clone(),
                    });
                }
            }
        }
        for i in 0..self.spans.len() {
            let p = self.spans[i].nested.parent;
            let parent = usize::try_from(p)
                .ok()
                .filter(|&p| p > 0)
                .and_then(|p| self.by_left.get(p).copied())
                .filter(|&p| p != NONE && p as usize != i);
            if let Some(p) = parent {
                self.spans[p as usize].children += 1;
                self.spans[i].parent = Some(self.spans[p as usize].core);
            }
        }
        Ok(())
    }

    pub fn row(&self) -> usize {
        self.info.row
    }

    /// The row-group-wide index of span `i` of the shown trace.
    pub(super) fn g(&self, i: usize) -> usize {
        assert!(i < self.n, "span {i} of a trace with {} spans", self.n);
        self.first_g + i
    }

    /// Hit columns ([`Phase::Report`](super::Phase::Report)) only; empty otherwise.
    pub fn span_id(&self, i: usize) -> &'a [u8] {
        self.c.span_id.map_or(&[], |a| a.value(self.g(i)))
    }

    /// Hit columns ([`Phase::Report`](super::Phase::Report)) only; empty otherwise.
    pub fn span_name(&self, i: usize) -> &'a str {
        self.c.name.map_or("", |a| a.value(self.g(i)))
    }

    pub fn span_start_unix_nano(&self, i: usize) -> u64 {
        self.c.span_start.value(self.g(i))
    }

    /// Spans of the trace shown by [`ColumnarTrace::locate`] or [`ColumnarTrace::load`].
    pub fn located_spans(&self) -> usize {
        self.n
    }

    /// [`ColumnarTrace::span_duration_nanos`] for a stored duration read apart from the
    /// view's columns (see [`super::read_hit_columns`]).
    pub fn span_duration_from(&self, i: usize, stored: u64) -> u64 {
        let start = self.span_start_unix_nano(i);
        start.wrapping_add(stored).saturating_sub(start)
    }

    /// End minus start, as an OTLP span read back from the block gives it.
    pub fn span_duration_nanos(&self, i: usize) -> u64 {
        let core = Core {
            c: self.c,
            g: self.g(i),
            r: 0,
            s: 0,
        };
        core.duration().unwrap_or(0)
    }
}

impl<'a> Core<'a> {
    pub(super) fn start(&self) -> u64 {
        self.c.span_start.value(self.g)
    }

    pub(super) fn duration(&self) -> Option<u64> {
        let start = self.start();
        Some(
            start
                .wrapping_add(self.c.duration?.value(self.g))
                .saturating_sub(start),
        )
    }

    pub(super) fn resource_valid(&self) -> bool {
        self.c.res.is_some_and(|r| r.is_valid(self.r))
    }

    pub(super) fn scope_valid(&self) -> bool {
        self.c.scope.is_some_and(|s| s.is_valid(self.s))
    }

    pub(super) fn service_name(&self) -> Option<&'a str> {
        let col = self.c.res_service?;
        (self.resource_valid() && col.is_valid(self.r)).then(|| col.value(self.r))
    }

    pub(super) fn status_code(&self) -> Option<i32> {
        let (st, code, _) = self.c.status?;
        st.is_valid(self.g).then(|| code.value(self.g))
    }
}

impl SpanView for Core<'_> {
    fn each_attribute(&self, f: &mut dyn FnMut(Scope, &str, Value)) {
        let c = self.c;
        let mut side = |scope, ded: &[(&'static str, DedCol<'_>)], attrs: Option<&Attrs<'_>>, i| {
            for (k, d) in ded {
                if let Some(v) = d.get(i) {
                    f(scope, k, owned(v));
                }
            }
            if let Some(a) = attrs {
                for j in range(a.offsets, i) {
                    if let Some(v) = a.value(j) {
                        f(scope, a.v.key.value(j), owned(v));
                    }
                }
            }
        };
        if self.resource_valid() {
            side(Scope::Resource, &c.res_ded, c.res_attrs.as_ref(), self.r);
        }
        side(Scope::Span, &c.span_ded, c.span_attrs.as_ref(), self.g);
    }

    fn attribute_ref(&self, scope: Scope, name: &str) -> Option<ValueRef<'_>> {
        let c = self.c;
        match scope {
            Scope::Span => {
                if let Some((_, d)) = c.span_ded.iter().find(|(k, _)| *k == name) {
                    if let Some(v) = d.get(self.g) {
                        return Some(v);
                    }
                }
                c.span_attrs.as_ref()?.find_ref(self.g, name)
            }
            Scope::Resource => {
                if !self.resource_valid() {
                    return None;
                }
                if let Some((_, d)) = c.res_ded.iter().find(|(k, _)| *k == name) {
                    if let Some(v) = d.get(self.r) {
                        return Some(v);
                    }
                }
                c.res_attrs.as_ref()?.find_ref(self.r, name)
            }
            Scope::Instrumentation => {
                if !self.scope_valid() {
                    return None;
                }
                c.scope_attrs.as_ref()?.find_ref(self.s, name)
            }
            _ => self.attribute(scope, name).map(ValueRef::Owned),
        }
    }

    fn attribute(&self, scope: Scope, name: &str) -> Option<Value> {
        let c = self.c;
        match scope {
            Scope::Span | Scope::Resource | Scope::Instrumentation => {
                self.attribute_ref(scope, name).map(owned)
            }
            Scope::Event => {
                let ev = c.events.as_ref()?;
                gather(range(ev.offsets, self.g).filter_map(|e| ev.attrs.find(e, name)))
            }
            Scope::Link => {
                let lk = c.links.as_ref()?;
                gather(range(lk.offsets, self.g).filter_map(|l| lk.attrs.find(l, name)))
            }
            Scope::Unscoped => self
                .attribute(Scope::Span, name)
                .or_else(|| self.attribute(Scope::Resource, name)),
        }
    }

    fn intrinsic(&self, intrinsic: Intrinsic) -> Option<Value> {
        let c = self.c;
        let g = self.g;
        Some(match intrinsic {
            Intrinsic::Duration => Value::Duration(nanos(self.duration()?)),
            Intrinsic::Name => Value::String(c.name?.value(g).to_owned()),
            Intrinsic::Status => Value::Status(match self.status_code() {
                Some(1) => Status::Ok,
                Some(2) => Status::Error,
                _ => Status::Unset,
            }),
            Intrinsic::StatusMessage => {
                let (st, _, msg) = c.status?;
                let msg = msg?;
                Value::String(if st.is_valid(g) {
                    msg.value(g).to_owned()
                } else {
                    String::new()
                })
            }
            Intrinsic::Kind => Value::Kind(match c.kind?.value(g) {
                1 => SpanKind::Internal,
                2 => SpanKind::Server,
                3 => SpanKind::Client,
                4 => SpanKind::Producer,
                5 => SpanKind::Consumer,
                _ => SpanKind::Unspecified,
            }),
            Intrinsic::SpanId => return hex_id(c.span_id?.value(g)),
            // A null (left-out) parent span ID needs the parent span: see `ColSpan`.
            Intrinsic::ParentId => {
                let p = c.parent_span_id?;
                return p.is_valid(g).then(|| hex_id(p.value(g))).flatten();
            }
            // Null: left out because the parent span is in the trace.
            Intrinsic::Parent => {
                let p = c.parent_span_id?;
                return (p.is_null(g) || !p.value(g).is_empty()).then_some(Value::Bool(true));
            }
            Intrinsic::EventName => {
                let ev = c.events.as_ref()?;
                return gather(
                    range(ev.offsets, g).map(|e| Value::String(ev.name.value(e).to_owned())),
                );
            }
            Intrinsic::EventTimeSinceStart => {
                let ev = c.events.as_ref()?;
                let start = self.start();
                return gather(range(ev.offsets, g).map(|e| {
                    let t = start.wrapping_add(ev.time.value(e) as u64);
                    Value::Duration(nanos(t.saturating_sub(start)))
                }));
            }
            Intrinsic::LinkTraceId => {
                let lk = c.links.as_ref()?;
                return gather(range(lk.offsets, g).filter_map(|l| hex_id(lk.trace_id.value(l))));
            }
            Intrinsic::LinkSpanId => {
                let lk = c.links.as_ref()?;
                return gather(range(lk.offsets, g).filter_map(|l| hex_id(lk.span_id.value(l))));
            }
            Intrinsic::InstrumentationName => {
                if !self.scope_valid() {
                    return None;
                }
                let name = c.scope_name?.value(self.s);
                return (!name.is_empty()).then(|| Value::String(name.to_owned()));
            }
            Intrinsic::InstrumentationVersion => {
                if !self.scope_valid() {
                    return None;
                }
                let version = c.scope_version?.value(self.s);
                return (!version.is_empty()).then(|| Value::String(version.to_owned()));
            }
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

impl SpanView for ColSpan<'_> {
    fn attribute(&self, scope: Scope, name: &str) -> Option<Value> {
        self.core.attribute(scope, name)
    }

    fn each_attribute(&self, f: &mut dyn FnMut(Scope, &str, Value)) {
        self.core.each_attribute(f)
    }

    fn attribute_ref(&self, scope: Scope, name: &str) -> Option<ValueRef<'_>> {
        self.core.attribute_ref(scope, name)
    }

    fn intrinsic(&self, intrinsic: Intrinsic) -> Option<Value> {
        let t = self.trace.get();
        Some(match intrinsic {
            Intrinsic::ChildCount => Value::Int(i64::from(self.children)),
            Intrinsic::NestedSetLeft => Value::Int(i64::from(self.nested.left)),
            Intrinsic::NestedSetRight => Value::Int(i64::from(self.nested.right)),
            Intrinsic::NestedSetParent => Value::Int(i64::from(self.nested.parent)),
            Intrinsic::TraceDuration => Value::Duration(nanos(t.duration)),
            Intrinsic::TraceRootName => {
                let r = t.root?;
                Value::String(r.c.name?.value(r.g).to_owned())
            }
            Intrinsic::TraceRootService => Value::String(t.root?.service_name()?.to_owned()),
            Intrinsic::TraceId => {
                let first = t.first?;
                let c = first.c;
                return match c.span_trace_id {
                    Some(a) if a.is_valid(first.g) => hex_id(a.value(first.g)),
                    _ => hex_id(c.trace_id?.value(t.row)),
                };
            }
            Intrinsic::ParentId
                if self
                    .core
                    .c
                    .parent_span_id
                    .is_some_and(|p| p.is_null(self.core.g)) =>
            {
                let p = self.parent?;
                return hex_id(p.c.span_id?.value(p.g));
            }
            other => return self.core.intrinsic(other),
        })
    }

    fn parent(&self) -> Option<&dyn SpanView> {
        self.parent.as_ref().map(|p| p as &dyn SpanView)
    }
}

impl TraceView for ColumnarTrace<'_> {
    fn span_count(&self) -> usize {
        self.spans.len()
    }

    fn retain_matching(&self, expr: &crate::traceql::FieldExpr, spans: &mut Vec<usize>) -> bool {
        let mut filters = self.filters.borrow_mut();
        let at = match filters.iter().position(|(e, _)| e == expr) {
            Some(at) => at,
            None => {
                filters.push((expr.clone(), SpanFilter::new(expr, self.c)));
                filters.len() - 1
            }
        };
        let Some(filter) = &filters[at].1 else {
            return false;
        };
        spans.retain(|&i| {
            let span = &self.spans[i];
            filter
                .holds(span.core.g, span.core.r)
                .unwrap_or_else(|| crate::traceql::matches(expr, span))
        });
        true
    }

    fn span_view(&self, i: usize) -> &dyn SpanView {
        &self.spans[i]
    }

    fn nested_set(&self, i: usize) -> NestedSet {
        self.spans[i].nested
    }

    fn start_unix_nano(&self, i: usize) -> u64 {
        self.spans[i].core.start()
    }
}
