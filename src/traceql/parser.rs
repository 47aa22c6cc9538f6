//! A recursive-descent parser with Pratt loops for the three expression levels: field
//! expressions inside `{ }`, spanset/scalar expressions between pipes, and the pipeline.
//!
//! Precedence follows Tempo's grammar, lowest first: `|`; `&& ||` (one level, left to right);
//! comparisons and structural operators; `+ -`; `!`; `* / %`; `^` (right associative).

use super::ast::*;
use super::check;
use super::error::ParseError;
use super::lexer::{tokenize, Tok, Token};

/// How deep the parser may recurse (parentheses, prefix operators): each level costs a few
/// stack frames, and queries run on threads with small stacks.
const MAX_NESTING: usize = 200;

/// How deep the finished tree may be (long `||` chains). Rendering, comparing and dropping
/// the tree recurse, so an unbounded depth could overflow the stack.
const MAX_TREE_DEPTH: usize = 1000;

/// Parses a TraceQL query and runs the static checks.
pub fn parse(query: &str) -> Result<Query> {
    let tokens = tokenize(query)?;
    let mut parser = Parser {
        query,
        tokens,
        at: 0,
        nesting: 0,
    };
    parser.query()
}

/// What a parenthesised or bare expression between pipes turned out to be.
enum Item {
    Spanset(SpansetExpr),
    Scalar(ScalarExpr),
    Filter(ScalarFilter),
}

impl Item {
    fn describe(&self) -> &'static str {
        match self {
            Item::Spanset(_) => "a spanset",
            Item::Scalar(_) => "a scalar",
            Item::Filter(_) => "a scalar filter",
        }
    }
}

/// What ended a pipeline besides its stages.
enum Tail {
    None,
    /// A bare aggregate or scalar expression, legal only as the end of `( ... )`.
    Scalar(ScalarExpr, usize),
    Metrics(Metrics),
}

struct Parser<'a> {
    query: &'a str,
    tokens: Vec<Token>,
    at: usize,
    nesting: usize,
}

type Result<T> = std::result::Result<T, ParseError>;

