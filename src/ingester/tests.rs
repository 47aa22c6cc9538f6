//! Ingester tests: push, cut, flush, replay and the read paths over memory and blocks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prost::Message;

use super::wal::Wal;
use super::*;
use crate::block::BlockMeta;
use crate::model::{combine, group_by_trace, span_count, ResourceSpans, ScopeSpans, Span};

/// A request holding spans `span_ids` of one trace.
pub(super) fn request(trace: u8, span_ids: std::ops::Range<u8>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: None,
            scope_spans: vec![ScopeSpans {
                scope: None,
                spans: span_ids
                    .map(|i| Span {
                        trace_id: vec![trace; 16],
                        span_id: vec![1, 1, 1, 1, 1, 1, 1, i],
                        name: format!("op-{i}"),
                        start_time_unix_nano: 1_700_000_000_000_000_000 + u64::from(i),
                        end_time_unix_nano: 1_700_000_000_100_000_000,
                        ..Default::default()
                    })
                    .collect(),
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

struct Fixture {
    ingester: Arc<Ingester>,
    committed: Arc<Mutex<Vec<BlockMeta>>>,
    _dir: tempfile::TempDir,
}

fn fixture(idle: Duration) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::default());
    let (wal, replayed) = Wal::open(dir.path(), metrics.clone()).unwrap();
    assert!(replayed.is_empty());
    let backend = Backend::memory();
    let committed = Arc::new(Mutex::new(Vec::new()));
    let c = committed.clone();
    let on_commit: BlockCommitted = Arc::new(move |m: BlockMeta| c.lock().push(m));
    let cfg = IngesterConfig {
        trace_idle_period: idle,
        ..Default::default()
    };
    let ingester = Ingester::new(
        cfg,
        Arc::new(wal),
        backend.clone(),
        BlockConfig::default(),
        metrics.clone(),
        on_commit,
    );
    Fixture {
        ingester,
        committed,
        _dir: dir,
    }
}

async fn push(ing: &Ingester, req: ExportTraceServiceRequest) {
    let tenant = TenantId::single();
    ing.push_request(&tenant, &req).await.unwrap();
}

/// Spans of a trace the ingester still holds in memory.
fn spans_in_memory(f: &Fixture, trace: u8) -> usize {
    span_count(&combine(
        f.ingester
            .find_trace(&TenantId::single(), &TraceId([trace; 16])),
    ))
}

#[tokio::test]
async fn active_traces_are_carried_over_and_old_segments_deleted() {
    let f = fixture(Duration::from_secs(3600));
    push(&f.ingester, request(1, 1..3)).await;
    let dir = f._dir.path().to_owned();
    let segments = || std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(segments(), 1);
    // Nothing is idle yet: the cut writes no block but carries the trace to a new segment.
    assert_eq!(f.ingester.flush(false).await, 0);
    assert_eq!(segments(), 1, "old segment deleted after carry-over");
    assert_eq!(spans_in_memory(&f, 1), 2);
    // A restart from this WAL alone still has the trace.
    // Read-only: a second `Wal::open` of a live directory is refused (it would write to it).
    let (replayed, _) = wal::read_only(&dir).unwrap();
    let mut spans = 0;
    for r in replayed {
        let (_, otlp) = wal::decode_payload(&r.payload).unwrap();
        let req = ExportTraceServiceRequest::decode(otlp).unwrap();
        spans += group_by_trace(&req.resource_spans).accepted;
    }
    assert_eq!(spans, 2);
    // A forced flush writes it (read back from the block in querier::tests).
    assert_eq!(f.ingester.flush(true).await, 1);
    assert_eq!(f.committed.lock()[0].total_objects, 1);
    assert_eq!(spans_in_memory(&f, 1), 0);
}

/// A cut takes the ready traces out of the head's maps in place: a map keeps its table for
/// the traces that arrive next, the kept traces and the head's counts stay right, and a
/// tenant with nothing live since the last cut gives its table back. A cut of everything
/// moves the table itself.
#[tokio::test]
async fn a_cut_keeps_each_tenant_table_in_place() {
    let f = fixture(Duration::from_secs(1));
    let ing = &f.ingester;
    let (a, b) = (TenantId::new("a").unwrap(), TenantId::new("b").unwrap());
    for t in 1..=40 {
        ing.push_request(&a, &request(t, 1..3)).await.unwrap();
    }
    ing.push_request(&b, &request(100, 1..3)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    ing.push_request(&a, &request(41, 1..4)).await.unwrap();
    let capacity = ing.head.lock().tenants[&a].capacity();
    assert!(capacity >= 41 + 8, "{capacity}");

    // Traces 1–40 of `a` and `b`'s one are idle: a block each; trace 41 stays.
    assert_eq!(ing.flush(false).await, 2);
    let kept_capacity = {
        let head = ing.head.lock();
        let kept = &head.tenants[&a];
        // An entry taken out leaves room or a tombstone, so the room left falls by at
        // most one per trace taken; a map built anew for one trace would have room for 3.
        let after = kept.capacity();
        assert!(
            after >= capacity - 40,
            "the table is kept: {after} of {capacity}"
        );
        assert_eq!(
            kept.keys().copied().collect::<Vec<_>>(),
            [TraceId([41; 16])]
        );
        assert_eq!(
            (head.traces, head.bytes),
            (1, trace_bytes(&kept[&TraceId([41; 16])].data))
        );
        assert!(
            head.tenants[&b].is_empty(),
            "emptied this cut, kept until the next"
        );
        assert!(head.started.is_some());
        after
    };
    assert_eq!(ing.metrics.live_traces.get(), 1);

    // `b` had nothing live since the last cut: its map goes; `a`'s stays, empty.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(ing.flush(false).await, 1);
    {
        let head = ing.head.lock();
        assert!(!head.tenants.contains_key(&b));
        assert!(head.tenants[&a].is_empty());
        assert!(head.tenants[&a].capacity() >= kept_capacity - 1);
        assert_eq!((head.traces, head.bytes, head.started), (0, 0, None));
    }

    // A cut of everything moves the table itself into the flush, building none.
    ing.push_request(&a, &request(42, 1..3)).await.unwrap();
    assert_eq!(ing.flush(true).await, 1);
    assert_eq!(ing.head.lock().tenants[&a].capacity(), 0);
    assert!(ing.find_trace(&a, &TraceId([42; 16])).is_empty());
    let committed = f.committed.lock();
    let objects: Vec<u64> = committed.iter().map(|m| m.total_objects).collect();
    assert_eq!(objects.iter().sum::<u64>(), 43, "{objects:?}");
}

/// An ingester with its own settings on the fixture's WAL, writing to a memory bucket.
fn on_fixture_log(f: &Fixture, cfg: IngesterConfig) -> Arc<Ingester> {
    Ingester::new(
        cfg,
        f.ingester.log.clone(),
        Backend::memory(),
        BlockConfig::default(),
        Arc::new(Metrics::default()),
        Arc::new(|_| {}),
    )
}

#[tokio::test]
async fn refuses_instead_of_dropping_when_memory_is_full() {
    let f = fixture(Duration::ZERO);
    let tenant = TenantId::single();
    let big = request(3, 1..50);
    let raw = big.encode_to_vec();
    let g = group_by_trace(&big.resource_spans);
    let ing = on_fixture_log(
        &f,
        IngesterConfig {
            max_live_bytes: 10,
            ..Default::default()
        },
    );
    let err = ing.push(&tenant, &raw, g).await.unwrap_err();
    assert!(
        matches!(err, IngestError::LiveBytesExceeded { .. }),
        "{err}"
    );
    assert!(ing.find_trace(&tenant, &TraceId([3; 16])).is_empty());
}

#[tokio::test]
async fn memory_pressure_cuts_every_live_trace() {
    let f = fixture(Duration::from_secs(3600));
    let tenant = TenantId::single();
    let req = request(5, 1..40);
    let raw = req.encode_to_vec();
    let g = group_by_trace(&req.resource_spans);
    let bytes: u64 = g.traces().iter().map(|t| t.data.len() as u64).sum();
    let ing = on_fixture_log(
        &f,
        IngesterConfig {
            trace_idle_period: Duration::from_secs(3600),
            // The trace fills 80% of the budget: past the 75% mark.
            max_live_bytes: bytes * 5 / 4,
            ..Default::default()
        },
    );
    assert_eq!(ing.cut_due(Instant::now()), CutDue::No);
    ing.push(&tenant, &raw, g).await.unwrap();
    assert_eq!(ing.cut_due(Instant::now()), CutDue::Pressure);
    // The trace is far from idle, yet a pressure cut writes it and frees the memory.
    assert_eq!(ing.flush(true).await, 1);
    assert_eq!(ing.cut_due(Instant::now()), CutDue::No);
    assert_eq!(ing.metrics.live_bytes.get(), 0);
}

/// Memory the count misses, seen in the sampled RSS, refuses exports the count alone would
/// take, and a cut with nothing flushing then writes every live trace to make room; RSS
/// held by something other than traces never refuses an ingester that holds none.
#[tokio::test]
async fn resident_memory_beyond_the_count_refuses_and_cuts() {
    let f = fixture(Duration::from_secs(3600));
    let tenant = TenantId::single();
    let req = request(6, 1..40);
    let raw = req.encode_to_vec();
    let g = group_by_trace(&req.resource_spans);
    let bytes: u64 = g.traces().iter().map(|t| trace_bytes(&t.data)).sum();
    let counted = bytes + bytes / ALLOCATOR_SHARE;
    let ing = on_fixture_log(
        &f,
        IngesterConfig {
            trace_idle_period: Duration::from_secs(3600),
            // By the count the trace fits with room to spare, under the pressure mark.
            max_live_bytes: bytes * 7 / 5,
            ..Default::default()
        },
    );
    // RSS far past the budget while nothing is held: ingest goes on.
    ing.resident.set(bytes * 100);
    ing.has_room(bytes).unwrap();
    ing.push(&tenant, &raw, g).await.unwrap();
    let reserve = ing.cut_reserve();
    assert!(reserve > 0 && reserve < counted);
    // Not sampled, or RSS with a cut's working set on top within the count: the count
    // alone decides.
    for rss in [0, counted - reserve] {
        ing.resident.set(rss);
        assert_eq!(ing.held_bytes(), counted);
        ing.has_room(bytes * 7 / 5 - counted).unwrap();
        assert_eq!(ing.cut_due(Instant::now()), CutDue::No);
    }
    // RSS with that room on top, beyond the count, is counted too, up to the count again.
    ing.resident.set(counted - reserve + 10);
    assert_eq!(ing.held_bytes(), counted + 10);
    // RSS at the count leaves no room for the next cut: what fits the count alone is
    // refused.
    ing.resident.set(counted);
    assert_eq!(ing.held_bytes(), counted + reserve);
    assert!(matches!(
        ing.has_room(bytes * 7 / 5 - counted),
        Err(IngestError::LiveBytesExceeded { .. })
    ));
    ing.resident.set(counted * 10);
    assert_eq!(ing.held_bytes(), counted * 2);
    assert!(matches!(
        ing.has_room(1),
        Err(IngestError::LiveBytesExceeded { .. })
    ));
    // Nothing is flushing, so the ingester cuts every live trace (none is idle).
    assert_eq!(ing.cut_due(Instant::now()), CutDue::Pressure);
    assert_eq!(ing.flush(true).await, 1);
    assert_eq!(ing.metrics.live_bytes.get(), 0);
    ing.has_room(bytes).unwrap();
}

/// Carried-over traces are split into bounded WAL records (one record per tenant could
/// pass the record limit), and every span is in exactly one of them.
#[test]
fn carried_over_traces_are_split_into_bounded_records() {
    let tenant = TenantId::single();
    let traces: Vec<Fragments> = (1..=20u8)
        .map(|t| {
            let req = request(t, 0..5);
            Fragments::from_encoded(req.encode_to_vec().into()).unwrap()
        })
        .collect();
    let one = traces[0].len();
    let records: Vec<_> = carry_records(&tenant, &traces, one * 3).records().collect();
    assert!(records.len() >= 7, "{} records", records.len());
    let mut spans = 0;
    for r in &records {
        let (t, otlp) = wal::decode_payload(r).unwrap();
        assert_eq!(t, tenant);
        assert!(otlp.len() <= one * 3, "record of {} bytes", otlp.len());
        spans += group_by_trace(
            &ExportTraceServiceRequest::decode(otlp)
                .unwrap()
                .resource_spans,
        )
        .accepted;
    }
    assert_eq!(spans, 100);
}

/// An idle cut with no idle trace neither rotates the WAL nor rewrites the active traces.
#[tokio::test]
async fn idle_cut_with_nothing_idle_does_not_rewrite_the_wal() {
    let f = fixture(Duration::from_secs(3600));
    push(&f.ingester, request(1, 1..3)).await;
    let seg = wal::segment_path(f._dir.path(), 1);
    let before = std::fs::metadata(&seg).unwrap().len();
    assert_eq!(f.ingester.flush(false).await, 0);
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), before);
    assert!(!wal::segment_path(f._dir.path(), 2).exists());
}

