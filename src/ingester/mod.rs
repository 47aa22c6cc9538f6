//! The ingester: holds recent traces in memory, makes them durable in the WAL before they are
//! acknowledged, and cuts them into blocks in the backend.
//!
//! Durability rule: a WAL segment is deleted only when every record in it is either in a
//! committed block or has been re-appended to a newer segment. A cut keeps the segments
//! of traces still live and young (first seen less than two idle periods ago), and
//! re-appends (carries over) only the older ones: most traces end within that window, so
//! most are written to the WAL once, not again at every cut. A flush marker names the
//! traces a cut wrote from a segment it kept, so a replay does not write them twice.

mod encode;
mod encoder;
mod flush;
mod head;
mod log;
mod memory;
mod read;
pub mod wal;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
#[cfg(test)]
use prost::Message;
use tokio::sync::RwLock as AsyncRwLock;
use tracing::info;
use uuid::Uuid;

pub(crate) use flush::BlockCommitted;
pub(crate) use head::Carry;
use head::{carry_records, replay_record, trace_bytes, Head, LiveTrace, CARRY_RECORD_BYTES};
pub(crate) use log::IngestLog;
pub(crate) use read::LiveKey;

use crate::backend::Backend;
use crate::block::BlockConfig;
use crate::config::IngesterConfig;
use crate::metrics::{Metrics, Stage};
#[cfg(test)]
use crate::model::{group_by_trace, ExportTraceServiceRequest};
use crate::model::{Fragments, Grouped, TenantId, TraceBatch, TraceId, TraceMap};

#[derive(Debug, thiserror::Error)]
pub(crate) enum IngestError {
    #[error("ingester memory is full ({held} bytes held by traces waiting to be flushed and the memory around them, limit {limit}): retry later")]
    LiveBytesExceeded { held: u64, limit: u64 },
    #[error("write-ahead log unavailable: {0}")]
    Wal(#[from] wal::WalError),
}

/// Resident memory beyond the heap in use, as a fraction (1/N) of the traces held: pages
/// the allocator has freed but not yet returned, and size-class rounding. At the peaks of
/// sustained ingest, RSS ran 150–230 MiB (13–17%) above the live heap (mimalloc 3, heap
/// counted by a wrapping allocator).
const ALLOCATOR_SHARE: u64 = 6;

/// Traces cut from the head and on their way into blocks; still served to queries. Kept
/// as the head's entries, so a cut of everything moves each tenant's table whole.
type Flushing = HashMap<TenantId, TraceMap<LiveTrace>>;

struct Cut {
    taken: Arc<Flushing>,
    /// The first WAL segment that holds data still in memory; `None` when the cut took
    /// nothing and did not rotate.
    boundary: Option<u64>,
    /// WAL records re-appending the traces kept in memory that were live at the previous
    /// cut already.
    carry: Carry,
    /// The oldest segment still holding data of a trace kept in memory and not carried
    /// over: once the cut's blocks are committed, the segments before it can go.
    keep_from: u64,
}

pub struct Ingester {
    cfg: IngesterConfig,
    log: Arc<dyn IngestLog>,
    /// Appends hold it shared from WAL append to head insert; a cut takes it exclusively
    /// so that every acknowledged record in an old segment is in the head it takes.
    gate: AsyncRwLock<()>,
    head: Mutex<Head>,
    flushing: RwLock<Arc<Flushing>>,
    /// The block ID each tenant's flushing traces are being written under, chosen at the
    /// cut: a reader that sees them in `flushing` skips that block, so nothing is counted
    /// twice while the block is listed and `flushing` not yet cleared.
    flushing_blocks: RwLock<Arc<HashMap<TenantId, Uuid>>>,
    backend: Backend,
    block_cfg: BlockConfig,
    metrics: Arc<Metrics>,
    on_commit: BlockCommitted,
    /// The segment the log started at in this process: replayed traces are older and are
    /// carried over at the first cut. `None` carries every kept trace.
    opened_segment: Option<u64>,
    /// The process's RSS, once [`Ingester::watch_memory`] samples it.
    resident: Arc<memory::Resident>,
    encoder: encoder::Encoder,
}

/// Whether the head should be cut now, and how much of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CutDue {
    No,
    /// Block size or age reached: idle traces go, active ones stay.
    Idle,
    /// Memory nearly full: everything goes.
    Pressure,
}

