//! Block decoding: Parquet footer and row-group helpers for ranged reads from object
//! storage, and the conversion of record batches (full schema) back into OTLP traces.

use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use arrow_array::{
    Array, ArrayRef, BinaryArray, BooleanArray, FixedSizeBinaryArray, Float64Array, Int32Array,
    Int64Array, ListArray, RecordBatch, StringArray, StructArray, UInt32Array, UInt64Array,
};
use bytes::{Buf, Bytes};
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder, RowSelection,
    RowSelector,
};
use parquet::arrow::ProjectionMask;
use parquet::errors::ParquetError;
use parquet::file::metadata::{
    ColumnChunkMetaData, FooterTail, PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader,
};
use parquet::file::page_index::column_index::ColumnIndexMetaData;
use parquet::file::page_index::offset_index::PageLocation;
use parquet::file::reader::{ChunkReader, Length};
use prost::Message;

use super::schema::{arrow_schema_for, value_type};
use super::{
    BlockError, BlockMeta, Dedicated, DedicatedType, TraceInput, DEDICATED_RESOURCE, DEDICATED_SPAN,
};
use crate::model::{
    any_value, span, AnyValue, InstrumentationScope, KeyValue, Resource, ResourceSpans, ScopeSpans,
    Span, Status, TraceId,
};

/// The byte range of data.parquet to fetch for [`decode_footer`]: the footer and, when
/// `meta.pageIndexSize` is known, the page indexes right before it, in one read.
pub fn footer_fetch_range(meta: &BlockMeta) -> Range<u64> {
    let want = u64::from(meta.footer_size) + u64::from(meta.page_index_size);
    meta.size - want.min(meta.size)..meta.size
}

/// Decodes the Parquet footer. `tail` is the last bytes of data.parquet, at least
/// `meta.footerSize` of them (see [`footer_fetch_range`]); `file_len` is the length of
/// data.parquet. Column chunk ranges are checked against the file so later reads cannot be
/// sent outside it. When `tail` also covers the page indexes, they are loaded and checked
/// too; otherwise [`page_index_start`] of the result says how long a tail would hold them.
pub fn decode_footer(tail: Bytes, file_len: u64) -> Result<Arc<ParquetMetaData>, BlockError> {
    let n = tail.len();
    if n as u64 > file_len {
        return Err(BlockError::Corrupt(format!(
            "footer read of {n} bytes is longer than the {file_len}-byte file"
        )));
    }
    let last8: [u8; 8] = tail
        .get(n.saturating_sub(8)..)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| BlockError::Corrupt(format!("footer of {n} bytes is too short")))?;
    let ft = FooterTail::try_new(&last8)?;
    if ft.is_encrypted_footer() {
        return Err(BlockError::Corrupt(
            "encrypted footers are not supported".into(),
        ));
    }
    let meta_len = ft.metadata_length();
    let footer_len = meta_len
        .checked_add(8)
        .filter(|l| *l <= n && (*l as u64) <= file_len)
        .ok_or_else(|| {
            BlockError::Corrupt(format!("footer metadata of {meta_len} bytes does not fit"))
        })?;
    let data_end = file_len - footer_len as u64;
    let md = guarded(|| {
        Ok(ParquetMetaDataReader::decode_metadata(
            &tail[n - footer_len..n - 8],
        )?)
    })?;
    validate(&md, data_end)?;
    let tail_start = file_len - n as u64;
    let md = match page_index_start(&md) {
        Some(start) if start >= tail_start && start <= data_end => guarded(|| {
            let mut r = ParquetMetaDataReader::new_with_metadata(md)
                .with_page_index_policy(PageIndexPolicy::Optional);
            r.read_page_indexes_sized(&tail, file_len)?;
            let md = r.finish()?;
            validate_page_index(&md)?;
            Ok(md)
        })?,
        _ => md,
    };
    Ok(Arc::new(md))
}

/// Where the page indexes (column and offset indexes) of `md` start in the file, if it has
/// any and they are not loaded yet: a tail from there holds them (they sit right before
/// the footer in files this module writes).
pub fn page_index_start(md: &ParquetMetaData) -> Option<u64> {
    if md.page_index().is_some() {
        return None;
    }
    md.row_groups()
        .iter()
        .flat_map(|rg| rg.columns())
        .flat_map(|c| [c.column_index_offset(), c.offset_index_offset()])
        .flatten()
        .filter_map(|o| u64::try_from(o).ok())
        .min()
}

/// Checks every column chunk lies within the data part of the file. The parquet reader
/// asserts on negative offsets, so this must run before handing metadata to it.
fn validate(md: &ParquetMetaData, data_end: u64) -> Result<(), BlockError> {
    for rg in 0..md.num_row_groups() {
        let r = row_group_byte_range(md, rg)?;
        if r.end > data_end {
            return Err(BlockError::Corrupt(format!(
                "row group {rg} ends at {} past the data end {data_end}",
                r.end
            )));
        }
    }
    Ok(())
}

pub(crate) fn chunk_range(c: &ColumnChunkMetaData, rg: usize) -> Result<Range<u64>, BlockError> {
    let bad = || BlockError::Corrupt(format!("bad column chunk range in row group {rg}"));
    let start = c.dictionary_page_offset().unwrap_or(c.data_page_offset());
    let start = u64::try_from(start).map_err(|_| bad())?;
    let len = u64::try_from(c.compressed_size()).map_err(|_| bad())?;
    let end = start.checked_add(len).ok_or_else(bad)?;
    Ok(start..end)
}

