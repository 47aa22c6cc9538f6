//! Owners as seen by a node that consumes nothing (`-target querier` or `query-frontend`
//! with an `ingest` section): it reads the lease objects and never writes one, so it
//! knows whom to ask for live traces without taking part in the sharing.

use std::sync::Arc;

use tracing::warn;

use super::{LeaseBody, Owner, Ownership};

impl Ownership {
    /// Reads every partition's lease once and records its holder; a lease that cannot be
    /// read keeps the holder seen last.
    pub(crate) async fn read_owners(&self) {
        for p in 0..self.cfg.partitions as i32 {
            self.read_owner(p).await;
        }
    }

    /// Reads the lease of `p` now and returns its holder: for a query that finds no holder
    /// known, as right after a move, when the next periodic read is up to a quarter
    /// timeout away.
    pub(crate) async fn read_owner(&self, p: i32) -> Option<Owner> {
        let key = self.lease_key(p);
        let got = self
            .bounded(async { Ok(self.backend.get_versioned(&key).await?) })
            .await;
        match got {
            Ok(Some((bytes, _))) => {
                let body: LeaseBody = serde_json::from_slice(&bytes).unwrap_or_default();
                let holder = (!body.holder.is_empty()).then_some(Owner {
                    instance: body.holder,
                    address: body.address,
                });
                self.set_owner(p, holder);
            }
            Ok(None) => self.set_owner(p, None),
            Err(e) => warn!(partition = p, error = %e, "cannot read partition lease"),
        }
        self.owner(p)
    }

    /// Observes the leases every quarter of the lease timeout until aborted: as often as
    /// holders renew them, so a move is seen within one period.
    pub(crate) async fn run_owner_reader(self: Arc<Self>) {
        let mut every = tokio::time::interval(self.cfg.timeout / 4);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            self.read_owners().await;
        }
    }
}
