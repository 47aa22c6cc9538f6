//! Which node consumes which partition, with leases in the bucket and no consensus of our
//! own (issue #10).
//!
//! Every consuming node renews `members/<instance>.json`; the live members (an object whose
//! version changed within `partition_lease_timeout`, as seen on this node's clock) share
//! the partitions by a bounded-load rendezvous hash, so each gets at most ceil(P/N) and a
//! membership change moves few partitions. A partition's lease, `leases/<p>.json`, is
//! created only if absent (If-None-Match), renewed only over the version its holder wrote
//! (If-Match), and taken over, If-Match on the version observed, once it has not changed
//! for the timeout on the taker's clock: no writer timestamp is trusted. The lease also
//! carries the partition's committed offset, so a commit is an If-Match write on the lease
//! itself: a node that lost the lease cannot commit.
//!
//! A holder counts its lease valid for two thirds of the timeout after its last successful
//! write started, and checks every quarter timeout, so it stops consuming before any other
//! node can take the lease over.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Mutex};
use tracing::{info, warn};

use crate::backend::cas::{CasError, ObjectVersion};
use crate::backend::{Backend, BackendError};
use crate::metrics::Metrics;

const LEASE_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub(crate) enum OwnershipError {
    #[error("partition {0} is not held by this node")]
    NotHeld(i32),
    #[error("partition {0} lease was lost to another node")]
    Lost(i32),
    #[error("partition lease storage: {0}")]
    Backend(#[from] BackendError),
}

/// The body of `leases/<p>.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct LeaseBody {
    version: u32,
    /// Instance holding the lease; empty when released.
    holder: String,
    /// Where the holder answers queries for its live traces.
    address: String,
    /// The next offset to consume (committed after the blocks holding what precedes it).
    offset: Option<i64>,
    /// Bumped on every write so the object's version changes even on content-hash ETags.
    seq: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct MemberBody {
    version: u32,
    instance: String,
    address: String,
    seq: u64,
}

/// A partition's holder as last seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Owner {
    pub instance: String,
    pub address: String,
}

/// A partition this node holds: `epoch` changes at each acquisition, `offset` is where to
/// start consuming (`None`: no offset was ever committed in a lease).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Held {
    pub epoch: u64,
    pub offset: Option<i64>,
}

pub(crate) struct OwnershipConfig {
    pub instance: String,
    pub address: String,
    pub timeout: Duration,
    pub partitions: u32,
    /// Folder of this group and topic in the bucket (`~ingest/<group>/<topic>`).
    pub dir: String,
}

struct Mine {
    version: ObjectVersion,
    body: LeaseBody,
    valid_until: Instant,
}

#[derive(Default)]
struct State {
    seq: u64,
    epoch: u64,
    mine: BTreeMap<i32, (u64, Mine)>,
    /// Key → (fingerprint, when this node first saw it): the reader's own clock.
    seen: HashMap<String, (String, Instant)>,
}

pub(crate) struct Ownership {
    backend: Backend,
    cfg: OwnershipConfig,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
    held: watch::Sender<BTreeMap<i32, Held>>,
    owners: parking_lot::RwLock<BTreeMap<i32, Owner>>,
    /// Bumped whenever a partition's holder changes, as seen here.
    moves: watch::Sender<u64>,
}

/// Bounded-load rendezvous: each partition goes to the member ranking it highest that
/// still has fewer than ceil(P/N).
pub(crate) fn assign(partitions: u32, members: &[String]) -> BTreeMap<i32, String> {
    let mut out = BTreeMap::new();
    if members.is_empty() {
        return out;
    }
    let cap = (partitions as usize).div_ceil(members.len());
    let mut load: HashMap<&str, usize> = HashMap::new();
    for p in 0..partitions as i32 {
        let mut ranked: Vec<&String> = members.iter().collect();
        ranked.sort_by_key(|m| std::cmp::Reverse((score(p, m), m.as_str())));
        if let Some(m) = ranked
            .into_iter()
            .find(|m| load.get(m.as_str()).copied().unwrap_or(0) < cap)
        {
            *load.entry(m.as_str()).or_default() += 1;
            out.insert(p, m.clone());
        }
    }
    out
}

