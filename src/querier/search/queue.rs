//! The sources of a search as one queue, newest first: the row groups of every block and
//! the live traces in chunks.
//!
//! Blocks of the last minutes overlap in time with each other and with memory (each cut
//! holds traces of the whole window), so the newest traces are spread over the newest
//! slice of every block and the newest live traces. Searched source by source, each would
//! hunt for `limit` hits of its own; here every row group of the opened blocks and the next
//! chunk of live traces wait in one queue ordered by their latest trace start, the hits of
//! all of them hold one set, and the search stops once `limit` held traces start after
//! everything left: for Grafana's limit 20 about one newest slice per block and a chunk of
//! memory. Blocks are opened (footer read, row groups planned) newest end first, only while
//! one could hold a trace newer than the queue's head, so a long range with many blocks
//! reads few footers.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use tracing::warn;

use crate::block::{self, BlockMeta};
use crate::model::{TenantId, TraceId};
use crate::querier::{Querier, QueryError};

use super::memory::LiveCursor;
use super::{hold, kth_newest, Partial, SearchParams};

/// What searching the sources produced.
pub(super) struct Searched {
    pub(super) partials: Vec<Partial>,
    /// Blocks searched without an error (a block skipped by the early stop is not).
    pub(super) completed: u64,
    /// Why blocks could not be read, one per block.
    pub(super) failed: Vec<QueryError>,
}

/// A source waiting to be read, ordered by `rank`, the latest start of a trace in it
/// (newest first), then live traces before row groups, then by block (newer end first)
/// and row group.
struct Queued {
    rank: u64,
    work: Work,
}

enum Work {
    /// The cursor's next chunk of live traces.
    Live,
    RowGroup {
        block: usize,
        read: block::RowGroupRead,
    },
}

