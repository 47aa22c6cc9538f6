//! Compactor tests: selection, merge, commit order, crash at each step, retention.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;

use super::*;
use crate::block::{normalize_dedicated, synth, TraceInput};
use crate::config::overrides::{Limits, OverridesConfig};
use crate::config::CompactionConfig;
use crate::model::{combine, span_count, ResourceSpans, TraceId};
use crate::querier::search::SearchRequest;
use crate::querier::Querier;

fn tenant() -> TenantId {
    TenantId::new("t1").unwrap()
}

fn block_cfg() -> BlockConfig {
    BlockConfig {
        // Several row groups per block, so the merge crosses row-group boundaries.
        row_group_size_bytes: 60_000,
        ..BlockConfig::default()
    }
}

fn compaction_cfg() -> CompactionConfig {
    CompactionConfig {
        // Synthetic traces are from 2023: no retention unless a test asks for it.
        block_retention: Duration::ZERO,
        compacted_block_retention: Duration::from_secs(3600),
        ..CompactionConfig::default()
    }
}

fn compactor(backend: &Backend, cfg: CompactionConfig, limits: Limits) -> Compactor {
    let overrides = Overrides::new(&OverridesConfig {
        defaults: limits,
        ..OverridesConfig::default()
    })
    .unwrap();
    Compactor::new(
        backend.clone(),
        Arc::new(BlockList::default()),
        cfg,
        block_cfg(),
        overrides,
        Arc::new(Metrics::default()),
    )
}

fn no_trace_limit() -> Limits {
    let mut l = Limits::default();
    l.global.max_bytes_per_trace = 0;
    l
}

/// Uploads a block the way the flusher does (meta.json last).
async fn upload(backend: &Backend, traces: Vec<TraceInput>, level: u32) -> BlockMeta {
    upload_with(backend, traces, level, &block_cfg()).await
}

async fn upload_with(
    backend: &Backend,
    traces: Vec<TraceInput>,
    level: u32,
    cfg: &BlockConfig,
) -> BlockMeta {
    let t = tenant();
    let id = Uuid::new_v4();
    let b = block::encode_block(&t, id, level, traces, cfg).unwrap();
    backend.put(&block::data_key(&t, id), b.data).await.unwrap();
    backend
        .put(&block::index_key(&t, id), b.index)
        .await
        .unwrap();
    for (i, bl) in b.blooms.into_iter().enumerate() {
        backend
            .put(&block::bloom_key(&t, id, i as u32), bl)
            .await
            .unwrap();
    }
    backend
        .put(&block::meta_key(&t, id), b.meta.to_bytes().into())
        .await
        .unwrap();
    b.meta
}

/// Spans keep only those `keep(i)` says, in a copy of `batches`; empty scopes dropped.
fn filter_spans(batches: &[ResourceSpans], keep: impl Fn(usize) -> bool) -> Vec<ResourceSpans> {
    let mut i = 0;
    let mut out = batches.to_vec();
    for rs in &mut out {
        for ss in &mut rs.scope_spans {
            ss.spans.retain(|_| {
                let k = keep(i);
                i += 1;
                k
            });
        }
        rs.scope_spans.retain(|ss| !ss.spans.is_empty());
    }
    out.retain(|rs| !rs.scope_spans.is_empty());
    out
}

/// A trace as a sorted multiset of (resource, scope, span), each protobuf-encoded.
type Canon = Vec<(Vec<u8>, Vec<u8>, Vec<u8>)>;

fn canon(batches: &[ResourceSpans]) -> Canon {
    let mut batches = batches.to_vec();
    normalize_dedicated(&mut batches);
    let mut out = Vec::new();
    for rs in &batches {
        let r = rs
            .resource
            .as_ref()
            .map(|r| r.encode_to_vec())
            .unwrap_or_default();
        for ss in &rs.scope_spans {
            let s = ss
                .scope
                .as_ref()
                .map(|s| s.encode_to_vec())
                .unwrap_or_default();
            for sp in &ss.spans {
                out.push((r.clone(), s.clone(), sp.encode_to_vec()));
            }
        }
    }
    out.sort();
    out
}

