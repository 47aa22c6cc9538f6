//! Projection: the columns (and generic attribute keys) a TraceQL query needs, and the
//! per-trace prefilter a row group's spans can answer without building the trace.

use super::hits::HitLeaf;
use super::prune::*;
use crate::block::schema::{parquet_schema, paths};
use crate::block::{BlockError, Dedicated, DedicatedType, DEDICATED_RESOURCE, DEDICATED_SPAN};
use crate::traceql::{
    Aggregate, FieldExpr, Intrinsic, Metrics, MetricsFunction, Pipeline, Query, ScalarExpr, Scope,
    SpansetExpr, SpansetOp, Stage, Static,
};

// ---------------------------------------------------------------------------------------------
// Projection

/// The columns a query reads, and conditions every matching trace must meet.
#[derive(Debug, Clone)]
pub struct SearchColumns {
    /// Parquet leaf column indices, ascending: what filtering reads.
    pub(super) leaves: Vec<usize>,
    /// Leaf columns only hits need (trace ID, root names, service stats; span ID, name,
    /// duration), ascending: read for a row group only when it has hits, for the hit rows
    /// alone when they are few (see [`super::hits`]). Disjoint from `leaves`.
    pub(super) late: Vec<(usize, HitLeaf)>,
    /// `(dedicated resource column path, value)`: a matching trace has a resource whose
    /// column holds the value (the query's first stage requires `resource.x = "value"`).
    pub(super) required: Vec<(String, String)>,
    /// A condition on single spans some spans of a matching trace must meet.
    pub(super) precheck: Pre,
    /// Generic attribute lists read only to look up these names: left undecoded in a row
    /// group whose key dictionary holds none of them (see [`dictionary_lacks`]).
    pub(super) generic: Vec<GenericAttrs>,
    /// Strings a matching trace's encoded spans contain: live traces lacking one are
    /// skipped undecoded.
    pub(super) literals: super::literals::Literals,
}

#[derive(Debug, Clone)]
pub(super) struct GenericAttrs {
    /// Every leaf of the list, ascending.
    pub(super) leaves: Vec<usize>,
    /// The `key` leaf.
    pub(super) key: usize,
    pub(super) names: Vec<String>,
}

/// A necessary condition for a trace to match, checked span by span on the columns before
/// the engine runs: `Any(e)` holds when some span satisfies the filter expression `e`.
#[derive(Debug, Clone, Default)]
pub(super) enum Pre {
    /// No constraint known.
    #[default]
    True,
    /// Some span satisfies the expression (`None`: some span exists).
    Any(Option<FieldExpr>),
    All(Vec<Pre>),
    AnyOf(Vec<Pre>),
}

/// Whether a single span, without its trace (no parent, children, nested set or
/// trace-level intrinsics), answers `e` as it would inside its trace.
pub(super) fn span_local(e: &FieldExpr) -> bool {
    use Intrinsic as I;
    match e {
        FieldExpr::Static(_) => true,
        FieldExpr::Attribute(a) => !a.parent,
        FieldExpr::Intrinsic(i) => matches!(
            i,
            I::Duration
                | I::Name
                | I::Status
                | I::StatusMessage
                | I::Kind
                | I::SpanId
                | I::Parent
                | I::EventName
                | I::EventTimeSinceStart
                | I::LinkTraceId
                | I::LinkSpanId
                | I::InstrumentationName
                | I::InstrumentationVersion
        ),
        FieldExpr::Logic { lhs, rhs, .. }
        | FieldExpr::Compare { lhs, rhs, .. }
        | FieldExpr::Arith { lhs, rhs, .. } => span_local(lhs) && span_local(rhs),
        FieldExpr::Regex { lhs, .. } | FieldExpr::Not(lhs) | FieldExpr::Neg(lhs) => span_local(lhs),
    }
}

