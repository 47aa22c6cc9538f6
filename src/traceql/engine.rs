//! The TraceQL search engine: runs a query's pipeline over one trace and returns the
//! spansets that survive it.
//!
//! The engine sees a trace only through [`TraceView`] (span count, a [`SpanView`] per span,
//! nested-set numbers, start times), so the same code serves OTLP traces ([`OtlpTrace`]) and
//! any later columnar reader. It knows nothing of Parquet, object storage or HTTP.
//!
//! Semantics, following Tempo:
//! - A trace enters the pipeline as one spanset holding all its spans; each stage maps the
//!   list of spansets to a new list, and the trace matches when the last stage leaves at
//!   least one spanset. A spanset never holds zero spans.
//! - `{ expr }` keeps the spans of each spanset for which `expr` is true (dropping spansets
//!   left empty). `{A} && {B}` keeps a spanset when both sides match and returns the union of
//!   their spans; `{A} || {B}` when either does.
//! - Structural operators return right-hand spans related to a left-hand span (`>` child,
//!   `<` parent, `>>` descendant, `<<` ancestor, `~` sibling: same parent, not itself); the
//!   negated forms return right-hand spans with no such relation to any left-hand span (all
//!   of them when the left side matched nothing); the union forms (`&>` ...) return the
//!   related spans of both sides. Either side producing several spansets (after `by()`) is
//!   an error, as in Tempo.
//! - `by(f)` splits each spanset by the value of `f`; spans where `f` is nil form their own
//!   group, reported as `"nil"` (Tempo does the same). `coalesce()` merges every spanset into
//!   one and drops their attributes. `select(...)` changes no spanset: its fields are
//!   reported with the spans.
//! - Scalar filters compute aggregates per spanset (`count()`, `avg/min/max/sum(f)`, and
//!   arithmetic between them), record each aggregate in the spanset's attributes under
//!   Tempo's name (`count()`, `avg(duration)`), and keep the spansets that satisfy the
//!   comparison. An aggregate over a field no span has is nil, and the comparison is false.

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::model::NestedSet;

use super::ast::{
    Aggregate, Attribute, CompareOp, FieldExpr, Intrinsic, LogicOp, Pipeline, Query, ScalarExpr,
    ScalarFilter, Scope, SpansetExpr, SpansetOp, Stage, Static,
};
use super::eval::{eval, matches, static_value, SpanView, Value};
use super::otlp::OtlpTrace;
use super::tree::Tree;

/// What the engine needs of a trace. Spans are numbered `0..span_count()`.
pub trait TraceView {
    fn span_count(&self) -> usize;

    /// The span's fields, intrinsics (including trace-level ones) and parent.
    fn span_view(&self, i: usize) -> &dyn SpanView;

    /// Nested-set numbers: a root has `parent == -1`; a child's `parent` is its parent's
    /// `left`.
    fn nested_set(&self, i: usize) -> NestedSet;

    fn start_unix_nano(&self, i: usize) -> u64;

    /// Keeps the spans of `spans` that meet `expr` and says true, when the view answers
    /// `expr` from its own storage faster than span by span through
    /// [`TraceView::span_view`]; false (the default) leaves `spans` as they were and the
    /// engine evaluates. The answer must be the engine's own.
    fn retain_matching(&self, expr: &FieldExpr, spans: &mut Vec<usize>) -> bool {
        let _ = (expr, spans);
        false
    }
}

/// One spanset that survived the query.
#[derive(Debug, Clone, PartialEq)]
pub struct SpansetMatch {
    /// Indices into the trace's spans, in start-time order.
    pub spans: Vec<usize>,
    /// Pipeline results as Tempo reports them in `spanSet.attributes`: `("count()", Int(3))`,
    /// `("avg(duration)", Duration(..))`, `("by(resource.service.name)", String(..))`.
    pub attributes: Vec<(String, Value)>,
    /// Per matched span (same order as `spans`): the fields the query references (conditions,
    /// `by`, aggregates, `select`) that the span has, named as Tempo names them in search
    /// results: the attribute name without its scope (`http.method`), intrinsics by their
    /// Tempo name (`status`, `kind`, `statusMessage`, `childCount`, `event:name`, ...).
    /// `name`, `duration` and trace-level intrinsics are left out (they have their own
    /// fields in a search result). Only the first `spss` from [`evaluate_view_spss`].
    pub span_attributes: Vec<Vec<(String, Value)>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    /// The API answers 400 and points at `/api/metrics/query_range`.
    #[error("metrics queries are not supported by search: use /api/metrics/query_range")]
    MetricsQuery,
    #[error(
        "spanset operators are not supported for multiple spansets per trace. consider using coalesce()"
    )]
    MultipleSpansets,
}

