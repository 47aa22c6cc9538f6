//! The span-metrics processor: per (service, span name, kind, status, dimensions) a call
//! counter, a latency histogram and a size counter (`traces_spanmetrics_*`, Tempo's names,
//! labels and default buckets). One hash lookup per span finds all three.

use std::collections::HashMap;

use crate::config::generator::SpanMetricsConfig;
use crate::model::{KeyValue, Span};

use super::attrs;
use super::filter::{kind_str, status_str, SpanFilter};
use super::registry::{
    hist_series, key_values, sanitize_label_name, Emitter, Hist, KeyBuf, SeriesBudget,
};

pub(crate) const CALLS: &str = "traces_spanmetrics_calls_total";
pub(crate) const LATENCY: &str = "traces_spanmetrics_latency";
pub(crate) const SIZE: &str = "traces_spanmetrics_size_total";

/// Tempo's intrinsic label names; a configured dimension that sanitizes to one of them gets
/// a `__` prefix.
const INTRINSICS: [&str; 5] = [
    "service",
    "span_name",
    "span_kind",
    "status_code",
    "status_message",
];

struct SpanSeries {
    calls: f64,
    size: f64,
    latency: Hist,
    updated_ms: i64,
    new: bool,
}

pub(crate) struct SpanMetrics {
    intrinsic: [bool; 5],
    dimensions: Vec<String>,
    /// Label names in key order: the enabled intrinsics, then the dimensions.
    label_names: Vec<String>,
    buckets: Vec<f64>,
    filter: SpanFilter,
    max_value_len: usize,
    series: HashMap<Box<[u8]>, SpanSeries>,
    key: KeyBuf,
    pub(crate) filtered: u64,
}

impl SpanMetrics {
    pub(crate) fn new(cfg: &SpanMetricsConfig, filter: SpanFilter, max_value_len: usize) -> Self {
        let i = &cfg.intrinsic_dimensions;
        let intrinsic = [
            i.service,
            i.span_name,
            i.span_kind,
            i.status_code,
            i.status_message,
        ];
        let mut label_names: Vec<String> = INTRINSICS
            .iter()
            .zip(intrinsic)
            .filter(|(_, on)| *on)
            .map(|(n, _)| (*n).to_owned())
            .collect();
        for d in &cfg.dimensions {
            let l = sanitize_label_name(d);
            label_names.push(if INTRINSICS.contains(&l.as_str()) {
                format!("__{l}")
            } else {
                l
            });
        }
        Self {
            intrinsic,
            dimensions: cfg.dimensions.clone(),
            label_names,
            buckets: cfg.histogram_buckets.clone(),
            filter,
            max_value_len,
            series: HashMap::new(),
            key: KeyBuf::default(),
            filtered: 0,
        }
    }

    /// Series per entry: two counters and the histogram's.
    fn weight(&self) -> usize {
        2 + hist_series(&self.buckets)
    }

    pub(crate) fn series_count(&self) -> usize {
        self.series.len() * self.weight()
    }

    pub(crate) fn push(
        &mut self,
        resource: &[KeyValue],
        service: &str,
        span: &Span,
        trace_id: [u8; 16],
        now_ms: i64,
        budget: &mut SeriesBudget,
    ) {
        if !self.filter.keep(resource, span) {
            self.filtered += 1;
            return;
        }
        let max = self.max_value_len;
        let k = &mut self.key;
        k.clear();
        let status_message = span.status.as_ref().map_or("", |s| s.message.as_str());
        let intrinsic_values = [
            service,
            &span.name,
            kind_str(span.kind),
            status_str(span),
            status_message,
        ];
        for (v, on) in intrinsic_values.iter().zip(self.intrinsic) {
            if on {
                k.push(v, max);
            }
        }
        for d in &self.dimensions {
            let v = attrs::find(d, &[resource, span.attributes.as_slice()]).unwrap_or_default();
            k.push(&v, max);
        }
        let latency = if span.start_time_unix_nano < span.end_time_unix_nano {
            (span.end_time_unix_nano - span.start_time_unix_nano) as f64 / 1e9
        } else {
            0.0
        };
        let size = prost::Message::encoded_len(span) as f64;
        let update = |s: &mut SpanSeries, buckets: &[f64]| {
            s.calls += 1.0;
            s.size += size;
            s.latency.observe(buckets, latency, Some(trace_id));
            s.updated_ms = now_ms;
        };
        if let Some(s) = self.series.get_mut(k.as_bytes()) {
            update(s, &self.buckets);
            return;
        }
        if !budget.admit(2 + hist_series(&self.buckets)) {
            return;
        }
        let mut s = SpanSeries {
            calls: 0.0,
            size: 0.0,
            latency: Hist::new(&self.buckets),
            updated_ms: now_ms,
            new: true,
        };
        update(&mut s, &self.buckets);
        self.series.insert(k.as_bytes().into(), s);
    }

