//! The typed syntax tree of a TraceQL query and its canonical rendering.
//!
//! `Display` prints the canonical form: single spaces around binary operators, scoped
//! intrinsic names (`span:duration`, never `duration`), the fewest parentheses that keep the
//! tree, plus parentheses wherever `&&` and `||` mix (they share one precedence level, so the
//! bare form reads misleadingly). Parsing the rendering gives back an equal tree.

use std::fmt;

/// A whole query: a pipeline, an optional metrics tail and `with(...)` hints.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub pipeline: Pipeline,
    /// `| rate() by (...) ...`: present only for metrics queries.
    pub metrics: Option<Metrics>,
    pub hints: Vec<Hint>,
}

impl Query {
    /// True when the query ends in a metrics function and belongs on
    /// `/api/metrics/query_range` rather than `/api/search`.
    pub fn is_metrics(&self) -> bool {
        self.metrics.is_some()
    }
}

/// Stages separated by `|`; each stage receives the spansets the previous one kept.
#[derive(Debug, Clone, PartialEq)]
pub struct Pipeline {
    pub stages: Vec<Stage>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Stage {
    Spanset(SpansetExpr),
    /// `count() > 3`, `(max(duration) - min(duration)) > 1s`.
    ScalarFilter(ScalarFilter),
    /// `by(resource.service.name)`.
    GroupBy(FieldExpr),
    /// `select(span.http.url, span:status)`.
    Select(Vec<FieldExpr>),
    /// `coalesce()`.
    Coalesce,
}

/// Spansets combined at trace level.
#[derive(Debug, Clone, PartialEq)]
pub enum SpansetExpr {
    Filter(SpansetFilter),
    Binary {
        op: SpansetOp,
        lhs: Box<SpansetExpr>,
        rhs: Box<SpansetExpr>,
    },
    /// A parenthesised pipeline used as a spanset: `({a} | count() > 1) && {b}`.
    Pipeline(Box<Pipeline>),
}

/// `{}` or `{ expr }`: the expression is evaluated once per span.
#[derive(Debug, Clone, PartialEq)]
pub struct SpansetFilter {
    /// `None` for `{}`, which matches every span.
    pub expr: Option<FieldExpr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpansetOp {
    And,
    Or,
    Child,
    Parent,
    Descendant,
    Ancestor,
    Sibling,
    NotChild,
    NotParent,
    NotDescendant,
    NotAncestor,
    NotSibling,
    UnionChild,
    UnionParent,
    UnionDescendant,
    UnionAncestor,
    UnionSibling,
}

impl SpansetOp {
    pub fn symbol(self) -> &'static str {
        match self {
            SpansetOp::And => "&&",
            SpansetOp::Or => "||",
            SpansetOp::Child => ">",
            SpansetOp::Parent => "<",
            SpansetOp::Descendant => ">>",
            SpansetOp::Ancestor => "<<",
            SpansetOp::Sibling => "~",
            SpansetOp::NotChild => "!>",
            SpansetOp::NotParent => "!<",
            SpansetOp::NotDescendant => "!>>",
            SpansetOp::NotAncestor => "!<<",
            SpansetOp::NotSibling => "!~",
            SpansetOp::UnionChild => "&>",
            SpansetOp::UnionParent => "&<",
            SpansetOp::UnionDescendant => "&>>",
            SpansetOp::UnionAncestor => "&<<",
            SpansetOp::UnionSibling => "&~",
        }
    }