/// All spansets of this trace that satisfy the query; empty when the trace does not match.
pub fn evaluate(
    query: &Query,
    trace: &OtlpTrace<'_>,
) -> std::result::Result<Vec<SpansetMatch>, EvalError> {
    evaluate_view(query, trace)
}

/// [`evaluate`] over any [`TraceView`].
pub fn evaluate_view(
    query: &Query,
    trace: &dyn TraceView,
) -> std::result::Result<Vec<SpansetMatch>, EvalError> {
    evaluate_view_spss(query, trace, 0)
}

/// [`evaluate_view`], with `span_attributes` only for the first `spss` spans of each
/// spanset (0: all): search reports no more, and the fields of the rest cost allocations.
pub fn evaluate_view_spss(
    query: &Query,
    trace: &dyn TraceView,
    spss: usize,
) -> std::result::Result<Vec<SpansetMatch>, EvalError> {
    Prepared::new(query).evaluate(trace, spss)
}

/// A query with what the engine derives from it once rather than per trace (the fields
/// reported per span), for callers that evaluate it over many traces.
pub struct Prepared<'q> {
    query: &'q Query,
    fields: Vec<Field>,
}

impl<'q> Prepared<'q> {
    pub fn new(query: &'q Query) -> Self {
        Self {
            query,
            fields: reported_fields(query),
        }
    }

    /// [`evaluate_view_spss`] with the prepared query.
    pub fn evaluate(
        &self,
        trace: &dyn TraceView,
        spss: usize,
    ) -> std::result::Result<Vec<SpansetMatch>, EvalError> {
        let query = self.query;
        if query.is_metrics() {
            return Err(EvalError::MetricsQuery);
        }
        let engine = Engine::new(trace);
        let n = trace.span_count();
        let input = if n == 0 {
            Vec::new()
        } else {
            vec![Spanset {
                spans: (0..n).collect(),
                attributes: Vec::new(),
                ordered: false,
            }]
        };
        let output = engine.pipeline(&query.pipeline, input)?;
        Ok(output
            .into_iter()
            .filter(|ss| !ss.spans.is_empty())
            .map(|ss| {
                let ss = engine.ordered(ss);
                let keep = if spss == 0 { ss.spans.len() } else { spss };
                let span_attributes = ss
                    .spans
                    .iter()
                    .take(keep)
                    .map(|&i| span_fields(&self.fields, trace.span_view(i)))
                    .collect();
                SpansetMatch {
                    spans: ss.spans,
                    attributes: ss.attributes,
                    span_attributes,
                }
            })
            .collect())
    }
}

#[derive(Debug, Clone)]
struct Spanset {
    /// No duplicates; sorted by start time (then index) when `ordered`.
    spans: Vec<usize>,
    attributes: Vec<(String, Value)>,
    /// False while the spans are in stored order: a trace's spans, then what span filters
    /// and structural operators keep of them (neither depends on the order). A stage that
    /// does, and the output, sort them first ([`Engine::ordered`]), so a selective query
    /// sorts the few spans it keeps rather than every span of every trace.
    ordered: bool,
}

impl Spanset {
    /// `spans` in the order of `self`'s (a subset of them, in the same order).
    fn with_spans(&self, spans: Vec<usize>) -> Spanset {
        Spanset {
            spans,
            attributes: self.attributes.clone(),
            ordered: self.ordered,
        }
    }
}

fn set_attribute(attributes: &mut Vec<(String, Value)>, key: String, value: Value) {
    match attributes.iter_mut().find(|(k, _)| *k == key) {
        Some(slot) => slot.1 = value,
        None => attributes.push((key, value)),
    }
}

type Result<T> = std::result::Result<T, EvalError>;