impl Parser<'_> {
    // ---- token helpers -------------------------------------------------------------------

    fn peek(&self) -> &Tok {
        &self.tokens[self.at].tok
    }

    fn peek_next(&self) -> &Tok {
        let next = (self.at + 1).min(self.tokens.len() - 1);
        &self.tokens[next].tok
    }

    fn pos(&self) -> usize {
        self.tokens[self.at].pos
    }

    fn advance(&mut self) -> Token {
        let token = self.tokens[self.at].clone();
        if self.at + 1 < self.tokens.len() {
            self.at += 1;
        }
        token
    }

    fn is_call(&self, name: &str) -> bool {
        matches!(self.peek(), Tok::Ident(word) if word == name) && *self.peek_next() == Tok::LParen
    }

    fn error_at(&self, pos: usize, head: &str, tail: Option<&str>) -> ParseError {
        ParseError::new(self.query, pos, head, tail)
    }

    /// `unexpected X at l:c, expected <what>` for the current token.
    fn unexpected(&self, expected: &str) -> ParseError {
        let head = format!("unexpected {}", self.peek().describe());
        self.error_at(self.pos(), &head, Some(&format!("expected {expected}")))
    }

    fn expect(&mut self, tok: Tok, expected: &str) -> Result<()> {
        if *self.peek() == tok {
            self.advance();
            Ok(())
        } else {
            Err(self.unexpected(expected))
        }
    }

    fn enter(&mut self) -> Result<()> {
        self.nesting += 1;
        if self.nesting > MAX_NESTING {
            return Err(self.error_at(self.pos(), "query nests too deeply", None));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.nesting -= 1;
    }

    fn check_depth(&self, depth: usize, pos: usize) -> Result<()> {
        if depth > MAX_TREE_DEPTH {
            return Err(self.error_at(pos, "query nests too deeply", None));
        }
        Ok(())
    }

    // ---- query and pipeline ----------------------------------------------------------------

    fn query(&mut self) -> Result<Query> {
        let (pipeline, tail) = self.pipeline(true)?;
        let metrics = match tail {
            Tail::Metrics(metrics) => Some(metrics),
            Tail::None => None,
            Tail::Scalar(_, pos) => return Err(self.missing_comparison(pos)),
        };
        let mut hints = Vec::new();
        if self.is_call("with") {
            hints = self.hints()?;
            if *self.peek() != Tok::Eof {
                return Err(self.unexpected("end of query after the hints"));
            }
        }
        if *self.peek() != Tok::Eof {
            return Err(self.unexpected("'|' or end of query"));
        }
        Ok(Query {
            pipeline,
            metrics,
            hints,
        })
    }

    fn missing_comparison(&self, pos: usize) -> ParseError {
        let head = format!("unexpected {}", self.peek().describe());
        let at = self.pos().max(pos);
        self.error_at(
            at,
            &head,
            Some("expected a comparison such as '> 1' after the aggregate"),
        )
    }

    /// Stages separated by `|`. At top level a metrics function may end the pipeline;
    /// inside parentheses a bare aggregate may.
    fn pipeline(&mut self, top: bool) -> Result<(Pipeline, Tail)> {
        self.enter()?;
        let mut stages = Vec::new();
        let tail = loop {
            if !stages.is_empty() && self.at_metrics_function() {
                if !top {
                    let head = format!("unexpected {}", self.peek().describe());
                    let tail = "metrics functions are only allowed at the end of the query";
                    return Err(self.error_at(self.pos(), &head, Some(tail)));
                }
                break Tail::Metrics(self.metrics()?);
            }
            let start = self.pos();
            match self.stage()? {
                Ok(stage) => stages.push(stage),
                Err(scalar) => {
                    if *self.peek() == Tok::Pipe || top {
                        return Err(self.missing_comparison(start));
                    }
                    break Tail::Scalar(scalar, start);
                }
            }
            if *self.peek() != Tok::Pipe {
                break Tail::None;
            }
            self.advance();
        };
        self.leave();
        Ok((Pipeline { stages }, tail))
    }

    fn at_metrics_function(&self) -> bool {
        METRICS_FUNCTIONS.iter().any(|name| self.is_call(name))
    }

    /// One stage; a bare scalar comes back as `Err(scalar)` for the caller to judge.
    fn stage(&mut self) -> Result<std::result::Result<Stage, ScalarExpr>> {
        if self.is_call("by") {
            self.advance();
            self.advance();
            let field = self.field_expr()?;
            self.expect(Tok::RParen, "')'")?;
            return Ok(Ok(Stage::GroupBy(field)));
        }
        if self.is_call("select") {
            self.advance();
            self.advance();
            let fields = self.field_list()?;
            return Ok(Ok(Stage::Select(fields)));
        }
        if self.is_call("coalesce") {
            self.advance();
            self.advance();
            self.expect(Tok::RParen, "')'")?;
            return Ok(Ok(Stage::Coalesce));
        }
        let start = self.pos();
        let (item, _) = self.item(0)?;
        match item {
            Item::Spanset(expr) => Ok(Ok(Stage::Spanset(expr))),
            Item::Filter(filter) => {
                self.check_scalar_filter(&filter, start)?;
                Ok(Ok(Stage::ScalarFilter(filter)))
            }
            Item::Scalar(scalar) => Ok(Err(scalar)),
        }
    }

    /// `5 > 3` compares nothing from the spans; Tempo refuses it since 2.x.
    fn check_scalar_filter(&self, filter: &ScalarFilter, start: usize) -> Result<()> {
        if has_aggregate(&filter.lhs) || has_aggregate(&filter.rhs) {
            return Ok(());
        }
        Err(self.error_at(
            start,
            "scalar filter without an aggregate",
            Some("compare an aggregate such as count() or avg(duration)"),
        ))
    }

    /// `a, b, c)`: one or more field expressions and the closing parenthesis.
    fn field_list(&mut self) -> Result<Vec<FieldExpr>> {
        let mut fields = vec![self.field_expr()?];
        while *self.peek() == Tok::Comma {
            self.advance();
            fields.push(self.field_expr()?);
        }
        self.expect(Tok::RParen, "',' or ')'")?;
        Ok(fields)
    }

    // ---- spanset and scalar expressions ----------------------------------------------------

    /// Pratt loop over spanset operators, scalar comparisons and scalar arithmetic.
    /// Returns the item and the depth of its tree.
    fn item(&mut self, min_power: u8) -> Result<(Item, usize)> {
        self.enter()?;
        let (mut lhs, mut depth) = self.item_prefix()?;
        while let Some(level) = item_level(self.peek()) {
            let (left_power, right_power) = powers(level, *self.peek() == Tok::Caret);
            if left_power < min_power {
                break;
            }
            let op_pos = self.pos();
            let op = self.advance().tok;
            let (rhs, rhs_depth) = self.item(right_power)?;
            lhs = self.combine(&op, op_pos, lhs, rhs)?;
            depth = depth.max(rhs_depth) + 1;
            self.check_depth(depth, op_pos)?;
        }
        self.leave();
        Ok((lhs, depth))
    }

    fn item_prefix(&mut self) -> Result<(Item, usize)> {
        match self.peek().clone() {
            Tok::LBrace => Ok((
                Item::Spanset(SpansetExpr::Filter(self.spanset_filter()?)),
                0,
            )),
            Tok::LParen => self.parenthesised(),
            Tok::Int(_) | Tok::Float(_) | Tok::Duration(_) => {
                let value = self.number_literal()?;
                Ok((Item::Scalar(ScalarExpr::Static(value)), 0))
            }
            Tok::Minus
                if matches!(
                    self.peek_next(),
                    Tok::Int(_) | Tok::Float(_) | Tok::Duration(_)
                ) =>
            {
                let value = self.number_literal()?;
                Ok((Item::Scalar(ScalarExpr::Static(value)), 0))
            }
            Tok::Ident(name) if *self.peek_next() == Tok::LParen => {
                if let Some(aggregate) = self.aggregate(&name)? {
                    return Ok((Item::Scalar(ScalarExpr::Aggregate(aggregate)), 0));
                }
                Err(self.unexpected("a spanset filter such as '{ ... }'"))
            }
            _ => Err(self.unexpected("a spanset filter such as '{ ... }'")),
        }
    }

    /// `( pipeline )`: a grouped spanset expression, a wrapped pipeline, a grouped scalar
    /// expression or a scalar pipeline `({..} | count())`.
    fn parenthesised(&mut self) -> Result<(Item, usize)> {
        let open = self.pos();
        self.advance();
        let (mut pipeline, tail) = self.pipeline(false)?;
        self.expect(Tok::RParen, "')'")?;
        let item = match tail {
            Tail::Scalar(scalar, _) if pipeline.stages.is_empty() => Item::Scalar(scalar),
            Tail::Scalar(ScalarExpr::Aggregate(aggregate), _) => {
                Item::Scalar(ScalarExpr::Pipeline {
                    pipeline: Box::new(pipeline),
                    aggregate,
                })
            }
            Tail::Scalar(_, pos) => {
                return Err(self.error_at(
                    pos,
                    "a pipeline in parentheses must end in a single aggregate",
                    None,
                ))
            }
            Tail::Metrics(_) => {
                return Err(self.error_at(open, "unexpected metrics function", None))
            }
            Tail::None if pipeline.stages.len() == 1 => match pipeline.stages.remove(0) {
                Stage::Spanset(expr) => Item::Spanset(expr),
                Stage::ScalarFilter(filter) => Item::Filter(filter),
                other => Item::Spanset(SpansetExpr::Pipeline(Box::new(Pipeline {
                    stages: vec![other],
                }))),
            },
            Tail::None => Item::Spanset(SpansetExpr::Pipeline(Box::new(pipeline))),
        };
        Ok((item, 0))
    }

    fn combine(&self, op: &Tok, op_pos: usize, lhs: Item, rhs: Item) -> Result<Item> {
        match (lhs, rhs) {
            (Item::Spanset(lhs), Item::Spanset(rhs)) => match spanset_op(op) {
                Some(op) => Ok(Item::Spanset(SpansetExpr::Binary {
                    op,
                    lhs: Box::new(lhs),
                    rhs: Box::new(rhs),
                })),
                None => Err(self.bad_operands(op, op_pos, "a spanset", "a spanset")),
            },
            (Item::Scalar(lhs), Item::Scalar(rhs)) => {
                if let Some(op) = compare_op(op) {
                    return Ok(Item::Filter(ScalarFilter { op, lhs, rhs }));
                }
                match arith_op(op) {
                    Some(op) => Ok(Item::Scalar(ScalarExpr::Arith {
                        op,
                        lhs: Box::new(lhs),
                        rhs: Box::new(rhs),
                    })),
                    None => Err(self.bad_operands(op, op_pos, "a scalar", "a scalar")),
                }
            }
            (lhs, rhs) => Err(self.bad_operands(op, op_pos, lhs.describe(), rhs.describe())),
        }
    }

    fn bad_operands(&self, op: &Tok, pos: usize, lhs: &str, rhs: &str) -> ParseError {
        let head = format!("operator {} cannot combine {lhs} with {rhs}", op.describe());
        self.error_at(pos, &head, None)
    }

    fn aggregate(&mut self, name: &str) -> Result<Option<Aggregate>> {
        let make: fn(FieldExpr) -> Aggregate = match name {
            "count" => {
                self.advance();
                self.advance();
                self.expect(Tok::RParen, "')', count() takes no argument")?;
                return Ok(Some(Aggregate::Count));
            }
            "avg" => Aggregate::Avg,
            "min" => Aggregate::Min,
            "max" => Aggregate::Max,
            "sum" => Aggregate::Sum,
            _ => return Ok(None),
        };
        self.advance();
        self.advance();
        let field = self.field_expr()?;
        self.expect(Tok::RParen, "')'")?;
        Ok(Some(make(field)))
    }

    /// An optionally negated int, float or duration.
    fn number_literal(&mut self) -> Result<Static> {
        let negative = *self.peek() == Tok::Minus;
        if negative {
            self.advance();
        }
        let value = match self.peek() {
            Tok::Int(v) => Static::Int(*v),
            Tok::Float(v) => Static::Float(*v),
            Tok::Duration(v) => Static::Duration(*v),
            _ => return Err(self.unexpected("a number")),
        };
        self.advance();
        Ok(if negative {
            negate(&value).unwrap_or(value)
        } else {
            value
        })
    }

    // ---- spanset filters and field expressions ------------------------------------------

    fn spanset_filter(&mut self) -> Result<SpansetFilter> {
        self.expect(Tok::LBrace, "'{'")?;
        if *self.peek() == Tok::RBrace {
            self.advance();
            return Ok(SpansetFilter { expr: None });
        }
        let start = self.pos();
        let expr = self.field_expr()?;
        if *self.peek() != Tok::RBrace {
            return Err(self.unexpected("an operator or '}'"));
        }
        self.advance();
        if let Err(message) = check::check_filter(&expr) {
            return Err(self.error_at(start, "invalid filter", Some(&message)));
        }
        Ok(SpansetFilter { expr: Some(expr) })
    }

    fn field_expr(&mut self) -> Result<FieldExpr> {
        Ok(self.field(0)?.0)
    }

    /// Pratt loop over field operators; returns the expression and its tree depth.
    fn field(&mut self, min_power: u8) -> Result<(FieldExpr, usize)> {
        self.enter()?;
        let (mut lhs, mut depth) = self.field_prefix()?;
        while let Some(level) = field_level(self.peek()) {
            let (left_power, right_power) = powers(level, *self.peek() == Tok::Caret);
            if left_power < min_power {
                break;
            }
            let op_pos = self.pos();
            let op = self.advance().tok;
            let rhs_pos = self.pos();
            let (rhs, rhs_depth) = self.field(right_power)?;
            lhs = self.field_binary(&op, lhs, rhs, rhs_pos)?;
            if let Err(message) = check::check(&lhs) {
                return Err(self.error_at(op_pos, "invalid operands", Some(&message)));
            }
            depth = depth.max(rhs_depth) + 1;
            self.check_depth(depth, op_pos)?;
        }
        self.leave();
        Ok((lhs, depth))
    }

    fn field_prefix(&mut self) -> Result<(FieldExpr, usize)> {
        let pos = self.pos();
        let token = self.peek().clone();
        let expr = match token {
            Tok::Not | Tok::Minus => {
                self.advance();
                let level = if token == Tok::Not {
                    level::NOT
                } else {
                    level::ADD
                };
                let (operand, depth) = self.field(level * 2 + 1)?;
                let expr = if token == Tok::Not {
                    FieldExpr::Not(Box::new(operand))
                } else {
                    negate_field(operand)
                };
                if let Err(message) = check::check(&expr) {
                    return Err(self.error_at(pos, "invalid operand", Some(&message)));
                }
                return Ok((expr, depth + 1));
            }
            Tok::LParen => {
                self.advance();
                let (inner, depth) = self.field(0)?;
                self.expect(Tok::RParen, "an operator or ')'")?;
                return Ok((inner, depth));
            }
            Tok::Str(s) => FieldExpr::Static(Static::String(s)),
            Tok::Int(v) => FieldExpr::Static(Static::Int(v)),
            Tok::Float(v) => FieldExpr::Static(Static::Float(v)),
            Tok::Duration(v) => FieldExpr::Static(Static::Duration(v)),
            Tok::Attr(attribute) => FieldExpr::Attribute(attribute),
            Tok::Intrinsic(name) => match Intrinsic::from_name(&name) {
                Some(intrinsic) => FieldExpr::Intrinsic(intrinsic),
                None => {
                    return Err(self.error_at(pos, &format!("unknown intrinsic '{name}'"), None))
                }
            },
            Tok::Ident(word) => match keyword(&word) {
                Some(expr) => expr,
                None => return Err(self.unexpected("a value")),
            },
            _ => return Err(self.unexpected("a value")),
        };
        self.advance();
        Ok((expr, 0))
    }

    fn field_binary(
        &self,
        op: &Tok,
        lhs: FieldExpr,
        rhs: FieldExpr,
        rhs_pos: usize,
    ) -> Result<FieldExpr> {
        let (lhs, rhs) = (Box::new(lhs), Box::new(rhs));
        let expr = match op {
            Tok::And => FieldExpr::Logic {
                op: LogicOp::And,
                lhs,
                rhs,
            },
            Tok::Or => FieldExpr::Logic {
                op: LogicOp::Or,
                lhs,
                rhs,
            },
            Tok::Regex | Tok::NotTilde => FieldExpr::Regex {
                lhs,
                negated: *op == Tok::NotTilde,
                pattern: self.pattern(&rhs, rhs_pos)?,
            },
            _ => match (compare_op(op), arith_op(op)) {
                (Some(op), _) => FieldExpr::Compare { op, lhs, rhs },
                (_, Some(op)) => FieldExpr::Arith { op, lhs, rhs },
                _ => return Err(self.bad_operands(op, rhs_pos, "a value", "a value")),
            },
        };
        Ok(expr)
    }

    /// The right side of `=~`/`!~`: a string literal, compiled fully anchored as RE2 is in Tempo.
    fn pattern(&self, rhs: &FieldExpr, pos: usize) -> Result<Pattern> {
        let FieldExpr::Static(Static::String(source)) = rhs else {
            return Err(self.error_at(pos, "regex must be a string literal", None));
        };
        match regex::Regex::new(&format!("^(?:{source})$")) {
            Ok(regex) => Ok(Pattern {
                source: source.clone(),
                regex,
            }),
            Err(err) => {
                let reason = first_line(&err.to_string());
                Err(self.error_at(pos, "invalid regex", Some(&reason)))
            }
        }
    }

    // ---- metrics -----------------------------------------------------------------------------

    fn metrics(&mut self) -> Result<Metrics> {
        let function = self.metrics_function()?;
        let mut by = Vec::new();
        if self.is_call("by") {
            self.advance();
            self.advance();
            by = self.field_list()?;
        }
        let mut stages = Vec::new();
        loop {
            if *self.peek() == Tok::Pipe {
                self.advance();
                stages.push(self.metrics_second_stage()?);
            } else if let Some(op) = compare_op(self.peek()) {
                self.advance();
                let value = self.number_literal()?;
                stages.push(MetricsStage::Threshold { op, value });
            } else {
                break;
            }
        }
        Ok(Metrics {
            function,
            by,
            stages,
        })
    }

    fn metrics_function(&mut self) -> Result<MetricsFunction> {
        let Tok::Ident(name) = self.advance().tok else {
            return Err(self.unexpected("a metrics function"));
        };
        self.advance(); // the '(' is_call saw
        let one_field = |parser: &mut Self, make: fn(FieldExpr) -> MetricsFunction| {
            let field = parser.field_expr()?;
            parser.expect(Tok::RParen, "')'")?;
            Ok(make(field))
        };
        match name.as_str() {
            "rate" | "count_over_time" => {
                self.expect(Tok::RParen, &format!("')', {name}() takes no argument"))?;
                Ok(if name == "rate" {
                    MetricsFunction::Rate
                } else {
                    MetricsFunction::CountOverTime
                })
            }
            "min_over_time" => one_field(self, MetricsFunction::MinOverTime),
            "max_over_time" => one_field(self, MetricsFunction::MaxOverTime),
            "avg_over_time" => one_field(self, MetricsFunction::AvgOverTime),
            "sum_over_time" => one_field(self, MetricsFunction::SumOverTime),
            "histogram_over_time" => one_field(self, MetricsFunction::HistogramOverTime),
            "quantile_over_time" => self.quantile_over_time(),
            _ => self.compare(),
        }
    }

    fn quantile_over_time(&mut self) -> Result<MetricsFunction> {
        let field = self.field_expr()?;
        let mut quantiles = Vec::new();
        while *self.peek() == Tok::Comma {
            self.advance();
            let pos = self.pos();
            let q = match self.number_literal()? {
                Static::Float(q) => q,
                Static::Int(q) => q as f64,
                _ => return Err(self.error_at(pos, "a quantile must be a number", None)),
            };
            if !(0.0..=1.0).contains(&q) {
                return Err(self.error_at(pos, "a quantile must be between 0 and 1", None));
            }
            quantiles.push(q);
        }
        if quantiles.is_empty() {
            return Err(self.unexpected("',' and at least one quantile"));
        }
        self.expect(Tok::RParen, "',' or ')'")?;
        Ok(MetricsFunction::QuantileOverTime { field, quantiles })
    }

    /// `compare({filter}[, top_n[, start_ns, end_ns]])`.
    fn compare(&mut self) -> Result<MetricsFunction> {
        let filter = self.spanset_filter()?;
        let mut numbers = Vec::new();
        while *self.peek() == Tok::Comma && numbers.len() < 3 {
            self.advance();
            numbers.push(self.integer("an integer")?);
        }
        if numbers.len() == 2 {
            return Err(self.unexpected("',' and the end of the time range"));
        }
        self.expect(Tok::RParen, "',' or ')'")?;
        let top_n = numbers.first().map(|(n, _)| *n);
        if let Some((n, pos)) = numbers.first() {
            if !(1..=1000).contains(n) {
                return Err(self.error_at(
                    *pos,
                    "compare() top n must be between 1 and 1000",
                    None,
                ));
            }
        }
        let range_ns = (numbers.len() == 3).then(|| (numbers[1].0, numbers[2].0));
        Ok(MetricsFunction::Compare {
            filter,
            top_n,
            range_ns,
        })
    }

    fn integer(&mut self, expected: &str) -> Result<(i64, usize)> {
        let pos = self.pos();
        match self.peek() {
            Tok::Int(n) => {
                let n = *n;
                self.advance();
                Ok((n, pos))
            }
            _ => Err(self.unexpected(expected)),
        }
    }

    fn metrics_second_stage(&mut self) -> Result<MetricsStage> {
        let top = self.is_call("topk");
        if !top && !self.is_call("bottomk") {
            return Err(self.unexpected("topk() or bottomk() after a metrics function"));
        }
        self.advance();
        self.advance();
        let (n, pos) = self.integer("a positive integer")?;
        if n <= 0 {
            return Err(self.error_at(pos, "topk and bottomk need a positive integer", None));
        }
        self.expect(Tok::RParen, "')'")?;
        Ok(if top {
            MetricsStage::TopK(n)
        } else {
            MetricsStage::BottomK(n)
        })
    }

    // ---- hints --------------------------------------------------------------------------

    fn hints(&mut self) -> Result<Vec<Hint>> {
        self.advance();
        self.advance();
        let mut hints = Vec::new();
        loop {
            let Tok::Ident(key) = self.peek().clone() else {
                return Err(self.unexpected("a hint name"));
            };
            self.advance();
            self.expect(Tok::Eq, "'='")?;
            let value = self.hint_value()?;
            hints.push(Hint { key, value });
            match self.peek() {
                Tok::Comma => {
                    self.advance();
                }
                Tok::RParen => {
                    self.advance();
                    return Ok(hints);
                }
                _ => return Err(self.unexpected("',' or ')'")),
            }
        }
    }

    fn hint_value(&mut self) -> Result<Static> {
        let value = match self.peek().clone() {
            Tok::Str(s) => Static::String(s),
            Tok::Ident(word) if word == "true" || word == "false" => Static::Bool(word == "true"),
            Tok::Int(_) | Tok::Float(_) | Tok::Duration(_) | Tok::Minus => {
                return self.number_literal()
            }
            _ => return Err(self.unexpected("a hint value")),
        };
        self.advance();
        Ok(value)
    }
}

