//! vivace's load generator: deterministic, realistic OTLP traffic over gRPC (gzip) from many
//! connections, then trace-by-ID lookups of what it sent.
//!
//! ```text
//! cargo bench --bench loadgen -- ingest --endpoint http://127.0.0.1:4317 --spans 1000000 \
//!     --connections 16 --batch-spans 500 --manifest /tmp/ids.txt
//! cargo bench --bench loadgen -- lookup --api http://127.0.0.1:3200 --manifest /tmp/ids.txt \
//!     --requests 500 --concurrency 8
//! ```
//! `--replay FILE` sends requests recorded from the OpenTelemetry SDK
//! (`benches/otel_sdk_traffic.py`) instead. `--seconds S` keeps sending for S seconds: the
//! requests are sent again and again, each pass with fresh trace IDs and current times. Each prints one JSON line of results. Traces come from `vivace::block::synth` (a dozen
//! services, 5–60 spans per trace, semantic-convention attributes, ~2% errors, events and
//! links), shifted so they start now.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use tonic::codec::CompressionEncoding;
use vivace::block::synth;

fn args() -> (String, HashMap<String, String>) {
    // `cargo bench` appends `--bench`; ignore it.
    let raw: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let mode = raw.first().cloned().unwrap_or_default();
    let mut kv = HashMap::new();
    let mut it = raw.into_iter().skip(1);
    while let Some(k) = it.next() {
        if let Some(k) = k.strip_prefix("--") {
            kv.insert(k.to_owned(), it.next().unwrap_or_default());
        }
    }
    (mode, kv)
}