/// A WAL holding more than `max_live_bytes` replays without holding it all in memory: the
/// head is written into blocks as it fills, and no segment is deleted while replay still
/// needs the ones after it.
#[tokio::test]
async fn replay_of_a_wal_larger_than_memory_flushes_as_it_goes() {
    let dir = tempfile::tempdir().unwrap();
    let tenant = TenantId::single();
    let one = request(1, 0..20).encode_to_vec().len() as u64;
    {
        let (wal, _) = Wal::open(dir.path(), Arc::new(Metrics::default())).unwrap();
        for t in 1..=40u8 {
            let raw = request(t, 0..20).encode_to_vec();
            wal.append(wal::encode_payload(&tenant, &raw))
                .await
                .unwrap();
            if t % 10 == 0 {
                wal.rotate().await.unwrap();
            }
        }
    }
    let segments_before = std::fs::read_dir(dir.path()).unwrap().count();
    let metrics = Arc::new(Metrics::default());
    let (wal, replay) = Wal::open_lazy(dir.path(), metrics.clone()).unwrap();
    let committed = Arc::new(Mutex::new(Vec::<BlockMeta>::new()));
    let c = committed.clone();
    // Room for about 8 of the 40 traces.
    let max_live_bytes = one * 8;
    let ing = Ingester::new(
        IngesterConfig {
            max_live_bytes,
            ..Default::default()
        },
        Arc::new(wal),
        Backend::memory(),
        BlockConfig::default(),
        metrics.clone(),
        Arc::new(move |m| c.lock().push(m)),
    );
    ing.replay_wal(replay).await.unwrap();
    assert!(
        metrics.live_bytes.get() <= max_live_bytes,
        "{} bytes live after replay, limit {max_live_bytes}",
        metrics.live_bytes.get()
    );
    let in_blocks: u64 = committed.lock().iter().map(|m| m.total_objects).sum();
    assert!(in_blocks > 0, "nothing was flushed during replay");
    assert_eq!(
        in_blocks + metrics.live_traces.get(),
        40,
        "every trace kept"
    );
    // Segments written before the restart are all still there (plus the ones rotated in).
    let (records, _) = wal::read_only(dir.path()).unwrap();
    assert!(records.iter().filter(|r| r.segment <= 4).count() >= 40);
    assert!(std::fs::read_dir(dir.path()).unwrap().count() >= segments_before);
}

