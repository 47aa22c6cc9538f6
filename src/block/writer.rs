//! Block encoding: traces -> Arrow record batches (one per row group) -> Parquet.
//!
//! Arrays are built bottom-up from flat leaf builders plus offset vectors, one set per
//! nesting level, and only assembled into nested List/Struct arrays when a row group is
//! flushed. Field definitions come from the derived Arrow schema, so the code cannot drift
//! from `schema/block.parquet.txt`.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, Float64Builder, Int64Builder, StringBuilder,
};
use arrow_array::{
    ArrayRef, FixedSizeBinaryArray, Int32Array, Int64Array, ListArray, RecordBatch, StructArray,
    UInt32Array, UInt64Array,
};
use arrow_buffer::{Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow_schema::{FieldRef, Fields, SchemaRef};
use bytes::Bytes;
use parquet::arrow::arrow_writer::ArrowWriterOptions;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, Type as PhysicalType, ZstdLevel};
use parquet::file::metadata::{KeyValue as ParquetKeyValue, ParquetMetaData, SortingColumn};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::{ColumnPath, SchemaDescriptor};
use prost::Message;

use super::schema::{arrow_schema, child, list_element, parquet_schema, struct_fields, value_type};
use super::{
    bloom, dedicated_positions, BlockCompression, BlockConfig, BlockError, BlockMeta, Dedicated,
    DedicatedColumn, DedicatedType, EncodedBlock, RowGroupIndex, TraceInput, DEDICATED_RESOURCE,
    DEDICATED_SPAN, FORMAT,
};
use crate::model::{
    any_value, combine, nested_sets, parent_indices, status, KeyValue, NestedSet, Resource,
    ResourceSpans, TenantId, TraceId,
};

