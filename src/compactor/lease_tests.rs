//! Orphan cleanup against a live writer: a flush whose upload outlives the orphan age
//! commits intact while a compactor cleans the bucket all along.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::*;
use crate::backend::faulty::{FaultAction, FaultOp, FaultRule, Faults};
use crate::config::overrides::OverridesConfig;
use crate::config::{CompactionConfig, IngesterConfig};
use crate::ingester::wal::Wal;
use crate::ingester::{BlockCommitted, Ingester};
use crate::model::{ExportTraceServiceRequest, ResourceSpans, ScopeSpans, Span};

fn request(trace: u8) -> ExportTraceServiceRequest {
    let now = block::unix_nanos_now();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: (0..3u8)
                    .map(|i| Span {
                        trace_id: vec![trace; 16],
                        span_id: vec![3, 3, 3, 3, 3, 3, 3, i],
                        name: format!("op-{i}"),
                        start_time_unix_nano: now,
                        end_time_unix_nano: now + 1_000_000,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upload_outliving_the_orphan_age_commits_intact() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::default());
    let (log, _) = Wal::open(dir.path(), metrics.clone()).unwrap();
    let faults = Faults::new();
    let backend = Backend::memory().with_faults(faults.clone());
    let committed = Arc::new(Mutex::new(Vec::<BlockMeta>::new()));
    let c = committed.clone();
    let on_commit: BlockCommitted = Arc::new(move |m| c.lock().push(m));
    let ing = Ingester::new(
        IngesterConfig {
            // The flusher refreshes its lease this often.
            flush_check_period: Duration::from_millis(50),
            ..IngesterConfig::default()
        },
        Arc::new(log),
        backend.clone(),
        BlockConfig::default(),
        metrics.clone(),
        on_commit,
    );
    let tenant = TenantId::single();
    for t in 1..=2u8 {
        let req = request(t);
        ing.push_request(&tenant, &req).await.unwrap();
    }
    // data.parquet goes up at once; the index then takes far longer than the orphan age,
    // as a long multipart upload or a stalled writer would.
    faults.add(
        FaultRule::new(FaultOp::Put, "index", FaultAction::Delay)
            .delay(Duration::from_millis(1500))
            .times(1),
    );
    let overrides = Overrides::new(&OverridesConfig::default()).unwrap();
    let cleaner = Compactor::new(
        backend.clone(),
        Arc::new(BlockList::default()),
        CompactionConfig::default(),
        BlockConfig::default(),
        overrides,
        metrics.clone(),
    );
    cleaner.set_orphan_age(Duration::from_millis(300));
    let flushing = {
        let ing = ing.clone();
        tokio::spawn(async move { ing.flush(true).await })
    };
    while !flushing.is_finished() {
        cleaner.cycle_tenant(&tenant).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(flushing.await.unwrap(), 1);
    // The refreshed lease kept the cleaner away: no upload had to start again.
    assert_eq!(
        metrics.flush_failures.get(),
        0,
        "the cleaner hit a live upload"
    );
    let meta = committed.lock()[0].clone();
    let keys = backend.list(tenant.as_str()).await.unwrap();
    let in_block = |file: &str| {
        keys.iter()
            .any(|k| k == &format!("{}/{}/{file}", tenant.as_str(), meta.block_id))
    };
    for file in [block::META_FILE, "data.parquet", "index", "tags.json"] {
        assert!(in_block(file), "{file} missing after cleanup: {keys:?}");
    }
    assert!(
        !in_block(block::WRITING_FILE),
        "lease left behind: {keys:?}"
    );
    // The whole block reads back.
    let data = backend
        .get(&block::data_key(&tenant, meta.block_id))
        .await
        .unwrap();
    assert_eq!(data.len() as u64, meta.size);

    // An abandoned folder (no lease refresh, nothing changes) is still cleaned: once seen,
    // then again after the orphan age.
    let stale = format!("{}/{}", tenant.as_str(), uuid::Uuid::new_v4());
    let key = format!("{stale}/data.parquet");
    backend
        .put(&key, bytes::Bytes::from_static(b"x"))
        .await
        .unwrap();
    cleaner.cycle_tenant(&tenant).await.unwrap();
    assert_eq!(backend.list(&stale).await.unwrap(), vec![key]);
    tokio::time::sleep(Duration::from_millis(350)).await;
    cleaner.cycle_tenant(&tenant).await.unwrap();
    assert!(backend.list(&stale).await.unwrap().is_empty());
}
