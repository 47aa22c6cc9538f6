//! Search over the live traces (this node's, and those other nodes own): newest first, so
//! a `limit` stops the work.
//!
//! Every live trace knows its earliest span start without being decoded
//! ([`crate::model::Fragments::start`]), so the snapshot is pruned by the request's range
//! and sorted newest first (trace ID as tie-break, the order the answer uses). Traces are
//! then evaluated in rounds spread over the blocking pool; once `limit` hits are held, every
//! trace left starts no later than the last one evaluated and cannot enter the answer.
//! Grafana's default search (limit 20 over the last minutes) then decodes a few hundred
//! traces instead of every live one.

use std::sync::Arc;

use crate::block;
use crate::model::{Fragments, TenantId, TraceId};
use crate::querier::{Querier, QueryError};

use super::{Partial, SearchParams};

/// The first round's size in traces (at least); each later round doubles it, so a selective
/// query reaches the whole set in a few rounds while a broad one stops after the first.
/// Small under test, so a test with tens of traces sees several rounds.
const FIRST_ROUND: usize = if cfg!(test) { 16 } else { 64 };

impl Querier {
    pub(super) async fn search_memory(
        &self,
        tenant: &TenantId,
        remote: Vec<(TraceId, Fragments)>,
        params: Arc<SearchParams>,
        columns: &block::SearchColumns,
        limit: usize,
    ) -> Result<Option<Partial>, QueryError> {
        let mut live = match &self.ingester {
            Some(ing) => ing.snapshot(tenant),
            None if remote.is_empty() => return Ok(None),
            None => Vec::new(),
        };
        // Other nodes' live traces (their partitions); a trace both here and there (its
        // partition just moved) is evaluated once, merged.
        if !remote.is_empty() {
            let mut by_id: std::collections::HashMap<TraceId, Fragments> = live.drain(..).collect();
            for (id, f) in remote {
                by_id.entry(id).or_default().extend(&f);
            }
            live = by_id.into_iter().collect();
        }
        if let Some(r) = params.range {
            // Unknown times (start > end) are kept and judged once decoded.
            live.retain(|(_, f)| f.start() > f.end() || r.overlaps_nanos(f.start(), f.end()));
        }
        // A trace too short for the query's span-duration bound cannot match: not decoded.
        live.retain(|(_, f)| columns.envelope_possible(f.start(), f.end()));
        let live = Arc::new(newest_first(live));
        let workers = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(1, 8);
        let mut out = Partial::default();
        let mut done = 0;
        let mut round = if limit == 0 {
            live.len()
        } else {
            FIRST_ROUND.max(limit * 2)
        };
        while done < live.len() {
            let end = (done + round).min(live.len());
            let per = (end - done).div_ceil(workers).max(1);
            let mut tasks = Vec::with_capacity(workers);
            let mut from = done;
            while from < end {
                let to = (from + per).min(end);
                let (live, params) = (live.clone(), params.clone());
                tasks.push(tokio::task::spawn_blocking(move || {
                    evaluate_slice(&params, &live[from..to])
                }));
                from = to;
            }
            // Slices are joined in order, so the hits stay newest first.
            for t in tasks {
                let part = t.await.map_err(|e| QueryError::Task(e.to_string()))?;
                out.metrics.inspected_traces += part.metrics.inspected_traces;
                out.metrics.inspected_spans += part.metrics.inspected_spans;
                out.metrics.inspected_bytes += part.metrics.inspected_bytes;
                out.hits.extend(part.hits);
            }
            done = end;
            if limit > 0 && out.hits.len() >= limit {
                out.hits.truncate(limit);
                break;
            }
            round *= 2;
        }
        Ok(Some(out))
    }
}

/// Newest start first, then trace ID: the order of the search answer.
fn newest_first(mut live: Vec<(TraceId, Fragments)>) -> Vec<(TraceId, Fragments)> {
    live.sort_unstable_by(|a, b| b.1.start().cmp(&a.1.start()).then_with(|| a.0.cmp(&b.0)));
    live
}

fn evaluate_slice(params: &SearchParams, live: &[(TraceId, Fragments)]) -> Partial {
    let mut out = Partial::default();
    for (id, data) in live {
        // Encoded by this process: a failure is a bug; skip rather than fail the search.
        if let Ok(batches) = data.decode() {
            out.metrics.inspected_bytes += data.len() as u64;
            params.evaluate(*id, &batches, &mut out);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_traces_are_ordered_newest_first_with_the_id_as_tie_break() {
        use crate::model::{ResourceSpans, ScopeSpans, Span, TracesData};
        use prost::Message;
        let frag = |start: u64| {
            let data = TracesData {
                resource_spans: vec![ResourceSpans {
                    scope_spans: vec![ScopeSpans {
                        spans: vec![Span {
                            trace_id: vec![1; 16],
                            span_id: vec![1; 8],
                            start_time_unix_nano: start,
                            end_time_unix_nano: start + 10,
                            ..Default::default()
                        }],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            };
            Fragments::from_encoded(data.encode_to_vec().into()).unwrap()
        };
        let live = vec![
            (TraceId([3; 16]), frag(100)),
            (TraceId([1; 16]), frag(300)),
            (TraceId([2; 16]), frag(100)),
            (TraceId([4; 16]), frag(200)),
        ];
        let ids: Vec<u8> = newest_first(live).iter().map(|(id, _)| id.0[0]).collect();
        assert_eq!(ids, vec![1, 4, 2, 3]);
    }
}
