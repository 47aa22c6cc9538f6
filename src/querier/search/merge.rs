//! Merging the hits of every source: a trace found in several (memory and blocks) becomes
//! one hit, newest first with the trace ID as tie-break, cut to the limit.

use std::collections::HashMap;

use crate::model::TraceId;

use super::*;

/// Adds `incoming` spansets to `existing`: a spanset with the same attributes as an
/// existing one is folded into it, spans by span ID. True if any span was already there.
pub(super) fn merge_spansets(existing: &mut Vec<HitSpanset>, incoming: Vec<HitSpanset>) -> bool {
    let mut overlaps = false;
    for ss in incoming {
        let Some(e) = existing.iter_mut().find(|e| e.attributes == ss.attributes) else {
            existing.push(ss);
            continue;
        };
        let mut seen: std::collections::HashSet<SpanIdBytes> =
            e.spans.iter().map(|s| s.span_id.clone()).collect();
        let mut dup = 0;
        for span in ss.spans {
            if seen.insert(span.span_id.clone()) {
                e.spans.push(span);
            } else {
                dup += 1;
            }
        }
        overlaps |= dup > 0;
        e.matched = (e.matched + ss.matched).saturating_sub(dup).max(e.matched);
    }
    overlaps
}

/// Merges per-source hits by trace ID and keeps the `limit` newest.
pub(super) fn merge(partials: Vec<Partial>, limit: usize) -> SearchResults {
    let mut metrics = SearchMetrics::default();
    // Hits stay where they are pushed; the map holds positions, so a large hit is moved
    // once rather than through every rehash.
    let total: usize = partials.iter().map(|p| p.hits.len()).sum();
    let mut traces: Vec<TraceHit> = Vec::with_capacity(total);
    let mut by_id: HashMap<TraceId, usize> = HashMap::with_capacity(total);
    for p in partials {
        metrics.inspected_traces += p.metrics.inspected_traces;
        metrics.inspected_bytes += p.metrics.inspected_bytes;
        metrics.inspected_spans += p.metrics.inspected_spans;
        for hit in p.hits {
            match by_id.get(&hit.id) {
                None => {
                    by_id.insert(hit.id, traces.len());
                    traces.push(hit);
                }
                Some(&at) => {
                    let h = &mut traces[at];
                    h.start_unix_nano = h.start_unix_nano.min(hit.start_unix_nano);
                    h.end_unix_nano = h.end_unix_nano.max(hit.end_unix_nano);
                    if h.root_service_name.is_none() {
                        h.root_service_name = hit.root_service_name;
                        h.root_span_name = hit.root_span_name;
                    }
                    // Blocks overlap while a compaction commits (its output holds what
                    // its inputs hold): spans already listed are not listed again, and
                    // then the stats of the larger copy stand instead of a sum.
                    let overlaps = merge_spansets(&mut h.spansets, hit.spansets);
                    for (svc, st) in hit.service_stats {
                        let e = h.service_stats.entry(svc).or_default();
                        if overlaps {
                            e.span_count = e.span_count.max(st.span_count);
                            e.error_count = e.error_count.max(st.error_count);
                        } else {
                            e.span_count += st.span_count;
                            e.error_count += st.error_count;
                        }
                    }
                }
            }
        }
    }
    // IDs are unique now, so the keys are distinct and an unstable sort is deterministic.
    traces.sort_unstable_by(|a, b| {
        b.start_unix_nano
            .cmp(&a.start_unix_nano)
            .then_with(|| a.id.cmp(&b.id))
    });
    traces.truncate(limit);
    SearchResults {
        traces,
        metrics,
        partial: None,
    }
}
