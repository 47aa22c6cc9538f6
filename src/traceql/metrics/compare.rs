//! `compare({selection}, topN, start, end)`: every span the query selects is either in the
//! selection (it matches the inner filter, within the optional time window) or in the
//! baseline, and counts once per bucket under each of its attributes' values. The answer
//! keeps the `topN` values per attribute and side, marks attributes with more, and gives
//! each attribute's total per side, labelled as Tempo labels them (`__meta_type`).

use std::collections::BTreeMap;

use super::super::ast::{Intrinsic, Scope, SpansetFilter};
use super::super::engine::{tempo_intrinsic_name, TraceView};
use super::super::eval::Value;
use super::{label_value, Label, LabelValue, MetricsError, MetricsEvaluator, MetricsOutput};
use super::{Sample, Series};

pub(super) const META_TYPE: &str = "__meta_type";
const META_ERROR: &str = "__meta_error";
const TOO_MANY_VALUES: &str = "__too_many_values__";
const MAX_TOP_N: i64 = 1000;
const DEFAULT_TOP_N: i64 = 10;

/// Intrinsics a span is grouped by besides its attributes (durations never are: their
/// cardinality is useless).
const GROUPED_INTRINSICS: [Intrinsic; 5] = [
    Intrinsic::Name,
    Intrinsic::Status,
    Intrinsic::Kind,
    Intrinsic::TraceRootService,
    Intrinsic::TraceRootName,
];

/// Checks compare()'s arguments as Tempo does; returns topN.
pub(super) fn check(
    top_n: Option<i64>,
    range_ns: Option<(i64, i64)>,
) -> Result<usize, MetricsError> {
    let n = top_n.unwrap_or(DEFAULT_TOP_N);
    if !(1..=MAX_TOP_N).contains(&n) {
        return Err(MetricsError::Invalid(format!(
            "compare() top number of values must be an integer between 1 and {MAX_TOP_N}"
        )));
    }
    if let Some((s, e)) = range_ns {
        if s <= 0 || e <= 0 {
            return Err(MetricsError::Invalid(
                "compare() timestamps must be positive integer unix nanoseconds".into(),
            ));
        }
        if e <= s {
            return Err(MetricsError::Invalid(
                "compare() end timestamp must be greater than start timestamp".into(),
            ));
        }
    }
    Ok(n as usize)
}

fn attribute_key(scope: Scope, name: &str) -> String {
    match scope {
        Scope::Resource => format!("resource.{name}"),
        _ => format!("span.{name}"),
    }
}

impl MetricsEvaluator {
    /// Counts span `i` under each of its attribute values on its side.
    pub(super) fn observe_compare(
        &mut self,
        trace: &dyn TraceView,
        i: usize,
        bucket: usize,
        filter: &SpansetFilter,
        range_ns: Option<(i64, i64)>,
    ) {
        let span = trace.span_view(i);
        let start = i64::try_from(trace.start_unix_nano(i)).unwrap_or(i64::MAX);
        let selected =
            range_ns.is_none_or(|(s, e)| start > s && start <= e) && filter.matches(span);
        let (side, total) = if selected {
            ("selection", "selection_total")
        } else {
            ("baseline", "baseline_total")
        };
        let mut attrs: Vec<(String, Value)> = Vec::new();
        span.each_attribute(&mut |scope, name, v| attrs.push((attribute_key(scope, name), v)));
        for intrinsic in GROUPED_INTRINSICS {
            if let Some(v) = span.intrinsic(intrinsic) {
                let key = match intrinsic {
                    Intrinsic::TraceRootService | Intrinsic::TraceRootName => {
                        intrinsic.name().to_owned()
                    }
                    _ => tempo_intrinsic_name(intrinsic).to_owned(),
                };
                attrs.push((key, v));
            }
        }
        for (key, v) in attrs {
            if matches!(v, Value::Duration(_) | Value::Array(_)) {
                continue;
            }
            let meta = |t: &str| Label {
                key: META_TYPE.into(),
                value: LabelValue::String(t.into()),
            };
            self.bump(
                vec![
                    meta(side),
                    Label {
                        key: key.clone(),
                        value: label_value(Some(v)),
                    },
                ],
                bucket,
            );
            self.bump(
                vec![
                    meta(total),
                    Label {
                        key,
                        value: LabelValue::Nil,
                    },
                ],
                bucket,
            );
        }
    }
}

/// The top values per attribute and side, the too-many-values markers, then the totals.
pub(super) fn finish(ev: MetricsEvaluator, top_n: usize) -> MetricsOutput {
    let buckets = ev.buckets;
    let mut values: BTreeMap<(String, String), Vec<(f64, Series)>> = BTreeMap::new();
    let mut totals = Vec::new();
    for (_, mut acc) in ev.series {
        let samples: Vec<Sample> = acc
            .cells
            .iter_mut()
            .enumerate()
            .map(|(i, c)| Sample {
                timestamp_ms: buckets.timestamp_ms(i),
                value: c.value(&ev.metrics.function, buckets.step_seconds(), 0.0),
            })
            .collect();
        let sum: f64 = samples.iter().map(|s| s.value).sum();
        let side = match acc.labels.first().map(|l| &l.value) {
            Some(LabelValue::String(s)) => s.clone(),
            _ => continue,
        };
        let attr = acc.labels.get(1).map(|l| l.key.clone()).unwrap_or_default();
        let series = Series {
            labels: acc.labels,
            samples,
            exemplars: Vec::new(),
        };
        if side.ends_with("_total") {
            totals.push(series);
        } else {
            values.entry((side, attr)).or_default().push((sum, series));
        }
    }
    let mut out = Vec::new();
    let mut too_many: BTreeMap<String, ()> = BTreeMap::new();
    for ((_, attr), mut group) in values {
        if group.len() > top_n {
            too_many.insert(attr, ());
        }
        // Largest totals first; the label order breaks ties, so answers are stable.
        group.sort_by(|a, b| b.0.total_cmp(&a.0));
        out.extend(group.into_iter().take(top_n).map(|(_, s)| s));
    }
    for attr in too_many.into_keys() {
        out.push(Series {
            labels: vec![
                Label {
                    key: META_ERROR.into(),
                    value: LabelValue::String(TOO_MANY_VALUES.into()),
                },
                Label {
                    key: attr,
                    value: LabelValue::Nil,
                },
            ],
            samples: Vec::new(),
            exemplars: Vec::new(),
        });
    }
    out.extend(totals);
    MetricsOutput {
        series: out,
        truncated: ev.truncated,
    }
}
