//! Micro-benchmarks (issue #6): OTLP protobuf and JSON decode, regrouping by trace, WAL
//! append with group commit, block encode, bloom lookups, trace-by-ID in one block,
//! TraceQL parse, and TraceQL evaluation over one block's columns for the query shapes
//! Tempo's figures cover (attribute equality, regex, duration range, structural, pipeline).
//!
//!   cargo bench --bench block                       # full criterion runs
//!   cargo bench --bench block -- --quick --measurement-time 1   # CI smoke (.ci/bench-smoke)

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use vivace::block::synth::{realistic_traces, Rng};
use vivace::block::{
    bloom_shard_for, build_blooms, decode_footer, encode_block, encode_block_sorted, find_trace,
    find_trace_in_pages, footer_fetch_range, plan_lookup, row_group_byte_range, BlockConfig,
    BloomShard, LookupPlan, RowGroupIndex,
};
use vivace::model::{span_count, TenantId, TraceId};

fn encode(c: &mut Criterion) {
    let traces = realistic_traces(2_000, 1);
    let spans: usize = traces.iter().map(|t| span_count(&t.batches)).sum();
    let tenant = TenantId::new("bench").expect("tenant");
    let cfg = BlockConfig::default();
    let mut g = c.benchmark_group("block");
    g.sample_size(10);
    g.throughput(Throughput::Elements(spans as u64));
    g.bench_function("encode", |b| {
        b.iter_batched(
            || traces.clone(),
            |t| encode_block(&tenant, uuid::Uuid::nil(), 0, t, &cfg).expect("encode"),
            BatchSize::LargeInput,
        )
    });
    // Cut codecs (fast; blocks are compacted later at the default level).
    use vivace::block::BlockCompression;
    for (name, compression) in [
        ("zstd1", BlockCompression::Zstd(1)),
        ("zstd3", BlockCompression::Zstd(3)),
        ("snappy", BlockCompression::Snappy),
    ] {
        let cfg = BlockConfig {
            compression,
            ..BlockConfig::default()
        };
        let size = encode_block(&tenant, uuid::Uuid::nil(), 0, traces.clone(), &cfg)
            .expect("encode")
            .data
            .len();
        eprintln!("{name}: {:.1} bytes/span", size as f64 / spans as f64);
        g.bench_function(format!("encode_{name}"), |b| {
            b.iter_batched(
                || traces.clone(),
                |t| encode_block(&tenant, uuid::Uuid::nil(), 0, t, &cfg).expect("encode"),
                BatchSize::LargeInput,
            )
        });
    }
    let size = encode_block(&tenant, uuid::Uuid::nil(), 0, traces.clone(), &cfg)
        .expect("encode")
        .data
        .len();
    eprintln!(
        "default zstd(6): {:.1} bytes/span",
        size as f64 / spans as f64
    );
    let mut sorted = traces.clone();
    sorted.sort_by_key(|t| t.id);
    sorted.dedup_by_key(|t| t.id);
    g.bench_function("encode_sorted_stream", |b| {
        b.iter_batched(
            || sorted.clone(),
            |t| {
                encode_block_sorted(&tenant, uuid::Uuid::nil(), 0, t.into_iter().map(Ok), &cfg)
                    .expect("encode")
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn bloom(c: &mut Criterion) {
    let mut rng = Rng::new(2);
    let ids: Vec<TraceId> = (0..100_000).map(|_| rng.trace_id()).collect();
    let blooms = build_blooms(&ids, 0.01, 100 << 10).expect("blooms");
    let n = blooms.len() as u32;
    let shards: Vec<BloomShard> = blooms
        .iter()
        .map(|b| BloomShard::from_bytes(b).expect("shard"))
        .collect();
    let probes: Vec<TraceId> = (0..1024).map(|_| rng.trace_id()).collect();
    let mut g = c.benchmark_group("bloom");
    g.throughput(Throughput::Elements(probes.len() as u64));
    g.bench_function("lookup", |b| {
        b.iter(|| {
            probes
                .iter()
                .filter(|id| shards[bloom_shard_for(id, n) as usize].may_contain(id))
                .count()
        })
    });
    g.finish();
    let mut g = c.benchmark_group("bloom");
    g.bench_function("deserialize_shard_100k", |b| {
        b.iter(|| BloomShard::from_bytes(black_box(&blooms[0])).expect("shard"))
    });
    g.finish();
}

fn find(c: &mut Criterion) {
    let traces = realistic_traces(5_000, 3);
    let ids: Vec<TraceId> = traces.iter().map(|t| t.id).collect();
    let tenant = TenantId::new("bench").expect("tenant");
    let cfg = BlockConfig {
        row_group_size_bytes: 4 << 20,
        ..BlockConfig::default()
    };
    let block = encode_block(&tenant, uuid::Uuid::nil(), 0, traces, &cfg).expect("encode");
    let data = block.data.clone();
    // Footer only: no page index, the whole-row-group path of older blocks.
    let tail = data.slice(data.len() - block.meta.footer_size as usize..);
    let md = decode_footer(tail, data.len() as u64).expect("footer");
    // Footer and page indexes in one read: the page path.
    let r = footer_fetch_range(&block.meta);
    let md_pages =
        decode_footer(data.slice(r.start as usize..), data.len() as u64).expect("footer");
    let index = RowGroupIndex::from_bytes(&block.index).expect("index");
    let mut i = 0usize;
    let mut g = c.benchmark_group("block");
    g.bench_function("find_trace_row_group", |b| {
        b.iter(|| {
            i = (i + 7919) % ids.len();
            let id = &ids[i];
            let rg = index.row_groups_for(id)[0];
            let r = row_group_byte_range(&md, rg).expect("range");
            let bytes: Bytes = data.slice(r.start as usize..r.end as usize);
            find_trace(md.clone(), rg, bytes, r.start, id)
                .expect("find")
                .expect("present")
        })
    });
    g.bench_function("find_trace_pages", |b| {
        b.iter(|| {
            i = (i + 7919) % ids.len();
            let id = &ids[i];
            let rg = index.row_groups_for(id)[0];
            let LookupPlan::Pages(plan) = plan_lookup(&md_pages, rg, id).expect("plan") else {
                panic!("no page index");
            };
            let fetched: Vec<Bytes> = plan
                .ranges
                .iter()
                .map(|r| data.slice(r.start as usize..r.end as usize))
                .collect();
            find_trace_in_pages(md_pages.clone(), &plan, fetched, data.len() as u64, id)
                .expect("find")
                .expect("present")
        })
    });
    g.finish();
}

fn otlp(c: &mut Criterion) {
    use prost::Message;
    use vivace::model::ExportTraceServiceRequest;
    let traces = realistic_traces(200, 4);
    let spans: usize = traces.iter().map(|t| span_count(&t.batches)).sum();
    let req = ExportTraceServiceRequest {
        resource_spans: traces.into_iter().flat_map(|t| t.batches).collect(),
    };
    let proto = Bytes::from(req.encode_to_vec());
    let json = serde_json::to_vec(&req).expect("json");
    let mut g = c.benchmark_group("otlp");
    g.throughput(Throughput::Elements(spans as u64));
    g.bench_function("decode_protobuf", |b| {
        b.iter(|| ExportTraceServiceRequest::decode(black_box(proto.clone())).expect("decode"))
    });
    g.bench_function("decode_json", |b| {
        b.iter(|| {
            serde_json::from_slice::<ExportTraceServiceRequest>(black_box(&json)).expect("decode")
        })
    });
    g.bench_function("group_by_trace", |b| {
        b.iter(|| vivace::model::group_by_trace(black_box(&req.resource_spans)))
    });
    // What the receivers do now, against decode_protobuf + group_by_trace above.
    g.bench_function("group_encoded", |b| {
        b.iter(|| vivace::model::group_encoded(black_box(&proto)).expect("valid"))
    });
    // What the receivers do first with a gzip export (flate2's backend, as compiled in).
    let gz = {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&proto).expect("gzip");
        enc.finish().expect("gzip")
    };
    g.bench_function("gunzip", |b| {
        b.iter(|| {
            use std::io::Read;
            let mut out = Vec::with_capacity(proto.len());
            flate2::read::MultiGzDecoder::new(black_box(&gz[..]))
                .read_to_end(&mut out)
                .expect("gunzip");
            out
        })
    });
    g.finish();
}

fn wal(c: &mut Criterion) {
    use std::sync::Arc;
    use vivace::ingester::wal::Wal;
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (wal, _) =
        Wal::open(dir.path(), Arc::new(vivace::metrics::Metrics::default())).expect("wal");
    let wal = Arc::new(wal);
    // 16 concurrent 64 KiB appends (about 500 spans each): one group commit, one fsync.
    let payload = Bytes::from(vec![7u8; 64 << 10]);
    let mut g = c.benchmark_group("wal");
    g.throughput(Throughput::Bytes(16 * payload.len() as u64));
    g.bench_function("append_16x64k_group_commit", |b| {
        b.iter(|| {
            rt.block_on(async {
                let appends = (0..16).map(|_| {
                    let (wal, p) = (wal.clone(), payload.clone());
                    tokio::spawn(async move { wal.append(p).await })
                });
                for a in futures::future::join_all(appends).await {
                    a.expect("task").expect("append");
                }
            })
        })
    });
    g.finish();
}

const QUERIES: [(&str, &str); 6] = [
    ("equality", "{ resource.service.name = \"checkout\" }"),
    ("regex", "{ span.http.route =~ \"/api/.*\" }"),
    ("duration_range", "{ duration > 50ms && duration < 200ms }"),
    ("status", "{ status = error }"),
    (
        "structural",
        "{ resource.service.name = \"frontend\" } >> { status = error }",
    ),
    ("pipeline", "{ } | by(resource.service.name) | count() > 3"),
];

fn traceql(c: &mut Criterion) {
    use vivace::block::{decode_row_group, ColumnarBlock, ColumnarTrace, Phase, SearchColumns};
    use vivace::traceql::engine::evaluate_view;
    let mut g = c.benchmark_group("traceql");
    for (name, q) in QUERIES {
        g.bench_function(format!("parse_{name}"), |b| {
            b.iter(|| vivace::traceql::parse(black_box(q)).expect("parse"))
        });
    }
    // One block of 2,000 realistic traces: what one row-group search reads, filtered as
    // the querier's filter phase does (no hit columns, no result building).
    let traces = realistic_traces(2_000, 5);
    let spans: usize = traces.iter().map(|t| span_count(&t.batches)).sum();
    let tenant = TenantId::new("bench").expect("tenant");
    let block = encode_block(
        &tenant,
        uuid::Uuid::nil(),
        0,
        traces,
        &BlockConfig::default(),
    )
    .expect("encode");
    let data = block.data.clone();
    let md = decode_footer(data.clone(), data.len() as u64).expect("footer");
    g.throughput(Throughput::Elements(spans as u64));
    for (name, q) in QUERIES {
        let query = vivace::traceql::parse(q).expect("parse");
        let columns = SearchColumns::for_query(&query).expect("columns");
        g.bench_function(format!("evaluate_{name}"), |b| {
            b.iter(|| {
                let mut hits = 0usize;
                for read in columns.plan(&md, |_, _| true).expect("plan") {
                    let fetched = read
                        .ranges
                        .iter()
                        .map(|r| data.slice(r.start as usize..r.end as usize))
                        .collect();
                    let root = decode_row_group(
                        md.clone(),
                        &columns,
                        &read,
                        Phase::Filter,
                        fetched,
                        data.len() as u64,
                    )
                    .expect("decode");
                    let cols = ColumnarBlock::new(&root).expect("columns");
                    let mut trace = ColumnarTrace::new(&cols);
                    for row in 0..cols.len() {
                        if !trace.may_match(&columns, row) || !trace.spans_may_match(&columns, row)
                        {
                            continue;
                        }
                        trace.load(row).expect("load");
                        hits +=
                            usize::from(!evaluate_view(&query, &trace).expect("eval").is_empty());
                    }
                }
                hits
            })
        });
    }
    g.finish();
}

criterion_group!(benches, otlp, wal, encode, bloom, find, traceql);
criterion_main!(benches);
