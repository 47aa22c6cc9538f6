//! The querier: finds traces in the ingester's memory and in the blocks of the bucket.
//!
//! Trace by ID per block: meta time range → bloom shard → row-group index → footer with
//! page indexes → the pages holding that one row in every column (one batched ranged
//! read) → decode that row only. Blooms, indexes and footers are cached, so a repeated
//! lookup costs one read per block that may hold the trace.

mod cache;
pub mod metrics;
pub mod remote;
mod scan;
pub mod search;
pub(crate) mod tags;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::stream::{self, StreamExt};
use parquet::file::metadata::ParquetMetaData;
use tracing::{debug, warn};
use uuid::Uuid;

use cache::Cache;

use crate::backend::{Backend, BackendError};
use crate::block::{self, BlockError, BlockMeta, BloomShard, RowGroupIndex, TagSummary};
use crate::blocklist::{index_builder, BlockList, PollConfig};
use crate::config::QuerierConfig;
use crate::ingester::Ingester;
use crate::metrics::Metrics;
use crate::model::{ResourceSpans, TenantId, TraceId};

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("reading block {block}: {source}")]
    Backend { block: Uuid, source: BackendError },
    #[error("decoding block {block}: {source}")]
    Block { block: Uuid, source: BlockError },
    #[error("query task failed: {0}")]
    Task(String),
}

/// A time range in unix seconds, both ends inclusive, as Tempo's `start`/`end`: a trace
/// (or block) overlaps it when it starts at or before `end` and ends at or after `start`,
/// Tempo's rule; `end` is an instant, not the whole second after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRange {
    pub start_s: u64,
    pub end_s: u64,
}

impl TimeRange {
    fn overlaps_nanos(&self, start_ns: u64, end_ns: u64) -> bool {
        let s = self.start_s.saturating_mul(1_000_000_000);
        let e = self.end_s.saturating_mul(1_000_000_000);
        start_ns <= e && end_ns >= s
    }
}

/// What a lookup found: fragments to combine, and what it cost.
#[derive(Default, Debug)]
pub struct Found {
    pub batches: Vec<ResourceSpans>,
    pub inspected_bytes: u64,
    pub blocks_searched: usize,
    /// Object-store requests this lookup sent (cache misses and page reads).
    pub requests: u64,
}

pub struct Querier {
    backend: Backend,
    ingester: Option<Arc<Ingester>>,
    blocklist: Arc<BlockList>,
    metrics: Arc<Metrics>,
    concurrent_blocks: usize,
    blooms: Cache<(Uuid, u32), BloomShard>,
    indexes: Cache<Uuid, RowGroupIndex>,
    footers: Cache<Uuid, ParquetMetaData>,
    tag_summaries: Cache<Uuid, TagSummary>,
    poll: PollConfig,
    /// Bytes one tag request may scan (`querier.max_tag_scan_bytes`; zero: no limit).
    tag_scan_bytes: u64,
    /// Other nodes' live traces (the shared ingest log); `None` on a lone node.
    remote: Option<Arc<dyn remote::RemoteLive>>,
    /// Blocks this node committed lately, offered to other nodes with its live traces.
    recent: Option<Arc<remote::RecentBlocks>>,
    /// The ingest partitions whose live traces this node answers for.
    partitions: Option<Arc<dyn remote::LocalPartitions>>,
}

impl Querier {
    pub fn new(
        backend: Backend,
        ingester: Option<Arc<Ingester>>,
        blocklist: Arc<BlockList>,
        metrics: Arc<Metrics>,
        concurrent_blocks: usize,
    ) -> Self {
        Self {
            backend,
            ingester,
            blocklist,
            metrics,
            concurrent_blocks: concurrent_blocks.max(1),
            blooms: Cache::new(16_384),
            indexes: Cache::new(4_096),
            footers: Cache::new(1_024),
            tag_summaries: Cache::new(4_096),
            poll: PollConfig::default(),
            tag_scan_bytes: QuerierConfig::default().max_tag_scan_bytes,
            remote: None,
            recent: None,
            partitions: None,
        }
    }

    /// Reads other nodes' live traces through `remote`, and offers this node's own with
    /// the blocks in `recent` and the caught-up `partitions` they cover.
    pub fn with_remote(
        mut self,
        remote: Arc<dyn remote::RemoteLive>,
        recent: Arc<remote::RecentBlocks>,
        partitions: Arc<dyn remote::LocalPartitions>,
    ) -> Self {
        self.remote = Some(remote);
        self.recent = Some(recent);
        self.partitions = Some(partitions);
        self
    }

