//! Test helpers shared by the search tests: the OTLP path of a search, parameters.

use bytes::Bytes;
use parquet::file::metadata::ParquetMetaData;

use super::*;
use crate::block;

pub(super) fn otlp_path(params: &SearchParams, data: &Bytes) -> Vec<TraceHit> {
    let mut p = Partial::default();
    for t in block::read_all_traces(data.clone()).unwrap() {
        params.evaluate(t.id, &t.batches, &mut p);
    }
    merge(vec![p], usize::MAX).traces
}

fn reads(
    params: &SearchParams,
    data: &Bytes,
) -> (
    Arc<ParquetMetaData>,
    block::SearchColumns,
    Vec<block::RowGroupRead>,
) {
    let md = block::decode_footer(data.clone(), data.len() as u64).unwrap();
    let columns = block::SearchColumns::for_query(&params.query).unwrap();
    let reads = columns
        .plan(&md, |s, e| {
            params.range.is_none_or(|r| r.overlaps_nanos(s, e))
        })
        .unwrap();
    (md, columns, reads)
}

fn fetch(ranges: &[std::ops::Range<u64>], data: &Bytes) -> Vec<Bytes> {
    ranges
        .iter()
        .map(|r| data.slice(r.start as usize..r.end as usize))
        .collect()
}

/// Hits through the columnar path and the number of row groups read.
pub(super) fn columnar_path(params: &SearchParams, data: &Bytes) -> (Vec<TraceHit>, usize) {
    let (md, columns, reads) = reads(params, data);
    let groups = reads.len();
    let mut p = Partial::default();
    for read in reads {
        params
            .search_row_group(
                md.clone(),
                &columns,
                &read,
                |ranges| fetch(ranges, data),
                data.len() as u64,
                &mut p,
            )
            .unwrap();
    }
    (merge(vec![p], usize::MAX).traces, groups)
}

/// Decodes the row groups the columnar path would read; returns the bytes fetched.
pub(super) fn decode_only(params: &SearchParams, data: &Bytes) -> u64 {
    let (md, columns, reads) = reads(params, data);
    let mut bytes = 0;
    for read in reads {
        bytes += read.total_bytes();
        let fetched = fetch(&read.ranges, data);
        block::decode_row_group(
            md.clone(),
            &columns,
            &read,
            block::Phase::Filter,
            fetched,
            data.len() as u64,
        )
        .unwrap();
    }
    bytes
}

pub(super) fn params(query: &str, range: Option<TimeRange>) -> Option<SearchParams> {
    let query = crate::traceql::parse(query).ok()?;
    Some(SearchParams {
        query: Arc::new(query),
        spss: 0,
        range,
        min_duration_nanos: None,
        max_duration_nanos: None,
    })
}

/// An ingester on `backend` over a WAL in a temporary directory (kept alive by the returned
/// guard), for searches over memory and blocks together.
pub(super) fn live_ingester(
    backend: &crate::backend::Backend,
    metrics: &Arc<crate::metrics::Metrics>,
) -> (tempfile::TempDir, Arc<crate::ingester::Ingester>) {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = crate::ingester::wal::Wal::open(dir.path(), metrics.clone()).unwrap();
    let ingester = crate::ingester::Ingester::new(
        crate::config::IngesterConfig::default(),
        Arc::new(wal),
        backend.clone(),
        block::BlockConfig::default(),
        metrics.clone(),
        Arc::new(|_| {}),
    );
    (dir, ingester)
}