impl Ingester {
    pub(crate) fn new(
        cfg: IngesterConfig,
        log: Arc<dyn IngestLog>,
        backend: Backend,
        block_cfg: BlockConfig,
        metrics: Arc<Metrics>,
        on_commit: BlockCommitted,
    ) -> Arc<Self> {
        let opened_segment = log.opened_segment();
        Arc::new(Self {
            cfg,
            log,
            gate: AsyncRwLock::new(()),
            head: Mutex::new(Head::default()),
            flushing: RwLock::new(Arc::new(HashMap::new())),
            flushing_blocks: RwLock::new(Arc::new(HashMap::new())),
            backend,
            block_cfg,
            metrics,
            on_commit,
            opened_segment,
            resident: Arc::default(),
            encoder: encoder::Encoder::new(),
        })
    }

    /// Bounds the ingester by the process's sampled RSS as well as by its own count of
    /// what it holds (see [`memory`]). The server calls it; unit tests, sharing one
    /// process, keep to the count.
    pub(crate) fn watch_memory(&self) {
        memory::watch(&self.resident);
    }

    /// [`Ingester::push_received`] of a request that came uncompressed.
    #[cfg(test)]
    pub(crate) async fn push(
        &self,
        tenant: &TenantId,
        request: &[u8],
        grouped: Grouped,
    ) -> Result<(), IngestError> {
        self.push_received(tenant, request, None, grouped).await
    }

    /// Makes a request durable, then visible. `request` is the OTLP encoding `grouped` was
    /// grouped from, and `gzip` what it inflated from if it came compressed. While nothing
    /// was removed from `grouped` the WAL record is the request as received (the gzip
    /// bytes if any, else `request`: no re-encoding); otherwise the record holds only the
    /// traces kept, so a replay cannot bring back spans the exporter was told were refused.
    pub(crate) async fn push_received(
        &self,
        tenant: &TenantId,
        request: &[u8],
        gzip: Option<&[u8]>,
        grouped: Grouped,
    ) -> Result<(), IngestError> {
        self.check_room(grouped.traces())?;
        let record = if grouped.is_whole() {
            match gzip {
                Some(gz) => wal::encode_payload_gzip(tenant, gz),
                None => wal::encode_payload(tenant, request),
            }
        } else {
            let mut kept = Fragments::default();
            for t in grouped.traces() {
                kept.extend(&t.data);
            }
            wal::encode_payload(tenant, &kept.concat())
        };
        self.append(record, tenant, grouped.into_traces()).await
    }

    /// Pushes `req` as the distributor does when no limit removes anything (tests).
    #[cfg(test)]
    pub(crate) async fn push_request(
        &self,
        tenant: &TenantId,
        req: &ExportTraceServiceRequest,
    ) -> Result<(), IngestError> {
        let raw = req.encode_to_vec();
        self.push(tenant, &raw, group_by_trace(&req.resource_spans))
            .await
    }

    /// Makes visible traces already durable in the ingest log; `position` is the record's
    /// place there, which the log standing in for the WAL (`src/ingest/`) keeps.
    pub(crate) async fn push_logged(
        &self,
        position: Bytes,
        tenant: &TenantId,
        traces: Vec<TraceBatch>,
    ) -> Result<(), IngestError> {
        self.check_room(&traces)?;
        self.append(position, tenant, traces).await
    }

    /// Refuses traces that would take the ingester's memory past `max_live_bytes`: the live
    /// traces, the ones a cut is writing into blocks (they stay in memory until committed),
    /// the allocator's share, and that cut's working set.
    fn check_room(&self, traces: &[TraceBatch]) -> Result<(), IngestError> {
        self.has_room(traces.iter().map(|t| trace_bytes(&t.data)).sum())
    }

