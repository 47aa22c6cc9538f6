//! The seam between the ingester and the log that makes its data durable.

use std::path::Path;

use async_trait::async_trait;
use bytes::Bytes;

use uuid::Uuid;

use super::wal::{Wal, WalError};
use crate::model::{TenantId, TraceId};

/// Where the ingester makes data durable before acknowledging it. The local WAL implements
/// it; a replicated log (NATS JetStream, Kafka) can implement it for scale-out.
#[async_trait]
pub(crate) trait IngestLog: Send + Sync + 'static {
    /// Returns once the record is durable, with the segment it belongs to.
    async fn append(&self, record: Bytes) -> Result<u64, WalError>;
    /// Starts a new segment; every record appended before lives in an older one.
    /// `tenants`: those the cut taking the older segments writes a block for (the ingest
    /// log records them so a later holder can check the cut landed; the WAL needs not).
    async fn rotate(&self, tenants: &[TenantId]) -> Result<u64, WalError>;
    /// Forgets every segment before `segment`: their data is in the backend or newer segments.
    async fn truncate_before(&self, segment: u64) -> Result<(), WalError>;
    /// Records that `traces` are in blocks, so a replay of the kept segments before
    /// `boundary` skips them instead of writing them twice. A log without markers replays
    /// them (merged at read time): never a loss.
    async fn mark_flushed(
        &self,
        _boundary: u64,
        _traces: &[(TenantId, Vec<TraceId>)],
    ) -> Result<(), WalError> {
        Ok(())
    }
    /// The segment this process started appending to, if the log has segments of its
    /// own: traces that arrived after it are not carried over at the first cut.
    fn opened_segment(&self) -> Option<u64> {
        None
    }
    /// Whether live traces may be re-appended to a newer segment at a cut. A log that
    /// cannot (the Kafka ingest log: its records are the producers') gets every cut taking
    /// the whole head instead; late spans of a trace cut in two are merged at read time.
    fn carries_over(&self) -> bool {
        true
    }
    /// The ID of `tenant`'s block holding the data of the segments before `boundary`, when
    /// the log can make it deterministic (so a retried cut rewrites the same block);
    /// `None` for a fresh random ID.
    fn block_id(&self, _tenant: &TenantId, _boundary: u64) -> Option<Uuid> {
        None
    }
    /// Whether the cut ending at `boundary` is no longer this node's to write: every
    /// record in it belongs to partitions other nodes now consume again from before it
    /// (the ingest log after a node was cut off). Its blocks are then dropped, not written
    /// late as second copies.
    fn abandoned(&self, _boundary: u64) -> bool {
        false
    }
    /// A local directory where a cut may stage its block's data.parquet before the upload,
    /// so the encoded block is not held in memory; `None` keeps it in memory.
    fn scratch_dir(&self) -> Option<&Path> {
        None
    }
}

#[async_trait]
impl IngestLog for Wal {
    async fn append(&self, record: Bytes) -> Result<u64, WalError> {
        Wal::append(self, record).await
    }
    async fn rotate(&self, _tenants: &[TenantId]) -> Result<u64, WalError> {
        Wal::rotate(self).await
    }
    async fn truncate_before(&self, segment: u64) -> Result<(), WalError> {
        self.delete_segments_before(segment).await.map(|_| ())
    }
    async fn mark_flushed(
        &self,
        boundary: u64,
        traces: &[(TenantId, Vec<TraceId>)],
    ) -> Result<(), WalError> {
        Wal::mark_flushed(self, boundary, traces).await
    }
    fn opened_segment(&self) -> Option<u64> {
        Some(Wal::opened_segment(self))
    }
    /// Next to the segments: the disk the operator gave the ingester (replay reads only
    /// `*.wal` files).
    fn scratch_dir(&self) -> Option<&Path> {
        Some(self.dir())
    }
}
