//! The compactor: merges small blocks of a tenant into bigger ones, applies retention, and
//! deletes blocks that were compacted long enough ago.
//!
//! Life cycle of a block (see `schema/meta.md`, "Compaction"):
//! live (`meta.json`) → compacted (`meta.compacted.json`: the meta plus `compactedTime`,
//! still readable by queriers with an older block list) → deleted after
//! `compacted_block_retention`.
//!
//! Commit protocol of one compaction, each step durable before the next:
//! 1. upload the output's objects (data, tags.json, index, blooms, `sources.json` naming the
//!    inputs), 2. its `meta.json` (the commit point), 3. add it to the in-process block list,
//! 4. for each input write `meta.compacted.json`, then delete its `meta.json`, 5. forget the
//!    inputs in the block list. A crash before 2 leaves an orphan folder and the inputs
//!    intact; a crash after 2 leaves the output and some inputs live at once: reads dedupe
//!    spans across blocks, and the next cycle finishes step 4 from the output's
//!    `sources.json`. The bucket listing, not the block list, drives every decision, so a
//!    restarted compactor picks up where the old one stopped. One compactor per bucket.

#[cfg(test)]
mod lease_tests;
mod merge;
mod scratch;
mod select;
mod tenant_lease;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::backend::{Backend, BackendError};
use crate::block::{self, BlockConfig, BlockError, BlockMeta, BlockParts, CompactedBlockMeta};
use crate::blocklist::BlockList;
use crate::config::CompactionConfig;
use crate::metrics::Metrics;
use crate::model::TenantId;
use crate::overrides::Overrides;

pub use merge::truncate as truncate_trace;

/// In a compaction's output folder: the IDs of the blocks it replaces, written before its
/// `meta.json`, so a restarted compactor can finish marking them compacted.
pub const SOURCES_FILE: &str = "sources.json";
/// Reason label of spans cut from traces over `max_bytes_per_trace` (Tempo's).
pub const TRACE_TOO_LARGE: &str = "trace_too_large_to_compact";

pub fn sources_key(tenant: &TenantId, id: Uuid) -> String {
    format!("{}/{}/{}", tenant.as_str(), id, SOURCES_FILE)
}

#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    #[error("storage: {0}")]
    Backend(#[from] BackendError),
    #[error("block: {0}")]
    Block(#[from] BlockError),
    #[error("compaction task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("{0}")]
    Internal(String),
    #[error("scratch file {}: {source}", path.display())]
    Scratch {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("corrupt {key}: {source}")]
    Json {
        key: String,
        source: serde_json::Error,
    },
    #[error("input block {block}: {source}")]
    Input {
        block: Uuid,
        source: Box<CompactError>,
    },
    /// The test hook stopped the compaction after this step.
    #[error("stopped after step {0:?}")]
    Stopped(CompactionStep),
    #[error(transparent)]
    LeaseLost(#[from] crate::backend::lease::LeaseLost),
}

/// The durable steps of one compaction, in order; a crash can happen after any of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompactionStep {
    /// data, tags.json, index, blooms and sources.json of the output are uploaded.
    OutputObjects,
    /// The output's meta.json is written: it is live.
    OutputCommitted,
    /// The output is in the in-process block list.
    BlockListUpdated,
    /// Input `i` (in block ID order) has its meta.compacted.json.
    InputMarked(usize),
    /// Input `i` has lost its meta.json.
    InputMetaDeleted(usize),
    /// The inputs are gone from the in-process block list.
    InputsForgotten,
}

/// Why a block stopped being live (recorded in meta.compacted.json, used as metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CompactedReason {
    Compaction,
    Retention,
}