    /// Sets how many bytes of blocks one tag request may scan (zero: no limit).
    pub(crate) fn with_tag_scan_bytes(mut self, bytes: u64) -> Self {
        self.tag_scan_bytes = bytes;
        self
    }

    /// Sets the poll interval and tenant-index staleness (defaults: 5m, 3 × interval).
    pub fn with_poll_config(mut self, poll: PollConfig) -> Self {
        self.poll = poll;
        self
    }

    pub fn blocklist(&self) -> &Arc<BlockList> {
        &self.blocklist
    }

    /// Every fragment of the trace in memory and in blocks overlapping `range`.
    pub async fn find_trace(
        &self,
        tenant: &TenantId,
        id: &TraceId,
        range: Option<TimeRange>,
    ) -> Result<Found, QueryError> {
        let mut found = Found::default();
        // First: it waits for this node's partition to apply what was acknowledged before
        // the query began; and before listing blocks: the owner's recent blocks join the list.
        let remote = self.remote_live(tenant, Some(id)).await;
        if let Some(ing) = &self.ingester {
            found.batches.extend(ing.find_trace(tenant, id));
        }
        for (_, data) in &remote.part.traces {
            match data.decode() {
                Ok(b) => found.batches.extend(b),
                Err(e) => warn!(trace = %id.to_hex(), error = %e, "undecodable remote live trace"),
            }
        }
        let blocks = self.blocks_in_range(tenant, range);
        found.blocks_searched = blocks.len();
        let requests = AtomicU64::new(0);
        let requests = &requests;
        let mut results = stream::iter(blocks)
            .map(|meta| async move { self.find_in_block(tenant, &meta, id, requests).await })
            .buffer_unordered(self.concurrent_blocks);
        while let Some(r) = results.next().await {
            match r {
                Ok((batches, bytes)) => {
                    found.batches.extend(batches);
                    found.inspected_bytes += bytes;
                }
                // A block deleted between listing and reading (compaction) is not an error.
                Err(QueryError::Backend {
                    block,
                    source: BackendError::NotFound(key),
                }) => {
                    debug!(block = %block, key = %key, "block vanished during lookup");
                }
                Err(e) => return Err(e),
            }
        }
        drop(results);
        if let Some(why) = remote.partial() {
            // Found elsewhere, it is answered; not found, nobody can say it does not exist.
            if found.batches.is_empty() {
                return Err(QueryError::Task(why));
            }
            warn!(trace = %id.to_hex(), reason = %why, "trace answered without an unreachable owner");
        }
        found.requests = requests.load(Ordering::Relaxed);
        debug!(
            tenant = %tenant,
            trace = %id.to_hex(),
            blocks = found.blocks_searched,
            requests = found.requests,
            inspected_bytes = found.inspected_bytes,
            "trace lookup"
        );
        Ok(found)
    }

    async fn find_in_block(
        &self,
        tenant: &TenantId,
        meta: &BlockMeta,
        id: &TraceId,
        requests: &AtomicU64,
    ) -> Result<(Vec<ResourceSpans>, u64), QueryError> {
        let count = |n: u64| requests.fetch_add(n, Ordering::Relaxed);
        let bid = meta.block_id;
        let be = |source| QueryError::Backend { block: bid, source };
        let ble = |source| QueryError::Block { block: bid, source };
        if !self.bloom_may_contain(tenant, meta, id, requests).await? {
            return Ok((Vec::new(), 0));
        }
        let index = match self.indexes.get(&bid) {
            Some(i) => i,
            None => {
                count(1);
                let bytes = self
                    .backend
                    .get(&block::index_key(tenant, bid))
                    .await
                    .map_err(be)?;
                let i = Arc::new(RowGroupIndex::from_bytes(&bytes).map_err(ble)?);
                self.indexes.insert(bid, i.clone());
                i
            }
        };
        let candidates = index.row_groups_for(id);
        if candidates.is_empty() {
            return Ok((Vec::new(), 0));
        }
        let data_key = block::data_key(tenant, bid);
        let footer = match self.footers.get(&bid) {
            Some(f) => f,
            None => {
                let f = self.load_footer_counted(&data_key, meta, requests).await?;
                self.footers.insert(bid, f.clone());
                f
            }
        };
        let (rgs, mut inspected) = if candidates.len() == 1 {
            (candidates, 0)
        } else {
            self.probe_row_groups(&data_key, meta, &footer, candidates, id, requests)
                .await?
        };
        let mut batches = Vec::new();
        for rg in rgs {
            let (found, bytes) = self
                .find_in_row_group(&data_key, meta, &footer, rg, id, requests)
                .await?;
            inspected += bytes;
            batches.extend(found);
        }
        Ok((batches, inspected))
    }

