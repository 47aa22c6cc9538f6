//! Reading other nodes' live traces over HTTP (`GET /internal/live`), for a query on any
//! node to see what the owners of the ingest partitions hold in memory: trace by ID asks
//! the owner of the trace's partition only, search, tags and metrics ask every owner.
//!
//! A query first learns the high watermark of each partition it needs from the broker:
//! everything acknowledged so far lies below it. Each owner (this node included, for the
//! partitions it holds) waits, bounded by `ingest.query_wait_timeout`, until it has applied
//! its partitions up to those offsets, and answers for the ones that got there. A
//! partition no answer covers (unheld, changing hands, lagging, owner unreachable) makes
//! the result partial, never silently incomplete. If the broker cannot tell the watermarks
//! in time, a partition counts as covered once its holder has caught up, as before.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tracing::{debug, warn};

use super::caught_up::CaughtUp;
use super::client::Kafka;
use super::ownership::{Owner, Ownership};
use super::record::partition_for;
use crate::config::Secret;
use crate::model::{TenantId, TraceId};
use crate::querier::remote::{
    decode_part, encode_wanted, Lag, LivePart, RemoteLive, RemoteLiveResult,
};

/// The HTTP path a node serves its live traces at.
pub(crate) const LIVE_PATH: &str = "/internal/live";

pub(crate) struct Peers {
    ownership: Arc<Ownership>,
    local: Arc<CaughtUp>,
    client: reqwest_client::Client,
    /// Asked for high watermarks only: a connection of its own, so the consumer's
    /// long-polling fetches do not delay the answer.
    kafka: Arc<Kafka>,
    /// `ingest.query_wait_timeout`; zero: no watermarks, caught-up partitions count.
    wait: Duration,
    timeout: Duration,
    /// `Authorization` for `/internal/live` when a peer token is set.
    authorization: Option<String>,
}

