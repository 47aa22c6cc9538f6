//! Live traces held by other nodes: with the ingest log shared by several nodes, each holds
//! in memory the recent traces of the partitions it owns, so a query on any node asks the
//! owners for theirs (`RemoteLive`, implemented over HTTP by `ingest::peers`) and reads
//! the bucket itself as before.
//!
//! An owner answers with its live traces, the blocks it committed within the last
//! `recent` window (a querier whose block-list poll has not seen them yet would otherwise
//! miss traces just flushed) and the block it is writing now (its traces are in the
//! answer, so metrics skip that block). Duplicates between sources are merged as always.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Buf, BufMut, Bytes};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::Querier;
use crate::block::BlockMeta;
use crate::model::{Fragments, TenantId, TraceId};

/// What one node holds that the bucket's block list may not show yet.
#[derive(Default)]
pub struct LivePart {
    pub traces: Vec<(TraceId, Fragments)>,
    pub blocks: Vec<BlockMeta>,
    pub skip_blocks: Vec<Uuid>,
    /// The partitions the answering node holds and has read up to date (up to the
    /// offsets the asker wanted, when it named some): the only ones an asker may count
    /// as answered.
    pub partitions: Vec<i32>,
    /// Partitions the answering node holds that did not reach the wanted offset in time.
    pub lagging: Vec<Lag>,
}

/// A held partition short of the offset a query wanted when its wait ran out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lag {
    pub partition: i32,
    /// Every record below this offset is applied.
    pub applied: i64,
    pub wanted: i64,
}

/// Held partitions that reached the wanted offsets, and those that did not in time.
#[derive(Debug, Default)]
pub struct Reached {
    pub covered: Vec<i32>,
    pub lagging: Vec<Lag>,
}

/// The ingest partitions this node consumes: which have caught up, and a bounded wait
/// for them to apply every record below given offsets.
#[async_trait]
pub trait LocalPartitions: Send + Sync {
    fn ready(&self) -> Vec<i32>;
    /// Waits (bounded by `ingest.query_wait_timeout`) until each held partition of
    /// `wanted` has applied every record below its offset; unheld ones are in no list.
    async fn reach(&self, wanted: &BTreeMap<i32, i64>) -> Reached;
}

/// The live parts of every other owner, and the owners that did not answer.
#[derive(Default)]
pub struct RemoteLiveResult {
    pub part: LivePart,
    pub asked: usize,
    pub unreachable: Vec<String>,
}

impl RemoteLiveResult {
    /// Why an answer built on this is incomplete, if it is.
    pub fn partial(&self) -> Option<String> {
        (!self.unreachable.is_empty()).then(|| {
            format!(
                "partial results: {} of {} nodes holding live traces did not answer ({})",
                self.unreachable.len(),
                self.asked,
                self.unreachable.join(", ")
            )
        })
    }
}

/// Asks the nodes owning ingest partitions for their live traces.
#[async_trait]
pub trait RemoteLive: Send + Sync {
    /// With `trace`, only the owner of that trace's partition is asked.
    async fn live(&self, tenant: &TenantId, trace: Option<&TraceId>) -> RemoteLiveResult;
}

/// Blocks this process committed lately, kept for the `recent` window.
pub struct RecentBlocks {
    window: Duration,
    blocks: Mutex<VecDeque<(Instant, BlockMeta)>>,
}

impl RecentBlocks {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            blocks: Mutex::new(VecDeque::new()),
        }
    }

    pub fn add(&self, meta: BlockMeta) {
        let now = Instant::now();
        let mut b = self.blocks.lock();
        while b
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > self.window)
        {
            b.pop_front();
        }
        b.push_back((now, meta));
    }

    fn of(&self, tenant: &TenantId) -> Vec<BlockMeta> {
        let now = Instant::now();
        self.blocks
            .lock()
            .iter()
            .filter(|(t, m)| {
                now.duration_since(*t) <= self.window && m.tenant_id == tenant.as_str()
            })
            .map(|(_, m)| m.clone())
            .collect()
    }
}

#[derive(Serialize, Deserialize)]
struct Header {
    blocks: Vec<BlockMeta>,
    skip_blocks: Vec<Uuid>,
    #[serde(default)]
    partitions: Vec<i32>,
    #[serde(default)]
    lagging: Vec<Lag>,
}

/// The wire form: a length-prefixed JSON header, then `[trace ID][u32 length][OTLP]`.
pub fn encode_part(part: &LivePart) -> Vec<u8> {
    let header = serde_json::to_vec(&Header {
        blocks: part.blocks.clone(),
        skip_blocks: part.skip_blocks.clone(),
        partitions: part.partitions.clone(),
        lagging: part.lagging.clone(),
    })
    .unwrap_or_default();
    let mut out = Vec::with_capacity(4 + header.len());
    out.put_u32(header.len() as u32);
    out.extend_from_slice(&header);
    for (id, data) in &part.traces {
        out.extend_from_slice(&id.0);
        out.put_u32(data.len() as u32);
        out.extend_from_slice(&data.concat());
    }
    out
}

#[derive(Debug, thiserror::Error)]
#[error("malformed live-traces answer: {0}")]
pub struct PartError(String);

