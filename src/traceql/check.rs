//! The static type checks Tempo makes while parsing: operands of an operator must have
//! compatible types, filters must be boolean, `nil` only meets `=` and `!=`.
//!
//! Attributes have no type until a span is seen, so they are compatible with everything.

use super::ast::{CompareOp, FieldExpr, Intrinsic, Static};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Type {
    /// An attribute (or `parent`): known only at run time.
    Unknown,
    String,
    Int,
    Float,
    Duration,
    Bool,
    Status,
    Kind,
    Nil,
}

impl Type {
    fn name(self) -> &'static str {
        match self {
            Type::Unknown => "attribute",
            Type::String => "string",
            Type::Int => "int",
            Type::Float => "float",
            Type::Duration => "duration",
            Type::Bool => "boolean",
            Type::Status => "status",
            Type::Kind => "kind",
            Type::Nil => "nil",
        }
    }

    fn is_numeric(self) -> bool {
        matches!(self, Type::Int | Type::Float | Type::Duration)
    }

    fn allows_numeric(self) -> bool {
        self == Type::Unknown || self.is_numeric()
    }

    fn allows_bool(self) -> bool {
        matches!(self, Type::Unknown | Type::Bool)
    }

    /// Ints, floats and durations compare with each other (durations are nanoseconds).
    fn matches(self, other: Type) -> bool {
        self == other
            || self == Type::Unknown
            || other == Type::Unknown
            || (self.is_numeric() && other.is_numeric())
    }
}

pub(crate) fn static_type(value: &Static) -> Type {
    match value {
        Static::String(_) => Type::String,
        Static::Int(_) => Type::Int,
        Static::Float(_) => Type::Float,
        Static::Bool(_) => Type::Bool,
        Static::Duration(_) => Type::Duration,
        Static::Status(_) => Type::Status,
        Static::Kind(_) => Type::Kind,
        Static::Nil => Type::Nil,
    }
}

pub(crate) fn intrinsic_type(intrinsic: Intrinsic) -> Type {
    use Intrinsic as I;
    match intrinsic {
        I::Duration | I::TraceDuration | I::EventTimeSinceStart => Type::Duration,
        I::Status => Type::Status,
        I::Kind => Type::Kind,
        I::ChildCount | I::NestedSetLeft | I::NestedSetRight | I::NestedSetParent => Type::Int,
        I::Parent => Type::Unknown,
        I::Name
        | I::StatusMessage
        | I::SpanId
        | I::ParentId
        | I::TraceRootName
        | I::TraceRootService
        | I::TraceId
        | I::EventName
        | I::LinkTraceId
        | I::LinkSpanId
        | I::InstrumentationName
        | I::InstrumentationVersion => Type::String,
    }
}

/// The type an expression yields. Children are already checked when their parent is built.
pub(crate) fn type_of(expr: &FieldExpr) -> Type {
    match expr {
        FieldExpr::Static(value) => static_type(value),
        FieldExpr::Attribute(_) => Type::Unknown,
        FieldExpr::Intrinsic(intrinsic) => intrinsic_type(*intrinsic),
        FieldExpr::Logic { .. }
        | FieldExpr::Compare { .. }
        | FieldExpr::Regex { .. }
        | FieldExpr::Not(_) => Type::Bool,
        FieldExpr::Neg(inner) => type_of(inner),
        FieldExpr::Arith { lhs, rhs, .. } => arith_type(type_of(lhs), type_of(rhs)),
    }
}

fn arith_type(lhs: Type, rhs: Type) -> Type {
    let either = |t: Type| lhs == t || rhs == t;
    if either(Type::Unknown) {
        Type::Unknown
    } else if either(Type::Float) {
        Type::Float
    } else if either(Type::Duration) {
        Type::Duration
    } else {
        Type::Int
    }
}

/// Checks a freshly built node; the error text goes after "at line:col".
pub(crate) fn check(expr: &FieldExpr) -> Result<(), String> {
    match expr {
        FieldExpr::Logic { lhs, rhs, .. } => {
            let (l, r) = (type_of(lhs), type_of(rhs));
            if l.allows_bool() && r.allows_bool() {
                Ok(())
            } else {
                Err(format!(
                    "logical operators need boolean operands, found {} and {}",
                    l.name(),
                    r.name()
                ))
            }
        }
        FieldExpr::Compare { op, lhs, rhs } => check_compare(*op, type_of(lhs), type_of(rhs)),
        FieldExpr::Regex { lhs, .. } => match type_of(lhs) {
            Type::Unknown | Type::String => Ok(()),
            other => Err(format!(
                "regex needs a string operand, found {}",
                other.name()
            )),
        },
        FieldExpr::Arith { lhs, rhs, .. } => {
            let (l, r) = (type_of(lhs), type_of(rhs));
            if l.allows_numeric() && r.allows_numeric() {
                Ok(())
            } else {
                Err(format!(
                    "arithmetic needs numeric operands, found {} and {}",
                    l.name(),
                    r.name()
                ))
            }
        }
        FieldExpr::Not(inner) => match type_of(inner) {
            t if t.allows_bool() => Ok(()),
            other => Err(format!(
                "'!' needs a boolean operand, found {}",
                other.name()
            )),
        },
        FieldExpr::Neg(inner) => match type_of(inner) {
            t if t.allows_numeric() => Ok(()),
            other => Err(format!(
                "'-' needs a numeric operand, found {}",
                other.name()
            )),
        },
        _ => Ok(()),
    }
}

fn check_compare(op: CompareOp, lhs: Type, rhs: Type) -> Result<(), String> {
    let equality = matches!(op, CompareOp::Eq | CompareOp::Neq);
    if lhs == Type::Nil || rhs == Type::Nil {
        return if equality {
            Ok(())
        } else {
            Err("nil can only be compared with = or !=".to_string())
        };
    }
    if !lhs.matches(rhs) {
        return Err(format!("cannot compare {} with {}", lhs.name(), rhs.name()));
    }
    let unordered = |t: Type| matches!(t, Type::Bool | Type::Status | Type::Kind);
    if !equality && (unordered(lhs) || unordered(rhs)) {
        let t = if unordered(lhs) { lhs } else { rhs };
        return Err(format!(
            "'{}' cannot order {} values",
            op.symbol(),
            t.name()
        ));
    }
    Ok(())
}

/// A spanset filter's expression must be able to yield a boolean.
pub(crate) fn check_filter(expr: &FieldExpr) -> Result<(), String> {
    match type_of(expr) {
        t if t.allows_bool() => Ok(()),
        other => Err(format!(
            "a spanset filter must be a boolean expression, found {}",
            other.name()
        )),
    }
}
