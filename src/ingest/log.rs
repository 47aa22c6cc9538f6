//! The ingester's log when the Kafka ingest log is on: the broker already holds the data, so
//! this log only tracks positions. A WAL "record" here is a (partition, offset) mark; a cut
//! closes the offset ranges consumed since the last one; committing a cut (after its blocks'
//! `meta.json`) stores the ranges' ends as this group's committed offsets in the bucket.
//!
//! Exactly-once blocks: before any block of a cut is written, the cut's ranges are stored
//! (`cut.json`). A node restarted after a crash between `meta.json` and the commit finds
//! that cut still starting at the committed offsets, consumes exactly those ranges again
//! and cuts there, so its blocks get the same IDs (derived from tenant and ranges): the
//! flush skips those already committed (or compacted) and rewrites, under the same ID, any
//! left half-written; never a second copy.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Buf, BufMut, Bytes};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};
use uuid::Uuid;

use super::ownership::Ownership;
use crate::backend::{Backend, BackendError};
use crate::ingester::wal::WalError;
use crate::ingester::IngestLog;
use crate::model::TenantId;

/// First byte of a position mark; carry-over records (WAL payloads) start with another.
const POSITION: u8 = 0xB1;
const STATE_VERSION: u32 = 1;

/// Per partition, a half-open offset range `[start, end)`.
pub(crate) type Ranges = BTreeMap<i32, (i64, i64)>;

/// The mark the consumer passes as the "WAL record" of a consumed record.
pub(crate) fn position(partition: i32, offset: i64) -> Bytes {
    let mut b = Vec::with_capacity(13);
    b.put_u8(POSITION);
    b.put_i32(partition);
    b.put_i64(offset);
    Bytes::from(b)
}

fn parse_position(mut b: &[u8]) -> Option<(i32, i64)> {
    if b.len() != 13 || b[0] != POSITION {
        return None;
    }
    b.advance(1);
    Some((b.get_i32(), b.get_i64()))
}

/// `offsets.json`: the next offset to consume, per partition. Written after `meta.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Committed {
    version: u32,
    committed: BTreeMap<i32, i64>,
}

/// `cut.json`: the ranges of the latest cut, written before its first block. Still pending
/// while its starts equal the committed offsets (its commit did not land).
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct Cut {
    version: u32,
    pub(super) ranges: Ranges,
    /// The tenants the cut writes a block for (one each), so a later holder of its
    /// partitions can tell whether all of them landed ([`PartitionLog::adopt`]). Empty in
    /// cuts written before this field existed (`None`): those are never adopted.
    #[serde(default)]
    pub(super) tenants: Option<Vec<String>>,
}

pub(super) trait Versioned {
    fn version(&self) -> u32;
}

impl Versioned for Committed {
    fn version(&self) -> u32 {
        self.version
    }
}

impl Versioned for Cut {
    fn version(&self) -> u32 {
        self.version
    }
}

#[derive(Default)]
struct State {
    segment: u64,
    committed: BTreeMap<i32, i64>,
    /// Where the current segment's range begins, per partition (the end of the last cut).
    next_start: BTreeMap<i32, i64>,
    /// One past the last offset appended in the current segment, per partition.
    current: BTreeMap<i32, i64>,
    /// Cuts whose blocks are being written, by the boundary `rotate` returned.
    closed: BTreeMap<u64, Ranges>,
    /// A carry-over record was appended: data only in memory, so nothing may be committed.
    tainted: bool,
    /// The segment in which each partition was last (re)gained: ranges of cuts closed
    /// before it were consumed under an earlier lease and are never committed now.
    gained_at: BTreeMap<i32, u64>,
}

pub(crate) struct PartitionLog {
    pub(super) backend: Backend,
    /// `~ingest/<group>/<topic>`: see [`PartitionLog::dir`].
    pub(super) dir: String,
    offsets_key: String,
    cut_key: String,
    pub(super) topic: String,
    state: Mutex<State>,
    /// The cut found pending at start, to be consumed again exactly.
    pending: Mutex<Option<Ranges>>,
    /// With partition leases, every offset commit is an If-Match write on the lease.
    pub(super) fence: Option<Arc<Ownership>>,
}

pub(super) fn backend_err(e: BackendError) -> WalError {
    WalError::Log(e.to_string())
}

/// Reads a versioned JSON object; `None` when it does not exist.
pub(super) async fn load<T: serde::de::DeserializeOwned + Versioned>(
    backend: &Backend,
    key: &str,
) -> Result<Option<T>, WalError> {
    let value: T = match backend.get(key).await {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| WalError::Log(format!("{key}: {e}")))?,
        Err(BackendError::NotFound(_)) => return Ok(None),
        Err(e) => return Err(backend_err(e)),
    };
    if value.version() > STATE_VERSION {
        return Err(WalError::Log(format!(
            "{key} has version {}, this build reads {STATE_VERSION}",
            value.version()
        )));
    }
    Ok(Some(value))
}

