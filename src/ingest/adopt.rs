//! Taking over a partition without storing its records twice. A holder that dies between
//! writing a cut's blocks and committing its offsets leaves the cut (`cuts/<instance>.json`)
//! starting at the lease's committed offset. Its new holder, before consuming, looks for
//! such cuts: if every block of one is in the bucket, the records of the cut's range are
//! stored already, so it starts past the range (and commits that); if only some tenants'
//! blocks landed (the writer died mid-flush), it consumes the range but skips those
//! tenants' records. Each acknowledged span then sits in exactly one block.
//!
//! A cut whose blocks cannot all be seen is never adopted: the worst outcome of a doubt is
//! a span stored twice (merged by readers and the compactor), never one lost.

use std::collections::{BTreeMap, HashSet};

use tracing::{info, warn};
use uuid::Uuid;

use super::log::{block_id, load, Cut, PartitionLog, Ranges};
use crate::backend::BackendError;
use crate::block;
use crate::model::TenantId;

/// Where a new holder of a partition starts, and what it skips.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Adopted {
    /// The offset to consume from: past every earlier cut whose blocks all landed.
    pub start: i64,
    /// Below this offset, records of the tenants in `skip` are in blocks of a cut that
    /// landed only in part; they are not consumed again.
    pub skip_below: i64,
    pub skip: HashSet<TenantId>,
}

impl Adopted {
    /// Whether the record at `offset` of `tenant` is stored already.
    pub(crate) fn skips(&self, offset: i64, tenant: &TenantId) -> bool {
        offset < self.skip_below && self.skip.contains(tenant)
    }
}

