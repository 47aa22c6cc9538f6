//! The golden corpus, round trips, a no-panic fuzz test and evaluator checks.
//!
//! `VIVACE_BLESS=1 cargo test --lib traceql` rewrites the corpus expectations; review the diff.

use std::collections::HashMap;

use super::*;

const CORPUS: &str = include_str!("../../integration/traceql/parser_corpus.txt");
const CORPUS_PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/integration/traceql/parser_corpus.txt"
);

const EXPECTATIONS: [&str; 3] = ["search: ", "metrics: ", "error: "];

/// What the corpus records for a query: its canonical form or its error.
fn outcome(query: &str) -> String {
    match parse(query) {
        Ok(parsed) if parsed.is_metrics() => format!("metrics: {parsed}"),
        Ok(parsed) => format!("search: {parsed}"),
        Err(err) => format!("error: {err}"),
    }
}

fn corpus_queries() -> Vec<&'static str> {
    CORPUS
        .lines()
        .filter_map(|line| line.strip_prefix("query: "))
        .collect()
}

#[test]
fn corpus() {
    if std::env::var("VIVACE_BLESS").is_ok_and(|v| v == "1") {
        bless();
        return;
    }
    let mut failures = Vec::new();
    let mut lines = CORPUS.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(query) = line.strip_prefix("query: ") else {
            continue;
        };
        let expected = lines.next_if(|next| EXPECTATIONS.iter().any(|p| next.starts_with(p)));
        let actual = outcome(query);
        if expected != Some(actual.as_str()) {
            failures.push(format!(
                "query: {query}\n  expected {}\n  actual   {actual}",
                expected.unwrap_or("<nothing>")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} corpus cases differ (VIVACE_BLESS=1 rewrites them):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn bless() {
    let mut out = String::new();
    for line in CORPUS.lines() {
        if EXPECTATIONS.iter().any(|p| line.starts_with(p)) {
            continue;
        }
        out.push_str(line);
        out.push('\n');
        if let Some(query) = line.strip_prefix("query: ") {
            out.push_str(&outcome(query));
            out.push('\n');
        }
    }
    std::fs::write(CORPUS_PATH, out).expect("write the corpus");
}

#[test]
fn corpus_is_big_enough() {
    let queries = corpus_queries();
    let invalid = queries.iter().filter(|q| parse(q).is_err()).count();
    assert!(queries.len() >= 150, "only {} cases", queries.len());
    assert!(invalid >= 40, "only {invalid} invalid cases");
}

/// Rendering then parsing again gives the same tree, and the rendering is stable.
fn assert_round_trip(query: &str) {
    let Ok(first) = parse(query) else {
        return;
    };
    let text = first.to_string();
    let second = parse(&text).unwrap_or_else(|err| panic!("{query:?} renders as {text:?}: {err}"));
    assert_eq!(first, second, "{query:?} renders as {text:?}");
    assert_eq!(text, second.to_string(), "{query:?}");
}

#[test]
fn corpus_round_trips() {
    for query in corpus_queries() {
        assert_round_trip(query);
    }
}

/// A small deterministic generator so failures reproduce.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut XorShift, query: &str, other: &str) -> String {
    const PIECES: [&str; 40] = [
        "{", "}", "(", ")", "|", "&&", "||", "!", "=", "!=", "=~", "!~", ">", ">>", "<", "~", "&>",
        "+", "-", "*", "^", ".", ",", "\"", "\\", "`", ":", "0", "1.5", "1e9", "5m", "µs", " ",
        "\n", "span.", "count()", "nil", "by(", "rate()", "with(",
    ];
    let mut chars: Vec<char> = query.chars().collect();
    let at = rng.below(chars.len() + 1);
    match rng.below(5) {
        0 if !chars.is_empty() => {
            chars.remove(at.min(chars.len() - 1));
        }
        1 => {
            let piece = PIECES[rng.below(PIECES.len())];
            chars.splice(at..at, piece.chars());
        }
        2 => chars.truncate(at),
        3 => {
            let tail: Vec<char> = other.chars().skip(rng.below(other.len())).collect();
            chars.truncate(at);
            chars.extend(tail);
        }
        _ => {
            let byte = char::from_u32(rng.below(0x250) as u32).unwrap_or('?');
            chars.insert(at, byte);
        }
    }
    chars.into_iter().collect()
}

#[test]
fn random_inputs_never_panic_and_round_trip() {
    let queries = corpus_queries();
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut parsed = 0;
    for round in 0..40 {
        for (i, query) in queries.iter().enumerate() {
            let other = queries[(i + round + 1) % queries.len()];
            let mut text = mutate(&mut rng, query, other);
            if round % 3 == 0 {
                text = mutate(&mut rng, &text, other);
            }
            if parse(&text).is_ok() {
                parsed += 1;
            }
            assert_round_trip(&text);
        }
    }
    assert!(parsed > 0);
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let cases = [
        "(".repeat(100_000),
        format!("{{ {}1 }}", "!".repeat(100_000)),
        format!("{{ {}1 }}", "-".repeat(100_000)),
        format!("{{ {}.a{} }}", "(".repeat(10_000), ")".repeat(10_000)),
        "{} && ".repeat(50_000) + "{}",
        format!("{{ .a = 1{} }}", " || .a = 1".repeat(50_000)),
    ];
    for case in &cases {
        let err = parse(case).unwrap_err();
        assert!(err.message.contains("nests too deeply"), "{}", err.message);
    }
    // Just under the limits the parser and the renderer still fit the test thread's stack.
    let nested = format!("{}{{}}{}", "(".repeat(99), ")".repeat(99));
    assert_round_trip(&nested);
    let nested = format!("{{ {}.a{} = 1 }}", "(".repeat(198), ")".repeat(198));
    assert_round_trip(&nested);
    let chain = format!("{{ .a = 0{} }}", " || .a = 1".repeat(990));
    assert_round_trip(&chain);
    let negations = format!("{{ {}.a }}", "!".repeat(198));
    assert_round_trip(&negations);
    // A long but reasonable chain still parses.
    let many = format!(
        "{{ .a = 0{} }}",
        (1..200)
            .map(|i| format!(" || .a = {i}"))
            .collect::<String>()
    );
    assert_round_trip(&many);
    assert!(parse(&many).is_ok());
}

#[test]
fn error_positions_are_line_and_column() {
    let err = parse("{ .a = 1 }\n| count() > )").unwrap_err();
    assert_eq!((err.line, err.col, err.pos), (2, 13, 23));
    assert_eq!(
        err.message,
        "unexpected ')' at 2:13, expected a spanset filter such as '{ ... }'"
    );
}

// ---- evaluator --------------------------------------------------------------------------------

#[derive(Default)]
struct MemSpan {
    attributes: HashMap<(Scope, &'static str), Value>,
    intrinsics: HashMap<&'static str, Value>,
    parent: Option<Box<MemSpan>>,
}

impl MemSpan {
    fn with(mut self, scope: Scope, name: &'static str, value: Value) -> MemSpan {
        self.attributes.insert((scope, name), value);
        self
    }

    fn intrinsic(mut self, intrinsic: Intrinsic, value: Value) -> MemSpan {
        self.intrinsics.insert(intrinsic.name(), value);
        self
    }
}

impl SpanView for MemSpan {
    fn attribute(&self, scope: Scope, name: &str) -> Option<Value> {
        self.attributes
            .iter()
            .find(|((s, n), _)| *s == scope && *n == name)
            .map(|(_, v)| v.clone())
    }

    fn intrinsic(&self, intrinsic: Intrinsic) -> Option<Value> {
        if intrinsic == Intrinsic::Parent {
            return self.parent.as_ref().map(|_| Value::Bool(true));
        }
        self.intrinsics.get(intrinsic.name()).cloned()
    }

    fn parent(&self) -> Option<&dyn SpanView> {
        self.parent.as_deref().map(|p| p as &dyn SpanView)
    }
}

fn sample_span() -> MemSpan {
    let parent = MemSpan::default().with(Scope::Span, "role", Value::String("gateway".into()));
    MemSpan {
        parent: Some(Box::new(parent)),
        ..MemSpan::default()
    }
    .with(Scope::Span, "http.status_code", Value::Int(503))
    .with(Scope::Span, "ratio", Value::Float(0.5))
    .with(Scope::Span, "cached", Value::Bool(false))
    .with(
        Scope::Resource,
        "service.name",
        Value::String("checkout".into()),
    )
    .with(
        Scope::Span,
        "service.name",
        Value::String("span-level".into()),
    )
    .with(Scope::Resource, "region", Value::String("eu-west-1".into()))
    .with(
        Scope::Span,
        "tags",
        Value::Array(vec![Value::String("a".into()), Value::String("b".into())]),
    )
    .with(
        Scope::Span,
        "codes",
        Value::Array(vec![Value::Int(1), Value::Int(2)]),
    )
    .intrinsic(Intrinsic::Duration, Value::Duration(1_500_000_000))
    .intrinsic(Intrinsic::Name, Value::String("GET /cart".into()))
    .intrinsic(Intrinsic::Status, Value::Status(Status::Error))
    .intrinsic(Intrinsic::Kind, Value::Kind(SpanKind::Server))
}

fn check_filter(query: &str, span: &MemSpan) -> bool {
    let parsed = parse(query).unwrap_or_else(|err| panic!("{query}: {err}"));
    let [Stage::Spanset(SpansetExpr::Filter(filter))] = parsed.pipeline.stages.as_slice() else {
        panic!("{query} is not a single filter");
    };
    filter.matches(span)
}

#[test]
fn evaluator_follows_tempo_semantics() {
    let span = sample_span();
    let cases = [
        ("{}", true),
        ("{ span.http.status_code = 503 }", true),
        (
            "{ span.http.status_code >= 500 && span.http.status_code < 600 }",
            true,
        ),
        ("{ span.http.status_code = 503.0 }", true),
        ("{ span.ratio < 1 }", true),
        ("{ span.ratio * 2 = 1 }", true),
        ("{ span.http.status_code / 100 = 5 }", true),
        ("{ span.http.status_code % 100 = 3 }", true),
        ("{ 2 ^ 3 = 8 }", true),
        ("{ -span.http.status_code = -503 }", true),
        // Missing attributes make every comparison false, even `!=`.
        ("{ span.missing = 1 }", false),
        ("{ span.missing != 1 }", false),
        ("{ !(span.missing = 1) }", true),
        ("{ span.missing = nil }", true),
        ("{ span.missing != nil }", false),
        ("{ span.http.status_code != nil }", true),
        ("{ span.http.status_code = nil }", false),
        // Type mismatches are false, not errors, at run time.
        ("{ span.http.status_code = \"503\" }", false),
        ("{ span.http.status_code != \"503\" }", false),
        // Unscoped looks at the span first, then the resource.
        ("{ .service.name = \"span-level\" }", true),
        ("{ .region = \"eu-west-1\" }", true),
        ("{ resource.service.name = \"checkout\" }", true),
        ("{ span.region = \"eu-west-1\" }", false),
        // Regexes are fully anchored.
        ("{ resource.service.name =~ \"check\" }", false),
        ("{ resource.service.name =~ \"check.*\" }", true),
        ("{ resource.service.name !~ \"check\" }", true),
        ("{ resource.service.name !~ \"c.*t\" }", false),
        ("{ span.missing !~ \"x\" }", false),
        // Arrays: any element for = and =~, none for != and !~.
        ("{ span.tags = \"a\" }", true),
        ("{ span.tags = \"c\" }", false),
        ("{ span.tags != \"a\" }", false),
        ("{ span.tags != \"c\" }", true),
        ("{ span.tags =~ \"b\" }", true),
        ("{ span.tags !~ \"b\" }", false),
        ("{ span.tags !~ \"z.*\" }", true),
        ("{ span.codes > 1 }", true),
        ("{ span.codes > 2 }", false),
        // Intrinsics.
        ("{ duration > 1s }", true),
        ("{ span:duration < 1s500ms }", false),
        ("{ span:duration <= 1.5s }", true),
        ("{ name = \"GET /cart\" }", true),
        ("{ status = error }", true),
        ("{ span:status != ok }", true),
        ("{ kind = server }", true),
        ("{ span:kind = client }", false),
        ("{ span:statusMessage = \"x\" }", false),
        // Booleans and logic.
        ("{ span.cached = false }", true),
        ("{ !span.cached }", true),
        ("{ span.cached }", false),
        ("{ span.cached || status = error }", true),
        ("{ true }", true),
        ("{ false || span.missing = nil }", true),
        // Parent attributes and the legacy parent intrinsic.
        ("{ parent.span.role = \"gateway\" }", true),
        ("{ parent.role = \"gateway\" }", true),
        ("{ parent.resource.role = \"gateway\" }", false),
        ("{ parent = nil }", false),
        ("{ parent != nil }", true),
        // Strings order lexicographically.
        ("{ name > \"GET /a\" }", true),
        ("{ name < \"GET /a\" }", false),
        // Overflow and division by zero give no value, hence no match.
        ("{ span.http.status_code / 0 = 1 }", false),
        ("{ maxInt + span.http.status_code > 0 }", false),
    ];
    for (query, expected) in cases {
        assert_eq!(check_filter(query, &span), expected, "{query}");
    }
}

#[test]
fn root_span_has_no_parent() {
    let root = MemSpan::default();
    assert!(check_filter("{ parent = nil }", &root));
    assert!(!check_filter("{ parent.span.x = 1 }", &root));
    assert!(check_filter("{ parent.span.x = nil }", &root));
}
