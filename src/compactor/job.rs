//! One compaction job: the k-way merge on a blocking thread into a scratch file, the
//! upload of the output under a lease, and the commit protocol of the module docs (output
//! objects, `sources.json`, `meta.json`, then the inputs marked and forgotten).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{info, warn};
use uuid::Uuid;

use super::bucket::Sources;
use super::{
    merge, scratch, sources_key, CompactError, CompactedReason, CompactionStep, Compactor,
    TRACE_TOO_LARGE,
};
use crate::backend::scratch::ScratchError;
use crate::block::{self, BlockMeta, BlockParts};
use crate::model::TenantId;

/// Longest pause between two refreshes of a compaction output's lease.
const LEASE_REFRESH_MAX: Duration = Duration::from_secs(60);

impl Compactor {
    /// Merges `inputs` into one block and commits it (see the module docs).
    pub(super) async fn compact(
        &self,
        tenant: &TenantId,
        inputs: &[Arc<BlockMeta>],
    ) -> Result<(), CompactError> {
        let output_id = Uuid::new_v4();
        let scratch =
            scratch::ScratchFile::new(&self.scratch_dir(), super::SCRATCH_PREFIX, output_id);
        let r = self.compact_via(tenant, inputs, output_id, &scratch).await;
        // Unlinking a large file can take a while: not on the executor. (If this future is
        // dropped instead, the guard deletes the file where it is dropped.)
        if let Err(e) = tokio::task::spawn_blocking(move || drop(scratch)).await {
            warn!(output = %output_id, error = %e, "scratch file clean-up failed");
        }
        r
    }

