//! Reading other nodes' live traces over HTTP (`GET /internal/live`), for a query on any
//! node to see what the owners of the ingest partitions hold in memory: trace by ID asks
//! the owner of the trace's partition only, search, tags and metrics ask every owner.
//! Each answer names the partitions its node holds and has read up to date; a partition
//! no answer covers (unheld, changing hands, catching up, owner unreachable) makes the
//! result partial, never silently incomplete.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tracing::warn;

use super::consumer::CaughtUp;
use super::ownership::{Owner, Ownership};
use super::record::partition_for;
use crate::model::{TenantId, TraceId};
use crate::querier::remote::{decode_part, RemoteLive, RemoteLiveResult};

/// The HTTP path a node serves its live traces at.
pub(crate) const LIVE_PATH: &str = "/internal/live";

pub(crate) struct Peers {
    ownership: Arc<Ownership>,
    local: Arc<CaughtUp>,
    client: reqwest_client::Client,
}

impl Peers {
    /// `timeout` bounds each request: an owner slower than that counts as unreachable.
    pub(crate) fn new(
        ownership: Arc<Ownership>,
        local: Arc<CaughtUp>,
        timeout: Duration,
    ) -> Result<Self, String> {
        let client = reqwest_client::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            ownership,
            local,
            client,
        })
    }

    async fn ask(
        &self,
        owner: &Owner,
        tenant: &TenantId,
        trace: Option<&TraceId>,
    ) -> Result<crate::querier::remote::LivePart, String> {
        let mut url = format!("{}{LIVE_PATH}", owner.address.trim_end_matches('/'));
        if let Some(id) = trace {
            url.push_str(&format!("?trace={}", id.to_hex()));
        }
        let resp = self
            .client
            .get(&url)
            .header("X-Scope-OrgID", tenant.as_str())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("status {}", resp.status()));
        }
        let body = resp.bytes().await.map_err(|e| e.to_string())?;
        decode_part(body).map_err(|e| e.to_string())
    }
}

#[async_trait]
impl RemoteLive for Peers {
    async fn live(&self, tenant: &TenantId, trace: Option<&TraceId>) -> RemoteLiveResult {
        let me = self.ownership.instance().to_owned();
        let partitions = self.ownership.partitions();
        let mut out = RemoteLiveResult::default();
        // What must be answered for: the trace's partition, or all of them.
        let needed: BTreeSet<i32> = match trace {
            Some(id) => BTreeSet::from([partition_for(tenant, id, partitions) as i32]),
            None => (0..partitions as i32).collect(),
        };
        let mut covered: BTreeSet<i32> = self.local.ready().into_iter().collect();
        let mut owners: BTreeMap<String, (String, Vec<i32>)> = BTreeMap::new();
        for p in &needed {
            if covered.contains(p) {
                continue;
            }
            if let Some(o) = self.ownership.owner(*p).filter(|o| o.instance != me) {
                owners
                    .entry(o.instance)
                    .or_insert_with(|| (o.address, Vec::new()))
                    .1
                    .push(*p);
            }
        }
        let owners: Vec<(Owner, Vec<i32>)> = owners
            .into_iter()
            .map(|(instance, (address, ps))| (Owner { instance, address }, ps))
            .collect();
        let answers =
            futures::future::join_all(owners.iter().map(|(o, _)| self.ask(o, tenant, trace))).await;
        let mut failed: BTreeSet<i32> = BTreeSet::new();
        for ((o, ps), a) in owners.iter().zip(answers) {
            out.asked += 1;
            match a {
                Ok(part) => {
                    covered.extend(part.partitions.iter().copied());
                    out.part.traces.extend(part.traces);
                    out.part.blocks.extend(part.blocks);
                    out.part.skip_blocks.extend(part.skip_blocks);
                }
                Err(e) => {
                    warn!(owner = %o.instance, address = %o.address, error = %e, "cannot read live traces of another node");
                    out.unreachable.push(o.instance.clone());
                    failed.extend(ps.iter().copied());
                }
            }
        }
        // Partitions nobody answered for: unheld, moving, or still catching up.
        for p in needed.difference(&covered) {
            if !failed.contains(p) {
                out.asked += 1;
                out.unreachable
                    .push(format!("partition {p} (no owner caught up)"));
            }
        }
        out
    }
}
