//! Parquet decoding with every page checked on its way to the decoders.
//!
//! parquet sizes some buffers from counts a page states before it compares them with the
//! page's bytes: a DELTA_LENGTH_BYTE_ARRAY page allocates one `i32` per length its delta
//! header claims, a dictionary page reserves an offset per entry it claims. A corrupt or
//! hostile block could make one read allocate gigabytes, or abort the process. Readers are
//! built here instead of with `ParquetRecordBatchReaderBuilder`: the same page readers,
//! wrapped in [`CheckedPages`], which refuses a count its page cannot hold. The check reads
//! a few header bytes of the page, so it costs nothing measurable.
//!
//! zstd pages are decompressed here too, with one context per thread, rather than by a
//! codec parquet would set up for every column chunk (see [`column_pages`]).

use std::cell::RefCell;
use std::sync::Arc;

use arrow_schema::SchemaRef;
use bytes::Bytes;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, RowGroups, RowSelection};
use parquet::arrow::{parquet_to_arrow_field_levels, ProjectionMask};
use parquet::basic::{Compression, Encoding, Type as PhysicalType};
use parquet::column::page::{Page, PageIterator, PageMetadata, PageReader};
use parquet::errors::{ParquetError, Result as ParquetResult};
use parquet::file::metadata::{ColumnChunkMetaData, ParquetMetaData, RowGroupMetaData};
use parquet::file::page_index::offset_index::PageLocation;
use parquet::file::reader::ChunkReader;
use parquet::file::serialized_reader::SerializedPageReader;
use parquet::schema::types::ColumnDescPtr;

use super::{levels, BlockError};

/// The most values a delta-encoded byte-array page may hold: its decoder allocates 4 bytes
/// per value up front (128 MiB here). A page holds whole traces, and a trace of 32M spans is
/// far past any per-trace limit.
const MAX_DELTA_VALUES: u64 = 1 << 25;

/// A record batch reader over some row groups of a file, like parquet's builder but with
/// every page checked (see the module docs).
pub(crate) struct CheckedRead<R> {
    chunk: Arc<R>,
    md: Arc<ParquetMetaData>,
    schema: Option<SchemaRef>,
    leaves: Option<Vec<usize>>,
    row_groups: Option<Vec<usize>>,
    selection: Option<RowSelection>,
    batch_size: usize,
}

impl<R: ChunkReader + 'static> CheckedRead<R> {
    pub(crate) fn new(chunk: R, md: Arc<ParquetMetaData>) -> Self {
        CheckedRead {
            chunk: Arc::new(chunk),
            md,
            schema: None,
            leaves: None,
            row_groups: None,
            selection: None,
            batch_size: 1024,
        }
    }

    /// The Arrow types to decode into (see `block::schema::arrow_schema_for`).
    pub(crate) fn with_schema(mut self, schema: SchemaRef) -> Self {
        self.schema = Some(schema);
        self
    }

    /// Decodes only these leaf columns (all by default).
    pub(crate) fn with_leaves(mut self, leaves: impl IntoIterator<Item = usize>) -> Self {
        self.leaves = Some(leaves.into_iter().collect());
        self
    }

    /// Reads only these row groups (all by default), in this order.
    pub(crate) fn with_row_groups(mut self, row_groups: Vec<usize>) -> Self {
        self.row_groups = Some(row_groups);
        self
    }

    /// Rows to return, counted over the chosen row groups together.
    pub(crate) fn with_row_selection(mut self, selection: RowSelection) -> Self {
        self.selection = Some(selection);
        self
    }

    pub(crate) fn with_batch_size(mut self, rows: usize) -> Self {
        self.batch_size = rows;
        self
    }

    pub(crate) fn build(self) -> Result<ParquetRecordBatchReader, BlockError> {
        let count = self.md.num_row_groups();
        let row_groups = self.row_groups.unwrap_or_else(|| (0..count).collect());
        if let Some(&rg) = row_groups.iter().find(|&&rg| rg >= count) {
            return Err(BlockError::RowGroupOutOfRange { rg, count });
        }
        let descr = self.md.file_metadata().schema_descr();
        let mask = match self.leaves {
            Some(leaves) => ProjectionMask::leaves(descr, leaves),
            None => ProjectionMask::all(),
        };
        let levels =
            parquet_to_arrow_field_levels(descr, mask, self.schema.as_ref().map(|s| s.fields()))?;
        // As parquet's builder: no batch larger than the file (a footer's row count may lie,
        // so also never zero).
        let file_rows = usize::try_from(self.md.file_metadata().num_rows()).unwrap_or(0);
        let batch_size = self.batch_size.min(file_rows).max(1);
        let groups = CheckedRowGroups {
            chunk: self.chunk,
            md: self.md,
            row_groups,
            skips: self.selection.is_some(),
        };
        Ok(ParquetRecordBatchReader::try_new_with_row_groups(
            &levels,
            &groups,
            batch_size,
            self.selection,
        )?)
    }
}