/// Four blocks holding `n` traces between them: most traces split across blocks, every
/// fifth span copied into a second block, some traces whole in one block. Returns what a
/// read must give per trace.
async fn overlapping_blocks(backend: &Backend, n: usize) -> BTreeMap<TraceId, Canon> {
    let traces = synth::realistic_traces(n, 42);
    let mut per_block: Vec<Vec<TraceInput>> = vec![Vec::new(); 4];
    let mut want = BTreeMap::new();
    for (ti, t) in traces.iter().enumerate() {
        let mut fragments = Vec::new();
        if ti % 7 == 0 {
            fragments.push((ti % 4, t.batches.clone()));
        } else {
            for k in 0..4 {
                let part = filter_spans(&t.batches, |i| {
                    (i + ti) % 4 == k || (i % 5 == 0 && (i + ti + 1) % 4 == k)
                });
                if !part.is_empty() {
                    fragments.push((k, part));
                }
            }
        }
        let mut all = Vec::new();
        for (k, batches) in fragments {
            all.extend(batches.clone());
            per_block[k].push(TraceInput { id: t.id, batches });
        }
        let whole = combine(all);
        assert_eq!(span_count(&whole), span_count(&t.batches));
        want.insert(t.id, canon(&whole));
    }
    for traces in per_block {
        upload(backend, traces, 0).await;
    }
    want
}

/// Every trace as a fresh querier (restarted from the bucket) and the frontend's combine
/// return it.
async fn read_back(
    backend: &Backend,
    ids: impl Iterator<Item = TraceId>,
) -> BTreeMap<TraceId, Canon> {
    let q = Querier::new(
        backend.clone(),
        None,
        Arc::new(BlockList::default()),
        Arc::new(Metrics::default()),
        4,
    );
    q.poll_blocklist().await.unwrap();
    let mut out = BTreeMap::new();
    for id in ids {
        let found = q.find_trace(&tenant(), &id, None).await.unwrap();
        out.insert(id, canon(&combine(found.batches)));
    }
    out
}

/// Every trace of one block, read straight from its data.parquet.
async fn stored(backend: &Backend, meta: &BlockMeta) -> BTreeMap<TraceId, Canon> {
    let data = backend
        .get(&block::data_key(&tenant(), meta.block_id))
        .await
        .unwrap();
    block::read_all_traces(data)
        .unwrap()
        .into_iter()
        .map(|t| (t.id, canon(&t.batches)))
        .collect()
}

/// (live blocks, blocks marked compacted, folders with neither) in the bucket.
async fn census(backend: &Backend) -> (usize, usize, usize) {
    let keys = backend.list("t1").await.unwrap();
    let mut dirs: BTreeMap<String, (bool, bool)> = BTreeMap::new();
    for k in keys {
        let mut parts = k.split('/').skip(1);
        let (Some(dir), Some(file)) = (parts.next(), parts.next()) else {
            continue;
        };
        let e = dirs.entry(dir.to_owned()).or_default();
        e.0 |= file == block::META_FILE;
        e.1 |= file == block::COMPACTED_META_FILE;
    }
    let live = dirs.values().filter(|(m, c)| *m && !*c).count();
    let compacted = dirs.values().filter(|(_, c)| *c).count();
    let orphans = dirs.values().filter(|(m, c)| !*m && !*c).count();
    (live, compacted, orphans)
}