    /// Whether `incoming` more bytes fit under `max_live_bytes`. Exports are checked with
    /// their encoded size before they are decoded (a full ingester costs no decode), and
    /// with what their traces hold once grouped.
    pub(crate) fn has_room(&self, incoming: u64) -> Result<(), IngestError> {
        let held = self.held_bytes();
        if held + incoming > self.cfg.max_live_bytes {
            return Err(IngestError::LiveBytesExceeded {
                held,
                limit: self.cfg.max_live_bytes,
            });
        }
        Ok(())
    }

    /// Memory the ingester holds: by its own count, live and flushing traces
    /// ([`trace_bytes`]), the allocator's share on top of them, and
    /// [`Ingester::cut_reserve`] while a cut is being written; then what the process's RSS,
    /// when sampled, holds beyond that count ([`memory::uncounted`]), with room for a
    /// cut's working set on top of it.
    fn held_bytes(&self) -> u64 {
        let flushing = self.metrics.flushing_bytes.get();
        let traces = self.metrics.live_bytes.get() + flushing;
        let reserve = self.cut_reserve();
        let counted = traces + traces / ALLOCATOR_SHARE + if flushing > 0 { reserve } else { 0 };
        // The peaks come as one cut ends and the next begins: the traces just written are
        // freed but still resident (the allocator returns pages after about a second),
        // and the next cut's row groups come from fresh pages. Counting the reserve on top
        // of RSS keeps that room free: on the OTel SDK recording, 0–2 of ~600 RSS samples
        // (0.1 s apart) passed 1,000 MiB with it, 93–99 without.
        let resident = match self.resident.get() {
            0 => 0,
            rss => rss + reserve,
        };
        counted + memory::uncounted(resident, counted)
    }

    /// What writing a cut holds besides its traces: the row group being built (decoded
    /// traces, Arrow arrays, Parquet pages). The encoding thread's live allocations, sampled
    /// every 1,024 traces, peaked at 30–160 MiB with 32 MiB row groups: five row groups,
    /// but never more than 5/32 of the budget. (Three row groups left SDK-data peaks at
    /// 1,015–1,030 MiB against a 1 GiB budget; four, at 964–1,025.)
    fn cut_reserve(&self) -> u64 {
        let row_groups = 5 * self.block_cfg.row_group_size_bytes as u64;
        row_groups.min(self.cfg.max_live_bytes * 5 / 32)
    }

    async fn append(
        &self,
        record: Bytes,
        tenant: &TenantId,
        traces: Vec<TraceBatch>,
    ) -> Result<(), IngestError> {
        let _shared = self.gate.read().await;
        let segment = self.log.append(record).await?;
        self.metrics.stage_cpu.time(Stage::Head, || {
            let mut head = self.head.lock();
            head.insert(tenant, traces, Instant::now(), segment);
            self.update_gauges(&head);
        });
        Ok(())
    }

    /// Rebuilds the head from the WAL one segment at a time. Whenever the head nears
    /// `max_live_bytes` it is written into blocks before replay goes on, so a WAL larger
    /// than memory still replays. Those flushes delete no segment: the ones not read yet are
    /// still needed, and the first flush after replay truncates them all.
    pub(crate) async fn replay_wal(&self, mut replay: wal::Replay) -> Result<(), wal::WalError> {
        let (mut records, mut spans, mut bad, mut blocks) = (0usize, 0usize, 0usize, 0usize);
        let dir = replay.dir().to_owned();
        loop {
            // Reading (and cutting a torn tail) is blocking file I/O.
            let (back, segment) = tokio::task::spawn_blocking(move || {
                let s = replay.next_segment();
                (replay, s)
            })
            .await
            .map_err(|e| wal::WalError::Io {
                path: dir.clone(),
                source: std::io::Error::other(e.to_string()),
            })?;
            replay = back;
            let Some(segment) = segment? else { break };
            for r in &segment {
                let now = Instant::now();
                {
                    let mut head = self.head.lock();
                    let (s, b) = replay_record(&mut head, r, replay.flushed(), now);
                    spans += s;
                    bad += b;
                    self.update_gauges(&head);
                }
                records += 1;
                if self.cut_due(now) == CutDue::Pressure {
                    self.metrics.pressure_cuts.inc();
                    blocks += self.flush_inner(true, false).await;
                }
            }
        }
        let stats = replay.stats();
        info!(
            records,
            spans,
            skipped = bad,
            traces = self.metrics.live_traces.get(),
            blocks_written = blocks,
            skipped_regions = stats.skipped_regions,
            skipped_bytes = stats.skipped_bytes,
            cut_bytes = stats.cut_bytes,
            "wal replayed"
        );
        Ok(())
    }

