//! Service-graph pairing, expiry and virtual nodes against hand-computed edges.

use std::collections::BTreeMap;

use super::*;
use crate::generator::remote_write::TimeSeries;
use crate::model::{any_value, AnyValue, Status};

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

const T: [u8; 16] = [9; 16];

fn span_of(kind: span::SpanKind, id: u8, parent: Option<u8>, ms: u64, error: bool) -> Span {
    Span {
        trace_id: T.to_vec(),
        span_id: vec![id; 8],
        parent_span_id: parent.map(|p| vec![p; 8]).unwrap_or_default(),
        kind: kind as i32,
        start_time_unix_nano: 5_000_000_000,
        end_time_unix_nano: 5_000_000_000 + ms * 1_000_000,
        status: error.then(|| Status {
            code: status::StatusCode::Error as i32,
            message: String::new(),
        }),
        ..Default::default()
    }
}

fn with_attrs(mut s: Span, attrs: &[(&str, &str)]) -> Span {
    s.attributes = attrs.iter().map(|(k, v)| kv(k, v)).collect();
    s
}

/// The last value of the series `name` whose labels are exactly `want`.
fn value(out: &[TimeSeries], name: &str, want: &[(&str, &str)]) -> Option<f64> {
    out.iter()
        .find(|t| {
            let labels: Vec<(&str, &str)> = t
                .labels
                .iter()
                .filter(|l| l.name != "__name__")
                .map(|l| (l.name.as_str(), l.value.as_str()))
                .collect();
            t.labels
                .iter()
                .any(|l| l.name == "__name__" && l.value == name)
                && labels.len() == want.len()
                && want.iter().all(|w| labels.contains(w))
        })
        .map(|t| t.samples.last().unwrap().value)
}

fn collect(p: &mut ServiceGraphs) -> Vec<TimeSeries> {
    let ext = BTreeMap::new();
    let mut e = Emitter::new(&ext, 1_000_000, 985_000);
    p.collect(&mut e, 0);
    e.out
}

fn processor() -> ServiceGraphs {
    ServiceGraphs::new(&ServiceGraphsConfig::default(), SpanFilter::default(), 2048)
}

#[test]
fn client_and_server_pair_in_either_order_and_errors_count_as_failed() {
    let mut p = processor();
    let mut b = SeriesBudget::default();
    let now = Instant::now();
    // Pair 1: client first, 300 ms client / 250 ms server.
    let c1 = span_of(span::SpanKind::Client, 1, Some(0xaa), 300, false);
    let s1 = span_of(span::SpanKind::Server, 2, Some(1), 250, false);
    p.push(&[], Some("frontend"), &c1, T, now, 10, &mut b);
    assert_eq!(p.waiting(), 1);
    p.push(&[], Some("backend"), &s1, T, now, 10, &mut b);
    assert_eq!(p.waiting(), 0);
    // Pair 2: server first, failed on the server side.
    let s2 = span_of(span::SpanKind::Server, 4, Some(3), 50, true);
    let c2 = span_of(span::SpanKind::Client, 3, Some(0xaa), 120, false);
    p.push(&[], Some("backend"), &s2, T, now, 10, &mut b);
    p.push(&[], Some("frontend"), &c2, T, now, 10, &mut b);
    assert_eq!(p.waiting(), 0);

    let out = collect(&mut p);
    let edge = [("client", "frontend"), ("server", "backend")];
    assert_eq!(value(&out, REQUEST_TOTAL, &edge), Some(2.0));
    assert_eq!(value(&out, REQUEST_FAILED_TOTAL, &edge), Some(1.0));
    let bucket = |name: &str, le: &str| {
        let mut w = edge.to_vec();
        w.push(("le", le));
        value(&out, &format!("{name}_bucket"), &w)
    };
    // Buckets 0.1, 0.2, 0.4 ...: server 250 ms and 50 ms, client 300 ms and 120 ms.
    assert_eq!(bucket(SERVER_SECONDS, "0.1"), Some(1.0));
    assert_eq!(bucket(SERVER_SECONDS, "0.2"), Some(1.0));
    assert_eq!(bucket(SERVER_SECONDS, "0.4"), Some(2.0));
    assert_eq!(bucket(CLIENT_SECONDS, "0.1"), Some(0.0));
    assert_eq!(bucket(CLIENT_SECONDS, "0.2"), Some(1.0));
    assert_eq!(bucket(CLIENT_SECONDS, "12.8"), Some(2.0));
    let sum = value(&out, &format!("{CLIENT_SECONDS}_sum"), &edge).unwrap();
    assert!((sum - 0.42).abs() < 1e-9, "{sum}");
}

