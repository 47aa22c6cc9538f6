//! Per-block tag summaries (`tags.json`): the attribute names of every scope and a bounded
//! set of typed values per name, written at flush so autocomplete reads one small object per
//! block instead of scanning it. A name with more distinct values than the bound is marked
//! truncated; readers scan the block for that name's values.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::BlockError;
use crate::model::{
    any_value, kind_name, status_name, AnyValue, KeyValue, ResourceSpans, TenantId,
};

pub const TAGS_FILE: &str = "tags.json";
/// Distinct values kept per tag name.
pub const MAX_VALUES_PER_TAG: usize = 1000;
/// Longer values are not worth offering for autocomplete.
const MAX_VALUE_LEN: usize = 256;

pub fn tags_key(tenant: &TenantId, id: uuid::Uuid) -> String {
    format!("{}/{}/{}", tenant.as_str(), id, TAGS_FILE)
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TagValues {
    /// `(type, value)` with Tempo's type names: string, int, float, bool, keyword.
    pub values: BTreeSet<(String, String)>,
    /// More distinct values existed than were kept.
    pub truncated: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TagSummary {
    /// scope (`resource`, `span`, `event`, `link`, `instrumentation`, `intrinsic`) → name → values
    pub scopes: BTreeMap<String, BTreeMap<String, TagValues>>,
}

impl TagSummary {
    pub fn from_bytes(b: &[u8]) -> Result<Self, BlockError> {
        Ok(serde_json::from_slice(b)?)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Adds one trace's tags.
    pub fn add_trace(&mut self, batches: &[ResourceSpans]) {
        for rs in batches {
            let resource_attrs = rs
                .resource
                .as_ref()
                .map(|r| &r.attributes[..])
                .unwrap_or(&[]);
            self.add_attrs("resource", resource_attrs);
            for ss in &rs.scope_spans {
                if let Some(scope) = &ss.scope {
                    self.add_attrs("instrumentation", &scope.attributes);
                    self.add_intrinsic("instrumentation:name", "string", &scope.name);
                    self.add_intrinsic("instrumentation:version", "string", &scope.version);
                }
                for s in &ss.spans {
                    self.add_attrs("span", &s.attributes);
                    for e in &s.events {
                        self.add_attrs("event", &e.attributes);
                        self.add_intrinsic("event:name", "string", &e.name);
                    }
                    for l in &s.links {
                        self.add_attrs("link", &l.attributes);
                    }
                    self.add_intrinsic("name", "string", &s.name);
                    self.add_intrinsic("status", "keyword", status_name(s));
                    if let Some(msg) = s.status.as_ref().map(|st| &st.message) {
                        self.add_intrinsic("statusMessage", "string", msg);
                    }
                    self.add_intrinsic("kind", "keyword", kind_name(s));
                    if s.parent_span_id.is_empty() {
                        self.add_intrinsic("rootName", "string", &s.name);
                        if let Some(svc) = resource_attrs
                            .iter()
                            .find(|kv| kv.key == "service.name")
                            .and_then(|kv| kv.value.as_ref())
                            .and_then(typed)
                        {
                            self.add("intrinsic", "rootServiceName", svc);
                        }
                    }
                }
            }
        }
    }

    fn add_attrs(&mut self, scope: &str, attrs: &[KeyValue]) {
        use any_value::Value as V;
        for kv in attrs {
            let value = kv.value.as_ref();
            if let Some(v) = value.and_then(typed) {
                self.add(scope, &kv.key, v);
                continue;
            }
            // The name is a tag whatever its type; arrays offer each scalar element with
            // its own type, as Tempo does. Maps and bytes offer no values.
            self.entry(scope, &kv.key);
            if let Some(V::ArrayValue(a)) = value.and_then(|v| v.value.as_ref()) {
                for v in a.values.iter().filter_map(typed) {
                    self.add(scope, &kv.key, v);
                }
            }
        }
    }

    fn add_intrinsic(&mut self, name: &str, kind: &'static str, value: &str) {
        if !value.is_empty() {
            self.add("intrinsic", name, (kind, value.to_owned()));
        }
    }

    fn entry(&mut self, scope: &str, name: &str) -> &mut TagValues {
        // Look up before allocating keys: most calls hit existing entries.
        if !self.scopes.contains_key(scope) {
            self.scopes.insert(scope.to_owned(), BTreeMap::new());
        }
        let names = self.scopes.get_mut(scope).expect("inserted above");
        if !names.contains_key(name) {
            names.insert(name.to_owned(), TagValues::default());
        }
        names.get_mut(name).expect("inserted above")
    }

    fn add(&mut self, scope: &str, name: &str, (kind, value): (&'static str, String)) {
        let e = self.entry(scope, name);
        if e.truncated || value.len() > MAX_VALUE_LEN {
            e.truncated |= value.len() > MAX_VALUE_LEN;
            return;
        }
        if e.values.len() >= MAX_VALUES_PER_TAG {
            if !e.values.iter().any(|(k, v)| *k == kind && *v == value) {
                e.truncated = true;
            }
            return;
        }
        e.values.insert((kind.to_owned(), value));
    }
}

fn typed(v: &AnyValue) -> Option<(&'static str, String)> {
    use any_value::Value as V;
    Some(match v.value.as_ref()? {
        V::StringValue(s) => ("string", s.clone()),
        V::IntValue(i) => ("int", i.to_string()),
        V::DoubleValue(d) => ("float", d.to_string()),
        V::BoolValue(b) => ("bool", b.to_string()),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::synth;

    #[test]
    fn summarises_scopes_and_bounds_values() {
        let mut s = TagSummary::default();
        for t in synth::realistic_traces(200, 7) {
            s.add_trace(&t.batches);
        }
        let resource = &s.scopes["resource"];
        let services = &resource["service.name"];
        assert!(!services.truncated);
        assert!(services
            .values
            .iter()
            .any(|(k, v)| k == "string" && v == "checkout"));
        assert!(s.scopes["span"].contains_key("http.route"));
        assert!(s.scopes["intrinsic"]["status"]
            .values
            .contains(&("keyword".to_owned(), "error".to_owned())));
        // High-cardinality values are cut, and say so.
        let mut big = TagSummary::default();
        for i in 0..(MAX_VALUES_PER_TAG + 10) {
            big.add("span", "id", ("string", format!("v{i}")));
        }
        assert!(big.scopes["span"]["id"].truncated);
        assert_eq!(big.scopes["span"]["id"].values.len(), MAX_VALUES_PER_TAG);
        let back = TagSummary::from_bytes(&s.to_bytes()).unwrap();
        assert_eq!(back, s);
        assert!(TagSummary::from_bytes(b"not json").is_err());
    }

    /// An array attribute offers each scalar element with its own type.
    #[test]
    fn array_elements_are_typed_values() {
        use crate::model::{ArrayValue, Resource, ScopeSpans, Span};
        use any_value::Value as V;
        let any = |v: V| AnyValue { value: Some(v) };
        let arr = |vals: Vec<V>| {
            any(V::ArrayValue(ArrayValue {
                values: vals.into_iter().map(any).collect(),
            }))
        };
        let span = Span {
            name: "s".into(),
            attributes: vec![
                KeyValue {
                    key: "tags".into(),
                    value: Some(arr(vec![
                        V::StringValue("a".into()),
                        V::StringValue("b".into()),
                    ])),
                    ..Default::default()
                },
                KeyValue {
                    key: "mixed".into(),
                    value: Some(arr(vec![
                        V::IntValue(7),
                        V::DoubleValue(1.5),
                        V::BoolValue(true),
                    ])),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let batches = vec![ResourceSpans {
            resource: Some(Resource::default()),
            scope_spans: vec![ScopeSpans {
                spans: vec![span],
                ..Default::default()
            }],
            ..Default::default()
        }];
        let mut s = TagSummary::default();
        s.add_trace(&batches);
        let pairs = |name: &str| -> Vec<(String, String)> {
            s.scopes["span"][name].values.iter().cloned().collect()
        };
        let own = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        assert_eq!(pairs("tags"), vec![own("string", "a"), own("string", "b")]);
        assert_eq!(
            pairs("mixed"),
            vec![own("bool", "true"), own("float", "1.5"), own("int", "7")]
        );
    }
}
