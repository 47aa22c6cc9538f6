//! Ingest with the real OpenTelemetry SDK exporter (gRPC, gRPC+gzip, HTTP
//! protobuf, HTTP JSON) and raw OTLP requests; read back through every
//! trace-by-ID endpoint and format, and compare field by field.

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{
    Event, Link, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{Array, InstrumentationScope, KeyValue, StringValue, Value};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1 as pc;
use opentelemetry_proto::tonic::resource::v1::Resource as PbResource;
use opentelemetry_proto::tonic::trace::v1 as pt;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks};
use opentelemetry_sdk::Resource;
use prost::Message;

use crate::harness::*;
use crate::model::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    Grpc,
    GrpcGzip,
    HttpProto,
    HttpJson,
}

pub(crate) fn build_exporter(server: &Server, t: Transport) -> opentelemetry_otlp::SpanExporter {
    let timeout = Duration::from_secs(20);
    match t {
        Transport::Grpc | Transport::GrpcGzip => {
            let mut b = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(server.grpc_url())
                .with_timeout(timeout);
            if t == Transport::GrpcGzip {
                b = b.with_compression(opentelemetry_otlp::Compression::Gzip);
            }
            b.build().expect("build tonic exporter")
        }
        Transport::HttpProto | Transport::HttpJson => {
            let protocol = if t == Transport::HttpJson {
                Protocol::HttpJson
            } else {
                Protocol::HttpBinary
            };
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(protocol)
                .with_endpoint(server.otlp_http_url())
                .with_timeout(timeout)
                .with_headers(Default::default())
                .build()
                .expect("build http exporter")
        }
    }
}

/// Export one batch under `resource`; panics if not acknowledged.
pub(crate) async fn export(
    server: &Server,
    t: Transport,
    resource: &Resource,
    spans: Vec<SpanData>,
) {
    let mut exporter = build_exporter(server, t);
    exporter.set_resource(resource);
    let n = spans.len();
    if let Err(e) = exporter.export(spans).await {
        panic!(
            "{t:?} export of {n} spans failed: {e:?}\n{}",
            server.log_tail(30)
        );
    }
}

pub(crate) fn at(base: SystemTime, offset_ns: u64) -> SystemTime {
    base + Duration::from_nanos(offset_ns)
}

/// Base time: a minute ago, with a non-round nanosecond part.
pub(crate) fn base_time() -> SystemTime {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    UNIX_EPOCH + Duration::from_secs(now.as_secs() - 60) + Duration::from_nanos(123_456_789)
}

pub(crate) struct SpanSpec {
    pub(crate) trace_id: [u8; 16],
    pub(crate) span_id: [u8; 8],
    pub(crate) parent: Option<[u8; 8]>,
    pub(crate) parent_remote: bool,
    pub(crate) name: &'static str,
    pub(crate) kind: SpanKind,
    pub(crate) start: SystemTime,
    pub(crate) end: SystemTime,
    pub(crate) attrs: Vec<KeyValue>,
    pub(crate) status: Status,
    pub(crate) scope: InstrumentationScope,
    pub(crate) trace_state: TraceState,
    pub(crate) events: Vec<Event>,
    pub(crate) links: Vec<Link>,
    pub(crate) dropped: (u32, u32, u32),
}

impl SpanSpec {
    pub(crate) fn simple(
        trace_id: [u8; 16],
        span_id: [u8; 8],
        parent: Option<[u8; 8]>,
        name: &'static str,
        start: SystemTime,
    ) -> SpanSpec {
        SpanSpec {
            trace_id,
            span_id,
            parent,
            parent_remote: false,
            name,
            kind: SpanKind::Internal,
            start,
            end: start + Duration::from_millis(5),
            attrs: vec![KeyValue::new("i", 1_i64)],
            status: Status::Unset,
            scope: InstrumentationScope::builder("vivace-it/simple").build(),
            trace_state: TraceState::NONE,
            events: vec![],
            links: vec![],
            dropped: (0, 0, 0),
        }
    }