struct Engine<'t> {
    trace: &'t dyn TraceView,
    /// Built on first use: only structural operators need the tree.
    tree: std::cell::OnceCell<Tree>,
}

impl<'t> Engine<'t> {
    fn new(trace: &'t dyn TraceView) -> Self {
        Engine {
            trace,
            tree: std::cell::OnceCell::new(),
        }
    }

    fn tree(&self) -> &Tree {
        self.tree.get_or_init(|| {
            let trace = self.trace;
            let sets: Vec<NestedSet> = (0..trace.span_count())
                .map(|i| trace.nested_set(i))
                .collect();
            Tree::new(&sets)
        })
    }

    /// Sorts `spans` by start time, then index, and drops duplicates.
    fn sort(&self, spans: &mut Vec<usize>) {
        // Keys read once: a comparator calling through the trait object costs n log n
        // virtual calls. (start, index) pairs of distinct spans are distinct, so an
        // unstable sort gives the same order as a stable one.
        let mut keyed: Vec<(u64, usize)> = spans
            .iter()
            .map(|&i| (self.trace.start_unix_nano(i), i))
            .collect();
        // Stored spans are often in start order already.
        if !keyed.is_sorted() {
            keyed.sort_unstable();
        }
        spans.clear();
        spans.extend(keyed.iter().map(|&(_, i)| i));
        spans.dedup();
    }

    /// `ss` with its spans in start order.
    fn ordered(&self, mut ss: Spanset) -> Spanset {
        if !ss.ordered {
            self.sort(&mut ss.spans);
            ss.ordered = true;
        }
        ss
    }

    fn pipeline(&self, pipeline: &Pipeline, mut input: Vec<Spanset>) -> Result<Vec<Spanset>> {
        for stage in &pipeline.stages {
            if input.is_empty() {
                break;
            }
            input = self.stage(stage, input)?;
        }
        Ok(input)
    }

    fn stage(&self, stage: &Stage, input: Vec<Spanset>) -> Result<Vec<Spanset>> {
        match stage {
            Stage::Spanset(expr) => self.spanset_expr(expr, input),
            Stage::ScalarFilter(filter) => {
                let mut output = Vec::new();
                for ss in input {
                    // Aggregates read the spans in start order (a float sum depends on it).
                    let mut ss = self.ordered(ss);
                    if self.scalar_filter(filter, &mut ss)? {
                        output.push(ss);
                    }
                }
                Ok(output)
            }
            Stage::GroupBy(field) => Ok(input
                .into_iter()
                .flat_map(|ss| self.group_by(field, self.ordered(ss)))
                .collect()),
            // The selected fields are reported with the spans at the end.
            Stage::Select(_) => Ok(input),
            Stage::Coalesce => {
                let mut spans: Vec<usize> = input.into_iter().flat_map(|ss| ss.spans).collect();
                if spans.is_empty() {
                    return Ok(Vec::new());
                }
                self.sort(&mut spans);
                Ok(vec![Spanset {
                    spans,
                    attributes: Vec::new(),
                    ordered: true,
                }])
            }
        }
    }

    fn spanset_expr(&self, expr: &SpansetExpr, input: Vec<Spanset>) -> Result<Vec<Spanset>> {
        match expr {
            SpansetExpr::Filter(filter) => Ok(input
                .into_iter()
                .filter_map(|ss| {
                    let mut spans = ss.spans.clone();
                    if let Some(e) = &filter.expr {
                        if !self.trace.retain_matching(e, &mut spans) {
                            spans.retain(|&i| matches(e, self.trace.span_view(i)));
                        }
                    }
                    (!spans.is_empty()).then(|| ss.with_spans(spans))
                })
                .collect()),
            SpansetExpr::Pipeline(pipeline) => self.pipeline(pipeline, input),
            SpansetExpr::Binary { op, lhs, rhs } => {
                let mut output = Vec::new();
                for ss in input {
                    let left = self.spanset_expr(lhs, vec![ss.clone()])?;
                    let right = self.spanset_expr(rhs, vec![ss.clone()])?;
                    let (spans, ordered) = match op {
                        SpansetOp::And if left.is_empty() || right.is_empty() => continue,
                        SpansetOp::And | SpansetOp::Or => {
                            let mut spans: Vec<usize> = left
                                .into_iter()
                                .chain(right)
                                .flat_map(|s| s.spans)
                                .collect();
                            self.sort(&mut spans);
                            (spans, true)
                        }
                        op => {
                            if left.len() > 1 || right.len() > 1 {
                                return Err(EvalError::MultipleSpansets);
                            }
                            let Some(right) = right.first() else {
                                continue;
                            };
                            let left = left.first().map(|s| s.spans.as_slice()).unwrap_or(&[]);
                            self.structural(*op, left, right)
                        }
                    };
                    if !spans.is_empty() {
                        output.push(Spanset {
                            ordered,
                            ..ss.with_spans(spans)
                        });
                    }
                }
                Ok(output)
            }
        }
    }

