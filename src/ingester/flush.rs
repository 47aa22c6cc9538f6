//! Cutting the head into blocks and committing them to the backend.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task;
use tracing::{debug, error, info, warn};
use uuid::Uuid;

use super::encode::{encode_cut, encode_cut_to_file, sliced_ids};
use super::{Cut, Flushing, Ingester};
use crate::backend::scratch::{self, ScratchError, ScratchFile};
use crate::backend::BackendError;
use crate::block::{self, BlockError, BlockMeta, BlockParts};
use crate::metrics::Stage;
use crate::model::{TenantId, TraceId};

/// Called with the meta of every block the ingester commits, so queriers in this process
/// see it at once instead of at the next blocklist poll.
pub(crate) type BlockCommitted = Arc<dyn Fn(BlockMeta) + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub(super) enum FlushError {
    #[error("block encoding failed: {0}")]
    Encode(#[from] BlockError),
    #[error("block upload failed: {0}")]
    Upload(#[from] BackendError),
    #[error("cannot decode a live trace: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error(transparent)]
    Encoder(#[from] super::encoder::EncoderError),
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
            keep_from,
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
                        taken[tenant].values().map(|l| &l.data),
                        super::CARRY_RECORD_BYTES,
                    ));
                    let traces = taken[tenant]
                        .iter()
                        .map(|(id, live)| super::TraceBatch {
                            id: *id,
                            data: live.data.clone(),
                            spans: 0,
                        })
                        .collect();
                    // Carried over right below, into `boundary` or later.
                    head.insert(tenant, traces, now, boundary);
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
            self.truncate_log(&taken, &failed, boundary, keep_from)
                .await;
        }
        // The last handle on the cut's traces: freeing them (hundreds of MiB in small
        // chunks, ~4% of sustained ingest's CPU) would stall this executor thread.
        task::spawn_blocking(move || drop(taken));
        blocks
    }

    /// Deletes the segments before `keep_from`. When the cut kept older segments (for
    /// traces live in them), it first marks the traces it wrote, so a replay of those
    /// segments skips them. Without the marker a replay writes them again: a duplicate
    /// merged at read time, never a loss, so its failure only warns.
    async fn truncate_log(
        &self,
        taken: &Flushing,
        failed: &[TenantId],
        boundary: u64,
        keep_from: u64,
    ) {
        if keep_from < boundary {
            let written: Vec<(TenantId, Vec<TraceId>)> = taken
                .iter()
                .filter(|(t, _)| !failed.contains(t))
                .map(|(t, traces)| (t.clone(), traces.keys().copied().collect()))
                .collect();
            if !written.is_empty() {
                if let Err(e) = self.log.mark_flushed(boundary, &written).await {
                    warn!(error = %e, "cannot write the wal flush marker; a replay would write these traces again");
                }
            }
        }
        if let Err(e) = self.log.truncate_before(keep_from).await {
            warn!(error = %e, "cannot delete old wal segments");
        }
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
        // Parquet encoding is CPU-bound: keep it off the async executor, on the thread
        // whose freed pages the next cut reuses.
        let encoded = self.encoder.run(move || {
            // Charged as it goes (every 1,024 traces), so a scrape during a long cut sees it.
            let mut cpu = metrics.stage_cpu.start(Stage::BlockEncode);
            let traces = taken.get(&t);
            let ids = sliced_ids(traces, &cfg);
            if let Some(file) = scratch {
                // The guard moves in here, so a failed encode deletes its file.
                match encode_cut_to_file(&t, block_id, &ids, &cfg, &mut cpu, &file) {
                    Ok((parts, tags)) => return Ok((parts, BlockData::File(file), tags)),
                    // A full or failing local disk must not stop cuts: they are what frees
                    // the WAL's disk. The block is encoded again, in memory.
                    Err(e) => {
                        warn!(tenant = %t, error = %e, "cannot stage block on local disk, encoding it in memory")
                    }
                }
            }
            let mut data = Vec::new();
            let (parts, tags) = encode_cut(&t, block_id, &ids, &cfg, &mut cpu, &mut data)?;
            Ok::<_, FlushError>((parts, BlockData::Memory(data.into()), tags))
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
#[path = "flush_tests.rs"]
mod tests;