    fn is_logical(self) -> bool {
        matches!(self, SpansetOp::And | SpansetOp::Or)
    }
}

/// A comparison of two scalar expressions over a spanset.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalarFilter {
    pub op: CompareOp,
    pub lhs: ScalarExpr,
    pub rhs: ScalarExpr,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ScalarExpr {
    Static(Static),
    Aggregate(Aggregate),
    Arith {
        op: ArithOp,
        lhs: Box<ScalarExpr>,
        rhs: Box<ScalarExpr>,
    },
    /// `({ a } | by(x) | count())`: a parenthesised pipeline ending in an aggregate.
    Pipeline {
        pipeline: Box<Pipeline>,
        aggregate: Aggregate,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Aggregate {
    Count,
    Avg(FieldExpr),
    Min(FieldExpr),
    Max(FieldExpr),
    Sum(FieldExpr),
}

/// An expression over one span's fields.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldExpr {
    Static(Static),
    Attribute(Attribute),
    Intrinsic(Intrinsic),
    Logic {
        op: LogicOp,
        lhs: Box<FieldExpr>,
        rhs: Box<FieldExpr>,
    },
    Compare {
        op: CompareOp,
        lhs: Box<FieldExpr>,
        rhs: Box<FieldExpr>,
    },
    /// `lhs =~ "re"` / `lhs !~ "re"`; the pattern is compiled once, at parse time.
    Regex {
        lhs: Box<FieldExpr>,
        negated: bool,
        pattern: Pattern,
    },
    Arith {
        op: ArithOp,
        lhs: Box<FieldExpr>,
        rhs: Box<FieldExpr>,
    },
    Not(Box<FieldExpr>),
    Neg(Box<FieldExpr>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogicOp {
    And,
    Or,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Eq,
    Neq,
    Lt,
    Lte,
    Gt,
    Gte,
}

impl CompareOp {
    pub fn symbol(self) -> &'static str {
        match self {
            CompareOp::Eq => "=",
            CompareOp::Neq => "!=",
            CompareOp::Lt => "<",
            CompareOp::Lte => "<=",
            CompareOp::Gt => ">",
            CompareOp::Gte => ">=",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArithOp {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Pow,
}

impl ArithOp {
    pub fn symbol(self) -> &'static str {
        match self {
            ArithOp::Add => "+",
            ArithOp::Sub => "-",
            ArithOp::Mul => "*",
            ArithOp::Div => "/",
            ArithOp::Mod => "%",
            ArithOp::Pow => "^",
        }
    }

    /// Precedence level, shared by field and scalar expressions (higher binds tighter).
    pub(crate) fn level(self) -> u8 {
        match self {
            ArithOp::Add | ArithOp::Sub => level::ADD,
            ArithOp::Mul | ArithOp::Div | ArithOp::Mod => level::MUL,
            ArithOp::Pow => level::POW,
        }
    }
}

/// Tempo's precedence levels, lowest first. `!` sits between `+ -` and `* / %`, so
/// `!a = b` is `(!a) = b`; unary minus sits with `+ -`.
pub(crate) mod level {
    pub(crate) const LOGIC: u8 = 1;
    pub(crate) const COMPARE: u8 = 2;
    pub(crate) const ADD: u8 = 3;
    pub(crate) const NOT: u8 = 4;
    pub(crate) const MUL: u8 = 5;
    pub(crate) const POW: u8 = 6;
    pub(crate) const ATOM: u8 = 7;
}

/// A regular expression as written, with its compiled, fully anchored form.
#[derive(Clone)]
pub struct Pattern {
    pub source: String,
    pub regex: regex::Regex,
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Pattern) -> bool {
        self.source == other.source
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", self.source)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// `.x`: span first, then resource.
    Unscoped,
    Span,
    Resource,
    Event,
    Link,
    Instrumentation,
}

impl Scope {
    fn prefix(self) -> &'static str {
        match self {
            Scope::Unscoped => ".",
            Scope::Span => "span.",
            Scope::Resource => "resource.",
            Scope::Event => "event.",
            Scope::Link => "link.",
            Scope::Instrumentation => "instrumentation.",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Attribute {
    pub scope: Scope,
    /// `parent.x`, `parent.span.x`, `parent.resource.x`: the attribute of the parent span.
    pub parent: bool,
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Intrinsic {
    Duration,
    Name,
    Status,
    StatusMessage,
    Kind,
    SpanId,
    ParentId,
    ChildCount,
    TraceDuration,
    TraceRootName,
    TraceRootService,
    TraceId,
    EventName,
    EventTimeSinceStart,
    LinkTraceId,
    LinkSpanId,
    InstrumentationName,
    InstrumentationVersion,
    /// Legacy `parent`, used as `parent = nil` to find root spans.
    Parent,
    NestedSetLeft,
    NestedSetRight,
    NestedSetParent,
}

impl Intrinsic {
    /// Every intrinsic with its canonical spelling.
    pub const ALL: [(Intrinsic, &'static str); 22] = [
        (Intrinsic::Duration, "span:duration"),
        (Intrinsic::Name, "span:name"),
        (Intrinsic::Status, "span:status"),
        (Intrinsic::StatusMessage, "span:statusMessage"),
        (Intrinsic::Kind, "span:kind"),
        (Intrinsic::SpanId, "span:id"),
        (Intrinsic::ParentId, "span:parentID"),
        (Intrinsic::ChildCount, "span:childCount"),
        (Intrinsic::TraceDuration, "trace:duration"),
        (Intrinsic::TraceRootName, "trace:rootName"),
        (Intrinsic::TraceRootService, "trace:rootService"),
        (Intrinsic::TraceId, "trace:id"),
        (Intrinsic::EventName, "event:name"),
        (Intrinsic::EventTimeSinceStart, "event:timeSinceStart"),
        (Intrinsic::LinkTraceId, "link:traceID"),
        (Intrinsic::LinkSpanId, "link:spanID"),
        (Intrinsic::InstrumentationName, "instrumentation:name"),
        (Intrinsic::InstrumentationVersion, "instrumentation:version"),
        (Intrinsic::Parent, "parent"),
        (Intrinsic::NestedSetLeft, "nestedSetLeft"),
        (Intrinsic::NestedSetRight, "nestedSetRight"),
        (Intrinsic::NestedSetParent, "nestedSetParent"),
    ];

    /// The legacy unscoped spellings that mean the same as a scoped one.
    const LEGACY: [(Intrinsic, &'static str); 8] = [
        (Intrinsic::Duration, "duration"),
        (Intrinsic::Name, "name"),
        (Intrinsic::Status, "status"),
        (Intrinsic::StatusMessage, "statusMessage"),
        (Intrinsic::Kind, "kind"),
        (Intrinsic::TraceRootName, "rootName"),
        (Intrinsic::TraceRootService, "rootServiceName"),
        (Intrinsic::TraceDuration, "traceDuration"),
    ];

    /// Looks up `span:duration`, `duration`, `parent`, ...
    pub fn from_name(name: &str) -> Option<Intrinsic> {
        Intrinsic::ALL
            .iter()
            .chain(Intrinsic::LEGACY.iter())
            .find(|(_, spelled)| *spelled == name)
            .map(|(intrinsic, _)| *intrinsic)
    }

    pub fn name(self) -> &'static str {
        Intrinsic::ALL
            .iter()
            .find(|(intrinsic, _)| *intrinsic == self)
            .map(|(_, spelled)| *spelled)
            .unwrap_or("")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Error,
    Unset,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    Unspecified,
    Internal,
    Server,
    Client,
    Producer,
    Consumer,
}

impl Status {
    /// The TraceQL keyword, which is also how Tempo names a status in results.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Error => "error",
            Status::Unset => "unset",
        }
    }
}

impl SpanKind {
    /// The TraceQL keyword, which is also how Tempo names a kind in results.
    pub fn as_str(self) -> &'static str {
        match self {
            SpanKind::Unspecified => "unspecified",
            SpanKind::Internal => "internal",
            SpanKind::Server => "server",
            SpanKind::Client => "client",
            SpanKind::Producer => "producer",
            SpanKind::Consumer => "consumer",
        }
    }
}

/// A literal.
#[derive(Debug, Clone, PartialEq)]
pub enum Static {
    String(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// Nanoseconds.
    Duration(i64),
    Status(Status),
    Kind(SpanKind),
    Nil,
}

impl Static {
    /// A negative number prints with a leading `-`, so it binds like unary minus.
    fn level(&self) -> u8 {
        let negative = match self {
            Static::Int(v) => *v < 0 && *v != i64::MIN,
            Static::Duration(v) => *v < 0,
            Static::Float(v) => v.is_sign_negative(),
            _ => false,
        };
        if negative {
            level::ADD
        } else {
            level::ATOM
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Metrics {
    pub function: MetricsFunction,
    /// `by (a, b)` after the function.
    pub by: Vec<FieldExpr>,
    /// `| topk(n)`, `| bottomk(n)` and threshold filters such as `> 10`.
    pub stages: Vec<MetricsStage>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum MetricsFunction {
    Rate,
    CountOverTime,
    MinOverTime(FieldExpr),
    MaxOverTime(FieldExpr),
    AvgOverTime(FieldExpr),
    SumOverTime(FieldExpr),
    QuantileOverTime {
        field: FieldExpr,
        quantiles: Vec<f64>,
    },
    HistogramOverTime(FieldExpr),
    /// `compare({filter}[, top_n[, start_ns, end_ns]])`.
    Compare {
        filter: SpansetFilter,
        top_n: Option<i64>,
        range_ns: Option<(i64, i64)>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum MetricsStage {
    TopK(i64),
    BottomK(i64),
    Threshold { op: CompareOp, value: Static },
}

/// `key=value` inside `with(...)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Hint {
    pub key: String,
    pub value: Static,
}

// ---------------------------------------------------------------------------------------------
// Rendering

impl fmt::Display for Query {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.pipeline)?;
        if let Some(metrics) = &self.metrics {
            write!(f, " | {metrics}")?;
        }
        if !self.hints.is_empty() {
            f.write_str(" with(")?;
            for (i, hint) in self.hints.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{}={}", hint.key, hint.value)?;
            }
            f.write_str(")")?;
        }
        Ok(())
    }
}

impl fmt::Display for Pipeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, stage) in self.stages.iter().enumerate() {
            if i > 0 {
                f.write_str(" | ")?;
            }
            write!(f, "{stage}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stage::Spanset(expr) => write!(f, "{expr}"),
            Stage::ScalarFilter(filter) => write!(f, "{filter}"),
            Stage::GroupBy(field) => write!(f, "by({field})"),
            Stage::Select(fields) => {
                f.write_str("select(")?;
                write_list(f, fields)?;
                f.write_str(")")
            }
            Stage::Coalesce => f.write_str("coalesce()"),
        }
    }
}

fn write_list<T: fmt::Display>(f: &mut fmt::Formatter<'_>, items: &[T]) -> fmt::Result {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{item}")?;
    }
    Ok(())
}

/// Writes `child`, parenthesised when `wrap` says so.
fn write_wrapped(f: &mut fmt::Formatter<'_>, child: &dyn fmt::Display, wrap: bool) -> fmt::Result {
    if wrap {
        write!(f, "({child})")
    } else {
        write!(f, "{child}")
    }
}

impl SpansetExpr {
    fn level(&self) -> u8 {
        match self {
            SpansetExpr::Binary { op, .. } if op.is_logical() => level::LOGIC,
            SpansetExpr::Binary { .. } => level::COMPARE,
            _ => level::ATOM,
        }
    }
}

impl fmt::Display for SpansetExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpansetExpr::Filter(filter) => write!(f, "{filter}"),
            SpansetExpr::Pipeline(pipeline) => write!(f, "({pipeline})"),
            SpansetExpr::Binary { op, lhs, rhs } => {
                let own = self.level();
                let mixed = |child: &SpansetExpr| match child {
                    SpansetExpr::Binary { op: child_op, .. } => {
                        op.is_logical() && child_op.is_logical() && child_op != op
                    }
                    _ => false,
                };
                write_wrapped(f, lhs, lhs.level() < own || mixed(lhs))?;
                write!(f, " {} ", op.symbol())?;
                write_wrapped(f, rhs, rhs.level() <= own)
            }
        }
    }
}

impl fmt::Display for SpansetFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.expr {
            None => f.write_str("{}"),
            Some(expr) => write!(f, "{{ {expr} }}"),
        }
    }
}

impl fmt::Display for ScalarFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.lhs, self.op.symbol(), self.rhs)
    }
}