/// Checks the offset indexes: pages in order, inside their column chunk, starting at row 0
/// with increasing first rows below the row count; and that the trace_id column index, if
/// any, has one entry per page. Lookups rely on this to compute ranges without panicking.
fn validate_page_index(md: &ParquetMetaData) -> Result<(), BlockError> {
    let Some(pi) = md.page_index() else {
        return Ok(());
    };
    for (rgi, rg) in md.row_groups().iter().enumerate() {
        let rows = rg.num_rows();
        for (ci, c) in rg.columns().iter().enumerate() {
            let Some(oi) = pi.offset_index(rgi, ci) else {
                continue;
            };
            let bad = |what: &str| {
                BlockError::Corrupt(format!(
                    "offset index of row group {rgi} column {ci}: {what}"
                ))
            };
            let chunk = chunk_range(c, rgi)?;
            let locs = oi.page_locations();
            if locs.first().is_none_or(|l| l.first_row_index != 0) {
                return Err(bad("does not start at row 0"));
            }
            let (mut pos, mut row) = (chunk.start, -1i64);
            for l in locs {
                let off = u64::try_from(l.offset).map_err(|_| bad("negative offset"))?;
                let size = u64::try_from(l.compressed_page_size)
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| bad("bad page size"))?;
                if off < pos || off.saturating_add(size) > chunk.end {
                    return Err(bad("page outside its column chunk or out of order"));
                }
                if l.first_row_index <= row || l.first_row_index >= rows {
                    return Err(bad("bad first row index"));
                }
                pos = off + size;
                row = l.first_row_index;
            }
            if ci == 0 {
                if let Some(ix) = pi.column_index(rgi, 0) {
                    if ix.num_pages() != locs.len() as u64 {
                        return Err(bad("column index and offset index disagree"));
                    }
                }
            }
        }
    }
    Ok(())
}

/// The bytes covering all column chunks of row group `rg`.
pub fn row_group_byte_range(md: &ParquetMetaData, rg: usize) -> Result<Range<u64>, BlockError> {
    let rgm = md
        .row_groups()
        .get(rg)
        .ok_or(BlockError::RowGroupOutOfRange {
            rg,
            count: md.num_row_groups(),
        })?;
    let mut range: Option<Range<u64>> = None;
    for c in rgm.columns() {
        let Range { start, end } = chunk_range(c, rg)?;
        range = Some(match range {
            None => start..end,
            Some(r) => r.start.min(start)..r.end.max(end),
        });
    }
    range.ok_or_else(|| BlockError::Corrupt(format!("row group {rg} has no columns")))
}

/// A `ChunkReader` over some byte ranges of a file (e.g. one row group, or a few pages,
/// fetched from object storage). Reads outside the ranges fail instead of returning wrong
/// bytes.
#[derive(Debug, Clone)]
pub struct SparseChunk {
    /// Sorted by start, non-overlapping.
    parts: Arc<[(u64, Bytes)]>,
    file_len: u64,
}

impl SparseChunk {
    /// One contiguous range starting at file offset `start`.
    pub fn new(start: u64, data: Bytes, file_len: u64) -> Self {
        Self {
            parts: Arc::from(vec![(start, data)]),
            file_len,
        }
    }

    /// Several ranges: `(file offset, bytes)`. Errors if they overlap.
    pub fn from_parts(mut parts: Vec<(u64, Bytes)>, file_len: u64) -> Result<Self, BlockError> {
        parts.sort_by_key(|(s, _)| *s);
        for w in parts.windows(2) {
            if w[0].0.saturating_add(w[0].1.len() as u64) > w[1].0 {
                return Err(BlockError::Corrupt("fetched ranges overlap".into()));
            }
        }
        Ok(Self {
            parts: Arc::from(parts),
            file_len,
        })
    }

    /// Whether the fetched ranges cover `range` of the file.
    pub(crate) fn holds(&self, range: Range<u64>) -> bool {
        usize::try_from(range.end.saturating_sub(range.start))
            .is_ok_and(|len| self.slice(range.start, Some(len)).is_ok())
    }

    fn slice(&self, start: u64, length: Option<usize>) -> Result<Bytes, ParquetError> {
        let out_of_range = |len: Option<usize>| {
            ParquetError::General(format!(
                "read of {len:?} bytes at {start} is outside the fetched ranges"
            ))
        };
        // The last part starting at or before `start`.
        let i = self.parts.partition_point(|(s, _)| *s <= start);
        let (part_start, data) = i
            .checked_sub(1)
            .and_then(|i| self.parts.get(i))
            .ok_or_else(|| out_of_range(length))?;
        let off = usize::try_from(start - part_start)
            .ok()
            .filter(|o| *o <= data.len())
            .ok_or_else(|| out_of_range(length))?;
        let end = match length {
            Some(l) => off
                .checked_add(l)
                .filter(|e| *e <= data.len())
                .ok_or_else(|| out_of_range(length))?,
            None => data.len(),
        };
        Ok(data.slice(off..end))
    }
}

impl Length for SparseChunk {
    fn len(&self) -> u64 {
        self.file_len
    }
}

impl ChunkReader for SparseChunk {
    type T = bytes::buf::Reader<Bytes>;

    fn get_read(&self, start: u64) -> Result<Self::T, ParquetError> {
        Ok(self.slice(start, None)?.reader())
    }

    fn get_bytes(&self, start: u64, length: usize) -> Result<Bytes, ParquetError> {
        self.slice(start, Some(length))
    }
}

/// Runs decoding with a last-resort guard: the parquet decoders are not hardened against
/// every malformed page, and a corrupt object must not take the process down.
pub(crate) fn guarded<T>(f: impl FnOnce() -> Result<T, BlockError>) -> Result<T, BlockError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(BlockError::Corrupt(
            "decoder panicked on malformed data".into(),
        ))
    })
}

