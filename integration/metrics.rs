//! TraceQL metrics end to end: spans sent with the real SDK exporter, then
//! `/api/metrics/query_range`, `/api/metrics/query` and the streaming gRPC methods checked
//! against values computed here from the spans sent (never from the server), while the
//! data is in memory, once it is in a block, and with traces split between the two.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanKind, Status};
use opentelemetry::KeyValue;
use opentelemetry_sdk::Resource;
use serde_json::Value as J;

use crate::harness::*;
use crate::ingest::*;

const STEP_S: u64 = 60;
const SERVICES: [&str; 3] = ["frontend", "checkout", "cart"];
const CODES: [i64; 3] = [200, 404, 503];

/// One span as the test model knows it.
#[derive(Clone, Debug)]
struct MSpan {
    trace: [u8; 16],
    service: &'static str,
    start_ns: u64,
    duration_ns: u64,
    error: bool,
    code: i64,
}

/// A small deterministic generator (not vivace's): xorshift.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `traces` traces of 1-4 spans over `minutes` whole minutes after `base_ns` (a whole
/// minute); every tenth span starts exactly on a step boundary.
fn make_spans(rng: &mut Rng, traces: usize, base_ns: u64, minutes: u64) -> Vec<MSpan> {
    let mut out = Vec::new();
    for t in 0..traces {
        let trace = rand_trace_id();
        let n = 1 + rng.below(4) as usize;
        for i in 0..n {
            let start_ns = if (t + i) % 10 == 0 {
                base_ns + (1 + rng.below(minutes - 1)) * STEP_S * 1_000_000_000
            } else {
                base_ns + rng.below(minutes * STEP_S * 1_000_000_000)
            };
            out.push(MSpan {
                trace,
                service: SERVICES[rng.below(3) as usize],
                start_ns,
                duration_ns: 1_000_000 * (1 + rng.below(900)),
                error: rng.below(5) == 0,
                code: CODES[rng.below(3) as usize],
            });
        }
    }
    out
}

/// Sends spans grouped by service (one export per service, as separate processes would).
async fn send(server: &Server, spans: &[MSpan]) {
    for service in SERVICES {
        let batch: Vec<_> = spans
            .iter()
            .filter(|s| s.service == service)
            .map(|s| {
                let t = UNIX_EPOCH + Duration::from_nanos(s.start_ns);
                let mut spec = SpanSpec::simple(s.trace, rand_span_id(), None, "op", t);
                spec.end = t + Duration::from_nanos(s.duration_ns);
                spec.kind = SpanKind::Server;
                if s.error {
                    spec.status = Status::error("failed");
                }
                spec.attrs = vec![KeyValue::new("http.response.status_code", s.code)];
                spec.build()
            })
            .collect();
        if batch.is_empty() {
            continue;
        }
        let resource = Resource::builder_empty()
            .with_attribute(KeyValue::new("service.name", service))
            .build();
        export(server, Transport::Grpc, &resource, batch).await;
    }
}

/// The bucket a span counts in: right-closed steps, stamped with their end, in ms.
fn bucket_ms(start_ns: u64) -> i64 {
    let step = STEP_S * 1_000_000_000;
    (start_ns.div_ceil(step) * step / 1_000_000) as i64
}

/// Series label set (as "key=value" text) → timestamp → value.
type Model = BTreeMap<String, BTreeMap<i64, f64>>;

