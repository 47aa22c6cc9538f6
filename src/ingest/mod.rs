//! The Kafka-protocol ingest log (issue #10, `ingest:` in the config): distributors produce
//! accepted traces to a topic and acknowledge exports only once the broker has them
//! (acks=all); the ingester consumes its partitions back into its live traces and cuts
//! blocks, committing offsets only after their `meta.json` (see `log.rs`).
//!
//! `client.rs` is the one file that knows the Kafka client; `record.rs` is the record
//! format (`schema/ingest-record.md`) and the partitioning; `consumer.rs` feeds the
//! ingester and reports how far each partition is applied to `caught_up.rs`, where queries
//! wait for the high watermark they learned (`peers.rs`); `distributors.rs` counts the
//! healthy distributors that share a `global` tenant rate.

mod adopt;
mod caught_up;
mod client;
mod consumer;
pub(crate) mod distributors;
mod log;
pub(crate) mod ownership;
pub(crate) mod peers;
pub(crate) mod record;

use std::sync::Arc;

use async_trait::async_trait;
use tracing::warn;

pub(crate) use caught_up::CaughtUp;
pub(crate) use client::{Kafka, KafkaError};
pub(crate) use consumer::Consumer;
pub(crate) use log::PartitionLog;

use crate::distributor::{LogUnavailable, TraceLog};
use crate::model::{TenantId, TraceBatch};

/// The distributor's side: produces a request's traces, one record per partition they hash
/// to, and returns once the broker acknowledged all of them.
pub(crate) struct Producer {
    kafka: Arc<Kafka>,
    max_record_bytes: usize,
}

impl Producer {
    pub(crate) fn new(kafka: Arc<Kafka>, max_record_bytes: usize) -> Self {
        Self {
            kafka,
            max_record_bytes,
        }
    }
}

#[async_trait]
impl TraceLog for Producer {
    async fn write(
        &self,
        tenant: &TenantId,
        traces: Vec<TraceBatch>,
    ) -> Result<(), LogUnavailable> {
        let records = record::records_by_partition(
            tenant,
            traces,
            self.kafka.partitions(),
            self.max_record_bytes,
        );
        let mut per: std::collections::BTreeMap<u32, Vec<Vec<u8>>> = Default::default();
        for (p, r) in records {
            per.entry(p).or_default().push(r.encode());
        }
        let key = tenant.as_str().as_bytes();
        // Partitions in parallel; the export is acknowledged only if every one succeeded.
        let results = futures::future::join_all(
            per.into_iter()
                .map(|(p, values)| self.kafka.produce(p as i32, key, values)),
        )
        .await;
        for r in results {
            if let Err(e) = r {
                warn!(tenant = %tenant, error = %e, "produce to the ingest log failed");
                return Err(LogUnavailable(e.to_string()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