/// Tests write blocks the way older writers did (required `parent_span_id` and attribute
/// `type`, absolute span starts) to check that readers still handle them.
pub(crate) mod legacy {
    #[cfg(test)]
    thread_local! {
        pub(crate) static ON: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    #[cfg(test)]
    pub(crate) fn on() -> bool {
        ON.with(|c| c.get())
    }

    #[cfg(not(test))]
    pub(crate) fn on() -> bool {
        false
    }
}

/// For each span of a trace (`(span_id, parent_span_id)` in storage order), whether its parent span ID
/// can be left out of the block: it is the span ID of the first span of the trace whose
/// `nested_set_left` equals the span's `parent_id`, which is how readers restore it.
pub(crate) fn derivable_parents(spans: &[(&[u8], &[u8])], nested: &[NestedSet]) -> Vec<bool> {
    let mut by_left = vec![usize::MAX; 2 * spans.len() + 2];
    for (i, ns) in nested.iter().enumerate() {
        if let Some(slot) = usize::try_from(ns.left)
            .ok()
            .and_then(|l| by_left.get_mut(l))
        {
            if *slot == usize::MAX {
                *slot = i;
            }
        }
    }
    spans
        .iter()
        .zip(nested)
        .map(|((_, parent), ns)| {
            !parent.is_empty()
                && usize::try_from(ns.parent)
                    .ok()
                    .and_then(|p| by_left.get(p))
                    .and_then(|&j| spans.get(j))
                    .is_some_and(|(id, _)| id == parent)
        })
        .collect()
}

/// Synchronous CPU work; callers run it on spawn_blocking. Sorts by ID; if the same ID
/// appears twice, the fragments are merged with `model::combine`. Errors on an empty input.
/// Holds every trace in memory; [`encode_block_sorted`] streams instead.
pub fn encode_block(
    tenant: &TenantId,
    block_id: uuid::Uuid,
    compaction_level: u32,
    mut traces: Vec<TraceInput>,
    cfg: &BlockConfig,
) -> Result<EncodedBlock, BlockError> {
    if traces.is_empty() {
        return Err(BlockError::Empty);
    }
    // Validate the config before doing the expensive part.
    check_config(cfg)?;
    traces.sort_by_key(|t| t.id);
    let traces = merge_duplicates(traces);
    encode_block_sorted(
        tenant,
        block_id,
        compaction_level,
        traces.into_iter().map(Ok),
        cfg,
    )
}

fn check_config(cfg: &BlockConfig) -> Result<(), BlockError> {
    bloom::bloom_shard_count(1, cfg.bloom_false_positive, cfg.bloom_shard_size_bytes)?;
    if cfg.data_page_size_bytes == 0 {
        return Err(BlockError::Config("data page size is zero".into()));
    }
    if cfg.trace_id_page_rows == 0 || cfg.data_page_rows == 0 {
        return Err(BlockError::Config("page row limit is zero".into()));
    }
    Ok(())
}

/// Streaming [`encode_block`]: `traces` must come in strictly ascending ID order (one item
/// per trace, fragments already combined) and are pulled one at a time, so only the traces
/// of the row group being built are in memory, as Arrow arrays. The first `Err` item stops
/// encoding and is returned as is; an ID not greater than the one before it is a
/// [`BlockError::NotSorted`]. Errors on an empty input. Synchronous CPU work. The Parquet
/// bytes are kept in memory; [`encode_block_sorted_into`] writes them to a sink instead.
pub fn encode_block_sorted<I>(
    tenant: &TenantId,
    block_id: uuid::Uuid,
    compaction_level: u32,
    traces: I,
    cfg: &BlockConfig,
) -> Result<EncodedBlock, BlockError>
where
    I: IntoIterator<Item = Result<TraceInput, BlockError>>,
{
    let mut data = Vec::new();
    let parts =
        encode_block_sorted_into(tenant, block_id, compaction_level, traces, cfg, &mut data)?;
    Ok(EncodedBlock {
        meta: parts.meta,
        data: Bytes::from(data),
        blooms: parts.blooms,
        index: parts.index,
    })
}

/// What [`encode_block_sorted_into`] produced besides `data.parquet`, which went to the
/// sink: `meta.size` is the number of bytes written there.
#[derive(Debug, Clone)]
pub struct BlockParts {
    pub meta: BlockMeta,
    /// Shard N goes to `bloom_key(.., N)`.
    pub blooms: Vec<Bytes>,
    pub index: Bytes,
}

/// [`encode_block_sorted`] writing `data.parquet` to `sink` (a file, a `Vec`), so a block of
/// any size costs one row group of memory. The sink gets every byte in order, nothing is
/// read back: footer and page-index sizes come from the writer. The sink is flushed but not
/// synced; on error it holds a partial file.
pub fn encode_block_sorted_into<I, W>(
    tenant: &TenantId,
    block_id: uuid::Uuid,
    compaction_level: u32,
    traces: I,
    cfg: &BlockConfig,
    sink: &mut W,
) -> Result<BlockParts, BlockError>
where
    I: IntoIterator<Item = Result<TraceInput, BlockError>>,
    W: Write + Send,
{
    check_config(cfg)?;
    let (descr, schema) = if legacy::on() {
        super::schema::legacy_schemas()?
    } else {
        (parquet_schema()?, arrow_schema()?)
    };
    let options = ArrowWriterOptions::new()
        .with_properties(writer_properties(cfg, &descr)?)
        .with_skip_arrow_metadata(true)
        .with_parquet_schema((*descr).clone());
    let mut writer =
        ArrowWriter::try_new_with_options(TailWriter::new(sink), schema.clone(), options)?;

    let mut rg = RowGroupBuilder::new();
    let mut rg_rows = 0usize;
    let mut max_ids = Vec::new();
    let mut ids: Vec<TraceId> = Vec::new();
    let (mut start, mut end, mut total_spans) = (u64::MAX, 0u64, 0u64);
    for t in traces {
        let t = t?;
        if let Some(prev) = ids.last() {
            if *prev >= t.id {
                return Err(BlockError::NotSorted {
                    prev: *prev,
                    next: t.id,
                });
            }
        }
        ids.push(t.id);
        let s = rg.push_trace(&t)?;
        drop(t);
        rg_rows += 1;
        if s.spans > 0 {
            start = start.min(s.start);
            end = end.max(s.end);
        }
        total_spans += s.spans;
        if rg.est_bytes >= cfg.row_group_size_bytes {
            flush_row_group(&mut writer, &mut rg, &schema)?;
            max_ids.extend(ids.last().copied());
            rg_rows = 0;
        }
    }
    if ids.is_empty() {
        return Err(BlockError::Empty);
    }
    if rg_rows > 0 {
        flush_row_group(&mut writer, &mut rg, &schema)?;
        max_ids.extend(ids.last().copied());
    }
    drop(rg);
    // Writes the page indexes and the footer; the metadata it returns has the page-index
    // offsets filled in.
    let md = writer.finish()?;
    let (size, footer_size) = {
        let tail = writer.inner();
        (tail.written, tail.footer_size()?)
    };
    drop(writer);
    let page_index_size = page_index_size(&md, size, footer_size)?;

    let blooms = bloom::build_blooms(&ids, cfg.bloom_false_positive, cfg.bloom_shard_size_bytes)?;
    let index = RowGroupIndex::new(max_ids)?;

    let meta = BlockMeta {
        format: FORMAT.to_string(),
        block_id,
        tenant_id: tenant.as_str().to_string(),
        start_time: if start == u64::MAX { 0 } else { start },
        end_time: end,
        total_objects: ids.len() as u64,
        total_spans,
        size,
        compaction_level,
        total_records: u32::try_from(index.len()).unwrap_or(u32::MAX),
        bloom_shards: u32::try_from(blooms.len()).unwrap_or(u32::MAX),
        footer_size,
        page_index_size,
        dedicated_columns: dedicated_columns(),
    };
    Ok(BlockParts {
        meta,
        blooms: blooms.into_iter().map(Bytes::from).collect(),
        index: Bytes::from(index.to_bytes()),
    })
}

/// Passes writes through to the sink, counting them and keeping the last 8 bytes (footer
/// length and magic), so the footer size is known without reading the file back.
struct TailWriter<'a, W: Write> {
    inner: &'a mut W,
    written: u64,
    last: [u8; 8],
}

impl<'a, W: Write> TailWriter<'a, W> {
    fn new(inner: &'a mut W) -> Self {
        Self {
            inner,
            written: 0,
            last: [0; 8],
        }
    }

    /// Bytes of the Thrift footer plus its 4-byte length and the 4-byte magic.
    fn footer_size(&self) -> Result<u32, BlockError> {
        if self.written < 8 {
            return Err(BlockError::Corrupt(
                "parquet file shorter than its footer".into(),
            ));
        }
        let len = u32::from_le_bytes([self.last[0], self.last[1], self.last[2], self.last[3]]);
        len.checked_add(8)
            .filter(|&f| u64::from(f) <= self.written)
            .ok_or_else(|| BlockError::Corrupt("footer too large".into()))
    }
}

