//! Row-group pruning from footer statistics and dictionaries (`SearchColumns::plan`), and
//! decoding one row group's projected column chunks.

use std::ops::Range;
use std::sync::Arc;

use arrow_array::{Array, ListArray, StructArray};
use bytes::Bytes;
use parquet::file::metadata::ParquetMetaData;
use parquet::file::statistics::Statistics;

use super::columns::*;
use super::projection::*;
use crate::block::pages::{column_pages, CheckedRead};
use crate::block::reader::{
    absolute_span_starts, chunk_range, coalesce, guarded, int_stats, search_read_schema,
    span_starts_relative, SparseChunk,
};
use crate::block::schema::paths;
use crate::block::BlockError;
use crate::traceql::{FieldExpr, Intrinsic, Static, Status};

/// Whether some span of the row group may meet `pre`, judging by column chunk statistics
/// of span durations and status codes. True when unsure.
pub(super) fn pre_possible(pre: &Pre, rgm: &parquet::file::metadata::RowGroupMetaData) -> bool {
    match pre {
        Pre::True | Pre::Any(None) => true,
        Pre::All(ps) => ps.iter().all(|p| pre_possible(p, rgm)),
        Pre::AnyOf(ps) => ps.iter().any(|p| pre_possible(p, rgm)),
        Pre::Any(Some(e)) => expr_possible(e, rgm),
    }
}

/// A comparison of an intrinsic with a constant, intrinsic on the left: `500ms < duration`
/// is `duration > 500ms`. `None` for anything else.
pub(super) fn intrinsic_compare<'a>(
    op: crate::traceql::CompareOp,
    lhs: &'a FieldExpr,
    rhs: &'a FieldExpr,
) -> Option<(crate::traceql::CompareOp, Intrinsic, &'a Static)> {
    use crate::traceql::CompareOp as C;
    match (lhs, rhs) {
        (FieldExpr::Intrinsic(i), FieldExpr::Static(v)) => Some((op, *i, v)),
        (FieldExpr::Static(v), FieldExpr::Intrinsic(i)) => {
            let flipped = match op {
                C::Lt => C::Gt,
                C::Lte => C::Gte,
                C::Gt => C::Lt,
                C::Gte => C::Lte,
                other => other,
            };
            Some((flipped, *i, v))
        }
        _ => None,
    }
}

/// Whether some span of a trace none of whose spans lasts longer than `max_duration` (ns)
/// may meet `pre`: a live trace knows its time envelope before it is decoded, so
/// `{ duration > 500ms }` skips the traces shorter than that undecoded. True when unsure.
pub(super) fn pre_possible_within(pre: &Pre, max_duration: u64) -> bool {
    match pre {
        Pre::True | Pre::Any(None) => true,
        Pre::All(ps) => ps.iter().all(|p| pre_possible_within(p, max_duration)),
        Pre::AnyOf(ps) => ps.iter().any(|p| pre_possible_within(p, max_duration)),
        Pre::Any(Some(e)) => duration_possible(e, max_duration),
    }
}

/// Can a span lasting at most `max` ns meet `duration <op> x`? Only lower bounds prune.
fn duration_within_possible(op: crate::traceql::CompareOp, x: i64, max: u64) -> bool {
    use crate::traceql::CompareOp as C;
    let Ok(x) = u64::try_from(x) else {
        return true;
    };
    match op {
        C::Gt => max > x,
        C::Gte | C::Eq => max >= x,
        _ => true,
    }
}

fn duration_possible(e: &FieldExpr, max: u64) -> bool {
    use crate::traceql::LogicOp;
    match e {
        FieldExpr::Logic { op, lhs, rhs } => match op {
            LogicOp::And => duration_possible(lhs, max) && duration_possible(rhs, max),
            LogicOp::Or => duration_possible(lhs, max) || duration_possible(rhs, max),
        },
        FieldExpr::Compare { op, lhs, rhs } => match intrinsic_compare(*op, lhs, rhs) {
            Some((op, Intrinsic::Duration, Static::Duration(x))) => {
                duration_within_possible(op, *x, max)
            }
            _ => true,
        },
        _ => true,
    }
}

