//! The querier over a real ingester (WAL, memory, flushes into an in-memory bucket): what
//! was pushed reads back the same before, across and after block flushes.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::*;
use crate::block::BlockConfig;
use crate::blocklist::BlockList;
use crate::config::IngesterConfig;
use crate::ingester::wal::Wal;
use crate::ingester::BlockCommitted;
use crate::model::{combine, span_count, ExportTraceServiceRequest, ScopeSpans, Span};
use crate::traceql::metrics::Buckets;

/// Spans start a second apart from here: recent, so block times are not clamped away from
/// them (the ingestion time range), and on a whole minute.
fn base_s() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    now / 60 * 60 - 120
}

fn request(trace: u8, span_ids: std::ops::Range<u8>) -> ExportTraceServiceRequest {
    let base = BASE.with(|b| *b);
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: span_ids
                    .map(|s| Span {
                        trace_id: vec![trace; 16],
                        span_id: vec![s; 8],
                        name: format!("span-{s}"),
                        start_time_unix_nano: (base + u64::from(s)) * 1_000_000_000,
                        end_time_unix_nano: (base + u64::from(s)) * 1_000_000_000 + 5,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

thread_local! {
    /// One base per test thread, so every request of a test shares it.
    static BASE: u64 = base_s();
}

struct Fixture {
    ingester: Arc<Ingester>,
    querier: Querier,
    committed: Arc<Mutex<Vec<BlockMeta>>>,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::default());
    let (wal, _) = Wal::open(dir.path(), metrics.clone()).unwrap();
    let backend = Backend::memory();
    let blocklist = Arc::new(BlockList::default());
    let committed = Arc::new(Mutex::new(Vec::new()));
    let (bl, c) = (blocklist.clone(), committed.clone());
    let on_commit: BlockCommitted = Arc::new(move |m: BlockMeta| {
        c.lock().push(m.clone());
        bl.add(TenantId::single(), m);
    });
    let cfg = IngesterConfig {
        trace_idle_period: Duration::ZERO,
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
    let querier = Querier::new(backend, Some(ingester.clone()), blocklist, metrics, 4);
    Fixture {
        ingester,
        querier,
        committed,
        _dir: dir,
    }
}

async fn push(f: &Fixture, req: ExportTraceServiceRequest) {
    let tenant = TenantId::single();
    f.ingester.push_request(&tenant, &req).await.unwrap();
}

async fn spans_of(f: &Fixture, trace: u8) -> usize {
    let found = f
        .querier
        .find_trace(&TenantId::single(), &TraceId([trace; 16]), None)
        .await
        .unwrap();
    span_count(&combine(found.batches))
}

/// `{ } | count_over_time()` over the spans' minute and the next, in one bucket.
async fn count_spans(f: &Fixture) -> f64 {
    let q = crate::traceql::parse("{ } | count_over_time()").unwrap();
    let (s, base) = (1_000_000_000, BASE.with(|b| *b));
    let buckets = Buckets::instant((base - 10) * s, (base + 110) * s);
    let (ev, columns) = metrics::plan(&q, buckets, 0, 0).unwrap();
    let p = f
        .querier
        .metrics(&TenantId::single(), &ev, columns)
        .await
        .unwrap();
    let r = Querier::finish_metrics(p.evaluator, p.metrics, p.partial)
        .await
        .unwrap();
    r.output
        .series
        .first()
        .and_then(|s| s.samples.first())
        .map_or(0.0, |x| x.value)
}

#[tokio::test]
async fn late_spans_join_their_trace_across_a_block_flush() {
    let f = fixture();
    push(&f, request(7, 1..4)).await;
    assert_eq!(spans_of(&f, 7).await, 3, "readable before any flush");
    assert_eq!(f.ingester.flush(false).await, 1);
    assert_eq!(f.committed.lock().len(), 1);
    assert_eq!(spans_of(&f, 7).await, 3, "readable from the block");
    // The late batch, plus a duplicate of span 3.
    push(&f, request(7, 3..6)).await;
    assert_eq!(
        spans_of(&f, 7).await,
        5,
        "late spans merged, duplicate dropped"
    );
    f.ingester.flush(false).await;
    assert_eq!(f.committed.lock().len(), 2);
    assert_eq!(spans_of(&f, 7).await, 5, "merged across two blocks");
    assert_eq!(spans_of(&f, 9).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_each_span_once_before_and_after_a_flush() {
    let f = fixture();
    push(&f, request(1, 1..4)).await;
    push(&f, request(2, 10..12)).await;
    assert_eq!(count_spans(&f).await, 5.0, "in memory");
    assert_eq!(f.ingester.flush(true).await, 1);
    assert_eq!(count_spans(&f).await, 5.0, "in a block");
    push(&f, request(1, 20..22)).await;
    assert_eq!(
        count_spans(&f).await,
        7.0,
        "split between a block and memory"
    );
    // While the block is written the trace is in `flushing` and, once committed, listed
    // too: the snapshot names the block, which the scan skips. Here the listing and the
    // snapshot are taken around a flush from another task, many times.
    let f = Arc::new(f);
    for k in 0..20u8 {
        push(&f, request(3 + k, 30..33)).await;
        let flusher = {
            let f = f.clone();
            tokio::spawn(async move { f.ingester.flush(true).await })
        };
        let n = count_spans(&f).await;
        flusher.await.unwrap();
        let want = 7.0 + 3.0 * f64::from(k + 1);
        assert_eq!(n, want, "counted once while flush {k} ran");
    }
}

/// Searches `q` (no time range) with `limit`, as the API does.
async fn search_live(f: &Fixture, q: &str, limit: usize) -> crate::querier::search::SearchResults {
    let req = crate::querier::search::SearchRequest {
        query: Arc::new(crate::traceql::parse(q).unwrap()),
        limit,
        spss: 3,
        range: None,
        min_duration_nanos: None,
        max_duration_nanos: None,
    };
    f.querier.search(&TenantId::single(), &req).await.unwrap()
}

#[tokio::test]
async fn a_limited_search_over_memory_stops_early_and_keeps_the_newest() {
    let f = fixture();
    // Trace t starts t seconds after the base: 100 live traces, all in memory.
    for t in 1..=100u8 {
        push(&f, request(t, t..t + 2)).await;
    }
    let search = |q: &'static str, limit: usize| search_live(&f, q, limit);
    let all = search("{ }", 1000).await;
    assert_eq!(all.traces.len(), 100);
    assert_eq!(all.metrics.inspected_traces, 100);
    let few = search("{ }", 5).await;
    assert_eq!(few.traces, all.traces[..5].to_vec());
    let newest: Vec<u8> = few.traces.iter().map(|t| t.id.0[0]).collect();
    assert_eq!(newest, vec![100, 99, 98, 97, 96]);
    // One round of the newest traces answered it: the older ones were never decoded.
    assert!(
        few.metrics.inspected_traces < 50,
        "{} traces inspected",
        few.metrics.inspected_traces
    );
    // A selective query whose hits are all old still finds them, round after round.
    let old = search("{ name =~ \"span-[23]\" }", 5).await;
    let ids: Vec<u8> = old.traces.iter().map(|t| t.id.0[0]).collect();
    assert_eq!(ids, vec![3, 2, 1]);
    assert_eq!(old.metrics.inspected_traces, 100);
    // With the names as strings, traces lacking both are skipped undecoded.
    let named = search("{ name = \"span-3\" || name = \"span-2\" }", 5).await;
    assert_eq!(named.traces, old.traces);
    assert_eq!(named.metrics.inspected_traces, 3);
}

/// Live traces shorter than a query's span-duration bound are skipped without decoding;
/// a trace with a long enough span is still found.
#[tokio::test]
async fn live_traces_too_short_for_a_duration_bound_are_not_decoded() {
    let f = fixture();
    // 1 s envelopes of 5 ns spans.
    for t in 1..=50u8 {
        push(&f, request(t, t..t + 2)).await;
    }
    // A 4 s envelope, still of 5 ns spans.
    push(&f, request(60, 40..45)).await;
    // One 3 s span.
    let mut long = request(70, 30..31);
    let span = &mut long.resource_spans[0].scope_spans[0].spans[0];
    span.end_time_unix_nano = span.start_time_unix_nano + 3_000_000_000;
    push(&f, long).await;
    let search = |q: &'static str| search_live(&f, q, 20);
    let two = search("{ duration > 2s }").await;
    let ids: Vec<u8> = two.traces.iter().map(|t| t.id.0[0]).collect();
    assert_eq!(ids, vec![70]);
    // Only the 4 s and 3 s envelopes could hold such a span.
    assert_eq!(two.metrics.inspected_traces, 2);
    let none = search("{ 5s <= duration }").await;
    assert!(none.traces.is_empty());
    assert_eq!(none.metrics.inspected_traces, 0);
    // Nothing to judge from the envelope: every trace is decoded.
    let either = search("{ duration > 2s || name = \"span-1\" }").await;
    assert_eq!(either.metrics.inspected_traces, 52);
    let ids: Vec<u8> = either.traces.iter().map(|t| t.id.0[0]).collect();
    assert_eq!(ids.len(), 2, "traces 1 and 70: {ids:?}");
}
