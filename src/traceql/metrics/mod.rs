//! TraceQL metrics: `{ filter } | rate() by (...)` and the other `*_over_time` functions,
//! evaluated over whole traces into time series. It knows no storage: the querier feeds it
//! every trace (each once, fragments combined) through [`TraceView`].
//!
//! The spanset pipeline before the metrics function selects spans exactly as search does;
//! each selected span counts once, in the bucket its start time falls in.

mod compare;
mod functions;
mod series;
mod sketch;
mod step;

use std::collections::{BTreeMap, BTreeSet};

use super::ast::{FieldExpr, Intrinsic, Metrics, MetricsFunction, Query, SpansetFilter};
use super::engine::{tempo_field, tempo_intrinsic_name, EvalError, Prepared, TraceView};
use super::eval::{eval, Value};
use functions::Cell;
pub use step::{default_step, Buckets};

/// A typed label value, as Tempo's `tempopb.common.v1.AnyValue`.
#[derive(Debug, Clone, PartialEq)]
pub enum LabelValue {
    /// The series of spans that lack the `by()` attribute.
    Nil,
    String(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Label {
    pub key: String,
    pub value: LabelValue,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub timestamp_ms: i64,
    pub value: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Exemplar {
    pub labels: Vec<Label>,
    pub value: f64,
    pub timestamp_ms: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: Vec<Label>,
    /// NaN samples are left out.
    pub samples: Vec<Sample>,
    pub exemplars: Vec<Exemplar>,
}

/// What a metrics query produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricsOutput {
    pub series: Vec<Series>,
    /// More series than the limit: the rest were dropped.
    pub truncated: bool,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricsError {
    #[error("not a metrics query: add a metrics function such as `| rate()` (or use /api/search)")]
    NotMetrics,
    #[error("{0} is not supported in metrics queries")]
    Unsupported(&'static str),
    #[error(transparent)]
    Eval(#[from] EvalError),
    #[error("cannot plan the query's columns: {0}")]
    Plan(String),
    #[error("{0}")]
    Invalid(String),
}

/// One series while spans are added: its labels and one cell per bucket.
#[derive(Debug)]
struct SeriesAcc {
    labels: Vec<Label>,
    cells: Vec<Cell>,
    /// Per bucket, the exemplar candidate with the smallest trace ID (deterministic whatever
    /// order traces arrive in): (trace ID, span start in ms, the span's value).
    exemplars: Vec<Option<(String, i64, f64)>>,
}

/// Accumulates series over traces; [`MetricsEvaluator::finish`] turns them into samples.
pub struct MetricsEvaluator {
    /// The query without its metrics tail: it selects the spans that count.
    filter: Query,
    metrics: Metrics,
    buckets: Buckets,
    max_series: usize,
    max_exemplars: usize,
    by: Vec<String>,
    series: BTreeMap<String, SeriesAcc>,
    truncated: bool,
    /// compare()'s selection and window, shared so each span need not clone them.
    compare: Option<std::sync::Arc<CompareArgs>>,
}

/// compare()'s selection filter and optional `(start, end]` window in unix ns.
type CompareArgs = (SpansetFilter, Option<(i64, i64)>);

impl MetricsEvaluator {
    /// `max_series` 0: no limit. `max_exemplars` 0: none.
    pub fn new(
        query: &Query,
        buckets: Buckets,
        max_series: usize,
        max_exemplars: usize,
    ) -> Result<Self, MetricsError> {
        let metrics = query.metrics.clone().ok_or(MetricsError::NotMetrics)?;
        let mut compare = None;
        if let MetricsFunction::Compare {
            filter,
            top_n,
            range_ns,
        } = &metrics.function
        {
            compare::check(*top_n, *range_ns)?;
            compare = Some(std::sync::Arc::new((filter.clone(), *range_ns)));
        }
        let filter = Query {
            pipeline: query.pipeline.clone(),
            metrics: None,
            hints: Vec::new(),
        };
        let by = metrics.by.iter().map(label_key).collect();
        Ok(Self {
            filter,
            metrics,
            buckets,
            max_series,
            max_exemplars,
            by,
            series: BTreeMap::new(),
            truncated: false,
            compare,
        })
    }

    /// A new evaluator of the same query with no series yet: one per source, merged after.
    pub fn empty_like(&self) -> Self {
        Self {
            filter: self.filter.clone(),
            metrics: self.metrics.clone(),
            buckets: self.buckets,
            max_series: self.max_series,
            max_exemplars: self.max_exemplars,
            by: self.by.clone(),
            series: BTreeMap::new(),
            truncated: false,
            compare: self.compare.clone(),
        }
    }

    /// Whether a span's contribution can depend on spans other than itself (structural and
    /// spanset operators, aggregates, trace-level intrinsics, `parent.`): then a trace stored
    /// in pieces must be evaluated whole.
    pub fn needs_whole_traces(&self) -> bool {
        use super::ast::{SpansetExpr, Stage};
        let filter_local = match self.filter.pipeline.stages.as_slice() {
            [] => true,
            [Stage::Spanset(SpansetExpr::Filter(f))] => f.expr.as_ref().is_none_or(span_local),
            _ => false,
        };
        let function_local = match &self.metrics.function {
            MetricsFunction::Rate | MetricsFunction::CountOverTime => true,
            MetricsFunction::MinOverTime(f)
            | MetricsFunction::MaxOverTime(f)
            | MetricsFunction::AvgOverTime(f)
            | MetricsFunction::SumOverTime(f)
            | MetricsFunction::HistogramOverTime(f)
            | MetricsFunction::QuantileOverTime { field: f, .. } => span_local(f),
            // Spans are grouped by the trace's root service and name too.
            MetricsFunction::Compare { .. } => false,
        };
        !(filter_local && function_local && self.metrics.by.iter().all(span_local))
    }

    pub fn buckets(&self) -> Buckets {
        self.buckets
    }

    /// Adds the spans of one whole trace that the query selects.
    pub fn observe(&mut self, trace: &dyn TraceView) -> Result<(), EvalError> {
        let matched = Prepared::new(&self.filter).evaluate(trace, 1)?;
        // A span in several spansets (by(), ||) still counts once.
        let spans: BTreeSet<usize> = matched.into_iter().flat_map(|m| m.spans).collect();
        for i in spans {
            let Some(bucket) = self.buckets.index(trace.start_unix_nano(i)) else {
                continue;
            };
            self.observe_span(trace, i, bucket);
        }
        Ok(())
    }

    fn observe_span(&mut self, trace: &dyn TraceView, i: usize, bucket: usize) {
        if let Some(c) = self.compare.clone() {
            self.observe_compare(trace, i, bucket, &c.0, c.1);
            return;
        }
        let span = trace.span_view(i);
        let mut labels: Vec<Label> = self
            .metrics
            .by
            .iter()
            .zip(&self.by)
            .map(|(expr, key)| Label {
                key: key.clone(),
                value: label_value(eval(expr, span)),
            })
            .collect();
        let keep_values = matches!(
            self.metrics.function,
            MetricsFunction::QuantileOverTime { .. }
        );
        let value = match &self.metrics.function {
            MetricsFunction::Rate | MetricsFunction::CountOverTime => 1.0,
            MetricsFunction::HistogramOverTime(field) => {
                let Some(b) = eval(field, span)
                    .as_ref()
                    .and_then(functions::histogram_bucket)
                else {
                    return;
                };
                labels.push(Label {
                    key: "__bucket".into(),
                    value: LabelValue::Float(b),
                });
                1.0
            }
            MetricsFunction::MinOverTime(field)
            | MetricsFunction::MaxOverTime(field)
            | MetricsFunction::AvgOverTime(field)
            | MetricsFunction::SumOverTime(field)
            | MetricsFunction::QuantileOverTime { field, .. } => {
                match eval(field, span).as_ref().and_then(functions::numeric) {
                    Some(v) => v,
                    None => return,
                }
            }
            MetricsFunction::Compare { .. } => return,
        };
        let key = series_key(&labels);
        let count = self.buckets.count;
        if !self.series.contains_key(&key) {
            if self.max_series > 0 && self.series.len() >= self.max_series {
                self.truncated = true;
                return;
            }
            self.series.insert(
                key.clone(),
                SeriesAcc {
                    labels,
                    cells: vec![Cell::default(); count],
                    exemplars: vec![None; count],
                },
            );
        }
        let acc = self.series.get_mut(&key).expect("inserted above");
        acc.cells[bucket].add(value, keep_values);
        if self.max_exemplars > 0 {
            if let Some(Value::String(id)) = span.intrinsic(Intrinsic::TraceId) {
                let ts = (trace.start_unix_nano(i) / 1_000_000) as i64;
                let slot = &mut acc.exemplars[bucket];
                if slot.as_ref().is_none_or(|(held, ..)| id < *held) {
                    *slot = Some((id, ts, value));
                }
            }
        }
    }

    /// Counts one in `bucket` of the series `labels` (created if the limit allows).
    fn bump(&mut self, labels: Vec<Label>, bucket: usize) {
        let key = series_key(&labels);
        if !self.series.contains_key(&key) {
            if self.max_series > 0 && self.series.len() >= self.max_series {
                self.truncated = true;
                return;
            }
            let count = self.buckets.count;
            self.series.insert(
                key.clone(),
                SeriesAcc {
                    labels,
                    cells: vec![Cell::default(); count],
                    exemplars: vec![None; count],
                },
            );
        }
        if let Some(acc) = self.series.get_mut(&key) {
            acc.cells[bucket].add(1.0, false);
        }
    }

    /// Folds another evaluator of the same query over different traces into this one.
    pub fn merge(&mut self, other: MetricsEvaluator) {
        self.truncated |= other.truncated;
        for (key, acc) in other.series {
            let full = self.max_series > 0 && self.series.len() >= self.max_series;
            match self.series.get_mut(&key) {
                Some(mine) => mine.absorb(acc),
                None if full => self.truncated = true,
                None => {
                    self.series.insert(key, acc);
                }
            }
        }
    }

    /// The series, second-stage functions applied, NaN samples and empty series dropped.
    pub fn finish(self) -> MetricsOutput {
        series::finish(self)
    }
}

impl SeriesAcc {
    fn absorb(&mut self, other: SeriesAcc) {
        for (mine, theirs) in self.cells.iter_mut().zip(other.cells) {
            mine.merge(theirs);
        }
        for (mine, theirs) in self.exemplars.iter_mut().zip(other.exemplars) {
            if let Some(t) = theirs {
                if mine.as_ref().is_none_or(|m| t.0 < m.0) {
                    *mine = Some(t);
                }
            }
        }
    }
}

/// Whether a field's value is known from the span alone.
fn span_local(e: &FieldExpr) -> bool {
    match e {
        FieldExpr::Static(_) => true,
        FieldExpr::Attribute(a) => !a.parent,
        FieldExpr::Intrinsic(i) => !matches!(
            i,
            Intrinsic::TraceDuration
                | Intrinsic::TraceRootName
                | Intrinsic::TraceRootService
                | Intrinsic::ChildCount
                | Intrinsic::NestedSetLeft
                | Intrinsic::NestedSetRight
                | Intrinsic::NestedSetParent
                | Intrinsic::ParentId
        ),
        FieldExpr::Logic { lhs, rhs, .. }
        | FieldExpr::Compare { lhs, rhs, .. }
        | FieldExpr::Arith { lhs, rhs, .. } => span_local(lhs) && span_local(rhs),
        FieldExpr::Regex { lhs, .. } | FieldExpr::Not(lhs) | FieldExpr::Neg(lhs) => span_local(lhs),
    }
}

/// A `by()` label's name as Tempo prints it: span intrinsics unscoped (`name`, `status`),
/// other intrinsics scoped (`trace:rootService`), attributes with their scope.
fn label_key(expr: &FieldExpr) -> String {
    match expr {
        FieldExpr::Intrinsic(
            i @ (Intrinsic::Duration
            | Intrinsic::Name
            | Intrinsic::Status
            | Intrinsic::StatusMessage
            | Intrinsic::Kind),
        ) => tempo_intrinsic_name(*i).to_owned(),
        FieldExpr::Intrinsic(i) => i.name().to_owned(),
        other => tempo_field(other),
    }
}

/// A span's value as a label: keywords (status, kind) and durations as Tempo prints them.
fn label_value(v: Option<Value>) -> LabelValue {
    match v {
        None => LabelValue::Nil,
        Some(Value::String(s)) => LabelValue::String(s),
        Some(Value::Int(i)) => LabelValue::Int(i),
        Some(Value::Float(f)) => LabelValue::Float(f),
        Some(Value::Bool(b)) => LabelValue::Bool(b),
        Some(Value::Duration(ns)) => {
            LabelValue::String(super::ast::Static::Duration(ns).to_string())
        }
        Some(Value::Status(s)) => LabelValue::String(s.as_str().to_owned()),
        Some(Value::Kind(k)) => LabelValue::String(k.as_str().to_owned()),
        Some(Value::Array(items)) => LabelValue::String(format!("{items:?}")),
    }
}

/// A map key for a label set; the order of the map is the order series are returned in.
fn series_key(labels: &[Label]) -> String {
    let mut key = String::new();
    for l in labels {
        key.push_str(&l.key);
        key.push('\u{1}');
        match &l.value {
            LabelValue::Nil => key.push('n'),
            LabelValue::String(s) => {
                key.push('s');
                key.push_str(s);
            }
            // Sign bit flipped (and all bits for negative floats): the hex of these sorts
            // like the numbers, so series come out in numeric label order.
            LabelValue::Int(i) => key.push_str(&format!("i{:016x}", (*i as u64) ^ (1 << 63))),
            LabelValue::Float(f) => {
                let bits = f.to_bits();
                let ordered = if bits >> 63 == 1 {
                    !bits
                } else {
                    bits ^ (1 << 63)
                };
                key.push_str(&format!("f{ordered:016x}"));
            }
            LabelValue::Bool(b) => key.push_str(&format!("b{b}")),
        }
        key.push('\u{2}');
    }
    key
}

#[cfg(test)]
mod tests;
