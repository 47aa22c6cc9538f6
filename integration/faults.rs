//! Object-store faults, injected into the real binary through the test-only
//! `storage.trace.fault_injection` section: flushes retry through failing puts and land as
//! one block; a flush stopped (and the server killed) between any two uploads leaves no
//! visible partial block and loses nothing; unreadable blocks make trace-by-ID fail with a
//! clear 5xx and make search partial.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;

use crate::harness::*;
use crate::ingest::{pb_request, pb_span};

/// trace id (hex) -> acknowledged span ids (hex)
pub(crate) type Acked = BTreeMap<String, HashSet<String>>;

const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);

/// `storage.trace` lines: the local bucket (relative to the server's working directory,
/// which is its temp dir) plus the given fault rules (YAML list items, 4-space indented).
fn storage_with_faults(rules: &str) -> String {
    format!(
        "backend: local\nlocal:\n  path: data/blocks\nfault_injection:\n  for_testing_only: true\n  rules:\n{rules}"
    )
}

/// Creates (or removes) a fault switch file below the server's dir.
fn switch(server: &Server, name: &str, on: bool) -> PathBuf {
    let p = server.dir.path().join("faults").join(name);
    if on {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, b"").unwrap();
    } else {
        let _ = fs::remove_file(&p);
    }
    p
}

/// Sends `traces` new traces of `spans` spans each over gRPC, starting `age` ago; every
/// span must be acknowledged.
pub(crate) async fn send_traces(
    server: &Server,
    acked: &mut Acked,
    traces: usize,
    spans: usize,
    age: Duration,
) -> Vec<String> {
    let mut client = TraceServiceClient::connect(server.grpc_url())
        .await
        .expect("connect grpc");
    let mut ids = Vec::new();
    for _ in 0..traces {
        let tid = rand_trace_id();
        let start = now_nanos() - age.as_nanos() as u64;
        let mut batch = Vec::new();
        let mut sids = HashSet::new();
        for i in 0..spans {
            let sid = rand_span_id();
            batch.push(pb_span(&tid, &sid, "op", start + i as u64 * 1000));
            sids.insert(hex::encode(sid));
        }
        let resp = client
            .export(pb_request("faults", batch))
            .await
            .unwrap_or_else(|e| panic!("export refused: {e}\n{}", server.log_tail(30)))
            .into_inner();
        assert!(
            resp.partial_success.map_or(0, |p| p.rejected_spans) == 0,
            "spans rejected"
        );
        let id = hex::encode(tid);
        acked.insert(id.clone(), sids);
        ids.push(id);
    }
    ids
}

/// Every acknowledged span is readable by trace ID exactly once, and nothing else is.
pub(crate) async fn assert_exactly_once(server: &Server, acked: &Acked) {
    for (tid, spans) in acked {
        let got = server.trace_v1_proto(tid).await;
        let mut seen: HashMap<String, usize> = HashMap::new();
        for rs in got.iter().flat_map(|t| &t.resource_spans) {
            for ss in &rs.scope_spans {
                for s in &ss.spans {
                    *seen.entry(hex::encode(&s.span_id)).or_default() += 1;
                }
            }
        }
        for s in spans {
            assert_eq!(
                seen.get(s).copied().unwrap_or(0),
                1,
                "span {tid}/{s} not returned exactly once\n{}",
                server.log_tail(30)
            );
        }
        assert_eq!(
            seen.len(),
            spans.len(),
            "trace {tid} has spans that were never acknowledged"
        );
    }
}

/// Block folders under the local bucket, with the files each holds.
fn block_dirs(server: &Server) -> Vec<(String, HashSet<String>)> {
    let tenant = server.blocks_dir().join("single-tenant");
    let mut out = Vec::new();
    for e in fs::read_dir(&tenant).into_iter().flatten().flatten() {
        if !e.path().is_dir() {
            continue;
        }
        let files = fs::read_dir(e.path())
            .unwrap()
            .flatten()
            .map(|f| f.file_name().to_string_lossy().into_owned())
            .collect();
        out.push((e.file_name().to_string_lossy().into_owned(), files));
    }
    out
}