/// Footer key-value metadata: with value [`SPAN_START_RELATIVE`], span
/// `start_time_unix_nano` holds the span start minus the trace's `start_time_unix_nano`
/// (wrapping). Older blocks, without the key, hold absolute times.
pub(crate) const SPAN_START_KEY: &str = "vivace.span_start";
pub(crate) const SPAN_START_RELATIVE: &str = "trace";

pub(crate) fn span_starts_relative(md: &ParquetMetaData) -> bool {
    md.file_metadata().key_value_metadata().is_some_and(|kvs| {
        kvs.iter()
            .any(|kv| kv.key == SPAN_START_KEY && kv.value.as_deref() == Some(SPAN_START_RELATIVE))
    })
}

fn list_values<'a>(s: &'a StructArray, name: &str) -> Option<(&'a ListArray, &'a StructArray)> {
    let l = s
        .column_by_name(name)?
        .as_any()
        .downcast_ref::<ListArray>()?;
    let v = l.values().as_any().downcast_ref::<StructArray>()?;
    Some((l, v))
}

fn with_column(s: &StructArray, name: &str, col: ArrayRef) -> Result<StructArray, BlockError> {
    let (fields, mut cols, nulls) = s.clone().into_parts();
    let i = fields
        .iter()
        .position(|f| f.name() == name)
        .ok_or_else(|| corrupt(format!("missing column {name}")))?;
    cols[i] = col;
    Ok(StructArray::try_new(fields, cols, nulls)?)
}

fn with_values(l: &ListArray, values: StructArray) -> Result<ArrayRef, BlockError> {
    let (field, offsets, _, nulls) = l.clone().into_parts();
    Ok(Arc::new(ListArray::try_new(
        field,
        offsets,
        Arc::new(values),
        nulls,
    )?))
}

/// Turns the trace-relative span start times of a decoded (possibly projected) block
/// batch into absolute ones. A batch without span start times is returned as is.
pub(crate) fn absolute_span_starts(root: &StructArray) -> Result<StructArray, BlockError> {
    let name = "start_time_unix_nano";
    let Some((rs, rs_v)) = list_values(root, "resource_spans") else {
        return Ok(root.clone());
    };
    let Some((ss, ss_v)) = list_values(rs_v, "scope_spans") else {
        return Ok(root.clone());
    };
    let Some((sp, sp_v)) = list_values(ss_v, "spans") else {
        return Ok(root.clone());
    };
    let Some(rel) = sp_v.column_by_name(name) else {
        return Ok(root.clone());
    };
    let rel: &UInt64Array = rel
        .as_any()
        .downcast_ref()
        .ok_or_else(|| corrupt("span start_time_unix_nano has the wrong type"))?;
    let base: &UInt64Array = get(root, name)?;
    let (rso, sso, spo) = (rs.value_offsets(), ss.value_offsets(), sp.value_offsets());
    let bad = || corrupt("list offsets out of range");
    let idx = |o: &[i32], i: usize| -> Result<usize, BlockError> {
        o.get(i)
            .and_then(|&v| usize::try_from(v).ok())
            .ok_or_else(bad)
    };
    let mut out: Vec<u64> = rel.values().to_vec();
    for row in 0..root.len() {
        let (r0, r1) = (idx(rso, row)?, idx(rso, row + 1)?);
        let (s0, s1) = (idx(sso, r0)?, idx(sso, r1)?);
        let (g0, g1) = (idx(spo, s0)?, idx(spo, s1)?);
        let b = base.value(row);
        for v in out.get_mut(g0..g1).ok_or_else(bad)? {
            *v = v.wrapping_add(b);
        }
    }
    let starts: ArrayRef = Arc::new(UInt64Array::new(out.into(), rel.nulls().cloned()));
    let sp_v = with_column(sp_v, name, starts)?;
    let ss_v = with_column(ss_v, "spans", with_values(sp, sp_v)?)?;
    let rs_v = with_column(rs_v, "scope_spans", with_values(ss, ss_v)?)?;
    with_column(root, "resource_spans", with_values(rs, rs_v)?)
}

/// Options for reading a file with footer `md`: the block schema, or the schema of older
/// blocks (required span `parent_span_id`) when the file has it.
pub(crate) fn reader_options(md: &ParquetMetaData) -> Result<ArrowReaderOptions, BlockError> {
    Ok(ArrowReaderOptions::new().with_schema(arrow_schema_for(md.file_metadata().schema_descr())?))
}

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
    let rows = md
        .row_groups()
        .get(rg)
        .ok_or(BlockError::RowGroupOutOfRange {
            rg,
            count: md.num_row_groups(),
        })?
        .num_rows();
    let rows = usize::try_from(rows)
        .map_err(|_| BlockError::Corrupt(format!("row group {rg} has {rows} rows")))?;
    if rows == 0 {
        return Ok(None);
    }
    let file_len = rg_start.saturating_add(rg_bytes.len() as u64);
    let chunk = SparseChunk::new(rg_start, rg_bytes, file_len);
    guarded(|| {
        let meta = ArrowReaderMetadata::try_new(md.clone(), reader_options(&md)?)?;
        let ids = ParquetRecordBatchReaderBuilder::new_with_metadata(chunk.clone(), meta.clone());
        let mask = ProjectionMask::roots(ids.parquet_schema(), [0]);
        let ids = ids
            .with_projection(mask)
            .with_row_groups(vec![rg])
            .with_batch_size(rows)
            .build()?;
        let mut pos = None;
        let mut base = 0usize;
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
        let Some(pos) = pos else {
            return Ok(None);
        };
        // Skipping to the row must not spin on a corrupt page (see `levels`).
        let leaves = md.file_metadata().schema_descr().num_columns();
        super::levels::check_rep_levels(&md, rg, &chunk, 0..leaves, pos)?;
        let selection = RowSelection::from(vec![RowSelector::skip(pos), RowSelector::select(1)]);
        let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(chunk, meta)
            .with_row_groups(vec![rg])
            .with_row_selection(selection)
            .with_batch_size(1)
            .build()?;
        for batch in reader {
            if let Some(t) = batch_to_traces(&batch?, &md)?.into_iter().next() {
                return Ok(Some(t.batches));
            }
        }
        Ok(None)
    })
}