#[test]
fn an_edge_that_never_failed_has_no_failed_series() {
    let mut p = processor();
    let mut b = SeriesBudget::default();
    let now = Instant::now();
    p.push(
        &[],
        Some("a"),
        &span_of(span::SpanKind::Client, 1, None, 1, false),
        T,
        now,
        1,
        &mut b,
    );
    p.push(
        &[],
        Some("b"),
        &span_of(span::SpanKind::Server, 2, Some(1), 1, false),
        T,
        now,
        1,
        &mut b,
    );
    let out = collect(&mut p);
    assert_eq!(
        value(&out, REQUEST_TOTAL, &[("client", "a"), ("server", "b")]),
        Some(1.0)
    );
    assert!(out
        .iter()
        .all(|t| t.labels.iter().all(|l| l.value != REQUEST_FAILED_TOTAL)));
}

#[test]
fn database_calls_complete_alone_and_producer_consumer_are_messaging() {
    let mut p = processor();
    let mut b = SeriesBudget::default();
    let now = Instant::now();
    let db = with_attrs(
        span_of(span::SpanKind::Client, 7, Some(1), 30, true),
        &[("db.system", "postgresql"), ("db.name", "orders")],
    );
    p.push(&[], Some("backend"), &db, T, now, 1, &mut b);
    assert_eq!(p.waiting(), 0, "a database call needs no server span");
    let producer = span_of(span::SpanKind::Producer, 8, Some(1), 5, false);
    let consumer = span_of(span::SpanKind::Consumer, 9, Some(8), 5, false);
    p.push(&[], Some("backend"), &producer, T, now, 1, &mut b);
    p.push(&[], Some("worker"), &consumer, T, now, 1, &mut b);
    let out = collect(&mut p);
    let db_edge = [
        ("client", "backend"),
        ("server", "orders"),
        ("connection_type", "database"),
    ];
    assert_eq!(value(&out, REQUEST_TOTAL, &db_edge), Some(1.0));
    assert_eq!(value(&out, REQUEST_FAILED_TOTAL, &db_edge), Some(1.0));
    let mq = [
        ("client", "backend"),
        ("server", "worker"),
        ("connection_type", "messaging_system"),
    ];
    assert_eq!(value(&out, REQUEST_TOTAL, &mq), Some(1.0));
}