impl<W: Write> Write for TailWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        let buf = &buf[..n];
        self.written += n as u64;
        if n >= 8 {
            self.last.copy_from_slice(&buf[n - 8..]);
        } else {
            self.last.rotate_left(n);
            self.last[8 - n..].copy_from_slice(buf);
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn flush_row_group<W: Write + Send>(
    writer: &mut ArrowWriter<W>,
    rg: &mut RowGroupBuilder,
    schema: &SchemaRef,
) -> Result<(), BlockError> {
    let batch = std::mem::replace(rg, RowGroupBuilder::new()).finish(schema)?;
    writer.write(&batch)?;
    drop(batch);
    writer.flush()?;
    Ok(())
}

/// Bytes of the column and offset indexes, which the writer puts right before the footer:
/// from the first index offset in the written metadata to the footer's start.
fn page_index_size(md: &ParquetMetaData, size: u64, footer_size: u32) -> Result<u32, BlockError> {
    let footer_start = size
        .checked_sub(u64::from(footer_size))
        .ok_or_else(|| BlockError::Corrupt("parquet file shorter than its footer".into()))?;
    let first = md
        .row_groups()
        .iter()
        .flat_map(|rg| rg.columns())
        .flat_map(|c| [c.column_index_offset(), c.offset_index_offset()])
        .flatten()
        .filter_map(|o| u64::try_from(o).ok())
        .min();
    match first {
        Some(start) if start <= footer_start => u32::try_from(footer_start - start)
            .map_err(|_| BlockError::Corrupt("page index too large".into())),
        _ => Ok(0),
    }
}

/// The dedicated columns of this format, as listed in meta.json.
pub(crate) fn dedicated_columns() -> Vec<DedicatedColumn> {
    let list = |scope: &str, spec: &[Dedicated]| -> Vec<DedicatedColumn> {
        spec.iter()
            .map(|(key, _, ty)| DedicatedColumn {
                scope: scope.to_string(),
                name: key.to_string(),
                kind: ty.as_str().to_string(),
            })
            .collect()
    };
    let mut out = list("resource", &DEDICATED_RESOURCE);
    out.extend(list("span", &DEDICATED_SPAN));
    out
}

/// Expects `traces` sorted by ID; merges runs with the same ID.
fn merge_duplicates(traces: Vec<TraceInput>) -> Vec<TraceInput> {
    let mut out: Vec<TraceInput> = Vec::with_capacity(traces.len());
    let mut dup_run = false;
    for t in traces {
        match out.last_mut() {
            Some(last) if last.id == t.id => {
                last.batches.extend(t.batches);
                dup_run = true;
            }
            _ => {
                if dup_run {
                    if let Some(last) = out.last_mut() {
                        last.batches = combine(std::mem::take(&mut last.batches));
                    }
                    dup_run = false;
                }
                out.push(t);
            }
        }
    }
    if dup_run {
        if let Some(last) = out.last_mut() {
            last.batches = combine(std::mem::take(&mut last.batches));
        }
    }
    out
}

fn writer_properties(
    cfg: &BlockConfig,
    descr: &SchemaDescriptor,
) -> Result<WriterProperties, BlockError> {
    let compression = match cfg.compression {
        BlockCompression::None => Compression::UNCOMPRESSED,
        BlockCompression::Snappy => Compression::SNAPPY,
        BlockCompression::Zstd(level) => Compression::ZSTD(ZstdLevel::try_new(level)?),
    };
    let trace_id = ColumnPath::from(super::paths::TRACE_ID);
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
        .set_data_page_row_count_limit(cfg.data_page_rows)
        .set_column_data_page_row_count_limit(trace_id, cfg.trace_id_page_rows)
        // Page limits are only checked between write batches (a batch is extended to a
        // record boundary in nested columns), so this bounds the rows of a trace_id page.
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
                super::reader::SPAN_START_KEY.to_string(),
                super::reader::SPAN_START_RELATIVE.to_string(),
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
        // Random IDs and delta-packed times do not compress, and every compressed column
        // a lookup reads costs a codec set-up (measurable next to decoding a few pages).
        if is_incompressible(&path) {
            b = b.set_column_compression(col.path().clone(), Compression::UNCOMPRESSED);
        }
    }
    Ok(b.build())
}

/// Columns whose values (IDs, timestamps, durations) rarely repeat: a dictionary would
/// cost space, and a lookup must fetch and decode the whole dictionary page of every
/// column it reads, so these are stored without one (integers delta-encoded or byte
/// split, byte arrays with delta-encoded lengths).
fn is_mostly_unique(path: &str) -> bool {
    use super::paths::{DURATION, END_TIME, SPAN, START_TIME, TRACE_ID};
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
fn is_byte_split(path: &str) -> bool {
    path.strip_prefix(super::paths::SPAN).is_some_and(|leaf| {
        [
            "start_time_unix_nano",
            "duration_nano",
            "events.list.element.time_since_start_nano",
        ]
        .contains(&leaf)
    })
}

/// Trace IDs, span IDs and the delta-packed trace times: zstd gains nothing on them.
fn is_incompressible(path: &str) -> bool {
    use super::paths::{DURATION, END_TIME, SPAN, START_TIME, TRACE_ID};
    [TRACE_ID, START_TIME, END_TIME, DURATION].contains(&path)
        || path.strip_prefix(SPAN) == Some("span_id")
}

struct TraceSummary {
    start: u64,
    end: u64,
    spans: u64,
}

fn to_i32(n: usize) -> Result<i32, BlockError> {
    i32::try_from(n)
        .map_err(|_| BlockError::Corrupt(format!("row group too large: {n} list entries")))
}

fn offsets(v: Vec<i32>) -> OffsetBuffer<i32> {
    // Built by this module from running lengths: non-negative and non-decreasing.
    OffsetBuffer::new(ScalarBuffer::from(v))
}

/// Assembles a struct from named columns in schema order.
fn make_struct(
    fields: &Fields,
    mut cols: Vec<(&str, ArrayRef)>,
    nulls: Option<NullBuffer>,
) -> Result<StructArray, BlockError> {
    let mut arrays = Vec::with_capacity(fields.len());
    for f in fields {
        let pos = cols
            .iter()
            .position(|(n, _)| *n == f.name())
            .ok_or_else(|| BlockError::Schema(format!("writer has no column {}", f.name())))?;
        arrays.push(cols.swap_remove(pos).1);
    }
    if let Some((extra, _)) = cols.first() {
        return Err(BlockError::Schema(format!("schema has no column {extra}")));
    }
    Ok(StructArray::try_new(fields.clone(), arrays, nulls)?)
}

fn make_list(
    field: &FieldRef,
    offs: Vec<i32>,
    values: StructArray,
) -> Result<ArrayRef, BlockError> {
    let (elem, _) = list_element(field)?;
    Ok(Arc::new(ListArray::try_new(
        elem.clone(),
        offsets(offs),
        Arc::new(values),
        None,
    )?))
}

fn nulls(valid: Vec<bool>) -> Option<NullBuffer> {
    if valid.iter().all(|v| *v) {
        None
    } else {
        Some(NullBuffer::from(valid))
    }
}

fn arc<A: arrow_array::Array + 'static>(a: A) -> ArrayRef {
    Arc::new(a)
}

