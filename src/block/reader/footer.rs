//! The footer of data.parquet: what to fetch for it, decoding and validating it (page
//! indexes included), and the byte ranges of row groups and column chunks.

use std::ops::Range;
use std::sync::Arc;

use arrow_schema::SchemaRef;
use bytes::Bytes;
use parquet::file::metadata::{
    ColumnChunkMetaData, FooterTail, PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader,
};

use crate::block::schema::{arrow_schema_for, search_schema_for};
use crate::block::{BlockError, BlockMeta};

use super::*;

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
pub(super) fn validate(md: &ParquetMetaData, data_end: u64) -> Result<(), BlockError> {
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
pub(super) fn validate_page_index(md: &ParquetMetaData) -> Result<(), BlockError> {
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

/// The Arrow types to read a file with footer `md` into: the block schema, or the schema
/// of older blocks (required span `parent_span_id`) when the file has it.
pub(crate) fn read_schema(md: &ParquetMetaData) -> Result<SchemaRef, BlockError> {
    arrow_schema_for(md.file_metadata().schema_descr())
}

/// [`read_schema`] for search decodes: see [`search_schema_for`].
pub(crate) fn search_read_schema(md: &ParquetMetaData) -> Result<SchemaRef, BlockError> {
    search_schema_for(md.file_metadata().schema_descr())
}

/// The chunk statistics of an Int64 column of one row group, by leaf path: (min, max) as
/// unsigned (times and durations), each `None` when absent.
pub fn int_stats(
    rgm: &parquet::file::metadata::RowGroupMetaData,
    path: &str,
) -> (Option<u64>, Option<u64>) {
    let stats = rgm
        .columns()
        .iter()
        .find(|c| c.column_path().string() == path)
        .and_then(|c| c.statistics());
    match stats {
        Some(parquet::file::statistics::Statistics::Int64(s)) => (
            s.min_opt().map(|v| *v as u64),
            s.max_opt().map(|v| *v as u64),
        ),
        _ => (None, None),
    }
}
