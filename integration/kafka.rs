//! The Kafka-protocol ingest log end to end: a real broker (tansu, keeping its log in
//! SeaweedFS S3), the real vivace binary with an `ingest:` section, the real OpenTelemetry
//! SDK exporters. Acknowledged spans are readable by ID and search, survive kill -9 of the
//! node, and are stored in blocks exactly once; exports are refused while the broker is down.
//!
//! The broker binary comes from `$VIVACE_TANSU_BIN` (set by `.ci/run` from
//! `.ci/install-kafka`), the install script's cache, or `PATH`. Missing under CI is a
//! failure; elsewhere the tests skip with a notice.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use opentelemetry_proto::tonic::trace::v1::TracesData;
use opentelemetry_sdk::trace::SpanExporter as _;
use opentelemetry_sdk::Resource;
use prost::Message;

use crate::harness::*;
use crate::ingest::*;
use crate::process::{find_binary, in_ci, Process};
use crate::s3_server::{S3Server, ACCESS_KEY, SECRET_KEY};

const INSTALL_HINT: &str = ".ci/install-kafka";

pub(crate) fn tansu_binary() -> Option<PathBuf> {
    let cached: Vec<PathBuf> = std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cache/vivace-ci/tansu-0.6.0/bin/tansu"))
        .into_iter()
        .collect();
    find_binary("VIVACE_TANSU_BIN", &cached, "tansu")
}

/// A tansu broker on a free loopback port, its log in the S3 bucket; killed on drop.
pub(crate) struct Broker {
    process: Process,
    bin: PathBuf,
    dir: tempfile::TempDir,
    s3_endpoint: String,
    bucket: String,
    pub(crate) port: u16,
}