/// See [`pre_possible`]: can a span of the row group satisfy `e`?
pub(super) fn expr_possible(
    e: &FieldExpr,
    rgm: &parquet::file::metadata::RowGroupMetaData,
) -> bool {
    use crate::traceql::{CompareOp as C, LogicOp};
    let stats = |leaf: &str| {
        let path = format!("{}{leaf}", paths::SPAN);
        rgm.columns()
            .iter()
            .find(|c| c.column_path().string() == path)
            .and_then(|c| c.statistics())
    };
    match e {
        FieldExpr::Logic { op, lhs, rhs } => match op {
            LogicOp::And => expr_possible(lhs, rgm) && expr_possible(rhs, rgm),
            LogicOp::Or => expr_possible(lhs, rgm) || expr_possible(rhs, rgm),
        },
        FieldExpr::Compare { op, lhs, rhs } => {
            let Some((op, field, value)) = intrinsic_compare(*op, lhs, rhs) else {
                return true;
            };
            match (field, value) {
                // A span's duration is at most its stored duration_nano (the end is
                // computed from it, saturating), so only lower bounds prune.
                (Intrinsic::Duration, Static::Duration(x)) => {
                    let Some(Statistics::Int64(s)) = stats("duration_nano") else {
                        return true;
                    };
                    let Some(&max) = s.max_opt() else { return true };
                    // Unsigned values stored in int64.
                    duration_within_possible(op, *x, max as u64)
                }
                // Unset is also a missing status: only ok and error prune.
                (Intrinsic::Status, Static::Status(st)) if op == C::Eq => {
                    let code = match st {
                        Status::Ok => 1,
                        Status::Error => 2,
                        Status::Unset => return true,
                    };
                    match stats("status.code") {
                        Some(Statistics::Int32(s)) => match (s.min_opt(), s.max_opt()) {
                            (Some(&min), Some(&max)) => min <= code && code <= max,
                            // No non-null code: every span's status is unset.
                            (None, None) => s.null_count_opt().is_none(),
                            _ => true,
                        },
                        _ => true,
                    }
                }
                _ => true,
            }
        }
        _ => true,
    }
}

/// One row group to read: fetch `ranges` and call [`decode_row_group`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowGroupRead {
    pub rg: usize,
    pub rows: usize,
    /// The latest trace start in the row group (footer statistics); `u64::MAX` when
    /// unknown. Newest-first search reads row groups in this order and skips those whose
    /// traces all start before the ones it already holds: the answer is ordered by start,
    /// so a trace's end says nothing of its place (a long trace in an older slice ends
    /// after the newer slice starts).
    pub max_start: u64,
    /// Sorted, disjoint byte ranges of data.parquet: the column chunks filtering reads.
    pub ranges: Vec<Range<u64>>,
    /// The column chunks only hits need ([`Phase::Report`]).
    pub late_ranges: Vec<Range<u64>>,
}

impl RowGroupRead {
    pub fn total_bytes(&self) -> u64 {
        self.ranges.iter().map(|r| r.end - r.start).sum()
    }

    pub fn late_bytes(&self) -> u64 {
        self.late_ranges.iter().map(|r| r.end - r.start).sum()
    }

    /// The ranges of a phase.
    pub fn ranges(&self, phase: Phase) -> &[Range<u64>] {
        match phase {
            Phase::Filter => &self.ranges,
            Phase::Report => &self.late_ranges,
        }
    }
}