impl Queued {
    fn key(
        &self,
    ) -> (
        u64,
        bool,
        std::cmp::Reverse<usize>,
        std::cmp::Reverse<usize>,
    ) {
        match &self.work {
            Work::Live => (self.rank, true, std::cmp::Reverse(0), std::cmp::Reverse(0)),
            Work::RowGroup { block, read } => (
                self.rank,
                false,
                std::cmp::Reverse(*block),
                std::cmp::Reverse(read.rg),
            ),
        }
    }
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Queued {}

impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Queued {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

type Planned = Option<(
    Arc<parquet::file::metadata::ParquetMetaData>,
    Vec<block::RowGroupRead>,
)>;

enum Step {
    /// A block's footer read and its row groups planned; None when the block vanished.
    Opened(usize, Result<Planned, QueryError>),
    /// One row group evaluated; None when the block vanished (compacted) meanwhile.
    Read(usize, Result<Option<Partial>, QueryError>),
    /// One chunk of live traces evaluated.
    Live(Result<Partial, QueryError>),
}

impl Querier {
    /// Searches the live traces of `live` and `blocks` (sorted newest end first).
    pub(super) async fn search_sources(
        &self,
        tenant: &TenantId,
        mut live: Option<LiveCursor>,
        blocks: Vec<Arc<BlockMeta>>,
        params: Arc<SearchParams>,
        columns: Arc<block::SearchColumns>,
        limit: usize,
    ) -> Result<Searched, QueryError> {
        // Newest start per held trace (the earliest of its parts), for the early stop.
        let mut held: HashMap<TraceId, u64> = HashMap::new();
        let workers = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(1, 8);
        // A core's worth of row groups per block, up to `concurrent_blocks` blocks, as when
        // blocks were searched one by one: a full scan over a remote bucket waits on I/O
        // more than on the cores, but every row group in flight holds its column chunks.
        let cap = self.concurrent_blocks.min(blocks.len()).max(1) * workers;
        // With a limit the newest source goes alone, and the width doubles with each round
        // that ends short of `limit` hits (a selective query reads on).
        let mut width = if limit > 0 { 1 } else { cap };
        let keys: Vec<String> = blocks
            .iter()
            .map(|m| block::data_key(tenant, m.block_id))
            .collect();
        let mut next_block = 0;
        let mut opening: Vec<usize> = Vec::new();
        let mut queue: BinaryHeap<Queued> = BinaryHeap::new();
        let mut footers: HashMap<usize, Arc<parquet::file::metadata::ParquetMetaData>> =
            HashMap::new();
        let mut running = 0usize;
        let mut steps: FuturesUnordered<BoxFuture<'_, Step>> = FuturesUnordered::new();
        if let Some(newest) = live.as_mut().and_then(LiveCursor::peek) {
            queue.push(Queued {
                rank: newest,
                work: Work::Live,
            });
        }
        let mut out = Searched {
            partials: Vec::new(),
            completed: 0,
            failed: Vec::new(),
        };
        let mut broken: HashSet<usize> = HashSet::new();
        loop {
            let kth = kth_newest(&held, limit);
            if kth.is_some_and(|k| next_block < blocks.len() && blocks[next_block].end_time < k) {
                // Sorted by end: none of the blocks left holds a trace that starts late enough.
                next_block = blocks.len();
            }
            if kth.is_some_and(|k| queue.peek().is_some_and(|q| q.rank < k)) {
                // Ordered by latest start: every source left starts before the held traces.
                queue.clear();
            }
            // Open blocks: all of them for a full search; with a limit, the next one only
            // while it may hold traces newer than the queue's head, or when nothing else
            // is left to do.
            while next_block < blocks.len() && opening.len() < self.concurrent_blocks {
                let end = blocks[next_block].end_time;
                let wanted = limit == 0
                    || queue
                        .peek()
                        .map_or(opening.is_empty() && running == 0, |q| end >= q.rank);
                if !wanted {
                    break;
                }
                let (i, meta, key) = (next_block, blocks[next_block].clone(), &keys[next_block]);
                let (params, columns) = (params.clone(), columns.clone());
                steps.push(
                    async move {
                        let planned = async {
                            let Some(footer) = self.footer(key, &meta).await? else {
                                return Ok(None);
                            };
                            let range = params.range;
                            let reads = columns
                                .plan(&footer, |s, e| range.is_none_or(|r| r.overlaps_nanos(s, e)))
                                .map_err(|source| QueryError::Block {
                                    block: meta.block_id,
                                    source,
                                })?;
                            Ok(Some((footer, reads)))
                        };
                        Step::Opened(i, planned.await)
                    }
                    .boxed(),
                );
                opening.push(i);
                next_block += 1;
            }
            // Read sources newest first; with a limit, not before every block that may hold
            // newer traces has been opened.
            let frontier = opening
                .iter()
                .map(|&i| blocks[i].end_time)
                .chain(blocks.get(next_block).map(|m| m.end_time))
                .max();
            while running < width {
                let Some(top) = queue.peek() else { break };
                if limit > 0 && frontier.is_some_and(|f| top.rank < f) {
                    break;
                }
                let Queued { work, .. } = queue.pop().expect("peeked");
                let (i, read) = match work {
                    Work::RowGroup { block, read } => (block, read),
                    Work::Live => {
                        let Some(cursor) = live.as_mut() else {
                            continue;
                        };
                        let Some(chunk) = cursor.next(self, tenant) else {
                            continue;
                        };
                        // The chunk after it waits its turn in the queue.
                        if let Some(newest) = cursor.peek() {
                            queue.push(Queued {
                                rank: newest,
                                work: Work::Live,
                            });
                        }
                        let (params, columns) = (params.clone(), columns.clone());
                        steps.push(
                            Self::evaluate_live(chunk, params, columns)
                                .map(Step::Live)
                                .boxed(),
                        );
                        running += 1;
                        continue;
                    }
                };
                if broken.contains(&i) {
                    continue;
                }
                let Some(footer) = footers.get(&i).cloned() else {
                    continue;
                };
                let (meta, key) = (&blocks[i], &keys[i]);
                let (params, columns) = (params.clone(), columns.clone());
                steps.push(
                    async move {
                        let r = self
                            .search_row_group(key, meta, footer, params, columns, read)
                            .await;
                        Step::Read(i, r)
                    }
                    .boxed(),
                );
                running += 1;
            }
            let Some(step) = steps.next().await else {
                break;
            };
            match step {
                Step::Opened(i, r) => {
                    opening.retain(|&o| o != i);
                    match r {
                        Ok(Some((footer, reads))) => {
                            footers.insert(i, footer);
                            queue.extend(reads.into_iter().map(|read| Queued {
                                rank: read.max_start,
                                work: Work::RowGroup { block: i, read },
                            }));
                            out.completed += 1;
                        }
                        // Compacted away since the listing: its traces are in a newer block.
                        Ok(None) => out.completed += 1,
                        Err(e) => {
                            warn!(tenant = %tenant, error = %e, "search skipped a block it could not read");
                            broken.insert(i);
                            out.failed.push(e);
                        }
                    }
                }
                Step::Live(r) => {
                    running -= 1;
                    let part = r?;
                    if limit > 0 {
                        hold(&mut held, &part);
                        if held.len() < limit {
                            if let Some(cursor) = live.as_mut() {
                                cursor.widen();
                            }
                            if running == 0 {
                                width = (width * 2).min(cap);
                            }
                        }
                    }
                    out.partials.push(part);
                }
                Step::Read(i, r) => {
                    running -= 1;
                    match r {
                        Ok(Some(part)) => {
                            if limit > 0 {
                                hold(&mut held, &part);
                                // Widened by rounds, not per row group: widened on each
                                // completion, a query with few hits had every row group
                                // in flight before its first `limit` were held.
                                if held.len() < limit && running == 0 {
                                    width = (width * 2).min(cap);
                                }
                            }
                            out.partials.push(part);
                        }
                        Ok(None) => {}
                        // An unreadable block makes the search partial, as in Tempo: the
                        // other blocks' hits are returned and completedJobs stays below
                        // totalJobs.
                        Err(e) => {
                            if broken.insert(i) {
                                warn!(tenant = %tenant, error = %e, "search skipped a block it could not read");
                                out.completed = out.completed.saturating_sub(1);
                                out.failed.push(e);
                            }
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}