/// The invariant that lets a reader count each span once: from the moment a block is
/// committed (and so listed) until its traces leave `flushing`, a snapshot names that
/// block; a reader that skips it sees those traces only in memory.
#[tokio::test]
async fn a_snapshot_during_a_commit_names_the_block_being_committed() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::default());
    let (wal, _) = Wal::open(dir.path(), metrics.clone()).unwrap();
    let me: Arc<std::sync::OnceLock<std::sync::Weak<Ingester>>> = Arc::default();
    // (committed block, block the snapshot named, traces in the snapshot) per commit.
    type Seen = Vec<(uuid::Uuid, Option<uuid::Uuid>, usize)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let (me2, seen2) = (me.clone(), seen.clone());
    let on_commit: BlockCommitted = Arc::new(move |m: BlockMeta| {
        let ing = me2.get().and_then(|w| w.upgrade()).expect("ingester alive");
        let (traces, block) = ing.snapshot_with_block(&TenantId::single());
        seen2.lock().push((m.block_id, block, traces.len()));
    });
    let ingester = Ingester::new(
        IngesterConfig {
            trace_idle_period: Duration::ZERO,
            ..Default::default()
        },
        Arc::new(wal),
        Backend::memory(),
        BlockConfig::default(),
        metrics,
        on_commit,
    );
    me.set(Arc::downgrade(&ingester)).unwrap();
    push(&ingester, request(4, 1..3)).await;
    assert_eq!(ingester.flush(true).await, 1);
    let seen = seen.lock().clone();
    assert_eq!(seen.len(), 1);
    let (committed, named, traces) = seen[0];
    assert_eq!(
        named,
        Some(committed),
        "the snapshot names the committed block"
    );
    assert_eq!(traces, 1, "and still holds its trace");
    // Once the flush is over, nothing is flushing and memory is empty.
    let (traces, block) = ingester.snapshot_with_block(&TenantId::single());
    assert!(traces.is_empty() && block.is_none());
}

