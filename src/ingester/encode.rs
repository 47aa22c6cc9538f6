//! What a cut's block is made of: its traces in block order (time slices, then IDs), read
//! into columns from their encoded fragments one at a time as the encoder pulls them, and
//! the encoding into a staged file.

use std::io::Write;

use uuid::Uuid;

use super::flush::FlushError;
use super::head::LiveTrace;
use crate::backend::scratch::{ScratchError, ScratchFile};
use crate::block::{
    self, BlockConfig, BlockError, BlockParts, SlicePlan, SlicedTrace, TagCollector, TagSummary,
    TraceRows,
};
use crate::metrics::StageTimer;
use crate::model::{Fragments, TenantId, TraceId, TraceMap};

/// A cut's traces in block order: (time slice, ID, fragments). The ID is a copy, so the
/// sort compares values in the vector instead of reaching into the trace map for each.
pub(super) type CutOrder<'a> = Vec<(u32, TraceId, &'a Fragments)>;

/// The cut's traces for the block encoder, in `ids` order, as their encoded fragments: the
/// encoder reads each into columns (and the tag summary) as it pulls it, so only the row
/// group being built is held as columns.
fn cut_inputs<'a, 'm>(
    ids: &'a [(u32, TraceId, &'a Fragments)],
    cpu: &'a mut StageTimer<'m>,
) -> impl Iterator<Item = Result<SlicedTrace, BlockError>> + use<'a, 'm> {
    ids.iter().enumerate().map(move |(i, &(slice, id, data))| {
        if i % 1024 == 1023 {
            cpu.charge();
        }
        // Traces are read in ID order from all over the heap, each a chain of misses (its
        // chunk list, then its bytes): ask for the next ones while this one is encoded.
        if let Some((_, _, f)) = ids.get(i + 2 * PREFETCH_AHEAD) {
            prefetch(f.chunks().as_ptr().cast());
        }
        if let Some((_, _, f)) = ids.get(i + PREFETCH_AHEAD) {
            for c in f.chunks() {
                // The first lines of each chunk; the hardware streams the rest.
                for off in (0..c.len().min(256)).step_by(64) {
                    prefetch(c.as_ptr().wrapping_add(off));
                }
            }
        }
        Ok(SlicedTrace {
            slice,
            id,
            rows: TraceRows::Encoded(data.clone()),
        })
    })
}

/// How many traces ahead of the encoder their bytes are prefetched (their chunk lists
/// twice as far): a trace takes microseconds to encode, a miss a fraction of one.
const PREFETCH_AHEAD: usize = 4;

/// A hint that `p` will be read soon.
#[inline(always)]
fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint: it never faults and reads nothing, whatever the
    // address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Encodes a cut's block with its data.parquet streamed to `sink` (a staged file, or a
/// `Vec` when there is none).
pub(super) fn encode_cut<W: Write + Send>(
    tenant: &TenantId,
    block_id: Uuid,
    ids: &[(u32, TraceId, &Fragments)],
    cfg: &BlockConfig,
    cpu: &mut StageTimer<'_>,
    sink: &mut W,
) -> Result<(BlockParts, TagSummary), BlockError> {
    let mut tags = TagCollector::default();
    let inputs = cut_inputs(ids, cpu);
    let parts =
        block::encode_block_sliced_into(tenant, block_id, 0, inputs, cfg, Some(&mut tags), sink)?;
    Ok((parts, tags.finish()))
}

/// [`encode_cut`] into `file`, flushed.
pub(super) fn encode_cut_to_file(
    tenant: &TenantId,
    block_id: Uuid,
    ids: &[(u32, TraceId, &Fragments)],
    cfg: &BlockConfig,
    cpu: &mut StageTimer<'_>,
    file: &ScratchFile,
) -> Result<(BlockParts, TagSummary), FlushError> {
    let mut sink = ScratchFile::create(file.path())?;
    let out = encode_cut(tenant, block_id, ids, cfg, cpu, &mut sink)?;
    sink.flush().map_err(|source| ScratchError {
        path: file.path().to_owned(),
        source,
    })?;
    Ok(out)
}

