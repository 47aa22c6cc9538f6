//! Span conditions answered straight from one decoded column by span index: `status = error`
//! or `duration > 500ms` read an `i32` or a `u64` per span, where the engine's generic
//! evaluation builds a span view, a `Value` and a comparison for each. Anything else is
//! left to the engine (`Direct::new` says `None`), so the answers are the engine's own.

use arrow_array::{Array, Int32Array, StructArray, UInt64Array};

use super::columns::ColumnarBlock;
use super::prune::intrinsic_compare;
use super::view::nanos;
use crate::traceql::{CompareOp, FieldExpr, Intrinsic, LogicOp, Static, Status};

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