    /// The spans `lhs op rhs` returns, and whether they are in start order: `rhs`'s
    /// order for the plain forms (a subset of its spans), sorted for the union forms.
    fn structural(&self, op: SpansetOp, lhs: &[usize], right: &Spanset) -> (Vec<usize>, bool) {
        let rhs = &right.spans;
        use SpansetOp as O;
        let n = self.trace.span_count();
        let mask = |spans: &[usize]| {
            let mut m = vec![false; n];
            for &i in spans {
                m[i] = true;
            }
            m
        };
        // Per span: whether it stands in `op` to some span of `of` as a right-hand span does
        // to the left (`of` the left side), or, `reversed`, as a left-hand span to the right
        // (`of` the right side; union forms only).
        let related = |of: &[usize], reversed: bool| -> Vec<bool> {
            let set = mask(of);
            match (op, reversed) {
                (O::Child | O::NotChild | O::UnionChild, false)
                | (O::Parent | O::NotParent | O::UnionParent, true) => {
                    (0..n).map(|i| self.parent_in(i, &set)).collect()
                }
                (O::Child | O::NotChild | O::UnionChild, true)
                | (O::Parent | O::NotParent | O::UnionParent, false) => self.has_child_in(&set),
                (O::Descendant | O::NotDescendant | O::UnionDescendant, false)
                | (O::Ancestor | O::NotAncestor | O::UnionAncestor, true) => {
                    self.has_ancestor_in(&set)
                }
                (O::Descendant | O::NotDescendant | O::UnionDescendant, true)
                | (O::Ancestor | O::NotAncestor | O::UnionAncestor, false) => {
                    self.has_descendant_in(&set)
                }
                (O::Sibling | O::NotSibling | O::UnionSibling, _) => self.has_sibling_in(&set),
                (O::And | O::Or, _) => unreachable!("logical operators are handled by the caller"),
            }
        };
        let right_hit = related(lhs, false);
        let negated = matches!(
            op,
            O::NotChild | O::NotParent | O::NotDescendant | O::NotAncestor | O::NotSibling
        );
        let union = matches!(
            op,
            O::UnionChild
                | O::UnionParent
                | O::UnionDescendant
                | O::UnionAncestor
                | O::UnionSibling
        );
        let mut spans: Vec<usize> = rhs
            .iter()
            .copied()
            .filter(|&i| right_hit[i] != negated)
            .collect();
        if union {
            let left_hit = related(rhs, true);
            spans.extend(lhs.iter().copied().filter(|&i| left_hit[i]));
            self.sort(&mut spans);
            return (spans, true);
        }
        (spans, right.ordered)
    }

    fn parent_in(&self, i: usize, set: &[bool]) -> bool {
        self.tree().parent[i].is_some_and(|p| set[p])
    }

    fn has_child_in(&self, set: &[bool]) -> Vec<bool> {
        let parent = &self.tree().parent;
        let mut out = vec![false; set.len()];
        for (i, &member) in set.iter().enumerate() {
            if let (true, Some(p)) = (member, parent[i]) {
                out[p] = true;
            }
        }
        out
    }

    fn has_ancestor_in(&self, set: &[bool]) -> Vec<bool> {
        let tree = self.tree();
        let mut out = vec![false; set.len()];
        for &i in &tree.preorder {
            if let Some(p) = tree.parent[i] {
                out[i] = set[p] || out[p];
            }
        }
        out
    }

    fn has_descendant_in(&self, set: &[bool]) -> Vec<bool> {
        let tree = self.tree();
        let mut out = vec![false; set.len()];
        for &i in tree.preorder.iter().rev() {
            if let Some(p) = tree.parent[i] {
                out[p] = out[p] || set[i] || out[i];
            }
        }
        out
    }