impl ScalarExpr {
    fn level(&self) -> u8 {
        match self {
            ScalarExpr::Static(value) => value.level(),
            ScalarExpr::Arith { op, .. } => op.level(),
            _ => level::ATOM,
        }
    }
}

impl fmt::Display for ScalarExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScalarExpr::Static(value) => write!(f, "{value}"),
            ScalarExpr::Aggregate(aggregate) => write!(f, "{aggregate}"),
            ScalarExpr::Pipeline {
                pipeline,
                aggregate,
            } => write!(f, "({pipeline} | {aggregate})"),
            ScalarExpr::Arith { op, lhs, rhs } => {
                let (wrap_lhs, wrap_rhs) = arith_wraps(*op, lhs.level(), rhs.level());
                write_wrapped(f, lhs, wrap_lhs)?;
                write!(f, " {} ", op.symbol())?;
                write_wrapped(f, rhs, wrap_rhs)
            }
        }
    }
}

/// Which operands of an arithmetic operator need parentheses: `^` groups to the right,
/// the others to the left.
fn arith_wraps(op: ArithOp, lhs: u8, rhs: u8) -> (bool, bool) {
    let own = op.level();
    if op == ArithOp::Pow {
        (lhs <= own, rhs < own)
    } else {
        (lhs < own, rhs <= own)
    }
}

