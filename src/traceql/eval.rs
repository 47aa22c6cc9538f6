//! Evaluates one spanset filter's field expression against one span. It knows no storage:
//! whoever holds spans implements [`SpanView`].
//!
//! Semantics follow Tempo: a comparison with a missing attribute is false (even `!=`),
//! `= nil` / `!= nil` test presence, ints and floats compare by value, regexes are fully
//! anchored, and arrays (3.0) match `=`/`=~` when any element does, `!=` when no element is
//! equal, `!~` when no element matches.

use std::cmp::Ordering;

use super::ast::{
    ArithOp, CompareOp, FieldExpr, Intrinsic, LogicOp, Scope, SpanKind, SpansetFilter, Static,
    Status,
};

/// A typed value read from a span.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    String(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// Nanoseconds.
    Duration(i64),
    Status(Status),
    Kind(SpanKind),
    Array(Vec<Value>),
}

/// A value read from a span for a comparison: strings borrowed from the span where it can,
/// so filtering allocates nothing per span.
#[derive(Debug)]
pub enum ValueRef<'a> {
    Str(&'a str),
    Owned(Value),
}

/// What the evaluator may ask of a span.
pub trait SpanView {
    /// The attribute `name` in `scope`; never called with [`Scope::Unscoped`]. Event and link
    /// scopes may answer with an array of the values across the span's events or links, which
    /// gives any-match semantics.
    fn attribute(&self, scope: Scope, name: &str) -> Option<Value>;

    /// [`SpanView::attribute`], with a string value borrowed when the span holds one.
    fn attribute_ref(&self, scope: Scope, name: &str) -> Option<ValueRef<'_>> {
        self.attribute(scope, name).map(ValueRef::Owned)
    }

    /// An intrinsic. For [`Intrinsic::Parent`], any value means "has a parent".
    fn intrinsic(&self, intrinsic: Intrinsic) -> Option<Value>;

    /// The parent span, for `parent.` attributes.
    fn parent(&self) -> Option<&dyn SpanView> {
        None
    }

    /// Every resource and span attribute of the span (`compare()` groups by each). Views
    /// that cannot list them report none.
    fn each_attribute(&self, f: &mut dyn FnMut(Scope, &str, Value)) {
        let _ = f;
    }
}

impl SpansetFilter {
    /// `{}` matches every span.
    pub fn matches(&self, span: &dyn SpanView) -> bool {
        self.expr.as_ref().is_none_or(|expr| matches(expr, span))
    }
}

/// True when the filter expression yields boolean true for this span.
pub fn matches(filter: &FieldExpr, span: &dyn SpanView) -> bool {
    // Conditions and their conjunctions answer a bool directly: no value is built, compared
    // and dropped for every span a filter reads.
    match filter {
        FieldExpr::Compare { op, lhs, rhs } => eval_compare(*op, lhs, rhs, span),
        FieldExpr::Logic { op, lhs, rhs } => match op {
            LogicOp::And => matches(lhs, span) && matches(rhs, span),
            LogicOp::Or => matches(lhs, span) || matches(rhs, span),
        },
        other => eval(other, span) == Some(Value::Bool(true)),
    }
}

