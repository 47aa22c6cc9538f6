//! The streaming merge: every input block is read one row group at a time (one ranged GET),
//! decoded a few hundred traces at a time, and merged on trace ID into the output block.
//! A sliced input is read as one cursor per time slice (each is sorted by ID); a large
//! output is written in time slices through spill files (`spill`).
//! Runs on a blocking thread; fetches go through the runtime handle.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use std::path::Path;

use parquet::file::metadata::ParquetMetaData;
use parquet::file::statistics::Statistics;
use prost::Message;
use tokio::runtime::Handle;

use super::spill::Spill;
use super::CompactError;
use crate::backend::Backend;
use crate::block::{
    self, BlockConfig, BlockMeta, BlockParts, SlicePlan, TagCollector, TagSummary, TraceInput,
};
use crate::model::{Combiner, ResourceSpans, TenantId, TraceId};

/// Traces decoded at once from one row group.
const BATCH_ROWS: usize = 256;

/// Traces held decoded across all cursors: sliced inputs bring one cursor per slice, and
/// 64 cursors of 256 decoded traces each held most of a gigabyte.
const DECODED_TRACES: usize = 1024;

/// What a merge produced besides the block.
#[derive(Debug, Default, Clone)]
pub(crate) struct MergeStats {
    pub(crate) spans_written: u64,
    pub(crate) spans_discarded: u64,
    pub(crate) duplicate_spans: u64,
    pub(crate) input_bytes: u64,
}

/// One run of an input block's row groups (sorted by ID throughout: the whole block, or one
/// time slice of a sliced block), read row group by row group.
struct Cursor {
    block: uuid::Uuid,
    backend: Backend,
    handle: Handle,
    data_key: String,
    size: u64,
    md: Arc<ParquetMetaData>,
    rgs: Vec<usize>,
    next: usize,
    batch_rows: usize,
    current: Option<block::RowGroupTraces>,
    fetched: u64,
}

impl Cursor {
    /// One cursor per run of the input. Errors name the input, so the compactor can set
    /// that block aside.
    fn open(
        backend: &Backend,
        handle: &Handle,
        tenant: &TenantId,
        meta: &BlockMeta,
    ) -> Result<Vec<Self>, CompactError> {
        Self::open_inner(backend, handle, tenant, meta).map_err(|e| CompactError::Input {
            block: meta.block_id,
            source: Box::new(e),
        })
    }

    fn open_inner(
        backend: &Backend,
        handle: &Handle,
        tenant: &TenantId,
        meta: &BlockMeta,
    ) -> Result<Vec<Self>, CompactError> {
        let data_key = block::data_key(tenant, meta.block_id);
        let range = block::footer_fetch_range(meta);
        let tail = handle.block_on(backend.get_range(&data_key, range.clone()))?;
        let fetched = tail.len() as u64;
        let md = block::decode_footer(tail, meta.size)?;
        let runs = id_runs(&md);
        Ok(runs
            .into_iter()
            .enumerate()
            .map(|(i, rgs)| Self {
                block: meta.block_id,
                backend: backend.clone(),
                handle: handle.clone(),
                data_key: data_key.clone(),
                size: meta.size,
                md: md.clone(),
                rgs,
                next: 0,
                batch_rows: BATCH_ROWS,
                current: None,
                // The footer is counted once per input.
                fetched: if i == 0 { fetched } else { 0 },
            })
            .collect())
    }

    fn next_trace(&mut self) -> Result<Option<TraceInput>, CompactError> {
        let block = self.block;
        self.next_inner().map_err(|e| CompactError::Input {
            block,
            source: Box::new(e),
        })
    }

    fn next_inner(&mut self) -> Result<Option<TraceInput>, CompactError> {
        loop {
            if let Some(cur) = self.current.as_mut() {
                match cur.next() {
                    Some(t) => return Ok(Some(t?)),
                    None => self.current = None,
                }
            }
            let Some(&rg) = self.rgs.get(self.next) else {
                return Ok(None);
            };
            self.next += 1;
            let range = block::row_group_byte_range(&self.md, rg)?;
            let bytes = self
                .handle
                .block_on(self.backend.get_range(&self.data_key, range.clone()))?;
            self.fetched += bytes.len() as u64;
            self.current = Some(block::row_group_traces(
                self.md.clone(),
                rg,
                bytes,
                range.start,
                self.size,
                self.batch_rows,
            )?);
        }
    }
}