impl fmt::Display for Aggregate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Aggregate::Count => f.write_str("count()"),
            Aggregate::Avg(field) => write!(f, "avg({field})"),
            Aggregate::Min(field) => write!(f, "min({field})"),
            Aggregate::Max(field) => write!(f, "max({field})"),
            Aggregate::Sum(field) => write!(f, "sum({field})"),
        }
    }
}

impl FieldExpr {
    pub(crate) fn level(&self) -> u8 {
        match self {
            FieldExpr::Static(value) => value.level(),
            FieldExpr::Attribute(_) | FieldExpr::Intrinsic(_) => level::ATOM,
            FieldExpr::Logic { .. } => level::LOGIC,
            FieldExpr::Compare { .. } | FieldExpr::Regex { .. } => level::COMPARE,
            FieldExpr::Arith { op, .. } => op.level(),
            FieldExpr::Neg(_) => level::ADD,
            FieldExpr::Not(_) => level::NOT,
        }
    }
}

impl fmt::Display for FieldExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldExpr::Static(value) => write!(f, "{value}"),
            FieldExpr::Attribute(attribute) => write!(f, "{attribute}"),
            FieldExpr::Intrinsic(intrinsic) => f.write_str(intrinsic.name()),
            FieldExpr::Logic { op, lhs, rhs } => {
                let mixed = |child: &FieldExpr| match child {
                    FieldExpr::Logic { op: child_op, .. } => child_op != op,
                    _ => false,
                };
                write_wrapped(f, lhs, lhs.level() < level::LOGIC || mixed(lhs))?;
                f.write_str(match op {
                    LogicOp::And => " && ",
                    LogicOp::Or => " || ",
                })?;
                write_wrapped(f, rhs, rhs.level() <= level::LOGIC)
            }
            FieldExpr::Compare { op, lhs, rhs } => {
                write_wrapped(f, lhs, lhs.level() < level::COMPARE)?;
                write!(f, " {} ", op.symbol())?;
                write_wrapped(f, rhs, rhs.level() <= level::COMPARE)
            }
            FieldExpr::Regex {
                lhs,
                negated,
                pattern,
            } => {
                write_wrapped(f, lhs, lhs.level() < level::COMPARE)?;
                let op = if *negated { "!~" } else { "=~" };
                write!(f, " {op} ")?;
                write_string(f, &pattern.source)
            }
            FieldExpr::Arith { op, lhs, rhs } => {
                let (wrap_lhs, wrap_rhs) = arith_wraps(*op, lhs.level(), rhs.level());
                write_wrapped(f, lhs, wrap_lhs)?;
                write!(f, " {} ", op.symbol())?;
                write_wrapped(f, rhs, wrap_rhs)
            }
            FieldExpr::Not(expr) => {
                f.write_str("!")?;
                write_wrapped(f, expr, expr.level() <= level::NOT)
            }
            FieldExpr::Neg(expr) => {
                f.write_str("-")?;
                write_wrapped(f, expr, expr.level() <= level::ADD)
            }
        }
    }
}