/// The value of an expression; `None` stands for a missing attribute or `nil`.
pub fn eval(expr: &FieldExpr, span: &dyn SpanView) -> Option<Value> {
    match expr {
        FieldExpr::Static(value) => static_value(value),
        FieldExpr::Attribute(attribute) => {
            let view = if attribute.parent {
                span.parent()?
            } else {
                span
            };
            lookup(view, attribute.scope, &attribute.name)
        }
        FieldExpr::Intrinsic(intrinsic) => span.intrinsic(*intrinsic),
        FieldExpr::Logic { op, lhs, rhs } => {
            let truth = |e: &FieldExpr| matches(e, span);
            let result = match op {
                LogicOp::And => truth(lhs) && truth(rhs),
                LogicOp::Or => truth(lhs) || truth(rhs),
            };
            Some(Value::Bool(result))
        }
        FieldExpr::Compare { op, lhs, rhs } => Some(Value::Bool(eval_compare(*op, lhs, rhs, span))),
        FieldExpr::Regex {
            lhs,
            negated,
            pattern,
        } => {
            let found = |s: &str| pattern.regex.is_match(s);
            let value = match attribute_ref(lhs, span) {
                Some(Some(ValueRef::Str(s))) => return Some(Value::Bool(found(s) != *negated)),
                Some(Some(ValueRef::Owned(v))) => Some(v),
                Some(None) => None,
                None => eval(lhs, span),
            };
            let result = match value {
                Some(Value::String(s)) => found(&s) != *negated,
                Some(Value::Array(items)) => {
                    let any = items
                        .iter()
                        .any(|item| matches!(item, Value::String(s) if found(s)));
                    any != *negated
                }
                _ => false,
            };
            Some(Value::Bool(result))
        }
        FieldExpr::Arith { op, lhs, rhs } => arith(*op, eval(lhs, span)?, eval(rhs, span)?),
        FieldExpr::Not(inner) => match eval(inner, span)? {
            Value::Bool(b) => Some(Value::Bool(!b)),
            _ => None,
        },
        FieldExpr::Neg(inner) => match eval(inner, span)? {
            Value::Int(v) => v.checked_neg().map(Value::Int),
            Value::Duration(v) => v.checked_neg().map(Value::Duration),
            Value::Float(v) => Some(Value::Float(-v)),
            _ => None,
        },
    }
}

/// The attribute an attribute expression reads, strings borrowed: `None` when `expr` is
/// not an attribute, `Some(None)` when the span lacks it.
fn attribute_ref<'s>(expr: &FieldExpr, span: &'s dyn SpanView) -> Option<Option<ValueRef<'s>>> {
    let FieldExpr::Attribute(attribute) = expr else {
        return None;
    };
    let view = if attribute.parent {
        match span.parent() {
            Some(p) => p,
            None => return Some(None),
        }
    } else {
        span
    };
    Some(match attribute.scope {
        Scope::Unscoped => view
            .attribute_ref(Scope::Span, &attribute.name)
            .or_else(|| view.attribute_ref(Scope::Resource, &attribute.name)),
        scope => view.attribute_ref(scope, &attribute.name),
    })
}

/// Unscoped `.x` looks at the span first, then its resource.
fn lookup(span: &dyn SpanView, scope: Scope, name: &str) -> Option<Value> {
    match scope {
        Scope::Unscoped => span
            .attribute(Scope::Span, name)
            .or_else(|| span.attribute(Scope::Resource, name)),
        scope => span.attribute(scope, name),
    }
}

/// A literal as a value; `nil` has none.
pub(super) fn static_value(value: &Static) -> Option<Value> {
    Some(match value {
        Static::String(s) => Value::String(s.clone()),
        Static::Int(v) => Value::Int(*v),
        Static::Float(v) => Value::Float(*v),
        Static::Bool(v) => Value::Bool(*v),
        Static::Duration(v) => Value::Duration(*v),
        Static::Status(v) => Value::Status(*v),
        Static::Kind(v) => Value::Kind(*v),
        Static::Nil => return None,
    })
}

