//! The columns only hits report (span ID, name and duration; trace ID, root names and
//! service stats), read for the hit rows of a row group alone, when they are few
//! ([`reads_hits_apart`]).
//!
//! Decoding them through Arrow for every row of a row group with hits was a third of the
//! CPU of a selective search (`{ resource.service.name = "frontend" } >> { status =
//! error }`: one trace in ten matches): every span's value, list levels rebuilt, and a
//! buffer copied as it grew page by page. A search reports at most `spss` spans of a few
//! traces per row group, so each leaf is read here with parquet's column reader, skipping
//! the records between hits (whole pages by the offset index, the rest by their levels)
//! and reading the hit rows' values into one buffer.

use std::sync::Arc;

use bytes::Bytes;
use parquet::column::reader::{get_column_reader, get_typed_column_reader, ColumnReaderImpl};
use parquet::data_type::{
    ByteArray, ByteArrayType, DataType, FixedLenByteArray, FixedLenByteArrayType, Int32Type,
    Int64Type,
};
use parquet::errors::ParquetError;
use parquet::file::metadata::ParquetMetaData;

use super::prune::RowGroupRead;
use super::SearchColumns;
use crate::block::pages::column_pages;
use crate::block::reader::{guarded, SparseChunk};
use crate::block::BlockError;

/// Whether the hit values of `hits` rows of a row group of `rows` are read apart
/// ([`read_hit_columns`]) rather than decoded for every row ([`super::Phase::Report`]).
/// Apart, each value costs more (a call per row, a reference-counted slice per string),
/// and every page with a hit is still decompressed:
/// on 1M synthetic spans the structural search above (one row in eleven a hit) took 13%
/// less CPU apart, but searches hitting every row took up to 25% more.
pub fn reads_hits_apart(hits: usize, rows: usize) -> bool {
    hits.saturating_mul(5) <= rows
}

/// A leaf only hits report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::block) enum HitLeaf {
    /// One value per span.
    SpanId,
    Name,
    Duration,
    /// One value per trace.
    TraceId,
    RootService,
    RootName,
    /// One value per service of the trace's `service_stats`.
    StatsService,
    StatsSpans,
    StatsErrors,
}

/// How many values a leaf holds per row, which the leaves of a group must agree on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Group {
    Spans,
    Trace,
    Stats,
}

impl HitLeaf {
    fn group(self) -> Group {
        match self {
            Self::SpanId | Self::Name | Self::Duration => Group::Spans,
            Self::TraceId | Self::RootService | Self::RootName => Group::Trace,
            Self::StatsService | Self::StatsSpans | Self::StatsErrors => Group::Stats,
        }
    }
}

/// The reported values of some rows of a row group: for the `k`-th row asked for, per
/// leaf one value per span (in the rows' span order: resource, scope, span), one per
/// trace, or one per service.
#[derive(Debug, Default)]
pub struct HitColumns {
    /// The rows, ascending.
    rows: Vec<usize>,
    /// `spans[k]..spans[k + 1]` are the span values of `rows[k]`.
    spans: Vec<usize>,
    /// `stats[k]..stats[k + 1]` are the service stats of `rows[k]`.
    stats: Vec<usize>,
    span_id: Option<Vec<ByteArray>>,
    name: Option<Vec<ByteArray>>,
    duration: Option<Vec<i64>>,
    trace_id: Option<Vec<FixedLenByteArray>>,
    root_service: Option<Vec<ByteArray>>,
    root_name: Option<Vec<ByteArray>>,
    stats_service: Option<Vec<ByteArray>>,
    stats_spans: Option<Vec<i32>>,
    stats_errors: Option<Vec<i32>>,
}

/// The values of one row in [`HitColumns`]. Each accessor is `None` when the leaf was not
/// read apart: the filter columns hold it (or every row's hit columns were decoded).
#[derive(Clone, Copy)]
pub struct HitRow<'a> {
    cols: &'a HitColumns,
    k: usize,
    first: usize,
    len: usize,
}

impl HitColumns {
    /// Values of `row`, when it was read (never when nothing was read apart).
    pub fn row(&self, row: usize) -> Option<HitRow<'_>> {
        let k = self.rows.binary_search(&row).ok()?;
        let (first, len) = match self.spans.get(k..k + 2) {
            Some(s) => (s[0], s[1] - s[0]),
            None => (0, 0),
        };
        Some(HitRow {
            cols: self,
            k,
            first,
            len,
        })
    }
}

impl<'a> HitRow<'a> {
    /// Spans in the row, when its span values were read apart.
    pub fn spans(&self) -> Option<usize> {
        (!self.cols.spans.is_empty()).then_some(self.len)
    }

    fn at(&self, i: usize) -> usize {
        assert!(i < self.len, "span {i} of a row with {} spans", self.len);
        self.first + i
    }