impl PartitionLog {
    /// The folder of a group and topic in the bucket. `~` is not allowed in a tenant ID,
    /// so the block list and the compactor, which treat top-level folders as tenants, skip
    /// this one.
    pub(crate) fn dir(group: &str, topic: &str) -> String {
        format!("~ingest/{group}/{topic}")
    }

    /// Loads the group's committed offsets and pending cut from the bucket.
    #[cfg(test)]
    pub(crate) async fn open(
        backend: Backend,
        group: &str,
        topic: &str,
    ) -> Result<PartitionLog, WalError> {
        Self::open_inner(backend, group, topic, None).await
    }

    /// [`PartitionLog::open`] for a node sharing the topic: offsets are committed in the
    /// partition leases of `ownership` (fenced), the pending cut is this instance's own, and
    /// it is redone only over partitions still held from the committed offset
    /// ([`PartitionLog::resolve_pending`]). `offsets.json` is still read, for partitions
    /// whose lease never held an offset.
    pub(crate) async fn open_fenced(
        backend: Backend,
        group: &str,
        topic: &str,
        ownership: Arc<Ownership>,
    ) -> Result<PartitionLog, WalError> {
        Self::open_inner(backend, group, topic, Some(ownership)).await
    }

    async fn open_inner(
        backend: Backend,
        group: &str,
        topic: &str,
        fence: Option<Arc<Ownership>>,
    ) -> Result<PartitionLog, WalError> {
        let dir = Self::dir(group, topic);
        let offsets_key = format!("{dir}/offsets.json");
        let cut_key = match &fence {
            Some(o) => format!("{dir}/cuts/{}.json", o.instance()),
            None => format!("{dir}/cut.json"),
        };
        let committed = load::<Committed>(&backend, &offsets_key)
            .await?
            .unwrap_or_default()
            .committed;
        // A cut is pending only if it starts where the commit left off; otherwise its
        // commit landed.
        let pending = load::<Cut>(&backend, &cut_key)
            .await?
            .map(|c| c.ranges)
            .filter(|ranges| {
                !ranges.is_empty()
                    && ranges
                        .iter()
                        .all(|(p, (s, e))| committed.get(p).copied().unwrap_or(*s) == *s && e > s)
            });
        info!(key = %offsets_key, committed = ?committed, pending = ?pending, "ingest offsets loaded");
        let raw = match &fence {
            // Judged against the leases once they are taken.
            Some(_) => load::<Cut>(&backend, &cut_key).await?.map(|c| c.ranges),
            None => pending,
        };
        Ok(PartitionLog {
            backend,
            dir,
            offsets_key,
            cut_key,
            topic: topic.to_owned(),
            state: Mutex::new(State {
                next_start: if fence.is_some() {
                    BTreeMap::new()
                } else {
                    committed.clone()
                },
                committed,
                ..State::default()
            }),
            pending: Mutex::new(raw),
            fence,
        })
    }

    /// Keeps the pending cut only if every partition of it is held (`starts`: where each
    /// held partition's consumption starts) and starts where its commit would have left
    /// off; otherwise its partitions moved on and the cut is dropped.
    pub(crate) fn resolve_pending(&self, starts: &BTreeMap<i32, i64>) -> Option<Ranges> {
        let mut pending = self.pending.lock();
        let keep = pending.as_ref().is_some_and(|r| {
            !r.is_empty()
                && r.iter()
                    .all(|(p, (s, e))| starts.get(p) == Some(s) && e > s)
        });
        if !keep {
            if let Some(r) = pending.take() {
                info!(cut = ?r, "the last cut of this instance is committed or its partitions moved: not redone");
            }
        }
        pending.clone()
    }

    /// Starts tracking `p` under a new lease whose committed offset is `lease_offset`;
    /// returns where to consume from (`None`: nothing was ever committed).
    pub(crate) fn gain(&self, p: i32, lease_offset: Option<i64>) -> Option<i64> {
        let mut st = self.state.lock();
        let start = match (lease_offset, st.committed.get(&p).copied()) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        if let Some(s) = start {
            st.committed.insert(p, s);
            st.next_start.insert(p, s);
        } else {
            st.next_start.remove(&p);
        }
        st.current.remove(&p);
        let segment = st.segment;
        st.gained_at.insert(p, segment);
        start
    }

    /// Moves where `p` is consumed from to `to`: the records before it are in blocks an
    /// earlier holder wrote ([`PartitionLog::adopt`]).
    pub(crate) fn advance(&self, p: i32, to: i64) {
        let mut st = self.state.lock();
        st.committed.insert(p, to);
        st.next_start.insert(p, to);
    }

