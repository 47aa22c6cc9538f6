//! Block encoding: traces -> Arrow record batches (one per row group) -> Parquet.
//!
//! Arrays are built bottom-up from flat leaf builders plus offset vectors, one set per
//! nesting level, and only assembled into nested List/Struct arrays when a row group is
//! flushed. Field definitions come from the derived Arrow schema, so the code cannot drift
//! from `schema/block.parquet.txt`.
//!
//! `properties` chooses encodings and compression per column, `columns` holds the Arrow
//! builders for attribute lists and dedicated columns, `row_group` turns traces (decoded,
//! or read off a live trace's encoded chunks by `block::wire_rows`) into one row group's
//! record batch, and `file` writes the row groups into the Parquet file.

mod columns;
mod file;
mod properties;
mod row_group;
#[cfg(test)]
mod sink_tests;
#[cfg(test)]
mod wire_tests;

use properties::{page_rows, writer_properties};
use row_group::RowGroupBuilder;

use std::io::Write;

use bytes::Bytes;
use file::BlockFile;
use parquet::file::metadata::ParquetMetaData;

use super::schema::{arrow_schema, parquet_schema};
use super::tags::TagCollector;
use super::wire_rows::WireRows;
use super::{
    bloom, BlockConfig, BlockError, BlockMeta, Dedicated, DedicatedColumn, EncodedBlock,
    RowGroupIndex, TraceInput, DEDICATED_RESOURCE, DEDICATED_SPAN, FORMAT,
};
use crate::model::{combine, Fragments, ResourceSpans, TenantId, TraceId};

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
    encode_block_sliced(tenant, block_id, compaction_level, one_slice(traces), cfg)
}

/// Every trace in slice 0: a block sorted by ID throughout.
fn one_slice<I>(traces: I) -> impl Iterator<Item = Result<SlicedTrace, BlockError>>
where
    I: IntoIterator<Item = Result<TraceInput, BlockError>>,
{
    traces
        .into_iter()
        .map(|t| t.map(|trace| SlicedTrace::decoded(0, trace)))
}

/// [`encode_block_sorted`] for traces tagged with time slices (see
/// [`encode_block_sliced_into`]), the Parquet bytes kept in memory.
pub fn encode_block_sliced<I>(
    tenant: &TenantId,
    block_id: uuid::Uuid,
    compaction_level: u32,
    traces: I,
    cfg: &BlockConfig,
) -> Result<EncodedBlock, BlockError>
where
    I: IntoIterator<Item = Result<SlicedTrace, BlockError>>,
{
    let mut data = Vec::new();
    let parts = encode_block_sliced_into(
        tenant,
        block_id,
        compaction_level,
        traces,
        cfg,
        None,
        &mut data,
    )?;
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
    encode_block_sliced_into(
        tenant,
        block_id,
        compaction_level,
        one_slice(traces),
        cfg,
        None,
        sink,
    )
}

/// A trace's spans as the writer takes them.
pub enum TraceRows {
    /// Decoded, fragments already combined.
    Decoded(Vec<ResourceSpans>),
    /// A live trace's encoded fragments: read straight into columns and combined on the
    /// way (see `block::wire_rows`), or decoded and combined when they hold something that
    /// reader leaves to prost.
    Encoded(Fragments),
}

/// One trace for [`encode_block_sliced_into`], tagged with the time slice it belongs to.
pub struct SlicedTrace {
    pub slice: u32,
    pub id: TraceId,
    pub rows: TraceRows,
}

impl SlicedTrace {
    pub fn decoded(slice: u32, trace: TraceInput) -> Self {
        Self {
            slice,
            id: trace.id,
            rows: TraceRows::Decoded(trace.batches),
        }
    }
}

/// Adds one trace's rows to `rg`, and its tags to `tags` when given.
fn push_rows(
    rg: &mut RowGroupBuilder,
    id: TraceId,
    rows: &TraceRows,
    tags: Option<&mut TagCollector>,
) -> Result<row_group::TraceSummary, BlockError> {
    let decoded = |batches: &[ResourceSpans], rg: &mut RowGroupBuilder, tags| {
        if let Some(tags) = tags {
            TagCollector::add_trace(tags, batches);
        }
        rg.push_trace(id, batches)
    };
    match rows {
        TraceRows::Decoded(batches) => decoded(batches, rg, tags),
        TraceRows::Encoded(f) => match WireRows::parse(f.chunks()) {
            Some(wire) => {
                if let Some(tags) = tags {
                    tags.add_wire(&wire);
                }
                rg.push_rows(id, &wire)
            }
            None => {
                let batches = f
                    .decode()
                    .map_err(|e| BlockError::Input(format!("trace {id}: {e}")))?;
                decoded(&combine(batches), rg, tags)
            }
        },
    }
}