/// The IDs of a cut's traces in block order: by time slice of their earliest span (about
/// one slice per row group of data), by ID within a slice. The fragments' byte sizes weigh
/// the slices, so no trace is decoded to plan them.
pub(super) fn sliced_ids<'a>(
    traces: Option<&'a TraceMap<LiveTrace>>,
    cfg: &BlockConfig,
) -> CutOrder<'a> {
    let Some(traces) = traces else {
        return Vec::new();
    };
    let bytes: u64 = traces.values().map(|l| l.data.len() as u64).sum();
    let plan = if bytes > cfg.newest_slice_bytes() as u64 && cfg.max_time_slices > 1 {
        let mut samples: Vec<(u64, u64)> = traces
            .values()
            .map(|l| (l.data.start(), l.data.len() as u64))
            .collect();
        SlicePlan::newest_small(
            &mut samples,
            bytes,
            cfg.newest_slice_bytes(),
            cfg.max_time_slices,
        )
    } else {
        SlicePlan::single()
    };
    let mut ids: CutOrder<'a> = traces
        .iter()
        .map(|(id, l)| (plan.slice_of(l.data.start()), *id, &l.data))
        .collect();
    ids.sort_unstable_by_key(|&(slice, id, _)| (slice, id));
    ids
}

#[cfg(test)]
mod slice_tests {
    use super::LiveTrace;
    use crate::block::BlockConfig;
    use crate::model::{Fragments, Span, TraceId, TraceMap};

    fn fragment(start: u64) -> Fragments {
        let span = Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            start_time_unix_nano: start,
            end_time_unix_nano: start + 10,
            name: "x".repeat(200),
            ..Span::default()
        };
        let mut f = Fragments::default();
        f.push(None, "", None, "", &[&span]);
        f
    }

    /// A cut over several row groups of data goes in time slices: by start, ID order inside.
    #[test]
    fn a_large_cut_is_ordered_by_time_slice_then_id() {
        let now = std::time::Instant::now();
        let traces: TraceMap<LiveTrace> = (0..400u32)
            .map(|i| {
                let mut id = [0u8; 16];
                id[..4].copy_from_slice(&(i.wrapping_mul(2_654_435_761)).to_be_bytes());
                let data = fragment(1_000 + u64::from(i) * 1_000);
                let live = LiveTrace {
                    data,
                    first_seen: now,
                    last_seen: now,
                    first_segment: 0,
                };
                (TraceId(id), live)
            })
            .collect();
        let bytes: usize = traces.values().map(|l| l.data.len()).sum();
        let d = BlockConfig::default();
        let cfg = BlockConfig {
            // Newest slices of a quarter of the data.
            row_group_size_bytes: (bytes / 4 + 1)
                * (d.row_group_size_bytes / d.newest_slice_bytes()),
            ..d
        };
        let ids = super::sliced_ids(Some(&traces), &cfg);
        assert_eq!(ids.len(), 400);
        // Four units of data: the newest two slices one unit each, the oldest the rest.
        let mut per = std::collections::BTreeMap::<u32, usize>::new();
        for (s, id, f) in &ids {
            *per.entry(*s).or_default() += 1;
            assert!(
                std::ptr::eq(*f, &traces[id].data),
                "each ID with its own fragments"
            );
        }
        let per: Vec<usize> = per.into_values().collect();
        assert_eq!(per.len(), 3, "{per:?}");
        assert!(
            per[0].abs_diff(200) <= 1 && per[2].abs_diff(100) <= 1,
            "{per:?}"
        );
        for w in ids.windows(2) {
            assert!(
                (w[0].0, w[0].1) < (w[1].0, w[1].1),
                "not (slice, id) ascending"
            );
            // A later slice never holds an earlier start.
            if w[0].0 < w[1].0 {
                assert!(w[0].2.start() < w[1].2.start());
            }
        }
        // Small cuts stay one slice, sorted by ID.
        let one = super::sliced_ids(Some(&traces), &BlockConfig::default());
        assert!(one.iter().all(|(s, _, _)| *s == 0));
        assert!(one.windows(2).all(|w| w[0].1 < w[1].1));
    }
}