#[tokio::test]
async fn four_overlapping_blocks_become_one_deduplicated_block() {
    let backend = Backend::memory();
    let want = overlapping_blocks(&backend, 300).await;
    let c = compactor(&backend, compaction_cfg(), no_trace_limit());
    let r = c.cycle_tenant(&tenant()).await.unwrap();
    assert_eq!((r.compactions, r.blocks_compacted), (1, 4));
    assert_eq!(census(&backend).await, (1, 4, 0));

    // The output alone holds every trace once, whole, without duplicate spans.
    let out = c.blocklist.blocks(&tenant());
    assert_eq!(out.len(), 1);
    let meta = &out[0];
    assert_eq!(meta.compaction_level, 1);
    assert_eq!(meta.total_objects, want.len() as u64);
    let want_spans: usize = want.values().map(Vec::len).sum();
    assert_eq!(meta.total_spans, want_spans as u64);
    assert_eq!(stored(&backend, meta).await, want);
    // Several row groups of input: the output is laid out in time slices.
    let index = backend
        .get(&block::index_key(&tenant(), meta.block_id))
        .await
        .unwrap();
    let index = block::RowGroupIndex::from_bytes(&index).unwrap();
    assert!(index.is_sliced(), "{} row groups", index.len());
    assert_eq!(read_back(&backend, want.keys().copied()).await, want);
    assert_eq!(c.metrics.compactor_blocks_compacted.get(), 4);
    assert_eq!(c.metrics.compactor_spans_written.get(), want_spans as u64);
    assert_eq!(c.metrics.compactor_bytes_written.get(), meta.size);
    // The tag summary covers the merged data.
    let tags = backend
        .get(&block::tags_key(&tenant(), meta.block_id))
        .await
        .unwrap();
    let tags = block::TagSummary::from_bytes(&tags).unwrap();
    assert!(tags.scopes["resource"].contains_key("service.name"));
    // Nothing more to do.
    let again = c.cycle_tenant(&tenant()).await.unwrap();
    assert_eq!(again.compactions, 0);
}

/// The codecs of the compressed column chunks of a stored block (trace IDs and times are
/// left uncompressed by design).
async fn codecs(backend: &Backend, meta: &BlockMeta) -> HashSet<String> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let data = backend
        .get(&block::data_key(&tenant(), meta.block_id))
        .await
        .unwrap();
    let reader = SerializedFileReader::new(data).unwrap();
    let md = reader.metadata();
    md.row_groups()
        .iter()
        .flat_map(|rg| rg.columns())
        .map(|c| format!("{:?}", c.compression()))
        .filter(|c| c != "UNCOMPRESSED")
        .collect()
}

/// Blocks cut with the fast codec are rewritten at the configured level: the bytes a
/// cut saves on encoding are not kept in the bucket.
#[tokio::test]
async fn cut_blocks_are_rewritten_with_the_default_codec() {
    let backend = Backend::memory();
    let traces = synth::realistic_traces(200, 8);
    let cut_cfg = BlockConfig {
        compression: BlockConfig::CUT_COMPRESSION,
        ..block_cfg()
    };
    let mut inputs = Vec::new();
    for half in traces.chunks(100) {
        inputs.push(upload_with(&backend, half.to_vec(), 0, &cut_cfg).await);
    }
    assert_eq!(
        codecs(&backend, &inputs[0]).await,
        HashSet::from(["SNAPPY".to_string()])
    );
    let c = compactor(&backend, compaction_cfg(), no_trace_limit());
    let r = c.cycle_tenant(&tenant()).await.unwrap();
    assert_eq!((r.compactions, r.blocks_compacted), (1, 2));
    let out = c.blocklist.blocks(&tenant());
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].total_objects, 200);
    let codecs = codecs(&backend, &out[0]).await;
    assert_eq!(codecs.len(), 1, "{codecs:?}");
    assert!(codecs.iter().all(|c| c.starts_with("ZSTD")), "{codecs:?}");
}

/// A block in time slices is merged again: each slice is its own sorted run, and traces
/// whose fragments sit in the sliced block and in new blocks come out whole, once.
#[tokio::test]
async fn a_sliced_block_compacts_again_with_new_fragments() {
    let backend = Backend::memory();
    let mut want = overlapping_blocks(&backend, 300).await;
    let c = compactor(&backend, compaction_cfg(), no_trace_limit());
    assert_eq!(c.cycle_tenant(&tenant()).await.unwrap().compactions, 1);
    let first = c.blocklist.blocks(&tenant());
    assert_eq!(first.len(), 1);
    // New spans for every third trace, in two more blocks, plus new traces.
    let extra = synth::realistic_traces(120, 7);
    let mut late = vec![Vec::new(), Vec::new()];
    for (i, (id, _)) in want.clone().iter().enumerate().filter(|(i, _)| i % 3 == 0) {
        let mut batches = extra[i % extra.len()].batches.clone();
        for rs in &mut batches {
            for ss in &mut rs.scope_spans {
                for sp in &mut ss.spans {
                    sp.trace_id = id.as_bytes().to_vec();
                    sp.span_id[0] ^= 0xa5;
                }
            }
        }
        let merged = want.get_mut(id).unwrap();
        merged.extend(canon(&batches));
        merged.sort();
        late[i % 2].push(TraceInput { id: *id, batches });
    }
    for t in extra.iter().skip(100) {
        want.insert(t.id, canon(&t.batches));
        late[1].push(t.clone());
    }
    for traces in late {
        upload(&backend, traces, 0).await;
    }
    let r = c.cycle_tenant(&tenant()).await.unwrap();
    assert_eq!((r.compactions, r.blocks_compacted), (1, 3));
    let out = c.blocklist.blocks(&tenant());
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].total_objects, want.len() as u64);
    assert_eq!(stored(&backend, &out[0]).await, want);
    assert_eq!(read_back(&backend, want.keys().copied()).await, want);
}