    fn has_sibling_in(&self, set: &[bool]) -> Vec<bool> {
        let parent = &self.tree().parent;
        let mut members = vec![0usize; set.len()];
        for (i, &member) in set.iter().enumerate() {
            if let (true, Some(p)) = (member, parent[i]) {
                members[p] += 1;
            }
        }
        (0..set.len())
            .map(|i| parent[i].is_some_and(|p| members[p] > usize::from(set[i])))
            .collect()
    }

    fn group_by(&self, field: &FieldExpr, ss: Spanset) -> Vec<Spanset> {
        let key_name = format!("by({})", tempo_field(field));
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut groups: Vec<Spanset> = Vec::new();
        for &i in &ss.spans {
            let value = eval(field, self.trace.span_view(i));
            let key = format!("{value:?}");
            let slot = *index.entry(key).or_insert_with(|| {
                let mut attributes = ss.attributes.clone();
                let reported = value.clone().unwrap_or(Value::String("nil".into()));
                set_attribute(&mut attributes, key_name.clone(), reported);
                groups.push(Spanset {
                    spans: Vec::new(),
                    attributes,
                    ordered: ss.ordered,
                });
                groups.len() - 1
            });
            groups[slot].spans.push(i);
        }
        groups
    }

    fn scalar_filter(&self, filter: &ScalarFilter, ss: &mut Spanset) -> Result<bool> {
        let lhs = self.scalar(&filter.lhs, ss)?;
        let rhs = self.scalar(&filter.rhs, ss)?;
        Ok(match (lhs, rhs) {
            (Some(l), Some(r)) => compare_values(filter.op, l, r),
            _ => false,
        })
    }

    /// The value of a scalar expression over one spanset; aggregates are recorded in its
    /// attributes.
    fn scalar(&self, expr: &ScalarExpr, ss: &mut Spanset) -> Result<Option<Value>> {
        Ok(match expr {
            ScalarExpr::Static(value) => static_value(value),
            ScalarExpr::Aggregate(aggregate) => {
                let value = self.aggregate(aggregate, &ss.spans);
                if let Some(value) = &value {
                    set_attribute(
                        &mut ss.attributes,
                        tempo_aggregate(aggregate),
                        value.clone(),
                    );
                }
                value
            }
            ScalarExpr::Arith { op, lhs, rhs } => {
                let (Some(l), Some(r)) = (self.scalar(lhs, ss)?, self.scalar(rhs, ss)?) else {
                    return Ok(None);
                };
                let (Some(l), Some(r)) = (to_static(l), to_static(r)) else {
                    return Ok(None);
                };
                let expr = FieldExpr::Arith {
                    op: *op,
                    lhs: Box::new(FieldExpr::Static(l)),
                    rhs: Box::new(FieldExpr::Static(r)),
                };
                eval(&expr, &NoSpan)
            }
            // `({ .. } | by(x) | count())`: the aggregate over every span the inner pipeline
            // keeps from this spanset.
            ScalarExpr::Pipeline {
                pipeline,
                aggregate,
            } => {
                let inner = self.pipeline(pipeline, vec![ss.clone()])?;
                let mut spans: Vec<usize> = inner.into_iter().flat_map(|s| s.spans).collect();
                self.sort(&mut spans);
                self.aggregate(aggregate, &spans)
            }
        })
    }

    fn aggregate(&self, aggregate: &Aggregate, spans: &[usize]) -> Option<Value> {
        let values = |field: &FieldExpr| -> Vec<Value> {
            spans
                .iter()
                .filter_map(|&i| eval(field, self.trace.span_view(i)))
                .collect()
        };
        match aggregate {
            Aggregate::Count => Some(Value::Int(spans.len() as i64)),
            Aggregate::Sum(field) => sum(&values(field)).map(|(total, _)| total),
            Aggregate::Avg(field) => {
                let (total, count) = sum(&values(field))?;
                Some(match total {
                    Value::Duration(d) => Value::Duration((d as f64 / count as f64).round() as i64),
                    Value::Int(v) => Value::Float(v as f64 / count as f64),
                    Value::Float(v) => Value::Float(v / count as f64),
                    _ => return None,
                })
            }
            Aggregate::Min(field) => extreme(values(field), std::cmp::Ordering::Less),
            Aggregate::Max(field) => extreme(values(field), std::cmp::Ordering::Greater),
        }
    }
}