/// A generic attribute list column at one nesting level.
struct AttrBuilder {
    offsets: Vec<i32>,
    len: usize,
    key: StringBuilder,
    /// Null when the value column that holds the value implies the type.
    ty: Vec<Option<i32>>,
    str: StringBuilder,
    int: Int64Builder,
    dbl: Float64Builder,
    bool: BooleanBuilder,
    bytes: BinaryBuilder,
}

impl AttrBuilder {
    fn new() -> Self {
        Self {
            offsets: vec![0],
            len: 0,
            key: StringBuilder::new(),
            ty: Vec::new(),
            str: StringBuilder::new(),
            int: Int64Builder::new(),
            dbl: Float64Builder::new(),
            bool: BooleanBuilder::new(),
            bytes: BinaryBuilder::new(),
        }
    }

    fn push_kv(&mut self, kv: &KeyValue) {
        use any_value::Value;
        self.key.append_value(&kv.key);
        let (mut s, mut i, mut d, mut b, mut by): (_, _, _, _, Option<Vec<u8>>) =
            (None, None, None, None, None);
        let mut bytes_ref: Option<&[u8]> = None;
        let ty = match kv.value.as_ref() {
            None => value_type::NONE,
            Some(av) => match &av.value {
                None => value_type::EMPTY,
                Some(Value::StringValue(v)) => {
                    s = Some(v.as_str());
                    value_type::STRING
                }
                Some(Value::BoolValue(v)) => {
                    b = Some(*v);
                    value_type::BOOL
                }
                Some(Value::IntValue(v)) => {
                    i = Some(*v);
                    value_type::INT
                }
                Some(Value::DoubleValue(v)) => {
                    d = Some(*v);
                    value_type::DOUBLE
                }
                Some(Value::BytesValue(v)) => {
                    bytes_ref = Some(v.as_slice());
                    value_type::BYTES
                }
                Some(Value::ArrayValue(_)) => {
                    by = Some(av.encode_to_vec());
                    value_type::ARRAY
                }
                Some(Value::KvlistValue(_)) => {
                    by = Some(av.encode_to_vec());
                    value_type::KVLIST
                }
                Some(_) => {
                    by = Some(av.encode_to_vec());
                    value_type::ENCODED
                }
            },
        };
        // STRING..=BYTES are implied by which value column is set (see value_type::implied).
        let implied = matches!(
            ty,
            value_type::STRING
                | value_type::BOOL
                | value_type::INT
                | value_type::DOUBLE
                | value_type::BYTES
        );
        self.ty.push((!implied || legacy::on()).then_some(ty));
        self.str.append_option(s);
        self.int.append_option(i);
        self.dbl.append_option(d);
        self.bool.append_option(b);
        match (bytes_ref, by.as_deref()) {
            (Some(v), _) | (None, Some(v)) => self.bytes.append_value(v),
            (None, None) => self.bytes.append_null(),
        }
        self.len += 1;
    }

    /// Appends one list: `attrs` minus the indexes in `skip`.
    fn push_list(&mut self, attrs: &[KeyValue], skip: &[Option<usize>]) -> Result<(), BlockError> {
        for (i, kv) in attrs.iter().enumerate() {
            if !skip.contains(&Some(i)) {
                self.push_kv(kv);
            }
        }
        self.offsets.push(to_i32(self.len)?);
        Ok(())
    }

    fn finish(mut self, field: &FieldRef) -> Result<ArrayRef, BlockError> {
        let (_, fields) = list_element(field)?;
        let values = make_struct(
            fields,
            vec![
                ("key", arc(self.key.finish())),
                ("type", arc(Int32Array::from(self.ty))),
                ("str", arc(self.str.finish())),
                ("int", arc(self.int.finish())),
                ("dbl", arc(self.dbl.finish())),
                ("bool", arc(self.bool.finish())),
                ("bytes", arc(self.bytes.finish())),
            ],
            None,
        )?;
        make_list(field, self.offsets, values)
    }
}

/// Dedicated columns of one level, one builder per entry of the spec.
enum DedCol {
    Str(StringBuilder),
    Int(Int64Builder),
}

struct DedBuilder {
    spec: &'static [Dedicated],
    cols: Vec<DedCol>,
}

impl DedBuilder {
    fn new(spec: &'static [Dedicated]) -> Self {
        let cols = spec
            .iter()
            .map(|(_, _, ty)| match ty {
                DedicatedType::String => DedCol::Str(StringBuilder::new()),
                DedicatedType::Int => DedCol::Int(Int64Builder::new()),
            })
            .collect();
        Self { spec, cols }
    }

    fn push(&mut self, attrs: &[KeyValue], pos: &[Option<usize>]) {
        use any_value::Value;
        for (col, p) in self.cols.iter_mut().zip(pos) {
            let v = p
                .and_then(|i| attrs.get(i))
                .and_then(|kv| kv.value.as_ref())
                .and_then(|v| v.value.as_ref());
            match (col, v) {
                (DedCol::Str(b), Some(Value::StringValue(s))) => b.append_value(s),
                (DedCol::Int(b), Some(Value::IntValue(i))) => b.append_value(*i),
                (DedCol::Str(b), _) => b.append_null(),
                (DedCol::Int(b), _) => b.append_null(),
            }
        }
    }

