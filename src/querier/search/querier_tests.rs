//! The querier's search end to end over an in-memory bucket: limits, early stop, partial results.

use std::sync::Arc;

use super::tests_support::params;
use super::*;
use crate::backend::Backend;
use crate::block::{self, BlockConfig, TraceInput};
use crate::blocklist::BlockList;
use crate::metrics::Metrics;
use crate::traceql::engine_tests::dataset;

const HOUR: u64 = 3_600_000_000_000;

/// Block `k` holds the engine data set shifted by `k` hours, trace IDs tagged with `k`.
async fn querier(blocks: u8) -> (Querier, TenantId) {
    let backend = Backend::memory();
    let list = Arc::new(BlockList::default());
    let tenant = TenantId::new("t").unwrap();
    for k in 0..blocks {
        let traces = shifted(k);
        let id = uuid::Uuid::from_u128(u128::from(k) + 1);
        let b = block::encode_block(&tenant, id, 0, traces, &BlockConfig::default()).unwrap();
        backend
            .put(&block::data_key(&tenant, id), b.data.clone())
            .await
            .unwrap();
        list.add(tenant.clone(), b.meta.clone());
    }
    let q = Querier::new(backend, None, list, Arc::new(Metrics::default()), 1);
    (q, tenant)
}

/// The engine data set shifted by `k` hours, trace IDs tagged with `k`.
fn shifted(k: u8) -> Vec<TraceInput> {
    shifted_by(k, u64::from(k) * HOUR)
}

/// The engine data set shifted by `shift` ns, trace IDs tagged with `tag`. Every trace of
/// the set starts at the same time and the longest lasts 3 s.
fn shifted_by(tag: u8, shift: u64) -> Vec<TraceInput> {
    dataset()
        .into_iter()
        .map(|(_, mut batches)| {
            let mut id = [0u8; 16];
            for rs in &mut batches {
                for ss in &mut rs.scope_spans {
                    for s in &mut ss.spans {
                        s.trace_id[15] = tag;
                        id.copy_from_slice(&s.trace_id);
                        s.start_time_unix_nano += shift;
                        s.end_time_unix_nano += shift;
                    }
                }
            }
            TraceInput {
                id: TraceId(id),
                batches,
            }
        })
        .collect()
}

/// Writes one block of `traces` in the given time slices (with its index and blooms) and
/// lists it.
async fn put_sliced(
    backend: &Backend,
    list: &BlockList,
    tenant: &TenantId,
    id: uuid::Uuid,
    mut traces: Vec<(u32, TraceInput)>,
) -> block::EncodedBlock {
    traces.sort_by_key(|(slice, t)| (*slice, t.id));
    let inputs = traces
        .into_iter()
        .map(|(slice, trace)| Ok(block::SlicedTrace::decoded(slice, trace)));
    let b = block::encode_block_sliced(tenant, id, 1, inputs, &BlockConfig::default()).unwrap();
    for (key, bytes) in [
        (block::data_key(tenant, id), b.data.clone()),
        (block::index_key(tenant, id), b.index.clone()),
    ] {
        backend.put(&key, bytes).await.unwrap();
    }
    for (i, bl) in b.blooms.iter().enumerate() {
        backend
            .put(&block::bloom_key(tenant, id, i as u32), bl.clone())
            .await
            .unwrap();
    }
    list.add(tenant.clone(), b.meta.clone());
    b
}

fn request(query: &str, limit: usize) -> SearchRequest {
    SearchRequest {
        query: params(query, None).unwrap().query,
        limit,
        spss: 3,
        range: None,
        min_duration_nanos: None,
        max_duration_nanos: None,
    }
}

#[tokio::test]
async fn newest_blocks_first_and_early_stop() {
    let (q, tenant) = querier(3).await;
    let all = q.search(&tenant, &request("{}", 1000)).await.unwrap();
    assert_eq!(all.traces.len(), 3 * 14);
    assert_eq!(all.metrics.completed_jobs, 4);
    assert_eq!(all.metrics.total_jobs, 4);
    // The newest block alone holds 14 hits, all newer than the other blocks' ends.
    let few = q.search(&tenant, &request("{}", 3)).await.unwrap();
    assert_eq!(few.traces, all.traces[..3].to_vec());
    assert_eq!(few.metrics.completed_jobs, 2);
    assert_eq!(few.metrics.total_jobs, 4);
    assert!(few.traces.iter().all(|t| t.id.as_bytes()[15] == 2));
    // Newest first, trace ID as tie-break.
    for w in all.traces.windows(2) {
        assert!(
            (w[0].start_unix_nano, std::cmp::Reverse(w[0].id))
                >= (w[1].start_unix_nano, std::cmp::Reverse(w[1].id))
        );
    }
    // A block deleted after the listing (compaction) is skipped, not an error.
    let oldest = uuid::Uuid::from_u128(1);
    q.backend
        .delete(&block::data_key(&tenant, oldest))
        .await
        .unwrap();
    let rest = q.search(&tenant, &request("{}", 1000)).await.unwrap();
    assert_eq!(rest.traces.len(), 2 * 14);
    assert_eq!(rest.metrics.completed_jobs, 4);
}