/// The sum of the numeric values and how many there were: ints stay ints, durations stay
/// durations, a float anywhere makes a float.
fn sum(values: &[Value]) -> Option<(Value, usize)> {
    let numeric: Vec<&Value> = values
        .iter()
        .filter(|v| matches!(v, Value::Int(_) | Value::Float(_) | Value::Duration(_)))
        .collect();
    if numeric.is_empty() {
        return None;
    }
    let count = numeric.len();
    if numeric.iter().any(|v| matches!(v, Value::Float(_))) {
        let total = numeric
            .iter()
            .map(|v| match v {
                Value::Int(x) | Value::Duration(x) => *x as f64,
                Value::Float(x) => *x,
                _ => 0.0,
            })
            .sum();
        return Some((Value::Float(total), count));
    }
    let total = numeric.iter().fold(0i64, |acc, v| match v {
        Value::Int(x) | Value::Duration(x) => acc.saturating_add(*x),
        _ => acc,
    });
    let duration = numeric.iter().any(|v| matches!(v, Value::Duration(_)));
    Some((
        if duration {
            Value::Duration(total)
        } else {
            Value::Int(total)
        },
        count,
    ))
}

/// The least (`Less`) or greatest (`Greater`) value; numbers compare with numbers, strings
/// with strings, values of another kind than the first are skipped.
fn extreme(values: Vec<Value>, want: std::cmp::Ordering) -> Option<Value> {
    let mut best: Option<Value> = None;
    for value in values {
        let better = match &best {
            None => matches!(
                value,
                Value::Int(_) | Value::Float(_) | Value::Duration(_) | Value::String(_)
            ),
            Some(current) => order(&value, current) == Some(want),
        };
        if better {
            best = Some(value);
        }
    }
    best
}

fn order(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    let number = |v: &Value| match v {
        Value::Int(x) | Value::Duration(x) => Some(*x as f64),
        Value::Float(x) => Some(*x),
        _ => None,
    };
    match (a, b) {
        (Value::Int(x) | Value::Duration(x), Value::Int(y) | Value::Duration(y)) => Some(x.cmp(y)),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => number(a)?.partial_cmp(&number(b)?),
    }
}

/// A span with no fields, for evaluating expressions over literals.
struct NoSpan;

impl SpanView for NoSpan {
    fn attribute(&self, _: Scope, _: &str) -> Option<Value> {
        None
    }

    fn intrinsic(&self, _: Intrinsic) -> Option<Value> {
        None
    }
}

fn compare_values(op: CompareOp, lhs: Value, rhs: Value) -> bool {
    let (Some(l), Some(r)) = (to_static(lhs), to_static(rhs)) else {
        return false;
    };
    let expr = FieldExpr::Compare {
        op,
        lhs: Box::new(FieldExpr::Static(l)),
        rhs: Box::new(FieldExpr::Static(r)),
    };
    eval(&expr, &NoSpan) == Some(Value::Bool(true))
}

fn to_static(value: Value) -> Option<Static> {
    Some(match value {
        Value::String(s) => Static::String(s),
        Value::Int(v) => Static::Int(v),
        Value::Float(v) => Static::Float(v),
        Value::Bool(v) => Static::Bool(v),
        Value::Duration(v) => Static::Duration(v),
        Value::Status(v) => Static::Status(v),
        Value::Kind(v) => Static::Kind(v),
        Value::Array(_) => return None,
    })
}

// ---------------------------------------------------------------------------------------------
// Tempo's names for fields and aggregates