    fn push_none(&mut self) {
        for col in &mut self.cols {
            match col {
                DedCol::Str(b) => b.append_null(),
                DedCol::Int(b) => b.append_null(),
            }
        }
    }

    fn finish(self, out: &mut Vec<(&'static str, ArrayRef)>) {
        for ((_, name, _), col) in self.spec.iter().zip(self.cols) {
            let a = match col {
                DedCol::Str(mut b) => arc(b.finish()),
                DedCol::Int(mut b) => arc(b.finish()),
            };
            out.push((name, a));
        }
    }
}

/// Everything buffered for one row group.
struct RowGroupBuilder {
    est_bytes: usize,
    // trace level
    trace_id: Vec<u8>,
    start: Vec<u64>,
    end: Vec<u64>,
    duration: Vec<u64>,
    root_service: StringBuilder,
    root_span: StringBuilder,
    stats_offsets: Vec<i32>,
    stats_service: StringBuilder,
    stats_spans: Vec<u32>,
    stats_errors: Vec<u32>,
    rs_offsets: Vec<i32>,
    // resource spans level
    res_valid: Vec<bool>,
    res_attrs: AttrBuilder,
    res_dropped: Vec<u32>,
    res_entity_refs: BinaryBuilder,
    res_ded: DedBuilder,
    rs_schema_url: StringBuilder,
    ss_offsets: Vec<i32>,
    // scope spans level
    scope_valid: Vec<bool>,
    scope_name: StringBuilder,
    scope_version: StringBuilder,
    scope_attrs: AttrBuilder,
    scope_dropped: Vec<u32>,
    ss_schema_url: StringBuilder,
    span_offsets: Vec<i32>,
    // span level
    span_id: BinaryBuilder,
    parent_span_id: BinaryBuilder,
    span_trace_id: BinaryBuilder,
    trace_state: StringBuilder,
    flags: Vec<u32>,
    name: StringBuilder,
    kind: Vec<i32>,
    span_start: Vec<u64>,
    span_duration: Vec<u64>,
    status_valid: Vec<bool>,
    status_code: Vec<i32>,
    status_message: StringBuilder,
    span_attrs: AttrBuilder,
    span_dropped_attrs: Vec<u32>,
    event_offsets: Vec<i32>,
    dropped_events: Vec<u32>,
    link_offsets: Vec<i32>,
    dropped_links: Vec<u32>,
    ns_left: Vec<i32>,
    ns_right: Vec<i32>,
    ns_parent: Vec<i32>,
    span_ded: DedBuilder,
    // event level
    ev_time: Vec<i64>,
    ev_name: StringBuilder,
    ev_attrs: AttrBuilder,
    ev_dropped: Vec<u32>,
    // link level
    link_trace_id: BinaryBuilder,
    link_span_id: BinaryBuilder,
    link_trace_state: StringBuilder,
    link_flags: Vec<u32>,
    link_attrs: AttrBuilder,
    link_dropped: Vec<u32>,
}

fn service_name(rs: &ResourceSpans) -> &str {
    rs.resource
        .as_ref()
        .and_then(|r| {
            let pos = dedicated_positions(&r.attributes, &DEDICATED_RESOURCE)[0]?;
            match r.attributes.get(pos)?.value.as_ref()?.value.as_ref()? {
                any_value::Value::StringValue(s) => Some(s.as_str()),
                _ => None,
            }
        })
        .unwrap_or("")
}

impl RowGroupBuilder {
    fn new() -> Self {
        Self {
            est_bytes: 0,
            trace_id: Vec::new(),
            start: Vec::new(),
            end: Vec::new(),
            duration: Vec::new(),
            root_service: StringBuilder::new(),
            root_span: StringBuilder::new(),
            stats_offsets: vec![0],
            stats_service: StringBuilder::new(),
            stats_spans: Vec::new(),
            stats_errors: Vec::new(),
            rs_offsets: vec![0],
            res_valid: Vec::new(),
            res_attrs: AttrBuilder::new(),
            res_dropped: Vec::new(),
            res_entity_refs: BinaryBuilder::new(),
            res_ded: DedBuilder::new(&DEDICATED_RESOURCE),
            rs_schema_url: StringBuilder::new(),
            ss_offsets: vec![0],
            scope_valid: Vec::new(),
            scope_name: StringBuilder::new(),
            scope_version: StringBuilder::new(),
            scope_attrs: AttrBuilder::new(),
            scope_dropped: Vec::new(),
            ss_schema_url: StringBuilder::new(),
            span_offsets: vec![0],
            span_id: BinaryBuilder::new(),
            parent_span_id: BinaryBuilder::new(),
            span_trace_id: BinaryBuilder::new(),
            trace_state: StringBuilder::new(),
            flags: Vec::new(),
            name: StringBuilder::new(),
            kind: Vec::new(),
            span_start: Vec::new(),
            span_duration: Vec::new(),
            status_valid: Vec::new(),
            status_code: Vec::new(),
            status_message: StringBuilder::new(),
            span_attrs: AttrBuilder::new(),
            span_dropped_attrs: Vec::new(),
            event_offsets: vec![0],
            dropped_events: Vec::new(),
            link_offsets: vec![0],
            dropped_links: Vec::new(),
            ns_left: Vec::new(),
            ns_right: Vec::new(),
            ns_parent: Vec::new(),
            span_ded: DedBuilder::new(&DEDICATED_SPAN),
            ev_time: Vec::new(),
            ev_name: StringBuilder::new(),
            ev_attrs: AttrBuilder::new(),
            ev_dropped: Vec::new(),
            link_trace_id: BinaryBuilder::new(),
            link_span_id: BinaryBuilder::new(),
            link_trace_state: StringBuilder::new(),
            link_flags: Vec::new(),
            link_attrs: AttrBuilder::new(),
            link_dropped: Vec::new(),
        }
    }

