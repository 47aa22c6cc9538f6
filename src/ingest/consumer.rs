//! The ingester's side of the ingest log: reads every partition of the topic into the
//! ingester's live traces (so fresh data is searchable and readable by ID), passing each
//! record's position as its log record so cuts know which offsets their blocks hold.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::adopt::Adopted;
use super::caught_up::CaughtUp;
use super::client::{Fetched, Kafka, KafkaError};
use super::log::{position, PartitionLog, Ranges};
use super::ownership::Ownership;
use super::record::{partition_for, Record};
use crate::ingester::{IngestError, Ingester};
use crate::model::{TenantId, TraceBatch};

/// Bytes asked for per fetch.
const FETCH_BYTES: i32 = 4 << 20;
/// How long a fetch waits on the broker for new records.
const FETCH_WAIT: Duration = Duration::from_millis(200);

/// A task aborted when dropped, so stopping the lease follower stops its readers.
struct Guard(Option<JoinHandle<()>>);

impl Guard {
    fn spawn(f: impl std::future::Future<Output = ()> + Send + 'static) -> Guard {
        Guard(Some(tokio::spawn(f)))
    }

    async fn stop(mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
            let _ = h.await;
        }
    }

    fn detach(mut self) -> Option<JoinHandle<()>> {
        self.0.take()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(h) = &self.0 {
            h.abort();
        }
    }
}

pub(crate) struct Consumer {
    kafka: Arc<Kafka>,
    ingester: Arc<Ingester>,
    log: Arc<PartitionLog>,
    caught_up: Arc<CaughtUp>,
}

impl Consumer {
    pub(crate) fn new(kafka: Arc<Kafka>, ingester: Arc<Ingester>, log: Arc<PartitionLog>) -> Self {
        Self {
            kafka,
            ingester,
            log,
            caught_up: Arc::default(),
        }
    }

    /// Reports into `caught_up` how far each partition is applied.
    pub(crate) fn with_caught_up(mut self, caught_up: Arc<CaughtUp>) -> Self {
        self.caught_up = caught_up;
        self
    }

    /// Redoes a pending cut (consumes exactly its ranges, then writes its blocks), then
    /// starts one reader per partition. Call before the ingester's flush loop starts, so
    /// no other cut interleaves with the redo.
    ///
    /// With `ownership`, only the partitions whose lease this node holds are read: a first
    /// lease round runs here (reclaiming this instance's own leases at once), and a task
    /// follows the leases afterwards, starting a reader for each partition gained and, for
    /// each one lost, stopping its reader and dropping its live traces.
    pub(crate) async fn start(
        self,
        ownership: Option<Arc<Ownership>>,
    ) -> Result<Vec<JoinHandle<()>>, KafkaError> {
        let mut starts: BTreeMap<i32, Option<i64>> = BTreeMap::new();
        let mut epochs: BTreeMap<i32, u64> = BTreeMap::new();
        let mut adopted: BTreeMap<i32, Adopted> = BTreeMap::new();
        let mut runner = None;
        match &ownership {
            Some(o) => {
                o.tick().await;
                // Renewals go on during the redo, which may outlast a lease period.
                runner = Some(Guard::spawn(o.clone().run()));
                let held = o.subscribe().borrow().clone();
                let mut from = BTreeMap::new();
                for (p, h) in held {
                    let f = match self.log.gain(p, h.offset) {
                        Some(o) => o,
                        None => self.kafka.earliest(p).await?,
                    };
                    from.insert(p, f);
                    epochs.insert(p, h.epoch);
                }
                adopted = self.log.adopt(&from).await;
                starts.extend(adopted.iter().map(|(p, a)| (*p, Some(a.start))));
                let known: BTreeMap<i32, i64> = starts
                    .iter()
                    .filter_map(|(p, s)| s.map(|s| (*p, s)))
                    .collect();
                self.log.resolve_pending(&known);
            }
            None => {
                for p in 0..self.kafka.partitions() as i32 {
                    starts.insert(p, self.log.committed(p));
                }
            }
        }
        if let Some(cut) = self.log.pending_cut() {
            info!(cut = ?cut, "redoing the cut that was not committed before the last stop");
            self.redo(&cut).await?;
            for (p, (_, end)) in &cut {
                if let Some(s) = starts.get_mut(p) {
                    *s = Some(s.map_or(*end, |s| s.max(*end)));
                }
            }
        }
        let me = Arc::new(self);
        let mut readers: BTreeMap<i32, (u64, Guard)> = BTreeMap::new();
        for (p, from) in starts {
            let from = match from {
                Some(o) => o,
                None => me.kafka.earliest(p).await?,
            };
            let epoch = epochs.get(&p).copied().unwrap_or(0);
            let skip = adopted.remove(&p).unwrap_or_default();
            let reader = Guard::spawn(me.clone().run_partition(p, from, skip));
            readers.insert(p, (epoch, reader));
        }
        let Some(o) = ownership else {
            return Ok(readers
                .into_values()
                .filter_map(|(_, g)| g.detach())
                .collect());
        };
        let runner = runner.and_then(Guard::detach);
        let follow = tokio::spawn(me.follow(o, readers));
        Ok(std::iter::once(follow).chain(runner).collect())
    }