/// A limited search takes every live trace's times first and the data of only the traces
/// it evaluates: both views merge a trace found in the head and in `flushing`, and a trace
/// written to a block in between is left out of the data (the reader finds it there).
#[tokio::test]
async fn live_keys_and_fragments_merge_head_and_flushing() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::default());
    let (wal, _) = Wal::open(dir.path(), metrics.clone()).unwrap();
    let me: Arc<std::sync::OnceLock<std::sync::Weak<Ingester>>> = Arc::default();
    type Seen = Vec<(Vec<super::LiveKey>, Vec<(TraceId, Fragments)>)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let (me2, seen2) = (me.clone(), seen.clone());
    let tenant = TenantId::single();
    let id = TraceId([4; 16]);
    let on_commit: BlockCommitted = Arc::new(move |_| {
        let ing = me2.get().and_then(|w| w.upgrade()).expect("ingester alive");
        // Late spans of the flushing trace, starting earlier, arrive in the head.
        let late = request(4, 1..2);
        let traces = group_by_trace(&late.resource_spans).into_traces();
        ing.head
            .lock()
            .insert(&TenantId::single(), traces, Instant::now(), 0);
        let keys = ing.live_keys(&TenantId::single(), |_, _| true);
        let data = ing.live_fragments(&TenantId::single(), &[TraceId([4; 16])]);
        seen2.lock().push((keys, data));
    });
    let ingester = Ingester::new(
        IngesterConfig {
            trace_idle_period: Duration::ZERO,
            ..Default::default()
        },
        Arc::new(wal),
        Backend::memory(),
        BlockConfig::default(),
        metrics,
        on_commit,
    );
    me.set(Arc::downgrade(&ingester)).unwrap();
    push(&ingester, request(4, 5..8)).await;
    let base = 1_700_000_000_000_000_000u64;
    let before = ingester.live_keys(&tenant, |_, _| true);
    assert_eq!(before.len(), 1);
    assert_eq!(
        (before[0].start, before[0].end),
        (base + 5, base + 100_000_000)
    );
    assert!(
        ingester.live_keys(&tenant, |s, _| s > base + 5).is_empty(),
        "keep filters"
    );
    let pushed = ingester.live_fragments(&tenant, &[id])[0].1.len();
    assert_eq!(ingester.flush(true).await, 1);
    let seen = seen.lock().clone();
    let (keys, data) = &seen[0];
    assert_eq!(keys.len(), 1, "one key for a trace in both");
    assert_eq!(keys[0].start, base + 1, "the head's earlier start");
    assert_eq!(data.len(), 1);
    assert_eq!(
        span_count(&data[0].1.decode().unwrap()),
        4,
        "3 flushing + 1 late"
    );
    assert!(data[0].1.len() > pushed);
    // The flushed part is in a block now; the late span is still live.
    let after = ingester.live_fragments(&tenant, &[id, TraceId([9; 16])]);
    assert_eq!(after.len(), 1);
    assert_eq!(span_count(&after[0].1.decode().unwrap()), 1);
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// A request that arrived gzip-compressed is logged as those bytes, and a restart reads
/// every span of it back; the record is the compressed size, not the inflated one.
#[tokio::test]
async fn a_gzip_request_is_logged_compressed_and_replayed_whole() {
    let dir = tempfile::tempdir().unwrap();
    let tenant = TenantId::single();
    let req = request(7, 0..60);
    let raw = req.encode_to_vec();
    let gz = gzip(&raw);
    assert!(gz.len() * 3 < raw.len(), "{} of {}", gz.len(), raw.len());
    let on = |wal: Wal, metrics: &Arc<Metrics>| {
        Ingester::new(
            IngesterConfig::default(),
            Arc::new(wal),
            Backend::memory(),
            BlockConfig::default(),
            metrics.clone(),
            Arc::new(|_| {}),
        )
    };
    {
        let f_metrics = Arc::new(Metrics::default());
        let (wal, _) = Wal::open(dir.path(), f_metrics.clone()).unwrap();
        let ing = on(wal, &f_metrics);
        ing.push_received(
            &tenant,
            &raw,
            Some(&gz),
            group_by_trace(&req.resource_spans),
        )
        .await
        .unwrap();
        // Record header (8) + kind and tenant length (2) + tenant + the gzip bytes.
        let want = 8 + 2 + tenant.as_str().len() + gz.len();
        assert_eq!(f_metrics.wal_bytes.get() as usize, want);
    }
    let metrics = Arc::new(Metrics::default());
    let (wal, replay) = Wal::open_lazy(dir.path(), metrics.clone()).unwrap();
    let ing = on(wal, &metrics);
    ing.replay_wal(replay).await.unwrap();
    let back = combine(ing.find_trace(&tenant, &TraceId([7; 16])));
    assert_eq!(span_count(&back), 60);
}