#[test]
fn expired_edges_become_virtual_nodes_or_are_counted() {
    let cfg = ServiceGraphsConfig {
        wait: Duration::from_secs(10),
        ..Default::default()
    };
    let mut p = ServiceGraphs::new(&cfg, SpanFilter::default(), 2048);
    let mut b = SeriesBudget::default();
    let t0 = Instant::now();
    // A root server span with no peer: its client is "user".
    let root = span_of(span::SpanKind::Server, 1, None, 10, false);
    p.push(&[], Some("frontend"), &root, T, t0, 1, &mut b);
    // A client span calling an uninstrumented service.
    let ext = with_attrs(
        span_of(span::SpanKind::Client, 2, Some(1), 10, false),
        &[("peer.service", "payments")],
    );
    p.push(&[], Some("frontend"), &ext, T, t0, 1, &mut b);
    // A client span with no peer attribute and no server: expires unpaired.
    let lost = span_of(span::SpanKind::Client, 3, Some(1), 10, false);
    p.push(&[], Some("frontend"), &lost, T, t0, 1, &mut b);
    assert_eq!(p.waiting(), 3);
    p.expire(t0 + Duration::from_secs(9), 2, &mut b);
    assert_eq!(p.waiting(), 3, "nothing expires before `wait`");
    p.expire(t0 + Duration::from_secs(10), 2, &mut b);
    assert_eq!(p.waiting(), 0);
    assert_eq!(p.expired, 1);
    let out = collect(&mut p);
    let user = [
        ("client", "user"),
        ("server", "frontend"),
        ("connection_type", "virtual_node"),
    ];
    assert_eq!(value(&out, REQUEST_TOTAL, &user), Some(1.0));
    let payments = [
        ("client", "frontend"),
        ("server", "payments"),
        ("connection_type", "virtual_node"),
    ];
    assert_eq!(value(&out, REQUEST_TOTAL, &payments), Some(1.0));
}

#[test]
fn the_edge_store_is_bounded() {
    let cfg = ServiceGraphsConfig {
        max_items: 2,
        ..Default::default()
    };
    let mut p = ServiceGraphs::new(&cfg, SpanFilter::default(), 2048);
    let mut b = SeriesBudget::default();
    let now = Instant::now();
    for id in 1..=3 {
        p.push(
            &[],
            Some("a"),
            &span_of(span::SpanKind::Client, id, None, 1, false),
            T,
            now,
            1,
            &mut b,
        );
    }
    assert_eq!(p.waiting(), 2);
    assert_eq!(p.dropped, 1);
    // A waiting edge still completes when the store is full.
    p.push(
        &[],
        Some("b"),
        &span_of(span::SpanKind::Server, 9, Some(1), 1, false),
        T,
        now,
        1,
        &mut b,
    );
    assert_eq!(p.waiting(), 1);
    // Resources without a service name are skipped, as in Tempo.
    p.push(
        &[],
        None,
        &span_of(span::SpanKind::Server, 9, Some(2), 1, false),
        T,
        now,
        1,
        &mut b,
    );
    assert_eq!(p.waiting(), 1);
}

#[test]
fn dimensions_per_side_and_the_virtual_node_label() {
    let cfg = ServiceGraphsConfig {
        dimensions: vec!["deployment.env".into()],
        enable_client_server_prefix: true,
        enable_virtual_node_label: true,
        ..Default::default()
    };
    let mut p = ServiceGraphs::new(&cfg, SpanFilter::default(), 2048);
    let mut b = SeriesBudget::default();
    let t0 = Instant::now();
    let client_res = [kv("deployment.env", "prod")];
    let server_res = [kv("deployment.env", "staging")];
    let c = span_of(span::SpanKind::Client, 1, None, 10, false);
    let s = span_of(span::SpanKind::Server, 2, Some(1), 10, false);
    p.push(&client_res, Some("a"), &c, T, t0, 1, &mut b);
    p.push(&server_res, Some("b"), &s, T, t0, 1, &mut b);
    let root = span_of(span::SpanKind::Server, 3, None, 10, false);
    p.push(&server_res, Some("b"), &root, T, t0, 1, &mut b);
    p.expire(t0 + Duration::from_secs(10), 2, &mut b);
    let out = collect(&mut p);
    let paired = [
        ("client", "a"),
        ("server", "b"),
        ("client_deployment_env", "prod"),
        ("server_deployment_env", "staging"),
    ];
    assert_eq!(value(&out, REQUEST_TOTAL, &paired), Some(1.0));
    let from_user = [
        ("client", "user"),
        ("server", "b"),
        ("connection_type", "virtual_node"),
        ("server_deployment_env", "staging"),
        ("virtual_node", "client"),
    ];
    assert_eq!(value(&out, REQUEST_TOTAL, &from_user), Some(1.0));
}

