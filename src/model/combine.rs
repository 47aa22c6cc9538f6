//! Combining fragments of one trace: the one place spans from the WAL, memory and blocks
//! are merged and duplicates dropped.

use std::collections::{HashMap, HashSet};

use ahash::RandomState;

use prost::Message;

use super::{ResourceSpans, ScopeSpans};

/// Merges fragments of one trace (late spans, copies from the WAL and from blocks) into
/// one trace: fragments with the same resource and scope are folded together and a span
/// seen twice (same span ID and kind) is kept once.
#[derive(Default)]
pub struct Combiner {
    resources: Vec<ResourceSpans>,
    // encoded (resource, schema_url) -> index into `resources`
    resource_index: HashMap<Vec<u8>, usize, RandomState>,
    // (resource index, encoded scope + schema_url) -> index into that resource's scope_spans
    scope_index: HashMap<(usize, Vec<u8>), usize, RandomState>,
    seen: HashSet<([u8; 8], i32), RandomState>,
    duplicates: usize,
}

impl Combiner {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, batches: impl IntoIterator<Item = ResourceSpans>) {
        for rs in batches {
            self.add_resource_spans(rs);
        }
    }

    fn add_resource_spans(&mut self, mut rs: ResourceSpans) {
        let mut rkey = rs
            .resource
            .as_ref()
            .map(|r| r.encode_to_vec())
            .unwrap_or_default();
        rkey.extend_from_slice(rs.schema_url.as_bytes());
        let scopes = std::mem::take(&mut rs.scope_spans);
        let ridx = match self.resource_index.get(&rkey) {
            Some(&i) => i,
            None => {
                self.resources.push(rs);
                let i = self.resources.len() - 1;
                self.resource_index.insert(rkey, i);
                i
            }
        };
        for mut ss in scopes {
            let spans = std::mem::take(&mut ss.spans);
            let mut kept = Vec::with_capacity(spans.len());
            for span in spans {
                if self.seen.insert((span_key(&span.span_id), span.kind)) {
                    kept.push(span);
                } else {
                    self.duplicates += 1;
                }
            }
            if kept.is_empty() {
                continue;
            }
            let mut skey = ss
                .scope
                .as_ref()
                .map(|s| s.encode_to_vec())
                .unwrap_or_default();
            skey.extend_from_slice(ss.schema_url.as_bytes());
            let target = &mut self.resources[ridx].scope_spans;
            match self.scope_index.get(&(ridx, skey.clone())) {
                Some(&si) => target[si].spans.extend(kept),
                None => {
                    ss.spans = kept;
                    target.push(ss);
                    self.scope_index.insert((ridx, skey), target.len() - 1);
                }
            }
        }
    }

    /// How many spans were dropped as duplicates so far.
    pub fn duplicates(&self) -> usize {
        self.duplicates
    }

    pub fn finish(self) -> Vec<ResourceSpans> {
        self.resources
            .into_iter()
            .filter(|rs| {
                rs.scope_spans
                    .iter()
                    .any(|ss: &ScopeSpans| !ss.spans.is_empty())
            })
            .collect()
    }
}

/// The key a span is deduplicated by (with its kind): its ID, zero-padded on the left.
pub(crate) fn span_key(id: &[u8]) -> [u8; 8] {
    let mut k = [0u8; 8];
    let n = id.len().min(8);
    k[8 - n..].copy_from_slice(&id[..n]);
    k
}

/// Merges any number of fragments of one trace into one.
pub fn combine(batches: impl IntoIterator<Item = ResourceSpans>) -> Vec<ResourceSpans> {
    let mut c = Combiner::new();
    c.add(batches);
    c.finish()
}

pub fn span_count(batches: &[ResourceSpans]) -> usize {
    batches
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .map(|ss| ss.spans.len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{InstrumentationScope, KeyValue, Resource, Span};

    fn rs(service: &str, scope: &str, span_ids: &[u8]) -> ResourceSpans {
        ResourceSpans {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(crate::model::AnyValue {
                        value: Some(crate::model::any_value::Value::StringValue(service.into())),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: scope.into(),
                    ..Default::default()
                }),
                spans: span_ids
                    .iter()
                    .map(|&i| Span {
                        span_id: vec![0, 0, 0, 0, 0, 0, 0, i],
                        name: format!("s{i}"),
                        ..Default::default()
                    })
                    .collect(),
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }
    }

    #[test]
    fn folds_same_resource_and_drops_duplicate_spans() {
        let mut c = Combiner::new();
        c.add([rs("a", "x", &[1, 2]), rs("b", "x", &[3])]);
        c.add([rs("a", "x", &[2, 4]), rs("a", "y", &[5])]);
        assert_eq!(c.duplicates(), 1);
        let out = c.finish();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].scope_spans.len(), 2);
        assert_eq!(out[0].scope_spans[0].spans.len(), 3);
        assert_eq!(span_count(&out), 5);
    }
}