fn quantile(mut v: Vec<f64>, q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let pos = q * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// What each checked query must answer for `spans`.
fn expected(query: &str, spans: &[MSpan]) -> Model {
    let mut groups: BTreeMap<String, BTreeMap<i64, Vec<f64>>> = BTreeMap::new();
    let mut add = |key: String, s: &MSpan, v: f64| {
        groups
            .entry(key)
            .or_default()
            .entry(bucket_ms(s.start_ns))
            .or_default()
            .push(v)
    };
    for s in spans {
        let secs = s.duration_ns as f64 / 1e9;
        match query {
            Q_COUNT_BY_SERVICE | Q_QUANTILE_BY_SERVICE => {
                add(format!("resource.service.name={}", s.service), s, secs)
            }
            Q_ERROR_RATE if s.error => add("__name__=rate".into(), s, 1.0),
            Q_BOTH if matches!(s.service, "frontend" | "cart") => {
                let has = |svc: &str| spans.iter().any(|o| o.trace == s.trace && o.service == svc);
                if has("frontend") && has("cart") {
                    add("__name__=count_over_time".into(), s, 1.0)
                }
            }
            Q_MAX_BY_CODE if s.code >= 400 => add(
                format!("span.http.response.status_code={}", s.code),
                s,
                secs,
            ),
            _ => {}
        }
    }
    let mut out = Model::new();
    for (key, buckets) in groups {
        for (ts, values) in buckets {
            match query {
                Q_COUNT_BY_SERVICE | Q_BOTH => {
                    out.entry(key.clone())
                        .or_default()
                        .insert(ts, values.len() as f64);
                }
                Q_ERROR_RATE => {
                    out.entry(key.clone())
                        .or_default()
                        .insert(ts, values.len() as f64 / STEP_S as f64);
                }
                Q_MAX_BY_CODE => {
                    let max = values.iter().copied().fold(f64::MIN, f64::max);
                    out.entry(key.clone()).or_default().insert(ts, max);
                }
                Q_QUANTILE_BY_SERVICE => {
                    for p in [0.5, 0.9] {
                        out.entry(format!("{key},p={p}"))
                            .or_default()
                            .insert(ts, quantile(values.clone(), p));
                    }
                }
                _ => unreachable!(),
            }
        }
    }
    out
}

const Q_COUNT_BY_SERVICE: &str = "{ } | count_over_time() by (resource.service.name)";
const Q_ERROR_RATE: &str = "{ status = error } | rate()";
const Q_MAX_BY_CODE: &str = "{ span.http.response.status_code >= 400 } | max_over_time(duration) by (span.http.response.status_code)";
const Q_QUANTILE_BY_SERVICE: &str =
    "{ } | quantile_over_time(duration, 0.5, 0.9) by (resource.service.name)";
/// Needs whole traces: both spansets must be in the trace.
const Q_BOTH: &str =
    "{ resource.service.name = \"frontend\" } && { resource.service.name = \"cart\" } | count_over_time()";
const Q_COMPARE: &str = "{ } | compare({ status = error })";
const QUERIES: [&str; 4] = [
    Q_COUNT_BY_SERVICE,
    Q_ERROR_RATE,
    Q_MAX_BY_CODE,
    Q_QUANTILE_BY_SERVICE,
];

fn label_text(l: &J) -> String {
    let v = &l["value"];
    let value = if let Some(s) = v["stringValue"].as_str() {
        s.to_owned()
    } else if let Some(i) = v["intValue"].as_str() {
        i.to_owned()
    } else if let Some(d) = v["doubleValue"].as_f64() {
        d.to_string()
    } else {
        format!("{v}")
    };
    format!("{}={value}", l["key"].as_str().unwrap())
}

/// A range response as the model's shape; zero samples (value left out) are dropped.
fn as_model(resp: &J) -> Model {
    let mut out = Model::new();
    for s in resp["series"].as_array().expect("series") {
        let key: Vec<String> = s["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(label_text)
            .collect();
        let samples = out.entry(key.join(",")).or_default();
        for x in s["samples"].as_array().unwrap() {
            let ts: i64 = x["timestampMs"].as_str().unwrap().parse().unwrap();
            assert_eq!(ts % (STEP_S as i64 * 1000), 0, "sample not on a step: {x}");
            let v = x["value"].as_f64().unwrap_or(0.0);
            if v != 0.0 {
                samples.insert(ts, v);
            }
        }
    }
    out.retain(|_, v| !v.is_empty());
    out
}

fn assert_close(what: &str, got: &Model, want: &Model) {
    assert!(
        !want.is_empty(),
        "{what}: the model expects nothing: a broken test"
    );
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{what}: series"
    );
    for (k, w) in want {
        let g = &got[k];
        assert_eq!(
            g.keys().collect::<Vec<_>>(),
            w.keys().collect::<Vec<_>>(),
            "{what}: {k}: timestamps"
        );
        for (ts, wv) in w {
            let gv = g[ts];
            assert!(
                (gv - wv).abs() <= 1e-9 * wv.abs().max(1.0),
                "{what}: {k} at {ts}: got {gv}, want {wv}"
            );
        }
    }
}

async fn query_range(server: &Server, q: &str, start_s: u64, end_s: u64) -> J {
    let path = format!(
        "/api/metrics/query_range?q={}&start={start_s}&end={end_s}&step={STEP_S}s",
        url_encode(q)
    );
    let (code, body) = server.get(&path).await;
    assert_eq!(code, 200, "{q}: {body}");
    serde_json::from_str(&body).unwrap()
}

async fn check_all(what: &str, server: &Server, spans: &[MSpan], range: (u64, u64)) {
    // A trace split over two blocks is evaluated a piece at a time until the compactor
    // joins them (README), so the whole-trace query is checked only where that cannot be.
    let whole: &[&str] = if what == "in two blocks" {
        &[]
    } else {
        &[Q_BOTH]
    };
    for q in QUERIES.iter().chain(whole) {
        let resp = query_range(server, q, range.0, range.1).await;
        assert_close(
            &format!("{what}: {q}"),
            &as_model(&resp),
            &expected(q, spans),
        );
        assert!(
            resp["metrics"]["completedJobs"].as_u64().unwrap_or(0) >= 1,
            "{what}: {resp}"
        );
    }
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_agree_in_memory_in_blocks_and_split_between() {
    let server = Server::start_with(Opts {
        trace_idle_period: "4s".into(),
        max_block_duration: "4s".into(),
        flush_check_period: "200ms".into(),
        ..Opts::default()
    })
    .await;
    // Eight whole minutes ending two minutes ago: inside the ingestion time range.
    let base_ns = (now_s() / STEP_S - 10) * STEP_S * 1_000_000_000;
    let range = (base_ns / 1_000_000_000 - 30, now_s() + 60);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let first = make_spans(&mut rng, 150, base_ns, 8);

    // In memory.
    send(&server, &first).await;
    check_all("in memory", &server, &first, range).await;
    let compared = as_model(&query_range(&server, Q_COMPARE, range.0, range.1).await);
    assert!(
        server.block_metas().is_empty(),
        "a block was cut before the in-memory check: the premise failed"
    );
    check_compare(&compared, &first);

    // In a block: the same answers, compare() included (read from dedicated and generic
    // attribute columns there).
    server.wait_blocks_flushed(1, Duration::from_secs(60)).await;
    check_all("in a block", &server, &first, range).await;
    let from_block = as_model(&query_range(&server, Q_COMPARE, range.0, range.1).await);
    assert_close("compare() from a block", &from_block, &compared);

    // Split: more spans of a third of the same traces (and new ones), in memory while the
    // earlier spans of those traces are in the block.
    let mut second = make_spans(&mut rng, 60, base_ns, 8);
    for (i, s) in second.iter_mut().enumerate().filter(|(i, _)| i % 3 == 0) {
        s.trace = first[i % first.len()].trace;
    }
    send(&server, &second).await;
    let all: Vec<MSpan> = first.iter().chain(&second).cloned().collect();
    // Traces that match the whole-trace query only with both pieces: the case under test.
    let only_whole = |t: &[u8; 16]| {
        let has = |v: &[MSpan], svc: &str| v.iter().any(|s| &s.trace == t && s.service == svc);
        let both = |v: &[MSpan]| has(v, "frontend") && has(v, "cart");
        both(&all) && !both(&first) && !both(&second)
    };
    assert!(
        second.iter().any(|s| only_whole(&s.trace)),
        "no trace needs both pieces: the split case is not exercised"
    );
    check_all("split between memory and a block", &server, &all, range).await;
    server.wait_blocks_flushed(2, Duration::from_secs(60)).await;
    check_all("in two blocks", &server, &all, range).await;

    // Instant: one value per series over the whole range.
    let (code, body) = server
        .get(&format!(
            "/api/metrics/query?q={}&start={}&end={}",
            url_encode(Q_COUNT_BY_SERVICE),
            range.0,
            range.1
        ))
        .await;
    assert_eq!(code, 200, "{body}");
    let resp: J = serde_json::from_str(&body).unwrap();
    for service in SERVICES {
        let want = all.iter().filter(|s| s.service == service).count() as f64;
        let got = resp["series"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["labels"][0]["value"]["stringValue"] == service)
            .unwrap_or_else(|| panic!("no instant series for {service}: {resp}"));
        assert_eq!(got["value"].as_f64(), Some(want), "{service}: {got}");
    }

    // Exemplars name traces that really match.
    let (code, body) = server
        .get(&format!(
            "/api/metrics/query_range?q={}&start={}&end={}&step=60s&exemplars=5",
            url_encode(Q_ERROR_RATE),
            range.0,
            range.1
        ))
        .await;
    assert_eq!(code, 200, "{body}");
    let resp: J = serde_json::from_str(&body).unwrap();
    let exemplars = resp["series"][0]["exemplars"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(!exemplars.is_empty() && exemplars.len() <= 8, "{resp}");
    for e in &exemplars {
        let id = e["labels"][0]["value"]["stringValue"].as_str().unwrap();
        assert!(
            all.iter().any(|s| s.error && hex::encode(s.trace) == id),
            "exemplar {id} is not an erroring trace"
        );
    }

    // Protobuf and the streaming gRPC method give the same series as JSON.
    check_protobuf_and_streaming(&server, &all, range).await;
}

/// compare()'s totals per side for the service attribute, and the status split.
fn check_compare(got: &Model, spans: &[MSpan]) {
    let mut want = Model::new();
    for s in spans {
        let side = if s.error { "selection" } else { "baseline" };
        for key in [
            format!("__meta_type={side}_total,resource.service.name={{}}"),
            format!(
                "__meta_type={side},status={}",
                if s.error { "error" } else { "unset" }
            ),
            format!(
                "__meta_type={side},span.http.response.status_code={}",
                s.code
            ),
        ] {
            *want
                .entry(key)
                .or_default()
                .entry(bucket_ms(s.start_ns))
                .or_default() += 1.0;
        }
    }
    let got: Model = got
        .iter()
        .filter(|(k, _)| want.contains_key(*k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_close("compare()", &got, &want);
}

async fn check_protobuf_and_streaming(server: &Server, spans: &[MSpan], range: (u64, u64)) {
    use prost::Message;
    use vivace::api::tempopb::{QueryRangeRequest, QueryRangeResponse};

    fn proto_model(r: &QueryRangeResponse) -> Model {
        let mut out = Model::new();
        for s in &r.series {
            let key: Vec<String> = s
                .labels
                .iter()
                .map(|l| {
                    use vivace::model::any_value::Value as V;
                    let v = match l.value.as_ref().and_then(|v| v.value.as_ref()) {
                        Some(V::StringValue(s)) => s.clone(),
                        Some(V::IntValue(i)) => i.to_string(),
                        Some(V::DoubleValue(d)) => d.to_string(),
                        other => format!("{other:?}"),
                    };
                    format!("{}={v}", l.key)
                })
                .collect();
            let m = out.entry(key.join(",")).or_default();
            for x in &s.samples {
                if x.value != 0.0 {
                    m.insert(x.timestamp_ms, x.value);
                }
            }
        }
        out.retain(|_, v| !v.is_empty());
        out
    }

    let want = expected(Q_COUNT_BY_SERVICE, spans);
    let (code, _, body) = server
        .get_accept(
            &format!(
                "/api/metrics/query_range?q={}&start={}&end={}&step=60",
                url_encode(Q_COUNT_BY_SERVICE),
                range.0,
                range.1
            ),
            "application/protobuf",
        )
        .await;
    assert_eq!(code, 200);
    let resp = QueryRangeResponse::decode(body.as_slice()).expect("protobuf response");
    assert_close("protobuf", &proto_model(&resp), &want);

    let req = QueryRangeRequest {
        query: Q_COUNT_BY_SERVICE.into(),
        start: range.0 * 1_000_000_000,
        end: range.1 * 1_000_000_000,
        step: STEP_S * 1_000_000_000,
        ..Default::default()
    };
    let msgs: Vec<QueryRangeResponse> = server
        .stream_call("/tempopb.StreamingQuerier/MetricsQueryRange", req, &[])
        .await
        .expect("metrics query range call");
    let last = msgs.into_iter().last();
    assert_close(
        "streaming",
        &proto_model(&last.expect("one message")),
        &want,
    );

    // A bad query is a gRPC error naming the problem.
    let bad = QueryRangeRequest {
        query: "{ } | rate(".into(),
        start: range.0 * 1_000_000_000,
        end: range.1 * 1_000_000_000,
        step: STEP_S * 1_000_000_000,
        ..Default::default()
    };
    let err = server
        .stream_call::<_, QueryRangeResponse>(
            "/tempopb.StreamingQuerier/MetricsQueryRange",
            bad,
            &[],
        )
        .await
        .expect_err("invalid query");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_requests_are_checked_with_clear_400s() {
    let server = Server::start_with(Opts {
        extra_yaml: "overrides:\n  defaults:\n    read:\n      max_metrics_duration: 2h\n".into(),
        ..Opts::default()
    })
    .await;
    let now = now_s();
    for (path, says) in [
        ("/api/metrics/query_range?q=%7B%7D", "not a metrics query"),
        (
            "/api/metrics/query_range?q=%7B%20%7D%20%7C%20rate(",
            "invalid TraceQL",
        ),
        ("/api/metrics/query_range", "missing q"),
        (
            &*format!(
                "/api/metrics/query_range?q=%7B%7D%7Crate()&start={}&end={now}",
                now - 3 * 3600
            ),
            "maximum allowed duration",
        ),
        (
            &*format!(
                "/api/metrics/query_range?q=%7B%7D%7Crate()&start={}&end={now}&step=100ms",
                now - 3600
            ),
            "too small",
        ),
        ("/api/metrics/query_range?q=%7B%7D%7Crate()&step=-1", "step"),
        (
            "/api/metrics/query?q=%7B%7D%7Crate()&start=20&end=10",
            "end",
        ),
    ] {
        let (code, body) = server.get(path).await;
        assert_eq!(code, 400, "{path}: {body}");
        assert!(body.contains(says), "{path}: {body:?} should say {says:?}");
    }
    // With nothing ingested a valid query answers with no series, not an error.
    let (code, body) = server
        .get("/api/metrics/query_range?q=%7B%7D%7Crate()&since=15m")
        .await;
    assert_eq!(code, 200, "{body}");
    let resp: J = serde_json::from_str(&body).unwrap();
    assert_eq!(resp["series"].as_array().map(Vec::len), Some(0), "{resp}");
}