const METRICS_FUNCTIONS: [&str; 9] = [
    "rate",
    "count_over_time",
    "min_over_time",
    "max_over_time",
    "avg_over_time",
    "sum_over_time",
    "quantile_over_time",
    "histogram_over_time",
    "compare",
];

/// Left and right binding power for an operator at `level`.
fn powers(level: u8, right_associative: bool) -> (u8, u8) {
    let left = level * 2;
    (left, if right_associative { left } else { left + 1 })
}

fn item_level(tok: &Tok) -> Option<u8> {
    if matches!(tok, Tok::And | Tok::Or) {
        return Some(level::LOGIC);
    }
    if spanset_op(tok).is_some() || compare_op(tok).is_some() {
        return Some(level::COMPARE);
    }
    arith_op(tok).map(ArithOp::level)
}

fn field_level(tok: &Tok) -> Option<u8> {
    match tok {
        Tok::And | Tok::Or => Some(level::LOGIC),
        Tok::Regex | Tok::NotTilde => Some(level::COMPARE),
        _ if compare_op(tok).is_some() => Some(level::COMPARE),
        _ => arith_op(tok).map(ArithOp::level),
    }
}

fn spanset_op(tok: &Tok) -> Option<SpansetOp> {
    Some(match tok {
        Tok::And => SpansetOp::And,
        Tok::Or => SpansetOp::Or,
        Tok::Gt => SpansetOp::Child,
        Tok::Lt => SpansetOp::Parent,
        Tok::Desc => SpansetOp::Descendant,
        Tok::Ance => SpansetOp::Ancestor,
        Tok::Tilde => SpansetOp::Sibling,
        Tok::NotChild => SpansetOp::NotChild,
        Tok::NotParent => SpansetOp::NotParent,
        Tok::NotDesc => SpansetOp::NotDescendant,
        Tok::NotAnce => SpansetOp::NotAncestor,
        Tok::NotTilde => SpansetOp::NotSibling,
        Tok::UnionChild => SpansetOp::UnionChild,
        Tok::UnionParent => SpansetOp::UnionParent,
        Tok::UnionDesc => SpansetOp::UnionDescendant,
        Tok::UnionAnce => SpansetOp::UnionAncestor,
        Tok::UnionSibling => SpansetOp::UnionSibling,
        _ => return None,
    })
}