    fn push_trace(&mut self, t: &TraceInput) -> Result<TraceSummary, BlockError> {
        self.est_bytes += t.batches.iter().map(Message::encoded_len).sum::<usize>();

        // Trace-level summary and nested sets over the spans of all batches.
        let mut pairs: Vec<(&[u8], &[u8])> = Vec::new();
        let (mut start, mut end) = (u64::MAX, 0u64);
        let mut root: Option<(&str, &str)> = None;
        let mut stats: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
        for rs in &t.batches {
            let service = service_name(rs);
            for ss in &rs.scope_spans {
                for span in &ss.spans {
                    pairs.push((&span.span_id, &span.parent_span_id));
                    start = start.min(span.start_time_unix_nano);
                    end = end.max(span.end_time_unix_nano);
                    if root.is_none() && span.parent_span_id.is_empty() {
                        root = Some((service, &span.name));
                    }
                    let e = stats.entry(service).or_default();
                    e.0 = e.0.saturating_add(1);
                    if span
                        .status
                        .as_ref()
                        .is_some_and(|s| s.code == status::StatusCode::Error as i32)
                    {
                        e.1 = e.1.saturating_add(1);
                    }
                }
            }
        }
        let nested = nested_sets(&parent_indices(&pairs));
        let mut derived = derivable_parents(&pairs, &nested);
        if legacy::on() {
            derived.fill(false);
        }
        let span_base = if legacy::on() { 0 } else { start };
        let spans = pairs.len() as u64;
        if spans == 0 {
            start = 0;
        }
        end = end.max(start);

        self.trace_id.extend_from_slice(t.id.as_bytes());
        self.start.push(start);
        self.end.push(end);
        self.duration.push(end - start);
        let (root_service, root_name) = root.unwrap_or(("", ""));
        self.root_service.append_value(root_service);
        self.root_span.append_value(root_name);
        for (service, (count, errors)) in &stats {
            self.stats_service.append_value(service);
            self.stats_spans.push(*count);
            self.stats_errors.push(*errors);
        }
        self.stats_offsets.push(to_i32(self.stats_spans.len())?);

        let mut span_idx = 0usize;
        for rs in &t.batches {
            self.push_resource(rs.resource.as_ref())?;
            self.rs_schema_url.append_value(&rs.schema_url);
            for ss in &rs.scope_spans {
                match &ss.scope {
                    Some(s) => {
                        self.scope_valid.push(true);
                        self.scope_name.append_value(&s.name);
                        self.scope_version.append_value(&s.version);
                        self.scope_attrs.push_list(&s.attributes, &[])?;
                        self.scope_dropped.push(s.dropped_attributes_count);
                    }
                    None => {
                        self.scope_valid.push(false);
                        self.scope_name.append_value("");
                        self.scope_version.append_value("");
                        self.scope_attrs.push_list(&[], &[])?;
                        self.scope_dropped.push(0);
                    }
                }
                self.ss_schema_url.append_value(&ss.schema_url);
                for span in &ss.spans {
                    let ns = nested.get(span_idx).copied().unwrap_or(NestedSet {
                        left: 0,
                        right: 0,
                        parent: -1,
                    });
                    let parent_derived = derived.get(span_idx).copied().unwrap_or(false);
                    span_idx += 1;
                    self.push_span(t.id, span_base, span, ns, parent_derived)?;
                }
                self.span_offsets.push(to_i32(self.span_start.len())?);
            }
            self.ss_offsets.push(to_i32(self.scope_valid.len())?);
        }
        self.rs_offsets.push(to_i32(self.res_valid.len())?);
        Ok(TraceSummary { start, end, spans })
    }

    fn push_resource(&mut self, r: Option<&Resource>) -> Result<(), BlockError> {
        match r {
            Some(r) => {
                let pos = dedicated_positions(&r.attributes, &DEDICATED_RESOURCE);
                self.res_valid.push(true);
                self.res_attrs.push_list(&r.attributes, &pos)?;
                self.res_dropped.push(r.dropped_attributes_count);
                if r.entity_refs.is_empty() {
                    self.res_entity_refs.append_null();
                } else {
                    // Rare and not searched: keep them opaque but exact.
                    let only_refs = Resource {
                        entity_refs: r.entity_refs.clone(),
                        ..Default::default()
                    };
                    self.res_entity_refs.append_value(only_refs.encode_to_vec());
                }
                self.res_ded.push(&r.attributes, &pos);
            }
            None => {
                self.res_valid.push(false);
                self.res_attrs.push_list(&[], &[])?;
                self.res_dropped.push(0);
                self.res_entity_refs.append_null();
                self.res_ded.push_none();
            }
        }
        Ok(())
    }