fn all_steps() -> Vec<CompactionStep> {
    use CompactionStep::*;
    vec![
        OutputObjects,
        OutputCommitted,
        BlockListUpdated,
        InputMarked(0),
        InputMetaDeleted(0),
        InputMarked(2),
        InputMetaDeleted(2),
        InputMarked(3),
        InputMetaDeleted(3),
        InputsForgotten,
    ]
}

#[tokio::test]
async fn a_crash_at_any_step_loses_and_doubles_nothing() {
    for step in all_steps() {
        let backend = Backend::memory();
        let want = overlapping_blocks(&backend, 60).await;
        let crashed = compactor(&backend, compaction_cfg(), no_trace_limit());
        crashed.stop_after(Some(step));
        match crashed.cycle_tenant(&tenant()).await {
            Err(CompactError::Stopped(s)) => assert_eq!(s, step),
            other => panic!("{step:?}: {other:?}"),
        }
        // Meanwhile, reads see every span once.
        assert_eq!(
            read_back(&backend, want.keys().copied()).await,
            want,
            "reads after a crash at {step:?}"
        );
        // A restarted compactor finishes the work.
        let mut cfg = compaction_cfg();
        cfg.compacted_block_retention = Duration::ZERO;
        let restarted = compactor(&backend, cfg, no_trace_limit());
        restarted.cycle_tenant(&tenant()).await.unwrap();
        let (live, _, orphans) = census(&backend).await;
        assert_eq!(live, 1, "live blocks after recovering from {step:?}");
        let orphan_left = usize::from(step == CompactionStep::OutputObjects);
        assert_eq!(orphans, orphan_left, "{step:?}");
        assert_eq!(
            read_back(&backend, want.keys().copied()).await,
            want,
            "{step:?}"
        );
        // And a later cycle deletes the inputs; the data stays whole.
        restarted.cycle_tenant(&tenant()).await.unwrap();
        assert_eq!(census(&backend).await, (1, 0, orphan_left), "{step:?}");
        assert_eq!(
            read_back(&backend, want.keys().copied()).await,
            want,
            "{step:?}"
        );
        // Once old enough, an abandoned upload is deleted; nothing committed is touched.
        restarted.set_orphan_age(Duration::ZERO);
        restarted.cycle_tenant(&tenant()).await.unwrap();
        assert_eq!(census(&backend).await, (1, 0, 0), "{step:?}");
        assert_eq!(
            read_back(&backend, want.keys().copied()).await,
            want,
            "{step:?}"
        );
    }
}

#[tokio::test]
async fn young_uncommitted_folders_are_left_alone() {
    let backend = Backend::memory();
    overlapping_blocks(&backend, 10).await;
    // An upload in progress: data written, meta.json not yet.
    let id = uuid::Uuid::new_v4();
    backend
        .put(
            &block::data_key(&tenant(), id),
            bytes::Bytes::from_static(b"partial"),
        )
        .await
        .unwrap();
    let c = compactor(&backend, compaction_cfg(), no_trace_limit());
    let r = c.cycle_tenant(&tenant()).await.unwrap();
    assert_eq!(r.orphans, 1);
    assert!(backend.get(&block::data_key(&tenant(), id)).await.is_ok());
}