/// Ranges closer than this are fetched as one (the gap is read and thrown away): fewer
/// reads for a little more data. Pages of one trace lie ~1/columns of a row group apart,
/// so a larger gap would mostly add bytes.
const COALESCE_GAP: u64 = 1 << 10;

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
        if !needed_for_traces(&c.column_path().string()) {
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
fn needed_for_traces(path: &str) -> bool {
    use super::paths::{DURATION, END_TIME, ROOT_SERVICE_NAME, ROOT_SPAN_NAME, SPAN};
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

fn to_u64(v: i64) -> Result<u64, BlockError> {
    u64::try_from(v).map_err(|_| BlockError::Corrupt(format!("negative page offset {v}")))
}

/// Rows of row group page `p` given its column's page locations.
fn page_rows(locs: &[PageLocation], p: usize, num_rows: usize) -> Result<Range<usize>, BlockError> {
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
    if fetched.len() != plan.ranges.len() {
        return Err(BlockError::Corrupt(format!(
            "{} ranges fetched for {} planned",
            fetched.len(),
            plan.ranges.len()
        )));
    }
    let mut parts = Vec::with_capacity(fetched.len());
    for (r, b) in plan.ranges.iter().zip(fetched) {
        if b.len() as u64 != r.end - r.start {
            return Err(BlockError::Corrupt(format!(
                "fetched {} bytes for range {r:?}",
                b.len()
            )));
        }
        parts.push((r.start, b));
    }
    let chunk = SparseChunk::from_parts(parts, file_len)?;
    let rg = plan.rg;
    let num_rows = md
        .row_groups()
        .get(rg)
        .ok_or(BlockError::RowGroupOutOfRange {
            rg,
            count: md.num_row_groups(),
        })?
        .num_rows();
    if plan.rows.start >= plan.rows.end
        || plan.rows.end as u64 > u64::try_from(num_rows).unwrap_or(0)
    {
        return Err(BlockError::Corrupt(format!(
            "rows {:?} outside row group {rg}",
            plan.rows
        )));
    }
    guarded(|| {
        let meta = ArrowReaderMetadata::try_new(md.clone(), reader_options(&md)?)?;
        let ids = ParquetRecordBatchReaderBuilder::new_with_metadata(chunk.clone(), meta.clone());
        let mask = ProjectionMask::leaves(ids.parquet_schema(), [0]);
        let selection = RowSelection::from(vec![
            RowSelector::skip(plan.rows.start),
            RowSelector::select(plan.rows.len()),
        ]);
        let ids = ids
            .with_projection(mask)
            .with_row_groups(vec![rg])
            .with_row_selection(selection)
            .with_batch_size(plan.rows.len())
            .build()?;
        let mut pos = None;
        let mut base = plan.rows.start;
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
        let Some(pos) = pos else {
            return Ok(None);
        };
        let selection = RowSelection::from(vec![RowSelector::skip(pos), RowSelector::select(1)]);
        let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(chunk.clone(), meta);
        let descr = reader.parquet_schema();
        let leaves: Vec<usize> = (0..descr.num_columns())
            .filter(|&i| needed_for_traces(&descr.column(i).path().string()))
            .collect();
        // Skipping to the row must not spin on a corrupt page (see `levels`).
        super::levels::check_rep_levels(&md, rg, &chunk, leaves.iter().copied(), pos)?;
        let mask = ProjectionMask::leaves(descr, leaves);
        let reader = reader
            .with_projection(mask)
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

/// Reads every trace of a whole data.parquet, in file (ID) order.
pub fn read_all_traces(data: Bytes) -> Result<Vec<TraceInput>, BlockError> {
    guarded(|| {
        let file_len = data.len() as u64;
        let md = ParquetMetaDataReader::new().parse_and_finish(&data)?;
        let footer = footer_len_of(&data)?;
        validate(&md, file_len.saturating_sub(footer))?;
        let options = reader_options(&md)?;
        let md = Arc::new(md);
        let meta = ArrowReaderMetadata::try_new(md.clone(), options)?;
        let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(data, meta)
            .with_batch_size(1024)
            .build()?;
        let mut out = Vec::new();
        for batch in reader {
            out.extend(batch_to_traces(&batch?, &md)?);
        }
        Ok(out)
    })
}

fn footer_len_of(data: &[u8]) -> Result<u64, BlockError> {
    let n = data.len();
    let b: [u8; 4] = data
        .get(n.saturating_sub(8)..n.saturating_sub(4))
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| BlockError::Corrupt("file shorter than a footer".into()))?;
    Ok(u64::from(u32::from_le_bytes(b)) + 8)
}

/// Converts a record batch of the full block schema into traces.
/// `md` is the footer of the file the batch comes from (see `SPAN_START_KEY`).
pub fn batch_to_traces(
    batch: &RecordBatch,
    md: &ParquetMetaData,
) -> Result<Vec<TraceInput>, BlockError> {
    let mut root = StructArray::from(batch.clone());
    if span_starts_relative(md) {
        root = absolute_span_starts(&root)?;
    }
    let cols = TraceCols::new(&root)?;
    (0..root.len()).map(|row| cols.trace(row)).collect()
}

fn corrupt(msg: impl Into<String>) -> BlockError {
    BlockError::Corrupt(msg.into())
}

/// Like [`get`], for a column a projection may leave out.
fn opt<'a, T: Array + 'static>(
    s: &'a StructArray,
    name: &str,
) -> Result<Option<&'a T>, BlockError> {
    match s.column_by_name(name) {
        None => Ok(None),
        Some(_) => get(s, name).map(Some),
    }
}

fn get<'a, T: Array + 'static>(s: &'a StructArray, name: &str) -> Result<&'a T, BlockError> {
    s.column_by_name(name)
        .ok_or_else(|| corrupt(format!("missing column {name}")))?
        .as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| corrupt(format!("column {name} has the wrong type")))
}

/// A list column: its offsets and its element struct.
struct ListCols<'a> {
    offsets: &'a [i32],
    values: &'a StructArray,
}

impl<'a> ListCols<'a> {
    fn new(s: &'a StructArray, name: &str) -> Result<Self, BlockError> {
        let list = get::<ListArray>(s, name)?;
        let values = list
            .values()
            .as_any()
            .downcast_ref::<StructArray>()
            .ok_or_else(|| corrupt(format!("column {name} is not a list of structs")))?;
        Ok(Self {
            offsets: list.value_offsets(),
            values,
        })
    }

    fn range(&self, row: usize) -> Result<Range<usize>, BlockError> {
        let bad = || corrupt("list offsets out of range");
        let start = usize::try_from(*self.offsets.get(row).ok_or_else(bad)?).map_err(|_| bad())?;
        let end =
            usize::try_from(*self.offsets.get(row + 1).ok_or_else(bad)?).map_err(|_| bad())?;
        if start > end || end > self.values.len() {
            return Err(bad());
        }
        Ok(start..end)
    }
}

struct AttrCols<'a> {
    list: ListCols<'a>,
    key: &'a StringArray,
    ty: &'a Int32Array,
    str: &'a StringArray,
    int: &'a Int64Array,
    dbl: &'a Float64Array,
    bool: &'a BooleanArray,
    bytes: &'a BinaryArray,
}

impl<'a> AttrCols<'a> {
    fn new(s: &'a StructArray) -> Result<Self, BlockError> {
        let list = ListCols::new(s, "attrs")?;
        let v = list.values;
        Ok(Self {
            key: get(v, "key")?,
            ty: get(v, "type")?,
            str: get(v, "str")?,
            int: get(v, "int")?,
            dbl: get(v, "dbl")?,
            bool: get(v, "bool")?,
            bytes: get(v, "bytes")?,
            list,
        })
    }

    fn read_into(&self, row: usize, out: &mut Vec<KeyValue>) -> Result<(), BlockError> {
        use any_value::Value;
        for j in self.list.range(row)? {
            let missing = || corrupt(format!("attribute {} has no value", self.key.value(j)));
            let ty = if self.ty.is_valid(j) {
                self.ty.value(j)
            } else {
                value_type::implied(
                    self.str.is_valid(j),
                    self.int.is_valid(j),
                    self.dbl.is_valid(j),
                    self.bool.is_valid(j),
                    self.bytes.is_valid(j),
                )
                .ok_or_else(missing)?
            };
            let value = match ty {
                value_type::NONE => None,
                value_type::EMPTY => Some(AnyValue { value: None }),
                value_type::STRING if self.str.is_valid(j) => Some(AnyValue {
                    value: Some(Value::StringValue(self.str.value(j).to_string())),
                }),
                value_type::BOOL if self.bool.is_valid(j) => Some(AnyValue {
                    value: Some(Value::BoolValue(self.bool.value(j))),
                }),
                value_type::INT if self.int.is_valid(j) => Some(AnyValue {
                    value: Some(Value::IntValue(self.int.value(j))),
                }),
                value_type::DOUBLE if self.dbl.is_valid(j) => Some(AnyValue {
                    value: Some(Value::DoubleValue(self.dbl.value(j))),
                }),
                value_type::BYTES if self.bytes.is_valid(j) => Some(AnyValue {
                    value: Some(Value::BytesValue(self.bytes.value(j).to_vec())),
                }),
                value_type::ARRAY | value_type::KVLIST | value_type::ENCODED
                    if self.bytes.is_valid(j) =>
                {
                    Some(AnyValue::decode(self.bytes.value(j))?)
                }
                value_type::STRING
                | value_type::BOOL
                | value_type::INT
                | value_type::DOUBLE
                | value_type::BYTES
                | value_type::ARRAY
                | value_type::KVLIST
                | value_type::ENCODED => return Err(missing()),
                other => return Err(corrupt(format!("unknown attribute value type {other}"))),
            };
            out.push(KeyValue {
                key: self.key.value(j).to_string(),
                key_strindex: 0,
                value,
            });
        }
        Ok(())
    }

    fn read(&self, row: usize) -> Result<Vec<KeyValue>, BlockError> {
        let mut out = Vec::new();
        self.read_into(row, &mut out)?;
        Ok(out)
    }
}

enum DedRead<'a> {
    Str(&'static str, &'a StringArray),
    Int(&'static str, &'a Int64Array),
}