    /// Stops tracking `p` (its lease is gone): nothing consumed under it is committed.
    pub(crate) fn lose(&self, p: i32) {
        let mut st = self.state.lock();
        st.current.remove(&p);
        st.next_start.remove(&p);
        // Cuts closed so far never commit `p`, and neither do later ones until regained.
        st.gained_at.insert(p, u64::MAX);
    }

    /// The next offset to consume for `partition`, if one was committed.
    pub(crate) fn committed(&self, partition: i32) -> Option<i64> {
        self.state.lock().committed.get(&partition).copied()
    }

    /// The cut to consume again before anything else (see the module docs).
    pub(crate) fn pending_cut(&self) -> Option<Ranges> {
        self.pending.lock().clone()
    }

    async fn store(&self, key: &str, value: &impl Serialize) -> Result<(), WalError> {
        let bytes = serde_json::to_vec(value).map_err(|e| WalError::Log(e.to_string()))?;
        self.backend
            .put(key, bytes.into())
            .await
            .map_err(backend_err)
    }
}

/// A block ID from the tenant and the cut's ranges: SHA-256 of a canonical encoding, shaped
/// as a version-8 (custom) UUID.
pub(crate) fn block_id(topic: &str, tenant: &TenantId, ranges: &Ranges) -> Uuid {
    let mut buf = Vec::new();
    buf.extend_from_slice(b"vivace-ingest-block-v1\0");
    buf.extend_from_slice(topic.as_bytes());
    buf.push(0);
    buf.extend_from_slice(tenant.as_str().as_bytes());
    buf.push(0);
    for (p, (s, e)) in ranges {
        buf.put_i32(*p);
        buf.put_i64(*s);
        buf.put_i64(*e);
    }
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &buf);
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest.as_ref()[..16]);
    uuid::Builder::from_custom_bytes(b).into_uuid()
}

#[async_trait]
impl IngestLog for PartitionLog {
    async fn append(&self, record: Bytes) -> Result<u64, WalError> {
        let mut st = self.state.lock();
        match parse_position(&record) {
            Some((p, offset)) => {
                st.next_start.entry(p).or_insert(offset);
                let end = st.current.entry(p).or_insert(offset + 1);
                *end = (*end).max(offset + 1);
            }
            None => {
                // Only a failed block re-appends traces; keep every offset uncommitted so a
                // restart reads them again from the broker.
                if !st.tainted {
                    error!("traces carried over in memory: ingest offsets will not be committed until restart");
                }
                st.tainted = true;
            }
        }
        Ok(st.segment)
    }

    async fn rotate(&self, tenants: &[TenantId]) -> Result<u64, WalError> {
        let ranges: Ranges = {
            let st = self.state.lock();
            st.current
                .iter()
                .filter_map(|(p, end)| {
                    let start = st.next_start.get(p).copied().unwrap_or(*end);
                    (*end > start).then_some((*p, (start, *end)))
                })
                .collect()
        };
        if !ranges.is_empty() {
            // Stored before any block of this cut is written: see the module docs.
            let cut = Cut {
                version: STATE_VERSION,
                ranges: ranges.clone(),
                tenants: Some(tenants.iter().map(|t| t.as_str().to_owned()).collect()),
            };
            self.store(&self.cut_key, &cut).await?;
        }
        let mut st = self.state.lock();
        for (p, (_, end)) in &ranges {
            st.next_start.insert(*p, *end);
        }
        st.current.clear();
        st.segment += 1;
        let boundary = st.segment;
        st.closed.insert(boundary, ranges);
        Ok(boundary)
    }

    async fn truncate_before(&self, boundary: u64) -> Result<(), WalError> {
        let (committed, changed) = {
            let mut st = self.state.lock();
            if st.tainted {
                return Ok(());
            }
            let mut committed = st.committed.clone();
            for (b, ranges) in st.closed.range(..=boundary) {
                for (p, (_, end)) in ranges {
                    if st.gained_at.get(p).is_some_and(|g| *b <= *g) {
                        continue;
                    }
                    let c = committed.entry(*p).or_insert(*end);
                    *c = (*c).max(*end);
                }
            }
            let changed: Vec<(i32, i64)> = committed
                .iter()
                .filter(|(p, c)| st.committed.get(p) != Some(c))
                .map(|(p, c)| (*p, *c))
                .collect();
            if changed.is_empty() {
                st.closed.retain(|b, _| *b > boundary);
                return Ok(());
            }
            (committed, changed)
        };
        match &self.fence {
            Some(ownership) => {
                // One fenced write per partition: a partition whose lease is gone is not
                // committed (its new holder consumes it again), the others are.
                for (p, offset) in changed {
                    match ownership.commit(p, offset).await {
                        Ok(()) => {
                            self.state.lock().committed.insert(p, offset);
                        }
                        Err(e) => {
                            warn!(partition = p, offset, error = %e, "offset not committed");
                        }
                    }
                }
            }
            None => {
                let value = Committed {
                    version: STATE_VERSION,
                    committed: committed.clone(),
                };
                self.store(&self.offsets_key, &value).await?;
                self.state.lock().committed = committed;
            }
        }
        self.state.lock().closed.retain(|b, _| *b > boundary);
        Ok(())
    }