#[tokio::test]
async fn search_returns_each_trace_once_while_blocks_overlap() {
    let backend = Backend::memory();
    let want = overlapping_blocks(&backend, 60).await;
    let crashed = compactor(&backend, compaction_cfg(), no_trace_limit());
    crashed.stop_after(Some(CompactionStep::OutputCommitted));
    assert!(crashed.cycle_tenant(&tenant()).await.is_err());
    assert_eq!(census(&backend).await, (5, 0, 0));
    let q = Querier::new(
        backend.clone(),
        None,
        Arc::new(BlockList::default()),
        Arc::new(Metrics::default()),
        4,
    );
    q.poll_blocklist().await.unwrap();
    let req = SearchRequest {
        query: Arc::new(crate::traceql::parse("{}").unwrap()),
        limit: 10_000,
        spss: 0,
        range: None,
        min_duration_nanos: None,
        max_duration_nanos: None,
    };
    let res = q.search(&tenant(), &req).await.unwrap();
    assert_eq!(res.traces.len(), want.len());
    for hit in &res.traces {
        let mut seen = HashSet::new();
        for ss in &hit.spansets {
            for s in &ss.spans {
                assert!(
                    seen.insert(s.span_id.clone()),
                    "span listed twice in {}",
                    hit.id
                );
            }
        }
        assert_eq!(seen.len(), want[&hit.id].len(), "spans of {}", hit.id);
        let stats: u32 = hit.service_stats.values().map(|s| s.span_count).sum();
        assert_eq!(
            stats as usize,
            want[&hit.id].len(),
            "service stats of {}",
            hit.id
        );
    }
}

#[tokio::test]
async fn retention_marks_then_deletes_after_compacted_retention() {
    let backend = Backend::memory();
    let old = upload(&backend, synth::realistic_traces(20, 1), 0).await;
    let mut fresh_traces = synth::realistic_traces(20, 2);
    let now = now_nanos();
    for t in &mut fresh_traces {
        for rs in &mut t.batches {
            for ss in &mut rs.scope_spans {
                for s in &mut ss.spans {
                    let d = s.end_time_unix_nano - s.start_time_unix_nano;
                    s.start_time_unix_nano = now - 1_000_000_000;
                    s.end_time_unix_nano = s.start_time_unix_nano + d;
                }
            }
        }
    }
    let fresh = upload(&backend, fresh_traces, 0).await;
    let mut cfg = compaction_cfg();
    cfg.block_retention = Duration::from_secs(24 * 3600);
    cfg.compacted_block_retention = Duration::from_millis(300);
    let c = compactor(&backend, cfg, no_trace_limit());
    c.blocklist.add(tenant(), old.clone());
    c.blocklist.add(tenant(), fresh.clone());
    let r = c.cycle_tenant(&tenant()).await.unwrap();
    assert_eq!(r.marked_by_retention, 1);
    assert_eq!(r.compactions, 0, "one block per window");
    assert_eq!(census(&backend).await, (1, 1, 0));
    assert!(!c.blocklist.contains(&tenant(), &old.block_id));
    assert!(c.blocklist.contains(&tenant(), &fresh.block_id));
    let marker = backend
        .get(&block::compacted_meta_key(&tenant(), old.block_id))
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&marker).unwrap();
    assert!(v["compactedTime"].is_string());
    assert_eq!(BlockMeta::from_bytes(&marker).unwrap(), old);
    // Not yet deleted: queriers with an older block list may still read it.
    assert_eq!(c.cycle_tenant(&tenant()).await.unwrap().deleted, 0);
    assert!(!backend
        .list(&format!("t1/{}", old.block_id))
        .await
        .unwrap()
        .is_empty());
    tokio::time::sleep(Duration::from_millis(350)).await;
    // A restarted compactor reads compactedTime from the bucket.
    let mut cfg = compaction_cfg();
    cfg.block_retention = Duration::from_secs(24 * 3600);
    cfg.compacted_block_retention = Duration::from_millis(300);
    let c2 = compactor(&backend, cfg, no_trace_limit());
    assert_eq!(c2.cycle_tenant(&tenant()).await.unwrap().deleted, 1);
    assert_eq!(census(&backend).await, (1, 0, 0));
    assert!(backend
        .list(&format!("t1/{}", old.block_id))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(c2.metrics.compactor_blocks_deleted.get("retention"), 1);
}

