//! The ingester on the ingest log: cuts take the whole head, blocks get IDs derived from
//! tenant and offset ranges, offsets are committed after `meta.json`, and the distributor
//! acknowledges only what the log accepted.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;

use super::log::{block_id, position, Ranges};
use super::*;
use crate::backend::Backend;
use crate::block::{self, BlockConfig, BlockMeta};
use crate::config::IngesterConfig;
use crate::distributor::{Distributor, PushError};
use crate::ingester::{BlockCommitted, Ingester};
use crate::metrics::Metrics;
use crate::model::group_by_trace;
use crate::model::{ExportTraceServiceRequest, ResourceSpans, ScopeSpans, Span};
use crate::overrides::Overrides;

fn request(trace: u8, spans: u8) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: None,
            scope_spans: vec![ScopeSpans {
                scope: None,
                spans: (1..=spans)
                    .map(|i| Span {
                        trace_id: vec![trace; 16],
                        span_id: vec![2, 2, 2, 2, 2, 2, 2, i],
                        name: format!("op-{i}"),
                        start_time_unix_nano: crate::block::unix_nanos_now(),
                        end_time_unix_nano: crate::block::unix_nanos_now(),
                        ..Default::default()
                    })
                    .collect(),
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

fn ingester(
    backend: &Backend,
    log: Arc<PartitionLog>,
) -> (Arc<Ingester>, Arc<Mutex<Vec<BlockMeta>>>) {
    let committed = Arc::new(Mutex::new(Vec::new()));
    let c = committed.clone();
    let on_commit: BlockCommitted = Arc::new(move |m: BlockMeta| c.lock().push(m));
    let cfg = IngesterConfig {
        // Nothing is idle: only the log's "no carry-over" makes the cut take the traces.
        trace_idle_period: Duration::from_secs(3600),
        max_trace_live: Duration::from_secs(3600),
        ..Default::default()
    };
    let ing = Ingester::new(
        cfg,
        log,
        backend.clone(),
        BlockConfig::default(),
        Arc::new(Metrics::default()),
        on_commit,
    );
    (ing, committed)
}

#[tokio::test]
async fn blocks_are_named_by_offset_ranges_and_offsets_commit_after_meta() {
    let backend = Backend::memory();
    let tenant = TenantId::single();
    let log = Arc::new(
        PartitionLog::open(backend.clone(), "g", "topic")
            .await
            .unwrap(),
    );
    let (ing, committed) = ingester(&backend, log.clone());
    for (p, off, trace) in [(0, 0, 1u8), (1, 0, 2), (0, 1, 3)] {
        let g = group_by_trace(&request(trace, 2).resource_spans);
        ing.push_logged(position(p, off), &tenant, g.into_traces())
            .await
            .unwrap();
    }
    assert_eq!(ing.flush(false).await, 1, "the whole head is cut");
    let metas = committed.lock().clone();
    let want = block_id("topic", &tenant, &Ranges::from([(0, (0, 2)), (1, (0, 1))]));
    assert_eq!(metas[0].block_id, want);
    assert_eq!(metas[0].total_spans, 6);
    assert!(backend.get(&block::meta_key(&tenant, want)).await.is_ok());
    assert_eq!((log.committed(0), log.committed(1)), (Some(2), Some(1)));
    let reopened = PartitionLog::open(backend.clone(), "g", "topic")
        .await
        .unwrap();
    assert!(reopened.pending_cut().is_none());
    assert_eq!(reopened.committed(0), Some(2));

    // The next cut starts where this one ended.
    let g = group_by_trace(&request(4, 1).resource_spans);
    ing.push_logged(position(0, 2), &tenant, g.into_traces())
        .await
        .unwrap();
    assert_eq!(ing.flush(false).await, 1);
    let next = committed.lock()[1].block_id;
    assert_eq!(
        next,
        block_id("topic", &tenant, &Ranges::from([(0, (2, 3))]))
    );
}

#[tokio::test]
async fn a_redone_cut_skips_blocks_already_committed_or_compacted() {
    let backend = Backend::memory();
    let tenant = TenantId::single();
    let push_all = |ing: Arc<Ingester>| async move {
        for (off, trace) in [(0, 1u8), (1, 2)] {
            let g = group_by_trace(&request(trace, 2).resource_spans);
            ing.push_logged(position(0, off), &TenantId::single(), g.into_traces())
                .await
                .unwrap();
        }
    };
    let log = Arc::new(PartitionLog::open(backend.clone(), "g", "t").await.unwrap());
    let (ing, _) = ingester(&backend, log);
    push_all(ing.clone()).await;
    assert_eq!(ing.flush(false).await, 1);
    let id = block_id("t", &tenant, &Ranges::from([(0, (0, 2))]));
    let meta = backend.get(&block::meta_key(&tenant, id)).await.unwrap();

    // The commit "did not land", and the compactor has since merged the block away.
    backend.delete("~ingest/g/t/offsets.json").await.unwrap();
    backend.delete(&block::meta_key(&tenant, id)).await.unwrap();
    backend
        .put(&block::compacted_meta_key(&tenant, id), meta)
        .await
        .unwrap();
    let log = Arc::new(PartitionLog::open(backend.clone(), "g", "t").await.unwrap());
    assert_eq!(log.pending_cut(), Some(Ranges::from([(0, (0, 2))])));
    let (ing, committed) = ingester(&backend, log.clone());
    push_all(ing.clone()).await;
    assert_eq!(ing.flush(false).await, 0, "nothing rewritten");
    assert!(committed.lock().is_empty());
    assert!(
        backend.get(&block::meta_key(&tenant, id)).await.is_err(),
        "compacted block revived"
    );
    assert_eq!(log.committed(0), Some(2), "offsets committed all the same");
}

/// A log that acknowledges or refuses, and remembers what it was given.
struct FakeLog {
    refuse: bool,
    got: Mutex<Vec<(TenantId, usize)>>,
}

#[async_trait]
impl TraceLog for FakeLog {
    async fn write(
        &self,
        tenant: &TenantId,
        traces: Vec<TraceBatch>,
    ) -> Result<(), LogUnavailable> {
        if self.refuse {
            return Err(LogUnavailable("broker down".into()));
        }
        self.got
            .lock()
            .push((tenant.clone(), traces.iter().map(|t| t.spans).sum()));
        Ok(())
    }
}

#[tokio::test]
async fn distributor_acks_only_what_the_log_acked_and_skips_the_wal() {
    let backend = Backend::memory();
    let log = Arc::new(PartitionLog::open(backend.clone(), "g", "t").await.unwrap());
    let (ing, _) = ingester(&backend, log);
    let overrides = Overrides::new(&Default::default()).unwrap();
    let tenant = TenantId::single();
    for refuse in [false, true] {
        let fake = Arc::new(FakeLog {
            refuse,
            got: Mutex::new(Vec::new()),
        });
        let d = Distributor::new(
            Some(ing.clone()),
            Arc::new(Metrics::default()),
            overrides.clone(),
        )
        .with_log(fake.clone());
        let res = d.push(&tenant, None, request(9, 3)).await;
        if refuse {
            assert!(matches!(res, Err(PushError::Log(_))), "{res:?}");
        } else {
            assert_eq!(res.unwrap().accepted, 3);
            assert_eq!(fake.got.lock().as_slice(), &[(tenant.clone(), 3)]);
        }
        // Never put in memory directly: the consumer reads it back from the log.
        assert!(ing.snapshot(&tenant).is_empty());
    }
}