impl Peers {
    /// `timeout` bounds each request beyond the owner's wait: an owner slower than that
    /// counts as unreachable.
    pub(crate) fn new(
        ownership: Arc<Ownership>,
        local: Arc<CaughtUp>,
        kafka: Arc<Kafka>,
        wait: Duration,
        timeout: Duration,
        token: Option<Secret>,
    ) -> Result<Self, String> {
        let client = reqwest_client::Client::builder()
            .connect_timeout(timeout)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            ownership,
            local,
            client,
            kafka,
            wait,
            timeout,
            authorization: token.map(|t| format!("Bearer {}", t.expose())),
        })
    }

    /// The high watermark of each partition in `needed`, or `None` (logged) when the
    /// broker cannot tell them all within the wait bound.
    async fn watermarks(&self, needed: &BTreeSet<i32>) -> Option<BTreeMap<i32, i64>> {
        if self.wait.is_zero() {
            return None;
        }
        let asks = futures::future::join_all(
            needed
                .iter()
                .map(|p| async move { self.kafka.latest(*p).await.map(|o| (*p, o)) }),
        );
        match tokio::time::timeout(self.wait, asks).await {
            Ok(all) => match all.into_iter().collect::<Result<BTreeMap<_, _>, _>>() {
                Ok(m) => Some(m),
                Err(e) => {
                    warn!(error = %e, "cannot learn ingest high watermarks: counting caught-up partitions as covered");
                    None
                }
            },
            Err(_) => {
                warn!(
                    timeout_ms = self.wait.as_millis() as u64,
                    "ingest high watermarks not learned in time: counting caught-up partitions as covered"
                );
                None
            }
        }
    }

    async fn ask(
        &self,
        owner: &Owner,
        tenant: &TenantId,
        trace: Option<&TraceId>,
        wanted: &BTreeMap<i32, i64>,
    ) -> Result<LivePart, String> {
        // Hex digits, numbers, ':' and ',' need no escaping in a query string.
        let mut query: Vec<String> = Vec::new();
        if let Some(id) = trace {
            query.push(format!("trace={}", id.to_hex()));
        }
        if !wanted.is_empty() {
            query.push(format!("wait={}", encode_wanted(wanted)));
        }
        let mut url = format!("{}{LIVE_PATH}", owner.address.trim_end_matches('/'));
        if !query.is_empty() {
            url = format!("{url}?{}", query.join("&"));
        }
        let mut req = self
            .client
            .get(&url)
            // The owner may wait up to its bound before it answers.
            .timeout(self.timeout + self.wait)
            .header("X-Scope-OrgID", tenant.as_str());
        if let Some(a) = &self.authorization {
            req = req.header("Authorization", a);
        }
        let resp = req.send().await.map_err(|e| e.to_string())?;
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
        let wanted = self.watermarks(&needed).await;
        let held: BTreeSet<i32> = self.local.held().into_iter().collect();
        let mut owners: BTreeMap<String, (String, BTreeMap<i32, i64>)> = BTreeMap::new();
        let mut local_wanted = BTreeMap::new();
        for p in &needed {
            let offset = wanted.as_ref().and_then(|w| w.get(p)).copied().unwrap_or(0);
            if held.contains(p) {
                local_wanted.insert(*p, offset);
                continue;
            }
            let known = match self.ownership.owner(*p) {
                Some(o) if o.instance != me => Some(o),
                // Unknown, or this node's though it no longer reads it: just moved.
                _ => self.ownership.read_owner(*p).await,
            };
            if let Some(o) = known.filter(|o| o.instance != me) {
                owners
                    .entry(o.instance)
                    .or_insert_with(|| (o.address, BTreeMap::new()))
                    .1
                    .insert(*p, offset);
            }
        }
        let owners: Vec<(Owner, BTreeMap<i32, i64>, Vec<i32>)> = owners
            .into_iter()
            .map(|(instance, (address, ps))| {
                let asked: Vec<i32> = ps.keys().copied().collect();
                // Without watermarks, today's rule: the owner's caught-up partitions count.
                let ps = if wanted.is_some() {
                    ps
                } else {
                    BTreeMap::new()
                };
                (Owner { instance, address }, ps, asked)
            })
            .collect();
        let local = async {
            match &wanted {
                Some(_) if !local_wanted.is_empty() => self.local.reach(&local_wanted).await,
                Some(_) => Default::default(),
                None => crate::querier::remote::Reached {
                    covered: self.local.ready(),
                    lagging: Vec::new(),
                },
            }
        };
        let asks = futures::future::join_all(
            owners
                .iter()
                .map(|(o, ps, _)| self.ask(o, tenant, trace, ps)),
        );
        let (local, answers) = futures::join!(local, asks);
        let mut covered: BTreeSet<i32> = local.covered.into_iter().collect();
        let mut lagging: BTreeMap<i32, (String, Lag)> = local
            .lagging
            .into_iter()
            .map(|l| (l.partition, (me.clone(), l)))
            .collect();
        let mut failed: BTreeSet<i32> = BTreeSet::new();
        for ((o, _, ps), a) in owners.iter().zip(answers) {
            out.asked += 1;
            match a {
                Ok(part) => {
                    covered.extend(part.partitions.iter().copied());
                    for l in part.lagging {
                        lagging.insert(l.partition, (o.instance.clone(), l));
                    }
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
        // Partitions nobody answered for: unheld, moving, catching up or lagging.
        for p in needed.difference(&covered) {
            if failed.contains(p) {
                continue;
            }
            out.asked += 1;
            out.unreachable.push(match lagging.get(p) {
                Some((node, l)) => {
                    warn!(partition = p, node = %node, applied = l.applied, wanted = l.wanted, "ingest partition lagging: answer is partial");
                    format!(
                        "partition {p} lagging on {node} (applied below offset {} of {} within {:?})",
                        l.applied, l.wanted, self.wait
                    )
                }
                None => format!("partition {p} (no owner caught up)"),
            });
        }
        debug!(
            partitions = needed.len(),
            watermarks = wanted.is_some(),
            covered = covered.len(),
            "live traces of other nodes read"
        );
        out
    }
}
