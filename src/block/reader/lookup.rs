//! Trace by ID inside a block: plan the pages of one row that hold a trace (or its whole
//! row group for blocks without page indexes) and decode only that row.

use std::ops::Range;
use std::sync::Arc;

use arrow_array::{Array, FixedSizeBinaryArray};
use arrow_schema::SchemaRef;
use bytes::Bytes;
use parquet::arrow::arrow_reader::{RowSelection, RowSelector};
use parquet::file::metadata::ParquetMetaData;
use parquet::file::page_index::column_index::ColumnIndexMetaData;
use parquet::file::page_index::offset_index::PageLocation;

use crate::block::BlockError;
use crate::model::{ResourceSpans, TraceId};

use super::*;

/// Finds one trace in row group `rg`, given only that row group's bytes (`rg_bytes`, which
/// start at file offset `rg_start`). Reads the trace_id column first, then decodes only
/// the matching row.
pub fn find_trace(
    md: Arc<ParquetMetaData>,
    rg: usize,
    rg_bytes: Bytes,
    rg_start: u64,
    id: &TraceId,
) -> Result<Option<Vec<ResourceSpans>>, BlockError> {
    let rows = row_count(&md, rg)?;
    if rows == 0 {
        return Ok(None);
    }
    let file_len = rg_start.saturating_add(rg_bytes.len() as u64);
    let chunk = SparseChunk::new(rg_start, rg_bytes, file_len);
    lookup(md, rg, chunk, 0..rows, id, Leaves::All)
}

/// Rows of row group `rg`; an error when the footer has no such row group.
fn row_count(md: &ParquetMetaData, rg: usize) -> Result<usize, BlockError> {
    let rows = md
        .row_groups()
        .get(rg)
        .ok_or(BlockError::RowGroupOutOfRange {
            rg,
            count: md.num_row_groups(),
        })?
        .num_rows();
    usize::try_from(rows)
        .map_err(|_| BlockError::Corrupt(format!("row group {rg} has {rows} rows")))
}

/// Ranges closer than this are fetched as one (the gap is read and thrown away): fewer
/// reads for a little more data. Pages of one trace lie ~1/columns of a row group apart,
/// so a larger gap would mostly add bytes.
pub(super) const COALESCE_GAP: u64 = 1 << 10;

/// How to look up one trace ID in row group `rg`: see [`plan_lookup`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupPlan {
    /// The page index of trace_id says the row group does not hold the ID.
    Absent,
    /// Fetch these pages and call [`find_trace_in_pages`].
    Pages(PageRead),
    /// No usable page index (older blocks): fetch this range, the whole row group, and call
    /// [`find_trace`].
    RowGroup(Range<u64>),
}

/// The pages that can hold one trace, in every column of a row group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRead {
    pub rg: usize,
    /// Rows of the row group that can hold the ID (one trace_id page).
    pub rows: Range<usize>,
    /// Byte ranges of data.parquet to fetch, sorted and disjoint: the dictionary page and
    /// the data pages covering `rows` of every column, nearby ranges merged.
    pub ranges: Vec<Range<u64>>,
}

impl PageRead {
    pub fn total_bytes(&self) -> u64 {
        self.ranges.iter().map(|r| r.end - r.start).sum()
    }
}

/// Plans the lookup of `id` in row group `rg` from the footer and its page indexes (as
/// returned by [`decode_footer`]); no I/O. With the trace_id column index and the offset
/// indexes loaded, this names the trace_id page whose min/max cover the ID and the byte
/// ranges of the pages holding those rows in every column.
pub fn plan_lookup(
    md: &ParquetMetaData,
    rg: usize,
    id: &TraceId,
) -> Result<LookupPlan, BlockError> {
    plan_pages(md, rg, id, false)
}

/// Plans a probe of row group `rg` for `id`: only the trace_id page that can hold it (a few
/// hundred bytes), for [`probe_id_in_pages`]. A sliced block has one candidate row group
/// per slice; probing them all first keeps a lookup to one full read.
pub fn plan_id_probe(
    md: &ParquetMetaData,
    rg: usize,
    id: &TraceId,
) -> Result<LookupPlan, BlockError> {
    plan_pages(md, rg, id, true)
}