#[tokio::test]
async fn per_tenant_retention_override_wins() {
    let backend = Backend::memory();
    upload(&backend, synth::realistic_traces(5, 1), 0).await;
    let mut limits = no_trace_limit();
    // The synthetic block ended in 2023: a 10-year override keeps it.
    limits.compaction.block_retention = Duration::from_secs(10 * 365 * 24 * 3600);
    let mut cfg = compaction_cfg();
    cfg.block_retention = Duration::from_secs(3600);
    let c = compactor(&backend, cfg.clone(), limits);
    assert_eq!(
        c.cycle_tenant(&tenant()).await.unwrap().marked_by_retention,
        0
    );
    let c = compactor(&backend, cfg, no_trace_limit());
    assert_eq!(
        c.cycle_tenant(&tenant()).await.unwrap().marked_by_retention,
        1
    );
}

#[tokio::test]
async fn traces_over_max_bytes_are_cut_and_counted() {
    let backend = Backend::memory();
    let want = overlapping_blocks(&backend, 40).await;
    let total_spans: usize = want.values().map(Vec::len).sum();
    let mut limits = Limits::default();
    limits.global.max_bytes_per_trace = 3_000;
    let c = compactor(&backend, compaction_cfg(), limits);
    c.cycle_tenant(&tenant()).await.unwrap();
    let discarded = c.metrics.compactor_spans_discarded.get(TRACE_TOO_LARGE);
    let written = c.metrics.compactor_spans_written.get();
    assert!(discarded > 0, "the synthetic traces include some over 3 kB");
    assert_eq!(written + discarded, total_spans as u64);
    let got = read_back(&backend, want.keys().copied()).await;
    for (id, spans) in &got {
        let size: usize = spans.iter().map(|(_, _, s)| s.len()).sum();
        assert!(size <= 3_000, "trace {id} kept {size} bytes of spans");
        // What is kept is a subset of the trace, never invented.
        let all: HashSet<_> = want[id].iter().collect();
        assert!(spans.iter().all(|s| all.contains(s)));
    }
    assert!(c
        .metrics
        .render()
        .contains("vivace_compactor_spans_discarded_total{reason=\"trace_too_large_to_compact\"}"));
}

#[test]
fn truncate_keeps_spans_in_order_up_to_the_limit() {
    let mut t = synth::realistic_traces(1, 3).remove(0).batches;
    let spans = span_count(&t) as u64;
    let size: usize = t.iter().map(Message::encoded_len).sum();
    assert_eq!(truncate_trace(&mut t.clone(), size), 0);
    let dropped = truncate_trace(&mut t, size / 2);
    assert!(dropped > 0 && dropped < spans);
    assert_eq!(span_count(&t) as u64 + dropped, spans);
    assert!(t.iter().map(Message::encoded_len).sum::<usize>() <= size / 2 + 64);
}