impl fmt::Display for Attribute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.parent {
            f.write_str("parent.")?;
            if self.scope != Scope::Unscoped {
                f.write_str(self.scope.prefix())?;
            }
        } else {
            f.write_str(self.scope.prefix())?;
        }
        if self.name_needs_quotes() {
            f.write_str("\"")?;
            for c in self.name.chars() {
                if c == '"' || c == '\\' {
                    f.write_str("\\")?;
                }
                write!(f, "{c}")?;
            }
            f.write_str("\"")
        } else {
            f.write_str(&self.name)
        }
    }
}

impl Attribute {
    fn name_needs_quotes(&self) -> bool {
        let name = &self.name;
        if name.is_empty()
            || name
                .chars()
                .any(|c| !crate::traceql::lexer::is_attribute_char(c))
        {
            return true;
        }
        // `.5` lexes as a number, and `parent.span.x` as the parent's span scope.
        let unscoped = self.scope == Scope::Unscoped;
        let starts_with_digit = name.starts_with(|c: char| c.is_ascii_digit());
        let looks_scoped = name.starts_with("span.") || name.starts_with("resource.");
        unscoped && (starts_with_digit || (self.parent && looks_scoped))
    }
}

impl fmt::Display for Static {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Static::String(s) => write_string(f, s),
            Static::Int(i64::MIN) => f.write_str("minInt"),
            Static::Int(i64::MAX) => f.write_str("maxInt"),
            Static::Int(v) => write!(f, "{v}"),
            // Debug keeps a `.0` or an exponent, so the text lexes back as a float.
            Static::Float(v) => write!(f, "{v:?}"),
            Static::Bool(v) => write!(f, "{v}"),
            Static::Duration(nanos) => write_duration(f, *nanos),
            Static::Status(status) => f.write_str(status.as_str()),
            Static::Kind(kind) => f.write_str(kind.as_str()),
            Static::Nil => f.write_str("nil"),
        }
    }
}

