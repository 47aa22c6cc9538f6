//! Per-tenant limits: refusals exporters understand (429 + Retry-After, RESOURCE_EXHAUSTED
//! with RetryInfo, partial success for oversized traces), nothing refused ever reappearing,
//! and a runtime overrides file applied without a restart.

use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use tonic_types::StatusExt;

use crate::harness::*;
use crate::ingest::{pb_request, pb_span};

fn request_bytes(trace: &[u8; 16], spans: usize) -> Vec<u8> {
    let spans = (0..spans)
        .map(|_| pb_span(trace, &rand_span_id(), "op", now_nanos()))
        .collect();
    pb_request("limited", spans).encode_to_vec()
}

const PROTO: (&str, &str) = ("content-type", "application/x-protobuf");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_refusals_are_retryable_and_say_when() {
    let server = Server::start_with(Opts {
        extra_yaml: "overrides:\n  defaults:\n    ingestion:\n      rate_limit_bytes: 2000\n      burst_size_bytes: 8000\n".into(),
        ..Opts::default()
    })
    .await;
    let body = request_bytes(&rand_trace_id(), 40);
    assert!(body.len() > 2000 && body.len() < 8000, "{}", body.len());
    let mut refused = None;
    for _ in 0..5 {
        let (code, _) = server.post_otlp(body.clone(), &[PROTO]).await;
        if code == 429 {
            refused = Some(code);
            break;
        }
        assert_eq!(code, 200);
    }
    assert_eq!(refused, Some(429), "the burst never ran out");
    let resp = reqwest::Client::new()
        .post(server.otlp_http_url())
        .header(PROTO.0, PROTO.1)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    let after: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=10).contains(&after), "Retry-After {after}");

    let mut client = TraceServiceClient::connect(server.grpc_url())
        .await
        .unwrap();
    let err = client
        .export(ExportTraceServiceRequest::decode(&body[..]).unwrap())
        .await
        .expect_err("over the rate");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");
    let retry = err.get_details_retry_info().expect("RetryInfo attached");
    assert!(retry.retry_delay.is_some_and(|d| d > Duration::ZERO));

    // Bigger than the burst can never pass: refused as too large, not as "retry later".
    let (code, msg) = server
        .post_otlp(request_bytes(&rand_trace_id(), 150), &[PROTO])
        .await;
    assert_eq!(code, 413, "{}", String::from_utf8_lossy(&msg));
    // The rate is taken before the body is decoded: bytes that do not even decode are
    // refused as over the rate (429) or the burst (413), not inspected (400).
    let garbage = vec![0xffu8; 3000];
    let (code, msg) = server.post_otlp(garbage, &[PROTO]).await;
    assert_eq!(code, 429, "{}", String::from_utf8_lossy(&msg));
    let (code, msg) = server.post_otlp(vec![0xffu8; 9000], &[PROTO]).await;
    assert_eq!(code, 413, "{}", String::from_utf8_lossy(&msg));
    let metrics = server.metrics_text().await;
    let refused: f64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "vivace_distributor_spans_refused_total{reason=\"rate_limited\",tenant=\"single-tenant\"} ",
            )
        })
        .unwrap_or_else(|| panic!("no rate_limited refusals in {metrics}"))
        .parse()
        .unwrap();
    // Counted from the wire before decoding: at least the 150 spans of the oversized request.
    assert!(refused >= 150.0, "{refused} spans refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_traces_are_refused_by_partial_success_and_stay_refused() {
    let mut server = Server::start_with(Opts {
        extra_yaml: "overrides:\n  defaults:\n    global:\n      max_bytes_per_trace: 3000\n"
            .into(),
        ..Opts::default()
    })
    .await;
    let big = rand_trace_id();
    let (code, _) = server.post_otlp(request_bytes(&big, 20), &[PROTO]).await;
    assert_eq!(code, 200);
    // One request: more spans for the big trace (now over the limit) and a fresh trace.
    let small = rand_trace_id();
    let mut req = ExportTraceServiceRequest::decode(&request_bytes(&big, 30)[..]).unwrap();
    req.resource_spans[0].scope_spans[0].spans.push(pb_span(
        &small,
        &rand_span_id(),
        "fits",
        now_nanos(),
    ));
    let (code, body) = server.post_otlp(req.encode_to_vec(), &[PROTO]).await;
    assert_eq!(code, 200);
    let resp = ExportTraceServiceResponse::decode(&body[..]).unwrap();
    let p = resp.partial_success.expect("partial success");
    assert_eq!(p.rejected_spans, 30);
    assert!(
        p.error_message.contains("max_bytes_per_trace"),
        "{}",
        p.error_message
    );

    let count = |t: Option<opentelemetry_proto::tonic::trace::v1::TracesData>| {
        t.map_or(0, |t| count_spans(&t.resource_spans))
    };
    assert_eq!(count(server.trace_v1_proto(&hex::encode(big)).await), 20);
    assert_eq!(count(server.trace_v1_proto(&hex::encode(small)).await), 1);
    // Refused spans must not come back from the WAL after a crash.
    server.kill9();
    server.restart().await;
    assert_eq!(count(server.trace_v1_proto(&hex::encode(big)).await), 20);
    assert_eq!(count(server.trace_v1_proto(&hex::encode(small)).await), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_overrides_apply_per_tenant_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("overrides.yaml");
    let tight = "overrides:\n  team-a:\n    ingestion:\n      rate_limit_bytes: 500\n      burst_size_bytes: 500\n";
    std::fs::write(&file, tight).unwrap();
    let server = Server::start_with(Opts {
        multitenancy: true,
        extra_yaml: format!(
            "overrides:\n  per_tenant_override_config: {}\n  per_tenant_override_period: 200ms\n",
            file.display()
        ),
        ..Opts::default()
    })
    .await;
    let body = request_bytes(&rand_trace_id(), 20);
    let send = |tenant: &'static str| {
        let body = body.clone();
        let server = &server;
        async move {
            server
                .post_otlp(body, &[PROTO, ("X-Scope-OrgID", tenant)])
                .await
                .0
        }
    };
    assert_eq!(send("team-a").await, 413, "team-a's burst is 500 bytes");
    assert_eq!(send("team-b").await, 200, "team-b has the defaults");
    std::fs::write(&file, "overrides: {}\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while send("team-a").await != 200 {
        assert!(
            Instant::now() < deadline,
            "new overrides never applied\n{}",
            server.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Spans of `traces` (one span each) in one request.
fn traces_request(traces: &[[u8; 16]]) -> ExportTraceServiceRequest {
    let spans = traces
        .iter()
        .map(|t| pb_span(t, &rand_span_id(), "op", now_nanos()))
        .collect();
    pb_request("limited", spans)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_traces_past_the_limit_are_refused_but_live_ones_grow() {
    let server = Server::start_with(Opts {
        // Traces stay live 5s after their last span; cuts run every 2s.
        trace_idle_period: "5s".into(),
        max_block_duration: "2s".into(),
        multitenancy: true,
        extra_yaml: "overrides:\n  defaults:\n    ingestion:\n      max_traces_per_user: 3\n"
            .into(),
        ..Opts::default()
    })
    .await;
    const A: (&str, &str) = ("X-Scope-OrgID", "team-a");
    let live: Vec<[u8; 16]> = (0..3).map(|_| rand_trace_id()).collect();
    let (code, body) = server
        .post_otlp(traces_request(&live).encode_to_vec(), &[PROTO, A])
        .await;
    assert_eq!(code, 200);
    assert!(ExportTraceServiceResponse::decode(&body[..])
        .unwrap()
        .partial_success
        .is_none_or(|p| p.rejected_spans == 0));

    // One request: a span for a live trace (kept) and two new traces (refused).
    let (n1, n2) = (rand_trace_id(), rand_trace_id());
    let (code, body) = server
        .post_otlp(
            traces_request(&[live[0], n1, n2]).encode_to_vec(),
            &[PROTO, A],
        )
        .await;
    assert_eq!(code, 200);
    let p = ExportTraceServiceResponse::decode(&body[..])
        .unwrap()
        .partial_success
        .expect("partial success");
    assert_eq!(p.rejected_spans, 2);
    assert!(
        p.error_message.contains("LIVE_TRACES_EXCEEDED")
            && p.error_message.contains("max_traces_per_user (3)"),
        "{}",
        p.error_message
    );

    // Over gRPC the exporter gets the same partial success.
    let mut client = TraceServiceClient::connect(server.grpc_url())
        .await
        .unwrap();
    let mut req = tonic::Request::new(traces_request(&[rand_trace_id()]));
    req.metadata_mut()
        .insert("x-scope-orgid", "team-a".parse().unwrap());
    let resp = client.export(req).await.expect("export").into_inner();
    assert_eq!(resp.partial_success.expect("partial").rejected_spans, 1);

    // Another tenant has its own count.
    let (code, body) = server
        .post_otlp(
            traces_request(&[rand_trace_id()]).encode_to_vec(),
            &[PROTO, ("X-Scope-OrgID", "team-b")],
        )
        .await;
    assert_eq!(code, 200);
    assert!(ExportTraceServiceResponse::decode(&body[..])
        .unwrap()
        .partial_success
        .is_none_or(|p| p.rejected_spans == 0));

    let get = |id: [u8; 16]| {
        let url = server.http_url(&format!("/api/traces/{}", hex::encode(id)));
        async move {
            let resp = reqwest::Client::new()
                .get(url)
                .header("X-Scope-OrgID", "team-a")
                .header("Accept", "application/protobuf")
                .send()
                .await
                .unwrap();
            let code = resp.status().as_u16();
            let bytes = resp.bytes().await.unwrap();
            (
                code,
                opentelemetry_proto::tonic::trace::v1::TracesData::decode(&bytes[..])
                    .map_or(0, |t| count_spans(&t.resource_spans)),
            )
        }
    };
    assert_eq!(get(live[0]).await, (200, 2), "the live trace grew");
    assert_eq!(get(n1).await.0, 404, "refused traces are nowhere");
    let metrics = server.metrics_text().await;
    assert!(
        metrics.contains(
            "vivace_distributor_spans_refused_total{reason=\"live_traces_exceeded\",tenant=\"team-a\"} 3\n"
        ),
        "{metrics}"
    );

    // Once the live traces go idle and are cut into a block, new traces fit again.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = server
            .post_otlp(
                traces_request(&[rand_trace_id()]).encode_to_vec(),
                &[PROTO, A],
            )
            .await;
        assert_eq!(code, 200);
        let rejected = ExportTraceServiceResponse::decode(&body[..])
            .unwrap()
            .partial_success
            .map_or(0, |p| p.rejected_spans);
        if rejected == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "live traces never drained");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn search(server: &Server, query: &str) -> (u16, String) {
    server.get(&format!("/api/search?q=%7B%7D{query}")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_duration_and_result_limits() {
    let server = Server::start_with(Opts {
        extra_yaml: "overrides:\n  defaults:\n    read:\n      max_search_duration: 1h\n      max_result_limit: 2\n".into(),
        ..Opts::default()
    })
    .await;
    let traces: Vec<[u8; 16]> = (0..5).map(|_| rand_trace_id()).collect();
    let (code, _) = server
        .post_otlp(traces_request(&traces).encode_to_vec(), &[PROTO])
        .await;
    assert_eq!(code, 200);
    let now = now_nanos() / 1_000_000_000;

    // Two hours is beyond the limit: refused, naming it.
    let (code, body) = search(&server, &format!("&start={}&end={}", now - 7200, now + 1)).await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("max_search_duration"), "{body}");

    // Within it, the limit asked for is cut to max_result_limit.
    let (code, body) = search(
        &server,
        &format!("&start={}&end={}&limit=100", now - 600, now + 1),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["traces"].as_array().unwrap().len(), 2, "{body}");
    let (_, body) = search(&server, "&limit=1").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["traces"].as_array().unwrap().len(),
        1,
        "a smaller limit stays"
    );

    // Streaming search obeys the same limits.
    use vivace::api::tempopb::{SearchRequest, SearchResponse};
    const SEARCH: &str = "/tempopb.StreamingQuerier/Search";
    let too_long = SearchRequest {
        query: "{}".into(),
        start: (now - 7200) as u32,
        end: (now + 1) as u32,
        ..Default::default()
    };
    let err = server
        .stream_call::<_, SearchResponse>(SEARCH, too_long, &[])
        .await
        .expect_err("too long a range");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("max_search_duration"), "{err}");
    let all = SearchRequest {
        query: "{}".into(),
        limit: 100,
        ..Default::default()
    };
    let msgs: Vec<SearchResponse> = server.stream_call(SEARCH, all, &[]).await.expect("search");
    let n: usize = msgs.iter().map(|m| m.traces.len()).sum();
    assert_eq!(n, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_file_changes_live_trace_and_read_limits_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("overrides.yaml");
    std::fs::write(
        &file,
        "overrides:\n  team-a:\n    ingestion:\n      max_traces_per_user: 1\n    read:\n      max_result_limit: 1\n",
    )
    .unwrap();
    let server = Server::start_with(Opts {
        multitenancy: true,
        extra_yaml: format!(
            "overrides:\n  per_tenant_override_config: {}\n  per_tenant_override_period: 200ms\n",
            file.display()
        ),
        ..Opts::default()
    })
    .await;
    const A: (&str, &str) = ("X-Scope-OrgID", "team-a");
    let rejected = |traces: Vec<[u8; 16]>| {
        let server = &server;
        async move {
            let (code, body) = server
                .post_otlp(traces_request(&traces).encode_to_vec(), &[PROTO, A])
                .await;
            assert_eq!(code, 200);
            ExportTraceServiceResponse::decode(&body[..])
                .unwrap()
                .partial_success
                .map_or(0, |p| p.rejected_spans)
        }
    };
    let found = || {
        let url = server.http_url("/api/search?q=%7B%7D&limit=50");
        async move {
            let body = reqwest::Client::new()
                .get(url)
                .header(A.0, A.1)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            v["traces"].as_array().unwrap().len()
        }
    };
    assert_eq!(rejected(vec![rand_trace_id(), rand_trace_id()]).await, 1);
    assert_eq!(found().await, 1, "max_result_limit 1");

    // Lift both limits in the file; the running server picks them up.
    std::fs::write(
        &file,
        "overrides:\n  team-a:\n    ingestion:\n      max_traces_per_user: 10\n",
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while rejected(vec![rand_trace_id()]).await != 0 {
        assert!(
            Instant::now() < deadline,
            "new overrides never applied\n{}",
            server.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(found().await >= 2, "max_result_limit lifted");
}