struct CheckedRowGroups<R> {
    chunk: Arc<R>,
    md: Arc<ParquetMetaData>,
    row_groups: Vec<usize>,
    /// A row selection makes the reader skip records (see [`column_pages`]).
    skips: bool,
}

impl<R: ChunkReader + 'static> RowGroups for CheckedRowGroups<R> {
    fn num_rows(&self) -> usize {
        self.row_groups
            .iter()
            .map(|&rg| usize::try_from(self.md.row_group(rg).num_rows()).unwrap_or(0))
            .sum()
    }

    fn column_chunks(&self, i: usize) -> ParquetResult<Box<dyn PageIterator>> {
        Ok(Box::new(CheckedPageIterator {
            chunk: self.chunk.clone(),
            md: self.md.clone(),
            column: i,
            row_groups: self.row_groups.clone().into_iter(),
            skips: self.skips,
        }))
    }

    fn row_groups(&self) -> Box<dyn Iterator<Item = &RowGroupMetaData> + '_> {
        Box::new(self.row_groups.iter().map(|&rg| self.md.row_group(rg)))
    }

    fn metadata(&self) -> &ParquetMetaData {
        &self.md
    }
}

/// One column's pages, row group by row group.
struct CheckedPageIterator<R> {
    chunk: Arc<R>,
    md: Arc<ParquetMetaData>,
    column: usize,
    row_groups: std::vec::IntoIter<usize>,
    skips: bool,
}

impl<R: ChunkReader + 'static> CheckedPageIterator<R> {
    fn pages(&self, rg: usize) -> ParquetResult<Box<dyn PageReader>> {
        let rgm = self.md.row_group(rg);
        let col = rgm.column(self.column);
        let locations = self
            .md
            .page_index()
            .and_then(|pi| pi.page_locations(rg, self.column).cloned());
        let rows = usize::try_from(rgm.num_rows()).unwrap_or(0);
        Ok(Box::new(column_pages(
            self.chunk.clone(),
            col,
            rows,
            locations,
            self.skips,
        )?))
    }
}

/// The pages of column chunk `col` (a row group of `rows` rows), checked. zstd pages are
/// decompressed here, with one context per thread: parquet would create a zstd compressor
/// and a decompressor for every column chunk it reads, and each set-up asks the CPU for
/// BMI2 with `cpuid`, which traps to the hypervisor on a VM (5% of a structural search's
/// CPU over zstd blocks).
///
/// `skips`: the reader will skip records, so each data page's repetition levels are counted
/// too (see `block::levels`); a reader that decodes every row checks them itself.
pub(crate) fn column_pages<R: ChunkReader + 'static>(
    chunk: Arc<R>,
    col: &ColumnChunkMetaData,
    rows: usize,
    locations: Option<Vec<PageLocation>>,
    skips: bool,
) -> ParquetResult<CheckedPages<SerializedPageReader<R>>> {
    let zstd = matches!(col.compression(), Compression::ZSTD(_));
    let inner = if zstd {
        let stored = col
            .clone()
            .into_builder()
            .set_compression(Compression::UNCOMPRESSED)
            .build()?;
        SerializedPageReader::new(chunk, &stored, rows, locations)?
    } else {
        SerializedPageReader::new(chunk, col, rows, locations)?
    };
    Ok(CheckedPages {
        inner,
        column: col.column_descr_ptr(),
        zstd,
        skips,
    })
}