fn write_string(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    f.write_str("\"")?;
    for c in s.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\t' => f.write_str("\\t")?,
            '\r' => f.write_str("\\r")?,
            c if c.is_control() => write!(f, "\\u{:04x}", c as u32)?,
            c => write!(f, "{c}")?,
        }
    }
    f.write_str("\"")
}

/// `1h2m3s4ms`: exact whole units, so the text parses back to the same nanoseconds.
fn write_duration(f: &mut fmt::Formatter<'_>, nanos: i64) -> fmt::Result {
    if nanos == 0 {
        return f.write_str("0s");
    }
    if nanos < 0 {
        f.write_str("-")?;
    }
    const UNITS: [(u64, &str); 6] = [
        (3_600_000_000_000, "h"),
        (60_000_000_000, "m"),
        (1_000_000_000, "s"),
        (1_000_000, "ms"),
        (1_000, "us"),
        (1, "ns"),
    ];
    let mut rest = nanos.unsigned_abs();
    for (size, unit) in UNITS {
        if rest >= size {
            write!(f, "{}{unit}", rest / size)?;
            rest %= size;
        }
    }
    Ok(())
}

impl fmt::Display for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.function)?;
        if !self.by.is_empty() {
            f.write_str(" by (")?;
            write_list(f, &self.by)?;
            f.write_str(")")?;
        }
        for stage in &self.stages {
            match stage {
                MetricsStage::TopK(n) => write!(f, " | topk({n})")?,
                MetricsStage::BottomK(n) => write!(f, " | bottomk({n})")?,
                MetricsStage::Threshold { op, value } => write!(f, " {} {value}", op.symbol())?,
            }
        }
        Ok(())
    }
}

impl fmt::Display for MetricsFunction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetricsFunction::Rate => f.write_str("rate()"),
            MetricsFunction::CountOverTime => f.write_str("count_over_time()"),
            MetricsFunction::MinOverTime(field) => write!(f, "min_over_time({field})"),
            MetricsFunction::MaxOverTime(field) => write!(f, "max_over_time({field})"),
            MetricsFunction::AvgOverTime(field) => write!(f, "avg_over_time({field})"),
            MetricsFunction::SumOverTime(field) => write!(f, "sum_over_time({field})"),
            MetricsFunction::QuantileOverTime { field, quantiles } => {
                write!(f, "quantile_over_time({field}")?;
                for q in quantiles {
                    write!(f, ", {q:?}")?;
                }
                f.write_str(")")
            }
            MetricsFunction::HistogramOverTime(field) => {
                write!(f, "histogram_over_time({field})")
            }
            MetricsFunction::Compare {
                filter,
                top_n,
                range_ns,
            } => {
                write!(f, "compare({filter}")?;
                if let Some(n) = top_n {
                    write!(f, ", {n}")?;
                }
                if let Some((start, end)) = range_ns {
                    write!(f, ", {start}, {end}")?;
                }
                f.write_str(")")
            }
        }
    }
}