/// When a limit removed part of a request, the record holds only what was kept, even if
/// the request came compressed: a replay must not bring back refused spans.
#[tokio::test]
async fn a_partly_refused_gzip_request_logs_only_the_kept_traces() {
    let f = fixture(Duration::from_secs(3600));
    let tenant = TenantId::single();
    let mut req = request(8, 0..5);
    req.resource_spans.extend(request(9, 0..5).resource_spans);
    let raw = req.encode_to_vec();
    let gz = gzip(&raw);
    let mut g = group_by_trace(&req.resource_spans);
    g.retain(|t| t.id == TraceId([8; 16]));
    assert!(!g.is_whole());
    f.ingester
        .push_received(&tenant, &raw, Some(&gz), g)
        .await
        .unwrap();
    let (replayed, _) = wal::read_only(f._dir.path()).unwrap();
    let mut ids = Vec::new();
    for r in replayed {
        let (_, otlp) = wal::decode_payload(&r.payload).unwrap();
        let req = ExportTraceServiceRequest::decode(otlp).unwrap();
        ids.extend(
            group_by_trace(&req.resource_spans)
                .traces()
                .iter()
                .map(|t| t.id),
        );
    }
    assert_eq!(ids, vec![TraceId([8; 16])]);
}

/// A trace still live at a cut stays in its segment (the cut keeps it) and is written to
/// the WAL once; only a trace live for two idle periods is carried over. The traces the cut wrote
/// from the kept segment are named in a flush marker, so a restart replays the kept
/// trace and not those: none lost, none written twice.
#[tokio::test]
async fn a_cut_keeps_the_segment_of_young_traces_instead_of_rewriting_them() {
    let dir = tempfile::tempdir().unwrap();
    let crashed = tempfile::tempdir().unwrap();
    // Long enough that a stalled test machine does not make a live trace idle.
    let idle = Duration::from_secs(1);
    let open = |dir: &std::path::Path, metrics: Arc<Metrics>| {
        let (wal, replay) = Wal::open_lazy(dir, metrics.clone()).unwrap();
        let committed = Arc::new(Mutex::new(Vec::<BlockMeta>::new()));
        let c = committed.clone();
        let ing = Ingester::new(
            IngesterConfig {
                trace_idle_period: idle,
                ..Default::default()
            },
            Arc::new(wal),
            Backend::memory(),
            BlockConfig::default(),
            metrics,
            Arc::new(move |m| c.lock().push(m)),
        );
        (ing, replay, committed)
    };
    let in_memory = |ing: &Ingester, t: u8| {
        span_count(&combine(
            ing.find_trace(&TenantId::single(), &TraceId([t; 16])),
        ))
    };
    let metrics = Arc::new(Metrics::default());
    let (ing, _, committed) = open(dir.path(), metrics.clone());
    let tenant = TenantId::single();
    let wal_records = || metrics.wal_records.get();
    let marker = |b: u64| dir.path().join(format!("{b:020}.flushed"));
    // Segment 1: traces 1 and 2; trace 1 goes idle.
    ing.push_request(&tenant, &request(1, 0..3)).await.unwrap();
    tokio::time::sleep(idle + Duration::from_millis(200)).await;
    ing.push_request(&tenant, &request(2, 0..4)).await.unwrap();
    let before = wal_records();
    assert_eq!(ing.flush(false).await, 1, "trace 1 written");
    assert_eq!(wal_records(), before, "trace 2 was rewritten to the WAL");
    assert!(wal::segment_path(dir.path(), 1).exists(), "segment 1 kept");
    assert!(marker(2).exists());
    assert_eq!(in_memory(&ing, 2), 4);
    // The WAL as a crash would leave it now, for the restart below.
    for e in std::fs::read_dir(dir.path()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), crashed.path().join(e.file_name())).unwrap();
    }
    // Trace 3 arrives in segment 2; trace 2 goes idle and is written; trace 3 is not
    // rewritten either, and segment 1 goes.
    tokio::time::sleep(idle + Duration::from_millis(200)).await;
    ing.push_request(&tenant, &request(3, 0..5)).await.unwrap();
    let before = wal_records();
    assert_eq!(ing.flush(false).await, 1);
    assert_eq!(committed.lock()[1].total_objects, 1, "trace 2 written");
    assert_eq!(wal_records(), before, "trace 3 was rewritten to the WAL");
    assert!(
        !wal::segment_path(dir.path(), 1).exists(),
        "segment 1 deleted"
    );
    assert!(!marker(2).exists());
    assert!(wal::segment_path(dir.path(), 2).exists(), "segment 2 kept");
    // Trace 3 gets spans for over two idle periods and is still live at the next cut:
    // carried over this time.
    ing.push_request(&tenant, &request(3, 5..7)).await.unwrap();
    ing.push_request(&tenant, &request(4, 0..1)).await.unwrap();
    for i in 7..12 {
        tokio::time::sleep(idle / 2).await;
        ing.push_request(&tenant, &request(3, i..i + 1))
            .await
            .unwrap();
    }
    let before = wal_records();
    assert_eq!(ing.flush(false).await, 1, "trace 4 written");
    assert!(wal_records() > before, "trace 3 carried over");
    assert!(
        !wal::segment_path(dir.path(), 2).exists(),
        "segment 2 deleted"
    );
    assert_eq!(in_memory(&ing, 3), 12);
    drop(ing);
    let metrics = Arc::new(Metrics::default());
    let (ing, replay, _) = open(dir.path(), metrics.clone());
    ing.replay_wal(replay).await.unwrap();
    assert_eq!(in_memory(&ing, 3), 12);
    assert_eq!(metrics.live_traces.get(), 1, "only trace 3 replayed");

    // The crash after the first cut: segment 1 holds traces 1 (written, and marked so)
    // and 2 (live); the replay brings back trace 2 only.
    let metrics = Arc::new(Metrics::default());
    let (ing, replay, _) = open(crashed.path(), metrics.clone());
    ing.replay_wal(replay).await.unwrap();
    assert_eq!(in_memory(&ing, 2), 4);
    assert_eq!(
        metrics.live_traces.get(),
        1,
        "trace 1 replayed though in a block"
    );
    // Without the marker it comes back (to be merged with the block's copy): never lost.
    drop(ing);
    std::fs::remove_file(crashed.path().join(format!("{:020}.flushed", 2))).unwrap();
    let (ing, replay, _) = open(crashed.path(), Arc::new(Metrics::default()));
    ing.replay_wal(replay).await.unwrap();
    assert_eq!(in_memory(&ing, 1), 3);
    assert_eq!(in_memory(&ing, 2), 4);
}