    /// [`Self::compact`] with the output's data.parquet written to `scratch`.
    pub(super) async fn compact_via(
        &self,
        tenant: &TenantId,
        inputs: &[Arc<BlockMeta>],
        output_id: Uuid,
        scratch: &scratch::ScratchFile,
    ) -> Result<(), CompactError> {
        let started = Instant::now();
        let level = inputs
            .iter()
            .map(|m| m.compaction_level)
            .max()
            .unwrap_or(0)
            .saturating_add(1);
        let max_bytes = self.overrides.limits(tenant).global.max_bytes_per_trace;
        let max_bytes = usize::try_from(max_bytes).unwrap_or(usize::MAX);
        let (backend, handle, t, ins, cfg, path) = (
            self.backend.clone(),
            tokio::runtime::Handle::current(),
            tenant.clone(),
            inputs.to_vec(),
            self.block_cfg.clone(),
            scratch.path().to_owned(),
        );
        // Decoding and encoding are CPU-bound: the whole merge runs on a blocking thread,
        // which waits on the runtime for its (one row group at a time) fetches and streams
        // the output to the scratch file.
        let (encoded, tags, stats) = tokio::task::spawn_blocking(move || {
            let mut sink = scratch::ScratchFile::create(&path)?;
            let r = merge::merge_blocks(
                &backend, &handle, &t, &ins, output_id, level, max_bytes, &cfg, &mut sink, &path,
            )?;
            std::io::Write::flush(&mut sink).map_err(|source| ScratchError { path, source })?;
            Ok::<_, CompactError>(r)
        })
        .await??;
        // The inputs' times were clamped to when their spans were ingested; the output keeps
        // those bounds rather than the client-supplied span times it would compute.
        let mut encoded = encoded;
        if let (Some(start), Some(end)) = (
            inputs.iter().map(|m| m.start_time).min(),
            inputs.iter().map(|m| m.end_time).max(),
        ) {
            encoded.meta.start_time = start;
            encoded.meta.end_time = end;
        }
        let sources = Sources {
            inputs: inputs.iter().map(|m| m.block_id).collect(),
        };
        // Refreshed well within the orphan age every compactor of the bucket uses.
        let every = (self.orphan_age() / 4).min(LEASE_REFRESH_MAX);
        let lease = self
            .backend
            .hold_lease(&block::writing_key(tenant, output_id), every)
            .await?;
        self.upload_objects(
            tenant,
            &encoded,
            scratch.path(),
            tags.to_bytes().into(),
            &sources,
        )
        .await?;
        self.step(CompactionStep::OutputObjects)?;
        lease.check().await?;
        let fence = self.fence.lock().clone();
        if fence.is_some_and(|f| !f.held()) {
            // Another compactor may own this tenant now: committing could merge twice.
            return Err(
                crate::backend::lease::LeaseLost(format!("~compactor/{tenant}.json")).into(),
            );
        }
        self.backend
            .put(
                &block::meta_key(tenant, output_id),
                encoded.meta.to_bytes().into(),
            )
            .await?;
        lease.release().await;
        self.step(CompactionStep::OutputCommitted)?;
        self.metas
            .lock()
            .insert(output_id, Arc::new(encoded.meta.clone()));
        self.blocklist.add(tenant.clone(), encoded.meta.clone());
        self.step(CompactionStep::BlockListUpdated)?;
        for (i, m) in inputs.iter().enumerate() {
            self.write_marker(tenant, m, CompactedReason::Compaction)
                .await?;
            self.step(CompactionStep::InputMarked(i))?;
            self.backend
                .delete(&block::meta_key(tenant, m.block_id))
                .await?;
            self.step(CompactionStep::InputMetaDeleted(i))?;
        }
        // Only now: if marking failed midway, the next cycle finishes it from sources.json.
        self.sources_done.lock().insert(output_id);
        let ids: Vec<Uuid> = inputs.iter().map(|m| m.block_id).collect();
        self.blocklist.remove(tenant, &ids);
        self.step(CompactionStep::InputsForgotten)?;

        if stats.spans_discarded > 0 {
            self.metrics
                .compactor_spans_discarded
                .add(TRACE_TOO_LARGE, stats.spans_discarded);
            warn!(tenant = %tenant, output = %output_id, spans = stats.spans_discarded, "spans of traces over max_bytes_per_trace discarded");
        }
        self.metrics
            .compactor_blocks_compacted
            .add(inputs.len() as u64);
        self.metrics.compactor_bytes_written.add(encoded.meta.size);
        self.metrics
            .compactor_spans_written
            .add(stats.spans_written);
        let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        info!(
            tenant = %tenant,
            inputs = %ids.join(","),
            output = %output_id,
            level,
            traces = encoded.meta.total_objects,
            spans = stats.spans_written,
            duplicate_spans = stats.duplicate_spans,
            input_bytes = stats.input_bytes,
            bytes = encoded.meta.size,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "blocks compacted"
        );
        Ok(())
    }

    /// Every object of the output but meta.json, in the flusher's order; data.parquet from
    /// the scratch file at `data`.
    pub(super) async fn upload_objects(
        &self,
        tenant: &TenantId,
        b: &BlockParts,
        data: &std::path::Path,
        tags: Bytes,
        sources: &Sources,
    ) -> Result<(), CompactError> {
        let id = b.meta.block_id;
        let sources = serde_json::to_vec(sources).unwrap_or_default();
        let mut puts = Vec::with_capacity(b.blooms.len() + 3);
        puts.push((block::tags_key(tenant, id), tags));
        puts.push((block::index_key(tenant, id), b.index.clone()));
        for (i, bloom) in b.blooms.iter().enumerate() {
            puts.push((block::bloom_key(tenant, id, i as u32), bloom.clone()));
        }
        puts.push((sources_key(tenant, id), sources.into()));
        let data_key = block::data_key(tenant, id);
        futures::future::try_join(
            self.backend.put_file(&data_key, data),
            futures::future::try_join_all(
                puts.into_iter()
                    .map(|(key, data)| async move { self.backend.put(&key, data).await }),
            ),
        )
        .await?;
        Ok(())
    }
}
