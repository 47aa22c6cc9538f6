//! Search over the live traces (this node's, and those other nodes own): newest first, so
//! a `limit` stops the work.
//!
//! Every live trace knows its time range without being decoded
//! ([`crate::model::Fragments::start`]), so the search first takes only IDs and times
//! ([`crate::ingester::LiveKey`]), pruned by the request's range, and orders them newest
//! first (trace ID as tie-break, the order the answer uses), a few chunks ahead of what it
//! evaluates. Each chunk waits in the search's queue beside the blocks' row groups
//! (`queue.rs`), ranked by its newest trace; once `limit` hits are held and every trace
//! left starts earlier, no chunk more is read. Grafana's default search (limit 20 over the
//! last minutes) then touches the data of a few hundred traces instead of every live one.

use std::collections::HashMap;
use std::sync::Arc;

use crate::block;
use crate::ingester::LiveKey;
use crate::model::{Fragments, TenantId, TraceId};
use crate::querier::{Querier, QueryError};
use crate::traceql::{engine, WireTrace};

use super::{Partial, SearchParams};

/// The first chunk's size in traces (at least); each later chunk doubles it while `limit`
/// hits are not yet held, so a selective query reaches the whole set in a few chunks while
/// a broad one stops after the first. Small under test, so a test with tens of traces sees
/// several chunks.
const FIRST_CHUNK: usize = if cfg!(test) { 16 } else { 64 };

/// The live traces of a search, handed out newest first in chunks. Each chunk waits in the
/// search's queue beside the blocks' row groups, ranked by the start of its newest trace:
/// memory is read only as far back as the blocks are.
pub(super) struct LiveCursor {
    keys: Vec<LiveKey>,
    /// Other nodes' live traces (their partitions), held whole.
    remote: HashMap<TraceId, Fragments>,
    /// Keys handed out, and keys ordered (newest first) so far.
    done: usize,
    ordered: usize,
    chunk: usize,
}

/// One chunk of live traces to evaluate, newest first.
pub(super) type LiveChunk = Vec<(TraceId, Fragments)>;

impl LiveCursor {
    /// The start of the newest trace not yet handed out, ordering a few chunks ahead.
    pub(super) fn peek(&mut self) -> Option<u64> {
        if self.done >= self.keys.len() {
            return None;
        }
        let end = (self.done + self.chunk).min(self.keys.len());
        if end > self.ordered {
            // Ordered ahead by a few chunks: each selection passes over every key left.
            let n = ((end - self.ordered) * 4).min(self.keys.len() - self.ordered);
            next_newest(&mut self.keys[self.ordered..], n);
            self.ordered += n;
        }
        Some(self.keys[self.done].start)
    }

    /// The next chunk, its fragments taken from the ingester (a handle on each trace's
    /// bytes, under its lock) and merged with other nodes'.
    pub(super) fn next(&mut self, querier: &Querier, tenant: &TenantId) -> Option<LiveChunk> {
        self.peek()?;
        let end = (self.done + self.chunk).min(self.keys.len());
        let ids: Vec<TraceId> = self.keys[self.done..end].iter().map(|k| k.id).collect();
        self.done = end;
        let mut data = match &querier.ingester {
            Some(ing) => ing.live_fragments(tenant, &ids),
            None => Vec::new(),
        };
        if !self.remote.is_empty() {
            data = with_remote(&ids, data, &self.remote);
        }
        Some(data)
    }

    /// The next chunk grows: the held hits are still short of the limit.
    pub(super) fn widen(&mut self) {
        self.chunk = self.chunk.saturating_mul(2);
    }
}

