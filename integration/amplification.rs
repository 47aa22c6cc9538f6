//! Request bodies that are small on the wire and large decoded: multi-member gzip bodies
//! (every member is ingested, on OTLP/HTTP and OTLP/gRPC) and decode amplification (a
//! small gzip body of millions of empty spans is refused as too large, never decoded).

use std::io::Write;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1 as pt;
use prost::Message;
use tower::ServiceExt;

use crate::harness::*;
use crate::ingest::*;

const PROTO: (&str, &str) = ("Content-Type", "application/x-protobuf");
const GZIP: (&str, &str) = ("Content-Encoding", "gzip");

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Two requests of `n` spans each for one trace, as two gzip members of one body. Protobuf
/// messages concatenate, so the inflated body is one request holding both.
fn two_member_body(n: usize) -> (Vec<u8>, String) {
    let tid = rand_trace_id();
    let start = now_nanos() - 10_000_000_000;
    let req = |part: usize| {
        let spans = (0..n)
            .map(|i| {
                pb_span(
                    &tid,
                    &rand_span_id(),
                    &format!("member-{part}-span-{i}"),
                    start + i as u64,
                )
            })
            .collect();
        pb_request("multi-gzip", spans).encode_to_vec()
    };
    let mut body = gzip(&req(1));
    body.extend(gzip(&req(2)));
    (body, hex::encode(tid))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_multi_member_gzip_stores_every_member() {
    let server = Server::start().await;
    let (body, id) = two_member_body(3);
    let (status, resp) = server.post_otlp(body, &[PROTO, GZIP]).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&resp));
    assert_eq!(
        server
            .wait_trace_spans(&id, 6, Duration::from_secs(5))
            .await,
        6,
        "spans of both gzip members are stored"
    );
}

/// Sends `message` as one gzip-compressed gRPC frame, as an exporter with gzip does, and
/// returns the grpc-status.
async fn grpc_gzip_frame(server: &Server, message: &[u8]) -> (i32, String) {
    let channel = tonic::transport::Endpoint::from_shared(server.grpc_url())
        .unwrap()
        .connect()
        .await
        .expect("grpc connect");
    let mut frame = BytesMut::new();
    frame.put_u8(1);
    frame.put_u32(message.len() as u32);
    frame.put_slice(message);
    let req = http::Request::builder()
        .method("POST")
        .uri(format!(
            "{}/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            server.grpc_url()
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-encoding", "gzip")
        .body(tonic::body::Body::new(Full::new(frame.freeze())))
        .unwrap();
    let resp = channel.oneshot(req).await.expect("grpc request");
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.expect("grpc response body");
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let get = |k: &str| {
        trailers
            .get(k)
            .or_else(|| parts.headers.get(k))
            .map(|v| v.to_str().unwrap_or("").to_string())
    };
    let code = get("grpc-status")
        .and_then(|c| c.parse().ok())
        .expect("grpc-status");
    (code, get("grpc-message").unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_multi_member_gzip_stores_every_member() {
    let server = Server::start().await;
    let (body, id) = two_member_body(2);
    let (code, msg) = grpc_gzip_frame(&server, &body).await;
    assert_eq!(code, 0, "grpc export: {msg}");
    assert_eq!(
        server
            .wait_trace_spans(&id, 4, Duration::from_secs(5))
            .await,
        4,
        "spans of both gzip members are stored"
    );
}

/// `n` empty spans: two bytes each on the wire, a few hundred decoded.
fn empty_spans(n: usize) -> Vec<u8> {
    ExportTraceServiceRequest {
        resource_spans: vec![pt::ResourceSpans {
            scope_spans: vec![pt::ScopeSpans {
                spans: vec![pt::Span::default(); n],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decode_amplification_is_refused_as_too_large() {
    let server = Server::start().await;
    // 2 million empty spans: 4 MB inflated, a few KB gzipped, ~500 MB decoded.
    let wire = empty_spans(2_000_000);
    let body = gzip(&wire);
    assert!(body.len() < 64 * 1024, "{} bytes gzipped", body.len());
    let (status, resp) = server.post_otlp(body.clone(), &[PROTO, GZIP]).await;
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&resp));
    assert!(
        String::from_utf8_lossy(&resp).contains("spans"),
        "the refusal says why: {}",
        String::from_utf8_lossy(&resp)
    );
    // JSON: `{}` per span amplifies the same way.
    let json = format!(
        r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{}{{}}]}}]}}]}}"#,
        "{},".repeat(300_000)
    );
    let (status, resp) = server
        .post_otlp(
            gzip(json.as_bytes()),
            &[("Content-Type", "application/json"), GZIP],
        )
        .await;
    assert_eq!(status, 413, "json: {}", String::from_utf8_lossy(&resp));
    // gRPC: RESOURCE_EXHAUSTED, and the message says why.
    let (code, msg) = grpc_gzip_frame(&server, &body).await;
    assert_eq!(code, tonic::Code::ResourceExhausted as i32, "{msg}");
    assert!(msg.contains("spans"), "{msg}");
    server.assert_ready().await;
    // Ordinary exports still go through.
    let (body, id) = two_member_body(1);
    let (status, _) = server.post_otlp(body, &[PROTO, GZIP]).await;
    assert_eq!(status, 200);
    assert_eq!(
        server
            .wait_trace_spans(&id, 2, Duration::from_secs(5))
            .await,
        2
    );
}

