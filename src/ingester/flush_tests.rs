//! Tests of cutting and flushing: durability order, staging, budget, slices.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::super::wal::{self, Wal};
use super::super::{BlockCommitted, IngestError, IngestLog, Ingester};
use crate::backend::faulty::{FaultAction, FaultOp, FaultRule, Faults};
use crate::backend::Backend;
use crate::block::{BlockConfig, BlockMeta};
use crate::config::IngesterConfig;
use crate::metrics::Metrics;
use crate::model::{ExportTraceServiceRequest, TenantId};

/// A request of `spans` spans of one trace (the ingester tests' builder).
fn request(trace: u8, spans: u8) -> ExportTraceServiceRequest {
    super::super::tests::request(trace, 0..spans)
}

/// Records WAL truncations into the same log as the bucket's puts and fsyncs.
struct RecordingLog {
    wal: Wal,
    events: crate::backend::SyncLog,
    /// Where cuts stage their blocks (`None`: in memory).
    scratch: Option<std::path::PathBuf>,
}

#[async_trait::async_trait]
impl IngestLog for RecordingLog {
    async fn append(&self, record: bytes::Bytes) -> Result<u64, wal::WalError> {
        self.wal.append(record).await
    }
    async fn rotate(&self, _tenants: &[TenantId]) -> Result<u64, wal::WalError> {
        self.wal.rotate().await
    }
    async fn truncate_before(&self, segment: u64) -> Result<(), wal::WalError> {
        self.events.lock().push(format!("truncate {segment}"));
        IngestLog::truncate_before(&self.wal, segment).await
    }
    async fn mark_flushed(
        &self,
        boundary: u64,
        traces: &[(TenantId, Vec<crate::model::TraceId>)],
    ) -> Result<(), wal::WalError> {
        self.events.lock().push(format!("mark {boundary}"));
        self.wal.mark_flushed(boundary, traces).await
    }
    fn scratch_dir(&self) -> Option<&std::path::Path> {
        self.scratch.as_deref()
    }
    fn opened_segment(&self) -> Option<u64> {
        Some(self.wal.opened_segment())
    }
}

/// On the local bucket every block file and each directory above it is fsynced before
/// meta.json is put, and meta.json (and its directory) before the WAL is truncated: a
/// power loss after the truncation cannot take acknowledged spans with it.
#[tokio::test]
async fn local_block_files_are_fsynced_before_commit_and_wal_truncation() {
    let wal_dir = tempfile::tempdir().unwrap();
    let bucket = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::default());
    let (wal, _) = Wal::open(wal_dir.path(), metrics.clone()).unwrap();
    let events = crate::backend::SyncLog::default();
    let backend = Backend::from_config(&crate::config::TraceStorageConfig {
        local: crate::config::LocalConfig {
            path: bucket.path().to_owned(),
        },
        ..Default::default()
    })
    .unwrap()
    .recording_syncs(events.clone());
    // data.parquet staged next to the WAL and uploaded from there.
    let log = RecordingLog {
        wal,
        events: events.clone(),
        scratch: Some(wal_dir.path().to_owned()),
    };
    let ing = Ingester::new(
        IngesterConfig::default(),
        Arc::new(log),
        backend,
        BlockConfig::default(),
        metrics,
        Arc::new(|_| {}),
    );
    let tenant = TenantId::single();
    for t in 1..=3u8 {
        let req = request(t, 4);
        ing.push_request(&tenant, &req).await.unwrap();
    }
    assert_eq!(ing.flush(true).await, 1);

    let ev = events.lock().clone();
    let pos = |e: &str| {
        ev.iter()
            .position(|x| x == e)
            .unwrap_or_else(|| panic!("no `{e}` in {ev:#?}"))
    };
    let meta_key = ev
        .iter()
        .find_map(|e| e.strip_prefix("put ").filter(|k| k.ends_with("/meta.json")))
        .expect("meta.json put")
        .to_owned();
    let block_dir = meta_key.strip_suffix("/meta.json").unwrap().to_owned();
    let commit = pos(&format!("put {meta_key}"));
    let truncate = ev
        .iter()
        .position(|e| e.starts_with("truncate "))
        .expect("wal truncated");
    let files: Vec<String> = ev[..commit]
        .iter()
        .filter_map(|e| e.strip_prefix("put ").map(str::to_owned))
        .collect();
    assert!(
        files.iter().any(|f| f.ends_with("data.parquet")),
        "{files:?}"
    );
    for f in &files {
        assert!(
            pos(&format!("fsync {f}")) < commit,
            "{f} synced after commit"
        );
    }
    for d in [block_dir.as_str(), tenant.as_str(), "."] {
        let first_sync = ev[..commit].iter().position(|e| *e == format!("fsync {d}"));
        assert!(
            first_sync.is_some(),
            "directory {d} not synced before commit"
        );
    }
    assert!(pos(&format!("fsync {meta_key}")) < truncate);
    let last_dir_sync = ev
        .iter()
        .rposition(|e| *e == format!("fsync {block_dir}"))
        .unwrap();
    assert!(
        commit < last_dir_sync && last_dir_sync < truncate,
        "meta.json's directory entry not synced before the wal truncation: {ev:#?}"
    );
}