impl Querier {
    /// The live traces (this node's, and `remote`, other nodes') a search may match: pruned
    /// by the request's range and the query's span-duration bounds without decoding. None
    /// when there is no memory to search.
    pub(super) fn live_cursor(
        &self,
        tenant: &TenantId,
        remote: Vec<(TraceId, Fragments)>,
        params: &SearchParams,
        columns: &block::SearchColumns,
        limit: usize,
    ) -> Option<LiveCursor> {
        if self.ingester.is_none() && remote.is_empty() {
            return None;
        }
        // Unknown times (start > end) are kept and judged once decoded; a trace too short
        // for the query's span-duration bound cannot match and is never fetched.
        let keep = |start: u64, end: u64| {
            (start > end || params.range.is_none_or(|r| r.overlaps_nanos(start, end)))
                && columns.envelope_possible(start, end)
        };
        // With other nodes' traces, a part here is judged once merged with its part there.
        let judge_here = remote.is_empty();
        let mut keys = match &self.ingester {
            Some(ing) => ing.live_keys(tenant, |s, e| !judge_here || keep(s, e)),
            None => Vec::new(),
        };
        // A trace both here and there (its partition just moved) is evaluated once, merged.
        let remote: HashMap<TraceId, Fragments> =
            remote.into_iter().fold(HashMap::new(), |mut m, (id, f)| {
                m.entry(id).or_default().extend(&f);
                m
            });
        if !remote.is_empty() {
            let mut at: HashMap<TraceId, usize> =
                keys.iter().enumerate().map(|(i, k)| (k.id, i)).collect();
            for (id, f) in &remote {
                match at.get(id) {
                    Some(&i) => {
                        keys[i].start = keys[i].start.min(f.start());
                        keys[i].end = keys[i].end.max(f.end());
                    }
                    None => {
                        at.insert(*id, keys.len());
                        keys.push(LiveKey {
                            id: *id,
                            start: f.start(),
                            end: f.end(),
                        });
                    }
                }
            }
            keys.retain(|k| keep(k.start, k.end));
        }
        let chunk = if limit == 0 {
            keys.len().max(1)
        } else {
            FIRST_CHUNK.max(limit * 2)
        };
        Some(LiveCursor {
            keys,
            remote,
            done: 0,
            ordered: 0,
            chunk,
        })
    }

    /// Evaluates a chunk of live traces, spread over the blocking pool; hits stay in the
    /// chunk's order (newest first).
    pub(super) async fn evaluate_live(
        chunk: LiveChunk,
        params: Arc<SearchParams>,
        columns: Arc<block::SearchColumns>,
    ) -> Result<Partial, QueryError> {
        let workers = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(1, 8);
        let batch = Arc::new(chunk);
        let per = batch.len().div_ceil(workers).max(1);
        let mut tasks = Vec::with_capacity(workers);
        let mut from = 0;
        while from < batch.len() {
            let to = (from + per).min(batch.len());
            let (batch, params, columns) = (batch.clone(), params.clone(), columns.clone());
            tasks.push(tokio::task::spawn_blocking(move || {
                evaluate_slice(&params, &columns, &batch[from..to])
            }));
            from = to;
        }
        let mut out = Partial::default();
        // Slices are joined in order, so the hits stay newest first.
        for t in tasks {
            let part = t.await.map_err(|e| QueryError::Task(e.to_string()))?;
            out.metrics.inspected_traces += part.metrics.inspected_traces;
            out.metrics.inspected_spans += part.metrics.inspected_spans;
            out.metrics.inspected_bytes += part.metrics.inspected_bytes;
            out.hits.extend(part.hits);
        }
        Ok(out)
    }
}

/// Newest start first, then trace ID: the order of the search answer.
fn newest_first(a: &LiveKey, b: &LiveKey) -> std::cmp::Ordering {
    b.start.cmp(&a.start).then_with(|| a.id.cmp(&b.id))
}

/// Moves the `n` newest of `keys` to its front, in order; the rest stay unordered. A limited
/// search orders only what it evaluates, not every live trace.
fn next_newest(keys: &mut [LiveKey], n: usize) {
    if n == 0 {
        return;
    }
    if n < keys.len() {
        keys.select_nth_unstable_by(n - 1, newest_first);
    }
    keys[..n].sort_unstable_by(newest_first);
}

/// This node's fragments of a round merged with other nodes' (in the round's order).
fn with_remote(
    ids: &[TraceId],
    local: Vec<(TraceId, Fragments)>,
    remote: &HashMap<TraceId, Fragments>,
) -> Vec<(TraceId, Fragments)> {
    let mut local: HashMap<TraceId, Fragments> = local.into_iter().collect();
    ids.iter()
        .filter_map(|id| {
            let mut data = local.remove(id);
            if let Some(r) = remote.get(id) {
                data.get_or_insert_with(Fragments::default).extend(r);
            }
            data.map(|d| (*id, d))
        })
        .collect()
}