    pub fn span_id(&self, i: usize) -> Option<&'a [u8]> {
        Some(self.cols.span_id.as_ref()?[self.at(i)].data())
    }

    /// Checked UTF-8 when read.
    pub fn name(&self, i: usize) -> Option<&'a str> {
        utf8(&self.cols.name.as_ref()?[self.at(i)])
    }

    /// The stored duration.
    pub fn duration_nano(&self, i: usize) -> Option<u64> {
        Some(self.cols.duration.as_ref()?[self.at(i)] as u64)
    }

    pub fn trace_id(&self) -> Option<[u8; 16]> {
        self.cols.trace_id.as_ref()?[self.k].data().try_into().ok()
    }

    /// The root span's service and name as stored at the trace level, each `None` when
    /// empty (as [`super::ColumnarBlock::root_names`]).
    pub fn root_names(&self) -> Option<(Option<&'a str>, Option<&'a str>)> {
        let some = |v: &'a ByteArray| utf8(v).filter(|s| !s.is_empty());
        Some((
            some(&self.cols.root_service.as_ref()?[self.k]),
            some(&self.cols.root_name.as_ref()?[self.k]),
        ))
    }

    /// `(service, spans, errors)` of each service of the trace.
    pub fn service_stats(&self) -> Option<impl Iterator<Item = (&'a str, u32, u32)> + 'a> {
        let c = self.cols;
        let (service, spans, errors) = (
            c.stats_service.as_ref()?,
            c.stats_spans.as_ref()?,
            c.stats_errors.as_ref()?,
        );
        let range = c.stats[self.k]..c.stats[self.k + 1];
        Some(range.map(move |j| {
            (
                utf8(&service[j]).unwrap_or_default(),
                spans[j] as u32,
                errors[j] as u32,
            )
        }))
    }
}

/// A string value already checked as UTF-8 when read.
fn utf8(v: &ByteArray) -> Option<&str> {
    std::str::from_utf8(v.data()).ok()
}

/// Reads the leaves `columns` reports but does not filter by, for `rows` (ascending,
/// distinct) of the row group `read`; `fetched` holds `read.late_ranges`.
pub fn read_hit_columns(
    md: &Arc<ParquetMetaData>,
    columns: &SearchColumns,
    read: &RowGroupRead,
    fetched: Vec<Bytes>,
    file_len: u64,
    rows: &[usize],
) -> Result<HitColumns, BlockError> {
    if rows.windows(2).any(|w| w[0] >= w[1]) || rows.last().is_some_and(|&r| r >= read.rows) {
        return Err(BlockError::Corrupt("hit rows out of order or range".into()));
    }
    let mut out = HitColumns {
        rows: rows.to_vec(),
        ..HitColumns::default()
    };
    if columns.late.is_empty() || rows.is_empty() {
        return Ok(out);
    }
    let chunk = Arc::new(SparseChunk::from_fetched(
        read.ranges(super::Phase::Report),
        fetched,
        file_len,
    )?);
    guarded(|| {
        let rgm = md.row_group(read.rg);
        let mut trace: Option<Vec<usize>> = None;
        for &(leaf, kind) in &columns.late {
            let col = rgm.column(leaf);
            let locations = md
                .page_index()
                .and_then(|pi| pi.page_locations(read.rg, leaf).cloned());
            let pages = column_pages(chunk.clone(), col, read.rows, locations, true)?;
            let reader = get_column_reader(col.column_descr_ptr(), Box::new(pages));
            let mut counts = Vec::with_capacity(rows.len() + 1);
            match kind {
                HitLeaf::TraceId => {
                    let mut values = Vec::with_capacity(rows.len());
                    read_rows::<FixedLenByteArrayType>(
                        typed(reader)?,
                        rows,
                        &mut values,
                        &mut counts,
                    )?;
                    if values.iter().any(|v| v.data().len() != 16) {
                        return Err(BlockError::Corrupt("trace_id is not 16 bytes".into()));
                    }
                    out.trace_id = Some(values);
                }
                HitLeaf::Duration => {
                    let mut values = Vec::new();
                    read_rows::<Int64Type>(typed(reader)?, rows, &mut values, &mut counts)?;
                    out.duration = Some(values);
                }
                HitLeaf::StatsSpans | HitLeaf::StatsErrors => {
                    let mut values = Vec::new();
                    read_rows::<Int32Type>(typed(reader)?, rows, &mut values, &mut counts)?;
                    match kind {
                        HitLeaf::StatsSpans => out.stats_spans = Some(values),
                        _ => out.stats_errors = Some(values),
                    }
                }
                _ => {
                    let mut values = Vec::new();
                    read_rows::<ByteArrayType>(typed(reader)?, rows, &mut values, &mut counts)?;
                    if kind != HitLeaf::SpanId && values.iter().any(|v| utf8(v).is_none()) {
                        return Err(BlockError::Corrupt(format!("{kind:?} is not UTF-8")));
                    }
                    let slot = match kind {
                        HitLeaf::SpanId => &mut out.span_id,
                        HitLeaf::Name => &mut out.name,
                        HitLeaf::RootService => &mut out.root_service,
                        HitLeaf::RootName => &mut out.root_name,
                        _ => &mut out.stats_service,
                    };
                    *slot = Some(values);
                }
            }
            // Every leaf read is required in its group: the leaves of a group hold one
            // value per span, per trace, or per service alike.
            let starts = match kind.group() {
                Group::Spans => &mut out.spans,
                Group::Stats => &mut out.stats,
                Group::Trace => trace.get_or_insert_with(Vec::new),
            };
            if starts.is_empty() {
                *starts = counts;
            } else if *starts != counts {
                return Err(BlockError::Corrupt(format!(
                    "{kind:?} disagrees with its group on a row's values"
                )));
            }
        }
        if trace.is_some_and(|t| t.iter().enumerate().any(|(k, &at)| at != k)) {
            return Err(BlockError::Corrupt(
                "a trace-level leaf is not one value per row".into(),
            ));
        }
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