    pub(crate) fn build(self) -> SpanData {
        SpanData {
            span_context: SpanContext::new(
                TraceId::from_bytes(self.trace_id),
                SpanId::from_bytes(self.span_id),
                TraceFlags::SAMPLED,
                false,
                self.trace_state,
            ),
            parent_span_id: self
                .parent
                .map(SpanId::from_bytes)
                .unwrap_or(SpanId::INVALID),
            parent_span_is_remote: self.parent_remote,
            span_kind: self.kind,
            name: Cow::Borrowed(self.name),
            start_time: self.start,
            end_time: self.end,
            attributes: self.attrs,
            dropped_attributes_count: self.dropped.0,
            events: {
                let mut e = SpanEvents::default();
                e.events = self.events;
                e.dropped_count = self.dropped.1;
                e
            },
            links: {
                let mut l = SpanLinks::default();
                l.links = self.links;
                l.dropped_count = self.dropped.2;
                l
            },
            status: self.status,
            instrumentation_scope: self.scope,
        }
    }
}

fn strs(v: &[&'static str]) -> Value {
    Value::Array(Array::String(
        v.iter().map(|s| StringValue::from(*s)).collect(),
    ))
}

/// Span attributes covering every type the SDK can express.
fn all_type_attrs(tag: &str) -> Vec<KeyValue> {
    vec![
        KeyValue::new("str", format!("hello ünïcødé ✓ {tag}")),
        KeyValue::new("int", -42_i64),
        KeyValue::new("big.int", 9_007_199_254_740_993_i64),
        KeyValue::new("double", 3.25_f64),
        KeyValue::new("double.neg", -0.125_f64),
        KeyValue::new("bool.t", true),
        KeyValue::new("bool.f", false),
        KeyValue::new("arr.str", strs(&["a", "b", "c"])),
        KeyValue::new("arr.int", Value::Array(Array::I64(vec![1, -2, 3]))),
        KeyValue::new("arr.double", Value::Array(Array::F64(vec![0.5, 1.5]))),
        KeyValue::new("arr.bool", Value::Array(Array::Bool(vec![true, false]))),
        // Attributes that Tempo stores in dedicated columns.
        KeyValue::new("http.method", "GET"),
        KeyValue::new("http.url", "http://example.com/a?b=c"),
        KeyValue::new("http.status_code", 503_i64),
    ]
}

pub(crate) struct Dataset {
    pub(crate) batches: Vec<(Resource, Vec<SpanData>)>,
    /// Trace id (hex) -> expected spans.
    pub(crate) traces: Vec<(String, SpanMap)>,
}

impl Dataset {
    pub(crate) fn new(batches: Vec<(Resource, Vec<SpanData>)>) -> Dataset {
        let mut traces: Vec<(String, SpanMap)> = Vec::new();
        for (res, spans) in &batches {
            for (id, s) in spans_from_sdk(res, spans) {
                match traces.iter_mut().find(|(t, _)| *t == s.trace_id) {
                    Some((_, m)) => {
                        m.insert(id, s);
                    }
                    None => {
                        let t = s.trace_id.clone();
                        let mut m = SpanMap::new();
                        m.insert(id, s);
                        traces.push((t, m));
                    }
                }
            }
        }
        for (_, m) in traces.iter_mut() {
            sort_events(m);
        }
        Dataset { batches, traces }
    }
}

/// Two traces over two services/resources, two scopes, every span kind,
/// every SDK attribute type, events, links (with attributes), statuses,
/// trace state, remote parents and dropped counts.
pub(crate) fn rich_dataset(tag: &str) -> Dataset {
    let t1 = rand_trace_id();
    let t2 = rand_trace_id();
    let [root, client, internal, producer, be_server, be_consumer, be_internal, t2_a, t2_b] =
        std::array::from_fn(|_| rand_span_id());
    let base = base_time();
    let ms = 1_000_000u64;

    let frontend = Resource::builder_empty()
        .with_attributes([
            KeyValue::new("service.name", format!("frontend-{tag}")),
            KeyValue::new("cluster", "eu-west"),
            KeyValue::new("k8s.pod.name", "frontend-7d9f"),
            KeyValue::new("res.int", 7_i64),
            KeyValue::new("res.double", 0.75_f64),
            KeyValue::new("res.bool", true),
            KeyValue::new("res.arr", strs(&["x", "y"])),
        ])
        .build();
    let backend = Resource::builder_empty()
        .with_attributes([
            KeyValue::new("service.name", format!("backend-{tag}")),
            KeyValue::new("host.name", "db-host-1"),
            KeyValue::new("namespace", "prod"),
        ])
        .build();
    let http_scope = InstrumentationScope::builder("vivace-it/http")
        .with_version("1.2.3")
        .with_attributes([
            KeyValue::new("scope.kind", "http"),
            KeyValue::new("scope.num", 7_i64),
        ])
        .build();
    let db_scope = InstrumentationScope::builder("vivace-it/db").build();
    let ts = TraceState::from_key_value([("vendor", "abc"), ("other", "x1")]).unwrap();

    let remote_ctx = |t: [u8; 16], s: [u8; 8], state: TraceState| {
        SpanContext::new(
            TraceId::from_bytes(t),
            SpanId::from_bytes(s),
            TraceFlags::SAMPLED,
            true,
            state,
        )
    };

    let fe_spans = vec![
        SpanSpec {
            trace_id: t1,
            span_id: root,
            parent: None,
            parent_remote: false,
            name: "GET /checkout",
            kind: SpanKind::Server,
            start: at(base, 0),
            end: at(base, 250 * ms + 17),
            attrs: all_type_attrs(tag),
            status: Status::Ok,
            scope: http_scope.clone(),
            trace_state: ts.clone(),
            events: vec![
                Event::new(
                    "request.received",
                    at(base, ms + 3),
                    vec![
                        KeyValue::new("ev.str", "v"),
                        KeyValue::new("ev.int", 12_i64),
                        KeyValue::new("ev.bool", true),
                        KeyValue::new("ev.double", 2.5_f64),
                    ],
                    2,
                ),
                Event::new("no.attributes", at(base, 2 * ms + 9), vec![], 0),
                Event::new(
                    "exception",
                    at(base, 200 * ms),
                    vec![
                        KeyValue::new("exception.type", "IOError"),
                        KeyValue::new("exception.message", "disk full"),
                    ],
                    0,
                ),
            ],
            links: vec![
                Link::new(
                    remote_ctx(
                        t2,
                        t2_a,
                        TraceState::from_key_value([("lk", "lv")]).unwrap(),
                    ),
                    vec![
                        KeyValue::new("link.str", "follows"),
                        KeyValue::new("link.int", 3_i64),
                    ],
                    1,
                ),
                Link::new(
                    SpanContext::new(
                        TraceId::from_bytes(t1),
                        SpanId::from_bytes(client),
                        TraceFlags::default(),
                        false,
                        TraceState::NONE,
                    ),
                    vec![],
                    0,
                ),
            ],
            dropped: (3, 4, 5),
        },
        SpanSpec {
            parent: Some(root),
            kind: SpanKind::Client,
            status: Status::error("upstream timed out"),
            scope: http_scope.clone(),
            end: at(base, 120 * ms),
            attrs: vec![
                KeyValue::new("peer.service", format!("backend-{tag}")),
                KeyValue::new("http.status_code", 504_i64),
            ],
            ..SpanSpec::simple(t1, client, Some(root), "POST /api/pay", at(base, 10 * ms))
        },
        SpanSpec {
            scope: db_scope.clone(),
            attrs: vec![
                KeyValue::new("db.system", "postgresql"),
                KeyValue::new("db.rows", 12_i64),
            ],
            ..SpanSpec::simple(t1, internal, Some(root), "render", at(base, 130 * ms + 1))
        },
        SpanSpec {
            kind: SpanKind::Producer,
            scope: db_scope.clone(),
            ..SpanSpec::simple(t1, producer, Some(root), "enqueue", at(base, 140 * ms))
        },
    ];
    let be_spans = vec![
        SpanSpec {
            kind: SpanKind::Server,
            parent_remote: true,
            status: Status::error("payment declined"),
            scope: http_scope.clone(),
            attrs: vec![
                KeyValue::new("http.method", "POST"),
                KeyValue::new("http.status_code", 402_i64),
                KeyValue::new(
                    "arr.int",
                    Value::Array(Array::I64(vec![i64::MIN, i64::MAX])),
                ),
            ],
            end: at(base, 110 * ms),
            ..SpanSpec::simple(
                t1,
                be_server,
                Some(client),
                "POST /api/pay",
                at(base, 12 * ms),
            )
        },
        SpanSpec {
            kind: SpanKind::Consumer,
            scope: db_scope.clone(),
            events: vec![Event::new(
                "message",
                at(base, 160 * ms),
                vec![KeyValue::new("message.id", 77_i64)],
                0,
            )],
            ..SpanSpec::simple(
                t1,
                be_consumer,
                Some(producer),
                "dequeue",
                at(base, 150 * ms),
            )
        },
        SpanSpec {
            scope: db_scope.clone(),
            status: Status::Ok,
            ..SpanSpec::simple(
                t1,
                be_internal,
                Some(be_server),
                "SELECT",
                at(base, 20 * ms),
            )
        },
        // Second trace.
        SpanSpec {
            kind: SpanKind::Server,
            trace_state: TraceState::from_key_value([("lk", "lv")]).unwrap(),
            ..SpanSpec::simple(t2, t2_a, None, "batch-job", at(base, 300 * ms))
        },
        SpanSpec {
            links: vec![Link::new(
                remote_ctx(t1, root, TraceState::NONE),
                vec![KeyValue::new("link.bool", false)],
                0,
            )],
            ..SpanSpec::simple(t2, t2_b, Some(t2_a), "batch-step", at(base, 310 * ms))
        },
    ];
    Dataset::new(vec![
        (
            frontend,
            fe_spans.into_iter().map(SpanSpec::build).collect(),
        ),
        (backend, be_spans.into_iter().map(SpanSpec::build).collect()),
    ])
}

/// Read `trace_id` back through v1 JSON, v1 protobuf, v2 JSON and v2 protobuf
/// and compare each with `want`.
pub(crate) async fn check_trace_all_formats(
    server: &Server,
    what: &str,
    trace_id: &str,
    want: &SpanMap,
) {
    let v1j = server
        .trace_v1_json(trace_id)
        .await
        .unwrap_or_else(|| panic!("{what}: v1 JSON: trace {trace_id} not found (404)"));
    let mut got = spans_from_json(&v1_batches(&v1j));
    sort_events(&mut got);
    assert_same_spans(&format!("{what} [v1 JSON]"), want, &got);

    let v1p = server
        .trace_v1_proto(trace_id)
        .await
        .unwrap_or_else(|| panic!("{what}: v1 protobuf: trace {trace_id} not found (404)"));
    let mut got = spans_from_proto(&v1p.resource_spans);
    sort_events(&mut got);
    assert_same_spans(&format!("{what} [v1 protobuf]"), want, &got);

    let v2j = server.trace_v2_json(trace_id).await;
    assert!(
        v2j.get("metrics").is_some_and(|m| m.is_object()),
        "{what}: v2 JSON lacks the `metrics` object"
    );
    let mut got = spans_from_json(&v2_resource_spans(&v2j));
    sort_events(&mut got);
    assert_same_spans(&format!("{what} [v2 JSON]"), want, &got);

    let v2p = server.trace_v2_proto(trace_id).await;
    let rs = v2p.trace.map(|t| t.resource_spans).unwrap_or_default();
    let mut got = spans_from_proto(&rs);
    sort_events(&mut got);
    assert_same_spans(&format!("{what} [v2 protobuf]"), want, &got);
}

async fn sdk_roundtrip(t: Transport) {
    let server = Server::start().await;
    let ds = rich_dataset(&format!("{t:?}"));
    for (res, spans) in &ds.batches {
        export(&server, t, res, spans.clone()).await;
    }
    for (id, want) in &ds.traces {
        check_trace_all_formats(&server, &format!("{t:?}"), id, want).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_grpc_roundtrip() {
    sdk_roundtrip(Transport::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_grpc_gzip_roundtrip() {
    sdk_roundtrip(Transport::GrpcGzip).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_http_protobuf_roundtrip() {
    sdk_roundtrip(Transport::HttpProto).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_http_json_roundtrip() {
    sdk_roundtrip(Transport::HttpJson).await;
}

/// A 64-bit style trace id (8 leading zero bytes) is found by its last 16 hex
/// chars (and with leading zeros stripped); upper-case hex works too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_and_uppercase_trace_ids() {
    let server = Server::start().await;
    let mut short_id = [0u8; 16];
    short_id[8..].copy_from_slice(&rand_span_id());
    short_id[8] |= 0x10; // make the 16-char form start with a non-zero nibble
    let long_id = rand_trace_id();
    let base = base_time();
    let res = Resource::builder_empty()
        .with_attribute(KeyValue::new("service.name", "ids"))
        .build();
    let spans = vec![
        SpanSpec::simple(short_id, rand_span_id(), None, "short", base).build(),
        SpanSpec::simple(long_id, rand_span_id(), None, "long", base).build(),
    ];
    let ds = Dataset::new(vec![(res.clone(), spans.clone())]);
    export(&server, Transport::HttpProto, &res, spans).await;

    let short_hex = hex::encode(short_id);
    let want_short = &ds.traces.iter().find(|(t, _)| *t == short_hex).unwrap().1;
    let long_hex = hex::encode(long_id);
    let want_long = &ds.traces.iter().find(|(t, _)| *t == long_hex).unwrap().1;

    let last16 = &short_hex[16..];
    assert_eq!(last16.len(), 16);
    check_trace_all_formats(&server, "64-bit id by 16 hex chars", last16, want_short).await;
    check_trace_all_formats(
        &server,
        "64-bit id by 16 upper-case hex chars",
        &last16.to_uppercase(),
        want_short,
    )
    .await;
    check_trace_all_formats(&server, "64-bit id by full 32 hex", &short_hex, want_short).await;
    check_trace_all_formats(
        &server,
        "128-bit id in upper case",
        &long_hex.to_uppercase(),
        want_long,
    )
    .await;
    // A 31-char id (one leading zero nibble stripped) of a trace whose id starts with 0.
    let mut z = rand_trace_id();
    z[0] = 0x0a;
    let z_hex = hex::encode(z);
    let zspans = vec![SpanSpec::simple(z, rand_span_id(), None, "odd", base).build()];
    let zds = Dataset::new(vec![(res.clone(), zspans.clone())]);
    export(&server, Transport::Grpc, &res, zspans).await;
    check_trace_all_formats(&server, "31 hex chars", &z_hex[1..], &zds.traces[0].1).await;
}

/// Unknown ID: v1 -> 404, v2 -> 200 with an empty trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_trace_id() {
    let server = Server::start().await;
    let id = hex::encode(rand_trace_id());
    let (status, body) = server.get(&format!("/api/traces/{id}")).await;
    assert_eq!(status, 404, "v1 unknown id: {body}");
    let (status, _, body) = server
        .get_accept(&format!("/api/traces/{id}"), "application/protobuf")
        .await;
    assert_eq!(
        status,
        404,
        "v1 protobuf unknown id: {}",
        String::from_utf8_lossy(&body)
    );
    let v2 = server.trace_v2_json(&id).await;
    let rs = v2_resource_spans(&v2);
    assert!(
        rs.is_null() || rs.as_array().is_some_and(|a| a.is_empty()),
        "v2 unknown id should have no resourceSpans: {v2}"
    );
    let v2p = server.trace_v2_proto(&id).await;
    let n = v2p
        .trace
        .map(|t| count_spans(&t.resource_spans))
        .unwrap_or(0);
    assert_eq!(n, 0, "v2 protobuf unknown id returned spans");
}

/// `start`/`end` (unix seconds) around the trace find it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_by_id_time_range() {
    let server = Server::start().await;
    let tid = rand_trace_id();
    let base = base_time();
    let res = Resource::builder_empty()
        .with_attribute(KeyValue::new("service.name", "range"))
        .build();
    let spans = vec![SpanSpec::simple(tid, rand_span_id(), None, "ranged", base).build()];
    let ds = Dataset::new(vec![(res.clone(), spans.clone())]);
    export(&server, Transport::Grpc, &res, spans).await;
    let id = hex::encode(tid);
    let secs = base.duration_since(UNIX_EPOCH).unwrap().as_secs();
    let q = format!("?start={}&end={}", secs - 3600, secs + 3600);
    let v1 = server
        .trace_v1_json_q(&id, &q)
        .await
        .expect("v1 with covering start/end: 404");
    assert_same_spans(
        "v1 start/end",
        &ds.traces[0].1,
        &spans_from_json(&v1_batches(&v1)),
    );
    let v2 = server.trace_v2_json_q(&id, &q).await;
    assert_same_spans(
        "v2 start/end",
        &ds.traces[0].1,
        &spans_from_json(&v2_resource_spans(&v2)),
    );

    // Data still in memory/WAL is always searched (as in Tempo); the
    // exclusion of non-overlapping blocks is checked in
    // durability::flushed_blocks_survive_restart_without_wal.
}

// ---------------------------------------------------------------- raw OTLP

pub(crate) fn pb_kv(key: &str, v: pc::any_value::Value) -> pc::KeyValue {
    pc::KeyValue {
        key: key.into(),
        value: Some(pc::AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

pub(crate) fn pb_str(s: &str) -> pc::any_value::Value {
    pc::any_value::Value::StringValue(s.into())
}

pub(crate) fn pb_span(trace_id: &[u8], span_id: &[u8], name: &str, start: u64) -> pt::Span {
    pt::Span {
        trace_id: trace_id.to_vec(),
        span_id: span_id.to_vec(),
        name: name.into(),
        kind: pt::span::SpanKind::Internal as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: start + 1_000_000,
        attributes: vec![pb_kv("n", pc::any_value::Value::IntValue(1))],
        ..Default::default()
    }
}

pub(crate) fn pb_request(service: &str, spans: Vec<pt::Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![pt::ResourceSpans {
            resource: Some(PbResource {
                attributes: vec![pb_kv("service.name", pb_str(service))],
                ..Default::default()
            }),
            scope_spans: vec![pt::ScopeSpans {
                scope: Some(pc::InstrumentationScope {
                    name: "raw".into(),
                    version: "0.0.1".into(),
                    ..Default::default()
                }),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

/// Values the SDK cannot express: kvlist (nested), bytes, mixed and nested
/// arrays, empty arrays.
fn exotic_span(trace_id: &[u8]) -> pt::Span {
    use pc::any_value::Value as P;
    let mut s = pb_span(
        trace_id,
        &rand_span_id(),
        "exotic",
        now_nanos() - 5_000_000_000,
    );
    s.attributes = vec![
        pb_kv("bytes", P::BytesValue(vec![0, 1, 2, 0xfe, 0xff])),
        pb_kv(
            "kvlist",
            P::KvlistValue(pc::KeyValueList {
                values: vec![
                    pb_kv("inner.str", pb_str("v")),
                    pb_kv("inner.int", P::IntValue(-9)),
                    pb_kv(
                        "inner.list",
                        P::KvlistValue(pc::KeyValueList {
                            values: vec![pb_kv("deep", P::BoolValue(true))],
                        }),
                    ),
                ],
            }),
        ),
        pb_kv(
            "mixed.array",
            P::ArrayValue(pc::ArrayValue {
                values: vec![
                    pc::AnyValue {
                        value: Some(pb_str("s")),
                    },
                    pc::AnyValue {
                        value: Some(P::IntValue(5)),
                    },
                    pc::AnyValue {
                        value: Some(P::DoubleValue(1.5)),
                    },
                    pc::AnyValue {
                        value: Some(P::ArrayValue(pc::ArrayValue {
                            values: vec![pc::AnyValue {
                                value: Some(P::BoolValue(true)),
                            }],
                        })),
                    },
                ],
            }),
        ),
        pb_kv(
            "empty.array",
            P::ArrayValue(pc::ArrayValue { values: vec![] }),
        ),
        pb_kv("int.max", P::IntValue(i64::MAX)),
    ];
    s.events = vec![pt::span::Event {
        time_unix_nano: s.start_time_unix_nano + 10,
        name: "ev".into(),
        attributes: vec![pb_kv("ev.bytes", P::BytesValue(vec![9, 9]))],
        dropped_attributes_count: 0,
    }];
    s
}

async fn raw_exotic(json: bool) {
    let server = Server::start().await;
    let tid = rand_trace_id();
    let req = pb_request("exotic", vec![exotic_span(&tid)]);
    let want = spans_from_proto(&req.resource_spans);
    let (ct, body) = if json {
        ("application/json", serde_json::to_vec(&req).unwrap())
    } else {
        ("application/x-protobuf", req.encode_to_vec())
    };
    let (status, resp) = server.post_otlp(body, &[("Content-Type", ct)]).await;
    assert_eq!(
        status,
        200,
        "POST /v1/traces ({ct}): {}",
        String::from_utf8_lossy(&resp)
    );
    if !json {
        let r = ExportTraceServiceResponse::decode(&resp[..])
            .unwrap_or_else(|e| panic!("response is not an ExportTraceServiceResponse: {e}"));
        if let Some(p) = r.partial_success {
            assert_eq!(p.rejected_spans, 0, "unexpected rejection: {p:?}");
        }
    } else {
        let v: serde_json::Value = serde_json::from_slice(&resp).unwrap_or_else(|e| {
            panic!(
                "JSON export response is not JSON ({e}): {}",
                String::from_utf8_lossy(&resp)
            )
        });
        assert!(v.is_object(), "JSON export response: {v}");
    }
    check_trace_all_formats(
        &server,
        &format!("raw exotic ({ct})"),
        &hex::encode(tid),
        &want,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_protobuf_exotic_values() {
    raw_exotic(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_json_exotic_values() {
    raw_exotic(true).await;
}