fn get<T: std::str::FromStr>(kv: &HashMap<String, String>, k: &str, d: T) -> T {
    kv.get(k).and_then(|v| v.parse().ok()).unwrap_or(d)
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Builds requests of about `batch_spans` spans each, every trace in exactly one request.
fn build_requests(
    spans: usize,
    batch_spans: usize,
    seed: u64,
) -> (Vec<ExportTraceServiceRequest>, Vec<String>, usize) {
    let mut requests = Vec::new();
    let mut ids = Vec::new();
    let mut cur = ExportTraceServiceRequest::default();
    let mut cur_spans = 0;
    let mut total = 0;
    let shift = now_ns().saturating_sub(1_700_000_000_000_000_000);
    let mut chunk_seed = seed;
    while total < spans {
        for t in synth::realistic_traces(1000, chunk_seed) {
            if total >= spans {
                break;
            }
            ids.push(t.id.to_hex());
            for mut rs in t.batches {
                for ss in &mut rs.scope_spans {
                    for s in &mut ss.spans {
                        s.start_time_unix_nano += shift;
                        s.end_time_unix_nano += shift;
                        for e in &mut s.events {
                            e.time_unix_nano += shift;
                        }
                        cur_spans += 1;
                        total += 1;
                    }
                }
                cur.resource_spans.push(rs);
            }
            if cur_spans >= batch_spans {
                requests.push(std::mem::take(&mut cur));
                cur_spans = 0;
            }
        }
        chunk_seed += 1;
    }
    if cur_spans > 0 {
        requests.push(cur);
    }
    (requests, ids, total)
}

/// Gives `req` fresh trace IDs for `pass` (XORed into the four ID bytes at `at`) and moves
/// its times by `shift` ns.
fn retag(req: &mut ExportTraceServiceRequest, at: usize, pass: u32, shift: u64) {
    for s in req
        .resource_spans
        .iter_mut()
        .flat_map(|r| &mut r.scope_spans)
        .flat_map(|s| &mut s.spans)
    {
        if let Some(b) = s.trace_id.get_mut(at..at + 4) {
            for (b, p) in b.iter_mut().zip(pass.to_be_bytes()) {
                *b ^= p;
            }
        }
        s.start_time_unix_nano += shift;
        s.end_time_unix_nano += shift;
        for e in &mut s.events {
            e.time_unix_nano += shift;
        }
    }
}

/// `req` for the `pass`-th time over the request set: the pass in ID bytes 4..8, so
/// replay's own passes (bytes 0..4) stay distinct, and times moved by `shift`.
fn again(req: &ExportTraceServiceRequest, pass: u32, shift: u64) -> ExportTraceServiceRequest {
    let mut r = req.clone();
    retag(&mut r, 4, pass, shift);
    r
}

/// Requests recorded elsewhere (`benches/otel_sdk_traffic.py`: 4-byte big-endian length,
/// then an `ExportTraceServiceRequest`), replayed until `spans` are sent. Each pass over the
/// file gets fresh trace IDs (the pass number in the first four bytes), and times are moved
/// so the newest span starts now.
fn replay_requests(
    path: &str,
    spans: usize,
) -> (Vec<ExportTraceServiceRequest>, Vec<String>, usize) {
    let data = std::fs::read(path).expect("read replay file");
    let mut recorded = Vec::new();
    let mut rest = &data[..];
    while rest.len() >= 4 {
        let len = u32::from_be_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        recorded
            .push(ExportTraceServiceRequest::decode(&rest[4..4 + len]).expect("recorded request"));
        rest = &rest[4 + len..];
    }
    let newest = recorded
        .iter()
        .flat_map(|r| &r.resource_spans)
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .map(|s| s.start_time_unix_nano)
        .max()
        .expect("recorded spans");
    let shift = now_ns().saturating_sub(newest);
    let (mut requests, mut ids, mut total) = (Vec::new(), Vec::new(), 0);
    let mut seen = std::collections::HashSet::new();
    'passes: for pass in 0u32.. {
        for r in &recorded {
            if total >= spans {
                break 'passes;
            }
            let mut r = r.clone();
            retag(&mut r, 0, pass, shift);
            for s in r
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .flat_map(|s| &s.spans)
            {
                if seen.insert(s.trace_id.clone()) {
                    ids.push(hex::encode(&s.trace_id));
                }
                total += 1;
            }
            requests.push(r);
        }
    }
    (requests, ids, total)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn ingest(kv: HashMap<String, String>) {
    let endpoint = kv
        .get("endpoint")
        .cloned()
        .unwrap_or("http://127.0.0.1:4317".into());
    let spans: usize = get(&kv, "spans", 200_000);
    let batch_spans: usize = get(&kv, "batch-spans", 500);
    let connections: usize = get(&kv, "connections", 16);
    let seed: u64 = get(&kv, "seed", 1);
    // Sustained mode: send for this long, going over the requests again as needed.
    let window = kv
        .get("seconds")
        .and_then(|v| v.parse::<f64>().ok())
        .map(Duration::from_secs_f64);
    let gen_started = Instant::now();
    let (requests, ids, total_spans) = match kv.get("replay") {
        Some(path) => replay_requests(path, spans),
        None => build_requests(spans, batch_spans, seed),
    };
    let wire_bytes: usize = requests.iter().map(|r| r.encoded_len()).sum();
    eprintln!(
        "generated {} requests, {} traces, {} spans, {:.0} B/span protobuf in {:?}",
        requests.len(),
        ids.len(),
        total_spans,
        wire_bytes as f64 / total_spans as f64,
        gen_started.elapsed()
    );
    if let Some(path) = kv.get("manifest") {
        std::fs::write(path, ids.join("\n")).expect("write manifest");
    }
    let requests = Arc::new(requests);
    let next = Arc::new(AtomicUsize::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    let rejected = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (requests, next, acked, rejected, failed, endpoint) = (
            requests.clone(),
            next.clone(),
            acked.clone(),
            rejected.clone(),
            failed.clone(),
            endpoint.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut client = TraceServiceClient::connect(endpoint)
                .await
                .expect("connect")
                .send_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Gzip)
                .max_decoding_message_size(64 << 20);
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let (idx, pass) = match window {
                    Some(w) if started.elapsed() >= w => break,
                    Some(_) => (i % requests.len(), i / requests.len()),
                    None => (i, 0),
                };
                let Some(req) = requests.get(idx) else { break };
                let fresh;
                let req = if pass == 0 {
                    req
                } else {
                    let shift = started.elapsed().as_nanos() as u64;
                    fresh = again(req, pass as u32, shift);
                    &fresh
                };
                let n: u64 = req
                    .resource_spans
                    .iter()
                    .flat_map(|r| &r.scope_spans)
                    .map(|s| s.spans.len() as u64)
                    .sum();
                let t = Instant::now();
                // Retry refusals as an exporter would, so every span is eventually acked.
                let mut attempts = 0;
                loop {
                    match client.export(req.clone()).await {
                        Ok(resp) => {
                            let r = resp
                                .into_inner()
                                .partial_success
                                .map_or(0, |p| p.rejected_spans as u64);
                            rejected.fetch_add(r, Ordering::Relaxed);
                            acked.fetch_add(n - r, Ordering::Relaxed);
                            break;
                        }
                        Err(e) if attempts < 20 => {
                            attempts += 1;
                            failed.fetch_add(1, Ordering::Relaxed);
                            if attempts == 1 {
                                eprintln!("export refused ({}), retrying", e.message());
                            }
                            tokio::time::sleep(Duration::from_millis(100 * attempts)).await;
                        }
                        Err(e) => panic!("export failed for good: {e}"),
                    }
                }
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.expect("sender task"));
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    let acked = acked.load(Ordering::Relaxed);
    println!(
        "{{\"mode\":\"ingest\",\"spans_acked\":{acked},\"spans_rejected\":{},\"refusals_retried\":{},\"traces\":{},\"seconds\":{secs:.3},\"spans_per_sec\":{:.0},\"wire_bytes_per_span\":{:.1},\"export_ms_p50\":{:.2},\"export_ms_p99\":{:.2}}}",
        rejected.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        ids.len(),
        acked as f64 / secs,
        wire_bytes as f64 / total_spans as f64,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
    );
}

async fn lookup(kv: HashMap<String, String>) {
    let api = kv
        .get("api")
        .cloned()
        .unwrap_or("http://127.0.0.1:3200".into());
    let manifest = kv.get("manifest").expect("--manifest");
    let requests: usize = get(&kv, "requests", 500);
    let concurrency: usize = get(&kv, "concurrency", 1);
    let ids: Vec<String> = std::fs::read_to_string(manifest)
        .expect("read manifest")
        .lines()
        .map(str::to_owned)
        .collect();
    let ids = Arc::new(ids);
    let client = reqwest::Client::new();
    let next = Arc::new(AtomicUsize::new(0));
    let missing = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (ids, client, next, missing, api) = (
            ids.clone(),
            client.clone(),
            next.clone(),
            missing.clone(),
            api.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests {
                    break;
                }
                // A deterministic spread over the whole manifest.
                let id = &ids[(i * 7919) % ids.len()];
                let t = Instant::now();
                let resp = client
                    .get(format!("{api}/api/v2/traces/{id}"))
                    .header("Accept", "application/protobuf")
                    .send()
                    .await
                    .expect("request");
                let body = resp.bytes().await.expect("body");
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
                if body.len() < 32 {
                    missing.fetch_add(1, Ordering::Relaxed);
                }
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.expect("lookup task"));
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    println!(
        "{{\"mode\":\"lookup\",\"requests\":{},\"concurrency\":{concurrency},\"missing\":{},\"per_sec\":{:.0},\"ms_p50\":{:.2},\"ms_p90\":{:.2},\"ms_p99\":{:.2}}}",
        lat.len(),
        missing.load(Ordering::Relaxed),
        lat.len() as f64 / secs,
        percentile(&lat, 0.5),
        percentile(&lat, 0.9),
        percentile(&lat, 0.99),
    );
}

/// Queries of the kinds Tempo's figures cover: a duration range, an error status, an
/// attribute equality, a regex, a structural descent and a pipeline.
const SEARCH_QUERIES: [&str; 6] = [
    "{ duration > 500ms }",
    "{ status = error }",
    "{ resource.service.name = \"checkout\" }",
    "{ span.http.route =~ \"/api/.*\" }",
    "{ resource.service.name = \"frontend\" } >> { status = error }",
    "{ } | count() > 40",
];

async fn search(kv: HashMap<String, String>) {
    let api = kv
        .get("api")
        .cloned()
        .unwrap_or("http://127.0.0.1:3200".into());
    let repeat: usize = get(&kv, "repeat", 5);
    let limit: usize = get(&kv, "limit", 100_000);
    // With the server's pid, the server CPU seconds each query cost (median of the runs).
    let pid: u32 = get(&kv, "pid", 0);
    // Spans in the searched set, for spans per CPU-second as Tempo's figure counts them.
    let set_spans: u64 = get(&kv, "spans", 0);
    // `--start`/`--end` (unix seconds) bound the search as Grafana does; Tempo answers a
    // search without them from its recent data only.
    let range: Vec<(&str, String)> = ["start", "end"]
        .into_iter()
        .filter_map(|k| kv.get(k).map(|v| (k, v.clone())))
        .collect();
    let client = reqwest::Client::new();
    for q in SEARCH_QUERIES {
        let mut lat = Vec::new();
        let mut cpu = Vec::new();
        let mut found = 0;
        let mut inspected = 0u64;
        let mut refused = None;
        for _ in 0..repeat {
            let c0 = server_cpu_s(pid);
            let t = Instant::now();
            let reply = client
                .get(format!("{api}/api/search"))
                .query(&[("q", q), ("limit", &limit.to_string()), ("spss", "3")])
                .query(&range)
                .send()
                .await
                .expect("search request");
            let status = reply.status();
            let body = reply.bytes().await.expect("search body");
            // A server may refuse a search (Tempo answers a large unlimited one with an
            // error): say so and go on to the next query, so later figures are still taken.
            let parsed = status
                .is_success()
                .then(|| serde_json::from_slice::<serde_json::Value>(&body).ok())
                .flatten();
            let Some(resp) = parsed else {
                let text = String::from_utf8_lossy(&body[..body.len().min(160)]).into_owned();
                refused = Some(format!("{status}: {text}"));
                break;
            };
            lat.push(t.elapsed().as_secs_f64() * 1000.0);
            cpu.push(server_cpu_s(pid) - c0);
            found = resp["traces"].as_array().map_or(0, |a| a.len());
            inspected = resp["metrics"]["inspectedSpans"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
        }
        if let Some(error) = refused {
            println!(
                "{{\"mode\":\"search\",\"query\":{},\"error\":{}}}",
                serde_json::Value::from(q),
                serde_json::Value::from(error.trim()),
            );
            continue;
        }
        lat.sort_by(f64::total_cmp);
        cpu.sort_by(f64::total_cmp);
        let cpu_p50 = percentile(&cpu, 0.5);
        // /proc counts in 10 ms ticks: a query under one tick has no meaningful rate.
        let rate = if pid > 0 && set_spans > 0 && cpu_p50 > 0.0 {
            format!("{:.0}", set_spans as f64 / cpu_p50)
        } else {
            "null".into()
        };
        println!(
            "{{\"mode\":\"search\",\"query\":{},\"traces\":{found},\"inspected_spans\":{inspected},\"ms_p50\":{:.1},\"ms_max\":{:.1},\"server_cpu_ms_p50\":{:.0},\"set_spans_per_cpu_s\":{rate}}}",
            serde_json::Value::from(q),
            percentile(&lat, 0.5),
            lat.last().copied().unwrap_or(0.0),
            cpu_p50 * 1e3,
        );
    }
}

/// User + system CPU seconds of process `pid` (0: none, answers 0).
fn server_cpu_s(pid: u32) -> f64 {
    if pid == 0 {
        return 0.0;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, r)| r)
        .split_whitespace()
        .collect();
    // utime and stime (fields 14 and 15) in USER_HZ (100) ticks.
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn main() {
    let (mode, kv) = args();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    match mode.as_str() {
        "ingest" => rt.block_on(ingest(kv)),
        "lookup" => rt.block_on(lookup(kv)),
        "search" => rt.block_on(search(kv)),
        // `cargo bench` with no arguments runs every bench: do nothing rather than load a server.
        _ => {
            eprintln!("usage: loadgen ingest|lookup|search [--flag value]... (see the file header)")
        }
    }
}