    fn carries_over(&self) -> bool {
        false
    }

    fn abandoned(&self, boundary: u64) -> bool {
        let st = self.state.lock();
        // Lost (or lost and regained) since the cut: its holder consumes it again from the
        // committed offset, at or before this cut's start.
        st.closed.get(&boundary).is_some_and(|r| {
            !r.is_empty()
                && r.keys()
                    .all(|p| st.gained_at.get(p).is_some_and(|g| boundary <= *g))
        })
    }

    fn block_id(&self, tenant: &TenantId, boundary: u64) -> Option<Uuid> {
        let st = self.state.lock();
        st.closed
            .get(&boundary)
            .filter(|r| !r.is_empty())
            .map(|r| block_id(&self.topic, tenant, r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(s: &str) -> TenantId {
        TenantId::new(s).unwrap()
    }

    #[tokio::test]
    async fn commits_cut_ends_after_truncate_and_redoes_a_pending_cut() {
        let backend = Backend::memory();
        let log = PartitionLog::open(backend.clone(), "g", "t").await.unwrap();
        assert!(log.pending_cut().is_none());
        for (p, o) in [(0, 5), (0, 6), (1, 0), (0, 7)] {
            log.append(position(p, o)).await.unwrap();
        }
        let b = log.rotate(&[]).await.unwrap();
        let id = log.block_id(&tenant("a"), b).unwrap();
        // Crash here: blocks may be written, offsets not committed.
        let again = PartitionLog::open(backend.clone(), "g", "t").await.unwrap();
        let pending = again.pending_cut().unwrap();
        assert_eq!(pending, Ranges::from([(0, (5, 8)), (1, (0, 1))]));
        assert_eq!(again.committed(0), None);
        // The redo consumes the same records and gets the same block ID.
        for (p, o) in [(0, 5), (1, 0), (0, 6), (0, 7)] {
            again.append(position(p, o)).await.unwrap();
        }
        let b2 = again.rotate(&[]).await.unwrap();
        assert_eq!(again.block_id(&tenant("a"), b2), Some(id));
        assert_ne!(again.block_id(&tenant("b"), b2), Some(id));
        again.truncate_before(b2).await.unwrap();
        let after = PartitionLog::open(backend, "g", "t").await.unwrap();
        assert!(after.pending_cut().is_none());
        assert_eq!((after.committed(0), after.committed(1)), (Some(8), Some(1)));
    }

    #[tokio::test]
    async fn next_cut_starts_where_the_last_ended_and_carry_over_blocks_commits() {
        let backend = Backend::memory();
        let log = PartitionLog::open(backend.clone(), "g", "t").await.unwrap();
        log.append(position(2, 10)).await.unwrap();
        let b1 = log.rotate(&[]).await.unwrap();
        log.append(position(2, 11)).await.unwrap();
        log.append(position(2, 12)).await.unwrap();
        let b2 = log.rotate(&[]).await.unwrap();
        let ids = (
            log.block_id(&tenant("a"), b1).unwrap(),
            log.block_id(&tenant("a"), b2).unwrap(),
        );
        assert_ne!(ids.0, ids.1);
        assert_eq!(
            ids.1,
            block_id("t", &tenant("a"), &Ranges::from([(2, (11, 13))]))
        );
        log.truncate_before(b2).await.unwrap();
        assert_eq!(log.committed(2), Some(13));
        // An empty cut has no deterministic ID and commits nothing new.
        let b3 = log.rotate(&[]).await.unwrap();
        assert_eq!(log.block_id(&tenant("a"), b3), None);
        // A carried-over (non-position) record keeps offsets where they are.
        log.append(position(2, 13)).await.unwrap();
        log.append(Bytes::from_static(b"\x01wal payload"))
            .await
            .unwrap();
        let b4 = log.rotate(&[]).await.unwrap();
        log.truncate_before(b4).await.unwrap();
        let reopened = PartitionLog::open(backend, "g", "t").await.unwrap();
        assert_eq!(reopened.committed(2), Some(13));
        assert!(!log.carries_over());
    }

    #[test]
    fn positions_round_trip_and_reject_other_records() {
        assert_eq!(
            parse_position(&position(-1, i64::MAX)),
            Some((-1, i64::MAX))
        );
        assert_eq!(parse_position(b"\xB1short"), None);
        assert_eq!(parse_position(&[0u8; 13]), None);
    }
}