impl CompactedReason {
    fn as_str(self) -> &'static str {
        match self {
            CompactedReason::Compaction => "compaction",
            CompactedReason::Retention => "retention",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "compaction" => Some(CompactedReason::Compaction),
            "retention" => Some(CompactedReason::Retention),
            _ => None,
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Sources {
    inputs: Vec<Uuid>,
}

/// What one listing of a tenant's folder found for one block.
#[derive(Debug, Default)]
struct Listed {
    keys: Vec<String>,
    meta: bool,
    compacted: bool,
    sources: bool,
    /// Every object's key and version fingerprint, sorted: any write changes it.
    fingerprint: Vec<(String, String)>,
}

/// A block folder without any meta file is an upload that died, or one still running. Both
/// writers (flush and compaction) hold a lease object in the folder that they refresh while
/// uploading, so a folder none of whose objects changed for this long, as this process's
/// own clock measures between two of its listings, is abandoned. Never less than this floor, whatever
/// `compacted_block_retention` says.
/// Longest pause between two refreshes of a compaction output's lease.
const LEASE_REFRESH_MAX: Duration = Duration::from_secs(60);
const ORPHAN_MIN_AGE: Duration = Duration::from_secs(15 * 60);

/// Totals of one cycle, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CycleReport {
    pub compactions: usize,
    pub blocks_compacted: usize,
    pub marked_by_retention: usize,
    pub recovered_inputs: usize,
    pub deleted: usize,
    pub orphans: usize,
}

pub struct Compactor {
    backend: Backend,
    blocklist: Arc<BlockList>,
    cfg: CompactionConfig,
    block_cfg: BlockConfig,
    overrides: Arc<Overrides>,
    metrics: Arc<Metrics>,
    /// meta.json never changes once written: each is fetched once.
    metas: Mutex<HashMap<Uuid, Arc<BlockMeta>>>,
    /// compactedTime (unix nanos) and reason of compacted blocks.
    compacted: Mutex<HashMap<Uuid, (u64, Option<CompactedReason>)>>,
    /// Outputs whose sources.json was read and whose inputs are all marked.
    sources_done: Mutex<HashSet<Uuid>>,
    /// Test hook: stop a compaction after this step, as a crash would.
    stop_after: Mutex<Option<CompactionStep>>,
    orphan_age: Mutex<Option<Duration>>,
    /// Folders without meta: their fingerprint and when this process first listed it.
    /// Writers' timestamps are never compared with our clock (skew, slow multipart uploads).
    orphans_seen: Mutex<HashMap<Uuid, (u64, Instant)>>,
    /// Inputs of failed jobs and when they failed: left out of selection for a while, so
    /// one corrupt block does not stop the rest of its window from being compacted.
    failed_inputs: Mutex<HashMap<Uuid, Instant>>,
    /// With several compactors on the bucket: one per tenant at a time.
    tenant_leases: Option<tenant_lease::TenantLeases>,
    /// The lease of the tenant whose cycle is running, checked before each commit.
    fence: Mutex<Option<tenant_lease::Fence>>,
}

/// Cycles a failed job's inputs sit out before they are tried again.
const FAILED_INPUT_BACKOFF_CYCLES: u32 = 10;

use crate::block::unix_nanos_now as now_nanos;

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Compactor {
    pub fn new(
        backend: Backend,
        blocklist: Arc<BlockList>,
        cfg: CompactionConfig,
        block_cfg: BlockConfig,
        overrides: Arc<Overrides>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            backend,
            blocklist,
            cfg,
            block_cfg,
            overrides,
            metrics,
            metas: Mutex::new(HashMap::new()),
            compacted: Mutex::new(HashMap::new()),
            sources_done: Mutex::new(HashSet::new()),
            stop_after: Mutex::new(None),
            orphan_age: Mutex::new(None),
            orphans_seen: Mutex::new(HashMap::new()),
            failed_inputs: Mutex::new(HashMap::new()),
            tenant_leases: None,
            fence: Mutex::new(None),
        }
    }

    /// Shares the bucket with other compactors: each tenant's cycle runs under a lease
    /// held as `holder` (stable across restarts), taken over from a holder whose lease
    /// went unchanged for `timeout`.
    pub fn with_tenant_leases(mut self, holder: String, timeout: Duration) -> Self {
        self.tenant_leases = Some(tenant_lease::TenantLeases::new(
            self.backend.clone(),
            holder,
            timeout,
        ));
        self
    }

    /// Where compactions write their output before uploading it.
    fn scratch_dir(&self) -> std::path::PathBuf {
        self.cfg
            .scratch_dir
            .clone()
            .unwrap_or_else(std::env::temp_dir)
    }