pub(super) fn pre_spanset(e: &SpansetExpr) -> Pre {
    match e {
        SpansetExpr::Filter(f) => match &f.expr {
            None => Pre::Any(None),
            Some(e) if span_local(e) => Pre::Any(Some(e.clone())),
            Some(_) => Pre::True,
        },
        SpansetExpr::Binary { op, lhs, rhs } => {
            use SpansetOp as O;
            match op {
                O::Or => Pre::AnyOf(vec![pre_spanset(lhs), pre_spanset(rhs)]),
                // The negated forms keep right-hand spans even when the left matched none.
                O::NotChild | O::NotParent | O::NotDescendant | O::NotAncestor | O::NotSibling => {
                    pre_spanset(rhs)
                }
                _ => Pre::All(vec![pre_spanset(lhs), pre_spanset(rhs)]),
            }
        }
        SpansetExpr::Pipeline(p) => pre_pipeline(p),
    }
}

pub(super) fn pre_pipeline(p: &Pipeline) -> Pre {
    // A trace whose first stage keeps nothing never reaches the later ones.
    match p.stages.first() {
        Some(Stage::Spanset(e)) => pre_spanset(e),
        _ => Pre::True,
    }
}

#[derive(Default)]
pub(super) struct Needs {
    pub(super) span_attrs: bool,
    pub(super) res_attrs: bool,
    /// Attribute names looked up in the span and resource generic lists.
    pub(super) span_names: Vec<String>,
    pub(super) res_names: Vec<String>,
    pub(super) scope_attrs: bool,
    pub(super) span_ded: Vec<&'static str>,
    pub(super) res_ded: Vec<&'static str>,
    pub(super) scope_fields: bool,
    pub(super) status: bool,
    /// `status.message`, a string per span: read only when asked for.
    pub(super) status_message: bool,
    pub(super) kind: bool,
    pub(super) span_trace_id: bool,
    pub(super) events: bool,
    pub(super) links: bool,
    pub(super) name: bool,
    pub(super) span_id: bool,
    pub(super) parent_span_id: bool,
    pub(super) duration: bool,
    pub(super) root: bool,
    /// The span tree (nested sets): structural operators, `parent.` attributes and the
    /// intrinsics derived from the tree.
    pub(super) tree: bool,
    /// Generic attribute lists are read whole, whatever the names looked up.
    pub(super) all_attrs: bool,
}