pub fn decode_part(mut b: Bytes) -> Result<LivePart, PartError> {
    let short = |what: &str| PartError(format!("truncated {what}"));
    if b.remaining() < 4 {
        return Err(short("header length"));
    }
    let n = b.get_u32() as usize;
    if b.remaining() < n {
        return Err(short("header"));
    }
    let header: Header =
        serde_json::from_slice(&b.split_to(n)).map_err(|e| PartError(e.to_string()))?;
    let mut traces = Vec::new();
    while b.has_remaining() {
        if b.remaining() < 20 {
            return Err(short("trace entry"));
        }
        let mut id = [0u8; 16];
        b.copy_to_slice(&mut id);
        let len = b.get_u32() as usize;
        if b.remaining() < len {
            return Err(short("trace data"));
        }
        let data = Fragments::from_encoded(b.split_to(len))
            .map_err(|e| PartError(format!("trace data: {e}")))?;
        traces.push((TraceId(id), data));
    }
    Ok(LivePart {
        traces,
        blocks: header.blocks,
        skip_blocks: header.skip_blocks,
        partitions: header.partitions,
        lagging: header.lagging,
    })
}

/// `p:offset,p:offset`, the `wait` parameter of `/internal/live`.
pub fn encode_wanted(wanted: &BTreeMap<i32, i64>) -> String {
    let parts: Vec<String> = wanted.iter().map(|(p, o)| format!("{p}:{o}")).collect();
    parts.join(",")
}

/// The inverse of [`encode_wanted`]; `None` for anything else.
pub fn decode_wanted(s: &str) -> Option<BTreeMap<i32, i64>> {
    s.split(',')
        .filter(|x| !x.is_empty())
        .map(|x| {
            let (p, o) = x.split_once(':')?;
            Some((p.parse().ok()?, o.parse().ok()?))
        })
        .collect()
}

impl Querier {
    /// This node's own live part, for another node's query. With `wanted` (partition →
    /// the high watermark the asker learned), the partitions named are answered for only
    /// once applied up to their offset, after a bounded wait; the snapshot follows it.
    pub async fn local_live(
        &self,
        tenant: &TenantId,
        trace: Option<&TraceId>,
        wanted: &BTreeMap<i32, i64>,
    ) -> LivePart {
        let Some(ing) = &self.ingester else {
            return LivePart::default();
        };
        let (partitions, lagging) = match &self.partitions {
            None => (Vec::new(), Vec::new()),
            Some(local) if wanted.is_empty() => (local.ready(), Vec::new()),
            Some(local) => {
                let r = local.reach(wanted).await;
                // Partitions the asker did not name count as before: caught up.
                let mut covered = r.covered;
                covered.extend(
                    local
                        .ready()
                        .into_iter()
                        .filter(|p| !wanted.contains_key(p)),
                );
                (covered, r.lagging)
            }
        };
        let (mut traces, flushing) = ing.snapshot_with_block(tenant);
        if let Some(id) = trace {
            traces.retain(|(t, _)| t == id);
        }
        // Listed after the snapshot: a block committed in between is in one or the other.
        let blocks = self
            .recent
            .as_ref()
            .map(|r| r.of(tenant))
            .unwrap_or_default();
        LivePart {
            traces,
            blocks,
            skip_blocks: flushing.into_iter().collect(),
            partitions,
            lagging,
        }
    }

    /// The other owners' live parts; their recent blocks join this node's block list.
    pub(crate) async fn remote_live(
        &self,
        tenant: &TenantId,
        trace: Option<&TraceId>,
    ) -> RemoteLiveResult {
        let Some(remote) = &self.remote else {
            return RemoteLiveResult::default();
        };
        let r = remote.live(tenant, trace).await;
        for meta in &r.part.blocks {
            if !self.blocklist.contains(tenant, &meta.block_id) {
                self.blocklist.add(tenant.clone(), meta.clone());
            }
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_round_trip_and_truncation_is_refused() {
        let part = LivePart {
            traces: vec![(
                TraceId([7; 16]),
                Fragments::from_encoded(Bytes::from_static(b"\x0a\x00")).unwrap(),
            )],
            blocks: vec![BlockMeta::default()],
            skip_blocks: vec![Uuid::from_u128(5)],
            partitions: vec![2, 3],
            lagging: vec![Lag {
                partition: 4,
                applied: 10,
                wanted: 12,
            }],
        };
        let bytes = encode_part(&part);
        let back = decode_part(Bytes::from(bytes.clone())).unwrap();
        assert_eq!(back.traces.len(), 1);
        assert_eq!(back.traces[0].0, TraceId([7; 16]));
        assert_eq!(back.traces[0].1.concat(), b"\x0a\x00");
        assert_eq!(back.skip_blocks, vec![Uuid::from_u128(5)]);
        assert_eq!(back.blocks.len(), 1);
        assert_eq!(back.partitions, vec![2, 3]);
        assert_eq!(back.lagging, part.lagging);
        for cut in [0, 3, bytes.len() - 1] {
            assert!(decode_part(Bytes::copy_from_slice(&bytes[..cut])).is_err());
        }
    }

    #[test]
    fn wanted_offsets_round_trip_and_garbage_is_refused() {
        let w = BTreeMap::from([(0, 12), (5, 0), (11, 9_000_000_000)]);
        let s = encode_wanted(&w);
        assert_eq!(s, "0:12,5:0,11:9000000000");
        assert_eq!(decode_wanted(&s), Some(w));
        assert_eq!(decode_wanted(""), Some(BTreeMap::new()));
        for bad in ["0", "0:x", "a:1", "0:1,2"] {
            assert_eq!(decode_wanted(bad), None, "{bad}");
        }
    }
}