fn eval_compare(op: CompareOp, lhs: &FieldExpr, rhs: &FieldExpr, span: &dyn SpanView) -> bool {
    let is_nil = |e: &FieldExpr| matches!(e, FieldExpr::Static(Static::Nil));
    if is_nil(lhs) || is_nil(rhs) {
        let other = if is_nil(lhs) { rhs } else { lhs };
        let present = eval(other, span).is_some();
        return match op {
            CompareOp::Eq => !present,
            CompareOp::Neq => present,
            _ => false,
        };
    }
    // An attribute against a literal, the common filter: no string is copied.
    match (lhs, rhs) {
        (FieldExpr::Static(st), other) | (other, FieldExpr::Static(st)) => {
            if let Some(found) = attribute_ref(other, span) {
                let literal_left = matches!(lhs, FieldExpr::Static(_));
                return match found {
                    None => false,
                    Some(ValueRef::Str(a)) => match st {
                        Static::String(b) => {
                            let ordering = if literal_left {
                                b.as_str().cmp(a)
                            } else {
                                a.cmp(b)
                            };
                            ordering_holds(op, ordering)
                        }
                        // A string never compares with another type, not even with `!=`.
                        _ => false,
                    },
                    Some(ValueRef::Owned(a)) => compare_static(op, &a, st, literal_left),
                };
            }
            if let FieldExpr::Intrinsic(i) = other {
                let literal_left = matches!(lhs, FieldExpr::Static(_));
                return match span.intrinsic(*i) {
                    Some(a) => compare_static(op, &a, st, literal_left),
                    None => false,
                };
            }
        }
        _ => {}
    }
    match (eval(lhs, span), eval(rhs, span)) {
        (Some(l), Some(r)) => compare(op, &l, &r),
        _ => false,
    }
}

/// `value op literal`, or `literal op value` when `literal_left`; a string literal is
/// compared in place, not copied into a [`Value`].
fn compare_static(op: CompareOp, value: &Value, literal: &Static, literal_left: bool) -> bool {
    if let (Value::String(a), Static::String(b)) = (value, literal) {
        let ordering = if literal_left {
            b.as_str().cmp(a)
        } else {
            a.as_str().cmp(b)
        };
        return ordering_holds(op, ordering);
    }
    match static_value(literal) {
        Some(b) if literal_left => compare(op, &b, value),
        Some(b) => compare(op, value, &b),
        None => false,
    }
}

fn ordering_holds(op: CompareOp, ordering: Ordering) -> bool {
    match op {
        CompareOp::Eq => ordering == Ordering::Equal,
        CompareOp::Neq => ordering != Ordering::Equal,
        CompareOp::Lt => ordering == Ordering::Less,
        CompareOp::Lte => ordering != Ordering::Greater,
        CompareOp::Gt => ordering == Ordering::Greater,
        CompareOp::Gte => ordering != Ordering::Less,
    }
}

fn compare(op: CompareOp, lhs: &Value, rhs: &Value) -> bool {
    match (lhs, rhs) {
        (Value::Array(_), Value::Array(_)) => match op {
            CompareOp::Eq => lhs == rhs,
            CompareOp::Neq => lhs != rhs,
            _ => false,
        },
        (Value::Array(items), scalar) => match op {
            // 3.0: `!=` is NOT IN, every other operator is "any element".
            CompareOp::Neq => !items
                .iter()
                .any(|item| compare(CompareOp::Eq, item, scalar)),
            _ => items.iter().any(|item| compare(op, item, scalar)),
        },
        (_, Value::Array(_)) => compare(mirror(op), rhs, lhs),
        _ => compare_scalars(op, lhs, rhs),
    }
}

/// The operator that gives the same answer with its operands swapped.
fn mirror(op: CompareOp) -> CompareOp {
    match op {
        CompareOp::Lt => CompareOp::Gt,
        CompareOp::Lte => CompareOp::Gte,
        CompareOp::Gt => CompareOp::Lt,
        CompareOp::Gte => CompareOp::Lte,
        other => other,
    }
}

fn compare_scalars(op: CompareOp, lhs: &Value, rhs: &Value) -> bool {
    let ordering = match (lhs, rhs) {
        (Value::String(l), Value::String(r)) => Some(l.cmp(r)),
        (Value::Bool(_), Value::Bool(_))
        | (Value::Status(_), Value::Status(_))
        | (Value::Kind(_), Value::Kind(_)) => {
            // Equality only: these have no order.
            return match op {
                CompareOp::Eq => lhs == rhs,
                CompareOp::Neq => lhs != rhs,
                _ => false,
            };
        }
        _ => numeric_ordering(lhs, rhs),
    };
    // Different types never compare, not even with `!=`.
    let Some(ordering) = ordering else {
        return false;
    };
    ordering_holds(op, ordering)
}