fn ded_cols<'a>(
    s: &'a StructArray,
    spec: &'static [Dedicated],
) -> Result<Vec<DedRead<'a>>, BlockError> {
    spec.iter()
        .map(|(key, col, ty)| {
            Ok(match ty {
                DedicatedType::String => DedRead::Str(key, get(s, col)?),
                DedicatedType::Int => DedRead::Int(key, get(s, col)?),
            })
        })
        .collect()
}

fn read_dedicated(cols: &[DedRead<'_>], row: usize, out: &mut Vec<KeyValue>) {
    use any_value::Value;
    for c in cols {
        let (key, value) = match c {
            DedRead::Str(k, a) if a.is_valid(row) => {
                (k, Value::StringValue(a.value(row).to_string()))
            }
            DedRead::Int(k, a) if a.is_valid(row) => (k, Value::IntValue(a.value(row))),
            _ => continue,
        };
        out.push(KeyValue {
            key: key.to_string(),
            key_strindex: 0,
            value: Some(AnyValue { value: Some(value) }),
        });
    }
}

/// Typed views of every column of the full schema, resolved once per batch.
struct TraceCols<'a> {
    trace_id: &'a FixedSizeBinaryArray,
    rs: ListCols<'a>,
    res: &'a StructArray,
    res_attrs: AttrCols<'a>,
    res_dropped: &'a UInt32Array,
    res_entity_refs: &'a BinaryArray,
    res_ded: Vec<DedRead<'a>>,
    rs_schema_url: &'a StringArray,
    ss: ListCols<'a>,
    scope: &'a StructArray,
    scope_name: &'a StringArray,
    scope_version: &'a StringArray,
    scope_attrs: AttrCols<'a>,
    scope_dropped: &'a UInt32Array,
    ss_schema_url: &'a StringArray,
    spans: ListCols<'a>,
    span_id: &'a BinaryArray,
    parent_span_id: &'a BinaryArray,
    /// Absent from lookups of older blocks, where no parent span ID is left out.
    ns_left: Option<&'a Int32Array>,
    ns_parent: Option<&'a Int32Array>,
    span_trace_id: &'a BinaryArray,
    trace_state: &'a StringArray,
    flags: &'a UInt32Array,
    name: &'a StringArray,
    kind: &'a Int32Array,
    start: &'a UInt64Array,
    duration: &'a UInt64Array,
    status: &'a StructArray,
    status_code: &'a Int32Array,
    status_message: &'a StringArray,
    span_attrs: AttrCols<'a>,
    span_dropped_attrs: &'a UInt32Array,
    span_ded: Vec<DedRead<'a>>,
    events: ListCols<'a>,
    ev_time: &'a Int64Array,
    ev_name: &'a StringArray,
    ev_attrs: AttrCols<'a>,
    ev_dropped: &'a UInt32Array,
    dropped_events: &'a UInt32Array,
    links: ListCols<'a>,
    link_trace_id: &'a BinaryArray,
    link_span_id: &'a BinaryArray,
    link_trace_state: &'a StringArray,
    link_flags: &'a UInt32Array,
    link_attrs: AttrCols<'a>,
    link_dropped: &'a UInt32Array,
    dropped_links: &'a UInt32Array,
}

