//! Engine tests: the data-driven cases in `integration/traceql/engine_cases.txt` over a fixed
//! set of hand-built traces, and targeted checks of structural operators and pipelines.
//!
//! `VIVACE_BLESS=1 cargo test --lib traceql` rewrites the expectations; review the diff.

use crate::model::{
    any_value, span, status, AnyValue, ArrayValue, InstrumentationScope, KeyValue, Resource,
    ResourceSpans, ScopeSpans, Span, Status as OtlpStatus,
};

use super::*;

const CASES: &str = include_str!("../../integration/traceql/engine_cases.txt");
const CASES_PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/integration/traceql/engine_cases.txt"
);

// ---------------------------------------------------------------------------------------------
// Building traces

const T0: u64 = 1_700_000_000_000_000_000;
const MS: u64 = 1_000_000;

fn any(value: any_value::Value) -> Option<AnyValue> {
    Some(AnyValue { value: Some(value) })
}

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: any(value),
        ..Default::default()
    }
}

fn s(key: &str, v: &str) -> KeyValue {
    kv(key, any_value::Value::StringValue(v.into()))
}

fn i(key: &str, v: i64) -> KeyValue {
    kv(key, any_value::Value::IntValue(v))
}

fn f(key: &str, v: f64) -> KeyValue {
    kv(key, any_value::Value::DoubleValue(v))
}

fn b(key: &str, v: bool) -> KeyValue {
    kv(key, any_value::Value::BoolValue(v))
}

fn strs(key: &str, vs: &[&str]) -> KeyValue {
    let values = vs
        .iter()
        .map(|v| AnyValue {
            value: Some(any_value::Value::StringValue((*v).into())),
        })
        .collect();
    kv(key, any_value::Value::ArrayValue(ArrayValue { values }))
}

fn ints(key: &str, vs: &[i64]) -> KeyValue {
    let values = vs
        .iter()
        .map(|v| AnyValue {
            value: Some(any_value::Value::IntValue(*v)),
        })
        .collect();
    kv(key, any_value::Value::ArrayValue(ArrayValue { values }))
}

const INTERNAL: i32 = 1;
const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const PRODUCER: i32 = 4;
const CONSUMER: i32 = 5;

/// A trace under construction: `resource` and `scope` open new batches, `span` adds to the
/// current one. Span IDs are `[trace, id, 0, ..]`; parent 0 means a root.
struct Tb {
    n: u8,
    batches: Vec<ResourceSpans>,
}

struct Sb {
    span: Span,
}

impl Tb {
    fn new(n: u8) -> Tb {
        Tb {
            n,
            batches: Vec::new(),
        }
    }

    fn resource(mut self, service: &str, mut attributes: Vec<KeyValue>) -> Tb {
        attributes.insert(0, s("service.name", service));
        self.batches.push(ResourceSpans {
            resource: Some(Resource {
                attributes,
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans::default()],
            ..Default::default()
        });
        self
    }

    fn scope(mut self, name: &str, version: &str, attributes: Vec<KeyValue>) -> Tb {
        let scope = ScopeSpans {
            scope: Some(InstrumentationScope {
                name: name.into(),
                version: version.into(),
                attributes,
                ..Default::default()
            }),
            ..Default::default()
        };
        let batch = self.batches.last_mut().expect("resource first");
        if batch.scope_spans.last().is_some_and(|s| s.spans.is_empty()) {
            batch.scope_spans.pop();
        }
        batch.scope_spans.push(scope);
        self
    }

    fn span(mut self, sb: Sb) -> Tb {
        let mut span = sb.span;
        span.trace_id = vec![self.n; 16];
        span.span_id[0] = self.n;
        if !span.parent_span_id.is_empty() {
            span.parent_span_id[0] = self.n;
        }
        let batch = self.batches.last_mut().expect("resource first");
        batch
            .scope_spans
            .last_mut()
            .expect("scope")
            .spans
            .push(span);
        self
    }
}

fn sp(id: u8, parent: u8, name: &str, kind: i32, start_ms: u64, end_ms: u64) -> Sb {
    let id_bytes = |id: u8| vec![0, id, 0, 0, 0, 0, 0, 0];
    Sb {
        span: Span {
            span_id: id_bytes(id),
            parent_span_id: if parent == 0 {
                Vec::new()
            } else {
                id_bytes(parent)
            },
            name: name.into(),
            kind,
            start_time_unix_nano: T0 + start_ms * MS,
            end_time_unix_nano: T0 + end_ms * MS,
            ..Default::default()
        },
    }
}

impl Sb {
    fn attrs(mut self, attributes: Vec<KeyValue>) -> Sb {
        self.span.attributes = attributes;
        self
    }

