//! Writer properties: per-column encodings, dictionaries and compression, chosen by how a
//! column's values behave (unique IDs and times, repeated strings).

use parquet::basic::{Compression, Encoding, Type as PhysicalType, ZstdLevel};
use parquet::file::metadata::{KeyValue as ParquetKeyValue, SortingColumn};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::{ColumnPath, SchemaDescriptor};

use super::legacy;
use crate::block::{BlockCompression, BlockConfig, BlockError};

/// Rows per data page for traces of `spans_per_trace` spans on average (see
/// [`BlockConfig::data_page_spans`]).
pub(super) fn page_rows(cfg: &BlockConfig, spans_per_trace: f64) -> usize {
    if cfg.data_page_spans == 0 || spans_per_trace <= 0.0 {
        return cfg.data_page_rows;
    }
    let by_spans = (cfg.data_page_spans as f64 / spans_per_trace) as usize;
    by_spans.clamp(
        cfg.data_page_rows,
        cfg.data_page_spans.max(cfg.data_page_rows),
    )
}

/// `page_rows`: rows per data page, from [`page_rows`].
pub(super) fn writer_properties(
    cfg: &BlockConfig,
    descr: &SchemaDescriptor,
    page_rows: usize,
) -> Result<WriterProperties, BlockError> {
    let compression = match cfg.compression {
        BlockCompression::None => Compression::UNCOMPRESSED,
        BlockCompression::Snappy => Compression::SNAPPY,
        BlockCompression::Zstd(level) => Compression::ZSTD(ZstdLevel::try_new(level)?),
    };
    let trace_id = ColumnPath::from(crate::block::paths::TRACE_ID);
    let mut b = WriterProperties::builder()
        .set_compression(compression)
        // Chunk statistics live in the footer and are what row-group pruning needs. Only
        // trace_id gets page statistics: its column index names the page, and so the few
        // rows, that can hold an ID. The offset index (page locations) is written for every
        // column; together they let a lookup fetch and decode a few small pages.
        .set_statistics_enabled(EnabledStatistics::Chunk)
        .set_column_statistics_enabled(trace_id.clone(), EnabledStatistics::Page)
        .set_offset_index_disabled(false)
        .set_data_page_size_limit(cfg.data_page_size_bytes)
        .set_data_page_row_count_limit(page_rows)
        .set_column_data_page_row_count_limit(trace_id, cfg.trace_id_page_rows)
        // Page limits are only checked between write batches (a batch is extended to a
        // record boundary in nested columns), so this bounds the rows of a trace_id page;
        // `file.rs` writes the nested columns in larger batches.
        .set_write_batch_size(cfg.trace_id_page_rows)
        // Row groups are cut by this module, by size.
        .set_max_row_group_row_count(None)
        .set_sorting_columns(Some(vec![SortingColumn {
            column_idx: 0,
            descending: false,
            nulls_first: false,
        }]))
        .set_dictionary_enabled(true)
        .set_key_value_metadata((!legacy::on()).then(|| {
            vec![ParquetKeyValue::new(
                crate::block::reader::SPAN_START_KEY.to_string(),
                crate::block::reader::SPAN_START_RELATIVE.to_string(),
            )]
        }));
    for col in descr.columns() {
        let is_bytes = matches!(
            col.physical_type(),
            PhysicalType::BYTE_ARRAY | PhysicalType::FIXED_LEN_BYTE_ARRAY
        );
        let path = col.path().string();
        let unique = is_mostly_unique(&path);
        if unique || (is_bytes && !cfg.string_dictionary) {
            b = b.set_column_dictionary_enabled(col.path().clone(), false);
        }
        if unique {
            // Byte split + zstd adapts to the spread of span times better than delta
            // packing (which takes the widest delta of each miniblock); trace times and
            // IDs stay delta-packed / delta-length and uncompressed.
            let encoding = match col.physical_type() {
                PhysicalType::INT64 if is_byte_split(&path) => Some(Encoding::BYTE_STREAM_SPLIT),
                PhysicalType::INT64 => Some(Encoding::DELTA_BINARY_PACKED),
                PhysicalType::BYTE_ARRAY => Some(Encoding::DELTA_LENGTH_BYTE_ARRAY),
                _ => None,
            };
            if let Some(e) = encoding {
                b = b.set_column_encoding(col.path().clone(), e);
            }
        }
        // Byte-array statistics cost a comparison per value, and only those of the
        // dedicated resource columns are read (a row group whose services cannot hold
        // `resource.service.name = "x"` is skipped).
        if col.physical_type() == PhysicalType::BYTE_ARRAY && !prunes_by_statistics(&path) {
            b = b.set_column_statistics_enabled(col.path().clone(), EnabledStatistics::None);
        }
        // Random IDs and delta-packed times do not compress, and every compressed column
        // a lookup reads costs a codec set-up (measurable next to decoding a few pages).
        if is_incompressible(&path) {
            b = b.set_column_compression(col.path().clone(), Compression::UNCOMPRESSED);
        }
    }
    Ok(b.build())
}

/// Byte-array columns whose chunk statistics search reads: the dedicated resource
/// columns.
pub(super) fn prunes_by_statistics(path: &str) -> bool {
    path.strip_prefix(crate::block::paths::RESOURCE)
        .is_some_and(|leaf| {
            crate::block::DEDICATED_RESOURCE
                .iter()
                .any(|(_, col, _)| *col == leaf)
        })
}

/// Columns whose values (IDs, timestamps, durations) rarely repeat: a dictionary would
/// cost space, and a lookup must fetch and decode the whole dictionary page of every
/// column it reads, so these are stored without one (integers delta-encoded or byte
/// split, byte arrays with delta-encoded lengths).
pub(super) fn is_mostly_unique(path: &str) -> bool {
    use crate::block::paths::{DURATION, END_TIME, SPAN, START_TIME, TRACE_ID};
    if [TRACE_ID, START_TIME, END_TIME, DURATION].contains(&path) {
        return true;
    }
    let Some(leaf) = path.strip_prefix(SPAN) else {
        return false;
    };
    [
        "span_id",
        "parent_span_id",
        "start_time_unix_nano",
        "duration_nano",
        "events.list.element.time_since_start_nano",
        "links.list.element.trace_id",
        "links.list.element.span_id",
    ]
    .contains(&leaf)
}

/// Span times (start relative to the trace start, duration, event offsets): stored
/// BYTE_STREAM_SPLIT and compressed.
pub(super) fn is_byte_split(path: &str) -> bool {
    path.strip_prefix(crate::block::paths::SPAN)
        .is_some_and(|leaf| {
            [
                "start_time_unix_nano",
                "duration_nano",
                "events.list.element.time_since_start_nano",
            ]
            .contains(&leaf)
        })
}

/// Trace IDs, span IDs and the delta-packed trace times: zstd gains nothing on them.
pub(super) fn is_incompressible(path: &str) -> bool {
    use crate::block::paths::{DURATION, END_TIME, SPAN, START_TIME, TRACE_ID};
    [TRACE_ID, START_TIME, END_TIME, DURATION].contains(&path)
        || path.strip_prefix(SPAN) == Some("span_id")
}