/// The k-way merge of the inputs' traces: one trace per ID, fragments combined, duplicate
/// spans dropped, over-large traces cut.
struct Merger {
    cursors: Vec<Cursor>,
    /// The next trace of each cursor, keyed by ID (smallest first).
    heads: BinaryHeap<Reverse<(TraceId, usize)>>,
    pending: Vec<Option<TraceInput>>,
    max_bytes_per_trace: usize,
    stats: MergeStats,
    tags: TagCollector,
}

impl Merger {
    fn new(mut cursors: Vec<Cursor>, max_bytes_per_trace: usize) -> Result<Self, CompactError> {
        let mut heads = BinaryHeap::new();
        let mut pending = Vec::with_capacity(cursors.len());
        for (i, c) in cursors.iter_mut().enumerate() {
            let t = c.next_trace()?;
            if let Some(t) = &t {
                heads.push(Reverse((t.id, i)));
            }
            pending.push(t);
        }
        Ok(Self {
            cursors,
            heads,
            pending,
            max_bytes_per_trace,
            stats: MergeStats::default(),
            tags: TagCollector::default(),
        })
    }

    /// Takes the pending trace of cursor `i` and queues its next one.
    fn take(&mut self, i: usize) -> Result<TraceInput, CompactError> {
        let t = self.pending[i]
            .take()
            .ok_or_else(|| CompactError::Internal("merge cursor has no pending trace".into()))?;
        let next = self.cursors[i].next_trace()?;
        if let Some(n) = &next {
            if n.id <= t.id {
                return Err(block::BlockError::NotSorted {
                    prev: t.id,
                    next: n.id,
                }
                .into());
            }
            self.heads.push(Reverse((n.id, i)));
        }
        self.pending[i] = next;
        Ok(t)
    }

    fn next_trace(&mut self) -> Result<Option<TraceInput>, CompactError> {
        loop {
            let Some(Reverse((id, i))) = self.heads.pop() else {
                return Ok(None);
            };
            let first = self.take(i)?;
            let mut others = Vec::new();
            while let Some(Reverse((next_id, j))) = self.heads.peek().copied() {
                if next_id != id {
                    break;
                }
                self.heads.pop();
                others.push(self.take(j)?);
            }
            let mut batches = if others.is_empty() {
                // Blocks hold each trace once, already combined.
                first.batches
            } else {
                let mut c = Combiner::new();
                c.add(first.batches);
                for o in others {
                    c.add(o.batches);
                }
                self.stats.duplicate_spans += c.duplicates() as u64;
                c.finish()
            };
            if self.max_bytes_per_trace > 0 {
                self.stats.spans_discarded += truncate(&mut batches, self.max_bytes_per_trace);
            }
            let spans = crate::model::span_count(&batches) as u64;
            if spans == 0 {
                continue;
            }
            self.stats.spans_written += spans;
            self.tags.add_trace(&batches);
            return Ok(Some(TraceInput { id, batches }));
        }
    }
}

/// Keeps spans, in order, while the trace stays within `max_bytes` (protobuf-encoded, as the
/// distributor measures traces); returns how many spans were dropped.
pub(crate) fn truncate(batches: &mut Vec<ResourceSpans>, max_bytes: usize) -> u64 {
    let total: usize = batches.iter().map(Message::encoded_len).sum();
    if total <= max_bytes {
        return 0;
    }
    let mut used = 0usize;
    let mut dropped = 0u64;
    for rs in batches.iter_mut() {
        used += rs.resource.as_ref().map_or(0, Message::encoded_len);
        for ss in &mut rs.scope_spans {
            used += ss.scope.as_ref().map_or(0, Message::encoded_len);
            let mut keep = 0;
            for s in &ss.spans {
                let len = s.encoded_len();
                if used + len > max_bytes {
                    break;
                }
                used += len;
                keep += 1;
            }
            dropped += (ss.spans.len() - keep) as u64;
            ss.spans.truncate(keep);
        }
        rs.scope_spans.retain(|ss| !ss.spans.is_empty());
    }
    batches.retain(|rs| !rs.scope_spans.is_empty());
    dropped
}

/// The merger's next trace for the encoder; an error is kept in `failed` and ends the
/// stream.
fn pull(
    merger: &mut Merger,
    failed: &mut Option<CompactError>,
) -> Option<Result<TraceInput, block::BlockError>> {
    if failed.is_some() {
        return None;
    }
    match merger.next_trace() {
        Ok(Some(t)) => Some(Ok(t)),
        Ok(None) => None,
        Err(e) => {
            let msg = e.to_string();
            *failed = Some(e);
            Some(Err(block::BlockError::Input(msg)))
        }
    }
}

