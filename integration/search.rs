//! Search and tag discovery end to end: spans sent with the real SDK exporter are found by
//! TraceQL while in memory, once in blocks, and after a restart; tag endpoints v1 and v2.

use std::time::{Duration, Instant};

use opentelemetry::trace::{SpanKind, Status};
use opentelemetry::KeyValue;
use opentelemetry_sdk::Resource;
use serde_json::Value as J;

use crate::harness::*;
use crate::ingest::*;

const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);

/// A two-span trace of `service`: an erroring server root and a postgres client child.
struct Shop {
    service: String,
    trace_id: [u8; 16],
    root: [u8; 8],
    child: [u8; 8],
}

async fn send_shop(server: &Server) -> (Shop, Instant) {
    let shop = Shop {
        service: format!("checkout-{}", hex::encode(&rand_span_id()[..3])),
        trace_id: rand_trace_id(),
        root: rand_span_id(),
        child: rand_span_id(),
    };
    let base = base_time();
    let mut root = SpanSpec::simple(shop.trace_id, shop.root, None, "POST /checkout", base);
    root.kind = SpanKind::Server;
    root.end = at(base, 900_000_000);
    root.status = Status::error("card declined");
    root.attrs = vec![
        KeyValue::new("http.status_code", 500_i64),
        KeyValue::new("http.method", "POST"),
    ];
    let mut child = SpanSpec::simple(
        shop.trace_id,
        shop.child,
        Some(shop.root),
        "db query",
        at(base, 100_000_000),
    );
    child.kind = SpanKind::Client;
    child.attrs = vec![KeyValue::new("db.system", "postgres")];
    let resource = Resource::builder_empty()
        .with_attribute(KeyValue::new("service.name", shop.service.clone()))
        .build();
    export(
        server,
        Transport::Grpc,
        &resource,
        vec![root.build(), child.build()],
    )
    .await;
    (shop, Instant::now())
}

async fn search(server: &Server, q: &str) -> J {
    let (code, body) = server
        .get(&format!("/api/search?q={}", url_encode(q)))
        .await;
    assert_eq!(code, 200, "search {q}: {body}");
    serde_json::from_str(&body).unwrap()
}

fn trace_of<'a>(resp: &'a J, id: &[u8; 16]) -> Option<&'a J> {
    let want = hex::encode(id);
    resp["traces"]
        .as_array()?
        .iter()
        .find(|t| t["traceID"] == want.as_str())
}

