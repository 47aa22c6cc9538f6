//! The compactor in the real binary (`-target=compactor` on the bucket `all` flushed to):
//! blocks flushed in several rounds, each holding a piece
//! of every trace (and one span sent twice), are merged into one block; every trace reads
//! back whole with each span once; the inputs are deleted after
//! `compacted_block_retention`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

use prost::Message;

use crate::harness::*;
use crate::ingest::{pb_request, pb_span};

const ROUNDS: usize = 4;
const TRACES: usize = 20;

fn compactor_yaml(cycle: &str) -> String {
    format!(
        "compactor:\n  compaction:\n    compaction_cycle: {cycle}\n    compacted_block_retention: 2s\n"
    )
}

/// Block folders under the tenant holding any object (the local store leaves deleted
/// blocks' folders behind, empty).
fn block_dirs(server: &Server) -> usize {
    fs::read_dir(server.blocks_dir().join("single-tenant"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| fs::read_dir(e.path()).is_ok_and(|mut d| d.next().is_some()))
                .count()
        })
        .unwrap_or(0)
}

async fn wait_for(what: &str, server: &Server, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            server.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushed_blocks_are_compacted_into_one() {
    // No compaction while the input blocks are being flushed.
    let mut opts = Opts::fast_flush();
    opts.extra_yaml = compactor_yaml("1h");
    let mut server = Server::start_with(opts).await;

    let ids: Vec<[u8; 16]> = (0..TRACES).map(|_| rand_trace_id()).collect();
    let mut want: BTreeMap<String, BTreeSet<[u8; 8]>> = BTreeMap::new();
    let mut resent = None;
    for round in 0..ROUNDS {
        let mut spans = Vec::new();
        for tid in &ids {
            let sid = rand_span_id();
            want.entry(hex::encode(tid)).or_default().insert(sid);
            spans.push(pb_span(tid, &sid, &format!("op-{round}"), now_nanos()));
        }
        // One span of the first round is sent again in the second: a duplicate across blocks.
        if round == 1 {
            if let Some(span) = resent.take() {
                spans.push(span);
            }
        } else if round == 0 {
            resent = Some(spans[0].clone());
        }
        let (code, body) = server
            .post_otlp(
                pb_request("compacted-svc", spans).encode_to_vec(),
                &[("content-type", "application/x-protobuf")],
            )
            .await;
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
        let n = round + 1;
        wait_for(
            &format!("block {n}"),
            &server,
            Duration::from_secs(60),
            || server.block_metas().len() >= n,
        )
        .await;
    }
    assert_eq!(server.block_metas().len(), ROUNDS);
    let total: usize = want.values().map(BTreeSet::len).sum();

    // Restart as `-target=compactor` alone with a short cycle: it merges the four blocks.
    server.stop_sigterm().await;
    server.opts.extra_yaml = format!("target: compactor\n{}", compactor_yaml("1s"));
    fs::write(server.config_path(), server.config_yaml()).unwrap();
    server.restart().await;
    wait_for("one live block", &server, Duration::from_secs(60), || {
        server.block_metas().len() == 1
    })
    .await;
    assert_eq!(
        server
            .metric("vivace_compactor_blocks_compacted_total")
            .await,
        Some(ROUNDS as f64)
    );
    assert_eq!(
        server.metric("vivace_compactor_spans_written_total").await,
        Some(total as f64)
    );
    // The inputs go after compacted_block_retention.
    wait_for("inputs deleted", &server, Duration::from_secs(30), || {
        block_dirs(&server) == 1
    })
    .await;
    assert!(server
        .metric("vivace_compactor_blocks_deleted_total")
        .await
        .is_some_and(|n| n >= ROUNDS as f64));
    let meta = &server.block_metas()[0];
    let data = fs::read(meta.with_file_name("data.parquet")).unwrap();
    let traces = vivace::block::read_all_traces(data.into()).unwrap();
    assert_eq!(traces.len(), TRACES);
    let spans: usize = traces
        .iter()
        .map(|t| vivace::model::span_count(&t.batches))
        .sum();
    assert_eq!(spans, total);

    // Back to `all`: every trace reads back whole, each span once, from the one block.
    server.stop_sigterm().await;
    server.opts.extra_yaml = compactor_yaml("1h");
    fs::write(server.config_path(), server.config_yaml()).unwrap();
    server.restart().await;
    for (id, spans) in &want {
        let got = server.trace_v2_proto(id).await;
        let mut seen = Vec::new();
        for rs in got.trace.iter().flat_map(|t| &t.resource_spans) {
            for ss in &rs.scope_spans {
                seen.extend(ss.spans.iter().map(|s| s.span_id.clone()));
            }
        }
        seen.sort();
        let want: Vec<Vec<u8>> = spans.iter().map(|s| s.to_vec()).collect();
        assert_eq!(seen, want, "trace {id}");
    }

    // The bucket tool sees one block.
    server.stop_sigterm().await;
    let out = Command::new(env!("CARGO_BIN_EXE_vivace"))
        .args(["blocks", "list", "--output", "json"])
        .arg(format!("--config.file={}", server.config_path().display()))
        .output()
        .expect("run vivace");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let blocks: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let blocks = blocks.as_array().unwrap();
    assert_eq!(blocks.len(), 1, "{blocks:?}");
    assert_eq!(blocks[0]["compactionLevel"].as_u64(), Some(1));
    assert_eq!(blocks[0]["totalSpans"].as_u64(), Some(total as u64));
}
