//! Spans of an OTLP request regrouped by trace: the distributor's limits, the ingester's head
//! and its WAL replay all work on the same grouping.

use std::collections::HashMap;

use super::{Fragments, ResourceSpans, Span, TraceId};

/// Spans of one trace from one request, each resource/scope group encoded once.
pub struct TraceBatch {
    pub id: TraceId,
    pub data: Fragments,
    /// Spans in `data`, for accounting when the batch is refused.
    pub spans: usize,
}

/// Spans of a request regrouped by trace, with the refused ones counted.
#[derive(Default)]
pub struct Grouped {
    traces: Vec<TraceBatch>,
    /// Traces removed after grouping (by a limit): the request's own bytes then hold spans
    /// that `traces` does not.
    removed: usize,
    pub accepted: usize,
    pub rejected: usize,
    pub bad_trace_id: usize,
    pub bad_span_id: usize,
}

impl Grouped {
    /// A grouping made elsewhere in this module tree (`wire.rs`, from the received bytes).
    pub(super) fn from_parts(
        traces: Vec<TraceBatch>,
        accepted: usize,
        bad_trace_id: usize,
        bad_span_id: usize,
    ) -> Self {
        Self {
            traces,
            removed: 0,
            accepted,
            rejected: bad_trace_id + bad_span_id,
            bad_trace_id,
            bad_span_id,
        }
    }

    pub fn traces(&self) -> &[TraceBatch] {
        &self.traces
    }

    pub fn into_traces(self) -> Vec<TraceBatch> {
        self.traces
    }

    /// Encoded bytes of every trace's fragments.
    pub fn bytes(&self) -> usize {
        self.traces.iter().map(|t| t.data.len()).sum()
    }

    /// Whether `traces` still holds every valid span of the request it was grouped from.
    pub fn is_whole(&self) -> bool {
        self.removed == 0
    }

    /// Keeps the traces `keep` says yes to; returns the spans of those it removed.
    pub fn retain(&mut self, mut keep: impl FnMut(&TraceBatch) -> bool) -> usize {
        let mut spans = 0;
        let mut removed = 0;
        self.traces.retain(|t| {
            let k = keep(t);
            if !k {
                spans += t.spans;
                removed += 1;
            }
            k
        });
        self.removed += removed;
        spans
    }

    /// Why spans were refused, for OTLP `partial_success`; empty when none were.
    pub fn message(&self) -> String {
        let mut parts = Vec::new();
        if self.bad_trace_id > 0 {
            parts.push(format!(
                "{} spans with an invalid trace id (must be 16 bytes, not all zero)",
                self.bad_trace_id
            ));
        }
        if self.bad_span_id > 0 {
            parts.push(format!(
                "{} spans with an invalid span id (must be 8 bytes, not all zero)",
                self.bad_span_id
            ));
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!("rejected {}", parts.join(" and "))
        }
    }
}

/// What [`group_by_trace`] would make of `resource_spans`, in bytes, without making it:
/// each trace of a scope gets its own copy of the resource and the scope.
pub fn grouped_len(resource_spans: &[ResourceSpans]) -> usize {
    use prost::encoding::message::encoded_len;
    let mut total = 0usize;
    let mut ids: Vec<&[u8]> = Vec::new();
    for rs in resource_spans {
        let r = rs.resource.as_ref().map_or(0, |r| encoded_len(1, r)) + rs.schema_url.len();
        for ss in &rs.scope_spans {
            let s = ss.scope.as_ref().map_or(0, |s| encoded_len(1, s)) + ss.schema_url.len();
            ids.clear();
            ids.extend(ss.spans.iter().map(|s| s.trace_id.as_slice()));
            ids.sort_unstable();
            ids.dedup();
            let spans: usize = ss.spans.iter().map(|s| encoded_len(2, s)).sum();
            total = total
                .saturating_add(ids.len().saturating_mul(r + s + 16))
                .saturating_add(spans);
        }
    }
    total
}

fn valid_span_id(id: &[u8]) -> bool {
    id.len() == 8 && id.iter().any(|&b| b != 0)
}

