//! The bucket commands of the same binary: `vivace blocks list` and `vivace query trace|search`
//! read what a server flushed, with the server stopped.

use std::process::Command;
use std::time::Duration;

use prost::Message;

use crate::harness::*;
use crate::ingest::{pb_request, pb_span};

fn vivace(server: &Server, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vivace"))
        .args(args)
        .arg(format!("--config.file={}", server.config_path().display()))
        .output()
        .expect("run vivace");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_commands_read_flushed_blocks() {
    let mut server = Server::start_with(Opts::fast_flush()).await;
    let tid = rand_trace_id();
    let spans = (0..3)
        .map(|_| pb_span(&tid, &rand_span_id(), "cli-op", now_nanos()))
        .collect();
    let (code, _) = server
        .post_otlp(
            pb_request("cli-svc", spans).encode_to_vec(),
            &[("content-type", "application/x-protobuf")],
        )
        .await;
    assert_eq!(code, 200);
    server.wait_blocks_flushed(1, Duration::from_secs(60)).await;
    server.stop_sigterm().await;

    let (ok, out, err) = vivace(&server, &["blocks", "list", "--output", "json"]);
    assert!(ok, "{err}");
    let blocks: serde_json::Value = serde_json::from_str(&out).expect("json block list");
    let blocks = blocks.as_array().unwrap();
    assert!(!blocks.is_empty(), "{out}");
    assert!(
        blocks.iter().any(|b| b["totalSpans"].as_u64() == Some(3)),
        "{out}"
    );

    let (ok, out, err) = vivace(&server, &["blocks", "list"]);
    assert!(ok && out.contains("blocks"), "{out}{err}");

    let (ok, out, err) = vivace(&server, &["query", "trace", &hex::encode(tid)]);
    assert!(ok, "{err}");
    let trace: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(count_json_spans(&trace["batches"]), 3, "{out}");

    let (ok, out, err) = vivace(
        &server,
        &["query", "search", "{ resource.service.name = \"cli-svc\" }"],
    );
    assert!(ok, "{err}");
    assert!(out.contains(&hex::encode(tid)), "{out}");

    let (ok, _, err) = vivace(&server, &["query", "trace", &hex::encode(rand_trace_id())]);
    assert!(!ok && err.contains("not found"), "{err}");
    let (ok, _, err) = vivace(&server, &["query", "search", "{ .a = "]);
    assert!(!ok && err.contains("TraceQL"), "{err}");
}

fn count_json_spans(batches: &serde_json::Value) -> usize {
    batches
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|rs| rs["scopeSpans"].as_array().cloned().unwrap_or_default())
        .map(|ss| ss["spans"].as_array().map_or(0, |s| s.len()))
        .sum()
}