impl Needs {
    pub(super) fn attribute(&mut self, scope: Scope, name: &str) {
        let ded = |spec: &[Dedicated], out: &mut Vec<&'static str>| {
            for (key, col, _) in spec {
                if *key == name && !out.contains(col) {
                    out.push(col);
                }
            }
        };
        match scope {
            Scope::Span => {
                self.span_attrs = true;
                if !self.span_names.iter().any(|n| n == name) {
                    self.span_names.push(name.to_owned());
                }
                ded(&DEDICATED_SPAN, &mut self.span_ded);
            }
            Scope::Resource => {
                self.res_attrs = true;
                if !self.res_names.iter().any(|n| n == name) {
                    self.res_names.push(name.to_owned());
                }
                ded(&DEDICATED_RESOURCE, &mut self.res_ded);
            }
            Scope::Unscoped => {
                self.attribute(Scope::Span, name);
                self.attribute(Scope::Resource, name);
            }
            Scope::Instrumentation => self.scope_attrs = true,
            Scope::Event => self.events = true,
            Scope::Link => self.links = true,
        }
    }

    pub(super) fn intrinsic(&mut self, i: Intrinsic) {
        use Intrinsic as I;
        match i {
            I::Status => self.status = true,
            I::StatusMessage => {
                self.status = true;
                self.status_message = true;
            }
            I::Kind => self.kind = true,
            I::TraceId => self.span_trace_id = true,
            I::EventName | I::EventTimeSinceStart => self.events = true,
            I::LinkTraceId | I::LinkSpanId => self.links = true,
            I::InstrumentationName | I::InstrumentationVersion => self.scope_fields = true,
            I::Name => self.name = true,
            I::SpanId => self.span_id = true,
            // A left-out parent span ID is the parent span's span_id.
            I::ParentId => {
                self.parent_span_id = true;
                self.span_id = true;
                self.tree = true;
            }
            I::Parent => self.parent_span_id = true,
            I::Duration => self.duration = true,
            I::TraceRootName | I::TraceRootService => self.root = true,
            I::ChildCount | I::NestedSetLeft | I::NestedSetRight | I::NestedSetParent => {
                self.tree = true
            }
            // Always read while filtering: trace times.
            I::TraceDuration => {}
        }
    }

    pub(super) fn field(&mut self, e: &FieldExpr) {
        match e {
            FieldExpr::Static(_) => {}
            FieldExpr::Attribute(a) => {
                self.tree |= a.parent;
                self.attribute(a.scope, &a.name)
            }
            FieldExpr::Intrinsic(i) => self.intrinsic(*i),
            FieldExpr::Logic { lhs, rhs, .. }
            | FieldExpr::Compare { lhs, rhs, .. }
            | FieldExpr::Arith { lhs, rhs, .. } => {
                self.field(lhs);
                self.field(rhs);
            }
            FieldExpr::Regex { lhs, .. } | FieldExpr::Not(lhs) | FieldExpr::Neg(lhs) => {
                self.field(lhs)
            }
        }
    }

    pub(super) fn aggregate(&mut self, a: &Aggregate) {
        match a {
            Aggregate::Count => {}
            Aggregate::Avg(f) | Aggregate::Min(f) | Aggregate::Max(f) | Aggregate::Sum(f) => {
                self.field(f)
            }
        }
    }

    pub(super) fn scalar(&mut self, e: &ScalarExpr) {
        match e {
            ScalarExpr::Static(_) => {}
            ScalarExpr::Aggregate(a) => self.aggregate(a),
            ScalarExpr::Arith { lhs, rhs, .. } => {
                self.scalar(lhs);
                self.scalar(rhs);
            }
            ScalarExpr::Pipeline {
                pipeline,
                aggregate,
            } => {
                self.pipeline(pipeline);
                self.aggregate(aggregate);
            }
        }
    }

    pub(super) fn spanset(&mut self, e: &SpansetExpr) {
        match e {
            SpansetExpr::Filter(f) => {
                if let Some(e) = &f.expr {
                    self.field(e);
                }
            }
            SpansetExpr::Binary { op, lhs, rhs } => {
                self.tree |= !matches!(op, SpansetOp::And | SpansetOp::Or);
                self.spanset(lhs);
                self.spanset(rhs);
            }
            SpansetExpr::Pipeline(p) => self.pipeline(p),
        }
    }

    /// A metrics query's fields beyond its filter: `by()`, the function's attribute, the
    /// trace ID for exemplars; `compare()` reads every attribute of a span.
    pub(super) fn metrics(&mut self, m: &Metrics) {
        use MetricsFunction as F;
        m.by.iter().for_each(|f| self.field(f));
        match &m.function {
            F::Rate | F::CountOverTime => {}
            F::MinOverTime(f)
            | F::MaxOverTime(f)
            | F::AvgOverTime(f)
            | F::SumOverTime(f)
            | F::HistogramOverTime(f)
            | F::QuantileOverTime { field: f, .. } => self.field(f),
            F::Compare { filter, .. } => {
                if let Some(e) = &filter.expr {
                    self.field(e);
                }
                self.every_attribute();
            }
        }
        self.intrinsic(Intrinsic::TraceId);
    }

    /// Every span and resource attribute (generic lists unfiltered, all dedicated columns)
    /// and the intrinsics a span is grouped by.
    fn every_attribute(&mut self) {
        for (name, _, _) in DEDICATED_SPAN.iter() {
            self.attribute(Scope::Span, name);
        }
        for (name, _, _) in DEDICATED_RESOURCE.iter() {
            self.attribute(Scope::Resource, name);
        }
        self.all_attrs = true;
        self.name = true;
        self.status = true;
        self.kind = true;
        self.root = true;
    }

    pub(super) fn pipeline(&mut self, p: &Pipeline) {
        for stage in &p.stages {
            match stage {
                Stage::Spanset(e) => self.spanset(e),
                Stage::ScalarFilter(f) => {
                    self.scalar(&f.lhs);
                    self.scalar(&f.rhs);
                }
                Stage::GroupBy(f) => self.field(f),
                Stage::Select(fs) => fs.iter().for_each(|f| self.field(f)),
                Stage::Coalesce => {}
            }
        }
    }
}

