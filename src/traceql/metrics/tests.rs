//! Golden metrics cases (`integration/traceql/metrics_cases.txt`) over a small hand-built
//! data set; every expectation there was worked out by hand from the spans below.

use crate::model::{
    any_value, status, AnyValue, KeyValue, Resource, ResourceSpans, ScopeSpans, Span,
    Status as OtlpStatus,
};
use crate::traceql::{parse, OtlpTrace};

use super::*;

const CASES: &str = include_str!("../../../integration/traceql/metrics_cases.txt");

/// A multiple of every step the cases use, so alignment does not move the range.
// A multiple of 60 s, so steps of 5, 10, 20 and 30 s all align on T0 (Tempo aligns to the epoch).
const T0: u64 = 1_700_000_040 * SECOND;
const SECOND: u64 = 1_000_000_000;
const MS: u64 = 1_000_000;
const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const INTERNAL: i32 = 1;

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

struct SpanSpec {
    id: u8,
    parent: u8,
    name: &'static str,
    kind: i32,
    start_ms: u64,
    duration_ms: u64,
    error: bool,
    http_status: Option<i64>,
}

fn span(trace: u8, s: &SpanSpec) -> Span {
    let mut attributes = Vec::new();
    if let Some(code) = s.http_status {
        attributes.push(kv("http.status_code", any_value::Value::IntValue(code)));
    }
    Span {
        trace_id: vec![trace; 16],
        span_id: vec![trace, s.id, 0, 0, 0, 0, 0, 1],
        parent_span_id: if s.parent == 0 {
            Vec::new()
        } else {
            vec![trace, s.parent, 0, 0, 0, 0, 0, 1]
        },
        name: s.name.into(),
        kind: s.kind,
        start_time_unix_nano: T0 + s.start_ms * MS,
        end_time_unix_nano: T0 + (s.start_ms + s.duration_ms) * MS,
        attributes,
        status: Some(OtlpStatus {
            code: if s.error {
                status::StatusCode::Error as i32
            } else {
                status::StatusCode::Ok as i32
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn batch(trace: u8, service: &str, spans: &[SpanSpec]) -> ResourceSpans {
    ResourceSpans {
        resource: Some(Resource {
            attributes: vec![kv(
                "service.name",
                any_value::Value::StringValue(service.into()),
            )],
            ..Default::default()
        }),
        scope_spans: vec![ScopeSpans {
            spans: spans.iter().map(|s| span(trace, s)).collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[allow(clippy::too_many_arguments)]
fn sp(
    id: u8,
    parent: u8,
    name: &'static str,
    kind: i32,
    start_ms: u64,
    duration_ms: u64,
    error: bool,
    http_status: Option<i64>,
) -> SpanSpec {
    SpanSpec {
        id,
        parent,
        name,
        kind,
        start_ms,
        duration_ms,
        error,
        http_status,
    }
}

/// Three traces; start times relative to T0 (the range under test is (T0, T0 + 30s]).
fn traces() -> Vec<Vec<ResourceSpans>> {
    vec![
        vec![batch(
            1,
            "api",
            &[
                sp(1, 0, "GET /", SERVER, 1_000, 250, false, Some(200)),
                // Exactly on a step boundary: belongs to the bucket ending at +10s.
                sp(2, 1, "db", CLIENT, 10_000, 500, true, None),
            ],
        )],
        vec![
            batch(
                2,
                "api",
                &[sp(1, 0, "GET /", SERVER, 15_000, 125, true, Some(500))],
            ),
            batch(
                2,
                "db",
                &[sp(2, 1, "query", SERVER, 20_000, 375, false, None)],
            ),
        ],
        vec![batch(
            3,
            "web",
            &[
                sp(1, 0, "GET /", SERVER, 25_000, 2_000, false, Some(200)),
                // On the range's start: the first bucket, (T0 - 10s, T0].
                sp(2, 1, "render", INTERNAL, 0, 1_000, false, None),
                // After the range's end: not counted.
                sp(3, 1, "late", INTERNAL, 31_000, 10, false, None),
            ],
        )],
    ]
}

fn run(query: &str, step_s: u64, max_series: usize) -> MetricsOutput {
    let q = parse(query).unwrap_or_else(|e| panic!("{query}: {e}"));
    let buckets = Buckets::range(T0, T0 + 30 * SECOND, step_s * SECOND);
    let mut ev = MetricsEvaluator::new(&q, buckets, max_series, 0).expect("metrics query");
    for t in traces() {
        ev.observe(&OtlpTrace::new(&t)).expect("evaluates");
    }
    ev.finish()
}

fn render_value(v: &LabelValue) -> String {
    match v {
        LabelValue::Nil => "nil".into(),
        LabelValue::String(s) => format!("{s:?}"),
        LabelValue::Int(i) => i.to_string(),
        LabelValue::Float(f) => f.to_string(),
        LabelValue::Bool(b) => b.to_string(),
    }
}

/// `{k=v, ...} t:v t:v` with t in seconds after T0.
fn render(out: &MetricsOutput) -> Vec<String> {
    if out.series.is_empty() {
        return vec!["(none)".into()];
    }
    out.series
        .iter()
        .map(|s| {
            let labels: Vec<String> = s
                .labels
                .iter()
                .map(|l| format!("{}={}", l.key, render_value(&l.value)))
                .collect();
            let samples: Vec<String> = s
                .samples
                .iter()
                .map(|p| {
                    let t = (p.timestamp_ms - (T0 / MS) as i64) / 1000;
                    format!("{t}:{}", p.value)
                })
                .collect();
            format!("{{{}}} {}", labels.join(", "), samples.join(" "))
                .trim_end()
                .to_owned()
        })
        .collect()
}

#[test]
fn golden_metrics_cases() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in CASES.split("\n\n") {
        let lines: Vec<&str> = case
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .collect();
        let Some((head, expected)) = lines.split_first() else {
            continue;
        };
        // `step=5 | query` or just the query (step 10s).
        let (step, query) = match head.strip_prefix("step=") {
            Some(rest) => {
                let (s, q) = rest.split_once(' ').expect("step=N query");
                (s.parse().expect("step in seconds"), q)
            }
            None => (10, *head),
        };
        let got = render(&run(query, step, 0));
        checked += 1;
        if got != expected.iter().map(|s| s.to_string()).collect::<Vec<_>>() {
            failures.push(format!(
                "{query}\n  expected: {expected:#?}\n  got:      {got:#?}"
            ));
        }
    }
    assert!(checked >= 10, "only {checked} cases read");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn max_series_truncates_and_says_so() {
    let out = run("{ } | count_over_time() by (name)", 10, 2);
    assert!(out.truncated);
    assert_eq!(out.series.len(), 2);
    let all = run("{ } | count_over_time() by (name)", 10, 0);
    assert!(!all.truncated);
    // GET /, db, query, render: `late` starts after the range and forms no series.
    assert_eq!(all.series.len(), 4);
}

#[test]
fn merging_partial_evaluators_equals_one_pass() {
    let q = parse("{ } | quantile_over_time(duration, 0.5) by (resource.service.name)").unwrap();
    let buckets = Buckets::range(T0, T0 + 30 * SECOND, 10 * SECOND);
    let mut one = MetricsEvaluator::new(&q, buckets, 0, 10).unwrap();
    let mut first = MetricsEvaluator::new(&q, buckets, 0, 10).unwrap();
    let mut second = MetricsEvaluator::new(&q, buckets, 0, 10).unwrap();
    for (n, t) in traces().iter().enumerate() {
        one.observe(&OtlpTrace::new(t)).unwrap();
        let part = if n % 2 == 0 { &mut first } else { &mut second };
        part.observe(&OtlpTrace::new(t)).unwrap();
    }
    first.merge(second);
    assert_eq!(first.finish(), one.finish());
}

#[test]
fn exemplars_carry_matching_trace_ids() {
    let q = parse("{ status = error } | count_over_time()").unwrap();
    let buckets = Buckets::range(T0, T0 + 30 * SECOND, 10 * SECOND);
    let mut ev = MetricsEvaluator::new(&q, buckets, 0, 100).unwrap();
    for t in traces() {
        ev.observe(&OtlpTrace::new(&t)).unwrap();
    }
    let out = ev.finish();
    let ids: Vec<String> = out.series[0]
        .exemplars
        .iter()
        .map(|e| render_value(&e.labels[0].value))
        .collect();
    assert_eq!(
        ids,
        vec![
            format!("{:?}", "01".repeat(16)),
            format!("{:?}", "02".repeat(16))
        ]
    );
}

#[test]
fn search_queries_are_refused() {
    let q = parse("{ }").unwrap();
    let buckets = Buckets::range(T0, T0 + 30 * SECOND, 10 * SECOND);
    assert!(matches!(
        MetricsEvaluator::new(&q, buckets, 0, 0),
        Err(MetricsError::NotMetrics)
    ));
}

/// Queries of the shapes Grafana's Traces Drilldown sends (root spans by `nestedSetParent`,
/// `with(sample=true)`, errors, durations, comparisons): each parses, runs, and answers.
#[test]
fn traces_drilldown_query_shapes_run() {
    for q in [
        "{nestedSetParent<0 && true} | rate() by(resource.service.name) with(sample=true)",
        "{nestedSetParent<0 && status=error} | rate() by(resource.service.name)",
        "{true && status=error} | rate() with(sample=true)",
        "{nestedSetParent<0} | quantile_over_time(duration, 0.9) with(sample=true)",
        "{nestedSetParent<0} | quantile_over_time(duration, 0.5, 0.9, 0.99) by(resource.service.name)",
        "{nestedSetParent<0} | histogram_over_time(duration) with(sample=true)",
        "{nestedSetParent<0} | compare({status = error}, 10)",
        "{} | compare({duration >= 100ms && duration <= 300ms})",
        "{nestedSetParent<0} | count_over_time() by (span.http.status_code) | topk(2)",
    ] {
        let out = run(q, 10, 0);
        assert!(!out.series.is_empty(), "{q}: no series");
    }
}
