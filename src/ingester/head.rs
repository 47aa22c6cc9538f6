//! The head: live traces by tenant, each with the oldest WAL segment holding its data, and
//! the records that carry traces over to a newer segment at a cut.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::time::Instant;

use bytes::Bytes;
use prost::Message;
use tracing::warn;

use super::wal;
use crate::model::{
    group_by_trace, ExportTraceServiceRequest, Fragments, TenantId, TraceBatch, TraceId, TraceMap,
};

pub(super) struct LiveTrace {
    pub(super) data: Fragments,
    pub(super) first_seen: Instant,
    pub(super) last_seen: Instant,
    /// The oldest WAL segment holding the trace's data: every later append lands in this
    /// segment or a newer one, so the segments before it can go without the trace.
    pub(super) first_segment: u64,
}

#[derive(Default)]
pub(super) struct Head {
    pub(super) tenants: HashMap<TenantId, TraceMap<LiveTrace>>,
    pub(super) bytes: u64,
    pub(super) traces: u64,
    pub(super) started: Option<Instant>,
}

/// Memory a trace holds in the ingester, which `max_live_bytes` bounds: its bytes as
/// received, its chunk handles (and the shared header a chunk gets once cloned), and its
/// entry in the trace map with the map's spare room. On the OTel SDK recording (traces of
/// 3–10 spans of ~150 B) the heap ran ~230 MiB (22%) above the received bytes alone at the
/// peaks of sustained ingest; counted this way, it runs above them by the cut's working set.
pub(super) fn trace_bytes(data: &Fragments) -> u64 {
    const CHUNK: usize = 2 * std::mem::size_of::<Bytes>();
    const ENTRY: usize = std::mem::size_of::<(TraceId, LiveTrace)>() * 3 / 2;
    (data.len() + data.chunk_capacity() * CHUNK + ENTRY) as u64
}

impl Head {
    /// Adds `traces`, durable in WAL segment `segment` (or a newer one).
    pub(super) fn insert(
        &mut self,
        tenant: &TenantId,
        traces: Vec<TraceBatch>,
        now: Instant,
        segment: u64,
    ) {
        let map = match self.tenants.get_mut(tenant) {
            Some(m) => m,
            None => self.tenants.entry(tenant.clone()).or_default(),
        };
        for t in traces {
            match map.entry(t.id) {
                Entry::Occupied(mut e) => {
                    let live = e.get_mut();
                    let before = trace_bytes(&live.data);
                    live.data.extend(&t.data);
                    self.bytes += trace_bytes(&live.data) - before;
                    live.last_seen = now;
                    live.first_segment = live.first_segment.min(segment);
                }
                Entry::Vacant(e) => {
                    self.bytes += trace_bytes(&t.data);
                    self.traces += 1;
                    e.insert(LiveTrace {
                        data: t.data,
                        first_seen: now,
                        last_seen: now,
                        first_segment: segment,
                    });
                }
            }
        }
        self.started.get_or_insert(now);
    }
}

/// Carried-over traces are re-appended in WAL records of about this size: one record per
/// tenant could pass [`wal::MAX_RECORD`] and then never be written, stalling every flush.
pub(super) const CARRY_RECORD_BYTES: usize = 16 << 20;

/// WAL records re-appending one tenant's `traces`, each about `max` bytes at most (a single
/// trace larger than that gets a record of its own).
pub(super) fn carry_records<'a>(
    tenant: &TenantId,
    traces: impl IntoIterator<Item = &'a Fragments>,
    max: usize,
) -> Carry {
    let mut out = Carry::default();
    out.add(tenant, traces, max);
    out
}

/// Traces to re-append to the WAL, grouped into records of about `max` bytes but encoded
/// one record at a time as they are appended: a cut keeping hundreds of MiB in memory
/// then holds one record's copy, not a copy of everything it keeps.
#[derive(Default)]
pub(crate) struct Carry {
    records: Vec<(TenantId, Vec<Fragments>)>,
}

impl Carry {
    pub(super) fn add<'a>(
        &mut self,
        tenant: &TenantId,
        traces: impl IntoIterator<Item = &'a Fragments>,
        max: usize,
    ) {
        // Fragments concatenate into a valid ExportTraceServiceRequest.
        let mut cur: Vec<Fragments> = Vec::new();
        let mut len = 0;
        for f in traces {
            if len > 0 && len + f.len() > max {
                self.records
                    .push((tenant.clone(), std::mem::take(&mut cur)));
                len = 0;
            }
            len += f.len();
            cur.push(f.clone());
        }
        if len > 0 {
            self.records.push((tenant.clone(), cur));
        }
    }

    pub(super) fn extend(&mut self, other: Carry) {
        self.records.extend(other.records);
    }

    /// The WAL records, each encoded only when the iterator reaches it.
    pub(crate) fn records(self) -> impl Iterator<Item = Bytes> {
        self.records
            .into_iter()
            .map(|(tenant, traces)| wal::encode_payload_parts(&tenant, &traces))
    }
}

/// Inserts one replayed WAL record into the head, without the traces `flushed` says are in
/// blocks already; returns (spans, unreadable records).
pub(super) fn replay_record(
    head: &mut Head,
    r: &wal::ReplayedRecord,
    flushed: &wal::Flushed,
    now: Instant,
) -> (usize, usize) {
    let (tenant, otlp) = match wal::decode_payload(&r.payload) {
        Ok(x) => x,
        Err(e) => {
            warn!(segment = r.segment, error = %e, "skipping unreadable wal record");
            return (0, 1);
        }
    };
    let req = match ExportTraceServiceRequest::decode(otlp) {
        Ok(r) => r,
        Err(e) => {
            warn!(segment = r.segment, error = %e, "skipping undecodable wal record");
            return (0, 1);
        }
    };
    let mut grouped = group_by_trace(&req.resource_spans);
    let mut accepted = grouped.accepted;
    if !flushed.is_empty() {
        accepted -= grouped.retain(|t| !flushed.contains(r.segment, &tenant, &t.id));
    }
    head.insert(&tenant, grouped.into_traces(), now, r.segment);
    (accepted, 0)
}