    fn update_gauges(&self, head: &Head) {
        self.metrics.live_bytes.set(head.bytes);
        self.metrics.live_traces.set(head.traces);
    }

    /// Encoded bytes of a live trace, for the per-trace size limit.
    pub(crate) fn live_trace_bytes(&self, tenant: &TenantId, id: &TraceId) -> usize {
        let head = self.head.lock();
        head.tenants
            .get(tenant)
            .and_then(|m| m.get(id))
            .map_or(0, |l| l.data.len())
    }

    /// How many live traces a tenant has, and which of `ids` are already live: for the
    /// per-tenant `max_traces_per_user` limit (spans of live traces are always accepted).
    pub(crate) fn live_traces(&self, tenant: &TenantId, ids: &[TraceId]) -> (usize, Vec<bool>) {
        let head = self.head.lock();
        match head.tenants.get(tenant) {
            Some(m) => (m.len(), ids.iter().map(|id| m.contains_key(id)).collect()),
            None => (0, vec![false; ids.len()]),
        }
    }

    fn cut_due(&self, now: Instant) -> CutDue {
        let head = self.head.lock();
        match head.started {
            None => CutDue::No,
            // Near the memory bound, idle traces may be too few to make room: write every
            // live trace so exports are refused only briefly (late spans of a trace split
            // this way are merged at read time and by the compactor).
            // So is an ingester refusing exports for memory with no cut under way: what
            // it holds beyond the traces' count (see `memory`) can reach the bound first.
            Some(_)
                if head.bytes.saturating_mul(4) >= self.cfg.max_live_bytes.saturating_mul(3)
                    || (self.metrics.flushing_bytes.get() == 0
                        && self.held_bytes() >= self.cfg.max_live_bytes) =>
            {
                CutDue::Pressure
            }
            Some(started)
                if head.bytes >= self.cfg.max_block_bytes
                    || now.duration_since(started) >= self.cfg.max_block_duration =>
            {
                CutDue::Idle
            }
            Some(_) => CutDue::No,
        }
    }