/// Restarts `server` with extra `distributor:` keys (the harness writes that section).
async fn with_distributor_keys(server: &mut Server, keys: &str) {
    let yaml = server
        .config_yaml()
        .replacen("distributor:\n", &format!("distributor:\n{keys}"), 1);
    std::fs::write(server.config_path(), yaml).unwrap();
    server.restart().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_in_flight_are_bounded_across_requests() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut server = Server::start().await;
    with_distributor_keys(&mut server, "  max_inflight_request_bytes: 200000\n").await;
    // A slow upload: 150 kB of its 160 kB body sent, the rest held back. What it sent is in
    // flight until the request ends.
    let mut slow = tokio::net::TcpStream::connect(("127.0.0.1", server.otlp_http_port))
        .await
        .unwrap();
    let head = "POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-protobuf\r\nContent-Length: 160000\r\n\r\n";
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.write_all(&vec![0u8; 150_000]).await.unwrap();
    slow.flush().await.unwrap();
    // Another export no longer fits: refused as retryable, with Retry-After. Exports are
    // grouped from their bytes, so one holds its body and a copy of its spans: this body
    // fits the 50 kB left, body and copy do not.
    let (req, _) = {
        let tid = rand_trace_id();
        let spans = (0..600)
            .map(|i| pb_span(&tid, &rand_span_id(), &format!("s{i}"), now_nanos() - 1_000))
            .collect();
        (pb_request("inflight", spans), hex::encode(tid))
    };
    let body = req.encode_to_vec();
    assert!(
        (26_000..50_000).contains(&body.len()),
        "{} bytes",
        body.len()
    );
    let mut refused = None;
    for _ in 0..50 {
        let resp = server
            .client
            .post(server.otlp_http_url())
            .header("Content-Type", "application/x-protobuf")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        if resp.status() == 429 {
            refused = Some(resp);
            break;
        }
        // The slow body may not have reached the server yet.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused = refused.expect("an export past the in-flight budget is refused with 429");
    assert!(refused.headers().contains_key("retry-after"));
    // A request that could never fit is too large, not retryable, and refused from its
    // declared length before its body is read (none is sent here).
    let mut big = tokio::net::TcpStream::connect(("127.0.0.1", server.otlp_http_port))
        .await
        .unwrap();
    big.write_all(head.replace("160000", "250000").as_bytes())
        .await
        .unwrap();
    let mut answer = vec![0u8; 12];
    tokio::time::timeout(Duration::from_secs(10), big.read_exact(&mut answer))
        .await
        .expect("answered without the body")
        .unwrap();
    assert_eq!(
        &answer,
        b"HTTP/1.1 413",
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // Once the slow upload is gone, its bytes are free again.
    drop(slow);
    let mut status = 0;
    for _ in 0..50 {
        status = server.post_otlp(body.clone(), &[PROTO]).await.0;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200);
}