/// One tenant's block cannot be encoded (undecodable data): the other tenant's block
/// commits, the failed traces stay in memory and are carried over to the current
/// segment, and the old segment is deleted instead of being pinned for everyone.
#[tokio::test]
async fn a_failing_tenant_does_not_pin_the_wal_for_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::default());
    let (log, _) = Wal::open(dir.path(), metrics.clone()).unwrap();
    let ing = Ingester::new(
        IngesterConfig::default(),
        Arc::new(log),
        Backend::memory(),
        BlockConfig::default(),
        metrics,
        Arc::new(|_| {}),
    );
    let good = TenantId::new("good").unwrap();
    let req = request(1, 4);
    ing.push_request(&good, &req).await.unwrap();
    let bad = TenantId::new("bad").unwrap();
    let garbage = bytes::Bytes::from_static(b"\xff\xff\xff\xff");
    let bad_id = crate::model::TraceId([9; 16]);
    // A record that decodes to nothing, as a corrupt export would leave behind.
    ing.push_logged(
        wal::encode_payload(&bad, &garbage),
        &bad,
        vec![crate::model::TraceBatch {
            id: bad_id,
            data: crate::model::Fragments::from_encoded_unchecked(garbage.clone()),
            spans: 1,
        }],
    )
    .await
    .unwrap();

    assert_eq!(ing.flush(true).await, 1, "the good tenant's block commits");
    let segments: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".wal"))
        .collect();
    assert_eq!(segments.len(), 1, "the cut's old segment was deleted");
    assert!(
        ing.live_trace_bytes(&bad, &bad_id) > 0,
        "failed traces kept"
    );
    // ... and durable in the remaining segment.
    let (records, _) = wal::read_only(dir.path()).unwrap();
    let tenants: Vec<_> = records
        .iter()
        .map(|r| wal::decode_payload(&r.payload).unwrap())
        .collect();
    assert_eq!(tenants.len(), 1);
    assert_eq!(tenants[0].0, bad);
    assert_eq!(tenants[0].1, garbage);
}