    /// Of a sliced block's candidate row groups (one per slice whose ID range holds `id`),
    /// those whose trace_id page holds it: one read of a small page per candidate, so the
    /// full read that follows touches one row group.
    async fn probe_row_groups(
        &self,
        data_key: &str,
        meta: &BlockMeta,
        footer: &Arc<parquet::file::metadata::ParquetMetaData>,
        candidates: Vec<usize>,
        id: &TraceId,
        requests: &AtomicU64,
    ) -> Result<(Vec<usize>, u64), QueryError> {
        let bid = meta.block_id;
        let be = |source| QueryError::Backend { block: bid, source };
        let ble = |source| QueryError::Block { block: bid, source };
        let mut plans = Vec::new();
        let mut whole = Vec::new();
        for rg in candidates {
            match block::plan_id_probe(footer, rg, id).map_err(ble)? {
                block::LookupPlan::Absent => {}
                block::LookupPlan::Pages(p) => plans.push(p),
                // No page index: that row group is read whole anyway.
                block::LookupPlan::RowGroup(_) => whole.push(rg),
            }
        }
        let ranges: Vec<_> = plans.iter().flat_map(|p| p.ranges.clone()).collect();
        if ranges.is_empty() {
            return Ok((whole, 0));
        }
        requests.fetch_add(self.backend.requests_for_ranges(&ranges), Ordering::Relaxed);
        let mut fetched = self
            .backend
            .get_ranges(data_key, &ranges)
            .await
            .map_err(be)?
            .into_iter();
        let inspected = plans.iter().map(block::PageRead::total_bytes).sum();
        let (footer, size, id) = (footer.clone(), meta.size, *id);
        let per_plan: Vec<(block::PageRead, Vec<bytes::Bytes>)> = plans
            .into_iter()
            .map(|p| {
                let f = fetched.by_ref().take(p.ranges.len()).collect();
                (p, f)
            })
            .collect();
        let holding = Self::blocking(move || {
            let mut out = Vec::new();
            for (plan, f) in per_plan {
                if block::probe_id_in_pages(footer.clone(), &plan, f, size, &id)? {
                    out.push(plan.rg);
                }
            }
            Ok::<_, block::BlockError>(out)
        })
        .await?
        .map_err(ble)?;
        whole.extend(holding);
        whole.sort_unstable();
        Ok((whole, inspected))
    }

    /// The trace's row in one row group: the pages of that row, or the whole row group for
    /// blocks without a trace_id page index.
    async fn find_in_row_group(
        &self,
        data_key: &str,
        meta: &BlockMeta,
        footer: &Arc<parquet::file::metadata::ParquetMetaData>,
        rg: usize,
        id: &TraceId,
        requests: &AtomicU64,
    ) -> Result<(Vec<ResourceSpans>, u64), QueryError> {
        let count = |n: u64| requests.fetch_add(n, Ordering::Relaxed);
        let bid = meta.block_id;
        let be = |source| QueryError::Backend { block: bid, source };
        let ble = |source| QueryError::Block { block: bid, source };
        let footer = footer.clone();
        let id = *id;
        match block::plan_lookup(&footer, rg, &id).map_err(ble)? {
            block::LookupPlan::Absent => Ok((Vec::new(), 0)),
            block::LookupPlan::Pages(plan) => {
                count(self.backend.requests_for_ranges(&plan.ranges));
                let pages = self
                    .backend
                    .get_ranges(data_key, &plan.ranges)
                    .await
                    .map_err(be)?;
                let inspected = plan.total_bytes();
                let size = meta.size;
                // Parquet decoding is CPU-bound: keep it off the async executor.
                let batches = Self::blocking(move || {
                    block::find_trace_in_pages(footer, &plan, pages, size, &id)
                })
                .await?
                .map_err(ble)?;
                Ok((batches.unwrap_or_default(), inspected))
            }
            // Blocks without a trace_id page index: the whole row group.
            block::LookupPlan::RowGroup(range) => {
                count(1);
                let bytes = self
                    .backend
                    .get_range(data_key, range.clone())
                    .await
                    .map_err(be)?;
                let inspected = bytes.len() as u64;
                let batches =
                    Self::blocking(move || block::find_trace(footer, rg, bytes, range.start, &id))
                        .await?
                        .map_err(ble)?;
                Ok((batches.unwrap_or_default(), inspected))
            }
        }
    }