    fn push_span(
        &mut self,
        trace: TraceId,
        trace_start: u64,
        span: &crate::model::Span,
        ns: NestedSet,
        parent_derived: bool,
    ) -> Result<(), BlockError> {
        self.span_id.append_value(&span.span_id);
        if parent_derived {
            self.parent_span_id.append_null();
        } else {
            self.parent_span_id.append_value(&span.parent_span_id);
        }
        // Almost always equal to the row's trace ID; only differing ones are stored.
        if span.trace_id.as_slice() == trace.as_bytes() {
            self.span_trace_id.append_null();
        } else {
            self.span_trace_id.append_value(&span.trace_id);
        }
        self.trace_state.append_value(&span.trace_state);
        self.flags.push(span.flags);
        self.name.append_value(&span.name);
        self.kind.push(span.kind);
        // Relative to the trace start (SPAN_START_KEY): small numbers pack tighter.
        self.span_start
            .push(span.start_time_unix_nano.wrapping_sub(trace_start));
        // Wrapping keeps even end < start exact on read.
        self.span_duration.push(
            span.end_time_unix_nano
                .wrapping_sub(span.start_time_unix_nano),
        );
        match &span.status {
            Some(s) => {
                self.status_valid.push(true);
                self.status_code.push(s.code);
                self.status_message.append_value(&s.message);
            }
            None => {
                self.status_valid.push(false);
                self.status_code.push(0);
                self.status_message.append_value("");
            }
        }
        let pos = dedicated_positions(&span.attributes, &DEDICATED_SPAN);
        self.span_attrs.push_list(&span.attributes, &pos)?;
        self.span_ded.push(&span.attributes, &pos);
        self.span_dropped_attrs.push(span.dropped_attributes_count);
        for ev in &span.events {
            self.ev_time
                .push(ev.time_unix_nano.wrapping_sub(span.start_time_unix_nano) as i64);
            self.ev_name.append_value(&ev.name);
            self.ev_attrs.push_list(&ev.attributes, &[])?;
            self.ev_dropped.push(ev.dropped_attributes_count);
        }
        self.event_offsets.push(to_i32(self.ev_time.len())?);
        self.dropped_events.push(span.dropped_events_count);
        for l in &span.links {
            self.link_trace_id.append_value(&l.trace_id);
            self.link_span_id.append_value(&l.span_id);
            self.link_trace_state.append_value(&l.trace_state);
            self.link_flags.push(l.flags);
            self.link_attrs.push_list(&l.attributes, &[])?;
            self.link_dropped.push(l.dropped_attributes_count);
        }
        self.link_offsets.push(to_i32(self.link_flags.len())?);
        self.dropped_links.push(span.dropped_links_count);
        self.ns_left.push(ns.left);
        self.ns_right.push(ns.right);
        self.ns_parent.push(ns.parent);
        Ok(())
    }

    fn finish(mut self, schema: &SchemaRef) -> Result<RecordBatch, BlockError> {
        let top = schema.fields();
        let rs_field = child(top, "resource_spans")?;
        let (_, rs_fields) = list_element(rs_field)?;
        let res_field = child(rs_fields, "resource")?;
        let ss_field = child(rs_fields, "scope_spans")?;
        let (_, ss_fields) = list_element(ss_field)?;
        let scope_field = child(ss_fields, "scope")?;
        let spans_field = child(ss_fields, "spans")?;
        let (_, span_fields) = list_element(spans_field)?;
        let events_field = child(span_fields, "events")?;
        let (_, ev_fields) = list_element(events_field)?;
        let links_field = child(span_fields, "links")?;
        let (_, link_fields) = list_element(links_field)?;

        let events = make_struct(
            ev_fields,
            vec![
                ("time_since_start_nano", arc(Int64Array::from(self.ev_time))),
                ("name", arc(self.ev_name.finish())),
                ("attrs", self.ev_attrs.finish(child(ev_fields, "attrs")?)?),
                (
                    "dropped_attributes_count",
                    arc(UInt32Array::from(self.ev_dropped)),
                ),
            ],
            None,
        )?;
        let links = make_struct(
            link_fields,
            vec![
                ("trace_id", arc(self.link_trace_id.finish())),
                ("span_id", arc(self.link_span_id.finish())),
                ("trace_state", arc(self.link_trace_state.finish())),
                ("flags", arc(UInt32Array::from(self.link_flags))),
                (
                    "attrs",
                    self.link_attrs.finish(child(link_fields, "attrs")?)?,
                ),
                (
                    "dropped_attributes_count",
                    arc(UInt32Array::from(self.link_dropped)),
                ),
            ],
            None,
        )?;
        let status_field = child(span_fields, "status")?;
        let status = make_struct(
            struct_fields(status_field)?,
            vec![
                ("code", arc(Int32Array::from(self.status_code))),
                ("message", arc(self.status_message.finish())),
            ],
            nulls(self.status_valid),
        )?;
        let mut span_cols: Vec<(&str, ArrayRef)> = vec![
            ("span_id", arc(self.span_id.finish())),
            ("parent_span_id", arc(self.parent_span_id.finish())),
            ("trace_id", arc(self.span_trace_id.finish())),
            ("trace_state", arc(self.trace_state.finish())),
            ("flags", arc(UInt32Array::from(self.flags))),
            ("name", arc(self.name.finish())),
            ("kind", arc(Int32Array::from(self.kind))),
            (
                "start_time_unix_nano",
                arc(UInt64Array::from(self.span_start)),
            ),
            ("duration_nano", arc(UInt64Array::from(self.span_duration))),
            ("status", arc(status)),
            (
                "attrs",
                self.span_attrs.finish(child(span_fields, "attrs")?)?,
            ),
            (
                "dropped_attributes_count",
                arc(UInt32Array::from(self.span_dropped_attrs)),
            ),
            (
                "events",
                make_list(events_field, self.event_offsets, events)?,
            ),
            (
                "dropped_events_count",
                arc(UInt32Array::from(self.dropped_events)),
            ),
            ("links", make_list(links_field, self.link_offsets, links)?),
            (
                "dropped_links_count",
                arc(UInt32Array::from(self.dropped_links)),
            ),
            ("nested_set_left", arc(Int32Array::from(self.ns_left))),
            ("nested_set_right", arc(Int32Array::from(self.ns_right))),
            ("parent_id", arc(Int32Array::from(self.ns_parent))),
        ];
        self.span_ded.finish(&mut span_cols);
        let spans = make_struct(span_fields, span_cols, None)?;

        let scope = make_struct(
            struct_fields(scope_field)?,
            vec![
                ("name", arc(self.scope_name.finish())),
                ("version", arc(self.scope_version.finish())),
                (
                    "attrs",
                    self.scope_attrs
                        .finish(child(struct_fields(scope_field)?, "attrs")?)?,
                ),
                (
                    "dropped_attributes_count",
                    arc(UInt32Array::from(self.scope_dropped)),
                ),
            ],
            nulls(self.scope_valid),
        )?;
        let scope_spans = make_struct(
            ss_fields,
            vec![
                ("scope", arc(scope)),
                ("schema_url", arc(self.ss_schema_url.finish())),
                ("spans", make_list(spans_field, self.span_offsets, spans)?),
            ],
            None,
        )?;

        let res_fields = struct_fields(res_field)?;
        let mut res_cols: Vec<(&str, ArrayRef)> = vec![
            ("attrs", self.res_attrs.finish(child(res_fields, "attrs")?)?),
            (
                "dropped_attributes_count",
                arc(UInt32Array::from(self.res_dropped)),
            ),
            ("entity_refs", arc(self.res_entity_refs.finish())),
        ];
        self.res_ded.finish(&mut res_cols);
        let resource = make_struct(res_fields, res_cols, nulls(self.res_valid))?;
        let resource_spans = make_struct(
            rs_fields,
            vec![
                ("resource", arc(resource)),
                ("schema_url", arc(self.rs_schema_url.finish())),
                (
                    "scope_spans",
                    make_list(ss_field, self.ss_offsets, scope_spans)?,
                ),
            ],
            None,
        )?;

        let stats_field = child(top, "service_stats")?;
        let (_, stats_fields) = list_element(stats_field)?;
        let stats = make_struct(
            stats_fields,
            vec![
                ("service", arc(self.stats_service.finish())),
                ("span_count", arc(UInt32Array::from(self.stats_spans))),
                ("error_count", arc(UInt32Array::from(self.stats_errors))),
            ],
            None,
        )?;
        let trace_ids = FixedSizeBinaryArray::try_new(16, Buffer::from(self.trace_id), None)?;
        let root = make_struct(
            top,
            vec![
                ("trace_id", arc(trace_ids)),
                ("start_time_unix_nano", arc(UInt64Array::from(self.start))),
                ("end_time_unix_nano", arc(UInt64Array::from(self.end))),
                ("duration_nano", arc(UInt64Array::from(self.duration))),
                ("root_service_name", arc(self.root_service.finish())),
                ("root_span_name", arc(self.root_span.finish())),
                (
                    "service_stats",
                    make_list(stats_field, self.stats_offsets, stats)?,
                ),
                (
                    "resource_spans",
                    make_list(rs_field, self.rs_offsets, resource_spans)?,
                ),
            ],
            None,
        )?;
        let (_, columns, _) = root.into_parts();
        Ok(RecordBatch::try_new(schema.clone(), columns)?)
    }
}

#[cfg(test)]
mod sink_tests {
    use std::io::Write;