fn compare_op(tok: &Tok) -> Option<CompareOp> {
    Some(match tok {
        Tok::Eq => CompareOp::Eq,
        Tok::Neq => CompareOp::Neq,
        Tok::Lt => CompareOp::Lt,
        Tok::Lte => CompareOp::Lte,
        Tok::Gt => CompareOp::Gt,
        Tok::Gte => CompareOp::Gte,
        _ => return None,
    })
}

fn arith_op(tok: &Tok) -> Option<ArithOp> {
    Some(match tok {
        Tok::Plus => ArithOp::Add,
        Tok::Minus => ArithOp::Sub,
        Tok::Star => ArithOp::Mul,
        Tok::Slash => ArithOp::Div,
        Tok::Percent => ArithOp::Mod,
        Tok::Caret => ArithOp::Pow,
        _ => return None,
    })
}

/// Bare words inside a filter: literals and the legacy unscoped intrinsics.
fn keyword(word: &str) -> Option<FieldExpr> {
    let value = match word {
        "true" => Static::Bool(true),
        "false" => Static::Bool(false),
        "nil" => Static::Nil,
        "ok" => Static::Status(Status::Ok),
        "error" => Static::Status(Status::Error),
        "unset" => Static::Status(Status::Unset),
        "unspecified" => Static::Kind(SpanKind::Unspecified),
        "internal" => Static::Kind(SpanKind::Internal),
        "server" => Static::Kind(SpanKind::Server),
        "client" => Static::Kind(SpanKind::Client),
        "producer" => Static::Kind(SpanKind::Producer),
        "consumer" => Static::Kind(SpanKind::Consumer),
        "minInt" => Static::Int(i64::MIN),
        "maxInt" => Static::Int(i64::MAX),
        _ => return Intrinsic::from_name(word).map(FieldExpr::Intrinsic),
    };
    Some(FieldExpr::Static(value))
}