    /// Whether a block's bloom filter says it may hold the trace (shards are cached).
    async fn bloom_may_contain(
        &self,
        tenant: &TenantId,
        meta: &BlockMeta,
        id: &TraceId,
        requests: &AtomicU64,
    ) -> Result<bool, QueryError> {
        if meta.bloom_shards == 0 {
            return Ok(true);
        }
        let bid = meta.block_id;
        let shard = block::bloom_shard_for(id, meta.bloom_shards);
        let bloom = match self.blooms.get(&(bid, shard)) {
            Some(b) => b,
            None => {
                requests.fetch_add(1, Ordering::Relaxed);
                let bytes = self
                    .backend
                    .get(&block::bloom_key(tenant, bid, shard))
                    .await
                    .map_err(|source| QueryError::Backend { block: bid, source })?;
                let b = Arc::new(
                    BloomShard::from_bytes(&bytes)
                        .map_err(|source| QueryError::Block { block: bid, source })?,
                );
                self.blooms.insert((bid, shard), b.clone());
                b
            }
        };
        Ok(bloom.may_contain(id))
    }

    /// Runs CPU-bound work (Parquet decoding) on the blocking pool.
    async fn blocking<T: Send + 'static>(
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, QueryError> {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| QueryError::Task(e.to_string()))
    }

    /// A block's footer from the cache, or read and cached; None when the block is gone
    /// (compacted away since the listing).
    async fn footer(
        &self,
        data_key: &str,
        meta: &BlockMeta,
    ) -> Result<Option<Arc<ParquetMetaData>>, QueryError> {
        if let Some(f) = self.footers.get(&meta.block_id) {
            return Ok(Some(f));
        }
        match self.load_footer(data_key, meta).await {
            Ok(f) => {
                self.footers.insert(meta.block_id, f.clone());
                Ok(Some(f))
            }
            Err(QueryError::Backend {
                source: BackendError::NotFound(_),
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads and decodes the footer of a block's data.parquet with its page indexes: one
    /// ranged read when meta.json has `pageIndexSize`; for older blocks a second, longer read
    /// from the end once the footer says where the page indexes start.
    async fn load_footer(
        &self,
        data_key: &str,
        meta: &BlockMeta,
    ) -> Result<Arc<ParquetMetaData>, QueryError> {
        self.load_footer_counted(data_key, meta, &AtomicU64::new(0))
            .await
    }

    /// [`Self::load_footer`], adding the requests it sends to `requests`.
    async fn load_footer_counted(
        &self,
        data_key: &str,
        meta: &BlockMeta,
        requests: &AtomicU64,
    ) -> Result<Arc<ParquetMetaData>, QueryError> {
        let bid = meta.block_id;
        let be = |source| QueryError::Backend { block: bid, source };
        let ble = |source| QueryError::Block { block: bid, source };
        let size = meta.size;
        requests.fetch_add(1, Ordering::Relaxed);
        let tail = self
            .backend
            .get_range(data_key, block::footer_fetch_range(meta))
            .await
            .map_err(be)?;
        let tail_start = size - tail.len() as u64;
        let md = Self::blocking(move || block::decode_footer(tail, size))
            .await?
            .map_err(ble)?;
        match block::page_index_start(&md) {
            Some(start) if start < tail_start => {
                requests.fetch_add(1, Ordering::Relaxed);
                let tail = self
                    .backend
                    .get_range(data_key, start..size)
                    .await
                    .map_err(be)?;
                Self::blocking(move || block::decode_footer(tail, size))
                    .await?
                    .map_err(ble)
            }
            _ => Ok(md),
        }
    }

    /// Brings the block list up to date: per tenant from its index (`index.json.gz`)
    /// when that is fresher than the staleness bound, else by listing the bucket.
    pub(crate) async fn poll_blocklist(&self) -> Result<(), BackendError> {
        let started = Instant::now();
        let tenants = self.backend.list_dirs(None).await?;
        let (mut from_index, mut listed) = (0usize, 0usize);
        for t in tenants {
            let Ok(tenant) = TenantId::new(&t) else {
                // `~`-folders are vivace's own (the ingest log's offsets), never a tenant.
                if !t.starts_with('~') {
                    warn!(dir = %t, "ignoring bucket folder that is not a valid tenant id");
                }
                continue;
            };
            let (found, as_of) = match self.poll_tenant_index(&tenant, started).await? {
                Some(r) => {
                    from_index += 1;
                    r
                }
                None => {
                    listed += 1;
                    let known: HashMap<Uuid, BlockMeta> = self
                        .blocklist
                        .blocks(&tenant)
                        .into_iter()
                        .map(|m| (m.block_id, (*m).clone()))
                        .collect();
                    let found =
                        index_builder::list_live_blocks(&self.backend, &tenant, &known).await?;
                    (found, started)
                }
            };
            self.blocklist.apply_poll(&tenant, found, as_of);
        }
        self.metrics
            .blocklist_length
            .set(self.blocklist.len() as u64);
        debug!(
            blocks = self.blocklist.len(),
            tenants_from_index = from_index,
            tenants_listed = listed,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "blocklist polled"
        );
        Ok(())
    }

    /// The live blocks of `tenant` from its index, and the instant the result reflects
    /// the bucket as of; `None` when there is no usable (present, readable, fresh) index.
    /// Block folders the index does not know are listed (one delimited listing) and their
    /// meta read, so blocks flushed since the index was built, by any process, are seen.
    async fn poll_tenant_index(
        &self,
        tenant: &TenantId,
        started: Instant,
    ) -> Result<Option<(Vec<BlockMeta>, Instant)>, BackendError> {
        let index = match index_builder::read_tenant_index(&self.backend, tenant).await {
            Ok(Some(i)) => i,
            Ok(None) => return Ok(None),
            Err(e) => {
                warn!(error = %e, "tenant index unusable; listing the bucket");
                return Ok(None);
            }
        };
        let age = SystemTime::now()
            .duration_since(index.created())
            .unwrap_or(Duration::ZERO);
        let stale_after = self.poll.stale_after();
        if age > stale_after {
            debug!(
                tenant = %tenant,
                age_s = age.as_secs(),
                stale_after_s = stale_after.as_secs(),
                "tenant index is stale; listing the bucket"
            );
            return Ok(None);
        }
        // The index reflects the bucket as it was `age` ago.
        let as_of = started.checked_sub(age).unwrap_or(started).min(started);
        let compacted: HashSet<Uuid> = index.compacted.iter().map(|c| c.meta.block_id).collect();
        let mut seen: HashSet<Uuid> = compacted.clone();
        let mut found = Vec::with_capacity(index.meta.len());
        for m in index.meta {
            seen.insert(m.block_id);
            // A crash between writing the marker and deleting meta.json: marker wins.
            if !compacted.contains(&m.block_id) {
                found.push(m);
            }
        }
        let known: HashMap<Uuid, Arc<BlockMeta>> = self
            .blocklist
            .blocks(tenant)
            .into_iter()
            .map(|m| (m.block_id, m))
            .collect();
        for dir in self.backend.list_dirs(Some(tenant.as_str())).await? {
            let Ok(bid) = Uuid::parse_str(&dir) else {
                continue;
            };
            if seen.contains(&bid) {
                continue;
            }
            if let Some(m) = known.get(&bid) {
                found.push((**m).clone());
                continue;
            }
            let Some(meta) = index_builder::fetch_meta(&self.backend, tenant, bid).await? else {
                continue; // not committed (yet), or compacted and its meta.json deleted
            };
            match self
                .backend
                .get(&block::compacted_meta_key(tenant, bid))
                .await
            {
                Ok(_) => {}
                Err(BackendError::NotFound(_)) => found.push(meta),
                Err(e) => return Err(e),
            }
        }
        Ok(Some((found, as_of)))
    }

    /// Polls the bucket every `every` until the task is dropped.
    pub(crate) async fn run_poller(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first poll ran at start-up
        loop {
            tick.tick().await;
            if let Err(e) = self.poll_blocklist().await {
                warn!(error = %e, "blocklist poll failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TimeRange;

    /// Tempo's rule: start <= end and end >= start, with `end` the instant `end` seconds,
    /// not the second after it (a trace 100 ms after `end` is outside).
    #[test]
    fn range_end_is_an_instant() {
        let r = TimeRange {
            start_s: 100,
            end_s: 200,
        };
        const S: u64 = 1_000_000_000;
        assert!(r.overlaps_nanos(200 * S, 201 * S));
        assert!(!r.overlaps_nanos(200 * S + 100_000_000, 201 * S));
        assert!(r.overlaps_nanos(90 * S, 100 * S));
        assert!(!r.overlaps_nanos(90 * S, 100 * S - 1));
        assert!(r.overlaps_nanos(150 * S, 150 * S));
    }
}

#[cfg(test)]
mod ingester_tests;
