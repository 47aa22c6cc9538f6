//! Cutting the head into blocks and committing them to the backend.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task;
use tracing::{debug, error, info, warn};
use uuid::Uuid;

use super::{Cut, Flushing, Ingester};
use crate::backend::scratch::{self, ScratchError, ScratchFile};
use crate::backend::BackendError;
use crate::block::{
    self, BlockConfig, BlockError, BlockMeta, BlockParts, SlicePlan, SlicedTrace, TagCollector,
    TagSummary, TraceInput,
};
use crate::metrics::{Stage, StageTimer};
use crate::model::{combine, Fragments, TenantId, TraceId};

/// Called with the meta of every block the ingester commits, so queriers in this process
/// see it at once instead of at the next blocklist poll.
pub(crate) type BlockCommitted = Arc<dyn Fn(BlockMeta) + Send + Sync>;

#[derive(Debug, thiserror::Error)]
enum FlushError {
    #[error("block encoding failed: {0}")]
    Encode(#[from] BlockError),
    #[error("block upload failed: {0}")]
    Upload(#[from] BackendError),
    #[error("cannot decode a live trace: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("block encoding task failed: {0}")]
    Join(#[from] task::JoinError),
    #[error(transparent)]
    Scratch(#[from] ScratchError),
    #[error(transparent)]
    LeaseLost(#[from] crate::backend::lease::LeaseLost),
    #[error("every partition of the cut moved to another node while it was written")]
    Abandoned,
}

const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Names a cut's staged data.parquet in the log's directory (see [`ScratchFile`]).
const SCRATCH_PREFIX: &str = "vivace-cut-";

/// A cut block's data.parquet: staged in a file next to the WAL, or in memory when the log
/// has no local directory (the Kafka ingest log).
enum BlockData {
    Memory(bytes::Bytes),
    /// Deleted when dropped.
    File(ScratchFile),
}

impl Ingester {
    /// Checks every `flush_check_period` whether a block is due and flushes it. Runs until
    /// the task is dropped; stopping it at any await point loses nothing, because WAL
    /// segments are only deleted after their data is committed.
    pub(crate) async fn run_flush_loop(self: Arc<Self>) {
        if let Some(dir) = self.log.scratch_dir().map(std::path::Path::to_owned) {
            // Blocks a killed process was staging: their traces are still in the WAL.
            match task::spawn_blocking(move || scratch::remove_leftovers(&dir, SCRATCH_PREFIX))
                .await
            {
                Ok(0) => {}
                Ok(n) => info!(files = n, "leftover cut scratch files deleted"),
                Err(e) => warn!(error = %e, "cannot clean the cut scratch files"),
            }
        }
        let mut tick = tokio::time::interval(self.cfg.flush_check_period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match self.cut_due(Instant::now()) {
                super::CutDue::No => {}
                super::CutDue::Idle => {
                    self.flush(false).await;
                }
                super::CutDue::Pressure => {
                    self.metrics.pressure_cuts.inc();
                    self.flush(true).await;
                }
            }
        }
    }

    /// Cuts the head (everything when `force`), writes a block per tenant, and then deletes
    /// the WAL segments those blocks made redundant. Returns the number of blocks written.
    pub(crate) async fn flush(&self, force: bool) -> usize {
        self.flush_inner(force, true).await
    }

    /// [`Ingester::flush`]; with `truncate` false no WAL segment is deleted (during replay,
    /// when older segments are still to be read).
    pub(super) async fn flush_inner(&self, force: bool, truncate: bool) -> usize {
        let cut = match self.cut(force).await {
            Ok(c) => c,
            Err(e) => {
                self.metrics.flush_failures.inc();
                warn!(error = %e, "cannot cut block, will retry");
                return 0;
            }
        };
        let Cut {
            taken,
            boundary,
            carry,
        } = cut;

        let Some(boundary) = boundary else {
            return 0;
        };
        // Traces kept in memory must be durable in a newer segment before old ones go.
        self.carry_over(carry).await;

        let mut blocks = 0;
        let mut failed = Vec::new();
        let ids = self.flushing_blocks.read().clone();
        for tenant in taken.keys() {
            // Chosen at the cut (the log's deterministic ID when it names one), so readers
            // can tell which block holds the traces still in `flushing`.
            let id = ids.get(tenant).copied().unwrap_or_else(Uuid::new_v4);
            if self.log.block_id(tenant, boundary).is_some() {
                // A deterministic ID names the same data: a cut redone after a crash skips
                // blocks already committed, and never revives one the compactor merged.
                match self.existing_block(tenant, id).await {
                    Some(Some(meta)) => {
                        info!(tenant = %tenant, block = %id, "block of a redone cut already committed");
                        blocks += 1;
                        (self.on_commit)(meta);
                        continue;
                    }
                    Some(None) => {
                        info!(tenant = %tenant, block = %id, "block of a redone cut already compacted");
                        continue;
                    }
                    None => {}
                }
            }
            match self
                .write_block_with_retry(tenant, id, boundary, taken.clone())
                .await
            {
                Ok(meta) => {
                    blocks += 1;
                    (self.on_commit)(meta);
                }
                Err(FlushError::Abandoned) => {
                    // Their new holders read these records again from the committed
                    // offsets: writing them now would store them twice.
                    info!(tenant = %tenant, block = %id, "block of a cut whose partitions moved away dropped");
                    self.metrics.blocks_abandoned.inc();
                }
                Err(e) => {
                    // Not retryable (a bug or corrupt data): keep the WAL so nothing is lost.
                    error!(tenant = %tenant, error = %e, "cannot encode block, keeping its wal segments");
                    failed.push(tenant.clone());
                }
            }
        }
        let all_committed = failed.is_empty();
        let mut failed_carry = super::Carry::default();
        {
            // Under the head lock, like every move between head and flushing: committed
            // traces are in the block list already, failed ones go back into the head (to
            // stay readable and be tried again at the next cut).
            let mut head = self.head.lock();
            if !all_committed {
                let now = Instant::now();
                for tenant in &failed {
                    failed_carry.extend(super::carry_records(
                        tenant,
                        taken[tenant].values(),
                        super::CARRY_RECORD_BYTES,
                    ));
                    let traces = taken[tenant]
                        .iter()
                        .map(|(id, data)| super::TraceBatch {
                            id: *id,
                            data: data.clone(),
                            spans: 0,
                        })
                        .collect();
                    head.insert(tenant, traces, now);
                }
                self.update_gauges(&head);
            }
            *self.flushing.write() = Arc::new(HashMap::new());
            self.metrics.flushing_bytes.set(0);
            *self.flushing_blocks.write() = Arc::new(HashMap::new());
        }
        // A tenant whose block cannot be written is carried over like a live trace, so its
        // failure does not pin the old segments (and the disk) for every other tenant.
        if !all_committed {
            self.carry_over(failed_carry).await;
        }
        if truncate {
            if let Err(e) = self.log.truncate_before(boundary).await {
                warn!(error = %e, "cannot delete old wal segments");
            }
        }
        blocks
    }

    /// Whether block `id` is already committed (`Some(Some(meta))`) or compacted away
    /// (`Some(None)`); `None` when it is not there or the bucket cannot tell (then it is
    /// written again, under the same ID).
    async fn existing_block(&self, tenant: &TenantId, id: Uuid) -> Option<Option<BlockMeta>> {
        match self.backend.get(&block::meta_key(tenant, id)).await {
            Ok(b) => return BlockMeta::from_bytes(&b).ok().map(Some),
            Err(BackendError::NotFound(_)) => {}
            Err(_) => return None,
        }
        match self
            .backend
            .get(&block::compacted_meta_key(tenant, id))
            .await
        {
            Ok(_) => Some(None),
            Err(_) => None,
        }
    }

    /// Re-appends records of traces that stay in memory to the current WAL segment,
    /// retrying until the WAL takes them: the old segments are deleted only after.
    async fn carry_over(&self, carry: super::Carry) {
        let mut backoff = Duration::from_millis(200);
        for rec in carry.records() {
            while let Err(e) = self.log.append(rec.clone()).await {
                self.metrics.flush_failures.inc();
                warn!(error = %e, "cannot carry live traces over to the new wal segment, retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    async fn write_block_with_retry(
        &self,
        tenant: &TenantId,
        block_id: Uuid,
        boundary: u64,
        taken: Arc<Flushing>,
    ) -> Result<BlockMeta, FlushError> {
        if self.log.abandoned(boundary) {
            return Err(FlushError::Abandoned);
        }
        let started = Instant::now();
        let cfg = self.block_cfg.clone();
        let t = tenant.clone();
        let metrics = self.metrics.clone();
        // With a local directory the block's data.parquet streams to a file there and is
        // uploaded from it: a cut then holds one row group of encoding, not the whole block.
        let scratch = self
            .log
            .scratch_dir()
            .map(|dir| ScratchFile::new(dir, SCRATCH_PREFIX, Uuid::new_v4()));
        // Parquet encoding is CPU-bound: keep it off the async executor.
        let encoded = task::spawn_blocking(move || {
            // Charged as it goes (every 1,024 traces), so a scrape during a long cut sees it.
            let mut cpu = metrics.stage_cpu.start(Stage::BlockEncode);
            let traces = taken.get(&t);
            let ids = sliced_ids(traces, &cfg);
            if let Some(file) = scratch {
                // The guard moves in here, so a failed encode deletes its file.
                match encode_cut_to_file(&t, block_id, traces, &ids, &cfg, &mut cpu, &file) {
                    Ok((parts, tags)) => return Ok((parts, BlockData::File(file), tags)),
                    // A full or failing local disk must not stop cuts: they are what frees
                    // the WAL's disk. The block is encoded again, in memory.
                    Err(e) => {
                        warn!(tenant = %t, error = %e, "cannot stage block on local disk, encoding it in memory")
                    }
                }
            }
            let mut tags = TagCollector::default();
            let inputs = cut_inputs(traces, &ids, &mut tags, &mut cpu);
            let b = block::encode_block_sliced(&t, block_id, 0, inputs, &cfg)?;
            let parts = BlockParts {
                meta: b.meta,
                blooms: b.blooms,
                index: b.index,
            };
            Ok::<_, FlushError>((parts, BlockData::Memory(b.data), tags.finish()))
        })
        .await??;
        let (mut parts, data, tags) = encoded;
        self.clamp_times(tenant, &mut parts.meta);
        let tags = bytes::Bytes::from(tags.to_bytes());
        let r = self
            .upload_with_retry(tenant, boundary, &parts, &data, &tags)
            .await;
        // Unlinking the staged file is blocking I/O.
        if let Err(e) = task::spawn_blocking(move || drop(data)).await {
            warn!(tenant = %tenant, error = %e, "cut scratch file clean-up failed");
        }
        r?;
        self.metrics.blocks_flushed.inc();
        self.metrics.traces_flushed.add(parts.meta.total_objects);
        info!(
            tenant = %tenant,
            block = %parts.meta.block_id,
            traces = parts.meta.total_objects,
            bytes = parts.meta.size,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "block flushed"
        );
        Ok(parts.meta)
    }

    async fn upload_with_retry(
        &self,
        tenant: &TenantId,
        boundary: u64,
        parts: &BlockParts,
        data: &BlockData,
        tags: &bytes::Bytes,
    ) -> Result<(), FlushError> {
        let mut backoff = Duration::from_millis(200);
        loop {
            // Checked before every attempt: a node cut off from the bucket retries here
            // until it is back, by when its partitions may have moved.
            if self.log.abandoned(boundary) {
                return Err(FlushError::Abandoned);
            }
            match self.upload(tenant, parts, data, tags).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    self.metrics.flush_failures.inc();
                    warn!(tenant = %tenant, block = %parts.meta.block_id, error = %e, "block upload failed, retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Clamps the block's times to when its spans can have been ingested (Tempo's
    /// `ingestion_time_range_slack`). A trace taken now arrived at most the longest time a
    /// trace waits in memory ago: it lives up to `max_trace_live` (or idles for
    /// `trace_idle_period`), then waits up to `max_block_duration` plus one check for the cut.
    fn clamp_times(&self, tenant: &TenantId, meta: &mut BlockMeta) {
        let now = block::unix_nanos_now();
        let held = self.cfg.max_trace_live.max(self.cfg.trace_idle_period)
            + self.cfg.max_block_duration
            + self.cfg.flush_check_period;
        let earliest = now.saturating_sub(u64::try_from(held.as_nanos()).unwrap_or(u64::MAX));
        let slack = u64::try_from(self.cfg.ingestion_time_range_slack.as_nanos()).unwrap_or(0);
        let (start, end) = (meta.start_time, meta.end_time);
        if meta.clamp_to_ingestion(earliest, now, slack) {
            warn!(
                tenant = %tenant,
                block = %meta.block_id,
                span_start = start,
                span_end = end,
                start = meta.start_time,
                end = meta.end_time,
                "block times outside the ingestion time range (backfill or client clock skew): clamped"
            );
        }
    }

    async fn upload(
        &self,
        tenant: &TenantId,
        b: &BlockParts,
        data: &BlockData,
        tags: &bytes::Bytes,
    ) -> Result<(), FlushError> {
        let id = b.meta.block_id;
        // The lease first: while it is refreshed, the compactor's orphan cleanup leaves
        // this folder alone however long the upload takes.
        let lease = self
            .backend
            .hold_lease(&block::writing_key(tenant, id), self.cfg.flush_check_period)
            .await?;
        // In stages, so a flush interrupted at any point (crash, kill -9, a store that stops
        // answering) leaves a prefix of this order behind and never a meta.json without the
        // rest: data.parquet, then the bloom shards, then index and tags.json, then
        // meta.json. A retry re-puts every object under the same block ID, so an interrupted
        // and retried flush still commits one block. The fault-injection tests stop a flush
        // between these stages.
        let data_key = block::data_key(tenant, id);
        match data {
            BlockData::Memory(bytes) => self.backend.put(&data_key, bytes.clone()).await?,
            BlockData::File(file) => self.backend.put_file(&data_key, file.path()).await?,
        }
        futures::future::try_join_all(b.blooms.iter().enumerate().map(|(i, bloom)| {
            let key = block::bloom_key(tenant, id, i as u32);
            async move { self.backend.put(&key, bloom.clone()).await }
        }))
        .await?;
        let (index_key, tags_key) = (block::index_key(tenant, id), block::tags_key(tenant, id));
        futures::future::try_join(
            self.backend.put(&index_key, b.index.clone()),
            self.backend.put(&tags_key, tags.clone()),
        )
        .await?;
        // A lost lease means a cleaner may have deleted objects written above: upload again
        // (the caller retries) rather than commit a block with holes.
        lease.check().await?;
        // meta.json last: its presence is the commit point.
        let meta = b.meta.to_bytes();
        self.backend
            .put(&block::meta_key(tenant, id), meta.into())
            .await?;
        lease.release().await;
        debug!(tenant = %tenant, block = %id, "block committed");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
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
        fn scratch_dir(&self) -> Option<&std::path::Path> {
            self.scratch.as_deref()
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
        // at an eighth of the budget).
        assert_eq!(
            ing.held_bytes(),
            size + size / super::super::ALLOCATOR_SHARE + size * 3 / 2 / 8
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
        let held = (cfg.max_trace_live + cfg.max_block_duration + cfg.flush_check_period).as_nanos()
            as u64;
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
}

/// The cut's traces for the block encoder, in `ids` order, each decoded only when the
/// encoder pulls it (so only the row group being built is held decoded); the tag summary
/// is collected from the same decoded traces in the same pass.
fn cut_inputs<'a, 'm>(
    traces: Option<&'a HashMap<TraceId, Fragments>>,
    ids: &'a [(u32, &'a TraceId)],
    tags: &'a mut TagCollector,
    cpu: &'a mut StageTimer<'m>,
) -> impl Iterator<Item = Result<SlicedTrace, BlockError>> + use<'a, 'm> {
    ids.iter().enumerate().filter_map(move |(i, &(slice, id))| {
        if i % 1024 == 1023 {
            cpu.charge();
        }
        let data = traces?.get(id)?;
        Some(
            data.decode()
                .map(|batches| {
                    let batches = combine(batches);
                    tags.add_trace(&batches);
                    SlicedTrace {
                        slice,
                        trace: TraceInput { id: *id, batches },
                    }
                })
                .map_err(|e| BlockError::Input(format!("trace {id}: {e}"))),
        )
    })
}

/// Encodes a cut's block with its data.parquet streamed to `file`.
fn encode_cut_to_file(
    tenant: &TenantId,
    block_id: Uuid,
    traces: Option<&HashMap<TraceId, Fragments>>,
    ids: &[(u32, &TraceId)],
    cfg: &BlockConfig,
    cpu: &mut StageTimer<'_>,
    file: &ScratchFile,
) -> Result<(BlockParts, TagSummary), FlushError> {
    let mut sink = ScratchFile::create(file.path())?;
    let mut tags = TagCollector::default();
    let inputs = cut_inputs(traces, ids, &mut tags, cpu);
    let parts = block::encode_block_sliced_into(tenant, block_id, 0, inputs, cfg, &mut sink)?;
    std::io::Write::flush(&mut sink).map_err(|source| ScratchError {
        path: file.path().to_owned(),
        source,
    })?;
    Ok((parts, tags.finish()))
}

/// The IDs of a cut's traces in block order: by time slice of their earliest span (about
/// one slice per row group of data), by ID within a slice. The fragments' byte sizes weigh
/// the slices, so no trace is decoded to plan them.
fn sliced_ids<'a>(
    traces: Option<&'a HashMap<TraceId, Fragments>>,
    cfg: &BlockConfig,
) -> Vec<(u32, &'a TraceId)> {
    let Some(traces) = traces else {
        return Vec::new();
    };
    let bytes: u64 = traces.values().map(|f| f.len() as u64).sum();
    let plan = if bytes > cfg.newest_slice_bytes() as u64 && cfg.max_time_slices > 1 {
        let mut samples: Vec<(u64, u64)> = traces
            .values()
            .map(|f| (f.start(), f.len() as u64))
            .collect();
        SlicePlan::newest_small(
            &mut samples,
            bytes,
            cfg.newest_slice_bytes(),
            cfg.max_time_slices,
        )
    } else {
        SlicePlan::single()
    };
    let mut ids: Vec<(u32, &TraceId)> = traces
        .iter()
        .map(|(id, f)| (plan.slice_of(f.start()), id))
        .collect();
    ids.sort_unstable();
    ids
}

#[cfg(test)]
mod slice_tests {
    use std::collections::HashMap;

    use crate::block::BlockConfig;
    use crate::model::{Fragments, Span, TraceId};

    fn fragment(start: u64) -> Fragments {
        let span = Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            start_time_unix_nano: start,
            end_time_unix_nano: start + 10,
            name: "x".repeat(200),
            ..Span::default()
        };
        let mut f = Fragments::default();
        f.push(None, "", None, "", &[&span]);
        f
    }

    /// A cut over several row groups of data goes in time slices: by start, ID order inside.
    #[test]
    fn a_large_cut_is_ordered_by_time_slice_then_id() {
        let traces: HashMap<TraceId, Fragments> = (0..400u32)
            .map(|i| {
                let mut id = [0u8; 16];
                id[..4].copy_from_slice(&(i.wrapping_mul(2_654_435_761)).to_be_bytes());
                (TraceId(id), fragment(1_000 + u64::from(i) * 1_000))
            })
            .collect();
        let bytes: usize = traces.values().map(Fragments::len).sum();
        let cfg = BlockConfig {
            // Newest slices of a quarter of the data.
            row_group_size_bytes: 4 * (bytes / 4 + 1),
            ..BlockConfig::default()
        };
        let ids = super::sliced_ids(Some(&traces), &cfg);
        assert_eq!(ids.len(), 400);
        // Four units of data: the newest two slices one unit each, the oldest the rest.
        let mut per = std::collections::BTreeMap::<u32, usize>::new();
        for (s, _) in &ids {
            *per.entry(*s).or_default() += 1;
        }
        let per: Vec<usize> = per.into_values().collect();
        assert_eq!(per.len(), 3, "{per:?}");
        assert!(
            per[0].abs_diff(200) <= 1 && per[2].abs_diff(100) <= 1,
            "{per:?}"
        );
        for w in ids.windows(2) {
            assert!(w[0] < w[1], "not (slice, id) ascending");
            // A later slice never holds an earlier start.
            if w[0].0 < w[1].0 {
                assert!(traces[w[0].1].start() < traces[w[1].1].start());
            }
        }
        // Small cuts stay one slice, sorted by ID.
        let one = super::sliced_ids(Some(&traces), &BlockConfig::default());
        assert!(one.iter().all(|(s, _)| *s == 0));
        assert!(one.windows(2).all(|w| w[0].1 < w[1].1));
    }
}