/// Puts fail (errors, then timeouts) for a while: the flush retries, commits exactly
/// one block under one ID, and the WAL segments stay until that commit.
#[tokio::test]
async fn flush_retries_failing_puts_and_keeps_the_wal_until_commit() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::default());
    let (log, _) = Wal::open(dir.path(), metrics.clone()).unwrap();
    let faults = Faults::new();
    let backend = Backend::memory().with_faults(faults.clone());
    let committed = Arc::new(Mutex::new(Vec::<BlockMeta>::new()));
    let c = committed.clone();
    let on_commit: BlockCommitted = Arc::new(move |m| c.lock().push(m));
    let ing = Ingester::new(
        IngesterConfig::default(),
        Arc::new(log),
        backend.clone(),
        BlockConfig::default(),
        metrics.clone(),
        on_commit,
    );
    let tenant = TenantId::single();
    for t in 1..=3u8 {
        let req = request(t, 4);
        ing.push_request(&tenant, &req).await.unwrap();
    }
    faults.add(FaultRule::new(FaultOp::Put, "", FaultAction::Error).times(2));
    faults.add(
        FaultRule::new(FaultOp::Put, "meta.json", FaultAction::Timeout)
            .delay(Duration::from_millis(20))
            .times(1),
    );
    let wal_files = || {
        std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".wal"))
            .count()
    };
    let flushing = {
        let ing = ing.clone();
        tokio::spawn(async move { ing.flush(true).await })
    };
    // While the store fails, nothing is committed and the first segment is kept.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(committed.lock().is_empty());
    assert_eq!(
        wal_files(),
        2,
        "the cut's old segment must stay until the commit"
    );
    assert_eq!(flushing.await.unwrap(), 1);
    assert_eq!(faults.injected(), 3);
    assert_eq!(metrics.flush_failures.get(), 3);
    let metas = committed.lock().clone();
    assert_eq!(metas.len(), 1);
    assert_eq!(metas[0].total_objects, 3);
    let blocks = backend.list_dirs(Some(tenant.as_str())).await.unwrap();
    assert_eq!(
        blocks,
        vec![metas[0].block_id.to_string()],
        "retries wrote one block"
    );
    assert_eq!(wal_files(), 1, "old segment deleted after the commit");
}

/// A local disk that cannot take the staged block (full, read-only) does not stop
/// cuts, which are what free the WAL's disk: the block is encoded in memory instead.
#[tokio::test]
async fn a_cut_that_cannot_stage_on_disk_encodes_in_memory() {
    let wal_dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::default());
    let (wal, _) = Wal::open(wal_dir.path(), metrics.clone()).unwrap();
    // A directory under a regular file cannot be created.
    let not_a_dir = wal_dir.path().join("file");
    std::fs::write(&not_a_dir, b"x").unwrap();
    let log = RecordingLog {
        wal,
        events: Default::default(),
        scratch: Some(not_a_dir.join("scratch")),
    };
    let backend = Backend::memory();
    let ing = Ingester::new(
        IngesterConfig::default(),
        Arc::new(log),
        backend.clone(),
        BlockConfig::default(),
        metrics.clone(),
        Arc::new(|_| {}),
    );
    let tenant = TenantId::single();
    for t in 1..=3u8 {
        ing.push_request(&tenant, &request(t, 4)).await.unwrap();
    }
    assert_eq!(ing.flush(true).await, 1);
    assert_eq!(metrics.flush_failures.get(), 0);
    let keys = backend.list(tenant.as_str()).await.unwrap();
    let data = keys
        .iter()
        .find(|k| k.ends_with("/data.parquet"))
        .expect("data.parquet uploaded");
    let meta_key = data.replace("data.parquet", "meta.json");
    let meta = BlockMeta::from_bytes(&backend.get(&meta_key).await.unwrap()).unwrap();
    assert_eq!(meta.total_objects, 3);
    assert_eq!(
        backend.get(data).await.unwrap().len() as u64,
        meta.size,
        "the whole block was uploaded"
    );
}

