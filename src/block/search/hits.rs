//! The span columns only hits report (span ID, name, duration), read for the hit rows of a
//! row group alone, when they are few ([`reads_hits_apart`]).
//!
//! Decoding them through Arrow for every row of a row group with hits was a quarter of
//! the CPU of a selective search (`{ resource.service.name = "frontend" } >> { status =
//! error }`: one trace in ten matches): every span's value, three list levels rebuilt,
//! and a buffer copied as it grew page by page. A search reports at most `spss` spans of
//! a few traces per row group, so each leaf is read here with parquet's column reader,
//! skipping the records between hits (whole pages by the offset index, the rest by their
//! levels) and reading the hit rows' values into one buffer.

use std::sync::Arc;

use bytes::Bytes;
use parquet::column::reader::{get_column_reader, get_typed_column_reader, ColumnReaderImpl};
use parquet::data_type::{ByteArray, ByteArrayType, DataType, Int64Type};
use parquet::errors::ParquetError;
use parquet::file::metadata::ParquetMetaData;

use super::prune::RowGroupRead;
use super::SearchColumns;
use crate::block::pages::column_pages;
use crate::block::reader::{guarded, SparseChunk};
use crate::block::BlockError;

/// Whether the span values of `hits` rows of a row group of `rows` are read apart
/// ([`read_hit_spans`]) rather than decoded with the other hit columns for every row
/// ([`super::Phase::Report`]). Apart, each value costs more (a call per row, a
/// reference-counted slice per string), and every page with a hit is still decompressed:
/// on 1M synthetic spans the structural search above (one row in eleven a hit) took 13%
/// less CPU apart, but searches hitting every row took up to 25% more.
pub fn reads_hits_apart(hits: usize, rows: usize) -> bool {
    hits.saturating_mul(5) <= rows
}

/// A span leaf reported for hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::block) enum SpanLeaf {
    SpanId,
    Name,
    Duration,
}

/// The reported span values of some rows of a row group: for the `k`-th row asked for,
/// one value per span, in the rows' span order (resource, scope, span).
#[derive(Debug, Default)]
pub struct HitSpans {
    /// The rows, ascending.
    rows: Vec<usize>,
    /// `starts[k]..starts[k + 1]` are the spans of `rows[k]`.
    starts: Vec<usize>,
    span_id: Option<Vec<ByteArray>>,
    name: Option<Vec<ByteArray>>,
    duration: Option<Vec<i64>>,
}

/// The spans of one row in [`HitSpans`].
#[derive(Clone, Copy)]
pub struct HitRow<'a> {
    spans: &'a HitSpans,
    first: usize,
    len: usize,
}

impl HitSpans {
    /// Spans of `row`, when it was read (never when nothing was read apart).
    pub fn row(&self, row: usize) -> Option<HitRow<'_>> {
        let k = self.rows.binary_search(&row).ok()?;
        Some(HitRow {
            spans: self,
            first: self.starts[k],
            len: self.starts[k + 1] - self.starts[k],
        })
    }
}

impl<'a> HitRow<'a> {
    /// Spans in the row.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn at(&self, i: usize) -> usize {
        assert!(i < self.len, "span {i} of a row with {} spans", self.len);
        self.first + i
    }

    /// `None` when the filter columns hold the leaf instead.
    pub fn span_id(&self, i: usize) -> Option<&'a [u8]> {
        Some(self.spans.span_id.as_ref()?[self.at(i)].data())
    }

    /// `None` when the filter columns hold the leaf instead (checked UTF-8 when read).
    pub fn name(&self, i: usize) -> Option<&'a str> {
        let bytes = self.spans.name.as_ref()?[self.at(i)].data();
        std::str::from_utf8(bytes).ok()
    }

    /// The stored duration: `None` when the filter columns hold the leaf instead.
    pub fn duration_nano(&self, i: usize) -> Option<u64> {
        Some(self.spans.duration.as_ref()?[self.at(i)] as u64)
    }
}