/// Throughput and memory of one compaction of 4 blocks of ~250k spans each (realistic
/// traces): `cargo test --release --lib compaction_throughput -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn compaction_throughput() {
    // Row-group size of inputs and output (MiB), 32 by default like the ingester's.
    let rg_mib: usize = std::env::var("VIVACE_MEASURE_RG_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    let measure_cfg = BlockConfig {
        row_group_size_bytes: rg_mib << 20,
        ..BlockConfig::default()
    };
    // VIVACE_MEASURE_LOCAL=1: a local-disk bucket, so the uploaded output does not sit in
    // this process's memory (the in-memory bucket holds it, inflating the peak).
    let dir = tempfile::tempdir().unwrap();
    let local = std::env::var("VIVACE_MEASURE_LOCAL").is_ok_and(|v| v == "1");
    let backend = if local {
        Backend::from_config(&crate::config::TraceStorageConfig {
            local: crate::config::LocalConfig {
                path: dir.path().to_owned(),
            },
            ..Default::default()
        })
        .unwrap()
    } else {
        Backend::memory()
    };
    // Traces per input block; memory should not grow with it (only time).
    let per_block: usize = std::env::var("VIVACE_MEASURE_TRACES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(9_300);
    let mut spans_in = 0;
    let mut input_bytes = 0;
    for k in 0..4u64 {
        // ~27 spans per trace on average: ~9,300 traces is ~250k spans.
        let traces = synth::realistic_traces(per_block, 100 + k);
        spans_in += traces.iter().map(|t| span_count(&t.batches)).sum::<usize>();
        let t = tenant();
        let id = Uuid::new_v4();
        let b = block::encode_block(&t, id, 0, traces, &measure_cfg).unwrap();
        input_bytes += b.meta.size;
        backend.put(&block::data_key(&t, id), b.data).await.unwrap();
        backend
            .put(&block::meta_key(&t, id), b.meta.to_bytes().into())
            .await
            .unwrap();
    }
    let mut c = compactor(&backend, compaction_cfg(), no_trace_limit());
    c.block_cfg = measure_cfg;
    // The inputs were built in this process: hand freed memory back first, so the peak
    // below is the compaction's.
    trim_heap();
    let rss_before = rss_kib();
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                peak.fetch_max(rss_kib(), std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let started = Instant::now();
    let r = c.cycle_tenant(&tenant()).await.unwrap();
    let secs = started.elapsed().as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sampler.join().unwrap();
    assert_eq!(r.compactions, 1);
    let out = c.metrics.compactor_bytes_written.get();
    let m = c.blocklist.blocks(&tenant());
    let m = m.iter().find(|m| m.compaction_level == 1).unwrap();
    // The writer keeps the footer and page indexes in memory until the end: they grow
    // with the output.
    println!(
        "output: {} row groups, footer {} KiB, page indexes {} KiB",
        m.total_records,
        m.footer_size / 1024,
        m.page_index_size / 1024
    );
    println!(
        "compaction ({rg_mib} MiB row groups, {} bucket): {spans_in} spans, {:.1} MB in -> {:.1} MB out in {secs:.2}s: {:.1} MB/s of input, {:.0} spans/s; rss before {} MiB, peak {} MiB (+{} MiB)",
        if local { "local" } else { "memory" },
        input_bytes as f64 / 1e6,
        out as f64 / 1e6,
        input_bytes as f64 / 1e6 / secs,
        spans_in as f64 / secs,
        rss_before / 1024,
        peak.load(std::sync::atomic::Ordering::Relaxed) / 1024,
        (peak.load(std::sync::atomic::Ordering::Relaxed).saturating_sub(rss_before)) / 1024,
    );
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_heap() {
    extern "C" {
        fn malloc_trim(pad: usize) -> i32;
    }
    // SAFETY: glibc's malloc_trim only releases free heap pages.
    unsafe {
        malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_heap() {}

#[tokio::test]
async fn a_corrupt_input_fails_its_job_and_marks_nothing() {
    let backend = Backend::memory();
    let a = upload(&backend, synth::realistic_traces(30, 1), 0).await;
    upload(&backend, synth::realistic_traces(30, 2), 0).await;
    let data = block::data_key(&tenant(), a.block_id);
    let mut bytes = backend.get(&data).await.unwrap().to_vec();
    let mid = bytes.len() / 2;
    bytes[mid..mid + 64].fill(0xAB);
    backend.put(&data, bytes.into()).await.unwrap();
    let c = compactor(&backend, compaction_cfg(), no_trace_limit());
    let r = c.cycle_tenant(&tenant()).await.unwrap();
    assert_eq!(r.compactions, 0);
    // Both inputs still live; the failed output never committed.
    let (live, compacted, _) = census(&backend).await;
    assert_eq!((live, compacted), (2, 0));
    assert_eq!(c.metrics.compactor_blocks_compacted.get(), 0);
    // The corrupt block sits out; the rest of its window still compacts.
    upload(&backend, synth::realistic_traces(30, 3), 0).await;
    let r = c.cycle_tenant(&tenant()).await.unwrap();
    assert_eq!(r.compactions, 1);
    assert_eq!(r.blocks_compacted, 2);
    // Live: the corrupt block (untouched) and the output.
    assert_eq!(census(&backend).await.0, 2);
    assert!(backend
        .get(&block::meta_key(&tenant(), a.block_id))
        .await
        .is_ok());
}

/// The output goes through a file in `scratch_dir`, which is gone after a compaction that
/// succeeded, one that failed midway and one stopped after its upload.
#[tokio::test]
async fn scratch_file_is_removed_after_success_failure_and_crash() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("compactor");
    let cfg = CompactionConfig {
        scratch_dir: Some(dir.clone()),
        ..compaction_cfg()
    };
    let leftovers = || std::fs::read_dir(&dir).map_or(0, |d| d.count());

    // Stopped right after the upload: the output is an orphan, the file is gone.
    let backend = Backend::memory();
    upload(&backend, synth::realistic_traces(40, 1), 0).await;
    upload(&backend, synth::realistic_traces(40, 2), 0).await;
    let c = compactor(&backend, cfg.clone(), no_trace_limit());
    c.stop_after(Some(CompactionStep::OutputObjects));
    assert!(matches!(
        c.cycle_tenant(&tenant()).await,
        Err(CompactError::Stopped(CompactionStep::OutputObjects))
    ));
    assert_eq!(census(&backend).await, (2, 0, 1));
    assert!(dir.exists());
    assert_eq!(leftovers(), 0);

    // The retry succeeds; the uploaded data.parquet is the file's content, readable.
    c.stop_after(None);
    let r = c.cycle_tenant(&tenant()).await.unwrap();
    assert_eq!(r.compactions, 1);
    assert_eq!(leftovers(), 0);
    let (live, compacted, _) = census(&backend).await;
    assert_eq!((live, compacted), (1, 2));
    let out = c.blocklist.blocks(&tenant());
    let out = out.iter().find(|m| m.compaction_level == 1).unwrap();
    let data = backend
        .get(&block::data_key(&tenant(), out.block_id))
        .await
        .unwrap();
    assert_eq!(data.len() as u64, out.size);
    let traces = block::read_all_traces(data).unwrap();
    assert_eq!(traces.len() as u64, out.total_objects);

    // A corrupt input fails the merge midway: nothing committed, no file left.
    let backend = Backend::memory();
    let a = upload(&backend, synth::realistic_traces(30, 3), 0).await;
    upload(&backend, synth::realistic_traces(30, 4), 0).await;
    let key = block::data_key(&tenant(), a.block_id);
    let mut bytes = backend.get(&key).await.unwrap().to_vec();
    let mid = bytes.len() / 2;
    bytes[mid..mid + 64].fill(0xAB);
    backend.put(&key, bytes.into()).await.unwrap();
    let c = compactor(&backend, cfg, no_trace_limit());
    assert_eq!(c.cycle_tenant(&tenant()).await.unwrap().compactions, 0);
    assert_eq!(census(&backend).await.0, 2);
    assert_eq!(leftovers(), 0);
}

/// A scratch dir that cannot be created fails the job before anything is uploaded.
#[tokio::test]
async fn unusable_scratch_dir_fails_the_job_and_marks_nothing() {
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let backend = Backend::memory();
    upload(&backend, synth::realistic_traces(20, 5), 0).await;
    upload(&backend, synth::realistic_traces(20, 6), 0).await;
    let cfg = CompactionConfig {
        scratch_dir: Some(file.join("below-a-file")),
        ..compaction_cfg()
    };
    let c = compactor(&backend, cfg, no_trace_limit());
    assert_eq!(c.cycle_tenant(&tenant()).await.unwrap().compactions, 0);
    assert_eq!(census(&backend).await, (2, 0, 0));
    assert_eq!(c.metrics.compactor_blocks_compacted.get(), 0);
}

/// Two compactors on one bucket, cycling at once: the tenant's blocks are merged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_compactors_on_one_bucket_merge_each_input_once() {
    let backend = Backend::memory();
    let want = overlapping_blocks(&backend, 200).await;
    let a = compactor(&backend, compaction_cfg(), no_trace_limit())
        .with_tenant_leases("a".into(), Duration::from_secs(30));
    let b = compactor(&backend, compaction_cfg(), no_trace_limit())
        .with_tenant_leases("b".into(), Duration::from_secs(30));
    let (ra, rb) = tokio::join!(a.run_cycle(), b.run_cycle());
    assert_eq!(ra.compactions + rb.compactions, 1, "{ra:?} {rb:?}");
    assert_eq!(census(&backend).await, (1, 4, 0));
    // Whoever did not compact finds nothing left to do once the lease is released.
    let (ra, rb) = tokio::join!(a.run_cycle(), b.run_cycle());
    assert_eq!(ra.compactions + rb.compactions, 0);
    assert_eq!(read_back(&backend, want.keys().copied()).await, want);
}