impl<'a> TraceCols<'a> {
    fn new(root: &'a StructArray) -> Result<Self, BlockError> {
        let trace_id: &FixedSizeBinaryArray = get(root, "trace_id")?;
        if trace_id.value_length() != 16 {
            return Err(corrupt("trace_id is not 16 bytes"));
        }
        let rs = ListCols::new(root, "resource_spans")?;
        let res: &StructArray = get(rs.values, "resource")?;
        let ss = ListCols::new(rs.values, "scope_spans")?;
        let scope: &StructArray = get(ss.values, "scope")?;
        let spans = ListCols::new(ss.values, "spans")?;
        let sp = spans.values;
        let status: &StructArray = get(sp, "status")?;
        let events = ListCols::new(sp, "events")?;
        let links = ListCols::new(sp, "links")?;
        let ev = events.values;
        let lk = links.values;
        Ok(Self {
            trace_id,
            res_attrs: AttrCols::new(res)?,
            res_dropped: get(res, "dropped_attributes_count")?,
            res_entity_refs: get(res, "entity_refs")?,
            res_ded: ded_cols(res, &DEDICATED_RESOURCE)?,
            res,
            rs_schema_url: get(rs.values, "schema_url")?,
            rs,
            scope_name: get(scope, "name")?,
            scope_version: get(scope, "version")?,
            scope_attrs: AttrCols::new(scope)?,
            scope_dropped: get(scope, "dropped_attributes_count")?,
            scope,
            ss_schema_url: get(ss.values, "schema_url")?,
            ss,
            span_id: get(sp, "span_id")?,
            parent_span_id: get(sp, "parent_span_id")?,
            ns_left: opt(sp, "nested_set_left")?,
            ns_parent: opt(sp, "parent_id")?,
            span_trace_id: get(sp, "trace_id")?,
            trace_state: get(sp, "trace_state")?,
            flags: get(sp, "flags")?,
            name: get(sp, "name")?,
            kind: get(sp, "kind")?,
            start: get(sp, "start_time_unix_nano")?,
            duration: get(sp, "duration_nano")?,
            status_code: get(status, "code")?,
            status_message: get(status, "message")?,
            status,
            span_attrs: AttrCols::new(sp)?,
            span_dropped_attrs: get(sp, "dropped_attributes_count")?,
            span_ded: ded_cols(sp, &DEDICATED_SPAN)?,
            dropped_events: get(sp, "dropped_events_count")?,
            dropped_links: get(sp, "dropped_links_count")?,
            spans,
            ev_time: get(ev, "time_since_start_nano")?,
            ev_name: get(ev, "name")?,
            ev_attrs: AttrCols::new(ev)?,
            ev_dropped: get(ev, "dropped_attributes_count")?,
            events,
            link_trace_id: get(lk, "trace_id")?,
            link_span_id: get(lk, "span_id")?,
            link_trace_state: get(lk, "trace_state")?,
            link_flags: get(lk, "flags")?,
            link_attrs: AttrCols::new(lk)?,
            link_dropped: get(lk, "dropped_attributes_count")?,
            links,
        })
    }

