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
    let metrics = server.metrics_text().await;
    assert!(
        metrics.contains("vivace_distributor_spans_refused_total{reason=\"rate_limited\"}"),
        "{metrics}"
    );
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
