//! The ingester's side of the ingest log: reads every partition of the topic into the
//! ingester's live traces (so fresh data is searchable and readable by ID), passing each
//! record's position as its log record so cuts know which offsets their blocks hold.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::client::{Fetched, Kafka, KafkaError};
use super::log::{position, PartitionLog};
use super::record::Record;
use crate::ingester::{IngestError, Ingester};
use crate::model::{TenantId, TraceBatch};

/// Bytes asked for per fetch.
const FETCH_BYTES: i32 = 4 << 20;
/// How long a fetch waits on the broker for new records.
const FETCH_WAIT: Duration = Duration::from_millis(200);

pub(crate) struct Consumer {
    kafka: Arc<Kafka>,
    ingester: Arc<Ingester>,
    log: Arc<PartitionLog>,
}

impl Consumer {
    pub(crate) fn new(kafka: Arc<Kafka>, ingester: Arc<Ingester>, log: Arc<PartitionLog>) -> Self {
        Self {
            kafka,
            ingester,
            log,
        }
    }

    /// Redoes a pending cut (consumes exactly its ranges, then writes its blocks), then
    /// starts one reader per partition. Call before the ingester's flush loop starts, so
    /// no other cut interleaves with the redo.
    pub(crate) async fn start(self) -> Result<Vec<JoinHandle<()>>, KafkaError> {
        let mut starts = Vec::new();
        if let Some(cut) = self.log.pending_cut().cloned() {
            info!(cut = ?cut, "redoing the cut that was not committed before the last stop");
            for (p, (start, end)) in &cut {
                let mut next = *start;
                while next < *end {
                    let (records, high) = self.fetch_retrying(*p, next).await?;
                    if records.is_empty() && high <= next {
                        // The log ends before the cut did (it was truncated): redo what
                        // is there; the block IDs then differ, which is still no loss.
                        warn!(
                            partition = p,
                            offset = next,
                            end,
                            "ingest log ends inside the pending cut"
                        );
                        break;
                    }
                    for r in records {
                        if r.offset < next || r.offset >= *end {
                            continue;
                        }
                        next = r.offset + 1;
                        self.apply(*p, r).await;
                    }
                }
            }
            let blocks = self.ingester.flush(true).await;
            info!(blocks, "pending cut redone");
        }
        for p in 0..self.kafka.partitions() as i32 {
            let from = match self.log.committed(p) {
                Some(o) => o,
                None => self.kafka.earliest(p).await?,
            };
            let from = self
                .log
                .pending_cut()
                .and_then(|c| c.get(&p))
                .map_or(from, |(_, end)| (*end).max(from));
            starts.push((p, from));
        }
        let me = Arc::new(self);
        Ok(starts
            .into_iter()
            .map(|(p, from)| tokio::spawn(me.clone().run_partition(p, from)))
            .collect())
    }

    /// Fetches until a fetch succeeds, for the redo (which must not skip anything).
    async fn fetch_retrying(&self, p: i32, offset: i64) -> Result<(Vec<Fetched>, i64), KafkaError> {
        let mut tries = 0;
        loop {
            match self.kafka.fetch(p, offset, FETCH_BYTES, FETCH_WAIT).await {
                Ok(r) => return Ok(r),
                Err(e @ KafkaError::OutOfRange { .. }) => return Err(e),
                Err(e) if tries >= 50 => return Err(e),
                Err(e) => {
                    tries += 1;
                    warn!(partition = p, offset, error = %e, "fetch failed, retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    async fn run_partition(self: Arc<Self>, p: i32, mut next: i64) {
        info!(partition = p, offset = next, "consuming ingest partition");
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.kafka.fetch(p, next, FETCH_BYTES, FETCH_WAIT).await {
                Ok((records, _high)) => {
                    backoff = Duration::from_millis(100);
                    for r in records {
                        // A fetch may start at the batch holding `next`: skip what was read.
                        if r.offset < next {
                            continue;
                        }
                        next = r.offset + 1;
                        self.apply(p, r).await;
                    }
                }
                Err(KafkaError::OutOfRange { .. }) => {
                    // Retention removed records never consumed: they are gone from the log,
                    // so go on from the oldest still there, loudly.
                    match self.kafka.earliest(p).await {
                        Ok(first) if first > next => {
                            warn!(
                                partition = p,
                                from = next,
                                to = first,
                                "ingest records expired before they were consumed"
                            );
                            next = first;
                        }
                        Ok(_) | Err(_) => tokio::time::sleep(backoff).await,
                    }
                }
                Err(e) => {
                    warn!(partition = p, offset = next, error = %e, "ingest fetch failed, retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Puts one record into the live traces, waiting while the ingester's memory is full.
    async fn apply(&self, p: i32, r: Fetched) {
        let (tenant, traces) = match Record::decode(Bytes::from(r.value)) {
            Ok(rec) => (rec.tenant, rec.traces),
            Err(e) => {
                // Still recorded as consumed: a record that cannot decode never will.
                warn!(partition = p, offset = r.offset, error = %e, "skipping unreadable ingest record");
                (TenantId::single(), Vec::new())
            }
        };
        let mut backoff = Duration::from_millis(50);
        loop {
            let batch: Vec<TraceBatch> = traces
                .iter()
                .map(|t| TraceBatch {
                    id: t.id,
                    data: t.data.clone(),
                    spans: t.spans,
                })
                .collect();
            match self
                .ingester
                .push_logged(position(p, r.offset), &tenant, batch)
                .await
            {
                Ok(()) => return,
                Err(IngestError::LiveBytesExceeded { .. }) => {
                    // The flush loop frees memory; the record waits in the broker meanwhile.
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Err(e) => {
                    warn!(partition = p, offset = r.offset, error = %e, "cannot apply ingest record, retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}
