//! Tenant isolation with `multitenancy_enabled`: every write and read endpoint × two tenants
//! × with and without the header. A tenant never sees another's spans, tags or values.

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prost::Message;

use crate::harness::*;
use crate::ingest::{pb_request, pb_span};

const HEADER: &str = "X-Scope-OrgID";

async fn get(server: &Server, path: &str, tenant: Option<&str>) -> (u16, String) {
    let mut req = reqwest::Client::new().get(server.http_url(path));
    if let Some(t) = tenant {
        req = req.header(HEADER, t);
    }
    let resp = req.send().await.expect("request");
    (
        resp.status().as_u16(),
        resp.text().await.unwrap_or_default(),
    )
}

/// Checks one answer to a read of [`read_matrix`] made with the right credential: v1 of
/// another tenant's trace is a plain 404, as for any unknown trace; every other read answers
/// 200 with what the reader must see (trace JSON carries the service name inside, search
/// the trace IDs) and without what it must never see.
pub(crate) fn check_read(
    tenant: &str,
    path: &str,
    code: u16,
    body: &str,
    must: Option<&str>,
    must_not: Option<&str>,
) {
    if path.starts_with("/api/traces/") && must.is_none() {
        assert_eq!(code, 404, "{tenant} {path}: {body}");
        return;
    }
    assert_eq!(code, 200, "{tenant} {path}: {body}");
    if let Some(m) = must {
        assert!(body.contains(m), "{tenant} {path} lacks {m}: {body}");
    }
    if let Some(n) = must_not {
        assert!(!body.contains(n), "{tenant} {path} leaks {n}: {body}");
    }
}

/// Every read endpoint as (path, what the reader must see, what it must never see), for a
/// reader whose trace is `own` (service `own_svc`) and another tenant's `other`.
pub(crate) fn read_matrix(
    own: &str,
    other: &str,
    own_svc: &str,
    other_svc: &str,
) -> Vec<(String, Option<String>, Option<String>)> {
    vec![
        (format!("/api/traces/{own}"), Some(own_svc.to_owned()), None),
        (
            format!("/api/v2/traces/{own}"),
            Some(own_svc.to_owned()),
            None,
        ),
        (
            format!("/api/traces/{other}"),
            None,
            Some(other_svc.to_owned()),
        ),
        (
            format!("/api/v2/traces/{other}"),
            None,
            Some(other_svc.to_owned()),
        ),
        (
            "/api/search?q=%7B%7D".to_owned(),
            Some(own.to_owned()),
            Some(other.to_owned()),
        ),
        (
            "/api/search/tags".to_owned(),
            Some("service.name".to_owned()),
            None,
        ),
        (
            "/api/v2/search/tag/resource.service.name/values".to_owned(),
            Some(own_svc.to_owned()),
            Some(other_svc.to_owned()),
        ),
        (
            "/api/search/tag/service.name/values".to_owned(),
            Some(own_svc.to_owned()),
            Some(other_svc.to_owned()),
        ),
    ]
}