fn check_shop_hit(what: &str, resp: &J, shop: &Shop) {
    let t =
        trace_of(resp, &shop.trace_id).unwrap_or_else(|| panic!("{what}: trace missing in {resp}"));
    assert_eq!(
        t["traceID"].as_str().unwrap().len(),
        32,
        "{what}: full 32-hex id"
    );
    assert_eq!(t["rootServiceName"], shop.service.as_str(), "{what}");
    assert_eq!(t["rootTraceName"], "POST /checkout", "{what}");
    assert_eq!(t["durationMs"], 900, "{what}");
    assert!(
        t["startTimeUnixNano"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 0
    );
    let stats = &t["serviceStats"][shop.service.as_str()];
    assert_eq!(stats["spanCount"], 2, "{what}: {t}");
    assert_eq!(stats["errorCount"], 1, "{what}: {t}");
    assert!(
        resp["metrics"]["inspectedTraces"].as_u64().unwrap() >= 1,
        "{what}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_finds_fresh_then_flushed_then_restarted() {
    let mut server = Server::start_with(Opts::fast_flush()).await;
    let (shop, acked) = send_shop(&server).await;
    let q = format!(
        "{{ resource.service.name = \"{}\" && status = error }}",
        shop.service
    );
    // Searchable at once: no query_end_cutoff hides fresh data.
    let resp = search(&server, &q).await;
    assert!(
        acked.elapsed() < Duration::from_secs(2),
        "search answered {:?} after the ack",
        acked.elapsed()
    );
    check_shop_hit("fresh", &resp, &shop);
    let t = trace_of(&resp, &shop.trace_id).unwrap();
    let set = &t["spanSets"][0];
    assert_eq!(set["matched"], 1);
    assert_eq!(set["spans"][0]["spanID"], hex::encode(shop.root).as_str());
    assert_eq!(set["spans"][0]["name"], "POST /checkout");
    assert_eq!(set["spans"][0]["durationNanos"], "900000000");
    assert_eq!(t["spanSet"], *set, "spanSet is a copy of spanSets[0]");

    server.wait_blocks_flushed(1, FLUSH_TIMEOUT).await;
    // Once the trace is idle it leaves memory for a block.
    let deadline = Instant::now() + FLUSH_TIMEOUT;
    while server.metric("vivace_ingester_live_traces").await != Some(0.0) {
        assert!(Instant::now() < deadline, "trace never left memory");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    check_shop_hit("in a block", &search(&server, &q).await, &shop);

    server.restart().await;
    check_shop_hit("after restart", &search(&server, &q).await, &shop);

    // Nothing else matches.
    let none = search(&server, "{ resource.service.name = \"no-such-service\" }").await;
    assert_eq!(none["traces"].as_array().unwrap().len(), 0, "{none}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structural_pipeline_and_legacy_tags() {
    let server = Server::start().await;
    let (shop, _) = send_shop(&server).await;
    let svc = &shop.service;

    let child = search(&server, &format!(
        "{{ resource.service.name = \"{svc}\" && span.http.status_code = 500 }} > {{ span.db.system = \"postgres\" }}"
    ))
    .await;
    let t = trace_of(&child, &shop.trace_id).unwrap_or_else(|| panic!("structural: {child}"));
    assert_eq!(
        t["spanSets"][0]["spans"][0]["spanID"],
        hex::encode(shop.child).as_str()
    );

    let none = search(&server, &format!(
        "{{ resource.service.name = \"{svc}\" && span.db.system = \"postgres\" }} > {{ span.http.status_code = 500 }}"
    ))
    .await;
    assert!(
        trace_of(&none, &shop.trace_id).is_none(),
        "child is not a parent: {none}"
    );

    let counted = search(
        &server,
        &format!("{{ resource.service.name = \"{svc}\" }} | count() > 1"),
    )
    .await;
    let t = trace_of(&counted, &shop.trace_id).unwrap_or_else(|| panic!("count: {counted}"));
    assert_eq!(t["spanSets"][0]["matched"], 2);
    let attrs = t["spanSets"][0]["attributes"]
        .as_array()
        .expect("pipeline attributes");
    assert!(
        attrs
            .iter()
            .any(|a| a["key"] == "count()" && a["value"]["intValue"] == "2"),
        "{attrs:?}"
    );
    let too_many = search(
        &server,
        &format!("{{ resource.service.name = \"{svc}\" }} | count() > 2"),
    )
    .await;
    assert!(trace_of(&too_many, &shop.trace_id).is_none());

    // Legacy logfmt tags.
    let (code, body) = server
        .get(&format!(
            "/api/search?tags={}",
            url_encode(&format!("service.name={svc}"))
        ))
        .await;
    assert_eq!(code, 200, "{body}");
    let resp: J = serde_json::from_str(&body).unwrap();
    assert!(
        trace_of(&resp, &shop.trace_id).is_some(),
        "tags search: {resp}"
    );

    // spss limits the spans returned, not the count matched.
    let (code, body) = server
        .get(&format!(
            "/api/search?spss=1&q={}",
            url_encode(&format!("{{ resource.service.name = \"{svc}\" }}"))
        ))
        .await;
    assert_eq!(code, 200);
    let resp: J = serde_json::from_str(&body).unwrap();
    let set = &trace_of(&resp, &shop.trace_id).unwrap()["spanSets"][0];
    assert_eq!(set["spans"].as_array().unwrap().len(), 1);
    assert_eq!(set["matched"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_rejects_bad_requests_clearly() {
    let server = Server::start().await;
    for (path, needle) in [
        ("/api/search?limit=0", "limit"),
        ("/api/search?q=%7B%7D&tags=a%3Db", "q and tags"),
        ("/api/search?q=%7B%20.a%20%3D%20%7D", "TraceQL"),
        (
            "/api/search?q=%7B%7D%20%7C%20rate()",
            "/api/metrics/query_range",
        ),
        ("/api/search?start=20&end=10", "time range"),
        ("/api/search?spss=101", "spans per span set exceeds 100"),
        ("/api/search/tags?scope=bogus", "scope"),
        (
            "/api/v2/search/tag/not%20an%20identifier/values",
            "identifier",
        ),
    ] {
        let (code, body) = server.get(path).await;
        assert_eq!(code, 400, "{path}: {body}");
        assert!(
            body.contains(needle),
            "{path}: {body:?} should mention {needle:?}"
        );
    }
    server.assert_ready().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_names_and_values_v1_v2() {
    let server = Server::start().await;
    let (shop, _) = send_shop(&server).await;

    let (code, body) = server.get("/api/search/tags").await;
    assert_eq!(code, 200, "{body}");
    let v1: J = serde_json::from_str(&body).unwrap();
    let names: Vec<&str> = v1["tagNames"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(J::as_str)
        .collect();
    for want in ["service.name", "http.status_code", "db.system"] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }

    let (code, body) = server.get("/api/v2/search/tags").await;
    assert_eq!(code, 200, "{body}");
    let v2: J = serde_json::from_str(&body).unwrap();
    let scope = |name: &str| -> Vec<String> {
        v2["scopes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .map(|s| {
                s["tags"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t.as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(
        scope("resource").contains(&"service.name".to_owned()),
        "{v2}"
    );
    assert!(scope("span").contains(&"http.method".to_owned()), "{v2}");
    assert!(!scope("span").contains(&"service.name".to_owned()), "{v2}");
    assert!(scope("intrinsic").contains(&"status".to_owned()), "{v2}");

    let (_, body) = server.get("/api/v2/search/tags?scope=span").await;
    let only_span: J = serde_json::from_str(&body).unwrap();
    assert_eq!(
        only_span["scopes"].as_array().unwrap().len(),
        1,
        "{only_span}"
    );

    // Values, v2 typed; the tag arrives encoded twice as Grafana sends it.
    let (code, body) = server
        .get(&format!(
            "/api/v2/search/tag/{}/values",
            url_encode(&url_encode("resource.service.name"))
        ))
        .await;
    assert_eq!(code, 200, "{body}");
    let vals: J = serde_json::from_str(&body).unwrap();
    assert!(
        vals["tagValues"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["type"] == "string" && v["value"] == shop.service.as_str()),
        "{vals}"
    );
    let (_, body) = server
        .get("/api/v2/search/tag/span.http.status_code/values")
        .await;
    let ints: J = serde_json::from_str(&body).unwrap();
    assert_eq!(
        ints["tagValues"],
        serde_json::json!([{"type": "int", "value": "500"}]),
        "{ints}"
    );
    let (_, body) = server.get("/api/v2/search/tag/status/values").await;
    let st: J = serde_json::from_str(&body).unwrap();
    assert!(
        st["tagValues"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["type"] == "keyword" && v["value"] == "error"),
        "{st}"
    );

    // q narrows values to matching spans; a half-typed q is ignored, as Tempo's is lenient.
    let (_, body) = server
        .get(&format!(
            "/api/v2/search/tag/name/values?q={}",
            url_encode("{ span.db.system = \"postgres\" }")
        ))
        .await;
    let names: J = serde_json::from_str(&body).unwrap();
    assert_eq!(
        names["tagValues"],
        serde_json::json!([{"type": "string", "value": "db query"}]),
        "{names}"
    );
    let (code, body) = server
        .get(&format!(
            "/api/v2/search/tag/name/values?q={}",
            url_encode("{ span.db.system = ")
        ))
        .await;
    assert_eq!(code, 200, "{body}");
    let all: J = serde_json::from_str(&body).unwrap();
    assert_eq!(all["tagValues"].as_array().unwrap().len(), 2, "{all}");

    // v1 values: plain strings of a bare attribute name.
    let (code, body) = server.get("/api/search/tag/service.name/values").await;
    assert_eq!(code, 200, "{body}");
    let v1vals: J = serde_json::from_str(&body).unwrap();
    assert!(
        v1vals["tagValues"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v == shop.service.as_str()),
        "{v1vals}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_search_over_grpc_on_the_http_port() {
    use vivace::api::tempopb::{SearchRequest, SearchResponse};

    let server = Server::start().await;
    let (shop, _) = send_shop(&server).await;
    let req = SearchRequest {
        query: format!("{{ resource.service.name = \"{}\" }}", shop.service),
        limit: 20,
        spans_per_span_set: 1,
        ..Default::default()
    };
    let msgs: Vec<SearchResponse> = server
        .stream_call("/tempopb.StreamingQuerier/Search", req, &[])
        .await
        .expect("search call");
    let mut traces = Vec::new();
    let mut last_metrics = None;
    for msg in msgs {
        traces.extend(msg.traces);
        last_metrics = msg.metrics;
    }
    let t = traces
        .iter()
        .find(|t| t.trace_id == hex::encode(shop.trace_id))
        .unwrap_or_else(|| panic!("trace not streamed: {traces:?}"));
    assert_eq!(t.root_service_name, shop.service);
    assert_eq!(t.root_trace_name, "POST /checkout");
    assert_eq!(t.span_sets[0].matched, 2);
    assert_eq!(t.span_sets[0].spans.len(), 1, "spans per spanset honoured");
    assert_eq!(t.service_stats[&shop.service].error_count, 1);
    assert!(last_metrics.expect("metrics").inspected_traces >= 1);

    // A bad query is a gRPC error, not a broken stream: the same connection serves on.
    let mut grpc = server.streaming_client().await;
    grpc.ready().await.unwrap();
    let err = grpc
        .server_streaming::<_, SearchResponse, _>(
            tonic::Request::new(SearchRequest {
                query: "{ .a = ".into(),
                ..Default::default()
            }),
            http::uri::PathAndQuery::from_static("/tempopb.StreamingQuerier/Search"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .expect_err("invalid query");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");

    // The tag methods stream too.
    use vivace::api::tempopb::{
        SearchTagValuesRequest, SearchTagValuesV2Response, SearchTagsRequest, SearchTagsResponse,
        SearchTagsV2Response,
    };
    async fn one<Req, Resp>(
        grpc: &mut tonic::client::Grpc<tonic::transport::Channel>,
        method: &'static str,
        req: Req,
    ) -> Resp
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        grpc.ready().await.unwrap();
        let mut stream = grpc
            .server_streaming::<_, Resp, _>(
                tonic::Request::new(req),
                http::uri::PathAndQuery::from_static(method),
                tonic_prost::ProstCodec::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("{method}: {e}"))
            .into_inner();
        let first = stream.message().await.unwrap().expect("one message");
        assert!(stream.message().await.unwrap().is_none());
        first
    }
    let v1: SearchTagsResponse = one(
        &mut grpc,
        "/tempopb.StreamingQuerier/SearchTags",
        SearchTagsRequest::default(),
    )
    .await;
    assert!(v1.tag_names.contains(&"db.system".to_owned()), "{v1:?}");
    let v2: SearchTagsV2Response = one(
        &mut grpc,
        "/tempopb.StreamingQuerier/SearchTagsV2",
        SearchTagsRequest {
            scope: "resource".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(v2.scopes.len(), 1, "{v2:?}");
    assert!(v2.scopes[0].tags.contains(&"service.name".to_owned()));
    let vals: SearchTagValuesV2Response = one(
        &mut grpc,
        "/tempopb.StreamingQuerier/SearchTagValuesV2",
        SearchTagValuesRequest {
            tag_name: "resource.service.name".into(),
            ..Default::default()
        },
    )
    .await;
    assert!(
        vals.tag_values
            .iter()
            .any(|v| v.r#type == "string" && v.value == shop.service),
        "{vals:?}"
    );
    server.assert_ready().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_values_from_block_summaries_with_truncation_fallback() {
    use crate::ingest::{pb_kv, pb_request, pb_span, pb_str};
    let server = Server::start_with(Opts::fast_flush()).await;
    // More distinct values than a block summary keeps (1000), plus a low-cardinality tag.
    let tid = rand_trace_id();
    let spans: Vec<_> = (0..1005)
        .map(|i| {
            let mut s = pb_span(&tid, &rand_span_id(), "op", now_nanos() - 1_000_000);
            s.attributes = vec![
                pb_kv("req.id", pb_str(&format!("r{i:05}"))),
                pb_kv("env", pb_str("prod")),
            ];
            s
        })
        .collect();
    let (code, body) = server
        .post_otlp(
            prost::Message::encode_to_vec(&pb_request("summary-svc", spans)),
            &[("content-type", "application/x-protobuf")],
        )
        .await;
    assert_eq!(code, 200, "{body:?}");
    server.wait_blocks_flushed(1, FLUSH_TIMEOUT).await;
    let deadline = Instant::now() + FLUSH_TIMEOUT;
    while server.metric("vivace_ingester_live_traces").await != Some(0.0) {
        assert!(Instant::now() < deadline, "trace never left memory");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let meta = &server.block_metas()[0];
    assert!(
        meta.with_file_name("tags.json").exists(),
        "no tag summary beside {meta:?}"
    );

    let values = |body: String| -> Vec<String> {
        let v: J = serde_json::from_str(&body).unwrap();
        v["tagValues"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["value"].as_str().unwrap().to_owned())
            .collect()
    };
    let (code, body) = server.get("/api/v2/search/tag/span.env/values").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(values(body), vec!["prod"]);
    // Truncated in the summary: the block is scanned, so every value is still there.
    let (code, body) = server
        .get("/api/v2/search/tag/span.req.id/values?limit=5000")
        .await;
    assert_eq!(code, 200);
    let ids = values(body);
    assert_eq!(ids.len(), 1005, "first {:?}", &ids[..ids.len().min(3)]);
    let (_, body) = server.get("/api/v2/search/tags?scope=span").await;
    assert!(body.contains("req.id") && body.contains("env"), "{body}");
    let (_, body) = server
        .get("/api/v2/search/tag/resource.service.name/values")
        .await;
    assert!(body.contains("summary-svc"), "{body}");
}

/// Array attributes offer each element as a typed value (Tempo's behaviour), from memory
/// and, after the flush, from the block's tag summary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn array_attribute_elements_are_tag_values() {
    use crate::ingest::{pb_kv, pb_request, pb_span, pb_str};
    use opentelemetry_proto::tonic::common::v1 as pc;
    let server = Server::start_with(Opts::fast_flush()).await;
    let array = |vals: Vec<pc::any_value::Value>| {
        pc::any_value::Value::ArrayValue(pc::ArrayValue {
            values: vals
                .into_iter()
                .map(|v| pc::AnyValue { value: Some(v) })
                .collect(),
        })
    };
    let tid = rand_trace_id();
    let mut s = pb_span(&tid, &rand_span_id(), "op", now_nanos() - 1_000_000);
    s.attributes = vec![
        pb_kv("tags", array(vec![pb_str("blue"), pb_str("green")])),
        pb_kv(
            "codes",
            array(vec![
                pc::any_value::Value::IntValue(404),
                pc::any_value::Value::BoolValue(true),
            ]),
        ),
    ];
    let (code, body) = server
        .post_otlp(
            prost::Message::encode_to_vec(&pb_request("array-svc", vec![s])),
            &[("content-type", "application/x-protobuf")],
        )
        .await;
    assert_eq!(code, 200, "{body:?}");
    let typed = |body: String| -> Vec<(String, String)> {
        let v: J = serde_json::from_str(&body).unwrap();
        let mut out: Vec<(String, String)> = v["tagValues"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["type"].as_str().unwrap().to_owned(),
                    t["value"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        out.sort();
        out
    };
    let own = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    for phase in ["memory", "block"] {
        let (code, body) = server.get("/api/v2/search/tag/span.tags/values").await;
        assert_eq!(code, 200, "{phase}: {body}");
        assert_eq!(
            typed(body),
            vec![own("string", "blue"), own("string", "green")],
            "{phase}"
        );
        let (_, body) = server.get("/api/v2/search/tag/span.codes/values").await;
        assert_eq!(
            typed(body),
            vec![own("bool", "true"), own("int", "404")],
            "{phase}"
        );
        if phase == "memory" {
            server.wait_blocks_flushed(1, FLUSH_TIMEOUT).await;
            let deadline = Instant::now() + FLUSH_TIMEOUT;
            while server.metric("vivace_ingester_live_traces").await != Some(0.0) {
                assert!(Instant::now() < deadline, "trace never left memory");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    // Listing elements leaves matching as it was: an element still matches the array.
    let resp = search(&server, "{ span.tags = \"green\" }").await;
    assert!(trace_of(&resp, &tid).is_some(), "{resp}");
}

/// `end` is the end of the range (Tempo: a trace overlaps when it starts at or before
/// `end`): a trace starting 100 ms after `end` is not returned, one starting at `end` is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_range_end_is_an_instant() {
    use crate::ingest::{pb_request, pb_span};
    let server = Server::start().await;
    let end_s = now_nanos() / 1_000_000_000 - 5;
    let (late, on_time) = (rand_trace_id(), rand_trace_id());
    let spans = vec![
        pb_span(
            &late,
            &rand_span_id(),
            "late",
            end_s * 1_000_000_000 + 100_000_000,
        ),
        pb_span(&on_time, &rand_span_id(), "on-time", end_s * 1_000_000_000),
    ];
    let (code, body) = server
        .post_otlp(
            prost::Message::encode_to_vec(&pb_request("range-svc", spans)),
            &[("content-type", "application/x-protobuf")],
        )
        .await;
    assert_eq!(code, 200, "{body:?}");
    let found = |end: u64| {
        let server = &server;
        async move {
            let (code, body) = server
                .get(&format!(
                    "/api/search?q=%7B%7D&start={}&end={end}",
                    end_s - 60
                ))
                .await;
            assert_eq!(code, 200, "{body}");
            let v: J = serde_json::from_str(&body).unwrap();
            (
                trace_of(&v, &late).is_some(),
                trace_of(&v, &on_time).is_some(),
            )
        }
    };
    assert_eq!(found(end_s).await, (false, true));
    assert_eq!(found(end_s + 1).await, (true, true));
}