/// How Tempo names an intrinsic in spanset and span attributes: the legacy unscoped names
/// for span intrinsics (`duration`, `status`), `rootServiceName` for `trace:rootService`.
pub fn tempo_intrinsic_name(intrinsic: Intrinsic) -> &'static str {
    use Intrinsic as I;
    match intrinsic {
        I::Duration => "duration",
        I::Name => "name",
        I::Status => "status",
        I::StatusMessage => "statusMessage",
        I::Kind => "kind",
        I::ChildCount => "childCount",
        I::SpanId => "span:id",
        I::ParentId => "span:parentID",
        I::TraceDuration => "traceDuration",
        I::TraceRootName => "rootName",
        I::TraceRootService => "rootServiceName",
        I::TraceId => "trace:id",
        I::EventName => "event:name",
        I::EventTimeSinceStart => "event:timeSinceStart",
        I::LinkTraceId => "link:traceID",
        I::LinkSpanId => "link:spanID",
        I::InstrumentationName => "instrumentation:name",
        I::InstrumentationVersion => "instrumentation:version",
        I::Parent => "parent",
        I::NestedSetLeft => "nestedSetLeft",
        I::NestedSetRight => "nestedSetRight",
        I::NestedSetParent => "nestedSetParent",
    }
}

fn tempo_attribute(attribute: &Attribute) -> String {
    let scope = match attribute.scope {
        Scope::Unscoped => "",
        Scope::Span => "span.",
        Scope::Resource => "resource.",
        Scope::Event => "event.",
        Scope::Link => "link.",
        Scope::Instrumentation => "instrumentation.",
    };
    match (attribute.parent, scope) {
        (true, scope) => format!("parent.{scope}{}", attribute.name),
        (false, "") => format!(".{}", attribute.name),
        (false, scope) => format!("{scope}{}", attribute.name),
    }
}

/// A field expression as Tempo prints it inside `by(...)` and aggregates.
pub fn tempo_field(expr: &FieldExpr) -> String {
    let mut out = String::new();
    write_field(&mut out, expr);
    out
}

fn write_field(out: &mut String, expr: &FieldExpr) {
    let wrapped = |out: &mut String, e: &FieldExpr| match e {
        FieldExpr::Static(_) | FieldExpr::Attribute(_) | FieldExpr::Intrinsic(_) => {
            write_field(out, e)
        }
        _ => {
            out.push('(');
            write_field(out, e);
            out.push(')');
        }
    };
    match expr {
        FieldExpr::Static(value) => {
            let _ = write!(out, "{value}");
        }
        FieldExpr::Attribute(attribute) => out.push_str(&tempo_attribute(attribute)),
        FieldExpr::Intrinsic(intrinsic) => out.push_str(tempo_intrinsic_name(*intrinsic)),
        FieldExpr::Logic { op, lhs, rhs } => {
            wrapped(out, lhs);
            out.push_str(match op {
                LogicOp::And => " && ",
                LogicOp::Or => " || ",
            });
            wrapped(out, rhs);
        }
        FieldExpr::Compare { op, lhs, rhs } => {
            wrapped(out, lhs);
            let _ = write!(out, " {} ", op.symbol());
            wrapped(out, rhs);
        }
        FieldExpr::Arith { op, lhs, rhs } => {
            wrapped(out, lhs);
            let _ = write!(out, " {} ", op.symbol());
            wrapped(out, rhs);
        }
        FieldExpr::Regex {
            lhs,
            negated,
            pattern,
        } => {
            wrapped(out, lhs);
            out.push_str(if *negated { " !~ " } else { " =~ " });
            let _ = write!(out, "{}", Static::String(pattern.source.clone()));
        }
        FieldExpr::Not(inner) => {
            out.push('!');
            wrapped(out, inner);
        }
        FieldExpr::Neg(inner) => {
            out.push('-');
            wrapped(out, inner);
        }
    }
}

/// `count()`, `avg(duration)`, `sum(span.bytes)`.
pub fn tempo_aggregate(aggregate: &Aggregate) -> String {
    match aggregate {
        Aggregate::Count => "count()".to_owned(),
        Aggregate::Avg(f) => format!("avg({})", tempo_field(f)),
        Aggregate::Min(f) => format!("min({})", tempo_field(f)),
        Aggregate::Max(f) => format!("max({})", tempo_field(f)),
        Aggregate::Sum(f) => format!("sum({})", tempo_field(f)),
    }
}

// ---------------------------------------------------------------------------------------------
// Fields reported with each span

#[derive(Debug, Clone, PartialEq)]
enum Field {
    Attribute(Scope, String),
    Intrinsic(Intrinsic),
}