    /// Emits every series and forgets those not updated since `stale_before_ms`.
    pub(crate) fn collect(&mut self, e: &mut Emitter, stale_before_ms: i64) {
        self.series.retain(|_, s| s.updated_ms >= stale_before_ms);
        for (key, s) in &mut self.series {
            let values = key_values(key);
            let labels: Vec<(&str, &str)> = self
                .label_names
                .iter()
                .map(String::as_str)
                .zip(values)
                .collect();
            e.counter(CALLS, &labels, s.calls, s.new);
            e.histogram(LATENCY, &labels, &self.buckets, &mut s.latency, s.new);
            e.counter(SIZE, &labels, s.size, s.new);
            s.new = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::generator::FilterPolicy;
    use crate::generator::remote_write::TimeSeries;
    use crate::model::{any_value, span, status, AnyValue, Status};

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(v.into())),
            }),
            ..Default::default()
        }
    }

    fn span_of(name: &str, kind: span::SpanKind, ms: u64, error: bool) -> Span {
        Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            name: name.into(),
            kind: kind as i32,
            start_time_unix_nano: 1_000_000_000,
            end_time_unix_nano: 1_000_000_000 + ms * 1_000_000,
            status: error.then(|| Status {
                code: status::StatusCode::Error as i32,
                message: "boom".into(),
            }),
            attributes: vec![kv("http.method", "GET")],
            ..Default::default()
        }
    }

    fn value(out: &[TimeSeries], name: &str, want: &[(&str, &str)]) -> Option<f64> {
        out.iter()
            .find(|t| {
                t.labels
                    .iter()
                    .any(|l| l.name == "__name__" && l.value == name)
                    && want
                        .iter()
                        .all(|(n, v)| t.labels.iter().any(|l| l.name == *n && l.value == *v))
            })
            .map(|t| t.samples.last().unwrap().value)
    }

    fn collect(p: &mut SpanMetrics) -> Vec<TimeSeries> {
        let ext = BTreeMap::new();
        let mut e = Emitter::new(&ext, 1_000_000, 985_000);
        p.collect(&mut e, 0);
        e.out
    }

    #[test]
    fn counts_latency_and_size_per_label_set() {
        let cfg = SpanMetricsConfig {
            dimensions: vec!["http.method".into(), "service".into(), "region".into()],
            ..Default::default()
        };
        let mut p = SpanMetrics::new(&cfg, SpanFilter::default(), 2048);
        let res = vec![
            kv("service.name", "api"),
            kv("region", "eu"),
            kv("service", "svc-attr"),
        ];
        let mut budget = SeriesBudget::default();
        let spans = [
            span_of("GET /a", span::SpanKind::Server, 3, false),
            span_of("GET /a", span::SpanKind::Server, 5, false),
            span_of("GET /a", span::SpanKind::Server, 40, true),
        ];
        for s in &spans {
            p.push(&res, "api", s, [1; 16], 10, &mut budget);
        }
        assert_eq!(p.series_count(), 2 * (2 + 14 + 3));
        let out = collect(&mut p);
        let ok = [
            ("service", "api"),
            ("span_name", "GET /a"),
            ("span_kind", "SPAN_KIND_SERVER"),
            ("status_code", "STATUS_CODE_UNSET"),
            ("http_method", "GET"),
            ("region", "eu"),
            ("__service", "svc-attr"),
        ];
        assert_eq!(value(&out, CALLS, &ok), Some(2.0));
        let err = [("status_code", "STATUS_CODE_ERROR")];
        assert_eq!(value(&out, CALLS, &err), Some(1.0));
        // Buckets 0.002, 0.004, 0.008 ...: 3 ms and 5 ms fall in le=0.004 and le=0.008.
        let bucket = |le: &str| {
            let mut w = ok.to_vec();
            w.push(("le", le));
            value(&out, "traces_spanmetrics_latency_bucket", &w)
        };
        assert_eq!(bucket("0.002"), Some(0.0));
        assert_eq!(bucket("0.004"), Some(1.0));
        assert_eq!(bucket("0.008"), Some(2.0));
        assert_eq!(bucket("16.384"), Some(2.0));
        assert_eq!(bucket("+Inf"), Some(2.0));
        let sum = value(&out, "traces_spanmetrics_latency_sum", &ok).unwrap();
        assert!((sum - 0.008).abs() < 1e-12, "{sum}");
        assert_eq!(
            value(&out, "traces_spanmetrics_latency_count", &ok),
            Some(2.0)
        );
        let size = prost::Message::encoded_len(&spans[0]) as f64;
        assert_eq!(value(&out, SIZE, &ok), Some(2.0 * size));
        // A new series starts with a zero sample.
        let calls = out
            .iter()
            .find(|t| t.labels.iter().any(|l| l.value == CALLS))
            .unwrap();
        assert_eq!(calls.samples.len(), 2);
        assert_eq!(calls.samples[0].value, 0.0);
        // The next collection sends one sample per series.
        let again = collect(&mut p);
        assert!(again.iter().all(|t| t.samples.len() == 1));
        assert_eq!(value(&again, CALLS, &ok), Some(2.0));
    }

    #[test]
    fn intrinsic_dimensions_can_be_turned_off_and_filters_apply() {
        let mut cfg = SpanMetricsConfig::default();
        cfg.intrinsic_dimensions.span_name = false;
        cfg.intrinsic_dimensions.status_message = true;
        let filter: Vec<FilterPolicy> = serde_yaml_ng::from_str(
            "- include:\n    match_type: strict\n    attributes:\n      - key: kind\n        value: SPAN_KIND_SERVER\n",
        )
        .unwrap();
        let mut p = SpanMetrics::new(&cfg, SpanFilter::new(&filter).unwrap(), 2048);
        let mut budget = SeriesBudget::default();
        p.push(
            &[],
            "api",
            &span_of("a", span::SpanKind::Server, 1, true),
            [1; 16],
            10,
            &mut budget,
        );
        p.push(
            &[],
            "api",
            &span_of("b", span::SpanKind::Server, 1, true),
            [1; 16],
            10,
            &mut budget,
        );
        p.push(
            &[],
            "api",
            &span_of("c", span::SpanKind::Client, 1, true),
            [1; 16],
            10,
            &mut budget,
        );
        assert_eq!(p.filtered, 1);
        let out = collect(&mut p);
        assert_eq!(
            value(
                &out,
                CALLS,
                &[("status_message", "boom"), ("service", "api")]
            ),
            Some(2.0),
            "span names are not a label, so both spans share a series"
        );
        assert!(out
            .iter()
            .all(|t| t.labels.iter().all(|l| l.name != "span_name")));
    }

    #[test]
    fn stale_series_are_dropped_and_the_budget_refuses_new_ones() {
        let mut p = SpanMetrics::new(&SpanMetricsConfig::default(), SpanFilter::default(), 2048);
        let mut budget = SeriesBudget {
            max: p.weight(),
            ..Default::default()
        };
        p.push(
            &[],
            "a",
            &span_of("x", span::SpanKind::Server, 1, false),
            [1; 16],
            100,
            &mut budget,
        );
        p.push(
            &[],
            "a",
            &span_of("y", span::SpanKind::Server, 1, false),
            [1; 16],
            100,
            &mut budget,
        );
        assert_eq!(budget.refused, 1);
        assert_eq!(p.series.len(), 1);
        let ext = BTreeMap::new();
        let mut e = Emitter::new(&ext, 1_000_000, 0);
        p.collect(&mut e, 101);
        assert!(e.out.is_empty());
        assert_eq!(p.series_count(), 0);
    }
}