/// `-5` is the literal -5 rather than a negation, so it renders and compares as written.
fn negate(value: &Static) -> Option<Static> {
    match value {
        Static::Int(v) => v.checked_neg().map(Static::Int),
        Static::Float(v) => Some(Static::Float(-v)),
        Static::Duration(v) => v.checked_neg().map(Static::Duration),
        _ => None,
    }
}

fn negate_field(operand: FieldExpr) -> FieldExpr {
    if let FieldExpr::Static(value) = &operand {
        if let Some(negated) = negate(value) {
            return FieldExpr::Static(negated);
        }
    }
    FieldExpr::Neg(Box::new(operand))
}

fn has_aggregate(expr: &ScalarExpr) -> bool {
    match expr {
        ScalarExpr::Static(_) => false,
        ScalarExpr::Aggregate(_) | ScalarExpr::Pipeline { .. } => true,
        ScalarExpr::Arith { lhs, rhs, .. } => has_aggregate(lhs) || has_aggregate(rhs),
    }
}

fn first_line(text: &str) -> String {
    // The regex crate's messages span several lines with a caret diagram; keep the reason.
    text.lines()
        .rev()
        .find(|line| line.starts_with("error:"))
        .map(|line| line.trim_start_matches("error:").trim().to_string())
        .unwrap_or_else(|| text.lines().next().unwrap_or("").to_string())
}