    fn trace(&self, row: usize) -> Result<TraceInput, BlockError> {
        let mut id = [0u8; 16];
        id.copy_from_slice(self.trace_id.value(row));
        let id = TraceId(id);
        let parents = self.parent_ids(row)?;
        let mut batches = Vec::new();
        for r in self.rs.range(row)? {
            let resource = if self.res.is_valid(r) {
                let mut attributes = Vec::new();
                read_dedicated(&self.res_ded, r, &mut attributes);
                self.res_attrs.read_into(r, &mut attributes)?;
                let entity_refs = if self.res_entity_refs.is_valid(r) {
                    Resource::decode(self.res_entity_refs.value(r))?.entity_refs
                } else {
                    Vec::new()
                };
                Some(Resource {
                    attributes,
                    dropped_attributes_count: self.res_dropped.value(r),
                    entity_refs,
                })
            } else {
                None
            };
            let mut scope_spans = Vec::new();
            for s in self.ss.range(r)? {
                let scope = self
                    .scope
                    .is_valid(s)
                    .then(|| -> Result<_, BlockError> {
                        Ok(InstrumentationScope {
                            name: self.scope_name.value(s).to_string(),
                            version: self.scope_version.value(s).to_string(),
                            attributes: self.scope_attrs.read(s)?,
                            dropped_attributes_count: self.scope_dropped.value(s),
                        })
                    })
                    .transpose()?;
                let spans = self
                    .spans
                    .range(s)?
                    .map(|i| self.span(id, i, &parents))
                    .collect::<Result<Vec<_>, _>>()?;
                scope_spans.push(ScopeSpans {
                    scope,
                    spans,
                    schema_url: self.ss_schema_url.value(s).to_string(),
                });
            }
            batches.push(ResourceSpans {
                resource,
                scope_spans,
                schema_url: self.rs_schema_url.value(r).to_string(),
            });
        }
        Ok(TraceInput { id, batches })
    }

    /// When some parent span IDs of `row` are left out (null): the span index of each
    /// nested-set left number in the row (the first span with that number).
    fn parent_ids(&self, row: usize) -> Result<Option<Vec<usize>>, BlockError> {
        let mut first = None;
        let mut last = 0;
        for r in self.rs.range(row)? {
            for s in self.ss.range(r)? {
                let spans = self.spans.range(s)?;
                first.get_or_insert(spans.start);
                last = last.max(spans.end);
            }
        }
        let Some(first) = first else {
            return Ok(None);
        };
        if first > last || (first..last).all(|i| self.parent_span_id.is_valid(i)) {
            return Ok(None);
        }
        let (Some(left), Some(_)) = (self.ns_left, self.ns_parent) else {
            return Err(corrupt("parent span IDs left out without nested sets"));
        };
        if last > left.len() {
            return Err(corrupt("nested set column shorter than the spans"));
        }
        let mut by_left = vec![usize::MAX; 2 * (last - first) + 2];
        for i in first..last {
            if let Some(slot) = usize::try_from(left.value(i))
                .ok()
                .and_then(|l| by_left.get_mut(l))
            {
                if *slot == usize::MAX {
                    *slot = i;
                }
            }
        }
        Ok(Some(by_left))
    }

    fn parent_span_id(
        &self,
        i: usize,
        parents: &Option<Vec<usize>>,
    ) -> Result<Vec<u8>, BlockError> {
        if self.parent_span_id.is_valid(i) {
            return Ok(self.parent_span_id.value(i).to_vec());
        }
        let bad = || corrupt("left-out parent span ID has no parent span");
        let (Some(by_left), Some(p)) = (parents, self.ns_parent) else {
            return Err(bad());
        };
        let j = usize::try_from(p.value(i))
            .ok()
            .and_then(|p| by_left.get(p))
            .copied()
            .filter(|&j| j != usize::MAX && j < self.span_id.len())
            .ok_or_else(bad)?;
        Ok(self.span_id.value(j).to_vec())
    }

    fn span(
        &self,
        trace: TraceId,
        i: usize,
        parents: &Option<Vec<usize>>,
    ) -> Result<Span, BlockError> {
        let start = self.start.value(i);
        let mut attributes = Vec::new();
        read_dedicated(&self.span_ded, i, &mut attributes);
        self.span_attrs.read_into(i, &mut attributes)?;
        let events = self
            .events
            .range(i)?
            .map(|e| {
                Ok(span::Event {
                    time_unix_nano: start.wrapping_add(self.ev_time.value(e) as u64),
                    name: self.ev_name.value(e).to_string(),
                    attributes: self.ev_attrs.read(e)?,
                    dropped_attributes_count: self.ev_dropped.value(e),
                })
            })
            .collect::<Result<Vec<_>, BlockError>>()?;
        let links = self
            .links
            .range(i)?
            .map(|l| {
                Ok(span::Link {
                    trace_id: self.link_trace_id.value(l).to_vec(),
                    span_id: self.link_span_id.value(l).to_vec(),
                    trace_state: self.link_trace_state.value(l).to_string(),
                    attributes: self.link_attrs.read(l)?,
                    dropped_attributes_count: self.link_dropped.value(l),
                    flags: self.link_flags.value(l),
                })
            })
            .collect::<Result<Vec<_>, BlockError>>()?;
        Ok(Span {
            trace_id: if self.span_trace_id.is_valid(i) {
                self.span_trace_id.value(i).to_vec()
            } else {
                trace.as_bytes().to_vec()
            },
            span_id: self.span_id.value(i).to_vec(),
            trace_state: self.trace_state.value(i).to_string(),
            parent_span_id: self.parent_span_id(i, parents)?,
            flags: self.flags.value(i),
            name: self.name.value(i).to_string(),
            kind: self.kind.value(i),
            start_time_unix_nano: start,
            end_time_unix_nano: start.wrapping_add(self.duration.value(i)),
            attributes,
            dropped_attributes_count: self.span_dropped_attrs.value(i),
            events,
            dropped_events_count: self.dropped_events.value(i),
            links,
            dropped_links_count: self.dropped_links.value(i),
            status: self.status.is_valid(i).then(|| Status {
                message: self.status_message.value(i).to_string(),
                code: self.status_code.value(i),
            }),
        })
    }
}