impl SearchColumns {
    /// The row groups of a block that may hold matching traces and the byte ranges of
    /// their projected column chunks. `overlaps(min start, max end)` says whether traces
    /// within those bounds can fall in the requested time range (chunk statistics of the
    /// trace start and end columns); row groups whose dedicated-column statistics exclude a
    /// required value are skipped too. No I/O.
    pub fn plan(
        &self,
        md: &ParquetMetaData,
        overlaps: impl Fn(u64, u64) -> bool,
    ) -> Result<Vec<RowGroupRead>, BlockError> {
        let mut out = Vec::new();
        for (rg, rgm) in md.row_groups().iter().enumerate() {
            let rows = usize::try_from(rgm.num_rows()).unwrap_or(0);
            if rows == 0 {
                continue;
            }
            let col = |path: &str| {
                rgm.columns()
                    .iter()
                    .find(|c| c.column_path().string() == path)
            };
            let (min_start, max_start) = int_stats(rgm, paths::START_TIME);
            let (_, max_end) = int_stats(rgm, paths::END_TIME);
            if let (Some(min_start), Some(max_end)) = (min_start, max_end) {
                if !overlaps(min_start, max_end) {
                    continue;
                }
            }
            let excluded = self.required.iter().any(|(path, value)| {
                let Some(Statistics::ByteArray(s)) = col(path).and_then(|c| c.statistics()) else {
                    return false;
                };
                if s.null_count_opt() == Some(rgm.num_rows() as u64)
                    && s.min_opt().is_none()
                    && s.max_opt().is_none()
                {
                    // Only nulls: no resource has the value.
                    return true;
                }
                match (s.min_opt(), s.max_opt()) {
                    (Some(min), Some(max)) => {
                        let v = value.as_bytes();
                        v < min.data() || v > max.data()
                    }
                    _ => false,
                }
            });
            if excluded || !pre_possible(&self.precheck, rgm) {
                continue;
            }
            let chunks = |leaves: &[usize]| -> Result<Vec<Range<u64>>, BlockError> {
                let ranges = leaves
                    .iter()
                    .map(|&ci| chunk_range(rgm.column(ci), rg))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(coalesce(ranges, 0))
            };
            out.push(RowGroupRead {
                rg,
                rows,
                max_start: max_start.unwrap_or(u64::MAX),
                ranges: chunks(&self.leaves)?,
                late_ranges: chunks(&self.late_leaves())?,
            });
        }
        Ok(out)
    }
}

/// Which columns of a row group to decode: what filtering needs, or what only hits need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Filter,
    /// Every column only hits need, for every row (unless read for the hit rows alone,
    /// [`super::read_hit_columns`]).
    Report,
}

/// Decodes the columns of one phase of one row group; `fetched[i]` holds
/// `read.ranges(phase)[i]`. A [`Phase::Report`] decode is combined with the filter decode
/// by [`merge_columns`].
pub fn decode_row_group(
    md: Arc<ParquetMetaData>,
    columns: &SearchColumns,
    read: &RowGroupRead,
    phase: Phase,
    fetched: Vec<Bytes>,
    file_len: u64,
) -> Result<StructArray, BlockError> {
    let ranges = read.ranges(phase);
    let leaves = match phase {
        Phase::Filter => columns.leaves.clone(),
        Phase::Report => columns.late_leaves(),
    };
    if leaves.is_empty() {
        // Every hit column is a filter column.
        return Ok(StructArray::new_empty_fields(read.rows, None));
    }
    let chunk = SparseChunk::from_fetched(ranges, fetched, file_len)?;
    guarded(|| {
        // Generic attribute lists that cannot hold a name the query looks up are not
        // decoded: for dedicated attributes they usually hold none.
        let mut skip: Vec<usize> = Vec::new();
        if phase == Phase::Filter {
            for g in &columns.generic {
                if dictionary_lacks(&md, read.rg, g.key, &chunk, &g.names)? {
                    skip.extend(&g.leaves);
                }
            }
        }
        let reader = CheckedRead::new(chunk, md.clone())
            .with_schema(search_read_schema(&md)?)
            .with_leaves(leaves.iter().copied().filter(|l| !skip.contains(l)))
            .with_row_groups(vec![read.rg])
            .with_batch_size(read.rows.max(1))
            .build()?;
        let mut batches = Vec::new();
        for b in reader {
            batches.push(b?);
        }
        let batch = match batches.len() {
            0 => return Err(BlockError::Corrupt("row group decoded to nothing".into())),
            1 => batches.pop().expect("one batch"),
            _ => arrow::compute::concat_batches(&batches[0].schema(), &batches)?,
        };
        let root = StructArray::from(batch);
        if phase == Phase::Filter && span_starts_relative(&md) {
            return absolute_span_starts(&root);
        }
        Ok(root)
    })
}

