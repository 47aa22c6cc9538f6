//! Built-in auth: every endpoint × two tenants × {no credential, wrong credential, right
//! credential, right credential + the other tenant's header}, over HTTP, OTLP/HTTP, OTLP/gRPC
//! (the SDK's exporters carrying the credential as headers / metadata) and streaming gRPC.
//! The credential decides the tenant; a header can only narrow it, never widen it.

use std::collections::HashMap;

use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_sdk::trace::SpanExporter as _;
use opentelemetry_sdk::Resource;
use prost::Message;

use crate::harness::*;
use crate::ingest::{base_time, pb_request, pb_span, SpanSpec};
use crate::tenants::{check_read, read_matrix, stream_search};

const ORG: &str = "X-Scope-OrgID";
const TOKEN_A: &str = "token-for-team-a-9b1f";
const TOKEN_B: &str = "token-for-team-b-4c2e";
const OPS_PASSWORD: &str = "ops-password-77d0";
const OPS_ENV: &str = "VIVACE_IT_AUTH_OPS_PASSWORD";

pub(crate) fn sha256_hex(s: &str) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, s.as_bytes()).as_ref())
}

fn basic(user: &str, pass: &str) -> String {
    use base64::Engine;
    let raw = format!("{user}:{pass}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// A server with auth on: team-a's token by hash, team-b's from a file, and an `ops` user
/// (password from the environment) granted both tenants.
async fn auth_server(secrets: &tempfile::TempDir) -> Server {
    let token_b = secrets.path().join("token-b");
    std::fs::write(&token_b, format!("{TOKEN_B}\n")).unwrap();
    // Inherited by the server process; the name is unique to this test.
    std::env::set_var(OPS_ENV, OPS_PASSWORD);
    Server::start_with(Opts {
        multitenancy: true,
        extra_yaml: format!(
            "auth:\n  enabled: true\n  credentials:\n    - tenants: [team-a]\n      token_sha256: {}\n    - tenants: [team-b]\n      token_file: {}\n    - tenants: [team-a, team-b]\n      username: ops\n      password_env: {OPS_ENV}\n",
            sha256_hex(TOKEN_A),
            token_b.display()
        ),
        ..Opts::default()
    })
    .await
}

#[derive(Clone, Copy, Debug)]
enum Cred {
    None,
    Wrong,
    Right,
    RightWithOtherHeader,
}

const CREDS: [Cred; 4] = [
    Cred::None,
    Cred::Wrong,
    Cred::Right,
    Cred::RightWithOtherHeader,
];

/// The headers a request carries for `tenant` (whose token is `token`) in case `c`.
fn headers(c: Cred, token: &str, other_tenant: &str) -> Vec<(&'static str, String)> {
    match c {
        Cred::None => vec![],
        Cred::Wrong => vec![("authorization", "Bearer not-a-real-token".into())],
        Cred::Right => vec![("authorization", format!("Bearer {token}"))],
        Cred::RightWithOtherHeader => vec![
            ("authorization", format!("Bearer {token}")),
            ("x-scope-orgid", other_tenant.to_owned()),
        ],
    }
}

pub(crate) async fn get(
    server: &Server,
    path: &str,
    hs: &[(&str, String)],
) -> (u16, String, usize) {
    let mut req = reqwest::Client::new().get(server.http_url(path));
    for (k, v) in hs {
        req = req.header(*k, v);
    }
    let resp = req.send().await.expect("request");
    let challenges = resp.headers().get_all("www-authenticate").iter().count();
    (
        resp.status().as_u16(),
        resp.text().await.unwrap_or_default(),
        challenges,
    )
}

fn exporter_http(server: &Server, hs: &[(&str, String)]) -> opentelemetry_otlp::SpanExporter {
    let headers: HashMap<String, String> =
        hs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(server.otlp_http_url())
        .with_headers(headers)
        .build()
        .expect("http exporter")
}

pub(crate) fn exporter_grpc(
    server: &Server,
    hs: &[(&'static str, String)],
) -> opentelemetry_otlp::SpanExporter {
    let mut md = tonic::metadata::MetadataMap::new();
    for (k, v) in hs {
        md.insert(*k, v.parse().unwrap());
    }
    opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(server.grpc_url())
        .with_metadata(md)
        .build()
        .expect("grpc exporter")
}

pub(crate) async fn export(
    mut exporter: opentelemetry_otlp::SpanExporter,
    service: &'static str,
    trace: [u8; 16],
) -> Result<(), String> {
    exporter.set_resource(&Resource::builder().with_service_name(service).build());
    let span = SpanSpec::simple(trace, rand_span_id(), None, "op", base_time()).build();
    exporter
        .export(vec![span])
        .await
        .map_err(|e| format!("{e:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_decides_the_tenant_on_every_endpoint() {
    let secrets = tempfile::tempdir().unwrap();
    let server = auth_server(&secrets).await;
    let (ta, tb) = (rand_trace_id(), rand_trace_id());
    let (ha, hb) = (hex::encode(ta), hex::encode(tb));
    let tenants = [
        ("team-a", TOKEN_A, "team-b", ta, &ha, &hb, "svc-a", "svc-b"),
        ("team-b", TOKEN_B, "team-a", tb, &hb, &ha, "svc-b", "svc-a"),
    ];

    // Open routes need no credential.
    for path in ["/ready", "/metrics", "/api/echo", "/api/status/buildinfo"] {
        let (code, body, _) = get(&server, path, &[]).await;
        assert_eq!(code, 200, "{path}: {body}");
    }

    // Writes over both OTLP transports with the SDK's exporters. The right credential is
    // the only one that lands, and it lands in the credential's tenant.
    for (tenant, token, other, trace, ..) in tenants {
        for c in CREDS {
            let hs = headers(c, token, other);
            let svc = if tenant == "team-a" { "svc-a" } else { "svc-b" };
            for (transport, exporter) in [
                ("http", exporter_http(&server, &hs)),
                ("grpc", exporter_grpc(&server, &hs)),
            ] {
                let res = export(exporter, svc, trace).await;
                match c {
                    Cred::Right => res.unwrap_or_else(|e| {
                        panic!("{tenant} {transport} {c:?}: {e}\n{}", server.log_tail(20))
                    }),
                    _ => assert!(res.is_err(), "{tenant} {transport} {c:?} was accepted"),
                }
            }
        }
    }

    // The exact refusals, raw: OTLP/HTTP status codes and gRPC codes.
    let body = pb_request(
        "svc-x",
        vec![pb_span(&ta, &rand_span_id(), "x", now_nanos())],
    )
    .encode_to_vec();
    let mut grpc = TraceServiceClient::connect(server.grpc_url())
        .await
        .unwrap();
    for (c, http_code, grpc_code) in [
        (Cred::None, 401, tonic::Code::Unauthenticated),
        (Cred::Wrong, 401, tonic::Code::Unauthenticated),
        (
            Cred::RightWithOtherHeader,
            403,
            tonic::Code::PermissionDenied,
        ),
    ] {
        let hs = headers(c, TOKEN_A, "team-b");
        let mut with: Vec<(&str, &str)> = hs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        with.push(("content-type", "application/x-protobuf"));
        let (code, _) = server.post_otlp(body.clone(), &with).await;
        assert_eq!(code, http_code, "otlp/http {c:?}");
        let mut req = tonic::Request::new(pb_request(
            "svc-x",
            vec![pb_span(&ta, &rand_span_id(), "x", now_nanos())],
        ));
        for (k, v) in &hs {
            req.metadata_mut().insert(*k, v.parse().unwrap());
        }
        let err = grpc.export(req).await.expect_err("refused");
        assert_eq!(err.code(), grpc_code, "otlp/grpc {c:?}: {err}");
    }
    // The own tenant's header with the right credential is fine.
    let (code, _) = server
        .post_otlp(
            body.clone(),
            &[
                ("content-type", "application/x-protobuf"),
                ("authorization", &format!("Bearer {TOKEN_A}")),
                (ORG, "team-a"),
            ],
        )
        .await;
    assert_eq!(code, 200);

    // Reads: every endpoint, every case.
    for (tenant, token, other, _, own, other_id, own_svc, other_svc) in tenants {
        for c in CREDS {
            let hs = headers(c, token, other);
            for (path, must, must_not) in read_matrix(own, other_id, own_svc, other_svc) {
                let (code, body, challenges) = get(&server, &path, &hs).await;
                match c {
                    Cred::None | Cred::Wrong => {
                        assert_eq!(code, 401, "{tenant} {c:?} {path}: {body}");
                        assert_eq!(challenges, 2, "{path}: 401 names Bearer and Basic");
                        continue;
                    }
                    Cred::RightWithOtherHeader => {
                        assert_eq!(code, 403, "{tenant} {c:?} {path}: {body}");
                        continue;
                    }
                    Cred::Right => {}
                }
                check_read(
                    tenant,
                    &path,
                    code,
                    &body,
                    must.as_deref(),
                    must_not.as_deref(),
                );
            }
            // Streaming search over gRPC with the credential in metadata.
            let res = stream_search(
                &server,
                &hs.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>(),
            )
            .await;
            match c {
                Cred::None | Cred::Wrong => assert_eq!(
                    res.expect_err("refused").code(),
                    tonic::Code::Unauthenticated
                ),
                Cred::RightWithOtherHeader => assert_eq!(
                    res.expect_err("refused").code(),
                    tonic::Code::PermissionDenied
                ),
                Cred::Right => {
                    let ids = res.expect("search");
                    assert!(ids.contains(own), "{tenant} misses its trace: {ids:?}");
                    assert!(
                        !ids.contains(other_id),
                        "{tenant} sees another tenant's trace"
                    );
                }
            }
        }
    }

    // A user granted both tenants reads both with `a|b`, each trace marked with its tenant;
    // a single-tenant token cannot widen itself that way.
    let ops = basic("ops", OPS_PASSWORD);
    let (code, body, _) = get(
        &server,
        "/api/search?q=%7B%7D",
        &[
            ("authorization", ops.clone()),
            (ORG, "team-a|team-b".into()),
        ],
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut seen = Vec::new();
    for t in v["traces"].as_array().unwrap() {
        let want = if t["traceID"] == ha.as_str() {
            "team-a"
        } else {
            "team-b"
        };
        assert_eq!(t["tenant"], want, "{t}");
        seen.push(t["traceID"].as_str().unwrap().to_owned());
    }
    assert!(seen.contains(&ha) && seen.contains(&hb), "{body}");
    let (code, _, _) = get(
        &server,
        "/api/search?q=%7B%7D",
        &[
            ("authorization", format!("Bearer {TOKEN_A}")),
            (ORG, "team-a|team-b".into()),
        ],
    )
    .await;
    assert_eq!(code, 403);
    let (code, _, challenges) = get(
        &server,
        "/api/search?q=%7B%7D",
        &[("authorization", basic("ops", "wrong-password"))],
    )
    .await;
    assert_eq!((code, challenges), (401, 2));
}