fn plan_pages(
    md: &ParquetMetaData,
    rg: usize,
    id: &TraceId,
    ids_only: bool,
) -> Result<LookupPlan, BlockError> {
    let rgm = md
        .row_groups()
        .get(rg)
        .ok_or(BlockError::RowGroupOutOfRange {
            rg,
            count: md.num_row_groups(),
        })?;
    let whole = || row_group_byte_range(md, rg).map(LookupPlan::RowGroup);
    let Some(pi) = md.page_index() else {
        return whole();
    };
    let (Some(ix), Some(id_pages)) = (pi.column_index(rg, 0), pi.offset_index(rg, 0)) else {
        return whole();
    };
    let ColumnIndexMetaData::FIXED_LEN_BYTE_ARRAY(ix) = ix else {
        return whole();
    };
    let num_rows = usize::try_from(rgm.num_rows())
        .map_err(|_| BlockError::Corrupt(format!("row group {rg} has a bad row count")))?;
    let id_locs = id_pages.page_locations();
    if ix.num_pages() != id_locs.len() as u64 {
        return Err(BlockError::Corrupt(format!(
            "trace_id column and offset indexes of row group {rg} disagree"
        )));
    }
    // Pages are sorted by ID; scanning them all keeps a corrupt order harmless.
    let mut rows: Option<Range<usize>> = None;
    for p in 0..id_locs.len() {
        let (Some(min), Some(max)) = (ix.min_value(p), ix.max_value(p)) else {
            continue;
        };
        if min <= id.as_bytes().as_slice() && id.as_bytes().as_slice() <= max {
            let r = page_rows(id_locs, p, num_rows)?;
            rows = Some(match rows {
                None => r,
                Some(o) => o.start.min(r.start)..o.end.max(r.end),
            });
        }
    }
    let Some(rows) = rows else {
        return Ok(LookupPlan::Absent);
    };
    let mut ranges = Vec::new();
    for (ci, c) in rgm.columns().iter().enumerate() {
        if (ids_only && ci != 0) || !needed_for_traces(&c.column_path().string()) {
            continue;
        }
        let Some(oi) = pi.offset_index(rg, ci) else {
            return whole();
        };
        let chunk = chunk_range(c, rg)?;
        let locs = oi.page_locations();
        let first = locs
            .first()
            .ok_or_else(|| BlockError::Corrupt(format!("column {ci} has no pages")))?;
        let first_off = to_u64(first.offset)?;
        if first_off > chunk.start {
            ranges.push(chunk.start..first_off); // dictionary page
        }
        // Pages overlapping `rows`: from the last page starting at or before rows.start.
        let from = locs
            .partition_point(|l| l.first_row_index <= rows.start as i64)
            .saturating_sub(1);
        for l in &locs[from..] {
            if l.first_row_index >= rows.end as i64 {
                break;
            }
            let off = to_u64(l.offset)?;
            let size = to_u64(i64::from(l.compressed_page_size))?;
            ranges.push(off..off.saturating_add(size));
        }
    }
    Ok(LookupPlan::Pages(PageRead {
        rg,
        rows,
        ranges: coalesce(ranges, COALESCE_GAP),
    }))
}

/// Whether leaf column `path` is needed to rebuild OTLP traces: the trace-level summary
/// columns and `nested_set_right` are derived data, which a lookup skips.
pub(super) fn needed_for_traces(path: &str) -> bool {
    use crate::block::schema::paths::{
        DURATION, END_TIME, ROOT_SERVICE_NAME, ROOT_SPAN_NAME, SPAN,
    };
    // START_TIME: span start times are stored relative to it.
    let derived_root = [END_TIME, DURATION, ROOT_SERVICE_NAME, ROOT_SPAN_NAME];
    // nested_set_left and parent_id restore the parent span IDs left out of the block.
    let derived_span = ["nested_set_right"];
    !(derived_root.contains(&path)
        || path.starts_with("service_stats.")
        || path
            .strip_prefix(SPAN)
            .is_some_and(|leaf| derived_span.contains(&leaf)))
}

pub(super) fn to_u64(v: i64) -> Result<u64, BlockError> {
    u64::try_from(v).map_err(|_| BlockError::Corrupt(format!("negative page offset {v}")))
}

/// Rows of row group page `p` given its column's page locations.
pub(super) fn page_rows(
    locs: &[PageLocation],
    p: usize,
    num_rows: usize,
) -> Result<Range<usize>, BlockError> {
    let bad = || BlockError::Corrupt("bad first row index in the offset index".into());
    let start = usize::try_from(locs[p].first_row_index).map_err(|_| bad())?;
    let end = match locs.get(p + 1) {
        Some(n) => usize::try_from(n.first_row_index).map_err(|_| bad())?,
        None => num_rows,
    };
    if start >= end || end > num_rows {
        return Err(bad());
    }
    Ok(start..end)
}

/// Sorts `ranges` and merges those that overlap or are less than `gap` apart.
pub(crate) fn coalesce(mut ranges: Vec<Range<u64>>, gap: u64) -> Vec<Range<u64>> {
    ranges.sort_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if r.start <= last.end.saturating_add(gap) => {
                last.end = last.end.max(r.end);
            }
            _ => out.push(r),
        }
    }
    out
}

