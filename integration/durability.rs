//! Durability: late spans across a block flush, kill -9 after acks (with and
//! without a torn / corrupt WAL tail), blocks surviving a restart without the
//! WAL, and SIGTERM.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::trace::{SpanData, SpanExporter as _};
use opentelemetry_sdk::Resource;
use prost::Message;

use crate::harness::*;
use crate::ingest::*;
use crate::model::*;

const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);

fn resource(name: &str) -> Resource {
    Resource::builder_empty()
        .with_attribute(KeyValue::new("service.name", name.to_string()))
        .build()
}

/// Span IDs (hex) of a trace as returned by v1 protobuf (empty when 404).
async fn span_ids_v1(server: &Server, trace_id: &str) -> HashSet<String> {
    server
        .trace_v1_proto(trace_id)
        .await
        .map(|t| {
            t.resource_spans
                .iter()
                .flat_map(|r| r.scope_spans.iter())
                .flat_map(|s| s.spans.iter())
                .map(|s| hex::encode(&s.span_id))
                .collect()
        })
        .unwrap_or_default()
}

async fn check_full(server: &Server, what: &str, trace_id: &str, want: &SpanMap) {
    check_trace_all_formats(server, what, trace_id, want).await;
}

/// One trace in two batches with a block flush in between reads back whole,
/// live, after a restart, after the second part is flushed, and after kill -9.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_span_across_block_flush() {
    let mut server = Server::start_with(Opts::fast_flush()).await;
    let tid = rand_trace_id();
    let root = rand_span_id();
    let base = base_time();
    let res = resource("late");
    let part_a: Vec<SpanData> = (0..3)
        .map(|i| {
            let parent = if i == 0 { None } else { Some(root) };
            let sid = if i == 0 { root } else { rand_span_id() };
            SpanSpec::simple(tid, sid, parent, "early", at(base, i * 1000)).build()
        })
        .collect();
    let part_b: Vec<SpanData> = (0..2)
        .map(|i| {
            SpanSpec::simple(
                tid,
                rand_span_id(),
                Some(root),
                "late",
                at(base, 5_000_000_000 + i * 1000),
            )
            .build()
        })
        .collect();
    let all = Dataset::new(vec![(
        res.clone(),
        [part_a.clone(), part_b.clone()].concat(),
    )]);
    let want = &all.traces[0].1;
    let id = hex::encode(tid);

    export(&server, Transport::Grpc, &res, part_a).await;
    server.wait_blocks_flushed(1, FLUSH_TIMEOUT).await;
    let metas_after_a = server.block_metas().len();
    assert!(metas_after_a >= 1, "no meta.json after the first flush");

    export(&server, Transport::HttpProto, &res, part_b).await;
    check_full(&server, "late span, live", &id, want).await;

    server.restart().await;
    check_full(&server, "late span, after restart", &id, want).await;

    // Let the second part be flushed too (a second block), then read again.
    let deadline = Instant::now() + FLUSH_TIMEOUT;
    while server.block_metas().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "second block never flushed\n{}",
            server.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    check_full(&server, "late span, both parts in blocks", &id, want).await;

    server.kill9();
    server.restart().await;
    check_full(
        &server,
        "late span, both parts in blocks, after kill -9",
        &id,
        want,
    )
    .await;
}

/// (trace id, span ids) of every acknowledged export.
type Acked = Arc<Mutex<Vec<(String, Vec<String>)>>>;

/// Several concurrent exporters; kill -9 while they are still sending; every
/// span acknowledged before the kill must be readable after the restart.
async fn kill9_after_acks(tail: Option<&'static str>) {
    stop_under_load(tail, false).await;
}

