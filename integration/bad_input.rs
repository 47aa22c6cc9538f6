//! Bad input on every ingest path and on the query API gets a clear error
//! with the right code, and the server keeps serving. Also gzip bodies and
//! partial success.

use std::io::Write;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use opentelemetry_proto::tonic::trace::v1 as pt;
use prost::Message;

use crate::harness::*;
use crate::ingest::*;
use crate::model::*;

const TRACE_SERVICE_EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

fn mentions(body: &[u8], words: &[&str]) -> bool {
    let b = String::from_utf8_lossy(body).to_lowercase();
    words.iter().any(|w| b.contains(w))
}

/// `google.rpc.Status` (details skipped).
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

/// The message of a google.rpc.Status error body in protobuf or JSON.
fn rpc_status_message(body: &[u8], json: bool) -> String {
    if json {
        let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_else(|e| {
            panic!(
                "error body is not JSON ({e}): {}",
                String::from_utf8_lossy(body)
            )
        });
        v.get("message")
            .and_then(|m| m.as_str())
            .unwrap_or_else(|| panic!("JSON error body has no string `message`: {v}"))
            .to_string()
    } else {
        RpcStatus::decode(body)
            .unwrap_or_else(|e| {
                panic!(
                    "error body is not a protobuf google.rpc.Status ({e}): {:?}",
                    String::from_utf8_lossy(body)
                )
            })
            .message
    }
}