/// Whether a string column chunk provably holds none of `names`: every data page is
/// dictionary-encoded and no dictionary entry equals a name. False when unsure.
pub(super) fn dictionary_lacks(
    md: &ParquetMetaData,
    rg: usize,
    leaf: usize,
    chunk: &SparseChunk,
    names: &[String],
) -> Result<bool, BlockError> {
    use parquet::basic::{Encoding, PageType};
    use parquet::column::page::{Page, PageReader};
    let rgm = md.row_group(rg);
    let col = rgm.column(leaf);
    if col.dictionary_page_offset().is_none() {
        return Ok(false);
    }
    let is_dict = |e: Encoding| matches!(e, Encoding::PLAIN_DICTIONARY | Encoding::RLE_DICTIONARY);
    let all_dict = match (col.page_encoding_stats_mask(), col.page_encoding_stats()) {
        (Some(mask), _) => mask.encodings().all(is_dict),
        (None, Some(stats)) => stats
            .iter()
            .filter(|s| s.page_type != PageType::DICTIONARY_PAGE)
            .all(|s| is_dict(s.encoding)),
        (None, None) => false,
    };
    if !all_dict {
        return Ok(false);
    }
    let rows = usize::try_from(rgm.num_rows()).unwrap_or(0);
    let mut pages = column_pages(Arc::new(chunk.clone()), col, rows, None, false)?;
    let Some(Page::DictionaryPage {
        buf,
        num_values,
        encoding: Encoding::PLAIN | Encoding::PLAIN_DICTIONARY,
        ..
    }) = pages.get_next_page()?
    else {
        return Ok(false);
    };
    // PLAIN byte arrays: a little-endian u32 length, then the bytes.
    let mut rest: &[u8] = &buf;
    for _ in 0..num_values {
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            return Ok(false);
        };
        let len = u32::from_le_bytes(*len) as usize;
        if tail.len() < len {
            return Ok(false);
        }
        let (value, tail) = tail.split_at(len);
        if names.iter().any(|n| n.as_bytes() == value) {
            return Ok(false);
        }
        rest = tail;
    }
    Ok(true)
}

/// Combines two decodes of the same rows of a row group (different columns) into one
/// array: struct fields are united, lists of structs keep the first side's offsets (both
/// sides have the same, being the same rows) with their elements merged.
pub fn merge_columns(a: &StructArray, b: &StructArray) -> Result<StructArray, BlockError> {
    use arrow_array::ArrayRef;
    use arrow_schema::{DataType, Field, Fields};
    pub(super) fn merge_array(x: &ArrayRef, y: &ArrayRef) -> Result<ArrayRef, BlockError> {
        match (x.data_type(), y.data_type()) {
            (DataType::Struct(_), DataType::Struct(_)) => {
                let (x, y) = (
                    x.as_any().downcast_ref::<StructArray>(),
                    y.as_any().downcast_ref::<StructArray>(),
                );
                match (x, y) {
                    (Some(x), Some(y)) => Ok(Arc::new(merge_columns(x, y)?)),
                    _ => Err(corrupt("struct column has the wrong type")),
                }
            }
            (DataType::List(_), DataType::List(_)) => {
                let (Some(xl), Some(yl)) = (
                    x.as_any().downcast_ref::<ListArray>(),
                    y.as_any().downcast_ref::<ListArray>(),
                ) else {
                    return Err(corrupt("list column has the wrong type"));
                };
                if xl.value_offsets() != yl.value_offsets() {
                    return Err(corrupt("decodes of one row group disagree"));
                }
                let values = merge_array(xl.values(), yl.values())?;
                let field = Arc::new(Field::new("element", values.data_type().clone(), false));
                Ok(Arc::new(ListArray::try_new(
                    field,
                    xl.offsets().clone(),
                    values,
                    xl.nulls().cloned(),
                )?))
            }
            _ => Ok(x.clone()),
        }
    }
    if a.len() != b.len() {
        return Err(corrupt("decodes of one row group disagree on rows"));
    }
    let mut fields: Vec<Arc<Field>> = Vec::new();
    let mut arrays: Vec<ArrayRef> = Vec::new();
    for (f, x) in a.fields().iter().zip(a.columns()) {
        let merged = match b.column_by_name(f.name()) {
            Some(y) => merge_array(x, y)?,
            None => x.clone(),
        };
        fields.push(Arc::new(Field::new(
            f.name(),
            merged.data_type().clone(),
            f.is_nullable(),
        )));
        arrays.push(merged);
    }
    for (f, y) in b.fields().iter().zip(b.columns()) {
        if a.column_by_name(f.name()).is_none() {
            fields.push(f.clone());
            arrays.push(y.clone());
        }
    }
    let nulls = a.nulls().or(b.nulls()).cloned();
    Ok(StructArray::try_new(Fields::from(fields), arrays, nulls)?)
}