    fn error(mut self, message: &str) -> Sb {
        self.span.status = Some(OtlpStatus {
            message: message.into(),
            code: status::StatusCode::Error as i32,
        });
        self
    }

    fn ok(mut self) -> Sb {
        self.span.status = Some(OtlpStatus {
            message: String::new(),
            code: status::StatusCode::Ok as i32,
        });
        self
    }

    fn event(mut self, name: &str, at_ms: u64, attributes: Vec<KeyValue>) -> Sb {
        let start = self.span.start_time_unix_nano;
        self.span.events.push(span::Event {
            time_unix_nano: start + at_ms * MS,
            name: name.into(),
            attributes,
            ..Default::default()
        });
        self
    }

    fn link(mut self, trace: u8, span_id: u8, attributes: Vec<KeyValue>) -> Sb {
        self.span.links.push(span::Link {
            trace_id: vec![trace; 16],
            span_id: vec![trace, span_id, 0, 0, 0, 0, 0, 0],
            attributes,
            ..Default::default()
        });
        self
    }
}

/// The fixed data set the cases run against, named `t01`..`t14`.
pub(crate) fn dataset() -> Vec<(String, Vec<ResourceSpans>)> {
    let traces = vec![
        // t01: a cart read across two services.
        Tb::new(1)
            .resource("frontend", vec![s("deployment.environment", "prod")])
            .scope("net/http", "1.0", vec![])
            .span(sp(1, 0, "GET /cart", SERVER, 0, 100).attrs(vec![
                s("http.method", "GET"),
                i("http.status_code", 200),
                s("http.route", "/cart"),
            ]))
            .resource("cart", vec![])
            .span(sp(2, 1, "cart.get", SERVER, 10, 90).attrs(vec![s("http.method", "GET")]))
            .span(
                sp(3, 2, "db.query", CLIENT, 20, 40)
                    .attrs(vec![s("db.system", "postgres"), i("db.rows", 12)]),
            )
            .span(sp(4, 2, "cache.get", CLIENT, 45, 50).attrs(vec![s("db.system", "redis")])),
        // t02: a failed checkout with an exception event.
        Tb::new(2)
            .resource("frontend", vec![s("deployment.environment", "prod")])
            .span(
                sp(1, 0, "POST /checkout", SERVER, 0, 500)
                    .attrs(vec![s("http.method", "POST"), i("http.status_code", 500)])
                    .error(""),
            )
            .resource("checkout", vec![])
            .span(sp(2, 1, "checkout", INTERNAL, 20, 480).error("payment failed"))
            .resource("payment", vec![s("region", "eu")])
            .span(sp(3, 2, "pay", CLIENT, 30, 470).error("timeout").event(
                "exception",
                430,
                vec![
                    s("exception.type", "IOError"),
                    s("exception.message", "connection reset"),
                ],
            ))
            .span(
                sp(4, 2, "db.query", CLIENT, 25, 28)
                    .attrs(vec![s("db.system", "postgres")])
                    .ok(),
            ),
        // t03: a three-second batch job with numbered steps.
        Tb::new(3)
            .resource("worker", vec![])
            .span(sp(1, 0, "batch-job", INTERNAL, 0, 3000))
            .span(sp(2, 1, "step-1", INTERNAL, 100, 900).attrs(vec![i("step", 1)]))
            .span(sp(3, 1, "step-2", INTERNAL, 1000, 1900).attrs(vec![i("step", 2)]))
            .span(sp(4, 1, "step-3", INTERNAL, 2000, 2900).attrs(vec![i("step", 3)]))
            .span(sp(5, 3, "retry", INTERNAL, 1200, 1300).attrs(vec![i("attempt", 2)])),
        // t04: messaging, the consumer links back to t01's root.
        Tb::new(4)
            .resource("orders", vec![])
            .span(sp(1, 0, "publish", PRODUCER, 0, 10).attrs(vec![s("messaging.system", "kafka")]))
            .resource("shipping", vec![])
            .span(sp(2, 1, "consume", CONSUMER, 50, 80).link(1, 1, vec![s("link.kind", "follows")]))
            .span(sp(3, 2, "ship", INTERNAL, 60, 75)),
        // t05: no root received, two orphans.
        Tb::new(5)
            .resource("late", vec![])
            .span(sp(1, 99, "orphan-a", INTERNAL, 0, 50))
            .span(sp(2, 1, "orphan-b", INTERNAL, 10, 20))
            .span(sp(3, 98, "orphan-c", INTERNAL, 5, 8)),
        // t06: array attributes.
        Tb::new(6)
            .resource("arrays", vec![strs("host.tags", &["blue", "green"])])
            .span(sp(1, 0, "tagged", SERVER, 0, 5).attrs(vec![
                strs("tags", &["a", "b", "c"]),
                ints("codes", &[200, 404]),
            ]))
            .span(sp(2, 1, "plain", INTERNAL, 1, 2).attrs(vec![strs("tags", &["z"])])),
        // t07: instrumentation scopes.
        Tb::new(7)
            .resource("grpc-svc", vec![])
            .scope(
                "io.opentelemetry.grpc",
                "1.2.0",
                vec![s("otel.scope.kind", "rpc")],
            )
            .span(sp(1, 0, "grpc.call", CLIENT, 0, 30).attrs(vec![s("rpc.system", "grpc")]))
            .scope("manual", "", vec![])
            .span(sp(2, 1, "manual-work", INTERNAL, 5, 25)),
        // t08: the same attribute name on span and resource.
        Tb::new(8)
            .resource("regional", vec![s("region", "res-us")])
            .span(sp(1, 0, "regional-root", SERVER, 0, 40).attrs(vec![s("region", "span-eu")]))
            .span(sp(2, 1, "regional-child", INTERNAL, 10, 20)),
        // t09: a chain five deep.
        Tb::new(9)
            .resource("chain", vec![])
            .span(sp(1, 0, "l1", INTERNAL, 0, 100))
            .span(sp(2, 1, "l2", INTERNAL, 10, 90))
            .span(sp(3, 2, "l3", INTERNAL, 20, 80).error("deep"))
            .span(sp(4, 3, "l4", INTERNAL, 30, 70))
            .span(sp(5, 4, "l5", INTERNAL, 40, 60)),
        // t10: a fan-out over two services with errors in both.
        Tb::new(10)
            .resource("alpha", vec![])
            .span(sp(1, 0, "fanout", SERVER, 0, 200))
            .span(sp(2, 1, "a1", CLIENT, 10, 50).error("a1 failed"))
            .span(sp(3, 1, "a2", CLIENT, 60, 100).error("a2 failed"))
            .resource("beta", vec![])
            .span(sp(4, 1, "b1", CLIENT, 20, 30))
            .span(sp(5, 1, "b2", CLIENT, 110, 150).error("b2 failed"))
            .span(sp(6, 5, "b3", INTERNAL, 120, 130)),
        // t11: numbers of every kind.
        Tb::new(11)
            .resource("numbers", vec![])
            .span(
                sp(1, 0, "n-root", SERVER, 0, 1000).attrs(vec![f("ratio", 0.5), i("bytes", 1000)]),
            )
            .span(
                sp(2, 1, "n-child", INTERNAL, 100, 400)
                    .attrs(vec![f("ratio", 1.5), i("bytes", 2_000_000)]),
            )
            .span(
                sp(3, 2, "n-leaf", INTERNAL, 150, 160).attrs(vec![i("bytes", -5), b("flag", true)]),
            ),
        // t12: a single span.
        Tb::new(12)
            .resource("solo", vec![])
            .span(sp(1, 0, "lonely", 0, 0, 1)),
        // t13: several events on one span.
        Tb::new(13)
            .resource("events-svc", vec![])
            .span(
                sp(1, 0, "eventful", SERVER, 0, 100)
                    .event("retry", 10, vec![i("attempt", 1)])
                    .event("retry", 30, vec![i("attempt", 2)])
                    .event("done", 90, vec![]),
            )
            .span(sp(2, 1, "quiet", INTERNAL, 20, 40)),
        // t14: a gateway with three sibling calls.
        Tb::new(14)
            .resource("gateway", vec![])
            .span(sp(1, 0, "gateway", SERVER, 0, 60).attrs(vec![s("http.route", "/api")]))
            .span(sp(2, 1, "GET /a", CLIENT, 10, 20).attrs(vec![s("http.method", "GET")]))
            .span(
                sp(3, 1, "GET /b", CLIENT, 25, 35)
                    .attrs(vec![s("http.method", "GET"), i("http.status_code", 404)]),
            )
            .span(sp(4, 1, "POST /c", CLIENT, 40, 50).attrs(vec![s("http.method", "POST")])),
    ];
    traces
        .into_iter()
        .map(|t| (format!("t{:02}", t.n), t.batches))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Rendering results

fn render_value(value: &Value) -> String {
    match value {
        Value::String(v) => format!("{v:?}"),
        Value::Int(v) => v.to_string(),
        Value::Float(v) => format!("{v:?}"),
        Value::Bool(v) => v.to_string(),
        Value::Duration(v) => Static::Duration(*v).to_string(),
        Value::Status(v) => Static::Status(*v).to_string(),
        Value::Kind(v) => Static::Kind(*v).to_string(),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(render_value).collect();
            format!("[{}]", items.join(", "))
        }
    }
}

fn render_pairs(pairs: &[(String, Value)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", render_value(v)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One line per matching spanset: `t01 [span{attr=value}, span] count()=2`.
fn outcome(query: &str, data: &[(String, Vec<ResourceSpans>)]) -> Vec<String> {
    let parsed = match parse(query) {
        Ok(parsed) => parsed,
        Err(err) => return vec![format!("parse error: {err}")],
    };
    // Errors that do not depend on the data (metrics queries) are reported once.
    if let Err(err) = evaluate(&parsed, &OtlpTrace::new(&[])) {
        return vec![format!("error: {err}")];
    }
    let mut lines = Vec::new();
    for (name, batches) in data {
        let trace = OtlpTrace::new(batches);
        match evaluate(&parsed, &trace) {
            Err(err) => lines.push(format!("{name} error: {err}")),
            Ok(matches) => {
                for m in matches {
                    let spans: Vec<String> = m
                        .spans
                        .iter()
                        .zip(&m.span_attributes)
                        .map(|(&i, attrs)| {
                            let span_name = &trace.span(i).name;
                            if attrs.is_empty() {
                                span_name.clone()
                            } else {
                                format!("{span_name}{{{}}}", render_pairs(attrs))
                            }
                        })
                        .collect();
                    let mut line = format!("{name} [{}]", spans.join(", "));
                    if !m.attributes.is_empty() {
                        line.push(' ');
                        line.push_str(&render_pairs(&m.attributes));
                    }
                    lines.push(line);
                }
            }
        }
    }
    if lines.is_empty() {
        lines.push("none".into());
    }
    lines
}

/// The cases: `> query` followed by its expected lines, up to a blank line.
pub(crate) fn cases() -> Vec<(&'static str, Vec<&'static str>)> {
    let mut out: Vec<(&str, Vec<&str>)> = Vec::new();
    for line in CASES.lines() {
        if let Some(query) = line.strip_prefix("> ") {
            out.push((query, Vec::new()));
        } else if line.is_empty() || line.starts_with('#') {
            continue;
        } else if let Some(last) = out.last_mut() {
            last.1.push(line);
        }
    }
    out
}

#[test]
fn engine_cases() {
    let data = dataset();
    if std::env::var("VIVACE_BLESS").is_ok_and(|v| v == "1") {
        bless(&data);
        return;
    }
    let mut failures = Vec::new();
    for (query, expected) in cases() {
        let actual = outcome(query, &data);
        if actual != expected {
            failures.push(format!(
                "> {query}\n  expected:\n    {}\n  actual:\n    {}",
                expected.join("\n    "),
                actual.join("\n    ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} engine cases differ (VIVACE_BLESS=1 rewrites them):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn engine_cases_are_many() {
    assert!(cases().len() >= 80, "only {} cases", cases().len());
}

fn bless(data: &[(String, Vec<ResourceSpans>)]) {
    let mut out = String::new();
    let mut in_case = false;
    for line in CASES.lines() {
        if let Some(query) = line.strip_prefix("> ") {
            out.push_str(line);
            out.push('\n');
            for result in outcome(query, data) {
                out.push_str(&result);
                out.push('\n');
            }
            in_case = true;
        } else if line.is_empty() || line.starts_with('#') {
            out.push_str(line);
            out.push('\n');
            in_case = false;
        } else if !in_case {
            out.push_str(line);
            out.push('\n');
        }
    }
    std::fs::write(CASES_PATH, out).expect("write the cases");
}

// ---------------------------------------------------------------------------------------------
// Targeted tests

fn run(query: &str, batches: &[ResourceSpans]) -> Vec<SpansetMatch> {
    let trace = OtlpTrace::new(batches);
    evaluate(&parse(query).expect("parses"), &trace).expect("evaluates")
}

fn names(batches: &[ResourceSpans], m: &SpansetMatch) -> Vec<String> {
    let trace = OtlpTrace::new(batches);
    let mut names: Vec<String> = m
        .spans
        .iter()
        .map(|&i| trace.span(i).name.clone())
        .collect();
    names.sort();
    names
}

/// The spans of the single spanset `query` returns, sorted by name; empty for no match.
fn matched(query: &str, batches: &[ResourceSpans]) -> Vec<String> {
    let result = run(query, batches);
    assert!(result.len() <= 1, "{query}: {} spansets", result.len());
    result
        .first()
        .map(|m| names(batches, m))
        .unwrap_or_default()
}

/// root ─┬─ a ─┬─ a1
///       │     └─ a2 ── a2x
///       └─ b ─── b1
fn tree() -> Vec<ResourceSpans> {
    let leaf = |id, parent, name: &str, start| {
        sp(id, parent, name, INTERNAL, start, start + 1).attrs(vec![s("role", name)])
    };
    Tb::new(42)
        .resource("tree", vec![])
        .span(leaf(1, 0, "root", 0))
        .span(leaf(2, 1, "a", 1))
        .span(leaf(3, 2, "a1", 2))
        .span(leaf(4, 2, "a2", 3))
        .span(leaf(5, 4, "a2x", 4))
        .span(leaf(6, 1, "b", 5))
        .span(leaf(7, 6, "b1", 6))
        .batches
}

fn v(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

#[test]
fn structural_operators_on_a_tree() {
    let t = tree();
    let cases: [(&str, &[&str]); 22] = [
        (r#"{ span.role = "a" } > { }"#, &["a1", "a2"]),
        (r#"{ span.role = "a" } >> { }"#, &["a1", "a2", "a2x"]),
        (r#"{ span.role = "a2x" } < { }"#, &["a2"]),
        (r#"{ span.role = "a2x" } << { }"#, &["a", "a2", "root"]),
        (r#"{ span.role = "a1" } ~ { }"#, &["a2"]),
        (r#"{ span.role = "root" } ~ { }"#, &[]),
        (r#"{ } ~ { }"#, &["a", "a1", "a2", "b"]),
        (
            r#"{ span.role = "a" } !> { }"#,
            &["a", "a2x", "b", "b1", "root"],
        ),
        (r#"{ span.role = "a" } !>> { }"#, &["a", "b", "b1", "root"]),
        (
            r#"{ span.role = "a2x" } !< { }"#,
            &["a", "a1", "a2x", "b", "b1", "root"],
        ),
        (
            r#"{ span.role = "a2x" } !<< { }"#,
            &["a1", "a2x", "b", "b1"],
        ),
        (
            r#"{ span.role = "a1" } !~ { }"#,
            &["a", "a1", "a2x", "b", "b1", "root"],
        ),
        (r#"{ span.role = "a" } &> { }"#, &["a", "a1", "a2"]),
        (
            r#"{ span.role = "a" } &>> { span.role = "a2x" }"#,
            &["a", "a2x"],
        ),
        (r#"{ span.role = "b1" } &< { }"#, &["b", "b1"]),
        (r#"{ span.role = "b1" } &<< { }"#, &["b", "b1", "root"]),
        (r#"{ span.role = "a1" } &~ { }"#, &["a1", "a2"]),
        (r#"{ span.role = "nothing" } > { }"#, &[]),
        (
            r#"{ span.role = "nothing" } !> { span.role =~ "a.*" }"#,
            &["a", "a1", "a2", "a2x"],
        ),
        (r#"{ } > { span.role = "nothing" }"#, &[]),
        (r#"{ span.role = "root" } > { } > { }"#, &["a1", "a2", "b1"]),
        (
            r#"{ span.role = "a" } >> ({ } > { span.role = "a2x" })"#,
            &["a2x"],
        ),
    ];
    for (query, want) in cases {
        assert_eq!(matched(query, &t), v(want), "{query}");
    }
}

#[test]
fn spanset_logic_unions_both_sides() {
    let t = tree();
    assert_eq!(
        matched(r#"{ span.role = "a1" } && { span.role = "b1" }"#, &t),
        v(&["a1", "b1"])
    );
    assert_eq!(
        matched(r#"{ span.role = "a1" } && { span.role = "zz" }"#, &t),
        v(&[])
    );
    assert_eq!(
        matched(r#"{ span.role = "a1" } || { span.role = "zz" }"#, &t),
        v(&["a1"])
    );
    assert_eq!(
        matched(r#"{ span.role = "zz" } || { span.role = "zz" }"#, &t),
        v(&[])
    );
}

#[test]
fn by_splits_and_coalesce_merges() {
    let t = tree();
    let result = run("{ } | by(span:childCount)", &t);
    type Group = (Vec<String>, Vec<(String, Value)>);
    let groups: Vec<Group> = result
        .iter()
        .map(|m| (names(&t, m), m.attributes.clone()))
        .collect();
    assert_eq!(
        groups,
        vec![
            (
                v(&["a", "root"]),
                vec![("by(childCount)".into(), Value::Int(2))]
            ),
            (
                v(&["a1", "a2x", "b1"]),
                vec![("by(childCount)".into(), Value::Int(0))]
            ),
            (
                v(&["a2", "b"]),
                vec![("by(childCount)".into(), Value::Int(1))]
            ),
        ]
    );

    let result = run("{ } | by(span:childCount) | count() > 2", &t);
    assert_eq!(result.len(), 1);
    assert_eq!(
        result[0].attributes,
        vec![
            ("by(childCount)".into(), Value::Int(0)),
            ("count()".into(), Value::Int(3)),
        ]
    );

    let result = run("{ } | by(span:childCount) | coalesce()", &t);
    assert_eq!(result.len(), 1);
    assert_eq!(result[0].spans.len(), 7);
    assert!(result[0].attributes.is_empty());

    // Spans without the field form a "nil" group.
    let result = run("{ } | by(span.missing)", &t);
    assert_eq!(result.len(), 1);
    assert_eq!(
        result[0].attributes,
        vec![("by(span.missing)".into(), Value::String("nil".into()))]
    );

    // Structural operators refuse several spansets, as Tempo does.
    let query = parse("({ } | by(span.role)) > { }").unwrap();
    let err = evaluate(&query, &OtlpTrace::new(&t)).unwrap_err();
    assert_eq!(err, EvalError::MultipleSpansets);
}

#[test]
fn select_reports_fields_per_span() {
    let t = tree();
    let result = run(
        r#"{ span.role = "a" } | select(span:kind, resource.service.name, span.nope)"#,
        &t,
    );
    assert_eq!(result.len(), 1);
    assert_eq!(
        result[0].span_attributes,
        vec![vec![
            ("role".to_string(), Value::String("a".into())),
            ("kind".to_string(), Value::Kind(SpanKind::Internal)),
            ("service.name".to_string(), Value::String("tree".into())),
        ]]
    );
}

#[test]
fn spans_come_back_in_start_order() {
    // Storage order differs from start order.
    let t = Tb::new(9)
        .resource("order", vec![])
        .span(sp(1, 0, "late", INTERNAL, 50, 60))
        .span(sp(2, 0, "early", INTERNAL, 10, 20))
        .span(sp(3, 0, "middle", INTERNAL, 30, 40))
        .batches;
    let result = run("{ }", &t);
    assert_eq!(result[0].spans, vec![1, 2, 0]);
    // Filters keep stored order until the output, or a stage that reads the order, sorts.
    for query in [
        "{ name != \"x\" }",
        "{ duration > 0 }",
        "{ } | count() > 2",
        "{ name = \"late\" } || { } | count() = 3",
        "{ } | select(name)",
    ] {
        let result = run(query, &t);
        assert_eq!(result.len(), 1, "{query}");
        assert_eq!(result[0].spans, vec![1, 2, 0], "{query}");
    }
    let pair = run("{ name = \"late\" } || { name = \"early\" }", &t);
    assert_eq!(pair[0].spans, vec![1, 0]);
    // Groups come in the order of their first span by start time.
    let groups: Vec<_> = run("{ } | by(name)", &t)
        .into_iter()
        .map(|m| m.spans)
        .collect();
    assert_eq!(groups, vec![vec![1], vec![2], vec![0]]);
}

#[test]
fn metrics_queries_are_refused() {
    let t = tree();
    let query = parse("{ } | rate()").unwrap();
    assert_eq!(
        evaluate(&query, &OtlpTrace::new(&t)),
        Err(EvalError::MetricsQuery)
    );
}

#[test]
fn trace_level_facts() {
    let data = dataset();
    let t01 = OtlpTrace::new(&data[0].1);
    assert_eq!(t01.spans(), 4);
    assert_eq!(t01.root_service_name(), Some("frontend"));
    assert_eq!(t01.root_span_name(), Some("GET /cart"));
    assert_eq!(t01.start_unix_nano(), T0);
    assert_eq!(t01.duration_nanos(), 100 * MS);
    let t05 = OtlpTrace::new(&data[4].1);
    assert_eq!(t05.root_service_name(), None);
    assert_eq!(t05.root_span_name(), None);
    assert_eq!(OtlpTrace::new(&[]).spans(), 0);
    assert!(run("{ }", &[]).is_empty());
}

#[test]
fn every_parser_corpus_query_evaluates_without_panicking() {
    let corpus = include_str!("../../integration/traceql/parser_corpus.txt");
    let data = dataset();
    let traces: Vec<OtlpTrace<'_>> = data.iter().map(|(_, b)| OtlpTrace::new(b)).collect();
    let mut evaluated = 0;
    for query in corpus.lines().filter_map(|l| l.strip_prefix("query: ")) {
        let Ok(parsed) = parse(query) else { continue };
        for trace in &traces {
            let result = evaluate(&parsed, trace);
            if parsed.is_metrics() {
                assert_eq!(result, Err(EvalError::MetricsQuery), "{query}");
            }
            for m in result.into_iter().flatten() {
                assert!(!m.spans.is_empty(), "{query}: empty spanset");
                assert_eq!(m.spans.len(), m.span_attributes.len(), "{query}");
            }
        }
        evaluated += 1;
    }
    assert!(evaluated > 50, "only {evaluated} corpus queries parsed");
}