    use parquet::file::metadata::ParquetMetaDataReader;

    use super::*;

    /// A sink that accepts at most 3 bytes per call, so the tail tracking sees short writes.
    struct Dribble(Vec<u8>);

    impl Write for Dribble {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let n = buf.len().min(3);
            self.0.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn sorted_traces() -> Vec<TraceInput> {
        let mut t = super::super::synth::realistic_traces(200, 7);
        t.sort_by_key(|t| t.id);
        t.dedup_by_key(|t| t.id);
        t
    }

    fn cfg() -> BlockConfig {
        BlockConfig {
            row_group_size_bytes: 20_000,
            ..BlockConfig::default()
        }
    }

    #[test]
    fn file_sink_gets_the_same_bytes_and_sizes_as_the_vec() {
        let tenant = TenantId::new("t").unwrap();
        let id = uuid::Uuid::nil();
        let in_memory =
            encode_block_sorted(&tenant, id, 2, sorted_traces().into_iter().map(Ok), &cfg())
                .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.parquet");
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        let parts = encode_block_sorted_into(
            &tenant,
            id,
            2,
            sorted_traces().into_iter().map(Ok),
            &cfg(),
            &mut file,
        )
        .unwrap();
        drop(file);
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(on_disk, in_memory.data.as_ref());
        assert_eq!(parts.meta.size, on_disk.len() as u64);
        assert_eq!(parts.meta, in_memory.meta);
        assert_eq!(parts.blooms, in_memory.blooms);
        assert_eq!(parts.index, in_memory.index);

        // The sizes the writer tracked match the file's own footer and page indexes.
        let n = on_disk.len();
        let len = u32::from_le_bytes(on_disk[n - 8..n - 4].try_into().unwrap());
        assert_eq!(parts.meta.footer_size, len + 8);
        let footer_start = n - parts.meta.footer_size as usize;
        let md = ParquetMetaDataReader::decode_metadata(&on_disk[footer_start..n - 8]).unwrap();
        assert!(md.num_row_groups() > 1);
        let first_index = md
            .row_groups()
            .iter()
            .flat_map(|rg| rg.columns())
            .flat_map(|c| [c.column_index_offset(), c.offset_index_offset()])
            .flatten()
            .min()
            .unwrap();
        assert!(parts.meta.page_index_size > 0);
        assert_eq!(
            parts.meta.page_index_size as usize,
            footer_start - first_index as usize
        );
    }

    #[test]
    fn short_writes_keep_the_tail() {
        let tenant = TenantId::new("t").unwrap();
        let mut sink = Dribble(Vec::new());
        let parts = encode_block_sorted_into(
            &tenant,
            uuid::Uuid::nil(),
            0,
            sorted_traces().into_iter().take(20).map(Ok),
            &cfg(),
            &mut sink,
        )
        .unwrap();
        let d = &sink.0;
        assert_eq!(parts.meta.size, d.len() as u64);
        assert_eq!(&d[d.len() - 4..], b"PAR1");
        let len = u32::from_le_bytes(d[d.len() - 8..d.len() - 4].try_into().unwrap());
        assert_eq!(parts.meta.footer_size, len + 8);
    }

    #[test]
    fn a_failing_sink_is_an_error() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("disk full"))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let tenant = TenantId::new("t").unwrap();
        let r = encode_block_sorted_into(
            &tenant,
            uuid::Uuid::nil(),
            0,
            sorted_traces().into_iter().map(Ok),
            &cfg(),
            &mut Full,
        );
        assert!(r.is_err());
    }
}
