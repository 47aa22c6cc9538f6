//! Scale-out under built-in auth (issue #10: "auth keeps working across nodes"). A query on
//! one node reads the live traces of the partitions another node holds through that
//! node's `/internal/live`, which answers for any tenant the request names: only the peer
//! token (`ingest.peer_token_file`) opens it, never a user's credential, and with it the
//! user's reads on any node see every span acknowledged on any other.

use std::time::{Duration, Instant};

use crate::auth::{export, exporter_grpc, get, sha256_hex};
use crate::harness::*;
use crate::kafka::*;
use crate::s3_server::S3Server;
use crate::scale::{node_opts, owned, wait_shared};

const TOKEN: &str = "team-a-token-9b1f";
const PEER: &str = "peer-secret-52aa";

fn auth_node(s3: &S3Server, broker: &Broker, name: &str, peer_file: &std::path::Path) -> Opts {
    let mut o = node_opts(s3, broker, name);
    o.multitenancy = true;
    o.extra_yaml = format!(
        "{}auth:\n  enabled: true\n  credentials:\n    - tenants: [team-a]\n      token_sha256: {}\n",
        o.extra_yaml.replacen(
            "  enabled: true\n",
            &format!("  enabled: true\n  peer_token_file: {}\n", peer_file.display()),
            1
        ),
        sha256_hex(TOKEN)
    );
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_nodes_read_each_others_live_traces_with_the_peer_token_only() {
    let started = Instant::now();
    let Some((s3, broker)) = bucket_and_broker("vivace-scale-auth").await else {
        return;
    };
    let secrets = tempfile::tempdir().unwrap();
    let peer_file = secrets.path().join("peer-token");
    std::fs::write(&peer_file, format!("{PEER}\n")).unwrap();
    let n0 = Server::start_with(auth_node(&s3, &broker, "node-0", &peer_file)).await;
    let n1 = Server::start_with(auth_node(&s3, &broker, "node-1", &peer_file)).await;
    wait_shared(&[&n0, &n1], Duration::from_secs(20)).await;
    let shares = owned(&[&n0, &n1]).await;

    let user = vec![("authorization", format!("Bearer {TOKEN}"))];
    let mut traces = Vec::new();
    for _ in 0..20 {
        let id = rand_trace_id();
        export(exporter_grpc(&n0, &user), "peer-auth", id)
            .await
            .unwrap_or_else(|e| panic!("export refused: {e}\n{}", n0.log_tail(30)));
        traces.push(hex::encode(id));
    }

    // Right after the acks, from the other node: the traces of node-0's partitions are in
    // node-0's memory only, so each answer needs a peer read.
    for t in &traces {
        let (code, body, _) = get(&n1, &format!("/api/traces/{t}"), &user).await;
        assert_eq!(
            code,
            200,
            "trace {t} from node-1: {body}\n{}",
            n1.log_tail(20)
        );
    }
    let q = url_encode("{resource.service.name=\"peer-auth\"}");
    let (code, body, _) = get(&n1, &format!("/api/search?q={q}&limit=1000"), &user).await;
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let found = search_trace_ids(&v);
    let m = &v["metrics"];
    assert_eq!(found.len(), traces.len(), "search from node-1: {body}");
    assert_eq!(m["completedJobs"], m["totalJobs"], "partial search: {body}");

    // The door itself: neither no credential nor a user's token opens it.
    let tenant = ("x-scope-orgid", "team-a".to_owned());
    let cases = [
        ("no credential", vec![tenant.clone()], 401),
        ("a user's token", vec![user[0].clone(), tenant.clone()], 401),
        (
            "a wrong peer token",
            vec![
                ("authorization", "Bearer peer-secret".into()),
                tenant.clone(),
            ],
            401,
        ),
        (
            "the peer token",
            vec![("authorization", format!("Bearer {PEER}")), tenant],
            200,
        ),
    ];
    for (what, hs, want) in cases {
        let (code, body, _) = get(&n0, "/internal/live", &hs).await;
        assert_eq!(code, want, "/internal/live with {what}: {body}");
    }
    eprintln!(
        "scale-auth: partitions {shares:?}; {} traces acked on node-0 read by id and search \
         on node-1 with the user's token; /internal/live refused without the peer token; \
         test took {:?}",
        traces.len(),
        started.elapsed()
    );
    drop(broker);
}