async fn wait_log(server: &Server, needle: &[&str], timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let log = server.current_log();
        if let Some(line) = log.lines().find(|l| needle.iter().all(|n| l.contains(n))) {
            return line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no log line with {needle:?} within {timeout:?}\n{}",
            server.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn count_lines(server: &Server, needle: &str) -> usize {
    server
        .current_log()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_retries_through_failing_puts_and_commits_one_block() {
    let mut opts = Opts::fast_flush();
    opts.storage = Some(storage_with_faults(
        "    - op: put\n      action: error\n      while_file_exists: faults/fail-puts\n    - op: put\n      action: delay\n      delay: 30ms\n",
    ));
    let server = Server::start_with(opts).await;
    assert!(
        server.current_log().contains("FAULT INJECTION IS ON"),
        "the server did not say fault injection is on"
    );
    switch(&server, "fail-puts", true);
    let mut acked = Acked::new();
    send_traces(&server, &mut acked, 5, 10, Duration::from_secs(1)).await;

    // The store refuses every put: the flush keeps retrying, nothing becomes visible.
    let deadline = Instant::now() + FLUSH_TIMEOUT;
    while count_lines(&server, "block upload failed, retrying") < 3 {
        assert!(Instant::now() < deadline, "{}", server.log_tail(40));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(server.block_metas().is_empty(), "a block became visible");
    assert!(block_dirs(&server).is_empty(), "a failed put left files");
    let wal_bytes: u64 = wal_segments(&server.wal_dir())
        .iter()
        .map(|p| fs::metadata(p).map_or(0, |m| m.len()))
        .sum();
    assert!(wal_bytes > 0, "wal dropped before the block was committed");
    // Meanwhile the traces are served from memory.
    assert_exactly_once(&server, &acked).await;

    // The store recovers: the retry lands, as one block.
    switch(&server, "fail-puts", false);
    server.wait_blocks_flushed(1, FLUSH_TIMEOUT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(server.block_metas().len(), 1, "{:?}", block_dirs(&server));
    assert_eq!(
        block_dirs(&server).len(),
        1,
        "retries left extra block folders"
    );
    assert_exactly_once(&server, &acked).await;

    // After a restart (WAL truncated after the commit) the block alone holds them once.
    let mut server = server;
    server.restart().await;
    assert_exactly_once(&server, &acked).await;
    eprintln!("faults: the flush retried through failing puts and landed as one block");
}

/// Stops the flush at the put of the first key containing `hang_on`, kill -9s the server
/// there, and restarts it without the fault.
async fn interrupted_flush(point: &str, hang_on: &str, left_behind: &[&str]) {
    let mut opts = Opts::fast_flush();
    opts.storage = Some(storage_with_faults(&format!(
        "    - op: put\n      key_contains: \"{hang_on}\"\n      action: hang\n      while_file_exists: faults/hang\n"
    )));
    let mut server = Server::start_with(opts).await;
    switch(&server, "hang", true);
    let mut acked = Acked::new();
    send_traces(&server, &mut acked, 4, 8, Duration::from_secs(1)).await;
    let line = wait_log(&server, &["fault injected", hang_on], FLUSH_TIMEOUT).await;
    // Let the other puts of the same stage finish, then kill at this point.
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.kill9();

    let dirs = block_dirs(&server);
    assert_eq!(dirs.len(), 1, "{point}: {dirs:?} ({line})");
    let (_, files) = &dirs[0];
    for f in left_behind {
        assert!(
            files.iter().any(|x| x.starts_with(f)),
            "{point}: {f} not uploaded before the fault: {files:?}"
        );
    }
    assert!(
        !files.contains("meta.json"),
        "{point}: meta.json written: {files:?}"
    );
    assert!(server.block_metas().is_empty());

    switch(&server, "hang", false);
    server.restart().await;
    // Before the new flush: the partial block is invisible, the WAL serves everything.
    assert_exactly_once(&server, &acked).await;
    server.wait_blocks_flushed(1, FLUSH_TIMEOUT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_exactly_once(&server, &acked).await;
    // Every visible block is complete.
    for (id, files) in block_dirs(&server) {
        if files.contains("meta.json") {
            for f in ["data.parquet", "index", "tags.json", "bloom-0"] {
                assert!(
                    files.contains(f),
                    "{point}: block {id} lacks {f}: {files:?}"
                );
            }
        }
    }
    let (code, body) = server.get("/api/search?q=%7B%7D&limit=100").await;
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let found: HashSet<String> = v["traces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            t["traceID"]
                .as_str()
                .unwrap()
                .trim_start_matches('0')
                .to_owned()
        })
        .collect();
    assert_eq!(found.len(), acked.len(), "{point}: search found {found:?}");
    // And once more from blocks alone (the WAL is truncated after the commit).
    server.kill9();
    server.restart().await;
    assert_exactly_once(&server, &acked).await;
    eprintln!(
        "faults: flush interrupted {point}, kill -9, restart: {} spans exactly once",
        acked.values().map(HashSet::len).sum::<usize>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_killed_after_data_parquet() {
    interrupted_flush("after data.parquet", "/bloom-", &["data.parquet"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_killed_after_blooms() {
    interrupted_flush("after blooms", "/index", &["data.parquet", "bloom-"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_killed_before_meta_json() {
    interrupted_flush(
        "before meta.json",
        "/meta.json",
        &["data.parquet", "bloom-", "index", "tags.json"],
    )
    .await;
}

/// A block whose data cannot be read: trace by ID fails with a 5xx naming the block (never
/// a silently incomplete trace), search returns the other blocks' hits flagged partial
/// (completedJobs < totalJobs), and everything is whole again once the store recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_block_fails_lookups_clearly_and_makes_search_partial() {
    // The slack lets the hour-old trace keep its own block times (by default they would be
    // clamped to its ingestion time, overlapping trace B's block).
    let mut server = Server::start_with(Opts {
        ingester_yaml: "  ingestion_time_range_slack: 3h\n".into(),
        ..Opts::fast_flush()
    })
    .await;
    let mut acked = Acked::new();
    // Trace A an hour old, trace B now: their blocks cover disjoint time ranges.
    let a = send_traces(&server, &mut acked, 1, 6, Duration::from_secs(3600)).await[0].clone();
    server.wait_blocks_flushed(1, FLUSH_TIMEOUT).await;
    let metas = server.block_metas();
    assert_eq!(metas.len(), 1);
    let block_a = metas[0]
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let b = send_traces(&server, &mut acked, 1, 6, Duration::from_secs(1)).await[0].clone();
    let deadline = Instant::now() + FLUSH_TIMEOUT;
    while server.block_metas().len() < 2 {
        assert!(Instant::now() < deadline, "{}", server.log_tail(30));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.stop_sigterm().await;

    server.opts.storage = Some(storage_with_faults(&format!(
        "    - op: get_range\n      key_contains: \"{block_a}/data.parquet\"\n      action: error\n      while_file_exists: faults/fail-reads\n"
    )));
    fs::write(server.config_path(), server.config_yaml()).unwrap();
    switch(&server, "fail-reads", true);
    server.restart().await;

    let now = now_nanos() / 1_000_000_000;
    // Trace A lives in the unreadable block: a clear server error, not a partial trace.
    let (code, body) = server.get(&format!("/api/traces/{a}")).await;
    assert!(
        code >= 500,
        "lookup over an unreadable block answered {code}: {body}"
    );
    assert!(
        body.contains(&block_a) && body.contains("injected error"),
        "error does not say which block failed and why: {body}"
    );
    let (code, body) = server.get(&format!("/api/v2/traces/{a}")).await;
    assert!(code >= 500, "v2 lookup answered {code}: {body}");
    // Trace B, in a time range that excludes block A, is whole.
    let (code, body) = server
        .get(&format!(
            "/api/traces/{b}?start={}&end={}",
            now - 600,
            now + 60
        ))
        .await;
    assert_eq!(code, 200, "{body}");
    // Search over both blocks: B's hit, flagged partial.
    let search =
        |start: u64, end: u64| format!("/api/search?q=%7B%7D&limit=50&start={start}&end={end}");
    let (code, body) = server.get(&search(now - 7200, now + 60)).await;
    assert_eq!(code, 200, "partial search must still answer: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let ids: Vec<String> = v["traces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["traceID"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        ids.iter().any(|i| b.ends_with(i.trim_start_matches('0'))),
        "{body}"
    );
    assert!(
        !ids.iter().any(|i| a.ends_with(i.trim_start_matches('0'))),
        "{body}"
    );
    let (done, total) = (
        v["metrics"]["completedJobs"].as_u64().unwrap(),
        v["metrics"]["totalJobs"].as_u64().unwrap(),
    );
    assert!(done < total, "search not flagged partial: {body}");
    assert!(server
        .current_log()
        .contains("search skipped a block it could not read"));
    // Search over block A alone: nothing could be read, so an error rather than "no hits".
    let (code, body) = server.get(&search(now - 4000, now - 3000)).await;
    assert!(
        code >= 500,
        "search with every block unreadable answered {code}: {body}"
    );

    // The store recovers: everything is whole again.
    switch(&server, "fail-reads", false);
    assert_exactly_once(&server, &acked).await;
    let (code, body) = server.get(&search(now - 7200, now + 60)).await;
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["traces"].as_array().unwrap().len(), 2, "{body}");
    assert_eq!(
        v["metrics"]["completedJobs"], v["metrics"]["totalJobs"],
        "{body}"
    );
}
