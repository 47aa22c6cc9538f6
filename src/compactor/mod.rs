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

mod bucket;
mod job;
#[cfg(test)]
mod lease_tests;
mod merge;
mod select;
mod spill;
mod tenant_lease;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::backend::scratch::{self, ScratchError};
use crate::backend::{Backend, BackendError};
use crate::block::{self, BlockConfig, BlockError, BlockMeta};
use crate::blocklist::BlockList;
use crate::config::CompactionConfig;
use crate::metrics::Metrics;
use crate::model::TenantId;
use crate::overrides::Overrides;
use bucket::Sources;

#[cfg(test)]
use merge::truncate as truncate_trace;

/// In a compaction's output folder: the IDs of the blocks it replaces, written before its
/// `meta.json`, so a restarted compactor can finish marking them compacted.
pub(crate) const SOURCES_FILE: &str = "sources.json";
/// Reason label of spans cut from traces over `max_bytes_per_trace` (Tempo's).
pub(crate) const TRACE_TOO_LARGE: &str = "trace_too_large_to_compact";

pub(crate) fn sources_key(tenant: &TenantId, id: Uuid) -> String {
    format!("{}/{}/{}", tenant.as_str(), id, SOURCES_FILE)
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum CompactError {
    #[error("storage: {0}")]
    Backend(#[from] BackendError),
    #[error("block: {0}")]
    Block(#[from] BlockError),
    #[error("compaction task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("{0}")]
    Internal(String),
    #[error(transparent)]
    Scratch(#[from] ScratchError),
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
pub(crate) enum CompactionStep {
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
pub(crate) enum CompactedReason {
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

/// A block folder without any meta file is an upload that died, or one still running. Both
/// writers (flush and compaction) hold a lease object in the folder that they refresh while
/// uploading, so a folder none of whose objects changed for this long, as this process's
/// own clock measures between two of its listings, is abandoned. Never less than this floor, whatever
/// `compacted_block_retention` says.
const ORPHAN_MIN_AGE: Duration = Duration::from_secs(15 * 60);

/// Totals of one cycle, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct CycleReport {
    pub(crate) compactions: usize,
    pub(crate) blocks_compacted: usize,
    pub(crate) marked_by_retention: usize,
    pub(crate) recovered_inputs: usize,
    pub(crate) deleted: usize,
    pub(crate) orphans: usize,
}

pub(crate) struct Compactor {
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

/// Names the compactor's scratch files, so it cleans up its own leftovers only.
pub(super) const SCRATCH_PREFIX: &str = "vivace-compaction-";

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Compactor {
    pub(crate) fn new(
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
    pub(crate) fn with_tenant_leases(mut self, holder: String, timeout: Duration) -> Self {
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
    #[cfg(test)]
    pub(crate) fn set_orphan_age(&self, age: Duration) {
        *self.orphan_age.lock() = Some(age);
    }

    /// Makes the next compaction stop after `step`, as if the process died there.
    #[cfg(test)]
    pub(crate) fn stop_after(&self, step: Option<CompactionStep>) {
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
    pub(crate) async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.cfg.compaction_cycle);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first cycle waits one period: start-up (WAL replay, first flushes) comes first.
        tick.tick().await;
        let dir = self.scratch_dir();
        match tokio::task::spawn_blocking(move || scratch::remove_leftovers(&dir, SCRATCH_PREFIX))
            .await
        {
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
    pub(crate) async fn run_cycle(&self) -> CycleReport {
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
    pub(crate) async fn cycle_tenant(
        &self,
        tenant: &TenantId,
    ) -> Result<CycleReport, CompactError> {
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
}