impl Broker {
    /// `None` (after a notice) only when tansu is missing outside CI.
    pub(crate) async fn start(s3: &S3Server) -> Option<Broker> {
        let Some(bin) = tansu_binary() else {
            if in_ci() {
                panic!(
                    "tansu broker not found (CI is set, so the ingest-log tests cannot be \
                     skipped): run `{INSTALL_HINT}` or set VIVACE_TANSU_BIN"
                );
            }
            eprintln!("NOTICE: skipping ingest-log test: tansu not found; run `{INSTALL_HINT}`");
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("vivace-tansu-")
            .tempdir()
            .unwrap();
        let mut b = Broker {
            process: Process::new("tansu", dir.path().join("tansu.log")),
            bin,
            dir,
            s3_endpoint: format!("http://{}", s3.endpoint()),
            bucket: s3.bucket.clone(),
            port: free_port(),
        };
        b.start_again().await;
        Some(b)
    }

    pub(crate) fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub(crate) async fn start_again(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let mut cmd = Command::new(&self.bin);
        cmd.arg("broker")
            .arg(format!("--listener-url={url}"))
            .arg(format!("--advertised-listener-url={url}"))
            .arg(format!("--storage-engine=s3://{}/", self.bucket))
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT", &self.s3_endpoint)
            .env("AWS_ENDPOINT_URL", &self.s3_endpoint)
            .env("AWS_ALLOW_HTTP", "true")
            .current_dir(self.dir.path());
        self.process.spawn(cmd);
        let address = self.address();
        self.process
            .wait_ready(Duration::from_secs(30), Duration::from_millis(50), || {
                let address = address.clone();
                async move {
                    tokio::net::TcpStream::connect(address)
                        .await
                        .map(drop)
                        .map_err(|e| e.to_string())
                }
            })
            .await;
    }

    /// SIGKILL and reap.
    pub(crate) fn stop(&mut self) {
        self.process.kill();
    }

    pub(crate) fn log_tail(&self) -> String {
        self.process.log_tail(30)
    }
}

/// The `ingest:` section for `broker`.
/// A SeaweedFS bucket and a tansu broker keeping its log there, as every ingest-log test
/// starts them; `None` (after a notice) when either is missing outside CI.
pub(crate) async fn bucket_and_broker(bucket: &str) -> Option<(S3Server, Broker)> {
    let s3 = S3Server::start(bucket).await?;
    let broker = Broker::start(&s3).await?;
    Some((s3, broker))
}

fn ingest_yaml(broker: &Broker, topic: &str, write_timeout: &str) -> String {
    format!(
        "ingest:\n  enabled: true\n  kafka:\n    address: {}\n    topic: {topic}\n    \
         consumer_group: it\n    client_id: vivace-it\n    dial_timeout: 20s\n    \
         write_timeout: {write_timeout}\n    auto_create_topic_enabled: true\n    \
         auto_create_topic_default_partitions: 4\n",
        broker.address()
    )
}

pub(crate) fn opts(s3: &S3Server, broker: &Broker, write_timeout: &str) -> Opts {
    Opts {
        // The commit of offsets (a write of the partition leases) hangs while the file
        // `hang-commit` exists in the server's directory: a crash between a cut's
        // meta.json and its commit, on demand.
        storage: Some(format!(
            "{}fault_injection:\n  for_testing_only: true\n  rules:\n    - op: put\n      \
             key_contains: /leases/\n      action: hang\n      while_file_exists: hang-commit\n",
            s3.storage_yaml("vivace")
        )),
        extra_yaml: ingest_yaml(broker, "vivace-traces", write_timeout),
        ..Opts::fast_flush()
    }
}

/// Spans (hex IDs) of a trace as the API returns them, duplicates kept; none while the
/// node answers 5xx because a partition's reader has not caught up yet (it must say so
/// rather than answer "not found").
pub(crate) async fn span_ids(server: &Server, trace: &str) -> Vec<String> {
    let path = format!("/api/traces/{trace}");
    let (status, _, body) = server.get_accept(&path, "application/protobuf").await;
    match status {
        200 => TracesData::decode(&body[..])
            .expect("protobuf trace")
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
            .map(|s| hex::encode(&s.span_id))
            .collect(),
        404 => Vec::new(),
        s if s >= 500 && String::from_utf8_lossy(&body).contains("partial results") => Vec::new(),
        s => panic!(
            "GET {path}: unexpected status {s}: {}\n{}",
            String::from_utf8_lossy(&body),
            server.log_tail(30)
        ),
    }
}

/// Trace IDs a TraceQL search for the service finds.
pub(crate) async fn search_service(server: &Server, service: &str) -> HashSet<String> {
    let q = format!("{{resource.service.name=\"{service}\"}}");
    let (code, body) = server
        .get(&format!("/api/search?q={}&limit=100000", url_encode(&q)))
        .await;
    assert_eq!(code, 200, "search: {body}");
    search_trace_ids(&serde_json::from_str(&body).unwrap())
}

/// The trace IDs of a search response.
pub(crate) fn search_trace_ids(v: &serde_json::Value) -> HashSet<String> {
    v["traces"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t["traceID"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Sends `n` traces of 3 spans each through the SDK's gRPC exporter, one request per 5
/// traces; returns trace → span IDs of the acknowledged ones.
pub(crate) async fn send(
    server: &Server,
    service: &str,
    n: usize,
) -> BTreeMap<String, Vec<String>> {
    send_timed(server, service, n).await.0
}

/// [`send`], also returning how long each export took to be acknowledged.
pub(crate) async fn send_timed(
    server: &Server,
    service: &str,
    n: usize,
) -> (BTreeMap<String, Vec<String>>, Vec<Duration>) {
    let mut took = Vec::new();
    let mut exporter = build_exporter(server, Transport::Grpc);
    exporter.set_resource(
        &Resource::builder_empty()
            .with_attribute(KeyValue::new("service.name", service.to_owned()))
            .build(),
    );
    let mut acked = BTreeMap::new();
    let base = base_time();
    for chunk in 0..n.div_ceil(5) {
        let mut batch = Vec::new();
        let mut sent = Vec::new();
        for _ in 0..5.min(n - chunk * 5) {
            let tid = rand_trace_id();
            let root = rand_span_id();
            let kids = [rand_span_id(), rand_span_id()];
            batch.push(SpanSpec::simple(tid, root, None, "root", base).build());
            for k in kids {
                batch.push(SpanSpec::simple(tid, k, Some(root), "child", base).build());
            }
            sent.push((
                hex::encode(tid),
                vec![
                    hex::encode(root),
                    hex::encode(kids[0]),
                    hex::encode(kids[1]),
                ],
            ));
        }
        let t0 = Instant::now();
        exporter
            .export(batch)
            .await
            .unwrap_or_else(|e| panic!("export refused: {e:?}\n{}", server.log_tail(30)));
        took.push(t0.elapsed());
        acked.extend(sent);
    }
    (acked, took)
}

/// Every acknowledged span is readable by ID exactly once (the API merges duplicates, so
/// also checked per span ID), within `timeout`.
pub(crate) async fn assert_all_readable(
    server: &Server,
    acked: &BTreeMap<String, Vec<String>>,
    what: &str,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    for (trace, spans) in acked {
        let got = loop {
            let got = span_ids(server, trace).await;
            if got.len() >= spans.len() || Instant::now() > deadline {
                break got;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let mut want = spans.clone();
        want.sort();
        let mut sorted = got.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            want,
            "{what}: trace {trace}\n{}",
            server.log_tail(30)
        );
    }
}

/// Whether the latest cut of every instance is committed: each partition lease holds the
/// end of each cut's range as its offset.
pub(crate) async fn offsets_settled(s3: &S3Server) -> bool {
    let b = s3.backend("vivace");
    let dir = "~ingest/it/vivace-traces";
    let json = |k: String| {
        let b = b.clone();
        async move {
            b.get(&k)
                .await
                .ok()
                .and_then(|v| serde_json::from_slice::<serde_json::Value>(&v).ok())
        }
    };
    let cuts = b.list(&format!("{dir}/cuts/")).await.unwrap_or_default();
    if cuts.is_empty() {
        return false;
    }
    for k in cuts {
        // Listings return `~` percent-encoded.
        let k = k.replace("%7E", "~");
        let Some(cut) = json(k.strip_prefix("vivace/").unwrap_or(&k).to_owned()).await else {
            return false;
        };
        let Some(ranges) = cut["ranges"].as_object() else {
            return false;
        };
        for (p, r) in ranges {
            let lease = json(format!("{dir}/leases/{p}.json")).await;
            if lease.is_none_or(|l| l["offset"] != r[1]) {
                return false;
            }
        }
    }
    true
}

/// Waits until every acknowledged span is in a committed block and the offsets are
/// committed, then asserts each span is stored exactly once.
async fn assert_stored_once(s3: &S3Server, server: &Server, acked: &BTreeMap<String, Vec<String>>) {
    let spans: usize = acked.values().map(Vec::len).sum();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (blocks, stored) = spans_in_blocks(s3).await;
        let settled = offsets_settled(s3).await;
        if (stored as usize >= spans && settled) || Instant::now() > deadline {
            eprintln!("kafka: {blocks} blocks hold {stored} of {spans} acked spans; offsets committed: {settled}");
            assert_eq!(
                stored as usize,
                spans,
                "spans stored in blocks vs acknowledged\n{}",
                server.log_tail(30)
            );
            assert!(settled, "offsets not committed\n{}", server.log_tail(30));
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Spans stored in committed blocks (meta.json present), summed over the tenant's blocks.
/// A block compacted between the listing and the read (its meta.json renamed) is skipped.
pub(crate) async fn spans_in_blocks(s3: &S3Server) -> (usize, u64) {
    let b = s3.backend("vivace");
    let keys = b.list("single-tenant/").await.unwrap_or_default();
    let mut blocks = 0;
    let mut traces = 0;
    for k in keys.iter().filter(|k| k.ends_with("/meta.json")) {
        let Ok(bytes) = b.get(k.strip_prefix("vivace/").unwrap_or(k)).await else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        blocks += 1;
        traces += v["totalSpans"].as_u64().unwrap_or(0);
    }
    (blocks, traces)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_acked_spans_survive_kill9_once_each() {
    let Some((s3, broker)) = bucket_and_broker("vivace-kafka").await else {
        return;
    };
    let mut server = Server::start_with(opts(&s3, &broker, "5s")).await;
    // Ack to readable by ID: the consumer must read the record back from the broker.
    let mut visible = Vec::new();
    let mut singles = BTreeMap::new();
    for _ in 0..10 {
        let one = send(&server, "kafka-a", 1).await;
        let t0 = Instant::now();
        assert_all_readable(&server, &one, "single trace").await;
        visible.push(t0.elapsed());
        singles.extend(one);
    }
    visible.sort();
    eprintln!(
        "kafka: ack to readable by id p50 {:?} max {:?}",
        visible[visible.len() / 2],
        visible[visible.len() - 1]
    );
    let t0 = Instant::now();
    let (more, mut took) = send_timed(&server, "kafka-a", 200).await;
    let mut acked = singles;
    acked.extend(more);
    took.sort();
    eprintln!(
        "kafka: 200 traces (40 exports of 15 spans) acked in {:?}; ack latency p50 {:?} p99 {:?} max {:?}",
        t0.elapsed(),
        took[took.len() / 2],
        took[took.len() * 99 / 100],
        took[took.len() - 1]
    );
    assert_all_readable(&server, &acked, "live").await;
    let found = search_service(&server, "kafka-a").await;
    let want: HashSet<String> = acked.keys().cloned().collect();
    assert_eq!(found, want, "search over fresh data");

    // More traffic, then kill -9 right after the acks: no flush, no commit guaranteed.
    acked.extend(send(&server, "kafka-a", 100).await);
    server.kill9();
    server.restart().await;
    assert_all_readable(&server, &acked, "after kill -9").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = search_service(&server, "kafka-a").await;
        if found.len() == acked.len() || Instant::now() > deadline {
            let want: HashSet<String> = acked.keys().cloned().collect();
            assert_eq!(found, want, "search after kill -9");
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Once everything is in blocks, each span is stored once.
    assert_stored_once(&s3, &server, &acked).await;
    // And still readable once, now from blocks.
    assert_all_readable(&server, &acked, "from blocks").await;
    drop(broker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_broker_down_refuses_exports_retryably() {
    let Some(s3) = S3Server::start("vivace-kafka-down").await else {
        return;
    };
    let Some(mut broker) = Broker::start(&s3).await else {
        return;
    };
    let server = Server::start_with(opts(&s3, &broker, "2s")).await;
    let before = send(&server, "kafka-b", 5).await;
    assert_all_readable(&server, &before, "before the outage").await;

    broker.stop();
    let tid = rand_trace_id();
    let req = pb_request(
        "kafka-b",
        vec![pb_span(&tid, &rand_span_id(), "lost?", now_nanos())],
    );
    let t0 = Instant::now();
    let (status, body) = server
        .post_otlp(
            req.encode_to_vec(),
            &[("content-type", "application/x-protobuf")],
        )
        .await;
    let body = String::from_utf8_lossy(&body);
    eprintln!(
        "kafka: export with the broker down answered {status} after {:?}",
        t0.elapsed()
    );
    assert_eq!(status, 503, "export with the broker down: {body}");

    // Back up: exports are acknowledged again and everything acknowledged is there.
    broker.start_again().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let after = loop {
        let mut exporter = build_exporter(&server, Transport::Grpc);
        exporter.set_resource(
            &Resource::builder_empty()
                .with_attribute(KeyValue::new("service.name", "kafka-b"))
                .build(),
        );
        let tid = rand_trace_id();
        let sid = rand_span_id();
        let batch = vec![SpanSpec::simple(tid, sid, None, "after", base_time()).build()];
        if exporter.export(batch).await.is_ok() {
            break BTreeMap::from([(hex::encode(tid), vec![hex::encode(sid)])]);
        }
        assert!(
            Instant::now() < deadline,
            "exports still refused 60 s after the broker came back\n{}\n{}",
            server.log_tail(20),
            broker.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_all_readable(&server, &after, "after the outage").await;
    assert_all_readable(&server, &before, "before the outage, read after").await;
}

/// A crash after a cut's blocks are committed (meta.json) but before its offsets are: the
/// restarted node finds the cut's blocks under the IDs its ranges give and starts past
/// it, so every span is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_crash_between_meta_and_commit_stores_each_span_once() {
    let Some((s3, broker)) = bucket_and_broker("vivace-kafka-redo").await else {
        return;
    };
    let mut server = Server::start_with(opts(&s3, &broker, "5s")).await;
    let mut acked = send(&server, "kafka-c", 20).await;
    assert_all_readable(&server, &acked, "live").await;
    assert_stored_once(&s3, &server, &acked).await;
    let (blocks_before, _) = spans_in_blocks(&s3).await;

    // The next commit hangs: wait for the cut's blocks, then kill -9 there.
    let marker = server.dir.path().join("hang-commit");
    fs::write(&marker, b"").unwrap();
    acked.extend(send(&server, "kafka-c", 20).await);
    let deadline = Instant::now() + Duration::from_secs(60);
    while spans_in_blocks(&s3).await.0 <= blocks_before {
        assert!(
            Instant::now() < deadline,
            "no block cut\n{}",
            server.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!offsets_settled(&s3).await, "the commit should be hanging");
    server.kill9();
    fs::remove_file(&marker).unwrap();

    server.restart().await;
    assert_stored_once(&s3, &server, &acked).await;
    // Its block landed, so the restarted node starts past the cut (a cut that landed only
    // in part would be consumed again exactly and rewritten under the same IDs).
    assert!(
        server
            .current_log()
            .contains("an earlier holder's cut is in the bucket"),
        "the landed cut was not adopted\n{}",
        server.log_tail(30)
    );
    assert_all_readable(&server, &acked, "after the redo").await;
    let found = search_service(&server, "kafka-c").await;
    assert_eq!(found.len(), acked.len(), "search after the redo");
    drop(broker);
}

/// Two processes on one topic and bucket: a distributor-only node (`target: distributor`)
/// takes the exports, the `all` node consumes them; spans sent to either are read from the
/// `all` node by ID and by search.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_distributor_only_node_feeds_the_ingester_node() {
    let Some((s3, broker)) = bucket_and_broker("vivace-kafka-split").await else {
        return;
    };
    let reader = Server::start_with(opts(&s3, &broker, "5s")).await;
    let mut dist_opts = opts(&s3, &broker, "5s");
    dist_opts.extra_yaml = format!("target: distributor\n{}", dist_opts.extra_yaml);
    let distributor = Server::start_with(dist_opts).await;
    let mut acked = send(&distributor, "kafka-d", 30).await;
    acked.extend(send(&reader, "kafka-d", 10).await);
    assert_all_readable(
        &reader,
        &acked,
        "sent to either node, read from the all node",
    )
    .await;
    let found = search_service(&reader, "kafka-d").await;
    assert_eq!(found.len(), acked.len(), "search on the all node");
    // The distributor node holds nothing itself: it has no query path.
    let (code, _) = distributor
        .get(&format!("/api/traces/{}", acked.keys().next().unwrap()))
        .await;
    assert_ne!(code, 200, "a distributor-only node answered a trace query");
    assert_stored_once(&s3, &reader, &acked).await;
    drop(broker);
}
