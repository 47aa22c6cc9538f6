//! Builds and reads the per-tenant block list object, `<tenant>/index.json.gz`
//! (format: `block::tenant_index`). The compactor writes it after each cycle with
//! [`write_all_tenant_indexes`]; pollers read it instead of fetching every `meta.json`.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};
use tracing::{debug, warn};
use uuid::Uuid;

use crate::backend::{Backend, BackendError};
use crate::block::unix_nanos_now;
use crate::block::{
    self, BlockError, BlockMeta, CompactedBlockMeta, TenantIndex, COMPACTED_META_FILE, META_FILE,
};
use crate::model::TenantId;

/// `meta.json` reads in flight at once while building an index or listing a tenant.
const META_CONCURRENCY: usize = 16;

#[derive(Debug, thiserror::Error)]
pub(crate) enum IndexError {
    #[error("tenant {tenant}: {source}")]
    Backend {
        tenant: String,
        source: BackendError,
    },
    #[error("tenant {tenant}: {source}")]
    Block { tenant: String, source: BlockError },
    #[error("tenant index task failed: {0}")]
    Task(String),
}

/// What a recursive listing of a tenant says about each block folder.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Markers {
    pub(crate) meta: bool,
    pub(crate) compacted: bool,
}

/// One listing of `<tenant>/`: which block folders hold `meta.json` and
/// `meta.compacted.json`.
pub(crate) async fn list_block_markers(
    backend: &Backend,
    tenant: &TenantId,
) -> Result<BTreeMap<Uuid, Markers>, BackendError> {
    let mut out: BTreeMap<Uuid, Markers> = BTreeMap::new();
    for key in backend.list(tenant.as_str()).await? {
        // <tenant>/<uuid>/<file>
        let mut parts = key.rsplitn(3, '/');
        let (Some(file), Some(dir)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Ok(id) = Uuid::parse_str(dir) else {
            continue;
        };
        let m = out.entry(id).or_default();
        match file {
            META_FILE => m.meta = true,
            COMPACTED_META_FILE => m.compacted = true,
            _ => {}
        }
    }
    Ok(out)
}

/// Reads and parses one block's `meta.json`; `None` if it is missing or unreadable
/// (logged: such a block is invisible, as it would be to Tempo).
pub(crate) async fn fetch_meta(
    backend: &Backend,
    tenant: &TenantId,
    id: Uuid,
) -> Result<Option<BlockMeta>, BackendError> {
    fetch_parsed(backend, &block::meta_key(tenant, id), BlockMeta::from_bytes).await
}

async fn fetch_compacted_meta(
    backend: &Backend,
    tenant: &TenantId,
    id: Uuid,
) -> Result<Option<CompactedBlockMeta>, BackendError> {
    let key = block::compacted_meta_key(tenant, id);
    fetch_parsed(backend, &key, CompactedBlockMeta::from_bytes).await
}

/// One small JSON object: `None` if missing, or unreadable (logged).
async fn fetch_parsed<T>(
    backend: &Backend,
    key: &str,
    parse: impl FnOnce(&[u8]) -> Result<T, BlockError>,
) -> Result<Option<T>, BackendError> {
    match backend.get(key).await {
        Ok(bytes) => match parse(&bytes) {
            Ok(m) => Ok(Some(m)),
            Err(e) => {
                warn!(key = %key, error = %e, "unreadable block metadata");
                Ok(None)
            }
        },
        Err(BackendError::NotFound(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The live blocks of a tenant by listing the bucket: folders with `meta.json` and no
/// `meta.compacted.json` (the compacted marker wins when a crash left both). Metas in
/// `known` are reused instead of fetched again (a block's meta never changes).
pub(crate) async fn list_live_blocks(
    backend: &Backend,
    tenant: &TenantId,
    known: &HashMap<Uuid, BlockMeta>,
) -> Result<Vec<BlockMeta>, BackendError> {
    let markers = list_block_markers(backend, tenant).await?;
    let live = markers
        .into_iter()
        .filter(|(_, m)| m.meta && !m.compacted)
        .map(|(id, _)| id);
    stream::iter(live)
        .map(|id| async move {
            match known.get(&id) {
                Some(m) => Ok(Some(m.clone())),
                None => fetch_meta(backend, tenant, id).await,
            }
        })
        .buffered(META_CONCURRENCY)
        .try_filter_map(|m| async move { Ok(m) })
        .try_collect()
        .await
}

/// Reads a tenant's index; `Ok(None)` when there is none.
pub(crate) async fn read_tenant_index(
    backend: &Backend,
    tenant: &TenantId,
) -> Result<Option<TenantIndex>, IndexError> {
    match backend.get(&block::tenant_index_key(tenant)).await {
        // Gunzip and JSON of every block's meta: CPU work, off the executor.
        Ok(bytes) => tokio::task::spawn_blocking(move || TenantIndex::decode(&bytes))
            .await
            .map_err(|e| IndexError::Task(e.to_string()))?
            .map(Some)
            .map_err(|source| IndexError::Block {
                tenant: tenant.to_string(),
                source,
            }),
        Err(BackendError::NotFound(_)) => Ok(None),
        Err(source) => Err(IndexError::Backend {
            tenant: tenant.to_string(),
            source,
        }),
    }
}

/// Lists a tenant's blocks (live and compacted) and writes `<tenant>/index.json.gz`.
/// Metas already in the previous index are reused, so a rebuild costs one listing plus
/// one read per block that is new (or newly compacted) since then.
pub(crate) async fn build_tenant_index(
    backend: &Backend,
    tenant: &TenantId,
) -> Result<TenantIndex, IndexError> {
    let be = |source| IndexError::Backend {
        tenant: tenant.to_string(),
        source,
    };
    // Taken before listing: blocks committed while we list are newer than the index,
    // which is what readers assume of blocks missing from it.
    let created_at = unix_nanos_now();
    let previous = match read_tenant_index(backend, tenant).await {
        Ok(p) => p.unwrap_or_default(),
        Err(e) => {
            warn!(error = %e, "previous tenant index unreadable; rebuilding from scratch");
            TenantIndex::default()
        }
    };
    let prev_live: HashMap<Uuid, BlockMeta> =
        previous.meta.into_iter().map(|m| (m.block_id, m)).collect();
    let prev_compacted: HashMap<Uuid, CompactedBlockMeta> = previous
        .compacted
        .into_iter()
        .map(|c| (c.meta.block_id, c))
        .collect();
    let markers = list_block_markers(backend, tenant).await.map_err(be)?;

    enum Got {
        Live(BlockMeta),
        Compacted(CompactedBlockMeta),
    }
    let (prev_live, prev_compacted) = (&prev_live, &prev_compacted);
    let got: Vec<Option<Got>> = stream::iter(markers)
        .map(|(id, m)| async move {
            if m.compacted {
                if let Some(c) = prev_compacted.get(&id) {
                    return Ok(Some(Got::Compacted(c.clone())));
                }
                return Ok(fetch_compacted_meta(backend, tenant, id)
                    .await?
                    .map(Got::Compacted));
            }
            if !m.meta {
                return Ok(None); // not committed (yet)
            }
            if let Some(meta) = prev_live.get(&id) {
                return Ok(Some(Got::Live(meta.clone())));
            }
            Ok(fetch_meta(backend, tenant, id).await?.map(Got::Live))
        })
        .buffered(META_CONCURRENCY)
        .try_collect()
        .await
        .map_err(be)?;
    let mut index = TenantIndex {
        created_at,
        ..Default::default()
    };
    for g in got.into_iter().flatten() {
        match g {
            Got::Live(m) => index.meta.push(m),
            Got::Compacted(c) => index.compacted.push(c),
        }
    }
    index.meta.sort_by_key(|m| (m.start_time, m.block_id));
    index
        .compacted
        .sort_by_key(|c| (c.meta.start_time, c.meta.block_id));
    let (index, bytes) = tokio::task::spawn_blocking(move || {
        let bytes = index.encode();
        (index, bytes)
    })
    .await
    .map_err(|e| IndexError::Task(e.to_string()))?;
    let bytes = bytes.map_err(|source| IndexError::Block {
        tenant: tenant.to_string(),
        source,
    })?;
    backend
        .put(&block::tenant_index_key(tenant), Bytes::from(bytes))
        .await
        .map_err(be)?;
    debug!(
        tenant = %tenant,
        live = index.meta.len(),
        compacted = index.compacted.len(),
        "tenant index written"
    );
    Ok(index)
}

/// Rebuilds the index of every tenant folder in the bucket; returns how many were written.
/// A tenant that fails does not stop the others; the first error is returned at the end.
pub(crate) async fn write_all_tenant_indexes(backend: &Backend) -> Result<usize, IndexError> {
    let dirs = backend
        .list_dirs(None)
        .await
        .map_err(|source| IndexError::Backend {
            tenant: "*".into(),
            source,
        })?;
    let mut written = 0;
    let mut first_err = None;
    for dir in dirs {
        let Ok(tenant) = TenantId::new(&dir) else {
            continue;
        };
        match build_tenant_index(backend, &tenant).await {
            Ok(_) => written += 1,
            Err(e) => {
                warn!(error = %e, "tenant index not written");
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(written),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::block::{synth, BlockConfig, EncodedBlock, TraceInput};
    use crate::blocklist::{BlockList, PollConfig};
    use crate::metrics::Metrics;
    use crate::querier::Querier;

    async fn put_block(backend: &Backend, tenant: &TenantId, traces: Vec<TraceInput>) -> BlockMeta {
        let t = tenant.clone();
        let enc: EncodedBlock = tokio::task::spawn_blocking(move || {
            block::encode_block(&t, Uuid::new_v4(), 0, traces, &BlockConfig::default())
        })
        .await
        .unwrap()
        .unwrap();
        let id = enc.meta.block_id;
        backend
            .put(&block::data_key(tenant, id), enc.data.clone())
            .await
            .unwrap();
        backend
            .put(&block::index_key(tenant, id), enc.index.clone())
            .await
            .unwrap();
        for (i, b) in enc.blooms.iter().enumerate() {
            backend
                .put(&block::bloom_key(tenant, id, i as u32), b.clone())
                .await
                .unwrap();
        }
        backend
            .put(&block::meta_key(tenant, id), enc.meta.to_bytes().into())
            .await
            .unwrap();
        enc.meta
    }

    /// What the compactor does to an input: the marker, then (unless it crashed) the
    /// removal of meta.json.
    async fn mark_compacted(backend: &Backend, tenant: &TenantId, meta: &BlockMeta, crash: bool) {
        let c = CompactedBlockMeta {
            meta: meta.clone(),
            compacted_time: unix_nanos_now(),
            compacted_reason: Some("compaction".into()),
        };
        backend
            .put(
                &block::compacted_meta_key(tenant, meta.block_id),
                c.to_bytes().into(),
            )
            .await
            .unwrap();
        if !crash {
            backend
                .delete(&block::meta_key(tenant, meta.block_id))
                .await
                .unwrap();
        }
    }

    fn querier(backend: &Backend) -> Querier {
        Querier::new(
            backend.clone(),
            None,
            Arc::new(BlockList::default()),
            Arc::new(Metrics::default()),
            4,
        )
    }

    fn ids(mut v: Vec<Uuid>) -> Vec<Uuid> {
        v.sort();
        v
    }

    #[tokio::test]
    async fn index_holds_live_and_compacted_blocks_and_reuses_metas() {
        let backend = Backend::memory();
        let t = TenantId::single();
        let live = put_block(&backend, &t, synth::realistic_traces(3, 1)).await;
        let gone = put_block(&backend, &t, synth::realistic_traces(3, 2)).await;
        let crashed = put_block(&backend, &t, synth::realistic_traces(3, 3)).await;
        mark_compacted(&backend, &t, &gone, false).await;
        mark_compacted(&backend, &t, &crashed, true).await;
        // A block still being flushed: objects but no meta.json.
        backend
            .put(
                &format!("{}/{}/data.parquet", t.as_str(), Uuid::new_v4()),
                Bytes::from_static(b"x"),
            )
            .await
            .unwrap();

        assert_eq!(write_all_tenant_indexes(&backend).await.unwrap(), 1);
        let idx = read_tenant_index(&backend, &t).await.unwrap().unwrap();
        assert_eq!(idx.meta, vec![live.clone()]);
        assert_eq!(
            ids(idx.compacted.iter().map(|c| c.meta.block_id).collect()),
            ids(vec![gone.block_id, crashed.block_id]),
            "the compacted marker wins over a left-over meta.json"
        );
        assert!(idx.compacted.iter().all(|c| c.compacted_time > 0));

        // A rebuild reads only the old index: every meta is reused.
        let gets = backend.requests().get.get();
        let again = build_tenant_index(&backend, &t).await.unwrap();
        assert_eq!(backend.requests().get.get() - gets, 1);
        assert_eq!(again.meta, idx.meta);
        assert!(again.created_at >= idx.created_at);
    }

    #[tokio::test]
    async fn poll_uses_a_fresh_index_and_sees_blocks_flushed_since() {
        let backend = Backend::memory();
        let t = TenantId::single();
        let a = put_block(&backend, &t, synth::realistic_traces(3, 4)).await;
        let b = put_block(&backend, &t, synth::realistic_traces(3, 5)).await;
        mark_compacted(&backend, &t, &b, true).await;
        build_tenant_index(&backend, &t).await.unwrap();
        let c = put_block(&backend, &t, synth::realistic_traces(3, 6)).await;

        let q = querier(&backend);
        let gets = backend.requests().get.get();
        q.poll_blocklist().await.unwrap();
        let live = ids(q
            .blocklist()
            .blocks(&t)
            .iter()
            .map(|m| m.block_id)
            .collect());
        assert_eq!(live, ids(vec![a.block_id, c.block_id]));
        // The index, plus meta.json and the marker probe of the one new block: no
        // meta.json read for blocks the index knows.
        assert_eq!(backend.requests().get.get() - gets, 3);

        // A later poll knows c already: just the index.
        let gets = backend.requests().get.get();
        q.poll_blocklist().await.unwrap();
        assert_eq!(backend.requests().get.get() - gets, 1);
        assert_eq!(q.blocklist().len(), 2);
    }

    #[tokio::test]
    async fn stale_or_broken_index_falls_back_to_listing() {
        let backend = Backend::memory();
        let t = TenantId::single();
        let a = put_block(&backend, &t, synth::realistic_traces(3, 7)).await;
        let b = put_block(&backend, &t, synth::realistic_traces(3, 8)).await;
        mark_compacted(&backend, &t, &b, true).await;
        // An old index that still calls b live and names a block that no longer exists.
        let ghost = BlockMeta {
            block_id: Uuid::new_v4(),
            ..a.clone()
        };
        let old = TenantIndex {
            created_at: unix_nanos_now() - 3_600_000_000_000,
            meta: vec![a.clone(), b.clone(), ghost.clone()],
            compacted: vec![],
        };
        backend
            .put(&block::tenant_index_key(&t), old.encode().unwrap().into())
            .await
            .unwrap();
        let q = querier(&backend).with_poll_config(PollConfig {
            every: Duration::from_secs(60),
            stale_tenant_index: Duration::ZERO, // 3 minutes
        });
        q.poll_blocklist().await.unwrap();
        let live = live_ids(&q, &t);
        assert_eq!(
            live,
            vec![a.block_id],
            "listed: the marker excludes b, no ghost"
        );

        // With a bound longer than its age, the same index is believed, ghost included.
        let q = querier(&backend).with_poll_config(PollConfig {
            every: Duration::from_secs(60),
            stale_tenant_index: Duration::from_secs(2 * 3600),
        });
        q.poll_blocklist().await.unwrap();
        assert!(q.blocklist().contains(&t, &ghost.block_id));

        // Garbage in place of the index: listing again.
        backend
            .put(
                &block::tenant_index_key(&t),
                Bytes::from_static(b"not gzip"),
            )
            .await
            .unwrap();
        q.poll_blocklist().await.unwrap();
        let live = live_ids(&q, &t);
        assert_eq!(live, vec![a.block_id]);
    }

    fn live_ids(q: &Querier, t: &TenantId) -> Vec<Uuid> {
        q.blocklist().blocks(t).iter().map(|m| m.block_id).collect()
    }

    #[tokio::test]
    async fn block_removed_in_process_is_not_brought_back_by_the_index() {
        let backend = Backend::memory();
        let t = TenantId::single();
        let a = put_block(&backend, &t, synth::realistic_traces(3, 9)).await;
        let b = put_block(&backend, &t, synth::realistic_traces(3, 10)).await;
        build_tenant_index(&backend, &t).await.unwrap();
        let q = querier(&backend);
        q.poll_blocklist().await.unwrap();
        assert_eq!(q.blocklist().len(), 2);
        // The compactor marks a compacted and drops it from this process's list; the
        // index still lists it as live until the next rebuild.
        mark_compacted(&backend, &t, &a, false).await;
        q.blocklist().remove(&t, &[a.block_id]);
        q.poll_blocklist().await.unwrap();
        let live = live_ids(&q, &t);
        assert_eq!(live, vec![b.block_id]);
    }

    /// Object-store requests per trace-by-ID lookup, cold (nothing cached) and warm.
    #[tokio::test]
    async fn lookup_request_counts_cold_and_warm() {
        let backend = Backend::memory();
        let t = TenantId::single();
        let mut blocks = Vec::new();
        for seed in 0..4u64 {
            let traces = synth::realistic_traces(200, 100 + seed);
            let wanted = traces[37].id;
            let meta = put_block(&backend, &t, traces).await;
            blocks.push((meta, wanted));
        }

        // One block: cold = bloom + index + footer (one ranged read: meta.json carries
        // the page index size) + pages (one batched read); warm = pages only.
        let q = querier(&backend);
        q.blocklist().add(t.clone(), blocks[0].0.clone());
        let (_, id) = blocks[0];
        let before = backend.requests().total();
        let cold = q.find_trace(&t, &id, None).await.unwrap();
        assert!(!cold.batches.is_empty());
        assert_eq!(cold.requests, 4);
        assert_eq!(backend.requests().total() - before, cold.requests);
        let warm = q.find_trace(&t, &id, None).await.unwrap();
        assert_eq!(warm.requests, 1);
        assert_eq!(warm.batches, cold.batches);

        // Four blocks, the trace in one: each other block costs its bloom shard when
        // cold (more only on a bloom false positive) and nothing warm unless its bloom
        // says maybe.
        let q = querier(&backend);
        for (m, _) in &blocks {
            q.blocklist().add(t.clone(), m.clone());
        }
        let (_, id) = blocks[2];
        let before = backend.requests().total();
        let cold = q.find_trace(&t, &id, None).await.unwrap();
        assert_eq!(backend.requests().total() - before, cold.requests);
        assert!(!cold.batches.is_empty());
        let others = blocks.len() as u64 - 1;
        assert!(
            (4 + others..=4 + 4 * others).contains(&cold.requests),
            "cold {}",
            cold.requests
        );
        let warm = q.find_trace(&t, &id, None).await.unwrap();
        assert!(
            (1..=1 + others).contains(&warm.requests),
            "warm {}",
            warm.requests
        );
        eprintln!(
            "trace-by-id requests, {} blocks: cold {}, warm {}",
            blocks.len(),
            cold.requests,
            warm.requests
        );
        // A trace in no block: blooms only (cold), nothing warm.
        let missing = crate::model::TraceId([0xab; 16]);
        let absent = q.find_trace(&t, &missing, None).await.unwrap();
        assert!(absent.batches.is_empty());
        assert!(absent.requests <= 4 * blocks.len() as u64);
        eprintln!("absent trace: {} requests", absent.requests);
    }
}