/// Splits OTLP resource spans into one encoded fragment per trace, keeping each span under
/// its own resource and scope. Spans are encoded straight from the request: nothing is
/// cloned into new structs.
pub fn group_by_trace(resource_spans: &[ResourceSpans]) -> Grouped {
    let mut g = Grouped::default();
    let mut index: HashMap<TraceId, usize> = HashMap::new();
    let mut per_trace: Vec<(usize, Vec<&Span>)> = Vec::new();
    for rs in resource_spans {
        for ss in &rs.scope_spans {
            per_trace.clear();
            for span in &ss.spans {
                let id = match TraceId::from_bytes(&span.trace_id) {
                    Ok(id) if span.trace_id.len() == 16 => id,
                    _ => {
                        g.bad_trace_id += 1;
                        continue;
                    }
                };
                if !valid_span_id(&span.span_id) {
                    g.bad_span_id += 1;
                    continue;
                }
                g.accepted += 1;
                let t = *index.entry(id).or_insert_with(|| {
                    g.traces.push(TraceBatch {
                        id,
                        data: Fragments::default(),
                        spans: 0,
                    });
                    g.traces.len() - 1
                });
                // Requests usually carry few traces per scope: a short linear search wins.
                match per_trace.iter_mut().find(|(i, _)| *i == t) {
                    Some((_, v)) => v.push(span),
                    None => per_trace.push((t, vec![span])),
                }
            }
            for (t, spans) in &per_trace {
                g.traces[*t].spans += spans.len();
                g.traces[*t].data.push(
                    rs.resource.as_ref(),
                    &rs.schema_url,
                    ss.scope.as_ref(),
                    &ss.schema_url,
                    spans,
                );
            }
        }
    }
    g.rejected = g.bad_trace_id + g.bad_span_id;
    g
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{InstrumentationScope, Resource, ScopeSpans};

    fn span(trace: u8, id: u8) -> Span {
        Span {
            trace_id: if trace == 0 {
                vec![1, 2, 3]
            } else {
                vec![trace; 16]
            },
            span_id: vec![0, 0, 0, 0, 0, 0, 0, id],
            name: format!("span-{id}"),
            ..Default::default()
        }
    }

    #[test]
    fn groups_by_trace_and_counts_rejections() {
        let req = vec![
            ResourceSpans {
                resource: Some(Resource::default()),
                scope_spans: vec![
                    ScopeSpans {
                        scope: Some(InstrumentationScope {
                            name: "a".into(),
                            ..Default::default()
                        }),
                        spans: vec![span(1, 1), span(2, 2), span(1, 3), span(0, 4)],
                        schema_url: String::new(),
                    },
                    ScopeSpans {
                        scope: None,
                        spans: vec![span(1, 5), span(1, 0)],
                        schema_url: String::new(),
                    },
                ],
                schema_url: String::new(),
            },
            ResourceSpans {
                resource: None,
                scope_spans: vec![ScopeSpans {
                    scope: None,
                    spans: vec![span(2, 6)],
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            },
        ];
        let g = group_by_trace(&req);
        assert_eq!(g.accepted, 5);
        assert_eq!(g.bad_trace_id, 1);
        assert_eq!(g.bad_span_id, 1);
        assert_eq!(g.traces.len(), 2);
        let t1 = &g.traces[0];
        assert_eq!(t1.id, TraceId([1; 16]));
        // one fragment per resource/scope group: span 1+3 in scope a, span 5 unnamed
        let b1 = t1.data.decode().unwrap();
        assert_eq!(b1.len(), 2);
        assert_eq!(b1[0].scope_spans[0].scope.as_ref().unwrap().name, "a");
        let names: Vec<_> = b1[0].scope_spans[0]
            .spans
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(names, ["span-1", "span-3"]);
        assert_eq!(b1[1].scope_spans[0].spans[0].name, "span-5");
        let b2 = g.traces[1].data.decode().unwrap();
        assert_eq!(b2.len(), 2);
        assert!(b2[1].resource.is_none());
        assert!(g.message().contains("invalid trace id"));
    }
}