impl PartitionLog {
    /// Adopts what earlier holders wrote but never committed, for partitions about to be
    /// consumed from `from` (each lease's committed offset). The cuts are listed, and each
    /// cut's blocks looked up, once for the whole batch. Only with partition leases; call
    /// before the partitions' readers start.
    pub(crate) async fn adopt(&self, from: &BTreeMap<i32, i64>) -> BTreeMap<i32, Adopted> {
        let mut out: BTreeMap<i32, Adopted> = from
            .iter()
            .map(|(p, s)| {
                let a = Adopted {
                    start: *s,
                    ..Adopted::default()
                };
                (*p, a)
            })
            .collect();
        let Some(fence) = &self.fence else {
            return out;
        };
        if from.is_empty() {
            return out;
        }
        let cuts = match self.cuts().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "cannot list earlier cuts: consuming from the committed offsets");
                return out;
            }
        };
        // Which tenants' blocks landed, per cut, looked up the first time a cut is needed.
        let mut landed: Vec<Option<HashSet<TenantId>>> = vec![None; cuts.len()];
        for (p, a) in out.iter_mut() {
            let p = *p;
            // Chains: a holder that adopted and then died mid-flush itself left a cut
            // starting where the adopted one ended. Each step moves `start` forward.
            loop {
                let mut complete: Option<i64> = None;
                let mut partial: Option<(i64, HashSet<TenantId>)> = None;
                for (i, cut) in cuts.iter().enumerate() {
                    let (Some(&(s, end)), Some(tenants)) = (cut.ranges.get(&p), &cut.tenants)
                    else {
                        continue;
                    };
                    if s != a.start || end <= s {
                        continue;
                    }
                    if landed[i].is_none() {
                        landed[i] = Some(self.landed(tenants, &cut.ranges).await);
                    }
                    let got = landed[i].as_ref().expect("looked up above");
                    if got.len() == tenants.len() {
                        complete = Some(complete.map_or(end, |e| e.max(end)));
                    } else if !got.is_empty() && partial.is_none() {
                        partial = Some((end, got.clone()));
                    }
                }
                match (complete, partial) {
                    (Some(end), _) => {
                        info!(
                            partition = p,
                            from = a.start,
                            to = end,
                            "an earlier holder's cut is in the bucket: not consumed again"
                        );
                        a.start = end;
                    }
                    (None, Some((end, got))) => {
                        info!(
                            partition = p,
                            from = a.start,
                            to = end,
                            tenants = got.len(),
                            "an earlier holder's cut landed in part: its tenants' records are skipped"
                        );
                        a.skip_below = end;
                        a.skip = got;
                        break;
                    }
                    (None, None) => break,
                }
            }
            if a.start > from[&p] {
                self.advance(p, a.start);
                // The ranges' blocks all have their meta.json: committing their end keeps
                // the invariant, and spares the next holder this search.
                if let Err(e) = fence.commit(p, a.start).await {
                    warn!(partition = p, offset = a.start, error = %e, "adopted offset not committed");
                }
            }
        }
        out
    }

    /// Every instance's latest cut.
    async fn cuts(&self) -> Result<Vec<Cut>, String> {
        let prefix = format!("{}/cuts/", self.dir);
        let keys = self
            .backend
            .list(&prefix)
            .await
            .map_err(|e| e.to_string())?;
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            // Listings may percent-encode the key (`~`): rebuild it from the file name.
            let Some(name) = k.rsplit('/').next().filter(|n| n.ends_with(".json")) else {
                continue;
            };
            match load::<Cut>(&self.backend, &format!("{prefix}{name}")).await {
                Ok(Some(c)) => out.push(c),
                Ok(None) => {}
                Err(e) => warn!(key = %k, error = %e, "skipping an unreadable cut"),
            }
        }
        Ok(out)
    }

    /// The tenants of a cut whose block is committed (or already compacted away).
    async fn landed(&self, tenants: &[String], ranges: &Ranges) -> HashSet<TenantId> {
        let mut out = HashSet::new();
        for t in tenants {
            let Ok(tenant) = TenantId::new(t) else {
                continue;
            };
            let id = block_id(&self.topic, &tenant, ranges);
            if self.stored(&tenant, id).await {
                out.insert(tenant);
            }
        }
        out
    }

    async fn stored(&self, tenant: &TenantId, id: Uuid) -> bool {
        match self.backend.get(&block::meta_key(tenant, id)).await {
            Ok(_) => return true,
            Err(BackendError::NotFound(_)) => {}
            Err(_) => return false,
        }
        self.backend
            .get(&block::compacted_meta_key(tenant, id))
            .await
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::backend::Backend;
    use crate::ingest::log::position;
    use crate::ingest::ownership::{Ownership, OwnershipConfig};
    use crate::ingester::IngestLog;
    use crate::metrics::Metrics;

    const DIR: &str = "~ingest/g/t";

    fn node(backend: &Backend, name: &str) -> Arc<Ownership> {
        Ownership::new(
            backend.clone(),
            OwnershipConfig {
                instance: name.into(),
                address: format!("http://{name}"),
                timeout: Duration::from_millis(300),
                partitions: 2,
                dir: DIR.into(),
            },
            Arc::new(Metrics::default()),
        )
    }

    fn tenant(s: &str) -> TenantId {
        TenantId::new(s).unwrap()
    }

    async fn mark_stored(backend: &Backend, t: &str, ranges: &Ranges) {
        let t = tenant(t);
        let key = block::meta_key(&t, block_id("t", &t, ranges));
        backend.put(&key, "{}".into()).await.unwrap();
    }

    async fn lease_offset(backend: &Backend, p: i32) -> Option<i64> {
        let b = backend.get(&format!("{DIR}/leases/{p}.json")).await.ok()?;
        serde_json::from_slice::<serde_json::Value>(&b).unwrap()["offset"].as_i64()
    }

    /// Node `a` cuts partitions 0 and 1 for tenants x and y, then dies before committing;
    /// node `b` takes both over and must consume only what no landed block holds.
    #[tokio::test]
    async fn a_new_holder_skips_exactly_what_landed_blocks_hold() {
        let backend = Backend::memory();
        let a = node(&backend, "a");
        a.tick().await;
        let log_a = PartitionLog::open_fenced(backend.clone(), "g", "t", a.clone())
            .await
            .unwrap();
        assert_eq!((log_a.gain(0, None), log_a.gain(1, None)), (None, None));
        for (p, o) in [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)] {
            log_a.append(position(p, o)).await.unwrap();
        }
        log_a.rotate(&[tenant("x"), tenant("y")]).await.unwrap();
        let ranges = Ranges::from([(0, (0, 3)), (1, (0, 2))]);
        mark_stored(&backend, "x", &ranges).await;
        drop(log_a);
        drop(a);

        let b = node(&backend, "b");
        let t0 = std::time::Instant::now();
        while b.subscribe().borrow().len() < 2 {
            assert!(t0.elapsed() < Duration::from_secs(5), "no takeover");
            b.tick().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let log_b = PartitionLog::open_fenced(backend.clone(), "g", "t", b.clone())
            .await
            .unwrap();

        // Only x's block landed: consume from 0, skipping x's records below 3.
        let got = log_b
            .adopt(&BTreeMap::from([(0, 0)]))
            .await
            .remove(&0)
            .unwrap();
        assert_eq!((got.start, got.skip_below), (0, 3));
        assert!(got.skips(2, &tenant("x")));
        assert!(!got.skips(2, &tenant("y")) && !got.skips(3, &tenant("x")));
        assert_eq!(
            lease_offset(&backend, 0).await,
            None,
            "committed a partial cut"
        );

        // Both landed: start past the cut, and the lease says so.
        mark_stored(&backend, "y", &ranges).await;
        let got = log_b
            .adopt(&BTreeMap::from([(1, 0)]))
            .await
            .remove(&1)
            .unwrap();
        assert_eq!(
            got,
            Adopted {
                start: 2,
                ..Adopted::default()
            }
        );
        assert_eq!(lease_offset(&backend, 1).await, Some(2));
        assert_eq!(log_b.committed(1), Some(2));

        // Chained: another holder adopted, cut [3, 5) with nothing to write, died. A cut
        // from an older build (no tenants listed) is never trusted.
        let put = |k: &str, v: &str| {
            let (b, k, v) = (backend.clone(), k.to_owned(), v.to_owned());
            async move { b.put(&k, v.into()).await.unwrap() }
        };
        put(
            &format!("{DIR}/cuts/c.json"),
            r#"{"version":1,"ranges":{"0":[3,5]},"tenants":[]}"#,
        )
        .await;
        put(
            &format!("{DIR}/cuts/d.json"),
            r#"{"version":1,"ranges":{"0":[5,9]}}"#,
        )
        .await;
        let got = log_b
            .adopt(&BTreeMap::from([(0, 0)]))
            .await
            .remove(&0)
            .unwrap();
        assert_eq!(
            got,
            Adopted {
                start: 5,
                ..Adopted::default()
            }
        );
        assert_eq!(lease_offset(&backend, 0).await, Some(5));
    }

    #[tokio::test]
    async fn without_leases_nothing_is_adopted() {
        let backend = Backend::memory();
        let log = PartitionLog::open(backend, "g", "t").await.unwrap();
        assert_eq!(
            log.adopt(&BTreeMap::from([(0, 7)])).await[&0],
            Adopted {
                start: 7,
                ..Adopted::default()
            }
        );
    }
}