/// Finds `id` given the pages named by `plan` ([`plan_lookup`]): `fetched[i]` holds the
/// bytes of `plan.ranges[i]`. Decodes the trace IDs of `plan.rows`, then only the matching
/// row. Synchronous CPU work.
pub fn find_trace_in_pages(
    md: Arc<ParquetMetaData>,
    plan: &PageRead,
    fetched: Vec<Bytes>,
    file_len: u64,
    id: &TraceId,
) -> Result<Option<Vec<ResourceSpans>>, BlockError> {
    let chunk = SparseChunk::from_fetched(&plan.ranges, fetched, file_len)?;
    let rg = plan.rg;
    if plan.rows.start >= plan.rows.end || plan.rows.end > row_count(&md, rg)? {
        return Err(BlockError::Corrupt(format!(
            "rows {:?} outside row group {rg}",
            plan.rows
        )));
    }
    lookup(md, rg, chunk, plan.rows.clone(), id, Leaves::ForTraces)
}

/// Which leaf columns a lookup checks and decodes for the matching row.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Leaves {
    /// Every leaf: the whole row group was fetched.
    All,
    /// Those [`needed_for_traces`]: only their pages were fetched.
    ForTraces,
}

/// The one trace lookup: finds `id` among `rows` of row group `rg` in `chunk` (the whole
/// row group, or the pages of those rows). Decodes the trace IDs of `rows`, then only the
/// matching row's `leaves`. Synchronous CPU work.
fn lookup(
    md: Arc<ParquetMetaData>,
    rg: usize,
    chunk: SparseChunk,
    rows: Range<usize>,
    id: &TraceId,
    leaves: Leaves,
) -> Result<Option<Vec<ResourceSpans>>, BlockError> {
    guarded(|| {
        let schema = read_schema(&md)?;
        let Some(pos) = find_row(&md, &schema, rg, &chunk, rows, id)? else {
            return Ok(None);
        };
        let selection = RowSelection::from(vec![RowSelector::skip(pos), RowSelector::select(1)]);
        let descr = md.file_metadata().schema_descr();
        let leaves: Vec<usize> = (0..descr.num_columns())
            .filter(|&i| {
                leaves == Leaves::All || needed_for_traces(&descr.column(i).path().string())
            })
            .collect();
        let reader = CheckedRead::new(chunk.clone(), md.clone())
            .with_schema(schema)
            .with_leaves(leaves)
            .with_row_groups(vec![rg])
            .with_row_selection(selection)
            .with_batch_size(1)
            .build()?;
        for batch in reader {
            if let Some(t) = batch_to_traces(&batch?, &md)?.into_iter().next() {
                if t.id != *id {
                    return Err(BlockError::Corrupt("row holds another trace".into()));
                }
                return Ok(Some(t.batches));
            }
        }
        Ok(None)
    })
}

/// The row of `rows` in row group `rg` whose trace ID is `id`, decoding the trace_id
/// column only.
fn find_row(
    md: &Arc<ParquetMetaData>,
    schema: &SchemaRef,
    rg: usize,
    chunk: &SparseChunk,
    rows: Range<usize>,
    id: &TraceId,
) -> Result<Option<usize>, BlockError> {
    let selection = RowSelection::from(vec![
        RowSelector::skip(rows.start),
        RowSelector::select(rows.len()),
    ]);
    let ids = CheckedRead::new(chunk.clone(), md.clone())
        .with_schema(schema.clone())
        .with_leaves([0])
        .with_row_groups(vec![rg])
        .with_row_selection(selection)
        .with_batch_size(rows.len())
        .build()?;
    let mut pos = None;
    let mut base = rows.start;
    for batch in ids {
        let batch = batch?;
        let col = batch
            .column(0)
            .as_any()
            .downcast_ref::<FixedSizeBinaryArray>()
            .ok_or_else(|| BlockError::Corrupt("trace_id column has the wrong type".into()))?;
        if let Some(i) = (0..col.len()).find(|&i| col.value(i) == id.as_bytes()) {
            pos = Some(base + i);
            break;
        }
        base += col.len();
    }
    Ok(pos)
}

/// Whether the trace_id page fetched for a probe ([`plan_id_probe`]) holds `id`.
/// Synchronous CPU work.
pub fn probe_id_in_pages(
    md: Arc<ParquetMetaData>,
    plan: &PageRead,
    fetched: Vec<Bytes>,
    file_len: u64,
    id: &TraceId,
) -> Result<bool, BlockError> {
    let chunk = SparseChunk::from_fetched(&plan.ranges, fetched, file_len)?;
    let rg = plan.rg;
    if plan.rows.start >= plan.rows.end || plan.rows.end > row_count(&md, rg)? {
        return Err(BlockError::Corrupt(format!(
            "rows {:?} outside row group {rg}",
            plan.rows
        )));
    }
    guarded(|| {
        let schema = read_schema(&md)?;
        Ok(find_row(&md, &schema, rg, &chunk, plan.rows.clone(), id)?.is_some())
    })
}