fn assert_error_mentions(what: &str, body: &[u8], json: bool, words: &[&str]) {
    let msg = rpc_status_message(body, json);
    assert!(
        mentions(msg.as_bytes(), words),
        "{what}: error message should mention one of {words:?}: {msg:?}"
    );
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn simple_request(
    n: usize,
) -> (
    opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
    String,
) {
    let tid = rand_trace_id();
    let start = now_nanos() - 10_000_000_000;
    let spans = (0..n)
        .map(|i| {
            pb_span(
                &tid,
                &rand_span_id(),
                &format!("span-{i}"),
                start + i as u64,
            )
        })
        .collect();
    (pb_request("bad-input", spans), hex::encode(tid))
}

const PROTO: (&str, &str) = ("Content-Type", "application/x-protobuf");
const JSON: (&str, &str) = ("Content-Type", "application/json");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_garbage_protobuf_is_400() {
    let server = Server::start().await;
    // A varint that never ends: not decodable as protobuf.
    let mut body = vec![0xff; 12];
    body.extend_from_slice(b"garbage");
    let (status, resp) = server.post_otlp(body, &[PROTO]).await;
    assert_eq!(
        status,
        400,
        "garbage protobuf: {}",
        String::from_utf8_lossy(&resp)
    );
    assert_error_mentions(
        "garbage protobuf",
        &resp,
        false,
        &["decode", "protobuf", "invalid", "unmarshal", "parse"],
    );
    // A valid request cut in half.
    let (req, _) = simple_request(5);
    let bytes = req.encode_to_vec();
    let (status, resp) = server
        .post_otlp(bytes[..bytes.len() / 2].to_vec(), &[PROTO])
        .await;
    assert_eq!(
        status,
        400,
        "truncated protobuf: {}",
        String::from_utf8_lossy(&resp)
    );
    assert_error_mentions(
        "truncated protobuf",
        &resp,
        false,
        &[
            "decode",
            "protobuf",
            "invalid",
            "unmarshal",
            "parse",
            "eof",
            "buffer",
        ],
    );
    server.assert_ready().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_invalid_json_is_400() {
    let server = Server::start().await;
    for body in [
        &br#"{"resourceSpans": [ {"#[..],
        &b"not json at all"[..],
        &br#"{"resourceSpans": "should be an array"}"#[..],
    ] {
        let (status, resp) = server.post_otlp(body.to_vec(), &[JSON]).await;
        assert_eq!(
            status,
            400,
            "invalid JSON {:?}: {}",
            String::from_utf8_lossy(body),
            String::from_utf8_lossy(&resp)
        );
        assert_error_mentions(
            "invalid JSON",
            &resp,
            true,
            &[
                "json", "invalid", "parse", "expected", "decode", "eof", "syntax",
            ],
        );
    }
    server.assert_ready().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_oversize_body_is_413() {
    let server = Server::start_with(Opts {
        max_request_body_size: 2048,
        ..Opts::default()
    })
    .await;
    let (big, big_id) = simple_request(100);
    let big = big.encode_to_vec();
    assert!(big.len() > 4096, "test request too small: {}", big.len());
    let (status, resp) = server.post_otlp(big, &[PROTO]).await;
    assert_eq!(
        status,
        413,
        "oversize body: {}",
        String::from_utf8_lossy(&resp)
    );
    assert_error_mentions(
        "oversize body",
        &resp,
        false,
        &["large", "size", "limit", "exceed"],
    );
    assert!(
        server.trace_v1_proto(&big_id).await.is_none(),
        "spans of a rejected (413) request must not be stored"
    );
    // Under the limit still works.
    let (small, small_id) = simple_request(2);
    let small = small.encode_to_vec();
    assert!(small.len() < 2048);
    let (status, resp) = server.post_otlp(small, &[PROTO]).await;
    assert_eq!(
        status,
        200,
        "small body: {}",
        String::from_utf8_lossy(&resp)
    );
    assert_eq!(
        server
            .wait_trace_spans(&small_id, 2, std::time::Duration::ZERO)
            .await,
        2
    );
    server.assert_ready().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_unsupported_content_type_is_415() {
    let server = Server::start().await;
    let (req, _) = simple_request(1);
    let (status, resp) = server
        .post_otlp(req.encode_to_vec(), &[("Content-Type", "text/plain")])
        .await;
    assert_eq!(
        status,
        415,
        "text/plain: {}",
        String::from_utf8_lossy(&resp)
    );
    assert!(
        mentions(
            &resp,
            &["content type", "content-type", "text/plain", "unsupported"]
        ),
        "415 body should name the problem: {}",
        String::from_utf8_lossy(&resp)
    );
    let (status, resp) = server
        .post_otlp(b"<xml/>".to_vec(), &[("Content-Type", "application/xml")])
        .await;
    assert_eq!(
        status,
        415,
        "application/xml: {}",
        String::from_utf8_lossy(&resp)
    );
    server.assert_ready().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_gzip_bodies() {
    let server = Server::start().await;
    // Protobuf, gzipped.
    let (req, id) = simple_request(3);
    let want = spans_from_proto(&req.resource_spans);
    let (status, resp) = server
        .post_otlp(
            gzip(&req.encode_to_vec()),
            &[PROTO, ("Content-Encoding", "gzip")],
        )
        .await;
    assert_eq!(
        status,
        200,
        "gzip protobuf: {}",
        String::from_utf8_lossy(&resp)
    );
    ExportTraceServiceResponse::decode(&resp[..]).expect("protobuf export response");
    check_trace_all_formats(&server, "gzip protobuf body", &id, &want).await;
    // JSON, gzipped.
    let (req, id) = simple_request(2);
    let want = spans_from_proto(&req.resource_spans);
    let (status, resp) = server
        .post_otlp(
            gzip(&serde_json::to_vec(&req).unwrap()),
            &[JSON, ("Content-Encoding", "gzip")],
        )
        .await;
    assert_eq!(status, 200, "gzip JSON: {}", String::from_utf8_lossy(&resp));
    check_trace_all_formats(&server, "gzip JSON body", &id, &want).await;
    // Not gzip at all although declared.
    let (req, _) = simple_request(1);
    let (status, resp) = server
        .post_otlp(req.encode_to_vec(), &[PROTO, ("Content-Encoding", "gzip")])
        .await;
    assert_eq!(status, 400, "bad gzip: {}", String::from_utf8_lossy(&resp));
    // Truncated gzip stream.
    let (req, _) = simple_request(20);
    let gz = gzip(&req.encode_to_vec());
    let (status, resp) = server
        .post_otlp(
            gz[..gz.len() / 2].to_vec(),
            &[PROTO, ("Content-Encoding", "gzip")],
        )
        .await;
    assert_eq!(
        status,
        400,
        "truncated gzip: {}",
        String::from_utf8_lossy(&resp)
    );
    server.assert_ready().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_trace_ids_are_400() {
    let server = Server::start().await;
    let bad = [
        "xyz".to_string(),
        "0".repeat(33),
        "g".repeat(32),
        "0123456789abcdef0123456789abcdeff".to_string(),
    ];
    for id in &bad {
        for prefix in ["/api/traces/", "/api/v2/traces/"] {
            let path = format!("{prefix}{id}");
            let (status, body) = server.get(&path).await;
            assert_eq!(status, 400, "GET {path}: {body}");
            let b = body.to_lowercase();
            assert!(
                b.contains("hex") || b.contains("128 bits"),
                "GET {path}: 400 body should say what is wrong (hex / 128 bits): {body}"
            );
            let (status, _, body) = server.get_accept(&path, "application/protobuf").await;
            assert_eq!(
                status,
                400,
                "GET {path} (protobuf): {}",
                String::from_utf8_lossy(&body)
            );
        }
    }
    server.assert_ready().await;
}

/// Valid spans are accepted, spans with a bad trace/span id are rejected
/// individually via partial_success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_success_rejects_bad_ids() {
    let server = Server::start().await;
    let tid = rand_trace_id();
    let start = now_nanos() - 10_000_000_000;
    let good: Vec<pt::Span> = (0..4)
        .map(|i| pb_span(&tid, &rand_span_id(), &format!("good-{i}"), start + i))
        .collect();
    let bad = vec![
        pb_span(&[1, 2, 3], &rand_span_id(), "bad-3-byte-trace", start),
        pb_span(&[4, 5, 6], &rand_span_id(), "bad-3-byte-trace-2", start),
        pb_span(&[0; 16], &rand_span_id(), "bad-zero-trace", start),
        pb_span(&tid, &[1, 2, 3], "bad-3-byte-span", start),
    ];
    let n_bad = bad.len() as i64;
    let mut spans = good.clone();
    // Interleave bad and good spans.
    for (i, b) in bad.into_iter().enumerate() {
        spans.insert(i * 2, b);
    }
    let req = pb_request("partial", spans);
    let (status, resp) = server.post_otlp(req.encode_to_vec(), &[PROTO]).await;
    assert_eq!(
        status,
        200,
        "mixed request: {}",
        String::from_utf8_lossy(&resp)
    );
    let r = ExportTraceServiceResponse::decode(&resp[..]).expect("ExportTraceServiceResponse");
    let p = r
        .partial_success
        .expect("partial_success missing although spans were invalid");
    assert_eq!(p.rejected_spans, n_bad, "rejected_spans: {p:?}");
    assert!(
        !p.error_message.is_empty(),
        "partial_success.error_message empty"
    );

    let want = spans_from_proto(&pb_request("partial", good).resource_spans);
    check_trace_all_formats(
        &server,
        "partial success, valid spans",
        &hex::encode(tid),
        &want,
    )
    .await;

    // Same over gRPC.
    let tid2 = rand_trace_id();
    let good2 = vec![pb_span(&tid2, &rand_span_id(), "grpc-good", start)];
    let mut spans2 = good2.clone();
    spans2.push(pb_span(&[9, 9, 9], &rand_span_id(), "grpc-bad", start));
    let mut client = TraceServiceClient::connect(server.grpc_url())
        .await
        .expect("grpc connect");
    let r = client
        .export(pb_request("partial-grpc", spans2))
        .await
        .expect("grpc export with one bad span should succeed partially")
        .into_inner();
    let p = r.partial_success.expect("gRPC partial_success missing");
    assert_eq!(p.rejected_spans, 1, "gRPC rejected_spans: {p:?}");
    let want2 = spans_from_proto(&pb_request("partial-grpc", good2).resource_spans);
    check_trace_all_formats(
        &server,
        "partial success over gRPC",
        &hex::encode(tid2),
        &want2,
    )
    .await;
}

// ---------------------------------------------------------------- gRPC raw

#[derive(Clone, Copy, Default)]
struct RawCodec;
struct RawEnc;
struct RawDec;

impl tonic::codec::Encoder for RawEnc {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        let mut v = vec![0; src.remaining()];
        src.copy_to_slice(&mut v);
        Ok(Some(v))
    }
}

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEnc;
    type Decoder = RawDec;
    fn encoder(&mut self) -> RawEnc {
        RawEnc
    }
    fn decoder(&mut self) -> RawDec {
        RawDec
    }
}

async fn grpc_raw(server: &Server, body: Vec<u8>) -> Result<Vec<u8>, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(server.grpc_url())
        .unwrap()
        .connect()
        .await
        .expect("grpc connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("grpc ready");
    let path = http::uri::PathAndQuery::from_static(TRACE_SERVICE_EXPORT);
    grpc.unary(tonic::Request::new(body), path, RawCodec)
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_garbage_is_invalid_argument() {
    let server = Server::start().await;
    let mut body = vec![0xff; 12];
    body.extend_from_slice(b"garbage");
    let err = grpc_raw(&server, body)
        .await
        .expect_err("garbage protobuf over gRPC must fail");
    assert_eq!(
        err.code(),
        tonic::Code::InvalidArgument,
        "garbage over gRPC: {err:?}"
    );
    // A valid raw request still works on the same path.
    let (req, id) = simple_request(2);
    let resp = grpc_raw(&server, req.encode_to_vec())
        .await
        .expect("valid raw gRPC request");
    ExportTraceServiceResponse::decode(&resp[..]).expect("gRPC response decodes");
    assert_eq!(
        server
            .wait_trace_spans(&id, 2, std::time::Duration::ZERO)
            .await,
        2
    );
    server.assert_ready().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_oversize_message_is_rejected() {
    let server = Server::start_with(Opts {
        max_recv_msg_size_mib: 1,
        ..Opts::default()
    })
    .await;
    let (mut req, id) = simple_request(1);
    // ~2 MiB of attribute payload.
    let blob = "x".repeat(2 * 1024 * 1024);
    req.resource_spans[0].scope_spans[0].spans[0]
        .attributes
        .push(pb_kv("blob", pb_str(&blob)));
    let mut client = TraceServiceClient::connect(server.grpc_url())
        .await
        .expect("grpc connect")
        .max_encoding_message_size(64 << 20);
    let err = client
        .export(req)
        .await
        .expect_err("a 2 MiB message over a 1 MiB limit must fail");
    // The contract names RESOURCE_EXHAUSTED or INVALID_ARGUMENT; tonic's own
    // limit answers OUT_OF_RANGE. Any refusal is fine as long as the server lives.
    assert!(
        matches!(
            err.code(),
            tonic::Code::ResourceExhausted | tonic::Code::InvalidArgument | tonic::Code::OutOfRange
        ),
        "oversize gRPC message: {err:?}"
    );
    assert!(
        server.trace_v1_proto(&id).await.is_none(),
        "oversize spans stored"
    );
    server.assert_ready().await;
    // A normal message still goes through.
    let (req, id) = simple_request(3);
    client
        .export(req)
        .await
        .expect("normal gRPC export after oversize");
    assert_eq!(
        server
            .wait_trace_spans(&id, 3, std::time::Duration::ZERO)
            .await,
        3
    );
}
