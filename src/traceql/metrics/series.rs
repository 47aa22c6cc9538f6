//! Turning accumulated cells into series: one series per quantile for
//! `quantile_over_time`, the `__name__` label of ungrouped series, exemplars spread over the
//! range, second-stage `topk`/`bottomk` and threshold filters, NaN samples and empty series
//! left out.

use super::super::ast::{CompareOp, MetricsFunction, MetricsStage, Static};
use super::functions;
use super::{Exemplar, Label, LabelValue, MetricsEvaluator, MetricsOutput, Sample, Series};

/// One series before NaN samples are dropped: a value per bucket.
struct Dense {
    labels: Vec<Label>,
    values: Vec<f64>,
    exemplars: Vec<Exemplar>,
}

pub(super) fn finish(ev: MetricsEvaluator) -> MetricsOutput {
    if let MetricsFunction::Compare { top_n, .. } = &ev.metrics.function {
        let n = top_n.map_or(10, |n| usize::try_from(n).unwrap_or(10));
        return super::compare::finish(ev, n);
    }
    let buckets = ev.buckets;
    let step = buckets.step_seconds();
    let function = &ev.metrics.function;
    let quantiles: Vec<f64> = match function {
        MetricsFunction::QuantileOverTime { quantiles, .. } => quantiles.clone(),
        _ => vec![0.0],
    };
    let is_quantile = matches!(function, MetricsFunction::QuantileOverTime { .. });
    let name_label = ev.metrics.by.is_empty();
    let mut dense = Vec::new();
    for (_, mut acc) in ev.series {
        for &q in &quantiles {
            let values: Vec<f64> = acc
                .cells
                .iter_mut()
                .map(|c| c.value(function, step, q))
                .collect();
            let mut labels = Vec::new();
            if name_label {
                labels.push(Label {
                    key: "__name__".into(),
                    value: LabelValue::String(functions::name(function).into()),
                });
            }
            labels.extend(acc.labels.iter().cloned());
            if is_quantile {
                labels.push(Label {
                    key: "p".into(),
                    value: LabelValue::Float(q),
                });
            }
            let exemplars = acc
                .exemplars
                .iter()
                .enumerate()
                .filter_map(|(i, e)| {
                    let (id, ts, v) = e.as_ref()?;
                    // Counting functions have no per-span value: the sample's value it is.
                    let value = match function {
                        MetricsFunction::Rate
                        | MetricsFunction::CountOverTime
                        | MetricsFunction::HistogramOverTime(_) => values[i],
                        _ => *v,
                    };
                    Some(Exemplar {
                        labels: vec![Label {
                            key: "trace:id".into(),
                            value: LabelValue::String(id.clone()),
                        }],
                        value,
                        timestamp_ms: *ts,
                    })
                })
                .collect();
            dense.push(Dense {
                labels,
                values,
                exemplars,
            });
        }
    }
    for stage in &ev.metrics.stages {
        apply_stage(stage, &mut dense);
    }
    let series = dense
        .into_iter()
        .map(|d| Series {
            samples: d
                .values
                .iter()
                .enumerate()
                .filter(|(_, v)| !v.is_nan())
                .map(|(i, &value)| Sample {
                    timestamp_ms: buckets.timestamp_ms(i),
                    value,
                })
                .collect(),
            exemplars: spread(d.exemplars, ev.max_exemplars),
            labels: d.labels,
        })
        .filter(|s| !s.samples.is_empty())
        .collect();
    MetricsOutput {
        series,
        truncated: ev.truncated,
    }
}

/// At most `max` exemplars, evenly spaced over the range.
fn spread(mut exemplars: Vec<Exemplar>, max: usize) -> Vec<Exemplar> {
    let n = exemplars.len();
    if n <= max {
        return exemplars;
    }
    let picks: Vec<usize> = (0..max).map(|i| i * n / max).collect();
    let mut out = Vec::with_capacity(max);
    for (i, e) in exemplars.drain(..).enumerate() {
        if picks.binary_search(&i).is_ok() {
            out.push(e);
        }
    }
    out
}

fn apply_stage(stage: &MetricsStage, dense: &mut [Dense]) {
    match stage {
        MetricsStage::TopK(n) => top(dense, *n, true),
        MetricsStage::BottomK(n) => top(dense, *n, false),
        MetricsStage::Threshold { op, value } => {
            let Some(limit) = static_number(value) else {
                return;
            };
            for d in dense.iter_mut() {
                for v in d.values.iter_mut() {
                    if !v.is_nan() && !compare(*op, *v, limit) {
                        *v = f64::NAN;
                    }
                }
            }
        }
    }
}

/// Per timestamp, keeps the `n` largest (or smallest) values; the others become NaN, so a
/// series survives if it ranked at any timestamp.
fn top(dense: &mut [Dense], n: i64, largest: bool) {
    let n = n.max(0) as usize;
    let len = dense.first().map_or(0, |d| d.values.len());
    for i in 0..len {
        let mut ranked: Vec<(f64, usize)> = dense
            .iter()
            .enumerate()
            .filter(|(_, d)| !d.values[i].is_nan())
            .map(|(s, d)| (d.values[i], s))
            .collect();
        // Ties keep the earlier series (label order), so answers are stable.
        ranked.sort_by(|a, b| {
            let by_value = if largest {
                b.0.total_cmp(&a.0)
            } else {
                a.0.total_cmp(&b.0)
            };
            by_value.then(a.1.cmp(&b.1))
        });
        for &(_, s) in ranked.iter().skip(n) {
            dense[s].values[i] = f64::NAN;
        }
    }
}

fn static_number(value: &Static) -> Option<f64> {
    match value {
        Static::Int(v) => Some(*v as f64),
        Static::Float(v) => Some(*v),
        Static::Duration(ns) => Some(*ns as f64 / 1e9),
        _ => None,
    }
}

fn compare(op: CompareOp, lhs: f64, rhs: f64) -> bool {
    match op {
        CompareOp::Eq => lhs == rhs,
        CompareOp::Neq => lhs != rhs,
        CompareOp::Lt => lhs < rhs,
        CompareOp::Lte => lhs <= rhs,
        CompareOp::Gt => lhs > rhs,
        CompareOp::Gte => lhs >= rhs,
    }
}
