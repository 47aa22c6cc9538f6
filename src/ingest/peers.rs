//! Reading other nodes' live traces over HTTP (`GET /internal/live`), for a query on any
//! node to see what the owners of the ingest partitions hold in memory: trace by ID asks
//! the owner of the trace's partition only, search, tags and metrics ask every owner.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tracing::warn;

use super::ownership::{Owner, Ownership};
use super::record::partition_for;
use crate::model::{TenantId, TraceId};
use crate::querier::remote::{decode_part, RemoteLive, RemoteLiveResult};

/// The HTTP path a node serves its live traces at.
pub const LIVE_PATH: &str = "/internal/live";

pub struct Peers {
    ownership: Arc<Ownership>,
    client: reqwest_client::Client,
}

impl Peers {
    /// `timeout` bounds each request: an owner slower than that counts as unreachable.
    pub fn new(ownership: Arc<Ownership>, timeout: Duration) -> Result<Self, String> {
        let client = reqwest_client::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self { ownership, client })
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
        let mut out = RemoteLiveResult::default();
        let owners: Vec<Owner> = match trace {
            Some(id) => {
                let p = partition_for(tenant, id, self.ownership.partitions()) as i32;
                match self.ownership.owner(p) {
                    Some(o) if o.instance == me => Vec::new(),
                    Some(o) => vec![o],
                    None => {
                        out.asked = 1;
                        out.unreachable.push(format!("partition {p} has no owner"));
                        return out;
                    }
                }
            }
            None => {
                for p in self.ownership.unowned() {
                    out.asked += 1;
                    out.unreachable.push(format!("partition {p} has no owner"));
                }
                self.ownership
                    .others()
                    .into_iter()
                    .map(|(instance, (address, _))| Owner { instance, address })
                    .collect()
            }
        };
        out.asked += owners.len();
        let answers =
            futures::future::join_all(owners.iter().map(|o| self.ask(o, tenant, trace))).await;
        for (o, a) in owners.iter().zip(answers) {
            match a {
                Ok(part) => {
                    out.part.traces.extend(part.traces);
                    out.part.blocks.extend(part.blocks);
                    out.part.skip_blocks.extend(part.skip_blocks);
                }
                Err(e) => {
                    warn!(owner = %o.instance, address = %o.address, error = %e, "cannot read live traces of another node");
                    out.unreachable.push(o.instance.clone());
                }
            }
        }
        out
    }
}