#[test]
fn messaging_latency_is_consumer_start_minus_producer_end() {
    let cfg = ServiceGraphsConfig {
        enable_messaging_system_latency_histogram: true,
        ..Default::default()
    };
    let mut p = ServiceGraphs::new(&cfg, SpanFilter::default(), 2048);
    let mut b = SeriesBudget::default();
    let now = Instant::now();
    // The producer ends at 5.010 s; the consumer starts 300 ms later.
    let producer = span_of(span::SpanKind::Producer, 1, None, 10, false);
    let mut consumer = span_of(span::SpanKind::Consumer, 2, Some(1), 10, false);
    consumer.start_time_unix_nano = 5_310_000_000;
    consumer.end_time_unix_nano = 5_320_000_000;
    p.push(&[], Some("a"), &producer, T, now, 1, &mut b);
    p.push(&[], Some("b"), &consumer, T, now, 1, &mut b);
    // A plain client/server edge gets no messaging histogram.
    p.push(
        &[],
        Some("a"),
        &span_of(span::SpanKind::Client, 3, None, 1, false),
        T,
        now,
        1,
        &mut b,
    );
    p.push(
        &[],
        Some("c"),
        &span_of(span::SpanKind::Server, 4, Some(3), 1, false),
        T,
        now,
        1,
        &mut b,
    );
    let out = collect(&mut p);
    let mq = [
        ("client", "a"),
        ("server", "b"),
        ("connection_type", "messaging_system"),
    ];
    let bucket = |le: &str| {
        let mut w = mq.to_vec();
        w.push(("le", le));
        value(&out, &format!("{MESSAGING_SECONDS}_bucket"), &w)
    };
    assert_eq!(bucket("0.2"), Some(0.0));
    assert_eq!(bucket("0.4"), Some(1.0));
    let plain = [("client", "a"), ("server", "c"), ("le", "0.4")];
    assert_eq!(
        value(&out, &format!("{MESSAGING_SECONDS}_bucket"), &plain),
        None
    );
}

#[test]
fn a_filtered_out_half_takes_its_other_half_with_it() {
    let policies: Vec<crate::config::generator::FilterPolicy> = serde_yaml_ng::from_str(
        "- exclude:\n    match_type: strict\n    attributes:\n      - key: span.internal\n        value: true\n",
    )
    .unwrap();
    let cfg = ServiceGraphsConfig::default();
    let mut p = ServiceGraphs::new(&cfg, SpanFilter::new(&policies).unwrap(), 2048);
    let mut b = SeriesBudget::default();
    let t0 = Instant::now();
    let hidden = |mut s: Span| {
        s.attributes = vec![KeyValue {
            key: "internal".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::BoolValue(true)),
            }),
            ..Default::default()
        }];
        s
    };
    // Server half first and filtered out: its client half (with a peer attribute, which
    // would otherwise become a virtual node) is ignored.
    p.push(
        &[],
        Some("b"),
        &hidden(span_of(span::SpanKind::Server, 2, Some(1), 1, false)),
        T,
        t0,
        1,
        &mut b,
    );
    let client = with_attrs(
        span_of(span::SpanKind::Client, 1, None, 1, false),
        &[("peer.service", "b")],
    );
    p.push(&[], Some("a"), &client, T, t0, 1, &mut b);
    assert_eq!(p.waiting(), 0);
    // Client half waiting, then its server half filtered out: the waiting half goes.
    p.push(
        &[],
        Some("a"),
        &span_of(span::SpanKind::Client, 3, None, 1, false),
        T,
        t0,
        1,
        &mut b,
    );
    assert_eq!(p.waiting(), 1);
    p.push(
        &[],
        Some("b"),
        &hidden(span_of(span::SpanKind::Server, 4, Some(3), 1, false)),
        T,
        t0,
        1,
        &mut b,
    );
    assert_eq!(p.waiting(), 0);
    assert_eq!(p.dropped, 2);
    p.expire(t0 + Duration::from_secs(10), 2, &mut b);
    assert!(collect(&mut p).is_empty());
}