impl<R: ChunkReader + 'static> Iterator for CheckedPageIterator<R> {
    type Item = ParquetResult<Box<dyn PageReader>>;

    fn next(&mut self) -> Option<Self::Item> {
        let rg = self.row_groups.next()?;
        Some(self.pages(rg))
    }
}

impl<R: ChunkReader + 'static> PageIterator for CheckedPageIterator<R> {}

/// A page reader that hands on only pages whose counts [`check_page`] accepts.
pub(crate) struct CheckedPages<P> {
    inner: P,
    column: ColumnDescPtr,
    /// The chunk is zstd-compressed and `inner` reads its pages as stored.
    zstd: bool,
    skips: bool,
}

impl<P> CheckedPages<P> {
    fn pass(&self, page: Option<Page>) -> ParquetResult<Option<Page>> {
        let Some(page) = page else {
            return Ok(None);
        };
        let page = if self.zstd { unzstd(page)? } else { page };
        check_page(&page, &self.column)?;
        if self.skips {
            levels::check_rep_levels(&page, &self.column).map_err(|e| corrupt(&self.column, e))?;
        }
        Ok(Some(page))
    }
}

impl<P: PageReader> PageReader for CheckedPages<P> {
    fn get_next_page(&mut self) -> ParquetResult<Option<Page>> {
        let page = self.inner.get_next_page()?;
        self.pass(page)
    }

    fn peek_next_page(&mut self) -> ParquetResult<Option<PageMetadata>> {
        self.inner.peek_next_page()
    }

    fn skip_next_page(&mut self) -> ParquetResult<()> {
        self.inner.skip_next_page()
    }

    fn supports_deferred_dictionary(&self) -> bool {
        self.inner.supports_deferred_dictionary()
    }

    fn take_deferred_dictionary(&mut self) -> ParquetResult<Option<Page>> {
        let page = self.inner.take_deferred_dictionary()?;
        self.pass(page)
    }

    fn at_record_boundary(&mut self) -> ParquetResult<bool> {
        self.inner.at_record_boundary()
    }
}

impl<P: PageReader> Iterator for CheckedPages<P> {
    type Item = ParquetResult<Page>;

    fn next(&mut self) -> Option<Self::Item> {
        self.get_next_page().transpose()
    }
}

/// The most bytes one page may decompress to. A page holds whole traces (a trace's values
/// of one column at least), far smaller than this under any per-trace limit.
const MAX_PAGE_BYTES: usize = 1 << 27;