/// Reads the span leaves `columns` reports but does not filter by, for `rows` (ascending,
/// distinct) of the row group `read`; `fetched` holds `read.late_ranges`.
pub fn read_hit_spans(
    md: &Arc<ParquetMetaData>,
    columns: &SearchColumns,
    read: &RowGroupRead,
    fetched: Vec<Bytes>,
    file_len: u64,
    rows: &[usize],
) -> Result<HitSpans, BlockError> {
    if rows.windows(2).any(|w| w[0] >= w[1]) || rows.last().is_some_and(|&r| r >= read.rows) {
        return Err(BlockError::Corrupt("hit rows out of order or range".into()));
    }
    if columns.late_spans.is_empty() || rows.is_empty() {
        // Nothing read apart: the filter columns hold every reported span leaf.
        return Ok(HitSpans::default());
    }
    let mut out = HitSpans {
        rows: rows.to_vec(),
        ..HitSpans::default()
    };
    let chunk = Arc::new(SparseChunk::from_fetched(
        read.ranges(super::Phase::Report),
        fetched,
        file_len,
    )?);
    guarded(|| {
        let rgm = md.row_group(read.rg);
        let mut starts: Option<Vec<usize>> = None;
        for &(leaf, kind) in &columns.late_spans {
            let col = rgm.column(leaf);
            let locations = md
                .page_index()
                .and_then(|pi| pi.page_locations(read.rg, leaf).cloned());
            let pages = column_pages(chunk.clone(), col, read.rows, locations, true)?;
            let reader = get_column_reader(col.column_descr_ptr(), Box::new(pages));
            let mut counts = Vec::with_capacity(rows.len() + 1);
            match kind {
                SpanLeaf::SpanId | SpanLeaf::Name => {
                    let mut values = Vec::new();
                    read_rows::<ByteArrayType>(typed(reader)?, rows, &mut values, &mut counts)?;
                    if kind == SpanLeaf::Name
                        && values
                            .iter()
                            .any(|v| std::str::from_utf8(v.data()).is_err())
                    {
                        return Err(BlockError::Corrupt("span name is not UTF-8".into()));
                    }
                    match kind {
                        SpanLeaf::SpanId => out.span_id = Some(values),
                        _ => out.name = Some(values),
                    }
                }
                SpanLeaf::Duration => {
                    let mut values = Vec::new();
                    read_rows::<Int64Type>(typed(reader)?, rows, &mut values, &mut counts)?;
                    out.duration = Some(values);
                }
            }
            // Every reported leaf is required in every span: all hold one value per span.
            match &starts {
                None => starts = Some(counts),
                Some(s) if *s == counts => {}
                Some(_) => {
                    return Err(BlockError::Corrupt(
                        "span columns disagree on a row's spans".into(),
                    ))
                }
            }
        }
        out.starts = starts.unwrap_or_default();
        Ok(out)
    })
}

fn typed<T: DataType>(
    reader: parquet::column::reader::ColumnReader,
) -> Result<ColumnReaderImpl<T>, BlockError> {
    // `get_typed_column_reader` panics on a type mismatch; the schema fixes the types, but
    // a block's footer is input.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        get_typed_column_reader::<T>(reader)
    }))
    .map_err(|_| BlockError::Corrupt("span column has the wrong physical type".into()))
}

/// Reads `rows` (ascending) of one column into `values`; `starts` gets the offset of each
/// row's first value, then the end.
fn read_rows<T: DataType>(
    mut reader: ColumnReaderImpl<T>,
    rows: &[usize],
    values: &mut Vec<T::T>,
    starts: &mut Vec<usize>,
) -> Result<(), ParquetError> {
    let (mut def, mut rep) = (Vec::new(), Vec::new());
    let mut at = 0;
    for &row in rows {
        let skip = row - at;
        if skip > 0 && reader.skip_records(skip)? != skip {
            return Err(ParquetError::General("row group ends before a hit".into()));
        }
        starts.push(values.len());
        let (records, _, _) = reader.read_records(1, Some(&mut def), Some(&mut rep), values)?;
        if records != 1 {
            return Err(ParquetError::General("row group ends before a hit".into()));
        }
        def.clear();
        rep.clear();
        at = row + 1;
    }
    starts.push(values.len());
    Ok(())
}