/// Streaming `Search` over h2c on the API port with the given gRPC metadata: the trace IDs
/// of every message, or the call's status.
pub(crate) async fn stream_search(
    server: &Server,
    metadata: &[(&'static str, &str)],
) -> Result<Vec<String>, tonic::Status> {
    use vivace::api::tempopb::{SearchRequest, SearchResponse};
    let req = SearchRequest {
        query: "{}".into(),
        limit: 100,
        ..Default::default()
    };
    let msgs: Vec<SearchResponse> = server
        .stream_call("/tempopb.StreamingQuerier/Search", req, metadata)
        .await?;
    let ids = msgs
        .into_iter()
        .flat_map(|m| m.traces.into_iter().map(|t| t.trace_id))
        .collect();
    Ok(ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_isolated_on_every_endpoint() {
    let server = Server::start_with(Opts {
        multitenancy: true,
        ..Opts::default()
    })
    .await;
    let (ta, tb) = (rand_trace_id(), rand_trace_id());
    let (ha, hb) = (hex::encode(ta), hex::encode(tb));

    // Writes: team-a over OTLP/HTTP, team-b over gRPC metadata; none without a tenant.
    let body = pb_request(
        "svc-a",
        vec![pb_span(&ta, &rand_span_id(), "op-a", now_nanos())],
    )
    .encode_to_vec();
    let (code, _) = server
        .post_otlp(
            body.clone(),
            &[
                ("content-type", "application/x-protobuf"),
                (HEADER, "team-a"),
            ],
        )
        .await;
    assert_eq!(code, 200);
    let (code, _) = server
        .post_otlp(body.clone(), &[("content-type", "application/x-protobuf")])
        .await;
    assert_eq!(code, 401, "a write without a tenant is unauthorized");
    let (code, _) = server
        .post_otlp(
            body,
            &[
                ("content-type", "application/x-protobuf"),
                (HEADER, "../etc"),
            ],
        )
        .await;
    assert_eq!(
        code, 400,
        "a tenant that could escape its bucket prefix is refused"
    );

    let mut client = TraceServiceClient::connect(server.grpc_url())
        .await
        .unwrap();
    let mut req = tonic::Request::new(pb_request(
        "svc-b",
        vec![pb_span(&tb, &rand_span_id(), "op-b", now_nanos())],
    ));
    req.metadata_mut()
        .insert("x-scope-orgid", "team-b".parse().unwrap());
    client.export(req).await.expect("team-b export");
    let err = client
        .export(pb_request(
            "svc-b",
            vec![pb_span(&tb, &rand_span_id(), "op-b", now_nanos())],
        ))
        .await
        .expect_err("no tenant");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);

    let reads = read_matrix;
    for (tenant, own, other, own_svc, other_svc) in [
        ("team-a", &ha, &hb, "svc-a", "svc-b"),
        ("team-b", &hb, &ha, "svc-b", "svc-a"),
    ] {
        for (path, must, must_not) in reads(own, other, own_svc, other_svc) {
            let (code, body) = get(&server, &path, Some(tenant)).await;
            check_read(
                tenant,
                &path,
                code,
                &body,
                must.as_deref(),
                must_not.as_deref(),
            );
        }
        // Without the header every read is refused.
        for (path, _, _) in reads(own, other, own_svc, other_svc) {
            let (code, body) = get(&server, &path, None).await;
            assert_eq!(code, 401, "{path} without a tenant: {body}");
        }
    }

    // Cross-tenant reads (`a|b`) see both tenants' data; writes cannot name two tenants.
    let (code, body) = get(&server, "/api/search?q=%7B%7D", Some("team-b|team-a")).await;
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains(ha.as_str()) && body.contains(hb.as_str()),
        "{body}"
    );
    // Each trace of a cross-tenant search says which tenant it came from.
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    for t in v["traces"].as_array().unwrap() {
        let want = if t["traceID"] == ha.as_str() {
            "team-a"
        } else {
            "team-b"
        };
        assert_eq!(t["tenant"], want, "{t}");
    }
    let (_, body) = get(&server, "/api/search?q=%7B%7D", Some("team-a")).await;
    assert!(
        !body.contains("\"tenant\""),
        "single-tenant reads carry no marker: {body}"
    );
    for (id, owner) in [(&ha, "team-a"), (&hb, "team-b")] {
        let (code, body) = get(&server, &format!("/api/traces/{id}"), Some("team-a|team-b")).await;
        assert_eq!(code, 200, "{body}");
        // Each resource of a cross-tenant trace names the tenant it came from.
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        for b in v["batches"].as_array().unwrap() {
            let attrs = b["resource"]["attributes"].as_array().unwrap();
            let marker = attrs.iter().find(|a| a["key"] == "vivace.tenant");
            assert_eq!(
                marker.map(|a| &a["value"]["stringValue"]),
                Some(&serde_json::json!(owner)),
                "{body}"
            );
        }
        let (_, body) = get(&server, &format!("/api/traces/{id}"), Some(owner)).await;
        assert!(!body.contains("vivace.tenant"), "{body}");
    }
    let (code, _) = server
        .post_otlp(
            pb_request(
                "svc-x",
                vec![pb_span(&ta, &rand_span_id(), "x", now_nanos())],
            )
            .encode_to_vec(),
            &[
                ("content-type", "application/x-protobuf"),
                (HEADER, "team-a|team-b"),
            ],
        )
        .await;
    assert_eq!(code, 400, "a write names one tenant");

    // Streaming search reads the tenant from gRPC metadata too.
    for (tenant, want, never) in [
        (Some("team-a"), &ha, &hb),
        (Some("team-b"), &hb, &ha),
        (None, &ha, &hb),
    ] {
        let md: Vec<(&'static str, &str)> =
            tenant.map(|t| ("x-scope-orgid", t)).into_iter().collect();
        let res = stream_search(&server, &md).await;
        let Some(_) = tenant else {
            assert_eq!(
                res.expect_err("no tenant").code(),
                tonic::Code::Unauthenticated
            );
            continue;
        };
        let ids = res.expect("search");
        assert!(ids.contains(want), "{tenant:?} misses its trace: {ids:?}");
        assert!(
            !ids.contains(never),
            "{tenant:?} sees another tenant's trace"
        );
    }
}
