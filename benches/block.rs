//! Block format benches: encode throughput, bloom lookups, and trace-by-ID in one block.

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
            let rg = index.row_group_for(id).expect("rg");
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
            let rg = index.row_group_for(id).expect("rg");
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

criterion_group!(benches, encode, bloom, find);
criterion_main!(benches);
