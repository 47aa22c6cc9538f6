//! TraceQL search and metrics throughput over blocks, in spans per CPU-second: the figure
//! issue #6 compares with Tempo (search) and issue #11 asks for (metrics). Builds `--spans` spans of realistic traces (`block::synth`) into
//! `--blocks` blocks in an in-memory bucket and runs the BENCHMARKS.md queries through
//! `Querier::search` (the columnar path `/api/search` uses, without the JSON writer),
//! measuring the process's CPU time (user + system, every thread) around each query.
//!
//!   cargo bench --bench search                        # 1M spans, 5 runs per query
//!   cargo bench --bench search -- --spans 100000 --runs 1
//!   cargo bench --bench search -- --quick             # CI smoke: small and once
//!   cargo bench --bench search -- --query http.route  # the queries containing a string
//!
//! Spans per CPU-second counts every span of the set, as Tempo's figure (set size over
//! wall time × 2 cores) does: spans skipped by pruning count as searched.

use std::sync::Arc;
use std::time::Instant;

use vivace::backend::Backend;
use vivace::block::{self, synth::realistic_traces, BlockConfig};
use vivace::blocklist::BlockList;
use vivace::metrics::Metrics;
use vivace::model::{span_count, TenantId};
use vivace::querier::metrics::plan;
use vivace::querier::search::SearchRequest;
use vivace::querier::Querier;
use vivace::traceql::metrics::{default_step, Buckets};

/// The server's allocator: decoding grows buffers page by page, and how realloc answers
/// that decides what the copies cost, so figures taken on another allocator misplace them.
#[global_allocator]
static GLOBAL: vivace::alloc::Allocator = vivace::alloc::Allocator;

const QUERIES: [(&str, f64); 6] = [
    // (query, Tempo 3.0.3 spans per CPU-second on the same set, 0 when not published)
    ("{ duration > 500ms }", 1e6 / (0.134 * 2.0)),
    ("{ status = error }", 1e6 / (1.1 * 2.0)),
    ("{ resource.service.name = \"checkout\" }", 0.0),
    ("{ span.http.route =~ \"/api/.*\" }", 0.0),
    (
        "{ resource.service.name = \"frontend\" } >> { status = error }",
        1e6 / (1.1 * 2.0),
    ),
    ("{ } | count() > 40", 0.0),
];

/// The metrics queries Traces Drilldown sends first: rate by service, errors, a quantile,
/// a heatmap and a comparison.
const METRICS_QUERIES: [&str; 5] = [
    "{ } | rate() by (resource.service.name)",
    "{ status = error } | rate() by (resource.service.name)",
    "{ } | quantile_over_time(duration, 0.5, 0.9, 0.99) by (resource.service.name)",
    "{ } | histogram_over_time(duration)",
    "{ resource.service.name = \"checkout\" } | compare({ status = error })",
];