fn evaluate_slice(
    params: &SearchParams,
    columns: &block::SearchColumns,
    live: &[(TraceId, Fragments)],
) -> Partial {
    let mut out = Partial::default();
    let query = engine::Prepared::new(&params.query);
    for (id, data) in live {
        // Lacking a string the query requires: cannot match, not decoded (nor counted as
        // inspected, as a pruned row group is not).
        if !columns.literals_possible(data.chunks()) {
            continue;
        }
        out.metrics.inspected_bytes += data.len() as u64;
        match WireTrace::new(data.chunks()) {
            Some(trace) => params.evaluate_wire(&query, *id, &trace, &mut out),
            // Bytes a decode would merge: decoded, as the structs are the reference.
            // Encoded by this process: a failure is a bug; skip rather than fail the search.
            None => {
                if let Ok(batches) = data.decode() {
                    params.evaluate(*id, &batches, &mut out);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_traces_are_ordered_newest_first_with_the_id_as_tie_break() {
        let key = |id: u8, start: u64| LiveKey {
            id: TraceId([id; 16]),
            start,
            end: start + 10,
        };
        let all = vec![
            key(3, 100),
            key(1, 300),
            key(2, 100),
            key(4, 200),
            key(5, 50),
        ];
        // A whole ordering, and the first two of a partial one.
        let mut keys = all.clone();
        next_newest(&mut keys, 5);
        let ids: Vec<u8> = keys.iter().map(|k| k.id.0[0]).collect();
        assert_eq!(ids, vec![1, 4, 2, 3, 5]);
        let mut keys = all;
        next_newest(&mut keys, 2);
        let ids: Vec<u8> = keys[..2].iter().map(|k| k.id.0[0]).collect();
        assert_eq!(ids, vec![1, 4]);
        next_newest(&mut keys[2..], 2);
        let ids: Vec<u8> = keys[..4].iter().map(|k| k.id.0[0]).collect();
        assert_eq!(ids, vec![1, 4, 2, 3]);
    }

    #[test]
    fn remote_fragments_join_local_ones_in_the_round_order() {
        let frag = |b: u8| Fragments::from_encoded_unchecked(vec![b; 3].into());
        let local = vec![(TraceId([2; 16]), frag(20))];
        let remote: HashMap<TraceId, Fragments> =
            [(TraceId([1; 16]), frag(10)), (TraceId([2; 16]), frag(21))].into();
        let ids = [TraceId([1; 16]), TraceId([2; 16]), TraceId([3; 16])];
        let got = with_remote(&ids, local, &remote);
        let got: Vec<(u8, usize)> = got.iter().map(|(id, f)| (id.0[0], f.len())).collect();
        // The third is held nowhere any more (written to a block): left out.
        assert_eq!(got, vec![(1, 3), (2, 6)]);
    }
}

#[cfg(test)]
mod split_tests {
    use super::*;
    use crate::backend::Backend;
    use crate::blocklist::BlockList;
    use crate::metrics::Metrics;
    use crate::model::{ExportTraceServiceRequest, ResourceSpans, ScopeSpans, Span};
    use crate::querier::TimeRange;
    use prost::Message;

    fn one_span(id: u8, start_s: u64) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span {
                        trace_id: vec![7; 16],
                        span_id: vec![id; 8],
                        name: format!("span-{id}"),
                        start_time_unix_nano: start_s * 1_000_000_000,
                        end_time_unix_nano: start_s * 1_000_000_000 + 5,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    /// A trace split between this node and another (its partition just moved) is judged on
    /// its merged time range: the part there, outside the searched range, joins the hit.
    #[tokio::test]
    async fn a_live_trace_split_across_nodes_is_judged_whole() {
        let metrics = Arc::new(Metrics::default());
        let backend = Backend::memory();
        let (_dir, ingester) = super::super::tests_support::live_ingester(&backend, &metrics);
        let querier = Querier::new(
            backend,
            Some(ingester.clone()),
            Arc::new(BlockList::default()),
            metrics,
            1,
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let tenant = TenantId::single();
        // Here: a span a minute old; there: one an hour old.
        ingester
            .push_request(&tenant, &one_span(1, now - 60))
            .await
            .unwrap();
        let there =
            Fragments::from_encoded(one_span(2, now - 3600).encode_to_vec().into()).unwrap();
        let mut params = super::super::tests_support::params("{ }", None).unwrap();
        params.range = Some(TimeRange {
            start_s: now - 120,
            end_s: now,
        });
        let params = Arc::new(params);
        let columns = Arc::new(block::SearchColumns::for_query(&params.query).unwrap());
        let live = querier.live_cursor(
            &tenant,
            vec![(TraceId([7; 16]), there)],
            &params,
            &columns,
            20,
        );
        let found = querier
            .search_sources(&tenant, live, Vec::new(), params, columns, 20)
            .await
            .unwrap();
        let out = super::super::merge::merge(found.partials, 20);
        assert_eq!(out.traces.len(), 1);
        assert_eq!(
            out.traces[0].spansets[0].spans.len(),
            2,
            "both parts evaluated"
        );
    }
}