/// The traces of one row group, decoded `batch_rows` rows at a time: what the compactor
/// streams from each input block. `rg_bytes` hold [`row_group_byte_range`] of the row group
/// (starting at file offset `rg_start`), `file_len` is the length of data.parquet. Only one
/// record batch is decoded at once; derived columns are not read.
pub fn row_group_traces(
    md: Arc<ParquetMetaData>,
    rg: usize,
    rg_bytes: Bytes,
    rg_start: u64,
    file_len: u64,
    batch_rows: usize,
) -> Result<RowGroupTraces, BlockError> {
    if rg >= md.num_row_groups() {
        return Err(BlockError::RowGroupOutOfRange {
            rg,
            count: md.num_row_groups(),
        });
    }
    let reader = open_row_group(&md, rg, rg_bytes, rg_start, file_len, batch_rows, &|p| {
        needed_for_traces(p)
    })?;
    Ok(RowGroupTraces {
        md,
        fill: None,
        reader,
        decoded: Vec::new().into_iter(),
    })
}

/// A reader of row group `rg` (its bytes given) that decodes only the leaves `keep` accepts.
pub(crate) fn open_row_group(
    md: &Arc<ParquetMetaData>,
    rg: usize,
    rg_bytes: Bytes,
    rg_start: u64,
    file_len: u64,
    batch_rows: usize,
    keep: &dyn Fn(&str) -> bool,
) -> Result<parquet::arrow::arrow_reader::ParquetRecordBatchReader, BlockError> {
    let chunk = SparseChunk::new(rg_start, rg_bytes, file_len);
    guarded(|| {
        let meta = ArrowReaderMetadata::try_new(md.clone(), reader_options(md)?)?;
        let builder = ParquetRecordBatchReaderBuilder::new_with_metadata(chunk, meta);
        let descr = builder.parquet_schema();
        let leaves = (0..descr.num_columns()).filter(|&i| keep(&descr.column(i).path().string()));
        let mask = ProjectionMask::leaves(descr, leaves);
        Ok(builder
            .with_projection(mask)
            .with_row_groups(vec![rg])
            .with_batch_size(batch_rows.max(1))
            .build()?)
    })
}

/// Iterator returned by [`row_group_traces`] and [`super::row_group_traces_projected`]:
/// traces in file (ID) order.
pub struct RowGroupTraces {
    pub(crate) md: Arc<ParquetMetaData>,
    /// For a projected read: the block's row type, whose left-out fields are added back
    /// as nulls so the usual conversion to OTLP applies.
    pub(crate) fill: Option<arrow_schema::DataType>,
    pub(crate) reader: parquet::arrow::arrow_reader::ParquetRecordBatchReader,
    pub(crate) decoded: std::vec::IntoIter<TraceInput>,
}

impl Iterator for RowGroupTraces {
    type Item = Result<TraceInput, BlockError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(t) = self.decoded.next() {
                return Some(Ok(t));
            }
            let (reader, md, fill) = (&mut self.reader, &self.md, &self.fill);
            let batch = guarded(|| {
                let Some(batch) = reader.next().transpose()? else {
                    return Ok(None);
                };
                let batch = match fill {
                    Some(full) => super::project::fill_batch(batch, full)?,
                    None => batch,
                };
                Ok(Some(batch_to_traces(&batch, md)?))
            });
            match batch {
                Ok(Some(traces)) => self.decoded = traces.into_iter(),
                Ok(None) => return None,
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

#[cfg(test)]
mod row_group_tests {
    use super::*;
    use crate::block::{encode_block, synth, BlockConfig};
    use crate::model::TenantId;

    #[test]
    fn row_group_traces_stream_every_trace_in_order() {
        let input = synth::realistic_traces(300, 5);
        let cfg = BlockConfig {
            row_group_size_bytes: 50_000,
            ..BlockConfig::default()
        };
        let tenant = TenantId::new("t").unwrap();
        let block = encode_block(&tenant, uuid::Uuid::new_v4(), 0, input, &cfg).unwrap();
        let want = read_all_traces(block.data.clone()).unwrap();
        let md = decode_footer(block.data.clone(), block.meta.size).unwrap();
        assert!(md.num_row_groups() > 1, "test needs several row groups");
        let mut got = Vec::new();
        for rg in 0..md.num_row_groups() {
            let r = row_group_byte_range(&md, rg).unwrap();
            let bytes = block.data.slice(r.start as usize..r.end as usize);
            let it = row_group_traces(md.clone(), rg, bytes, r.start, block.meta.size, 7).unwrap();
            for t in it {
                got.push(t.unwrap());
            }
        }
        assert_eq!(got, want);
        // Bytes of another row group are an error, not wrong traces.
        let r = row_group_byte_range(&md, 1).unwrap();
        let wrong = block.data.slice(r.start as usize..r.end as usize);
        let it = row_group_traces(md.clone(), 0, wrong, r.start, block.meta.size, 7);
        assert!(it.is_err() || it.unwrap().any(|t| t.is_err()));
        assert!(row_group_traces(md.clone(), 99, Bytes::new(), 0, 1, 7).is_err());
    }
}