/// `resource.<dedicated string attribute> = "v"` conditions a span must meet for `e` to
/// hold: the conjuncts of a filter expression.
pub(super) fn required_in_field(e: &FieldExpr, out: &mut Vec<(String, String)>) {
    match e {
        FieldExpr::Logic {
            op: crate::traceql::LogicOp::And,
            lhs,
            rhs,
        } => {
            required_in_field(lhs, out);
            required_in_field(rhs, out);
        }
        FieldExpr::Compare {
            op: crate::traceql::CompareOp::Eq,
            lhs,
            rhs,
        } => {
            let (attr, value) = match (&**lhs, &**rhs) {
                (FieldExpr::Attribute(a), FieldExpr::Static(Static::String(v)))
                | (FieldExpr::Static(Static::String(v)), FieldExpr::Attribute(a)) => (a, v),
                _ => return,
            };
            if attr.parent || attr.scope != Scope::Resource {
                return;
            }
            for (key, col, ty) in &DEDICATED_RESOURCE {
                if *key == attr.name && *ty == DedicatedType::String {
                    out.push((format!("{}{col}", paths::RESOURCE), value.clone()));
                }
            }
        }
        _ => {}
    }
}

/// Conditions some span of a trace must meet for the spanset expression to match it.
pub(super) fn required_in_spanset(e: &SpansetExpr, out: &mut Vec<(String, String)>) {
    match e {
        SpansetExpr::Filter(f) => {
            if let Some(e) = &f.expr {
                required_in_field(e, out);
            }
        }
        SpansetExpr::Binary { op, lhs, rhs } => {
            use SpansetOp as O;
            match op {
                O::Or => {}
                // The negated forms keep right-hand spans even when the left matched none.
                O::NotChild | O::NotParent | O::NotDescendant | O::NotAncestor | O::NotSibling => {
                    required_in_spanset(rhs, out)
                }
                _ => {
                    required_in_spanset(lhs, out);
                    required_in_spanset(rhs, out);
                }
            }
        }
        SpansetExpr::Pipeline(p) => required_in_pipeline(p, out),
    }
}

pub(super) fn required_in_pipeline(p: &Pipeline, out: &mut Vec<(String, String)>) {
    // A trace whose first stage keeps nothing never reaches the later ones.
    if let Some(Stage::Spanset(e)) = p.stages.first() {
        required_in_spanset(e, out);
    }
}

/// Parquet leaf indices (ascending, distinct) of dotted paths; a path ending in `.` takes
/// every leaf below it.
pub(super) fn leaf_indices(wanted: &[String]) -> Result<Vec<usize>, BlockError> {
    let descr = parquet_schema()?;
    let mut leaves = Vec::new();
    for w in wanted {
        let before = leaves.len();
        for (i, col) in descr.columns().iter().enumerate() {
            let p = col.path().string();
            if p == *w || (w.ends_with('.') && p.starts_with(w.as_str())) {
                leaves.push(i);
            }
        }
        if leaves.len() == before {
            return Err(BlockError::Schema(format!("no column matches {w}")));
        }
    }
    leaves.sort_unstable();
    leaves.dedup();
    Ok(leaves)
}

impl SearchColumns {
    /// Whether a trace whose spans lie within `[start, end]` (unix ns) may match, judged
    /// from span durations alone (a span lasts at most the trace's envelope). True when
    /// the times are unknown (`start > end`) or nothing is known.
    pub fn envelope_possible(&self, start: u64, end: u64) -> bool {
        start > end || pre_possible_within(&self.precheck, end - start)
    }

    /// Whether a live trace whose encoded chunks are `chunks` may match, judged from the
    /// strings it must contain (see `block/search/literals.rs`). True when nothing is known.
    pub fn literals_possible(&self, chunks: &[bytes::Bytes]) -> bool {
        self.literals.possible(chunks)
    }