/// Ints and durations compare exactly; a float on either side compares as f64.
fn numeric_ordering(lhs: &Value, rhs: &Value) -> Option<Ordering> {
    match (as_int(lhs), as_int(rhs)) {
        (Some(l), Some(r)) => Some(l.cmp(&r)),
        _ => as_float(lhs)?.partial_cmp(&as_float(rhs)?),
    }
}

fn as_int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(v) | Value::Duration(v) => Some(*v),
        _ => None,
    }
}

fn as_float(value: &Value) -> Option<f64> {
    match value {
        Value::Float(v) => Some(*v),
        other => as_int(other).map(|v| v as f64),
    }
}

fn arith(op: ArithOp, lhs: Value, rhs: Value) -> Option<Value> {
    if let (Some(l), Some(r)) = (as_int(&lhs), as_int(&rhs)) {
        let duration = matches!(lhs, Value::Duration(_)) || matches!(rhs, Value::Duration(_));
        let result = match op {
            ArithOp::Add => l.checked_add(r),
            ArithOp::Sub => l.checked_sub(r),
            ArithOp::Mul => l.checked_mul(r),
            ArithOp::Div => l.checked_div(r),
            ArithOp::Mod => l.checked_rem(r),
            ArithOp::Pow => match u32::try_from(r) {
                Ok(exponent) => l.checked_pow(exponent),
                // A negative exponent gives a fraction: fall through to floats.
                Err(_) => return Some(Value::Float((l as f64).powf(r as f64))),
            },
        }?;
        return Some(if duration {
            Value::Duration(result)
        } else {
            Value::Int(result)
        });
    }
    let (l, r) = (as_float(&lhs)?, as_float(&rhs)?);
    Some(Value::Float(match op {
        ArithOp::Add => l + r,
        ArithOp::Sub => l - r,
        ArithOp::Mul => l * r,
        ArithOp::Div => l / r,
        ArithOp::Mod => l % r,
        ArithOp::Pow => l.powf(r),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traceql::engine::TraceView;
    use crate::traceql::engine_tests::{cases, dataset};
    use crate::traceql::{parse, OtlpTrace, SpansetExpr, Stage};

    fn collect(e: &SpansetExpr, out: &mut Vec<FieldExpr>) {
        match e {
            SpansetExpr::Filter(f) => out.extend(f.expr.clone()),
            SpansetExpr::Binary { lhs, rhs, .. } => {
                collect(lhs, out);
                collect(rhs, out);
            }
            SpansetExpr::Pipeline(p) => {
                for stage in &p.stages {
                    if let Stage::Spanset(e) = stage {
                        collect(e, out);
                    }
                }
            }
        }
    }

    /// `matches` answers conditions without building values; it must agree with `eval`
    /// on every filter of the engine cases and every span of their traces.
    #[test]
    fn matches_agrees_with_eval_on_every_case_filter() {
        let data = dataset();
        let mut filters = Vec::new();
        for (query, _) in cases() {
            let Ok(parsed) = parse(query) else { continue };
            for stage in &parsed.pipeline.stages {
                if let Stage::Spanset(e) = stage {
                    collect(e, &mut filters);
                }
            }
        }
        assert!(filters.len() > 100, "{} filters", filters.len());
        let (mut checked, mut matched) = (0, 0);
        for (_, batches) in &data {
            let trace = OtlpTrace::new(batches);
            for i in 0..trace.span_count() {
                let span = trace.span_view(i);
                for f in &filters {
                    let want = eval(f, span) == Some(Value::Bool(true));
                    assert_eq!(matches(f, span), want, "{f:?} on span {i}");
                    checked += 1;
                    matched += usize::from(want);
                }
            }
        }
        assert!(matched > 0 && matched < checked, "{matched} of {checked}");
    }
}
