//! The blocks of a search as one queue of row groups, newest first across every block.
//!
//! Blocks of the last minutes overlap in time (each cut holds traces of the whole window),
//! so the newest traces sit in the newest slice of every block. Searched block by block,
//! each block would hunt for `limit` hits of its own; here the row groups of all opened
//! blocks wait in one queue ordered by their latest trace start, the hits of every source
//! hold one set, and the search stops once `limit` held traces start after every trace
//! left: for Grafana's limit 20 about one newest slice per block. Blocks are opened
//! (footer read, row groups planned) newest end first, only while one could hold a trace
//! newer than the queue's head, so a long range with many blocks reads few footers.

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

use super::{hold, kth_newest, Partial, SearchParams};

/// What searching the blocks produced.
pub(super) struct BlocksOutcome {
    pub(super) partials: Vec<Partial>,
    /// Blocks searched without an error (a block skipped by the early stop is not).
    pub(super) completed: u64,
    /// Why blocks could not be read, one per block.
    pub(super) failed: Vec<QueryError>,
}

/// A row group waiting to be read, ordered by its latest trace start (newest first), then
/// by block (newer end first) and row group.
struct Queued {
    block: usize,
    read: block::RowGroupRead,
}

impl Queued {
    fn key(&self) -> (u64, std::cmp::Reverse<usize>, std::cmp::Reverse<usize>) {
        (
            self.read.max_start,
            std::cmp::Reverse(self.block),
            std::cmp::Reverse(self.read.rg),
        )
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
}

impl Querier {
    /// Searches `blocks` (sorted newest end first) with `held` the hits found so far
    /// (memory's), earliest start per trace.
    pub(super) async fn search_blocks(
        &self,
        tenant: &TenantId,
        blocks: Vec<Arc<BlockMeta>>,
        params: Arc<SearchParams>,
        columns: Arc<block::SearchColumns>,
        limit: usize,
        mut held: HashMap<TraceId, u64>,
    ) -> BlocksOutcome {
        let workers = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(1, 8);
        // A core's worth of row groups per block, up to `concurrent_blocks` blocks: a full
        // scan over a remote bucket waits on I/O more than on the cores, but every row group
        // in flight holds its column chunks, and with more than that in flight on two cores
        // a full scan took 15% longer.
        let cap = self.concurrent_blocks.min(blocks.len()).max(1) * workers;
        // With a limit the newest row groups go first, a core's worth; the width doubles
        // with each round that ends short of `limit` hits (a selective query reads on).
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
        let mut out = BlocksOutcome {
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
            if kth.is_some_and(|k| queue.peek().is_some_and(|q| q.read.max_start < k)) {
                // Ordered by latest start: every row group left starts before the held traces.
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
                        .map_or(opening.is_empty() && running == 0, |q| {
                            end >= q.read.max_start
                        });
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
            // Read row groups newest first; with a limit, not before every block that may
            // hold newer ones has been opened.
            let frontier = opening
                .iter()
                .map(|&i| blocks[i].end_time)
                .chain(blocks.get(next_block).map(|m| m.end_time))
                .max();
            while running < width {
                let Some(top) = queue.peek() else { break };
                if limit > 0 && frontier.is_some_and(|f| top.read.max_start < f) {
                    break;
                }
                let Queued { block: i, read } = queue.pop().expect("peeked");
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
                            queue.extend(reads.into_iter().map(|read| Queued { block: i, read }));
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
        out
    }
}