/// Concurrent exporters; stop the server (kill -9 or SIGTERM) while they are
/// still sending; optionally damage the WAL tail; restart; check every ack.
async fn stop_under_load(tail: Option<&'static str>, sigterm: bool) {
    let mut server = Server::start().await;
    let target_traces: usize = 300;
    let acked: Acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let transports = [
        Transport::Grpc,
        Transport::HttpProto,
        Transport::GrpcGzip,
        Transport::HttpJson,
    ];
    let mut tasks = Vec::new();
    for (n, t) in transports.into_iter().enumerate() {
        let mut exporter = build_exporter(&server, t);
        exporter.set_resource(&resource(&format!("kill9-{n}")));
        let acked = acked.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let base = base_time();
            while !stop.load(Ordering::SeqCst) {
                // 5 traces x 2 spans per request.
                let mut batch = Vec::new();
                let mut sent = Vec::new();
                for _ in 0..5 {
                    let tid = rand_trace_id();
                    let root = rand_span_id();
                    let child = rand_span_id();
                    batch.push(SpanSpec::simple(tid, root, None, "root", base).build());
                    batch.push(SpanSpec::simple(tid, child, Some(root), "child", base).build());
                    sent.push((
                        hex::encode(tid),
                        vec![hex::encode(root), hex::encode(child)],
                    ));
                }
                match exporter.export(batch).await {
                    Ok(()) => acked.lock().unwrap().extend(sent),
                    Err(_) => return,
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let n = acked.lock().unwrap().len();
        if n >= target_traces {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {n} traces acknowledged in 180 s\n{}",
            server.log_tail(40)
        );
        assert!(
            tasks.iter().any(|t| !t.is_finished()),
            "all exporters stopped (export error) after {n} acked traces\n{}",
            server.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Stop while the exporters are still in flight.
    if sigterm {
        server.stop_sigterm().await;
    } else {
        server.kill9();
    }
    stop.store(true, Ordering::SeqCst);
    // Anything acked up to now was acked before the process died.
    let acked: Vec<(String, Vec<String>)> = acked.lock().unwrap().clone();
    for t in &tasks {
        t.abort();
    }

    if let Some(kind) = tail {
        let seg = server.newest_wal_segment().unwrap_or_else(|| {
            let listing: Vec<_> = fs::read_dir(server.wal_dir())
                .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
                .unwrap_or_default();
            panic!(
                "no WAL segment <20 digits>.wal in {}: {listing:?}",
                server.wal_dir().display()
            )
        });
        let mut f = fs::OpenOptions::new().append(true).open(&seg).unwrap();
        match kind {
            // Length header claims 4096 bytes, only 37 follow.
            "torn" => {
                f.write_all(&4096u32.to_le_bytes()).unwrap();
                f.write_all(&0x1234_5678u32.to_le_bytes()).unwrap();
                f.write_all(&[0xAB; 37]).unwrap();
            }
            // A complete record whose checksum does not match.
            "crc" => {
                let payload = [0x5Au8; 64];
                let good = crc32c_sw(&payload);
                f.write_all(&(payload.len() as u32).to_le_bytes()).unwrap();
                f.write_all(&(good ^ 0xFFFF_FFFF).to_le_bytes()).unwrap();
                f.write_all(&payload).unwrap();
            }
            // Only 3 bytes of a header.
            "header" => f.write_all(&[1, 2, 3]).unwrap(),
            _ => unreachable!(),
        }
        f.sync_all().unwrap();
    }

    server.restart().await;
    eprintln!(
        "stop test: {} traces acknowledged before the stop",
        acked.len()
    );
    if tail.is_some() {
        let log = server.current_log().to_lowercase();
        assert!(
            log.lines().any(|l| l.contains("warn") && l.contains("wal")),
            "expected a warning log line about the cut WAL tail\n{}",
            server.log_tail(40)
        );
    }

    let mut missing = Vec::new();
    let mut total_spans = 0;
    for (tid, spans) in &acked {
        let got = span_ids_v1(&server, tid).await;
        for s in spans {
            total_spans += 1;
            if !got.contains(s) {
                missing.push(format!("{tid}/{s}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged spans ({} traces) missing after kill -9 + restart; first: {:?}",
        missing.len(),
        total_spans,
        acked.len(),
        &missing[..missing.len().min(10)]
    );
    // The server keeps working after the recovery.
    let tid = rand_trace_id();
    let res = resource("after-recovery");
    let spans = vec![SpanSpec::simple(tid, rand_span_id(), None, "after", base_time()).build()];
    let ds = Dataset::new(vec![(res.clone(), spans.clone())]);
    export(&server, Transport::Grpc, &res, spans).await;
    check_full(
        &server,
        "after recovery",
        &hex::encode(tid),
        &ds.traces[0].1,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_after_acks_concurrent() {
    kill9_after_acks(None).await;
}

/// SIGTERM while four exporters are sending: exit 0 within 5 s, and every
/// acknowledged span is there after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_keeps_acked_spans() {
    stop_under_load(None, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_torn_wal_tail() {
    kill9_after_acks(Some("torn")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_corrupt_crc_wal_tail() {
    kill9_after_acks(Some("crc")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_partial_header_wal_tail() {
    kill9_after_acks(Some("header")).await;
}

/// Software CRC-32C (Castagnoli), so the test needs no extra crate.
fn crc32c_sw(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn crc32c_sw_known_vector() {
    assert_eq!(crc32c_sw(b"123456789"), 0xE306_9283);
}

/// Data flushed to blocks survives a restart even with the WAL wiped, i.e. it
/// is served from the blocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushed_blocks_survive_restart_without_wal() {
    let mut server = Server::start_with(Opts::fast_flush()).await;
    let ds = rich_dataset("blocks");
    // Everything in ONE request so that it all lands in the same block.
    let mut req = ExportTraceServiceRequest {
        resource_spans: vec![],
    };
    for (res, spans) in &ds.batches {
        req.resource_spans.extend(group_spans_by_resource_and_scope(
            spans.clone(),
            &ResourceAttributesWithSchema::from(res),
        ));
    }
    let mut simple = Vec::new();
    let res = resource("blocks-simple");
    let mut simple_spans = Vec::new();
    for i in 0..20u64 {
        let tid = rand_trace_id();
        simple_spans.push(
            SpanSpec::simple(tid, rand_span_id(), None, "simple", at(base_time(), i)).build(),
        );
        simple.push(hex::encode(tid));
    }
    let simple_ds = Dataset::new(vec![(res.clone(), simple_spans.clone())]);
    req.resource_spans.extend(group_spans_by_resource_and_scope(
        simple_spans,
        &ResourceAttributesWithSchema::from(&res),
    ));
    let (status, body) = server
        .post_otlp(
            req.encode_to_vec(),
            &[("Content-Type", "application/x-protobuf")],
        )
        .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let resp = ExportTraceServiceResponse::decode(&body[..]).expect("export response");
    if let Some(p) = resp.partial_success {
        assert_eq!(p.rejected_spans, 0, "{p:?}");
    }

    // Wait for the block's meta.json (written last, so the block is complete).
    let deadline = Instant::now() + FLUSH_TIMEOUT;
    while server.block_metas().is_empty() {
        assert!(
            Instant::now() < deadline,
            "no block meta.json under {} within {FLUSH_TIMEOUT:?}\n{}",
            server.blocks_dir().display(),
            server.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let block_dir = server.block_metas()[0].parent().unwrap().to_path_buf();
    for f in ["data.parquet", "index"] {
        assert!(
            block_dir.join(f).is_file(),
            "block {} has no {f}",
            block_dir.display()
        );
    }
    let has_bloom = fs::read_dir(&block_dir)
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("bloom-"));
    assert!(has_bloom, "block {} has no bloom-N", block_dir.display());
    let meta: serde_json::Value =
        serde_json::from_slice(&fs::read(block_dir.join("meta.json")).unwrap())
            .expect("meta.json is JSON");
    assert!(meta.is_object(), "meta.json: {meta}");

    server.kill9();
    // Wipe the WAL: whatever is read back now must come from the blocks.
    let wal = server.wal_dir();
    if wal.exists() {
        for e in fs::read_dir(&wal).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                fs::remove_dir_all(&p).unwrap();
            } else {
                fs::remove_file(&p).unwrap();
            }
        }
    }
    server.restart().await;
    for (id, want) in &ds.traces {
        check_full(&server, "from blocks after restart", id, want).await;
    }
    for (id, want) in &simple_ds.traces {
        check_full(&server, "simple trace from blocks after restart", id, want).await;
    }
    // start/end covering the data also finds it in blocks.
    let now = now_nanos() / 1_000_000_000;
    let q = format!("?start={}&end={}", now - 3600, now + 60);
    let v1 = server
        .trace_v1_json_q(&simple[0], &q)
        .await
        .expect("v1 with start/end: 404 for a trace in a block");
    assert_eq!(spans_from_json(&v1_batches(&v1)).len(), 1);
    let v2 = server.trace_v2_json_q(&simple[0], &q).await;
    assert_eq!(spans_from_json(&v2_resource_spans(&v2)).len(), 1);
    // A window that does not overlap the block skips it.
    let past = "?start=1000000&end=1003600";
    assert!(
        server.trace_v1_json_q(&simple[0], past).await.is_none(),
        "v1 with start/end in 1970 found a trace that only lives in a block from now"
    );
    let v2 = server.trace_v2_json_q(&simple[0], past).await;
    assert!(
        spans_from_json(&v2_resource_spans(&v2)).is_empty(),
        "v2 with start/end in 1970 should return an empty trace: {v2}"
    );
}

/// SIGTERM: exit status 0 within 5 s, acked data readable after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_cleanly_and_keeps_data() {
    let mut server = Server::start().await;
    let ds = rich_dataset("sigterm");
    for (res, spans) in &ds.batches {
        export(&server, Transport::Grpc, res, spans.clone()).await;
    }
    let (status, took) = server.stop_sigterm_within(Duration::from_secs(5)).await;
    assert!(
        status.success(),
        "exit status after SIGTERM: {status} (took {took:?})\n{}",
        server.log_tail(30)
    );
    server.restart().await;
    for (id, want) in &ds.traces {
        check_full(&server, "after SIGTERM + restart", id, want).await;
    }
    // And once more with data that arrived after the restart.
    let tid = rand_trace_id();
    let res = resource("sigterm-2");
    let spans = vec![SpanSpec::simple(tid, rand_span_id(), None, "second", base_time()).build()];
    let ds2 = Dataset::new(vec![(res.clone(), spans.clone())]);
    export(&server, Transport::HttpJson, &res, spans).await;
    server.stop_sigterm().await;
    server.restart().await;
    check_full(
        &server,
        "second SIGTERM + restart",
        &hex::encode(tid),
        &ds2.traces[0].1,
    )
    .await;
}

/// Many traces whose spans arrive in two halves ~2.5 s apart while blocks are
/// cut every 2 s: each trace is split over several blocks and/or memory and
/// must always read back whole, also after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_split_over_many_blocks() {
    let mut server = Server::start_with(Opts::fast_flush()).await;
    let res = resource("split");
    let base = base_time();
    let rounds = 6;
    let per_round = 10;
    let mut all: Vec<SpanData> = Vec::new();
    let mut pending: Vec<Vec<SpanData>> = Vec::new();
    let gap = 5; // rounds of 500 ms between the two halves of a trace
    for round in 0..rounds + gap {
        let mut batch = Vec::new();
        if round < rounds {
            let mut late = Vec::new();
            for i in 0..per_round {
                let tid = rand_trace_id();
                let root = rand_span_id();
                let off = (round * per_round + i) as u64 * 1000;
                batch.push(SpanSpec::simple(tid, root, None, "first", at(base, off)).build());
                late.push(
                    SpanSpec::simple(tid, rand_span_id(), Some(root), "second", at(base, off + 1))
                        .build(),
                );
            }
            pending.push(late);
        }
        // Second halves of the traces started `gap` rounds ago.
        if round >= gap && round - gap < pending.len() {
            batch.extend(std::mem::take(&mut pending[round - gap]));
        }
        if !batch.is_empty() {
            all.extend(batch.iter().cloned());
            let t = if round % 2 == 0 {
                Transport::Grpc
            } else {
                Transport::HttpProto
            };
            export(&server, t, &res, batch).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let ds = Dataset::new(vec![(res.clone(), all)]);
    assert_eq!(ds.traces.len(), rounds * per_round);
    for (id, want) in &ds.traces {
        let got = spans_from_proto(
            &server
                .trace_v1_proto(id)
                .await
                .unwrap_or_else(|| panic!("trace {id} not found"))
                .resource_spans,
        );
        assert_same_spans("split trace, live", want, &got);
    }
    // Blocks were cut while sending (so many traces straddle a cut); wait
    // until everything idle has been flushed, then restart.
    let deadline = Instant::now() + FLUSH_TIMEOUT;
    while server.block_metas().len() < 3 {
        assert!(
            Instant::now() < deadline,
            "expected at least 3 blocks, found {}\n{}",
            server.block_metas().len(),
            server.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.restart().await;
    for (id, want) in &ds.traces {
        let v1 = server
            .trace_v1_json(id)
            .await
            .unwrap_or_else(|| panic!("trace {id} not found after restart"));
        assert_same_spans(
            "split trace, after restart",
            want,
            &spans_from_json(&v1_batches(&v1)),
        );
    }
}

/// A block is also cut when `max_block_bytes` is reached, long before
/// `max_block_duration`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_cut_on_max_block_bytes() {
    let server = Server::start_with(Opts {
        trace_idle_period: "1s".into(),
        max_block_duration: "30m".into(),
        max_block_bytes: 16 * 1024,
        flush_check_period: "200ms".into(),
        ..Opts::default()
    })
    .await;
    let res = resource("bytes");
    let base = base_time();
    // Control: a small idle trace alone does not cut a block (no size or
    // duration limit reached) -- otherwise this test would prove nothing.
    let small =
        vec![SpanSpec::simple(rand_trace_id(), rand_span_id(), None, "small", base).build()];
    export(&server, Transport::Grpc, &res, small).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        server.block_metas().is_empty(),
        "a block was cut without reaching max_block_bytes or max_block_duration"
    );
    let mut spans = Vec::new();
    for i in 0..200u64 {
        let mut s = SpanSpec::simple(rand_trace_id(), rand_span_id(), None, "bulk", at(base, i));
        s.attrs.push(KeyValue::new("payload", "p".repeat(512)));
        spans.push(s.build());
    }
    let ds = Dataset::new(vec![(res.clone(), spans.clone())]);
    export(&server, Transport::HttpProto, &res, spans).await;
    server.wait_blocks_flushed(1, FLUSH_TIMEOUT).await;
    for (id, want) in ds.traces.iter().take(20) {
        let got = spans_from_proto(&server.trace_v1_proto(id).await.unwrap().resource_spans);
        assert_same_spans("after a size-triggered cut", want, &got);
    }
}
