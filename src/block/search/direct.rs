//! Span conditions answered straight from one decoded column by span index: `status = error`
//! or `duration > 500ms` read an `i32` or a `u64` per span, where the engine's generic
//! evaluation builds a span view, a `Value` and a comparison for each. Anything else is
//! left to the engine (`Direct::new` says `None`), so the answers are the engine's own.
//! [`SpanFilter`] does the same for the engine's own span filters, and also answers a
//! dedicated resource string compared with a literal from the span's resource.

use arrow_array::{Array, Int32Array, StringArray, StructArray, UInt64Array};

use super::columns::{ColumnarBlock, DedCol};
use super::prune::intrinsic_compare;
use super::view::nanos;
use crate::traceql::{CompareOp, FieldExpr, Intrinsic, LogicOp, Scope, Static, Status};

/// A condition over the spans of one decoded row group, by row-group-wide span index.
pub(super) enum Direct<'a> {
    /// The status class (`Some(1)` ok, `Some(2)` error, anything else unset) is, or is not,
    /// `class`.
    Status {
        status: &'a StructArray,
        code: &'a Int32Array,
        class: Status,
        eq: bool,
    },
    /// `duration op x`, the duration as the engine computes it from the span's start.
    Duration {
        start: &'a UInt64Array,
        duration: &'a UInt64Array,
        op: CompareOp,
        x: i64,
    },
    And(Box<Direct<'a>>, Box<Direct<'a>>),
    Or(Box<Direct<'a>>, Box<Direct<'a>>),
}

impl<'a> Direct<'a> {
    /// The direct form of `e` over `c`'s columns; `None` when some part of it is not a
    /// status or duration comparison with a literal, or its column was not decoded.
    pub(super) fn new(e: &FieldExpr, c: &ColumnarBlock<'a>) -> Option<Self> {
        match e {
            FieldExpr::Logic { op, lhs, rhs } => {
                let (l, r) = (Self::new(lhs, c)?, Self::new(rhs, c)?);
                Some(match op {
                    LogicOp::And => Self::And(Box::new(l), Box::new(r)),
                    LogicOp::Or => Self::Or(Box::new(l), Box::new(r)),
                })
            }
            FieldExpr::Compare { op, lhs, rhs } => {
                let (op, intrinsic, literal) = intrinsic_compare(*op, lhs, rhs)?;
                match (intrinsic, literal) {
                    (Intrinsic::Status, Static::Status(class)) => {
                        let (status, code, _) = c.status?;
                        // Statuses have no order: the engine answers false to `<` and the
                        // like, which the generic path keeps doing.
                        let eq = match op {
                            CompareOp::Eq => true,
                            CompareOp::Neq => false,
                            _ => return None,
                        };
                        Some(Self::Status {
                            status,
                            code,
                            class: *class,
                            eq,
                        })
                    }
                    (Intrinsic::Duration, Static::Duration(x)) => Some(Self::Duration {
                        start: c.span_start,
                        duration: c.duration?,
                        op,
                        x: *x,
                    }),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// Whether span `g` meets the condition. `g` must index the span columns (it comes
    /// from offsets checked against them).
    pub(super) fn holds(&self, g: usize) -> bool {
        match self {
            Self::Status {
                status,
                code,
                class,
                eq,
            } => {
                let of = match status.is_valid(g).then(|| code.value(g)) {
                    Some(1) => Status::Ok,
                    Some(2) => Status::Error,
                    _ => Status::Unset,
                };
                (of == *class) == *eq
            }
            Self::Duration {
                start,
                duration,
                op,
                x,
            } => {
                let start = start.value(g);
                let d = nanos(start.wrapping_add(duration.value(g)).saturating_sub(start));
                let ordering = d.cmp(x);
                match op {
                    CompareOp::Eq => ordering.is_eq(),
                    CompareOp::Neq => ordering.is_ne(),
                    CompareOp::Lt => ordering.is_lt(),
                    CompareOp::Lte => ordering.is_le(),
                    CompareOp::Gt => ordering.is_gt(),
                    CompareOp::Gte => ordering.is_ge(),
                }
            }
            Self::And(l, r) => l.holds(g) && r.holds(g),
            Self::Or(l, r) => l.holds(g) || r.holds(g),
        }
    }
}

/// One of the engine's span filters over a loaded trace (see
/// `TraceView::retain_matching`), answered from the columns.
pub(super) enum SpanFilter<'a> {
    /// Every span answered by its index.
    Direct(Direct<'a>),
    /// `resource.<key> = "literal"` (or `!=`) where `key` has a dedicated string column:
    /// answered from the span's resource where the column holds a value. Elsewhere the
    /// engine says (it reads the generic attributes).
    Resource {
        res: Option<&'a StructArray>,
        col: &'a StringArray,
        literal: String,
        eq: bool,
    },
}

impl<'a> SpanFilter<'a> {
    /// `None` when the engine must evaluate `e` span by span.
    pub(super) fn new(e: &FieldExpr, c: &ColumnarBlock<'a>) -> Option<Self> {
        if let Some(d) = Direct::new(e, c) {
            return Some(Self::Direct(d));
        }
        let FieldExpr::Compare { op, lhs, rhs } = e else {
            return None;
        };
        let (attr, literal) = match (&**lhs, &**rhs) {
            (FieldExpr::Attribute(a), FieldExpr::Static(Static::String(s)))
            | (FieldExpr::Static(Static::String(s)), FieldExpr::Attribute(a)) => (a, s),
            _ => return None,
        };
        let eq = match op {
            CompareOp::Eq => true,
            CompareOp::Neq => false,
            _ => return None,
        };
        if attr.scope != Scope::Resource || attr.parent {
            return None;
        }
        let col = c.res_ded.iter().find_map(|(key, col)| match col {
            DedCol::Str(a) if *key == attr.name => Some(*a),
            _ => None,
        })?;
        Some(Self::Resource {
            res: c.res,
            col,
            literal: literal.clone(),
            eq,
        })
    }

    /// Whether span `g`, of resource `r`, meets the filter; `None` when the engine must
    /// say. Both must index the columns (they come from checked offsets).
    pub(super) fn holds(&self, g: usize, r: usize) -> Option<bool> {
        match self {
            Self::Direct(d) => Some(d.holds(g)),
            Self::Resource {
                res,
                col,
                literal,
                eq,
            } => {
                // A span without a resource has no resource attribute: false either way.
                if !res.is_some_and(|a| a.is_valid(r)) {
                    return Some(false);
                }
                col.is_valid(r)
                    .then(|| (col.value(r) == literal.as_str()) == *eq)
            }
        }
    }
}