/// Every field the query reads, in order of first appearance, that a search result reports
/// per span.
fn reported_fields(query: &Query) -> Vec<Field> {
    let mut fields = Vec::new();
    collect_pipeline(&query.pipeline, &mut fields);
    fields
}

fn collect_pipeline(pipeline: &Pipeline, out: &mut Vec<Field>) {
    for stage in &pipeline.stages {
        match stage {
            Stage::Spanset(expr) => collect_spanset(expr, out),
            Stage::ScalarFilter(filter) => {
                collect_scalar(&filter.lhs, out);
                collect_scalar(&filter.rhs, out);
            }
            Stage::GroupBy(field) => collect_field(field, out),
            Stage::Select(fields) => fields.iter().for_each(|f| collect_field(f, out)),
            Stage::Coalesce => {}
        }
    }
}

fn collect_spanset(expr: &SpansetExpr, out: &mut Vec<Field>) {
    match expr {
        SpansetExpr::Filter(filter) => {
            if let Some(expr) = &filter.expr {
                collect_field(expr, out);
            }
        }
        SpansetExpr::Binary { lhs, rhs, .. } => {
            collect_spanset(lhs, out);
            collect_spanset(rhs, out);
        }
        SpansetExpr::Pipeline(pipeline) => collect_pipeline(pipeline, out),
    }
}

fn collect_scalar(expr: &ScalarExpr, out: &mut Vec<Field>) {
    let aggregate_field = |aggregate: &Aggregate, out: &mut Vec<Field>| match aggregate {
        Aggregate::Count => {}
        Aggregate::Avg(f) | Aggregate::Min(f) | Aggregate::Max(f) | Aggregate::Sum(f) => {
            collect_field(f, out)
        }
    };
    match expr {
        ScalarExpr::Static(_) => {}
        ScalarExpr::Aggregate(aggregate) => aggregate_field(aggregate, out),
        ScalarExpr::Arith { lhs, rhs, .. } => {
            collect_scalar(lhs, out);
            collect_scalar(rhs, out);
        }
        ScalarExpr::Pipeline {
            pipeline,
            aggregate,
        } => {
            collect_pipeline(pipeline, out);
            aggregate_field(aggregate, out);
        }
    }
}

fn collect_field(expr: &FieldExpr, out: &mut Vec<Field>) {
    let field = match expr {
        FieldExpr::Static(_) => return,
        // The parent's attributes belong to another span.
        FieldExpr::Attribute(attribute) if attribute.parent => return,
        FieldExpr::Attribute(attribute) => {
            Field::Attribute(attribute.scope, attribute.name.clone())
        }
        FieldExpr::Intrinsic(intrinsic) => {
            use Intrinsic as I;
            match intrinsic {
                // Reported in their own fields of a search result, or internal.
                I::Name
                | I::Duration
                | I::SpanId
                | I::TraceDuration
                | I::TraceRootName
                | I::TraceRootService
                | I::TraceId
                | I::Parent
                | I::NestedSetLeft
                | I::NestedSetRight
                | I::NestedSetParent => return,
                other => Field::Intrinsic(*other),
            }
        }
        FieldExpr::Logic { lhs, rhs, .. }
        | FieldExpr::Compare { lhs, rhs, .. }
        | FieldExpr::Arith { lhs, rhs, .. } => {
            collect_field(lhs, out);
            collect_field(rhs, out);
            return;
        }
        FieldExpr::Regex { lhs, .. } | FieldExpr::Not(lhs) | FieldExpr::Neg(lhs) => {
            collect_field(lhs, out);
            return;
        }
    };
    if !out.contains(&field) {
        out.push(field);
    }
}

fn span_fields(fields: &[Field], span: &dyn SpanView) -> Vec<(String, Value)> {
    fields
        .iter()
        .filter_map(|field| match field {
            Field::Attribute(scope, name) => {
                let value = match scope {
                    Scope::Unscoped => span
                        .attribute(Scope::Span, name)
                        .or_else(|| span.attribute(Scope::Resource, name)),
                    scope => span.attribute(*scope, name),
                };
                Some((name.clone(), value?))
            }
            Field::Intrinsic(intrinsic) => Some((
                tempo_intrinsic_name(*intrinsic).to_owned(),
                span.intrinsic(*intrinsic)?,
            )),
        })
        .collect()
}
