//! How many distributors are healthy, for tenants whose rate is `global` (Tempo's
//! `rate_strategy: global` divides the tenant's rate by this count).
//!
//! Every node running the distributor with `ingest:` renews
//! `~ingest/<group>/<topic>/distributors/<instance>.json` every quarter of
//! `partition_lease_timeout`, lists the folder and counts the objects whose version changed
//! within the timeout, as seen on its own clock (no writer timestamp is trusted, as for the
//! partition leases). A node stopping cleanly deletes its object; a dead one stops counting
//! once its object has not changed for the timeout, so until then the survivors enforce a
//! smaller share than they could, never a larger one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use tracing::{info, warn};

use crate::backend::Backend;
use crate::distributor::HealthyDistributors;
use crate::metrics::Metrics;

#[derive(Serialize)]
struct MemberBody<'a> {
    instance: &'a str,
    /// Bumped on every write so the object's version changes even on content-hash ETags.
    seq: u64,
}

pub(crate) struct DistributorMembers {
    backend: Backend,
    /// `~ingest/<group>/<topic>/distributors/`.
    prefix: String,
    instance: String,
    timeout: Duration,
    healthy: Arc<HealthyDistributors>,
    metrics: Arc<Metrics>,
    state: tokio::sync::Mutex<State>,
}

#[derive(Default)]
struct State {
    seq: u64,
    /// Key → (fingerprint, when this node first saw it).
    seen: HashMap<String, (String, Instant)>,
}

impl DistributorMembers {
    /// `dir` is the group and topic's folder (`PartitionLog::dir`).
    pub(crate) fn new(
        backend: Backend,
        dir: &str,
        instance: String,
        timeout: Duration,
        healthy: Arc<HealthyDistributors>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            backend,
            prefix: format!("{dir}/distributors/"),
            instance,
            timeout,
            healthy,
            metrics,
            state: tokio::sync::Mutex::new(State::default()),
        })
    }

    fn key(&self) -> String {
        format!("{}{}.json", self.prefix, self.instance)
    }

    /// Renews this node's object and recounts; returns the count.
    pub(crate) async fn tick(&self) -> usize {
        self.tick_at(Instant::now()).await
    }

    async fn tick_at(&self, now: Instant) -> usize {
        let mut st = self.state.lock().await;
        st.seq += 1;
        let body = MemberBody {
            instance: &self.instance,
            seq: st.seq,
        };
        let body = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
        // Each request is bounded: a hung bucket must not freeze the count for long.
        let bound = self.timeout / 4;
        match tokio::time::timeout(bound, self.backend.put(&self.key(), body)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "cannot renew distributor membership"),
            Err(_) => warn!("distributor membership renewal timed out"),
        }
        let listed =
            match tokio::time::timeout(bound, self.backend.list_fingerprints(&self.prefix)).await {
                Ok(Ok(l)) => l,
                Ok(Err(e)) => {
                    // Keeping the last count: dropping to 1 would multiply the tenant's rate.
                    warn!(error = %e, "cannot list distributors, keeping the last count");
                    return self.healthy.get();
                }
                Err(_) => {
                    warn!("listing distributors timed out, keeping the last count");
                    return self.healthy.get();
                }
            };
        let mine = self.key();
        let mut live = 1;
        let mut present = Vec::with_capacity(listed.len());
        for m in listed {
            // Listings may return the key percent-encoded (`~`); compare by file name.
            let name = m.key.rsplit('/').next().unwrap_or_default();
            if name.is_empty() || mine.ends_with(&format!("/{name}")) {
                continue;
            }
            let e = st
                .seen
                .entry(m.key.clone())
                .or_insert_with(|| (m.fingerprint.clone(), now));
            if e.0 != m.fingerprint {
                *e = (m.fingerprint, now);
            }
            if now.saturating_duration_since(e.1) < self.timeout {
                live += 1;
            }
            present.push(m.key);
        }
        st.seen.retain(|k, _| present.contains(k));
        let before = self.healthy.get();
        if before != live {
            info!(
                healthy = live,
                before, "healthy distributors changed: global tenant rates are shared anew"
            );
        }
        self.healthy.set(live);
        self.metrics.distributors_healthy.set(live as u64);
        live
    }

    /// Deletes this node's object so the others count one fewer at their next round.
    pub(crate) async fn leave(&self) {
        let bound = self.timeout / 4;
        match tokio::time::timeout(bound, self.backend.delete(&self.key())).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "cannot remove distributor membership"),
            Err(_) => warn!("removing distributor membership timed out"),
        }
    }

    /// Ticks every quarter of the timeout until aborted.
    pub(crate) async fn run(self: Arc<Self>) {
        let mut every = tokio::time::interval(self.timeout / 4);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            self.tick().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::faulty::{FaultAction, FaultOp, FaultRule, Faults};

    const TIMEOUT: Duration = Duration::from_secs(4);

    fn member(
        backend: &Backend,
        name: &str,
    ) -> (Arc<DistributorMembers>, Arc<HealthyDistributors>) {
        let healthy = Arc::new(HealthyDistributors::default());
        let m = DistributorMembers::new(
            backend.clone(),
            "~ingest/g/t",
            name.into(),
            TIMEOUT,
            healthy.clone(),
            Arc::new(Metrics::default()),
        );
        (m, healthy)
    }

    #[tokio::test]
    async fn distributors_count_each_other_and_forget_the_dead() {
        let backend = Backend::memory();
        let (a, healthy_a) = member(&backend, "a");
        let (b, _) = member(&backend, "b");
        let (c, _) = member(&backend, "c");
        let t0 = Instant::now();
        assert_eq!(a.tick_at(t0).await, 1, "alone");
        assert_eq!(b.tick_at(t0).await, 2);
        assert_eq!(c.tick_at(t0).await, 3);
        assert_eq!(a.tick_at(t0).await, 3);
        assert_eq!(healthy_a.get(), 3, "the distributor reads the count");

        // c dies: its object stops changing; a still counts it until the timeout passes.
        let half = t0 + TIMEOUT / 2;
        b.tick_at(half).await;
        assert_eq!(a.tick_at(half).await, 3);
        let later = t0 + TIMEOUT + Duration::from_millis(1);
        b.tick_at(later).await;
        assert_eq!(a.tick_at(later).await, 2, "c expired, b renewed");
        assert_eq!(healthy_a.get(), 2);

        // b stops cleanly: gone at a's next round, without waiting for the timeout.
        b.leave().await;
        assert_eq!(a.tick_at(later).await, 1);
        // c comes back: counted again at once.
        c.tick_at(later).await;
        assert_eq!(a.tick_at(later).await, 2);
    }

    #[tokio::test]
    async fn a_hung_listing_keeps_the_last_count() {
        let faults = Faults::new();
        let backend = Backend::memory().with_faults(faults.clone());
        let (a, healthy) = member(&backend, "a");
        let (b, _) = member(&backend, "b");
        b.tick().await;
        assert_eq!(a.tick().await, 2);
        // A member's own object is never counted twice.
        assert_eq!(a.tick().await, 2);
        faults.add(FaultRule::new(FaultOp::List, "distributors", FaultAction::Hang).times(1));
        let t0 = Instant::now();
        assert_eq!(a.tick().await, 2, "the last count, not 1 (the whole rate)");
        assert!(t0.elapsed() < TIMEOUT / 2, "the listing is bounded");
        assert_eq!(healthy.get(), 2);
        assert_eq!(faults.injected(), 1);
    }
}