/// FNV-1a of the member and partition, finished with a mixer so nearby inputs spread.
fn score(p: i32, member: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in member.bytes().chain(p.to_be_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

impl Ownership {
    pub(crate) fn new(backend: Backend, cfg: OwnershipConfig, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            backend,
            cfg,
            metrics,
            state: Mutex::new(State::default()),
            held: watch::channel(BTreeMap::new()).0,
            owners: parking_lot::RwLock::new(BTreeMap::new()),
            moves: watch::channel(0).0,
        })
    }

    pub(crate) fn instance(&self) -> &str {
        &self.cfg.instance
    }

    pub(crate) fn partitions(&self) -> u32 {
        self.cfg.partitions
    }

    /// The partitions this node holds, updated as leases are gained and lost.
    pub(crate) fn subscribe(&self) -> watch::Receiver<BTreeMap<i32, Held>> {
        self.held.subscribe()
    }

    /// Changes whenever a partition changes hands: the blocks its last holder committed
    /// are then worth listing at once (they left that holder's memory).
    pub(crate) fn moves(&self) -> watch::Receiver<u64> {
        self.moves.subscribe()
    }

    /// Records `p`'s holder as seen; `None`: unheld.
    fn set_owner(&self, p: i32, owner: Option<Owner>) {
        let mut owners = self.owners.write();
        let before = owners.get(&p).map(|o| o.instance.clone());
        match owner {
            Some(o) => {
                let moved = before.as_deref() != Some(o.instance.as_str());
                owners.insert(p, o);
                if moved {
                    self.moves.send_modify(|n| *n += 1);
                }
            }
            None => {
                owners.remove(&p);
            }
        }
    }

    /// The holder of `p` as last seen (this node included); `None` while unheld.
    pub(crate) fn owner(&self, p: i32) -> Option<Owner> {
        self.owners.read().get(&p).cloned()
    }

    fn lease_key(&self, p: i32) -> String {
        format!("{}/leases/{p}.json", self.cfg.dir)
    }

    fn member_prefix(&self) -> String {
        format!("{}/members/", self.cfg.dir)
    }

    /// Each bucket request is bounded so a hung request cannot keep a lost lease in use.
    async fn bounded<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, CasError>>,
    ) -> Result<T, CasError> {
        match tokio::time::timeout(self.cfg.timeout / 4, f).await {
            Ok(r) => r,
            Err(_) => Err(CasError::Backend(BackendError::Setup(
                "partition lease request timed out".into(),
            ))),
        }
    }

    /// Writes the lease of `p` with `body` over `expected` (or creates it).
    async fn write(
        &self,
        p: i32,
        body: &LeaseBody,
        expected: Option<&ObjectVersion>,
    ) -> Result<ObjectVersion, CasError> {
        let bytes = Bytes::from(serde_json::to_vec(body).unwrap_or_default());
        let key = self.lease_key(p);
        match expected {
            Some(v) => {
                self.bounded(self.backend.put_if_match(&key, bytes, v))
                    .await
            }
            None => self.bounded(self.backend.put_if_absent(&key, bytes)).await,
        }
    }

    fn observe(st: &mut State, key: &str, fingerprint: String, now: Instant) -> Duration {
        let e = st
            .seen
            .entry(key.to_owned())
            .or_insert_with(|| (fingerprint.clone(), now));
        if e.0 != fingerprint {
            *e = (fingerprint, now);
        }
        now.duration_since(e.1)
    }

    fn publish(&self, st: &State) {
        let held: BTreeMap<i32, Held> = st
            .mine
            .iter()
            .map(|(p, (epoch, m))| {
                (
                    *p,
                    Held {
                        epoch: *epoch,
                        offset: m.body.offset,
                    },
                )
            })
            .collect();
        self.metrics.ingest_partitions_owned.set(held.len() as u64);
        self.held.send_if_modified(|cur| {
            let changed = cur.len() != held.len()
                || cur
                    .iter()
                    .zip(held.iter())
                    .any(|(a, b)| a.0 != b.0 || a.1.epoch != b.1.epoch);
            if changed {
                *cur = held;
            }
            changed
        });
    }

    fn lose(&self, st: &mut State, p: i32, why: &str) {
        if st.mine.remove(&p).is_some() {
            warn!(
                partition = p,
                reason = why,
                "partition lease lost: stopped consuming it"
            );
            self.metrics.ingest_partitions_lost.inc();
            self.set_owner(p, None);
        }
    }

    fn gain(
        &self,
        st: &mut State,
        p: i32,
        version: ObjectVersion,
        body: LeaseBody,
        start: Instant,
    ) {
        st.epoch += 1;
        info!(partition = p, offset = ?body.offset, "partition lease taken: consuming it");
        st.mine.insert(
            p,
            (
                st.epoch,
                Mine {
                    version,
                    body,
                    valid_until: start + self.cfg.timeout * 2 / 3,
                },
            ),
        );
    }

    fn my_body(&self, st: &mut State, offset: Option<i64>) -> LeaseBody {
        st.seq += 1;
        LeaseBody {
            version: LEASE_VERSION,
            holder: self.cfg.instance.clone(),
            address: self.cfg.address.clone(),
            offset,
            seq: st.seq,
        }
    }

    /// One round: renew membership, see who is live, renew, take or release leases.
    pub(crate) async fn tick(&self) {
        let mut st = self.state.lock().await;
        // First, before any request: after a pause (a stopped process, a slow bucket)
        // leases past their local validity stop their readers at once.
        self.expire(&mut st);
        self.publish(&st);
        let now = Instant::now();
        let timeout = self.cfg.timeout;
        st.seq += 1;
        let member = MemberBody {
            version: LEASE_VERSION,
            instance: self.cfg.instance.clone(),
            address: self.cfg.address.clone(),
            seq: st.seq,
        };
        let key = format!("{}{}.json", self.member_prefix(), self.cfg.instance);
        let body = Bytes::from(serde_json::to_vec(&member).unwrap_or_default());
        if let Err(e) = self
            .bounded(async { Ok(self.backend.put(&key, body).await?) })
            .await
        {
            warn!(error = %e, "cannot renew ingest membership");
        }
        let mut live = vec![self.cfg.instance.clone()];
        match self
            .bounded(async {
                Ok(self
                    .backend
                    .list_fingerprints(&self.member_prefix())
                    .await?)
            })
            .await
        {
            Ok(listed) => {
                for m in listed {
                    let Some(name) = m
                        .key
                        .rsplit('/')
                        .next()
                        .and_then(|n| n.strip_suffix(".json"))
                    else {
                        continue;
                    };
                    let age = Self::observe(&mut st, &m.key, m.fingerprint, now);
                    if age < timeout && name != self.cfg.instance {
                        live.push(name.to_owned());
                    }
                }
            }
            Err(e) => warn!(error = %e, "cannot list ingest members"),
        }
        live.sort();
        live.dedup();
        let assigned = assign(self.cfg.partitions, &live);
        for p in 0..self.cfg.partitions as i32 {
            // A slow bucket makes a round long: leases past validity stop between requests.
            self.expire(&mut st);
            self.publish(&st);
            let mine = assigned.get(&p) == Some(&self.cfg.instance);
            self.tick_partition(&mut st, p, mine, now).await;
        }
        self.expire(&mut st);
        self.publish(&st);
    }

    /// Gives up every lease not renewed in time, even if nobody has taken it yet.
    fn expire(&self, st: &mut State) {
        let now = Instant::now();
        let expired: Vec<i32> = st
            .mine
            .iter()
            .filter(|(_, (_, m))| now > m.valid_until)
            .map(|(p, _)| *p)
            .collect();
        for p in expired {
            self.lose(st, p, "not renewed in time");
        }
    }

    async fn tick_partition(&self, st: &mut State, p: i32, assigned: bool, now: Instant) {
        let key = self.lease_key(p);
        let timeout = self.cfg.timeout;
        let current = match self
            .bounded(async { Ok(self.backend.get_versioned(&key).await?) })
            .await
        {
            Ok(c) => c,
            Err(e) => {
                warn!(partition = p, error = %e, "cannot read partition lease");
                return;
            }
        };
        let started = Instant::now();
        let Some((bytes, version)) = current else {
            let age = Self::observe(st, &key, "absent".into(), now);
            if st.mine.contains_key(&p) {
                self.lose(st, p, "lease object deleted");
            }
            // The assignee creates it; anyone does once it stayed absent twice the timeout.
            if assigned || age >= timeout * 2 {
                let body = self.my_body(st, None);
                match self.write(p, &body, None).await {
                    Ok(v) => self.gain(st, p, v, body, started),
                    Err(e) => info!(partition = p, error = %e, "partition lease not created"),
                }
            }
            return;
        };
        let body: LeaseBody = match serde_json::from_slice(&bytes) {
            Ok(b) => b,
            Err(e) => {
                warn!(partition = p, error = %e, "unreadable partition lease, treated as released");
                LeaseBody::default()
            }
        };
        let age = Self::observe(st, &key, version.fingerprint(), now);
        let seen = (!body.holder.is_empty()).then(|| Owner {
            instance: body.holder.clone(),
            address: body.address.clone(),
        });
        self.set_owner(p, seen);
        let held_version = st.mine.get(&p).map(|(_, m)| m.version.clone());
        if held_version.as_ref() == Some(&version) {
            if !assigned {
                // Another live member should have it: stop first, then release, keeping
                // the committed offset in the lease for the next holder.
                let offset = st.mine.get(&p).and_then(|(_, m)| m.body.offset);
                self.lose(st, p, "rebalanced to another member");
                let mut released = self.my_body(st, offset);
                released.holder.clear();
                released.address.clear();
                if let Err(e) = self.write(p, &released, Some(&version)).await {
                    info!(partition = p, error = %e, "partition lease release failed");
                } else {
                    info!(partition = p, "partition lease released for rebalancing");
                }
                return;
            }
            let offset = body.offset;
            let renewed = self.my_body(st, offset);
            match self.write(p, &renewed, Some(&version)).await {
                Ok(v) => {
                    if let Some((_, m)) = st.mine.get_mut(&p) {
                        m.version = v;
                        m.body = renewed;
                        m.valid_until = started + timeout * 2 / 3;
                    }
                }
                Err(CasError::Conflict(_)) => self.lose(st, p, "lease changed under its holder"),
                Err(e) => warn!(partition = p, error = %e, "partition lease renewal failed"),
            }
            return;
        }
        if held_version.is_some() {
            // Our lease was rewritten by someone else: it is theirs now.
            self.lose(st, p, "taken over by another node");
        }
        // A lease of this instance's previous run is reclaimed at once; a released one by
        // its assignee; a stale one once unchanged for the timeout (twice that for anyone).
        let own_restart = body.holder == self.cfg.instance;
        let released = body.holder.is_empty();
        let stale = age >= timeout;
        let take = own_restart
            || (assigned && (released || stale))
            || ((released || stale) && age >= timeout * 2);
        if !take {
            return;
        }
        let fresh = self.my_body(st, body.offset);
        match self.write(p, &fresh, Some(&version)).await {
            Ok(v) => {
                if !own_restart && !released {
                    self.metrics.ingest_partition_takeovers.inc();
                    info!(
                        partition = p,
                        from = %body.holder,
                        unchanged_ms = age.as_millis() as u64,
                        "took over a stale partition lease"
                    );
                }
                self.set_owner(
                    p,
                    Some(Owner {
                        instance: self.cfg.instance.clone(),
                        address: self.cfg.address.clone(),
                    }),
                );
                self.gain(st, p, v, fresh, started);
            }
            Err(e) => info!(partition = p, error = %e, "partition lease not taken"),
        }
    }

    /// Stores `offset` as the committed offset of `p`, only while this node holds its lease
    /// (If-Match on the version it wrote last): the fence on every offset commit.
    pub(crate) async fn commit(&self, p: i32, offset: i64) -> Result<(), OwnershipError> {
        let mut st = self.state.lock().await;
        let Some((_, m)) = st.mine.get(&p) else {
            return Err(OwnershipError::NotHeld(p));
        };
        if Instant::now() > m.valid_until {
            self.lose(&mut st, p, "not renewed in time");
            self.publish(&st);
            return Err(OwnershipError::Lost(p));
        }
        let version = m.version.clone();
        let body = self.my_body(&mut st, Some(offset));
        let started = Instant::now();
        match self.write(p, &body, Some(&version)).await {
            Ok(v) => {
                if let Some((_, m)) = st.mine.get_mut(&p) {
                    m.version = v;
                    m.body = body;
                    m.valid_until = started + self.cfg.timeout * 2 / 3;
                }
                Ok(())
            }
            Err(CasError::Conflict(_)) => {
                self.lose(&mut st, p, "lease changed before the offset commit");
                self.publish(&st);
                Err(OwnershipError::Lost(p))
            }
            Err(CasError::Backend(e)) => Err(OwnershipError::Backend(e)),
        }
    }

    /// Gives every held lease up (keeping its offset) so others take them at once.
    pub(crate) async fn release_all(&self) {
        let mut st = self.state.lock().await;
        let held: Vec<(i32, ObjectVersion, Option<i64>)> = st
            .mine
            .iter()
            .map(|(p, (_, m))| (*p, m.version.clone(), m.body.offset))
            .collect();
        for (p, version, offset) in held {
            self.lose(&mut st, p, "shutting down");
            let mut body = self.my_body(&mut st, offset);
            body.holder.clear();
            body.address.clear();
            if let Err(e) = self.write(p, &body, Some(&version)).await {
                info!(partition = p, error = %e, "partition lease release failed");
            }
        }
        self.publish(&st);
    }

    /// Ticks every quarter of the lease timeout until aborted.
    pub(crate) async fn run(self: Arc<Self>) {
        let mut every = tokio::time::interval(self.cfg.timeout / 4);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            self.tick().await;
        }
    }
}

#[path = "ownership_observe.rs"]
mod observe;

#[cfg(test)]
#[path = "ownership_tests.rs"]
mod tests;