    /// The columns needed to evaluate `query` and report its hits.
    pub fn for_query(query: &Query) -> Result<Self, BlockError> {
        let mut needs = Needs::default();
        needs.pipeline(&query.pipeline);
        if let Some(m) = &query.metrics {
            needs.metrics(m);
        }
        let span = |leaf: &str| format!("{}{leaf}", paths::SPAN);
        let service = format!("{}service_name", paths::RESOURCE);
        let mut wanted: Vec<String> = vec![
            paths::START_TIME.into(),
            paths::END_TIME.into(),
            span("start_time_unix_nano"),
        ];
        // The root's service and name come from the trace-level columns the writer fills
        // from the same root: finding the root span instead decoded two more columns of
        // every span and resource of the row group.
        let stats = |leaf: &str| format!("service_stats.list.element.{leaf}");
        let report = [
            (paths::TRACE_ID.to_owned(), HitLeaf::TraceId),
            (paths::ROOT_SERVICE_NAME.to_owned(), HitLeaf::RootService),
            (paths::ROOT_SPAN_NAME.to_owned(), HitLeaf::RootName),
            (stats("service"), HitLeaf::StatsService),
            (stats("span_count"), HitLeaf::StatsSpans),
            (stats("error_count"), HitLeaf::StatsErrors),
            (span("span_id"), HitLeaf::SpanId),
            (span("name"), HitLeaf::Name),
            (span("duration_nano"), HitLeaf::Duration),
        ];
        // Three int columns per span that only tree questions read.
        if needs.tree {
            wanted.push(span("nested_set_left"));
            wanted.push(span("nested_set_right"));
            wanted.push(span("parent_id"));
        }
        if needs.name || needs.root {
            wanted.push(span("name"));
        }
        if needs.parent_span_id || needs.root {
            wanted.push(span("parent_span_id"));
        }
        if needs.root {
            wanted.push(service);
        }
        if needs.span_id {
            wanted.push(span("span_id"));
        }
        if needs.duration {
            wanted.push(span("duration_nano"));
        }
        if needs.span_attrs {
            wanted.push(format!("{}{}", paths::SPAN, paths::ATTRS));
        }
        wanted.extend(needs.span_ded.iter().map(|c| span(c)));
        if needs.res_attrs {
            wanted.push(format!("{}{}", paths::RESOURCE, paths::ATTRS));
        }
        wanted.extend(
            needs
                .res_ded
                .iter()
                .map(|c| format!("{}{c}", paths::RESOURCE)),
        );
        if needs.scope_attrs {
            wanted.push(format!("{}{}", paths::SCOPE, paths::ATTRS));
        }
        if needs.scope_fields {
            wanted.push(format!("{}name", paths::SCOPE));
            wanted.push(format!("{}version", paths::SCOPE));
        }
        if needs.status {
            wanted.push(span("status.code"));
        }
        if needs.status_message {
            wanted.push(span("status.message"));
        }
        if needs.kind {
            wanted.push(span("kind"));
        }
        if needs.span_trace_id {
            wanted.push(span("trace_id"));
            wanted.push(paths::TRACE_ID.into());
        }
        if needs.events {
            wanted.push(span("events."));
        }
        if needs.links {
            wanted.push(span("links."));
        }
        let leaves = leaf_indices(&wanted)?;
        let mut generic = Vec::new();
        for (on, prefix, names) in [
            (needs.span_attrs, paths::SPAN, &needs.span_names),
            (needs.res_attrs, paths::RESOURCE, &needs.res_names),
        ] {
            if on && !names.is_empty() && !needs.all_attrs {
                let list = format!("{prefix}{}", paths::ATTRS);
                generic.push(GenericAttrs {
                    leaves: leaf_indices(std::slice::from_ref(&list))?,
                    key: leaf_indices(&[format!("{list}key")])?[0],
                    names: names.clone(),
                });
            }
        }
        let mut late = Vec::new();
        for (path, kind) in report {
            let leaf = leaf_indices(std::slice::from_ref(&path))?[0];
            if leaves.binary_search(&leaf).is_err() {
                late.push((leaf, kind));
            }
        }
        late.sort_unstable_by_key(|&(leaf, _)| leaf);
        // A metrics query's pipeline selects spans exactly as a search's does.
        let mut required = Vec::new();
        required_in_pipeline(&query.pipeline, &mut required);
        let precheck = pre_pipeline(&query.pipeline);
        Ok(Self {
            leaves,
            late,
            required,
            literals: super::literals::Literals::from_pre(&precheck),
            precheck,
            generic,
        })
    }

    /// Every leaf a row group with hits reads besides `leaves`, ascending.
    pub(super) fn late_leaves(&self) -> Vec<usize> {
        self.late.iter().map(|&(leaf, _)| leaf).collect()
    }
}