/// One block in four time slices (an hour apart): a limit-3 search reads the newest slice's
/// row group and stops, with the answer of the unlimited search; every trace is found by
/// ID, each through a probe of one row group per slice.
#[tokio::test]
async fn a_sliced_block_is_searched_newest_slice_first() {
    let backend = Backend::memory();
    let list = Arc::new(BlockList::default());
    let tenant = TenantId::new("t").unwrap();
    let traces: Vec<(u32, TraceInput)> = (0..4u8)
        .flat_map(|k| shifted(k).into_iter().map(move |t| (u32::from(k), t)))
        .collect();
    let total = traces.len();
    let id = uuid::Uuid::from_u128(7);
    let b = put_sliced(&backend, &list, &tenant, id, traces).await;
    assert_eq!(b.meta.total_records, 4);
    let index = block::RowGroupIndex::from_bytes(&b.index).unwrap();
    assert!(index.is_sliced());
    let q = Querier::new(backend, None, list, Arc::new(Metrics::default()), 1);

    let all = q.search(&tenant, &request("{}", 1000)).await.unwrap();
    assert_eq!(all.traces.len(), total);
    assert_eq!(all.metrics.inspected_traces, total as u64);
    let few = q.search(&tenant, &request("{}", 3)).await.unwrap();
    assert_eq!(few.traces, all.traces[..3].to_vec());
    // One slice of the four was read.
    assert_eq!(few.metrics.inspected_traces, (total / 4) as u64);
    assert!(few.traces.iter().all(|t| t.id.as_bytes()[15] == 3));

    for k in 0..4u8 {
        for t in shifted(k) {
            let found = q.find_trace(&tenant, &t.id, None).await.unwrap();
            assert_eq!(
                crate::model::span_count(&found.batches),
                crate::model::span_count(&t.batches),
                "trace {} of slice {k}",
                t.id
            );
        }
    }
    let mut absent = [0x5au8; 16];
    absent[15] = 9;
    let none = q.find_trace(&tenant, &TraceId(absent), None).await.unwrap();
    assert!(none.batches.is_empty());
}

/// Three blocks cut from the same seconds, each in four slices a second apart (block `b`
/// 100 ms after block `b - 1`), with traces up to 3 s long, so every older slice ends after
/// the newer ones start. A limited search reads the newest slices and nothing else: row
/// groups go newest first across blocks, and one is skipped once the held traces start
/// after every trace in it, however late it ends.
#[tokio::test]
async fn overlapping_blocks_are_searched_as_one_queue_of_slices() {
    const SECOND: u64 = 1_000_000_000;
    let backend = Backend::memory();
    let list = Arc::new(BlockList::default());
    let tenant = TenantId::new("t").unwrap();
    let mut total = 0;
    for b in 0..3u8 {
        let traces: Vec<(u32, TraceInput)> = (0..4u8)
            .flat_map(|k| {
                let shift = u64::from(k) * SECOND + u64::from(b) * SECOND / 10;
                shifted_by(b * 4 + k, shift)
                    .into_iter()
                    .map(move |t| (u32::from(k), t))
            })
            .collect();
        total += traces.len();
        put_sliced(
            &backend,
            &list,
            &tenant,
            uuid::Uuid::from_u128(u128::from(b) + 1),
            traces,
        )
        .await;
    }
    // Blocks searched side by side, as a querier does by default.
    let q = Querier::new(backend, None, list, Arc::new(Metrics::default()), 16);
    let all = q.search(&tenant, &request("{}", 1000)).await.unwrap();
    assert_eq!(all.traces.len(), total);
    let few = q.search(&tenant, &request("{}", 20)).await.unwrap();
    assert_eq!(few.traces, all.traces[..20].to_vec());
    // The newest slices of blocks 2 and 1 (tags 11 and 7) hold the answer.
    assert!(few
        .traces
        .iter()
        .all(|t| [11, 7].contains(&t.id.as_bytes()[15])));
    // Read in rounds of one row group, then two: the newest slice of each block, and no
    // older slice (each of those ends after the answer starts).
    let per_slice = (total / 12) as u64;
    assert_eq!(few.metrics.inspected_traces, 3 * per_slice);
    assert_eq!(few.metrics.total_jobs, 4);
    // Ten are all in the newest slice of the newest block: the first round is the last.
    let ten = q.search(&tenant, &request("{}", 10)).await.unwrap();
    assert_eq!(ten.traces, all.traces[..10].to_vec());
    assert_eq!(ten.metrics.inspected_traces, per_slice);
}

/// Live traces an hour older than a block wait their turn in the same queue: a limited
/// search answered by the block reads none of them, an unlimited one reads them all.
#[tokio::test]
async fn live_traces_older_than_a_block_are_not_read() {
    use crate::model::ExportTraceServiceRequest;

    const T0: u64 = 1_700_000_000_000_000_000;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let metrics = Arc::new(Metrics::default());
    let backend = Backend::memory();
    let list = Arc::new(BlockList::default());
    let tenant = TenantId::single();
    let (_dir, ingester) = super::tests_support::live_ingester(&backend, &metrics);
    let block_traces = shifted_by(1, now - 60 * 1_000_000_000 - T0);
    let per_source = block_traces.len();
    let in_block = block_traces.into_iter().map(|t| (0, t)).collect();
    put_sliced(&backend, &list, &tenant, uuid::Uuid::from_u128(1), in_block).await;
    for t in shifted_by(0, now - 3600 * 1_000_000_000 - T0) {
        let req = ExportTraceServiceRequest {
            resource_spans: t.batches,
        };
        ingester.push_request(&tenant, &req).await.unwrap();
    }
    let q = Querier::new(backend, Some(ingester), list, metrics, 16);
    let all = q.search(&tenant, &request("{}", 1000)).await.unwrap();
    assert_eq!(all.traces.len(), 2 * per_source);
    assert_eq!(all.metrics.inspected_traces, 2 * per_source as u64);
    let few = q.search(&tenant, &request("{}", 5)).await.unwrap();
    assert_eq!(few.traces, all.traces[..5].to_vec());
    assert!(few.traces.iter().all(|t| t.id.as_bytes()[15] == 1));
    assert_eq!(
        few.metrics.inspected_traces, per_source as u64,
        "the block only"
    );
}