    /// Takes the traces that are ready to be written (all of them when `force`), rotating the
    /// WAL under the exclusive gate so every older segment holds only data taken here or
    /// carried over.
    async fn cut(&self, force: bool) -> Result<Cut, IngestError> {
        let _exclusive = self.gate.write().await;
        let force = force || !self.log.carries_over();
        let now = Instant::now();
        if !force && !self.any_ready(now) {
            // Nothing to write: rotating now would only rewrite every active trace to the
            // WAL. Wait for the next period instead.
            let mut head = self.head.lock();
            if head.started.is_some() {
                head.started = Some(now);
            }
            return Ok(Cut {
                taken: Arc::new(HashMap::new()),
                boundary: None,
                carry: Carry::default(),
                keep_from: 0,
            });
        }
        // Under the exclusive gate nothing enters the head: these are the tenants whose
        // traces the cut takes (all of them, without carry-over).
        let tenants: Vec<TenantId> = self
            .head
            .lock()
            .tenants
            .iter()
            .filter(|(_, traces)| !traces.is_empty())
            .map(|(t, _)| t.clone())
            .collect();
        let boundary = self.log.rotate(&tenants).await?;
        // Most traces end within a few idle periods: a kept trace younger than two stays
        // where it is (its segments are kept), to be written to the WAL once. An older one
        // is carried over, so a long trace cannot pin old segments (and the disk); so is a
        // replayed one, to let the segments read at start-up go.
        let carry_before = self.opened_segment.unwrap_or(u64::MAX);
        let carry_age = self.cfg.trace_idle_period.saturating_mul(2);
        let mut keep_from = boundary;
        let mut guard = self.head.lock();
        let head = &mut *guard;
        let mut taken: Flushing = HashMap::new();
        let mut carry = Carry::default();
        let (mut bytes, mut count) = (0u64, 0u64);
        // No table is built anew for traces that stay: building both maps at every cut grew
        // 100-200 MiB of tables from fresh pages while the old ones were still resident,
        // the highest crests of RSS under sustained ingest. The kept traces stay in their
        // tenant's map, which keeps its table for the traces that arrive next; a cut of
        // everything moves the table itself. A tenant with nothing live since the last cut
        // gives its table back.
        head.tenants.retain(|_, traces| !traces.is_empty());
        for (tenant, traces) in head.tenants.iter_mut() {
            if force {
                // A million small traces make a table of ~200 MiB.
                taken.insert(tenant.clone(), std::mem::take(traces));
                continue;
            }
            let mut kept = Vec::new();
            // Counted first so the taken map is allocated once, not grown by rehashing.
            let ready_count = traces.values().filter(|l| self.ready(l, now)).count();
            let mut ready = TraceMap::with_capacity_and_hasher(ready_count, Default::default());
            let taking = traces.extract_if(|_, live| {
                if self.ready(live, now) {
                    return true;
                }
                if live.first_segment < carry_before
                    || now.duration_since(live.first_seen) >= carry_age
                {
                    kept.push(live.data.clone());
                    // Re-appended after the rotation, so in `boundary` or later.
                    live.first_segment = boundary;
                }
                keep_from = keep_from.min(live.first_segment);
                bytes += trace_bytes(&live.data);
                count += 1;
                false
            });
            ready.extend(taking);
            carry.extend(carry_records(tenant, &kept, CARRY_RECORD_BYTES));
            if !ready.is_empty() {
                taken.insert(tenant.clone(), ready);
            }
        }
        head.bytes = bytes;
        head.traces = count;
        head.started = (count > 0).then_some(now);
        self.update_gauges(head);
        let taken = Arc::new(taken);
        if !taken.is_empty() {
            // Still under the head lock, so readers never see the trace in neither place.
            *self.flushing_blocks.write() = Arc::new(
                taken
                    .keys()
                    .map(|t| {
                        let id = self.log.block_id(t, boundary).unwrap_or_else(Uuid::new_v4);
                        (t.clone(), id)
                    })
                    .collect(),
            );
            *self.flushing.write() = taken.clone();
            let bytes = taken
                .values()
                .flat_map(|m| m.values())
                .map(|l| trace_bytes(&l.data));
            self.metrics.flushing_bytes.set(bytes.sum());
        }
        drop(guard);
        Ok(Cut {
            taken,
            boundary: Some(boundary),
            carry,
            keep_from,
        })
    }

    /// Drops the live (head) traces for which `drop` is true, e.g. those of an ingest
    /// partition this node no longer owns: its new owner consumes them again from the
    /// committed offset. Traces already cut into a block being written stay.
    pub fn drop_live(&self, drop: impl Fn(&TenantId, &TraceId) -> bool) -> usize {
        let mut head = self.head.lock();
        let mut dropped = 0;
        let (mut bytes, mut traces) = (0u64, 0u64);
        for (tenant, map) in head.tenants.iter_mut() {
            map.retain(|id, live| {
                let gone = drop(tenant, id);
                if gone {
                    dropped += 1;
                    bytes += trace_bytes(&live.data);
                    traces += 1;
                }
                !gone
            });
        }
        head.tenants.retain(|_, m| !m.is_empty());
        head.bytes = head.bytes.saturating_sub(bytes);
        head.traces = head.traces.saturating_sub(traces);
        if head.traces == 0 {
            head.started = None;
        }
        self.update_gauges(&head);
        dropped
    }

    fn ready(&self, live: &LiveTrace, now: Instant) -> bool {
        now.duration_since(live.last_seen) >= self.cfg.trace_idle_period
            || now.duration_since(live.first_seen) >= self.cfg.max_trace_live
    }

    fn any_ready(&self, now: Instant) -> bool {
        let head = self.head.lock();
        head.tenants
            .values()
            .flat_map(|m| m.values())
            .any(|live| self.ready(live, now))
    }
}

#[cfg(test)]
mod tests;
