//! The crash loop: exporters send continuously while the server is killed with SIGKILL at
//! random moments, over and over (blocks are being cut and flushed meanwhile). After the
//! last restart every acknowledged span must be readable by ID exactly once.
//! `VIVACE_CRASH_CYCLES` raises the cycle count for a longer run.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use rand::Rng;

use crate::harness::*;
use crate::ingest::{pb_request, pb_span};

/// trace id (hex) -> acknowledged span ids (hex)
type Acked = Arc<Mutex<HashMap<String, HashSet<String>>>>;

async fn send_until_refused(grpc_url: String, acked: Acked, seed: u64) {
    let Ok(mut client) = TraceServiceClient::connect(grpc_url).await else {
        return;
    };
    let mut i = 0u64;
    loop {
        // A few traces per request, and some requests add late spans to earlier traces.
        let mut spans = Vec::new();
        let mut ids = Vec::new();
        for t in 0..3 {
            let tid = {
                let known: Vec<String> = acked.lock().unwrap().keys().cloned().collect();
                if t == 0 && i % 4 == 3 && !known.is_empty() {
                    let pick = &known[(seed as usize + i as usize) % known.len()];
                    hex::decode(pick).unwrap()
                } else {
                    rand_trace_id().to_vec()
                }
            };
            for _ in 0..5 {
                let sid = rand_span_id();
                spans.push(pb_span(&tid, &sid, "op", now_nanos() - 1_000_000));
                ids.push((hex::encode(&tid), hex::encode(sid)));
            }
        }
        match client.export(pb_request("crash-loop", spans)).await {
            Ok(resp) => {
                let rejected = resp
                    .into_inner()
                    .partial_success
                    .map_or(0, |p| p.rejected_spans);
                assert_eq!(rejected, 0, "valid spans were rejected");
                let mut a = acked.lock().unwrap();
                for (t, s) in ids {
                    a.entry(t).or_default().insert(s);
                }
            }
            // The server died under us: this request was never acknowledged.
            Err(_) => return,
        }
        i += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_loop_loses_and_duplicates_nothing() {
    let cycles: usize = std::env::var("VIVACE_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let mut server = Server::start_with(Opts {
        trace_idle_period: "300ms".into(),
        max_block_duration: "500ms".into(),
        flush_check_period: "100ms".into(),
        ..Opts::default()
    })
    .await;
    let acked: Acked = Arc::default();
    let mut rng = rand::rng();
    for cycle in 0..cycles {
        let senders: Vec<_> = (0..3)
            .map(|k| {
                tokio::spawn(send_until_refused(
                    server.grpc_url(),
                    acked.clone(),
                    (cycle * 3 + k) as u64,
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..800))).await;
        server.kill9();
        for s in senders {
            let _ = tokio::time::timeout(Duration::from_secs(10), s).await;
        }
        server.restart().await;
    }
    let acked = acked.lock().unwrap().clone();
    let total: usize = acked.values().map(HashSet::len).sum();
    assert!(
        total > 100,
        "too little traffic acknowledged to prove anything: {total}"
    );
    let mut missing = Vec::new();
    for (tid, spans) in &acked {
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
            match seen.get(s) {
                None => missing.push(format!("{tid}/{s}")),
                Some(&n) => assert_eq!(n, 1, "span {tid}/{s} returned {n} times"),
            }
        }
    }
    if !missing.is_empty() {
        // Where are the missing spans? Look in every block directly.
        for m in missing.iter().take(5) {
            let (tid, sid) = m.split_once('/').unwrap();
            for meta in server.block_metas() {
                let data = std::fs::read(meta.with_file_name("data.parquet")).unwrap_or_default();
                let Ok(traces) = vivace::block::read_all_traces(data.into()) else {
                    continue;
                };
                for t in traces.iter().filter(|t| t.id.to_hex() == tid) {
                    let has = t
                        .batches
                        .iter()
                        .flat_map(|r| &r.scope_spans)
                        .flat_map(|s| &s.spans)
                        .any(|s| hex::encode(&s.span_id) == sid);
                    eprintln!(
                        "block {}: trace {tid} present, span {sid} present={has}",
                        meta.display()
                    );
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {total} acknowledged spans lost after {cycles} kill -9 cycles, e.g. {:?}\n{}",
        missing.len(),
        &missing[..missing.len().min(5)],
        server.log_tail(40)
    );
    eprintln!(
        "crash loop: {cycles} cycles, {} traces, {total} acknowledged spans, all present once; {} blocks",
        acked.len(),
        server.block_metas().len()
    );
}