    /// Consumes exactly the ranges of a cut not committed before the last stop, then cuts.
    async fn redo(&self, cut: &Ranges) -> Result<(), KafkaError> {
        for (p, (start, end)) in cut {
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
                    self.apply(*p, r, &Adopted::default()).await;
                }
            }
        }
        let blocks = self.ingester.flush(true).await;
        info!(blocks, "pending cut redone");
        Ok(())
    }

    /// Starts and stops readers as partition leases come and go.
    async fn follow(
        self: Arc<Self>,
        ownership: Arc<Ownership>,
        mut readers: BTreeMap<i32, (u64, Guard)>,
    ) {
        let mut held = ownership.subscribe();
        let partitions = ownership.partitions();
        loop {
            let now = held.borrow_and_update().clone();
            let gone: Vec<i32> = readers
                .iter()
                .filter(|(p, (epoch, _))| now.get(p).is_none_or(|h| h.epoch != *epoch))
                .map(|(p, _)| *p)
                .collect();
            for p in gone {
                let Some((_, reader)) = readers.remove(&p) else {
                    continue;
                };
                reader.stop().await;
                self.caught_up.stop(p);
                self.log.lose(p);
                let dropped = self
                    .ingester
                    .drop_live(|tenant, id| partition_for(tenant, id, partitions) as i32 == p);
                info!(
                    partition = p,
                    dropped_traces = dropped,
                    "stopped consuming partition"
                );
            }
            let mut gained = BTreeMap::new();
            for (p, h) in &now {
                if readers.contains_key(p) {
                    continue;
                }
                let p = *p;
                let from = match self.log.gain(p, h.offset) {
                    Some(o) => o,
                    None => loop {
                        match self.kafka.earliest(p).await {
                            Ok(o) => break o,
                            Err(e) => {
                                warn!(partition = p, error = %e, "cannot list offsets, retrying");
                                tokio::time::sleep(Duration::from_millis(500)).await;
                            }
                        }
                    },
                };
                gained.insert(p, from);
            }
            for (p, skip) in self.log.adopt(&gained).await {
                let reader = Guard::spawn(self.clone().run_partition(p, skip.start, skip));
                readers.insert(p, (now[&p].epoch, reader));
            }
            if held.changed().await.is_err() {
                return;
            }
        }
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

    /// Reads `p` from `next` on; `skip` names records stored already by an earlier holder.
    async fn run_partition(self: Arc<Self>, p: i32, mut next: i64, skip: Adopted) {
        info!(partition = p, offset = next, "consuming ingest partition");
        self.caught_up.start(p, next);
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.kafka.fetch(p, next, FETCH_BYTES, FETCH_WAIT).await {
                Ok((records, high)) => {
                    backoff = Duration::from_millis(100);
                    for r in records {
                        // A fetch may start at the batch holding `next`: skip what was read.
                        if r.offset < next {
                            continue;
                        }
                        next = r.offset + 1;
                        self.apply(p, r, &skip).await;
                        self.caught_up.applied(p, next);
                    }
                    self.caught_up.fetched(p, high);
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
                            self.caught_up.applied(p, next);
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
    /// A record `skip` names is only marked consumed: its spans are in a block already.
    async fn apply(&self, p: i32, r: Fetched, skip: &Adopted) {
        let (tenant, traces) = match Record::decode(Bytes::from(r.value)) {
            Ok(rec) if skip.skips(r.offset, &rec.tenant) => (rec.tenant, Vec::new()),
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