/// The row-group runs of a block that are sorted by ID throughout: the whole block when
/// it is, else one per time slice (a row group that does not start above the previous
/// one's largest ID starts a run). Without trace_id statistics, the whole block.
fn id_runs(md: &ParquetMetaData) -> Vec<Vec<usize>> {
    let n = md.num_row_groups();
    let bounds = (0..n)
        .map(|rg| match md.row_group(rg).column(0).statistics()? {
            Statistics::FixedLenByteArray(s) => {
                Some((s.min_opt()?.data().to_vec(), s.max_opt()?.data().to_vec()))
            }
            _ => None,
        })
        .collect::<Option<Vec<_>>>();
    let Some(bounds) = bounds else {
        return vec![(0..n).collect()];
    };
    let mut runs: Vec<Vec<usize>> = Vec::new();
    for rg in 0..n {
        match runs.last_mut() {
            Some(run) if bounds[rg].0 > bounds[run[run.len() - 1]].1 => run.push(rg),
            _ => runs.push(vec![rg]),
        }
    }
    runs
}

/// Where the output's time slices go ([`SlicePlan::newest_small`]): weighted quantiles of
/// the inputs' trace starts, taken from each row group's start-time statistics (its bytes
/// spread evenly between its earliest and latest trace start).
fn slice_plan(inputs: &[Arc<ParquetMetaData>], cfg: &BlockConfig) -> SlicePlan {
    const POINTS: u64 = 8;
    let mut samples = Vec::new();
    let mut bytes = 0u64;
    for rgm in inputs.iter().flat_map(|md| md.row_groups()) {
        let weight = u64::try_from(rgm.total_byte_size()).unwrap_or(0);
        bytes += weight;
        let (Some(lo), Some(hi)) = block::int_stats(rgm, block::paths::START_TIME) else {
            continue;
        };
        let hi = hi.max(lo);
        for p in 0..POINTS {
            let at = lo + ((u128::from(hi - lo) * u128::from(p)) / u128::from(POINTS)) as u64;
            samples.push((at, weight / POINTS + 1));
        }
    }
    SlicePlan::newest_small(
        &mut samples,
        bytes,
        cfg.newest_slice_bytes(),
        cfg.max_time_slices,
    )
}

/// A trace's earliest span start (unix ns); `u64::MAX` with no spans.
fn trace_start(batches: &[ResourceSpans]) -> u64 {
    batches
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| &ss.spans)
        .map(|s| s.start_time_unix_nano)
        .min()
        .unwrap_or(u64::MAX)
}

/// Merges `inputs` into one block at `level`, its data.parquet written to `sink`, with the
/// tag summary of what it wrote. Blocking: call on a blocking thread.
#[allow(clippy::too_many_arguments)]
pub(crate) fn merge_blocks<W: std::io::Write + Send>(
    backend: &Backend,
    handle: &Handle,
    tenant: &TenantId,
    inputs: &[Arc<BlockMeta>],
    output_id: uuid::Uuid,
    level: u32,
    max_bytes_per_trace: usize,
    cfg: &BlockConfig,
    sink: &mut W,
    spill_base: &Path,
) -> Result<(BlockParts, TagSummary, MergeStats), CompactError> {
    let (mut cursors, mut footers) = (Vec::new(), Vec::new());
    for m in inputs {
        let runs = Cursor::open(backend, handle, tenant, m)?;
        footers.extend(runs.first().map(|c| c.md.clone()));
        cursors.extend(runs);
    }
    let per_cursor = (DECODED_TRACES / cursors.len().max(1)).clamp(16, BATCH_ROWS);
    for c in &mut cursors {
        c.batch_rows = per_cursor;
    }
    let plan = slice_plan(&footers, cfg);
    let mut merger = Merger::new(cursors, max_bytes_per_trace)?;
    // The encoder pulls traces; an I/O error is kept aside so its kind survives.
    let mut failed: Option<CompactError> = None;
    let encoded = if plan.len() <= 1 {
        let traces = std::iter::from_fn(|| pull(&mut merger, &mut failed));
        block::encode_block_sorted_into(tenant, output_id, level, traces, cfg, sink)
    } else {
        let mut spill = Spill::create(spill_base, plan.len())?;
        while let Some(t) = merger.next_trace()? {
            let slice = plan.slice_of(trace_start(&t.batches));
            spill.push(slice, t)?;
        }
        let traces = spill.into_reader()?;
        block::encode_block_sliced_into(tenant, output_id, level, traces, cfg, None, sink)
    };
    if let Some(e) = failed {
        return Err(e);
    }
    let encoded = encoded?;
    let mut stats = merger.stats;
    stats.input_bytes = merger.cursors.iter().map(|c| c.fetched).sum();
    Ok((encoded, merger.tags.finish(), stats))
}