thread_local! {
    static ZSTD: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// `page` with its zstd-compressed part decompressed, as parquet's own codec would.
fn unzstd(mut page: Page) -> ParquetResult<Page> {
    match &mut page {
        Page::DataPage { buf, .. } | Page::DictionaryPage { buf, .. } => {
            *buf = unzstd_bytes(&[], buf)?;
        }
        Page::DataPageV2 {
            buf,
            def_levels_byte_len,
            rep_levels_byte_len,
            is_compressed: true,
            ..
        } => {
            // The levels of a v2 page are stored uncompressed before the values.
            let levels = *def_levels_byte_len as usize + *rep_levels_byte_len as usize;
            let (levels, values) = buf
                .split_at_checked(levels)
                .ok_or_else(|| ParquetError::General("v2 page levels overrun it".into()))?;
            *buf = unzstd_bytes(levels, values)?;
        }
        Page::DataPageV2 { .. } => {}
    }
    Ok(page)
}

/// `prefix` followed by `data` decompressed. Empty data stays empty: a page of only nulls
/// may store no values at all.
fn unzstd_bytes(prefix: &[u8], data: &[u8]) -> ParquetResult<Bytes> {
    if data.is_empty() {
        return Ok(Bytes::copy_from_slice(prefix));
    }
    let values = ZSTD.with(|cell| {
        let mut cell = cell.borrow_mut();
        let ctx = match &mut *cell {
            Some(ctx) => ctx,
            empty => empty.insert(zstd::bulk::Decompressor::new()?),
        };
        ctx.decompress(data, MAX_PAGE_BYTES)
    });
    let values = values.map_err(|e| ParquetError::General(format!("zstd page: {e}")))?;
    if prefix.is_empty() {
        return Ok(Bytes::from(values));
    }
    let mut out = Vec::with_capacity(prefix.len() + values.len());
    out.extend_from_slice(prefix);
    out.extend_from_slice(&values);
    Ok(Bytes::from(out))
}

fn corrupt(column: &ColumnDescPtr, what: impl std::fmt::Display) -> ParquetError {
    ParquetError::General(format!("column {}: {what}", column.path()))
}

/// Refuses a page whose stated counts its bytes cannot hold, where parquet would allocate
/// by the count first.
pub(crate) fn check_page(page: &Page, column: &ColumnDescPtr) -> ParquetResult<()> {
    match page {
        Page::DictionaryPage {
            buf, num_values, ..
        } => {
            // Every PLAIN entry takes at least this many bytes.
            let entry = match column.physical_type() {
                PhysicalType::BOOLEAN => 0,
                PhysicalType::INT32 | PhysicalType::FLOAT | PhysicalType::BYTE_ARRAY => 4,
                PhysicalType::INT64 | PhysicalType::DOUBLE => 8,
                PhysicalType::INT96 => 12,
                PhysicalType::FIXED_LEN_BYTE_ARRAY => column.type_length().max(1) as u64,
            };
            if u64::from(*num_values) * entry > buf.len() as u64 {
                return Err(corrupt(
                    column,
                    format_args!(
                        "dictionary page claims {num_values} entries in {} bytes",
                        buf.len()
                    ),
                ));
            }
            Ok(())
        }
        Page::DataPage {
            buf,
            num_values,
            encoding,
            def_level_encoding,
            rep_level_encoding,
            ..
        } => {
            if !is_delta_bytes(*encoding) {
                return Ok(());
            }
            let n = *num_values as usize;
            let mut at = 0;
            for (max, enc) in [
                (column.max_rep_level(), rep_level_encoding),
                (column.max_def_level(), def_level_encoding),
            ] {
                if max > 0 {
                    at += levels::v1_levels_len(&buf[at..], *enc, levels::bit_width(max), n)
                        .ok_or_else(|| corrupt(column, "data page levels overrun the page"))?;
                }
            }
            check_delta_bytes(&buf[at..], *encoding, *num_values, column)
        }
        Page::DataPageV2 {
            buf,
            num_values,
            encoding,
            def_levels_byte_len,
            rep_levels_byte_len,
            ..
        } => {
            if !is_delta_bytes(*encoding) {
                return Ok(());
            }
            let at = *def_levels_byte_len as usize + *rep_levels_byte_len as usize;
            let values = buf
                .get(at..)
                .ok_or_else(|| corrupt(column, "data page levels overrun the page"))?;
            check_delta_bytes(values, *encoding, *num_values, column)
        }
    }
}

fn is_delta_bytes(e: Encoding) -> bool {
    matches!(
        e,
        Encoding::DELTA_LENGTH_BYTE_ARRAY | Encoding::DELTA_BYTE_ARRAY
    )
}

/// A DELTA_LENGTH_BYTE_ARRAY page opens with its lengths, a DELTA_BYTE_ARRAY page with its
/// prefix lengths and then its suffix lengths, each a DELTA_BINARY_PACKED stream whose
/// header states its count: none may exceed the page's values.
fn check_delta_bytes(
    values: &[u8],
    encoding: Encoding,
    num_values: u32,
    column: &ColumnDescPtr,
) -> ParquetResult<()> {
    let limit = u64::from(num_values).min(MAX_DELTA_VALUES);
    let over = |count: u64| {
        corrupt(
            column,
            format_args!(
                "{encoding} page claims {count} lengths for {num_values} values (at most {limit})"
            ),
        )
    };
    let bad = |what: &str| corrupt(column, format_args!("{encoding} page: {what}"));
    let first = DeltaHeader::parse(values).ok_or_else(|| bad("truncated delta header"))?;
    if first.count > limit {
        return Err(over(first.count));
    }
    if encoding == Encoding::DELTA_BYTE_ARRAY {
        let end = first
            .stream_end(values)
            .ok_or_else(|| bad("prefix lengths overrun the page"))?;
        let suffixes =
            DeltaHeader::parse(&values[end..]).ok_or_else(|| bad("truncated suffix header"))?;
        if suffixes.count > limit {
            return Err(over(suffixes.count));
        }
    }
    Ok(())
}

/// The header of a DELTA_BINARY_PACKED stream.
#[derive(Debug, PartialEq)]
struct DeltaHeader {
    block_size: u64,
    miniblocks: u64,
    count: u64,
    /// Bytes the header takes.
    len: usize,
}

impl DeltaHeader {
    fn parse(buf: &[u8]) -> Option<DeltaHeader> {
        let mut at = 0;
        let block_size = uleb(buf, &mut at)?;
        let miniblocks = uleb(buf, &mut at)?;
        let count = uleb(buf, &mut at)?;
        uleb(buf, &mut at)?; // the first value, zigzag-encoded
        Some(DeltaHeader {
            block_size,
            miniblocks,
            count,
            len: at,
        })
    }

    /// Where the stream ends in `buf` (which it starts), walking block headers without
    /// unpacking values. A block is its minimum delta, one bit width per miniblock, then
    /// the miniblocks; the last block writes only the miniblocks its deltas need. Each
    /// block takes at least two bytes, so the walk is bounded by `buf`'s length.
    fn stream_end(&self, buf: &[u8]) -> Option<usize> {
        if self.miniblocks == 0 || !self.block_size.is_multiple_of(self.miniblocks) {
            return None;
        }
        let per_miniblock = self.block_size / self.miniblocks;
        if per_miniblock == 0 || !per_miniblock.is_multiple_of(32) {
            return None;
        }
        let miniblocks = usize::try_from(self.miniblocks).ok()?;
        let mut at = self.len;
        let mut deltas = self.count.saturating_sub(1);
        while deltas > 0 {
            uleb(buf, &mut at)?; // minimum delta
            let widths = buf.get(at..at.checked_add(miniblocks)?)?;
            at += miniblocks;
            for &w in widths {
                if deltas == 0 {
                    break;
                }
                if w > 64 {
                    return None;
                }
                let bytes = per_miniblock.checked_mul(u64::from(w))? / 8;
                at = at.checked_add(usize::try_from(bytes).ok()?)?;
                deltas = deltas.saturating_sub(per_miniblock);
            }
            if at > buf.len() {
                return None;
            }
        }
        Some(at)
    }
}

/// An unsigned LEB128 varint at `*at`, advancing past it.
fn uleb(buf: &[u8], at: &mut usize) -> Option<u64> {
    let (v, rest) = levels::varint(buf.get(*at..)?)?;
    *at = buf.len() - rest.len();
    Some(v)
}

#[cfg(test)]
mod tests;