/// CPU seconds (user + system) of this process so far, every thread.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 are at 11 and 12 counting from field 3 (state) at 0. USER_HZ is 100
    // on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes --bench; without it (`cargo test --all-targets`) this is a smoke
    // run, small and once, like criterion's test mode.
    let quick = args.iter().any(|a| a == "--quick") || !args.iter().any(|a| a == "--bench");
    let spans_wanted: usize = arg(&args, "--spans", if quick { 20_000 } else { 1_000_000 });
    let runs: usize = arg(&args, "--runs", if quick { 1 } else { 5 });
    let blocks: usize = arg(&args, "--blocks", 3).max(1);
    // Each measurement repeats a query until it has used this much CPU, so the clock's
    // 10 ms ticks stay small against it.
    let min_cpu: f64 = arg(&args, "--min-cpu", if quick { 0.0 } else { 0.5 });
    let rt = tokio::runtime::Runtime::new().expect("runtime");

    // ~32 spans per realistic trace.
    let traces = realistic_traces(spans_wanted.div_ceil(32), 7);
    let spans: usize = traces.iter().map(|t| span_count(&t.batches)).sum();
    let tenant = TenantId::new("bench").expect("tenant");
    let backend = Backend::memory();
    let list = Arc::new(BlockList::default());
    let per = traces.len().div_ceil(blocks);
    let mut bytes = 0usize;
    let mut row_groups = 0usize;
    let mut chunks: Vec<Vec<_>> = Vec::new();
    let mut it = traces.into_iter().peekable();
    while it.peek().is_some() {
        chunks.push(it.by_ref().take(per).collect());
    }
    for (k, chunk) in chunks.into_iter().enumerate() {
        let id = uuid::Uuid::from_u128(k as u128 + 1);
        let b =
            block::encode_block(&tenant, id, 0, chunk, &BlockConfig::default()).expect("encode");
        bytes += b.data.len();
        let md = block::decode_footer(b.data.clone(), b.data.len() as u64).expect("footer");
        row_groups += md.num_row_groups();
        rt.block_on(backend.put(&block::data_key(&tenant, id), b.data.clone()))
            .expect("put");
        list.add(tenant.clone(), b.meta.clone());
    }
    eprintln!("{spans} spans in {blocks} blocks, {row_groups} row groups, {bytes} bytes");
    let querier = Querier::new(backend, None, list, Arc::new(Metrics::default()), 16);

    let mut total_cpu = 0.0;
    let mut total_spans = 0.0;
    let only: String = arg(&args, "--query", String::new());
    for (q, tempo) in QUERIES
        .into_iter()
        .filter(|(q, _)| q.contains(only.as_str()))
    {
        let query = Arc::new(vivace::traceql::parse(q).expect("query"));
        let req = SearchRequest {
            query,
            limit: 100_000,
            spss: 3,
            range: None,
            min_duration_nanos: None,
            max_duration_nanos: None,
        };
        let mut cpus = Vec::new();
        let mut walls = Vec::new();
        let mut iters = Vec::new();
        let mut found = 0;
        // One warm-up run fills the footer cache, as a running server has it.
        rt.block_on(querier.search(&tenant, &req)).expect("search");
        for _ in 0..runs {
            let (c0, t0) = (cpu_seconds(), Instant::now());
            let mut n = 0;
            loop {
                let r = rt.block_on(querier.search(&tenant, &req)).expect("search");
                found = r.traces.len();
                n += 1;
                if cpu_seconds() - c0 >= min_cpu {
                    break;
                }
            }
            cpus.push((cpu_seconds() - c0) / f64::from(n));
            iters.push(f64::from(n));
            walls.push(t0.elapsed().as_secs_f64() / f64::from(n));
        }
        let measured: f64 = cpus.iter().zip(&iters).map(|(c, n)| c * n).sum();
        let cpu = median(cpus);
        let wall = median(walls);
        total_cpu += cpu;
        total_spans += spans as f64;
        // Under five clock ticks in total the rate means nothing.
        let (rate, vs) = if measured < 0.05 {
            ("null".to_string(), String::new())
        } else {
            let rate = spans as f64 / cpu;
            let vs = if tempo > 0.0 {
                format!(",\"vs_tempo\":{:.1}", rate / tempo)
            } else {
                String::new()
            };
            (format!("{rate:.0}"), vs)
        };
        println!(
            "{{\"query\":{},\"traces\":{found},\"cpu_ms\":{:.2},\"wall_ms\":{:.2},\"spans_per_cpu_s\":{rate}{vs}}}",
            serde_json::Value::from(q),
            cpu * 1e3,
            wall * 1e3,
        );
    }
    println!(
        "{{\"all_queries_spans_per_cpu_s\":{:.0}}}",
        total_spans / total_cpu.max(1e-9)
    );

    // Metrics over the whole time span of the blocks, at the default step.
    let metas = querier.blocklist().blocks(&tenant);
    let start = metas.iter().map(|m| m.start_time).min().unwrap_or(0);
    let end = metas.iter().map(|m| m.end_time).max().unwrap_or(0) + 1;
    let buckets = Buckets::range(start, end, default_step(start, end));
    for q in METRICS_QUERIES
        .into_iter()
        .filter(|q| q.contains(only.as_str()))
    {
        let query = vivace::traceql::parse(q).expect("query");
        let (template, columns) = plan(&query, buckets, 0, 0).expect("metrics query");
        let once = || {
            let p = rt
                .block_on(querier.metrics(&tenant, &template, columns.clone()))
                .expect("metrics");
            rt.block_on(Querier::finish_metrics(p.evaluator, p.metrics, p.partial))
                .expect("finish")
        };
        let series = once().output.series.len();
        let mut cpus = Vec::new();
        let mut measured = 0.0;
        for _ in 0..runs {
            let c0 = cpu_seconds();
            let mut n = 0;
            loop {
                once();
                n += 1;
                if cpu_seconds() - c0 >= min_cpu {
                    break;
                }
            }
            measured += cpu_seconds() - c0;
            cpus.push((cpu_seconds() - c0) / f64::from(n));
        }
        let cpu = median(cpus);
        let rate = if measured < 0.05 {
            "null".to_string()
        } else {
            format!("{:.0}", spans as f64 / cpu)
        };
        println!(
            "{{\"metrics_query\":{},\"series\":{series},\"cpu_ms\":{:.2},\"spans_per_cpu_s\":{rate}}}",
            serde_json::Value::from(q),
            cpu * 1e3,
        );
    }
}