/// [`encode_block_sorted_into`] for a block laid out in time slices: traces come slice by
/// slice (a slice is a run of equal `slice` tags), IDs strictly ascending within a slice,
/// and a slice never shares a row group with another. Newest-first search then reads the
/// row groups of the newest slice and stops; a lookup checks one row group per slice (the
/// index lists each row group's smallest and largest ID). A trace must appear in one slice
/// only; callers combine fragments before slicing. `tags`, when given, gets every trace's
/// tags from the same read that makes its rows.
pub fn encode_block_sliced_into<I, W>(
    tenant: &TenantId,
    block_id: uuid::Uuid,
    compaction_level: u32,
    traces: I,
    cfg: &BlockConfig,
    mut tags: Option<&mut TagCollector>,
    sink: &mut W,
) -> Result<BlockParts, BlockError>
where
    I: IntoIterator<Item = Result<SlicedTrace, BlockError>>,
    W: Write + Send,
{
    check_config(cfg)?;
    let (descr, schema) = if legacy::on() {
        super::schema::legacy_schemas()?
    } else {
        (parquet_schema()?, arrow_schema()?)
    };
    // Made at the first row group's flush: its traces' size sets the page row limit.
    let mut sink = Some(TailWriter::new(sink));
    let mut writer = None;
    let mut flush = |rg: &mut RowGroupBuilder, rows: usize, spans: u64| {
        if writer.is_none() {
            let rows = page_rows(cfg, spans as f64 / rows.max(1) as f64);
            let props = writer_properties(cfg, &descr, rows)?;
            let tail = sink.take().expect("the writer is made once");
            writer = Some(BlockFile::new(tail, &descr, schema.clone(), props)?);
        }
        let batch = std::mem::replace(rg, RowGroupBuilder::new()).finish(&schema)?;
        writer.as_mut().expect("made above").write_row_group(&batch)
    };

    let mut rg = RowGroupBuilder::new();
    let mut rg_rows = 0usize;
    let mut rg_spans = 0u64;
    let (mut min_ids, mut max_ids) = (Vec::new(), Vec::new());
    let mut ids: Vec<TraceId> = Vec::new();
    let (mut start, mut end, mut total_spans) = (u64::MAX, 0u64, 0u64);
    let mut slice = None;
    for t in traces {
        let SlicedTrace { slice: s, id, rows } = t?;
        if slice != Some(s) {
            if rg_rows > 0 {
                flush(&mut rg, rg_rows, rg_spans)?;
                min_ids.push(ids[ids.len() - rg_rows]);
                max_ids.extend(ids.last().copied());
                rg_rows = 0;
                rg_spans = 0;
            }
            slice = Some(s);
        } else if let Some(prev) = ids.last() {
            if *prev >= id {
                return Err(BlockError::NotSorted {
                    prev: *prev,
                    next: id,
                });
            }
        }
        ids.push(id);
        let s = push_rows(&mut rg, id, &rows, tags.as_deref_mut())?;
        drop(rows);
        rg_rows += 1;
        if s.spans > 0 {
            start = start.min(s.start);
            end = end.max(s.end);
        }
        total_spans += s.spans;
        rg_spans += s.spans;
        if rg.est_bytes >= cfg.row_group_size_bytes {
            flush(&mut rg, rg_rows, rg_spans)?;
            min_ids.push(ids[ids.len() - rg_rows]);
            max_ids.extend(ids.last().copied());
            rg_rows = 0;
            rg_spans = 0;
        }
    }
    if ids.is_empty() {
        return Err(BlockError::Empty);
    }
    if rg_rows > 0 {
        flush(&mut rg, rg_rows, rg_spans)?;
        min_ids.push(ids[ids.len() - rg_rows]);
        max_ids.extend(ids.last().copied());
    }
    drop(rg);
    let mut writer = writer.expect("a block with traces flushed a row group");
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
    let index = RowGroupIndex::with_min_ids(min_ids, max_ids)?;

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