    /// How old an uncommitted block folder must be before it is deleted.
    fn orphan_age(&self) -> Duration {
        self.orphan_age
            .lock()
            .unwrap_or_else(|| self.cfg.compacted_block_retention.max(ORPHAN_MIN_AGE))
    }

    /// Tests shorten the orphan age (the floor protects real uploads).
    #[doc(hidden)]
    pub fn set_orphan_age(&self, age: Duration) {
        *self.orphan_age.lock() = Some(age);
    }

    /// Makes the next compaction stop after `step`, as if the process died there.
    #[doc(hidden)]
    pub fn stop_after(&self, step: Option<CompactionStep>) {
        *self.stop_after.lock() = step;
    }

    fn step(&self, s: CompactionStep) -> Result<(), CompactError> {
        if *self.stop_after.lock() == Some(s) {
            return Err(CompactError::Stopped(s));
        }
        Ok(())
    }

    /// Runs a cycle every `compaction_cycle` until the task is dropped. Stopping it at any
    /// await point is a crash the next cycle recovers from.
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.cfg.compaction_cycle);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first cycle waits one period: start-up (WAL replay, first flushes) comes first.
        tick.tick().await;
        let dir = self.scratch_dir();
        match tokio::task::spawn_blocking(move || scratch::remove_leftovers(&dir)).await {
            Ok(0) => {}
            Ok(n) => info!(files = n, "leftover compaction scratch files deleted"),
            Err(e) => warn!(error = %e, "cannot clean the compaction scratch dir"),
        }
        loop {
            tick.tick().await;
            let started = Instant::now();
            let r = self.run_cycle().await;
            // The compactor is the one writer of tenant indexes: queriers elsewhere read one
            // object per tenant instead of listing the bucket.
            if let Err(e) = crate::blocklist::write_all_tenant_indexes(&self.backend).await {
                warn!(error = %e, "cannot write tenant indexes");
            }
            if r != CycleReport::default() {
                info!(
                    compactions = r.compactions,
                    blocks_compacted = r.blocks_compacted,
                    marked_by_retention = r.marked_by_retention,
                    recovered_inputs = r.recovered_inputs,
                    deleted = r.deleted,
                    orphans = r.orphans,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "compaction cycle"
                );
            }
        }
    }

    /// One pass over every tenant in the bucket. Errors are logged per tenant.
    pub async fn run_cycle(&self) -> CycleReport {
        let mut total = CycleReport::default();
        let tenants = match self.backend.list_dirs(None).await {
            Ok(t) => t,
            Err(e) => {
                warn!(error = %e, "compactor cannot list tenants");
                return total;
            }
        };
        for t in tenants {
            let Ok(tenant) = TenantId::new(&t) else {
                continue;
            };
            let lease = match &self.tenant_leases {
                None => None,
                Some(leases) => match leases.acquire(&tenant).await {
                    Ok(Some(l)) => Some(l),
                    Ok(None) => {
                        debug!(tenant = %tenant, "another compactor holds this tenant");
                        continue;
                    }
                    Err(e) => {
                        warn!(tenant = %tenant, error = %e, "cannot take the tenant's compaction lease");
                        continue;
                    }
                },
            };
            *self.fence.lock() = lease.as_ref().map(|l| l.fence());
            let result = self.cycle_tenant(&tenant).await;
            *self.fence.lock() = None;
            if let Some(l) = lease {
                l.release().await;
            }
            match result {
                Ok(r) => {
                    total.compactions += r.compactions;
                    total.blocks_compacted += r.blocks_compacted;
                    total.marked_by_retention += r.marked_by_retention;
                    total.recovered_inputs += r.recovered_inputs;
                    total.deleted += r.deleted;
                    total.orphans += r.orphans;
                }
                Err(e) => warn!(tenant = %tenant, error = %e, "compaction cycle failed"),
            }
        }
        total
    }

    /// One tenant: finish interrupted work, retention, deletions, then compactions.
    pub async fn cycle_tenant(&self, tenant: &TenantId) -> Result<CycleReport, CompactError> {
        let mut report = CycleReport::default();
        let listing = self.list_tenant(tenant).await?;
        let now = now_nanos();

        let mut live: BTreeMap<Uuid, Arc<BlockMeta>> = BTreeMap::new();
        let mut compacted = Vec::new();
        for (id, l) in &listing {
            if l.compacted {
                if l.meta {
                    // Marked, but its meta.json outlived a crash: finish the step.
                    self.backend.delete(&block::meta_key(tenant, *id)).await?;
                }
                compacted.push(*id);
            } else if l.meta {
                if let Some(m) = self.load_meta(tenant, *id).await? {
                    live.insert(*id, m);
                }
            } else {
                // An upload that never committed, or one in progress right now: only one
                // unchanged (lease included) for the orphan age is abandoned.
                let unchanged = self.unchanged_for(*id, &l.fingerprint);
                if unchanged >= self.orphan_age() {
                    futures::future::try_join_all(l.keys.iter().map(|k| self.backend.delete(k)))
                        .await?;
                    self.orphans_seen.lock().remove(id);
                    self.metrics.compactor_blocks_deleted.add("orphan", 1);
                    info!(tenant = %tenant, block = %id, unchanged_s = unchanged.as_secs(), "abandoned upload deleted");
                } else {
                    report.orphans += 1;
                }
            }
        }
        // Folders that committed (or were compacted) since: no longer watched.
        self.orphans_seen
            .lock()
            .retain(|id, _| listing.get(id).is_none_or(|l| !l.meta && !l.compacted));
        if report.orphans > 0 {
            debug!(tenant = %tenant, orphans = report.orphans, "block folders without meta, too young to delete");
        }

        // Outputs committed by a compaction that stopped before marking all its inputs.
        for (id, l) in &listing {
            if !l.sources || !live.contains_key(id) || self.sources_done.lock().contains(id) {
                continue;
            }
            let key = sources_key(tenant, *id);
            let sources: Sources = match self.backend.get(&key).await {
                Ok(b) => serde_json::from_slice(&b).map_err(|source| CompactError::Json {
                    key: key.clone(),
                    source,
                })?,
                Err(BackendError::NotFound(_)) => Sources::default(),
                Err(e) => return Err(e.into()),
            };
            for input in sources.inputs {
                if let Some(m) = live.remove(&input) {
                    info!(tenant = %tenant, output = %id, input = %input, "finishing interrupted compaction");
                    self.mark_compacted(tenant, &m, CompactedReason::Compaction)
                        .await?;
                    self.blocklist.remove(tenant, &[input]);
                    compacted.push(input);
                    report.recovered_inputs += 1;
                }
            }
            self.sources_done.lock().insert(*id);
        }

        // Retention.
        let limits = self.overrides.limits(tenant);
        let retention = match limits.compaction.block_retention {
            Duration::ZERO => self.cfg.block_retention,
            d => d,
        };
        if retention > Duration::ZERO {
            let cutoff = now.saturating_sub(nanos(retention));
            let expired: Vec<Arc<BlockMeta>> = live
                .values()
                .filter(|m| m.end_time < cutoff)
                .cloned()
                .collect();
            for m in expired {
                info!(tenant = %tenant, block = %m.block_id, "block past retention");
                self.mark_compacted(tenant, &m, CompactedReason::Retention)
                    .await?;
                self.blocklist.remove(tenant, &[m.block_id]);
                live.remove(&m.block_id);
                compacted.push(m.block_id);
                report.marked_by_retention += 1;
            }
        }

        // Compacted blocks past compacted_block_retention.
        let keep_for = nanos(self.cfg.compacted_block_retention);
        for id in compacted {
            let Some((at, reason)) = self.compacted_time(tenant, id).await? else {
                continue;
            };
            if now.saturating_sub(at) < keep_for {
                continue;
            }
            let keys = listing.get(&id).map(|l| l.keys.clone()).unwrap_or_default();
            self.delete_block(tenant, id, keys).await?;
            let label = reason.unwrap_or(CompactedReason::Compaction).as_str();
            self.metrics.compactor_blocks_deleted.add(label, 1);
            report.deleted += 1;
        }

        // Compactions.
        let backoff = self.cfg.compaction_cycle * FAILED_INPUT_BACKOFF_CYCLES;
        let live: Vec<Arc<BlockMeta>> = {
            let mut failed = self.failed_inputs.lock();
            failed.retain(|_, at| at.elapsed() < backoff);
            live.into_values()
                .filter(|m| !failed.contains_key(&m.block_id))
                .collect()
        };
        for job in select::select(&live, &self.cfg, now) {
            match self.compact(tenant, &job).await {
                Ok(()) => {
                    report.compactions += 1;
                    report.blocks_compacted += job.len();
                }
                Err(e @ CompactError::Stopped(_)) => return Err(e),
                // One bad job (a corrupt or vanished input) must not hold up the others:
                // its inputs sit out a few cycles.
                Err(e) => {
                    // The input that failed when known, else the whole job.
                    let mut failed = self.failed_inputs.lock();
                    match &e {
                        CompactError::Input { block, .. } => {
                            failed.insert(*block, Instant::now());
                        }
                        _ => {
                            for m in &job {
                                failed.insert(m.block_id, Instant::now());
                            }
                        }
                    }
                    drop(failed);
                    let inputs: Vec<String> = job.iter().map(|m| m.block_id.to_string()).collect();
                    warn!(tenant = %tenant, inputs = %inputs.join(","), error = %e, "compaction failed");
                }
            }
        }
        Ok(report)
    }

    /// How long a folder without meta has looked exactly like `fingerprint` to this
    /// process (zero on first sight or after any change).
    fn unchanged_for(&self, id: Uuid, fingerprint: &[(String, String)]) -> Duration {
        use std::hash::{Hash, Hasher};
        let mut sorted = fingerprint.to_vec();
        sorted.sort();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        sorted.hash(&mut h);
        let fp = h.finish();
        let mut seen = self.orphans_seen.lock();
        let entry = seen.entry(id).or_insert((fp, Instant::now()));
        if entry.0 != fp {
            *entry = (fp, Instant::now());
        }
        entry.1.elapsed()
    }

    /// Every block folder of a tenant and what it holds, from one listing.
    async fn list_tenant(&self, tenant: &TenantId) -> Result<BTreeMap<Uuid, Listed>, CompactError> {
        let mut out: BTreeMap<Uuid, Listed> = BTreeMap::new();
        let prefix = format!("{}/", tenant.as_str());
        let listed = self.backend.list_fingerprints(tenant.as_str()).await?;
        for crate::backend::lease::Listed {
            key, fingerprint, ..
        } in listed
        {
            let Some((dir, file)) = key.strip_prefix(&prefix).and_then(|r| r.split_once('/'))
            else {
                continue; // the tenant index and other tenant-level objects
            };
            let Ok(id) = Uuid::parse_str(dir) else {
                continue;
            };
            let l = out.entry(id).or_default();
            match file {
                block::META_FILE => l.meta = true,
                block::COMPACTED_META_FILE => l.compacted = true,
                SOURCES_FILE => l.sources = true,
                _ => {}
            }
            l.fingerprint.push((key.clone(), fingerprint));
            l.keys.push(key);
        }
        Ok(out)
    }

    async fn load_meta(
        &self,
        tenant: &TenantId,
        id: Uuid,
    ) -> Result<Option<Arc<BlockMeta>>, CompactError> {
        if let Some(m) = self.metas.lock().get(&id) {
            return Ok(Some(m.clone()));
        }
        let bytes = match self.backend.get(&block::meta_key(tenant, id)).await {
            Ok(b) => b,
            // Compacted or deleted since the listing.
            Err(BackendError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        match BlockMeta::from_bytes(&bytes) {
            Ok(m) => {
                let m = Arc::new(m);
                self.metas.lock().insert(id, m.clone());
                Ok(Some(m))
            }
            Err(e) => {
                // Left alone: deleting data on a parse error would be worse than keeping it.
                warn!(tenant = %tenant, block = %id, error = %e, "unreadable meta.json, block skipped");
                Ok(None)
            }
        }
    }

    async fn compacted_time(
        &self,
        tenant: &TenantId,
        id: Uuid,
    ) -> Result<Option<(u64, Option<CompactedReason>)>, CompactError> {
        if let Some(t) = self.compacted.lock().get(&id) {
            return Ok(Some(*t));
        }
        let key = block::compacted_meta_key(tenant, id);
        let bytes = match self.backend.get(&key).await {
            Ok(b) => b,
            Err(BackendError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        // The same type the tenant index reads, so both agree on every marker.
        let marker = match CompactedBlockMeta::from_bytes(&bytes) {
            Ok(m) if m.compacted_time > 0 => m,
            Ok(_) => {
                warn!(tenant = %tenant, block = %id, "meta.compacted.json has no compactedTime, block kept");
                return Ok(None);
            }
            Err(e) => {
                warn!(tenant = %tenant, block = %id, error = %e, "unreadable meta.compacted.json, block kept");
                return Ok(None);
            }
        };
        let reason = marker
            .compacted_reason
            .as_deref()
            .and_then(CompactedReason::parse);
        let v = (marker.compacted_time, reason);
        self.compacted.lock().insert(id, v);
        Ok(Some(v))
    }

    /// Writes meta.compacted.json (the meta plus `compactedTime`), then deletes meta.json.
    async fn mark_compacted(
        &self,
        tenant: &TenantId,
        meta: &BlockMeta,
        reason: CompactedReason,
    ) -> Result<(), CompactError> {
        self.write_marker(tenant, meta, reason).await?;
        self.backend
            .delete(&block::meta_key(tenant, meta.block_id))
            .await?;
        Ok(())
    }

    async fn write_marker(
        &self,
        tenant: &TenantId,
        meta: &BlockMeta,
        reason: CompactedReason,
    ) -> Result<(), CompactError> {
        let marker = CompactedBlockMeta {
            meta: meta.clone(),
            compacted_time: now_nanos(),
            compacted_reason: Some(reason.as_str().to_owned()),
        };
        self.backend
            .put(
                &block::compacted_meta_key(tenant, meta.block_id),
                marker.to_bytes().into(),
            )
            .await?;
        self.compacted
            .lock()
            .insert(meta.block_id, (marker.compacted_time, Some(reason)));
        self.metas.lock().remove(&meta.block_id);
        Ok(())
    }

    /// Deletes every object of a block, meta.compacted.json last so a crash midway leaves a
    /// folder the next cycle still recognises and finishes.
    async fn delete_block(
        &self,
        tenant: &TenantId,
        id: Uuid,
        keys: Vec<String>,
    ) -> Result<(), CompactError> {
        let marker = block::compacted_meta_key(tenant, id);
        futures::future::try_join_all(
            keys.iter()
                .filter(|k| **k != marker)
                .map(|k| self.backend.delete(k)),
        )
        .await?;
        self.backend.delete(&marker).await?;
        self.compacted.lock().remove(&id);
        info!(tenant = %tenant, block = %id, "compacted block deleted");
        Ok(())
    }

    /// Merges `inputs` into one block and commits it (see the module docs).
    async fn compact(
        &self,
        tenant: &TenantId,
        inputs: &[Arc<BlockMeta>],
    ) -> Result<(), CompactError> {
        let output_id = Uuid::new_v4();
        let scratch = scratch::ScratchFile::new(&self.scratch_dir(), output_id);
        let r = self.compact_via(tenant, inputs, output_id, &scratch).await;
        // Unlinking a large file can take a while: not on the executor. (If this future is
        // dropped instead, the guard deletes the file where it is dropped.)
        if let Err(e) = tokio::task::spawn_blocking(move || drop(scratch)).await {
            warn!(output = %output_id, error = %e, "scratch file clean-up failed");
        }
        r
    }

    /// [`Self::compact`] with the output's data.parquet written to `scratch`.
    async fn compact_via(
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
                &backend, &handle, &t, &ins, output_id, level, max_bytes, &cfg, &mut sink,
            )?;
            std::io::Write::flush(&mut sink)
                .map_err(|source| CompactError::Scratch { path, source })?;
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
    async fn upload_objects(
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