/// Traces being written into a block still count against `max_live_bytes` until
/// committed: memory stays near the budget that names it.
#[tokio::test]
async fn traces_being_flushed_count_against_the_live_budget() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::default());
    let (log, _) = Wal::open(dir.path(), metrics.clone()).unwrap();
    let faults = Faults::new();
    let backend = Backend::memory().with_faults(faults.clone());
    let tenant = TenantId::single();
    let one = |t: u8| {
        let req = request(t, 20);
        let g = crate::model::group_by_trace(&req.resource_spans);
        (prost::Message::encode_to_vec(&req), g)
    };
    let (raw1, g1) = one(1);
    let size: u64 = g1
        .traces()
        .iter()
        .map(|t| super::super::trace_bytes(&t.data))
        .sum();
    let ing = Ingester::new(
        IngesterConfig {
            // One trace fits, two do not.
            max_live_bytes: size * 3 / 2,
            ..IngesterConfig::default()
        },
        Arc::new(log),
        backend,
        BlockConfig::default(),
        metrics.clone(),
        Arc::new(|_| {}),
    );
    ing.push(&tenant, &raw1, g1).await.unwrap();
    // The upload fails twice, so the flush holds the trace for a while.
    faults.add(FaultRule::new(FaultOp::Put, "", FaultAction::Error).times(2));
    let flushing = {
        let ing = ing.clone();
        tokio::spawn(async move { ing.flush(true).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(metrics.live_bytes.get(), 0, "the cut emptied the head");
    assert_eq!(metrics.flushing_bytes.get(), size);
    // The allocator's share and the cut's working set count too (its row groups, capped
    // at 5/32 of the budget).
    assert_eq!(
        ing.held_bytes(),
        size + size / super::super::ALLOCATOR_SHARE + size * 3 / 2 * 5 / 32
    );
    // The block is staged next to the WAL while its upload is retried.
    let staged = || {
        std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                name.to_str().unwrap().starts_with(super::SCRATCH_PREFIX)
            })
            .count()
    };
    assert_eq!(staged(), 1);
    let (raw2, g2) = one(2);
    let err = ing.push(&tenant, &raw2, g2).await.unwrap_err();
    assert!(
        matches!(err, IngestError::LiveBytesExceeded { .. }),
        "{err}"
    );
    assert_eq!(flushing.await.unwrap(), 1);
    assert_eq!(metrics.flushing_bytes.get(), 0);
    assert_eq!(ing.held_bytes(), 0);
    assert_eq!(staged(), 0, "the staged block is deleted once committed");
    let (raw2, g2) = one(2);
    ing.push(&tenant, &raw2, g2).await.unwrap();
}

/// A backfilled trace (a week old) and a far-future one: the committed block's times
/// are those of its ingestion (with the slack), so retention neither deletes it at the
/// next cycle nor keeps it forever.
#[tokio::test]
async fn block_times_are_clamped_to_ingestion_time() {
    const S: u64 = 1_000_000_000;
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::default());
    let (log, _) = Wal::open(dir.path(), metrics.clone()).unwrap();
    let backend = Backend::memory();
    let committed = Arc::new(Mutex::new(Vec::<BlockMeta>::new()));
    let c = committed.clone();
    let on_commit: BlockCommitted = Arc::new(move |m| c.lock().push(m));
    let cfg = IngesterConfig::default();
    let ing = Ingester::new(
        cfg.clone(),
        Arc::new(log),
        backend.clone(),
        BlockConfig::default(),
        metrics,
        on_commit,
    );
    let tenant = TenantId::single();
    let before = crate::block::unix_nanos_now();
    let shifted = |trace: u8, at: u64| {
        let mut req = request(trace, 2);
        for s in &mut req.resource_spans[0].scope_spans[0].spans {
            s.start_time_unix_nano = at;
            s.end_time_unix_nano = at + S;
        }
        req
    };
    for req in [
        shifted(1, before - 7 * 86_400 * S),
        shifted(2, before + 365 * 86_400 * S),
    ] {
        ing.push_request(&tenant, &req).await.unwrap();
    }
    assert_eq!(ing.flush(true).await, 1);
    let after = crate::block::unix_nanos_now();
    let meta = committed.lock()[0].clone();
    let held =
        (cfg.max_trace_live + cfg.max_block_duration + cfg.flush_check_period).as_nanos() as u64;
    let slack = cfg.ingestion_time_range_slack.as_nanos() as u64;
    assert!(
        meta.start_time >= before - held - slack && meta.start_time <= after,
        "{meta:?}"
    );
    assert!(
        meta.end_time >= meta.start_time && meta.end_time <= after + slack,
        "{meta:?}"
    );
    // The committed meta.json says the same.
    let stored = backend
        .get(&crate::block::meta_key(&tenant, meta.block_id))
        .await
        .unwrap();
    assert_eq!(BlockMeta::from_bytes(&stored).unwrap(), meta);
}
